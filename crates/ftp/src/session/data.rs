//! The data channel: passive listeners on the configured port range that
//! take a connection only from the control connection's peer, active
//! connections only to that peer (no FTP bounce), and TLS on top with the
//! session-reuse check.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use super::stream::Stream;

/// How the next data connection will be made.
#[derive(Debug, Default)]
pub(crate) enum DataPlan {
    /// Neither PASV/EPSV nor PORT/EPRT since the last transfer.
    #[default]
    None,
    /// The client connects to this listener, which closes unused at
    /// `expires`.
    Passive {
        listener: TcpListener,
        expires: tokio::time::Instant,
    },
    /// The server connects to this client address.
    Active(SocketAddr),
}

impl DataPlan {
    /// When an unused passive listener closes; `None` for other plans.
    pub(crate) fn expires(&self) -> Option<tokio::time::Instant> {
        match self {
            DataPlan::Passive { expires, .. } => Some(*expires),
            _ => None,
        }
    }
}

/// Why a data connection could not be made; each maps to a reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataError {
    #[error("no PASV, EPSV, PORT or EPRT before the transfer")]
    NoPlan,
    #[error("no data connection within the time limit")]
    Timeout,
    #[error("data connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake on the data connection: {0}")]
    Tls(std::io::Error),
    #[error("data connection did not resume a TLS session of this login")]
    NoSessionReuse,
}

/// TLS requirements for one data connection.
pub(crate) struct DataTls {
    /// A data-connection configuration of this control connection, and its
    /// view of the control connection's sessions.
    pub(crate) config: (Arc<rustls::ServerConfig>, Arc<crate::tls::DataSessions>),
    /// Whether the handshake must resume a session of this user's client.
    pub(crate) require_resumption: bool,
    /// Whether the client sends on this connection (an upload).
    pub(crate) upload: bool,
}

/// Binds a passive listener on a free port of `range`, on `ip`.
pub(crate) async fn bind_passive(ip: IpAddr, range: (u16, u16)) -> std::io::Result<TcpListener> {
    let (lo, hi) = range;
    let span = u32::from(hi.saturating_sub(lo)) + 1;
    let mut r = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let start = u32::from_le_bytes(r) % span;
    let mut last_err = None;
    for i in 0..span {
        let Ok(port) = u16::try_from(u32::from(lo) + (start + i) % span) else {
            continue;
        };
        let sock = match ip {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // Ports of finished transfers sit in TIME_WAIT for a minute; without
        // this a small range runs dry after as many transfers.
        sock.set_reuseaddr(true)?;
        match sock.bind(SocketAddr::new(ip, port)) {
            Ok(()) => return sock.listen(1),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no passive port free")))
}

/// Makes the data connection as planned, then TLS if asked.
pub(crate) async fn open(
    plan: DataPlan,
    peer_ip: IpAddr,
    timeout: Duration,
    tls: Option<DataTls>,
) -> Result<Stream, DataError> {
    let tcp = match plan {
        DataPlan::None => return Err(DataError::NoPlan),
        DataPlan::Passive { listener, .. } => {
            tokio::time::timeout(timeout, accept_from(&listener, peer_ip))
                .await
                .map_err(|_| DataError::Timeout)??
        }
        DataPlan::Active(addr) => {
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| DataError::Timeout)??
        }
    };
    let _ = tcp.set_nodelay(true);
    dropvault_core::session::keepalive(&tcp);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let (config, sessions) = tls.config;
    let acceptor = TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => return Err(DataError::Timeout),
        Ok(Ok(stream)) => stream,
        // Node's TLS sockets (basic-ftp) may close an upload with no data
        // before their last handshake message goes out. A connection that
        // presented a session of this login (a ticket or session id, which
        // only the client and someone watching its connections have seen)
        // and then closed is an upload of nothing: the same as a bare close
        // right after the handshake (docs/SECURITY.md, "Data connections").
        Ok(Err(e))
            if tls.upload
                && e.kind() == std::io::ErrorKind::UnexpectedEof
                && sessions.accept_resumption(timeout).await =>
        {
            tracing::info!(event = "data_closed_in_handshake", peer = %peer_ip,
                "upload data connection closed during a resumed TLS handshake: no data");
            return Ok(Stream::Ended);
        }
        Ok(Err(e)) => return Err(DataError::Tls(e)),
    };
    // Resumed, and of a session this user's client was issued at this
    // address (crate::tls::sessions has the rule).
    let kind = stream.get_ref().1.handshake_kind();
    let resumed =
        kind == Some(rustls::HandshakeKind::Resumed) && sessions.accept_resumption(timeout).await;
    if !resumed && tls.require_resumption {
        tracing::warn!(event = "data_tls_refused", peer = %peer_ip,
            handshake = if kind == Some(rustls::HandshakeKind::Resumed) {
                "resumed a session of another client"
            } else {
                "full handshake"
            },
            "data connection did not resume a TLS session of this user's client");
        return Err(DataError::NoSessionReuse);
    }
    Ok(Stream::Tls(Box::new(stream)))
}

/// Accepts the first connection that comes from the control connection's
/// peer; connections from anywhere else are closed and logged.
async fn accept_from(
    listener: &TcpListener,
    peer_ip: IpAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    loop {
        let (s, from) = listener.accept().await?;
        if from.ip() == peer_ip {
            return Ok(s);
        }
        tracing::warn!(event = "data_connection_refused", %from, expected = %peer_ip,
            "data connection from another address than the control connection");
        drop(s);
    }
}
