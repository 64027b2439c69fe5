//! Resuming an unfinished file: allowed only at the end of its sealed
//! prefix, never for a final or cut file (FORMAT.md, "Resuming").

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use common::{key, pattern};
use dropvault_format::{
    open_to_vec, AsyncEncryptingWriter, EncryptingWriter, Error, HEADER_LEN, SEALED_SEGMENT_LEN,
    SEGMENT_LEN,
};

/// What an interrupted upload leaves: the header and every full segment that
/// was sealed, but not the staged tail (it was never sealed or written).
fn interrupted(plain: &[u8], dek: &dropvault_format::DataKey) -> Vec<u8> {
    let mut w = EncryptingWriter::new(Vec::new(), dek).expect("writer");
    w.write_all(plain).expect("write");
    w.flush().expect("flush");
    w.get_ref().clone()
}

#[test]
fn resume_continues_after_the_sealed_prefix() {
    let dek = key(1);
    let plain = pattern(5 * SEGMENT_LEN + 1234);
    let partial = interrupted(&plain[..2 * SEGMENT_LEN + 100], &dek);
    assert_eq!(partial.len(), HEADER_LEN + 2 * SEALED_SEGMENT_LEN);

    let mut w = EncryptingWriter::resume(Cursor::new(partial), &dek).expect("resumable");
    assert_eq!(w.plaintext_len(), 2 * SEGMENT_LEN as u64);
    w.write_all(&plain[2 * SEGMENT_LEN..]).expect("write");
    let done = w.finish().expect("finish").into_inner();
    assert!(open_to_vec(&done, &dek).expect("opens") == plain);
}

#[test]
fn resume_with_only_a_header() {
    let dek = key(1);
    let partial = interrupted(b"", &dek);
    assert_eq!(partial.len(), HEADER_LEN);
    let mut w = EncryptingWriter::resume(Cursor::new(partial), &dek).expect("resumable");
    w.write_all(b"hello").expect("write");
    let done = w.finish().expect("finish").into_inner();
    assert_eq!(open_to_vec(&done, &dek).expect("opens"), b"hello");
}

#[test]
fn a_final_file_is_not_resumed() {
    let dek = key(2);
    // Full final segment: the length sits on a boundary, but the last
    // segment is final, so continuing would need a re-seal.
    let full = dropvault_format::seal_to_vec(&pattern(SEGMENT_LEN), &dek).expect("seal");
    let err = EncryptingWriter::resume(Cursor::new(full), &dek).expect_err("final");
    assert!(matches!(err, Error::NotResumable(_)), "{err:?}");
    // Short final segment: the length ends inside a segment.
    let short = dropvault_format::seal_to_vec(&pattern(10), &dek).expect("seal");
    let err = EncryptingWriter::resume(Cursor::new(short), &dek).expect_err("final");
    assert!(matches!(err, Error::NotResumable(_)), "{err:?}");
}

#[test]
fn a_file_cut_inside_a_segment_is_not_resumed() {
    let dek = key(3);
    let mut partial = interrupted(&pattern(3 * SEGMENT_LEN + 1), &dek);
    partial.truncate(partial.len() - 7);
    let err = EncryptingWriter::resume(Cursor::new(partial), &dek).expect_err("cut");
    assert!(matches!(err, Error::NotResumable(_)), "{err:?}");
}

#[test]
fn resume_checks_key_and_last_segment() {
    let dek = key(4);
    let partial = interrupted(&pattern(2 * SEGMENT_LEN + 1), &dek);
    let err = EncryptingWriter::resume(Cursor::new(partial.clone()), &key(5)).expect_err("key");
    assert!(matches!(err, Error::WrongKey));
    let mut bad = partial;
    let n = bad.len();
    bad[n - 1] ^= 1;
    let err = EncryptingWriter::resume(Cursor::new(bad), &dek).expect_err("tampered");
    assert!(matches!(err, Error::SegmentAuth { index: 1 }), "{err:?}");
}

#[test]
fn resume_on_disk_then_random_read() {
    let dek = key(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("staging");
    let plain = pattern(4 * SEGMENT_LEN + 77);
    std::fs::write(&path, interrupted(&plain[..3 * SEGMENT_LEN + 5], &dek)).expect("write");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut w = EncryptingWriter::resume(file, &dek).expect("resumable");
    let from = w.plaintext_len() as usize;
    w.write_all(&plain[from..]).expect("write");
    w.finish().expect("finish");
    let file = std::fs::File::open(&path).expect("open");
    let mut r = dropvault_format::DecryptingReader::new(file, &dek).expect("reader");
    r.seek(SeekFrom::Start(3 * SEGMENT_LEN as u64 - 3))
        .expect("seek");
    let mut got = [0u8; 10];
    r.read_exact(&mut got).expect("read");
    assert_eq!(got, plain[3 * SEGMENT_LEN - 3..3 * SEGMENT_LEN + 7]);
}

#[tokio::test]
async fn async_resume() {
    use tokio::io::AsyncWriteExt;
    let dek = key(7);
    let plain = pattern(2 * SEGMENT_LEN + 9);
    let partial = interrupted(&plain[..SEGMENT_LEN + 1], &dek);
    let mut w = AsyncEncryptingWriter::resume(Cursor::new(partial), &dek)
        .await
        .expect("resumable");
    assert_eq!(w.plaintext_len(), SEGMENT_LEN as u64);
    w.write_all(&plain[SEGMENT_LEN..]).await.expect("write");
    let done = w.finish().await.expect("finish").into_inner();
    assert!(open_to_vec(&done, &dek).expect("opens") == plain);
}

#[test]
fn a_file_cut_inside_a_segment_reads_its_whole_segments() {
    use dropvault_format::{whole_segments, Decryptor};
    let dek = key(3);
    let plain = pattern(3 * SEGMENT_LEN + 77);
    let mut cut = interrupted(&plain, &dek);
    assert_eq!(whole_segments(cut.len() as u64), 3);
    // A write cut short: part of a fourth segment.
    cut.extend_from_slice(&[0x5a; 4000]);
    assert_eq!(whole_segments(cut.len() as u64), 3);
    assert_eq!(whole_segments(10), 0);
    let dec = Decryptor::unfinished(&dek, &cut[..HEADER_LEN], 3).expect("header");
    let mut out = vec![0u8; SEGMENT_LEN];
    for i in 0..3u64 {
        let seg = dec.layout().segment(i).expect("segment");
        assert!(!seg.last);
        let at = seg.ciphertext_offset as usize;
        let n = dec
            .open(&seg, &cut[at..at + seg.ciphertext_len], &mut out)
            .expect("authentic");
        assert_eq!(
            &out[..n],
            &plain[i as usize * SEGMENT_LEN..(i as usize + 1) * SEGMENT_LEN]
        );
    }
    // Another key fails at the header.
    assert!(Decryptor::unfinished(&key(4), &cut[..HEADER_LEN], 3).is_err());
}
