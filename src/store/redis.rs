//! The Redis token store: several gateway instances share tokens.
//!
//! - Keys are named by the token's SHA-256 (hex), never the token, and expire
//!   with the token (`PX`). A value is `{family}|{json}`.
//! - Single use (refresh tokens, codes) is decided by a Lua script on the
//!   Redis side, so two instances racing on one refresh token cannot both win.
//!   The script's two keys share a hash tag, so it runs on a Redis Cluster too.
//! - Revocations (one access token, or a grant family after a refresh-token
//!   replay) are acknowledged only once a replica has them (`WAIT`, see
//!   [`RedisConn::durable`]), or the caller gets 503: a token revoked before a
//!   failover is not accepted after it.
//! - Each instance keeps a local cache of access tokens it has seen, so the hot
//!   path makes no round trip for them; revocations reach every instance's cache
//!   through the `whosthat:revocations` pub/sub channel.
//! - Bounded staleness: the cache is used only while the subscription is known
//!   to be current, i.e. a PING sent on it at most `store.max_staleness` ago has
//!   been answered. Redis answers a subscriber in order, so every revocation
//!   published before that PING has been applied by then. Past that, a lookup
//!   asks Redis (the truth); if Redis does not answer either, it fails (503). A
//!   revocation is thus honoured everywhere at most `max_staleness` after it
//!   was made, even when the subscription is silently stuck.
//! - A revocation that races a cache fill never leaves the token cached: every
//!   invalidation bumps an epoch, and a fill that saw the epoch move while its
//!   lookup was in flight takes its entry out again.
//! - Fail closed: while the pub/sub subscription or the command connection is
//!   down, the instance cannot know of revocations, so it vouches for no token at
//!   all (every lookup is an error: 503). When Redis returns, the subscription is
//!   re-established, the cache dropped (it may have missed revocations), and
//!   service resumes by itself. The same happens when Sentinel names a new
//!   primary: the subscription moves there and the cache is dropped.

use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::{AsyncCommands, Script};
use serde::Serialize;

use super::RedisTopology;
use super::connection::{DurableError, RedisConn};
use super::memory::PassThroughHasher;
use super::record::{StoredCode, StoredToken};
use super::{
    CodeRecord, DeviceDecision, DevicePoll, DeviceRecord, Grants, Redeem, StoreError, StoreFuture,
    TokenHash, TokenRecord, TokenStore, hex, now_secs, unhex,
};

mod device;

const CHANNEL: &str = "whosthat:revocations";
/// A PING on the subscription unanswered this long: the connection is taken
/// for dead and made again (a silently dropped TCP connection never errors).
const PONG_TIMEOUT: Duration = Duration::from_secs(3);

/// `whosthat:at:{hash}`: an access token's record (one key, any slot), or
/// [`REVOKED`] once it is revoked.
fn access_key(h: &TokenHash) -> String {
    format!("whosthat:at:{}", hex(h))
}

/// A single-use credential's record and its used marker. The braces make the
/// token's hash the Cluster hash tag: the two keys the redeem script touches
/// share a slot.
fn single_use_keys(kind: &str, h: &TokenHash) -> (String, String) {
    let h = hex(h);
    (
        format!("whosthat:{kind}:{{{h}}}"),
        format!("whosthat:{kind}u:{{{h}}}"),
    )
}

/// A revoked grant family, until its last token would have expired.
fn family_key(family: u64) -> String {
    format!("whosthat:fam:{family}")
}

/// Peek at (ARGV[1] = '0') or use (ARGV[1] = '1') a single-use credential.
/// Answers '0' (unknown), '1' .. value (fresh), '2' .. value (used before).
/// Its two keys share a hash tag (the token's hash), hence a Cluster slot. The
/// family's revocation is checked after, by the caller: family keys live in
/// slots of their own, and a script may only touch keys it is given.
const REDEEM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return '0' end
if redis.call('EXISTS', KEYS[2]) == 1 then return '2' .. v end
if ARGV[1] == '1' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 1 then ttl = 1000 end
  redis.call('SET', KEYS[2], '1', 'PX', ttl)
end
return '1' .. v
";

/// What a revoked access token's key holds until the token would have expired.
///
/// A revocation overwrites the record rather than deleting it. A `SET` always
/// reaches the replicas, where a `DEL` of a key the primary lacks does not; and
/// a revocation retried after an unconfirmed first attempt (503) finds this
/// marker, so it confirms the revocation again (see
/// [`TokenStore::confirm_revoked`]) instead of answering "nothing to revoke".
/// Not a record: it never decodes as one.
const REVOKED: &str = "-";
/// What the marker becomes once a replica has confirmed it (or at once where
/// there is no replica to ask): a later revocation of the same token finds it
/// and is answered after one `GET`, with no write, `PUBLISH` or `WAIT`. Only
/// ever written over [`REVOKED`] after that confirmation, so a node that holds
/// it holds a revocation some replica had acknowledged.
const REVOKED_CONFIRMED: &str = "=";

/// A revoked family's key: [`FAMILY_REVOKED`] as written, then
/// [`FAMILY_CONFIRMED`] once a replica has confirmed it (as for
/// [`REVOKED_CONFIRMED`]). Only the key's existence is ever read as "revoked".
const FAMILY_REVOKED: &str = "1";
const FAMILY_CONFIRMED: &str = "2";

/// Whether an access token's value is one of the revoked markers.
fn is_revoked_marker(v: &str) -> bool {
    v == REVOKED || v == REVOKED_CONFIRMED
}

/// Rewrites a revoked marker, keeping its expiry, and tells the other
/// instances again; only where the marker still is (an expired one is gone
/// everywhere). KEYS[1]: the access key; ARGV: marker, channel, message.
const CONFIRM_REVOKED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'XX', 'KEEPTTL')
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
";

fn down(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e)
}

/// Milliseconds from now to `until` (unix seconds), at least 1.
fn px_until(until: u64) -> u64 {
    until.saturating_sub(now_secs()).saturating_mul(1000).max(1)
}

struct Inner {
    conn: RedisConn,
    grants: Arc<Grants>,
    cache: DashMap<TokenHash, TokenRecord, BuildHasherDefault<PassThroughHasher>>,
    /// Families revoked, until when: heard on the channel or done here.
    revoked: DashMap<u64, u64>,
    subscribed: AtomicBool,
    reachable: AtomicBool,
    redeem: Script,
    /// Device authorizations: see [`device`].
    decide: Script,
    poll: Script,
    /// The cache is trusted only while `heard` is younger than this.
    max_staleness: Duration,
    /// The origin of `heard`: a monotonic clock, immune to wall-clock steps.
    clock: Instant,
    /// When (µs since `clock`, 0 = never) the latest PING or SUBSCRIBE was sent
    /// on the subscription whose answer has arrived: every revocation published
    /// before then has been applied.
    heard: AtomicU64,
    /// Bumped by every cache invalidation; see [`Inner::fill`].
    epoch: AtomicU64,
}

pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Prepares the store; nothing connects until [`TokenStore::spawn_background`]
    /// and the first command. Call it within a tokio runtime.
    /// A cached token is trusted only while the instance has heard from its
    /// subscription within `max_staleness` (`store.max_staleness`).
    pub fn new(
        topology: &RedisTopology,
        grants: Arc<Grants>,
        max_staleness: Duration,
    ) -> Result<RedisStore, StoreError> {
        let conn = RedisConn::new(topology).map_err(down)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                grants,
                cache: DashMap::with_hasher_and_shard_amount(Default::default(), 64),
                revoked: DashMap::new(),
                subscribed: AtomicBool::new(false),
                reachable: AtomicBool::new(false),
                redeem: Script::new(REDEEM),
                decide: Script::new(device::DECIDE),
                poll: Script::new(device::POLL),
                max_staleness,
                clock: Instant::now(),
                heard: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        })
    }
}

impl RedisStore {
    /// The handle on Redis (cheap to clone), for what else lives there: the
    /// brute-force limiter's counters and the sign-in state.
    pub fn connection(&self) -> RedisConn {
        self.inner.conn.clone()
    }
}

impl Inner {
    fn healthy(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.reachable.load(Ordering::Acquire)
    }

    fn check(&self) -> Result<(), StoreError> {
        // Which half is down, for the log line of the refused request.
        if !self.subscribed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable(
                "not subscribed to the redis revocation channel".into(),
            ))
        } else if !self.reachable.load(Ordering::Acquire) {
            Err(StoreError::Unavailable("redis does not answer PING".into()))
        } else {
            Ok(())
        }
    }

    /// A command failed: stop vouching until a ping gets through again.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        self.reachable.store(false, Ordering::Release);
        down(e)
    }

    /// One PING on the command connection, within a second.
    async fn ping_once(&self) -> bool {
        self.conn.ping().await
    }

    fn family_revoked(&self, family: u64) -> bool {
        !self.revoked.is_empty() && self.revoked.contains_key(&family)
    }

    /// Now, in µs since `clock`; never 0 (0 means "never" in `heard`).
    fn now_us(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether the cache may answer: the subscription was known to be current
    /// less than `max_staleness` ago.
    fn cache_fresh(&self) -> bool {
        let heard = self.heard.load(Ordering::Acquire);
        heard != 0
            && u128::from(self.now_us().saturating_sub(heard)) < self.max_staleness.as_micros()
    }

    /// How often the subscription is pinged: well within `max_staleness`, so
    /// that a healthy subscription keeps the cache usable without a gap.
    fn ping_every(&self) -> Duration {
        (self.max_staleness / 3).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Takes `key` out of the cache for good: the epoch moves first, so a fill
    /// in flight either sees it move or is removed here (see [`Inner::fill`]).
    fn invalidate(&self, key: &TokenHash) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(key);
    }

    /// Forgets every cached token (revocations may have been missed).
    fn forget_cache(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }

    /// Caches a record fetched from Redis by a lookup that started at `epoch`.
    /// If any invalidation happened since, the record may be one revoked while
    /// the lookup was in flight: it is taken out again. (Insert, then check:
    /// an invalidation bumps, then removes; whichever order the two interleave
    /// in, the entry does not survive.)
    fn fill(&self, key: TokenHash, rec: TokenRecord, epoch: u64) {
        self.cache.insert(key, rec);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.cache.remove(&key);
        }
    }

    /// `{family}|{json}`: the family outside the JSON, where the Lua scripts
    /// read it.
    fn encode(family: u64, stored: &impl Serialize) -> String {
        format!(
            "{family}|{}",
            serde_json::to_string(stored).expect("serialisable")
        )
    }

    fn encode_token(rec: &TokenRecord) -> String {
        Self::encode(rec.family, &StoredToken::of(rec))
    }

    fn split(v: &str) -> Option<(u64, &str)> {
        let (family, json) = v.split_once('|')?;
        Some((family.parse().ok()?, json))
    }

    fn decode_token(&self, v: &str) -> Option<TokenRecord> {
        let (family, json) = Self::split(v)?;
        let s: StoredToken = serde_json::from_str(json).ok()?;
        s.into_record(family, &self.grants)
    }

    fn decode_code(&self, v: &str) -> Option<CodeRecord> {
        let (family, json) = Self::split(v)?;
        let s: StoredCode = serde_json::from_str(json).ok()?;
        s.into_record(family, &self.grants)
    }

    /// Runs the redeem script; `value` decodes what it returns.
    ///
    /// The family is checked before the credential is used, as one script
    /// checking both would (a Cluster keeps the family key in another slot):
    /// a peek, the family, then the use. Of two instances racing on one
    /// refresh token, the one that uses it first wins even though the other,
    /// seeing a replay, revokes the family right after.
    async fn redeem<T>(
        &self,
        kind: &str,
        key: &TokenHash,
        take: bool,
        decode: impl Fn(&str) -> Option<T>,
    ) -> Result<Redeem<T>, StoreError> {
        self.check()?;
        let (k, used) = single_use_keys(kind, key);
        let run = |take: bool| {
            let mut inv = self.redeem.key(&k);
            inv.key(&used).arg(if take { "1" } else { "0" });
            let mut conn = self.conn.clone();
            async move {
                inv.invoke_async::<String>(&mut conn)
                    .await
                    .map_err(|e| self.failed(e))
            }
        };
        let mut answer = run(false).await?;
        let peeked = answer.split_at(1.min(answer.len()));
        let Some((family, _)) = Self::split(peeked.1) else {
            return Ok(Redeem::Unknown);
        };
        // A revoked family's credentials are refused, used or not; the caller
        // revokes the family again (see `Redeem::Revoked`).
        if self.family_revoked_in_redis(family).await? {
            return Ok(Redeem::Revoked { family });
        }
        if take && peeked.0 == "1" {
            answer = run(true).await?;
        }
        let (tag, value) = answer.split_at(1.min(answer.len()));
        Ok(match (tag, Self::split(value)) {
            ("1", Some(_)) => decode(value).map_or(Redeem::Unknown, Redeem::Fresh),
            ("2", Some((family, _))) => Redeem::Spent { family },
            _ => Redeem::Unknown,
        })
    }

    /// Whether `family` is revoked: known here, or by its key in Redis.
    async fn family_revoked_in_redis(&self, family: u64) -> Result<bool, StoreError> {
        if self.family_revoked(family) {
            return Ok(true);
        }
        let n: i64 = redis::cmd("EXISTS")
            .arg(family_key(family))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(n == 1)
    }

    /// Runs `pipe` (writes to `key`'s slot and their PUBLISH) so that it is
    /// acknowledged only once a replica has it (see [`RedisConn::durable`]).
    async fn durable(&self, key: &str, pipe: redis::Pipeline) -> Result<(), StoreError> {
        match self.conn.durable(key, pipe).await {
            Ok(()) => Ok(()),
            Err(DurableError::Redis(e)) => Err(self.failed(e)),
            Err(e) => {
                tracing::warn!(error = %e, "a revocation was not confirmed by a replica; the caller is told to retry");
                Err(StoreError::Unavailable(e.to_string()))
            }
        }
    }

    /// A plain `GET`.
    async fn value(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn.clone().get(key).await.map_err(|e| self.failed(e))
    }

    /// Marks a revocation `durable` has just confirmed as confirmed (`marker`:
    /// [`REVOKED_CONFIRMED`] or [`FAMILY_CONFIRMED`]), keeping its expiry; only
    /// where the key still is. Best effort: left unmarked, the next request
    /// for the same revocation confirms it again, as it would have before.
    async fn confirmed(&self, key: &str, marker: &str) {
        let r: Result<redis::Value, _> = redis::cmd("SET")
            .arg(key)
            .arg(marker)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %down(e), "a confirmed revocation was not marked so");
        }
    }

    async fn set(&self, key: String, value: String, px: u64) -> Result<(), StoreError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let _: () = conn
            .pset_ex(key, value, px)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// A revocation heard on the channel.
    fn apply(&self, message: &str) {
        if let Some(h) = message.strip_prefix("t:").and_then(unhex) {
            self.invalidate(&h);
        } else if let Some(rest) = message.strip_prefix("f:") {
            let mut parts = rest.split(':');
            if let (Some(Ok(family)), Some(Ok(until))) = (
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<u64>),
            ) {
                self.revoked.insert(family, until);
            }
        }
    }

    /// Keeps a subscription to the revocation channel, forever.
    async fn listen(self: Arc<Self>) {
        let mut primary = self.conn.primary_changes();
        loop {
            // Seen before subscribing: a change from here on ends the subscription.
            primary.borrow_and_update();
            if let Some((sink, stream, sent)) = self.subscribe().await {
                // Whatever was revoked while we were not listening is unknown:
                // forget every cached token before vouching again.
                self.forget_cache();
                // Ready only once commands get through as well: the command
                // connection may still be the one that broke.
                while !self.ping_once().await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Everything published after the SUBSCRIBE reaches us.
                self.heard.fetch_max(sent, Ordering::AcqRel);
                self.reachable.store(true, Ordering::Release);
                self.subscribed.store(true, Ordering::Release);
                tracing::info!("subscribed to redis revocations");
                self.follow(sink, stream, &mut primary).await;
                self.heard.store(0, Ordering::Release);
                self.subscribed.store(false, Ordering::Release);
                self.reachable.store(false, Ordering::Release);
                tracing::warn!(
                    "lost the redis revocation channel; refusing tokens until it is back"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new subscription to the channel, and when its SUBSCRIBE was sent.
    async fn subscribe(&self) -> Option<(PubSubSink, PubSubStream, u64)> {
        let client = self.conn.pubsub_client()?;
        let connected =
            tokio::time::timeout(Duration::from_secs(1), client.get_async_pubsub()).await;
        let (mut sink, stream) = connected.ok()?.ok()?.split();
        let sent = self.now_us();
        // Within a deadline: a frozen server accepts the connection and then
        // answers nothing.
        tokio::time::timeout(Duration::from_secs(1), sink.subscribe(CHANNEL))
            .await
            .ok()?
            .ok()?;
        Some((sink, stream, sent))
    }

    /// Applies revocations as they arrive and PINGs the subscription every
    /// [`ping_every`](Self::ping_every); each answered PING moves `heard` to
    /// when it was sent. Returns when the subscription is lost or stuck, or
    /// when another primary took over (Sentinel): what was published on the
    /// new one meanwhile never reached this subscription.
    async fn follow(
        &self,
        sink: PubSubSink,
        mut stream: PubSubStream,
        primary: &mut tokio::sync::watch::Receiver<u64>,
    ) {
        type Pong =
            std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<redis::Value>> + Send>>;
        let mut tick = tokio::time::interval(self.ping_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pong: Option<(u64, Pong)> = None;
        loop {
            tokio::select! {
                biased;
                msg = stream.next() => match msg {
                    Some(msg) => self.apply_msg(&msg),
                    None => return,
                },
                Ok(()) = primary.changed() => {
                    tracing::warn!("another redis primary took over; resubscribing there");
                    return;
                },
                answer = async { pong.as_mut().expect("guarded").1.as_mut().await }, if pong.is_some() => {
                    let (sent, _) = pong.take().expect("guarded");
                    if answer.is_err() {
                        return;
                    }
                    // The connection hands messages over before the answer to a
                    // later PING: they are queued for us now. Apply them all
                    // before declaring the cache current as of `sent`.
                    loop {
                        match stream.next().now_or_never() {
                            Some(Some(msg)) => self.apply_msg(&msg),
                            Some(None) => return,
                            None => break,
                        }
                    }
                    self.heard.fetch_max(sent, Ordering::AcqRel);
                },
                _ = tick.tick() => match &pong {
                    Some((sent, _)) => {
                        let waited = Duration::from_micros(self.now_us().saturating_sub(*sent));
                        if waited > PONG_TIMEOUT {
                            tracing::warn!(?waited, "the redis subscription does not answer PING; reconnecting");
                            return;
                        }
                    }
                    None => {
                        let mut sink = sink.clone();
                        let sent = self.now_us();
                        pong = Some((sent, Box::pin(async move { sink.ping::<redis::Value>().await })));
                    }
                },
            }
        }
    }

    fn apply_msg(&self, msg: &redis::Msg) {
        if let Ok(payload) = msg.get_payload::<String>() {
            self.apply(&payload);
        }
    }

    /// Pings Redis on the command connection; a silent network failure shows here.
    async fn ping(self: Arc<Self>) {
        loop {
            let ok = self.ping_once().await;
            let was = self.reachable.swap(ok, Ordering::AcqRel);
            if was && !ok {
                tracing::warn!("redis does not answer; refusing tokens until it does");
            }
            tokio::time::sleep(Duration::from_millis(if ok { 500 } else { 100 })).await;
        }
    }
}

impl TokenStore for RedisStore {
    fn put_access(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let value = Inner::encode_token(&rec);
            let px = px_until(rec.expires_at);
            self.inner.set(access_key(&key), value, px).await?;
            self.inner.cache.insert(key, rec);
            Ok(())
        })
    }

    fn get_access(&self, key: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check()?;
            let now = now_secs();
            // The cache answers only while the subscription is known current.
            if inner.cache_fresh()
                && let Some(rec) = inner.cache.get(&key).map(|r| r.clone())
            {
                return Ok((rec.is_live(now) && !inner.family_revoked(rec.family)).then_some(rec));
            }
            let epoch = inner.epoch.load(Ordering::SeqCst);
            let value = inner.value(&access_key(&key)).await?;
            let Some(rec) = value
                .as_deref()
                .filter(|v| !is_revoked_marker(v))
                .and_then(|v| inner.decode_token(v))
            else {
                return Ok(None);
            };
            if !rec.is_live(now) || inner.family_revoked_in_redis(rec.family).await? {
                return Ok(None);
            }
            inner.fill(key, rec.clone(), epoch);
            Ok(Some(rec))
        })
    }

    fn remove_access(&self, key: TokenHash, expires_at: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check()?;
            let k = access_key(&key);
            let mut pipe = redis::pipe();
            // A marker, not a DEL: see `REVOKED`.
            pipe.cmd("SET")
                .arg(&k)
                .arg(REVOKED)
                .arg("PX")
                .arg(px_until(expires_at));
            pipe.cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(format!("t:{}", hex(&key)));
            let done = inner.durable(&k, pipe).await;
            // After the write (whether or not a replica confirmed it); also
            // bumps the epoch, so a lookup of ours in flight does not cache it.
            inner.invalidate(&key);
            done?;
            inner.confirmed(&k, REVOKED_CONFIRMED).await;
            Ok(())
        })
    }

    fn confirm_revoked(&self, key: TokenHash) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check()?;
            let k = access_key(&key);
            // A plain read first: an unknown token (the common case, and an
            // attacker's) and a revocation already confirmed (however often it
            // is asked for again) cost one GET, never a write or a WAIT.
            let value = inner.value(&k).await?;
            if value.as_deref() != Some(REVOKED) {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(CONFIRM_REVOKED)
                .arg(1)
                .arg(&k)
                .arg(REVOKED)
                .arg(CHANNEL)
                .arg(format!("t:{}", hex(&key)));
            inner.durable(&k, pipe).await?;
            inner.confirmed(&k, REVOKED_CONFIRMED).await;
            Ok(())
        })
    }

    fn put_refresh(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let value = Inner::encode_token(&rec);
            let px = px_until(rec.expires_at);
            self.inner
                .set(single_use_keys("rt", &key).0, value, px)
                .await
        })
    }

    fn get_refresh(&self, key: TokenHash) -> StoreFuture<'_, Redeem<TokenRecord>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .redeem("rt", &key, false, |v| inner.decode_token(v))
                .await
        })
    }

    fn take_refresh(&self, key: TokenHash) -> StoreFuture<'_, Redeem<TokenRecord>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .redeem("rt", &key, true, |v| inner.decode_token(v))
                .await
        })
    }

    fn put_code(&self, key: TokenHash, rec: CodeRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let value = Inner::encode(rec.family, &StoredCode::of(&rec));
            self.inner
                .set(
                    single_use_keys("code", &key).0,
                    value,
                    px_until(rec.expires_at),
                )
                .await
        })
    }

    fn take_code(&self, key: TokenHash) -> StoreFuture<'_, Redeem<CodeRecord>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .redeem("code", &key, true, |v| inner.decode_code(v))
                .await
        })
    }

    fn revoke_family(&self, family: u64, until: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check()?;
            // Refused here from now on, whatever Redis answers.
            inner.revoked.insert(family, until);
            let k = family_key(family);
            // Revoked and confirmed before (a replayed refresh token, a
            // revocation asked for again): one GET, and nothing to write. The
            // key's expiry, set by the first revocation, already outlives
            // every token the family had.
            let value = inner.value(&k).await?;
            if value.as_deref() == Some(FAMILY_CONFIRMED) {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&k)
                .arg(FAMILY_REVOKED)
                .arg("PX")
                .arg(px_until(until));
            pipe.cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(format!("f:{family}:{until}"));
            inner.durable(&k, pipe).await?;
            inner.confirmed(&k, FAMILY_CONFIRMED).await;
            Ok(())
        })
    }

    fn sweep_expired(&self, now: u64) -> StoreFuture<'_, usize> {
        let inner = &self.inner;
        let before = inner.cache.len();
        inner
            .cache
            .retain(|_, r| r.is_live(now) && !inner.family_revoked(r.family));
        inner.revoked.retain(|_, until| now < *until);
        let swept = before.saturating_sub(inner.cache.len());
        Box::pin(std::future::ready(Ok(swept)))
    }

    fn first_use(&self, key: TokenHash, until: u64) -> StoreFuture<'_, bool> {
        Box::pin(self.inner.first_use(key, until))
    }

    fn put_device(
        &self,
        device: TokenHash,
        user_code: TokenHash,
        rec: DeviceRecord,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.inner.put_device(device, user_code, rec))
    }

    fn device_by_user_code(&self, user_code: TokenHash) -> StoreFuture<'_, Option<DeviceRecord>> {
        Box::pin(self.inner.device_by_user_code(user_code))
    }

    fn decide_device(
        &self,
        user_code: TokenHash,
        decision: DeviceDecision,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.inner.decide_device(user_code, decision))
    }

    fn poll_device(
        &self,
        device: TokenHash,
        client: &str,
        now_ms: u64,
    ) -> StoreFuture<'_, DevicePoll> {
        let client = client.to_string();
        Box::pin(async move { self.inner.poll_device(device, &client, now_ms).await })
    }

    fn token_counts(&self) -> (usize, usize) {
        (self.inner.cache.len(), 0)
    }

    fn is_ready(&self) -> bool {
        self.inner.healthy()
    }

    fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = self.inner.conn.spawn_background();
        tasks.push(tokio::spawn(self.inner.clone().listen()));
        tasks.push(tokio::spawn(self.inner.clone().ping()));
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;

    #[test]
    fn hex_round_trip() {
        let h = TokenHash::of("abc");
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(hex(&h).len(), 64);
        assert!(unhex("zz").is_none());
    }

    #[tokio::test]
    async fn records_round_trip() {
        let grants = Arc::new(Grants::default());
        let store = RedisStore::new(
            &RedisTopology::Single("redis://127.0.0.1:1/0".into()),
            grants.clone(),
            Duration::from_millis(250),
        )
        .unwrap();
        let rec = TokenRecord {
            grant: grants.intern(
                Some(Arc::from("u")),
                Arc::from("c"),
                ScopeSet::parse("a b").unwrap(),
            ),
            family: 42,
            issued_at: 1,
            expires_at: 2,
            cnf: None,
        };
        let v = Inner::encode_token(&rec);
        assert!(v.starts_with("42|"));
        assert!(
            !v.contains("\"j\"") && !v.contains("\"cnf\""),
            "no binding, no field: {v}"
        );
        let back = store.inner.decode_token(&v).unwrap();
        assert!(Arc::ptr_eq(&back.grant, &rec.grant));
        assert_eq!((back.family, back.issued_at, back.expires_at), (42, 1, 2));
        assert_eq!(back.cnf, None);
        assert!(v.contains("\"client\":\"c\""), "readable names: {v}");
        // A value an earlier version wrote (one-letter names), still in a running Redis.
        let old = store
            .inner
            .decode_token(r#"42|{"u":"u","c":"c","s":"a b","i":1,"e":2}"#)
            .unwrap();
        assert!(Arc::ptr_eq(&old.grant, &rec.grant));
        assert_eq!((old.family, old.issued_at, old.expires_at), (42, 1, 2));
        let code = store
            .inner
            .decode_code(
                r#"9|{"u":null,"c":"c","s":"a","e":5,"r":"http://x/cb","g":false,"p":null}"#,
            )
            .unwrap();
        assert_eq!((code.family, code.expires_at), (9, 5));
        assert_eq!(code.redirect_uri, "http://x/cb");
        // A DPoP-bound token stays bound through Redis.
        let bound = TokenRecord {
            cnf: Some(Arc::new("jkt-value".to_string())),
            ..rec
        };
        let back = store
            .inner
            .decode_token(&Inner::encode_token(&bound))
            .unwrap();
        assert_eq!(back.cnf.as_deref().map(String::as_str), Some("jkt-value"));
    }

    fn store(max_staleness: Duration) -> RedisStore {
        RedisStore::new(
            &RedisTopology::Single("redis://127.0.0.1:1/0".into()),
            Arc::new(Grants::default()),
            max_staleness,
        )
        .unwrap()
    }

    fn record(inner: &Inner) -> TokenRecord {
        TokenRecord {
            grant: inner
                .grants
                .intern(None, Arc::from("c"), ScopeSet::parse("a").unwrap()),
            family: 1,
            issued_at: now_secs(),
            expires_at: now_secs() + 60,
            cnf: None,
        }
    }

    #[tokio::test]
    async fn a_fill_that_raced_an_invalidation_is_not_kept() {
        let s = store(Duration::from_millis(250));
        let inner = &s.inner;
        let (k, other) = (TokenHash::of("k"), TokenHash::of("o"));
        // No invalidation while the lookup was in flight: cached.
        let epoch = inner.epoch.load(Ordering::SeqCst);
        inner.fill(k, record(inner), epoch);
        assert!(inner.cache.contains_key(&k));
        // The revocation message arrived while the lookup was in flight (before
        // the insert): the entry does not stay.
        let epoch = inner.epoch.load(Ordering::SeqCst);
        inner.invalidate(&k);
        inner.fill(k, record(inner), epoch);
        assert!(!inner.cache.contains_key(&k));
        // Any invalidation meanwhile (another token's, a resubscription) counts:
        // a refetch later costs less than a stale entry.
        let epoch = inner.epoch.load(Ordering::SeqCst);
        inner.forget_cache();
        inner.fill(other, record(inner), epoch);
        assert!(!inner.cache.contains_key(&other));
        // A revocation heard on the channel bumps the epoch too.
        let epoch = inner.epoch.load(Ordering::SeqCst);
        inner.apply(&format!("t:{}", hex(&k)));
        assert_ne!(inner.epoch.load(Ordering::SeqCst), epoch);
    }

    #[tokio::test]
    async fn the_cache_is_fresh_only_within_max_staleness_of_an_answered_ping() {
        let s = store(Duration::from_millis(250));
        let inner = &s.inner;
        assert!(!inner.cache_fresh(), "never heard");
        inner.heard.store(inner.now_us(), Ordering::Release);
        assert!(inner.cache_fresh());
        // Heard at the clock's origin, at least 300 ms ago.
        tokio::time::sleep(Duration::from_millis(300)).await;
        inner.heard.store(1, Ordering::Release);
        assert!(!inner.cache_fresh(), "heard 300 ms ago");
        // max_staleness = 0: the cache never answers.
        let s = store(Duration::ZERO);
        s.inner.heard.store(s.inner.now_us(), Ordering::Release);
        assert!(!s.inner.cache_fresh());
        assert_eq!(s.inner.ping_every(), Duration::from_millis(10));
        assert_eq!(
            store(Duration::from_secs(60)).inner.ping_every(),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn channel_messages() {
        let store = RedisStore::new(
            &RedisTopology::Single("redis://127.0.0.1:1/0".into()),
            Arc::new(Grants::default()),
            Duration::from_millis(250),
        )
        .unwrap();
        let h = TokenHash::of("t");
        store.inner.apply(&format!("f:7:{}", now_secs() + 60));
        assert!(store.inner.family_revoked(7));
        store.inner.apply(&format!("t:{}", hex(&h)));
        store.inner.apply("garbage");
    }
}
