//! The admin listener: /healthz, /readyz and /metrics (Prometheus text), never on
//! the public listener.

mod common;
use common::*;

async fn gateway_with_admin() -> (Gateway, Upstream, String) {
    let up = spawn_upstream().await;
    let admin_port = closed_port();
    let text = config_text(up.addr).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:{admin_port}\""),
    );
    let gw = spawn_gateway_with(&text).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    // The admin listener is bound when the gateway's task starts: wait for it,
    // however long that takes on a busy machine.
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the admin listener never came up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (gw, up, admin)
}

fn sample(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no `{line_prefix}` in:\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (gw, _up, admin) = gateway_with_admin().await;
    assert_eq!(get(&format!("{admin}/healthz"), &[]).await.status, 200);
    assert_eq!(get(&format!("{admin}/readyz"), &[]).await.status, 200);

    let token = access_token(&gw, "alice", ALICE_PW).await;
    for _ in 0..3 {
        assert_eq!(get_with_token(&gw.url("/api/x"), &token).await.status, 200);
    }
    assert_eq!(get_with_token(&gw.url("/api/x"), "bogus").await.status, 401);
    assert_eq!(get_with_token(&gw.url("/down/x"), &token).await.status, 502);

    let r = get(&format!("{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = r.text();
    assert_eq!(
        sample(&m, "whosthat_requests_total{route=\"/api\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        sample(&m, "whosthat_requests_total{route=\"/api\",status=\"401\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "whosthat_tokens_issued_total{grant=\"password\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "whosthat_auth_failures_total{reason=\"invalid_token\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "whosthat_upstream_errors_total{kind=\"unreachable\"}"),
        1.0
    );
    assert_eq!(sample(&m, "whosthat_live_tokens{kind=\"access\"}"), 1.0);
    assert!(
        sample(
            &m,
            "whosthat_request_duration_seconds_count{route=\"/api\"}"
        ) >= 4.0
    );
    assert!(m.contains("# TYPE whosthat_request_duration_seconds histogram"));
    // No token or secret ever shows up in the metrics.
    assert!(!m.contains(&token));

    // None of the admin endpoints is served on the public listener.
    for p in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(&gw.url(p), &[]).await.status, 404, "{p}");
    }
}

/// Admin connections open at once (`whosthat::server::ADMIN_MAX_CONNECTIONS`).
const ADMIN_CAP: usize = 16;

/// An admin connection whose `GET /metrics` is in flight: the head of the
/// answer has arrived, the rest is left unread, so the gateway is still
/// writing it (the client's receive buffer is the smallest there is, and the
/// body is several MiB).
struct InFlight {
    stream: tokio::net::TcpStream,
    /// The bytes read so far (the head, and maybe some of the body).
    read: Vec<u8>,
}

/// A slot given back is freed when the gateway sees the connection close, a
/// moment after the client dropped it: retried (within the hang guard) until
/// the gateway takes the new connection.
async fn metrics_in_flight_once_freed(addr: std::net::SocketAddr) -> InFlight {
    let deadline = std::time::Instant::now() + HANG_GUARD;
    loop {
        if let Some(f) = try_metrics_in_flight(addr).await {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `None` if the gateway closed the connection before the head (over the cap).
async fn try_metrics_in_flight(addr: std::net::SocketAddr) -> Option<InFlight> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .ok()?;
    let mut read = Vec::new();
    let mut buf = [0u8; 1024];
    while !read.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .expect("the head of /metrics within the hang guard")
            .unwrap_or(0);
        if n == 0 {
            assert!(
                read.is_empty(),
                "cut off in the head: {:?}",
                String::from_utf8_lossy(&read)
            );
            return None;
        }
        read.extend_from_slice(&buf[..n]);
    }
    assert!(
        read.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&read)
    );
    Some(InFlight { stream, read })
}

impl InFlight {
    /// Reads the answer to its end; returns its body.
    async fn finish(mut self) -> String {
        use tokio::io::AsyncReadExt;
        let head_end = self.read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&self.read[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        let mut body = self.read.split_off(head_end);
        let mut buf = vec![0u8; 64 * 1024];
        while body.len() < length {
            let n = tokio::time::timeout(HANG_GUARD, self.stream.read(&mut buf))
                .await
                .expect("the rest of /metrics within the hang guard")
                .expect("the answer is not cut off");
            assert!(n > 0, "cut off after {} of {length} bytes", body.len());
            body.extend_from_slice(&buf[..n]);
        }
        assert_eq!(body.len(), length);
        String::from_utf8(body).unwrap()
    }
}

/// The admin listener takes at most ADMIN_CAP connections at once (one more is
/// closed unanswered, and served once a slot is free), and on shutdown it is
/// drained like the public one: it stops accepting, and `/metrics` answers in
/// flight are written to their end before the gateway stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_drained_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = spawn_upstream().await;
    let admin_port = closed_port();
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    // 200 routes with 1000-character prefixes: /metrics is about 4 MB, more than
    // the kernel buffers, so an unread answer stays in flight.
    let mut text = config_text(up.addr)
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"{admin_addr}\""),
        )
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"10m\"");
    let long = "x".repeat(1000);
    for i in 0..200 {
        text.push_str(&format!(
            "\n[[routes]]\nprefix = \"/r{i}-{long}/\"\nupstream = \"http://{}\"\n",
            up.addr
        ));
    }
    let mut gw = spawn_gateway_with(&text).await;
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while tokio::net::TcpStream::connect(admin_addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no admin listener");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in 0..200 {
        assert_eq!(
            get(&gw.url(&format!("/r{i}-{long}/x")), &[]).await.status,
            401
        );
    }

    let mut held = Vec::new();
    for _ in 0..ADMIN_CAP {
        held.push(metrics_in_flight_once_freed(admin_addr).await);
    }
    // One more: accepted by the kernel, closed by the gateway without an answer
    // (writing may fail already: the gateway may have closed it).
    let mut over = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(HANG_GUARD, over.read(&mut buf))
        .await
        .expect("closed within the hang guard")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "answered over the cap: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A slot given back is taken again.
    let body = held.pop().unwrap().finish().await;
    assert!(
        body.contains("whosthat_live_tokens{kind=\"refresh\"}"),
        "{}",
        &body[body.len() - 300..]
    );
    held.push(metrics_in_flight_once_freed(admin_addr).await);

    let task = gw.stop();
    // Shutdown under way: the admin listener stops accepting ...
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while tokio::net::TcpStream::connect(admin_addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the admin listener still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ... and waits for the answers in flight, which are written to the end.
    assert!(
        !task.is_finished(),
        "stopped with /metrics answers in flight"
    );
    for conn in held {
        let body = conn.finish().await;
        assert!(
            body.ends_with("whosthat_live_tokens{kind=\"refresh\"} 0\n"),
            "{}",
            &body[body.len() - 300..]
        );
    }
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .expect("stopped once drained")
        .unwrap()
        .unwrap();
}
