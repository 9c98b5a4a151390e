//! Per-route rate limits (`[[routes]] rate_limit`) through real HTTP: 429 with
//! Retry-After and the IETF draft's RateLimit-Policy / RateLimit fields, keyed
//! by client, user or address, holding under concurrency, and shared by two
//! gateways through the test's own redis-server.

mod common;
mod oauth_helpers;
use common::redis_server::Redis;
use common::*;

use std::sync::Arc;

use http::Method;

const LIMITED: &str = r#"
[[routes]]
prefix = "/limited/"
upstream = "http://UPSTREAM"
strip_prefix = true
scopes = ["read"]
rate_limit = { requests = 5, per = "1h", burst = 5, key = "KEY" }

[[routes]]
prefix = "/open-limited/"
upstream = "http://UPSTREAM"
auth = false
rate_limit = { requests = 3, per = "1h", key = "address" }
"#;

/// The standard test config plus the two limited routes (a slow refill, so
/// only the burst passes however slow the machine).
fn config(upstream: std::net::SocketAddr, key: &str, store: &str) -> String {
    format!(
        "{}{}{store}",
        config_text(upstream),
        LIMITED
            .replace("UPSTREAM", &upstream.to_string())
            .replace("KEY", key)
    )
}

async fn get_limited(gw: &Gateway, path: &str, token: &str) -> Reply {
    request(
        Method::GET,
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

#[tokio::test]
async fn a_client_gets_its_burst_then_429_with_the_draft_fields() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr, "client", "")).await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    for n in 0..5 {
        let r = get_limited(&gw, "/limited/x", &token).await;
        assert_eq!(r.status, 200, "request {n}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=5;w=3600"));
        let state = r.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!("\"client\";r={};t=", 4 - n)),
            "{state}"
        );
    }
    let before = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let r = get_limited(&gw, "/limited/x", &token).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // One request's worth of the window: 3600 s / 5.
    assert!((700..=720).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=5;w=3600"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"client\";r=0;t=")
    );
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a refused request reached the upstream"
    );
    // Another client has a bucket of its own; so has another route.
    let svc = token_request(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &basic("svc", SVC_SECRET))],
    )
    .await
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get_limited(&gw, "/limited/x", &svc).await.status, 200);
    assert_eq!(get_limited(&gw, "/api/x", &token).await.status, 200);
}

#[tokio::test]
async fn concurrent_requests_get_exactly_the_burst() {
    let up = spawn_upstream().await;
    let gw = Arc::new(spawn_gateway_with(&config(up.addr, "user", "")).await);
    let token = Arc::new(access_token(&gw, "alice", ALICE_PW).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (gw, token) = (gw.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            get_limited(&gw, "/limited/x", &token).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 5, "100 at once: the burst and no more");
    // Keyed by user: a second token of alice's shares the bucket.
    let other = access_token(&gw, "alice", ALICE_PW).await;
    assert_eq!(get_limited(&gw, "/limited/x", &other).await.status, 429);
    let bob = access_token(&gw, "bob", BOB_PW).await;
    assert_eq!(get_limited(&gw, "/limited/x", &bob).await.status, 200);
}

#[tokio::test]
async fn public_routes_limit_by_address() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr, "client", "")).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/open-limited/x"), &[]).await.status, 200);
    }
    assert_eq!(get(&gw.url("/open-limited/x"), &[]).await.status, 429);
    // Another address has its own budget.
    let from = std::net::Ipv4Addr::new(127, 0, 0, 9);
    let req = http::Request::builder()
        .uri(gw.url("/open-limited/x"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = oauth_helpers::send_from(from, req).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_share_the_limit() {
    let redis = Redis::start().await;
    let up = spawn_upstream().await;
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let a = Arc::new(spawn_gateway_with(&config(up.addr, "client", &store)).await);
    let b = Arc::new(spawn_gateway_with(&config(up.addr, "client", &store)).await);
    // A token from A works on B (the token store is shared too).
    let token = Arc::new(access_token(&a, "alice", ALICE_PW).await);
    // Each instance vouches for tokens once its Redis subscription is up.
    for gw in [&a, &b] {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while get_limited(gw, "/api/x", &token).await.status != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway never got ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut tasks = Vec::new();
    for i in 0..60 {
        let gw = if i % 2 == 0 { a.clone() } else { b.clone() };
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            get_limited(&gw, "/limited/x", &token).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Units are taken from Redis before they are spent: the two together
    // never admit more than one bucket holds.
    assert!(
        (1..=5).contains(&ok),
        "{ok} admitted by two gateways for a burst of 5"
    );
}
