//! The keyring: one unwrapped data key per logged-in user, shared by all
//! that user's sessions, gone (zeroized) when the last session lets go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::local::hex;
use super::{DataKey, KeyError, KeyFile, KeyFileStore, KeyProvider, KEY_FILE_FORMAT};

/// A user's unwrapped data key, held for the length of a login. Clone the
/// `Arc` to share it; when the last `Arc` drops, the key bytes are zeroized.
#[derive(Debug)]
pub struct UserKey {
    user: String,
    key: DataKey,
}

impl UserKey {
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
    slots: Mutex<HashMap<String, Slot>>,
}

impl Keyring {
    /// A keyring over `provider` and the key files in `store`.
    pub fn new(provider: Arc<dyn KeyProvider>, store: KeyFileStore) -> Self {
        Self {
            provider,
            store,
            slots: Mutex::new(HashMap::new()),
        }
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
            return self.unwrap_file(&kf);
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
        };
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
        if hex(&dek.id().0) != kf.key_id {
            return Err(KeyError::KeyIdMismatch {
                user: kf.user.clone(),
            });
        }
        Ok(dek)
    }
}
