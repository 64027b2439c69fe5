//! The drop link routes: the page, what the link allows, its password,
//! and its tus endpoint (`/d/<token>/uploads`). A link only ever creates
//! new files in its folder: it lists nothing, reads nothing, replaces
//! nothing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use dropvault_core::accounts::Password;
use dropvault_core::guard::Failure;
use dropvault_core::links::{rfc3339, Link};
use dropvault_core::session::{Credential, LoggedIn, LoginError};
use dropvault_core::vault::{VPath, VaultError};
use serde::Deserialize;

use crate::error::HttpError;
use crate::{assets, cookie, hashed, lock, new_secret, tus, App, Conn};
use crate::{LINK_SESSION_IDLE, MAX_LINK_SESSIONS, MAX_UNLOCKED, UNLOCK_LIFETIME};

/// The cookie that says a browser gave a link's password.
const UNLOCK_COOKIE: &str = "dv_link";

/// The page a link that is not (or no longer) valid shows.
const INVALID_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Link not valid</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head>\
<body><main class=\"card\"><h1>This link is not valid</h1>\
<p>It may have expired, been revoked, or received all the files it may. \
Ask the person who sent it for a new one.</p></main></body></html>\n";

/// What a link may still let in.
struct Allowance {
    uploads_left: Option<u64>,
    bytes_left: Option<u64>,
}

impl App {
    /// The link of `token` if it is valid now (known, not expired), and
    /// within its request rate.
    async fn link(&self, token: &str) -> Result<Link, HttpError> {
        let (links, t) = (self.links.clone(), token.to_owned());
        let link = tokio::task::spawn_blocking(move || links.find(&t))
            .await
            .map_err(|_| HttpError::Internal)?
            .map_err(|e| HttpError::from(VaultError::from(e)))?
            .ok_or(HttpError::NotFound)?;
        if link.expired(SystemTime::now()) {
            return Err(HttpError::NotFound);
        }
        if self.per_link.check_key(&link.id).is_err() {
            return Err(HttpError::TooMany(1));
        }
        Ok(link)
    }

    /// What `link` may still let in.
    async fn allowance(&self, link: &Link) -> Result<Allowance, HttpError> {
        if link.max_uploads.is_none() && link.max_bytes.is_none() {
            return Ok(Allowance {
                uploads_left: None,
                bytes_left: None,
            });
        }
        let (links, id) = (self.links.clone(), link.id.clone());
        let used = tokio::task::spawn_blocking(move || links.usage(&id))
            .await
            .map_err(|_| HttpError::Internal)?
            .map_err(|e| HttpError::from(VaultError::from(e)))?;
        Ok(Allowance {
            uploads_left: link.max_uploads.map(|m| m.saturating_sub(used.uploads)),
            bytes_left: link.max_bytes.map(|m| m.saturating_sub(used.bytes)),
        })
    }

    /// Whether this browser unlocked `link` (always, without a password).
    fn unlocked(&self, link: &Link, headers: &HeaderMap) -> bool {
        if !link.has_password() {
            return true;
        }
        let Some(value) = cookie(headers, UNLOCK_COOKIE) else {
            return false;
        };
        lock(&self.unlocked)
            .get(&hashed(value))
            .is_some_and(|(id, until)| *id == link.id && *until > Instant::now())
    }

    /// The valid link of `token`, unlocked by this browser.
    async fn usable_link(&self, token: &str, headers: &HeaderMap) -> Result<Link, HttpError> {
        tus::check_version(headers)?;
        let link = self.link(token).await?;
        if !self.unlocked(&link, headers) {
            return Err(HttpError::Unauthorized);
        }
        Ok(link)
    }

    /// A session for `link`'s owner, as seen from `conn`: with `fresh`
    /// (a new upload) opened through the gate, which checks that the owner
    /// still has an account and unlocks their key; otherwise the one in use
    /// is reused while it is.
    async fn link_session(
        &self,
        link: &Link,
        conn: &Conn,
        fresh: bool,
    ) -> Result<Arc<LoggedIn>, HttpError> {
        let key = (link.id.clone(), conn.client);
        if !fresh {
            if let Some((session, at)) = lock(&self.link_sessions).get_mut(&key) {
                if at.elapsed() < LINK_SESSION_IDLE {
                    *at = Instant::now();
                    return Ok(session.clone());
                }
            }
        }
        let session = match self
            .gate
            .login(&conn.peer(), &link.user, Credential::Link)
            .await
        {
            Ok(s) => Arc::new(s),
            // The owner has no account any more: the link is dead.
            Err(LoginError::Wrong) => {
                let gone = lock(&self.link_sessions).remove(&key);
                drop(gone);
                return Err(HttpError::NotFound);
            }
            Err(e) => return Err(e.into()),
        };
        let mut sessions = lock(&self.link_sessions);
        if sessions.len() >= MAX_LINK_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(key, (session.clone(), Instant::now()));
        Ok(session)
    }

    /// Upload `id` of the link of `token` (valid, unlocked by this
    /// browser), and the session of the link's owner it is written in.
    async fn link_upload(
        &self,
        token: &str,
        id: &str,
        headers: &HeaderMap,
        conn: &Conn,
    ) -> Result<(Link, tus::Record, Arc<LoggedIn>), HttpError> {
        let link = self.usable_link(token, headers).await?;
        let record = self.uploads.record(id).await?;
        if record.link.as_deref() != Some(link.id.as_str()) {
            return Err(HttpError::NotFound);
        }
        let session = self.link_session(&link, conn, false).await?;
        Ok((link, record, session))
    }
}

/// `GET /d/<token>`: the drop page, or a page saying the link is not valid.
pub(crate) async fn page(State(app): State<Arc<App>>, Path(token): Path<String>) -> Response {
    let valid = match app.link(&token).await {
        Ok(link) => match app.allowance(&link).await {
            Ok(a) => a.uploads_left != Some(0),
            Err(e) => return e.into_response(),
        },
        Err(HttpError::NotFound) => false,
        Err(e) => return e.into_response(),
    };
    if valid {
        assets::html(assets::DROP_HTML)
    } else {
        let mut r = assets::html(INVALID_PAGE);
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

fn time(secs: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `GET /d/<token>/info`: what the page shows and needs.
pub(crate) async fn info(
    State(app): State<Arc<App>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let link = app.link(&token).await?;
    let allowance = app.allowance(&link).await?;
    if allowance.uploads_left == Some(0) {
        return Err(HttpError::NotFound);
    }
    let max_file = match (app.uploads.max_file, allowance.bytes_left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let body = serde_json::json!({
        "folder": link.folder,
        "expires": link.expires.map(time),
        "password": link.has_password(),
        "unlocked": app.unlocked(&link, &headers),
        "max_file_bytes": max_file,
        "uploads_left": allowance.uploads_left,
        "bytes_left": allowance.bytes_left,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// The body of `POST /d/<token>/unlock`.
#[derive(Deserialize)]
pub(crate) struct Unlock {
    password: String,
}

/// `POST /d/<token>/unlock`: checks the link's password. A wrong one
/// counts against the client like a failed FTP or SFTP login: the same
/// budget of guesses, the same bans.
pub(crate) async fn unlock(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Path(token): Path<String>,
    Json(body): Json<Unlock>,
) -> Result<Response, HttpError> {
    let link = app.link(&token).await?;
    let guard = app.gate.guard().clone();
    let attempt = guard
        .attempt(conn.client)
        .await
        .map_err(|_| HttpError::Forbidden("too many failed logins from this address"))?;
    let password = Password::new(body.password);
    let checked = link.clone();
    let matches = tokio::task::spawn_blocking(move || checked.password_matches(&password))
        .await
        .map_err(|_| HttpError::Internal)?;
    let account = format!("link:{}", link.id);
    if !matches {
        let verdict = attempt.failed(&account);
        tracing::warn!(event = "login_failed", protocol = "https", link = %link.id,
            peer = %conn.addr);
        tokio::time::sleep(app.gate.config().failed_login_delay).await;
        if verdict == Failure::Banned {
            tracing::warn!(event = "banned", protocol = "https", peer = %conn.addr,
                client = %conn.client, "too many failed logins");
            return Err(HttpError::Forbidden(
                "too many failed logins from this address",
            ));
        }
        return Err(HttpError::WrongPassword);
    }
    attempt.succeeded(&account);
    let secret = new_secret()?;
    {
        let mut unlocked = lock(&app.unlocked);
        if unlocked.len() >= MAX_UNLOCKED {
            let now = Instant::now();
            unlocked.retain(|_, (_, until)| *until > now);
            if unlocked.len() >= MAX_UNLOCKED {
                return Err(HttpError::Unavailable);
            }
        }
        unlocked.insert(
            hashed(&secret),
            (link.id.clone(), Instant::now() + UNLOCK_LIFETIME),
        );
    }
    let cookie = format!(
        "{UNLOCK_COOKIE}={secret}; Path=/d/{token}; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        UNLOCK_LIFETIME.as_secs()
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `POST /d/<token>/uploads`: a new upload into the link's folder, under
/// the client's file name made plain and free.
pub(crate) async fn tus_create(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let link = app.usable_link(&token, &headers).await?;
    let length = creation_length(&app, &headers)?;
    let allowance = app.allowance(&link).await?;
    if allowance.uploads_left == Some(0) {
        return Err(HttpError::Forbidden(
            "this link has received all the files it may",
        ));
    }
    if allowance.bytes_left.is_some_and(|left| length > left) {
        return Err(HttpError::TooLarge);
    }
    let meta = tus::metadata(&headers)?;
    let wanted = tus::sanitize_name(meta.get("filename").map_or("", String::as_str));
    let session = app.link_session(&link, &conn, true).await?;
    let folder = link.folder_path();
    make_folder(&session, &folder).await?;
    let path = app.uploads.free_name(&session, &folder, &wanted).await?;
    let mut record = app
        .uploads
        .create(&session, &path, length, Some(&link.id))
        .await?;
    let (links, id, upload) = (app.links.clone(), link.id.clone(), record.id.clone());
    tokio::task::spawn_blocking(move || links.count(&id, &upload, length))
        .await
        .map_err(|_| HttpError::Internal)?
        .map_err(|e| HttpError::from(VaultError::from(e)))?;
    let location = format!("/d/{token}/uploads/{}", record.id);
    creation_body(&app, &session, &mut record, &headers, body, &location).await
}

/// Makes `folder` and the folders above it that are missing.
async fn make_folder(session: &LoggedIn, folder: &VPath) -> Result<(), HttpError> {
    let mut at = VPath::root();
    for part in folder.parts() {
        at = VPath::resolve(&at, part).map_err(HttpError::from)?;
        if !tus::is_folder(session, &at).await? {
            match session.mkdir(&at).await {
                Ok(()) | Err(VaultError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// `Upload-Length` of a creation, within `http.max_upload_bytes`.
pub(crate) fn creation_length(app: &App, headers: &HeaderMap) -> Result<u64, HttpError> {
    if headers.contains_key("upload-defer-length") {
        return Err(HttpError::BadRequest(
            "Upload-Defer-Length is not supported",
        ));
    }
    let length = headers
        .get("upload-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or(HttpError::BadRequest("Upload-Length needed"))?;
    if app.uploads.max_file.is_some_and(|max| length > max) {
        return Err(HttpError::TooLarge);
    }
    Ok(length)
}

/// The rest of a creation: an empty file is committed now; data sent
/// with the creation is written (creation-with-upload).
pub(crate) async fn creation_body(
    app: &App,
    session: &LoggedIn,
    record: &mut tus::Record,
    headers: &HeaderMap,
    body: Body,
    location: &str,
) -> Result<Response, HttpError> {
    if record.length == 0 {
        app.uploads.commit_empty(session, record).await?;
        return Ok(tus::created(location, record, Some(0)));
    }
    let with_data = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/offset+octet-stream");
    if !with_data {
        return Ok(tus::created(location, record, None));
    }
    let mut patch_headers = headers.clone();
    patch_headers.insert("upload-offset", HeaderValue::from(0u64));
    match app
        .uploads
        .patch(session, record, &patch_headers, body)
        .await
    {
        Ok(offset) => Ok(tus::created(location, record, Some(offset))),
        // The upload exists; how far its data got, HEAD tells.
        Err(HttpError::BadRequest(_)) => Ok(tus::created(location, record, None)),
        Err(e) => Err(e),
    }
}

/// `HEAD /d/<token>/uploads/<id>`.
pub(crate) async fn tus_head(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let (_, record, session) = app.link_upload(&token, &id, &headers, &conn).await?;
    let offset = app.uploads.offset(&session, &record).await?;
    Ok(tus::head_reply(&record, offset))
}

/// `PATCH /d/<token>/uploads/<id>`.
pub(crate) async fn tus_patch(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (_, mut record, session) = app.link_upload(&token, &id, &headers, &conn).await?;
    let offset = app
        .uploads
        .patch(&session, &mut record, &headers, body)
        .await?;
    Ok(tus::patched(&record, offset))
}

/// `DELETE /d/<token>/uploads/<id>`: the upload goes, and with it what it
/// counted against the link.
pub(crate) async fn tus_delete(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let (link, record, session) = app.link_upload(&token, &id, &headers, &conn).await?;
    if record.done {
        // A link never removes a file it let in.
        return Err(HttpError::Forbidden("the upload is complete"));
    }
    app.uploads.terminate(&session, &record).await?;
    let (links, lid, uid) = (app.links.clone(), link.id.clone(), record.id.clone());
    let _ = tokio::task::spawn_blocking(move || links.uncount(&lid, &uid)).await;
    Ok(tus::terminated())
}
