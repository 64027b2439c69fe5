//! Successful logins remembered for a few seconds, so that a client that
//! logs in again and again (one FTP session per file) does not cost the
//! directory a search and a bind each time, and a short directory outage
//! does not lock out users who just logged in.
//!
//! What is kept is an HMAC-SHA256 of the name and password under a random
//! key made at start-up and never stored, never the password: a memory dump
//! does not give passwords, and guessing one from its tag needs the key.
//! Failures are never remembered.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;

use crate::accounts::{Account, AuthError, Password};

/// Most logins remembered at once; the oldest goes first.
pub(super) const MAX_ENTRIES: usize = 10_000;

/// Remembered logins: name as typed → tag of (name, password).
pub(super) struct LoginCache {
    key: hmac::Key,
    ttl: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_name: HashMap<String, Remembered>,
    /// Order of the next insertion (the oldest entry has the smallest).
    next: u64,
}

struct Remembered {
    tag: hmac::Tag,
    at: Instant,
    order: u64,
    account: Account,
}

impl LoginCache {
    /// A cache keeping logins for `ttl`, with a fresh random key.
    pub(super) fn new(ttl: Duration) -> Result<Self, AuthError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| AuthError::Hashing("no random key for the LDAP login cache".into()))?;
        Ok(Self {
            key,
            ttl,
            entries: Mutex::default(),
        })
    }

    fn tag(&self, name: &str, password: &Password) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.expose().as_bytes());
        ctx.sign()
    }

    /// The account of an earlier successful login with this name and
    /// password, if it is recent enough.
    pub(super) fn get(&self, name: &str, password: &Password) -> Option<Account> {
        let tag = self.tag(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.by_name.get(name)?;
        if entry.at.elapsed() >= self.ttl {
            entries.by_name.remove(name);
            return None;
        }
        verify_slices_are_equal(entry.tag.as_ref(), tag.as_ref())
            .ok()
            .map(|()| entry.account.clone())
    }

    /// Remembers a successful login (replacing an earlier one of `name`).
    pub(super) fn put(&self, name: &str, password: &Password, account: &Account) {
        let tag = self.tag(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Entries { by_name, next } = &mut *entries;
        if by_name.len() >= MAX_ENTRIES && !by_name.contains_key(name) {
            by_name.retain(|_, e| e.at.elapsed() < self.ttl);
            if by_name.len() >= MAX_ENTRIES {
                let oldest = by_name
                    .iter()
                    .min_by_key(|(_, e)| e.order)
                    .map(|(n, _)| n.clone());
                if let Some(oldest) = oldest {
                    by_name.remove(&oldest);
                }
            }
        }
        let entry = Remembered {
            tag,
            at: Instant::now(),
            order: *next,
            account: account.clone(),
        };
        *next = next.wrapping_add(1);
        by_name.insert(name.to_owned(), entry);
    }

    /// How many logins are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> Account {
        Account::new(name)
    }

    #[test]
    fn remembers_only_the_same_password_until_it_expires() {
        let cache = LoginCache::new(Duration::from_secs(60)).expect("cache");
        let pw = Password::new("secret".into());
        assert_eq!(cache.get("Alice", &pw), None);
        cache.put("Alice", &pw, &account("alice"));
        assert_eq!(cache.get("Alice", &pw), Some(account("alice")));
        assert_eq!(cache.get("Alice", &Password::new("Secret".into())), None);
        assert_eq!(cache.get("alice", &pw), None);

        let expired = LoginCache::new(Duration::ZERO).expect("cache");
        expired.put("alice", &pw, &account("alice"));
        assert_eq!(expired.get("alice", &pw), None);
        assert_eq!(expired.len(), 0);
    }

    #[test]
    fn is_bounded_and_drops_the_oldest() {
        let cache = LoginCache::new(Duration::from_secs(60)).expect("cache");
        let pw = Password::new("pw".into());
        for i in 0..=MAX_ENTRIES {
            cache.put(&format!("u{i}"), &pw, &account("x"));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert_eq!(cache.get("u0", &pw), None);
        assert!(cache.get(&format!("u{MAX_ENTRIES}"), &pw).is_some());
    }
}
