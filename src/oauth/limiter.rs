//! Brute-force protection for password checks (RFC 6749 sections 4.3.2, 10.10).
//!
//! Failures are counted per client address and per (username, address) pair,
//! and per username across all addresses:
//! - after a few failures, every further failure is answered more slowly;
//! - after more, the address (long) or the (username, address) pair (short) is
//!   refused with 429 and `Retry-After`;
//! - a username alone is only ever slowed, never blocked: an attacker elsewhere
//!   cannot lock a real user out, and a block on the pair lasts at most
//!   [`PAIR_MAX_BLOCK`].
//!
//! A success clears the pair. Entries are forgotten [`WINDOW`] after their last failure.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Failures before answers slow down.
pub const SLOW_AFTER: u32 = 3;
/// Failures before the key is blocked.
pub const BLOCK_AFTER: u32 = 10;
/// Longest delay added to one failed answer.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Longest block of one (username, address) pair.
pub const PAIR_MAX_BLOCK: Duration = Duration::from_secs(60);
/// Longest block of one address.
pub const ADDR_MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// How long a failure is remembered.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn fresh(now: Instant) -> Entry {
        Entry {
            failures: 0,
            last: now,
            blocked_until: None,
        }
    }
}

#[derive(Default)]
pub struct Limiter {
    by_addr: DashMap<IpAddr, Entry>,
    by_pair: DashMap<(String, IpAddr), Entry>,
    by_user: DashMap<String, Entry>,
}

fn blocked_for(e: Option<Entry>, now: Instant) -> Option<Duration> {
    let until = e?.blocked_until?;
    (until > now).then(|| until - now)
}

/// Records one failure; returns the entry's failure count.
fn fail<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Entry>,
    key: K,
    now: Instant,
    max_block: Duration,
) -> u32 {
    let mut e = map.entry(key).or_insert_with(|| Entry::fresh(now));
    if now.duration_since(e.last) > WINDOW {
        *e = Entry::fresh(now);
    }
    e.failures += 1;
    e.last = now;
    if max_block > Duration::ZERO && e.failures >= BLOCK_AFTER {
        // 1 s, 2 s, 4 s, ... up to the cap.
        let exp = (e.failures - BLOCK_AFTER).min(20);
        let block = Duration::from_secs(1u64 << exp).min(max_block);
        // Counted from when the (held back) failed answer has gone out, so the
        // block is still on when the client can try again.
        e.blocked_until = Some(now + MAX_DELAY + block);
    }
    e.failures
}

impl Limiter {
    /// `Err(retry_after)` if this attempt must be refused without a check.
    pub fn check(&self, username: &str, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let addr_block = blocked_for(self.by_addr.get(&addr).map(|e| *e), now);
        let pair_block = blocked_for(
            self.by_pair.get(&(username.to_string(), addr)).map(|e| *e),
            now,
        );
        match addr_block.max(pair_block) {
            // Whole seconds, rounded up: a client that waits that long is let in.
            Some(d) => Err(
                Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
                    .max(Duration::from_secs(1)),
            ),
            None => Ok(()),
        }
    }

    /// Records a failed check; returns how long to hold the failed answer back.
    pub fn failure(&self, username: &str, addr: IpAddr) -> Duration {
        let now = Instant::now();
        let a = fail(&self.by_addr, addr, now, ADDR_MAX_BLOCK);
        let p = fail(
            &self.by_pair,
            (username.to_string(), addr),
            now,
            PAIR_MAX_BLOCK,
        );
        let u = fail(&self.by_user, username.to_string(), now, Duration::ZERO);
        let worst = a.max(p).max(u);
        if worst <= SLOW_AFTER {
            return Duration::ZERO;
        }
        (Duration::from_millis(250) * (worst - SLOW_AFTER)).min(MAX_DELAY)
    }

    /// A successful check clears the pair (the address keeps its count).
    pub fn success(&self, username: &str, addr: IpAddr) {
        self.by_pair.remove(&(username.to_string(), addr));
    }

    /// Forgets entries older than the window and not blocked.
    pub fn sweep(&self) {
        let now = Instant::now();
        let keep = |e: &mut Entry| {
            now.duration_since(e.last) <= WINDOW || e.blocked_until.is_some_and(|u| u > now)
        };
        self.by_addr.retain(|_, e| keep(e));
        self.by_pair.retain(|_, e| keep(e));
        self.by_user.retain(|_, e| keep(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn slows_then_blocks_the_pair_and_address_not_others() {
        let l = Limiter::default();
        for n in 1..BLOCK_AFTER {
            assert!(l.check("alice", A).is_ok(), "attempt {n}");
            let delay = l.failure("alice", A);
            assert_eq!(delay.is_zero(), n <= SLOW_AFTER, "attempt {n}");
        }
        l.failure("alice", A);
        let retry = l.check("alice", A).unwrap_err();
        assert!(retry >= Duration::from_secs(1) && retry <= PAIR_MAX_BLOCK + MAX_DELAY);
        // The address is blocked for every name...
        assert!(l.check("bob", A).is_err());
        // ...but alice from elsewhere is only slowed, never refused.
        assert!(l.check("alice", B).is_ok());
        assert!(l.failure("alice", B) > Duration::ZERO);
        assert!(l.check("alice", B).is_ok());
    }

    #[test]
    fn pair_block_is_capped() {
        let l = Limiter::default();
        for _ in 0..40 {
            l.failure("alice", A);
        }
        // Address blocks can be long; the pair's cap is what a user from a fresh
        // address sharing nothing else would see.
        let pair = blocked_for(
            l.by_pair.get(&("alice".to_string(), A)).map(|e| *e),
            Instant::now(),
        )
        .unwrap();
        assert!(pair <= PAIR_MAX_BLOCK + MAX_DELAY);
        let addr = blocked_for(l.by_addr.get(&A).map(|e| *e), Instant::now()).unwrap();
        assert!(addr <= ADDR_MAX_BLOCK + MAX_DELAY && addr > PAIR_MAX_BLOCK + MAX_DELAY);
    }

    #[test]
    fn success_clears_the_pair() {
        let l = Limiter::default();
        for _ in 0..5 {
            l.failure("alice", A);
        }
        l.success("alice", A);
        assert!(l.by_pair.is_empty());
    }
}
