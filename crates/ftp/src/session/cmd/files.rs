//! PWD CWD CDUP MKD RMD DELE RNFR RNTO SIZE MDTM: names and metadata.

use std::sync::Arc;

use dropvault_core::session::LoggedIn;
use dropvault_core::vault::{EntryKind, UserVault, VPath, VaultError};

use crate::proto::{mdtm, Reply, SetTime};
use crate::session::errors::vault_reply;
use crate::session::Session;

/// Unwraps a `Result<_, Reply>`, answering with the reply on error.
macro_rules! or_reply {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return reply,
        }
    };
}
pub(crate) use or_reply;

impl Session {
    /// The logged-in user's vault and `arg` resolved against their current
    /// folder.
    pub(crate) fn target(&mut self, arg: &str) -> Result<(UserVault, VPath), Reply> {
        let u = self
            .user()
            .ok_or_else(|| Reply::not_logged_in("Not logged in."))?;
        let p = VPath::resolve(&u.cwd, arg).map_err(|e| vault_reply(&e))?;
        Ok((u.user.vault().clone(), p))
    }

    /// The logged-in user and `arg` resolved against their current folder,
    /// for a change the core records (delete, rename, folders).
    pub(crate) fn acting(&mut self, arg: &str) -> Result<(Arc<LoggedIn>, VPath), Reply> {
        let u = self
            .user()
            .ok_or_else(|| Reply::not_logged_in("Not logged in."))?;
        let p = VPath::resolve(&u.cwd, arg).map_err(|e| vault_reply(&e))?;
        Ok((u.user.clone(), p))
    }

    pub(crate) fn cmd_pwd(&mut self) -> Reply {
        match self.user() {
            Some(u) => Reply::path(&u.cwd.to_string(), "is the current folder."),
            None => Reply::not_logged_in("Not logged in."),
        }
    }

    pub(crate) async fn cmd_cwd(&mut self, arg: &str) -> Reply {
        let (v, p) = or_reply!(self.target(arg));
        match v.stat(&p).await {
            Ok(e) if e.kind == EntryKind::Dir => {
                let text = format!("Folder is now {p}.");
                if let Some(u) = self.user() {
                    u.cwd = p;
                }
                Reply::file_action_ok(text)
            }
            Ok(_) => vault_reply(&VaultError::NotADirectory),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_mkd(&mut self, arg: &str) -> Reply {
        let (u, p) = or_reply!(self.acting(arg));
        match u.mkdir(&p).await {
            Ok(()) => Reply::path(&p.to_string(), "created."),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_rmd(&mut self, arg: &str) -> Reply {
        let (u, p) = or_reply!(self.acting(arg));
        match u.rmdir(&p).await {
            Ok(()) => Reply::file_action_ok("Folder removed."),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_dele(&mut self, arg: &str) -> Reply {
        let (u, p) = or_reply!(self.acting(arg));
        match u.remove(&p).await {
            Ok(()) => Reply::file_action_ok("File deleted."),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_rnfr(&mut self, arg: &str) -> Reply {
        let (v, p) = or_reply!(self.target(arg));
        match v.stat(&p).await {
            Ok(_) => {
                self.rename_from = Some(p);
                Reply::pending("Ready for RNTO.")
            }
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_rnto(&mut self, arg: &str) -> Reply {
        let Some(from) = self.rename_from.take() else {
            return Reply::bad_sequence("Send RNFR first.");
        };
        let (u, to) = or_reply!(self.acting(arg));
        match u.rename(&from, &to).await {
            Ok(()) => Reply::file_action_ok("Renamed."),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_size(&mut self, arg: &str) -> Reply {
        let (v, p) = or_reply!(self.target(arg));
        match v.size(&p).await {
            Ok(n) => Reply::file_status(n.to_string()),
            Err(e) => vault_reply(&e),
        }
    }

    /// MDTM: a file's time; with `set` (the set-time form), sets it when
    /// the whole argument names no file.
    pub(crate) async fn cmd_mdtm(&mut self, arg: &str, set: Option<SetTime>) -> Reply {
        let (v, p) = or_reply!(self.target(arg));
        match (v.stat(&p).await, set) {
            (Ok(e), _) if e.kind == EntryKind::File => Reply::file_status(mdtm(e.modified)),
            (Ok(_), _) => vault_reply(&VaultError::IsADirectory),
            (Err(VaultError::NotFound), Some(set)) => self.cmd_mfmt(set).await,
            (Err(e), _) => vault_reply(&e),
        }
    }

    /// MFMT: sets a file's (or folder's) modification time; answers
    /// `213 Modify=YYYYMMDDHHMMSS; path` with the time now stored.
    pub(crate) async fn cmd_mfmt(&mut self, set: SetTime) -> Reply {
        let (v, p) = or_reply!(self.target(&set.path));
        match v.set_modified(&p, set.time).await {
            Ok(e) => {
                tracing::info!(event = "set_time", user = v.user(), path = %p, time = mdtm(e.modified));
                Reply::file_status(format!("Modify={}; {}", mdtm(e.modified), set.path))
            }
            Err(e) => vault_reply(&e),
        }
    }
}
