//! Test vectors as data files (`testdata/vectors/`): known key and salt give
//! exactly the stored ciphertext, and every must-fail vector fails with the
//! error it names. `DROPVAULT_WRITE_VECTORS=1 cargo test --test vectors`
//! rewrites the files from the definitions below; without it the test
//! checks that the stored files still match them.

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit

mod common;

use std::path::PathBuf;

use common::{error_name, hex, key, pattern, seal_fixed, segment_range, unhex};
use dropvault_format::{open_to_vec, DataKey, HEADER_LEN, SEGMENT_LEN};
use serde_json::{json, Value};

const KEY_BYTE: u8 = 0x42;
const SALT: [u8; 32] = [0x5a; 32];
const OTHER_SALT: [u8; 32] = [0xa5; 32];

struct Vector {
    name: &'static str,
    comment: &'static str,
    plaintext_len: usize,
    /// The key a reader uses (the file is always sealed with KEY_BYTE).
    reader_key: u8,
    bytes: Vec<u8>,
    expect: &'static str,
}

fn base(len: usize) -> Vec<u8> {
    seal_fixed(&pattern(len), &key(KEY_BYTE), SALT, usize::MAX)
}

fn flip(mut v: Vec<u8>, at: usize, mask: u8) -> Vec<u8> {
    v[at] ^= mask;
    v
}

fn definitions() -> Vec<Vector> {
    let three = 2 * SEGMENT_LEN + 100; // segments 0, 1 full; 2 final, 100 bytes
    let t = base(three);
    let ok = |name, comment, len: usize| Vector {
        name,
        comment,
        plaintext_len: len,
        reader_key: KEY_BYTE,
        bytes: base(len),
        expect: "ok",
    };
    let bad = |name, comment, bytes, expect| Vector {
        name,
        comment,
        plaintext_len: three,
        reader_key: KEY_BYTE,
        bytes,
        expect,
    };
    let mut v = vec![
        ok("empty", "empty plaintext: one empty final segment", 0),
        ok("one-byte", "a single byte", 1),
        ok(
            "segment-minus-one",
            "65535 bytes: one short final segment",
            SEGMENT_LEN - 1,
        ),
        ok(
            "one-segment",
            "65536 bytes: one full final segment",
            SEGMENT_LEN,
        ),
        ok(
            "segment-plus-one",
            "65537 bytes: a full segment and a 1-byte final one",
            SEGMENT_LEN + 1,
        ),
        ok(
            "three-segments",
            "131172 bytes: two full segments and a 100-byte final one",
            three,
        ),
    ];
    let mut swapped = t[..HEADER_LEN].to_vec();
    swapped.extend_from_slice(&t[segment_range(1)]);
    swapped.extend_from_slice(&t[segment_range(0)]);
    swapped.extend_from_slice(&t[segment_range(1).end..]);
    let mut dropped = t[..HEADER_LEN].to_vec();
    dropped.extend_from_slice(&t[segment_range(1)]);
    dropped.extend_from_slice(&t[segment_range(1).end..]);
    let mut duplicated = t[..segment_range(1).end].to_vec();
    duplicated.extend_from_slice(&t[segment_range(1)]);
    duplicated.extend_from_slice(&t[segment_range(1).end..]);
    let mut trailing = base(SEGMENT_LEN);
    trailing.extend_from_slice(&[0u8; 32]);
    let one = base(SEGMENT_LEN);
    let mut appended = one.clone();
    appended.extend_from_slice(&one[HEADER_LEN..]);
    let other = seal_fixed(&pattern(three), &key(KEY_BYTE), OTHER_SALT, usize::MAX);
    let mut header_swap = other[..HEADER_LEN].to_vec();
    header_swap.extend_from_slice(&t[HEADER_LEN..]);
    v.extend([
        bad(
            "bad-magic",
            "first byte changed",
            flip(t.clone(), 0, 0x01),
            "BadMagic",
        ),
        bad(
            "version-2",
            "version byte set to 2",
            flip(t.clone(), 8, 0x03),
            "UnsupportedVersion",
        ),
        bad(
            "algorithm-2",
            "algorithm byte set to 2",
            flip(t.clone(), 9, 0x03),
            "UnsupportedAlgorithm",
        ),
        bad(
            "flags",
            "an unknown flag bit set",
            flip(t.clone(), 11, 0x01),
            "UnknownFlags",
        ),
        bad(
            "segment-size",
            "segment size changed to 8388608",
            flip(t.clone(), 13, 0x01 | 0x80),
            "UnsupportedSegmentSize",
        ),
        bad(
            "short-bad-magic",
            "50 bytes that do not start with the magic",
            flip(t[..50].to_vec(), 2, 0x01),
            "BadMagic",
        ),
        bad(
            "short-header",
            "the first 50 bytes of a file",
            t[..50].to_vec(),
            "InvalidLength",
        ),
        bad(
            "header-only",
            "the header alone, no segment",
            t[..HEADER_LEN].to_vec(),
            "InvalidLength",
        ),
        bad(
            "flip-salt",
            "one salt bit flipped",
            flip(t.clone(), 40, 0x04),
            "HeaderAuth",
        ),
        bad(
            "flip-header-tag",
            "one header tag bit flipped",
            flip(t.clone(), 95, 0x80),
            "HeaderAuth",
        ),
        bad(
            "flip-body",
            "one bit of segment 1's ciphertext flipped",
            flip(t.clone(), segment_range(1).start + 7, 0x01),
            "SegmentAuth",
        ),
        bad(
            "flip-tag",
            "one bit of segment 0's tag flipped",
            flip(t.clone(), segment_range(0).end - 1, 0x01),
            "SegmentAuth",
        ),
        bad(
            "truncated-boundary",
            "cut after segment 1 (a non-final segment)",
            t[..segment_range(1).end].to_vec(),
            "Truncated",
        ),
        bad(
            "truncated-mid",
            "cut 1000 bytes into segment 1",
            t[..segment_range(1).start + 1000].to_vec(),
            "SegmentAuth",
        ),
        bad(
            "truncated-short",
            "cut 10 bytes into segment 1: shorter than a tag",
            t[..segment_range(1).start + 10].to_vec(),
            "InvalidLength",
        ),
        bad("dropped", "segment 0 dropped", dropped, "SegmentAuth"),
        bad(
            "duplicated",
            "segment 1 stored twice",
            duplicated,
            "SegmentAuth",
        ),
        bad(
            "swapped",
            "segments 0 and 1 swapped",
            swapped,
            "SegmentAuth",
        ),
        bad(
            "header-swap",
            "header of another file (other salt) on this body",
            header_swap,
            "SegmentAuth",
        ),
        Vector {
            name: "trailing-bytes",
            comment: "32 zero bytes after a full final segment",
            plaintext_len: SEGMENT_LEN,
            reader_key: KEY_BYTE,
            bytes: trailing,
            expect: "TrailingData",
        },
        Vector {
            name: "segment-after-final",
            comment: "a copy of the final segment appended after it",
            plaintext_len: SEGMENT_LEN,
            reader_key: KEY_BYTE,
            bytes: appended,
            expect: "TrailingData",
        },
        Vector {
            name: "empty-flip-tag",
            comment: "empty file, bit 0 of its final segment's tag flipped",
            plaintext_len: 0,
            reader_key: KEY_BYTE,
            bytes: flip(base(0), HEADER_LEN, 0x01),
            expect: "SegmentAuth",
        },
        Vector {
            name: "cut-to-empty-length",
            comment: "cut to the length of an empty file (header and 16 bytes of segment 0)",
            plaintext_len: three,
            reader_key: KEY_BYTE,
            bytes: t[..HEADER_LEN + 16].to_vec(),
            expect: "SegmentAuth",
        },
        Vector {
            name: "wrong-key",
            comment: "read with a data key of all 0x43 bytes",
            plaintext_len: three,
            reader_key: KEY_BYTE + 1,
            bytes: t.clone(),
            expect: "WrongKey",
        },
    ]);
    v
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/vectors")
}

fn sha256(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

fn check(v: &Vector, bytes: &[u8]) {
    let dek: DataKey = key(v.reader_key);
    match (open_to_vec(bytes, &dek), v.expect) {
        (Ok(plain), "ok") => assert!(plain == pattern(v.plaintext_len), "{}", v.name),
        (Err(e), want) => assert_eq!(error_name(&e), want, "{}: {e:?}", v.name),
        (Ok(_), want) => panic!("{}: opened, but must fail with {want}", v.name),
    }
}

#[test]
fn vectors_match_their_definitions() {
    let defs = definitions();
    if std::env::var_os("DROPVAULT_WRITE_VECTORS").is_some() {
        let mut list = Vec::new();
        for v in &defs {
            check(v, &v.bytes);
            let file = format!("{}.dv", v.name);
            std::fs::write(dir().join(&file), &v.bytes).expect("write vector");
            let mut entry = json!({
                "name": v.name,
                "comment": v.comment,
                "file": file,
                "data_key": hex(&[v.reader_key; 32]),
                "salt": hex(&SALT),
                "plaintext_len": v.plaintext_len,
                "expect": v.expect,
            });
            if v.expect == "ok" {
                entry["plaintext_sha256"] = json!(sha256(&pattern(v.plaintext_len)));
            }
            list.push(entry);
        }
        let doc = json!({
            "format": "dropvault v1",
            "plaintext": "byte i of the plaintext is i mod 251",
            "vectors": list,
        });
        let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
        std::fs::write(dir().join("vectors.json"), text).expect("write manifest");
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("vectors.json")).expect("manifest"),
    )
    .expect("json");
    let listed = manifest["vectors"].as_array().expect("vectors");
    assert_eq!(listed.len(), defs.len(), "manifest and definitions differ");
    for (entry, v) in listed.iter().zip(&defs) {
        assert_eq!(entry["name"], v.name);
        let stored =
            std::fs::read(dir().join(entry["file"].as_str().expect("file"))).expect("read");
        assert!(
            stored == v.bytes,
            "{}: stored bytes differ from a fresh seal",
            v.name
        );
        assert_eq!(
            unhex(entry["data_key"].as_str().expect("key")),
            vec![v.reader_key; 32]
        );
        check(v, &stored);
        if v.expect == "ok" {
            assert_eq!(
                entry["plaintext_sha256"],
                sha256(&pattern(v.plaintext_len)).as_str()
            );
        }
    }
}
