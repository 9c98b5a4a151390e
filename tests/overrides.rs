//! Method and URL override headers (X-HTTP-Method-Override, X-HTTP-Method,
//! X-Method-Override, X-Original-URL, X-Rewrite-URL, X-Original-URI), through
//! real HTTP: never received by the upstream, whatever their case or `_` / `.`
//! spelling, and an override naming a method the route refuses gets 405.

mod common;
use common::*;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every override header, in several spellings each.
const SPELLINGS: &[&str] = &[
    "X-HTTP-Method-Override",
    "x-http-method-override",
    "X_HTTP_METHOD_OVERRIDE",
    "x.http.method.override",
    "X-Http_Method.Override",
    "X-HTTP-Method",
    "x_http_method",
    "X.HTTP.METHOD",
    "X-Method-Override",
    "x_method_override",
    "X.Method-Override",
    "X-Original-URL",
    "x_original_url",
    "X.Original.Url",
    "X-Rewrite-URL",
    "x_rewrite_url",
    "X.REWRITE.URL",
    "X-Original-URI",
];

/// Whether `name` is an override header in any spelling (what the upstream must
/// never receive).
fn folds_to_override(name: &str) -> bool {
    let folded: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == '_' || c == '.' { '-' } else { c })
        .collect();
    matches!(
        folded.as_str(),
        "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-uri"
    )
}

#[track_caller]
fn assert_no_override(seen: &Seen) {
    let leaked: Vec<String> = seen
        .header_names()
        .into_iter()
        .filter(|n| folds_to_override(n))
        .collect();
    assert!(leaked.is_empty(), "the upstream received {leaked:?}");
}

/// One raw HTTP/1.1 request on a fresh connection (header names exactly as
/// written); returns the status and the body.
async fn raw_request(gw: &Gateway, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (raw_status(&text), body)
}

#[tokio::test]
async fn override_headers_in_any_spelling_never_reach_the_upstream() {
    let (gw, _up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let auth = format!("Bearer {token}");
    for name in SPELLINGS {
        for (path, with_token) in [("/public/x", false), ("/api/x", true)] {
            let mut h = vec![(*name, "DELETE")];
            if with_token {
                h.push(("authorization", auth.as_str()));
            }
            let r = get(&gw.url(path), &h).await;
            let seen = r.seen();
            assert_no_override(&seen);
            assert_eq!(seen.method(), "GET", "{name} on {path}");
        }
    }
    // All of them at once, over HTTP/2 as well.
    let all: Vec<(&str, &str)> = SPELLINGS.iter().map(|n| (*n, "/admin/secret")).collect();
    let seen = get(&gw.url("/public/x"), &all).await.seen();
    assert_no_override(&seen);
    assert_eq!(seen.uri(), "/x");
    let lower: Vec<(String, &str)> = SPELLINGS
        .iter()
        .map(|n| (n.to_ascii_lowercase(), "DELETE"))
        .collect();
    let lower: Vec<(&str, &str)> = lower.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let seen = get_h2(&gw.url("/public/x"), &lower).await.seen();
    assert_no_override(&seen);
    assert_eq!(seen.0["version"], "HTTP/1.1");
}

#[tokio::test]
async fn raw_spellings_are_dropped_too() {
    let (gw, _up) = setup().await;
    let mut head =
        String::from("GET /public/x HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n");
    for name in SPELLINGS {
        head.push_str(&format!("{name}: PUT\r\n"));
    }
    head.push_str("\r\n");
    let (status, body) = raw_request(&gw, &head).await;
    assert_eq!(status, 200, "{body}");
    let seen = Seen(serde_json::from_str(&body).unwrap());
    assert_no_override(&seen);
    assert_eq!(seen.method(), "GET");
}

#[tokio::test]
async fn an_override_naming_a_refused_method_gets_405() {
    let (gw, up) = setup().await;
    let before = up.hits.load(Ordering::SeqCst);
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x_http_method_override", "delete"),
        ("X-HTTP-Method", "DELETE"),
        ("X.Method.Override", "PUT"),
        ("X-HTTP-Method-Override", "GET, DELETE"),
        ("X-HTTP-Method-Override", "NOT-A-METHOD"),
    ] {
        let r = get(&gw.url("/get-only/x"), &[(name, value)]).await;
        assert_eq!(r.status, 405, "{name}: {value}: {}", r.text());
        assert_eq!(r.header("allow"), Some("GET"));
        assert_eq!(r.json()["error"], "method_not_allowed");
    }
    // Raw, with a spelling a client library might refuse to send.
    let (status, body) = raw_request(
        &gw,
        "GET /get-only/x HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\nX.HTTP.Method_Override: DELETE\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        before,
        "nothing reached the upstream"
    );
    // An override naming an allowed method is let through, without the header.
    let auth = format!("Bearer {}", access_token(&gw, "alice", ALICE_PW).await);
    let seen = get(
        &gw.url("/get-only/x"),
        &[("X-HTTP-Method-Override", "get"), ("authorization", &auth)],
    )
    .await
    .seen();
    assert_no_override(&seen);
    assert_eq!(seen.method(), "GET");
    // A route allowing every method: no 405, the header is still dropped.
    let seen = get(
        &gw.url("/public/x"),
        &[("X-HTTP-Method-Override", "DELETE")],
    )
    .await
    .seen();
    assert_no_override(&seen);
}

#[tokio::test]
async fn a_hundred_overrides_at_once() {
    let (gw, up) = setup().await;
    let before = up.hits.load(Ordering::SeqCst);
    let gw = std::sync::Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let name = SPELLINGS[i % SPELLINGS.len()];
            if i % 2 == 0 {
                // A refused method on the GET-only route.
                let method_override = [
                    "X-HTTP-Method-Override",
                    "x_http_method",
                    "X.Method.Override",
                ][i % 3];
                let r = get(&gw.url("/get-only/x"), &[(method_override, "DELETE")]).await;
                assert_eq!(r.status, 405, "{method_override}: {}", r.text());
                None
            } else {
                let r = request(Method::GET, &gw.url("/public/x"), &[(name, "DELETE")], "").await;
                Some(r.seen())
            }
        }));
    }
    let mut forwarded = 0;
    for t in tasks {
        if let Some(seen) = t.await.unwrap() {
            assert_no_override(&seen);
            assert_eq!(seen.method(), "GET");
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 50);
    assert_eq!(
        up.hits.load(Ordering::SeqCst) - before,
        50,
        "only the allowed requests reached the upstream"
    );
}
