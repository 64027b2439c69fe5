//! dropvault's HTTPS front end: drop links through which outsiders upload
//! from a browser (tus 1.0 resumable uploads, sealed as they arrive,
//! scanned before commit), and a page where account holders log in to
//! list, download and upload their own files.
//!
//! It runs on the core session layer like FTP and SFTP: a connection is
//! admitted by the [`Gate`] (bans, session limits), an account logs in
//! through it, and a drop link opens a session for its owner
//! ([`Credential::Link`](dropvault_core::session::Credential::Link)).
//! Every upload goes through the vault's pipeline;
//! events say `"protocol": "https"`.
//!
//! Bounds: connections are admitted per client like other sessions; TLS
//! handshakes and request heads must arrive within [`HEAD_TIMEOUT`];
//! request heads are at most [`MAX_HEAD`] bytes; every request but an
//! upload's or a download's body is answered within [`REQUEST_TIMEOUT`];
//! bodies must keep arriving (a piece every 60 s); requests per address
//! and per link are rate-limited; sessions, unlocked links and open
//! uploads are bounded tables with idle expiry.

mod account;
mod error;
mod links;
mod tus;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use dropvault_core::guard::ClientId;
use dropvault_core::links::Links;
use dropvault_core::session::{Gate, LoggedIn, Peer, Protocol};
use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::error::HttpError;

/// Largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 32 * 1024;
/// Time for a TLS handshake, and for a request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to answer a request that carries no file.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle account session lasts.
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Account sessions at once, at most.
const MAX_SESSIONS: usize = 4096;
/// How long a link's password unlocks it in a browser.
const UNLOCK_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Unlocked links at once, at most.
const MAX_UNLOCKED: usize = 16384;
/// How long a link's session (its owner's unlocked vault) is kept idle.
const LINK_SESSION_IDLE: Duration = Duration::from_secs(60);
/// Link sessions at once, at most.
const MAX_LINK_SESSIONS: usize = 1024;
/// How often idle sessions and open uploads are looked at.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Every how many sweeps upload records are (every 10 minutes).
const RECORD_SWEEP_EVERY: u64 = 40;
/// Requests per second per address, and the burst allowed.
const ADDRESS_RATE: (u32, u32) = (50, 200);
/// Requests per second per link, and the burst allowed.
const LINK_RATE: (u32, u32) = (20, 100);

/// Settings of the HTTPS front end.
#[derive(Clone, Debug, Default)]
pub struct HttpConfig {
    /// Largest file one upload may have (`None`: only quotas limit it).
    pub max_upload_bytes: Option<u64>,
}

/// A link's id and a client using it.
type LinkClient = (String, ClientId);

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// The connection a request came on.
#[derive(Clone, Copy, Debug)]
struct Conn {
    addr: SocketAddr,
    client: ClientId,
}

impl Conn {
    fn peer(&self) -> Peer {
        Peer {
            protocol: Protocol::Https,
            addr: self.addr,
            client: self.client,
            encrypted: true,
        }
    }
}

/// A logged-in account holder's browser session.
struct WebSession {
    user: Arc<LoggedIn>,
    last: Instant,
}

/// The front end's shared state.
struct App {
    gate: Arc<Gate>,
    links: Links,
    uploads: tus::Uploads,
    /// Account sessions by the SHA-256 of their cookie.
    sessions: Mutex<HashMap<String, WebSession>>,
    /// Unlocked links by the SHA-256 of their cookie: link id, until when.
    unlocked: Mutex<HashMap<String, (String, Instant)>>,
    /// Sessions of links' owners, per link and client.
    link_sessions: Mutex<HashMap<LinkClient, (Arc<LoggedIn>, Instant)>>,
    per_address: Keyed<ClientId>,
    per_link: Keyed<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn quota((rate, burst): (u32, u32)) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// SHA-256 of `secret`, hex: how tables key cookies.
fn hashed(secret: &str) -> String {
    dropvault_core::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes()).as_ref(),
    )
}

/// A new random cookie value (256 bits, hex).
fn new_secret() -> Result<String, HttpError> {
    dropvault_core::random_hex(32).map_err(|_| HttpError::Internal)
}

/// The value of cookie `name` in `headers`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl App {
    /// Checks the per-address rate and the ban list.
    fn admit_request(&self, conn: &Conn) -> Result<(), HttpError> {
        if self.gate.guard().is_banned(conn.client) {
            return Err(HttpError::Forbidden(
                "too many failed logins from this address",
            ));
        }
        if let Err(wait) = self.per_address.check_key(&conn.client) {
            let secs = wait
                .wait_time_from(governor::clock::Clock::now(&DefaultClock::default()))
                .as_secs()
                + 1;
            return Err(HttpError::TooMany(secs));
        }
        Ok(())
    }

    /// Drops idle sessions, unlocks, link sessions and open uploads, and
    /// with `records`, expired upload records (taking them off their
    /// links' counts: reading every record is for now and then).
    async fn sweep(&self, records: bool) {
        let now = Instant::now();
        let gone: Vec<WebSession> = {
            let mut s = lock(&self.sessions);
            let stale: Vec<String> = s
                .iter()
                .filter(|(_, v)| now.duration_since(v.last) >= SESSION_IDLE)
                .map(|(k, _)| k.clone())
                .collect();
            stale.iter().filter_map(|k| s.remove(k)).collect()
        };
        drop(gone);
        lock(&self.unlocked).retain(|_, (_, until)| *until > now);
        let gone: Vec<Arc<LoggedIn>> = {
            let mut s = lock(&self.link_sessions);
            let stale: Vec<LinkClient> = s
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) >= LINK_SESSION_IDLE)
                .map(|(k, _)| k.clone())
                .collect();
            stale
                .iter()
                .filter_map(|k| s.remove(k).map(|(u, _)| u))
                .collect()
        };
        drop(gone);
        self.per_address.retain_recent();
        self.per_link.retain_recent();
        for record in self.uploads.sweep(records).await {
            if let (Some(link), false) = (&record.link, record.done) {
                let (links, link, id) = (self.links.clone(), link.clone(), record.id.clone());
                let _ = tokio::task::spawn_blocking(move || links.uncount(&link, &id)).await;
            }
        }
    }
}

/// Serves HTTPS on `listener` with `tls` (its ALPN set here to HTTP/1.1)
/// until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gate: Arc<Gate>,
    config: HttpConfig,
    stop: impl Future<Output = ()>,
) {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let storage = gate.services().vault.storage().clone();
    // Reads the unfinished uploads' records (storage calls block).
    let (records, max) = (storage.clone(), config.max_upload_bytes);
    let Ok(uploads) = tokio::task::spawn_blocking(move || tus::Uploads::new(records, max)).await
    else {
        tracing::error!("https: the upload records could not be read");
        return;
    };
    let app = Arc::new(App {
        links: Links::new(storage),
        uploads,
        gate,
        sessions: Mutex::default(),
        unlocked: Mutex::default(),
        link_sessions: Mutex::default(),
        per_address: RateLimiter::keyed(quota(ADDRESS_RATE)),
        per_link: RateLimiter::keyed(quota(LINK_RATE)),
    });
    let router = router(app.clone());
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            for n in 0u64.. {
                tick.tick().await;
                app.sweep(n % RECORD_SWEEP_EVERY == 0).await;
            }
        })
    };
    tokio::pin!(stop);
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "https: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Bans and session limits, as for FTP and SFTP connections.
        let admission = match app.gate.admit(addr.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                tracing::info!(event = "connection_refused", protocol = "https", peer = %addr,
                    reason = %refusal);
                continue;
            }
        };
        dropvault_core::session::keepalive(&tcp);
        let conn = Conn {
            addr,
            client: admission.client(),
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(conn);
                    let router = router.clone();
                    async move {
                        use tower::ServiceExt as _;
                        router.oneshot(req.map(axum::body::Body::new)).await
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(admission);
        });
    }
    sweeper.abort();
}

fn router(app: Arc<App>) -> Router {
    use axum::routing::head;
    let uploads_one = || {
        head(links::tus_head)
            .patch(links::tus_patch)
            .delete(links::tus_delete)
            .options(tus_options)
    };
    Router::new()
        .route("/", get(account::page))
        .route("/assets/drop.js", get(assets::script))
        .route("/assets/style.css", get(assets::style))
        .route("/d/{token}", get(links::page))
        .route("/d/{token}/info", get(links::info))
        .route("/d/{token}/unlock", post(links::unlock))
        .route(
            "/d/{token}/uploads",
            post(links::tus_create).options(tus_options),
        )
        .route("/d/{token}/uploads/{id}", uploads_one())
        .route("/api/login", post(account::login))
        .route("/api/logout", post(account::logout))
        .route("/api/session", get(account::session))
        .route("/api/files", get(account::files))
        .route("/files/{*path}", get(account::download))
        .route("/uploads", post(account::tus_create).options(tus_options))
        .route(
            "/uploads/{id}",
            head(account::tus_head)
                .patch(account::tus_patch)
                .delete(account::tus_delete)
                .options(tus_options),
        )
        .fallback(|| async { HttpError::NotFound })
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

/// `OPTIONS` of every tus endpoint: what the server supports.
async fn tus_options(axum::extract::State(app): axum::extract::State<Arc<App>>) -> Response {
    tus::options(app.uploads.max_file)
}

/// Rate limits and bans on every request; a deadline on those without a
/// file body.
async fn guard(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let (req, body) = match has_body(req.headers()) {
        true => {
            let (req, body) = shared_body(req);
            (req, Some(body))
        }
        false => (req, None),
    };
    let mut response = answer(&app, req, next).await;
    // A refusal sent before the body was read: what is left of the body
    // is read and dropped (up to a bound), so closing or reusing the
    // connection does not reset it under the reply.
    if let Some(body) = body {
        if !response.status().is_success() && !drain(&body).await {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

async fn answer(app: &App, req: Request, next: Next) -> Response {
    let Some(conn) = req.extensions().get::<Conn>().copied() else {
        return HttpError::Internal.into_response();
    };
    if let Err(e) = app.admit_request(&conn) {
        return e.into_response();
    }
    let streams = matches!(
        *req.method(),
        axum::http::Method::PATCH | axum::http::Method::POST
    ) || req.uri().path().starts_with("/files/");
    if streams {
        next.run(req).await
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
            Ok(r) => r,
            Err(_) => HttpError::Unavailable.into_response(),
        }
    }
}

/// Most of a refused request's body read and dropped before the reply.
const DRAIN_LIMIT: usize = 4 << 20;
/// Time allowed for that.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A request body that the handler reads and, after the reply is made,
/// [`drain`] can finish reading.
type SharedBody = Arc<tokio::sync::Mutex<axum::body::Body>>;

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `req` with its body read through a [`SharedBody`].
fn shared_body(req: Request) -> (Request, SharedBody) {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let shared: SharedBody = Arc::new(tokio::sync::Mutex::new(body));
    let stream = futures_util::stream::unfold(shared.clone(), |src| async move {
        loop {
            let next = src.lock().await.frame().await;
            match next {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), src));
                    }
                }
                Some(Err(e)) => return Some((Err(e), src)),
                None => return None,
            }
        }
    });
    let body = axum::body::Body::from_stream(stream);
    (Request::from_parts(parts, body), shared)
}

/// Reads what is left of `body`, at most [`DRAIN_LIMIT`] bytes within
/// [`DRAIN_TIME`]; whether it reached the end.
async fn drain(body: &SharedBody) -> bool {
    use http_body_util::BodyExt as _;
    let Ok(mut body) = body.try_lock() else {
        return false;
    };
    let mut left = DRAIN_LIMIT;
    let read = async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let n = frame.data_ref().map_or(0, |d| d.len());
                    match left.checked_sub(n) {
                        Some(l) => left = l,
                        None => return false,
                    }
                }
                Some(Err(_)) => return false,
                None => return true,
            }
        }
    };
    tokio::time::timeout(DRAIN_TIME, read)
        .await
        .unwrap_or(false)
}

/// The headers every reply carries: a strict Content-Security-Policy (the
/// pages load one script and one style sheet of ours, nothing else), no
/// framing, no sniffing, no referrer, HSTS.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

/// The page, script and style sheet, built into the binary.
mod assets {
    use axum::http::header;
    use axum::response::{IntoResponse, Response};

    pub(crate) const DROP_HTML: &str = include_str!("../assets/drop.html");
    pub(crate) const ACCOUNT_HTML: &str = include_str!("../assets/account.html");
    const SCRIPT: &str = include_str!("../assets/drop.js");
    const STYLE: &str = include_str!("../assets/style.css");

    pub(crate) fn html(page: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page,
        )
            .into_response()
    }

    pub(crate) async fn script() -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            SCRIPT,
        )
            .into_response()
    }

    pub(crate) async fn style() -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            STYLE,
        )
            .into_response()
    }
}
