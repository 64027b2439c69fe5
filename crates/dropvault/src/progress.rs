//! A progress bar for long operator commands (verify, import): drawn on
//! standard error when it is a terminal, absent otherwise. Report lines go
//! to standard output either way, above the bar.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Redraw at most this often.
const REDRAW: Duration = Duration::from_millis(100);
/// Width of the bar itself, in characters.
const WIDTH: u64 = 30;

/// Bytes and files done out of a known total.
pub(crate) struct Progress {
    enabled: bool,
    label: &'static str,
    total_bytes: u64,
    total_files: u64,
    bytes: u64,
    files: u64,
    drawn: Option<Instant>,
}

impl Progress {
    /// A bar for `total_files` files of `total_bytes` bytes, shown if
    /// standard error is a terminal.
    pub(crate) fn new(label: &'static str, total_files: u64, total_bytes: u64) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            label,
            total_bytes,
            total_files,
            bytes: 0,
            files: 0,
            drawn: None,
        }
    }

    /// Whether a bar is shown (else callers print a line per item).
    pub(crate) fn is_bar(&self) -> bool {
        self.enabled
    }

    /// `n` more bytes done.
    pub(crate) fn bytes(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_add(n);
        self.draw(false);
    }

    /// One more file done.
    pub(crate) fn file_done(&mut self) {
        self.files += 1;
        self.draw(false);
    }

    /// Prints a report line, keeping the bar below it.
    pub(crate) fn line(&mut self, text: &str) {
        if self.enabled {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
        drop(out);
        self.draw(true);
    }

    /// Removes the bar.
    pub(crate) fn finish(&mut self) {
        if self.enabled {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }

    fn draw(&mut self, force: bool) {
        if !self.enabled || (!force && self.drawn.is_some_and(|t| t.elapsed() < REDRAW)) {
            return;
        }
        self.drawn = Some(Instant::now());
        let filled = (self.bytes.min(self.total_bytes) * WIDTH)
            .checked_div(self.total_bytes)
            .unwrap_or(WIDTH);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        let _ = write!(
            std::io::stderr().lock(),
            "\r\x1b[2K{} [{bar}] {}/{} files, {} / {}",
            self.label,
            self.files,
            self.total_files,
            human(self.bytes),
            human(self.total_bytes)
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Bytes in binary units, one decimal.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
