//! The in-memory token store: two DashMaps keyed by token hash.

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;

use super::{StoreFuture, TokenHash, TokenRecord, TokenStore};

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

type Map = DashMap<TokenHash, TokenRecord, BuildHasherDefault<PassThroughHasher>>;

/// Many shards keep each sweep's lock short.
const SHARDS: usize = 64;

pub struct MemoryStore {
    access: Map,
    refresh: Map,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            access: Map::with_hasher_and_shard_amount(Default::default(), SHARDS),
            refresh: Map::with_hasher_and_shard_amount(Default::default(), SHARDS),
        }
    }

    fn get_live(map: &Map, key: &TokenHash, now: u64) -> Option<TokenRecord> {
        let rec = map.get(key)?;
        if rec.is_live(now) {
            return Some(rec.clone());
        }
        drop(rec);
        map.remove_if(key, |_, r| !r.is_live(now));
        None
    }
}

impl TokenStore for MemoryStore {
    fn put_access(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()> {
        self.access.insert(key, rec);
        Box::pin(std::future::ready(Ok(())))
    }

    fn get_access(&self, key: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        let r = Self::get_live(&self.access, &key, super::now_secs());
        Box::pin(std::future::ready(Ok(r)))
    }

    fn put_refresh(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()> {
        self.refresh.insert(key, rec);
        Box::pin(std::future::ready(Ok(())))
    }

    fn get_refresh(&self, key: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        let r = Self::get_live(&self.refresh, &key, super::now_secs());
        Box::pin(std::future::ready(Ok(r)))
    }

    fn take_refresh(&self, key: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        let now = super::now_secs();
        let r = self
            .refresh
            .remove(&key)
            .map(|(_, r)| r)
            .filter(|r| r.is_live(now));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn sweep_expired(&self, now: u64) -> StoreFuture<'_, usize> {
        let before = self.access.len() + self.refresh.len();
        // retain() write-locks one shard at a time, so lookups elsewhere go on.
        self.access.retain(|_, r| r.is_live(now));
        self.refresh.retain(|_, r| r.is_live(now));
        let after = self.access.len() + self.refresh.len();
        Box::pin(std::future::ready(Ok(before.saturating_sub(after))))
    }

    fn token_counts(&self) -> (usize, usize) {
        (self.access.len(), self.refresh.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scope::ScopeSet;
    use crate::store::{Grant, new_token, now_secs};

    fn rec(expires_at: u64) -> TokenRecord {
        TokenRecord {
            grant: Arc::new(Grant {
                user: Some(Arc::from("u")),
                client: Arc::from("c"),
                scope: ScopeSet::parse("read").unwrap(),
                family: 1,
            }),
            issued_at: now_secs(),
            expires_at,
        }
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
        assert!(
            s.get_access(TokenHash::of("other"))
                .await
                .unwrap()
                .is_none()
        );
        s.put_access(TokenHash::of(&dead), rec(now_secs() - 1))
            .await
            .unwrap();
        assert_eq!(s.sweep_expired(now_secs()).await.unwrap(), 1);
        assert_eq!(s.token_counts(), (1, 0));
        assert!(s.get_access(TokenHash::of(&dead)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refresh_tokens_are_taken_once() {
        let s = MemoryStore::new();
        let t = TokenHash::of(&new_token());
        s.put_refresh(t, rec(now_secs() + 60)).await.unwrap();
        assert!(s.get_refresh(t).await.unwrap().is_some());
        assert!(s.take_refresh(t).await.unwrap().is_some());
        assert!(s.take_refresh(t).await.unwrap().is_none());
    }
}
