//! The `pam` accounts backend: the system's own accounts through PAM
//! (service file `/etc/pam.d/dropvault` by default; `packaging/pam.d/`
//! ships one). libpam is loaded at run time by `dropvault-pam`.
//!
//! `root` and every other uid 0 account are refused before PAM is asked,
//! so the server never becomes a way to guess root's password. Checking
//! other users' passwords with `pam_unix` needs the server to run as root
//! (or be able to read `/etc/shadow`).

use dropvault_pam::PamError;

use super::{validate_user_name, Account, AuthError, Authenticator, Password};

/// The PAM service name used unless configured otherwise.
pub const DEFAULT_PAM_SERVICE: &str = "dropvault";

/// Authenticates system accounts through PAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamAuthenticator {
    service: String,
}

impl PamAuthenticator {
    /// Authenticates through the PAM service `service`
    /// (`/etc/pam.d/<service>`).
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
        }
    }

    /// The PAM service name.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl Default for PamAuthenticator {
    fn default() -> Self {
        Self::new(DEFAULT_PAM_SERVICE)
    }
}

impl Authenticator for PamAuthenticator {
    fn authenticate(&self, name: &str, password: &Password) -> Result<Option<Account>, AuthError> {
        // A name we could never serve is not worth a PAM transaction.
        if validate_user_name(name).is_err() {
            return Ok(None);
        }
        let refused = |reason: &str| AuthError::Refused {
            user: name.to_owned(),
            reason: reason.to_owned(),
        };
        if name == "root" {
            return Err(refused("root may not log in"));
        }
        // Fail closed: if the lookup itself fails, a uid 0 account could
        // slip through, so the login fails instead.
        match dropvault_pam::uid_of(name) {
            Ok(Some(0)) => return Err(refused("accounts with uid 0 may not log in")),
            Ok(_) => {}
            Err(e) => return Err(AuthError::Pam(format!("looking up user {name:?}: {e}"))),
        }
        match dropvault_pam::authenticate(&self.service, name, password.expose()) {
            Ok(()) => Ok(Some(Account::new(name.to_owned()))),
            Err(PamError::AuthFailed) => Ok(None),
            Err(PamError::AccountRefused(reason)) => Err(refused(&reason)),
            Err(PamError::Unavailable(why)) => Err(AuthError::PamUnavailable(why)),
            Err(PamError::Other(code, text)) => Err(AuthError::Pam(format!(
                "service {:?}: {text} (PAM code {code})",
                self.service
            ))),
            Err(e) => Err(AuthError::Pam(e.to_string())),
        }
    }
}
