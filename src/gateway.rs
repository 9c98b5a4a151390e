//! The per-request pipeline: normalise the path, route, authenticate, forward,
//! log. `handle` wraps `handle_inner`: the inner returns `Result`, the outer
//! turns errors into responses and writes the access-log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use crate::audit;
use crate::config::Config;
use crate::config::StoreBackend;
use crate::cors::CorsPolicy;
use crate::dispatch::{Decision, Needs, RouteMatch, classify};
use crate::endpoint::Endpoint;
use crate::error::{Body, Cause, DpopRefusal, GatewayError, Side};
use crate::error::{RATELIMIT, RATELIMIT_POLICY};
use crate::metrics::{Metrics, RouteStats};
use crate::oauth::authorize::Authorizer;
use crate::oauth::bearer::{RequestHead, require_token};
use crate::oauth::endpoints;
use crate::oauth::limiter::Limiter;
use crate::oauth::oidc;
use crate::oauth::{BodyReadTimeout, OAuthContext, token_endpoint};
use crate::password::PasswordPool;
use crate::proxy::{ForwardInfo, client_address, forward};
use crate::ratelimit::{RateKey, RateKeyKind, RateLimiter, SharedBuckets};
use crate::routes::NormalizedPath;
use crate::store::{Grant, Grants, MemoryStore, RedisStore, StoreError, TokenStore};

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
        // So do rate-limit buckets and sign-ins in progress: with Redis, any
        // instance continues what another began.
        let (store, memory, limiter, rate_buckets, authorizer): (Arc<dyn TokenStore>, _, _, _, _) =
            match &config.store.backend {
                StoreBackend::Memory => {
                    let m = Arc::new(MemoryStore::new());
                    (
                        m.clone(),
                        Some(m),
                        Limiter::memory(),
                        None,
                        Authorizer::new(),
                    )
                }
                StoreBackend::Redis(topology) => {
                    let r = RedisStore::new(topology, grants.clone(), config.store.max_staleness)?;
                    let conn = r.connection();
                    let buckets: Arc<dyn SharedBuckets> =
                        Arc::new(crate::ratelimit::RedisBuckets::new(conn.clone()));
                    let limiter = Limiter::redis(conn.clone());
                    (
                        Arc::new(r),
                        None,
                        limiter,
                        Some(buckets),
                        Authorizer::fleet(conn),
                    )
                }
            };
        Ok(AppState {
            rate_buckets,
            store,
            passwords,
            limiter,
            authorizer,
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
    // DPoP's `htu` is the URL as the client used it (see `client_scheme`).
    let scheme = crate::oauth::dpop::client_scheme(req.headers(), from_proxy, conn.tls);
    let caller = (client, scheme);
    let mut resp = match handle_inner(&state, &config, req, &conn, caller, &mut log).await {
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
    req: Request<Incoming>,
    conn: &ConnInfo,
    (client, scheme): (IpAddr, &'static str),
    log: &mut LogContext<'s>,
) -> Result<Response<Body>, GatewayError> {
    // The head before anything else (RFC 9112): CONNECT, framing, Host.
    let host = crate::framing::check_request_head(&req)?;
    let path = NormalizedPath::new(req.uri().path()).map_err(GatewayError::BadPath)?;
    match classify(config, req.method(), &path) {
        Decision::Endpoint(endpoint) => {
            Box::pin(answer_endpoint(
                state,
                config,
                endpoint,
                req,
                (client, scheme),
                log,
            ))
            .await
        }
        Decision::NoRoute => Err(GatewayError::NoRoute),
        Decision::Route(matched) => {
            let target = Target {
                path: &path,
                host,
                client,
                scheme,
            };
            proxy_route(state, config, matched, req, conn, target, log).await
        }
    }
}

/// One of the gateway's own endpoints.
async fn answer_endpoint<'s>(
    state: &'s AppState,
    config: &'s Config,
    endpoint: Endpoint,
    mut req: Request<Incoming>,
    (client, scheme): (IpAddr, &'static str),
    log: &mut LogContext<'s>,
) -> Result<Response<Body>, GatewayError> {
    log.route = Some(endpoint.path(&config.oauth.token_path));
    log.stats = Some(state.metrics.endpoint(endpoint));
    if endpoint.cross_origin() {
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
        scheme,
    };
    match endpoint {
        Endpoint::Token => token_endpoint(&ctx, req).await,
        Endpoint::Authorize => state.authorizer.handle(&ctx, req).await,
        Endpoint::DeviceAuthorization => crate::oauth::device::authorization(&ctx, req).await,
        Endpoint::Device => crate::oauth::device_page::handle(&state.authorizer, &ctx, req).await,
        Endpoint::Revoke => endpoints::revoke(&ctx, req).await,
        Endpoint::Introspect => endpoints::introspect(&ctx, req).await,
        Endpoint::Userinfo => endpoints::userinfo(&ctx, req).await,
        Endpoint::Metadata | Endpoint::OpenIdConfiguration => Ok(endpoints::metadata(config)),
        Endpoint::Jwks => oidc::jwks(config, req.method()),
    }
}

/// Where a proxied request goes, and for whom.
struct Target<'r> {
    path: &'r NormalizedPath,
    /// The request's checked `Host`.
    host: Option<HeaderValue>,
    /// The client's address (through `server.trusted_proxies`).
    client: IpAddr,
    /// `https` or `http`, as the client used it.
    scheme: &'static str,
}

/// A request for a route: CORS preflight, method, token and scopes, rate
/// limit, then upstream.
async fn proxy_route<'s>(
    state: &AppState,
    config: &'s Config,
    matched: RouteMatch<'s>,
    req: Request<Incoming>,
    conn: &ConnInfo,
    target: Target<'_>,
    log: &mut LogContext<'s>,
) -> Result<Response<Body>, GatewayError> {
    let route = matched.route;
    log.route = Some(&route.prefix);
    log.stats = Some(&route.stats);
    // A preflight is answered here, without a token, and never forwarded.
    if let Some(cors) = route.cors.as_deref() {
        if CorsPolicy::is_preflight(req.method(), req.headers()) {
            return Ok(cors.preflight(req.headers()));
        }
        log.cors = Some(cors);
    }
    if matched.method_refused(req.headers()) {
        return Err(GatewayError::MethodNotAllowed(matched.allow()));
    }
    let record = match matched.needs {
        Needs::Nothing => None,
        Needs::Token { scopes } => {
            let head = RequestHead::of(&req, target.scheme);
            let record = require_token(state.store.as_ref(), config, &head).await?;
            log.user = record.grant.user.clone();
            log.client_id = Some(record.grant.client.clone());
            if !scopes.is_subset_of(&record.grant.scope) {
                let scopes = scopes.to_string();
                // A DPoP-bound token is answered with a DPoP challenge (RFC 9449 7.1).
                return Err(match record.cnf {
                    None => GatewayError::InsufficientScope(scopes),
                    Some(_) => GatewayError::Dpop(DpopRefusal::InsufficientScope(scopes)),
                });
            }
            Some(record)
        }
    };
    if let Some(limit) = &route.rate_limit {
        let grant = record.as_ref().map(|r| r.grant.as_ref());
        log.rate_limit = Some(rate_limit(state, limit, grant, target.client).await?);
    }
    // Rendered once per connection for the usual case: no proxy in front.
    let rendered;
    let forwarded_for = if target.client == conn.peer.ip() {
        &conn.forwarded_for
    } else {
        rendered = HeaderValue::try_from(target.client.to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        &rendered
    };
    let info = ForwardInfo {
        forwarded_for,
        tls: conn.tls,
        host: target.host,
        identity: record.as_ref().map(|r| r.grant.as_ref()),
        assertion: assertion_for(config, route, record.as_ref()),
    };
    let upstream = route.pick_upstream();
    forward(req, route, upstream, target.path, &info).await
}

/// `X-Auth-Assertion` for an authenticated request on a route with
/// `identity_assertion = true` (the config refuses that option without keys).
fn assertion_for(
    config: &Config,
    route: &crate::routes::Route,
    record: Option<&crate::store::TokenRecord>,
) -> Option<HeaderValue> {
    let (assertion, record, keys) = (
        route.assertion.as_ref()?,
        record?,
        config.oauth.signing.as_ref()?,
    );
    Some(assertion.header(
        &record.grant,
        &config.oauth.issuer,
        keys.signer(),
        crate::store::now_secs(),
    ))
}

/// Checks a route's rate limit for the caller: `Ok` with the `RateLimit-Policy`
/// and `RateLimit` fields of the answer, or 429.
async fn rate_limit(
    state: &AppState,
    limit: &Arc<RateLimiter>,
    grant: Option<&Grant>,
    client: IpAddr,
) -> Result<(HeaderValue, HeaderValue), GatewayError> {
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
    Ok((policy, now))
}
