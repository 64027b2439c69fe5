//! AUTH TLS, PBSZ, PROT (RFC 4217).

use crate::config::TlsMode;
use crate::proto::{Prot, Reply};
use crate::session::{Flow, Session};

impl Session {
    pub(crate) async fn cmd_auth(&mut self) -> std::io::Result<Flow> {
        if self.shared.config.tls == TlsMode::Off || self.shared.tls.is_none() {
            self.reply(Reply::new(534, "TLS is not available.")).await?;
            return Ok(Flow::Continue);
        }
        if self.control.is_tls() {
            self.reply(Reply::bad_sequence("Already using TLS."))
                .await?;
            return Ok(Flow::Continue);
        }
        self.reply(Reply::auth_ok()).await?;
        // RFC 4217: the upgrade resets the session to its start.
        self.login = super::super::Login::None;
        if let Err(e) = self.upgrade_tls().await {
            tracing::info!(event = "tls_failed", peer = %self.peer, error = %e);
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    pub(crate) fn cmd_pbsz(&mut self, _size: u64) -> Reply {
        if !self.control.is_tls() {
            return Reply::bad_sequence("Use AUTH TLS first.");
        }
        self.pbsz = true;
        Reply::ok("PBSZ=0")
    }

    pub(crate) fn cmd_prot(&mut self, p: Prot) -> Reply {
        if !self.control.is_tls() {
            return Reply::bad_sequence("Use AUTH TLS first.");
        }
        if !self.pbsz {
            return Reply::bad_sequence("Use PBSZ first.");
        }
        match p {
            Prot::Private => {
                self.prot_private = true;
                Reply::ok("Data connections will be encrypted.")
            }
            Prot::Clear if self.shared.config.tls == TlsMode::Required => {
                Reply::new(534, "Data connections must be encrypted.")
            }
            Prot::Clear => {
                self.prot_private = false;
                Reply::ok("Data connections will be clear.")
            }
        }
    }
}
