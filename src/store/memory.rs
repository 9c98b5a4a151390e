//! The in-memory token store: DashMaps keyed by token hash.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::io;
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::record::StoredToken;
use super::{
    CodeRecord, DeviceDecision, DevicePoll, DeviceRecord, Grants, Redeem, StoreFuture, TokenHash,
    TokenPolicy, TokenRecord, TokenStore,
};
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

mod device;

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
    /// `jti`s of DPoP proofs and client assertions (replay detection).
    one_time: device::OneTime,
    /// Device authorizations (RFC 8628).
    devices: device::Devices,
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
            one_time: device::OneTime::new(),
            devices: device::Devices::new(),
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

    fn remove_access(&self, key: TokenHash, _expires_at: u64) -> StoreFuture<'_, ()> {
        self.access.remove(&key);
        ready(())
    }

    /// Nothing to confirm: a removal here is done when it returns.
    fn confirm_revoked(&self, _key: TokenHash) -> StoreFuture<'_, ()> {
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
        let others = self.one_time.sweep(now) + self.devices.sweep(now);
        // Families are forgotten only once none of their tokens can be alive.
        self.revoked.retain(|_, until| {
            let keep = now < *until;
            if !keep {
                self.revoked_count.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
        ready(before.saturating_sub(after) + others)
    }

    fn first_use(&self, key: TokenHash, until: u64) -> StoreFuture<'_, bool> {
        let r = self.one_time.first_use(key, until, super::now_secs());
        Box::pin(std::future::ready(r))
    }

    fn put_device(
        &self,
        device: TokenHash,
        user_code: TokenHash,
        rec: DeviceRecord,
    ) -> StoreFuture<'_, bool> {
        let r = self.devices.put(device, user_code, rec, super::now_secs());
        Box::pin(std::future::ready(r))
    }

    fn device_by_user_code(&self, user_code: TokenHash) -> StoreFuture<'_, Option<DeviceRecord>> {
        ready(self.devices.by_user_code(&user_code, super::now_secs()))
    }

    fn decide_device(
        &self,
        user_code: TokenHash,
        decision: DeviceDecision,
    ) -> StoreFuture<'_, bool> {
        ready(self.devices.decide(&user_code, decision, super::now_secs()))
    }

    fn poll_device(
        &self,
        device: TokenHash,
        client: &str,
        now_ms: u64,
    ) -> StoreFuture<'_, DevicePoll> {
        ready(self.devices.poll(&device, client, now_ms))
    }

    fn token_counts(&self) -> (usize, usize) {
        (self.access.len(), self.refresh.len())
    }
}

/// One saved token: its hash, never the token, and its record as Redis
/// keeps it ([`StoredToken`]; earlier versions' one-letter names are read too).
#[derive(Serialize, Deserialize)]
struct SavedToken {
    /// The token's SHA-256, in hex.
    #[serde(alias = "k")]
    key: String,
    #[serde(alias = "f")]
    family: u64,
    #[serde(flatten)]
    token: StoredToken,
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
    SavedToken {
        key: super::hex(key),
        family: rec.family,
        token: StoredToken::of(rec),
        used,
    }
}

/// Which of a token's lifetimes bounds a saved record.
#[derive(Clone, Copy)]
enum Kind {
    Access,
    Refresh,
}

/// What became of one saved record on loading.
enum Restored {
    /// As saved.
    Kept(TokenHash, TokenRecord),
    /// Narrowed to the config in force (scope, issue time or expiry).
    Clamped(TokenHash, TokenRecord),
    /// Malformed, of a user or client no longer configured, or no longer live.
    Dropped,
}

/// A saved record, held to the config in force now: the user (if any) and the
/// client must still exist, the scope is cut to what both may have now, the
/// issue time may not be in the future and the expiry not beyond issue time +
/// the configured lifetime. The file is only as trustworthy as the config that
/// would issue the same token today.
fn restored(
    t: SavedToken,
    kind: Kind,
    config: &impl TokenPolicy,
    grants: &Grants,
    now: u64,
) -> Restored {
    let Some(key) = super::unhex(&t.key) else {
        return Restored::Dropped;
    };
    let StoredToken {
        grant: g,
        issued_at: saved_issued_at,
        expires_at: saved_expires_at,
        cnf,
    } = t.token;
    let Some((client, allowed)) = config.allowed(g.user.as_deref(), g.client.as_str()) else {
        return Restored::Dropped;
    };
    let Some(saved_scope) = ScopeSet::parse(&g.scope) else {
        return Restored::Dropped;
    };
    let scope = saved_scope.intersection(&allowed);
    let ttl = match kind {
        Kind::Access => config.access_token_ttl(),
        Kind::Refresh => config.refresh_token_ttl(),
    };
    let issued_at = saved_issued_at.min(now);
    let expires_at = saved_expires_at.min(issued_at.saturating_add(crate::clock::ttl_secs(ttl)));
    let clamped =
        scope != saved_scope || issued_at != saved_issued_at || expires_at != saved_expires_at;
    let grant = grants.intern(g.user.map(Arc::from), client, scope);
    let rec = TokenRecord {
        grant,
        family: t.family,
        issued_at,
        expires_at,
        cnf: cnf.map(Arc::from),
    };
    if clamped {
        Restored::Clamped(key, rec)
    } else {
        Restored::Kept(key, rec)
    }
}

/// Why a state file is refused, if it is: see [`refusal_of`].
fn refusal(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ft = meta.file_type();
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    refusal_of(ft.is_symlink(), ft.is_file(), meta.uid(), meta.mode(), me)
}

/// A state file is trusted only if it is a regular file (not a symlink: it
/// could point anywhere) owned by the gateway's user `me`, with no permission
/// for group or others: anyone else who could write it could mint tokens.
fn refusal_of(symlink: bool, regular: bool, uid: u32, mode: u32, me: u32) -> Option<String> {
    if symlink {
        return Some("it is a symbolic link".into());
    }
    if !regular {
        return Some("it is not a regular file".into());
    }
    if uid != me {
        return Some(format!(
            "it is owned by uid {uid}, not by the gateway's user (uid {me})"
        ));
    }
    if mode & 0o077 != 0 {
        return Some(format!(
            "its mode {:04o} lets group or others read or write it (must be 0600)",
            mode & 0o7777
        ));
    }
    None
}

/// A state file that could not be used: logged, then deleted (only the name:
/// a symlink goes, never what it points to).
fn refuse(path: &Path, why: &str) -> io::Error {
    let deleted = crate::fsutil::remove_durably(path);
    tracing::error!(
        file = %path.display(),
        reason = why,
        deleted = deleted.is_ok(),
        "state file refused: no token in it is restored"
    );
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("state file refused: {why}"),
    )
}

impl MemoryStore {
    /// Writes the live tokens (as hashes) and revoked families to `path`, readable
    /// by the owner only, atomically (see [`crate::fsutil::write_atomic`]).
    /// Called after a graceful shutdown drained.
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
        let bytes = serde_json::to_vec(&out).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(path, &bytes, 0o600, None)?;
        Ok(count)
    }

    /// Loads what [`save`](Self::save) wrote, then deletes the file at once:
    /// after a crash there is nothing to load, so a token revoked after this
    /// start can never come back. A missing file is no error (`Ok(0)`).
    ///
    /// The file is trusted only if it is a regular file (not a symlink) owned by
    /// the gateway's user and neither readable nor writable by group or others:
    /// anyone else able to write it could mint tokens. Any other file, or one
    /// that does not parse, is refused, logged and deleted. Each record is held
    /// to `config` (see [`restored`]); expired and revoked ones are skipped.
    /// Returns how many tokens were restored.
    pub fn load(
        &self,
        path: &Path,
        grants: &Grants,
        config: &impl TokenPolicy,
    ) -> io::Result<usize> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if let Some(why) = refusal(&meta) {
            return Err(refuse(path, &why));
        }
        // Opened without following a symlink, then checked again through the
        // descriptor: a file swapped in after the check above is not the one read.
        let mut file = match crate::fsutil::open_nofollow(path) {
            Ok(f) => f,
            Err(e) => return Err(refuse(path, &format!("it cannot be opened: {e}"))),
        };
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(refuse(path, "it was replaced while being opened"));
        }
        if let Some(why) = refusal(&opened) {
            return Err(refuse(path, &why));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        drop(file);
        crate::fsutil::remove_durably(path)?;
        let saved: Saved = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return Err(refuse_parsed(path, &e)),
        };
        let now = super::now_secs();
        for (family, until) in saved.revoked {
            if now < until && self.revoked.insert(family, until).is_none() {
                self.revoked_count.fetch_add(1, Ordering::AcqRel);
            }
        }
        let (mut kept, mut clamped, mut dropped) = (0usize, 0usize, 0usize);
        let mut restore = |t: SavedToken, kind: Kind| -> Option<(TokenHash, TokenRecord)> {
            let (k, rec, was_clamped) = match restored(t, kind, config, grants, now) {
                Restored::Kept(k, r) => (k, r, false),
                Restored::Clamped(k, r) => (k, r, true),
                Restored::Dropped => {
                    dropped += 1;
                    return None;
                }
            };
            if !self.live(&rec, now) {
                dropped += 1;
                return None;
            }
            if was_clamped {
                clamped += 1;
            } else {
                kept += 1;
            }
            Some((k, rec))
        };
        let mut access = Vec::with_capacity(saved.access.len());
        for t in saved.access {
            access.extend(restore(t, Kind::Access));
        }
        let mut refresh = Vec::with_capacity(saved.refresh.len());
        for t in saved.refresh {
            let used = t.used;
            refresh.extend(restore(t, Kind::Refresh).map(|(k, rec)| (k, OnceEntry { rec, used })));
        }
        for (k, rec) in access {
            self.access.insert(k, rec);
        }
        for (k, e) in refresh {
            self.refresh.insert(k, e);
        }
        if clamped + dropped > 0 {
            tracing::warn!(
                file = %path.display(),
                kept,
                clamped,
                dropped,
                "state file: records held to the config in force (users, clients, scopes, lifetimes)"
            );
        }
        Ok(kept + clamped)
    }
}

/// A state file that passed the checks but is not what [`MemoryStore::save`]
/// writes (already deleted).
fn refuse_parsed(path: &Path, e: &serde_json::Error) -> io::Error {
    tracing::error!(
        file = %path.display(),
        reason = %e,
        deleted = true,
        "state file refused: it does not parse; no token in it is restored"
    );
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("state file refused: it does not parse: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
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
            cnf: None,
        }
    }

    fn rec(expires_at: u64) -> TokenRecord {
        rec_in(1, expires_at)
    }

    /// User `u` (read, write) and client `c` (read, admin); tokens live 1h, refresh 1d.
    fn config() -> Config {
        let hash = crate::password::hash_password(b"pw");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[oauth]\naccess_token_ttl = \"1h\"\nrefresh_token_ttl = \"1d\"\n\
             [[users]]\nname = \"u\"\npassword_hash = \"{hash}\"\nscopes = [\"read\", \"write\"]\n\
             [[clients]]\nid = \"c\"\ngrants = [\"password\", \"refresh_token\"]\nscopes = [\"read\", \"admin\"]\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
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
        assert_eq!(t.load(&path, &grants, &config()).unwrap(), 2);
        assert!(!path.exists(), "the file is gone once loaded");
        assert!(t.get_access(a).await.unwrap().is_some());
        assert!(t.get_access(dead).await.unwrap().is_none());
        assert!(matches!(
            t.take_refresh(r).await.unwrap(),
            Redeem::Spent { family: 1 }
        ));
        assert!(t.family_revoked(9));
        // A second start (as after a crash) finds nothing.
        assert_eq!(
            MemoryStore::new().load(&path, &grants, &config()).unwrap(),
            0
        );
    }

    fn saved_token(
        key: &str,
        user: Option<&str>,
        client: &str,
        scope: &str,
        i: u64,
        e: u64,
    ) -> SavedToken {
        SavedToken {
            key: crate::store::hex(&TokenHash::of(key)),
            family: 1,
            token: StoredToken {
                grant: crate::store::record::StoredGrant {
                    user: user.map(str::to_string),
                    client: client.to_string(),
                    scope: scope.to_string(),
                },
                issued_at: i,
                expires_at: e,
                cnf: None,
            },
            used: false,
        }
    }

    #[test]
    fn records_are_held_to_the_config_in_force() {
        let (config, grants, now) = (config(), Grants::default(), now_secs());
        let r = |t| restored(t, Kind::Access, &config, &grants, now);
        // As issued today: kept.
        assert!(matches!(
            r(saved_token("a", Some("u"), "c", "read", now, now + 60)),
            Restored::Kept(..)
        ));
        // A user or client no longer configured: dropped.
        assert!(matches!(
            r(saved_token("a", Some("gone"), "c", "read", now, now + 60)),
            Restored::Dropped
        ));
        assert!(matches!(
            r(saved_token("a", Some("u"), "gone", "read", now, now + 60)),
            Restored::Dropped
        ));
        // More scope than the user and the client may both have now: cut down.
        let Restored::Clamped(_, rec) = r(saved_token(
            "a",
            Some("u"),
            "c",
            "read write admin",
            now,
            now + 60,
        )) else {
            panic!("not clamped")
        };
        assert_eq!(rec.grant.scope.to_string(), "read");
        // A client_credentials record: the client's scopes bound it.
        let Restored::Clamped(_, rec) =
            r(saved_token("a", None, "c", "admin write", now, now + 60))
        else {
            panic!("not clamped")
        };
        assert_eq!(rec.grant.scope.to_string(), "admin");
        // Expiry beyond issue + TTL (1h for access tokens, 1d for refresh tokens).
        let Restored::Clamped(_, rec) = r(saved_token(
            "a",
            Some("u"),
            "c",
            "read",
            now,
            now + 365 * 86400,
        )) else {
            panic!("not clamped")
        };
        assert_eq!(rec.expires_at, now + 3600);
        let Restored::Clamped(_, rec) = restored(
            saved_token("a", Some("u"), "c", "read", now, now + 365 * 86400),
            Kind::Refresh,
            &config,
            &grants,
            now,
        ) else {
            panic!("not clamped")
        };
        assert_eq!(rec.expires_at, now + 86400);
        // An issue time in the future is brought back to now, and the expiry with it.
        let Restored::Clamped(_, rec) = r(saved_token(
            "a",
            Some("u"),
            "c",
            "read",
            now + 86400,
            now + 86400 + 60,
        )) else {
            panic!("not clamped")
        };
        assert_eq!((rec.issued_at, rec.expires_at), (now, now + 3600));
        // Malformed key or scope: dropped.
        let mut bad = saved_token("a", Some("u"), "c", "read", now, now + 60);
        bad.key = "zz".into();
        assert!(matches!(r(bad), Restored::Dropped));
        assert!(matches!(
            r(saved_token("a", Some("u"), "c", "re\"ad", now, now + 60)),
            Restored::Dropped
        ));
    }

    #[test]
    fn refusal_reasons() {
        assert!(
            refusal_of(true, false, 5, 0o600, 5)
                .unwrap()
                .contains("symbolic link")
        );
        assert!(
            refusal_of(false, false, 5, 0o600, 5)
                .unwrap()
                .contains("regular file")
        );
        assert!(
            refusal_of(false, true, 6, 0o600, 5)
                .unwrap()
                .contains("owned by uid 6")
        );
        assert!(
            refusal_of(false, true, 5, 0o644, 5)
                .unwrap()
                .contains("0644")
        );
        assert!(refusal_of(false, true, 5, 0o610, 5).is_some());
        assert!(refusal_of(false, true, 5, 0o601, 5).is_some());
        assert_eq!(refusal_of(false, true, 5, 0o600, 5), None);
        assert_eq!(refusal_of(false, true, 5, 0o400, 5), None);
    }

    #[test]
    fn only_an_owner_only_regular_file_is_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (config, grants) = (config(), Grants::default());
        let path = dir.path().join("state.json");
        let body = format!(
            "{{\"access\":[{}],\"refresh\":[],\"revoked\":[]}}",
            serde_json::to_string(&saved_token(
                "a",
                Some("u"),
                "c",
                "read",
                now_secs(),
                now_secs() + 60
            ))
            .unwrap()
        );
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::write(&path, &body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let s = MemoryStore::new();
            let e = s.load(&path, &grants, &config).unwrap_err();
            assert!(e.to_string().contains("mode"), "{mode:o}: {e}");
            assert!(!path.exists(), "{mode:o}: a refused file is deleted");
            assert_eq!(s.token_counts(), (0, 0));
        }
        // A symlink to a good file: refused, the link deleted, the file left alone.
        let real = dir.path().join("real.json");
        std::fs::write(&real, &body).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let e = MemoryStore::new()
            .load(&path, &grants, &config)
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(std::fs::symlink_metadata(&path).is_err());
        assert!(real.exists());
        // A directory: refused.
        std::fs::create_dir(&path).unwrap();
        let e = MemoryStore::new()
            .load(&path, &grants, &config)
            .unwrap_err();
        assert!(e.to_string().contains("regular file"), "{e}");
        std::fs::remove_dir(&path).unwrap();
        // Garbage with the right mode: refused and deleted.
        std::fs::write(&path, b"not json").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MemoryStore::new().load(&path, &grants, &config).is_err());
        assert!(!path.exists());
        // The good file, 0600: loaded.
        std::fs::rename(&real, &path).unwrap();
        let s = MemoryStore::new();
        assert_eq!(s.load(&path, &grants, &config).unwrap(), 1);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_state_file_of_an_earlier_version_is_loaded_once_and_saved_with_readable_names() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (now, a, r) = (now_secs(), TokenHash::of("a"), TokenHash::of("r"));
        // What earlier versions wrote: one-letter names.
        let old = format!(
            r#"{{"access":[{{"k":"{}","u":"u","c":"c","s":"read","f":4,"i":{now},"e":{}}}],"refresh":[{{"k":"{}","u":"u","c":"c","s":"read","f":4,"i":{now},"e":{},"used":true}}],"revoked":[[9,{}]]}}"#,
            crate::store::hex(&a),
            now + 60,
            crate::store::hex(&r),
            now + 60,
            now + 60
        );
        std::fs::write(&path, old).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = MemoryStore::new();
        assert_eq!(s.load(&path, &Grants::default(), &config()).unwrap(), 2);
        assert!(!path.exists(), "loaded once: the file is gone");
        let rec = s.get_access(a).await.unwrap().expect("restored");
        assert_eq!(
            (rec.family, rec.issued_at, rec.expires_at),
            (4, now, now + 60)
        );
        assert_eq!(rec.grant.user.as_deref(), Some("u"));
        assert!(matches!(
            s.take_refresh(r).await.unwrap(),
            Redeem::Spent { family: 4 }
        ));
        assert!(s.family_revoked(9));
        // Saved again: the readable names.
        assert_eq!(s.save(&path).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        for name in [
            "key",
            "family",
            "user",
            "client",
            "scope",
            "issued_at",
            "expires_at",
        ] {
            assert!(text.contains(&format!("\"{name}\":")), "{name} in {text}");
        }
        assert!(
            !text.contains("\"k\":") && !text.contains("\"u\":"),
            "{text}"
        );
        assert!(text.contains("\"used\":true"), "{text}");
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
