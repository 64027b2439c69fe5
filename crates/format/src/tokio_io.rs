//! Tokio adapters: [`AsyncEncryptingWriter`] (an `AsyncWrite` whose
//! `shutdown` seals the final segment) and [`AsyncDecryptingReader`] (an
//! `AsyncRead + AsyncSeek` with the same random access as the blocking one).
//! Both drive the same sans-io [`Encryptor`] and [`Decryptor`].

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf,
};

use crate::blocking::seek_target;
use crate::error::{Error, Result};
use crate::header::{HEADER_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN, TAG_LEN};
use crate::keys::DataKey;
use crate::stream::{resume_point, Decryptor, Encryptor, Segment};

/// Seals everything written into `inner`. `shutdown()` (or
/// [`AsyncEncryptingWriter::finish`]) seals and writes the final segment;
/// without it the file reads back as truncated.
#[derive(Debug)]
pub struct AsyncEncryptingWriter<W> {
    inner: W,
    enc: Encryptor,
}

impl<W: AsyncWrite + Unpin> AsyncEncryptingWriter<W> {
    /// Starts a new file under `dek` with a fresh random salt.
    pub fn new(inner: W, dek: &DataKey) -> Result<Self> {
        Ok(Self {
            inner,
            enc: Encryptor::new(dek)?,
        })
    }

    /// Plaintext bytes accepted so far.
    pub fn plaintext_len(&self) -> u64 {
        self.enc.plaintext_len()
    }

    /// Seals the final segment, writes everything, shuts `inner` down and
    /// returns it.
    pub async fn finish(mut self) -> Result<W> {
        self.shutdown().await.map_err(Error::from_io_owned)?;
        Ok(self.inner)
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.enc.pending().is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, self.enc.pending()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.enc.consume(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncRead + AsyncWrite + AsyncSeek + Unpin> AsyncEncryptingWriter<W> {
    /// Continues an unfinished file; see
    /// [`crate::EncryptingWriter::resume`].
    pub async fn resume(mut inner: W, dek: &DataKey) -> Result<Self> {
        let len = inner.seek(SeekFrom::End(0)).await?;
        let (_, last) = resume_point(len)?;
        let mut header = [0u8; HEADER_LEN];
        inner.seek(SeekFrom::Start(0)).await?;
        inner.read_exact(&mut header).await?;
        let mut last_sealed = Vec::new();
        if let Some(offset) = last {
            last_sealed.resize(SEALED_SEGMENT_LEN, 0);
            inner.seek(SeekFrom::Start(offset)).await?;
            inner.read_exact(&mut last_sealed).await?;
        }
        let enc = Encryptor::resume(dek, &header, len, &last_sealed)?;
        inner.seek(SeekFrom::End(0)).await?;
        Ok(Self { inner, enc })
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncEncryptingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(this.poll_drain(cx))?;
            let n = this.enc.push(buf)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.enc.is_finished() {
            ready!(this.poll_drain(cx))?;
            this.enc.finish()?;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Where the reader's own I/O on `inner` stands.
#[derive(Debug, Clone, Copy)]
enum IoState {
    Idle,
    Seeking(Segment),
    Filling(Segment, usize),
}

/// Reads the plaintext of a sealed file, with random access.
#[derive(Debug)]
pub struct AsyncDecryptingReader<R> {
    inner: R,
    dec: Decryptor,
    pos: u64,
    inner_pos: u64,
    state: IoState,
    sealed: Box<[u8]>,
    plain: Box<[u8]>,
    cached: Option<(u64, usize)>,
}

impl<R: AsyncRead + AsyncSeek + Unpin> AsyncDecryptingReader<R> {
    /// Opens a sealed file: reads its length and header, checks the key, the
    /// header tag and the length. Segments are checked as they are read.
    pub async fn new(mut inner: R, dek: &DataKey) -> Result<Self> {
        let len = inner.seek(SeekFrom::End(0)).await?;
        inner.seek(SeekFrom::Start(0)).await?;
        let mut header = [0u8; HEADER_LEN];
        let avail = usize::try_from(len.min(HEADER_LEN as u64)).unwrap_or(HEADER_LEN);
        inner.read_exact(&mut header[..avail]).await?;
        let dec = Decryptor::new(dek, &header[..avail], len)?;
        if dec.layout().plaintext_len() == 0 {
            let mut tag = [0u8; TAG_LEN];
            inner.read_exact(&mut tag).await?;
            dec.check_if_empty(&tag)?;
        }
        Ok(Self {
            inner,
            dec,
            pos: 0,
            inner_pos: u64::MAX,
            state: IoState::Idle,
            sealed: vec![0u8; SEALED_SEGMENT_LEN].into_boxed_slice(),
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

    /// Drives `inner` until segment `seg`'s sealed bytes are in `sealed`.
    fn poll_fetch(&mut self, cx: &mut Context<'_>, want: Segment) -> Poll<io::Result<Segment>> {
        loop {
            match self.state {
                IoState::Idle if self.inner_pos == want.ciphertext_offset => {
                    self.state = IoState::Filling(want, 0);
                }
                IoState::Idle => {
                    self.inner_pos = u64::MAX;
                    Pin::new(&mut self.inner)
                        .start_seek(SeekFrom::Start(want.ciphertext_offset))?;
                    self.state = IoState::Seeking(want);
                }
                IoState::Seeking(seg) => {
                    let at = ready!(Pin::new(&mut self.inner).poll_complete(cx));
                    self.state = IoState::Idle;
                    self.inner_pos = at?;
                    if self.inner_pos != seg.ciphertext_offset {
                        return Poll::Ready(Err(io::Error::other("seek landed elsewhere")));
                    }
                    self.state = IoState::Filling(seg, 0);
                }
                IoState::Filling(seg, filled) => {
                    let mut rb = ReadBuf::new(&mut self.sealed[filled..seg.ciphertext_len]);
                    let res = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb));
                    let n = rb.filled().len();
                    if let Err(e) = res {
                        self.state = IoState::Idle;
                        self.inner_pos = u64::MAX;
                        return Poll::Ready(Err(e));
                    }
                    if n == 0 {
                        self.state = IoState::Idle;
                        self.inner_pos = u64::MAX;
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.inner_pos += n as u64;
                    if filled + n == seg.ciphertext_len {
                        self.state = IoState::Idle;
                        return Poll::Ready(Ok(seg));
                    }
                    self.state = IoState::Filling(seg, filled + n);
                }
            }
        }
    }
}

impl<R: AsyncRead + AsyncSeek + Unpin> AsyncRead for AsyncDecryptingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        // Fill as much of `buf` as the inner reader can supply without
        // waiting: large reads then cost one call for many segments.
        loop {
            let Some(seg) = this.dec.layout().segment_at(this.pos) else {
                return Poll::Ready(Ok(()));
            };
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let progressed = buf.filled().len() > start;
            let skip = usize::try_from(this.pos - seg.plaintext_offset)
                .expect("offset inside a segment is below SEGMENT_LEN");
            if let Some((index, len)) = this.cached {
                if index == seg.index {
                    let n = (len - skip).min(buf.remaining());
                    buf.put_slice(&this.plain[skip..skip + n]);
                    this.pos += n as u64;
                    continue;
                }
            }
            // A fetch already under way is finished first, whatever segment
            // it was for (a seek may have moved `pos` meanwhile).
            let want = match this.state {
                IoState::Seeking(s) | IoState::Filling(s, _) => s,
                IoState::Idle => seg,
            };
            let got = match this.poll_fetch(cx, want) {
                Poll::Ready(Ok(got)) => got,
                // Hand out what is already decrypted; the error (or the
                // wait) comes with the next call.
                Poll::Ready(Err(e)) if !progressed => return Poll::Ready(Err(e)),
                Poll::Pending if !progressed => return Poll::Pending,
                Poll::Ready(Err(_)) | Poll::Pending => return Poll::Ready(Ok(())),
            };
            let sealed = &this.sealed[..got.ciphertext_len];
            if got == seg && skip == 0 && buf.remaining() >= seg.plaintext_len {
                // Whole segment wanted: decrypt straight into the caller's buffer.
                let room = buf.initialize_unfilled_to(seg.plaintext_len);
                let n = match this.dec.open(&got, sealed, room) {
                    Ok(n) => n,
                    // Good bytes first; the error again on the next call.
                    Err(_) if progressed => return Poll::Ready(Ok(())),
                    Err(e) => return Poll::Ready(Err(e.into())),
                };
                buf.advance(n);
                this.pos += n as u64;
                continue;
            }
            this.cached = None;
            let len = match this.dec.open(&got, sealed, &mut this.plain) {
                Ok(len) => len,
                Err(_) if progressed => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            };
            this.cached = Some((got.index, len));
        }
    }
}

impl<R: AsyncRead + AsyncSeek + Unpin> AsyncSeek for AsyncDecryptingReader<R> {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        this.pos = seek_target(this.pos, this.plaintext_len(), to)?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}
