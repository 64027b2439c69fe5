//! The decrypting reader never panics on any file, read whole or at random
//! offsets. The first input byte picks the mode: odd = the input is the
//! whole file; even = a valid header for the fixed key followed by the
//! input as segments, so the fuzzer gets past the header tag (which it
//! cannot forge) into segment handling.
#![no_main]

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::OnceLock;

use dropvault_format::{open_to_vec, DataKey, DecryptingReader, EncryptingWriter, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static DataKey {
    static KEY: OnceLock<DataKey> = OnceLock::new();
    KEY.get_or_init(|| DataKey::from_slice(&[0x42; 32]).expect("32 bytes"))
}

fn header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        let w = EncryptingWriter::with_salt(Vec::new(), key(), [0x5a; 32]).expect("writer");
        let sealed = w.finish().expect("finish");
        sealed[..HEADER_LEN].to_vec()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file: Vec<u8> = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        [header(), rest].concat()
    };
    let _ = open_to_vec(&file, key());
    if let Ok(mut r) = DecryptingReader::new(Cursor::new(&file), key()) {
        let len = r.plaintext_len();
        let mut buf = vec![0u8; 256 * 300];
        for step in rest.chunks(4).take(8) {
            let at = u64::from(u32::from_le_bytes([
                step[0],
                *step.get(1).unwrap_or(&0),
                *step.get(2).unwrap_or(&0),
                *step.get(3).unwrap_or(&0),
            ]));
            if r.seek(SeekFrom::Start(at % (len + 2))).is_ok() {
                let n = usize::from(step[0]) * 300;
                let _ = r.read(&mut buf[..n]);
            }
        }
    }
});
