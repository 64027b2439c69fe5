//! The HTTP client shared by the transit key provider and the webhook:
//! ureq over rustls on aws-lc-rs, no redirects, every answer read up to a
//! limit, a deadline for each request, and a proxy only when one is
//! configured for it (`kms.transit_proxy`, `hooks.webhook_proxy`): ureq
//! would otherwise take one from `HTTP(S)_PROXY`/`ALL_PROXY`, and a proxy
//! that nobody configured for dropvault would see every request (for
//! `http://`, the key service token and data keys in the clear).
//!
//! ureq logs the bytes on the wire (`ureq_proto` at trace) and headers
//! (`ureq`): the binary's log setup caps those targets, see its
//! `init_logging`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// CA bundles tried for `https://` when no CA file is given.
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    /// The CA file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The CA file holds no certificate.
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    /// The proxy is not an `http://`, `https://` or `socks5://` URL.
    #[error("proxy {0:?} is not a proxy URL (http://host:port)")]
    BadProxy(String),
}

/// An HTTP client: `timeout` for a whole request, server certificates
/// checked against `ca_file` (or the system's bundle when `https`), through
/// `proxy` if given and straight otherwise. Status codes are answers, not
/// errors.
pub(crate) fn agent(
    timeout: Duration,
    ca_file: Option<&Path>,
    https: bool,
    proxy: Option<&str>,
) -> Result<ureq::Agent, AgentError> {
    let proxy = proxy
        .map(|url| ureq::Proxy::new(url).map_err(|_| AgentError::BadProxy(url.to_owned())))
        .transpose()?;
    let ca = match ca_file {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read(path).map_err(|source| AgentError::Read {
                path: path.display().to_string(),
                source,
            })?,
        )),
        None if https => SYSTEM_CA_BUNDLES
            .iter()
            .find_map(|p| std::fs::read(p).ok().map(|pem| ((*p).to_owned(), pem))),
        None => None,
    };
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        );
    if let Some((name, pem)) = ca {
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(AgentError::NoCertificate(name));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
    }
    Ok(ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .proxy(proxy)
            .user_agent("dropvault")
            .tls_config(tls.build())
            .build(),
    ))
}
