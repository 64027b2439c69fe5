//! Uploads and downloads as pipelines: the sealing or opening and the file
//! I/O run on one blocking thread per transfer with plain `std::fs::File`,
//! and hand 1 MiB chunks to and from the async side over a short channel.
//! That keeps the cipher working while the socket side waits, costs no
//! thread hand-off per segment, and copies each byte as few times as the
//! `AsyncRead`/`AsyncWrite` interfaces allow.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::task::{ready, Context, Poll};

use dropvault_format::{DecryptingReader, EncryptingWriter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use super::{map_io, sync_parent, VaultError};

/// Plaintext bytes per chunk handed between the async side and the worker.
pub(super) const CHUNK: usize = 1 << 20;
/// Chunks in flight ahead of the consumer.
const AHEAD: usize = 2;
/// Sealed bytes after which an upload asks the kernel to start writing the
/// staging file to disk, so that the fsync at commit finds little left to
/// do: disk writes overlap the transfer instead of following it.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A file being read: plaintext out, decrypted on a worker thread.
#[derive(Debug)]
pub struct Download {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: std_mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    len: u64,
}

impl Download {
    /// Starts the worker reading `reader` (already positioned).
    pub(super) fn start(reader: DecryptingReader<File>, len: u64) -> Self {
        let (tx, rx) = mpsc::channel(AHEAD);
        let (recycle, spare) = std_mpsc::channel();
        tokio::task::spawn_blocking(move || read_worker(reader, &tx, &spare));
        Self {
            rx,
            recycle,
            current: Vec::new(),
            pos: 0,
            len,
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
}

/// Reads and opens the file chunk by chunk until it ends, fails, or the
/// download is dropped.
fn read_worker(
    mut reader: DecryptingReader<File>,
    tx: &mpsc::Sender<io::Result<Vec<u8>>>,
    spare: &std_mpsc::Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = spare.try_recv().unwrap_or_default();
        // Recycled buffers come back full-length: only a new one is zeroed.
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let result = loop {
            if n == CHUNK {
                break Ok(());
            }
            match reader.read(&mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let full = n == CHUNK;
        buf.truncate(n);
        if n > 0 && tx.blocking_send(Ok(buf)).is_err() {
            return;
        }
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        if !full {
            return;
        }
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
                let mut used = std::mem::take(&mut this.current);
                used.resize(CHUNK, 0);
                let _ = this.recycle.send(used);
            }
            this.pos = 0;
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => this.current = chunk,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// What the async side of an upload tells its worker.
enum Msg {
    Data(Vec<u8>),
    Flush(oneshot::Sender<io::Result<()>>),
    Commit(oneshot::Sender<Result<u64, VaultError>>),
}

/// An upload in progress: plaintext in, sealed into the staging file by a
/// worker thread. Dropping it without [`Upload::commit`] makes the worker
/// write out the segments sealed so far (for a later resume) and never
/// touch the final name.
pub struct Upload {
    tx: PollSender<Msg>,
    spare: std_mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    /// A flush the worker has yet to confirm.
    flushing: Option<oneshot::Receiver<io::Result<()>>>,
    start: u64,
    len: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Where a finished upload goes.
pub(super) struct Target {
    /// The staging file (sealed data so far), locked.
    pub(super) lock: File,
    pub(super) staging: PathBuf,
    pub(super) target: PathBuf,
}

impl Upload {
    /// Starts the worker sealing into `writer`.
    pub(super) fn start(writer: EncryptingWriter<File>, target: Target) -> Self {
        let start = writer.plaintext_len();
        let (tx, rx) = mpsc::channel(AHEAD);
        let (recycle, spare) = std_mpsc::channel();
        tokio::task::spawn_blocking(move || write_worker(writer, &target, rx, &recycle));
        Self {
            tx: PollSender::new(tx),
            spare,
            chunk: Vec::new(),
            flushing: None,
            start,
            len: start,
        }
    }

    /// Plaintext offset the upload started at (non-zero when resumed or
    /// appended).
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    /// Plaintext bytes in the file so far.
    pub fn plaintext_len(&self) -> u64 {
        self.len
    }

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "upload worker stopped")
    }

    /// Hands the current chunk to the worker.
    fn poll_send_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| Self::closed())?;
        let chunk = std::mem::take(&mut self.chunk);
        self.tx
            .send_item(Msg::Data(chunk))
            .map_err(|_| Self::closed())?;
        Poll::Ready(Ok(()))
    }

    /// Seals the final segment, syncs the staging file, and renames it under
    /// its final name (syncing the folder). Returns the plaintext size.
    pub async fn commit(mut self) -> Result<u64, VaultError> {
        std::future::poll_fn(|cx| self.poll_send_chunk(cx))
            .await
            .map_err(VaultError::Io)?;
        let (reply, done) = oneshot::channel();
        std::future::poll_fn(|cx| self.tx.poll_reserve(cx))
            .await
            .map_err(|_| VaultError::Io(Self::closed()))?;
        self.tx
            .send_item(Msg::Commit(reply))
            .map_err(|_| VaultError::Io(Self::closed()))?;
        done.await.map_err(|_| VaultError::Io(Self::closed()))?
    }
}

impl AsyncWrite for Upload {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.chunk.len() >= CHUNK {
            ready!(this.poll_send_chunk(cx))?;
        }
        if this.chunk.capacity() == 0 {
            this.chunk = this
                .spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        }
        let n = buf.len().min(CHUNK - this.chunk.len());
        this.chunk.extend_from_slice(&buf[..n]);
        this.len += n as u64;
        Poll::Ready(Ok(n))
    }

    /// Completes once every whole segment written so far is sealed and in
    /// the staging file (a partial last segment cannot be sealed yet).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use std::future::Future;
        let this = self.get_mut();
        if this.flushing.is_none() {
            ready!(this.poll_send_chunk(cx))?;
            ready!(this.tx.poll_reserve(cx)).map_err(|_| Self::closed())?;
            let (reply, done) = oneshot::channel();
            this.tx
                .send_item(Msg::Flush(reply))
                .map_err(|_| Self::closed())?;
            this.flushing = Some(done);
        }
        let Some(done) = this.flushing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(done).poll(cx));
        this.flushing = None;
        Poll::Ready(result.unwrap_or_else(|_| Err(Self::closed())))
    }

    /// Only flushes: committing is explicit, so a client that disconnects
    /// never commits a short file.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_chunk(cx)
    }
}

/// Seals chunks into the staging file until told to commit, or until the
/// upload is dropped (then it writes out what it sealed, for a resume).
fn write_worker(
    mut writer: EncryptingWriter<File>,
    target: &Target,
    mut rx: mpsc::Receiver<Msg>,
    recycle: &std_mpsc::Sender<Vec<u8>>,
) {
    let mut failed: Option<io::Error> = None;
    let mut kicked = 0u64;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(mut chunk) => {
                if failed.is_none() {
                    failed = writer.write_all(&chunk).err();
                    kicked = start_writeback(writer.get_ref(), kicked);
                }
                chunk.clear();
                let _ = recycle.send(chunk);
            }
            Msg::Flush(reply) => {
                let result = match &failed {
                    Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    None => writer.flush(),
                };
                let _ = reply.send(result);
            }
            Msg::Commit(reply) => {
                let result = match failed {
                    Some(e) => Err(map_io(e)),
                    None => commit(writer, target),
                };
                let _ = reply.send(result);
                return;
            }
        }
    }
    let _ = writer.flush();
}

/// Starts asynchronous writeback of what was written since `from` once
/// there is enough of it; returns the new mark. Linux starts writeback of
/// dirty pages for POSIX_FADV_DONTNEED (and drops the ones already clean,
/// which an upload does not need cached). Purely a hint: errors are ignored.
fn start_writeback(file: &File, from: u64) -> u64 {
    use std::io::Seek;
    let mut f = file;
    let Ok(pos) = f.stream_position() else {
        return from;
    };
    if pos < from + WRITEBACK_EVERY {
        return from;
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(pos - from)) else {
        return pos;
    };
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    pos
}

fn commit(writer: EncryptingWriter<File>, t: &Target) -> Result<u64, VaultError> {
    let len = writer.plaintext_len();
    let file = writer.finish()?;
    file.sync_all()?;
    if fs::symlink_metadata(&t.target).is_ok_and(|m| m.is_dir()) {
        return Err(VaultError::IsADirectory);
    }
    fs::rename(&t.staging, &t.target).map_err(map_io)?;
    sync_parent(&t.target)?;
    // The lock goes with the worker, after the rename.
    let _ = &t.lock;
    Ok(len)
}
