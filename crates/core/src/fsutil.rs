//! File-system helpers shared by the key store, the users file and the vault.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes a folder's entries durable: after creating, renaming or removing a
/// file in `dir`, so the change survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
