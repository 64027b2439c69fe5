//! The `dropvault` command: configuration, wiring, and the subcommands an
//! operator runs.

use std::process::ExitCode;

const USAGE: &str = "\
dropvault — an FTP/FTPS file-drop server that keeps every file encrypted at rest

Usage: dropvault <COMMAND>

Commands:
  serve      Run the server (FTP/FTPS over the encrypted vault)
  help       Show this text

Options:
  -h, --help     Show this text
  -V, --version  Show the version
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let cmd = args.next();
    match cmd.as_deref() {
        None | Some("help" | "-h" | "--help") => {
            out(USAGE);
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            out(&format!("dropvault {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Some("serve") => {
            err(
                "dropvault serve: not yet — the at-rest format and keys are in place; \
                 the FTP/FTPS front end is the next piece of work.\n",
            );
            ExitCode::from(2)
        }
        Some(other) => {
            err(&format!("dropvault: unknown command {other:?}\n\n{USAGE}"));
            ExitCode::from(2)
        }
    }
}

fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn err(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}
