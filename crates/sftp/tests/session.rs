//! `serve` over an in-memory stream against a real vault (local key
//! provider, real folder, real upload pipeline): the client side here
//! speaks SFTP v3 byte by byte, pipelining as OpenSSH's client does.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dropvault_core::accounts::{Password, UserFile};
use dropvault_core::keys::{KeyFileStore, Keyring, LocalRsaProvider};
use dropvault_core::session::{Credential, Gate, GateConfig, LoggedIn, Peer, Protocol, Services};
use dropvault_core::vault::Vault;
use dropvault_sftp::proto::{
    FrameBuffer, ATTR_ACMODTIME, ATTR_SIZE, FXP_ATTRS, FXP_DATA, FXP_HANDLE, FXP_NAME, FXP_STATUS,
    FXP_VERSION, STATUS_BAD_MESSAGE, STATUS_EOF, STATUS_FAILURE, STATUS_NO_SUCH_FILE, STATUS_OK,
    STATUS_OP_UNSUPPORTED,
};
use dropvault_sftp::{serve, SftpError, SftpSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-sftp-5d2a";

const READ: u32 = 0x01;
const WRITE: u32 = 0x02;
const APPEND: u32 = 0x04;
const CREAT: u32 = 0x08;
const TRUNC: u32 = 0x10;
const EXCL: u32 = 0x20;

fn kek() -> Arc<LocalRsaProvider> {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dropvault-test-kek.pem");
    Arc::new(LocalRsaProvider::open_or_create(&path).expect("kek"))
}

/// A server's services behind a gate, with user `alice`.
struct Fixture {
    dir: tempfile::TempDir,
    gate: Gate,
}

fn fixture() -> Fixture {
    fixture_with(|v| v)
}

fn fixture_with(setup: impl FnOnce(Vault) -> Vault) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = UserFile::open(dir.path().join("users.toml")).expect("users");
    users
        .add("alice", &Password::new("s3cret".into()))
        .expect("add");
    let services = Services {
        auth: Arc::new(users),
        keyring: Arc::new(Keyring::new(
            kek(),
            Arc::new(KeyFileStore::open(dir.path().join("keys")).expect("keys")),
        )),
        vault: Arc::new(setup(
            Vault::create(dir.path().join("files")).expect("vault"),
        )),
        events: Arc::new(dropvault_core::events::Hooks::disabled()),
    };
    let gate = Gate::new(services, GateConfig::default());
    Fixture { dir, gate }
}

impl Fixture {
    /// `alice`, logged in through the gate as an SFTP client would be.
    async fn login(&self) -> LoggedIn {
        let addr: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let peer = Peer {
            protocol: Protocol::Sftp,
            addr,
            client: self.gate.client(addr.ip()),
            encrypted: true,
        };
        self.gate
            .login(
                &peer,
                "alice",
                Credential::Password(Password::new("s3cret".into())),
            )
            .await
            .expect("login")
    }

    /// Every file under the data folder holds no plaintext marker.
    fn assert_sealed(&self) {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.dir.path().join("files"), &mut files);
        for f in files {
            let bytes = std::fs::read(&f).expect("read");
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER),
                "plaintext in {f:?}"
            );
        }
    }
}

/// A payload of `len` bytes that carries the marker and differs at every
/// offset (so misplaced bytes show).
fn payload(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let m = MARKER.len().min(len);
    v[..m].copy_from_slice(&MARKER[..m]);
    v
}

/// Asserts `got == want` without printing megabytes.
fn same(got: &[u8], want: &[u8]) {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first.is_none(),
        "got {} bytes, want {}; first difference at {first:?}",
        got.len(),
        want.len()
    );
}

/// A reply: type, id (none for VERSION) and the rest.
#[derive(Debug)]
struct Reply {
    kind: u8,
    id: u32,
    body: Vec<u8>,
}

impl Reply {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.body[at..at + 4].try_into().expect("4 bytes"))
    }

    fn string_at(&self, at: usize) -> (&[u8], usize) {
        let len = self.u32_at(at) as usize;
        (&self.body[at + 4..at + 4 + len], at + 4 + len)
    }

    /// Status code and message.
    fn status(&self) -> (u32, String) {
        assert_eq!(self.kind, FXP_STATUS, "{self:?}");
        let (msg, _) = self.string_at(4);
        (self.u32_at(0), String::from_utf8_lossy(msg).into_owned())
    }

    fn code(&self) -> u32 {
        self.status().0
    }
}

struct Client {
    io: DuplexStream,
    frames: FrameBuffer,
    next_id: u32,
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Parsed attributes: size and mtime, if present.
fn attrs_of(body: &[u8]) -> (Option<u64>, Option<u32>, Option<u32>) {
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4"));
    let flags = u32_at(0);
    let mut at = 4;
    let mut size = None;
    if flags & ATTR_SIZE != 0 {
        size = Some(u64::from_be_bytes(body[at..at + 8].try_into().expect("8")));
        at += 8;
    }
    let mut perm = None;
    if flags & 0x4 != 0 {
        perm = Some(u32_at(at));
        at += 4;
    }
    let mut mtime = None;
    if flags & ATTR_ACMODTIME != 0 {
        mtime = Some(u32_at(at + 4));
    }
    (size, perm, mtime)
}

impl Client {
    /// A session for `user` with `settings`; INIT and VERSION exchanged.
    async fn start(
        f: &Fixture,
        settings: SftpSettings,
    ) -> (Client, JoinHandle<Result<(), SftpError>>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let logged_in = f.login().await;
        let task = tokio::spawn(async move { serve(server, logged_in, &settings).await });
        let mut c = Client {
            io: client,
            frames: FrameBuffer::new(),
            next_id: 1,
        };
        c.raw(&[1, 0, 0, 0, 3]).await;
        let v = c.recv().await;
        assert_eq!(v.kind, FXP_VERSION);
        (c, task)
    }

    async fn raw(&mut self, payload: &[u8]) {
        let mut p = (payload.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(payload);
        self.io.write_all(&p).await.expect("send");
    }

    /// Sends a request; returns its id.
    async fn send(&mut self, kind: u8, body: &[u8]) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut p = vec![kind];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(body);
        self.raw(&p).await;
        id
    }

    async fn recv(&mut self) -> Reply {
        loop {
            if let Some(p) = self.frames.next_packet().expect("framing") {
                let kind = p[0];
                if kind == FXP_VERSION {
                    return Reply {
                        kind,
                        id: 0,
                        body: p[1..].to_vec(),
                    };
                }
                return Reply {
                    kind,
                    id: u32::from_be_bytes(p[1..5].try_into().expect("id")),
                    body: p[5..].to_vec(),
                };
            }
            let n = tokio::time::timeout(
                Duration::from_secs(60),
                self.io.read_buf(self.frames.read_target()),
            )
            .await
            .expect("a reply within a minute")
            .expect("read");
            assert!(n > 0, "server closed the stream");
        }
    }

    async fn call(&mut self, kind: u8, body: &[u8]) -> Reply {
        let id = self.send(kind, body).await;
        let r = self.recv().await;
        assert_eq!(r.id, id);
        r
    }

    async fn open(&mut self, path: &str, flags: u32) -> Result<Vec<u8>, (u32, String)> {
        let mut b = Vec::new();
        string(&mut b, path.as_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        let r = self.call(3, &b).await;
        if r.kind == FXP_HANDLE {
            Ok(r.string_at(0).0.to_vec())
        } else {
            Err(r.status())
        }
    }

    fn write_body(handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        string(&mut b, handle);
        b.extend_from_slice(&offset.to_be_bytes());
        string(&mut b, data);
        b
    }

    async fn write(&mut self, handle: &[u8], offset: u64, data: &[u8]) -> (u32, String) {
        self.call(6, &Self::write_body(handle, offset, data))
            .await
            .status()
    }

    /// Writes `data` from `start` in `piece`-byte WRITEs, all sent before
    /// any reply is read (as OpenSSH's client pipelines); every reply OK.
    async fn write_pipelined(&mut self, handle: &[u8], start: u64, data: &[u8], piece: usize) {
        let mut ids = Vec::new();
        for (i, chunk) in data.chunks(piece).enumerate() {
            let offset = start + (i * piece) as u64;
            ids.push(self.send(6, &Self::write_body(handle, offset, chunk)).await);
        }
        for _ in &ids {
            let r = self.recv().await;
            assert!(ids.contains(&r.id));
            assert_eq!(r.status(), (STATUS_OK, "Success".into()));
        }
    }

    async fn close(&mut self, handle: &[u8]) -> (u32, String) {
        let mut b = Vec::new();
        string(&mut b, handle);
        self.call(4, &b).await.status()
    }

    /// Reads the whole file at `path` with `piece`-byte READs, all sent at
    /// once; replies may come in any order.
    async fn read_all(&mut self, path: &str, piece: u32) -> Vec<u8> {
        let h = self.open(path, READ).await.expect("open for reading");
        let size = self.stat(path).await.expect("stat").0.expect("size");
        let count = size.div_ceil(u64::from(piece)) + 1;
        let mut ids = Vec::new();
        for i in 0..count {
            let mut b = Vec::new();
            string(&mut b, &h);
            b.extend_from_slice(&(i * u64::from(piece)).to_be_bytes());
            b.extend_from_slice(&piece.to_be_bytes());
            ids.push(self.send(5, &b).await);
        }
        // Answered in the order asked, as OpenSSH's sftp-server does: a
        // client that writes each reply where it belongs and is killed
        // half-way must not leave holes that `reget` would keep.
        let mut parts = Vec::new();
        for &id in &ids {
            let r = self.recv().await;
            assert_eq!(r.id, id, "replies in request order");
            parts.push(r);
        }
        let mut out = Vec::new();
        for (i, r) in parts.into_iter().enumerate() {
            if r.kind == FXP_DATA {
                out.extend_from_slice(r.string_at(0).0);
            } else {
                assert_eq!(r.code(), STATUS_EOF, "read {i}");
                assert!(i as u64 >= size / u64::from(piece), "EOF too early");
            }
        }
        assert_eq!(self.close(&h).await.0, STATUS_OK);
        out
    }

    /// Size, permissions, mtime; or the status.
    async fn stat(&mut self, path: &str) -> Result<(Option<u64>, Option<u32>, Option<u32>), u32> {
        let mut b = Vec::new();
        string(&mut b, path.as_bytes());
        let r = self.call(17, &b).await;
        if r.kind == FXP_ATTRS {
            Ok(attrs_of(&r.body))
        } else {
            Err(r.code())
        }
    }

    async fn path_op(&mut self, kind: u8, path: &str) -> (u32, String) {
        let mut b = Vec::new();
        string(&mut b, path.as_bytes());
        if kind == 14 {
            b.extend_from_slice(&0u32.to_be_bytes());
        }
        self.call(kind, &b).await.status()
    }

    async fn rename(&mut self, from: &str, to: &str, posix: bool) -> (u32, String) {
        let mut b = Vec::new();
        if posix {
            string(&mut b, b"posix-rename@openssh.com");
        }
        string(&mut b, from.as_bytes());
        string(&mut b, to.as_bytes());
        self.call(if posix { 200 } else { 18 }, &b).await.status()
    }

    async fn realpath(&mut self, path: &str) -> String {
        let mut b = Vec::new();
        string(&mut b, path.as_bytes());
        let r = self.call(16, &b).await;
        assert_eq!(r.kind, FXP_NAME);
        assert_eq!(r.u32_at(0), 1);
        String::from_utf8(r.string_at(4).0.to_vec()).expect("utf-8")
    }

    /// Names and longnames of a folder; the final status (EOF, or the
    /// failure that cut the listing).
    async fn list(&mut self, path: &str) -> (Vec<(String, String)>, (u32, String)) {
        let mut b = Vec::new();
        string(&mut b, path.as_bytes());
        let r = self.call(11, &b).await;
        assert_eq!(r.kind, FXP_HANDLE, "{:?}", r);
        let h = r.string_at(0).0.to_vec();
        let mut names = Vec::new();
        let end = loop {
            let mut b = Vec::new();
            string(&mut b, &h);
            let r = self.call(12, &b).await;
            if r.kind != FXP_NAME {
                break r.status();
            }
            let count = r.u32_at(0);
            let mut at = 4;
            for _ in 0..count {
                let (name, next) = r.string_at(at);
                let (long, next) = r.string_at(next);
                names.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(long).into_owned(),
                ));
                let flags = r.u32_at(next);
                at = next + 4 + if flags & ATTR_SIZE != 0 { 8 } else { 0 } + 4 + 8;
            }
        };
        assert_eq!(self.close(&h).await.0, STATUS_OK);
        (names, end)
    }

    /// Ends the session from the client side; the server's result.
    async fn quit(self, task: JoinHandle<Result<(), SftpError>>) -> Result<(), SftpError> {
        drop(self.io);
        task.await.expect("serve task")
    }
}

/// Uploads `data` to `path` in one session (pipelined 32 KiB writes).
async fn upload(c: &mut Client, path: &str, data: &[u8]) {
    let h = c
        .open(path, WRITE | CREAT | TRUNC)
        .await
        .expect("open for writing");
    c.write_pipelined(&h, 0, data, 32 * 1024).await;
    assert_eq!(c.close(&h).await, (STATUS_OK, "Success".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_pipelined_reads_return_the_same_bytes() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let data = payload(1_500_000);
    let h = c
        .open("/big.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    c.write_pipelined(&h, 0, &data, 32 * 1024).await;
    // Written but not closed: nothing under the name yet.
    assert_eq!(
        c.open("/big.bin", READ).await.map_err(|e| e.0),
        Err(STATUS_NO_SUCH_FILE)
    );
    assert_eq!(c.close(&h).await.0, STATUS_OK);

    let (size, perm, _) = c.stat("/big.bin").await.expect("stat");
    assert_eq!(size, Some(data.len() as u64));
    assert_eq!(perm, Some(0o100_644));
    same(&c.read_all("/big.bin", 32 * 1024).await, &data);
    // A READ longer than the limit is served short, not refused.
    let h = c.open("/big.bin", READ).await.expect("open");
    let mut b = Vec::new();
    string(&mut b, &h);
    b.extend_from_slice(&1000u64.to_be_bytes());
    b.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let r = c.call(5, &b).await;
    assert_eq!(r.kind, FXP_DATA);
    same(r.string_at(0).0, &data[1000..1000 + 255 * 1024]);
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    c.quit(task).await.expect("clean end");
    f.assert_sealed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_arriving_out_of_order_are_put_in_place() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let data = payload(100_000);
    let h = c
        .open("/ooo.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    // 3, 1, 2, 0 (of 25 000-byte pieces), sent before any reply is read.
    let order = [3usize, 1, 2, 0];
    let mut ids = Vec::new();
    for i in order {
        let chunk = &data[i * 25_000..(i + 1) * 25_000];
        ids.push(
            c.send(6, &Client::write_body(&h, (i * 25_000) as u64, chunk))
                .await,
        );
    }
    for _ in ids {
        assert_eq!(c.recv().await.code(), STATUS_OK);
    }
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    same(&c.read_all("/ooo.bin", 8192).await, &data);
    c.quit(task).await.expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_the_end_is_refused_and_nothing_is_stored() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let h = c
        .open("/rand.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    assert_eq!(c.write(&h, 0, &payload(100)).await.0, STATUS_OK);
    let (code, msg) = c.write(&h, 50, b"again").await;
    assert_eq!(code, STATUS_FAILURE);
    assert_eq!(msg, "random writes are not supported; write sequentially");
    // Later writes and the CLOSE say the same: the upload is over.
    assert_eq!(c.write(&h, 100, b"more").await.0, STATUS_FAILURE);
    assert_eq!(c.close(&h).await.0, STATUS_FAILURE);
    assert_eq!(
        c.open("/rand.bin", READ).await.map_err(|e| e.0),
        Err(STATUS_NO_SUCH_FILE)
    );

    // A write beyond the window is refused too.
    let settings = SftpSettings {
        write_window_packets: 2,
        ..SftpSettings::default()
    };
    let (mut c2, task2) = Client::start(&f, settings).await;
    let h = c2
        .open("/gap.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    assert_eq!(c2.write(&h, 10, b"a").await.0, STATUS_OK);
    assert_eq!(c2.write(&h, 20, b"b").await.0, STATUS_OK);
    assert_eq!(c2.write(&h, 30, b"c").await.0, STATUS_FAILURE);
    assert_eq!(c2.close(&h).await.0, STATUS_FAILURE);

    // A gap never filled fails the CLOSE.
    let h = c2
        .open("/gap2.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    assert_eq!(c2.write(&h, 10, b"a").await.0, STATUS_OK);
    let (code, msg) = c2.close(&h).await;
    assert_eq!(code, STATUS_FAILURE);
    assert!(msg.contains("offset 0"), "{msg}");
    assert_eq!(
        c2.stat("/gap2.bin").await.map(|a| a.0),
        Err(STATUS_NO_SUCH_FILE)
    );
    c.quit(task).await.expect("clean end");
    c2.quit(task2).await.expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_from_the_size_stat_reports() {
    let f = fixture();
    let data = payload(3 * 64 * 1024 + 5000);
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let h = c
        .open("/resume.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    c.write_pipelined(&h, 0, &data[..150_000], 32 * 1024).await;
    // The client vanishes without CLOSE.
    c.quit(task).await.expect("end");
    f.assert_sealed();

    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let (size, _, _) = c
        .stat("/resume.bin")
        .await
        .expect("stat of the resumable upload");
    let from = size.expect("size");
    // Whole segments of what was sent (the writes were acknowledged).
    assert_eq!(from, 2 * 64 * 1024);
    // As OpenSSH's `reput`: open without TRUNC, write from the size.
    let h = c.open("/resume.bin", WRITE | CREAT).await.expect("open");
    c.write_pipelined(&h, from, &data[from as usize..], 32 * 1024)
        .await;
    assert_eq!(c.close(&h).await, (STATUS_OK, "Success".into()));
    same(&c.read_all("/resume.bin", 32 * 1024).await, &data);

    // A resume at an offset the server cannot continue from is refused.
    let h = c.open("/resume.bin", WRITE).await.expect("open");
    let (code, msg) = c.write(&h, data.len() as u64 + 10, b"x").await;
    assert_eq!(code, STATUS_FAILURE);
    assert!(
        msg.starts_with("Cannot continue this file at offset"),
        "{msg}"
    );
    assert_eq!(c.close(&h).await.0, STATUS_FAILURE);
    same(&c.read_all("/resume.bin", 65536).await, &data);
    c.quit(task).await.expect("end");
    f.assert_sealed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_continues_the_committed_file() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let data = payload(90_000);
    upload(&mut c, "/log.txt", &data[..40_000]).await;
    // curl and OpenSSH's `put -a`: APPEND, offsets from the current size.
    let h = c
        .open("/log.txt", WRITE | APPEND | CREAT)
        .await
        .expect("open");
    c.write_pipelined(&h, 40_000, &data[40_000..70_000], 10_000)
        .await;
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    // Clients that write at 0 under APPEND mean "at the end".
    let h = c.open("/log.txt", WRITE | APPEND).await.expect("open");
    assert_eq!(c.write(&h, 0, &data[70_000..]).await.0, STATUS_OK);
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    same(&c.read_all("/log.txt", 32 * 1024).await, &data);
    c.quit(task).await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_without_writes_follows_the_open_flags() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    upload(&mut c, "/keep.txt", &payload(1000)).await;
    // No TRUNC: the file stays as it was.
    let h = c.open("/keep.txt", WRITE).await.expect("open");
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    assert_eq!(c.stat("/keep.txt").await.expect("stat").0, Some(1000));
    // TRUNC: an empty file.
    let h = c.open("/keep.txt", WRITE | TRUNC).await.expect("open");
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    assert_eq!(c.stat("/keep.txt").await.expect("stat").0, Some(0));
    // A new file, never written: created empty (and FSTAT says so).
    let h = c.open("/new.txt", WRITE | CREAT).await.expect("open");
    let mut b = Vec::new();
    string(&mut b, &h);
    let r = c.call(8, &b).await;
    assert_eq!(r.kind, FXP_ATTRS);
    assert_eq!(attrs_of(&r.body).0, Some(0));
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    assert_eq!(c.stat("/new.txt").await.expect("stat").0, Some(0));
    // EXCL on a file that is there; no CREAT for one that is not.
    assert_eq!(
        c.open("/new.txt", WRITE | CREAT | EXCL)
            .await
            .map_err(|e| e.0),
        Err(STATUS_FAILURE)
    );
    assert_eq!(
        c.open("/absent.txt", WRITE).await.map_err(|e| e.0),
        Err(STATUS_NO_SUCH_FILE)
    );
    assert_eq!(
        c.open("/no/such/dir.txt", WRITE | CREAT)
            .await
            .map_err(|e| e.0),
        Err(STATUS_NO_SUCH_FILE)
    );
    c.quit(task).await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_listings_renames_and_removal() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    assert_eq!(c.path_op(14, "/docs").await.0, STATUS_OK);
    assert_eq!(c.path_op(14, "/docs").await.0, STATUS_FAILURE);
    upload(&mut c, "/docs/a.txt", &payload(10)).await;
    upload(&mut c, "/docs/b.txt", &payload(20)).await;
    assert_eq!(c.path_op(14, "/docs/sub").await.0, STATUS_OK);

    let (mut names, end) = c.list("/docs").await;
    assert_eq!(end.0, STATUS_EOF);
    names.sort();
    let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(just, ["a.txt", "b.txt", "sub"]);
    assert!(names[0]
        .1
        .starts_with("-rw-r--r--    1 alice    alice          10 "));
    assert!(names[0].1.ends_with(" a.txt"));
    assert!(names[2].1.starts_with("drwxr-xr-x"));

    // RENAME never replaces; posix-rename does.
    assert_eq!(
        c.rename("/docs/a.txt", "/docs/b.txt", false).await.0,
        STATUS_FAILURE
    );
    assert_eq!(
        c.rename("/docs/a.txt", "/docs/c.txt", false).await.0,
        STATUS_OK
    );
    assert_eq!(
        c.rename("/docs/c.txt", "/docs/b.txt", true).await.0,
        STATUS_OK
    );
    assert_eq!(c.stat("/docs/b.txt").await.expect("stat").0, Some(10));
    assert_eq!(
        c.stat("/docs/c.txt").await.map(|a| a.0),
        Err(STATUS_NO_SUCH_FILE)
    );

    assert_eq!(c.path_op(15, "/docs").await.0, STATUS_FAILURE); // not empty
    assert_eq!(c.path_op(13, "/docs/sub").await.0, STATUS_FAILURE); // a folder
    assert_eq!(c.path_op(13, "/docs/b.txt").await.0, STATUS_OK);
    assert_eq!(c.path_op(15, "/docs/sub").await.0, STATUS_OK);
    assert_eq!(c.path_op(15, "/docs").await.0, STATUS_OK);
    assert_eq!(c.path_op(13, "/docs/b.txt").await.0, STATUS_NO_SUCH_FILE);

    assert_eq!(c.realpath(".").await, "/");
    assert_eq!(c.realpath("").await, "/");
    assert_eq!(c.realpath("../../x/./y/..").await, "/x");
    assert_eq!(c.realpath("/a//b").await, "/a/b");

    // Links are not supported.
    assert_eq!(c.path_op(19, "/x").await.0, STATUS_OP_UNSUPPORTED);
    c.quit(task).await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_stops_at_the_entry_limit() {
    let f = fixture();
    let settings = SftpSettings {
        max_listing_entries: 3,
        ..SftpSettings::default()
    };
    let (mut c, task) = Client::start(&f, settings).await;
    for name in ["/1", "/2", "/3"] {
        upload(&mut c, name, b"x").await;
    }
    // Exactly at the limit: complete.
    let (names, end) = c.list("/").await;
    assert_eq!((names.len(), end.0), (3, STATUS_EOF));
    upload(&mut c, "/4", b"x").await;
    let (names, (code, msg)) = c.list("/").await;
    assert_eq!((names.len(), code), (3, STATUS_FAILURE));
    assert!(msg.contains("more than 3 entries"), "{msg}");
    c.quit(task).await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modification_times_are_set_by_setstat_and_fsetstat() {
    let f = fixture();
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let attrs = |mtime: u32| {
        let mut b = Vec::new();
        b.extend_from_slice(&(ATTR_ACMODTIME | 0x4).to_be_bytes());
        b.extend_from_slice(&0o100_600u32.to_be_bytes()); // ignored
        b.extend_from_slice(&mtime.to_be_bytes());
        b.extend_from_slice(&mtime.to_be_bytes());
        b
    };
    // `put -p`: FSETSTAT on the open handle, before CLOSE.
    let h = c.open("/t.txt", WRITE | CREAT | TRUNC).await.expect("open");
    assert_eq!(c.write(&h, 0, &payload(500)).await.0, STATUS_OK);
    let mut b = Vec::new();
    string(&mut b, &h);
    b.extend(attrs(1_000_000_000));
    assert_eq!(c.call(10, &b).await.code(), STATUS_OK);
    assert_eq!(c.close(&h).await.0, STATUS_OK);
    let (size, perm, mtime) = c.stat("/t.txt").await.expect("stat");
    assert_eq!(
        (size, perm, mtime),
        (Some(500), Some(0o100_644), Some(1_000_000_000))
    );
    // SETSTAT on the path.
    let mut b = Vec::new();
    string(&mut b, b"/t.txt");
    b.extend(attrs(1_200_000_000));
    assert_eq!(c.call(9, &b).await.code(), STATUS_OK);
    assert_eq!(c.stat("/t.txt").await.expect("stat").2, Some(1_200_000_000));
    // A size other than the current one or 0 is refused.
    let mut b = Vec::new();
    string(&mut b, b"/t.txt");
    b.extend_from_slice(&ATTR_SIZE.to_be_bytes());
    b.extend_from_slice(&7u64.to_be_bytes());
    assert_eq!(c.call(9, &b).await.code(), STATUS_OP_UNSUPPORTED);
    c.quit(task).await.expect("end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_malformed_requests() {
    let f = fixture();
    let settings = SftpSettings {
        max_handles: 2,
        ..SftpSettings::default()
    };
    let (mut c, task) = Client::start(&f, settings).await;
    upload(&mut c, "/f", b"data").await;
    let h1 = c.open("/f", READ).await.expect("first");
    let _h2 = c.open("/f", READ).await.expect("second");
    let (code, msg) = c.open("/f", READ).await.expect_err("over the bound");
    assert_eq!(code, STATUS_FAILURE);
    assert!(msg.contains("at most 2"), "{msg}");
    assert_eq!(c.close(&h1).await.0, STATUS_OK);
    assert_eq!(c.close(&h1).await.0, STATUS_FAILURE); // closed already

    // limits@openssh.com
    let mut b = Vec::new();
    string(&mut b, b"limits@openssh.com");
    let r = c.call(200, &b).await;
    assert_eq!(r.kind, 201);
    assert_eq!(r.body.len(), 32);
    assert_eq!(&r.body[24..], &2u64.to_be_bytes());

    // A truncated request gets BAD_MESSAGE; the session goes on.
    assert_eq!(c.call(5, &[0, 0, 0, 4, 1]).await.code(), STATUS_BAD_MESSAGE);
    assert_eq!(c.call(99, &[]).await.code(), STATUS_OP_UNSUPPORTED);
    assert_eq!(c.realpath(".").await, "/");

    // A packet over the length limit ends the session.
    c.io.write_all(&(1u32 << 20).to_be_bytes())
        .await
        .expect("send");
    let end = task.await.expect("serve task");
    assert!(matches!(end, Err(SftpError::Protocol(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends() {
    let f = fixture();
    let settings = SftpSettings {
        idle_timeout: Duration::from_millis(200),
        ..SftpSettings::default()
    };
    let (_c, task) = Client::start(&f, settings).await;
    let end = task.await.expect("serve task");
    assert!(matches!(end, Err(SftpError::Idle)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_rejection_is_reported_at_close() {
    let f = fixture_with(|v| v.with_scanner(rejecting_scanner()));
    let (mut c, task) = Client::start(&f, SftpSettings::default()).await;
    let mut data = payload(70_000);
    data.extend_from_slice(b"BAD-BYTES");
    let h = c
        .open("/evil.bin", WRITE | CREAT | TRUNC)
        .await
        .expect("open");
    c.write_pipelined(&h, 0, &data, 32 * 1024).await;
    let (code, msg) = c.close(&h).await;
    assert_eq!(code, STATUS_FAILURE);
    assert!(
        msg.starts_with("rejected by the malware scanner: "),
        "{msg}"
    );
    assert_eq!(
        c.stat("/evil.bin").await.map(|a| a.0),
        Err(STATUS_NO_SUCH_FILE)
    );
    upload(&mut c, "/fine.bin", &payload(1000)).await;
    c.quit(task).await.expect("end");
    f.assert_sealed();
}

/// A command scanner that rejects uploads holding `BAD-BYTES`.
fn rejecting_scanner() -> Option<Arc<dropvault_core::scan::Scanner>> {
    let settings = dropvault_core::scan::ScanSettings {
        clamd: None,
        command: [
            "sh",
            "-c",
            "if grep -q BAD-BYTES; then echo Bad.Bytes-1 found >&2; exit 3; fi",
        ]
        .map(String::from)
        .to_vec(),
        on_error: dropvault_core::scan::OnError::Reject,
        timeout: Duration::from_secs(30),
        quarantine: false,
        run_as: None,
    };
    dropvault_core::scan::Scanner::new(settings)
        .expect("scanner")
        .map(Arc::new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_for_writes_ahead_is_shared_by_the_session() {
    let f = fixture();
    let settings = SftpSettings {
        write_window_bytes: 10,
        ..SftpSettings::default()
    };
    let (mut c, task) = Client::start(&f, settings).await;
    let a = c.open("/a", WRITE | CREAT | TRUNC).await.expect("open");
    let b = c.open("/b", WRITE | CREAT | TRUNC).await.expect("open");
    assert_eq!(c.write(&a, 4, b"123456").await.0, STATUS_OK);
    // Another 6 bytes ahead, in another file: past the session's 10.
    assert_eq!(
        c.write(&b, 4, b"123456").await,
        (
            STATUS_FAILURE,
            "random writes are not supported; write sequentially".into()
        )
    );
    // Filling file a's gap frees its share.
    assert_eq!(c.write(&a, 0, b"abcd").await.0, STATUS_OK);
    assert_eq!(c.close(&a).await.0, STATUS_OK);
    assert_eq!(c.stat("/a").await.expect("stat").0, Some(10));
    c.quit(task).await.expect("end");
}
