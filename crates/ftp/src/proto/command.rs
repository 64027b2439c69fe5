//! Parsing one control-connection line into a typed [`Command`].
//!
//! [`parse_command`] is the only place that looks at a command's bytes:
//! verbs are matched case-insensitively, X-aliases (RFC 775) map to their
//! RFC 959 verbs, and every argument is checked and typed here, so the
//! session's handlers receive a `SocketAddrV4` or a `u64`, never text to
//! re-parse. What can go wrong is a [`CommandError`], which knows its reply.
//!
//! Path arguments are passed on as given, minus the one space after the
//! verb: file names may hold any spaces, and normalising paths is the
//! vault's job.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::reply::Reply;

/// Characters of an unknown verb kept for the reply and the logs.
const VERB_SHOWN: usize = 16;

/// A command from the client, with typed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// USER: the user name.
    User(String),
    /// PASS: the password. Never log it: see [`Command::log_safe`].
    Pass(Password),
    /// QUIT: end the session.
    Quit,
    /// NOOP: do nothing, reply 200.
    Noop,
    /// SYST: the system type.
    Syst,
    /// FEAT: list extensions (RFC 2389).
    Feat,
    /// OPTS: set an option of a command (RFC 2389).
    Opts(Opts),
    /// TYPE: representation type.
    Type(Type),
    /// MODE S: stream mode, the only transfer mode supported.
    Mode,
    /// STRU F: file structure, the only structure supported.
    Stru,
    /// PWD or XPWD: print the working directory.
    Pwd,
    /// CWD or XCWD: change the working directory.
    Cwd(String),
    /// CDUP or XCUP: change to the parent directory.
    Cdup,
    /// MKD or XMKD: make a directory.
    Mkd(String),
    /// RMD or XRMD: remove a directory.
    Rmd(String),
    /// DELE: delete a file.
    Dele(String),
    /// RNFR: rename from this path (RNTO follows).
    Rnfr(String),
    /// RNTO: rename to this path.
    Rnto(String),
    /// SIZE: a file's size (RFC 3659).
    Size(String),
    /// MDTM: a file's modification time (RFC 3659). `set` is the argument
    /// read as the set-time form (`MDTM YYYYMMDDHHMMSS path`), which the
    /// session uses when the whole argument names no file.
    Mdtm {
        /// The whole argument as a path.
        path: String,
        /// The argument as a time and a path, when it has that form.
        set: Option<SetTime>,
    },
    /// MFMT: set a file's modification time (draft-somers-ftp-mfxx).
    Mfmt(SetTime),
    /// REST: restart the next transfer at this byte offset.
    Rest(u64),
    /// RETR: download a file.
    Retr(String),
    /// STOR: upload a file.
    Stor(String),
    /// APPE: append to a file.
    Appe(String),
    /// STOU: upload under a unique name; the optional argument is a name
    /// hint some clients send.
    Stou(Option<String>),
    /// LIST: `ls -l` style listing; leading `-la` style options removed.
    List(Option<String>),
    /// NLST: names only; leading `-la` style options removed.
    Nlst(Option<String>),
    /// MLSD: machine-readable directory listing (RFC 3659).
    Mlsd(Option<String>),
    /// MLST: machine-readable facts of one entry (RFC 3659).
    Mlst(Option<String>),
    /// PASV: passive mode, IPv4.
    Pasv,
    /// EPSV: extended passive mode (RFC 2428).
    Epsv(Epsv),
    /// PORT: active mode to this address. Checking that it is the
    /// client's own address (no FTP bounce) is the session's job.
    Port(SocketAddrV4),
    /// EPRT: extended active mode to this address (RFC 2428).
    Eprt(SocketAddr),
    /// ABOR: abort the transfer in progress.
    Abor,
    /// STAT: server status, or a listing of the path over the control
    /// connection.
    Stat(Option<String>),
    /// HELP: help, optionally on one command.
    Help(Option<String>),
    /// ALLO: the size of the file the next STOR, APPE or STOU sends
    /// (checked against the user's quota when it starts).
    Allo(u64),
    /// AUTH: start TLS on the control connection (RFC 4217).
    Auth(Auth),
    /// PBSZ: protection buffer size (RFC 4217), always 0 for TLS.
    Pbsz(u64),
    /// PROT: data channel protection level (RFC 4217).
    Prot(Prot),
}

/// A modification time to set on a path (MFMT, MDTM's set-time form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetTime {
    /// The time, from `YYYYMMDDHHMMSS[.sss]` in UTC.
    pub time: std::time::SystemTime,
    /// The path, as given.
    pub path: String,
}

/// A password as sent with PASS. Zeroized on drop, shown as `[redacted]`.
///
/// Kept as bytes: a password need not be UTF-8, and the account backends
/// (argon2, PAM) take bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps a password.
    pub fn new(bytes: Vec<u8>) -> Self {
        Password(bytes)
    }

    /// The password's bytes, for the account check only.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl PartialEq for Password {
    /// Compares without stopping at the first difference, so timing tells
    /// at most the length. Passwords are checked by the account backend;
    /// this is here so that `Command` can be compared in tests.
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for Password {}

/// OPTS arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opts {
    /// `OPTS UTF8 ON` or `OFF`: clients ask for UTF-8 paths (we always use
    /// UTF-8, so both are answered 200).
    Utf8(bool),
    /// Any other option; the string is its name in upper case, escaped and
    /// shortened, fit to echo in a reply.
    Unsupported(String),
}

/// TYPE: the representation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `A` or `A N`: ASCII, non-print.
    Ascii,
    /// `I` or `L 8`: image (binary).
    Image,
}

/// EPSV arguments (RFC 2428).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epsv {
    /// No argument: the network protocol of the control connection.
    Unspecified,
    /// `EPSV 1`: IPv4.
    Ipv4,
    /// `EPSV 2`: IPv6.
    Ipv6,
    /// `EPSV ALL`: from now on only EPSV; PORT, EPRT and PASV are refused.
    All,
}

/// AUTH mechanisms (RFC 4217).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `TLS`, `TLS-C` or `SSL`: a TLS handshake follows the 234 reply.
    Tls,
}

/// PROT levels (RFC 4217).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// `C`: the data connection is not protected.
    Clear,
    /// `P`: the data connection runs TLS.
    Private,
}

/// Why a line is not a command we can carry out. Each variant knows its
/// reply: [`CommandError::to_reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The line is empty (or only whitespace and Telnet debris): 500.
    #[error("empty command line")]
    Empty,
    /// The verb is not one we know: 502. The verb is upper-cased, escaped
    /// and shortened, fit to echo and log.
    #[error("unknown command {0}")]
    Unknown(String),
    /// An argument is missing or malformed: 501. The text says which.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The command is known but not with this argument (`TYPE E`,
    /// `MODE B`, `PROT S`): 504.
    #[error("not implemented for that parameter: {0}")]
    NotImplementedParam(&'static str),
    /// A path or name argument is not valid UTF-8: 501.
    #[error("argument is not valid UTF-8")]
    Utf8,
    /// EPRT or EPSV names a network protocol other than 1 (IPv4) or 2
    /// (IPv6): 522 (RFC 2428).
    #[error("network protocol not supported")]
    UnsupportedNetworkProtocol,
}

impl CommandError {
    /// The reply code for this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            CommandError::Empty => 500,
            CommandError::Unknown(_) => 502,
            CommandError::Syntax(_) | CommandError::Utf8 => 501,
            CommandError::NotImplementedParam(_) => 504,
            CommandError::UnsupportedNetworkProtocol => 522,
        }
    }

    /// The reply to send for this error.
    pub fn to_reply(&self) -> Reply {
        let text = match self {
            CommandError::Empty => "Empty command.".to_owned(),
            CommandError::Unknown(verb) => format!("Command {verb} not implemented."),
            CommandError::Syntax(why) | CommandError::NotImplementedParam(why) => (*why).to_owned(),
            CommandError::Utf8 => "Argument is not valid UTF-8.".to_owned(),
            CommandError::UnsupportedNetworkProtocol => {
                "Network protocol not supported, use (1,2).".to_owned()
            }
        };
        Reply::new(self.reply_code(), text)
    }
}

/// Parses one line, as yielded by [`LineBuffer`](super::LineBuffer), into a
/// command.
///
/// Bytes before the verb that are not printable ASCII are skipped: they
/// are Telnet leftovers, for example the DM byte of `IAC IP IAC DM ABOR`
/// when the client sent the IAC before it as TCP urgent data and the
/// socket took that byte out of the stream. Arguments to verbs that take
/// none are ignored, as vsftpd does.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let start = line
        .iter()
        .position(u8::is_ascii_graphic)
        .ok_or(CommandError::Empty)?;
    let line = line.get(start..).unwrap_or_default();
    let mut parts = line.splitn(2, |&b| b == b' ');
    let verb = parts.next().unwrap_or_default();
    let arg = parts.next().unwrap_or_default();

    let upper = verb.to_ascii_uppercase();
    let command = match upper.as_slice() {
        b"USER" => Command::User(required_text(arg, "USER needs a user name.")?),
        b"PASS" => Command::Pass(Password::new(arg.to_vec())),
        b"QUIT" => Command::Quit,
        b"NOOP" => Command::Noop,
        b"SYST" => Command::Syst,
        b"FEAT" => Command::Feat,
        b"OPTS" => Command::Opts(parse_opts(arg)?),
        b"TYPE" => Command::Type(parse_type(arg)?),
        b"MODE" => {
            parse_single_letter(arg, b'S', "Only MODE S is supported.", "MODE needs S.")?;
            Command::Mode
        }
        b"STRU" => {
            parse_single_letter(arg, b'F', "Only STRU F is supported.", "STRU needs F.")?;
            Command::Stru
        }
        b"PWD" | b"XPWD" => Command::Pwd,
        b"CWD" | b"XCWD" => Command::Cwd(required_path(arg)?),
        b"CDUP" | b"XCUP" => Command::Cdup,
        b"MKD" | b"XMKD" => Command::Mkd(required_path(arg)?),
        b"RMD" | b"XRMD" => Command::Rmd(required_path(arg)?),
        b"DELE" => Command::Dele(required_path(arg)?),
        b"RNFR" => Command::Rnfr(required_path(arg)?),
        b"RNTO" => Command::Rnto(required_path(arg)?),
        b"SIZE" => Command::Size(required_path(arg)?),
        b"MDTM" => Command::Mdtm {
            path: required_path(arg)?,
            set: set_time(arg).ok(),
        },
        b"MFMT" => Command::Mfmt(
            set_time(arg)
                .map_err(|()| CommandError::Syntax("MFMT needs YYYYMMDDHHMMSS and a path."))?,
        ),
        b"REST" => Command::Rest(
            decimal(trim(arg)).ok_or(CommandError::Syntax("REST needs a byte offset."))?,
        ),
        b"RETR" => Command::Retr(required_path(arg)?),
        b"STOR" => Command::Stor(required_path(arg)?),
        b"APPE" => Command::Appe(required_path(arg)?),
        b"STOU" => Command::Stou(optional_path(arg)?),
        b"LIST" => Command::List(optional_path(strip_list_options(arg))?),
        b"NLST" => Command::Nlst(optional_path(strip_list_options(arg))?),
        b"MLSD" => Command::Mlsd(optional_path(arg)?),
        b"MLST" => Command::Mlst(optional_path(arg)?),
        b"PASV" => Command::Pasv,
        b"EPSV" => Command::Epsv(parse_epsv(arg)?),
        b"PORT" => Command::Port(parse_port(arg)?),
        b"EPRT" => Command::Eprt(parse_eprt(arg)?),
        b"ABOR" => Command::Abor,
        b"STAT" => Command::Stat(optional_path(arg)?),
        b"HELP" => Command::Help(optional_path(arg)?),
        b"ALLO" => Command::Allo(parse_allo(arg)?),
        b"AUTH" => Command::Auth(parse_auth(arg)?),
        b"PBSZ" => {
            Command::Pbsz(decimal(trim(arg)).ok_or(CommandError::Syntax("PBSZ needs a number."))?)
        }
        b"PROT" => Command::Prot(parse_prot(arg)?),
        _ => return Err(CommandError::Unknown(shown(verb))),
    };
    Ok(command)
}

impl Command {
    /// The command's verb in upper case; X-aliases give the RFC 959 verb
    /// (`XPWD` is `PWD`).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Quit => "QUIT",
            Command::Noop => "NOOP",
            Command::Syst => "SYST",
            Command::Feat => "FEAT",
            Command::Opts(_) => "OPTS",
            Command::Type(_) => "TYPE",
            Command::Mode => "MODE",
            Command::Stru => "STRU",
            Command::Pwd => "PWD",
            Command::Cwd(_) => "CWD",
            Command::Cdup => "CDUP",
            Command::Mkd(_) => "MKD",
            Command::Rmd(_) => "RMD",
            Command::Dele(_) => "DELE",
            Command::Rnfr(_) => "RNFR",
            Command::Rnto(_) => "RNTO",
            Command::Size(_) => "SIZE",
            Command::Mdtm { .. } => "MDTM",
            Command::Mfmt(_) => "MFMT",
            Command::Rest(_) => "REST",
            Command::Retr(_) => "RETR",
            Command::Stor(_) => "STOR",
            Command::Appe(_) => "APPE",
            Command::Stou(_) => "STOU",
            Command::List(_) => "LIST",
            Command::Nlst(_) => "NLST",
            Command::Mlsd(_) => "MLSD",
            Command::Mlst(_) => "MLST",
            Command::Pasv => "PASV",
            Command::Epsv(_) => "EPSV",
            Command::Port(_) => "PORT",
            Command::Eprt(_) => "EPRT",
            Command::Abor => "ABOR",
            Command::Stat(_) => "STAT",
            Command::Help(_) => "HELP",
            Command::Allo(_) => "ALLO",
            Command::Auth(_) => "AUTH",
            Command::Pbsz(_) => "PBSZ",
            Command::Prot(_) => "PROT",
        }
    }

    /// The command as text fit for a log line: the password replaced by
    /// `****`, control characters in arguments escaped (so a file name
    /// cannot forge a log line).
    pub fn log_safe(&self) -> String {
        let verb = self.verb();
        let arg = match self {
            Command::Pass(_) => "****".to_owned(),
            Command::User(s)
            | Command::Cwd(s)
            | Command::Mkd(s)
            | Command::Rmd(s)
            | Command::Dele(s)
            | Command::Rnfr(s)
            | Command::Rnto(s)
            | Command::Size(s)
            | Command::Mdtm { path: s, .. }
            | Command::Mfmt(SetTime { path: s, .. })
            | Command::Retr(s)
            | Command::Stor(s)
            | Command::Appe(s) => escape_controls(s),
            Command::Stou(s)
            | Command::List(s)
            | Command::Nlst(s)
            | Command::Mlsd(s)
            | Command::Mlst(s)
            | Command::Stat(s)
            | Command::Help(s) => s.as_deref().map(escape_controls).unwrap_or_default(),
            Command::Opts(Opts::Utf8(true)) => "UTF8 ON".to_owned(),
            Command::Opts(Opts::Utf8(false)) => "UTF8 OFF".to_owned(),
            Command::Opts(Opts::Unsupported(name)) => name.clone(),
            Command::Type(Type::Ascii) => "A".to_owned(),
            Command::Type(Type::Image) => "I".to_owned(),
            Command::Mode => "S".to_owned(),
            Command::Stru => "F".to_owned(),
            Command::Rest(n) | Command::Pbsz(n) | Command::Allo(n) => n.to_string(),
            Command::Epsv(Epsv::Unspecified) => String::new(),
            Command::Epsv(Epsv::Ipv4) => "1".to_owned(),
            Command::Epsv(Epsv::Ipv6) => "2".to_owned(),
            Command::Epsv(Epsv::All) => "ALL".to_owned(),
            Command::Port(addr) => addr.to_string(),
            Command::Eprt(addr) => addr.to_string(),
            Command::Auth(Auth::Tls) => "TLS".to_owned(),
            Command::Prot(Prot::Clear) => "C".to_owned(),
            Command::Prot(Prot::Private) => "P".to_owned(),
            Command::Quit
            | Command::Noop
            | Command::Syst
            | Command::Feat
            | Command::Pwd
            | Command::Cdup
            | Command::Pasv
            | Command::Abor => String::new(),
        };
        if arg.is_empty() {
            verb.to_owned()
        } else {
            format!("{verb} {arg}")
        }
    }
}

/// Trims spaces around a non-path argument; clients pad these now and then.
fn trim(arg: &[u8]) -> &[u8] {
    arg.trim_ascii()
}

/// An argument that must be present and valid UTF-8 without NUL.
fn required_text(arg: &[u8], missing: &'static str) -> Result<String, CommandError> {
    if arg.is_empty() {
        return Err(CommandError::Syntax(missing));
    }
    text(arg)
}

/// A path argument that must be present.
fn required_path(arg: &[u8]) -> Result<String, CommandError> {
    required_text(arg, "A path is required.")
}

/// A path argument that may be left out; only spaces count as left out.
fn optional_path(arg: &[u8]) -> Result<Option<String>, CommandError> {
    if arg.iter().all(|&b| b == b' ') {
        return Ok(None);
    }
    text(arg).map(Some)
}

fn text(arg: &[u8]) -> Result<String, CommandError> {
    // No file system can store NUL in a name, and passing it on would
    // invite C-string truncation further down (PAM, system calls).
    if arg.contains(&0) {
        return Err(CommandError::Syntax("NUL is not allowed in arguments."));
    }
    String::from_utf8(arg.to_vec()).map_err(|_| CommandError::Utf8)
}

/// A non-empty run of ASCII digits as a number; `None` on anything else,
/// overflow included (`u64::from_str` would also take a leading `+`).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Removes leading `ls` options (`-a`, `-l`, `-la`) from a LIST or NLST
/// argument, as vsftpd does: clients send them, and we always list the
/// same way. A token counts as options only if it is `-` and letters, so
/// `-1.txt` stays a name; a name like `-la x` cannot be listed, as in
/// vsftpd.
fn strip_list_options(mut arg: &[u8]) -> &[u8] {
    loop {
        let mut parts = arg.splitn(2, |&b| b == b' ');
        let token = parts.next().unwrap_or_default();
        let is_options = matches!(
            token.split_first(),
            Some((b'-', letters)) if !letters.is_empty() && letters.iter().all(u8::is_ascii_alphabetic)
        );
        if !is_options {
            return arg;
        }
        arg = parts.next().unwrap_or_default();
    }
}

/// `MDTM YYYYMMDDHHMMSS[.sss] path`, the set-time form some clients send.
/// `YYYYMMDDHHMMSS[.sss] path`: a valid time, one space, a path.
fn set_time(arg: &[u8]) -> Result<SetTime, ()> {
    let mut parts = arg.splitn(2, |&b| b == b' ');
    let time = super::parse_mdtm(parts.next().unwrap_or_default()).ok_or(())?;
    let path = parts.next().filter(|p| !p.is_empty()).ok_or(())?;
    Ok(SetTime {
        time,
        path: text(path).map_err(|_| ())?,
    })
}

fn parse_opts(arg: &[u8]) -> Result<Opts, CommandError> {
    let arg = trim(arg);
    if arg.is_empty() {
        return Err(CommandError::Syntax("OPTS needs an option."));
    }
    let mut parts = arg.splitn(2, |&b| b == b' ');
    let name = parts.next().unwrap_or_default().to_ascii_uppercase();
    let value = trim(parts.next().unwrap_or_default()).to_ascii_uppercase();
    match name.as_slice() {
        b"UTF8" | b"UTF-8" => match value.as_slice() {
            b"ON" => Ok(Opts::Utf8(true)),
            b"OFF" => Ok(Opts::Utf8(false)),
            _ => Err(CommandError::Syntax("OPTS UTF8 needs ON or OFF.")),
        },
        _ => Ok(Opts::Unsupported(shown(&name))),
    }
}

fn parse_type(arg: &[u8]) -> Result<Type, CommandError> {
    let upper = trim(arg).to_ascii_uppercase();
    let words: Vec<&[u8]> = upper
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [b"A"] | [b"A", b"N"] => Ok(Type::Ascii),
        [b"I"] | [b"L", b"8"] => Ok(Type::Image),
        [b"A", b"T" | b"C"] => Err(CommandError::NotImplementedParam(
            "Only non-print ASCII is supported.",
        )),
        [b"E"] | [b"E", _] => Err(CommandError::NotImplementedParam(
            "EBCDIC is not supported.",
        )),
        [b"L", size] if decimal(size).is_some() => Err(CommandError::NotImplementedParam(
            "Only byte size 8 is supported.",
        )),
        _ => Err(CommandError::Syntax("TYPE needs A, I or L 8.")),
    }
}

/// MODE and STRU: one letter, of which only `accepted` is implemented.
fn parse_single_letter(
    arg: &[u8],
    accepted: u8,
    other: &'static str,
    syntax: &'static str,
) -> Result<(), CommandError> {
    match trim(arg) {
        [letter] if letter.to_ascii_uppercase() == accepted => Ok(()),
        [letter] if letter.is_ascii_alphabetic() => Err(CommandError::NotImplementedParam(other)),
        _ => Err(CommandError::Syntax(syntax)),
    }
}

fn parse_epsv(arg: &[u8]) -> Result<Epsv, CommandError> {
    match trim(arg).to_ascii_uppercase().as_slice() {
        b"" => Ok(Epsv::Unspecified),
        b"1" => Ok(Epsv::Ipv4),
        b"2" => Ok(Epsv::Ipv6),
        b"ALL" => Ok(Epsv::All),
        other if decimal(other).is_some() => Err(CommandError::UnsupportedNetworkProtocol),
        _ => Err(CommandError::Syntax("EPSV takes 1, 2 or ALL.")),
    }
}

/// `h1,h2,h3,h4,p1,p2`: six decimal numbers 0..=255 of up to three digits.
fn parse_port(arg: &[u8]) -> Result<SocketAddrV4, CommandError> {
    const BAD: CommandError = CommandError::Syntax("PORT needs h1,h2,h3,h4,p1,p2.");
    let mut numbers = [0u8; 6];
    let mut count = 0;
    for field in trim(arg).split(|&b| b == b',') {
        let slot = numbers.get_mut(count).ok_or(BAD)?;
        *slot = decimal(field)
            .filter(|_| field.len() <= 3)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or(BAD)?;
        count += 1;
    }
    let [h1, h2, h3, h4, p1, p2] = numbers;
    if count != numbers.len() {
        return Err(BAD);
    }
    let port = (u16::from(p1) << 8) | u16::from(p2);
    if port == 0 {
        return Err(CommandError::Syntax("PORT: port 0 is not a port."));
    }
    Ok(SocketAddrV4::new(Ipv4Addr::new(h1, h2, h3, h4), port))
}

/// `<d>proto<d>address<d>port<d>` with any delimiter `d` in 33..=126
/// (RFC 2428); protocol 1 is IPv4, 2 is IPv6.
fn parse_eprt(arg: &[u8]) -> Result<SocketAddr, CommandError> {
    const BAD: CommandError =
        CommandError::Syntax("EPRT needs |1|address|port| or |2|address|port|.");
    let arg = trim(arg);
    let (&delimiter, rest) = arg.split_first().ok_or(BAD)?;
    if !(33..=126).contains(&delimiter) {
        return Err(BAD);
    }
    let fields: Vec<&[u8]> = rest.split(|&b| b == delimiter).collect();
    let [proto, address, port, end] = fields.as_slice() else {
        return Err(BAD);
    };
    if !end.is_empty() {
        return Err(BAD);
    }
    let port = decimal(port)
        .filter(|_| port.len() <= 5)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or(BAD)?;
    let address = std::str::from_utf8(address).map_err(|_| BAD)?;
    let ip = match *proto {
        b"1" => IpAddr::V4(address.parse::<Ipv4Addr>().map_err(|_| BAD)?),
        b"2" => IpAddr::V6(address.parse::<Ipv6Addr>().map_err(|_| BAD)?),
        other if decimal(other).is_some() => return Err(CommandError::UnsupportedNetworkProtocol),
        _ => return Err(BAD),
    };
    Ok(SocketAddr::new(ip, port))
}

/// `ALLO n [R m]`: the size `n` (a record size `m` is checked for form,
/// then ignored).
fn parse_allo(arg: &[u8]) -> Result<u64, CommandError> {
    let words: Vec<&[u8]> = trim(arg)
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let size = match words.as_slice() {
        [n] => decimal(n),
        [n, r, m] if r.eq_ignore_ascii_case(b"R") && decimal(m).is_some() => decimal(n),
        _ => None,
    };
    size.ok_or(CommandError::Syntax("ALLO needs a size."))
}

fn parse_auth(arg: &[u8]) -> Result<Auth, CommandError> {
    match trim(arg).to_ascii_uppercase().as_slice() {
        b"TLS" | b"TLS-C" | b"SSL" => Ok(Auth::Tls),
        b"" => Err(CommandError::Syntax("AUTH needs a mechanism.")),
        _ => Err(CommandError::NotImplementedParam(
            "Only AUTH TLS is supported.",
        )),
    }
}

fn parse_prot(arg: &[u8]) -> Result<Prot, CommandError> {
    match trim(arg).to_ascii_uppercase().as_slice() {
        b"C" => Ok(Prot::Clear),
        b"P" => Ok(Prot::Private),
        b"S" | b"E" => Err(CommandError::NotImplementedParam(
            "Only PROT C and PROT P are supported.",
        )),
        _ => Err(CommandError::Syntax("PROT needs C or P.")),
    }
}

/// A verb or option name as shown in replies and logs: at most
/// [`VERB_SHOWN`] characters, upper case, control characters escaped.
fn shown(verb: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(verb)
        .chars()
        .take(VERB_SHOWN)
        .collect();
    escape_controls(&text.to_uppercase())
}

/// Escapes control characters (CR, LF, ESC...) as `\r`, `\n`, `\u{1b}`.
fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        parse_command(line.as_bytes())
    }

    fn ok(line: &str) -> Command {
        match parse(line) {
            Ok(command) => command,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    fn pass(p: &[u8]) -> Command {
        Command::Pass(Password::new(p.to_vec()))
    }

    fn syntax(line: &str) {
        assert!(
            matches!(parse(line), Err(CommandError::Syntax(_))),
            "{line:?}: {:?}",
            parse(line)
        );
    }

    fn not_impl(line: &str) {
        assert!(
            matches!(parse(line), Err(CommandError::NotImplementedParam(_))),
            "{line:?}: {:?}",
            parse(line)
        );
    }

    #[test]
    fn every_verb() {
        let v4 = |a, b, c, d, port| SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port);
        let cases: Vec<(&str, Command)> = vec![
            ("USER alice", Command::User(s("alice"))),
            ("PASS secret word", pass(b"secret word")),
            ("QUIT", Command::Quit),
            ("NOOP", Command::Noop),
            ("SYST", Command::Syst),
            ("FEAT", Command::Feat),
            ("OPTS UTF8 ON", Command::Opts(Opts::Utf8(true))),
            ("TYPE I", Command::Type(Type::Image)),
            ("MODE S", Command::Mode),
            ("STRU F", Command::Stru),
            ("PWD", Command::Pwd),
            ("CWD /in box", Command::Cwd(s("/in box"))),
            ("CDUP", Command::Cdup),
            ("MKD new", Command::Mkd(s("new"))),
            ("RMD old", Command::Rmd(s("old"))),
            ("DELE f.txt", Command::Dele(s("f.txt"))),
            ("RNFR a", Command::Rnfr(s("a"))),
            ("RNTO b", Command::Rnto(s("b"))),
            ("SIZE f", Command::Size(s("f"))),
            (
                "MDTM f",
                Command::Mdtm {
                    path: s("f"),
                    set: None,
                },
            ),
            ("REST 1024", Command::Rest(1024)),
            ("RETR f", Command::Retr(s("f"))),
            ("STOR f", Command::Stor(s("f"))),
            ("APPE f", Command::Appe(s("f"))),
            ("STOU", Command::Stou(None)),
            ("STOU hint", Command::Stou(Some(s("hint")))),
            ("LIST", Command::List(None)),
            ("NLST", Command::Nlst(None)),
            ("MLSD", Command::Mlsd(None)),
            ("MLSD sub", Command::Mlsd(Some(s("sub")))),
            ("MLST", Command::Mlst(None)),
            ("MLST f", Command::Mlst(Some(s("f")))),
            ("PASV", Command::Pasv),
            ("EPSV", Command::Epsv(Epsv::Unspecified)),
            ("PORT 127,0,0,1,4,1", Command::Port(v4(127, 0, 0, 1, 1025))),
            (
                "EPRT |1|127.0.0.1|1025|",
                Command::Eprt(SocketAddr::from(v4(127, 0, 0, 1, 1025))),
            ),
            ("ABOR", Command::Abor),
            ("STAT", Command::Stat(None)),
            ("STAT f", Command::Stat(Some(s("f")))),
            ("HELP", Command::Help(None)),
            ("HELP RETR", Command::Help(Some(s("RETR")))),
            ("ALLO 1000", Command::Allo(1000)),
            ("AUTH TLS", Command::Auth(Auth::Tls)),
            ("PBSZ 0", Command::Pbsz(0)),
            ("PROT P", Command::Prot(Prot::Private)),
        ];
        for (line, expected) in cases {
            let got = ok(line);
            assert_eq!(got, expected, "{line:?}");
            // The verb round-trips, and lower case parses the same.
            assert!(line.starts_with(got.verb()), "{line:?} vs {}", got.verb());
            let (verb, rest) = line.split_at(got.verb().len());
            let lower = format!("{}{rest}", verb.to_lowercase());
            assert_eq!(ok(&lower), expected, "{lower:?}");
            let mixed = format!(
                "{}{rest}",
                verb.get(..1).unwrap_or("").to_lowercase() + &verb[1..]
            );
            assert_eq!(ok(&mixed), expected, "{mixed:?}");
        }
    }

    #[test]
    fn x_aliases() {
        assert_eq!(ok("XPWD"), Command::Pwd);
        assert_eq!(ok("xcwd /a"), Command::Cwd(s("/a")));
        assert_eq!(ok("XCUP"), Command::Cdup);
        assert_eq!(ok("XMKD d"), Command::Mkd(s("d")));
        assert_eq!(ok("xrmd d"), Command::Rmd(s("d")));
        assert_eq!(ok("XPWD").verb(), "PWD");
        assert_eq!(ok("XCUP").verb(), "CDUP");
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(parse("FOO bar"), Err(CommandError::Unknown(s("FOO"))));
        assert_eq!(parse("site chmod"), Err(CommandError::Unknown(s("SITE"))));
        assert_eq!(parse("NOOPX"), Err(CommandError::Unknown(s("NOOPX"))));
        assert_eq!(
            parse("AVERYLONGVERBINDEEDTHATGOESON"),
            Err(CommandError::Unknown(s("AVERYLONGVERBIND")))
        );
        assert_eq!(
            parse_command(b"GE\x1bT\r x"),
            Err(CommandError::Unknown(s("GE\\u{1b}T\\r")))
        );
        assert_eq!(parse(""), Err(CommandError::Empty));
        assert_eq!(parse("   "), Err(CommandError::Empty));
        assert_eq!(parse_command(b"\xf2\xff"), Err(CommandError::Empty));
        let reply = CommandError::Unknown(s("FOO")).to_reply();
        assert_eq!(reply.to_bytes(), b"502 Command FOO not implemented.\r\n");
    }

    #[test]
    fn telnet_debris_before_the_verb_is_skipped() {
        // The DM left over when IAC went out of band.
        assert_eq!(parse_command(b"\xf2ABOR"), Ok(Command::Abor));
        assert_eq!(parse_command(b"\xff\xf4\xf2abor"), Ok(Command::Abor));
        assert_eq!(parse(" NOOP"), Ok(Command::Noop));
    }

    #[test]
    fn arguments_of_argumentless_verbs_are_ignored() {
        assert_eq!(ok("NOOP now"), Command::Noop);
        assert_eq!(ok("PASV "), Command::Pasv);
        assert_eq!(ok("QUIT please"), Command::Quit);
    }

    #[test]
    fn paths_keep_their_spaces_but_lose_the_separator() {
        assert_eq!(ok("CWD  two leading"), Command::Cwd(s(" two leading")));
        assert_eq!(ok("STOR trailing "), Command::Stor(s("trailing ")));
        assert_eq!(ok("RETR a  b"), Command::Retr(s("a  b")));
        assert_eq!(ok("DELE ünïcødé.txt"), Command::Dele(s("ünïcødé.txt")));
        assert_eq!(ok("MKD \"quoted\""), Command::Mkd(s("\"quoted\"")));
    }

    #[test]
    fn path_errors() {
        for verb in [
            "CWD", "XCWD", "MKD", "XMKD", "RMD", "XRMD", "DELE", "RNFR", "RNTO", "SIZE", "MDTM",
            "RETR", "STOR", "APPE", "USER",
        ] {
            syntax(verb);
            syntax(&format!("{verb} "));
            let mut line = format!("{verb} bad").into_bytes();
            line.push(0xff);
            assert_eq!(parse_command(&line), Err(CommandError::Utf8), "{verb}");
            syntax(&format!("{verb} a\0b"));
        }
        assert_eq!(parse_command(b"LIST \xc3"), Err(CommandError::Utf8));
        assert_eq!(parse_command(b"STAT \xc3"), Err(CommandError::Utf8));
        assert_eq!(CommandError::Utf8.reply_code(), 501);
    }

    #[test]
    fn password_is_bytes_and_never_shown() {
        assert_eq!(ok("PASS"), pass(b""));
        assert_eq!(ok("PASS "), pass(b""));
        assert_eq!(ok("PASS  spaced "), pass(b" spaced "));
        assert_eq!(parse_command(b"PASS \xff\xfe"), Ok(pass(b"\xff\xfe")));
        let command = ok("PASS hunter2");
        assert_eq!(command.log_safe(), "PASS ****");
        assert!(!format!("{command:?}").contains("hunter2"));
        assert_ne!(command, ok("PASS hunter3"));
        assert_ne!(command, ok("PASS hunter"));
        if let Command::Pass(p) = &command {
            assert_eq!(p.as_bytes(), b"hunter2");
        }
    }

    #[test]
    fn log_safe_forms() {
        assert_eq!(ok("USER alice").log_safe(), "USER alice");
        assert_eq!(ok("cwd /a b").log_safe(), "CWD /a b");
        assert_eq!(ok("RETR a\rb").log_safe(), "RETR a\\rb");
        assert_eq!(ok("LIST -la").log_safe(), "LIST");
        assert_eq!(ok("NOOP").log_safe(), "NOOP");
        assert_eq!(ok("TYPE L 8").log_safe(), "TYPE I");
        assert_eq!(ok("PORT 10,0,0,1,0,21").log_safe(), "PORT 10.0.0.1:21");
        assert_eq!(ok("EPRT |2|::1|21|").log_safe(), "EPRT [::1]:21");
        assert_eq!(ok("EPSV ALL").log_safe(), "EPSV ALL");
        assert_eq!(ok("OPTS utf8 off").log_safe(), "OPTS UTF8 OFF");
        assert_eq!(ok("REST 5").log_safe(), "REST 5");
        assert_eq!(ok("PROT C").log_safe(), "PROT C");
        assert_eq!(ok("XPWD").log_safe(), "PWD");
    }

    #[test]
    fn opts() {
        assert_eq!(ok("OPTS UTF8 OFF"), Command::Opts(Opts::Utf8(false)));
        assert_eq!(ok("opts utf8 on"), Command::Opts(Opts::Utf8(true)));
        assert_eq!(ok("OPTS UTF-8 ON"), Command::Opts(Opts::Utf8(true)));
        assert_eq!(
            ok("OPTS MLST type;size;"),
            Command::Opts(Opts::Unsupported(s("MLST")))
        );
        syntax("OPTS");
        syntax("OPTS UTF8");
        syntax("OPTS UTF8 MAYBE");
    }

    #[test]
    fn types() {
        assert_eq!(ok("TYPE A"), Command::Type(Type::Ascii));
        assert_eq!(ok("type a n"), Command::Type(Type::Ascii));
        assert_eq!(ok("TYPE i"), Command::Type(Type::Image));
        assert_eq!(ok("TYPE L 8"), Command::Type(Type::Image));
        assert_eq!(ok("TYPE I "), Command::Type(Type::Image));
        not_impl("TYPE A T");
        not_impl("TYPE A C");
        not_impl("TYPE E");
        not_impl("TYPE E N");
        not_impl("TYPE L 7");
        syntax("TYPE");
        syntax("TYPE X");
        syntax("TYPE L");
        syntax("TYPE L x");
        syntax("TYPE A N X");
        syntax("TYPE IMAGE");
    }

    #[test]
    fn mode_and_stru() {
        assert_eq!(ok("MODE s"), Command::Mode);
        assert_eq!(ok("STRU f"), Command::Stru);
        not_impl("MODE B");
        not_impl("MODE C");
        not_impl("MODE Z");
        not_impl("STRU R");
        not_impl("STRU P");
        syntax("MODE");
        syntax("MODE SS");
        syntax("STRU");
        syntax("STRU 1");
    }

    #[test]
    fn mdtm_set_form_and_mfmt() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let set = |secs: u64, path: &str| SetTime {
            time: at(secs),
            path: s(path),
        };
        assert_eq!(
            ok("MDTM 20240101120000 file.txt"),
            Command::Mdtm {
                path: s("20240101120000 file.txt"),
                set: Some(set(1_704_110_400, "file.txt")),
            }
        );
        assert_eq!(
            ok("MDTM 20240101120000"),
            Command::Mdtm {
                path: s("20240101120000"),
                set: None,
            }
        );
        assert_eq!(
            ok("MDTM 2024 report"),
            Command::Mdtm {
                path: s("2024 report"),
                set: None,
            }
        );
        // Not a real time: only a file name.
        assert_eq!(
            ok("MDTM 20241301120000 x"),
            Command::Mdtm {
                path: s("20241301120000 x"),
                set: None,
            }
        );
        assert_eq!(
            ok("MFMT 20240101120000 dir/a b.txt"),
            Command::Mfmt(set(1_704_110_400, "dir/a b.txt"))
        );
        syntax("MFMT");
        syntax("MFMT 20240101120000");
        syntax("MFMT 20240101120000 ");
        syntax("MFMT 2024010112000 x");
        syntax("MFMT x 20240101120000");
        assert_eq!(ok("MFMT 20240101120000 x").log_safe(), "MFMT x");
    }

    #[test]
    fn rest_and_pbsz_numbers() {
        assert_eq!(ok("REST 0"), Command::Rest(0));
        assert_eq!(ok("REST 18446744073709551615"), Command::Rest(u64::MAX));
        assert_eq!(ok("REST  42 "), Command::Rest(42));
        syntax("REST");
        syntax("REST abc");
        syntax("REST -1");
        syntax("REST +1");
        syntax("REST 1.5");
        syntax("REST 18446744073709551616");
        assert_eq!(ok("PBSZ 0"), Command::Pbsz(0));
        assert_eq!(ok("PBSZ 16384"), Command::Pbsz(16384));
        syntax("PBSZ");
        syntax("PBSZ x");
    }

    #[test]
    fn list_options_are_stripped() {
        assert_eq!(ok("LIST -a"), Command::List(None));
        assert_eq!(ok("LIST -la"), Command::List(None));
        assert_eq!(ok("LIST -l "), Command::List(None));
        assert_eq!(ok("LIST -aL /dir"), Command::List(Some(s("/dir"))));
        assert_eq!(ok("LIST -l -a sub dir"), Command::List(Some(s("sub dir"))));
        assert_eq!(ok("NLST -1.txt"), Command::Nlst(Some(s("-1.txt"))));
        assert_eq!(ok("LIST -"), Command::List(Some(s("-"))));
        assert_eq!(ok("LIST --"), Command::List(Some(s("--"))));
        assert_eq!(ok("LIST my -l file"), Command::List(Some(s("my -l file"))));
        assert_eq!(ok("NLST -la *.txt"), Command::Nlst(Some(s("*.txt"))));
        assert_eq!(ok("LIST "), Command::List(None));
        // Documented ambiguity, as in vsftpd.
        assert_eq!(ok("LIST -weird name"), Command::List(Some(s("name"))));
        // MLSD takes no options: its argument is a path.
        assert_eq!(ok("MLSD -a"), Command::Mlsd(Some(s("-a"))));
    }

    #[test]
    fn port() {
        let addr =
            |a, b, c, d, port| Command::Port(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port));
        assert_eq!(ok("PORT 192,168,1,2,195,80"), addr(192, 168, 1, 2, 50_000));
        assert_eq!(ok("PORT 0,0,0,0,255,255"), addr(0, 0, 0, 0, 65_535));
        assert_eq!(ok("PORT 010,000,001,002,0,1"), addr(10, 0, 1, 2, 1));
        assert_eq!(ok("PORT  1,2,3,4,5,6 "), addr(1, 2, 3, 4, 1286));
        for bad in [
            "PORT",
            "PORT 1,2,3,4,5",
            "PORT 1,2,3,4,5,6,7",
            "PORT 256,2,3,4,5,6",
            "PORT 1,2,3,4,5,256",
            "PORT 1,2,3,4,1000,6",
            "PORT 0001,2,3,4,5,6",
            "PORT -1,2,3,4,5,6",
            "PORT 1,2,3,4,5,",
            "PORT ,1,2,3,4,5",
            "PORT 1,,2,3,4,5",
            "PORT 1, 2,3,4,5,6",
            "PORT 1.2.3.4,5,6",
            "PORT a,b,c,d,e,f",
            "PORT 1,2,3,4,0,0",
            "PORT +1,2,3,4,5,6",
        ] {
            syntax(bad);
        }
    }

    #[test]
    fn eprt() {
        let v4: SocketAddr = "132.235.1.2:6275".parse().expect("addr");
        let v6: SocketAddr = "[1080::8:800:200c:417a]:5282".parse().expect("addr");
        assert_eq!(ok("EPRT |1|132.235.1.2|6275|"), Command::Eprt(v4));
        assert_eq!(ok("EPRT |2|1080::8:800:200C:417A|5282|"), Command::Eprt(v6));
        assert_eq!(ok("eprt !1!132.235.1.2!6275!"), Command::Eprt(v4));
        assert_eq!(ok("EPRT ~2~1080::8:800:200C:417A~5282~"), Command::Eprt(v6));
        assert_eq!(
            ok("EPRT |2|::1|65535|"),
            Command::Eprt(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 65_535))
        );
        for bad in [
            "EPRT",
            "EPRT |1|132.235.1.2|6275",
            "EPRT |1|132.235.1.2|6275||",
            "EPRT |1|132.235.1.2|",
            "EPRT |1|132.235.1.256|6275|",
            "EPRT |1|132.235.1|6275|",
            "EPRT |1|::1|6275|",
            "EPRT |2|132.235.1.2|6275|",
            "EPRT |2|::1%eth0|6275|",
            "EPRT |1|132.235.1.2|65536|",
            "EPRT |1|132.235.1.2|0|",
            "EPRT |1|132.235.1.2|-1|",
            "EPRT |1|132.235.1.2|x|",
            "EPRT |1||6275|",
            "EPRT ||132.235.1.2|6275|",
            "EPRT |x|132.235.1.2|6275|",
            "EPRT |1!132.235.1.2!6275!",
            "EPRT .1.132.235.1.2.6275.",
        ] {
            syntax(bad);
        }
        // Delimiters outside 33..=126.
        assert!(matches!(
            parse_command(b"EPRT \x7f1\x7f1.2.3.4\x7f21\x7f"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"EPRT \x011\x011.2.3.4\x0121\x01"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command("EPRT é1é1.2.3.4é21é".as_bytes()),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            parse("EPRT |3|1.2.3.4|21|"),
            Err(CommandError::UnsupportedNetworkProtocol)
        );
        assert_eq!(CommandError::UnsupportedNetworkProtocol.reply_code(), 522);
    }

    #[test]
    fn epsv() {
        assert_eq!(ok("EPSV 1"), Command::Epsv(Epsv::Ipv4));
        assert_eq!(ok("EPSV 2"), Command::Epsv(Epsv::Ipv6));
        assert_eq!(ok("EPSV ALL"), Command::Epsv(Epsv::All));
        assert_eq!(ok("epsv all"), Command::Epsv(Epsv::All));
        assert_eq!(ok("EPSV "), Command::Epsv(Epsv::Unspecified));
        assert_eq!(
            parse("EPSV 3"),
            Err(CommandError::UnsupportedNetworkProtocol)
        );
        syntax("EPSV ANY");
    }

    #[test]
    fn allo_auth_prot() {
        assert_eq!(ok("ALLO 1000 R 512"), Command::Allo(1000));
        assert_eq!(ok("ALLO 0"), Command::Allo(0));
        syntax("ALLO");
        syntax("ALLO many");
        syntax("ALLO 1 X 2");
        assert_eq!(ok("AUTH TLS-C"), Command::Auth(Auth::Tls));
        assert_eq!(ok("auth ssl"), Command::Auth(Auth::Tls));
        assert_eq!(ok("AUTH tls"), Command::Auth(Auth::Tls));
        not_impl("AUTH KERBEROS_V4");
        not_impl("AUTH GSSAPI");
        syntax("AUTH");
        assert_eq!(ok("PROT c"), Command::Prot(Prot::Clear));
        not_impl("PROT S");
        not_impl("PROT E");
        syntax("PROT");
        syntax("PROT X");
    }

    #[test]
    fn error_replies() {
        let cases = [
            (CommandError::Empty, 500),
            (CommandError::Unknown(s("X")), 502),
            (CommandError::Syntax("bad."), 501),
            (CommandError::NotImplementedParam("no."), 504),
            (CommandError::Utf8, 501),
            (CommandError::UnsupportedNetworkProtocol, 522),
        ];
        for (error, code) in cases {
            assert_eq!(error.reply_code(), code);
            assert_eq!(error.to_reply().code(), code);
        }
        assert_eq!(
            CommandError::Syntax("REST needs a byte offset.")
                .to_reply()
                .to_bytes(),
            b"501 REST needs a byte offset.\r\n"
        );
    }
}
