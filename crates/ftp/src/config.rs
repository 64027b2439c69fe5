//! The FTP front end's settings. Session limits, bans and the failed-login
//! delay are the [`dropvault_core::session::Gate`]'s, shared by every front
//! end.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Whether and how TLS is offered on the control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS; `AUTH TLS` is refused.
    Off,
    /// Clients may upgrade with `AUTH TLS` (and implicit FTPS is available
    /// when its listener is configured).
    Optional,
    /// Login is refused before `AUTH TLS`, and data transfers without
    /// `PROT P`.
    Required,
}

/// Settings of the FTP front end. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct FtpConfig {
    /// TLS on the control connection.
    pub tls: TlsMode,
    /// Whether a `PROT P` data connection must resume the control
    /// connection's TLS session.
    pub tls_session_reuse_required: bool,
    /// Passive data ports, inclusive.
    pub passive_ports: (u16, u16),
    /// Address announced in `PASV` replies; `None` = the control
    /// connection's local address.
    pub passive_address: Option<Ipv4Addr>,
    /// Whether `PORT`/`EPRT` (server connects to the client) is allowed.
    pub active_mode: bool,
    /// A session with no command for this long is closed.
    pub idle_timeout: Duration,
    /// A data connection that moves no byte for this long is aborted, and
    /// its session closed. Waits for a data connection to be made, and
    /// unused passive listeners, end after this or 30 s, whichever is less.
    pub data_timeout: Duration,
    /// A session that has not logged in this long after connecting is
    /// closed.
    pub login_timeout: Duration,
    /// Failed logins after which a session is closed.
    pub max_login_failures: usize,
    /// On shutdown, how long transfers in flight may run before they are cut.
    pub drain_grace: Duration,
    /// Most entries a listing (LIST, NLST, MLSD, STAT of a folder) shows;
    /// a folder with more gets that many and a reply saying it was cut.
    pub max_listing_entries: usize,
}

impl Default for FtpConfig {
    fn default() -> Self {
        Self {
            tls: TlsMode::Optional,
            tls_session_reuse_required: true,
            passive_ports: (50000, 50100),
            passive_address: None,
            active_mode: true,
            idle_timeout: Duration::from_secs(600),
            data_timeout: Duration::from_secs(300),
            login_timeout: Duration::from_secs(30),
            max_login_failures: 3,
            drain_grace: Duration::from_secs(30),
            max_listing_entries: 100_000,
        }
    }
}

impl FtpConfig {
    /// How long to wait for a data connection to be made (and a TLS
    /// handshake on it), and how long a passive listener stays open unused.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.data_timeout.min(Duration::from_secs(30))
    }
}
