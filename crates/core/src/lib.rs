//! dropvault core: everything between a protocol front end and the bytes on
//! storage, and nothing about FTP.
//!
//! - [`keys`]: where a data key comes from — the [`keys::KeyProvider`]
//!   that wraps it (local RSA file today, OpenBao/Vault transit next), the
//!   per-user key files, and the [`keys::Keyring`] that shares one unwrapped
//!   key among a user's sessions and drops it with the last one.
//!
//! Accounts, storage backends and the per-user vault land here with the FTP
//! front end.

pub mod keys;
