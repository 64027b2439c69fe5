//! The `local` key provider: an RSA private key in a PEM file (PKCS#8,
//! mode 0600) on the server itself, RSA-OAEP-SHA256 wrapping. For a single
//! machine; anyone who can read the file and the storage can read the files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rsa::KeySize;

use super::rsa::{generate_rsa_pair, OaepPrivate};
use super::{binding_label, DataKey, KekStatus, KeyError, KeyProvider, Wrapped};
use crate::keys::store::write_new_file;

/// RSA-OAEP-SHA256 with a private key file on this machine.
pub struct LocalRsaProvider {
    key: OaepPrivate,
    path: PathBuf,
}

impl std::fmt::Debug for LocalRsaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRsaProvider")
            .field("path", &self.path)
            .field("name", &self.key.public().name())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl LocalRsaProvider {
    /// Opens the key at `path`, generating an RSA-4096 key there (mode
    /// 0600) if there is none. Refuses a key file others can read.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::open(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::create(path)?;
                Self::open(path)
            }
            Err(e) => Err(KeyError::io(path, e)),
        }
    }

    /// Opens an existing key file.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(|e| KeyError::io(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecureKeyFile {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(Self {
            key: OaepPrivate::read(path)?,
            path: path.to_owned(),
        })
    }

    /// Generates an RSA-4096 key into a new file at `path` (mode 0600,
    /// written and synced before it appears under its name). Leaves an
    /// existing file alone.
    fn create(path: &Path) -> Result<(), KeyError> {
        let (pem, _) = generate_rsa_pair(KeySize::Rsa4096)?;
        match write_new_file(path, pem.as_bytes(), 0o600) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated a new RSA-4096 key-encryption key");
                Ok(())
            }
            // Someone else created it first: use theirs.
            Err(KeyError::KeyFileExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The path of the key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyProvider for LocalRsaProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    /// `rsa-` and the first 8 bytes (hex) of the SHA-256 of the public key.
    fn key_name(&self) -> &str {
        self.key.public().name()
    }

    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        Ok(Wrapped {
            key_version: 1,
            ciphertext: self
                .key
                .public()
                .seal(&binding_label("data key", user), dek)?,
        })
    }

    fn unwrap(&self, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        self.key
            .open(&binding_label("data key", user), &wrapped.ciphertext, user)
    }

    fn status(&self) -> Result<KekStatus, KeyError> {
        Ok(KekStatus {
            provider: self.kind(),
            key_name: self.key_name().to_owned(),
            key_type: format!("rsa-{}", self.key.public().bits()),
            latest_version: 1,
            min_decryption_version: 1,
            current_version: 1,
            details: Vec::new(),
        })
    }
}
