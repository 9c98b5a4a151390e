//! DPoP (RFC 9449) through real HTTP: a client built here with a JOSE library
//! (`jsonwebtoken`, keys from `rcgen` and a fixture) gets DPoP-bound tokens and
//! uses them on proxied requests and userinfo; every proof rule of section 4.3
//! and the resource rules of section 7 are tried over the wire, also 100 at once.

mod common;
mod jose_helpers;
mod oauth_helpers;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::Method;
use serde_json::{Value, json};

use common::*;
use jose_helpers::*;
use oauth_helpers::*;

const TOKEN_PATH: &str = "/auth/access_token";
const API: &str = "/api/orders";

/// The standard config plus `strict`, a public client whose tokens must be DPoP-bound.
async fn gateway() -> (Gateway, Upstream) {
    let up = spawn_upstream().await;
    let extra = r#"
[[clients]]
id = "strict"
grants = ["password", "refresh_token"]
scopes = ["read"]
require_dpop = true
"#;
    let gw = spawn_gateway_with(&(config_text(up.addr) + extra)).await;
    (gw, up)
}

/// A password-grant token request with a DPoP proof by `key`.
async fn dpop_login(gw: &Gateway, key: &Key, client: &str, scope: &str) -> Reply {
    let proof = key.proof("POST", &gw.url(TOKEN_PATH), None);
    token(
        gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("client_id", client),
            ("scope", scope),
        ],
        &[("dpop", &proof)],
    )
    .await
}

/// DPoP tokens for alice via `cli` (public), asserting the response.
async fn dpop_tokens(gw: &Gateway, key: &Key) -> Value {
    let r = dpop_login(gw, key, "cli", "read").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    assert_eq!(j["token_type"], "DPoP", "{j}");
    j
}

/// `GET url` with `Authorization: DPoP <token>` and the given proofs.
async fn dpop_get(url: &str, token: &str, proofs: &[&str]) -> Reply {
    let auth = format!("DPoP {token}");
    let mut h = vec![("authorization", auth.as_str())];
    for p in proofs {
        h.push(("dpop", p));
    }
    get(url, &h).await
}

/// A 401 with a DPoP challenge carrying `error` and the algorithms.
#[track_caller]
fn assert_dpop_refused(r: &Reply, error: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").expect("a challenge");
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "{challenge}"
    );
    assert!(challenge.contains("algs=\"ES256 RS256\""), "{challenge}");
    assert_eq!(r.json()["error"], error);
}

async fn introspect(gw: &Gateway, token: &str) -> Value {
    let r = request(
        Method::POST,
        &gw.url("/auth/introspect"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("svc", SVC_SECRET)),
        ],
        &form(&[("token", token)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn a_proof_at_the_token_endpoint_binds_the_tokens_to_its_key() {
    let (gw, _up) = gateway().await;
    for key in [Key::es256(), Key::rs256()] {
        let j = dpop_tokens(&gw, &key).await;
        let v = introspect(&gw, str_of(&j, "access_token")).await;
        assert_eq!(v["active"], true);
        assert_eq!(v["token_type"], "DPoP", "{v}");
        assert_eq!(v["cnf"], json!({ "jkt": key.thumbprint() }), "{v}");
        // A public client's refresh token is bound too.
        let v = introspect(&gw, str_of(&j, "refresh_token")).await;
        assert_eq!(v["cnf"]["jkt"], key.thumbprint(), "{v}");
    }
    // Without a proof: a bearer token, as before, with no cnf.
    let j = login(&gw, "alice", ALICE_PW, "read").await;
    assert_eq!(j["token_type"], "Bearer");
    let v = introspect(&gw, str_of(&j, "access_token")).await;
    assert_eq!(v["token_type"], "Bearer");
    assert!(v.get("cnf").is_none(), "{v}");
}

#[tokio::test]
async fn a_bound_token_opens_routes_with_a_fresh_proof_and_nothing_of_it_goes_upstream() {
    let (gw, up) = gateway().await;
    for key in [Key::es256(), Key::rs256()] {
        let j = dpop_tokens(&gw, &key).await;
        let at = str_of(&j, "access_token");
        let url = gw.url(API);
        for _ in 0..2 {
            let proof = key.proof("GET", &url, Some(at));
            let seen = dpop_get(&url, at, &[&proof]).await.seen();
            assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
            assert_eq!(seen.header("dpop"), None, "the proof is not forwarded");
            assert_eq!(seen.header("authorization"), None, "nor the token");
            assert!(!seen.0.to_string().contains(at));
        }
        // htu leaves out the query (and a fragment); the request may have one.
        let with_query = format!("{url}?page=2");
        let proof = key.proof("GET", &format!("{url}#frag"), Some(at));
        assert_eq!(dpop_get(&with_query, at, &[&proof]).await.status, 200);
    }
    assert!(up.hits.load(Ordering::SeqCst) >= 6);
}

#[tokio::test]
async fn a_bound_token_sent_as_bearer_is_refused() {
    let (gw, up) = gateway().await;
    let key = Key::es256();
    let j = dpop_tokens(&gw, &key).await;
    let at = str_of(&j, "access_token");
    let r = get_with_token(&gw.url(API), at).await;
    assert_dpop_refused(&r, "invalid_token");
    // A proof alongside does not help: the scheme says bearer.
    let proof = key.proof("GET", &gw.url(API), Some(at));
    let auth = format!("Bearer {at}");
    let r = get(&gw.url(API), &[("authorization", &auth), ("dpop", &proof)]).await;
    assert_dpop_refused(&r, "invalid_token");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_bearer_token_sent_as_dpop_is_refused_and_a_bearer_request_ignores_the_header() {
    let (gw, up) = gateway().await;
    let key = Key::es256();
    let bearer = access_token(&gw, "alice", ALICE_PW).await;
    let proof = key.proof("GET", &gw.url(API), Some(&bearer));
    assert_dpop_refused(
        &dpop_get(&gw.url(API), &bearer, &[&proof]).await,
        "invalid_token",
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // A bearer request with a stray DPoP header works, and the header is dropped.
    let auth = format!("Bearer {bearer}");
    let r = get(&gw.url(API), &[("authorization", &auth), ("dpop", &proof)]).await;
    assert_eq!(r.seen().header("dpop"), None);
    // Unknown token under the DPoP scheme.
    let proof = key.proof("GET", &gw.url(API), Some("nope"));
    assert_dpop_refused(
        &dpop_get(&gw.url(API), "nope", &[&proof]).await,
        "invalid_token",
    );
}

#[tokio::test]
async fn every_proof_rule_is_enforced_on_proxied_requests() {
    let (gw, up) = gateway().await;
    let key = Key::es256();
    let j = dpop_tokens(&gw, &key).await;
    let at = str_of(&j, "access_token");
    let url = gw.url(API);
    let other_key = Key::es256();
    let bad: Vec<(&str, String)> = vec![
        ("wrong htu path", key.proof("GET", &gw.url("/api/other"), Some(at))),
        (
            "wrong htu host",
            key.proof("GET", &format!("http://evil.example{API}"), Some(at)),
        ),
        (
            "wrong htu scheme",
            key.proof("GET", &url.replace("http://", "https://"), Some(at)),
        ),
        ("wrong htm", key.proof("POST", &url, Some(at))),
        ("no ath", key.proof("GET", &url, None)),
        ("wrong ath", key.proof("GET", &url, Some("another-token"))),
        ("another key", other_key.proof("GET", &url, Some(at))),
        (
            "too old",
            key.proof_with("GET", &url, Some(at), |c| c["iat"] = json!(now() - 600)),
        ),
        (
            "from the future",
            key.proof_with("GET", &url, Some(at), |c| c["iat"] = json!(now() + 600)),
        ),
        (
            "no jti",
            key.proof_with("GET", &url, Some(at), |c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "typ JWT",
            key.sign(
                &json!({"jti": fresh_jti(), "htm": "GET", "htu": url, "iat": now(), "ath": ath(at)}),
                |h| {
                    h.typ = Some("JWT".into());
                    h.jwk = Some(serde_json::from_value(key.jwk.clone()).unwrap());
                },
            ),
        ),
        ("garbage", "not.a.jws".into()),
    ];
    for (what, proof) in &bad {
        let r = dpop_get(&url, at, &[proof]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_dpop_refused(&r, "invalid_dpop_proof");
    }
    // No proof at all, or two.
    assert_dpop_refused(&dpop_get(&url, at, &[]).await, "invalid_dpop_proof");
    let (p1, p2) = (
        key.proof("GET", &url, Some(at)),
        key.proof("GET", &url, Some(at)),
    );
    assert_dpop_refused(&dpop_get(&url, at, &[&p1, &p2]).await, "invalid_dpop_proof");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // The same token still works with a good proof.
    assert_eq!(dpop_get(&url, at, &[&p1]).await.status, 200);
}

#[tokio::test]
async fn a_replayed_proof_is_refused_even_when_sent_100_times_at_once() {
    let (gw, up) = gateway().await;
    let key = Key::es256();
    let j = dpop_tokens(&gw, &key).await;
    let at = Arc::new(str_of(&j, "access_token").to_string());
    let url = Arc::new(gw.url(API));
    let proof = Arc::new(key.proof("GET", &url, Some(&at)));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (at, url, proof) = (at.clone(), url.clone(), proof.clone());
        tasks.push(tokio::spawn(
            async move { dpop_get(&url, &at, &[&proof]).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 200 {
            ok += 1;
        } else {
            assert_dpop_refused(&r, "invalid_dpop_proof");
            assert!(r.text().contains("used before"), "{}", r.text());
        }
    }
    assert_eq!(ok, 1, "exactly one use of a proof");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    // 100 different proofs at once: all good.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (at, url) = (at.clone(), url.clone());
        let proof = key.proof("GET", &url, Some(&at));
        tasks.push(tokio::spawn(async move {
            dpop_get(&url, &at, &[&proof]).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn token_endpoint_proofs_are_checked_and_single_use() {
    let (gw, _up) = gateway().await;
    let key = Key::es256();
    let pw = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PW),
    ];
    let token_url = gw.url(TOKEN_PATH);
    for (what, proof) in [
        (
            "htu of another endpoint",
            key.proof("POST", &gw.url(API), None),
        ),
        ("htm GET", key.proof("GET", &token_url, None)),
        ("garbage", "x.y.z".to_string()),
    ] {
        let r = token(&gw, &pw, &[("dpop", &proof)]).await;
        let j = assert_oauth_error(&r, 400, "invalid_dpop_proof");
        assert!(j["error_description"].is_string(), "{what}");
    }
    let proof = key.proof("POST", &token_url, None);
    assert_eq!(token(&gw, &pw, &[("dpop", &proof)]).await.status, 200);
    let again = token(&gw, &pw, &[("dpop", &proof)]).await;
    assert_oauth_error(&again, 400, "invalid_dpop_proof");
    let two = token(&gw, &pw, &[("dpop", &proof), ("dpop", &proof)]).await;
    assert_oauth_error(&two, 400, "invalid_dpop_proof");
}

/// A refresh request for `cli` with `proof` (if any).
async fn refresh(gw: &Gateway, rt: &str, proof: Option<&str>) -> Reply {
    let mut h = Vec::new();
    if let Some(p) = proof {
        h.push(("dpop", p));
    }
    token(
        gw,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        &h,
    )
    .await
}

#[tokio::test]
async fn a_public_clients_bound_refresh_token_needs_a_proof_by_the_same_key() {
    let (gw, _up) = gateway().await;
    let key = Key::es256();
    let j = dpop_tokens(&gw, &key).await;
    let rt = str_of(&j, "refresh_token");
    let token_url = gw.url(TOKEN_PATH);
    // Without a proof, or with another key: refused, and the token not spent.
    assert_oauth_error(&refresh(&gw, rt, None).await, 400, "invalid_dpop_proof");
    let other = Key::es256().proof("POST", &token_url, None);
    assert_oauth_error(&refresh(&gw, rt, Some(&other)).await, 400, "invalid_grant");
    let proof = key.proof("POST", &token_url, None);
    let r = refresh(&gw, rt, Some(&proof)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j2 = r.json();
    assert_eq!(j2["token_type"], "DPoP");
    let v = introspect(&gw, str_of(&j2, "refresh_token")).await;
    assert_eq!(v["cnf"]["jkt"], key.thumbprint());
    let at = str_of(&j2, "access_token");
    let p = key.proof("GET", &gw.url(API), Some(at));
    assert_eq!(dpop_get(&gw.url(API), at, &[&p]).await.status, 200);
}

#[tokio::test]
async fn a_confidential_clients_refresh_token_stays_unbound() {
    let (gw, _up) = gateway().await;
    let key = Key::es256();
    let proof = key.proof("POST", &gw.url(TOKEN_PATH), None);
    let r = token(
        &gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
        ],
        &[
            ("authorization", &basic("svc", SVC_SECRET)),
            ("dpop", &proof),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["token_type"], "DPoP");
    let v = introspect(&gw, str_of(&j, "refresh_token")).await;
    assert!(v.get("cnf").is_none(), "{v}");
    // Refreshed without a proof: a bearer token.
    let r = token(
        &gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_of(&j, "refresh_token")),
        ],
        &[("authorization", &basic("svc", SVC_SECRET))],
    )
    .await;
    assert_eq!(assert_tokens(&r)["token_type"], "Bearer");
}

#[tokio::test]
async fn require_dpop_refuses_requests_without_a_proof() {
    let (gw, _up) = gateway().await;
    let r = token(
        &gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("client_id", "strict"),
        ],
        &[],
    )
    .await;
    let j = assert_oauth_error(&r, 400, "invalid_dpop_proof");
    assert_eq!(j["error_description"], "this client must send a DPoP proof");
    let key = Key::rs256();
    let r = dpop_login(&gw, &key, "strict", "read").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "DPoP");
}

#[tokio::test]
async fn userinfo_and_scopes_with_a_bound_token() {
    let (gw, _up) = gateway().await;
    let key = Key::es256();
    let j = dpop_tokens(&gw, &key).await;
    let at = str_of(&j, "access_token");
    let url = gw.url("/auth/userinfo");
    let proof = key.proof("GET", &url, Some(at));
    let r = dpop_get(&url, at, &[&proof]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"], "alice");
    assert_dpop_refused(&get_with_token(&url, at).await, "invalid_token");
    // The token has `read` only: /admin/ needs admin -> 403 with a DPoP challenge.
    let admin = gw.url("/admin/x");
    let proof = key.proof("GET", &admin, Some(at));
    let r = dpop_get(&admin, at, &[&proof]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let c = r.header("www-authenticate").unwrap();
    assert!(
        c.starts_with("DPoP ") && c.contains("insufficient_scope"),
        "{c}"
    );
}

#[tokio::test]
async fn a_revoked_bound_token_is_refused() {
    let (gw, _up) = gateway().await;
    let key = Key::es256();
    let j = dpop_tokens(&gw, &key).await;
    let at = str_of(&j, "access_token");
    let r = request(
        Method::POST,
        &gw.url("/auth/revoke"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(&[("token", at), ("client_id", "cli")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let proof = key.proof("GET", &gw.url(API), Some(at));
    assert_dpop_refused(
        &dpop_get(&gw.url(API), at, &[&proof]).await,
        "invalid_token",
    );
}
