//! The server's certificate: loading it, generating a self-signed one in the
//! data folder when none is configured, renewing that one on start when it
//! nears its end (keeping its key, so nothing else changes), and its SHA-256
//! fingerprint as `openssl x509 -fingerprint -sha256` and FileZilla show it,
//! for people to compare before they trust it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::TlsSetupError;

/// How long a generated certificate is valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A generated certificate with less than this left is renewed on start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Organisation named in generated certificates; also how a generated
/// certificate is told from one an operator put in the data folder.
const ORGANISATION: &str = "dropvault";
/// The subject rcgen gives when asked for nothing else: certificates that
/// earlier versions generated (valid 1975–4096) are replaced once.
const LEGACY_SUBJECT: &str = "rcgen self signed cert";

/// The certificate and key files the server uses.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Whether these are the self-signed pair in the data folder, which
    /// dropvault generates and renews.
    pub self_signed: bool,
}

impl CertFiles {
    /// The configured pair, or the self-signed pair in `dir`.
    pub fn new(cert: Option<&Path>, key: Option<&Path>, dir: &Path) -> Self {
        match (cert, key) {
            (Some(c), Some(k)) => Self {
                cert: c.to_path_buf(),
                key: k.to_path_buf(),
                self_signed: false,
            },
            _ => Self {
                cert: dir.join("tls-cert.pem"),
                key: dir.join("tls-key.pem"),
                self_signed: true,
            },
        }
    }
}

/// What a start did to the self-signed certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing: configured files, or a generated one with time left.
    Kept,
    /// There was none: a key and a certificate were generated.
    Generated,
    /// It was near its end (or from an earlier version): a new
    /// certificate for the same key.
    Renewed,
}

/// What people compare before trusting the certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// SHA-256 of the leaf certificate, `AB:CD:…` as
    /// `openssl x509 -noout -fingerprint -sha256` prints it.
    pub fingerprint: String,
    /// The subject, e.g. `CN=host.example, O=dropvault`.
    pub subject: String,
    /// End of validity, e.g. `2027-12-06 10:00:00 UTC`.
    pub not_after: String,
}

/// Makes sure the self-signed pair exists and is not near its end.
/// Configured files are never touched.
pub fn ensure_self_signed(files: &CertFiles) -> Result<Renewal, TlsSetupError> {
    if !files.self_signed {
        return Ok(Renewal::Kept);
    }
    if !files.cert.exists() || !files.key.exists() {
        let key = rcgen::KeyPair::generate().map_err(generate_error)?;
        write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        issue(&key, &files.cert)?;
        tracing::info!(cert = %files.cert.display(), "generated a self-signed TLS certificate");
        return Ok(Renewal::Generated);
    }
    let der = leaf(&files.cert)?;
    let (not_after, subject) = validity_and_subject(&files.cert, &der)?;
    let left = not_after
        .checked_sub(unix_now())
        .map_or(Duration::ZERO, Duration::from_secs);
    let legacy = subject.contains(LEGACY_SUBJECT);
    let ours = legacy || subject.contains(&format!("O={ORGANISATION}"));
    if !ours || (!legacy && left > RENEW_BEFORE) {
        return Ok(Renewal::Kept);
    }
    let pem = fs::read_to_string(&files.key).map_err(io_error(&files.key))?;
    let key = rcgen::KeyPair::from_pem(&pem).map_err(generate_error)?;
    issue(&key, &files.cert)?;
    tracing::info!(cert = %files.cert.display(), "renewed the self-signed TLS certificate (same key)");
    Ok(Renewal::Renewed)
}

/// Fingerprint, subject and end of validity of the leaf certificate in
/// `path`.
pub fn summary(path: &Path) -> Result<CertSummary, TlsSetupError> {
    let der = leaf(path)?;
    let (not_after, subject) = validity_and_subject(path, &der)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let fingerprint = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let not_after = i64::try_from(not_after)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(
            || "?".to_owned(),
            |t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            },
        );
    Ok(CertSummary {
        fingerprint,
        subject,
        not_after,
    })
}

/// The first certificate in a PEM file.
fn leaf(path: &Path) -> Result<CertificateDer<'static>, TlsSetupError> {
    CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .next()
        .ok_or_else(|| TlsSetupError::Pem {
            path: path.display().to_string(),
            reason: "no certificate in file".into(),
        })?
        .map_err(pem_error(path))
}

/// End of validity (Unix seconds, 0 if before 1970) and subject.
fn validity_and_subject(path: &Path, der: &[u8]) -> Result<(u64, String), TlsSetupError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsSetupError::Pem {
        path: path.display().to_string(),
        reason: format!("not a readable X.509 certificate: {e}"),
    })?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((not_after, cert.subject().to_string()))
}

/// Signs a new certificate for `key`, valid from an hour ago (clocks
/// differ) for [`VALIDITY`], naming dropvault and this host.
fn issue(key: &rcgen::KeyPair, cert: &Path) -> Result<(), TlsSetupError> {
    let host = hostname();
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if host != "localhost" {
        names.insert(0, host.clone());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(generate_error)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, host);
    dn.push(rcgen::DnType::OrganizationName, ORGANISATION);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + VALIDITY;
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| TlsSetupError::Generate("RNG".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let signed = params.self_signed(key).map_err(generate_error)?;
    // Written next to the old one and renamed over it: a crash leaves
    // either certificate, never half of one.
    let tmp = cert.with_extension("pem.new");
    write_file(&tmp, signed.pem().as_bytes(), 0o644)?;
    fs::rename(&tmp, cert).map_err(io_error(cert))
}

/// This machine's host name, for the certificate's subject.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn generate_error(e: rcgen::Error) -> TlsSetupError {
    TlsSetupError::Generate(e.to_string())
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> TlsSetupError + '_ {
    move |source| TlsSetupError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(super) fn pem_error(
    path: &Path,
) -> impl Fn(rustls_pki_types::pem::Error) -> TlsSetupError + '_ {
    move |e| TlsSetupError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let err = io_error(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(&err)?;
    f.write_all(data).map_err(&err)?;
    f.sync_all().map_err(&err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_renewed_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles::new(None, None, dir.path());
        assert_eq!(
            ensure_self_signed(&files).expect("generate"),
            Renewal::Generated
        );
        let first = summary(&files.cert).expect("summary");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        assert!(first.subject.contains("O=dropvault"), "{}", first.subject);
        assert_eq!(ensure_self_signed(&files).expect("again"), Renewal::Kept);
        let key = fs::read(&files.key).expect("key");

        // Near its end: renewed, same key, new certificate.
        let pair =
            rcgen::KeyPair::from_pem(&String::from_utf8(key.clone()).expect("pem")).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, ORGANISATION);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(300);
        params.not_after = now + time::Duration::days(3);
        write_file(
            &files.cert,
            params.self_signed(&pair).expect("sign").pem().as_bytes(),
            0o644,
        )
        .expect("write");
        assert_eq!(ensure_self_signed(&files).expect("renew"), Renewal::Renewed);
        assert_eq!(fs::read(&files.key).expect("key"), key);
        let renewed = summary(&files.cert).expect("summary");
        assert_ne!(renewed.fingerprint, first.fingerprint);
        assert_eq!(ensure_self_signed(&files).expect("kept"), Renewal::Kept);
    }

    #[test]
    fn configured_files_are_never_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        let files = CertFiles::new(Some(&cert), Some(&key), dir.path());
        assert_eq!(ensure_self_signed(&files).expect("kept"), Renewal::Kept);
        assert!(!cert.exists() && !key.exists());
    }
}
