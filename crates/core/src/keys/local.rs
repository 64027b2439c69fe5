//! The `local` key provider: an RSA private key in a PEM file (PKCS#8,
//! mode 0600) on the server itself, RSA-OAEP-SHA256 wrapping. For a single
//! machine; anyone who can read the file and the storage can read the files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::{binding_label, DataKey, KekStatus, KeyError, KeyProvider, Wrapped};
use crate::keys::store::write_new_file;

/// PEM type of a PKCS#8 private key.
pub(crate) const PRIVATE_PEM: &str = "PRIVATE KEY";
/// PEM type of an X.509 SubjectPublicKeyInfo.
pub(crate) const PUBLIC_PEM: &str = "PUBLIC KEY";
/// Smallest RSA key accepted (bits): 128-bit security.
pub(crate) const MIN_BITS: usize = 3072;
/// Largest key file read (an RSA-8192 PEM is about 6.5 KiB).
pub(crate) const MAX_PEM_LEN: u64 = 64 * 1024;

/// RSA-OAEP-SHA256 with a private key file on this machine.
pub struct LocalRsaProvider {
    private: OaepPrivateDecryptingKey,
    public: OaepPublicEncryptingKey,
    name: String,
    path: PathBuf,
}

impl std::fmt::Debug for LocalRsaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRsaProvider")
            .field("path", &self.path)
            .field("name", &self.name)
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
        if meta.len() > MAX_PEM_LEN {
            return Err(bad(path, "file too large"));
        }
        let pem = Zeroizing::new(fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?);
        let der = pem_decode(&pem, PRIVATE_PEM)
            .ok_or_else(|| bad(path, "not a PEM \"PRIVATE KEY\" (PKCS#8)"))?;
        let key = PrivateDecryptingKey::from_pkcs8(&der)
            .map_err(|_| bad(path, "not an RSA PKCS#8 key"))?;
        if key.key_size_bits() < MIN_BITS {
            return Err(bad(path, "RSA key shorter than 3072 bits"));
        }
        let public_der = key
            .public_key()
            .as_der()
            .map_err(|_| bad(path, "cannot encode the public key"))?;
        let name = fingerprint(public_der.as_ref());
        let public = OaepPublicEncryptingKey::new(key.public_key())
            .map_err(|_| bad(path, "unusable public key"))?;
        let private =
            OaepPrivateDecryptingKey::new(key).map_err(|_| bad(path, "unusable private key"))?;
        Ok(Self {
            private,
            public,
            name,
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

    fn key_name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        let mut out = vec![0u8; self.public.ciphertext_size()];
        let ct = self
            .public
            .encrypt(
                &OAEP_SHA256_MGF1SHA256,
                dek.expose_secret(),
                &mut out,
                Some(&binding_label("data key", user)),
            )
            .map_err(|_| KeyError::WrapFailed)?;
        Ok(Wrapped {
            key_version: 1,
            ciphertext: B64.encode(ct),
        })
    }

    fn unwrap(&self, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        let failed = || KeyError::UnwrapFailed {
            user: user.to_owned(),
        };
        let ct = B64
            .decode(wrapped.ciphertext.as_bytes())
            .map_err(|_| failed())?;
        let mut out = Zeroizing::new(vec![0u8; self.private.min_output_size()]);
        let plain = self
            .private
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &ct,
                &mut out,
                Some(&binding_label("data key", user)),
            )
            .map_err(|_| failed())?;
        DataKey::from_slice(plain).ok_or_else(failed)
    }

    fn status(&self) -> Result<KekStatus, KeyError> {
        Ok(KekStatus {
            provider: self.kind(),
            key_name: self.name.clone(),
            key_type: format!("rsa-{}", self.public.key_size_bits()),
            latest_version: 1,
            min_decryption_version: 1,
            current_version: 1,
        })
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
pub(crate) fn fingerprint(spki_der: &[u8]) -> String {
    let fp = digest::digest(&digest::SHA256, spki_der);
    format!("rsa-{}", hex(&fp.as_ref()[..8]))
}

fn bad(path: &Path, reason: &'static str) -> KeyError {
    KeyError::BadKek {
        path: path.to_owned(),
        reason,
    }
}

pub(crate) fn pem_encode(der: &[u8], kind: &str) -> String {
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
pub(crate) fn pem_decode(pem: &str, kind: &str) -> Option<Zeroizing<Vec<u8>>> {
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
