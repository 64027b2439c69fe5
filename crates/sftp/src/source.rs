//! Random-access reads of one stored file, as SFTP's READ wants them: any
//! offset, any order, several at once.
//!
//! Until the vault offers `UserVault::open_read` (random access), this
//! serves reads from a forward [`Download`]: reads that go forward (the
//! usual pipelined pattern) continue it, skipping small gaps; a read
//! behind it, or far ahead, opens a new one at that offset. Reads of one
//! handle take turns. This is the only place that changes when
//! `open_read` lands.

use dropvault_core::vault::{Download, EntryKind, UserVault, VPath, VaultError};
use tokio::sync::Mutex;

/// A gap between reads that is read through rather than reopened.
const SKIP_LIMIT: u64 = 4 << 20;

/// One file open for reading.
#[derive(Debug)]
pub(crate) struct Source {
    vault: UserVault,
    path: VPath,
    len: u64,
    at: Mutex<Position>,
}

#[derive(Debug, Default)]
struct Position {
    /// The download and the plaintext offset it is at.
    download: Option<(Download, u64)>,
    /// Bytes read from the download and not handed out yet (at the
    /// position, before the download's own).
    left: Vec<u8>,
}

impl Source {
    /// Opens `p`, checking that it is a stored file whose header opens
    /// under the user's key.
    pub(crate) async fn open(vault: &UserVault, p: &VPath) -> Result<Self, VaultError> {
        let entry = vault.stat(p).await?;
        if entry.kind == EntryKind::Dir {
            return Err(VaultError::IsADirectory);
        }
        let download = vault.download(p, 0).await?;
        Ok(Self {
            vault: vault.clone(),
            path: p.clone(),
            len: download.len(),
            at: Mutex::new(Position {
                download: Some((download, 0)),
                left: Vec::new(),
            }),
        })
    }

    /// Plaintext length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `len` bytes from `offset`; fewer only at the end of the file,
    /// none at or past it.
    pub(crate) async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, VaultError> {
        if offset >= self.len || len == 0 {
            return Ok(Vec::new());
        }
        let want = usize::try_from(self.len - offset).map_or(len, |rest| rest.min(len));
        let mut at = self.at.lock().await;
        let reuse =
            matches!(&at.download, Some((_, pos)) if *pos <= offset && offset - *pos <= SKIP_LIMIT);
        if !reuse {
            let download = self.vault.download(&self.path, offset).await?;
            at.download = Some((download, offset));
            at.left.clear();
        }
        let Position { download, left } = &mut *at;
        let Some((download, pos)) = download.as_mut() else {
            return Err(VaultError::NotFound);
        };
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            if left.is_empty() {
                match download.next_chunk().await {
                    Ok(Some(chunk)) => *left = chunk,
                    Ok(None) => break,
                    Err(e) => {
                        // Start over at the next read.
                        *pos = u64::MAX;
                        return Err(io_to_vault(e));
                    }
                }
            }
            // Skip what lies before `offset`, then take what is wanted.
            let skip = usize::try_from(offset.saturating_sub(*pos)).unwrap_or(usize::MAX);
            let skip = skip.min(left.len());
            let take = (want - out.len()).min(left.len() - skip);
            out.extend_from_slice(&left[skip..skip + take]);
            left.drain(..skip + take);
            *pos += (skip + take) as u64;
        }
        Ok(out)
    }
}

/// A download error as the vault names it: a stored file that failed
/// authentication is [`VaultError::Format`], anything else storage.
fn io_to_vault(e: std::io::Error) -> VaultError {
    if dropvault_format::Error::from_io(&e).is_some() {
        VaultError::Format(dropvault_format::Error::from_io_owned(e))
    } else {
        VaultError::Io(e)
    }
}
