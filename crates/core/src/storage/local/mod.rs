//! Sealed files in a folder on a POSIX file system.
//!
//! - No name is ever followed through a symbolic link: every component of
//!   a path is checked with `lstat` on the way, and files are opened with
//!   `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO put in storage cannot hang
//!   an open).
//! - A staging file is held with an exclusive `flock`, across processes.
//!   Whoever holds the lock of the file a staging name names is the only
//!   one who changes that name.
//! - A commit gives the very file the upload wrote (through
//!   `/proc/self/fd`) its final name in one atomic rename, after an fsync
//!   of the file and before one of the folder.
//! - Uploads write with `O_DIRECT` where the file system takes it
//!   (`direct.rs`).

mod direct;

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{
    Caps, Commit, Kind, Listed, Lister, Meta, Object, RecordKey, Result, Sink, Staged, Storage,
    StorageError,
};
use crate::fsutil;
use direct::DirectFile;

/// Sealed bytes after which an upload whose writes go through the page
/// cache asks the kernel to start writing them to disk, so that the fsync
/// at commit finds little left to do.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A folder holding everything (see the module).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// The storage under `root`, as it is: nothing is created until
    /// something is stored.
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// [`LocalStorage::open`], creating `root` (mode 0700) if missing.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Self> {
        let me = Self::open(root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&me.root)?;
        Ok(me)
    }

    /// The folder everything is in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `name` is on disk, refusing any existing component that is a
    /// symbolic link and any non-final one that is not a folder; only the
    /// last component may be missing.
    fn real(&self, name: &str) -> Result<PathBuf> {
        let mut real = self.root.clone();
        if name.is_empty() {
            return Ok(real);
        }
        let parts: Vec<&str> = name.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() || *part == "." || *part == ".." || part.contains('\0') {
                return Err(StorageError::Refused);
            }
            real.push(part);
            match fs::symlink_metadata(&real) {
                Ok(m) if m.file_type().is_symlink() => return Err(StorageError::Refused),
                Ok(m) if i + 1 < parts.len() && !m.is_dir() => {
                    return Err(StorageError::NotADirectory)
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound && i + 1 == parts.len() => {}
                Err(e) => return Err(StorageError::from_io(e)),
            }
        }
        Ok(real)
    }
}

fn meta(m: &fs::Metadata) -> Meta {
    let kind = if m.is_file() {
        Kind::File
    } else if m.is_dir() {
        Kind::Dir
    } else if m.file_type().is_symlink() {
        Kind::Other("symbolic link")
    } else {
        Kind::Other("special file")
    };
    Meta {
        kind,
        len: if kind == Kind::File { m.len() } else { 0 },
        modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

/// Opens a stored file for reading, refusing a symbolic link, without
/// blocking on a FIFO.
fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn io_err(e: io::Error) -> StorageError {
    StorageError::from_io(e)
}

/// Splits a name prefix into its folder and the start of file names in it.
fn split_prefix(prefix: &str) -> (&str, &str) {
    prefix.rsplit_once('/').unwrap_or(("", prefix))
}

impl Storage for LocalStorage {
    fn caps(&self) -> Caps {
        Caps {
            staged_readable: true,
            read_ahead: 2,
            whole_chunk_reads: false,
        }
    }

    fn stat(&self, name: &str) -> Result<Meta> {
        let m = fs::symlink_metadata(self.real(name)?).map_err(io_err)?;
        match meta(&m) {
            Meta {
                kind: Kind::Other(_),
                ..
            } => Err(StorageError::Refused),
            ok => Ok(ok),
        }
    }

    fn list(&self, dir: &str) -> Result<Box<dyn Lister>> {
        let dir = fs::read_dir(self.real(dir)?).map_err(io_err)?;
        Ok(Box::new(LocalLister { dir: Some(dir) }))
    }

    fn open(&self, name: &str) -> Result<Box<dyn Object>> {
        let file = open_nofollow(&self.real(name)?).map_err(io_err)?;
        let m = file.metadata()?;
        if m.is_dir() {
            return Err(StorageError::IsADirectory);
        }
        if !m.is_file() {
            return Err(StorageError::Refused);
        }
        Ok(Box::new(LocalObject { file, len: m.len() }))
    }

    /// Keeps no record: the staging file is its own, read back and checked
    /// when continued.
    fn stage(&self, name: &str, _key: &Arc<dyn RecordKey>) -> Result<Box<dyn Staged>> {
        let path = self.real(name)?;
        let lock = lock_staging(&path)?;
        Ok(Box::new(LocalStaged {
            storage: self.clone(),
            path,
            lock,
        }))
    }

    fn remove(&self, name: &str) -> Result<()> {
        let real = self.real(name)?;
        if fs::symlink_metadata(&real).map_err(io_err)?.is_dir() {
            return Err(StorageError::IsADirectory);
        }
        fs::remove_file(&real).map_err(io_err)?;
        Ok(sync_parent(&real)?)
    }

    fn mkdir(&self, name: &str) -> Result<()> {
        let real = self.real(name)?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&real)
            .map_err(io_err)?;
        Ok(sync_parent(&real)?)
    }

    fn rmdir(&self, name: &str) -> Result<()> {
        let real = self.real(name)?;
        if !fs::symlink_metadata(&real).map_err(io_err)?.is_dir() {
            return Err(StorageError::NotADirectory);
        }
        fs::remove_dir(&real).map_err(io_err)?;
        Ok(sync_parent(&real)?)
    }

    fn rename(&self, from: &str, to: &str, how: Commit) -> Result<()> {
        let src = self.real(from)?;
        let dst = self.real(to)?;
        let src_meta = fs::symlink_metadata(&src).map_err(io_err)?;
        if let Ok(m) = fs::symlink_metadata(&dst) {
            if m.is_dir() || src_meta.is_dir() || how == Commit::NoReplace {
                return Err(StorageError::AlreadyExists);
            }
        }
        match how {
            Commit::Replace => fs::rename(&src, &dst),
            Commit::NoReplace => fsutil::rename_noreplace(&src, &dst),
        }
        .map_err(io_err)?;
        sync_parent(&src)?;
        Ok(sync_parent(&dst)?)
    }

    fn set_modified(&self, name: &str, time: SystemTime) -> Result<Meta> {
        // The times go on what was opened, not on whatever the name
        // names afterwards.
        let file = open_nofollow(&self.real(name)?).map_err(io_err)?;
        file.set_modified(time).map_err(io_err)?;
        Ok(meta(&file.metadata()?))
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let real = self.real(name)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&real)
            .map_err(io_err)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(sync_parent(&real)?)
    }

    fn read_small(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let file = open_nofollow(&self.real(name)?).map_err(io_err)?;
        let mut out = Vec::new();
        file.take(max.saturating_add(1)).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(StorageError::Io(io::Error::new(
                ErrorKind::InvalidData,
                "file too large",
            )));
        }
        Ok(out)
    }

    fn remove_tree(&self, dir: &str) -> Result<u64> {
        // A link in `dir`'s place is removed itself, never followed.
        let (parent, last) = dir.rsplit_once('/').unwrap_or(("", dir));
        let real = self.real(parent)?.join(last);
        let removed = match fs::symlink_metadata(&real) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                fs::remove_file(&real)?;
                0
            }
            Ok(_) => {
                let n = count_files(&real)?;
                fs::remove_dir_all(&real)?;
                n
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(e)),
        };
        sync_parent(&real)?;
        Ok(removed)
    }

    fn staged_bytes(&self, prefix: &str) -> u64 {
        let (dir, start) = split_prefix(prefix);
        let Ok(entries) = self.real(dir).and_then(|d| Ok(fs::read_dir(d)?)) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(start)))
            .filter_map(|e| e.metadata().ok())
            .filter(fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    }

    fn expire_staged(&self, prefix: &str, ttl: Duration) -> usize {
        let (dir, start) = split_prefix(prefix);
        let Ok(dir) = self.real(dir) else {
            return 0;
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(start));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ttl);
            if !ours || !old {
                continue;
            }
            // An upload in progress holds its staging file's lock; and
            // what is removed is the file locked, still under that name
            // (an upload may have put another file there meanwhile).
            let path = entry.path();
            let Ok(file) = open_nofollow(&path) else {
                continue;
            };
            if file.try_lock().is_ok()
                && fsutil::names(&path, &file).unwrap_or(false)
                && fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            let _ = fsutil::sync_dir(&dir);
        }
        removed
    }

    fn remove_prefixed(&self, prefix: &str) -> Result<Vec<String>> {
        let (dir, start) = split_prefix(prefix);
        let real = self.real(dir)?;
        let entries = match fs::read_dir(&real) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(start) {
                fs::remove_file(entry.path())?;
                removed.push(name);
            }
        }
        fsutil::sync_dir(&real)?;
        Ok(removed)
    }
}

fn count_files(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let t = entry.file_type()?;
        n += if t.is_dir() {
            count_files(&entry.path())?
        } else {
            1
        };
    }
    Ok(n)
}

/// A folder being read.
struct LocalLister {
    /// `None` once read to its end.
    dir: Option<fs::ReadDir>,
}

impl Lister for LocalLister {
    fn next_batch(&mut self, max: usize) -> Result<Vec<Listed>> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(item) = self.dir.as_mut().and_then(Iterator::next) else {
                self.dir = None;
                break;
            };
            let item = item.map_err(io_err)?;
            let Ok(m) = item.metadata() else {
                continue;
            };
            let (name, meta) = match item.file_name().into_string() {
                Ok(name) => (name, meta(&m)),
                Err(raw) => (
                    raw.to_string_lossy().into_owned(),
                    Meta {
                        kind: Kind::Other("name is not UTF-8"),
                        ..meta(&m)
                    },
                ),
            };
            batch.push(Listed { name, meta });
        }
        Ok(batch)
    }
}

/// A stored file open for positioned reads.
struct LocalObject {
    file: File,
    len: u64,
}

impl Object for LocalObject {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }
}

/// Opens (creating, mode 0600, never through a link) and locks the staging
/// file at `path`; `Busy` if another upload holds it. The file locked is
/// the one `path` names once locked: a file that was renamed away or
/// removed between the open and the lock (a commit, a reject, a re-seal
/// taking its place) is let go and `path` opened again.
fn lock_staging(path: &Path) -> Result<File> {
    // Each retry means another upload changed the name meanwhile; a few in
    // a row mean it is busy.
    for _ in 0..4 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        file.try_lock().map_err(|_| StorageError::Busy)?;
        if fsutil::names(path, &file)? {
            return Ok(file);
        }
    }
    Err(StorageError::Busy)
}

/// A staging file, locked.
struct LocalStaged {
    storage: LocalStorage,
    path: PathBuf,
    /// Commit, discard and re-seals act on this file, never on whatever
    /// `path` names.
    lock: File,
}

impl LocalStaged {
    /// Removes the staging file, if its name still names the file held.
    fn unlink(&self) -> io::Result<()> {
        if fsutil::names(&self.path, &self.lock)? {
            fs::remove_file(&self.path)?;
        }
        Ok(())
    }
}

impl Staged for LocalStaged {
    fn stored_len(&self) -> u64 {
        self.lock.metadata().map_or(0, |m| m.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.lock.read_exact_at(buf, offset)?)
    }

    fn sink(&mut self, at: u64) -> Result<Box<dyn Sink>> {
        if at == 0 {
            self.lock.set_len(0)?;
        }
        let file = DirectFile::new(self.lock.try_clone()?, at)?;
        Ok(Box::new(LocalSink { file, kicked: at }))
    }

    fn finish(&mut self, sink: Box<dyn Sink>) -> Result<()> {
        sink.close()?;
        Ok(())
    }

    fn commit(&mut self, to: &str, how: Commit) -> Result<()> {
        let target = self.storage.real(to)?;
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(StorageError::IsADirectory);
        }
        match how {
            Commit::Replace => {
                // A name next to the staging file that only the holder of
                // its lock uses; a crash may have left one behind.
                let tmp = self.path.with_extension("commit");
                let _ = fs::remove_file(&tmp);
                fsutil::link_open_file(&self.lock, &tmp)?;
                if let Err(e) = fs::rename(&tmp, &target) {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err(e));
                }
            }
            Commit::NoReplace => fsutil::link_open_file(&self.lock, &target).map_err(io_err)?,
        }
        self.unlink()?;
        sync_parent(&target)?;
        Ok(sync_parent(&self.path)?)
    }

    fn discard(&mut self) -> Result<()> {
        Ok(self.unlink()?)
    }

    fn replace_with(&mut self, new: Box<dyn Staged>) -> Result<()> {
        let new = new
            .into_any()
            .downcast::<LocalStaged>()
            .map_err(|_| StorageError::Io(io::Error::other("not a local staging file")))?;
        fs::rename(&new.path, &self.path)?;
        let _ = sync_parent(&self.path);
        self.lock = new.lock;
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// Sealed bytes into a staging file.
struct LocalSink {
    file: DirectFile,
    /// Where writeback was last asked for.
    kicked: u64,
}

impl Write for LocalSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if !self.file.is_direct() {
            self.kicked = start_writeback(self.file.file(), self.kicked, self.file.end());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for LocalSink {
    fn sync(&mut self) -> io::Result<u64> {
        self.file.flush()?;
        self.file.file().sync_all()?;
        Ok(self.file.end())
    }

    fn close(mut self: Box<Self>) -> io::Result<u64> {
        self.sync()
    }
}

/// Starts asynchronous writeback of what was written between `from` and
/// `pos` once there is enough of it; returns the new mark. Linux starts
/// writeback of dirty pages for POSIX_FADV_DONTNEED (and drops the ones
/// already clean, which an upload does not need cached). Purely a hint:
/// errors are ignored.
fn start_writeback(file: &File, from: u64, pos: u64) -> u64 {
    if pos < from + WRITEBACK_EVERY {
        return from;
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(pos - from)) else {
        return pos;
    };
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    pos
}
