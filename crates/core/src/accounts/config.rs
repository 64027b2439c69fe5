//! `[auth]`: which accounts backend checks logins, its settings, and the
//! one place authenticators are built from them ([`from_config`]).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    AuthError, Authenticator, LdapAuthenticator, LdapConfig, PamAuthenticator, UserFile,
    DEFAULT_PAM_SERVICE,
};

/// `auth.backend`: where accounts are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackend {
    /// The users file (`auth.users_file`), managed by `dropvault user`.
    #[default]
    File,
    /// The system's accounts, through PAM (`auth.pam_service`).
    Pam,
    /// A directory (LDAP, Active Directory; `[auth.ldap]`).
    Ldap,
}

/// `[auth]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The backend logins are checked by.
    pub backend: AuthBackend,
    /// Users file of the `file` backend (relative to the data folder).
    pub users_file: String,
    /// PAM service name of the `pam` backend.
    pub pam_service: String,
    /// Settings of the `ldap` backend.
    pub ldap: LdapConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            backend: AuthBackend::File,
            users_file: "users.toml".into(),
            pam_service: DEFAULT_PAM_SERVICE.into(),
            ldap: LdapConfig::default(),
        }
    }
}

/// The authenticator `config` names; relative paths are inside `base` (the
/// data folder). Secrets from the environment are already in `config`
/// (the configuration maps them); secrets in files (`*_file`) are read
/// here, by the backend being built.
pub fn from_config(config: &AuthConfig, base: &Path) -> Result<Arc<dyn Authenticator>, AuthError> {
    Ok(match config.backend {
        AuthBackend::File => Arc::new(UserFile::open(base.join(&config.users_file))?),
        AuthBackend::Pam => Arc::new(PamAuthenticator::new(config.pam_service.clone())),
        AuthBackend::Ldap => Arc::new(LdapAuthenticator::new(&config.ldap, base)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Password;

    #[test]
    fn the_file_backend_reads_its_users_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuthConfig {
            users_file: "people.toml".into(),
            ..AuthConfig::default()
        };
        let users = UserFile::open(dir.path().join("people.toml")).expect("users file");
        users
            .add("alice", &Password::new("correct horse".into()))
            .expect("add");
        let auth = from_config(&config, dir.path()).expect("file backend");
        let ok = auth.authenticate("alice", &Password::new("correct horse".into()));
        assert_eq!(ok.expect("checked").map(|a| a.name), Some("alice".into()));
        let wrong = auth.authenticate("alice", &Password::new("wrong".into()));
        assert!(wrong.expect("checked").is_none());
    }

    #[test]
    fn the_other_backends_are_built_from_their_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pam = AuthConfig {
            backend: AuthBackend::Pam,
            pam_service: "dropvault-test".into(),
            ..AuthConfig::default()
        };
        let auth = from_config(&pam, dir.path()).expect("pam backend");
        assert!(format!("{auth:?}").contains("dropvault-test"), "{auth:?}");
        // No directory named: nothing to connect to.
        let ldap = AuthConfig {
            backend: AuthBackend::Ldap,
            ..AuthConfig::default()
        };
        assert!(from_config(&ldap, dir.path()).is_err());
    }
}
