//! Reading stored files with random access: [`ReadFile::read_at`] opens
//! only the segments a read touches (one positioned read of their sealed
//! bytes, each segment authenticated on its own, the final one as final so a
//! cut file is caught). Downloads ([`super::Download`]) are reads of this
//! kind, one chunk at a time.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use dropvault_format::{Decryptor, Segment, SEALED_SEGMENT_LEN, SEGMENT_LEN};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};
use zeroize::Zeroizing;

use super::{VaultError, CHUNK};

use crate::storage::{Caps, Object};

/// Chunks one download read covers where every read is a request
/// ([`ReadFile::span`]).
const SPAN_CHUNKS: usize = 4;

/// Chunks of one span small reads are served from
/// ([`ReadFile::small_read_span`]): twice a download's, as nothing reads
/// ahead of them but the one span fetched ahead, so each range request
/// should carry more.
const SMALL_READ_CHUNKS: usize = 8;

/// Spans fetched ahead of a reader going forwards where every read is a
/// request.
const PREFETCH_SPANS: usize = 1;

/// Spans kept for one open file: one behind the reader, the one or two
/// it reads, and those fetched ahead.
const KEPT_SPANS: usize = PREFETCH_SPANS + 3;

/// Spans fetched ahead, and not yet dropped, in the whole process (16
/// of 8 MiB: 128 MiB of plaintext at most): past it, readers fetch each
/// span when they reach it.
static PREFETCH_BUDGET: Semaphore = Semaphore::const_new(16);

/// A stored file open for reading: its header checked, its segments
/// checked as they are read. Cheap to clone (clones share the open file);
/// reads may run concurrently.
#[derive(Clone)]
pub struct ReadFile {
    shared: Arc<Shared>,
}

struct Shared {
    object: Box<dyn Object>,
    dec: Decryptor,
    /// Chunks worth reading ahead of a download ([`crate::storage::Caps`]).
    read_ahead: usize,
    /// Whether small reads are served from whole chunks read at once
    /// ([`crate::storage::Caps::whole_chunk_reads`]), kept in `chunks`.
    whole_chunks: bool,
    /// The spans small reads are served from (with whole chunk reads).
    spans: Mutex<Spans>,
    /// The last segment opened whose end a read stopped short of, so the
    /// next read in order does not open it again.
    cache: Mutex<Option<Cached>>,
}

/// The spans of one file kept for small reads, at most [`KEPT_SPANS`].
#[derive(Default)]
struct Spans {
    slots: VecDeque<Arc<Slot>>,
    /// Buffers of spans dropped that no reader held, and sealed-bytes
    /// buffers, for the next fetches: fetching reuses memory instead of
    /// faulting in and zero-filling a new span each time. Plaintext, not
    /// key material, so not zeroized (as in downloads).
    spare: Vec<Vec<u8>>,
}

/// One span: its plaintext once read. Readers hold it while they copy
/// from it, so dropping it from [`Spans`] never takes it from under one.
struct Slot {
    index: u64,
    plain: OnceCell<Vec<u8>>,
    /// Held while a span fetched ahead is kept.
    _budget: Option<SemaphorePermit<'static>>,
}

impl Spans {
    /// A spare buffer, or a new one, with room for `room` bytes.
    fn take(&mut self, room: usize) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.reserve(room.saturating_sub(buf.len()));
        buf
    }

    /// Keeps `buf` for reuse, up to three.
    fn give_back(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 3 && buf.capacity() > 0 {
            self.spare.push(buf);
        }
    }

    fn has(&self, index: u64) -> bool {
        self.slots.iter().any(|s| s.index == index)
    }

    /// Span `index`'s slot, added if missing (holding `budget`), for a
    /// reader at span `reader`. Past [`KEPT_SPANS`], the lowest span goes
    /// if it is behind the reader, else the highest (a reader that jumped
    /// back).
    fn slot(
        &mut self,
        index: u64,
        reader: u64,
        budget: Option<SemaphorePermit<'static>>,
    ) -> Arc<Slot> {
        if let Some(slot) = self.slots.iter().find(|s| s.index == index) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot {
            index,
            plain: OnceCell::new(),
            _budget: budget,
        });
        self.slots.push_back(Arc::clone(&slot));
        while self.slots.len() > KEPT_SPANS {
            let others = || self.slots.iter().map(|s| s.index).filter(|&i| i != index);
            let gone = match others().min() {
                Some(lowest) if lowest < reader => lowest,
                _ => others().max().unwrap_or(index),
            };
            if let Some(at) = self.slots.iter().position(|s| s.index == gone) {
                let dropped = self.slots.remove(at).and_then(Arc::into_inner);
                if let Some(buf) = dropped.and_then(|s| s.plain.into_inner()) {
                    self.give_back(buf);
                }
            }
        }
        slot
    }
}

/// One opened segment.
struct Cached {
    index: u64,
    plain: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ReadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFile")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl ReadFile {
    /// The most plaintext one read returns: longer reads are cut to this.
    pub const MAX_READ: usize = CHUNK;

    /// A reader of `object`, whose header `dec` checked.
    pub(super) fn new(object: Box<dyn Object>, dec: Decryptor, caps: Caps) -> Self {
        Self {
            shared: Arc::new(Shared {
                object,
                dec,
                read_ahead: caps.read_ahead.max(1),
                whole_chunks: caps.whole_chunk_reads,
                spans: Mutex::new(Spans::default()),
                cache: Mutex::new(None),
            }),
        }
    }

    /// Plaintext length of the file.
    pub fn len(&self) -> u64 {
        self.shared.dec.layout().plaintext_len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pieces a download reads ahead.
    pub(super) fn read_ahead(&self) -> usize {
        self.shared.read_ahead
    }

    /// Plaintext bytes one storage read covers at most: a chunk, or, where
    /// every read is a request, [`SPAN_CHUNKS`] of them (fewer requests,
    /// and fewer partly used blocks on a server that keeps objects in
    /// blocks, as Garage does in 1 MiB ones). A multiple of the segment
    /// length.
    pub(super) fn span(&self) -> usize {
        if self.shared.whole_chunks {
            SPAN_CHUNKS * CHUNK
        } else {
            CHUNK
        }
    }

    /// Plaintext bytes of the spans small reads are served from where
    /// every read is a request ([`SMALL_READ_CHUNKS`] chunks); a chunk
    /// elsewhere (unused there).
    fn small_read_span(&self) -> usize {
        if self.shared.whole_chunks {
            SMALL_READ_CHUNKS * CHUNK
        } else {
            CHUNK
        }
    }

    /// Up to `len` plaintext bytes (at most [`ReadFile::MAX_READ`]) from
    /// plaintext offset `offset`: fewer only where the file ends, none at
    /// or past its end. A segment that fails to authenticate fails the
    /// read with [`VaultError::Format`].
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, VaultError> {
        let total = self.len();
        let end = offset
            .saturating_add(len.min(Self::MAX_READ) as u64)
            .min(total);
        let chunk = CHUNK as u64;
        let whole = offset.is_multiple_of(chunk) && (end - offset == chunk || end == total);
        if self.shared.whole_chunks && offset < end && !whole {
            return self.read_from_chunks(offset, end).await;
        }
        let me = self.clone();
        let len = len.min(Self::MAX_READ);
        tokio::task::spawn_blocking(move || {
            let (mut out, mut sealed) = (Vec::new(), Vec::new());
            me.read_into(offset, len, &mut out, &mut sealed)?;
            Ok(out)
        })
        .await
        .map_err(|e| VaultError::Io(io::Error::other(e)))?
    }

    /// The blocking part of [`ReadFile::read_at`], into `out` (whose
    /// length on return is what was read), with `sealed` for the sealed
    /// bytes. Buffers handed in again are reused as they are, unzeroed.
    /// On failure `out` holds the plaintext of the segments before the
    /// failed one.
    pub(super) fn read_into(
        &self,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
        sealed: &mut Vec<u8>,
    ) -> Result<(), VaultError> {
        let layout = self.shared.dec.layout();
        let total = layout.plaintext_len();
        let len = len.min(self.span().max(self.small_read_span())) as u64;
        let end = offset.saturating_add(len).min(total);
        if offset >= end {
            out.clear();
            return Ok(());
        }
        let seg_len = SEGMENT_LEN as u64;
        let (first, last) = (offset / seg_len, (end - 1) / seg_len);
        // At most MAX_READ plus a segment: fits in usize.
        let want = usize::try_from(end - offset).map_err(|_| io::Error::other("read too long"))?;
        if out.len() < want {
            out.resize(want, 0);
        }
        let mut done = 0;
        let result = self.fill(offset, end, first, last, out, &mut done, sealed);
        out.truncate(done);
        result
    }

    /// A small read where every read is a request (S3): served from the
    /// spans it touches ([`ReadFile::small_read_span`], aligned to their
    /// length),
    /// each read once with one range request and kept, so an SFTP
    /// client's many 32 KiB requests cost one range request per span.
    /// A reader going forwards (a read in a span already there, or at the
    /// start) has the next [`PREFETCH_SPANS`] spans fetched in the
    /// background while it is served from this one, within the process's
    /// [`PREFETCH_BUDGET`]. Readers of one span wait for its one fetch
    /// without holding a thread.
    async fn read_from_chunks(&self, offset: u64, end: u64) -> Result<Vec<u8>, VaultError> {
        let span = self.small_read_span() as u64;
        let (first, last) = (offset / span, (end - 1) / span);
        let (wanted, ahead) = {
            let mut spans = self.spans();
            let forwards = first == 0 || spans.has(first);
            let wanted: Vec<_> = (first..=last).map(|s| spans.slot(s, first, None)).collect();
            let mut ahead = Vec::new();
            let spans_in_file = self.len().div_ceil(span);
            for s in (last + 1..spans_in_file).take(PREFETCH_SPANS) {
                if !forwards || spans.has(s) {
                    continue;
                }
                // Over the budget, the reader fetches it when it gets there.
                let Ok(permit) = PREFETCH_BUDGET.try_acquire() else {
                    break;
                };
                ahead.push(spans.slot(s, first, Some(permit)));
            }
            (wanted, ahead)
        };
        for slot in ahead {
            let me = self.clone();
            tokio::spawn(async move {
                // A failure here is met again, and reported, by the reader
                // that gets to this span.
                let _ = slot
                    .plain
                    .get_or_try_init(|| me.fetch_span(slot.index))
                    .await;
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for slot in wanted {
            let plain = slot
                .plain
                .get_or_try_init(|| self.fetch_span(slot.index))
                .await?;
            // Within span `slot.index`, which holds `plain`.
            let base = slot.index * span;
            let from = usize::try_from(offset.max(base) - base).unwrap_or(0);
            let to = usize::try_from(end.min(base + span) - base).unwrap_or(0);
            let Some(part) = plain.get(from..to) else {
                return Err(VaultError::Io(io::ErrorKind::UnexpectedEof.into()));
            };
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    /// The plaintext of span `index`, read with one range request.
    async fn fetch_span(&self, index: u64) -> Result<Vec<u8>, VaultError> {
        let (me, span) = (self.clone(), self.small_read_span());
        let from = index * span as u64;
        tokio::task::spawn_blocking(move || {
            let (mut out, mut sealed) = {
                // Room for a span's sealed bytes in either.
                let room = (span / SEGMENT_LEN + 1) * SEALED_SEGMENT_LEN;
                let mut spans = me.spans();
                (spans.take(room), spans.take(room))
            };
            let read = me.read_into(from, span, &mut out, &mut sealed);
            me.spans().give_back(sealed);
            match read {
                Ok(()) => Ok(out),
                Err(e) => {
                    me.spans().give_back(out);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| VaultError::Io(io::Error::other(e)))?
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, Spans> {
        // Nothing panics while holding it; if something did, the list is
        // still a whole value.
        self.shared
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens segments `first..=last` and puts plaintext `offset..end` of
    /// them into `out`, counting what is there in `done`.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        offset: u64,
        end: u64,
        first: u64,
        last: u64,
        out: &mut [u8],
        done: &mut usize,
        sealed: &mut Vec<u8>,
    ) -> Result<(), VaultError> {
        let layout = self.shared.dec.layout();
        let segment = |k: u64| {
            layout
                .segment(k)
                .ok_or(VaultError::Io(io::ErrorKind::UnexpectedEof.into()))
        };
        let mut k = first;
        // The first segment from the cache, if the last read left it there.
        if let Some(taken) = self.cached(first) {
            let seg = segment(first)?;
            *done += copy_part(&seg, &taken, offset, end, &mut out[*done..]);
            if k == last && seg_end(&seg) > end {
                self.keep(taken);
            }
            k += 1;
        }
        if k > last {
            return Ok(());
        }
        // The sealed bytes of the rest in one read.
        let (from, to) = (segment(k)?, segment(last)?);
        let sealed_len = usize::try_from(to.ciphertext_offset - from.ciphertext_offset)
            .ok()
            .and_then(|n| n.checked_add(to.ciphertext_len))
            .ok_or(VaultError::Io(io::Error::other("read too long")))?;
        if sealed.len() < sealed_len {
            sealed.resize(sealed_len, 0);
        }
        let sealed = &mut sealed[..sealed_len];
        self.shared
            .object
            .read_exact_at(sealed, from.ciphertext_offset)?;
        let mut at = 0;
        for index in k..=last {
            let seg = segment(index)?;
            let body = &sealed[at..at + seg.ciphertext_len];
            at += seg.ciphertext_len;
            if seg.plaintext_offset >= offset && seg_end(&seg) <= end {
                // Wholly wanted: opened in place.
                *done += self.shared.dec.open(&seg, body, &mut out[*done..])?;
                continue;
            }
            // Partly wanted (the first or last): opened aside, and kept if
            // the read stops inside it.
            let mut plain = match self.cached_buffer() {
                Some(buf) => buf,
                None => Zeroizing::new(vec![0u8; SEGMENT_LEN]),
            };
            plain.resize(SEGMENT_LEN, 0);
            let n = self.shared.dec.open(&seg, body, &mut plain)?;
            plain.truncate(n);
            let opened = Cached { index, plain };
            *done += copy_part(&seg, &opened, offset, end, &mut out[*done..]);
            if index == last && seg_end(&seg) > end {
                self.keep(opened);
            }
        }
        Ok(())
    }

    /// Takes segment `index` out of the cache, if it is there.
    fn cached(&self, index: u64) -> Option<Cached> {
        let mut cache = self.lock();
        match &*cache {
            Some(c) if c.index == index => cache.take(),
            _ => None,
        }
    }

    /// The cache's buffer to open a segment into, if it holds one.
    fn cached_buffer(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.lock().take().map(|c| c.plain)
    }

    fn keep(&self, opened: Cached) {
        *self.lock() = Some(opened);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // Nothing panics while holding it; if something did, the cache
        // is still a whole value.
        self.shared
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Plaintext offset just past segment `seg`.
fn seg_end(seg: &Segment) -> u64 {
    seg.plaintext_offset + seg.plaintext_len as u64
}

/// Copies the part of `opened` (segment `seg`) inside plaintext
/// `offset..end` to the start of `out`; returns its length.
fn copy_part(seg: &Segment, opened: &Cached, offset: u64, end: u64, out: &mut [u8]) -> usize {
    let from = offset.saturating_sub(seg.plaintext_offset);
    let to = (end - seg.plaintext_offset).min(opened.plain.len() as u64);
    // Both within one segment.
    let (Ok(from), Ok(to)) = (usize::try_from(from), usize::try_from(to)) else {
        return 0;
    };
    if from >= to {
        return 0;
    }
    out[..to - from].copy_from_slice(&opened.plain[from..to]);
    to - from
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(spans: &Spans) -> Vec<u64> {
        let mut v: Vec<u64> = spans.slots.iter().map(|s| s.index).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn spans_kept_follow_the_reader_and_never_pass_the_bound() {
        let mut spans = Spans::default();
        // A reader going forwards: the spans far behind it go first.
        for reader in 0..10 {
            spans.slot(reader, reader, None);
            spans.slot(reader + 1, reader, None);
            assert!(spans.slots.len() <= KEPT_SPANS);
            assert!(spans.has(reader) && spans.has(reader + 1));
        }
        let kept = KEPT_SPANS as u64;
        assert_eq!(indexes(&spans), (11 - kept..=10).collect::<Vec<_>>());
        // A reader that jumped back before all of them: the highest go, the
        // one it reads stays (and the loop ends although nothing is behind).
        let slot = spans.slot(2, 2, None);
        assert_eq!(slot.index, 2);
        let mut expected = vec![2];
        expected.extend(11 - kept..10);
        assert_eq!(indexes(&spans), expected);
    }

    #[test]
    fn a_dropped_span_no_reader_holds_gives_its_buffer_back() {
        let mut spans = Spans::default();
        for index in 0..KEPT_SPANS as u64 {
            let slot = spans.slot(index, index, None);
            slot.plain.set(vec![0u8; 16]).expect("unset");
        }
        // Held by a reader: dropped from the list, its buffer stays with it.
        let held = spans.slot(0, 0, None);
        spans.slot(KEPT_SPANS as u64, KEPT_SPANS as u64, None);
        assert!(!spans.has(0) && spans.spare.is_empty());
        assert_eq!(held.plain.get().map(Vec::len), Some(16));
        // Not held: its buffer is kept for the next fetch.
        spans.slot(KEPT_SPANS as u64 + 1, KEPT_SPANS as u64 + 1, None);
        assert_eq!(spans.spare.len(), 1);
        assert!(spans.take(64).capacity() >= 64);
    }
}
