//! Keys end to end on a real RSA-4096 key file: the local provider, the
//! key-file store and the keyring.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

mod common;

use common::kek::{kek_path as shared_kek, provider};
use dropvault_core::keys::{
    generate_rsa_pair, DataKey, KekStatus, KeyError, KeyFileStore, KeyProvider, KeyStore, Keyring,
    LocalRsaProvider, RecoveryKey, RecoveryPrivateKey, Wrapped,
};

#[test]
fn generated_kek_is_private_and_reopens_to_the_same_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kek.pem");
    let a = LocalRsaProvider::open_or_create(&path).expect("generate");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&path).expect("read");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let b = LocalRsaProvider::open_or_create(&path).expect("reopen");
    assert_eq!(a.key_name(), b.key_name());
    // What one wraps, the other unwraps.
    let dek = DataKey::generate().expect("dek");
    let wrapped = a.wrap("alice", &dek).expect("wrap");
    let back = b.unwrap("alice", &wrapped).expect("unwrap");
    assert_eq!(back.expose_secret(), dek.expose_secret());
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(names.len(), 1);
    // Debug output never shows the private key.
    assert!(format!("{a:?}").contains("[redacted]"));
}

#[test]
fn a_kek_others_can_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kek.pem");
    std::fs::copy(shared_kek(), &path).expect("copy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = LocalRsaProvider::open_or_create(&path).expect_err("0644 must be refused");
    assert!(
        matches!(err, KeyError::InsecureKeyFile { mode: 0o644, .. }),
        "{err}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(LocalRsaProvider::open(&path).is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(LocalRsaProvider::open(&path).is_ok());
}

#[test]
fn a_kek_file_that_is_not_a_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kek.pem");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = LocalRsaProvider::open(&path).expect_err("garbage");
    assert!(matches!(err, KeyError::BadKek { .. }), "{err}");
}

#[test]
fn wrapping_binds_the_user_name() {
    let p = provider();
    let dek = DataKey::generate().expect("dek");
    let wrapped = p.wrap("alice", &dek).expect("wrap");
    assert_eq!(wrapped.key_version, 1);
    let err = p.unwrap("mallory", &wrapped).expect_err("other user");
    assert!(matches!(err, KeyError::UnwrapFailed { .. }));
    let mut tampered = wrapped.clone();
    tampered.ciphertext.replace_range(
        10..11,
        if &wrapped.ciphertext[10..11] == "A" {
            "B"
        } else {
            "A"
        },
    );
    assert!(p.unwrap("alice", &tampered).is_err());
    assert!(p
        .unwrap(
            "alice",
            &Wrapped {
                key_version: 1,
                ciphertext: "not base64!".into()
            }
        )
        .is_err());
}

#[test]
fn key_files_are_named_by_hash_and_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyFileStore::open(dir.path().join("keys")).expect("store");
    let ring = Keyring::new(provider(), Arc::new(store.clone()));
    let key = ring.unlock("bob/../../etc").expect("first login creates");
    let path = store.path_for("bob/../../etc");
    assert_eq!(path.parent(), Some(dir.path().join("keys").as_path()));
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(name.len(), 64 + ".json".len());
    assert!(name.chars().take(64).all(|c| c.is_ascii_hexdigit()));

    let kf = store.load("bob/../../etc").expect("load").expect("exists");
    assert_eq!(kf.format, 1);
    assert_eq!(kf.provider, "local");
    assert_eq!(kf.key_name, provider().key_name());
    assert_eq!(kf.key_version, 1);
    let json = std::fs::read_to_string(&path).expect("read");
    for field in [
        "\"format\"",
        "\"provider\"",
        "\"key_name\"",
        "\"key_version\"",
        "\"wrapped_key\"",
    ] {
        assert!(json.contains(field), "{field} missing from {json}");
    }
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second create for the same user fails and leaves the file as it was.
    let err = store.create(&kf).expect_err("exists");
    assert!(matches!(err, KeyError::KeyFileExists { .. }));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), json);
    // Only the key file is in the folder: no temporaries left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("keys"))
            .expect("ls")
            .count(),
        1
    );
    drop(key);
}

#[test]
fn a_key_file_moved_to_another_user_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyFileStore::open(dir.path()).expect("store");
    let ring = Keyring::new(provider(), Arc::new(store.clone()));
    drop(ring.unlock("alice").expect("alice"));
    std::fs::copy(store.path_for("alice"), store.path_for("mallory")).expect("copy");
    let err = ring
        .unlock("mallory")
        .expect_err("alice's key file under mallory's name");
    assert!(matches!(err, KeyError::CorruptKeyFile { .. }), "{err}");
}

#[test]
fn a_key_file_from_another_kek_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyFileStore::open(dir.path().join("keys")).expect("store");
    drop(
        Keyring::new(provider(), Arc::new(store.clone()))
            .unlock("carol")
            .expect("create"),
    );
    let other = Arc::new(
        LocalRsaProvider::open_or_create(&dir.path().join("other.pem")).expect("second kek"),
    );
    let err = Keyring::new(other, Arc::new(store))
        .unlock("carol")
        .expect_err("other kek");
    assert!(matches!(err, KeyError::WrongKek { .. }), "{err}");
}

/// Delegates to a real provider and counts unwraps, to see when the keyring
/// goes to the provider and when it shares a key already unlocked.
#[derive(Debug)]
struct Counting {
    inner: Arc<LocalRsaProvider>,
    unwraps: AtomicUsize,
    fail_wrap: bool,
}

impl KeyProvider for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn key_name(&self) -> &str {
        self.inner.key_name()
    }
    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        if self.fail_wrap {
            return Err(KeyError::WrapFailed);
        }
        self.inner.wrap(user, dek)
    }
    fn unwrap(&self, user: &str, w: &Wrapped) -> Result<DataKey, KeyError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(user, w)
    }
    fn status(&self) -> Result<KekStatus, KeyError> {
        self.inner.status()
    }
}

/// A real RSA provider whose KEK "version" can be raised, as a transit key
/// is rotated: wraps carry the current version; any version unwraps.
#[derive(Debug)]
struct Versioned {
    inner: Arc<LocalRsaProvider>,
    version: AtomicU32,
    wraps: AtomicUsize,
}

impl KeyProvider for Versioned {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn key_name(&self) -> &str {
        self.inner.key_name()
    }
    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        self.wraps.fetch_add(1, Ordering::SeqCst);
        let w = self.inner.wrap(user, dek)?;
        Ok(Wrapped {
            key_version: self.version.load(Ordering::SeqCst),
            ..w
        })
    }
    fn unwrap(&self, user: &str, w: &Wrapped) -> Result<DataKey, KeyError> {
        self.inner.unwrap(user, w)
    }
    fn current_version(&self) -> Result<u32, KeyError> {
        Ok(self.version.load(Ordering::SeqCst))
    }
    fn status(&self) -> Result<KekStatus, KeyError> {
        self.inner.status()
    }
}

fn versioned() -> Arc<Versioned> {
    Arc::new(Versioned {
        inner: provider(),
        version: AtomicU32::new(1),
        wraps: AtomicUsize::new(0),
    })
}

/// A recovery key pair written to `dir`: (public, private).
fn recovery_pair(dir: &Path) -> (RecoveryKey, RecoveryPrivateKey) {
    static PAIR: OnceLock<(String, String)> = OnceLock::new();
    let (private, public) = PAIR.get_or_init(|| {
        let (private, public) =
            generate_rsa_pair(aws_lc_rs::rsa::KeySize::Rsa3072).expect("generate");
        (private.to_string(), public)
    });
    std::fs::write(dir.join("rec.pem"), private).expect("write");
    std::fs::write(dir.join("rec.pub.pem"), public).expect("write");
    (
        RecoveryKey::open(&dir.join("rec.pub.pem")).expect("public"),
        RecoveryPrivateKey::open(&dir.join("rec.pem")).expect("private"),
    )
}

#[test]
fn a_login_after_rotation_rewraps_the_key_file_lazily() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyFileStore::open(dir.path()).expect("store");
    let kek = versioned();
    let ring = Keyring::new(kek.clone(), Arc::new(store.clone()));
    let id = ring.unlock("hana").expect("create").data_key().id();
    assert_eq!(
        store.load("hana").expect("load").expect("file").key_version,
        1
    );

    // Same version: a login does not rewrite the file.
    drop(ring.unlock("hana").expect("unlock"));
    assert_eq!(kek.wraps.load(Ordering::SeqCst), 1);

    kek.version.store(3, Ordering::SeqCst);
    let key = ring.unlock("hana").expect("unlock after rotation");
    assert_eq!(key.data_key().id(), id, "same data key, new wrap");
    let kf = store.load("hana").expect("load").expect("file");
    assert_eq!(kf.key_version, 3);
    assert_eq!(kek.wraps.load(Ordering::SeqCst), 2);
}

#[test]
fn rotate_rewraps_stale_files_adds_recovery_wraps_and_never_revives_a_shredded_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let store = KeyFileStore::open(&keys).expect("store");
    let kek = versioned();
    let plain = Keyring::new(kek.clone(), Arc::new(store.clone()));
    for user in ["ivan", "jill", "kemal"] {
        drop(plain.unlock(user).expect("create"));
    }
    kek.version.store(2, Ordering::SeqCst);
    let (public, private) = recovery_pair(dir.path());
    let ring = Keyring::new(kek.clone(), Arc::new(store.clone())).with_recovery(Some(public));
    let report = ring.rotate().expect("rotate");
    assert_eq!(report.files, 3);
    assert_eq!(report.rewrapped, 3);
    assert_eq!(report.recovery_added, 3);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    for user in ["ivan", "jill", "kemal"] {
        let kf = store.load(user).expect("load").expect("file");
        assert_eq!(kf.key_version, 2);
        let wrap = kf.recovery.expect("recovery wrap");
        assert_eq!(wrap.key_name, private.name());
        let dek = private.unwrap(user, &wrap.wrapped_key).expect("recover");
        let live = ring.open_existing(user).expect("open");
        assert_eq!(dek.id(), live.data_key().id());
    }
    // Nothing left to do.
    let again = ring.rotate().expect("rotate again");
    assert_eq!((again.unchanged, again.rewrapped), (3, 0));

    // A destroyed key file stays destroyed, whatever re-wrap comes later.
    let stale = store.load("jill").expect("load").expect("file");
    assert!(store.destroy("jill").expect("destroy"));
    assert!(!store.replace(&stale).expect("replace"));
    assert!(store.load("jill").expect("load").is_none());
    assert!(matches!(
        ring.open_existing("jill"),
        Err(KeyError::NoKeyFile { .. })
    ));
    assert!(!store.destroy("jill").expect("destroy twice"));
}

#[test]
fn keyring_shares_one_key_per_user_and_drops_it_with_the_last_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counting = Arc::new(Counting {
        inner: provider(),
        unwraps: AtomicUsize::new(0),
        fail_wrap: false,
    });
    let ring = Arc::new(Keyring::new(
        counting.clone(),
        Arc::new(KeyFileStore::open(dir.path()).expect("store")),
    ));

    // First login creates the key (no unwrap needed).
    let s1 = ring.unlock("dave").expect("create");
    let id = s1.data_key().id();
    assert_eq!(counting.unwraps.load(Ordering::SeqCst), 0);

    // Concurrent sessions share the same key object.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let ring = ring.clone();
            std::thread::spawn(move || ring.unlock("dave").expect("unlock"))
        })
        .collect();
    let others: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    for k in &others {
        assert!(Arc::ptr_eq(k, &s1));
    }
    assert_eq!(counting.unwraps.load(Ordering::SeqCst), 0);
    assert_eq!(ring.unlocked_users(), 1);

    // All sessions end: the key is released...
    drop(others);
    drop(s1);
    assert_eq!(ring.unlocked_users(), 0);

    // ...and the next login unwraps it again from the key file: same key.
    let s2 = ring.unlock("dave").expect("unwrap");
    assert_eq!(counting.unwraps.load(Ordering::SeqCst), 1);
    assert_eq!(s2.data_key().id(), id);
    assert_eq!(s2.user(), "dave");
}

#[test]
fn concurrent_first_logins_create_one_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyFileStore::open(dir.path()).expect("store");
    // Two keyrings over one folder stand for two server processes.
    let a = Arc::new(Keyring::new(provider(), Arc::new(store.clone())));
    let b = Arc::new(Keyring::new(provider(), Arc::new(store.clone())));
    let ids: Vec<_> = (0..6)
        .map(|i| {
            let ring = if i % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || ring.unlock("erin").expect("unlock").data_key().id())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "all sessions must get one key"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
}

#[test]
fn a_failing_provider_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = Arc::new(Counting {
        inner: provider(),
        unwraps: AtomicUsize::new(0),
        fail_wrap: true,
    });
    let ring = Keyring::new(
        failing,
        Arc::new(KeyFileStore::open(dir.path()).expect("store")),
    );
    assert!(matches!(ring.unlock("frank"), Err(KeyError::WrapFailed)));
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    assert_eq!(ring.unlocked_users(), 0);
}

#[test]
fn data_keys_print_redacted() {
    let ring_dir = tempfile::tempdir().expect("tempdir");
    let ring = Keyring::new(
        provider(),
        Arc::new(KeyFileStore::open(ring_dir.path()).expect("store")),
    );
    let key = ring.unlock("gina").expect("unlock");
    let shown = format!("{key:?}");
    assert!(shown.contains("[redacted]"), "{shown}");
    let secret_hex: String = key
        .data_key()
        .expose_secret()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!shown.contains(&secret_hex[..8]));
}
