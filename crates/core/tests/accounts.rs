//! Accounts end to end: the users file on a real folder (as the CLI and the
//! server use it, concurrently), and PAM against the machine's real PAM
//! stack with a real system user when the tests run as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dropvault_core::accounts::{
    validate_user_name, Account, AuthError, Authenticator, PamAuthenticator, Password, UserFile,
};

fn pw(s: &str) -> Password {
    Password::new(s.to_owned())
}

fn users_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("users.toml")
}

fn login(auth: &dyn Authenticator, name: &str, password: &str) -> Option<Account> {
    auth.authenticate(name, &pw(password))
        .expect("authenticate")
}

fn is_root() -> bool {
    // `id -u` rather than libc: unsafe code is forbidden outside the pam crate.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

#[test]
fn users_file_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_path(&dir);
    let users = UserFile::open(&path).expect("a missing file is no users");
    assert_eq!(users.list().expect("list"), Vec::<String>::new());
    assert_eq!(login(&users, "alice", "x"), None);

    users.add("alice", &pw("alice's secret")).expect("add");
    let err = users.add("alice", &pw("other")).expect_err("duplicate");
    assert!(
        matches!(err, AuthError::UserExists { ref name } if name == "alice"),
        "{err}"
    );

    assert_eq!(
        login(&users, "alice", "alice's secret"),
        Some(Account::new("alice"))
    );
    assert_eq!(login(&users, "alice", "alice's secreT"), None);
    assert_eq!(login(&users, "alice", ""), None);
    assert_eq!(
        login(&users, "Alice", "alice's secret"),
        None,
        "names are case-sensitive"
    );
    assert_eq!(login(&users, "mallory", "alice's secret"), None);

    // passwd: the old password stops working, the new one works.
    users
        .set_password("alice", &pw("new secret"))
        .expect("passwd");
    assert_eq!(login(&users, "alice", "alice's secret"), None);
    assert!(login(&users, "alice", "new secret").is_some());
    let err = users.set_password("bob", &pw("x")).expect_err("no bob");
    assert!(
        matches!(err, AuthError::NoSuchUser { ref name } if name == "bob"),
        "{err}"
    );
    assert!(matches!(
        users.add("carol", &pw("")),
        Err(AuthError::EmptyPassword)
    ));

    // list is sorted whatever the order of adds.
    users.add("zoe", &pw("z")).expect("add");
    users.add("bob.smith@example.org", &pw("b")).expect("add");
    assert_eq!(
        users.list().expect("list"),
        ["alice", "bob.smith@example.org", "zoe"]
    );

    users.delete("zoe").expect("delete");
    assert_eq!(login(&users, "zoe", "z"), None);
    assert!(matches!(
        users.delete("zoe"),
        Err(AuthError::NoSuchUser { .. })
    ));
    assert_eq!(
        users.list().expect("list"),
        ["alice", "bob.smith@example.org"]
    );

    // The file: private, with its header, hashes not passwords, and nothing
    // left beside it but the writers' lock file.
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("# managed by `dropvault user ...`\n"),
        "{text}"
    );
    assert!(text.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
    assert!(!text.contains("new secret"));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["users.toml", "users.toml.lock"]);

    // A fresh open reads the same users.
    let again = UserFile::open(&path).expect("reopen");
    assert!(login(&again, "bob.smith@example.org", "b").is_some());
}

#[test]
fn the_server_sees_changes_made_by_the_cli_while_it_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_path(&dir);
    let server = UserFile::open(&path).expect("open");
    assert_eq!(login(&server, "dave", "one"), None);

    let cli = UserFile::open(&path).expect("open");
    cli.add("dave", &pw("one")).expect("add");
    assert!(login(&server, "dave", "one").is_some());
    cli.set_password("dave", &pw("two")).expect("passwd");
    assert_eq!(login(&server, "dave", "one"), None);
    assert!(login(&server, "dave", "two").is_some());
    cli.delete("dave").expect("delete");
    assert_eq!(login(&server, "dave", "two"), None);
    assert!(server.list().expect("list").is_empty());
}

/// Made by another implementation (Python's argon2-cffi) with other costs
/// than ours, as an operator might paste it in.
const FOREIGN_HASH: &str =
    "$argon2id$v=19$m=8192,t=1,p=1$wbekkgjAqMgb1+zs67w4Ew$IiI0+m70gE0/m/uLCI5qm7g7Q53waz7yyFvA3ieOK/M";

#[test]
fn a_hand_written_users_file_is_read_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_path(&dir);
    std::fs::write(
        &path,
        format!(
            "# written by hand\n\n[users.erin]\npassword = \"{FOREIGN_HASH}\" # open sesame\n\n\
             [users.\"x.y\"]\npassword = '{FOREIGN_HASH}'\n"
        ),
    )
    .expect("write");
    let users = UserFile::open(&path).expect("open");
    assert_eq!(users.list().expect("list"), ["erin", "x.y"]);
    assert!(login(&users, "erin", "open sesame").is_some());
    assert!(login(&users, "x.y", "open sesame").is_some());
    assert_eq!(login(&users, "erin", "open sesame!"), None);

    // A change through the CLI keeps the other users' hashes as they were.
    users.add("frank", &pw("f")).expect("add");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.matches(FOREIGN_HASH).count(), 2, "{text}");
    assert!(login(&users, "erin", "open sesame").is_some());
    assert!(login(&users, "frank", "f").is_some());
}

#[test]
fn a_bad_users_file_is_refused_without_quoting_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_path(&dir);
    let cases = [
        ("not toml", "[users.alice\n".to_owned()),
        (
            "unknown field",
            format!("[users.alice]\npassword = \"{FOREIGN_HASH}\"\nshell = \"/bin/sh\"\n"),
        ),
        (
            "misspelt table",
            format!("[user.alice]\npassword = \"{FOREIGN_HASH}\"\n"),
        ),
        (
            "bad name",
            format!("[users.\"../etc\"]\npassword = \"{FOREIGN_HASH}\"\n"),
        ),
        (
            "plain password",
            "[users.alice]\npassword = \"hunter2\"\n".to_owned(),
        ),
        (
            "argon2i",
            format!(
                "[users.alice]\npassword = \"{}\"\n",
                FOREIGN_HASH.replace("argon2id", "argon2i")
            ),
        ),
        ("too large", format!("# {}\n", "x".repeat(1024 * 1024))),
    ];
    for (what, text) in cases {
        std::fs::write(&path, &text).expect("write");
        let err = UserFile::open(&path).expect_err(what);
        assert!(
            matches!(err, AuthError::BadUsersFile { .. }),
            "{what}: {err}"
        );
        let msg = err.to_string();
        assert!(!msg.contains("wbekkgjAqMgb1"), "{what}: {msg}");
    }

    // A file that turns bad under a running server fails logins loudly
    // rather than serving a stale list.
    std::fs::write(
        &path,
        format!("[users.erin]\npassword = \"{FOREIGN_HASH}\"\n"),
    )
    .expect("write");
    let users = UserFile::open(&path).expect("open");
    assert!(login(&users, "erin", "open sesame").is_some());
    std::fs::write(&path, "[users.erin\n").expect("write");
    assert!(matches!(
        users.authenticate("erin", &pw("open sesame")),
        Err(AuthError::BadUsersFile { .. })
    ));
    // And a failed change leaves the file alone.
    assert!(users.add("gina", &pw("g")).is_err());
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "[users.erin\n"
    );
}

#[test]
fn concurrent_adds_from_threads_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Arc::new(users_path(&dir));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                // Separate instances, as separate CLI processes would be.
                let users = UserFile::open(path.as_path()).expect("open");
                users
                    .add(&format!("user{i}"), &pw(&format!("pw{i}")))
                    .expect("add");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let users = UserFile::open(path.as_path()).expect("open");
    assert_eq!(
        users.list().expect("list"),
        ["user0", "user1", "user2", "user3", "user4", "user5"]
    );
    assert!(login(&users, "user3", "pw3").is_some());
    assert_eq!(login(&users, "user3", "pw4"), None);
}

#[test]
fn invalid_names_are_refused_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_path(&dir);
    let users = UserFile::open(&path).expect("open");
    let long = "a".repeat(65);
    for bad in [
        "", ".", "..", "../x", ".hidden", "-rf", "a/b", "a b", "é", "a\0b", &long,
    ] {
        assert!(
            matches!(validate_user_name(bad), Err(AuthError::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(users.add(bad, &pw("x")), Err(AuthError::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(matches!(
            users.set_password(bad, &pw("x")),
            Err(AuthError::InvalidName { .. })
        ));
        assert!(matches!(
            users.delete(bad),
            Err(AuthError::InvalidName { .. })
        ));
        // To a peer, an impossible name is just a name that does not exist.
        assert_eq!(login(&users, bad, "x"), None);
    }
    assert!(!path.exists(), "nothing was written");
    assert!(validate_user_name(&"a".repeat(64)).is_ok());
    // root is a valid name here: only the PAM backend refuses it.
    assert!(validate_user_name("root").is_ok());
}

#[test]
fn unknown_names_cost_the_same_argon2_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = UserFile::open(users_path(&dir)).expect("open");
    users.add("henry", &pw("right")).expect("add");
    let time = |name: &str| {
        let t = Instant::now();
        assert_eq!(login(&users, name, "wrong"), None);
        t.elapsed()
    };
    // Interleaved, and the fastest of each kept, so load from other tests
    // on this shared machine hits all three alike.
    let (mut known, mut unknown, mut invalid) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        known = known.min(time("henry"));
        unknown = unknown.min(time("nobody"));
        invalid = invalid.min(time("../nobody"));
    }
    // Equal work makes these about equal; skipping argon2 would make the
    // unknown names thousands of times faster (microseconds against tens
    // or hundreds of milliseconds), so a loose bound is bound enough.
    for (what, t) in [("unknown", unknown), ("invalid", invalid)] {
        assert!(
            t * 10 > known,
            "{what} name took {t:?}, a known one {known:?}"
        );
    }
}

#[test]
fn passwords_print_redacted() {
    let p = pw("hunter2");
    let shown = format!("{p:?} {:#?}", p);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert_eq!(p.expose(), "hunter2");
    // The users file's Debug shows its path, not its hashes.
    let dir = tempfile::tempdir().expect("tempdir");
    let users = UserFile::open(users_path(&dir)).expect("open");
    users.add("ivy", &p).expect("add");
    let shown = format!("{users:?}");
    assert!(
        shown.contains("users.toml") && !shown.contains("argon2"),
        "{shown}"
    );
}

#[test]
fn a_change_by_root_keeps_the_files_owner() {
    if !is_root() {
        // Only root can give a file away; without it, check that a change
        // keeps our own ownership and the file private.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = users_path(&dir);
        let users = UserFile::open(&path).expect("open");
        users.add("jo", &pw("j")).expect("add");
        let before = std::fs::metadata(&path).expect("stat");
        users.add("kim", &pw("k")).expect("add");
        let after = std::fs::metadata(&path).expect("stat");
        assert_eq!((before.uid(), before.gid()), (after.uid(), after.gid()));
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_path(&dir);
    let users = UserFile::open(&path).expect("open");
    users.add("jo", &pw("j")).expect("add");
    // As if the server's own user owned the file: nobody:nogroup.
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
    users.add("kim", &pw("k")).expect("add");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(login(&users, "kim", "k").is_some());
}

// --- PAM ---------------------------------------------------------------

/// The shipped PAM service file.
fn packaged_pam_service() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/pam.d/dropvault")
}

/// A system user made for one test, deleted on drop, even if the test
/// panics.
struct TempSystemUser {
    name: String,
}

impl TempSystemUser {
    fn create(password: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("dvtest{:08x}", nanos ^ std::process::id());
        useradd(&["-M", "-s", "/usr/sbin/nologin", &name]);
        // From here on the guard deletes the user whatever happens.
        let user = Self { name };
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        {
            use std::io::Write as _;
            let mut stdin = chpasswd.stdin.take().expect("stdin");
            writeln!(stdin, "{}:{password}", user.name).expect("write to chpasswd");
        }
        let status = chpasswd.wait().expect("chpasswd");
        assert!(status.success(), "chpasswd: {status}");
        user
    }
}

impl Drop for TempSystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs useradd, quietly unless it fails.
fn useradd(args: &[&str]) {
    let out = Command::new("useradd")
        .args(args)
        .output()
        .expect("run useradd");
    assert!(
        out.status.success(),
        "useradd {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pam_refuses_root_and_impossible_names_before_asking_pam() {
    let pam = PamAuthenticator::default();
    assert_eq!(pam.service(), "dropvault");
    // root is refused even with a password nobody knows: PAM is never asked,
    // so this is no way to guess root's password.
    let err = pam
        .authenticate("root", &pw("anything"))
        .expect_err("root must be refused");
    assert!(
        matches!(err, AuthError::Refused { ref user, .. } if user == "root"),
        "{err}"
    );
    for bad in ["", "../etc", "-root", "a b", "r\0ot"] {
        assert_eq!(login(&pam, bad, "x"), None, "{bad:?}");
    }
}

#[test]
fn pam_authenticates_a_real_system_user() {
    let pam = PamAuthenticator::default();
    if !is_root() {
        // Without root we can neither make a user nor let pam_unix check
        // another user's password; an unknown user is still refused
        // through the real PAM stack (or PAM says it is missing).
        match pam.authenticate("dvtest-no-such-user", &pw("x")) {
            Ok(None) | Err(AuthError::PamUnavailable(_)) => {}
            other => panic!("unknown user: {other:?}"),
        }
        return;
    }
    let service = Path::new("/etc/pam.d/dropvault");
    if !service.exists() {
        std::fs::copy(packaged_pam_service(), service).expect("install /etc/pam.d/dropvault");
    }
    let user = TempSystemUser::create("Corr3ct horse");
    assert_eq!(
        login(&pam, &user.name, "Corr3ct horse"),
        Some(Account::new(user.name.clone()))
    );
    assert_eq!(login(&pam, &user.name, "wrong horse"), None);
    assert_eq!(login(&pam, &user.name, ""), None);
    assert_eq!(login(&pam, "dvtest-no-such-user", "Corr3ct horse"), None);
}

#[test]
fn pam_refuses_other_uid_0_accounts() {
    if !is_root() {
        // Covered by the refusal of root by name above; making a second
        // uid 0 account needs root.
        assert!(matches!(
            PamAuthenticator::default().authenticate("root", &pw("x")),
            Err(AuthError::Refused { .. })
        ));
        return;
    }
    // A second name for uid 0 with a locked password: refused by uid, before
    // PAM (whose answer would be "wrong password").
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!("dvroot{:08x}", nanos ^ std::process::id());
    // useradd warns that uid 0 is outside the usual range: we know.
    useradd(&[
        "-M",
        "-d",
        "/nonexistent",
        "-o",
        "-u",
        "0",
        "-g",
        "0",
        "-s",
        "/usr/sbin/nologin",
        &name,
    ]);
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            // -f: uid 0 owns running processes, which userdel otherwise
            // refuses to leave behind.
            let _ = Command::new("userdel")
                .args(["-f", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _remove = Remove(name.clone());
    let err = PamAuthenticator::default()
        .authenticate(&name, &pw("x"))
        .expect_err("uid 0 must be refused");
    assert!(matches!(err, AuthError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("uid 0"), "{err}");
}

#[test]
fn a_remembered_login_never_outlives_a_password_change_or_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users.toml");
    let server = UserFile::open(&path).expect("open");
    let cli = UserFile::open(&path).expect("open");
    let old = Password::new("old password".into());
    let new = Password::new("new password".into());
    cli.add("rita", &old).expect("add");
    // Twice: the second login is served from the verified-login memo.
    for _ in 0..2 {
        assert!(server.authenticate("rita", &old).expect("auth").is_some());
    }
    assert!(server.authenticate("rita", &new).expect("auth").is_none());
    // Another process changes the password: the memo goes with the old file.
    cli.set_password("rita", &new).expect("passwd");
    assert!(server.authenticate("rita", &old).expect("auth").is_none());
    assert!(server.authenticate("rita", &new).expect("auth").is_some());
    assert!(server.authenticate("rita", &new).expect("auth").is_some());
    cli.delete("rita").expect("delete");
    assert!(server.authenticate("rita", &new).expect("auth").is_none());
}
