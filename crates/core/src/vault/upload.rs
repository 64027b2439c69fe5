//! Uploads as pipelines: the async side reads the socket into 1 MiB chunks
//! and hands them over a short channel to one blocking thread per upload,
//! which seals them into the staging file (with direct I/O, see
//! `direct.rs`), feeds the scanners, and at the end commits. That keeps the
//! cipher working while the socket side waits and costs no thread hand-off
//! per segment.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use dropvault_format::EncryptingWriter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use super::direct::DirectFile;
use super::{map_io, sync_parent, VaultError, CHUNK};
use crate::keys::UserKey;
use crate::scan::{OnError, ScanJob, Scanner, Verdict};

/// Chunks in flight ahead of the worker.
const AHEAD: usize = 2;
/// Sealed bytes after which an upload asks the kernel to start writing the
/// staging file to disk, so that the fsync at commit finds little left to
/// do: disk writes overlap the transfer instead of following it.
const WRITEBACK_EVERY: u64 = 8 << 20;

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
