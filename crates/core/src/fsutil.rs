//! File-system helpers shared by the key store, the users file and the vault.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes a folder's entries durable: after creating, renaming or removing a
/// file in `dir`, so the change survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` only if nothing is at `to`, atomically (Linux
/// `renameat2` with `RENAME_NOREPLACE`): `AlreadyExists` otherwise.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
}
