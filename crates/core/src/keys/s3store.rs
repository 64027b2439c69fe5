//! Key files in an S3 bucket, shared by every node that uses it: the
//! objects `.keys/<sha256hex(user)>/<key id hex>.json`, each holding the
//! same JSON as a local key file.
//!
//! Two nodes handling a user's first login at the same moment may each
//! store a key. S3 offers no way to make the second one fail (Garage
//! ignores `If-None-Match` on PUT), so nothing tries to: each key file is
//! named by its own key id, written once and never overwritten by another
//! key, so neither can be lost; the keyring unwraps all of a user's keys
//! and opens each file with the one its header names. An unreachable
//! bucket is always an error ([`KeyError::Store`], transient), never an
//! empty user: a login then fails as "try again later" instead of creating
//! a key while the old one still exists.

use std::path::Path;

use super::store::{parse_key_file, user_hash, MAX_KEY_FILE_LEN};
use super::{KeyError, KeyFile, KeyStore, ListedKeyFile};
use crate::s3::{S3Client, S3Error};

/// Where key files live in the bucket (under the client's prefix).
/// Where key objects live: a name no user folder can have (user names
/// cannot start with a dot).
const ROOT: &str = ".keys/";
/// Most key files one user may have. Two are the most a race makes; more
/// means something else writes there, and each one costs an unwrap.
const MAX_PER_USER: usize = 16;
/// Most key files [`S3KeyStore::list`] reads, so a flooded bucket cannot
/// exhaust memory.
const MAX_LISTED: usize = 1_000_000;
/// Listing page size (S3's largest).
const PAGE: u32 = 1000;
/// Rounds of list-and-delete [`S3KeyStore::destroy`] makes before it gives
/// up on key files that keep coming back.
const DESTROY_ROUNDS: usize = 8;
/// Hex digits of a key id in an object name.
const KEY_ID_HEX: usize = 2 * dropvault_format::KEY_ID_LEN;

/// Key files in a bucket, any number per user (see the module docs).
#[derive(Debug, Clone)]
pub struct S3KeyStore {
    client: S3Client,
}

impl S3KeyStore {
    /// Key files in `client`'s bucket, under its prefix, in `.keys/`.
    pub fn new(client: S3Client) -> Self {
        Self { client }
    }

    /// Lists every object under `prefix`, at most `limit` of them.
    fn list_names(&self, prefix: &str, limit: usize) -> Result<Vec<String>, KeyError> {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .client
                .list(prefix, None, after.as_deref(), PAGE)
                .map_err(store_error(prefix))?;
            names.extend(page.objects.into_iter().map(|o| o.key));
            if names.len() > limit {
                return Err(KeyError::TooManyKeyFiles {
                    location: prefix.to_owned(),
                    limit,
                });
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// Reads the key file `name`, checked to be `user`'s (if given) and to
    /// hold the key its name says; `None` if it is gone (destroyed since
    /// it was listed).
    fn read(&self, name: &str, user: Option<&str>) -> Result<Option<KeyFile>, KeyError> {
        let corrupt = |reason: &str| KeyError::CorruptKeyFile {
            path: name.into(),
            reason: reason.to_owned(),
        };
        let (user_part, key_id) = split_name(name).ok_or_else(|| corrupt("not a key file name"))?;
        let max = usize::try_from(MAX_KEY_FILE_LEN + 1).unwrap_or(usize::MAX);
        let Some(bytes) = self
            .client
            .get_small(name, max)
            .map_err(store_error(name))?
        else {
            return Ok(None);
        };
        let kf = parse_key_file(Path::new(name), &bytes)?;
        if user.is_some_and(|u| u != kf.user) || user_hash(&kf.user) != user_part {
            return Err(corrupt("key file belongs to another user"));
        }
        if kf.key_id != key_id {
            return Err(corrupt("object name does not match the key id in it"));
        }
        Ok(Some(kf))
    }
}

impl KeyStore for S3KeyStore {
    fn load_all(&self, user: &str) -> Result<Vec<KeyFile>, KeyError> {
        let prefix = user_prefix(user);
        let mut files = Vec::new();
        for name in self.list_names(&prefix, MAX_PER_USER)? {
            if let Some(kf) = self.read(&name, Some(user))? {
                files.push(kf);
            }
        }
        Ok(files)
    }

    fn list(&self) -> Result<Vec<ListedKeyFile>, KeyError> {
        let mut out = Vec::new();
        for name in self.list_names(ROOT, MAX_LISTED)? {
            match self.read(&name, None) {
                Ok(Some(kf)) => out.push((name, Ok(kf))),
                Ok(None) => {}
                Err(e) => out.push((name, Err(e))),
            }
        }
        Ok(out)
    }

    /// Puts the key file under a name of its own key id, which no other key
    /// takes; the HEAD before only refuses a second create of the same key.
    fn create(&self, kf: &KeyFile) -> Result<String, KeyError> {
        let name = object_name(kf)?;
        let json = kf.to_json(Path::new(&name))?;
        if self
            .client
            .head(&name)
            .map_err(store_error(&name))?
            .is_some()
        {
            return Err(KeyError::KeyFileExists { path: name.into() });
        }
        self.client
            .put(&name, &json, &[])
            .map_err(store_error(&name))?;
        Ok(name)
    }

    /// A read, then a PUT of the same name. A `destroy` that deletes the
    /// key file between the two is undone by the PUT: nothing in S3 makes
    /// the PUT conditional. The window is one request long, a re-wrap is an
    /// operator's or a login's doing, and a shred is run for a user who no
    /// longer logs in; `destroy` lists again after deleting, which catches
    /// a PUT that lands while it runs.
    fn replace(&self, kf: &KeyFile) -> Result<bool, KeyError> {
        let name = object_name(kf)?;
        match self.read(&name, Some(&kf.user))? {
            Some(current) if current.key_id == kf.key_id => {}
            _ => return Ok(false),
        }
        let json = kf.to_json(Path::new(&name))?;
        self.client
            .put(&name, &json, &[])
            .map_err(store_error(&name))?;
        Ok(true)
    }

    /// Deletes what is listed until a listing comes back empty.
    fn destroy(&self, user: &str) -> Result<bool, KeyError> {
        let prefix = user_prefix(user);
        let mut any = false;
        for _ in 0..DESTROY_ROUNDS {
            let page = self
                .client
                .list(&prefix, None, None, PAGE)
                .map_err(store_error(&prefix))?;
            if page.objects.is_empty() {
                return Ok(any);
            }
            for o in page.objects {
                self.client.delete(&o.key).map_err(store_error(&o.key))?;
                any = true;
            }
        }
        Err(KeyError::DestroyRaced { location: prefix })
    }
}

/// The folder of `user`'s key files.
fn user_prefix(user: &str) -> String {
    format!("{ROOT}{}/", user_hash(user))
}

/// Where `kf` is stored; its key id must be one (it names the object).
fn object_name(kf: &KeyFile) -> Result<String, KeyError> {
    let name = format!("{}{}.json", user_prefix(&kf.user), kf.key_id);
    if is_key_id(&kf.key_id) {
        Ok(name)
    } else {
        Err(KeyError::CorruptKeyFile {
            path: name.into(),
            reason: "the key id is not 32 lower-case hex digits".into(),
        })
    }
}

/// The user hash and key id an object name holds, if it is a key file's.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let (user, file) = name.strip_prefix(ROOT)?.split_once('/')?;
    let key_id = file.strip_suffix(".json")?;
    let hash_ok = user.len() == 64 && user.bytes().all(is_lower_hex);
    (hash_ok && is_key_id(key_id)).then_some((user, key_id))
}

fn is_key_id(s: &str) -> bool {
    s.len() == KEY_ID_HEX && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Maps an S3 failure about `location` to a key error (transient when the
/// bucket is unreachable).
fn store_error(location: &str) -> impl Fn(S3Error) -> KeyError + '_ {
    move |source| KeyError::Store {
        location: location.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_checked_both_ways() {
        let hash = user_hash("alice");
        let id = "00112233445566778899aabbccddeeff";
        let name = format!(".keys/{hash}/{id}.json");
        assert_eq!(split_name(&name), Some((hash.as_str(), id)));
        for bad in [
            format!(".keys/{hash}/{id}.jsonx"),
            format!(".keys/{hash}/{}.json", &id[1..]),
            format!(".keys/{hash}/{}.json", id.to_uppercase()),
            format!(".keys/{hash}/x/{id}.json"),
            format!(".keys/{}/{id}.json", &hash[1..]),
            format!("other/{hash}/{id}.json"),
        ] {
            assert_eq!(split_name(&bad), None, "{bad}");
        }
        let kf = |key_id: &str| KeyFile {
            format: 1,
            user: "alice".into(),
            provider: "local".into(),
            key_name: "k".into(),
            key_version: 1,
            key_id: key_id.into(),
            wrapped_key: String::new(),
            recovery: None,
        };
        assert_eq!(object_name(&kf(id)).expect("valid"), name);
        assert!(matches!(
            object_name(&kf("../../x")),
            Err(KeyError::CorruptKeyFile { .. })
        ));
    }
}
