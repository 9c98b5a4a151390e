//! HTTP framing and hosts (RFC 9112 sections 3.2 and 6, RFC 9113 section 8),
//! over raw TCP: every ambiguous or unsupported framing is refused before
//! anything is forwarded, and the connection closed; Host rules; CONNECT; a
//! bearer token in the query; HTTP/2 `:authority` and cookies.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a raw connection: everything until the gateway closed it.
struct Answer {
    text: String,
    /// The gateway closed the connection (EOF or reset); false: it was still
    /// open after the 60 s hang guard.
    closed: bool,
}

impl Answer {
    fn status(&self) -> u16 {
        raw_status(&self.text)
    }
    /// Status lines: "HTTP/1.x" and three digits (bodies here are JSON, with no
    /// such text).
    fn responses(&self) -> usize {
        self.text
            .match_indices("HTTP/1.")
            .filter(|(i, _)| {
                let rest = self.text.as_bytes().get(i + 9..i + 13);
                rest.is_some_and(|r| r[..3].iter().all(u8::is_ascii_digit) && r[3] == b' ')
            })
            .count()
    }
}

/// Sends `bytes` and reads until the gateway closes. The write side stays open,
/// so a close is the gateway's decision, not a reaction to our end of input.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let _ = wr.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    drop(wr);
    let text = String::from_utf8_lossy(&out).into_owned();
    eprintln!(
        "{:?} -> {:?}, closed: {closed}",
        String::from_utf8_lossy(bytes.split(|&b| b == b'\n').next().unwrap_or(b"")),
        text.lines().next().unwrap_or("")
    );
    Answer { text, closed }
}

/// `request` (which asks to keep the connection alive and has a pipelined GET
/// after it) is answered `status` alone, the connection is closed, and the
/// upstream received nothing.
async fn assert_refused_and_closed(gw: &Gateway, up: &Upstream, request: &str, status: u16) {
    let bytes = format!("{request}GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    let a = send_raw(gw.addr, bytes.as_bytes()).await;
    assert_eq!(a.status(), status, "{request:?}: {}", a.text);
    assert_eq!(a.responses(), 1, "more than one answer: {}", a.text);
    assert!(a.closed, "the connection stayed open: {}", a.text);
    // A (wrongly) forwarded request would have been answered before the close.
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "{request:?} reached the upstream"
    );
}

const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";

fn post(framing: &str, body: &str) -> String {
    format!("POST /public/x HTTP/1.1\r\nHost: gw.test\r\n{framing}\r\n{body}")
}

// ------------------------------------------------------- ambiguous framing

#[tokio::test]
async fn content_length_then_transfer_encoding_is_400_and_closed() {
    let (gw, up) = setup().await;
    let req = post(
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        CHUNKED_HELLO,
    );
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn transfer_encoding_then_content_length_is_400_and_closed() {
    let (gw, up) = setup().await;
    let req = post(
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        CHUNKED_HELLO,
    );
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_on_the_token_endpoint_is_400() {
    let (gw, up) = setup().await;
    let body = "grant_type=password&username=alice&password=alice-pw";
    let req = format!(
        "POST /auth/access_token HTTP/1.1\r\nHost: gw.test\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len(),
        body.len()
    );
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_after_requests_with_bodies_is_400() {
    // The gateway follows the connection's bodies to find the next head: a
    // fixed-length body, then a chunked one (with an extension and a trailer),
    // both forwarded; then the third request carries both framings.
    let (gw, up) = setup().await;
    let fake_head =
        "GET /public/inside HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut bytes = format!(
        "POST /public/one HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{fake_head}",
        fake_head.len()
    );
    bytes.push_str(
        "POST /public/two HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;x=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    );
    bytes.push_str(&post(
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        CHUNKED_HELLO,
    ));
    bytes.push_str("GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    let a = send_raw(gw.addr, bytes.as_bytes()).await;
    let statuses: Vec<&str> = a.text.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["200", "200", "400"], "{}", a.text);
    assert!(a.closed);
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn chunked_twice_in_one_header_is_400_and_closed() {
    let (gw, up) = setup().await;
    let req = post("Transfer-Encoding: chunked, chunked\r\n", CHUNKED_HELLO);
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn chunked_in_two_headers_is_400_and_closed() {
    let (gw, up) = setup().await;
    let req = post(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        CHUNKED_HELLO,
    );
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn an_unknown_transfer_coding_is_501_and_closed() {
    let (gw, up) = setup().await;
    let req = post("Transfer-Encoding: x-custom, chunked\r\n", CHUNKED_HELLO);
    assert_refused_and_closed(&gw, &up, &req, 501).await;
}

#[tokio::test]
async fn gzip_transfer_coding_is_501_and_closed() {
    let (gw, up) = setup().await;
    let req = post(
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        CHUNKED_HELLO,
    );
    assert_refused_and_closed(&gw, &up, &req, 501).await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_400_and_closed() {
    // hyper's own refusal: the body's length cannot be known.
    let (gw, up) = setup().await;
    let req = post("Transfer-Encoding: chunked, gzip\r\n", CHUNKED_HELLO);
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn transfer_encoding_on_http10_is_400_and_closed() {
    let (gw, up) = setup().await;
    let req = format!(
        "POST /public/x HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\
         Transfer-Encoding: chunked\r\n\r\n{CHUNKED_HELLO}"
    );
    assert_refused_and_closed(&gw, &up, &req, 400).await;
}

#[tokio::test]
async fn plain_chunked_is_forwarded_and_the_connection_kept() {
    // The control: one chunked request is read, forwarded and answered, and the
    // pipelined request after it is served on the same connection.
    let (gw, up) = setup().await;
    let mut bytes = post("Transfer-Encoding: chunked\r\n", CHUNKED_HELLO);
    bytes.push_str("GET /public/after HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    let a = send_raw(gw.addr, bytes.as_bytes()).await;
    assert_eq!(a.responses(), 2, "{}", a.text);
    assert_eq!(a.status(), 200, "{}", a.text);
    assert!(a.text.contains("\"body_len\":5"), "{}", a.text);
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
}

// -------------------------------------------------------------------- Host

#[tokio::test]
async fn http11_without_host_is_400() {
    let (gw, up) = setup().await;
    assert_refused_and_closed(&gw, &up, "GET /public/x HTTP/1.1\r\n\r\n", 400).await;
}

#[tokio::test]
async fn two_host_headers_are_400() {
    let (gw, up) = setup().await;
    let req = "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nHost: other.test\r\n\r\n";
    assert_refused_and_closed(&gw, &up, req, 400).await;
}

#[tokio::test]
async fn an_invalid_host_is_400() {
    for host in [
        "gw test",
        "gw.test/x",
        "user@gw.test",
        "gw.test:http",
        "[::1",
        "gw.test:70000",
    ] {
        let (gw, up) = setup().await;
        let req = format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_refused_and_closed(&gw, &up, &req, 400).await;
    }
}

#[tokio::test]
async fn an_invalid_host_on_the_token_endpoint_is_400() {
    let (gw, up) = setup().await;
    let req = "POST /auth/access_token HTTP/1.1\r\nHost: a b\r\n\
               Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n";
    assert_refused_and_closed(&gw, &up, req, 400).await;
}

#[tokio::test]
async fn http10_without_host_is_served() {
    let (gw, up) = setup().await;
    let a = send_raw(gw.addr, b"GET /public/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(a.status(), 200, "{}", a.text);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    assert!(!a.text.to_ascii_lowercase().contains("x-forwarded-host"));
}

#[tokio::test]
async fn the_absolute_form_authority_wins_over_host() {
    let (gw, _up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let req = format!(
        "GET http://api.example:8443/api/x HTTP/1.1\r\nHost: gw.test\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let seen = Seen(serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {answer}")));
    assert_eq!(seen.header_all("x-forwarded-host"), ["api.example:8443"]);
    assert_eq!(seen.uri(), "/x");
}

#[tokio::test]
async fn an_absolute_form_target_with_userinfo_is_400() {
    let (gw, up) = setup().await;
    let req = "GET http://user@gw.test/public/x HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    assert_refused_and_closed(&gw, &up, req, 400).await;
}

// ------------------------------------------------------------------ CONNECT

#[tokio::test]
async fn connect_is_405_and_closed() {
    let (gw, up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let req = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        up.addr, up.addr
    );
    let a = send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(a.status(), 405, "{}", a.text);
    assert!(
        a.text.to_ascii_lowercase().contains("\r\nallow: \r\n"),
        "{}",
        a.text
    );
    assert!(a.closed);
    assert_eq!(a.responses(), 1);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

// ------------------------------------------------- a bearer token in the query

#[tokio::test]
async fn access_token_in_the_query_of_a_protected_route_is_400_and_not_forwarded() {
    let (gw, up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    for url in [
        format!("/api/x?access_token={token}"),
        format!("/api/x?a=1&access%5Ftoken={token}"),
    ] {
        // With the token in the query only, and with a valid header too.
        let r = get(&gw.url(&url), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_request");
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_request\""),
            "{challenge}"
        );
        let r = get_with_token(&gw.url(&url), &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // The same on a public route is the upstream's business.
    let r = get(&gw.url("/public/x?access_token=abc"), &[]).await;
    assert_eq!(r.seen().uri(), "/x?access_token=abc");
}

#[tokio::test]
async fn access_token_in_the_query_is_refused_concurrently() {
    let (gw, up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let url = gw.url(&format!("/api/x{i}?access_token={token}"));
        tasks.spawn(async move { get(&url, &[]).await.status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

// ------------------------------------------------------------------ HTTP/2

/// An HTTP/2 (prior knowledge) connection.
async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_seen(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Seen {
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Seen(serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn http2_authority_wins_over_host() {
    let (gw, _up) = setup().await;
    let mut send = h2_connect(gw.addr).await;
    let req = Request::builder()
        .uri("http://auth.example:8443/public/x")
        .header("host", "host.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = h2_seen(&mut send, req).await;
    assert_eq!(seen.header_all("x-forwarded-host"), ["auth.example:8443"]);
    assert!(seen.header_all("host").iter().all(|h| h != "host.example"));
}

#[tokio::test]
async fn http2_cookies_reach_an_http11_upstream_joined() {
    let (gw, _up) = setup().await;
    let mut send = h2_connect(gw.addr).await;
    let req = Request::builder()
        .uri(gw.url("/public/x"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = h2_seen(&mut send, req).await;
    assert_eq!(seen.0["version"], "HTTP/1.1");
    assert_eq!(seen.header_all("cookie"), ["a=1; b=2; c=3"]);
}

#[tokio::test]
async fn http2_access_token_in_the_query_is_400() {
    let (gw, up) = setup().await;
    let r = get_h2(&gw.url("/api/x?access_token=abc"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}
