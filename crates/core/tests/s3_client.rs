//! The S3 client against a real Garage on 127.0.0.1, started once for the
//! whole file through the project's harness
//! (`tests/integration/garage.py serve`), which stops Garage when this
//! process exits and its stdin closes. Each test works under its own key
//! prefix, so they run in parallel on one bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::Duration;

mod common;

use common::garage::{client, settings};
use dropvault_core::s3::{S3Client, S3Error, S3Settings};
use zeroize::Zeroizing;

const MIB: usize = 1 << 20;
/// `len` bytes that differ from offset to offset (xorshift), so a read of
/// the wrong range cannot pass.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn read(c: &S3Client, key: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    c.get_range(key, offset, &mut buf)
        .unwrap_or_else(|e| panic!("get_range {key} {offset}+{len}: {e}"));
    buf
}

/// Every object and common prefix under `prefix`, page by page.
fn list_all(
    c: &S3Client,
    prefix: &str,
    delimiter: Option<char>,
    max_keys: u32,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut keys, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
    let mut after: Option<String> = None;
    loop {
        let page = c
            .list(prefix, delimiter, after.as_deref(), max_keys)
            .expect("list");
        pages += 1;
        assert!(pages < 100, "listing does not end");
        keys.extend(page.objects.into_iter().map(|o| o.key));
        prefixes.extend(page.prefixes);
        match page.next {
            Some(next) => after = Some(next),
            None => return (keys, prefixes, pages),
        }
    }
}

#[test]
fn objects_round_trip_with_metadata() {
    let c = client("objects");
    let body = pattern(100_000, 1);
    let etag = c
        .put(
            "dir/file.bin",
            &body,
            &[("plain-len", "99000"), ("Version", "3")],
        )
        .expect("put");
    assert!(!etag.is_empty() && !etag.contains('"'));

    let meta = c.head("dir/file.bin").expect("head").expect("exists");
    assert_eq!(meta.len, 100_000);
    assert_eq!(meta.etag, etag);
    assert_eq!(
        meta.metadata,
        BTreeMap::from([
            ("plain-len".to_owned(), "99000".to_owned()),
            ("version".to_owned(), "3".to_owned()),
        ])
    );
    let age = std::time::SystemTime::now()
        .duration_since(meta.modified)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(3600), "Last-Modified {age:?} ago");

    assert_eq!(read(&c, "dir/file.bin", 0, 10), body[..10]);
    assert_eq!(read(&c, "dir/file.bin", 65_536, 1000), body[65_536..66_536]);
    assert_eq!(read(&c, "dir/file.bin", 99_999, 1), body[99_999..]);
    assert_eq!(read(&c, "dir/file.bin", 0, 100_000), body);

    // Past the end: short, never a silently shorter buffer.
    let mut buf = vec![0u8; 10];
    for offset in [99_995, 100_000, 200_000] {
        match c.get_range("dir/file.bin", offset, &mut buf) {
            Err(S3Error::BadResponse { .. }) => {}
            other => panic!("read at {offset} past the end: {other:?}"),
        }
    }

    assert_eq!(
        c.get_small("dir/file.bin", 100_000).expect("get_small"),
        Some(body.clone())
    );
    match c.get_small("dir/file.bin", 99_999) {
        Err(S3Error::BadResponse { .. }) => {}
        other => panic!("get_small over the limit: {other:?}"),
    }

    // Replacing keeps one object with the new content and metadata.
    c.put("dir/file.bin", b"short", &[]).expect("put again");
    let meta = c.head("dir/file.bin").expect("head").expect("exists");
    assert_eq!(meta.len, 5);
    assert!(meta.metadata.is_empty());
    assert_eq!(
        c.get_small("dir/file.bin", 100).expect("get").as_deref(),
        Some(&b"short"[..])
    );

    // An empty object.
    c.put("empty", b"", &[]).expect("put empty");
    assert_eq!(c.head("empty").expect("head").map(|m| m.len), Some(0));
    assert_eq!(c.get_small("empty", 0).expect("get"), Some(Vec::new()));

    c.delete("dir/file.bin").expect("delete");
    c.delete("empty").expect("delete");
    assert_eq!(c.head("dir/file.bin").expect("head"), None);
}

#[test]
fn absent_objects() {
    let c = client("absent");
    assert_eq!(c.head("nothing").expect("head"), None);
    assert_eq!(c.get_small("nothing", 10).expect("get_small"), None);
    let mut buf = [0u8; 4];
    assert_eq!(c.get_range("nothing", 0, &mut buf), Err(S3Error::NotFound));
    assert_eq!(c.copy("nothing", "copy", None), Err(S3Error::NotFound));
    // Deleting what is not there is not an error.
    c.delete("nothing").expect("delete absent");
    let page = c.list("", None, None, 1000).expect("list");
    assert!(page.objects.is_empty() && page.prefixes.is_empty() && page.next.is_none());
}

#[test]
fn awkward_keys_round_trip() {
    let c = client("keys/a b");
    let keys = [
        "space in name.txt",
        "plus+sign",
        "percent%25literal%",
        "unicode/Ünïcødé ✓ 日本.txt",
        "query?and#hash&eq=1",
        "quotes'\"<>|\\",
        "tilde~star*(parens)!$,;:@",
        "tab\tand newline\n",
        "trailing space ",
    ];
    for (i, key) in keys.iter().enumerate() {
        let body = format!("body {i}");
        c.put(key, body.as_bytes(), &[("n", &i.to_string())])
            .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
    }
    let (listed, _, _) = list_all(&c, "", None, 1000);
    let expected: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), expected);

    for (i, key) in keys.iter().enumerate() {
        let body = format!("body {i}");
        assert_eq!(
            c.get_small(key, 100).expect("get").as_deref(),
            Some(body.as_bytes()),
            "{key:?}"
        );
        assert_eq!(read(&c, key, 5, 1), [body.as_bytes()[5]], "{key:?}");
        let copy = format!("copies/{key}");
        c.copy(key, &copy, None)
            .unwrap_or_else(|e| panic!("copy {key:?}: {e}"));
        let meta = c.head(&copy).expect("head").expect("copy exists");
        assert_eq!(meta.metadata.get("n"), Some(&i.to_string()), "{key:?}");
        c.delete(key).expect("delete");
        c.delete(&copy).expect("delete copy");
        assert_eq!(c.head(key).expect("head"), None, "{key:?}");
    }
    assert!(list_all(&c, "", None, 1000).0.is_empty());
}

#[test]
fn listing_with_delimiter_and_pages() {
    let c = client("listing");
    let keys = [
        "a.txt", "b/1", "b/2", "b/sub/3", "c d/4", "e.txt", "f.txt", "g/5",
    ];
    for key in keys {
        c.put(key, key.as_bytes(), &[]).expect("put");
    }
    // Everything, two keys a page.
    let (all, prefixes, pages) = list_all(&c, "", None, 2);
    assert_eq!(all, keys);
    assert!(prefixes.is_empty());
    assert_eq!(pages, 4);

    // One level, two entries (objects or prefixes) a page.
    let (objects, prefixes, pages) = list_all(&c, "", Some('/'), 2);
    assert_eq!(objects, ["a.txt", "e.txt", "f.txt"]);
    assert_eq!(prefixes, ["b/", "c d/", "g/"]);
    assert!(pages >= 3, "{pages} pages");

    // Inside a "folder".
    let (objects, prefixes, _) = list_all(&c, "b/", Some('/'), 1000);
    assert_eq!(objects, ["b/1", "b/2"]);
    assert_eq!(prefixes, ["b/sub/"]);

    let page = c.list("b/", None, None, 1000).expect("list");
    assert_eq!(page.objects.len(), 3);
    assert_eq!(page.objects[0].len, 3);
    assert_eq!(page.next, None);

    for key in keys {
        c.delete(key).expect("delete");
    }
}

#[test]
fn copies_keep_or_replace_metadata() {
    let c = client("copies");
    let body = pattern(300_000, 2);
    c.put("src", &body, &[("a", "1"), ("b", "2")]).expect("put");

    c.copy("src", "kept", None).expect("copy");
    let kept = c.head("kept").expect("head").expect("exists");
    assert_eq!(kept.len, 300_000);
    assert_eq!(
        kept.metadata,
        BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned())
        ])
    );

    c.copy("src", "replaced", Some(&[("c", "3")]))
        .expect("copy");
    let replaced = c.head("replaced").expect("head").expect("exists");
    assert_eq!(
        replaced.metadata,
        BTreeMap::from([("c".to_owned(), "3".to_owned())])
    );
    assert_eq!(
        c.get_small("replaced", MIB).expect("get"),
        Some(body.clone())
    );

    // A copy onto itself with new metadata changes the metadata only.
    c.copy("src", "src", Some(&[("d", "4")]))
        .expect("self copy");
    let src = c.head("src").expect("head").expect("exists");
    assert_eq!(
        src.metadata,
        BTreeMap::from([("d".to_owned(), "4".to_owned())])
    );
    assert_eq!(read(&c, "src", 123_456, 1000), body[123_456..124_456]);

    for key in ["src", "kept", "replaced"] {
        c.delete(key).expect("delete");
    }
}

#[test]
fn multipart_upload_of_three_parts() {
    let c = client("multipart");
    let key = "big/file.bin";
    let body = pattern(10 * MIB + 1, 3);
    let (p1, rest) = body.split_at(5 * MIB);
    let (p2, p3) = rest.split_at(5 * MIB);

    let id = c
        .create_multipart(key, &[("plain-len", "10485761")])
        .expect("create");
    assert_eq!(
        c.list_parts(key, &id).expect("list parts"),
        Some(Vec::new())
    );

    let e1 = c.upload_part(key, &id, 1, p1).expect("part 1");
    let e3 = c.upload_part(key, &id, 3, p3).expect("part 3");
    let e2 = c.upload_part(key, &id, 2, p2).expect("part 2");
    let parts = c
        .list_parts(key, &id)
        .expect("list parts")
        .expect("upload exists");
    let summary: Vec<(u32, String, u64)> = parts
        .into_iter()
        .map(|p| (p.number, p.etag, p.size))
        .collect();
    assert_eq!(
        summary,
        [
            (1, e1.clone(), 5 * MIB as u64),
            (2, e2.clone(), 5 * MIB as u64),
            (3, e3.clone(), 1),
        ]
    );

    let pending = c.list_multipart_uploads("big/").expect("list uploads");
    assert!(
        pending.iter().any(|u| u.key == key && u.upload_id == id),
        "{pending:?}"
    );
    // Nothing under a prefix that has no uploads.
    assert!(c.list_multipart_uploads("other/").expect("list").is_empty());
    // Not an object until completed.
    assert_eq!(c.head(key).expect("head"), None);

    // Given out of order: the client sorts.
    c.complete_multipart(key, &id, &[(3, e3), (1, e1), (2, e2)])
        .expect("complete");
    let meta = c.head(key).expect("head").expect("exists");
    assert_eq!(meta.len, body.len() as u64);
    assert_eq!(
        meta.metadata.get("plain-len").map(String::as_str),
        Some("10485761")
    );
    assert!(!c
        .list_multipart_uploads("big/")
        .expect("list uploads")
        .iter()
        .any(|u| u.upload_id == id));
    assert_eq!(c.list_parts(key, &id).expect("list parts"), None);
    // Completing again is not a retry the client made: the upload is gone.
    assert_eq!(
        c.complete_multipart(key, &id, &[(1, "x".to_owned())]),
        Err(S3Error::NotFound)
    );

    // Read back by ranges, across both part boundaries.
    for (offset, len) in [
        (0, 65_536),
        (5 * MIB - 100, 200),
        (10 * MIB - 10, 11),
        (10 * MIB, 1),
        (3 * MIB, 4 * MIB),
    ] {
        assert_eq!(
            read(&c, key, offset as u64, len),
            body[offset..offset + len],
            "{offset}+{len}"
        );
    }
    c.delete(key).expect("delete");
}

#[test]
fn aborted_uploads_are_gone() {
    let c = client("abort");
    let id = c.create_multipart("k", &[]).expect("create");
    let etag = c.upload_part("k", &id, 1, b"data").expect("part");
    c.abort_multipart("k", &id).expect("abort");
    assert_eq!(c.list_parts("k", &id).expect("list parts"), None);
    assert!(c.list_multipart_uploads("").expect("list").is_empty());
    // Aborting again, or an id that never existed, is fine.
    c.abort_multipart("k", &id).expect("abort again");
    assert_eq!(
        c.complete_multipart("k", &id, &[(1, etag)]),
        Err(S3Error::NotFound)
    );
    assert_eq!(c.head("k").expect("head"), None);
}

#[test]
fn pending_uploads_are_listed_across_pages() {
    let c = client("pending");
    // More than one page (the client asks for 1000 a page), two uploads on
    // one key.
    let mut ids = BTreeSet::new();
    for i in 0..1001 {
        let key = format!("x/{:04}", i.max(1));
        ids.insert((key.clone(), c.create_multipart(&key, &[]).expect("create")));
    }
    ids.insert((
        "y/1".to_owned(),
        c.create_multipart("y/1", &[]).expect("create"),
    ));
    let listed: Vec<_> = c.list_multipart_uploads("").expect("list");
    assert_eq!(listed.len(), 1002);
    let listed: BTreeSet<(String, String)> =
        listed.into_iter().map(|u| (u.key, u.upload_id)).collect();
    assert_eq!(listed, ids);
    assert_eq!(c.list_multipart_uploads("y/").expect("list").len(), 1);
    for (key, id) in &ids {
        c.abort_multipart(key, id).expect("abort");
    }
    assert!(c.list_multipart_uploads("").expect("list").is_empty());
}

#[test]
fn parts_are_listed_across_pages() {
    let c = client("manyparts");
    let id = c.create_multipart("k", &[]).expect("create");
    // Servers refuse parts under 5 MiB only at completion: small ones are
    // fine for listing.
    let mut etags = Vec::new();
    for n in 1..=1001u32 {
        etags.push(c.upload_part("k", &id, n, &n.to_le_bytes()).expect("part"));
    }
    let parts = c.list_parts("k", &id).expect("list parts").expect("exists");
    assert_eq!(parts.len(), 1001);
    for (i, (part, etag)) in parts.iter().zip(&etags).enumerate() {
        assert_eq!(part.number as usize, i + 1);
        assert_eq!(&part.etag, etag);
        assert_eq!(part.size, 4);
    }
    c.abort_multipart("k", &id).expect("abort");
}

#[test]
fn parts_copied_from_an_object() {
    let c = client("partcopy");
    let source = pattern(6 * MIB + 7, 4);
    c.put("source", &source, &[]).expect("put");
    let id = c.create_multipart("dest", &[("m", "1")]).expect("create");
    let split = 5 * MIB as u64;
    let e1 = c
        .upload_part_copy("dest", &id, 1, "source", 0..split)
        .expect("part copy 1");
    let e2 = c
        .upload_part_copy("dest", &id, 2, "source", split..source.len() as u64)
        .expect("part copy 2");
    let sizes: Vec<u64> = c
        .list_parts("dest", &id)
        .expect("list parts")
        .expect("exists")
        .iter()
        .map(|p| p.size)
        .collect();
    assert_eq!(sizes, [split, source.len() as u64 - split]);
    c.complete_multipart("dest", &id, &[(1, e1), (2, e2)])
        .expect("complete");
    assert_eq!(
        c.get_small("dest", 7 * MIB).expect("get").as_deref(),
        Some(&source[..])
    );
    // A range that starts past the end is refused. One that only ends
    // past it is refused by AWS; Garage 2.5 clamps it to the source's end.
    // Either way the part never holds bytes the source does not have.
    let id = c.create_multipart("dest2", &[]).expect("create");
    let len = source.len() as u64;
    match c.upload_part_copy("dest2", &id, 1, "source", len..len + 10) {
        Err(S3Error::Status { status: 416, .. }) => {}
        other => panic!("copy past the end: {other:?}"),
    }
    match c.upload_part_copy("dest2", &id, 1, "source", split..10 * MIB as u64) {
        Err(S3Error::Status { .. }) => {}
        Ok(_) => {
            let parts = c.list_parts("dest2", &id).expect("list").expect("exists");
            assert_eq!(
                parts.iter().map(|p| p.size).collect::<Vec<_>>(),
                [len - split]
            );
        }
        other => panic!("copy beyond the source: {other:?}"),
    }
    c.abort_multipart("dest2", &id).expect("abort");
    c.delete("source").expect("delete");
    c.delete("dest").expect("delete");
}

#[test]
fn one_client_shared_by_threads() {
    let c = client("threads");
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..5u64 {
                    let key = format!("t{t}/{i}");
                    let body = pattern(10_000 + usize::try_from(i).unwrap_or(0), t * 100 + i);
                    c.put(&key, &body, &[]).expect("put");
                    assert_eq!(read(&c, &key, 100, 50), body[100..150]);
                    c.delete(&key).expect("delete");
                }
            });
        }
    });
    assert!(list_all(&c, "", None, 1000).0.is_empty());
}

#[test]
fn a_wrong_secret_is_denied() {
    let good = client("denied");
    good.put("k", b"v", &[]).expect("put");
    let mut s = settings("denied");
    s.secret_access_key = Zeroizing::new("0".repeat(64));
    let bad = S3Client::new(s).expect("valid settings");
    assert_eq!(bad.head("k"), Err(S3Error::Denied));
    assert_eq!(bad.get_small("k", 10), Err(S3Error::Denied));
    assert_eq!(bad.put("k", b"x", &[]), Err(S3Error::Denied));
    assert_eq!(bad.list("", None, None, 10), Err(S3Error::Denied));
    // Nothing changed.
    assert_eq!(
        good.get_small("k", 10).expect("get").as_deref(),
        Some(&b"v"[..])
    );
    good.delete("k").expect("delete");
}

#[test]
fn a_closed_port_is_unreachable_after_retries() {
    // A port that was just free: nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let c = S3Client::new(S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "garage".to_owned(),
        bucket: "dropvault".to_owned(),
        prefix: String::new(),
        access_key_id: "GK00".to_owned(),
        secret_access_key: Zeroizing::new("secret-that-must-not-leak".to_owned()),
        path_style: true,
        timeout: Duration::from_secs(5),
        ca_file: None,
        retries: 2,
    })
    .expect("valid settings");
    let err = c.head("k").expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(!shown.contains("secret-that-must-not-leak"), "{shown}");
    assert!(matches!(
        c.put("k", b"v", &[]),
        Err(S3Error::Unreachable { .. })
    ));
}

#[test]
fn a_missing_bucket_is_not_an_absent_key() {
    let mut s = settings("");
    s.bucket = "no-such-bucket".to_owned();
    let c = S3Client::new(s).expect("valid settings");
    match c.get_small("k", 10) {
        Err(S3Error::Status { status: 404, code }) => assert_eq!(code, "NoSuchBucket"),
        // Garage may refuse a bucket the key has no access to instead.
        Err(S3Error::Denied) => {}
        other => panic!("missing bucket: {other:?}"),
    }
}
