//! USER and PASS: FTP's words for the core's login
//! (`dropvault_core::session::Gate::login`), which does the checking, the
//! ban accounting and the records. Replies never say whether a user exists.
//! A banned client's PASS is refused even on a session opened before the
//! ban, and a session is closed after `max_login_failures`. A server-side
//! fault is not a wrong password and counts for nothing: an accounts
//! backend or key service that is unavailable is `421` "try again later";
//! a key the service refuses for good is `530` "contact the operator".

use std::sync::Arc;

use dropvault_core::accounts::Password;
use dropvault_core::session::{Credential, LoginError};

use crate::proto::{self, Reply};
use crate::session::{Flow, LoggedIn, Login, Session};

impl Session {
    pub(crate) fn cmd_user(&mut self, name: String) -> Reply {
        if matches!(self.login, Login::In(_)) {
            return Reply::bad_sequence("Already logged in.");
        }
        self.login = Login::Named(name);
        Reply::need_password()
    }

    pub(crate) async fn cmd_pass(&mut self, pw: proto::Password) -> std::io::Result<Flow> {
        let name = match std::mem::replace(&mut self.login, Login::None) {
            Login::Named(n) => n,
            Login::In(u) => {
                self.login = Login::In(u);
                self.reply(Reply::bad_sequence("Already logged in."))
                    .await?;
                return Ok(Flow::Continue);
            }
            Login::None => {
                self.reply(Reply::bad_sequence("Send USER first.")).await?;
                return Ok(Flow::Continue);
            }
        };
        let cred = match String::from_utf8(pw.as_bytes().to_vec()) {
            Ok(p) => Credential::Password(Password::new(p)),
            Err(e) => {
                // The copy holds the password too.
                zeroize::Zeroize::zeroize(&mut e.into_bytes());
                Credential::Unusable
            }
        };
        drop(pw);
        let gate = self.shared.gate.clone();
        let login =
            tokio::time::timeout_at(self.login_deadline, gate.login(&self.who, &name, cred));
        let user = match login.await {
            Ok(Ok(user)) => user,
            Ok(Err(e)) => return self.login_failed(e).await,
            Err(_) => {
                tracing::info!(event = "login_timeout", peer = %self.peer);
                self.reply(Reply::closing("Login timeout; closing."))
                    .await?;
                return Ok(Flow::Close);
            }
        };
        if let Some(tls) = &self.tls {
            tls.logged_in(user.user());
        }
        self.login = Login::In(LoggedIn {
            user: Arc::new(user),
            cwd: dropvault_core::vault::VPath::root(),
        });
        self.reply(Reply::logged_in()).await?;
        Ok(Flow::Continue)
    }

    /// The reply to a login that did not succeed: this front end's one
    /// mapping of [`LoginError`].
    async fn login_failed(&mut self, e: LoginError) -> std::io::Result<Flow> {
        let (reply, flow) = match e {
            LoginError::Banned => (
                Reply::closing("Too many failed logins from your address; try again later."),
                Flow::Close,
            ),
            LoginError::Wrong => {
                self.login_failures += 1;
                if self.login_failures >= self.shared.config.max_login_failures {
                    (
                        Reply::closing("Too many failed logins; closing."),
                        Flow::Close,
                    )
                } else {
                    (Reply::not_logged_in("Login incorrect."), Flow::Continue)
                }
            }
            // The client may reconnect at once; nothing was counted.
            LoginError::Unavailable(what) => (
                Reply::closing(format!(
                    "Login refused: {what} is unavailable. Try again later."
                )),
                Flow::Close,
            ),
            // Refused for good: not the client's guess, and trying again
            // will not help.
            LoginError::KeyRefused => (
                Reply::not_logged_in(
                    "Login refused: the key service cannot unlock your key. \
                     Contact the operator.",
                ),
                Flow::Continue,
            ),
        };
        self.reply(reply).await?;
        Ok(flow)
    }
}
