//! Prometheus metrics: request counts and latencies by route, tokens issued by
//! grant, authentication failures by reason, upstream errors by kind, and live
//! tokens, rendered in the Prometheus text format 0.0.4 for the admin listener.
//!
//! Hand-written rather than built on `prometheus-client`: that crate's
//! `Family` takes an `RwLock` on every lookup and wants an owned label set (a
//! `String` per request for the route), its `Histogram` takes a `Mutex` on
//! every observation, and its text encoder speaks OpenMetrics, not 0.0.4.
//!
//! Here every counter a request touches is found before the request: a route's
//! [`RouteStats`] are made when the config is loaded and travel with the route
//! (`Route::stats`, kept across a reload for a route still there), the
//! gateway's own endpoints and unmatched requests have theirs here, and grants,
//! auth-failure reasons and upstream error kinds are arrays indexed by their
//! enums. Recording is a few relaxed atomic additions: no lock, no allocation,
//! no hashing and no string comparison per request.
//!
//! Label values are bounded by the config: the first [`MAX_ROUTES`] routes of
//! the table have series of their own and any beyond share `route="other"`, as
//! statuses past [`MAX_STATUSES`] per route share `status="other"`.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::error::{ErrorCode, GatewayError, Side, UpstreamFault};
use crate::grant::GrantType;

/// What labels the request series of [`Metrics::render`], from the config in
/// force: the routes with counters of their own, `(prefix, counters)` in table
/// order; the counters the routes past [`MAX_ROUTES`] share; and the token
/// endpoint's path, which the other endpoints' paths follow.
pub struct Labels<'a> {
    pub routes: Vec<(&'a str, &'a RouteStats)>,
    pub other: &'a RouteStats,
    pub token_path: &'a str,
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Routes with series of their own; any later in the table count as `route="other"`.
pub const MAX_ROUTES: usize = 1000;
/// Distinct statuses kept apart per route; later ones count as `status="other"`.
pub const MAX_STATUSES: usize = 64;

/// The label value everything past a limit is counted under.
pub const OTHER: &str = "other";

/// The grant types, in their slots' order (see [`grant_slot`]). The first
/// [`REGISTERED_GRANTS`] (RFC 6749's) have a series at 0 until used; the
/// device grant's (RFC 8628) appears once one is issued.
pub const GRANTS: [GrantType; 5] = [
    GrantType::Password,
    GrantType::ClientCredentials,
    GrantType::RefreshToken,
    GrantType::AuthorizationCode,
    GrantType::DeviceCode,
];

/// How many of [`GRANTS`] are rendered even at 0.
const REGISTERED_GRANTS: usize = 4;

/// A grant's slot in [`Metrics`]' counters; exhaustive, so a new grant type
/// cannot be forgotten here.
fn grant_slot(g: GrantType) -> usize {
    match g {
        GrantType::Password => 0,
        GrantType::ClientCredentials => 1,
        GrantType::RefreshToken => 2,
        GrantType::AuthorizationCode => 3,
        GrantType::DeviceCode => 4,
    }
}

/// Latency buckets for a proxy, 0.5 ms to 10 s: upper bounds in nanoseconds
/// and as written in the `le` label.
const BUCKETS: [(u64, &str); 14] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// One observation's share of a histogram sum is capped here (about 2.3 years),
/// so the sum cannot wrap.
const MAX_OBSERVATION_NS: u64 = 1 << 56;

/// The gateway's metrics, but for routes' own ([`RouteStats`], in the route
/// table). Shared in an `Arc`; every method takes `&self` and may be called
/// from any number of threads at once.
pub struct Metrics {
    /// The gateway's own endpoints, by `Endpoint as usize`.
    endpoints: [RouteStats; Endpoint::ALL.len()],
    /// Requests that matched no route (`route="-"`).
    unmatched: RouteStats,
    /// By [`grant_slot`].
    tokens_issued: [AtomicU64; GRANTS.len()],
    /// By [`ErrorCode::slot`].
    auth_failures: [AtomicU64; ErrorCode::COUNT],
    /// By `UpstreamFault as usize`.
    upstream_errors: [AtomicU64; UpstreamFault::ALL.len()],
    /// argon2 checks run (passwords and client secrets), whatever their result.
    password_checks: AtomicU64,
    connections_parked: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("unmatched", &self.unmatched)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            endpoints: Default::default(),
            unmatched: RouteStats::default(),
            tokens_issued: Default::default(),
            auth_failures: Default::default(),
            upstream_errors: Default::default(),
            password_checks: AtomicU64::new(0),
            connections_parked: AtomicU64::new(0),
        }
    }

    /// The counters of one of the gateway's own endpoints.
    pub fn endpoint(&self, e: Endpoint) -> &RouteStats {
        &self.endpoints[e as usize]
    }

    /// The counters of requests no route or endpoint matched.
    pub fn unmatched(&self) -> &RouteStats {
        &self.unmatched
    }

    /// A token response sent for `grant`.
    pub fn token_issued(&self, grant: GrantType) {
        self.tokens_issued[grant_slot(grant)].fetch_add(1, Relaxed);
    }

    /// One argon2 check of a password or client secret has run.
    pub fn password_checked(&self) {
        self.password_checks.fetch_add(1, Relaxed);
    }

    /// A quiet HTTP/1 connection gave back its buffers (`server::park`).
    pub fn connection_parked(&self) {
        self.connections_parked.fetch_add(1, Relaxed);
    }

    /// A request refused for its credentials or permissions, by the `error`
    /// it was answered with (or would be: a failed sign-in on the login page).
    pub fn auth_failure(&self, reason: impl Into<ErrorCode>) {
        self.auth_failures[reason.into().slot()].fetch_add(1, Relaxed);
    }

    /// An upstream that could not be reached or did not answer in time.
    pub fn upstream_error(&self, fault: UpstreamFault) {
        self.upstream_errors[fault as usize].fetch_add(1, Relaxed);
    }

    /// Counts a refusal where its [`GatewayError::side`] says it belongs:
    /// upstream errors by kind, and authentication and authorization failures
    /// by reason (bad or missing client credentials, grants, bearer tokens or
    /// scopes, and brute-force lockouts). Malformed requests, routing misses and
    /// internal errors are in `whosthat_requests_total` only.
    pub fn rejected(&self, e: &GatewayError) {
        match e.side() {
            Side::Upstream(fault) => self.upstream_error(fault),
            Side::Auth => self.auth_failure(e.code()),
            Side::Client | Side::Internal => {}
        }
    }

    /// The exposition in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]):
    /// the routes of the config in force and its endpoints' paths label the
    /// request series (`labels`, from `RouteTable::labels`); the live token
    /// counts are given (`TokenStore::token_counts`).
    pub fn render(&self, labels: Labels<'_>, live_access: usize, live_refresh: usize) -> String {
        let mut out = String::with_capacity(2048);
        let mut series = labels.routes;
        series.extend(
            Endpoint::ALL
                .iter()
                .map(|&e| (e.path(labels.token_path), self.endpoint(e))),
        );
        series.push(("-", &self.unmatched));
        // Only what has answered a request; a series being recorded right now
        // may have its status counted but no observation yet.
        series.retain(|(_, r)| r.latency.count() > 0);
        series.sort_unstable_by_key(|(label, _)| *label);
        let other = labels.other;
        if other.latency.count() > 0 {
            series.push((OTHER, other));
        }
        request_families(&mut out, &series);

        let grants = GRANTS
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                (
                    i,
                    g.as_str(),
                    self.tokens_issued[grant_slot(g)].load(Relaxed),
                )
            })
            .filter(|&(i, _, n)| i < REGISTERED_GRANTS || n > 0)
            .map(|(_, g, n)| (g, n));
        counters(
            &mut out,
            "whosthat_tokens_issued_total",
            "Token responses sent, by grant type.",
            "grant",
            grants,
        );
        let failures = ErrorCode::all()
            .map(|c| (c.as_str(), self.auth_failures[c.slot()].load(Relaxed)))
            .filter(|&(_, n)| n > 0);
        counters(
            &mut out,
            "whosthat_auth_failures_total",
            "Requests refused for their credentials or permissions, by reason.",
            "reason",
            failures,
        );
        let upstream = UpstreamFault::ALL
            .iter()
            .map(|&f| (f.as_str(), self.upstream_errors[f as usize].load(Relaxed)));
        counters(
            &mut out,
            "whosthat_upstream_errors_total",
            "Proxied requests whose upstream could not be reached or timed out, by kind.",
            "kind",
            upstream,
        );

        family(
            &mut out,
            "whosthat_password_checks_total",
            "counter",
            "argon2 checks run on passwords and client secrets (guesses the brute-force limits let through).",
        );
        let _ = writeln!(
            out,
            "whosthat_password_checks_total {}",
            self.password_checks.load(Relaxed)
        );

        family(
            &mut out,
            "whosthat_connections_parked_total",
            "counter",
            "Times a quiet HTTP/1 keep-alive connection gave back its buffers until its next request.",
        );
        let _ = writeln!(
            out,
            "whosthat_connections_parked_total {}",
            self.connections_parked.load(Relaxed)
        );

        family(
            &mut out,
            "whosthat_live_tokens",
            "gauge",
            "Tokens held by the token store, including expired ones not yet swept.",
        );
        let _ = writeln!(out, "whosthat_live_tokens{{kind=\"access\"}} {live_access}");
        let _ = writeln!(
            out,
            "whosthat_live_tokens{{kind=\"refresh\"}} {live_refresh}"
        );
        out
    }
}

/// `whosthat_requests_total` and `whosthat_request_duration_seconds` for
/// `series` (label, counters), in that order.
fn request_families(out: &mut String, series: &[(&str, &RouteStats)]) {
    family(
        out,
        "whosthat_requests_total",
        "counter",
        "Requests answered, by route and HTTP status.",
    );
    for (route, r) in series {
        for (status, n) in r.statuses.snapshot() {
            let _ = writeln!(
                out,
                "whosthat_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                Escaped(route)
            );
        }
    }

    family(
        out,
        "whosthat_request_duration_seconds",
        "histogram",
        "Time from receiving a request to having its response, by route.",
    );
    for (route, r) in series {
        let (buckets, sum_ns) = r.latency.snapshot();
        let route = Escaped(route);
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf", |b| b.1);
            let _ = writeln!(
                out,
                "whosthat_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "whosthat_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            sum_ns as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "whosthat_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}"
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter family, one sample per `(label value, count)`, sorted by value.
fn counters<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) {
    family(out, name, "counter", help);
    let mut values: Vec<(&str, u64)> = values.collect();
    values.sort_unstable_by_key(|(v, _)| *v);
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", Escaped(value));
    }
}

/// A label value escaped for the text format: `\`, `"` and newline.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// One route's (or endpoint's) request counters: counts by status and a
/// latency histogram. Made with the route table (`RouteTable::new`) and kept
/// by the route, so recording needs no lookup.
#[derive(Default)]
pub struct RouteStats {
    statuses: StatusCounts,
    latency: Histogram,
}

impl fmt::Debug for RouteStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteStats")
            .field("requests", &self.latency.count())
            .finish_non_exhaustive()
    }
}

impl RouteStats {
    /// One answered request: its status and the time to its answer.
    pub fn record(&self, status: u16, latency: Duration) {
        self.statuses.add(status);
        self.latency.observe(latency);
    }
}

/// Counts by status: a small insert-only table keyed by the code (0 = empty).
struct StatusCounts {
    codes: [AtomicU16; MAX_STATUSES],
    counts: [AtomicU64; MAX_STATUSES],
    overflow: AtomicU64,
}

impl Default for StatusCounts {
    fn default() -> StatusCounts {
        StatusCounts {
            codes: [const { AtomicU16::new(0) }; MAX_STATUSES],
            counts: [const { AtomicU64::new(0) }; MAX_STATUSES],
            overflow: AtomicU64::new(0),
        }
    }
}

impl StatusCounts {
    fn add(&self, status: u16) {
        if status != 0 {
            let mut i = status as usize % MAX_STATUSES;
            for _ in 0..MAX_STATUSES {
                let code = match self.codes[i].load(Relaxed) {
                    0 => match self.codes[i].compare_exchange(0, status, Relaxed, Relaxed) {
                        Ok(_) => status,
                        Err(other) => other,
                    },
                    code => code,
                };
                if code == status {
                    self.counts[i].fetch_add(1, Relaxed);
                    return;
                }
                i = (i + 1) % MAX_STATUSES;
            }
        }
        self.overflow.fetch_add(1, Relaxed);
    }

    /// `(status, count)` by status, then `("other", count)` if any.
    fn snapshot(&self) -> Vec<(StatusLabel, u64)> {
        let mut v: Vec<(StatusLabel, u64)> = self
            .codes
            .iter()
            .zip(&self.counts)
            .map(|(c, n)| (c.load(Relaxed), n.load(Relaxed)))
            .filter(|&(c, n)| c != 0 && n != 0)
            .map(|(c, n)| (StatusLabel::Code(c), n))
            .collect();
        v.sort_unstable_by_key(|(c, _)| *c);
        let overflow = self.overflow.load(Relaxed);
        if overflow > 0 {
            v.push((StatusLabel::Other, overflow));
        }
        v
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StatusLabel {
    Code(u16),
    Other,
}

impl fmt::Display for StatusLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusLabel::Code(c) => write!(f, "{c}"),
            StatusLabel::Other => f.write_str(OTHER),
        }
    }
}

/// Per-bucket (not cumulative) counts, the last one for `+Inf`, and the sum
/// in nanoseconds; the count is the buckets' total.
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let ns =
            u64::try_from(d.as_nanos()).map_or(MAX_OBSERVATION_NS, |n| n.min(MAX_OBSERVATION_NS));
        // The first bucket whose bound is at least `ns` (`le` is inclusive).
        let i = BUCKETS.partition_point(|&(bound, _)| bound < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn snapshot(&self) -> ([u64; BUCKETS.len() + 1], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            self.sum_ns.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::error::{GatewayCode, OAuthCode};
    use std::cell::Cell;
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    /// Counts allocations per thread, so a test can show that recording does
    /// not allocate (other tests' threads are not counted).
    struct CountingAlloc;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    const MS: Duration = Duration::from_millis(1);

    /// A minimal check of the text format 0.0.4: every line is `# HELP name
    /// text`, `# TYPE name type` or `name{label="value",...} number`; each
    /// family has one HELP and one TYPE before its samples; samples of a family
    /// are contiguous; histogram samples are `_bucket`, `_sum`, `_count`.
    /// Returns the samples as `name{labels}` to value.
    fn parse(text: &str) -> HashMap<String, f64> {
        fn is_name(s: &str) -> bool {
            let mut b = s.bytes();
            matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        }
        /// Parses `{a="x",b="y"}` at the start of `s`; returns the rest.
        fn labels(s: &str) -> &str {
            let mut rest = s.strip_prefix('{').expect("labels open with {");
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    return r;
                }
                let eq = rest.find('=').expect("label has =");
                assert!(is_name(&rest[..eq]), "label name {:?}", &rest[..eq]);
                assert!(!rest[..eq].starts_with("__"), "reserved label name");
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .expect("label value is quoted");
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next().expect("label value is closed") {
                        (_, '\\') => {
                            let (_, c) = chars.next().expect("escape has a character");
                            assert!(matches!(c, '\\' | '"' | 'n'), "bad escape \\{c}");
                        }
                        (_, '\n') => panic!("raw newline in a label value"),
                        (i, '"') => break i,
                        _ => {}
                    }
                };
                rest = &rest[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }

        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        let mut help = HashSet::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut finished = HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (kw, name, rest) = (
                    parts.next().unwrap(),
                    parts.next().expect("a name"),
                    parts.next().expect("a text"),
                );
                assert!(is_name(name), "{line}");
                if let Some(f) = current.take() {
                    finished.insert(f);
                }
                match kw {
                    "HELP" => assert!(help.insert(name.to_string()), "two HELPs: {line}"),
                    "TYPE" => {
                        assert!(
                            matches!(
                                rest,
                                "counter" | "gauge" | "histogram" | "summary" | "untyped"
                            ),
                            "{line}"
                        );
                        assert!(types.insert(name.into(), rest.into()).is_none(), "{line}");
                        assert!(help.contains(name), "HELP before TYPE: {line}");
                    }
                    _ => panic!("unknown comment: {line}"),
                }
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let name_end = line.find(['{', ' ']).expect("a sample has a value");
            let name = &line[..name_end];
            assert!(is_name(name), "{line}");
            let rest = &line[name_end..];
            let rest = if rest.starts_with('{') {
                labels(rest)
            } else {
                rest
            };
            let value = rest.strip_prefix(' ').expect("one space before the value");
            assert!(
                value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"),
                "value of {line}"
            );
            let family = types
                .iter()
                .filter(|(f, t)| {
                    name == f.as_str()
                        || (t.as_str() == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|s| name.strip_suffix(s) == Some(f.as_str())))
                })
                .map(|(f, _)| f.clone())
                .next()
                .unwrap_or_else(|| panic!("a sample without a TYPE: {line}"));
            assert!(!finished.contains(&family), "family split up: {line}");
            current = Some(family);
            let key = &line[..line.len() - value.len() - 1];
            assert!(
                samples
                    .insert(key.to_string(), value.parse().unwrap_or(f64::NAN))
                    .is_none(),
                "duplicate sample: {line}"
            );
        }
        samples
    }

    fn lines(text: &str) -> HashSet<&str> {
        text.lines().collect()
    }

    /// A config whose route table has exactly `prefixes` (taken as they are:
    /// the label values the table gives), and the default endpoints.
    fn config_with_routes<S: AsRef<str>>(prefixes: &[S]) -> Config {
        let mut config = Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let routes = prefixes
            .iter()
            .map(|p| crate::routes::Route {
                prefix: p.as_ref().to_string(),
                ..Default::default()
            })
            .collect();
        config.routes = Arc::new(crate::routes::RouteTable::new(routes));
        config
    }

    /// The counters of the route with exactly this prefix.
    fn labels(config: &Config) -> Labels<'_> {
        config.routes.labels(&config.oauth.token_path)
    }

    fn stats<'c>(config: &'c Config, prefix: &str) -> &'c RouteStats {
        let route = config.routes.routes().iter().find(|r| r.prefix == prefix);
        &route.expect("a configured route").stats
    }

    #[test]
    fn records_from_many_threads_and_renders_exact_lines() {
        let m = Arc::new(Metrics::new());
        let config = Arc::new(config_with_routes(&["/api", "/oauth/token"]));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (m, config) = (m.clone(), config.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats(&config, "/api").record(200, MS * 3);
                        stats(&config, "/oauth/token").record(400, Duration::from_micros(200));
                    }
                    m.unmatched().record(404, Duration::from_secs(20));
                    m.token_issued(GRANTS[t % 2]);
                    m.auth_failure(GatewayCode::InvalidToken);
                    if t == 0 {
                        m.upstream_error(UpstreamFault::Timeout);
                        m.auth_failure(OAuthCode::InvalidClient);
                    }
                    m.connection_parked();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render(labels(&config), 12, 3);
        let samples = parse(&text);
        let got = lines(&text);
        for want in [
            "# HELP whosthat_requests_total Requests answered, by route and HTTP status.",
            "# TYPE whosthat_requests_total counter",
            "whosthat_requests_total{route=\"-\",status=\"404\"} 8",
            "whosthat_requests_total{route=\"/api\",status=\"200\"} 8000",
            "whosthat_requests_total{route=\"/oauth/token\",status=\"400\"} 8000",
            "# TYPE whosthat_request_duration_seconds histogram",
            "whosthat_request_duration_seconds_bucket{route=\"/api\",le=\"0.0025\"} 0",
            "whosthat_request_duration_seconds_bucket{route=\"/api\",le=\"0.005\"} 8000",
            "whosthat_request_duration_seconds_bucket{route=\"/api\",le=\"+Inf\"} 8000",
            "whosthat_request_duration_seconds_sum{route=\"/api\"} 24",
            "whosthat_request_duration_seconds_count{route=\"/api\"} 8000",
            "whosthat_request_duration_seconds_bucket{route=\"/oauth/token\",le=\"0.0005\"} 8000",
            "whosthat_request_duration_seconds_sum{route=\"/oauth/token\"} 1.6",
            "whosthat_request_duration_seconds_bucket{route=\"-\",le=\"10\"} 0",
            "whosthat_request_duration_seconds_bucket{route=\"-\",le=\"+Inf\"} 8",
            "whosthat_request_duration_seconds_sum{route=\"-\"} 160",
            "whosthat_request_duration_seconds_count{route=\"-\"} 8",
            "# TYPE whosthat_tokens_issued_total counter",
            "whosthat_tokens_issued_total{grant=\"password\"} 4",
            "whosthat_tokens_issued_total{grant=\"client_credentials\"} 4",
            "whosthat_tokens_issued_total{grant=\"refresh_token\"} 0",
            "whosthat_tokens_issued_total{grant=\"authorization_code\"} 0",
            "# TYPE whosthat_auth_failures_total counter",
            "whosthat_auth_failures_total{reason=\"invalid_token\"} 8",
            "whosthat_auth_failures_total{reason=\"invalid_client\"} 1",
            "# TYPE whosthat_upstream_errors_total counter",
            "whosthat_upstream_errors_total{kind=\"timeout\"} 1",
            "whosthat_upstream_errors_total{kind=\"unreachable\"} 0",
            "# TYPE whosthat_connections_parked_total counter",
            "whosthat_connections_parked_total 8",
            "# HELP whosthat_live_tokens Tokens held by the token store, including expired ones not yet swept.",
            "# TYPE whosthat_live_tokens gauge",
            "whosthat_live_tokens{kind=\"access\"} 12",
            "whosthat_live_tokens{kind=\"refresh\"} 3",
        ] {
            assert!(got.contains(want), "missing {want:?} in\n{text}");
        }
        // Every family has HELP and TYPE; the sample count is exact.
        for name in [
            "whosthat_requests_total",
            "whosthat_request_duration_seconds",
            "whosthat_tokens_issued_total",
            "whosthat_auth_failures_total",
            "whosthat_upstream_errors_total",
            "whosthat_password_checks_total",
            "whosthat_connections_parked_total",
            "whosthat_live_tokens",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        // 3 request series, 3 routes x 17 histogram lines, 4 + 2 + 2 + 1 + 1 counters, 2 gauges.
        assert_eq!(samples.len(), 3 + 3 * 17 + 4 + 2 + 2 + 1 + 1 + 2, "{text}");
        // Series are sorted by label, as are counters.
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("whosthat_requests_total{route=\""))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(order, ["-", "/api", "/oauth/token"]);
    }

    #[test]
    fn endpoints_are_labelled_with_their_paths() {
        let m = Metrics::new();
        let config = config_with_routes::<&str>(&[]);
        m.endpoint(Endpoint::Token).record(200, MS);
        m.endpoint(Endpoint::Metadata).record(200, MS);
        let text = m.render(labels(&config), 0, 0);
        let samples = parse(&text);
        let token = format!(
            "whosthat_requests_total{{route=\"{}\",status=\"200\"}}",
            config.oauth.token_path
        );
        assert_eq!(samples[&token], 1.0, "{text}");
        let metadata = format!(
            "whosthat_requests_total{{route=\"{}\",status=\"200\"}}",
            Endpoint::Metadata.path(&config.oauth.token_path)
        );
        assert_eq!(samples[&metadata], 1.0, "{text}");
        // Endpoints without traffic have no series.
        assert!(
            !text.contains(Endpoint::Revoke.path(&config.oauth.token_path)),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let m = Metrics::new();
        let config = config_with_routes(&["/r"]);
        for d in [
            Duration::ZERO,
            Duration::from_micros(500), // exactly on the first bound: le is inclusive
            Duration::from_nanos(500_001),
            MS * 7,
            MS * 1000,
            Duration::from_secs(10),
            Duration::from_secs(11),
        ] {
            stats(&config, "/r").record(200, d);
        }
        let text = m.render(labels(&config), 0, 0);
        parse(&text);
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("whosthat_request_duration_seconds"))
            .collect();
        assert_eq!(
            buckets,
            [
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.0005\"} 2",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.001\"} 3",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.0025\"} 3",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.005\"} 3",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.01\"} 4",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.025\"} 4",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.05\"} 4",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.1\"} 4",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.25\"} 4",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"0.5\"} 4",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"1\"} 5",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"2.5\"} 5",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"5\"} 5",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"10\"} 6",
                "whosthat_request_duration_seconds_bucket{route=\"/r\",le=\"+Inf\"} 7",
                "whosthat_request_duration_seconds_sum{route=\"/r\"} 22.008000001",
                "whosthat_request_duration_seconds_count{route=\"/r\"} 7",
            ]
        );
    }

    #[test]
    fn an_empty_registry_is_valid_and_complete() {
        let text = Metrics::new().render(labels(&config_with_routes(&["/a", "/b"])), 0, 0);
        let samples = parse(&text);
        // Only the pre-registered counters and the gauges.
        assert_eq!(samples.len(), 4 + 2 + 1 + 1 + 2, "{text}");
        assert_eq!(text.matches("# HELP ").count(), 8);
        assert_eq!(text.matches("# TYPE ").count(), 8);
    }

    #[test]
    fn routes_beyond_the_limit_count_as_other() {
        let m = Metrics::new();
        let prefixes: Vec<String> = (0..MAX_ROUTES + 100).map(|i| format!("/r{i}")).collect();
        let config = config_with_routes(&prefixes);
        for route in config.routes.routes() {
            route.stats.record(200, MS);
        }
        stats(&config, "/r0").record(200, MS); // known routes keep their own series
        let text = m.render(labels(&config), 0, 0);
        let samples = parse(&text);
        let routes: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("whosthat_requests_total{"))
            .map(|l| l.split('"').nth(1).unwrap())
            .collect();
        assert_eq!(routes.len(), MAX_ROUTES + 1);
        assert_eq!(
            samples["whosthat_requests_total{route=\"other\",status=\"200\"}"],
            100.0
        );
        assert_eq!(
            samples["whosthat_requests_total{route=\"/r0\",status=\"200\"}"],
            2.0
        );
        assert_eq!(
            samples["whosthat_request_duration_seconds_count{route=\"other\"}"],
            100.0
        );
        // The first MAX_ROUTES of the table are the ones with series.
        assert!(routes.contains(format!("/r{}", MAX_ROUTES - 1).as_str()));
        assert!(!routes.contains(format!("/r{MAX_ROUTES}").as_str()));
    }

    #[test]
    fn recording_from_many_threads_on_many_routes_loses_nothing() {
        let prefixes: Vec<String> = (0..80).map(|i| format!("/r{i}")).collect();
        let config = Arc::new(config_with_routes(&prefixes));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let config = config.clone();
                std::thread::spawn(move || {
                    for (i, route) in config.routes.routes().iter().enumerate() {
                        route.stats.record(200 + (i % 3) as u16, MS);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let samples = parse(&Metrics::new().render(labels(&config), 0, 0));
        let counts: Vec<f64> = samples
            .iter()
            .filter(|(k, _)| k.starts_with("whosthat_request_duration_seconds_count"))
            .map(|(_, v)| *v)
            .collect();
        // 80 routes of their own, 8 requests each.
        assert_eq!(counts.len(), 80);
        assert!(counts.iter().all(|&c| c == 8.0), "{counts:?}");
        assert_eq!(
            samples["whosthat_requests_total{route=\"/r4\",status=\"201\"}"],
            8.0
        );
    }

    #[test]
    fn statuses_beyond_the_limit_count_as_other() {
        let config = config_with_routes(&["/r"]);
        let r = stats(&config, "/r");
        for s in 100..100 + MAX_STATUSES as u16 + 5 {
            r.record(s, MS);
        }
        r.record(100, MS);
        r.record(0, MS);
        let samples = parse(&Metrics::new().render(labels(&config), 0, 0));
        assert_eq!(
            samples["whosthat_requests_total{route=\"/r\",status=\"100\"}"],
            2.0
        );
        assert_eq!(
            samples["whosthat_requests_total{route=\"/r\",status=\"other\"}"],
            6.0
        );
    }

    #[test]
    fn label_values_are_escaped() {
        // Configured prefixes cannot hold these; the format is kept regardless.
        let config = config_with_routes(&["/a\"b\\c\nd"]);
        stats(&config, "/a\"b\\c\nd").record(200, MS);
        let text = Metrics::new().render(labels(&config), 0, 0);
        parse(&text);
        assert!(
            text.contains("whosthat_requests_total{route=\"/a\\\"b\\\\c\\nd\",status=\"200\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn gateway_errors_are_classified() {
        let m = Metrics::new();
        for e in [
            GatewayError::UpstreamUnreachable,
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamTimeout,
            GatewayError::OAuth(OAuthCode::InvalidClient, "x"),
            GatewayError::OAuth(OAuthCode::InvalidRequest, "x"),
            GatewayError::OAuth(OAuthCode::UnsupportedGrantType, "x"),
            GatewayError::TooManyAttempts(3),
            GatewayError::NoToken,
            GatewayError::InvalidToken("x"),
            GatewayError::InsufficientScope("read".into()),
            GatewayError::NoRoute,
            crate::store::StoreError::Unavailable("down".into()).into(),
        ] {
            m.rejected(&e);
        }
        let samples = parse(&m.render(labels(&config_with_routes::<&str>(&[])), 0, 0));
        let failures: HashMap<&str, f64> = samples
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("whosthat_auth_failures_total{reason=\"")
                    .map(|r| (r.trim_end_matches("\"}"), *v))
            })
            .collect();
        assert_eq!(
            failures,
            HashMap::from([
                ("invalid_client", 1.0),
                ("too_many_attempts", 1.0),
                ("unauthorized", 1.0),
                ("invalid_token", 1.0),
                ("insufficient_scope", 1.0),
            ])
        );
        assert_eq!(
            samples["whosthat_upstream_errors_total{kind=\"unreachable\"}"],
            1.0
        );
        assert_eq!(
            samples["whosthat_upstream_errors_total{kind=\"timeout\"}"],
            2.0
        );
    }

    #[test]
    fn grants_have_their_own_slots() {
        for (i, g) in GRANTS.into_iter().enumerate() {
            assert_eq!(grant_slot(g), i, "{g:?}");
        }
    }

    #[test]
    fn recording_does_not_allocate() {
        let m = Metrics::new();
        let config = config_with_routes(&["/api"]);
        let route = stats(&config, "/api");
        let before = allocations();
        for i in 0..1000u32 {
            route.record(200, MS * i);
            m.endpoint(Endpoint::Token).record(400, MS);
            m.unmatched().record(404, MS);
            m.token_issued(GrantType::Password);
            m.auth_failure(GatewayCode::InvalidToken);
            m.upstream_error(UpstreamFault::Timeout);
            m.rejected(&GatewayError::NoToken);
            m.rejected(&GatewayError::UpstreamUnreachable);
        }
        assert_eq!(allocations(), before, "the recording path allocated");
        // The check itself works.
        let _ = m.render(labels(&config), 0, 0);
        assert!(allocations() > before);
    }
}
