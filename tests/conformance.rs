//! Regressions for what strict OAuth clients found (issue 12), one test each,
//! over real HTTP: refresh keeps the presented token's scope (RFC 6749 6),
//! loopback IP redirect URIs match on any port (RFC 8252 7.3), introspection's
//! `token_type` is an RFC 6749 type (RFC 7662 2.2), and a user and a client
//! of the same name never share a `sub`.

mod common;
mod oauth_helpers;

use common::*;
use oauth_helpers::*;

/// A native app with loopback redirect URIs (IPv4, IPv6, and a `localhost`
/// name, which gets no port exception), and a user named like the `svc` client.
fn config(up: std::net::SocketAddr) -> String {
    config_text(up)
        + r#"
[[clients]]
id = "native"
grants = ["authorization_code", "refresh_token"]
scopes = ["read"]
redirect_uris = ["http://127.0.0.1:18483/callback", "http://[::1]:18483/callback", "http://localhost:18483/callback"]
"# + &format!(
        "\n[[users]]\nname = \"svc\"\npassword_hash = \"{}\"\nscopes = [\"read\"]\n",
        hash("svc-user-pw")
    )
}

async fn refresh(gw: &Gateway, rt: &str, scope: Option<&str>) -> Reply {
    let mut p = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(s) = scope {
        p.push(("scope", s));
    }
    token(gw, &p, &[]).await
}

#[tokio::test]
async fn a_narrowing_refresh_keeps_the_grants_scope_for_the_next_refresh() {
    let (gw, _up) = setup().await;
    let first = login(&gw, "alice", ALICE_PW, "read write").await;
    // Narrowed for this access token only.
    let narrow = assert_tokens(&refresh(&gw, str_of(&first, "refresh_token"), Some("read")).await);
    assert_eq!(narrow["scope"], "read");
    let rt = str_of(&narrow, "refresh_token");
    let v = introspect_as_svc(&gw, rt).await;
    assert_eq!(
        v["scope"], "read write",
        "the new refresh token's scope is the presented one's: {v}"
    );
    // An omitted scope is the one originally granted...
    let again = assert_tokens(&refresh(&gw, rt, None).await);
    assert_eq!(scopes(str_of(&again, "scope")), ["read", "write"]);
    // ... and all of it may be asked for again.
    let all =
        assert_tokens(&refresh(&gw, str_of(&again, "refresh_token"), Some("read write")).await);
    assert_eq!(scopes(str_of(&all, "scope")), ["read", "write"]);
    // Never more than the grant.
    assert_oauth_error(
        &refresh(&gw, str_of(&all, "refresh_token"), Some("read write admin")).await,
        400,
        "invalid_scope",
    );
}

/// The code flow for `native` with `redirect_uri`, ending in a token request
/// that repeats it.
async fn native_flow(gw: &Gateway, redirect_uri: &str) -> Location {
    let (verifier, challenge) = pkce_pair();
    let loc = approved(
        gw,
        &[
            ("response_type", "code"),
            ("client_id", "native"),
            ("redirect_uri", redirect_uri),
            ("state", "st"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
        "bob",
        BOB_PW,
    )
    .await;
    let r = token(
        gw,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "native"),
            ("code", loc.get("code").unwrap()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", &verifier),
        ],
        &[],
    )
    .await;
    assert_tokens(&r);
    loc
}

#[tokio::test]
async fn loopback_ip_redirect_uris_may_use_any_port() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr)).await;
    for uri in [
        "http://127.0.0.1:51234/callback",
        "http://127.0.0.1/callback",
        "http://[::1]:40001/callback",
        "http://127.0.0.1:18483/callback",
    ] {
        let loc = native_flow(&gw, uri).await;
        assert_eq!(loc.base, uri, "back to the port the app listens on");
        assert_eq!(loc.get("state"), Some("st"));
    }
}

#[tokio::test]
async fn redirect_uris_other_than_loopback_ips_still_match_exactly() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr)).await;
    for uri in [
        // A name: no port exception (RFC 8252 section 8.3).
        "http://localhost:51234/callback",
        // Another path, host, scheme, or authority trick.
        "http://127.0.0.1:51234/callback/x",
        "http://127.0.0.2:18483/callback",
        "https://127.0.0.1:18483/callback",
        "http://127.0.0.1:1@evil.example/callback",
        "http://[::1]:51234/other",
    ] {
        let mut b = Browser::new();
        let r = b
            .get(&authorize_url(
                &gw,
                &[
                    ("response_type", "code"),
                    ("client_id", "native"),
                    ("redirect_uri", uri),
                    ("code_challenge", RFC_CHALLENGE),
                    ("code_challenge_method", "S256"),
                ],
            ))
            .await;
        assert_error_page(
            &r,
            400,
            "The redirect URI is not registered for this application.",
        );
    }
}

#[tokio::test]
async fn introspection_says_bearer_for_access_and_refresh_tokens() {
    let (gw, _up) = setup().await;
    let j = login(&gw, "alice", ALICE_PW, "read").await;
    for t in ["access_token", "refresh_token"] {
        let v = introspect_as_svc(&gw, str_of(&j, t)).await;
        assert_eq!(v["active"], true, "{v}");
        assert_eq!(v["token_type"], "Bearer", "{t}: {v}");
    }
}

#[tokio::test]
async fn a_user_and_a_client_of_the_same_name_have_different_subs() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&config(up.addr)).await;
    let user = login(&gw, "svc", "svc-user-pw", "read").await;
    let client = assert_tokens(
        &token(
            &gw,
            &[("grant_type", "client_credentials"), ("scope", "read")],
            &[("authorization", &basic("svc", SVC_SECRET))],
        )
        .await,
    );
    let of_user = introspect_as_svc(&gw, str_of(&user, "access_token")).await;
    let of_client = introspect_as_svc(&gw, str_of(&client, "access_token")).await;
    assert_eq!(of_user["username"], "svc");
    assert_eq!(of_user["sub"], "svc");
    assert_eq!(of_client["sub"], "client:svc");
    // UserInfo agrees with introspection.
    for (j, sub) in [(&user, "svc"), (&client, "client:svc")] {
        let info = get_with_token(&gw.url("/auth/userinfo"), str_of(j, "access_token"))
            .await
            .json();
        assert_eq!(info["sub"], sub, "{info}");
    }
}
