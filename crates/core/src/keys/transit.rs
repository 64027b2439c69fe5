//! The `transit` key provider: the KEK is a named key in the transit engine
//! of OpenBao or HashiCorp Vault and never leaves the service. Data keys are
//! wrapped with `encrypt`, unwrapped with `decrypt`, moved to the newest key
//! version with `rewrap`; the key's versions come from `keys/<name>`.
//!
//! The user is bound inside what the service encrypts: the plaintext sent
//! is `"DVK1" ‖ SHA-256("dropvault v1 data key for " ‖ user) ‖ DEK`, and
//! every decrypt checks that binding. This works for every key type
//! (`rsa-4096` has no associated data or derivation context) and survives
//! `rewrap`, which never shows the key to this process.
//!
//! Authentication: a token (renewed at half its TTL when renewable), or
//! AppRole (log in with role id and secret id, renew, log in again when the
//! token reaches its maximum TTL or is refused).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{binding_label, DataKey, KekStatus, KeyError, KeyProvider, Wrapped};

/// First bytes of every wrapped plaintext.
const MAGIC: &[u8; 4] = b"DVK1";
/// Magic, user binding, data key.
const ENVELOPE_LEN: usize = MAGIC.len() + 32 + 32;
/// Largest answer read from the service (a key with many RSA versions is
/// tens of KiB).
const MAX_RESPONSE: u64 = 1 << 20;
/// Items per `rewrap` request.
const REWRAP_BATCH: usize = 100;
/// Largest secret-id file read.
const MAX_SECRET_ID_LEN: u64 = 4096;
/// Where the transit engine is and how to log in to it.
#[derive(Debug, Clone)]
pub struct TransitConfig {
    /// `http(s)://host:port` of OpenBao or Vault.
    pub address: String,
    /// Mount path of the transit engine (`transit`).
    pub mount: String,
    /// Name of the transit key.
    pub key: String,
    /// Key version new wraps use; 0 = the latest.
    pub key_version: u32,
    /// How to authenticate.
    pub auth: TransitAuth,
    /// PEM file of the CA that signed the service's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Allow an `http://` address that is not loopback (the token and
    /// the data keys then cross the network in the clear).
    pub allow_http: bool,
    /// Proxy URL to reach the service through; `None` = straight (proxy
    /// variables in the environment are never used).
    pub proxy: Option<String>,
    /// Limit for one request, connect to last byte.
    pub timeout: Duration,
    /// How long the key's version numbers are trusted before the service
    /// is asked again (a login after a rotation re-wraps at most this much
    /// later).
    pub version_cache: Duration,
}

/// How the provider authenticates to the service.
#[derive(Clone)]
pub enum TransitAuth {
    /// A token (`X-Vault-Token`).
    Token(Zeroizing<String>),
    /// AppRole login.
    AppRole {
        /// The role id (not secret on its own).
        role_id: String,
        /// File holding the secret id, read at each login.
        secret_id_file: PathBuf,
    },
}

impl std::fmt::Debug for TransitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransitAuth::Token(_) => f.write_str("Token([redacted])"),
            TransitAuth::AppRole {
                role_id,
                secret_id_file,
            } => f
                .debug_struct("AppRole")
                .field("role_id", role_id)
                .field("secret_id_file", secret_id_file)
                .finish(),
        }
    }
}

/// A token in use and when to renew it.
struct Token {
    value: Zeroizing<String>,
    /// Lease as granted at login (zero: never expires).
    lease: Duration,
    renewable: bool,
    /// When to renew or log in again; `None`: never.
    renew_at: Option<Instant>,
}

/// What the service says about the key.
#[derive(Clone, Debug)]
struct KeyInfo {
    key_type: String,
    latest_version: u32,
    min_decryption_version: u32,
}

/// The transit provider. Blocking; callers in async code use a blocking
/// thread. Safe to share: connections are pooled, the token is renewed by
/// whichever call finds it due.
pub struct TransitProvider {
    agent: ureq::Agent,
    address: String,
    mount: String,
    key: String,
    key_version: u32,
    version_cache: Duration,
    name: String,
    auth: TransitAuth,
    token: Mutex<Option<Token>>,
    info: Mutex<Option<(Instant, KeyInfo)>>,
}

impl std::fmt::Debug for TransitProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitProvider")
            .field("address", &self.address)
            .field("key", &self.name)
            .field("key_version", &self.key_version)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl TransitProvider {
    /// A provider for `config`. Does not contact the service: a server
    /// starts while the service is down and logins work once it is back.
    pub fn new(config: TransitConfig) -> Result<Self, KeyError> {
        let bad = |m: &str| KeyError::BadConfig(m.to_owned());
        let address = config.address.trim_end_matches('/').to_owned();
        let https = address.starts_with("https://");
        if !https && !address.starts_with("http://") {
            return Err(bad(
                "kms.transit.address must start with http:// or https://",
            ));
        }
        if !https && !config.allow_http && !loopback(&address) {
            return Err(bad(
                "kms.transit.address: http:// only to a loopback address (127.0.0.1, ::1, \
                 localhost); use https://, or set kms.transit.allow_http = true (alias \
                 kms.transit_allow_http)",
            ));
        }
        let mount = config.mount.trim_matches('/').to_owned();
        let safe = |s: &str| {
            !s.is_empty()
                && s.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        };
        if !safe(&mount) {
            return Err(bad(
                "kms.transit.mount must be a path of letters, digits, - _ .",
            ));
        }
        if !safe(&config.key) || config.key.contains('/') {
            return Err(bad(
                "kms.transit.key must be a name of letters, digits, - _ .",
            ));
        }
        let agent = crate::http::agent(
            config.timeout,
            config.ca_cert.as_deref(),
            https,
            config.proxy.as_deref(),
        )
        .map_err(|e| KeyError::BadConfig(format!("transit: {e}")))?;
        Ok(Self {
            agent,
            name: format!("{mount}/{}", config.key),
            address,
            mount,
            key: config.key,
            key_version: config.key_version,
            version_cache: config.version_cache,
            auth: config.auth,
            token: Mutex::new(None),
            info: Mutex::new(None),
        })
    }

    /// One HTTP request; `body` is JSON (POST) or `None` (GET). The answer's
    /// JSON, `Null` for an empty one; the status and the service's `errors`
    /// on failure.
    fn request(
        &self,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> Result<Value, Failure> {
        let url = format!("{}/v1/{path}", self.address);
        let sent = match body {
            None => {
                let mut req = self.agent.get(&url);
                if let Some(t) = token {
                    req = req.header("X-Vault-Token", t);
                }
                req.call()
            }
            Some(body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(t) = token {
                    req = req.header("X-Vault-Token", t);
                }
                req.send(body)
            }
        };
        let unavailable = |e: ureq::Error| KeyError::Unavailable {
            address: self.address.clone(),
            reason: e.to_string(),
        };
        let mut resp = sent.map_err(unavailable)?;
        let status = resp.status().as_u16();
        // Answers to decrypt carry the data key: zeroize the raw bytes.
        let raw = Zeroizing::new(
            resp.body_mut()
                .with_config()
                .limit(MAX_RESPONSE)
                .read_to_vec()
                .map_err(unavailable)?,
        );
        let json: Option<Value> = if raw.is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_slice(&raw).ok()
        };
        if (200..300).contains(&status) {
            return json.ok_or_else(|| KeyError::BadResponse(format!("{path}: not JSON")).into());
        }
        let errors = json
            .as_ref()
            .and_then(|j| j.get("errors"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&raw);
                text.chars().take(200).collect()
            });
        let errors = match errors.trim() {
            "" if status == 404 => format!("{path}: not found"),
            "" => format!("{path}: (no message)"),
            e => e.to_owned(),
        };
        Err(Failure::Status { status, errors })
    }

    /// A request with the current token; with AppRole, a refused token
    /// (revoked, expired early) is replaced by a new login once.
    fn call(&self, path: &str, body: Option<&[u8]>) -> Result<Value, KeyError> {
        let token = self.token()?;
        match self.request(path, body, Some(&token)) {
            Err(Failure::Status { status: 403, .. })
                if matches!(self.auth, TransitAuth::AppRole { .. }) =>
            {
                self.forget_token(&token);
                let token = self.token()?;
                Ok(self.request(path, body, Some(&token))?)
            }
            other => Ok(other?),
        }
    }

    fn forget_token(&self, stale: &str) {
        let mut held = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if held.as_ref().is_some_and(|t| t.value.as_str() == stale) {
            *held = None;
        }
    }

    /// The token to use now: logs in, looks up, renews as due.
    fn token(&self) -> Result<Zeroizing<String>, KeyError> {
        let mut held = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(t) = held.as_ref() {
            if t.renew_at.is_none_or(|at| now < at) {
                return Ok(t.value.clone());
            }
        }
        let next = match (held.take(), &self.auth) {
            (None, TransitAuth::Token(value)) => self.look_up(value.clone()),
            (None, TransitAuth::AppRole { .. }) => self.log_in()?,
            (Some(old), auth) => {
                let renewed = if old.renewable {
                    match self.renew(&old) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            tracing::warn!(error = %e, "renewing the key service token failed");
                            None
                        }
                    }
                } else {
                    None
                };
                match (renewed, auth) {
                    // AppRole: a renewal cut short by the maximum TTL means
                    // the token is about to die; log in afresh instead.
                    (Some(t), TransitAuth::AppRole { .. }) if t.lease < old.lease / 2 => {
                        self.log_in()?
                    }
                    (Some(t), _) => t,
                    (None, TransitAuth::AppRole { .. }) => self.log_in()?,
                    // A fixed token that cannot be renewed is used until
                    // the service refuses it.
                    (None, TransitAuth::Token(_)) => Token {
                        renew_at: None,
                        ..old
                    },
                }
            }
        };
        let value = next.value.clone();
        *held = Some(next);
        Ok(value)
    }

    /// A configured token, with its TTL if the service tells it.
    fn look_up(&self, value: Zeroizing<String>) -> Token {
        match self
            .request("auth/token/lookup-self", None, Some(&value))
            .map_err(KeyError::from)
        {
            Ok(answer) => {
                let data = &answer["data"];
                let ttl = data["ttl"].as_u64().unwrap_or(0);
                let renewable = data["renewable"].as_bool().unwrap_or(false);
                token(value, ttl, renewable)
            }
            Err(e) => {
                // Not fatal: the token may lack the lookup permission.
                tracing::debug!(error = %e, "token lookup failed; not renewing it");
                token(value, 0, false)
            }
        }
    }

    fn log_in(&self) -> Result<Token, KeyError> {
        let TransitAuth::AppRole {
            role_id,
            secret_id_file,
        } = &self.auth
        else {
            return Err(KeyError::BadConfig("no AppRole configured".into()));
        };
        let secret_id = read_secret(secret_id_file)?;
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "role_id": role_id,
                "secret_id": secret_id.as_str(),
            }))
            .map_err(|e| KeyError::BadResponse(e.to_string()))?,
        );
        let answer = self.request("auth/approle/login", Some(&body), None)?;
        let t = auth_token(&answer)?;
        tracing::info!(
            lease_secs = t.lease.as_secs(),
            "logged in to the key service (AppRole)"
        );
        Ok(t)
    }

    fn renew(&self, old: &Token) -> Result<Token, KeyError> {
        let answer = self.request("auth/token/renew-self", Some(b"{}"), Some(&old.value))?;
        let t = auth_token(&answer)?;
        tracing::debug!(
            lease_secs = t.lease.as_secs(),
            "renewed the key service token"
        );
        Ok(t)
    }

    fn key_info(&self, fresh: bool) -> Result<KeyInfo, KeyError> {
        if !fresh {
            let held = self.info.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, info)) = held.as_ref() {
                if at.elapsed() < self.version_cache {
                    return Ok(info.clone());
                }
            }
        }
        let answer = self.call(&format!("{}/keys/{}", self.mount, self.key), None)?;
        let data = &answer["data"];
        let version = |field: &str| {
            data[field]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| KeyError::BadResponse(format!("key read without {field}")))
        };
        let info = KeyInfo {
            key_type: data["type"].as_str().unwrap_or("unknown").to_owned(),
            latest_version: version("latest_version")?,
            min_decryption_version: version("min_decryption_version")?,
        };
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), info.clone()));
        Ok(info)
    }

    fn pinned_version(&self) -> String {
        if self.key_version == 0 {
            String::new()
        } else {
            format!(r#","key_version":{}"#, self.key_version)
        }
    }
}

impl KeyProvider for TransitProvider {
    fn kind(&self) -> &'static str {
        "transit"
    }

    fn key_name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        // The key must exist: encrypt would quietly create a new one under
        // a mistyped name (when the token may), and data keys would then
        // hang on a key nobody manages.
        self.key_info(false)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(ENVELOPE_LEN));
        plain.extend_from_slice(MAGIC);
        plain.extend_from_slice(user_binding(user).as_ref());
        plain.extend_from_slice(dek.expose_secret());
        let b64 = Zeroizing::new(B64.encode(plain.as_slice()));
        // Base64 needs no JSON escaping; built by hand so no copy of the
        // key escapes zeroization.
        let body = Zeroizing::new(
            format!(
                r#"{{"plaintext":"{}"{}}}"#,
                b64.as_str(),
                self.pinned_version()
            )
            .into_bytes(),
        );
        let answer = self.call(&format!("{}/encrypt/{}", self.mount, self.key), Some(&body))?;
        wrapped(answer["data"]["ciphertext"].as_str())
    }

    fn unwrap(&self, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        let failed = || KeyError::UnwrapFailed {
            user: user.to_owned(),
        };
        let body = serde_json::to_vec(&serde_json::json!({ "ciphertext": wrapped.ciphertext }))
            .map_err(|e| KeyError::BadResponse(e.to_string()))?;
        let mut answer = self.call(&format!("{}/decrypt/{}", self.mount, self.key), Some(&body))?;
        let b64 = match answer["data"]["plaintext"].take() {
            Value::String(s) => Zeroizing::new(s),
            _ => {
                return Err(KeyError::BadResponse(
                    "decrypt answer without plaintext".into(),
                ))
            }
        };
        let plain = Zeroizing::new(B64.decode(b64.as_bytes()).map_err(|_| failed())?);
        if plain.len() != ENVELOPE_LEN
            || &plain[..MAGIC.len()] != MAGIC
            || plain[MAGIC.len()..MAGIC.len() + 32] != *user_binding(user).as_ref()
        {
            return Err(failed());
        }
        DataKey::from_slice(&plain[MAGIC.len() + 32..]).ok_or_else(failed)
    }

    fn current_version(&self) -> Result<u32, KeyError> {
        if self.key_version != 0 {
            return Ok(self.key_version);
        }
        Ok(self.key_info(false)?.latest_version)
    }

    fn rewrap(&self, items: &[(&str, Wrapped)]) -> Vec<Result<Wrapped, KeyError>> {
        let path = format!("{}/rewrap/{}", self.mount, self.key);
        let mut out = Vec::with_capacity(items.len());
        for batch in items.chunks(REWRAP_BATCH) {
            // In a batch the service reads key_version per item only.
            let input: Vec<Value> = batch
                .iter()
                .map(|(_, w)| {
                    let mut item = serde_json::json!({ "ciphertext": w.ciphertext });
                    if self.key_version != 0 {
                        item["key_version"] = self.key_version.into();
                    }
                    item
                })
                .collect();
            let body = serde_json::json!({ "batch_input": input });
            let answer = serde_json::to_vec(&body)
                .map_err(|e| KeyError::BadResponse(e.to_string()))
                .and_then(|b| self.call(&path, Some(&b)));
            let results = answer.as_ref().ok().and_then(|a| {
                a["data"]["batch_results"]
                    .as_array()
                    .filter(|r| r.len() == batch.len())
            });
            match results {
                Some(results) => out.extend(results.iter().map(|r| {
                    match (r["ciphertext"].as_str(), r["error"].as_str()) {
                        (Some(ct), _) if !ct.is_empty() => wrapped(Some(ct)),
                        (_, Some(err)) => Err(refused_item(err)),
                        _ => Err(KeyError::BadResponse(
                            "rewrap result without ciphertext".into(),
                        )),
                    }
                })),
                // The whole batch refused (one bad item fails it on some
                // versions): one request per item tells which.
                None => {
                    if let Err(e) = &answer {
                        tracing::debug!(error = %e, "batch rewrap refused; one at a time");
                    }
                    out.extend(batch.iter().map(|(_, w)| self.rewrap_one(&path, w)));
                }
            }
        }
        out
    }

    fn status(&self) -> Result<KekStatus, KeyError> {
        let info = self.key_info(true)?;
        Ok(KekStatus {
            provider: self.kind(),
            key_name: self.name.clone(),
            key_type: info.key_type,
            latest_version: info.latest_version,
            min_decryption_version: info.min_decryption_version,
            current_version: if self.key_version == 0 {
                info.latest_version
            } else {
                self.key_version
            },
            details: Vec::new(),
        })
    }
}

impl TransitProvider {
    fn rewrap_one(&self, path: &str, w: &Wrapped) -> Result<Wrapped, KeyError> {
        let mut body = serde_json::json!({ "ciphertext": w.ciphertext });
        if self.key_version != 0 {
            body["key_version"] = self.key_version.into();
        }
        let body = serde_json::to_vec(&body).map_err(|e| KeyError::BadResponse(e.to_string()))?;
        let answer = self.call(path, Some(&body))?;
        wrapped(answer["data"]["ciphertext"].as_str())
    }
}

/// Why a request to the service failed: its HTTP answer (kept as such
/// only until it leaves this module, through [`service_error`]) or
/// anything else.
enum Failure {
    /// The service answered with this status and these errors.
    Status { status: u16, errors: String },
    /// No usable answer.
    Other(KeyError),
}

impl From<KeyError> for Failure {
    fn from(e: KeyError) -> Self {
        Failure::Other(e)
    }
}

impl From<Failure> for KeyError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Status { status, errors } => service_error(status, &errors),
            Failure::Other(e) => e,
        }
    }
}

/// The one place an HTTP status of the service becomes an error: a
/// timeout (408), rate limiting (429) or a server failure (5xx: sealed,
/// standby, not initialised, failing) may pass; any other status is the
/// service refusing this request for good (denied, not found, bad input,
/// a key version too old to decrypt).
fn service_error(status: u16, errors: &str) -> KeyError {
    KeyError::Service {
        transient: matches!(status, 408 | 429 | 500..),
        reason: format!("answered {status}: {errors}"),
    }
}

/// One item of a batch the service refused (bad ciphertext, a version too
/// old): that item's failure, for good.
fn refused_item(error: &str) -> KeyError {
    KeyError::Service {
        transient: false,
        reason: format!("refused the item: {error}"),
    }
}

/// Whether the host of URL `address` is a loopback address or
/// `localhost`.
fn loopback(address: &str) -> bool {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    // The authority ends at the path, query or fragment, whichever comes
    // first (`http://10.0.0.5#@127.0.0.1` is 10.0.0.5).
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn user_binding(user: &str) -> digest::Digest {
    digest::digest(&digest::SHA256, &binding_label("data key", user))
}

/// A transit ciphertext as a wrapped key.
fn wrapped(ciphertext: Option<&str>) -> Result<Wrapped, KeyError> {
    let ct = ciphertext.ok_or_else(|| KeyError::BadResponse("answer without ciphertext".into()))?;
    Ok(Wrapped {
        key_version: ciphertext_version(ct)?,
        ciphertext: ct.to_owned(),
    })
}

/// The key version in a transit ciphertext, `vault:v<N>:…`.
fn ciphertext_version(ct: &str) -> Result<u32, KeyError> {
    ct.strip_prefix("vault:v")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(v, _)| v.parse().ok())
        .ok_or_else(|| KeyError::BadResponse("ciphertext without a vault:vN: prefix".into()))
}

fn token(value: Zeroizing<String>, lease_secs: u64, renewable: bool) -> Token {
    let lease = Duration::from_secs(lease_secs);
    Token {
        value,
        lease,
        renewable,
        renew_at: (lease_secs > 0).then(|| Instant::now() + lease / 2),
    }
}

/// The token in a login or renewal answer (`auth.client_token`).
fn auth_token(answer: &Value) -> Result<Token, KeyError> {
    let auth = &answer["auth"];
    let value = auth["client_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| KeyError::BadResponse("no auth.client_token".into()))?;
    Ok(token(
        Zeroizing::new(value.to_owned()),
        auth["lease_duration"].as_u64().unwrap_or(0),
        auth["renewable"].as_bool().unwrap_or(false),
    ))
}

fn read_secret(path: &std::path::Path) -> Result<Zeroizing<String>, KeyError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| KeyError::io(path, e))?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_SECRET_ID_LEN)
        .read_to_string(&mut text)
        .map_err(|e| KeyError::io(path, e))?;
    let trimmed = Zeroizing::new(text.trim().to_owned());
    if trimmed.is_empty() {
        return Err(KeyError::BadConfig(format!(
            "{}: empty secret id file",
            path.display()
        )));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent() {
        for status in [400, 403, 404, 405, 412] {
            let e = service_error(status, "permission denied");
            assert!(!e.is_transient(), "{status}");
            assert_eq!(
                e.to_string(),
                format!("key service answered {status}: permission denied")
            );
        }
    }

    #[test]
    fn timeouts_rate_limits_and_server_failures_are_transient() {
        for status in [408, 429, 500, 501, 502, 503, 504] {
            assert!(
                service_error(status, "Vault is sealed").is_transient(),
                "{status}"
            );
        }
    }

    #[test]
    fn a_refused_batch_item_is_permanent() {
        let e = refused_item("ciphertext or signature version is disallowed by policy (too old)");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("too old"), "{e}");
    }

    #[test]
    fn versions_come_from_the_ciphertext_prefix() {
        assert_eq!(ciphertext_version("vault:v1:abc").ok(), Some(1));
        assert_eq!(ciphertext_version("vault:v12:a:b").ok(), Some(12));
        assert!(ciphertext_version("vault:x1:abc").is_err());
        assert!(ciphertext_version("abc").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let config = |address: &str, allow_http: bool| TransitConfig {
            address: address.into(),
            mount: "transit".into(),
            key: "k".into(),
            key_version: 0,
            auth: TransitAuth::Token(Zeroizing::new("t".into())),
            ca_cert: None,
            allow_http,
            proxy: None,
            timeout: Duration::from_secs(1),
            version_cache: Duration::from_secs(30),
        };
        for local in [
            "http://127.0.0.1:8200",
            "http://127.9.9.9",
            "http://[::1]:8200/",
            "http://LOCALHOST:8200",
            "http://u@localhost",
        ] {
            assert!(
                TransitProvider::new(config(local, false)).is_ok(),
                "{local}"
            );
        }
        for remote in [
            "http://10.0.0.5:8200",
            "http://bao.example:8200",
            "http://127.0.0.1.example",
            "http://localhost@10.0.0.5",
            "http://[::2]:8200",
            "http://10.0.0.5#@127.0.0.1",
            "http://10.0.0.5?@localhost",
        ] {
            match TransitProvider::new(config(remote, false)) {
                Err(KeyError::BadConfig(m)) => assert!(m.contains("transit_allow_http"), "{m}"),
                other => panic!("{remote}: expected BadConfig, got {other:?}"),
            }
            assert!(
                TransitProvider::new(config(remote, true)).is_ok(),
                "{remote}"
            );
        }
    }

    #[test]
    fn settings_are_checked_and_the_token_never_printed() {
        let config = |address: &str, mount: &str, key: &str| TransitConfig {
            address: address.into(),
            mount: mount.into(),
            key: key.into(),
            key_version: 0,
            auth: TransitAuth::Token(Zeroizing::new("s.secret-token".into())),
            ca_cert: None,
            allow_http: false,
            proxy: None,
            timeout: Duration::from_secs(1),
            version_cache: Duration::from_secs(30),
        };
        assert!(TransitProvider::new(config("ftp://x", "transit", "k")).is_err());
        assert!(TransitProvider::new(config("http://x", "../sys", "k")).is_err());
        assert!(TransitProvider::new(config("http://x", "transit", "a/b")).is_err());
        let p = TransitProvider::new(config("http://127.0.0.1:1/", "/transit/", "k"))
            .expect("valid settings");
        assert_eq!(p.key_name(), "transit/k");
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        // Nothing listens on port 1: the error names the address.
        let dek = DataKey::generate().expect("dek");
        match p.wrap("alice", &dek) {
            Err(e @ KeyError::Unavailable { .. }) => assert!(e.is_transient()),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
