//! Keep-alive connections to upstreams (src/proxy/pool.rs): reused from request to
//! request, given back after empty answers too, never reused after an upstream
//! said `Connection: close` or an answer was cut short, and enough of them for
//! 100 requests at once.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 upstream that counts the TCP connections it accepts. It answers
/// `/empty` with 204, `/close` with `Connection: close`, and anything else with a
/// short body.
struct Counted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn spawn_counted_upstream() -> Counted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(b"pooled")));
                    match req.uri().path() {
                        "/empty" => {
                            *resp.status_mut() = StatusCode::NO_CONTENT;
                            *resp.body_mut() = Full::new(Bytes::new());
                        }
                        "/close" => {
                            resp.headers_mut()
                                .insert("connection", "close".parse().unwrap());
                        }
                        _ => {}
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Counted { addr, accepted }
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = spawn_counted_upstream().await;
    let gw = spawn_gateway_with(&config_text(up.addr)).await;
    for _ in 0..50 {
        let r = get(&gw.url("/public/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"pooled");
    }
    // One client connection is served by one worker: one upstream connection
    // (two at most, should the client's pool have opened a second one).
    let n = up.accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "{n} upstream connections for 50 sequential requests"
    );
}

#[tokio::test]
async fn empty_answers_give_their_connection_back() {
    let up = spawn_counted_upstream().await;
    let gw = spawn_gateway_with(&config_text(up.addr)).await;
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/public/empty"), &[]).await.status, 204);
        let head = request(Method::HEAD, &gw.url("/public/x"), &[], "").await;
        assert_eq!(head.status, 200);
    }
    let n = up.accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "{n} upstream connections for 40 sequential requests"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_reused() {
    let up = spawn_counted_upstream().await;
    let gw = spawn_gateway_with(&config_text(up.addr)).await;
    for i in 0..30 {
        let r = get(&gw.url("/public/close"), &[]).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(&r.body[..], b"pooled");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_hundred_requests_at_once_are_all_answered_then_pooled() {
    let up = spawn_counted_upstream().await;
    // One worker: each worker has its own pool, and one that happened to accept
    // none of the hundred would rightly open a connection of its own below.
    let text = config_text(up.addr).replacen("[server]\n", "[server]\nworkers = 1\n", 1);
    assert!(text.contains("workers = 1"));
    let gw = spawn_gateway_with(&text).await;
    // Raw connections, one request each, all sent before any is answered.
    let mut clients = Vec::new();
    for _ in 0..100 {
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            raw(
                addr,
                b"GET /public/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            )
            .await
        }));
    }
    for c in clients {
        let answer = c.await.unwrap();
        assert_eq!(raw_status(&answer), 200, "{answer}");
    }
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!(
        opened <= 100,
        "{opened} upstream connections for 100 requests"
    );
    // Now idle in the pools: more requests open none.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), opened);
}

#[tokio::test]
async fn a_download_the_client_abandons_leaves_the_pool_usable() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config_text(up.addr)).await;
    for _ in 0..5 {
        // 8 MiB on the way; the client reads a little and goes.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /public/big HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(HANG_GUARD, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        drop(s);
        // The half-read upstream connection is not handed to the next request.
        let r = get(&gw.url("/public/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.seen().uri(), "/x");
    }
}
