//! What an FTP client sends on the control connection: the line buffer
//! never panics, frames the same lines however the bytes are split into
//! reads, keeps every line under its limit; every line parses or is
//! refused without a panic; a command's log form hides the password and
//! cannot forge a log line; every refusal renders as one well-formed reply.
//!
//! The first input byte sets the size of the reads the rest arrives in.
#![no_main]

use dropvault_ftp::proto::{parse_command, Command, LineBuffer, LineEvent, Reply, MAX_LINE};
use libfuzzer_sys::fuzz_target;

/// Pushes `input` in reads of `read` bytes, draining the buffer after each
/// as the session does; the lines and over-long-line reports, in order.
fn frame(input: &[u8], read: usize) -> Vec<LineEvent> {
    let mut buf = LineBuffer::new();
    let mut events = Vec::new();
    for chunk in input.chunks(read) {
        buf.push(chunk);
        loop {
            match buf.next_line() {
                LineEvent::NeedMore => break,
                other => events.push(other),
            }
        }
    }
    events
}

/// A reply as sent: CRLF-terminated lines, no other CR or LF, the code on
/// the first and last line, middle lines starting with a space.
fn check_wire(reply: &Reply) {
    let wire = String::from_utf8(reply.to_bytes()).expect("replies are UTF-8");
    let code = reply.code().to_string();
    assert!(wire.ends_with("\r\n"), "{wire:?}");
    let lines: Vec<&str> = wire[..wire.len() - 2].split("\r\n").collect();
    for line in &lines {
        assert!(!line.contains(['\r', '\n']), "{wire:?}");
    }
    let last = lines.last().expect("a line");
    assert!(last.starts_with(&format!("{code} ")), "{wire:?}");
    if let [first, middle @ .., _] = lines.as_slice() {
        assert!(first.starts_with(&format!("{code}-")), "{wire:?}");
        assert!(middle.iter().all(|l| l.starts_with(' ')), "{wire:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&read, input)) = data.split_first() else {
        return;
    };
    let events = frame(input, usize::from(read).max(1));
    assert_eq!(
        events,
        frame(input, input.len().max(1)),
        "framing depends on reads"
    );
    for event in events {
        let LineEvent::Line(line) = event else {
            continue;
        };
        assert!(line.len() < MAX_LINE);
        assert!(!line.contains(&b'\n'));
        match parse_command(&line) {
            Ok(cmd) => {
                let logged = cmd.log_safe();
                assert!(!logged.contains(|c: char| c.is_control()), "{logged:?}");
                assert!(logged.starts_with(cmd.verb()), "{logged:?}");
                if let Command::Pass(_) = &cmd {
                    assert_eq!(logged, "PASS ****");
                    assert!(format!("{cmd:?}").contains("[redacted]"));
                }
            }
            Err(e) => {
                let reply = e.to_reply();
                assert_eq!(reply.code(), e.reply_code());
                check_wire(&reply);
            }
        }
    }
});
