//! Random-access reads of one stored file, as SFTP's READ wants them: any
//! offset, any order, several at once — the vault's [`ReadFile`], whose
//! reads may run concurrently. Kept as the one place that knows how a READ
//! reaches storage.

use dropvault_core::vault::{ReadFile, UserVault, VPath, VaultError};

/// One file open for reading.
#[derive(Debug)]
pub(crate) struct Source {
    file: ReadFile,
}

impl Source {
    /// Opens `p`: a stored file whose header opens under the user's key
    /// (a folder is [`VaultError::IsADirectory`]).
    pub(crate) async fn open(vault: &UserVault, p: &VPath) -> Result<Self, VaultError> {
        Ok(Self {
            file: vault.open_read(p).await?,
        })
    }

    /// Plaintext length.
    pub(crate) fn len(&self) -> u64 {
        self.file.len()
    }

    /// Up to `len` bytes from `offset`; fewer only at the end of the file,
    /// none at or past it. Reads of one handle run in parallel.
    pub(crate) async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, VaultError> {
        self.file.read_at(offset, len.min(ReadFile::MAX_READ)).await
    }
}
