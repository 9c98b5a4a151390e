//! What a sign-in at the authorization endpoint needs beyond its cookie. With
//! `store.backend = "redis"` it all lives in Redis, so any instance continues a
//! sign-in another began (no sticky sessions):
//!
//! - **The cookie key** (ChaCha20-Poly1305) that seals `whosthat_authz`. One
//!   instance creates it in Redis (`whosthat:authz:key`, set only if absent)
//!   and every instance reads it at start and every [`KEY_CHECK`] after; it is
//!   never logged. If Redis loses it (a failover before replication), the next
//!   instance to look writes back the key it holds, so the fleet keeps one. A
//!   key that does change still opens cookies as the previous key.
//! - **Ended transactions** (approved, denied, refused), until they expire: a
//!   replayed cookie cannot mint a second code on any instance.
//! - **Proof of the right password.** The cookie key is in Redis, so whoever
//!   can read Redis (or a copy of its data files) could seal a cookie that
//!   claims a signed-in user. So a login also writes a record named by the
//!   SHA-256 of the consent step's CSRF token (256 random bits, only in the
//!   browser's cookie), and the consent step goes on only if that record names
//!   the same transaction, user and scope. Reading Redis gives the hash, never
//!   the token. The records exist only after a right password, so argon2's
//!   rate bounds them, as it does ended transactions.
//!
//! With the memory backend the key is random per process and never leaves it:
//! the cookie alone is trusted, as before.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, UnboundKey};

use crate::store::{RedisConn, StoreError, StoreFuture, TokenHash, hex};

/// Bytes of the AEAD key.
pub const KEY_BYTES: usize = 32;
/// How often an instance on Redis checks that the fleet's cookie key is the
/// one it holds.
pub const KEY_CHECK: Duration = Duration::from_secs(10);
const KEY_NAME: &str = "whosthat:authz:key";
const ENDED_PREFIX: &str = "whosthat:authz:end:";
const LOGIN_PREFIX: &str = "whosthat:authz:login:";

/// The key in Redis, or `ARGV[1]` written there if there is none.
const KEY_OR_MINE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// A cookie key. Its bytes are never printed.
pub struct CookieKey {
    raw: [u8; KEY_BYTES],
    pub aead: LessSafeKey,
}

impl CookieKey {
    pub fn new(raw: &[u8; KEY_BYTES]) -> CookieKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, raw).expect("a 32-byte ChaCha20 key");
        CookieKey {
            raw: *raw,
            aead: LessSafeKey::new(unbound),
        }
    }

    pub fn random() -> CookieKey {
        let mut raw = [0u8; KEY_BYTES];
        getrandom::fill(&mut raw).expect("the OS random source failed");
        CookieKey::new(&raw)
    }
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// The key that seals, and the one before it (still opens).
pub struct KeyRing {
    pub current: CookieKey,
    pub previous: Option<CookieKey>,
}

/// The keys in force; empty until an instance on Redis has read the fleet's.
#[derive(Default)]
pub struct Keys(ArcSwapOption<KeyRing>);

impl Keys {
    pub fn fixed(key: CookieKey) -> Keys {
        Keys(ArcSwapOption::from_pointee(KeyRing {
            current: key,
            previous: None,
        }))
    }

    pub fn ring(&self) -> Option<Arc<KeyRing>> {
        self.0.load_full()
    }

    /// Adopts `raw` as the current key (the old one kept for opening).
    fn adopt(&self, raw: &[u8; KEY_BYTES]) -> bool {
        let old = self.0.load_full();
        if old.as_ref().is_some_and(|r| r.current.raw == *raw) {
            return false;
        }
        let previous = old.map(|r| CookieKey::new(&r.current.raw));
        self.0.store(Some(Arc::new(KeyRing {
            current: CookieKey::new(raw),
            previous,
        })));
        true
    }
}

/// An answer, or why the state cannot be read or written now (the page
/// answers 503).
pub type Fut<'a, T> = StoreFuture<'a, T>;

/// Ended transactions and login proofs.
pub trait Ledger: Send + Sync {
    fn is_ended<'a>(&'a self, id: &'a [u8; 16]) -> Fut<'a, bool>;
    /// Ends the transaction; `false` if it already was (a replay).
    fn end<'a>(&'a self, id: &'a [u8; 16], until: u64) -> Fut<'a, bool>;
    /// Undoes [`Ledger::end`] (no code could be stored: the user may retry).
    fn reopen<'a>(&'a self, id: &'a [u8; 16]) -> Fut<'a, ()>;
    /// Whether a login's cookie must be backed by a record ([`Ledger::put_login`]).
    fn verifies_logins(&self) -> bool;
    fn put_login<'a>(&'a self, proof: &'a TokenHash, record: String, until: u64) -> Fut<'a, ()>;
    fn login<'a>(&'a self, proof: &'a TokenHash) -> Fut<'a, Option<String>>;
    /// Forgets what expired (Redis keys expire by themselves).
    fn sweep(&self, _now: u64) {}
    /// Ended transactions held in this process.
    fn len(&self) -> usize {
        0
    }
}

/// The memory backend's ledger: ended transactions in this process; the
/// cookie alone proves a login (its key never leaves the process).
#[derive(Default)]
pub struct MemoryLedger {
    ended: DashMap<[u8; 16], u64>,
}

fn ready<'a, T: Send + 'a>(v: T) -> Fut<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl Ledger for MemoryLedger {
    fn is_ended<'a>(&'a self, id: &'a [u8; 16]) -> Fut<'a, bool> {
        ready(self.ended.contains_key(id))
    }

    fn end<'a>(&'a self, id: &'a [u8; 16], until: u64) -> Fut<'a, bool> {
        ready(match self.ended.entry(*id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(until);
                true
            }
        })
    }

    fn reopen<'a>(&'a self, id: &'a [u8; 16]) -> Fut<'a, ()> {
        self.ended.remove(id);
        ready(())
    }

    fn verifies_logins(&self) -> bool {
        false
    }

    fn put_login<'a>(&'a self, _: &'a TokenHash, _: String, _: u64) -> Fut<'a, ()> {
        ready(())
    }

    fn login<'a>(&'a self, _: &'a TokenHash) -> Fut<'a, Option<String>> {
        ready(None)
    }

    fn sweep(&self, now: u64) {
        self.ended.retain(|_, until| *until > now);
    }

    fn len(&self) -> usize {
        self.ended.len()
    }
}

/// The Redis backend's ledger and cookie key.
pub struct RedisLedger {
    conn: RedisConn,
    key_or_mine: redis::Script,
}

/// Milliseconds from now until `until` (unix seconds), at least 1.
fn px_until(until: u64) -> u64 {
    until
        .saturating_sub(crate::store::now_secs())
        .saturating_mul(1000)
        .max(1)
}

async fn within<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(Duration::from_secs(2), f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::Unavailable(
            "redis did not answer within 2 s (sign-in state)".into(),
        )),
    }
}

impl RedisLedger {
    pub fn new(conn: RedisConn) -> RedisLedger {
        RedisLedger {
            conn,
            key_or_mine: redis::Script::new(KEY_OR_MINE),
        }
    }

    /// The fleet's key: the one in Redis, or `mine` once written there.
    async fn fleet_key(&self, mine: &[u8; KEY_BYTES]) -> Result<[u8; KEY_BYTES], StoreError> {
        let mut conn = self.conn.clone();
        let stored: String = within(
            self.key_or_mine
                .key(KEY_NAME)
                .arg(STANDARD.encode(mine))
                .invoke_async(&mut conn),
        )
        .await?;
        let bad = || {
            StoreError::Unavailable(format!(
                "{KEY_NAME} in redis is not a base64 32-byte key; sign-ins wait until it is deleted"
            ))
        };
        let raw = STANDARD.decode(stored.trim()).map_err(|_| bad())?;
        raw.try_into().map_err(|_| bad())
    }

    /// Keeps `keys` on the fleet's cookie key, forever: at once, then every
    /// [`KEY_CHECK`] (every 500 ms until Redis first answers).
    pub async fn keep_key(self: Arc<Self>, keys: Arc<Keys>) {
        let mine = CookieKey::random().raw;
        loop {
            let offer = keys.ring().map_or(mine, |r| r.current.raw);
            let wait = match self.fleet_key(&offer).await {
                Ok(raw) => {
                    if keys.adopt(&raw) {
                        tracing::info!("sign-in cookie key loaded from redis");
                    }
                    KEY_CHECK
                }
                Err(e) if keys.ring().is_none() => {
                    tracing::warn!(error = %e, "the sign-in cookie key cannot be read from redis yet; sign-ins get 503");
                    Duration::from_millis(500)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the sign-in cookie key could not be checked in redis");
                    KEY_CHECK
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Ledger for RedisLedger {
    fn is_ended<'a>(&'a self, id: &'a [u8; 16]) -> Fut<'a, bool> {
        Box::pin(async move {
            let n: i64 = within(
                redis::cmd("EXISTS")
                    .arg(format!("{ENDED_PREFIX}{}", hex16(id)))
                    .query_async(&mut self.conn.clone()),
            )
            .await?;
            Ok(n == 1)
        })
    }

    fn end<'a>(&'a self, id: &'a [u8; 16], until: u64) -> Fut<'a, bool> {
        Box::pin(async move {
            let set: Option<String> = within(
                redis::cmd("SET")
                    .arg(format!("{ENDED_PREFIX}{}", hex16(id)))
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(px_until(until))
                    .query_async(&mut self.conn.clone()),
            )
            .await?;
            Ok(set.is_some())
        })
    }

    fn reopen<'a>(&'a self, id: &'a [u8; 16]) -> Fut<'a, ()> {
        Box::pin(async move {
            let _: i64 = within(
                redis::cmd("DEL")
                    .arg(format!("{ENDED_PREFIX}{}", hex16(id)))
                    .query_async(&mut self.conn.clone()),
            )
            .await?;
            Ok(())
        })
    }

    fn verifies_logins(&self) -> bool {
        true
    }

    fn put_login<'a>(&'a self, proof: &'a TokenHash, record: String, until: u64) -> Fut<'a, ()> {
        Box::pin(async move {
            within(
                redis::cmd("SET")
                    .arg(format!("{LOGIN_PREFIX}{}", hex(proof)))
                    .arg(record)
                    .arg("PX")
                    .arg(px_until(until))
                    .query_async::<()>(&mut self.conn.clone()),
            )
            .await
        })
    }

    fn login<'a>(&'a self, proof: &'a TokenHash) -> Fut<'a, Option<String>> {
        Box::pin(async move {
            within(
                redis::cmd("GET")
                    .arg(format!("{LOGIN_PREFIX}{}", hex(proof)))
                    .query_async(&mut self.conn.clone()),
            )
            .await
        })
    }
}

fn hex16(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_keeps_the_old_one_for_opening() {
        let keys = Keys::fixed(CookieKey::new(&[1; KEY_BYTES]));
        assert!(
            !keys.adopt(&[1; KEY_BYTES]),
            "the same key: nothing changes"
        );
        assert!(keys.adopt(&[2; KEY_BYTES]));
        let ring = keys.ring().unwrap();
        assert_eq!(ring.current.raw, [2; KEY_BYTES]);
        assert_eq!(ring.previous.as_ref().unwrap().raw, [1; KEY_BYTES]);
        assert_eq!(format!("{:?}", ring.current), "CookieKey(..)");
        assert!(Keys::default().ring().is_none());
    }

    #[tokio::test]
    async fn the_memory_ledger_ends_once_and_forgets_after_expiry() {
        let l = MemoryLedger::default();
        let id = [7; 16];
        assert!(!l.is_ended(&id).await.unwrap());
        assert!(l.end(&id, 100).await.unwrap());
        assert!(!l.end(&id, 100).await.unwrap());
        assert!(l.is_ended(&id).await.unwrap());
        l.reopen(&id).await.unwrap();
        assert!(l.end(&id, 100).await.unwrap());
        l.sweep(99);
        assert_eq!(l.len(), 1);
        l.sweep(100);
        assert_eq!(l.len(), 0);
        assert!(!l.verifies_logins());
    }
}
