//! gateway.toml: raw serde structs, then validation into checked types.
//!
//! Every error names the file, the line and the key, so a bad config is refused
//! at startup with something a person can act on.
//!
//! Where things are:
//! - this file: the checked types the rest of the gateway reads ([`Config`] and
//!   its parts), [`ConfigError`], loading, and the validation driver that calls
//!   one validator per section;
//! - `raw.rs`: the serde types, as the file spells them;
//! - `server.rs`, `oauth.rs`, `store.rs`, `users.rs`, `clients.rs`, `routes.rs`:
//!   one validator per TOML section, and the rules the CLI shares with them;
//! - `values.rs`: checks shared by sections (durations, counts, scopes, hashes);
//! - `load.rs`: what validation leaves to do: reading the files the config names
//!   (TLS certificate and key, CA files) and building the TLS configs;
//! - `summary.rs`: the summary `check-config` prints.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::cors::CorsPolicy;
use crate::routes::RouteTable;
use crate::scope::ScopeSet;

pub(crate) mod clients;
mod identity;
pub(crate) mod listing;
mod load;
pub(crate) mod oauth;
mod raw;
pub(crate) mod routes;
mod server;
mod store;
mod summary;
pub(crate) mod users;
pub(crate) mod values;

use raw::RawConfig;

pub use crate::grant::{DEVICE_CODE_GRANT, GrantType};
pub use crate::store::RedisTopology;
pub use identity::UserClaims;

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
    /// `signing_keys`: the first signs, all are published at
    /// `/.well-known/jwks.json`. `None`: assertions and OpenID Connect are off.
    pub signing: Option<Arc<crate::jose::KeySet>>,
    /// How long a device code and its user code live (RFC 8628 `expires_in`).
    pub device_code_ttl: Duration,
    /// The polling interval a device authorization starts with (`interval`).
    pub device_poll_interval: Duration,
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
    /// One server, Sentinel or Cluster.
    Redis(RedisTopology),
}

impl fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreBackend::Memory => f.write_str("memory"),
            // Never the password a URL may carry.
            StoreBackend::Redis(t) => t.fmt(f),
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: Arc<str>,
    pub password_hash: String,
    pub scopes: ScopeSet,
    /// OpenID Connect claims (`claims = { name, email, email_verified, groups }`).
    pub claims: UserClaims,
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
    /// Public keys for `private_key_jwt` (RFC 7523 section 2.2), read from the
    /// file `jwks` names when the config is (re)loaded.
    pub jwks: Option<Arc<crate::jose::client_keys::ClientKeys>>,
    /// Every token of this client must be DPoP-bound (RFC 9449).
    pub require_dpop: bool,
}

impl Client {
    /// A client with neither a secret nor registered keys.
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none() && self.jwks.is_none()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grants.contains(&grant)
    }
}

// ----------------------------------------------------------------- loading
// ----------------------------------------------------------------- loading

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

    /// Validates config text, then reads the files it names (TLS, CA files:
    /// relative to `file`, which also names the file in error messages).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let v = Validator { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
        load::open(v.validate(raw)?)
    }

    /// Logs every warning at warn level (at start and on reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("config warning: {w}");
        }
    }
}

/// What validation produces: every value checked, nothing read from disk yet.
/// [`load::open`] reads the files named here and builds the [`Config`].
struct Checked {
    file: PathBuf,
    /// `tls` is `None` here; `tls_files` is what it is built from.
    server: ServerConfig,
    tls_files: Option<load::TlsFiles>,
    oauth: OAuthConfig,
    store: StoreConfig,
    users: HashMap<String, Arc<User>>,
    clients: HashMap<String, Arc<Client>>,
    routes: Vec<routes::CheckedRoute>,
    /// `oauth.signing_keys`, read by [`load::open`].
    signing_keys: Option<load::KeyFiles>,
}

/// A token restored from the state file is held to the config in force.
impl crate::store::TokenPolicy for Config {
    fn allowed(&self, user: Option<&str>, client: &str) -> Option<(Arc<str>, ScopeSet)> {
        let client = self.clients.get(client)?;
        let scope = match user {
            Some(name) => self.users.get(name)?.scopes.intersection(&client.scopes),
            None => client.scopes.clone(),
        };
        Some((client.id.clone(), scope))
    }

    fn access_token_ttl(&self) -> Duration {
        self.oauth.access_token_ttl
    }

    fn refresh_token_ttl(&self) -> Duration {
        self.oauth.refresh_token_ttl
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
            return key_on_line(line, offset - line_start, &table);
        }
        line_start = end;
    }
    None
}

/// The dotted path of the key at byte `at` of `line`, under `table`: the key
/// the line sets, and the key inside an inline table when `at` is within one.
fn key_on_line(line: &str, at: usize, table: &str) -> Option<String> {
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
    let within = at.saturating_sub(key.len() + 1);
    let before = rest.get(..within.min(rest.len())).unwrap_or(rest);
    if let Some(k) = before.rfind('{').and_then(|i| {
        before[i + 1..]
            .rsplit([',', '{'])
            .find_map(|part| part.split_once('=').map(|(k, _)| k.trim()))
            .filter(|k| !k.is_empty())
    }) {
        path = format!("{path}.{}", k.trim_matches('"'));
    }
    Some(path)
}

/// The threads a default worker or password pool gets: one per core.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The text being validated and its file: what every error needs.
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

    /// Where a value is, for a fault found after validation (see [`load`]).
    fn site(&self, span: Range<usize>, key: impl Into<String>) -> load::Site {
        load::Site {
            line: self.line_of(span.start),
            key: key.into(),
        }
    }

    /// Checks section by section, in file order; the first fault found is the error.
    fn validate(&self, raw: RawConfig) -> Result<Checked, ConfigError> {
        let (server, tls_files) = self.server(&raw.server)?;
        let oauth_raw = raw.oauth.as_ref().map(Spanned::get_ref);
        let mut oauth = self.oauth(oauth_raw, server.listen)?;
        let signing_keys = self.signing_keys(oauth_raw)?;
        let store = self.store(raw.store.as_ref())?;
        let users = self.users(&raw.users)?;
        let clients = self.clients(&raw.clients)?;
        // After the clients: it must name one of them.
        oauth.default_client = self.default_client(oauth_raw, &clients)?;
        let routes = self.routes(&raw.routes, &oauth.token_path, signing_keys.is_some())?;
        Ok(Checked {
            file: self.file.to_path_buf(),
            server,
            tls_files,
            oauth,
            store,
            users,
            clients,
            routes,
            signing_keys,
        })
    }
}

/// What the section tests share: a small valid config and a parser.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use super::{Config, ConfigError};

    pub(crate) const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ckw0KX5ivcbTIRZv6y2QOwF0P5pjSyCGbaXWfGKmCqE";

    pub(crate) fn base() -> String {
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

    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::key_path_at;
    use super::testing::{HASH, base, parse};

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
}
