//! OpenID Connect (Core 1.0, Basic OP) through real HTTP and the login page:
//! discovery, the ID token of the code flow (verified by `jsonwebtoken`
//! against the JWKS), UserInfo, `prompt`, `max_age` and `nonce`.

mod common;
mod identity_helpers;
mod oauth_helpers;

use common::*;
use identity_helpers::*;
use oauth_helpers::*;

use serde_json::Value;
use sha2::{Digest, Sha256};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Keys [ES256, RS256]: assertions are ES256, ID tokens RS256.
async fn setup_oidc() -> Signed {
    spawn_signed(&[Alg::Es256, Alg::Rs256], false).await
}

fn rp_params<'a>(scope: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![
        ("response_type", "code"),
        ("client_id", "rp"),
        ("redirect_uri", RP_CB),
        ("scope", scope),
        ("state", "st-1"),
    ];
    p.extend_from_slice(extra);
    p
}

/// The code flow for rp as alice; the token response.
async fn rp_tokens(gw: &Gateway, scope: &str, extra: &[(&str, &str)]) -> Value {
    let loc = approved(gw, &rp_params(scope, extra), "alice", ALICE_PW).await;
    assert_eq!(loc.get("state"), Some("st-1"));
    let r = token(
        gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", loc.get("code").unwrap()),
            ("redirect_uri", RP_CB),
        ],
        &[("authorization", &basic("rp", SVC_SECRET))],
    )
    .await;
    assert_tokens(&r)
}

#[tokio::test]
async fn discovery_has_what_oidc_discovery_requires_and_matches_rfc_8414() {
    let s = setup_oidc().await;
    let r = get(&s.gw.url(OPENID_CONFIGURATION), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-control").unwrap().contains("max-age"));
    let d = r.json();
    let iss = ISSUER;
    assert_eq!(d["issuer"], iss);
    assert_eq!(d["authorization_endpoint"], format!("{iss}/auth/authorize"));
    assert_eq!(d["token_endpoint"], format!("{iss}/auth/access_token"));
    assert_eq!(d["userinfo_endpoint"], format!("{iss}/auth/userinfo"));
    assert_eq!(d["jwks_uri"], format!("{iss}{JWKS}"));
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(d["subject_types_supported"], serde_json::json!(["public"]));
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"]),
        "RS256 MUST be supported (Discovery 3)"
    );
    let scopes: Vec<&str> = d["scopes_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for s in ["openid", "profile", "email", "groups"] {
        assert!(scopes.contains(&s), "{s} in {scopes:?}");
    }
    for c in ["sub", "iss", "auth_time", "nonce", "email", "groups"] {
        assert!(
            d["claims_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == c)
        );
    }
    assert_eq!(d["request_uri_parameter_supported"], false);
    assert_eq!(get(&s.gw.url(METADATA), &[]).await.json(), d);
}

#[tokio::test]
async fn the_code_flow_returns_an_id_token_a_third_party_library_verifies() {
    let s = setup_oidc().await;
    let before = now_secs();
    let j = rp_tokens(
        &s.gw,
        "openid profile email groups read",
        &[("nonce", "n-0S6_WzA2Mj")],
    )
    .await;
    let id_token = str_of(&j, "id_token");
    assert_eq!(
        kid_in(id_token),
        s.kids[1],
        "ID tokens are RS256 while an RS256 key exists"
    );
    let c = verify(&jwks(&s.gw).await, id_token, "rp").unwrap();
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "rp");
    assert_eq!(c["azp"], "rp");
    assert_eq!(c["nonce"], "n-0S6_WzA2Mj");
    let auth_time = c["auth_time"].as_u64().unwrap();
    assert!(auth_time >= before && auth_time <= now_secs(), "{c}");
    assert!(c["exp"].as_u64().unwrap() > c["iat"].as_u64().unwrap());
    // at_hash (Core 3.1.3.6): the left half of SHA-256 of the access token.
    let digest = Sha256::digest(str_of(&j, "access_token").as_bytes());
    assert_eq!(c["at_hash"], URL_SAFE_NO_PAD.encode(&digest[..16]));
    // The claims of the granted scopes.
    assert_eq!(c["name"], "Alice Liddell");
    assert_eq!(c["preferred_username"], "alice");
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["groups"], serde_json::json!(["eng", "ops"]));
    // The access token still opens the API; its scope carries openid.
    assert_eq!(
        get_with_token(&s.gw.url("/api/x"), str_of(&j, "access_token"))
            .await
            .status,
        200
    );
    // A refreshed token comes without an ID token (Core 12.2 allows that).
    let r = token(
        &s.gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_of(&j, "refresh_token")),
        ],
        &[("authorization", &basic("rp", SVC_SECRET))],
    )
    .await;
    assert!(assert_tokens(&r).get("id_token").is_none());
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn userinfo_answers_with_the_claims_of_the_tokens_scopes() {
    let s = setup_oidc().await;
    let j = rp_tokens(&s.gw, "openid email", &[]).await;
    assert!(j["id_token"].is_string());
    let r = get_with_token(&s.gw.url("/auth/userinfo"), str_of(&j, "access_token")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"sub": "alice", "email": "alice@example.com", "email_verified": true})
    );
    // A token without openid: the gateway's own answer, as before.
    let plain = login(&s.gw, "alice", ALICE_PW, "read").await;
    let v = get_with_token(&s.gw.url("/auth/userinfo"), str_of(&plain, "access_token"))
        .await
        .json();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["client"], "cli");
    // No token: RFC 6750.
    let r = get(&s.gw.url("/auth/userinfo"), &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
}

#[tokio::test]
async fn a_request_without_openid_is_plain_oauth() {
    let s = setup_oidc().await;
    let j = rp_tokens(&s.gw, "read", &[("nonce", "n"), ("prompt", "none")]).await;
    assert!(j.get("id_token").is_none(), "{j}");
}

#[tokio::test]
async fn prompt_none_is_login_required_by_redirect_without_a_page() {
    let s = setup_oidc().await;
    let mut b = Browser::new();
    let r = b
        .get(&authorize_url(
            &s.gw,
            &rp_params("openid", &[("prompt", "none")]),
        ))
        .await;
    let loc = see_other(&r);
    assert_eq!(loc.base, RP_CB);
    assert_eq!(loc.get("error"), Some("login_required"));
    assert_eq!(loc.get("state"), Some("st-1"));
    assert_eq!(loc.get("iss"), Some(ISSUER));
    assert!(b.cookie.is_none(), "no sign-in was opened");
    // none with anything else is invalid_request.
    let r = Browser::new()
        .get(&authorize_url(
            &s.gw,
            &rp_params("openid", &[("prompt", "none login")]),
        ))
        .await;
    assert_eq!(see_other(&r).get("error"), Some("invalid_request"));
    // prompt=login (and consent) show the sign-in as always.
    start(&s.gw, &rp_params("openid", &[("prompt", "login consent")])).await;
}

#[tokio::test]
async fn bad_oidc_parameters_go_back_on_the_redirect() {
    let s = setup_oidc().await;
    let long_nonce = "n".repeat(513);
    for (extra, error) in [
        (vec![("max_age", "soon")], "invalid_request"),
        (vec![("nonce", long_nonce.as_str())], "invalid_request"),
        (vec![("request", "eyJ.x.y")], "request_not_supported"),
        (
            vec![("request_uri", "https://x/r")],
            "request_uri_not_supported",
        ),
    ] {
        let r = Browser::new()
            .get(&authorize_url(&s.gw, &rp_params("openid", &extra)))
            .await;
        let loc = see_other(&r);
        assert_eq!(loc.get("error"), Some(error), "{extra:?}");
        assert_eq!(loc.get("state"), Some("st-1"));
    }
    // A client that does not list openid may not ask for it.
    let r = Browser::new()
        .get(&authorize_url(
            &s.gw,
            &[
                ("response_type", "code"),
                ("client_id", "web"),
                ("redirect_uri", WEB_CB),
                ("scope", "openid read"),
            ],
        ))
        .await;
    assert_eq!(see_other(&r).get("error"), Some("invalid_scope"));
}

#[tokio::test]
async fn max_age_is_met_and_a_sign_in_older_than_it_is_asked_again() {
    let s = setup_oidc().await;
    // A generous max_age: the code comes, with auth_time.
    let j = rp_tokens(&s.gw, "openid", &[("max_age", "3600")]).await;
    let c = verify(&jwks(&s.gw).await, str_of(&j, "id_token"), "rp").unwrap();
    assert!(c["auth_time"].as_u64().is_some());
    assert!(c.get("nonce").is_none(), "no nonce sent, none echoed");
    // max_age=1 and a consent given later than that: back to the login page.
    let params = rp_params("openid", &[("max_age", "1")]);
    let (mut b, page) = start(&s.gw, &params).await;
    let consent = reach_consent(&s.gw, &mut b, &page, "alice", ALICE_PW).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = decide(&s.gw, &mut b, &consent, "approve").await;
    assert_eq!(
        see_other(&r).base,
        AUTHORIZE,
        "not the client: the login again"
    );
    let page = b.page(&s.gw).await;
    assert!(page.text().contains("Sign in again"), "{}", page.text());
    assert!(page.text().contains("Sign in"));
    // max_age=0 is prompt=login: the sign-in of this request is enough.
    let j = rp_tokens(&s.gw, "openid", &[("max_age", "0")]).await;
    assert!(j["id_token"].is_string());
}

#[tokio::test]
async fn a_public_client_gets_an_id_token_too() {
    let s = setup_oidc().await;
    let (verifier, challenge) = pkce_pair();
    let loc = approved(
        &s.gw,
        &[
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", APP_CB),
            ("scope", "openid profile"),
            ("nonce", "abc"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
        "bob",
        BOB_PW,
    )
    .await;
    let j = assert_tokens(
        &token(
            &s.gw,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "app"),
                ("code", loc.get("code").unwrap()),
                ("redirect_uri", APP_CB),
                ("code_verifier", &verifier),
            ],
            &[],
        )
        .await,
    );
    let c = verify(&jwks(&s.gw).await, str_of(&j, "id_token"), "app").unwrap();
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["nonce"], "abc");
    assert_eq!(c["preferred_username"], "bob");
    assert!(c.get("name").is_none(), "bob has no name claim: {c}");
}
