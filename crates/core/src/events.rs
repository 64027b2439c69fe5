//! Events for the outside world: login, failed login, logout, upload,
//! upload_rejected, download, delete, rename. Front ends [`Hooks::emit`]
//! them; one delivery thread hands each, as JSON, to a webhook (HTTP POST)
//! and/or a command (JSON on standard input and in `DROPVAULT_EVENT`; run
//! as `hooks.run_as`, in `/`, without the server's environment), retrying
//! failures with backoff. The queue between them is bounded and `emit`
//! never waits: when it is full the event is dropped, counted and logged,
//! so a slow receiver never slows a transfer.

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Longest wait between two delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// One event, as JSON: `{"event": "upload", "time": 1764300000.123,
/// "user": "alice", "peer": "10.0.0.5:50122", "path": "/in/a.pdf", "size": 1234}`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// `login`, `login_failed`, `logout`, `upload`, `upload_rejected`,
    /// `download`, `delete`, `rename`, `mkdir`, `rmdir`.
    pub event: &'static str,
    /// The front end: `ftp` or `sftp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The user (as given, for a failed login).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The file (the old name, for a rename).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The new name, for a rename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Plaintext bytes of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// What the scanner found, for a rejected upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

impl Event {
    /// An event of kind `event`, now.
    pub fn new(event: &'static str) -> Self {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            event,
            protocol: None,
            time,
            user: None,
            peer: None,
            path: None,
            to: None,
            size: None,
            finding: None,
        }
    }

    /// With the front end's name.
    pub fn protocol(mut self, protocol: &'static str) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// With the user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// With the client's address.
    pub fn peer(mut self, peer: impl ToString) -> Self {
        self.peer = Some(peer.to_string());
        self
    }

    /// With the file.
    pub fn path(mut self, path: impl ToString) -> Self {
        self.path = Some(path.to_string());
        self
    }

    /// With the new name of a renamed file.
    pub fn to(mut self, to: impl ToString) -> Self {
        self.to = Some(to.to_string());
        self
    }

    /// With the plaintext size.
    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// With a scanner's finding.
    pub fn finding(mut self, finding: impl Into<String>) -> Self {
        self.finding = Some(finding.into());
        self
    }
}

/// Where events go.
#[derive(Clone, Default)]
pub struct HookSettings {
    /// URL to POST each event to.
    pub webhook_url: Option<String>,
    /// Proxy URL to reach the webhook through; `None` = straight (proxy
    /// variables in the environment are never used).
    pub webhook_proxy: Option<String>,
    /// Key for the `X-Dropvault-Signature` header (HMAC-SHA256 of the
    /// body), so the receiver can tell the events are dropvault's.
    pub webhook_secret: Option<zeroize::Zeroizing<String>>,
    /// Command (argv) to run for each event.
    pub command: Vec<String>,
    /// Events waiting at most; more are dropped.
    pub queue: usize,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// Limit for one delivery attempt.
    pub timeout: Duration,
    /// The account the command runs as (`None`: the server's own).
    pub run_as: Option<crate::RunAs>,
}

impl std::fmt::Debug for HookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSettings")
            .field("webhook_url", &self.webhook_url)
            .field("webhook_proxy", &self.webhook_proxy)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("command", &self.command)
            .field("queue", &self.queue)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("run_as", &self.run_as)
            .finish()
    }
}

impl HookSettings {
    /// Whether the settings can be used (checked again by [`Hooks::start`];
    /// configuration loading calls it to fail early).
    pub fn check(&self) -> Result<(), HookError> {
        if let Some(u) = self.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            if !u.starts_with("http://") && !u.starts_with("https://") {
                return Err(HookError::BadConfig(
                    "hooks.webhook_url must start with http:// or https://".into(),
                ));
            }
        }
        if self.command.first().is_some_and(String::is_empty) {
            return Err(HookError::BadConfig(
                "hooks.command: empty program name".into(),
            ));
        }
        Ok(())
    }
}

/// Why hooks could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// A setting cannot be used.
    #[error("hooks settings: {0}")]
    BadConfig(String),
}

/// The event queue and its delivery thread.
#[derive(Debug, Default)]
pub struct Hooks {
    tx: Mutex<Option<SyncSender<Event>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl Hooks {
    /// No hooks: `emit` does nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts delivering to what `settings` names (nothing named: disabled).
    pub fn start(settings: HookSettings) -> Result<Self, HookError> {
        settings.check()?;
        let url = settings.webhook_url.clone().filter(|u| !u.is_empty());
        if url.is_none() && settings.command.is_empty() {
            return Ok(Self::disabled());
        }
        let agent = url
            .as_ref()
            .map(|u| {
                crate::http::agent(
                    settings.timeout,
                    None,
                    u.starts_with("https://"),
                    settings.webhook_proxy.as_deref(),
                )
            })
            .transpose()
            .map_err(|e| HookError::BadConfig(e.to_string()))?;
        let (tx, rx) = mpsc::sync_channel::<Event>(settings.queue.max(1));
        let signer = settings
            .webhook_secret
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|k| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k.as_bytes()));
        let deliver = Delivery {
            url,
            agent,
            signer,
            settings,
        };
        let worker = thread::Builder::new()
            .name("dropvault-hooks".into())
            .spawn(move || {
                for event in rx {
                    deliver.event(&event);
                }
            })
            .map_err(|e| HookError::BadConfig(format!("cannot start the hook thread: {e}")))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            dropped: AtomicU64::new(0),
        })
    }

    /// Delivers events emitted from now on to what `settings` names (a
    /// reload). Events already queued go out as configured when they were
    /// queued, from the old delivery thread, which ends when its queue is
    /// empty. On failure nothing changes.
    pub fn reconfigure(&self, settings: HookSettings) -> Result<(), HookError> {
        let new = Self::start(settings)?;
        let tx = new.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
        let worker = new
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The old sender goes first (its thread drains and ends); the old
        // thread is not waited for.
        *self.tx.lock().unwrap_or_else(PoisonError::into_inner) = tx;
        *self.worker.lock().unwrap_or_else(PoisonError::into_inner) = worker;
        Ok(())
    }

    /// Queues `event` for delivery; never waits. A full queue drops it.
    pub fn emit(&self, event: Event) {
        let held = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = held.as_ref() else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(event)) => {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                crate::metrics::metrics().event_dropped();
                // The first few, then ever more rarely: a flood of dropped
                // events does not flood the log too.
                if total < 10 || total.is_power_of_two() || total.is_multiple_of(1000) {
                    tracing::warn!(
                        event = "events_dropped",
                        dropped_total = total,
                        kind = event.event,
                        "event queue full; event dropped"
                    );
                }
            }
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops taking events and gives the delivery thread up to `grace` to
    /// deliver what is queued.
    pub fn shutdown(&self, grace: Duration) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let Some(worker) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let deadline = Instant::now() + grace;
        while !worker.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if worker.is_finished() {
            let _ = worker.join();
        } else {
            tracing::warn!("event delivery still busy at shutdown; undelivered events are lost");
        }
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!(
                event = "events_dropped",
                dropped_total = dropped,
                "events dropped in all"
            );
        }
    }
}

/// The delivery thread's side.
struct Delivery {
    url: Option<String>,
    agent: Option<ureq::Agent>,
    signer: Option<aws_lc_rs::hmac::Key>,
    settings: HookSettings,
}

impl Delivery {
    fn event(&self, event: &Event) {
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        if let (Some(url), Some(agent)) = (&self.url, &self.agent) {
            let signature = self.signer.as_ref().map(|key| {
                let tag = aws_lc_rs::hmac::sign(key, json.as_bytes());
                format!("sha256={}", crate::hex(tag.as_ref()))
            });
            self.with_retries("webhook", event, || {
                post(agent, url, &json, signature.as_deref())
            });
        }
        if !self.settings.command.is_empty() {
            self.with_retries("command", event, || run(&self.settings, &json));
        }
    }

    fn with_retries(
        &self,
        what: &str,
        event: &Event,
        mut attempt: impl FnMut() -> Result<(), String>,
    ) {
        let mut backoff = Duration::from_millis(250);
        for n in 0..=self.settings.retries {
            match attempt() {
                Ok(()) => return,
                Err(e) if n == self.settings.retries => {
                    tracing::warn!(event = "event_delivery_failed", hook = what, kind = event.event,
                        error = %e, attempts = n + 1, "event not delivered");
                }
                Err(e) => {
                    tracing::debug!(hook = what, error = %e, "event delivery failed; retrying");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn post(agent: &ureq::Agent, url: &str, json: &str, signature: Option<&str>) -> Result<(), String> {
    let mut req = agent.post(url).header("Content-Type", "application/json");
    if let Some(sig) = signature {
        req = req.header("X-Dropvault-Signature", sig);
    }
    let resp = req.send(json.as_bytes()).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn run(settings: &HookSettings, json: &str) -> Result<(), String> {
    let (argv, timeout) = (&settings.command, settings.timeout);
    let program = argv.first().map_or("", String::as_str);
    let mut child = crate::hookproc::hook_command(argv, settings.run_as.as_ref())
        .env("DROPVAULT_EVENT", json)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // An event is a few hundred bytes: it fits the pipe, no deadlock.
        let _ = stdin.write_all(json.as_bytes());
    }
    match crate::hookproc::wait_or_kill(&mut child, timeout) {
        Ok(Some(s)) if s.success() => Ok(()),
        Ok(Some(s)) => Err(format!("{program} exited with {s}")),
        Ok(None) => Err(format!("{program} took longer than {timeout:?}; killed")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_without_empty_fields() {
        let e = Event::new("rename").user("alice").path("/a").to("/b");
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).expect("json")).expect("parse");
        assert_eq!(json["event"], "rename");
        assert_eq!(json["to"], "/b");
        assert!(json.get("size").is_none() && json.get("finding").is_none());
        assert!(json["time"].as_f64().is_some_and(|t| t > 1.0e9));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // A command that takes a while: the first event occupies the
        // thread, one waits in the queue, the rest are dropped.
        let hooks = Hooks::start(HookSettings {
            webhook_url: None,
            webhook_proxy: None,
            webhook_secret: None,
            command: vec!["sleep".into(), "2".into()],
            queue: 1,
            retries: 0,
            timeout: Duration::from_secs(5),
            run_as: None,
        })
        .expect("start");
        for _ in 0..20 {
            hooks.emit(Event::new("login").user("x"));
        }
        // At most one event is being delivered and one waits: had emit
        // waited for room, nothing would have been dropped.
        assert!(hooks.dropped() >= 18, "dropped {}", hooks.dropped());
        hooks.shutdown(Duration::from_millis(100));
    }
}
