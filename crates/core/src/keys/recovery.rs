//! The recovery key: an RSA public key (SubjectPublicKeyInfo PEM) every data
//! key is also wrapped to, whatever the provider, so files can be read when
//! the key service is gone. Its private half (PKCS#8 PEM) stays offline and
//! is only used by `dropvault decrypt --recovery-key`.

use std::path::{Path, PathBuf};

use super::rsa::{OaepPrivate, OaepPublic};
use super::{binding_label, DataKey, KeyError, KeyFile};

/// What the OAEP label of a recovery wrap says it is.
const PURPOSE: &str = "recovery data key";

/// The public half of the recovery key pair.
pub struct RecoveryKey(OaepPublic);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKey")
            .field("name", &self.name())
            .finish()
    }
}

impl RecoveryKey {
    /// Reads an RSA public key (3072 bits or more) from a PEM file.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        OaepPublic::read(path).map(Self)
    }

    /// Fingerprint of the key, recorded next to each recovery wrap.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Wraps `dek` for `user` (RSA-OAEP-SHA256, the user bound in the label).
    pub fn wrap(&self, user: &str, dek: &DataKey) -> Result<String, KeyError> {
        self.0.seal(&binding_label(PURPOSE, user), dek)
    }
}

/// The private half of the recovery key pair, for offline recovery.
pub struct RecoveryPrivateKey {
    key: OaepPrivate,
    path: PathBuf,
}

impl std::fmt::Debug for RecoveryPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryPrivateKey")
            .field("path", &self.path)
            .field("name", &self.name())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl RecoveryPrivateKey {
    /// Reads an RSA private key (PKCS#8 PEM) from `path`.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            key: OaepPrivate::read(path)?,
            path: path.to_owned(),
        })
    }

    /// Fingerprint of the key pair (the same as the public half's).
    pub fn name(&self) -> &str {
        self.key.public().name()
    }

    /// Unwraps a recovery wrap made for `user`.
    pub fn unwrap(&self, user: &str, wrapped: &str) -> Result<DataKey, KeyError> {
        self.key.open(&binding_label(PURPOSE, user), wrapped, user)
    }

    /// The data key of a key file, from its recovery wrap: checked to be
    /// wrapped to this key, and to be the key the file names.
    pub fn unwrap_file(&self, kf: &KeyFile) -> Result<DataKey, KeyError> {
        let user = &kf.user;
        let wrap = kf.recovery.as_ref().ok_or_else(|| {
            KeyError::BadConfig(format!(
                "the key file of {user:?} has no recovery wrap (it was made before \
                 kms.recovery_public_key was set, and has not been used or rotated since)"
            ))
        })?;
        if wrap.key_name != self.name() {
            return Err(KeyError::BadConfig(format!(
                "the key file of {user:?} is wrapped to recovery key {}, not to {}",
                wrap.key_name,
                self.name()
            )));
        }
        let dek = self.unwrap(user, &wrap.wrapped_key)?;
        kf.check(&dek)?;
        Ok(dek)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_rsa_pair;
    use aws_lc_rs::rsa::KeySize;
    use std::fs;

    #[test]
    fn wraps_to_the_public_half_and_back_for_the_same_user_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = generate_rsa_pair(KeySize::Rsa3072).expect("generate");
        let (priv_path, pub_path) = (dir.path().join("r.pem"), dir.path().join("r.pub.pem"));
        fs::write(&priv_path, private.as_bytes()).expect("write");
        fs::write(&pub_path, public.as_bytes()).expect("write");
        let rk = RecoveryKey::open(&pub_path).expect("public");
        let rp = RecoveryPrivateKey::open(&priv_path).expect("private");
        assert_eq!(rk.name(), rp.name());
        let dek = DataKey::generate().expect("dek");
        let wrapped = rk.wrap("alice", &dek).expect("wrap");
        let back = rp.unwrap("alice", &wrapped).expect("unwrap");
        assert_eq!(back.id(), dek.id());
        assert!(matches!(
            rp.unwrap("bob", &wrapped),
            Err(KeyError::UnwrapFailed { .. })
        ));
        // A private key where a public one belongs is refused by name.
        assert!(matches!(
            RecoveryKey::open(&priv_path),
            Err(KeyError::BadKek { .. })
        ));
    }
}
