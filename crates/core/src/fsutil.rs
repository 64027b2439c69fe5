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

/// Whether `path` names the very file open as `file` (same device and
/// inode; a link at `path` is not followed). `false` if nothing is there.
pub(crate) fn names(path: &Path, file: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the file open as `file` the new name `to`, which must be free
/// (`AlreadyExists` otherwise): a hard link made through `/proc/self/fd`,
/// so it is this file that gets the name, whatever its old name names by
/// now. A file that no name links to any more cannot get one (`NotFound`).
pub(crate) fn link_open_file(file: &File, to: &Path) -> io::Result<()> {
    use nix::fcntl::AT_FDCWD;
    use std::os::fd::AsRawFd;
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        AT_FDCWD,
        from.as_str(),
        AT_FDCWD,
        to,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}
