//! The server's SSH host key: an ed25519 key in the data folder, made on
//! first start (mode 0600, never replaced), loaded on every later one.
//! Its seed comes from aws-lc-rs's random generator.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use zeroize::Zeroizing;

/// Why the host key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The file could not be read, created or written.
    #[error("{path}: {source}")]
    Io {
        /// The host key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not an unencrypted OpenSSH ed25519 private key.
    #[error("{path}: not an unencrypted OpenSSH ed25519 private key")]
    Invalid {
        /// The host key file.
        path: PathBuf,
    },
    /// The random generator failed.
    #[error("no random bytes for a new host key")]
    Random,
}

/// Loads the ed25519 host key at `path`, creating it (mode 0600) when the
/// file does not exist. Returns the key and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), HostKeyError> {
    let io = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let key = PrivateKey::from_openssh(&*bytes).map_err(|_| HostKeyError::Invalid {
                path: path.to_owned(),
            })?;
            if key.is_encrypted() || !matches!(key.key_data(), KeypairData::Ed25519(_)) {
                return Err(HostKeyError::Invalid {
                    path: path.to_owned(),
                });
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(&mut seed[..]).map_err(|_| HostKeyError::Random)?;
            let pair = Ed25519Keypair::from_seed(&seed);
            let key = PrivateKey::new(KeypairData::Ed25519(pair), "dropvault host key")
                .map_err(|_| HostKeyError::Random)?;
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|_| HostKeyError::Random)?;
            // create_new: never replaces a key another process just made,
            // and never follows a symbolic link planted at the path.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok((key, true))
        }
        Err(e) => Err(io(e)),
    }
}

/// The key's fingerprint as OpenSSH prints it: `SHA256:` and base64.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh_host_ed25519_key");
        let (made, created) = load_or_create(&path).expect("create");
        assert!(created);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, created) = load_or_create(&path).expect("load");
        assert!(!created);
        assert_eq!(fingerprint(&made), fingerprint(&loaded));
        assert!(fingerprint(&made).starts_with("SHA256:"));
    }

    #[test]
    fn garbage_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, b"not a key").expect("write");
        assert!(matches!(
            load_or_create(&path),
            Err(HostKeyError::Invalid { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"not a key");
    }
}
