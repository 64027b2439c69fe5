//! Downloads: a sealed file opened chunk by chunk (1 MiB of plaintext) by
//! worker threads with plain `std::fs::File` reads, each handing its chunks
//! to the async side over a short channel ([`Download::next_chunk`], or
//! `AsyncRead`). Large files get two workers that take chunks in turn, so
//! the cipher is never the critical path of the thread that writes the
//! socket; the workers start when the download is first read.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use dropvault_format::{Decryptor, SEGMENT_LEN};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::CHUNK;

/// Chunks in flight ahead of the consumer, per worker (channel mode).
const AHEAD: usize = 2;
/// Downloads longer than this are opened by [`WORKERS`] threads at once.
const PARALLEL_FROM: u64 = 8 * CHUNK as u64;
/// Worker threads of a large download: each opens every other chunk.
const WORKERS: usize = 2;

/// What every worker of one download shares.
struct Source {
    file: File,
    dec: Decryptor,
    /// Plaintext offset the download starts at.
    offset: u64,
}

/// A file being read: plaintext out, decrypted on worker threads that take
/// chunks in turn. Nothing runs until it is first read.
pub struct Download {
    source: Arc<Source>,
    workers: usize,
    len: u64,
    /// The workers' channels, once started.
    streaming: Option<Streaming>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("len", &self.len)
            .field("offset", &self.source.offset)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// A chunk from a worker, and the error that ends the download after it
/// (a chunk's good segments go out before its bad one is reported).
type Piece = (Vec<u8>, Option<io::Error>);

/// The workers' channels and what was read of them.
struct Streaming {
    /// One channel per worker; chunk `i` comes from worker `i % len`.
    rx: Vec<mpsc::Receiver<Piece>>,
    /// An error that followed the last chunk handed out.
    failed: Option<io::Error>,
    recycle: Vec<std_mpsc::Sender<Vec<u8>>>,
    /// Whose turn it is to deliver the next chunk.
    turn: usize,
    /// Where the next recycled buffer goes.
    recycle_turn: usize,
    current: Vec<u8>,
    pos: usize,
}

impl Download {
    /// A download of `file` (already checked by `dec`) from plaintext
    /// offset `offset`.
    pub(super) fn new(file: File, dec: Decryptor, offset: u64) -> Self {
        let len = dec.layout().plaintext_len();
        let workers = if len.saturating_sub(offset) > PARALLEL_FROM {
            WORKERS
        } else {
            1
        };
        Self {
            source: Arc::new(Source { file, dec, offset }),
            workers,
            len,
            streaming: None,
        }
    }

    /// Plaintext length of the whole file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next chunk of plaintext (up to 1 MiB), or `None` at the end.
    /// Writing chunks straight to a socket saves the copy through a read
    /// buffer; hand each back with [`Download::recycle`].
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let s = self.streaming();
        if s.pos < s.current.len() {
            // Left over from reading through AsyncRead.
            let rest = s.current[s.pos..].to_vec();
            s.pos = s.current.len();
            return Ok(Some(rest));
        }
        std::future::poll_fn(|cx| self.streaming().poll_chunk(cx)).await
    }

    /// Gives a chunk from [`Download::next_chunk`] back for reuse.
    pub fn recycle(&mut self, chunk: Vec<u8>) {
        self.streaming().recycle(chunk);
    }

    /// The workers' channels, starting the workers the first time.
    fn streaming(&mut self) -> &mut Streaming {
        let (source, workers) = (&self.source, self.workers);
        self.streaming.get_or_insert_with(|| {
            let (mut rxs, mut recycles) = (Vec::new(), Vec::new());
            for w in 0..workers {
                let (tx, rx) = mpsc::channel(AHEAD);
                let (recycle, spare) = std_mpsc::channel();
                let source = source.clone();
                tokio::task::spawn_blocking(move || read_worker(&source, w, workers, &tx, &spare));
                rxs.push(rx);
                recycles.push(recycle);
            }
            Streaming {
                rx: rxs,
                failed: None,
                recycle: recycles,
                turn: 0,
                recycle_turn: 0,
                current: Vec::new(),
                pos: 0,
            }
        })
    }
}

impl Streaming {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Vec<u8>>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        let Some(rx) = self.rx.get_mut(self.turn) else {
            return Poll::Ready(Ok(None));
        };
        match ready!(rx.poll_recv(cx)) {
            Some((chunk, None)) => {
                self.turn = (self.turn + 1) % self.rx.len();
                Poll::Ready(Ok(Some(chunk)))
            }
            Some((chunk, Some(e))) if chunk.is_empty() => Poll::Ready(Err(e)),
            Some((chunk, Some(e))) => {
                self.failed = Some(e);
                Poll::Ready(Ok(Some(chunk)))
            }
            // The worker whose turn it is has no more: the file is done.
            None => Poll::Ready(Ok(None)),
        }
    }

    fn recycle(&mut self, chunk: Vec<u8>) {
        if let Some(to) = self.recycle.get(self.recycle_turn) {
            let _ = to.send(chunk);
        }
        self.recycle_turn = (self.recycle_turn + 1) % self.recycle.len().max(1);
    }
}

impl AsyncRead for Download {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut().streaming();
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

/// Opens chunks `first`, `first + step`, … until the file ends, a segment
/// fails, or the download is dropped. Chunk `i` is the plaintext from
/// `offset + i * CHUNK` rounded down to a segment, to the next chunk's start
/// (chunks after the first are whole segments).
fn read_worker(
    src: &Source,
    first: usize,
    step: usize,
    tx: &mpsc::Sender<Piece>,
    spare: &std_mpsc::Receiver<Vec<u8>>,
) {
    use std::os::unix::fs::FileExt;
    let layout = *src.dec.layout();
    let total = layout.plaintext_len();
    let seg_len = SEGMENT_LEN as u64;
    // Chunk boundaries are CHUNK-aligned plaintext offsets (CHUNK is a
    // multiple of the segment length); the first chunk starts at `offset`.
    let base = src.offset - src.offset % CHUNK as u64;
    let mut sealed = Vec::new();
    let mut i = first as u64;
    loop {
        let start = (base + i * CHUNK as u64).max(src.offset);
        let end = (base + (i + 1) * CHUNK as u64).min(total);
        if start >= end {
            return;
        }
        let Some(first_seg) = layout.segment(start / seg_len) else {
            return;
        };
        let last_seg = (end - 1) / seg_len;
        let segs: Vec<_> = (first_seg.index..=last_seg)
            .filter_map(|k| layout.segment(k))
            .collect();
        let sealed_len: usize = segs.iter().map(|s| s.ciphertext_len).sum();
        let plain_len: usize = segs.iter().map(|s| s.plaintext_len).sum();
        sealed.resize(sealed_len, 0);
        let mut buf = spare.try_recv().unwrap_or_default();
        // Recycled buffers come back full-length: only a new one is zeroed.
        buf.resize(plain_len.max(buf.len()), 0);
        let mut failure = src
            .file
            .read_exact_at(&mut sealed, first_seg.ciphertext_offset)
            .err();
        let mut done = 0;
        if failure.is_none() {
            let mut at = 0;
            for seg in &segs {
                let body = &sealed[at..at + seg.ciphertext_len];
                match src.dec.open(seg, body, &mut buf[done..]) {
                    Ok(n) => done += n,
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
                at += seg.ciphertext_len;
            }
        }
        buf.truncate(done);
        // The first chunk may start inside a segment.
        let skip = usize::try_from(start - first_seg.plaintext_offset).unwrap_or(0);
        buf.drain(..skip.min(buf.len()));
        let stop = failure.is_some();
        if tx.blocking_send((buf, failure)).is_err() || stop {
            return;
        }
        i += step as u64;
    }
}
