//! TLS for the control and data connections (rustls with the aws-lc-rs
//! provider): certificate loading or self-signed generation, and the check
//! that a data connection resumed its own control connection's TLS session.
//!
//! How the check works: each control connection gets its own session store,
//! shared only with its own data connections. A data connection whose
//! handshake is a resumption can only have resumed a session of that store,
//! that is, of its own control connection; a fresh handshake, or a session
//! from another control connection, is not a resumption here. This is what
//! vsftpd's `require_ssl_reuse` and FileZilla Server enforce: a third party
//! cannot connect to the passive port and take the transfer, even from the
//! client's own address. It works the same for TLS 1.2 (session ids) and
//! TLS 1.3 (tickets, which may be resumed more than once here because
//! clients resume the control connection's ticket for every transfer; early
//! data is off, so reuse allows no replay).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use std::sync::Mutex;

use rustls::server::{ServerConfig, StoresServerSessions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Sessions a control connection keeps of its own handshake.
const CONTROL_SESSIONS: usize = 4;
/// Sessions a control connection keeps from its data connections' handshakes
/// (the newest; older ones are forgotten).
const DATA_SESSIONS: usize = 8;
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

/// Builds the server's TLS configuration from PEM files, or from a
/// self-signed pair in `dir` (generated there on first use, key mode 0600)
/// when no files are configured.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let c = dir.join("tls-cert.pem");
            let k = dir.join("tls-key.pem");
            if !c.exists() || !k.exists() {
                generate_self_signed(&c, &k)?;
            }
            (c, k)
        }
    };
    let io_err = |p: &Path| {
        let path = p.display().to_string();
        move |e: rustls_pki_types::pem::Error| TlsSetupError::Pem {
            path: path.clone(),
            reason: e.to_string(),
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(io_err(&cert_path))?
        .collect::<Result<_, _>>()
        .map_err(io_err(&cert_path))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: cert_path.display().to_string(),
            reason: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(io_err(&key_path))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn generate_self_signed(cert: &Path, key: &Path) -> Result<(), TlsSetupError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    write_file(key, generated.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let err = |source| TlsSetupError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The TLS configurations of one control connection and its data
/// connections, sharing a session store no other connection sees.
#[derive(Debug, Clone)]
pub(crate) struct SessionTls {
    control: Arc<ServerConfig>,
    /// The server's configuration; each data connection gets a copy.
    base: Arc<ServerConfig>,
    store: Arc<SessionStore>,
}

impl SessionTls {
    pub(crate) fn new(base: &Arc<ServerConfig>) -> Self {
        let store = Arc::new(SessionStore::default());
        let mut control = ServerConfig::clone(base);
        control.session_storage = Arc::new(ControlStore(store.clone()));
        control.send_tls13_tickets = CONTROL_TICKETS;
        Self {
            control: Arc::new(control),
            base: base.clone(),
            store,
        }
    }

    /// The control connection's configuration.
    pub(crate) fn control(&self) -> Arc<ServerConfig> {
        self.control.clone()
    }

    /// A configuration for one data connection. Sessions its handshake
    /// creates are held back until [`DataSessions::handshake_resumed`] says
    /// the handshake resumed one of this control connection's sessions: a
    /// stranger's full handshake must not leave a session a second
    /// connection could resume.
    ///
    /// `sends` says whether the server sends on this connection (a
    /// download or listing). Only then does it carry a TLS 1.3 ticket: a
    /// client that only writes never reads it, and closing a socket with
    /// unread data sends a reset that can destroy the client's last bytes
    /// and close_notify before the server reads them.
    pub(crate) fn data(&self, sends: bool) -> (Arc<ServerConfig>, Arc<DataSessions>) {
        let sessions = Arc::new(DataSessions {
            shared: self.store.clone(),
            pending: Mutex::new(Vec::new()),
        });
        let mut config = ServerConfig::clone(&self.base);
        config.session_storage = sessions.clone();
        // A fresh ticket per resumed download, for clients that use each
        // TLS 1.3 ticket only once (curl with OpenSSL does).
        config.send_tls13_tickets = usize::from(sends);
        (Arc::new(config), sessions)
    }
}

type Entry = (Vec<u8>, Vec<u8>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One control connection's sessions: those of the control connection
/// itself (kept; there are at most a few) and those issued on data
/// connections that resumed (the newest [`DATA_SESSIONS`] kept). Lookups
/// leave entries in place, so a TLS 1.3 ticket can be resumed by every data
/// connection.
#[derive(Debug, Default)]
struct SessionStore {
    control: Mutex<Vec<Entry>>,
    data: Mutex<std::collections::VecDeque<Entry>>,
}

impl SessionStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some((_, v)) = lock(&self.control).iter().find(|(k, _)| k == key) {
            return Some(v.clone());
        }
        lock(&self.data)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

fn put_bounded(entries: &mut Vec<Entry>, key: Vec<u8>, value: Vec<u8>, max: usize) -> bool {
    if let Some(slot) = entries.iter_mut().find(|(k, _)| *k == key) {
        slot.1 = value;
        return true;
    }
    if entries.len() >= max {
        return false;
    }
    entries.push((key, value));
    true
}

/// The control connection's view of its store.
#[derive(Debug)]
struct ControlStore(Arc<SessionStore>);

impl StoresServerSessions for ControlStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        put_bounded(&mut lock(&self.0.control), key, value, CONTROL_SESSIONS)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// One data connection's view of its control connection's store.
#[derive(Debug)]
pub(crate) struct DataSessions {
    shared: Arc<SessionStore>,
    pending: Mutex<Vec<Entry>>,
}

impl DataSessions {
    /// Called once the handshake is done and known to be a resumption:
    /// the sessions it issued join the control connection's store.
    pub(crate) fn handshake_resumed(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        let mut data = lock(&self.shared.data);
        for entry in pending {
            if data.len() >= DATA_SESSIONS {
                data.pop_front();
            }
            data.push_back(entry);
        }
    }
}

impl StoresServerSessions for DataSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        put_bounded(&mut lock(&self.pending), key, value, CONTROL_SESSIONS)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.get(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}
