//! One FTP session: the control loop, its state, and the gate every command
//! passes (TLS required? logged in?). Commands are handled in the files of
//! `cmd/`, grouped by what they touch (login, files, listings, transfers,
//! data-channel setup, TLS): most verbs are a few lines, and the verbs of
//! one group share their helpers.

mod cmd;
mod data;
mod errors;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use dropvault_core::session::{Admission, Gate, Peer, Protocol};
use dropvault_core::vault::VPath;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{FtpConfig, TlsMode};
use crate::proto::{parse_command, Command, CommandError, LineBuffer, LineEvent, Reply};
use data::DataPlan;
use stream::Stream;

/// Bytes read from the control connection at a time.
const CONTROL_READ: usize = 4096;

/// Where the session is in logging in. Being logged in is holding a
/// [`LoggedIn`]: the user's vault, and with it their unlocked key.
#[derive(Debug)]
enum Login {
    /// No USER yet.
    None,
    /// USER given, waiting for PASS.
    Named(String),
    /// Logged in.
    In(LoggedIn),
}

/// State shared by all sessions of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: FtpConfig,
    /// Admission, login, bans: shared with the server's other front ends.
    pub(crate) gate: Arc<Gate>,
    /// The certificate's TLS configuration; `None` when TLS is off.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Every TLS session this server issued, and to whom.
    pub(crate) tls_sessions: Arc<crate::tls::SessionCache>,
}

/// A logged-in user and their current folder. The core's login is shared
/// with the upload commits this session starts; when the last holder lets
/// go — on QUIT, disconnect, timeout, error or shutdown alike, once any
/// commit has finished — the logout is recorded and the user's key released
/// (zeroized when the user's last session ends).
#[derive(Debug)]
struct LoggedIn {
    user: Arc<dropvault_core::session::LoggedIn>,
    cwd: VPath,
}

/// What a command handler decided about the session.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    control: Stream,
    lines: LineBuffer,
    /// This connection's TLS configurations, once it is TLS.
    tls: Option<crate::tls::SessionTls>,
    pbsz: bool,
    prot_private: bool,
    login: Login,
    rest: u64,
    /// The size ALLO announced for the next upload.
    allo: Option<u64>,
    rename_from: Option<VPath>,
    data: DataPlan,
    epsv_all: bool,
    /// Who the peer is, for the core.
    who: Peer,
    /// Failed logins in this session.
    login_failures: usize,
    /// When the session must be logged in by.
    login_deadline: tokio::time::Instant,
    /// The session's place in the limits, given back when it ends.
    _admission: Admission,
}

/// Runs one session to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit: bool,
    admission: Admission,
) {
    let local = match tcp.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // Clients send ABOR as TCP urgent data (Python's ftplib sends the whole
    // line that way); keep urgent bytes in the stream or the line is cut.
    let _ = socket2::SockRef::from(&tcp).set_out_of_band_inline(true);
    let login_deadline = tokio::time::Instant::now() + shared.config.login_timeout;
    let who = Peer {
        protocol: Protocol::Ftp,
        addr: peer,
        client: admission.client(),
        encrypted: false,
    };
    let mut s = Session {
        who,
        shared,
        peer,
        local,
        control: Stream::Plain(tcp),
        lines: LineBuffer::new(),
        tls: None,
        pbsz: false,
        prot_private: false,
        login: Login::None,
        rest: 0,
        allo: None,
        rename_from: None,
        data: DataPlan::None,
        epsv_all: false,
        login_failures: 0,
        login_deadline,
        _admission: admission,
    };
    tracing::debug!(event = "connect", %peer, implicit);
    if implicit {
        if let Err(e) = Box::pin(s.upgrade_tls()).await {
            tracing::info!(event = "tls_failed", %peer, error = %e);
            return;
        }
        s.pbsz = true;
        s.prot_private = true;
    }
    if Box::pin(s.reply(Reply::service_ready("dropvault ready.")))
        .await
        .is_err()
    {
        return;
    }
    let mut shutdown = s.shared.shutdown.clone();
    let idle = s.shared.config.idle_timeout;
    loop {
        let logging_in = !matches!(s.login, Login::In(_));
        let passive = s.data.expires();
        let line = tokio::select! {
            () = stopped(&mut shutdown) => {
                let _ = Box::pin(s.reply(Reply::closing("Server shutting down."))).await;
                break;
            }
            () = tokio::time::sleep_until(s.login_deadline), if logging_in => {
                let _ = Box::pin(s.reply(Reply::closing("Login timeout; closing."))).await;
                tracing::info!(event = "login_timeout", %peer);
                break;
            }
            () = sleep_until(passive) => {
                // Nobody connected: give the port back.
                s.data = DataPlan::None;
                continue;
            }
            r = tokio::time::timeout(idle, s.next_line()) => match r {
                Err(_) => {
                    let _ = Box::pin(s.reply(Reply::closing("Idle timeout; closing."))).await;
                    tracing::info!(event = "idle_timeout", %peer);
                    break;
                }
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) | Ok(Err(_)) => break,
            }
        };
        // Boxed: a command's future (a transfer's is large) is then not
        // part of the session's own, which an idle session keeps allocated.
        match Box::pin(s.handle(line)).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) | Err(_) => break,
        }
    }
    // Dropping `s` logs the logout and releases the key.
}

/// Completes at `at`, or never.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Completes once the server starts shutting down.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the server is gone, which is a stop too.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// One control line, or a line over the limit.
enum Input {
    Line(Vec<u8>),
    TooLong,
}

impl Session {
    /// The next control line; `None` when the client closed the connection.
    /// Cancel-safe: bytes are moved into the line buffer only after a read
    /// completes.
    async fn next_line(&mut self) -> std::io::Result<Option<Input>> {
        loop {
            match self.lines.next_line() {
                LineEvent::Line(l) => return Ok(Some(Input::Line(l))),
                LineEvent::TooLong => return Ok(Some(Input::TooLong)),
                LineEvent::NeedMore => {}
            }
            // ABOR sent as TCP urgent data (Python's ftplib does) makes the
            // kernel end a read at the urgent mark, and tokio may then take
            // the socket for drained and never wake up for the rest of the
            // line. With part of a line waiting, look for the rest directly.
            if self.lines.has_buffered() {
                let mut buf = [0u8; CONTROL_READ];
                if let Some(n) = self.control.read_now(&mut buf) {
                    self.lines.push(&buf[..n]);
                    continue;
                }
            }
            if self.read_control().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads once from the control connection into the line buffer. The
    /// read buffer lives on the stack for one poll only, so a session
    /// waiting for its next command holds no buffer at all (a pending read
    /// consumes nothing).
    async fn read_control(&mut self) -> std::io::Result<usize> {
        use std::task::Poll;
        use tokio::io::{AsyncRead, ReadBuf};
        std::future::poll_fn(|cx| {
            let mut buf = [0u8; CONTROL_READ];
            let mut rb = ReadBuf::new(&mut buf);
            match std::pin::Pin::new(&mut self.control).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.lines.push(rb.filled());
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Sends a reply. A client that stops reading cannot hold the session:
    /// the write gives up after the idle timeout.
    async fn reply(&mut self, reply: Reply) -> std::io::Result<()> {
        self.send_control(&reply.to_bytes()).await
    }

    /// Sends bytes on the control connection (a reply, or part of a long
    /// one), giving up after the idle timeout like [`Session::reply`].
    async fn send_control(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = async {
            self.control.write_all(bytes).await?;
            self.control.flush().await
        };
        tokio::time::timeout(self.shared.config.idle_timeout, write)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
    }

    /// Parses, gates and dispatches one line.
    async fn handle(&mut self, input: Input) -> std::io::Result<Flow> {
        let line = match input {
            Input::Line(l) => l,
            Input::TooLong => {
                self.reply(Reply::unrecognised("Line too long.")).await?;
                return Ok(Flow::Continue);
            }
        };
        let cmd = match parse_command(&line) {
            Ok(c) => c,
            Err(CommandError::Empty) => return Ok(Flow::Continue),
            Err(e) => {
                self.reply(e.to_reply()).await?;
                return Ok(Flow::Continue);
            }
        };
        tracing::debug!(peer = %self.peer, command = %cmd.log_safe());
        if let Some(refusal) = self.gate(&cmd) {
            self.reply(refusal).await?;
            return Ok(Flow::Continue);
        }
        self.dispatch(cmd).await
    }

    /// Cross-cutting checks, in one place: TLS before login when required,
    /// login before anything that touches files.
    fn gate(&self, cmd: &Command) -> Option<Reply> {
        let tls_required = self.shared.config.tls == TlsMode::Required;
        if tls_required
            && !self.control.is_tls()
            && matches!(cmd, Command::User(_) | Command::Pass(_))
        {
            return Some(Reply::new(530, "TLS is required: use AUTH TLS first."));
        }
        let open = matches!(
            cmd,
            Command::User(_)
                | Command::Pass(_)
                | Command::Quit
                | Command::Noop
                | Command::Syst
                | Command::Feat
                | Command::Opts(_)
                | Command::Help(_)
                | Command::Auth(_)
                | Command::Pbsz(_)
                | Command::Prot(_)
                | Command::Type(_)
                | Command::Mode
                | Command::Stru
                | Command::Abor
        ) || matches!(cmd, Command::Stat(None));
        if !open && !matches!(self.login, Login::In(_)) {
            return Some(Reply::not_logged_in("Please log in with USER and PASS."));
        }
        None
    }

    async fn dispatch(&mut self, cmd: Command) -> std::io::Result<Flow> {
        use Command as C;
        let reply = match cmd {
            C::User(name) => self.cmd_user(name),
            C::Pass(pw) => return self.cmd_pass(pw).await,
            C::Quit => {
                self.reply(Reply::goodbye()).await?;
                return Ok(Flow::Close);
            }
            C::Noop => Reply::ok("OK."),
            C::Syst => Reply::system_type(),
            C::Feat => self.cmd_feat(),
            C::Opts(o) => cmd::misc::opts(o),
            C::Type(t) => cmd::misc::type_(t),
            C::Mode => Reply::ok("Mode set to S."),
            C::Stru => Reply::ok("Structure set to F."),
            C::Allo(n) => {
                self.allo = Some(n);
                // 202 as before: nothing needs reserving; the size is
                // checked against the quota when the upload starts.
                Reply::superfluous(format!("Noted: {n} bytes. Send STOR, APPE or STOU."))
            }
            C::Help(_) => cmd::misc::help(),
            C::Pwd => self.cmd_pwd(),
            C::Cwd(p) => self.cmd_cwd(&p).await,
            C::Cdup => self.cmd_cwd("..").await,
            C::Mkd(p) => self.cmd_mkd(&p).await,
            C::Rmd(p) => self.cmd_rmd(&p).await,
            C::Dele(p) => self.cmd_dele(&p).await,
            C::Rnfr(p) => self.cmd_rnfr(&p).await,
            C::Rnto(p) => self.cmd_rnto(&p).await,
            C::Size(p) => self.cmd_size(&p).await,
            C::Mdtm { path, set } => self.cmd_mdtm(&path, set).await,
            C::Mfmt(set) => self.cmd_mfmt(set).await,
            C::Rest(n) => {
                self.rest = n;
                Reply::pending(format!("Restarting at {n}. Send STOR or RETR."))
            }
            C::Retr(p) => return self.cmd_retr(&p).await,
            C::Stor(p) => return self.cmd_store(&p, cmd::transfer::Store::Stor).await,
            C::Appe(p) => return self.cmd_store(&p, cmd::transfer::Store::Appe).await,
            C::Stou(_) => return self.cmd_stou().await,
            C::List(p) => return self.cmd_list(p, cmd::listing::Kind::List).await,
            C::Nlst(p) => return self.cmd_list(p, cmd::listing::Kind::Nlst).await,
            C::Mlsd(p) => return self.cmd_list(p, cmd::listing::Kind::Mlsd).await,
            C::Mlst(p) => self.cmd_mlst(p).await,
            C::Stat(p) => return self.cmd_stat(p).await,
            C::Pasv => self.cmd_pasv().await,
            C::Epsv(e) => self.cmd_epsv(e).await,
            C::Port(a) => self.cmd_port(std::net::SocketAddr::V4(a)),
            C::Eprt(a) => self.cmd_port(a),
            C::Abor => Reply::new(226, "No transfer to abort."),
            C::Auth(_) => return self.cmd_auth().await,
            C::Pbsz(n) => self.cmd_pbsz(n),
            C::Prot(p) => self.cmd_prot(p),
        };
        self.reply(reply).await?;
        Ok(Flow::Continue)
    }

    /// Upgrades the control connection to TLS; the sessions its handshake
    /// issues are this control connection's (see `crate::tls`).
    async fn upgrade_tls(&mut self) -> std::io::Result<()> {
        let base = self
            .shared
            .tls
            .clone()
            .ok_or_else(|| std::io::Error::other("TLS is off"))?;
        // Anything the client sent after AUTH in the clear is dropped, so no
        // plaintext command can be injected into the TLS session (the
        // STARTTLS flaw of CVE-2011-0411).
        self.lines.clear();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.control, Stream::Gone) else {
            return Err(std::io::Error::other("control connection is already TLS"));
        };
        let session_tls =
            crate::tls::SessionTls::new(&base, &self.shared.tls_sessions, self.peer.ip());
        let handshake = TlsAcceptor::from(session_tls.control()).accept(tcp);
        let tls = tokio::time::timeout(self.shared.config.connect_timeout(), handshake)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        self.control = Stream::Tls(Box::new(tls));
        self.tls = Some(session_tls);
        self.who.encrypted = true;
        Ok(())
    }

    /// The logged-in user, when there is one (the gate has checked).
    fn user(&mut self) -> Option<&mut LoggedIn> {
        match &mut self.login {
            Login::In(u) => Some(u),
            _ => None,
        }
    }
}
