//! The one error type of the format crate.
//!
//! Every way a sealed file can be wrong has its own variant, so callers (and
//! the tests) can tell a wrong key from a tampered segment from a truncated
//! stream. Inside `std::io` adapters the error travels as the inner error of
//! an [`std::io::Error`] of kind `InvalidData`; [`Error::from_io`] gets it back.

use std::io;

/// What can go wrong while sealing or opening a dropvault file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the underlying storage failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The first eight bytes are not the dropvault magic: not a sealed file.
    #[error("not a dropvault file (bad magic)")]
    BadMagic,
    /// The header's version byte names a version this build does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The header's algorithm byte names an algorithm this build does not know.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(u8),
    /// The header sets flag bits this build does not know.
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    /// The header names a segment size other than the one version 1 allows.
    #[error("unsupported segment size {0}")]
    UnsupportedSegmentSize(u32),
    /// The file was sealed under a different data key (key id mismatch).
    #[error("file was sealed under a different data key")]
    WrongKey,
    /// The header tag does not verify: the header was modified.
    #[error("header authentication failed")]
    HeaderAuth,
    /// No sealed file can have this many bytes.
    #[error("impossible ciphertext length {0}")]
    InvalidLength(u64),
    /// A segment did not authenticate at its position: modified, moved,
    /// dropped, duplicated or cut.
    #[error("segment {index} failed authentication")]
    SegmentAuth {
        /// Zero-based segment index.
        index: u64,
    },
    /// The stream ends after an authentic segment that is not the final one.
    #[error("file is truncated after segment {index}")]
    Truncated {
        /// Index of the last segment present.
        index: u64,
    },
    /// The final segment is followed by more data.
    #[error("data follows the final segment {index}")]
    TrailingData {
        /// Index of the authentic final segment.
        index: u64,
    },
    /// The file cannot be continued without re-sealing a nonce; the caller
    /// must re-encrypt under a fresh salt (see FORMAT.md, "Resuming").
    #[error("cannot resume: {0}")]
    NotResumable(&'static str),
    /// More segments than the nonce counter can number.
    #[error("file too long for the segment counter")]
    TooLong,
    /// The random number generator or a primitive failed unexpectedly.
    #[error("cryptographic primitive failed")]
    Crypto,
    /// A writer was used after `finish`.
    #[error("writer already finished")]
    Finished,
}

impl Error {
    /// The format error inside an `io::Error` produced by this crate's
    /// reader and writer adapters, if there is one.
    pub fn from_io(err: &io::Error) -> Option<&Error> {
        err.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }

    /// Turns an `io::Error` from this crate's adapters back into the format
    /// error it carries; any other I/O error becomes [`Error::Io`].
    pub fn from_io_owned(err: io::Error) -> Error {
        if Self::from_io(&err).is_none() {
            return Error::Io(err);
        }
        match err.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(format_err)) => *format_err,
            // Unreachable after the check above; kept total rather than panicking.
            _ => Error::Io(io::ErrorKind::InvalidData.into()),
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

impl From<aws_lc_rs::error::Unspecified> for Error {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Error::Crypto
    }
}

/// Result with the format [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
