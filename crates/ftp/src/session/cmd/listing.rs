//! LIST NLST MLSD (over the data channel), MLST and STAT (on the control
//! channel). Sizes are plaintext sizes, computed without reading files.
//!
//! Listings stream: entries are read from storage, formatted and sent a
//! batch at a time, so a listing holds one batch however large the folder,
//! in the order storage keeps them (sorting would need the whole folder).
//! A listing shows at most `max_listing_entries` entries; a folder with
//! more gets that many, then a final reply that says the listing was cut:
//! 550 after LIST, NLST and MLSD (so that clients and sync tools, which
//! take a 226 for a complete listing, do not act on a partial one; a 4xx
//! would have them retry a listing that cannot succeed, as lftp does), a
//! note in the last line of a STAT reply (which must keep its 213).

use std::time::SystemTime;

use dropvault_core::vault::{Entry, EntryKind, Listing, VaultError};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::proto::{list_line, mlsx_cdir, mlsx_facts, Fact, Reply};
use crate::session::cmd::files::or_reply;
use crate::session::errors::{transfer_reply, vault_reply};
use crate::session::{Flow, Session};

/// Which listing the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    List,
    Nlst,
    Mlsd,
}

fn fact(e: &Entry) -> Fact {
    match e.kind {
        EntryKind::Dir => Fact::dir(e.name.clone(), e.modified),
        EntryKind::File => Fact::file(e.name.clone(), e.size, e.modified),
    }
}

/// The entries a listing shows, read as it goes, and at most `cap` of them.
pub(crate) struct Entries {
    /// The folder being read; `None` for a single file, or once done.
    folder: Option<Listing>,
    /// The file a listing of a file shows, until it is taken.
    file: Option<Entry>,
    /// Entries shown so far.
    shown: usize,
    cap: usize,
    /// The folder had more than `cap` entries.
    truncated: bool,
}

impl Entries {
    /// The next entries; empty at the end, and after the cap.
    async fn next_batch(&mut self) -> Result<Vec<Entry>, VaultError> {
        if let Some(file) = self.file.take() {
            return Ok(vec![file]);
        }
        let Some(folder) = &mut self.folder else {
            return Ok(Vec::new());
        };
        let mut batch = folder.next_batch().await?;
        let room = self.cap - self.shown;
        if batch.len() > room {
            batch.truncate(room);
            self.truncated = true;
        }
        if batch.is_empty() || self.truncated {
            self.folder = None;
        }
        self.shown += batch.len();
        Ok(batch)
    }

    /// The note that says a listing was cut at the cap.
    fn cut_note(&self) -> String {
        format!(
            "Listing stopped after {} entries: the folder has more. List a subfolder, \
             or ask the operator to raise ftp.max_listing_entries.",
            self.cap
        )
    }
}

/// A listing on its way over the data connection.
pub(crate) struct ListJob {
    kind: Kind,
    entries: Entries,
    /// The listed folder itself (or the file), for MLSD's `cdir` line.
    me: Entry,
    owner: String,
    now: SystemTime,
}

impl ListJob {
    /// One entry's line, without its terminator.
    fn line(&self, e: &Entry) -> String {
        match self.kind {
            Kind::List => list_line(&fact(e), &self.owner, self.now),
            Kind::Nlst => e.name.clone(),
            Kind::Mlsd => mlsx_facts(&fact(e)),
        }
    }

    /// Streams the listing to `out` and closes it; the bytes sent. A
    /// listing cut at the cap, or one that storage fails part-way, is an
    /// error reply, sent after the data connection is closed.
    pub(crate) async fn send<W: AsyncWrite + Unpin>(mut self, out: &mut W) -> Result<u64, Reply> {
        let mut text = String::new();
        if self.kind == Kind::Mlsd {
            text.push_str(&mlsx_cdir(&Fact::dir(".", self.me.modified)));
            text.push_str("\r\n");
        }
        let mut sent = 0u64;
        loop {
            let batch = self
                .entries
                .next_batch()
                .await
                .map_err(|e| vault_reply(&e))?;
            for e in &batch {
                text.push_str(&self.line(e));
                text.push_str("\r\n");
            }
            out.write_all(text.as_bytes())
                .await
                .map_err(|e| transfer_reply(&e))?;
            sent += text.len() as u64;
            text.clear();
            if batch.is_empty() {
                break;
            }
        }
        out.shutdown().await.map_err(|e| transfer_reply(&e))?;
        if self.entries.truncated {
            return Err(Reply::new(550, self.entries.cut_note()));
        }
        Ok(sent)
    }
}

impl Session {
    /// The entries a listing of `arg` shows — a folder's contents, or a
    /// single file — and the folder (or file) itself.
    async fn entries(&mut self, arg: Option<&str>) -> Result<(Entries, Entry), Reply> {
        let (v, p) = self.target(arg.unwrap_or(""))?;
        let me = v.stat(&p).await.map_err(|e| vault_reply(&e))?;
        let (folder, file) = match me.kind {
            EntryKind::File => (None, Some(me.clone())),
            EntryKind::Dir => (Some(v.list(&p).await.map_err(|e| vault_reply(&e))?), None),
        };
        let entries = Entries {
            folder,
            file,
            shown: 0,
            cap: self.shared.config.max_listing_entries,
            truncated: false,
        };
        Ok((entries, me))
    }

    /// The logged-in user's name, as listings show the owner.
    fn owner(&mut self) -> String {
        self.user()
            .map(|u| u.user.user().to_owned())
            .unwrap_or_default()
    }

    pub(crate) async fn cmd_list(
        &mut self,
        arg: Option<String>,
        kind: Kind,
    ) -> std::io::Result<Flow> {
        let (entries, me) = match self.entries(arg.as_deref()).await {
            Ok(x) => x,
            Err(r) => {
                self.reply(r).await?;
                return Ok(Flow::Continue);
            }
        };
        let job = ListJob {
            kind,
            entries,
            me,
            owner: self.owner(),
            now: SystemTime::now(),
        };
        self.run_transfer(super::transfer::Job::List(job)).await
    }

    pub(crate) async fn cmd_mlst(&mut self, arg: Option<String>) -> Reply {
        let (v, p) = or_reply!(self.target(arg.as_deref().unwrap_or("")));
        match v.stat(&p).await {
            Ok(mut e) => {
                e.name = p.to_string();
                Reply::multi(
                    250,
                    [
                        format!("Listing {p}"),
                        mlsx_facts(&fact(&e)),
                        "End".to_owned(),
                    ],
                )
            }
            Err(e) => vault_reply(&e),
        }
    }

    /// STAT without an argument: the session's state. With one: a listing
    /// on the control connection, sent a batch of lines at a time.
    pub(crate) async fn cmd_stat(&mut self, arg: Option<String>) -> std::io::Result<Flow> {
        let Some(arg) = arg else {
            let reply = self.status();
            return self.reply(reply).await.map(|()| Flow::Continue);
        };
        let (mut entries, _) = match self.entries(Some(&arg)).await {
            Ok(x) => x,
            Err(r) => return self.reply(r).await.map(|()| Flow::Continue),
        };
        let (owner, now) = (self.owner(), SystemTime::now());
        let mut text = Reply::multi_start(213, &format!("Status of {arg}:"));
        let last = loop {
            let batch = match entries.next_batch().await {
                Ok(batch) => batch,
                Err(e) => {
                    // The reply has begun, so it ends as a 213; what went
                    // wrong goes to the log.
                    tracing::error!(error = %e, "STAT listing failed part-way");
                    break "End of status: the listing failed part-way.".to_owned();
                }
            };
            if batch.is_empty() {
                break if entries.truncated {
                    format!("End of status. {}", entries.cut_note())
                } else {
                    "End of status".to_owned()
                };
            }
            for e in &batch {
                text.push_str(&Reply::multi_middle(&list_line(&fact(e), &owner, now)));
            }
            self.send_control(text.as_bytes()).await?;
            text.clear();
        };
        self.send_control(text.as_bytes()).await?;
        self.reply(Reply::new(213, last)).await?;
        Ok(Flow::Continue)
    }

    /// The session's state, for STAT without an argument.
    fn status(&mut self) -> Reply {
        let user = self
            .user()
            .map(|u| u.user.user().to_owned())
            .unwrap_or_else(|| "(not logged in)".into());
        Reply::multi(
            211,
            [
                "dropvault status:".to_owned(),
                format!("Connected from {}", self.peer.ip()),
                format!("Logged in as {user}"),
                format!(
                    "Control connection {}; data connections {}",
                    if self.control.is_tls() {
                        "TLS"
                    } else {
                        "plain"
                    },
                    if self.prot_private { "TLS" } else { "plain" }
                ),
                "End of status".to_owned(),
            ],
        )
    }
}
