//! Key management: providers wrap data keys, key files store them wrapped,
//! the keyring hands out unwrapped keys for the length of a login.
//!
//! Every call here may block (RSA, disk, later HTTP to a key service); async
//! callers run them on a blocking thread.

mod error;
mod keyring;
mod local;
mod store;

pub use dropvault_format::DataKey;
pub use error::KeyError;
pub use keyring::{Keyring, UserKey};
pub use local::LocalRsaProvider;
pub use store::{KeyFile, KeyFileStore, KEY_FILE_FORMAT};

use std::fmt;

/// A data key as a key provider wrapped it: opaque text (base64 for the
/// local provider, `vault:vN:…` for transit) and the KEK version used.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// Version of the key-encryption key that wrapped this key.
    pub key_version: u32,
    /// The wrapped key, as text.
    pub ciphertext: String,
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Wrapped keys are not secret, but they are long and useless in logs.
        f.debug_struct("Wrapped")
            .field("key_version", &self.key_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Holds a key-encryption key (KEK) and wraps and unwraps data keys with
/// it. The user name is bound as associated data, so a key wrapped for one
/// user cannot be unwrapped as another's.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Provider kind as recorded in key files: `"local"`, `"transit"`.
    fn kind(&self) -> &'static str;

    /// Name of the KEK, recorded in key files (for `local`, a fingerprint of
    /// the public key; for `transit`, the key's name).
    fn key_name(&self) -> &str;

    /// Wraps `dek` for `user` with the current KEK version.
    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError>;

    /// Unwraps a key wrapped for `user`.
    fn unwrap(&self, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError>;
}
