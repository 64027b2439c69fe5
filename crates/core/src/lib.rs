//! dropvault core: everything between a protocol front end and the bytes on
//! storage, and nothing about FTP.
//!
//! - [`keys`]: where a data key comes from — the [`keys::KeyProvider`]
//!   that wraps it (local RSA file today, OpenBao/Vault transit next), the
//!   per-user key files, and the [`keys::Keyring`] that shares one unwrapped
//!   key among a user's sessions and drops it with the last one.
//!
//! - [`accounts`]: who may log in — the [`accounts::Authenticator`] trait
//!   and its backends, a users file of argon2id hashes and the system's PAM.
//!
//! - [`vault`]: one user's encrypted view of storage — normalised paths,
//!   listings with plaintext sizes, streaming sealed uploads through staging
//!   files to an atomic commit, random-access downloads.

pub mod accounts;
mod fsutil;
pub mod keys;
pub mod vault;
