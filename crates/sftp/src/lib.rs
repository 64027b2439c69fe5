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
//! - `ssh`: the SSH side ([`serve_ssh`]): listener, admission and login
//!   through the core's gate, one `sftp` subsystem per connection, nothing
//!   else (no shell, exec, forwarding).
//! - [`hostkey`]: the server's ed25519 host key, made on first start.

mod attrs;
mod errors;
pub mod hostkey;
pub mod proto;
mod session;
mod source;
mod ssh;

pub use session::{serve, SftpError, SftpSettings};
pub use ssh::{serve as serve_ssh, SshConfig};
