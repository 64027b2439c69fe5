//! A real Garage on 127.0.0.1 for the S3 tests, started once per test
//! binary through the project's harness (`tests/integration/garage.py
//! serve`), which stops Garage when the test process exits and its stdin
//! closes. Tests share the bucket, each under a key prefix of its own.

#![allow(dead_code)] // each test binary uses its own part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use dropvault_core::s3::{S3Client, S3Settings};
use zeroize::Zeroizing;

/// How long the harness may take to bring Garage up (it gives up at 90 s).
const START_WAIT: Duration = Duration::from_secs(150);

/// What the harness prints once the bucket is ready.
#[derive(serde::Deserialize)]
pub(crate) struct Info {
    pub(crate) endpoint: String,
    pub(crate) region: String,
    pub(crate) bucket: String,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) data_dirs: Vec<PathBuf>,
}

/// The running harness. Never dropped (it lives in a static): when the test
/// process exits, the harness's stdin closes and it stops Garage.
pub(crate) struct Garage {
    pub(crate) info: Info,
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A folder for this process's Garage, after removing those of earlier
/// runs whose process is gone (a static is never dropped, so nothing else
/// cleans them).
pub(crate) fn garage_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("garage");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stale = name
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the Garage folder");
    dir
}

pub(crate) fn start_garage() -> Garage {
    let script = workspace_root().join("tests/integration/garage.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["serve", "--nodes", "1", "--timeout", "90", "--dir"])
        .arg(garage_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(START_WAIT)
        .expect("garage.py printed nothing in time");
    let info: Info = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("garage.py did not start Garage ({e}): {line:?}"));
    let stdin = child.stdin.take().expect("piped stdin");
    Garage {
        info,
        _stdin: Mutex::new(stdin),
        _child: Mutex::new(child),
    }
}

pub(crate) fn garage() -> &'static Garage {
    static GARAGE: OnceLock<Garage> = OnceLock::new();
    GARAGE.get_or_init(start_garage)
}

pub(crate) fn settings(prefix: &str) -> S3Settings {
    let info = &garage().info;
    S3Settings {
        endpoint: info.endpoint.clone(),
        region: info.region.clone(),
        bucket: info.bucket.clone(),
        prefix: prefix.to_owned(),
        access_key_id: info.access_key_id.clone(),
        secret_access_key: Zeroizing::new(info.secret_access_key.clone()),
        path_style: true,
        timeout: Duration::from_secs(30),
        ca_file: None,
        retries: 2,
    }
}

pub(crate) fn client(prefix: &str) -> S3Client {
    S3Client::new(settings(prefix)).expect("valid settings")
}
