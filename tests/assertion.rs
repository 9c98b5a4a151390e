//! `X-Auth-Assertion` end to end: a route with `identity_assertion = true`
//! sends the upstream a JWT that the `jsonwebtoken` crate verifies against the
//! gateway's JWKS (fetched over HTTP); a client-sent one never gets through,
//! whatever its spelling; one assertion serves a grant and route until
//! shortly before it expires, also under 100 concurrent requests.

mod common;
mod identity_helpers;
mod oauth_helpers;

use common::*;
use identity_helpers::*;

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

async fn setup_signed(alg: Alg) -> Signed {
    spawn_signed(&[alg], false).await
}

/// The assertions the upstream saw for `GET path` with `token` and `headers`.
async fn assertions(
    gw: &Gateway,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Vec<String> {
    let auth = format!("Bearer {token}");
    let mut h = vec![("authorization", auth.as_str())];
    h.extend_from_slice(headers);
    let r = get(&gw.url(path), &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.seen().header_all("x-auth-assertion")
}

#[tokio::test]
async fn the_upstream_gets_an_assertion_it_can_verify_with_the_jwks() {
    for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
        let s = setup_signed(alg).await;
        let token = login(&s.gw, "alice", ALICE_PW, "read write").await;
        let token = token["access_token"].as_str().unwrap();
        let got = assertions(&s.gw, "/signed/x", token, &[]).await;
        assert_eq!(got.len(), 1, "{got:?}");
        let set = jwks(&s.gw).await;
        let aud = format!("http://{}", s.up.addr);
        let c = verify(&set, &got[0], &aud).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(c["iss"], oauth_helpers::ISSUER);
        assert_eq!(c["aud"], aud);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["username"], "alice");
        assert_eq!(c["client_id"], "cli");
        assert_eq!(c["scope"], "read write");
        let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
        assert!(exp > iat && exp - iat <= 300, "at most 5 minutes: {c}");
        assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 22), "{c}");
        // Another audience never accepts it.
        assert!(verify(&set, &got[0], "http://elsewhere").is_err());
        // A changed claim breaks the signature.
        let parts: Vec<&str> = got[0].split('.').collect();
        let mut forged: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        forged["sub"] = "admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged.to_string()),
            parts[2]
        );
        let e = verify(&set, &forged, &aud).unwrap_err();
        assert!(e.to_lowercase().contains("signature"), "{alg}: {e}");
    }
}

#[tokio::test]
async fn the_routes_audience_and_a_client_credentials_subject() {
    let s = setup_signed(Alg::Es256).await;
    let j = assert_token(
        &token_request(
            &s.gw,
            "grant_type=client_credentials&scope=read",
            &[("authorization", &basic("svc", SVC_SECRET))],
        )
        .await,
    );
    let got = assertions(&s.gw, "/aud/x", &j, &[]).await;
    let c = verify(&jwks(&s.gw).await, &got[0], "orders-api").unwrap();
    assert_eq!(c["aud"], "orders-api");
    assert_eq!(c["sub"], "client:svc");
    assert_eq!(c["client_id"], "svc");
    assert!(c.get("username").is_none(), "{c}");
}

fn assert_token(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_client_sent_assertion_never_reaches_the_upstream() {
    let s = setup_signed(Alg::Es256).await;
    let token = access_token(&s.gw, "alice", ALICE_PW).await;
    let forged = [
        ("x-auth-assertion", "eyJmorged.x.y"),
        ("X_Auth_Assertion", "eyJforged.x.y"),
        ("x.auth.assertion", "eyJforged.x.y"),
    ];
    // On an asserting route: only the gateway's.
    let got = assertions(&s.gw, "/signed/x", &token, &forged).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].contains("forged"));
    verify(
        &jwks(&s.gw).await,
        &got[0],
        &format!("http://{}", s.up.addr),
    )
    .unwrap();
    // Elsewhere: none at all, the forged ones dropped too.
    let r = get(
        &s.gw.url("/api/x"),
        &[
            &[("authorization", format!("Bearer {token}").as_str())][..],
            &forged,
        ]
        .concat(),
    )
    .await;
    let seen = r.seen();
    assert!(
        !seen
            .header_names()
            .iter()
            .any(|n| n.to_ascii_lowercase().replace(['_', '.'], "-") == "x-auth-assertion"),
        "{:?}",
        seen.header_names()
    );
    // A public route asserts nobody.
    let r = get(&s.gw.url("/public/x"), &forged).await;
    assert_eq!(r.status, 200);
    assert!(r.seen().header("x-auth-assertion").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_assertion_serves_a_grant_and_route_also_under_100_concurrent_requests() {
    let s = setup_signed(Alg::Es256).await;
    let alice = access_token(&s.gw, "alice", ALICE_PW).await;
    let bob = access_token(&s.gw, "bob", BOB_PW).await;
    let aud = format!("http://{}", s.up.addr);
    let set = jwks(&s.gw).await;

    let first = assertions(&s.gw, "/signed/x", &alice, &[]).await.remove(0);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = s.gw.url("/signed/x");
            let token = if i % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            tokio::spawn(async move {
                let r = get_with_token(&url, &token).await;
                assert_eq!(r.status, 200);
                r.seen().header_all("x-auth-assertion")
            })
        })
        .collect();
    let mut by_user: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        let c = verify(&set, &got[0], &aud).unwrap();
        by_user
            .entry(c["sub"].as_str().unwrap().to_string())
            .or_default()
            .insert(got[0].clone());
    }
    // alice's was cached before the burst: every one of hers is that one.
    assert_eq!(by_user["alice"], HashSet::from([first]));
    // bob's was signed during the burst (racing misses may each sign; any of
    // them is valid): from now on one is reused.
    let after = assertions(&s.gw, "/signed/x", &bob, &[]).await.remove(0);
    assert_eq!(
        assertions(&s.gw, "/signed/x", &bob, &[]).await,
        std::slice::from_ref(&after)
    );
    assert!(
        by_user["bob"].contains(&after),
        "the cached one was handed out in the burst"
    );
    // Another route, another assertion (another audience).
    let other = assertions(&s.gw, "/aud/x", &alice, &[]).await.remove(0);
    assert!(!by_user["alice"].contains(&other));
}
