//! Which TLS sessions a data connection may resume.
//!
//! The rule (docs/SECURITY.md, "Data connections"): with
//! `tls_session_reuse = "required"`, a protected data connection must
//! resume a TLS session that this server process issued to a control
//! connection — or to a data connection of one — that came from the same
//! client address and is logged in as the same user as the data
//! connection's own control connection. A full handshake is refused, and so
//! is a session issued to another address, to another user, or to a
//! control connection that never logged in. Sessions live in this process's
//! memory only, so nothing issued before a restart resumes.
//!
//! Why not only the control connection's own session: clients keep one TLS
//! session cache per server and share it among their connections (Go's
//! crypto/tls in rclone, OpenSSL-based clients), so a data connection often
//! presents a ticket its sibling control connection received. What the
//! check protects against is a third party taking over the data port; a
//! session issued to the same user at the same address proves the
//! connection comes from the client that user logged in with.
//!
//! How: one server-wide [`SessionCache`] remembers, for each session id or
//! TLS 1.3 ticket, the [`Grant`] it was issued under: the client address,
//! and the user — once known. A control connection's grant says which user
//! it logged in as (or that it ended without logging in). A data
//! connection's handshake gets a grant of its own that stays undecided until
//! the handshake is accepted: a client may present a ticket from a data
//! connection the moment it arrives, before the server has finished checking
//! that connection. A lookup from a data connection returns a session only
//! when its grant has the same address and the same user, or is undecided;
//! after a resumed handshake the data connection waits (within the data
//! timeout) until every grant it may have resumed is decided for its own
//! user, and is refused otherwise. So a stranger's full handshake leaves
//! nothing another connection could resume. Lookups leave entries in place,
//! so a TLS 1.3 ticket can be resumed more than once within its lifetime
//! (clients reuse them; early data is off, so a reuse replays nothing).
//!
//! Bounds: each control connection keeps its own handshake's sessions (a
//! few) and the newest of its data connections'; a control connection that
//! ended leaves its sessions for clients that still hold them, up to a
//! number of ended connections and [`LIFETIME`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustls::server::StoresServerSessions;
use tokio::sync::watch;

/// Sessions a control connection's own handshake may leave.
const OWN_SESSIONS: usize = 4;
/// Sessions of a control connection's data connections kept (the newest).
const DATA_SESSIONS: usize = 8;
/// Sessions one data handshake may issue, and resumable lookups it may
/// make (a client may offer several TLS 1.3 tickets; rustls stops at the
/// first it can use).
const PER_HANDSHAKE: usize = 4;
/// How long a session stays resumable: the lifetime rustls announces in
/// its stateful TLS 1.3 tickets.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Folds an IPv4-mapped IPv6 address to IPv4, so one client is one address.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whom a grant admits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Login {
    /// Not decided yet: a control connection logging in, a data handshake
    /// being checked.
    Pending,
    /// Connections of this user (from the grant's address).
    User(String),
    /// Nobody.
    Never,
}

/// Under what a session was issued: the client address, and the user.
#[derive(Debug)]
pub(crate) struct Grant {
    ip: IpAddr,
    login: watch::Sender<Login>,
}

impl Grant {
    fn new(ip: IpAddr) -> Arc<Self> {
        Arc::new(Self {
            ip: canonical_ip(ip),
            login: watch::Sender::new(Login::Pending),
        })
    }

    fn decide(&self, to: Login) {
        self.login.send_if_modified(|l| {
            if *l == Login::Pending {
                *l = to;
                true
            } else {
                false
            }
        });
    }

    /// Whether a data connection of `user` at `ip` may resume a session
    /// of this grant: `Some(true)` yes, `Some(false)` no, `None` not decided.
    fn admits(&self, ip: IpAddr, user: &str) -> Option<bool> {
        if self.ip != ip {
            return Some(false);
        }
        match &*self.login.borrow() {
            Login::Pending => None,
            Login::User(u) => Some(u == user),
            Login::Never => Some(false),
        }
    }

    /// [`Grant::admits`], waiting up to `timeout` for it to be decided.
    async fn admits_eventually(&self, ip: IpAddr, user: &str, timeout: Duration) -> bool {
        if let Some(yes) = self.admits(ip, user) {
            return yes;
        }
        let mut rx = self.login.subscribe();
        let decided = tokio::time::timeout(timeout, rx.wait_for(|l| *l != Login::Pending)).await;
        matches!(decided, Ok(Ok(l)) if *l == Login::User(user.to_owned()))
    }
}

/// Which of a control connection's lists a session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Own,
    Data,
}

struct Stored {
    value: Vec<u8>,
    grant: Arc<Grant>,
    at: Instant,
}

/// One control connection's sessions, oldest first.
#[derive(Default)]
struct Group {
    own: VecDeque<Vec<u8>>,
    data: VecDeque<Vec<u8>>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Vec<u8>, Stored>,
    groups: HashMap<u64, Group>,
    /// Groups whose control connection ended, in the order they ended.
    ended: VecDeque<(u64, Instant)>,
    next_group: u64,
}

impl Entries {
    fn drop_group(&mut self, id: u64) {
        if let Some(g) = self.groups.remove(&id) {
            for key in g.own.iter().chain(&g.data) {
                self.map.remove(key);
            }
        }
    }
}

/// The server's TLS sessions and the grant each was issued under.
/// Bounded: live control connections are bounded by the session limits,
/// each keeps at most [`OWN_SESSIONS`] + [`DATA_SESSIONS`]; of those that
/// ended, the `keep_ended` most recent keep theirs, for [`LIFETIME`] at
/// most.
pub(crate) struct SessionCache {
    entries: Mutex<Entries>,
    keep_ended: usize,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("sessions", &lock(&self.entries).map.len())
            .field("keep_ended", &self.keep_ended)
            .finish()
    }
}

impl SessionCache {
    /// A cache that keeps the sessions of up to `keep_ended` control
    /// connections after they end.
    pub(crate) fn new(keep_ended: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            keep_ended,
        }
    }

    /// Registers a control connection from `ip`.
    pub(crate) fn control(self: &Arc<Self>, ip: IpAddr) -> Arc<Control> {
        let mut e = lock(&self.entries);
        let id = e.next_group;
        e.next_group += 1;
        e.groups.insert(id, Group::default());
        Arc::new(Control {
            cache: self.clone(),
            group: id,
            grant: Grant::new(ip),
        })
    }

    fn insert(&self, key: Vec<u8>, value: Vec<u8>, grant: &Arc<Grant>, group: u64, origin: Origin) {
        let mut e = lock(&self.entries);
        let Some(g) = e.groups.get_mut(&group) else {
            return;
        };
        let (list, max) = match origin {
            Origin::Own => (&mut g.own, OWN_SESSIONS),
            Origin::Data => (&mut g.data, DATA_SESSIONS),
        };
        list.push_back(key.clone());
        let evicted = (list.len() > max).then(|| list.pop_front()).flatten();
        if let Some(old) = evicted {
            e.map.remove(&old);
        }
        e.map.insert(
            key,
            Stored {
                value,
                grant: grant.clone(),
                at: Instant::now(),
            },
        );
    }

    fn lookup(&self, key: &[u8]) -> Option<(Vec<u8>, Arc<Grant>)> {
        let e = lock(&self.entries);
        let s = e.map.get(key).filter(|s| s.at.elapsed() < LIFETIME)?;
        Some((s.value.clone(), s.grant.clone()))
    }

    /// A control connection ended: its sessions stay for a while; the
    /// oldest ended connections' go.
    fn end(&self, group: u64) {
        let now = Instant::now();
        let mut e = lock(&self.entries);
        e.ended.push_back((group, now));
        while let Some(&(id, at)) = e.ended.front() {
            if e.ended.len() <= self.keep_ended && now.duration_since(at) < LIFETIME {
                break;
            }
            e.ended.pop_front();
            e.drop_group(id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).map.len()
    }
}

/// A control connection as an issuer of TLS sessions.
#[derive(Debug)]
pub(crate) struct Control {
    cache: Arc<SessionCache>,
    group: u64,
    grant: Arc<Grant>,
}

impl Control {
    /// The control connection logged in as `user`.
    pub(crate) fn logged_in(&self, user: &str) {
        self.grant.login.send_replace(Login::User(user.to_owned()));
    }

    /// The control connection ended. If it never logged in, its own
    /// sessions admit nobody.
    pub(crate) fn ended(&self) {
        self.grant.decide(Login::Never);
        self.cache.end(self.group);
    }
}

/// A control connection's view of the cache: the sessions its handshake
/// issues are its own; it may resume any session issued to its address
/// (resuming grants a control connection nothing: it still logs in).
#[derive(Debug)]
pub(crate) struct ControlSessions(pub(crate) Arc<Control>);

impl StoresServerSessions for ControlSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let c = &self.0;
        c.cache.insert(key, value, &c.grant, c.group, Origin::Own);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (value, grant) = self.0.cache.lookup(key)?;
        (grant.ip == self.0.grant.ip).then_some(value)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// One data connection's view of the cache (see the module's rule).
#[derive(Debug)]
pub(crate) struct DataSessions {
    /// The data connection's own control connection, logged in as `user`.
    control: Arc<Control>,
    user: String,
    /// The grant of the sessions this handshake issues: decided by
    /// [`DataSessions::accept_resumption`].
    grant: Arc<Grant>,
    /// Grants of the sessions this handshake looked up and may have
    /// resumed.
    resumable: Mutex<Vec<Arc<Grant>>>,
    issued: Mutex<usize>,
}

impl DataSessions {
    pub(crate) fn new(control: Arc<Control>, user: String) -> Self {
        let grant = Grant::new(control.grant.ip);
        Self {
            control,
            user,
            grant,
            resumable: Mutex::new(Vec::new()),
            issued: Mutex::new(0),
        }
    }

    /// After a handshake that resumed: whether every session it may have
    /// resumed was issued to this user at this address (waiting up to
    /// `timeout` for decisions in progress). The sessions the handshake
    /// issued admit this user from now on if so, nobody if not.
    pub(crate) async fn accept_resumption(&self, timeout: Duration) -> bool {
        let grants = std::mem::take(&mut *lock(&self.resumable));
        let ip = self.control.grant.ip;
        let mut ok = !grants.is_empty();
        for grant in &grants {
            if ok && !grant.admits_eventually(ip, &self.user, timeout).await {
                ok = false;
            }
        }
        self.grant.decide(if ok {
            Login::User(self.user.clone())
        } else {
            Login::Never
        });
        ok
    }
}

impl Drop for DataSessions {
    fn drop(&mut self) {
        // Not accepted (a full handshake, or it failed): nobody.
        self.grant.decide(Login::Never);
    }
}

impl StoresServerSessions for DataSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut issued = lock(&self.issued);
        if *issued >= PER_HANDSHAKE {
            return false;
        }
        *issued += 1;
        let c = &self.control;
        c.cache
            .insert(key, value, &self.grant, c.group, Origin::Data);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (value, grant) = self.control.cache.lookup(key)?;
        if grant.admits(self.control.grant.ip, &self.user) == Some(false) {
            return None;
        }
        let mut resumable = lock(&self.resumable);
        if resumable.len() >= PER_HANDSHAKE {
            return None;
        }
        resumable.push(grant);
        Some(value)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn cache() -> Arc<SessionCache> {
        Arc::new(SessionCache::new(3))
    }

    fn data(control: &Arc<Control>, user: &str) -> DataSessions {
        DataSessions::new(control.clone(), user.to_owned())
    }

    fn own(control: &Arc<Control>, key: &[u8]) {
        ControlSessions(control.clone()).put(key.to_vec(), b"value".to_vec());
    }

    #[tokio::test]
    async fn same_user_same_address_resumes_a_sibling_session() {
        let cache = cache();
        let a = cache.control(ip("10.0.0.1"));
        let b = cache.control(ip("::ffff:10.0.0.1"));
        own(&a, b"ticket-a");
        a.logged_in("alice");
        b.logged_in("alice");
        let d = data(&b, "alice");
        assert_eq!(d.take(b"ticket-a").as_deref(), Some(&b"value"[..]));
        // Usable more than once.
        assert_eq!(d.take(b"ticket-a").as_deref(), Some(&b"value"[..]));
        d.put(b"ticket-d".to_vec(), b"v2".to_vec());
        // What the data handshake issued is there at once, undecided...
        let other = data(&a, "alice");
        assert!(other.take(b"ticket-d").is_some());
        // ... and admits alice once the handshake is accepted.
        assert!(d.accept_resumption(SEC).await);
        assert!(other.accept_resumption(SEC).await);
        // The control connection's end leaves its sessions resumable.
        a.ended();
        let again = data(&b, "alice");
        assert!(again.take(b"ticket-a").is_some());
        assert!(again.accept_resumption(SEC).await);
    }

    #[tokio::test]
    async fn other_users_other_addresses_and_failed_logins_are_refused() {
        let cache = cache();
        let alice = cache.control(ip("10.0.0.1"));
        let bob = cache.control(ip("10.0.0.1"));
        let far = cache.control(ip("10.0.0.2"));
        let never = cache.control(ip("10.0.0.1"));
        own(&bob, b"bob");
        own(&far, b"far");
        own(&never, b"never");
        alice.logged_in("alice");
        bob.logged_in("bob");
        far.logged_in("alice");
        let d = data(&alice, "alice");
        assert!(d.take(b"bob").is_none());
        assert!(d.take(b"far").is_none());
        assert!(d.take(b"unknown").is_none());
        // A control connection still logging in: resumable for now, decided
        // after the handshake.
        assert!(d.take(b"never").is_some());
        d.put(b"issued".to_vec(), b"v".to_vec());
        never.ended();
        assert!(!d.accept_resumption(SEC).await);
        // What that refused handshake issued admits nobody.
        let d2 = data(&alice, "alice");
        assert!(d2.take(b"issued").is_none());
        // Nothing looked up: not a resumption of ours.
        assert!(!d2.accept_resumption(SEC).await);
        // A full handshake's sessions (never accepted) admit nobody either.
        let full = data(&alice, "alice");
        full.put(b"full".to_vec(), b"v".to_vec());
        drop(full);
        assert!(data(&alice, "alice").take(b"full").is_none());
    }

    #[tokio::test]
    async fn a_pending_login_is_waited_for() {
        let cache = cache();
        let a = cache.control(ip("10.0.0.1"));
        let b = cache.control(ip("10.0.0.1"));
        own(&b, b"b");
        a.logged_in("alice");
        let d = data(&a, "alice");
        assert!(d.take(b"b").is_some());
        let b2 = b.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            b2.logged_in("alice");
        });
        assert!(d.accept_resumption(Duration::from_secs(10)).await);
        // Still undecided at the deadline: refused.
        let c = cache.control(ip("10.0.0.1"));
        own(&c, b"c");
        let d = data(&a, "alice");
        assert!(d.take(b"c").is_some());
        assert!(!d.accept_resumption(Duration::from_millis(10)).await);
    }

    #[test]
    fn bounded_per_connection_and_after_the_end() {
        let cache = cache();
        let a = cache.control(ip("10.0.0.1"));
        for i in 0..100u32 {
            own(&a, &i.to_be_bytes());
            data(&a, "alice").put((1000 + i).to_be_bytes().to_vec(), b"v".to_vec());
        }
        assert_eq!(cache.len(), OWN_SESSIONS + DATA_SESSIONS);
        assert!(cache.lookup(&99u32.to_be_bytes()).is_some());
        assert!(cache.lookup(&0u32.to_be_bytes()).is_none());
        assert!(cache.lookup(&1099u32.to_be_bytes()).is_some());
        assert!(cache.lookup(&1000u32.to_be_bytes()).is_none());
        // Three ended connections keep theirs; the fourth pushes a's out.
        a.ended();
        for n in 0..3u32 {
            let c = cache.control(ip("10.0.0.3"));
            own(&c, &(5000 + n).to_be_bytes());
            c.ended();
        }
        assert!(cache.lookup(&99u32.to_be_bytes()).is_none());
        assert_eq!(cache.len(), 3);
    }
}
