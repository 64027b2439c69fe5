//! RETR STOR APPE STOU, listings' data transfer, and ABOR while a transfer
//! runs. Bytes stream socket → encryptor → staging file on the way in and
//! file → decryptor → socket on the way out, in large buffers.

use std::time::Instant;

use dropvault_core::events::Event;
use dropvault_core::vault::{Download, Upload, UploadMode, VPath, VaultError};
use tokio::io::AsyncWriteExt;

use crate::config::TlsMode;
use crate::proto::{parse_command, Command, Reply};
use crate::session::data::{self, DataPlan, DataTls};
use crate::session::errors::{data_reply, transfer_reply, vault_reply};
use crate::session::{Flow, Input, Session};

/// Which upload verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    Stor,
    Appe,
}

/// How watching a transfer ended.
enum Watched<T> {
    /// The transfer finished (or failed) by itself.
    Done(T),
    /// The client sent ABOR.
    Aborted,
    /// The control connection is gone (with the error, if one).
    Gone(Option<std::io::Error>),
}

/// What a data transfer moves.
pub(crate) enum Job {
    /// Bytes already in memory (listings).
    Send(Vec<u8>),
    /// A file to the client.
    Retr(Download, VPath),
    /// A file from the client.
    Store(Upload, VPath),
}

/// How a transfer ended.
enum Done {
    Sent(u64),
    Stored(u64, u64),
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
        self.store(arg, verb, None).await
    }

    /// STOR, APPE and STOU; `unique` is the name STOU picked, announced in
    /// the 150 reply as RFC 1123 asks.
    async fn store(
        &mut self,
        arg: &str,
        verb: Store,
        unique: Option<String>,
    ) -> std::io::Result<Flow> {
        let offset = std::mem::take(&mut self.rest);
        let (v, p) = match self.target(arg) {
            Ok(x) => x,
            Err(r) => return self.reply(r).await.map(|()| Flow::Continue),
        };
        let mode = match (verb, offset) {
            (Store::Appe, _) => UploadMode::Append,
            (Store::Stor, 0) => UploadMode::Replace,
            (Store::Stor, n) => UploadMode::Resume(n),
        };
        // Refuse before touching the staging file.
        if let Some(refusal) = self.data_refusal() {
            return self.reply(refusal).await.map(|()| Flow::Continue);
        }
        let opening = match unique {
            Some(name) => Reply::opening_data_named(&name),
            None => Reply::opening_data(),
        };
        match v.upload(&p, mode).await {
            Ok(up) => self.run_transfer_with(Job::Store(up, p), opening).await,
            Err(e) => self.reply(vault_reply(&e)).await.map(|()| Flow::Continue),
        }
    }

    /// STOU: store under a new name the server picks in the current folder.
    pub(crate) async fn cmd_stou(&mut self) -> std::io::Result<Flow> {
        self.rest = 0;
        let r = dropvault_core::random_hex(6).unwrap_or_else(|_| "0".repeat(12));
        let name = format!("upload-{r}");
        self.store(&name, Store::Stor, Some(name.clone())).await
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

    /// Makes the data connection, runs the job, and answers the control
    /// connection meanwhile: ABOR cancels the transfer (an upload is then
    /// not committed), STAT and NOOP are answered, anything else waits.
    pub(crate) async fn run_transfer(&mut self, job: Job) -> std::io::Result<Flow> {
        self.run_transfer_with(job, Reply::opening_data()).await
    }

    /// [`Session::run_transfer`] with a given 150 reply.
    async fn run_transfer_with(&mut self, mut job: Job, opening: Reply) -> std::io::Result<Flow> {
        if let Some(refusal) = self.data_refusal() {
            self.reply(refusal).await?;
            return Ok(Flow::Continue);
        }
        let plan = std::mem::take(&mut self.data);
        let tls = match (&self.tls, self.prot_private) {
            (Some(session_tls), true) => Some(DataTls {
                config: session_tls.data(!matches!(job, Job::Store(..))),
                require_resumption: self.shared.config.tls_session_reuse_required,
            }),
            _ => None,
        };
        let peer_ip = self.peer.ip();
        let timeout = self.shared.config.data_timeout;
        let user = self
            .user()
            .map(|u| u.vault.user().to_owned())
            .unwrap_or_default();
        let peer = self.peer;
        let events = self.shared.services.events.clone();
        let rejected_by = (user.clone(), events.clone());
        self.reply(opening).await?;

        let exited = match &mut job {
            Job::Store(upload, _) => Some(upload.exit_signal()),
            _ => None,
        };
        let started = Instant::now();
        let work = async move {
            let mut stream = data::open(plan, peer_ip, timeout, tls)
                .await
                .map_err(|e| data_reply(&e))?;
            match job {
                Job::Send(bytes) => {
                    stream
                        .write_all(&bytes)
                        .await
                        .map_err(|e| transfer_reply(&e))?;
                    stream.shutdown().await.map_err(|e| transfer_reply(&e))?;
                    Ok((Done::Sent(bytes.len() as u64), None))
                }
                Job::Retr(mut download, path) => {
                    let mut sent = 0u64;
                    while let Some(chunk) = download
                        .next_chunk()
                        .await
                        .map_err(|e| transfer_reply(&e))?
                    {
                        stream
                            .write_all(&chunk)
                            .await
                            .map_err(|e| transfer_reply(&e))?;
                        sent += chunk.len() as u64;
                        download.recycle(chunk);
                    }
                    stream.shutdown().await.map_err(|e| transfer_reply(&e))?;
                    Ok((Done::Sent(sent), Some(path)))
                }
                Job::Store(mut upload, path) => {
                    let mut received = 0u64;
                    loop {
                        // A TLS data connection that ends without
                        // close_notify reads as an error here, so a
                        // truncated upload is never committed.
                        let n = upload
                            .read_from(&mut stream)
                            .await
                            .map_err(|e| transfer_reply(&e))?;
                        if n == 0 {
                            break;
                        }
                        received += n as u64;
                    }
                    // Answer the client's close_notify with ours (ftplib's
                    // unwrap() waits for it); the data is all in by now.
                    let _ = stream.shutdown().await;
                    let size = match upload.commit().await {
                        Ok(size) => size,
                        Err(e) => {
                            if let VaultError::Rejected { finding, size } = &e {
                                let (user, events) = rejected_by;
                                tracing::warn!(event = "upload_rejected", user = %user, %peer,
                                    path = %path, size, signature = %finding);
                                events.emit(
                                    Event::new("upload_rejected")
                                        .user(user)
                                        .peer(peer)
                                        .path(&path)
                                        .size(*size)
                                        .finding(finding.clone()),
                                );
                            }
                            return Err(vault_reply(&e));
                        }
                    };
                    Ok((Done::Stored(received, size), Some(path)))
                }
            }
        };
        let mut work = Box::pin(work);

        let mut quit = false;
        let watched = loop {
            tokio::select! {
                r = &mut work => break Watched::Done(r),
                line = self.next_line() => {
                    let reply = match line {
                        Ok(Some(Input::Line(l))) => match parse_command(&l) {
                            Ok(Command::Abor) => break Watched::Aborted,
                            Ok(Command::Noop) => Some(Reply::ok("Transfer in progress.")),
                            Ok(Command::Stat(None)) => Some(Reply::new(213, "Transfer in progress.")),
                            Ok(Command::Quit) => {
                                // Finish the transfer first, then say goodbye.
                                quit = true;
                                None
                            }
                            _ => Some(Reply::new(450, "Transfer in progress; wait or ABOR.")),
                        },
                        Ok(Some(Input::TooLong)) => Some(Reply::unrecognised("Line too long.")),
                        // The client is gone: the transfer (and an upload's
                        // commit) is abandoned.
                        Ok(None) => break Watched::Gone(None),
                        Err(e) => break Watched::Gone(Some(e)),
                    };
                    if let Some(reply) = reply {
                        if let Err(e) = self.reply(reply).await {
                            break Watched::Gone(Some(e));
                        }
                    }
                }
            }
        };
        // An abandoned upload's worker writes out what it sealed; the
        // session answers (or ends, and logs out) only once the staging
        // file is complete and free, so a client that comes back at once
        // finds the resume point and can take the file.
        drop(work);
        if let Some(exited) = exited {
            let _ = tokio::time::timeout(self.shared.config.data_timeout, exited.wait()).await;
        }
        let outcome: Option<Result<(Done, Option<VPath>), Reply>> = match watched {
            Watched::Done(r) => Some(r),
            Watched::Aborted => None,
            Watched::Gone(None) => return Ok(Flow::Close),
            Watched::Gone(Some(e)) => return Err(e),
        };

        let secs = started.elapsed().as_secs_f64();
        match outcome {
            None => {
                tracing::info!(event = "transfer_aborted", user = %user, %peer);
                self.reply(Reply::transfer_aborted("Transfer aborted."))
                    .await?;
                self.reply(Reply::transfer_complete("ABOR successful."))
                    .await?;
            }
            Some(Ok((Done::Sent(n), path))) => {
                if let Some(path) = path {
                    tracing::info!(event = "download", user = %user, %peer, path = %path, bytes = n, secs);
                    events.emit(
                        Event::new("download")
                            .user(&user)
                            .peer(peer)
                            .path(&path)
                            .size(n),
                    );
                }
                self.reply(Reply::transfer_complete(format!(
                    "Transfer complete, {n} bytes."
                )))
                .await?;
            }
            Some(Ok((Done::Stored(received, size), path))) => {
                let path = path.map(|p| p.to_string()).unwrap_or_default();
                tracing::info!(event = "upload", user = %user, %peer, path = %path,
                    bytes = received, size, secs);
                events.emit(
                    Event::new("upload")
                        .user(&user)
                        .peer(peer)
                        .path(path)
                        .size(size),
                );
                self.reply(Reply::transfer_complete(format!(
                    "Transfer complete: {received} bytes received, file sealed ({size} bytes)."
                )))
                .await?;
            }
            Some(Err(reply)) => {
                tracing::info!(event = "transfer_failed", user = %user, %peer, code = reply.code());
                self.reply(reply).await?;
            }
        }
        if quit {
            self.reply(Reply::goodbye()).await?;
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }
}
