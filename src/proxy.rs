//! Forwarding to upstreams: the pooled client, the header rules, streaming bodies.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::error::{Body, BoxError, GatewayError};
use crate::routes::{Route, Upstream};
use crate::store::Grant;

/// A pooled upstream client: plain HTTP, or HTTPS through rustls.
#[derive(Clone)]
pub enum UpstreamClient {
    Http(Client<HttpConnector, Body>),
    Https(Client<HttpsConnector<HttpConnector>, Body>),
}

impl UpstreamClient {
    fn request(&self, req: Request<Body>) -> ResponseFuture {
        match self {
            UpstreamClient::Http(c) => c.request(req),
            UpstreamClient::Https(c) => c.request(req),
        }
    }
}

/// What tells pools apart: connect timeout (ms), TLS config (its address; 0 for
/// the webpki roots), https or not.
type ClientKey = (u64, usize, bool);

thread_local! {
    /// Keep-alive pools per worker thread, shared by every route with the same
    /// settings: a pooled connection is always driven by the thread that uses it.
    static CLIENTS: RefCell<HashMap<ClientKey, UpstreamClient>> = RefCell::new(HashMap::new());
}

/// TLS to upstreams: TLS 1.2 and 1.3, trusting the webpki roots and `roots`
/// (a route's `ca_file`). The one place upstream TLS is set up.
pub fn upstream_tls(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let mut all = rustls::RootCertStore::empty();
    all.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    all.roots.extend(roots.roots);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(all)
    .with_no_client_auth();
    Arc::new(config)
}

/// TLS to public upstreams: the webpki roots alone, built once.
fn default_tls() -> Arc<rustls::ClientConfig> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(|| upstream_tls(rustls::RootCertStore::empty()))
        .clone()
}

/// This thread's client for `route`'s settings and `upstream`'s scheme.
pub fn upstream_client(route: &Route, upstream: &Upstream) -> UpstreamClient {
    let https = upstream.scheme == Scheme::HTTPS;
    let tls_key = if https {
        route.tls.as_ref().map_or(0, |t| Arc::as_ptr(t) as usize)
    } else {
        0
    };
    let key = (route.connect_timeout.as_millis() as u64, tls_key, https);
    CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        // Reloads may leave pools for configs no longer in force: keep the map small.
        if clients.len() >= 64 {
            clients.clear();
        }
        let c = new_client(
            route.connect_timeout,
            https.then(|| route.tls.clone().unwrap_or_else(default_tls)),
        );
        clients.insert(key, c.clone());
        c
    })
}

fn new_client(connect_timeout: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new());
    match tls {
        None => UpstreamClient::Http(builder.build(connector)),
        Some(tls) => {
            connector.enforce_http(false);
            let https = HttpsConnectorBuilder::new()
                .with_tls_config((*tls).clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector);
            UpstreamClient::Https(builder.build(https))
        }
    }
}

static X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
static X_AUTH_CLIENT: HeaderName = HeaderName::from_static("x-auth-client");
static X_AUTH_SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded either way.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
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

/// Names listed in `Connection` (they are hop-by-hop for this message).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(v) = v.to_str() {
            for name in v.split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// Removes every header (all its values) for which `drop` holds for one of its values.
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName, &HeaderValue) -> bool) {
    let doomed: Vec<HeaderName> = headers
        .iter()
        .filter(|(n, v)| drop(n, v))
        .map(|(n, _)| n.clone())
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

fn is_bearer(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"bearer")
}

/// What the upstream receives (INTERFACE.md, "What the upstream receives").
pub struct ForwardInfo<'a> {
    /// The peer's address, rendered once per connection.
    pub forwarded_for: &'a HeaderValue,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// The Host (or :authority) the client used.
    pub host: Option<HeaderValue>,
    pub identity: Option<&'a Grant>,
}

/// Rewrites request headers for the upstream, in one pass over them.
pub fn upstream_request_headers(headers: &mut HeaderMap, version: Version, info: &ForwardInfo<'_>) {
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(headers.len() + 7);
    let mut via: Option<String> = None;
    let mut current: Option<HeaderName> = None;
    for (name, value) in headers.drain() {
        if let Some(n) = name {
            current = Some(n);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        if *name == header::VIA {
            // Every Via line the client sent, joined: a field may be split over lines (RFC 9110 5.3).
            if let Ok(v) = value.to_str() {
                let prior = via.get_or_insert_with(String::new);
                if !prior.is_empty() {
                    prior.push_str(", ");
                }
                prior.push_str(v);
            }
            continue;
        }
        let dropped = is_hop_by_hop(name)
            || *name == header::HOST
            || (*name == header::AUTHORIZATION && is_bearer(&value))
            || is_spoofable(name.as_str())
            || listed.contains(name);
        if !dropped {
            out.append(name.clone(), value);
        }
    }
    out.insert(X_FORWARDED_FOR.clone(), info.forwarded_for.clone());
    let proto = if info.tls { "https" } else { "http" };
    out.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = &info.host {
        out.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    let hop = match version {
        Version::HTTP_2 => "2 whosthat",
        Version::HTTP_10 => "1.0 whosthat",
        _ => "1.1 whosthat",
    };
    let via = match via {
        None => HeaderValue::from_static(hop),
        Some(prior) => HeaderValue::try_from(format!("{prior}, {hop}"))
            .unwrap_or(HeaderValue::from_static(hop)),
    };
    out.insert(header::VIA, via);
    if let Some(grant) = info.identity {
        let h = &grant.headers;
        if let Some(user) = &h.user {
            out.insert(X_AUTH_USER.clone(), user.clone());
        }
        out.insert(X_AUTH_CLIENT.clone(), h.client.clone());
        out.insert(X_AUTH_SCOPE.clone(), h.scope.clone());
    }
    *headers = out;
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
    let listed = connection_listed(headers);
    remove_where(headers, |name, _| {
        is_hop_by_hop(name) || listed.contains(name)
    });
}

/// Sends the request to `upstream` and returns its response, bodies streamed both ways.
pub async fn forward(
    mut req: Request<Incoming>,
    route: &Route,
    upstream: &Upstream,
    path: &str,
    info: &ForwardInfo<'_>,
) -> Result<Response<Body>, GatewayError> {
    // WebSocket and other `Upgrade` requests: authenticated like any other
    // request (the caller did that), then tunnelled once the upstream agrees.
    let upgrade = upgrade_protocol(&req);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The route's body limit: refused up front when declared, cut off when not.
    let max = route.max_body_bytes.unwrap_or(u64::MAX);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let body_fault = Arc::new(AtomicU8::new(BODY_OK));
    let body: Body = DownstreamBody {
        inner: body,
        left: max,
        fault: body_fault.clone(),
    }
    .boxed();
    upstream_request_headers(&mut parts.headers, parts.version, info);
    if let Some(protocol) = &upgrade {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    parts.version = Version::HTTP_11;
    // A connection failure of an idempotent request without a body is retried
    // once on another target: it cannot have reached the upstream.
    let retry = (route.upstreams.len() > 1
        && upgrade.is_none()
        && is_idempotent(&parts.method)
        && hyper::body::Body::is_end_stream(&body))
    .then(|| {
        let query = parts.uri.query().map(str::to_string);
        (parts.method.clone(), parts.headers.clone(), query)
    });
    parts.uri = upstream_uri(route, upstream, path, parts.uri.query())?;
    let first = send(route, upstream, Request::from_parts(parts, body)).await;
    let mut resp = match first {
        Ok(resp) => resp,
        Err(Failure::Connect) if retry.is_some() => {
            let (method, headers, query) = retry.expect("checked");
            let other = route
                .other_upstream(upstream)
                .ok_or(GatewayError::UpstreamUnreachable)?;
            let mut req = Request::new(crate::error::empty());
            *req.method_mut() = method;
            *req.headers_mut() = headers;
            *req.uri_mut() = upstream_uri(route, other, path, query.as_deref())?;
            send(route, other, req).await.map_err(GatewayError::from)?
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
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let tunnel = match client_side {
        Some(client_side) if switching => Some((client_side, hyper::upgrade::on(&mut resp))),
        _ => None,
    };
    let (mut parts, body) = resp.into_parts();
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
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed(),
    ))
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
) -> Result<Response<Incoming>, Failure> {
    let client = upstream_client(route, upstream);
    match tokio::time::timeout(route.timeout, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Err(_) => {
            upstream.mark_down(route.cooldown);
            Err(Failure::Timeout)
        }
        Ok(Err(e)) if e.is_connect() => {
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

fn upstream_uri(
    route: &Route,
    upstream: &Upstream,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, GatewayError> {
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(route.upstream_path_and_query(upstream, path, query))
        .build()
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

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade` with
/// `Connection: upgrade`), if any.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
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
}
