//! Limits that keep the exposed ports usable under abuse: connection caps (all
//! sources together and per key: a source address, or a connector id), a per-source
//! request rate, and the descriptor limit of the process.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The cap over every key.
    Global,
    /// The cap of one key.
    PerKey,
}

/// Counts open connections, at most `global` in all and `per_key` per key.
#[derive(Debug)]
pub struct ConnLimiter<K: Hash + Eq + Clone> {
    global: usize,
    per_key: usize,
    open: Mutex<(usize, HashMap<K, usize>)>,
}

/// One counted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit<K: Hash + Eq + Clone> {
    limiter: Arc<ConnLimiter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> ConnLimiter<K> {
    /// A limiter with these caps.
    pub fn new(global: usize, per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            global,
            per_key,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a place for `key`, unless a cap is reached.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Result<Permit<K>, Refused> {
        let mut open = match self.open.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if open.0 >= self.global {
            return Err(Refused::Global);
        }
        let n = open.1.entry(key.clone()).or_insert(0);
        if *n >= self.per_key {
            return Err(Refused::PerKey);
        }
        *n += 1;
        open.0 += 1;
        Ok(Permit {
            limiter: self.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map(|o| o.0).unwrap_or(0)
    }

    /// The global cap.
    pub fn global(&self) -> usize {
        self.global
    }
}

impl<K: Hash + Eq + Clone> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut open = match self.limiter.open.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// A token bucket per source address: `per_minute` requests a minute, bursts of
/// `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Buckets kept before full ones are swept.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// `per_minute` per source, with a burst of a third of it (at least 5).
    pub fn per_minute(per_minute: u32) -> Self {
        let burst = f64::from((per_minute / 3).max(5).min(per_minute.max(1)));
        Self {
            per_sec: f64::from(per_minute) / 60.0,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` may make one more request now.
    pub fn allow(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if buckets.len() >= MAX_BUCKETS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit in force
/// after (and the one before).
pub fn raise_nofile_limit() -> (u64, u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let before = getrlimit(Resource::Nofile);
    let old = before.current.unwrap_or(u64::MAX);
    let want = before.maximum;
    if want == before.current {
        return (old, old);
    }
    let mut raised = before;
    raised.current = want;
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (want.unwrap_or(u64::MAX), old),
        Err(_) => (old, old),
    }
}

/// The soft `RLIMIT_NOFILE` now.
pub fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_hold_per_key_and_globally_and_free_on_drop() {
        let l = ConnLimiter::new(3, 2);
        let a1 = l.try_acquire("a").unwrap();
        let _a2 = l.try_acquire("a").unwrap();
        assert_eq!(l.try_acquire("a").unwrap_err(), Refused::PerKey);
        let _b1 = l.try_acquire("b").unwrap();
        assert_eq!(l.try_acquire("c").unwrap_err(), Refused::Global);
        drop(a1);
        assert_eq!(l.open(), 2);
        assert!(l.try_acquire("c").is_ok());
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let r = RateLimiter::per_minute(60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..50).filter(|_| r.allow(ip)).count();
        assert_eq!(allowed, 20, "a burst of 60/3");
        assert!(r.allow("192.0.2.2".parse().unwrap()), "per source");
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        let (now, _) = raise_nofile_limit();
        assert_eq!(now, nofile_limit());
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(Some(now), hard.or(Some(u64::MAX)));
    }
}
