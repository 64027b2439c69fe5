//! A secret setting read from a config file or the environment, and the
//! environment variables that hold the server's secrets.

use serde::{Deserialize, Serialize};

/// Environment variables that may hold a secret of the server's: its
/// secret settings (`DROPVAULT_<SECTION>_<KEY>` of every [`Secret`]
/// setting) and the well-known variables of the services it uses. Hook
/// and scan commands never get one of them, nor any other `DROPVAULT_`
/// variable (see [`is_secret_env`]).
pub const SECRET_ENV: [&str; 9] = [
    "DROPVAULT_KMS_TRANSIT_TOKEN",
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "DROPVAULT_KMS_PKCS11_PIN",
    "DROPVAULT_AUTH_LDAP_BIND_PASSWORD",
    "DROPVAULT_STORAGE_S3_SECRET_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "DROPVAULT_HOOKS_WEBHOOK_SECRET",
];

/// Whether environment variable `name` may hold a secret of the server's,
/// or a setting of it: one of [`SECRET_ENV`] or any `DROPVAULT_` variable
/// (the AppRole secret id's file, a PIN's file, what a later setting
/// holds).
pub fn is_secret_env(name: &str) -> bool {
    name.starts_with("DROPVAULT_") || SECRET_ENV.contains(&name)
}

/// A secret setting (a password, a token, a PIN): never shown by `Debug`,
/// zeroized when dropped.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (not set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}
