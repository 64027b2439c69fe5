//! Every way a request can fail, and the one place each becomes a reply.
//! Replies name the problem in our words; a library's error text never
//! reaches a client (it goes to the log).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dropvault_core::session::LoginError;
use dropvault_core::vault::VaultError;

use crate::tus::TUS_RESUMABLE;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// Nothing here (an unknown, revoked or used-up link; an unknown upload).
    #[error("not found")]
    NotFound,
    /// It was here and has expired.
    #[error("gone")]
    Gone,
    /// A request the protocol does not allow.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `Tus-Resumable` missing or another version.
    #[error("unsupported tus version")]
    TusVersion,
    /// Not `application/offset+octet-stream`.
    #[error("unsupported media type")]
    MediaType,
    /// `Upload-Offset` is not where the upload can continue.
    #[error("offset mismatch")]
    Offset {
        /// Where it can.
        available: u64,
    },
    /// Another request works on this upload.
    #[error("upload busy")]
    Locked,
    /// Over a size limit (the file, the link's bytes, the quota).
    #[error("too large")]
    TooLarge,
    /// `Upload-Checksum` does not match the body.
    #[error("checksum mismatch")]
    Checksum,
    /// The scanner found something: the file was not kept.
    #[error("rejected")]
    Rejected {
        /// What it found.
        finding: String,
    },
    /// Log in, or unlock the link, first.
    #[error("unauthorized")]
    Unauthorized,
    /// Wrong password.
    #[error("wrong password")]
    WrongPassword,
    /// Not allowed (a link that has let in all it may; a banned client).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Too many requests; try again after this many seconds.
    #[error("too many requests")]
    TooMany(u64),
    /// Something the server needs does not answer (storage, key service,
    /// accounts); worth trying again.
    #[error("unavailable")]
    Unavailable,
    /// The server's own trouble (logged where it happened).
    #[error("internal error")]
    Internal,
}

impl From<VaultError> for HttpError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound => Self::NotFound,
            VaultError::AlreadyExists => Self::BadRequest("a file of that name exists"),
            VaultError::NotADirectory | VaultError::IsADirectory | VaultError::InvalidPath(_) => {
                Self::BadRequest("not a valid path")
            }
            VaultError::NotEmpty => Self::BadRequest("folder not empty"),
            VaultError::PermissionDenied => Self::Forbidden("not allowed"),
            VaultError::Busy => Self::Locked,
            VaultError::BadOffset { available, .. } => Self::Offset { available },
            VaultError::Rejected { finding, .. } => Self::Rejected { finding },
            VaultError::QuotaExceeded { .. } | VaultError::StagingFull { .. } => Self::TooLarge,
            VaultError::Unavailable { .. } | VaultError::ScanFailed { .. } => Self::Unavailable,
            other => {
                tracing::error!(error = %other, "https: storage failed");
                Self::Internal
            }
        }
    }
}

impl From<LoginError> for HttpError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::Banned => Self::Forbidden("too many failed logins from this address"),
            LoginError::Wrong => Self::Unauthorized,
            LoginError::Unavailable(_) => Self::Unavailable,
            LoginError::KeyRefused => Self::Forbidden("the key service cannot unlock this account"),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not found"),
            Self::Gone => (StatusCode::GONE, "expired"),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, *why),
            Self::TusVersion => (
                StatusCode::PRECONDITION_FAILED,
                "Tus-Resumable 1.0.0 needed",
            ),
            Self::MediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type application/offset+octet-stream needed",
            ),
            Self::Offset { .. } => (
                StatusCode::CONFLICT,
                "Upload-Offset is not the upload's offset",
            ),
            Self::Locked => (StatusCode::LOCKED, "another request is writing this upload"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too large"),
            Self::Checksum => (checksum_mismatch(), "checksum mismatch"),
            Self::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "login incorrect"),
            Self::WrongPassword => (StatusCode::FORBIDDEN, "wrong password"),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, *why),
            Self::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too many requests"),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unavailable; try again later",
            ),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        let body = match &self {
            Self::Rejected { finding } => {
                serde_json::json!({ "error": "rejected", "finding": finding })
            }
            _ => serde_json::json!({ "error": message }),
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{body}\n"),
        )
            .into_response();
        let h = response.headers_mut();
        h.insert("tus-resumable", HeaderValue::from_static(TUS_RESUMABLE));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::Offset { available } => {
                h.insert("upload-offset", HeaderValue::from(available));
            }
            Self::TooMany(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        response
    }
}

/// 460, which tus's checksum extension uses for a body that does not
/// match its `Upload-Checksum`.
fn checksum_mismatch() -> StatusCode {
    StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
}
