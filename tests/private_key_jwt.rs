//! `private_key_jwt` client authentication (RFC 7523 section 2.2, OpenID
//! Connect Core section 9) through real HTTP: assertions signed here with the
//! `jsonwebtoken` crate (RS256 from a fixture key, ES256 from a fresh one),
//! against `[[clients]] jwks` files, at the token, revocation and
//! introspection endpoints; every claim rule, replays (also 100 at once), and
//! bad JWKS files refused with file, line and key.

mod common;
mod jose_helpers;
mod oauth_helpers;

use std::path::Path;
use std::sync::Arc;

use http::Method;
use serde_json::{Value, json};

use common::*;
use jose_helpers::*;
use oauth_helpers::*;

const TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_ENDPOINT: &str = "http://127.0.0.1:8080/auth/access_token";

struct Setup {
    gw: Gateway,
    _up: Upstream,
    rsa: Key,
    ec: Key,
    /// Registered for `other-jwt` only.
    other: Key,
    _dir: tempfile::TempDir,
}

/// The standard config plus `svc-jwt` (the RSA fixture key as `rsa-1` and a
/// fresh EC key as `ec-1`; client_credentials and password; may introspect)
/// and `other-jwt` (another EC key).
async fn setup_jwt() -> Setup {
    let up = spawn_upstream().await;
    let (rsa, ec, other) = (Key::rs256(), Key::es256(), Key::es256());
    let dir = tempfile::tempdir().unwrap();
    let svc = dir.path().join("svc.jwks.json");
    let set = json!({"keys": [rsa.jwk_with_kid(RSA_KID), ec.jwk_with_kid("ec-1")]});
    std::fs::write(&svc, set.to_string()).unwrap();
    let oth = dir.path().join("other.jwks.json");
    std::fs::write(&oth, other.jwks("o-1")).unwrap();
    let extra = format!(
        r#"
[[clients]]
id = "svc-jwt"
jwks = "{}"
grants = ["client_credentials", "password", "refresh_token"]
scopes = ["read", "write"]
introspect = true

[[clients]]
id = "other-jwt"
jwks = "{}"
grants = ["client_credentials"]
scopes = ["read"]
"#,
        svc.display(),
        oth.display()
    );
    let gw = spawn_gateway_with(&(config_text(up.addr) + &extra)).await;
    Setup {
        gw,
        _up: up,
        rsa,
        ec,
        other,
        _dir: dir,
    }
}

async fn client_credentials(gw: &Gateway, assertion: &str, extra: &[(&str, &str)]) -> Reply {
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", TYPE),
        ("client_assertion", assertion),
    ];
    pairs.extend_from_slice(extra);
    token(gw, &pairs, &[]).await
}

#[tokio::test]
async fn rs256_and_es256_assertions_authenticate_the_client() {
    let s = setup_jwt().await;
    for (key, kid) in [
        (&s.rsa, Some(RSA_KID)),
        (&s.ec, Some("ec-1")),
        (&s.ec, None),
    ] {
        for aud in [ISSUER, TOKEN_ENDPOINT] {
            let a = key.assertion("svc-jwt", aud, kid);
            let r = client_credentials(&s.gw, &a, &[]).await;
            let j = assert_tokens(&r);
            assert_eq!(scopes(str_of(&j, "scope")), vec!["read", "write"]);
        }
    }
    // aud as a list naming the issuer among others; client_id repeated in the body.
    let a = s.rsa.assertion_with("svc-jwt", ISSUER, Some(RSA_KID), |c| {
        c["aud"] = json!(["https://elsewhere.example", ISSUER]);
    });
    assert_tokens(&client_credentials(&s.gw, &a, &[("client_id", "svc-jwt")]).await);
    // The password grant with a JWT-authenticated (confidential) client.
    let a = s.ec.assertion("svc-jwt", ISSUER, None);
    let r = token(
        &s.gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("client_assertion_type", TYPE),
            ("client_assertion", &a),
        ],
        &[],
    )
    .await;
    assert!(assert_tokens(&r)["refresh_token"].is_string());
}

#[tokio::test]
async fn every_claim_rule_is_enforced() {
    let s = setup_jwt().await;
    let k = &s.rsa;
    let kid = Some(RSA_KID);
    let cases: Vec<(&str, String)> = vec![
        (
            "sub is not the client",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| c["sub"] = json!("alice")),
        ),
        (
            "iss is another client",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| c["iss"] = json!("other-jwt")),
        ),
        (
            "aud elsewhere",
            k.assertion("svc-jwt", "https://other.example/token", kid),
        ),
        (
            "expired",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| c["exp"] = json!(now() - 120)),
        ),
        (
            "exp an hour ahead",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| c["exp"] = json!(now() + 3600)),
        ),
        (
            "no exp",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "no jti",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "not yet valid",
            k.assertion_with("svc-jwt", ISSUER, kid, |c| c["nbf"] = json!(now() + 3600)),
        ),
        ("unknown kid", k.assertion("svc-jwt", ISSUER, Some("nope"))),
        (
            "another client's key",
            s.other.assertion("svc-jwt", ISSUER, None),
        ),
        ("unknown client", k.assertion("nobody", ISSUER, kid)),
        ("a client without keys", k.assertion("svc", ISSUER, kid)),
        ("garbage", "a.b.c".into()),
    ];
    for (what, a) in &cases {
        let r = client_credentials(&s.gw, a, &[]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_oauth_error(&r, 401, "invalid_client");
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: a challenge"
        );
    }
    // A client_id in the body that is not the assertion's issuer.
    let a = s.other.assertion("other-jwt", ISSUER, None);
    let r = client_credentials(&s.gw, &a, &[("client_id", "svc-jwt")]).await;
    assert_oauth_error(&r, 401, "invalid_client");
}

#[tokio::test]
async fn malformed_assertion_requests_are_invalid_request() {
    let s = setup_jwt().await;
    let a = s.ec.assertion("svc-jwt", ISSUER, None);
    // A second authentication method in the same request.
    let r = client_credentials(&s.gw, &a, &[("client_secret", SVC_SECRET)]).await;
    assert_oauth_error(&r, 400, "invalid_request");
    let r = token(
        &s.gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", TYPE),
            ("client_assertion", &a),
        ],
        &[("authorization", &basic("svc", SVC_SECRET))],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // One parameter without the other; another assertion type.
    let r = token(
        &s.gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion", &a),
        ],
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    let r = token(
        &s.gw,
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ),
            ("client_assertion", &a),
        ],
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // The assertion was never checked, so it still works.
    assert_tokens(&client_credentials(&s.gw, &a, &[]).await);
}

#[tokio::test]
async fn an_assertion_is_single_use_even_sent_100_times_at_once() {
    let s = setup_jwt().await;
    let a = s.rsa.assertion("svc-jwt", ISSUER, Some(RSA_KID));
    assert_tokens(&client_credentials(&s.gw, &a, &[]).await);
    let r = client_credentials(&s.gw, &a, &[]).await;
    let j = assert_oauth_error(&r, 401, "invalid_client");
    assert_eq!(
        j["error_description"],
        "the client assertion was used before (jti)"
    );

    let gw = Arc::new(s.gw.url("/auth/access_token"));
    let fresh = Arc::new(s.ec.assertion("svc-jwt", ISSUER, None));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (url, a) = (gw.clone(), fresh.clone());
        tasks.push(tokio::spawn(async move {
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", TYPE),
                ("client_assertion", &a),
            ]);
            request(
                Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                &body,
            )
            .await
            .status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap().as_u16() {
            200 => ok += 1,
            401 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1, "one use of one assertion");
}

async fn post(gw: &Gateway, path: &str, pairs: &[(&str, &str)]) -> Reply {
    request(
        Method::POST,
        &gw.url(path),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(pairs),
    )
    .await
}

/// `token` posted to `path` (introspection or revocation), the client
/// authenticated by `assertion`.
async fn with_assertion(gw: &Gateway, path: &str, token: &str, assertion: &str) -> Reply {
    post(
        gw,
        path,
        &[
            ("token", token),
            ("client_assertion_type", TYPE),
            ("client_assertion", assertion),
        ],
    )
    .await
}

#[tokio::test]
async fn revocation_and_introspection_take_assertions_too() {
    let s = setup_jwt().await;
    let a = s.ec.assertion("svc-jwt", ISSUER, None);
    let j = assert_tokens(&client_credentials(&s.gw, &a, &[]).await);
    let at = str_of(&j, "access_token");
    let a = s.rsa.assertion("svc-jwt", TOKEN_ENDPOINT, Some(RSA_KID));
    let r = with_assertion(&s.gw, "/auth/introspect", at, &a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], "svc-jwt");
    // A replayed assertion is refused at introspection as well.
    let r = with_assertion(&s.gw, "/auth/introspect", at, &a).await;
    assert_oauth_error(&r, 401, "invalid_client");
    // Revocation, then introspection says inactive.
    let a = s.ec.assertion("svc-jwt", ISSUER, Some("ec-1"));
    let r = with_assertion(&s.gw, "/auth/revoke", at, &a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = s.ec.assertion("svc-jwt", ISSUER, None);
    let r = with_assertion(&s.gw, "/auth/introspect", at, &a).await;
    assert_eq!(r.json(), json!({"active": false}));
    // other-jwt has no introspect permission: 403, after authenticating.
    let a = s.other.assertion("other-jwt", ISSUER, None);
    let r = with_assertion(&s.gw, "/auth/introspect", at, &a).await;
    assert_eq!(r.status, 403, "{}", r.text());
}

/// The config error for a client whose `jwks` file holds `text`.
fn jwks_config_error(text: &str) -> whosthat::ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jwks.json");
    std::fs::write(&file, text).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[clients]]\nid = \"a\"\ngrants = [\"refresh_token\"]\n\n[[clients]]\nid = \"b\"\njwks = \"{}\"\ngrants = [\"client_credentials\"]\n",
        file.display()
    );
    whosthat::Config::parse(&config, Path::new("gw.toml")).unwrap_err()
}

#[test]
fn bad_jwks_files_are_refused_with_file_line_and_key() {
    let key = Key::es256();
    let mut private = key.jwk.clone();
    private["d"] = json!("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw");
    for (text, says) in [
        ("{not json", "is not JSON"),
        ("{}", "no \"keys\" array"),
        (r#"{"keys": []}"#, "holds no key"),
        (
            &json!({"keys": [private]}).to_string() as &str,
            "keys[0]: the JWK holds private or symmetric key material",
        ),
        (
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
            "keys[0]: the JWK holds private or symmetric key material",
        ),
        (
            &json!({"keys": [key.jwk_with_kid("a"), {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]})
                .to_string() as &str,
            "keys[1]: only EC keys on the P-256 curve",
        ),
    ] {
        let e = jwks_config_error(text);
        assert_eq!(e.key.as_deref(), Some("clients[1].jwks"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains(says), "{says:?} not in {e}");
        assert!(e.message.contains("bad.jwks.json"), "{e}");
        assert!(e.to_string().starts_with("gw.toml:10: key `clients[1].jwks`"), "{e}");
    }
    // A missing file.
    let e = whosthat::Config::parse(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nid = \"b\"\njwks = \"/nonexistent/x.json\"\ngrants = [\"client_credentials\"]\n",
        Path::new("gw.toml"),
    )
    .unwrap_err();
    assert!(e.message.contains("cannot read the JWKS file"), "{e}");
    // A JWKS client is confidential: client_credentials and introspect are allowed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.jwks.json");
    std::fs::write(&file, key.jwks("k")).unwrap();
    let c = whosthat::Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nid = \"b\"\njwks = \"{}\"\ngrants = [\"client_credentials\"]\nintrospect = true\n",
            file.display()
        ),
        Path::new("gw.toml"),
    )
    .unwrap();
    assert!(!c.clients["b"].is_public());
}
