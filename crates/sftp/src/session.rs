//! One SFTP session over a byte stream: the request loop, the handle
//! table, and every operation.
//!
//! Requests are handled in the order they arrive, except two kinds that
//! run as tasks: READs (several at once, so a client that pipelines reads
//! gets them served in parallel) and the commit at a written file's CLOSE
//! (sealing, scan, rename). Replies still go out in the order the requests
//! came, as OpenSSH's sftp-server sends them: a client that writes what it
//! downloads where each reply says (OpenSSH's sftp does) and is killed
//! half-way then has a file without holes, which `reget` can continue.
//! The number of requests in flight is bounded by `max_in_flight`; at the
//! bound the session takes no new requests until a reply is written, and
//! the client's flow control does the rest.
//!
//! Writes go through the upload pipeline (see [`WriteHandle`]): nothing
//! appears under a file's name before its CLOSE commits it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dropvault_core::session::LoggedIn;
use dropvault_core::vault::{
    Entry, EntryKind, Listing, Upload, UploadExited, UploadMode, VPath, VaultError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

use crate::attrs::{entry_attrs, from_wire_time, name_entry, wire_time, FILE_MODE};
use crate::errors::Status;
use crate::proto::{
    parse_packet, reply, Attrs, FrameBuffer, FrameError, NameEntry, OpenFlags, Packet, ParseError,
    Request, MAX_READ_LEN, STATUS_BAD_MESSAGE, STATUS_EOF, STATUS_NO_SUCH_FILE, STATUS_OK,
};
use crate::source::Source;

/// Limits and timeouts of one session.
#[derive(Debug, Clone)]
pub struct SftpSettings {
    /// The session ends when no request arrives and none is being worked
    /// on for this long; also bounds how long a reply may take to send.
    pub idle_timeout: Duration,
    /// Files and folders open at once.
    pub max_handles: usize,
    /// Entries one folder listing returns at most; a longer folder's
    /// listing ends with a failure after that many.
    pub max_listing_entries: usize,
    /// READs and CLOSE commits worked on at once.
    pub max_in_flight: usize,
    /// WRITEs that arrived ahead of the file's end held per file, waiting
    /// for the gap before them to fill.
    pub write_window_packets: usize,
    /// Bytes of such WRITEs held by the session, all its files together.
    pub write_window_bytes: usize,
}

impl Default for SftpSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            max_handles: 64,
            max_listing_entries: 100_000,
            max_in_flight: 64,
            write_window_packets: 64,
            write_window_bytes: 8 << 20,
        }
    }
}

/// Why a session ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SftpError {
    /// Reading or writing the stream failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol (framing, a request before INIT, a
    /// packet over the length limit); there is no way to answer it.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// No request for the idle timeout, or a reply that could not be sent
    /// within it.
    #[error("idle timeout")]
    Idle,
    /// A request's task failed (a bug); the session cannot answer it.
    #[error("internal error")]
    Internal,
}

impl From<FrameError> for SftpError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLong(_) => SftpError::Protocol("packet longer than the limit"),
            FrameError::Empty => SftpError::Protocol("empty packet"),
        }
    }
}

/// How long a session's end waits for a dropped upload to let go of its
/// staging file (so that a client reconnecting at once can resume it).
const UPLOAD_EXIT_WAIT: Duration = Duration::from_secs(30);
/// How long a session's end waits for an open upload to seal what it was
/// sent before dropping it.
const UPLOAD_FLUSH_WAIT: Duration = Duration::from_secs(30);
/// Bytes of entries per NAME reply from READDIR (well below what clients
/// accept in one packet).
const NAME_REPLY_BUDGET: usize = 64 * 1024;
/// Entries per NAME reply from READDIR.
const NAMES_PER_REPLY: usize = 256;

/// Serves one SFTP session until the client ends it, the stream fails or
/// `idle` passes with no request.
///
/// At the end, files still open for writing are not committed: their
/// uploads are dropped and stay resumable, as an interrupted FTP upload.
pub async fn serve<S>(stream: S, user: LoggedIn, settings: &SftpSettings) -> Result<(), SftpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut session = Session {
        user,
        settings: settings.clone(),
        handles: HashMap::new(),
        next_handle: 0,
        tasks: InOrder::default(),
        initialized: false,
    };
    let (outbox, queue) = outbox();
    let writing = write_replies(wr, queue, settings.idle_timeout);
    // The outbox goes with `run`: then the writer sends what is queued
    // and ends.
    let reading = session.run(&mut rd, outbox);
    let (result, written) = tokio::join!(reading, writing);
    let result = result.and(written);
    session.finish().await;
    match &result {
        Ok(()) => tracing::debug!(user = %session.user.user(), "sftp session ended"),
        Err(e) => tracing::info!(user = %session.user.user(), error = %e, "sftp session ended"),
    }
    result
}

struct Session {
    user: LoggedIn,
    settings: SftpSettings,
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    /// Replies owed, in the order of their requests: READs and commits in
    /// progress, and the replies waiting behind them.
    tasks: InOrder,
    initialized: bool,
}

enum Handle {
    Read(Arc<ReadHandle>),
    Write(Box<WriteHandle>),
    Dir(Box<DirHandle>),
}

/// A file open for reading.
struct ReadHandle {
    path: VPath,
    source: Source,
    /// Bytes sent, for the download event.
    served: AtomicU64,
    opened: Instant,
}

/// A folder open for listing.
struct DirHandle {
    path: VPath,
    listing: Listing,
    /// Entries read from storage and not sent yet (one batch at most).
    queue: VecDeque<Entry>,
    sent: usize,
    done: bool,
}

/// A file open for writing. The upload starts at the first WRITE, which
/// decides how (see [`WriteHandle::mode`]); writes then go on at the end,
/// with a bounded window for writes that arrive ahead of it. Any failed
/// write ends the upload: it is dropped (what was sealed stays resumable)
/// and CLOSE reports the failure, so a broken transfer never commits.
struct WriteHandle {
    path: VPath,
    flags: OpenFlags,
    /// Whether a file was there at OPEN.
    existed: bool,
    state: WriteState,
    /// Modification time a FSETSTAT asked for, set after the commit.
    mtime: Option<SystemTime>,
    /// A FSETSTAT asked for size 0 before any write.
    truncate: bool,
}

enum WriteState {
    /// No write yet.
    Idle,
    Writing(Box<Writing>),
    /// The upload failed and was dropped; every later WRITE and the CLOSE
    /// get this.
    Failed(Status),
}

/// A value only ever used through `&mut`: shareable between threads
/// (`Sync`) whatever it holds, as nothing can reach it through `&`. The
/// session is borrowed across awaits, so everything in it must be `Sync`;
/// an [`Upload`] is `Send` only.
struct Exclusive<T>(std::sync::Mutex<T>);

impl<T> Exclusive<T> {
    fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    fn get(&mut self) -> &mut T {
        // Never locked, so never poisoned; taken either way.
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn into_inner(self) -> T {
        self.0
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Writing {
    upload: Exclusive<Upload>,
    exited: UploadExited,
    /// Plaintext offset the next write in order starts at.
    end: u64,
    /// Writes go to the end whatever their offset (APPEND whose offsets
    /// do not start at the file's end).
    appending: bool,
    /// Writes that arrived ahead of `end`, by offset.
    ahead: BTreeMap<u64, Vec<u8>>,
    ahead_bytes: usize,
    /// Bytes the client sent, and since when, for the upload event.
    received: u64,
    started: Instant,
}

fn random_write() -> Status {
    Status::failure("random writes are not supported; write sequentially")
}

fn bad_handle() -> Status {
    Status::failure("Invalid handle")
}

fn ok(id: u32) -> Vec<u8> {
    reply::status(id, STATUS_OK, "Success")
}

fn eof(id: u32) -> Vec<u8> {
    reply::status(id, STATUS_EOF, "End of file")
}

/// A client's path, resolved against the user's root (the session has no
/// current folder: clients keep their own and send absolute paths, or
/// paths relative to the root that REALPATH gave them).
fn vpath(raw: &[u8]) -> Result<VPath, Status> {
    let s = std::str::from_utf8(raw).map_err(|_| Status::failure("Name not allowed: not UTF-8"))?;
    VPath::resolve(&VPath::root(), s).map_err(Status::from)
}

fn handle_id(raw: &[u8]) -> Result<u32, Status> {
    <[u8; 4]>::try_from(raw)
        .map(u32::from_be_bytes)
        .map_err(|_| bad_handle())
}

/// Bytes of requests read ahead while the session is at its bound of
/// requests in flight. The session keeps reading its channel meanwhile:
/// the SSH layer takes the client's window updates in the same loop that
/// hands the channel's incoming data over, so a session that stopped
/// reading while a reply waits for window would wait for ever. A client
/// that pipelines this much (about 100 000 READ requests) is held back by
/// its own flow control instead.
const MAX_READ_AHEAD: usize = 4 << 20;

/// Replies on their way to the client: queued by the request loop and
/// the tasks' results, written in order by [`write_replies`], which runs
/// beside the request loop so a reply waiting for the client's window never
/// stops requests from being read.
struct Outbox {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    sent: Arc<Notify>,
}

/// The writer's side of an [`Outbox`].
struct Queue {
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    sent: Arc<Notify>,
}

fn outbox() -> (Outbox, Queue) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Notify::new());
    let queue = Queue {
        rx,
        queued: queued.clone(),
        sent: sent.clone(),
    };
    (Outbox { tx, queued, sent }, queue)
}

impl Outbox {
    /// Queues `reply`. The queue's length counts toward the session's
    /// bound of requests in flight, so it stays within `max_in_flight`.
    fn send(&self, reply: Vec<u8>) -> Result<(), SftpError> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx
            .send(reply)
            .map_err(|_| SftpError::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe)))
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Writes queued replies in order until the request loop drops its
/// [`Outbox`] and the queue is empty.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut queue: Queue,
    limit: Duration,
) -> Result<(), SftpError> {
    while let Some(reply) = queue.rx.recv().await {
        let sent = send(&mut wr, &reply, limit).await;
        queue.queued.fetch_sub(1, Ordering::AcqRel);
        queue.sent.notify_one();
        sent?;
    }
    Ok(())
}

/// Replies owed to the client, in the order of the requests they answer.
#[derive(Default)]
struct InOrder {
    queue: VecDeque<Owed>,
}

enum Owed {
    /// A request's task, whose result is the reply.
    Running(JoinHandle<Vec<u8>>),
    /// A reply that waits for the ones before it.
    Ready(Vec<u8>),
}

impl InOrder {
    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn spawn(&mut self, task: impl std::future::Future<Output = Vec<u8>> + Send + 'static) {
        self.queue.push_back(Owed::Running(tokio::spawn(task)));
    }

    /// `reply` to send now, or `None` when it was queued behind replies
    /// still owed.
    fn reply(&mut self, reply: Vec<u8>) -> Option<Vec<u8>> {
        if self.queue.is_empty() {
            return Some(reply);
        }
        self.queue.push_back(Owed::Ready(reply));
        None
    }

    /// Waits for the first reply owed (a task's; replies ready behind it
    /// come with [`InOrder::next_ready`]). Cancel-safe; pending while
    /// nothing is owed.
    async fn first(&mut self) -> Result<Vec<u8>, SftpError> {
        let reply = match self.queue.front_mut() {
            Some(Owed::Running(task)) => task.await.map_err(|_| SftpError::Internal)?,
            Some(Owed::Ready(reply)) => std::mem::take(reply),
            None => std::future::pending().await,
        };
        self.queue.pop_front();
        Ok(reply)
    }

    /// The first reply owed, if it is ready without waiting.
    fn next_ready(&mut self) -> Option<Vec<u8>> {
        match self.queue.front_mut()? {
            Owed::Ready(reply) => {
                let reply = std::mem::take(reply);
                self.queue.pop_front();
                Some(reply)
            }
            Owed::Running(_) => None,
        }
    }

    /// Stops every task and drops every reply owed.
    async fn shutdown(&mut self) {
        for owed in self.queue.drain(..) {
            if let Owed::Running(task) = owed {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Writes one reply, within `limit`.
async fn send<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), SftpError> {
    timeout(limit, async {
        wr.write_all(bytes).await?;
        wr.flush().await
    })
    .await
    .map_err(|_| SftpError::Idle)??;
    Ok(())
}

impl Session {
    async fn run<R>(&mut self, rd: &mut R, out: Outbox) -> Result<(), SftpError>
    where
        R: AsyncRead + Unpin,
    {
        let mut frames = FrameBuffer::new();
        let idle = self.settings.idle_timeout;
        let max = self.settings.max_in_flight;
        let mut deadline = Instant::now() + idle;
        loop {
            // Every whole packet buffered, while the in-flight bound
            // (tasks, and replies not yet written) allows.
            while self.tasks.len() + out.queued() < max {
                let Some(payload) = frames.next_packet()? else {
                    break;
                };
                if let Some(reply) = self.packet(payload).await? {
                    if let Some(reply) = self.tasks.reply(reply) {
                        out.send(reply)?;
                    }
                }
                deadline = Instant::now() + idle;
            }
            if self.tasks.is_empty() && frames.pending() == 0 {
                frames.release();
            }
            let at_bound = self.tasks.len() + out.queued() >= max;
            let can_read = frames.pending() < MAX_READ_AHEAD;
            tokio::select! {
                biased;
                first = self.tasks.first(), if !self.tasks.is_empty() => {
                    out.send(first?)?;
                    while let Some(reply) = self.tasks.next_ready() {
                        out.send(reply)?;
                    }
                    deadline = Instant::now() + idle;
                }
                () = out.sent.notified(), if at_bound => {}
                read = rd.read_buf(frames.read_target()), if can_read => {
                    // The end of the stream is the client leaving (a partial
                    // packet before it is dropped).
                    if read? == 0 {
                        return Ok(());
                    }
                }
                () = sleep_until(deadline), if self.tasks.is_empty() => {
                    return Err(SftpError::Idle);
                }
            }
        }
    }

    /// Lets go of everything the session holds: in-flight tasks stop,
    /// uploads still open are flushed (the writes the client was told
    /// succeeded stay, as far as whole segments go) and dropped, and waited
    /// for, within a bound, to release their staging files: a client that
    /// reconnects at once can resume them.
    async fn finish(&mut self) {
        self.tasks.shutdown().await;
        let mut exits = Vec::new();
        for (_, handle) in self.handles.drain() {
            if let Handle::Write(w) = handle {
                if let WriteState::Writing(writing) = w.state {
                    let Writing {
                        mut upload, exited, ..
                    } = *writing;
                    let _ = timeout(UPLOAD_FLUSH_WAIT, upload.get().flush()).await;
                    drop(upload);
                    exits.push(exited);
                }
            }
        }
        for exited in exits {
            let _ = timeout(UPLOAD_EXIT_WAIT, exited.wait()).await;
        }
    }

    /// Handles one packet; `None` if a task will reply.
    async fn packet(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, SftpError> {
        let packet = match parse_packet(payload) {
            Ok(p) => p,
            Err(ParseError::NoId) => return Err(SftpError::Protocol("packet too short")),
            Err(ParseError::Malformed { .. }) if !self.initialized => {
                return Err(SftpError::Protocol("request before INIT"))
            }
            Err(ParseError::Malformed { id }) => {
                return Ok(Some(reply::status(
                    id,
                    STATUS_BAD_MESSAGE,
                    "Malformed request",
                )))
            }
        };
        match packet {
            Packet::Init { version } if !self.initialized => {
                tracing::debug!(version, "sftp client version");
                self.initialized = true;
                Ok(Some(reply::version()))
            }
            Packet::Init { .. } => Err(SftpError::Protocol("second INIT")),
            Packet::Request { .. } if !self.initialized => {
                Err(SftpError::Protocol("request before INIT"))
            }
            Packet::Request { id, request } => Ok(self.request(id, request).await),
        }
    }

    async fn request(&mut self, id: u32, request: Request<'_>) -> Option<Vec<u8>> {
        let name = request.name();
        let result = match request {
            Request::Read {
                handle,
                offset,
                len,
            } => self.read(id, handle, offset, len),
            Request::Close { handle } => self.close(id, handle).await,
            other => self.immediate(id, other).await.map(Some),
        };
        match result {
            Ok(reply) => reply,
            Err(status) => {
                tracing::debug!(op = name, code = status.code, message = %status.message,
                    "sftp request failed");
                Some(status.to_reply(id))
            }
        }
    }

    /// Requests answered at once, in order.
    async fn immediate(&mut self, id: u32, request: Request<'_>) -> Result<Vec<u8>, Status> {
        match request {
            Request::Open { path, flags, .. } => self.open(id, path, flags).await,
            Request::Write {
                handle,
                offset,
                data,
            } => self.write(id, handle, offset, data).await,
            Request::Stat { path } | Request::Lstat { path } => {
                let p = vpath(path)?;
                Ok(reply::attrs(id, &self.stat(&p).await?))
            }
            Request::Fstat { handle } => self.fstat(id, handle).await,
            Request::Setstat { path, attrs } => {
                let p = vpath(path)?;
                self.setstat(&p, &attrs).await?;
                Ok(ok(id))
            }
            Request::Fsetstat { handle, attrs } => self.fsetstat(id, handle, &attrs).await,
            Request::Opendir { path } => self.opendir(id, path).await,
            Request::Readdir { handle } => self.readdir(id, handle).await,
            Request::Remove { path } => {
                self.user.remove(&vpath(path)?).await?;
                Ok(ok(id))
            }
            Request::Mkdir { path, .. } => {
                self.user.mkdir(&vpath(path)?).await?;
                Ok(ok(id))
            }
            Request::Rmdir { path } => {
                self.user.rmdir(&vpath(path)?).await?;
                Ok(ok(id))
            }
            Request::Realpath { path } => {
                let p = vpath(path)?.to_string();
                let entry = NameEntry {
                    filename: p.clone(),
                    longname: p,
                    attrs: Attrs::default(),
                };
                Ok(reply::name(id, &[entry]))
            }
            Request::Rename { from, to } => {
                let (from, to) = (vpath(from)?, vpath(to)?);
                // Version 3: a rename never replaces. (A file appearing
                // between this check and the rename is replaced; clients
                // that want replacing use posix-rename.)
                match self.user.vault().stat(&to).await {
                    Ok(_) => return Err(Status::failure("Already exists")),
                    Err(VaultError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
                self.user.rename(&from, &to).await?;
                Ok(ok(id))
            }
            Request::PosixRename { from, to } => {
                let (from, to) = (vpath(from)?, vpath(to)?);
                self.user.rename(&from, &to).await?;
                Ok(ok(id))
            }
            Request::Readlink { .. } | Request::Symlink => {
                Err(Status::unsupported("Links are not supported"))
            }
            Request::Limits => Ok(reply::limits(id, self.settings.max_handles as u64)),
            Request::Fsync { handle } => self.fsync(id, handle).await,
            Request::UnknownExtended { name } => {
                tracing::debug!(name = %String::from_utf8_lossy(name), "unknown sftp extension");
                Err(Status::unsupported("Unsupported extension"))
            }
            Request::Unknown { kind } => {
                tracing::debug!(kind, "unknown sftp packet type");
                Err(Status::unsupported("Unsupported request"))
            }
            // Dispatched before.
            Request::Read { .. } | Request::Close { .. } => Err(Status::failure("Local error")),
        }
    }

    /// A new handle for `h`, if the bound allows.
    fn insert(&mut self, h: Handle) -> Result<Vec<u8>, Status> {
        if self.handles.len() >= self.settings.max_handles {
            return Err(Status::failure(format!(
                "Too many open files and folders (at most {}); close some first",
                self.settings.max_handles
            )));
        }
        // Never reused within the session while open.
        while self.handles.contains_key(&self.next_handle) {
            self.next_handle = self.next_handle.wrapping_add(1);
        }
        let id = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.handles.insert(id, h);
        Ok(id.to_be_bytes().to_vec())
    }

    fn check_room(&self) -> Result<(), Status> {
        if self.handles.len() >= self.settings.max_handles {
            return Err(Status::failure(format!(
                "Too many open files and folders (at most {}); close some first",
                self.settings.max_handles
            )));
        }
        Ok(())
    }

    async fn open(&mut self, id: u32, path: &[u8], flags: OpenFlags) -> Result<Vec<u8>, Status> {
        self.check_room()?;
        let p = vpath(path)?;
        let vault = self.user.vault();
        let writing = flags.has(OpenFlags::WRITE) || flags.has(OpenFlags::APPEND);
        if !writing {
            let source = Source::open(vault, &p).await?;
            let h = Handle::Read(Arc::new(ReadHandle {
                path: p,
                source,
                served: AtomicU64::new(0),
                opened: Instant::now(),
            }));
            return Ok(reply::handle(id, &self.insert(h)?));
        }
        if p.is_root() {
            return Err(VaultError::IsADirectory.into());
        }
        let existed = match vault.stat(&p).await {
            Ok(e) if e.kind == EntryKind::Dir => return Err(VaultError::IsADirectory.into()),
            Ok(_) => true,
            Err(VaultError::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        if existed && flags.has(OpenFlags::CREAT) && flags.has(OpenFlags::EXCL) {
            return Err(Status::failure("Already exists"));
        }
        if !existed {
            // A resumable upload counts as there for a client that
            // continues it without CREAT.
            let staged = matches!(vault.size(&p).await, Ok(n) if n > 0);
            if !flags.has(OpenFlags::CREAT) && !staged {
                return Err(VaultError::NotFound.into());
            }
            match vault.stat(&p.parent()).await? {
                e if e.kind == EntryKind::Dir => {}
                _ => return Err(VaultError::NotADirectory.into()),
            }
        }
        let h = Handle::Write(Box::new(WriteHandle {
            path: p,
            flags,
            existed,
            state: WriteState::Idle,
            mtime: None,
            truncate: false,
        }));
        Ok(reply::handle(id, &self.insert(h)?))
    }

    fn read(
        &mut self,
        id: u32,
        handle: &[u8],
        offset: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, Status> {
        let h = match self.handles.get(&handle_id(handle)?) {
            Some(Handle::Read(h)) => h.clone(),
            Some(Handle::Write(_)) => {
                return Err(Status::failure(
                    "Reading a file open for writing is not supported",
                ))
            }
            Some(Handle::Dir(_)) => return Err(VaultError::IsADirectory.into()),
            None => return Err(bad_handle()),
        };
        if offset >= h.source.len() {
            return Ok(Some(eof(id)));
        }
        let len = len.min(MAX_READ_LEN) as usize;
        let throttle = self.user.throttle().clone();
        self.tasks.spawn(async move {
            match h.source.read_at(offset, len).await {
                Ok(data) if data.is_empty() => eof(id),
                Ok(data) => {
                    throttle.download(data.len()).await;
                    h.served.fetch_add(data.len() as u64, Ordering::Relaxed);
                    reply::data(id, &data)
                }
                Err(e) => Status::from(e).to_reply(id),
            }
        });
        Ok(None)
    }

    async fn close(&mut self, id: u32, handle: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        match self.handles.remove(&handle_id(handle)?) {
            None => Err(bad_handle()),
            Some(Handle::Dir(_)) => Ok(Some(ok(id))),
            Some(Handle::Read(h)) => {
                let served = h.served.load(Ordering::Relaxed);
                if served > 0 {
                    let secs = h.opened.elapsed().as_secs_f64();
                    self.user.audit().downloaded(&h.path, served, secs);
                }
                Ok(Some(ok(id)))
            }
            Some(Handle::Write(w)) => self.close_write(id, *w).await,
        }
    }

    /// CLOSE of a written file: commits it in a task (sealing the end,
    /// scanning, renaming into place take a while), then sets the
    /// modification time a FSETSTAT asked for.
    async fn close_write(&mut self, id: u32, w: WriteHandle) -> Result<Option<Vec<u8>>, Status> {
        let WriteHandle {
            path,
            flags,
            existed,
            state,
            mtime,
            truncate,
        } = w;
        let (upload, exited, received, started) = match state {
            WriteState::Failed(status) => return Err(status),
            WriteState::Writing(writing) => {
                let Writing {
                    upload,
                    exited,
                    end,
                    ahead,
                    received,
                    started,
                    ..
                } = *writing;
                if !ahead.is_empty() {
                    drop(upload);
                    let _ = timeout(UPLOAD_EXIT_WAIT, exited.wait()).await;
                    return Err(Status::failure(format!(
                        "data missing at offset {end} (later writes arrived, that one never did); \
                         the file was not stored"
                    )));
                }
                (upload.into_inner(), exited, received, started)
            }
            WriteState::Idle if flags.has(OpenFlags::TRUNC) || !existed || truncate => {
                let mode = if flags.has(OpenFlags::EXCL) {
                    UploadMode::Create
                } else {
                    UploadMode::Replace
                };
                let mut upload = self.user.vault().upload(&path, mode).await?;
                let exited = upload.exit_signal();
                (upload, exited, 0, Instant::now())
            }
            WriteState::Idle => {
                // Opened for writing, nothing written: the file stays.
                if let Some(t) = mtime {
                    self.user.vault().set_modified(&path, t).await?;
                }
                return Ok(Some(ok(id)));
            }
        };
        let audit = self.user.audit();
        let vault = self.user.vault().clone();
        self.tasks.spawn(async move {
            let secs = started.elapsed().as_secs_f64();
            let committed = audit.commit(&path, upload, received, secs).await;
            // The staging file is let go before the reply: a client that
            // writes the same file again at once does not find it busy.
            let _ = timeout(UPLOAD_EXIT_WAIT, exited.wait()).await;
            if let Err(e) = committed {
                return Status::from(&e).to_reply(id);
            }
            if let Some(t) = mtime {
                if let Err(e) = vault.set_modified(&path, t).await {
                    return Status::from(e).to_reply(id);
                }
            }
            ok(id)
        });
        Ok(None)
    }

    async fn write(
        &mut self,
        id: u32,
        handle: &[u8],
        offset: u64,
        data: &[u8],
    ) -> Result<Vec<u8>, Status> {
        let hid = handle_id(handle)?;
        // The window for writes ahead is the session's, shared by its files.
        let held: usize = self
            .handles
            .iter()
            .filter(|(k, _)| **k != hid)
            .map(|(_, h)| match h {
                Handle::Write(w) => match &w.state {
                    WriteState::Writing(writing) => writing.ahead_bytes,
                    _ => 0,
                },
                _ => 0,
            })
            .sum();
        let room = self.settings.write_window_bytes.saturating_sub(held);
        let w = match self.handles.get_mut(&hid) {
            Some(Handle::Write(w)) => w,
            Some(_) => return Err(Status::failure("Not open for writing")),
            None => return Err(bad_handle()),
        };
        // Paid before the write, so a limited client waits with its data
        // unread (SFTP's own flow control) rather than held here.
        self.user.throttle().upload(data.len()).await;
        w.write(&self.user, &self.settings, room, offset, data)
            .await?;
        Ok(ok(id))
    }

    /// Attributes of `p`; for a path with only an interrupted upload, the
    /// size it can be continued from (what `reput` / `put -a` ask first).
    async fn stat(&self, p: &VPath) -> Result<Attrs, Status> {
        let vault = self.user.vault();
        match vault.stat(p).await {
            Ok(e) => Ok(entry_attrs(&e)),
            Err(VaultError::NotFound) => match vault.size(p).await {
                Ok(size) if size > 0 => Ok(unstored_attrs(size)),
                _ => Err(VaultError::NotFound.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn fstat(&self, id: u32, handle: &[u8]) -> Result<Vec<u8>, Status> {
        let path = match self.handles.get(&handle_id(handle)?) {
            None => return Err(bad_handle()),
            Some(Handle::Read(h)) => &h.path,
            Some(Handle::Dir(d)) => &d.path,
            Some(Handle::Write(w)) => match &w.state {
                WriteState::Failed(s) => return Err(s.clone()),
                WriteState::Writing(writing) => {
                    return Ok(reply::attrs(id, &unstored_attrs(writing.end)));
                }
                // What the file will be if closed now.
                WriteState::Idle if w.flags.has(OpenFlags::TRUNC) || w.truncate => {
                    return Ok(reply::attrs(id, &unstored_attrs(0)));
                }
                WriteState::Idle => match self.stat(&w.path).await {
                    Ok(attrs) => return Ok(reply::attrs(id, &attrs)),
                    Err(s) if s.code == STATUS_NO_SUCH_FILE => {
                        return Ok(reply::attrs(id, &unstored_attrs(0)));
                    }
                    Err(s) => return Err(s),
                },
            },
        };
        Ok(reply::attrs(id, &self.stat(path).await?))
    }

    /// SETSTAT: the modification time is set; size only to what it is
    /// already, or to 0 (the file is replaced by an empty one); owner,
    /// group, mode and access time are ignored (the vault keeps none).
    async fn setstat(&self, p: &VPath, attrs: &Attrs) -> Result<(), Status> {
        if let Some(size) = attrs.size {
            let e = self.user.vault().stat(p).await?;
            if e.kind == EntryKind::Dir {
                return Err(VaultError::IsADirectory.into());
            }
            if size != e.size {
                if size != 0 {
                    return Err(size_unsupported());
                }
                let upload = self.user.vault().upload(p, UploadMode::Replace).await?;
                self.user.audit().commit(p, upload, 0, 0.0).await?;
            }
        }
        if let Some((_, mtime)) = attrs.times {
            self.user
                .vault()
                .set_modified(p, from_wire_time(mtime))
                .await?;
        }
        Ok(())
    }

    async fn fsetstat(&mut self, id: u32, handle: &[u8], attrs: &Attrs) -> Result<Vec<u8>, Status> {
        let path = match self.handles.get_mut(&handle_id(handle)?) {
            None => return Err(bad_handle()),
            Some(Handle::Read(h)) => h.path.clone(),
            Some(Handle::Dir(d)) => d.path.clone(),
            Some(Handle::Write(w)) => {
                w.setstat(self.user.vault(), attrs).await?;
                return Ok(ok(id));
            }
        };
        self.setstat(&path, attrs).await?;
        Ok(ok(id))
    }

    async fn fsync(&mut self, id: u32, handle: &[u8]) -> Result<Vec<u8>, Status> {
        let limit = self.settings.idle_timeout;
        match self.handles.get_mut(&handle_id(handle)?) {
            None => Err(bad_handle()),
            Some(Handle::Write(w)) => match &mut w.state {
                WriteState::Failed(s) => Err(s.clone()),
                // Seals and writes out every whole segment so far; the
                // last, partial one can only be sealed at CLOSE.
                WriteState::Writing(writing) => {
                    match timeout(limit, writing.upload.get().flush()).await {
                        Ok(Ok(())) => Ok(ok(id)),
                        _ => {
                            let status = writing.broken();
                            w.state = WriteState::Failed(status.clone());
                            Err(status)
                        }
                    }
                }
                WriteState::Idle => Ok(ok(id)),
            },
            Some(_) => Ok(ok(id)),
        }
    }

    async fn opendir(&mut self, id: u32, path: &[u8]) -> Result<Vec<u8>, Status> {
        self.check_room()?;
        let p = vpath(path)?;
        let listing = self.user.vault().list(&p).await?;
        let h = Handle::Dir(Box::new(DirHandle {
            path: p,
            listing,
            queue: VecDeque::new(),
            sent: 0,
            done: false,
        }));
        Ok(reply::handle(id, &self.insert(h)?))
    }

    /// READDIR: the next entries, as many as fit one reply; EOF at the
    /// end; a failure once `max_listing_entries` were sent and more are
    /// left (the listing is cut, and says so).
    async fn readdir(&mut self, id: u32, handle: &[u8]) -> Result<Vec<u8>, Status> {
        let max = self.settings.max_listing_entries;
        let d = match self.handles.get_mut(&handle_id(handle)?) {
            Some(Handle::Dir(d)) => d,
            Some(_) => return Err(VaultError::NotADirectory.into()),
            None => return Err(bad_handle()),
        };
        if d.queue.is_empty() && !d.done {
            let batch = d.listing.next_batch().await?;
            d.done = batch.is_empty();
            d.queue.extend(batch);
        }
        if d.queue.is_empty() {
            return Ok(eof(id));
        }
        if d.sent >= max {
            return Err(Status::failure(format!(
                "This folder has more than {max} entries; the listing stops there"
            )));
        }
        let now = SystemTime::now();
        let owner = self.user.user();
        let mut entries = Vec::new();
        let mut size = 0;
        while entries.len() < NAMES_PER_REPLY && d.sent + entries.len() < max {
            let Some(e) = d.queue.front() else { break };
            let entry = name_entry(e, owner, now);
            if !entries.is_empty() && size + entry.wire_len() > NAME_REPLY_BUDGET {
                break;
            }
            size += entry.wire_len();
            entries.push(entry);
            d.queue.pop_front();
        }
        d.sent += entries.len();
        Ok(reply::name(id, &entries))
    }
}

/// Attributes of a file of `size` bytes that is not committed (being
/// written, or an interrupted upload): modified now.
fn unstored_attrs(size: u64) -> Attrs {
    let now = wire_time(SystemTime::now());
    Attrs {
        size: Some(size),
        uid_gid: None,
        permissions: Some(FILE_MODE),
        times: Some((now, now)),
    }
}

fn size_unsupported() -> Status {
    Status::unsupported("Changing a file's size is not supported (only to 0)")
}

impl WriteHandle {
    /// How the upload starts, by the open flags and the first write's
    /// offset: APPEND continues the file; TRUNC (or a first write at 0)
    /// writes a new one (that must stay new with EXCL); a first write at
    /// N > 0 without TRUNC continues the file from N (`reput`, `put -a`:
    /// they ask the size, then write from there).
    fn mode(&self, offset: u64) -> UploadMode {
        if self.flags.has(OpenFlags::APPEND) {
            UploadMode::Append
        } else if self.flags.has(OpenFlags::TRUNC) || offset == 0 {
            if self.flags.has(OpenFlags::EXCL) {
                UploadMode::Create
            } else {
                UploadMode::Replace
            }
        } else {
            UploadMode::Resume(offset)
        }
    }

    /// One WRITE; `room` is what the session's window for writes ahead
    /// has left for this file.
    async fn write(
        &mut self,
        user: &LoggedIn,
        settings: &SftpSettings,
        room: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Status> {
        if let WriteState::Idle = self.state {
            if data.is_empty() {
                return Ok(());
            }
            let mut upload = match user.vault().upload(&self.path, self.mode(offset)).await {
                Ok(upload) => upload,
                Err(e) => {
                    let status = Status::from(e);
                    self.state = WriteState::Failed(status.clone());
                    return Err(status);
                }
            };
            let exited = upload.exit_signal();
            let end = upload.plaintext_len();
            self.state = WriteState::Writing(Box::new(Writing {
                upload: Exclusive::new(upload),
                exited,
                end,
                appending: self.flags.has(OpenFlags::APPEND) && offset != end,
                ahead: BTreeMap::new(),
                ahead_bytes: 0,
                received: 0,
                started: Instant::now(),
            }));
        }
        let writing = match &mut self.state {
            WriteState::Writing(w) => w,
            WriteState::Failed(s) => return Err(s.clone()),
            WriteState::Idle => return Err(Status::failure("Local error")),
        };
        if let Err(status) = writing.put(offset, data, settings, room).await {
            // The upload cannot go on: dropped now, resumable later.
            self.state = WriteState::Failed(status.clone());
            return Err(status);
        }
        Ok(())
    }

    /// FSETSTAT of a file being written: the modification time is kept for
    /// after the commit; size only as it is, or 0 before any write.
    async fn setstat(
        &mut self,
        vault: &dropvault_core::vault::UserVault,
        attrs: &Attrs,
    ) -> Result<(), Status> {
        if let Some(size) = attrs.size {
            match &self.state {
                WriteState::Failed(s) => return Err(s.clone()),
                WriteState::Writing(w) if w.end == size => {}
                WriteState::Writing(_) => return Err(size_unsupported()),
                WriteState::Idle if size == 0 => self.truncate = true,
                WriteState::Idle => {
                    let current = if self.flags.has(OpenFlags::TRUNC) || self.truncate {
                        0
                    } else {
                        vault.stat(&self.path).await.map(|e| e.size).unwrap_or(0)
                    };
                    if current != size {
                        return Err(size_unsupported());
                    }
                }
            }
        }
        if let Some((_, mtime)) = attrs.times {
            self.mtime = Some(from_wire_time(mtime));
        }
        Ok(())
    }
}

impl Writing {
    /// Takes one WRITE: at the end it goes into the upload (with any held
    /// writes it makes contiguous); ahead of the end it waits in the
    /// window; behind the end, or beyond the window, it is refused.
    async fn put(
        &mut self,
        offset: u64,
        data: &[u8],
        settings: &SftpSettings,
        room: usize,
    ) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        self.received += data.len() as u64;
        let limit = settings.idle_timeout;
        if self.appending || offset == self.end {
            self.append(data, limit).await?;
            while let Some(entry) = self.ahead.first_entry() {
                if *entry.key() > self.end {
                    break;
                }
                if *entry.key() < self.end {
                    // Overlaps what was written.
                    return Err(random_write());
                }
                let held = entry.remove();
                self.ahead_bytes -= held.len();
                self.append(&held, limit).await?;
            }
            return Ok(());
        }
        // A write further ahead than the window holds can never be
        // reached by the writes before it: refused now, not at CLOSE
        // (some clients do not report a failed CLOSE).
        let too_far = offset.saturating_sub(self.end) > settings.write_window_bytes as u64;
        if offset < self.end
            || too_far
            || self.ahead.len() >= settings.write_window_packets
            || self.ahead_bytes.saturating_add(data.len()) > room
            || self.ahead.contains_key(&offset)
        {
            return Err(random_write());
        }
        self.ahead.insert(offset, data.to_vec());
        self.ahead_bytes += data.len();
        Ok(())
    }

    async fn append(&mut self, data: &[u8], limit: Duration) -> Result<(), Status> {
        match timeout(limit, self.upload.get().write_all(data)).await {
            Ok(Ok(())) => {
                self.end += data.len() as u64;
                Ok(())
            }
            _ => Err(self.broken()),
        }
    }

    /// Why the upload stopped: what its worker reports, or storage.
    fn broken(&mut self) -> Status {
        match self.upload.get().failure() {
            Some(e) => Status::from(&e),
            None => Status::failure("Storage error; the upload stopped. Try again later"),
        }
    }
}
