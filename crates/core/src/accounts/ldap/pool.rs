//! Connections to the directory, bound as the service account and reused.
//!
//! Each connection is ldap3's blocking `LdapConn` (it carries its own
//! single-threaded runtime), used by one login at a time. Up to `keep`
//! connections wait between logins; at busy times up to `max_open` are
//! open at once, and a login finding all of them busy waits for one at
//! most `timeout`. A connection that failed in any way is closed, never
//! reused. A kept connection may have been closed by the directory
//! meanwhile (a restart, an idle timeout): when one fails, the idle ones
//! are closed too and the work runs once more on a new connection.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ldap3::{LdapConn, LdapConnSettings, LdapError};
use rustls::ClientConfig;

use crate::accounts::AuthError;
use crate::secret::Secret;

/// How a connection is made and bound.
pub(super) struct Connector {
    /// `ldaps://…` or `ldap://…`.
    pub(super) url: String,
    /// Upgrade `ldap://` with StartTLS.
    pub(super) starttls: bool,
    /// Server certificates are checked with this (None: plain `ldap://`).
    pub(super) tls: Option<Arc<ClientConfig>>,
    /// For connecting (TCP, StartTLS and TLS together) and for each
    /// operation.
    pub(super) timeout: Duration,
    /// The service account; empty = anonymous.
    pub(super) bind_dn: String,
    /// Its password.
    pub(super) bind_password: Secret,
}

/// An operation on a connection failed: the connection is closed.
pub(super) struct Fault {
    /// What the login answers.
    pub(super) error: AuthError,
    /// Whether it was a timeout (the directory is slow; no second try).
    timed_out: bool,
}

impl From<AuthError> for Fault {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            timed_out: false,
        }
    }
}

/// `what` failed with ldap3's `error` (a broken or slow connection).
pub(super) fn fault(url: &str, what: &str, error: &LdapError) -> Fault {
    Fault {
        error: AuthError::Unavailable(format!("{url}: {what}: {error}")),
        timed_out: matches!(error, LdapError::Timeout { .. }),
    }
}

impl Connector {
    /// A new connection, bound as the service account.
    fn open(&self) -> Result<LdapConn, Fault> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        let mut conn = LdapConn::with_settings(settings, &self.url)
            .map_err(|e| fault(&self.url, "connecting", &e))?;
        if !self.bind_dn.is_empty() {
            self.bind_service(&mut conn)?;
        }
        Ok(conn)
    }

    /// Binds `conn` as the service account again (after a user's bind),
    /// or anonymously when there is none.
    pub(super) fn bind_service(&self, conn: &mut LdapConn) -> Result<(), Fault> {
        let result = conn
            .with_timeout(self.timeout)
            .simple_bind(&self.bind_dn, self.bind_password.expose())
            .map_err(|e| fault(&self.url, "binding as the service account", &e))?;
        if result.rc == 0 {
            return Ok(());
        }
        tracing::warn!(
            event = "ldap_service_bind_refused",
            url = %self.url,
            bind_dn = %self.bind_dn,
            rc = result.rc,
            text = %result.text,
            "the directory refused the service account: check auth.ldap.bind_dn and its password"
        );
        Err(AuthError::Unavailable(format!(
            "{}: the directory refused the service account {:?} (result {})",
            self.url, self.bind_dn, result.rc
        ))
        .into())
    }
}

/// The pool.
pub(super) struct Pool {
    connector: Connector,
    state: Mutex<State>,
    freed: Condvar,
    keep: usize,
    max_open: usize,
}

struct State {
    idle: Vec<LdapConn>,
    /// Connections open (idle or in use) plus those being opened.
    open: usize,
}

/// A place in the pool taken by one login: frees it when dropped, keeping
/// the connection given back with [`Slot::keep`].
struct Slot<'a> {
    pool: &'a Pool,
    conn: Option<LdapConn>,
}

impl Slot<'_> {
    fn keep(mut self, conn: LdapConn) {
        self.conn = Some(conn);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.pool.release(self.conn.take());
    }
}

impl Pool {
    /// A pool of at most `keep` idle and `max_open` open connections.
    pub(super) fn new(connector: Connector, keep: usize, max_open: usize) -> Self {
        Self {
            connector,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            keep,
            max_open: max_open.max(1),
        }
    }

    /// How connections are made.
    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` on a service-bound connection. A connection on which it
    /// fails is closed; when that was a kept one and the failure was not a
    /// timeout, `work` runs once more on a new connection.
    pub(super) fn run<T>(
        &self,
        mut work: impl FnMut(&mut LdapConn) -> Result<T, Fault>,
    ) -> Result<T, AuthError> {
        let (slot, mut conn, reused) = self.checkout()?;
        match work(&mut conn) {
            Ok(value) => {
                slot.keep(conn);
                return Ok(value);
            }
            Err(fault) if !reused || fault.timed_out => return Err(fault.error),
            Err(fault) => {
                tracing::debug!(error = %fault.error, "a kept LDAP connection failed; trying a new one");
            }
        }
        drop((slot, conn));
        self.close_idle();
        let (slot, mut conn, _) = self.checkout()?;
        let value = work(&mut conn).map_err(|f| f.error)?;
        slot.keep(conn);
        Ok(value)
    }

    /// Opens one connection and keeps it, to learn early whether the
    /// directory answers and accepts the service account.
    pub(super) fn warm_up(&self) -> Result<(), AuthError> {
        self.run(|_| Ok(()))
    }

    /// A kept connection (`true`), else a new one, waiting at most the
    /// timeout for a place when `max_open` are in use.
    fn checkout(&self) -> Result<(Slot<'_>, LdapConn, bool), AuthError> {
        let deadline = Instant::now() + self.connector.timeout;
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok((
                    Slot {
                        pool: self,
                        conn: None,
                    },
                    conn,
                    true,
                ));
            }
            if state.open < self.max_open {
                state.open += 1;
                drop(state);
                // From here the place is the slot's: freed if opening fails.
                let slot = Slot {
                    pool: self,
                    conn: None,
                };
                let conn = self.connector.open().map_err(|f| f.error)?;
                return Ok((slot, conn, false));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AuthError::Unavailable(format!(
                    "{}: all {} connections to the directory stayed busy",
                    self.connector.url, self.max_open
                )));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Frees a place, keeping `conn` if given and there is room.
    fn release(&self, conn: Option<LdapConn>) {
        let surplus = {
            let mut state = self.lock();
            match conn {
                Some(conn) if state.idle.len() < self.keep => {
                    state.idle.push(conn);
                    None
                }
                other => {
                    state.open = state.open.saturating_sub(1);
                    other
                }
            }
        };
        self.freed.notify_one();
        // Closed outside the lock.
        drop(surplus);
    }

    /// Closes the idle connections (after one of them turned out broken,
    /// the others likely are too).
    fn close_idle(&self) {
        let idle = {
            let mut state = self.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open = state.open.saturating_sub(idle.len());
            idle
        };
        self.freed.notify_all();
        drop(idle);
    }
}
