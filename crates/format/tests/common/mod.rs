//! Helpers shared by the format tests: deterministic data, keys, and the
//! ways a sealed file gets damaged.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset
#![allow(clippy::cast_possible_truncation)] // test sizes are small

use dropvault_format::{DataKey, EncryptingWriter, Error, HEADER_LEN, SEALED_SEGMENT_LEN};
use std::io::Write;

/// Plaintext byte `i` is `i mod 251`: easy to state in a spec, never
/// segment-periodic.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A fixed data key whose bytes are all `byte`.
pub fn key(byte: u8) -> DataKey {
    DataKey::from_slice(&[byte; 32]).expect("32 bytes")
}

/// Seals `plaintext` with a fixed salt, writing in chunks of `chunk` bytes.
pub fn seal_fixed(plaintext: &[u8], dek: &DataKey, salt: [u8; 32], chunk: usize) -> Vec<u8> {
    let mut w = EncryptingWriter::with_salt(Vec::new(), dek, salt).expect("writer");
    for part in plaintext.chunks(chunk.max(1)) {
        w.write_all(part).expect("write");
    }
    w.finish().expect("finish")
}

/// Byte range of sealed segment `i` of a file that has at least `i + 1`
/// full-size segments before its end.
pub fn segment_range(i: usize) -> std::ops::Range<usize> {
    let start = HEADER_LEN + i * SEALED_SEGMENT_LEN;
    start..start + SEALED_SEGMENT_LEN
}

/// The variant name of an error, for comparing with a test vector's
/// expectation.
pub fn error_name(err: &Error) -> &'static str {
    match err {
        Error::Io(_) => "Io",
        Error::BadMagic => "BadMagic",
        Error::UnsupportedVersion(_) => "UnsupportedVersion",
        Error::UnsupportedAlgorithm(_) => "UnsupportedAlgorithm",
        Error::UnknownFlags(_) => "UnknownFlags",
        Error::UnsupportedSegmentSize(_) => "UnsupportedSegmentSize",
        Error::WrongKey => "WrongKey",
        Error::HeaderAuth => "HeaderAuth",
        Error::InvalidLength(_) => "InvalidLength",
        Error::SegmentAuth { .. } => "SegmentAuth",
        Error::Truncated { .. } => "Truncated",
        Error::TrailingData { .. } => "TrailingData",
        Error::NotResumable(_) => "NotResumable",
        Error::TooLong => "TooLong",
        Error::Crypto => "Crypto",
        Error::Finished => "Finished",
        _ => "Other",
    }
}

/// Hex without a dependency.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex; panics on bad input (test data only).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A small deterministic PRNG (xorshift64*) for offsets and chunk sizes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}
