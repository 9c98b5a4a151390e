//! Hostile traffic: 1,000 connections each trickling a header byte every second
//! must not stop a normal client from being served, and they are closed by the
//! header timeout; beyond server.max_connections new connections are closed at once.

mod common;
use common::*;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 1,000 connections in this process and as many in the gateway need more
/// descriptors than a default soft limit of 1,024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 8192 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_do_not_starve_normal_clients() {
    raise_fd_limit();
    let (gw, _up) = setup().await; // header_read_timeout = "2s" in the test config
    let token = access_token(&gw, "alice", ALICE_PW).await;

    let mut slow = Vec::new();
    for i in 0..1000 {
        // Spread over ten addresses, 100 each: under max_connections_per_ip
        // (256 by default), so that every one of them is accepted and held.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.0.{}:0", 10 + i % 10).parse().unwrap())
            .unwrap();
        let mut s = socket.connect(gw.addr).await.unwrap();
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Trickle: one header byte per connection every second, for at most 4 s.
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        let mut closed = 0;
        while start.elapsed() < Duration::from_secs(4) && closed < slow.len() {
            closed = 0;
            for s in slow.iter_mut() {
                if s.write_all(b"X").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    });

    // Meanwhile a normal client is served, quickly.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get_with_token(&gw.url("/api/x"), &token).await.status, 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("slowest normal request beside 1000 slow connections: {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "normal requests were held up: {worst:?}"
    );

    // Past the header timeout every slow connection has been closed by the gateway.
    let slow = trickle.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut still_open = 0;
    for mut s in slow {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // A 408 (or any answer) followed by close also counts as closed.
            Ok(Ok(_)) => {}
            Err(_) => still_open += 1,
        }
    }
    assert_eq!(
        still_open, 0,
        "slow connections outlived the header timeout"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let up = spawn_upstream().await;
    let text = config_text(up.addr).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_connections = 3\nworkers = 1",
    );
    let gw = spawn_gateway_with(&text).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /public/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The fourth is closed without an answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s
        .write_all(b"GET /public/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer over the limit");
    // Once one closes, a new connection is served again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&gw.url("/public/"), &[]).await.status, 200);
}

#[tokio::test]
async fn smuggling_shapes_are_refused_or_read_one_way() {
    let (gw, up) = setup().await;
    // A chunk size that is not hex: 400, and the connection is closed.
    let bad_chunk =
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let answer = raw(gw.addr, bad_chunk).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    // Two different Content-Lengths: 400.
    let two_cl = b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    let answer = raw(gw.addr, two_cl).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Content-Length with Transfer-Encoding: refused (RFC 9112 section 6.3) and the
    // connection closed, so neither it nor the smuggled request is forwarded.
    let cl_te = b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw(gw.addr, cl_te).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
