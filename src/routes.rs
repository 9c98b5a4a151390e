//! The route table, and the one path interpretation used for matching and forwarding.
//!
//! A request path is normalised once ([`normalize_path`]); that exact string is what
//! routes are matched against and what goes upstream. Anything another server could
//! read a second way is refused instead of guessed at: dot segments, encoded `/` or
//! `\`, `;` parameters, `//`, segments ending in `.` or a space (IIS and ASP.NET
//! trim them), double percent-encoding (`%252e`), bytes that are not UTF-8 (overlong
//! `%C0%AE`) and text that Unicode normalisation changes (fullwidth `．`).
//! Route prefixes match ignoring ASCII case, because many upstreams (Express by
//! default, IIS, ASP.NET) do: `/svc/ADMIN` lands on the `/svc/admin` route.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use http::uri::{Authority, Scheme};

use crate::clock::now_ms;
use crate::metrics::{Labels, MAX_ROUTES, RouteStats};
use crate::scope::ScopeSet;

/// Why a path was refused (shown to the client in a 400).
pub type PathRejection = &'static str;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a request path per RFC 3986 section 6.2.2 (percent-encoded unreserved
/// characters decoded, hex digits upper-cased) and refuses ambiguous shapes.
pub fn normalize_path(raw: &str) -> Result<String, PathRejection> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("the path must start with /");
    }
    let mut out = String::with_capacity(raw.len());
    // Rare shapes, checked on the whole path after the loop.
    let (mut escaped_percent, mut escaped_high) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err("the path has a malformed percent-encoding");
                };
                let v = h << 4 | l;
                escaped_percent |= v == b'%';
                escaped_high |= v >= 0x80;
                if is_unreserved(v) {
                    out.push(v as char);
                } else if matches!(v, b'/' | b'\\' | b';') {
                    return Err("the path has an encoded '/', '\\' or ';'");
                } else if v < 0x20 || v == 0x7f {
                    return Err("the path has an encoded control character");
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            b'\\' => return Err("the path has a '\\'"),
            b';' => return Err("the path has a ';' parameter"),
            0..=0x20 | 0x7f..=0xff => {
                return Err("the path has a character that must be percent-encoded");
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    // Segment checks run on the decoded form, so `%2e%2e` is caught like `..`.
    let mut segments = out[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        if seg == "." || seg == ".." {
            return Err("the path has a '.' or '..' segment");
        }
        if seg.is_empty() && segments.peek().is_some() {
            return Err("the path has an empty segment ('//')");
        }
        // IIS and ASP.NET trim these, so `/admin./x` and `/admin%20/x` would be
        // read there as `/admin/x` while the gateway routes them elsewhere.
        if seg.ends_with('.') || seg.ends_with("%20") {
            return Err("the path has a segment ending in '.' or a space");
        }
    }
    if escaped_percent && has_double_escape(&out) {
        return Err("the path has a double percent-encoding ('%25' before an escape)");
    }
    if escaped_high {
        check_text(&out)?;
    }
    Ok(out)
}

/// A request path as [`normalize_path`] made it: the only kind of path routes
/// are matched against, endpoints recognised by, and that goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(String);

impl NormalizedPath {
    /// Normalises `raw` (see [`normalize_path`]); `Err`: why it is refused.
    pub fn new(raw: &str) -> Result<NormalizedPath, PathRejection> {
        normalize_path(raw).map(NormalizedPath)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for NormalizedPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Whether a normalised path has `%25` followed by two hex digits: an upstream
/// that decodes twice reads `%252e` as `.` and `%2561` as `a`, a second reading
/// of the path the gateway never matched.
fn has_double_escape(path: &str) -> bool {
    let b = path.as_bytes();
    path.match_indices("%25").any(|(i, _)| {
        b.get(i + 3).copied().and_then(hex_val).is_some()
            && b.get(i + 4).copied().and_then(hex_val).is_some()
    })
}

/// The text of a normalised path that has escaped bytes of 0x80 and above must be
/// UTF-8 (overlong forms such as `%C0%AE` for `.` are not: RFC 3629 section 3),
/// must be in Unicode NFKC form (servers that normalise would read fullwidth `．`,
/// `／` or `Ａ` as their ASCII twins), and must have no non-ASCII letter whose case
/// mapping is ASCII (`ı` upper-cases to `I`, `ſ` to `S`).
fn check_text(path: &str) -> Result<(), PathRejection> {
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex_val),
            b.get(i + 2).copied().and_then(hex_val),
        ) {
            (b'%', Some(h), Some(l)) => {
                decoded.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    let text = std::str::from_utf8(&decoded)
        .map_err(|_| "the path has percent-encoded bytes that are not UTF-8")?;
    if !unicode_normalization::is_nfkc(text) {
        return Err(
            "the path has characters that Unicode normalisation (NFKC) changes, such as fullwidth forms",
        );
    }
    let folds_to_ascii = |c: char| {
        !c.is_ascii()
            && (c.to_lowercase().any(|l| l.is_ascii()) || c.to_uppercase().any(|u| u.is_ascii()))
    };
    if text.chars().any(folds_to_ascii) {
        return Err("the path has a non-ASCII letter whose upper or lower case is ASCII");
    }
    Ok(())
}

/// Normalises a configured route prefix: a normalised path without a trailing `/`
/// (except the root prefix `/`).
pub fn normalize_prefix(raw: &str) -> Result<String, PathRejection> {
    let p = normalize_path(raw)?;
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// One upstream server: `http(s)://host:port[/base]`.
#[derive(Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prepended to what is forwarded, without a trailing `/` ("" for none).
    pub base_path: String,
    /// Skipped until then (unix milliseconds) after refusing or timing out.
    down_until_ms: AtomicU64,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, &'static str> {
        let uri: http::Uri = s.parse().map_err(|_| "is not a URL")?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err("must be an http:// or https:// URL"),
        };
        let authority = uri.authority().cloned().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry credentials");
        }
        if uri.query().is_some() {
            return Err("must not have a query");
        }
        let base = normalize_prefix(uri.path()).map_err(|_| "has a path that is not plain")?;
        Ok(Upstream {
            scheme,
            authority,
            base_path: if base == "/" { String::new() } else { base },
            down_until_ms: AtomicU64::new(0),
        })
    }

    fn is_down(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Takes the target out of rotation for `cooldown`.
    pub fn mark_down(&self, cooldown: Duration) {
        let until = now_ms().saturating_add(cooldown.as_millis() as u64);
        self.down_until_ms.store(until, Ordering::Relaxed);
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

#[derive(Debug, Default)]
pub struct Route {
    /// Normalised prefix, no trailing `/` (except `/`).
    pub prefix: String,
    pub upstreams: Vec<Upstream>,
    pub strip_prefix: bool,
    pub scopes: ScopeSet,
    /// Empty: every method.
    pub methods: Vec<Method>,
    pub auth: bool,
    pub timeout: Duration,
    pub next_upstream: AtomicUsize,
    /// Connecting to an upstream may take this long.
    pub connect_timeout: Duration,
    /// How long a target that refused or timed out is skipped.
    pub cooldown: Duration,
    /// Largest request body forwarded (413 above it); `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// TLS to https upstreams with a private CA (with the id upstream pools are
    /// keyed by); `None`: the webpki roots.
    pub tls: Option<crate::upstream_tls::UpstreamTls>,
    /// `Upgrade` protocols tunnelled (lower case); default `["websocket"]`.
    pub upgrades: Vec<String>,
    /// `rate_limit`: the limit and this instance's buckets (reset on reload).
    pub rate_limit: Option<std::sync::Arc<crate::ratelimit::RateLimiter>>,
    /// `cors`: answered preflights and allowed origins.
    pub cors: Option<std::sync::Arc<crate::cors::CorsPolicy>>,
    /// `identity_assertion = true`: the audience and the cached assertions.
    pub assertion: Option<std::sync::Arc<crate::assertion::RouteAssertion>>,
    /// This route's request counters, set by [`RouteTable::new`] (shared
    /// `route="other"` ones past [`MAX_ROUTES`]) and kept across a reload by a
    /// route with the same prefix ([`RouteTable::keep_stats_of`]): a request
    /// records into them with no lookup.
    pub stats: Arc<RouteStats>,
}

impl Route {
    pub fn allows_method(&self, m: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(m)
    }

    /// Spreads requests over the route's upstreams in turn.
    /// Targets that refused or timed out are skipped while cooling down (all of
    /// them down: take turns anyway).
    pub fn pick_upstream(&self) -> &Upstream {
        let len = self.upstreams.len();
        if len == 1 {
            return &self.upstreams[0];
        }
        let n = self.next_upstream.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        (0..len)
            .map(|i| &self.upstreams[(n + i) % len])
            .find(|u| !u.is_down(now))
            .unwrap_or(&self.upstreams[n % len])
    }

    /// Another target than `tried` that is not cooling down, for a retry.
    pub fn other_upstream(&self, tried: &Upstream) -> Option<&Upstream> {
        let now = now_ms();
        self.upstreams
            .iter()
            .find(|u| !std::ptr::eq(*u, tried) && !u.is_down(now))
    }

    /// The path and query sent upstream for a normalised request path.
    pub fn upstream_path_and_query(
        &self,
        upstream: &Upstream,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let rest = if self.strip_prefix && self.prefix != "/" {
            &path[self.prefix.len()..]
        } else {
            path
        };
        let mut out = String::with_capacity(
            upstream.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
        );
        out.push_str(&upstream.base_path);
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// Routes indexed by prefix: a match costs one hash lookup per path segment,
/// whatever the number of routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Keyed by the ASCII lower-cased prefix: prefixes match ignoring ASCII case.
    /// foldhash: fast, and seeded per process; the table is fixed at load time,
    /// so request paths only ever look up.
    by_prefix: HashMap<String, usize, foldhash::fast::RandomState>,
    /// The counters every route past [`MAX_ROUTES`] shares.
    other: Arc<RouteStats>,
}

/// Paths up to this long are lower-cased on the stack for a lookup.
const LOOKUP_STACK_BYTES: usize = 512;

impl RouteTable {
    /// Prefixes equal ignoring ASCII case must not both be given (the config
    /// refuses them); the later one would win.
    ///
    /// Each of the first [`MAX_ROUTES`] routes gets counters of its own, the
    /// rest share one set: the metrics' cardinality is bounded by the config.
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        let other = Arc::new(RouteStats::default());
        for (i, r) in routes.iter_mut().enumerate() {
            r.stats = if i < MAX_ROUTES {
                Arc::new(RouteStats::default())
            } else {
                other.clone()
            };
        }
        let by_prefix = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.prefix.to_ascii_lowercase(), i))
            .collect();
        RouteTable {
            routes,
            by_prefix,
            other,
        }
    }

    /// Takes over the counters of `old` (the table this one replaces on a
    /// reload) for every route whose prefix is in both, and the shared
    /// `other` ones: a route kept across the reload keeps its series.
    pub fn keep_stats_of(&mut self, old: &RouteTable) {
        for route in self.routes.iter_mut().take(MAX_ROUTES) {
            let kept = old
                .by_prefix
                .get(&route.prefix.to_ascii_lowercase())
                .filter(|&&j| j < MAX_ROUTES && old.routes[j].prefix == route.prefix);
            if let Some(&j) = kept {
                route.stats = old.routes[j].stats.clone();
            }
        }
        self.other = old.other.clone();
        for route in self.routes.iter_mut().skip(MAX_ROUTES) {
            route.stats = self.other.clone();
        }
    }

    /// What labels the metrics' request series: `(prefix, counters)` of the
    /// routes with counters of their own, in table order; the counters the
    /// routes past [`MAX_ROUTES`] share (`route="other"`); the token path.
    pub fn labels<'a>(&'a self, token_path: &'a str) -> Labels<'a> {
        Labels {
            routes: self
                .routes
                .iter()
                .take(MAX_ROUTES)
                .map(|r| (r.prefix.as_str(), &*r.stats))
                .collect(),
            other: &self.other,
            token_path,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route with the longest prefix matching `path` on whole segments,
    /// ignoring ASCII case (the request still goes upstream as sent).
    /// `path` must come from [`normalize_path`].
    pub fn find(&self, path: &str) -> Option<&Route> {
        if !path.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.find_lower(path);
        }
        // Lower-cased without a heap allocation for any usual path.
        let mut stack = [0u8; LOOKUP_STACK_BYTES];
        let heap;
        let lower = match stack.get_mut(..path.len()) {
            Some(buf) => {
                buf.copy_from_slice(path.as_bytes());
                buf.make_ascii_lowercase();
                // ASCII lower-casing keeps UTF-8 valid, so this never fails.
                std::str::from_utf8(buf).ok()?
            }
            None => {
                heap = path.to_ascii_lowercase();
                heap.as_str()
            }
        };
        self.find_lower(lower)
    }

    /// [`RouteTable::find`] for a path without ASCII upper-case letters.
    fn find_lower(&self, path: &str) -> Option<&Route> {
        let mut end = path.len();
        loop {
            let candidate = if end == 0 { "/" } else { &path[..end] };
            if let Some(&i) = self.by_prefix.get(candidate) {
                return Some(&self.routes[i]);
            }
            if end == 0 {
                return None;
            }
            end = path[..end].rfind('/')?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip: bool) -> Route {
        Route {
            prefix: normalize_prefix(prefix).unwrap(),
            upstreams: vec![Upstream::parse("http://127.0.0.1:9000").unwrap()],
            strip_prefix: strip,
            scopes: ScopeSet::default(),
            methods: vec![],
            auth: true,
            timeout: Duration::from_secs(1),
            ..Default::default()
        }
    }

    #[test]
    fn normalises_unreserved_escapes_and_hex_case() {
        assert_eq!(normalize_path("/%61pi/x%2a%7e").unwrap(), "/api/x%2A~");
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/").unwrap(), "/");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a//b",
            "//a",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a;x=1/b",
            "/a%3bb",
            "/a%00b",
            "/a%zz",
            "/a%4",
            "a/b",
            "*",
        ] {
            assert!(normalize_path(p).is_err(), "{p} should be refused");
        }
    }

    #[test]
    fn refuses_paths_other_servers_read_another_way() {
        for p in [
            // Trailing dots and spaces: IIS and ASP.NET trim them.
            "/svc/admin./users",
            "/svc/admin%2E/users",
            "/svc/admin%2e",
            "/svc/admin%20/users",
            "/svc/admin%20",
            "/svc/...",
            // Double percent-encoding: `.`, `/`, `\` and letters on a second decode.
            "/svc/%252e%252e/admin",
            "/svc/%252E/x",
            "/svc/%252F/x",
            "/svc/%255c/x",
            "/svc/%2561dmin/users",
            "/svc/%25%32%65",
            // Not UTF-8: overlong `.` and `/`, a lone continuation byte, a cut sequence.
            "/svc/%C0%AE%C0%AE/admin",
            "/svc/%E0%80%AE",
            "/svc/%C0%AF",
            "/svc/%80",
            "/svc/%C3",
            // Changed by NFKC: fullwidth `.`, `/`, `A`; one dot leader; `ſ`.
            "/svc/%EF%BC%8E%EF%BC%8E/admin",
            "/svc%EF%BC%8Fadmin",
            "/svc/%EF%BC%A1dmin",
            "/svc/%E2%80%A4%E2%80%A4/admin",
            "/svc/%C5%BFecret",
            "/svc/e%CC%81",
            // Non-ASCII letters whose case is ASCII: dotless i, Kelvin sign.
            "/svc/adm%C4%B1n",
            "/svc/%E2%84%AA",
            // %u escapes are not percent-encoding.
            "/svc/%u002e%u002e/admin",
        ] {
            assert!(normalize_path(p).is_err(), "{p} should be refused");
        }
        // Plain UTF-8 text, dots inside segments and a `%25` before non-hex stay fine.
        for (p, want) in [
            ("/caf%c3%a9/na%C3%AFve", "/caf%C3%A9/na%C3%AFve"),
            ("/%CE%BC/%E6%97%A5%E6%9C%AC", "/%CE%BC/%E6%97%A5%E6%9C%AC"),
            ("/v1.2/a.b/x", "/v1.2/a.b/x"),
            ("/.well-known/x", "/.well-known/x"),
            ("/50%25off/100%25", "/50%25off/100%25"),
            ("/a%20b/c", "/a%20b/c"),
        ] {
            assert_eq!(normalize_path(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn prefixes_match_ignoring_ascii_case() {
        let t = RouteTable::new(vec![route("/svc", false), route("/svc/Admin", false)]);
        for p in [
            "/svc/admin/users",
            "/svc/ADMIN/users",
            "/SVC/aDmIn",
            "/Svc/Admin/",
        ] {
            assert_eq!(t.find(p).unwrap().prefix, "/svc/Admin", "{p}");
        }
        assert_eq!(t.find("/SVC/other").unwrap().prefix, "/svc");
        let long = format!("/SVC/ADMIN/{}", "X".repeat(LOOKUP_STACK_BYTES));
        assert_eq!(t.find(&long).unwrap().prefix, "/svc/Admin");
        // What goes upstream is the path as sent.
        let r = route("/svc", true);
        let up = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            r.upstream_path_and_query(&up, "/SVC/Orders", None),
            "/Orders"
        );
    }

    #[test]
    fn longest_prefix_on_whole_segments() {
        let t = RouteTable::new(vec![
            route("/", false),
            route("/api/", false),
            route("/api/admin", false),
        ]);
        assert_eq!(t.find("/api").unwrap().prefix, "/api");
        assert_eq!(t.find("/api/").unwrap().prefix, "/api");
        assert_eq!(t.find("/api/orders/7").unwrap().prefix, "/api");
        assert_eq!(t.find("/api/admin/x").unwrap().prefix, "/api/admin");
        assert_eq!(t.find("/api/administrator").unwrap().prefix, "/api");
        assert_eq!(t.find("/apix").unwrap().prefix, "/");
        let t = RouteTable::new(vec![route("/api", false)]);
        assert!(t.find("/apix").is_none());
        assert!(t.find("/").is_none());
    }

    #[test]
    fn a_route_kept_across_a_reload_keeps_its_counters() {
        let old = RouteTable::new(vec![route("/a", false), route("/b", false)]);
        let (a, b) = (old.routes()[0].stats.clone(), old.routes()[1].stats.clone());
        assert!(!Arc::ptr_eq(&a, &b), "each route counts on its own");
        let mut new = RouteTable::new(vec![route("/b", false), route("/c", false)]);
        new.keep_stats_of(&old);
        assert!(Arc::ptr_eq(&new.routes()[0].stats, &b), "/b kept");
        assert!(!Arc::ptr_eq(&new.routes()[1].stats, &a), "/c is new");
        assert!(Arc::ptr_eq(&new.other, &old.other));
        // A prefix equal ignoring case is another route: it does not inherit.
        let mut upper = RouteTable::new(vec![route("/B", false)]);
        upper.keep_stats_of(&old);
        assert!(!Arc::ptr_eq(&upper.routes()[0].stats, &b));
        let series: Vec<&str> = new.labels("").routes.iter().map(|(p, _)| *p).collect();
        assert_eq!(series, ["/b", "/c"]);
    }

    #[test]
    fn routes_past_the_limit_share_the_other_counters() {
        let t = RouteTable::new(
            (0..MAX_ROUTES + 2)
                .map(|i| route(&format!("/r{i}"), false))
                .collect(),
        );
        let last = &t.routes()[MAX_ROUTES + 1].stats;
        assert!(Arc::ptr_eq(last, &t.other));
        assert!(!Arc::ptr_eq(&t.routes()[MAX_ROUTES - 1].stats, &t.other));
        assert_eq!(t.labels("").routes.len(), MAX_ROUTES);
    }

    #[test]
    fn strip_prefix_and_base_path() {
        let r = route("/api/", true);
        let up = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            r.upstream_path_and_query(&up, "/api/orders/7", Some("a=1")),
            "/orders/7?a=1"
        );
        assert_eq!(r.upstream_path_and_query(&up, "/api", None), "/");
        assert_eq!(r.upstream_path_and_query(&up, "/api/", None), "/");
        let based = Upstream::parse("http://127.0.0.1:9000/v1/").unwrap();
        assert_eq!(
            r.upstream_path_and_query(&based, "/api/orders", None),
            "/v1/orders"
        );
        let keep = route("/api/", false);
        assert_eq!(
            keep.upstream_path_and_query(&up, "/api/orders", None),
            "/api/orders"
        );
    }

    #[test]
    fn upstream_urls() {
        assert!(Upstream::parse("https://x").is_ok());
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("127.0.0.1:9000").is_err());
        assert!(Upstream::parse("http://u:p@h").is_err());
        assert_eq!(
            Upstream::parse("http://h:1/b/").unwrap().to_string(),
            "http://h:1/b"
        );
    }
}
