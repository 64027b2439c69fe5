//! The vault: one user's encrypted view of storage. Everything a front end
//! does to files goes through here, and everything here is sealed on the way
//! down and opened on the way up.
//!
//! Layout under the storage root: `<root>/<user>/…` holds a user's committed
//! files, each a sealed file under its plaintext name; `<root>/.staging/`
//! holds uploads in progress (sealed too), one per user and path, named by a
//! hash. An upload streams into its staging file and is renamed under its
//! final name only once it is complete and synced, so a file under its final
//! name is always whole, and a crash leaves at most a sealed staging file
//! (which a later `REST` + `STOR` can resume).

mod path;

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use dropvault_format::{
    plaintext_len, resume_point, AsyncDecryptingReader, AsyncEncryptingWriter, SEGMENT_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf};

pub use path::VPath;

use crate::keys::UserKey;

/// Name of the staging folder inside the storage root. User names cannot
/// start with a dot, so it never collides with a user's folder.
const STAGING: &str = ".staging";
/// I/O buffer between the sealing/opening streams and the file: each
/// blocking read or write moves this much, not one 64 KiB segment, so a
/// transfer costs a few thread hand-offs per MiB instead of sixteen.
const FILE_BUF: usize = 1 << 20;

/// A staging file as the encryptor writes it.
type StagingFile = tokio::io::BufWriter<tokio::fs::File>;
/// A stored file as the decryptor reads it.
type StoredFile = tokio::io::BufReader<tokio::fs::File>;

/// Staging files untouched for this long are removed when the vault opens.
const STAGING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What went wrong with a file operation. Front ends map these to their
/// protocol's replies in one place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// No such file or folder.
    #[error("no such file or folder")]
    NotFound,
    /// The name is taken.
    #[error("already exists")]
    AlreadyExists,
    /// A file was named where a folder is needed.
    #[error("not a folder")]
    NotADirectory,
    /// A folder was named where a file is needed.
    #[error("is a folder")]
    IsADirectory,
    /// The folder is not empty.
    #[error("folder not empty")]
    NotEmpty,
    /// The path cannot be used.
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    /// The path leads through a symbolic link or another special file.
    #[error("not allowed")]
    PermissionDenied,
    /// Another upload to the same path is in progress.
    #[error("another upload to this file is in progress")]
    Busy,
    /// A resumed upload asked for an offset the server cannot continue from.
    #[error("cannot resume at offset {requested}; resume at {available} or start from 0")]
    BadRestOffset {
        /// The offset the client asked for.
        requested: u64,
        /// The offset the server can resume at (0 if none).
        available: u64,
    },
    /// A stored file failed to open or authenticate.
    #[error("stored file is damaged or sealed under another key: {0}")]
    Format(#[from] dropvault_format::Error),
    /// The storage failed.
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

fn map_io(e: io::Error) -> VaultError {
    match e.kind() {
        ErrorKind::NotFound => VaultError::NotFound,
        ErrorKind::AlreadyExists => VaultError::AlreadyExists,
        ErrorKind::NotADirectory => VaultError::NotADirectory,
        ErrorKind::IsADirectory => VaultError::IsADirectory,
        ErrorKind::DirectoryNotEmpty => VaultError::NotEmpty,
        ErrorKind::PermissionDenied => VaultError::PermissionDenied,
        _ => match dropvault_format::Error::from_io(&e) {
            Some(_) => VaultError::Format(dropvault_format::Error::from_io_owned(e)),
            None => VaultError::Io(e),
        },
    }
}

/// Runs blocking file-system work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, VaultError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VaultError::Io(io::Error::other(e)))?
}

/// The storage root shared by all users.
#[derive(Debug)]
pub struct Vault {
    root: PathBuf,
    staging: PathBuf,
}

impl Vault {
    /// Opens (creating, mode 0700) the storage root and its staging folder,
    /// and removes staging files older than a week.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, VaultError> {
        let root = root.into();
        let staging = root.join(STAGING);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging)?;
        let vault = Self { root, staging };
        vault.expire_staging();
        Ok(vault)
    }

    fn expire_staging(&self) {
        let Ok(entries) = fs::read_dir(&self.staging) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STAGING_TTL);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The vault of the user who holds `key` (their folder is created on
    /// first use). Holding the returned value is being logged in.
    pub fn for_user(&self, key: Arc<UserKey>) -> Result<UserVault, VaultError> {
        let user = key.user().to_owned();
        if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0', '\\']) {
            return Err(VaultError::InvalidPath("user name cannot be a folder name"));
        }
        let home = self.root.join(&user);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)?;
        if fs::symlink_metadata(&home)?.file_type().is_symlink() {
            return Err(VaultError::PermissionDenied);
        }
        Ok(UserVault {
            inner: Arc::new(Inner {
                home,
                staging: self.staging.clone(),
                key,
            }),
        })
    }
}

/// Kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A sealed file.
    File,
    /// A folder.
    Dir,
}

/// One file or folder as a client sees it: plaintext size, computed from the
/// stored size without reading the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Name within its folder.
    pub name: String,
    /// File or folder.
    pub kind: EntryKind,
    /// Plaintext bytes (0 for folders, and for a stored file whose length no
    /// sealed file can have).
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

/// How an upload treats an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadMode {
    /// Write a new file, replacing any file of that name on commit.
    Replace,
    /// Continue at this plaintext offset (FTP `REST` then `STOR`).
    Resume(u64),
    /// Add to the end of the existing file (FTP `APPE`).
    Append,
}

#[derive(Debug)]
struct Inner {
    home: PathBuf,
    staging: PathBuf,
    key: Arc<UserKey>,
}

/// One logged-in user's files. Cheap to clone; the user's data key stays
/// unlocked while any clone lives.
#[derive(Clone, Debug)]
pub struct UserVault {
    inner: Arc<Inner>,
}

impl UserVault {
    /// The user's name.
    pub fn user(&self) -> &str {
        self.inner.key.user()
    }

    /// Where `p` is on disk, refusing paths that pass through a symbolic
    /// link or a non-folder. Blocking.
    fn real(&self, p: &VPath) -> Result<PathBuf, VaultError> {
        real_path(&self.inner.home, p)
    }

    /// File or folder at `p`.
    pub async fn stat(&self, p: &VPath) -> Result<Entry, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let real = me.real(&p)?;
            let meta = fs::symlink_metadata(&real).map_err(map_io)?;
            entry(p.name().unwrap_or("/"), &meta).ok_or(VaultError::PermissionDenied)
        })
        .await
    }

    /// Plaintext size for `SIZE`: of the committed file, or, when there is
    /// none, the point at which an interrupted upload to `p` can resume (so
    /// clients that ask before resuming an upload get the right offset).
    pub async fn size(&self, p: &VPath) -> Result<u64, VaultError> {
        match self.stat(p).await {
            Ok(e) if e.kind == EntryKind::File => Ok(e.size),
            Ok(_) => Err(VaultError::IsADirectory),
            Err(VaultError::NotFound) => {
                let staging = self.staging_path(p);
                let len = tokio::fs::metadata(&staging)
                    .await
                    .map_err(|_| VaultError::NotFound)?
                    .len();
                match resume_point(len) {
                    Ok((segments, _)) => Ok(segments * SEGMENT_LEN as u64),
                    Err(_) => Err(VaultError::NotFound),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The entries of folder `p`, sorted by name. Symbolic links and special
    /// files are left out.
    pub async fn list(&self, p: &VPath) -> Result<Vec<Entry>, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let real = me.real(&p)?;
            let mut out = Vec::new();
            for item in fs::read_dir(&real).map_err(map_io)? {
                let item = item?;
                let Ok(name) = item.file_name().into_string() else {
                    continue;
                };
                if let Some(e) = item.metadata().ok().and_then(|m| entry(&name, &m)) {
                    out.push(e);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// Opens file `p` for reading from plaintext offset `offset`.
    pub async fn download(&self, p: &VPath, offset: u64) -> Result<Download, VaultError> {
        let (me, p2) = (self.clone(), p.clone());
        let file = blocking(move || {
            let real = me.real(&p2)?;
            open_nofollow(&real, false).map_err(map_io)
        })
        .await?;
        let mut reader = AsyncDecryptingReader::new(
            StoredFile::with_capacity(FILE_BUF, tokio::fs::File::from_std(file)),
            self.inner.key.data_key(),
        )
        .await?;
        let len = reader.plaintext_len();
        if offset > len {
            return Err(VaultError::BadRestOffset {
                requested: offset,
                available: len,
            });
        }
        reader.seek(SeekFrom::Start(offset)).await?;
        Ok(Download { reader, len })
    }

    /// Starts an upload to `p`. Data written to the returned [`Upload`] is
    /// sealed into a staging file; [`Upload::commit`] puts it under its name.
    /// Resuming follows docs/FORMAT.md section 6: continue the staging file
    /// when the client resumes exactly where it ends, otherwise re-encrypt
    /// the kept prefix of the committed file under a fresh salt.
    pub async fn upload(&self, p: &VPath, mode: UploadMode) -> Result<Upload, VaultError> {
        let (me, p2) = (self.clone(), p.clone());
        let staging = self.staging_path(p);
        let staging2 = staging.clone();
        let (target, file) = blocking(move || {
            let target = me.real(&p2)?;
            if p2.is_root() {
                return Err(VaultError::IsADirectory);
            }
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => return Err(VaultError::IsADirectory),
                Ok(m) if !m.is_file() => return Err(VaultError::PermissionDenied),
                _ => {}
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&staging2)?;
            // One upload per path at a time, across sessions and processes.
            file.try_lock().map_err(|_| VaultError::Busy)?;
            Ok((target, file))
        })
        .await?;
        let key = self.inner.key.data_key();
        let mut file = tokio::fs::File::from_std(file);
        let staged_len = file.metadata().await?.len();

        let writer = match mode {
            UploadMode::Resume(offset) if offset > 0 => {
                if staged_len > 0 {
                    let dup = StagingFile::with_capacity(FILE_BUF, file.try_clone().await?);
                    if let Ok(w) = AsyncEncryptingWriter::resume(dup, key).await {
                        if w.plaintext_len() == offset {
                            return Ok(Upload::new(w, file, staging, target, offset));
                        }
                    }
                }
                let committed = self
                    .stat(p)
                    .await
                    .ok()
                    .filter(|e| e.kind == EntryKind::File);
                match committed {
                    Some(e) if e.size >= offset => self.reseal_prefix(p, &mut file, offset).await?,
                    other => {
                        let staged = resume_point(staged_len)
                            .map(|(s, _)| s * SEGMENT_LEN as u64)
                            .unwrap_or(0);
                        return Err(VaultError::BadRestOffset {
                            requested: offset,
                            available: other.map_or(staged, |e| e.size),
                        });
                    }
                }
            }
            UploadMode::Append => match self.stat(p).await {
                Ok(e) if e.kind == EntryKind::File => {
                    self.reseal_prefix(p, &mut file, e.size).await?
                }
                // No committed file: append to what an interrupted upload
                // left (the size SIZE reported), if it can be continued.
                _ => {
                    let dup = StagingFile::with_capacity(FILE_BUF, file.try_clone().await?);
                    match AsyncEncryptingWriter::resume(dup, key).await {
                        Ok(w) if staged_len > 0 => {
                            let start = w.plaintext_len();
                            return Ok(Upload::new(w, file, staging, target, start));
                        }
                        _ => fresh(&mut file, key).await?,
                    }
                }
            },
            UploadMode::Replace | UploadMode::Resume(_) => fresh(&mut file, key).await?,
        };
        let start = writer.plaintext_len();
        Ok(Upload::new(writer, file, staging, target, start))
    }

    /// Starts a new staging file holding the first `len` plaintext bytes of
    /// the committed file `p`, re-sealed under a fresh salt.
    async fn reseal_prefix(
        &self,
        p: &VPath,
        file: &mut tokio::fs::File,
        len: u64,
    ) -> Result<AsyncEncryptingWriter<StagingFile>, VaultError> {
        let mut writer = fresh(file, self.inner.key.data_key()).await?;
        let mut old = self.download(p, 0).await?;
        let copied = tokio::io::copy(&mut (&mut old).take(len), &mut writer)
            .await
            .map_err(map_io)?;
        if copied != len {
            return Err(VaultError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(writer)
    }

    /// Deletes file `p`.
    pub async fn remove(&self, p: &VPath) -> Result<(), VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let real = me.real(&p)?;
            if fs::symlink_metadata(&real).map_err(map_io)?.is_dir() {
                return Err(VaultError::IsADirectory);
            }
            fs::remove_file(&real).map_err(map_io)?;
            sync_parent(&real)
        })
        .await
    }

    /// Creates folder `p`.
    pub async fn mkdir(&self, p: &VPath) -> Result<(), VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            if p.is_root() {
                return Err(VaultError::AlreadyExists);
            }
            let real = me.real(&p)?;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&real)
                .map_err(map_io)?;
            sync_parent(&real)
        })
        .await
    }

    /// Removes the empty folder `p`.
    pub async fn rmdir(&self, p: &VPath) -> Result<(), VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            if p.is_root() {
                return Err(VaultError::PermissionDenied);
            }
            let real = me.real(&p)?;
            if !fs::symlink_metadata(&real).map_err(map_io)?.is_dir() {
                return Err(VaultError::NotADirectory);
            }
            fs::remove_dir(&real).map_err(map_io)?;
            sync_parent(&real)
        })
        .await
    }

    /// Renames `from` to `to`, replacing a file (never a folder) at `to`.
    pub async fn rename(&self, from: &VPath, to: &VPath) -> Result<(), VaultError> {
        let (me, from, to) = (self.clone(), from.clone(), to.clone());
        blocking(move || {
            if from.is_root() || to.is_root() {
                return Err(VaultError::PermissionDenied);
            }
            if to.parts().starts_with(from.parts()) && to != from {
                return Err(VaultError::InvalidPath("cannot move a folder into itself"));
            }
            let src = me.real(&from)?;
            let dst = me.real(&to)?;
            let src_meta = fs::symlink_metadata(&src).map_err(map_io)?;
            if let Ok(m) = fs::symlink_metadata(&dst) {
                if m.is_dir() || src_meta.is_dir() {
                    return Err(VaultError::AlreadyExists);
                }
            }
            fs::rename(&src, &dst).map_err(map_io)?;
            sync_parent(&src)?;
            sync_parent(&dst)
        })
        .await
    }

    fn staging_path(&self, p: &VPath) -> PathBuf {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(self.user().as_bytes());
        ctx.update(b"\0");
        ctx.update(p.to_string().as_bytes());
        let hash = ctx.finish();
        let name: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.inner.staging.join(format!("{name}.part"))
    }
}

/// Truncates the staging file and starts a new sealed file in it.
async fn fresh(
    file: &mut tokio::fs::File,
    key: &dropvault_format::DataKey,
) -> Result<AsyncEncryptingWriter<StagingFile>, VaultError> {
    file.set_len(0).await?;
    file.seek(SeekFrom::Start(0)).await?;
    let buffered = StagingFile::with_capacity(FILE_BUF, file.try_clone().await?);
    Ok(AsyncEncryptingWriter::new(buffered, key)?)
}

fn entry(name: &str, meta: &fs::Metadata) -> Option<Entry> {
    let kind = if meta.is_file() {
        EntryKind::File
    } else if meta.is_dir() {
        EntryKind::Dir
    } else {
        return None;
    };
    let size = match kind {
        EntryKind::File => plaintext_len(meta.len()).unwrap_or(0),
        EntryKind::Dir => 0,
    };
    Some(Entry {
        name: name.to_owned(),
        kind,
        size,
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

/// Joins `p` to `home`, refusing any existing component that is a symbolic
/// link, and any non-final component that is not a folder.
fn real_path(home: &Path, p: &VPath) -> Result<PathBuf, VaultError> {
    let mut real = home.to_path_buf();
    let last = p.parts().len();
    for (i, part) in p.parts().iter().enumerate() {
        real.push(part);
        match fs::symlink_metadata(&real) {
            Ok(m) if m.file_type().is_symlink() => return Err(VaultError::PermissionDenied),
            Ok(m) if i + 1 < last && !m.is_dir() => return Err(VaultError::NotADirectory),
            Ok(_) => {}
            // Missing components: only the last may be missing (it is
            // being created); a missing folder on the way is "not found".
            Err(e) if e.kind() == ErrorKind::NotFound && i + 1 == last => {}
            Err(e) => return Err(map_io(e)),
        }
    }
    Ok(real)
}

fn open_nofollow(path: &Path, write: bool) -> io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn sync_parent(path: &Path) -> Result<(), VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A file being read: plaintext out, decrypted segment by segment.
#[derive(Debug)]
pub struct Download {
    reader: AsyncDecryptingReader<StoredFile>,
    len: u64,
}

impl Download {
    /// Plaintext length of the whole file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsyncRead for Download {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

/// An upload in progress: plaintext in, sealed into the staging file.
/// Dropping it without [`Upload::commit`] leaves the sealed staging file for
/// a later resume and never touches the final name.
#[derive(Debug)]
pub struct Upload {
    writer: AsyncEncryptingWriter<StagingFile>,
    /// Keeps the staging file's lock for the life of the upload.
    file: tokio::fs::File,
    staging: PathBuf,
    target: PathBuf,
    start: u64,
}

impl Upload {
    fn new(
        writer: AsyncEncryptingWriter<StagingFile>,
        lock: tokio::fs::File,
        staging: PathBuf,
        target: PathBuf,
        start: u64,
    ) -> Self {
        Self {
            writer,
            file: lock,
            staging,
            target,
            start,
        }
    }

    /// Plaintext offset the upload started at (non-zero when resumed or
    /// appended).
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    /// Plaintext bytes in the file so far.
    pub fn plaintext_len(&self) -> u64 {
        self.writer.plaintext_len()
    }

    /// Seals the final segment, syncs the staging file, and renames it under
    /// its final name (syncing the folder). Returns the plaintext size.
    pub async fn commit(mut self) -> Result<u64, VaultError> {
        let len = self.writer.plaintext_len();
        self.writer.shutdown().await.map_err(map_io)?;
        self.file.sync_all().await?;
        let (staging, target) = (self.staging.clone(), self.target.clone());
        blocking(move || {
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                return Err(VaultError::IsADirectory);
            }
            fs::rename(&staging, &target).map_err(map_io)?;
            sync_parent(&target)
        })
        .await?;
        Ok(len)
    }
}

impl AsyncWrite for Upload {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    /// Shutting an upload down only flushes sealed segments: committing is
    /// explicit, so a client that disconnects never commits a short file.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }
}
