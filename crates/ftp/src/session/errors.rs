//! The one place where storage and crypto errors become FTP replies. Texts
//! say what the user can do; details go to the operator's log.

use dropvault_core::vault::VaultError;

use super::data::DataError;
use super::stream::Stalling;
use crate::proto::Reply;

/// The reply for a failed file operation.
pub(crate) fn vault_reply(e: &VaultError) -> Reply {
    match e {
        VaultError::NotFound => Reply::new(550, "No such file or folder."),
        VaultError::AlreadyExists => Reply::new(550, "Already exists."),
        VaultError::NotADirectory => Reply::new(550, "Not a folder."),
        VaultError::IsADirectory => Reply::new(550, "Is a folder."),
        VaultError::NotEmpty => Reply::new(550, "Folder not empty."),
        VaultError::InvalidPath(why) => Reply::new(553, format!("Name not allowed: {why}.")),
        VaultError::PermissionDenied => Reply::new(550, "Not allowed."),
        VaultError::Busy => Reply::new(450, "Another upload to this file is in progress."),
        VaultError::BadOffset {
            requested,
            available,
        } => Reply::new(
            554,
            format!("Cannot restart at {requested}; restart at {available} or at 0."),
        ),
        VaultError::Format(fe) => {
            tracing::error!(error = %fe, "stored file failed to open");
            Reply::new(451, "Stored file is damaged; it cannot be read.")
        }
        VaultError::Rejected { finding, .. } => Reply::new(
            550,
            format!("Upload rejected: {finding}. The file was not stored."),
        ),
        VaultError::ScanFailed { reason } => {
            tracing::error!(error = %reason, "malware scan failed; upload refused");
            Reply::new(
                451,
                "Upload not stored: the malware scan is unavailable. Try again later.",
            )
        }
        VaultError::QuotaExceeded { .. } => Reply::new(
            552,
            "Quota exceeded: the upload would take you past your storage quota. Nothing of it \
             was kept; delete files to make room.",
        ),
        VaultError::StagingFull { limit } => {
            tracing::warn!(limit, "upload refused: the user's staging bound is reached");
            Reply::new(
                552,
                "Upload refused: your unfinished uploads would exceed their storage allowance. \
                 Nothing of it was kept; finish or restart your interrupted uploads first.",
            )
        }
        VaultError::EmptyResume { offset } => Reply::new(
            554,
            format!("Nothing received after the restart point {offset}: not stored. Send the rest of the file."),
        ),
        VaultError::Io(io) => {
            tracing::error!(error = %io, "storage error");
            Reply::local_error("Storage error; try again later.")
        }
        VaultError::Unavailable { reason } => {
            tracing::error!(error = %reason, "storage unavailable");
            Reply::local_error("Storage unavailable; try again later.")
        }
        other => {
            tracing::error!(error = %other, "vault error");
            Reply::local_error("Local error.")
        }
    }
}

/// The reply for a data connection that could not be made. What went
/// wrong underneath goes to the log, not to the client.
pub(crate) fn data_reply(e: &DataError) -> Reply {
    match e {
        DataError::NoPlan => Reply::bad_sequence("Use PASV, EPSV, PORT or EPRT first."),
        DataError::NoSessionReuse => Reply::new(
            522,
            "Data connection must resume a TLS session of your login (TLS session reuse).",
        ),
        DataError::Tls(io) => {
            tracing::info!(error = %io, "TLS handshake on a data connection failed");
            Reply::new(522, "TLS handshake on the data connection failed.")
        }
        DataError::Timeout => Reply::cannot_open_data("No data connection within the time limit."),
        DataError::Io(io) => {
            tracing::info!(error = %io, "data connection failed");
            Reply::cannot_open_data("Cannot open the data connection.")
        }
    }
}

/// The reply for a transfer that broke off mid-way. A data connection
/// that stalled ends the session, as vsftpd's data timeout does: the
/// client is gone or stuck, and the session's upload lock is let go.
pub(crate) fn transfer_reply(e: &std::io::Error) -> Reply {
    if Stalling::<()>::is_stall(e) {
        tracing::info!("data connection stalled; closing the session");
        return Reply::closing("No data moved within the time limit; transfer aborted, closing.");
    }
    if let Some(fe) = dropvault_format::Error::from_io(e) {
        tracing::error!(error = %fe, "stored file failed authentication during download");
        return Reply::new(451, "Stored file is damaged; transfer stopped.");
    }
    tracing::info!(error = %e, "data connection broke off");
    Reply::transfer_aborted("Data connection broke off; transfer incomplete.")
}
