//! Per-user quotas (`limits.quota_bytes`, `limits.quota_files`, and
//! per-user overrides): the plaintext bytes and the number of a user's
//! committed files.
//!
//! Storage is the truth. When a user logs in, their folder is counted (a
//! walk bounded by the listing limit) and the count is kept while any of
//! their sessions or uploads is open on this node; this node's own commits,
//! deletes and renames update it. A login that overlaps one of those keeps
//! the count it had (the walk may have missed the change).
//!
//! A running upload reserves what it adds: its plaintext length, less the
//! size of the file it replaces, and one file when it creates a new name.
//! Its bytes are checked before they are written, so uploads running side
//! by side share the limit. The file it replaces is only freed at its
//! commit. Two nodes writing for the same user at the same moment each
//! check against their own count: together they can go past the limit by
//! what one of them admits, until the next login recounts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dropvault_format::plaintext_len;

use super::{VaultError, LIST_BATCH};
use crate::storage::{self, Kind, Storage};

/// A user's limits. `None` = not set here (an override then falls back to
/// the server's setting); `Some(0)` = no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Plaintext bytes of committed files.
    pub bytes: Option<u64>,
    /// Number of committed files.
    pub files: Option<u64>,
}

impl Quota {
    /// These limits, with `default`'s where these are not set.
    pub fn or(self, default: Quota) -> Quota {
        Quota {
            bytes: self.bytes.or(default.bytes),
            files: self.files.or(default.files),
        }
    }

    /// Whether neither limit applies.
    pub fn is_off(self) -> bool {
        limit(self.bytes).is_none() && limit(self.files).is_none()
    }
}

/// A limit that applies: set and not 0.
fn limit(setting: Option<u64>) -> Option<u64> {
    setting.filter(|&n| n > 0)
}

/// What a user's committed files take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Plaintext bytes.
    pub bytes: u64,
    /// Files (folders are not counted).
    pub files: u64,
}

/// Counts the files under `home`: `None` if there are more than
/// `max_entries` files and folders (the count is then unknown).
/// Blocking.
pub(crate) fn count(
    storage: &dyn Storage,
    home: &str,
    max_entries: usize,
) -> Result<Option<Usage>, VaultError> {
    let mut usage = Usage::default();
    let mut folders = vec![home.to_owned()];
    let mut seen = 0usize;
    while let Some(folder) = folders.pop() {
        let mut lister = storage.list(&folder)?;
        loop {
            let batch = lister.next_batch(LIST_BATCH)?;
            if batch.is_empty() {
                break;
            }
            seen += batch.len();
            if seen > max_entries {
                return Ok(None);
            }
            for listed in batch {
                match listed.meta.kind {
                    Kind::File => {
                        usage.bytes += plaintext_len(listed.meta.len).unwrap_or(0);
                        usage.files += 1;
                    }
                    Kind::Dir => folders.push(storage::join(&folder, &listed.name)),
                    Kind::Other(_) => {}
                }
            }
        }
    }
    Ok(Some(usage))
}

/// The server's limits, and the counts of users with a session or an
/// upload open.
#[derive(Debug)]
pub(crate) struct Quotas {
    /// The server's limits (replaced by a reload).
    default: Mutex<Quota>,
    /// Most files and folders a count reads.
    max_entries: usize,
    users: Mutex<HashMap<String, Book>>,
}

#[derive(Debug, Default)]
struct Book {
    used: Usage,
    /// What running uploads add.
    reserved: Usage,
    /// Open ledgers (sessions and uploads).
    holders: usize,
    /// Bumped by every change this node makes.
    generation: u64,
    /// The last count found too many entries.
    unknown: bool,
}

impl Quotas {
    pub(crate) fn new(default: Quota, max_entries: usize) -> Self {
        Self {
            default: Mutex::new(default),
            max_entries,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Logins from now on get `default` where the user has no limit of
    /// their own; ledgers already open keep the limits they opened with.
    pub(crate) fn set_default(&self, default: Quota) {
        *self.default.lock().unwrap_or_else(PoisonError::into_inner) = default;
    }

    /// Most files and folders a count reads.
    pub(crate) fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Book>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens `user`'s ledger at login, with their own limits over the
    /// server's; `count` counts their files (blocking). `None` when no
    /// limit applies to them.
    pub(crate) fn open(
        self: &Arc<Self>,
        user: &str,
        own: Quota,
        count: impl FnOnce() -> Result<Option<Usage>, VaultError>,
    ) -> Result<Option<Arc<Ledger>>, VaultError> {
        let quota = own.or(*self.default.lock().unwrap_or_else(PoisonError::into_inner));
        if quota.is_off() {
            return Ok(None);
        }
        let generation = {
            let mut users = self.lock();
            let book = users.entry(user.to_owned()).or_default();
            book.holders += 1;
            book.generation
        };
        let ledger = Arc::new(Ledger {
            quotas: self.clone(),
            user: user.to_owned(),
            quota,
        });
        let counted = count()?;
        ledger.with_book(|book| {
            if book.generation == generation {
                book.used = counted.unwrap_or(book.used);
                book.unknown = counted.is_none();
            }
        });
        Ok(Some(ledger))
    }
}

/// One user's count and limits, held by their sessions and uploads.
#[derive(Debug)]
pub(crate) struct Ledger {
    quotas: Arc<Quotas>,
    user: String,
    quota: Quota,
}

impl Ledger {
    fn with_book<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        let mut users = self.quotas.lock();
        f(users.entry(self.user.clone()).or_default())
    }

    /// The refusal, and the one event every refusal logs (for metrics).
    fn refuse(&self, files: bool, limit: u64) -> VaultError {
        tracing::info!(event = "quota_refused", user = %self.user, files, limit,
            "upload refused: over the user's quota");
        crate::metrics::metrics().quota_refused();
        VaultError::QuotaExceeded { files, limit }
    }

    /// Checks that `book` can take `bytes` and `files` more.
    fn check(&self, book: &Book, bytes: u64, files: u64) -> Result<(), VaultError> {
        let files_limit = limit(self.quota.files);
        if book.unknown {
            return Err(self.refuse(true, files_limit.unwrap_or(self.quotas.max_entries as u64)));
        }
        let over = |limit: Option<u64>, used: u64, reserved: u64, more: u64| {
            limit.filter(|&l| more > 0 && used.saturating_add(reserved).saturating_add(more) > l)
        };
        if let Some(l) = over(files_limit, book.used.files, book.reserved.files, files) {
            return Err(self.refuse(true, l));
        }
        let bytes_limit = limit(self.quota.bytes);
        if let Some(l) = over(bytes_limit, book.used.bytes, book.reserved.bytes, bytes) {
            return Err(self.refuse(false, l));
        }
        Ok(())
    }

    /// Starts counting an upload that will hold `len` plaintext bytes so
    /// far, replacing a file of `old` bytes (`None`: a new file), or says
    /// it is over the quota.
    pub(crate) fn claim(self: &Arc<Self>, old: Option<u64>, len: u64) -> Result<Claim, VaultError> {
        let mut claim = Claim {
            ledger: self.clone(),
            old,
            reserved: Usage::default(),
        };
        let files = u64::from(old.is_none());
        self.with_book(|book| {
            self.check(book, 0, files)?;
            book.reserved.files += files;
            Ok::<_, VaultError>(())
        })?;
        claim.reserved.files = files;
        claim.grow(len)?;
        Ok(claim)
    }

    /// Records that this node removed a file of `size` bytes (a delete,
    /// or a file a rename replaced).
    pub(crate) fn removed(&self, size: u64) {
        self.with_book(|book| {
            book.used.bytes = book.used.bytes.saturating_sub(size);
            book.used.files = book.used.files.saturating_sub(1);
            book.generation += 1;
        });
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let mut users = self.quotas.lock();
        if let Some(book) = users.get_mut(&self.user) {
            book.holders = book.holders.saturating_sub(1);
            if book.holders == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// One upload's reservation. Dropped without [`Claim::committed`], it
/// frees what it reserved.
#[derive(Debug)]
pub(crate) struct Claim {
    ledger: Arc<Ledger>,
    /// Size of the file the upload replaces, when it started.
    old: Option<u64>,
    reserved: Usage,
}

impl Claim {
    /// Records that the upload will hold `len` plaintext bytes, or says it
    /// is over the quota (nothing is recorded then).
    pub(crate) fn grow(&mut self, len: u64) -> Result<(), VaultError> {
        let adds = len.saturating_sub(self.old.unwrap_or(0));
        if adds <= self.reserved.bytes {
            return Ok(());
        }
        let more = adds - self.reserved.bytes;
        self.ledger.with_book(|book| {
            self.ledger.check(book, more, 0)?;
            book.reserved.bytes += more;
            Ok::<_, VaultError>(())
        })?;
        self.reserved.bytes = adds;
        Ok(())
    }

    /// Records the commit of `len` bytes over a file of `old` bytes (`None`:
    /// there was none), as storage had it just before.
    pub(crate) fn committed(mut self, old: Option<u64>, len: u64) {
        self.ledger.with_book(|book| {
            book.used.bytes = book
                .used
                .bytes
                .saturating_sub(old.unwrap_or(0))
                .saturating_add(len);
            book.used.files += u64::from(old.is_none());
            book.generation += 1;
        });
        self.release();
    }

    fn release(&mut self) {
        let reserved = std::mem::take(&mut self.reserved);
        self.ledger.with_book(|book| {
            book.reserved.bytes = book.reserved.bytes.saturating_sub(reserved.bytes);
            book.reserved.files = book.reserved.files.saturating_sub(reserved.files);
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release();
    }
}
