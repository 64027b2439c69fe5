//! Round trips through the blocking and tokio adapters at the sizes where
//! segment arithmetic can go wrong, plus random-access reads.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use common::{key, pattern, seal_fixed, Rng};
use dropvault_format::{
    ciphertext_len, open_to_vec, plaintext_len, seal_to_vec, AsyncDecryptingReader,
    AsyncEncryptingWriter, DecryptingReader, EncryptingWriter, SEGMENT_LEN,
};

const SIZES: [usize; 7] = [
    0,
    1,
    SEGMENT_LEN - 1,
    SEGMENT_LEN,
    SEGMENT_LEN + 1,
    3 * SEGMENT_LEN,
    10 * 1024 * 1024 + 7,
];

#[test]
fn round_trip_blocking_at_boundary_sizes_and_chunkings() {
    let dek = key(1);
    for &size in &SIZES {
        let plain = pattern(size);
        for chunk in [7, 4096, SEGMENT_LEN, SEGMENT_LEN + 1, 1 << 20, usize::MAX] {
            let sealed = seal_fixed(&plain, &dek, [3; 32], chunk.min(size.max(1)));
            assert_eq!(
                sealed.len() as u64,
                ciphertext_len(size as u64).expect("fits")
            );
            assert_eq!(
                plaintext_len(sealed.len() as u64).expect("valid"),
                size as u64
            );
            let back = open_to_vec(&sealed, &dek).expect("opens");
            assert!(
                back == plain,
                "size {size} chunk {chunk}: plaintext differs"
            );
        }
    }
}

#[test]
fn fresh_files_get_fresh_salts() {
    let dek = key(1);
    let a = seal_to_vec(b"same", &dek).expect("seal");
    let b = seal_to_vec(b"same", &dek).expect("seal");
    assert_ne!(a, b, "two seals of the same plaintext must differ");
    assert_eq!(open_to_vec(&a, &dek).expect("open"), b"same");
}

#[test]
fn random_seeks_read_the_right_bytes() {
    let dek = key(2);
    let mut rng = Rng(0x1234_5678);
    for &size in &SIZES {
        let plain = pattern(size);
        let sealed = seal_to_vec(&plain, &dek).expect("seal");
        let mut reader = DecryptingReader::new(Cursor::new(&sealed), &dek).expect("open");
        assert_eq!(reader.plaintext_len(), size as u64);
        for _ in 0..40 {
            let offset = rng.below(size as u64 + 2) as usize;
            let want = rng.below(3 * SEGMENT_LEN as u64) as usize;
            reader.seek(SeekFrom::Start(offset as u64)).expect("seek");
            let mut got = vec![0u8; want];
            let n = read_up_to(&mut reader, &mut got);
            let end = size.min(offset.saturating_add(want));
            let expect = plain.get(offset..end).unwrap_or(&[]);
            assert_eq!(&got[..n], expect, "size {size} offset {offset} len {want}");
        }
        // Relative seeks, including from the end.
        if size > 10 {
            reader.seek(SeekFrom::End(-5)).expect("seek");
            let mut tail = Vec::new();
            reader.read_to_end(&mut tail).expect("read");
            assert_eq!(tail, plain[size - 5..]);
            reader.seek(SeekFrom::Current(-3)).expect("seek");
            let mut last3 = [0u8; 3];
            reader.read_exact(&mut last3).expect("read");
            assert_eq!(last3, plain[size - 3..]);
        }
        assert!(reader.seek(SeekFrom::End(-(size as i64) - 1)).is_err());
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]).expect("read") {
            0 => break,
            n => done += n,
        }
    }
    done
}

#[test]
fn writer_adds_to_files_on_disk() {
    let dek = key(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let plain = pattern(SEGMENT_LEN * 2 + 100);
    let mut w =
        EncryptingWriter::new(std::fs::File::create(&path).expect("create"), &dek).expect("writer");
    w.write_all(&plain).expect("write");
    assert_eq!(w.plaintext_len(), plain.len() as u64);
    w.finish().expect("finish").sync_all().expect("fsync");
    let mut r =
        DecryptingReader::new(std::fs::File::open(&path).expect("open"), &dek).expect("reader");
    let mut back = Vec::new();
    r.read_to_end(&mut back).expect("read");
    assert!(back == plain);
}

#[tokio::test]
async fn round_trip_tokio_with_seeks() {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let dek = key(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(99);
    for &size in &SIZES {
        let plain = pattern(size);
        let path = dir.path().join(format!("f{size}"));
        let file = tokio::fs::File::create(&path).await.expect("create");
        let mut w = AsyncEncryptingWriter::new(file, &dek).expect("writer");
        for part in plain.chunks(50_000) {
            w.write_all(part).await.expect("write");
        }
        w.finish().await.expect("finish");

        // The blocking reader agrees with the async writer...
        let sealed = std::fs::read(&path).expect("read");
        assert!(open_to_vec(&sealed, &dek).expect("opens") == plain);

        // ...and the async reader reads it whole and at random offsets.
        let file = tokio::fs::File::open(&path).await.expect("open");
        let mut r = AsyncDecryptingReader::new(file, &dek)
            .await
            .expect("reader");
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.expect("read");
        assert!(back == plain, "size {size}");
        for _ in 0..10 {
            let offset = rng.below(size as u64 + 1);
            r.seek(SeekFrom::Start(offset)).await.expect("seek");
            let mut got = vec![0u8; 1000];
            let mut n = 0;
            while n < got.len() {
                let k = r.read(&mut got[n..]).await.expect("read");
                if k == 0 {
                    break;
                }
                n += k;
            }
            let end = size.min(offset as usize + 1000);
            assert_eq!(&got[..n], &plain[offset as usize..end]);
        }
    }
}

#[test]
fn blocking_reader_hands_out_good_segments_before_the_error() {
    let dek = key(6);
    // More segments than one batched read fetches, and a short last one.
    let plain = pattern(40 * SEGMENT_LEN + 123);
    let mut sealed = seal_to_vec(&plain, &dek).expect("seal");
    let bad = 21u64;
    let at = dropvault_format::HEADER_LEN + (bad as usize) * (SEGMENT_LEN + 16) + 5;
    sealed[at] ^= 1;
    let mut r = DecryptingReader::new(Cursor::new(sealed), &dek).expect("header ok");
    // A buffer of many segments plus a part of one.
    let mut buf = vec![0u8; 19 * SEGMENT_LEN + 999];
    let mut got = Vec::new();
    let err = loop {
        match r.read(&mut buf) {
            Ok(0) => panic!("the damaged segment was not reported"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(
        got.len() as u64,
        bad * SEGMENT_LEN as u64,
        "every good segment first"
    );
    assert!(got == plain[..got.len()]);
    assert!(matches!(
        dropvault_format::Error::from_io(&err),
        Some(dropvault_format::Error::SegmentAuth { index }) if *index == bad
    ));
}

#[tokio::test]
async fn async_reader_hands_out_good_segments_before_the_error() {
    use tokio::io::AsyncReadExt;
    let dek = key(6);
    let plain = pattern(3 * SEGMENT_LEN);
    let mut sealed = seal_to_vec(&plain, &dek).expect("seal");
    let at = sealed.len() - 100;
    sealed[at] ^= 1;
    let mut r = AsyncDecryptingReader::new(Cursor::new(sealed), &dek)
        .await
        .expect("header ok");
    let mut buf = vec![0u8; 3 * SEGMENT_LEN];
    let n = r
        .read(&mut buf)
        .await
        .expect("the first two segments are good");
    assert_eq!(n, 2 * SEGMENT_LEN, "one read fills several segments");
    assert!(buf[..n] == plain[..n]);
    let err = r.read(&mut buf).await.expect_err("the third is damaged");
    assert!(matches!(
        dropvault_format::Error::from_io(&err),
        Some(dropvault_format::Error::SegmentAuth { index: 2 })
    ));
}

#[tokio::test]
async fn async_reader_reports_tampering() {
    use tokio::io::AsyncReadExt;
    let dek = key(6);
    let mut sealed = seal_to_vec(&pattern(SEGMENT_LEN + 10), &dek).expect("seal");
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    let mut r = AsyncDecryptingReader::new(Cursor::new(sealed), &dek)
        .await
        .expect("header ok");
    let mut out = Vec::new();
    let err = r.read_to_end(&mut out).await.expect_err("tampered");
    let err = dropvault_format::Error::from_io(&err).expect("format error");
    assert!(
        matches!(err, dropvault_format::Error::SegmentAuth { index: 1 }),
        "{err:?}"
    );
}
