//! The recovery key: an RSA public key (SubjectPublicKeyInfo PEM) every data
//! key is also wrapped to, whatever the provider, so files can be read when
//! the key service is gone. Its private half (PKCS#8 PEM) stays offline and
//! is only used by `dropvault decrypt --recovery-key`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::local::{fingerprint, pem_decode, MAX_PEM_LEN, MIN_BITS, PRIVATE_PEM, PUBLIC_PEM};
use super::{binding_label, DataKey, KeyError};

/// What the OAEP label of a recovery wrap says it is.
const PURPOSE: &str = "recovery data key";

/// The public half of the recovery key pair.
pub struct RecoveryKey {
    public: OaepPublicEncryptingKey,
    name: String,
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKey")
            .field("name", &self.name)
            .finish()
    }
}

impl RecoveryKey {
    /// Reads an RSA public key (3072 bits or more) from a PEM file.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let pem = read_pem(path)?;
        let der = pem_decode(&pem, PUBLIC_PEM)
            .ok_or_else(|| bad(path, "not a PEM \"PUBLIC KEY\" (SubjectPublicKeyInfo)"))?;
        let key =
            PublicEncryptingKey::from_der(&der).map_err(|_| bad(path, "not an RSA public key"))?;
        if key.key_size_bits() < MIN_BITS {
            return Err(bad(path, "RSA key shorter than 3072 bits"));
        }
        let public = OaepPublicEncryptingKey::new(key).map_err(|_| bad(path, "unusable key"))?;
        Ok(Self {
            public,
            name: fingerprint(&der),
        })
    }

    /// Fingerprint of the key, recorded next to each recovery wrap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wraps `dek` for `user` (RSA-OAEP-SHA256, the user bound in the label).
    pub fn wrap(&self, user: &str, dek: &DataKey) -> Result<String, KeyError> {
        let mut out = vec![0u8; self.public.ciphertext_size()];
        let ct = self
            .public
            .encrypt(
                &OAEP_SHA256_MGF1SHA256,
                dek.expose_secret(),
                &mut out,
                Some(&binding_label(PURPOSE, user)),
            )
            .map_err(|_| KeyError::WrapFailed)?;
        Ok(B64.encode(ct))
    }
}

/// The private half of the recovery key pair, for offline recovery.
pub struct RecoveryPrivateKey {
    private: OaepPrivateDecryptingKey,
    name: String,
    path: PathBuf,
}

impl std::fmt::Debug for RecoveryPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryPrivateKey")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl RecoveryPrivateKey {
    /// Reads an RSA private key (PKCS#8 PEM) from `path`.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let pem = read_pem(path)?;
        let der = pem_decode(&pem, PRIVATE_PEM)
            .ok_or_else(|| bad(path, "not a PEM \"PRIVATE KEY\" (PKCS#8)"))?;
        let key = PrivateDecryptingKey::from_pkcs8(&der)
            .map_err(|_| bad(path, "not an RSA PKCS#8 key"))?;
        let public_der = key
            .public_key()
            .as_der()
            .map_err(|_| bad(path, "cannot encode the public key"))?;
        let name = fingerprint(public_der.as_ref());
        let private =
            OaepPrivateDecryptingKey::new(key).map_err(|_| bad(path, "unusable private key"))?;
        Ok(Self {
            private,
            name,
            path: path.to_owned(),
        })
    }

    /// Fingerprint of the key pair (the same as the public half's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unwraps a recovery wrap made for `user`.
    pub fn unwrap(&self, user: &str, wrapped: &str) -> Result<DataKey, KeyError> {
        let failed = || KeyError::UnwrapFailed {
            user: user.to_owned(),
        };
        let ct = B64.decode(wrapped.as_bytes()).map_err(|_| failed())?;
        let mut out = Zeroizing::new(vec![0u8; self.private.min_output_size()]);
        let plain = self
            .private
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &ct,
                &mut out,
                Some(&binding_label(PURPOSE, user)),
            )
            .map_err(|_| failed())?;
        DataKey::from_slice(plain).ok_or_else(failed)
    }
}

fn read_pem(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let file = fs::File::open(path).map_err(|e| KeyError::io(path, e))?;
    let mut pem = Zeroizing::new(String::new());
    file.take(MAX_PEM_LEN + 1)
        .read_to_string(&mut pem)
        .map_err(|e| KeyError::io(path, e))?;
    if pem.len() as u64 > MAX_PEM_LEN {
        return Err(bad(path, "file too large"));
    }
    Ok(pem)
}

fn bad(path: &Path, reason: &'static str) -> KeyError {
    KeyError::BadKek {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_rsa_pair;
    use aws_lc_rs::rsa::KeySize;

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
