//! The gateway as the OpenID Provider of a real relying-party library: the
//! `openidconnect` crate discovers it from its issuer URL, sends the user to
//! the authorization endpoint (driven here through the login and consent
//! pages), redeems the code, verifies the ID token with the JWKS it fetched
//! (signature, issuer, audience, nonce, expiry, at_hash) and calls UserInfo.

mod common;
mod identity_helpers;
mod oauth_helpers;

use common::*;
use identity_helpers::*;
use oauth_helpers::*;

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};

async fn provider() -> Signed {
    // ES256 first (assertions), RS256 for ID tokens: what clients expect.
    spawn_signed(&[Alg::Es256, Alg::Rs256], true).await
}

/// The library's client for `id` (with `secret`: confidential), from discovery.
async fn rp_client(
    p: &Signed,
    id: &str,
    secret: Option<&str>,
    redirect: &str,
) -> (
    openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    IssuerUrl,
) {
    let issuer = IssuerUrl::new(format!("http://{}", p.gw.addr)).unwrap();
    let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &library_http_client())
        .await
        .expect("discovery");
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(id.into()),
        secret.map(|s| ClientSecret::new(s.into())),
    )
    .set_redirect_uri(RedirectUrl::new(redirect.into()).unwrap());
    (client, issuer)
}

/// The user at the authorization URL: the login page, alice's password, the
/// consent page, approve. The redirect's `code` and `state`.
async fn sign_in(gw: &Gateway, auth_url: &str, user: &str, pw: &str) -> (String, String) {
    let mut b = Browser::new();
    let page = b.get(auth_url).await;
    assert_eq!(page.status, 200, "the login page: {}", page.text());
    let consent = reach_consent(gw, &mut b, &page, user, pw).await;
    let loc = see_other(&decide(gw, &mut b, &consent, "approve").await);
    (
        loc.get("code").expect("a code").to_string(),
        loc.get("state").expect("the state").to_string(),
    )
}

#[tokio::test]
async fn a_confidential_relying_party_signs_alice_in() {
    let p = provider().await;
    let http = library_http_client();
    let (client, issuer) = rp_client(&p, "rp", Some(SVC_SECRET), RP_CB).await;

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    let (code, state) = sign_in(&p.gw, url.as_str(), "alice", ALICE_PW).await;
    assert_eq!(&state, csrf.secret());

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .expect("a token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the code exchange");
    let id_token = tokens.id_token().expect("an ID token");
    let verifier = client.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &nonce)
        .expect("the ID token verifies");
    assert_eq!(claims.subject().as_str(), "alice");
    assert_eq!(claims.issuer(), &issuer);
    assert_eq!(
        claims.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(claims.email_verified(), Some(true));
    assert_eq!(
        claims.preferred_username().map(|u| u.as_str()),
        Some("alice")
    );
    assert!(claims.auth_time().is_some());
    let expected = claims.access_token_hash().expect("at_hash");
    let actual = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(&actual, expected);
    // The wrong nonce is refused by the library.
    assert!(
        id_token
            .claims(&verifier, &Nonce::new("another".into()))
            .is_err()
    );

    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().to_owned(), None)
        .expect("a UserInfo endpoint")
        .request_async(&http)
        .await
        .expect("UserInfo");
    assert_eq!(info.subject().as_str(), "alice");
    assert_eq!(info.email().map(|e| e.as_str()), Some("alice@example.com"));
    let name = info.name().and_then(|n| n.get(None)).map(|n| n.as_str());
    assert_eq!(name, Some("Alice Liddell"));
}

#[tokio::test]
async fn a_public_relying_party_with_pkce() {
    let p = provider().await;
    let http = library_http_client();
    let (client, _) = rp_client(&p, "app", None, APP_CB).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("read".into()))
        .set_pkce_challenge(challenge)
        .url();
    let (code, _) = sign_in(&p.gw, url.as_str(), "bob", BOB_PW).await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the code exchange");
    let claims = tokens
        .id_token()
        .expect("an ID token")
        .claims(&client.id_token_verifier(), &nonce)
        .expect("the ID token verifies");
    assert_eq!(claims.subject().as_str(), "bob");
    // The access token opens the API as any other.
    let r = get_with_token(&p.gw.url("/api/x"), tokens.access_token().secret()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().header("x-auth-user").as_deref(), Some("bob"));
}
