//! The SSH side: the listener, admission through the core's
//! [`Gate`], authentication (password, keyboard-interactive, public key),
//! and one `sftp` subsystem per connection handed to [`crate::serve`].
//! Everything else SSH offers is refused: no shell, no exec, no pty, no
//! port or agent forwarding, no X11.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dropvault_core::accounts::Password;
use dropvault_core::session::{Admission, Credential, Gate, LoggedIn, LoginError, Peer, Protocol};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::SftpSettings;

/// Settings of the SSH front end.
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// Authentication requests one connection may make before it is
    /// closed.
    pub max_auth_attempts: usize,
    /// A connection that has not authenticated this long after it was
    /// accepted is closed.
    pub login_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long sessions may go on before they are cut.
    pub drain_grace: Duration,
    /// The SFTP sessions' own settings.
    pub sftp: SftpSettings,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            max_auth_attempts: 6,
            login_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            drain_grace: Duration::from_secs(30),
            sftp: SftpSettings::default(),
        }
    }
}

/// Channel and packet sizes: a large window so a single upload or
/// download is not throttled by round trips on a fast link (OpenSSH uses
/// 2 MiB; we allow more), and packets as large as OpenSSH accepts.
const WINDOW: u32 = 16 * 1024 * 1024;
const MAX_PACKET: u32 = 256 * 1024;
/// How long a client may keep its connection after its SFTP session ended.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The authentication methods offered, on every attempt.
fn methods() -> MethodSet {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    methods.push(MethodKind::KeyboardInteractive);
    methods
}

/// A refusal that leaves every method open: russh's default drops the
/// method that failed, so a client could not try its password again on
/// the same connection (OpenSSH) or fell back to keyboard-interactive and
/// hung (paramiko). Attempts are bounded by `max_auth_attempts` instead.
fn try_again() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(methods()),
        partial_success: false,
    }
}

fn russh_config(config: &SshConfig, host_key: PrivateKey) -> russh::server::Config {
    let methods = methods();
    let preferred = russh::Preferred {
        // What is offered; the client picks in its own order (OpenSSH:
        // chacha20-poly1305 first). AES-GCM leads for clients that defer.
        cipher: std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_128_CTR,
        ]),
        // Compression would only cost CPU, on data of any kind.
        compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
        ..russh::Preferred::default()
    };
    russh::server::Config {
        server_id: russh::SshId::Standard(std::borrow::Cow::Borrowed("SSH-2.0-dropvault")),
        methods,
        // A failed password is delayed by the gate itself; this evens out
        // the other refusals (a key that is not the user's).
        auth_rejection_time: Duration::from_millis(200),
        // OpenSSH starts with a "none" request to learn the methods.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        max_auth_attempts: config.max_auth_attempts,
        inactivity_timeout: Some(config.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

/// Runs the SSH server on `listener` until `shutdown` completes, then
/// drains: no new connections, sessions may go on for `drain_grace`, after
/// which the rest are cut (their uploads stay resumable). Admission and
/// login go through `gate`, shared with the server's other front ends.
pub async fn serve(
    config: SshConfig,
    host_key: PrivateKey,
    gate: Arc<Gate>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let russh_config = Arc::new(russh_config(&config, host_key));
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, pause briefly, carry on.
                    tracing::warn!(error = %e, "sftp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admission = match gate.admit(addr.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                // SSH has no greeting to refuse in: the connection closes.
                tracing::info!(event = "refused", protocol = "sftp", peer = %addr,
                    reason = %refusal);
                continue;
            }
        };
        let conn = Connection {
            gate: gate.clone(),
            config: config.clone(),
            russh: russh_config.clone(),
        };
        tasks.spawn(conn.run(tcp, addr, admission));
    }
    tracing::info!(
        sessions = tasks.len(),
        "sftp shutting down: draining sessions"
    );
    drop(listener);
    let drained = tokio::time::timeout(config.drain_grace, async {
        while tasks.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            sessions = tasks.len(),
            "drain grace period over: cutting sftp sessions"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

struct Connection {
    gate: Arc<Gate>,
    config: Arc<SshConfig>,
    russh: Arc<russh::server::Config>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, addr: SocketAddr, admission: Admission) {
        dropvault_core::session::keepalive(&tcp);
        // russh runs the session in a task of its own, which neither the
        // end of this one (login timeout, drain) nor its abort would stop:
        // the socket is shut down when this task ends, however it ends.
        let (tcp, _closer) = match Closer::new(tcp) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "sftp connection setup failed");
                return;
            }
        };
        let deadline = Instant::now() + self.config.login_timeout;
        let authed = Arc::new(AtomicBool::new(false));
        let handler = Handler {
            gate: self.gate,
            peer: Peer {
                protocol: Protocol::Sftp,
                addr,
                client: admission.client(),
                encrypted: true,
            },
            deadline,
            authed: authed.clone(),
            user: None,
            channel: None,
            sftp_started: false,
            settings: self.config.sftp.clone(),
        };
        let started = tokio::time::timeout_at(
            deadline,
            russh::server::run_stream(self.russh, tcp, handler),
        )
        .await;
        let mut running = match started {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(peer = %addr, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => return,
        };
        let handle = running.handle();
        tokio::select! {
            r = &mut running => {
                if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "ssh session ended");
                }
            }
            () = until_deadline(deadline, &authed) => {
                tracing::info!(event = "login_timeout", protocol = "sftp", peer = %addr);
                let _ = handle
                    .disconnect(Disconnect::ByApplication, "Login timeout.".into(), String::new())
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut running).await;
            }
        }
        drop(admission);
    }
}

/// Shuts a connection's socket down (both ways) when dropped, through a
/// second handle on it: whatever still holds the socket sees it end, and
/// the client sees the connection close.
struct Closer(std::net::TcpStream);

impl Closer {
    fn new(tcp: TcpStream) -> io::Result<(TcpStream, Self)> {
        let std = tcp.into_std()?;
        let closer = Closer(std.try_clone()?);
        Ok((TcpStream::from_std(std)?, closer))
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Completes at `deadline` unless `authed` is set by then.
async fn until_deadline(deadline: Instant, authed: &AtomicBool) {
    tokio::time::sleep_until(deadline).await;
    if authed.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Why a connection is ended from inside its handler.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("{0}")]
    Closed(&'static str),
}

/// One connection's SSH events.
struct Handler {
    gate: Arc<Gate>,
    peer: Peer,
    deadline: Instant,
    authed: Arc<AtomicBool>,
    /// The login, until the sftp subsystem takes it.
    user: Option<LoggedIn>,
    /// The session channel, until the sftp subsystem takes it.
    channel: Option<Channel<Msg>>,
    sftp_started: bool,
    settings: SftpSettings,
}

impl Handler {
    async fn login(&mut self, name: &str, cred: Credential) -> Result<Auth, ConnError> {
        if self.user.is_some() || self.sftp_started {
            return Ok(Auth::reject());
        }
        let gate = self.gate.clone();
        let login = tokio::time::timeout_at(self.deadline, gate.login(&self.peer, name, cred));
        match login.await {
            Ok(Ok(user)) => {
                self.user = Some(user);
                self.authed.store(true, Ordering::Release);
                Ok(Auth::Accept)
            }
            Ok(Err(LoginError::Wrong | LoginError::KeyRefused)) => Ok(try_again()),
            // SSH has no "try again later" or "banned" answer: the
            // connection ends (the log says why).
            Ok(Err(LoginError::Banned)) => Err(ConnError::Closed("banned")),
            Ok(Err(LoginError::Unavailable(_))) => Err(ConnError::Closed("login unavailable")),
            Err(_) => Err(ConnError::Closed("login timeout")),
        }
    }

    fn refuse(channel: ChannelId, session: &mut Session, what: &str) -> Result<(), ConnError> {
        tracing::info!(event = "ssh_refused", request = what);
        session.channel_failure(channel)?;
        Ok(())
    }
}

impl russh::server::Handler for Handler {
    type Error = ConnError;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, ConnError> {
        let cred = Credential::Password(Password::new(password.to_owned()));
        self.login(user, cred).await
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, ConnError> {
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: std::borrow::Cow::Owned(vec![("Password: ".into(), false)]),
            });
        };
        let cred = match response.next().map(|b| String::from_utf8(b.to_vec())) {
            Some(Ok(p)) => Credential::Password(Password::new(p)),
            _ => Credential::Unusable,
        };
        self.login(user, cred).await
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, ConnError> {
        let Ok(blob) = key.public_key.to_bytes() else {
            return Ok(try_again());
        };
        self.login(user, Credential::PublicKey(blob)).await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        // One session channel per connection, for one sftp subsystem.
        if self.channel.is_some() || self.sftp_started || self.user.is_none() {
            return Ok(());
        }
        self.channel = Some(channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        let ours = self.channel.as_ref().is_some_and(|c| c.id() == channel_id);
        if name != "sftp" || !ours {
            return Self::refuse(channel_id, session, "subsystem");
        }
        let (Some(channel), Some(user)) = (self.channel.take(), self.user.take()) else {
            return Self::refuse(channel_id, session, "subsystem");
        };
        self.sftp_started = true;
        session.channel_success(channel_id)?;
        let settings = self.settings.clone();
        let handle = session.handle();
        tokio::spawn(async move {
            let result = crate::serve(channel.into_stream(), user, &settings).await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "sftp session ended with an error");
            }
            // As OpenSSH's sshd does when its sftp-server exits: exit
            // status, EOF and close on the channel, and the client closes
            // the connection (a disconnect right away makes some, like Go's
            // x/crypto/ssh in rclone, report the copy as failed). This
            // connection has no other use: a client that keeps it open is
            // disconnected after a short grace.
            let _ = handle.exit_status_request(channel_id, 0).await;
            let _ = handle.eof(channel_id).await;
            let _ = handle.close(channel_id).await;
            tokio::time::sleep(CLOSE_GRACE).await;
            let _ = handle
                .disconnect(Disconnect::ByApplication, String::new(), String::new())
                .await;
        });
        Ok(())
    }

    async fn shell_request(&mut self, c: ChannelId, s: &mut Session) -> Result<(), ConnError> {
        Self::refuse(c, s, "shell")
    }

    async fn exec_request(
        &mut self,
        c: ChannelId,
        _data: &[u8],
        s: &mut Session,
    ) -> Result<(), ConnError> {
        Self::refuse(c, s, "exec")
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        c: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        s: &mut Session,
    ) -> Result<(), ConnError> {
        Self::refuse(c, s, "pty")
    }

    async fn env_request(
        &mut self,
        c: ChannelId,
        _name: &str,
        _value: &str,
        s: &mut Session,
    ) -> Result<(), ConnError> {
        Self::refuse(c, s, "env")
    }

    async fn x11_request(
        &mut self,
        c: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        s: &mut Session,
    ) -> Result<(), ConnError> {
        Self::refuse(c, s, "x11")
    }

    async fn agent_request(&mut self, _c: ChannelId, _s: &mut Session) -> Result<bool, ConnError> {
        Ok(false)
    }
}
