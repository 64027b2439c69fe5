//! The FTP/FTPS front end of dropvault: a pure line parser and typed
//! commands, replies in one place, and the tokio session (control loop,
//! data channel, TLS), one file per command.
//!
//! Not yet built: this crate marks the boundary. It will depend on
//! `dropvault-core` for accounts and the vault, and nothing in core will
//! know about FTP.
