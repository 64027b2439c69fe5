//! Data keys and the per-file keys derived from them.
//!
//! A [`DataKey`] is a user's 256-bit secret. It never touches storage in the
//! clear: the core crate stores it wrapped by a key-encryption key. Each file
//! gets its own [`FileKeys`], derived with HKDF-SHA256 from the data key and
//! the file's random salt, so no two files share an AES key.

use std::fmt;

use aws_lc_rs::{aead, hkdf, hmac, rand};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length in bytes of a data key.
pub const DATA_KEY_LEN: usize = 32;
/// Length in bytes of a data-key id.
pub const KEY_ID_LEN: usize = 16;
/// Length in bytes of a file salt.
pub const SALT_LEN: usize = 32;

const KEY_ID_LABEL: &[u8] = b"dropvault v1 key id";
const PAYLOAD_LABEL: &[u8] = b"dropvault v1 payload key";
const HEADER_LABEL: &[u8] = b"dropvault v1 header key";

/// A user's data key (DEK): 32 secret bytes, zeroized on drop, never printed.
pub struct DataKey {
    bytes: Zeroizing<[u8; DATA_KEY_LEN]>,
    id: KeyId,
}

/// Public identifier of a data key: HMAC-SHA256(DEK, "dropvault v1 key id"),
/// first 16 bytes. Stored in every header so a wrong key fails fast; it
/// reveals only whether two files were sealed under the same key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl DataKey {
    /// A fresh random data key from the system CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::fill(bytes.as_mut())?;
        Ok(Self::from_zeroizing(bytes))
    }

    /// Takes ownership of key bytes (for example just unwrapped by a key
    /// provider). The caller's buffer is zeroized by its own `Zeroizing`.
    pub fn from_zeroizing(bytes: Zeroizing<[u8; DATA_KEY_LEN]>) -> Self {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()),
            KEY_ID_LABEL,
        );
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..KEY_ID_LEN]);
        Self {
            bytes,
            id: KeyId(id),
        }
    }

    /// Copies key bytes out of a slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if bytes.len() != DATA_KEY_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(Self::from_zeroizing(key))
    }

    /// The raw key bytes, for wrapping by a key provider. Never log them.
    pub fn expose_secret(&self) -> &[u8; DATA_KEY_LEN] {
        &self.bytes
    }

    /// This key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Derives the keys of one file from this data key and the file's salt.
    pub(crate) fn file_keys(&self, salt: &[u8; SALT_LEN]) -> Result<FileKeys> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(self.bytes.as_ref());
        let mut payload = Zeroizing::new([0u8; 32]);
        let mut header = Zeroizing::new([0u8; 32]);
        prk.expand(&[PAYLOAD_LABEL], Len32)?
            .fill(payload.as_mut())?;
        prk.expand(&[HEADER_LABEL], Len32)?.fill(header.as_mut())?;
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, payload.as_ref())?;
        Ok(FileKeys {
            payload: aead::LessSafeKey::new(unbound),
            header: hmac::Key::new(hmac::HMAC_SHA256, header.as_ref()),
        })
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// HKDF output length marker for 32-byte keys.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The two keys of one file. The AES and HMAC contexts live inside AWS-LC,
/// which cleanses them when they are freed; the intermediate bytes above are
/// zeroized by `Zeroizing`.
pub(crate) struct FileKeys {
    pub(crate) payload: aead::LessSafeKey,
    pub(crate) header: hmac::Key,
}

impl FileKeys {
    /// Rejects a data key that was not the one a header names.
    pub(crate) fn check_key_id(dek: &DataKey, id: &KeyId) -> Result<()> {
        if dek.id() == *id {
            Ok(())
        } else {
            Err(Error::WrongKey)
        }
    }
}

/// Fills a fresh random salt.
pub(crate) fn random_salt() -> Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    rand::fill(&mut salt)?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = DataKey::from_slice(&[0xAB; 32]).expect("32 bytes");
        let shown = format!("{key:?}");
        assert!(shown.contains("[redacted]"));
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    }

    #[test]
    fn key_id_depends_on_key() {
        let a = DataKey::from_slice(&[1; 32]).expect("32 bytes");
        let b = DataKey::from_slice(&[2; 32]).expect("32 bytes");
        assert_ne!(a.id(), b.id());
        assert_eq!(
            a.id(),
            DataKey::from_slice(&[1; 32]).expect("32 bytes").id()
        );
        assert!(DataKey::from_slice(&[1; 31]).is_none());
    }
}
