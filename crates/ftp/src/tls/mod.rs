//! TLS for the control and data connections (rustls with the aws-lc-rs
//! provider).
//!
//! - [`cert`]: the certificate — loaded, or generated self-signed in the
//!   data folder and renewed there, and its fingerprint.
//! - `sessions`: which TLS sessions a data connection may resume (the rule
//!   is written out there and in docs/SECURITY.md).
//! - [`SessionTls`]: one control connection's TLS configurations, for itself
//!   and for its data connections.

pub mod cert;
mod sessions;

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use cert::{CertFiles, CertSummary, Renewal};
pub(crate) use sessions::{canonical_ip, DataSessions, SessionCache};
use sessions::{Control, ControlSessions};

/// TLS 1.3 tickets sent on a control connection.
const CONTROL_TICKETS: usize = 2;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        source: io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating a self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// The server's certificate and key, replaceable while it runs: handshakes
/// after [`ServerCert::reload`] present the new pair, connections already
/// up keep the one they started with.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// The certificate and key in `files`.
    pub fn load(files: &CertFiles) -> Result<Arc<Self>, TlsSetupError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified_key(files)?),
        }))
    }

    /// Replaces the pair with the one in `files` now; on failure the old
    /// one stays.
    pub fn reload(&self, files: &CertFiles) -> Result<(), TlsSetupError> {
        let new = certified_key(files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// The certificate chain and key in `files`, checked to belong together.
fn certified_key(files: &CertFiles) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(cert::pem_error(&files.cert))?
        .collect::<Result<_, _>>()
        .map_err(cert::pem_error(&files.cert))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: files.cert.display().to_string(),
            reason: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(cert::pem_error(&files.key))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider)?))
}

/// Builds the server's TLS configuration around `cert` (see
/// [`cert::ensure_self_signed`] for the generated pair).
pub fn server_config(cert: Arc<ServerCert>) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Ok(Arc::new(config))
}

/// The TLS configurations of one control connection and its data
/// connections. Dropping it ends the control connection as an issuer of
/// sessions.
#[derive(Debug)]
pub(crate) struct SessionTls {
    control: Arc<ServerConfig>,
    /// The server's configuration; each data connection gets a copy.
    base: Arc<ServerConfig>,
    issuer: Arc<Control>,
}

impl SessionTls {
    /// For a control connection from `peer`.
    pub(crate) fn new(base: &Arc<ServerConfig>, cache: &Arc<SessionCache>, peer: IpAddr) -> Self {
        let issuer = cache.control(peer);
        let mut control = ServerConfig::clone(base);
        control.session_storage = Arc::new(ControlSessions(issuer.clone()));
        control.send_tls13_tickets = CONTROL_TICKETS;
        Self {
            control: Arc::new(control),
            base: base.clone(),
            issuer,
        }
    }

    /// The control connection's configuration.
    pub(crate) fn control(&self) -> Arc<ServerConfig> {
        self.control.clone()
    }

    /// The control connection logged in as `user`.
    pub(crate) fn logged_in(&self, user: &str) {
        self.issuer.logged_in(user);
    }

    /// A configuration for one data connection of `user`'s. Whether the
    /// handshake resumed an acceptable session is decided after it, by
    /// [`DataSessions::accept_resumption`]; until then the sessions it
    /// issues admit nobody, and if it is refused they never will.
    ///
    /// `sends` says whether the server sends on this connection (a
    /// download or listing). Only then does it carry a TLS 1.3 ticket: a
    /// client that only writes never reads it, and closing a socket with
    /// unread data sends a reset that can destroy the client's last bytes
    /// and close_notify before the server reads them.
    pub(crate) fn data(&self, user: &str, sends: bool) -> (Arc<ServerConfig>, Arc<DataSessions>) {
        let sessions = Arc::new(DataSessions::new(self.issuer.clone(), user.to_owned()));
        let mut config = ServerConfig::clone(&self.base);
        config.session_storage = sessions.clone();
        // A fresh ticket per resumed download, for clients that use each
        // TLS 1.3 ticket only once (curl with OpenSSL does).
        config.send_tls13_tickets = usize::from(sends);
        (Arc::new(config), sessions)
    }
}

impl Drop for SessionTls {
    fn drop(&mut self) {
        self.issuer.ended();
    }
}
