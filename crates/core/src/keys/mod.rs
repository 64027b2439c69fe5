//! Key management: providers wrap data keys, key files store them wrapped,
//! the keyring hands out unwrapped keys for the length of a login.
//!
//! Every call here may block (RSA, disk, later HTTP to a key service); async
//! callers run them on a blocking thread.

mod config;
mod error;
mod keyring;
mod local;
mod metered;
pub mod pkcs11;
mod recovery;
mod rsa;
mod s3store;
mod store;
mod transit;

pub use config::{from_config, KmsConfig, KmsProvider, MissingKek, TransitSettings};
pub use dropvault_format::DataKey;
pub use error::KeyError;
pub use keyring::{Keyring, RotateReport, UserKey};
pub use local::LocalRsaProvider;
pub use pkcs11::{Pkcs11Config, Pkcs11Provider};
pub use recovery::{RecoveryKey, RecoveryPrivateKey};
pub use rsa::generate_rsa_pair;
pub use s3store::S3KeyStore;
pub use store::{KeyFile, KeyFileStore, KeyStore, ListedKeyFile, RecoveryWrap, KEY_FILE_FORMAT};
pub use transit::{TransitAuth, TransitConfig, TransitProvider};

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

    /// Whether this provider unwraps keys wrapped under the KEK named
    /// `key_name`: its own, or (`pkcs11`) an older key pair it may still
    /// hold. Key files under a held KEK that is not the current one are
    /// re-wrapped like those under an older version.
    fn holds(&self, key_name: &str) -> bool {
        key_name == self.key_name()
    }

    /// Unwraps a key wrapped for `user` under the KEK named `key_name`
    /// (one it [`holds`](Self::holds)).
    fn unwrap_named(
        &self,
        key_name: &str,
        user: &str,
        wrapped: &Wrapped,
    ) -> Result<DataKey, KeyError> {
        let _ = key_name;
        self.unwrap(user, wrapped)
    }

    /// The KEK version new wraps use. Key files wrapped under an older
    /// version are re-wrapped: lazily at login, all at once by
    /// `dropvault keys rotate`.
    fn current_version(&self) -> Result<u32, KeyError> {
        Ok(1)
    }

    /// Re-wraps keys under [`current_version`](Self::current_version), in
    /// batches where the service can, without the keys passing through this
    /// process where it can. One result per item, in order.
    fn rewrap(&self, items: &[(&str, Wrapped)]) -> Vec<Result<Wrapped, KeyError>> {
        items
            .iter()
            .map(|(user, w)| self.wrap(user, &self.unwrap(user, w)?))
            .collect()
    }

    /// What the provider knows about its KEK, for `dropvault keys status`.
    fn status(&self) -> Result<KekStatus, KeyError>;
}

/// A KEK as its provider describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KekStatus {
    /// Provider kind.
    pub provider: &'static str,
    /// KEK name as recorded in key files.
    pub key_name: String,
    /// Key type (`rsa-4096`, `aes256-gcm96`, …).
    pub key_type: String,
    /// Newest version of the KEK.
    pub latest_version: u32,
    /// Oldest version the KEK still decrypts with.
    pub min_decryption_version: u32,
    /// The version new wraps use (the latest, or a pinned one).
    pub current_version: u32,
    /// More facts to show, as (name, value): the token and mechanism of
    /// `pkcs11`.
    pub details: Vec<(&'static str, String)>,
}

/// The OAEP label (local, recovery) or the binding hashed into the wrapped
/// plaintext (transit) that ties a data key to its user.
pub(crate) fn binding_label(purpose: &str, user: &str) -> Vec<u8> {
    format!("dropvault v1 {purpose} for {user}").into_bytes()
}
