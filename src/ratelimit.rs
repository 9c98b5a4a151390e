//! Per-route rate limits: `[[routes]] rate_limit = { requests, per, burst, key }`.
//!
//! The rule is GCRA (the generic cell rate algorithm, a token bucket kept as
//! one timestamp): a key may send `burst` requests at once, refilled at
//! `requests` per `per`. Refusals are 429 with `Retry-After` and the
//! `RateLimit-Policy` / `RateLimit` fields of the IETF httpapi draft
//! (draft-ietf-httpapi-ratelimit-headers-10: `"name";q=..;w=..` and
//! `"name";r=..;t=..`).
//!
//! With the memory store the bucket lives here. With Redis it lives in Redis,
//! shared by every instance, and each instance takes units from it in batches
//! (a *lease*) that it spends locally: one round trip per batch, not per
//! request, and a refill is fetched in the background before the lease runs
//! out. Units are taken from the shared bucket before they are spent, so the
//! fleet never admits more than the limit; units an instance leased but did not
//! use within the window are lost (the fleet may then admit slightly less).
//! While Redis cannot be reached, each instance falls back to its own bucket
//! with the same rule (at most N times the limit across N instances), logged.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderValue;

/// What a limit counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKeyKind {
    /// The token's client id.
    Client,
    /// The token's user (the client, for client_credentials tokens).
    User,
    /// The client address (after `server.trusted_proxies`).
    Address,
}

impl RateKeyKind {
    pub fn parse(s: &str) -> Option<RateKeyKind> {
        match s {
            "client" => Some(RateKeyKind::Client),
            "user" => Some(RateKeyKind::User),
            "address" => Some(RateKeyKind::Address),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RateKeyKind::Client => "client",
            RateKeyKind::User => "user",
            RateKeyKind::Address => "address",
        }
    }
}

/// One caller's bucket key. Users and clients never share a bucket, even
/// under one name (a client_credentials token under a `user` limit counts as
/// its client).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    User(Arc<str>),
    Client(Arc<str>),
    Addr(IpAddr),
}

impl RateKey {
    fn redis_suffix(&self) -> String {
        // Names are hashed: bounded key length, nothing a user typed in a key.
        let hashed = |kind: &str, n: &str| {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(n.as_bytes());
            format!(
                "{kind}:{}",
                crate::store::hex(&crate::store::TokenHash(d.into()))
            )
        };
        match self {
            RateKey::User(n) => hashed("u", n),
            RateKey::Client(n) => hashed("c", n),
            RateKey::Addr(a) => a.to_string(),
        }
    }
}

/// A route's limit, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub requests: u32,
    pub per: Duration,
    /// Requests that may arrive at once (at least 1).
    pub burst: u32,
    pub key: RateKeyKind,
}

impl RateLimitSpec {
    /// Time one request uses up: `per / requests`, in nanoseconds (at least 1).
    fn interval_ns(&self) -> u64 {
        (self.per.as_nanos() / u128::from(self.requests.max(1))).max(1) as u64
    }

    /// How far ahead of now the bucket's clock may run: `burst - 1` intervals.
    fn tolerance_ns(&self) -> u64 {
        self.interval_ns()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }

    /// Units an instance leases from the shared bucket at once: a tenth of the
    /// window's quota, at most the burst, at least one.
    pub fn batch(&self) -> u32 {
        (self.requests / 10).clamp(1, self.burst.max(1))
    }

    /// `RateLimit-Policy: "<key>";q=<requests>;w=<seconds>`.
    pub fn policy_header(&self) -> HeaderValue {
        let w = self.per.as_secs().max(1);
        HeaderValue::try_from(format!(
            "\"{}\";q={};w={}",
            self.key.as_str(),
            self.requests,
            w
        ))
        .unwrap_or(HeaderValue::from_static("\"default\""))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests the key could still send right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again (`t` of the `RateLimit` field).
    pub reset_secs: u64,
    /// When refused: seconds until one request would pass.
    pub retry_after_secs: u64,
}

impl Decision {
    /// `RateLimit: "<key>";r=<remaining>;t=<seconds>`, written into a stack
    /// buffer (every answer under a limit carries it).
    pub fn header(&self, spec: &RateLimitSpec) -> HeaderValue {
        use std::io::Write;
        let mut buf = [0u8; 64];
        let mut w = &mut buf[..];
        let _ = write!(
            w,
            "\"{}\";r={};t={}",
            spec.key.as_str(),
            self.remaining,
            self.reset_secs
        );
        let len = 64 - w.len();
        HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("\"default\""))
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// GCRA on one bucket. `tat` is the bucket's theoretical arrival time of the
/// next request (ns on some clock); `now` on the same clock. Returns the new
/// `tat` and the decision.
pub fn gcra(spec: &RateLimitSpec, tat: u64, now: u64) -> (u64, Decision) {
    let t = spec.interval_ns();
    let tau = spec.tolerance_ns();
    let tat = tat.max(now);
    // Allowed while the bucket's clock is no more than `tau` ahead of now.
    if tat - now > tau {
        let wait = tat - now - tau;
        return (
            tat,
            Decision {
                allowed: false,
                remaining: 0,
                reset_secs: ceil_secs(tat - now),
                retry_after_secs: ceil_secs(wait).max(1),
            },
        );
    }
    let new = tat + t;
    (new, settled(spec, new, now, true))
}

/// The decision fields for a bucket whose clock stands at `tat`.
fn settled(spec: &RateLimitSpec, tat: u64, now: u64, allowed: bool) -> Decision {
    let t = spec.interval_ns();
    let ahead = tat.saturating_sub(now);
    let room = (now + spec.tolerance_ns()).saturating_sub(tat);
    let remaining = if ahead > spec.tolerance_ns() {
        0
    } else {
        (room / t + 1).min(u64::from(u32::MAX)) as u32
    };
    Decision {
        allowed,
        remaining,
        reset_secs: ceil_secs(ahead),
        retry_after_secs: 0,
    }
}

/// What one instance holds for one key.
#[derive(Debug, Clone, Copy)]
struct Local {
    /// Memory mode (and Redis fallback): the bucket's clock, ns since `epoch`.
    tat: u64,
    /// Redis mode: units leased and not yet spent.
    leased: u32,
    /// When the lease lapses (ns since `epoch`).
    lease_until: u64,
    /// The shared bucket's clock ahead of now at the last lease, ns (for headers).
    shared_ahead: u64,
    /// Redis mode: the shared bucket refused until then (ns since `epoch`).
    denied_until: u64,
    refilling: bool,
}

/// What spending a leased unit came to.
enum Spent {
    /// Allowed; `true`: this request should start a refill.
    Allowed(Decision, bool),
    Refused(Decision),
    /// No lease: ask the shared bucket.
    Empty,
}

impl Local {
    fn new() -> Local {
        Local {
            tat: 0,
            leased: 0,
            lease_until: 0,
            shared_ahead: 0,
            denied_until: 0,
            refilling: false,
        }
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One take from a shared bucket: up to `want` units from bucket `name`,
/// which refills one unit per `interval_ns` and lets its clock run up to
/// `tolerance_ns` ahead (GCRA).
pub struct BucketTake {
    pub name: String,
    pub interval_ns: u64,
    pub tolerance_ns: u64,
    pub want: u32,
}

/// A bucket shared by every instance (Redis).
pub trait SharedBuckets: Send + Sync + 'static {
    /// Takes what `take` asks for; answers the units taken and how far (ns)
    /// the bucket's clock now runs ahead of now.
    fn take(&self, take: BucketTake) -> Fut<'_, Result<(u32, u64), String>>;
}

/// A route's limiter: the spec and this instance's state per key.
pub struct RateLimiter {
    pub spec: RateLimitSpec,
    /// `RateLimit-Policy`, the same for every answer: rendered once.
    pub policy: HeaderValue,
    /// Names the shared buckets: the route's prefix.
    scope: String,
    epoch: Instant,
    keys: DashMap<RateKey, Local, foldhash::fast::RandomState>,
    fallback_logged: AtomicBool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("spec", &self.spec)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl RateLimiter {
    pub fn new(spec: RateLimitSpec, scope: &str) -> RateLimiter {
        RateLimiter {
            policy: spec.policy_header(),
            spec,
            scope: scope.to_string(),
            epoch: Instant::now(),
            keys: DashMap::default(),
            fallback_logged: AtomicBool::new(false),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One request of `key` against this instance's own bucket.
    pub fn check_local(&self, key: &RateKey) -> Decision {
        self.check_local_at(key, self.now_ns())
    }

    fn check_local_at(&self, key: &RateKey, now: u64) -> Decision {
        let mut e = match self.keys.get_mut(key) {
            Some(e) => e,
            None => self.keys.entry(key.clone()).or_insert_with(Local::new),
        };
        let (tat, d) = gcra(&self.spec, e.tat, now);
        e.tat = tat;
        d
    }

    fn bucket_name(&self, key: &RateKey) -> String {
        format!(
            "whosthat:rl:{}:{}:{}",
            self.scope,
            self.spec.key.as_str(),
            key.redis_suffix()
        )
    }

    /// One request of `key`, against the shared bucket when there is one.
    pub async fn check(
        self: &Arc<Self>,
        key: &RateKey,
        shared: Option<&Arc<dyn SharedBuckets>>,
    ) -> Decision {
        let Some(shared) = shared else {
            return self.check_local(key);
        };
        let batch = self.spec.batch();
        match self.spend(key, self.now_ns(), batch) {
            Spent::Allowed(d, refill) => {
                if refill {
                    // Fetched in the background: the next requests need not wait.
                    let (me, key, shared) = (self.clone(), key.clone(), shared.clone());
                    tokio::spawn(async move {
                        let _ = me.lease(&key, &shared, batch).await;
                    });
                }
                return d;
            }
            Spent::Refused(d) => return d,
            Spent::Empty => {}
        }
        // Nothing leased: wait for a batch (one round trip per batch).
        if let Err(e) = self.lease(key, shared, batch).await {
            if !self.fallback_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, route = %self.scope, "rate limit: Redis unreachable; each instance limits on its own until it is back");
            }
            return self.check_local(key);
        }
        self.fallback_logged.store(false, Ordering::Relaxed);
        match self.spend(key, self.now_ns(), batch) {
            Spent::Allowed(d, _) | Spent::Refused(d) => d,
            Spent::Empty => self.refused(0),
        }
    }

    /// Spends one leased unit of `key`, if any.
    fn spend(&self, key: &RateKey, now: u64, batch: u32) -> Spent {
        let mut e = match self.keys.get_mut(key) {
            Some(e) => e,
            None => self.keys.entry(key.clone()).or_insert_with(Local::new),
        };
        if e.lease_until <= now {
            e.leased = 0;
        }
        if e.leased == 0 {
            // The shared bucket said no: answered here until it could say yes,
            // so a caller over its limit costs no round trips.
            if e.denied_until > now {
                let d = Decision {
                    allowed: false,
                    remaining: 0,
                    reset_secs: ceil_secs(e.denied_until - now),
                    retry_after_secs: ceil_secs(e.denied_until - now).max(1),
                };
                return Spent::Refused(d);
            }
            return Spent::Empty;
        }
        e.leased -= 1;
        let refill = e.leased < batch.div_ceil(2) && !e.refilling;
        if refill {
            e.refilling = true;
        }
        let d = Decision {
            allowed: true,
            remaining: e.leased,
            reset_secs: ceil_secs(e.shared_ahead),
            retry_after_secs: 0,
        };
        Spent::Allowed(d, refill)
    }

    fn refused(&self, ahead: u64) -> Decision {
        let wait = ahead.saturating_sub(self.spec.tolerance_ns());
        Decision {
            allowed: false,
            remaining: 0,
            reset_secs: ceil_secs(ahead),
            retry_after_secs: ceil_secs(wait).max(1),
        }
    }

    /// Takes a batch from the shared bucket into this instance's lease.
    async fn lease(
        &self,
        key: &RateKey,
        shared: &Arc<dyn SharedBuckets>,
        batch: u32,
    ) -> Result<(), String> {
        let result = shared
            .take(BucketTake {
                name: self.bucket_name(key),
                interval_ns: self.spec.interval_ns(),
                tolerance_ns: self.spec.tolerance_ns(),
                want: batch,
            })
            .await;
        let now = self.now_ns();
        if let Some(mut e) = self.keys.get_mut(key) {
            e.refilling = false;
            if let Ok((got, ahead)) = &result {
                if e.lease_until <= now {
                    e.leased = 0;
                }
                e.leased = e.leased.saturating_add(*got);
                e.shared_ahead = *ahead;
                // Use it or lose it within one window.
                e.lease_until = now + self.spec.per.as_nanos() as u64;
                if *got == 0 {
                    e.denied_until = now + ahead.saturating_sub(self.spec.tolerance_ns());
                }
            }
        }
        result.map(|_| ())
    }

    /// Forgets keys whose bucket is full again and that hold no lease.
    pub fn sweep(&self) {
        let now = self.now_ns();
        self.keys.retain(|_, e| {
            e.tat > now
                || (e.leased > 0 && e.lease_until > now)
                || e.denied_until > now
                || e.refilling
        });
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// GCRA taking up to ARGV[3] units at once, on Redis's clock (microseconds).
/// Answers {units taken, microseconds the bucket's clock runs ahead of now}.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tau - tat) / T) + 1
if room < 0 then room = 0 end
local got = math.min(room, want)
if got > 0 then
  tat = tat + got * T
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {got, string.format('%d', tat - now)}
";

/// Shared buckets in Redis, on the token store's connection (one key per
/// bucket: any slot of a Cluster; multiplexed, so a take waits for no other
/// command).
pub struct RedisBuckets {
    conn: crate::store::RedisConn,
    script: redis::Script,
}

impl RedisBuckets {
    pub fn new(conn: crate::store::RedisConn) -> RedisBuckets {
        RedisBuckets {
            conn,
            script: redis::Script::new(TAKE),
        }
    }
}

impl SharedBuckets for RedisBuckets {
    fn take(&self, take: BucketTake) -> Fut<'_, Result<(u32, u64), String>> {
        let BucketTake {
            name,
            interval_ns,
            tolerance_ns,
            want,
        } = take;
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // Microseconds on Redis's side; at least one per request.
            let t_us = (interval_ns / 1000).max(1);
            let tau_us = tolerance_ns / 1000;
            let (got, ahead): (u32, String) = self
                .script
                .key(name)
                .arg(t_us)
                .arg(tau_us)
                .arg(want)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let ahead_us: u64 = ahead.parse().unwrap_or(0);
            Ok((got, ahead_us.saturating_mul(1000)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requests: u32, per_ms: u64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
            key: RateKeyKind::Client,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let l = RateLimiter::new(spec(10, 1000, 5), "/api");
        let k = RateKey::Client(Arc::from("cli"));
        let now = 100 * S;
        // Five at once, then refused.
        for n in 0..5 {
            let d = l.check_local_at(&k, now);
            assert!(d.allowed, "request {n}");
            assert_eq!(d.remaining, 4 - n);
        }
        let d = l.check_local_at(&k, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 1);
        // One interval (100 ms) later, exactly one more.
        assert!(l.check_local_at(&k, now + S / 10).allowed);
        assert!(!l.check_local_at(&k, now + S / 10).allowed);
        // Other keys have their own bucket.
        assert!(
            l.check_local_at(&RateKey::Client(Arc::from("other")), now)
                .allowed
        );
    }

    #[test]
    fn steady_rate_over_a_long_run_is_the_limit() {
        let l = RateLimiter::new(spec(100, 1000, 50), "/api");
        let k = RateKey::Addr("127.0.0.1".parse().unwrap());
        // 1,000 requests per second offered for 10 s: 50 burst + 100/s.
        let mut allowed = 0;
        for i in 0..10_000u64 {
            if l.check_local_at(&k, 10 * S + i * S / 1000).allowed {
                allowed += 1;
            }
        }
        assert!((1040..=1052).contains(&allowed), "{allowed}");
    }

    #[test]
    fn headers_follow_the_draft() {
        let s = spec(100, 60_000, 50);
        assert_eq!(s.policy_header(), "\"client\";q=100;w=60");
        let (_, d) = gcra(&s, 0, 0);
        assert_eq!(d.header(&s), "\"client\";r=49;t=1");
        assert_eq!(s.batch(), 10);
        assert_eq!(spec(5, 1000, 1).batch(), 1);
    }

    #[test]
    fn sweep_forgets_full_buckets() {
        let l = RateLimiter::new(spec(1000, 1, 1), "/api");
        l.check_local(&RateKey::Client(Arc::from("a")));
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert!(l.is_empty());
    }

    /// A shared bucket in memory, standing in for Redis.
    struct FakeShared {
        tat: std::sync::Mutex<u64>,
        epoch: Instant,
        calls: std::sync::atomic::AtomicU32,
    }

    impl FakeShared {
        /// An empty shared bucket, its clock starting now.
        fn new() -> Arc<FakeShared> {
            Arc::new(FakeShared {
                tat: std::sync::Mutex::new(0),
                epoch: Instant::now(),
                calls: Default::default(),
            })
        }
    }

    impl SharedBuckets for FakeShared {
        fn take(&self, take: BucketTake) -> Fut<'_, Result<(u32, u64), String>> {
            let (t, tau, want) = (take.interval_ns, take.tolerance_ns, take.want);
            self.calls.fetch_add(1, Ordering::Relaxed);
            let now = self.epoch.elapsed().as_nanos() as u64 + 1_000 * S;
            let mut tat = self.tat.lock().unwrap();
            let cur = (*tat).max(now);
            let room = ((now + tau).saturating_sub(cur) / t + 1) as u32;
            let room = if cur - now > tau { 0 } else { room };
            let got = room.min(want);
            *tat = cur + u64::from(got) * t;
            let ahead = *tat - now;
            Box::pin(async move { Ok((got, ahead)) })
        }
    }

    #[tokio::test]
    async fn leases_spend_locally_and_never_exceed_the_shared_bucket() {
        let fake = FakeShared::new();
        let shared: Arc<dyn SharedBuckets> = fake.clone();
        // A slow refill (one per 2,500 s) so that only the burst of 40 can
        // pass; a batch is 40.
        let s = spec(400, 1_000_000_000, 40);
        // Two instances on one shared bucket.
        let a = Arc::new(RateLimiter::new(s.clone(), "/api"));
        let b = Arc::new(RateLimiter::new(s, "/api"));
        let k = RateKey::Client(Arc::from("cli"));
        let mut allowed = 0;
        for i in 0..200 {
            let l = if i % 2 == 0 { &a } else { &b };
            if l.check(&k, Some(&shared)).await.allowed {
                allowed += 1;
            }
            tokio::task::yield_now().await;
        }
        assert!(allowed <= 40, "{allowed} admitted past a burst of 40");
        assert!(allowed >= 30, "{allowed}: leases lost too much");
        let calls = fake.calls.load(Ordering::Relaxed);
        assert!(calls < 200, "{calls} round trips for 200 requests");
    }

    #[tokio::test]
    async fn batches_mean_few_round_trips() {
        let fake = FakeShared::new();
        let shared: Arc<dyn SharedBuckets> = fake.clone();
        let l = Arc::new(RateLimiter::new(spec(1_000_000, 1000, 1_000_000), "/api"));
        let k = RateKey::Client(Arc::from("cli"));
        for _ in 0..10_000 {
            assert!(l.check(&k, Some(&shared)).await.allowed);
            tokio::task::yield_now().await;
        }
        // A batch is 1,000,000 / 10 = 100,000 units: the first lease covers it all.
        let calls = fake.calls.load(Ordering::Relaxed);
        assert!(calls <= 3, "{calls}");
    }
}
