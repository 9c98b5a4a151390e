//! The answer to a client is in the client's HTTP version, whatever the
//! upstream speaks: behind an HTTP/1.0 upstream (such as `python3 -m
//! http.server`) an HTTP/1.1 client still gets HTTP/1.1 and keeps its
//! connection, and an HTTP/2 client gets HTTP/2.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request in HTTP/1.0, its body ended by
/// closing the connection, as Python's http.server does.
async fn spawn_http10_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Type: text/plain\r\n\r\nold-server")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[[routes]]
prefix = "/old/"
upstream = "http://{upstream}"
strip_prefix = true
auth = false
"#
    )
}

/// Reads one chunked HTTP/1.1 answer (head and body) off `s`.
async fn read_chunked_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !out.ends_with(b"0\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // A hang guard only: the answer comes as soon as the gateway is scheduled.
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("an answer");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_http10_upstream_does_not_downgrade_the_client() {
    let up = spawn_http10_upstream().await;
    let gw = spawn_gateway_with(&config(up)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for n in 0..3 {
        s.write_all(b"GET /old/index.html HTTP/1.1\r\nHost: gw.example\r\n\r\n")
            .await
            .unwrap();
        let answer = read_chunked_answer(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "request {n}: {answer:?}"
        );
        assert!(answer.contains("old-server"), "{answer:?}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn http2_clients_get_http2_from_an_http10_upstream() {
    let up = spawn_http10_upstream().await;
    let gw = spawn_gateway_with(&config(up)).await;
    let r = get_h2(&gw.url("/old/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "old-server");
}

#[tokio::test]
async fn an_http10_client_still_gets_http10() {
    let up = spawn_http10_upstream().await;
    let gw = spawn_gateway_with(&config(up)).await;
    let answer = raw(gw.addr, b"GET /old/x HTTP/1.0\r\nHost: gw.example\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("old-server"), "{answer:?}");
}
