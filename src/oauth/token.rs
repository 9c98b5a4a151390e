//! The token endpoint (RFC 6749 sections 3.2, 4.1.3, 4.3, 4.4, 5, 6; RFC 8628
//! section 3.4; RFC 9449 section 5): grant rules as plain code over the
//! [`TokenStore`](crate::store::TokenStore) trait and the config, token
//! issuance, and the token response.

use std::sync::Arc;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use serde::Serialize;

use super::client_auth::{self, AuthenticatedClient};
use super::context::{OAuthContext, check_user_password};
use super::form::{Params, read_form};
use super::{bearer, device, dpop, oidc, pkce};
use crate::clock::ttl_secs;
use crate::config::{Config, GrantType};
use crate::error::{Body, GatewayError, OAuthCode, json_no_store};
use crate::scope::ScopeSet;
use crate::store::{Grant, Jkt, Redeem, TokenHash, TokenRecord, new_token, now_secs, random_u64};

/// A successful token response (section 5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
    /// OpenID Connect: for a code granted with the `openid` scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Who the tokens speak for (for the audit line; not sent).
    #[serde(skip)]
    pub grant: Arc<Grant>,
}

impl TokenResponse {
    fn into_response(self) -> Response<Body> {
        let body = serde_json::to_vec(&self).expect("a token response serialises");
        json_no_store(body)
    }
}

/// The token endpoint (RFC 6749 section 3.2).
pub async fn token_endpoint(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (parts, params) = read_form(req, false).await?;
    let head = bearer::RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        scheme: ctx.scheme,
    };
    let proof = dpop::token_request_proof(ctx, &head).await;
    let proof = match proof {
        Ok(p) => p,
        Err(e) => {
            ctx.audit("token_refused", None, None, None, Some(e.reason()));
            return Err(e);
        }
    };
    issue(
        ctx,
        &parts.headers,
        &params,
        proof.as_ref().map(|p| p.jkt.as_str()),
    )
    .await
    .map(TokenResponse::into_response)
}

/// Runs a token request: client authentication, then the grant. `jkt`: the
/// thumbprint of the key of the request's valid DPoP proof, if it had one.
pub async fn issue(
    ctx: &OAuthContext<'_>,
    headers: &HeaderMap,
    params: &Params,
    jkt: Option<&str>,
) -> Result<TokenResponse, GatewayError> {
    let result = issue_inner(ctx, headers, params, jkt).await;
    // Only a grant type we know is logged as such: the parameter is the caller's.
    let grant = params
        .get("grant_type")
        .map(|g| GrantType::from_request(g).map_or("unsupported", GrantType::as_str));
    match &result {
        Ok(r) => {
            let event = if grant == Some("refresh_token") {
                "token_refreshed"
            } else {
                "token_issued"
            };
            ctx.audit(
                event,
                r.grant.user.as_deref(),
                Some(&r.grant.client),
                grant,
                None,
            );
        }
        Err(e) => {
            let client = match client_auth::extract(headers, params) {
                Ok(client_auth::ClientCredentials::Basic { id, .. })
                | Ok(client_auth::ClientCredentials::Body { id, .. })
                | Ok(client_auth::ClientCredentials::Assertion { id, .. }) => Some(id),
                _ => ctx.config.oauth.default_client.clone(),
            };
            // The name a password grant tried: who is being guessed at.
            let user = params.get("username").filter(|_| grant == Some("password"));
            ctx.audit(
                "token_refused",
                user,
                client.as_deref(),
                grant,
                Some(e.reason()),
            );
        }
    }
    result
}

async fn issue_inner(
    ctx: &OAuthContext<'_>,
    headers: &HeaderMap,
    params: &Params,
    jkt: Option<&str>,
) -> Result<TokenResponse, GatewayError> {
    let grant_type = params.require("grant_type", "grant_type is missing")?;
    let creds = client_auth::extract(headers, params)?;
    let grant = GrantType::from_request(grant_type).ok_or(GatewayError::OAuth(
        OAuthCode::UnsupportedGrantType,
        "this grant_type is not supported",
    ))?;
    let client = client_auth::authenticate(ctx, creds).await?;
    if !client.client.allows(grant) {
        return Err(GatewayError::OAuth(
            OAuthCode::UnauthorizedClient,
            "this client may not use this grant_type",
        ));
    }
    if client.client.require_dpop && jkt.is_none() {
        return Err(GatewayError::OAuth(
            OAuthCode::InvalidDpopProof,
            "this client must send a DPoP proof",
        ));
    }
    // RFC 9449 section 5: access tokens bound to the proof's key; refresh
    // tokens too, for a public client (a confidential one authenticates anyway).
    let jkt: Option<Jkt> = jkt.map(|j| Arc::new(j.to_owned()));
    let binding = Binding {
        refresh: jkt.clone().filter(|_| !client.confidential),
        access: jkt,
    };
    let requested = match params.get("scope") {
        Some(s) => Some(ScopeSet::parse(s).ok_or(GatewayError::OAuth(
            OAuthCode::InvalidScope,
            "the scope parameter is malformed",
        ))?),
        None => None,
    };
    let response = match grant {
        GrantType::Password => password_grant(ctx, &client, params, requested, binding).await,
        GrantType::ClientCredentials => {
            client_credentials_grant(ctx, &client, requested, binding).await
        }
        GrantType::RefreshToken => refresh_grant(ctx, &client, params, requested, binding).await,
        GrantType::AuthorizationCode => code_grant(ctx, &client, params, binding).await,
        GrantType::DeviceCode => device::device_grant(ctx, &client, params, binding).await,
    };
    let response = response?;
    ctx.metrics.token_issued(grant);
    Ok(response)
}

/// Whether the user and client behind a grant are still in the config: one
/// removed from the file (and reloaded) loses its live tokens at once.
pub fn grant_still_allowed(config: &Config, grant: &Grant) -> bool {
    config.clients.contains_key(grant.client.as_ref())
        && grant
            .user
            .as_deref()
            .is_none_or(|u| config.users.contains_key(u))
}

/// `requested` (absent: all of `allowed`), refused if it asks for more.
pub(crate) fn grant_scope(
    requested: Option<ScopeSet>,
    allowed: &ScopeSet,
) -> Result<ScopeSet, GatewayError> {
    match requested {
        None => Ok(allowed.clone()),
        Some(r) if r.is_subset_of(allowed) => Ok(r),
        Some(_) => Err(GatewayError::OAuth(
            OAuthCode::InvalidScope,
            "the requested scope exceeds what may be granted",
        )),
    }
}

async fn password_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    params: &Params,
    requested: Option<ScopeSet>,
    binding: Binding,
) -> Result<TokenResponse, GatewayError> {
    let username = params.require("username", "username is missing")?;
    let password = params.require("password", "password is missing")?;
    let user = check_user_password(ctx, username, password)
        .await?
        .ok_or(GatewayError::OAuth(
            OAuthCode::InvalidGrant,
            "invalid username or password",
        ))?;
    let allowed = oidc::grantable(ctx.config, user, &client.client);
    let scope = grant_scope(requested, &allowed)?;
    let grant = ctx
        .grants
        .intern(Some(user.name.clone()), client.client.id.clone(), scope);
    let refresh = client
        .client
        .allows(GrantType::RefreshToken)
        .then(|| grant.clone());
    issue_tokens(ctx, grant, random_u64(), refresh, binding).await
}

async fn client_credentials_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    requested: Option<ScopeSet>,
    binding: Binding,
) -> Result<TokenResponse, GatewayError> {
    if !client.confidential {
        return Err(GatewayError::OAuth(
            OAuthCode::UnauthorizedClient,
            "client_credentials is for confidential clients only",
        ));
    }
    let scope = grant_scope(requested, &client.client.scopes)?;
    let grant = ctx.grants.intern(None, client.client.id.clone(), scope);
    // Section 4.4.3: a refresh token SHOULD NOT be included.
    issue_tokens(ctx, grant, random_u64(), None, binding).await
}

/// Revokes a grant family for as long as any of its tokens could live.
pub async fn revoke_family(ctx: &OAuthContext<'_>, family: u64) -> Result<(), GatewayError> {
    let o = &ctx.config.oauth;
    let until = now_secs()
        .saturating_add(ttl_secs(o.refresh_token_ttl.max(o.access_token_ttl)))
        .saturating_add(1);
    Ok(ctx.store.revoke_family(family, until).await?)
}

async fn refresh_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    params: &Params,
    requested: Option<ScopeSet>,
    binding: Binding,
) -> Result<TokenResponse, GatewayError> {
    let presented = params.require("refresh_token", "refresh_token is missing")?;
    let key = TokenHash::of(presented);
    const BAD: GatewayError = GatewayError::OAuth(
        OAuthCode::InvalidGrant,
        "the refresh token is invalid, expired, revoked or was issued to another client",
    );
    let id = &client.client.id;
    let rec = redeemed(ctx, ctx.store.get_refresh(key).await, BAD, id).await?;
    // Checked before the token is spent, so a wrong request does not burn it.
    if rec.grant.client != client.client.id {
        return Err(BAD);
    }
    if !grant_still_allowed(ctx.config, &rec.grant) {
        return Err(BAD);
    }
    // RFC 9449 section 5: a bound refresh token needs a proof by its key.
    if let Some(bound) = &rec.cnf {
        match binding.access.as_deref() {
            None => {
                return Err(GatewayError::OAuth(
                    OAuthCode::InvalidDpopProof,
                    "this refresh token is DPoP-bound: a DPoP proof is required",
                ));
            }
            Some(jkt) if jkt != bound.as_ref() => {
                return Err(GatewayError::OAuth(
                    OAuthCode::InvalidGrant,
                    "this refresh token is bound to another DPoP key",
                ));
            }
            Some(_) => {}
        }
    }
    let scope = grant_scope(requested, &rec.grant.scope)?;
    // Of racing requests, only the one that takes the token goes on; the others
    // are replays.
    let rec = redeemed(ctx, ctx.store.take_refresh(key).await, BAD, id).await?;
    // A narrower scope is for this access token only: the new refresh token's
    // scope MUST be identical to the presented one's (section 6), so a later
    // refresh may ask for all of it again.
    let access = if scope == rec.grant.scope {
        rec.grant.clone()
    } else {
        ctx.grants
            .intern(rec.grant.user.clone(), rec.grant.client.clone(), scope)
    };
    issue_tokens(ctx, access, rec.family, Some(rec.grant), binding).await
}

/// The record of a single-use credential (refresh token, code), or `bad`. One
/// presented again after its use is a replay: its whole grant is revoked first
/// (RFC 9700 section 4.14.2, RFC 6749 section 4.1.2).
async fn redeemed<T>(
    ctx: &OAuthContext<'_>,
    looked_up: Result<Redeem<T>, crate::store::StoreError>,
    bad: GatewayError,
    client: &str,
) -> Result<T, GatewayError> {
    match looked_up? {
        Redeem::Fresh(rec) => Ok(rec),
        Redeem::Unknown => Err(bad),
        // Refused as unknown, once the family's revocation is confirmed again
        // (the replay that revoked it may have got a 503).
        Redeem::Revoked { family } => {
            revoke_family(ctx, family).await?;
            Err(bad)
        }
        Redeem::Spent { family } => {
            revoke_family(ctx, family).await?;
            ctx.audit(
                "token_revoked",
                None,
                Some(client),
                None,
                Some("replayed_credential"),
            );
            tracing::warn!(
                client,
                "a used refresh token or code was presented again; its grant is revoked"
            );
            Err(bad)
        }
    }
}

/// The authorization code grant (section 4.1.3) with PKCE (RFC 7636 section 4.6).
async fn code_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    params: &Params,
    binding: Binding,
) -> Result<TokenResponse, GatewayError> {
    let code = params.require("code", "code is missing")?;
    const BAD: GatewayError = GatewayError::OAuth(
        OAuthCode::InvalidGrant,
        "the code is invalid, expired, used, or does not match this request",
    );
    let taken = ctx.store.take_code(TokenHash::of(code)).await;
    let rec = redeemed(ctx, taken, BAD, &client.client.id).await?;
    if rec.grant.client != client.client.id {
        return Err(BAD);
    }
    if !grant_still_allowed(ctx.config, &rec.grant) {
        return Err(BAD);
    }
    match params.get("redirect_uri") {
        Some(uri) if uri != rec.redirect_uri => return Err(BAD),
        None if rec.redirect_uri_given => return Err(BAD),
        _ => {}
    }
    match (&rec.code_challenge, params.get("code_verifier")) {
        (Some(challenge), Some(verifier)) if pkce::verify_s256(verifier, challenge) => {}
        (None, None) => {}
        // A wrong or missing verifier, or one for a code issued without a
        // challenge (a downgrade): refused.
        _ => return Err(BAD),
    }
    let refresh = client
        .client
        .allows(GrantType::RefreshToken)
        .then(|| rec.grant.clone());
    let mut resp = issue_tokens(ctx, rec.grant, rec.family, refresh, binding).await?;
    if let Some(o) = &rec.oidc {
        resp.id_token = oidc::id_token(ctx.config, &resp.grant, o, &resp.access_token);
    }
    Ok(resp)
}

/// The DPoP key thumbprints new tokens are bound to (`None`: bearer).
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub access: Option<Jkt>,
    pub refresh: Option<Jkt>,
}

/// An access token for `grant` and, given its grant (the same, or wider after
/// a narrowing refresh), a refresh token; both bound as `binding` says.
pub(crate) async fn issue_tokens(
    ctx: &OAuthContext<'_>,
    grant: Arc<Grant>,
    family: u64,
    refresh_grant: Option<Arc<Grant>>,
    binding: Binding,
) -> Result<TokenResponse, GatewayError> {
    let now = now_secs();
    let access_ttl = ttl_secs(ctx.config.oauth.access_token_ttl);
    let access = new_token();
    let refresh = refresh_grant.as_ref().map(|_| new_token());
    let scope = grant.scope.to_string();
    if let (Some(refresh), Some(refresh_grant)) = (&refresh, refresh_grant) {
        let rec = TokenRecord {
            grant: refresh_grant,
            family,
            issued_at: now,
            expires_at: now.saturating_add(ttl_secs(ctx.config.oauth.refresh_token_ttl)),
            cnf: binding.refresh.clone(),
        };
        ctx.store.put_refresh(TokenHash::of(refresh), rec).await?;
    }
    let rec = TokenRecord {
        grant: grant.clone(),
        family,
        issued_at: now,
        expires_at: now.saturating_add(access_ttl),
        cnf: binding.access.clone(),
    };
    ctx.store.put_access(TokenHash::of(&access), rec).await?;
    Ok(TokenResponse {
        access_token: access,
        token_type: if binding.access.is_some() {
            "DPoP"
        } else {
            "Bearer"
        },
        expires_in: access_ttl,
        refresh_token: refresh,
        scope,
        id_token: None,
        grant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules() {
        let allowed = ScopeSet::parse("read write").unwrap();
        assert_eq!(grant_scope(None, &allowed).unwrap(), allowed);
        let r = ScopeSet::parse("read").unwrap();
        assert_eq!(grant_scope(Some(r.clone()), &allowed).unwrap(), r);
        assert!(grant_scope(Some(ScopeSet::parse("admin").unwrap()), &allowed).is_err());
    }
}
