//! Forwarding to upstreams: the pooled client, the header rules, streaming bodies.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::error::{Body, BoxError, GatewayError};
use crate::routes::{Route, Upstream};
use crate::store::Grant;
use crate::upstream_tls::{UpstreamTls, upstream_tls};

mod pool;

/// What tells connection pools apart: connect timeout (ms), the TLS config's id
/// (0 for plain HTTP), https or not. Ids are never reused, so a pool built for
/// one set of trust roots can never serve a route with another (an address
/// could be: a config freed by a reload may leave its address to the next one).
type ClientKey = (u64, u64, bool);

/// TLS to public upstreams: the webpki roots alone, built once.
fn default_tls() -> &'static UpstreamTls {
    static TLS: OnceLock<UpstreamTls> = OnceLock::new();
    TLS.get_or_init(|| upstream_tls(rustls::RootCertStore::empty()))
}

/// The TLS settings used for `route`'s `upstream`, if it is https.
fn tls_for<'r>(route: &'r Route, upstream: &Upstream) -> Option<&'r UpstreamTls> {
    (upstream.scheme == Scheme::HTTPS).then(|| route.tls.as_ref().unwrap_or_else(|| default_tls()))
}

fn client_key(route: &Route, upstream: &Upstream) -> ClientKey {
    let tls = tls_for(route, upstream);
    (
        route.connect_timeout.as_millis() as u64,
        tls.map_or(0, |t| t.id),
        tls.is_some(),
    )
}

static X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
static X_AUTH_CLIENT: HeaderName = HeaderName::from_static("x-auth-client");
static X_AUTH_SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The `DPoP` request header carrying a proof (RFC 9449 section 4.1): for the
/// gateway alone, never forwarded (section 7.1).
pub static DPOP: HeaderName = HeaderName::from_static("dpop");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded either way.
/// `HTTP2-Settings` belongs to an h2c upgrade of this one connection (RFC 7540
/// section 3.2.1; h2c is deprecated, RFC 9113 section 3.1) and is never passed on.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str())
}

/// [`is_hop_by_hop`] for a lower-case name.
fn is_hop_by_hop_name(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Headers a client could use to pose as someone else, or to fake where it
/// comes from: compared with `_` and `.` read as `-`, as many servers and
/// frameworks (CGI, WSGI, Rack, PHP) fold them.
pub fn is_spoofable(name: &str) -> bool {
    let mut folded = [0u8; 32];
    let bytes = name.as_bytes();
    let n = bytes.len().min(folded.len());
    for (dst, src) in folded.iter_mut().zip(&bytes[..n]) {
        *dst = match src.to_ascii_lowercase() {
            b'_' | b'.' => b'-',
            c => c,
        };
    }
    let folded = &folded[..n];
    folded.starts_with(b"x-auth-")
        || folded.starts_with(b"x-forwarded-")
        || folded == b"forwarded"
        || folded == b"x-real-ip"
        || folded == b"x-client-ip"
}

/// Whether `name` is `target` (lower case, `-`) in any case, with `_` and `.`
/// read as `-` (as [`is_spoofable`] folds them).
fn same_folded(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| match a.to_ascii_lowercase() {
                b'_' | b'.' => b == b'-',
                c => c == b,
            })
}

/// Headers naming another method than the request's, honoured by frameworks
/// behind the gateway (Symfony, Laravel, Express's method-override, ASP.NET...).
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// Headers naming another URL than the request's (IIS URL Rewrite, Symfony, Zend,
/// nginx `auth_request` set-ups).
const URL_OVERRIDES: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-original-uri"];

fn is_method_override(name: &str) -> bool {
    METHOD_OVERRIDES.iter().any(|t| same_folded(name, t))
}

/// Method and URL override headers: the route's method list and path are what
/// the gateway checked, so an upstream must never be told another method or
/// URL. Never forwarded.
pub fn is_override(name: &str) -> bool {
    name.len() >= 13
        && name.as_bytes()[0].eq_ignore_ascii_case(&b'x')
        && (is_method_override(name) || URL_OVERRIDES.iter().any(|t| same_folded(name, t)))
}

/// Whether a method override header names a method `route` does not allow
/// (answered 405 like the method itself would be). Values are read as
/// frameworks read them: upper-cased, and each of a comma-separated list.
pub fn override_refused(route: &Route, headers: &HeaderMap) -> bool {
    if route.methods.is_empty() {
        return false;
    }
    headers
        .iter()
        .filter(|(name, _)| is_method_override(name.as_str()))
        .any(|(_, value)| {
            let Ok(value) = value.to_str() else {
                return true;
            };
            value
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .any(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_or(true, |m| !route.allows_method(&m))
                })
        })
}

/// Names listed in `Connection` (they are hop-by-hop for this message), but for
/// `close` and names that are hop-by-hop anyway (`keep-alive`, `upgrade`...):
/// the usual `Connection: keep-alive` costs nothing.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(v) = v.to_str() {
            for name in v.split(',').map(str::trim) {
                let known = name.len() <= 20 && {
                    let mut lower = [0u8; 20];
                    lower[..name.len()].copy_from_slice(name.as_bytes());
                    lower.make_ascii_lowercase();
                    std::str::from_utf8(&lower[..name.len()])
                        .is_ok_and(|n| n == "close" || is_hop_by_hop_name(n))
                };
                if known {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// An access token credential: `Bearer` (RFC 6750) or `DPoP` (RFC 9449) scheme.
fn is_bearer(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"bearer"))
        || (b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"dpop"))
}

/// The client's address for one request. The peer, unless the peer is one of
/// `trusted` (`server.trusted_proxies`, the load balancers); then the right-most
/// entry of `X-Forwarded-For` (or, when there is none, of `Forwarded`'s `for=`,
/// RFC 7239 section 5.2) that is not itself a trusted proxy: each proxy appends
/// the address it saw, so entries left of the first untrusted one were written by
/// the client and prove nothing. An entry that names no address there
/// (`unknown`, an obfuscated node, garbage) stops the walk at the proxy that
/// wrote it. Limits, logs and the upstream's `X-Forwarded-For` all use this one
/// address.
/// What counts as one client for per-client limits: an IPv4 address (also
/// when it comes IPv4-mapped), or an IPv6 /64, the block one site is given, so
/// that an IPv6 client cannot step around a limit by changing its interface ID.
/// Connection caps, brute-force buckets and address rate limits all use it.
pub fn client_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

pub fn client_address(trusted: &[ipnet::IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    if headers.contains_key(&X_FORWARDED_FOR) {
        for v in headers.get_all(&X_FORWARDED_FOR) {
            match v.to_str() {
                Ok(v) => hops.extend(v.split(',').map(|e| parse_node(e.trim()))),
                Err(_) => hops.push(None),
            }
        }
    } else {
        for v in headers.get_all(header::FORWARDED) {
            match v.to_str() {
                Ok(v) => hops.extend(split_quoted(v, ',').into_iter().map(forwarded_for)),
                Err(_) => hops.push(None),
            }
        }
    }
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => nearest = *ip,
            Some(ip) => return *ip,
            None => return nearest,
        }
    }
    // Every hop is one of ours: the left-most is as far as anyone can see.
    nearest
}

/// `s` split at `sep`, except inside double quotes.
fn split_quoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The `for=` node of one `Forwarded` element (RFC 7239 section 4), if it is an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = split_quoted(element, ';').into_iter().find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(v) => v.strip_suffix('"')?,
        None => value,
    };
    parse_node(value)
}

/// An address, with or without a port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// What the upstream receives (INTERFACE.md, "What the upstream receives").
pub struct ForwardInfo<'a> {
    /// The client's address ([`client_address`]), the one value sent upstream.
    pub forwarded_for: &'a HeaderValue,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// The Host (or :authority) the client used.
    pub host: Option<HeaderValue>,
    pub identity: Option<&'a Grant>,
    /// `X-Auth-Assertion` for routes with `identity_assertion = true`.
    pub assertion: Option<HeaderValue>,
}

/// Header names to remove from a map: on the stack for the usual handful
/// (`Host`, `Authorization`, a hop-by-hop field or two).
#[derive(Default)]
struct Doomed {
    inline: [Option<HeaderName>; 8],
    len: usize,
    more: Vec<HeaderName>,
}

impl Doomed {
    fn push(&mut self, name: &HeaderName) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = Some(name.clone()),
            None => self.more.push(name.clone()),
        }
        self.len += 1;
    }

    fn remove_from(self, headers: &mut HeaderMap) {
        for name in self.inline.into_iter().flatten().chain(self.more) {
            headers.remove(&name);
        }
    }
}

/// Rewrites request headers for the upstream in place: what must not reach it
/// is removed (each name looked at once), what the gateway says is set. The
/// client's other headers are neither copied nor rehashed. `Host` is left for
/// the sender to overwrite (`pool::send` sets the upstream's on every attempt).
pub fn upstream_request_headers(headers: &mut HeaderMap, version: Version, info: &ForwardInfo<'_>) {
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut doomed = Doomed::default();
    let mut via: Option<String> = None;
    // Authorization values other than a bearer token (Basic for the upstream) stay.
    let mut kept_authorization: Vec<HeaderValue> = Vec::new();
    for name in headers.keys() {
        if *name == header::VIA {
            // Every Via line the client sent, joined: a field may be split over lines (RFC 9110 5.3).
            let prior = via.get_or_insert_with(String::new);
            for v in headers.get_all(header::VIA) {
                if let Ok(v) = v.to_str() {
                    if !prior.is_empty() {
                        prior.push_str(", ");
                    }
                    prior.push_str(v);
                }
            }
        } else if *name == header::AUTHORIZATION {
            let values = headers.get_all(header::AUTHORIZATION);
            if values.iter().any(is_bearer) {
                doomed.push(name);
                kept_authorization.extend(values.iter().filter(|v| !is_bearer(v)).cloned());
            }
        } else if is_hop_by_hop(name)
            // `Host` stays: `pool::send` sets the upstream's over it in place,
            // which costs one lookup where a removal and an insertion cost two
            // and a shift of the map's entries.
            // The DPoP proof is for the gateway alone (RFC 9449 section 7.1).
            || *name == DPOP
            || is_spoofable(name.as_str())
            || is_override(name.as_str())
            || listed.contains(name)
        {
            doomed.push(name);
        }
    }
    doomed.remove_from(headers);
    for v in kept_authorization {
        headers.append(header::AUTHORIZATION, v);
    }
    headers.reserve(7);
    headers.insert(X_FORWARDED_FOR.clone(), info.forwarded_for.clone());
    let proto = if info.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = &info.host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    let hop = match version {
        Version::HTTP_2 => "2 whosthat",
        Version::HTTP_10 => "1.0 whosthat",
        _ => "1.1 whosthat",
    };
    let via = match via.filter(|v| !v.is_empty()) {
        None => HeaderValue::from_static(hop),
        Some(prior) => HeaderValue::try_from(format!("{prior}, {hop}"))
            .unwrap_or(HeaderValue::from_static(hop)),
    };
    headers.insert(header::VIA, via);
    if let Some(grant) = info.identity {
        let h = &grant.headers;
        if let Some(user) = &h.user {
            headers.insert(X_AUTH_USER.clone(), user.clone());
        }
        headers.insert(X_AUTH_CLIENT.clone(), h.client.clone());
        headers.insert(X_AUTH_SCOPE.clone(), h.scope.clone());
    }
    if let Some(assertion) = &info.assertion {
        headers.insert(
            crate::assertion::X_AUTH_ASSERTION.clone(),
            assertion.clone(),
        );
    }
}

/// HTTP/2 clients may split `cookie` into one field per cookie; for an
/// HTTP/1.1 upstream they are joined with "; " into one (RFC 9113 section 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if all.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Made of valid values and "; ": valid too.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Drops hop-by-hop headers from an upstream response.
fn downstream_response_headers(headers: &mut HeaderMap) {
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut doomed = Doomed::default();
    for name in headers.keys() {
        if is_hop_by_hop(name) || listed.contains(name) {
            doomed.push(name);
        }
    }
    doomed.remove_from(headers);
}

/// Sends the request to `upstream` and returns its response, bodies streamed both ways.
pub async fn forward(
    mut req: Request<Incoming>,
    route: &Route,
    upstream: &Upstream,
    path: &str,
    info: &ForwardInfo<'_>,
) -> Result<Response<Body>, GatewayError> {
    // WebSocket and the route's other `upgrades`: authenticated like any other
    // request (the caller did that), then tunnelled once the upstream agrees.
    // Any other Upgrade (h2c always) is ignored, as RFC 9110 section 7.8 lets a
    // server do: the request goes on as a plain one, its Upgrade, HTTP2-Settings
    // and Connection dropped, and the connection stays HTTP/1.1, so whatever the
    // client sends next is read and checked as a request of its own.
    let upgrade = allowed_upgrade(&req, route);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let client_version = match parts.version {
        Version::HTTP_10 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let (body, body_fault) = limited_body(&parts.headers, body, route)?;
    upstream_request_headers(&mut parts.headers, parts.version, info);
    if let Some(protocol) = &upgrade {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    parts.version = Version::HTTP_11;
    let retry = Retry::plan(route, upgrade.is_some(), &parts, &body);
    parts.uri = upstream_uri(route, upstream, path, parts.uri.query())?;
    let first = send(route, upstream, Request::from_parts(parts, body)).await;
    let mut resp = match first {
        Ok(resp) => resp,
        Err(Failure::Connect) if retry.is_some() => {
            let retry = retry.expect("checked");
            // Boxed: rare, and it would double the room `send` takes in
            // every request's future.
            Box::pin(retry.send(route, upstream, path)).await?
        }
        // The client's body, not the upstream, is what failed.
        Err(_) if body_fault.load(Ordering::Relaxed) == BODY_TOO_LARGE => {
            return Err(GatewayError::PayloadTooLarge);
        }
        Err(_) if body_fault.load(Ordering::Relaxed) == BODY_BROKEN => {
            return Err(GatewayError::BadBody);
        }
        Err(f) => return Err(f.into()),
    };
    let tunnel = agreed_tunnel(&mut resp, upgrade.as_ref(), client_side, route, upstream)?;
    Ok(downstream_response(resp, client_version, tunnel))
}

/// The client's body under the route's limit: refused up front when declared
/// larger, cut off when not declared. The fault cell tells, after a failed
/// exchange, whether the client's body was what failed.
fn limited_body(
    headers: &HeaderMap,
    body: Incoming,
    route: &Route,
) -> Result<(Body, Arc<AtomicU8>), GatewayError> {
    let max = route.max_body_bytes.unwrap_or(u64::MAX);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let fault = Arc::new(AtomicU8::new(BODY_OK));
    let body: Body = DownstreamBody {
        inner: body,
        left: max,
        fault: fault.clone(),
    }
    .boxed();
    Ok((body, fault))
}

/// What a retry on another target needs of the request (its body is empty).
struct Retry {
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
}

impl Retry {
    /// A connection failure of an idempotent request without a body is retried
    /// once on another target: it cannot have reached the upstream.
    fn plan(
        route: &Route,
        upgrade: bool,
        parts: &http::request::Parts,
        body: &Body,
    ) -> Option<Retry> {
        (route.upstreams.len() > 1
            && !upgrade
            && is_idempotent(&parts.method)
            && hyper::body::Body::is_end_stream(body))
        .then(|| Retry {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            query: parts.uri.query().map(str::to_string),
        })
    }

    /// Sends the request again, to a target other than `failed`.
    async fn send(
        self,
        route: &Route,
        failed: &Upstream,
        path: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let other = route
            .other_upstream(failed)
            .ok_or(GatewayError::UpstreamUnreachable)?;
        let mut req = Request::new(crate::error::empty());
        *req.method_mut() = self.method;
        *req.headers_mut() = self.headers;
        *req.uri_mut() = upstream_uri(route, other, path, self.query.as_deref())?;
        send(route, other, req).await.map_err(GatewayError::from)
    }
}

/// Both ends of a tunnel: the client's connection and the upstream's.
type Tunnel = (hyper::upgrade::OnUpgrade, hyper::upgrade::OnUpgrade);

/// The tunnel a 101 response opens, when the upstream switched to a protocol
/// the client asked for and the route allows; `None` for any other status.
fn agreed_tunnel(
    resp: &mut Response<Body>,
    asked: Option<&HeaderValue>,
    client_side: Option<hyper::upgrade::OnUpgrade>,
    route: &Route,
    upstream: &Upstream,
) -> Result<Option<Tunnel>, GatewayError> {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(None);
    }
    // Only to a protocol the client asked for and the route allows; a 101
    // to anything else would make the connection a tunnel nobody checked.
    let agreed = resp
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| switches_to_allowed(v, asked, route));
    match client_side {
        Some(client_side) if agreed => Ok(Some((client_side, hyper::upgrade::on(resp)))),
        _ => {
            tracing::warn!(upstream = %upstream, "upstream switched protocols unasked: refused");
            Err(GatewayError::UpstreamUnreachable)
        }
    }
}

/// The upstream's response as the client gets it: the client's protocol
/// version, hop-by-hop headers dropped, and the tunnel (if any) started.
fn downstream_response(
    resp: Response<Body>,
    client_version: Version,
    tunnel: Option<Tunnel>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    // The client's protocol, not the upstream's: an HTTP/1.0 upstream must not
    // turn the client's HTTP/1.1 answer into 1.0 (and its connection into one
    // that closes). HTTP/2 ignores the field.
    parts.version = client_version;
    let upstream_protocol = parts.headers.get(header::UPGRADE).cloned();
    downstream_response_headers(&mut parts.headers);
    if let Some((client_side, upstream_side)) = tunnel {
        if let Some(protocol) = upstream_protocol {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        tokio::spawn(async move {
            let (Ok(client_io), Ok(upstream_io)) = (client_side.await, upstream_side.await) else {
                return;
            };
            let (mut a, mut b) = (TokioIo::new(client_io), TokioIo::new(upstream_io));
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
    Response::from_parts(parts, body)
}

/// Why an upstream exchange failed.
enum Failure {
    /// Could not connect: the request never reached the upstream.
    Connect,
    Timeout,
    Other,
}

impl From<Failure> for GatewayError {
    fn from(f: Failure) -> GatewayError {
        match f {
            Failure::Timeout => GatewayError::UpstreamTimeout,
            Failure::Connect | Failure::Other => GatewayError::UpstreamUnreachable,
        }
    }
}

/// One exchange with one target; a target that refuses or times out cools down.
async fn send(
    route: &Route,
    upstream: &Upstream,
    req: Request<Body>,
) -> Result<Response<Body>, Failure> {
    match tokio::time::timeout(route.timeout, pool::send(route, upstream, req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Err(_) => {
            upstream.mark_down(route.cooldown);
            Err(Failure::Timeout)
        }
        Ok(Err(e @ pool::SendError::Connect(_))) => {
            tracing::warn!(upstream = %upstream, error = %e, "upstream refused the connection");
            upstream.mark_down(route.cooldown);
            Err(Failure::Connect)
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream, error = %e, "upstream request failed");
            Err(Failure::Other)
        }
    }
}

/// The request target for `upstream`, in origin form (RFC 9112 section 3.2.1):
/// the connection is already to the upstream, and `Host` names it.
fn upstream_uri(
    route: &Route,
    upstream: &Upstream,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, GatewayError> {
    Uri::try_from(route.upstream_path_and_query(upstream, path, query))
        .map_err(|_| GatewayError::BadPath("the path cannot be forwarded"))
}

/// RFC 9110 section 9.2.2.
fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// Upgrade tokens (`name[/version]`) in `values`, trimmed, empty ones skipped.
fn upgrade_tokens<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `route` tunnels the Upgrade token `token` (its `upgrades` name it, or
/// its protocol name); never h2c (RFC 9113 section 3.1), whatever the config.
fn upgrade_allowed(route: &Route, token: &str) -> bool {
    let name = token.split('/').next().unwrap_or("").trim_end();
    !name.eq_ignore_ascii_case("h2c")
        && route
            .upgrades
            .iter()
            .any(|u| u.eq_ignore_ascii_case(token) || u.eq_ignore_ascii_case(name))
}

/// The protocols an HTTP/1.1 request asks to switch to (`Upgrade` with
/// `Connection: upgrade`) that `route` tunnels, in the client's order, as one
/// `Upgrade` value; `None` when it asks for none of them.
fn allowed_upgrade<B>(req: &Request<B>, route: &Route) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || route.upgrades.is_empty() {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let allowed: Vec<&str> = upgrade_tokens(req.headers().get_all(header::UPGRADE).iter())
        .filter(|t| upgrade_allowed(route, t))
        .collect();
    if allowed.is_empty() {
        return None;
    }
    HeaderValue::from_str(&allowed.join(", ")).ok()
}

/// Whether a 101's `Upgrade` names only protocols that were asked for
/// (`asked`, what went upstream) and that `route` tunnels.
fn switches_to_allowed(value: &HeaderValue, asked: Option<&HeaderValue>, route: &Route) -> bool {
    let Some(asked) = asked else {
        return false;
    };
    let mut any = false;
    for t in upgrade_tokens(std::iter::once(value)) {
        any = true;
        let name = t.split('/').next().unwrap_or("");
        let offered = upgrade_tokens(std::iter::once(asked)).any(|a| {
            a.eq_ignore_ascii_case(t)
                || a.split('/').next().unwrap_or("").eq_ignore_ascii_case(name)
        });
        if !offered || !upgrade_allowed(route, t) {
            return false;
        }
    }
    any
}

const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_BROKEN: u8 = 2;

/// The client's request body on its way upstream: cut off past `left` more
/// bytes, and `fault` records whether it ran over or broke (a bad chunk, a
/// connection reset), so that the client is told 413 or 400, not 502.
struct DownstreamBody {
    inner: Incoming,
    left: u64,
    fault: Arc<AtomicU8>,
}

#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over the route's max_body_bytes")
    }
}

impl std::error::Error for TooLarge {}

impl hyper::body::Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => {
                self.fault.store(BODY_BROKEN, Ordering::Relaxed);
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > self.left {
                self.fault.store(BODY_TOO_LARGE, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(TooLarge))));
            }
            self.left -= n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn spoofable_names_in_any_spelling() {
        for n in [
            "X-Auth-User",
            "x_auth_user",
            "X.Auth.Scope",
            "x-auth-anything",
            "X_Forwarded_For",
            "Forwarded",
            "x-real-ip",
        ] {
            assert!(is_spoofable(n), "{n}");
        }
        for n in ["x-authority", "accept", "x-request-id"] {
            assert!(!is_spoofable(n), "{n}");
        }
    }

    #[test]
    fn http2_cookies_are_joined() {
        let xff = HeaderValue::from_static("127.0.0.1");
        let info = ForwardInfo {
            forwarded_for: &xff,
            tls: false,
            host: None,
            identity: None,
            assertion: None,
        };
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.append("cookie", HeaderValue::from_static("c=3"));
        upstream_request_headers(&mut h, Version::HTTP_2, &info);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        upstream_request_headers(&mut h, Version::HTTP_2, &info);
        assert_eq!(h["cookie"], "a=1");
    }

    /// A header of each of `names` (all different), each with `value`.
    fn each_with(names: &[&str], value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        assert_eq!(h.len(), names.len());
        h
    }

    #[test]
    fn only_the_gateways_assertion_goes_upstream() {
        let mut h = each_with(
            &[
                "x-auth-assertion",
                "x_auth_assertion",
                "x.auth.assertion",
                "X-AUTH_ASSERTION",
            ],
            "forged",
        );
        let xff = HeaderValue::from_static("127.0.0.1");
        let mut info = ForwardInfo {
            forwarded_for: &xff,
            tls: false,
            host: None,
            identity: None,
            assertion: Some(HeaderValue::from_static("a.b.c")),
        };
        let mut with = h.clone();
        upstream_request_headers(&mut with, Version::HTTP_11, &info);
        let left: Vec<_> = with
            .iter()
            .filter(|(n, _)| n.as_str().replace(['_', '.'], "-") == "x-auth-assertion")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(left, ["a.b.c"]);
        info.assertion = None;
        upstream_request_headers(&mut h, Version::HTTP_11, &info);
        assert!(h.keys().all(|n| !n.as_str().contains("assertion")), "{h:?}");
    }

    #[test]
    fn headers_rewritten_for_upstream() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer secret-token"),
        );
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-auth-user", HeaderValue::from_static("mallory"));
        h.insert("x_auth_user", HeaderValue::from_static("mallory"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("via", HeaderValue::from_static("1.1 edge"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let grant = Grant::new(
            Some(Arc::from("stefano")),
            Arc::from("cli"),
            ScopeSet::parse("read write").unwrap(),
        );
        let xff = HeaderValue::from_static("127.0.0.1");
        let info = ForwardInfo {
            forwarded_for: &xff,
            tls: false,
            host: Some(HeaderValue::from_static("gw.example")),
            identity: Some(&grant),
            assertion: None,
        };
        upstream_request_headers(&mut h, Version::HTTP_11, &info);
        assert!(h.get("authorization").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("x_auth_user").is_none());
        assert_eq!(h["x-auth-user"], "stefano");
        assert_eq!(h["x-auth-client"], "cli");
        assert_eq!(h["x-auth-scope"], "read write");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 edge, 1.1 whosthat");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn override_names_in_any_spelling() {
        for n in [
            "x-http-method-override",
            "X-HTTP-Method-Override",
            "x_http_method_override",
            "X.Http.Method.Override",
            "x-http-method",
            "X_HTTP_METHOD",
            "x-method-override",
            "x.method_override",
            "x-original-url",
            "X_Original_URL",
            "x-rewrite-url",
            "X.Rewrite.Url",
            "x-original-uri",
        ] {
            assert!(is_override(n), "{n}");
        }
        for n in [
            "x-http-methods",
            "x-original",
            "accept",
            "x-http-method-overridex",
            "y-http-method",
        ] {
            assert!(!is_override(n), "{n}");
        }
    }

    #[test]
    fn override_headers_never_forwarded() {
        let mut h = each_with(
            &[
                "x-http-method-override",
                "x_http_method",
                "x.method.override",
                "x-original-url",
                "x_rewrite_url",
            ],
            "DELETE",
        );
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"),
        );
        let xff = HeaderValue::from_static("127.0.0.1");
        let info = ForwardInfo {
            forwarded_for: &xff,
            tls: false,
            host: None,
            identity: None,
            assertion: None,
        };
        upstream_request_headers(&mut h, Version::HTTP_11, &info);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names.iter().filter(|n| is_override(n)).count(),
            0,
            "{names:?}"
        );
        assert!(h.get("http2-settings").is_none());
        assert_eq!(h["accept"], "*/*");
    }

    fn route_with(methods: &[Method], upgrades: &[&str]) -> Route {
        Route {
            prefix: "/".into(),
            upstreams: vec![Upstream::parse("http://127.0.0.1:9").unwrap()],
            methods: methods.to_vec(),
            upgrades: upgrades.iter().map(|s| s.to_string()).collect(),
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    #[test]
    fn overrides_checked_against_the_routes_methods() {
        let get_only = route_with(&[Method::GET], &[]);
        let any = route_with(&[], &[]);
        let with = |name: &'static str, v: &'static [u8]| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_bytes(v).unwrap());
            h
        };
        for (name, v) in [
            ("x-http-method-override", &b"DELETE"[..]),
            ("x_http_method", b"delete"),
            ("x-method-override", b" Put "),
            ("x-http-method-override", b"GET, DELETE"),
            ("x-http-method-override", b"NOT A METHOD"),
            ("x-http-method-override", b"\xff"),
        ] {
            assert!(override_refused(&get_only, &with(name, v)), "{name}: {v:?}");
            assert!(!override_refused(&any, &with(name, v)), "{name}: {v:?}");
        }
        assert!(!override_refused(
            &get_only,
            &with("x-http-method-override", b"get")
        ));
        assert!(!override_refused(
            &get_only,
            &with("x-http-method-override", b"")
        ));
        // URL overrides are dropped, not checked against methods.
        assert!(!override_refused(
            &get_only,
            &with("x-original-url", b"DELETE")
        ));
    }

    fn upgrade_request(version: Version, connection: &str, upgrade: &str) -> Request<()> {
        Request::builder()
            .version(version)
            .header("connection", connection)
            .header("upgrade", upgrade)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_the_routes_upgrades_are_asked_for() {
        let ws = route_with(&[], &["websocket"]);
        let none = route_with(&[], &[]);
        let h11 = Version::HTTP_11;
        let asked = |r: &Route, req: &Request<()>| {
            allowed_upgrade(req, r).map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            asked(&ws, &upgrade_request(h11, "Upgrade", "websocket")).as_deref(),
            Some("websocket")
        );
        assert_eq!(
            asked(
                &ws,
                &upgrade_request(h11, "keep-alive, upgrade", "WebSocket")
            )
            .as_deref(),
            Some("WebSocket")
        );
        assert_eq!(
            asked(&ws, &upgrade_request(h11, "Upgrade", "h2c, websocket")).as_deref(),
            Some("websocket")
        );
        assert_eq!(
            asked(&ws, &upgrade_request(h11, "Upgrade, HTTP2-Settings", "h2c")),
            None
        );
        assert_eq!(asked(&ws, &upgrade_request(h11, "Upgrade", "H2C/1")), None);
        assert_eq!(
            asked(&ws, &upgrade_request(h11, "keep-alive", "websocket")),
            None
        );
        assert_eq!(
            asked(
                &ws,
                &upgrade_request(Version::HTTP_10, "Upgrade", "websocket")
            ),
            None
        );
        assert_eq!(
            asked(&none, &upgrade_request(h11, "Upgrade", "websocket")),
            None
        );
        // Even a route that names h2c (the config refuses it) never tunnels it.
        let h2c = route_with(&[], &["h2c"]);
        assert_eq!(asked(&h2c, &upgrade_request(h11, "Upgrade", "h2c")), None);
    }

    #[test]
    fn a_101_must_switch_to_what_was_asked_and_allowed() {
        let ws = route_with(&[], &["websocket", "foo"]);
        let asked = HeaderValue::from_static("websocket");
        let v = HeaderValue::from_static;
        assert!(switches_to_allowed(&v("WebSocket"), Some(&asked), &ws));
        assert!(!switches_to_allowed(&v("h2c"), Some(&asked), &ws));
        assert!(!switches_to_allowed(&v("foo"), Some(&asked), &ws));
        assert!(!switches_to_allowed(
            &v("websocket, h2c"),
            Some(&asked),
            &ws
        ));
        assert!(!switches_to_allowed(&v(""), Some(&asked), &ws));
        assert!(!switches_to_allowed(&v("websocket"), None, &ws));
    }

    #[test]
    fn pool_keys_never_reused_across_tls_configs() {
        let https = Upstream::parse("https://127.0.0.1:9").unwrap();
        let http = Upstream::parse("http://127.0.0.1:9").unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            // Each config is freed before the next is built: its address may come
            // back, its id never does.
            let mut route = route_with(&[], &[]);
            route.tls = Some(upstream_tls(rustls::RootCertStore::empty()));
            let key = client_key(&route, &https);
            assert!(seen.insert(key), "pool key {key:?} reused");
            assert_eq!(client_key(&route, &http), (5000, 0, false));
            let clone = route_with(&[], &[]);
            let clone = Route {
                tls: route.tls.clone(),
                ..clone
            };
            assert_eq!(client_key(&clone, &https), key, "one config, one pool");
        }
        let plain = route_with(&[], &[]);
        assert_eq!(client_key(&plain, &https).1, default_tls().id);
        assert_ne!(default_tls().id, 0);
    }

    #[test]
    fn pool_map_stays_bounded_and_drops_pools_of_freed_configs() {
        let https = Upstream::parse("https://127.0.0.1:9").unwrap();
        let mut kept = route_with(&[], &[]);
        kept.tls = Some(upstream_tls(rustls::RootCertStore::empty()));
        pool::make_group(&kept, &https);
        for _ in 0..3 * pool::MAX_CLIENTS {
            let mut route = route_with(&[], &[]);
            route.tls = Some(upstream_tls(rustls::RootCertStore::empty()));
            pool::make_group(&route, &https);
            let n = pool::groups_on_this_thread();
            assert!(n <= pool::MAX_CLIENTS, "{n} pools");
        }
        // Pools of freed configs went first: the live one is still pooled.
        assert!(pool::has_group(client_key(&kept, &https)));
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_address_trusts_forwarding_only_from_trusted_proxies() {
        let lb: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let spoofed = xff(&["1.2.3.4"]);
        // An untrusted peer: its headers are ignored.
        assert_eq!(
            client_address(&lb, ip("192.0.2.7"), &spoofed),
            ip("192.0.2.7")
        );
        // No proxies configured: never read.
        assert_eq!(
            client_address(&[], ip("10.0.0.1"), &spoofed),
            ip("10.0.0.1")
        );
        // From the load balancer: the right-most untrusted entry.
        let h = xff(&["6.6.6.6, 198.51.100.9", "10.0.0.2"]);
        assert_eq!(client_address(&lb, ip("10.0.0.1"), &h), ip("198.51.100.9"));
        // No header from the balancer: the balancer itself.
        assert_eq!(
            client_address(&lb, ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // Every entry trusted: the left-most.
        let h = xff(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(client_address(&lb, ip("10.0.0.1"), &h), ip("10.1.1.1"));
        // Garbage where the client should be: the proxy that wrote it.
        let h = xff(&["1.2.3.4, garbage, 10.0.0.3"]);
        assert_eq!(client_address(&lb, ip("10.0.0.1"), &h), ip("10.0.0.3"));
        // Ports and brackets are tolerated; mapped IPv4 is IPv4.
        let h = xff(&["[2001:db8::5]:443, 10.0.0.9:80"]);
        assert_eq!(client_address(&lb, ip("10.0.0.1"), &h), ip("2001:db8::5"));
        assert_eq!(
            client_address(&lb, ip("::ffff:10.0.0.1"), &xff(&["::ffff:192.0.2.1"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn one_client_is_an_ipv4_address_or_an_ipv6_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_block(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_block(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            client_block(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_block(ip("2001:db8:1:2:ffff:1:2:3")),
            client_block(ip("2001:db8:1:2::9"))
        );
        assert_ne!(client_block(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn client_address_from_forwarded() {
        let lb: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append(
            "forwarded",
            HeaderValue::from_static(
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.0.0.5;by=10.0.0.1",
            ),
        );
        assert_eq!(
            client_address(&lb, ip("10.0.0.1"), &h),
            ip("2001:db8:cafe::17")
        );
        let mut h = HeaderMap::new();
        h.append("forwarded", HeaderValue::from_static("for=unknown"));
        assert_eq!(client_address(&lb, ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // X-Forwarded-For, when present, is the one read.
        h.append("x-forwarded-for", HeaderValue::from_static("192.0.2.3"));
        assert_eq!(client_address(&lb, ip("10.0.0.1"), &h), ip("192.0.2.3"));
    }
}
