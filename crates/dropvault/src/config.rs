//! The configuration: embedded defaults, then a TOML file (`--config` or
//! `DROPVAULT_CONFIG`), then environment variables
//! `DROPVAULT_<SECTION>_<KEY>` (and `DROPVAULT_DATA_DIR`), each layer
//! overriding the one before. Unknown keys are errors, so a typo is not
//! silently ignored. Documented key by key in docs/CONFIG.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dropvault_core::accounts::AuthConfig;
use dropvault_core::keys::{KmsConfig, KmsProvider};
use dropvault_core::scan::OnError;
use dropvault_core::secret::Secret;
use dropvault_core::size::parse_size;
use dropvault_core::vault::Quota;
use serde::{Deserialize, Serialize};

/// Sections that environment variables may address.
const SECTIONS: [&str; 11] = [
    "ftp", "sftp", "http", "auth", "kms", "storage", "scan", "hooks", "log", "admin", "limits",
];

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The file or an environment variable does not parse, or names an
    /// unknown key.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where the bad value came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Folder for everything the server keeps; relative paths below are
    /// inside it.
    pub(crate) data_dir: PathBuf,
    /// FTP front end.
    pub(crate) ftp: Ftp,
    /// SFTP front end.
    pub(crate) sftp: Sftp,
    /// HTTPS front end: drop links and the account page.
    pub(crate) http: Http,
    /// Accounts.
    pub(crate) auth: AuthConfig,
    /// Key service.
    pub(crate) kms: KmsConfig,
    /// Storage.
    pub(crate) storage: Storage,
    /// Malware scanning of uploads.
    pub(crate) scan: Scan,
    /// Event hooks.
    pub(crate) hooks: Hooks,
    /// Logging.
    pub(crate) log: Log,
    /// The admin listener: metrics and health.
    pub(crate) admin: Admin,
    /// Quotas and bandwidth limits.
    pub(crate) limits: Limits,
}

/// `[http]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Http {
    /// HTTPS listener (drop links, the account page); empty = off.
    pub(crate) listen: String,
    /// Base of the links `dropvault link create` prints
    /// ("https://drop.example.com"); empty = `https://<listen>`.
    pub(crate) public_url: String,
    /// Largest file one upload may have, in bytes; 0 = no limit beyond
    /// quotas.
    pub(crate) max_upload_bytes: u64,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            public_url: String::new(),
            max_upload_bytes: 0,
        }
    }
}

/// `[admin]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Admin {
    /// HTTP listener for `/metrics`, `/healthz` and `/readyz`; empty = off.
    pub(crate) listen: String,
    /// File holding a bearer token the listener requires; empty = none.
    pub(crate) token_file: String,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9121".into(),
            token_file: String::new(),
        }
    }
}

/// `[limits]`: sizes and rates as `parse_size` reads them ("10MiB"; rates
/// per second); "0" = no limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Limits {
    /// Bytes of stored files a user may have.
    pub(crate) quota_bytes: String,
    /// Files a user may have.
    pub(crate) quota_files: u64,
    /// Upload bytes per second of one session.
    pub(crate) upload_rate: String,
    /// Download bytes per second of one session.
    pub(crate) download_rate: String,
    /// Upload bytes per second of all of one user's sessions together.
    pub(crate) user_upload_rate: String,
    /// Download bytes per second of all of one user's sessions together.
    pub(crate) user_download_rate: String,
    /// Upload bytes per second of the whole server.
    pub(crate) total_upload_rate: String,
    /// Download bytes per second of the whole server.
    pub(crate) total_download_rate: String,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            quota_bytes: "0".into(),
            quota_files: 0,
            upload_rate: "0".into(),
            download_rate: "0".into(),
            user_upload_rate: "0".into(),
            user_download_rate: "0".into(),
            total_upload_rate: "0".into(),
            total_download_rate: "0".into(),
        }
    }
}

/// `[scan]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Scan {
    /// clamd: "unix:/path" or "tcp:host:port"; empty = none.
    pub(crate) clamd: String,
    /// Pre-commit command hook (argv); empty = none.
    pub(crate) command: Vec<String>,
    /// What a scanner that gives no verdict means for the upload.
    pub(crate) on_error: OnError,
    /// Limit for each wait on a scanner.
    pub(crate) timeout_secs: i64,
    /// Keep rejected uploads, sealed, for operators.
    pub(crate) quarantine: bool,
    /// Account the command runs as when the server is root; "" = root.
    pub(crate) run_as: String,
}

/// `[hooks]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Hooks {
    /// URL that receives each event as an HTTP POST of JSON.
    pub(crate) webhook_url: String,
    /// Proxy URL to reach the webhook through; empty = straight.
    pub(crate) webhook_proxy: String,
    /// Key of the webhook's HMAC-SHA256 signature header.
    pub(crate) webhook_secret: Secret,
    /// Command (argv) run for each event.
    pub(crate) command: Vec<String>,
    /// Events waiting at most before new ones are dropped.
    pub(crate) queue_size: i64,
    /// Delivery attempts after a failed one.
    pub(crate) retries: i64,
    /// Limit for one delivery attempt.
    pub(crate) timeout_secs: i64,
    /// Account the command runs as when the server is root; "" = root.
    pub(crate) run_as: String,
}

impl Default for Scan {
    fn default() -> Self {
        Self {
            clamd: String::new(),
            command: Vec::new(),
            on_error: OnError::Reject,
            timeout_secs: 60,
            quarantine: false,
            run_as: "nobody".into(),
        }
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            webhook_proxy: String::new(),
            webhook_secret: Secret::default(),
            command: Vec::new(),
            queue_size: 1024,
            retries: 3,
            timeout_secs: 10,
            run_as: "nobody".into(),
        }
    }
}

/// `[ftp]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Ftp {
    /// Plain FTP listener (explicit FTPS via AUTH TLS).
    pub(crate) listen: String,
    /// Implicit FTPS listener; empty = off.
    pub(crate) implicit_tls_listen: String,
    /// Whether FTP offers or demands TLS.
    pub(crate) tls: FtpTls,
    /// Whether data connections must resume the control connection's TLS
    /// session.
    pub(crate) tls_session_reuse: SessionReuse,
    /// PEM certificate chain; empty = generated self-signed.
    pub(crate) tls_cert: String,
    /// PEM private key.
    pub(crate) tls_key: String,
    /// "LOW-HIGH"
    pub(crate) passive_ports: String,
    /// Address announced in PASV; empty = control connection's local address.
    pub(crate) passive_address: String,
    /// Allow PORT/EPRT.
    pub(crate) active_mode: bool,
    /// Most concurrent sessions.
    pub(crate) max_sessions: usize,
    /// Most concurrent sessions per client address.
    pub(crate) max_sessions_per_ip: usize,
    /// Idle sessions are closed after this many seconds.
    pub(crate) idle_timeout_secs: u64,
    /// A data connection with no progress this long is aborted (seconds).
    pub(crate) data_timeout_secs: u64,
    /// Seconds from connect to a successful login.
    pub(crate) login_timeout_secs: u64,
    /// Failed logins per session, then the session is closed.
    pub(crate) max_login_failures: usize,
    /// Failed logins from one address that trigger a ban.
    pub(crate) ban_after_failures: usize,
    /// IPv6 clients are counted per prefix of this many bits.
    pub(crate) ban_ipv6_prefix: u8,
    /// Window, in seconds, in which failed logins are counted.
    pub(crate) ban_window_secs: u64,
    /// Seconds a banned address is refused.
    pub(crate) ban_secs: u64,
    /// Seconds transfers in flight may run on after SIGTERM.
    pub(crate) drain_grace_secs: u64,
    /// Most entries one listing shows; a folder with more is cut there.
    pub(crate) max_listing_entries: usize,
}

/// `[sftp]`. Session limits and bans are `[ftp]`'s, shared by both.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Sftp {
    /// SSH listener; empty = off.
    pub(crate) listen: String,
    /// The ed25519 host key (OpenSSH format), made when missing.
    pub(crate) host_key: String,
    /// Authentication requests per connection, then it is closed.
    pub(crate) max_auth_attempts: usize,
    /// Seconds from connect to a successful login.
    pub(crate) login_timeout_secs: u64,
    /// A connection with no traffic for this many seconds is closed.
    pub(crate) idle_timeout_secs: u64,
    /// Files and folders one session may have open at once.
    pub(crate) max_open_handles: usize,
}

impl Default for Sftp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:2222".into(),
            host_key: "ssh_host_ed25519_key".into(),
            max_auth_attempts: 6,
            login_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_open_handles: 64,
        }
    }
}

/// `ftp.tls`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FtpTls {
    /// No TLS.
    Off,
    /// Clients may upgrade with `AUTH TLS`.
    Optional,
    /// No login before `AUTH TLS`, no transfer without `PROT P`.
    Required,
}

impl From<FtpTls> for dropvault_ftp::TlsMode {
    fn from(tls: FtpTls) -> Self {
        match tls {
            FtpTls::Off => Self::Off,
            FtpTls::Optional => Self::Optional,
            FtpTls::Required => Self::Required,
        }
    }
}

/// `ftp.tls_session_reuse`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SessionReuse {
    /// A data connection that does not resume the session is refused.
    Required,
    /// Any data connection is accepted.
    Optional,
}

/// `[storage]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Storage {
    /// Where sealed files are kept.
    pub(crate) backend: StorageBackend,
    /// Folder of users' sealed files.
    pub(crate) root: String,
    /// Folder of users' wrapped key files.
    pub(crate) keys_dir: String,
    /// Most bytes one user's unfinished uploads may take in staging, as a
    /// size ("10GiB"); "0" = no bound.
    pub(crate) max_staging_bytes_per_user: String,
    /// The bucket, for `backend = "s3"`.
    pub(crate) s3: S3,
}

/// `storage.backend`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StorageBackend {
    /// The folder `storage.root`.
    Local,
    /// The bucket of `[storage.s3]`.
    S3,
}

/// `[storage.s3]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct S3 {
    /// Base URL of the S3 service; empty = AWS in `region`.
    pub(crate) endpoint: String,
    /// Region (part of every signature).
    pub(crate) region: String,
    /// Bucket.
    pub(crate) bucket: String,
    /// Every object's key starts with this.
    pub(crate) prefix: String,
    /// Access key id; empty = `AWS_ACCESS_KEY_ID`.
    pub(crate) access_key_id: String,
    /// Secret access key; empty = `secret_access_key_file`, then
    /// `AWS_SECRET_ACCESS_KEY`.
    pub(crate) secret_access_key: Secret,
    /// File holding the secret access key.
    pub(crate) secret_access_key_file: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most servers other
    /// than AWS want; false = virtual-hosted (`bucket.endpoint/key`).
    pub(crate) path_style: bool,
    /// Bytes per uploaded part in MiB (5 to 5120), rounded to whole
    /// sealed segments.
    pub(crate) part_size_mib: i64,
    /// CA certificates (PEM) for an `https://` endpoint; empty = the
    /// system's.
    pub(crate) ca_file: String,
    /// Seconds one request may take.
    pub(crate) timeout_secs: i64,
}

impl Default for S3 {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            secret_access_key_file: String::new(),
            path_style: true,
            part_size_mib: 8,
            ca_file: String::new(),
            timeout_secs: 60,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Log {
    /// How records are written.
    pub(crate) format: LogFormat,
}

/// `log.format`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// One line of `key=value` fields per record.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("dropvault-data"),
            ftp: Ftp::default(),
            sftp: Sftp::default(),
            http: Http::default(),
            auth: AuthConfig::default(),
            kms: KmsConfig::default(),
            storage: Storage::default(),
            scan: Scan::default(),
            hooks: Hooks::default(),
            log: Log::default(),
            admin: Admin::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for Ftp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:2121".into(),
            implicit_tls_listen: String::new(),
            tls: FtpTls::Optional,
            tls_session_reuse: SessionReuse::Required,
            tls_cert: String::new(),
            tls_key: String::new(),
            passive_ports: "50000-50100".into(),
            passive_address: String::new(),
            active_mode: true,
            max_sessions: 500,
            max_sessions_per_ip: 20,
            idle_timeout_secs: 600,
            data_timeout_secs: 300,
            login_timeout_secs: 30,
            max_login_failures: 3,
            ban_after_failures: 5,
            ban_ipv6_prefix: 64,
            ban_window_secs: 300,
            ban_secs: 900,
            drain_grace_secs: 30,
            max_listing_entries: 100_000,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            root: "files".into(),
            keys_dir: "keys".into(),
            max_staging_bytes_per_user: "10GiB".into(),
            s3: S3::default(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}

fn invalid(origin: impl Into<String>, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        message: message.to_string(),
    }
}

/// `[kms]` keys `transit_<key>` (the names of `[kms.transit]`'s settings
/// before it was a table) moved into the table. The same setting given
/// both ways must have the same value.
fn move_transit_aliases(defaults: &toml::Value, table: &mut toml::Table) -> Result<(), String> {
    let Some(known) = defaults
        .get("kms")
        .and_then(|k| k.get("transit"))
        .and_then(toml::Value::as_table)
    else {
        return Err("no [kms.transit] defaults".into());
    };
    let Some(kms) = table.get_mut("kms").and_then(toml::Value::as_table_mut) else {
        return Ok(());
    };
    let flat: Vec<String> = kms
        .keys()
        .filter(|k| {
            k.strip_prefix("transit_")
                .is_some_and(|f| known.contains_key(f))
        })
        .cloned()
        .collect();
    for key in flat {
        let (Some(value), Some(field)) = (kms.remove(&key), key.strip_prefix("transit_")) else {
            continue;
        };
        let transit = kms
            .entry("transit")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or("kms.transit: must be a table")?;
        match transit.get(field) {
            Some(other) if *other != value => {
                return Err(format!(
                    "kms.{key} and kms.transit.{field} are the same setting and have \
                     different values; keep one"
                ))
            }
            _ => {
                transit.insert(field.to_owned(), value);
            }
        }
    }
    Ok(())
}

/// The setting environment variable `name` addresses, as a path of keys,
/// with `value` given the type of the default it replaces; `None` for a
/// variable that is not a setting.
fn env_setting(
    defaults: &toml::Value,
    name: &str,
    value: &str,
) -> Result<Option<(Vec<String>, toml::Value)>, ConfigError> {
    let Some(rest) = name.strip_prefix("DROPVAULT_") else {
        return Ok(None);
    };
    let rest = rest.to_ascii_lowercase();
    let (section, key) = if rest == "data_dir" {
        (None, rest.as_str())
    } else {
        match rest.split_once('_') {
            Some((s, k)) if SECTIONS.contains(&s) => (Some(s), k),
            // Other DROPVAULT_ variables (DROPVAULT_CONFIG, test
            // switches) are not settings.
            _ => return Ok(None),
        }
    };
    let mut path: Vec<String> = section.map(str::to_owned).into_iter().collect();
    let mut key = key;
    // A key of a table inside the section (`storage_s3_bucket` is `bucket`
    // of `[storage.s3]`, `kms_transit_token` `token` of `[kms.transit]`).
    let sub = section.and_then(|s| {
        defaults.get(s)?.as_table()?.iter().find_map(|(table, v)| {
            let rest = key.strip_prefix(table.as_str())?.strip_prefix('_')?;
            v.is_table().then(|| (table.clone(), rest))
        })
    });
    if let Some((table, rest)) = sub {
        path.push(table);
        key = rest;
    }
    path.push(key.to_owned());
    let default = path.iter().try_fold(defaults, |v, k| v.get(k.as_str()));
    let typed = match default {
        Some(toml::Value::Integer(_)) => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|e| invalid(name, e))?,
        Some(toml::Value::Boolean(_)) => value
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|e| invalid(name, e))?,
        // Lists (commands) as JSON arrays of strings.
        Some(toml::Value::Array(_)) => serde_json::from_str::<Vec<String>>(value)
            .map(|v| toml::Value::Array(v.into_iter().map(toml::Value::String).collect()))
            .map_err(|e| invalid(name, format!("a JSON array of strings: {e}")))?,
        Some(toml::Value::Table(_)) | None => return Err(invalid(name, "no such setting")),
        Some(_) => toml::Value::String(value.to_owned()),
    };
    Ok(Some((path, typed)))
}

/// Sets the key at `path` in `table`, making the tables on the way.
fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((key, tables)) = path.split_last() else {
        return Err("no key".into());
    };
    let mut target = table;
    for (depth, name) in tables.iter().enumerate() {
        target = target
            .entry(name.as_str())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", tables[..=depth].join(".")))?;
    }
    target.insert(key.clone(), value);
    Ok(())
}

/// Whether the setting at `path` may have `value`, alone on the defaults:
/// serde's message when not (for a choice, the values allowed).
fn check_setting(path: &[String], value: &toml::Value) -> Result<(), String> {
    let mut alone = toml::Table::new();
    insert(&mut alone, path, value.clone())?;
    toml::Value::Table(alone)
        .try_into::<Config>()
        .map(drop)
        .map_err(|e| e.to_string().trim_end().to_owned())
}

/// Whether a file's `table` is a configuration; if not, the first key with
/// a value it may not have, and why.
fn check_table(table: &toml::Table) -> Result<(), String> {
    let whole = toml::Value::Table(table.clone()).try_into::<Config>();
    let Err(whole) = whole else {
        return Ok(());
    };
    let mut leaves = Vec::new();
    leaf_paths(table, &mut Vec::new(), &mut leaves);
    for (path, value) in leaves {
        check_setting(&path, value).map_err(|e| format!("{}: {e}", path.join(".")))?;
    }
    Err(whole.to_string().trim_end().to_owned())
}

/// The path and value of every setting in `table` (a non-table value).
fn leaf_paths<'t>(
    table: &'t toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'t toml::Value)>,
) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value.as_table() {
            Some(inner) => leaf_paths(inner, prefix, out),
            None => out.push((prefix.clone(), value)),
        }
        prefix.pop();
    }
}

/// A `run_as` setting resolved to an account (only when the server is
/// root; see [`dropvault_core::RunAs::resolve`]).
fn run_as(key: &str, name: &str) -> Result<Option<dropvault_core::RunAs>, ConfigError> {
    dropvault_core::RunAs::resolve(name).map_err(|e| invalid(key, e))
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment `env`.
    /// A bad value is reported with the key or the variable that set it.
    pub(crate) fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let defaults =
            toml::Value::try_from(Config::default()).map_err(|e| invalid("defaults", e))?;
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| invalid(&origin, e))?;
            move_transit_aliases(&defaults, &mut table).map_err(|e| invalid(&origin, e))?;
            check_table(&table).map_err(|e| invalid(&origin, e))?;
        }
        for (name, value) in &env {
            let Some((path, typed)) = env_setting(&defaults, name, value)? else {
                continue;
            };
            check_setting(&path, &typed).map_err(|e| invalid(name, e))?;
            insert(&mut table, &path, typed).map_err(|e| invalid(name, e))?;
        }
        let mut config: Config = toml::Value::Table(table).try_into().map_err(|e| {
            invalid(
                file.map_or("environment".into(), |p| p.display().to_string()),
                e,
            )
        })?;
        config.well_known_secrets(&env);
        config.validate()?;
        Ok(config)
    }

    /// The transit token from `VAULT_TOKEN` or `BAO_TOKEN` when no setting
    /// names one: the variables OpenBao's and Vault's own tools read.
    fn well_known_secrets(&mut self, env: &[(String, String)]) {
        let transit = &mut self.kms.transit;
        if !transit.token.is_empty() {
            return;
        }
        for wanted in ["VAULT_TOKEN", "BAO_TOKEN"] {
            if let Some((_, value)) = env
                .iter()
                .find(|(name, value)| name == wanted && !value.is_empty())
            {
                transit.token = Secret::new(value.clone());
                return;
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.passive_ports()?;
        self.passive_address()?;
        self.listen()?;
        self.implicit_listen()?;
        self.max_listing_entries()?;
        if self.storage.backend == StorageBackend::S3 {
            if self.storage.s3.bucket.is_empty() {
                return Err(invalid("storage.s3.bucket", "needed with backend = \"s3\""));
            }
            if !(5..=5120).contains(&self.storage.s3.part_size_mib) {
                return Err(invalid("storage.s3.part_size_mib", "must be 5 to 5120"));
            }
            if !(1..=3600).contains(&self.storage.s3.timeout_secs) {
                return Err(invalid("storage.s3.timeout_secs", "must be 1 to 3600"));
            }
        }
        if self.kms.provider == KmsProvider::Transit {
            self.validate_transit()?;
        }
        self.max_staging_bytes()?;
        self.quota()?;
        self.rates()?;
        self.scan_settings()?;
        if !(1..=1_000_000).contains(&self.hooks.queue_size) {
            return Err(invalid("hooks.queue_size", "must be 1 to 1000000"));
        }
        if !(0..=100).contains(&self.hooks.retries) {
            return Err(invalid("hooks.retries", "must be 0 to 100"));
        }
        if !(1..=3600).contains(&self.hooks.timeout_secs) {
            return Err(invalid("hooks.timeout_secs", "must be 1 to 3600"));
        }
        self.hook_settings()?
            .check()
            .map_err(|e| invalid("hooks", e))?;
        Ok(())
    }

    fn validate_transit(&self) -> Result<(), ConfigError> {
        let transit = &self.kms.transit;
        if transit.address.is_empty() {
            return Err(invalid(
                "kms.transit.address",
                "needed with provider = \"transit\"",
            ));
        }
        if !(1..=3600).contains(&transit.timeout_secs) {
            return Err(invalid("kms.transit.timeout_secs", "must be 1 to 3600"));
        }
        if transit.version_cache_secs > 86400 {
            return Err(invalid(
                "kms.transit.version_cache_secs",
                "must be 0 to 86400",
            ));
        }
        if !transit.role_id.is_empty() && transit.secret_id_file.is_empty() {
            return Err(invalid("kms.transit.secret_id_file", "needed with role_id"));
        }
        Ok(())
    }

    /// The S3 client settings of `[storage.s3]`; the credentials from the
    /// settings, else the secret file, else `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` in `env`.
    pub(crate) fn s3_settings(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<dropvault_core::s3::S3Settings, ConfigError> {
        let s3 = &self.storage.s3;
        let access_key_id = match s3.access_key_id.as_str() {
            "" => env("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            id => id.to_owned(),
        };
        let secret = if !s3.secret_access_key.expose().is_empty() {
            zeroize::Zeroizing::new(s3.secret_access_key.expose().to_owned())
        } else if !s3.secret_access_key_file.is_empty() {
            let path = self.path(&s3.secret_access_key_file);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            zeroize::Zeroizing::new(text.trim().to_owned())
        } else {
            zeroize::Zeroizing::new(env("AWS_SECRET_ACCESS_KEY").unwrap_or_default())
        };
        if access_key_id.is_empty() || secret.is_empty() {
            return Err(invalid(
                "storage.s3",
                "no credentials: set access_key_id and secret_access_key \
                 (or secret_access_key_file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        Ok(dropvault_core::s3::S3Settings {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone(),
            access_key_id,
            secret_access_key: secret,
            path_style: s3.path_style,
            timeout: Duration::from_secs(u64::try_from(s3.timeout_secs).unwrap_or(60)),
            ca_file: (!s3.ca_file.is_empty()).then(|| self.path(&s3.ca_file)),
            retries: 4,
        })
    }

    /// Part size of `[storage.s3]` in bytes.
    pub(crate) fn s3_part_size(&self) -> u64 {
        u64::try_from(self.storage.s3.part_size_mib).unwrap_or(8) << 20
    }

    /// `storage.max_staging_bytes_per_user` in bytes; `None` for "0" (no
    /// bound).
    pub(crate) fn max_staging_bytes(&self) -> Result<Option<u64>, ConfigError> {
        let bytes = parse_size(&self.storage.max_staging_bytes_per_user)
            .map_err(|e| invalid("storage.max_staging_bytes_per_user", e))?;
        Ok(Some(bytes).filter(|&b| b > 0))
    }

    /// `limits.quota_bytes` and `limits.quota_files`: every user's quota
    /// unless their own says otherwise.
    pub(crate) fn quota(&self) -> Result<Quota, ConfigError> {
        let bytes =
            parse_size(&self.limits.quota_bytes).map_err(|e| invalid("limits.quota_bytes", e))?;
        Ok(Quota {
            bytes: Some(bytes),
            files: Some(self.limits.quota_files),
        })
    }

    /// The bandwidth limits of `[limits]`, bytes per second (0 = none).
    pub(crate) fn rates(&self) -> Result<dropvault_core::throttle::RateConfig, ConfigError> {
        use dropvault_core::throttle::{Rate, RateConfig};
        let l = &self.limits;
        let rate = |key: &str, text: &str| {
            parse_size(text).map_err(|e| invalid(format!("limits.{key}"), e))
        };
        Ok(RateConfig {
            upload: Rate {
                session: rate("upload_rate", &l.upload_rate)?,
                user: rate("user_upload_rate", &l.user_upload_rate)?,
                total: rate("total_upload_rate", &l.total_upload_rate)?,
            },
            download: Rate {
                session: rate("download_rate", &l.download_rate)?,
                user: rate("user_download_rate", &l.user_download_rate)?,
                total: rate("total_download_rate", &l.total_download_rate)?,
            },
        })
    }

    /// The scanner settings, checked.
    pub(crate) fn scan_settings(&self) -> Result<dropvault_core::scan::ScanSettings, ConfigError> {
        use dropvault_core::scan::{parse_clamd, ScanSettings};
        let clamd = if self.scan.clamd.is_empty() {
            None
        } else {
            Some(parse_clamd(&self.scan.clamd).map_err(|e| invalid("scan.clamd", e))?)
        };
        if !(1..=3600).contains(&self.scan.timeout_secs) {
            return Err(invalid("scan.timeout_secs", "must be 1 to 3600"));
        }
        let settings = ScanSettings {
            clamd,
            command: self.scan.command.clone(),
            on_error: self.scan.on_error,
            timeout: std::time::Duration::from_secs(
                u64::try_from(self.scan.timeout_secs).unwrap_or(60),
            ),
            quarantine: self.scan.quarantine,
            run_as: run_as("scan.run_as", &self.scan.run_as)?,
        };
        settings.check().map_err(|e| invalid("scan", e))?;
        Ok(settings)
    }

    /// The event hook settings.
    pub(crate) fn hook_settings(
        &self,
    ) -> Result<dropvault_core::events::HookSettings, ConfigError> {
        Ok(dropvault_core::events::HookSettings {
            webhook_url: Some(self.hooks.webhook_url.clone()).filter(|u| !u.is_empty()),
            webhook_proxy: Some(self.hooks.webhook_proxy.clone()).filter(|u| !u.is_empty()),
            webhook_secret: Some(self.hooks.webhook_secret.expose())
                .filter(|k| !k.is_empty())
                .map(|k| zeroize::Zeroizing::new(k.to_owned())),
            command: self.hooks.command.clone(),
            queue: usize::try_from(self.hooks.queue_size).unwrap_or(1024),
            retries: u32::try_from(self.hooks.retries).unwrap_or(3),
            timeout: std::time::Duration::from_secs(
                u64::try_from(self.hooks.timeout_secs).unwrap_or(10),
            ),
            run_as: run_as("hooks.run_as", &self.hooks.run_as)?,
        })
    }

    /// A path setting resolved against `data_dir`.
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.data_dir.join(p)
    }

    /// `ftp.listen` parsed.
    pub(crate) fn listen(&self) -> Result<SocketAddr, ConfigError> {
        self.ftp
            .listen
            .parse()
            .map_err(|e| invalid("ftp.listen", e))
    }

    /// `sftp.listen` parsed; `None` when empty (SFTP off).
    pub(crate) fn sftp_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.sftp.listen.trim() {
            "" => Ok(None),
            s => s.parse().map(Some).map_err(|e| invalid("sftp.listen", e)),
        }
    }

    /// `http.listen` parsed; `None` when empty (no HTTPS listener).
    pub(crate) fn http_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.http.listen.trim() {
            "" => Ok(None),
            s => s.parse().map(Some).map_err(|e| invalid("http.listen", e)),
        }
    }

    /// `http.max_upload_bytes`; `None` when 0 (no limit).
    pub(crate) fn max_upload_bytes(&self) -> Option<u64> {
        Some(self.http.max_upload_bytes).filter(|n| *n > 0)
    }

    /// The base of printed links: `http.public_url` without a trailing
    /// `/`, else `https://<listen>`; `None` with neither.
    pub(crate) fn public_url(&self) -> Option<String> {
        match self.http.public_url.trim().trim_end_matches('/') {
            "" => match self.http.listen.trim() {
                "" => None,
                listen => Some(format!("https://{listen}")),
            },
            url => Some(url.to_owned()),
        }
    }

    /// `admin.listen` parsed; `None` when empty (no admin listener).
    pub(crate) fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.admin.listen.trim() {
            "" => Ok(None),
            s => s.parse().map(Some).map_err(|e| invalid("admin.listen", e)),
        }
    }

    /// The SSH front end's settings.
    pub(crate) fn ssh_config(&self) -> Result<dropvault_sftp::SshConfig, ConfigError> {
        if self.sftp.max_auth_attempts == 0 {
            return Err(invalid("sftp.max_auth_attempts", "must be at least 1"));
        }
        if self.sftp.max_open_handles == 0 {
            return Err(invalid("sftp.max_open_handles", "must be at least 1"));
        }
        let idle = Duration::from_secs(self.sftp.idle_timeout_secs.max(1));
        Ok(dropvault_sftp::SshConfig {
            max_auth_attempts: self.sftp.max_auth_attempts,
            login_timeout: Duration::from_secs(self.sftp.login_timeout_secs.max(1)),
            idle_timeout: idle,
            drain_grace: Duration::from_secs(self.ftp.drain_grace_secs),
            sftp: dropvault_sftp::SftpSettings {
                idle_timeout: idle,
                max_handles: self.sftp.max_open_handles,
                max_listing_entries: self.max_listing_entries()?,
                ..dropvault_sftp::SftpSettings::default()
            },
        })
    }

    /// `ftp.implicit_tls_listen` parsed; `None` when empty.
    pub(crate) fn implicit_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.ftp.implicit_tls_listen.trim() {
            "" => Ok(None),
            s => s
                .parse()
                .map(Some)
                .map_err(|e| invalid("ftp.implicit_tls_listen", e)),
        }
    }

    fn passive_ports(&self) -> Result<(u16, u16), ConfigError> {
        let bad = || {
            invalid(
                "ftp.passive_ports",
                "must be LOW-HIGH, 1024 <= LOW <= HIGH <= 65535",
            )
        };
        let (lo, hi) = self.ftp.passive_ports.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo < 1024 || lo > hi {
            return Err(bad());
        }
        Ok((lo, hi))
    }

    fn passive_address(&self) -> Result<Option<Ipv4Addr>, ConfigError> {
        match self.ftp.passive_address.trim() {
            "" => Ok(None),
            s => s
                .parse()
                .map(Some)
                .map_err(|e| invalid("ftp.passive_address", e)),
        }
    }

    fn ban_ipv6_prefix(&self) -> Result<u8, ConfigError> {
        match self.ftp.ban_ipv6_prefix {
            p @ 1..=128 => Ok(p),
            p => Err(invalid(
                "ftp.ban_ipv6_prefix",
                format!("{p} is not a prefix length from 1 to 128"),
            )),
        }
    }

    /// `ftp.max_listing_entries`: also the most files and folders counted
    /// for a user's quota.
    pub(crate) fn max_listing_entries(&self) -> Result<usize, ConfigError> {
        match self.ftp.max_listing_entries {
            0 => Err(invalid("ftp.max_listing_entries", "must be at least 1")),
            n => Ok(n),
        }
    }

    /// Session limits and bans, shared by every front end (their keys
    /// live under `[ftp]`, where they started).
    pub(crate) fn gate_config(&self) -> Result<dropvault_core::session::GateConfig, ConfigError> {
        Ok(dropvault_core::session::GateConfig {
            guard: dropvault_core::guard::GuardConfig {
                ban_after_failures: self.ftp.ban_after_failures.max(1),
                window: Duration::from_secs(self.ftp.ban_window_secs),
                ban_duration: Duration::from_secs(self.ftp.ban_secs),
            },
            max_sessions: self.ftp.max_sessions,
            max_sessions_per_client: self.ftp.max_sessions_per_ip,
            ban_ipv6_prefix: self.ban_ipv6_prefix()?,
            rates: self.rates()?,
            ..dropvault_core::session::GateConfig::default()
        })
    }

    /// The FTP front end's settings.
    pub(crate) fn ftp_config(&self) -> Result<dropvault_ftp::FtpConfig, ConfigError> {
        Ok(dropvault_ftp::FtpConfig {
            tls: self.ftp.tls.into(),
            tls_session_reuse_required: self.ftp.tls_session_reuse == SessionReuse::Required,
            passive_ports: self.passive_ports()?,
            passive_address: self.passive_address()?,
            active_mode: self.ftp.active_mode,
            idle_timeout: Duration::from_secs(self.ftp.idle_timeout_secs),
            data_timeout: Duration::from_secs(self.ftp.data_timeout_secs.max(1)),
            login_timeout: Duration::from_secs(self.ftp.login_timeout_secs.max(1)),
            max_login_failures: self.ftp.max_login_failures.max(1),
            drain_grace: Duration::from_secs(self.ftp.drain_grace_secs),
            max_listing_entries: self.max_listing_entries()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropvault_core::accounts::AuthBackend;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(None, env(&[])).expect("defaults");
        assert_eq!(c.ftp.listen, "127.0.0.1:2121");
        assert_eq!(c.data_dir, PathBuf::from("dropvault-data"));
        let f = c.ftp_config().expect("ftp");
        assert_eq!(f.passive_ports, (50000, 50100));
        let g = c.gate_config().expect("gate");
        assert_eq!((g.max_sessions, g.max_sessions_per_client), (500, 20));
        assert_eq!(g.rates, dropvault_core::throttle::RateConfig::default());
        assert!(f.tls_session_reuse_required);
        assert_eq!(f.max_listing_entries, 100_000);
    }

    /// Every TOML block in docs/CONFIG.md is a configuration that loads,
    /// and the full one gives exactly the defaults.
    #[test]
    fn documented_config_blocks_parse() {
        let doc = include_str!("../../../docs/CONFIG.md");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut blocks = 0;
        for (i, part) in doc.split("```toml\n").skip(1).enumerate() {
            let block = part.split("```").next().unwrap_or_default();
            let path = dir.path().join(format!("block{i}.toml"));
            std::fs::write(&path, block).expect("write");
            let c = Config::load(Some(&path), env(&[]))
                .unwrap_or_else(|e| panic!("CONFIG.md block {i} does not load: {e}\n{block}"));
            if i == 0 {
                let d = Config::load(None, env(&[])).expect("defaults");
                assert_eq!(
                    format!("{c:?}"),
                    format!("{d:?}"),
                    "first block is the defaults"
                );
            }
            blocks += 1;
        }
        assert!(blocks >= 1);
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/dv\"\n[ftp]\nlisten = \"0.0.0.0:21\"\nmax_sessions = 7\n[log]\nformat = \"json\"\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&path),
            env(&[
                ("DROPVAULT_FTP_LISTEN", "127.0.0.1:2200"),
                ("DROPVAULT_FTP_ACTIVE_MODE", "false"),
                ("DROPVAULT_FTP_IDLE_TIMEOUT_SECS", "60"),
                ("DROPVAULT_CONFIG", "ignored"),
                ("OTHER", "x"),
            ]),
        )
        .expect("load");
        assert_eq!(c.data_dir, PathBuf::from("/srv/dv"));
        assert_eq!(c.ftp.listen, "127.0.0.1:2200");
        assert_eq!(c.ftp.max_sessions, 7);
        assert!(!c.ftp.active_mode);
        assert_eq!(c.ftp.idle_timeout_secs, 60);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.path("users.toml"), PathBuf::from("/srv/dv/users.toml"));
    }

    #[test]
    fn sizes_parse_in_binary_units_and_0_is_no_bound() {
        for (text, bytes) in [
            ("0", 0),
            ("1234", 1234),
            ("17B", 17),
            ("1KiB", 1024),
            ("500MiB", 500 << 20),
            ("10GiB", 10 << 30),
            (" 2 TiB ", 2 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "GiB",
            "10GB",
            "10gib",
            "1.5GiB",
            "-1",
            "10 GiB x",
            "99999999TiB",
        ] {
            assert!(parse_size(text).is_err(), "{text}");
        }
        let limit = |v: &str| {
            Config::load(
                None,
                env(&[("DROPVAULT_STORAGE_MAX_STAGING_BYTES_PER_USER", v)]),
            )
            .map(|c| c.max_staging_bytes().expect("checked"))
        };
        assert_eq!(limit("10GiB").expect("loads"), Some(10 << 30));
        assert_eq!(limit("0").expect("loads"), None);
        assert!(limit("ten").is_err());
        let d = Config::load(None, env(&[])).expect("defaults");
        assert_eq!(d.max_staging_bytes().expect("default"), Some(10 << 30));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(Config::load(None, env(&[("DROPVAULT_FTP_LISTN", "x")])).is_err());
        for (var, bad, key) in [
            ("DROPVAULT_LIMITS_UPLOAD_RATE", "10MB", "limits.upload_rate"),
            (
                "DROPVAULT_LIMITS_USER_DOWNLOAD_RATE",
                "1.5MiB",
                "limits.user_download_rate",
            ),
            (
                "DROPVAULT_LIMITS_TOTAL_UPLOAD_RATE",
                "-1",
                "limits.total_upload_rate",
            ),
        ] {
            let e = Config::load(None, env(&[(var, bad)])).expect_err(var);
            assert!(e.to_string().contains(key), "{e}");
        }
        assert!(Config::load(None, env(&[("DROPVAULT_FTP_MAX_SESSIONS", "many")])).is_err());
        assert!(Config::load(None, env(&[("DROPVAULT_FTP_TLS", "maybe")])).is_err());
        assert!(Config::load(None, env(&[("DROPVAULT_FTP_PASSIVE_PORTS", "10-5")])).is_err());
        assert!(Config::load(None, env(&[("DROPVAULT_FTP_MAX_LISTING_ENTRIES", "0")])).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[ftp]\nlisen = \"x\"\n").expect("write");
        assert!(Config::load(Some(&path), env(&[])).is_err());
    }

    #[test]
    fn s3_settings_come_from_their_table_the_environment_and_aws_variables() {
        let c = Config::load(
            None,
            env(&[
                ("DROPVAULT_STORAGE_BACKEND", "s3"),
                ("DROPVAULT_STORAGE_S3_BUCKET", "drops"),
                ("DROPVAULT_STORAGE_S3_ENDPOINT", "http://127.0.0.1:3900"),
                ("DROPVAULT_STORAGE_S3_PART_SIZE_MIB", "16"),
                ("DROPVAULT_STORAGE_S3_PATH_STYLE", "false"),
            ]),
        )
        .expect("s3 config");
        assert_eq!(c.storage.s3.bucket, "drops");
        assert_eq!(c.s3_part_size(), 16 << 20);
        assert!(!c.storage.s3.path_style);
        // No keys in the settings: the standard AWS variables.
        let aws = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("shh".to_owned()),
            _ => None,
        };
        let s = c.s3_settings(aws).expect("settings");
        assert_eq!(
            (s.access_key_id.as_str(), s.secret_access_key.as_str()),
            ("AKID", "shh")
        );
        assert!(c.s3_settings(|_| None).is_err());
        // The settings win over the variables; secrets never print.
        let mut c2 = c.clone();
        c2.storage.s3.access_key_id = "mine".into();
        c2.storage.s3.secret_access_key = Secret::new("s3cr3t".into());
        assert_eq!(c2.s3_settings(aws).expect("settings").access_key_id, "mine");
        assert!(!format!("{c2:?}").contains("s3cr3t"));
        let file = "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nregion = \"eu\"\n";
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("c.toml"), file).expect("write");
        let c3 = Config::load(Some(&dir.path().join("c.toml")), env(&[])).expect("file");
        assert_eq!(c3.storage.s3.region, "eu");
        for bad in [
            &[("DROPVAULT_STORAGE_BACKEND", "s3")][..],
            &[
                ("DROPVAULT_STORAGE_BACKEND", "s3"),
                ("DROPVAULT_STORAGE_S3_BUCKET", "b"),
                ("DROPVAULT_STORAGE_S3_PART_SIZE_MIB", "4"),
            ],
            &[("DROPVAULT_STORAGE_BACKEND", "nfs")],
            &[("DROPVAULT_STORAGE_S3_BUKET", "b")],
        ] {
            assert!(Config::load(None, env(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transit_settings_are_checked() {
        let transit = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![("DROPVAULT_KMS_PROVIDER", "transit")];
            pairs.extend_from_slice(extra);
            Config::load(None, env(&pairs))
        };
        assert!(transit(&[]).is_err(), "no address");
        let ok = transit(&[
            ("DROPVAULT_KMS_TRANSIT_ADDRESS", "http://127.0.0.1:8200"),
            ("DROPVAULT_KMS_TRANSIT_TOKEN", "s.secret"),
        ])
        .expect("valid");
        assert_eq!(ok.kms.transit.token.expose(), "s.secret");
        assert!(
            !format!("{ok:?}").contains("s.secret"),
            "token in Debug output"
        );
        assert!(
            transit(&[
                ("DROPVAULT_KMS_TRANSIT_ADDRESS", "http://127.0.0.1:8200"),
                ("DROPVAULT_KMS_TRANSIT_ROLE_ID", "role"),
            ])
            .is_err(),
            "AppRole without a secret id file"
        );
        assert!(transit(&[
            ("DROPVAULT_KMS_TRANSIT_ADDRESS", "http://127.0.0.1:8200"),
            ("DROPVAULT_KMS_TRANSIT_KEY_VERSION", "-1"),
        ])
        .is_err());
        assert!(Config::load(None, env(&[("DROPVAULT_KMS_PROVIDER", "hsm")])).is_err());
    }

    /// Loads `text` as a configuration file, with `vars` as the
    /// environment.
    fn load_file(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(Some(&path), env(vars))
    }

    #[test]
    fn choices_are_typed_and_a_bad_one_names_its_key_and_the_allowed_values() {
        let c = Config::load(
            None,
            env(&[
                ("DROPVAULT_AUTH_BACKEND", "ldap"),
                ("DROPVAULT_FTP_TLS", "required"),
                ("DROPVAULT_FTP_TLS_SESSION_REUSE", "optional"),
                ("DROPVAULT_SCAN_ON_ERROR", "accept"),
                ("DROPVAULT_LOG_FORMAT", "json"),
            ]),
        )
        .expect("valid choices");
        assert_eq!(c.auth.backend, AuthBackend::Ldap);
        assert_eq!(c.scan.on_error, OnError::Accept);
        let f = c.ftp_config().expect("ftp");
        assert_eq!(f.tls, dropvault_ftp::TlsMode::Required);
        assert!(!f.tls_session_reuse_required);
        let c = load_file("[kms]\nprovider = \"pkcs11\"\n", &[]).expect("pkcs11");
        assert_eq!(c.kms.provider, KmsProvider::Pkcs11);
        for (key, value, allowed) in [
            ("auth.backend", "nis", "`file`, `pam`, `ldap`"),
            ("kms.provider", "hsm", "`local`, `transit`, `pkcs11`"),
            ("ftp.tls", "maybe", "`off`, `optional`, `required`"),
            (
                "ftp.tls_session_reuse",
                "always",
                "`required` or `optional`",
            ),
            ("scan.on_error", "ignore", "`reject` or `accept`"),
            ("log.format", "xml", "`text` or `json`"),
            ("storage.backend", "nfs", "`local` or `s3`"),
        ] {
            let (section, name) = key.split_once('.').expect("dotted");
            let file = load_file(&format!("[{section}]\n{name} = \"{value}\"\n"), &[])
                .expect_err(key)
                .to_string();
            let var = format!("DROPVAULT_{}_{}", section, name).to_ascii_uppercase();
            let from_env = Config::load(None, env(&[(&var, value)]))
                .expect_err(&var)
                .to_string();
            for (message, origin) in [(file, key), (from_env, var.as_str())] {
                assert!(message.contains(origin), "{message}");
                assert!(
                    message.contains(value) && message.contains(allowed),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn flat_transit_keys_are_aliases_of_the_transit_table() {
        let flat = load_file(
            "[kms]\nprovider = \"transit\"\ntransit_address = \"http://127.0.0.1:8200\"\n\
             transit_key = \"k\"\ntransit_timeout_secs = 5\ntransit_allow_http = true\n",
            &[],
        )
        .expect("flat keys");
        let nested = load_file(
            "[kms]\nprovider = \"transit\"\n[kms.transit]\naddress = \"http://127.0.0.1:8200\"\n\
             key = \"k\"\ntimeout_secs = 5\nallow_http = true\n",
            &[],
        )
        .expect("table");
        assert_eq!(format!("{flat:?}"), format!("{nested:?}"));
        assert_eq!(flat.kms.transit.key, "k");
        assert_eq!(flat.kms.transit.timeout_secs, 5);
        // The same value both ways is one setting; different values are an
        // error naming both.
        let both = "[kms]\nprovider = \"transit\"\ntransit_address = \"http://127.0.0.1:8200\"\n\
                    [kms.transit]\naddress = \"http://127.0.0.1:8200\"\n";
        assert!(load_file(both, &[]).is_ok());
        let clash = both.replacen("8200\"\n[", "8201\"\n[", 1);
        let message = load_file(&clash, &[]).expect_err("clash").to_string();
        assert!(
            message.contains("kms.transit_address") && message.contains("kms.transit.address"),
            "{message}"
        );
        // The environment overrides the file, whichever spelling it used.
        let c = load_file(
            "[kms]\ntransit_token = \"from-file\"\n",
            &[("DROPVAULT_KMS_TRANSIT_TOKEN", "from-env")],
        )
        .expect("loads");
        assert_eq!(c.kms.transit.token.expose(), "from-env");
        let typo = load_file("[kms]\ntransit_adress = \"x\"\n", &[]).expect_err("typo");
        assert!(typo.to_string().contains("kms.transit_adress"), "{typo}");
    }

    #[test]
    fn every_providers_secrets_come_from_the_environment_and_never_print() {
        let c = Config::load(
            None,
            env(&[
                ("DROPVAULT_AUTH_LDAP_BIND_PASSWORD", "ldap-secret"),
                ("DROPVAULT_AUTH_LDAP_URL", "ldaps://ldap.example"),
                ("DROPVAULT_KMS_PKCS11_PIN", "pin-secret"),
                ("DROPVAULT_KMS_PKCS11_TOKEN_LABEL", "hsm"),
                ("VAULT_TOKEN", "vault-secret"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.auth.ldap.bind_password.expose(), "ldap-secret");
        assert_eq!(c.auth.ldap.url, "ldaps://ldap.example");
        assert_eq!(c.kms.pkcs11.pin.expose(), "pin-secret");
        assert_eq!(c.kms.pkcs11.token_label, "hsm");
        assert_eq!(c.kms.transit.token.expose(), "vault-secret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("-secret"), "{shown}");
        let token = |vars: &[(&str, &str)]| {
            Config::load(None, env(vars))
                .expect("loads")
                .kms
                .transit
                .token
                .expose()
                .to_owned()
        };
        assert_eq!(token(&[("BAO_TOKEN", "b")]), "b");
        assert_eq!(token(&[("VAULT_TOKEN", ""), ("BAO_TOKEN", "b")]), "b");
        assert_eq!(token(&[("VAULT_TOKEN", "v"), ("BAO_TOKEN", "b")]), "v");
        assert_eq!(
            token(&[("BAO_TOKEN", "b"), ("DROPVAULT_KMS_TRANSIT_TOKEN", "d")]),
            "d"
        );
        assert_eq!(token(&[]), "");
    }

    /// Every setting that is a [`Secret`] (its value never printed) is
    /// named by [`dropvault_core::secret::SECRET_ENV`], which keeps it from
    /// hooks, and every `DROPVAULT_` name there is such a setting.
    #[test]
    fn the_secret_variables_are_exactly_the_secret_settings() {
        let defaults = toml::Value::try_from(Config::default()).expect("defaults");
        let table = defaults.as_table().expect("a table");
        let mut leaves = Vec::new();
        leaf_paths(table, &mut Vec::new(), &mut leaves);
        let marker = "marker-4711";
        let mut secret = Vec::new();
        for (path, value) in leaves {
            if !value.is_str() {
                continue;
            }
            let var = format!("DROPVAULT_{}", path.join("_")).to_ascii_uppercase();
            // Choices, addresses, accounts: not a value this marker can be.
            let Ok(c) = Config::load(None, env(&[(&var, marker)])) else {
                continue;
            };
            if !format!("{c:?}").contains(marker) {
                secret.push(var);
            }
        }
        let mut listed: Vec<String> = dropvault_core::secret::SECRET_ENV
            .iter()
            .filter(|n| n.starts_with("DROPVAULT_"))
            .map(|n| n.to_string())
            .collect();
        secret.sort();
        listed.sort();
        assert_eq!(secret, listed);
    }
}
