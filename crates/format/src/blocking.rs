//! Blocking adapters: [`EncryptingWriter`] over any `Write`, and a seekable
//! [`DecryptingReader`] over any `Read + Seek`.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::error::{Error, Result};
use crate::header::{HEADER_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN, TAG_LEN};
use crate::keys::{DataKey, SALT_LEN};
use crate::stream::{resume_point, Decryptor, Encryptor, Segment};

/// Seals everything written to it into `inner`. Call
/// [`EncryptingWriter::finish`] at the end: without it the file has no final
/// segment and reads back as truncated.
#[derive(Debug)]
pub struct EncryptingWriter<W: Write> {
    inner: W,
    enc: Encryptor,
}

impl<W: Write> EncryptingWriter<W> {
    /// Starts a new file under `dek`, with a fresh random salt.
    pub fn new(inner: W, dek: &DataKey) -> Result<Self> {
        Ok(Self {
            inner,
            enc: Encryptor::new(dek)?,
        })
    }

    /// Starts a new file with a fixed salt. Only for test vectors.
    pub fn with_salt(inner: W, dek: &DataKey, salt: [u8; SALT_LEN]) -> Result<Self> {
        Ok(Self {
            inner,
            enc: Encryptor::with_salt(dek, salt)?,
        })
    }

    /// Plaintext bytes accepted so far.
    pub fn plaintext_len(&self) -> u64 {
        self.enc.plaintext_len()
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying writer, mutably (to sync it; writing to it directly
    /// would corrupt the file).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Continues an unfinished file stored elsewhere, of which the caller
    /// read `header` (its first bytes), its stored length and `last_sealed`
    /// (its last full segment; see [`Encryptor::resume`]), or, with `None`,
    /// keeps them in an authenticated record
    /// ([`Encryptor::resume_recorded`]): `inner` appends at that stored
    /// length.
    pub fn resume_with(
        inner: W,
        dek: &DataKey,
        header: &[u8],
        ciphertext_len: u64,
        last_sealed: Option<&[u8]>,
    ) -> Result<Self> {
        let enc = match last_sealed {
            Some(last) => Encryptor::resume(dek, header, ciphertext_len, last)?,
            None => Encryptor::resume_recorded(dek, header, ciphertext_len)?,
        };
        Ok(Self { inner, enc })
    }

    /// The same stream over another writer, which must continue exactly
    /// where `inner` is (what `f` makes of it, e.g. the same file through
    /// another kind of I/O). Sealed bytes not yet written move along.
    pub fn try_map_inner<V: Write>(
        self,
        f: impl FnOnce(W) -> io::Result<V>,
    ) -> io::Result<EncryptingWriter<V>> {
        Ok(EncryptingWriter {
            inner: f(self.inner)?,
            enc: self.enc,
        })
    }

    fn drain(&mut self) -> io::Result<()> {
        while !self.enc.pending().is_empty() {
            let n = self.inner.write(self.enc.pending())?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.enc.consume(n);
        }
        Ok(())
    }

    /// Seals the final segment, writes it, flushes, and returns the inner
    /// writer. Durability (fsync) is the caller's business.
    pub fn finish(mut self) -> Result<W> {
        self.drain()?;
        while !self.enc.finish()? {
            self.drain()?;
        }
        self.drain()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Read + Write + Seek> EncryptingWriter<W> {
    /// Continues an unfinished file (see [`Encryptor::resume`]): checks its
    /// header and last segment and positions `inner` at its end. Returns
    /// [`Error::NotResumable`] when the file must be re-encrypted instead.
    pub fn resume(mut inner: W, dek: &DataKey) -> Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        let (_, last) = resume_point(len)?;
        let mut header = [0u8; HEADER_LEN];
        inner.seek(SeekFrom::Start(0))?;
        inner.read_exact(&mut header)?;
        let mut last_sealed = Vec::new();
        if let Some(offset) = last {
            last_sealed.resize(SEALED_SEGMENT_LEN, 0);
            inner.seek(SeekFrom::Start(offset))?;
            inner.read_exact(&mut last_sealed)?;
        }
        let enc = Encryptor::resume(dek, &header, len, &last_sealed)?;
        inner.seek(SeekFrom::End(0))?;
        Ok(Self { inner, enc })
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            self.drain()?;
            let n = self.enc.push(buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Writes out sealed segments; a partial last segment stays buffered
    /// until more data or `finish`, since it cannot be sealed yet.
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
    }
}

/// Reads a sealed file's length and header from `inner` and checks the
/// key, the header tag and the length, and for an empty file its one
/// segment (without that, a file cut to the length of an empty one would
/// read as empty). Other segments are for the caller to check as it reads.
pub fn open_decryptor<R: Read + Seek>(inner: &mut R, dek: &DataKey) -> Result<Decryptor> {
    let len = inner.seek(SeekFrom::End(0))?;
    inner.seek(SeekFrom::Start(0))?;
    let mut header = [0u8; HEADER_LEN];
    let avail = usize::try_from(len.min(HEADER_LEN as u64)).unwrap_or(HEADER_LEN);
    inner.read_exact(&mut header[..avail])?;
    let dec = Decryptor::new(dek, &header[..avail], len)?;
    if dec.layout().plaintext_len() == 0 {
        let mut tag = [0u8; TAG_LEN];
        inner.read_exact(&mut tag)?;
        dec.check_if_empty(&tag)?;
    }
    Ok(dec)
}

/// Segments a large read fetches from the underlying reader at once.
const BATCH: usize = 16;

/// Reads the plaintext of a sealed file, with random access: a seek costs
/// nothing, and the next read decrypts only the segment it lands in.
#[derive(Debug)]
pub struct DecryptingReader<R> {
    inner: R,
    dec: Decryptor,
    /// Plaintext position of the next read.
    pos: u64,
    /// Position of `inner`, to skip needless seeks when reading in order.
    inner_pos: u64,
    /// Sealed bytes read, one segment or (for large reads) up to [`BATCH`].
    sealed: Vec<u8>,
    plain: Box<[u8]>,
    /// Index of the segment held in `plain`, and its length.
    cached: Option<(u64, usize)>,
}

impl<R: Read + Seek> DecryptingReader<R> {
    /// Opens a sealed file: reads its length and header, checks the key, the
    /// header tag and the length. Segments are checked as they are read
    /// (the one segment of an empty file, now).
    pub fn new(mut inner: R, dek: &DataKey) -> Result<Self> {
        let dec = open_decryptor(&mut inner, dek)?;
        Ok(Self {
            inner,
            dec,
            pos: 0,
            inner_pos: u64::MAX,
            sealed: vec![0u8; SEALED_SEGMENT_LEN],
            plain: vec![0u8; SEGMENT_LEN].into_boxed_slice(),
            cached: None,
        })
    }

    /// Plaintext length of the file.
    pub fn plaintext_len(&self) -> u64 {
        self.dec.layout().plaintext_len()
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_sealed(&mut self, seg: &Segment) -> io::Result<()> {
        self.read_sealed_range(seg.ciphertext_offset, seg.ciphertext_len)
    }

    /// Reads `len` sealed bytes at file offset `offset` into `sealed`.
    fn read_sealed_range(&mut self, offset: u64, len: usize) -> io::Result<()> {
        if self.sealed.len() < len {
            self.sealed.resize(len, 0);
        }
        if self.inner_pos != offset {
            self.inner.seek(SeekFrom::Start(offset))?;
        }
        // Until read_exact succeeds the inner position is unknown.
        self.inner_pos = u64::MAX;
        self.inner.read_exact(&mut self.sealed[..len])?;
        self.inner_pos = offset + len as u64;
        Ok(())
    }

    /// Reads the whole segments from `first` on that fit in `out` (at most
    /// [`BATCH`]) with one read, and opens them into `out`; returns the
    /// plaintext bytes produced.
    fn read_whole(&mut self, first: Segment, out: &mut [u8]) -> Result<usize> {
        let mut segs = [first; BATCH];
        let mut count = 1;
        let mut plain = first.plaintext_len;
        let mut sealed_len = first.ciphertext_len;
        while count < BATCH && !segs[count - 1].last {
            let Some(next) = self.dec.layout().segment(first.index + count as u64) else {
                break;
            };
            if out.len() - plain < next.plaintext_len {
                break;
            }
            segs[count] = next;
            plain += next.plaintext_len;
            sealed_len += next.ciphertext_len;
            count += 1;
        }
        self.read_sealed_range(first.ciphertext_offset, sealed_len)?;
        let (mut at, mut done) = (0, 0);
        for seg in &segs[..count] {
            let sealed = &self.sealed[at..at + seg.ciphertext_len];
            match self.dec.open(seg, sealed, &mut out[done..]) {
                Ok(n) => done += n,
                // Hand out the good segments first; the next read starts
                // at the bad one and reports it.
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            }
            at += seg.ciphertext_len;
        }
        Ok(done)
    }

    /// Reads as much as fits into `out`, segment by segment.
    fn read_some(&mut self, out: &mut [u8], done: &mut usize) -> Result<()> {
        while *done < out.len() {
            let Some(seg) = self.dec.layout().segment_at(self.pos) else {
                return Ok(());
            };
            let skip = usize::try_from(self.pos - seg.plaintext_offset)
                .expect("offset inside a segment is below SEGMENT_LEN");
            let room = &mut out[*done..];
            let n = match self.cached {
                Some((index, len)) if index == seg.index => {
                    let n = (len - skip).min(room.len());
                    room[..n].copy_from_slice(&self.plain[skip..skip + n]);
                    n
                }
                _ if skip == 0 && room.len() >= seg.plaintext_len => {
                    // Whole segments wanted: read as many as fit (up to
                    // BATCH) in one call and decrypt them straight into the
                    // caller's buffer.
                    self.read_whole(seg, room)?
                }
                _ => {
                    self.read_sealed(&seg)?;
                    self.cached = None;
                    let sealed = &self.sealed[..seg.ciphertext_len];
                    let len = self.dec.open(&seg, sealed, &mut self.plain)?;
                    self.cached = Some((seg.index, len));
                    continue;
                }
            };
            if n == 0 {
                return Ok(());
            }
            *done += n;
            self.pos += n as u64;
        }
        Ok(())
    }
}

impl<R: Read + Seek> Read for DecryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        match self.read_some(out, &mut done) {
            Ok(()) => Ok(done),
            // Hand out what was read; the error comes back on the next call.
            Err(_) if done > 0 => Ok(done),
            Err(e) => Err(e.into()),
        }
    }
}

impl<R: Read + Seek> Seek for DecryptingReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_target(self.pos, self.plaintext_len(), to)?;
        Ok(self.pos)
    }
}

/// Resolves a `SeekFrom` against a plaintext position and length.
pub(crate) fn seek_target(pos: u64, len: u64, to: SeekFrom) -> io::Result<u64> {
    let target = match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    target.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek to a negative or overflowing position",
        )
    })
}

/// Reads a whole sealed file from a byte slice; for tests and tools.
pub fn open_to_vec(sealed: &[u8], dek: &DataKey) -> Result<Vec<u8>> {
    let mut reader = DecryptingReader::new(io::Cursor::new(sealed), dek)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(Error::from_io_owned)?;
    Ok(out)
}

/// Seals `plaintext` into a new vector; for tests and tools.
pub fn seal_to_vec(plaintext: &[u8], dek: &DataKey) -> Result<Vec<u8>> {
    let mut w = EncryptingWriter::new(Vec::new(), dek)?;
    w.write_all(plaintext)?;
    w.finish()
}
