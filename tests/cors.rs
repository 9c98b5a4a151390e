//! CORS through real HTTP: a route's preflights are answered by the gateway
//! without a token and never forwarded; actual answers (errors included) carry
//! the allowed origin; the token, revocation and metadata endpoints answer CORS
//! for the origins of the clients' redirect URIs; `*` with credentials is
//! refused by the config.

mod common;
use common::*;

use std::path::Path;
use std::sync::atomic::Ordering;

use http::Method;

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"{}
[[routes]]
prefix = "/app/"
upstream = "http://{upstream}"
strip_prefix = true
scopes = ["read"]
cors = {{ origins = ["https://app.example"], methods = ["GET", "POST"], headers = ["authorization", "content-type"], max_age = "10m", credentials = true }}

[[routes]]
prefix = "/anyone/"
upstream = "http://{upstream}"
auth = false
cors = {{ origins = ["*"] }}
"#,
        config_text(upstream)
    )
}

const PREFLIGHT: [(&str, &str); 3] = [
    ("origin", "https://app.example"),
    ("access-control-request-method", "POST"),
    (
        "access-control-request-headers",
        "authorization, content-type",
    ),
];

#[tokio::test]
async fn preflights_are_answered_without_a_token_and_never_forwarded() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr)).await;
    let r = request(Method::OPTIONS, &gw.url("/app/orders"), &PREFLIGHT, "").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    // Another origin, method or header: 403 and no allowance.
    for bad in [
        [
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        [
            ("origin", "https://app.example"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "content-type"),
        ],
        [
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-secret"),
        ],
    ] {
        let r = request(Method::OPTIONS, &gw.url("/app/orders"), &bad, "").await;
        assert_eq!(r.status, 403);
        assert!(r.header("access-control-allow-origin").is_none());
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "a preflight was forwarded"
    );
}

#[tokio::test]
async fn actual_answers_carry_the_origin_errors_included() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr)).await;
    // Without a token: the app can read the 401.
    let r = get(&gw.url("/app/orders"), &[("origin", "https://app.example")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("www-authenticate")
    );
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let r = request(
        Method::GET,
        &gw.url("/app/orders"),
        &[
            ("origin", "https://app.example"),
            ("authorization", &format!("Bearer {token}")),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // Another origin gets nothing to read.
    let r = request(
        Method::GET,
        &gw.url("/app/orders"),
        &[
            ("origin", "https://evil.example"),
            ("authorization", &format!("Bearer {token}")),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    // A wildcard route without credentials answers `*`.
    let r = get(&gw.url("/anyone/x"), &[("origin", "https://x.example")]).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // A route without cors says nothing about CORS.
    let r = get(&gw.url("/public/x"), &[("origin", "https://app.example")]).await;
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_token_endpoint_answers_cors_for_registered_app_origins() {
    let (gw, _up) = setup().await;
    // `spa` is registered with redirect URIs on http://127.0.0.1:8765.
    let pre = request(
        Method::OPTIONS,
        &gw.url("/auth/access_token"),
        &[
            ("origin", "http://127.0.0.1:8765"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        "",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://127.0.0.1:8765")
    );
    assert!(pre.header("access-control-allow-credentials").is_none());
    let r = request(
        Method::POST,
        &gw.url("/auth/access_token"),
        &[
            ("origin", "http://127.0.0.1:8765"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "grant_type=password&username=alice&password=wrong",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://127.0.0.1:8765")
    );
    for path in ["/auth/revoke", "/.well-known/oauth-authorization-server"] {
        let pre = request(
            Method::OPTIONS,
            &gw.url(path),
            &[
                ("origin", "http://127.0.0.1:8765"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
        assert_eq!(pre.status, 204, "{path}");
    }
    // An origin no client is registered on.
    let pre = request(
        Method::OPTIONS,
        &gw.url("/auth/access_token"),
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(pre.status, 403);
    assert!(pre.header("access-control-allow-origin").is_none());
}

#[test]
fn a_wildcard_with_credentials_is_refused() {
    let text = config_text("127.0.0.1:9".parse().unwrap()).replace(
        "[[routes]]\nprefix = \"/api/\"",
        "[[routes]]\ncors = { origins = [\"*\"], credentials = true }\nprefix = \"/api/\"",
    );
    let e = whosthat::Config::parse(&text, Path::new("t.toml")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("routes[0].cors.origins"));
    assert!(e.to_string().contains("credentials"), "{e}");
    let bad_origin = text.replace(
        "[\"*\"], credentials = true",
        "[\"https://a.example/path\"]",
    );
    let e = whosthat::Config::parse(&bad_origin, Path::new("t.toml")).unwrap_err();
    assert!(e.to_string().contains("is not an origin"), "{e}");
}
