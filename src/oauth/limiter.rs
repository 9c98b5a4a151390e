//! Brute-force protection for password and client-secret checks (RFC 6749
//! sections 4.3.2 and 10.10; the OWASP Authentication Cheat Sheet's device cookies).
//!
//! A guess is *reserved* before argon2 runs: [`Limiter::begin`] atomically checks
//! every limit that applies and, only if all have room, takes one unit of each. A
//! request refused there costs no argon2 work. A right password gives its tokens
//! back ([`Attempt::succeeded`]); a wrong one keeps them. So N guesses sent at once
//! are counted exactly like N sent one after another.
//!
//! Two kinds of limit, on keys named below:
//! - a *bucket* (GCRA, a leaky bucket): at most `burst` failures at once, then one
//!   more per `period`; a refusal says exactly when the next is possible;
//! - an *in-flight cap*: checks running at once; a slot is leased for [`LEASE`] at
//!   most, so a crashed instance cannot hold it for good.
//!
//! Which limits apply (the first tier whose condition holds):
//! 1. a browser whose device cookie has signed in as this name before: the
//!    device's own bucket and cap only;
//! 2. an address that has signed in as this name before: the address's bucket and
//!    cap only;
//! 3. anyone else: the address's bucket and cap *and* the name's (all addresses
//!    together).
//!
//! An attacker spreading guesses over many addresses drains the name's bucket,
//! which stops every stranger guessing that name; the real user, signing in from a
//! known address or device, goes through tiers 1 or 2 and is not locked out.
//!
//! The rules live here; a [`LimitStore`] only runs them atomically: in this
//! process ([`MemoryLimits`]) or in Redis ([`RedisLimits`], Lua scripts), so that N
//! instances sharing one Redis do not give an attacker N times the guesses.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::store::{RedisConn, TokenHash, hex, new_token};

/// Failures one client address may have at once (all names together)...
pub const ADDR_BURST: u32 = 10;
/// ...and then one more per this.
pub const ADDR_PERIOD: Duration = Duration::from_secs(60);
/// Failures one account name may have at once from addresses and browsers that
/// never signed in as it (all of them together)...
pub const NAME_BURST: u32 = 20;
/// ...and then one more per this.
pub const NAME_PERIOD: Duration = Duration::from_secs(180);
/// Failures a known browser (device cookie) may have at once for its name...
pub const DEVICE_BURST: u32 = 10;
/// ...and then one more per this.
pub const DEVICE_PERIOD: Duration = Duration::from_secs(60);
/// Checks running at once for one client address.
pub const ADDR_IN_FLIGHT: u32 = 4;
/// Checks running at once for one account name, by strangers (tier 3).
pub const NAME_IN_FLIGHT: u32 = 4;
/// Checks running at once for one known browser.
pub const DEVICE_IN_FLIGHT: u32 = 2;
/// The longest an in-flight slot is held (a check, its queue wait and the held-back
/// answer take far less); after that it frees itself.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long a sign-in makes its address and device known for its name.
pub const KNOWN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Failures (on the fullest bucket) before failed answers are held back.
pub const SLOW_AFTER: u32 = 3;
/// Longest a failed answer is held back.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// The device cookie of the login page.
pub const DEVICE_COOKIE: &str = "whosthat_device";
/// Entries the memory store holds at most; beyond it (after a sweep), checks
/// are refused with 503: never let through uncounted.
pub const MAX_ENTRIES: usize = 1_000_000;
/// A Redis round trip that takes longer fails (closed).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Every counter's key starts so. `{lim}` is a Cluster hash tag: one plan's
/// keys (address, name, device) are read and written by one script, so they
/// must share a slot, and any two plans may share keys. The counters are
/// touched only by password checks, so one slot carries them easily.
const PREFIX: &str = "whosthat:{lim}:";

// ----------------------------------------------------------------- the rules

/// One limit and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Bucket { burst: u32, period_ms: u64 },
    InFlight { cap: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub key: String,
    pub rule: Rule,
}

/// A way through: it applies when any of `known` exists, or always when `known`
/// is empty.
#[derive(Debug, Clone)]
pub struct Tier {
    pub known: Vec<String>,
    pub limits: Vec<Limit>,
}

/// What [`LimitStore::acquire`] runs: the first tier that applies, all its
/// limits or none.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tiers: Vec<Tier>,
    /// Names the in-flight slots taken, for their release.
    pub lease_id: String,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Taken: the tier's index and the fullest bucket's level (failures counted
    /// in it, this one included).
    Granted { tier: usize, level: u32 },
    /// A limit had no room; the soonest it may be tried again, in ms.
    Refused { retry_after_ms: u64 },
}

/// The limiter's store cannot answer: the check is refused (503), never let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("brute-force limiter unavailable: {0}")]
pub struct Unavailable(pub String);

pub type LimitFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Unavailable>> + Send + 'a>>;

/// Runs plans atomically. Implementations share the semantics below to the
/// millisecond; [`gcra`] is the bucket arithmetic, mirrored in the Lua scripts.
pub trait LimitStore: Send + Sync {
    /// The first tier of `plan` whose condition holds; if every limit of it has
    /// room, one unit of each is taken (a bucket's token; an in-flight slot
    /// named `plan.lease_id` for `plan.lease_ms`).
    fn acquire<'a>(&'a self, plan: &'a Plan) -> LimitFuture<'a, Admit>;
    /// Frees the in-flight slots `lease_id` holds in `limits`; with `refund`,
    /// also gives each bucket's token back.
    fn release<'a>(
        &'a self,
        lease_id: &'a str,
        limits: &'a [Limit],
        refund: bool,
    ) -> LimitFuture<'a, ()>;
    /// Marks `keys` as existing for `ttl_ms` (a known address or device).
    fn remember<'a>(&'a self, keys: &'a [String], ttl_ms: u64) -> LimitFuture<'a, ()>;
    /// Forgets what has expired (the Redis store's keys expire by themselves).
    fn sweep(&self) {}
}

/// The GCRA step for one failure: `tat` is the bucket's theoretical arrival
/// time (ms; absent or past: empty). `Ok(new tat)` when there is room, else
/// `Err(ms until there is)`.
pub fn gcra(tat: Option<u64>, now: u64, burst: u32, period_ms: u64) -> Result<u64, u64> {
    let tat = tat.unwrap_or(0).max(now);
    let new = tat + period_ms;
    let allowed = now + u64::from(burst) * period_ms;
    if new > allowed {
        Err(new - allowed)
    } else {
        Ok(new)
    }
}

/// Failures a bucket holds at `tat`.
pub fn level(tat: u64, now: u64, period_ms: u64) -> u32 {
    u32::try_from(tat.saturating_sub(now).div_ceil(period_ms.max(1))).unwrap_or(u32::MAX)
}

/// The key part for a client address: IPv4 whole, IPv6 by its /64 (one host
/// commonly holds a whole /64).
pub fn addr_key(addr: IpAddr) -> String {
    match crate::proxy::client_block(addr) {
        IpAddr::V4(a) => a.to_string(),
        net => format!("{net}/64"),
    }
}

/// Where a guess comes from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client address (through trusted proxies).
    pub addr: IpAddr,
    /// The login page's device cookie, if the browser sent a well-formed one.
    pub device: Option<&'a str>,
}

/// A guesser's two limits: at most `cap` guesses in flight (key
/// `{PREFIX}{kind}i:{id}`), and a bucket of `burst` refilled one per `period`
/// (key `{PREFIX}{kind}:{id}`).
fn pair(kind: &str, id: &str, cap: u32, burst: u32, period: Duration) -> [Limit; 2] {
    [
        Limit {
            key: format!("{PREFIX}{kind}i:{id}"),
            rule: Rule::InFlight { cap },
        },
        Limit {
            key: format!("{PREFIX}{kind}:{id}"),
            rule: Rule::Bucket {
                burst,
                period_ms: period.as_millis() as u64,
            },
        },
    ]
}

/// The limits for a guess at `account` from `origin`, and the keys a success
/// makes known.
pub fn plan_for(account: &str, origin: &Origin<'_>) -> (Plan, Vec<String>) {
    let name = hex(&TokenHash::of(account));
    let addr = addr_key(origin.addr);
    let addr_limits = pair("a", &addr, ADDR_IN_FLIGHT, ADDR_BURST, ADDR_PERIOD);
    let known_addr = format!("{PREFIX}k:{name}:a:{addr}");
    let mut tiers = Vec::with_capacity(3);
    let mut remember = Vec::with_capacity(2);
    if let Some(device) = origin.device {
        let dev = hex(&TokenHash::of(device));
        let known_dev = format!("{PREFIX}k:{name}:d:{dev}");
        tiers.push(Tier {
            known: vec![known_dev.clone()],
            limits: pair("d", &dev, DEVICE_IN_FLIGHT, DEVICE_BURST, DEVICE_PERIOD).into(),
        });
        remember.push(known_dev);
    }
    tiers.push(Tier {
        known: vec![known_addr.clone()],
        limits: addr_limits.to_vec(),
    });
    let mut stranger = addr_limits.to_vec();
    stranger.extend(pair("n", &name, NAME_IN_FLIGHT, NAME_BURST, NAME_PERIOD));
    tiers.push(Tier {
        known: Vec::new(),
        limits: stranger,
    });
    remember.push(known_addr);
    let plan = Plan {
        tiers,
        lease_id: new_token(),
        lease_ms: LEASE.as_millis() as u64,
    };
    (plan, remember)
}

/// Whether `v` looks like a device id this gateway issues (43 base64url
/// characters); anything else is ignored.
pub fn valid_device(v: &str) -> bool {
    v.len() == 43
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The device cookie's value in `Cookie` headers, if well formed.
pub fn device_cookie(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == DEVICE_COOKIE)
        .map(|(_, v)| v)
        .filter(|v| valid_device(v))
}

/// `Set-Cookie` for a device id: HttpOnly, for the authorization pages only,
/// `Secure` when the gateway is served over https.
pub fn device_set_cookie(device: &str, secure: bool) -> Option<http::HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    http::HeaderValue::try_from(format!(
        "{DEVICE_COOKIE}={device}; Path=/auth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        KNOWN_TTL.as_secs()
    ))
    .ok()
}

// ------------------------------------------------------------- the front end

/// Why a check may not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A limit has no room: 429, `Retry-After` this many whole seconds.
    TooMany(u64),
    /// The limiter's store cannot answer (why): 503.
    Unavailable(Unavailable),
}

/// The brute-force limiter, over a [`LimitStore`].
pub struct Limiter {
    store: Arc<dyn LimitStore>,
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::memory()
    }
}

impl Limiter {
    /// Counters in this process.
    pub fn memory() -> Limiter {
        Limiter::with_store(Arc::new(MemoryLimits::new()))
    }

    /// Counters in Redis, shared by every instance using it.
    pub fn redis(conn: RedisConn) -> Limiter {
        Limiter::with_store(Arc::new(RedisLimits::new(conn)))
    }

    pub fn with_store(store: Arc<dyn LimitStore>) -> Limiter {
        Limiter { store }
    }

    /// Reserves one guess at `account` from `origin`: counted now, before any check.
    pub async fn begin(&self, account: &str, origin: &Origin<'_>) -> Result<Attempt, Refusal> {
        let (plan, remember) = plan_for(account, origin);
        match self.store.acquire(&plan).await {
            Ok(Admit::Granted { tier, level }) => {
                let Plan {
                    mut tiers,
                    lease_id,
                    ..
                } = plan;
                Ok(Attempt {
                    store: self.store.clone(),
                    lease_id,
                    limits: tiers.swap_remove(tier).limits,
                    remember,
                    level,
                    done: false,
                })
            }
            Ok(Admit::Refused { retry_after_ms }) => {
                Err(Refusal::TooMany(retry_after_ms.div_ceil(1000).max(1)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "password check refused: the limiter cannot count it");
                Err(Refusal::Unavailable(e))
            }
        }
    }

    pub fn sweep(&self) {
        self.store.sweep();
    }
}

/// A reserved guess. Dropped without an outcome (the client went away), it
/// stays counted as a failure and its slots are freed.
pub struct Attempt {
    store: Arc<dyn LimitStore>,
    lease_id: String,
    limits: Vec<Limit>,
    remember: Vec<String>,
    level: u32,
    done: bool,
}

impl Attempt {
    /// How long to hold back this guess's answer if it fails: nothing for the
    /// first [`SLOW_AFTER`], then 250 ms more per failure, at most [`MAX_DELAY`].
    pub fn failure_delay(&self) -> Duration {
        if self.level <= SLOW_AFTER {
            return Duration::ZERO;
        }
        (Duration::from_millis(250) * (self.level - SLOW_AFTER)).min(MAX_DELAY)
    }

    /// The password was right: the guess is refunded, and the address (and
    /// device) become known for this name.
    pub async fn succeeded(mut self) {
        self.done = true;
        if let Err(e) = self.store.release(&self.lease_id, &self.limits, true).await {
            tracing::warn!(error = %e, "could not refund a successful check");
        }
        let ttl = KNOWN_TTL.as_millis() as u64;
        if let Err(e) = self.store.remember(&self.remember, ttl).await {
            tracing::warn!(error = %e, "could not remember a known address");
        }
    }

    /// The password was wrong: the guess stays counted; its slots are freed.
    pub async fn failed(mut self) {
        self.done = true;
        if let Err(e) = self
            .store
            .release(&self.lease_id, &self.limits, false)
            .await
        {
            tracing::warn!(error = %e, "could not free a check's slots (they expire)");
        }
    }

    /// No check ran (the password pool was full): nothing is counted.
    pub async fn not_checked(mut self) {
        self.done = true;
        if let Err(e) = self.store.release(&self.lease_id, &self.limits, true).await {
            tracing::warn!(error = %e, "could not refund an unchecked attempt");
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let store = self.store.clone();
        let lease_id = std::mem::take(&mut self.lease_id);
        let limits = std::mem::take(&mut self.limits);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.release(&lease_id, &limits, false).await;
            });
        }
    }
}

// -------------------------------------------------------------- memory store

enum Entry {
    Bucket {
        tat: u64,
    },
    Known {
        until: u64,
    },
    /// Lease ids and when each expires.
    InFlight(Vec<(String, u64)>),
}

impl Entry {
    fn expired(&self, now: u64) -> bool {
        match self {
            Entry::Bucket { tat } => *tat <= now,
            Entry::Known { until } => *until <= now,
            Entry::InFlight(v) => v.iter().all(|(_, exp)| *exp <= now),
        }
    }
}

/// The counters in this process, under one lock: each call is a few map
/// operations, made only for password checks and the requests refused before one.
pub struct MemoryLimits {
    start: Instant,
    /// Added to the clock (tests move time forward).
    skew_ms: AtomicU64,
    map: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits::new()
    }
}

impl MemoryLimits {
    pub fn new() -> MemoryLimits {
        MemoryLimits::with_max_entries(MAX_ENTRIES)
    }

    pub fn with_max_entries(max_entries: usize) -> MemoryLimits {
        MemoryLimits {
            start: Instant::now(),
            skew_ms: AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// Milliseconds on a monotonic clock (never 0).
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + self.skew_ms.load(Ordering::Relaxed) + 1
    }

    /// Moves this store's clock forward (tests).
    pub fn advance(&self, by: Duration) {
        self.skew_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves consistent data: each change is
        // one insert or remove.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire_now(&self, plan: &Plan) -> Result<Admit, Unavailable> {
        let now = self.now();
        let mut map = self.lock();
        let known = |map: &HashMap<String, Entry>, k: &String| matches!(map.get(k), Some(Entry::Known { until }) if *until > now);
        let Some(tier) = plan
            .tiers
            .iter()
            .position(|t| t.known.is_empty() || t.known.iter().any(|k| known(&map, k)))
        else {
            return Ok(Admit::Refused {
                retry_after_ms: 1000,
            });
        };
        let limits = &plan.tiers[tier].limits;
        let mut retry = 0u64;
        let mut taken = Vec::with_capacity(limits.len());
        let mut lvl = 0u32;
        for l in limits {
            match l.rule {
                Rule::Bucket { burst, period_ms } => {
                    let tat = match map.get(&l.key) {
                        Some(Entry::Bucket { tat }) => Some(*tat),
                        _ => None,
                    };
                    match gcra(tat, now, burst, period_ms) {
                        Ok(new) => {
                            lvl = lvl.max(level(new, now, period_ms));
                            taken.push(Some(new));
                        }
                        Err(wait) => retry = retry.max(wait),
                    }
                }
                Rule::InFlight { cap } => {
                    let live = match map.get(&l.key) {
                        Some(Entry::InFlight(v)) => v.iter().filter(|(_, e)| *e > now).count(),
                        _ => 0,
                    };
                    if live >= cap as usize {
                        retry = retry.max(1000);
                    }
                    taken.push(None);
                }
            }
        }
        if retry > 0 {
            return Ok(Admit::Refused {
                retry_after_ms: retry,
            });
        }
        if map.len() + limits.len() > self.max_entries {
            map.retain(|_, e| !e.expired(now));
            if map.len() + limits.len() > self.max_entries {
                return Err(Unavailable("too many clients are being counted".into()));
            }
        }
        for (l, new) in limits.iter().zip(taken) {
            match new {
                Some(tat) => {
                    map.insert(l.key.clone(), Entry::Bucket { tat });
                }
                None => {
                    let e = map
                        .entry(l.key.clone())
                        .or_insert_with(|| Entry::InFlight(Vec::new()));
                    if !matches!(e, Entry::InFlight(_)) {
                        *e = Entry::InFlight(Vec::new());
                    }
                    if let Entry::InFlight(v) = e {
                        v.retain(|(_, exp)| *exp > now);
                        v.push((plan.lease_id.clone(), now + plan.lease_ms));
                    }
                }
            }
        }
        Ok(Admit::Granted { tier, level: lvl })
    }

    fn release_now(&self, lease_id: &str, limits: &[Limit], refund: bool) {
        let now = self.now();
        let mut map = self.lock();
        for l in limits {
            match l.rule {
                Rule::InFlight { .. } => {
                    let empty = match map.get_mut(&l.key) {
                        Some(Entry::InFlight(v)) => {
                            v.retain(|(id, exp)| id != lease_id && *exp > now);
                            v.is_empty()
                        }
                        _ => false,
                    };
                    if empty {
                        map.remove(&l.key);
                    }
                }
                Rule::Bucket { period_ms, .. } if refund => {
                    if let Some(Entry::Bucket { tat }) = map.get_mut(&l.key) {
                        let back = tat.saturating_sub(period_ms);
                        if back <= now {
                            map.remove(&l.key);
                        } else {
                            *tat = back;
                        }
                    }
                }
                Rule::Bucket { .. } => {}
            }
        }
    }
}

impl LimitStore for MemoryLimits {
    fn acquire<'a>(&'a self, plan: &'a Plan) -> LimitFuture<'a, Admit> {
        Box::pin(async move { self.acquire_now(plan) })
    }

    fn release<'a>(
        &'a self,
        lease_id: &'a str,
        limits: &'a [Limit],
        refund: bool,
    ) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            self.release_now(lease_id, limits, refund);
            Ok(())
        })
    }

    fn remember<'a>(&'a self, keys: &'a [String], ttl_ms: u64) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            let until = self.now() + ttl_ms;
            let mut map = self.lock();
            for k in keys {
                if map.len() < self.max_entries || map.contains_key(k) {
                    map.insert(k.clone(), Entry::Known { until });
                }
            }
            Ok(())
        })
    }

    fn sweep(&self) {
        let now = self.now();
        self.lock().retain(|_, e| !e.expired(now));
    }
}

// --------------------------------------------------------------- redis store

/// [`MemoryLimits::acquire_now`] in Lua, on Redis's clock (`TIME`), so that
/// every instance counts against the same numbers at the same time.
///
/// KEYS: per tier, its known keys, then its limit keys.
/// ARGV: lease id, lease ms, tier count; per tier: known count, limit count,
/// then per limit: kind (`b` bucket, `f` in flight), burst or cap, period (ms).
/// Returns `{1, tier (0-based), level}` or `{0, retry ms}`.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_id = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local ntiers = tonumber(ARGV[3])
local ki = 1
local ai = 4
for tier = 1, ntiers do
  local nknown = tonumber(ARGV[ai])
  local nlimits = tonumber(ARGV[ai + 1])
  ai = ai + 2
  local applies = (nknown == 0)
  for i = 1, nknown do
    if redis.call('EXISTS', KEYS[ki]) == 1 then applies = true end
    ki = ki + 1
  end
  if applies then
    local retry = 0
    local level = 0
    local news = {}
    for i = 0, nlimits - 1 do
      local key = KEYS[ki + i]
      local kind = ARGV[ai + 3 * i]
      local a = tonumber(ARGV[ai + 3 * i + 1])
      local p = tonumber(ARGV[ai + 3 * i + 2])
      if kind == 'b' then
        local tat = tonumber(redis.call('GET', key) or '0') or 0
        if tat < now then tat = now end
        local new = tat + p
        local allowed = now + a * p
        if new > allowed then
          if new - allowed > retry then retry = new - allowed end
        else
          news[i] = new
          local l = math.ceil((new - now) / p)
          if l > level then level = l end
        end
      else
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        if redis.call('ZCARD', key) >= a and retry < 1000 then retry = 1000 end
      end
    end
    if retry > 0 then return {0, retry} end
    for i = 0, nlimits - 1 do
      local key = KEYS[ki + i]
      if ARGV[ai + 3 * i] == 'b' then
        redis.call('SET', key, string.format('%d', news[i]), 'PX', string.format('%d', news[i] - now))
      else
        redis.call('ZADD', key, string.format('%d', now + lease_ms), lease_id)
        redis.call('PEXPIRE', key, lease_ms)
      end
    end
    return {1, tier - 1, level}
  end
  ki = ki + nlimits
  ai = ai + 3 * nlimits
end
return {0, 1000}
";

/// [`MemoryLimits::release_now`] in Lua.
/// KEYS: limit keys. ARGV: lease id, refund (`1`/`0`), then per key: kind, period (ms).
const RELEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  local kind = ARGV[1 + 2 * i]
  local p = tonumber(ARGV[2 + 2 * i])
  if kind == 'f' then
    redis.call('ZREM', key, ARGV[1])
  elseif ARGV[2] == '1' then
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    local back = tat - p
    if back <= now then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%d', back), 'PX', string.format('%d', back - now))
    end
  end
end
return 1
";

/// The counters in Redis (`whosthat:{lim}:*` keys, all expiring by themselves).
/// Any error or timeout is [`Unavailable`]: the check is refused (fail closed).
pub struct RedisLimits {
    conn: RedisConn,
    acquire: Script,
    release: Script,
}

impl RedisLimits {
    pub fn new(conn: RedisConn) -> RedisLimits {
        RedisLimits {
            conn,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Unavailable {
    Unavailable(e.to_string())
}

async fn within<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Unavailable> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(Unavailable("redis did not answer in time".into())),
    }
}

fn rule_args(rule: &Rule) -> (&'static str, u64, u64) {
    match *rule {
        Rule::Bucket { burst, period_ms } => ("b", u64::from(burst), period_ms),
        Rule::InFlight { cap } => ("f", u64::from(cap), 0),
    }
}

impl LimitStore for RedisLimits {
    fn acquire<'a>(&'a self, plan: &'a Plan) -> LimitFuture<'a, Admit> {
        Box::pin(async move {
            let mut inv = self.acquire.prepare_invoke();
            inv.arg(&plan.lease_id)
                .arg(plan.lease_ms)
                .arg(plan.tiers.len());
            for tier in &plan.tiers {
                inv.arg(tier.known.len()).arg(tier.limits.len());
                for k in &tier.known {
                    inv.key(k);
                }
                for l in &tier.limits {
                    inv.key(&l.key);
                    let (kind, a, p) = rule_args(&l.rule);
                    inv.arg(kind).arg(a).arg(p);
                }
            }
            let mut conn = self.conn.clone();
            let answer: Vec<i64> = within(inv.invoke_async(&mut conn)).await?;
            match answer.as_slice() {
                [1, tier, level] => Ok(Admit::Granted {
                    tier: usize::try_from(*tier).map_err(unavailable)?,
                    level: u32::try_from(*level).unwrap_or(u32::MAX),
                }),
                [0, retry] => Ok(Admit::Refused {
                    retry_after_ms: u64::try_from(*retry).unwrap_or(1000).max(1),
                }),
                other => Err(Unavailable(format!("unexpected limiter answer {other:?}"))),
            }
        })
    }

    fn release<'a>(
        &'a self,
        lease_id: &'a str,
        limits: &'a [Limit],
        refund: bool,
    ) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            if limits.is_empty() {
                return Ok(());
            }
            let mut inv = self.release.prepare_invoke();
            inv.arg(lease_id).arg(if refund { "1" } else { "0" });
            for l in limits {
                inv.key(&l.key);
                let (kind, _, p) = rule_args(&l.rule);
                inv.arg(kind).arg(p);
            }
            let mut conn = self.conn.clone();
            let _: i64 = within(inv.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn remember<'a>(&'a self, keys: &'a [String], ttl_ms: u64) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for k in keys {
                pipe.cmd("SET")
                    .arg(k)
                    .arg("1")
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            within(pipe.query_async::<()>(&mut conn)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn from(addr: IpAddr) -> Origin<'static> {
        Origin { addr, device: None }
    }

    fn limiter() -> (Arc<MemoryLimits>, Limiter) {
        let m = Arc::new(MemoryLimits::new());
        (m.clone(), Limiter::with_store(m))
    }

    #[test]
    fn gcra_allows_a_burst_then_one_per_period() {
        let mut tat = None;
        for n in 1..=3 {
            let new = gcra(tat, 1000, 3, 100).unwrap();
            assert_eq!(level(new, 1000, 100), n);
            tat = Some(new);
        }
        // Full: the next one fits once one period has passed, not before.
        assert_eq!(gcra(tat, 1000, 3, 100), Err(100));
        assert_eq!(gcra(tat, 1060, 3, 100), Err(40));
        assert!(gcra(tat, 1100, 3, 100).is_ok());
        // An old tat is an empty bucket.
        assert_eq!(gcra(Some(5), 1000, 3, 100), Ok(1100));
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_eq!(addr_key(a), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(addr_key(mapped), "10.0.0.1");
    }

    #[tokio::test]
    async fn the_address_bucket_holds_ten_failures_then_one_a_minute() {
        let (m, l) = limiter();
        for n in 1..=ADDR_BURST {
            let a = l.begin("alice", &from(A)).await.expect("room");
            assert_eq!(a.failure_delay().is_zero(), n <= SLOW_AFTER, "failure {n}");
            a.failed().await;
        }
        // The address is full for every name; Retry-After is the wait for one token.
        assert_eq!(
            l.begin("bob", &from(A)).await.err(),
            Some(Refusal::TooMany(60))
        );
        m.advance(Duration::from_secs(59));
        assert_eq!(
            l.begin("alice", &from(A)).await.err(),
            Some(Refusal::TooMany(1))
        );
        m.advance(Duration::from_secs(1));
        l.begin("alice", &from(A))
            .await
            .expect("one more")
            .failed()
            .await;
        assert!(l.begin("alice", &from(A)).await.is_err());
    }

    #[tokio::test]
    async fn checks_in_flight_are_capped_and_counted_before_they_finish() {
        let (_, l) = limiter();
        let mut held = Vec::new();
        for _ in 0..ADDR_IN_FLIGHT {
            held.push(l.begin("alice", &from(A)).await.expect("room"));
        }
        assert_eq!(
            l.begin("alice", &from(A)).await.err(),
            Some(Refusal::TooMany(1))
        );
        for a in held {
            a.failed().await;
        }
        // Freed slots, but the four failures were counted while they ran.
        for _ in ADDR_IN_FLIGHT..ADDR_BURST {
            l.begin("alice", &from(A)).await.unwrap().failed().await;
        }
        assert!(matches!(
            l.begin("alice", &from(A)).await,
            Err(Refusal::TooMany(_))
        ));
    }

    #[tokio::test]
    async fn a_name_has_one_budget_across_addresses_but_known_addresses_pass() {
        let (_, l) = limiter();
        // Alice signed in from B once.
        l.begin("alice", &from(B)).await.unwrap().succeeded().await;
        for i in 0..NAME_BURST {
            let addr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i as u8));
            l.begin("alice", &from(addr)).await.unwrap().failed().await;
        }
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(
            l.begin("alice", &from(fresh)).await.err(),
            Some(Refusal::TooMany(180))
        );
        // Another name from the same fresh address is unaffected...
        l.begin("bob", &from(fresh)).await.unwrap().failed().await;
        // ...and alice from her known address goes through.
        l.begin("alice", &from(B)).await.unwrap().succeeded().await;
    }

    #[tokio::test]
    async fn a_known_device_is_limited_on_its_own() {
        let (_, l) = limiter();
        let dev = new_token();
        let with_dev = Origin {
            addr: A,
            device: Some(&dev),
        };
        l.begin("alice", &with_dev).await.unwrap().succeeded().await;
        // Someone else fills the address's bucket.
        for _ in 0..ADDR_BURST {
            l.begin("bob", &from(A)).await.unwrap().failed().await;
        }
        assert!(l.begin("alice", &from(A)).await.is_err());
        // The browser that signed in as alice still may...
        let a = l.begin("alice", &with_dev).await.expect("known device");
        a.succeeded().await;
        // ...but not as someone else: the cookie is known for alice only.
        assert!(l.begin("carol", &with_dev).await.is_err());
    }

    #[tokio::test]
    async fn success_refunds_and_not_checked_costs_nothing() {
        let (m, l) = limiter();
        for _ in 0..100 {
            l.begin("alice", &from(A)).await.unwrap().succeeded().await;
            l.begin("bob", &from(A)).await.unwrap().not_checked().await;
        }
        // Only the known-address markers remain.
        assert_eq!(m.len(), 1);
    }

    #[tokio::test]
    async fn a_dropped_attempt_stays_counted_and_frees_its_slot() {
        let (m, l) = limiter();
        let a = l.begin("alice", &from(A)).await.unwrap();
        drop(a);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let now = m.now();
        let map = m.lock();
        assert!(
            matches!(map.get(&format!("{PREFIX}a:10.0.0.1")), Some(Entry::Bucket { tat }) if *tat > now)
        );
        assert!(!map.contains_key(&format!("{PREFIX}ai:10.0.0.1")));
    }

    #[tokio::test]
    async fn sweep_forgets_what_expired_and_the_map_is_bounded() {
        let m = Arc::new(MemoryLimits::with_max_entries(8));
        let l = Limiter::with_store(m.clone());
        for i in 0..3u8 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i));
            l.begin("alice", &from(addr)).await.unwrap().failed().await;
        }
        // 3 address buckets + 1 name bucket; the next address would need 2 more.
        assert_eq!(m.len(), 4);
        let addr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9));
        l.begin("bob", &from(addr)).await.unwrap().failed().await;
        assert_eq!(m.len(), 6);
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(
            l.begin("carol", &from(other)).await.err(),
            Some(Refusal::Unavailable(Unavailable(
                "too many clients are being counted".into()
            ))),
            "full: refused, never let through uncounted"
        );
        // Alice's name holds 3 failures, the longest-lived of all.
        m.advance(NAME_PERIOD * 3);
        l.sweep();
        assert!(m.is_empty());
        l.begin("carol", &from(other)).await.unwrap().failed().await;
    }

    #[test]
    fn device_cookies_are_read_only_when_well_formed() {
        let mut h = http::HeaderMap::new();
        let dev = new_token();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::try_from(format!("a=1; {DEVICE_COOKIE}={dev}")).unwrap(),
        );
        assert_eq!(device_cookie(&h), Some(dev.as_str()));
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("whosthat_device=short"),
        );
        assert_eq!(device_cookie(&h), None);
        let v = device_set_cookie(&dev, true).unwrap();
        let v = v.to_str().unwrap();
        assert!(v.contains("HttpOnly") && v.contains("Secure") && v.contains("Path=/auth"));
    }
}
