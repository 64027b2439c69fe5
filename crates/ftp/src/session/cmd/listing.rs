//! LIST NLST MLSD (over the data channel), MLST and STAT (on the control
//! channel). Sizes are plaintext sizes, computed without reading files.

use std::time::SystemTime;

use dropvault_core::vault::{Entry, EntryKind, VPath};

use crate::proto::{list_line, mlsx_cdir, mlsx_facts, Fact, Reply};
use crate::session::cmd::files::or_reply;
use crate::session::errors::vault_reply;
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

impl Session {
    /// The entries a listing of `arg` shows: a folder's contents, or a
    /// single file.
    async fn entries(&mut self, arg: Option<&str>) -> Result<(VPath, Entry, Vec<Entry>), Reply> {
        let (v, p) = self.target(arg.unwrap_or(""))?;
        let me = v.stat(&p).await.map_err(|e| vault_reply(&e))?;
        if me.kind == EntryKind::File {
            return Ok((p, me.clone(), vec![me]));
        }
        let list = v.list(&p).await.map_err(|e| vault_reply(&e))?;
        Ok((p, me, list))
    }

    pub(crate) async fn cmd_list(
        &mut self,
        arg: Option<String>,
        kind: Kind,
    ) -> std::io::Result<Flow> {
        let (_, me, entries) = match self.entries(arg.as_deref()).await {
            Ok(x) => x,
            Err(r) => {
                self.reply(r).await?;
                return Ok(Flow::Continue);
            }
        };
        let owner = self
            .user()
            .map(|u| u.vault.user().to_owned())
            .unwrap_or_default();
        let now = SystemTime::now();
        let mut text = String::new();
        if kind == Kind::Mlsd {
            text.push_str(&mlsx_cdir(&Fact::dir(".", me.modified)));
            text.push_str("\r\n");
        }
        for e in &entries {
            let line = match kind {
                Kind::List => list_line(&fact(e), &owner, now),
                Kind::Nlst => e.name.clone(),
                Kind::Mlsd => mlsx_facts(&fact(e)),
            };
            text.push_str(&line);
            text.push_str("\r\n");
        }
        self.run_transfer(super::transfer::Job::Send(text.into_bytes()))
            .await
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
    /// on the control connection.
    pub(crate) async fn cmd_stat(&mut self, arg: Option<String>) -> Reply {
        let Some(arg) = arg else {
            let user = self
                .user()
                .map(|u| u.vault.user().to_owned())
                .unwrap_or_else(|| "(not logged in)".into());
            return Reply::multi(
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
            );
        };
        let (_, _, entries) = match self.entries(Some(&arg)).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let owner = self
            .user()
            .map(|u| u.vault.user().to_owned())
            .unwrap_or_default();
        let now = SystemTime::now();
        let mut lines = vec![format!("Status of {arg}:")];
        lines.extend(entries.iter().map(|e| list_line(&fact(e), &owner, now)));
        lines.push("End of status".to_owned());
        Reply::multi(213, lines)
    }
}
