//! The one place where storage errors become SFTP status codes and
//! messages. Messages say what the user can do; library error text goes to
//! the operator's log, never to the client.

use dropvault_core::vault::VaultError;

use crate::proto::{
    STATUS_FAILURE, STATUS_NO_SUCH_FILE, STATUS_OP_UNSUPPORTED, STATUS_PERMISSION_DENIED,
};

/// A status reply waiting for its request id: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) code: u32,
    pub(crate) message: String,
}

impl Status {
    pub(crate) fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn failure(message: impl Into<String>) -> Self {
        Self::new(STATUS_FAILURE, message)
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(STATUS_OP_UNSUPPORTED, message)
    }

    /// The packet, for request `id`.
    pub(crate) fn to_reply(&self, id: u32) -> Vec<u8> {
        crate::proto::reply::status(id, self.code, &self.message)
    }
}

impl From<VaultError> for Status {
    fn from(e: VaultError) -> Self {
        vault_status(&e)
    }
}

impl From<&VaultError> for Status {
    fn from(e: &VaultError) -> Self {
        vault_status(e)
    }
}

/// The text a client may see of a scanner's finding: its first word, in
/// printable ASCII, at most 64 characters. A finding is a signature name;
/// anything more (a path, a message) stays in the log.
fn finding_token(finding: &str) -> String {
    let token: String = finding
        .split_whitespace()
        .next()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_graphic)
        .take(64)
        .collect();
    if token.is_empty() {
        "unnamed finding".to_owned()
    } else {
        token
    }
}

/// The status for a failed file operation.
pub(crate) fn vault_status(e: &VaultError) -> Status {
    match e {
        VaultError::NotFound => Status::new(STATUS_NO_SUCH_FILE, "No such file or folder"),
        // Version 3 has no "already exists" code; OpenSSH sends FAILURE too.
        VaultError::AlreadyExists => Status::failure("Already exists"),
        // As OpenSSH maps ENOTDIR: the path names nothing usable.
        VaultError::NotADirectory => Status::new(STATUS_NO_SUCH_FILE, "Not a folder"),
        VaultError::IsADirectory => Status::failure("Is a folder"),
        VaultError::NotEmpty => Status::failure("Folder not empty"),
        VaultError::InvalidPath(why) => Status::failure(format!("Name not allowed: {why}")),
        VaultError::PermissionDenied => Status::new(STATUS_PERMISSION_DENIED, "Not allowed"),
        VaultError::Busy => Status::failure("Another upload to this file is in progress"),
        VaultError::BadOffset {
            requested,
            available,
        } => Status::failure(format!(
            "Cannot continue this file at offset {requested}; continue at {available} or write it from the start"
        )),
        VaultError::Format(fe) => {
            tracing::error!(error = %fe, "stored file failed to open");
            Status::failure("Stored file is damaged; it cannot be read")
        }
        VaultError::Rejected { finding, .. } => Status::failure(format!(
            "rejected by the malware scanner: {}; the file was not stored",
            finding_token(finding)
        )),
        VaultError::ScanFailed { reason } => {
            tracing::error!(error = %reason, "malware scan failed; upload refused");
            Status::failure("Upload not stored: the malware scan is unavailable; try again later")
        }
        VaultError::QuotaExceeded { .. } => Status::failure(
            "Quota exceeded: the upload would take you past your storage quota; nothing of it \
             was kept. Delete files to make room",
        ),
        VaultError::StagingFull { limit } => {
            tracing::warn!(limit, "upload refused: the user's staging bound is reached");
            Status::failure(
                "Upload refused: your unfinished uploads would exceed their storage allowance; \
                 nothing of it was kept. Finish or restart your interrupted uploads first",
            )
        }
        VaultError::EmptyResume { offset } => Status::failure(format!(
            "Nothing received after offset {offset}: not stored. Send the rest of the file"
        )),
        VaultError::Io(io) => {
            tracing::error!(error = %io, "storage error");
            Status::failure("Storage error; try again later")
        }
        VaultError::Unavailable { reason } => {
            tracing::error!(error = %reason, "storage unavailable");
            Status::failure("Storage unavailable; try again later")
        }
        other => {
            tracing::error!(error = %other, "vault error");
            Status::failure("Local error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_text_never_reaches_the_client() {
        let io = VaultError::Io(std::io::Error::other("secret /srv/data/alice path"));
        assert!(!vault_status(&io).message.contains("secret"));
        let scan = VaultError::ScanFailed {
            reason: "clamd at /run/clamd.sock: refused".into(),
        };
        assert!(!vault_status(&scan).message.contains("clamd"));
    }

    #[test]
    fn a_finding_is_reduced_to_its_token() {
        let e = VaultError::Rejected {
            finding: "Win.Test.EICAR_HDB-1 FOUND in /tmp/x\r\nmore".into(),
            size: 68,
        };
        let s = vault_status(&e);
        assert_eq!(s.code, STATUS_FAILURE);
        assert_eq!(
            s.message,
            "rejected by the malware scanner: Win.Test.EICAR_HDB-1; the file was not stored"
        );
        assert_eq!(finding_token("  \u{7}\u{1b}  "), "unnamed finding");
    }

    #[test]
    fn not_found_is_no_such_file() {
        assert_eq!(
            vault_status(&VaultError::NotFound).code,
            STATUS_NO_SUCH_FILE
        );
        assert_eq!(
            vault_status(&VaultError::PermissionDenied).code,
            STATUS_PERMISSION_DENIED
        );
    }
}
