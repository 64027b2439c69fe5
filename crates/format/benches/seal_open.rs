//! Sealing and opening 64 MiB with the format, next to raw AES-256-GCM of
//! aws-lc-rs over the same buffers in 64 KiB pieces (the ceiling: what the
//! format adds is everything above that).
//!
//! - `dropvault_seal`: the blocking writer into `io::sink()`, and
//!   `dropvault_open`: the sans-io `Decryptor` over the sealed bytes in
//!   memory. Like the raw runs, these move no byte besides the cipher's own
//!   output, so the difference to raw is the format's own cost.
//! - `*_via_memory`: the blocking writer into a `Vec` and the blocking
//!   reader over a `Cursor`: one more memory copy of all data, as a file
//!   write or read would cost in the kernel.
//!
//! `cargo bench -p dropvault-format --bench seal_open`

#![allow(clippy::cast_possible_truncation)] // test sizes and offsets are small and 64-bit
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::io::{Cursor, Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dropvault_format::{
    DataKey, DecryptingReader, Decryptor, EncryptingWriter, HEADER_LEN, SEGMENT_LEN, TAG_LEN,
};

const TOTAL: usize = 64 << 20;

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn bench(c: &mut Criterion) {
    let plain: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let dek = DataKey::from_slice(&[7; 32]).expect("32 bytes");
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("key"));

    let mut g = c.benchmark_group("64MiB");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(20);

    // Raw: seal every 64 KiB piece from the plaintext into an output buffer.
    let mut out = vec![0u8; TOTAL + TOTAL / SEGMENT_LEN * TAG_LEN];
    g.bench_function("raw_aes_gcm_seal", |b| {
        b.iter(|| {
            for (i, (p, o)) in plain
                .chunks(SEGMENT_LEN)
                .zip(out.chunks_mut(SEGMENT_LEN + TAG_LEN))
                .enumerate()
            {
                let (body, tag) = o.split_at_mut(p.len());
                raw.seal_out_of_place_scatter(nonce(i as u64), Aad::empty(), p, body, &[], tag)
                    .expect("seal");
            }
        })
    });

    g.bench_function("dropvault_seal", |b| {
        b.iter(|| {
            let mut w = EncryptingWriter::new(std::io::sink(), &dek).expect("writer");
            for piece in plain.chunks(1 << 20) {
                w.write_all(piece).expect("write");
            }
            w.finish().expect("finish");
        })
    });

    let mut sink: Vec<u8> = Vec::with_capacity(TOTAL + TOTAL / SEGMENT_LEN * TAG_LEN + 4096);
    g.bench_function("dropvault_seal_via_memory", |b| {
        b.iter(|| {
            sink.clear();
            let mut w = EncryptingWriter::new(&mut sink, &dek).expect("writer");
            for piece in plain.chunks(1 << 20) {
                w.write_all(piece).expect("write");
            }
            w.finish().expect("finish");
        })
    });

    // Raw: open every sealed piece into the plaintext buffer.
    let mut back = vec![0u8; TOTAL];
    g.bench_function("raw_aes_gcm_open", |b| {
        b.iter(|| {
            for (i, (o, p)) in out
                .chunks(SEGMENT_LEN + TAG_LEN)
                .zip(back.chunks_mut(SEGMENT_LEN))
                .enumerate()
            {
                let (body, tag) = o.split_at(p.len());
                raw.open_separate_gather(nonce(i as u64), Aad::empty(), body, tag, p)
                    .expect("open");
            }
        })
    });

    let sealed = sink.clone();
    g.bench_function("dropvault_open", |b| {
        b.iter(|| {
            let dec =
                Decryptor::new(&dek, &sealed[..HEADER_LEN], sealed.len() as u64).expect("header");
            let layout = *dec.layout();
            for (i, p) in back.chunks_mut(SEGMENT_LEN).enumerate() {
                let seg = layout.segment(i as u64).expect("segment");
                let start = seg.ciphertext_offset as usize;
                let body = &sealed[start..start + seg.ciphertext_len];
                dec.open(&seg, body, p).expect("open");
            }
        })
    });

    g.bench_function("dropvault_open_via_memory", |b| {
        b.iter(|| {
            let mut r = DecryptingReader::new(Cursor::new(&sealed[..]), &dek).expect("reader");
            let mut done = 0;
            while done < TOTAL {
                let n = r
                    .read(&mut back[done..(done + (1 << 20)).min(TOTAL)])
                    .expect("read");
                assert!(n > 0, "short file");
                done += n;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
