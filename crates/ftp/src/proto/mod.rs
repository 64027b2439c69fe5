//! The pure protocol layer of the FTP front end: bytes in, typed values
//! out, and typed values back to bytes. No sockets, no tasks, no clock.
//!
//! It owns:
//!
//! - [`LineBuffer`]: where a control-connection line ends, how long it may
//!   be, and which bytes are Telnet control sequences;
//! - [`parse_command`]: the verbs we understand and the checked, typed form
//!   of their arguments ([`Command`]), and the reply for each way a line can
//!   be wrong ([`CommandError`]);
//! - [`Reply`]: reply codes and the wire format, single and multi-line,
//!   with texts neutralised so that no file name can forge a reply line;
//! - the listing formats: `ls -l` lines, RFC 3659 facts and MDTM times
//!   ([`list_line`], [`mlsx_facts`], [`mdtm`]).
//!
//! What a command does, the session state it needs and the data channel
//! live in the session; everything here can be tested without a network.

mod command;
mod line;
mod listing;
mod reply;

pub use command::{
    parse_command, Auth, Command, CommandError, Epsv, Opts, Password, Prot, SetTime, Type,
};
pub use line::{LineBuffer, LineEvent, MAX_LINE};
pub use listing::{list_line, mdtm, mlsx_cdir, mlsx_facts, parse_mdtm, Fact, MLST_FEAT};
pub use reply::{epsv_reply, pasv_reply, quote_path, Reply};
