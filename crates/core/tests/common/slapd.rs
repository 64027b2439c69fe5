//! A throwaway OpenLDAP slapd on 127.0.0.1 for the LDAP tests, one per
//! test, through the project's harness (`tests/integration/slapd.py
//! serve`, which writes the config, TLS files, schema and entries). It
//! obeys `stop` and `start` lines; when this handle drops, the harness's
//! stdin closes and it stops slapd.

#![allow(dead_code)] // each test binary uses its own part of it

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use super::garage::workspace_root;

/// How long the harness may take to start slapd or answer a command.
const WAIT: Duration = Duration::from_secs(60);

/// What the harness prints once slapd answers.
#[derive(serde::Deserialize)]
pub(crate) struct Info {
    pub(crate) ldap_url: String,
    pub(crate) ldaps_url: String,
    pub(crate) ca_file: PathBuf,
    pub(crate) base_dn: String,
    pub(crate) bind_dn: String,
    pub(crate) bind_password: String,
    pub(crate) group_dn: String,
    pub(crate) unique_group_dn: String,
    pub(crate) user_filter: String,
    pub(crate) users: HashMap<String, String>,
    pub(crate) alice_pub: PathBuf,
    pub(crate) other_pub: PathBuf,
}

/// A running harness with its slapd.
pub(crate) struct Slapd {
    pub(crate) info: Info,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Slapd {
    /// Starts a fresh slapd.
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp folder");
        let script = workspace_root().join("tests/integration/slapd.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["serve", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "slapd.py did not start slapd (see its message above; it needs Debian's \
                 slapd and ldap-utils, which scripts/test installs)"
            )
        });
        let info: Info = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("slapd.py printed {first:?}: {e}"));
        let stdin = child.stdin.take();
        Self {
            info,
            stdin,
            lines,
            child,
            _dir: dir,
        }
    }

    fn command(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("harness running");
        writeln!(stdin, "{command}").expect("write to slapd.py");
        stdin.flush().expect("flush");
        let answer = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("slapd.py did not answer {command:?}"));
        assert_eq!(answer, r#"{"ok": true}"#, "slapd.py {command}");
    }

    /// Stops slapd (ports and data stay).
    pub(crate) fn stop(&mut self) {
        self.command("stop");
    }

    /// Starts slapd again after [`stop`](Self::stop).
    pub(crate) fn start_again(&mut self) {
        self.command("start");
    }

    /// The password of test user `name`.
    pub(crate) fn password(&self, name: &str) -> &str {
        &self.info.users[name]
    }

    /// The DN of test user `name`.
    pub(crate) fn user_dn(&self, name: &str) -> String {
        format!("uid={name},{}", self.info.base_dn)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        // EOF: the harness stops slapd and exits.
        drop(self.stdin.take());
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
