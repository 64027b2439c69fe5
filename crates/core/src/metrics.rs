//! Counters, gauges and histograms of what the server does, in Prometheus
//! families, for the admin listener's `/metrics`.
//!
//! One process-wide [`Metrics`] ([`metrics()`]): the places that count —
//! the session layer (sessions, logins, transfers), the scanner, the key
//! provider calls of the [`Keyring`](crate::keys::Keyring), storage errors
//! as the vault sees them, the events queue — are deep in the core where no
//! handle reaches (a `From` conversion, a scan thread), and a registry has
//! nothing to configure. Labels take only fixed values (protocol, outcome,
//! verdict, kind): never a user name, path or address.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::session::Protocol;

/// Labels: the front end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByProtocol {
    protocol: &'static str,
}

/// Labels: the front end and what came of something.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOutcome {
    protocol: &'static str,
    outcome: &'static str,
}

/// Labels: the front end and the direction of a transfer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByDirection {
    protocol: &'static str,
    direction: &'static str,
}

/// Labels: a scan verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByVerdict {
    verdict: &'static str,
}

/// Labels: a key provider operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOperation {
    operation: &'static str,
}

/// Labels: a kind of error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByKind {
    kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 10 ms to about 45 minutes.
fn upload_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

/// Seconds from 1 ms to about 65 seconds.
fn scan_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

/// How a login ended, as `dropvault_logins_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Logged in.
    Ok,
    /// Wrong name, password or key.
    Failed,
    /// Refused because the client is (or just became) banned.
    Banned,
}

/// How a scan ended, as `dropvault_scans_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Nothing found.
    Clean,
    /// Something found.
    Infected,
    /// No verdict.
    Error,
}

/// Every family the server exposes, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_active: Family<ByProtocol, Gauge>,
    sessions: Family<ByProtocol, Counter>,
    logins: Family<ByOutcome, Counter>,
    bytes: Family<ByDirection, Counter>,
    files: Family<ByDirection, Counter>,
    upload_seconds: Histograms<ByProtocol>,
    scans: Family<ByVerdict, Counter>,
    scan_seconds: Histogram,
    key_calls: Family<ByOperation, Counter>,
    key_errors: Family<ByKind, Counter>,
    storage_errors: Counter,
    quota_refused: Counter,
    events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh families, all at zero (tests; the server uses [`metrics()`]).
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("dropvault"),
            sessions_active: Family::default(),
            sessions: Family::default(),
            logins: Family::default(),
            bytes: Family::default(),
            files: Family::default(),
            upload_seconds: Family::new_with_constructor(upload_histogram),
            scans: Family::default(),
            scan_seconds: scan_histogram(),
            key_calls: Family::default(),
            key_errors: Family::default(),
            storage_errors: Counter::default(),
            quota_refused: Counter::default(),
            events_dropped: Counter::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "sessions_active",
            "Logged-in sessions now",
            self.sessions_active.clone(),
        );
        r.register(
            "sessions",
            "Logged-in sessions begun",
            self.sessions.clone(),
        );
        r.register(
            "logins",
            "Login attempts by outcome (ok, failed, banned)",
            self.logins.clone(),
        );
        r.register(
            "transfer_bytes",
            "Plaintext bytes uploaded (in) and downloaded (out)",
            self.bytes.clone(),
        );
        r.register(
            "transfer_files",
            "Files uploaded (in, committed) and downloaded (out)",
            self.files.clone(),
        );
        r.register(
            "upload_duration_seconds",
            "Time from the first to the last byte of a committed upload",
            self.upload_seconds.clone(),
        );
        r.register(
            "scans",
            "Scan verdicts (clean, infected, error)",
            self.scans.clone(),
        );
        r.register(
            "scan_wait_seconds",
            "Wait for a scan verdict after an upload's last byte",
            self.scan_seconds.clone(),
        );
        r.register(
            "key_calls",
            "Calls to the key provider by operation",
            self.key_calls.clone(),
        );
        r.register(
            "key_errors",
            "Failed key provider calls (transient, permanent)",
            self.key_errors.clone(),
        );
        r.register(
            "storage_errors",
            "Storage failures (I/O errors, unavailable storage)",
            self.storage_errors.clone(),
        );
        r.register(
            "quota_refused",
            "Uploads refused for a user's quota",
            self.quota_refused.clone(),
        );
        r.register(
            "events_dropped",
            "Hook events dropped because the queue was full",
            self.events_dropped.clone(),
        );
    }

    /// Every family in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A session logged in through `protocol`.
    pub fn session_began(&self, protocol: Protocol) {
        let l = ByProtocol {
            protocol: protocol.as_str(),
        };
        self.sessions.get_or_create(&l).inc();
        self.sessions_active.get_or_create(&l).inc();
    }

    /// A logged-in session through `protocol` ended.
    pub fn session_ended(&self, protocol: Protocol) {
        let l = ByProtocol {
            protocol: protocol.as_str(),
        };
        self.sessions_active.get_or_create(&l).dec();
    }

    /// A login through `protocol` ended with `outcome`.
    pub fn login(&self, protocol: Protocol, outcome: LoginOutcome) {
        let outcome = match outcome {
            LoginOutcome::Ok => "ok",
            LoginOutcome::Failed => "failed",
            LoginOutcome::Banned => "banned",
        };
        self.logins
            .get_or_create(&ByOutcome {
                protocol: protocol.as_str(),
                outcome,
            })
            .inc();
    }

    /// An upload of `bytes` bytes through `protocol` was committed after
    /// `secs` seconds.
    pub fn uploaded(&self, protocol: Protocol, bytes: u64, secs: f64) {
        self.transferred(protocol, "in", bytes);
        self.upload_seconds
            .get_or_create(&ByProtocol {
                protocol: protocol.as_str(),
            })
            .observe(secs);
    }

    /// A download of `bytes` bytes through `protocol` finished.
    pub fn downloaded(&self, protocol: Protocol, bytes: u64) {
        self.transferred(protocol, "out", bytes);
    }

    fn transferred(&self, protocol: Protocol, direction: &'static str, bytes: u64) {
        let l = ByDirection {
            protocol: protocol.as_str(),
            direction,
        };
        self.bytes.get_or_create(&l).inc_by(bytes);
        self.files.get_or_create(&l).inc();
    }

    /// A scan ended with `outcome`, `waited` after the upload's last byte.
    pub fn scanned(&self, outcome: ScanOutcome, waited: Duration) {
        let verdict = match outcome {
            ScanOutcome::Clean => "clean",
            ScanOutcome::Infected => "infected",
            ScanOutcome::Error => "error",
        };
        self.scans.get_or_create(&ByVerdict { verdict }).inc();
        self.scan_seconds.observe(waited.as_secs_f64());
    }

    /// A call to the key provider (`operation`: wrap, unwrap, version,
    /// rewrap, status); `failed` with whether the error was transient.
    pub fn key_call(&self, operation: &'static str, failed: Option<bool>) {
        self.key_calls
            .get_or_create(&ByOperation { operation })
            .inc();
        if let Some(transient) = failed {
            let kind = if transient { "transient" } else { "permanent" };
            self.key_errors.get_or_create(&ByKind { kind }).inc();
        }
    }

    /// The storage failed (an I/O error, or storage that cannot be reached).
    pub fn storage_error(&self) {
        self.storage_errors.inc();
    }

    /// An upload was refused because it would take the user past their
    /// quota (the vault decides, for every front end alike).
    pub fn quota_refused(&self) {
        self.quota_refused.inc();
    }

    /// An event was dropped because the hooks queue was full.
    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn families_are_exposed_with_help_type_and_labels() {
        let m = Metrics::new();
        m.login(Protocol::Ftp, LoginOutcome::Ok);
        m.login(Protocol::Ftp, LoginOutcome::Ok);
        m.login(Protocol::Sftp, LoginOutcome::Banned);
        m.uploaded(Protocol::Sftp, 1234, 0.05);
        let text = m.encode();
        assert!(text.contains("# TYPE dropvault_logins counter"), "{text}");
        assert!(
            text.contains("# HELP dropvault_logins Login attempts"),
            "{text}"
        );
        assert_eq!(
            line(
                &text,
                "dropvault_logins_total{protocol=\"ftp\",outcome=\"ok\"}"
            ),
            Some("dropvault_logins_total{protocol=\"ftp\",outcome=\"ok\"} 2")
        );
        assert!(line(
            &text,
            "dropvault_logins_total{protocol=\"sftp\",outcome=\"banned\"} 1"
        )
        .is_some());
        assert!(line(
            &text,
            "dropvault_transfer_bytes_total{protocol=\"sftp\",direction=\"in\"} 1234"
        )
        .is_some());
        assert!(text.contains("# TYPE dropvault_upload_duration_seconds histogram"));
        assert!(line(
            &text,
            "dropvault_upload_duration_seconds_count{protocol=\"sftp\"} 1"
        )
        .is_some());
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn sessions_gauge_goes_up_and_down_and_counter_only_up() {
        let m = Metrics::new();
        m.session_began(Protocol::Ftp);
        m.session_began(Protocol::Ftp);
        m.session_ended(Protocol::Ftp);
        let text = m.encode();
        assert!(line(&text, "dropvault_sessions_active{protocol=\"ftp\"} 1").is_some());
        assert!(line(&text, "dropvault_sessions_total{protocol=\"ftp\"} 2").is_some());
    }

    #[test]
    fn key_errors_are_split_by_kind_and_unlabelled_counters_start_at_zero() {
        let m = Metrics::new();
        m.key_call("unwrap", None);
        m.key_call("unwrap", Some(true));
        m.key_call("wrap", Some(false));
        let text = m.encode();
        assert!(line(&text, "dropvault_key_calls_total{operation=\"unwrap\"} 2").is_some());
        assert!(line(&text, "dropvault_key_errors_total{kind=\"transient\"} 1").is_some());
        assert!(line(&text, "dropvault_key_errors_total{kind=\"permanent\"} 1").is_some());
        assert!(line(&text, "dropvault_storage_errors_total 0").is_some());
        assert!(line(&text, "dropvault_events_dropped_total 0").is_some());
    }
}
