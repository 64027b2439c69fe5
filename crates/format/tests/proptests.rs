//! Property tests: any plaintext, written in any chunking, reads back
//! whole and at any offset; length arithmetic never panics.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use dropvault_format::{
    ciphertext_len, open_to_vec, plaintext_len, DecryptingReader, EncryptingWriter, Layout,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip(
        plain in prop::collection::vec(any::<u8>(), 0..200_000),
        chunks in prop::collection::vec(1usize..150_000, 1..8),
        seeks in prop::collection::vec((any::<u64>(), 0usize..70_000), 0..6),
    ) {
        let dek = common::key(11);
        let mut w = EncryptingWriter::new(Vec::new(), &dek).expect("writer");
        let mut rest = &plain[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunks[i % chunks.len()].min(rest.len());
            w.write_all(&rest[..n]).expect("write");
            rest = &rest[n..];
            i += 1;
        }
        let sealed = w.finish().expect("finish");
        prop_assert_eq!(sealed.len() as u64, ciphertext_len(plain.len() as u64).expect("fits"));
        prop_assert_eq!(&open_to_vec(&sealed, &dek).expect("opens"), &plain);

        let mut r = DecryptingReader::new(Cursor::new(&sealed), &dek).expect("reader");
        for (at, len) in seeks {
            let at = at % (plain.len() as u64 + 1);
            r.seek(SeekFrom::Start(at)).expect("seek");
            let mut got = Vec::new();
            (&mut r).take(len as u64).read_to_end(&mut got).expect("read");
            let end = plain.len().min(at as usize + len);
            prop_assert_eq!(&got[..], &plain[at as usize..end]);
        }
    }

    #[test]
    fn lengths_invert(p in 0u64..(1 << 60)) {
        let c = ciphertext_len(p).expect("fits");
        prop_assert_eq!(plaintext_len(c).expect("valid"), p);
    }

    #[test]
    fn any_length_is_judged_without_panic(c in any::<u64>()) {
        if let Ok(p) = plaintext_len(c) {
            prop_assert_eq!(ciphertext_len(p), Some(c));
            let layout = Layout::from_ciphertext_len(c).expect("valid");
            prop_assert_eq!(layout.plaintext_len(), p);
        }
    }
}
