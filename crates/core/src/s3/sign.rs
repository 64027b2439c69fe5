//! AWS Signature Version 4 for S3, header form: the canonical request, the
//! string to sign, the signing key and the `Authorization` value, plus the
//! URI encoding S3 expects in paths and query strings. Pure functions over
//! strings; the clock and the network are the caller's.
//!
//! The payload is always signed (`x-amz-content-sha256` is the SHA-256 of
//! the body): our bodies are in memory, and a signed hash lets the server
//! reject a body damaged on the way.

use aws_lc_rs::{digest, hmac};
use zeroize::Zeroizing;

/// SHA-256 of an empty body, as lower-case hex.
#[cfg(test)]
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lower-case hex SHA-256 of `body`: the `x-amz-content-sha256` value.
pub(crate) fn sha256_hex(body: &[u8]) -> String {
    crate::hex(digest::digest(&digest::SHA256, body).as_ref())
}

/// Bytes S3 leaves unencoded in a URI (RFC 3986 "unreserved").
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// `s` URI-encoded the S3 way: every byte but the unreserved ones as `%XX`
/// (upper-case hex), `/` kept when `keep_slash` (object keys in a path) and
/// encoded otherwise (query names and values).
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// The canonical query string: names and values encoded, pairs sorted by
/// encoded name then value, a parameter without value written `name=`.
/// The request line uses the same string, so what is sent is what is signed.
pub(crate) fn canonical_query(query: &[(&str, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as it enters the canonical request: trimmed, runs of
/// spaces folded to one.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One request as the signature sees it.
pub(crate) struct Canonical<'a> {
    /// `GET`, `PUT`...
    pub(crate) method: &'a str,
    /// The path exactly as sent, already URI-encoded.
    pub(crate) path: &'a str,
    /// Query parameters, not encoded.
    pub(crate) query: &'a [(&'a str, String)],
    /// Every header that is signed (names in any case); must include
    /// `host`, `x-amz-date` and `x-amz-content-sha256`.
    pub(crate) headers: &'a [(String, String)],
    /// Hex SHA-256 of the body.
    pub(crate) payload_hash: &'a str,
}

impl Canonical<'_> {
    /// The canonical request and the signed-headers list.
    fn build(&self) -> (String, String) {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), canonical_value(v)))
            .collect();
        headers.sort();
        let signed = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut text = String::with_capacity(512);
        text.push_str(self.method);
        text.push('\n');
        text.push_str(self.path);
        text.push('\n');
        text.push_str(&canonical_query(self.query));
        text.push('\n');
        for (k, v) in &headers {
            text.push_str(k);
            text.push(':');
            text.push_str(v);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&signed);
        text.push('\n');
        text.push_str(self.payload_hash);
        (text, signed)
    }
}

/// Who signs, and for which region.
pub(crate) struct Signer<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    pub(crate) region: &'a str,
}

impl Signer<'_> {
    /// The `Authorization` header value for `request` at `amz_date`
    /// (`YYYYMMDDTHHMMSSZ`, the request's `x-amz-date`).
    pub(crate) fn authorization(&self, amz_date: &str, request: &Canonical<'_>) -> String {
        let day = amz_date.get(..8).unwrap_or(amz_date);
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let (canonical, signed) = request.build();
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let signature = crate::hex(
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &self.signing_key(day)),
                string_to_sign.as_bytes(),
            )
            .as_ref(),
        );
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed},Signature={signature}",
            self.access_key_id
        )
    }

    /// HMAC chain "AWS4"+secret → day → region → "s3" → "aws4_request".
    /// Every intermediate key is as good as the secret for a day: zeroized.
    fn signing_key(&self, day: &str) -> Zeroizing<Vec<u8>> {
        let mut key = Zeroizing::new(format!("AWS4{}", self.secret_access_key).into_bytes());
        for part in [day, self.region, "s3", "aws4_request"] {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes());
            key = Zeroizing::new(tag.as_ref().to_vec());
        }
        key
    }
}

#[cfg(test)]
mod tests {
    //! The examples of the S3 documentation, "Signature Calculations for the
    //! Authorization Header: Transferring Payload in a Single Chunk": same
    //! credentials, same instant, published signatures.

    use super::*;

    const AMZ_DATE: &str = "20130524T000000Z";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    fn signer() -> Signer<'static> {
        Signer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
        }
    }

    fn headers(extra: &[(&str, &str)], payload_hash: &str) -> Vec<(String, String)> {
        let mut h = vec![
            ("Host".to_owned(), HOST.to_owned()),
            ("x-amz-date".to_owned(), AMZ_DATE.to_owned()),
            ("x-amz-content-sha256".to_owned(), payload_hash.to_owned()),
        ];
        h.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        h
    }

    fn expected(signed: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders={signed},Signature={signature}"
        )
    }

    #[test]
    fn get_object_with_range() {
        let headers = headers(&[("Range", "bytes=0-9")], EMPTY_SHA256);
        let request = Canonical {
            method: "GET",
            path: &format!("/{}", uri_encode("test.txt", true)),
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        assert_eq!(
            signer().authorization(AMZ_DATE, &request),
            expected(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
    }

    #[test]
    fn put_object() {
        let body = b"Welcome to Amazon S3.";
        let hash = sha256_hex(body);
        assert_eq!(
            hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let headers = headers(
            &[
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            &hash,
        );
        let path = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let request = Canonical {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &headers,
            payload_hash: &hash,
        };
        assert_eq!(
            signer().authorization(AMZ_DATE, &request),
            expected(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
            )
        );
    }

    #[test]
    fn get_bucket_lifecycle_parameter_without_value() {
        let headers = headers(&[], EMPTY_SHA256);
        let request = Canonical {
            method: "GET",
            path: "/",
            query: &[("lifecycle", String::new())],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        assert_eq!(
            signer().authorization(AMZ_DATE, &request),
            expected(
                "host;x-amz-content-sha256;x-amz-date",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            )
        );
    }

    #[test]
    fn list_objects_query_is_sorted() {
        let headers = headers(&[], EMPTY_SHA256);
        // Given out of order: the canonical form sorts them.
        let query = [("prefix", "J".to_owned()), ("max-keys", "2".to_owned())];
        assert_eq!(canonical_query(&query), "max-keys=2&prefix=J");
        let request = Canonical {
            method: "GET",
            path: "/",
            query: &query,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        assert_eq!(
            signer().authorization(AMZ_DATE, &request),
            expected(
                "host;x-amz-content-sha256;x-amz-date",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            )
        );
    }

    #[test]
    fn a_different_secret_gives_a_different_signature() {
        let headers = headers(&[], EMPTY_SHA256);
        let request = Canonical {
            method: "GET",
            path: "/",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let other = Signer {
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEz",
            ..signer()
        };
        assert_ne!(
            signer().authorization(AMZ_DATE, &request),
            other.authorization(AMZ_DATE, &request)
        );
    }

    #[test]
    fn keys_are_encoded_segment_by_segment() {
        assert_eq!(uri_encode("a b/c+d%e", true), "a%20b/c%2Bd%25e");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("Ünï~-_.", true), "%C3%9Cn%C3%AF~-_.");
        assert_eq!(uri_encode("*?#&=", true), "%2A%3F%23%26%3D");
        assert_eq!(
            canonical_query(&[
                ("uploadId", "a+b/c".to_owned()),
                ("partNumber", "2".to_owned())
            ]),
            "partNumber=2&uploadId=a%2Bb%2Fc"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_folded() {
        assert_eq!(canonical_value("  a   b  c "), "a b c");
    }
}
