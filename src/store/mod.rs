//! Where tokens live. The request path only sees the [`TokenStore`] trait, so a
//! shared store (Redis) slots in beside the in-memory one without touching it.
//!
//! Stores never hold a usable token: keys are the SHA-256 of the token.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;

use std::sync::Weak;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::scope::ScopeSet;

pub(crate) mod connection;
pub(crate) mod memory;
mod record;
pub(crate) mod redis;
mod sentinel;
mod topology;

/// The config in force, as far as a token restored from the state file is
/// held to it (see [`MemoryStore::load`]); [`crate::config::Config`] is one.
pub trait TokenPolicy {
    /// The client's id and the scope a token of `user` (if any) through
    /// `client` may have now: what both may have. `None` when the user or the
    /// client is no longer configured.
    fn allowed(&self, user: Option<&str>, client: &str) -> Option<(Arc<str>, ScopeSet)>;
    /// The configured lifetime of an access token.
    fn access_token_ttl(&self) -> std::time::Duration;
    /// The configured lifetime of a refresh token.
    fn refresh_token_ttl(&self) -> std::time::Duration;
}

pub use connection::RedisConn;
pub use memory::MemoryStore;
pub use redis::RedisStore;
/// The Redis deployment a store connects to (`[store]` in the config).
pub use topology::RedisTopology;

/// Random bytes in a token: 256 bits (RFC 6749 section 10.10 asks for at least 128).
pub const TOKEN_BYTES: usize = 32;

/// The SHA-256 of a token: the only form a store keeps.
#[derive(Clone, Copy)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    // Constant time, although what leaks would only be bits of a hash of the secret.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TokenHash {}

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

impl Hash for TokenHash {
    // The bytes are already a cryptographic hash: eight of them are a fine hash-table key.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")));
    }
}

impl fmt::Debug for TokenHash {
    // Only a prefix: enough to correlate, never the whole key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The hash as 64 lower-case hex digits (storage keys).
pub(crate) fn hex(h: &TokenHash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h.0 {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub(crate) fn unhex(s: &str) -> Option<TokenHash> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(TokenHash(out))
}

/// A fresh token from the OS random source, base64url without padding (43 characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A random 64-bit id (grant families).
pub fn random_u64() -> u64 {
    getrandom::u64().expect("the OS random source failed")
}

/// Unix seconds (see [`crate::clock`]).
pub use crate::clock::now_secs;

/// Who a token speaks for: user, client and scope. Immutable and interned (see
/// [`Grants`]): every live token with the same three shares one `Arc<Grant>`,
/// so a token costs its map entry and little more.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    /// `None` for client_credentials tokens.
    pub user: Option<Arc<str>>,
    pub client: Arc<str>,
    pub scope: ScopeSet,
    /// The identity headers the upstream gets, built once.
    pub headers: IdentityHeaders,
    /// `sub` (see [`subject_of`]), built once.
    subject: Box<str>,
}

/// `X-Auth-User`, `X-Auth-Client`, `X-Auth-Scope` values of a grant.
#[derive(Debug, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub user: Option<HeaderValue>,
    pub client: HeaderValue,
    pub scope: HeaderValue,
}

impl Grant {
    pub fn new(user: Option<Arc<str>>, client: Arc<str>, scope: ScopeSet) -> Grant {
        // Names were checked for control characters when the config was loaded;
        // anything else that cannot be a header value is left out, never sent raw.
        let value = |s: &str| HeaderValue::from_bytes(s.as_bytes()).ok();
        let headers = IdentityHeaders {
            user: user.as_deref().and_then(value),
            client: value(&client).unwrap_or(HeaderValue::from_static("")),
            scope: value(&scope.to_string()).unwrap_or(HeaderValue::from_static("")),
        };
        let subject = subject_of(user.as_deref(), &client).into_boxed_str();
        Grant {
            user,
            client,
            scope,
            headers,
            subject,
        }
    }

    /// `sub`: the user's, or the client's for a client_credentials token;
    /// never one for both (see [`subject_of`]).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// The `sub` of a user (`Some`) or of a client acting for itself: stable,
/// at most 255 ASCII characters (OIDC Core 2), and never the same for two
/// principals, a user and a client of the same name included.
///
/// - A user whose name is plain (printable ASCII without `:`, at most 200
///   bytes) is its name: `alice`.
/// - A client with a plain id is `client:` and the id: `client:svc`.
/// - Any other name or id is `user:sha256:` / `client:sha256:` and the
///   base64url SHA-256 of it.
///
/// Plain user subjects have no `:`; every other kind has one and its own
/// prefix, and a plain client id (no `:`) cannot end in `sha256:...`: so no
/// two principals share one.
pub fn subject_of(user: Option<&str>, client: &str) -> String {
    fn plain(s: &str) -> bool {
        !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    }
    fn hashed(kind: &str, s: &str) -> String {
        format!(
            "{kind}:sha256:{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
        )
    }
    match user {
        Some(u) if plain(u) => u.to_string(),
        Some(u) => hashed("user", u),
        None if plain(client) => format!("client:{client}"),
        None => hashed("client", client),
    }
}

type GrantKey = (Option<Arc<str>>, Arc<str>, ScopeSet);

/// The grant interner: one `Arc<Grant>` per (user, client, scope) in use.
#[derive(Default)]
pub struct Grants(DashMap<GrantKey, Weak<Grant>>);

impl Grants {
    pub fn intern(&self, user: Option<Arc<str>>, client: Arc<str>, scope: ScopeSet) -> Arc<Grant> {
        let key = (user, client, scope);
        if let Some(g) = self.0.get(&key).and_then(|w| w.upgrade()) {
            return g;
        }
        let mut slot = self.0.entry(key.clone()).or_default();
        if let Some(g) = slot.upgrade() {
            return g;
        }
        let g = Arc::new(Grant::new(key.0, key.1, key.2));
        *slot = Arc::downgrade(&g);
        g
    }

    /// Forgets grants no token holds any more.
    pub fn sweep(&self) {
        self.0.retain(|_, w| w.strong_count() > 0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub grant: Arc<Grant>,
    /// Every token descended from one original authorization (a login, a code,
    /// a client_credentials request) shares this id; revocation is by family.
    pub family: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the token is dead from this second on.
    pub expires_at: u64,
    /// DPoP binding (RFC 9449 section 6): the JWK thumbprint (`cnf.jkt`) of the
    /// key whose proofs must come with the token; `None` for a bearer token.
    pub cnf: Option<Jkt>,
}

/// A DPoP key thumbprint (`cnf.jkt`), shared by the tokens of one binding. A
/// thin pointer: the slot costs every token record 8 bytes, not a fat
/// pointer's 16 (`cargo bench --bench token_memory`).
pub type Jkt = Arc<String>;

impl TokenRecord {
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

/// An authorization code's record (RFC 6749 section 4.1.2, RFC 7636).
#[derive(Debug, Clone)]
pub struct CodeRecord {
    /// User, client and granted scope.
    pub grant: Arc<Grant>,
    /// The family of every token the code yields.
    pub family: u64,
    /// The redirect URI the code was sent to.
    pub redirect_uri: String,
    /// Whether the authorization request named it (then the token request must repeat it).
    pub redirect_uri_given: bool,
    /// The S256 code challenge, when PKCE was used.
    pub code_challenge: Option<String>,
    pub expires_at: u64,
    /// Set when the code answers an OpenID Connect request: what its ID token says.
    pub oidc: Option<CodeOidc>,
}

/// The parts of an OpenID Connect authentication request an ID token repeats
/// (OIDC Core 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeOidc {
    /// `nonce`, echoed as it was sent.
    pub nonce: Option<String>,
    /// When the user entered the password (unix seconds).
    pub auth_time: u64,
}

/// Looking up a single-use credential (refresh token, authorization code).
#[derive(Debug, Clone)]
pub enum Redeem<T> {
    /// Live and unused (for `take_*`: now marked used, by this caller alone).
    Fresh(T),
    /// Used before: a replay. The caller revokes the family.
    Spent { family: u64 },
    /// Of a family revoked before. Refused, and the caller revokes the family
    /// again: the first revocation's acknowledgement may have failed (a
    /// replica did not confirm it in time), and a retry that found nothing to
    /// do must not be what tells the caller it is done.
    Revoked { family: u64 },
    /// Never issued, expired, or revoked where no retry can matter (the
    /// memory store).
    Unknown,
}

/// A pending device authorization (RFC 8628 section 3.2), keyed by the hash
/// of its device code; its user code names it on the verification page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub client: Arc<str>,
    /// The scope asked for; `None`: all the client and the user may have.
    pub scope: Option<ScopeSet>,
    /// The family of the tokens it yields.
    pub family: u64,
    /// Unix seconds; the device code and user code are dead from then on.
    pub expires_at: u64,
    /// Seconds a client waits between polls; raised by 5 at each `slow_down`.
    pub interval: u64,
}

/// What the user decided on the verification page.
#[derive(Debug, Clone)]
pub enum DeviceDecision {
    /// Who approved, for which client and scope.
    Approved(Arc<Grant>),
    Denied,
}

/// The answer to a poll of the token endpoint with a device code (RFC 8628
/// section 3.5); the store decides it atomically with the poll's time.
#[derive(Debug, Clone)]
pub enum DevicePoll {
    /// Never issued (or long gone).
    Unknown,
    /// Past its `expires_at`.
    Expired,
    /// Polled sooner than `interval` after the last poll: the interval, now
    /// 5 s longer, and how many polls came too fast so far.
    SlowDown {
        interval: u64,
        fast_polls: u64,
    },
    Pending,
    Denied,
    /// Approved, and now used up by this caller alone.
    Approved {
        grant: Arc<Grant>,
        family: u64,
    },
    /// Approved and used before: a replay (the caller revokes the family).
    Spent {
        family: u64,
    },
}

/// How long a device authorization is kept past its expiry, so that a late
/// poll is told `expired_token` rather than `invalid_grant`.
pub const DEVICE_GRACE_SECS: u64 = 600;

/// Why the store could not answer. Its text goes to the request's log line
/// (never to a response body) and names the fault, not a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store refuses to vouch for tokens now (fail closed), or could not
    /// be set up.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// A Redis command or connection failed: its kind and text, with any
    /// password a URL in it carries masked.
    #[error("redis {}: {}", .0.category(), without_password(&.0.to_string()))]
    Redis(::redis::RedisError),
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> StoreError {
        StoreError::Redis(e)
    }
}

/// `text` with the user information of any URL in it (`redis://user:pw@host`)
/// masked as `***`: Redis errors are not known to quote the URL, but a log line
/// must never carry its password even if one does.
pub fn without_password(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote; a '@' in it
        // ends the user information.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        rest = match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                &tail[at..]
            }
            None => tail,
        };
    }
    out.push_str(rest);
    out.into()
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Access tokens, refresh tokens and authorization codes, keyed by [`TokenHash`].
/// Every method takes `&self`: implementations do their own (fine-grained) locking.
///
/// Refresh tokens and codes are single use: a used one is kept, marked, until it
/// expires, so that a replay is recognised and its whole family revoked
/// (RFC 9700 section 4.14.2, RFC 6749 section 4.1.2).
pub trait TokenStore: Send + Sync + 'static {
    fn put_access(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()>;
    /// A live access token's record; expired and revoked ones are `None`.
    fn get_access(&self, key: TokenHash) -> StoreFuture<'_, Option<TokenRecord>>;
    /// Revokes one access token, whose record says it expires at `expires_at`
    /// (unix seconds): a shared store keeps a revoked marker until then.
    fn remove_access(&self, key: TokenHash, expires_at: u64) -> StoreFuture<'_, ()>;
    /// If `key` names an access token revoked before, makes that revocation
    /// durable again (as [`remove_access`](Self::remove_access) does); anything
    /// else is left alone. A revocation retried after an error finds nothing
    /// live, and must still not be acknowledged before a replica has it.
    fn confirm_revoked(&self, key: TokenHash) -> StoreFuture<'_, ()>;
    fn put_refresh(&self, key: TokenHash, rec: TokenRecord) -> StoreFuture<'_, ()>;
    /// A refresh token's state, left as it is.
    fn get_refresh(&self, key: TokenHash) -> StoreFuture<'_, Redeem<TokenRecord>>;
    /// Uses a refresh token: of racing callers, exactly one gets `Fresh`.
    fn take_refresh(&self, key: TokenHash) -> StoreFuture<'_, Redeem<TokenRecord>>;
    fn put_code(&self, key: TokenHash, rec: CodeRecord) -> StoreFuture<'_, ()>;
    /// Uses an authorization code: of racing callers, exactly one gets `Fresh`.
    fn take_code(&self, key: TokenHash) -> StoreFuture<'_, Redeem<CodeRecord>>;
    /// Revokes every token of a grant family, now and until `until` (unix seconds),
    /// by which time all of them have expired anyway.
    fn revoke_family(&self, family: u64, until: u64) -> StoreFuture<'_, ()>;
    /// Remembers a one-time value (a DPoP proof's or a client assertion's
    /// `jti`, hashed) until `until` (unix seconds). `true` the first time;
    /// `false` if it was seen before and not yet forgotten: a replay.
    fn first_use(&self, key: TokenHash, until: u64) -> StoreFuture<'_, bool>;
    /// Stores a new device authorization under its device code, and the user
    /// code pointing at it. `false` (nothing stored) if the user code is
    /// already in use: the caller draws another.
    fn put_device(
        &self,
        device: TokenHash,
        user_code: TokenHash,
        rec: DeviceRecord,
    ) -> StoreFuture<'_, bool>;
    /// The live, undecided device authorization a user code names.
    fn device_by_user_code(&self, user_code: TokenHash) -> StoreFuture<'_, Option<DeviceRecord>>;
    /// Records the user's decision. Of racing callers, exactly one gets
    /// `true`; the user code is used up (RFC 8628 section 6.1: single use).
    fn decide_device(
        &self,
        user_code: TokenHash,
        decision: DeviceDecision,
    ) -> StoreFuture<'_, bool>;
    /// One poll by `client` at `now_ms` (unix milliseconds): counted,
    /// rate-checked and answered atomically (see [`DevicePoll`]). A device
    /// code of another client is `Unknown`, and left as it is.
    fn poll_device(
        &self,
        device: TokenHash,
        client: &str,
        now_ms: u64,
    ) -> StoreFuture<'_, DevicePoll>;
    /// Drops expired and revoked entries; returns how many went.
    fn sweep_expired(&self, now: u64) -> StoreFuture<'_, usize>;
    /// Access and refresh tokens held (including expired ones not yet swept).
    fn token_counts(&self) -> (usize, usize);
    /// Whether the store can answer now (`/readyz`).
    fn is_ready(&self) -> bool {
        true
    }
    /// Starts the store's own background work on the current runtime.
    fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_never_show_a_url_password() {
        assert_eq!(
            without_password("cannot reach redis://:s3cret@10.0.0.1:6379/0 now"),
            "cannot reach redis://***@10.0.0.1:6379/0 now"
        );
        assert_eq!(
            without_password("rediss://user:pw@h and redis://h2:1"),
            "rediss://***@h and redis://h2:1"
        );
        assert_eq!(without_password("plain text"), "plain text");
        let e = StoreError::Redis(::redis::RedisError::from((
            ::redis::ErrorKind::InvalidClientConfig,
            "bad",
            "redis://u:hunter2@example".to_string(),
        )));
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.starts_with("redis invalid client config: "), "{text}");
    }

    #[test]
    fn grants_are_shared_while_held() {
        let g = Grants::default();
        let scope = || ScopeSet::parse("read write").unwrap();
        let a = g.intern(Some(Arc::from("u")), Arc::from("c"), scope());
        let b = g.intern(Some(Arc::from("u")), Arc::from("c"), scope());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.headers.scope, "read write");
        assert_eq!(a.headers.user.as_ref().unwrap(), "u");
        let c = g.intern(None, Arc::from("c"), scope());
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(c.headers.user.is_none());
        assert_eq!(c.subject(), "client:c");
        drop((a, b, c));
        g.sweep();
        assert!(g.is_empty());
    }

    #[test]
    fn subjects_are_unique_across_users_and_clients() {
        assert_eq!(subject_of(Some("alice"), "cli"), "alice");
        assert_eq!(subject_of(None, "alice"), "client:alice");
        // A user named like a client's subject is hashed: it has a ':'.
        let odd_user = subject_of(Some("client:alice"), "cli");
        assert!(odd_user.starts_with("user:sha256:"), "{odd_user}");
        assert_ne!(odd_user, "client:alice");
        assert!(subject_of(None, "a:b").starts_with("client:sha256:"));
        let long = "x".repeat(300);
        let s = subject_of(Some(&long), "cli");
        assert!(s.len() <= 255 && s.is_ascii(), "{s}");
        assert!(subject_of(Some("stéfano"), "c").starts_with("user:sha256:"));
        // Every kind, pairwise distinct.
        let names = [
            "alice",
            "client:alice",
            "a:b",
            "sha256:x",
            "",
            "é",
            "user:sha256:x",
        ];
        let mut all = std::collections::HashSet::new();
        for n in names {
            assert!(all.insert(subject_of(Some(n), "c")), "user {n:?}");
            assert!(all.insert(subject_of(None, n)), "client {n:?}");
        }
    }
}
