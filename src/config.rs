//! gateway.toml: raw serde structs, then validation into checked types.
//!
//! Every error names the file, the line and the key, so a bad config is refused
//! at startup with something a person can act on.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cors::CorsPolicy;
use crate::ratelimit::{RateKeyKind, RateLimitSpec, RateLimiter};
use crate::routes::{Route, RouteTable, Upstream};
use crate::scope::{ScopeSet, is_valid_scope_token};

/// A config error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the error points into the file.
    pub line: Option<usize>,
    /// The key, as a dotted path (`routes[1].upstream`).
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Something valid but probably unintended (routes whose upstream paths overlap
/// with different checks): printed by `check-config` (refused with `--strict`)
/// and logged at warn level when the gateway starts or reloads. Shaped and
/// printed like an error: file, line, key and message.
pub type ConfigWarning = ConfigError;

// ---------------------------------------------------------------- raw structs

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Spanned<RawServer>,
    #[serde(default)]
    oauth: Option<Spanned<RawOAuth>>,
    #[serde(default)]
    store: Option<Spanned<RawStore>>,
    #[serde(default)]
    users: Vec<Spanned<RawUser>>,
    #[serde(default)]
    clients: Vec<Spanned<RawClient>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    header_read_timeout: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<i64>>,
    workers: Option<Spanned<i64>>,
    admin_listen: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    body_read_timeout: Option<Spanned<String>>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    issuer: Option<Spanned<String>>,
    token_path: Option<Spanned<String>>,
    access_token_ttl: Option<Spanned<String>>,
    refresh_token_ttl: Option<Spanned<String>>,
    default_client: Option<Spanned<String>>,
    password_workers: Option<Spanned<i64>>,
    password_queue: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<Spanned<String>>,
    redis_url: Option<Spanned<String>>,
    sweep_interval: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
    max_staleness: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password_hash: Spanned<String>,
    scopes: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: Spanned<String>,
    secret_hash: Option<Spanned<String>>,
    grants: Spanned<Vec<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    redirect_uris: Option<Spanned<Vec<String>>>,
    introspect: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUpstreams {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Spanned<String>,
    upstream: Option<Spanned<RawUpstreams>>,
    #[serde(default)]
    strip_prefix: bool,
    scopes: Option<Spanned<Vec<String>>>,
    methods: Option<Spanned<Vec<String>>>,
    auth: Option<bool>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    cooldown: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<i64>>,
    ca_file: Option<Spanned<String>>,
    upgrades: Option<Spanned<Vec<String>>>,
    rate_limit: Option<Spanned<RawRateLimit>>,
    cors: Option<Spanned<RawCors>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests: Spanned<i64>,
    per: Spanned<String>,
    burst: Option<Spanned<i64>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    origins: Spanned<Vec<String>>,
    methods: Option<Spanned<Vec<String>>>,
    headers: Option<Spanned<Vec<String>>>,
    max_age: Option<Spanned<String>>,
    credentials: Option<bool>,
}

// ------------------------------------------------------------ checked types

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerConfig,
    pub oauth: OAuthConfig,
    pub store: StoreConfig,
    pub users: HashMap<String, Arc<User>>,
    pub clients: HashMap<String, Arc<Client>>,
    pub routes: Arc<RouteTable>,
    /// CORS for the token, revocation and metadata endpoints: the origins of
    /// the clients' redirect URIs (browser apps). `None` when no client has one.
    pub endpoint_cors: Option<Arc<CorsPolicy>>,
    /// Computed at validation; see [`ConfigWarning`].
    pub warnings: Vec<ConfigWarning>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long requests in flight may run on after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Upper bound on the bytes of a request head.
    pub max_header_bytes: usize,
    /// Threads serving connections, each with its own runtime.
    pub workers: usize,
    /// Open client connections at most; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// Open connections one client address may hold (trusted proxies exempt).
    pub max_connections_per_ip: usize,
    /// A request body for the gateway's own endpoints must arrive within this.
    pub body_read_timeout: Duration,
    /// Peers (load balancers) whose `X-Forwarded-For` / `Forwarded` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `/healthz` and `/readyz`, never on the public listener.
    pub admin_listen: Option<SocketAddr>,
    /// TLS on the public listener (TLS 1.2 and 1.3, ALPN h2 and http/1.1); the
    /// PEM files are read when the config is loaded, so a reload re-reads them.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub issuer: String,
    pub token_path: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub default_client: Option<String>,
    /// Threads verifying passwords (at the lowest CPU priority).
    pub password_workers: usize,
    /// Password checks that may wait for a worker before logins get 503.
    pub password_queue: usize,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub sweep_interval: Duration,
    /// Memory backend: where live tokens are saved on graceful shutdown and
    /// loaded (then deleted) at start. Relative to the config file.
    pub state_file: Option<PathBuf>,
    /// Redis backend: a cached token is trusted only while the instance heard
    /// from Redis within this.
    pub max_staleness: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    /// `redis://` or `rediss://` URL.
    Redis(String),
}

impl fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreBackend::Memory => f.write_str("memory"),
            // Never the password a URL may carry.
            StoreBackend::Redis(url) => match url
                .split_once("://")
                .and_then(|(scheme, rest)| rest.split_once('@').map(|(_, host)| (scheme, host)))
            {
                Some((scheme, host)) => write!(f, "redis {scheme}://***@{host}"),
                None => write!(f, "redis {url}"),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: Arc<str>,
    pub password_hash: String,
    pub scopes: ScopeSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    Password,
    ClientCredentials,
    RefreshToken,
    AuthorizationCode,
}

impl GrantType {
    pub fn parse(s: &str) -> Option<GrantType> {
        match s {
            "password" => Some(GrantType::Password),
            "client_credentials" => Some(GrantType::ClientCredentials),
            "refresh_token" => Some(GrantType::RefreshToken),
            "authorization_code" => Some(GrantType::AuthorizationCode),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
            GrantType::AuthorizationCode => "authorization_code",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: Arc<str>,
    /// `None`: a public client.
    pub secret_hash: Option<String>,
    pub grants: Vec<GrantType>,
    pub scopes: ScopeSet,
    pub redirect_uris: Vec<String>,
    /// May call `/auth/introspect` (RFC 7662 section 4); confidential clients only.
    pub introspect: bool,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grants.contains(&grant)
    }
}

// ----------------------------------------------------------------- loading

const DEFAULT_TOKEN_PATH: &str = "/auth/access_token";
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);
/// The gateway's endpoints at fixed paths; no route or token path may take them.
const FIXED_ENDPOINTS: [&str; 5] = [
    "/auth/authorize",
    "/auth/revoke",
    "/auth/introspect",
    "/auth/userinfo",
    "/.well-known/oauth-authorization-server",
];
const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(250);
/// Upgrade protocols a route tunnels when it names none.
const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let v = Validator { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
        v.validate(raw)
    }

    /// Logs every warning at warn level (at start and on reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("config warning: {w}");
        }
    }

    /// A short human summary, printed by `whosthat check-config`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.file.display());
        let _ = writeln!(s, "listeners:");
        let scheme = if self.server.tls.is_some() {
            "https"
        } else {
            "http "
        };
        let _ = writeln!(s, "  {scheme} {}", self.server.listen);
        if let Some(a) = self.server.admin_listen {
            let _ = writeln!(s, "  admin {a} (/healthz, /readyz, /metrics)");
        }
        let _ = writeln!(
            s,
            "token endpoint: {} (issuer {})",
            self.oauth.token_path, self.oauth.issuer
        );
        let _ = writeln!(s, "store: {}", self.store.backend);
        let _ = writeln!(s, "routes ({}):", self.routes.routes().len());
        for r in self.routes.routes() {
            let ups: Vec<String> = r.upstreams.iter().map(|u| u.to_string()).collect();
            let auth = if r.auth {
                if r.scopes.is_empty() {
                    "token".to_string()
                } else {
                    format!("token with scopes [{}]", r.scopes)
                }
            } else {
                "public".to_string()
            };
            let methods = if r.methods.is_empty() {
                "*".to_string()
            } else {
                r.methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                s,
                "  {:<20} {:<8} {} -> {}{}",
                r.prefix,
                methods,
                auth,
                ups.join(", "),
                if r.strip_prefix {
                    " (prefix stripped)"
                } else {
                    ""
                }
            );
            if let Some(l) = &r.rate_limit {
                let spec = &l.spec;
                let _ = writeln!(
                    s,
                    "  {:<29} rate limit {} per {} by {}, {} at once",
                    "",
                    spec.requests,
                    humantime::format_duration(spec.per),
                    spec.key.as_str(),
                    spec.burst
                );
            }
            if let Some(c) = &r.cors {
                let origins = if c.any {
                    "*".to_string()
                } else {
                    c.origins.join(", ")
                };
                let _ = writeln!(s, "  {:<29} cors for {origins}", "");
            }
        }
        // The same rows as `user list` and `client list`.
        let _ = writeln!(s, "users ({}):", self.users.len());
        for row in crate::listing::user_rows(self.users.values()) {
            let _ = writeln!(s, "  {row}");
        }
        let _ = writeln!(s, "clients ({}):", self.clients.len());
        for row in crate::listing::client_rows(self.clients.values()) {
            let _ = writeln!(s, "  {row}");
        }
        s
    }
}

/// The items of an optional spanned list, each with the list's span.
fn spanned_items(
    v: &Option<Spanned<Vec<String>>>,
) -> impl Iterator<Item = (&String, Range<usize>)> {
    v.iter()
        .flat_map(|l| l.get_ref().iter().map(move |item| (item, l.span())))
}

/// The dotted path of the key at byte `offset` of a TOML text, read the way a
/// person would: the table header in force (`[[routes]]` counted, so the
/// second is `routes[1]`), the key on that line, and the key inside an inline
/// table when the offset is within one. `None` when no key is there.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let end = line_start + line.len();
        let trimmed = line.trim();
        let header = |t: &str| t.trim().trim_matches('"').to_string();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|t| t.split_once("]]").map(|(n, _)| header(n)))
        {
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            if offset < end {
                return Some(table);
            }
        } else if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|t| t.split_once(']').map(|(n, _)| header(n)))
        {
            table = name;
            if offset < end {
                return Some(table);
            }
        } else if offset < end {
            let (key, rest) = line.split_once('=')?;
            let key = key.trim().trim_matches('"');
            if key.is_empty() || key.starts_with('#') {
                return None;
            }
            let mut path = if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
            // Inside `{ a = 1, b = 2 }`: the last inner key before the offset.
            let within = offset.saturating_sub(line_start + key.len() + 1);
            let before = rest.get(..within.min(rest.len())).unwrap_or(rest);
            if let Some(k) = before.rfind('{').and_then(|i| {
                before[i + 1..]
                    .rsplit([',', '{'])
                    .find_map(|part| part.split_once('=').map(|(k, _)| k.trim()))
                    .filter(|k| !k.is_empty())
            }) {
                path = format!("{path}.{}", k.trim_matches('"'));
            }
            return Some(path);
        }
        line_start = end;
    }
    None
}

/// The CORS policy of the endpoints browser apps call (token, revocation,
/// metadata): the origins of every client's redirect URIs, POST and GET, the
/// `Authorization` and `Content-Type` headers, no credentials (cookies play no
/// part there).
fn endpoint_cors(clients: &HashMap<String, Arc<Client>>) -> Option<Arc<CorsPolicy>> {
    let mut origins: Vec<String> = clients
        .values()
        .flat_map(|c| c.redirect_uris.iter())
        .filter_map(|u| crate::cors::origin_of(u))
        .collect();
    origins.sort();
    origins.dedup();
    if origins.is_empty() {
        return None;
    }
    Some(Arc::new(CorsPolicy::new(
        origins,
        vec![http::Method::GET, http::Method::POST],
        vec!["authorization".into(), "content-type".into()],
        Duration::from_secs(600),
        false,
    )))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct Validator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Validator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: Some(self.line_of(span.start)),
            key: Some(key.into()),
            message: msg.into(),
        }
    }

    /// Turns a toml/serde error into one naming file, line and the key's whole
    /// path (`routes[1].scopes`, `routes[0].rate_limit.requests`, `store`).
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, key) = match e.span() {
            Some(span) => (
                Some(self.line_of(span.start)),
                key_path_at(self.text, span.start),
            ),
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            key,
            message: e.message().trim().to_string(),
        }
    }

    /// Loads the certificate chain and key named by `server.tls` (paths relative
    /// to the config file) into a rustls server config.
    fn tls(&self, t: &Spanned<RawTls>) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let base = self.file.parent().unwrap_or(Path::new("."));
        let raw = t.get_ref();
        let (cert_path, key_path) = (base.join(&raw.cert), base.join(&raw.key));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                self.err(
                    t.span(),
                    "server.tls.cert",
                    format!("cannot read {}: {e}", cert_path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(self.err(
                t.span(),
                "server.tls.cert",
                format!("{} holds no certificate", cert_path.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
            self.err(
                t.span(),
                "server.tls.key",
                format!("cannot read {}: {e}", key_path.display()),
            )
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| self.err(t.span(), "server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            self.err(
                t.span(),
                "server.tls",
                format!("the certificate and key do not make a TLS config: {e}"),
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// TLS to upstreams that trust the CA certificates in `file` (PEM, relative to
    /// the config file) besides the webpki roots.
    fn upstream_tls(
        &self,
        file: &Spanned<String>,
        key: &str,
    ) -> Result<crate::proxy::UpstreamTls, ConfigError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let path = self
            .file
            .parent()
            .unwrap_or(Path::new("."))
            .join(file.get_ref());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                self.err(
                    file.span(),
                    key,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(self.err(
                file.span(),
                key,
                format!("{} holds no usable CA certificate", path.display()),
            ));
        }
        Ok(crate::proxy::upstream_tls(roots))
    }

    fn duration(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.err(
                v.span(),
                key,
                format!(
                    "`{}` is not a duration like \"90s\", \"15m\", \"1h\" or \"14d\": {e}",
                    v.get_ref()
                ),
            )
        })?;
        if d.is_zero() {
            return Err(self.err(v.span(), key, "must be longer than zero"));
        }
        // Token expiry times are unix seconds plus a lifetime: keep them far from overflow.
        if d > MAX_DURATION {
            return Err(self.err(v.span(), key, "must be at most 10 years"));
        }
        Ok(d)
    }

    fn opt_duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            Some(v) => self.duration(v, key),
            None => Ok(default),
        }
    }

    fn positive(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: usize,
        max: usize,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) => {
                let val = *n.get_ref();
                if val < min as i64 || val > max as i64 {
                    Err(self.err(n.span(), key, format!("must be between {min} and {max}")))
                } else {
                    Ok(val as usize)
                }
            }
        }
    }

    fn scopes(&self, v: &Option<Spanned<Vec<String>>>, key: &str) -> Result<ScopeSet, ConfigError> {
        let Some(v) = v else {
            return Ok(ScopeSet::default());
        };
        for s in v.get_ref() {
            if !is_valid_scope_token(s) {
                return Err(self.err(
                    v.span(),
                    key,
                    format!("`{s}` is not a valid scope (RFC 6749 section 3.3: printable ASCII, no space, `\"` or `\\`)"),
                ));
            }
        }
        Ok(ScopeSet::from_iter(v.get_ref().iter().map(String::as_str)))
    }

    /// A list of CIDR blocks (`10.0.0.0/8`) or single addresses (`10.0.0.1`).
    fn cidrs(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        let mut out = Vec::new();
        for (item, span) in spanned_items(v) {
            let net = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.err(
                        span,
                        key,
                        format!("`{item}` is not an address or CIDR block like \"10.0.0.0/8\""),
                    )
                })?;
            out.push(net.trunc());
        }
        Ok(out)
    }

    /// `rate_limit = { requests, per, burst, key }`.
    fn rate_limit(
        &self,
        v: &Spanned<RawRateLimit>,
        auth: bool,
        key: &str,
    ) -> Result<RateLimitSpec, ConfigError> {
        let raw = v.get_ref();
        let sub = |k: &str| format!("{key}.{k}");
        let requests = *raw.requests.get_ref();
        if !(1..=i64::from(u32::MAX)).contains(&requests) {
            return Err(self.err(raw.requests.span(), sub("requests"), "must be 1 or more"));
        }
        let per = self.duration(&raw.per, &sub("per"))?;
        let burst = match &raw.burst {
            None => requests,
            Some(b) if (1..=i64::from(u32::MAX)).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                return Err(self.err(
                    b.span(),
                    sub("burst"),
                    "must be 1 or more (the requests that may arrive at once)",
                ));
            }
        };
        let kind = match &raw.key {
            None => RateKeyKind::Client,
            Some(k) => RateKeyKind::parse(k.get_ref()).ok_or_else(|| {
                self.err(
                    k.span(),
                    sub("key"),
                    format!(
                        "`{}` is not a key: use client, user or address",
                        k.get_ref()
                    ),
                )
            })?,
        };
        if !auth && kind != RateKeyKind::Address {
            return Err(self.err(
                raw.key.as_ref().map_or(v.span(), |k| k.span()),
                sub("key"),
                "a public route (auth = false) has no client or user: use key = \"address\"",
            ));
        }
        Ok(RateLimitSpec {
            requests: requests as u32,
            per,
            burst: burst as u32,
            key: kind,
        })
    }

    /// `cors = { origins, methods, headers, max_age, credentials }`.
    fn cors(
        &self,
        v: &Spanned<RawCors>,
        route_methods: &[http::Method],
        key: &str,
    ) -> Result<CorsPolicy, ConfigError> {
        let raw = v.get_ref();
        let sub = |k: &str| format!("{key}.{k}");
        let origins = raw.origins.get_ref();
        if origins.is_empty() {
            return Err(self.err(
                raw.origins.span(),
                sub("origins"),
                "name at least one origin",
            ));
        }
        for o in origins {
            if o != "*" && !crate::cors::is_origin(o) {
                return Err(self.err(
                    raw.origins.span(),
                    sub("origins"),
                    format!("`{o}` is not an origin like \"https://app.example\" (scheme, host, port; no path)"),
                ));
            }
        }
        let credentials = raw.credentials.unwrap_or(false);
        if credentials && origins.iter().any(|o| o == "*") {
            return Err(self.err(
                raw.origins.span(),
                sub("origins"),
                "\"*\" cannot go with credentials = true (the Fetch standard forbids it): list the origins",
            ));
        }
        let mut methods = Vec::new();
        for (m, span) in spanned_items(&raw.methods) {
            methods.push(
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    self.err(span, sub("methods"), format!("`{m}` is not an HTTP method"))
                })?,
            );
        }
        if raw.methods.is_none() {
            methods = if route_methods.is_empty() {
                ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            } else {
                route_methods.to_vec()
            };
        }
        let mut headers = Vec::new();
        for (h, span) in spanned_items(&raw.headers) {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(self.err(span, sub("headers"), format!("`{h}` is not a header name")));
            }
            headers.push(h.to_ascii_lowercase());
        }
        if raw.headers.is_none() {
            headers = vec!["authorization".into(), "content-type".into()];
        }
        let max_age = self.opt_duration(&raw.max_age, &sub("max_age"), Duration::from_secs(600))?;
        Ok(CorsPolicy::new(
            origins.clone(),
            methods,
            headers,
            max_age,
            credentials,
        ))
    }

    /// Upgrade protocols a route tunnels (lower case); `h2c` is never one of them.
    fn upgrades(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = v else {
            return Ok(DEFAULT_UPGRADES.iter().map(|s| s.to_string()).collect());
        };
        let mut out = Vec::new();
        for item in list.get_ref() {
            let p = item.trim().to_ascii_lowercase();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(self.err(
                    list.span(),
                    key,
                    format!("`{item}` is not a protocol name like \"websocket\""),
                ));
            }
            if p == "h2c" || p.starts_with("h2c/") {
                return Err(self.err(
                    list.span(),
                    key,
                    "h2c is never tunnelled: an upgraded h2c connection would carry requests the gateway never checks",
                ));
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn phc(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        crate::password::check_phc(v.get_ref()).map_err(|why| {
            self.err(
                v.span(),
                key,
                format!("not an argon2 PHC string ({why}); make one with `whosthat hash-password`"),
            )
        })?;
        Ok(v.get_ref().clone())
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        // [server]
        let server_raw = raw.server.get_ref();
        let listen: SocketAddr = server_raw.listen.get_ref().parse().map_err(|_| {
            self.err(
                server_raw.listen.span(),
                "server.listen",
                format!(
                    "`{}` is not an address like \"127.0.0.1:8080\"",
                    server_raw.listen.get_ref()
                ),
            )
        })?;
        let server = ServerConfig {
            listen,
            header_read_timeout: self.opt_duration(
                &server_raw.header_read_timeout,
                "server.header_read_timeout",
                Duration::from_secs(10),
            )?,
            shutdown_timeout: self.opt_duration(
                &server_raw.shutdown_timeout,
                "server.shutdown_timeout",
                Duration::from_secs(10),
            )?,
            max_header_bytes: self.positive(
                &server_raw.max_header_bytes,
                "server.max_header_bytes",
                8192,
                1 << 20,
                DEFAULT_MAX_HEADER_BYTES,
            )?,
            workers: self.positive(&server_raw.workers, "server.workers", 1, 1024, cores())?,
            max_connections: self.positive(
                &server_raw.max_connections,
                "server.max_connections",
                1,
                10_000_000,
                50_000,
            )?,
            max_connections_per_ip: self.positive(
                &server_raw.max_connections_per_ip,
                "server.max_connections_per_ip",
                1,
                10_000_000,
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            )?,
            body_read_timeout: self.opt_duration(
                &server_raw.body_read_timeout,
                "server.body_read_timeout",
                Duration::from_secs(10),
            )?,
            trusted_proxies: self.cidrs(&server_raw.trusted_proxies, "server.trusted_proxies")?,
            tls: match &server_raw.tls {
                None => None,
                Some(t) => Some(self.tls(t)?),
            },
            admin_listen: match &server_raw.admin_listen {
                None => None,
                Some(a) => Some(a.get_ref().parse().map_err(|_| {
                    self.err(
                        a.span(),
                        "server.admin_listen",
                        format!(
                            "`{}` is not an address like \"127.0.0.1:9090\"",
                            a.get_ref()
                        ),
                    )
                })?),
            },
        };

        // [oauth]
        let oauth_default = RawOAuth::default();
        let oauth_raw = raw
            .oauth
            .as_ref()
            .map(|o| o.get_ref())
            .unwrap_or(&oauth_default);
        let token_path = match &oauth_raw.token_path {
            Some(p) => {
                let path = p.get_ref();
                if !path.starts_with('/')
                    || path.len() < 2
                    || crate::routes::normalize_path(path).ok().as_deref() != Some(path.as_str())
                {
                    return Err(self.err(
                        p.span(),
                        "oauth.token_path",
                        format!(
                            "`{path}` must be a plain absolute path like \"/auth/access_token\""
                        ),
                    ));
                }
                if FIXED_ENDPOINTS.contains(&path.as_str()) {
                    return Err(self.err(
                        p.span(),
                        "oauth.token_path",
                        format!("`{path}` is another endpoint's path"),
                    ));
                }
                path.clone()
            }
            None => DEFAULT_TOKEN_PATH.to_string(),
        };
        let issuer = match &oauth_raw.issuer {
            Some(i) => {
                let uri: http::Uri = i.get_ref().parse().map_err(|_| {
                    self.err(
                        i.span(),
                        "oauth.issuer",
                        format!("`{}` is not a URL", i.get_ref()),
                    )
                })?;
                if !matches!(uri.scheme_str(), Some("http" | "https"))
                    || uri.authority().is_none()
                    || uri.query().is_some()
                    || i.get_ref().contains('#')
                {
                    return Err(self.err(
                        i.span(),
                        "oauth.issuer",
                        "must be an http(s) URL with a host and no query or fragment (RFC 8414 section 2)",
                    ));
                }
                i.get_ref().trim_end_matches('/').to_string()
            }
            None => format!("http://{listen}"),
        };
        let workers_default = cores();
        let mut oauth = OAuthConfig {
            issuer,
            token_path,
            access_token_ttl: self.opt_duration(
                &oauth_raw.access_token_ttl,
                "oauth.access_token_ttl",
                Duration::from_secs(3600),
            )?,
            refresh_token_ttl: self.opt_duration(
                &oauth_raw.refresh_token_ttl,
                "oauth.refresh_token_ttl",
                Duration::from_secs(14 * 86400),
            )?,
            default_client: None,
            password_workers: self.positive(
                &oauth_raw.password_workers,
                "oauth.password_workers",
                1,
                256,
                workers_default,
            )?,
            password_queue: self.positive(
                &oauth_raw.password_queue,
                "oauth.password_queue",
                1,
                100_000,
                256,
            )?,
        };

        // [store]
        let store = match &raw.store {
            None => StoreConfig {
                backend: StoreBackend::Memory,
                sweep_interval: Duration::from_secs(30),
                state_file: None,
                max_staleness: DEFAULT_MAX_STALENESS,
            },
            Some(s) => {
                let s = s.get_ref();
                let backend = match (&s.backend, &s.redis_url) {
                    (Some(b), url) if b.get_ref() == "redis" => {
                        let url = url.as_ref().ok_or_else(|| {
                            self.err(
                                b.span(),
                                "store.redis_url",
                                "the redis backend needs store.redis_url",
                            )
                        })?;
                        let u = url.get_ref();
                        if !(u.starts_with("redis://") || u.starts_with("rediss://"))
                            || ::redis::Client::open(u.as_str()).is_err()
                        {
                            return Err(self.err(
                                url.span(),
                                "store.redis_url",
                                "must be a redis:// or rediss:// URL like \"redis://127.0.0.1:6379/0\"",
                            ));
                        }
                        StoreBackend::Redis(u.clone())
                    }
                    (None, None) => StoreBackend::Memory,
                    (Some(b), None) if b.get_ref() == "memory" => StoreBackend::Memory,
                    (Some(b), Some(_)) if b.get_ref() == "memory" => {
                        return Err(self.err(
                            b.span(),
                            "store.redis_url",
                            "only used with store.backend = \"redis\"",
                        ));
                    }
                    (None, Some(url)) => {
                        return Err(self.err(
                            url.span(),
                            "store.backend",
                            "store.redis_url is set: say backend = \"redis\"",
                        ));
                    }
                    (Some(b), _) => {
                        return Err(self.err(
                            b.span(),
                            "store.backend",
                            format!(
                                "`{}` is not a backend: use \"memory\" or \"redis\"",
                                b.get_ref()
                            ),
                        ));
                    }
                };
                let state_file = match &s.state_file {
                    None => None,
                    Some(_) if backend != StoreBackend::Memory => {
                        return Err(self.err(
                            s.state_file.as_ref().map_or(0..0, |f| f.span()),
                            "store.state_file",
                            "only used with store.backend = \"memory\" (Redis keeps the tokens itself)",
                        ));
                    }
                    Some(f) if f.get_ref().trim().is_empty() => {
                        return Err(self.err(f.span(), "store.state_file", "must be a file path"));
                    }
                    Some(f) => Some(
                        self.file
                            .parent()
                            .unwrap_or(Path::new("."))
                            .join(f.get_ref()),
                    ),
                };
                StoreConfig {
                    backend,
                    state_file,
                    sweep_interval: self.opt_duration(
                        &s.sweep_interval,
                        "store.sweep_interval",
                        Duration::from_secs(30),
                    )?,
                    max_staleness: self.opt_duration(
                        &s.max_staleness,
                        "store.max_staleness",
                        DEFAULT_MAX_STALENESS,
                    )?,
                }
            }
        };

        // [[users]]
        let mut users = HashMap::new();
        for (i, u) in raw.users.iter().enumerate() {
            let u = u.get_ref();
            let key = |k: &str| format!("users[{i}].{k}");
            let name = u.name.get_ref();
            if name.is_empty() || name.chars().any(|c| c.is_control()) {
                return Err(self.err(
                    u.name.span(),
                    key("name"),
                    "must be a non-empty name without control characters",
                ));
            }
            let user = User {
                name: Arc::from(name.as_str()),
                password_hash: self.phc(&u.password_hash, &key("password_hash"))?,
                scopes: self.scopes(&u.scopes, &key("scopes"))?,
            };
            if users.insert(name.clone(), Arc::new(user)).is_some() {
                return Err(self.err(
                    u.name.span(),
                    key("name"),
                    format!("user `{name}` is defined twice"),
                ));
            }
        }

        // [[clients]]
        let mut clients = HashMap::new();
        for (i, c) in raw.clients.iter().enumerate() {
            let c = c.get_ref();
            let key = |k: &str| format!("clients[{i}].{k}");
            let id = c.id.get_ref();
            if id.is_empty() || id.chars().any(|ch| ch.is_control()) {
                return Err(self.err(
                    c.id.span(),
                    key("id"),
                    "must be a non-empty id without control characters",
                ));
            }
            let mut grants = Vec::new();
            for g in c.grants.get_ref() {
                let grant = GrantType::parse(g).ok_or_else(|| {
                    self.err(
                        c.grants.span(),
                        key("grants"),
                        format!("`{g}` is not a grant: use password, client_credentials, refresh_token or authorization_code"),
                    )
                })?;
                if !grants.contains(&grant) {
                    grants.push(grant);
                }
            }
            let secret_hash = match &c.secret_hash {
                Some(h) => Some(self.phc(h, &key("secret_hash"))?),
                None => None,
            };
            if secret_hash.is_none() && grants.contains(&GrantType::ClientCredentials) {
                return Err(self.err(
                    c.grants.span(),
                    key("grants"),
                    "client_credentials needs a confidential client (set secret_hash)",
                ));
            }
            let mut redirect_uris = Vec::new();
            for (r, span) in spanned_items(&c.redirect_uris) {
                let uri: http::Uri = r.parse().map_err(|_| {
                    self.err(
                        span.clone(),
                        key("redirect_uris"),
                        format!("`{r}` is not a URL"),
                    )
                })?;
                if uri.scheme().is_none() || r.contains('#') {
                    return Err(self.err(
                        span,
                        key("redirect_uris"),
                        format!("`{r}` must be an absolute URL without a fragment"),
                    ));
                }
                redirect_uris.push(r.clone());
            }
            if grants.contains(&GrantType::AuthorizationCode) && redirect_uris.is_empty() {
                return Err(self.err(
                    c.grants.span(),
                    key("redirect_uris"),
                    "authorization_code needs at least one redirect URI",
                ));
            }
            let introspect = match &c.introspect {
                Some(flag) if *flag.get_ref() && secret_hash.is_none() => {
                    return Err(self.err(
                        flag.span(),
                        key("introspect"),
                        "only a confidential client (with secret_hash) may introspect",
                    ));
                }
                Some(flag) => *flag.get_ref(),
                None => false,
            };
            let client = Client {
                id: Arc::from(id.as_str()),
                introspect,
                secret_hash,
                grants,
                scopes: self.scopes(&c.scopes, &key("scopes"))?,
                redirect_uris,
            };
            if clients.insert(id.clone(), Arc::new(client)).is_some() {
                return Err(self.err(
                    c.id.span(),
                    key("id"),
                    format!("client `{id}` is defined twice"),
                ));
            }
        }
        if let Some(dc) = &oauth_raw.default_client {
            match clients.get(dc.get_ref()) {
                None => {
                    return Err(self.err(
                        dc.span(),
                        "oauth.default_client",
                        format!("no [[clients]] entry has id `{}`", dc.get_ref()),
                    ));
                }
                Some(c) if !c.is_public() => {
                    return Err(self.err(
                        dc.span(),
                        "oauth.default_client",
                        format!(
                            "client `{}` is confidential; the default client must be public",
                            dc.get_ref()
                        ),
                    ));
                }
                Some(_) => oauth.default_client = Some(dc.get_ref().clone()),
            }
        }

        // [[routes]]
        let mut routes = Vec::new();
        // Lower-cased: prefixes match ignoring ASCII case.
        let mut prefixes: HashSet<String> = HashSet::new();
        let mut prefix_spans = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let span = r.span();
            let r = r.get_ref();
            let key = |k: &str| format!("routes[{i}].{k}");
            let raw_prefix = r.prefix.get_ref();
            let prefix = crate::routes::normalize_prefix(raw_prefix).map_err(|why| {
                self.err(
                    r.prefix.span(),
                    key("prefix"),
                    format!("`{raw_prefix}` {why}"),
                )
            })?;
            if prefix.eq_ignore_ascii_case(&oauth.token_path)
                || FIXED_ENDPOINTS
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(&prefix))
            {
                return Err(self.err(
                    r.prefix.span(),
                    key("prefix"),
                    "is the path of one of the gateway's own endpoints",
                ));
            }
            if !prefixes.insert(prefix.to_ascii_lowercase()) {
                return Err(self.err(
                    r.prefix.span(),
                    key("prefix"),
                    format!(
                        "another route already has prefix `{prefix}` (prefixes match ignoring case)"
                    ),
                ));
            }
            prefix_spans.push(r.prefix.span());
            let ups = r.upstream.as_ref().ok_or_else(|| {
                self.err(
                    span.clone(),
                    key("upstream"),
                    "a route needs an upstream URL",
                )
            })?;
            let list: Vec<&String> = match ups.get_ref() {
                RawUpstreams::One(u) => vec![u],
                RawUpstreams::Many(v) => v.iter().collect(),
            };
            if list.is_empty() {
                return Err(self.err(
                    ups.span(),
                    key("upstream"),
                    "a route needs at least one upstream URL",
                ));
            }
            let mut upstreams = Vec::new();
            for u in list {
                upstreams.push(Upstream::parse(u).map_err(|why| {
                    self.err(ups.span(), key("upstream"), format!("`{u}` {why}"))
                })?);
            }
            let mut methods = Vec::new();
            for (m, span) in spanned_items(&r.methods) {
                let method =
                    http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        self.err(span, key("methods"), format!("`{m}` is not an HTTP method"))
                    })?;
                methods.push(method);
            }
            let auth = r.auth.unwrap_or(true);
            let scopes = self.scopes(&r.scopes, &key("scopes"))?;
            let prefix_for_limits = prefix.clone();
            let methods_for_cors = methods.clone();
            if !auth && !scopes.is_empty() {
                return Err(self.err(
                    r.scopes.as_ref().map_or(span.clone(), |s| s.span()),
                    key("scopes"),
                    "a public route (auth = false) cannot require scopes",
                ));
            }
            routes.push(Route {
                prefix,
                upstreams,
                strip_prefix: r.strip_prefix,
                scopes,
                methods,
                auth,
                timeout: self.opt_duration(&r.timeout, &key("timeout"), Duration::from_secs(30))?,
                next_upstream: Default::default(),
                connect_timeout: self.opt_duration(
                    &r.connect_timeout,
                    &key("connect_timeout"),
                    Duration::from_secs(5),
                )?,
                cooldown: self.opt_duration(
                    &r.cooldown,
                    &key("cooldown"),
                    Duration::from_secs(10),
                )?,
                max_body_bytes: match &r.max_body_bytes {
                    None => None,
                    Some(n) if *n.get_ref() >= 0 => Some(*n.get_ref() as u64),
                    Some(n) => {
                        return Err(self.err(n.span(), key("max_body_bytes"), "must be 0 or more"));
                    }
                },
                tls: match &r.ca_file {
                    None => None,
                    Some(f) => Some(self.upstream_tls(f, &key("ca_file"))?),
                },
                upgrades: self.upgrades(&r.upgrades, &key("upgrades"))?,
                rate_limit: match &r.rate_limit {
                    None => None,
                    Some(rl) => Some(Arc::new(RateLimiter::new(
                        self.rate_limit(rl, auth, &key("rate_limit"))?,
                        &prefix_for_limits,
                    ))),
                },
                cors: match &r.cors {
                    None => None,
                    Some(c) => Some(Arc::new(self.cors(c, &methods_for_cors, &key("cors"))?)),
                },
                // Given by RouteTable::new.
                stats: Default::default(),
            });
        }

        let routes = Arc::new(RouteTable::new(routes));
        let warnings = crate::shadowing::analyse(&routes)
            .into_iter()
            .map(|found| ConfigWarning {
                file: self.file.to_path_buf(),
                line: Some(self.line_of(prefix_spans[found.weaker].start)),
                key: Some(format!("routes[{}].prefix", found.weaker)),
                message: found.message,
            })
            .collect();
        Ok(Config {
            file: self.file.to_path_buf(),
            server,
            oauth,
            store,
            endpoint_cors: endpoint_cors(&clients),
            users,
            clients,
            routes,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ckw0KX5ivcbTIRZv6y2QOwF0P5pjSyCGbaXWfGKmCqE";

    fn base() -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[[users]]
name = "alice"
password_hash = "{HASH}"
scopes = ["read"]

[[clients]]
id = "cli"
grants = ["password", "refresh_token"]
scopes = ["read"]

[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:9000"
"#
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.toml"))
    }

    #[test]
    fn parse_errors_name_the_whole_key_path() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n\n[[routes]]\nprefix = \"/b\"\nupstream = \"http://127.0.0.1:1\"\nscopes = \"read\"\nrate_limit = { requests = \"x\", per = \"1s\" }\n";
        let at = |needle: &str| key_path_at(text, text.find(needle).unwrap());
        assert_eq!(at("\"read\"").as_deref(), Some("routes[1].scopes"));
        assert_eq!(
            at("\"x\"").as_deref(),
            Some("routes[1].rate_limit.requests")
        );
        assert_eq!(at("\"1s\"").as_deref(), Some("routes[1].rate_limit.per"));
        assert_eq!(at("\"/a\"").as_deref(), Some("routes[0].prefix"));
        assert_eq!(at("\"127.0.0.1:0\"").as_deref(), Some("server.listen"));
        assert_eq!(at("[server]").as_deref(), Some("server"));
        let e = parse(&text.replace("rate_limit = { requests = \"x\", per = \"1s\" }\n", ""))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[1].scopes"));
        assert_eq!(e.line, Some(11));
        let dup = parse("[server]\nlisten = \"127.0.0.1:0\"\n[store]\nbackend = \"memory\"\n[store]\nbackend = \"memory\"\n").unwrap_err();
        assert_eq!(dup.key.as_deref(), Some("store"));
    }

    #[test]
    fn base_config_is_valid() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.oauth.token_path, "/auth/access_token");
        assert_eq!(c.routes.routes().len(), 1);
        assert!(c.routes.routes()[0].auth);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = base().replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nlisten_port = 3",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("server.listen_port"));
        assert!(
            e.to_string()
                .starts_with("gw.toml:4: key `server.listen_port`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_is_refused() {
        let text = base() + "timeout = \"soon\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[0].timeout"));
        assert_eq!(e.line, Some(text.lines().count()));
    }

    #[test]
    fn bad_upstream_url_is_refused() {
        let text = base().replace("http://127.0.0.1:9000", "ftp://x");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[0].upstream"));
    }

    #[test]
    fn route_without_upstream_is_refused() {
        let text = base() + "\n[[routes]]\nprefix = \"/b\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[1].upstream"));
    }

    #[test]
    fn duplicate_names_and_prefixes_are_refused() {
        let dup_user =
            base() + &format!("\n[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n");
        assert_eq!(
            parse(&dup_user).unwrap_err().key.as_deref(),
            Some("users[1].name")
        );
        let dup_client = base() + "\n[[clients]]\nid = \"cli\"\ngrants = []\n";
        assert_eq!(
            parse(&dup_client).unwrap_err().key.as_deref(),
            Some("clients[1].id")
        );
        // "/api" and "/api/" are the same prefix once normalised.
        let dup_route =
            base() + "\n[[routes]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n";
        let e = parse(&dup_route).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[1].prefix"));
    }

    #[test]
    fn prefixes_equal_ignoring_case_are_duplicates() {
        let dup = base() + "\n[[routes]]\nprefix = \"/API\"\nupstream = \"http://127.0.0.1:1\"\n";
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[1].prefix"));
        assert!(e.message.contains("ignoring case"), "{e}");
        // An endpoint's path in another case is still the endpoint's.
        let ep = base()
            + "\n[[routes]]\nprefix = \"/Auth/Access_Token\"\nupstream = \"http://127.0.0.1:1\"\n";
        assert_eq!(
            parse(&ep).unwrap_err().key.as_deref(),
            Some("routes[1].prefix")
        );
    }

    #[test]
    fn overlapping_routes_are_warnings_with_line_and_key() {
        assert!(parse(&base()).unwrap().warnings.is_empty());
        let text = base().replace(
            "upstream = \"http://127.0.0.1:9000\"\n",
            "upstream = \"http://127.0.0.1:9000\"\nstrip_prefix = true\n",
        ) + "\n[[routes]]\nprefix = \"/public/\"\nupstream = \"http://127.0.0.1:9000\"\nstrip_prefix = true\nauth = false\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert_eq!(w.key.as_deref(), Some("routes[1].prefix"));
        let line = text[..text.find("prefix = \"/public/\"").unwrap()]
            .matches('\n')
            .count()
            + 1;
        assert_eq!(w.line, Some(line));
        assert!(
            w.to_string().starts_with(&format!(
                "gw.toml:{line}: key `routes[1].prefix`: routes `/api`"
            )),
            "{w}"
        );
    }

    #[test]
    fn bad_hash_and_scope_are_refused() {
        let text = base().replace(HASH, "plaintext");
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("users[0].password_hash")
        );
        let text = base().replace(
            "scopes = [\"read\"]\n\n[[clients]]",
            "scopes = [\"a b\"]\n\n[[clients]]",
        );
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("users[0].scopes")
        );
    }

    #[test]
    fn default_client_must_exist() {
        let text = base() + "\n[oauth]\ndefault_client = \"nope\"\n";
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("oauth.default_client")
        );
    }

    #[test]
    fn store_settings_are_checked() {
        let key = |store: &str| {
            parse(&(base() + "\n[store]\n" + store))
                .err()
                .and_then(|e| e.key)
        };
        assert_eq!(
            key("backend = \"redis\"\n").as_deref(),
            Some("store.redis_url")
        );
        assert_eq!(
            key("backend = \"redis\"\nredis_url = \"http://x\"\n").as_deref(),
            Some("store.redis_url")
        );
        assert_eq!(
            key("redis_url = \"redis://x/0\"\n").as_deref(),
            Some("store.backend")
        );
        assert_eq!(
            key("backend = \"memory\"\nredis_url = \"redis://x/0\"\n").as_deref(),
            Some("store.redis_url")
        );
        assert_eq!(
            key("backend = \"disk\"\n").as_deref(),
            Some("store.backend")
        );
        assert_eq!(
            key("sweep_interval = \"400y\"\n").as_deref(),
            Some("store.sweep_interval")
        );
    }

    #[test]
    fn the_summary_never_shows_a_redis_password() {
        let text = base()
            + "\n[store]\nbackend = \"redis\"\nredis_url = \"redis://:hunter2@10.0.0.5:6379/0\"\n";
        let summary = parse(&text).unwrap().summary();
        assert!(
            summary.contains("redis redis://***@10.0.0.5:6379/0"),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"));
    }
}
