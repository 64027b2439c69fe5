//! The admin listener (`[admin]`): `/metrics` in the Prometheus text
//! format, `/healthz` and `/readyz`, over plain HTTP/1.1.
//!
//! Bounded like the front ends: at most [`MAX_CONNECTIONS`] connections
//! (more are closed at once), a request head of at most [`MAX_HEAD`] bytes
//! read within [`HEAD_TIMEOUT`], every request answered within
//! [`REQUEST_TIMEOUT`] and every connection closed after
//! [`CONNECTION_TIMEOUT`]. With a token file, every path needs
//! `Authorization: Bearer <token>`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dropvault_core::keys::Keyring;
use dropvault_core::vault::Vault;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use zeroize::Zeroizing;

use crate::AnyError;

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers), in bytes.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Time to read a request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to answer a request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Life of a connection.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Time each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a readiness verdict is reused.
const READY_CACHE: Duration = Duration::from_secs(5);
/// Longest token file read.
const MAX_TOKEN: u64 = 4096;

/// What `/readyz` checks.
#[derive(Debug)]
pub(crate) struct Probes {
    /// The key provider's status is asked.
    pub(crate) keyring: Arc<Keyring>,
    /// The storage lists its top folder; its scanner (the one in force,
    /// reloads included), if it has clamd, is pinged.
    pub(crate) vault: Arc<Vault>,
}

/// The listener's shared state.
#[derive(Debug)]
struct Admin {
    token: Option<Zeroizing<Vec<u8>>>,
    probes: Probes,
    /// The last readiness verdict: the names of what failed, and when.
    ready: Mutex<Option<(Instant, Vec<&'static str>)>>,
}

/// Reads the bearer token from `path`: its first line, without
/// surrounding white space; an empty one is refused.
pub(crate) fn read_token(path: &Path) -> Result<Zeroizing<Vec<u8>>, AnyError> {
    use std::io::Read as _;
    let mut raw = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN).read_to_end(&mut raw))
        .map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
    let line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let token = Zeroizing::new(line.trim_ascii().to_vec());
    if token.is_empty() {
        return Err(format!("admin.token_file {}: no token in it", path.display()).into());
    }
    Ok(token)
}

/// Serves `listener` until `stop` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    token: Option<Zeroizing<Vec<u8>>>,
    probes: Probes,
    stop: impl Future<Output = ()>,
) {
    let state = Arc::new(Admin {
        token,
        probes,
        ready: Mutex::new(None),
    });
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(deadline))
        .with_state(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap: closed unanswered.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

/// Answers 503 to a request not answered within [`REQUEST_TIMEOUT`].
async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}

/// Answers 401 unless the request carries the token (when there is one).
async fn authorize(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    match &admin.token {
        Some(token) if !bearer_matches(req.headers(), token) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

/// Whether `headers` hold `Authorization: Bearer <token>`, compared in
/// constant time.
fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| {
            aws_lc_rs::constant_time::verify_slices_are_equal(given, token).is_ok()
        })
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        dropvault_core::metrics::metrics().encode(),
    )
        .into_response()
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let failing = admin.failing().await;
    let (status, body) = if failing.is_empty() {
        (StatusCode::OK, serde_json::json!({ "ready": true }))
    } else {
        let reason = format!("{} unavailable", failing.join(", "));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "failing": failing, "reason": reason }),
        )
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

impl Admin {
    /// What is not ready: the cached verdict while fresh, else checked
    /// anew. Concurrent requests wait for one check.
    async fn failing(&self) -> Vec<&'static str> {
        let mut cached = self.ready.lock().await;
        if let Some((at, failing)) = cached.as_ref() {
            if at.elapsed() < READY_CACHE {
                return failing.clone();
            }
        }
        let p = &self.probes;
        let keyring = p.keyring.clone();
        let vault = p.vault.clone();
        let scanner = p.vault.scanner();
        let (key, storage, scan) = tokio::join!(
            check("key service", move || keyring
                .provider()
                .status()
                .map(drop)
                .map_err(|e| e.to_string())),
            check("storage", move || vault.probe().map_err(|e| e.to_string())),
            check("scanner", move || match scanner {
                Some(s) => s.ping().map_err(|e| e.to_string()),
                None => Ok(()),
            }),
        );
        let failing: Vec<_> = [key, storage, scan].into_iter().flatten().collect();
        *cached = Some((Instant::now(), failing.clone()));
        failing
    }
}

/// Runs `probe` off the async runtime for at most [`CHECK_TIMEOUT`]:
/// `Some(name)` if it failed (why is logged, not answered).
async fn check(
    name: &'static str,
    probe: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Option<&'static str> {
    let why = match tokio::time::timeout(CHECK_TIMEOUT, tokio::task::spawn_blocking(probe)).await {
        Ok(Ok(Ok(()))) => return None,
        Ok(Ok(Err(e))) => e,
        Ok(Err(_)) => "the check stopped".to_owned(),
        Err(_) => format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
    };
    tracing::warn!(event = "not_ready", check = name, reason = %why, "readiness check failed");
    Some(name)
}

/// Binds `addr` and says where, the way the front ends do; warns when the
/// address is not loopback and there is no token.
pub(crate) async fn bind(addr: SocketAddr, has_token: bool) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() && !has_token {
        tracing::warn!(admin = %bound,
            "admin listener on a non-loopback address without admin.token_file: \
             anyone who can reach it reads the metrics");
    }
    tracing::info!(event = "listening", admin = %bound);
    crate::println_safe(&format!("dropvault: admin on {bound}"));
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header"));
        h
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(bearer_matches(&headers("Bearer s3cret"), b"s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3cretx"), b"s3cret"));
        assert!(!bearer_matches(&headers("Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), b"s3cret"));
    }

    #[test]
    fn token_file_first_line_trimmed_and_not_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "  abc \nignored\n").expect("write");
        assert_eq!(read_token(&p).expect("token").as_slice(), b"abc");
        std::fs::write(&p, "\n").expect("write");
        assert!(read_token(&p).is_err());
    }
}
