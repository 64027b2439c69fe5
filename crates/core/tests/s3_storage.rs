//! The vault on S3 storage, against a real Garage: sealed uploads as
//! multipart uploads, continued from another "node" (another storage and
//! vault on the same bucket), records that nobody who can write the bucket
//! can forge or roll back into a reused nonce, folders as prefixes,
//! expiry of abandoned uploads.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::garage::client;
use dropvault_core::keys::UserKey;
use dropvault_core::storage::{S3Storage, S3Tuning};
use dropvault_core::vault::{EntryKind, UploadMode, UserVault, VPath, Vault, VaultError};
use dropvault_format::DataKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;
const MARKER: &[u8] = b"PLAINTEXT-MARKER-s3-5e1d";

/// A key prefix no other test uses.
fn prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "vault-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A "node": its own storage and vault on the bucket under `prefix`.
fn node(prefix: &str) -> Vault {
    let storage = S3Storage::new(
        client(prefix),
        S3Tuning {
            part_size: 5 << 20,
            parts_in_flight: 2,
        },
    );
    Vault::with_storage(Arc::new(storage), std::env::temp_dir()).expect("vault")
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).expect("path")
}

/// `len` bytes that differ from offset to offset, with the marker at the
/// start.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let n = MARKER.len().min(len);
    out[..n].copy_from_slice(&MARKER[..n]);
    out
}

async fn put(user: &UserVault, path: &str, mode: UploadMode, data: &[u8]) -> u64 {
    let mut up = user.upload(&p(path), mode).await.expect("upload");
    up.write_all(data).await.expect("write");
    up.commit().await.expect("commit")
}

async fn get(user: &UserVault, path: &str) -> Vec<u8> {
    let mut d = user.download(&p(path), 0).await.expect("download");
    let mut out = Vec::new();
    d.read_to_end(&mut out).await.expect("read");
    out
}

/// Writes `data` and drops the upload without a commit (a client that
/// vanished); returns once its worker let go.
async fn interrupted(user: &UserVault, path: &str, mode: UploadMode, data: &[u8]) {
    let mut up = user.upload(&p(path), mode).await.expect("upload");
    up.write_all(data).await.expect("write");
    up.flush().await.expect("flush");
    let exited = up.exit_signal();
    drop(up);
    exited.wait().await;
}

/// Every object key under `prefix`.
fn objects(prefix: &str) -> Vec<String> {
    let c = client(prefix);
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = c.list("", None, after.as_deref(), 1000).expect("list");
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next {
            Some(n) => after = Some(n),
            None => return keys,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_folders_and_reads_on_s3() {
    let pre = prefix("basic");
    let vault = node(&pre);
    let key = Arc::new(UserKey::new("alice", DataKey::generate().expect("key")));
    let alice = vault.for_user(key).expect("user");
    let big = payload(12 * MIB + 4321, 1);
    assert_eq!(
        put(&alice, "/big.bin", UploadMode::Replace, &big).await,
        big.len() as u64
    );
    put(&alice, "/empty", UploadMode::Replace, b"").await;
    assert_eq!(get(&alice, "/big.bin").await, big);
    assert_eq!(get(&alice, "/empty").await, b"");
    // Random access, across segment and part boundaries.
    let file = alice.open_read(&p("/big.bin")).await.expect("open");
    for (off, len) in [(0u64, 10usize), (65_530, 20), (5 * MIB as u64 - 7, 70_000)] {
        let got = file.read_at(off, len).await.expect("read_at");
        assert_eq!(got, big[off as usize..off as usize + len]);
    }
    // Folders are prefixes with a marker; sizes come from object sizes.
    alice.mkdir(&p("/d")).await.expect("mkdir");
    assert!(matches!(
        alice.mkdir(&p("/d")).await,
        Err(VaultError::AlreadyExists)
    ));
    put(&alice, "/d/x", UploadMode::Create, b"hello").await;
    assert!(matches!(
        alice.upload(&p("/d/x"), UploadMode::Create).await,
        Err(VaultError::AlreadyExists)
    ));
    assert!(matches!(
        alice.upload(&p("/nowhere/x"), UploadMode::Replace).await,
        Err(VaultError::NotFound)
    ));
    let mut listing = alice.list(&p("/")).await.expect("list");
    let mut names = Vec::new();
    loop {
        let batch = listing.next_batch().await.expect("batch");
        if batch.is_empty() {
            break;
        }
        names.extend(batch.into_iter().map(|e| (e.name, e.kind, e.size)));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("big.bin".into(), EntryKind::File, big.len() as u64),
            ("d".into(), EntryKind::Dir, 0),
            ("empty".into(), EntryKind::File, 0),
        ]
    );
    assert!(matches!(
        alice.rmdir(&p("/d")).await,
        Err(VaultError::NotEmpty)
    ));
    alice
        .rename(&p("/d"), &p("/e"))
        .await
        .expect("rename folder");
    assert_eq!(get(&alice, "/e/x").await, b"hello");
    alice
        .rename(&p("/e/x"), &p("/y"))
        .await
        .expect("rename file");
    alice.rmdir(&p("/e")).await.expect("rmdir");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    alice.set_modified(&p("/y"), t).await.expect("mfmt");
    assert_eq!(alice.stat(&p("/y")).await.expect("stat").modified, t);
    alice.remove(&p("/y")).await.expect("remove");
    assert!(matches!(
        alice.stat(&p("/y")).await,
        Err(VaultError::NotFound)
    ));
    // Nothing left in staging; the stored bytes are sealed.
    let keys = objects(&pre);
    assert!(
        keys.iter()
            .all(|k| !k.contains(".staging/") || k.ends_with('/')),
        "{keys:?}"
    );
    let c = client(&pre);
    let mut head = vec![0u8; 64];
    c.get_range("alice/big.bin", 0, &mut head).expect("read");
    assert!(!head.windows(MARKER.len()).any(|w| w == MARKER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_on_one_node_continues_on_another() {
    let pre = prefix("resume");
    let key = DataKey::generate().expect("key");
    let secret = *key.expose_secret();
    let user_key =
        |k: &[u8; 32]| Arc::new(UserKey::new("alice", DataKey::from_slice(k).expect("key")));
    let data = payload(17 * MIB + 99, 2);
    // Node A: 13 MiB arrive, then the client vanishes. Two whole parts
    // (5 MiB each, the first with the header) are stored; the rest of
    // what was sealed is not, and is sent again.
    let a = node(&pre).for_user(user_key(&secret)).expect("user");
    interrupted(&a, "/f.bin", UploadMode::Replace, &data[..13 * MIB]).await;
    drop(a);
    // Node B: SIZE tells where to go on; the rest completes the file.
    let b = node(&pre).for_user(user_key(&secret)).expect("user");
    let at = b.size(&p("/f.bin")).await.expect("size");
    assert!(
        at >= 9 * MIB as u64 && at <= 13 * MIB as u64,
        "resume point {at}"
    );
    assert_eq!(at % 65_536, 0);
    put(&b, "/f.bin", UploadMode::Resume(at), &data[at as usize..]).await;
    assert_eq!(get(&b, "/f.bin").await, data);
    // The multipart upload and its record are gone.
    let keys = objects(&pre);
    assert!(
        keys.iter()
            .all(|k| !k.contains(".staging/") || k.ends_with('/')),
        "{keys:?}"
    );
    assert!(client(&pre)
        .list_multipart_uploads("")
        .expect("uploads")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_forged_or_rolled_back_is_never_continued() {
    let pre = prefix("record");
    let vault = node(&pre);
    let alice = vault
        .for_user(Arc::new(UserKey::new(
            "alice",
            DataKey::generate().expect("key"),
        )))
        .expect("user");
    let data = payload(24 * MIB, 3);
    let c = client(&pre);
    let record = || {
        let keys = objects(&pre);
        keys.into_iter()
            .find(|k| k.starts_with(".staging/") && k.ends_with(".part"))
            .expect("a record")
    };
    // A record under another key (someone who can write the bucket but has
    // no data key): the upload starts afresh instead.
    interrupted(&alice, "/g.bin", UploadMode::Replace, &data[..11 * MIB]).await;
    let name = record();
    let mallory = node(&pre)
        .for_user(Arc::new(UserKey::new(
            "alice",
            DataKey::generate().expect("key"),
        )))
        .expect("user");
    let at = alice.size(&p("/g.bin")).await.expect("size");
    assert!(at > 0);
    // Under another key the record does not verify: not continued, and
    // cleared away.
    assert!(matches!(
        mallory.upload(&p("/g.bin"), UploadMode::Resume(at)).await,
        Err(VaultError::BadOffset { available: 0, .. })
    ));
    assert!(matches!(
        alice.upload(&p("/g.bin"), UploadMode::Resume(at)).await,
        Err(VaultError::BadOffset { available: 0, .. })
    ));
    // A genuine but older record (rolled back): the multipart upload holds
    // parts it does not name, so it is not continued either.
    interrupted(&alice, "/g.bin", UploadMode::Replace, &data[..6 * MIB]).await;
    let old = c.get_small(&name, 1 << 20).expect("get").expect("record");
    let at = alice.size(&p("/g.bin")).await.expect("size");
    interrupted(
        &alice,
        "/g.bin",
        UploadMode::Resume(at),
        &data[at as usize..17 * MIB],
    )
    .await;
    c.put(&name, &old, &[("staged-len", &at.to_string())])
        .expect("roll back");
    assert!(matches!(
        alice.upload(&p("/g.bin"), UploadMode::Resume(at)).await,
        Err(VaultError::BadOffset { available: 0, .. })
    ));
    // And the file still goes up whole from the start.
    put(&alice, "/g.bin", UploadMode::Replace, &data).await;
    assert_eq!(get(&alice, "/g.bin").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire_and_shredding_takes_everything() {
    let pre = prefix("expire");
    let vault = node(&pre);
    let alice = vault
        .for_user(Arc::new(UserKey::new(
            "alice",
            DataKey::generate().expect("key"),
        )))
        .expect("user");
    let data = payload(7 * MIB, 4);
    interrupted(&alice, "/h.bin", UploadMode::Replace, &data).await;
    assert!(!client(&pre)
        .list_multipart_uploads("")
        .expect("uploads")
        .is_empty());
    // Not yet old: kept.
    assert_eq!(vault.expire_staging(Duration::from_secs(3600)), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(vault.expire_staging(Duration::ZERO), 1);
    assert!(client(&pre)
        .list_multipart_uploads("")
        .expect("uploads")
        .is_empty());
    put(&alice, "/kept", UploadMode::Replace, b"x").await;
    interrupted(&alice, "/part", UploadMode::Replace, &data).await;
    assert_eq!(vault.remove_user_files("alice").expect("shred"), 2);
    let left: Vec<String> = objects(&pre)
        .into_iter()
        .filter(|k| !k.ends_with('/'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(client(&pre)
        .list_multipart_uploads("")
        .expect("uploads")
        .is_empty());
}

/// A record key of the test's own (the vault derives one per user).
#[derive(Debug)]
struct TestRecordKey(aws_lc_rs::hmac::Key);

impl dropvault_core::storage::RecordKey for TestRecordKey {
    fn tag(&self, record: &[u8]) -> Vec<u8> {
        aws_lc_rs::hmac::sign(&self.0, record).as_ref().to_vec()
    }

    fn verify(&self, record: &[u8], tag: &[u8]) -> bool {
        aws_lc_rs::hmac::verify(&self.0, record, tag).is_ok()
    }
}

fn record_key() -> Arc<dyn dropvault_core::storage::RecordKey> {
    Arc::new(TestRecordKey(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        b"test record key",
    )))
}

fn storage(prefix: &str) -> S3Storage {
    S3Storage::new(
        client(prefix),
        S3Tuning {
            part_size: 5 << 20,
            parts_in_flight: 2,
        },
    )
}

/// Sealed bytes of one 5 MiB part in [`storage`]'s tuning: 80 whole
/// sealed segments; the first part also holds the 96-byte header.
const PART: usize = 80 * 65_552;
const FIRST_PART: usize = 96 + PART;

/// A prefix of its own, a record key and a storage with its staging
/// folder, for the staging tests.
fn staging_area(
    name: &str,
) -> (
    String,
    Arc<dyn dropvault_core::storage::RecordKey>,
    S3Storage,
) {
    use dropvault_core::storage::Storage;
    let pre = prefix(name);
    let s = storage(&pre);
    s.mkdir(".staging").expect("mkdir");
    (pre, record_key(), s)
}

/// Rewrites the record at `name` with `edit` applied to its body and a
/// valid tag under `key`: what the node itself could have written.
fn rewrite_record(
    prefix: &str,
    name: &str,
    key: &Arc<dyn dropvault_core::storage::RecordKey>,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let c = client(prefix);
    let bytes = c.get_small(name, 1 << 20).expect("get").expect("record");
    let at = bytes.iter().rposition(|&b| b == b'\n').expect("tag line");
    let mut body: serde_json::Value = serde_json::from_slice(&bytes[..at]).expect("json");
    edit(&mut body);
    let mut out = serde_json::to_vec(&body).expect("json");
    use base64::Engine as _;
    let tag = base64::engine::general_purpose::STANDARD.encode(key.tag(&out));
    out.push(b'\n');
    out.extend_from_slice(tag.as_bytes());
    c.put(name, &out, &[]).expect("put");
}

#[test]
fn a_part_that_may_have_been_sent_is_never_sealed_again_under_its_nonces() {
    use dropvault_core::storage::Storage;
    use std::io::Write;
    let name = ".staging/u.part";
    let (pre, key, s) = staging_area("pending");
    // One whole part stored, the rest not: a clean cut.
    let part1 = FIRST_PART;
    {
        let mut staged = s.stage(name, &key).expect("stage");
        let mut sink = staged.sink(0).expect("sink");
        sink.write_all(&payload(part1 + 1000, 9)).expect("write");
        assert_eq!(sink.sync().expect("sync"), part1 as u64);
    }
    assert_eq!(
        storage(&pre).stage(name, &key).expect("stage").stored_len(),
        part1 as u64
    );
    // The record says part 2 may have been on its way, and it is not
    // stored whole: the upload is not continued (stored length 0) and its
    // multipart upload is gone.
    rewrite_record(&pre, name, &key, |body| {
        body["pending"] = serde_json::json!([[2, PART]]);
    });
    let staged = storage(&pre).stage(name, &key).expect("stage");
    assert_eq!(staged.stored_len(), 0);
    drop(staged);
    assert!(client(&pre)
        .list_multipart_uploads("")
        .expect("uploads")
        .is_empty());
}

#[test]
fn a_part_on_its_way_that_arrived_whole_is_kept() {
    use dropvault_core::storage::Storage;
    use std::io::Write;
    let name = ".staging/v.part";
    let (pre, key, s) = staging_area("arrived");
    let (part1, part2) = (FIRST_PART, PART);
    // A node that dies right after its parts arrive: nothing records them
    // as stored (the sink is never synced or dropped).
    let mut staged = s.stage(name, &key).expect("stage");
    let mut sink = staged.sink(0).expect("sink");
    sink.write_all(&payload(part1 + part2 + 5000, 10))
        .expect("write");
    std::mem::forget(sink);
    std::mem::forget(staged);
    let c = client(&pre);
    let arrived = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        c.list_multipart_uploads("")
            .expect("uploads")
            .first()
            .and_then(|u| c.list_parts(&u.key, &u.upload_id).expect("parts"))
            .is_some_and(|p| p.len() == 2)
    });
    assert!(arrived, "the two parts never arrived");
    // Another node adopts both parts: they are in the record as on their
    // way, and the bucket holds them whole.
    let other = storage(&pre).stage(name, &key).expect("stage");
    assert_eq!(other.stored_len(), (part1 + part2) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reads_across_spans_in_any_order_read_back_exact() {
    let pre = prefix("reads");
    let alice = node(&pre)
        .for_user(Arc::new(UserKey::new(
            "alice",
            DataKey::generate().expect("key"),
        )))
        .expect("user");
    let data = payload(11 * MIB + 12_345, 11);
    put(&alice, "/r.bin", UploadMode::Replace, &data).await;
    let file = alice.open_read(&p("/r.bin")).await.expect("open");
    // Reads that straddle chunk and span boundaries, forwards, backwards
    // and many at once (as an SFTP client's pipelined requests come back).
    // A read that needs a kept chunk and a new span at once, after reads
    // elsewhere made that chunk the oldest kept.
    for (off, len) in [(4 * MIB, 10), (0, 10), (8 * MIB - 100, 200)] {
        let got = file.read_at(off as u64, len).await.expect("read_at");
        assert_eq!(got, data[off..off + len], "at {off}");
    }
    let step = 200_000usize;
    let offsets: Vec<usize> = (0..data.len()).step_by(step).collect();
    for &off in offsets.iter().chain(offsets.iter().rev()) {
        let got = file.read_at(off as u64, step).await.expect("read_at");
        assert_eq!(got, data[off..(off + step).min(data.len())], "at {off}");
    }
    let reads = offsets.iter().map(|&off| {
        let file = file.clone();
        tokio::spawn(async move { (off, file.read_at(off as u64, 32_768).await) })
    });
    for read in reads.collect::<Vec<_>>() {
        let (off, got) = read.await.expect("join");
        let got = got.expect("read_at");
        assert_eq!(got, data[off..(off + 32_768).min(data.len())], "at {off}");
    }
}
