//! The SFTP front end of dropvault: SFTP version 3
//! (draft-ietf-secsh-filexfer-02) over any byte stream, served from the
//! encrypted vault.
//!
//! - [`proto`]: the pure protocol layer — framing with a packet length
//!   limit, typed requests, attributes, replies. No I/O.
//! - `session`: one client's request loop ([`serve`]): the handle table,
//!   pipelined reads, uploads through the vault's sealed pipeline with a
//!   commit at CLOSE, listings streamed from storage.
//! - `errors`: storage errors become SFTP status codes there and nowhere
//!   else.
//! - `attrs`: what a client sees of a file (sizes are plaintext sizes;
//!   modes are fixed).
//! - `source`: random-access reads of a stored file.
//!
//! The SSH side (keys, authentication, channels) is not here: [`serve`]
//! takes the stream of an `sftp` subsystem channel.

mod attrs;
mod errors;
pub mod proto;
mod session;
mod source;

pub use session::{serve, SftpError, SftpSettings};
