//! The verdict on an upload before it is committed. The plaintext is fed,
//! chunk by chunk, to every configured scanner while the same chunks are
//! sealed into the staging file; when the transfer ends, the verdicts
//! decide: clean → commit, a finding → reject (or quarantine), a scanner
//! that failed → the `on_error` policy. Nothing plain is written to disk by
//! dropvault (clamd itself spools a stream to its TemporaryDirectory: put
//! that on tmpfs, see docs/SECURITY.md).
//!
//! Scanners: ClamAV's `clamd` over its INSTREAM protocol (unix socket or
//! TCP), and a command that reads the plaintext on standard input and
//! exits 0 to accept. Everything here blocks; the upload's worker thread
//! runs it.

mod clamd;
mod command;

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::metrics::{metrics, ScanOutcome};

pub use clamd::ClamdAddr;

/// What to do when a scanner cannot give a verdict (unreachable, too slow,
/// its size limit exceeded). In settings: `reject` or `accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the upload, as a failure the client may retry later.
    Reject,
    /// Commit it anyway, and log a warning.
    Accept,
}

/// Scanner settings.
#[derive(Clone, Debug)]
pub struct ScanSettings {
    /// clamd's address, if clamd scans.
    pub clamd: Option<ClamdAddr>,
    /// A command (argv) that scans, if any.
    pub command: Vec<String>,
    /// What a scanner's failure means.
    pub on_error: OnError,
    /// Limit for each wait on a scanner: connecting, taking a chunk,
    /// giving the verdict after the last byte.
    pub timeout: Duration,
    /// Keep rejected uploads, sealed, in the quarantine folder.
    pub quarantine: bool,
    /// The account the command runs as (`None`: the server's own).
    pub run_as: Option<crate::RunAs>,
}

impl ScanSettings {
    /// Whether the settings can be used (checked again by [`Scanner::new`];
    /// configuration loading calls it to fail early).
    pub fn check(&self) -> Result<(), ScanError> {
        if self.command.first().is_some_and(String::is_empty) {
            return Err(ScanError::BadConfig(
                "scan.command: empty program name".into(),
            ));
        }
        Ok(())
    }
}

/// Why a scanner could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// A setting cannot be used.
    #[error("scan settings: {0}")]
    BadConfig(String),
}

/// The configured scanners. Cheap to share.
#[derive(Debug)]
pub struct Scanner {
    settings: ScanSettings,
}

/// The outcome of scanning one upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every scanner found it clean.
    Clean,
    /// A scanner found something: what (clamd's signature name, or the
    /// command's first line of standard error when that is a short name,
    /// else a generic one).
    Rejected {
        /// The finding.
        finding: String,
    },
    /// A scanner could not decide.
    Failed {
        /// Why.
        reason: String,
    },
}

impl Scanner {
    /// Scanners from `settings`; `None` if none is configured.
    pub fn new(settings: ScanSettings) -> Result<Option<Self>, ScanError> {
        settings.check()?;
        if settings.clamd.is_none() && settings.command.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { settings }))
    }

    /// What a failed scan means.
    pub fn on_error(&self) -> OnError {
        self.settings.on_error
    }

    /// Whether clamd, if configured, answers a `PING` (each wait bounded
    /// by the scan timeout). A scan command has nothing to ask. Blocks.
    pub fn ping(&self) -> std::io::Result<()> {
        match &self.settings.clamd {
            Some(addr) => clamd::ping(addr, self.settings.timeout),
            None => Ok(()),
        }
    }

    /// Whether rejected uploads are kept in quarantine.
    pub fn quarantine(&self) -> bool {
        self.settings.quarantine
    }

    /// Starts scanning an upload of `user` to `path`, on a thread of its
    /// own so that scanning overlaps with sealing. Never fails: a scanner
    /// that cannot start records why, and the verdict says so.
    pub fn begin(&self, user: &str, path: &str) -> ScanJob {
        let settings = self.settings.clone();
        let (user, path) = (user.to_owned(), path.to_owned());
        let (tx, rx) = mpsc::sync_channel::<Feed>(AHEAD);
        let (back, spare) = mpsc::channel::<Vec<u8>>();
        let worker = thread::Builder::new()
            .name("dropvault-scan".into())
            .spawn(move || scan_worker(&settings, &user, &path, &rx, &back));
        match worker {
            Ok(handle) => ScanJob {
                tx: Some(tx),
                spare,
                worker: Some(handle),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start a scan thread");
                ScanJob {
                    tx: None,
                    spare,
                    worker: None,
                }
            }
        }
    }
}

/// Chunks queued for a scan thread at most (each up to 1 MiB).
const AHEAD: usize = 4;

/// What the upload's worker tells its scan thread.
enum Feed {
    Data(Vec<u8>),
    /// The upload is complete: give the verdict.
    Finish,
}

/// Feeds every scanner, returns their buffers; gives the verdict on
/// `Finish`, or `None` if the upload was abandoned (the scanners are
/// dropped: a hook is killed, clamd's connection closed).
fn scan_worker(
    settings: &ScanSettings,
    user: &str,
    path: &str,
    rx: &mpsc::Receiver<Feed>,
    back: &mpsc::Sender<Vec<u8>>,
) -> Option<Verdict> {
    let mut clamd = settings
        .clamd
        .as_ref()
        .map(|addr| clamd::Job::start(addr, settings.timeout));
    let mut command =
        (!settings.command.is_empty()).then(|| command::Job::start(settings, user, path));
    for feed in rx {
        match feed {
            Feed::Data(mut data) => {
                if let Some(j) = clamd.as_mut() {
                    j.feed(&data);
                }
                if let Some(j) = command.as_mut() {
                    j.feed(&data);
                }
                data.clear();
                let _ = back.send(data);
            }
            Feed::Finish => {
                let verdicts = [
                    clamd.map(clamd::Job::finish),
                    command.map(command::Job::finish),
                ];
                return Some(combine(verdicts.into_iter().flatten()));
            }
        }
    }
    None
}

/// A finding wins over a failure, a failure over clean.
fn combine(verdicts: impl Iterator<Item = Verdict>) -> Verdict {
    let mut failed = None;
    for v in verdicts {
        match v {
            Verdict::Rejected { .. } => return v,
            Verdict::Failed { .. } if failed.is_none() => failed = Some(v),
            _ => {}
        }
    }
    failed.unwrap_or(Verdict::Clean)
}

/// One upload being scanned.
#[derive(Debug)]
pub struct ScanJob {
    tx: Option<mpsc::SyncSender<Feed>>,
    spare: mpsc::Receiver<Vec<u8>>,
    worker: Option<thread::JoinHandle<Option<Verdict>>>,
}

impl ScanJob {
    /// The next plaintext bytes of the upload. Copied to the scan thread;
    /// waits only when the scanners are [`AHEAD`] chunks behind.
    pub fn feed(&mut self, data: &[u8]) {
        let Some(tx) = &self.tx else {
            return;
        };
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.extend_from_slice(data);
        if tx.send(Feed::Data(buf)).is_err() {
            self.tx = None;
        }
    }

    /// The end of the upload: every scanner's verdict, combined.
    pub fn finish(mut self) -> Verdict {
        let started = std::time::Instant::now();
        let sent = self
            .tx
            .take()
            .is_some_and(|tx| tx.send(Feed::Finish).is_ok());
        let verdict = self.worker.take().and_then(|w| w.join().ok()).flatten();
        let verdict = match verdict {
            Some(v) if sent => v,
            _ => Verdict::Failed {
                reason: "the scan thread stopped".into(),
            },
        };
        let outcome = match verdict {
            Verdict::Clean => ScanOutcome::Clean,
            Verdict::Rejected { .. } => ScanOutcome::Infected,
            Verdict::Failed { .. } => ScanOutcome::Error,
        };
        metrics().scanned(outcome, started.elapsed());
        verdict
    }
}

/// Where clamd listens, from `unix:/path` or `tcp:host:port`.
pub fn parse_clamd(spec: &str) -> Result<ClamdAddr, ScanError> {
    if let Some(path) = spec.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(ScanError::BadConfig(
                "scan.clamd: unix: needs a path".into(),
            ));
        }
        return Ok(ClamdAddr::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = spec.strip_prefix("tcp:") {
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(ScanError::BadConfig(
                "scan.clamd: tcp: needs host:port".into(),
            ));
        }
        return Ok(ClamdAddr::Tcp(addr.to_owned()));
    }
    Err(ScanError::BadConfig(
        "scan.clamd must be \"unix:/path\" or \"tcp:host:port\"".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_addresses_parse() {
        assert!(matches!(
            parse_clamd("unix:/run/c.sock"),
            Ok(ClamdAddr::Unix(_))
        ));
        assert!(matches!(
            parse_clamd("tcp:127.0.0.1:3310"),
            Ok(ClamdAddr::Tcp(_))
        ));
        for bad in [
            "",
            "unix:",
            "tcp:127.0.0.1",
            "tcp::1",
            "tcp:h:x",
            "/run/c.sock",
        ] {
            assert!(parse_clamd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_scanner_configured_means_no_scanning() {
        let settings = ScanSettings {
            clamd: None,
            command: vec![],
            on_error: OnError::Reject,
            timeout: Duration::from_secs(1),
            quarantine: false,
            run_as: None,
        };
        assert!(Scanner::new(settings).expect("ok").is_none());
    }
}
