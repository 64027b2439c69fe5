//! TLS for the control and data connections (rustls with the aws-lc-rs
//! provider): certificate loading or self-signed generation, and the check
//! that a data connection resumed its control connection's TLS session.
//!
//! How the check works: when the control connection upgrades, the server
//! stores a random per-session token as the TLS session's resumption data.
//! rustls carries it inside the session it caches (TLS 1.2 session id or TLS
//! 1.3 ticket). A data connection that resumed *that* session presents the
//! same token; a fresh handshake, or a session from another control
//! connection, does not. This is what vsftpd's `require_ssl_reuse` and
//! FileZilla Server enforce: a third party cannot connect to the passive
//! port and take the transfer even from the client's own address.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ServerConfig, ServerSessionMemoryCache};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Sessions the server remembers for resumption.
const SESSION_CACHE: usize = 16 * 1024;

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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
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

/// A fresh random token identifying one control connection's TLS session.
pub(crate) fn session_token() -> [u8; 16] {
    let mut t = [0u8; 16];
    // The system RNG does not fail on Linux; a zero token would only make
    // the reuse check weaker for this one session, never let data through
    // unencrypted.
    let _ = aws_lc_rs::rand::fill(&mut t);
    t
}
