//! Per-user key files: one small JSON file per user holding the wrapped
//! data key, named after a hash of the user name so any name makes a safe
//! file name. A key file is created once, its key never replaced;
//! deleting it crypto-shreds the user's files. Re-wraps (rotation, recovery)
//! replace it atomically under a lock, and never recreate a destroyed one.

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
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

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

    /// The wrapped key in the provider's terms.
    pub fn wrapped(&self) -> Wrapped {
        Wrapped {
            key_version: self.key_version,
            ciphertext: self.wrapped_key.clone(),
        }
    }
}

/// A key file found by [`KeyFileStore::list`]: its path, and its content
/// or why it cannot be read.
pub type ListedKeyFile = (PathBuf, Result<KeyFile, KeyError>);

/// The folder of key files.
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
        let h = digest::digest(&digest::SHA256, user.as_bytes());
        self.dir.join(format!("{}.json", hex(h.as_ref())))
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

    /// Every key file in the folder, each parsed or with why it cannot be.
    pub fn list(&self) -> Result<Vec<ListedKeyFile>, KeyError> {
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
            out.push((path, parsed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Replaces `kf.user`'s key file with `kf` (a re-wrap of the same key),
    /// atomically. Does nothing and returns `false` if the file is gone
    /// (shredded) or now holds another key: a re-wrap never brings a
    /// destroyed key back. Serialized against [`destroy`](Self::destroy)
    /// and other replacements by a lock on the file.
    pub fn replace(&self, kf: &KeyFile) -> Result<bool, KeyError> {
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
        let json = serde_json::to_vec_pretty(kf).map_err(|e| KeyError::CorruptKeyFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_via_temp(&path, &json, 0o600, |tmp| {
            fs::rename(tmp, &path).map_err(|e| KeyError::io(&path, e))
        })?;
        fsync_dir(&self.dir)?;
        drop(locked);
        Ok(true)
    }

    /// Removes `user`'s key file and makes the removal durable: every file
    /// sealed under that key becomes unreadable. Returns whether there was
    /// one.
    pub fn destroy(&self, user: &str) -> Result<bool, KeyError> {
        let path = self.path_for(user);
        let Some(locked) = self.lock(&path)? else {
            return Ok(false);
        };
        fs::remove_file(&path).map_err(|e| KeyError::io(&path, e))?;
        fsync_dir(&self.dir)?;
        drop(locked);
        Ok(true)
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

    /// Stores a new key file; fails with [`KeyError::KeyFileExists`] if the
    /// user already has one (it is never replaced).
    pub fn create(&self, kf: &KeyFile) -> Result<PathBuf, KeyError> {
        let path = self.path_for(&kf.user);
        let json = serde_json::to_vec_pretty(kf).map_err(|e| KeyError::CorruptKeyFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| KeyError::io(&self.dir, e))?;
        write_new_file(&path, &json, 0o600)?;
        Ok(path)
    }
}

/// Reads and parses a key file.
fn read_key_file(path: &Path, file: fs::File) -> Result<KeyFile, KeyError> {
    let mut text = String::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| KeyError::io(path, e))?;
    let corrupt = |reason: String| KeyError::CorruptKeyFile {
        path: path.to_owned(),
        reason,
    };
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(corrupt("too large".into()));
    }
    let kf: KeyFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
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
