//! The `file` accounts backend: a TOML users file of argon2id hashes,
//! managed by `dropvault user ...` while the server runs.
//!
//! ```toml
//! # managed by `dropvault user ...`
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$...."
//!
//! [[users.alice.keys]]
//! key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop"
//! added = 2025-01-02T03:04:05Z
//! ```
//!
//! `keys` (SSH public keys, `.pub` lines) is optional, so files written
//! before keys existed read as they are, and a user without keys is
//! written without it. So are `quota_bytes` (a size, `"5GiB"`) and
//! `quota_files`, the user's own quota (`dropvault user set-quota`); "0"
//! and 0 are no limit, and a missing one is the server's.
//!
//! Writers (the CLI) take an exclusive lock on a sibling lock file, read the
//! file afresh, and replace it atomically (a temporary in the same folder,
//! mode 0600, fsync, rename, fsync of the folder), so concurrent commands
//! never lose each other's changes and a reader never sees half a file.
//! Readers (the server, at each login) take no lock: they stat the file and
//! parse it again only when it is another file or has changed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use argon2::password_hash::{self, SaltString};
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version, ARGON2ID_IDENT,
};
use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::sshkey::{SshPublicKey, MAX_KEYS_PER_USER};
use super::{validate_user_name, Account, AuthError, Authenticator, Password};
use crate::size::parse_size;
use crate::vault::Quota;

/// Largest users file read: about 5000 users; a larger one is refused
/// rather than parsed at every change.
const MAX_USERS_FILE_LEN: u64 = 1024 * 1024;
/// First line of every file written, so an operator knows what owns it.
/// Comments written by hand are not kept across a change by the CLI.
const HEADER: &str = "# managed by `dropvault user ...`\n";
/// Largest argon2 memory cost accepted in a hash (KiB). A login costs that
/// much memory while it is checked; a hand-written hash with gigabytes
/// would let a few concurrent logins exhaust the machine.
const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Largest argon2 time cost and parallelism accepted in a hash, for the
/// same reason.
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 16;
/// Salt of the work done for names that have no hash; it only has to be
/// a valid salt, the output is thrown away.
const DUMMY_SALT: &[u8] = b"dropvault-no-user";

/// The users file's content, as serialized.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Content {
    #[serde(default)]
    users: BTreeMap<String, Entry>,
}

impl Content {
    /// User `name`'s entry, or [`AuthError::NoSuchUser`].
    fn user(&self, name: &str) -> Result<&Entry, AuthError> {
        self.users.get(name).ok_or_else(|| no_such_user(name))
    }

    /// User `name`'s entry to change, or [`AuthError::NoSuchUser`].
    fn entry(&mut self, name: &str) -> Result<&mut Entry, AuthError> {
        self.users.get_mut(name).ok_or_else(|| no_such_user(name))
    }
}

fn no_such_user(name: &str) -> AuthError {
    AuthError::NoSuchUser {
        name: name.to_owned(),
    }
}

/// One user's entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// argon2id hash in PHC string format.
    password: String,
    /// SSH public keys, at most [`MAX_KEYS_PER_USER`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<StoredKey>,
    /// The user's own limit on bytes (a size); none = the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_bytes: Option<String>,
    /// The user's own limit on files; none = the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_files: Option<u64>,
}

impl Entry {
    /// The user's own quota. The file was checked when read, so the size
    /// parses.
    fn quota(&self) -> Quota {
        Quota {
            bytes: self.quota_bytes.as_deref().and_then(|s| parse_size(s).ok()),
            files: self.quota_files,
        }
    }
}

/// One SSH public key of a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    /// The `.pub` line: `TYPE BASE64 [COMMENT]`.
    key: String,
    /// When `dropvault user key add` added it (UTC); absent in a key
    /// written by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added: Option<toml::value::Datetime>,
}

/// One of a user's SSH public keys, as [`UserFile::keys`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    /// The key and its comment.
    pub key: SshPublicKey,
    /// When it was added, RFC 3339 (`2025-01-02T03:04:05Z`), if known.
    pub added: Option<String>,
}

/// What identifies one version of the file on disk. Writers always rename
/// a new file into place, so a change shows as a new inode even within
/// one tick of the file system's clock; length and times catch edits in
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Names whose password was verified against this version of the file,
/// with an HMAC of name and password under a key that never leaves this
/// process. A later login with the same password skips argon2id; any change
/// to the file starts a fresh, empty memo, so a changed or deleted password
/// is never honoured.
type Verified = Arc<Mutex<HashMap<String, [u8; 32]>>>;

/// The parsed file and the version it came from (`None`: no file).
struct Cached {
    stamp: Option<Stamp>,
    content: Arc<Content>,
    verified: Verified,
}

/// A users file: the `file` accounts backend.
///
/// A missing file means no users; the first [`UserFile::add`] creates it.
pub struct UserFile {
    path: PathBuf,
    lock_path: PathBuf,
    cache: Mutex<Option<Cached>>,
    /// Key of the verified-login memo; random per process.
    memo_key: hmac::Key,
    /// argon2 working memory of finished checks, reused by the next ones.
    memory: MemoryPool,
}

impl std::fmt::Debug for UserFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hashes stay out of logs.
        f.debug_struct("UserFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl UserFile {
    /// The users file at `path`, read now so that a malformed file is
    /// reported at startup rather than at the first login. A missing file
    /// is fine (no users).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = path.into();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let lock_path = path.with_file_name(format!("{name}.lock"));
        let mut key = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(key.as_mut())
            .map_err(|_| AuthError::Hashing("random number generator failed".into()))?;
        let file = Self {
            path,
            lock_path,
            cache: Mutex::new(None),
            memo_key: hmac::Key::new(hmac::HMAC_SHA256, key.as_ref()),
            memory: MemoryPool::default(),
        };
        file.current()?;
        Ok(file)
    }

    /// The path of the users file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds user `name` with `password`. Fails with
    /// [`AuthError::UserExists`] if the user is already there.
    pub fn add(&self, name: &str, password: &Password) -> Result<(), AuthError> {
        validate_user_name(name)?;
        let hash = hash_password(password)?;
        self.modify(|content| {
            if content.users.contains_key(name) {
                return Err(AuthError::UserExists {
                    name: name.to_owned(),
                });
            }
            content.users.insert(
                name.to_owned(),
                Entry {
                    password: hash,
                    keys: Vec::new(),
                    quota_bytes: None,
                    quota_files: None,
                },
            );
            Ok(())
        })?;
        tracing::info!(user = name, path = %self.path.display(), "user added");
        Ok(())
    }

    /// Replaces the password of user `name`. Fails with
    /// [`AuthError::NoSuchUser`] if there is no such user.
    pub fn set_password(&self, name: &str, password: &Password) -> Result<(), AuthError> {
        validate_user_name(name)?;
        let hash = hash_password(password)?;
        self.modify(|content| {
            content.entry(name)?.password = hash;
            Ok(())
        })?;
        tracing::info!(user = name, path = %self.path.display(), "password changed");
        Ok(())
    }

    /// Removes user `name` (their key file and files are not touched).
    /// Fails with [`AuthError::NoSuchUser`] if there is no such user.
    pub fn delete(&self, name: &str) -> Result<(), AuthError> {
        validate_user_name(name)?;
        self.modify(|content| {
            content
                .users
                .remove(name)
                .map(drop)
                .ok_or_else(|| no_such_user(name))
        })?;
        tracing::info!(user = name, path = %self.path.display(), "user deleted");
        Ok(())
    }

    /// Adds SSH public keys to user `name`, all or none. A key the user
    /// already has (the same blob, whatever the comment) stays as it is;
    /// the result says, key by key, whether it was added (`false`: it was
    /// there). Fails with [`AuthError::NoSuchUser`], or
    /// [`AuthError::TooManyKeys`] if the user would have more than
    /// [`MAX_KEYS_PER_USER`].
    pub fn add_keys(&self, name: &str, keys: &[SshPublicKey]) -> Result<Vec<bool>, AuthError> {
        validate_user_name(name)?;
        let added = utc_now();
        let mut result = Vec::with_capacity(keys.len());
        self.modify(|content| {
            let entry = content.entry(name)?;
            let mut have: Vec<Vec<u8>> = entry
                .keys
                .iter()
                .filter_map(|k| SshPublicKey::parse_line(&k.key).ok())
                .map(|k| k.blob().to_vec())
                .collect();
            result.clear();
            for key in keys {
                let new = !have.iter().any(|b| b == key.blob());
                if new {
                    have.push(key.blob().to_vec());
                    entry.keys.push(StoredKey {
                        key: key.to_line(),
                        added,
                    });
                }
                result.push(new);
            }
            if entry.keys.len() > MAX_KEYS_PER_USER {
                return Err(AuthError::TooManyKeys {
                    name: name.to_owned(),
                    max: MAX_KEYS_PER_USER,
                });
            }
            Ok(())
        })?;
        for (key, new) in keys.iter().zip(&result) {
            if *new {
                tracing::info!(user = name, fingerprint = %key.fingerprint(), kind = %key.kind(),
                    path = %self.path.display(), "SSH key added");
            }
        }
        Ok(result)
    }

    /// User `name`'s SSH public keys, in the order they were added. Fails
    /// with [`AuthError::NoSuchUser`] if there is no such user.
    pub fn keys(&self, name: &str) -> Result<Vec<UserKey>, AuthError> {
        validate_user_name(name)?;
        let content = self.current()?;
        let entry = content.user(name)?;
        entry
            .keys
            .iter()
            .map(|k| {
                Ok(UserKey {
                    key: SshPublicKey::parse_line(&k.key)?,
                    added: k.added.map(|d| d.to_string()),
                })
            })
            .collect()
    }

    /// Removes the SSH key of user `name` whose fingerprint is
    /// `fingerprint` (`SHA256:...`, the prefix optional), and returns it.
    /// Fails with [`AuthError::NoSuchUser`] or [`AuthError::NoSuchKey`].
    pub fn delete_key(&self, name: &str, fingerprint: &str) -> Result<SshPublicKey, AuthError> {
        validate_user_name(name)?;
        let wanted = fingerprint.trim();
        let wanted = wanted.strip_prefix("SHA256:").unwrap_or(wanted);
        let mut removed = None;
        self.modify(|content| {
            let entry = content.entry(name)?;
            let at = entry.keys.iter().position(|k| {
                SshPublicKey::parse_line(&k.key)
                    .is_ok_and(|p| p.fingerprint().strip_prefix("SHA256:") == Some(wanted))
            });
            let Some(at) = at else {
                return Err(AuthError::NoSuchKey {
                    name: name.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                });
            };
            let stored = entry.keys.remove(at);
            removed = Some(SshPublicKey::parse_line(&stored.key)?);
            Ok(())
        })?;
        let key = removed.ok_or_else(|| AuthError::NoSuchKey {
            name: name.to_owned(),
            fingerprint: fingerprint.to_owned(),
        })?;
        tracing::info!(user = name, fingerprint = %key.fingerprint(), path = %self.path.display(),
            "SSH key deleted");
        Ok(key)
    }

    /// Sets user `name`'s own quota: each limit given replaces theirs
    /// (`Some(0)` = no limit); `clear` first drops both (back to the
    /// server's). Fails with [`AuthError::NoSuchUser`].
    pub fn set_quota(&self, name: &str, quota: Quota, clear: bool) -> Result<(), AuthError> {
        validate_user_name(name)?;
        self.modify(|content| {
            let entry = content.entry(name)?;
            if clear {
                entry.quota_bytes = None;
                entry.quota_files = None;
            }
            if let Some(bytes) = quota.bytes {
                entry.quota_bytes = Some(bytes.to_string());
            }
            entry.quota_files = quota.files.or(entry.quota_files);
            Ok(())
        })?;
        tracing::info!(user = name, path = %self.path.display(), ?quota, clear, "quota set");
        Ok(())
    }

    /// User `name`'s own quota. Fails with [`AuthError::NoSuchUser`].
    pub fn quota(&self, name: &str) -> Result<Quota, AuthError> {
        let content = self.current()?;
        let entry = content.user(name)?;
        Ok(entry.quota())
    }

    /// The user names in the file, sorted.
    pub fn list(&self) -> Result<Vec<String>, AuthError> {
        // BTreeMap keys come out sorted.
        Ok(self.current()?.users.keys().cloned().collect())
    }

    /// The file's content, parsed again only if the file changed since the
    /// last call.
    fn current(&self) -> Result<Arc<Content>, AuthError> {
        self.current_with_memo().map(|(content, _)| content)
    }

    /// The current content and its verified-login memo.
    fn current_with_memo(&self) -> Result<(Arc<Content>, Verified), AuthError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = match fs::metadata(&self.path) {
            Ok(m) => Some(Stamp::of(&m)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(AuthError::io(&self.path, e)),
        };
        if let Some(c) = cache.as_ref().filter(|c| c.stamp == stamp) {
            return Ok((Arc::clone(&c.content), Arc::clone(&c.verified)));
        }
        // The stamp kept is the one of the file actually read, which may be
        // newer than the one just seen.
        let (stamp, content) = read(&self.path)?;
        let content = Arc::new(content);
        let verified = Verified::default();
        *cache = Some(Cached {
            stamp,
            content: Arc::clone(&content),
            verified: Arc::clone(&verified),
        });
        Ok((content, verified))
    }

    /// Applies `change` to the file's current content under the writers'
    /// lock and writes the result. Nothing is written if `change` fails.
    fn modify(
        &self,
        change: impl FnOnce(&mut Content) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let _lock = self.lock()?;
        // Read afresh, not from the cache: another process may have written
        // since, and the lock now keeps everyone else out.
        let (_, mut content) = read(&self.path)?;
        change(&mut content)?;
        let text = toml::to_string(&content).map_err(|e| AuthError::BadUsersFile {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        // A file the server would then refuse to read is never written.
        if (HEADER.len() + text.len()) as u64 > MAX_USERS_FILE_LEN {
            return Err(AuthError::BadUsersFile {
                path: self.path.clone(),
                reason: format!("the change would make it larger than {MAX_USERS_FILE_LEN} bytes"),
            });
        }
        write_replace(&self.path, format!("{HEADER}{text}").as_bytes())?;
        // This instance's readers see the change at once.
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// Takes the writers' lock, held until the returned file is dropped.
    ///
    /// The lock is on a separate file because the users file itself is
    /// replaced by rename: a lock on it would lock the old inode. The lock
    /// file is never removed, since removing it would let two writers lock
    /// two different files.
    fn lock(&self) -> Result<File, AuthError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| AuthError::io(&self.lock_path, e))?;
        // flock(2) on an open file description: it excludes other processes
        // and other `UserFile`s in this one alike. (File::lock is Rust 1.89;
        // the workspace's rust-version still says 1.85.)
        file.lock().map_err(|e| AuthError::io(&self.lock_path, e))?;
        Ok(file)
    }
}

impl Authenticator for UserFile {
    fn authenticate_key(&self, name: &str, key_blob: &[u8]) -> Result<Option<Account>, AuthError> {
        if validate_user_name(name).is_err() {
            return Ok(None);
        }
        let content = self.current()?;
        let Some(entry) = content.users.get(name) else {
            return Ok(None);
        };
        // Public keys, compared exactly; the file was checked when read,
        // so every line parses.
        let found = entry
            .keys
            .iter()
            .filter_map(|k| SshPublicKey::parse_line(&k.key).ok())
            .any(|k| k.blob() == key_blob);
        Ok(found.then(|| Account {
            name: name.to_owned(),
            quota: entry.quota(),
        }))
    }

    fn lookup(&self, name: &str) -> Result<Option<Account>, AuthError> {
        if validate_user_name(name).is_err() {
            return Ok(None);
        }
        let content = self.current()?;
        Ok(content.users.get(name).map(|entry| Account {
            name: name.to_owned(),
            quota: entry.quota(),
        }))
    }

    fn authenticate(&self, name: &str, password: &Password) -> Result<Option<Account>, AuthError> {
        let (content, verified) = self.current_with_memo()?;
        let entry = match validate_user_name(name) {
            Ok(()) => content.users.get(name),
            Err(_) => None,
        };
        let Some(entry) = entry else {
            self.memory.burn_equal_work(password);
            return Ok(None);
        };
        let hash = PasswordHash::new(&entry.password).map_err(|e| AuthError::BadUsersFile {
            path: self.path.clone(),
            reason: format!("user {name:?}: {e}"),
        })?;
        // Clients log in again and again (one connection per transfer, or
        // several in parallel): a password already verified against this
        // version of the file is recognised by its HMAC, not argon2id again.
        let memo_input = [name.as_bytes(), b"\0", password.expose().as_bytes()].concat();
        let memo_input = Zeroizing::new(memo_input);
        let known = verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .is_some_and(|tag| hmac::verify(&self.memo_key, &memo_input, tag).is_ok());
        if known {
            return Ok(Some(Account {
                name: name.to_owned(),
                quota: entry.quota(),
            }));
        }
        match self.memory.verify(password.expose().as_bytes(), &hash) {
            Ok(true) => {
                let mut tag = [0u8; 32];
                tag.copy_from_slice(hmac::sign(&self.memo_key, &memo_input).as_ref());
                verified
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_owned(), tag);
                Ok(Some(Account {
                    name: name.to_owned(),
                    quota: entry.quota(),
                }))
            }
            Ok(false) => Ok(None),
            Err(e) => Err(AuthError::Hashing(e.to_string())),
        }
    }
}

/// Buffers of argon2 working memory (19 MiB each with the default costs),
/// kept for the next check instead of being allocated and freed each time,
/// and the limit on checks at once.
///
/// Freed buffers did not go back to the system: the allocator kept them in
/// per-thread arenas, and 200 first logins left the server at 1 GB
/// resident (bench/run, distinct users). Each is zeroed when it comes back
/// (it holds state derived from a password).
///
/// argon2id is a core's worth of work per check: more at once than cores
/// only adds memory and lets a login flood starve everything else. The
/// limit lives here, with the work it limits, so other backends (PAM, a
/// directory) are not held to the number of cores.
struct MemoryPool {
    state: Mutex<Pool>,
    freed: Condvar,
    limit: usize,
}

#[derive(Default)]
struct Pool {
    buffers: Vec<Vec<Block>>,
    running: usize,
}

/// Buffers the pool keeps at most.
const POOLED: usize = 4;

impl Default for MemoryPool {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            freed: Condvar::new(),
            limit: std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        }
    }
}

impl MemoryPool {
    /// Runs `f` with at least `blocks` blocks of working memory, once fewer
    /// than `limit` checks are running.
    fn with<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut memory = {
            let mut pool = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            while pool.running >= self.limit {
                pool = self
                    .freed
                    .wait(pool)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pool.running += 1;
            pool.buffers.pop().unwrap_or_default()
        };
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let out = f(&mut memory[..blocks]);
        memory.iter_mut().for_each(Zeroize::zeroize);
        let mut pool = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        pool.running -= 1;
        if pool.buffers.len() < POOLED {
            pool.buffers.push(memory);
        }
        drop(pool);
        self.freed.notify_one();
        out
    }

    /// Whether `password` matches `hash` (argon2id; costs as in the hash).
    fn verify(&self, password: &[u8], hash: &PasswordHash<'_>) -> password_hash::Result<bool> {
        let params = Params::try_from(hash)?;
        let version = hash.version.map(Version::try_from).transpose()?;
        let expected = hash.hash.ok_or(password_hash::Error::Password)?;
        let salt = hash.salt.ok_or(password_hash::Error::SaltInvalid(
            password_hash::errors::InvalidValue::Malformed,
        ))?;
        let mut salt_buf = [0u8; 64];
        let salt = salt.decode_b64(&mut salt_buf)?;
        let argon = Argon2::new(Algorithm::Argon2id, version.unwrap_or_default(), params);
        let mut out = Zeroizing::new([0u8; 64]);
        let out = out
            .get_mut(..expected.len())
            .ok_or(password_hash::Error::OutputSize {
                provided: std::cmp::Ordering::Greater,
                expected: 64,
            })?;
        let blocks = argon.params().block_count();
        self.with(blocks, |memory| {
            argon.hash_password_into_with_memory(password, salt, out, memory)
        })?;
        Ok(aws_lc_rs::constant_time::verify_slices_are_equal(out, expected.as_bytes()).is_ok())
    }

    /// Does the argon2 work of checking a password against a hash with the
    /// default parameters, for a name that has none: a login for an unknown
    /// name then takes as long as a wrong password for a known one, so
    /// timing does not tell which names exist. (A hand-written hash with
    /// other costs takes its own time; hashes written by this module all
    /// cost the same.)
    fn burn_equal_work(&self, password: &Password) {
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let argon = hasher();
        self.with(argon.params().block_count(), |memory| {
            // The result is thrown away; only the time spent matters.
            let _ = argon.hash_password_into_with_memory(
                password.expose().as_bytes(),
                DUMMY_SALT,
                &mut out,
                memory,
            );
        });
    }
}

/// argon2id, version 0x13, with the crate's defaults, which are OWASP's
/// recommendation: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT)
}

/// Hashes `password` with a fresh 128-bit salt into a PHC string
/// (argon2id, as user passwords; drop links' passwords too).
pub fn hash_password(password: &Password) -> Result<String, AuthError> {
    if password.expose().is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| AuthError::Hashing("random number generator failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hashing(e.to_string()))?;
    let hash = hasher()
        .hash_password(password.expose().as_bytes(), &salt)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(hash.to_string())
}

/// Reads and parses the users file; a missing file is an empty one.
/// Returns the stamp of the file read, from the open file itself.
fn read(path: &Path) -> Result<(Option<Stamp>, Content), AuthError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((None, Content::default())),
        Err(e) => return Err(AuthError::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| AuthError::io(path, e))?;
    let too_large = || AuthError::BadUsersFile {
        path: path.to_owned(),
        reason: format!("larger than {MAX_USERS_FILE_LEN} bytes"),
    };
    if meta.len() > MAX_USERS_FILE_LEN {
        return Err(too_large());
    }
    let mut text = String::new();
    // The limit holds even if the file grows after the check above.
    file.take(MAX_USERS_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| AuthError::io(path, e))?;
    if text.len() as u64 > MAX_USERS_FILE_LEN {
        return Err(too_large());
    }
    Ok((Some(Stamp::of(&meta)), parse(path, &text)?))
}

/// Parses and checks the users file: valid names, argon2id hashes with
/// bounded costs.
fn parse(path: &Path, text: &str) -> Result<Content, AuthError> {
    let bad = |reason: String| AuthError::BadUsersFile {
        path: path.to_owned(),
        reason,
    };
    let content: Content = toml::from_str(text).map_err(|e| {
        // Only the message and the line: toml's own Display quotes the
        // offending line, which may hold a hash, and hashes stay out of
        // logs.
        let line = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map_or(0, |before| before.matches('\n').count() + 1);
        bad(format!("line {line}: {}", e.message().trim()))
    })?;
    for (name, entry) in &content.users {
        validate_user_name(name).map_err(|e| bad(e.to_string()))?;
        check_hash(&entry.password).map_err(|reason| bad(format!("user {name:?}: {reason}")))?;
        if let Some(size) = &entry.quota_bytes {
            parse_size(size).map_err(|e| bad(format!("user {name:?}: quota_bytes: {e}")))?;
        }
        if entry.keys.len() > MAX_KEYS_PER_USER {
            return Err(bad(format!(
                "user {name:?}: more than {MAX_KEYS_PER_USER} SSH keys"
            )));
        }
        for (i, k) in entry.keys.iter().enumerate() {
            SshPublicKey::parse_line(&k.key)
                .map_err(|e| bad(format!("user {name:?}: SSH key {}: {e}", i + 1)))?;
        }
    }
    Ok(content)
}

/// Now, UTC, to the second, as a TOML date-time.
fn utc_now() -> Option<toml::value::Datetime> {
    use toml::value::{Date, Datetime, Offset, Time};
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::ls::civil_from_days(i64::try_from(days).ok()?);
    Some(Datetime {
        date: Some(Date {
            year: u16::try_from(year).ok()?,
            month,
            day,
        }),
        time: Some(Time {
            hour: u8::try_from(rem / 3600).ok()?,
            minute: u8::try_from(rem % 3600 / 60).ok()?,
            second: u8::try_from(rem % 60).ok()?,
            nanosecond: 0,
        }),
        offset: Some(Offset::Z),
    })
}

/// Checks that `phc` is an argon2id hash this server will verify.
fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("password is not a PHC hash: {e}"))?;
    if hash.algorithm != ARGON2ID_IDENT {
        return Err(format!(
            "password hash is {}, only argon2id is accepted",
            hash.algorithm
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("password hash lacks a salt or an output".into());
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "argon2 costs above the limit (m <= {MAX_M_COST_KIB}, t <= {MAX_T_COST}, p <= {MAX_P_COST})"
        ));
    }
    Ok(())
}

/// Replaces the file at `path` with `data` atomically: a new temporary
/// file in the same folder (mode 0600, the old file's owner and group),
/// fsync, rename over `path`, fsync of the folder. A crash leaves the old
/// file or the new one, never a mix (plus at most a stray temporary, which
/// the next write removes). Callers hold the writers' lock, which is what
/// makes the fixed temporary name safe.
fn write_replace(path: &Path, data: &[u8]) -> Result<(), AuthError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let owner = match fs::metadata(path) {
        Ok(m) => Some((m.uid(), m.gid())),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(AuthError::io(path, e)),
    };
    // Left over by a writer that crashed; create_new below refuses to
    // follow whatever is there, symlinks included.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(AuthError::io(&tmp, e)),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| AuthError::io(&tmp, e))?;
        // Exactly 0600 whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| AuthError::io(&tmp, e))?;
        // Root running `dropvault user add` must not leave the server's
        // users file owned by root, which the server could then not read.
        if let Some((uid, gid)) = owner {
            let meta = f.metadata().map_err(|e| AuthError::io(&tmp, e))?;
            if (meta.uid(), meta.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                    .map_err(|e| AuthError::io(&tmp, e))?;
            }
        }
        f.write_all(data).map_err(|e| AuthError::io(&tmp, e))?;
        f.sync_all().map_err(|e| AuthError::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| AuthError::io(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    crate::fsutil::sync_dir(dir).map_err(|e| AuthError::io(dir, e))
}

/// Whether `password` matches `phc`, a hash [`hash_password`] made (a
/// hash with other algorithms or costs over ours never matches).
pub fn verify_password(phc: &str, password: &Password) -> bool {
    use argon2::PasswordVerifier;
    check_hash(phc).is_ok()
        && PasswordHash::new(phc).is_ok_and(|h| {
            hasher()
                .verify_password(password.expose().as_bytes(), &h)
                .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_use_owasp_parameters_and_verify() {
        let pw = Password::new("correct horse".into());
        let phc = hash_password(&pw).expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        check_hash(&phc).expect("own hashes pass the check");
        let parsed = PasswordHash::new(&phc).expect("parse");
        // The crate's own check and ours, with pooled memory, agree.
        use argon2::PasswordVerifier;
        assert!(hasher().verify_password(b"correct horse", &parsed).is_ok());
        assert!(hasher().verify_password(b"wrong", &parsed).is_err());
        let pool = MemoryPool::default();
        for _ in 0..3 {
            assert_eq!(pool.verify(b"correct horse", &parsed).ok(), Some(true));
            assert_eq!(pool.verify(b"wrong", &parsed).ok(), Some(false));
        }
        // One buffer served every check, and came back zeroed.
        let kept = pool.state.lock().expect("pool");
        assert_eq!((kept.buffers.len(), kept.running), (1, 0));
        assert!(kept.buffers[0]
            .iter()
            .all(|b| b.as_ref().iter().all(|&x| x == 0)));
        // Two hashes of one password differ: the salt is random.
        assert_ne!(phc, hash_password(&pw).expect("hash"));
    }

    #[test]
    fn empty_passwords_are_not_stored() {
        assert!(matches!(
            hash_password(&Password::new(String::new())),
            Err(AuthError::EmptyPassword)
        ));
    }

    #[test]
    fn hash_check_refuses_other_algorithms_and_huge_costs() {
        let argon2i = "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                       YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";
        assert!(check_hash(argon2i).is_err());
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                    YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";
        assert!(check_hash(huge).expect_err("4 GiB").contains("limit"));
        assert!(check_hash("plaintext").is_err());
        assert!(check_hash("$2b$12$abcdefghijklmnopqrstuu").is_err());
    }

    const ED: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIM1eeSXRznHqj4Gt9jtLh8zgKQMX5hoAcwD/QZYBFgxz alice@laptop";
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                        YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";

    /// A distinct valid ed25519 key for each `i`.
    fn key(i: u8) -> SshPublicKey {
        let mut blob = SshPublicKey::parse_line(ED).expect("ed").blob().to_vec();
        if let Some(last) = blob.last_mut() {
            *last = i;
        }
        SshPublicKey::from_blob(&blob).expect("blob")
    }

    fn users_with_alice() -> (tempfile::TempDir, UserFile) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        fs::write(&path, format!("[users.alice]\npassword = \"{HASH}\"\n")).expect("write");
        let users = UserFile::open(&path).expect("open");
        (dir, users)
    }

    #[test]
    fn lookup_finds_users_without_a_password() {
        let (_dir, users) = users_with_alice();
        let alice = users.lookup("alice").expect("lookup").expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(users.lookup("bob").expect("lookup").is_none());
        assert!(users.lookup("../alice").expect("lookup").is_none());
    }

    #[test]
    fn keys_are_added_listed_matched_and_deleted() {
        let (_dir, users) = users_with_alice();
        let ed = SshPublicKey::parse_line(ED).expect("ed");
        assert_eq!(
            users.authenticate_key("alice", ed.blob()).expect("auth"),
            None
        );
        assert!(users.keys("alice").expect("keys").is_empty());

        assert_eq!(
            users.add_keys("alice", &[ed.clone(), key(1)]).expect("add"),
            [true, true]
        );
        // Again, with another comment: already there, kept as it was.
        let renamed =
            SshPublicKey::parse_line(&ED.replace("alice@laptop", "other")).expect("parse");
        assert_eq!(
            users.add_keys("alice", &[renamed, key(2)]).expect("add"),
            [false, true]
        );
        let listed = users.keys("alice").expect("keys");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].key, ed);
        let added = listed[0].added.as_deref().expect("added");
        assert!(added.len() == 20 && added.ends_with('Z'), "{added}");

        let account = users.authenticate_key("alice", ed.blob()).expect("auth");
        assert_eq!(account.map(|a| a.name).as_deref(), Some("alice"));
        assert!(users
            .authenticate_key("alice", key(3).blob())
            .expect("auth")
            .is_none());
        assert!(users
            .authenticate_key("bob", ed.blob())
            .expect("auth")
            .is_none());
        assert!(users
            .authenticate_key("../x", ed.blob())
            .expect("auth")
            .is_none());
        // A prefix of the blob is not the key.
        let short = &ed.blob()[..ed.blob().len() - 1];
        assert!(users
            .authenticate_key("alice", short)
            .expect("auth")
            .is_none());

        // Delete by fingerprint, with or without the prefix.
        let gone = users
            .delete_key("alice", &ed.fingerprint())
            .expect("delete");
        assert_eq!(gone.blob(), ed.blob());
        let fp1 = key(1).fingerprint();
        users
            .delete_key("alice", fp1.trim_start_matches("SHA256:"))
            .expect("delete");
        assert!(matches!(
            users.delete_key("alice", &fp1),
            Err(AuthError::NoSuchKey { .. })
        ));
        assert!(users
            .authenticate_key("alice", ed.blob())
            .expect("auth")
            .is_none());
        assert_eq!(users.keys("alice").expect("keys").len(), 1);
        assert!(matches!(
            users.add_keys("bob", &[ed]),
            Err(AuthError::NoSuchUser { .. })
        ));
        // Another reader of the same file sees the change.
        let again = UserFile::open(users.path()).expect("open");
        assert_eq!(again.keys("alice").expect("keys")[0].key, key(2));
        // The password is kept.
        let text = fs::read_to_string(users.path()).expect("read");
        assert!(
            text.contains(HASH) && text.contains("[[users.alice.keys]]"),
            "{text}"
        );
    }

    #[test]
    fn keys_per_user_are_bounded() {
        let (_dir, users) = users_with_alice();
        let max = u8::try_from(MAX_KEYS_PER_USER).expect("small");
        let many: Vec<_> = (0..max).map(key).collect();
        users.add_keys("alice", &many).expect("add");
        assert!(matches!(
            users.add_keys("alice", &[key(max)]),
            Err(AuthError::TooManyKeys { .. })
        ));
        // All or nothing, and a key already there is no new one.
        assert_eq!(users.keys("alice").expect("keys").len(), MAX_KEYS_PER_USER);
        assert_eq!(users.add_keys("alice", &[key(0)]).expect("add"), [false]);
        // A hand-edited file with too many is refused as a whole.
        let mut text = fs::read_to_string(users.path()).expect("read");
        text.push_str(&format!(
            "\n[[users.alice.keys]]\nkey = \"{}\"\n",
            key(max).to_line()
        ));
        assert!(parse(users.path(), &text)
            .expect_err("101 keys")
            .to_string()
            .contains("more than 100"));
    }

    #[test]
    fn a_users_own_quota_is_set_read_cleared_and_checked() {
        let (_dir, users) = users_with_alice();
        assert_eq!(users.quota("alice").expect("quota"), Quota::default());
        let mine = Quota {
            bytes: Some(5 << 30),
            files: Some(100),
        };
        users.set_quota("alice", mine, false).expect("set");
        assert_eq!(users.quota("alice").expect("quota"), mine);
        let pw = Password::new("alice-pw".into());
        users.set_password("alice", &pw).expect("password");
        let account = users.authenticate("alice", &pw).expect("answered");
        assert_eq!(account.map(|a| a.quota), Some(mine));
        // One limit given: the other stays.
        let files = Quota {
            bytes: None,
            files: Some(0),
        };
        users.set_quota("alice", files, false).expect("set");
        assert_eq!(users.quota("alice").expect("quota").bytes, Some(5 << 30));
        users.set_quota("alice", files, true).expect("clear");
        assert_eq!(users.quota("alice").expect("quota"), files);
        assert!(matches!(
            users.set_quota("bob", mine, false),
            Err(AuthError::NoSuchUser { .. })
        ));
        // A size by hand: "5GiB" reads, "5 gigs" makes the file bad.
        let text = format!("[users.alice]\npassword = \"{HASH}\"\nquota_bytes = \"5GiB\"\n");
        let content = parse(Path::new("u.toml"), &text).expect("size");
        assert_eq!(content.users["alice"].quota().bytes, Some(5 << 30));
        let bad = text.replace("5GiB", "5 gigs");
        assert!(parse(Path::new("u.toml"), &bad)
            .expect_err("not a size")
            .to_string()
            .contains("quota_bytes"));
    }

    #[test]
    fn files_without_keys_still_read_and_bad_keys_are_refused() {
        let old =
            format!("# managed by `dropvault user ...`\n[users.alice]\npassword = \"{HASH}\"\n");
        let content = parse(Path::new("u.toml"), &old).expect("old file");
        assert!(content.users["alice"].keys.is_empty());
        // Written back without a keys field.
        let out = toml::to_string(&content).expect("serialize");
        assert!(!out.contains("keys"), "{out}");
        // A key written by hand, without `added`, is fine.
        let hand = format!("{old}[[users.alice.keys]]\nkey = \"{ED}\"\n");
        assert_eq!(
            parse(Path::new("u.toml"), &hand).expect("hand").users["alice"]
                .keys
                .len(),
            1
        );
        // An RSA key or junk makes the file bad, without quoting it.
        let rsa = format!("{old}[[users.alice.keys]]\nkey = \"ssh-rsa AAAAB3NzaSECRET\"\n");
        let msg = parse(Path::new("u.toml"), &rsa)
            .expect_err("rsa")
            .to_string();
        assert!(msg.contains("SSH key 1") && msg.contains("RSA"), "{msg}");
        assert!(!msg.contains("SECRET"), "{msg}");
        let unknown = format!("{old}[[users.alice.keys]]\nkey = \"{ED}\"\nwhat = 1\n");
        assert!(parse(Path::new("u.toml"), &unknown).is_err());
    }

    #[test]
    fn pam_refuses_every_key() {
        // PAM has no keys: the trait's default answers for it.
        let pam = super::super::PamAuthenticator::default();
        let ed = SshPublicKey::parse_line(ED).expect("ed");
        assert!(pam
            .authenticate_key("root", ed.blob())
            .expect("default")
            .is_none());
    }

    #[test]
    fn parse_errors_do_not_quote_the_file() {
        let text = "[users.alice]\npassword = \"$argon2id$secret-ish\n";
        let err = parse(Path::new("u.toml"), text).expect_err("unterminated string");
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("secret-ish"), "{msg}");
    }
}
