//! The vault: one user's encrypted view of storage. Everything a front end
//! does to files goes through here, and everything here is sealed on the way
//! down and opened on the way up.
//!
//! Layout in storage ([`crate::storage`]): `<user>/…` holds a user's
//! committed files, each a sealed file under its plaintext name;
//! `.staging/` holds uploads in progress (sealed too), one per user and
//! path, named by a hash. An upload streams into its staging name and is
//! committed under its final name only once it is complete and durable, so
//! a file under its final name is always whole, and a crash leaves at most
//! a sealed staging file (which a later resumed upload continues).

mod download;
mod offline;
mod path;
mod quota;
mod read;
mod upload;
mod usage;

use std::io::{self, ErrorKind, Read, Write};
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
pub use usage::{Quota, Usage};

use crate::hex;
use crate::keys::UserKey;
use crate::scan::Scanner;
use crate::storage::{
    self, Commit, Kind, LocalStorage, Meta, ObjectReader, RecordKey, Sink, Staged, Storage,
    StorageError,
};
use quota::StagingQuota;
use usage::{Ledger, Quotas};

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
    /// The upload would take the user past their quota
    /// (`limits.quota_bytes` / `quota_files`, or their own); it was
    /// refused and left nothing in staging.
    #[error("over the user's quota of {limit} {}", if *files { "files" } else { "bytes" })]
    QuotaExceeded {
        /// Whether the limit on the number of files was reached (else the
        /// one on bytes).
        files: bool,
        /// The limit.
        limit: u64,
    },
    /// The upload would take the user's staging files (unfinished uploads,
    /// re-sealed copies) past `storage.max_staging_bytes_per_user`; it
    /// was refused and left nothing in staging.
    #[error("staging would exceed the user's bound of {limit} bytes")]
    StagingFull {
        /// The bound, in bytes.
        limit: u64,
    },
    /// The storage cannot be reached now (a bucket that does not answer):
    /// nothing was changed; worth trying again later.
    #[error("storage unavailable: {reason}")]
    Unavailable {
        /// Why, for the log (never sent to clients).
        reason: String,
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

impl From<StorageError> for VaultError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => Self::NotFound,
            StorageError::AlreadyExists => Self::AlreadyExists,
            StorageError::NotADirectory => Self::NotADirectory,
            StorageError::IsADirectory => Self::IsADirectory,
            StorageError::NotEmpty => Self::NotEmpty,
            StorageError::Refused => Self::PermissionDenied,
            StorageError::Busy => Self::Busy,
            StorageError::Unavailable(reason) => {
                crate::metrics::metrics().storage_error();
                Self::Unavailable { reason }
            }
            StorageError::Io(e) => {
                crate::metrics::metrics().storage_error();
                map_io(e)
            }
        }
    }
}

/// Runs blocking storage work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, VaultError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VaultError::Io(io::Error::other(e)))?
}

/// The storage shared by all users, and what every upload passes.
#[derive(Debug)]
pub struct Vault {
    storage: Arc<dyn Storage>,
    /// The local folder (for [`Vault::open`] and [`Vault::create`]).
    root: PathBuf,
    scanner: ScannerSlot,
    quota: Arc<StagingQuota>,
    quotas: Arc<Quotas>,
}

/// Most files and folders counted for a user's quota unless
/// [`Vault::with_quota`] says otherwise.
const DEFAULT_MAX_COUNTED: usize = 100_000;

impl Vault {
    /// The vault in the local folder `root`, as it is: nothing is created,
    /// removed or changed on disk until something is stored (what
    /// read-only operator commands use).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self::on(Arc::new(LocalStorage::open(root.clone())), root)
    }

    /// [`Vault::open`], creating (mode 0700) the storage root and its
    /// staging and quarantine folders if missing: for the server and
    /// commands that store files.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, VaultError> {
        let root = root.into();
        let vault = Self::on(Arc::new(LocalStorage::create(root.clone())?), root);
        vault.prepare()?;
        Ok(vault)
    }

    /// The vault on `storage`, its staging and quarantine folders created
    /// if missing. `root` is only what [`Vault::root`] reports.
    pub fn with_storage(storage: Arc<dyn Storage>, root: PathBuf) -> Result<Self, VaultError> {
        let vault = Self::on(storage, root);
        vault.prepare()?;
        Ok(vault)
    }

    fn on(storage: Arc<dyn Storage>, root: PathBuf) -> Self {
        Self {
            storage,
            root,
            scanner: ScannerSlot::default(),
            quota: Arc::new(StagingQuota::new(None)),
            quotas: Arc::new(Quotas::new(Quota::default(), DEFAULT_MAX_COUNTED)),
        }
    }

    fn prepare(&self) -> Result<(), VaultError> {
        for dir in [STAGING, QUARANTINE] {
            match self.storage.mkdir(dir) {
                Ok(()) | Err(StorageError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether the storage answers: lists the first entry of its top
    /// folder (a directory read, or one listing request to the bucket).
    /// Blocks.
    pub fn probe(&self) -> Result<(), VaultError> {
        self.storage.list("")?.next_batch(1)?;
        Ok(())
    }

    /// Scans every upload with `scanner` before it is committed.
    pub fn with_scanner(self, scanner: Option<Arc<Scanner>>) -> Self {
        self.set_scanner(scanner);
        self
    }

    /// The scanner uploads starting now would use.
    pub fn scanner(&self) -> Option<Arc<Scanner>> {
        self.scanner.current()
    }

    /// Scans uploads that start from now on with `scanner` (none: not
    /// scanned), for every user, logged in or not; uploads already running
    /// keep the scanner they started with.
    pub fn set_scanner(&self, scanner: Option<Arc<Scanner>>) {
        *self
            .scanner
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = scanner;
    }

    /// Bounds each user's staging bytes (unfinished uploads and re-sealed
    /// copies together) to `limit`; `None` = no bound. Uploads that would
    /// go past it fail with [`VaultError::StagingFull`].
    pub fn with_staging_limit(mut self, limit: Option<u64>) -> Self {
        self.quota = Arc::new(StagingQuota::new(limit));
        self
    }

    /// Limits every user's committed files to `default` (a user's own
    /// limits, given at login, go first); counting a user's files at login
    /// reads at most `max_entries` files and folders (a user with more can
    /// upload nothing while a limit applies to them). Uploads that would go
    /// past a limit fail with [`VaultError::QuotaExceeded`].
    pub fn with_quota(mut self, default: Quota, max_entries: usize) -> Self {
        self.quotas = Arc::new(Quotas::new(default, max_entries));
        self
    }

    /// Sessions that log in from now on get `default` where the user has
    /// no quota of their own (a reload); sessions already logged in keep
    /// the quota they began with.
    pub fn set_quota(&self, default: Quota) {
        self.quotas.set_default(default);
    }

    /// What `user`'s committed files take, counted now (blocking); `None`
    /// if they have more files and folders than a count reads.
    pub fn usage(&self, user: &str) -> Result<Option<Usage>, VaultError> {
        let home = self.home(user)?;
        match usage::count(&*self.storage, &home, self.quotas.max_entries()) {
            Err(VaultError::NotFound) => Ok(Some(Usage::default())),
            other => other,
        }
    }

    /// Removes staging files (interrupted uploads) untouched for longer
    /// than `ttl`, except those an upload holds right now; returns how many
    /// went. The server runs this at start and then periodically.
    pub fn expire_staging(&self, ttl: Duration) -> usize {
        self.storage.expire_staged(&format!("{STAGING}/"), ttl)
    }

    /// The name of `user`'s folder (which may not exist yet).
    fn home(&self, user: &str) -> Result<String, VaultError> {
        if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0', '\\']) {
            return Err(VaultError::InvalidPath("user name cannot be a folder name"));
        }
        Ok(user.to_owned())
    }

    /// The storage the vault keeps its files in, for records a front end
    /// keeps next to them (drop links, resumable uploads).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The local storage folder (for the local backend; otherwise the
    /// folder given with the storage).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The vault of the user who holds `key` (their folder is created on
    /// first use), under the server's quota. Holding the returned value is
    /// being logged in.
    pub fn for_user(&self, key: Arc<UserKey>) -> Result<UserVault, VaultError> {
        self.for_account(key, Quota::default())
    }

    /// Makes folder `p` of `user` and the folders above it (the user's own
    /// folder included) where they are missing, without the user's key (a
    /// drop link's folder, made when the link is). Blocking.
    pub fn make_folders(&self, user: &str, p: &VPath) -> Result<(), VaultError> {
        let mut name = self.home(user)?;
        let mut parts = p.parts().iter();
        loop {
            match self.storage.stat(&name) {
                Ok(Meta {
                    kind: Kind::Dir, ..
                }) => {}
                Ok(_) => return Err(VaultError::NotADirectory),
                Err(StorageError::NotFound) => match self.storage.mkdir(&name) {
                    Ok(()) | Err(StorageError::AlreadyExists) => {}
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
            match parts.next() {
                Some(part) => name = storage::join(&name, part),
                None => return Ok(()),
            }
        }
    }

    /// [`Vault::for_user`] with the user's own limits `quota` over the
    /// server's (the account's). When a limit applies, the user's files are
    /// counted now (blocking).
    pub fn for_account(&self, key: Arc<UserKey>, quota: Quota) -> Result<UserVault, VaultError> {
        let home = self.home(key.user())?;
        match self.storage.stat(&home) {
            Ok(Meta {
                kind: Kind::Dir, ..
            }) => {}
            Ok(_) => return Err(VaultError::PermissionDenied),
            Err(StorageError::NotFound) => match self.storage.mkdir(&home) {
                Ok(()) | Err(StorageError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
        let ledger = self.quotas.open(key.user(), quota, || {
            usage::count(&*self.storage, &home, self.quotas.max_entries())
        })?;
        Ok(UserVault {
            inner: Arc::new(Inner {
                ledger,
                home,
                storage: self.storage.clone(),
                scanner: self.scanner.clone(),
                quota: self.quota.clone(),
                record_key: Arc::new(RecordMac::new(key.data_key())),
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
pub struct Listing {
    /// `None` once the folder is read to its end.
    lister: Option<Box<dyn storage::Lister>>,
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing")
            .field("done", &self.lister.is_none())
            .finish()
    }
}

impl Listing {
    /// The next entries (at most a few hundred); empty at the end of the
    /// folder. Symbolic links, special files, names that are not UTF-8 and
    /// entries that vanish while being read are left out.
    pub async fn next_batch(&mut self) -> Result<Vec<Entry>, VaultError> {
        let Some(mut lister) = self.lister.take() else {
            return Ok(Vec::new());
        };
        let (lister, batch) = blocking(move || loop {
            let raw = lister.next_batch(LIST_BATCH)?;
            if raw.is_empty() {
                return Ok((None, Vec::new()));
            }
            let batch: Vec<Entry> = raw
                .into_iter()
                .filter_map(|l| entry(&l.name, &l.meta))
                .collect();
            // A batch left empty by the filter is not the end.
            if !batch.is_empty() {
                return Ok((Some(lister), batch));
            }
        })
        .await?;
        self.lister = lister;
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
    /// [`UploadMode::Create`] continued at this plaintext offset, from
    /// what an interrupted upload to the name left (a resumable HTTPS
    /// upload through a drop link, which must never replace a file).
    CreateAt(u64),
}

/// The scanner uploads use, shared by the vault and every user's view of
/// it so that a reload reaches all of them.
#[derive(Clone, Debug, Default)]
struct ScannerSlot(Arc<std::sync::RwLock<Option<Arc<Scanner>>>>);

impl ScannerSlot {
    fn current(&self) -> Option<Arc<Scanner>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug)]
struct Inner {
    /// The name of the user's folder in storage.
    home: String,
    storage: Arc<dyn Storage>,
    scanner: ScannerSlot,
    quota: Arc<StagingQuota>,
    /// The user's quota count; `None` when no limit applies to them.
    ledger: Option<Arc<Ledger>>,
    key: Arc<UserKey>,
    /// Authenticates the records storage keeps of the user's staged uploads.
    record_key: Arc<dyn RecordKey>,
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

    /// The storage name of `p`.
    fn name(&self, p: &VPath) -> String {
        stored_name(&self.inner.home, p)
    }

    fn storage(&self) -> &dyn Storage {
        &*self.inner.storage
    }

    /// File or folder at `p`.
    pub async fn stat(&self, p: &VPath) -> Result<Entry, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let meta = me.storage().stat(&me.name(&p))?;
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
            Err(VaultError::NotFound) => self.staged_offset(p).await?.ok_or(VaultError::NotFound),
            Err(e) => Err(e),
        }
    }

    /// The plaintext offset at which an interrupted upload to `p` can be
    /// continued: what its whole sealed segments in staging hold; `None`
    /// when there is none (or not even its header got stored).
    pub async fn staged_offset(&self, p: &VPath) -> Result<Option<u64>, VaultError> {
        let (me, staging) = (self.clone(), self.staging_name(p));
        let len = match blocking(move || Ok(me.storage().stat(&staging)?.len)).await {
            Ok(len) => len,
            Err(VaultError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if len < HEADER_LEN as u64 {
            return Ok(None);
        }
        Ok(Some(whole_segments(len) * SEGMENT_LEN as u64))
    }

    /// Whether a file of `len` bytes at `p` fits the user's quota now
    /// (an upload is checked again when it starts and as it grows):
    /// [`VaultError::QuotaExceeded`] when not.
    pub async fn check_quota(&self, p: &VPath, len: u64) -> Result<(), VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let old = me.counted_size(&me.name(&p))?;
            me.claim(old, len).map(drop)
        })
        .await
    }

    /// Drops what an interrupted upload to `p` left in staging (a
    /// terminated HTTPS upload). Nothing there is not an error;
    /// [`VaultError::Busy`] while an upload holds it.
    pub async fn discard_staged(&self, p: &VPath) -> Result<(), VaultError> {
        let (me, staging) = (self.clone(), self.staging_name(p));
        blocking(move || {
            let mut staged = me.storage().stage(&staging, &me.inner.record_key)?;
            staged.discard()?;
            Ok(())
        })
        .await
    }

    /// Opens folder `p` for listing. Its entries come a batch at a time
    /// ([`Listing::next_batch`]), in the order storage keeps them: not
    /// sorted, as sorting would hold the whole folder in memory.
    pub async fn list(&self, p: &VPath) -> Result<Listing, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        let lister = blocking(move || Ok(me.storage().list(&me.name(&p))?)).await?;
        Ok(Listing {
            lister: Some(lister),
        })
    }

    /// Opens file `p` for reading at any offset ([`ReadFile::read_at`]).
    /// The header and length are checked now; segments as they are read.
    pub async fn open_read(&self, p: &VPath) -> Result<ReadFile, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        let caps = self.storage().caps();
        blocking(move || {
            let object = me.storage().open(&me.name(&p))?;
            let key = file_key(&me.inner.key, &object)?;
            let mut reader = ObjectReader::new(object);
            let dec = open_decryptor(&mut reader, key)?;
            Ok(ReadFile::new(reader.into_inner(), dec, caps))
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
        self.upload_sized(p, mode, None).await
    }

    /// [`UserVault::upload`] of a file the client says will have `size`
    /// plaintext bytes (FTP `ALLO`): refused at once if that is over the
    /// user's quota.
    pub async fn upload_sized(
        &self,
        p: &VPath,
        mode: UploadMode,
        size: Option<u64>,
    ) -> Result<Upload, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        let plan = self
            .inner
            .scanner
            .current()
            .map(|scanner| upload::ScanPlan {
                scanner,
                user: self.user().to_owned(),
                path: p.to_string(),
                prefix: staging_prefix(self.user()),
            });
        let (begin, target) = blocking(move || me.open_upload(&p, mode, size)).await?;
        Ok(Upload::start(begin, target, plan))
    }

    /// The blocking part of [`UserVault::upload`]: take the staging name,
    /// decide where sealing starts, and charge the staging bytes it takes.
    fn open_upload(
        &self,
        p: &VPath,
        mode: UploadMode,
        size: Option<u64>,
    ) -> Result<(upload::Begin, upload::Target), VaultError> {
        use upload::{Begin, Source};
        if p.is_root() {
            return Err(VaultError::IsADirectory);
        }
        let storage = self.inner.storage.clone();
        let target = self.name(p);
        // The folder it goes in must be there (a missing one is refused
        // now, not at the commit).
        match storage.stat(&self.name(&p.parent()))?.kind {
            Kind::Dir => {}
            _ => return Err(VaultError::NotADirectory),
        }
        let committed = match storage.stat(&target) {
            Ok(m) if m.kind == Kind::Dir => return Err(VaultError::IsADirectory),
            Ok(m) => Some(plaintext_len(m.len)?),
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        if matches!(mode, UploadMode::Create | UploadMode::CreateAt(_)) && committed.is_some() {
            return Err(VaultError::AlreadyExists);
        }
        // One upload per path at a time, across sessions and processes.
        let staging = self.staging_name(p);
        let mut staged = storage.stage(&staging, &self.inner.record_key)?;
        let staged_len = staged.stored_len();
        let mut charge = self.inner.quota.enter(
            self.user(),
            &*storage,
            &format!("{STAGING}/{}-", staging_prefix(self.user())),
            staged_len,
        );
        // New files are sealed under the primary key; existing ones are
        // opened with the key their header names.
        let user_key = &*self.inner.key;
        let key = user_key.data_key();
        let decided = (|| {
            // Plaintext in the whole segments an interrupted upload left.
            let staged_plain = whole_segments(staged_len) * SEGMENT_LEN as u64;
            // The sealed prefix of an interrupted upload, if it can go on.
            let readable = storage.caps().staged_readable;
            let resumable =
                |staged: &mut Box<dyn Staged>| continue_staged(staged, user_key, readable).ok();
            // The committed file, opened now: a re-seal reads what was
            // there when the client asked, and a damaged one is refused at
            // once.
            let open_committed = |len: Option<u64>| -> Result<Begin, VaultError> {
                let object = storage.open(&target)?;
                let old_key = file_key(user_key, &object)?;
                let old = DecryptingReader::new(ObjectReader::new(object), old_key)?;
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
            Ok(match mode {
                UploadMode::Resume(offset) if offset > 0 => match resumable(&mut staged) {
                    Some(w) if w.plaintext_len() == offset => continued(w),
                    _ => match committed {
                        Some(size) if size >= offset => open_committed(Some(offset))?,
                        None if staged_plain >= offset && readable => reseal_staged(offset),
                        other => {
                            return Err(VaultError::BadOffset {
                                requested: offset,
                                available: other.unwrap_or(staged_plain),
                            });
                        }
                    },
                },
                UploadMode::Append => match committed {
                    Some(_) => open_committed(None)?,
                    // No committed file: append to what an interrupted
                    // upload left (the size SIZE reported), if it can be
                    // continued.
                    None => match resumable(&mut staged) {
                        Some(w) => continued(w),
                        None if staged_plain > 0 && readable => reseal_staged(staged_plain),
                        None => Begin::Ready {
                            writer: Box::new(fresh(&mut staged, key)?),
                            continued: false,
                        },
                    },
                },
                UploadMode::CreateAt(offset) if offset > 0 => match resumable(&mut staged) {
                    Some(w) if w.plaintext_len() == offset => continued(w),
                    _ if staged_plain >= offset && readable => reseal_staged(offset),
                    _ => {
                        return Err(VaultError::BadOffset {
                            requested: offset,
                            available: staged_plain,
                        });
                    }
                },
                UploadMode::Replace
                | UploadMode::Resume(_)
                | UploadMode::Create
                | UploadMode::CreateAt(_) => Begin::Ready {
                    writer: Box::new(fresh(&mut staged, key)?),
                    continued: false,
                },
            })
        })();
        let begin = match decided {
            Ok(b) => b,
            Err(e) => {
                // An empty staging file is no upload's: it goes with the
                // refusal.
                if staged_len == 0 {
                    let _ = staged.discard();
                }
                return Err(e);
            }
        };
        let claim = match self.claim(committed, begin.offset().max(size.unwrap_or(0))) {
            Ok(claim) => claim,
            Err(e) => {
                if staged_len == 0 {
                    let _ = staged.discard();
                }
                return Err(e);
            }
        };
        // What the staging files will hold once the re-seal is done: the
        // copy replaces the staging file's content, or (kept data of the
        // staging file itself) sits next to it until it takes its place.
        match &begin {
            Begin::Ready { continued, .. } => {
                charge.settle(if *continued { staged_len } else { 0 })
            }
            Begin::Reseal { from, len } => {
                let bytes = match from {
                    Source::Committed(_) => sealed_len(*len),
                    Source::Staging => staged_len.saturating_add(sealed_len(*len)),
                };
                if let Err(e) = charge.set(bytes) {
                    if staged_len == 0 {
                        let _ = staged.discard();
                    }
                    return Err(e);
                }
            }
        }
        Ok((
            begin,
            upload::Target {
                staged,
                storage,
                staging,
                target,
                replace: !matches!(mode, UploadMode::Create | UploadMode::CreateAt(_)),
                key: self.inner.key.clone(),
                charge,
                claim,
                record_key: self.inner.record_key.clone(),
            },
        ))
    }

    /// Sets the modification time of file or folder `p` (FTP `MFMT`, SFTP `SETSTAT`);
    /// returns the entry as it is now.
    pub async fn set_modified(&self, p: &VPath, time: SystemTime) -> Result<Entry, VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let meta = me.storage().set_modified(&me.name(&p), time)?;
            entry(p.name().unwrap_or("/"), &meta).ok_or(VaultError::PermissionDenied)
        })
        .await
    }

    /// Deletes file `p`.
    pub async fn remove(&self, p: &VPath) -> Result<(), VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            let name = me.name(&p);
            let size = me.counted_size(&name)?;
            me.storage().remove(&name)?;
            me.forget(size);
            Ok(())
        })
        .await
    }

    /// The quota's view of an upload to a file of `old` plaintext bytes
    /// (`None`: a new file) that holds `len` bytes so far; `None` when no
    /// limit applies.
    fn claim(&self, old: Option<u64>, len: u64) -> Result<Option<usage::Claim>, VaultError> {
        self.inner
            .ledger
            .as_ref()
            .map(|l| l.claim(old, len))
            .transpose()
    }

    /// The plaintext size of the file stored as `name`, when the quota
    /// counts it: `None` for no file (or a folder), or no limit. Blocking.
    fn counted_size(&self, name: &str) -> Result<Option<u64>, VaultError> {
        if self.inner.ledger.is_none() {
            return Ok(None);
        }
        match self.storage().stat(name) {
            Ok(m) if m.kind == Kind::File => Ok(Some(plaintext_len(m.len).unwrap_or(0))),
            Ok(_) | Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes a file of `size` bytes that this vault removed off the quota's
    /// count.
    fn forget(&self, size: Option<u64>) {
        if let (Some(ledger), Some(size)) = (&self.inner.ledger, size) {
            ledger.removed(size);
        }
    }

    /// Creates folder `p`.
    pub async fn mkdir(&self, p: &VPath) -> Result<(), VaultError> {
        let (me, p) = (self.clone(), p.clone());
        blocking(move || {
            if p.is_root() {
                return Err(VaultError::AlreadyExists);
            }
            Ok(me.storage().mkdir(&me.name(&p))?)
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
            Ok(me.storage().rmdir(&me.name(&p))?)
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
            // A file the rename replaces is freed.
            let replaced = if to == from {
                None
            } else {
                me.counted_size(&me.name(&to))?
            };
            me.storage()
                .rename(&me.name(&from), &me.name(&to), Commit::Replace)?;
            me.forget(replaced);
            Ok(())
        })
        .await
    }

    /// The staging name of an upload to `p`.
    fn staging_name(&self, p: &VPath) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(self.user().as_bytes());
        ctx.update(b"\0");
        ctx.update(p.to_string().as_bytes());
        let hash = ctx.finish();
        format!(
            "{STAGING}/{}-{}.part",
            staging_prefix(self.user()),
            hex(&hash.as_ref()[..16])
        )
    }
}

/// HMAC-SHA256 under a key derived (HKDF) from a user's data key: what
/// authenticates storage's records of that user's staged uploads.
struct RecordMac(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for RecordMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordMac([redacted])")
    }
}

impl RecordMac {
    fn new(dek: &dropvault_format::DataKey) -> Self {
        use aws_lc_rs::{hkdf, hmac};
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"dropvault").extract(dek.expose_secret());
        let info = [&b"dropvault staging record v1"[..]];
        let key = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            // One HMAC-SHA256 key from an HKDF-SHA256 PRK: within its limit.
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, dek.expose_secret()));
        Self(key)
    }
}

impl RecordKey for RecordMac {
    fn tag(&self, record: &[u8]) -> Vec<u8> {
        aws_lc_rs::hmac::sign(&self.0, record).as_ref().to_vec()
    }

    fn verify(&self, record: &[u8], tag: &[u8]) -> bool {
        aws_lc_rs::hmac::verify(&self.0, record, tag).is_ok()
    }
}

/// The storage name of `p` in the folder `home`.
fn stored_name(home: &str, p: &VPath) -> String {
    p.parts()
        .iter()
        .fold(home.to_owned(), |name, part| storage::join(&name, part))
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
type Sealer = EncryptingWriter<Box<dyn Sink>>;

/// The one of `key`'s data keys that sealed the file `object` holds: the
/// one its header names. The header is read only when the user has several
/// keys; for a header naming none of them, see [`UserKey::key_for_header`].
fn file_key<'k>(
    key: &'k UserKey,
    object: &impl storage::ReadAt,
) -> Result<&'k dropvault_format::DataKey, StorageError> {
    if !key.has_several() {
        return Ok(key.data_key());
    }
    let mut header = [0u8; HEADER_LEN];
    let n = usize::try_from(object.stored_len()).map_or(HEADER_LEN, |l| l.min(HEADER_LEN));
    object.read_exact_at(&mut header[..n], 0)?;
    Ok(key.key_for_header(&header[..n]))
}

/// Continues the unfinished upload `staged` holds under its own salt and
/// the key its header names: its header and last segment are read back and
/// checked, and sealing goes on at its end.
fn continue_staged(
    staged: &mut Box<dyn Staged>,
    key: &UserKey,
    readable: bool,
) -> Result<Sealer, VaultError> {
    let len = staged.stored_len();
    if len == 0 {
        return Err(VaultError::NotFound);
    }
    let (_, last) = dropvault_format::resume_point(len)?;
    let mut header = [0u8; HEADER_LEN];
    staged.read_exact_at(&mut header, 0)?;
    // Storage that cannot read an unfinished upload back keeps its state
    // in a record authenticated under the user's key instead.
    let mut last_sealed = Vec::new();
    let checked = match last {
        Some(offset) if readable => {
            last_sealed.resize(SEALED_SEGMENT_LEN, 0);
            staged.read_exact_at(&mut last_sealed, offset)?;
            Some(&last_sealed[..])
        }
        Some(_) => None,
        None => Some(&[][..]),
    };
    let sink = staged.sink(len)?;
    Ok(EncryptingWriter::resume_with(
        sink,
        key.key_for_header(&header),
        &header,
        len,
        checked,
    )?)
}

/// Starts a new sealed file in the staging name, dropping what it held.
fn fresh(
    staged: &mut Box<dyn Staged>,
    key: &dropvault_format::DataKey,
) -> Result<Sealer, VaultError> {
    Ok(EncryptingWriter::new(staged.sink(0)?, key)?)
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

/// Starts a new sealed file in `staged` holding the first `len` plaintext
/// bytes `old` reads (a committed file), under a fresh salt. Stops early
/// once `stop` says so.
fn reseal(
    staged: &mut Box<dyn Staged>,
    old: &mut DecryptingReader<ObjectReader>,
    key: &dropvault_format::DataKey,
    len: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Sealer, VaultError> {
    let mut writer = fresh(staged, key)?;
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

/// Re-seals the first `len` plaintext bytes of the unfinished upload
/// `staged` holds (its whole segments, read back and authenticated) under a
/// fresh salt and the primary key into a new staging name, which then takes the place of
/// `staged` under its name, held before anyone can see it. For a staging
/// file that a crash left ending inside a segment: that segment's counter
/// may be stored already, so the upload cannot go on under the old salt
/// (docs/FORMAT.md, section 6). Stopped early (by `stop`) or failed, it
/// leaves `staged` as it was.
fn reseal_staging(
    staged: &mut Box<dyn Staged>,
    storage: &dyn Storage,
    record_key: &Arc<dyn RecordKey>,
    staging: &str,
    key: &UserKey,
    len: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Sealer, VaultError> {
    let tmp = format!("{}.reseal", staging.trim_end_matches(".part"));
    let mut new = storage.stage(&tmp, record_key)?;
    let copied = (|| {
        let mut header = [0u8; HEADER_LEN];
        staged.read_exact_at(&mut header, 0)?;
        let segments = len.div_ceil(SEGMENT_LEN as u64);
        let dec = Decryptor::unfinished(key.key_for_header(&header), &header, segments)?;
        let mut writer = fresh(&mut new, key.data_key())?;
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
            staged.read_exact_at(body, seg.ciphertext_offset)?;
            let n = dec.open(&seg, body, &mut plain)?;
            let take = usize::try_from(left).map_or(n, |l| l.min(n));
            writer.write_all(&plain[..take]).map_err(map_io)?;
            left -= take as u64;
        }
        Ok(writer)
    })();
    match copied {
        Ok(writer) => {
            staged.replace_with(new)?;
            Ok(writer)
        }
        Err(e) => {
            // Still ours: we hold it.
            let _ = new.discard();
            Err(e)
        }
    }
}

fn entry(name: &str, meta: &Meta) -> Option<Entry> {
    let kind = match meta.kind {
        Kind::File => EntryKind::File,
        Kind::Dir => EntryKind::Dir,
        Kind::Other(_) => return None,
    };
    let size = match kind {
        EntryKind::File => plaintext_len(meta.len).unwrap_or(0),
        EntryKind::Dir => 0,
    };
    Some(Entry {
        name: name.to_owned(),
        kind,
        size,
        modified: meta.modified,
    })
}
