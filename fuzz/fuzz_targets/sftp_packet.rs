//! What an SFTP client sends: the frame buffer never panics, frames the
//! same packets however the bytes are split into reads, and stops at a
//! length over the limit; every packet parses or is refused without a
//! panic, and what parses borrows within its packet.
//!
//! The first input byte sets the size of the reads the rest arrives in.
#![no_main]

use dropvault_sftp::proto::{
    parse_packet, reply, FrameBuffer, Packet, Request, MAX_PACKET_LEN,
};
use libfuzzer_sys::fuzz_target;

/// Pushes `input` in reads of `read` bytes, taking packets after each as
/// the session does; the packets, and whether framing stopped on an error.
fn frame(input: &[u8], read: usize) -> (Vec<Vec<u8>>, bool) {
    let mut buf = FrameBuffer::new();
    let mut packets = Vec::new();
    for chunk in input.chunks(read) {
        buf.push(chunk);
        loop {
            match buf.next_packet() {
                Ok(Some(p)) => packets.push(p.to_vec()),
                Ok(None) => break,
                Err(_) => return (packets, true),
            }
        }
    }
    (packets, false)
}

/// A reply's length field matches its size.
fn check_reply(bytes: &[u8]) {
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("length field"));
    assert_eq!(len as usize, bytes.len() - 4);
}

fuzz_target!(|data: &[u8]| {
    let Some((&read, input)) = data.split_first() else {
        return;
    };
    let framed = frame(input, usize::from(read).max(1));
    assert_eq!(
        framed,
        frame(input, input.len().max(1)),
        "framing depends on reads"
    );
    for packet in framed.0 {
        assert!(!packet.is_empty() && packet.len() <= MAX_PACKET_LEN as usize);
        match parse_packet(&packet) {
            Ok(Packet::Init { .. }) => check_reply(&reply::version()),
            Ok(Packet::Request { id, request }) => {
                let within = |s: &[u8]| assert!(s.len() < packet.len());
                match &request {
                    Request::Write { handle, data, .. } => {
                        within(handle);
                        within(data);
                    }
                    Request::Open { path, .. } | Request::Stat { path } => within(path),
                    Request::Rename { from, to } | Request::PosixRename { from, to } => {
                        within(from);
                        within(to);
                    }
                    _ => {}
                }
                check_reply(&reply::status(id, 4, request.name()));
            }
            Err(_) => {}
        }
    }
});
