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
