//! Slow bodies and greedy addresses: a request body for the gateway's own
//! endpoints must arrive within server.body_read_timeout (408, and the
//! connection closed; on HTTP/2 the stream ends and the connection lives on),
//! and server.max_connections_per_ip keeps one address from taking every
//! connection (trusted proxies exempt).

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Only a guard against hangs: nothing here is expected to take this long.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The standard test config with `extra` lines in `[server]`.
fn config(up: SocketAddr, extra: &str) -> String {
    config_text(up).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{extra}"),
    )
}

/// A connection from `ip` (any address in 127.0.0.0/8 is this machine).
async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

const SLOW_HEAD: &[u8] = b"POST /auth/access_token HTTP/1.1\r\nHost: gw.test\r\n\
    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8000\r\n\r\n";

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// An answer with this status, then the gateway closed the connection.
    Answered(u16),
    /// Closed (or reset) by the gateway with no answer at all.
    ClosedSilently,
}

/// Reads until the gateway closes the connection; panics after the hang guard.
async fn read_to_close(rd: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(HANG_GUARD, rd.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {HANG_GUARD:?}: {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A token request that declares 8,000 bytes and sends one a second, over
/// HTTP/1.1, until the gateway answers or closes.
async fn slow_h1(stream: TcpStream) -> End {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(SLOW_HEAD).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let out = read_to_close(&mut rd).await;
    writer.abort();
    if out.is_empty() {
        End::ClosedSilently
    } else {
        End::Answered(raw_status(&String::from_utf8_lossy(&out)))
    }
}

/// A request body fed a byte a second from a task, until the stream is gone.
struct Trickle(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn trickle() -> Trickle {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            if tx.send(Bytes::from_static(b"a")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Trickle(rx)
}

/// An HTTP/2 (prior knowledge) connection over `stream`.
async fn h2_over(stream: TcpStream) -> SendRequest<Trickle> {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A slow token request on one HTTP/2 stream; its status once answered.
async fn slow_h2_stream(mut send: SendRequest<Trickle>) -> u16 {
    let req = Request::builder()
        .method("POST")
        .uri("http://gw.test/auth/access_token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", "8000")
        .body(trickle())
        .unwrap();
    let resp = tokio::time::timeout(HANG_GUARD, send.send_request(req))
        .await
        .expect("an HTTP/2 stream was never answered")
        .expect("the HTTP/2 stream failed");
    resp.status().as_u16()
}

/// `GET /public/x` on a fresh connection from `ip`: `Some(status)`, or `None`
/// when the gateway closed the connection without an answer.
async fn public_get_from(ip: &str, addr: SocketAddr) -> Option<u16> {
    let mut s = connect_from(ip, addr).await;
    let _ = s
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        .await;
    let out = read_to_close(&mut s).await;
    (!out.is_empty()).then(|| raw_status(&String::from_utf8_lossy(&out)))
}

/// A password-grant token request on a fresh connection from `ip`.
async fn token_from(ip: &str, addr: SocketAddr) -> u16 {
    let mut s = connect_from(ip, addr).await;
    let body = format!("grant_type=password&username=alice&password={ALICE_PW}");
    let req = format!(
        "POST /auth/access_token HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let out = read_to_close(&mut s).await;
    raw_status(&String::from_utf8_lossy(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_with_slow_bodies_does_not_lock_out_others() {
    let up = spawn_upstream().await;
    // The body deadline is long enough for the whole flood to be in place
    // before any of it times out; it is checked to fire at the end.
    let gw = spawn_gateway_with(&config(
        up.addr,
        "max_connections = 50\nmax_connections_per_ip = 20\nbody_read_timeout = \"20s\"\nworkers = 2",
    ))
    .await;

    // First a few HTTP/2 connections from 127.0.0.1, each with slow streams.
    let mut h2_streams = JoinSet::new();
    for _ in 0..3 {
        let send = h2_over(connect_from("127.0.0.1", gw.addr).await).await;
        for _ in 0..4 {
            h2_streams.spawn(slow_h2_stream(send.clone()));
        }
    }
    // Then 100 slow HTTP/1.1 token requests from 127.0.0.1, all at once.
    let mut h1 = JoinSet::new();
    for _ in 0..100 {
        let addr = gw.addr;
        h1.spawn(async move { slow_h1(connect_from("127.0.0.1", addr).await).await });
    }
    // The 17 that fit beside the 3 HTTP/2 connections stay; the other 83 are
    // closed at once, without an answer.
    let mut ends = Vec::new();
    while ends.len() < 83 {
        let end = h1.join_next().await.expect("100 tasks").unwrap();
        assert_eq!(end, End::ClosedSilently, "answered before its deadline");
        ends.push(end);
    }
    // 127.0.0.1 is at its cap: a new connection is closed without an answer...
    assert_eq!(public_get_from("127.0.0.1", gw.addr).await, None);
    // ...while another address is served, by the token endpoint too.
    assert_eq!(public_get_from("127.0.0.2", gw.addr).await, Some(200));
    assert_eq!(token_from("127.0.0.2", gw.addr).await, 200);

    // Eventually every slow request is answered 408 and its connection closed.
    while let Some(end) = h1.join_next().await {
        ends.push(end.unwrap());
    }
    let answered: Vec<_> = ends.iter().filter(|e| **e != End::ClosedSilently).collect();
    eprintln!(
        "slow HTTP/1.1 connections: {} answered, {} closed at accept",
        answered.len(),
        ends.len() - answered.len()
    );
    assert_eq!(answered.len(), 17, "{ends:?}");
    assert!(
        answered.iter().all(|e| **e == End::Answered(408)),
        "{ends:?}"
    );
    let mut h2_statuses = Vec::new();
    while let Some(status) = h2_streams.join_next().await {
        h2_statuses.push(status.unwrap());
    }
    assert_eq!(h2_statuses, vec![408; 12]);
    // With the slow ones gone, 127.0.0.1 is served again.
    assert_eq!(public_get_from("127.0.0.1", gw.addr).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_answered_408_on_http1_and_http2() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr, "body_read_timeout = \"1s\"")).await;
    let mut h1 = JoinSet::new();
    for _ in 0..20 {
        let addr = gw.addr;
        h1.spawn(async move { slow_h1(TcpStream::connect(addr).await.unwrap()).await });
    }
    // Many slow streams on one HTTP/2 connection: each ends with 408...
    let send = h2_over(TcpStream::connect(gw.addr).await.unwrap()).await;
    let mut h2_streams = JoinSet::new();
    for _ in 0..50 {
        h2_streams.spawn(slow_h2_stream(send.clone()));
    }
    while let Some(end) = h1.join_next().await {
        assert_eq!(end.unwrap(), End::Answered(408));
    }
    while let Some(status) = h2_streams.join_next().await {
        assert_eq!(status.unwrap(), 408);
    }
    // ...and the connection itself lives on: a complete request is served on it.
    let (tx, rx) = mpsc::channel(1);
    tx.send(Bytes::from(format!(
        "grant_type=password&username=alice&password={ALICE_PW}"
    )))
    .await
    .unwrap();
    drop(tx);
    let req = Request::builder()
        .method("POST")
        .uri("http://gw.test/auth/access_token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Trickle(rx))
        .unwrap();
    let mut send = send;
    let resp = tokio::time::timeout(HANG_GUARD, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("access_token"));
}

#[tokio::test]
async fn a_408_is_the_oauth_error_shape_and_says_close() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr, "body_read_timeout = \"1s\"")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(SLOW_HEAD).await.unwrap();
    s.write_all(b"grant_type=pass").await.unwrap();
    let out = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert_eq!(raw_status(&out), 408, "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close\r\n"), "{out}");
    assert!(out.contains("\"error\":\"request_timeout\""), "{out}");
    // The same on the revocation and introspection endpoints.
    for path in ["/auth/revoke", "/auth/introspect"] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head = String::from_utf8_lossy(SLOW_HEAD).replace("/auth/access_token", path);
        s.write_all(head.as_bytes()).await.unwrap();
        let out = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
        assert_eq!(raw_status(&out), 408, "{path}: {out}");
    }
}

#[tokio::test]
async fn trusted_proxies_are_exempt_from_the_per_address_cap() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(
        up.addr,
        "max_connections_per_ip = 2\ntrusted_proxies = [\"127.0.0.3/32\"]",
    ))
    .await;
    /// A keep-alive connection from `ip` that was served one request, held open;
    /// `None` if the gateway closed it without an answer.
    async fn held(ip: &str, addr: SocketAddr) -> Option<TcpStream> {
        let mut s = connect_from(ip, addr).await;
        let _ = s
            .write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .await;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(HANG_GUARD, s.read(&mut buf))
            .await
            .expect("neither answered nor closed")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        Some(s)
    }
    // The load balancer holds ten at once.
    let mut proxy = Vec::new();
    for _ in 0..10 {
        proxy.push(
            held("127.0.0.3", gw.addr)
                .await
                .expect("a trusted proxy was capped"),
        );
    }
    // Another address holds two, and no more.
    let first = held("127.0.0.4", gw.addr).await.expect("first");
    let _second = held("127.0.0.4", gw.addr).await.expect("second");
    assert!(
        held("127.0.0.4", gw.addr).await.is_none(),
        "a third was served"
    );
    // Once one closes, its slot comes back.
    drop(first);
    let served_again = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(s) = held("127.0.0.4", gw.addr).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served_again.is_ok(), "the slot never came back");
}
