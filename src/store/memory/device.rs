//! The memory store's one-time values (`jti`s of DPoP proofs and client
//! assertions) and device authorizations (RFC 8628). Each decision is made
//! under one DashMap shard lock, so racing callers see one winner.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;

use super::{Map, new_map};
use crate::store::{
    DEVICE_GRACE_SECS, DeviceDecision, DevicePoll, DeviceRecord, Grant, StoreError, TokenHash,
};

/// One-time values held at most; past it (after a sweep) new ones are refused
/// (503), never accepted unchecked. A value is only recorded once its JWT's
/// signature has been verified.
pub const MAX_ONE_TIME: usize = 2_000_000;
/// Device authorizations held at most (pending or recently decided).
pub const MAX_DEVICES: usize = 200_000;

/// `jti`s seen, until when (unix seconds).
pub struct OneTime {
    seen: Map<u64>,
    count: AtomicUsize,
}

impl Default for OneTime {
    fn default() -> Self {
        OneTime::new()
    }
}

impl OneTime {
    pub fn new() -> OneTime {
        OneTime {
            seen: new_map(),
            count: AtomicUsize::new(0),
        }
    }

    pub fn first_use(&self, key: TokenHash, until: u64, now: u64) -> Result<bool, StoreError> {
        match self.seen.entry(key) {
            Entry::Occupied(mut e) => {
                if *e.get() > now {
                    return Ok(false);
                }
                // Expired but not swept yet: a new use.
                e.insert(until);
                Ok(true)
            }
            Entry::Vacant(v) => {
                if self.count.load(Ordering::Acquire) >= MAX_ONE_TIME {
                    return Err(StoreError::Unavailable(
                        "too many one-time values are remembered".into(),
                    ));
                }
                v.insert(until);
                self.count.fetch_add(1, Ordering::AcqRel);
                Ok(true)
            }
        }
    }

    pub fn sweep(&self, now: u64) -> usize {
        let before = self.seen.len();
        self.seen.retain(|_, until| *until > now);
        let after = self.seen.len();
        self.count.store(after, Ordering::Release);
        before.saturating_sub(after)
    }
}

#[derive(Debug, Clone)]
enum Status {
    Pending,
    Approved(Arc<Grant>),
    Denied,
    /// Approved, and its tokens issued.
    Spent,
}

struct DeviceEntry {
    rec: DeviceRecord,
    status: Status,
    /// Unix ms of the last poll; 0: never polled.
    last_poll_ms: u64,
    fast_polls: u64,
}

pub struct Devices {
    devices: Map<DeviceEntry>,
    /// User code hash -> device code hash, while undecided.
    user_codes: Map<TokenHash>,
}

impl Default for Devices {
    fn default() -> Self {
        Devices::new()
    }
}

impl Devices {
    pub fn new() -> Devices {
        Devices {
            devices: new_map(),
            user_codes: new_map(),
        }
    }

    pub fn put(
        &self,
        device: TokenHash,
        user_code: TokenHash,
        rec: DeviceRecord,
        now: u64,
    ) -> Result<bool, StoreError> {
        if self.devices.len() >= MAX_DEVICES {
            return Err(StoreError::Unavailable(
                "too many device authorizations are pending".into(),
            ));
        }
        match self.user_codes.entry(user_code) {
            Entry::Occupied(mut e) => {
                // Taken, unless what it names has expired.
                let live = self
                    .devices
                    .get(e.get())
                    .is_some_and(|d| d.rec.expires_at > now);
                if live {
                    return Ok(false);
                }
                e.insert(device);
            }
            Entry::Vacant(v) => {
                v.insert(device);
            }
        }
        self.devices.insert(
            device,
            DeviceEntry {
                rec,
                status: Status::Pending,
                last_poll_ms: 0,
                fast_polls: 0,
            },
        );
        Ok(true)
    }

    pub fn by_user_code(&self, user_code: &TokenHash, now: u64) -> Option<DeviceRecord> {
        let device = *self.user_codes.get(user_code)?;
        let d = self.devices.get(&device)?;
        (matches!(d.status, Status::Pending) && d.rec.expires_at > now).then(|| d.rec.clone())
    }

    pub fn decide(&self, user_code: &TokenHash, decision: DeviceDecision, now: u64) -> bool {
        // Whoever removes the user code decides; everyone else finds it gone.
        let Some((_, device)) = self.user_codes.remove(user_code) else {
            return false;
        };
        let Some(mut d) = self.devices.get_mut(&device) else {
            return false;
        };
        if !matches!(d.status, Status::Pending) || d.rec.expires_at <= now {
            return false;
        }
        d.status = match decision {
            DeviceDecision::Approved(grant) => Status::Approved(grant),
            DeviceDecision::Denied => Status::Denied,
        };
        true
    }

    pub fn poll(&self, device: &TokenHash, client: &str, now_ms: u64) -> DevicePoll {
        let Some(mut d) = self.devices.get_mut(device) else {
            return DevicePoll::Unknown;
        };
        if d.rec.client.as_ref() != client {
            return DevicePoll::Unknown;
        }
        poll_step(&mut d, now_ms)
    }

    pub fn sweep(&self, now: u64) -> usize {
        let before = self.devices.len();
        self.devices
            .retain(|_, d| d.rec.expires_at.saturating_add(DEVICE_GRACE_SECS) > now);
        self.user_codes
            .retain(|_, device| self.devices.contains_key(device));
        before.saturating_sub(self.devices.len())
    }
}

/// The rules of one poll (RFC 8628 section 3.5), mirrored by the Redis store's
/// script: expiry first, then the interval (a poll that comes too fast is
/// counted, moves the interval up 5 s and is answered `slow_down`, whatever
/// the state), then the state. A used code polled again after the interval
/// is a replay; polls racing the one that got the tokens are only too fast.
fn poll_step(d: &mut DeviceEntry, now_ms: u64) -> DevicePoll {
    if now_ms / 1000 >= d.rec.expires_at {
        return DevicePoll::Expired;
    }
    let too_soon = d.last_poll_ms != 0
        && now_ms
            < d.last_poll_ms
                .saturating_add(d.rec.interval.saturating_mul(1000));
    d.last_poll_ms = now_ms;
    if too_soon {
        d.rec.interval = d.rec.interval.saturating_add(5);
        d.fast_polls += 1;
        return DevicePoll::SlowDown {
            interval: d.rec.interval,
            fast_polls: d.fast_polls,
        };
    }
    match &d.status {
        Status::Pending => DevicePoll::Pending,
        Status::Denied => DevicePoll::Denied,
        Status::Spent => DevicePoll::Spent {
            family: d.rec.family,
        },
        Status::Approved(grant) => {
            let grant = grant.clone();
            d.status = Status::Spent;
            DevicePoll::Approved {
                grant,
                family: d.rec.family,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;

    fn rec(expires_at: u64) -> DeviceRecord {
        DeviceRecord {
            client: Arc::from("tv"),
            scope: None,
            family: 9,
            expires_at,
            interval: 5,
        }
    }

    fn grant() -> Arc<Grant> {
        Arc::new(Grant::new(
            Some(Arc::from("alice")),
            Arc::from("tv"),
            ScopeSet::parse("read").unwrap(),
        ))
    }

    #[test]
    fn one_time_values_are_single_use_until_they_expire() {
        let o = OneTime::new();
        let k = TokenHash::of("jti");
        assert!(o.first_use(k, 100, 10).unwrap());
        assert!(!o.first_use(k, 100, 50).unwrap());
        // Past its time it is a new value (and the sweep forgets it).
        assert!(o.first_use(k, 300, 100).unwrap());
        assert_eq!(o.sweep(300), 1);
        assert!(o.first_use(k, 400, 300).unwrap());
    }

    #[test]
    fn a_device_authorization_from_poll_to_tokens() {
        let s = Devices::new();
        let (dev, uc) = (TokenHash::of("dev"), TokenHash::of("BCDFGHJK"));
        assert!(s.put(dev, uc, rec(1_000), 0).unwrap());
        // A user code in use cannot be given out again.
        assert!(!s.put(TokenHash::of("dev2"), uc, rec(1_000), 0).unwrap());
        assert_eq!(s.by_user_code(&uc, 10).unwrap().client.as_ref(), "tv");
        // The first poll is never too soon; the next within 5 s is, and moves
        // the interval to 10 s; polls too fast keep counting.
        // Another client's poll is told nothing and changes nothing.
        assert!(matches!(s.poll(&dev, "other", 10_000), DevicePoll::Unknown));
        assert!(matches!(s.poll(&dev, "tv", 10_000), DevicePoll::Pending));
        assert!(matches!(
            s.poll(&dev, "tv", 14_999),
            DevicePoll::SlowDown {
                interval: 10,
                fast_polls: 1
            }
        ));
        assert!(matches!(
            s.poll(&dev, "tv", 20_000),
            DevicePoll::SlowDown {
                interval: 15,
                fast_polls: 2
            }
        ));
        assert!(matches!(s.poll(&dev, "tv", 35_000), DevicePoll::Pending));
        // Approved once; the user code is used up.
        assert!(s.decide(&uc, DeviceDecision::Approved(grant()), 40));
        assert!(!s.decide(&uc, DeviceDecision::Denied, 40));
        assert!(s.by_user_code(&uc, 40).is_none());
        assert!(matches!(
            s.poll(&dev, "tv", 50_000),
            DevicePoll::Approved { family: 9, .. }
        ));
        assert!(matches!(
            s.poll(&dev, "tv", 70_000),
            DevicePoll::Spent { family: 9 }
        ));
        assert!(matches!(
            s.poll(&TokenHash::of("x"), "tv", 70_000),
            DevicePoll::Unknown
        ));
    }

    #[test]
    fn denied_and_expired() {
        let s = Devices::new();
        let (dev, uc) = (TokenHash::of("dev"), TokenHash::of("uc"));
        s.put(dev, uc, rec(100), 0).unwrap();
        assert!(s.decide(&uc, DeviceDecision::Denied, 10));
        assert!(matches!(s.poll(&dev, "tv", 20_000), DevicePoll::Denied));
        assert!(matches!(s.poll(&dev, "tv", 30_000), DevicePoll::Denied));
        assert!(matches!(s.poll(&dev, "tv", 100_000), DevicePoll::Expired));
        // An expired code cannot be decided, and its user code may be given out again.
        let (dev2, uc2) = (TokenHash::of("dev2"), TokenHash::of("uc2"));
        s.put(dev2, uc2, rec(100), 0).unwrap();
        assert!(!s.decide(&uc2, DeviceDecision::Denied, 100));
        let uc3 = TokenHash::of("uc3");
        s.put(TokenHash::of("dev3"), uc3, rec(100), 0).unwrap();
        assert!(s.put(TokenHash::of("dev4"), uc3, rec(500), 200).unwrap());
        // Kept for the grace period, then swept.
        assert_eq!(s.sweep(100 + DEVICE_GRACE_SECS), 3);
    }
}
