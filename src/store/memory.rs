//! The in-memory token store: DashMaps keyed by token hash.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::{CodeRecord, Grants, Redeem, StoreFuture, TokenHash, TokenRecord, TokenStore};
use crate::scope::ScopeSet;

/// Takes the `u64` that [`TokenHash`] writes as the hash: its bytes are uniformly
/// random already, so hashing them again would only cost time.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for TokenHash; fold anything else in rather than ignore it.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map<V> = DashMap<TokenHash, V, BuildHasherDefault<PassThroughHasher>>;

/// Many shards keep each sweep's lock short.
const SHARDS: usize = 64;

fn new_map<V>() -> Map<V> {
    Map::with_hasher_and_shard_amount(Default::default(), SHARDS)
}

/// A single-use credential and whether it has been used.
struct OnceEntry<T> {
    rec: T,
    used: bool,
}

pub struct MemoryStore {
    access: Map<TokenRecord>,
    refresh: Map<OnceEntry<TokenRecord>>,
    codes: Map<OnceEntry<CodeRecord>>,
    /// Revoked grant families, until when.
    revoked: DashMap<u64, u64>,
    /// `revoked.len()`, readable without touching every shard: the hot path
    /// skips the family check while nothing is revoked.
    revoked_count: AtomicUsize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

fn ready<T: Send + 'static>(v: T) -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            access: new_map(),
            refresh: new_map(),
            codes: new_map(),
            revoked: DashMap::new(),
            revoked_count: AtomicUsize::new(0),
        }
    }

    fn family_revoked(&self, family: u64) -> bool {
        self.revoked_count.load(Ordering::Acquire) != 0 && self.revoked.contains_key(&family)
    }

    fn live(&self, rec: &TokenRecord, now: u64) -> bool {
        rec.is_live(now) && !self.family_revoked(rec.family)
    }

    fn redeem<T: Clone>(
        &self,
        map: &Map<OnceEntry<T>>,
        key: &TokenHash,
        take: bool,
        alive: impl Fn(&T) -> bool,
        family: impl Fn(&T) -> u64,
    ) -> Redeem<T> {
        let Some(mut e) = map.get_mut(key) else {
            return Redeem::Unknown;
        };
        if !alive(&e.rec) {
            return Redeem::Unknown;
        }
        if e.used {
            return Redeem::Spent {
                family: family(&e.rec),
            };
        }
        if take {
            e.used = true;
        }
        Redeem::Fresh(e.rec.clone())
    }
}

impl TokenStore for MemoryStore {
    fn put_access(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()> {
        self.access.insert(key, rec);
        ready(())
    }

    fn get_access(&self, key: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        let now = super::now_secs();
        let found = self.access.get(&key).map(|r| r.clone());
        let r = found.filter(|r| self.live(r, now));
        ready(r)
    }

    fn remove_access(&self, key: TokenHash) -> StoreFuture<'_, ()> {
        self.access.remove(&key);
        ready(())
    }

    fn put_refresh(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()> {
        self.refresh.insert(key, OnceEntry { rec, used: false });
        ready(())
    }

    fn get_refresh(&self, key: TokenHash) -> StoreFuture<'_, Redeem<TokenRecord>> {
        let now = super::now_secs();
        ready(self.redeem(
            &self.refresh,
            &key,
            false,
            |r| self.live(r, now),
            |r| r.family,
        ))
    }

    fn take_refresh(&self, key: TokenHash) -> StoreFuture<'_, Redeem<TokenRecord>> {
        let now = super::now_secs();
        ready(self.redeem(
            &self.refresh,
            &key,
            true,
            |r| self.live(r, now),
            |r| r.family,
        ))
    }

    fn put_code(&self, key: TokenHash, rec: CodeRecord) -> StoreFuture<'_, ()> {
        self.codes.insert(key, OnceEntry { rec, used: false });
        ready(())
    }

    fn take_code(&self, key: TokenHash) -> StoreFuture<'_, Redeem<CodeRecord>> {
        let now = super::now_secs();
        ready(self.redeem(
            &self.codes,
            &key,
            true,
            |c| now < c.expires_at && !self.family_revoked(c.family),
            |c| c.family,
        ))
    }

    fn revoke_family(&self, family: u64, until: u64) -> StoreFuture<'_, ()> {
        if self.revoked.insert(family, until).is_none() {
            self.revoked_count.fetch_add(1, Ordering::AcqRel);
        }
        ready(())
    }

    fn sweep_expired(&self, now: u64) -> StoreFuture<'_, usize> {
        let before = self.access.len() + self.refresh.len() + self.codes.len();
        // retain() write-locks one shard at a time, so lookups elsewhere go on.
        self.access.retain(|_, r| self.live(r, now));
        self.refresh.retain(|_, e| self.live(&e.rec, now));
        self.codes.retain(|_, e| now < e.rec.expires_at);
        let after = self.access.len() + self.refresh.len() + self.codes.len();
        // Families are forgotten only once none of their tokens can be alive.
        self.revoked.retain(|_, until| {
            let keep = now < *until;
            if !keep {
                self.revoked_count.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
        ready(before.saturating_sub(after))
    }

    fn token_counts(&self) -> (usize, usize) {
        (self.access.len(), self.refresh.len())
    }
}

/// One saved token: its hash, never the token.
#[derive(Serialize, Deserialize)]
struct SavedToken {
    k: String,
    u: Option<String>,
    c: String,
    s: String,
    f: u64,
    i: u64,
    e: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    used: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    access: Vec<SavedToken>,
    refresh: Vec<SavedToken>,
    /// Revoked families and until when.
    revoked: Vec<(u64, u64)>,
}

fn saved(key: &TokenHash, rec: &TokenRecord, used: bool) -> SavedToken {
    let g = &rec.grant;
    SavedToken {
        k: super::hex(key),
        u: g.user.as_deref().map(str::to_string),
        c: g.client.to_string(),
        s: g.scope.to_string(),
        f: rec.family,
        i: rec.issued_at,
        e: rec.expires_at,
        used,
    }
}

fn restored(t: SavedToken, grants: &Grants) -> Option<(TokenHash, TokenRecord)> {
    let key = super::unhex(&t.k)?;
    let grant = grants.intern(t.u.map(Arc::from), Arc::from(t.c), ScopeSet::parse(&t.s)?);
    Some((
        key,
        TokenRecord {
            grant,
            family: t.f,
            issued_at: t.i,
            expires_at: t.e,
        },
    ))
}

impl MemoryStore {
    /// Writes the live tokens (as hashes) and revoked families to `path`, readable
    /// by the owner only, atomically. Called after a graceful shutdown drained.
    pub fn save(&self, path: &Path) -> io::Result<usize> {
        let now = super::now_secs();
        let mut out = Saved::default();
        for e in self.access.iter() {
            if self.live(e.value(), now) {
                out.access.push(saved(e.key(), e.value(), false));
            }
        }
        for e in self.refresh.iter() {
            if self.live(&e.value().rec, now) {
                out.refresh
                    .push(saved(e.key(), &e.value().rec, e.value().used));
            }
        }
        out.revoked = self
            .revoked
            .iter()
            .filter(|e| now < *e.value())
            .map(|e| (*e.key(), *e.value()))
            .collect();
        let count = out.access.len() + out.refresh.len();
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            serde_json::to_writer(&mut f, &out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(count)
    }

    /// Loads what [`save`](Self::save) wrote, then deletes the file at once:
    /// after a crash there is nothing to load, so a token revoked after this
    /// start can never come back. Expired entries are skipped. A missing file is
    /// no error (`Ok(0)`).
    pub fn load(&self, path: &Path, grants: &Grants) -> io::Result<usize> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        std::fs::remove_file(path)?;
        let saved: Saved = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        let now = super::now_secs();
        for (family, until) in saved.revoked {
            if now < until && self.revoked.insert(family, until).is_none() {
                self.revoked_count.fetch_add(1, Ordering::AcqRel);
            }
        }
        let mut count = 0;
        for t in saved.access {
            if let Some((k, rec)) = restored(t, grants).filter(|(_, r)| self.live(r, now)) {
                self.access.insert(k, rec);
                count += 1;
            }
        }
        for t in saved.refresh {
            let used = t.used;
            if let Some((k, rec)) = restored(t, grants).filter(|(_, r)| self.live(r, now)) {
                self.refresh.insert(k, OnceEntry { rec, used });
                count += 1;
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scope::ScopeSet;
    use crate::store::{Grant, new_token, now_secs};

    fn rec_in(family: u64, expires_at: u64) -> TokenRecord {
        TokenRecord {
            grant: Arc::new(Grant::new(
                Some(Arc::from("u")),
                Arc::from("c"),
                ScopeSet::parse("read").unwrap(),
            )),
            family,
            issued_at: now_secs(),
            expires_at,
        }
    }

    fn rec(expires_at: u64) -> TokenRecord {
        rec_in(1, expires_at)
    }

    #[tokio::test]
    async fn live_tokens_found_expired_refused_and_swept() {
        let s = MemoryStore::new();
        let (live, dead) = (new_token(), new_token());
        assert_eq!(live.len(), 43);
        s.put_access(TokenHash::of(&live), rec(now_secs() + 60))
            .await
            .unwrap();
        s.put_access(TokenHash::of(&dead), rec(now_secs() - 1))
            .await
            .unwrap();
        assert!(s.get_access(TokenHash::of(&live)).await.unwrap().is_some());
        assert!(s.get_access(TokenHash::of(&dead)).await.unwrap().is_none());
        assert!(
            s.get_access(TokenHash::of("other"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(s.sweep_expired(now_secs()).await.unwrap(), 1);
        assert_eq!(s.token_counts(), (1, 0));
    }

    #[tokio::test]
    async fn refresh_tokens_are_taken_once_and_replays_named() {
        let s = MemoryStore::new();
        let t = TokenHash::of(&new_token());
        s.put_refresh(t, rec_in(7, now_secs() + 60)).await.unwrap();
        assert!(matches!(s.get_refresh(t).await.unwrap(), Redeem::Fresh(_)));
        assert!(matches!(s.take_refresh(t).await.unwrap(), Redeem::Fresh(_)));
        assert!(matches!(
            s.take_refresh(t).await.unwrap(),
            Redeem::Spent { family: 7 }
        ));
        assert!(matches!(
            s.get_refresh(t).await.unwrap(),
            Redeem::Spent { family: 7 }
        ));
        assert!(matches!(
            s.take_refresh(TokenHash::of("x")).await.unwrap(),
            Redeem::Unknown
        ));
    }

    #[tokio::test]
    async fn save_then_load_keeps_live_tokens_and_revocations_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let s = MemoryStore::new();
        let (a, r, dead) = (
            TokenHash::of("a"),
            TokenHash::of("r"),
            TokenHash::of("dead"),
        );
        s.put_access(a, rec_in(1, now_secs() + 60)).await.unwrap();
        s.put_access(dead, rec_in(2, now_secs() - 1)).await.unwrap();
        s.put_refresh(r, rec_in(1, now_secs() + 60)).await.unwrap();
        s.take_refresh(r).await.unwrap();
        s.revoke_family(9, now_secs() + 60).await.unwrap();
        assert_eq!(s.save(&path).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"a\""), "hashes only");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let grants = Grants::default();
        let t = MemoryStore::new();
        assert_eq!(t.load(&path, &grants).unwrap(), 2);
        assert!(!path.exists(), "the file is gone once loaded");
        assert!(t.get_access(a).await.unwrap().is_some());
        assert!(t.get_access(dead).await.unwrap().is_none());
        assert!(matches!(
            t.take_refresh(r).await.unwrap(),
            Redeem::Spent { family: 1 }
        ));
        assert!(t.family_revoked(9));
        // A second start (as after a crash) finds nothing.
        assert_eq!(MemoryStore::new().load(&path, &grants).unwrap(), 0);
    }

    #[tokio::test]
    async fn revoking_a_family_kills_its_tokens_only() {
        let s = MemoryStore::new();
        let (a, b, r) = (TokenHash::of("a"), TokenHash::of("b"), TokenHash::of("r"));
        s.put_access(a, rec_in(1, now_secs() + 60)).await.unwrap();
        s.put_access(b, rec_in(2, now_secs() + 60)).await.unwrap();
        s.put_refresh(r, rec_in(1, now_secs() + 60)).await.unwrap();
        s.revoke_family(1, now_secs() + 60).await.unwrap();
        assert!(s.get_access(a).await.unwrap().is_none());
        assert!(s.get_access(b).await.unwrap().is_some());
        assert!(matches!(s.take_refresh(r).await.unwrap(), Redeem::Unknown));
        s.sweep_expired(now_secs()).await.unwrap();
        assert_eq!(s.token_counts(), (1, 0));
        // The marker outlives the sweep until its time is up.
        assert!(s.family_revoked(1));
        s.sweep_expired(now_secs() + 61).await.unwrap();
        assert!(!s.family_revoked(1));
    }
}
