//! Where sealed bytes are kept: the interface the vault is written against,
//! and its backends. The vault decides what goes where (a user's files
//! under `<user>/…`, uploads in progress under `.staging/`, rejected ones
//! under `.quarantine/`) and never touches a file system or a bucket
//! itself; a backend stores opaque sealed bytes under those names and
//! never sees a key or a plaintext byte.
//!
//! - [`local`]: a folder on a POSIX file system (symbolic links refused,
//!   atomic renames, fsync, staging files locked with `flock`).
//! - [`s3`]: objects in an S3 bucket that several nodes share (multipart
//!   uploads continued from any node, server-side copies).
//!
//! Names are `/`-separated paths relative to the backend's root, made by
//! the vault from normalised [`crate::vault::VPath`]s: no empty, `.` or
//! `..` component, no NUL. Every call blocks: the vault calls them from
//! the blocking pool or an upload's worker thread.

pub mod local;
pub mod s3;

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use local::LocalStorage;
pub use s3::{S3Storage, S3Tuning};

/// What a storage call can fail with. The vault maps these to its own
/// errors, front ends to replies; none carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Nothing under that name.
    #[error("not found")]
    NotFound,
    /// The name is taken.
    #[error("already exists")]
    AlreadyExists,
    /// A file is where a folder is needed.
    #[error("not a folder")]
    NotADirectory,
    /// A folder is where a file is needed.
    #[error("is a folder")]
    IsADirectory,
    /// The folder is not empty.
    #[error("folder not empty")]
    NotEmpty,
    /// The name leads through a symbolic link or a special file.
    #[error("not allowed")]
    Refused,
    /// Someone else holds the staging name.
    #[error("busy")]
    Busy,
    /// The storage cannot be reached now (a bucket that does not answer);
    /// worth trying again later. Nothing was changed half.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

impl StorageError {
    /// The error as an `io::Error` of the matching kind (for code that
    /// works through `Read`/`Write`).
    pub fn into_io(self) -> io::Error {
        use io::ErrorKind as K;
        match self {
            Self::NotFound => K::NotFound.into(),
            Self::AlreadyExists => K::AlreadyExists.into(),
            Self::NotADirectory => K::NotADirectory.into(),
            Self::IsADirectory => K::IsADirectory.into(),
            Self::NotEmpty => K::DirectoryNotEmpty.into(),
            Self::Refused => K::PermissionDenied.into(),
            Self::Busy => K::WouldBlock.into(),
            Self::Unavailable(why) => io::Error::new(K::TimedOut, why),
            Self::Io(e) => e,
        }
    }

    /// The typed error an `io::Error` of this kind stands for.
    pub fn from_io(e: io::Error) -> Self {
        use io::ErrorKind as K;
        match e.kind() {
            K::NotFound => Self::NotFound,
            K::AlreadyExists => Self::AlreadyExists,
            K::NotADirectory => Self::NotADirectory,
            K::IsADirectory => Self::IsADirectory,
            K::DirectoryNotEmpty => Self::NotEmpty,
            K::PermissionDenied => Self::Refused,
            _ => Self::Io(e),
        }
    }
}

/// Result of a storage call.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Kind of a stored name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Stored bytes.
    File,
    /// A folder.
    Dir,
    /// Something no session serves (a symbolic link, a special file); only
    /// listings report it, for operators.
    Other(&'static str),
}

/// What is stored under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// File or folder.
    pub kind: Kind,
    /// Stored (sealed) bytes; 0 for folders.
    pub len: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// How a staged upload takes its final name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Replacing a file of that name.
    Replace,
    /// Only if the name is free ([`StorageError::AlreadyExists`] otherwise).
    NoReplace,
}

/// What a backend can and cannot do; the vault adapts to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// A staged upload's stored bytes can be read back before it is
    /// finished (to re-seal an upload that a crash cut inside a segment).
    /// Without it, such an upload cannot be continued.
    pub staged_readable: bool,
    /// Chunks worth reading ahead of a download.
    pub read_ahead: usize,
    /// Every read is a request of its own (a range GET): small reads are
    /// better served from whole chunks read once.
    pub whole_chunk_reads: bool,
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Name within its folder.
    pub name: String,
    /// What it is.
    pub meta: Meta,
}

/// A folder being listed, a batch at a time.
pub trait Lister: Send + Sync {
    /// Up to `max` more entries; empty at the end. Names that are not
    /// UTF-8 and entries that vanish while being read are left out.
    fn next_batch(&mut self, max: usize) -> Result<Vec<Listed>>;
}

/// A stored file open for reading.
pub trait Object: Send + Sync {
    /// Stored bytes.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the stored bytes from `offset`; fails if the file
    /// ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// Where an upload's sealed bytes go, in order.
pub trait Sink: Write + Send {
    /// Makes every byte written so far durable (fsync; an uploaded part).
    /// Returns how many stored bytes are durable now, which may be fewer
    /// than were written where the backend keeps bytes in whole steps (S3:
    /// whole parts).
    fn sync(&mut self) -> io::Result<u64>;
    /// Stores everything written (the last byte has been): returns the
    /// stored length of the whole file.
    fn close(self: Box<Self>) -> io::Result<u64>;
}

/// An upload in progress under a staging name, held exclusively (no
/// other holder of the same name in this process, nor, where the backend
/// can tell, anywhere).
pub trait Staged: Send {
    /// Stored bytes it held when it was taken (what an interrupted upload
    /// left; 0 for a new one), or as far as its sink has synced since.
    fn stored_len(&self) -> u64;
    /// The stored bytes from `offset` (see [`Caps::staged_readable`]; the
    /// file header is always readable when there is one).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// A sink appending at stored offset `at`: 0 (starting over: whatever
    /// was stored is dropped) or [`Staged::stored_len`] (continuing).
    fn sink(&mut self, at: u64) -> Result<Box<dyn Sink>>;
    /// Takes back the sink once the last byte is written: everything is
    /// durable and readable from here on (for a scan that reads it back).
    fn finish(&mut self, sink: Box<dyn Sink>) -> Result<()>;
    /// Puts the finished upload under `to` and lets go of the staging name.
    fn commit(&mut self, to: &str, how: Commit) -> Result<()>;
    /// Drops the upload and its staging name.
    fn discard(&mut self) -> Result<()>;
    /// Puts `new` (holding another staging name, its content complete and
    /// durable) in this one's place: this one's bytes are dropped, `new`
    /// takes this staging name, and `self` becomes it.
    fn replace_with(&mut self, new: Box<dyn Staged>) -> Result<()>;
    /// Only for [`Staged::replace_with`]: the backend's own value.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// Authenticates what a backend records about a staged upload (where it
/// can be continued: a wrong record would make it reuse a nonce), under a
/// key derived from the user's data key, which the backend never sees.
pub trait RecordKey: Send + Sync + fmt::Debug {
    /// The tag of `record`.
    fn tag(&self, record: &[u8]) -> Vec<u8>;
    /// Whether `tag` is `record`'s, in constant time.
    fn verify(&self, record: &[u8], tag: &[u8]) -> bool;
}

/// A storage backend. See the module documentation.
pub trait Storage: Send + Sync + fmt::Debug {
    /// What it can do.
    fn caps(&self) -> Caps;
    /// What is under `name` (`""` is the root, a folder).
    fn stat(&self, name: &str) -> Result<Meta>;
    /// Lists folder `dir`.
    fn list(&self, dir: &str) -> Result<Box<dyn Lister>>;
    /// Opens file `name` for reading.
    fn open(&self, name: &str) -> Result<Box<dyn Object>>;
    /// Takes staging name `name`: the interrupted upload stored there, or
    /// an empty one; [`StorageError::Busy`] if someone holds it. A backend
    /// that keeps a record of the upload's state (where it can be
    /// continued) authenticates it with `key`, and does not trust one that
    /// fails to verify.
    fn stage(&self, name: &str, key: &Arc<dyn RecordKey>) -> Result<Box<dyn Staged>>;
    /// Removes file `name`.
    fn remove(&self, name: &str) -> Result<()>;
    /// Creates folder `name` (its parent must exist).
    fn mkdir(&self, name: &str) -> Result<()>;
    /// Removes the empty folder `name`.
    fn rmdir(&self, name: &str) -> Result<()>;
    /// Renames file or folder `from` to `to`: replacing a file there with
    /// [`Commit::Replace`], never a folder.
    fn rename(&self, from: &str, to: &str, how: Commit) -> Result<()>;
    /// Sets the modification time of `name`; returns what is there now.
    fn set_modified(&self, name: &str, time: SystemTime) -> Result<Meta>;
    /// Stores a small file under `name`, which must be free (records next
    /// to quarantined uploads).
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Reads a whole small file, refusing one over `max` bytes.
    fn read_small(&self, name: &str, max: u64) -> Result<Vec<u8>>;
    /// Removes folder `dir` and everything in it; returns how many files
    /// went. Nothing there is not an error.
    fn remove_tree(&self, dir: &str) -> Result<u64>;
    /// Total stored bytes of the files whose names start with `prefix`
    /// (`dir/start`): what a user's staged uploads take.
    fn staged_bytes(&self, prefix: &str) -> u64;
    /// Removes staged uploads whose names start with `prefix`, untouched
    /// for longer than `ttl`, that nobody holds; returns how many went.
    fn expire_staged(&self, prefix: &str, ttl: Duration) -> usize;
    /// Removes every file whose name starts with `prefix` (`dir/start`),
    /// held or not (shredding a user); returns the names (within `dir`)
    /// that went.
    fn remove_prefixed(&self, prefix: &str) -> Result<Vec<String>>;
}

/// `dir` and `name` joined with `/` (`dir` may be the root, `""`).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Stored bytes that can be read at any offset: a file open for reading,
/// or a staged upload.
pub trait ReadAt {
    /// Stored bytes.
    fn stored_len(&self) -> u64;
    /// See [`Object::read_exact_at`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

impl ReadAt for Box<dyn Object> {
    fn stored_len(&self) -> u64 {
        self.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

impl ReadAt for &dyn Staged {
    fn stored_len(&self) -> u64 {
        (**self).stored_len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// Stored bytes read as a stream (`Read + Seek` over [`ReadAt`]), for the
/// blocking format readers.
pub struct ObjectReader<R = Box<dyn Object>> {
    object: R,
    pos: u64,
}

impl<R: ReadAt> ObjectReader<R> {
    /// Reads `object` from its start.
    pub fn new(object: R) -> Self {
        Self { object, pos: 0 }
    }

    /// What it reads.
    pub fn into_inner(self) -> R {
        self.object
    }
}

impl<R: ReadAt> fmt::Debug for ObjectReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("len", &self.object.stored_len())
            .field("pos", &self.pos)
            .finish()
    }
}

impl<R: ReadAt> Read for ObjectReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.object.stored_len().saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        self.object
            .read_exact_at(&mut buf[..n], self.pos)
            .map_err(StorageError::into_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt> Seek for ObjectReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.object.stored_len();
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}
