//! Sealed files as objects in an S3 bucket, shared by any number of
//! dropvault nodes.
//!
//! Layout (every key under the configured prefix):
//! - `<user>/<path>`: a committed sealed file; its modification time in the
//!   `mtime` metadata (Unix seconds; `Last-Modified` where missing).
//! - `<folder>/`: an empty marker object, so an empty folder exists; a
//!   folder also exists while anything is under its prefix.
//! - `.staging/<name>`: the record of an upload in progress (below);
//!   `.staging/<name>.sealed`: its multipart upload, then, once complete,
//!   the whole sealed file until it is copied under its final name.
//! - `.quarantine/…`: rejected uploads and their descriptions.
//!
//! An upload streams as a multipart upload whose parts are whole sealed
//! segments (the first also holds the header), several parts in flight at
//! once; nothing appears under the final name until the complete file is
//! copied there (a server-side copy), after the scan. The record names the
//! multipart upload, its parts, the file header, and the parts that may be
//! on their way; it is authenticated with the user's [`RecordKey`], which
//! this backend never sees the secret of. Any node can continue an
//! interrupted upload from it, at the end of its last stored part. A part
//! is listed as possibly on its way before its first byte is sent: a part
//! that may have reached the bucket partly makes the upload impossible to
//! continue under its salt (its segments' nonces may be spent), and it
//! starts over instead — never does a nonce seal two different segments
//! that the bucket could see.
//!
//! Staging names are held per process: two sessions of one node cannot
//! write one upload at once; sessions on two nodes can (the later one
//! takes the upload over, and the earlier one's parts fail).

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use dropvault_format::{HEADER_LEN, SEALED_SEGMENT_LEN};
use serde::{Deserialize, Serialize};

use super::{
    Caps, Commit, Kind, Listed, Lister, Meta, Object, RecordKey, Result, Sink, Staged, Storage,
    StorageError,
};
use crate::s3::{S3Client, S3Error};

/// Smallest part S3 accepts (but for the last).
const MIN_PART: u64 = 5 << 20;
/// Largest object one CopyObject copies; larger ones are copied in parts.
const MAX_COPY: u64 = 5 << 30;
/// Part size of a multipart copy.
const COPY_PART: u64 = 1 << 30;
/// Largest record read.
const MAX_RECORD: usize = 1 << 20;
/// Most parts a multipart upload may have (S3's limit).
const MAX_PARTS: u32 = 10_000;
/// Objects removed or copied per listing page.
const PAGE: u32 = 1000;
/// Metadata: modification time, Unix seconds.
const MTIME: &str = "mtime";
/// Metadata of a record: the sealed bytes an upload can continue after.
const STAGED_LEN: &str = "staged-len";
/// Suffix of a staged upload's data object.
const SEALED: &str = ".sealed";

/// Settings beyond the client's.
#[derive(Clone, Copy, Debug)]
pub struct S3Tuning {
    /// Bytes per part, rounded to whole sealed segments (at least 5 MiB).
    pub part_size: u64,
    /// Parts one upload sends at once.
    pub parts_in_flight: usize,
}

impl Default for S3Tuning {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            parts_in_flight: 2,
        }
    }
}

/// A bucket (and prefix) holding everything; see the module.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: S3Client,
    /// Sealed segments per part.
    segments_per_part: u64,
    in_flight: usize,
    /// Staging names held by this process.
    held: Arc<Mutex<HashSet<String>>>,
}

fn map_err(e: S3Error) -> StorageError {
    match e {
        S3Error::NotFound => StorageError::NotFound,
        S3Error::Unreachable { reason } => StorageError::Unavailable(reason),
        S3Error::Denied => StorageError::Unavailable("the bucket refused access (403)".into()),
        other => StorageError::Io(io::Error::other(other.to_string())),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The modification time an object's metadata gives, else `fallback`.
fn mtime(meta: &BTreeMap<String, String>, fallback: SystemTime) -> SystemTime {
    meta.get(MTIME)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(fallback, |s| UNIX_EPOCH + Duration::from_secs(s))
}

fn file(len: u64, modified: SystemTime) -> Meta {
    Meta {
        kind: Kind::File,
        len,
        modified,
    }
}

fn dir(modified: SystemTime) -> Meta {
    Meta {
        kind: Kind::Dir,
        len: 0,
        modified,
    }
}

/// The listing prefix of folder `name`.
fn prefix_of(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name}/")
    }
}

/// The parent folder of `name` (`""` for the root's children).
fn parent(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(p, _)| p)
}

impl S3Storage {
    /// The storage in the bucket `client` reaches.
    pub fn new(client: S3Client, tuning: S3Tuning) -> Self {
        let seg = SEALED_SEGMENT_LEN as u64;
        let segments_per_part = (tuning.part_size.max(MIN_PART)).div_ceil(seg);
        Self {
            client,
            segments_per_part,
            in_flight: tuning.parts_in_flight.clamp(1, 16),
            held: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Sealed bytes of every part but the first (which also holds the
    /// header) and the last.
    fn part_len(&self) -> u64 {
        self.segments_per_part * SEALED_SEGMENT_LEN as u64
    }

    /// Whether anything is under folder `name`'s prefix, or its marker.
    fn is_dir(&self, name: &str) -> Result<Option<Meta>> {
        if name.is_empty() {
            return Ok(Some(dir(UNIX_EPOCH)));
        }
        let prefix = prefix_of(name);
        if let Some(m) = self.client.head(&prefix).map_err(map_err)? {
            return Ok(Some(dir(mtime(&m.metadata, m.modified))));
        }
        let page = self.client.list(&prefix, None, None, 1).map_err(map_err)?;
        Ok((!page.objects.is_empty()).then(|| dir(UNIX_EPOCH)))
    }

    /// Fails unless the folder `name` is in is there.
    fn parent_exists(&self, name: &str) -> Result<()> {
        match self.is_dir(parent(name))? {
            Some(_) => Ok(()),
            None => Err(StorageError::NotFound),
        }
    }

    /// Copies object `from` to `to` (in parts when too large for one
    /// copy), with `meta` replacing its metadata.
    fn copy(&self, from: &str, to: &str, len: u64, meta: &[(&str, &str)]) -> Result<()> {
        if len <= MAX_COPY {
            return self.client.copy(from, to, Some(meta)).map_err(map_err);
        }
        let id = self.client.create_multipart(to, meta).map_err(map_err)?;
        let copied = (|| {
            let mut parts = Vec::new();
            let (mut at, mut number) = (0u64, 1u32);
            while at < len {
                let end = (at + COPY_PART).min(len);
                let etag = self
                    .client
                    .upload_part_copy(to, &id, number, from, at..end)
                    .map_err(map_err)?;
                parts.push((number, etag));
                at = end;
                number += 1;
            }
            self.client
                .complete_multipart(to, &id, &parts)
                .map_err(map_err)
        })();
        if copied.is_err() {
            let _ = self.client.abort_multipart(to, &id);
        }
        copied
    }

    /// Every object under `prefix` (no delimiter), a page at a time, its
    /// key relative to `prefix`.
    fn each_object(
        &self,
        prefix: &str,
        mut f: impl FnMut(&crate::s3::Listed) -> Result<()>,
    ) -> Result<()> {
        let mut after = None;
        loop {
            let page = self
                .client
                .list(prefix, None, after.as_deref(), PAGE)
                .map_err(map_err)?;
            for mut o in page.objects {
                o.key = o.key.strip_prefix(prefix).unwrap_or(&o.key).to_owned();
                f(&o)?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Removes the staged upload recorded at `name` (its multipart upload,
    /// its data object, the record), trusting the record only for the
    /// upload id to abort.
    fn remove_staged_upload(&self, name: &str) -> Result<()> {
        if let Ok(Some(bytes)) = self.client.get_small(name, MAX_RECORD) {
            if let Some(body) = Record::body_unverified(&bytes) {
                let _ = self
                    .client
                    .abort_multipart(&format!("{name}{SEALED}"), &body.upload);
            }
        }
        self.client
            .delete(&format!("{name}{SEALED}"))
            .map_err(map_err)?;
        self.client.delete(name).map_err(map_err)
    }
}

impl Storage for S3Storage {
    fn caps(&self) -> Caps {
        Caps {
            staged_readable: false,
            // Reads of 4 MiB (ReadFile::span), two ahead.
            read_ahead: 2,
            whole_chunk_reads: true,
        }
    }

    fn stat(&self, name: &str) -> Result<Meta> {
        if name.is_empty() {
            return Ok(dir(UNIX_EPOCH));
        }
        if let Some(m) = self.client.head(name).map_err(map_err)? {
            // A record reports the sealed bytes its upload can continue
            // after.
            let len = match m.metadata.get(STAGED_LEN) {
                Some(l) => l.parse().unwrap_or(0),
                None => m.len,
            };
            return Ok(file(len, mtime(&m.metadata, m.modified)));
        }
        self.is_dir(name)?.ok_or(StorageError::NotFound)
    }

    fn list(&self, name: &str) -> Result<Box<dyn Lister>> {
        if self.is_dir(name)?.is_none() {
            return Err(match self.client.head(name).map_err(map_err)? {
                Some(_) => StorageError::NotADirectory,
                None => StorageError::NotFound,
            });
        }
        Ok(Box::new(S3Lister {
            client: self.client.clone(),
            prefix: prefix_of(name),
            after: None,
            done: false,
            pending: Vec::new(),
        }))
    }

    fn open(&self, name: &str) -> Result<Box<dyn Object>> {
        match self.client.head(name).map_err(map_err)? {
            Some(m) => Ok(Box::new(S3Object {
                client: self.client.clone(),
                name: name.to_owned(),
                len: m.len,
            })),
            None if self.is_dir(name)?.is_some() => Err(StorageError::IsADirectory),
            None => Err(StorageError::NotFound),
        }
    }

    fn stage(&self, name: &str, key: &Arc<dyn RecordKey>) -> Result<Box<dyn Staged>> {
        if !lock(&self.held).insert(name.to_owned()) {
            return Err(StorageError::Busy);
        }
        let staged = S3Staged {
            storage: self.clone(),
            name: name.to_owned(),
            shared: Arc::new(Shared {
                client: self.client.clone(),
                name: name.to_owned(),
                key: key.clone(),
                state: Mutex::new(State::default()),
                record: Mutex::new(()),
            }),
            finished: None,
        };
        // Dropped on failure, which lets the name go.
        staged.take_over()?;
        Ok(Box::new(staged))
    }

    fn remove(&self, name: &str) -> Result<()> {
        if self.client.head(name).map_err(map_err)?.is_none() {
            return Err(match self.is_dir(name)? {
                Some(_) => StorageError::IsADirectory,
                None => StorageError::NotFound,
            });
        }
        self.client.delete(name).map_err(map_err)
    }

    fn mkdir(&self, name: &str) -> Result<()> {
        if self.client.head(name).map_err(map_err)?.is_some() || self.is_dir(name)?.is_some() {
            return Err(StorageError::AlreadyExists);
        }
        self.parent_exists(name)?;
        let now = unix(SystemTime::now()).to_string();
        self.client
            .put(&prefix_of(name), b"", &[(MTIME, &now)])
            .map(drop)
            .map_err(map_err)
    }

    fn rmdir(&self, name: &str) -> Result<()> {
        if self.is_dir(name)?.is_none() {
            return Err(match self.client.head(name).map_err(map_err)? {
                Some(_) => StorageError::NotADirectory,
                None => StorageError::NotFound,
            });
        }
        let prefix = prefix_of(name);
        let page = self.client.list(&prefix, None, None, 2).map_err(map_err)?;
        if page.objects.iter().any(|o| o.key != prefix) {
            return Err(StorageError::NotEmpty);
        }
        self.client.delete(&prefix).map_err(map_err)
    }

    fn rename(&self, from: &str, to: &str, how: Commit) -> Result<()> {
        self.parent_exists(to)?;
        let target = self.client.head(to).map_err(map_err)?;
        let target_dir = target.is_none() && self.is_dir(to)?.is_some();
        match self.client.head(from).map_err(map_err)? {
            Some(m) => {
                if target_dir || (target.is_some() && how == Commit::NoReplace) {
                    return Err(StorageError::AlreadyExists);
                }
                let t = mtime(&m.metadata, m.modified);
                let t = unix(t).to_string();
                self.copy(from, to, m.len, &[(MTIME, &t)])?;
                self.client.delete(from).map_err(map_err)
            }
            None => {
                if self.is_dir(from)?.is_none() {
                    return Err(StorageError::NotFound);
                }
                if target.is_some() || target_dir {
                    return Err(StorageError::AlreadyExists);
                }
                // Folder by folder is not atomic: object by object, copies
                // first, then the originals go.
                let (src, dst) = (prefix_of(from), prefix_of(to));
                let mut moved = Vec::new();
                self.each_object(&src, |o| {
                    moved.push((o.key.clone(), o.len));
                    Ok(())
                })?;
                for (rel, len) in &moved {
                    let (a, b) = (format!("{src}{rel}"), format!("{dst}{rel}"));
                    let meta = self.client.head(&a).map_err(map_err)?;
                    let t = meta
                        .map(|m| unix(mtime(&m.metadata, m.modified)))
                        .unwrap_or(0)
                        .to_string();
                    self.copy(&a, &b, *len, &[(MTIME, &t)])?;
                }
                for (rel, _) in &moved {
                    self.client
                        .delete(&format!("{src}{rel}"))
                        .map_err(map_err)?;
                }
                self.client.delete(&src).map_err(map_err)
            }
        }
    }

    fn set_modified(&self, name: &str, time: SystemTime) -> Result<Meta> {
        let t = unix(time).to_string();
        match self.client.head(name).map_err(map_err)? {
            Some(m) => {
                self.client
                    .copy(name, name, Some(&[(MTIME, &t)]))
                    .map_err(map_err)?;
                Ok(file(m.len, UNIX_EPOCH + Duration::from_secs(unix(time))))
            }
            None => {
                if self.is_dir(name)?.is_none() {
                    return Err(StorageError::NotFound);
                }
                self.client
                    .put(&prefix_of(name), b"", &[(MTIME, &t)])
                    .map_err(map_err)?;
                Ok(dir(UNIX_EPOCH + Duration::from_secs(unix(time))))
            }
        }
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.client.head(name).map_err(map_err)?.is_some() {
            return Err(StorageError::AlreadyExists);
        }
        self.client.put(name, bytes, &[]).map(drop).map_err(map_err)
    }

    fn read_small(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.client
            .get_small(name, max)
            .map_err(map_err)?
            .ok_or(StorageError::NotFound)
    }

    fn remove_tree(&self, name: &str) -> Result<u64> {
        let prefix = prefix_of(name);
        let mut keys = Vec::new();
        self.each_object(&prefix, |o| {
            keys.push(o.key.clone());
            Ok(())
        })?;
        let mut removed = 0;
        for rel in &keys {
            self.client
                .delete(&format!("{prefix}{rel}"))
                .map_err(map_err)?;
            removed += u64::from(!rel.is_empty() && !rel.ends_with('/'));
        }
        if let Some(m) = self.client.head(name).map_err(map_err)? {
            drop(m);
            self.client.delete(name).map_err(map_err)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn staged_bytes(&self, prefix: &str) -> u64 {
        let mut total = 0u64;
        let _ = self.each_object(prefix, |o| {
            let name = format!("{prefix}{}", o.key);
            let len = if name.ends_with(SEALED) {
                o.len
            } else if name.ends_with('/') {
                0
            } else {
                // A record: the sealed bytes of its stored parts.
                self.client
                    .head(&name)
                    .ok()
                    .flatten()
                    .and_then(|m| m.metadata.get(STAGED_LEN)?.parse().ok())
                    .unwrap_or(0)
            };
            total = total.saturating_add(len);
            Ok(())
        });
        total
    }

    fn expire_staged(&self, prefix: &str, ttl: Duration) -> usize {
        let old = |t: SystemTime| t.elapsed().is_ok_and(|age| age > ttl);
        let mut removed = 0;
        let mut records = Vec::new();
        let _ = self.each_object(prefix, |o| {
            let name = format!("{prefix}{}", o.key);
            // Records only: not their data, not the folder's marker.
            if !name.ends_with(SEALED) && !name.ends_with('/') && old(o.modified) {
                records.push(name);
            }
            Ok(())
        });
        for name in records {
            if lock(&self.held).contains(&name) {
                continue;
            }
            if self.remove_staged_upload(&name).is_ok() {
                removed += 1;
            }
        }
        // Multipart uploads whose record is gone.
        if let Ok(uploads) = self.client.list_multipart_uploads(prefix) {
            for u in uploads {
                let record = u.key.strip_suffix(SEALED).unwrap_or(&u.key);
                if old(u.initiated) && !lock(&self.held).contains(record) {
                    let _ = self.client.abort_multipart(&u.key, &u.upload_id);
                }
            }
        }
        removed
    }

    fn remove_prefixed(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        self.each_object(prefix, |o| {
            names.push(format!("{prefix}{}", o.key));
            Ok(())
        })?;
        for name in &names {
            if !name.ends_with(SEALED) {
                self.remove_staged_upload(name)?;
            }
            self.client.delete(name).map_err(map_err)?;
        }
        for u in self
            .client
            .list_multipart_uploads(prefix)
            .map_err(map_err)?
        {
            let _ = self.client.abort_multipart(&u.key, &u.upload_id);
        }
        let dir = parent(prefix).len() + 1;
        Ok(names
            .into_iter()
            .filter(|n| !n.ends_with(SEALED))
            .map(|n| n.get(dir..).unwrap_or_default().to_owned())
            .collect())
    }
}

/// A folder being listed.
struct S3Lister {
    client: S3Client,
    prefix: String,
    after: Option<String>,
    done: bool,
    /// Entries of the last page not handed out yet.
    pending: Vec<Listed>,
}

impl Lister for S3Lister {
    fn next_batch(&mut self, max: usize) -> Result<Vec<Listed>> {
        while self.pending.is_empty() && !self.done {
            let keys = u32::try_from(max).unwrap_or(PAGE).clamp(1, PAGE);
            let page = self
                .client
                .list(&self.prefix, Some('/'), self.after.as_deref(), keys)
                .map_err(map_err)?;
            self.done = page.next.is_none();
            self.after = page.next;
            for o in page.objects {
                let Some(name) = o.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                // The folder's own marker, and markers of its subfolders.
                if name.is_empty() || name.ends_with('/') {
                    continue;
                }
                // The listing has no metadata: a time set by MFMT is read
                // back one object at a time.
                let modified = match self.client.head(&o.key) {
                    Ok(Some(m)) => mtime(&m.metadata, o.modified),
                    _ => o.modified,
                };
                self.pending.push(Listed {
                    name: name.to_owned(),
                    meta: file(o.len, modified),
                });
            }
            for p in page.prefixes {
                let Some(name) = p.strip_prefix(&self.prefix) else {
                    continue;
                };
                let name = name.trim_end_matches('/').to_owned();
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                let modified = match self.client.head(&p) {
                    Ok(Some(m)) => mtime(&m.metadata, m.modified),
                    _ => UNIX_EPOCH,
                };
                self.pending.push(Listed {
                    name,
                    meta: dir(modified),
                });
            }
            self.pending.reverse();
        }
        let take = max.min(self.pending.len());
        let mut out: Vec<Listed> = self.pending.split_off(self.pending.len() - take);
        out.reverse();
        Ok(out)
    }
}

/// A committed file, read with range requests.
struct S3Object {
    client: S3Client,
    name: String,
    len: u64,
}

impl Object for S3Object {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.client
            .get_range(&self.name, offset, buf)
            .map_err(map_err)
    }
}

/// What a record holds, authenticated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordBody {
    /// Layout version.
    v: u32,
    /// The staging name the record is about (so it cannot be moved to
    /// another).
    name: String,
    /// The multipart upload (empty before the first part).
    upload: String,
    /// The file header, base64 (empty before the first part).
    header: String,
    /// Stored parts: number, ETag, sealed bytes.
    parts: Vec<(u32, String, u64)>,
    /// Parts that may have been sent, at least partly, but are not stored
    /// for sure: number and sealed bytes.
    pending: Vec<(u32, u64)>,
}

/// A record as stored: the body's JSON, a newline, the tag in base64.
struct Record;

impl Record {
    fn encode(body: &RecordBody, key: &dyn RecordKey) -> Vec<u8> {
        let mut out = serde_json::to_vec(body).unwrap_or_default();
        let tag = base64::engine::general_purpose::STANDARD.encode(key.tag(&out));
        out.push(b'\n');
        out.extend_from_slice(tag.as_bytes());
        out
    }

    fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let at = bytes.iter().rposition(|&b| b == b'\n')?;
        Some((&bytes[..at], &bytes[at + 1..]))
    }

    /// The body, if the tag verifies under `key` and it is about `name`.
    fn decode(bytes: &[u8], key: &dyn RecordKey, name: &str) -> Option<RecordBody> {
        let (body, tag) = Self::split(bytes)?;
        let tag = base64::engine::general_purpose::STANDARD.decode(tag).ok()?;
        if !key.verify(body, &tag) {
            return None;
        }
        let body: RecordBody = serde_json::from_slice(body).ok()?;
        (body.v == 1 && body.name == name).then_some(body)
    }

    /// The body without checking it: only to find an upload to abort.
    fn body_unverified(bytes: &[u8]) -> Option<RecordBody> {
        serde_json::from_slice(Self::split(bytes)?.0).ok()
    }
}

/// An upload's state, shared by its sink's part threads.
#[derive(Debug, Default)]
struct State {
    upload: Option<String>,
    header: Option<Vec<u8>>,
    /// Stored parts, in order.
    parts: Vec<(u32, String, u64)>,
    pending: Vec<(u32, u64)>,
    /// Set once a part failed: the upload cannot go on.
    broken: bool,
}

impl State {
    /// Sealed bytes stored in parts 1..n without a gap.
    fn stored(&self) -> u64 {
        self.parts.iter().map(|p| p.2).sum()
    }
}

/// What a staged upload and its sink share.
struct Shared {
    client: S3Client,
    name: String,
    key: Arc<dyn RecordKey>,
    state: Mutex<State>,
    /// Held while a record is written, so records go out in order.
    record: Mutex<()>,
}

impl Shared {
    fn data(&self) -> String {
        format!("{}{SEALED}", self.name)
    }

    /// Writes the record of the state as it is now.
    fn write_record(&self) -> Result<()> {
        let _order = lock(&self.record);
        let (body, staged_len) = {
            let s = lock(&self.state);
            let body = RecordBody {
                v: 1,
                name: self.name.clone(),
                upload: s.upload.clone().unwrap_or_default(),
                header: s
                    .header
                    .as_ref()
                    .map(|h| base64::engine::general_purpose::STANDARD.encode(h))
                    .unwrap_or_default(),
                parts: s.parts.clone(),
                pending: s.pending.clone(),
            };
            // What a resume may continue after (SIZE reports it): the
            // stored parts. A part still on its way when the upload was
            // cut may make the record unusable (see `adopt`): then the
            // resume is refused and the client starts over.
            let len = if s.broken { 0 } else { s.stored() };
            (body, len)
        };
        let bytes = Record::encode(&body, &*self.key);
        let len = staged_len.to_string();
        self.client
            .put(&self.name, &bytes, &[(STAGED_LEN, &len)])
            .map(drop)
            .map_err(map_err)
    }

    /// Sends part `number`: recorded as on its way first.
    fn send_part(&self, number: u32, body: &[u8]) -> Result<()> {
        let len = body.len() as u64;
        let upload = {
            let mut s = lock(&self.state);
            s.pending.push((number, len));
            s.upload.clone()
        };
        let Some(upload) = upload else {
            return Err(StorageError::Io(io::Error::other("no multipart upload")));
        };
        self.write_record()?;
        let etag = self
            .client
            .upload_part(&self.data(), &upload, number, body)
            .map_err(map_err)?;
        let mut s = lock(&self.state);
        s.pending.retain(|p| p.0 != number);
        s.parts.push((number, etag, len));
        s.parts.sort_by_key(|p| p.0);
        Ok(())
    }
}

/// An upload in progress (see the module).
struct S3Staged {
    storage: S3Storage,
    name: String,
    shared: Arc<Shared>,
    /// Sealed bytes of the complete file once finished.
    finished: Option<u64>,
}

impl S3Staged {
    /// Adopts the interrupted upload recorded under the name, if it can be
    /// continued; otherwise clears it away so the upload starts afresh.
    fn take_over(&self) -> Result<()> {
        let client = &self.shared.client;
        let Some(bytes) = client.get_small(&self.name, MAX_RECORD).map_err(map_err)? else {
            return Ok(());
        };
        let adopted = Record::decode(&bytes, &*self.shared.key, &self.name)
            .map(|body| self.adopt(body))
            .transpose()?
            .flatten();
        match adopted {
            Some(state) => *lock(&self.shared.state) = state,
            None => {
                tracing::info!(name = %self.name, "interrupted upload cannot be continued; starting afresh");
                self.storage.remove_staged_upload(&self.name)?;
            }
        }
        Ok(())
    }

    /// The state to continue from `body`, if the multipart upload still
    /// holds exactly its parts (and parts that were on their way and
    /// arrived whole), with nothing else on its way.
    fn adopt(&self, body: RecordBody) -> Result<Option<State>> {
        if body.upload.is_empty() {
            return Ok(None);
        }
        let Some(stored) = self
            .shared
            .client
            .list_parts(&self.shared.data(), &body.upload)
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let mut parts = body.parts.clone();
        for (number, len) in &body.pending {
            match stored.iter().find(|p| p.number == *number) {
                Some(p) if p.size == *len => parts.push((*number, p.etag.clone(), *len)),
                // Sent in part, or not at all: its nonces may be spent.
                _ => return Ok(None),
            }
        }
        parts.sort_by_key(|p| p.0);
        let consistent = parts.len() == stored.len()
            && parts.iter().zip(1u32..).all(|(p, n)| p.0 == n)
            && parts.iter().all(|p| {
                stored
                    .iter()
                    .any(|s| s.number == p.0 && s.size == p.2 && s.etag == p.1)
            });
        let header = base64::engine::general_purpose::STANDARD
            .decode(&body.header)
            .ok()
            .filter(|h| h.len() == HEADER_LEN);
        if !consistent || header.is_none() {
            return Ok(None);
        }
        Ok(Some(State {
            upload: Some(body.upload),
            header,
            parts,
            pending: Vec::new(),
            broken: false,
        }))
    }

    /// Aborts the multipart upload and clears the state.
    fn clear(&mut self) -> Result<()> {
        let upload = lock(&self.shared.state).upload.take();
        if let Some(id) = upload {
            self.shared
                .client
                .abort_multipart(&self.shared.data(), &id)
                .map_err(map_err)?;
        }
        *lock(&self.shared.state) = State::default();
        Ok(())
    }
}

impl Drop for S3Staged {
    fn drop(&mut self) {
        lock(&self.storage.held).remove(&self.name);
    }
}

impl Staged for S3Staged {
    fn stored_len(&self) -> u64 {
        self.finished
            .unwrap_or_else(|| lock(&self.shared.state).stored())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.finished.is_some() {
            return self
                .shared
                .client
                .get_range(&self.shared.data(), offset, buf)
                .map_err(map_err);
        }
        // Before the upload is complete, only its header can be read.
        let s = lock(&self.shared.state);
        let header = s.header.as_deref().unwrap_or_default();
        let from = usize::try_from(offset).map_err(|_| StorageError::NotFound)?;
        let part = from
            .checked_add(buf.len())
            .and_then(|to| header.get(from..to))
            .ok_or_else(|| {
                StorageError::Io(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "an unfinished multipart upload cannot be read",
                ))
            })?;
        buf.copy_from_slice(part);
        Ok(())
    }

    fn sink(&mut self, at: u64) -> Result<Box<dyn Sink>> {
        if at == 0 {
            self.clear()?;
        } else if at != self.stored_len() {
            return Err(StorageError::Io(io::Error::other(
                "continued at another offset",
            )));
        }
        let next = {
            let s = lock(&self.shared.state);
            s.parts.last().map_or(1, |p| p.0 + 1)
        };
        // Parts end on segment boundaries: the first after the header.
        let first_len = if next == 1 {
            HEADER_LEN as u64 + self.storage.part_len()
        } else {
            self.storage.part_len()
        };
        Ok(Box::new(S3Sink {
            shared: self.shared.clone(),
            buf: Vec::new(),
            want: first_len,
            part_len: self.storage.part_len(),
            next,
            max_in_flight: self.storage.in_flight,
            in_flight: std::collections::VecDeque::new(),
            spare: Vec::new(),
        }))
    }

    fn finish(&mut self, sink: Box<dyn Sink>) -> Result<()> {
        let len = sink.close()?;
        self.finished = Some(len);
        Ok(())
    }

    fn commit(&mut self, to: &str, how: Commit) -> Result<()> {
        let len = self
            .finished
            .ok_or_else(|| StorageError::Io(io::Error::other("commit before finish")))?;
        let storage = &self.storage;
        let target = storage.client.head(to).map_err(map_err)?;
        if target.is_none() && storage.is_dir(to)?.is_some() {
            return Err(StorageError::IsADirectory);
        }
        // Without a conditional put that every S3 server honours, a name
        // that must stay free is checked just before the copy.
        if how == Commit::NoReplace && target.is_some() {
            return Err(StorageError::AlreadyExists);
        }
        let now = unix(SystemTime::now()).to_string();
        storage.copy(&self.shared.data(), to, len, &[(MTIME, &now)])?;
        let _ = storage.client.delete(&self.shared.data());
        let _ = storage.client.delete(&self.name);
        Ok(())
    }

    fn discard(&mut self) -> Result<()> {
        if self.finished.is_none() {
            self.clear()?;
        }
        self.storage.remove_staged_upload(&self.name)
    }

    fn replace_with(&mut self, _new: Box<dyn Staged>) -> Result<()> {
        // Never asked: re-seals need `staged_readable`.
        Err(StorageError::Io(io::Error::new(
            io::ErrorKind::Unsupported,
            "S3 staging cannot be re-sealed in place",
        )))
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// Sealed bytes cut into parts and sent by part threads.
struct S3Sink {
    shared: Arc<Shared>,
    /// The part being filled.
    buf: Vec<u8>,
    /// Its length once full.
    want: u64,
    part_len: u64,
    /// Its number.
    next: u32,
    max_in_flight: usize,
    /// Parts on their way; each thread gives its buffer back.
    in_flight: std::collections::VecDeque<JoinHandle<(Result<()>, Vec<u8>)>>,
    /// Buffers of parts sent, for the next parts: an upload allocates its
    /// few part buffers once.
    spare: Vec<Vec<u8>>,
}

impl S3Sink {
    /// Waits for the oldest part on its way.
    fn wait_one(&mut self) -> io::Result<()> {
        let Some(h) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let result = match h.join() {
            Ok((result, mut body)) => {
                body.clear();
                self.spare.push(body);
                result
            }
            Err(_) => Err(StorageError::Io(io::Error::other("part thread failed"))),
        };
        if result.is_err() {
            lock(&self.shared.state).broken = true;
        }
        result.map_err(StorageError::into_io)
    }

    fn wait_all(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        while !self.in_flight.is_empty() {
            let r = self.wait_one();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Sends the part being filled on a thread of its own.
    fn send(&mut self) -> io::Result<()> {
        if self.next > MAX_PARTS {
            return Err(io::Error::other("too many parts"));
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.wait_one()?;
        }
        let needs_upload = {
            let s = lock(&self.shared.state);
            if s.broken {
                return Err(io::Error::other("an earlier part failed"));
            }
            s.upload.is_none()
        };
        if needs_upload {
            let id = self
                .shared
                .client
                .create_multipart(&self.shared.data(), &[])
                .map_err(|e| map_err(e).into_io())?;
            lock(&self.shared.state).upload = Some(id);
        }
        if self.next == 1 {
            let header = self.buf.get(..HEADER_LEN).map(<[u8]>::to_vec);
            lock(&self.shared.state).header = header;
        }
        let next = self.spare.pop().unwrap_or_default();
        let body = std::mem::replace(&mut self.buf, next);
        let (shared, number) = (self.shared.clone(), self.next);
        self.in_flight.push_back(
            std::thread::Builder::new()
                .name("dropvault-s3-part".into())
                .spawn(move || (shared.send_part(number, &body), body))?,
        );
        self.next += 1;
        self.want = self.part_len;
        Ok(())
    }
}

impl Write for S3Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = usize::try_from(self.want)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.buf.len());
        let n = data.len().min(room);
        if self.buf.capacity() == 0 {
            self.buf
                .reserve_exact(usize::try_from(self.want).unwrap_or(0));
        }
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() as u64 >= self.want {
            self.send()?;
        }
        Ok(n)
    }

    /// Nothing to do: only whole parts are sent before the end.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for S3Sink {
    /// Waits for the parts on their way and records what is stored; the
    /// part being filled is not stored (a resume sends it again).
    fn sync(&mut self) -> io::Result<u64> {
        let waited = self.wait_all();
        // Nothing sent yet: nothing to record.
        if lock(&self.shared.state).upload.is_none() {
            return waited.map(|()| 0);
        }
        self.shared.write_record().map_err(StorageError::into_io)?;
        waited?;
        Ok(lock(&self.shared.state).stored())
    }

    fn close(mut self: Box<Self>) -> io::Result<u64> {
        if !self.buf.is_empty() || self.next == 1 {
            self.send()?;
        }
        self.wait_all()?;
        let (upload, parts) = {
            let s = lock(&self.shared.state);
            (
                s.upload.clone(),
                s.parts
                    .iter()
                    .map(|p| (p.0, p.1.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        let upload = upload.ok_or_else(|| io::Error::other("no multipart upload"))?;
        self.shared
            .client
            .complete_multipart(&self.shared.data(), &upload, &parts)
            .map_err(|e| map_err(e).into_io())?;
        let len = lock(&self.shared.state).stored();
        // Complete: the record no longer describes an upload that can go on.
        *lock(&self.shared.state) = State {
            broken: true,
            ..State::default()
        };
        self.shared.write_record().map_err(StorageError::into_io)?;
        Ok(len)
    }
}
