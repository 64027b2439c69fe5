//! Directory accounts (LDAP, Active Directory): search-then-bind.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Account, AuthError, Authenticator, Password};
use crate::secret::Secret;

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

/// Accounts in a directory.
#[derive(Debug)]
pub struct LdapAuthenticator {
    _config: LdapConfig,
}

impl LdapAuthenticator {
    /// Checks `config` (relative paths are inside `base`) and connects.
    pub fn new(config: &LdapConfig, base: &std::path::Path) -> Result<Self, AuthError> {
        let _ = (config, base);
        Err(AuthError::Unavailable(
            "LDAP accounts are not built yet".into(),
        ))
    }
}

impl Authenticator for LdapAuthenticator {
    fn authenticate(&self, name: &str, password: &Password) -> Result<Option<Account>, AuthError> {
        let _ = (name, password);
        Err(AuthError::Unavailable(
            "LDAP accounts are not built yet".into(),
        ))
    }
}
