//! Must-fail cases: every kind of damage is detected and reported with its
//! own typed error. Each test names the case from the format spec.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use common::{key, pattern, seal_fixed, segment_range};
use dropvault_format::{
    open_to_vec, seal_to_vec, Error, HEADER_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN, TAG_LEN,
};

/// Three full segments: 0 and 1 not final, 2 final.
fn three_full() -> (Vec<u8>, dropvault_format::DataKey) {
    let dek = key(1);
    (
        seal_to_vec(&pattern(3 * SEGMENT_LEN), &dek).expect("seal"),
        dek,
    )
}

fn open_err(sealed: &[u8], dek: &dropvault_format::DataKey) -> Error {
    open_to_vec(sealed, dek).expect_err("must not open")
}

#[test]
fn every_flipped_header_bit_is_caught_by_the_right_check() {
    let (sealed, dek) = three_full();
    for bit in 0..HEADER_LEN * 8 {
        let mut bad = sealed.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let err = open_err(&bad, &dek);
        let byte = bit / 8;
        let ok = match byte {
            0..=7 => matches!(err, Error::BadMagic),
            8 => matches!(err, Error::UnsupportedVersion(_)),
            9 => matches!(err, Error::UnsupportedAlgorithm(_)),
            10..=11 => matches!(err, Error::UnknownFlags(_)),
            12..=15 => matches!(err, Error::UnsupportedSegmentSize(_)),
            16..=31 => matches!(err, Error::WrongKey),
            _ => matches!(err, Error::HeaderAuth),
        };
        assert!(ok, "bit {bit} (byte {byte}) gave {err:?}");
    }
}

#[test]
fn unknown_version_algorithm_and_flags_are_refused() {
    let (sealed, dek) = three_full();
    let mut v2 = sealed.clone();
    v2[8] = 2;
    assert!(matches!(open_err(&v2, &dek), Error::UnsupportedVersion(2)));
    let mut alg = sealed.clone();
    alg[9] = 7;
    assert!(matches!(
        open_err(&alg, &dek),
        Error::UnsupportedAlgorithm(7)
    ));
    let mut flags = sealed.clone();
    flags[11] = 0x80;
    assert!(matches!(open_err(&flags, &dek), Error::UnknownFlags(0x80)));
}

#[test]
fn flipped_bit_in_a_segment_body() {
    let (mut sealed, dek) = three_full();
    sealed[segment_range(1).start + 1000] ^= 0x10;
    assert!(matches!(
        open_err(&sealed, &dek),
        Error::SegmentAuth { index: 1 }
    ));
}

#[test]
fn flipped_bit_in_a_segment_tag() {
    let (mut sealed, dek) = three_full();
    sealed[segment_range(0).end - 1] ^= 0x01;
    assert!(matches!(
        open_err(&sealed, &dek),
        Error::SegmentAuth { index: 0 }
    ));
    // And in the tag of a short final segment.
    let mut short = seal_to_vec(&pattern(100), &dek).expect("seal");
    let n = short.len();
    short[n - TAG_LEN] ^= 0x80;
    assert!(matches!(
        open_err(&short, &dek),
        Error::SegmentAuth { index: 0 }
    ));
}

#[test]
fn truncation_at_a_segment_boundary() {
    let (sealed, dek) = three_full();
    let cut = &sealed[..segment_range(1).end];
    assert!(matches!(open_err(cut, &dek), Error::Truncated { index: 1 }));
    // Down to the header alone: no segment at all is an impossible length.
    let head = &sealed[..HEADER_LEN];
    assert!(matches!(open_err(head, &dek), Error::InvalidLength(_)));
}

#[test]
fn truncation_mid_segment() {
    let (sealed, dek) = three_full();
    // Leaves a valid-looking length: the short last segment fails as final.
    let cut = &sealed[..segment_range(2).start + 5000];
    assert!(matches!(
        open_err(cut, &dek),
        Error::SegmentAuth { index: 2 }
    ));
    // Leaves fewer bytes than a tag: no file has that length.
    let cut = &sealed[..segment_range(2).start + 3];
    assert!(matches!(open_err(cut, &dek), Error::InvalidLength(_)));
    // Shorter than the header.
    assert!(matches!(
        open_err(&sealed[..50], &dek),
        Error::InvalidLength(_)
    ));
}

#[test]
fn dropped_segment() {
    let (sealed, dek) = three_full();
    let mut bad = sealed[..segment_range(1).start].to_vec();
    bad.extend_from_slice(&sealed[segment_range(2)]);
    assert!(matches!(
        open_err(&bad, &dek),
        Error::SegmentAuth { index: 1 }
    ));
}

#[test]
fn duplicated_segment() {
    let (sealed, dek) = three_full();
    let mut bad = sealed[..segment_range(2).start].to_vec();
    bad.extend_from_slice(&sealed[segment_range(1)]);
    bad.extend_from_slice(&sealed[segment_range(2)]);
    assert!(matches!(
        open_err(&bad, &dek),
        Error::SegmentAuth { index: 2 }
    ));
}

#[test]
fn swapped_segments() {
    let (sealed, dek) = three_full();
    let mut bad = sealed[..HEADER_LEN].to_vec();
    bad.extend_from_slice(&sealed[segment_range(1)]);
    bad.extend_from_slice(&sealed[segment_range(0)]);
    bad.extend_from_slice(&sealed[segment_range(2)]);
    assert!(matches!(
        open_err(&bad, &dek),
        Error::SegmentAuth { index: 0 }
    ));
}

#[test]
fn extra_bytes_after_the_final_segment() {
    let dek = key(2);
    // A full final segment followed by bytes: that segment authenticates
    // only as final, so the reader knows data follows the end.
    let mut one = seal_to_vec(&pattern(SEGMENT_LEN), &dek).expect("seal");
    one.extend_from_slice(&[0u8; 40]);
    assert!(matches!(
        open_err(&one, &dek),
        Error::TrailingData { index: 0 }
    ));
    // A short final segment with bytes glued on no longer authenticates.
    let mut short = seal_to_vec(&pattern(100), &dek).expect("seal");
    short.extend_from_slice(b"junk!!!!");
    assert!(matches!(
        open_err(&short, &dek),
        Error::SegmentAuth { index: 0 }
    ));
}

#[test]
fn a_whole_segment_after_the_final_one() {
    let dek = key(2);
    let one = seal_to_vec(&pattern(SEGMENT_LEN), &dek).expect("seal");
    let mut bad = one.clone();
    bad.extend_from_slice(&one[HEADER_LEN..]);
    assert_eq!(bad.len(), HEADER_LEN + 2 * SEALED_SEGMENT_LEN);
    assert!(matches!(
        open_err(&bad, &dek),
        Error::TrailingData { index: 0 }
    ));
}

#[test]
fn header_of_file_a_on_body_of_file_b() {
    let dek = key(3);
    let a = seal_fixed(&pattern(1000), &dek, [1; 32], 1000);
    let b = seal_fixed(&pattern(1000), &dek, [2; 32], 1000);
    let mut bad = a[..HEADER_LEN].to_vec();
    bad.extend_from_slice(&b[HEADER_LEN..]);
    // The header is authentic, but its salt derives another payload key.
    assert!(matches!(
        open_err(&bad, &dek),
        Error::SegmentAuth { index: 0 }
    ));
}

#[test]
fn wrong_data_key() {
    let (sealed, _) = three_full();
    assert!(matches!(open_err(&sealed, &key(9)), Error::WrongKey));
}

#[test]
fn not_a_sealed_file() {
    let dek = key(1);
    assert!(matches!(
        open_err(b"hello world, plain text", &dek),
        Error::BadMagic
    ));
    assert!(matches!(open_err(b"", &dek), Error::InvalidLength(0)));
}

#[test]
fn a_partial_read_hands_out_good_bytes_before_the_error() {
    use std::io::Read;
    let (mut sealed, dek) = three_full();
    sealed[segment_range(2).start + 10] ^= 1;
    let mut r = dropvault_format::DecryptingReader::new(std::io::Cursor::new(&sealed), &dek)
        .expect("header ok");
    let mut buf = vec![0u8; 3 * SEGMENT_LEN];
    let n = r.read(&mut buf).expect("first two segments are good");
    assert_eq!(n, 2 * SEGMENT_LEN);
    assert_eq!(&buf[..n], &pattern(3 * SEGMENT_LEN)[..n]);
    let err = r.read(&mut buf).expect_err("third is bad");
    assert!(matches!(
        Error::from_io(&err),
        Some(Error::SegmentAuth { index: 2 })
    ));
}
