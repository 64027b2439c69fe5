//! Uploads as pipelines: the async side reads the socket into 1 MiB chunks
//! and hands them over a short channel to one blocking thread per upload,
//! which seals them into the staging name's sink (a staging file written
//! with direct I/O on local storage, a multipart upload on S3), feeds the
//! scanners, and at the end commits. That keeps the cipher working while
//! the socket side waits, and costs no thread hand-off per segment.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use dropvault_format::DecryptingReader;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use super::quota::Charge;
use super::usage::Claim;
use super::{map_io, sealed_len, Sealer, VaultError, CHUNK, QUARANTINE};
use crate::keys::UserKey;
use crate::scan::{OnError, ScanJob, Scanner, Verdict};
use crate::storage::{Commit, ObjectReader, Staged, Storage, StorageError};

/// Chunks in flight ahead of the worker.
const AHEAD: usize = 2;

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
    /// Why the worker stopped early, if it did (sent before it stops).
    failure: oneshot::Receiver<VaultError>,
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
    /// The staging name, held. Commit, reject and quarantine act on what
    /// it holds.
    pub(super) staged: Box<dyn Staged>,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) staging: String,
    pub(super) target: String,
    /// Whether the commit may replace a file at `target`.
    pub(super) replace: bool,
    /// For re-seals, and to read a continued upload back for its scan.
    pub(super) key: Arc<UserKey>,
    /// The staging bytes the upload takes, counted against its user's bound.
    pub(super) charge: Charge,
    /// What the upload adds to its user's quota count (`None`: no limit).
    pub(super) claim: Option<Claim>,
    /// Authenticates the storage's record of the upload.
    pub(super) record_key: Arc<dyn crate::storage::RecordKey>,
}

impl Target {
    /// Drops the staged upload and its staging name.
    fn unlink(&mut self) -> Result<(), StorageError> {
        self.staged.discard()?;
        self.charge.settle(0);
        Ok(())
    }

    /// Charges an upload that will hold `len` plaintext bytes against the
    /// staging bound and the quota (nothing is charged if either refuses).
    fn charge_for(&mut self, len: u64) -> Result<(), VaultError> {
        let held = self.charge.held();
        self.charge.set(sealed_len(len))?;
        let claimed = self.claim.as_mut().map_or(Ok(()), |claim| claim.grow(len));
        if claimed.is_err() {
            self.charge.settle(held);
        }
        claimed
    }

    /// The plaintext size of the committed file the upload replaces
    /// (`None`: none), when a quota counts it.
    fn replaced_size(&self) -> Result<Option<u64>, VaultError> {
        if self.claim.is_none() {
            return Ok(None);
        }
        match self.storage.stat(&self.target) {
            Ok(m) => Ok(Some(dropvault_format::plaintext_len(m.len).unwrap_or(0))),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Charges what the staging name holds now.
    fn settle_stored(&mut self) {
        let held = self.staged.stored_len();
        self.charge.settle(held);
    }
}

/// Where an upload's sealing starts.
pub(super) enum Begin {
    /// At the writer's end: a new file, or (`continued`) an unfinished one
    /// continued under its own salt.
    Ready {
        writer: Box<Sealer>,
        continued: bool,
    },
    /// After re-sealing the first `len` plaintext bytes of `from` under a
    /// fresh salt: the worker's first job, after the front end has
    /// answered.
    Reseal { from: Source, len: u64 },
}

/// What a re-seal reads.
pub(super) enum Source {
    /// The committed file (an append, or a resume inside it), opened and checked.
    Committed(Box<DecryptingReader<ObjectReader>>),
    /// The upload's own staging file, ending inside a segment.
    Staging,
}

impl Begin {
    /// Plaintext offset the upload starts at.
    pub(super) fn offset(&self) -> u64 {
        match self {
            Self::Ready { writer, .. } => writer.plaintext_len(),
            Self::Reseal { len, .. } => *len,
        }
    }

    /// The writer to seal the client's data with, and whether it continues
    /// an unfinished file; re-seals first, unless `stop` says the upload is
    /// gone. A failed or stopped re-seal of a committed file leaves no
    /// staging file; of a staging file, leaves it as it was.
    fn writer(self, t: &mut Target, stop: &dyn Fn() -> bool) -> Result<(Sealer, bool), VaultError> {
        let user_key = t.key.clone();
        let key = user_key.data_key();
        match self {
            Self::Ready { writer, continued } => Ok((*writer, continued)),
            Self::Reseal {
                from: Source::Committed(mut old),
                len,
            } => match super::reseal(&mut t.staged, &mut old, key, len, stop) {
                Ok(w) => Ok((w, false)),
                Err(e) => {
                    let _ = t.unlink();
                    Err(e)
                }
            },
            Self::Reseal {
                from: Source::Staging,
                len,
            } => {
                let held = t.staged.stored_len();
                let storage = t.storage.clone();
                let record_key = t.record_key.clone();
                match super::reseal_staging(
                    &mut t.staged,
                    &*storage,
                    &record_key,
                    &t.staging,
                    &user_key,
                    len,
                    stop,
                ) {
                    Ok(w) => {
                        t.charge.settle(sealed_len(len));
                        Ok((w, false))
                    }
                    Err(e) => {
                        t.charge.settle(held);
                        Err(e)
                    }
                }
            }
        }
    }
}

/// How an upload is scanned before it is committed.
pub(super) struct ScanPlan {
    pub(super) scanner: Arc<Scanner>,
    pub(super) user: String,
    pub(super) path: String,
    /// Start of the user's staging (and quarantine) file names.
    pub(super) prefix: String,
}

impl Upload {
    /// Starts the worker: re-seal if `begin` asks for it, then seal the
    /// client's data (and feed `scan`).
    pub(super) fn start(begin: Begin, mut target: Target, scan: Option<ScanPlan>) -> Self {
        let start = begin.offset();
        let (tx, rx) = mpsc::channel(AHEAD);
        let (recycle, spare) = std_mpsc::channel();
        let (exited_tx, exited) = oneshot::channel::<()>();
        let (failed_tx, failure) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut rx = rx;
            if let Err(e) = write_worker(begin, &mut target, &mut rx, &recycle, scan.as_ref()) {
                // Told before the channel closes, so whoever finds it
                // closed finds why.
                let _ = failed_tx.send(e);
            }
            drop(rx);
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
            failure,
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

    /// Why the worker stopped before the upload's end, once it has: the
    /// upload cannot go on (for example [`VaultError::StagingFull`], or a
    /// re-seal that failed). A front end asks when writing failed.
    pub fn failure(&mut self) -> Option<VaultError> {
        self.failure.try_recv().ok()
    }

    /// The error for a worker found stopped.
    fn stopped(&mut self) -> VaultError {
        self.failure()
            .unwrap_or_else(|| VaultError::Io(Self::closed()))
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
        if std::future::poll_fn(|cx| self.poll_send_chunk(cx))
            .await
            .is_err()
        {
            return Err(self.stopped());
        }
        let (reply, done) = oneshot::channel();
        if std::future::poll_fn(|cx| self.tx.poll_reserve(cx))
            .await
            .is_err()
            || self.tx.send_item(Msg::Commit(reply)).is_err()
        {
            return Err(self.stopped());
        }
        match done.await {
            Ok(result) => result,
            Err(_) => Err(self.stopped()),
        }
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
/// An error means the upload cannot go on: the worker stopped early, and
/// left nothing of it in staging (except an unfinished upload it was to
/// continue, as it was).
fn write_worker(
    begin: Begin,
    target: &mut Target,
    rx: &mut mpsc::Receiver<Msg>,
    recycle: &std_mpsc::Sender<Vec<u8>>,
    scan: Option<&ScanPlan>,
) -> Result<(), VaultError> {
    // A copy of a committed file is only worth keeping with data after it.
    let copy_only = matches!(
        begin,
        Begin::Reseal {
            from: Source::Committed(_),
            ..
        }
    );
    let start = begin.offset();
    let (mut writer, continued) = begin.writer(target, &|| rx.is_closed())?;
    let mut failed: Option<io::Error> = None;
    // A fresh upload is scanned as it streams; one that continues sealed
    // data (resume, append) is read back whole at commit instead, so the
    // scanner always sees the entire file.
    let mut job = scan
        .filter(|_| start == 0)
        .map(|s| s.scanner.begin(&s.user, &s.path));
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(mut chunk) => {
                if failed.is_none() {
                    // Charged before it is written: past the staging
                    // bound or the quota, the upload ends here and its
                    // staging file goes.
                    let after = writer.plaintext_len() + chunk.len() as u64;
                    if let Err(e) = target.charge_for(after) {
                        drop(writer);
                        let _ = target.unlink();
                        return Err(e);
                    }
                    failed = writer.write_all(&chunk).err();
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
                    // Nothing after the end of an unfinished upload: it has
                    // no last segment to seal as final (docs/FORMAT.md,
                    // section 3), so there is nothing to commit.
                    None if continued && writer.plaintext_len() == start => {
                        Err(VaultError::EmptyResume { offset: start })
                    }
                    None => commit(writer, target, scan, job.take()),
                };
                if result.is_err() {
                    target.settle_stored();
                }
                let _ = reply.send(result);
                return Ok(());
            }
        }
    }
    // What was sealed is kept, as durably as the storage keeps it, for a
    // resume.
    let _ = writer.flush();
    let _ = writer.get_mut().sync();
    let added = writer.plaintext_len() > start;
    drop(writer);
    if copy_only && !added {
        target.unlink()?;
    } else {
        target.settle_stored();
    }
    Ok(())
}

/// The verdict on the whole sealed staging file the upload holds, read
/// back from its start.
fn rescan(plan: &ScanPlan, t: &Target) -> Verdict {
    use std::io::Read;
    let mut job = plan.scanner.begin(&plan.user, &plan.path);
    let read = (|| -> io::Result<()> {
        let staged: &dyn Staged = &*t.staged;
        let key = super::file_key(&t.key, &staged).map_err(StorageError::into_io)?;
        let mut reader =
            DecryptingReader::new(ObjectReader::new(staged), key).map_err(io::Error::from)?;
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
fn quarantine(plan: &ScanPlan, t: &mut Target, size: u64, finding: &str) -> Result<(), VaultError> {
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
    t.storage.put_new(
        &format!("{QUARANTINE}/{id}.json"),
        about.to_string().as_bytes(),
    )?;
    t.staged
        .commit(&format!("{QUARANTINE}/{id}.sealed"), Commit::NoReplace)?;
    t.charge.settle(0);
    tracing::info!(event = "quarantined", user = %plan.user, path = %plan.path, id, finding);
    Ok(())
}

/// Finishes the sealed file, has it scanned, and puts the file the upload
/// holds under its final name; a rejected one is removed or quarantined.
fn commit(
    writer: Sealer,
    t: &mut Target,
    scan: Option<&ScanPlan>,
    job: Option<ScanJob>,
) -> Result<u64, VaultError> {
    let len = writer.plaintext_len();
    let sink = writer.finish()?;
    t.staged.finish(sink)?;
    if let Some(plan) = scan {
        let verdict = match job {
            Some(job) => job.finish(),
            None => rescan(plan, t),
        };
        match verdict {
            Verdict::Clean => {}
            Verdict::Rejected { finding } => {
                if plan.scanner.quarantine() {
                    quarantine(plan, t, len, &finding)?;
                } else {
                    t.unlink()?;
                }
                return Err(VaultError::Rejected { finding, size: len });
            }
            Verdict::Failed { reason } => match plan.scanner.on_error() {
                OnError::Accept => {
                    tracing::warn!(event = "scan_failed", user = %plan.user, path = %plan.path,
                        error = %reason, "no scan verdict; committing anyway (scan.on_error = accept)");
                }
                OnError::Reject => {
                    t.unlink()?;
                    return Err(VaultError::ScanFailed { reason });
                }
            },
        }
    }
    let how = if t.replace {
        Commit::Replace
    } else {
        Commit::NoReplace
    };
    let replaced = t.replaced_size()?;
    if let Err(e) = t.staged.commit(&t.target, how) {
        // The name was taken meanwhile: this upload has nowhere to go.
        if matches!(e, StorageError::AlreadyExists) {
            let _ = t.unlink();
        }
        return Err(e.into());
    }
    t.charge.settle(0);
    if let Some(claim) = t.claim.take() {
        claim.committed(replaced, len);
    }
    Ok(len)
}
