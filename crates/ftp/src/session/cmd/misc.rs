//! SYST, FEAT, OPTS, TYPE, HELP: answers that need no state.

use crate::config::TlsMode;
use crate::proto::{Opts, Reply, Type, MLST_FEAT};
use crate::session::Session;

pub(crate) fn opts(o: Opts) -> Reply {
    match o {
        Opts::Utf8(_) => Reply::ok("UTF8 mode is always on."),
        Opts::Unsupported(name) => Reply::new(501, format!("Option {name} not understood.")),
    }
}

/// TYPE A is accepted and transfers stay binary, as vsftpd does by default:
/// the server never rewrites file contents.
pub(crate) fn type_(t: Type) -> Reply {
    match t {
        Type::Ascii => Reply::ok("Type set to A (transfers are binary)."),
        Type::Image => Reply::ok("Type set to I."),
    }
}

pub(crate) fn help() -> Reply {
    Reply::multi(
        214,
        [
            "Commands understood:",
            "USER PASS QUIT NOOP SYST FEAT OPTS TYPE MODE STRU HELP ALLO STAT",
            "PWD CWD CDUP MKD RMD DELE RNFR RNTO SIZE MDTM MFMT",
            "REST RETR STOR APPE STOU LIST NLST MLSD MLST ABOR",
            "PASV EPSV PORT EPRT AUTH PBSZ PROT (and XPWD XCWD XCUP XMKD XRMD)",
            "Help OK.",
        ],
    )
}

impl Session {
    /// FEAT lists exactly what this session supports.
    pub(crate) fn cmd_feat(&self) -> Reply {
        let mut lines = vec!["Features:".to_owned()];
        if self.shared.config.tls != TlsMode::Off && self.shared.tls.is_some() {
            lines.extend(["AUTH TLS".into(), "PBSZ".into(), "PROT".into()]);
        }
        lines.extend([
            "UTF8".into(),
            "SIZE".into(),
            "MDTM".into(),
            "MFMT".into(),
            "REST STREAM".into(),
            MLST_FEAT.into(),
            "TVFS".into(),
            "EPSV".into(),
            "PASV".into(),
        ]);
        if self.shared.config.active_mode {
            lines.push("EPRT".into());
        }
        lines.push("End".into());
        Reply::multi(211, lines)
    }
}
