//! RSA-OAEP-SHA256 key wrapping shared by the `local` provider and the
//! recovery key: PEM files, fingerprints, and sealing a data key under a
//! label that names its user.

use std::fs;
use std::io::Read;
use std::path::Path;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::{DataKey, KeyError};
use crate::hex;

/// PEM type of a PKCS#8 private key.
const PRIVATE_PEM: &str = "PRIVATE KEY";
/// PEM type of an X.509 SubjectPublicKeyInfo.
const PUBLIC_PEM: &str = "PUBLIC KEY";
/// Smallest RSA key accepted (bits): 128-bit security.
const MIN_BITS: usize = 3072;
/// Largest key file read (an RSA-8192 PEM is about 6.5 KiB).
const MAX_PEM_LEN: u64 = 64 * 1024;

/// An RSA public key that seals data keys.
pub(crate) struct OaepPublic {
    key: OaepPublicEncryptingKey,
    name: String,
}

impl OaepPublic {
    /// The public key in a SubjectPublicKeyInfo PEM file.
    pub(crate) fn read(path: &Path) -> Result<Self, KeyError> {
        let der = read_pem(path, PUBLIC_PEM)?;
        let key =
            PublicEncryptingKey::from_der(&der).map_err(|_| bad(path, "not an RSA public key"))?;
        Self::new(path, key, &der)
    }

    fn new(path: &Path, key: PublicEncryptingKey, spki_der: &[u8]) -> Result<Self, KeyError> {
        if key.key_size_bits() < MIN_BITS {
            return Err(bad(path, "RSA key shorter than 3072 bits"));
        }
        Ok(Self {
            key: OaepPublicEncryptingKey::new(key).map_err(|_| bad(path, "unusable key"))?,
            name: fingerprint(spki_der),
        })
    }

    /// `rsa-` and the first 8 bytes of the SHA-256 of the public key.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Modulus size in bits.
    pub(crate) fn bits(&self) -> usize {
        self.key.key_size_bits()
    }

    /// `dek` sealed under `label`, base64.
    pub(crate) fn seal(&self, label: &[u8], dek: &DataKey) -> Result<String, KeyError> {
        let mut out = vec![0u8; self.key.ciphertext_size()];
        let ct = self
            .key
            .encrypt(
                &OAEP_SHA256_MGF1SHA256,
                dek.expose_secret(),
                &mut out,
                Some(label),
            )
            .map_err(|_| KeyError::WrapFailed)?;
        Ok(B64.encode(ct))
    }
}

/// An RSA private key that opens what its public half sealed.
pub(crate) struct OaepPrivate {
    key: OaepPrivateDecryptingKey,
    public: OaepPublic,
}

impl OaepPrivate {
    /// The private key in a PKCS#8 PEM file.
    pub(crate) fn read(path: &Path) -> Result<Self, KeyError> {
        let der = read_pem(path, PRIVATE_PEM)?;
        let key = PrivateDecryptingKey::from_pkcs8(&der)
            .map_err(|_| bad(path, "not an RSA PKCS#8 key"))?;
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| bad(path, "cannot encode the public key"))?;
        let public = OaepPublic::new(path, key.public_key(), spki.as_ref())?;
        let key = OaepPrivateDecryptingKey::new(key).map_err(|_| bad(path, "unusable key"))?;
        Ok(Self { key, public })
    }

    /// The public half.
    pub(crate) fn public(&self) -> &OaepPublic {
        &self.public
    }

    /// Opens what [`OaepPublic::seal`] made for `user` under `label`.
    pub(crate) fn open(&self, label: &[u8], sealed: &str, user: &str) -> Result<DataKey, KeyError> {
        let failed = || KeyError::UnwrapFailed {
            user: user.to_owned(),
        };
        let ct = B64.decode(sealed.as_bytes()).map_err(|_| failed())?;
        let mut out = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let plain = self
            .key
            .decrypt(&OAEP_SHA256_MGF1SHA256, &ct, &mut out, Some(label))
            .map_err(|_| failed())?;
        DataKey::from_slice(plain).ok_or_else(failed)
    }
}

/// A new RSA key pair: the private key as PKCS#8 PEM (zeroized on drop)
/// and the public key as SubjectPublicKeyInfo PEM.
pub fn generate_rsa_pair(size: KeySize) -> Result<(Zeroizing<String>, String), KeyError> {
    let key = PrivateDecryptingKey::generate(size).map_err(|_| KeyError::Random)?;
    let der = key.as_der().map_err(|_| KeyError::Random)?;
    let private = Zeroizing::new(pem_encode(der.as_ref(), PRIVATE_PEM));
    let public = key.public_key().as_der().map_err(|_| KeyError::Random)?;
    Ok((private, pem_encode(public.as_ref(), PUBLIC_PEM)))
}

/// A short name for an RSA public key: `rsa-` and the first 8 bytes of the
/// SHA-256 of its SubjectPublicKeyInfo, in hex.
fn fingerprint(spki_der: &[u8]) -> String {
    let fp = digest::digest(&digest::SHA256, spki_der);
    format!("rsa-{}", hex(&fp.as_ref()[..8]))
}

/// The DER in the first PEM block of type `kind` in the file at `path`
/// (at most [`MAX_PEM_LEN`] bytes read); zeroized on drop.
fn read_pem(path: &Path, kind: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let file = fs::File::open(path).map_err(|e| KeyError::io(path, e))?;
    let mut pem = Zeroizing::new(String::new());
    file.take(MAX_PEM_LEN + 1)
        .read_to_string(&mut pem)
        .map_err(|e| KeyError::io(path, e))?;
    if pem.len() as u64 > MAX_PEM_LEN {
        return Err(bad(path, "file too large"));
    }
    pem_decode(&pem, kind).ok_or_else(|| {
        bad(
            path,
            if kind == PRIVATE_PEM {
                "not a PEM \"PRIVATE KEY\" (PKCS#8)"
            } else {
                "not a PEM \"PUBLIC KEY\" (SubjectPublicKeyInfo)"
            },
        )
    })
}

fn bad(path: &Path, reason: &'static str) -> KeyError {
    KeyError::BadKek {
        path: path.to_owned(),
        reason,
    }
}

fn pem_encode(der: &[u8], kind: &str) -> String {
    let b64 = Zeroizing::new(B64.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str(&format!("-----BEGIN {kind}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {kind}-----\n"));
    out
}

/// The DER inside the first PEM block of type `kind`.
fn pem_decode(pem: &str, kind: &str) -> Option<Zeroizing<Vec<u8>>> {
    let (begin, end_marker) = (
        format!("-----BEGIN {kind}-----"),
        format!("-----END {kind}-----"),
    );
    let start = pem.find(&begin)? + begin.len();
    let end = start + pem[start..].find(&end_marker)?;
    let b64: Zeroizing<String> = Zeroizing::new(
        pem[start..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    B64.decode(b64.as_bytes()).ok().map(Zeroizing::new)
}
