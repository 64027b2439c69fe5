//! Brute-force defence shared by every front end: failed logins counted per
//! client and per target account, bans, and a guess budget that sessions
//! opened in parallel cannot multiply.
//!
//! - A *client* is an IPv4 address, or an IPv6 address cut to a prefix
//!   (default /64: one customer's network), with IPv4-mapped IPv6 folded to
//!   IPv4 ([`ClientId`]).
//! - Each failure is recorded with the account it named. A client is banned
//!   when its failures within the window reach the limit, whatever accounts
//!   they named. A successful login forgets only the failures against *that*
//!   account, so logging in as yourself does not buy guesses at another.
//! - A password check is an [`Attempt`]: it is admitted only while the
//!   client's failures plus its checks in flight stay below the limit. A
//!   client cannot start more guesses at once than it has left, however many
//!   sessions it opened; further checks wait until one ends.
//! - A check that ended in a server-side fault (accounts or key service
//!   unavailable) is dropped without an outcome: it counts for nothing.
//! - Every operation is amortised O(1): failures expire from a queue in time
//!   order, never by scanning the table, and the table has a hard size cap.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Clients tracked at most (failures or checks in flight). Past this, the
/// oldest failures are forgotten first: a spray from more addresses than
/// this weakens bans rather than exhausting memory.
const MAX_CLIENTS: usize = 1 << 18;

/// A client as bans and per-client limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(IpAddr);

impl ClientId {
    /// The client `ip` belongs to: IPv4 as is (IPv4-mapped IPv6 folded to
    /// IPv4), IPv6 cut to its first `v6_prefix` bits (0..=128).
    pub fn new(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let bits = u32::from(v6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The rules of [`Guard`].
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Failed logins of one client within `window` that ban it (at least 1).
    pub ban_after_failures: usize,
    /// Window in which failures are counted.
    pub window: Duration,
    /// How long a ban lasts.
    pub ban_duration: Duration,
}

/// The failure and ban table of one server.
#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    state: Mutex<State>,
    /// Woken whenever a check ends, for checks waiting for budget.
    ended: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<ClientId, Client>,
    /// One entry per recorded failure, oldest first.
    failures: VecDeque<(Instant, ClientId)>,
    bans: HashMap<ClientId, Instant>,
    /// One entry per ban, oldest first (all bans last as long).
    ban_order: VecDeque<(Instant, ClientId)>,
    /// Queue entries looked at by expiry, for the test of its cost.
    #[cfg(test)]
    visited: usize,
}

#[derive(Debug, Default)]
struct Client {
    /// Recent failures and the account each named, oldest first.
    failures: VecDeque<(Instant, Box<str>)>,
    in_flight: usize,
}

/// Why a check may not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The client is banned.
    #[error("too many failed logins from this address")]
    Banned,
}

/// What a failed check led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; the client may try again.
    Counted,
    /// This failure banned the client.
    Banned,
}

impl Guard {
    /// An empty table.
    pub fn new(mut config: GuardConfig) -> Self {
        config.ban_after_failures = config.ban_after_failures.max(1);
        Self {
            config,
            state: Mutex::new(State::default()),
            ended: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `client` is banned now.
    pub fn is_banned(&self, client: ClientId) -> bool {
        let now = Instant::now();
        let mut s = self.state();
        s.expire(now, self.config.window);
        s.bans.get(&client).is_some_and(|until| *until > now)
    }

    /// Starts a password check for `client`, waiting while the client's
    /// failures and checks in flight use up its budget. Refused at once if
    /// the client is banned, or becomes banned while waiting. Callers bound
    /// the wait (a login timeout).
    pub async fn attempt(self: &Arc<Self>, client: ClientId) -> Result<Attempt, Refused> {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.try_begin(client, Instant::now())? {
                return Ok(Attempt {
                    guard: self.clone(),
                    client,
                    open: true,
                });
            }
            ended.await;
        }
    }

    /// Admits a check if the budget allows; `Ok(false)` when it must wait.
    fn try_begin(&self, client: ClientId, now: Instant) -> Result<bool, Refused> {
        let mut s = self.state();
        s.expire(now, self.config.window);
        if s.bans.get(&client).is_some_and(|until| *until > now) {
            return Err(Refused::Banned);
        }
        let c = s.clients.entry(client).or_default();
        if c.failures.len() + c.in_flight >= self.config.ban_after_failures {
            return Ok(false);
        }
        c.in_flight += 1;
        if s.clients.len() > MAX_CLIENTS {
            s.evict_oldest(client);
        }
        Ok(true)
    }

    fn end(&self, client: ClientId, outcome: Outcome<'_>, now: Instant) -> Failure {
        let mut s = self.state();
        s.expire(now, self.config.window);
        let mut verdict = Failure::Counted;
        let mut drop_entry = false;
        let mut fail = false;
        if let Some(c) = s.clients.get_mut(&client) {
            c.in_flight = c.in_flight.saturating_sub(1);
            match outcome {
                Outcome::Failed(account) => {
                    c.failures.push_back((now, account.into()));
                    if c.failures.len() >= self.config.ban_after_failures {
                        c.failures.clear();
                        verdict = Failure::Banned;
                    }
                    fail = true;
                }
                Outcome::Succeeded(account) => c.failures.retain(|(_, a)| &**a != account),
                Outcome::None => {}
            }
            drop_entry = c.failures.is_empty() && c.in_flight == 0;
        }
        if drop_entry {
            s.clients.remove(&client);
        }
        if fail && verdict == Failure::Counted {
            s.failures.push_back((now, client));
        }
        if verdict == Failure::Banned {
            let until = now + self.config.ban_duration;
            s.bans.insert(client, until);
            s.ban_order.push_back((until, client));
            if s.bans.len() > MAX_CLIENTS {
                if let Some((_, oldest)) = s.ban_order.pop_front() {
                    s.bans.remove(&oldest);
                }
            }
        }
        drop(s);
        self.ended.notify_waiters();
        verdict
    }

    /// Clients in the table (failures, checks in flight or bans).
    pub fn tracked(&self) -> usize {
        let s = self.state();
        s.clients.len() + s.bans.len()
    }
}

enum Outcome<'a> {
    Failed(&'a str),
    Succeeded(&'a str),
    None,
}

impl State {
    /// Forgets failures older than `window` and bans that ran out, looking
    /// only at queue entries that are due.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(at, client)) = self.failures.front() {
            if now.saturating_duration_since(at) < window {
                break;
            }
            self.failures.pop_front();
            #[cfg(test)]
            {
                self.visited += 1;
            }
            if let Some(c) = self.clients.get_mut(&client) {
                while c
                    .failures
                    .front()
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
                {
                    c.failures.pop_front();
                }
                if c.failures.is_empty() && c.in_flight == 0 {
                    self.clients.remove(&client);
                }
            }
        }
        while let Some(&(until, client)) = self.ban_order.front() {
            if until > now {
                break;
            }
            self.ban_order.pop_front();
            if self.bans.get(&client).is_some_and(|u| *u <= now) {
                self.bans.remove(&client);
            }
        }
    }

    /// Makes room by forgetting the oldest recorded failure of a client
    /// other than `keep`.
    fn evict_oldest(&mut self, keep: ClientId) {
        while let Some((_, client)) = self.failures.pop_front() {
            if client == keep {
                continue;
            }
            if let Some(c) = self.clients.get_mut(&client) {
                c.failures.pop_front();
                if c.failures.is_empty() && c.in_flight == 0 {
                    self.clients.remove(&client);
                }
                return;
            }
        }
    }
}

/// One password check in flight. End it with [`Attempt::failed`] or
/// [`Attempt::succeeded`]; dropping it instead (a server-side fault, a
/// cancelled session) counts for nothing.
#[derive(Debug)]
pub struct Attempt {
    guard: Arc<Guard>,
    client: ClientId,
    open: bool,
}

impl Attempt {
    /// The password was wrong (or the account may not log in): counted
    /// against the client, with the account it named.
    pub fn failed(mut self, account: &str) -> Failure {
        self.open = false;
        self.guard
            .end(self.client, Outcome::Failed(account), Instant::now())
    }

    /// The login succeeded: the client's failures against this account are
    /// forgotten, those against others stay.
    pub fn succeeded(mut self, account: &str) {
        self.open = false;
        self.guard
            .end(self.client, Outcome::Succeeded(account), Instant::now());
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.open {
            self.guard.end(self.client, Outcome::None, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn guard(n: usize) -> Arc<Guard> {
        Arc::new(Guard::new(GuardConfig {
            ban_after_failures: n,
            window: Duration::from_secs(300),
            ban_duration: Duration::from_secs(900),
        }))
    }

    fn v4(last: u8) -> ClientId {
        ClientId::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), 64)
    }

    fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    fn begin(g: &Arc<Guard>, c: ClientId) -> Attempt {
        now_or_never(g.attempt(c))
            .expect("admitted at once")
            .expect("not banned")
    }

    #[test]
    fn addresses_are_canonical() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(ClientId::new(mapped, 64), v4(7));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ClientId::new(a, 64), ClientId::new(b, 64));
        assert_ne!(ClientId::new(a, 64), ClientId::new(c, 64));
        assert_eq!(ClientId::new(a, 48), ClientId::new(c, 48));
        assert_ne!(ClientId::new(a, 128), ClientId::new(b, 128));
        assert_eq!(ClientId::new(a, 0), ClientId::new(c, 0));
        assert_eq!(ClientId::new(a, 64).to_string(), "2001:db8:1:2::");
    }

    #[test]
    fn a_login_as_one_account_does_not_forgive_guesses_at_another() {
        let g = guard(5);
        let c = v4(1);
        for _ in 0..3 {
            for _ in 0..4 {
                let a = begin(&g, c);
                if a.failed("alice") == Failure::Banned {
                    // The fifth guess at alice, in the second round.
                    assert!(g.is_banned(c));
                    return;
                }
            }
            begin(&g, c).succeeded("mallory");
        }
        panic!("never banned");
    }

    #[test]
    fn a_login_forgives_its_own_account() {
        let g = guard(3);
        let c = v4(2);
        for _ in 0..10 {
            begin(&g, c).failed("bob");
            begin(&g, c).failed("bob");
            begin(&g, c).succeeded("bob");
        }
        assert!(!g.is_banned(c));
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn parallel_checks_cannot_exceed_the_budget() {
        let g = guard(3);
        let c = v4(3);
        let held: Vec<_> = (0..3).map(|_| begin(&g, c)).collect();
        // A fourth check waits, from any session.
        assert!(now_or_never(g.attempt(c)).is_none());
        // Another client is not held up.
        assert!(now_or_never(g.attempt(v4(4))).is_some());
        let mut verdicts: Vec<_> = held.into_iter().map(|a| a.failed("alice")).collect();
        assert_eq!(verdicts.pop(), Some(Failure::Banned));
        assert_eq!(
            now_or_never(g.attempt(c)).expect("not waiting").err(),
            Some(Refused::Banned)
        );
    }

    #[test]
    fn a_check_without_outcome_counts_for_nothing() {
        let g = guard(2);
        let c = v4(5);
        for _ in 0..10 {
            drop(begin(&g, c));
        }
        assert!(!g.is_banned(c));
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn a_waiting_check_runs_when_one_ends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let g = guard(1);
            let c = v4(6);
            let first = g.attempt(c).await.expect("first");
            let g2 = g.clone();
            let second = tokio::spawn(async move { g2.attempt(c).await.map(|a| a.succeeded("x")) });
            tokio::task::yield_now().await;
            assert!(!second.is_finished());
            first.succeeded("x");
            assert_eq!(second.await.expect("joined"), Ok(()));
        });
    }

    #[test]
    fn expiry_is_amortised_over_many_addresses() {
        let g = guard(5);
        let t0 = Instant::now();
        let n: u32 = 100_000;
        for i in 0..n {
            let c = ClientId::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 64);
            assert_eq!(g.try_begin(c, t0), Ok(true));
            g.end(c, Outcome::Failed("alice"), t0);
        }
        assert_eq!(g.tracked(), n as usize);
        // Each failure was looked at by expiry at most once so far (none
        // was due), not once per failure per table entry.
        assert_eq!(g.state().visited, 0);
        let later = t0 + Duration::from_secs(301);
        let c = v4(9);
        assert_eq!(g.try_begin(c, later), Ok(true));
        g.end(c, Outcome::Failed("alice"), later);
        // All old entries went in one pass of the queue, each once.
        assert_eq!(g.tracked(), 1);
        assert_eq!(g.state().visited, n as usize);
    }

    #[test]
    fn bans_run_out() {
        let g = guard(1);
        let c = v4(8);
        let t0 = Instant::now();
        assert_eq!(g.try_begin(c, t0), Ok(true));
        assert_eq!(g.end(c, Outcome::Failed("a"), t0), Failure::Banned);
        assert_eq!(g.try_begin(c, t0), Err(Refused::Banned));
        let later = t0 + Duration::from_secs(901);
        assert_eq!(g.try_begin(c, later), Ok(true));
        assert_eq!(g.state().bans.len(), 0);
    }
}
