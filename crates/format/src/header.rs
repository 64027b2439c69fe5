//! The 96-byte file header: parse, check, build.
//!
//! Parsing is a pure function over a byte slice. Fields are checked in a
//! fixed order (magic, version, algorithm, flags, segment size, key id, tag)
//! so each kind of damage has its own error; every field is covered by the
//! tag, so nothing in the header can be changed or downgraded unnoticed.

use aws_lc_rs::hmac;

use crate::error::{Error, Result};
use crate::keys::{DataKey, FileKeys, KeyId, KEY_ID_LEN, SALT_LEN};

/// The eight magic bytes that start every sealed file.
pub const MAGIC: [u8; 8] = *b"\x89DRPVLT\n";
/// The only format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Algorithm 1: HKDF-SHA256 file keys, HMAC-SHA256 header tag,
/// AES-256-GCM STREAM segments.
pub const ALGORITHM: u8 = 1;
const SEGMENT_LEN_U32: u32 = 64 * 1024;
/// Plaintext bytes per segment (the last segment may hold fewer).
pub const SEGMENT_LEN: usize = SEGMENT_LEN_U32 as usize;
/// Bytes of GCM tag appended to each segment.
pub const TAG_LEN: usize = 16;
/// Ciphertext bytes of a full segment.
pub const SEALED_SEGMENT_LEN: usize = SEGMENT_LEN + TAG_LEN;
/// Length of the header tag (HMAC-SHA256).
pub const HEADER_TAG_LEN: usize = 32;
/// Bytes covered by the header tag.
const SIGNED_LEN: usize = 64;
/// Total header length.
pub const HEADER_LEN: usize = SIGNED_LEN + HEADER_TAG_LEN;

/// A parsed header whose plain fields are valid for version 1. Its tag is
/// not yet verified: call [`Header::open`] with the data key for that.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Id of the data key the file was sealed under.
    pub key_id: KeyId,
    /// The file's random salt.
    pub salt: [u8; SALT_LEN],
    tag: [u8; HEADER_TAG_LEN],
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Result of [`Header::parse`]: either a header or a need for more bytes.
#[derive(Debug)]
pub enum Parsed {
    /// A header, and how many input bytes it used.
    Header(Header, usize),
    /// The input is a valid prefix so far; this many bytes are needed in all.
    NeedMore(usize),
}

impl Header {
    /// Parses and checks the plain fields of a header at the start of
    /// `input`. Never panics, whatever the input.
    pub fn parse(input: &[u8]) -> Result<Parsed> {
        let magic_len = input.len().min(MAGIC.len());
        if input[..magic_len] != MAGIC[..magic_len] {
            return Err(Error::BadMagic);
        }
        let Some(bytes) = input.get(..HEADER_LEN) else {
            return Ok(Parsed::NeedMore(HEADER_LEN));
        };
        let version = bytes[8];
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let algorithm = bytes[9];
        if algorithm != ALGORITHM {
            return Err(Error::UnsupportedAlgorithm(algorithm));
        }
        let flags = u16::from_be_bytes([bytes[10], bytes[11]]);
        if flags != 0 {
            return Err(Error::UnknownFlags(flags));
        }
        let segment = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if segment != SEGMENT_LEN_U32 {
            return Err(Error::UnsupportedSegmentSize(segment));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&bytes[16..32]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[32..64]);
        let mut tag = [0u8; HEADER_TAG_LEN];
        tag.copy_from_slice(&bytes[SIGNED_LEN..HEADER_LEN]);
        Ok(Parsed::Header(
            Header {
                key_id: KeyId(key_id),
                salt,
                tag,
            },
            HEADER_LEN,
        ))
    }

    /// Parses a complete header; a short input is [`Error::InvalidLength`].
    pub fn parse_complete(input: &[u8]) -> Result<Header> {
        match Self::parse(input)? {
            Parsed::Header(header, _) => Ok(header),
            Parsed::NeedMore(_) => Err(Error::InvalidLength(input.len() as u64)),
        }
    }

    /// Checks that `dek` is the file's key and that the tag verifies, and
    /// derives the file's keys.
    pub(crate) fn open(&self, dek: &DataKey) -> Result<FileKeys> {
        FileKeys::check_key_id(dek, &self.key_id)?;
        let keys = dek.file_keys(&self.salt)?;
        let signed = signed_part(&self.key_id, &self.salt);
        hmac::verify(&keys.header, &signed, &self.tag).map_err(|_| Error::HeaderAuth)?;
        Ok(keys)
    }

    /// Builds the header of a new file and its keys.
    pub(crate) fn seal(dek: &DataKey, salt: [u8; SALT_LEN]) -> Result<(Header, FileKeys)> {
        let keys = dek.file_keys(&salt)?;
        let key_id = dek.id();
        let signed = signed_part(&key_id, &salt);
        let mut tag = [0u8; HEADER_TAG_LEN];
        tag.copy_from_slice(hmac::sign(&keys.header, &signed).as_ref());
        Ok((Header { key_id, salt, tag }, keys))
    }

    /// The header's 96 bytes as stored.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..SIGNED_LEN].copy_from_slice(&signed_part(&self.key_id, &self.salt));
        out[SIGNED_LEN..].copy_from_slice(&self.tag);
        out
    }
}

fn signed_part(key_id: &KeyId, salt: &[u8; SALT_LEN]) -> [u8; SIGNED_LEN] {
    let mut out = [0u8; SIGNED_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8] = VERSION;
    out[9] = ALGORITHM;
    // bytes 10..12: flags, zero in version 1
    out[12..16].copy_from_slice(&SEGMENT_LEN_U32.to_be_bytes());
    out[16..32].copy_from_slice(&key_id.0);
    out[32..64].copy_from_slice(salt);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_asks_for_more_and_wrong_magic_fails_early() {
        assert!(matches!(
            Header::parse(b""),
            Ok(Parsed::NeedMore(HEADER_LEN))
        ));
        assert!(matches!(
            Header::parse(&MAGIC[..3]),
            Ok(Parsed::NeedMore(HEADER_LEN))
        ));
        assert!(matches!(Header::parse(b"\x89DX"), Err(Error::BadMagic)));
    }

    #[test]
    fn round_trip() {
        let dek = DataKey::from_slice(&[7; 32]).expect("32 bytes");
        let (header, _) = Header::seal(&dek, [9; SALT_LEN]).expect("seal");
        let bytes = header.to_bytes();
        let parsed = Header::parse_complete(&bytes).expect("parse");
        assert_eq!(parsed, header);
        parsed.open(&dek).expect("open");
    }
}
