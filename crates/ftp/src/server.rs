//! The listener loop: admits connections (session limits, bans), runs one
//! task per session, and drains on shutdown.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

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
    bans: Mutex<HashMap<IpAddr, BanState>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Password checks running at once. argon2id takes 19 MiB and a core's
    /// worth of work per check: more at a time than cores only adds memory
    /// and lets a login flood starve everything else.
    pub(crate) logins: tokio::sync::Semaphore,
    /// Every TLS session this server issued, and to whom.
    pub(crate) tls_sessions: Arc<crate::tls::SessionCache>,
}

#[derive(Debug, Default)]
struct Limits {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, Default)]
struct BanState {
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

/// A session's place in the limits, given back when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut l = self
            .shared
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        l.total = l.total.saturating_sub(1);
        if let Some(n) = l.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                l.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// Admits a new connection from `ip`, or says why not (as an FTP reply
    /// text for a 421).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, &'static str> {
        if self.is_banned(ip) {
            return Err("Too many failed logins from your address; try again later.");
        }
        let mut l = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        if l.total >= self.config.max_sessions {
            return Err("Too many sessions; try again later.");
        }
        let n = l.per_ip.entry(ip).or_default();
        if *n >= self.config.max_sessions_per_ip {
            return Err("Too many sessions from your address.");
        }
        *n += 1;
        l.total += 1;
        Ok(Admission {
            shared: self.clone(),
            ip,
        })
    }

    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        match bans.get(&ip).and_then(|b| b.banned_until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                bans.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Records a failed login; returns true when the address is now banned.
    pub(crate) fn login_failed(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        // Keep the table from growing without bound under a spray of
        // addresses: forget entries with nothing recent.
        if bans.len() > 100_000 {
            let window = self.config.ban_window;
            bans.retain(|_, b| {
                b.banned_until.is_some_and(|u| u > now)
                    || b.failures
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let b = bans.entry(ip).or_default();
        while b
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.config.ban_window)
        {
            b.failures.pop_front();
        }
        b.failures.push_back(now);
        if b.failures.len() >= self.config.ban_after_failures {
            b.failures.clear();
            b.banned_until = Some(now + self.config.ban_duration);
            return true;
        }
        false
    }

    /// Forgets failures after a successful login.
    pub(crate) fn login_succeeded(&self, ip: IpAddr) {
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        if bans.get(&ip).is_some_and(|b| b.banned_until.is_none()) {
            bans.remove(&ip);
        }
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
        config,
        services,
        limits: Mutex::new(Limits::default()),
        bans: Mutex::new(HashMap::new()),
        shutdown: rx,
        logins: tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        ),
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
