//! Parked HTTP/1 connections (issue 15, idle memory): a keep-alive connection
//! that has been quiet between requests gives its buffers back and waits on
//! its socket alone; what the client sends next is served as if nothing had
//! happened. Observed from outside: through raw TCP, and on `/metrics`
//! (`whosthat_connections_parked_total`), never by how long something took.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The standard config with an admin listener, and `header_read_timeout`
/// (2 s in the standard config) set to `timeout`.
async fn gateway(timeout: &str) -> (Gateway, Upstream, SocketAddr) {
    let up = spawn_upstream().await;
    let text = config_text(up.addr).replace(
        "header_read_timeout = \"2s\"",
        &format!("header_read_timeout = \"{timeout}\""),
    );
    assert!(text.contains(&format!("header_read_timeout = \"{timeout}\"")));
    let (gw, admin) = spawn_gateway_with_admin(&text).await;
    (gw, up, admin)
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n")
}

/// The path the upstream saw, from its JSON answer.
fn seen_uri(r: &RawResponse) -> String {
    assert_eq!(r.status, 200, "{}", r.head);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["uri"].as_str().unwrap().to_string()
}

/// Sends a GET for `path` on `s` and returns what the upstream saw.
async fn roundtrip(s: &mut TcpStream, buf: &mut Vec<u8>, path: &str) -> String {
    s.write_all(get_request(&format!("/public{path}")).as_bytes())
        .await
        .unwrap();
    seen_uri(&read_response(s, buf).await)
}

/// Reads until the peer closes (or the hang guard): whether it closed, and
/// what it sent before.
async fn until_closed(s: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut out)).await;
    (matches!(closed, Ok(Ok(_))), out)
}

#[tokio::test]
async fn a_parked_connection_serves_the_next_request_and_a_pipelined_pair() {
    let (_gw, _up, admin) = gateway("10m").await;
    let mut s = TcpStream::connect(_gw.addr).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(roundtrip(&mut s, &mut buf, "/one").await, "/one");
    wait_parked(admin, 1).await;
    // Parked: the next request on the same socket is served.
    assert_eq!(roundtrip(&mut s, &mut buf, "/two").await, "/two");
    wait_parked(admin, 2).await;
    // Parked again: two requests in one write, answered in order.
    let pair = get_request("/public/three") + &get_request("/public/four");
    s.write_all(pair.as_bytes()).await.unwrap();
    assert_eq!(seen_uri(&read_response(&mut s, &mut buf).await), "/three");
    assert_eq!(seen_uri(&read_response(&mut s, &mut buf).await), "/four");
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
}

/// A hundred keep-alive connections park together, and come back together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_park_and_come_back_at_once() {
    const N: usize = 100;
    let (gw, up, admin) = gateway("10m").await;
    let mut set = JoinSet::new();
    for i in 0..N {
        let addr = gw.addr;
        set.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            assert_eq!(
                roundtrip(&mut s, &mut buf, &format!("/a{i}")).await,
                format!("/a{i}")
            );
            (s, buf)
        });
    }
    let conns = set.join_all().await;
    wait_parked(admin, N as u64).await;
    let mut set = JoinSet::new();
    for (i, (mut s, mut buf)) in conns.into_iter().enumerate() {
        set.spawn(async move {
            let path = format!("/b{i}");
            assert_eq!(roundtrip(&mut s, &mut buf, &path).await, path);
        });
    }
    set.join_all().await;
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2 * N);
}

/// A connection that pauses in the middle of a head or a body is not quiet
/// between requests: it does not park there, and what it sends after the
/// pause completes the request.
#[tokio::test]
async fn pauses_inside_a_head_or_a_body_lose_nothing() {
    let (gw, _up, _admin) = gateway("10m").await;
    let pause = || tokio::time::sleep(Duration::from_millis(1200));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    // A head in two parts.
    s.write_all(b"GET /public/split-head HTTP/1.1\r\nHo")
        .await
        .unwrap();
    pause().await;
    s.write_all(b"st: gw.test\r\n\r\n").await.unwrap();
    assert_eq!(
        seen_uri(&read_response(&mut s, &mut buf).await),
        "/split-head"
    );
    // A Content-Length body in two parts: the upstream echoes all of it.
    s.write_all(b"POST /public/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    pause().await;
    s.write_all(b"56789").await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"0123456789");
    // A chunked body paused between its chunks.
    s.write_all(
        b"POST /public/echo HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await
    .unwrap();
    pause().await;
    s.write_all(b"2\r\nde\r\n0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"abcde");
    // And the connection still serves the next request.
    assert_eq!(roundtrip(&mut s, &mut buf, "/after").await, "/after");
}

/// While parked, the keep-alive limit still holds: a connection idle for the
/// header timeout is closed, without an answer.
#[tokio::test]
async fn a_parked_connection_is_closed_once_idle_for_the_header_timeout() {
    let (gw, _up, admin) = gateway("6s").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(roundtrip(&mut s, &mut buf, "/x").await, "/x");
    let answered = Instant::now();
    wait_parked(admin, 1).await;
    let (closed, sent) = until_closed(&mut s).await;
    assert!(closed, "still open after {:?}", answered.elapsed());
    assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
    // Not long before the timeout (the timer starts when the connection goes
    // idle, just before the answer arrives here).
    assert!(
        answered.elapsed() >= Duration::from_secs(4),
        "closed after only {:?}",
        answered.elapsed()
    );
}

/// A head trickled in after a park must still arrive within the header
/// timeout; the trickle does not keep the connection open.
#[tokio::test]
async fn a_head_trickled_after_parking_is_cut_off() {
    let (gw, up, admin) = gateway("3s").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(roundtrip(&mut s, &mut buf, "/x").await, "/x");
    wait_parked(admin, 1).await;
    s.write_all(b"GET /public/never HTTP/1.1\r\nHost: gw.test\r\nX-Pad: ")
        .await
        .unwrap();
    let deadline = Instant::now() + HANG_GUARD;
    let closed = loop {
        if s.write_all(b"a").await.is_err() {
            break true;
        }
        let mut one = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&one[..n]),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(closed, "the trickled head kept the connection open");
    let sent = String::from_utf8_lossy(&buf);
    assert!(!sent.contains(" 200 "), "{sent}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// On stop, a parked connection is closed at once (it has no request in
/// flight), and the gateway's task ends.
#[tokio::test]
async fn stopping_closes_parked_connections() {
    let (mut gw, _up, admin) = gateway("10m").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(roundtrip(&mut s, &mut buf, "/x").await, "/x");
    wait_parked(admin, 1).await;
    let task = gw.stop();
    let (closed, sent) = until_closed(&mut s).await;
    assert!(closed, "a parked connection outlived the stop");
    assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
    let ended = tokio::time::timeout(HANG_GUARD, task).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the gateway did not stop: {ended:?}"
    );
}
