//! The account page: an account holder logs in with their FTP
//! credentials to list, download (with HTTP Range) and upload (tus, as
//! links do) their own files.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use dropvault_core::accounts::Password;
use dropvault_core::links::rfc3339;
use dropvault_core::session::{Credential, LoggedIn};
use dropvault_core::vault::{EntryKind, VPath};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::error::HttpError;
use crate::links::{creation_body, creation_length};
use crate::{assets, cookie, hashed, lock, new_secret, tus, App, Conn, WebSession};
use crate::{MAX_SESSIONS, SESSION_IDLE};

/// The session cookie.
const SESSION_COOKIE: &str = "dv_session";
/// Entries a listing returns at most.
const MAX_ENTRIES: usize = 10_000;
/// Bytes read from a file at a time for a download.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

impl App {
    /// The logged-in session this request's cookie names.
    fn web_session(&self, headers: &HeaderMap) -> Result<Arc<LoggedIn>, HttpError> {
        let value = cookie(headers, SESSION_COOKIE).ok_or(HttpError::Unauthorized)?;
        let mut sessions = lock(&self.sessions);
        let key = hashed(value);
        match sessions.get_mut(&key) {
            Some(s) if s.last.elapsed() < SESSION_IDLE => {
                s.last = Instant::now();
                Ok(s.user.clone())
            }
            Some(_) => {
                sessions.remove(&key);
                Err(HttpError::Unauthorized)
            }
            None => Err(HttpError::Unauthorized),
        }
    }

    /// Upload `id` of the user this request's session is, and the session.
    async fn own_upload(
        &self,
        headers: &HeaderMap,
        id: &str,
    ) -> Result<(Arc<LoggedIn>, tus::Record), HttpError> {
        tus::check_version(headers)?;
        let user = self.web_session(headers)?;
        let record = self.uploads.record(id).await?;
        if record.link.is_some() || record.user != user.user() {
            return Err(HttpError::NotFound);
        }
        Ok((user, record))
    }
}

/// `GET /`: the account page.
pub(crate) async fn page() -> Response {
    assets::html(assets::ACCOUNT_HTML)
}

/// The body of `POST /api/login`.
#[derive(Deserialize)]
pub(crate) struct Login {
    user: String,
    password: String,
}

/// `POST /api/login`: logs in through the gate, like FTP's `USER`/`PASS`
/// (the same failure count, delay and bans).
pub(crate) async fn login(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Json(body): Json<Login>,
) -> Result<Response, HttpError> {
    let password = Password::new(body.password);
    let user = app
        .gate
        .login(&conn.peer(), &body.user, Credential::Password(password))
        .await?;
    let secret = new_secret()?;
    {
        let mut sessions = lock(&app.sessions);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            hashed(&secret),
            WebSession {
                user: Arc::new(user),
                last: Instant::now(),
            },
        );
    }
    let cookie = format!("{SESSION_COOKIE}={secret}; Path=/; Secure; HttpOnly; SameSite=Strict");
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `POST /api/logout`.
pub(crate) async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(value) = cookie(&headers, SESSION_COOKIE) {
        let gone = lock(&app.sessions).remove(&hashed(value));
        drop(gone);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "dv_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        ),
    );
    r
}

/// `GET /api/session`: who is logged in.
pub(crate) async fn session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let user = app.web_session(&headers)?;
    Ok(Json(serde_json::json!({ "user": user.user() })).into_response())
}

/// The query of `GET /api/files`.
#[derive(Deserialize)]
pub(crate) struct Folder {
    #[serde(default)]
    path: String,
}

fn vpath(p: &str) -> Result<VPath, HttpError> {
    VPath::resolve(&VPath::root(), p).map_err(|_| HttpError::BadRequest("not a valid path"))
}

/// `GET /api/files?path=/dir`: a folder's entries (at most
/// [`MAX_ENTRIES`]), sorted by name.
pub(crate) async fn files(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(folder): Query<Folder>,
) -> Result<Response, HttpError> {
    let user = app.web_session(&headers)?;
    let path = vpath(&folder.path)?;
    let mut listing = user.vault().list(&path).await?;
    let mut entries = Vec::new();
    let mut truncated = false;
    loop {
        let batch = listing.next_batch().await?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            if entries.len() >= MAX_ENTRIES {
                truncated = true;
                break;
            }
            entries.push(e);
        }
        if truncated {
            break;
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let entries: Vec<_> = entries
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "kind": if e.kind == EntryKind::Dir { "dir" } else { "file" },
                "size": e.size,
                "modified": rfc3339(e.modified),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "path": path.to_string(),
        "entries": entries,
        "truncated": truncated,
    }))
    .into_response())
}

/// A `Range: bytes=…` header against a file of `len` bytes: the first and
/// last byte wanted; `Ok(None)` for the whole file (no header, or several
/// ranges, which are answered whole); `Err` when it cannot be satisfied.
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    let parsed = if first.is_empty() {
        let n: u64 = last.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let a: u64 = first.parse().map_err(|_| ())?;
        let b: u64 = if last.is_empty() {
            len.checked_sub(1).ok_or(())?
        } else {
            last.parse::<u64>()
                .map_err(|_| ())?
                .min(len.saturating_sub(1))
        };
        (a, b)
    };
    if parsed.0 >= len || parsed.0 > parsed.1 {
        return Err(());
    }
    Ok(Some(parsed))
}

/// `GET /files/<path>`: a file, whole or one range of it.
pub(crate) async fn download(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, HttpError> {
    let user = app.web_session(&headers)?;
    let p = vpath(&path)?;
    let size = user.vault().stat(&p).await?;
    if size.kind == EntryKind::Dir {
        return Err(HttpError::BadRequest("a folder"));
    }
    let len = size.size;
    let (status, first, count) = match range(&headers, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Err(()) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let reader = user.vault().download(&p, first).await?;
    let started = Instant::now();
    let state = (reader.take(count), user.clone(), p.clone(), 0u64);
    // The client has the whole range once its last byte is handed over
    // (the stream is not asked again after Content-Length bytes).
    let stream = futures_util::stream::unfold(Some(state), move |state| async move {
        let (mut reader, user, p, sent) = state?;
        let mut buf = vec![0u8; DOWNLOAD_CHUNK];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                user.throttle().download(n).await;
                let sent = sent + n as u64;
                if sent == count {
                    user.audit()
                        .downloaded(&p, sent, started.elapsed().as_secs_f64());
                }
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)),
                    Some((reader, user, p, sent)),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %p, "https: download failed");
                Some((Err(e), None))
            }
        }
    });
    let name = p.name().unwrap_or("download");
    let disposition = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        name.replace(
            |c: char| !c.is_ascii_graphic() || c == '"' || c == '\\',
            "_"
        ),
        percent(name)
    );
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let last = first + count - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// `s` percent-encoded for `filename*` (RFC 5987).
fn percent(s: &str) -> String {
    use std::fmt::Write as _;
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// `POST /uploads`: an upload to `folder` (metadata; default `/`) under
/// `filename` made plain; it replaces a file of that name, as FTP's
/// `STOR` does.
pub(crate) async fn tus_create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    tus::check_version(&headers)?;
    let user = app.web_session(&headers)?;
    let length = creation_length(&app, &headers)?;
    let meta = tus::metadata(&headers)?;
    let folder = vpath(meta.get("folder").map_or("/", String::as_str))?;
    let name = tus::sanitize_name(meta.get("filename").map_or("", String::as_str));
    let path = VPath::resolve(&folder, &name).map_err(HttpError::from)?;
    let mut record = app.uploads.create(&user, &path, length, None).await?;
    let location = format!("/uploads/{}", record.id);
    creation_body(&app, &user, &mut record, &headers, body, &location).await
}

/// `HEAD /uploads/<id>`.
pub(crate) async fn tus_head(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let (user, record) = app.own_upload(&headers, &id).await?;
    let offset = app.uploads.offset(&user, &record).await?;
    Ok(tus::head_reply(&record, offset))
}

/// `PATCH /uploads/<id>`.
pub(crate) async fn tus_patch(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (user, mut record) = app.own_upload(&headers, &id).await?;
    let offset = app
        .uploads
        .patch(&user, &mut record, &headers, body)
        .await?;
    Ok(tus::patched(&record, offset))
}

/// `DELETE /uploads/<id>`.
pub(crate) async fn tus_delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let (user, record) = app.own_upload(&headers, &id).await?;
    app.uploads.terminate(&user, &record).await?;
    Ok(tus::terminated())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(range: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static(range));
        h
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(range(&with("bytes=10-19"), 100), Ok(Some((10, 19))));
        assert_eq!(range(&with("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&with("bytes=-5"), 100), Ok(Some((95, 99))));
        assert_eq!(range(&with("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(range(&with("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(range(&with("bytes=100-"), 100), Err(()));
        assert_eq!(range(&with("bytes=5-2"), 100), Err(()));
        assert_eq!(range(&with("bytes=0-"), 0), Err(()));
        assert_eq!(range(&with("bytes=x-"), 100), Err(()));
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent("a b/ü.txt"), "a%20b%2F%C3%BC.txt");
    }
}
