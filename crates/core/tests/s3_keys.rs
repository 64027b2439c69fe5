//! Key files in a real Garage bucket: the S3 key store's operations, and
//! the first-login race between two nodes that must never leave a file
//! sealed under a key no key file holds.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::garage::{client, settings};
use common::kek::provider;
use dropvault_core::keys::{
    DataKey, KeyError, KeyFile, KeyProvider, KeyStore, Keyring, S3KeyStore, UserKey,
    KEY_FILE_FORMAT,
};
use dropvault_core::s3::{S3Client, S3Error};
use dropvault_core::storage::{S3Storage, S3Tuning};
use dropvault_core::vault::{UploadMode, VPath, Vault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A key prefix no other test uses.
fn prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "keys-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A "node": its own client and key store on the bucket under `prefix`,
/// and its own keyring over the shared KEK.
fn keyring(prefix: &str) -> Keyring {
    Keyring::new(provider(), Arc::new(S3KeyStore::new(client(prefix))))
}

fn store(prefix: &str) -> S3KeyStore {
    S3KeyStore::new(client(prefix))
}

/// A key file for `user` holding a fresh key wrapped by the shared KEK.
fn new_key_file(user: &str) -> (KeyFile, DataKey) {
    let kek = provider();
    let dek = DataKey::generate().expect("dek");
    let wrapped = kek.wrap(user, &dek).expect("wrap");
    let kf = KeyFile {
        format: KEY_FILE_FORMAT,
        user: user.to_owned(),
        provider: kek.kind().to_owned(),
        key_name: kek.key_name().to_owned(),
        key_version: wrapped.key_version,
        key_id: dropvault_core::hex(&dek.id().0),
        wrapped_key: wrapped.ciphertext,
        recovery: None,
    };
    (kf, dek)
}

fn user_dir(user: &str) -> String {
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, user.as_bytes());
    format!(".keys/{}/", dropvault_core::hex(h.as_ref()))
}

/// The object names under `dir`.
fn objects(c: &S3Client, dir: &str) -> Vec<String> {
    let page = c.list(dir, None, None, 1000).expect("list");
    assert!(page.next.is_none());
    page.objects.into_iter().map(|o| o.key).collect()
}

#[test]
fn create_load_list_replace_destroy() {
    let prefix = prefix("ops");
    let (s, c) = (store(&prefix), client(&prefix));
    assert!(s.load_all("alice").expect("load").is_empty());
    assert!(s.list().expect("list").is_empty());

    // Created under the name of its key id, with the JSON of a local file.
    let (first, first_key) = new_key_file("alice");
    let name = s.create(&first).expect("create");
    assert_eq!(name, format!("{}{}.json", user_dir("alice"), first.key_id));
    let json = c.get_small(&name, 1 << 16).expect("get").expect("stored");
    assert_eq!(
        serde_json::from_slice::<KeyFile>(&json).expect("json"),
        first
    );
    // The same key again is refused and changes nothing.
    assert!(matches!(
        s.create(&first),
        Err(KeyError::KeyFileExists { .. })
    ));

    // A second key (another node's first login) sits next to it.
    let (second, _) = new_key_file("alice");
    s.create(&second).expect("create second");
    let (bob, _) = new_key_file("bob");
    s.create(&bob).expect("create bob");
    let mut ids: Vec<String> = s
        .load_all("alice")
        .expect("load")
        .into_iter()
        .map(|kf| kf.key_id)
        .collect();
    ids.sort();
    let mut want = vec![first.key_id.clone(), second.key_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    let listed = s.list().expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|(_, kf)| kf.is_ok()));

    // A re-wrap replaces the key file of the same key id, and only that.
    let mut rewrapped = first.clone();
    let w = provider().wrap("alice", &first_key).expect("wrap");
    rewrapped.wrapped_key = w.ciphertext;
    assert!(s.replace(&rewrapped).expect("replace"));
    let now = s.load_all("alice").expect("load");
    assert!(now.contains(&rewrapped) && now.contains(&second) && now.len() == 2);
    // A key id the user has no key file of is not created by a replace.
    let (stray, _) = new_key_file("alice");
    assert!(!s.replace(&stray).expect("replace unknown"));
    assert_eq!(s.load_all("alice").expect("load").len(), 2);

    // Destroy removes every key file of the user, and nothing brings one
    // back.
    assert!(s.destroy("alice").expect("destroy"));
    assert!(s.load_all("alice").expect("load").is_empty());
    assert!(objects(&c, &user_dir("alice")).is_empty());
    assert!(!s.replace(&rewrapped).expect("replace destroyed"));
    assert!(s.load_all("alice").expect("load").is_empty());
    assert!(!s.destroy("alice").expect("destroy again"));
    assert_eq!(s.load_all("bob").expect("bob untouched"), vec![bob]);
}

#[test]
fn key_files_that_do_not_match_their_name_or_too_many_are_refused() {
    let prefix = prefix("corrupt");
    let (s, c) = (store(&prefix), client(&prefix));
    // Bob's key file copied under carol's name.
    let (bob, _) = new_key_file("bob");
    let json = serde_json::to_vec(&bob).expect("json");
    c.put(
        &format!("{}{}.json", user_dir("carol"), bob.key_id),
        &json,
        &[],
    )
    .expect("put");
    assert!(matches!(
        s.load_all("carol"),
        Err(KeyError::CorruptKeyFile { .. })
    ));
    // A key file under the name of another key id.
    let (dave, _) = new_key_file("dave");
    let other_id = "0".repeat(32);
    c.put(
        &format!("{}{other_id}.json", user_dir("dave")),
        &serde_json::to_vec(&dave).expect("json"),
        &[],
    )
    .expect("put");
    assert!(matches!(
        s.load_all("dave"),
        Err(KeyError::CorruptKeyFile { .. })
    ));
    // Junk.
    c.put(&format!("{}notes.txt", user_dir("erin")), b"hi", &[])
        .expect("put");
    assert!(matches!(
        s.load_all("erin"),
        Err(KeyError::CorruptKeyFile { .. })
    ));
    // The listing reports each bad one and goes on.
    let listed = s.list().expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|(_, kf)| kf.is_err()));
    // More key files than a user can have is refused before any is read.
    for _ in 0..17 {
        let (kf, _) = new_key_file("frank");
        s.create(&kf).expect("create");
    }
    assert!(matches!(
        s.load_all("frank"),
        Err(KeyError::TooManyKeyFiles { limit: 16, .. })
    ));
    // A login over any of these fails; it never creates a key.
    let ring = keyring(&prefix);
    for user in ["carol", "dave", "erin", "frank"] {
        let before = objects(&c, &user_dir(user));
        assert!(ring.unlock(user).is_err(), "{user}");
        assert_eq!(objects(&c, &user_dir(user)), before, "{user}");
    }
}

#[test]
fn an_unreachable_or_refusing_bucket_fails_the_login_and_creates_nothing() {
    let prefix = prefix("down");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut down = settings(&prefix);
    down.endpoint = format!("http://127.0.0.1:{port}");
    down.retries = 0;
    down.timeout = Duration::from_secs(5);
    let ring = Keyring::new(
        provider(),
        Arc::new(S3KeyStore::new(S3Client::new(down).expect("settings"))),
    );
    let err = ring.unlock("gina").expect_err("bucket down");
    assert!(
        matches!(
            &err,
            KeyError::Store {
                source: S3Error::Unreachable { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient(), "a login must say: try again later");

    let mut wrong = settings(&prefix);
    wrong.secret_access_key = "not-the-secret".to_owned().into();
    let ring = Keyring::new(
        provider(),
        Arc::new(S3KeyStore::new(S3Client::new(wrong).expect("settings"))),
    );
    let err = ring.unlock("gina").expect_err("refused");
    assert!(
        matches!(
            &err,
            KeyError::Store {
                source: S3Error::Denied,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(!format!("{err} {err:?}").contains("not-the-secret"));
    assert!(objects(&client(&prefix), "").is_empty(), "nothing created");
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).expect("path")
}

/// A node's vault on the bucket (its files under `prefix`/files).
fn vault(prefix: &str) -> Vault {
    let storage = S3Storage::new(
        client(&format!("{prefix}/files")),
        S3Tuning {
            part_size: 5 << 20,
            parts_in_flight: 2,
        },
    );
    Vault::with_storage(Arc::new(storage), std::env::temp_dir()).expect("vault")
}

async fn seal(vault: &Vault, key: Arc<UserKey>, path: &str, data: &[u8]) {
    let user = vault.for_user(key).expect("user vault");
    let mut up = user
        .upload(&p(path), UploadMode::Create)
        .await
        .expect("upload");
    up.write_all(data).await.expect("write");
    // The upload's worker holds the key until it exits; the next login
    // must find the key released.
    let exited = up.exit_signal();
    up.commit().await.expect("commit");
    exited.wait().await;
}

async fn read(vault: &Vault, key: Arc<UserKey>, path: &str) -> Vec<u8> {
    let user = vault.for_user(key).expect("user vault");
    let mut d = user.download(&p(path), 0).await.expect("download");
    let mut out = Vec::new();
    d.read_to_end(&mut out).await.expect("read");
    out
}

/// Two nodes unlock a new user at the same moment; each seals a file with
/// the key it got. Whoever won, a third node then reads both files, and
/// every node's next login seals under the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_a_first_login_never_lose_a_key() {
    const USERS: usize = 20;
    let prefix = prefix("race");
    let (a, b) = (Arc::new(keyring(&prefix)), Arc::new(keyring(&prefix)));
    let (vault_a, vault_b) = (vault(&prefix), vault(&prefix));
    let mut raced = 0;
    for i in 0..USERS {
        let user = format!("racer{i}");
        let barrier = Arc::new(Barrier::new(2));
        let unlock = |ring: &Arc<Keyring>| {
            let (ring, barrier, user) = (ring.clone(), barrier.clone(), user.clone());
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                ring.unlock(&user).expect("unlock")
            })
        };
        let (got_a, got_b) = (unlock(&a), unlock(&b));
        let (key_a, key_b) = (got_a.await.expect("a"), got_b.await.expect("b"));
        let from_a = format!("sealed by node a for {user}").into_bytes();
        let from_b = format!("sealed by node b for {user}").into_bytes();
        seal(&vault_a, key_a.clone(), "/from-a", &from_a).await;
        seal(&vault_b, key_b.clone(), "/from-b", &from_b).await;

        let third = keyring(&prefix).unlock(&user).expect("third node");
        let files = store(&prefix).load_all(&user).expect("load");
        assert!((1..=2).contains(&files.len()), "{}", files.len());
        if files.len() == 2 {
            raced += 1;
        }
        assert_eq!(third.keys().count(), files.len());
        // The third node has every key either node sealed with.
        for k in [&key_a, &key_b] {
            assert!(third.key_for(&k.data_key().id()).is_some(), "{user}");
        }
        let vault_c = vault(&prefix);
        assert_eq!(read(&vault_c, third.clone(), "/from-a").await, from_a);
        assert_eq!(read(&vault_c, third.clone(), "/from-b").await, from_b);

        // The next login on either node seals under the third's primary.
        drop((key_a, key_b));
        for ring in [&a, &b] {
            let again = ring.unlock(&user).expect("next login");
            assert_eq!(again.data_key().id(), third.data_key().id(), "{user}");
        }
    }
    // How often the race produced two keys depends on timing; either way
    // every file above was read back.
    eprintln!("{raced} of {USERS} first logins stored two keys");
}
