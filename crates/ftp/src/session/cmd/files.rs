//! PWD CWD CDUP MKD RMD DELE RNFR RNTO SIZE MDTM: names and metadata.

use dropvault_core::vault::{EntryKind, VPath, VaultError};

use crate::proto::{mdtm, Reply};
use crate::session::errors::vault_reply;
use crate::session::Session;

impl Session {
    /// Resolves a client path against the current folder.
    pub(crate) fn resolve(&mut self, arg: &str) -> Result<VPath, Reply> {
        let user = self
            .user()
            .ok_or_else(|| Reply::not_logged_in("Not logged in."))?;
        VPath::resolve(&user.cwd, arg).map_err(|e| vault_reply(&e))
    }

    pub(crate) fn cmd_pwd(&mut self) -> Reply {
        match self.user() {
            Some(u) => Reply::path(&u.cwd.to_string(), "is the current folder."),
            None => Reply::not_logged_in("Not logged in."),
        }
    }

    pub(crate) async fn cmd_cwd(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.stat(&p).await {
            Ok(e) if e.kind == EntryKind::Dir => {
                u.cwd = p;
                Reply::file_action_ok(format!("Folder is now {}.", u.cwd))
            }
            Ok(_) => vault_reply(&VaultError::NotADirectory),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_mkd(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.mkdir(&p).await {
            Ok(()) => {
                tracing::info!(event = "mkdir", user = u.vault.user(), path = %p);
                Reply::path(&p.to_string(), "created.")
            }
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_rmd(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.rmdir(&p).await {
            Ok(()) => {
                tracing::info!(event = "rmdir", user = u.vault.user(), path = %p);
                Reply::file_action_ok("Folder removed.")
            }
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_dele(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.remove(&p).await {
            Ok(()) => {
                tracing::info!(event = "delete", user = u.vault.user(), path = %p);
                Reply::file_action_ok("File deleted.")
            }
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_rnfr(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.stat(&p).await {
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
        let to = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.rename(&from, &to).await {
            Ok(()) => {
                tracing::info!(event = "rename", user = u.vault.user(), from = %from, to = %to);
                Reply::file_action_ok("Renamed.")
            }
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_size(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.size(&p).await {
            Ok(n) => Reply::file_status(n.to_string()),
            Err(e) => vault_reply(&e),
        }
    }

    pub(crate) async fn cmd_mdtm(&mut self, arg: &str) -> Reply {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(u) = self.user() else {
            return Reply::not_logged_in("Not logged in.");
        };
        match u.vault.stat(&p).await {
            Ok(e) if e.kind == EntryKind::File => Reply::file_status(mdtm(e.modified)),
            Ok(_) => vault_reply(&VaultError::IsADirectory),
            Err(e) => vault_reply(&e),
        }
    }
}
