//! One reading of a path, for every upstream (issue 9 item 6): with routes `/svc`
//! (scope read) and `/svc/admin` (scope admin) on one upstream, a read token must
//! not reach the admin paths through a spelling that some upstream reads as
//! `/svc/admin/...`. Case variants land on the admin route (403); trailing dots and
//! spaces, double encoding, overlong UTF-8 and fullwidth forms get 400. In every
//! refused case the upstream receives nothing. Real gateway, real upstream, real HTTP.

mod common;
use common::*;

use std::sync::atomic::Ordering;

use http::Method;

/// The standard test config plus `/svc` (read) and `/svc/admin` (admin), neither
/// stripped, on the test upstream. bob has read; alice has read and admin.
fn svc_config(up: &Upstream) -> String {
    config_text(up.addr)
        + &format!(
            r#"
[[routes]]
prefix = "/svc"
upstream = "http://{0}"
scopes = ["read"]

[[routes]]
prefix = "/svc/admin"
upstream = "http://{0}"
scopes = ["admin"]
"#,
            up.addr
        )
}

/// Case variants of `/svc/admin/users` (Express matches case-insensitively by
/// default, and so do IIS and ASP.NET).
const CASE_VARIANTS: [&str; 5] = [
    "/svc/ADMIN/users",
    "/svc/Admin/users",
    "/SVC/admin/users",
    "/svc/%41dmin/users",
    "/svc/%61DMIN/users",
];

/// Spellings of `/svc/admin/users` (or of a path out of `/svc`) that some
/// upstream reads another way; each gets 400.
const REFUSED: [&str; 21] = [
    // IIS and ASP.NET trim trailing dots and spaces of a segment.
    "/svc/admin./users",
    "/svc/admin%2e/users",
    "/svc/admin%2E/users",
    "/svc/admin%20/users",
    "/svc/admin.%20/users",
    "/svc/admin%20.",
    // Double encoding: an upstream that decodes twice sees `..`, `/`, `\`, `a`.
    "/svc/%252e%252e/admin/users",
    "/svc/x/%252E%252E/admin/users",
    "/svc%252Fadmin/users",
    "/svc/x%255c..%255cadmin/users",
    "/svc/%2561dmin/users",
    // Overlong UTF-8 for `.` and `/`, and a byte that is no UTF-8 at all.
    "/svc/x/%C0%AE%C0%AE/admin/users",
    "/svc/x/%E0%80%AE%E0%80%AE/admin/users",
    "/svc/x%C0%AFadmin/users",
    "/svc/x/%FF/admin",
    // Fullwidth `.`, `/`, `Ａ`, and the one dot leader, which NFKC reads as ASCII.
    "/svc/x/%EF%BC%8E%EF%BC%8E/admin/users",
    "/svc%EF%BC%8Fadmin/users",
    "/svc/%EF%BC%A1dmin/users",
    "/svc/x/%E2%80%A4%E2%80%A4/admin/users",
    // A dotless i upper-cases to I: `admın` reads as `ADMIN`.
    "/svc/adm%C4%B1n/users",
    // IIS's %u escapes are not percent-encoding.
    "/svc/%u0061dmin/users",
];

#[tokio::test]
async fn case_variants_land_on_the_more_protected_route() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&svc_config(&up)).await;
    let read = access_token(&gw, "bob", BOB_PW).await;
    for path in CASE_VARIANTS {
        let r = get_with_token(&gw.url(path), &read).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("insufficient_scope") && challenge.contains("scope=\"admin\""),
            "{path}: {challenge}"
        );
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "the upstream was reached"
    );

    // The read token still opens /svc, in any case.
    let r = get_with_token(&gw.url("/SVC/orders/7"), &read).await;
    assert_eq!(r.seen().uri(), "/SVC/orders/7");

    // An admin token gets through, and the path goes upstream as sent.
    let admin = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/svc/ADMIN/users"), &admin).await;
    assert_eq!(r.seen().uri(), "/svc/ADMIN/users");
    let r = get_with_token(&gw.url("/svc/%41dmin/users"), &admin).await;
    assert_eq!(r.seen().uri(), "/svc/Admin/users");
}

#[tokio::test]
async fn paths_read_another_way_are_refused_before_the_upstream() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&svc_config(&up)).await;
    let read = access_token(&gw, "bob", BOB_PW).await;
    let admin = access_token(&gw, "alice", ALICE_PW).await;
    for path in REFUSED {
        // Refused whatever the token: the path itself is the problem.
        for token in [&read, &admin] {
            let r = get_with_token(&gw.url(path), token).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            assert_eq!(r.json()["error"], "invalid_request", "{path}");
        }
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(r.status, 400, "{path} without a token: {}", r.text());
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "the upstream was reached"
    );
}

#[tokio::test]
async fn raw_trailing_spaces_and_non_ascii_bytes_are_refused() {
    // Shapes an HTTP client library will not send: written on the socket.
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&svc_config(&up)).await;
    let read = access_token(&gw, "bob", BOB_PW).await;
    let targets: [&[u8]; 4] = [
        b"/svc/admin /users",
        "/svc/ａdmin/users".as_bytes(),
        b"/svc/x/\xc0\xae\xc0\xae/admin/users",
        "/svc/x/．．/admin/users".as_bytes(),
    ];
    for target in targets {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {read}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let answer = raw(gw.addr, &req).await;
        assert_eq!(
            raw_status(&answer),
            400,
            "{}: {answer}",
            String::from_utf8_lossy(target)
        );
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "the upstream was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_variants_never_reach_the_upstream() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&svc_config(&up)).await;
    let read = access_token(&gw, "bob", BOB_PW).await;
    let all: Vec<&str> = CASE_VARIANTS
        .iter()
        .chain(REFUSED.iter())
        .copied()
        .collect();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let path = all[i % all.len()];
            let url = gw.url(path);
            let read = read.clone();
            tokio::spawn(async move {
                let auth = format!("Bearer {read}");
                let method = if i % 2 == 0 {
                    Method::GET
                } else {
                    Method::POST
                };
                let r = request(method, &url, &[("authorization", &auth)], "x").await;
                (path, r.status.as_u16())
            })
        })
        .collect();
    for t in tasks {
        let (path, status) = t.await.unwrap();
        let want = if CASE_VARIANTS.contains(&path) {
            403
        } else {
            400
        };
        assert_eq!(status, want, "{path}");
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "the upstream was reached"
    );
}

#[tokio::test]
async fn prefixes_equal_ignoring_case_are_one_prefix() {
    let up = spawn_upstream().await;
    let text = svc_config(&up)
        + &format!(
            "\n[[routes]]\nprefix = \"/SVC/Admin/\"\nupstream = \"http://{}\"\n",
            up.addr
        );
    let e = whosthat::Config::parse(&text, std::path::Path::new("t.toml")).unwrap_err();
    let routes = text.matches("[[routes]]").count();
    assert_eq!(e.key, Some(format!("routes[{}].prefix", routes - 1)), "{e}");
    assert!(e.message.contains("ignoring case"), "{e}");
}
