//! RETR STOR APPE STOU, listings' data transfer, and the control connection
//! while a transfer runs.
//!
//! A transfer goes in phases, each a function of its own:
//!
//! 1. [`Session::run_transfer_with`] checks that it may start, sends `150`,
//!    and watches the control connection through the next phases (ABOR,
//!    NOOP, STAT, QUIT; anything else waits);
//! 2. [`move_bytes`] opens the data connection and streams: socket →
//!    encryptor → staging file on the way in ([`receive`]), file →
//!    decryptor → socket on the way out ([`send_file`]), at the pace of
//!    the session's bandwidth limits (its `Throttle`). ABOR or a vanished
//!    client stops it here; an upload's sealed data stays for a resume;
//! 3. an upload that reached its end of data is committed by a task of its
//!    own ([`commit_upload`]): scan, rename, its `upload` or
//!    `upload_rejected` event and log line. Nothing the client does then
//!    stops it or loses its record: an ABOR meanwhile only adds a reply
//!    after the upload's own, and a client that vanished is not told.

use std::time::{Duration, Instant};

use dropvault_core::session::Audit;
use dropvault_core::throttle::Throttle;
use dropvault_core::vault::{Download, Upload, UploadExited, UploadMode, VPath};
use tokio::io::AsyncWriteExt;

use crate::config::TlsMode;
use crate::proto::{parse_command, Command, Reply};
use crate::session::data::{self, DataPlan, DataTls};
use crate::session::errors::{data_reply, transfer_reply, vault_reply};
use crate::session::stream::{Stalling, Stream};
use crate::session::{Flow, Input, Session};

/// Which upload verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    Stor,
    Appe,
}

/// What a data transfer moves.
pub(crate) enum Job {
    /// A listing, streamed as storage is read.
    List(super::listing::ListJob),
    /// A file to the client.
    Retr(Download, VPath),
    /// A file from the client.
    Store(Upload, VPath),
}

/// What moving the bytes achieved.
enum Moved {
    /// A listing (no path) or a file went out.
    Sent { bytes: u64, path: Option<VPath> },
    /// An upload reached its end of data; it is to be committed.
    Received {
        upload: Upload,
        path: VPath,
        bytes: u64,
    },
}

/// How watching the control connection during a phase ended.
enum Watched<T> {
    /// The phase finished (or failed) by itself.
    Done(T),
    /// The client sent ABOR.
    Aborted,
    /// The control connection is gone (with the error, if one).
    Gone(Option<std::io::Error>),
}

/// Who transfers, for log lines and events.
#[derive(Clone)]
struct Record {
    audit: Audit,
    started: Instant,
}

impl Session {
    pub(crate) async fn cmd_retr(&mut self, arg: &str) -> std::io::Result<Flow> {
        let offset = std::mem::take(&mut self.rest);
        let (v, p) = match self.target(arg) {
            Ok(x) => x,
            Err(r) => return self.reply(r).await.map(|()| Flow::Continue),
        };
        match v.download(&p, offset).await {
            Ok(d) => self.run_transfer(Job::Retr(d, p)).await,
            Err(e) => self.reply(vault_reply(&e)).await.map(|()| Flow::Continue),
        }
    }

    pub(crate) async fn cmd_store(&mut self, arg: &str, verb: Store) -> std::io::Result<Flow> {
        let offset = std::mem::take(&mut self.rest);
        let mode = match (verb, offset) {
            (Store::Appe, _) => UploadMode::Append,
            (Store::Stor, 0) => UploadMode::Replace,
            (Store::Stor, n) => UploadMode::Resume(n),
        };
        self.store(arg, mode, Reply::opening_data()).await
    }

    /// STOU: store under a new name the server picks in the current folder;
    /// the upload never replaces a file (if the name is taken when it
    /// commits, it fails). The name is announced in the 150 reply, as RFC
    /// 1123 asks.
    pub(crate) async fn cmd_stou(&mut self) -> std::io::Result<Flow> {
        self.rest = 0;
        let r = dropvault_core::random_hex(6).unwrap_or_else(|_| "0".repeat(12));
        let name = format!("upload-{r}");
        self.store(&name, UploadMode::Create, Reply::opening_data_named(&name))
            .await
    }

    /// STOR, APPE and STOU.
    async fn store(
        &mut self,
        arg: &str,
        mode: UploadMode,
        opening: Reply,
    ) -> std::io::Result<Flow> {
        // ALLO's size is for this upload only.
        let size = self.allo.take();
        let (v, p) = match self.target(arg) {
            Ok(x) => x,
            Err(r) => return self.reply(r).await.map(|()| Flow::Continue),
        };
        // Refuse before touching the staging file.
        if let Some(refusal) = self.data_refusal() {
            return self.reply(refusal).await.map(|()| Flow::Continue);
        }
        match v.upload_sized(&p, mode, size).await {
            Ok(up) => self.run_transfer_with(Job::Store(up, p), opening).await,
            Err(e) => self.reply(vault_reply(&e)).await.map(|()| Flow::Continue),
        }
    }

    /// Why a data transfer may not start, if it may not.
    fn data_refusal(&self) -> Option<Reply> {
        if matches!(self.data, DataPlan::None) {
            return Some(Reply::bad_sequence("Use PASV, EPSV, PORT or EPRT first."));
        }
        if self.shared.config.tls == TlsMode::Required && !self.prot_private {
            return Some(Reply::new(
                521,
                "Data connections must be encrypted: use PROT P.",
            ));
        }
        None
    }

    /// Runs a listing's or a download's transfer.
    pub(crate) async fn run_transfer(&mut self, job: Job) -> std::io::Result<Flow> {
        self.run_transfer_with(job, Reply::opening_data()).await
    }

    /// Phase 1: checks, `150`, then the other phases under watch of the
    /// control connection, and the final reply.
    async fn run_transfer_with(&mut self, mut job: Job, opening: Reply) -> std::io::Result<Flow> {
        if let Some(refusal) = self.data_refusal() {
            self.reply(refusal).await?;
            return Ok(Flow::Continue);
        }
        let Some((audit, throttle)) = self
            .user()
            .map(|u| (u.user.audit(), u.user.throttle().clone()))
        else {
            self.reply(Reply::not_logged_in("Not logged in.")).await?;
            return Ok(Flow::Continue);
        };
        let record = Record {
            audit,
            started: Instant::now(),
        };
        let upload = matches!(job, Job::Store(..));
        let tls = match (&self.tls, self.prot_private) {
            (Some(session_tls), true) => Some(DataTls {
                config: session_tls.data(record.audit.user(), !upload),
                require_resumption: self.shared.config.tls_session_reuse_required,
                upload,
            }),
            _ => None,
        };
        let plan = std::mem::take(&mut self.data);
        let timeout = self.shared.config.connect_timeout();
        let stall = self.shared.config.data_timeout;
        self.reply(opening).await?;

        let mut exited = match &mut job {
            Job::Store(upload, _) => Some(upload.exit_signal()),
            _ => None,
        };
        let mut quit = false;
        let mut moving = Box::pin(move_bytes(
            plan,
            self.peer.ip(),
            (timeout, stall),
            tls,
            (job, throttle),
        ));
        let watched = self.watch(&mut moving, &mut quit).await;
        drop(moving);
        if let Watched::Done(Ok(Moved::Received {
            upload,
            path,
            bytes,
        })) = watched
        {
            let done = (exited.take(), timeout);
            let commit = tokio::spawn(commit_upload(upload, path, bytes, record, done));
            return self.await_commit(commit, quit).await;
        }
        // An abandoned upload's worker writes out what it sealed; the
        // session answers (or ends, and logs out) only once the staging
        // file is complete and free, so a client that comes back at once
        // finds the resume point and can take the file.
        if let Some(exited) = exited {
            let _ = tokio::time::timeout(timeout, exited.wait()).await;
        }
        match watched {
            Watched::Done(outcome) => {
                if self.answer(outcome, &record).await? {
                    return Ok(Flow::Close);
                }
            }
            Watched::Aborted => {
                tracing::info!(event = "transfer_aborted", user = %record.audit.user(),
                    peer = %self.peer);
                self.reply(Reply::transfer_aborted("Transfer aborted."))
                    .await?;
                self.reply(Reply::transfer_complete("ABOR successful."))
                    .await?;
            }
            Watched::Gone(None) => return Ok(Flow::Close),
            Watched::Gone(Some(e)) => return Err(e),
        }
        self.after_transfer(quit).await
    }

    /// The final reply of a transfer that ended by itself, and the record
    /// of a download (an upload's is its commit's). True when the reply
    /// closes the session (a `421`: the data connection stalled).
    async fn answer(
        &mut self,
        outcome: Result<Moved, Reply>,
        record: &Record,
    ) -> std::io::Result<bool> {
        match outcome {
            Ok(Moved::Sent { bytes, path }) => {
                if let Some(path) = path {
                    let secs = record.started.elapsed().as_secs_f64();
                    record.audit.downloaded(&path, bytes, secs);
                }
                self.reply(Reply::transfer_complete(format!(
                    "Transfer complete, {bytes} bytes."
                )))
                .await?;
                Ok(false)
            }
            // Committed by its own task (run_transfer_with); not here.
            Ok(Moved::Received { .. }) => Ok(false),
            Err(reply) => {
                tracing::info!(event = "transfer_failed", user = %record.audit.user(),
                    peer = %self.peer, code = reply.code());
                let close = reply.code() == 421;
                self.reply(reply).await?;
                Ok(close)
            }
        }
    }

    /// Phase 3's side: waits for the commit task and answers with its
    /// outcome. An ABOR meanwhile cannot stop it: it is answered after the
    /// upload's own reply. If the client goes away, the session still waits
    /// (the task logs and records the upload either way), so the upload's
    /// record comes before the session's logout.
    async fn await_commit(
        &mut self,
        mut commit: tokio::task::JoinHandle<Reply>,
        mut quit: bool,
    ) -> std::io::Result<Flow> {
        let mut aborted = false;
        let outcome = loop {
            match self.watch(&mut commit, &mut quit).await {
                Watched::Done(reply) => break Ok(reply),
                Watched::Aborted => aborted = true,
                Watched::Gone(e) => {
                    let _ = commit.await;
                    break Err(e);
                }
            }
        };
        let reply = match outcome {
            Ok(Ok(reply)) => reply,
            // The task panicked or was cancelled by the runtime shutting down.
            Ok(Err(e)) => {
                tracing::error!(error = %e, "upload commit did not finish");
                Reply::local_error("Upload not confirmed; check whether the file is there.")
            }
            Err(None) => return Ok(Flow::Close),
            Err(Some(e)) => return Err(e),
        };
        self.reply(reply).await?;
        if aborted {
            self.reply(Reply::transfer_complete(
                "ABOR: the upload had already ended; its outcome is above.",
            ))
            .await?;
        }
        self.after_transfer(quit).await
    }

    /// A QUIT that came during the transfer is answered now.
    async fn after_transfer(&mut self, quit: bool) -> std::io::Result<Flow> {
        if quit {
            self.reply(Reply::goodbye()).await?;
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    /// Drives `work` to its end while answering the control connection:
    /// NOOP and STAT are answered, QUIT is noted for after the transfer,
    /// ABOR ends the watch, anything else is told to wait.
    async fn watch<F>(&mut self, work: &mut F, quit: &mut bool) -> Watched<F::Output>
    where
        F: std::future::Future + Unpin,
    {
        loop {
            tokio::select! {
                r = &mut *work => return Watched::Done(r),
                line = self.next_line() => {
                    let reply = match line {
                        Ok(Some(Input::Line(l))) => match parse_command(&l) {
                            Ok(Command::Abor) => return Watched::Aborted,
                            Ok(Command::Noop) => Some(Reply::ok("Transfer in progress.")),
                            Ok(Command::Stat(None)) => Some(Reply::new(213, "Transfer in progress.")),
                            Ok(Command::Quit) => {
                                *quit = true;
                                None
                            }
                            _ => Some(Reply::new(450, "Transfer in progress; wait or ABOR.")),
                        },
                        Ok(Some(Input::TooLong)) => Some(Reply::unrecognised("Line too long.")),
                        Ok(None) => return Watched::Gone(None),
                        Err(e) => return Watched::Gone(Some(e)),
                    };
                    if let Some(reply) = reply {
                        if let Err(e) = self.reply(reply).await {
                            return Watched::Gone(Some(e));
                        }
                    }
                }
            }
        }
    }
}

/// Phase 2: opens the data connection (within `timeout`) and moves the
/// job's bytes, a file's at the pace of the session's `throttle`; a
/// connection on which nothing moves for `stall` is given up.
async fn move_bytes(
    plan: DataPlan,
    peer_ip: std::net::IpAddr,
    (timeout, stall): (Duration, Duration),
    tls: Option<DataTls>,
    (job, throttle): (Job, Throttle),
) -> Result<Moved, Reply> {
    let stream = data::open(plan, peer_ip, timeout, tls)
        .await
        .map_err(|e| data_reply(&e))?;
    let mut stream = Stalling::new(stream, stall);
    match job {
        Job::List(listing) => Ok(Moved::Sent {
            bytes: listing.send(&mut stream).await?,
            path: None,
        }),
        Job::Retr(download, path) => Ok(Moved::Sent {
            bytes: send_file(&mut stream, download, &throttle).await?,
            path: Some(path),
        }),
        Job::Store(mut upload, path) => {
            let bytes = receive(&mut stream, &mut upload, &throttle).await?;
            // Answer the client's close_notify with ours (ftplib's
            // unwrap() waits for it); the data is all in by now.
            let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
            Ok(Moved::Received {
                upload,
                path,
                bytes,
            })
        }
    }
}

/// Streams a file to the client in the decryptor's chunks, each once the
/// throttle lets it go; the bytes sent.
async fn send_file(
    stream: &mut Stalling<Stream>,
    mut download: Download,
    throttle: &Throttle,
) -> Result<u64, Reply> {
    let mut sent = 0u64;
    while let Some(chunk) = download
        .next_chunk()
        .await
        .map_err(|e| transfer_reply(&e))?
    {
        throttle.download(chunk.len()).await;
        stream
            .write_all(&chunk)
            .await
            .map_err(|e| transfer_reply(&e))?;
        sent += chunk.len() as u64;
        download.recycle(chunk);
    }
    stream.shutdown().await.map_err(|e| transfer_reply(&e))?;
    Ok(sent)
}

/// Reads the client's data into the upload until its end, each read
/// paid to the throttle before the next; the bytes read.
///
/// Over TLS the end must be a close_notify: a bare TCP close may be a cut
/// by someone on the path, so an upload that ends that way is not
/// committed (its sealed data stays for a resume). The one exception is an
/// upload with no data at all, which some clients (Node's TLS sockets, so
/// basic-ftp) end without close_notify: there is nothing to cut short.
async fn receive(
    stream: &mut Stalling<Stream>,
    upload: &mut Upload,
    throttle: &Throttle,
) -> Result<u64, Reply> {
    let mut received = 0u64;
    loop {
        match upload.read_from(stream).await {
            Ok(0) => return Ok(received),
            Ok(n) => {
                received += n as u64;
                throttle.upload(n).await;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof && stream.get_ref().is_tls() =>
            {
                if received == 0 {
                    return Ok(0);
                }
                tracing::warn!(
                    event = "upload_truncated",
                    received,
                    "TLS data connection ended without close_notify"
                );
                return Err(Reply::transfer_aborted(
                    "Upload ended without TLS close_notify, so it may have been cut short: \
                     not stored. Resume it or send it again.",
                ));
            }
            // The upload's worker may have stopped it (the staging bound,
            // a failed re-seal): say why, not that the connection broke.
            Err(e) => {
                return Err(match upload.failure() {
                    Some(v) => vault_reply(&v),
                    None => transfer_reply(&e),
                })
            }
        }
    }
}

/// Phase 3: commits an upload that reached its end of data, logs and
/// records the outcome, and returns the reply for it once the upload's
/// worker has let go of the staging file (so the client's next upload of
/// the same name is not told the file is busy). Runs as a task of its own,
/// so nothing the client does can stop it half-way.
async fn commit_upload(
    upload: Upload,
    path: VPath,
    received: u64,
    record: Record,
    (exited, timeout): (Option<UploadExited>, Duration),
) -> Reply {
    let Record { audit, started } = record;
    let secs = started.elapsed().as_secs_f64();
    let committed = audit.commit(&path, upload, received, secs).await;
    if let Some(exited) = exited {
        let _ = tokio::time::timeout(timeout, exited.wait()).await;
    }
    match committed {
        Ok(size) => Reply::transfer_complete(format!(
            "Transfer complete: {received} bytes received, file sealed ({size} bytes)."
        )),
        Err(e) => {
            let reply = vault_reply(&e);
            tracing::info!(event = "transfer_failed", user = %audit.user(),
                peer = %audit.peer().addr, path = %path, code = reply.code());
            reply
        }
    }
}
