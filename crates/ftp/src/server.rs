//! The listener loop: admits connections (session limits, bans), runs one
//! task per session, and drains on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use dropvault_core::guard::{ClientId, Guard, GuardConfig};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{FtpConfig, Services};
use crate::session;

/// The sockets a server listens on. Tests bind port 0 and pass them in.
#[derive(Debug)]
pub struct Listeners {
    /// Plain FTP, with explicit TLS (`AUTH TLS`) when enabled.
    pub control: TcpListener,
    /// Implicit FTPS: TLS from the first byte.
    pub implicit_tls: Option<TcpListener>,
}

/// State shared by all sessions of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: FtpConfig,
    pub(crate) services: Services,
    limits: Mutex<Limits>,
    /// Failed logins, bans and the guess budget of each client.
    pub(crate) guard: Arc<Guard>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Every TLS session this server issued, and to whom.
    pub(crate) tls_sessions: Arc<crate::tls::SessionCache>,
}

#[derive(Debug, Default)]
struct Limits {
    total: usize,
    per_client: HashMap<ClientId, usize>,
}

/// A session's place in the limits, given back when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    shared: Arc<Shared>,
    client: ClientId,
}

impl Admission {
    /// The client the session counts against.
    pub(crate) fn client(&self) -> ClientId {
        self.client
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut l = self
            .shared
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        l.total = l.total.saturating_sub(1);
        if let Some(n) = l.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                l.per_client.remove(&self.client);
            }
        }
    }
}

impl Shared {
    /// Admits a new connection from `ip`, or says why not (as an FTP reply
    /// text for a 421).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, &'static str> {
        let client = ClientId::new(ip, self.config.ban_ipv6_prefix);
        if self.guard.is_banned(client) {
            return Err("Too many failed logins from your address; try again later.");
        }
        let mut l = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        if l.total >= self.config.max_sessions {
            return Err("Too many sessions; try again later.");
        }
        let n = l.per_client.entry(client).or_default();
        if *n >= self.config.max_sessions_per_ip {
            return Err("Too many sessions from your address.");
        }
        *n += 1;
        l.total += 1;
        Ok(Admission {
            shared: self.clone(),
            client,
        })
    }
}

/// Runs the FTP server until `shutdown` completes, then drains: no new
/// sessions, idle sessions are told 421 and closed, transfers in flight may
/// finish within `drain_grace`, after which the rest are cut. Every session
/// releases its user's key on the way out, whichever way it ends.
pub async fn serve(
    config: FtpConfig,
    services: Services,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let grace = config.drain_grace;
    // Sessions of ended control connections stay resumable for clients
    // that still hold them (a shared client cache): as many connections'
    // as the server may have at once, at least 1024.
    let tls_sessions = Arc::new(crate::tls::SessionCache::new(config.max_sessions.max(1024)));
    let shared = Arc::new(Shared {
        guard: Arc::new(Guard::new(GuardConfig {
            ban_after_failures: config.ban_after_failures,
            window: config.ban_window,
            ban_duration: config.ban_duration,
        })),
        config,
        services,
        limits: Mutex::new(Limits::default()),
        shutdown: rx,
        tls_sessions,
    });
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    let Listeners {
        control,
        implicit_tls,
    } = listeners;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = control.accept() => r.map(|(s, a)| (s, a, false)),
            r = accept_opt(implicit_tls.as_ref()) => r.map(|(s, a)| (s, a, true)),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer, implicit) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: log, pause briefly, carry on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tasks.spawn(async move { start(shared, stream, peer, implicit).await });
    }
    tracing::info!(sessions = tasks.len(), "shutting down: draining sessions");
    drop(control);
    drop(implicit_tls);
    let _ = tx.send(true);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                tracing::warn!(sessions = tasks.len(), "drain grace period over: cutting sessions");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
    Ok(())
}

async fn accept_opt(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn start(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, implicit: bool) {
    let _ = stream.set_nodelay(true);
    crate::session::keepalive(&stream);
    let admission = match shared.admit(peer.ip()) {
        Ok(a) => a,
        Err(why) => {
            tracing::info!(event = "refused", %peer, reason = why);
            if !implicit {
                let _ = stream.write_all(format!("421 {why}\r\n").as_bytes()).await;
            }
            return;
        }
    };
    session::run(shared, stream, peer, implicit, admission).await;
}
