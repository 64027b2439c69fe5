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
use std::time::Duration;

pub use clamd::ClamdAddr;

/// What to do when a scanner cannot give a verdict (unreachable, too slow,
/// its size limit exceeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Refuse the upload (FTP 451: try again later).
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
    /// command's first line of standard error).
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
        if settings.command.first().is_some_and(String::is_empty) {
            return Err(ScanError::BadConfig(
                "scan.command: empty program name".into(),
            ));
        }
        if settings.clamd.is_none() && settings.command.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { settings }))
    }

    /// What a failed scan means.
    pub fn on_error(&self) -> OnError {
        self.settings.on_error
    }

    /// Whether rejected uploads are kept in quarantine.
    pub fn quarantine(&self) -> bool {
        self.settings.quarantine
    }

    /// Starts scanning an upload of `user` to `path`. Never fails: a
    /// scanner that cannot start records why, and the verdict says so.
    pub fn begin(&self, user: &str, path: &str) -> ScanJob {
        let clamd = self
            .settings
            .clamd
            .as_ref()
            .map(|addr| clamd::Job::start(addr, self.settings.timeout));
        let command = (!self.settings.command.is_empty()).then(|| {
            command::Job::start(&self.settings.command, user, path, self.settings.timeout)
        });
        ScanJob { clamd, command }
    }
}

/// One upload being scanned.
pub struct ScanJob {
    clamd: Option<clamd::Job>,
    command: Option<command::Job>,
}

impl std::fmt::Debug for ScanJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanJob")
            .field("clamd", &self.clamd.is_some())
            .field("command", &self.command.is_some())
            .finish()
    }
}

impl ScanJob {
    /// The next plaintext bytes of the upload.
    pub fn feed(&mut self, data: &[u8]) {
        if let Some(j) = &mut self.clamd {
            j.feed(data);
        }
        if let Some(j) = &mut self.command {
            j.feed(data);
        }
    }

    /// The end of the upload: every scanner's verdict, combined. A finding
    /// wins over a failure, a failure over clean.
    pub fn finish(self) -> Verdict {
        let verdicts = [
            self.clamd.map(clamd::Job::finish),
            self.command.map(command::Job::finish),
        ];
        let mut failed = None;
        for v in verdicts.into_iter().flatten() {
            match v {
                Verdict::Rejected { .. } => return v,
                Verdict::Failed { .. } if failed.is_none() => failed = Some(v),
                _ => {}
            }
        }
        failed.unwrap_or(Verdict::Clean)
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
        };
        assert!(Scanner::new(settings).expect("ok").is_none());
    }
}
