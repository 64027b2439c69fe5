//! The keyring: one unwrapped data key per logged-in user, shared by all
//! that user's sessions, gone (zeroized) when the last session lets go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{
    DataKey, KeyError, KeyFile, KeyFileStore, KeyProvider, RecoveryKey, RecoveryWrap,
    KEY_FILE_FORMAT,
};
use crate::hex;

/// A user's unwrapped data key, held for the length of a login. Clone the
/// `Arc` to share it; when the last `Arc` drops, the key bytes are zeroized.
#[derive(Debug)]
pub struct UserKey {
    user: String,
    key: DataKey,
}

impl UserKey {
    /// A key obtained outside a keyring (offline recovery).
    pub fn new(user: &str, key: DataKey) -> Self {
        Self {
            user: user.to_owned(),
            key,
        }
    }

    /// The user this key belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The data key, for sealing and opening the user's files.
    pub fn data_key(&self) -> &DataKey {
        &self.key
    }
}

impl Drop for UserKey {
    fn drop(&mut self) {
        // The bytes themselves are zeroized by DataKey's own drop.
        tracing::debug!(user = %self.user, "data key released");
    }
}

/// Per-user slot: serializes unlocks of one user without blocking others.
type Slot = Arc<Mutex<Weak<UserKey>>>;

/// Hands out data keys: creates a user's key on first login, unwraps it on
/// later ones, and shares one unwrapped copy among concurrent sessions.
#[derive(Debug)]
pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    store: KeyFileStore,
    recovery: Option<RecoveryKey>,
    slots: Mutex<HashMap<String, Slot>>,
}

/// What [`Keyring::rotate`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotateReport {
    /// The KEK version key files were brought to.
    pub version: u32,
    /// Key files looked at.
    pub files: usize,
    /// Re-wrapped to the current KEK version.
    pub rewrapped: usize,
    /// Given a (new) recovery wrap.
    pub recovery_added: usize,
    /// Already current.
    pub unchanged: usize,
    /// Could not be brought up to date: path and reason.
    pub failed: Vec<(String, String)>,
}

impl Keyring {
    /// A keyring over `provider` and the key files in `store`.
    pub fn new(provider: Arc<dyn KeyProvider>, store: KeyFileStore) -> Self {
        Self {
            provider,
            store,
            recovery: None,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Also wraps every data key to `recovery`: new keys when created,
    /// existing ones at their next login or `rotate`.
    pub fn with_recovery(mut self, recovery: Option<RecoveryKey>) -> Self {
        self.recovery = recovery;
        self
    }

    /// The key provider.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The recovery key every data key is also wrapped to, if any.
    pub fn recovery(&self) -> Option<&RecoveryKey> {
        self.recovery.as_ref()
    }

    /// The data key of a user who already has one (never creates a key).
    /// For offline tools; does not share with or update the login slots.
    pub fn open_existing(&self, user: &str) -> Result<UserKey, KeyError> {
        let kf = self.store.load(user)?.ok_or_else(|| KeyError::NoKeyFile {
            user: user.to_owned(),
        })?;
        Ok(UserKey::new(user, self.unwrap_file(&kf)?))
    }

    /// Brings every key file up to date: re-wraps those under an older KEK
    /// version (in batches, through the provider's rewrap, so the keys need
    /// not pass through this process), and adds a recovery wrap where one
    /// is configured and missing (that needs the key itself). Key files
    /// destroyed meanwhile stay destroyed.
    pub fn rotate(&self) -> Result<RotateReport, KeyError> {
        let target = self.provider.current_version()?;
        let mut report = RotateReport {
            version: target,
            ..RotateReport::default()
        };
        let mut stale = Vec::new();
        let mut current = Vec::new();
        for (path, parsed) in self.store.list()? {
            report.files += 1;
            match parsed {
                Ok(kf)
                    if kf.provider != self.provider.kind()
                        || kf.key_name != self.provider.key_name() =>
                {
                    report.failed.push((
                        path.display().to_string(),
                        format!(
                            "wrapped by {}:{}, not by this server's KEK",
                            kf.provider, kf.key_name
                        ),
                    ));
                }
                Ok(kf) if kf.key_version < target => stale.push((path, kf)),
                Ok(kf) => current.push((path, kf, false)),
                Err(e) => report
                    .failed
                    .push((path.display().to_string(), e.to_string())),
            }
        }
        let items: Vec<(&str, super::Wrapped)> = stale
            .iter()
            .map(|(_, kf)| (kf.user.as_str(), kf.wrapped()))
            .collect();
        let results = self.provider.rewrap(&items);
        for ((path, mut kf), result) in stale.into_iter().zip(results) {
            match result {
                Ok(w) => {
                    kf.key_version = w.key_version;
                    kf.wrapped_key = w.ciphertext;
                    match self.store.replace(&kf) {
                        Ok(true) => {
                            report.rewrapped += 1;
                            current.push((path, kf, true));
                        }
                        Ok(false) => {}
                        Err(e) => report
                            .failed
                            .push((path.display().to_string(), e.to_string())),
                    }
                }
                Err(e) => report
                    .failed
                    .push((path.display().to_string(), e.to_string())),
            }
        }
        for (path, kf, rewrapped) in current {
            if !self.needs_recovery_wrap(&kf) {
                report.unchanged += usize::from(!rewrapped);
                continue;
            }
            let updated = self
                .unwrap_file(&kf)
                .and_then(|dek| self.add_recovery(kf, &dek))
                .and_then(|kf| self.store.replace(&kf));
            match updated {
                Ok(true) => report.recovery_added += 1,
                Ok(false) => {}
                Err(e) => report
                    .failed
                    .push((path.display().to_string(), e.to_string())),
            }
        }
        Ok(report)
    }

    /// The user's data key: the one already unlocked by another session, or
    /// unwrapped from the key file, or — at the first login — created,
    /// wrapped and stored. If the provider fails, nothing is created.
    /// Blocks; call from a blocking thread in async code.
    pub fn unlock(&self, user: &str) -> Result<Arc<UserKey>, KeyError> {
        let slot = self.slot(user);
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = held.upgrade() {
            return Ok(key);
        }
        let key = Arc::new(UserKey {
            user: user.to_owned(),
            key: self.load_or_create(user)?,
        });
        *held = Arc::downgrade(&key);
        Ok(key)
    }

    /// Number of users whose key is unlocked right now.
    pub fn unlocked_users(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .values()
            .filter(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .strong_count()
                    > 0
            })
            .count()
    }

    /// The key-file store.
    pub fn store(&self) -> &KeyFileStore {
        &self.store
    }

    fn slot(&self, user: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget slots nobody holds or is unlocking, so the map stays as
        // small as the set of logged-in users.
        slots.retain(|_, s| {
            Arc::strong_count(s) > 1 || s.try_lock().is_ok_and(|w| w.strong_count() > 0)
        });
        slots.entry(user.to_owned()).or_default().clone()
    }

    fn load_or_create(&self, user: &str) -> Result<DataKey, KeyError> {
        if let Some(kf) = self.store.load(user)? {
            let dek = self.unwrap_file(&kf)?;
            self.refresh(kf, &dek);
            return Ok(dek);
        }
        let dek = DataKey::generate().map_err(|_| KeyError::Random)?;
        let wrapped = self.provider.wrap(user, &dek)?;
        let kf = KeyFile {
            format: KEY_FILE_FORMAT,
            user: user.to_owned(),
            provider: self.provider.kind().to_owned(),
            key_name: self.provider.key_name().to_owned(),
            key_version: wrapped.key_version,
            key_id: hex(&dek.id().0),
            wrapped_key: wrapped.ciphertext,
            recovery: None,
        };
        let kf = self.add_recovery(kf, &dek)?;
        match self.store.create(&kf) {
            Ok(path) => {
                tracing::info!(user, path = %path.display(), "created data key");
                Ok(dek)
            }
            // Another process created it meanwhile: theirs wins.
            Err(KeyError::KeyFileExists { .. }) => match self.store.load(user)? {
                Some(kf) => self.unwrap_file(&kf),
                None => Err(KeyError::KeyFileExists {
                    path: self.store.path_for(user),
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// At login: re-wraps a key file under an older KEK version, adds a
    /// missing recovery wrap. Failures are logged, not fatal: the user has
    /// their key, and the next login or `keys rotate` tries again.
    fn refresh(&self, mut kf: KeyFile, dek: &DataKey) {
        let user = kf.user.clone();
        let mut changed = false;
        match self.provider.current_version() {
            Ok(v) if v > kf.key_version => match self.provider.wrap(&user, dek) {
                Ok(w) => {
                    tracing::info!(
                        user,
                        from = kf.key_version,
                        to = w.key_version,
                        "re-wrapping data key under the newer KEK version"
                    );
                    kf.key_version = w.key_version;
                    kf.wrapped_key = w.ciphertext;
                    changed = true;
                }
                Err(e) => tracing::warn!(user, error = %e, "re-wrapping the data key failed"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(user, error = %e, "cannot read the KEK version"),
        }
        if self.needs_recovery_wrap(&kf) {
            match self.add_recovery(kf.clone(), dek) {
                Ok(updated) => {
                    kf = updated;
                    changed = true;
                }
                Err(e) => tracing::warn!(user, error = %e, "adding the recovery wrap failed"),
            }
        }
        if changed {
            if let Err(e) = self.store.replace(&kf) {
                tracing::warn!(user, error = %e, "updating the key file failed");
            }
        }
    }

    fn needs_recovery_wrap(&self, kf: &KeyFile) -> bool {
        self.recovery
            .as_ref()
            .is_some_and(|r| kf.recovery.as_ref().is_none_or(|w| w.key_name != r.name()))
    }

    fn add_recovery(&self, mut kf: KeyFile, dek: &DataKey) -> Result<KeyFile, KeyError> {
        if let Some(r) = &self.recovery {
            kf.recovery = Some(RecoveryWrap {
                key_name: r.name().to_owned(),
                wrapped_key: r.wrap(&kf.user, dek)?,
            });
        }
        Ok(kf)
    }

    fn unwrap_file(&self, kf: &KeyFile) -> Result<DataKey, KeyError> {
        let p = &self.provider;
        if kf.provider != p.kind() || kf.key_name != p.key_name() {
            return Err(KeyError::WrongKek {
                expected_kind: p.kind().to_owned(),
                expected_name: p.key_name().to_owned(),
                found_kind: kf.provider.clone(),
                found_name: kf.key_name.clone(),
            });
        }
        let dek = p.unwrap(&kf.user, &kf.wrapped())?;
        kf.check(&dek)?;
        Ok(dek)
    }
}
