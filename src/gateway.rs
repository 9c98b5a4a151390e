//! The per-request pipeline: normalise the path, route, authenticate, forward,
//! log. `handle` wraps `handle_inner`: the inner returns `Result`, the outer
//! turns errors into responses and writes the access-log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use crate::audit;
use crate::config::Config;
use crate::config::StoreBackend;
use crate::cors::CorsPolicy;
use crate::error::{Body, Cause, GatewayError, Side};
use crate::error::{RATELIMIT, RATELIMIT_POLICY};
use crate::metrics::{Metrics, RouteStats};
use crate::oauth::authorize::{AUTHORIZE_PATH, Authorizer};
use crate::oauth::endpoints::{self, INTROSPECT_PATH, METADATA_PATH, REVOKE_PATH, USERINFO_PATH};
use crate::oauth::limiter::Limiter;
use crate::oauth::{BodyReadTimeout, OAuthContext, grant_still_allowed, token_endpoint};
use crate::password::PasswordPool;
use crate::proxy::{ForwardInfo, client_address, forward};
use crate::ratelimit::{RateKey, RateKeyKind, SharedBuckets};
use crate::routes::normalize_path;
use crate::store::{Grants, MemoryStore, RedisStore, StoreError, TokenHash, TokenStore};

/// Everything a request needs, shared by all connections.
pub struct AppState {
    /// Swapped whole on reload; a request keeps the one it started with.
    pub config: ArcSwap<Config>,
    pub store: Arc<dyn TokenStore>,
    pub passwords: PasswordPool,
    pub limiter: Limiter,
    pub authorizer: Authorizer,
    pub grants: Arc<Grants>,
    pub metrics: Arc<Metrics>,
    /// The memory backend, when it is the store (saved and loaded across restarts).
    pub memory: Option<Arc<MemoryStore>>,
    /// Where routes' rate-limit buckets are shared (Redis); `None`: per instance.
    pub rate_buckets: Option<Arc<dyn SharedBuckets>>,
}

impl AppState {
    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn new(config: Arc<Config>) -> Result<AppState, StoreError> {
        // The decoy for unknown names is hashed like the costliest configured
        // user's: an unknown name never costs less than a real one.
        let like = config
            .users
            .values()
            .map(|u| u.password_hash.as_str())
            .max_by_key(|h| crate::password::cost_of(h));
        let passwords = PasswordPool::with_decoy_like(
            config.oauth.password_workers,
            config.oauth.password_queue,
            Duration::from_secs(10),
            like,
        );
        let grants = Arc::new(Grants::default());
        // The brute-force counters live where the tokens do: with Redis, every
        // instance counts against the same numbers.
        let (store, memory, limiter): (Arc<dyn TokenStore>, _, _) = match &config.store.backend {
            StoreBackend::Memory => {
                let m = Arc::new(MemoryStore::new());
                (m.clone(), Some(m), Limiter::memory())
            }
            StoreBackend::Redis(url) => {
                let r = RedisStore::new(url, grants.clone(), config.store.max_staleness)?;
                let limiter = Limiter::redis(r.connection());
                (Arc::new(r), None, limiter)
            }
        };
        // Rate-limit buckets are shared where tokens are: with Redis, fleet-wide.
        let rate_buckets: Option<Arc<dyn SharedBuckets>> = match &config.store.backend {
            StoreBackend::Memory => None,
            StoreBackend::Redis(url) => Some(Arc::new(
                crate::ratelimit::RedisBuckets::new(url).map_err(StoreError::Unavailable)?,
            )),
        };
        Ok(AppState {
            rate_buckets,
            store,
            passwords,
            limiter,
            authorizer: Authorizer::new(),
            grants,
            metrics: Arc::new(Metrics::new()),
            memory,
            config: ArcSwap::new(config),
        })
    }
}

/// What the access log says about a request.
#[derive(Default)]
struct LogContext<'s> {
    /// Borrowed from the config: nothing is copied for the log's sake.
    route: Option<&'s str>,
    /// The counters of what answered (a route's, or an endpoint's); `None`:
    /// nothing matched.
    stats: Option<&'s RouteStats>,
    user: Option<Arc<str>>,
    /// The token's client.
    client_id: Option<Arc<str>>,
    /// The CORS policy of what answered (a route's, or the endpoints').
    cors: Option<&'s CorsPolicy>,
    /// `RateLimit-Policy` and `RateLimit` for an answer under a route's limit.
    rate_limit: Option<(HeaderValue, HeaderValue)>,
    reason: Option<&'static str>,
    /// Whose fault a refusal was, and the fault under it (for this line only,
    /// never the response).
    side: Option<Side>,
    cause: Option<Cause>,
    request_id: &'s str,
}

/// What the gateway knows of a client connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Whether the client came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// `X-Forwarded-For` for every request of the connection.
    pub forwarded_for: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let forwarded_for = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            tls,
            forwarded_for,
        }
    }
}

pub async fn handle(
    state: Arc<AppState>,
    mut req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<Body> {
    let start = Instant::now();
    // Copied only when the line will be written. The path only: queries can carry secrets.
    let logged = tracing::enabled!(target: "whosthat::access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().path().to_string()));
    // The config in force when the request arrived, for the whole request.
    let config = state.config();
    // Per request: a load balancer's connection carries many clients.
    let peer = conn.peer.ip().to_canonical();
    let trusted = &config.server.trusted_proxies;
    let from_proxy = trusted.iter().any(|n| n.contains(&peer));
    let client = if from_proxy {
        client_address(trusted, peer, req.headers())
    } else {
        peer
    };
    // The request id is taken from a trusted proxy or made here; it replaces any
    // the client sent, and goes upstream with the request.
    let request_id = audit::request_id(req.headers(), from_proxy);
    req.headers_mut()
        .insert(&audit::X_REQUEST_ID, request_id.clone());
    let origin = CorsPolicy::origin_of_request(req.headers());
    let mut log = LogContext {
        request_id: request_id.to_str().unwrap_or("-"),
        ..LogContext::default()
    };
    let mut resp = match handle_inner(&state, &config, req, &conn, client, &mut log).await {
        Ok(r) => r,
        Err(e) => {
            state.metrics.rejected(&e);
            log.reason = Some(e.reason());
            log.side = Some(e.side());
            log.cause = e.cause().cloned();
            e.into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(&audit::X_REQUEST_ID, request_id.clone());
    if let Some(cors) = log.cors {
        cors.apply(origin.as_ref(), h);
    }
    if let Some((policy, state)) = log.rate_limit.take() {
        h.insert(RATELIMIT_POLICY.clone(), policy);
        h.insert(RATELIMIT.clone(), state);
    }
    let latency = start.elapsed();
    log.stats
        .unwrap_or(state.metrics.unmatched())
        .record(resp.status().as_u16(), latency);
    let Some((method, path)) = logged else {
        return resp;
    };
    tracing::info!(
        target: "whosthat::access",
        method = %method,
        path = %path,
        address = %client,
        route = log.route.unwrap_or("-"),
        status = resp.status().as_u16(),
        client = log.client_id.as_deref().unwrap_or("-"),
        user = log.user.as_deref().unwrap_or("-"),
        request_id = log.request_id,
        reason = log.reason.unwrap_or("-"),
        side = log.side.map(Side::as_str),
        cause = log.cause.as_ref().map(tracing::field::display),
        latency_us = latency.as_micros() as u64,
        "request"
    );
    resp
}

async fn handle_inner<'s>(
    state: &'s AppState,
    config: &'s Config,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    client: IpAddr,
    log: &mut LogContext<'s>,
) -> Result<Response<Body>, GatewayError> {
    // The head before anything else (RFC 9112): CONNECT, framing, Host.
    let host = crate::server::framing::check_request_head(&req)?;
    let path = normalize_path(req.uri().path()).map_err(GatewayError::BadPath)?;

    if let Some(endpoint) = own_endpoint(config, &path) {
        log.route = Some(endpoint.name(config));
        log.stats = Some(state.metrics.endpoint(endpoint));
        // Browser apps call these across origins (the code flow with PKCE).
        if matches!(
            endpoint,
            Endpoint::Token | Endpoint::Revoke | Endpoint::Metadata
        ) {
            // A preflight's answer is whole as it is; other answers get the fields.
            if CorsPolicy::is_preflight(req.method(), req.headers()) {
                return Ok(match config.endpoint_cors.as_deref() {
                    Some(cors) => cors.preflight(req.headers()),
                    None => CorsPolicy::refused_preflight(),
                });
            }
            log.cors = config.endpoint_cors.as_deref();
        }
        req.extensions_mut()
            .insert(BodyReadTimeout(config.server.body_read_timeout));
        let ctx = OAuthContext {
            config,
            store: state.store.as_ref(),
            passwords: &state.passwords,
            limiter: &state.limiter,
            grants: &state.grants,
            metrics: &state.metrics,
            peer: client,
            request_id: log.request_id,
        };
        return match endpoint {
            Endpoint::Token => token_endpoint(&ctx, req).await,
            Endpoint::Authorize => state.authorizer.handle(&ctx, req).await,
            Endpoint::Revoke => endpoints::revoke(&ctx, req).await,
            Endpoint::Introspect => endpoints::introspect(&ctx, req).await,
            Endpoint::Userinfo => endpoints::userinfo(&ctx, req).await,
            Endpoint::Metadata => Ok(endpoints::metadata(config)),
        };
    }

    let route = config.routes.find(&path).ok_or(GatewayError::NoRoute)?;
    log.route = Some(&route.prefix);
    log.stats = Some(&route.stats);
    // A preflight is answered here, without a token, and never forwarded.
    if let Some(cors) = route.cors.as_deref() {
        if CorsPolicy::is_preflight(req.method(), req.headers()) {
            return Ok(cors.preflight(req.headers()));
        }
        log.cors = Some(cors);
    }
    if !route.allows_method(req.method()) {
        let allow: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
        return Err(GatewayError::MethodNotAllowed(allow.join(", ")));
    }
    // X-HTTP-Method-Override and kin are dropped before forwarding; one naming a
    // method the route refuses is answered as that method would be.
    if crate::proxy::override_refused(route, req.headers()) {
        let allow: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
        return Err(GatewayError::MethodNotAllowed(allow.join(", ")));
    }

    if route.auth && query_has_access_token(req.uri().query()) {
        // RFC 6750 section 2.3, RFC 9700 section 4.3.2: never in the query,
        // which upstreams log; refused, not forwarded.
        return Err(GatewayError::MalformedBearer(
            "a bearer token must not be sent in the query",
        ));
    }

    let record = if route.auth {
        let token = bearer_token(req.headers())?.ok_or(GatewayError::NoToken)?;
        let record = state
            .store
            .get_access(TokenHash::of(token))
            .await?
            .filter(|r| grant_still_allowed(config, &r.grant))
            .ok_or(GatewayError::InvalidToken(
                "the access token is unknown, expired or revoked",
            ))?;
        log.user = record.grant.user.clone();
        log.client_id = Some(record.grant.client.clone());
        if !route.scopes.is_subset_of(&record.grant.scope) {
            return Err(GatewayError::InsufficientScope(route.scopes.to_string()));
        }
        Some(record)
    } else {
        None
    };
    if let Some(limit) = &route.rate_limit {
        let grant = record.as_ref().map(|r| r.grant.as_ref());
        let key = match (limit.spec.key, grant) {
            (RateKeyKind::Client, Some(g)) => RateKey::Client(g.client.clone()),
            (RateKeyKind::User, Some(g)) => match &g.user {
                Some(u) => RateKey::User(u.clone()),
                None => RateKey::Client(g.client.clone()),
            },
            // The config allows only `address` on public routes.
            // One IPv6 site (/64) is one caller, as for every per-address limit.
            _ => RateKey::Addr(crate::proxy::client_block(client)),
        };
        let d = limit.check(&key, state.rate_buckets.as_ref()).await;
        let policy = limit.policy.clone();
        let now = d.header(&limit.spec);
        if !d.allowed {
            return Err(GatewayError::RateLimited {
                retry_after: d.retry_after_secs,
                policy,
                state: now,
            });
        }
        log.rate_limit = Some((policy, now));
    }

    // Rendered once per connection for the usual case: no proxy in front.
    let rendered;
    let forwarded_for = if client == conn.peer.ip() {
        &conn.forwarded_for
    } else {
        rendered = HeaderValue::try_from(client.to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        &rendered
    };
    let info = ForwardInfo {
        forwarded_for,
        tls: conn.tls,
        host,
        identity: record.as_ref().map(|r| r.grant.as_ref()),
    };
    let upstream = route.pick_upstream();
    forward(req, route, upstream, &path, &info).await
}

/// The gateway's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Authorize,
    Revoke,
    Introspect,
    Userinfo,
    Metadata,
}

impl Endpoint {
    /// Every endpoint, in declaration order: `ALL[e as usize] == e` (the
    /// metrics keep an array of counters indexed so).
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Token,
        Endpoint::Authorize,
        Endpoint::Revoke,
        Endpoint::Introspect,
        Endpoint::Userinfo,
        Endpoint::Metadata,
    ];

    /// The endpoint's path, as the access log's route.
    pub fn name(self, config: &Config) -> &str {
        match self {
            Endpoint::Token => &config.oauth.token_path,
            Endpoint::Authorize => AUTHORIZE_PATH,
            Endpoint::Revoke => REVOKE_PATH,
            Endpoint::Introspect => INTROSPECT_PATH,
            Endpoint::Userinfo => USERINFO_PATH,
            Endpoint::Metadata => METADATA_PATH,
        }
    }
}

/// Which of the gateway's own endpoints `path` (normalised) is, if any. These
/// take precedence over routes.
pub fn own_endpoint(config: &Config, path: &str) -> Option<Endpoint> {
    if path == config.oauth.token_path {
        return Some(Endpoint::Token);
    }
    match path {
        AUTHORIZE_PATH => Some(Endpoint::Authorize),
        REVOKE_PATH => Some(Endpoint::Revoke),
        INTROSPECT_PATH => Some(Endpoint::Introspect),
        USERINFO_PATH => Some(Endpoint::Userinfo),
        METADATA_PATH => Some(Endpoint::Metadata),
        _ => None,
    }
}

/// Whether a query string has an `access_token` parameter (its name compared
/// once form-decoded, so `access%5Ftoken` counts too).
pub fn query_has_access_token(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let plus_decoded = name.replace('+', " ");
        percent_encoding::percent_decode_str(&plus_decoded).eq(b"access_token".iter().copied())
    })
}

/// The bearer token of `Authorization: Bearer <token>` (RFC 6750 section 2.1).
/// `Ok(None)`: no bearer credentials at all (no header, or another scheme).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let value = match (all.next(), all.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(GatewayError::MalformedBearer(
                "more than one Authorization header",
            ));
        }
        (Some(v), None) => v,
    };
    let value = value
        .to_str()
        .map_err(|_| GatewayError::MalformedBearer("the Authorization header is not ASCII"))?;
    let (scheme, token) = match value.split_once(' ') {
        Some((s, t)) => (s, t.trim_start_matches(' ')),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let well_formed = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !well_formed {
        return Err(GatewayError::MalformedBearer(
            "the bearer token is malformed",
        ));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn access_token_in_the_query() {
        assert!(!query_has_access_token(None));
        assert!(!query_has_access_token(Some("a=1&token=x&access_tokens=y")));
        assert!(query_has_access_token(Some("access_token=x")));
        assert!(query_has_access_token(Some("a=1&access_token")));
        assert!(query_has_access_token(Some("a=1&access%5Ftoken=x")));
        assert!(query_has_access_token(Some("%61ccess_token=")));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            bearer_token(&auth("Bearer abc-_.~+/==")).unwrap(),
            Some("abc-_.~+/==")
        );
        assert_eq!(bearer_token(&auth("bEaReR abc")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&auth("Basic abc")).unwrap(), None);
        assert!(bearer_token(&auth("Bearer")).is_err());
        assert!(bearer_token(&auth("Bearer a b")).is_err());
        assert!(bearer_token(&auth("Bearer a,b")).is_err());
        let mut two = auth("Bearer a");
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(bearer_token(&two).is_err());
    }
}
