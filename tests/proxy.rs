//! The authenticated reverse proxy, through real HTTP: RFC 6750 bearer checks,
//! what the upstream receives, routing, upstream failures, streaming bodies,
//! HTTP/2 cleartext and graceful shutdown.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

// ------------------------------------------------------------------ helpers

/// A request body fed through a channel: unknown length, so HTTP/1.1 sends it chunked,
/// and each chunk leaves only when the test sends it.
struct ChanBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A fresh HTTP/1.1 connection to `addr` with a streaming request body type.
async fn h1_connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<ChanBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A streaming request (chunked body fed by the returned sender).
fn streaming_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (Request<ChanBody>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(4);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    (b.body(ChanBody(rx)).unwrap(), tx)
}

/// Sends raw HTTP/1.1 bytes (the request should carry `Connection: close`) and
/// returns (status, head, body), the body de-chunked if needed.
async fn raw_reply(addr: SocketAddr, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let answer = raw(addr, bytes).await;
    let status = raw_status(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {answer:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.as_bytes().to_vec()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n =
            usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).expect("chunk size");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&rest.as_bytes()[..n]);
        s = &rest[n + 2..];
    }
}

/// `name` with `_` and `.` read as `-`, lower-cased: how many frameworks see it.
fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Panics if any header value the upstream saw contains `needle`.
fn assert_no_value_contains(seen: &Seen, needle: &str) {
    for p in seen.0["headers"].as_array().unwrap() {
        let (n, v) = (p[0].as_str().unwrap(), p[1].as_str().unwrap());
        assert!(
            !v.contains(needle),
            "upstream saw {n}: {v} (contains client-sent {needle:?})"
        );
    }
}

fn scope_set(s: &str) -> BTreeSet<String> {
    s.split(' ').map(str::to_string).collect()
}

fn hits(up: &Upstream) -> usize {
    up.hits.load(Ordering::SeqCst)
}

/// The standard config plus extra TOML.
async fn gateway_with_extra(up: &Upstream, extra: &str) -> Gateway {
    spawn_gateway_with(&(config_text(up.addr) + extra)).await
}

// ------------------------------------------------------- RFC 6750 section 3

#[tokio::test]
async fn no_authorization_is_401_with_bare_bearer_challenge() {
    let (gw, up) = setup().await;
    let r = get(&gw.url("/api/orders"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert_eq!(challenges[0], "Bearer realm=\"whosthat\"");
    assert!(!r.header("www-authenticate").unwrap().contains("error"));
    assert_eq!(
        r.json()["error"].as_str().map(|s| !s.is_empty()),
        Some(true)
    );
    assert_eq!(hits(&up), 0, "upstream must not be hit");
}

#[tokio::test]
async fn basic_credentials_on_protected_route_is_401_bare_challenge() {
    let (gw, up) = setup().await;
    let r = get(
        &gw.url("/api/orders"),
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"whosthat\"")
    );
    assert_eq!(hits(&up), 0, "upstream must not be hit");
}

#[tokio::test]
async fn unknown_token_is_401_invalid_token() {
    let (gw, up) = setup().await;
    let r = get_with_token(&gw.url("/api/orders"), "no-such-token-0123456789").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let c = r.header("www-authenticate").unwrap();
    assert!(c.starts_with("Bearer "), "{c}");
    assert!(c.contains("realm=\"whosthat\""), "{c}");
    assert!(c.contains("error=\"invalid_token\""), "{c}");
    assert_eq!(r.json()["error"], "invalid_token");
    assert_eq!(hits(&up), 0, "upstream must not be hit");
}

#[tokio::test]
async fn insufficient_scope_is_403_naming_the_scope() {
    let (gw, up) = setup().await;
    let bob = access_token(&gw, "bob", BOB_PW).await;
    let r = get_with_token(&gw.url("/admin/panel"), &bob).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let c = r.header("www-authenticate").unwrap();
    assert!(c.starts_with("Bearer "), "{c}");
    assert!(c.contains("error=\"insufficient_scope\""), "{c}");
    assert!(c.contains("scope=\"admin\""), "{c}");
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(hits(&up), 0, "upstream must not be hit");
    // The same token is fine where its scope suffices.
    let ok = get_with_token(&gw.url("/api/x"), &bob).await;
    assert_eq!(ok.seen().header("x-auth-user").as_deref(), Some("bob"));
}

#[tokio::test]
async fn token_in_query_is_not_accepted() {
    // RFC 9700 section 4.3.2: access tokens are not taken from the query; one
    // there is refused as a malformed request (RFC 6750 section 3.1).
    let (gw, up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get(&gw.url(&format!("/api/x?access_token={t}")), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(hits(&up), 0, "upstream must not be hit");
}

async fn assert_malformed(gw: &Gateway, up: &Upstream, headers: &[(&str, &str)]) {
    let r = get(&gw.url("/api/orders"), headers).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "{headers:?}: {}",
        r.text()
    );
    let c = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{headers:?}: no challenge"));
    assert!(c.starts_with("Bearer "), "{c}");
    assert!(c.contains("error=\"invalid_request\""), "{headers:?}: {c}");
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(hits(up), 0, "upstream must not be hit for {headers:?}");
}

#[tokio::test]
async fn bearer_with_two_tokens_is_400_invalid_request() {
    let (gw, up) = setup().await;
    assert_malformed(&gw, &up, &[("authorization", "Bearer a b")]).await;
}

#[tokio::test]
async fn bearer_without_token_is_400_invalid_request() {
    let (gw, up) = setup().await;
    assert_malformed(&gw, &up, &[("authorization", "Bearer")]).await;
}

#[tokio::test]
async fn two_authorization_headers_is_400_invalid_request() {
    let (gw, up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let a = format!("Bearer {t}");
    // Even when both carry the same valid token.
    assert_malformed(&gw, &up, &[("authorization", &a), ("authorization", &a)]).await;
    assert_malformed(
        &gw,
        &up,
        &[
            ("authorization", "Bearer abc"),
            ("authorization", &basic("alice", ALICE_PW)),
        ],
    )
    .await;
}

#[tokio::test]
async fn bearer_scheme_name_is_case_insensitive() {
    let (gw, up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {t}");
        let r = get(&gw.url("/api/x"), &[("authorization", &auth)]).await;
        let seen = r.seen();
        assert_eq!(
            seen.header("x-auth-user").as_deref(),
            Some("alice"),
            "{scheme}"
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "{scheme}: the bearer credential must not be forwarded"
        );
    }
    assert_eq!(hits(&up), 3);
}

// ------------------------------------------------- what the upstream receives

#[tokio::test]
async fn prefix_is_stripped_and_query_kept() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/api/orders/7?x=1"), &t).await;
    assert_eq!(r.seen().uri(), "/orders/7?x=1");
    let r = get_with_token(&gw.url("/api/orders/7?b=2&a=%20x&a=y&empty="), &t).await;
    assert_eq!(r.seen().uri(), "/orders/7?b=2&a=%20x&a=y&empty=");
    let r = get_with_token(&gw.url("/api/?x=1"), &t).await;
    assert_eq!(r.seen().uri(), "/?x=1");
}

#[tokio::test]
async fn admin_prefix_is_not_stripped() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/admin/users/3?verbose=1"), &t).await;
    assert_eq!(r.seen().uri(), "/admin/users/3?verbose=1");
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/based/items/9?q=a%2Fb"), &t).await;
    assert_eq!(r.seen().uri(), "/v1/items/9?q=a%2Fb");
}

#[tokio::test]
async fn bearer_removed_and_identity_headers_set() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = request(
        Method::POST,
        &gw.url("/api/orders"),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-keep-me", "yes"),
        ],
        "hello",
    )
    .await;
    let seen = r.seen();
    assert_eq!(seen.method(), "POST");
    assert_eq!(seen.0["body_len"], 5);
    assert!(
        seen.header_all("authorization").is_empty(),
        "{:?}",
        seen.header_names()
    );
    assert_no_value_contains(&seen, &t);
    assert_eq!(seen.header_all("x-auth-user"), vec!["alice"]);
    assert_eq!(seen.header_all("x-auth-client"), vec!["cli"]);
    let scope = seen.header_all("x-auth-scope");
    assert_eq!(scope.len(), 1, "{scope:?}");
    assert!(
        !scope[0].contains(',') && !scope[0].contains("  "),
        "not space-separated: {:?}",
        scope[0]
    );
    assert_eq!(scope_set(&scope[0]), scope_set("read write admin"));
    assert_eq!(
        seen.header("x-keep-me").as_deref(),
        Some("yes"),
        "end-to-end headers pass"
    );
}

#[tokio::test]
async fn narrowed_scope_is_what_upstream_sees() {
    let (gw, _up) = setup().await;
    let login = login(&gw, "alice", ALICE_PW, "read").await;
    let t = login["access_token"].as_str().unwrap();
    let seen = get_with_token(&gw.url("/api/x"), t).await.seen();
    assert_eq!(seen.header_all("x-auth-scope"), vec!["read"]);
    // A read-only token does not open the admin route.
    let r = get_with_token(&gw.url("/admin/x"), t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forwarding_headers_are_set() {
    let (gw, up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    // The Host the client sent (here the real one).
    let seen = get_with_token(&gw.url("/api/x"), &t).await.seen();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        vec![gw.addr.to_string()]
    );
    // A Host naming the gateway by another name.
    let auth = format!("Bearer {t}");
    let seen = get(
        &gw.url("/api/x"),
        &[("authorization", &auth), ("host", "gw.example:8443")],
    )
    .await
    .seen();
    assert_eq!(seen.header_all("x-forwarded-host"), vec!["gw.example:8443"]);
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    // The upstream is told its own name, once; the client's Host reaches it only
    // as X-Forwarded-Host.
    assert_eq!(seen.header_all("host"), vec![up.addr.to_string()]);
}

#[tokio::test]
async fn via_is_added_and_client_via_kept() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let seen = get_with_token(&gw.url("/api/x"), &t).await.seen();
    let via = seen.header_all("via");
    assert_eq!(via.len(), 1, "{via:?}");
    assert!(via[0].contains("whosthat"), "{via:?}");
    assert!(via[0].starts_with("1.1 "), "{via:?}");

    let auth = format!("Bearer {t}");
    let seen = get(
        &gw.url("/api/x"),
        &[("authorization", &auth), ("via", "1.0 edge-proxy")],
    )
    .await
    .seen();
    let via = seen.header_all("via").join(", ");
    assert!(
        via.starts_with("1.0 edge-proxy"),
        "client Via must come first: {via:?}"
    );
    assert!(via.ends_with("whosthat"), "ours must be appended: {via:?}");
    assert!(via.matches("whosthat").count() == 1, "{via:?}");
}

#[tokio::test]
async fn client_via_on_two_lines_is_kept_whole() {
    // A field may be split over several lines (RFC 9110 section 5.3); every entry stays.
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let seen = get(
        &gw.url("/api/x"),
        &[
            ("authorization", &auth),
            ("via", "1.0 edge-a"),
            ("via", "1.1 edge-b"),
        ],
    )
    .await
    .seen();
    let via = seen.header_all("via").join(", ");
    let entries: Vec<&str> = via.split(',').map(str::trim).collect();
    assert_eq!(
        entries,
        vec!["1.0 edge-a", "1.1 edge-b", "1.1 whosthat"],
        "upstream saw Via {via:?}"
    );
}

#[tokio::test]
async fn via_names_the_client_protocol_version() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let req = format!(
        "GET /api/x HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {t}\r\n\r\n",
        gw.addr
    );
    let (status, head, body) = raw_reply(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    let seen = Seen(serde_json::from_slice(&body).unwrap());
    assert_eq!(seen.header_all("via"), vec!["1.0 whosthat"]);
    assert_eq!(seen.0["version"], "HTTP/1.1");
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let seen = get(
        &gw.url("/api/x"),
        &[
            ("authorization", &auth),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5, max=100"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("proxy-authorization", "Basic cHJveHk6cHc="),
            ("proxy-connection", "keep-alive"),
            ("x-keep-me", "yes"),
        ],
    )
    .await
    .seen();
    let names: Vec<String> = seen
        .header_names()
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    for gone in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} reached the upstream: {names:?}"
        );
    }
    assert_no_value_contains(&seen, "cHJveHk6cHc=");
    assert_eq!(seen.header("x-keep-me").as_deref(), Some("yes"));
}

#[tokio::test]
async fn upgrade_header_is_not_forwarded() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let (status, head, body) = raw_reply(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    let seen = Seen(serde_json::from_slice(&body).unwrap());
    assert_eq!(seen.header("upgrade"), None, "{:?}", seen.header_names());
    assert_eq!(seen.header("connection"), None, "{:?}", seen.header_names());
}

#[tokio::test]
async fn connection_named_headers_removed_on_raw_http() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    // Two Connection headers, odd spacing and case.
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nConnection: X-Drop-Me ,x-drop-too\r\n\
         Connection: close\r\nX-Drop-Me: 1\r\nx-drop-too: 2\r\nX-Keep-Me: 3\r\n\r\n",
        gw.addr
    );
    let (status, head, body) = raw_reply(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    let seen = Seen(serde_json::from_slice(&body).unwrap());
    assert_eq!(seen.header("x-drop-me"), None, "{:?}", seen.header_names());
    assert_eq!(seen.header("x-drop-too"), None, "{:?}", seen.header_names());
    assert_eq!(seen.header("x-keep-me").as_deref(), Some("3"));
}

#[tokio::test]
async fn spoofed_identity_headers_do_not_reach_upstream() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "bob", BOB_PW).await;
    let auth = format!("Bearer {t}");
    let seen = get(
        &gw.url("/api/x"),
        &[
            ("authorization", &auth),
            ("x-auth-user", "mallory-1"),
            ("x_auth_user", "mallory-2"),
            ("x.auth.user", "mallory-3"),
            ("x-auth-scope", "mallory-4 admin"),
            ("x-auth-client", "mallory-5"),
            ("x-auth-anything", "mallory-6"),
            ("x_Auth.Roles", "mallory-7"),
        ],
    )
    .await
    .seen();
    assert_no_value_contains(&seen, "mallory");
    for n in seen.header_names() {
        if folded(&n).starts_with("x-auth-") {
            assert!(
                ["x-auth-user", "x-auth-client", "x-auth-scope"].contains(&n.as_str()),
                "client-sent {n} reached the upstream"
            );
        }
    }
    assert_eq!(seen.header_all("x-auth-user"), vec!["bob"]);
    assert_eq!(seen.header_all("x-auth-client"), vec!["cli"]);
    assert_eq!(seen.header_all("x-auth-scope"), vec!["read"]);
}

#[tokio::test]
async fn spoofed_forwarding_headers_do_not_reach_upstream() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let seen = get(
        &gw.url("/api/x"),
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "6.6.6.1"),
            ("x-forwarded-for", "6.6.6.2"),
            ("x_forwarded_for", "6.6.6.3"),
            ("x-forwarded-host", "evil-1.example"),
            ("x_forwarded_host", "evil-2.example"),
            ("x.forwarded.host", "evil-3.example"),
            ("x-forwarded-proto", "evil-https"),
            ("x-forwarded-port", "6666"),
            ("forwarded", "for=6.6.6.4;host=evil-4.example;proto=https"),
            ("x-real-ip", "6.6.6.5"),
            ("x_real_ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.7"),
        ],
    )
    .await
    .seen();
    assert_no_value_contains(&seen, "6.6.6.");
    assert_no_value_contains(&seen, "evil");
    assert_no_value_contains(&seen, "6666");
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        vec![gw.addr.to_string()]
    );
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    let names: Vec<String> = seen.header_names().iter().map(|n| folded(n)).collect();
    for gone in ["forwarded", "x-real-ip", "x-client-ip", "x-forwarded-port"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} reached the upstream: {names:?}"
        );
    }
    // Only the canonical spellings of ours, once each.
    for n in seen.header_names() {
        if folded(&n).starts_with("x-forwarded-") {
            assert!(
                ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"].contains(&n.as_str()),
                "client-sent {n} reached the upstream"
            );
        }
    }
}

#[tokio::test]
async fn spoofed_headers_over_raw_tcp_do_not_reach_upstream() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "bob", BOB_PW).await;
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\n\
         X-Auth-User: mallory-1\r\nx_auth_user: mallory-2\r\nX.Auth.User: mallory-3\r\n\
         X-AUTH-SCOPE: admin mallory-4\r\nX-Auth-Anything: mallory-5\r\nX_AUTH_CLIENT: mallory-6\r\n\
         X-Forwarded-For: 6.6.6.1\r\nx_forwarded_host: evil.example\r\nX.Forwarded.Proto: evil\r\n\
         Forwarded: for=6.6.6.2\r\nX-Real-IP: 6.6.6.3\r\nX_Real_IP: 6.6.6.4\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let (status, head, body) = raw_reply(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    let seen = Seen(serde_json::from_slice(&body).unwrap());
    assert_no_value_contains(&seen, "mallory");
    assert_no_value_contains(&seen, "6.6.6.");
    assert_no_value_contains(&seen, "evil");
    assert_eq!(seen.header_all("x-auth-user"), vec!["bob"]);
    assert_eq!(seen.header_all("x-auth-client"), vec!["cli"]);
    assert_eq!(seen.header_all("x-auth-scope"), vec!["read"]);
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        vec![gw.addr.to_string()]
    );
}

#[tokio::test]
async fn public_route_forwards_no_identity_and_no_bearer() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let r = get(
        &gw.url("/public/docs?page=2"),
        &[
            ("authorization", &auth),
            ("x-auth-user", "mallory"),
            ("x_auth_scope", "admin"),
            ("x.auth.client", "mallory"),
            ("x-auth-anything", "mallory"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await;
    let seen = r.seen();
    assert_eq!(seen.uri(), "/docs?page=2");
    for n in seen.header_names() {
        assert!(
            !folded(&n).starts_with("x-auth-"),
            "{n} reached the upstream on a public route"
        );
    }
    assert!(
        seen.header_all("authorization").is_empty(),
        "a bearer token was forwarded on a public route"
    );
    assert_no_value_contains(&seen, &t);
    assert_no_value_contains(&seen, "mallory");
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert!(seen.header("via").unwrap().contains("whosthat"));
    // No credentials at all is fine on a public route.
    let r = get(&gw.url("/public/"), &[]).await;
    assert_eq!(r.seen().uri(), "/");
}

// ------------------------------------------------------------ response side

#[tokio::test]
async fn upstream_hop_by_hop_response_headers_are_dropped() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/api/x"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-hop"), None, "{:?}", r.headers);
    for v in r.headers.get_all("connection") {
        assert!(
            !v.to_str().unwrap().contains("x-upstream-hop"),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "end-to-end headers pass"
    );
    // Same over raw TCP, where nothing client-side could have filtered them.
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let (status, head, _) = raw_reply(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("x-upstream-hop"),
        "{head}"
    );
}

// ------------------------------------------------------------------ routing

#[tokio::test]
async fn no_route_is_404_json() {
    let (gw, up) = setup().await;
    let r = get(&gw.url("/nothing-here"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["error"].is_string(), "{}", r.text());
    assert_eq!(hits(&up), 0);
}

#[tokio::test]
async fn method_not_in_route_is_405_with_allow() {
    let (gw, up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let r = request(
        Method::POST,
        &gw.url("/get-only/x"),
        &[("authorization", &auth)],
        "body",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET"));
    assert!(r.json()["error"].is_string());
    assert_eq!(hits(&up), 0, "upstream must not be hit");
    let r = get(&gw.url("/get-only/x"), &[("authorization", &auth)]).await;
    let seen = r.seen();
    assert_eq!(seen.method(), "GET");
    assert_eq!(seen.uri(), "/get-only/x");
}

#[tokio::test]
async fn longest_prefix_on_whole_segments() {
    let (gw, up) = setup().await;
    let alice = access_token(&gw, "alice", ALICE_PW).await;
    let bob = access_token(&gw, "bob", BOB_PW).await;
    // /admin/x is the admin route: not stripped, and it needs admin.
    assert_eq!(
        get_with_token(&gw.url("/admin/x"), &alice)
            .await
            .seen()
            .uri(),
        "/admin/x"
    );
    assert_eq!(
        get_with_token(&gw.url("/admin/x"), &bob).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_with_token(&gw.url("/admin"), &alice).await.seen().uri(),
        "/admin"
    );
    let before = hits(&up);
    // /administrator is not under /admin/, and there is no root route.
    let r = get_with_token(&gw.url("/administrator"), &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = get_with_token(&gw.url("/apix/y"), &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(hits(&up), before);
    // /api without the slash is the /api/ route, and goes upstream as `/`.
    assert_eq!(
        get_with_token(&gw.url("/api"), &alice).await.seen().uri(),
        "/"
    );
    assert_eq!(
        get_with_token(&gw.url("/api?x=1"), &alice)
            .await
            .seen()
            .uri(),
        "/?x=1"
    );
    assert_eq!(
        get_with_token(&gw.url("/api/"), &alice).await.seen().uri(),
        "/"
    );
}

// ------------------------------------------------------- upstream failures

#[tokio::test]
async fn upstream_down_is_502_json() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/down/x"), &t).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["error"].is_string(), "{}", r.text());
}

#[tokio::test]
async fn slow_upstream_is_504_json_after_route_timeout() {
    let (gw, up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let start = Instant::now();
    // The upstream's `/slow` answers only after 10 minutes (far past the hang guard
    // of `get_with_token`), so any answer at all comes from the route's 1 s timeout.
    let r = get_with_token(&gw.url("/slow/slow"), &t).await;
    let took = start.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["error"].is_string(), "{}", r.text());
    assert!(
        took >= Duration::from_millis(900),
        "answered before the 1s timeout: {took:?}"
    );
    assert_eq!(hits(&up), 1);
}

// --------------------------------------------------------------- streaming

#[tokio::test]
async fn eight_mib_chunked_upload_echoes_back_intact() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let mut sender = h1_connect(gw.addr).await;
    let (req, tx) = streaming_request(
        gw.addr,
        Method::POST,
        "/api/echo",
        &[("authorization", &auth)],
    );
    const N: usize = 128;
    const SIZE: usize = 64 * 1024;
    let producer = tokio::spawn(async move {
        for i in 0..N {
            // Every chunk different, so reordering or loss shows.
            let chunk: Vec<u8> = (0..SIZE).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
            tx.send(Bytes::from(chunk)).await.unwrap();
        }
    });
    let resp = tokio::time::timeout(HANG_GUARD, sender.send_request(req))
        .await
        .expect("response head in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = tokio::time::timeout(HANG_GUARD, resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    producer.await.unwrap();
    let expected: Vec<u8> = (0..N)
        .flat_map(|i| (0..SIZE).map(move |j| ((i * 31 + j * 7) % 251) as u8))
        .collect();
    assert_eq!(got.len(), N * SIZE);
    assert!(got[..] == expected[..], "echoed bytes differ");
}

#[tokio::test]
async fn echo_is_full_duplex_through_the_gateway() {
    // Each chunk comes back before the next one is sent: neither body is buffered whole.
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let mut sender = h1_connect(gw.addr).await;
    let (req, tx) = streaming_request(
        gw.addr,
        Method::POST,
        "/api/echo",
        &[("authorization", &auth)],
    );
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    tx.send(Bytes::from_static(b"ping-0|")).await.unwrap();
    let resp = tokio::time::timeout(HANG_GUARD, pending)
        .await
        .expect("response head before the request body ended")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut echoed = Vec::new();
    for i in 0..5 {
        let want = format!("ping-{i}|");
        if i > 0 {
            tx.send(Bytes::from(want.clone())).await.unwrap();
        }
        while echoed.len() < want.len() {
            let frame = tokio::time::timeout(HANG_GUARD, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!("chunk {i} was not echoed while the request was still open")
                })
                .expect("body ended early")
                .unwrap();
            if let Ok(d) = frame.into_data() {
                echoed.extend_from_slice(&d);
            }
        }
        assert_eq!(String::from_utf8_lossy(&echoed), want);
        echoed.clear();
    }
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn big_download_arrives_intact() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/api/big"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), BIG_CHUNKS * CHUNK);
    assert!(r.body.iter().all(|&b| b == b'x'));
}

#[tokio::test]
async fn big_download_arrives_frame_by_frame() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let mut sender = h1_connect(gw.addr).await;
    let (req, tx) = streaming_request(
        gw.addr,
        Method::GET,
        "/api/big",
        &[("authorization", &auth)],
    );
    drop(tx);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut sizes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            sizes.push(d.len());
        }
    }
    assert_eq!(sizes.iter().sum::<usize>(), BIG_CHUNKS * CHUNK);
    assert!(
        sizes[0] < BIG_CHUNKS * CHUNK,
        "the whole body came as one frame"
    );
    assert!(sizes.len() > 1, "{sizes:?}");
}

/// An upstream that holds its answer: `/hold-response` sends one chunk, then
/// waits for `release` before the rest; `/hold-request` reports the size of the
/// first request chunk on `first` as soon as it arrives, then reads the rest and
/// answers its total length.
struct Gated {
    addr: SocketAddr,
    release: oneshot::Sender<()>,
    first: oneshot::Receiver<usize>,
}

async fn spawn_gated_upstream() -> Gated {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (first_tx, first_rx) = oneshot::channel::<usize>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let first = Arc::new(Mutex::new(Some(first_tx)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (release, first) = (release.clone(), first.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (release, first) = (release.clone(), first.clone());
                    async move {
                        if req.uri().path().ends_with("/hold-response") {
                            let (tx, rx) = mpsc::channel(1);
                            let gate = release.lock().unwrap().take().expect("one hold-response");
                            tokio::spawn(async move {
                                tx.send(Bytes::from_static(b"first-chunk|")).await.unwrap();
                                let _ = gate.await;
                                tx.send(Bytes::from_static(b"second-chunk")).await.unwrap();
                            });
                            return Ok::<_, Infallible>(Response::new(ChanBody(rx).boxed_unsync()));
                        }
                        let mut body = req.into_body();
                        let mut total = 0;
                        let mut report = first.lock().unwrap().take();
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Ok(d) = frame.into_data() {
                                total += d.len();
                                if let Some(r) = report.take() {
                                    let _ = r.send(d.len());
                                }
                            }
                        }
                        let full = Full::new(Bytes::from(total.to_string()));
                        Ok(Response::new(full.boxed_unsync()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Gated {
        addr,
        release: release_tx,
        first: first_rx,
    }
}

fn gated_route(addr: SocketAddr) -> String {
    format!(
        "\n[[routes]]\nprefix = \"/gated/\"\nupstream = \"http://{addr}\"\nstrip_prefix = true\nauth = false\n"
    )
}

#[tokio::test]
async fn response_body_is_streamed_not_buffered() {
    let up = spawn_upstream().await;
    let gated = spawn_gated_upstream().await;
    let gw = gateway_with_extra(&up, &gated_route(gated.addr)).await;
    let mut sender = h1_connect(gw.addr).await;
    let (req, tx) = streaming_request(gw.addr, Method::GET, "/gated/hold-response", &[]);
    drop(tx);
    let resp = tokio::time::timeout(HANG_GUARD, sender.send_request(req))
        .await
        .expect("response head while the upstream still holds its body")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(HANG_GUARD, body.frame())
        .await
        .expect("the first chunk must arrive while the upstream holds the rest")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"first-chunk|");
    gated.release.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second-chunk");
}

#[tokio::test]
async fn request_body_is_streamed_not_buffered() {
    let up = spawn_upstream().await;
    let gated = spawn_gated_upstream().await;
    let gw = gateway_with_extra(&up, &gated_route(gated.addr)).await;
    let mut sender = h1_connect(gw.addr).await;
    let (req, tx) = streaming_request(gw.addr, Method::POST, "/gated/hold-request", &[]);
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    tx.send(Bytes::from(vec![b'a'; 1000])).await.unwrap();
    let first = tokio::time::timeout(HANG_GUARD, gated.first)
        .await
        .expect("the upstream must get the first chunk while the client still sends")
        .unwrap();
    assert!(first > 0 && first <= 1000, "{first}");
    tx.send(Bytes::from(vec![b'b'; 5000])).await.unwrap();
    drop(tx);
    let resp = tokio::time::timeout(HANG_GUARD, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"6000");
}

// ------------------------------------------------------------------ HTTP/2

#[tokio::test]
async fn http2_prior_knowledge_is_proxied_as_http11() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {t}");
    let r = get_h2(&gw.url("/api/h2?x=1"), &[("authorization", &auth)]).await;
    let seen = r.seen();
    assert_eq!(seen.uri(), "/h2?x=1");
    assert_eq!(seen.0["version"], "HTTP/1.1");
    let via = seen.header_all("via").join(", ");
    assert!(via.contains("2 whosthat"), "{via:?}");
    assert!(!via.contains("1.1 whosthat"), "{via:?}");
    assert_eq!(seen.header_all("x-auth-user"), vec!["alice"]);
    assert!(seen.header_all("authorization").is_empty());
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        vec![gw.addr.to_string()]
    );
    // And a rejection over HTTP/2 has the same shape.
    let r = get_h2(&gw.url("/api/h2"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"whosthat\"")
    );
}

// --------------------------------------------------------- graceful shutdown

/// An upstream that answers nothing until `release` says so: a request through it
/// stays in flight at the gateway for exactly as long as the test wants.
struct Held {
    addr: SocketAddr,
    /// Requests that reached it.
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

/// Answers JSON `{"uri": ...}` (what [`Seen::uri`] reads) once released.
async fn spawn_held_upstream() -> Held {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let counter = arrived.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (counter, released) = (counter.clone(), released.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut released = released.clone();
                    async move {
                        let _ = released.wait_for(|r| *r).await;
                        let json = serde_json::json!({ "uri": req.uri().to_string() });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(json.to_string()))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Held {
        addr,
        arrived,
        release,
    }
}

/// Polls `done` every 20 ms until it is true; panics naming `what` after the hang guard.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not after {HANG_GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let up = spawn_upstream().await;
    // The request stays in flight until the test releases the upstream, so the order
    // of events is the test's, whatever the machine's speed. Route and shutdown
    // limits far beyond any wait here: this is about the drain, not its limit.
    let held = spawn_held_upstream().await;
    let extra = format!(
        "\n[[routes]]\nprefix = \"/wait/\"\nupstream = \"http://{}\"\ntimeout = \"10m\"\n",
        held.addr
    );
    let text = (config_text(up.addr) + &extra)
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"10m\"");
    assert!(text.contains("shutdown_timeout = \"10m\""));
    let mut gw = spawn_gateway_with(&text).await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let url = gw.url("/wait/slow");
    let in_flight = tokio::spawn(async move { get_with_token(&url, &t).await });
    wait_until("the slow request in flight at the upstream", || {
        held.arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    let task = gw.stop();

    // The listener closes: new connections are refused (a connection made in the
    // moment before is not an answer; try again).
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let connect = tokio::time::timeout(HANG_GUARD, TcpStream::connect(gw.addr)).await;
        if matches!(connect, Ok(Err(_)) | Err(_)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted {HANG_GUARD:?} after stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !task.is_finished(),
        "serve returned while a request was still in flight"
    );
    assert!(!in_flight.is_finished(), "answered before the upstream was");

    held.release.send(true).unwrap();
    let r = tokio::time::timeout(HANG_GUARD, in_flight)
        .await
        .expect("in-flight request finished")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().uri(), "/wait/slow");

    let served = tokio::time::timeout(HANG_GUARD, task)
        .await
        .expect("serve returned once the request in flight was answered")
        .expect("serve task did not panic");
    assert!(served.is_ok(), "{served:?}");
}
