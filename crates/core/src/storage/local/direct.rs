//! Sequential file writes that bypass the page cache (`O_DIRECT`), for
//! staging files.
//!
//! An upload is synced before its commit is confirmed, and nobody reads it
//! back soon: passing it through the page cache only costs a copy per byte,
//! the allocation of a page per 4 KiB (slow where memory is first touched,
//! as in VMs), and writeback work charged to the upload's thread at the
//! sync. Direct writes go from our buffer to the device. They need
//! block-aligned buffers, offsets and lengths, so bytes collect in an
//! aligned buffer and go out in whole blocks; a partial block at a flush
//! goes through the ordinary (buffered) descriptor and is written again,
//! directly, once the block is full. Where the file system refuses
//! `O_DIRECT` (tmpfs on older kernels, some FUSE file systems) every write
//! is buffered, as before.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Alignment of direct writes' memory, offsets and lengths: the page size,
/// which covers every logical block size in use.
const ALIGN: usize = 4096;
/// Bytes collected before a direct write.
const BLOCK: usize = 1 << 20;

/// A buffer of [`BLOCK`] bytes whose start is [`ALIGN`]-aligned in memory,
/// without unsafe code: a larger vector, used from its first aligned byte.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        // The address is only looked at, never turned back into a pointer.
        let misalign = raw.as_ptr() as usize % ALIGN;
        let start = (ALIGN - misalign) % ALIGN;
        Self { raw, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + BLOCK]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }
}

/// Writes a file sequentially from an offset on; see the module.
pub(super) struct DirectFile {
    /// The file, as opened (buffered I/O).
    file: File,
    /// The same file opened again with `O_DIRECT`; `None` when refused.
    direct: Option<File>,
    buf: AlignedBuf,
    /// File offset of the buffer's first byte (a multiple of [`ALIGN`]).
    buf_offset: u64,
    /// Bytes in the buffer.
    len: usize,
}

impl DirectFile {
    /// Continues `file` at `offset` (its end): the bytes of the block that
    /// `offset` falls in are read back into the buffer first.
    pub(super) fn new(file: File, offset: u64) -> io::Result<Self> {
        // A new open file description of the same inode (not a dup: the
        // O_DIRECT flag belongs to the description, and the buffered
        // descriptor must keep its own).
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok();
        let mut buf = AlignedBuf::new();
        let within = offset % ALIGN as u64;
        let buf_offset = offset - within;
        // Below ALIGN, so it fits.
        let len = usize::try_from(within).unwrap_or(0);
        file.read_exact_at(&mut buf.bytes_mut()[..len], buf_offset)?;
        Ok(Self {
            file,
            direct,
            buf,
            buf_offset,
            len,
        })
    }

    /// Whether writes bypass the page cache.
    pub(super) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The buffered descriptor (for syncing, and the writeback hint where
    /// writes are buffered).
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// File offset after the last byte written so far.
    pub(super) fn end(&self) -> u64 {
        self.buf_offset + self.len as u64
    }

    /// Writes the whole blocks of the buffer, directly if possible; keeps
    /// the partial block at the end for later. With `tail`, the partial
    /// block is also written, buffered, so that the file holds every byte.
    fn write_out(&mut self, tail: bool) -> io::Result<()> {
        let whole = self.len - self.len % ALIGN;
        if whole > 0 {
            let data = &self.buf.bytes()[..whole];
            let direct = match &self.direct {
                Some(d) => d.write_all_at(data, self.buf_offset),
                None => self.file.write_all_at(data, self.buf_offset),
            };
            if let Err(e) = direct {
                if self.direct.is_none() || e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
                // Accepted at open, refused at write: buffered from now on.
                self.direct = None;
                self.file.write_all_at(data, self.buf_offset)?;
            }
            self.buf.bytes_mut().copy_within(whole..self.len, 0);
            self.buf_offset += whole as u64;
            self.len -= whole;
        }
        if tail && self.len > 0 {
            self.file
                .write_all_at(&self.buf.bytes()[..self.len], self.buf_offset)?;
        }
        Ok(())
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.len == BLOCK {
            self.write_out(false)?;
        }
        let n = data.len().min(BLOCK - self.len);
        self.buf.bytes_mut()[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }

    /// Puts every byte written so far into the file (not synced).
    fn flush(&mut self) -> io::Result<()> {
        self.write_out(true)
    }
}

impl std::fmt::Debug for DirectFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectFile")
            .field("direct", &self.direct.is_some())
            .field("end", &self.end())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i % 251).expect("below 251") ^ seed)
            .collect::<Vec<u8>>()
    }

    /// Writes in odd-sized pieces with flushes between, from an unaligned
    /// start, and checks the file byte for byte.
    fn check(dir: &std::path::Path) {
        let path = dir.join("f");
        let head = pattern(5000, 1);
        std::fs::write(&path, &head).expect("write head");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut w = DirectFile::new(file, head.len() as u64).expect("new");
        let mut expect = head.clone();
        let body = pattern(3 * BLOCK + 12_345, 7);
        for (i, piece) in body.chunks(65_552).enumerate() {
            w.write_all(piece).expect("write");
            expect.extend_from_slice(piece);
            if i % 7 == 3 {
                w.flush().expect("flush");
                assert_eq!(std::fs::read(&path).expect("read"), expect);
            }
        }
        w.flush().expect("flush");
        w.file().sync_all().expect("sync");
        assert_eq!(std::fs::read(&path).expect("read"), expect);
    }

    #[test]
    fn writes_come_out_exact_from_any_offset() {
        // A real file system (direct writes where it takes them) and, where
        // it exists, tmpfs.
        let here = tempfile::tempdir().expect("tempdir");
        check(here.path());
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            check(shm.path());
        }
    }
}
