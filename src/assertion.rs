//! `X-Auth-Assertion`: a short-lived signed JWT that tells an upstream who is
//! calling, which it verifies with the public keys at `/.well-known/jwks.json`
//! (as Pomerium's `X-Pomerium-Jwt-Assertion`, Google IAP's
//! `x-goog-iap-jwt-assertion` and Cloudflare Access's `Cf-Access-Jwt-Assertion`
//! do). Plain `X-Auth-*` headers say the same, but anything that reaches the
//! upstream around the gateway can forge those; nobody without the key can
//! forge this.
//!
//! Signing is not done per request: an assertion is kept per (grant, route)
//! and reused until [`RENEW_BEFORE`] seconds before it expires, so a request
//! on a warm cache costs a map lookup and a reference-count increment.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::jose::SigningKey;
use crate::jose::sign::compact;
use crate::store::Grant;

/// The header upstreams receive. A client-sent one, in any spelling, is
/// dropped with every other `X-Auth-*` header (see `proxy::is_spoofable`).
pub static X_AUTH_ASSERTION: HeaderName = HeaderName::from_static("x-auth-assertion");

/// An assertion's lifetime: `exp - iat`, seconds. Short, as it is a bearer
/// credential to whoever sees it on the way to the upstream.
pub const ASSERTION_TTL_SECS: u64 = 5 * 60;
/// A cached assertion is replaced this long before it expires, so an upstream
/// whose clock runs a little fast never sees one that has expired.
pub const RENEW_BEFORE_SECS: u64 = 60;
/// At most this many assertions are kept per route. The count is bounded by
/// the live grants anyway (every one came from a token request); beyond it a
/// request's assertion is signed for it alone.
pub const MAX_CACHED: usize = 100_000;

/// What a route with `identity_assertion = true` asserts, and its cache.
pub struct RouteAssertion {
    /// `aud`: the route's `audience`, or its upstreams' origins (a string for
    /// one, an array for several).
    audience: serde_json::Value,
    /// Keyed by the grant's address; the `Weak` keeps that address from being
    /// reused while the entry exists, so an address names one grant.
    cache: DashMap<usize, Cached, foldhash::fast::RandomState>,
}

struct Cached {
    grant: Weak<Grant>,
    value: HeaderValue,
    /// Unix seconds from which the entry is replaced.
    renew_at: u64,
}

impl std::fmt::Debug for RouteAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteAssertion")
            .field("audience", &self.audience)
            .field("cached", &self.cache.len())
            .finish()
    }
}

/// The JWT's claims (INTERFACE.md; RFC 9068 section 2.2 names the same ones
/// for JWT access tokens).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a serde_json::Value,
    sub: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    scope: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

impl RouteAssertion {
    /// `audiences`: one or more; several become a JSON array.
    pub fn new(mut audiences: Vec<String>) -> RouteAssertion {
        audiences.dedup();
        let audience = if audiences.len() == 1 {
            serde_json::Value::String(audiences.remove(0))
        } else {
            serde_json::Value::from(audiences)
        };
        RouteAssertion {
            audience,
            cache: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    pub fn audience(&self) -> &serde_json::Value {
        &self.audience
    }

    /// The assertion for a request under `grant`: the cached one while it has
    /// more than [`RENEW_BEFORE_SECS`] to live, else a fresh one signed by `key`.
    pub fn header(
        &self,
        grant: &Arc<Grant>,
        issuer: &str,
        key: &SigningKey,
        now: u64,
    ) -> HeaderValue {
        let id = Arc::as_ptr(grant) as usize;
        if let Some(c) = self.cache.get(&id)
            && std::ptr::eq(c.grant.as_ptr(), Arc::as_ptr(grant))
            && now < c.renew_at
        {
            return c.value.clone();
        }
        let value = self.sign(grant, issuer, key, now);
        if self.cache.len() < MAX_CACHED || self.cache.contains_key(&id) {
            self.cache.insert(
                id,
                Cached {
                    grant: Arc::downgrade(grant),
                    value: value.clone(),
                    renew_at: now + ASSERTION_TTL_SECS - RENEW_BEFORE_SECS,
                },
            );
        }
        value
    }

    fn sign(&self, grant: &Grant, issuer: &str, key: &SigningKey, now: u64) -> HeaderValue {
        let claims = Claims {
            iss: issuer,
            aud: &self.audience,
            sub: grant.subject(),
            client_id: &grant.client,
            username: grant.user.as_deref(),
            scope: grant.headers.scope.to_str().unwrap_or(""),
            iat: now,
            exp: now + ASSERTION_TTL_SECS,
            jti: crate::store::new_token(),
        };
        let jwt = compact(key, "JWT", &claims);
        // Shared bytes: every clone of the cached value is a reference count.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(jwt))
            .expect("a JWS is base64url and dots")
    }

    /// Drops entries due for renewal and those of grants no token holds.
    pub fn sweep(&self, now: u64) {
        self.cache
            .retain(|_, c| now < c.renew_at && c.grant.strong_count() > 0);
    }

    /// Assertions cached (for tests and benchmarks).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Alg;
    use crate::jose::keys::test_pem;
    use crate::scope::ScopeSet;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn claims_of(v: &HeaderValue) -> serde_json::Value {
        let payload = v.to_str().unwrap().split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    fn grant(user: Option<&str>) -> Arc<Grant> {
        Arc::new(Grant::new(
            user.map(Arc::from),
            Arc::from("cli"),
            ScopeSet::parse("read write").unwrap(),
        ))
    }

    #[test]
    fn an_assertion_is_reused_until_shortly_before_it_expires() {
        let key = SigningKey::from_pem(&test_pem(Alg::Es256)).unwrap();
        let a = RouteAssertion::new(vec!["http://up:9000".into()]);
        let g = grant(Some("alice"));
        let t0 = 1_800_000_000;
        let first = a.header(&g, "https://gw", &key, t0);
        let c = claims_of(&first);
        assert_eq!(c["iss"], "https://gw");
        assert_eq!(c["aud"], "http://up:9000");
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["username"], "alice");
        assert_eq!(c["client_id"], "cli");
        assert_eq!(c["scope"], "read write");
        assert_eq!(c["iat"], t0);
        assert_eq!(c["exp"], t0 + ASSERTION_TTL_SECS);
        assert!(c["jti"].as_str().unwrap().len() >= 22);
        let renew = t0 + ASSERTION_TTL_SECS - RENEW_BEFORE_SECS;
        assert_eq!(a.header(&g, "https://gw", &key, renew - 1), first);
        let second = a.header(&g, "https://gw", &key, renew);
        assert_ne!(second, first);
        assert_eq!(claims_of(&second)["iat"], renew);
        assert_ne!(claims_of(&second)["jti"], c["jti"]);
        assert_eq!(a.cached(), 1);
    }

    #[test]
    fn grants_get_their_own_assertions_and_dead_ones_are_swept() {
        let key = SigningKey::from_pem(&test_pem(Alg::EdDsa)).unwrap();
        let a = RouteAssertion::new(vec!["a".into(), "b".into()]);
        let (u, c) = (grant(Some("alice")), grant(None));
        let t = 1_800_000_000;
        let hu = a.header(&u, "i", &key, t);
        let hc = a.header(&c, "i", &key, t);
        assert_eq!(claims_of(&hu)["aud"], serde_json::json!(["a", "b"]));
        assert_eq!(claims_of(&hc)["sub"], "client:cli");
        assert!(claims_of(&hc).get("username").is_none());
        assert_eq!(a.cached(), 2);
        drop(c);
        a.sweep(t);
        assert_eq!(a.cached(), 1);
        a.sweep(t + ASSERTION_TTL_SECS);
        assert_eq!(a.cached(), 0);
    }
}
