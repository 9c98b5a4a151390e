//! The token endpoint (RFC 6749 sections 2.3, 3.2, 4.3, 4.4, 5, 6) through real HTTP:
//! every grant, every error code, client authentication, request framing, and the
//! password pool's behaviour under a login flood.

mod common;
mod oauth_helpers;
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use serde_json::Value;

const TOKEN_PATH: &str = "/auth/access_token";

/// An `application/x-www-form-urlencoded` body, every name and value encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

/// RFC 6749 5.2: `error_description` only from %x20-21 / %x23-5B / %x5D-7E.
fn description_chars_ok(d: &str) -> bool {
    d.bytes()
        .all(|b| b == 0x20 || b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// An RFC 6749 5.2 error: status, JSON `error`, a well-formed description, no-store.
/// Returns the JSON body.
#[track_caller]
fn assert_oauth_error(r: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "expected {status} {code}, got: {}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"], code, "body: {j}");
    let d = j["error_description"]
        .as_str()
        .expect("error_description is a string");
    assert!(description_chars_ok(d), "forbidden characters in {d:?}");
    assert!(
        j.get("access_token").is_none(),
        "an error must carry no token: {j}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    if code == "invalid_client" {
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"whosthat\"")
        );
    }
    j
}

fn is_base64url_token(t: &str) -> bool {
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An RFC 6749 5.1 success with the configured 1h lifetime. Returns the JSON body.
#[track_caller]
fn assert_token_ok(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "token request failed: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let j = r.json();
    let at = j["access_token"]
        .as_str()
        .expect("access_token is a string");
    assert!(
        is_base64url_token(at),
        "access token {at:?} is not 43 base64url characters"
    );
    assert_eq!(j["token_type"], "Bearer");
    assert!(j["expires_in"].is_u64(), "expires_in must be a number: {j}");
    assert_eq!(j["expires_in"], 3600);
    assert!(j["scope"].is_string(), "scope is missing: {j}");
    if let Some(rt) = j.get("refresh_token") {
        let rt = rt.as_str().expect("refresh_token is a string");
        assert!(
            is_base64url_token(rt),
            "refresh token {rt:?} is not 43 base64url characters"
        );
        assert_ne!(rt, at);
    }
    j
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn str_of<'a>(j: &'a Value, k: &str) -> &'a str {
    j[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {j}"))
}

async fn refresh(gw: &Gateway, rt: &str, scope: Option<&str>, headers: &[(&str, &str)]) -> Reply {
    let mut p = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(s) = scope {
        p.push(("scope", s));
    }
    token_request(gw, &form(&p), headers).await
}

async fn password_grant(
    gw: &Gateway,
    user: &str,
    pw: &str,
    extra: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Reply {
    let mut p = vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", pw),
    ];
    p.extend_from_slice(extra);
    token_request(gw, &form(&p), headers).await
}

// ---------------------------------------------------------------- password grant

#[tokio::test]
async fn password_grant_success_shape_and_headers() {
    let (gw, _up) = setup().await;
    // The seed's exact form: a bare `scope` (no `=`), no client named (default `cli`).
    let seed = "grant_type=password&username=alice&password=alice-pw&scope";
    let first = assert_token_ok(&token_request(&gw, seed, &[]).await);
    assert!(
        first["refresh_token"].is_string(),
        "cli may refresh: a refresh token is expected"
    );
    // alice has read write admin; cli allows read write admin.
    assert_eq!(first["scope"], "admin read write");

    let second = assert_token_ok(&token_request(&gw, seed, &[]).await);
    assert_ne!(first["access_token"], second["access_token"]);
    assert_ne!(first["refresh_token"], second["refresh_token"]);
}

#[tokio::test]
async fn password_token_opens_protected_route_as_the_user() {
    let (gw, _up) = setup().await;
    let j = assert_token_ok(&password_grant(&gw, "alice", ALICE_PW, &[], &[]).await);
    let seen = get_with_token(&gw.url("/api/orders/7"), str_of(&j, "access_token"))
        .await
        .seen();
    assert_eq!(seen.uri(), "/orders/7");
    assert_eq!(seen.header_all("x-auth-user"), vec!["alice".to_string()]);
    assert_eq!(seen.header("x-auth-client").as_deref(), Some("cli"));
    assert_eq!(
        seen.header("x-auth-scope").as_deref(),
        Some("admin read write")
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let (gw, _up) = setup().await;
    let wrong = password_grant(&gw, "alice", "not-alice-pw", &[], &[]).await;
    let unknown = password_grant(&gw, "mallory", ALICE_PW, &[], &[]).await;
    let a = assert_oauth_error(&wrong, 400, "invalid_grant");
    let b = assert_oauth_error(&unknown, 400, "invalid_grant");
    assert_eq!(a["error_description"], b["error_description"]);
    assert_eq!(wrong.body, unknown.body, "the two bodies must be identical");
    // Nothing in the answer names the user.
    assert!(!unknown.text().contains("mallory"));
}

#[tokio::test]
async fn missing_username_is_invalid_request() {
    let (gw, _up) = setup().await;
    let r = token_request(
        &gw,
        &form(&[("grant_type", "password"), ("password", ALICE_PW)]),
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // An empty value counts as absent (3.2).
    let r = token_request(&gw, "grant_type=password&username=&password=alice-pw", &[]).await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn missing_password_is_invalid_request() {
    let (gw, _up) = setup().await;
    let r = token_request(
        &gw,
        &form(&[("grant_type", "password"), ("username", "alice")]),
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    let r = token_request(&gw, "grant_type=password&username=alice&password", &[]).await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn missing_grant_type_is_invalid_request() {
    let (gw, _up) = setup().await;
    let r = token_request(
        &gw,
        &form(&[("username", "alice"), ("password", ALICE_PW)]),
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    let r = token_request(&gw, "grant_type=&username=alice&password=alice-pw", &[]).await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn unknown_grant_type_is_unsupported() {
    let (gw, _up) = setup().await;
    let r = token_request(
        &gw,
        &form(&[
            ("grant_type", "magic"),
            ("username", "alice"),
            ("password", ALICE_PW),
        ]),
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
}

#[tokio::test]
async fn authorization_code_grant_for_a_client_without_it_is_unauthorized() {
    let (gw, _up) = setup().await;
    // cli (the default client) may not use the code grant.
    let f = form(&[
        ("grant_type", "authorization_code"),
        ("code", "abc"),
        ("redirect_uri", "http://127.0.0.1:8765/callback"),
    ]);
    let r = token_request(&gw, &f, &[]).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

// ------------------------------------------------------------------------ scope

#[tokio::test]
async fn empty_scope_is_absent() {
    let (gw, _up) = setup().await;
    let j = assert_token_ok(&password_grant(&gw, "alice", ALICE_PW, &[("scope", "")], &[]).await);
    assert_eq!(j["scope"], "admin read write");
    let j = assert_token_ok(&password_grant(&gw, "bob", BOB_PW, &[("scope", "")], &[]).await);
    assert_eq!(j["scope"], "read");
}

#[tokio::test]
async fn narrower_scope_is_granted_exactly() {
    let (gw, _up) = setup().await;
    let j =
        assert_token_ok(&password_grant(&gw, "alice", ALICE_PW, &[("scope", "read")], &[]).await);
    assert_eq!(j["scope"], "read");
    // The narrower token really is narrower: /admin/ needs admin.
    let r = get_with_token(&gw.url("/admin/x"), str_of(&j, "access_token")).await;
    assert_eq!(r.status, 403);
    let j = assert_token_ok(
        &password_grant(&gw, "alice", ALICE_PW, &[("scope", "write read")], &[]).await,
    );
    assert_eq!(j["scope"], "read write");
}

#[tokio::test]
async fn scope_beyond_user_or_client_is_invalid_scope() {
    let (gw, _up) = setup().await;
    // bob has only read.
    let r = password_grant(&gw, "bob", BOB_PW, &[("scope", "write")], &[]).await;
    assert_oauth_error(&r, 400, "invalid_scope");
    // Nobody has `nope`.
    let r = password_grant(&gw, "alice", ALICE_PW, &[("scope", "nope")], &[]).await;
    assert_oauth_error(&r, 400, "invalid_scope");
    let r = password_grant(&gw, "alice", ALICE_PW, &[("scope", "read nope")], &[]).await;
    assert_oauth_error(&r, 400, "invalid_scope");
    // alice has admin but client svc may not ask for it: user ∩ client.
    let svc = basic("svc", SVC_SECRET);
    let r = password_grant(
        &gw,
        "alice",
        ALICE_PW,
        &[("scope", "admin")],
        &[("authorization", &svc)],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_scope");
    // Without a scope, svc grants alice exactly the intersection.
    let j = assert_token_ok(
        &password_grant(&gw, "alice", ALICE_PW, &[], &[("authorization", &svc)]).await,
    );
    assert_eq!(j["scope"], "read write");
}

#[tokio::test]
async fn malformed_scope_is_invalid_scope() {
    let (gw, _up) = setup().await;
    // `"` and `\` are outside scope-token (3.3); form() percent-encodes them.
    for bad in ["re\"ad", "read\\", "read\twrite"] {
        let r = password_grant(&gw, "alice", ALICE_PW, &[("scope", bad)], &[]).await;
        assert_oauth_error(&r, 400, "invalid_scope");
    }
    let r = token_request(
        &gw,
        "grant_type=password&username=alice&password=alice-pw&scope=a%22b",
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_scope");
}

// ----------------------------------------------------------- request framing

#[tokio::test]
async fn repeated_grant_type_is_invalid_request() {
    let (gw, _up) = setup().await;
    let r = token_request(
        &gw,
        "grant_type=password&grant_type=password&username=alice&password=alice-pw",
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn repeated_username_is_invalid_request() {
    let (gw, _up) = setup().await;
    let r = token_request(
        &gw,
        "grant_type=password&username=alice&username=bob&password=alice-pw",
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // Even with the same value twice.
    let r = token_request(
        &gw,
        "grant_type=password&username=alice&username=alice&password=alice-pw",
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn get_is_405_with_allow_post_and_issues_nothing() {
    let (gw, _up) = setup().await;
    let url = gw.url(&format!(
        "{TOKEN_PATH}?grant_type=password&username=alice&password=alice-pw"
    ));
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(
        !r.text().contains("access_token"),
        "a GET must issue nothing: {}",
        r.text()
    );
    // Also with a form body, as a confused client might send.
    let r = request(
        Method::GET,
        &gw.url(TOKEN_PATH),
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=alice&password=alice-pw",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(!r.text().contains("access_token"));
}

#[tokio::test]
async fn json_content_type_is_invalid_request() {
    let (gw, _up) = setup().await;
    let body = r#"{"grant_type":"password","username":"alice","password":"alice-pw"}"#;
    let r = request(
        Method::POST,
        &gw.url(TOKEN_PATH),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // A form body labelled as JSON is refused as well.
    let r = request(
        Method::POST,
        &gw.url(TOKEN_PATH),
        &[("content-type", "application/json")],
        "grant_type=password&username=alice&password=alice-pw",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // No content type at all.
    let r = request(
        Method::POST,
        &gw.url(TOKEN_PATH),
        &[],
        "grant_type=password&username=alice&password=alice-pw",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // The right media type with a charset parameter is fine.
    let r = request(
        Method::POST,
        &gw.url(TOKEN_PATH),
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )],
        "grant_type=password&username=alice&password=alice-pw",
    )
    .await;
    assert_token_ok(&r);
}

#[tokio::test]
async fn parameters_in_the_query_are_invalid_request() {
    let (gw, _up) = setup().await;
    // Everything in the query.
    let url = gw.url(&format!(
        "{TOKEN_PATH}?grant_type=password&username=alice&password=alice-pw"
    ));
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "application/x-www-form-urlencoded")],
        "",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // Only the secret in the query, the rest in the body.
    let url = gw.url(&format!("{TOKEN_PATH}?client_secret=svc-secret"));
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials&client_id=svc",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn body_over_8_kib_with_content_length_is_413() {
    let (gw, _up) = setup().await;
    let base = "grant_type=password&username=alice&password=alice-pw&pad=";
    // Exactly 8 KiB passes (and the unknown `pad` parameter is ignored, 3.2)...
    let at_limit = format!("{base}{}", "x".repeat(8192 - base.len()));
    assert_eq!(at_limit.len(), 8192);
    assert_token_ok(&token_request(&gw, &at_limit, &[]).await);
    // ...one byte more does not.
    let over = format!("{base}{}", "x".repeat(8193 - base.len()));
    let r = token_request(&gw, &over, &[]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json().get("access_token").is_none());
    let big = format!("{base}{}", "x".repeat(64 * 1024));
    let r = token_request(&gw, &big, &[]).await;
    assert_eq!(r.status, 413, "{}", r.text());
}

fn chunked_request(body: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn chunked_body_over_8_kib_without_content_length_is_413() {
    let (gw, _up) = setup().await;
    let base = "grant_type=password&username=alice&password=alice-pw&pad=";
    // Control: a small chunked request is read and answered.
    let answer = raw(gw.addr, &chunked_request(base)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(answer.contains("\"access_token\""));
    // Over the limit, with no Content-Length to reject up front.
    let big = format!("{base}{}", "x".repeat(9000));
    let answer = raw(gw.addr, &chunked_request(&big)).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(!answer.contains("\"access_token\""));
}

// ------------------------------------------------------------- client auth

#[tokio::test]
async fn basic_auth_confidential_client_password_grant() {
    let (gw, _up) = setup().await;
    let svc = basic("svc", SVC_SECRET);
    let j =
        assert_token_ok(&password_grant(&gw, "bob", BOB_PW, &[], &[("authorization", &svc)]).await);
    assert_eq!(j["scope"], "read");
    assert!(j["refresh_token"].is_string());
    let seen = get_with_token(&gw.url("/api/x"), str_of(&j, "access_token"))
        .await
        .seen();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("bob"));
    assert_eq!(seen.header("x-auth-client").as_deref(), Some("svc"));
}

#[tokio::test]
async fn basic_auth_confidential_client_credentials_grant() {
    let (gw, _up) = setup().await;
    let svc = basic("svc", SVC_SECRET);
    let r = token_request(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &svc)],
    )
    .await;
    let j = assert_token_ok(&r);
    assert_eq!(j["scope"], "read write");
}

#[tokio::test]
async fn wrong_secret_is_401_invalid_client_with_basic_challenge() {
    let (gw, _up) = setup().await;
    let bad = basic("svc", "not-the-secret");
    let r = token_request(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &bad)],
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
    let r = password_grant(&gw, "alice", ALICE_PW, &[], &[("authorization", &bad)]).await;
    assert_oauth_error(&r, 401, "invalid_client");
}

#[tokio::test]
async fn unknown_client_via_basic_gets_the_same_answer_as_wrong_secret() {
    let (gw, _up) = setup().await;
    let wrong = token_request(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &basic("svc", "nope"))],
    )
    .await;
    let unknown = token_request(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &basic("ghost", "nope"))],
    )
    .await;
    assert_oauth_error(&wrong, 401, "invalid_client");
    assert_oauth_error(&unknown, 401, "invalid_client");
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(
        wrong.header("www-authenticate"),
        unknown.header("www-authenticate")
    );
    assert!(!unknown.text().contains("ghost"));
}

#[tokio::test]
async fn client_secret_post_works() {
    let (gw, _up) = setup().await;
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_secret", SVC_SECRET),
    ]);
    let j = assert_token_ok(&token_request(&gw, &f, &[]).await);
    assert_eq!(j["scope"], "read write");
    assert!(j.get("refresh_token").is_none());
    let j = assert_token_ok(
        &password_grant(
            &gw,
            "alice",
            ALICE_PW,
            &[("client_id", "svc"), ("client_secret", SVC_SECRET)],
            &[],
        )
        .await,
    );
    assert_eq!(j["scope"], "read write");
    // A wrong secret in the body is invalid_client too.
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_secret", "nope"),
    ]);
    assert_oauth_error(&token_request(&gw, &f, &[]).await, 401, "invalid_client");
}

#[tokio::test]
async fn basic_plus_secret_in_body_is_invalid_request() {
    let (gw, _up) = setup().await;
    let svc = basic("svc", SVC_SECRET);
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_secret", SVC_SECRET),
    ]);
    let r = token_request(&gw, &f, &[("authorization", &svc)]).await;
    assert_oauth_error(&r, 400, "invalid_request");
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_secret", SVC_SECRET),
    ]);
    let r = token_request(&gw, &f, &[("authorization", &svc)]).await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn confidential_client_by_id_only_is_invalid_client() {
    let (gw, _up) = setup().await;
    let r = password_grant(&gw, "alice", ALICE_PW, &[("client_id", "svc")], &[]).await;
    assert_oauth_error(&r, 401, "invalid_client");
    let r = token_request(&gw, "grant_type=client_credentials&client_id=svc", &[]).await;
    assert_oauth_error(&r, 401, "invalid_client");
    // An empty secret in Basic is no secret either.
    let r = token_request(
        &gw,
        "grant_type=client_credentials",
        &[("authorization", &basic("svc", ""))],
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
}

#[tokio::test]
async fn client_id_with_colon_is_form_urlencoded_in_basic() {
    let (gw, _up) = setup().await;
    // RFC 6749 2.3.1: id `a:b` goes into Basic as `a%3Ab`.
    let auth = basic("a%3Ab", SVC_SECRET);
    let j = assert_token_ok(
        &password_grant(&gw, "alice", ALICE_PW, &[], &[("authorization", &auth)]).await,
    );
    assert_eq!(j["scope"], "read");
    assert!(
        j.get("refresh_token").is_none(),
        "client a:b has no refresh_token grant: {j}"
    );
    let seen = get_with_token(&gw.url("/api/x"), str_of(&j, "access_token"))
        .await
        .seen();
    assert_eq!(seen.header("x-auth-client").as_deref(), Some("a:b"));
    // Unencoded, the first colon splits: id `a`, secret `b:svc-secret`, an unknown client.
    let raw_colon = basic("a:b", SVC_SECRET);
    let r = password_grant(
        &gw,
        "alice",
        ALICE_PW,
        &[],
        &[("authorization", &raw_colon)],
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
}

#[tokio::test]
async fn public_client_by_client_id_works() {
    let (gw, _up) = setup().await;
    let j =
        assert_token_ok(&password_grant(&gw, "bob", BOB_PW, &[("client_id", "cli")], &[]).await);
    assert_eq!(j["scope"], "read");
    assert!(j["refresh_token"].is_string());
    let seen = get_with_token(&gw.url("/api/x"), str_of(&j, "access_token"))
        .await
        .seen();
    assert_eq!(seen.header("x-auth-client").as_deref(), Some("cli"));
    // Unknown public-looking client by id alone.
    let r = password_grant(&gw, "bob", BOB_PW, &[("client_id", "ghost")], &[]).await;
    assert_oauth_error(&r, 401, "invalid_client");
}

// ------------------------------------------------------- unauthorized_client

#[tokio::test]
async fn client_without_password_grant_is_unauthorized_client() {
    let (gw, _up) = setup().await;
    let r = password_grant(&gw, "alice", ALICE_PW, &[("client_id", "cc-only")], &[]).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

#[tokio::test]
async fn public_client_asking_client_credentials_is_unauthorized_client() {
    let (gw, _up) = setup().await;
    let r = token_request(&gw, "grant_type=client_credentials&client_id=cli", &[]).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
    // The default client (also cli) likewise.
    let r = token_request(&gw, "grant_type=client_credentials", &[]).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

// ------------------------------------------------------- client_credentials

#[tokio::test]
async fn client_credentials_token_has_no_refresh_and_client_scopes() {
    let (gw, _up) = setup().await;
    let svc = basic("svc", SVC_SECRET);
    let j = assert_token_ok(
        &token_request(
            &gw,
            "grant_type=client_credentials",
            &[("authorization", &svc)],
        )
        .await,
    );
    assert!(
        j.get("refresh_token").is_none(),
        "4.4.3: no refresh token: {j}"
    );
    assert_eq!(j["scope"], "read write");
    let j = assert_token_ok(
        &token_request(
            &gw,
            "grant_type=client_credentials&scope=write",
            &[("authorization", &svc)],
        )
        .await,
    );
    assert_eq!(j["scope"], "write");
}

#[tokio::test]
async fn client_credentials_beyond_client_scope_is_invalid_scope() {
    let (gw, _up) = setup().await;
    let svc = basic("svc", SVC_SECRET);
    let r = token_request(
        &gw,
        "grant_type=client_credentials&scope=admin",
        &[("authorization", &svc)],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_scope");
}

#[tokio::test]
async fn client_credentials_token_reaches_upstream_as_client_only() {
    let (gw, _up) = setup().await;
    let svc = basic("svc", SVC_SECRET);
    let j = assert_token_ok(
        &token_request(
            &gw,
            "grant_type=client_credentials",
            &[("authorization", &svc)],
        )
        .await,
    );
    let seen = get_with_token(&gw.url("/api/x"), str_of(&j, "access_token"))
        .await
        .seen();
    assert_eq!(seen.header_all("x-auth-client"), vec!["svc".to_string()]);
    assert!(
        seen.header_all("x-auth-user").is_empty(),
        "no user behind a client_credentials token"
    );
    assert_eq!(seen.header("x-auth-scope").as_deref(), Some("read write"));
}

// ------------------------------------------------------------ refresh_token

#[tokio::test]
async fn refresh_rotates_and_works_once() {
    let (gw, _up) = setup().await;
    let first = login(&gw, "alice", ALICE_PW, "").await;
    let rt1 = str_of(&first, "refresh_token");
    let second = assert_token_ok(&refresh(&gw, rt1, None, &[]).await);
    let rt2 = str_of(&second, "refresh_token");
    assert_ne!(second["access_token"], first["access_token"]);
    assert_ne!(rt2, rt1);
    // Omitted scope = the original.
    assert_eq!(second["scope"], first["scope"]);
    let seen = get_with_token(&gw.url("/api/x"), str_of(&second, "access_token"))
        .await
        .seen();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    // The rotated one works, once.
    let third = assert_token_ok(&refresh(&gw, rt2, None, &[]).await);
    let rt3 = str_of(&third, "refresh_token");
    let at3 = str_of(&third, "access_token");
    assert_eq!(get_with_token(&gw.url("/api/x"), at3).await.status, 200);
    // A spent refresh token presented again is a replay (RFC 9700 section 4.14.2):
    // refused, and the whole grant dies with it: the newest refresh token and
    // every access token of the family.
    assert_oauth_error(&refresh(&gw, rt1, None, &[]).await, 400, "invalid_grant");
    assert_oauth_error(&refresh(&gw, rt3, None, &[]).await, 400, "invalid_grant");
    assert_eq!(get_with_token(&gw.url("/api/x"), at3).await.status, 401);
    let first_at = str_of(&first, "access_token");
    assert_eq!(
        get_with_token(&gw.url("/api/x"), first_at).await.status,
        401
    );
    // Another login of the same user is another family, untouched.
    let other = access_token(&gw, "alice", ALICE_PW).await;
    assert_eq!(get_with_token(&gw.url("/api/x"), &other).await.status, 200);
}

#[tokio::test]
async fn refresh_may_narrow_scope() {
    let (gw, _up) = setup().await;
    let first = login(&gw, "alice", ALICE_PW, "").await;
    let j =
        assert_token_ok(&refresh(&gw, str_of(&first, "refresh_token"), Some("read"), &[]).await);
    assert_eq!(j["scope"], "read");
    assert_eq!(
        get_with_token(&gw.url("/api/x"), str_of(&j, "access_token"))
            .await
            .status,
        200
    );
    assert_eq!(
        get_with_token(&gw.url("/admin/x"), str_of(&j, "access_token"))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn refresh_widening_scope_is_invalid_scope_and_does_not_burn_the_token() {
    let (gw, _up) = setup().await;
    let first = login(&gw, "alice", ALICE_PW, "read").await;
    assert_eq!(first["scope"], "read");
    let rt = str_of(&first, "refresh_token");
    // alice and cli both allow write, but this grant was only for read.
    assert_oauth_error(
        &refresh(&gw, rt, Some("read write"), &[]).await,
        400,
        "invalid_scope",
    );
    let j = assert_token_ok(&refresh(&gw, rt, None, &[]).await);
    assert_eq!(j["scope"], "read");
}

#[tokio::test]
async fn refresh_by_another_client_is_invalid_grant_and_does_not_burn_the_token() {
    let (gw, _up) = setup().await;
    let first = login(&gw, "alice", ALICE_PW, "").await; // issued to cli
    let rt = str_of(&first, "refresh_token");
    let svc = basic("svc", SVC_SECRET);
    assert_oauth_error(
        &refresh(&gw, rt, None, &[("authorization", &svc)]).await,
        400,
        "invalid_grant",
    );
    let cc = [("client_id", "cc-only")];
    let f = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", rt),
        cc[0],
    ]);
    assert_oauth_error(&token_request(&gw, &f, &[]).await, 400, "invalid_grant");
    // Still good for its own client.
    assert_token_ok(&refresh(&gw, rt, None, &[]).await);
}

#[tokio::test]
async fn garbage_refresh_token_is_invalid_grant() {
    let (gw, _up) = setup().await;
    assert_oauth_error(
        &refresh(&gw, "not-a-token", None, &[]).await,
        400,
        "invalid_grant",
    );
    let looks_real = "A".repeat(43);
    assert_oauth_error(
        &refresh(&gw, &looks_real, None, &[]).await,
        400,
        "invalid_grant",
    );
    // An access token is not a refresh token.
    let at = access_token(&gw, "bob", BOB_PW).await;
    assert_oauth_error(&refresh(&gw, &at, None, &[]).await, 400, "invalid_grant");
}

#[tokio::test]
async fn missing_refresh_token_is_invalid_request() {
    let (gw, _up) = setup().await;
    let r = token_request(&gw, "grant_type=refresh_token", &[]).await;
    assert_oauth_error(&r, 400, "invalid_request");
    let r = token_request(&gw, "grant_type=refresh_token&refresh_token=", &[]).await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_succeed_exactly_once() {
    let (gw, _up) = setup().await;
    let first = login(&gw, "alice", ALICE_PW, "").await;
    let body = Arc::new(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", str_of(&first, "refresh_token")),
    ]));
    let gw = Arc::new(gw);
    let start = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (gw, body, start) = (gw.clone(), body.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            token_request(&gw, &body, &[]).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 200 {
            assert_token_ok(&r);
            ok += 1;
        } else {
            assert_oauth_error(&r, 400, "invalid_grant");
        }
    }
    assert_eq!(ok, 1, "exactly one of ten racing refreshes may win");
}

// ------------------------------------------------------------ access expiry

#[tokio::test]
async fn expired_access_token_is_invalid_token() {
    const TTL: u64 = 2;
    let up = spawn_upstream().await;
    // Lifetimes are whole seconds and a token issued at second T dies at T + ttl
    // (alive while now < T + ttl).
    let text =
        config_text(up.addr).replace("access_token_ttl = \"1h\"", "access_token_ttl = \"2s\"");
    assert!(text.contains("access_token_ttl = \"2s\""));
    let gw = spawn_gateway_with(&text).await;
    // The login's password check may wait long for CPU on a busy machine: it comes
    // before any 2 s token's clock starts. The tokens tried below come from the
    // refresh token, which needs no password check.
    let j = login(&gw, "alice", ALICE_PW, "").await;
    assert_eq!(j["expires_in"], TTL);
    let mut rt = str_of(&j, "refresh_token").to_string();
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let (t, issued_by) = loop {
        // Issued at or after `sent`, so alive until at least `sent + TTL`: a request
        // answered before then was checked while the token was alive and must pass.
        // One answered later (a busy machine) proves nothing: try a fresh token.
        let sent = now_secs();
        let r = refresh(&gw, &rt, None, &[]).await;
        let issued_by = now_secs();
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["expires_in"], TTL);
        rt = str_of(&j, "refresh_token").to_string();
        let t = str_of(&j, "access_token").to_string();
        let status = get_with_token(&gw.url("/api/x"), &t).await.status;
        if now_secs() < sent + TTL {
            assert_eq!(status, 200, "a token younger than its {TTL} s lifetime");
            break (t, issued_by);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request answered within {TTL} s of a token's issue"
        );
    };
    // Issued at or before `issued_by`: surely dead from `issued_by + TTL` on.
    while now_secs() < issued_by + TTL {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = t.as_str();
    let r = get_with_token(&gw.url("/api/x"), t).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").expect("a Bearer challenge");
    assert!(
        challenge.starts_with("Bearer realm=\"whosthat\""),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(r.json()["error"], "invalid_token");
}

// ------------------------------------------------------------- login flood

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_flood_does_not_stall_proxied_traffic() {
    const LOGINS: usize = 40;
    // This test is about argon2's cost: alice's hash has the recommended one. One
    // password worker with a queue of 20 holds 21 checks (over half a second of CPU
    // on an idle machine, far more at idle priority on a busy one) and refuses the
    // rest of the flood at once.
    let up = spawn_upstream().await;
    let text = with_password_hash(&config_text(up.addr), "alice", &expensive_hash(ALICE_PW))
        .replace(
            "[oauth]\n",
            "[oauth]\npassword_workers = 1\npassword_queue = 20\n",
        );
    assert!(text.contains("password_queue = 20"));
    let gw = spawn_gateway_with(&text).await;
    let token = access_token(&gw, "bob", BOB_PW).await;
    let gw = Arc::new(gw);
    let finished = Arc::new(AtomicUsize::new(0));
    let mut logins = Vec::new();
    // From 40 addresses at 40 names: the brute-force limits (a few checks in flight
    // per address and per name) let every one of them reach argon2.
    for i in 0..LOGINS {
        let (gw, finished) = (gw.clone(), finished.clone());
        logins.push(tokio::spawn(async move {
            let from = std::net::Ipv4Addr::new(127, 0, 1, 10 + i as u8);
            let user = format!("flood-{i}");
            let r = oauth_helpers::token_from(
                from,
                &gw,
                &[
                    ("grant_type", "password"),
                    ("username", &user),
                    ("password", "pw"),
                ],
            )
            .await;
            finished.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    // The flood is under way once the first login is answered: the queue is full
    // (the first answers are the refusals of the overflow) or the first check is done.
    tokio::time::timeout(HANG_GUARD, async {
        while finished.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("no login of the flood finished");
    for i in 0..20 {
        let r = get_with_token(&gw.url("/api/x"), &token).await;
        assert_eq!(r.status, 200, "GET {i} during the flood: {}", r.text());
    }
    let done = finished.load(Ordering::SeqCst);
    assert!(
        done < LOGINS,
        "the GETs finished only after all {LOGINS} logins: they waited for the flood"
    );

    let (mut ok, mut busy) = (0, 0);
    for t in logins {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            // Checked (unknown names cost a check against the dummy hash).
            400 => {
                assert_eq!(r.json()["error"], "invalid_grant");
                ok += 1;
            }
            503 => {
                let retry = r
                    .header("retry-after")
                    .expect("a 503 must say when to retry");
                assert!(retry.parse::<u64>().is_ok(), "Retry-After {retry:?}");
                assert_eq!(r.json()["error"], "temporarily_unavailable");
                busy += 1;
            }
            other => panic!("a flooded login got {other}: {}", r.text()),
        }
    }
    eprintln!(
        "flood: {ok} logins succeeded, {busy} got 503; {done} answered before the GETs were done"
    );
    assert_eq!(ok + busy, LOGINS);
    // How many of the flood were checked depends on the CPU argon2 got within the
    // pool's bound (at idle priority beside busy loops, possibly none). What must
    // hold whatever the machine: once the flood is over, the pool checks passwords
    // again, a right one (bob) and a wrong one.
    assert_eq!(
        str_of(&login(&gw, "bob", BOB_PW, "").await, "token_type"),
        "Bearer"
    );
    let wrong =
        token_request_patient(&gw, "grant_type=password&username=bob&password=nope", &[]).await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert_eq!(wrong.json()["error"], "invalid_grant");
}
