//! Accounts: who may log in. An [`Authenticator`] checks a name and a
//! password (or an SSH public key) and answers with an [`Account`] or a
//! plain "no"; the backends are a users file with argon2id hashes and SSH
//! public keys ([`UserFile`]), the system's PAM ([`PamAuthenticator`],
//! passwords only) and a directory ([`LdapAuthenticator`]), built from
//! `[auth]` by [`from_config`].
//!
//! A user name becomes the name of the user's folder in storage and is bound
//! into the wrapping of their data key, so every backend accepts only names
//! that pass [`validate_user_name`].

mod config;
mod file;
pub mod ldap;
mod pam;
pub mod sshkey;

pub use config::{from_config, AuthBackend, AuthConfig};
pub use file::{hash_password, verify_password, UserFile, UserKey};
pub use ldap::{LdapAuthenticator, LdapConfig};
pub use pam::{PamAuthenticator, DEFAULT_PAM_SERVICE};

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::vault::Quota;

/// Longest user name accepted, in bytes (all accepted characters are ASCII).
pub const MAX_USER_NAME_LEN: usize = 64;

/// A checked login: who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user name, valid per [`validate_user_name`].
    pub name: String,
    /// The user's own quota (users file, directory attribute); what it
    /// leaves unset is the server's.
    pub quota: Quota,
}

impl Account {
    /// `name`, with the server's quota.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            quota: Quota::default(),
        }
    }
}

/// A password in memory: zeroized on drop, `Debug` prints `[redacted]`.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Takes ownership of `password`; its bytes are wiped when this drops.
    pub fn new(password: String) -> Self {
        Self(Zeroizing::new(password))
    }

    /// The password text, for hashing or handing to PAM.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Checks a user's name and password.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Checks name and password. Blocking (argon2id, PAM): async callers use
    /// `spawn_blocking`.
    ///
    /// `Ok(None)` = wrong name or password (callers must not learn which).
    /// A name that [`validate_user_name`] refuses is also `Ok(None)`: to the
    /// peer that sent it, it is just a name that does not exist. `Err` is
    /// the server's trouble (an unreadable users file, PAM missing) or an
    /// account that may not log in ([`AuthError::Refused`]); a front end
    /// logs it, and for `Refused` answers the peer as for a wrong password.
    fn authenticate(&self, name: &str, password: &Password) -> Result<Option<Account>, AuthError>;

    /// Checks that user `name` may log in with the SSH public key whose
    /// wire encoding is `key_blob` (what a `.pub` line holds in base64).
    /// The caller has verified the peer's signature with that key; this
    /// only says whether the key is one of the user's. Blocking, like
    /// [`authenticate`](Self::authenticate).
    ///
    /// `Ok(None)` = no such user, or not one of their keys (callers must
    /// not learn which); `Err` as for passwords. The default is `Ok(None)`:
    /// backends without keys (PAM) refuse every key.
    fn authenticate_key(&self, name: &str, key_blob: &[u8]) -> Result<Option<Account>, AuthError> {
        let _ = (name, key_blob);
        Ok(None)
    }

    /// The account `name`, without a credential: for a session a drop
    /// link of the user's opens (the link was the proof). `Ok(None)` = no
    /// such user (any more). Blocking. The default, for backends that
    /// cannot look a user up without their password (PAM), trusts the
    /// name and gives it the server's quota.
    fn lookup(&self, name: &str) -> Result<Option<Account>, AuthError> {
        Ok(validate_user_name(name).ok().map(|()| Account::new(name)))
    }
}

/// Why an account could not be checked, created, changed or removed.
///
/// Messages are for operators' logs and the admin CLI; they never contain a
/// password or a hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The name is not a valid user name (see [`validate_user_name`]).
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A user of that name already exists.
    #[error("user {name:?} already exists")]
    UserExists {
        /// The user name.
        name: String,
    },
    /// There is no user of that name.
    #[error("no such user {name:?}")]
    NoSuchUser {
        /// The user name.
        name: String,
    },
    /// The users file or its lock could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The users file is malformed (not TOML, unknown fields, a bad name or
    /// a hash that is not argon2id, too large).
    #[error("{path}: bad users file: {reason}")]
    BadUsersFile {
        /// The users file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An SSH public key line was refused.
    #[error("{0}")]
    Key(#[from] sshkey::KeyError),
    /// Adding keys would give a user more than
    /// [`MAX_KEYS_PER_USER`](sshkey::MAX_KEYS_PER_USER).
    #[error("user {name:?} would have more than {max} SSH keys")]
    TooManyKeys {
        /// The user name.
        name: String,
        /// The limit.
        max: usize,
    },
    /// The user has no key of that fingerprint.
    #[error("user {name:?} has no SSH key {fingerprint:?}")]
    NoSuchKey {
        /// The user name.
        name: String,
        /// The fingerprint asked for.
        fingerprint: String,
    },
    /// An empty password cannot be stored.
    #[error("the password is empty")]
    EmptyPassword,
    /// Hashing a password failed (random salt or argon2 itself).
    #[error("hashing the password failed: {0}")]
    Hashing(String),
    /// PAM failed for a reason other than a wrong password: a broken
    /// service file, a directory service down, a failed user lookup.
    #[error("PAM: {0}")]
    Pam(String),
    /// The accounts backend (a directory) is down, slow or refusing the
    /// service account: the login may be tried again later. Never
    /// counted as a wrong password.
    #[error("accounts backend unavailable: {0}")]
    Unavailable(String),
    /// The accounts backend's settings cannot work (an LDAP URL that is
    /// not `ldaps://` or `ldap://`, a CA file without certificates...).
    #[error("bad accounts settings: {0}")]
    BadSettings(String),
    /// libpam could not be loaded.
    #[error("PAM is unavailable: {0}")]
    PamUnavailable(String),
    /// The account exists but may not log in here: `root` or any uid 0
    /// account over PAM, or an account PAM refuses (expired, locked).
    #[error("account {user:?} refused: {reason}")]
    Refused {
        /// The user name.
        user: String,
        /// Why.
        reason: String,
    },
}

impl AuthError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuthError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Checks that `name` can be a user name: 1 to 64 characters from
/// `A-Z a-z 0-9 . _ @ -`, not starting with `.` or `-`.
///
/// User names become folder names and appear in logs, so the set is small
/// enough that no name is a path (`/`), hidden or special (`.`, `..`), an
/// option (`-x`), or has control characters or look-alike Unicode. `@`
/// allows e-mail-style names.
pub fn validate_user_name(name: &str) -> Result<(), AuthError> {
    let invalid = |reason| {
        Err(AuthError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_USER_NAME_LEN {
        return invalid("longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
    {
        return invalid("only A-Z, a-z, 0-9, '.', '_', '@' and '-' are allowed");
    }
    if name.starts_with(['.', '-']) {
        return invalid("must not start with '.' or '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in [
            "a",
            "alice",
            "Bob.Smith",
            "x_y-z",
            "a@b.example",
            "0",
            "a..b",
        ] {
            assert!(validate_user_name(ok).is_ok(), "{ok:?}");
        }
        let longest = "a".repeat(64);
        assert!(validate_user_name(&longest).is_ok());
        for bad in [
            "", ".", "..", ".hidden", "-opt", "a/b", "a b", "a\0b", "a\nb", "é", "a:b", "a\\b",
            "~a", "a*",
        ] {
            assert!(
                matches!(validate_user_name(bad), Err(AuthError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_user_name(&"a".repeat(65)).is_err());
    }
}
