//! Splitting the control connection's byte stream into command lines.
//!
//! [`LineBuffer`] owns three things the session must not get wrong: where a
//! line ends (CRLF, or a bare LF as many clients send), how long a line may
//! be ([`MAX_LINE`], so a peer cannot grow a buffer without bound), and
//! which bytes are Telnet control sequences rather than command text (RFC
//! 959 runs the control connection over Telnet; clients send `IAC IP IAC
//! DM` before `ABOR`).

/// Longest accepted line in bytes, counting its terminator (CRLF or LF)
/// and counting an escaped `IAC IAC` as the single byte it stands for.
pub const MAX_LINE: usize = 4096;

/// Telnet "interpret as command".
const IAC: u8 = 0xFF;
/// Telnet WILL; WILL, WONT, DO and DONT (0xFB..=0xFE) take an option byte.
const WILL: u8 = 0xFB;
/// Telnet DONT, the last of the option negotiation commands.
const DONT: u8 = 0xFE;

/// What [`LineBuffer::next_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum LineEvent {
    /// A complete line, without its terminator and with Telnet sequences
    /// removed. Not necessarily UTF-8: the command parser decides.
    Line(Vec<u8>),
    /// Every buffered byte is used; push more before asking again.
    NeedMore,
    /// The current line grew past [`MAX_LINE`]. Reported once, at the
    /// moment the limit is crossed; the rest of that line, up to and
    /// including its terminator, is then discarded, so the session can
    /// reply 500 and carry on with the next line.
    TooLong,
}

/// Where the Telnet filter is within a sequence; kept across pushes because
/// a sequence may be split between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Telnet {
    /// Plain command text.
    #[default]
    Data,
    /// An IAC was seen; the next byte says what it introduces.
    Iac,
    /// IAC WILL/WONT/DO/DONT was seen; the next byte is the option.
    Option,
}

/// Accumulates control-connection bytes and yields complete lines.
///
/// Use it as a pull loop: call [`next_line`](Self::next_line) until it
/// returns [`LineEvent::NeedMore`], then read from the socket and
/// [`push`](Self::push) what arrived. Followed that way, the buffer holds at
/// most one read's worth of unscanned bytes plus one partial line of at most
/// [`MAX_LINE`] bytes, whatever the peer sends.
///
/// Telnet handling is the subset FTP clients use: `IAC IAC` is a literal
/// 0xFF byte, `IAC WILL|WONT|DO|DONT option` (3 bytes) and `IAC` + any other
/// command (2 bytes) are removed. Subnegotiation (`IAC SB ... IAC SE`) is
/// not understood: no FTP client sends it, and treating `SB` as a 2-byte
/// command only lets its payload through as command text, which the parser
/// then rejects.
#[derive(Debug, Default)]
pub struct LineBuffer {
    /// Bytes pushed but not yet scanned start at `pos`.
    input: Vec<u8>,
    pos: usize,
    /// The line being assembled, Telnet-filtered, a trailing CR included.
    line: Vec<u8>,
    telnet: Telnet,
    /// Set after a `TooLong` until the end of that line.
    discarding: bool,
}

impl LineBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer. They are only scanned by
    /// [`next_line`](Self::next_line).
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop what was already scanned before growing, so a caller that
        // pushes without draining first keeps only the unscanned tail.
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// Scans buffered bytes for the next complete line.
    pub fn next_line(&mut self) -> LineEvent {
        while let Some(&raw) = self.input.get(self.pos) {
            self.pos += 1;
            let Some(byte) = self.telnet_filter(raw) else {
                continue;
            };
            if byte == b'\n' {
                if self.discarding {
                    // The over-long line was already reported as TooLong.
                    self.discarding = false;
                    continue;
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return LineEvent::Line(line);
            }
            if self.discarding {
                continue;
            }
            // A line may hold MAX_LINE - 1 bytes before its LF (a CR among
            // them); one more byte and no terminator can make it fit.
            if self.line.len() >= MAX_LINE - 1 {
                self.line = Vec::new();
                self.discarding = true;
                return LineEvent::TooLong;
            }
            self.line.push(byte);
        }
        // Free the input rather than keep its capacity: an idle session
        // should hold no buffer.
        self.input = Vec::new();
        self.pos = 0;
        LineEvent::NeedMore
    }

    /// Whether any bytes are held that did not yet form a line: unscanned
    /// input, a partial line, or a partial Telnet sequence.
    ///
    /// After the reply to `AUTH TLS` the session must not act on anything
    /// the client sent in plaintext after the AUTH line (the STARTTLS
    /// command injection of CVE-2011-0411 and CVE-2011-1575): it can check
    /// this, and must call [`clear`](Self::clear) before the handshake. At
    /// end of stream it tells a clean close from one in mid-line.
    pub fn has_buffered(&self) -> bool {
        self.pos < self.input.len()
            || !self.line.is_empty()
            || self.telnet != Telnet::Data
            || self.discarding
    }

    /// Forgets everything buffered, as if newly created.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Runs one raw byte through the Telnet filter; `None` if it belongs to
    /// a Telnet sequence.
    fn telnet_filter(&mut self, byte: u8) -> Option<u8> {
        match self.telnet {
            Telnet::Data if byte == IAC => {
                self.telnet = Telnet::Iac;
                None
            }
            Telnet::Data => Some(byte),
            Telnet::Iac => match byte {
                IAC => {
                    self.telnet = Telnet::Data;
                    Some(IAC)
                }
                WILL..=DONT => {
                    self.telnet = Telnet::Option;
                    None
                }
                _ => {
                    self.telnet = Telnet::Data;
                    None
                }
            },
            Telnet::Option => {
                self.telnet = Telnet::Data;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `input` in one piece and collects events until NeedMore.
    fn events(buf: &mut LineBuffer, input: &[u8]) -> Vec<LineEvent> {
        buf.push(input);
        drain(buf)
    }

    fn drain(buf: &mut LineBuffer) -> Vec<LineEvent> {
        let mut out = Vec::new();
        loop {
            match buf.next_line() {
                LineEvent::NeedMore => return out,
                other => out.push(other),
            }
        }
    }

    fn line(s: &[u8]) -> LineEvent {
        LineEvent::Line(s.to_vec())
    }

    #[test]
    fn empty_buffer_needs_more() {
        let mut buf = LineBuffer::new();
        assert_eq!(buf.next_line(), LineEvent::NeedMore);
        assert!(!buf.has_buffered());
    }

    #[test]
    fn crlf_lines_and_pipelining() {
        let mut buf = LineBuffer::new();
        assert_eq!(
            events(&mut buf, b"USER alice\r\nPASS x\r\nPWD"),
            vec![line(b"USER alice"), line(b"PASS x")]
        );
        assert!(buf.has_buffered());
        assert_eq!(events(&mut buf, b"\r\n"), vec![line(b"PWD")]);
        assert!(!buf.has_buffered());
    }

    #[test]
    fn crlf_split_across_pushes() {
        let mut buf = LineBuffer::new();
        assert_eq!(events(&mut buf, b"NOOP\r"), vec![]);
        assert_eq!(events(&mut buf, b"\n"), vec![line(b"NOOP")]);
        // One byte at a time.
        let mut got = Vec::new();
        for b in b"CWD a b\r\nQUIT\r\n" {
            got.extend(events(&mut buf, &[*b]));
        }
        assert_eq!(got, vec![line(b"CWD a b"), line(b"QUIT")]);
    }

    #[test]
    fn bare_lf_ends_a_line_and_lone_cr_is_kept() {
        let mut buf = LineBuffer::new();
        assert_eq!(
            events(&mut buf, b"NOOP\nSYST\r\nCWD a\rb\n\n"),
            vec![line(b"NOOP"), line(b"SYST"), line(b"CWD a\rb"), line(b"")]
        );
    }

    #[test]
    fn push_without_draining_keeps_unscanned_bytes() {
        let mut buf = LineBuffer::new();
        buf.push(b"A\r\nB\r\n");
        assert_eq!(buf.next_line(), line(b"A"));
        buf.push(b"C\r\n");
        assert_eq!(drain(&mut buf), vec![line(b"B"), line(b"C")]);
    }

    #[test]
    fn exactly_max_line_is_accepted() {
        let mut buf = LineBuffer::new();
        let mut input = vec![b'a'; MAX_LINE - 2];
        input.extend_from_slice(b"\r\n");
        assert_eq!(input.len(), MAX_LINE);
        assert_eq!(
            events(&mut buf, &input),
            vec![LineEvent::Line(vec![b'a'; MAX_LINE - 2])]
        );
        // With a bare LF the terminator is one byte shorter.
        let mut input = vec![b'b'; MAX_LINE - 1];
        input.push(b'\n');
        assert_eq!(
            events(&mut buf, &input),
            vec![LineEvent::Line(vec![b'b'; MAX_LINE - 1])]
        );
    }

    #[test]
    fn one_byte_over_is_too_long_then_resyncs() {
        let mut buf = LineBuffer::new();
        let mut input = vec![b'a'; MAX_LINE - 1];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(MAX_LINE - 1 + 2, MAX_LINE + 1);
        assert_eq!(
            events(&mut buf, &input),
            vec![LineEvent::TooLong, line(b"NOOP")]
        );
        assert!(!buf.has_buffered());
    }

    #[test]
    fn too_long_is_reported_once_and_early() {
        let mut buf = LineBuffer::new();
        // Crossing the limit is reported before any line end arrives.
        assert_eq!(
            events(&mut buf, &vec![b'x'; MAX_LINE]),
            vec![LineEvent::TooLong]
        );
        // Everything up to the line end is discarded, however much.
        for _ in 0..100 {
            assert_eq!(events(&mut buf, &vec![b'y'; 10_000]), vec![]);
        }
        assert!(buf.line.capacity() < MAX_LINE);
        assert_eq!(events(&mut buf, b"zzz\r\nQUIT\r\n"), vec![line(b"QUIT")]);
        // And the next over-long line is reported again.
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nPWD\n");
        assert_eq!(
            events(&mut buf, &input),
            vec![LineEvent::TooLong, line(b"PWD")]
        );
    }

    #[test]
    fn telnet_abort_sequence_is_stripped() {
        let mut buf = LineBuffer::new();
        assert_eq!(
            events(&mut buf, b"\xff\xf4\xff\xf2ABOR\r\n"),
            vec![line(b"ABOR")]
        );
    }

    #[test]
    fn telnet_sequences_split_across_pushes() {
        let mut buf = LineBuffer::new();
        let input = b"\xff\xf4\xff\xf2AB\xff\xfd\x01OR\r\n";
        let mut got = Vec::new();
        for b in input {
            got.extend(events(&mut buf, &[*b]));
        }
        assert_eq!(got, vec![line(b"ABOR")]);
    }

    #[test]
    fn telnet_escaped_iac_and_negotiation() {
        let mut buf = LineBuffer::new();
        assert_eq!(
            events(
                &mut buf,
                // IAC IAC, IAC WILL x, IAC WONT x, IAC DO x, IAC DONT x,
                // IAC NOP, IAC AYT; the option byte may be anything, LF too.
                b"CWD \xff\xffa\xff\xfb\x01b\xff\xfc\x0a\xff\xfd\xffc\xff\xfe\x03\xff\xf1\xff\xf6d\r\n"
            ),
            vec![line(b"CWD \xffabcd")]
        );
    }

    #[test]
    fn escaped_iac_counts_as_one_byte() {
        let mut buf = LineBuffer::new();
        let mut input = Vec::new();
        for _ in 0..MAX_LINE - 2 {
            input.extend_from_slice(b"\xff\xff");
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            events(&mut buf, &input),
            vec![LineEvent::Line(vec![0xff; MAX_LINE - 2])]
        );
    }

    #[test]
    fn clear_forgets_pipelined_plaintext() {
        let mut buf = LineBuffer::new();
        buf.push(b"AUTH TLS\r\nUSER injected\r\n");
        assert_eq!(buf.next_line(), line(b"AUTH TLS"));
        assert!(buf.has_buffered());
        buf.clear();
        assert!(!buf.has_buffered());
        assert_eq!(buf.next_line(), LineEvent::NeedMore);
        // A dangling IAC also counts as buffered.
        buf.push(b"\xff");
        assert_eq!(buf.next_line(), LineEvent::NeedMore);
        assert!(buf.has_buffered());
    }
}
