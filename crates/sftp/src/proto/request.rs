//! What a client sends, parsed into types by pure functions over the
//! packet payload. Nothing here panics or allocates from a length field:
//! strings and write data borrow from the packet.

use super::attrs::Attrs;
use super::wire::{Cursor, Short};
use super::*;

/// `pflags` of `SSH_FXP_OPEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    /// Open for reading.
    pub const READ: u32 = 0x01;
    /// Open for writing.
    pub const WRITE: u32 = 0x02;
    /// Every write goes to the end of the file.
    pub const APPEND: u32 = 0x04;
    /// Create the file if it is missing.
    pub const CREAT: u32 = 0x08;
    /// Truncate an existing file.
    pub const TRUNC: u32 = 0x10;
    /// Fail if the file exists (with `CREAT`).
    pub const EXCL: u32 = 0x20;

    /// Whether `flag` is set.
    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
}

/// One request (everything but `INIT`), borrowing from its packet. Paths
/// are the client's bytes: the session checks and resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `SSH_FXP_OPEN`.
    Open {
        /// File to open.
        path: &'a [u8],
        /// How.
        flags: OpenFlags,
        /// Attributes for a new file.
        attrs: Attrs,
    },
    /// `SSH_FXP_CLOSE`.
    Close {
        /// Handle to close.
        handle: &'a [u8],
    },
    /// `SSH_FXP_READ`.
    Read {
        /// File handle.
        handle: &'a [u8],
        /// Where to read.
        offset: u64,
        /// How many bytes at most.
        len: u32,
    },
    /// `SSH_FXP_WRITE`.
    Write {
        /// File handle.
        handle: &'a [u8],
        /// Where the data goes.
        offset: u64,
        /// The data.
        data: &'a [u8],
    },
    /// `SSH_FXP_LSTAT`.
    Lstat {
        /// Path.
        path: &'a [u8],
    },
    /// `SSH_FXP_FSTAT`.
    Fstat {
        /// Handle.
        handle: &'a [u8],
    },
    /// `SSH_FXP_SETSTAT`.
    Setstat {
        /// Path.
        path: &'a [u8],
        /// What to set.
        attrs: Attrs,
    },
    /// `SSH_FXP_FSETSTAT`.
    Fsetstat {
        /// Handle.
        handle: &'a [u8],
        /// What to set.
        attrs: Attrs,
    },
    /// `SSH_FXP_OPENDIR`.
    Opendir {
        /// Folder.
        path: &'a [u8],
    },
    /// `SSH_FXP_READDIR`.
    Readdir {
        /// Folder handle.
        handle: &'a [u8],
    },
    /// `SSH_FXP_REMOVE`.
    Remove {
        /// File.
        path: &'a [u8],
    },
    /// `SSH_FXP_MKDIR`.
    Mkdir {
        /// Folder.
        path: &'a [u8],
        /// Attributes (ignored).
        attrs: Attrs,
    },
    /// `SSH_FXP_RMDIR`.
    Rmdir {
        /// Folder.
        path: &'a [u8],
    },
    /// `SSH_FXP_REALPATH`.
    Realpath {
        /// Path to make canonical.
        path: &'a [u8],
    },
    /// `SSH_FXP_STAT`.
    Stat {
        /// Path.
        path: &'a [u8],
    },
    /// `SSH_FXP_RENAME`: fails if `to` exists.
    Rename {
        /// Old path.
        from: &'a [u8],
        /// New path.
        to: &'a [u8],
    },
    /// `SSH_FXP_READLINK`.
    Readlink {
        /// Path.
        path: &'a [u8],
    },
    /// `SSH_FXP_SYMLINK`.
    Symlink,
    /// `posix-rename@openssh.com`: replaces a file at `to`.
    PosixRename {
        /// Old path.
        from: &'a [u8],
        /// New path.
        to: &'a [u8],
    },
    /// `limits@openssh.com`.
    Limits,
    /// `fsync@openssh.com`.
    Fsync {
        /// File handle.
        handle: &'a [u8],
    },
    /// An extended request this server does not know (or `hardlink@…`).
    UnknownExtended {
        /// Its name, for the log.
        name: &'a [u8],
    },
    /// A packet type this server does not know.
    Unknown {
        /// The type byte.
        kind: u8,
    },
}

/// A packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `SSH_FXP_INIT` with the client's version.
    Init {
        /// Highest version the client speaks.
        version: u32,
    },
    /// Any other packet: a request id and the request.
    Request {
        /// The client's id for the reply.
        id: u32,
        /// What it asks.
        request: Request<'a>,
    },
}

/// A packet that did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Too short for its type and id: there is nobody to reply to.
    NoId,
    /// The request with this id is malformed: it gets `SSH_FX_BAD_MESSAGE`.
    Malformed {
        /// The request id.
        id: u32,
    },
}

impl Request<'_> {
    /// The packet type's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Open { .. } => "open",
            Request::Close { .. } => "close",
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Lstat { .. } => "lstat",
            Request::Fstat { .. } => "fstat",
            Request::Setstat { .. } => "setstat",
            Request::Fsetstat { .. } => "fsetstat",
            Request::Opendir { .. } => "opendir",
            Request::Readdir { .. } => "readdir",
            Request::Remove { .. } => "remove",
            Request::Mkdir { .. } => "mkdir",
            Request::Rmdir { .. } => "rmdir",
            Request::Realpath { .. } => "realpath",
            Request::Stat { .. } => "stat",
            Request::Rename { .. } => "rename",
            Request::Readlink { .. } => "readlink",
            Request::Symlink => "symlink",
            Request::PosixRename { .. } => "posix-rename",
            Request::Limits => "limits",
            Request::Fsync { .. } => "fsync",
            Request::UnknownExtended { .. } => "extended",
            Request::Unknown { .. } => "unknown",
        }
    }
}

/// Parses one packet payload (type byte first, as [`super::FrameBuffer`]
/// hands it out). Bytes after a request's last field are ignored.
pub fn parse_packet(payload: &[u8]) -> Result<Packet<'_>, ParseError> {
    let mut c = Cursor::new(payload);
    let kind = c.u8().map_err(|_| ParseError::NoId)?;
    if kind == FXP_INIT {
        let version = c.u32().map_err(|_| ParseError::NoId)?;
        // Extension pairs an INIT may carry are ignored.
        return Ok(Packet::Init { version });
    }
    let id = c.u32().map_err(|_| ParseError::NoId)?;
    let request = parse_request(kind, &mut c).map_err(|_| ParseError::Malformed { id })?;
    Ok(Packet::Request { id, request })
}

fn parse_request<'a>(kind: u8, c: &mut Cursor<'a>) -> Result<Request<'a>, Short> {
    Ok(match kind {
        FXP_OPEN => Request::Open {
            path: c.string()?,
            flags: OpenFlags(c.u32()?),
            attrs: Attrs::read(c)?,
        },
        FXP_CLOSE => Request::Close {
            handle: c.string()?,
        },
        FXP_READ => Request::Read {
            handle: c.string()?,
            offset: c.u64()?,
            len: c.u32()?,
        },
        FXP_WRITE => Request::Write {
            handle: c.string()?,
            offset: c.u64()?,
            data: c.string()?,
        },
        FXP_LSTAT => Request::Lstat { path: c.string()? },
        FXP_FSTAT => Request::Fstat {
            handle: c.string()?,
        },
        FXP_SETSTAT => Request::Setstat {
            path: c.string()?,
            attrs: Attrs::read(c)?,
        },
        FXP_FSETSTAT => Request::Fsetstat {
            handle: c.string()?,
            attrs: Attrs::read(c)?,
        },
        FXP_OPENDIR => Request::Opendir { path: c.string()? },
        FXP_READDIR => Request::Readdir {
            handle: c.string()?,
        },
        FXP_REMOVE => Request::Remove { path: c.string()? },
        FXP_MKDIR => Request::Mkdir {
            path: c.string()?,
            // OpenSSH's client sends the attributes; some old clients
            // send none. Either is fine: they are ignored.
            attrs: if c.remaining() > 0 {
                Attrs::read(c)?
            } else {
                Attrs::default()
            },
        },
        FXP_RMDIR => Request::Rmdir { path: c.string()? },
        FXP_REALPATH => Request::Realpath { path: c.string()? },
        FXP_STAT => Request::Stat { path: c.string()? },
        FXP_RENAME => Request::Rename {
            from: c.string()?,
            to: c.string()?,
        },
        FXP_READLINK => Request::Readlink { path: c.string()? },
        FXP_SYMLINK => Request::Symlink,
        FXP_EXTENDED => {
            let name = c.string()?;
            match name {
                EXT_POSIX_RENAME => Request::PosixRename {
                    from: c.string()?,
                    to: c.string()?,
                },
                EXT_LIMITS => Request::Limits,
                EXT_FSYNC => Request::Fsync {
                    handle: c.string()?,
                },
                _ => Request::UnknownExtended { name },
            }
        }
        kind => Request::Unknown { kind },
    })
}

#[cfg(test)]
mod tests {
    use super::super::wire::Put;
    use super::*;

    fn req(kind: u8, id: u32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = vec![kind];
        v.put_u32(id);
        body(&mut v);
        v
    }

    #[test]
    fn init_and_requests_parse() {
        let mut init = vec![FXP_INIT];
        init.put_u32(3);
        assert_eq!(parse_packet(&init), Ok(Packet::Init { version: 3 }));

        let open = req(FXP_OPEN, 7, |v| {
            v.put_string(b"/a.txt");
            v.put_u32(OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC);
            v.put_u32(0);
        });
        let Ok(Packet::Request { id: 7, request }) = parse_packet(&open) else {
            panic!("open did not parse");
        };
        assert_eq!(
            request,
            Request::Open {
                path: b"/a.txt",
                flags: OpenFlags(0x1a),
                attrs: Attrs::default()
            }
        );

        let write = req(FXP_WRITE, 8, |v| {
            v.put_string(&[0, 0, 0, 1]);
            v.put_u64(32768);
            v.put_string(b"data");
        });
        assert_eq!(
            parse_packet(&write),
            Ok(Packet::Request {
                id: 8,
                request: Request::Write {
                    handle: &[0, 0, 0, 1],
                    offset: 32768,
                    data: b"data"
                }
            })
        );

        let ext = req(FXP_EXTENDED, 9, |v| {
            v.put_string(EXT_POSIX_RENAME);
            v.put_string(b"/a");
            v.put_string(b"/b");
        });
        assert_eq!(
            parse_packet(&ext),
            Ok(Packet::Request {
                id: 9,
                request: Request::PosixRename {
                    from: b"/a",
                    to: b"/b"
                }
            })
        );
        let mkdir_bare = req(FXP_MKDIR, 10, |v| v.put_string(b"/d"));
        assert!(matches!(
            parse_packet(&mkdir_bare),
            Ok(Packet::Request {
                request: Request::Mkdir { .. },
                ..
            })
        ));
    }

    #[test]
    fn malformed_requests_keep_their_id() {
        let short = req(FXP_READ, 5, |v| v.put_string(b"h"));
        assert_eq!(parse_packet(&short), Err(ParseError::Malformed { id: 5 }));
        assert_eq!(parse_packet(&[FXP_READ, 0, 0]), Err(ParseError::NoId));
        assert_eq!(parse_packet(&[]), Err(ParseError::NoId));
        let unknown = req(99, 6, |_| {});
        assert_eq!(
            parse_packet(&unknown),
            Ok(Packet::Request {
                id: 6,
                request: Request::Unknown { kind: 99 }
            })
        );
    }
}
