//! Hostile traffic: 1,000 connections each trickling a header byte every second
//! must not stop a normal client from being served, and they are closed by the
//! header timeout; beyond server.max_connections new connections are closed at once.
//! Nothing here asserts how fast: only what happens, and in which order.

mod common;
use common::*;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Whether the gateway has neither answered nor closed `s`: a peek that finds
/// nothing to read and no end of stream, without waiting.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek into a valid one-byte buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// `n` connections to `addr`, each with an unfinished request head.
async fn slow_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut slow = Vec::with_capacity(n);
    for i in 0..n {
        // Spread over ten addresses: under max_connections_per_ip (256 by
        // default), so that every one of them is accepted and held.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.0.{}:0", 10 + i % 10).parse().unwrap())
            .unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        // A busy machine may take longer than the header timeout to open them all:
        // the early ones may be closed already, which the callers allow for.
        let _ = s.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(s);
    }
    slow
}

/// Trickles one header byte per second on every connection still open until
/// `stop` says so or none is left open. Returns the connections.
fn trickle(
    mut slow: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<TcpStream>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + HANG_GUARD;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let mut open = 0;
            for s in slow.iter_mut() {
                if still_open(s) && s.write_all(b"X").await.is_ok() {
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_do_not_starve_normal_clients() {
    raise_fd_limit();
    // A header timeout longer than the test: every slow connection stays open (and
    // trickling) for as long as the normal client runs, however slow the machine.
    let up = spawn_upstream().await;
    let text = config_text(up.addr).replace(
        "header_read_timeout = \"2s\"",
        "header_read_timeout = \"10m\"",
    );
    assert!(text.contains("header_read_timeout = \"10m\""));
    let gw = spawn_gateway_with(&text).await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let slow = slow_connections(gw.addr, 1000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let trickling = trickle(slow, stop.clone());

    // Meanwhile a normal client is served. How fast depends on the machine; that it
    // is served at all while 1000 connections hold the gateway is what counts (a
    // starved client would hang here until the hang guard).
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get_with_token(&gw.url("/api/x"), &token).await.status, 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("slowest normal request beside 1000 slow connections: {worst:?}");
    stop.store(true, Ordering::SeqCst);
    let slow = trickling.await.unwrap();
    // ...and all of that while every slow connection was still open.
    let open = slow.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, 1000, "slow connections were closed or answered early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_are_closed_by_the_header_timeout() {
    raise_fd_limit();
    let (gw, _up) = setup().await; // header_read_timeout = "2s" in the test config
    let slow = slow_connections(gw.addr, 1000).await;
    // The trickle goes on until the gateway has closed (or answered) every one: a
    // byte now and then must not keep a head alive past the timeout.
    let slow = trickle(slow, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    let open = slow.iter().filter(|s| still_open(s)).count();
    assert_eq!(
        open, 0,
        "slow connections outlived the header timeout by {HANG_GUARD:?}"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let up = spawn_upstream().await;
    // The header timeout (which also ends idle keep-alive connections) must not free
    // a slot while the test holds them, however slow the machine.
    let text = config_text(up.addr)
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmax_connections = 3\nworkers = 1",
        )
        .replace(
            "header_read_timeout = \"2s\"",
            "header_read_timeout = \"10m\"",
        );
    assert!(text.contains("header_read_timeout = \"10m\""));
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
    // The fourth is closed without an answer (a connection left waiting would hang
    // until the guard).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s
        .write_all(b"GET /public/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(HANG_GUARD, s.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer over the limit");
    // Once one closes, a new connection is served again (as soon as the gateway has
    // seen the close: until then a new one is still closed at once).
    drop(held.pop());
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let answer = raw(
            gw.addr,
            b"GET /public/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if !answer.is_empty() {
            assert_eq!(raw_status(&answer), 200, "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed by a closed connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
