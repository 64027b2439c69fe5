//! Directory accounts (LDAP, Active Directory): search-then-bind.

mod cache;
mod pool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::asn1::StructureTag;
use ldap3::{LdapConn, Scope, SearchOptions, SearchResult};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::sshkey::{SshPublicKey, MAX_KEYS_PER_USER};
use super::{validate_user_name, Account, AuthError, Authenticator, Password};
use crate::secret::Secret;
use crate::size::parse_size;
use crate::vault::Quota;
use cache::LoginCache;
use pool::{fault, Connector, Fault, Pool};

/// `[auth.ldap]`: where the directory is and how users are found in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host[:port]` or `ldap://host[:port]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// CA certificates (PEM) the directory's certificate must chain to;
    /// empty = the system's.
    pub ca_file: String,
    /// Allow `ldap://` without StartTLS (passwords in clear on the wire).
    pub allow_plaintext: bool,
    /// The service account searches are made as; empty = anonymous.
    pub bind_dn: String,
    /// Its password (else `bind_password_file`, else
    /// `DROPVAULT_AUTH_LDAP_BIND_PASSWORD`).
    pub bind_password: Secret,
    /// File holding the service account's password.
    pub bind_password_file: String,
    /// Where users are searched (subtree).
    pub base_dn: String,
    /// Filter finding one user; `{user}` is replaced by the escaped name.
    pub user_filter: String,
    /// Attribute whose value is the user's name in dropvault.
    pub name_attribute: String,
    /// `lower`: names are case-folded, so `Alice` and `alice` are one user;
    /// `keep`: the directory's spelling.
    pub name_case: NameCase,
    /// Group DN a user must be a member of; empty = any user found.
    pub require_group: String,
    /// Attribute holding SSH public keys (openssh-lpk); empty = none.
    pub ssh_key_attribute: String,
    /// Attribute holding the user's own `limits.quota_bytes` (a size,
    /// "5GiB"; "0" = no limit); empty = none.
    pub quota_attribute: String,
    /// Seconds one connection, bind or search may take.
    pub timeout_secs: u64,
    /// Seconds a successful login is remembered; 0 = off.
    pub cache_secs: u64,
    /// Connections kept open to the directory.
    pub pool_size: usize,
}

/// How a directory's user name becomes a dropvault user name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameCase {
    /// Lower-cased (ASCII).
    #[default]
    Lower,
    /// As the directory spells it.
    Keep,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            starttls: false,
            ca_file: String::new(),
            allow_plaintext: false,
            bind_dn: String::new(),
            bind_password: Secret::default(),
            bind_password_file: String::new(),
            base_dn: String::new(),
            user_filter: "(&(objectClass=inetOrgPerson)(uid={user}))".into(),
            name_attribute: "uid".into(),
            name_case: NameCase::Lower,
            require_group: String::new(),
            ssh_key_attribute: "sshPublicKey".into(),
            quota_attribute: String::new(),
            timeout_secs: 10,
            cache_secs: 60,
            pool_size: 4,
        }
    }
}

impl LdapConfig {
    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// `ca_file` relative to `base`, if set.
    pub fn ca_path(&self, base: &std::path::Path) -> Option<PathBuf> {
        (!self.ca_file.is_empty()).then(|| base.join(&self.ca_file))
    }
}

/// Longest name a peer may type that is looked up in the directory.
const MAX_LOGIN_NAME_LEN: usize = 256;

/// Most connections open at once, as a multiple of `pool_size`.
const OPEN_PER_KEPT: usize = 4;

/// Largest `pool_size` accepted.
const MAX_POOL_SIZE: usize = 64;

/// LDAP result codes (RFC 4511, appendix A).
mod rc {
    pub(super) const SUCCESS: u32 = 0;
    pub(super) const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub(super) const CONSTRAINT_VIOLATION: u32 = 19;
    pub(super) const NO_SUCH_OBJECT: u32 = 32;
    pub(super) const INAPPROPRIATE_AUTHENTICATION: u32 = 48;
    pub(super) const INVALID_CREDENTIALS: u32 = 49;
    pub(super) const INSUFFICIENT_ACCESS_RIGHTS: u32 = 50;
    pub(super) const UNWILLING_TO_PERFORM: u32 = 53;
}

/// Accounts in a directory: search-then-bind over a pool of service-bound
/// connections, with a short cache of successful logins.
pub struct LdapAuthenticator {
    pool: Pool,
    base_dn: String,
    user_filter: String,
    name_attribute: String,
    name_case: NameCase,
    require_group: String,
    ssh_key_attribute: String,
    quota_attribute: String,
    cache: Option<LoginCache>,
}

impl std::fmt::Debug for LdapAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapAuthenticator")
            .field("url", &self.pool.connector().url)
            .field("base_dn", &self.base_dn)
            .field("require_group", &self.require_group)
            .finish_non_exhaustive()
    }
}

/// A user's entry, as far as logins need it.
struct UserEntry {
    dn: String,
    names: Vec<String>,
    groups: Vec<String>,
    ssh_keys: Vec<String>,
    quotas: Vec<String>,
}

impl LdapAuthenticator {
    /// Checks `config` (relative paths are inside `base`) and connects.
    ///
    /// Settings that cannot work are an error ([`AuthError::BadSettings`],
    /// or [`AuthError::Io`] for an unreadable file). A directory that does
    /// not answer yet is not: it is logged, and logins are "try again
    /// later" until it answers.
    pub fn new(config: &LdapConfig, base: &std::path::Path) -> Result<Self, AuthError> {
        let tls = check_url(config)?;
        let bad = |what: &str| Err(AuthError::BadSettings(format!("auth.ldap: {what}")));
        if config.base_dn.trim().is_empty() {
            return bad("base_dn is empty");
        }
        if !config.user_filter.contains("{user}") {
            return bad("user_filter has no {user}");
        }
        if ldap3::parse_filter(config.user_filter.replace("{user}", "x")).is_err() {
            return bad("user_filter is not an LDAP filter");
        }
        if config.name_attribute.trim().is_empty() {
            return bad("name_attribute is empty");
        }
        if config.timeout_secs == 0 {
            return bad("timeout_secs must be at least 1");
        }
        if !(1..=MAX_POOL_SIZE).contains(&config.pool_size) {
            return bad("pool_size must be 1 to 64");
        }
        let bind_password = service_password(config, base)?;
        if !config.bind_dn.is_empty() && bind_password.is_empty() {
            // An empty simple bind is an anonymous bind: it would "work".
            return bad(
                "bind_dn is set but no bind_password, bind_password_file or \
                 DROPVAULT_AUTH_LDAP_BIND_PASSWORD",
            );
        }
        let tls = match tls {
            true => Some(tls_config(config.ca_path(base).as_deref())?),
            false => {
                tracing::warn!(
                    url = %config.url,
                    "auth.ldap: allow_plaintext: passwords go to the directory unencrypted"
                );
                None
            }
        };
        let connector = Connector {
            url: config.url.clone(),
            starttls: config.starttls,
            tls,
            timeout: config.timeout(),
            bind_dn: config.bind_dn.clone(),
            bind_password,
        };
        let cache = match config.cache_secs {
            0 => None,
            secs => Some(LoginCache::new(Duration::from_secs(secs))?),
        };
        let this = Self {
            pool: Pool::new(
                connector,
                config.pool_size,
                config.pool_size * OPEN_PER_KEPT,
            ),
            base_dn: config.base_dn.clone(),
            user_filter: config.user_filter.clone(),
            name_attribute: config.name_attribute.clone(),
            name_case: config.name_case,
            require_group: config.require_group.clone(),
            ssh_key_attribute: config.ssh_key_attribute.clone(),
            quota_attribute: config.quota_attribute.clone(),
            cache,
        };
        if let Err(e) = this.pool.warm_up() {
            tracing::warn!(error = %e, "the LDAP directory does not answer yet; logins wait for it");
        }
        Ok(this)
    }

    fn url(&self) -> &str {
        &self.pool.connector().url
    }

    /// The one entry `user_filter` finds for `name`, if exactly one.
    fn find_user(&self, conn: &mut LdapConn, name: &str) -> Result<Option<UserEntry>, Fault> {
        let filter = self
            .user_filter
            .replace("{user}", &ldap3::ldap_escape(name));
        let mut attrs = vec![self.name_attribute.as_str(), "memberOf"];
        if !self.ssh_key_attribute.is_empty() {
            attrs.push(&self.ssh_key_attribute);
        }
        if !self.quota_attribute.is_empty() {
            attrs.push(&self.quota_attribute);
        }
        let found = conn
            .with_search_options(SearchOptions::new().sizelimit(2))
            .with_timeout(self.pool.connector().timeout)
            .search(&self.base_dn, Scope::Subtree, &filter, attrs)
            .map_err(|e| fault(self.url(), "searching for the user", &e))?;
        let SearchResult(entries, result) = found;
        match result.rc {
            rc::SUCCESS => {}
            rc::SIZE_LIMIT_EXCEEDED => {
                tracing::info!(user = ?name, "LDAP login refused: user_filter finds more than one entry");
                return Ok(None);
            }
            rc => {
                return Err(AuthError::Unavailable(format!(
                    "{}: searching {:?} for a user: result {rc} {}",
                    self.url(),
                    self.base_dn,
                    result.text
                ))
                .into())
            }
        }
        let mut entries = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate());
        let (Some(entry), None) = (entries.next(), entries.next()) else {
            tracing::debug!(user = ?name, "LDAP login refused: no entry, or more than one");
            return Ok(None);
        };
        let entry = parse_entry(
            entry.0,
            [
                &self.name_attribute,
                &self.ssh_key_attribute,
                &self.quota_attribute,
            ],
        );
        if entry.is_none() {
            tracing::warn!(user = ?name, "LDAP login refused: the directory sent a malformed entry");
        }
        Ok(entry)
    }

    /// The dropvault name of `entry`: its one `name_attribute` value,
    /// case-folded as configured, if it is a valid user name.
    fn canonical_name(&self, entry: &UserEntry) -> Option<String> {
        let [name] = entry.names.as_slice() else {
            tracing::info!(dn = %entry.dn, attribute = %self.name_attribute, values = entry.names.len(),
                "LDAP login refused: the entry needs exactly one value of the name attribute");
            return None;
        };
        let name = match self.name_case {
            NameCase::Lower => name.to_ascii_lowercase(),
            NameCase::Keep => name.clone(),
        };
        match validate_user_name(&name) {
            Ok(()) => Some(name),
            Err(e) => {
                tracing::info!(dn = %entry.dn, error = %e, "LDAP login refused: not a dropvault user name");
                None
            }
        }
    }

    /// Whether `entry` is in `require_group` (always, when none is set):
    /// its `memberOf`, else the group's `member`/`uniqueMember`.
    fn in_group(&self, conn: &mut LdapConn, entry: &UserEntry) -> Result<bool, Fault> {
        if self.require_group.is_empty()
            || entry.groups.iter().any(|g| same_dn(g, &self.require_group))
        {
            return Ok(true);
        }
        let dn = ldap3::ldap_escape(entry.dn.as_str());
        let filter = format!("(|(member={dn})(uniqueMember={dn}))");
        let found = conn
            .with_search_options(SearchOptions::new().sizelimit(1))
            .with_timeout(self.pool.connector().timeout)
            .search(&self.require_group, Scope::Base, &filter, ["1.1"])
            .map_err(|e| fault(self.url(), "searching the group", &e))?;
        let SearchResult(entries, result) = found;
        let member = match result.rc {
            rc::SUCCESS => entries.iter().any(|e| !e.is_ref() && !e.is_intermediate()),
            rc::NO_SUCH_OBJECT => {
                tracing::warn!(group = %self.require_group,
                    "auth.ldap.require_group does not exist (or the service account cannot see it)");
                false
            }
            rc => {
                return Err(AuthError::Unavailable(format!(
                    "{}: searching the group {:?}: result {rc} {}",
                    self.url(),
                    self.require_group,
                    result.text
                ))
                .into())
            }
        };
        if !member {
            tracing::info!(dn = %entry.dn, group = %self.require_group, "LDAP login refused: not in the group");
        }
        Ok(member)
    }

    /// Binds as `dn` with `password`, then as the service again.
    fn check_password(
        &self,
        conn: &mut LdapConn,
        dn: &str,
        password: &Password,
    ) -> Result<bool, Fault> {
        let result = conn
            .with_timeout(self.pool.connector().timeout)
            .simple_bind(dn, password.expose())
            .map_err(|e| fault(self.url(), "binding as the user", &e))?;
        let accepted = match result.rc {
            rc::SUCCESS => true,
            rc::INVALID_CREDENTIALS
            | rc::INAPPROPRIATE_AUTHENTICATION
            | rc::INSUFFICIENT_ACCESS_RIGHTS
            | rc::UNWILLING_TO_PERFORM
            | rc::CONSTRAINT_VIOLATION => {
                tracing::debug!(dn, rc = result.rc, text = %result.text, "LDAP login refused: bind failed");
                false
            }
            rc => {
                return Err(AuthError::Unavailable(format!(
                    "{}: binding as a user: result {rc} {}",
                    self.url(),
                    result.text
                ))
                .into())
            }
        };
        self.pool.connector().bind_service(conn)?;
        Ok(accepted)
    }

    /// The user's entry and dropvault name, if found, named properly and in
    /// the group.
    fn eligible(
        &self,
        conn: &mut LdapConn,
        name: &str,
    ) -> Result<Option<(UserEntry, Account)>, Fault> {
        let Some(entry) = self.find_user(conn, name)? else {
            return Ok(None);
        };
        let Some(canonical) = self.canonical_name(&entry) else {
            return Ok(None);
        };
        if !self.in_group(conn, &entry)? {
            return Ok(None);
        }
        let quota = self.quota(&entry);
        Ok(Some((
            entry,
            Account {
                name: canonical,
                quota,
            },
        )))
    }

    /// The user's own quota from `quota_attribute`: one value, a size. Any
    /// other value is logged and leaves the server's.
    fn quota(&self, entry: &UserEntry) -> Quota {
        let bytes = match entry.quotas.as_slice() {
            [] => None,
            [value] => match parse_size(value) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    tracing::warn!(dn = %entry.dn, attribute = %self.quota_attribute, error = %e,
                        "LDAP quota attribute ignored: not a size");
                    None
                }
            },
            _ => {
                tracing::warn!(dn = %entry.dn, attribute = %self.quota_attribute,
                    "LDAP quota attribute ignored: more than one value");
                None
            }
        };
        Quota { bytes, files: None }
    }
}

impl Authenticator for LdapAuthenticator {
    fn authenticate(&self, name: &str, password: &Password) -> Result<Option<Account>, AuthError> {
        if password.expose().is_empty() {
            // Before any bind: an empty simple bind is an anonymous bind,
            // which many directories accept.
            tracing::debug!(user = ?name, "LDAP login refused: empty password");
            return Ok(None);
        }
        if name.is_empty() || name.len() > MAX_LOGIN_NAME_LEN {
            return Ok(None);
        }
        if let Some(account) = self.cache.as_ref().and_then(|c| c.get(name, password)) {
            return Ok(Some(account));
        }
        let account = self.pool.run(|conn| {
            let Some((entry, account)) = self.eligible(conn, name)? else {
                return Ok(None);
            };
            Ok(self
                .check_password(conn, &entry.dn, password)?
                .then_some(account))
        })?;
        if let (Some(cache), Some(account)) = (&self.cache, &account) {
            cache.put(name, password, account);
        }
        Ok(account)
    }

    fn authenticate_key(&self, name: &str, key_blob: &[u8]) -> Result<Option<Account>, AuthError> {
        if self.ssh_key_attribute.is_empty() || name.is_empty() || name.len() > MAX_LOGIN_NAME_LEN {
            return Ok(None);
        }
        self.pool.run(|conn| {
            let Some((entry, account)) = self.eligible(conn, name)? else {
                return Ok(None);
            };
            let found = entry
                .ssh_keys
                .iter()
                .take(MAX_KEYS_PER_USER)
                .filter_map(|line| match SshPublicKey::parse_line(line) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        tracing::info!(dn = %entry.dn, error = %e, "an SSH key in the directory is not usable");
                        None
                    }
                })
                .any(|key| key.blob() == key_blob);
            if !found {
                tracing::debug!(dn = %entry.dn, "LDAP key login refused: not one of the entry's keys");
            }
            Ok(found.then_some(account))
        })
    }

    /// The user's entry, if found, named properly and in the group (a
    /// drop link of theirs works only while all three hold).
    fn lookup(&self, name: &str) -> Result<Option<Account>, AuthError> {
        if name.is_empty() || name.len() > MAX_LOGIN_NAME_LEN {
            return Ok(None);
        }
        self.pool
            .run(|conn| Ok(self.eligible(conn, name)?.map(|(_, account)| account)))
    }
}

/// Whether the URL asks for TLS (`ldaps://`, or `ldap://` with StartTLS);
/// refuses anything but `ldaps://host[:port]` and `ldap://host[:port]`,
/// and plain `ldap://` unless `allow_plaintext`.
fn check_url(config: &LdapConfig) -> Result<bool, AuthError> {
    let bad =
        |what: String| AuthError::BadSettings(format!("auth.ldap.url {:?}: {what}", config.url));
    let (ldaps, rest) = if let Some(rest) = config.url.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = config.url.strip_prefix("ldap://") {
        (false, rest)
    } else {
        return Err(bad("must start with ldaps:// or ldap://".into()));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.chars().any(|c| {
            matches!(c, '/' | '?' | '#' | '@' | '%') || c.is_whitespace() || c.is_control()
        })
    {
        return Err(bad(
            "must be scheme://host[:port], without path, user or query".into(),
        ));
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(bad(format!("bad port {port:?}")));
            }
            host
        }
        _ => authority,
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host".into()));
    }
    match (ldaps, config.starttls, config.allow_plaintext) {
        (true, true, _) => Err(bad(
            "starttls is for ldap:// URLs (ldaps:// is TLS already)".into(),
        )),
        (true, false, _) | (false, true, _) => Ok(true),
        (false, false, true) => Ok(false),
        (false, false, false) => Err(bad(
            "ldap:// sends passwords in clear: use ldaps://, starttls = true, \
             or allow_plaintext = true"
                .into(),
        )),
    }
}

/// The service account's password: `bind_password`, else the first line of
/// `bind_password_file` (relative to `base`).
fn service_password(config: &LdapConfig, base: &std::path::Path) -> Result<Secret, AuthError> {
    if !config.bind_password.is_empty() || config.bind_password_file.is_empty() {
        return Ok(config.bind_password.clone());
    }
    let path = base.join(&config.bind_password_file);
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| AuthError::io(&path, e))?);
    let first = text.lines().next().unwrap_or_default();
    Ok(Secret::new(first.to_owned()))
}

/// rustls on aws-lc-rs, trusting `ca_file`'s certificates, else the
/// system's.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, AuthError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| AuthError::io(path, e))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let added = cert
                    .map_err(|e| e.to_string())
                    .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
                if let Err(e) = added {
                    return Err(AuthError::BadSettings(format!(
                        "auth.ldap.ca_file {}: {e}",
                        path.display()
                    )));
                }
            }
            if roots.is_empty() {
                return Err(AuthError::BadSettings(format!(
                    "auth.ldap.ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            for e in &system.errors {
                tracing::warn!(error = %e, "reading the system's CA certificates");
            }
            roots.add_parsable_certificates(system.certs);
            if roots.is_empty() {
                return Err(AuthError::BadSettings(
                    "auth.ldap: no system CA certificates found; set ca_file".into(),
                ));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AuthError::BadSettings(format!("auth.ldap TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The parts of a search result entry that logins use, read without
/// trusting its shape (ldap3's `SearchEntry::construct` panics on a
/// malformed one). Attribute names are compared ignoring case.
/// `attributes`: the name, SSH key and quota attributes (the last two may
/// be empty: not read).
fn parse_entry(tag: StructureTag, attributes: [&str; 3]) -> Option<UserEntry> {
    let [name_attribute, ssh_key_attribute, quota_attribute] = attributes;
    let mut parts = tag.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
    if dn.is_empty() {
        // Binding with an empty DN would be an anonymous bind.
        return None;
    }
    let mut entry = UserEntry {
        dn,
        names: Vec::new(),
        groups: Vec::new(),
        ssh_keys: Vec::new(),
        quotas: Vec::new(),
    };
    for attribute in parts.next()?.expect_constructed()? {
        let mut attribute = attribute.expect_constructed()?.into_iter();
        let kind = String::from_utf8(attribute.next()?.expect_primitive()?).ok()?;
        let target = if kind.eq_ignore_ascii_case(name_attribute) {
            &mut entry.names
        } else if kind.eq_ignore_ascii_case("memberOf") {
            &mut entry.groups
        } else if !ssh_key_attribute.is_empty() && kind.eq_ignore_ascii_case(ssh_key_attribute) {
            &mut entry.ssh_keys
        } else if !quota_attribute.is_empty() && kind.eq_ignore_ascii_case(quota_attribute) {
            &mut entry.quotas
        } else {
            continue;
        };
        for value in attribute.next()?.expect_constructed()? {
            // Values that are not UTF-8 cannot be names, DNs or key lines.
            if let Ok(value) = String::from_utf8(value.expect_primitive()?) {
                target.push(value);
            }
        }
    }
    Some(entry)
}

/// Whether two DNs are the same, ignoring ASCII case and blanks around the
/// separators (`,`, `+`, `=`).
fn same_dn(a: &str, b: &str) -> bool {
    dn_key(a) == dn_key(b)
}

fn dn_key(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut escaped = false;
    let mut after_separator = true;
    let mut blanks = String::new();
    for c in dn.trim().chars() {
        if escaped {
            out.push_str(&blanks);
            blanks.clear();
            out.push(c.to_ascii_lowercase());
            escaped = false;
            after_separator = false;
        } else if c == ' ' {
            if !after_separator {
                blanks.push(c);
            }
        } else if matches!(c, ',' | '+' | '=') {
            blanks.clear();
            out.push(c);
            after_separator = true;
        } else {
            out.push_str(&blanks);
            blanks.clear();
            out.push(c.to_ascii_lowercase());
            escaped = c == '\\';
            after_separator = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> LdapConfig {
        LdapConfig {
            url: url.into(),
            base_dn: "dc=example,dc=test".into(),
            ..LdapConfig::default()
        }
    }

    #[test]
    fn urls() {
        for (url, starttls, plain, tls) in [
            ("ldaps://ldap.example.com", false, false, true),
            ("ldaps://ldap.example.com:636/", false, false, true),
            ("ldaps://127.0.0.1:1636", false, false, true),
            ("ldaps://[::1]:636", false, false, true),
            ("ldap://ldap.example.com", true, false, true),
            ("ldap://ldap.example.com:389", false, true, false),
        ] {
            let c = LdapConfig {
                starttls,
                allow_plaintext: plain,
                ..config(url)
            };
            assert_eq!(check_url(&c).expect(url), tls, "{url}");
        }
        for (url, starttls) in [
            ("ldap://ldap.example.com", false),
            ("ldaps://ldap.example.com", true),
            ("https://ldap.example.com", false),
            ("ldaps://", false),
            ("ldaps://:636", false),
            ("ldaps://host:0", false),
            ("ldaps://host:99999", false),
            ("ldaps://host/dc=x", false),
            ("ldaps://user@host", false),
            ("ldaps://host?x", false),
            ("LDAPS://host", false),
            ("ldapi://%2fvar%2frun", false),
            ("", false),
        ] {
            let c = LdapConfig {
                starttls,
                ..config(url)
            };
            assert!(
                matches!(check_url(&c), Err(AuthError::BadSettings(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_settings_are_refused_before_connecting() {
        let base = std::path::Path::new("/nonexistent");
        let ok = config("ldaps://127.0.0.1:1");
        for broken in [
            LdapConfig {
                base_dn: " ".into(),
                ..ok.clone()
            },
            LdapConfig {
                user_filter: "(uid=alice)".into(),
                ..ok.clone()
            },
            LdapConfig {
                user_filter: "(uid={user}".into(),
                ..ok.clone()
            },
            LdapConfig {
                name_attribute: String::new(),
                ..ok.clone()
            },
            LdapConfig {
                timeout_secs: 0,
                ..ok.clone()
            },
            LdapConfig {
                pool_size: 0,
                ..ok.clone()
            },
            LdapConfig {
                bind_dn: "cn=svc,dc=example,dc=test".into(),
                ..ok.clone()
            },
        ] {
            let err = LdapAuthenticator::new(&broken, base).expect_err("refused");
            assert!(matches!(err, AuthError::BadSettings(_)), "{err}");
        }
        let missing_ca = LdapConfig {
            ca_file: "ca.pem".into(),
            ..ok
        };
        assert!(matches!(
            LdapAuthenticator::new(&missing_ca, base),
            Err(AuthError::Io { .. })
        ));
    }

    #[test]
    fn dns_compare_ignoring_case_and_blanks() {
        assert!(same_dn(
            "cn=Dropvault Users, ou=Groups,dc=example,dc=test",
            "CN=dropvault users,OU=groups, DC=Example , DC=test"
        ));
        assert!(!same_dn("cn=a,dc=test", "cn=b,dc=test"));
        assert!(!same_dn("cn=a b,dc=test", "cn=ab,dc=test"));
        assert!(!same_dn(r"cn=a\,b,dc=test", "cn=a,b,dc=test"));
        assert!(same_dn(r"cn=a\ ,dc=test", r"cn=A\ , dc=test"));
    }
}
