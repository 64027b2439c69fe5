//! A real SoftHSM2 token for the PKCS#11 tests, made by the project's
//! harness (`tests/integration/softhsm.py init`, shared with pytest).
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, and a token it lost is
//! lost for the whole process, so each test runs in a child process of its
//! own: this test binary again, for that one test, with its own token and
//! `SOFTHSM2_CONF` set in its environment from the start.

#![allow(dead_code)] // each test binary uses its own part of it

use std::path::{Path, PathBuf};
use std::process::Command;

use dropvault_core::keys::pkcs11::Pkcs11Config;
use dropvault_core::secret::Secret;

/// Set in a test's child process: the folder of its token.
const CHILD_ENV: &str = "DROPVAULT_TEST_SOFTHSM_DIR";

/// What `softhsm.py init` made.
#[derive(serde::Deserialize)]
pub(crate) struct Hsm {
    pub(crate) conf: PathBuf,
    pub(crate) module: String,
    pub(crate) pin: String,
    pub(crate) token_label: String,
    pub(crate) keys: Vec<String>,
    pub(crate) token_folder: PathBuf,
    pub(crate) away_folder: PathBuf,
    #[serde(skip)]
    pub(crate) dir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/integration/softhsm.py")
}

/// Runs `softhsm.py ARGS`; its output, or a panic with its message (which
/// names the Debian package to install when a tool is missing).
fn harness(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run python3 {}: {e}", script().display()));
    assert!(
        out.status.success(),
        "softhsm.py {} failed:\n{}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `body` with a fresh token labelled `dropvault` holding an RSA-3072
/// key pair per label in `keys`, in a child process running only the test
/// `name` (the calling test's function name).
pub(crate) fn scenario(name: &str, keys: &[&str], body: impl FnOnce(&Hsm)) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let dir = PathBuf::from(dir);
        let text = std::fs::read_to_string(dir.join("softhsm.json")).expect("softhsm.json");
        let mut hsm: Hsm = serde_json::from_str(&text).expect("softhsm.json");
        hsm.dir = dir;
        body(&hsm);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("UTF-8 temp path");
    let mut args = vec!["init", "--dir", path, "--label", "dropvault"];
    for k in keys {
        args.extend(["--key", k]);
    }
    let hsm: Hsm = serde_json::from_str(&harness(&args)).expect("softhsm.py init JSON");
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hsm {
    /// Provider settings for the key pair `key_label`.
    pub(crate) fn config(&self, key_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            key_label: key_label.to_owned(),
            pin: Secret::new(self.pin.clone()),
            ..Pkcs11Config::default()
        }
    }

    /// Takes the token away (its folder leaves the token folder).
    pub(crate) fn remove(&self) {
        std::fs::rename(&self.token_folder, &self.away_folder).expect("move the token away");
    }

    /// Puts the token back.
    pub(crate) fn restore(&self) {
        std::fs::rename(&self.away_folder, &self.token_folder).expect("put the token back");
    }

    /// Destroys the key pair `key_label` (pkcs11-tool, another process).
    pub(crate) fn delete_key(&self, key_label: &str) {
        let dir = self.dir.to_str().expect("UTF-8 path");
        harness(&["delete-key", "--dir", dir, "--key", key_label]);
    }
}
