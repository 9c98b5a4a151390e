//! The raw serde types of gateway.toml: what the file says, before any check.
//!
//! Values keep their spans (`Spanned`) so a validator can name the line of
//! anything it refuses. Unknown keys are refused here (`deny_unknown_fields`).

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: Spanned<RawServer>,
    #[serde(default)]
    pub(super) oauth: Option<Spanned<RawOAuth>>,
    #[serde(default)]
    pub(super) store: Option<Spanned<RawStore>>,
    #[serde(default)]
    pub(super) users: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub(super) clients: Vec<Spanned<RawClient>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Spanned<String>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) shutdown_timeout: Option<Spanned<String>>,
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    pub(super) workers: Option<Spanned<i64>>,
    pub(super) admin_listen: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_connections_per_ip: Option<Spanned<i64>>,
    pub(super) body_read_timeout: Option<Spanned<String>>,
    pub(super) trusted_proxies: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth {
    pub(super) issuer: Option<Spanned<String>>,
    pub(super) token_path: Option<Spanned<String>>,
    pub(super) access_token_ttl: Option<Spanned<String>>,
    pub(super) refresh_token_ttl: Option<Spanned<String>>,
    pub(super) default_client: Option<Spanned<String>>,
    pub(super) password_workers: Option<Spanned<i64>>,
    pub(super) password_queue: Option<Spanned<i64>>,
    pub(super) signing_keys: Option<Spanned<Vec<String>>>,
    pub(super) device_code_ttl: Option<Spanned<String>>,
    pub(super) device_poll_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) backend: Option<Spanned<String>>,
    pub(super) redis_url: Option<Spanned<String>>,
    pub(super) redis_sentinel: Option<Spanned<RawSentinel>>,
    pub(super) redis_cluster: Option<Spanned<Vec<String>>>,
    pub(super) sweep_interval: Option<Spanned<String>>,
    pub(super) state_file: Option<Spanned<String>>,
    pub(super) max_staleness: Option<Spanned<String>>,
}

/// `store.redis_sentinel = { master_name, nodes }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) master_name: Spanned<String>,
    pub(super) nodes: Spanned<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) password_hash: Spanned<String>,
    pub(super) scopes: Option<Spanned<Vec<String>>>,
    pub(super) claims: Option<Spanned<RawClaims>>,
}

/// `[[users]] claims = { name, email, email_verified, groups }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaims {
    pub(super) name: Option<String>,
    pub(super) email: Option<String>,
    pub(super) email_verified: Option<bool>,
    pub(super) groups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) id: Spanned<String>,
    pub(super) secret_hash: Option<Spanned<String>>,
    pub(super) grants: Spanned<Vec<String>>,
    pub(super) scopes: Option<Spanned<Vec<String>>>,
    pub(super) redirect_uris: Option<Spanned<Vec<String>>>,
    pub(super) introspect: Option<Spanned<bool>>,
    pub(super) jwks: Option<Spanned<String>>,
    pub(super) require_dpop: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawUpstreams {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) prefix: Spanned<String>,
    pub(super) upstream: Option<Spanned<RawUpstreams>>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    pub(super) scopes: Option<Spanned<Vec<String>>>,
    pub(super) methods: Option<Spanned<Vec<String>>>,
    pub(super) auth: Option<bool>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) cooldown: Option<Spanned<String>>,
    pub(super) max_body_bytes: Option<Spanned<i64>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) upgrades: Option<Spanned<Vec<String>>>,
    pub(super) rate_limit: Option<Spanned<RawRateLimit>>,
    pub(super) cors: Option<Spanned<RawCors>>,
    pub(super) identity_assertion: Option<Spanned<bool>>,
    pub(super) audience: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests: Spanned<i64>,
    pub(super) per: Spanned<String>,
    pub(super) burst: Option<Spanned<i64>>,
    pub(super) key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub(super) origins: Spanned<Vec<String>>,
    pub(super) methods: Option<Spanned<Vec<String>>>,
    pub(super) headers: Option<Spanned<Vec<String>>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) credentials: Option<bool>,
}
