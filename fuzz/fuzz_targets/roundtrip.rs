//! Any plaintext, written in chunks the fuzzer picks, reads back unchanged,
//! and its ciphertext length maps back to its plaintext length.
#![no_main]

use std::io::Write;

use dropvault_format::{open_to_vec, plaintext_len, DataKey, EncryptingWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, plain)) = data.split_first() else {
        return;
    };
    let dek = DataKey::from_slice(&[7; 32]).expect("32 bytes");
    let mut w = EncryptingWriter::new(Vec::new(), &dek).expect("writer");
    for part in plain.chunks(usize::from(chunk).max(1) * 997) {
        w.write_all(part).expect("write");
    }
    let sealed = w.finish().expect("finish");
    assert_eq!(plaintext_len(sealed.len() as u64).expect("valid"), plain.len() as u64);
    assert_eq!(open_to_vec(&sealed, &dek).expect("opens"), plain);
});
