//! Downloads: a [`ReadFile`] read from one offset to its end, a chunk
//! (1 MiB of plaintext; 4 MiB where every read is a request) at a time, with chunks read ahead on the
//! blocking pool ([`Download::next_chunk`], or `AsyncRead`), so the cipher
//! is never the critical path of the task that writes the socket. Nothing
//! is read until the download is first read.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use super::{ReadFile, VaultError, CHUNK};

/// Buffers kept for reuse. Chunks read ahead: what the storage asks for
/// ([`ReadFile::read_ahead`]): two for a local disk, so two threads can
/// decrypt while the socket is written (three measured no faster); more
/// where each read waits for a round trip.
const SPARE: usize = 2;

/// A chunk read ahead, the sealed-bytes buffer it used, and the error
/// that ends the download after it (a chunk's good segments go out before
/// its bad one is reported).
type Piece = (Vec<u8>, Vec<u8>, Option<VaultError>);

/// A file being read from an offset to its end: plaintext out, decrypted
/// ahead of the consumer on the blocking pool.
pub struct Download {
    file: ReadFile,
    /// Plaintext offset of the next chunk to start reading.
    next: u64,
    /// Chunks being read, in order.
    ahead: VecDeque<JoinHandle<Piece>>,
    /// An error that followed the last chunk handed out; after it, nothing.
    failed: Option<io::Error>,
    stopped: bool,
    /// Buffers handed back, for the next chunks.
    spare: Vec<Vec<u8>>,
    spare_sealed: Vec<Vec<u8>>,
    /// A chunk being read through `AsyncRead`, and how far.
    current: Vec<u8>,
    pos: usize,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("len", &self.file.len())
            .field("next", &self.next)
            .field("ahead", &self.ahead.len())
            .finish_non_exhaustive()
    }
}

impl Download {
    /// A download of `file` from plaintext offset `offset` (at most its
    /// length).
    pub(super) fn new(file: ReadFile, offset: u64) -> Self {
        Self {
            file,
            next: offset,
            ahead: VecDeque::new(),
            failed: None,
            stopped: false,
            spare: Vec::new(),
            spare_sealed: Vec::new(),
            current: Vec::new(),
            pos: 0,
        }
    }

    /// Plaintext length of the whole file.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// The next chunk of plaintext (up to 1 MiB), or `None` at the end.
    /// Writing chunks straight to a socket saves the copy through a read
    /// buffer; hand each back with [`Download::recycle`].
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.pos < self.current.len() {
            // Left over from reading through AsyncRead.
            let rest = self.current[self.pos..].to_vec();
            self.pos = self.current.len();
            return Ok(Some(rest));
        }
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Gives a chunk from [`Download::next_chunk`] back for reuse.
    pub fn recycle(&mut self, chunk: Vec<u8>) {
        if self.spare.len() < SPARE {
            self.spare.push(chunk);
        }
    }

    /// Starts reading chunks until enough are on their way or the file has
    /// no more. Chunks end at multiples of the file's span
    /// ([`ReadFile::span`]: whole segments), so only the first may start
    /// inside a segment.
    fn read_ahead(&mut self) {
        let total = self.file.len();
        let ahead = self.file.read_ahead();
        while self.ahead.len() < ahead && self.next < total && !self.stopped {
            let offset = self.next;
            let span = self.file.span() as u64;
            let end = (offset - offset % span + span).min(total);
            self.next = end;
            let file = self.file.clone();
            let mut out = self.spare.pop().unwrap_or_default();
            let mut sealed = self.spare_sealed.pop().unwrap_or_default();
            self.ahead.push_back(tokio::task::spawn_blocking(move || {
                // At most a span: fits in usize.
                let len = usize::try_from(end - offset).unwrap_or(CHUNK);
                let failed = file.read_into(offset, len, &mut out, &mut sealed).err();
                (out, sealed, failed)
            }));
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Vec<u8>>>> {
        if let Some(e) = self.failed.take() {
            self.stopped = true;
            return Poll::Ready(Err(e));
        }
        self.read_ahead();
        let Some(first) = self.ahead.front_mut() else {
            return Poll::Ready(Ok(None));
        };
        let joined = ready!(Pin::new(first).poll(cx));
        self.ahead.pop_front();
        let (chunk, sealed, failed) = match joined {
            Ok(piece) => piece,
            Err(e) => (
                Vec::new(),
                Vec::new(),
                Some(VaultError::Io(io::Error::other(e))),
            ),
        };
        self.spare_sealed.push(sealed);
        if let Some(e) = failed {
            // Nothing after a failed chunk: the reads ahead are let go.
            self.stopped = true;
            for read in self.ahead.drain(..) {
                read.abort();
            }
            if chunk.is_empty() {
                return Poll::Ready(Err(into_io(e)));
            }
            self.failed = Some(into_io(e));
        } else {
            self.read_ahead();
        }
        Poll::Ready(Ok(Some(chunk)))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        // Reads ahead that have not started need not run.
        for read in &self.ahead {
            read.abort();
        }
    }
}

/// A read's error as the `io::Error` a download reports: a format error
/// stays one ([`dropvault_format::Error::from_io`] finds it).
fn into_io(e: VaultError) -> io::Error {
    match e {
        VaultError::Io(e) => e,
        VaultError::Format(e) => e.into(),
        other => io::Error::other(other),
    }
}

impl AsyncRead for Download {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.current.len() {
                let n = (this.current.len() - this.pos).min(out.remaining());
                out.put_slice(&this.current[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.current.capacity() > 0 {
                let used = std::mem::take(&mut this.current);
                this.recycle(used);
            }
            this.pos = 0;
            match ready!(this.poll_chunk(cx)) {
                Ok(Some(chunk)) => this.current = chunk,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
