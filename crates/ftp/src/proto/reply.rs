//! Replies on the control connection and their wire format.
//!
//! A [`Reply`] is a code and one or more lines of text. Its texts are
//! neutralised when it is built (CR and LF become `?`), so nothing that
//! ends up in a reply — a file name, a path, a scanner's verdict — can end
//! the reply early or forge another one.

use std::net::SocketAddrV4;

/// What replaces CR and LF in reply texts.
const NEUTRAL: &str = "?";

/// A reply to the client: a three-digit code and its text lines.
///
/// One line is sent as `226 text\r\n`. Several lines use the RFC 959
/// multi-line form: the first line is `code-text`, every middle line starts
/// with a space (so a text that starts with digits cannot be taken for the
/// end of the reply; RFC 2389 FEAT and RFC 3659 MLST replies require that
/// space too), and the last line is `code text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    /// Never empty; no element contains CR or LF.
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply. `code` must be a reply code (100..=599); the codes
    /// come from this crate, never from the peer.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        debug_assert!((100..600).contains(&code), "not a reply code: {code}");
        Reply {
            code,
            lines: vec![neutralise(text.into())],
        }
    }

    /// A reply of several lines; the last one closes the reply (`"End"` in
    /// FEAT replies, for example). No lines at all makes one empty line.
    pub fn multi<I, S>(code: u16, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        debug_assert!((100..600).contains(&code), "not a reply code: {code}");
        let mut lines: Vec<String> = lines
            .into_iter()
            .map(|line| neutralise(line.into()))
            .collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply { code, lines }
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text lines, already neutralised.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The reply as sent on the wire, CRLF-terminated.
    pub fn to_bytes(&self) -> Vec<u8> {
        let code = self.code;
        let mut out = String::new();
        match self.lines.as_slice() {
            [] => out.push_str(&format!("{code} \r\n")),
            [only] => out.push_str(&format!("{code} {only}\r\n")),
            [first, middle @ .., last] => {
                out.push_str(&Reply::multi_start(code, first));
                for line in middle {
                    out.push_str(&Reply::multi_middle(line));
                }
                out.push_str(&format!("{code} {last}\r\n"));
            }
        }
        out.into_bytes()
    }

    /// The first line of a multi-line reply sent a piece at a time (one too
    /// long to build whole, such as a STAT listing): `code-text`, CRLF.
    /// [`Reply::multi_middle`] lines follow, then a [`Reply::new`] with the
    /// same code ends it.
    pub fn multi_start(code: u16, text: &str) -> String {
        format!("{code}-{}\r\n", neutralise(text.to_owned()))
    }

    /// A middle line of a multi-line reply: a space, the text, CRLF.
    pub fn multi_middle(text: &str) -> String {
        format!(" {}\r\n", neutralise(text.to_owned()))
    }

    /// 150: about to open the data connection.
    pub fn opening_data() -> Self {
        Reply::new(150, "Opening data connection.")
    }

    /// 150 for STOU, naming the file the server chose (RFC 1123 4.1.2.9).
    pub fn opening_data_named(name: &str) -> Self {
        Reply::new(150, format!("FILE: {name}"))
    }

    /// 200: command okay.
    pub fn ok(text: impl Into<String>) -> Self {
        Reply::new(200, text)
    }

    /// 202: command accepted, nothing to do (ALLO: no space is reserved).
    pub fn superfluous(text: impl Into<String>) -> Self {
        Reply::new(202, text)
    }

    /// 213: file status, such as the answer to SIZE or MDTM.
    pub fn file_status(text: impl Into<String>) -> Self {
        Reply::new(213, text)
    }

    /// 215: system type, the answer to SYST.
    pub fn system_type() -> Self {
        Reply::new(215, "UNIX Type: L8")
    }

    /// 220: service ready, the greeting.
    pub fn service_ready(text: impl Into<String>) -> Self {
        Reply::new(220, text)
    }

    /// 221: closing the control connection after QUIT.
    pub fn goodbye() -> Self {
        Reply::new(221, "Goodbye.")
    }

    /// 226: transfer complete, data connection closed.
    pub fn transfer_complete(text: impl Into<String>) -> Self {
        Reply::new(226, text)
    }

    /// 230: logged in.
    pub fn logged_in() -> Self {
        Reply::new(230, "Login successful.")
    }

    /// 234: AUTH accepted; the TLS handshake follows.
    pub fn auth_ok() -> Self {
        Reply::new(234, "Proceed with TLS negotiation.")
    }

    /// 250: requested file action okay, completed.
    pub fn file_action_ok(text: impl Into<String>) -> Self {
        Reply::new(250, text)
    }

    /// 257: a path reply (PWD, MKD), the path quoted per RFC 959 and
    /// followed by `text`.
    pub fn path(path: &str, text: &str) -> Self {
        Reply::new(257, format!("{} {text}", quote_path(path)))
    }

    /// 331: user name okay, password needed.
    pub fn need_password() -> Self {
        Reply::new(331, "Password required.")
    }

    /// 350: pending further information (after REST or RNFR).
    pub fn pending(text: impl Into<String>) -> Self {
        Reply::new(350, text)
    }

    /// 421: service not available; the control connection will close.
    pub fn closing(text: impl Into<String>) -> Self {
        Reply::new(421, text)
    }

    /// 425: cannot open the data connection.
    pub fn cannot_open_data(text: impl Into<String>) -> Self {
        Reply::new(425, text)
    }

    /// 426: connection closed, transfer aborted.
    pub fn transfer_aborted(text: impl Into<String>) -> Self {
        Reply::new(426, text)
    }

    /// 451: action aborted, local error in processing.
    pub fn local_error(text: impl Into<String>) -> Self {
        Reply::new(451, text)
    }

    /// 500: line not understood (too long, empty).
    pub fn unrecognised(text: impl Into<String>) -> Self {
        Reply::new(500, text)
    }

    /// 501: syntax error in parameters or arguments.
    pub fn syntax_error(text: impl Into<String>) -> Self {
        Reply::new(501, text)
    }

    /// 502: command not implemented.
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Reply::new(502, text)
    }

    /// 503: bad sequence of commands (RNTO without RNFR, PASS before USER).
    pub fn bad_sequence(text: impl Into<String>) -> Self {
        Reply::new(503, text)
    }

    /// 504: command not implemented for that parameter.
    pub fn param_not_implemented(text: impl Into<String>) -> Self {
        Reply::new(504, text)
    }

    /// 530: not logged in.
    pub fn not_logged_in(text: impl Into<String>) -> Self {
        Reply::new(530, text)
    }

    /// 550: requested action not taken; file unavailable.
    pub fn unavailable(text: impl Into<String>) -> Self {
        Reply::new(550, text)
    }

    /// 552: exceeded storage allocation.
    pub fn storage_exceeded(text: impl Into<String>) -> Self {
        Reply::new(552, text)
    }

    /// 553: file name not allowed.
    pub fn name_not_allowed(text: impl Into<String>) -> Self {
        Reply::new(553, text)
    }
}

/// 227, the answer to PASV: `Entering Passive Mode (h1,h2,h3,h4,p1,p2)`.
pub fn pasv_reply(addr: SocketAddrV4) -> Reply {
    let [h1, h2, h3, h4] = addr.ip().octets();
    let port = addr.port();
    Reply::new(
        227,
        format!(
            "Entering Passive Mode ({h1},{h2},{h3},{h4},{},{})",
            port / 256,
            port % 256
        ),
    )
}

/// 229, the answer to EPSV (RFC 2428): `Entering Extended Passive Mode
/// (|||port|)`.
pub fn epsv_reply(port: u16) -> Reply {
    Reply::new(229, format!("Entering Extended Passive Mode (|||{port}|)"))
}

/// Quotes a path for a 257 reply: wrapped in double quotes, each double
/// quote inside doubled (RFC 959, appendix II), so clients can find where
/// the path ends whatever it contains.
pub fn quote_path(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// Replaces CR and LF, the only bytes that could end a reply line early.
fn neutralise(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], NEUTRAL)
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn wire(reply: &Reply) -> String {
        String::from_utf8(reply.to_bytes()).expect("replies are UTF-8")
    }

    #[test]
    fn single_line() {
        assert_eq!(
            wire(&Reply::transfer_complete("Transfer complete.")),
            "226 Transfer complete.\r\n"
        );
        assert_eq!(wire(&Reply::new(200, "")), "200 \r\n");
        assert_eq!(Reply::goodbye().code(), 221);
        assert_eq!(Reply::system_type().lines(), ["UNIX Type: L8"]);
    }

    #[test]
    fn multi_line() {
        let reply = Reply::multi(211, ["first", "second", "End"]);
        assert_eq!(wire(&reply), "211-first\r\n second\r\n211 End\r\n");
        let reply = Reply::multi(211, ["Features:", "UTF8", "EPSV", "End"]);
        assert_eq!(
            wire(&reply),
            "211-Features:\r\n UTF8\r\n EPSV\r\n211 End\r\n"
        );
        // Two lines: no middle.
        assert_eq!(wire(&Reply::multi(214, ["a", "b"])), "214-a\r\n214 b\r\n");
    }

    #[test]
    fn multi_line_degenerate_forms() {
        assert_eq!(wire(&Reply::multi(211, ["only"])), "211 only\r\n");
        assert_eq!(wire(&Reply::multi(211, Vec::<String>::new())), "211 \r\n");
    }

    #[test]
    fn middle_line_starting_with_digits_cannot_end_the_reply() {
        let reply = Reply::multi(250, ["Listing", "226 fake end", "End"]);
        let text = wire(&reply);
        assert_eq!(text, "250-Listing\r\n 226 fake end\r\n250 End\r\n");
        // Exactly one line starts with "250 ", and it is the last.
        let ends: Vec<_> = text
            .split("\r\n")
            .filter(|l| l.starts_with("250 "))
            .collect();
        assert_eq!(ends, ["250 End"]);
    }

    #[test]
    fn a_multi_line_reply_sent_in_pieces_is_the_same_reply() {
        let whole = Reply::multi(213, ["Status of a\r\nb:", "line 1", "226 x", "End"]);
        let pieces = [
            Reply::multi_start(213, "Status of a\r\nb:"),
            Reply::multi_middle("line 1"),
            Reply::multi_middle("226 x"),
            wire(&Reply::new(213, "End")),
        ]
        .concat();
        assert_eq!(pieces, wire(&whole));
        assert_eq!(Reply::multi_middle("a\nb"), " a?b\r\n");
    }

    #[test]
    fn cr_lf_in_texts_are_neutralised() {
        let name = "evil\r\n226 Transfer complete.\r\nx";
        let reply = Reply::unavailable(format!("{name}: no such file"));
        assert_eq!(
            wire(&reply),
            "550 evil??226 Transfer complete.??x: no such file\r\n"
        );
        let reply = Reply::multi(211, ["a\nb", "c\rd", "e\r\nf"]);
        assert_eq!(wire(&reply), "211-a?b\r\n c?d\r\n211 e??f\r\n");
        assert!(reply.lines().iter().all(|l| !l.contains(['\r', '\n'])));
        let reply = Reply::path("/a\nb", "created");
        assert_eq!(wire(&reply), "257 \"/a?b\" created\r\n");
    }

    #[test]
    fn quoting_paths() {
        assert_eq!(quote_path("/"), "\"/\"");
        assert_eq!(quote_path("/a b/c"), "\"/a b/c\"");
        assert_eq!(quote_path("/say \"hi\""), "\"/say \"\"hi\"\"\"");
        assert_eq!(quote_path(""), "\"\"");
        assert_eq!(
            wire(&Reply::path("/my \"dir\"", "is the current directory")),
            "257 \"/my \"\"dir\"\"\" is the current directory\r\n"
        );
    }

    #[test]
    fn passive_replies() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 20), 50_000);
        assert_eq!(
            wire(&pasv_reply(addr)),
            "227 Entering Passive Mode (192,168,1,20,195,80)\r\n"
        );
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 255);
        assert_eq!(
            wire(&pasv_reply(addr)),
            "227 Entering Passive Mode (10,0,0,1,0,255)\r\n"
        );
        let addr = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 65_535);
        assert_eq!(
            wire(&pasv_reply(addr)),
            "227 Entering Passive Mode (127,0,0,1,255,255)\r\n"
        );
        assert_eq!(
            wire(&epsv_reply(50_000)),
            "229 Entering Extended Passive Mode (|||50000|)\r\n"
        );
    }
}
