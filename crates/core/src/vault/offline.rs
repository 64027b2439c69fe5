//! What operators' commands do to stored files while no session is
//! involved: find a user's files, read one, check them, seal files in from
//! outside (import), and remove all of a user's files (shredding). All of
//! it blocking.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use dropvault_format::{DecryptingReader, EncryptingWriter};

use super::{
    map_io, open_nofollow, real_path, staging_prefix, sync_parent, VPath, Vault, VaultError, CHUNK,
};
use crate::keys::UserKey;
use crate::scan::{OnError, Verdict};

/// One stored file of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Its path as the user sees it.
    pub path: VPath,
    /// Where it is on disk.
    pub disk: PathBuf,
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
    /// Where it is on disk.
    pub disk: PathBuf,
    /// What it is.
    pub what: &'static str,
}

impl Vault {
    /// Users with a folder in the storage root.
    pub fn user_folders(&self) -> Result<Vec<String>, VaultError> {
        let mut users = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(users),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.') && entry.file_type()?.is_dir() {
                users.push(name);
            }
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
        match fs::symlink_metadata(&home) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(VaultError::NotADirectory),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((files, odd)),
            Err(e) => return Err(e.into()),
        }
        let mut stack = vec![(home, VPath::root())];
        while let Some((dir, vdir)) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let disk = entry.path();
                let meta = entry.metadata()?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    odd.push(Oddity {
                        disk,
                        what: "name is not UTF-8",
                    });
                    continue;
                };
                let Ok(vpath) = VPath::resolve(&vdir, &name) else {
                    odd.push(Oddity {
                        disk,
                        what: "name no client can use",
                    });
                    continue;
                };
                if meta.is_dir() {
                    stack.push((disk, vpath));
                } else if meta.is_file() {
                    files.push(StoredFile {
                        path: vpath,
                        disk,
                        stored_len: meta.len(),
                    });
                } else if meta.file_type().is_symlink() {
                    odd.push(Oddity {
                        disk,
                        what: "symbolic link",
                    });
                } else {
                    odd.push(Oddity {
                        disk,
                        what: "special file",
                    });
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
    ) -> Result<DecryptingReader<fs::File>, VaultError> {
        let real = real_path(&self.home(key.user())?, p)?;
        let file = open_nofollow(&real).map_err(map_io)?;
        if file.metadata()?.is_dir() {
            return Err(VaultError::IsADirectory);
        }
        Ok(DecryptingReader::new(file, key.data_key())?)
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)?;
        // Create missing folders one by one, never through a link.
        let mut folder = VPath::root();
        for part in &p.parts()[..p.parts().len() - 1] {
            folder = VPath::resolve(&folder, part)?;
            let real = real_path(&home, &folder)?;
            match fs::DirBuilder::new().mode(0o700).create(&real) {
                Ok(()) => sync_parent(&real)?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(map_io(e)),
            }
            if !fs::symlink_metadata(&real)?.is_dir() {
                return Err(VaultError::NotADirectory);
            }
        }
        let target = real_path(&home, p)?;
        if fs::symlink_metadata(&target).is_ok() {
            return Err(VaultError::AlreadyExists);
        }
        let nonce = crate::random_hex(8).map_err(|_| VaultError::Io(io::Error::other("RNG")))?;
        let tmp = self.staging.join(format!(
            "{}-import-{nonce}.part",
            staging_prefix(key.user())
        ));
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut writer = EncryptingWriter::new(file, key.data_key())?;
            // Imported files pass the same scan as uploads.
            let mut job = self
                .scanner
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
            let file = writer.finish()?;
            file.sync_all()?;
            if let (Some(job), Some(scanner)) = (job, &self.scanner) {
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
            crate::fsutil::rename_noreplace(&tmp, &target).map_err(map_io)?;
            Ok(len)
        })();
        let _ = fs::remove_file(&tmp);
        let len = result?;
        sync_parent(&target)?;
        Ok(len)
    }

    /// Every upload in quarantine, oldest first.
    pub fn quarantine_list(&self) -> Result<Vec<Quarantined>, VaultError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.quarantine) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            match self.quarantined(id) {
                Ok(q) => out.push(q),
                Err(e) => tracing::warn!(id, error = %e, "unreadable quarantine entry"),
            }
        }
        out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok(out)
    }

    fn quarantined(&self, id: &str) -> Result<Quarantined, VaultError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(VaultError::InvalidPath("not a quarantine id"));
        }
        let file = open_nofollow(&self.quarantine.join(format!("{id}.json"))).map_err(map_io)?;
        let mut text = String::new();
        file.take(64 * 1024).read_to_string(&mut text)?;
        let q: Quarantined = serde_json::from_str(&text)
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
        let target = real_path(&home, &path)?;
        let parent_is_dir = target
            .parent()
            .and_then(|p| fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_dir());
        if !parent_is_dir {
            return Err(VaultError::NotFound);
        }
        let sealed = self.quarantine.join(format!("{id}.sealed"));
        // Nothing is replaced: the rename fails if the name is taken.
        crate::fsutil::rename_noreplace(&sealed, &target).map_err(map_io)?;
        sync_parent(&target)?;
        fs::remove_file(self.quarantine.join(format!("{id}.json")))?;
        crate::fsutil::sync_dir(&self.quarantine)?;
        Ok((q.user, path))
    }

    /// Deletes a quarantined upload.
    pub fn quarantine_delete(&self, id: &str) -> Result<Quarantined, VaultError> {
        let q = self.quarantined(id)?;
        match fs::remove_file(self.quarantine.join(format!("{id}.sealed"))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        fs::remove_file(self.quarantine.join(format!("{id}.json")))?;
        crate::fsutil::sync_dir(&self.quarantine)?;
        Ok(q)
    }

    /// Removes all of `user`'s files: their folder, their uploads in
    /// progress and in quarantine. Returns how many files were removed.
    pub fn remove_user_files(&self, user: &str) -> Result<u64, VaultError> {
        let home = self.home(user)?;
        let mut removed = 0u64;
        let prefix = format!("{}-", staging_prefix(user));
        for dir in [&self.staging, &self.quarantine] {
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix) {
                    fs::remove_file(entry.path())?;
                    removed += u64::from(!name.ends_with(".json"));
                }
            }
        }
        match fs::symlink_metadata(&home) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::remove_file(&home)?;
            }
            Ok(_) => {
                removed += count_files(&home)?;
                fs::remove_dir_all(&home)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        crate::fsutil::sync_dir(&self.root)?;
        crate::fsutil::sync_dir(&self.staging)?;
        crate::fsutil::sync_dir(&self.quarantine)?;
        Ok(removed)
    }
}

fn count_files(dir: &std::path::Path) -> io::Result<u64> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let t = entry.file_type()?;
        n += if t.is_dir() {
            count_files(&entry.path())?
        } else {
            1
        };
    }
    Ok(n)
}
