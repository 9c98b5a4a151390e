//! The gateway against a real third-party OAuth 2.0 client: the `oauth2` crate
//! (with its reqwest transport, plain HTTP) runs every grant the gateway offers,
//! parses the answers itself, and the tokens it gets open the guarded API.

mod common;
use common::*;

use http::Method;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenType};
use oauth2::url::Url;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    RedirectUrl, RefreshToken, RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername,
    Scope, TokenResponse, TokenUrl, reqwest,
};

const AUTHORIZE_PATH: &str = "/auth/authorize";
const TOKEN_PATH: &str = "/auth/access_token";
const SPA_REDIRECT: &str = "http://127.0.0.1:8765/callback";
/// The issuer of the test config, sent back as `iss` (RFC 9207).
const ISSUER: &str = "http://127.0.0.1:8080";

fn http_client() -> reqwest::Client {
    library_http_client()
}

fn token_url(gw: &Gateway) -> TokenUrl {
    TokenUrl::new(gw.url(TOKEN_PATH)).unwrap()
}

/// The upstream's view of `GET /api/whoami` with `token`: asserts it got through.
async fn api_as(gw: &Gateway, token: &str) -> Seen {
    get_with_token(&gw.url("/api/whoami"), token).await.seen()
}

fn scopes_of(t: &impl TokenResponse) -> Vec<String> {
    t.scopes()
        .map(|s| s.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn password_grant_public_client() {
    let (gw, _up) = setup().await;
    // `cli` is public: no secret, its id in the body.
    let client = BasicClient::new(ClientId::new("cli".into()))
        .set_token_uri(token_url(&gw))
        .set_auth_type(AuthType::RequestBody);
    let token = client
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new(ALICE_PW.into()),
        )
        .add_scope(Scope::new("read".into()))
        .add_scope(Scope::new("write".into()))
        .request_async(&http_client())
        .await
        .expect("password grant");

    assert_eq!(*token.token_type(), BasicTokenType::Bearer);
    assert_eq!(scopes_of(&token), ["read", "write"]);
    assert!(token.expires_in().is_some_and(|d| d.as_secs() > 0));
    assert!(token.refresh_token().is_some(), "cli may refresh");

    let seen = api_as(&gw, token.access_token().secret()).await;
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-client"), ["cli"]);
    assert_eq!(seen.uri(), "/whoami");
    assert_eq!(
        seen.header("authorization"),
        None,
        "the bearer stays at the gateway"
    );
}

#[tokio::test]
async fn password_grant_wrong_password_is_invalid_grant() {
    let (gw, _up) = setup().await;
    let client = BasicClient::new(ClientId::new("cli".into()))
        .set_token_uri(token_url(&gw))
        .set_auth_type(AuthType::RequestBody);
    let err = client
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new("not-alice-pw".into()),
        )
        .request_async(&http_client())
        .await
        .expect_err("a wrong password gets no token");
    match err {
        RequestTokenError::ServerResponse(e) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidGrant, "{e:?}")
        }
        other => panic!("expected an RFC 6749 error response, got {other:?}"),
    }
}

#[tokio::test]
async fn client_credentials_with_basic_auth() {
    let (gw, _up) = setup().await;
    let client = BasicClient::new(ClientId::new("svc".into()))
        .set_client_secret(ClientSecret::new(SVC_SECRET.into()))
        .set_token_uri(token_url(&gw))
        .set_auth_type(AuthType::BasicAuth);
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http_client())
        .await
        .expect("client_credentials grant");

    assert_eq!(*token.token_type(), BasicTokenType::Bearer);
    assert_eq!(scopes_of(&token), ["read"]);
    // RFC 6749 section 4.4.3: no refresh token for client credentials.
    assert!(token.refresh_token().is_none());

    let seen = api_as(&gw, token.access_token().secret()).await;
    assert_eq!(seen.header_all("x-auth-client"), ["svc"]);
    assert_eq!(
        seen.header("x-auth-user"),
        None,
        "no user behind this token"
    );
}

#[tokio::test]
async fn client_credentials_wrong_secret_is_invalid_client() {
    let (gw, _up) = setup().await;
    let client = BasicClient::new(ClientId::new("svc".into()))
        .set_client_secret(ClientSecret::new("not-the-secret".into()))
        .set_token_uri(token_url(&gw))
        .set_auth_type(AuthType::BasicAuth);
    let err = client
        .exchange_client_credentials()
        .request_async(&http_client())
        .await
        .expect_err("a wrong secret gets no token");
    match err {
        RequestTokenError::ServerResponse(e) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidClient, "{e:?}")
        }
        other => panic!("expected an RFC 6749 error response, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_fails() {
    let (gw, _up) = setup().await;
    let http = http_client();
    let client = BasicClient::new(ClientId::new("cli".into()))
        .set_token_uri(token_url(&gw))
        .set_auth_type(AuthType::RequestBody);
    let first = client
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new(ALICE_PW.into()),
        )
        .request_async(&http)
        .await
        .expect("password grant");
    let old_refresh = first.refresh_token().expect("a refresh token").clone();

    let second = client
        .exchange_refresh_token(&old_refresh)
        .request_async(&http)
        .await
        .expect("refresh grant");
    let new_refresh = second.refresh_token().expect("a new refresh token");
    assert_ne!(
        second.access_token().secret(),
        first.access_token().secret()
    );
    assert_ne!(new_refresh.secret(), old_refresh.secret(), "rotated");
    assert_eq!(scopes_of(&second), scopes_of(&first));
    let seen = api_as(&gw, second.access_token().secret()).await;
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);

    // The spent refresh token again: refused, as an error the crate parses.
    let err = client
        .exchange_refresh_token(&old_refresh)
        .request_async(&http)
        .await
        .expect_err("a spent refresh token is refused");
    match &err {
        RequestTokenError::ServerResponse(e) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidGrant, "{e:?}");
            assert!(e.error_description().is_some());
        }
        other => panic!("expected an RFC 6749 error response, got {other:?}"),
    }

    // The replay revoked the grant (RFC 9700 section 4.14.2): the tokens issued by
    // the refresh are dead too.
    let r = get_with_token(&gw.url("/api/whoami"), second.access_token().secret()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let err = client
        .exchange_refresh_token(&RefreshToken::new(new_refresh.secret().clone()))
        .request_async(&http)
        .await
        .expect_err("the rotated refresh token was revoked with its grant");
    assert!(
        matches!(&err, RequestTokenError::ServerResponse(e) if *e.error() == BasicErrorResponseType::InvalidGrant),
        "{err:?}"
    );
}

// ------------------------------------------------- authorization code + PKCE

/// The `whosthat_authz` cookie the gateway set, as a `Cookie` header value.
fn authz_cookie(r: &Reply) -> String {
    let set = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("whosthat_authz="))
        .unwrap_or_else(|| panic!("no whosthat_authz cookie: {:?}", r.headers));
    set.split(';').next().unwrap().to_string()
}

/// The hidden `csrf` field of a login or consent page.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf field in {html}"))
        + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_string()
}

fn location(r: &Reply) -> &str {
    assert_eq!(r.status, 303, "{}", r.text());
    r.header("location").expect("a Location header")
}

async fn post_form(url: &str, cookie: &str, pairs: &[(&str, &str)]) -> Reply {
    let body = serde_urlencoded::to_string(pairs).unwrap();
    request(
        Method::POST,
        url,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", cookie),
        ],
        &body,
    )
    .await
}

/// A user agent for one sign-in: opens `authorize_url`, signs alice in, approves,
/// and returns the redirect the gateway ended with.
async fn sign_in_and_approve(gw: &Gateway, authorize_url: &str) -> Url {
    let login = get(authorize_url, &[]).await;
    assert_eq!(login.status, 200, "{}", login.text());
    assert!(login.text().contains(r#"id="login""#), "the login page");
    let cookie = authz_cookie(&login);

    let form_url = gw.url(AUTHORIZE_PATH);
    let r = post_form(
        &form_url,
        &cookie,
        &[
            ("csrf", &csrf_of(&login.text())),
            ("action", "login"),
            ("username", "alice"),
            ("password", ALICE_PW),
        ],
    )
    .await;
    assert_eq!(location(&r), AUTHORIZE_PATH);
    // The sign-in travels in the cookie: the login hands back its next step.
    let cookie = authz_cookie(&r);

    let consent = get(&form_url, &[("cookie", &cookie)]).await;
    assert_eq!(consent.status, 200, "{}", consent.text());
    let html = consent.text();
    assert!(html.contains(r#"id="approve""#), "the consent page: {html}");
    assert!(html.contains("alice"), "{html}");

    let r = post_form(
        &form_url,
        &cookie,
        &[("csrf", &csrf_of(&html)), ("action", "approve")],
    )
    .await;
    Url::parse(location(&r)).expect("an absolute redirect")
}

#[tokio::test]
async fn authorization_code_with_pkce() {
    let (gw, _up) = setup().await;
    let http = http_client();
    let client = BasicClient::new(ClientId::new("spa".into()))
        .set_auth_uri(AuthUrl::new(gw.url(AUTHORIZE_PATH)).unwrap())
        .set_token_uri(token_url(&gw))
        .set_redirect_uri(RedirectUrl::new(SPA_REDIRECT.into()).unwrap())
        .set_auth_type(AuthType::RequestBody);

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, csrf_state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .add_scope(Scope::new("write".into()))
        .set_pkce_challenge(challenge)
        .url();

    let back = sign_in_and_approve(&gw, authorize_url.as_str()).await;
    let mut without_query = back.clone();
    without_query.set_query(None);
    assert_eq!(without_query.as_str(), SPA_REDIRECT, "{back}");
    let param = |k: &str| {
        back.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("error"), None, "{back}");
    assert_eq!(
        param("state").as_deref(),
        Some(csrf_state.secret().as_str()),
        "state comes back unchanged"
    );
    assert_eq!(param("iss").as_deref(), Some(ISSUER));
    let code = param("code").expect("a code");

    let token = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    assert_eq!(*token.token_type(), BasicTokenType::Bearer);
    assert_eq!(scopes_of(&token), ["read", "write"]);
    assert!(token.refresh_token().is_some(), "spa may refresh");

    let seen = api_as(&gw, token.access_token().secret()).await;
    assert_eq!(seen.header_all("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-client"), ["spa"]);

    // The code is single-use; the crate sees invalid_grant.
    let (_, other_verifier) = PkceCodeChallenge::new_random_sha256();
    let err = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(other_verifier)
        .request_async(&http)
        .await
        .expect_err("a code works once");
    assert!(
        matches!(&err, RequestTokenError::ServerResponse(e) if *e.error() == BasicErrorResponseType::InvalidGrant),
        "{err:?}"
    );
}

#[tokio::test]
async fn authorization_code_with_a_wrong_verifier_is_refused() {
    let (gw, _up) = setup().await;
    let client = BasicClient::new(ClientId::new("spa".into()))
        .set_auth_uri(AuthUrl::new(gw.url(AUTHORIZE_PATH)).unwrap())
        .set_token_uri(token_url(&gw))
        .set_redirect_uri(RedirectUrl::new(SPA_REDIRECT.into()).unwrap())
        .set_auth_type(AuthType::RequestBody);
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .url();
    let back = sign_in_and_approve(&gw, authorize_url.as_str()).await;
    let code = back
        .query_pairs()
        .find(|(n, _)| n == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");

    // Someone who intercepted the code, without the verifier.
    let (_, wrong) = PkceCodeChallenge::new_random_sha256();
    let err = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(wrong)
        .request_async(&http_client())
        .await
        .expect_err("PKCE binds the code to its verifier");
    assert!(
        matches!(&err, RequestTokenError::ServerResponse(e) if *e.error() == BasicErrorResponseType::InvalidGrant),
        "{err:?}"
    );
}
