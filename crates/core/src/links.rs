//! Drop links: an unguessable URL through which anyone who has it can
//! upload new files into one folder of one user's vault, within limits.
//!
//! A link is a random token of [`TOKEN_BYTES`] bytes (256 bits), shown once
//! when it is made. Storage keeps only its SHA-256: the record
//! `.links/<id>.json`, where `id` is the first 16 hex digits of that hash,
//! so a token is found with one read and an operator names a link by its
//! id. What a link let in is counted by one small marker per upload under
//! `.links/<id>/`, so every node on a shared bucket sees the same counts
//! (two nodes admitting the last upload at the same moment can both
//! succeed: the limit is checked, not locked).
//!
//! Records sit next to the vault's own folders in the same storage; a name
//! starting with `.` is never a user's (see
//! [`validate_user_name`](crate::accounts::validate_user_name)).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::accounts::{hash_password, verify_password, Password};
use crate::storage::{Storage, StorageError};
use crate::vault::{VPath, VaultError};

/// Random bytes in a link's token.
pub const TOKEN_BYTES: usize = 32;
/// Folder of link records.
const DIR: &str = ".links";
/// Largest record read.
const MAX_RECORD: u64 = 16 * 1024;
/// Most links `list` reads.
const MAX_LINKS: usize = 100_000;

/// What can go wrong with links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No link has that id.
    #[error("no link {0}")]
    NoSuchLink(String),
    /// A setting of a new link is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A record is damaged.
    #[error("link record {0} is damaged")]
    Damaged(String),
}

impl From<LinkError> for VaultError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Storage(e) => e.into(),
            other => VaultError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// A drop link as storage keeps it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Link {
    /// Its name for operators: the first 16 hex digits of the token's hash.
    pub id: String,
    /// SHA-256 of the token, hex.
    token_sha256: String,
    /// The user whose vault uploads go to.
    pub user: String,
    /// The folder they go in (absolute, in the user's vault).
    pub folder: String,
    /// When it was made (seconds since the epoch).
    pub created: u64,
    /// When it stops working (seconds since the epoch); `None` = never.
    pub expires: Option<u64>,
    /// Uploads it lets in, at most.
    pub max_uploads: Option<u64>,
    /// Bytes it lets in, at most, all uploads together.
    pub max_bytes: Option<u64>,
    /// argon2id hash of its password, if it has one.
    password: Option<String>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("folder", &self.folder)
            .field("expires", &self.expires)
            .field("password", &self.password.is_some())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Whether it asks for a password.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether `password` is its password (argon2id: blocking, and as slow
    /// as a login). A link without one takes any.
    pub fn password_matches(&self, password: &Password) -> bool {
        self.password
            .as_deref()
            .is_none_or(|phc| verify_password(phc, password))
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| epoch(now) >= e)
    }

    /// The folder, as a vault path.
    pub fn folder_path(&self) -> VPath {
        VPath::resolve(&VPath::root(), &self.folder).unwrap_or_default()
    }
}

/// What a new link allows.
#[derive(Debug, Default)]
pub struct NewLink {
    /// The user whose vault uploads go to.
    pub user: String,
    /// The folder they go in.
    pub folder: String,
    /// How long it works; `None` = until revoked.
    pub lifetime: Option<Duration>,
    /// Uploads it lets in, at most.
    pub max_uploads: Option<u64>,
    /// Bytes it lets in, at most.
    pub max_bytes: Option<u64>,
    /// Its password, if any.
    pub password: Option<Password>,
}

/// What a link has let in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkUsage {
    /// Uploads begun (finished or not).
    pub uploads: u64,
    /// Their announced sizes, together.
    pub bytes: u64,
}

/// The links of one storage.
#[derive(Clone, Debug)]
pub struct Links {
    storage: Arc<dyn Storage>,
}

/// Seconds since the epoch at `t`.
pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` in RFC 3339, UTC, to the second (`2026-12-06T14:03:32Z`).
pub fn rfc3339(t: SystemTime) -> String {
    crate::s3::date::rfc3339(t)
}

fn token_hash(token: &str) -> String {
    crate::hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

impl Links {
    /// The links kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    fn record_name(id: &str) -> String {
        format!("{DIR}/{id}.json")
    }

    fn ensure_dir(&self, name: &str) -> Result<(), StorageError> {
        match self.storage.mkdir(name) {
            Ok(()) | Err(StorageError::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes a link; returns it and its token (shown once, never stored).
    pub fn create(&self, new: NewLink) -> Result<(Link, String), LinkError> {
        crate::accounts::validate_user_name(&new.user)
            .map_err(|e| LinkError::Invalid(e.to_string()))?;
        let folder = VPath::resolve(&VPath::root(), &new.folder)
            .map_err(|e| LinkError::Invalid(format!("folder {:?}: {e}", new.folder)))?;
        let mut raw = [0u8; TOKEN_BYTES];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| LinkError::Invalid("random number generator failed".into()))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let hash = token_hash(&token);
        let password = match &new.password {
            Some(p) => Some(hash_password(p).map_err(|e| LinkError::Invalid(e.to_string()))?),
            None => None,
        };
        let now = SystemTime::now();
        let link = Link {
            id: hash[..16].to_owned(),
            token_sha256: hash,
            user: new.user,
            folder: folder.to_string(),
            created: epoch(now),
            expires: new.lifetime.map(|d| epoch(now + d)),
            max_uploads: new.max_uploads,
            max_bytes: new.max_bytes,
            password,
        };
        self.ensure_dir(DIR)?;
        let json = serde_json::to_vec(&link).map_err(|e| LinkError::Invalid(e.to_string()))?;
        self.storage.put_new(&Self::record_name(&link.id), &json)?;
        Ok((link, token))
    }

    fn read(&self, id: &str) -> Result<Option<Link>, LinkError> {
        match self.storage.read_small(&Self::record_name(id), MAX_RECORD) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| LinkError::Damaged(id.to_owned())),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The link whose token is `token`, if there is one (expired or not).
    pub fn find(&self, token: &str) -> Result<Option<Link>, LinkError> {
        if token.len() > 128 || token.is_empty() {
            return Ok(None);
        }
        let hash = token_hash(token);
        Ok(self.read(&hash[..16])?.filter(|link| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                link.token_sha256.as_bytes(),
                hash.as_bytes(),
            )
            .is_ok()
        }))
    }

    /// Every link, by id.
    pub fn list(&self) -> Result<Vec<Link>, LinkError> {
        let mut lister = match self.storage.list(DIR) {
            Ok(l) => l,
            Err(StorageError::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut links = Vec::new();
        loop {
            let batch = lister.next_batch(256)?;
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                if let Some(id) = entry.name.strip_suffix(".json") {
                    if let Some(link) = self.read(id)? {
                        links.push(link);
                    }
                }
            }
            if links.len() >= MAX_LINKS {
                break;
            }
        }
        links.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(links)
    }

    /// Revokes link `id`: its record and counts go; its token finds
    /// nothing from now on.
    pub fn revoke(&self, id: &str) -> Result<(), LinkError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LinkError::NoSuchLink(id.to_owned()));
        }
        match self.storage.remove(&Self::record_name(id)) {
            Ok(()) => {}
            Err(StorageError::NotFound) => return Err(LinkError::NoSuchLink(id.to_owned())),
            Err(e) => return Err(e.into()),
        }
        self.storage.remove_tree(&format!("{DIR}/{id}"))?;
        Ok(())
    }

    /// What link `id` has let in so far.
    pub fn usage(&self, id: &str) -> Result<LinkUsage, LinkError> {
        let dir = format!("{DIR}/{id}");
        let mut lister = match self.storage.list(&dir) {
            Ok(l) => l,
            Err(StorageError::NotFound) => return Ok(LinkUsage::default()),
            Err(e) => return Err(e.into()),
        };
        let mut usage = LinkUsage::default();
        loop {
            let batch = lister.next_batch(256)?;
            if batch.is_empty() {
                return Ok(usage);
            }
            for entry in batch {
                let bytes = match self
                    .storage
                    .read_small(&format!("{dir}/{}", entry.name), 64)
                {
                    Ok(b) => b,
                    Err(StorageError::NotFound) => continue,
                    Err(e) => return Err(e.into()),
                };
                let len = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                usage.uploads += 1;
                usage.bytes = usage.bytes.saturating_add(len);
            }
        }
    }

    /// Counts upload `upload` of `len` bytes against link `id`.
    pub fn count(&self, id: &str, upload: &str, len: u64) -> Result<(), LinkError> {
        self.ensure_dir(DIR)?;
        let dir = format!("{DIR}/{id}");
        self.ensure_dir(&dir)?;
        self.storage
            .put_new(&format!("{dir}/{upload}"), len.to_string().as_bytes())?;
        Ok(())
    }

    /// Takes back what [`Links::count`] counted (a terminated upload).
    pub fn uncount(&self, id: &str, upload: &str) -> Result<(), LinkError> {
        match self.storage.remove(&format!("{DIR}/{id}/{upload}")) {
            Ok(()) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    fn links(dir: &tempfile::TempDir) -> Links {
        Links::new(Arc::new(LocalStorage::create(dir.path()).expect("test")))
    }

    #[test]
    fn tokens_are_found_by_hash_and_never_stored() {
        let dir = tempfile::tempdir().expect("test");
        let links = links(&dir);
        let (link, token) = links
            .create(NewLink {
                user: "alice".into(),
                folder: "/incoming/../in".into(),
                lifetime: Some(Duration::from_secs(60)),
                ..NewLink::default()
            })
            .expect("test");
        assert!(token.len() >= 43, "256 bits in base64url");
        assert_eq!(link.folder, "/in");
        let found = links.find(&token).expect("test").expect("test");
        assert_eq!(found.id, link.id);
        assert!(!found.expired(SystemTime::now()));
        assert!(found.expired(SystemTime::now() + Duration::from_secs(61)));
        // A token that shares the id prefix but not the hash finds nothing.
        assert!(links.find("not-the-token").expect("test").is_none());
        let stored =
            std::fs::read(dir.path().join(format!(".links/{}.json", link.id))).expect("test");
        assert!(!String::from_utf8_lossy(&stored).contains(&token));
    }

    #[test]
    fn counts_and_revocation() {
        let dir = tempfile::tempdir().expect("test");
        let links = links(&dir);
        let (link, token) = links
            .create(NewLink {
                user: "bob".into(),
                folder: "/".into(),
                password: Some(Password::new("s3cret".into())),
                ..NewLink::default()
            })
            .expect("test");
        assert!(link.has_password());
        assert!(link.password_matches(&Password::new("s3cret".into())));
        assert!(!link.password_matches(&Password::new("wrong".into())));
        links.count(&link.id, "u1", 10).expect("test");
        links.count(&link.id, "u2", 5).expect("test");
        assert_eq!(
            links.usage(&link.id).expect("test"),
            LinkUsage {
                uploads: 2,
                bytes: 15
            }
        );
        links.uncount(&link.id, "u2").expect("test");
        assert_eq!(links.usage(&link.id).expect("test").uploads, 1);
        assert_eq!(links.list().expect("test").len(), 1);
        links.revoke(&link.id).expect("test");
        assert!(links.find(&token).expect("test").is_none());
        assert!(matches!(
            links.revoke(&link.id),
            Err(LinkError::NoSuchLink(_))
        ));
        assert!(links.list().expect("test").is_empty());
    }
}
