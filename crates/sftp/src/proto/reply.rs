//! What the server sends: each function returns one whole packet, length
//! field included, ready to write.

use super::attrs::Attrs;
use super::wire::Put;
use super::*;

/// Starts a packet of type `kind`; [`finish`] fills in its length.
fn start(kind: u8, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 9);
    out.put_u32(0);
    out.put_u8(kind);
    out
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    // Replies are bounded far below 4 GiB by construction (the largest is a
    // DATA reply of at most MAX_READ_LEN bytes).
    let len = u32::try_from(out.len().saturating_sub(4)).unwrap_or(u32::MAX);
    if let Some(head) = out.get_mut(..4) {
        head.copy_from_slice(&len.to_be_bytes());
    }
    out
}

/// `SSH_FXP_VERSION` 3 with the extensions this server supports.
pub fn version() -> Vec<u8> {
    let mut out = start(FXP_VERSION, 128);
    out.put_u32(VERSION);
    for (name, data) in EXTENSIONS {
        out.put_string(name);
        out.put_string(data);
    }
    finish(out)
}

/// `SSH_FXP_STATUS`: `code` and a message for people (no language tag).
pub fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut out = start(FXP_STATUS, 16 + message.len());
    out.put_u32(id);
    out.put_u32(code);
    out.put_string(message.as_bytes());
    out.put_string(b"");
    finish(out)
}

/// `SSH_FXP_HANDLE`.
pub fn handle(id: u32, handle: &[u8]) -> Vec<u8> {
    let mut out = start(FXP_HANDLE, 8 + handle.len());
    out.put_u32(id);
    out.put_string(handle);
    finish(out)
}

/// `SSH_FXP_DATA`.
pub fn data(id: u32, data: &[u8]) -> Vec<u8> {
    let mut out = start(FXP_DATA, 8 + data.len());
    out.put_u32(id);
    out.put_string(data);
    finish(out)
}

/// One entry of an `SSH_FXP_NAME` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// File name (a bare name in listings, a full path from REALPATH).
    pub filename: String,
    /// `ls -l` style line, for clients that show it as is.
    pub longname: String,
    /// Attributes.
    pub attrs: Attrs,
}

impl NameEntry {
    /// Bytes the entry takes in a reply.
    pub fn wire_len(&self) -> usize {
        // Two string lengths, flags, size, permissions, times.
        8 + self.filename.len() + self.longname.len() + 4 + 8 + 4 + 8 + 8
    }
}

/// `SSH_FXP_NAME`.
pub fn name(id: u32, entries: &[NameEntry]) -> Vec<u8> {
    let size: usize = entries.iter().map(NameEntry::wire_len).sum();
    let mut out = start(FXP_NAME, 8 + size);
    out.put_u32(id);
    out.put_u32(u32::try_from(entries.len()).unwrap_or(u32::MAX));
    for e in entries {
        out.put_string(e.filename.as_bytes());
        out.put_string(e.longname.as_bytes());
        e.attrs.write(&mut out);
    }
    finish(out)
}

/// `SSH_FXP_ATTRS`.
pub fn attrs(id: u32, attrs: &Attrs) -> Vec<u8> {
    let mut out = start(FXP_ATTRS, 40);
    out.put_u32(id);
    attrs.write(&mut out);
    finish(out)
}

/// The `limits@openssh.com` reply: packet, read and write lengths, and open
/// handles.
pub fn limits(id: u32, max_handles: u64) -> Vec<u8> {
    let mut out = start(FXP_EXTENDED_REPLY, 40);
    out.put_u32(id);
    out.put_u64(u64::from(MAX_REPLY_LEN));
    out.put_u64(u64::from(MAX_READ_LEN));
    out.put_u64(u64::from(MAX_WRITE_LEN));
    out.put_u64(max_handles);
    finish(out)
}

#[cfg(test)]
mod tests {
    use super::super::wire::Cursor;
    use super::*;

    fn body(packet: &[u8]) -> Cursor<'_> {
        let mut c = Cursor::new(packet);
        let len = c.u32().expect("length");
        assert_eq!(len as usize, packet.len() - 4);
        c
    }

    #[test]
    fn status_and_version_are_well_formed() {
        let s = status(42, STATUS_EOF, "End of file");
        let mut c = body(&s);
        assert_eq!(c.u8(), Ok(FXP_STATUS));
        assert_eq!(c.u32(), Ok(42));
        assert_eq!(c.u32(), Ok(STATUS_EOF));
        assert_eq!(c.string(), Ok(&b"End of file"[..]));
        assert_eq!(c.string(), Ok(&b""[..]));
        assert_eq!(c.remaining(), 0);

        let v = version();
        let mut c = body(&v);
        assert_eq!(c.u8(), Ok(FXP_VERSION));
        assert_eq!(c.u32(), Ok(3));
        let mut names = Vec::new();
        while c.remaining() > 0 {
            names.push(c.string().expect("name").to_vec());
            assert_eq!(c.string(), Ok(&b"1"[..]));
        }
        assert!(names.contains(&EXT_POSIX_RENAME.to_vec()));
        assert!(names.contains(&EXT_LIMITS.to_vec()));
        assert!(names.contains(&EXT_FSYNC.to_vec()));
    }

    #[test]
    fn name_entries_round_trip() {
        let e = NameEntry {
            filename: "a.txt".into(),
            longname: "-rw-r--r-- 1 u u 3 Jan  1 00:00 a.txt".into(),
            attrs: Attrs {
                size: Some(3),
                uid_gid: None,
                permissions: Some(0o100_644),
                times: Some((5, 5)),
            },
        };
        let n = name(1, &[e.clone(), e.clone()]);
        assert!(n.len() <= 4 + 9 + 2 * e.wire_len());
        let mut c = body(&n);
        assert_eq!(c.u8(), Ok(FXP_NAME));
        assert_eq!(c.u32(), Ok(1));
        assert_eq!(c.u32(), Ok(2));
        for _ in 0..2 {
            assert_eq!(c.string(), Ok(e.filename.as_bytes()));
            assert_eq!(c.string(), Ok(e.longname.as_bytes()));
            assert_eq!(Attrs::read(&mut c).as_ref(), Ok(&e.attrs));
        }
        assert_eq!(c.remaining(), 0);
    }
}
