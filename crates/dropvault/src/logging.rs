//! The log: records on standard error, text or JSON, filtered by
//! `RUST_LOG` (default `info`) — and two rules no `RUST_LOG` lifts:
//!
//! - HTTP wire dumps stay out. ureq-proto logs every byte sent and
//!   received at trace (the key service token, data keys going to and
//!   coming from transit), ureq request details at trace: those targets
//!   are capped at [`WIRE_DUMPS`].
//! - A field value from outside (a user name, a path) cannot forge other
//!   fields: in the text format, a value with whitespace, `=`, `"` or a
//!   control character is written quoted and escaped (`user="x peer=1"`),
//!   and control characters in messages are escaped, so one record is one
//!   line. JSON escapes by itself.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};

use crate::config::LogFormat;
use tracing::{Level, Metadata};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Targets that dump what goes over the wire, and the most verbose level
/// they may log at.
const WIRE_DUMPS: [(&str, Level); 2] = [("ureq_proto", Level::INFO), ("ureq", Level::DEBUG)];

/// Installs the global subscriber, writing records in `format`.
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: escapes in a log file or journal are
    // noise, and break line-based parsing.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let no_wire = tracing_subscriber::filter::filter_fn(no_wire_dump);
    if format == LogFormat::Json {
        builder
            .json()
            .flatten_event(true)
            .finish()
            .with(no_wire)
            .init();
    } else {
        builder
            .fmt_fields(QuotedFields)
            .finish()
            .with(no_wire)
            .init();
    }
}

/// Whether a record may be written: not from a wire-dumping target above
/// its cap.
fn no_wire_dump(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    WIRE_DUMPS.iter().all(|(prefix, max)| {
        let inside = target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        !inside || meta.level() <= max
    })
}

/// The text format's fields: `name=value`, the value quoted when it could
/// be read as more than one value.
struct QuotedFields;

impl<'w> FormatFields<'w> for QuotedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        let name = field.name();
        // tracing-log's metadata of `log` records, shown by the formatter
        // already.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let pad = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{pad}{}", Escaped(value))
        } else if needs_quotes(value) {
            write!(self.writer, "{pad}{name}={value:?}")
        } else {
            write!(self.writer, "{pad}{name}={value}")
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        if write!(text, "{value:?}").is_err() {
            self.result = Err(fmt::Error);
            return;
        }
        self.write(field, &text);
    }
}

/// Whether `value` must be quoted to stay one value: empty, or with
/// whitespace, `=`, `"` or a control character.
fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"')
}

/// A message with its control characters escaped (`\n`, `\u{1b}`).
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_could_forge_fields_are_quoted() {
        for plain in ["alice", "10.0.0.9:1", "/in/a.pdf", "ca\u{e9}"] {
            assert!(!needs_quotes(plain), "{plain}");
        }
        for forged in [
            "x peer=10.0.0.9:1",
            "a\nb",
            "say \"hi\"",
            "k=v",
            "",
            "tab\t",
        ] {
            assert!(needs_quotes(forged), "{forged:?}");
        }
        assert_eq!(Escaped("one\nline\u{1b}").to_string(), "one\\nline\\u{1b}");
    }
}
