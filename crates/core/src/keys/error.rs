use std::path::PathBuf;

/// Why a data key could not be created, stored, wrapped or unwrapped.
///
/// Messages are for operators' logs; they never contain key material.
/// A front end tells its user only that the key service is unavailable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The KEK file can be read by others than its owner.
    #[error("{path}: key file mode {mode:o} lets others read it; chmod 600 it")]
    InsecureKeyFile {
        /// The KEK file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK file is not a usable RSA private key.
    #[error("{path}: not a usable RSA private key: {reason}")]
    BadKek {
        /// The KEK file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Wrapping failed inside the provider.
    #[error("wrapping the data key failed")]
    WrapFailed,
    /// Unwrapping failed: wrong KEK, a key file of another user, or a
    /// modified wrapped key.
    #[error("unwrapping the data key of {user:?} failed")]
    UnwrapFailed {
        /// The user whose key it was.
        user: String,
    },
    /// The key file was wrapped by another KEK than the provider holds.
    #[error("key file was wrapped by {found_kind}:{found_name}, but this server uses {expected_kind}:{expected_name}")]
    WrongKek {
        /// The provider's kind.
        expected_kind: String,
        /// The provider's KEK name.
        expected_name: String,
        /// Kind recorded in the key file.
        found_kind: String,
        /// KEK name recorded in the key file.
        found_name: String,
    },
    /// A key file is unreadable, malformed, or of another user.
    #[error("{path}: corrupt key file: {reason}")]
    CorruptKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file for this user already exists (it is never replaced).
    #[error("{path}: a key file for this user already exists")]
    KeyFileExists {
        /// The key file.
        path: PathBuf,
    },
    /// The unwrapped key is not the one the key file names.
    #[error("unwrapped key does not match the key id in the key file of {user:?}")]
    KeyIdMismatch {
        /// The user whose key it was.
        user: String,
    },
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The key service could not be reached, or did not answer in time.
    #[error("key service at {address} unreachable: {reason}")]
    Unavailable {
        /// The service's address.
        address: String,
        /// What happened.
        reason: String,
    },
    /// The key service (or token) answered with a refusal or a failure.
    /// Each provider says once, where it reads the answer, whether trying
    /// again later may help.
    #[error("key service {reason}")]
    Service {
        /// Whether the service may serve the same request later (sealed,
        /// overloaded, failing) rather than refusing it for good (denied,
        /// no such key, a key version too old).
        transient: bool,
        /// What the service said, read after "key service" (e.g.
        /// `answered 403: permission denied`).
        reason: String,
    },
    /// The key service answered something this client cannot use.
    #[error("key service sent an unexpected answer: {0}")]
    BadResponse(String),
    /// The user has no key file (never logged in, or shredded).
    #[error("no key file for user {user:?}")]
    NoKeyFile {
        /// The user.
        user: String,
    },
    /// The provider's settings cannot be used.
    #[error("key provider settings: {0}")]
    BadConfig(String),
    /// The key store (a bucket) failed: unreachable, refusing, or answering
    /// something unusable. Never taken for "no key file".
    #[error("key store, {location}: {source}")]
    Store {
        /// The object or prefix concerned.
        location: String,
        /// What the store answered.
        source: crate::s3::S3Error,
    },
    /// More key files than a user can legitimately have (or than a listing
    /// may hold): something other than dropvault writes there.
    #[error("{location}: more than {limit} key files")]
    TooManyKeyFiles {
        /// The prefix listed.
        location: String,
        /// The bound.
        limit: usize,
    },
    /// Key files of a user kept reappearing while they were destroyed (a
    /// re-wrap running at the same time on another node): run it again.
    #[error("{location}: key files reappeared while being destroyed; try again")]
    DestroyRaced {
        /// The user's prefix.
        location: String,
    },
}

impl KeyError {
    /// Whether trying again later may succeed: the key service or the key
    /// store is down, sealed, or overloaded, rather than refusing this key
    /// for good.
    pub fn is_transient(&self) -> bool {
        match self {
            KeyError::Unavailable { .. } => true,
            KeyError::Service { transient, .. } => *transient,
            KeyError::Store { source, .. } => source.is_transient(),
            KeyError::DestroyRaced { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KeyError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_error_is_as_transient_as_its_provider_says() {
        let service = |transient| KeyError::Service {
            transient,
            reason: "is sealed".into(),
        };
        assert!(service(true).is_transient());
        assert!(!service(false).is_transient());
        assert_eq!(service(true).to_string(), "key service is sealed");
        let down = KeyError::Unavailable {
            address: "token".into(),
            reason: "gone".into(),
        };
        assert!(down.is_transient());
        assert!(!KeyError::WrapFailed.is_transient());
    }
}
