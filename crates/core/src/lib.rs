//! dropvault core: everything between a protocol front end and the bytes on
//! storage, and nothing about any one protocol.
//!
//! - [`keys`]: where a data key comes from — the [`keys::KeyProvider`]
//!   that wraps it (a local RSA file, OpenBao/Vault transit, or a PKCS#11
//!   token), built from `[kms]` by [`keys::from_config`], the
//!   per-user key files, and the [`keys::Keyring`] that shares one unwrapped
//!   key among a user's sessions and drops it with the last one.
//!
//! - [`accounts`]: who may log in — the [`accounts::Authenticator`] trait
//!   and its backends (a users file of argon2id hashes, the system's PAM,
//!   an LDAP directory), built from `[auth]` by [`accounts::from_config`].
//!
//! - [`vault`]: one user's encrypted view of storage — normalised paths,
//!   listings with plaintext sizes, streaming sealed uploads through staging
//!   files to an atomic commit, random-access downloads.
//!
//! - [`storage`]: where sealed bytes are kept — the interface the vault
//!   is written against, and its backends (a local folder).
//!
//! - [`scan`]: the verdict on an upload before it is committed — clamd
//!   over INSTREAM and a command hook, fed the plaintext as it streams.
//!
//! - [`guard`]: failed logins counted per client and account, bans, and
//!   the guess budget every front end's logins draw from.
//!
//! - [`session`]: what every front end shares — admission, login, logout
//!   and the audit record of what a logged-in user does.
//!
//! - [`s3`]: a small blocking S3 client signed with aws-lc-rs — objects,
//!   ranged reads, listings and multipart uploads, with retries — for the
//!   S3 storage backend.
//!
//! - [`throttle`]: bandwidth limits — token buckets per session, per user
//!   and for the whole server, upload and download apart.
//!
//! - [`events`]: login, upload, download and the like, delivered to a
//!   webhook and a command through a bounded queue, off the hot path.
//!
//! - [`metrics`]: the process's Prometheus families — sessions, logins,
//!   transfers, scans, key provider calls, storage errors — counted where
//!   each happens.

pub mod accounts;
pub mod events;
mod fsutil;
pub mod guard;
mod hookproc;
mod http;
pub mod keys;
pub mod links;
pub mod ls;
pub mod metrics;
pub mod s3;
pub mod scan;
pub mod secret;
pub mod session;
pub mod size;
pub mod storage;
pub mod throttle;
pub mod vault;

pub use hookproc::{RunAs, RunAsError};

/// Lower-case hex of `bytes` (key ids, file names, signatures).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `n` random bytes as lower-case hex: temporary names and ids that must
/// not collide.
pub fn random_hex(n: usize) -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes)?;
    Ok(hex(&bytes))
}
