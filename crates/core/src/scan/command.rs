//! A command as a scanner (YARA, DLP, anything): it gets the upload's
//! plaintext on standard input as it streams, and a JSON description of the
//! upload in the environment variable `DROPVAULT_EVENT`. Exit status 0
//! accepts; anything else rejects, with the first line of its standard
//! error as the finding. A hook that stops reading early has decided: the
//! rest is not sent. Every wait is bounded by the scan timeout, and a hook
//! that overstays it is killed.

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
const MAX_FINDING: usize = 200;

pub(super) struct Job {
    program: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
    timeout: Duration,
    failed: Option<String>,
}

impl Job {
    pub(super) fn start(argv: &[String], user: &str, path: &str, timeout: Duration) -> Self {
        let program = argv.first().cloned().unwrap_or_default();
        let mut job = Self {
            program: program.clone(),
            child: None,
            stdin: None,
            stderr: None,
            timeout,
            failed: None,
        };
        let event = serde_json::json!({ "event": "upload_scan", "user": user, "path": path });
        let spawned = crate::hookproc::hook_command(argv)
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
        match status {
            Err(reason) => Verdict::Failed { reason },
            // A hook that timed out reading its input but then accepted
            // did not see everything: not clean.
            Ok(s) if s.success() => match self.failed.take() {
                Some(reason) => Verdict::Failed { reason },
                None => Verdict::Clean,
            },
            Ok(s) => {
                let text = String::from_utf8_lossy(&stderr);
                let line = text.lines().map(str::trim).find(|l| !l.is_empty());
                let finding = match line {
                    Some(l) => l.chars().take(MAX_FINDING).collect(),
                    None => format!("rejected by {} ({s})", self.program),
                };
                Verdict::Rejected { finding }
            }
        }
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
