//! What operators' commands do to stored files while no session is
//! involved: find a user's files, read one, check them, seal files in from
//! outside (import), and remove all of a user's files (shredding). All of
//! it blocking.

use std::io::{self, ErrorKind, Read, Write};

use dropvault_format::{DecryptingReader, EncryptingWriter};

use super::{
    map_io, staging_prefix, stored_name, VPath, Vault, VaultError, CHUNK, QUARANTINE, STAGING,
};
use crate::keys::UserKey;
use crate::scan::{OnError, Verdict};
use crate::storage::{self, Commit, Kind, ObjectReader, StorageError};

/// Largest quarantine record read.
const MAX_RECORD: u64 = 64 * 1024;

/// One stored file of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Its path as the user sees it.
    pub path: VPath,
    /// Its name in storage.
    pub stored: String,
    /// Stored (sealed) length in bytes.
    pub stored_len: u64,
}

/// A rejected upload kept in quarantine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Quarantined {
    /// Its id (what `release` and `delete` take).
    pub id: String,
    /// Whose upload it was.
    pub user: String,
    /// Where it was going.
    pub path: String,
    /// Plaintext bytes.
    pub size: u64,
    /// What the scanner found.
    pub finding: String,
    /// When, in seconds since the Unix epoch.
    pub time: u64,
}

/// A user's folder held something that is not a sealed file or a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oddity {
    /// Its name in storage.
    pub stored: String,
    /// What it is.
    pub what: &'static str,
}

impl Vault {
    /// Users with a folder in the storage root.
    pub fn user_folders(&self) -> Result<Vec<String>, VaultError> {
        let mut users = Vec::new();
        let mut lister = match self.storage.list("") {
            Ok(l) => l,
            Err(StorageError::NotFound) => return Ok(users),
            Err(e) => return Err(e.into()),
        };
        loop {
            let batch = lister.next_batch(1024)?;
            if batch.is_empty() {
                break;
            }
            users.extend(
                batch
                    .into_iter()
                    .filter(|l| l.meta.kind == Kind::Dir && !l.name.starts_with('.'))
                    .map(|l| l.name),
            );
        }
        users.sort();
        Ok(users)
    }

    /// Every stored file of `user`, sorted by path, and anything else found
    /// in their folder (symbolic links, special files, names that are not
    /// UTF-8), which no session ever serves.
    pub fn walk_user(&self, user: &str) -> Result<(Vec<StoredFile>, Vec<Oddity>), VaultError> {
        let home = self.home(user)?;
        let (mut files, mut odd) = (Vec::new(), Vec::new());
        match self.storage.stat(&home) {
            Ok(m) if m.kind == Kind::Dir => {}
            Ok(_) => return Err(VaultError::NotADirectory),
            Err(StorageError::NotFound) => return Ok((files, odd)),
            Err(StorageError::Refused) => {
                odd.push(Oddity {
                    stored: home,
                    what: "symbolic link",
                });
                return Ok((files, odd));
            }
            Err(e) => return Err(e.into()),
        }
        let mut stack = vec![(home, VPath::root())];
        while let Some((dir, vdir)) = stack.pop() {
            let mut lister = self.storage.list(&dir)?;
            loop {
                let batch = lister.next_batch(1024)?;
                if batch.is_empty() {
                    break;
                }
                for listed in batch {
                    let stored = storage::join(&dir, &listed.name);
                    if let Kind::Other(what) = listed.meta.kind {
                        odd.push(Oddity { stored, what });
                        continue;
                    }
                    let Ok(vpath) = VPath::resolve(&vdir, &listed.name) else {
                        odd.push(Oddity {
                            stored,
                            what: "name no client can use",
                        });
                        continue;
                    };
                    match listed.meta.kind {
                        Kind::Dir => stack.push((stored, vpath)),
                        _ => files.push(StoredFile {
                            path: vpath,
                            stored,
                            stored_len: listed.meta.len,
                        }),
                    }
                }
            }
        }
        files.sort_by_key(|f| f.path.to_string());
        Ok((files, odd))
    }

    /// Opens `user`'s file at `p` for reading with `key`: header and length
    /// checked, every segment authenticated as it is read.
    pub fn open_stored(
        &self,
        key: &UserKey,
        p: &VPath,
    ) -> Result<DecryptingReader<ObjectReader>, VaultError> {
        let object = self
            .storage
            .open(&stored_name(&self.home(key.user())?, p))?;
        let file_key = super::file_key(key, &object)?;
        Ok(DecryptingReader::new(ObjectReader::new(object), file_key)?)
    }

    /// Reads `user`'s file at `p` to the end, authenticating every segment;
    /// calls `progress` with the plaintext bytes of each read. The
    /// plaintext goes nowhere.
    pub fn check_stored(
        &self,
        key: &UserKey,
        p: &VPath,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, VaultError> {
        let mut reader = self.open_stored(key, p)?;
        let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(map_io)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            progress(n as u64);
        }
    }

    /// Creates folder `name` if it is missing; fails if something else is
    /// there.
    fn ensure_folder(&self, name: &str) -> Result<(), VaultError> {
        match self.storage.mkdir(name) {
            Ok(()) | Err(StorageError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        match self.storage.stat(name)?.kind {
            Kind::Dir => Ok(()),
            _ => Err(VaultError::NotADirectory),
        }
    }

    /// Seals everything `src` yields into a new file of `key`'s user at
    /// `p`, creating missing folders. With a scanner, the file is scanned
    /// as it is sealed and imported only if it passes (or `on_error`
    /// allows). The sealed data goes to a staging
    /// file first and appears under its name only when complete and synced;
    /// an existing file is never replaced ([`VaultError::AlreadyExists`]).
    /// Returns the plaintext length.
    pub fn import(
        &self,
        key: &UserKey,
        p: &VPath,
        src: &mut dyn Read,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, VaultError> {
        let home = self.home(key.user())?;
        if p.is_root() {
            return Err(VaultError::IsADirectory);
        }
        self.ensure_folder(&home)?;
        // Create missing folders one by one.
        let mut folder = VPath::root();
        for part in &p.parts()[..p.parts().len() - 1] {
            folder = VPath::resolve(&folder, part)?;
            self.ensure_folder(&stored_name(&home, &folder))?;
        }
        let target = stored_name(&home, p);
        match self.storage.stat(&target) {
            Ok(_) => return Err(VaultError::AlreadyExists),
            Err(StorageError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let nonce = crate::random_hex(8).map_err(|_| VaultError::Io(io::Error::other("RNG")))?;
        let record_key: std::sync::Arc<dyn crate::storage::RecordKey> =
            std::sync::Arc::new(super::RecordMac::new(key.data_key()));
        let mut staged = self.storage.stage(
            &format!(
                "{STAGING}/{}-import-{nonce}.part",
                staging_prefix(key.user())
            ),
            &record_key,
        )?;
        let result = (|| {
            let mut writer = EncryptingWriter::new(staged.sink(0)?, key.data_key())?;
            // Imported files pass the same scan as uploads.
            let scanner = self.scanner.current();
            let mut job = scanner
                .as_ref()
                .map(|s| s.begin(key.user(), &p.to_string()));
            let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(VaultError::Io(e)),
                };
                writer.write_all(&buf[..n]).map_err(map_io)?;
                if let Some(job) = job.as_mut() {
                    job.feed(&buf[..n]);
                }
                progress(n as u64);
            }
            let len = writer.plaintext_len();
            staged.finish(writer.finish()?)?;
            if let (Some(job), Some(scanner)) = (job, &scanner) {
                match job.finish() {
                    Verdict::Clean => {}
                    Verdict::Rejected { finding } => {
                        return Err(VaultError::Rejected { finding, size: len })
                    }
                    Verdict::Failed { reason } => match scanner.on_error() {
                        OnError::Accept => tracing::warn!(event = "scan_failed",
                            user = key.user(), path = %p, error = %reason,
                            "no scan verdict; importing anyway (scan.on_error = accept)"),
                        OnError::Reject => return Err(VaultError::ScanFailed { reason }),
                    },
                }
            }
            // Fails if the name was taken meanwhile: never replaces.
            staged.commit(&target, Commit::NoReplace)?;
            Ok(len)
        })();
        if result.is_err() {
            let _ = staged.discard();
        }
        result
    }

    /// Every upload in quarantine, oldest first.
    pub fn quarantine_list(&self) -> Result<Vec<Quarantined>, VaultError> {
        let mut out = Vec::new();
        let mut lister = match self.storage.list(QUARANTINE) {
            Ok(l) => l,
            Err(StorageError::NotFound) => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        loop {
            let batch = lister.next_batch(1024)?;
            if batch.is_empty() {
                break;
            }
            for listed in batch {
                let Some(id) = listed.name.strip_suffix(".json") else {
                    continue;
                };
                match self.quarantined(id) {
                    Ok(q) => out.push(q),
                    Err(e) => tracing::warn!(id, error = %e, "unreadable quarantine entry"),
                }
            }
        }
        out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok(out)
    }

    fn quarantined(&self, id: &str) -> Result<Quarantined, VaultError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(VaultError::InvalidPath("not a quarantine id"));
        }
        let text = self
            .storage
            .read_small(&format!("{QUARANTINE}/{id}.json"), MAX_RECORD)?;
        let q: Quarantined = serde_json::from_slice(&text)
            .map_err(|e| VaultError::Io(io::Error::new(ErrorKind::InvalidData, e)))?;
        if q.id != id {
            return Err(VaultError::Io(io::Error::new(
                ErrorKind::InvalidData,
                "quarantine entry names another id",
            )));
        }
        Ok(q)
    }

    /// Puts a quarantined upload into its user's vault, at `dest` or where
    /// it was going; never over an existing file. Returns where it went.
    pub fn quarantine_release(
        &self,
        id: &str,
        dest: Option<&VPath>,
    ) -> Result<(String, VPath), VaultError> {
        let q = self.quarantined(id)?;
        let path = match dest {
            Some(p) => p.clone(),
            None => VPath::resolve(&VPath::root(), &q.path)?,
        };
        if path.is_root() {
            return Err(VaultError::IsADirectory);
        }
        let home = self.home(&q.user)?;
        let parent_is_dir = self
            .storage
            .stat(&stored_name(&home, &path.parent()))
            .is_ok_and(|m| m.kind == Kind::Dir);
        if !parent_is_dir {
            return Err(VaultError::NotFound);
        }
        // Nothing is replaced: the rename fails if the name is taken.
        self.storage.rename(
            &format!("{QUARANTINE}/{id}.sealed"),
            &stored_name(&home, &path),
            Commit::NoReplace,
        )?;
        self.storage.remove(&format!("{QUARANTINE}/{id}.json"))?;
        Ok((q.user, path))
    }

    /// Deletes a quarantined upload.
    pub fn quarantine_delete(&self, id: &str) -> Result<Quarantined, VaultError> {
        let q = self.quarantined(id)?;
        match self.storage.remove(&format!("{QUARANTINE}/{id}.sealed")) {
            Ok(()) | Err(StorageError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.storage.remove(&format!("{QUARANTINE}/{id}.json"))?;
        Ok(q)
    }

    /// Removes all of `user`'s files: their folder, their uploads in
    /// progress and in quarantine. Returns how many files were removed.
    pub fn remove_user_files(&self, user: &str) -> Result<u64, VaultError> {
        let home = self.home(user)?;
        let mut removed = 0u64;
        let prefix = staging_prefix(user);
        for dir in [STAGING, QUARANTINE] {
            let names = self.storage.remove_prefixed(&format!("{dir}/{prefix}-"))?;
            removed += names.iter().filter(|n| !n.ends_with(".json")).count() as u64;
        }
        removed += self.storage.remove_tree(&home)?;
        Ok(removed)
    }
}
