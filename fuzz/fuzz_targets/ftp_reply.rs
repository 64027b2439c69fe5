//! Rendering what carries peer- or storage-chosen text back to the client:
//! replies, single and multi-line, whole or sent in pieces; `ls -l` and
//! RFC 3659 listing lines of any name; quoted paths (257); MDTM times. None may
//! panic, and no text can end a reply or a listing line early or forge
//! another one.
//!
//! Input: 2 bytes of reply code, 8 of size, 8 of time, 1 of line count,
//! then texts separated by 0x00.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dropvault_ftp::proto::{
    list_line, mdtm, mlsx_cdir, mlsx_facts, parse_mdtm, quote_path, Fact, Reply,
};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// A time anywhere from far before to far after the epoch.
fn time(raw: u64) -> SystemTime {
    let offset = Duration::from_nanos(raw >> 1);
    let t = if raw & 1 == 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// The wire form is CRLF-terminated lines with no other CR or LF, the code
/// on the first and the last line, and middle lines that start with a space.
fn check_wire(wire: &str, code: u16, lines: usize) {
    assert!(wire.ends_with("\r\n"), "{wire:?}");
    let got: Vec<&str> = wire[..wire.len() - 2].split("\r\n").collect();
    assert_eq!(got.len(), lines.max(1), "{wire:?}");
    assert!(got.iter().all(|l| !l.contains(['\r', '\n'])), "{wire:?}");
    let last = got.last().expect("a line");
    assert!(last.starts_with(&format!("{code} ")), "{wire:?}");
    if let [first, middle @ .., _] = got.as_slice() {
        assert!(first.starts_with(&format!("{code}-")), "{wire:?}");
        assert!(middle.iter().all(|l| l.starts_with(' ')), "{wire:?}");
    }
}

fn one_line(s: &str) -> bool {
    !s.contains(['\r', '\n'])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 19 {
        return;
    }
    let code = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let size = u64_at(data, 2);
    let when = time(u64_at(data, 10));
    let texts: Vec<String> = data[19..]
        .split(|&b| b == 0)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let count = usize::from(data[18]).min(texts.len());

    // Whole replies.
    let first = texts.first().cloned().unwrap_or_default();
    let wire = String::from_utf8(Reply::new(code, first.clone()).to_bytes()).expect("UTF-8");
    check_wire(&wire, code, 1);
    let multi = Reply::multi(code, texts[..count].iter().cloned());
    let wire = String::from_utf8(multi.to_bytes()).expect("UTF-8");
    check_wire(&wire, code, count);
    // The same reply sent in pieces, as a STAT listing is.
    if let [head, middle @ .., tail] = &texts[..count] {
        let mut pieces = Reply::multi_start(code, head);
        for line in middle {
            pieces.push_str(&Reply::multi_middle(line));
        }
        pieces.push_str(
            &String::from_utf8(Reply::new(code, tail.clone()).to_bytes()).expect("UTF-8"),
        );
        assert_eq!(pieces, wire);
    }

    // Listing lines of any name and owner.
    let owner = texts.get(1).map_or("", String::as_str);
    for fact in [
        Fact::file(first.clone(), size, when),
        Fact::dir(first.clone(), when),
    ] {
        let line = list_line(&fact, owner, time(size));
        assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        assert!(one_line(&mlsx_facts(&fact)));
        assert!(one_line(&mlsx_cdir(&fact)));
    }
    // A quoted path in a 257 reply: quotes doubled, one line.
    let wire = String::from_utf8(Reply::path(&first, "created.").to_bytes()).expect("UTF-8");
    check_wire(&wire, 257, 1);
    assert!(quote_path(&first).matches('"').count() % 2 == 0);

    // MDTM: always 14 digits, and what parses prints back the same.
    let stamp = mdtm(when);
    assert!(
        stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()),
        "{stamp}"
    );
    if let Some(t) = parse_mdtm(first.as_bytes()) {
        let printed = mdtm(t);
        assert_eq!(parse_mdtm(printed.as_bytes()).map(mdtm), Some(printed));
    }
});
