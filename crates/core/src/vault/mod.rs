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
//! (which a later resumed upload continues).

mod direct;
mod download;
mod offline;
mod path;
mod quota;
mod read;
mod upload;

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use dropvault_format::{
    open_decryptor, plaintext_len, whole_segments, DecryptingReader, Decryptor, EncryptingWriter,
    HEADER_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN,
};

pub use download::Download;
pub use offline::{Oddity, Quarantined, StoredFile};
pub use path::VPath;
pub use read::ReadFile;
pub use upload::{Upload, UploadExited};

use crate::hex;
use crate::keys::UserKey;
use crate::scan::Scanner;
use quota::StagingQuota;

/// Name of the staging folder inside the storage root. User names cannot
/// start with a dot, so it never collides with a user's folder.
const STAGING: &str = ".staging";
/// Plaintext bytes per chunk that transfers handle at a time (a multiple of
/// the segment length).
const CHUNK: usize = 1 << 20;
/// Rejected uploads kept for operators (sealed, never served).
const QUARANTINE: &str = ".quarantine";
/// Staging files untouched for this long are removed by the running server
/// ([`Vault::expire_staging`]).
pub const STAGING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// A download or a resumed upload asked for an offset the server cannot
    /// start at: past the end of the file, or (an upload) past what can be
    /// continued.
    #[error("cannot start at offset {requested}; start at {available} or at 0")]
    BadOffset {
        /// The offset the client asked for.
        requested: u64,
        /// The furthest offset the server can start at (0 if none).
        available: u64,
    },
    /// A stored file failed to open or authenticate.
    #[error("stored file is damaged or sealed under another key: {0}")]
    Format(#[from] dropvault_format::Error),
    /// The storage failed.
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
    /// A scanner found something in an upload; it was not committed.
    #[error("upload rejected by the scanner: {finding}")]
    Rejected {
        /// What the scanner found.
        finding: String,
        /// Plaintext bytes of the rejected file.
        size: u64,
    },
    /// No scanner verdict (and `on_error = "reject"`); not committed.
    #[error("upload not committed: malware scan failed: {reason}")]
    ScanFailed {
        /// Why.
        reason: String,
    },
    /// The upload would take the user's staging files (unfinished uploads,
    /// re-sealed copies) past `storage.max_staging_bytes_per_user`; it
    /// was refused and left nothing in staging.
    #[error("staging would exceed the user's bound of {limit} bytes")]
    StagingFull {
        /// The bound, in bytes.
        limit: u64,
    },
    /// A resumed upload that continued an unfinished one ended without a
    /// byte of its own: there is no last segment to seal as final, so it
    /// is not committed (the unfinished upload stays for a real resume).
    #[error("nothing received after the resume point {offset}")]
    EmptyResume {
        /// Where the upload resumed.
        offset: u64,
    },
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
    quarantine: PathBuf,
    scanner: Option<Arc<Scanner>>,
    quota: Arc<StagingQuota>,
}

impl Vault {
    /// The vault under `root`, as it is: nothing is created, removed or
    /// changed on disk until something is stored (what read-only operator
    /// commands use).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            staging: root.join(STAGING),
            quarantine: root.join(QUARANTINE),
            root,
            scanner: None,
            quota: Arc::new(StagingQuota::new(None)),
        }
    }

    /// [`Vault::open`], creating (mode 0700) the storage root and its
    /// staging and quarantine folders if missing: for the server and
    /// commands that store files.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, VaultError> {
        let vault = Self::open(root);
        for dir in [&vault.staging, &vault.quarantine] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Ok(vault)
    }

    /// Scans every upload with `scanner` before it is committed.
    pub fn with_scanner(mut self, scanner: Option<Arc<Scanner>>) -> Self {
        self.scanner = scanner;
        self
    }

    /// Bounds each user's staging bytes (unfinished uploads and re-sealed
    /// copies together) to `limit`; `None` = no bound. Uploads that would
    /// go past it fail with [`VaultError::StagingFull`].
    pub fn with_staging_limit(mut self, limit: Option<u64>) -> Self {
        self.quota = Arc::new(StagingQuota::new(limit));
        self
    }

    /// Removes staging files (interrupted uploads) untouched for longer
    /// than `ttl`, except those an upload holds right now; returns how many
    /// went. The server runs this at start and then periodically.
    pub fn expire_staging(&self, ttl: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.staging) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ttl);
            if !old {
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
                && crate::fsutil::names(&path, &file).unwrap_or(false)
                && fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            let _ = crate::fsutil::sync_dir(&self.staging);
        }
        removed
    }

    /// The folder of `user`'s files (which may not exist yet).
    fn home(&self, user: &str) -> Result<PathBuf, VaultError> {
        if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0', '\\']) {
            return Err(VaultError::InvalidPath("user name cannot be a folder name"));
        }
        Ok(self.root.join(user))
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The vault of the user who holds `key` (their folder is created on
    /// first use). Holding the returned value is being logged in.
    pub fn for_user(&self, key: Arc<UserKey>) -> Result<UserVault, VaultError> {
        let user = key.user().to_owned();
        let home = self.home(&user)?;
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
                quarantine: self.quarantine.clone(),
                scanner: self.scanner.clone(),
                quota: self.quota.clone(),
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

/// Entries a listing reads from storage at a time.
const LIST_BATCH: usize = 256;

/// A folder being listed ([`UserVault::list`]): memory for one batch of
/// entries, however large the folder.
#[derive(Debug)]
pub struct Listing {
    /// `None` once the folder is read to its end.
    dir: Option<fs::ReadDir>,
}

impl Listing {
    /// The next entries (at most a few hundred); empty at the end of the
    /// folder. Symbolic links, special files, names that are not UTF-8 and
    /// entries that vanish while being read are left out.
    pub async fn next_batch(&mut self) -> Result<Vec<Entry>, VaultError> {
        let Some(mut dir) = self.dir.take() else {
            return Ok(Vec::new());
        };
        let (dir, batch) = blocking(move || {
            let mut batch = Vec::with_capacity(LIST_BATCH);
            while batch.len() < LIST_BATCH {
                let Some(item) = dir.next() else {
                    return Ok((None, batch));
                };
                let item = item.map_err(map_io)?;
                let Ok(name) = item.file_name().into_string() else {
                    continue;
                };
                if let Some(e) = item.metadata().ok().and_then(|m| entry(&name, &m)) {
                    batch.push(e);
                }
            }
            Ok((Some(dir), batch))
        })
        .await?;
        self.dir = dir;
        Ok(batch)
    }
}

/// How an upload treats an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadMode {
    /// Write a new file, replacing any file of that name on commit.
    Replace,
    /// Continue at this plaintext offset (FTP `REST` then `STOR`; an SFTP
    /// write that starts past 0, as `reput` sends).
    Resume(u64),
    /// Add to the end of the existing file (FTP `APPE`, SFTP's append flag).
    Append,
    /// Write a new file under a name that must stay free: refused if a file
    /// is there when the upload starts, and never replaces one that
    /// appears meanwhile (FTP `STOU`, SFTP's exclusive-create flag).
    Create,
}

#[derive(Debug)]
struct Inner {
    home: PathBuf,
    staging: PathBuf,
    quarantine: PathBuf,
    scanner: Option<Arc<Scanner>>,
    quota: Arc<StagingQuota>,
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
                // Not even a header: an upload that never got going.
                if len < HEADER_LEN as u64 {
                    return Err(VaultError::NotFound);
                }
                Ok(whole_segments(len) * SEGMENT_LEN as u64)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens folder `p` for listing. Its entries come a batch at a time
    /// ([`Listing::next_batch`]), in the order storage keeps them: not
    /// sorted, as sorting would hold the whole folder in memory.
    pub async fn list(&self, p: &VPath) -> Result<Listing, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        let dir = blocking(move || fs::read_dir(me.real(&p)?).map_err(map_io)).await?;
        Ok(Listing { dir: Some(dir) })
    }

    /// Opens file `p` for reading at any offset ([`ReadFile::read_at`]).
    /// The header and length are checked now; segments as they are read.
    pub async fn open_read(&self, p: &VPath) -> Result<ReadFile, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let real = me.real(&p)?;
            let file = open_nofollow(&real).map_err(map_io)?;
            let meta = file.metadata().map_err(map_io)?;
            if meta.is_dir() {
                return Err(VaultError::IsADirectory);
            }
            if !meta.is_file() {
                return Err(VaultError::PermissionDenied);
            }
            let dec = open_decryptor(&mut &file, me.inner.key.data_key())?;
            Ok(ReadFile::new(file, dec))
        })
        .await
    }

    /// Opens file `p` for reading from plaintext offset `offset` to its
    /// end, as [`UserVault::open_read`] does.
    pub async fn download(&self, p: &VPath, offset: u64) -> Result<Download, VaultError> {
        let file = self.open_read(p).await?;
        if offset > file.len() {
            return Err(VaultError::BadOffset {
                requested: offset,
                available: file.len(),
            });
        }
        Ok(Download::new(file, offset))
    }

    /// Starts an upload to `p`. Data written to the returned [`Upload`] is
    /// sealed into a staging file; [`Upload::commit`] puts it under its name.
    /// Resuming follows docs/FORMAT.md section 6: continue the staging file
    /// when the client resumes exactly where it ends, otherwise re-encrypt
    /// the kept prefix of the committed file under a fresh salt.
    ///
    /// Only the checks happen here (quickly: a front end answers once this
    /// returns); a re-seal of kept data is the upload's worker's first job,
    /// which stops early if the upload is dropped meanwhile.
    pub async fn upload(&self, p: &VPath, mode: UploadMode) -> Result<Upload, VaultError> {
        let staging = self.staging_path(p);
        let (me, p) = (self.clone(), p.clone());
        let plan = self.inner.scanner.clone().map(|scanner| upload::ScanPlan {
            scanner,
            user: self.user().to_owned(),
            path: p.to_string(),
            quarantine: self.inner.quarantine.clone(),
            prefix: staging_prefix(self.user()),
        });
        let (begin, target) = blocking(move || me.open_upload(&p, mode, staging)).await?;
        Ok(Upload::start(begin, target, plan))
    }

    /// The blocking part of [`UserVault::upload`]: lock the staging file,
    /// decide where sealing starts, and charge the staging bytes it takes.
    fn open_upload(
        &self,
        p: &VPath,
        mode: UploadMode,
        staging: PathBuf,
    ) -> Result<(upload::Begin, upload::Target), VaultError> {
        use upload::{Begin, Source};
        let target = self.real(p)?;
        if p.is_root() {
            return Err(VaultError::IsADirectory);
        }
        let committed = match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => return Err(VaultError::IsADirectory),
            Ok(m) if !m.is_file() => return Err(VaultError::PermissionDenied),
            Ok(m) => Some(plaintext_len(m.len())?),
            Err(_) => None,
        };
        if mode == UploadMode::Create && committed.is_some() {
            return Err(VaultError::AlreadyExists);
        }
        // One upload per path at a time, across sessions and processes.
        let lock = lock_staging(&staging)?;
        let staged_len = lock.metadata()?.len();
        let refused = |e: VaultError| {
            // An empty staging file is no upload's: it goes with the refusal.
            if staged_len == 0 && crate::fsutil::names(&staging, &lock).unwrap_or(false) {
                let _ = fs::remove_file(&staging);
            }
            e
        };
        let mut charge = self.inner.quota.enter(
            self.user(),
            &self.inner.staging,
            &format!("{}-", staging_prefix(self.user())),
            staged_len,
        );
        // Plaintext in the whole segments an interrupted upload left.
        let staged = whole_segments(staged_len) * SEGMENT_LEN as u64;
        let key = self.inner.key.data_key();
        // The sealed prefix of an interrupted upload, if it can go on.
        let resumable = || -> Option<Sealer> {
            if staged_len == 0 {
                return None;
            }
            let writer = EncryptingWriter::resume(lock.try_clone().ok()?, key).ok()?;
            direct(writer, staged_len).ok()
        };
        // The committed file, opened now: a re-seal reads what was there
        // when the client asked, and a damaged one is refused at once.
        let open_committed = |len: Option<u64>| -> Result<Begin, VaultError> {
            let old = DecryptingReader::new(open_nofollow(&target).map_err(map_io)?, key)?;
            let size = old.plaintext_len();
            let len = len.unwrap_or(size);
            if len > size {
                return Err(VaultError::BadOffset {
                    requested: len,
                    available: size,
                });
            }
            Ok(Begin::Reseal {
                from: Source::Committed(Box::new(old)),
                len,
            })
        };
        let reseal_staged = |len| Begin::Reseal {
            from: Source::Staging,
            len,
        };
        let continued = |writer| Begin::Ready {
            writer: Box::new(writer),
            continued: true,
        };
        let begin = match mode {
            UploadMode::Resume(offset) if offset > 0 => match resumable() {
                Some(w) if w.plaintext_len() == offset => continued(w),
                _ => match committed {
                    Some(size) if size >= offset => {
                        open_committed(Some(offset)).map_err(refused)?
                    }
                    None if staged >= offset => reseal_staged(offset),
                    other => {
                        return Err(refused(VaultError::BadOffset {
                            requested: offset,
                            available: other.unwrap_or(staged),
                        }));
                    }
                },
            },
            UploadMode::Append => match committed {
                Some(_) => open_committed(None).map_err(refused)?,
                // No committed file: append to what an interrupted upload
                // left (the size SIZE reported), if it can be continued.
                None => match resumable() {
                    Some(w) => continued(w),
                    None if staged > 0 => reseal_staged(staged),
                    None => Begin::Ready {
                        writer: Box::new(fresh(&lock, key)?),
                        continued: false,
                    },
                },
            },
            UploadMode::Replace | UploadMode::Resume(_) | UploadMode::Create => Begin::Ready {
                writer: Box::new(fresh(&lock, key)?),
                continued: false,
            },
        };
        // What the staging files will hold once the re-seal is done: the
        // copy replaces the staging file's content, or (kept data of the
        // staging file itself) sits next to it until it takes its place.
        match &begin {
            Begin::Ready { continued, .. } => {
                charge.settle(if *continued { staged_len } else { 0 })
            }
            Begin::Reseal { from, len } => charge
                .set(match from {
                    Source::Committed(_) => sealed_len(*len),
                    Source::Staging => staged_len.saturating_add(sealed_len(*len)),
                })
                .map_err(refused)?,
        }
        Ok((
            begin,
            upload::Target {
                lock,
                staging,
                target,
                replace: mode != UploadMode::Create,
                key: self.inner.key.clone(),
                charge,
            },
        ))
    }

    /// Sets the modification time of file or folder `p` (FTP `MFMT`, SFTP `SETSTAT`);
    /// returns the entry as it is now.
    pub async fn set_modified(&self, p: &VPath, time: SystemTime) -> Result<Entry, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let real = me.real(&p)?;
            // Opened without following a link; the times go on what was
            // opened, not on whatever the path names afterwards.
            let file = open_nofollow(&real).map_err(map_io)?;
            file.set_modified(time).map_err(map_io)?;
            let meta = file.metadata().map_err(map_io)?;
            entry(p.name().unwrap_or("/"), &meta).ok_or(VaultError::PermissionDenied)
        })
        .await
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
        self.inner.staging.join(format!(
            "{}-{}.part",
            staging_prefix(self.user()),
            hex(&hash.as_ref()[..16])
        ))
    }
}

/// The start of every staging file name of `user`: a hash of the name, so
/// a user's staging files can be found (and shredded) without a list.
fn staging_prefix(user: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"dropvault staging\0");
    ctx.update(user.as_bytes());
    hex(&ctx.finish().as_ref()[..16])
}

/// What seals an upload into its staging file.
type Sealer = EncryptingWriter<direct::DirectFile>;

/// Continues `writer` (positioned at `offset`, the end of what its file
/// holds) with writes that bypass the page cache where the file system
/// allows it.
fn direct(writer: EncryptingWriter<fs::File>, offset: u64) -> io::Result<Sealer> {
    writer.try_map_inner(|file| direct::DirectFile::new(file, offset))
}

/// Truncates the staging file and starts a new sealed file in it.
fn fresh(staging: &fs::File, key: &dropvault_format::DataKey) -> Result<Sealer, VaultError> {
    staging.set_len(0)?;
    let writer = EncryptingWriter::new(staging.try_clone()?, key)?;
    Ok(direct(writer, 0)?)
}

/// Stored bytes of a sealed file of `len` plaintext bytes (an unfinished
/// one holds at most that).
fn sealed_len(len: u64) -> u64 {
    dropvault_format::ciphertext_len(len).unwrap_or(u64::MAX)
}

/// What a re-seal returns when its upload was dropped before it was done.
fn cancelled() -> VaultError {
    VaultError::Io(io::Error::new(
        ErrorKind::Interrupted,
        "upload dropped during its re-seal",
    ))
}

/// Starts a new sealed file in the staging file holding the first `len`
/// plaintext bytes `old` reads (a committed file), under a fresh salt.
/// Stops early once `stop` says so.
fn reseal(
    staging: &fs::File,
    old: &mut DecryptingReader<fs::File>,
    key: &dropvault_format::DataKey,
    len: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Sealer, VaultError> {
    let mut writer = fresh(staging, key)?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
    let mut left = len;
    while left > 0 {
        if stop() {
            return Err(cancelled());
        }
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = old.read(&mut buf[..want]).map_err(map_io)?;
        if n == 0 {
            return Err(VaultError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        writer.write_all(&buf[..n]).map_err(map_io)?;
        left -= n as u64;
    }
    Ok(writer)
}

/// Opens (creating, mode 0600, never through a link) and locks the staging
/// file at `path`; `Busy` if another upload holds it. The file locked is
/// the one `path` names once locked: a file that was renamed away or
/// removed between the open and the lock (a commit, a reject, a re-seal
/// taking its place) is let go and `path` opened again. So whoever holds
/// the lock of the file a staging name names is the only one who changes
/// that name.
fn lock_staging(path: &Path) -> Result<fs::File, VaultError> {
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
            .open(path)?;
        file.try_lock().map_err(|_| VaultError::Busy)?;
        if crate::fsutil::names(path, &file)? {
            return Ok(file);
        }
    }
    Err(VaultError::Busy)
}

/// Re-seals the first `len` plaintext bytes of the unfinished upload in
/// `old` (its whole segments, read back and authenticated) under a fresh
/// salt into a new staging file, which takes the place of `old` under
/// `staging`, locked before anyone can see it. For a staging file that a
/// crash left ending inside a segment: that segment's counter may be on the
/// disk already, so the upload cannot go on under the old salt
/// (docs/FORMAT.md, section 6). Returns the writer and the new file (the
/// lock). Stopped early (by `stop`) or failed, it leaves `old` as it was.
fn reseal_staging(
    old: &fs::File,
    staging: &Path,
    key: &dropvault_format::DataKey,
    len: u64,
    stop: &dyn Fn() -> bool,
) -> Result<(Sealer, fs::File), VaultError> {
    let tmp = staging.with_extension("reseal");
    let new = lock_staging(&tmp)?;
    let copied = (|| {
        use std::os::unix::fs::FileExt;
        let mut header = [0u8; HEADER_LEN];
        old.read_exact_at(&mut header, 0)?;
        let segments = len.div_ceil(SEGMENT_LEN as u64);
        let dec = Decryptor::unfinished(key, &header, segments)?;
        new.set_len(0)?;
        let mut writer = direct(EncryptingWriter::new(new.try_clone()?, key)?, 0)?;
        let mut sealed = vec![0u8; SEALED_SEGMENT_LEN];
        let mut plain = zeroize::Zeroizing::new(vec![0u8; SEGMENT_LEN]);
        let mut left = len;
        for i in 0..segments {
            if stop() {
                return Err(cancelled());
            }
            let seg = dec
                .layout()
                .segment(i)
                .ok_or(VaultError::Io(io::ErrorKind::UnexpectedEof.into()))?;
            let body = &mut sealed[..seg.ciphertext_len];
            old.read_exact_at(body, seg.ciphertext_offset)?;
            let n = dec.open(&seg, body, &mut plain)?;
            let take = usize::try_from(left).map_or(n, |l| l.min(n));
            writer.write_all(&plain[..take]).map_err(map_io)?;
            left -= take as u64;
        }
        Ok(writer)
    })();
    match copied {
        Ok(writer) => {
            fs::rename(&tmp, staging)?;
            Ok((writer, new))
        }
        Err(e) => {
            // Still ours: we hold its lock.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
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

/// Opens a stored file for reading, refusing a symbolic link. Without
/// blocking: a FIFO put in storage does not hang the open (for files and
/// folders the flag changes nothing).
fn open_nofollow(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn sync_parent(path: &Path) -> Result<(), VaultError> {
    crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}
