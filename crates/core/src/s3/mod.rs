//! A small blocking S3 client: the object and multipart calls the S3
//! storage backend needs, signed with AWS Signature V4 through aws-lc-rs,
//! sent over the crate's ureq agent (rustls on aws-lc-rs, no redirects, no
//! proxy from the environment, a deadline per request).
//!
//! It owns the bucket addressing (path-style or virtual-hosted), the key
//! prefix every key is put under, the mapping of S3 answers to
//! [`S3Error`], and retries: transient failures (connection errors,
//! timeouts, 500/502/503/504, 429 and `SlowDown`) are tried again with
//! exponential backoff and jitter. Every request made here is idempotent
//! under the way the storage layer uses it, so any of them may be retried;
//! CompleteMultipartUpload needs one extra rule, see
//! [`S3Client::complete_multipart`].
//!
//! Blocking by design: callers are blocking threads. One [`S3Client`] is
//! shared by all of them (it is an `Arc` inside; the agent pools
//! connections). No answer is read without a limit, and no error text
//! carries a secret, a signature or a response body (only S3's error code).

pub(crate) mod date;
mod sign;
mod xml;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ureq::http::{self, Method, Response};
use zeroize::Zeroizing;

use self::xml::XmlError;

/// Largest XML answer read (a page of 1000 long keys is well under 1 MiB).
const MAX_XML: u64 = 8 << 20;
/// Largest error body read to find its code.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// S3's longest object key, in bytes.
const MAX_KEY: usize = 1024;
/// S3's limit on user metadata (names and values), in bytes.
const MAX_METADATA: usize = 2048;
/// S3's highest part number.
const MAX_PART_NUMBER: u32 = 10_000;
/// Most pending uploads [`S3Client::list_multipart_uploads`] returns.
const MAX_PENDING_UPLOADS: usize = 10_000;
/// First retry delay; doubles each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the bucket is and how to sign for it.
#[derive(Clone)]
pub struct S3Settings {
    /// `http://host:port` or `https://host[:port]`, no path; empty for AWS
    /// (`https://s3.{region}.amazonaws.com`).
    pub endpoint: String,
    /// The signing region (`us-east-1`, or what the server is configured
    /// with, e.g. Garage's `s3_region`).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Put before every key; empty, or normalised to end with `/`.
    pub prefix: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// `http://host/bucket/key` when true, `http://bucket.host/key` when
    /// false.
    pub path_style: bool,
    /// Deadline of one request, answer included.
    pub timeout: Duration,
    /// CA certificates (PEM) for `https://`; the system's bundle if `None`.
    pub ca_file: Option<PathBuf>,
    /// Extra attempts after a transient failure.
    pub retries: u32,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("path_style", &self.path_style)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("retries", &self.retries)
            .finish()
    }
}

/// What went wrong with an S3 call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// 404 (`NoSuchKey`, `NoSuchUpload`) where the call does not turn it
    /// into `Ok`/`None`.
    #[error("S3: not found")]
    NotFound,
    /// The service could not be reached or kept failing (connection error,
    /// timeout, 5xx, `SlowDown`) after the configured retries: worth trying
    /// again later.
    #[error("S3 unreachable: {reason}")]
    Unreachable {
        /// What the last attempt ran into.
        reason: String,
    },
    /// 403: wrong credentials, a clock too far off, or no permission.
    #[error("S3 refused access (403)")]
    Denied,
    /// Any other answer.
    #[error("S3 answered {status} {code}")]
    Status {
        /// HTTP status.
        status: u16,
        /// S3's error code (`EntityTooSmall`, `InvalidPart`...), or empty.
        code: String,
    },
    /// An answer we cannot use: malformed, oversized, inconsistent.
    #[error("S3 sent an unusable answer: {reason}")]
    BadResponse {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The settings cannot work (endpoint, bucket name, CA file...).
    #[error("S3 settings: {reason}")]
    Config {
        /// What is wrong with them.
        reason: String,
    },
    /// The call's arguments cannot be sent (empty key, part number out of
    /// range, non-ASCII metadata...).
    #[error("S3 request not sent: {reason}")]
    Invalid {
        /// What is wrong with them.
        reason: &'static str,
    },
}

impl S3Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

type Result<T> = std::result::Result<T, S3Error>;

/// What HEAD says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub len: u64,
    /// `Last-Modified`.
    pub modified: SystemTime,
    /// The ETag, without quotes.
    pub etag: String,
    /// `x-amz-meta-*` headers without the prefix, names in lower case.
    pub metadata: BTreeMap<String, String>,
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key relative to the client's prefix.
    pub key: String,
    /// Size in bytes.
    pub len: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Objects, in key order.
    pub objects: Vec<Listed>,
    /// Common prefixes (the "folders" under a delimiter), relative to the
    /// client's prefix.
    pub prefixes: Vec<String>,
    /// The continuation token of the next page, if there is one.
    pub next: Option<String>,
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Part number, 1..=10000.
    pub number: u32,
    /// The part's ETag, without quotes.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
}

/// A multipart upload that was neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key relative to the client's prefix.
    pub key: String,
    /// Its upload id.
    pub upload_id: String,
    /// When it was created.
    pub initiated: SystemTime,
}

/// The S3 client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    agent: ureq::Agent,
    scheme: &'static str,
    /// The `Host` header: the endpoint's authority, after the bucket when
    /// virtual-hosted.
    host: String,
    /// `/bucket` (path-style) or empty (virtual-hosted).
    bucket_path: String,
    bucket: String,
    prefix: String,
    region: String,
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    retries: u32,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("S3Client")
            .field("endpoint", &format_args!("{}://{}", i.scheme, i.host))
            .field("bucket", &i.bucket)
            .field("prefix", &i.prefix)
            .field("region", &i.region)
            .field("access_key_id", &i.access_key_id)
            .finish_non_exhaustive()
    }
}

/// One request before signing.
struct Call<'a> {
    method: Method,
    /// The full key (prefix included); `None` for a bucket-level request.
    key: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    /// Extra headers, all signed.
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

impl<'a> Call<'a> {
    fn new(method: Method, key: Option<&'a str>) -> Self {
        Self {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: &[],
        }
    }

    fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn metadata(mut self, meta: &[(&str, &str)]) -> Self {
        for (name, value) in meta {
            self.headers.push((
                format!("x-amz-meta-{}", name.to_ascii_lowercase()),
                (*value).to_owned(),
            ));
        }
        self
    }

    fn body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }
}

fn config(reason: impl Into<String>) -> S3Error {
    S3Error::Config {
        reason: reason.into(),
    }
}

/// `(https, authority)` of an endpoint URL without path.
fn parse_endpoint(endpoint: &str) -> Result<(bool, String)> {
    let trimmed = endpoint.trim_end_matches('/');
    let (https, authority) = if let Some(rest) = trimmed.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(config("endpoint must start with http:// or https://"));
    };
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'%') || !b.is_ascii_graphic())
    {
        return Err(config(
            "endpoint must be scheme://host[:port], without path, query or user",
        ));
    }
    // The http crate decides whether requests can be built with it.
    format!("http://{authority}/")
        .parse::<http::Uri>()
        .map_err(|_| config("endpoint is not a valid host[:port]"))?;
    Ok((https, authority.to_owned()))
}

/// The prefix as keys get it: no leading `/`, empty or ending with `/`.
fn normalise_prefix(prefix: &str) -> Result<String> {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    let p = if p.ends_with('/') {
        p.to_owned()
    } else {
        format!("{p}/")
    };
    if p.trim_end_matches('/')
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
        || p.ends_with("//")
    {
        return Err(config("prefix has an empty, . or .. segment"));
    }
    if p.len() > MAX_KEY / 2 {
        return Err(config("prefix is too long"));
    }
    Ok(p)
}

fn check_bucket(bucket: &str, path_style: bool) -> Result<()> {
    let dns_safe = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let path_safe = bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if bucket.is_empty() || bucket.len() > 255 || !path_safe {
        return Err(config("bucket name must be letters, digits, - . _"));
    }
    if !path_style && (!dns_safe || bucket.len() < 3 || bucket.len() > 63) {
        return Err(config(
            "a virtual-hosted bucket name must be 3-63 lower-case letters, digits, - and . \
             (or set path_style)",
        ));
    }
    Ok(())
}

/// Header-safe metadata: lower-case names of letters, digits, `-` and
/// `_`; values visible ASCII with inner spaces (servers trim the ends,
/// which would change what was signed).
fn check_metadata(meta: &[(&str, &str)]) -> Result<()> {
    let mut total = 0usize;
    for (name, value) in meta {
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(S3Error::Invalid {
                reason: "metadata name must be letters, digits, - and _",
            });
        }
        let value_ok =
            value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) && value.trim() == *value;
        if !value_ok {
            return Err(S3Error::Invalid {
                reason: "metadata value must be visible ASCII without leading or trailing spaces",
            });
        }
        total = total.saturating_add(name.len()).saturating_add(value.len());
    }
    if total > MAX_METADATA {
        return Err(S3Error::Invalid {
            reason: "metadata larger than 2 KiB",
        });
    }
    Ok(())
}

fn check_part_number(number: u32) -> Result<()> {
    if (1..=MAX_PART_NUMBER).contains(&number) {
        Ok(())
    } else {
        Err(S3Error::Invalid {
            reason: "part number must be 1..=10000",
        })
    }
}

fn check_upload_id(upload_id: &str) -> Result<()> {
    if upload_id.is_empty() || upload_id.len() > 1024 {
        return Err(S3Error::Invalid {
            reason: "upload id must be 1-1024 bytes",
        });
    }
    Ok(())
}

/// The error for an answer with `status` and S3 error `code`.
fn status_error(status: u16, code: String) -> S3Error {
    let transient = matches!(status, 429 | 500 | 502 | 503 | 504)
        || matches!(
            code.as_str(),
            "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"
        );
    if transient {
        let reason = if code.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {code}")
        };
        return S3Error::Unreachable { reason };
    }
    match status {
        403 => S3Error::Denied,
        // A missing bucket is a configuration problem, not an absent key.
        404 if code != "NoSuchBucket" => S3Error::NotFound,
        _ => S3Error::Status { status, code },
    }
}

/// A failure that produced no answer.
fn transport_error(e: ureq::Error) -> S3Error {
    match e {
        ureq::Error::BodyExceedsLimit(_) => S3Error::BadResponse {
            reason: "answer larger than the limit",
        },
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => S3Error::Invalid {
            reason: "the request could not be built",
        },
        ureq::Error::Pem(_) => config("CA file is not PEM"),
        other => S3Error::Unreachable {
            reason: other.to_string(),
        },
    }
}

/// The error for an XML answer that came with `status`.
fn xml_error(status: u16, e: XmlError) -> S3Error {
    match e {
        XmlError::Bad(reason) => S3Error::BadResponse { reason },
        XmlError::S3(code) => status_error(status, code),
    }
}

/// Delay before retry number `attempt` (0-based): `FIRST_BACKOFF`
/// doubling, capped, then a random point in its upper half so that many
/// clients failing together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let mut r = [0u8; 2];
    let fraction = match aws_lc_rs::rand::fill(&mut r) {
        Ok(()) => f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    full.mul_f64(0.5 + fraction / 2.0)
}

fn header<'r>(resp: &'r Response<ureq::Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn etag_header(resp: &Response<ureq::Body>) -> Result<String> {
    header(resp, "etag")
        .and_then(xml::clean_etag)
        .ok_or(S3Error::BadResponse {
            reason: "no usable ETag header",
        })
}

fn content_length(resp: &Response<ureq::Body>) -> Result<Option<u64>> {
    header(resp, "content-length")
        .map(|v| {
            v.trim().parse().map_err(|_| S3Error::BadResponse {
                reason: "bad Content-Length",
            })
        })
        .transpose()
}

/// The whole body, up to `limit` bytes. A connection that breaks while
/// reading is transient.
fn read_body(resp: Response<ureq::Body>, limit: u64) -> Result<Vec<u8>> {
    resp.into_body()
        .into_with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(transport_error)
}

/// The error of a non-2xx answer, from its status and body's code.
fn answer_error(resp: Response<ureq::Body>) -> S3Error {
    let status = resp.status().as_u16();
    let code = read_body(resp, MAX_ERROR_BODY)
        .ok()
        .and_then(|body| xml::error_code(&body))
        .unwrap_or_default();
    status_error(status, code)
}

/// `resp` if it is a success, its error otherwise.
fn success(resp: Response<ureq::Body>) -> Result<Response<ureq::Body>> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(answer_error(resp))
    }
}

/// A success's XML body, up to [`MAX_XML`], and its status.
fn xml_body(resp: Response<ureq::Body>) -> Result<(u16, Vec<u8>)> {
    let resp = success(resp)?;
    let status = resp.status().as_u16();
    Ok((status, read_body(resp, MAX_XML)?))
}

/// Strips `prefix` from a key the server listed under it.
fn relative(prefix: &str, key: String) -> Result<String> {
    match key.strip_prefix(prefix) {
        Some(rest) => Ok(rest.to_owned()),
        None => Err(S3Error::BadResponse {
            reason: "listed key outside the requested prefix",
        }),
    }
}

/// The `Content-Range` of a 206 answer: `(first, last)` byte.
fn content_range(resp: &Response<ureq::Body>) -> Result<(u64, u64)> {
    let bad = S3Error::BadResponse {
        reason: "bad Content-Range",
    };
    let value = header(resp, "content-range").ok_or_else(|| bad.clone())?;
    let range = value
        .trim()
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .map(|(r, _total)| r)
        .and_then(|r| r.split_once('-'))
        .ok_or_else(|| bad.clone())?;
    match (range.0.parse(), range.1.parse()) {
        (Ok(first), Ok(last)) if first <= last => Ok((first, last)),
        _ => Err(bad),
    }
}

const SHORT: S3Error = S3Error::BadResponse {
    reason: "the object ends before the range asked for",
};

impl S3Client {
    /// A client for `s`. Checks the settings; does not contact the server.
    pub fn new(s: S3Settings) -> Result<Self> {
        let region = s.region.trim().to_owned();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(config("region must be letters, digits, - and _"));
        }
        let endpoint = if s.endpoint.trim().is_empty() {
            format!("https://s3.{region}.amazonaws.com")
        } else {
            s.endpoint.trim().to_owned()
        };
        let (https, authority) = parse_endpoint(&endpoint)?;
        check_bucket(&s.bucket, s.path_style)?;
        if s.access_key_id.is_empty()
            || !s
                .access_key_id
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b'='))
        {
            return Err(config("access key id must be visible ASCII without / , ="));
        }
        if s.secret_access_key.is_empty() {
            return Err(config("secret access key is empty"));
        }
        if s.timeout.is_zero() {
            return Err(config("timeout must be above zero"));
        }
        let prefix = normalise_prefix(&s.prefix)?;
        let agent = crate::http::agent(s.timeout, s.ca_file.as_deref(), https, None)
            .map_err(|e| config(e.to_string()))?;
        let (host, bucket_path) = if s.path_style {
            (authority, format!("/{}", s.bucket))
        } else {
            (format!("{}.{authority}", s.bucket), String::new())
        };
        Ok(Self {
            inner: Arc::new(Inner {
                agent,
                scheme: if https { "https" } else { "http" },
                host,
                bucket_path,
                bucket: s.bucket,
                prefix,
                region,
                access_key_id: s.access_key_id,
                secret_access_key: s.secret_access_key,
                retries: s.retries,
            }),
        })
    }

    /// `key` under the client's prefix, checked: not empty, no `.` or `..`
    /// segment (some proxies and servers resolve them), at most 1024 bytes.
    fn full_key(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(S3Error::Invalid {
                reason: "empty key",
            });
        }
        if key.split('/').any(|s| s == "." || s == "..") {
            return Err(S3Error::Invalid {
                reason: "key has a . or .. segment",
            });
        }
        let full = format!("{}{key}", self.inner.prefix);
        if full.len() > MAX_KEY {
            return Err(S3Error::Invalid {
                reason: "key longer than 1024 bytes",
            });
        }
        Ok(full)
    }

    /// The request path of `key` (or of the bucket), URI-encoded.
    fn path(&self, key: Option<&str>) -> String {
        match key {
            Some(k) => format!("{}/{}", self.inner.bucket_path, sign::uri_encode(k, true)),
            None if self.inner.bucket_path.is_empty() => "/".to_owned(),
            None => self.inner.bucket_path.clone(),
        }
    }

    /// `x-amz-copy-source` for `full_key` in our bucket.
    fn copy_source(&self, full_key: &str) -> String {
        format!(
            "/{}/{}",
            self.inner.bucket,
            sign::uri_encode(full_key, true)
        )
    }

    /// Signs and sends `call` once.
    fn send(&self, call: &Call<'_>, payload_hash: &str) -> Result<Response<ureq::Body>> {
        let i = &self.inner;
        let path = self.path(call.key);
        let query = sign::canonical_query(&call.query);
        let url = if query.is_empty() {
            format!("{}://{}{path}", i.scheme, i.host)
        } else {
            format!("{}://{}{path}?{query}", i.scheme, i.host)
        };
        let amz_date = date::amz_date(SystemTime::now());
        let mut headers = vec![
            ("host".to_owned(), i.host.clone()),
            ("x-amz-date".to_owned(), amz_date.clone()),
            ("x-amz-content-sha256".to_owned(), payload_hash.to_owned()),
        ];
        headers.extend(call.headers.iter().cloned());
        let signer = sign::Signer {
            access_key_id: &i.access_key_id,
            secret_access_key: &i.secret_access_key,
            region: &i.region,
        };
        let authorization = signer.authorization(
            &amz_date,
            &sign::Canonical {
                method: call.method.as_str(),
                path: &path,
                query: &call.query,
                headers: &headers,
                payload_hash,
            },
        );
        let mut request = http::Request::builder()
            .method(call.method.clone())
            .uri(url);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        request = request.header("authorization", authorization);
        let bad = |_| S3Error::Invalid {
            reason: "the request could not be built",
        };
        // GET, HEAD and DELETE go without a body (and without
        // Content-Length); PUT and POST always carry one, if empty.
        let sent =
            if call.body.is_empty() && call.method != Method::PUT && call.method != Method::POST {
                i.agent.run(request.body(()).map_err(bad)?)
            } else {
                i.agent.run(request.body(call.body).map_err(bad)?)
            };
        sent.map_err(transport_error)
    }

    /// Sends `call` and hands the answer to `handle`, again while either
    /// fails transiently and retries are left. Also returns how many
    /// attempts were made.
    fn run_counted<T>(
        &self,
        call: &Call<'_>,
        mut handle: impl FnMut(Response<ureq::Body>) -> Result<T>,
    ) -> (Result<T>, u32) {
        let payload_hash = sign::sha256_hex(call.body);
        let mut attempt = 0u32;
        loop {
            let result = self.send(call, &payload_hash).and_then(&mut handle);
            match result {
                Err(e) if e.is_transient() && attempt < self.inner.retries => {
                    tracing::debug!(
                        method = %call.method,
                        attempt = attempt + 1,
                        error = %e,
                        "S3 request failed, retrying"
                    );
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                other => return (other, attempt + 1),
            }
        }
    }

    fn run<T>(
        &self,
        call: &Call<'_>,
        handle: impl FnMut(Response<ureq::Body>) -> Result<T>,
    ) -> Result<T> {
        self.run_counted(call, handle).0
    }

    /// The object's size, date, ETag and metadata; `None` if absent.
    pub fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key)?;
        let call = Call::new(Method::HEAD, Some(&full));
        let result = self.run(&call, |resp| {
            let resp = success(resp)?;
            let len = content_length(&resp)?.ok_or(S3Error::BadResponse {
                reason: "no Content-Length",
            })?;
            let modified = header(&resp, "last-modified")
                .and_then(date::parse_http_date)
                .ok_or(S3Error::BadResponse {
                    reason: "no usable Last-Modified",
                })?;
            let etag = etag_header(&resp)?;
            let mut metadata = BTreeMap::new();
            for (name, value) in resp.headers() {
                if let Some(meta) = name.as_str().strip_prefix("x-amz-meta-") {
                    let value = value
                        .to_str()
                        .ok()
                        .filter(|v| v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
                        .ok_or(S3Error::BadResponse {
                            reason: "metadata value is not ASCII",
                        })?;
                    metadata.insert(meta.to_ascii_lowercase(), value.to_owned());
                }
            }
            Ok(ObjectMeta {
                len,
                modified,
                etag,
                metadata,
            })
        });
        match result {
            Ok(meta) => Ok(Some(meta)),
            Err(S3Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Exactly `buf.len()` bytes of the object from `offset` (one ranged
    /// GET). An object that ends before `offset + buf.len()` is an error,
    /// as is an absent one ([`S3Error::NotFound`]). An empty `buf` asks
    /// nothing.
    pub fn get_range(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let full = self.full_key(key)?;
        if buf.is_empty() {
            return Ok(());
        }
        let len = u64::try_from(buf.len()).map_err(|_| S3Error::Invalid {
            reason: "buffer too large",
        })?;
        let last = offset.checked_add(len - 1).ok_or(S3Error::Invalid {
            reason: "range beyond 2^64",
        })?;
        let call =
            Call::new(Method::GET, Some(&full)).header("range", format!("bytes={offset}-{last}"));
        self.run(&call, |resp| {
            if resp.status().as_u16() == 416 {
                return Err(SHORT);
            }
            let resp = success(resp)?;
            match resp.status().as_u16() {
                206 => {
                    let (first, end) = content_range(&resp)?;
                    if first != offset || end > last {
                        return Err(S3Error::BadResponse {
                            reason: "Content-Range is not the range asked for",
                        });
                    }
                    if end < last {
                        return Err(SHORT);
                    }
                }
                // A server may ignore Range; only usable from the start.
                200 if offset == 0 => {}
                _ => {
                    return Err(S3Error::BadResponse {
                        reason: "answer to a ranged GET is not 206",
                    })
                }
            }
            match content_length(&resp)? {
                Some(n) if n == len => {}
                Some(n) if n < len => return Err(SHORT),
                _ => {
                    return Err(S3Error::BadResponse {
                        reason: "Content-Length does not match the range",
                    })
                }
            }
            let mut reader = resp.into_body().into_with_config().limit(len).reader();
            reader.read_exact(buf).map_err(|e| S3Error::Unreachable {
                reason: format!("reading the object: {e}"),
            })
        })
    }

    /// The whole object, if it exists and is at most `max` bytes; a larger
    /// one is refused ([`S3Error::BadResponse`]) without reading it.
    pub fn get_small(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let full = self.full_key(key)?;
        let limit = u64::try_from(max).unwrap_or(u64::MAX);
        let too_large = S3Error::BadResponse {
            reason: "object larger than the limit",
        };
        let call = Call::new(Method::GET, Some(&full));
        let result = self.run(&call, |resp| {
            let resp = success(resp)?;
            if content_length(&resp)?.is_some_and(|n| n > limit) {
                return Err(too_large.clone());
            }
            read_body(resp, limit).map_err(|e| match e {
                S3Error::BadResponse { .. } => too_large.clone(),
                other => other,
            })
        });
        match result {
            Ok(body) => Ok(Some(body)),
            Err(S3Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores `body` under `key` with `meta` as `x-amz-meta-*`, replacing
    /// any object there. Returns the new ETag.
    pub fn put(&self, key: &str, body: &[u8], meta: &[(&str, &str)]) -> Result<String> {
        let full = self.full_key(key)?;
        check_metadata(meta)?;
        let call = Call::new(Method::PUT, Some(&full))
            .metadata(meta)
            .body(body);
        self.run(&call, |resp| etag_header(&success(resp)?))
    }

    /// Deletes the object; an absent one is fine.
    pub fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        let call = Call::new(Method::DELETE, Some(&full));
        match self.run(&call, |resp| success(resp).map(drop)) {
            Err(S3Error::NotFound) => Ok(()),
            other => other,
        }
    }

    /// One page (at most `max_keys`, 1..=1000) of the objects whose keys
    /// start with `prefix`, grouped under `delimiter` if given, continuing
    /// after the page whose [`ListPage::next`] was `after`.
    pub fn list(
        &self,
        prefix: &str,
        delimiter: Option<char>,
        after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage> {
        let full_prefix = format!("{}{prefix}", self.inner.prefix);
        if full_prefix.len() > MAX_KEY {
            return Err(S3Error::Invalid {
                reason: "prefix longer than 1024 bytes",
            });
        }
        let mut call = Call::new(Method::GET, None)
            .query("list-type", "2")
            .query("prefix", full_prefix)
            .query("max-keys", max_keys.clamp(1, 1000).to_string())
            // Keys may hold characters XML 1.0 cannot carry.
            .query("encoding-type", "url");
        if let Some(d) = delimiter {
            call = call.query("delimiter", d.to_string());
        }
        if let Some(token) = after {
            call = call.query("continuation-token", token);
        }
        let page = self.run(&call, |resp| {
            let (status, body) = xml_body(resp)?;
            xml::list_objects_v2(&body).map_err(|e| xml_error(status, e))
        })?;
        let prefix = &self.inner.prefix;
        Ok(ListPage {
            objects: page
                .objects
                .into_iter()
                .map(|o| {
                    Ok(Listed {
                        key: relative(prefix, o.key)?,
                        ..o
                    })
                })
                .collect::<Result<_>>()?,
            prefixes: page
                .prefixes
                .into_iter()
                .map(|p| relative(prefix, p))
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// CopyObject from `from` to `to` in the bucket; metadata copied, or
    /// replaced by `meta` when given.
    pub fn copy(&self, from: &str, to: &str, meta: Option<&[(&str, &str)]>) -> Result<()> {
        let source = self.copy_source(&self.full_key(from)?);
        let full = self.full_key(to)?;
        let mut call = Call::new(Method::PUT, Some(&full)).header("x-amz-copy-source", source);
        if let Some(meta) = meta {
            check_metadata(meta)?;
            call = call
                .header("x-amz-metadata-directive", "REPLACE")
                .metadata(meta);
        }
        self.run(&call, |resp| {
            let (status, body) = xml_body(resp)?;
            xml::copy_result(&body, "CopyObjectResult").map_err(|e| xml_error(status, e))
        })
        .map(drop)
    }

    /// Starts a multipart upload to `key` with `meta`; returns its id.
    ///
    /// A retry after a lost answer may leave an unused upload behind;
    /// [`S3Client::list_multipart_uploads`] finds it for cleanup.
    pub fn create_multipart(&self, key: &str, meta: &[(&str, &str)]) -> Result<String> {
        let full = self.full_key(key)?;
        check_metadata(meta)?;
        let call = Call::new(Method::POST, Some(&full))
            .query("uploads", "")
            .metadata(meta);
        self.run(&call, |resp| {
            let (status, body) = xml_body(resp)?;
            xml::initiate(&body).map_err(|e| xml_error(status, e))
        })
    }

    /// Uploads part `number` (1..=10000); returns its ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &[u8],
    ) -> Result<String> {
        let full = self.full_key(key)?;
        check_upload_id(upload_id)?;
        check_part_number(number)?;
        let call = Call::new(Method::PUT, Some(&full))
            .query("partNumber", number.to_string())
            .query("uploadId", upload_id)
            .body(body);
        self.run(&call, |resp| etag_header(&success(resp)?))
    }

    /// Part `number` copied from bytes `range` of object `source`
    /// (UploadPartCopy); returns its ETag.
    ///
    /// `range` must lie within the source: AWS refuses one that ends past
    /// it, but Garage 2.5 silently copies up to the source's end instead.
    /// Garage also refuses (400 `InvalidRequest`) a source small enough to
    /// be stored inline in its metadata (under 3 KiB).
    pub fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        range: Range<u64>,
    ) -> Result<String> {
        let full = self.full_key(key)?;
        let source = self.copy_source(&self.full_key(source)?);
        check_upload_id(upload_id)?;
        check_part_number(number)?;
        if range.is_empty() {
            return Err(S3Error::Invalid {
                reason: "empty copy range",
            });
        }
        let call = Call::new(Method::PUT, Some(&full))
            .query("partNumber", number.to_string())
            .query("uploadId", upload_id)
            .header("x-amz-copy-source", source)
            .header(
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            );
        self.run(&call, |resp| {
            let (status, body) = xml_body(resp)?;
            xml::copy_result(&body, "CopyPartResult").map_err(|e| xml_error(status, e))
        })
    }

    /// Completes the upload from `parts` (number, ETag), sorted by number
    /// here. A 200 whose body is an `<Error>` is that error.
    ///
    /// If an attempt went through but its answer was lost, the retry finds
    /// the upload gone (`NoSuchUpload`); then the object existing under
    /// `key` means the completion happened, and this returns `Ok`.
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        let full = self.full_key(key)?;
        check_upload_id(upload_id)?;
        if parts.is_empty() {
            return Err(S3Error::Invalid {
                reason: "no parts to complete",
            });
        }
        let mut sorted = parts.to_vec();
        sorted.sort_by_key(|(n, _)| *n);
        for pair in sorted.windows(2) {
            if let [(a, _), (b, _)] = pair {
                if a == b {
                    return Err(S3Error::Invalid {
                        reason: "a part number given twice",
                    });
                }
            }
        }
        for (number, etag) in &sorted {
            check_part_number(*number)?;
            if xml::clean_etag(etag).is_none() {
                return Err(S3Error::Invalid {
                    reason: "part ETag must be visible ASCII",
                });
            }
        }
        let body = xml::complete_body(&sorted);
        let call = Call::new(Method::POST, Some(&full))
            .query("uploadId", upload_id)
            .header("content-type", "application/xml")
            .body(body.as_bytes());
        let (result, attempts) = self.run_counted(&call, |resp| {
            let (status, body) = xml_body(resp)?;
            xml::complete_result(&body).map_err(|e| xml_error(status, e))
        });
        match result {
            Err(S3Error::NotFound) if attempts > 1 => match self.head(key)? {
                Some(_) => Ok(()),
                None => Err(S3Error::NotFound),
            },
            other => other,
        }
    }

    /// Aborts the upload; one that no longer exists is fine.
    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let full = self.full_key(key)?;
        check_upload_id(upload_id)?;
        let call = Call::new(Method::DELETE, Some(&full)).query("uploadId", upload_id);
        match self.run(&call, |resp| success(resp).map(drop)) {
            Err(S3Error::NotFound) => Ok(()),
            other => other,
        }
    }

    /// Every part uploaded so far, in number order; `None` if the upload
    /// does not exist (any more).
    pub fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<Part>>> {
        let full = self.full_key(key)?;
        check_upload_id(upload_id)?;
        let mut parts: Vec<Part> = Vec::new();
        let mut marker: Option<u32> = None;
        loop {
            let mut call = Call::new(Method::GET, Some(&full))
                .query("uploadId", upload_id)
                .query("max-parts", "1000");
            if let Some(m) = marker {
                call = call.query("part-number-marker", m.to_string());
            }
            let page = match self.run(&call, |resp| {
                let (status, body) = xml_body(resp)?;
                xml::list_parts(&body).map_err(|e| xml_error(status, e))
            }) {
                Ok(page) => page,
                Err(S3Error::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            parts.extend(page.parts);
            if parts.len() > MAX_PART_NUMBER as usize {
                return Err(S3Error::BadResponse {
                    reason: "more than 10000 parts listed",
                });
            }
            match page.next {
                // Each page must move forward, or a broken server keeps us here.
                Some(next) if marker.is_none_or(|m| next > m) => marker = Some(next),
                Some(_) => {
                    return Err(S3Error::BadResponse {
                        reason: "ListParts marker does not advance",
                    })
                }
                None => break,
            }
        }
        parts.sort_by_key(|p| p.number);
        parts.dedup_by_key(|p| p.number);
        Ok(Some(parts))
    }

    /// The multipart uploads under `prefix` that were neither completed
    /// nor aborted, oldest key first; at most 10,000 (abort some and call
    /// again for more).
    pub fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let full_prefix = format!("{}{prefix}", self.inner.prefix);
        let mut uploads: Vec<PendingUpload> = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut call = Call::new(Method::GET, None)
                .query("uploads", "")
                .query("prefix", full_prefix.clone())
                .query("max-uploads", "1000")
                .query("encoding-type", "url");
            if let Some((key, id)) = &markers {
                call = call.query("key-marker", key.clone());
                if !id.is_empty() {
                    call = call.query("upload-id-marker", id.clone());
                }
            }
            let page = self.run(&call, |resp| {
                let (status, body) = xml_body(resp)?;
                xml::list_uploads(&body).map_err(|e| xml_error(status, e))
            })?;
            for u in page.uploads {
                if uploads.len() == MAX_PENDING_UPLOADS {
                    return Ok(uploads);
                }
                uploads.push(PendingUpload {
                    key: relative(&self.inner.prefix, u.key)?,
                    ..u
                });
            }
            match page.next {
                Some(next) if markers.as_ref() != Some(&next) => markers = Some(next),
                Some(_) => {
                    return Err(S3Error::BadResponse {
                        reason: "ListMultipartUploads markers do not advance",
                    })
                }
                None => return Ok(uploads),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: "http://127.0.0.1:3900".to_owned(),
            region: "garage".to_owned(),
            bucket: "dropvault".to_owned(),
            prefix: "node/".to_owned(),
            access_key_id: "GK0123".to_owned(),
            secret_access_key: Zeroizing::new("very-secret-value".to_owned()),
            path_style: true,
            timeout: Duration::from_secs(5),
            ca_file: None,
            retries: 2,
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = settings();
        assert!(!format!("{s:?}").contains("very-secret-value"));
        assert!(format!("{s:?}").contains("[redacted]"));
        let client = S3Client::new(s).expect("valid settings");
        let shown = format!("{client:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("http://127.0.0.1:3900"), "{shown}");
    }

    #[test]
    fn addressing() {
        let c = S3Client::new(settings()).expect("valid settings");
        assert_eq!(c.inner.host, "127.0.0.1:3900");
        assert_eq!(c.path(None), "/dropvault");
        let key = c.full_key("a b/ü+%.txt").expect("valid key");
        assert_eq!(key, "node/a b/ü+%.txt");
        assert_eq!(c.path(Some(&key)), "/dropvault/node/a%20b/%C3%BC%2B%25.txt");
        assert_eq!(
            c.copy_source(&key),
            "/dropvault/node/a%20b/%C3%BC%2B%25.txt"
        );

        let v = S3Client::new(S3Settings {
            path_style: false,
            endpoint: "https://s3.example.net/".to_owned(),
            ..settings()
        })
        .expect("valid settings");
        assert_eq!(v.inner.scheme, "https");
        assert_eq!(v.inner.host, "dropvault.s3.example.net");
        assert_eq!(v.path(None), "/");
        assert_eq!(v.path(Some("node/k")), "/node/k");

        let aws = S3Client::new(S3Settings {
            endpoint: String::new(),
            region: "eu-west-3".to_owned(),
            path_style: false,
            ..settings()
        })
        .expect("valid settings");
        assert_eq!(aws.inner.host, "dropvault.s3.eu-west-3.amazonaws.com");
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalise_prefix(""), Ok(String::new()));
        assert_eq!(normalise_prefix("/"), Ok(String::new()));
        assert_eq!(normalise_prefix("a"), Ok("a/".to_owned()));
        assert_eq!(normalise_prefix("/a/b/"), Ok("a/b/".to_owned()));
        for bad in ["a//b", "a/../b", "./a", "a//"] {
            assert!(normalise_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let cases: Vec<(&str, S3Settings)> = vec![
            (
                "ftp endpoint",
                S3Settings {
                    endpoint: "ftp://h".to_owned(),
                    ..settings()
                },
            ),
            (
                "endpoint with path",
                S3Settings {
                    endpoint: "http://h/x".to_owned(),
                    ..settings()
                },
            ),
            (
                "endpoint with user",
                S3Settings {
                    endpoint: "http://u:p@h".to_owned(),
                    ..settings()
                },
            ),
            (
                "empty host",
                S3Settings {
                    endpoint: "http://".to_owned(),
                    ..settings()
                },
            ),
            (
                "empty bucket",
                S3Settings {
                    bucket: String::new(),
                    ..settings()
                },
            ),
            (
                "bucket with slash",
                S3Settings {
                    bucket: "a/b".to_owned(),
                    ..settings()
                },
            ),
            (
                "upper-case virtual-hosted bucket",
                S3Settings {
                    bucket: "Drop".to_owned(),
                    path_style: false,
                    ..settings()
                },
            ),
            (
                "empty region",
                S3Settings {
                    region: String::new(),
                    ..settings()
                },
            ),
            (
                "region with slash",
                S3Settings {
                    region: "a/b".to_owned(),
                    ..settings()
                },
            ),
            (
                "empty key id",
                S3Settings {
                    access_key_id: String::new(),
                    ..settings()
                },
            ),
            (
                "empty secret",
                S3Settings {
                    secret_access_key: Zeroizing::new(String::new()),
                    ..settings()
                },
            ),
            (
                "zero timeout",
                S3Settings {
                    timeout: Duration::ZERO,
                    ..settings()
                },
            ),
            (
                "missing CA file",
                S3Settings {
                    endpoint: "https://h".to_owned(),
                    ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
                    ..settings()
                },
            ),
        ];
        for (what, s) in cases {
            match S3Client::new(s) {
                Err(S3Error::Config { reason }) => {
                    assert!(!reason.contains("very-secret-value"), "{what}: {reason}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_arguments_are_refused_before_sending() {
        let c = S3Client::new(settings()).expect("valid settings");
        let invalid = |r: Result<()>| matches!(r, Err(S3Error::Invalid { .. }));
        assert!(invalid(c.delete("")));
        assert!(invalid(c.delete("a/../b")));
        assert!(invalid(c.delete("./b")));
        assert!(invalid(c.delete(&"k".repeat(MAX_KEY))));
        assert!(invalid(c.put("k", b"", &[("bad name", "1")]).map(drop)));
        assert!(invalid(c.put("k", b"", &[("n", "é")]).map(drop)));
        assert!(invalid(c.put("k", b"", &[("n", " 1")]).map(drop)));
        assert!(invalid(c.put("k", b"", &[("n", "a\nb")]).map(drop)));
        assert!(invalid(c.upload_part("k", "id", 0, b"x").map(drop)));
        assert!(invalid(c.upload_part("k", "id", 10_001, b"x").map(drop)));
        assert!(invalid(c.upload_part("k", "", 1, b"x").map(drop)));
        assert!(invalid(
            c.upload_part_copy("k", "id", 1, "s", 5..5).map(drop)
        ));
        assert!(invalid(c.complete_multipart("k", "id", &[])));
        assert!(invalid(c.complete_multipart(
            "k",
            "id",
            &[(1, "a".to_owned()), (1, "b".to_owned())]
        )));
        assert!(invalid(c.complete_multipart(
            "k",
            "id",
            &[(1, "a b".to_owned())]
        )));
        let mut buf = [0u8; 2];
        assert!(invalid(c.get_range("k", u64::MAX, &mut buf)));
        // Nothing to read, nothing asked: no server needed.
        assert_eq!(c.get_range("k", 5, &mut []), Ok(()));
    }

    #[test]
    fn answers_map_to_errors() {
        let code = |c: &str| c.to_owned();
        assert_eq!(status_error(404, code("NoSuchKey")), S3Error::NotFound);
        assert_eq!(status_error(404, code("NoSuchUpload")), S3Error::NotFound);
        assert_eq!(status_error(404, String::new()), S3Error::NotFound);
        assert_eq!(
            status_error(404, code("NoSuchBucket")),
            S3Error::Status {
                status: 404,
                code: code("NoSuchBucket")
            }
        );
        assert_eq!(
            status_error(403, code("SignatureDoesNotMatch")),
            S3Error::Denied
        );
        assert_eq!(
            status_error(400, code("EntityTooSmall")),
            S3Error::Status {
                status: 400,
                code: code("EntityTooSmall")
            }
        );
        for (status, c) in [
            (500, ""),
            (502, ""),
            (503, "SlowDown"),
            (504, ""),
            (429, ""),
            (400, "RequestTimeout"),
            (200, "InternalError"),
        ] {
            assert!(status_error(status, code(c)).is_transient(), "{status} {c}");
        }
        assert!(!status_error(501, code("NotImplemented")).is_transient());
        assert!(!S3Error::Denied.is_transient());
    }

    #[test]
    fn transient_failures_are_retried_then_reported() {
        // A port that was just free: connections are refused, every time.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        for retries in [0, 2] {
            let c = S3Client::new(S3Settings {
                endpoint: format!("http://127.0.0.1:{port}"),
                retries,
                ..settings()
            })
            .expect("valid settings");
            let call = Call::new(Method::HEAD, Some("k"));
            let (result, attempts) = c.run_counted(&call, success);
            assert!(
                matches!(result, Err(S3Error::Unreachable { .. })),
                "{result:?}"
            );
            assert_eq!(attempts, retries + 1);
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 0..40 {
            let full = FIRST_BACKOFF
                .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
                .min(MAX_BACKOFF);
            let d = backoff(attempt);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
            assert!(d <= MAX_BACKOFF);
        }
        assert!(backoff(0) <= FIRST_BACKOFF);
    }
}
