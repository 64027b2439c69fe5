//! The `pkcs11` key provider against a real SoftHSM2 token (made by
//! tests/integration/softhsm.py; each test in a process of its own, see
//! common/softhsm.rs): wrapping, the user binding, the key staying in the
//! token, start-up errors, restarts, a lost token, rotation to a new key
//! pair, recovery wraps and the OAEP hash.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::softhsm::{scenario, Hsm};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use dropvault_core::keys::pkcs11::{OaepHash, Pkcs11Config};
use dropvault_core::keys::{
    generate_rsa_pair, DataKey, KeyError, KeyFileStore, KeyProvider, Keyring, Pkcs11Provider,
    RecoveryKey, RecoveryPrivateKey, Wrapped,
};
use dropvault_core::secret::Secret;

const KEK: &str = "dropvault-kek";
const KEK2: &str = "dropvault-kek-2";

fn provider(hsm: &Hsm, key_label: &str) -> Arc<Pkcs11Provider> {
    Arc::new(Pkcs11Provider::new(&hsm.config(key_label), &hsm.dir).expect("provider"))
}

fn keyring(provider: Arc<Pkcs11Provider>, store: &KeyFileStore) -> Keyring {
    Keyring::new(provider, Arc::new(store.clone()))
}

#[test]
fn wraps_and_unwraps_for_the_same_user_only() {
    scenario("wraps_and_unwraps_for_the_same_user_only", &[KEK], |hsm| {
        let p = provider(hsm, KEK);
        let dek = DataKey::generate().expect("dek");
        let w = p.wrap("alice", &dek).expect("wrap");
        assert!(w.ciphertext.starts_with("rsa-oaep-sha1:"), "{w:?}");
        let back = p.unwrap("alice", &w).expect("unwrap");
        assert_eq!(back.expose_secret(), dek.expose_secret());
        // Bound to the user: the same wrapped key does not open as bob's.
        let err = p.unwrap("bob", &w).expect_err("bob");
        assert!(matches!(err, KeyError::UnwrapFailed { .. }), "{err}");
        // A modified wrapped key fails for good (not "try again later").
        let mut bytes = w.ciphertext.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = Wrapped {
            key_version: 1,
            ciphertext: String::from_utf8(bytes).expect("ascii"),
        };
        let err = p.unwrap("alice", &tampered).expect_err("tampered");
        assert!(matches!(err, KeyError::UnwrapFailed { .. }), "{err}");
        assert!(!err.is_transient());
        // The token still works after that.
        let w = p.wrap("alice", &dek).expect("wrap");
        assert!(p.unwrap("alice", &w).is_ok());
        let status = p.status().expect("status");
        assert_eq!(status.provider, "pkcs11");
        assert_eq!(status.key_name, KEK);
        assert_eq!(status.key_type, "rsa-3072");
        assert!(status.details.contains(&("token", "dropvault".to_owned())));
        assert!(status
            .details
            .contains(&("mechanism", "RSA-OAEP SHA-1".to_owned())));
        let shown = format!("{p:?}");
        assert!(!shown.contains(&hsm.pin), "{shown}");
    });
}

#[test]
fn the_private_key_never_leaves_the_token() {
    scenario("the_private_key_never_leaves_the_token", &[KEK], |hsm| {
        let ctx = Pkcs11::new(&hsm.module).expect("module");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("initialize");
        let slot = ctx
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|t| t.label() == "dropvault")
            })
            .expect("token");
        let session = ctx.open_ro_session(slot).expect("session");
        session
            .login(UserType::User, Some(&AuthPin::from(hsm.pin.as_str())))
            .expect("login");
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(KEK.as_bytes().to_vec()),
            ])
            .expect("find");
        assert_eq!(keys.len(), 1);
        let attrs = session
            .get_attributes(
                keys[0],
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .expect("attributes");
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(
            attrs.contains(&Attribute::NeverExtractable(true)),
            "{attrs:?}"
        );
        // The private exponent cannot be read.
        let secret = session
            .get_attributes(keys[0], &[AttributeType::PrivateExponent])
            .unwrap_or_default();
        assert!(
            !secret
                .iter()
                .any(|a| matches!(a, Attribute::PrivateExponent(v) if !v.is_empty())),
            "private exponent readable"
        );
        drop(session);
        ctx.finalize().expect("finalize");
        // A provider of this process starts on the same token.
        assert!(provider(hsm, KEK).status().is_ok());
    });
}

#[test]
fn start_up_errors_name_the_problem() {
    scenario("start_up_errors_name_the_problem", &[KEK], |hsm| {
        let start = |config: Pkcs11Config| {
            Pkcs11Provider::new(&config, &hsm.dir).expect_err("must not start")
        };
        let wrong = Pkcs11Config {
            pin: Secret::new("wrong-pin-93".into()),
            ..hsm.config(KEK)
        };
        let err = start(wrong).to_string();
        assert!(err.contains("PIN rejected by token \"dropvault\""), "{err}");
        assert!(!err.contains("wrong-pin-93"), "{err}");

        let err = start(Pkcs11Config {
            token_label: "no-such-token".into(),
            ..hsm.config(KEK)
        });
        assert!(matches!(err, KeyError::Unavailable { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("no token labelled \"no-such-token\""),
            "{text}"
        );
        assert!(text.contains("tokens present: dropvault"), "{text}");

        let err = start(hsm.config("no-such-key")).to_string();
        assert!(
            err.contains("token \"dropvault\" holds no private key labelled \"no-such-key\""),
            "{err}"
        );

        let err = start(Pkcs11Config {
            module: hsm.dir.join("missing.so").display().to_string(),
            ..hsm.config(KEK)
        })
        .to_string();
        assert!(err.contains("missing.so cannot be loaded"), "{err}");

        let err = start(Pkcs11Config {
            pin: Secret::default(),
            pin_file: "no-such-pin-file".into(),
            ..hsm.config(KEK)
        })
        .to_string();
        assert!(err.contains("no-such-pin-file"), "{err}");

        // The PIN from a file relative to the base folder.
        std::fs::write(hsm.dir.join("pin"), format!("{}\n", hsm.pin)).expect("pin file");
        let from_file = Pkcs11Config {
            pin: Secret::default(),
            pin_file: "pin".into(),
            ..hsm.config(KEK)
        };
        assert!(Pkcs11Provider::new(&from_file, &hsm.dir).is_ok());
    });
}

#[test]
fn a_restarted_provider_opens_the_key_files_of_the_first() {
    scenario(
        "a_restarted_provider_opens_the_key_files_of_the_first",
        &[KEK],
        |hsm| {
            let store = KeyFileStore::open(hsm.dir.join("keys")).expect("store");
            let id = keyring(provider(hsm, KEK), &store)
                .unlock("alice")
                .expect("first login")
                .data_key()
                .id();
            let kf = store.load("alice").expect("load").expect("key file");
            assert_eq!(kf.provider, "pkcs11");
            assert_eq!(kf.key_name, KEK);
            assert!(kf.wrapped_key.starts_with("rsa-oaep-sha1:"));
            // A new provider and keyring: as after a server restart.
            let again = keyring(provider(hsm, KEK), &store)
                .unlock("alice")
                .expect("login after restart");
            assert_eq!(again.data_key().id(), id);
        },
    );
}

/// Unlocks `user` until it works (the provider re-initializes the module
/// at most once a second), for at most 30 s.
fn unlock_when_back(ring: &Keyring, user: &str) -> Result<(), KeyError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ring.unlock(user) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[test]
fn a_lost_token_fails_new_unlocks_until_it_is_back() {
    scenario(
        "a_lost_token_fails_new_unlocks_until_it_is_back",
        &[KEK],
        |hsm| {
            let store = KeyFileStore::open(hsm.dir.join("keys")).expect("store");
            let ring = keyring(provider(hsm, KEK), &store);
            let alice = ring.unlock("alice").expect("alice");
            drop(ring.unlock("bob").expect("bob's first login"));
            drop(ring.unlock("dora").expect("dora's first login"));

            hsm.remove();
            let err = ring.unlock("bob").expect_err("token gone");
            assert!(matches!(err, KeyError::Unavailable { .. }), "{err}");
            assert!(err.is_transient(), "{err}");
            // A logged-in user keeps their key.
            let again = ring.unlock("alice").expect("alice still unlocked");
            assert_eq!(again.data_key().id(), alice.data_key().id());
            // A first login needs only the public key: it still gets a key.
            drop(ring.unlock("carol").expect("carol's first login"));
            let err = ring.unlock("bob").expect_err("still gone");
            assert!(err.is_transient(), "{err}");

            hsm.restore();
            unlock_when_back(&ring, "bob").expect("bob once the token is back");
            ring.unlock("carol")
                .expect("carol's key opens in the token");
            ring.unlock("dora").expect("dora");
        },
    );
}

#[test]
fn rotation_moves_key_files_to_the_new_key_pair() {
    scenario(
        "rotation_moves_key_files_to_the_new_key_pair",
        &[KEK, KEK2],
        |hsm| {
            let store = KeyFileStore::open(hsm.dir.join("keys")).expect("store");
            let old = keyring(provider(hsm, KEK), &store);
            let ids: Vec<_> = ["alice", "bob", "carol"]
                .iter()
                .map(|u| old.unlock(u).expect("first login").data_key().id())
                .collect();
            drop(old);

            let new = keyring(provider(hsm, KEK2), &store);
            // Lazily, at login.
            assert_eq!(new.unlock("carol").expect("carol").data_key().id(), ids[2]);
            assert_eq!(
                store.load("carol").expect("load").expect("kf").key_name,
                KEK2
            );
            // The rest by `keys rotate`.
            let report = new.rotate().expect("rotate");
            assert_eq!(report.files, 3);
            assert_eq!(report.rewrapped, 2, "{report:?}");
            assert_eq!(report.unchanged, 1, "{report:?}");
            assert!(report.failed.is_empty(), "{report:?}");
            for user in ["alice", "bob", "carol"] {
                let kf = store.load(user).expect("load").expect("kf");
                assert_eq!(kf.key_name, KEK2, "{user}");
            }
            // A key made under the old key pair after all.
            let dave = keyring(provider(hsm, KEK), &store)
                .unlock("dave")
                .expect("dave")
                .data_key()
                .id();

            drop(new);
            hsm.delete_key(KEK);
            let new = keyring(provider(hsm, KEK2), &store);
            for (user, id) in ["alice", "bob", "carol"].iter().zip(&ids) {
                let key = new.open_existing(user).expect("opens without the old key");
                assert_eq!(key.data_key().id(), *id);
            }
            // Dave's key went with the old key pair (his recovery wrap,
            // had one been configured, would still open it).
            let err = new.open_existing("dave").expect_err("old key pair gone");
            assert!(
                err.to_string()
                    .contains(&format!("holds no private key labelled \"{KEK}\"")),
                "{err}"
            );
            assert!(!err.is_transient());
            assert_ne!(dave, ids[0]);
        },
    );
}

#[test]
fn a_recovery_key_opens_a_pkcs11_wrapped_key() {
    scenario("a_recovery_key_opens_a_pkcs11_wrapped_key", &[KEK], |hsm| {
        let (private, public) =
            generate_rsa_pair(aws_lc_rs::rsa::KeySize::Rsa3072).expect("recovery pair");
        std::fs::write(hsm.dir.join("rec.pem"), private.as_bytes()).expect("write");
        std::fs::write(hsm.dir.join("rec.pub.pem"), public).expect("write");
        let recovery = RecoveryKey::open(&hsm.dir.join("rec.pub.pem")).expect("public");
        let offline = RecoveryPrivateKey::open(&hsm.dir.join("rec.pem")).expect("private");
        let store = KeyFileStore::open(hsm.dir.join("keys")).expect("store");
        let ring = keyring(provider(hsm, KEK), &store).with_recovery(Some(recovery));
        let id = ring.unlock("alice").expect("alice").data_key().id();
        let kf = store.load("alice").expect("load").expect("kf");
        let key = offline.unwrap_file(&kf).expect("recovery opens it");
        assert_eq!(key.id(), id);
    });
}

#[test]
fn the_oaep_hash_comes_from_each_wrapped_key() {
    scenario("the_oaep_hash_comes_from_each_wrapped_key", &[KEK], |hsm| {
        let sha1 = provider(hsm, KEK);
        let dek = DataKey::generate().expect("dek");
        let old = sha1.wrap("alice", &dek).expect("sha1 wrap");
        let config = Pkcs11Config {
            oaep_hash: OaepHash::Sha256,
            ..hsm.config(KEK)
        };
        match Pkcs11Provider::new(&config, &hsm.dir) {
            // A token that does SHA-256: new wraps use it, old ones open.
            Ok(sha256) => {
                let new = sha256.wrap("alice", &dek).expect("sha256 wrap");
                assert!(new.ciphertext.starts_with("rsa-oaep-sha256:"));
                for (p, w) in [(&sha256, &old), (&sha256, &new)] {
                    assert_eq!(p.unwrap("alice", w).expect("unwrap").id(), dek.id());
                }
                assert_eq!(
                    sha1.unwrap("alice", &new).expect("by its text").id(),
                    dek.id()
                );
            }
            // SoftHSM2 2.6 does only SHA-1: refused at start, by name.
            Err(e) => {
                let text = e.to_string();
                assert!(matches!(e, KeyError::BadConfig(_)), "{text}");
                assert!(text.contains("cannot decrypt RSA-OAEP SHA-256"), "{text}");
                assert!(text.contains("oaep_hash = \"sha1\""), "{text}");
                assert_eq!(sha1.unwrap("alice", &old).expect("sha1").id(), dek.id());
            }
        }
    });
}
