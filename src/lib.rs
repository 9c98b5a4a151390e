//! whosthat: an OAuth 2.0 authentication gateway.
//!
//! Clients get bearer tokens from the gateway's token endpoint and call private
//! APIs through it; every proxied request is checked against the token store and
//! the route's scopes, then forwarded with the caller's identity in headers.
//!
//! # Where things are
//!
//! The library exports what the binary (`src/main.rs`), `tests/`, `benches/`
//! and `fuzz/` use; the modules below without `pub` are internal. Each
//! behaviour has one file that owns it:
//!
//! | file | owns |
//! |---|---|
//! | `server.rs`, `server/` | listeners, TLS, connection caps, drain on stop (`drain.rs`), the admin listener (`admin.rs`), reload and signals |
//! | `gateway.rs` | the per-request pipeline: head checks, dispatch, endpoint or route, access log, metrics |
//! | `framing.rs` | request-head and message-framing checks (RFC 9112), for the connections and the pipeline |
//! | `dispatch.rs` | what a request is (own endpoint, route, what it needs): shared with `route test` |
//! | `endpoint.rs` | the gateway's own endpoints and their paths, defined once |
//! | `routes.rs` | the route table, path normalisation, upstream choice |
//! | `proxy.rs`, `upstream_tls.rs` | forwarding to upstreams, header rules, TLS to upstreams |
//! | `oauth/bearer.rs` | the one bearer (and DPoP) guard for routes and endpoints |
//! | `oauth/token.rs` | the token endpoint: grants, issuance, the token response |
//! | `oauth/form.rs`, `oauth/context.rs` | form decoding and body limits; the request context and guarded password checks |
//! | `oauth/client_auth.rs`, `oauth/client_jwt.rs` | client authentication (secrets, `private_key_jwt`) |
//! | `oauth/authorize.rs`, `oauth/signin_state.rs`, `oauth/redirect.rs`, `oauth/pkce.rs` | the authorization endpoint, its sign-in state, redirect URIs, PKCE |
//! | `oauth/device.rs`, `oauth/device_page.rs` | the device grant (RFC 8628) and its verification page |
//! | `oauth/dpop.rs`, `oauth/oidc.rs` | DPoP proofs at the token endpoint; OpenID Connect (ID tokens, discovery, userinfo, JWKS) |
//! | `oauth/endpoints.rs`, `oauth/limiter.rs` | revocation, introspection, userinfo, metadata; brute-force limits |
//! | `jose/` | signing keys, JWS signing and verification, JWKs and their thumbprints |
//! | `alloc.rs` | the global allocator (mimalloc) for the binary and the benches |
//! | `assertion.rs` | `X-Auth-Assertion` for upstreams |
//! | `store/` | the [`store::TokenStore`] trait, the memory and Redis stores, record serialisation (`record.rs`), Redis connections and the Redis topology (`topology.rs`) |
//! | `config/` | gateway.toml: raw serde types (`raw.rs`), one validator per section, loading TLS and CA files (`load.rs`), the check-config summary and listings |
//! | `cli/` | `user`, `client` and `route test` commands, in-place config edits (`edit.rs`) |
//! | `error.rs` | every rejection's side, cause and HTTP answer; the JSON / no-store answer helpers |
//! | `metrics.rs` | Prometheus counters and their rendering |
//! | `audit.rs` | request ids and audit lines |
//! | `ratelimit.rs`, `cors.rs`, `shadowing.rs` | per-route rate limits, CORS, overlapping-route warnings |
//! | `password.rs`, `scope.rs`, `grant.rs` | argon2 hashing and its pool; scope sets; grant types |
//! | `clock.rs`, `fsutil.rs`, `config/listing.rs` | the one wall clock (and lifetimes in seconds), the one atomic file write, the one user and client listing |

pub mod alloc;
pub mod assertion;
pub mod audit;
pub mod cli;
mod clock;
pub mod config;
mod cors;
mod dispatch;
mod endpoint;
pub mod error;
mod framing;
mod fsutil;
pub mod gateway;
mod grant;
pub mod jose;
pub mod metrics;
pub mod oauth;
pub mod password;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod scope;
pub mod server;
mod shadowing;
pub mod store;
mod upstream_tls;

pub use config::{Config, ConfigError};
pub use server::{Reload, reload, serve, serve_with, shutdown_signal, sighup_reloads};
