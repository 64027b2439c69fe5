//! The FTP front end end to end over loopback with a raw client: the server
//! is started with `serve()` on listeners bound to port 0 and stopped by its
//! shutdown future. Real-client tests (curl, lftp, ftplib) live in
//! tests/integration/.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dropvault_core::accounts::{Password, UserFile};
use dropvault_core::keys::{KeyFileStore, Keyring, LocalRsaProvider};
use dropvault_core::session::{Gate, GateConfig, Services};
use dropvault_core::vault::Vault;
use dropvault_ftp::{serve, FtpConfig, Listeners, TlsMode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const MARKER: &[u8] = b"SESSION-TEST-PLAINTEXT-MARKER";

struct Server {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(config: FtpConfig) -> Server {
    start_gated(config, gate_config()).await
}

fn gate_config() -> GateConfig {
    GateConfig {
        failed_login_delay: Duration::from_millis(10),
        ..GateConfig::default()
    }
}

async fn start_gated(config: FtpConfig, gate: GateConfig) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dropvault-test-kek.pem");
    let provider = Arc::new(LocalRsaProvider::open_or_create(&kek).expect("kek"));
    let users = UserFile::open(dir.path().join("users.toml")).expect("users");
    users
        .add("alice", &Password::new("s3cret".into()))
        .expect("add");
    let services = Services {
        auth: Arc::new(users),
        keyring: Arc::new(Keyring::new(
            provider,
            Arc::new(KeyFileStore::open(dir.path().join("keys")).expect("keys")),
        )),
        vault: Arc::new(Vault::create(dir.path().join("files")).expect("vault")),
        events: Arc::new(dropvault_core::events::Hooks::disabled()),
    };
    let gate = Arc::new(Gate::new(services, gate));
    let control = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = control.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(serve(
        config,
        gate,
        None,
        Listeners {
            control,
            implicit_tls: None,
        },
        async {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        dir,
        stop: Some(tx),
        task,
    }
}

impl Server {
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve");
        self.dir
    }
}

fn config() -> FtpConfig {
    FtpConfig {
        tls: TlsMode::Off,
        passive_ports: (41000, 41999),
        drain_grace: Duration::from_secs(2),
        ..FtpConfig::default()
    }
}

struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = s.into_split();
        let mut c = Client {
            r: BufReader::new(r),
            w,
        };
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        c
    }

    /// Reads one reply, joining multi-line replies.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            let b = line.as_bytes();
            // "NNN text" ends a reply; "NNN-" and indented lines continue it.
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await
    }

    async fn login(&mut self) {
        assert!(self.cmd("USER alice").await.starts_with("331"));
        let r = self.cmd("PASS s3cret").await;
        assert!(r.starts_with("230"), "{r}");
    }

    async fn pasv(&mut self) -> TcpStream {
        let r = self.cmd("EPSV").await;
        assert!(r.starts_with("229"), "{r}");
        let port: u16 = r
            .split("|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .and_then(|s| s.parse().ok())
            .expect("port in 229 reply");
        TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("data connect")
    }
}

#[tokio::test]
async fn login_gate_commands_and_errors() {
    let server = start(config()).await;
    let mut c = Client::connect(server.addr).await;
    assert!(
        c.cmd("PWD").await.starts_with("530"),
        "no file access before login"
    );
    assert!(c.cmd("FOO bar").await.starts_with("502"));
    let feat = c.cmd("FEAT").await;
    assert!(
        feat.starts_with("211-") && feat.contains(" SIZE") && feat.contains(" MLST "),
        "{feat}"
    );
    assert!(
        !feat.contains("AUTH TLS"),
        "TLS is off, FEAT must not offer it: {feat}"
    );
    assert!(c.cmd("AUTH TLS").await.starts_with("534"));
    // Wrong password and unknown user get the same reply.
    c.cmd("USER alice").await;
    let wrong = c.cmd("PASS nope").await;
    c.cmd("USER nobody").await;
    let unknown = c.cmd("PASS nope").await;
    assert_eq!(wrong, unknown);
    assert!(wrong.starts_with("530"));
    c.login().await;
    assert!(c.cmd("PWD").await.starts_with("257 \"/\""));
    // A line over 4 KiB is answered 500 and the session carries on.
    let long = format!("NOOP {}", "x".repeat(5000));
    assert!(c.cmd(&long).await.starts_with("500"));
    assert!(c.cmd("NOOP").await.starts_with("200"));
    assert!(c.cmd("CWD ../../..").await.starts_with("250"));
    assert!(c.cmd("PWD").await.starts_with("257 \"/\""));
    assert!(c.cmd("MKD sub").await.starts_with("257"));
    assert!(c.cmd("RETR nothing-here").await.starts_with("550"));
    assert!(
        c.cmd("PORT 10,0,0,1,4,1").await.starts_with("500"),
        "bounce refused"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn store_list_retrieve_resume_and_abort() {
    let server = start(config()).await;
    let mut c = Client::connect(server.addr).await;
    c.login().await;
    let mut body = MARKER.to_vec();
    body.extend((0..300_000u32).map(|i| (i % 241) as u8));

    // STOR
    let mut data = c.pasv().await;
    assert!(c.cmd("STOR f.bin").await.starts_with("150"));
    data.write_all(&body).await.expect("send");
    drop(data);
    let done = c.reply().await;
    assert!(done.starts_with("226"), "{done}");
    assert!(c
        .cmd("SIZE f.bin")
        .await
        .starts_with(&format!("213 {}", body.len())));

    // MLSD shows plaintext sizes.
    let mut data = c.pasv().await;
    assert!(c.cmd("MLSD").await.starts_with("150"));
    let mut listing = String::new();
    data.read_to_string(&mut listing).await.expect("listing");
    assert!(c.reply().await.starts_with("226"));
    assert!(
        listing.contains(&format!("size={};", body.len())),
        "{listing}"
    );
    assert!(listing.contains("type=cdir"), "{listing}");

    // REST + RETR starts at the offset.
    assert!(c.cmd("REST 70000").await.starts_with("350"));
    let mut data = c.pasv().await;
    assert!(c.cmd("RETR f.bin").await.starts_with("150"));
    let mut got = Vec::new();
    data.read_to_end(&mut got).await.expect("read");
    assert!(c.reply().await.starts_with("226"));
    assert!(got == body[70_000..]);

    // ABOR during an upload: nothing is committed under the name.
    let mut data = c.pasv().await;
    assert!(c.cmd("STOR aborted.bin").await.starts_with("150"));
    data.write_all(&body[..100_000]).await.expect("send");
    c.w.write_all(b"ABOR\r\n").await.expect("abor");
    let r1 = c.reply().await;
    let r2 = c.reply().await;
    assert!(r1.starts_with("426") && r2.starts_with("226"), "{r1} {r2}");
    drop(data);
    assert!(c.cmd("MDTM aborted.bin").await.starts_with("550"));
    assert!(c.cmd("MDTM f.bin").await.starts_with("213 2"));

    // RNFR/RNTO, DELE.
    assert!(c.cmd("RNFR f.bin").await.starts_with("350"));
    assert!(c.cmd("RNTO g.bin").await.starts_with("250"));
    assert!(c.cmd("DELE g.bin").await.starts_with("250"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let dir = server.stop().await;
    assert_no_marker(dir.path());
}

#[tokio::test]
async fn data_connections_from_other_addresses_are_not_taken() {
    let server = start(config()).await;
    let mut c = Client::connect(server.addr).await;
    c.login().await;
    let r = c.cmd("EPSV").await;
    let port: u16 = r
        .split("|||")
        .nth(1)
        .and_then(|s| s.split('|').next())
        .and_then(|s| s.parse().ok())
        .expect("port");
    // Connect from 127.0.0.2: a different address than the control peer.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut intruder = sock
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    c.w.write_all(b"LIST\r\n").await.expect("list");
    assert!(c.reply().await.starts_with("150"));
    // The intruder's connection is closed without data.
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), intruder.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The real client can still connect and gets the listing.
    let mut data = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut listing = String::new();
    data.read_to_string(&mut listing).await.expect("listing");
    assert!(c.reply().await.starts_with("226"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_and_stops() {
    let server = start(config()).await;
    let mut c = Client::connect(server.addr).await;
    c.login().await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    let r = c.reply().await;
    assert!(r.starts_with("421"), "{r}");
    stopping.await.expect("stopped");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new sessions after shutdown"
    );
}

#[tokio::test]
async fn repeated_failures_ban_the_address() {
    let mut gate = gate_config();
    gate.guard.ban_after_failures = 2;
    let server = start_gated(config(), gate).await;
    let mut c = Client::connect(server.addr).await;
    c.cmd("USER alice").await;
    assert!(c.cmd("PASS bad1").await.starts_with("530"));
    c.cmd("USER alice").await;
    assert!(c.cmd("PASS bad2").await.starts_with("421"));
    // A new connection from the same address is refused.
    let s = TcpStream::connect(server.addr).await.expect("connect");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.expect("read");
    assert!(line.starts_with("421"), "{line}");
    server.stop().await;
}

fn assert_no_marker(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        let p = e.path();
        if p.is_dir() {
            assert_no_marker(&p);
        } else {
            let bytes = std::fs::read(&p).expect("read");
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER),
                "plaintext in {}",
                p.display()
            );
        }
    }
}
