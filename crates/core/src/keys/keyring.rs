//! The keyring: the unwrapped data keys of each logged-in user, shared by
//! all that user's sessions, gone (zeroized) when the last session lets go.
//!
//! A user normally has one data key. Where two nodes handle a user's first
//! login at once over a shared key store, each may store a key before it
//! sees the other's; then the user has two for good. Both stay, as files
//! may already be sealed under either; every node unwraps all of them at
//! login, opens each file with the key its header names, and seals new
//! files under the one with the smallest key id, so they all settle on the
//! same key once they see the same key files.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use dropvault_format::header::{Header, Parsed};
use dropvault_format::KeyId;

use super::{
    DataKey, KeyError, KeyFile, KeyProvider, KeyStore, RecoveryKey, RecoveryWrap, KEY_FILE_FORMAT,
};
use crate::hex;

/// A user's unwrapped data keys, held for the length of a login: the
/// primary one, which seals new files, and any others the user has. Clone
/// the `Arc` to share it; when the last `Arc` drops, the key bytes are
/// zeroized.
#[derive(Debug)]
pub struct UserKey {
    user: String,
    primary: DataKey,
    /// The user's other keys, in key id order.
    others: Vec<DataKey>,
}

impl UserKey {
    /// A user with one key (obtained outside a keyring, or in tests).
    pub fn new(user: &str, key: DataKey) -> Self {
        Self {
            user: user.to_owned(),
            primary: key,
            others: Vec::new(),
        }
    }

    /// A user with all of `keys`; the one with the smallest key id is the
    /// primary. The same key given twice counts once. Fails with
    /// [`KeyError::NoKeyFile`] if there is none.
    pub fn with_keys(user: &str, mut keys: Vec<DataKey>) -> Result<Self, KeyError> {
        keys.sort_by_key(|k| k.id().0);
        keys.dedup_by(|a, b| a.id() == b.id());
        let mut keys = keys.into_iter();
        let primary = keys.next().ok_or_else(|| KeyError::NoKeyFile {
            user: user.to_owned(),
        })?;
        Ok(Self {
            user: user.to_owned(),
            primary,
            others: keys.collect(),
        })
    }

    /// The user this key belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The primary data key: what new files are sealed under.
    pub fn data_key(&self) -> &DataKey {
        &self.primary
    }

    /// The user's key with id `id`, if they have it.
    pub fn key_for(&self, id: &KeyId) -> Option<&DataKey> {
        self.keys().find(|k| k.id() == *id)
    }

    /// The key to open the sealed file that starts with `header` (its first
    /// bytes, up to [`dropvault_format::HEADER_LEN`]): the one its key id
    /// names. Bytes that are no header, or a header naming none of the
    /// user's keys, get the primary key, so opening the file fails just as
    /// it would with one key (bad header, wrong key).
    pub fn key_for_header(&self, header: &[u8]) -> &DataKey {
        match Header::parse(header) {
            Ok(Parsed::Header(h, _)) => self.key_for(&h.key_id).unwrap_or(&self.primary),
            _ => &self.primary,
        }
    }

    /// Whether the user has more than one key, so the key of a file must be
    /// read from its header.
    pub fn has_several(&self) -> bool {
        !self.others.is_empty()
    }

    /// All the user's keys, the primary first.
    pub fn keys(&self) -> impl Iterator<Item = &DataKey> {
        std::iter::once(&self.primary).chain(&self.others)
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

/// Hands out data keys: creates a user's key on first login, unwraps their
/// keys on later ones, and shares one unwrapped copy among concurrent
/// sessions.
#[derive(Debug)]
pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn KeyStore>,
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
    /// Could not be brought up to date: where the key file is, and why.
    pub failed: Vec<(String, String)>,
}

impl Keyring {
    /// A keyring over `provider` and the key files in `store`. Every call
    /// to the provider, through the keyring or [`provider`](Self::provider),
    /// is counted in the process's metrics.
    pub fn new(provider: Arc<dyn KeyProvider>, store: Arc<dyn KeyStore>) -> Self {
        Self {
            provider: Arc::new(super::metered::Metered(provider)),
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

    /// The data keys of a user who already has some (never creates a key).
    /// For offline tools; does not share with or update the login slots.
    pub fn open_existing(&self, user: &str) -> Result<UserKey, KeyError> {
        let keys = self
            .store
            .load_all(user)?
            .iter()
            .map(|kf| self.unwrap_file(kf))
            .collect::<Result<Vec<_>, _>>()?;
        UserKey::with_keys(user, keys)
    }

    /// Brings every key file up to date: re-wraps those under an older KEK
    /// version (in batches, through the provider's rewrap, so the keys need
    /// not pass through this process) or under another KEK the provider
    /// still holds (an older `pkcs11` key pair), and adds a recovery wrap where one
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
                        || !self.provider.holds(&kf.key_name) =>
                {
                    report.failed.push((
                        path,
                        format!(
                            "wrapped by {}:{}, not by this server's KEK",
                            kf.provider, kf.key_name
                        ),
                    ));
                }
                Ok(kf) if kf.key_name != self.provider.key_name() => {
                    match self.move_to_current(kf) {
                        Ok(Some(kf)) => {
                            report.rewrapped += 1;
                            current.push((path, kf, true));
                        }
                        Ok(None) => {}
                        Err(e) => report.failed.push((path, e.to_string())),
                    }
                }
                Ok(kf) if kf.key_version < target => stale.push((path, kf)),
                Ok(kf) => current.push((path, kf, false)),
                Err(e) => report.failed.push((path, e.to_string())),
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
                        Err(e) => report.failed.push((path, e.to_string())),
                    }
                }
                Err(e) => report.failed.push((path, e.to_string())),
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
                Err(e) => report.failed.push((path, e.to_string())),
            }
        }
        Ok(report)
    }

    /// The user's data keys: those already unlocked by another session, or
    /// unwrapped from their key files, or — at the first login — a key
    /// created, wrapped and stored. If the provider or the store fails,
    /// nothing is created. Blocks; call from a blocking thread in async
    /// code.
    pub fn unlock(&self, user: &str) -> Result<Arc<UserKey>, KeyError> {
        let slot = self.slot(user);
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = held.upgrade() {
            return Ok(key);
        }
        let key = Arc::new(self.load_or_create(user)?);
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
    pub fn store(&self) -> &Arc<dyn KeyStore> {
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

    fn load_or_create(&self, user: &str) -> Result<UserKey, KeyError> {
        let files = self.store.load_all(user)?;
        if !files.is_empty() {
            return self.open_files(user, files, None);
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
            Ok(location) => tracing::info!(user, location, "created data key"),
            // Another process created one meanwhile (a store of one key
            // file per user): theirs wins.
            Err(KeyError::KeyFileExists { .. }) => {}
            Err(e) => return Err(e),
        }
        // Whatever was just stored, only what the store now holds is used:
        // where another node stored a key at the same moment, every node
        // must settle on the same primary, and no file may be sealed under
        // a key whose key file is gone (shredded meanwhile).
        let files = self.store.load_all(user)?;
        self.open_files(user, files, Some(dek))
    }

    /// Unwraps all of `user`'s key files, bringing each up to date; `mine`
    /// is a key this process just created, taken as is where its key file
    /// is among them (no need to ask the provider for it).
    fn open_files(
        &self,
        user: &str,
        files: Vec<KeyFile>,
        mut mine: Option<DataKey>,
    ) -> Result<UserKey, KeyError> {
        let mut keys = Vec::with_capacity(files.len());
        for kf in files {
            if let Some(dek) = mine.take_if(|d| hex(&d.id().0) == kf.key_id) {
                keys.push(dek);
                continue;
            }
            let dek = self.unwrap_file(&kf)?;
            self.refresh(kf, &dek);
            keys.push(dek);
        }
        if keys.len() > 1 {
            tracing::info!(user, keys = keys.len(), "user has several data keys");
        }
        UserKey::with_keys(user, keys)
    }

    /// At login: re-wraps a key file under an older KEK version, adds a
    /// missing recovery wrap. Failures are logged, not fatal: the user has
    /// their key, and the next login or `keys rotate` tries again.
    fn refresh(&self, mut kf: KeyFile, dek: &DataKey) {
        let user = kf.user.clone();
        let mut changed = false;
        if kf.key_name != self.provider.key_name() {
            match self.rewrap_to_current(kf.clone(), dek) {
                Ok(updated) => {
                    tracing::info!(
                        user,
                        from = %kf.key_name,
                        to = %updated.key_name,
                        "re-wrapping data key under the current KEK"
                    );
                    kf = updated;
                    changed = true;
                }
                Err(e) => tracing::warn!(user, error = %e, "re-wrapping the data key failed"),
            }
        }
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

    /// Re-wraps a key file under another KEK the provider holds to the
    /// current one and stores it; `None` if it was destroyed meanwhile.
    fn move_to_current(&self, kf: KeyFile) -> Result<Option<KeyFile>, KeyError> {
        let dek = self.unwrap_file(&kf)?;
        let kf = self.rewrap_to_current(kf, &dek)?;
        Ok(self.store.replace(&kf)?.then_some(kf))
    }

    /// `kf` wrapped anew under the provider's current KEK.
    fn rewrap_to_current(&self, mut kf: KeyFile, dek: &DataKey) -> Result<KeyFile, KeyError> {
        let w = self.provider.wrap(&kf.user, dek)?;
        kf.key_name = self.provider.key_name().to_owned();
        kf.key_version = w.key_version;
        kf.wrapped_key = w.ciphertext;
        Ok(kf)
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
        if kf.provider != p.kind() || !p.holds(&kf.key_name) {
            return Err(KeyError::WrongKek {
                expected_kind: p.kind().to_owned(),
                expected_name: p.key_name().to_owned(),
                found_kind: kf.provider.clone(),
                found_name: kf.key_name.clone(),
            });
        }
        let dek = p.unwrap_named(&kf.key_name, &kf.user, &kf.wrapped())?;
        kf.check(&dek)?;
        Ok(dek)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(key: &DataKey) -> DataKey {
        DataKey::from_slice(key.expose_secret()).expect("32 bytes")
    }

    #[test]
    fn the_primary_key_is_the_smallest_id_whatever_the_order() {
        let keys: Vec<DataKey> = (0..3).map(|_| DataKey::generate().expect("key")).collect();
        let smallest = keys.iter().map(DataKey::id).min_by_key(|id| id.0);
        let forward = UserKey::with_keys("u", keys.iter().map(copy).collect()).expect("keys");
        let backward =
            UserKey::with_keys("u", keys.iter().rev().map(copy).collect()).expect("keys");
        assert_eq!(Some(forward.data_key().id()), smallest);
        assert_eq!(backward.data_key().id(), forward.data_key().id());
        assert!(forward.has_several());
        assert_eq!(forward.keys().count(), 3);
        for k in &keys {
            assert_eq!(forward.key_for(&k.id()).map(DataKey::id), Some(k.id()));
        }
        // The same key twice counts once; none at all is no key file.
        let twice = UserKey::with_keys("u", vec![copy(&keys[0]), copy(&keys[0])]).expect("key");
        assert!(!twice.has_several());
        assert!(matches!(
            UserKey::with_keys("u", Vec::new()),
            Err(KeyError::NoKeyFile { .. })
        ));
    }

    #[test]
    fn a_header_chooses_its_key_and_anything_else_gets_the_primary() {
        let (a, b) = (
            DataKey::generate().expect("a"),
            DataKey::generate().expect("b"),
        );
        let user = UserKey::with_keys("u", vec![copy(&a), copy(&b)]).expect("keys");
        let primary = user.data_key().id();
        for key in [&a, &b] {
            let sealed = dropvault_format::seal_to_vec(b"x", key).expect("seal");
            assert_eq!(user.key_for_header(&sealed).id(), key.id());
            // A header cut short names nothing yet.
            assert_eq!(user.key_for_header(&sealed[..40]).id(), primary);
        }
        let other =
            dropvault_format::seal_to_vec(b"x", &DataKey::generate().expect("c")).expect("seal");
        assert_eq!(user.key_for_header(&other).id(), primary);
        assert_eq!(user.key_for_header(b"not a sealed file").id(), primary);
        assert_eq!(user.key_for_header(&[]).id(), primary);
    }
}
