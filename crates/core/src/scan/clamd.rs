//! ClamAV's clamd over INSTREAM: `zINSTREAM\0`, then chunks as a 4-byte
//! big-endian length and the bytes, then a zero length; clamd answers
//! `stream: OK`, `stream: <signature> FOUND`, or `<message> ERROR`, ended
//! by NUL. clamd closes the connection when the stream passes its
//! StreamMaxLength; the answer then says so.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::Verdict;

/// Largest chunk sent at once (clamd's default StreamMaxLength is 25 MiB;
/// chunks are bounded separately by its buffer).
const MAX_CHUNK: usize = 64 * 1024;
/// Longest answer read.
const MAX_ANSWER: u64 = 4096;

/// Where clamd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddr {
    /// A unix socket (LocalSocket).
    Unix(PathBuf),
    /// host:port (TCPSocket).
    Tcp(String),
}

impl std::fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ClamdAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One INSTREAM session.
pub(super) struct Job {
    addr: String,
    stream: Option<Box<dyn Stream>>,
    /// Why the stream stopped early (the verdict may still come).
    broken: Option<String>,
}

impl Job {
    /// Connects and starts the stream; a failure is kept for the verdict.
    pub(super) fn start(addr: &ClamdAddr, timeout: Duration) -> Self {
        let mut job = Self {
            addr: addr.to_string(),
            stream: None,
            broken: None,
        };
        match connect(addr, timeout).and_then(|mut s| {
            s.write_all(b"zINSTREAM\0")?;
            Ok(s)
        }) {
            Ok(s) => job.stream = Some(s),
            Err(e) => job.broken = Some(format!("cannot reach clamd at {}: {e}", job.addr)),
        }
        job
    }

    pub(super) fn feed(&mut self, data: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        for piece in data.chunks(MAX_CHUNK) {
            // Pieces are at most 64 KiB, so the length fits.
            let len = u32::try_from(piece.len()).unwrap_or(u32::MAX).to_be_bytes();
            if let Err(e) = stream
                .write_all(&len)
                .and_then(|()| stream.write_all(piece))
            {
                self.broken = Some(format!("clamd at {} stopped reading: {e}", self.addr));
                return;
            }
        }
    }

    pub(super) fn finish(mut self) -> Verdict {
        let Some(mut stream) = self.stream.take() else {
            return failed(self.broken.unwrap_or_default());
        };
        if self.broken.is_none() {
            if let Err(e) = stream
                .write_all(&[0, 0, 0, 0])
                .and_then(|()| stream.flush())
            {
                self.broken = Some(format!("clamd at {} stopped reading: {e}", self.addr));
            }
        }
        // Read the answer even after a broken stream: clamd says why.
        let mut answer = Vec::new();
        let read = (&mut stream).take(MAX_ANSWER).read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let text = text.trim_end_matches(['\0', '\n']).trim();
        match (read, text) {
            (_, t) if !t.is_empty() => parse_answer(t, &self.addr),
            (Err(e), _) => failed(format!("no answer from clamd at {}: {e}", self.addr)),
            (Ok(_), _) => failed(
                self.broken
                    .unwrap_or_else(|| format!("clamd at {} closed without an answer", self.addr)),
            ),
        }
    }
}

fn failed(reason: String) -> Verdict {
    Verdict::Failed { reason }
}

/// clamd's answer to a stream.
fn parse_answer(text: &str, addr: &str) -> Verdict {
    let body = text.strip_prefix("stream: ").unwrap_or(text);
    if body == "OK" {
        return Verdict::Clean;
    }
    if let Some(sig) = body.strip_suffix(" FOUND") {
        return Verdict::Rejected {
            finding: sig.trim().to_owned(),
        };
    }
    failed(format!("clamd at {addr}: {body}"))
}

/// Whether clamd at `addr` answers `zPING` with `PONG` within `timeout`
/// for each wait. Blocks.
pub(super) fn ping(addr: &ClamdAddr, timeout: Duration) -> io::Result<()> {
    let mut s = connect(addr, timeout)?;
    s.write_all(b"zPING\0")?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer)?;
    if answer.strip_suffix(b"\0").unwrap_or(&answer) == b"PONG" {
        Ok(())
    } else {
        Err(io::Error::other("clamd did not answer PONG"))
    }
}

fn connect(addr: &ClamdAddr, timeout: Duration) -> io::Result<Box<dyn Stream>> {
    match addr {
        ClamdAddr::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(Box::new(s))
        }
        ClamdAddr::Tcp(hostport) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for sa in hostport.to_socket_addrs()? {
                match TcpStream::connect_timeout(&sa, timeout) {
                    Ok(s) => {
                        s.set_read_timeout(Some(timeout))?;
                        s.set_write_timeout(Some(timeout))?;
                        s.set_nodelay(true)?;
                        return Ok(Box::new(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer("stream: OK", "a"), Verdict::Clean);
        assert_eq!(
            parse_answer("stream: Eicar-Test-Signature FOUND", "a"),
            Verdict::Rejected {
                finding: "Eicar-Test-Signature".into()
            }
        );
        assert!(matches!(
            parse_answer("INSTREAM size limit exceeded. ERROR", "a"),
            Verdict::Failed { reason } if reason.contains("size limit")
        ));
    }
}
