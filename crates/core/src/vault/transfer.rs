//! Uploads and downloads as pipelines: the sealing or opening and the file
//! I/O run on one blocking thread per transfer with plain `std::fs::File`,
//! and hand 1 MiB chunks to and from the async side over a short channel.
//! That keeps the cipher working while the socket side waits, costs no
//! thread hand-off per segment, and copies each byte as few times as the
//! `AsyncRead`/`AsyncWrite` interfaces allow.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use dropvault_format::{Decryptor, EncryptingWriter, SEGMENT_LEN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use super::direct::DirectFile;
use super::{map_io, sync_parent, VaultError};
use crate::keys::UserKey;
use crate::scan::{OnError, ScanJob, Scanner, Verdict};

/// Plaintext bytes per chunk handed between the async side and the worker.
pub(super) const CHUNK: usize = 1 << 20;
/// Chunks in flight ahead of the consumer.
const AHEAD: usize = 2;
/// Sealed bytes after which an upload asks the kernel to start writing the
/// staging file to disk, so that the fsync at commit finds little left to
/// do: disk writes overlap the transfer instead of following it.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Downloads longer than this are opened by [`WORKERS`] threads at once.
const PARALLEL_FROM: u64 = 8 * CHUNK as u64;
/// Worker threads of a large download: each opens every other chunk, so
/// the cipher is not one thread's critical path while another thread
/// writes the socket.
const WORKERS: usize = 2;

/// A file being read: plaintext out, decrypted on worker threads that take
/// 1 MiB chunks in turn.
#[derive(Debug)]
pub struct Download {
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
    len: u64,
}

/// A chunk from a worker, and the error that ends the download after it
/// (a chunk's good segments go out before its bad one is reported).
type Piece = (Vec<u8>, Option<io::Error>);

/// What every worker of one download shares.
struct Source {
    file: File,
    dec: Decryptor,
    /// Plaintext offset the download starts at.
    offset: u64,
}

impl Download {
    /// Starts the workers reading `file` (already checked by `dec`) from
    /// plaintext offset `offset`.
    pub(super) fn start(file: File, dec: Decryptor, offset: u64) -> Self {
        let len = dec.layout().plaintext_len();
        let workers = if len.saturating_sub(offset) > PARALLEL_FROM {
            WORKERS
        } else {
            1
        };
        let source = std::sync::Arc::new(Source { file, dec, offset });
        let (mut rxs, mut recycles) = (Vec::new(), Vec::new());
        for w in 0..workers {
            let (tx, rx) = mpsc::channel(AHEAD);
            let (recycle, spare) = std_mpsc::channel();
            let source = source.clone();
            tokio::task::spawn_blocking(move || read_worker(&source, w, workers, &tx, &spare));
            rxs.push(rx);
            recycles.push(recycle);
        }
        Self {
            rx: rxs,
            failed: None,
            recycle: recycles,
            turn: 0,
            recycle_turn: 0,
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

    /// Gives a chunk from [`Download::next_chunk`] back for reuse.
    pub fn recycle(&mut self, chunk: Vec<u8>) {
        if let Some(to) = self.recycle.get(self.recycle_turn) {
            let _ = to.send(chunk);
        }
        self.recycle_turn = (self.recycle_turn + 1) % self.recycle.len().max(1);
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
    /// Closed when the worker has let go of the staging file.
    exited: Option<oneshot::Receiver<()>>,
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

/// See [`Upload::exit_signal`].
#[derive(Debug)]
pub struct UploadExited(Option<oneshot::Receiver<()>>);

impl UploadExited {
    /// Waits until the upload's worker has let go of the staging file.
    pub async fn wait(self) {
        if let Some(rx) = self.0 {
            // The sender is only ever dropped, never used.
            let _ = rx.await;
        }
    }
}

/// Where a finished upload goes.
pub(super) struct Target {
    /// The staging file (sealed data so far), locked.
    pub(super) lock: File,
    pub(super) staging: PathBuf,
    pub(super) target: PathBuf,
    /// Whether the commit may replace a file at `target`.
    pub(super) replace: bool,
}

/// How an upload is scanned before it is committed.
pub(super) struct ScanPlan {
    pub(super) scanner: Arc<Scanner>,
    pub(super) user: String,
    pub(super) path: String,
    /// To read a resumed upload's staging file back from its start.
    pub(super) key: Arc<UserKey>,
    pub(super) quarantine: PathBuf,
    /// Start of the user's staging (and quarantine) file names.
    pub(super) prefix: String,
}

impl Upload {
    /// Starts the worker sealing into `writer` (and feeding `scan`).
    pub(super) fn start(
        writer: EncryptingWriter<DirectFile>,
        target: Target,
        scan: Option<ScanPlan>,
    ) -> Self {
        let start = writer.plaintext_len();
        let (tx, rx) = mpsc::channel(AHEAD);
        let (recycle, spare) = std_mpsc::channel();
        let (exited_tx, exited) = oneshot::channel::<()>();
        tokio::task::spawn_blocking(move || {
            write_worker(writer, &target, rx, &recycle, scan.as_ref());
            // The staging lock goes first, then the news that it went.
            drop(target);
            drop(exited_tx);
        });
        Self {
            tx: PollSender::new(tx),
            spare,
            chunk: Vec::new(),
            flushing: None,
            exited: Some(exited),
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

    /// A handle that completes once this upload's worker is gone: after a
    /// commit, or after a dropped upload has written out what it sealed and
    /// let go of the staging file. Take it before handing the upload to
    /// code that may drop it.
    pub fn exit_signal(&mut self) -> UploadExited {
        UploadExited(self.exited.take())
    }

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "upload worker stopped")
    }

    /// After a chunk went to the worker, starts the next one in a buffer
    /// the worker gave back, or a new one.
    fn take_spare_chunk(&mut self) {
        if self.chunk.capacity() == 0 {
            self.chunk = self
                .spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        }
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

    /// Reads once from `from` straight into the chunk being filled (no
    /// copy through a read buffer); returns the bytes read, 0 at its end.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.chunk.len() >= CHUNK {
            std::future::poll_fn(|cx| self.poll_send_chunk(cx)).await?;
        }
        self.take_spare_chunk();
        // The chunk has room (len < CHUNK <= capacity), so read_buf fills
        // its spare capacity and never grows it.
        let n = from.read_buf(&mut self.chunk).await?;
        self.len += n as u64;
        Ok(n)
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
        this.take_spare_chunk();
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
    mut writer: EncryptingWriter<DirectFile>,
    target: &Target,
    mut rx: mpsc::Receiver<Msg>,
    recycle: &std_mpsc::Sender<Vec<u8>>,
    scan: Option<&ScanPlan>,
) {
    let mut failed: Option<io::Error> = None;
    let mut kicked = 0u64;
    // A fresh upload is scanned as it streams; one that continues sealed
    // data (resume, append) is read back whole at commit instead, so the
    // scanner always sees the entire file.
    let mut job = scan
        .filter(|_| writer.plaintext_len() == 0)
        .map(|s| s.scanner.begin(&s.user, &s.path));
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(mut chunk) => {
                if failed.is_none() {
                    failed = writer.write_all(&chunk).err();
                    let out = writer.get_ref();
                    if !out.is_direct() {
                        kicked = start_writeback(out.file(), kicked, out.end());
                    }
                    if let Some(job) = job.as_mut() {
                        job.feed(&chunk);
                    }
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
                    None => commit(writer, target, scan, job.take()),
                };
                let _ = reply.send(result);
                return;
            }
        }
    }
    let _ = writer.flush();
}

/// The verdict on a whole sealed staging file, read back from its start.
fn rescan(plan: &ScanPlan, staging: &std::path::Path) -> Verdict {
    use std::io::Read;
    let mut job = plan.scanner.begin(&plan.user, &plan.path);
    let read = (|| -> io::Result<()> {
        let file = File::open(staging)?;
        let mut reader = dropvault_format::DecryptingReader::new(file, plan.key.data_key())
            .map_err(io::Error::from)?;
        let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            job.feed(&buf[..n]);
        }
    })();
    let verdict = job.finish();
    match read {
        Ok(()) => verdict,
        Err(e) => Verdict::Failed {
            reason: format!("reading the upload back for the scan failed: {e}"),
        },
    }
}

/// Moves a rejected upload, still sealed, into the quarantine folder with a
/// description next to it (written first, so a quarantined file always has
/// one).
fn quarantine(plan: &ScanPlan, t: &Target, size: u64, finding: &str) -> Result<(), VaultError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let nonce = crate::random_hex(6).map_err(|_| VaultError::Io(io::Error::other("RNG")))?;
    let id = format!("{}-{now}-{nonce}", plan.prefix);
    let about = serde_json::json!({
        "id": id,
        "user": plan.user,
        "path": plan.path,
        "size": size,
        "finding": finding,
        "time": now,
    });
    let json_path = plan.quarantine.join(format!("{id}.json"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&json_path)?;
    f.write_all(about.to_string().as_bytes())?;
    f.sync_all()?;
    fs::rename(&t.staging, plan.quarantine.join(format!("{id}.sealed")))?;
    crate::fsutil::sync_dir(&plan.quarantine)?;
    tracing::info!(event = "quarantined", user = %plan.user, path = %plan.path, id, finding);
    Ok(())
}

/// Starts asynchronous writeback of what was written between `from` and
/// `pos` once there is enough of it; returns the new mark. Linux starts
/// writeback of dirty pages for POSIX_FADV_DONTNEED (and drops the ones
/// already clean, which an upload does not need cached). Purely a hint:
/// errors are ignored. Only for staging files the page cache holds (where
/// direct writes are refused).
fn start_writeback(file: &File, from: u64, pos: u64) -> u64 {
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

fn commit(
    writer: EncryptingWriter<DirectFile>,
    t: &Target,
    scan: Option<&ScanPlan>,
    job: Option<ScanJob>,
) -> Result<u64, VaultError> {
    let len = writer.plaintext_len();
    let file = writer.finish()?;
    file.file().sync_all()?;
    if let Some(plan) = scan {
        let verdict = match job {
            Some(job) => job.finish(),
            None => rescan(plan, &t.staging),
        };
        match verdict {
            Verdict::Clean => {}
            Verdict::Rejected { finding } => {
                if plan.scanner.quarantine() {
                    quarantine(plan, t, len, &finding)?;
                } else {
                    fs::remove_file(&t.staging)?;
                }
                return Err(VaultError::Rejected { finding, size: len });
            }
            Verdict::Failed { reason } => match plan.scanner.on_error() {
                OnError::Accept => {
                    tracing::warn!(event = "scan_failed", user = %plan.user, path = %plan.path,
                        error = %reason, "no scan verdict; committing anyway (scan.on_error = accept)");
                }
                OnError::Reject => {
                    fs::remove_file(&t.staging)?;
                    return Err(VaultError::ScanFailed { reason });
                }
            },
        }
    }
    if fs::symlink_metadata(&t.target).is_ok_and(|m| m.is_dir()) {
        return Err(VaultError::IsADirectory);
    }
    if t.replace {
        fs::rename(&t.staging, &t.target).map_err(map_io)?;
    } else if let Err(e) = crate::fsutil::rename_noreplace(&t.staging, &t.target) {
        // The name was taken meanwhile: this upload has nowhere to go.
        if e.kind() == io::ErrorKind::AlreadyExists {
            let _ = fs::remove_file(&t.staging);
        }
        return Err(map_io(e));
    }
    sync_parent(&t.target)?;
    // The lock goes with the worker, after the rename.
    let _ = &t.lock;
    Ok(len)
}
