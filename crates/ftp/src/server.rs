//! The listener loop: admits connections (session limits, bans), runs one
//! task per session, and drains on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use dropvault_core::session::{Gate, Refusal};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::FtpConfig;
use crate::session::{self, Shared};

/// The sockets a server listens on. Tests bind port 0 and pass them in.
#[derive(Debug)]
pub struct Listeners {
    /// Plain FTP, with explicit TLS (`AUTH TLS`) when enabled.
    pub control: TcpListener,
    /// Implicit FTPS: TLS from the first byte.
    pub implicit_tls: Option<TcpListener>,
}

/// Runs the FTP server until `shutdown` completes, then drains: no new
/// sessions, idle sessions are told 421 and closed, transfers in flight may
/// finish within `drain_grace`, after which the rest are cut. Every session
/// releases its user's key on the way out, whichever way it ends.
///
/// Admission and login go through `gate`, which other front ends of the
/// same server share (one table of sessions and bans). `tls` is the
/// certificate's configuration; `None` when TLS is off.
pub async fn serve(
    config: FtpConfig,
    gate: Arc<Gate>,
    tls: Option<Arc<rustls::ServerConfig>>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let grace = config.drain_grace;
    // Sessions of ended control connections stay resumable for clients
    // that still hold them (a shared client cache): as many connections'
    // as the server may have at once, at least 1024.
    let tls_sessions = Arc::new(crate::tls::SessionCache::new(
        gate.config().max_sessions.max(1024),
    ));
    let shared = Arc::new(Shared {
        config,
        gate,
        tls,
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
    dropvault_core::session::keepalive(&stream);
    let admission = match shared.gate.admit(peer.ip()) {
        Ok(a) => a,
        Err(refusal) => {
            let why = match refusal {
                Refusal::Banned => "Too many failed logins from your address; try again later.",
                Refusal::Full => "Too many sessions; try again later.",
                Refusal::FullForClient => "Too many sessions from your address.",
            };
            tracing::info!(event = "refused", %peer, reason = why);
            if !implicit {
                let _ = stream.write_all(format!("421 {why}\r\n").as_bytes()).await;
            }
            return;
        }
    };
    session::run(shared, stream, peer, implicit, admission).await;
}
