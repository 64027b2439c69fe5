//! Per-user key files and where they are kept: the [`KeyStore`] interface
//! the keyring works through, and its local backend, [`KeyFileStore`].
//!
//! A key file is a small JSON document holding one wrapped data key. A
//! store may hold several per user (the S3 store, where two nodes can
//! create a first key at the same moment, and nothing can stop the second
//! without a conditional write); the local folder holds exactly one, named
//! after a hash of the user name so any name makes a safe file name. A key
//! file is created once, its key never replaced; deleting a user's key
//! files crypto-shreds their files. Re-wraps (rotation, recovery) replace a
//! key file with one of the same key id, and never recreate a destroyed
//! one.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use super::{KeyError, Wrapped};
use crate::{hex, random_hex};

/// Version of the key-file JSON layout.
pub const KEY_FILE_FORMAT: u32 = 1;
/// Largest key file read; real ones are under 2 KiB.
pub(crate) const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// The JSON content of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Layout version, [`KEY_FILE_FORMAT`].
    pub format: u32,
    /// The user the key belongs to (also bound into the wrapping).
    pub user: String,
    /// Provider kind that wrapped the key (`local`, `transit`).
    pub provider: String,
    /// Name of the KEK that wrapped it.
    pub key_name: String,
    /// Version of that KEK.
    pub key_version: u32,
    /// Hex id of the data key (as in file headers), to check an unwrap.
    pub key_id: String,
    /// The wrapped key, as the provider returned it.
    pub wrapped_key: String,
    /// The same key wrapped to the recovery key, if one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryWrap>,
}

/// A data key wrapped to the offline recovery key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryWrap {
    /// Fingerprint of the recovery key.
    pub key_name: String,
    /// RSA-OAEP-SHA256 ciphertext, base64.
    pub wrapped_key: String,
}

impl KeyFile {
    /// Checks that `dek`, unwrapped from this file, is the key it names.
    pub fn check(&self, dek: &crate::keys::DataKey) -> Result<(), KeyError> {
        if hex(&dek.id().0) == self.key_id {
            Ok(())
        } else {
            Err(KeyError::KeyIdMismatch {
                user: self.user.clone(),
            })
        }
    }

    /// The key file as stored (pretty JSON); `location` is for the error.
    pub(crate) fn to_json(&self, location: &Path) -> Result<Vec<u8>, KeyError> {
        serde_json::to_vec_pretty(self).map_err(|e| KeyError::CorruptKeyFile {
            path: location.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The wrapped key in the provider's terms.
    pub fn wrapped(&self) -> Wrapped {
        Wrapped {
            key_version: self.key_version,
            ciphertext: self.wrapped_key.clone(),
        }
    }
}

/// A key file found by [`KeyStore::list`]: where it is (a path, an object
/// name), and its content or why it cannot be read.
pub type ListedKeyFile = (String, Result<KeyFile, KeyError>);

/// Where key files are kept: what the keyring and the operator commands
/// need, whatever the backend.
///
/// A user may have several key files (see the module docs); the keyring
/// unwraps them all and seals new files under the one with the smallest
/// key id. No call may take an unreachable store for an empty one: a
/// failure to read is an error, never "no key file", or a login would
/// create a new key while the old one still exists.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Every key file of `user`, in no particular order; empty if there is
    /// none. Each is checked to belong to `user`.
    fn load_all(&self, user: &str) -> Result<Vec<KeyFile>, KeyError>;

    /// Every key file in the store, each parsed or with why it cannot be,
    /// in the order of their locations.
    fn list(&self) -> Result<Vec<ListedKeyFile>, KeyError>;

    /// Stores a new key file; never replaces one. Returns where it went.
    /// A store that holds one key file per user fails with
    /// [`KeyError::KeyFileExists`] when the user has one already.
    fn create(&self, kf: &KeyFile) -> Result<String, KeyError>;

    /// Replaces the key file of `kf.user` with key id `kf.key_id` by `kf`
    /// (a re-wrap of the same key). Does nothing and returns `false` if
    /// that key file is gone (shredded): a re-wrap never brings a destroyed
    /// key back.
    fn replace(&self, kf: &KeyFile) -> Result<bool, KeyError>;

    /// Removes every key file of `user`, durably: every file sealed under
    /// their keys becomes unreadable. Returns whether there was any.
    fn destroy(&self, user: &str) -> Result<bool, KeyError>;
}

/// Hex SHA-256 of a user name: the user's part of a key file's name, safe
/// whatever the name holds.
pub(crate) fn user_hash(user: &str) -> String {
    hex(digest::digest(&digest::SHA256, user.as_bytes()).as_ref())
}

/// The folder of key files, one per user.
#[derive(Debug, Clone)]
pub struct KeyFileStore {
    dir: PathBuf,
}

impl KeyFileStore {
    /// Key files in `dir`. Nothing is created until the first key file is
    /// (the folder then, mode 0700).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        Ok(Self { dir: dir.into() })
    }

    /// Where `user`'s key file lives: hex SHA-256 of the user name.
    pub fn path_for(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{}.json", user_hash(user)))
    }

    /// Loads `user`'s key file, if there is one.
    pub fn load(&self, user: &str) -> Result<Option<KeyFile>, KeyError> {
        let path = self.path_for(user);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyError::io(&path, e)),
        };
        let kf = read_key_file(&path, file)?;
        if kf.user != user {
            return Err(KeyError::CorruptKeyFile {
                path,
                reason: "key file belongs to another user".into(),
            });
        }
        Ok(Some(kf))
    }

    /// Opens and exclusively locks the key file at `path`, if it exists and
    /// is still linked under that name once locked.
    fn lock(&self, path: &Path) -> Result<Option<nix::fcntl::Flock<fs::File>>, KeyError> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = match fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(KeyError::io(path, e)),
            };
            let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| KeyError::io(path, e.into()))?;
            let held = locked.metadata().map_err(|e| KeyError::io(path, e))?;
            match fs::metadata(path) {
                // Still the file under that name: ours.
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(locked));
                }
                // Replaced while we waited: lock the new one.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(KeyError::io(path, e)),
            }
        }
    }
}

impl KeyStore for KeyFileStore {
    fn load_all(&self, user: &str) -> Result<Vec<KeyFile>, KeyError> {
        Ok(self.load(user)?.into_iter().collect())
    }

    fn list(&self) -> Result<Vec<ListedKeyFile>, KeyError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(KeyError::io(&self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| KeyError::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = entry.path();
            let parsed = fs::File::open(&path)
                .map_err(|e| KeyError::io(&path, e))
                .and_then(|f| read_key_file(&path, f))
                .and_then(|kf| {
                    if self.path_for(&kf.user) == path {
                        Ok(kf)
                    } else {
                        Err(KeyError::CorruptKeyFile {
                            path: path.clone(),
                            reason: "file name does not match the user in it".into(),
                        })
                    }
                });
            out.push((path.display().to_string(), parsed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Atomically (a temporary renamed over it), serialized against
    /// `destroy` and other replacements by a lock on the file.
    fn replace(&self, kf: &KeyFile) -> Result<bool, KeyError> {
        let path = self.path_for(&kf.user);
        let Some(locked) = self.lock(&path)? else {
            return Ok(false);
        };
        let current = read_key_file(
            &path,
            locked.try_clone().map_err(|e| KeyError::io(&path, e))?,
        )?;
        if current.user != kf.user || current.key_id != kf.key_id {
            return Ok(false);
        }
        let json = kf.to_json(&path)?;
        write_via_temp(&path, &json, 0o600, |tmp| {
            fs::rename(tmp, &path).map_err(|e| KeyError::io(&path, e))
        })?;
        fsync_dir(&self.dir)?;
        drop(locked);
        Ok(true)
    }

    fn destroy(&self, user: &str) -> Result<bool, KeyError> {
        let path = self.path_for(user);
        let Some(locked) = self.lock(&path)? else {
            return Ok(false);
        };
        fs::remove_file(&path).map_err(|e| KeyError::io(&path, e))?;
        fsync_dir(&self.dir)?;
        drop(locked);
        Ok(true)
    }

    /// Fails with [`KeyError::KeyFileExists`] if the user already has one:
    /// the folder holds one key file per user.
    fn create(&self, kf: &KeyFile) -> Result<String, KeyError> {
        let path = self.path_for(&kf.user);
        let json = kf.to_json(&path)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| KeyError::io(&self.dir, e))?;
        write_new_file(&path, &json, 0o600)?;
        Ok(path.display().to_string())
    }
}

/// Reads and parses a key file.
fn read_key_file(path: &Path, file: fs::File) -> Result<KeyFile, KeyError> {
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| KeyError::io(path, e))?;
    parse_key_file(path, &bytes)
}

/// Parses the bytes of the key file at `location` (a path, or an object
/// name), refusing more than a key file can hold.
pub(crate) fn parse_key_file(location: &Path, bytes: &[u8]) -> Result<KeyFile, KeyError> {
    let corrupt = |reason: String| KeyError::CorruptKeyFile {
        path: location.to_owned(),
        reason,
    };
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(corrupt("too large".into()));
    }
    let kf: KeyFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if kf.format != KEY_FILE_FORMAT {
        return Err(corrupt(format!("unknown key file format {}", kf.format)));
    }
    Ok(kf)
}

/// A fresh temporary name next to `path`, never read as a key file.
fn temp_name(path: &Path) -> Result<PathBuf, KeyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let nonce = random_hex(8).map_err(|_| KeyError::Random)?;
    Ok(dir.join(format!(".{name}.{nonce}.tmp")))
}

/// Writes `data` to a new file at `path` atomically: a temporary file in the
/// same folder, fsync, hard link to the final name (which fails if the name
/// exists, so nothing is ever replaced), unlink the temporary, fsync the
/// folder. A crash leaves either no file or a complete one (plus at most a
/// stray temporary, which is never read).
pub(crate) fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    write_via_temp(path, data, mode, |tmp| match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(KeyError::KeyFileExists {
            path: path.to_owned(),
        }),
        Err(e) => Err(KeyError::io(path, e)),
    })?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `data` to a fresh temporary file next to `path` (mode `mode`),
/// syncs it, and hands its name to `place` (link or rename it into place).
/// The temporary name is gone afterwards, whatever happened.
fn write_via_temp(
    path: &Path,
    data: &[u8],
    mode: u32,
    place: impl FnOnce(&Path) -> Result<(), KeyError>,
) -> Result<(), KeyError> {
    let tmp = temp_name(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| KeyError::io(&tmp, e))?;
        f.write_all(data).map_err(|e| KeyError::io(&tmp, e))?;
        f.sync_all().map_err(|e| KeyError::io(&tmp, e))?;
        place(&tmp)
    })();
    // After a rename there is nothing left to remove; after a link or a
    // failure, the temporary name goes.
    let _ = fs::remove_file(&tmp);
    result
}

/// Makes a folder's entries durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), KeyError> {
    crate::fsutil::sync_dir(dir).map_err(|e| KeyError::io(dir, e))
}
