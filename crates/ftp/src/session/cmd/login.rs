//! USER and PASS. Replies never say whether a user exists; failed logins are
//! delayed, counted per client address, and lead to a ban.

use dropvault_core::accounts::Password;
use dropvault_core::events::Event;
use dropvault_core::keys::KeyError;

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
        let peer = self.peer;
        let services = self.shared.services.clone();
        let password = String::from_utf8(pw.as_bytes().to_vec())
            .ok()
            .map(Password::new);
        drop(pw);
        let user = name.clone();
        // Password checks block and burn CPU (argon2id, PAM): off the async
        // runtime, a bounded number at a time.
        let permit = self.shared.logins.acquire().await;
        let auth = services.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let Some(password) = password else {
                return Ok(None);
            };
            auth.auth
                .authenticate(&user, &password)
                .map_err(|e| Refusal::Auth(e.to_string()))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        drop(permit);
        // Unwrapping the key blocks too (RSA, or a request to the key
        // service), but outside the permit: a slow key service must not
        // hold up password checks of other logins.
        let outcome = match checked {
            Ok(Some(account)) => tokio::task::spawn_blocking(move || {
                services
                    .keyring
                    .unlock(&account.name)
                    .map(|key| Some((account, key)))
                    .map_err(Refusal::Key)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };

        match outcome {
            Ok(Some((account, key))) => match self.shared.services.vault.for_user(key) {
                Ok(vault) => {
                    self.shared.login_succeeded(peer.ip());
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
                    self.reply(Reply::new(530, "Login refused: storage unavailable."))
                        .await?;
                    Ok(Flow::Continue)
                }
            },
            Ok(None) => self.failed_login(&name).await,
            Err(Refusal::Auth(e)) => {
                tracing::error!(event = "login_refused", user = %name, %peer, error = %e);
                self.failed_login(&name).await
            }
            Err(Refusal::Key(e)) => {
                tracing::error!(event = "login_refused", user = %name, %peer, error = %e,
                    transient = e.is_transient(), "key service failed");
                self.reply(Reply::new(
                    530,
                    "Login refused: the key service is unavailable. Try again later.",
                ))
                .await?;
                Ok(Flow::Continue)
            }
        }
    }

    async fn failed_login(&mut self, name: &str) -> std::io::Result<Flow> {
        let peer = self.peer;
        tracing::warn!(event = "login_failed", user = %name, %peer);
        self.shared
            .services
            .events
            .emit(Event::new("login_failed").user(name).peer(peer));
        tokio::time::sleep(self.shared.config.failed_login_delay).await;
        if self.shared.login_failed(peer.ip()) {
            tracing::warn!(event = "banned", %peer, "too many failed logins");
            self.reply(Reply::closing("Too many failed logins; try again later."))
                .await?;
            return Ok(Flow::Close);
        }
        self.reply(Reply::not_logged_in("Login incorrect.")).await?;
        Ok(Flow::Continue)
    }
}

enum Refusal {
    Auth(String),
    Key(KeyError),
}
