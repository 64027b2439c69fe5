//! A stand-in for `dropvault_core::session::LoggedIn` (the logged-in user
//! with audit events) until it lands in core: the same method names, over
//! a bare [`UserVault`], without events. Switching is replacing this
//! module's import.

use dropvault_core::vault::{Upload, UserVault, VPath, VaultError};

/// A logged-in user.
#[derive(Debug)]
pub struct LoggedIn {
    vault: UserVault,
}

impl LoggedIn {
    /// The user of `vault`, logged in.
    pub fn new(vault: UserVault) -> Self {
        Self { vault }
    }

    /// The user's name.
    pub fn user(&self) -> &str {
        self.vault.user()
    }

    /// The user's files.
    pub fn vault(&self) -> &UserVault {
        &self.vault
    }

    /// Deletes file `p`.
    pub async fn remove(&self, p: &VPath) -> Result<(), VaultError> {
        self.vault.remove(p).await
    }

    /// Renames `from` to `to`, replacing a file at `to`.
    pub async fn rename(&self, from: &VPath, to: &VPath) -> Result<(), VaultError> {
        self.vault.rename(from, to).await
    }

    /// Creates folder `p`.
    pub async fn mkdir(&self, p: &VPath) -> Result<(), VaultError> {
        self.vault.mkdir(p).await
    }

    /// Removes the empty folder `p`.
    pub async fn rmdir(&self, p: &VPath) -> Result<(), VaultError> {
        self.vault.rmdir(p).await
    }

    /// Commits `upload` to `p`.
    pub async fn commit(&self, p: &VPath, upload: Upload) -> Result<u64, VaultError> {
        let _ = p;
        upload.commit().await
    }

    /// Records that `bytes` of `p` were read.
    pub fn downloaded(&self, p: &VPath, bytes: u64) {
        tracing::debug!(path = %p, bytes, "download");
    }
}
