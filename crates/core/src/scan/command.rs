//! A command as a scanner (YARA, DLP, anything): it gets the upload's
//! plaintext on standard input as it streams, and a JSON description of the
//! upload in the environment variable `DROPVAULT_EVENT`. Exit status 0
//! accepts; anything else rejects. The finding the client is told is the
//! first line of its standard error if that is a short name (letters,
//! digits, `. _ - : / +`, up to [`MAX_FINDING`]), else a generic one; the
//! whole standard error goes to the log only. A hook that stops reading
//! early has decided: the rest is not sent. Every wait is bounded by the
//! scan timeout, and a hook that overstays it is killed. It runs as
//! `scan.run_as`, in `/`, without the server's environment (see
//! `hookproc`).

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::Verdict;

/// Standard error kept from a hook.
const MAX_STDERR: u64 = 64 * 1024;
/// Longest finding taken from the first line of standard error.
const MAX_FINDING: usize = 100;
/// Most characters of a hook's standard error written to the log.
const MAX_LOGGED_STDERR: usize = 4096;

pub(super) struct Job {
    program: String,
    user: String,
    path: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
    timeout: Duration,
    failed: Option<String>,
}

impl Job {
    pub(super) fn start(settings: &super::ScanSettings, user: &str, path: &str) -> Self {
        let argv = &settings.command;
        let timeout = settings.timeout;
        let program = argv.first().cloned().unwrap_or_default();
        let mut job = Self {
            program: program.clone(),
            user: user.to_owned(),
            path: path.to_owned(),
            child: None,
            stdin: None,
            stderr: None,
            timeout,
            failed: None,
        };
        let event = serde_json::json!({ "event": "upload_scan", "user": user, "path": path });
        let spawned = crate::hookproc::hook_command(argv, settings.run_as.as_ref())
            .env("DROPVAULT_EVENT", event.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                job.failed = Some(format!("cannot run scan command {program}: {e}"));
                return job;
            }
        };
        let stdin = child.stdin.take();
        if let Some(s) = &stdin {
            // Writes wait in poll() with a deadline, never in write().
            let nonblocking = fcntl(s.as_fd(), FcntlArg::F_GETFL)
                .map(OFlag::from_bits_truncate)
                .and_then(|flags| fcntl(s.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)));
            if let Err(e) = nonblocking {
                job.failed = Some(format!("scan command {program}: {e}"));
            }
        }
        if let Some(mut err) = child.stderr.take() {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut err).take(MAX_STDERR).read_to_end(&mut buf);
                let _ = tx.send(buf);
                // Drain the rest so the hook never blocks on a full pipe.
                let _ = io::copy(&mut err, &mut io::sink());
            });
            job.stderr = Some(rx);
        }
        job.stdin = stdin;
        job.child = Some(child);
        job
    }

    pub(super) fn feed(&mut self, mut data: &[u8]) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let deadline = Instant::now() + self.timeout;
        while !data.is_empty() {
            match io::Write::write(stdin, data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, wait) {
                        Ok(0) => {
                            self.failed = Some(format!(
                                "scan command {} did not read its input for {:?}",
                                self.program, self.timeout
                            ));
                            self.stdin = None;
                            return;
                        }
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            self.failed = Some(format!("scan command {}: {e}", self.program));
                            self.stdin = None;
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // It stopped reading (closed its input or exited): it has
                // decided, its exit status will tell.
                Err(_) => {
                    self.stdin = None;
                    return;
                }
            }
        }
    }

    pub(super) fn finish(mut self) -> Verdict {
        // End of input.
        self.stdin = None;
        let Some(mut child) = self.child.take() else {
            return Verdict::Failed {
                reason: self.failed.take().unwrap_or_default(),
            };
        };
        let status = match crate::hookproc::wait_or_kill(&mut child, self.timeout) {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err(format!(
                "scan command {} gave no verdict within {:?}; killed",
                self.program, self.timeout
            )),
            Err(e) => Err(format!("scan command {}: {e}", self.program)),
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&stderr);
        if !text.trim().is_empty() {
            let logged: String = text.chars().take(MAX_LOGGED_STDERR).collect();
            tracing::info!(event = "scan_hook_stderr", user = %self.user, path = %self.path,
                program = %self.program, stderr = %logged.trim_end());
        }
        match status {
            Err(reason) => Verdict::Failed { reason },
            // A hook that timed out reading its input but then accepted
            // did not see everything: not clean.
            Ok(s) if s.success() => match self.failed.take() {
                Some(reason) => Verdict::Failed { reason },
                None => Verdict::Clean,
            },
            Ok(_) => Verdict::Rejected {
                finding: finding_name(&text),
            },
        }
    }
}

/// What the client is told a hook found: the first non-empty line of its
/// standard error if it is a short name, else "scan-command-rejected".
/// Anything longer or freer (a sentence, a file's content, a path with
/// spaces) could carry what the client must not see.
fn finding_name(stderr: &str) -> String {
    let line = stderr.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        Some(l)
            if l.len() <= MAX_FINDING
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:/+".contains(&b)) =>
        {
            l.to_owned()
        }
        _ => "scan-command-rejected".to_owned(),
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // An upload abandoned before its verdict: the hook goes too.
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::finding_name;

    #[test]
    fn only_a_short_name_becomes_the_finding() {
        assert_eq!(
            finding_name("\n  Policy.Secret-Token:v2 \ndetail"),
            "Policy.Secret-Token:v2"
        );
        for free in [
            "",
            "DLP: secret token found",
            "x peer=10.0.0.9:1",
            "tab\there",
            "caf\u{e9}",
            &"A".repeat(101),
        ] {
            assert_eq!(finding_name(free), "scan-command-rejected", "{free:?}");
        }
    }
}
