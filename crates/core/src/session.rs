//! The session layer every front end uses: admission (session limits and
//! bans), login (authenticate → ban accounting → unlock the user's key → a
//! [`LoggedIn`] holding the user's vault), logout on every path, and the
//! audit events, each tagged with the front end's name and the peer.
//!
//! A front end parses its protocol, calls [`Gate::admit`] when a
//! connection arrives and [`Gate::login`] with the credential it received,
//! then works on the [`LoggedIn`] it gets back. It maps [`Refusal`],
//! [`LoginError`] and [`VaultError`] to its own replies, in one place.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::accounts::{Account, AuthError, Authenticator, Password};
use crate::events::{Event, Hooks};
use crate::guard::{Attempt, ClientId, Failure, Guard, GuardConfig};
use crate::keys::{KeyError, Keyring};
use crate::metrics::{metrics, LoginOutcome};
use crate::throttle::{RateConfig, Rates, Throttle};
use crate::vault::{Upload, UserVault, VPath, Vault, VaultError};

/// What front ends run on: accounts, keys, storage, events.
#[derive(Clone, Debug)]
pub struct Services {
    /// Checks logins.
    pub auth: Arc<dyn Authenticator>,
    /// Hands out users' data keys.
    pub keyring: Arc<Keyring>,
    /// Storage.
    pub vault: Arc<Vault>,
    /// Where events (login, upload, …) go besides the log.
    pub events: Arc<Hooks>,
}

/// The front end a session came through, as events and logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// FTP and FTPS.
    Ftp,
    /// SFTP over SSH.
    Sftp,
    /// HTTPS: drop links and the account page.
    Https,
}

impl Protocol {
    /// `"ftp"` or `"sftp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ftp => "ftp",
            Protocol::Sftp => "sftp",
            Protocol::Https => "https",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is on the other end of a session.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The front end.
    pub protocol: Protocol,
    /// The peer's address.
    pub addr: SocketAddr,
    /// The client the peer counts as, for limits and bans.
    pub client: ClientId,
    /// Whether the connection is encrypted (FTPS after `AUTH TLS` or
    /// implicitly; SSH always), as login log lines say.
    pub encrypted: bool,
}

/// What a client offered to prove who it is.
pub enum Credential {
    /// A password.
    Password(Password),
    /// A password that cannot be right (FTP: not UTF-8). Checked as a wrong
    /// password, so it costs the client a guess like any other.
    Unusable,
    /// An SSH public key (its wire encoding) whose signature the front end
    /// has verified: it proves possession, so a key that is not the user's
    /// is not a guess and is not counted as a failed login.
    PublicKey(Vec<u8>),
    /// A drop link of the user's, which the front end has checked: the
    /// session acts for the link's owner, who must still have an account
    /// ([`Authenticator::lookup`]). Not a guess either.
    Link,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::Password(_) => "Password",
            Credential::Unusable => "Unusable",
            Credential::PublicKey(_) => "PublicKey",
            Credential::Link => "Link",
        })
    }
}

/// Why a login did not succeed. A front end answers each in its own words;
/// none of them says whether the user exists.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The client is banned (before this attempt, or by it): end the
    /// session.
    #[error("too many failed logins from this client")]
    Banned,
    /// Wrong name, password or key. Counted against the client (a
    /// password) or not (a key).
    #[error("login incorrect")]
    Wrong,
    /// The server could not check: an accounts backend, key service or
    /// storage that is unavailable. Not counted; the client may retry.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// The key service refuses the user's key for good (a lost key
    /// encryption key, a retired key version): only an operator can help.
    #[error("the key service cannot unlock the user's key")]
    KeyRefused,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client is banned.
    #[error("banned")]
    Banned,
    /// The server has `max_sessions` sessions.
    #[error("too many sessions")]
    Full,
    /// The client has `max_sessions_per_client` sessions.
    #[error("too many sessions from this client")]
    FullForClient,
}

/// Settings of a [`Gate`].
#[derive(Clone, Debug)]
pub struct GateConfig {
    /// Ban thresholds.
    pub guard: GuardConfig,
    /// Pause after a failed password before the front end answers.
    pub failed_login_delay: Duration,
    /// Sessions at once, all front ends together.
    pub max_sessions: usize,
    /// Sessions at once from one client, all front ends together.
    pub max_sessions_per_client: usize,
    /// IPv6 clients are counted per prefix of this many bits.
    pub ban_ipv6_prefix: u8,
    /// Bandwidth limits.
    pub rates: RateConfig,
}

impl Default for GateConfig {
    /// The documented defaults (docs/CONFIG.md).
    fn default() -> Self {
        Self {
            guard: GuardConfig {
                ban_after_failures: 5,
                window: Duration::from_secs(300),
                ban_duration: Duration::from_secs(900),
            },
            failed_login_delay: Duration::from_secs(1),
            max_sessions: 500,
            max_sessions_per_client: 20,
            ban_ipv6_prefix: 64,
            rates: RateConfig::default(),
        }
    }
}

/// Admission and login for every front end of one server: one table of
/// sessions per client, one table of failures and bans.
#[derive(Debug)]
pub struct Gate {
    services: Services,
    config: GateConfig,
    guard: Arc<Guard>,
    sessions: Arc<Mutex<Sessions>>,
    /// The bandwidth limits new sessions get (replaced by a reload).
    rates: std::sync::RwLock<Arc<Rates>>,
}

#[derive(Debug, Default)]
struct Sessions {
    total: usize,
    per_client: HashMap<ClientId, usize>,
}

/// A session's place in the limits, given back when dropped.
#[derive(Debug)]
pub struct Admission {
    sessions: Arc<Mutex<Sessions>>,
    client: ClientId,
}

impl Admission {
    /// The client the session counts against.
    pub fn client(&self) -> ClientId {
        self.client
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

/// How a check on the blocking pool ended.
enum Checked {
    /// The account, and its vault (storage, which may be remote, was asked
    /// for the user's folder).
    In(Account, Result<UserVault, VaultError>),
    /// Wrong password or key, unknown user, or an account that may not log
    /// in (why, for the log).
    Wrong(Option<String>),
    AuthFault(AuthError),
    KeyFault(KeyError),
}

impl Gate {
    /// A gate over `services`.
    pub fn new(services: Services, config: GateConfig) -> Self {
        Self {
            guard: Arc::new(Guard::new(config.guard)),
            rates: std::sync::RwLock::new(Arc::new(Rates::new(config.rates))),
            services,
            config,
            sessions: Arc::default(),
        }
    }

    /// Sessions that log in from now on get the bandwidth limits of
    /// `rates` (a reload), with buckets of their own: those already
    /// logged in keep the limits, and the user and server buckets, they
    /// began with.
    pub fn set_rates(&self, rates: RateConfig) {
        *self.rates.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Rates::new(rates));
    }

    /// The services behind the gate.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The gate's settings.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The failures and bans table.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// The client `ip` counts as.
    pub fn client(&self, ip: IpAddr) -> ClientId {
        ClientId::new(ip, self.config.ban_ipv6_prefix)
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refusal> {
        let client = self.client(ip);
        if self.guard.is_banned(client) {
            return Err(Refusal::Banned);
        }
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if s.total >= self.config.max_sessions {
            return Err(Refusal::Full);
        }
        let n = s.per_client.entry(client).or_default();
        if *n >= self.config.max_sessions_per_client {
            return Err(Refusal::FullForClient);
        }
        *n += 1;
        s.total += 1;
        Ok(Admission {
            sessions: self.sessions.clone(),
            client,
        })
    }

    /// Logs `name` in with `cred`: draws on the client's guess budget
    /// (waiting while its other checks are in flight), checks the
    /// credential and unlocks the user's key off the async runtime, and
    /// records the outcome. A failed password is followed by the failure
    /// delay before this returns. A front end bounds the whole call with
    /// its login deadline; a call cut short counts for nothing.
    pub async fn login(
        &self,
        peer: &Peer,
        name: &str,
        cred: Credential,
    ) -> Result<LoggedIn, LoginError> {
        let protocol = peer.protocol.as_str();
        let addr = peer.addr;
        let attempt = match self.guard.attempt(peer.client).await {
            Ok(a) => a,
            Err(refused) => {
                tracing::warn!(event = "login_refused", protocol, user = %name, peer = %addr,
                    reason = %refused);
                metrics().login(peer.protocol, LoginOutcome::Banned);
                return Err(LoginError::Banned);
            }
        };
        let counted = matches!(cred, Credential::Password(_) | Credential::Unusable);
        // A drop link proves nothing about the account's password: its
        // session must not forgive the client's failed guesses at it.
        let proves_identity = !matches!(cred, Credential::Link);
        let services = self.services.clone();
        let user = name.to_owned();
        // Password checks and key unwrapping block (argon2id, PAM, RSA, a
        // request to the key service). The users file bounds its own
        // argon2 work; nothing here waits for other logins' checks.
        let checked = tokio::task::spawn_blocking(move || {
            let account = match cred {
                Credential::Password(p) => services.auth.authenticate(&user, &p),
                Credential::Unusable => Ok(None),
                Credential::PublicKey(blob) => services.auth.authenticate_key(&user, &blob),
                Credential::Link => services.auth.lookup(&user),
            };
            let account = match account {
                Ok(Some(account)) => account,
                Ok(None) => return Checked::Wrong(None),
                Err(AuthError::Refused { reason, .. }) => return Checked::Wrong(Some(reason)),
                Err(e) => return Checked::AuthFault(e),
            };
            match services.keyring.unlock(&account.name) {
                Ok(key) => {
                    let vault = services.vault.for_account(key, account.quota);
                    Checked::In(account, vault)
                }
                Err(e) => Checked::KeyFault(e),
            }
        })
        .await
        .map_err(|_| LoginError::Unavailable("the login check"))?;

        match checked {
            Checked::In(account, vault) => match vault {
                Ok(vault) => {
                    if proves_identity {
                        attempt.succeeded(name);
                    } else {
                        drop(attempt);
                    }
                    let throttle = self
                        .rates
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .session(&account.name);
                    tracing::info!(event = "login", protocol, user = %account.name, peer = %addr,
                        encrypted = peer.encrypted, rate_limited = !throttle.is_unlimited());
                    let audit = Audit(Arc::new(AuditInner {
                        user: account.name,
                        peer: *peer,
                        events: self.services.events.clone(),
                    }));
                    audit.emit(Event::new("login"));
                    metrics().login(peer.protocol, LoginOutcome::Ok);
                    metrics().session_began(peer.protocol);
                    Ok(LoggedIn {
                        vault,
                        audit,
                        throttle,
                    })
                }
                Err(e) => {
                    tracing::error!(event = "login_refused", protocol, user = %account.name,
                        peer = %addr, error = %e, "storage is unavailable");
                    Err(LoginError::Unavailable("storage"))
                }
            },
            Checked::Wrong(reason) => {
                if let Some(reason) = reason {
                    tracing::warn!(event = "login_refused", protocol, user = %name, peer = %addr,
                        reason = %reason);
                }
                if counted {
                    self.failed(peer, name, attempt).await
                } else {
                    // A key that is not the user's, or a link whose owner
                    // is gone: no guess was made.
                    drop(attempt);
                    let event = if proves_identity {
                        "login_key_refused"
                    } else {
                        "link_owner_unknown"
                    };
                    tracing::info!(event, protocol, user = %name, peer = %addr);
                    metrics().login(peer.protocol, LoginOutcome::Failed);
                    Err(LoginError::Wrong)
                }
            }
            Checked::AuthFault(e) => {
                tracing::error!(event = "login_refused", protocol, user = %name, peer = %addr,
                    error = %e, "accounts backend failed");
                Err(LoginError::Unavailable("the accounts backend"))
            }
            Checked::KeyFault(e) => {
                tracing::error!(event = "login_refused", protocol, user = %name, peer = %addr,
                    error = %e, transient = e.is_transient(), "key service failed");
                if e.is_transient() {
                    Err(LoginError::Unavailable("the key service"))
                } else {
                    Err(LoginError::KeyRefused)
                }
            }
        }
    }

    async fn failed(
        &self,
        peer: &Peer,
        name: &str,
        attempt: Attempt,
    ) -> Result<LoggedIn, LoginError> {
        // Counted before the delay, so the budget is right while it runs.
        let verdict = attempt.failed(name);
        tracing::warn!(event = "login_failed", protocol = peer.protocol.as_str(), user = %name,
            peer = %peer.addr);
        self.services.events.emit(
            Event::new("login_failed")
                .protocol(peer.protocol.as_str())
                .user(name)
                .peer(peer.addr),
        );
        // Served holding nothing: other logins go on meanwhile.
        tokio::time::sleep(self.config.failed_login_delay).await;
        if verdict == Failure::Banned {
            tracing::warn!(event = "banned", protocol = peer.protocol.as_str(), peer = %peer.addr,
                client = %peer.client, "too many failed logins");
            metrics().login(peer.protocol, LoginOutcome::Banned);
            return Err(LoginError::Banned);
        }
        metrics().login(peer.protocol, LoginOutcome::Failed);
        Err(LoginError::Wrong)
    }
}

/// A logged-in user: their vault (and with it their unlocked key) and the
/// record of what they do. Dropping it — on a clean end, disconnect,
/// timeout, error or shutdown alike — logs the logout and lets go of the
/// key (zeroized when the user's last session ends).
#[derive(Debug)]
pub struct LoggedIn {
    vault: UserVault,
    audit: Audit,
    throttle: Throttle,
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        let a = &self.audit.0;
        tracing::info!(event = "logout", protocol = a.peer.protocol.as_str(), user = %a.user,
            peer = %a.peer.addr);
        metrics().session_ended(a.peer.protocol);
        self.audit.emit(Event::new("logout"));
    }
}

impl LoggedIn {
    /// The user's name, as the accounts backend spells it.
    pub fn user(&self) -> &str {
        &self.audit.0.user
    }

    /// The user's files.
    pub fn vault(&self) -> &UserVault {
        &self.vault
    }

    /// Who is logged in from where.
    pub fn peer(&self) -> &Peer {
        &self.audit.0.peer
    }

    /// The session's bandwidth limits, which every transfer's bytes pass.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// The session's record keeper, for work that outlives a borrow (an
    /// upload committed by a task of its own).
    pub fn audit(&self) -> Audit {
        self.audit.clone()
    }

    /// Deletes file `p`, and records it.
    pub async fn remove(&self, p: &VPath) -> Result<(), VaultError> {
        self.vault.remove(p).await?;
        self.audit.record("delete", p, None);
        Ok(())
    }

    /// Renames `from` to `to`, and records it.
    pub async fn rename(&self, from: &VPath, to: &VPath) -> Result<(), VaultError> {
        self.vault.rename(from, to).await?;
        self.audit.record("rename", from, Some(to));
        Ok(())
    }

    /// Creates folder `p`, and records it.
    pub async fn mkdir(&self, p: &VPath) -> Result<(), VaultError> {
        self.vault.mkdir(p).await?;
        self.audit.record("mkdir", p, None);
        Ok(())
    }

    /// Removes empty folder `p`, and records it.
    pub async fn rmdir(&self, p: &VPath) -> Result<(), VaultError> {
        self.vault.rmdir(p).await?;
        self.audit.record("rmdir", p, None);
        Ok(())
    }
}

/// Records what a logged-in user does, as log lines and events tagged with
/// the user, the protocol and the peer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Audit(Arc<AuditInner>);

#[derive(Debug)]
struct AuditInner {
    user: String,
    peer: Peer,
    events: Arc<Hooks>,
}

impl Audit {
    fn emit(&self, event: Event) {
        let a = &self.0;
        a.events.emit(
            event
                .protocol(a.peer.protocol.as_str())
                .user(&a.user)
                .peer(a.peer.addr),
        );
    }

    fn record(&self, kind: &'static str, p: &VPath, to: Option<&VPath>) {
        let a = &self.0;
        let protocol = a.peer.protocol.as_str();
        let mut event = Event::new(kind).path(p);
        match to {
            Some(to) => {
                tracing::info!(event = kind, protocol, user = %a.user, peer = %a.peer.addr,
                    from = %p, to = %to);
                event = event.to(to);
            }
            None => {
                tracing::info!(event = kind, protocol, user = %a.user, peer = %a.peer.addr,
                    path = %p);
            }
        }
        self.emit(event);
    }

    /// Commits `upload` to `p` and records the outcome (`upload`, or
    /// `upload_rejected` when the scanner found something). `received` is
    /// the bytes the client sent, `secs` how long it took, for the log.
    pub async fn commit(
        &self,
        p: &VPath,
        upload: Upload,
        received: u64,
        secs: f64,
    ) -> Result<u64, VaultError> {
        let a = &self.0;
        let protocol = a.peer.protocol.as_str();
        match upload.commit().await {
            Ok(size) => {
                tracing::info!(event = "upload", protocol, user = %a.user, peer = %a.peer.addr,
                    path = %p, bytes = received, size, secs);
                metrics().uploaded(a.peer.protocol, received, secs);
                self.emit(Event::new("upload").path(p).size(size));
                Ok(size)
            }
            Err(e) => {
                if let VaultError::Rejected { finding, size } = &e {
                    tracing::warn!(event = "upload_rejected", protocol, user = %a.user,
                        peer = %a.peer.addr, path = %p, size, signature = %finding);
                    self.emit(
                        Event::new("upload_rejected")
                            .path(p)
                            .size(*size)
                            .finding(finding.clone()),
                    );
                }
                Err(e)
            }
        }
    }

    /// Records a finished download of `bytes` bytes of `p`.
    pub fn downloaded(&self, p: &VPath, bytes: u64, secs: f64) {
        let a = &self.0;
        tracing::info!(event = "download", protocol = a.peer.protocol.as_str(), user = %a.user,
            peer = %a.peer.addr, path = %p, bytes, secs);
        metrics().downloaded(a.peer.protocol, bytes);
        self.emit(Event::new("download").path(p).size(bytes));
    }

    /// The user's name.
    pub fn user(&self) -> &str {
        &self.0.user
    }

    /// Who is logged in from where.
    pub fn peer(&self) -> &Peer {
        &self.0.peer
    }
}

/// TCP keepalive on a front end's connection, so a peer that vanished
/// without a FIN or RST (a dead NAT, a pulled cable) is noticed within about
/// two minutes even while the server waits to read; and `TCP_USER_TIMEOUT`,
/// so data we sent that is never acknowledged ends the connection as soon.
pub fn keepalive(tcp: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(tcp);
    let params = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    if let Err(e) = sock.set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(120))) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
}
