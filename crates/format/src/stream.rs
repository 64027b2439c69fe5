//! The sans-io core: segment layout, nonces, sealing and opening.
//!
//! Nothing here touches a file or a socket. [`Encryptor`] takes plaintext
//! and hands out sealed bytes to write; [`Decryptor`] opens one segment at a
//! time from bytes someone else read. The blocking and tokio adapters are
//! thin loops around these two.
//!
//! STREAM: segment `i` is sealed with AES-256-GCM under the file's payload
//! key and the nonce `i` (11 bytes, big-endian) ‖ `last` (one byte, 1 for the
//! final segment, 0 otherwise). A full segment is sealed only once more
//! plaintext is known to follow, so the final segment is the only one with
//! `last = 1`, and the only one that may be short.

use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};

use crate::error::{Error, Result};
use crate::header::{Header, HEADER_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN, TAG_LEN};
use crate::keys::{random_salt, DataKey, FileKeys, SALT_LEN};

const H: u64 = HEADER_LEN as u64;
const S: u64 = SEGMENT_LEN as u64;
const F: u64 = SEALED_SEGMENT_LEN as u64;
const T: u64 = TAG_LEN as u64;

/// The ciphertext length of a file holding `plaintext_len` bytes, or `None`
/// if that would not fit in a `u64`.
pub fn ciphertext_len(plaintext_len: u64) -> Option<u64> {
    let segments = plaintext_len.div_ceil(S).max(1);
    segments
        .checked_mul(T)?
        .checked_add(plaintext_len)?
        .checked_add(H)
}

/// The plaintext length of a sealed file from its ciphertext length alone.
/// Rejects every length no sealed file can have.
pub fn plaintext_len(ciphertext_len: u64) -> Result<u64> {
    let invalid = Error::InvalidLength(ciphertext_len);
    let body = ciphertext_len
        .checked_sub(H)
        .ok_or(Error::InvalidLength(ciphertext_len))?;
    let full = body / F;
    let rem = body % F;
    match rem {
        // Only full segments: the last of them is the final one.
        0 if full > 0 => Ok(full * S),
        // No segment at all, or a final segment shorter than its tag.
        0 => Err(invalid),
        r if r < T => Err(invalid),
        // An empty final segment only exists in an empty file.
        r if r == T && full > 0 => Err(invalid),
        r => Ok(full * S + (r - T)),
    }
}

/// Where one segment lives, in ciphertext and in plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Zero-based index, the nonce counter.
    pub index: u64,
    /// Offset of the sealed segment in the file.
    pub ciphertext_offset: u64,
    /// Sealed length: plaintext length plus the 16-byte tag.
    pub ciphertext_len: usize,
    /// Offset of the segment's first plaintext byte.
    pub plaintext_offset: u64,
    /// Plaintext bytes in this segment.
    pub plaintext_len: usize,
    /// Whether this is the final segment.
    pub last: bool,
}

/// The segment layout of a file of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    plaintext_len: u64,
    segments: u64,
}

impl Layout {
    /// The layout of a sealed file with this many bytes.
    pub fn from_ciphertext_len(ciphertext_len: u64) -> Result<Self> {
        let plaintext_len = plaintext_len(ciphertext_len)?;
        Ok(Self {
            plaintext_len,
            segments: plaintext_len.div_ceil(S).max(1),
        })
    }

    /// Plaintext bytes in the file.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Number of segments (at least one: an empty file has one empty final
    /// segment).
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// The segment holding plaintext byte `offset`; `None` at or past the
    /// end (so never for an empty file).
    pub fn segment_at(&self, offset: u64) -> Option<Segment> {
        if offset >= self.plaintext_len {
            return None;
        }
        self.segment(offset / S)
    }

    /// Segment number `index`, if the file has it.
    pub fn segment(&self, index: u64) -> Option<Segment> {
        if index >= self.segments {
            return None;
        }
        let plaintext_offset = index * S;
        // Both bounded by SEGMENT_LEN, so the conversions cannot fail.
        let plaintext_len = usize::try_from((self.plaintext_len - plaintext_offset).min(S))
            .expect("segment length is at most SEGMENT_LEN");
        Some(Segment {
            index,
            ciphertext_offset: H + index * F,
            ciphertext_len: plaintext_len + TAG_LEN,
            plaintext_offset,
            plaintext_len,
            last: index + 1 == self.segments,
        })
    }
}

/// The STREAM nonce of segment `index`.
fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Opens the segments of one file.
pub struct Decryptor {
    keys: FileKeys,
    layout: Layout,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// Checks the header (the first [`HEADER_LEN`] bytes of the file, or all
    /// of it if shorter) against `dek`, and the file length.
    pub fn new(dek: &DataKey, header: &[u8], ciphertext_len: u64) -> Result<Self> {
        let keys = Header::parse_complete(header)?.open(dek)?;
        let layout = Layout::from_ciphertext_len(ciphertext_len)?;
        Ok(Self { keys, layout })
    }

    /// For the sealed prefix of an unfinished file (an upload in progress,
    /// or one a crash interrupted): its first `segments` segments, none of
    /// them final. Checks the header against `dek`; segments are checked as
    /// they are opened. Bytes after them (a segment whose write was cut
    /// short) are not part of it. See [`whole_segments`].
    pub fn unfinished(dek: &DataKey, header: &[u8], segments: u64) -> Result<Self> {
        let keys = Header::parse_complete(header)?.open(dek)?;
        // One byte more than the segments hold: none of them is the last.
        let plaintext_len = segments
            .checked_mul(S)
            .and_then(|n| n.checked_add(1))
            .ok_or(Error::TooLong)?;
        let layout = Layout {
            plaintext_len,
            segments: segments + 1,
        };
        Ok(Self { keys, layout })
    }

    /// The file's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Opens segment `seg` from its sealed bytes into `out`, which must hold
    /// at least `seg.plaintext_len` bytes; returns that length. On failure
    /// `out` is zeroed and the error says what was wrong.
    pub fn open(&self, seg: &Segment, sealed: &[u8], out: &mut [u8]) -> Result<usize> {
        let n = seg.plaintext_len;
        if sealed.len() != seg.ciphertext_len || out.len() < n {
            return Err(Error::InvalidLength(sealed.len() as u64));
        }
        let (body, tag) = sealed.split_at(n);
        let out = &mut out[..n];
        if self.try_open(seg.index, seg.last, body, tag, out) {
            return Ok(n);
        }
        // Classify the failure: an authentic segment with the other `last`
        // flag means the stream was cut (or extended) right here.
        let err = if seg.last && n == SEGMENT_LEN && self.try_open(seg.index, false, body, tag, out)
        {
            Error::Truncated { index: seg.index }
        } else if !seg.last && self.try_open(seg.index, true, body, tag, out) {
            Error::TrailingData { index: seg.index }
        } else {
            Error::SegmentAuth { index: seg.index }
        };
        out.fill(0);
        Err(err)
    }

    /// For an empty file (plaintext length 0), checks its one segment: the
    /// [`TAG_LEN`] bytes after the header. Without this check a file cut to
    /// the length of an empty one would read as empty. Does nothing for
    /// other files, whose segments are checked as they are read.
    pub fn check_if_empty(&self, sealed: &[u8]) -> Result<()> {
        match self.layout.segment(0) {
            Some(seg) if self.layout.plaintext_len == 0 => {
                self.open(&seg, sealed, &mut []).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn try_open(&self, index: u64, last: bool, body: &[u8], tag: &[u8], out: &mut [u8]) -> bool {
        self.keys
            .payload
            .open_separate_gather(nonce(index, last), Aad::empty(), body, tag, out)
            .is_ok()
    }
}

/// Seals plaintext into a file, sans-io.
///
/// Use: write out [`Encryptor::pending`] and [`Encryptor::consume`] it;
/// [`Encryptor::push`] plaintext; at the end [`Encryptor::finish`] and write
/// out the rest. Dropping an encryptor without finishing leaves a file with
/// no final segment, which readers reject as truncated.
pub struct Encryptor {
    keys: FileKeys,
    next_index: u64,
    /// Staged plaintext `[..filled]`, or sealed output `[out_start..out_end]`;
    /// never both at once.
    buf: Box<[u8]>,
    filled: usize,
    out_start: usize,
    out_end: usize,
    plaintext_len: u64,
    finished: bool,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("next_index", &self.next_index)
            .field("plaintext_len", &self.plaintext_len)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Starts a new file under `dek` with a fresh random salt. The header is
    /// the first pending output.
    pub fn new(dek: &DataKey) -> Result<Self> {
        Self::with_salt(dek, random_salt()?)
    }

    /// Starts a new file with a given salt. Only for test vectors: a salt
    /// must be random and never used twice with the same data key.
    pub fn with_salt(dek: &DataKey, salt: [u8; SALT_LEN]) -> Result<Self> {
        let (header, keys) = Header::seal(dek, salt)?;
        let mut enc = Self::empty(keys, 0);
        enc.buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        enc.out_end = HEADER_LEN;
        Ok(enc)
    }

    /// Continues an unfinished file whose stored length is `ciphertext_len`.
    /// `header` is its first [`HEADER_LEN`] bytes; `last_sealed` its last
    /// full segment (the [`SEALED_SEGMENT_LEN`] bytes before the end), or
    /// empty if only the header was stored. See [`resume_point`].
    ///
    /// This is the only way to add to an existing file without a new salt,
    /// and it never re-seals a counter: it continues at the segment after
    /// the last stored one, and refuses a file whose stored length ends
    /// inside a segment or whose last segment is final.
    pub fn resume(
        dek: &DataKey,
        header: &[u8],
        ciphertext_len: u64,
        last_sealed: &[u8],
    ) -> Result<Self> {
        let (sealed_segments, last) = resume_point(ciphertext_len)?;
        // Check the last stored segment as a not-final one: authentic as
        // final means the file is already complete.
        let check = Decryptor::unfinished(dek, header, sealed_segments)?;
        if let Some(seg) = last.and_then(|_| check.layout.segment(sealed_segments - 1)) {
            let mut scratch = vec![0u8; SEGMENT_LEN];
            match check.open(&seg, last_sealed, &mut scratch) {
                Ok(_) => {}
                Err(Error::TrailingData { .. }) => {
                    return Err(Error::NotResumable("the file is already final"))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self::empty(check.keys, sealed_segments))
    }

    /// Continues an unfinished file like [`Encryptor::resume`], without
    /// reading its last segment back: for storage that cannot read an
    /// unfinished file (a multipart upload), where the caller keeps the
    /// file's length and header in a record it authenticated under a key
    /// derived from the same data key, and so knows the file is unfinished
    /// and its length is what was stored. The header is still checked.
    pub fn resume_recorded(dek: &DataKey, header: &[u8], ciphertext_len: u64) -> Result<Self> {
        let (sealed_segments, _) = resume_point(ciphertext_len)?;
        let check = Decryptor::unfinished(dek, header, sealed_segments)?;
        Ok(Self::empty(check.keys, sealed_segments))
    }

    fn empty(keys: FileKeys, next_index: u64) -> Self {
        Self {
            keys,
            next_index,
            buf: vec![0u8; SEALED_SEGMENT_LEN].into_boxed_slice(),
            filled: 0,
            out_start: 0,
            out_end: 0,
            plaintext_len: next_index * S,
            finished: false,
        }
    }

    /// Sealed bytes waiting to be written, in order.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.out_start..self.out_end]
    }

    /// Marks `n` pending bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.out_start = (self.out_start + n).min(self.out_end);
        if self.out_start == self.out_end {
            self.out_start = 0;
            self.out_end = 0;
        }
    }

    /// Plaintext bytes accepted so far (including a resumed prefix).
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Accepts plaintext; returns how many bytes were taken. Returns 0 while
    /// output is pending (write it out, then call again) or when a full
    /// segment was just sealed into pending output.
    pub fn push(&mut self, input: &[u8]) -> Result<usize> {
        if self.finished {
            return Err(Error::Finished);
        }
        if self.out_end != 0 || input.is_empty() {
            return Ok(0);
        }
        if self.filled == SEGMENT_LEN {
            // More plaintext follows, so the staged segment is not final.
            self.seal_staged(false)?;
            return Ok(0);
        }
        if self.filled == 0 && input.len() > SEGMENT_LEN {
            // Fast path: seal straight from the caller's buffer.
            let nonce = self.take_nonce(false)?;
            let (body, tag) = self.buf.split_at_mut(SEGMENT_LEN);
            self.keys.payload.seal_out_of_place_scatter(
                nonce,
                Aad::empty(),
                &input[..SEGMENT_LEN],
                body,
                &[],
                tag,
            )?;
            self.out_end = SEALED_SEGMENT_LEN;
            self.plaintext_len += S;
            return Ok(SEGMENT_LEN);
        }
        let n = input.len().min(SEGMENT_LEN - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&input[..n]);
        self.filled += n;
        self.plaintext_len += n as u64;
        Ok(n)
    }

    /// Seals the final segment. Returns `false` (and does nothing) while
    /// output is pending; write it out and call again. After `true`, write
    /// out what is pending and the file is complete.
    pub fn finish(&mut self) -> Result<bool> {
        if self.finished {
            return Err(Error::Finished);
        }
        if self.out_end != 0 {
            return Ok(false);
        }
        self.seal_staged(true)?;
        self.finished = true;
        Ok(true)
    }

    /// Whether [`Encryptor::finish`] has sealed the final segment.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn take_nonce(&mut self, last: bool) -> Result<Nonce> {
        let index = self.next_index;
        self.next_index = index.checked_add(1).ok_or(Error::TooLong)?;
        Ok(nonce(index, last))
    }

    fn seal_staged(&mut self, last: bool) -> Result<()> {
        let nonce = self.take_nonce(last)?;
        let n = self.filled;
        let (body, rest) = self.buf.split_at_mut(n);
        let tag = self
            .keys
            .payload
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        self.filled = 0;
        self.out_start = 0;
        self.out_end = n + TAG_LEN;
        Ok(())
    }
}

/// Whole segments in a stored, unfinished file of this length: a write cut
/// short (a crash while the end of a segment was being written) can leave
/// part of one more, which does not count. Unlike [`resume_point`], any
/// length has an answer. Such a file can only be continued after its whole
/// segments are re-encrypted under a new salt (docs/FORMAT.md, section 6).
pub fn whole_segments(ciphertext_len: u64) -> u64 {
    ciphertext_len.saturating_sub(H) / F
}

/// Where a stored, unfinished file can be continued: the number of sealed
/// segments it holds, and the offset of the last of them (`None` if only the
/// header is stored). Fails with [`Error::NotResumable`] when the length ends
/// inside a segment: that segment's counter was already used, so the file
/// must be re-encrypted under a new salt instead.
pub fn resume_point(ciphertext_len: u64) -> Result<(u64, Option<u64>)> {
    let body = ciphertext_len
        .checked_sub(H)
        .ok_or(Error::InvalidLength(ciphertext_len))?;
    if body % F != 0 {
        return Err(Error::NotResumable("the stored data ends inside a segment"));
    }
    let segments = body / F;
    let last = segments.checked_sub(1).map(|i| H + i * F);
    Ok((segments, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_and_reject_impossible() {
        for p in [
            0,
            1,
            15,
            16,
            17,
            S - 1,
            S,
            S + 1,
            3 * S,
            3 * S + 5,
            10 << 20,
        ] {
            let c = ciphertext_len(p).expect("fits");
            assert_eq!(plaintext_len(c).expect("valid"), p, "p = {p}");
        }
        assert_eq!(ciphertext_len(0), Some(H + T));
        for bad in [0, H - 1, H, H + T - 1, H + F + 1, H + F + T, H + 2 * F + 15] {
            assert!(
                matches!(plaintext_len(bad), Err(Error::InvalidLength(_))),
                "{bad}"
            );
        }
        assert_eq!(ciphertext_len(u64::MAX), None);
    }

    #[test]
    fn every_length_maps_to_at_most_one_plaintext_length() {
        // Walk all ciphertext lengths across three segments: each valid one
        // must come from exactly one plaintext length.
        let mut seen = std::collections::HashSet::new();
        for p in 0..4 * S {
            assert!(seen.insert(ciphertext_len(p).expect("fits")));
        }
        for c in 0..H + 3 * F + 50 {
            assert_eq!(plaintext_len(c).is_ok(), seen.contains(&c), "c = {c}");
        }
    }

    #[test]
    fn layout_points_at_the_right_segment() {
        let layout =
            Layout::from_ciphertext_len(ciphertext_len(2 * S + 10).expect("fits")).expect("valid");
        assert_eq!(layout.segments(), 3);
        let seg = layout.segment_at(S + 1).expect("inside");
        assert_eq!(seg.index, 1);
        assert_eq!(seg.ciphertext_offset, H + F);
        assert!(!seg.last);
        let last = layout.segment_at(2 * S + 9).expect("inside");
        assert_eq!((last.index, last.plaintext_len, last.last), (2, 10, true));
        assert_eq!(layout.segment_at(2 * S + 10), None);
    }
}
