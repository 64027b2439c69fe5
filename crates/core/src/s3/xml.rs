//! The XML of S3 answers we read — ListObjectsV2, ListParts,
//! ListMultipartUploads, InitiateMultipartUpload, CompleteMultipartUpload,
//! CopyObject / UploadPartCopy results, `<Error>` bodies — and the one body
//! we write, CompleteMultipartUpload.
//!
//! A body is first read into a small element tree (bounded depth and
//! element count, so a hostile server cannot make us build a huge one from
//! a body under the caller's size limit), then each answer picks its
//! fields from it. Element names are matched without namespace prefix.

use std::time::SystemTime;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::date::parse_iso8601;
use super::{Listed, Part, PendingUpload};

/// Deepest nesting we accept; S3 answers are 3 levels deep.
const MAX_DEPTH: usize = 16;
/// Most elements in one body: a page of 1000 listed objects is ~6000.
const MAX_ELEMENTS: usize = 100_000;
/// Longest S3 error code we keep (the real ones are under 40).
const MAX_CODE: usize = 64;

/// Why an answer could not be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XmlError {
    /// Not the XML we expected.
    Bad(&'static str),
    /// An `<Error>` body (also sent with 200 by CompleteMultipartUpload
    /// and the copies); its `Code`, sanitised.
    S3(String),
}

type Result<T> = std::result::Result<T, XmlError>;

/// One element: local name, text (all text, CDATA and references directly
/// inside it, concatenated) and children.
#[derive(Debug, Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of child `name`.
    fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    fn required(&self, name: &str, what: &'static str) -> Result<&str> {
        self.text_of(name).ok_or(XmlError::Bad(what))
    }

    fn truncated(&self) -> Result<bool> {
        match self.text_of("IsTruncated").map(str::trim) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(XmlError::Bad("IsTruncated is neither true nor false")),
        }
    }
}

fn local_name(qname: &[u8]) -> Result<String> {
    let local = qname
        .iter()
        .rposition(|&b| b == b':')
        .map_or(qname, |i| qname.get(i + 1..).unwrap_or_default());
    String::from_utf8(local.to_vec()).map_err(|_| XmlError::Bad("element name is not UTF-8"))
}

/// The element tree of `body`.
fn parse(body: &[u8]) -> Result<Element> {
    let bad = |_| XmlError::Bad("malformed XML");
    let text = std::str::from_utf8(body).map_err(|_| XmlError::Bad("answer is not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(bad)?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(XmlError::Bad("content after the root element"));
            }
            Event::Start(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::Bad("XML too deep or too large"));
                }
                stack.push(Element {
                    name: local_name(start.name().as_ref())?,
                    ..Element::default()
                });
            }
            Event::Empty(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::Bad("XML too large"));
                }
                let element = Element {
                    name: local_name(start.name().as_ref())?,
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or(XmlError::Bad("malformed XML"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(t) => {
                let t = t.xml10_content().map_err(|_| XmlError::Bad("bad text"))?;
                match stack.last_mut() {
                    Some(e) => e.text.push_str(&t),
                    None if t.trim().is_empty() => {}
                    None => return Err(XmlError::Bad("text outside the root element")),
                }
            }
            Event::CData(t) => {
                let t = t.decode().map_err(|_| XmlError::Bad("bad CDATA"))?;
                if let Some(e) = stack.last_mut() {
                    e.text.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(bad)? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|_| XmlError::Bad("bad reference"))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or(XmlError::Bad("unknown entity"))?
                            .to_owned()
                    }
                };
                if let Some(e) = stack.last_mut() {
                    e.text.push_str(&resolved);
                }
            }
            // A DOCTYPE could declare entities; S3 never sends one.
            Event::DocType(_) => return Err(XmlError::Bad("DOCTYPE in an S3 answer")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    match (root, stack.is_empty()) {
        (Some(root), true) => Ok(root),
        _ => Err(XmlError::Bad("truncated XML")),
    }
}

/// An S3 error code made safe to log and show: ASCII letters and digits
/// only, bounded.
pub(crate) fn sanitise_code(code: &str) -> String {
    code.trim()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(MAX_CODE)
        .collect()
}

/// The `Code` of an `<Error>` body; `None` when the body is not one.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    let root = parse(body).ok()?;
    (root.name == "Error")
        .then(|| root.text_of("Code").map(sanitise_code))
        .flatten()
}

/// The root of an answer that should be `expected`; an `<Error>` root
/// becomes [`XmlError::S3`].
fn root(body: &[u8], expected: &'static str) -> Result<Element> {
    let root = parse(body)?;
    if root.name == "Error" {
        return Err(XmlError::S3(
            root.text_of("Code").map(sanitise_code).unwrap_or_default(),
        ));
    }
    if root.name != expected {
        return Err(XmlError::Bad("unexpected root element"));
    }
    Ok(root)
}

fn number<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T> {
    s.trim().parse().map_err(|_| XmlError::Bad(what))
}

fn time(s: &str, what: &'static str) -> Result<SystemTime> {
    parse_iso8601(s).ok_or(XmlError::Bad(what))
}

/// An ETag as the client hands it out: without the quotes, visible ASCII.
pub(crate) fn clean_etag(raw: &str) -> Option<String> {
    let etag = raw.trim().trim_matches('"');
    (!etag.is_empty() && etag.len() <= 256 && etag.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| etag.to_owned())
}

/// `%XX` and `+` decoded, as in `encoding-type=url` answers (AWS writes a
/// space as `+` there and a `+` as `%2B`; Garage writes `%20`).
fn url_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(XmlError::Bad("bad %-escape in a listed key"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| XmlError::Bad("listed key is not UTF-8"))
}

/// Keys in a listing: decoded when the answer says `EncodingType` url.
fn key_decoder(root: &Element) -> impl Fn(&str) -> Result<String> {
    let encoded = root.text_of("EncodingType").map(str::trim) == Some("url");
    move |s: &str| {
        if encoded {
            url_decode(s)
        } else {
            Ok(s.to_owned())
        }
    }
}

/// One page of ListObjectsV2, keys as the server has them (with the
/// client's prefix).
#[derive(Debug)]
pub(crate) struct ObjectsPage {
    pub(crate) objects: Vec<Listed>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) next: Option<String>,
}

pub(crate) fn list_objects_v2(body: &[u8]) -> Result<ObjectsPage> {
    let root = root(body, "ListBucketResult")?;
    let key = key_decoder(&root);
    let objects = root
        .all("Contents")
        .map(|c| {
            Ok(Listed {
                key: key(c.required("Key", "Contents without Key")?)?,
                len: number(c.required("Size", "Contents without Size")?, "bad Size")?,
                modified: time(
                    c.required("LastModified", "Contents without LastModified")?,
                    "bad LastModified",
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let prefixes = root
        .all("CommonPrefixes")
        .map(|p| key(p.required("Prefix", "CommonPrefixes without Prefix")?))
        .collect::<Result<Vec<_>>>()?;
    let next = if root.truncated()? {
        let token = root.required("NextContinuationToken", "truncated without a token")?;
        if token.is_empty() {
            return Err(XmlError::Bad("truncated without a token"));
        }
        Some(token.to_owned())
    } else {
        None
    };
    Ok(ObjectsPage {
        objects,
        prefixes,
        next,
    })
}

/// The upload id of an InitiateMultipartUpload answer.
pub(crate) fn initiate(body: &[u8]) -> Result<String> {
    let root = root(body, "InitiateMultipartUploadResult")?;
    let id = root.required("UploadId", "no UploadId")?.trim();
    if id.is_empty() {
        return Err(XmlError::Bad("empty UploadId"));
    }
    Ok(id.to_owned())
}

/// One page of ListParts.
#[derive(Debug)]
pub(crate) struct PartsPage {
    pub(crate) parts: Vec<Part>,
    /// The `part-number-marker` of the next page, if truncated.
    pub(crate) next: Option<u32>,
}

pub(crate) fn list_parts(body: &[u8]) -> Result<PartsPage> {
    let root = root(body, "ListPartsResult")?;
    let parts = root
        .all("Part")
        .map(|p| {
            Ok(Part {
                number: number(
                    p.required("PartNumber", "Part without number")?,
                    "bad PartNumber",
                )?,
                etag: clean_etag(p.required("ETag", "Part without ETag")?)
                    .ok_or(XmlError::Bad("bad ETag"))?,
                size: number(p.required("Size", "Part without Size")?, "bad Size")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = if root.truncated()? {
        Some(number(
            root.required("NextPartNumberMarker", "truncated without a marker")?,
            "bad NextPartNumberMarker",
        )?)
    } else {
        None
    };
    Ok(PartsPage { parts, next })
}

/// One page of ListMultipartUploads, keys with the client's prefix.
#[derive(Debug)]
pub(crate) struct UploadsPage {
    pub(crate) uploads: Vec<PendingUpload>,
    /// `key-marker` and `upload-id-marker` of the next page, if truncated.
    pub(crate) next: Option<(String, String)>,
}

pub(crate) fn list_uploads(body: &[u8]) -> Result<UploadsPage> {
    let root = root(body, "ListMultipartUploadsResult")?;
    let key = key_decoder(&root);
    let uploads = root
        .all("Upload")
        .map(|u| {
            Ok(PendingUpload {
                key: key(u.required("Key", "Upload without Key")?)?,
                upload_id: u
                    .required("UploadId", "Upload without UploadId")?
                    .trim()
                    .to_owned(),
                initiated: time(
                    u.required("Initiated", "Upload without Initiated")?,
                    "bad Initiated",
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = if root.truncated()? {
        // The key marker is a key (encoded like one); the upload id marker
        // is opaque (Garage sends "include" in it).
        let key_marker = key(root.required("NextKeyMarker", "truncated without a key marker")?)?;
        let id_marker = root.text_of("NextUploadIdMarker").unwrap_or("").trim();
        Some((key_marker, id_marker.to_owned()))
    } else {
        None
    };
    Ok(UploadsPage { uploads, next })
}

/// The ETag of a CopyObject (`CopyObjectResult`) or UploadPartCopy
/// (`CopyPartResult`) answer, which S3 may send with 200 and an `<Error>`.
pub(crate) fn copy_result(body: &[u8], expected: &'static str) -> Result<String> {
    let root = root(body, expected)?;
    clean_etag(root.required("ETag", "copy result without ETag")?).ok_or(XmlError::Bad("bad ETag"))
}

/// A CompleteMultipartUpload answer: S3 sends 200 first and an `<Error>`
/// later when the completion fails after the headers went out.
pub(crate) fn complete_result(body: &[u8]) -> Result<()> {
    root(body, "CompleteMultipartUploadResult").map(drop)
}

fn escape_text(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// The CompleteMultipartUpload request body for `parts` (number, ETag),
/// in the order given.
pub(crate) fn complete_body(parts: &[(u32, String)]) -> String {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        let etag = escape_text(etag.trim().trim_matches('"'));
        body.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>\"{etag}\"</ETag></Part>"
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const LIST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name>
  <Prefix>p/</Prefix>
  <KeyCount>3</KeyCount>
  <MaxKeys>3</MaxKeys>
  <Delimiter>/</Delimiter>
  <IsTruncated>true</IsTruncated>
  <Contents>
    <Key>p/a &amp; b.txt</Key>
    <LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag>
    <Size>434234</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents>
    <Key><![CDATA[p/<c>]]></Key>
    <LastModified>2009-10-12T17:50:31Z</LastModified>
    <Size>0</Size>
  </Contents>
  <CommonPrefixes><Prefix>p/dir/</Prefix></CommonPrefixes>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>"#;

    #[test]
    fn a_list_page() {
        let page = list_objects_v2(LIST.as_bytes()).expect("parses");
        assert_eq!(page.objects.len(), 2);
        assert_eq!(page.objects[0].key, "p/a & b.txt");
        assert_eq!(page.objects[0].len, 434_234);
        assert_eq!(
            page.objects[0].modified,
            UNIX_EPOCH + Duration::from_secs(1_255_369_830)
        );
        assert_eq!(page.objects[1].key, "p/<c>");
        assert_eq!(page.objects[1].len, 0);
        assert_eq!(page.prefixes, ["p/dir/"]);
        assert_eq!(
            page.next.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
    }

    #[test]
    fn a_url_encoded_list_is_decoded() {
        let body = r#"<ListBucketResult><EncodingType>url</EncodingType>
            <IsTruncated>false</IsTruncated>
            <Contents><Key>p/a+b%2Bc%25%C3%A9</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><Size>1</Size></Contents>
            <CommonPrefixes><Prefix>p/d%20e/</Prefix></CommonPrefixes>
            </ListBucketResult>"#;
        let page = list_objects_v2(body.as_bytes()).expect("parses");
        assert_eq!(page.objects[0].key, "p/a b+c%é");
        assert_eq!(page.prefixes, ["p/d e/"]);
        assert_eq!(page.next, None);
        for bad in ["%zz", "%C3", "%"] {
            let body = format!(
                "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>{bad}</Key>\
                 <LastModified>2024-01-01T00:00:00Z</LastModified><Size>1</Size></Contents>\
                 </ListBucketResult>"
            );
            assert!(
                matches!(list_objects_v2(body.as_bytes()), Err(XmlError::Bad(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn broken_lists_are_refused_not_panicked_on() {
        let cases = [
            "",
            "not xml",
            "<ListBucketResult>",
            "<ListBucketResult></Other>",
            "<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>",
            "<ListBucketResult><Contents><Key>k</Key><Size>-1</Size>\
             <LastModified>2024-01-01T00:00:00Z</LastModified></Contents></ListBucketResult>",
            "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
            "<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>",
            "<ListBucketResult/><ListBucketResult/>",
            "<ListAllMyBucketsResult/>",
            "<!DOCTYPE x [<!ENTITY a \"b\">]><ListBucketResult/>",
            "<ListBucketResult><Prefix>&unknown;</Prefix></ListBucketResult>",
        ];
        for body in cases {
            assert!(
                matches!(list_objects_v2(body.as_bytes()), Err(XmlError::Bad(_))),
                "{body}"
            );
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(deep.as_bytes()), Err(XmlError::Bad(_))));
        let wide = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS + 1));
        assert!(matches!(parse(wide.as_bytes()), Err(XmlError::Bad(_))));
        assert!(matches!(parse(&[0xff, b'<']), Err(XmlError::Bad(_))));
    }

    #[test]
    fn errors() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Code>NoSuchKey</Code>
  <Message>The resource you requested does not exist</Message>
  <Resource>/mybucket/myfoto.jpg</Resource>
  <RequestId>4442587FB7D0A2F9</RequestId>
</Error>"#;
        assert_eq!(error_code(body.as_bytes()).as_deref(), Some("NoSuchKey"));
        assert_eq!(
            list_objects_v2(body.as_bytes()).map(|_| ()),
            Err(XmlError::S3("NoSuchKey".to_owned()))
        );
        // A code is kept to letters and digits: it ends up in logs.
        assert_eq!(
            error_code(b"<Error><Code>Bad\nCode&lt;x&gt;</Code></Error>").as_deref(),
            Some("BadCodex")
        );
        assert_eq!(error_code(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(error_code(b"Service Unavailable"), None);
        assert_eq!(error_code(b""), None);
    }

    #[test]
    fn initiate_answer() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>example-bucket</Bucket>
  <Key>example-object</Key>
  <UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
</InitiateMultipartUploadResult>"#;
        assert_eq!(
            initiate(body.as_bytes()).as_deref(),
            Ok("VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA")
        );
        assert!(initiate(
            b"<InitiateMultipartUploadResult><UploadId/></InitiateMultipartUploadResult>"
        )
        .is_err());
    }

    #[test]
    fn list_parts_answer() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>example-bucket</Bucket>
  <Key>example-object</Key>
  <UploadId>XXBsb2FkIElEIGZvciBlbHZpbmcncyVcdS1tb3ZpZS5tMnRzEEEwbG9hZA</UploadId>
  <PartNumberMarker>1</PartNumberMarker>
  <NextPartNumberMarker>3</NextPartNumberMarker>
  <MaxParts>2</MaxParts>
  <IsTruncated>true</IsTruncated>
  <Part>
    <PartNumber>2</PartNumber>
    <LastModified>2010-11-10T20:48:34.000Z</LastModified>
    <ETag>"7778aef83f66abc1fa1e8477f296d394"</ETag>
    <Size>10485760</Size>
  </Part>
  <Part>
    <PartNumber>3</PartNumber>
    <LastModified>2010-11-10T20:48:33.000Z</LastModified>
    <ETag>&quot;aaaa18db4cc2f85cedef654fccc4a4x8&quot;</ETag>
    <Size>10485760</Size>
  </Part>
</ListPartsResult>"#;
        let page = list_parts(body.as_bytes()).expect("parses");
        assert_eq!(page.next, Some(3));
        assert_eq!(
            page.parts,
            [
                Part {
                    number: 2,
                    etag: "7778aef83f66abc1fa1e8477f296d394".to_owned(),
                    size: 10_485_760
                },
                Part {
                    number: 3,
                    etag: "aaaa18db4cc2f85cedef654fccc4a4x8".to_owned(),
                    size: 10_485_760
                },
            ]
        );
    }

    #[test]
    fn list_uploads_answer() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>my-movie.m2ts</NextKeyMarker>
  <NextUploadIdMarker>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ</NextUploadIdMarker>
  <MaxUploads>3</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>my-divisor</Key>
    <UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>
    <Initiator><ID>arn:aws:iam::111122223333:user/user1</ID><DisplayName>user1</DisplayName></Initiator>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>my-movie.m2ts</Key>
    <UploadId>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ</UploadId>
    <Initiated>2010-11-10T20:49:33.000Z</Initiated>
  </Upload>
</ListMultipartUploadsResult>"#;
        let page = list_uploads(body.as_bytes()).expect("parses");
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].key, "my-divisor");
        assert_eq!(
            page.uploads[1].upload_id,
            "YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ"
        );
        assert_eq!(
            page.uploads[1].initiated,
            UNIX_EPOCH + Duration::from_secs(1_289_422_173)
        );
        assert_eq!(
            page.next,
            Some((
                "my-movie.m2ts".to_owned(),
                "YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ".to_owned()
            ))
        );
    }

    #[test]
    fn copy_answers() {
        let object = r#"<?xml version="1.0" encoding="UTF-8"?>
<CopyObjectResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <LastModified>2009-10-28T22:32:00.000Z</LastModified>
  <ETag>"9b2cf535f27731c974343645a3985328"</ETag>
</CopyObjectResult>"#;
        assert_eq!(
            copy_result(object.as_bytes(), "CopyObjectResult").as_deref(),
            Ok("9b2cf535f27731c974343645a3985328")
        );
        let part = r#"<CopyPartResult><LastModified>2011-04-11T20:34:56.000Z</LastModified><ETag>"9b2cf535f27731c974343645a3985328"</ETag></CopyPartResult>"#;
        assert_eq!(
            copy_result(part.as_bytes(), "CopyPartResult").as_deref(),
            Ok("9b2cf535f27731c974343645a3985328")
        );
        // 200 with an error inside, as S3 documents for copies.
        let failed = "<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>";
        assert_eq!(
            copy_result(failed.as_bytes(), "CopyObjectResult"),
            Err(XmlError::S3("InternalError".to_owned()))
        );
        assert_eq!(
            copy_result(part.as_bytes(), "CopyObjectResult"),
            Err(XmlError::Bad("unexpected root element"))
        );
    }

    #[test]
    fn complete_answers_and_body() {
        let ok = r#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Location>http://Example-Bucket.s3.region.amazonaws.com/Example-Object</Location>
  <Bucket>Example-Bucket</Bucket>
  <Key>Example-Object</Key>
  <ETag>"3858f62230ac3c915f300c664312c11f-9"</ETag>
</CompleteMultipartUploadResult>"#;
        assert_eq!(complete_result(ok.as_bytes()), Ok(()));
        let failed = "<?xml version=\"1.0\"?>\n\n<Error><Code>InternalError</Code></Error>";
        assert_eq!(
            complete_result(failed.as_bytes()),
            Err(XmlError::S3("InternalError".to_owned()))
        );
        assert_eq!(
            complete_body(&[(1, "\"a1\"".to_owned()), (2, "b<2>".to_owned())]),
            "<CompleteMultipartUpload>\
             <Part><PartNumber>1</PartNumber><ETag>\"a1\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"b&lt;2&gt;\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn etags() {
        assert_eq!(clean_etag("\"abc-2\"").as_deref(), Some("abc-2"));
        assert_eq!(clean_etag("abc").as_deref(), Some("abc"));
        assert_eq!(clean_etag("\"\""), None);
        assert_eq!(clean_etag("a b"), None);
        assert_eq!(clean_etag("é"), None);
    }
}
