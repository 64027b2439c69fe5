//! The FTP/FTPS front end of dropvault.
//!
//! - [`proto`]: the pure protocol layer — line framing with a 4 KiB limit,
//!   typed commands, replies, listing formats. No sockets.
//! - `server`: listeners, session limits, bans, draining on shutdown.
//! - `session`: one client's control loop; the gate (TLS required, logged
//!   in) in one place; command handlers in `session/cmd/`; the data channel
//!   in `session/data.rs`; storage errors become replies in
//!   `session/errors.rs` and nowhere else.
//! - [`tls`]: certificates and the TLS session-reuse check.
//!
//! Files are never touched here directly: everything goes through the
//! `dropvault-core` vault, which seals and opens them.

mod config;
pub mod proto;
mod server;
mod session;
pub mod tls;

pub use config::{FtpConfig, TlsMode};
pub use server::{serve, Listeners};
