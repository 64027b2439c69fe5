//! LDAP accounts against a real OpenLDAP slapd (Debian's `slapd`, started
//! per test by `tests/integration/slapd.py`): ldaps and StartTLS,
//! search-then-bind, the group requirement, canonical names, SSH keys from
//! `sshPublicKey`, a user's quota from an attribute, a directory that goes
//! away and comes back, the login cache.
//!
//! Run: `cargo test -p dropvault-core --test ldap` (needs `slapd`,
//! `ldap-utils`, `openssl` and `ssh-keygen`; scripts/test installs them).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::slapd::Slapd;
use dropvault_core::accounts::ldap::NameCase;
use dropvault_core::accounts::sshkey::SshPublicKey;
use dropvault_core::accounts::{
    Account, AuthError, Authenticator, LdapAuthenticator, LdapConfig, Password,
};
use dropvault_core::secret::Secret;
use dropvault_core::vault::Quota;

#[derive(Clone, Copy)]
enum Tls {
    Ldaps,
    StartTls,
}

/// Settings for `slapd`: the service account, the group required, the
/// test CA, no cache.
fn config(slapd: &Slapd, tls: Tls) -> LdapConfig {
    let info = &slapd.info;
    let (url, starttls) = match tls {
        Tls::Ldaps => (info.ldaps_url.clone(), false),
        Tls::StartTls => (info.ldap_url.clone(), true),
    };
    LdapConfig {
        url,
        starttls,
        ca_file: info.ca_file.display().to_string(),
        bind_dn: info.bind_dn.clone(),
        bind_password: Secret::new(info.bind_password.clone()),
        base_dn: info.base_dn.clone(),
        user_filter: info.user_filter.clone(),
        require_group: info.group_dn.clone(),
        timeout_secs: 5,
        cache_secs: 0,
        pool_size: 2,
        ..LdapConfig::default()
    }
}

fn authenticator(config: &LdapConfig) -> LdapAuthenticator {
    LdapAuthenticator::new(config, Path::new("/")).expect("valid settings")
}

fn login(auth: &LdapAuthenticator, name: &str, password: &str) -> Option<String> {
    auth.authenticate(name, &Password::new(password.into()))
        .unwrap_or_else(|e| panic!("login {name:?}: {e}"))
        .map(|a| a.name)
}

fn account(name: &str) -> Option<String> {
    Some(name.to_owned())
}

fn key_blob(path: &Path) -> Vec<u8> {
    let line = std::fs::read_to_string(path).expect("read .pub");
    SshPublicKey::parse_line(&line)
        .expect("parse .pub")
        .blob()
        .to_vec()
}

fn is_unavailable(result: Result<Option<Account>, AuthError>) -> bool {
    matches!(result, Err(AuthError::Unavailable(_)))
}

#[test]
fn ldaps_and_starttls_logins() {
    let slapd = Slapd::start();
    for tls in [Tls::Ldaps, Tls::StartTls] {
        let auth = authenticator(&config(&slapd, tls));
        assert_eq!(
            login(&auth, "alice", slapd.password("alice")),
            account("alice")
        );
        assert_eq!(login(&auth, "bob", slapd.password("bob")), account("bob"));
    }
}

#[test]
fn wrong_password_unknown_user_and_user_outside_the_group_are_refused() {
    let slapd = Slapd::start();
    let auth = authenticator(&config(&slapd, Tls::Ldaps));
    assert_eq!(login(&auth, "alice", "wrong"), None);
    assert_eq!(login(&auth, "alice", slapd.password("bob")), None);
    assert_eq!(login(&auth, "dave", "davepw"), None);
    assert_eq!(login(&auth, "carol", slapd.password("carol")), None);
    // Carol's password is right: without the group requirement she is in.
    let anyone = LdapConfig {
        require_group: String::new(),
        ..config(&slapd, Tls::Ldaps)
    };
    assert_eq!(
        login(&authenticator(&anyone), "carol", slapd.password("carol")),
        account("carol")
    );
}

#[test]
fn empty_password_is_refused_though_the_directory_accepts_it_as_anonymous() {
    let slapd = Slapd::start();
    // The guard matters: this slapd (like Active Directory) answers an
    // empty-password bind with alice's DN with success, as anonymous.
    let settings = ldap3::LdapConnSettings::new()
        .set_starttls(true)
        .set_config(Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read(&slapd.info.ca_file).expect("CA");
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots.add(cert.expect("pem")).expect("add");
                }
                roots
            })
            .with_no_client_auth(),
        ));
    let mut raw = ldap3::LdapConn::with_settings(settings, &slapd.info.ldap_url).expect("connect");
    let bind = raw
        .simple_bind(&slapd.user_dn("alice"), "")
        .expect("bind answered");
    assert_eq!(bind.rc, 0, "an empty-password bind succeeds: {bind:?}");
    let (whoami, _) = raw
        .extended(ldap3::exop::WhoAmI)
        .expect("whoami")
        .success()
        .expect("whoami answered");
    // RFC 4532: an empty authorization identity is anonymous.
    assert!(
        whoami.val.as_deref().unwrap_or_default().is_empty(),
        "bound as anonymous: {whoami:?}"
    );

    let auth = authenticator(&config(&slapd, Tls::StartTls));
    assert_eq!(login(&auth, "alice", ""), None);
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
}

#[test]
fn names_are_the_directorys_case_folded() {
    let slapd = Slapd::start();
    let auth = authenticator(&config(&slapd, Tls::Ldaps));
    for typed in ["alice", "ALICE", "Alice"] {
        assert_eq!(
            login(&auth, typed, slapd.password("alice")),
            account("alice")
        );
    }
    let keep = LdapConfig {
        name_case: NameCase::Keep,
        ..config(&slapd, Tls::Ldaps)
    };
    // The directory's spelling (uid: alice), not the typed one.
    assert_eq!(
        login(&authenticator(&keep), "ALICE", slapd.password("alice")),
        account("alice")
    );
}

#[test]
fn filter_injection_finds_nothing() {
    let slapd = Slapd::start();
    let anyone = LdapConfig {
        require_group: String::new(),
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&anyone);
    for name in [
        "*",
        "a*",
        "*lice",
        ")(uid=*",
        "*)(uid=*))(|(uid=*",
        "alice)(|(uid=*",
        "alice\0",
        "\\2a",
    ] {
        for password in ["alicepw", "bobpw", "carolpw"] {
            assert_eq!(login(&auth, name, password), None, "{name:?}");
        }
    }
}

#[test]
fn group_found_by_a_search_when_memberof_does_not_name_it() {
    let slapd = Slapd::start();
    // A groupOfUniqueNames (no memberOf on its members): alice only.
    let unique = LdapConfig {
        require_group: slapd.info.unique_group_dn.clone(),
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&unique);
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
    assert_eq!(login(&auth, "bob", slapd.password("bob")), None);
    // memberOf compared ignoring case and blanks.
    let spelled = LdapConfig {
        require_group: slapd.info.group_dn.to_uppercase().replace(',', ", "),
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&spelled);
    assert_eq!(login(&auth, "bob", slapd.password("bob")), account("bob"));
    assert_eq!(login(&auth, "carol", slapd.password("carol")), None);
}

/// A drop link's session looks its owner up without a password: found,
/// canonically named and in the group, or not at all.
#[test]
fn lookup_without_a_password_follows_the_same_rules() {
    let slapd = Slapd::start();
    let unique = LdapConfig {
        require_group: slapd.info.unique_group_dn.clone(),
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&unique);
    let look = |name: &str| auth.lookup(name).expect("answered").map(|a| a.name);
    assert_eq!(look("alice"), account("alice"));
    assert_eq!(look("ALICE"), account("alice"));
    assert_eq!(look("bob"), None, "not in the group");
    assert_eq!(look("dave"), None, "no such entry");
    assert_eq!(look("*"), None);
}

#[test]
fn ssh_keys_from_the_directory() {
    let slapd = Slapd::start();
    let auth = authenticator(&config(&slapd, Tls::Ldaps));
    let alice = key_blob(&slapd.info.alice_pub);
    let other = key_blob(&slapd.info.other_pub);
    let key_login = |name: &str, blob: &[u8]| {
        auth.authenticate_key(name, blob)
            .expect("key login answered")
            .map(|a| a.name)
    };
    assert_eq!(key_login("alice", &alice), account("alice"));
    assert_eq!(key_login("ALICE", &alice), account("alice"));
    assert_eq!(key_login("alice", &other), None);
    assert_eq!(key_login("bob", &alice), None);
    assert_eq!(key_login("dave", &alice), None);
    assert_eq!(key_login("*", &alice), None);
    let no_keys = LdapConfig {
        ssh_key_attribute: String::new(),
        ..config(&slapd, Tls::Ldaps)
    };
    assert_eq!(
        authenticator(&no_keys)
            .authenticate_key("alice", &alice)
            .expect("answered"),
        None,
        "no key attribute configured: no key logins"
    );
}

/// `quota_attribute`: its one value, a size, is the user's own bytes
/// quota; a value that is not a size is ignored (the server's applies).
#[test]
fn quota_from_the_directory() {
    let slapd = Slapd::start();
    let quota_of = |attribute: &str, name: &str| {
        let auth = authenticator(&LdapConfig {
            quota_attribute: attribute.into(),
            ..config(&slapd, Tls::Ldaps)
        });
        auth.authenticate(name, &Password::new(slapd.password(name).into()))
            .expect("answered")
            .expect("logged in")
            .quota
    };
    assert_eq!(
        quota_of("employeeType", "alice"),
        Quota {
            bytes: Some(5 << 30),
            files: None
        }
    );
    assert_eq!(quota_of("employeeType", "bob"), Quota::default());
    assert_eq!(quota_of("", "alice"), Quota::default());
}

#[test]
fn plain_ldap_only_when_allowed() {
    let slapd = Slapd::start();
    let plain = LdapConfig {
        starttls: false,
        ..config(&slapd, Tls::StartTls)
    };
    let err = LdapAuthenticator::new(&plain, Path::new("/")).expect_err("refused");
    assert!(matches!(err, AuthError::BadSettings(_)), "{err}");
    assert!(err.to_string().contains("allow_plaintext"), "{err}");
    let allowed = LdapConfig {
        allow_plaintext: true,
        ..plain
    };
    assert_eq!(
        login(&authenticator(&allowed), "alice", slapd.password("alice")),
        account("alice")
    );
}

#[test]
fn directory_down_is_unavailable_then_logins_work_again() {
    let mut slapd = Slapd::start();
    let auth = authenticator(&config(&slapd, Tls::Ldaps));
    let alice = key_blob(&slapd.info.alice_pub);
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
    slapd.stop();
    let pw = Password::new(slapd.password("alice").into());
    assert!(is_unavailable(auth.authenticate("alice", &pw)));
    assert!(is_unavailable(
        auth.authenticate("alice", &Password::new("wrong".into()))
    ));
    assert!(is_unavailable(auth.authenticate_key("alice", &alice)));
    slapd.start_again();
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
    assert_eq!(login(&auth, "alice", "wrong"), None);
    assert_eq!(
        auth.authenticate_key("alice", &alice).expect("answered"),
        Some(Account::new("alice"))
    );
}

#[test]
fn a_kept_connection_broken_by_a_restart_is_replaced() {
    let mut slapd = Slapd::start();
    let auth = authenticator(&config(&slapd, Tls::StartTls));
    assert_eq!(login(&auth, "bob", slapd.password("bob")), account("bob"));
    // The pool keeps the connection; slapd restarts in between.
    slapd.stop();
    slapd.start_again();
    assert_eq!(login(&auth, "bob", slapd.password("bob")), account("bob"));
}

#[test]
fn directory_not_there_at_start_up_is_not_a_settings_error() {
    let mut slapd = Slapd::start();
    slapd.stop();
    let auth = authenticator(&config(&slapd, Tls::Ldaps));
    assert!(is_unavailable(auth.authenticate(
        "alice",
        &Password::new(slapd.password("alice").into())
    )));
    slapd.start_again();
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
}

#[test]
fn wrong_service_password_is_unavailable_not_a_wrong_password() {
    let slapd = Slapd::start();
    let wrong = LdapConfig {
        bind_password: Secret::new("not-the-service-password".into()),
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&wrong);
    let result = auth.authenticate("alice", &Password::new(slapd.password("alice").into()));
    let Err(AuthError::Unavailable(message)) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(message.contains("service account"), "{message}");
    assert!(!message.contains("not-the-service-password"), "{message}");
}

#[test]
fn service_password_from_a_file() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().expect("temp");
    std::fs::write(
        dir.path().join("ldap-password"),
        format!("{}\n", slapd.info.bind_password),
    )
    .expect("write");
    let from_file = LdapConfig {
        bind_password: Secret::default(),
        bind_password_file: "ldap-password".into(),
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = LdapAuthenticator::new(&from_file, dir.path()).expect("valid settings");
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
}

#[test]
fn cached_login_survives_an_outage_for_the_same_password_only() {
    let mut slapd = Slapd::start();
    let cached = LdapConfig {
        cache_secs: 600,
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&cached);
    assert_eq!(login(&auth, "alice", "wrong"), None);
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
    slapd.stop();
    assert_eq!(
        login(&auth, "alice", slapd.password("alice")),
        account("alice")
    );
    let pw = |p: &str| Password::new(p.into());
    assert!(is_unavailable(auth.authenticate("alice", &pw("wrong"))));
    assert_eq!(auth.authenticate("alice", &pw("")).expect("answered"), None);
    assert!(is_unavailable(
        auth.authenticate("bob", &pw(slapd.password("bob")))
    ));
    // Without the cache, the outage shows.
    let uncached = authenticator(&config(&slapd, Tls::Ldaps));
    assert!(is_unavailable(
        uncached.authenticate("alice", &pw(slapd.password("alice")))
    ));
}

#[test]
fn concurrent_logins_share_a_small_pool() {
    let slapd = Slapd::start();
    let one = LdapConfig {
        pool_size: 1,
        ..config(&slapd, Tls::Ldaps)
    };
    let auth = authenticator(&one);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (name, expect) = if i % 2 == 0 {
                    ("alice", account("alice"))
                } else {
                    ("carol", None)
                };
                let auth = &auth;
                let password = slapd.password(name).to_owned();
                s.spawn(move || {
                    for _ in 0..5 {
                        assert_eq!(login(auth, name, &password), expect);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
}
