//! Upgrade tunnels, through real HTTP: only a route's `upgrades` are tunnelled;
//! h2c never is (the h2c smuggling pattern: bytes after a 101 carrying requests
//! the gateway never checked), nor anything the route does not list. A
//! non-allowed Upgrade is ignored (RFC 9110 section 7.8): the request goes on as
//! a plain one, and what follows on the connection is read by the gateway as
//! requests of its own.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upgrade-happy upstream received.
#[derive(Default)]
struct Log {
    /// Every request: path and headers (lower-case names).
    requests: Vec<(String, Vec<(String, String)>)>,
    /// Bytes received on upgraded connections.
    tunnelled: Vec<u8>,
}

type Shared = Arc<Mutex<Log>>;

/// An upstream that switches to whatever protocol it is asked to (the first
/// one offered; `x-answer-upgrade` overrides which one it names), and answers
/// 101 even unasked when `x-force-101` names a protocol. Upgraded connections
/// echo what they receive, and record it.
async fn spawn_upgrade_upstream() -> (SocketAddr, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Shared = Arc::default();
    let shared = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, log.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, log)
}

async fn answer(
    mut req: Request<Incoming>,
    log: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let protocol = match (header("x-force-101"), header("upgrade")) {
        (Some(forced), _) => Some(forced),
        (None, Some(asked)) => Some(
            header("x-answer-upgrade")
                .unwrap_or_else(|| asked.split(',').next().unwrap().trim().to_string()),
        ),
        (None, None) => None,
    };
    log.lock()
        .unwrap()
        .requests
        .push((req.uri().path().to_string(), headers));
    let Some(protocol) = protocol else {
        return Ok(Response::new(Full::new(Bytes::from_static(b"plain"))));
    };
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgraded.await else {
            return;
        };
        let mut io = TokioIo::new(io);
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.lock().unwrap().tunnelled.extend_from_slice(&buf[..n]);
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert("upgrade", protocol.parse().unwrap());
    resp.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    Ok(resp)
}

/// The standard config plus routes to the upgrade-happy upstream:
/// `/pub-up/` public (default upgrades), `/priv-up/` scope read, `/no-up/`
/// public with `upgrades = []`, `/foo-up/` public with `upgrades = ["foo"]`.
/// A long header_read_timeout: connections wait between requests on a busy machine.
async fn gateway() -> (Gateway, Shared) {
    let (text, log) = tunnel_config().await;
    (spawn_gateway_with(&text).await, log)
}

/// The config of [`gateway`], and what its upgrade-happy upstream records.
async fn tunnel_config() -> (String, Shared) {
    let up = spawn_upstream().await;
    let (up_addr, log) = spawn_upgrade_upstream().await;
    let text = format!(
        r#"{}
[[routes]]
prefix = "/pub-up/"
upstream = "http://{up_addr}"
strip_prefix = true
auth = false

[[routes]]
prefix = "/priv-up/"
upstream = "http://{up_addr}"
strip_prefix = true
scopes = ["read"]

[[routes]]
prefix = "/no-up/"
upstream = "http://{up_addr}"
strip_prefix = true
auth = false
upgrades = []

[[routes]]
prefix = "/foo-up/"
upstream = "http://{up_addr}"
strip_prefix = true
auth = false
upgrades = ["foo"]
"#,
        config_text(up.addr).replace(
            "header_read_timeout = \"2s\"",
            "header_read_timeout = \"60s\""
        )
    );
    // The plain upstream must outlive the test: leak its handle (its task runs on).
    std::mem::forget(up);
    (text, log)
}

/// The h2c upgrade request of the smuggling pattern.
fn h2c_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw.example\r\n{extra}Upgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
    )
}

/// What an attacker sends once it believes the connection is an h2c tunnel:
/// a request for a protected path, with a forged identity and no token.
const SMUGGLED: &str =
    "GET /priv-up/api/admin/secret HTTP/1.1\r\nHost: gw.example\r\nX-Auth-User: admin\r\n\r\n";

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The upstream never saw an Upgrade, HTTP2-Settings or the smuggled path, and
/// no connection to it became a tunnel.
#[track_caller]
fn assert_never_upgraded(log: &Shared) {
    let log = log.lock().unwrap();
    for (path, headers) in &log.requests {
        assert!(
            header_of(headers, "upgrade").is_none(),
            "{path}: {headers:?}"
        );
        assert!(
            header_of(headers, "http2-settings").is_none(),
            "{path}: {headers:?}"
        );
        assert!(
            header_of(headers, "connection")
                .is_none_or(|c| !c.to_ascii_lowercase().contains("upgrade")),
            "{path}: {headers:?}"
        );
        assert!(
            !path.contains("secret"),
            "the smuggled request got through: {path}"
        );
        assert_ne!(
            header_of(headers, "x-auth-user"),
            Some("admin"),
            "{headers:?}"
        );
    }
    assert!(
        log.tunnelled.is_empty(),
        "bytes were tunnelled: {:?}",
        String::from_utf8_lossy(&log.tunnelled)
    );
}

#[tokio::test]
async fn h2c_upgrade_on_a_public_route_is_never_tunnelled() {
    let (gw, log) = gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(h2c_request("/pub-up/x", "").as_bytes())
        .await
        .unwrap();
    let first = read_response(&mut s, &mut buf).await;
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(first.body, b"plain");
    assert!(first.header("upgrade").is_none(), "{}", first.head);
    // The attacker now speaks as if through a tunnel: the gateway reads it as a
    // request of its own, and it has no token.
    s.write_all(SMUGGLED.as_bytes()).await.unwrap();
    let second = read_response(&mut s, &mut buf).await;
    assert_eq!(second.status, 401, "{}", second.head);
    assert!(
        second
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{}",
        second.head
    );
    // The connection is still HTTP/1.1 under the gateway's checks.
    s.write_all(b"GET /pub-up/again HTTP/1.1\r\nHost: gw.example\r\n\r\n")
        .await
        .unwrap();
    let third = read_response(&mut s, &mut buf).await;
    assert_eq!(third.status, 200, "{}", third.head);
    {
        let l = log.lock().unwrap();
        let paths: Vec<&str> = l.requests.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/x", "/again"]);
    }
    assert_never_upgraded(&log);
}

#[tokio::test]
async fn h2c_preface_after_the_answer_is_not_a_tunnel() {
    let (gw, log) = gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(h2c_request("/pub-up/x", "").as_bytes())
        .await
        .unwrap();
    let first = read_response(&mut s, &mut buf).await;
    assert_eq!(first.status, 200, "{}", first.head);
    // An HTTP/2 connection preface and an empty SETTINGS frame, as a client
    // that got its 101 would send.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut rest = buf;
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains(" 101 "), "{rest}");
    assert_eq!(log.lock().unwrap().requests.len(), 1);
    assert_never_upgraded(&log);
}

#[tokio::test]
async fn h2c_upgrade_with_a_token_then_a_smuggled_request_without_one() {
    let (gw, log) = gateway().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let auth = format!("Authorization: Bearer {token}\r\n");
    s.write_all(h2c_request("/priv-up/x", &auth).as_bytes())
        .await
        .unwrap();
    let first = read_response(&mut s, &mut buf).await;
    assert_eq!(first.status, 200, "{}", first.head);
    s.write_all(SMUGGLED.as_bytes()).await.unwrap();
    let second = read_response(&mut s, &mut buf).await;
    assert_eq!(second.status, 401, "{}", second.head);
    assert_eq!(log.lock().unwrap().requests.len(), 1);
    assert_never_upgraded(&log);
}

#[tokio::test]
async fn a_hundred_h2c_smuggling_attempts_at_once() {
    let (gw, log) = gateway().await;
    let addr = gw.addr;
    let mut tasks = Vec::new();
    for i in 0..100 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            // Request and smuggled bytes in one write: nothing waits for a 101.
            let both = format!("{}{SMUGGLED}", h2c_request(&format!("/pub-up/n{i}"), ""));
            s.write_all(both.as_bytes()).await.unwrap();
            let first = read_response(&mut s, &mut buf).await;
            let second = read_response(&mut s, &mut buf).await;
            (first.status, second.status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (200, 401));
    }
    assert_eq!(log.lock().unwrap().requests.len(), 100);
    assert_never_upgraded(&log);
}

/// An upgrade handshake on a fresh connection; returns the stream, the
/// answer, and what was read past it.
async fn upgrade(
    gw: &Gateway,
    path: &str,
    protocol: &str,
    extra: &str,
) -> (TcpStream, RawResponse, Vec<u8>) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: gw.example\r\n{extra}Connection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    (s, r, buf)
}

/// Writes `msg` and reads back as many bytes.
async fn echo(s: &mut TcpStream, mut buf: Vec<u8>, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while buf.len() < msg.len() {
            fill(s, &mut buf).await;
        }
    })
    .await
    .expect("the tunnel echoes");
    buf
}

#[tokio::test]
async fn allowed_upgrades_are_tunnelled_and_only_they_are_asked_for() {
    let (gw, log) = gateway().await;
    // websocket (the default), in any case.
    let (mut s, r, buf) = upgrade(&gw, "/pub-up/ws", "WebSocket", "").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(r.header("upgrade"), Some("WebSocket"));
    assert_eq!(echo(&mut s, buf, b"hello through").await, b"hello through");
    // h2c offered with websocket: only websocket goes upstream.
    let (mut s, r, buf) = upgrade(&gw, "/pub-up/ws2", "h2c, websocket", "").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(echo(&mut s, buf, b"second").await, b"second");
    // A route listing its own protocol.
    let (mut s, r, buf) = upgrade(&gw, "/foo-up/f", "foo", "").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(echo(&mut s, buf, b"foo bytes").await, b"foo bytes");
    let l = log.lock().unwrap();
    let asked: Vec<(&str, Option<&str>)> = l
        .requests
        .iter()
        .map(|(p, h)| (p.as_str(), header_of(h, "upgrade")))
        .collect();
    assert_eq!(
        asked,
        [
            ("/ws", Some("WebSocket")),
            ("/ws2", Some("websocket")),
            ("/f", Some("foo")),
        ]
    );
}

#[tokio::test]
async fn a_route_without_upgrades_refuses_websocket() {
    let (gw, log) = gateway().await;
    let (mut s, r, mut buf) = upgrade(&gw, "/no-up/ws", "websocket", "").await;
    assert_eq!(r.status, 200, "a plain answer, not a 101: {}", r.head);
    assert!(r.header("upgrade").is_none(), "{}", r.head);
    // Still HTTP/1.1 under the gateway's checks.
    s.write_all(SMUGGLED.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.status, 401);
    // websocket is not foo.
    let (_s, r, _) = upgrade(&gw, "/foo-up/ws", "websocket", "").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(log.lock().unwrap().requests.len(), 2);
    assert_never_upgraded(&log);

    // A real WebSocket client fails its handshake.
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/no-up/ws", gw.addr),
    )
    .unwrap();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let refused = tokio_tungstenite::client_async(req, tcp).await;
    assert!(refused.is_err(), "the handshake must fail");
    assert_never_upgraded(&log);
}

#[tokio::test]
async fn an_upstream_switching_unasked_or_elsewhere_gets_502() {
    let (gw, log) = gateway().await;
    // A 101 to a plain request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /pub-up/x HTTP/1.1\r\nHost: gw.example\r\nX-Force-101: h2c\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 502, "{}", r.head);
    // No tunnel: the next bytes are a request the gateway checks.
    s.write_all(SMUGGLED.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.status, 401);
    // A websocket request answered with a switch to h2c.
    let (mut s, r, mut buf) =
        upgrade(&gw, "/pub-up/ws", "websocket", "X-Answer-Upgrade: h2c\r\n").await;
    assert_eq!(r.status, 502, "{}", r.head);
    s.write_all(SMUGGLED.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.status, 401);
    let l = log.lock().unwrap();
    assert_eq!(l.requests.len(), 2);
    assert!(
        l.tunnelled.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&l.tunnelled)
    );
}

/// A keep-alive connection that parked between requests can still become a
/// tunnel, and a tunnel quiet for many park ticks is never parked: it carries
/// bytes both ways after the pause.
#[tokio::test]
async fn a_parked_connection_upgrades_and_a_quiet_tunnel_stays_up() {
    let (text, log) = tunnel_config().await;
    let (gw, admin) = spawn_gateway_with_admin(&text).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /pub-up/plain HTTP/1.1\r\nHost: gw.example\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.status, 200);
    wait_parked(admin, 1).await;
    s.write_all(
        b"GET /pub-up/ws HTTP/1.1\r\nHost: gw.example\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 101, "{}", r.head);
    let buf = echo(&mut s, buf, b"first").await;
    assert_eq!(buf, b"first");
    let parked = connections_parked(admin).await;
    // Quiet for several ticks (`server::park::PARK_TICK` is 250 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        echo(&mut s, Vec::new(), b"after a pause").await,
        b"after a pause"
    );
    assert_eq!(connections_parked(admin).await, parked, "the tunnel parked");
    assert_eq!(log.lock().unwrap().tunnelled, b"firstafter a pause");
}
