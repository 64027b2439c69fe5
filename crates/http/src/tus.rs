//! Resumable uploads with the tus 1.0 protocol (core, creation,
//! creation-with-upload, termination, expiration, checksum), over the same
//! vault pipeline as FTP and SFTP: bytes are sealed as they arrive, the
//! file is scanned, then committed atomically.
//!
//! An upload is a record in storage (`.uploads/<id>.json`: whose, where
//! to, how long) and, while data comes, a vault [`Upload`]. A `PATCH`
//! continues where the upload is:
//!
//! - When one ends before the last byte (a client sending in chunks), the
//!   vault upload is flushed (its whole segments sealed into staging) and
//!   kept open for [`IDLE`], so the next chunk continues it exactly; the
//!   reply's `Upload-Offset` is every byte received.
//! - When the connection is cut, or the kept upload goes idle, it is
//!   dropped: staging keeps its whole sealed segments, and `HEAD` reports
//!   that durable offset, from storage — after a restart too, on any node.
//!   The next `PATCH` continues the staged upload under the same resume
//!   rule and nonce rule as FTP's `REST` (docs/FORMAT.md section 6).
//! - With `Upload-Checksum` the body is held in memory (at most
//!   [`MAX_CHECKSUM_BODY`]) until it is verified, so a mismatch leaves the
//!   upload exactly as it was.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use dropvault_core::links::epoch;
use dropvault_core::session::LoggedIn;
use dropvault_core::storage::{Storage, StorageError};
use dropvault_core::vault::{EntryKind, Upload, UploadMode, VPath, VaultError, STAGING_TTL};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::error::HttpError;

/// The protocol version spoken.
pub(crate) const TUS_RESUMABLE: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
const CHECKSUMS: &str = "sha1,sha256";
/// Largest `PATCH` body with an `Upload-Checksum` (held until verified).
pub(crate) const MAX_CHECKSUM_BODY: usize = 16 << 20;
/// `PATCH` bodies with checksums held at once, server-wide.
const CHECKSUM_SLOTS: usize = 4;
/// How long an upload left open between chunks is kept.
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// Uploads kept open between chunks, at most (the oldest go first).
const MAX_IDLE: usize = 1024;
/// Time for the next piece of a body to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Folder of upload records.
const RECORDS: &str = ".uploads";
/// Largest record read.
const MAX_RECORD: u64 = 8 * 1024;
/// Most records read at start-up.
const MAX_RECORDS: usize = 100_000;
/// Longest upload id accepted.
const ID_LEN: usize = 32;

/// An upload as storage keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Its id (32 hex digits), the last part of its URL.
    pub(crate) id: String,
    /// The user whose vault it goes to.
    pub(crate) user: String,
    /// Where it goes, in that vault.
    pub(crate) path: String,
    /// Its size, as `Upload-Length` announced it.
    pub(crate) length: u64,
    /// The drop link it came through (`None`: the user's own session).
    pub(crate) link: Option<String>,
    /// When it was created and when it expires (seconds since the epoch).
    pub(crate) created: u64,
    pub(crate) expires: u64,
    /// Whether it may replace a file (an account's upload) or must find
    /// its name free (a link's).
    pub(crate) replace: bool,
    /// Whether it is committed.
    pub(crate) done: bool,
}

impl Record {
    fn vpath(&self) -> Result<VPath, HttpError> {
        VPath::resolve(&VPath::root(), &self.path).map_err(|_| HttpError::NotFound)
    }

    fn mode(&self, offset: u64) -> UploadMode {
        match (self.replace, offset) {
            (false, _) => UploadMode::CreateAt(offset),
            (true, 0) => UploadMode::Replace,
            (true, n) => UploadMode::Resume(n),
        }
    }

    fn expires_header(&self) -> HeaderValue {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(self.expires);
        HeaderValue::from_str(&httpdate::fmt_http_date(when))
            .unwrap_or(HeaderValue::from_static(""))
    }
}

enum Slot {
    /// A request is writing it.
    Busy,
    /// Left open between chunks, since then.
    Idle { upload: Upload, at: Instant },
}

/// The uploads of one server: records in storage, open ones in memory.
pub(crate) struct Uploads {
    storage: Arc<dyn Storage>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Users and paths of unfinished uploads, so two get different names.
    reserved: Mutex<HashSet<(String, String)>>,
    checksum_slots: Arc<tokio::sync::Semaphore>,
    /// `http.max_upload_bytes`.
    pub(crate) max_file: Option<u64>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("max_file", &self.max_file)
            .finish_non_exhaustive()
    }
}

/// The `Tus-Resumable` check every request but `OPTIONS` passes.
pub(crate) fn check_version(headers: &HeaderMap) -> Result<(), HttpError> {
    match headers.get("tus-resumable") {
        Some(v) if v == TUS_RESUMABLE => Ok(()),
        _ => Err(HttpError::TusVersion),
    }
}

/// A header as a number.
fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, HttpError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(HttpError::BadRequest("a number header does not parse"))
        })
        .transpose()
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs.
pub(crate) fn metadata(headers: &HeaderMap) -> Result<HashMap<String, String>, HttpError> {
    let mut out = HashMap::new();
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(out);
    };
    let raw = raw
        .to_str()
        .map_err(|_| HttpError::BadRequest("Upload-Metadata is not ASCII"))?;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or(HttpError::BadRequest(
                "Upload-Metadata value is not base64 UTF-8",
            ))?;
        if out.len() < 32 {
            out.insert(key.to_owned(), value);
        }
    }
    Ok(out)
}

/// A client's file name as a plain name: its last path component (after
/// `/` or `\`), without control characters, not `.` or `..`, at most 200
/// bytes; `"upload"` when nothing is left.
pub(crate) fn sanitize_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = last
        .chars()
        .filter(|c| !c.is_control() && *c != '\u{7f}')
        .collect();
    name = name.trim().trim_start_matches('.').trim().to_owned();
    while name.len() > 200 {
        name.pop();
    }
    if name.is_empty() {
        "upload".to_owned()
    } else {
        name
    }
}

/// The `n`th name to try for `name`: itself, then `stem (n).ext`.
fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

/// The common headers of tus replies.
fn tus_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_RESUMABLE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The reply to `OPTIONS`.
pub(crate) fn options(max: Option<u64>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut r);
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_RESUMABLE));
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(CHECKSUMS),
    );
    if let Some(max) = max {
        h.insert("tus-max-size", HeaderValue::from(max));
    }
    r
}

/// The reply to a creation: `201`, where the upload is, and how far it
/// got when data came with it.
pub(crate) fn created(location: &str, record: &Record, offset: Option<u64>) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    tus_headers(&mut r);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert("upload-expires", record.expires_header());
    if let Some(offset) = offset {
        h.insert("upload-offset", HeaderValue::from(offset));
    }
    r
}

/// The reply to `HEAD`.
pub(crate) fn head_reply(record: &Record, offset: u64) -> Response {
    let mut r = StatusCode::OK.into_response();
    tus_headers(&mut r);
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(offset));
    h.insert("upload-length", HeaderValue::from(record.length));
    if !record.done {
        h.insert("upload-expires", record.expires_header());
    }
    r
}

/// The reply to a `PATCH`.
pub(crate) fn patched(record: &Record, offset: u64) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut r);
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(offset));
    if !record.done {
        h.insert("upload-expires", record.expires_header());
    }
    r
}

/// The reply to a termination.
pub(crate) fn terminated() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut r);
    r
}

/// A slot taken for one request; given back (with the upload left open,
/// if any) when dropped.
struct Taken<'a> {
    uploads: &'a Uploads,
    id: String,
    keep: Option<Upload>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut slots = self.uploads.slots();
        match self.keep.take() {
            Some(upload) => {
                slots.insert(
                    self.id.clone(),
                    Slot::Idle {
                        upload,
                        at: Instant::now(),
                    },
                );
                let idle = slots.len();
                if idle > MAX_IDLE {
                    let oldest = slots
                        .iter()
                        .filter_map(|(id, s)| match s {
                            Slot::Idle { at, .. } => Some((*at, id.clone())),
                            Slot::Busy => None,
                        })
                        .min();
                    if let Some((_, id)) = oldest {
                        slots.remove(&id);
                    }
                }
            }
            None => {
                slots.remove(&self.id);
            }
        }
    }
}

/// How a body ended.
enum BodyEnd {
    /// All of it arrived.
    Complete,
    /// The connection broke, or a piece took too long.
    Cut,
    /// More than the upload's length.
    TooLong,
}

impl Uploads {
    /// The uploads kept in `storage`; unfinished ones' names are reserved.
    pub(crate) fn new(storage: Arc<dyn Storage>, max_file: Option<u64>) -> Self {
        let uploads = Self {
            storage,
            slots: Mutex::default(),
            reserved: Mutex::default(),
            checksum_slots: Arc::new(tokio::sync::Semaphore::new(CHECKSUM_SLOTS)),
            max_file,
        };
        if let Ok(records) = all_records(&*uploads.storage) {
            let mut reserved = uploads.reserved();
            for r in records.into_iter().filter(|r| !r.done) {
                reserved.insert((r.user, r.path));
            }
        }
        uploads
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.reserved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record of upload `id`.
    pub(crate) async fn record(&self, id: &str) -> Result<Record, HttpError> {
        if id.is_empty() || id.len() > ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HttpError::NotFound);
        }
        let storage = self.storage.clone();
        let name = record_name(id);
        let bytes = tokio::task::spawn_blocking(move || storage.read_small(&name, MAX_RECORD))
            .await
            .map_err(|_| HttpError::Internal)?;
        let record: Record = match bytes {
            Ok(b) => serde_json::from_slice(&b).map_err(|_| HttpError::NotFound)?,
            Err(StorageError::NotFound) => return Err(HttpError::NotFound),
            Err(e) => return Err(VaultError::from(e).into()),
        };
        if record.id != id {
            return Err(HttpError::NotFound);
        }
        if !record.done && epoch(SystemTime::now()) >= record.expires {
            return Err(HttpError::Gone);
        }
        Ok(record)
    }

    /// Picks the name a link's upload of `wanted` gets in `folder`: the
    /// first of `wanted`, `wanted (1)`, … that no file, interrupted upload
    /// or unfinished upload of this server has; reserves it.
    pub(crate) async fn free_name(
        &self,
        session: &LoggedIn,
        folder: &VPath,
        wanted: &str,
    ) -> Result<VPath, HttpError> {
        let vault = session.vault();
        for n in 0..1000 {
            let name = numbered(wanted, n);
            let path = VPath::resolve(folder, &name).map_err(HttpError::from)?;
            if path.parent() != *folder {
                continue;
            }
            let key = (session.user().to_owned(), path.to_string());
            if self.reserved().contains(&key) {
                continue;
            }
            match vault.stat(&path).await {
                Err(VaultError::NotFound) => {}
                Ok(_) => continue,
                Err(e) => return Err(e.into()),
            }
            if vault.staged_offset(&path).await?.is_some() {
                continue;
            }
            if self.reserved().insert(key) {
                return Ok(path);
            }
        }
        Err(HttpError::BadRequest("too many files of that name"))
    }

    /// Creates the record of an upload of `length` bytes to `path`.
    pub(crate) async fn create(
        &self,
        session: &LoggedIn,
        path: &VPath,
        length: u64,
        link: Option<&str>,
    ) -> Result<Record, HttpError> {
        session.vault().check_quota(path, length).await?;
        let id = dropvault_core::random_hex(16).map_err(|_| HttpError::Internal)?;
        let now = epoch(SystemTime::now());
        let record = Record {
            id,
            user: session.user().to_owned(),
            path: path.to_string(),
            length,
            link: link.map(str::to_owned),
            created: now,
            expires: now.saturating_add(STAGING_TTL.as_secs()),
            replace: link.is_none(),
            done: false,
        };
        self.reserved()
            .insert((record.user.clone(), record.path.clone()));
        let (storage, r) = (self.storage.clone(), record.clone());
        tokio::task::spawn_blocking(move || write_record(&*storage, &r, false))
            .await
            .map_err(|_| HttpError::Internal)??;
        Ok(record)
    }

    async fn mark_done(&self, record: &mut Record) {
        record.done = true;
        self.reserved()
            .remove(&(record.user.clone(), record.path.clone()));
        let (storage, r) = (self.storage.clone(), record.clone());
        let written = tokio::task::spawn_blocking(move || write_record(&*storage, &r, true)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(upload = %record.id, "https: upload committed, its record not updated");
        }
    }

    async fn forget(&self, record: &Record) {
        self.reserved()
            .remove(&(record.user.clone(), record.path.clone()));
        let (storage, name) = (self.storage.clone(), record_name(&record.id));
        let _ = tokio::task::spawn_blocking(move || storage.remove(&name)).await;
    }

    /// Where upload `record` can continue: every byte received while it is
    /// open here; else what staging holds. (A `PATCH` must start there:
    /// one that does not gets `409` and changes nothing.)
    pub(crate) async fn offset(
        &self,
        session: &LoggedIn,
        record: &Record,
    ) -> Result<u64, HttpError> {
        if record.done {
            return Ok(record.length);
        }
        if let Some(Slot::Idle { upload, .. }) = self.slots().get(&record.id) {
            return Ok(upload.plaintext_len());
        }
        let path = record.vpath()?;
        Ok(session.vault().staged_offset(&path).await?.unwrap_or(0))
    }

    /// Takes upload `id`'s slot for a request; `Locked` while another
    /// request has it.
    fn take(&self, id: &str) -> Result<(Taken<'_>, Option<Upload>), HttpError> {
        let mut slots = self.slots();
        let open = match slots.insert(id.to_owned(), Slot::Busy) {
            Some(Slot::Busy) => return Err(HttpError::Locked),
            Some(Slot::Idle { upload, .. }) => Some(upload),
            None => None,
        };
        drop(slots);
        Ok((
            Taken {
                uploads: self,
                id: id.to_owned(),
                keep: None,
            },
            open,
        ))
    }

    /// Drops `upload` and waits until its worker let go of staging.
    async fn close(mut upload: Upload) {
        let exited = upload.exit_signal();
        drop(upload);
        exited.wait().await;
    }

    /// A `PATCH` (or the body of a creation): appends the body at
    /// `Upload-Offset`; commits when the last byte is in. Returns the
    /// upload's offset after it.
    pub(crate) async fn patch(
        &self,
        session: &LoggedIn,
        record: &mut Record,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<u64, HttpError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if content_type != Some("application/offset+octet-stream") {
            return Err(HttpError::MediaType);
        }
        let offset = number(headers, "upload-offset")?
            .ok_or(HttpError::BadRequest("Upload-Offset needed"))?;
        if record.done {
            return if offset == record.length {
                Ok(offset)
            } else {
                Err(HttpError::Offset {
                    available: record.length,
                })
            };
        }
        let checksum = checksum(headers)?;
        let (mut taken, open) = self.take(&record.id)?;
        let path = record.vpath()?;
        let vault = session.vault();
        // The open upload if it is where the client is, else the staged
        // one if that is.
        let mut upload = match open {
            Some(u) if u.plaintext_len() == offset => u,
            // A stale or early PATCH: the open upload stays as it is.
            Some(u) => {
                let available = u.plaintext_len();
                taken.keep = Some(u);
                return Err(HttpError::Offset { available });
            }
            None => {
                let durable = vault.staged_offset(&path).await?.unwrap_or(0);
                if offset != durable {
                    return Err(HttpError::Offset { available: durable });
                }
                vault
                    .upload_sized(&path, record.mode(offset), Some(record.length))
                    .await?
            }
        };
        let room = record.length.saturating_sub(offset);
        let started = Instant::now();
        let mut body = body;
        let end = match checksum {
            Some((algorithm, expected)) => {
                let _slot = self
                    .checksum_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| HttpError::Internal)?;
                let limit = MAX_CHECKSUM_BODY.min(usize::try_from(room).unwrap_or(usize::MAX));
                match read_all(&mut body, limit).await {
                    Ok(data) => {
                        let digest = aws_lc_rs::digest::digest(algorithm, &data);
                        if digest.as_ref() != expected.as_slice() {
                            taken.keep = Some(upload);
                            return Err(HttpError::Checksum);
                        }
                        session.throttle().upload(data.len()).await;
                        if upload.write_all(&data).await.is_err() {
                            return Err(stopped(&mut upload));
                        }
                        BodyEnd::Complete
                    }
                    Err(end) => end,
                }
            }
            None => stream_into(&mut upload, &mut body, room, session).await?,
        };
        match end {
            BodyEnd::Complete => {}
            BodyEnd::Cut => {
                // Whole segments stay in staging, for HEAD and a resume.
                Self::close(upload).await;
                return Err(HttpError::BadRequest("the body was cut short"));
            }
            BodyEnd::TooLong => {
                Self::close(upload).await;
                return Err(HttpError::TooLarge);
            }
        }
        let now = upload.plaintext_len();
        if now < record.length {
            if upload.flush().await.is_err() {
                return Err(stopped(&mut upload));
            }
            taken.keep = Some(upload);
            return Ok(now);
        }
        // What this vault upload took in (kept open across chunks).
        let received = now - upload.start_offset();
        let secs = started.elapsed().as_secs_f64();
        match session.audit().commit(&path, upload, received, secs).await {
            Ok(_) => {
                self.mark_done(record).await;
                Ok(record.length)
            }
            Err(e) => {
                if matches!(e, VaultError::Rejected { .. }) {
                    self.forget(record).await;
                }
                Err(e.into())
            }
        }
    }

    /// Commits an empty file at once (`Upload-Length: 0`).
    pub(crate) async fn commit_empty(
        &self,
        session: &LoggedIn,
        record: &mut Record,
    ) -> Result<(), HttpError> {
        let path = record.vpath()?;
        let upload = session
            .vault()
            .upload_sized(&path, record.mode(0), Some(0))
            .await?;
        match session.audit().commit(&path, upload, 0, 0.0).await {
            Ok(_) => {
                self.mark_done(record).await;
                Ok(())
            }
            Err(e) => {
                self.forget(record).await;
                Err(e.into())
            }
        }
    }

    /// Terminates upload `record`: what it staged goes, and its record.
    pub(crate) async fn terminate(
        &self,
        session: &LoggedIn,
        record: &Record,
    ) -> Result<(), HttpError> {
        let (_taken, open) = self.take(&record.id)?;
        if let Some(u) = open {
            Self::close(u).await;
        }
        if !record.done {
            session.vault().discard_staged(&record.vpath()?).await?;
        }
        self.forget(record).await;
        Ok(())
    }

    /// Closes uploads left open longer than [`IDLE`] (their whole segments
    /// stay in staging) and, with `records`, removes records past their
    /// expiry; returns the expired records (for the links they count
    /// against).
    pub(crate) async fn sweep(&self, records: bool) -> Vec<Record> {
        let stale: Vec<Upload> = {
            let mut slots = self.slots();
            let ids: Vec<String> = slots
                .iter()
                .filter_map(|(id, s)| match s {
                    Slot::Idle { at, .. } if at.elapsed() >= IDLE => Some(id.clone()),
                    _ => None,
                })
                .collect();
            ids.iter()
                .filter_map(|id| match slots.remove(id) {
                    Some(Slot::Idle { upload, .. }) => Some(upload),
                    _ => None,
                })
                .collect()
        };
        for upload in stale {
            Self::close(upload).await;
        }
        if !records {
            return Vec::new();
        }
        let storage = self.storage.clone();
        let expired = tokio::task::spawn_blocking(move || {
            let now = epoch(SystemTime::now());
            let records = all_records(&*storage).unwrap_or_default();
            let expired: Vec<Record> = records.into_iter().filter(|r| now >= r.expires).collect();
            for r in &expired {
                let _ = storage.remove(&record_name(&r.id));
            }
            expired
        })
        .await
        .unwrap_or_default();
        let mut reserved = self.reserved();
        for r in &expired {
            reserved.remove(&(r.user.clone(), r.path.clone()));
        }
        expired
    }
}

/// The storage name of upload `id`'s record.
fn record_name(id: &str) -> String {
    format!("{RECORDS}/{id}.json")
}

/// Stores `record` (over the one there, with `replace`). Blocking.
fn write_record(storage: &dyn Storage, record: &Record, replace: bool) -> Result<(), HttpError> {
    let json = serde_json::to_vec(record).map_err(|_| HttpError::Internal)?;
    let name = record_name(&record.id);
    match storage.mkdir(RECORDS) {
        Ok(()) | Err(StorageError::AlreadyExists) => {}
        Err(e) => return Err(VaultError::from(e).into()),
    }
    if replace {
        match storage.remove(&name) {
            Ok(()) | Err(StorageError::NotFound) => {}
            Err(e) => return Err(VaultError::from(e).into()),
        }
    }
    storage
        .put_new(&name, &json)
        .map_err(|e| VaultError::from(e).into())
}

/// Every upload record in storage (at most [`MAX_RECORDS`]; unreadable
/// ones left out). Blocking.
fn all_records(storage: &dyn Storage) -> Result<Vec<Record>, StorageError> {
    let mut lister = match storage.list(RECORDS) {
        Ok(l) => l,
        Err(StorageError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    loop {
        let batch = lister.next_batch(256)?;
        if batch.is_empty() || out.len() >= MAX_RECORDS {
            return Ok(out);
        }
        for entry in batch {
            let name = format!("{RECORDS}/{}", entry.name);
            if let Ok(bytes) = storage.read_small(&name, MAX_RECORD) {
                if let Ok(r) = serde_json::from_slice::<Record>(&bytes) {
                    out.push(r);
                }
            }
        }
    }
}

/// Why a worker stopped, as a reply.
fn stopped(upload: &mut Upload) -> HttpError {
    upload
        .failure()
        .map_or(HttpError::Unavailable, HttpError::from)
}

/// `Upload-Checksum`: the algorithm and the expected digest.
fn checksum(
    headers: &HeaderMap,
) -> Result<Option<(&'static aws_lc_rs::digest::Algorithm, Vec<u8>)>, HttpError> {
    let Some(raw) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = HttpError::BadRequest("Upload-Checksum does not parse");
    let raw = raw
        .to_str()
        .map_err(|_| HttpError::BadRequest("Upload-Checksum does not parse"))?;
    let (name, value) = raw.trim().split_once(' ').ok_or(bad)?;
    let algorithm = match name {
        "sha1" => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        "sha256" => &aws_lc_rs::digest::SHA256,
        _ => return Err(HttpError::BadRequest("checksum algorithm not supported")),
    };
    let expected = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| HttpError::BadRequest("Upload-Checksum does not parse"))?;
    Ok(Some((algorithm, expected)))
}

/// The next piece of `body`: `None` at its end, `Err` when cut or slow.
async fn next_piece(body: &mut Body) -> Result<Option<axum::body::Bytes>, ()> {
    loop {
        match tokio::time::timeout(BODY_TIMEOUT, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(_))) | Err(_) => return Err(()),
        }
    }
}

/// Reads all of `body`, at most `limit` bytes.
async fn read_all(body: &mut Body, limit: usize) -> Result<Vec<u8>, BodyEnd> {
    let mut data = Vec::new();
    loop {
        match next_piece(body).await {
            Ok(Some(piece)) => {
                if data.len() + piece.len() > limit {
                    return Err(BodyEnd::TooLong);
                }
                data.extend_from_slice(&piece);
            }
            Ok(None) => return Ok(data),
            Err(()) => return Err(BodyEnd::Cut),
        }
    }
}

/// Writes `body` into `upload` as it comes, at most `room` bytes, through
/// the session's bandwidth limits.
async fn stream_into(
    upload: &mut Upload,
    body: &mut Body,
    room: u64,
    session: &LoggedIn,
) -> Result<BodyEnd, HttpError> {
    let mut left = room;
    loop {
        let piece = match next_piece(body).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(BodyEnd::Complete),
            Err(()) => return Ok(BodyEnd::Cut),
        };
        if piece.len() as u64 > left {
            return Ok(BodyEnd::TooLong);
        }
        left -= piece.len() as u64;
        session.throttle().upload(piece.len()).await;
        if upload.write_all(&piece).await.is_err() {
            return Err(stopped(upload));
        }
    }
}

/// Whether `p` in `session`'s vault is a folder.
pub(crate) async fn is_folder(session: &LoggedIn, p: &VPath) -> Result<bool, HttpError> {
    match session.vault().stat(p).await {
        Ok(e) => Ok(e.kind == EntryKind::Dir),
        Err(VaultError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_numbered() {
        assert_eq!(sanitize_name("../../etc/pa\u{1}ss"), "pass");
        assert_eq!(sanitize_name("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_name(".."), "upload");
        assert_eq!(sanitize_name(".hidden"), "hidden");
        assert_eq!(sanitize_name(""), "upload");
        assert_eq!(numbered("a.txt", 0), "a.txt");
        assert_eq!(numbered("a.txt", 2), "a (2).txt");
        assert_eq!(numbered("README", 1), "README (1)");
        assert_eq!(numbered(".x", 1), ".x (1)");
    }

    #[test]
    fn metadata_pairs() {
        let mut h = HeaderMap::new();
        h.insert(
            "upload-metadata",
            HeaderValue::from_static("filename cmVwb3J0LnBkZg==,is_confidential"),
        );
        let m = metadata(&h).expect("test");
        assert_eq!(m["filename"], "report.pdf");
        assert_eq!(m["is_confidential"], "");
        h.insert("upload-metadata", HeaderValue::from_static("filename !!!"));
        assert!(metadata(&h).is_err());
    }
}
