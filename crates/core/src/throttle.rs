//! Bandwidth limits: token buckets per session, per user (all of one
//! user's sessions together) and for the whole server, upload and download
//! separately (`[limits]`, docs/OPERATIONS.md "Bandwidth limits").
//!
//! A session's [`Throttle`] holds the buckets that apply to it; a front end
//! calls [`Throttle::upload`] with the bytes it read from the client and
//! [`Throttle::download`] with those it is about to send. Each waits until
//! every bucket that applies (session, user, total) has let the bytes
//! through. Where no limit applies the lane holds no bucket and the call
//! returns on its first poll: no lock, no clock, no sleep.
//!
//! Buckets count KiB (bytes are carried over between calls, so nothing is
//! lost to rounding) — a GCRA period per KiB is exact to a few parts per
//! million where one per byte would round to whole nanoseconds (1.4% off at
//! 20 MiB/s). A bucket's burst is a tenth of a second of its rate, and at
//! least 1 MiB (one download chunk, more than one SFTP packet), so no
//! single transfer step waits on more than a burst at once.
//!
//! Time is tokio's clock, so a paused test runtime drives it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Bytes per token.
const KIB: u64 = 1024;
/// The smallest burst, in KiB: one 1 MiB download chunk.
const MIN_BURST_KIB: u64 = 1024;

/// One direction's limits, bytes per second; 0 = none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Each session on its own.
    pub session: u64,
    /// All of one user's sessions together.
    pub user: u64,
    /// The whole server.
    pub total: u64,
}

/// The limits of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateConfig {
    /// Bytes from clients.
    pub upload: Rate,
    /// Bytes to clients.
    pub download: Rate,
}

/// Time as tokio sees it, since the bucket was made.
#[derive(Clone, Debug)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.elapsed())
    }
}

/// A token bucket of KiB.
struct Bucket {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
    burst: NonZeroU32,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("burst_kib", &self.burst)
            .finish()
    }
}

impl Bucket {
    /// A bucket letting `rate` bytes per second through; `None` for 0.
    fn new(rate: u64) -> Option<Arc<Self>> {
        if rate == 0 {
            return None;
        }
        let burst_kib = (rate / KIB / 10).clamp(MIN_BURST_KIB, u64::from(u32::MAX));
        let burst = NonZeroU32::new(u32::try_from(burst_kib).unwrap_or(u32::MAX))?;
        let per_kib_ns = (1_000_000_000u128 * u128::from(KIB) / u128::from(rate)).max(1);
        let period = Duration::from_nanos(u64::try_from(per_kib_ns).unwrap_or(u64::MAX));
        let quota = Quota::with_period(period)?.allow_burst(burst);
        let clock = TokioClock(tokio::time::Instant::now());
        Some(Arc::new(Self {
            limiter: RateLimiter::new(quota, InMemoryState::default(), clock.clone()),
            clock,
            burst,
        }))
    }

    /// Waits until `kib` KiB have gone through, a burst at most at a time.
    async fn take(&self, mut kib: u64) {
        while kib > 0 {
            let step = kib.min(u64::from(self.burst.get()));
            let Some(n) = u32::try_from(step).ok().and_then(NonZeroU32::new) else {
                return;
            };
            match self.limiter.check_n(n) {
                Ok(Ok(())) => kib -= step,
                Ok(Err(not_until)) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
                // A step is never more than the burst; should the bucket
                // say otherwise, it cannot limit this step.
                Err(_) => kib -= step,
            }
        }
    }
}

/// A user's buckets, shared by their sessions.
#[derive(Debug, Default)]
struct Pair {
    upload: Option<Arc<Bucket>>,
    download: Option<Arc<Bucket>>,
}

impl Pair {
    fn new(upload: u64, download: u64) -> Self {
        Self {
            upload: Bucket::new(upload),
            download: Bucket::new(download),
        }
    }
}

/// The server's limits and shared buckets: the whole server's, and each
/// logged-in user's for as long as they have a session (like their data
/// key in the keyring). The map of users holds only users with a live
/// session plus those who left since the last login, so it is bounded by
/// the session limit.
#[derive(Debug)]
pub struct Rates {
    config: RateConfig,
    total: Pair,
    users: Mutex<HashMap<String, Weak<Pair>>>,
}

impl Rates {
    /// Buckets for `config`.
    pub fn new(config: RateConfig) -> Self {
        Self {
            config,
            total: Pair::new(config.upload.total, config.download.total),
            users: Mutex::default(),
        }
    }

    /// A throttle for a new session of `user`.
    pub fn session(&self, user: &str) -> Throttle {
        let mine = Pair::new(self.config.upload.session, self.config.download.session);
        let theirs = self.user(user);
        let lane = |pick: fn(&Pair) -> &Option<Arc<Bucket>>| {
            Lane::new(
                [Some(&mine), theirs.as_deref(), Some(&self.total)]
                    .into_iter()
                    .flatten()
                    .filter_map(|p| pick(p).clone())
                    .collect(),
            )
        };
        Throttle {
            upload: lane(|p| &p.upload),
            download: lane(|p| &p.download),
            _user: theirs,
        }
    }

    /// `user`'s shared buckets, made when their first session starts;
    /// `None` when no per-user limit is set.
    fn user(&self, user: &str) -> Option<Arc<Pair>> {
        let (up, down) = (self.config.upload.user, self.config.download.user);
        if up == 0 && down == 0 {
            return None;
        }
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pair) = users.get(user).and_then(Weak::upgrade) {
            return Some(pair);
        }
        users.retain(|_, w| w.strong_count() > 0);
        let pair = Arc::new(Pair::new(up, down));
        users.insert(user.to_owned(), Arc::downgrade(&pair));
        Some(pair)
    }

    /// Users with buckets in the map (for tests of its bound).
    #[cfg(test)]
    fn users_held(&self) -> usize {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The buckets of one direction of one session, and the bytes not yet
/// charged (less than a KiB). `None` when nothing limits it.
#[derive(Clone, Debug)]
struct Lane(Option<Arc<LaneInner>>);

#[derive(Debug)]
struct LaneInner {
    buckets: Vec<Arc<Bucket>>,
    carry: Mutex<u64>,
}

impl Lane {
    fn new(buckets: Vec<Arc<Bucket>>) -> Self {
        if buckets.is_empty() {
            return Self(None);
        }
        Self(Some(Arc::new(LaneInner {
            buckets,
            carry: Mutex::new(0),
        })))
    }

    async fn pass(&self, bytes: usize) {
        let Some(inner) = &self.0 else {
            return;
        };
        let kib = {
            let mut carry = inner.carry.lock().unwrap_or_else(PoisonError::into_inner);
            let total = carry.saturating_add(bytes as u64);
            *carry = total % KIB;
            total / KIB
        };
        if kib == 0 {
            return;
        }
        for bucket in &inner.buckets {
            bucket.take(kib).await;
        }
    }
}

/// One session's bandwidth limits. Cheap to clone (a transfer task takes
/// a copy); the user's shared buckets live while any copy does.
#[derive(Clone, Debug)]
pub struct Throttle {
    upload: Lane,
    download: Lane,
    _user: Option<Arc<Pair>>,
}

impl Throttle {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self {
            upload: Lane(None),
            download: Lane(None),
            _user: None,
        }
    }

    /// Waits until `bytes` received from the client fit the upload limits.
    pub async fn upload(&self, bytes: usize) {
        self.upload.pass(bytes).await;
    }

    /// Waits until `bytes` about to be sent fit the download limits.
    pub async fn download(&self, bytes: usize) {
        self.download.pass(bytes).await;
    }

    /// Whether neither direction is limited.
    pub fn is_unlimited(&self) -> bool {
        self.upload.0.is_none() && self.download.0.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Sends `total` bytes in `step`-byte pieces through `lane`'s
    /// direction of `t`; the virtual time it took.
    async fn push(t: &Throttle, upload: bool, total: u64, step: usize) -> Duration {
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        while sent < total {
            if upload {
                t.upload(step).await;
            } else {
                t.download(step).await;
            }
            sent += step as u64;
        }
        start.elapsed()
    }

    fn rates(upload: Rate, download: Rate) -> Rates {
        Rates::new(RateConfig { upload, download })
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_limit_paces_to_its_rate_after_one_burst() {
        let rate = 4 * MIB;
        let r = rates(
            Rate {
                session: rate,
                ..Rate::default()
            },
            Rate::default(),
        );
        let t = r.session("alice");
        let total = 40 * MIB;
        let took = push(&t, true, total, 32 * 1024).await;
        // 1 MiB burst (a tenth of 4 MiB/s is less than the 1 MiB floor).
        let least = Duration::from_secs_f64((total - MIB) as f64 / rate as f64);
        assert!(took >= least, "{took:?} < {least:?}");
        assert!(took <= least + Duration::from_millis(50), "{took:?}");
        // Downloads are not limited: no virtual time passes.
        assert_eq!(push(&t, false, total, 32 * 1024).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn odd_sizes_are_carried_not_rounded_up() {
        let rate = 2 * MIB;
        let r = rates(
            Rate::default(),
            Rate {
                session: rate,
                ..Rate::default()
            },
        );
        let t = r.session("alice");
        // 100-byte steps: charged per whole KiB, so 20 MiB takes what 20
        // MiB takes, not 10x that.
        let total = 20 * MIB;
        let took = push(&t, false, total, 100).await;
        let least = Duration::from_secs_f64((total - MIB - 1024) as f64 / rate as f64);
        assert!(took >= least, "{took:?} < {least:?}");
        assert!(took <= least + Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_limit_is_shared_by_their_sessions_and_dropped_with_them() {
        let rate = 8 * MIB;
        let r = rates(
            Rate {
                user: rate,
                ..Rate::default()
            },
            Rate::default(),
        );
        let (a, b) = (r.session("alice"), r.session("alice"));
        let other = r.session("bob");
        assert_eq!(r.users_held(), 2);
        let total = 40 * MIB;
        let (ta, tb) = tokio::join!(
            push(&a, true, total, 64 * 1024),
            push(&b, true, total, 64 * 1024)
        );
        // Together 80 MiB through one 8 MiB/s bucket with a 1 MiB burst.
        let least = Duration::from_secs_f64((2 * total - MIB) as f64 / rate as f64);
        assert!(ta.max(tb) >= least, "{ta:?} {tb:?} < {least:?}");
        // Bob's own bucket is still full.
        let tb2 = push(&other, true, MIB, 64 * 1024).await;
        assert_eq!(tb2, Duration::ZERO);
        drop((a, b));
        // A new user's login clears the entries of users who left.
        let _carol = r.session("carol");
        assert_eq!(r.users_held(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_limit_holds_across_users_and_the_strictest_bucket_wins() {
        let r = rates(
            Rate {
                session: 16 * MIB,
                total: 4 * MIB,
                ..Rate::default()
            },
            Rate::default(),
        );
        let (a, b) = (r.session("alice"), r.session("bob"));
        let total = 20 * MIB;
        let (ta, tb) = tokio::join!(
            push(&a, true, total, 64 * 1024),
            push(&b, true, total, 64 * 1024)
        );
        let least = Duration::from_secs_f64((2 * total - MIB) as f64 / (4 * MIB) as f64);
        assert!(ta.max(tb) >= least, "{ta:?} {tb:?} < {least:?}");
    }

    #[test]
    fn no_limits_hold_no_buckets() {
        let r = Rates::new(RateConfig::default());
        assert!(r.session("alice").is_unlimited());
        assert_eq!(r.users_held(), 0);
        assert!(Throttle::unlimited().is_unlimited());
    }

    #[test]
    fn bursts_are_a_tenth_of_a_second_but_at_least_a_mebibyte() {
        let burst = |rate| Bucket::new(rate).map(|b| b.burst.get());
        assert_eq!(burst(0), None);
        assert_eq!(burst(MIB), Some(1024));
        assert_eq!(burst(100 * MIB), Some(10 * 1024));
        assert_eq!(burst(1), Some(1024));
        assert!(burst(u64::MAX).is_some());
    }
}
