//! `private_key_jwt` client authentication (RFC 7523 section 2.2, OpenID
//! Connect Core section 9): the client signs a short-lived JWT with a key only
//! it holds; the gateway has its public keys (`[[clients]] jwks`, a JWKS file
//! read with the config, so a reload re-reads it).
//!
//! The assertion's signature and claims are checked by [`crate::jose::verify`];
//! here the client is found, the audiences named, and the `jti` spent: each
//! assertion is used once, remembered until its `exp` (in Redis when the
//! store is Redis, so a replay to another instance fails too).

use super::OAuthContext;
use crate::error::{GatewayError, OAuthCode};
use crate::jose::verify::{AssertionCheck, check_client_assertion};
use crate::store::{TokenHash, now_secs};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const AUTH_FAILED: GatewayError =
    GatewayError::OAuth(OAuthCode::InvalidClient, "client authentication failed");

/// The audiences an assertion may name: the issuer, and the token endpoint.
fn audiences(ctx: &OAuthContext<'_>) -> [String; 2] {
    let o = &ctx.config.oauth;
    [o.issuer.clone(), format!("{}{}", o.issuer, o.token_path)]
}

/// Authenticates `client_id` by its assertion: a client without registered
/// keys, a bad assertion and a replayed one are all `invalid_client` (the
/// reason goes to the audit line, never the answer's detail beyond a fixed
/// description).
pub async fn authenticate(
    ctx: &OAuthContext<'_>,
    client_id: &str,
    assertion: &str,
) -> Result<std::sync::Arc<crate::config::Client>, GatewayError> {
    let client = ctx.config.clients.get(client_id).ok_or(AUTH_FAILED)?;
    let keys = client.jwks.as_ref().ok_or(AUTH_FAILED)?;
    let auds = audiences(ctx);
    let auds = [auds[0].as_str(), auds[1].as_str()];
    let check = AssertionCheck {
        client_id,
        audiences: &auds,
        now: now_secs(),
    };
    let a = check_client_assertion(assertion, &keys.keys, &check).map_err(|why| {
        ctx.audit(
            "client_auth_failed",
            None,
            Some(client_id),
            None,
            Some(why.0),
        );
        GatewayError::OAuth(OAuthCode::InvalidClient, why.0)
    })?;
    // OIDC Core section 9: the jti must not be reused; remembered until exp
    // (and the skew it was accepted with).
    let key = TokenHash::of(&format!("assertion:{client_id}:{}", a.jti));
    let until = a
        .exp
        .saturating_add(crate::jose::verify::ASSERTION_SKEW_SECS)
        .saturating_add(1);
    let first = ctx
        .store
        .first_use(key, until)
        .await
        .map_err(GatewayError::from)?;
    if !first {
        ctx.audit(
            "client_auth_failed",
            None,
            Some(client_id),
            None,
            Some("replayed_assertion"),
        );
        return Err(GatewayError::OAuth(
            OAuthCode::InvalidClient,
            "the client assertion was used before (jti)",
        ));
    }
    Ok(client.clone())
}
