//! USER and PASS. Replies never say whether a user exists. Each password
//! check draws on the client's guess budget (`dropvault_core::guard`):
//! failures are counted per client and account, a banned client's PASS is
//! refused even on a session opened before the ban, and a session is closed
//! after `max_login_failures`. A server-side fault is not a wrong password
//! and counts for nothing: an accounts backend or key service that is
//! unavailable is `421` "try again later"; a key the service refuses for
//! good is `530` "contact the operator".

use dropvault_core::accounts::{AuthError, Password};
use dropvault_core::events::Event;
use dropvault_core::guard::{Attempt, Failure};
use dropvault_core::keys::KeyError;

use crate::proto::{self, Reply};
use crate::session::{Flow, LoggedIn, Login, Session};

/// How a password check ended.
enum Checked {
    /// Right password, key unlocked.
    In(
        dropvault_core::accounts::Account,
        std::sync::Arc<dropvault_core::keys::UserKey>,
    ),
    /// Wrong password, unknown user, or an account that may not log in
    /// (why, for the log).
    Wrong(Option<String>),
    /// The accounts backend failed.
    AuthFault(AuthError),
    /// The key service failed.
    KeyFault(KeyError),
}

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
        let peer = self.peer;
        let password = String::from_utf8(pw.as_bytes().to_vec())
            .ok()
            .map(Password::new);
        drop(pw);
        // The client's budget: waits while its checks in flight (from any
        // of its sessions) and recent failures use it up; refused if banned.
        let guard = self.shared.guard.clone();
        let attempt = match tokio::time::timeout_at(
            self.login_deadline,
            guard.attempt(self.admission.client()),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(refused)) => {
                tracing::warn!(event = "login_refused", user = %name, %peer, reason = %refused);
                self.reply(Reply::closing(
                    "Too many failed logins from your address; try again later.",
                ))
                .await?;
                return Ok(Flow::Close);
            }
            Err(_) => {
                tracing::info!(event = "login_timeout", %peer);
                self.reply(Reply::closing("Login timeout; closing."))
                    .await?;
                return Ok(Flow::Close);
            }
        };
        let services = self.shared.services.clone();
        let user = name.clone();
        // Password checks and key unwrapping block (argon2id, PAM, RSA, a
        // request to the key service): off the async runtime. The users
        // file bounds its own argon2 work; nothing here waits for other
        // logins' checks.
        let checked = tokio::task::spawn_blocking(move || {
            let Some(password) = password else {
                return Checked::Wrong(None);
            };
            let account = match services.auth.authenticate(&user, &password) {
                Ok(Some(account)) => account,
                Ok(None) => return Checked::Wrong(None),
                Err(AuthError::Refused { reason, .. }) => return Checked::Wrong(Some(reason)),
                Err(e) => return Checked::AuthFault(e),
            };
            match services.keyring.unlock(&account.name) {
                Ok(key) => Checked::In(account, key),
                Err(e) => Checked::KeyFault(e),
            }
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;

        match checked {
            Checked::In(account, key) => match self.shared.services.vault.for_user(key) {
                Ok(vault) => {
                    attempt.succeeded(&name);
                    if let Some(tls) = &self.tls {
                        tls.logged_in(&account.name);
                    }
                    tracing::info!(event = "login", user = %account.name, %peer, tls = self.control.is_tls());
                    let events = self.shared.services.events.clone();
                    events.emit(Event::new("login").user(&account.name).peer(peer));
                    self.login = Login::In(LoggedIn {
                        vault,
                        cwd: dropvault_core::vault::VPath::root(),
                        peer,
                        events,
                    });
                    self.reply(Reply::logged_in()).await?;
                    Ok(Flow::Continue)
                }
                Err(e) => {
                    tracing::error!(event = "login_refused", user = %account.name, %peer, error = %e);
                    self.try_later("storage is unavailable").await
                }
            },
            Checked::Wrong(reason) => {
                if let Some(reason) = reason {
                    tracing::warn!(event = "login_refused", user = %name, %peer, reason = %reason);
                }
                self.failed_login(&name, attempt).await
            }
            Checked::AuthFault(e) => {
                tracing::error!(event = "login_refused", user = %name, %peer, error = %e,
                    "accounts backend failed");
                self.try_later("accounts are unavailable").await
            }
            Checked::KeyFault(e) => {
                tracing::error!(event = "login_refused", user = %name, %peer, error = %e,
                    transient = e.is_transient(), "key service failed");
                if e.is_transient() {
                    return self.try_later("the key service is unavailable").await;
                }
                // Refused for good (a lost key-encryption key, a key
                // version the service no longer decrypts): not the
                // client's guess, and trying again will not help.
                self.reply(Reply::not_logged_in(
                    "Login refused: the key service cannot unlock your key. \
                     Contact the operator.",
                ))
                .await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// A login that failed on the server's side: `421`, and the session
    /// ends (the client may reconnect at once; nothing was counted).
    async fn try_later(&mut self, what: &str) -> std::io::Result<Flow> {
        self.reply(Reply::closing(format!(
            "Login refused: {what}. Try again later."
        )))
        .await?;
        Ok(Flow::Close)
    }

    async fn failed_login(&mut self, name: &str, attempt: Attempt) -> std::io::Result<Flow> {
        let peer = self.peer;
        // Counted before the delay, so the budget is right while it runs.
        let verdict = attempt.failed(name);
        self.login_failures += 1;
        tracing::warn!(event = "login_failed", user = %name, %peer);
        self.shared
            .services
            .events
            .emit(Event::new("login_failed").user(name).peer(peer));
        // Served holding nothing: other logins go on meanwhile.
        tokio::time::sleep(self.shared.config.failed_login_delay).await;
        if verdict == Failure::Banned {
            tracing::warn!(event = "banned", %peer, client = %self.admission.client(),
                "too many failed logins");
            self.reply(Reply::closing("Too many failed logins; try again later."))
                .await?;
            return Ok(Flow::Close);
        }
        if self.login_failures >= self.shared.config.max_login_failures {
            self.reply(Reply::closing("Too many failed logins; closing."))
                .await?;
            return Ok(Flow::Close);
        }
        self.reply(Reply::not_logged_in("Login incorrect.")).await?;
        Ok(Flow::Continue)
    }
}
