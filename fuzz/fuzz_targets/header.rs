//! The header parser never panics, and whatever it accepts re-encodes to
//! the bytes it read.
#![no_main]

use dropvault_format::header::{Header, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Header(header, used)) = Header::parse(data) {
        assert_eq!(&header.to_bytes()[..], &data[..used]);
    }
});
