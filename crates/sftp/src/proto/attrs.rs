//! File attributes (`ATTRS`, draft-ietf-secsh-filexfer-02 section 5): a
//! flags word, then only the fields it names.

use super::wire::{Cursor, Put, Short};

/// `size` is present.
pub const ATTR_SIZE: u32 = 0x0000_0001;
/// `uid` and `gid` are present.
pub const ATTR_UIDGID: u32 = 0x0000_0002;
/// `permissions` is present.
pub const ATTR_PERMISSIONS: u32 = 0x0000_0004;
/// `atime` and `mtime` are present.
pub const ATTR_ACMODTIME: u32 = 0x0000_0008;
/// Extended name/value pairs follow.
pub const ATTR_EXTENDED: u32 = 0x8000_0000;

/// File type bits of `permissions` (as in `st_mode`).
pub const S_IFMT: u32 = 0o170_000;
/// A regular file.
pub const S_IFREG: u32 = 0o100_000;
/// A directory.
pub const S_IFDIR: u32 = 0o040_000;

/// Attributes as sent or received; `None` is a field that is absent.
/// Extended pairs a client sends are read past and dropped: no extended
/// attribute is supported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Size in bytes.
    pub size: Option<u64>,
    /// Owner and group ids.
    pub uid_gid: Option<(u32, u32)>,
    /// Type and mode bits, as `st_mode`.
    pub permissions: Option<u32>,
    /// Access and modification times, seconds since 1970 (UTC).
    pub times: Option<(u32, u32)>,
}

impl Attrs {
    /// Reads attributes; fields whose flag is not set are absent, unknown
    /// flag bits are ignored (they name no field in version 3).
    pub(crate) fn read(c: &mut Cursor<'_>) -> Result<Self, Short> {
        let flags = c.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(c.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((c.u32()?, c.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(c.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((c.u32()?, c.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            // Each pair takes at least 8 bytes of the packet, so the count
            // is bounded by what was sent; nothing is allocated from it.
            let count = c.u32()?;
            for _ in 0..count {
                c.string()?;
                c.string()?;
            }
        }
        Ok(a)
    }

    /// The flags word for the fields present.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.size.is_some() {
            f |= ATTR_SIZE;
        }
        if self.uid_gid.is_some() {
            f |= ATTR_UIDGID;
        }
        if self.permissions.is_some() {
            f |= ATTR_PERMISSIONS;
        }
        if self.times.is_some() {
            f |= ATTR_ACMODTIME;
        }
        f
    }

    /// Appends the wire form.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.put_u32(self.flags());
        if let Some(size) = self.size {
            out.put_u64(size);
        }
        if let Some((uid, gid)) = self.uid_gid {
            out.put_u32(uid);
            out.put_u32(gid);
        }
        if let Some(p) = self.permissions {
            out.put_u32(p);
        }
        if let Some((atime, mtime)) = self.times {
            out.put_u32(atime);
            out.put_u32(mtime);
        }
    }

    /// Whether the type bits say directory.
    pub fn is_dir(&self) -> bool {
        self.permissions.is_some_and(|p| p & S_IFMT == S_IFDIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cases = [
            Attrs::default(),
            Attrs {
                size: Some(12345),
                uid_gid: None,
                permissions: Some(S_IFREG | 0o644),
                times: Some((1, 2)),
            },
            Attrs {
                size: None,
                uid_gid: Some((1000, 1000)),
                permissions: None,
                times: None,
            },
        ];
        for a in cases {
            let mut out = Vec::new();
            a.write(&mut out);
            let mut c = Cursor::new(&out);
            assert_eq!(Attrs::read(&mut c), Ok(a));
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn extended_pairs_are_skipped_and_a_huge_count_is_short() {
        let mut out = Vec::new();
        out.put_u32(ATTR_EXTENDED | ATTR_SIZE);
        out.put_u64(9);
        out.put_u32(1);
        out.put_string(b"name");
        out.put_string(b"value");
        let a = Attrs::read(&mut Cursor::new(&out)).expect("parses");
        assert_eq!(a.size, Some(9));

        let mut out = Vec::new();
        out.put_u32(ATTR_EXTENDED);
        out.put_u32(u32::MAX);
        assert_eq!(Attrs::read(&mut Cursor::new(&out)), Err(Short));
    }
}
