//! Per-user quotas over a real folder: what counts (committed plaintext
//! bytes and files), when an upload is refused (at its start, on the way),
//! and that overwrites, deletes, renames, resumes and restarts keep the
//! count right.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::kek::provider as kek;
use dropvault_core::keys::{KeyFileStore, Keyring, UserKey};
use dropvault_core::vault::{Quota, UploadMode, Usage, UserVault, VPath, Vault, VaultError};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1024 * 1024;

struct Fixture {
    dir: tempfile::TempDir,
    key: Arc<UserKey>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = Keyring::new(
            kek(),
            Arc::new(KeyFileStore::open(dir.path().join("keys")).expect("keys")),
        );
        let key = ring.unlock("alice").expect("key");
        Self { dir, key }
    }

    /// A vault (as after a restart: nothing remembered) on the folder,
    /// with `quota` for everyone.
    fn vault(&self, quota: Quota) -> Vault {
        Vault::create(self.root())
            .expect("vault")
            .with_quota(quota, 100_000)
    }

    /// Logs alice in on a fresh vault with the server's `quota`.
    fn login(&self, quota: Quota) -> (Vault, UserVault) {
        let vault = self.vault(quota);
        let user = vault.for_user(self.key.clone()).expect("login");
        (vault, user)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Files in the staging folder.
    fn staged(&self) -> usize {
        std::fs::read_dir(self.root().join(".staging"))
            .expect("staging")
            .count()
    }
}

fn bytes(limit: u64) -> Quota {
    Quota {
        bytes: Some(limit),
        files: None,
    }
}

fn files(limit: u64) -> Quota {
    Quota {
        bytes: None,
        files: Some(limit),
    }
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).expect("path")
}

fn data(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Uploads `len` bytes to `path`: the commit's result.
async fn try_put(user: &UserVault, path: &str, len: u64) -> Result<u64, VaultError> {
    let mut up = user.upload(&p(path), UploadMode::Replace).await?;
    // A refused upload's worker stops: writing may fail, the commit says why.
    let _ = up.write_all(&data(len)).await;
    up.commit().await
}

async fn put(user: &UserVault, path: &str, len: u64) {
    assert_eq!(try_put(user, path, len).await.expect("put"), len);
}

fn over_bytes(r: Result<impl std::fmt::Debug, VaultError>) -> bool {
    matches!(r, Err(VaultError::QuotaExceeded { files: false, .. }))
}

#[tokio::test]
async fn an_upload_over_the_bytes_quota_is_refused_and_leaves_nothing() {
    let f = Fixture::new();
    let (vault, user) = f.login(bytes(3 * MIB));
    put(&user, "/a", 2 * MIB).await;
    // Refused on the way, as the bytes arrive: no file, no staging.
    assert!(over_bytes(try_put(&user, "/b", 2 * MIB).await));
    assert!(matches!(
        user.stat(&p("/b")).await,
        Err(VaultError::NotFound)
    ));
    assert_eq!(f.staged(), 0);
    // Refused at the start when the size is known (FTP ALLO).
    assert!(over_bytes(
        user.upload_sized(&p("/c"), UploadMode::Replace, Some(2 * MIB))
            .await
    ));
    assert_eq!(f.staged(), 0);
    // Up to the limit exactly is fine.
    put(&user, "/d", MIB).await;
    assert_eq!(
        vault.usage("alice").expect("usage"),
        Some(Usage {
            bytes: 3 * MIB,
            files: 2
        })
    );
}

#[tokio::test]
async fn the_files_quota_refuses_new_names_only() {
    let f = Fixture::new();
    let (_vault, user) = f.login(files(2));
    put(&user, "/a", 10).await;
    put(&user, "/b", 10).await;
    assert!(matches!(
        user.upload(&p("/c"), UploadMode::Replace).await,
        Err(VaultError::QuotaExceeded {
            files: true,
            limit: 2
        })
    ));
    // Replacing a file adds none.
    put(&user, "/a", 20).await;
}

#[tokio::test]
async fn overwrite_delete_and_rename_free_what_they_replace() {
    let f = Fixture::new();
    let (_vault, user) = f.login(Quota {
        bytes: Some(1000),
        files: Some(2),
    });
    put(&user, "/a", 600).await;
    // The replaced file's 600 bytes are freed by the replacement.
    put(&user, "/a", 700).await;
    assert!(over_bytes(try_put(&user, "/b", 400).await));
    // A delete frees its bytes and its file.
    user.remove(&p("/a")).await.expect("rm");
    put(&user, "/b", 400).await;
    put(&user, "/c", 500).await;
    // A rename over a file frees the one replaced: 500 bytes, 1 file.
    user.rename(&p("/b"), &p("/c")).await.expect("mv");
    put(&user, "/d", 500).await;
    assert!(matches!(
        user.upload(&p("/e"), UploadMode::Replace).await,
        Err(VaultError::QuotaExceeded { files: true, .. })
    ));
    // A plain rename changes nothing.
    user.rename(&p("/d"), &p("/e")).await.expect("mv");
    assert!(over_bytes(try_put(&user, "/c", 501).await));
    put(&user, "/c", 500).await;
}

#[tokio::test]
async fn a_resumed_upload_counts_its_bytes_once() {
    let f = Fixture::new();
    let (_vault, user) = f.login(bytes(3 * MIB));
    let all = data(3 * MIB);
    // Interrupted after 2 MiB: flushed, then the client is gone.
    let mut up = user
        .upload(&p("/r"), UploadMode::Replace)
        .await
        .expect("up");
    up.write_all(&all[..2 * MIB as usize]).await.expect("write");
    up.flush().await.expect("flush");
    let exited = up.exit_signal();
    drop(up);
    exited.wait().await;
    let at = user.size(&p("/r")).await.expect("resume point");
    assert!(at > 0);
    let mut up = user
        .upload(&p("/r"), UploadMode::Resume(at))
        .await
        .expect("resume");
    up.write_all(&all[at as usize..]).await.expect("write");
    assert_eq!(up.commit().await.expect("commit"), 3 * MIB);
    // And an append to it is over the limit.
    let mut up = user
        .upload(&p("/r"), UploadMode::Append)
        .await
        .expect("append");
    let _ = up.write_all(b"x").await;
    assert!(over_bytes(up.commit().await));
    assert_eq!(user.size(&p("/r")).await.expect("size"), 3 * MIB);
}

#[tokio::test]
async fn a_restart_counts_what_is_stored() {
    let f = Fixture::new();
    {
        let (_vault, user) = f.login(Quota::default());
        user.mkdir(&p("/dir")).await.expect("mkdir");
        put(&user, "/dir/a", 600).await;
        user.mkdir(&p("/dir/sub")).await.expect("mkdir");
        put(&user, "/dir/sub/b", 300).await;
    }
    // A new vault (a restart, another node) counts the folder at login.
    let (vault, user) = f.login(bytes(1000));
    assert!(over_bytes(try_put(&user, "/c", 101).await));
    put(&user, "/c", 100).await;
    assert_eq!(
        vault.usage("alice").expect("usage"),
        Some(Usage {
            bytes: 1000,
            files: 3
        })
    );
}

#[tokio::test]
async fn a_users_own_quota_goes_first() {
    let f = Fixture::new();
    let vault = f.vault(bytes(100));
    // Their own "0": no limit for them.
    let free = vault.for_account(f.key.clone(), bytes(0)).expect("login");
    put(&free, "/big", 1000).await;
    drop(free);
    // Their own, larger limit; the server's files limit still applies.
    let vault = f.vault(Quota {
        bytes: Some(100),
        files: Some(2),
    });
    let own = vault
        .for_account(f.key.clone(), bytes(2000))
        .expect("login");
    put(&own, "/more", 1000).await;
    assert!(matches!(
        own.upload(&p("/third"), UploadMode::Replace).await,
        Err(VaultError::QuotaExceeded { files: true, .. })
    ));
}

#[tokio::test]
async fn sessions_side_by_side_share_the_count() {
    let f = Fixture::new();
    let (vault, one) = f.login(bytes(1000));
    let two = vault.for_user(f.key.clone()).expect("second login");
    put(&one, "/a", 600).await;
    assert!(over_bytes(try_put(&two, "/b", 600).await));
    // Uploads in flight reserve what they hold.
    let mut up = one.upload(&p("/c"), UploadMode::Replace).await.expect("up");
    up.write_all(&data(300)).await.expect("write");
    up.flush().await.expect("flush");
    assert!(over_bytes(
        two.upload_sized(&p("/d"), UploadMode::Replace, Some(200))
            .await
    ));
    up.commit().await.expect("commit");
}
