//! Users' SSH public keys: `.pub` / `authorized_keys` lines parsed and
//! checked here, without an SSH library, and their OpenSSH fingerprints.
//!
//! A line is `TYPE BASE64 [COMMENT]`, where BASE64 is the key's SSH wire
//! encoding (the "blob"), which starts with TYPE again. Accepted types are
//! `ssh-ed25519` and `ecdsa-sha2-nistp256/384/521`.
//!
//! RSA keys are refused: the SSH library verifies RSA signatures only
//! through the `rsa` crate, which this project does not use
//! (RUSTSEC-2023-0071, a timing side channel without a fix). DSA, security
//! keys (`sk-…`) and certificates are refused too.
//!
//! Errors never quote the line: someone may paste a private key by mistake.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;

/// Longest key line accepted, in bytes (an ecdsa-sha2-nistp521 line is
/// about 270 bytes; the rest is room for a comment).
pub const MAX_KEY_LINE_LEN: usize = 16 * 1024;

/// Most keys one user may have.
pub const MAX_KEYS_PER_USER: usize = 100;

/// The SSH public key types accepted for users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    EcdsaP256,
    /// `ecdsa-sha2-nistp384`.
    EcdsaP384,
    /// `ecdsa-sha2-nistp521`.
    EcdsaP521,
}

impl KeyType {
    const ALL: [KeyType; 4] = [
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::EcdsaP521,
    ];

    /// The SSH name of the type, as in a `.pub` line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
            KeyType::EcdsaP384 => "ecdsa-sha2-nistp384",
            KeyType::EcdsaP521 => "ecdsa-sha2-nistp521",
        }
    }

    /// The type of SSH name `name`, if it is one accepted here.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The key size in bits, as `ssh-keygen -l` shows it.
    pub fn bits(self) -> u32 {
        match self {
            KeyType::Ed25519 | KeyType::EcdsaP256 => 256,
            KeyType::EcdsaP384 => 384,
            KeyType::EcdsaP521 => 521,
        }
    }

    /// The curve name inside an ecdsa blob and the length of its point
    /// (uncompressed: 0x04, X, Y).
    fn curve(self) -> Option<(&'static str, usize)> {
        match self {
            KeyType::Ed25519 => None,
            KeyType::EcdsaP256 => Some(("nistp256", 65)),
            KeyType::EcdsaP384 => Some(("nistp384", 97)),
            KeyType::EcdsaP521 => Some(("nistp521", 133)),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key line or blob was refused. The messages never quote the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// An `ssh-rsa` key.
    #[error(
        "RSA keys (ssh-rsa) are not supported: the SSH library verifies RSA signatures only \
         through the `rsa` crate, which dropvault does not use (RUSTSEC-2023-0071); use an \
         ed25519 key (ssh-keygen -t ed25519) or an ecdsa one"
    )]
    Rsa,
    /// A type that is known but refused (DSA, security keys,
    /// certificates), or unknown.
    #[error("{0}; use ssh-ed25519 or ecdsa-sha2-nistp256/384/521")]
    Unsupported(String),
    /// The line starts with `authorized_keys` options.
    #[error("authorized_keys options before the key type are not supported; give the key alone")]
    Options,
    /// A private key instead of a public one.
    #[error("this is a private key; give the public key (the .pub file)")]
    PrivateKey,
    /// The line is longer than [`MAX_KEY_LINE_LEN`].
    #[error("the key line is longer than {MAX_KEY_LINE_LEN} bytes")]
    TooLong,
    /// Not `TYPE BASE64 [COMMENT]`, or a blob that is not a valid key.
    #[error("malformed public key: {0}")]
    Malformed(&'static str),
    /// The type before the base64 is not the type inside it.
    #[error("the line says {line} but the key inside is {inner}")]
    TypeMismatch {
        /// The type the line names.
        line: KeyType,
        /// The type inside the blob (sanitized).
        inner: String,
    },
    /// The comment has control characters.
    #[error("the comment has control characters")]
    BadComment,
}

/// A user's SSH public key: its type, its wire encoding (blob) and the
/// comment of its line. All of it is public; nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    kind: KeyType,
    blob: Vec<u8>,
    comment: String,
}

impl SshPublicKey {
    /// Parses one `.pub` line: `TYPE BASE64 [COMMENT]` (trailing line end
    /// and spaces ignored).
    pub fn parse_line(line: &str) -> Result<Self, KeyError> {
        if line.len() > MAX_KEY_LINE_LEN {
            return Err(KeyError::TooLong);
        }
        let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.starts_with("-----BEGIN") || line.contains("PRIVATE KEY") {
            return Err(KeyError::PrivateKey);
        }
        let mut rest = line;
        let mut token = || {
            let t = rest.trim_start_matches([' ', '\t']);
            let end = t.find([' ', '\t']).unwrap_or(t.len());
            let (tok, after) = t.split_at(end);
            rest = after;
            tok
        };
        let type_name = token();
        let data = token();
        let comment = rest.trim_matches([' ', '\t']);
        if type_name.is_empty() {
            return Err(KeyError::Malformed("empty line"));
        }
        let kind = match KeyType::from_name(type_name) {
            Some(k) => k,
            None => {
                // `from="..." ssh-ed25519 AAAA...` or `restrict ssh-...`.
                let later_type = line
                    .split([' ', '\t'])
                    .skip(1)
                    .any(|t| KeyType::from_name(t).is_some() || refused(t).is_some());
                if later_type || type_name.contains(['=', '"', ',']) {
                    return Err(KeyError::Options);
                }
                return Err(refused(type_name).unwrap_or_else(|| {
                    KeyError::Unsupported(format!("unknown key type {}", printable(type_name)))
                }));
            }
        };
        if data.is_empty() {
            return Err(KeyError::Malformed("no base64 key after the type"));
        }
        let blob = STANDARD
            .decode(data)
            .map_err(|_| KeyError::Malformed("the key is not valid base64"))?;
        let inner = blob_type(&blob)?;
        if inner != kind.as_str() {
            return Err(KeyError::TypeMismatch {
                line: kind,
                inner: printable(inner),
            });
        }
        if comment.chars().any(char::is_control) {
            return Err(KeyError::BadComment);
        }
        let mut key = Self::from_blob(&blob)?;
        key.comment = comment.to_owned();
        Ok(key)
    }

    /// Checks an SSH wire encoding of a public key (no comment).
    pub fn from_blob(blob: &[u8]) -> Result<Self, KeyError> {
        let mut r = Reader(blob);
        let name = r.string()?;
        let name = std::str::from_utf8(name).map_err(|_| KeyError::Malformed("key type"))?;
        let kind = match KeyType::from_name(name) {
            Some(k) => k,
            None => {
                return Err(refused(name).unwrap_or_else(|| {
                    KeyError::Unsupported(format!("unknown key type {}", printable(name)))
                }))
            }
        };
        match kind.curve() {
            None => {
                if r.string()?.len() != 32 {
                    return Err(KeyError::Malformed("an ed25519 key is 32 bytes"));
                }
            }
            Some((curve, point_len)) => {
                if r.string()? != curve.as_bytes() {
                    return Err(KeyError::Malformed("the curve does not match the type"));
                }
                let point = r.string()?;
                if point.len() != point_len || point.first() != Some(&4) {
                    return Err(KeyError::Malformed(
                        "the ecdsa point is not an uncompressed point of the curve",
                    ));
                }
            }
        }
        if !r.0.is_empty() {
            return Err(KeyError::Malformed("extra bytes after the key"));
        }
        Ok(Self {
            kind,
            blob: blob.to_vec(),
            comment: String::new(),
        })
    }

    /// The key type.
    pub fn kind(&self) -> KeyType {
        self.kind
    }

    /// The SSH wire encoding of the key.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The comment of the line it came from (may be empty).
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// OpenSSH's fingerprint: `SHA256:` and unpadded base64.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.blob)
    }

    /// The `.pub` line: `TYPE BASE64[ COMMENT]`.
    pub fn to_line(&self) -> String {
        let mut line = format!("{} {}", self.kind, STANDARD.encode(&self.blob));
        if !self.comment.is_empty() {
            line.push(' ');
            line.push_str(&self.comment);
        }
        line
    }
}

/// OpenSSH's fingerprint of a key blob, as `ssh-keygen -l` prints it:
/// `SHA256:` and the base64 (no padding) of the blob's SHA-256.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, blob);
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref()))
}

/// The refusal for a type that is known but not accepted.
fn refused(name: &str) -> Option<KeyError> {
    let why = if name == "ssh-rsa" {
        return Some(KeyError::Rsa);
    } else if name.contains("-cert-v0") {
        "SSH certificates are not supported"
    } else if name.starts_with("sk-") {
        "security-key (sk-…) keys are not supported"
    } else if name == "ssh-dss" {
        "DSA keys (ssh-dss) are not supported"
    } else if name.starts_with("rsa-sha2-") {
        return Some(KeyError::Rsa);
    } else {
        return None;
    };
    Some(KeyError::Unsupported(why.to_owned()))
}

/// A type name fit for a message: itself if it looks like one (short,
/// lower case, with a '-'), else a placeholder; never a piece of base64
/// or of a private key.
fn printable(name: &str) -> String {
    if name.len() <= 64
        && name.contains('-')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'@' | b'.' | b'_')
        })
    {
        format!("{name:?}")
    } else {
        "(not printable)".to_owned()
    }
}

/// The type name at the start of a blob.
fn blob_type(blob: &[u8]) -> Result<&str, KeyError> {
    let name = Reader(blob).string()?;
    std::str::from_utf8(name).map_err(|_| KeyError::Malformed("key type"))
}

/// Reads SSH wire `string`s (u32 big-endian length, then the bytes).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Result<&'a [u8], KeyError> {
        let short = KeyError::Malformed("truncated key");
        let (len, rest) = self.0.split_first_chunk::<4>().ok_or(short.clone())?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| short.clone())?;
        if rest.len() < len {
            return Err(short);
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated by ssh-keygen; the fingerprints are what `ssh-keygen -lf`
    // printed for them.
    const ED25519: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIM1eeSXRznHqj4Gt9jtLh8zgKQMX5hoAcwD/QZYBFgxz alice@laptop";
    const ED25519_FP: &str = "SHA256:eNEEbffEXJA4stPmt3GG8qBLPWztncENpncfqwE4QI8";
    const P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBBBGdMPp\
        mmThRHspMsEzGZlVjm7AYQwHbHzvrnQoBm2RcFrwDHByfv8xFGqUgI7SoqwieOBXe2wNgIn9ewmy15SaAmQBi+KqCkKM\
        Ojj9mS3S7DZeTZi7E2GDb+vWTgdNTg== bob";
    const P384_FP: &str = "SHA256:BTgYg6r49D9InbSRbIO2urRJY23j1c2dzkrFZrRGX30";

    fn wire(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&u32::try_from(p.len()).expect("short").to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    fn line(kind: &str, blob: &[u8]) -> String {
        format!("{kind} {} c", STANDARD.encode(blob))
    }

    #[test]
    fn parses_an_ed25519_line() {
        let key = SshPublicKey::parse_line(&format!("{ED25519}\r\n")).expect("parse");
        assert_eq!(key.kind(), KeyType::Ed25519);
        assert_eq!(key.comment(), "alice@laptop");
        assert_eq!(key.blob().len(), 4 + 11 + 4 + 32);
        assert_eq!(key.to_line(), ED25519);
        // Same blob, another comment: same fingerprint.
        let other =
            SshPublicKey::parse_line(&ED25519.replace("alice@laptop", "x y  z")).expect("parse");
        assert_eq!(other.comment(), "x y  z");
        assert_eq!(other.fingerprint(), key.fingerprint());
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert!(!key.fingerprint().ends_with('='));
        let no_comment = ED25519.rsplit_once(' ').expect("space").0;
        assert_eq!(
            SshPublicKey::parse_line(no_comment)
                .expect("parse")
                .comment(),
            ""
        );
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let ed = SshPublicKey::parse_line(ED25519).expect("ed25519");
        assert_eq!(ed.fingerprint(), ED25519_FP);
        let ec = SshPublicKey::parse_line(P384).expect("p384");
        assert_eq!((ec.kind(), ec.comment()), (KeyType::EcdsaP384, "bob"));
        assert_eq!(ec.fingerprint(), P384_FP);
        assert_eq!(ec.to_line(), P384);
    }

    #[test]
    fn fingerprint_is_openssh_sha256() {
        // SHA-256 of the empty string, base64 unpadded (as `openssl dgst
        // -sha256 -binary | base64` prints it, less the `=`).
        assert_eq!(
            fingerprint(b""),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    #[test]
    fn parses_ecdsa_blobs_of_each_curve() {
        for (kind, curve, len) in [
            ("ecdsa-sha2-nistp256", "nistp256", 65),
            ("ecdsa-sha2-nistp384", "nistp384", 97),
            ("ecdsa-sha2-nistp521", "nistp521", 133),
        ] {
            let mut point = vec![7u8; len];
            point[0] = 4;
            let blob = wire(&[kind.as_bytes(), curve.as_bytes(), &point]);
            let key = SshPublicKey::parse_line(&line(kind, &blob)).expect(kind);
            assert_eq!(key.kind().as_str(), kind);
            // Wrong curve name, wrong point length, compressed point.
            let bad = wire(&[kind.as_bytes(), b"nistp999", &point]);
            assert!(SshPublicKey::from_blob(&bad).is_err());
            let bad = wire(&[kind.as_bytes(), curve.as_bytes(), &point[1..]]);
            assert!(SshPublicKey::from_blob(&bad).is_err());
            point[0] = 2;
            let bad = wire(&[kind.as_bytes(), curve.as_bytes(), &point]);
            assert!(SshPublicKey::from_blob(&bad).is_err());
        }
    }

    #[test]
    fn refuses_rsa_with_the_reason() {
        let blob = wire(&[b"ssh-rsa", &[1, 0, 1], &[0x55; 256]]);
        let err = SshPublicKey::parse_line(&line("ssh-rsa", &blob)).expect_err("rsa");
        assert_eq!(err, KeyError::Rsa);
        let msg = err.to_string();
        assert!(
            msg.contains("RUSTSEC-2023-0071") && msg.contains("ed25519"),
            "{msg}"
        );
        // An RSA blob behind another type name is a mismatch; on its own,
        // still RSA.
        assert!(matches!(
            SshPublicKey::parse_line(&line("ssh-ed25519", &blob)),
            Err(KeyError::TypeMismatch { .. })
        ));
        assert_eq!(SshPublicKey::from_blob(&blob), Err(KeyError::Rsa));
    }

    #[test]
    fn refuses_other_types_options_and_junk() {
        let ed = SshPublicKey::parse_line(ED25519).expect("parse");
        let b64 = STANDARD.encode(ed.blob());
        for (text, want) in [
            (format!("ssh-dss {b64}"), "DSA"),
            (format!("sk-ssh-ed25519@openssh.com {b64}"), "security-key"),
            (
                format!("ssh-ed25519-cert-v01@openssh.com {b64}"),
                "certificates",
            ),
            (format!("ssh-foo {b64}"), "unknown key type \"ssh-foo\""),
            (format!("from=\"10.0.0.1\" ssh-ed25519 {b64}"), "options"),
            (format!("restrict ssh-ed25519 {b64}"), "options"),
            ("ssh-ed25519".to_owned(), "no base64"),
            ("ssh-ed25519 !!!notbase64".to_owned(), "base64"),
            (format!("ssh-ed25519 {}", &b64[..20]), "malformed"),
            (format!("ecdsa-sha2-nistp256 {b64}"), "the key inside is"),
            (format!("ssh-ed25519 {b64} bell\x07"), "control"),
            ("".to_owned(), "empty"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
                "private key",
            ),
            ("x".repeat(MAX_KEY_LINE_LEN + 1), "longer"),
            ("\u{1b}[31m AAAA".to_owned(), "(not printable)"),
        ] {
            let err = SshPublicKey::parse_line(&text).expect_err(&text);
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
        // Extra bytes after an ed25519 key; a 31-byte key.
        let mut long = ed.blob().to_vec();
        long.push(0);
        assert!(SshPublicKey::from_blob(&long).is_err());
        let short = wire(&[b"ssh-ed25519", &[1u8; 31]]);
        assert!(SshPublicKey::from_blob(&short).is_err());
        // A length field larger than the rest does not panic.
        assert!(SshPublicKey::from_blob(&[0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(SshPublicKey::from_blob(&[]).is_err());
    }

    #[test]
    fn errors_do_not_quote_the_line() {
        let secret = "AAAAsecretsecretsecret";
        let err = SshPublicKey::parse_line(&format!("ssh-ed25519 {secret}")).expect_err("bad");
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = SshPublicKey::parse_line(&format!("{secret} more")).expect_err("bad");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
