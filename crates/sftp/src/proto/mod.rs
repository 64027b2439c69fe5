//! The SFTP version 3 protocol (draft-ietf-secsh-filexfer-02) as pure
//! functions over bytes: framing ([`FrameBuffer`]), typed requests
//! ([`parse_packet`]), attributes ([`Attrs`]) and replies ([`reply`]). No
//! I/O and no vault here.

mod attrs;
mod frame;
pub mod reply;
mod request;
mod wire;

pub use attrs::{
    Attrs, ATTR_ACMODTIME, ATTR_EXTENDED, ATTR_PERMISSIONS, ATTR_SIZE, ATTR_UIDGID, S_IFDIR,
    S_IFMT, S_IFREG,
};
pub use frame::{packet_at_front, FrameBuffer, FrameError};
pub use reply::NameEntry;
pub use request::{parse_packet, OpenFlags, Packet, ParseError, Request};

/// The protocol version this server speaks.
pub const VERSION: u32 = 3;

/// Longest packet accepted from a client, length field excluded: a write
/// of 256 KiB and its header fit. A longer one ends the session.
pub const MAX_PACKET_LEN: u32 = 256 * 1024 + 1024;
/// Longest packet the server sends, and what `limits@openssh.com` reports
/// (OpenSSH's client accepts no more than this).
pub const MAX_REPLY_LEN: u32 = 256 * 1024;
/// Most bytes one READ returns (a longer request gets a short read), as
/// OpenSSH's server: the packet limit less room for the header.
pub const MAX_READ_LEN: u32 = MAX_REPLY_LEN - 1024;
/// Write length reported by `limits@openssh.com`.
pub const MAX_WRITE_LEN: u32 = MAX_REPLY_LEN - 1024;

/// Packet types.
pub const FXP_INIT: u8 = 1;
#[allow(missing_docs)] // the names are the draft's
mod types {
    pub const FXP_VERSION: u8 = 2;
    pub const FXP_OPEN: u8 = 3;
    pub const FXP_CLOSE: u8 = 4;
    pub const FXP_READ: u8 = 5;
    pub const FXP_WRITE: u8 = 6;
    pub const FXP_LSTAT: u8 = 7;
    pub const FXP_FSTAT: u8 = 8;
    pub const FXP_SETSTAT: u8 = 9;
    pub const FXP_FSETSTAT: u8 = 10;
    pub const FXP_OPENDIR: u8 = 11;
    pub const FXP_READDIR: u8 = 12;
    pub const FXP_REMOVE: u8 = 13;
    pub const FXP_MKDIR: u8 = 14;
    pub const FXP_RMDIR: u8 = 15;
    pub const FXP_REALPATH: u8 = 16;
    pub const FXP_STAT: u8 = 17;
    pub const FXP_RENAME: u8 = 18;
    pub const FXP_READLINK: u8 = 19;
    pub const FXP_SYMLINK: u8 = 20;
    pub const FXP_STATUS: u8 = 101;
    pub const FXP_HANDLE: u8 = 102;
    pub const FXP_DATA: u8 = 103;
    pub const FXP_NAME: u8 = 104;
    pub const FXP_ATTRS: u8 = 105;
    pub const FXP_EXTENDED: u8 = 200;
    pub const FXP_EXTENDED_REPLY: u8 = 201;

    pub const STATUS_OK: u32 = 0;
    pub const STATUS_EOF: u32 = 1;
    pub const STATUS_NO_SUCH_FILE: u32 = 2;
    pub const STATUS_PERMISSION_DENIED: u32 = 3;
    pub const STATUS_FAILURE: u32 = 4;
    pub const STATUS_BAD_MESSAGE: u32 = 5;
    pub const STATUS_NO_CONNECTION: u32 = 6;
    pub const STATUS_CONNECTION_LOST: u32 = 7;
    pub const STATUS_OP_UNSUPPORTED: u32 = 8;
}
pub use types::*;

/// `posix-rename@openssh.com`: rename that replaces the target.
pub const EXT_POSIX_RENAME: &[u8] = b"posix-rename@openssh.com";
/// `limits@openssh.com`: the server's packet, read, write and handle limits.
pub const EXT_LIMITS: &[u8] = b"limits@openssh.com";
/// `fsync@openssh.com`: flush a file handle.
pub const EXT_FSYNC: &[u8] = b"fsync@openssh.com";

/// Extensions announced in VERSION, with their version strings.
/// (`statvfs@openssh.com` is not offered: free space under encryption and
/// per-user folders is not something the vault reports.)
pub const EXTENSIONS: [(&[u8], &[u8]); 3] = [
    (EXT_POSIX_RENAME, b"1"),
    (EXT_LIMITS, b"1"),
    (EXT_FSYNC, b"1"),
];
