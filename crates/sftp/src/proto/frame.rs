//! Packet framing: `uint32 length` then `length` bytes (type, then the
//! rest). Bytes arrive in reads of any size; [`FrameBuffer`] holds them
//! until a packet is whole, and never holds more than one packet of the
//! largest allowed length plus its length field.

use super::MAX_PACKET_LEN;

/// What the framing found at the front of the buffered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A packet announced a length above [`MAX_PACKET_LEN`]; the session
    /// ends (there is no way to skip it without reading it).
    TooLong(u32),
    /// A packet of length 0: it has no type.
    Empty,
}

/// Where the first packet in `buf` is: `Ok(None)` if more bytes are
/// needed, `Ok(Some(n))` if the first `n` bytes (length field included)
/// are a whole packet.
pub fn packet_at_front(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_PACKET_LEN {
        return Err(FrameError::TooLong(len));
    }
    let total = 4 + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Bytes read from the client, not yet taken as packets. Empty until the
/// first read; its capacity follows what the client sends and shrinks back
/// when the session goes quiet ([`FrameBuffer::release`]).
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// Bytes before this were handed out as packets.
    start: usize,
}

/// Read size when nothing says more is needed (most requests are far
/// smaller; a WRITE's length field asks for the rest of it).
const READ_HINT: usize = 4 * 1024;
/// Capacity kept over a quiet period: the read size, so sessions of small
/// requests do not reallocate, and one large packet is not kept.
const IDLE_CAPACITY: usize = READ_HINT;

impl FrameBuffer {
    /// An empty buffer (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet's payload (type byte first), if one is
    /// buffered; the bytes it used are dropped at the next read.
    pub fn next_packet(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        match packet_at_front(pending)? {
            None => Ok(None),
            Some(n) => {
                let from = self.start + 4;
                self.start += n;
                Ok(self.buf.get(from..self.start))
            }
        }
    }

    /// Bytes buffered and not yet handed out.
    pub fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// The vector to read into next: what was handed out is dropped, and
    /// there is room for the rest of the packet being received (or a
    /// modest read if its length is not known yet). Reads append to it.
    pub fn read_target(&mut self) -> &mut Vec<u8> {
        self.compact();
        let want = match self.buf.get(..4) {
            Some(h) => {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]).min(MAX_PACKET_LEN);
                (4 + len as usize).saturating_sub(self.buf.len())
            }
            None => 0,
        }
        .max(READ_HINT);
        let spare = self.buf.capacity() - self.buf.len();
        if spare < want {
            self.buf.reserve_exact(want);
        }
        &mut self.buf
    }

    /// Gives memory back while nothing is buffered: a quiet session holds
    /// a few KiB, not its largest packet.
    pub fn release(&mut self) {
        self.compact();
        if self.buf.is_empty() && self.buf.capacity() > IDLE_CAPACITY {
            self.buf = Vec::new();
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn packets_come_out_whole_however_the_bytes_are_split() {
        let mut wire = packet(b"\x01\x00\x00\x00\x03");
        wire.extend(packet(b"\x11abcdef"));
        wire.extend(packet(b"\x04"));
        for read in 1..wire.len() {
            let mut fb = FrameBuffer::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(read) {
                fb.push(chunk);
                while let Some(p) = fb.next_packet().expect("valid") {
                    got.push(p.to_vec());
                }
            }
            assert_eq!(
                got,
                vec![
                    b"\x01\x00\x00\x00\x03".to_vec(),
                    b"\x11abcdef".to_vec(),
                    b"\x04".to_vec()
                ]
            );
            assert_eq!(fb.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_empty_packets_are_errors() {
        let mut fb = FrameBuffer::new();
        fb.push(&(MAX_PACKET_LEN + 1).to_be_bytes());
        assert_eq!(
            fb.next_packet(),
            Err(FrameError::TooLong(MAX_PACKET_LEN + 1))
        );
        let mut fb = FrameBuffer::new();
        fb.push(&[0, 0, 0, 0, 1]);
        assert_eq!(fb.next_packet(), Err(FrameError::Empty));
    }

    #[test]
    fn the_read_target_has_room_for_the_packet_in_progress() {
        let mut fb = FrameBuffer::new();
        fb.push(&200_000u32.to_be_bytes());
        let v = fb.read_target();
        assert!(v.capacity() - v.len() >= 200_000);
        fb.release();
        // Still holding a partial packet: nothing is released.
        assert_eq!(fb.pending(), 4);
    }

    #[test]
    fn a_quiet_buffer_lets_its_memory_go() {
        let mut fb = FrameBuffer::new();
        let mut big = packet(&[3u8; 100_000]);
        big.extend(packet(b"\x04"));
        fb.push(&big);
        assert!(fb.next_packet().expect("ok").is_some());
        assert!(fb.next_packet().expect("ok").is_some());
        fb.release();
        let cap = fb.read_target().capacity();
        assert!((READ_HINT..100_000).contains(&cap), "{cap}");
    }
}
