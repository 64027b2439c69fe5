//! The vault over a real folder: sealed uploads through staging, atomic
//! commit, resume rules, listings with plaintext sizes, path confinement.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::path::Path;
use std::sync::Arc;

use common::kek::provider as kek;
use dropvault_core::keys::{KeyFileStore, Keyring};
use dropvault_core::vault::{Entry, EntryKind, UploadMode, UserVault, VPath, Vault, VaultError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-6c1f0e";

struct Fixture {
    dir: tempfile::TempDir,
    vault: Vault,
    user: UserVault,
    key: Arc<dropvault_core::keys::UserKey>,
}

fn fixture() -> Fixture {
    fixture_with(|v| v)
}

/// A fixture whose vault `setup` configured.
fn fixture_with(setup: impl FnOnce(Vault) -> Vault) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = Keyring::new(
        kek(),
        Arc::new(KeyFileStore::open(dir.path().join("keys")).expect("keys")),
    );
    let vault = setup(Vault::create(dir.path().join("files")).expect("vault"));
    let key = ring.unlock("alice").expect("key");
    let user = vault.for_user(key.clone()).expect("user vault");
    Fixture {
        dir,
        vault,
        user,
        key,
    }
}

impl Fixture {
    fn staging_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("files").join(".staging")
    }

    /// The files in the staging folder.
    fn staged(&self) -> Vec<std::path::PathBuf> {
        walk(&self.staging_dir())
    }
}

/// Drops `up` and waits until its worker has let go of its staging file.
async fn abandon(mut up: dropvault_core::vault::Upload) {
    let exited = up.exit_signal();
    drop(up);
    exited.wait().await;
}

/// An upload of `data` to `path` whose client vanished: written, flushed
/// and dropped without a commit; returns once its worker has let go of the
/// staging file.
async fn interrupted(user: &UserVault, path: &str, data: &[u8]) {
    let mut up = user
        .upload(&p(path), UploadMode::Replace)
        .await
        .expect("upload");
    up.write_all(data).await.expect("write");
    up.flush().await.expect("flush");
    abandon(up).await;
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).expect("path")
}

fn content(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    if len >= MARKER.len() {
        v[..MARKER.len()].copy_from_slice(MARKER);
    }
    v
}

async fn put(user: &UserVault, path: &str, data: &[u8]) -> u64 {
    let mut up = user
        .upload(&p(path), UploadMode::Replace)
        .await
        .expect("upload");
    up.write_all(data).await.expect("write");
    up.commit().await.expect("commit")
}

/// Every entry of folder `path`, sorted by name (listings come in storage
/// order).
async fn list(user: &UserVault, path: &str) -> Result<Vec<Entry>, VaultError> {
    let mut listing = user.list(&p(path)).await?;
    let mut out = Vec::new();
    loop {
        let batch = listing.next_batch().await?;
        if batch.is_empty() {
            break;
        }
        out.extend(batch);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn get(user: &UserVault, path: &str, offset: u64) -> Vec<u8> {
    let mut d = user.download(&p(path), offset).await.expect("download");
    let mut out = Vec::new();
    d.read_to_end(&mut out).await.expect("read");
    out
}

/// Starts an upload, retrying while the file is busy: a dropped upload's
/// worker holds the staging file until it has written out what it sealed.
async fn upload_when_free(
    user: &UserVault,
    path: &str,
    mode: UploadMode,
) -> Result<dropvault_core::vault::Upload, VaultError> {
    for _ in 0..250 {
        match user.upload(&p(path), mode).await {
            Err(VaultError::Busy) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
    user.upload(&p(path), mode).await
}

/// Fails if any file under `dir` contains the marker.
fn assert_no_plaintext(dir: &Path) {
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).expect("read");
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER),
            "plaintext marker found in {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn upload_commit_list_download() {
    let f = fixture();
    let data = content(3 * 65536 + 5);
    assert_eq!(put(&f.user, "/a.bin", &data).await, data.len() as u64);
    f.user.mkdir(&p("/sub")).await.expect("mkdir");
    put(&f.user, "/sub/empty", b"").await;

    let list = list(&f.user, "/").await.expect("list");
    let names: Vec<_> = list
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(
        names,
        [
            ("a.bin", EntryKind::File, data.len() as u64),
            ("sub", EntryKind::Dir, 0)
        ]
    );
    assert_eq!(f.user.size(&p("/sub/empty")).await.expect("size"), 0);
    assert!(get(&f.user, "/a.bin", 0).await == data);
    // A download from an offset starts in the right segment.
    assert!(get(&f.user, "/a.bin", 70_000).await == data[70_000..]);
    assert!(matches!(
        f.user.download(&p("/a.bin"), data.len() as u64 + 1).await,
        Err(VaultError::BadOffset { .. })
    ));
    // Nothing in storage holds plaintext; the staging folder is empty.
    assert_no_plaintext(f.dir.path());
    assert_eq!(walk(&f.vault.root().join(".staging")).len(), 0);
}

#[tokio::test]
async fn an_uncommitted_upload_never_appears_and_resumes_from_staging() {
    let f = fixture();
    let data = content(5 * 65536 + 123);
    interrupted(&f.user, "/big", &data[..2 * 65536 + 500]).await;
    assert!(matches!(
        f.user.stat(&p("/big")).await,
        Err(VaultError::NotFound)
    ));
    assert!(list(&f.user, "/").await.expect("list").is_empty());
    // SIZE offers the resume point: whole sealed segments only.
    let at = f.user.size(&p("/big")).await.expect("resume point");
    assert_eq!(at, 2 * 65536);
    // Resuming past it is refused and says where it could resume. (The
    // dropped upload's worker may still hold the file for a moment: retry
    // while busy, as a client would.)
    match upload_when_free(&f.user, "/big", UploadMode::Resume(at + 1)).await {
        Err(VaultError::BadOffset {
            requested,
            available,
        }) => {
            assert_eq!((requested, available), (at + 1, at));
        }
        other => panic!("expected BadOffset, got {other:?}"),
    }
    let mut up = f
        .user
        .upload(&p("/big"), UploadMode::Resume(at))
        .await
        .expect("resume");
    assert_eq!(up.start_offset(), at);
    up.write_all(&data[at as usize..]).await.expect("write");
    up.commit().await.expect("commit");
    assert!(get(&f.user, "/big", 0).await == data);
    assert_no_plaintext(f.dir.path());
}

#[tokio::test]
async fn rest_on_a_committed_file_and_append_reseal_under_a_new_salt() {
    let f = fixture();
    let data = content(200_000);
    put(&f.user, "/f", &data[..150_000]).await;
    let before = std::fs::read(f.vault.root().join("alice/f")).expect("read");

    // REST 100000 + STOR: keep the first 100000 bytes, write the rest anew.
    let mut up = f
        .user
        .upload(&p("/f"), UploadMode::Resume(100_000))
        .await
        .expect("rest");
    up.write_all(&data[100_000..]).await.expect("write");
    up.commit().await.expect("commit");
    assert!(get(&f.user, "/f", 0).await == data);
    let after = std::fs::read(f.vault.root().join("alice/f")).expect("read");
    assert_ne!(
        before[..96],
        after[..96],
        "re-sealed files get a fresh header and salt"
    );

    // APPE adds to the end.
    let mut up = f
        .user
        .upload(&p("/f"), UploadMode::Append)
        .await
        .expect("appe");
    up.write_all(b"tail").await.expect("write");
    up.commit().await.expect("commit");
    let got = get(&f.user, "/f", 0).await;
    assert_eq!(got.len(), data.len() + 4);
    assert_eq!(&got[data.len()..], b"tail");
    // APPE to a missing file creates it.
    let mut up = f
        .user
        .upload(&p("/new"), UploadMode::Append)
        .await
        .expect("appe");
    up.write_all(b"x").await.expect("write");
    up.commit().await.expect("commit");
    assert_eq!(get(&f.user, "/new", 0).await, b"x");
    assert_no_plaintext(f.dir.path());
}

#[tokio::test]
async fn one_upload_per_path_at_a_time() {
    let f = fixture();
    let first = f
        .user
        .upload(&p("/x"), UploadMode::Replace)
        .await
        .expect("upload");
    assert!(matches!(
        f.user.upload(&p("/x"), UploadMode::Replace).await,
        Err(VaultError::Busy)
    ));
    drop(first);
    assert!(upload_when_free(&f.user, "/x", UploadMode::Replace)
        .await
        .is_ok());
}

#[tokio::test]
async fn paths_stay_inside_the_users_folder() {
    let f = fixture();
    // ".." stops at the user's root.
    put(&f.user, "/../../../escape", b"data").await;
    assert!(f.vault.root().join("alice/escape").exists());
    assert!(!f.dir.path().join("escape").exists());
    assert!(VPath::resolve(&VPath::root(), "..\\x").is_err());

    // A symbolic link planted in the folder is never followed.
    std::os::unix::fs::symlink("/etc", f.vault.root().join("alice/link")).expect("symlink");
    assert!(matches!(
        list(&f.user, "/link").await,
        Err(VaultError::PermissionDenied)
    ));
    assert!(matches!(
        f.user.download(&p("/link/passwd"), 0).await,
        Err(VaultError::PermissionDenied)
    ));
    assert!(matches!(
        f.user.upload(&p("/link/x"), UploadMode::Replace).await,
        Err(VaultError::PermissionDenied)
    ));
    // Listings leave the link out.
    let names: Vec<_> = list(&f.user, "/")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["escape"]);
}

#[tokio::test]
async fn rename_remove_mkdir_rmdir() {
    let f = fixture();
    put(&f.user, "/a", b"1").await;
    f.user.mkdir(&p("/d")).await.expect("mkdir");
    assert!(matches!(
        f.user.mkdir(&p("/d")).await,
        Err(VaultError::AlreadyExists)
    ));
    f.user.rename(&p("/a"), &p("/d/b")).await.expect("rename");
    assert_eq!(get(&f.user, "/d/b", 0).await, b"1");
    assert!(matches!(
        f.user.rmdir(&p("/d")).await,
        Err(VaultError::NotEmpty)
    ));
    assert!(matches!(
        f.user.rename(&p("/d"), &p("/d/e")).await,
        Err(VaultError::InvalidPath(_))
    ));
    assert!(matches!(
        f.user.remove(&p("/d")).await,
        Err(VaultError::IsADirectory)
    ));
    f.user.remove(&p("/d/b")).await.expect("remove");
    f.user.rmdir(&p("/d")).await.expect("rmdir");
    assert!(matches!(
        f.user.stat(&p("/d")).await,
        Err(VaultError::NotFound)
    ));
    assert!(matches!(
        f.user.remove(&p("/nope")).await,
        Err(VaultError::NotFound)
    ));
    assert!(matches!(
        list(&f.user, "/nope/deeper").await,
        Err(VaultError::NotFound)
    ));
}

#[tokio::test]
async fn a_tampered_file_fails_to_download() {
    let f = fixture();
    put(&f.user, "/t", &content(100_000)).await;
    let path = f.vault.root().join("alice/t");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[96 + 65_552 + 10] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    let mut d = f.user.download(&p("/t"), 0).await.expect("header is fine");
    let mut out = Vec::new();
    let err = d
        .read_to_end(&mut out)
        .await
        .expect_err("segment 1 is damaged");
    assert!(dropvault_format::Error::from_io(&err).is_some(), "{err}");
}

#[tokio::test]
async fn large_downloads_read_in_parallel_come_back_exact_from_any_offset() {
    let f = fixture();
    // Many chunks, several of them read ahead at once.
    let data = content(20 * 1024 * 1024 + 12_345);
    put(&f.user, "/big", &data).await;
    let mib = 1024 * 1024;
    for offset in [
        0,
        1,
        65_535,
        65_536,
        mib - 1,
        mib + 5,
        9 * mib + 77,
        data.len() - 3,
    ] {
        let back = get(&f.user, "/big", offset as u64).await;
        assert!(back == data[offset..], "offset {offset}");
    }
    // Chunk by chunk, as the FTP server sends it.
    let mut d = f.user.download(&p("/big"), 3).await.expect("download");
    let mut back = Vec::new();
    while let Some(chunk) = d.next_chunk().await.expect("chunk") {
        back.extend_from_slice(&chunk);
        d.recycle(chunk);
    }
    assert!(back == data[3..]);
}

#[tokio::test]
async fn a_damaged_segment_in_a_parallel_download_stops_it_after_the_good_data() {
    let f = fixture();
    let data = content(12 * 1024 * 1024);
    put(&f.user, "/big", &data).await;
    let path = f.vault.root().join("alice/big");
    let mut bytes = std::fs::read(&path).expect("read");
    // Segment 21: inside the second 1 MiB chunk, read ahead with others.
    bytes[96 + 21 * 65_552 + 100] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    let mut d = f
        .user
        .download(&p("/big"), 0)
        .await
        .expect("header is fine");
    let mut back = Vec::new();
    let err = loop {
        match d.next_chunk().await {
            Ok(Some(chunk)) => back.extend_from_slice(&chunk),
            Ok(None) => panic!("the damaged segment was not reported"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        back.len(),
        21 * 65_536,
        "every good segment before the bad one"
    );
    assert!(back == data[..back.len()]);
    assert!(matches!(
        dropvault_format::Error::from_io(&err),
        Some(dropvault_format::Error::SegmentAuth { index: 21 })
    ));
}

#[tokio::test]
async fn a_file_cut_to_the_length_of_an_empty_one_fails_to_download() {
    let f = fixture();
    put(&f.user, "/c", &content(100_000)).await;
    let path = f.vault.root().join("alice/c");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..96 + 16]).expect("write");
    let err = f
        .user
        .download(&p("/c"), 0)
        .await
        .expect_err("an empty file's segment must authenticate");
    assert!(
        matches!(
            err,
            VaultError::Format(dropvault_format::Error::SegmentAuth { index: 0 })
        ),
        "{err:?}"
    );
    // A genuinely empty file still downloads.
    put(&f.user, "/e", b"").await;
    assert!(get(&f.user, "/e", 0).await.is_empty());
}

#[tokio::test]
async fn a_large_upload_dropped_midway_keeps_its_sealed_prefix_and_resumes() {
    // Large enough that sealed data goes to the staging file through the
    // separate writer thread, in several batches.
    let f = fixture();
    let data = content(7 * 1024 * 1024 + 4321);
    let cut = 5 * 1024 * 1024 + 777;
    interrupted(&f.user, "/large", &data[..cut]).await;
    // Everything flushed is in the staging file: whole segments up to the cut.
    let at = f.user.size(&p("/large")).await.expect("resume point");
    assert_eq!(at, (cut as u64 / 65_536) * 65_536);
    let mut up = upload_when_free(&f.user, "/large", UploadMode::Resume(at))
        .await
        .expect("resume");
    up.write_all(&data[at as usize..]).await.expect("write");
    assert_eq!(up.commit().await.expect("commit"), data.len() as u64);
    assert!(get(&f.user, "/large", 0).await == data);
    // And a plain large upload, replaced by a smaller one.
    put(&f.user, "/large", &data[..3 * 1024 * 1024]).await;
    assert!(get(&f.user, "/large", 0).await == data[..3 * 1024 * 1024]);
    assert_no_plaintext(f.dir.path());
}

#[tokio::test]
async fn a_create_upload_never_replaces_a_file() {
    let f = fixture();
    put(&f.user, "/taken", b"first").await;
    assert!(matches!(
        f.user.upload(&p("/taken"), UploadMode::Create).await,
        Err(VaultError::AlreadyExists)
    ));
    // The name is free when the upload starts and taken before it commits:
    // the commit fails and the file that appeared stays as it is.
    let mut up = f
        .user
        .upload(&p("/raced"), UploadMode::Create)
        .await
        .expect("upload");
    up.write_all(b"second").await.expect("write");
    // (Another process puts a file there: a copy of /taken.)
    let home = f.dir.path().join("files").join("alice");
    std::fs::copy(home.join("taken"), home.join("raced")).expect("copy");
    assert!(matches!(up.commit().await, Err(VaultError::AlreadyExists)));
    assert_eq!(get(&f.user, "/raced", 0).await, b"first");
    // Its staging file is gone with it.
    let staging = f.dir.path().join("files").join(".staging");
    assert_eq!(std::fs::read_dir(&staging).expect("ls").count(), 0);
    // A free name commits.
    let mut up = f
        .user
        .upload(&p("/fresh"), UploadMode::Create)
        .await
        .expect("upload");
    up.write_all(b"new").await.expect("write");
    assert_eq!(up.commit().await.expect("commit"), 3);
    assert_eq!(get(&f.user, "/fresh", 0).await, b"new");
}

#[tokio::test]
async fn set_modified_sets_the_time_listings_show() {
    let f = fixture();
    put(&f.user, "/doc", &content(70_000)).await;
    f.user.mkdir(&p("/dir")).await.expect("mkdir");
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_007);
    for path in ["/doc", "/dir"] {
        let e = f.user.set_modified(&p(path), when).await.expect("set");
        assert_eq!(e.modified, when);
        assert_eq!(f.user.stat(&p(path)).await.expect("stat").modified, when);
    }
    let listed = list(&f.user, "/").await.expect("list");
    assert!(listed.iter().all(|e| e.modified == when), "{listed:?}");
    assert_eq!(get(&f.user, "/doc", 0).await, content(70_000));
    assert!(matches!(
        f.user.set_modified(&p("/missing"), when).await,
        Err(VaultError::NotFound)
    ));
}

#[tokio::test]
async fn opening_a_vault_changes_nothing_and_staging_expires_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    // Opening creates nothing; listings of what is not there are empty.
    let vault = Vault::open(&root);
    assert!(!root.exists());
    assert!(vault.user_folders().expect("users").is_empty());
    assert!(vault.quarantine_list().expect("quarantine").is_empty());
    assert!(!root.exists());

    let f = fixture();
    let staging = f.dir.path().join("files").join(".staging");
    let old = staging.join("interrupted.part");
    std::fs::write(&old, b"sealed bytes").expect("write");
    let week_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .and_then(|f| f.set_modified(week_ago))
        .expect("age it");
    // An old staging file an upload holds stays.
    let held = staging.join("held.part");
    std::fs::write(&held, b"sealed").expect("write");
    let lock = std::fs::File::options()
        .write(true)
        .open(&held)
        .expect("open");
    lock.set_modified(week_ago).expect("age it");
    lock.lock().expect("lock");
    // A fresh one stays too.
    let fresh = staging.join("fresh.part");
    std::fs::write(&fresh, b"sealed").expect("write");
    let _reopened = Vault::open(f.dir.path().join("files"));
    assert!(old.exists(), "opening the vault must not expire anything");
    assert_eq!(
        f.vault.expire_staging(dropvault_core::vault::STAGING_TTL),
        1
    );
    assert!(!old.exists() && held.exists() && fresh.exists());
    drop(lock);
    assert_eq!(
        f.vault.expire_staging(dropvault_core::vault::STAGING_TTL),
        1
    );
    assert!(!held.exists() && fresh.exists());
}

/// The staging file of an upload a crash interrupted while writing may end
/// inside a segment: SIZE offers its whole segments, and resuming re-seals
/// them under a new salt (that last segment's counter may be on the disk).
#[tokio::test]
async fn a_staging_file_cut_inside_a_segment_resumes_under_a_new_salt() {
    for mode in ["rest-at-size", "rest-earlier", "appe"] {
        let f = fixture();
        let data = content(5 * 65536 + 123);
        interrupted(&f.user, "/big", &data[..3 * 65536 + 10]).await;
        // Once the dropped upload's worker has let go (an impossible
        // resume gets past the lock), cut its staging file inside the third
        // segment, as a crash during a write would.
        let staging_dir = f.dir.path().join("files").join(".staging");
        let free = upload_when_free(&f.user, "/big", UploadMode::Resume(1 << 40)).await;
        assert!(
            matches!(free, Err(VaultError::BadOffset { .. })),
            "{free:?}"
        );
        let staged = std::fs::read_dir(&staging_dir)
            .expect("ls")
            .flatten()
            .map(|e| e.path())
            .find(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > 3 * 65552))
            .expect("the staging file");
        let sealed = std::fs::read(&staged).expect("read");
        let header = sealed[..96].to_vec();
        std::fs::write(&staged, &sealed[..96 + 2 * 65552 + 4096]).expect("cut");
        assert_eq!(f.user.size(&p("/big")).await.expect("size"), 2 * 65536);
        let (upload_mode, from) = match mode {
            "rest-at-size" => (UploadMode::Resume(2 * 65536), 2 * 65536),
            "rest-earlier" => (UploadMode::Resume(70_000), 70_000),
            _ => (UploadMode::Append, 2 * 65536),
        };
        let mut up = upload_when_free(&f.user, "/big", upload_mode)
            .await
            .expect("resume");
        assert_eq!(up.start_offset(), from);
        up.write_all(&data[from as usize..]).await.expect("write");
        up.commit().await.expect("commit");
        assert!(get(&f.user, "/big", 0).await == data, "{mode}");
        // A new salt: the stored header is not the interrupted upload's.
        let stored = std::fs::read(f.dir.path().join("files/alice/big")).expect("read");
        assert_ne!(stored[..96], header[..], "{mode}");
        assert_no_plaintext(f.dir.path());
    }
}

/// A refused resume leaves an empty staging file behind; SIZE must not
/// take it for an upload that can be resumed at 0.
#[tokio::test]
async fn an_empty_staging_file_is_no_resume_point() {
    let f = fixture();
    assert!(matches!(
        f.user.upload(&p("/nothing"), UploadMode::Resume(100)).await,
        Err(VaultError::BadOffset {
            requested: 100,
            available: 0
        })
    ));
    assert!(matches!(
        f.user.size(&p("/nothing")).await,
        Err(VaultError::NotFound)
    ));
}

/// A command scanner that rejects uploads holding `BAD-BYTES`.
fn rejecting_scanner(quarantine: bool) -> Option<Arc<dropvault_core::scan::Scanner>> {
    let settings = dropvault_core::scan::ScanSettings {
        clamd: None,
        command: [
            "sh",
            "-c",
            "if grep -q BAD-BYTES; then echo bad bytes >&2; exit 3; fi",
        ]
        .map(String::from)
        .to_vec(),
        on_error: dropvault_core::scan::OnError::Reject,
        timeout: std::time::Duration::from_secs(30),
        quarantine,
        run_as: None,
    };
    dropvault_core::scan::Scanner::new(settings)
        .expect("scanner")
        .map(Arc::new)
}

/// Moves the upload's staging file aside and puts another file under its
/// name, as if something else had taken the name meanwhile. Returns the
/// staging name.
fn swap_staging_file(f: &Fixture) -> std::path::PathBuf {
    let staged = f.staged();
    assert_eq!(staged.len(), 1, "{staged:?}");
    let name = staged[0].clone();
    std::fs::rename(&name, f.staging_dir().join("moved-aside")).expect("move aside");
    std::fs::write(&name, b"IMPOSTOR").expect("impostor");
    name
}

/// Commit, reject and quarantine act on the staging file the upload holds,
/// never on whatever its name names when they run.
#[tokio::test]
async fn commit_reject_and_quarantine_act_on_the_file_the_upload_holds() {
    let f = fixture_with(|v| v.with_scanner(rejecting_scanner(true)));
    let good = content(300_000);
    let mut up = f
        .user
        .upload(&p("/ok.bin"), UploadMode::Replace)
        .await
        .expect("upload");
    up.write_all(&good).await.expect("write");
    up.flush().await.expect("flush");
    let name = swap_staging_file(&f);
    assert_eq!(up.commit().await.expect("commit"), good.len() as u64);
    assert!(get(&f.user, "/ok.bin", 0).await == good);
    assert_eq!(std::fs::read(&name).expect("impostor stays"), b"IMPOSTOR");
    for leftover in f.staged() {
        std::fs::remove_file(leftover).expect("rm");
    }

    let mut bad = content(300_000);
    bad.extend_from_slice(b"BAD-BYTES");
    let mut up = f
        .user
        .upload(&p("/bad.bin"), UploadMode::Replace)
        .await
        .expect("upload");
    up.write_all(&bad).await.expect("write");
    up.flush().await.expect("flush");
    let name = swap_staging_file(&f);
    assert!(matches!(
        up.commit().await,
        Err(VaultError::Rejected { .. })
    ));
    assert_eq!(std::fs::read(&name).expect("impostor stays"), b"IMPOSTOR");
    // What went to quarantine is the rejected upload, sealed.
    let q = f.vault.quarantine_list().expect("quarantine");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].size, bad.len() as u64);
    assert!(list(&f.user, "/").await.expect("ls").len() == 1);
    assert_no_plaintext(f.dir.path());
}

/// APPE's re-seal of the committed file is the upload's worker's job, after
/// `upload` returned (a front end has answered by then); dropped before any
/// new byte came, the upload leaves no copy in staging.
#[tokio::test]
async fn an_append_reseals_after_the_upload_started_and_leaves_no_copy_when_dropped() {
    let f = fixture();
    let data = content(3 * 1024 * 1024 + 5);
    put(&f.user, "/a.bin", &data).await;
    let up = f
        .user
        .upload(&p("/a.bin"), UploadMode::Append)
        .await
        .expect("append");
    assert_eq!(up.start_offset(), data.len() as u64);
    abandon(up).await;
    assert_eq!(f.staged(), Vec::<std::path::PathBuf>::new());

    // A committed file damaged in its middle: the append starts (the
    // check of the header and length is quick), and the damage shows when
    // the re-seal reaches it; nothing stays in staging.
    let stored = f.dir.path().join("files").join("alice").join("a.bin");
    let mut sealed = std::fs::read(&stored).expect("read");
    let middle = sealed.len() / 2;
    sealed[middle] ^= 1;
    std::fs::write(&stored, &sealed).expect("damage");
    let mut up = f
        .user
        .upload(&p("/a.bin"), UploadMode::Append)
        .await
        .expect("an append starts before its re-seal");
    let _ = up.write_all(b"more").await;
    assert!(matches!(up.commit().await, Err(VaultError::Format(_))));
    assert_eq!(f.staged(), Vec::<std::path::PathBuf>::new());
}

/// A resume with no byte after the end of an unfinished upload has no last
/// segment to seal as final: refused, and the unfinished upload stays
/// resumable (it used to commit a file of an invalid length).
#[tokio::test]
async fn a_resume_with_no_new_bytes_is_refused_and_the_upload_stays_resumable() {
    let f = fixture();
    let data = content(5 * 65_536 + 999);
    interrupted(&f.user, "/r.bin", &data[..3 * 65_536 + 10]).await;
    let at = f.user.size(&p("/r.bin")).await.expect("resume point");
    assert_eq!(at, 3 * 65_536);
    for mode in [UploadMode::Resume(at), UploadMode::Append] {
        let up = f.user.upload(&p("/r.bin"), mode).await.expect("resume");
        assert!(
            matches!(up.commit().await, Err(VaultError::EmptyResume { offset }) if offset == at),
            "{mode:?}"
        );
        assert!(list(&f.user, "/").await.expect("ls").is_empty());
        assert_eq!(
            f.user.size(&p("/r.bin")).await.expect("still resumable"),
            at
        );
    }
    let mut up = upload_when_free(&f.user, "/r.bin", UploadMode::Resume(at))
        .await
        .expect("resume");
    up.write_all(&data[at as usize..]).await.expect("write");
    assert_eq!(up.commit().await.expect("commit"), data.len() as u64);
    assert!(get(&f.user, "/r.bin", 0).await == data);
}

/// `max_staging_bytes_per_user`: one user's staging files together stay
/// under the bound; an upload that would pass it fails and leaves nothing.
#[tokio::test]
async fn staging_bytes_are_bounded_per_user() {
    const LIMIT: u64 = 1024 * 1024;
    let f = fixture_with(|v| v.with_staging_limit(Some(LIMIT)));
    // Too large by itself: refused on the way, nothing stays.
    let mut up = f
        .user
        .upload(&p("/big.bin"), UploadMode::Replace)
        .await
        .expect("upload");
    let _ = up.write_all(&content(3 * 1024 * 1024)).await;
    assert!(matches!(
        up.commit().await,
        Err(VaultError::StagingFull { limit: LIMIT })
    ));
    assert!(f.staged().is_empty() && list(&f.user, "/").await.expect("ls").is_empty());
    // An interrupted upload's staging file counts against later uploads.
    interrupted(&f.user, "/part.bin", &content(600_000)).await;
    let mut up = f
        .user
        .upload(&p("/second.bin"), UploadMode::Replace)
        .await
        .expect("upload");
    let _ = up.write_all(&content(600_000)).await;
    assert!(matches!(
        up.commit().await,
        Err(VaultError::StagingFull { .. })
    ));
    assert_eq!(f.staged().len(), 1, "the interrupted upload stays");
    assert_eq!(put(&f.user, "/small.bin", &content(300_000)).await, 300_000);
    // An append whose re-seal alone passes the bound is refused at once.
    let other = fixture();
    let data = content(2 * 1024 * 1024);
    put(&other.user, "/two.bin", &data).await;
    let bounded = Vault::create(other.dir.path().join("files"))
        .expect("vault")
        .with_staging_limit(Some(LIMIT));
    let user = bounded.for_user(other.key.clone()).expect("user");
    assert!(matches!(
        user.upload(&p("/two.bin"), UploadMode::Append).await,
        Err(VaultError::StagingFull { .. })
    ));
    assert!(other.staged().is_empty());
    assert!(get(&user, "/two.bin", 0).await == data);
}

/// A large folder is read a batch at a time: every entry once, in batches
/// of a few hundred, never the whole folder at once.
#[tokio::test]
async fn a_large_folder_is_listed_in_bounded_batches() {
    let f = fixture();
    put(&f.user, "/seed", b"x").await;
    let home = f.vault.root().join("alice");
    for i in 0..2000 {
        std::fs::hard_link(home.join("seed"), home.join(format!("f{i:04}"))).expect("link");
    }
    let mut listing = f.user.list(&VPath::root()).await.expect("list");
    let mut names = Vec::new();
    let mut batches = 0;
    loop {
        let batch = listing.next_batch().await.expect("batch");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 256, "a batch of {}", batch.len());
        assert!(batch
            .iter()
            .all(|e| e.kind == EntryKind::File && e.size == 1));
        batches += 1;
        names.extend(batch.into_iter().map(|e| e.name));
    }
    assert!(batches >= 8, "{batches} batches");
    // The end stays the end.
    assert!(listing
        .next_batch()
        .await
        .expect("after the end")
        .is_empty());
    names.sort();
    let mut expected: Vec<String> = (0..2000).map(|i| format!("f{i:04}")).collect();
    expected.push("seed".into());
    assert_eq!(names, expected);
}

/// `len` bytes from `offset` of `data`, as a read of the stored file must
/// return them: fewer where the data ends, none past it.
fn expected(data: &[u8], offset: usize, len: usize) -> &[u8] {
    let start = offset.min(data.len());
    &data[start..(start + len).min(data.len())]
}

#[tokio::test]
async fn read_at_returns_exactly_the_range_asked_for_at_and_across_segment_boundaries() {
    let f = fixture();
    let seg = 65_536;
    // Three full segments and a short final one.
    let data = content(3 * seg + 100);
    put(&f.user, "/r", &data).await;
    let file = f.user.open_read(&p("/r")).await.expect("open");
    assert_eq!(file.len(), data.len() as u64);
    for (offset, len) in [
        (0, seg),
        (seg, seg),
        (seg - 1, 1),
        (seg - 1, 2),
        (seg, 1),
        (seg - 10, seg + 20),
        (10, 3 * seg),
        (0, data.len()),
        (3 * seg, 200),
        (3 * seg - 5, 1_000),
        (data.len() - 1, 10),
        (data.len(), 10),
        (data.len() + 1_000, 10),
        (5, 0),
    ] {
        let back = file.read_at(offset as u64, len).await.expect("read");
        assert!(
            back == expected(&data, offset, len),
            "offset {offset} len {len}: {} bytes back",
            back.len()
        );
    }
    // Far past the end, at offsets no file reaches.
    assert!(file.read_at(u64::MAX, 10).await.expect("read").is_empty());
}

#[tokio::test]
async fn read_at_in_small_steps_forwards_backwards_and_at_once_gives_the_file() {
    let f = fixture();
    let data = content(5 * 65_536 + 4_321);
    put(&f.user, "/s", &data).await;
    let file = f.user.open_read(&p("/s")).await.expect("open");
    // In order, in the sizes SFTP clients ask for (the segment left open
    // by one read serves the next).
    for step in [1_000, 32 * 1024, 100_000] {
        let mut back = Vec::new();
        loop {
            let piece = file.read_at(back.len() as u64, step).await.expect("read");
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() == step || back.len() + piece.len() == data.len());
            back.extend_from_slice(&piece);
        }
        assert!(back == data, "step {step}");
    }
    // Backwards.
    let step = 30_000;
    let mut at = data.len();
    while at > 0 {
        let from = at.saturating_sub(step);
        let piece = file.read_at(from as u64, at - from).await.expect("read");
        assert!(piece == data[from..at], "at {from}");
        at = from;
    }
    // From clones at once, as pipelined requests are.
    let reads = (0..16usize).map(|i| {
        let file = file.clone();
        let offset = i * 20_011;
        tokio::spawn(async move { (offset, file.read_at(offset as u64, 50_000).await) })
    });
    for read in reads {
        let (offset, back) = read.await.expect("task");
        assert!(
            back.expect("read") == expected(&data, offset, 50_000),
            "offset {offset}"
        );
    }
}

#[tokio::test]
async fn read_at_returns_at_most_max_read_bytes() {
    let f = fixture();
    let data = content(dropvault_core::vault::ReadFile::MAX_READ + 3 * 65_536 + 7);
    put(&f.user, "/m", &data).await;
    let file = f.user.open_read(&p("/m")).await.expect("open");
    let max = dropvault_core::vault::ReadFile::MAX_READ;
    let back = file.read_at(5, 4 * max).await.expect("read");
    assert!(back == data[5..5 + max]);
}

#[tokio::test]
async fn read_at_of_an_empty_file_and_of_a_folder() {
    let f = fixture();
    put(&f.user, "/e", b"").await;
    let file = f.user.open_read(&p("/e")).await.expect("open");
    assert!(file.is_empty());
    assert!(file.read_at(0, 10).await.expect("read").is_empty());
    assert!(file.read_at(7, 10).await.expect("read").is_empty());
    f.user.mkdir(&p("/d")).await.expect("mkdir");
    assert!(matches!(
        f.user.open_read(&p("/d")).await,
        Err(VaultError::IsADirectory)
    ));
    assert!(matches!(
        f.user.open_read(&p("/none")).await,
        Err(VaultError::NotFound)
    ));
}

#[tokio::test]
async fn read_at_detects_a_file_cut_at_a_segment_boundary_or_inside_a_segment() {
    let f = fixture();
    let (header, sealed_seg) = (96, 65_552);
    let data = content(3 * 65_536 + 10);
    put(&f.user, "/cut", &data).await;
    let path = f.vault.root().join("alice/cut");
    let bytes = std::fs::read(&path).expect("read");

    // Cut after two whole segments: segment 1 now stands where the final
    // one should, sealed as not final.
    std::fs::write(&path, &bytes[..header + 2 * sealed_seg]).expect("write");
    let file = f.user.open_read(&p("/cut")).await.expect("header is fine");
    assert_eq!(file.len(), 2 * 65_536);
    // Segment 0 is authentic as it is; the cut shows where the end is read.
    assert!(file.read_at(0, 65_536).await.expect("segment 0") == data[..65_536]);
    let err = file.read_at(65_530, 100).await.expect_err("cut");
    assert!(
        matches!(
            err,
            VaultError::Format(dropvault_format::Error::Truncated { index: 1 })
        ),
        "{err:?}"
    );

    // Cut inside segment 1.
    std::fs::write(&path, &bytes[..header + sealed_seg + 1_000]).expect("write");
    let file = f.user.open_read(&p("/cut")).await.expect("header is fine");
    let err = file.read_at(65_536, 10).await.expect_err("cut");
    assert!(
        matches!(
            err,
            VaultError::Format(dropvault_format::Error::SegmentAuth { index: 1 })
        ),
        "{err:?}"
    );

    // Cut to the length of an empty file: refused on open.
    std::fs::write(&path, &bytes[..header + 16]).expect("write");
    assert!(matches!(
        f.user.open_read(&p("/cut")).await,
        Err(VaultError::Format(_))
    ));
}

#[tokio::test]
async fn read_at_fails_on_a_tampered_segment_and_only_there() {
    let f = fixture();
    let data = content(3 * 65_536);
    put(&f.user, "/t", &data).await;
    let path = f.vault.root().join("alice/t");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[96 + 65_552 + 10] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    let file = f.user.open_read(&p("/t")).await.expect("header is fine");
    let tampered = |r: Result<Vec<u8>, VaultError>| {
        matches!(
            r,
            Err(VaultError::Format(dropvault_format::Error::SegmentAuth {
                index: 1
            }))
        )
    };
    assert!(file.read_at(0, 65_536).await.expect("segment 0") == data[..65_536]);
    assert!(tampered(file.read_at(65_536, 10).await));
    // Into it from a segment the last read left open.
    assert!(file.read_at(0, 100).await.expect("segment 0") == data[..100]);
    assert!(tampered(file.read_at(100, 70_000).await));
    assert!(file.read_at(2 * 65_536, 65_536).await.expect("segment 2") == data[2 * 65_536..]);
}

#[tokio::test]
async fn reads_in_order_open_a_segment_once() {
    let f = fixture();
    let data = content(2 * 65_536);
    put(&f.user, "/o", &data).await;
    let file = f.user.open_read(&p("/o")).await.expect("open");
    assert!(file.read_at(0, 100).await.expect("read") == data[..100]);
    // Damage segment 0 in place: the next read in order still gets it
    // from the open it was read through.
    let path = f.vault.root().join("alice/o");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[96 + 500] ^= 1;
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for writing");
    std::os::unix::fs::FileExt::write_all_at(&disk, &bytes, 0).expect("write");
    assert!(file.read_at(100, 1_000).await.expect("read") == data[100..1_100]);
    // Once another segment took its place, the damage shows.
    assert!(file.read_at(65_536, 10).await.expect("read") == data[65_536..65_546]);
    assert!(matches!(
        file.read_at(0, 10).await,
        Err(VaultError::Format(dropvault_format::Error::SegmentAuth {
            index: 0
        }))
    ));
}

/// A copy of `key` (data keys are not `Clone`, on purpose).
fn copy_key(key: &dropvault_core::keys::DataKey) -> dropvault_core::keys::DataKey {
    dropvault_core::keys::DataKey::from_slice(key.expose_secret()).expect("32 bytes")
}

/// The key id in the header of a stored file.
fn stored_key_id(f: &Fixture, path: &str) -> dropvault_format::KeyId {
    let bytes = std::fs::read(f.vault.root().join("alice").join(path)).expect("read");
    dropvault_format::header::Header::parse_complete(&bytes[..96])
        .expect("header")
        .key_id
}

/// A user with two data keys (two nodes raced their first login) reads,
/// appends to and resumes files sealed under either, and seals new files
/// under the primary one; a key the user does not have still fails as a
/// wrong key.
#[tokio::test]
async fn a_user_with_two_keys_opens_each_file_with_the_key_its_header_names() {
    use dropvault_core::keys::{DataKey, UserKey};
    let f = fixture();
    let (k1, k2) = (
        DataKey::generate().expect("k1"),
        DataKey::generate().expect("k2"),
    );
    let data = content(3 * 65536 + 77);
    let part = &data[..2 * 65536 + 10];
    // Each "node" seals with the one key it got: a committed file and an
    // interrupted upload each.
    for (key, name) in [(&k1, "one"), (&k2, "two")] {
        let only = f
            .vault
            .for_user(Arc::new(UserKey::new("alice", copy_key(key))))
            .expect("vault");
        put(&only, &format!("/{name}"), &data).await;
        put(&only, &format!("/{name}-appended"), &data).await;
        interrupted(&only, &format!("/{name}-partial"), part).await;
    }
    assert_eq!(stored_key_id(&f, "one"), k1.id());
    assert_eq!(stored_key_id(&f, "two"), k2.id());

    let both = Arc::new(
        UserKey::with_keys("alice", vec![copy_key(&k2), copy_key(&k1)]).expect("two keys"),
    );
    let primary = if k1.id().0 < k2.id().0 {
        k1.id()
    } else {
        k2.id()
    };
    assert_eq!(both.data_key().id(), primary);
    assert_eq!(both.key_for(&k1.id()).map(DataKey::id), Some(k1.id()));
    assert_eq!(both.key_for(&k2.id()).map(DataKey::id), Some(k2.id()));
    let user = f.vault.for_user(both.clone()).expect("vault");
    for name in ["one", "two"] {
        // Read back, online and offline.
        assert!(get(&user, &format!("/{name}"), 0).await == data, "{name}");
        assert!(get(&user, &format!("/{name}"), 70_000).await == data[70_000..]);
        assert_eq!(
            f.vault
                .check_stored(&both, &p(&format!("/{name}")), |_| {})
                .expect("verify"),
            data.len() as u64
        );
        // An append re-seals the file under the primary key.
        let appended = format!("/{name}-appended");
        let mut up = user
            .upload(&p(&appended), UploadMode::Append)
            .await
            .expect("append");
        up.write_all(b"tail").await.expect("write");
        up.commit().await.expect("commit");
        let got = get(&user, &appended, 0).await;
        assert!(got[..data.len()] == data[..] && &got[data.len()..] == b"tail");
        assert_eq!(stored_key_id(&f, &appended[1..]), primary);
        // An interrupted upload continues under the key it was started with.
        let partial = format!("/{name}-partial");
        let at = user.size(&p(&partial)).await.expect("resume point");
        assert_eq!(at, 2 * 65536);
        let mut up = upload_when_free(&user, &partial, UploadMode::Resume(at))
            .await
            .expect("resume");
        assert_eq!(up.start_offset(), at);
        up.write_all(&data[at as usize..]).await.expect("write");
        up.commit().await.expect("commit");
        assert!(get(&user, &partial, 0).await == data, "{partial}");
        let sealed_by = if name == "one" { k1.id() } else { k2.id() };
        assert_eq!(stored_key_id(&f, &partial[1..]), sealed_by);
    }
    // New files: the primary key.
    put(&user, "/new", b"fresh").await;
    assert_eq!(stored_key_id(&f, "new"), primary);

    // Keys the header does not name are still the wrong key.
    let strangers = vec![
        DataKey::generate().expect("k3"),
        DataKey::generate().expect("k4"),
    ];
    let stranger = f
        .vault
        .for_user(Arc::new(
            UserKey::with_keys("alice", strangers).expect("two keys"),
        ))
        .expect("vault");
    assert!(matches!(
        stranger.download(&p("/one"), 0).await,
        Err(VaultError::Format(dropvault_format::Error::WrongKey))
    ));
    assert_no_plaintext(f.dir.path());
}
