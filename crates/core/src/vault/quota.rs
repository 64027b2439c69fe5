//! The bound on each user's staging bytes (`storage.max_staging_bytes_per_user`):
//! what their unfinished uploads, re-sealed copies for appends and resumes and
//! commit temporaries take in the staging folder, together.
//!
//! The staging folder is the truth. While a user has no upload running, the
//! first upload to start counts their staging files on disk; from then on,
//! each running upload charges what its own staging files grow or shrink
//! by, before it writes, so uploads running side by side share one count.
//! Files that go away by other means (expiry, an operator) are counted
//! until the user's uploads have all ended: the count errs on the high side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::VaultError;
use crate::storage::Storage;

/// The bound, and the count of every user with uploads running.
#[derive(Debug)]
pub(crate) struct StagingQuota {
    /// Staging bytes a user may have; `None` = no bound.
    limit: Option<u64>,
    users: Mutex<HashMap<String, Usage>>,
}

#[derive(Debug, Default)]
struct Usage {
    bytes: u64,
    uploads: usize,
}

impl StagingQuota {
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Starts counting an upload of the user whose staging file names start
    /// with `prefix` in `staging`; `held` is what the upload's (locked)
    /// staging file holds already. Blocking (may read the staging folder).
    pub(crate) fn enter(
        self: &Arc<Self>,
        user: &str,
        storage: &dyn Storage,
        prefix: &str,
        held: u64,
    ) -> Charge {
        let charge = Charge {
            quota: self.clone(),
            user: user.to_owned(),
            held,
        };
        if self.limit.is_none() {
            return charge;
        }
        let mut users = self.lock();
        let usage = users.entry(user.to_owned()).or_default();
        if usage.uploads == 0 {
            usage.bytes = storage.staged_bytes(prefix);
        }
        usage.uploads += 1;
        charge
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        // The map stays consistent whatever panicked while holding it.
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One upload's share of its user's count: the bytes its staging files
/// hold. Dropping it ends the upload's part in the count; the bytes stay
/// counted (the files stay) unless set to 0 first.
#[derive(Debug)]
pub(crate) struct Charge {
    quota: Arc<StagingQuota>,
    user: String,
    held: u64,
}

impl Charge {
    /// Records that this upload's staging files will hold `bytes`:
    /// [`VaultError::StagingFull`] if the user's staging would
    /// then exceed the bound (nothing is recorded then). Growing is checked,
    /// shrinking always succeeds.
    pub(crate) fn set(&mut self, bytes: u64) -> Result<(), VaultError> {
        let Some(limit) = self.quota.limit else {
            return Ok(());
        };
        let mut users = self.quota.lock();
        let usage = users.entry(self.user.clone()).or_default();
        let others = usage.bytes.saturating_sub(self.held);
        if bytes > self.held && others.saturating_add(bytes) > limit {
            return Err(VaultError::StagingFull { limit });
        }
        usage.bytes = others.saturating_add(bytes);
        self.held = bytes;
        Ok(())
    }

    /// The staging bytes this upload is charged for.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }

    /// [`Charge::set`] for a size that can only have shrunk (or stayed).
    pub(crate) fn settle(&mut self, bytes: u64) {
        if bytes <= self.held {
            let _ = self.set(bytes);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.quota.limit.is_none() {
            return;
        }
        let mut users = self.quota.lock();
        if let Some(usage) = users.get_mut(&self.user) {
            usage.uploads = usage.uploads.saturating_sub(1);
            if usage.uploads == 0 {
                users.remove(&self.user);
            }
        }
    }
}
