//! A key-encryption key inside a PKCS#11 token (an HSM; SoftHSM2 in
//! tests): data keys are wrapped and unwrapped by the token.

use serde::{Deserialize, Serialize};

use super::{DataKey, KekStatus, KeyError, KeyProvider, Wrapped};
use crate::secret::Secret;

/// `[kms.pkcs11]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 module (a shared library).
    pub module: String,
    /// Label of the token holding the key.
    pub token_label: String,
    /// Label of the RSA key pair new wraps use.
    pub key_label: String,
    /// The user PIN (else `pin_file`, else `DROPVAULT_KMS_PKCS11_PIN`).
    pub pin: Secret,
    /// File holding the user PIN.
    pub pin_file: String,
    /// Hash of RSA-OAEP for new wraps: `sha1` (what SoftHSM2 2.6.1 can
    /// do) or `sha256`. Each key file records its own.
    pub oaep_hash: OaepHash,
    /// Token sessions kept open.
    pub sessions: usize,
}

/// The hash RSA-OAEP uses (and its MGF1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OaepHash {
    /// SHA-1.
    #[default]
    Sha1,
    /// SHA-256.
    Sha256,
}

impl Default for Pkcs11Config {
    fn default() -> Self {
        Self {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "dropvault".into(),
            key_label: "dropvault-kek".into(),
            pin: Secret::default(),
            pin_file: String::new(),
            oaep_hash: OaepHash::Sha1,
            sessions: 4,
        }
    }
}

/// Data keys wrapped by an RSA key in a PKCS#11 token.
#[derive(Debug)]
pub struct Pkcs11Provider {
    config: Pkcs11Config,
}

impl Pkcs11Provider {
    /// Loads the module, finds the token and the key, logs in (relative
    /// paths are inside `base`).
    pub fn new(config: &Pkcs11Config, base: &std::path::Path) -> Result<Self, KeyError> {
        let _ = base;
        Err(KeyError::BadConfig(format!(
            "PKCS#11 ({}) is not built yet",
            config.module
        )))
    }
}

impl KeyProvider for Pkcs11Provider {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn key_name(&self) -> &str {
        &self.config.key_label
    }

    fn wrap(&self, _user: &str, _dek: &DataKey) -> Result<Wrapped, KeyError> {
        Err(KeyError::WrapFailed)
    }

    fn unwrap(&self, user: &str, _wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        Err(KeyError::UnwrapFailed {
            user: user.to_owned(),
        })
    }

    fn status(&self) -> Result<KekStatus, KeyError> {
        Err(KeyError::WrapFailed)
    }
}
