//! Operator commands around keys and stored files: key status and
//! rotation, recovery key generation, offline decryption, verification,
//! import of plaintext trees, and shredding a user.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dropvault_core::keys::{
    KeyError, KeyFileStore, KeyStore, Keyring, MissingKek, RecoveryKey, RecoveryPrivateKey, UserKey,
};
use dropvault_core::vault::{VPath, Vault, VaultError};

use crate::config::{Config, StorageBackend};
use crate::progress::{human, Progress};
use crate::{println_safe, AnyError};

/// The vault of the configuration: on the local folder (created, with
/// `create`, if missing; else as it is) or in the S3 bucket.
pub(crate) fn vault(config: &Config, create: bool) -> Result<Vault, AnyError> {
    let vault = match config.storage.backend {
        StorageBackend::S3 => {
            Vault::with_storage(Arc::new(s3_storage(config)?), config.data_dir.clone())?
        }
        StorageBackend::Local if create => Vault::create(config.path(&config.storage.root))?,
        StorageBackend::Local => Vault::open(config.path(&config.storage.root)),
    };
    Ok(vault.with_quota(config.quota()?, config.max_listing_entries()?))
}

/// The S3 client of `[storage.s3]`.
pub(crate) fn s3_client(config: &Config) -> Result<dropvault_core::s3::S3Client, AnyError> {
    let settings = config.s3_settings(|name| std::env::var(name).ok())?;
    Ok(dropvault_core::s3::S3Client::new(settings)?)
}

fn s3_storage(config: &Config) -> Result<dropvault_core::storage::S3Storage, AnyError> {
    Ok(dropvault_core::storage::S3Storage::new(
        s3_client(config)?,
        dropvault_core::storage::S3Tuning {
            part_size: config.s3_part_size(),
            ..Default::default()
        },
    ))
}

/// The key-file store of the configuration.
pub(crate) fn key_store(config: &Config) -> Result<Arc<dyn KeyStore>, AnyError> {
    Ok(match config.storage.backend {
        // In the bucket, so that every node finds every user's keys.
        StorageBackend::S3 => Arc::new(dropvault_core::keys::S3KeyStore::new(s3_client(config)?)),
        StorageBackend::Local => {
            Arc::new(KeyFileStore::open(config.path(&config.storage.keys_dir))?)
        }
    })
}

/// The keyring: provider, key files, and the recovery key if configured.
pub(crate) fn keyring(config: &Config, kek: MissingKek) -> Result<Keyring, AnyError> {
    let recovery = if config.kms.recovery_public_key.is_empty() {
        None
    } else {
        Some(RecoveryKey::open(
            &config.path(&config.kms.recovery_public_key),
        )?)
    };
    let provider = dropvault_core::keys::from_config(&config.kms, &config.data_dir, kek)?;
    Ok(Keyring::new(provider, key_store(config)?).with_recovery(recovery))
}

/// Where users' keys come from for an offline command: the live provider,
/// or the recovery key's private half.
pub(crate) enum KeySource {
    Provider(Keyring),
    Recovery(Arc<dyn KeyStore>, RecoveryPrivateKey),
}

impl KeySource {
    pub(crate) fn new(config: &Config, recovery_key: Option<&Path>) -> Result<Self, AnyError> {
        Ok(match recovery_key {
            Some(path) => KeySource::Recovery(key_store(config)?, RecoveryPrivateKey::open(path)?),
            None => KeySource::Provider(keyring(config, MissingKek::Refuse)?),
        })
    }

    /// `user`'s existing data keys.
    pub(crate) fn user_key(&self, user: &str) -> Result<UserKey, KeyError> {
        match self {
            KeySource::Provider(keyring) => keyring.open_existing(user),
            KeySource::Recovery(store, private) => {
                let keys = store
                    .load_all(user)?
                    .iter()
                    .map(|kf| private.unwrap_file(kf))
                    .collect::<Result<Vec<_>, _>>()?;
                UserKey::with_keys(user, keys)
            }
        }
    }
}

/// `dropvault keys status`.
pub(crate) fn keys_status(config: &Config) -> Result<bool, AnyError> {
    let keyring = keyring(config, MissingKek::Refuse)?;
    let provider = keyring.provider();
    println_safe(&format!("provider: {}", provider.kind()));
    let status = provider.status();
    let ok = match &status {
        Ok(s) => {
            println_safe(&format!("key: {} ({})", s.key_name, s.key_type));
            for (name, value) in &s.details {
                println_safe(&format!("{name}: {value}"));
            }
            println_safe(&format!(
                "latest version: {}; new wraps use version {}; oldest decryptable version: {}",
                s.latest_version, s.current_version, s.min_decryption_version
            ));
            true
        }
        Err(e) => {
            println_safe(&format!("key: {} (key service: {e})", provider.key_name()));
            false
        }
    };
    let recovery_name = keyring.recovery().map(|rk| rk.name().to_owned());
    println_safe(&format!(
        "recovery key: {}",
        recovery_name.as_deref().unwrap_or("none")
    ));
    let files = keyring.store().list()?;
    let mut by_version: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let (mut with_recovery, mut unreadable) = (0usize, 0usize);
    let mut per_user: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, parsed) in &files {
        match parsed {
            Ok(kf) => {
                *per_user.entry(kf.user.as_str()).or_default() += 1;
                *by_version
                    .entry((format!("{}:{}", kf.provider, kf.key_name), kf.key_version))
                    .or_default() += 1;
                if kf
                    .recovery
                    .as_ref()
                    .is_some_and(|r| Some(&r.key_name) == recovery_name.as_ref())
                {
                    with_recovery += 1;
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    println_safe(&format!("key files: {}", files.len()));
    for ((kek, version), n) in &by_version {
        println_safe(&format!("  {kek} version {version}: {n}"));
    }
    if recovery_name.is_some() {
        println_safe(&format!("  with a recovery wrap: {with_recovery}"));
    }
    // Two nodes racing a user's first login leave two keys; both stay (files
    // may be sealed under either), which is worth knowing, not fixing.
    let several = per_user.values().filter(|&&n| n > 1).count();
    if several > 0 {
        println_safe(&format!(
            "  users with several key files: {several} (of {})",
            per_user.len()
        ));
    }
    if unreadable > 0 {
        println_safe(&format!("  unreadable: {unreadable}"));
    }
    if let Ok(s) = &status {
        let behind = by_version
            .iter()
            .filter(|((_, v), _)| *v < s.current_version)
            .map(|(_, n)| n)
            .sum::<usize>();
        if behind > 0 {
            println_safe(&format!(
                "{behind} key file(s) behind version {}: run `dropvault keys rotate`",
                s.current_version
            ));
        }
    }
    Ok(ok && unreadable == 0)
}

/// `dropvault keys rotate`.
pub(crate) fn keys_rotate(config: &Config) -> Result<bool, AnyError> {
    let report = keyring(config, MissingKek::Refuse)?.rotate()?;
    for (path, reason) in &report.failed {
        println_safe(&format!("FAILED {path}: {reason}"));
    }
    println_safe(&format!(
        "{} key files: {} re-wrapped to version {}, {} given a recovery wrap, {} already \
         current, {} failed",
        report.files,
        report.rewrapped,
        report.version,
        report.recovery_added,
        report.unchanged,
        report.failed.len()
    ));
    Ok(report.failed.is_empty())
}

/// `dropvault keys recovery-keygen`.
pub(crate) fn recovery_keygen(private: &Path, public: &Path, bits: u32) -> Result<(), AnyError> {
    let size = match bits {
        3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
        4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
        _ => return Err("--bits must be 3072 or 4096".into()),
    };
    let (private_pem, public_pem) = dropvault_core::keys::generate_rsa_pair(size)?;
    write_new(private, private_pem.as_bytes(), 0o600)?;
    write_new(public, public_pem.as_bytes(), 0o644)?;
    println_safe(&format!(
        "recovery key pair written: private {} (keep it offline), public {} (set \
         kms.recovery_public_key to it)",
        private.display(),
        public.display()
    ));
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), AnyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// `dropvault decrypt`.
pub(crate) fn decrypt(
    config: &Config,
    user: &str,
    path: &str,
    out: &Path,
    recovery_key: Option<&Path>,
    force: bool,
) -> Result<(), AnyError> {
    let vault = vault(config, false)?;
    let key = KeySource::new(config, recovery_key)?.user_key(user)?;
    let vpath = VPath::resolve(&VPath::root(), path)?;
    let mut reader = vault
        .open_stored(&key, &vpath)
        .map_err(|e| format!("{user}:{vpath}: {e}"))?;
    if out == Path::new("-") {
        let mut stdout = io::stdout().lock();
        io::copy(&mut reader, &mut stdout).map_err(|e| format!("{user}:{vpath}: {e}"))?;
        stdout.flush()?;
        return Ok(());
    }
    if !force && fs::symlink_metadata(out).is_ok() {
        return Err(format!("{} exists (--force replaces it)", out.display()).into());
    }
    // Written next to the output and renamed when complete, so a damaged
    // file never leaves a partial plaintext under the name asked for.
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .ok_or("output names no file")?
        .to_string_lossy();
    let nonce = dropvault_core::random_hex(6).map_err(|_| "random number generator failed")?;
    let tmp = dir.join(format!(".{name}.{nonce}.partial"));
    let result = (|| -> Result<u64, AnyError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let n = io::copy(&mut reader, &mut f).map_err(|e| format!("{user}:{vpath}: {e}"))?;
        f.sync_all()?;
        fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let n = result?;
    println_safe(&format!("{user}:{vpath} -> {} ({n} bytes)", out.display()));
    Ok(())
}

/// `dropvault verify`: returns whether every file passed.
pub(crate) fn verify(
    config: &Config,
    only: Option<&str>,
    recovery_key: Option<&Path>,
) -> Result<bool, AnyError> {
    let vault = vault(config, false)?;
    let keys = KeySource::new(config, recovery_key)?;
    let users: Vec<String> = match only {
        Some(u) => vec![u.to_owned()],
        None => {
            let mut users = vault.user_folders()?;
            let store = key_store(config)?;
            for (_, kf) in store.list()? {
                if let Ok(kf) = kf {
                    if !users.contains(&kf.user) {
                        users.push(kf.user);
                    }
                }
            }
            users.sort();
            users
        }
    };
    // First the list (for the bar's total), then the reading.
    let mut plan = Vec::new();
    let (mut total_files, mut total_bytes) = (0u64, 0u64);
    for user in &users {
        let (files, odd) = vault.walk_user(user)?;
        total_files += files.len() as u64;
        total_bytes += files
            .iter()
            .map(|f| dropvault_format::plaintext_len(f.stored_len).unwrap_or(0))
            .sum::<u64>();
        plan.push((user, files, odd));
    }
    let mut bar = Progress::new("verify", total_files, total_bytes);
    let (mut ok, mut failed) = (0u64, 0u64);
    for (user, files, odd) in plan {
        for o in odd {
            failed += 1;
            bar.line(&format!("FAILED {user}: {}: {}", o.stored, o.what));
        }
        if files.is_empty() {
            continue;
        }
        let key = match keys.user_key(user) {
            Ok(k) => k,
            Err(e) => {
                for f in &files {
                    failed += 1;
                    bar.file_done();
                    bar.line(&format!("FAILED {user}:{}: no key: {e}", f.path));
                }
                continue;
            }
        };
        for f in &files {
            match vault.check_stored(&key, &f.path, |n| bar.bytes(n)) {
                Ok(_) => {
                    ok += 1;
                    if !bar.is_bar() {
                        bar.line(&format!("ok {user}:{}", f.path));
                    }
                }
                Err(e) => {
                    failed += 1;
                    bar.line(&format!("FAILED {user}:{}: {}", f.path, describe(&e)));
                }
            }
            bar.file_done();
        }
    }
    bar.finish();
    println_safe(&format!(
        "verified {} files ({}): {ok} ok, {failed} failed",
        ok + failed,
        human(total_bytes)
    ));
    Ok(failed == 0)
}

fn describe(e: &VaultError) -> String {
    match e {
        VaultError::Format(f) => f.to_string(),
        other => other.to_string(),
    }
}

/// `dropvault import`: returns whether every file was imported.
pub(crate) fn import(
    config: &Config,
    user: &str,
    src: &Path,
    dest: &str,
) -> Result<bool, AnyError> {
    let dest = VPath::resolve(&VPath::root(), dest)?;
    let meta = fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a folder", src.display()).into());
    }
    let scanner = dropvault_core::scan::Scanner::new(config.scan_settings()?)?.map(Arc::new);
    let vault = vault(config, true)?.with_scanner(scanner);
    let keyring = keyring(config, MissingKek::Create)?;
    let key = keyring.unlock(user)?;
    // The plan first: what to import, what to skip and why.
    let mut todo: Vec<(PathBuf, VPath, u64)> = Vec::new();
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    let mut stack = vec![(src.to_owned(), dest.clone())];
    while let Some((dir, vdir)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                skipped.push((dir, format!("cannot read folder: {e}")));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push((dir.clone(), format!("cannot read folder: {e}")));
                    continue;
                }
            };
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    skipped.push((path, format!("cannot stat: {e}")));
                    continue;
                }
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skipped.push((path, "name is not UTF-8".into()));
                continue;
            };
            let vpath = match VPath::resolve(&vdir, &name) {
                Ok(v) if v.name() == Some(name.as_str()) => v,
                Ok(_) => {
                    skipped.push((path, "name cannot be used in the vault".into()));
                    continue;
                }
                Err(e) => {
                    skipped.push((path, format!("name cannot be used in the vault: {e}")));
                    continue;
                }
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                skipped.push((path, "symbolic link (not followed)".into()));
            } else if kind.is_dir() {
                stack.push((path, vpath));
            } else if kind.is_file() {
                todo.push((path, vpath, meta.size()));
            } else {
                skipped.push((path, "special file (device, FIFO or socket)".into()));
            }
        }
    }
    todo.sort_by(|a, b| a.0.cmp(&b.0));
    let total_bytes = todo.iter().map(|t| t.2).sum();
    let mut bar = Progress::new("import", todo.len() as u64, total_bytes);
    for (path, reason) in &skipped {
        bar.line(&format!("skipped {}: {reason}", path.display()));
    }
    let (mut imported, mut imported_bytes) = (0u64, 0u64);
    for (path, vpath, _) in &todo {
        let result = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|mut f| {
                vault
                    .import(&key, vpath, &mut f, |n| bar.bytes(n))
                    .map_err(|e| match e {
                        VaultError::AlreadyExists => "already in the vault".to_owned(),
                        VaultError::Rejected { finding, .. } => {
                            format!("rejected by the malware scan: {finding}")
                        }
                        VaultError::ScanFailed { reason } => {
                            format!("no malware scan verdict: {reason}")
                        }
                        other => other.to_string(),
                    })
            });
        bar.file_done();
        match result {
            Ok(n) => {
                imported += 1;
                imported_bytes += n;
                if !bar.is_bar() {
                    bar.line(&format!("imported {} -> {user}:{vpath}", path.display()));
                }
            }
            Err(reason) => {
                bar.line(&format!("skipped {}: {reason}", path.display()));
                skipped.push((path.clone(), reason));
            }
        }
    }
    bar.finish();
    println_safe(&format!(
        "imported {imported} files ({}) for {user} into {dest}; skipped {}",
        human(imported_bytes),
        skipped.len()
    ));
    Ok(skipped.is_empty())
}

/// Destroys `user`'s key file, then their files. Returns how many files
/// were removed and whether there was a key file.
pub(crate) fn shred(config: &Config, user: &str) -> Result<(bool, u64), AnyError> {
    // The key first: once it is gone nothing is recoverable, even if what
    // follows is interrupted.
    let had_key = key_store(config)?.destroy(user)?;
    let vault = vault(config, false)?;
    // No link may make them a new key and fill a new vault.
    let links = dropvault_core::links::Links::new(vault.storage().clone());
    for link in links.list()?.iter().filter(|l| l.user == user) {
        links.revoke(&link.id)?;
    }
    let removed = vault.remove_user_files(user)?;
    Ok((had_key, removed))
}
