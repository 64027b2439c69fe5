//! SSH wire types (RFC 4251 section 5) as SFTP uses them: big-endian
//! `uint32`/`uint64`, and `string` as a `uint32` length then the bytes.
//! Reading never panics and never allocates from a length it was sent.

/// Reads wire types off a byte slice, front to back.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
}

/// The input ended before a field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short;

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.rest.len() < n {
            return Err(Short);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Short> {
        let b = self.take(1)?;
        b.first().copied().ok_or(Short)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Short> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| Short)?;
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Short> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| Short)?;
        Ok(u64::from_be_bytes(b))
    }

    /// A `string`: its length is checked against what is left before
    /// anything is taken.
    pub(crate) fn string(&mut self) -> Result<&'a [u8], Short> {
        let len = usize::try_from(self.u32()?).map_err(|_| Short)?;
        self.take(len)
    }
}

/// Appends wire types to a reply being built.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    /// A `string`. Callers keep strings far below 4 GiB (every reply is
    /// bounded by the packet limit); a longer one is cut to fit the length
    /// field rather than written with a wrong length.
    fn put_string(&mut self, s: &[u8]);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }

    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }

    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }

    fn put_string(&mut self, s: &[u8]) {
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.put_u32(len);
        self.extend_from_slice(s.get(..len as usize).unwrap_or(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        out.put_u8(7);
        out.put_u32(0xdead_beef);
        out.put_u64(1 << 40);
        out.put_string(b"hello");
        let mut c = Cursor::new(&out);
        assert_eq!(c.u8(), Ok(7));
        assert_eq!(c.u32(), Ok(0xdead_beef));
        assert_eq!(c.u64(), Ok(1 << 40));
        assert_eq!(c.string(), Ok(&b"hello"[..]));
        assert_eq!(c.remaining(), 0);
        assert_eq!(c.u8(), Err(Short));
    }

    #[test]
    fn a_string_longer_than_the_input_is_short() {
        let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff, b'a']);
        assert_eq!(c.string(), Err(Short));
        let mut c = Cursor::new(&[0, 0, 0, 2, b'a']);
        assert_eq!(c.string(), Err(Short));
        let mut c = Cursor::new(&[0, 0]);
        assert_eq!(c.u32(), Err(Short));
    }
}
