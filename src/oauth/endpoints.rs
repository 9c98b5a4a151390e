//! Revocation (RFC 7009), introspection (RFC 7662), userinfo and server metadata
//! (RFC 8414).

use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::json;

use super::bearer::require_token;
use super::client_auth::{self, AuthenticatedClient};
use super::device::DEVICE_AUTHORIZATION_PATH;
use super::{OAuthContext, Params, grant_still_allowed, read_form, revoke_family};
use crate::config::{Config, DEVICE_CODE_GRANT};
use crate::endpoint::{AUTHORIZE_PATH, INTROSPECT_PATH, REVOKE_PATH, USERINFO_PATH};
use crate::error::{self, Body, GatewayError, OAuthCode, full, json_no_store};
use crate::jose::verify::ALG_NAMES;
use crate::store::{Redeem, TokenHash, TokenRecord};

async fn authenticated_form(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<(AuthenticatedClient, Params), GatewayError> {
    let (parts, params) = read_form(req, false).await?;
    let creds = client_auth::extract(&parts.headers, &params)?;
    let client = client_auth::authenticate(ctx, creds).await?;
    params.get("token").ok_or(GatewayError::OAuth(
        OAuthCode::InvalidRequest,
        "token is missing",
    ))?;
    Ok((client, params))
}

/// What a presented token is, if anything live.
enum Found {
    Access(TokenRecord),
    Refresh(TokenRecord),
    /// A refresh token of a family revoked before.
    RevokedFamily(u64),
}

/// Looks the token up as an access token, then as a refresh token (a wrong
/// `token_type_hint` only changes the order; RFC 7009 section 2.1).
async fn find(ctx: &OAuthContext<'_>, params: &Params) -> Result<Option<Found>, GatewayError> {
    let key = TokenHash::of(params.get("token").unwrap_or(""));
    let refresh_first = params.get("token_type_hint") == Some("refresh_token");
    for as_refresh in [refresh_first, !refresh_first] {
        if as_refresh {
            match ctx.store.get_refresh(key).await? {
                Redeem::Fresh(rec) => return Ok(Some(Found::Refresh(rec))),
                Redeem::Revoked { family } => return Ok(Some(Found::RevokedFamily(family))),
                Redeem::Spent { .. } | Redeem::Unknown => {}
            }
        } else if let Some(rec) = ctx.store.get_access(key).await? {
            return Ok(Some(Found::Access(rec)));
        }
    }
    Ok(None)
}

/// `POST /auth/revoke`: the client authenticates as at the token endpoint. An
/// unknown token, or one of another client, is answered 200 and left alone.
/// Revoking a refresh token revokes its whole grant (access tokens included).
///
/// A token revoked before is revoked again, durably: the earlier request may
/// have got a 503 (no replica confirmed it), and its retry must not be told
/// "done" merely because the first attempt's write left nothing live.
pub async fn revoke(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (client, params) = authenticated_form(ctx, req).await?;
    let key = TokenHash::of(params.get("token").unwrap_or(""));
    let revoked = match find(ctx, &params).await? {
        Some(Found::Access(rec)) if rec.grant.client == client.client.id => {
            ctx.store.remove_access(key, rec.expires_at).await?;
            Some((rec.grant, "access_token"))
        }
        Some(Found::Refresh(rec)) if rec.grant.client == client.client.id => {
            revoke_family(ctx, rec.family).await?;
            Some((rec.grant, "refresh_token"))
        }
        // Already revoked: whoever asks, confirming it changes nothing else.
        Some(Found::RevokedFamily(family)) => {
            revoke_family(ctx, family).await?;
            None
        }
        Some(_) => None,
        None => {
            ctx.store.confirm_revoked(key).await?;
            None
        }
    };
    if let Some((grant, what)) = revoked {
        let user = grant.user.as_deref();
        ctx.audit(
            "token_revoked",
            user,
            Some(&client.client.id),
            None,
            Some(what),
        );
    }
    let mut resp = Response::new(full(""));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `POST /auth/introspect`: only a confidential client (one that proved its
/// secret) with `introspect = true` may ask (RFC 7662 section 4: callers are
/// authenticated and specifically authorized). A failed authentication is 401
/// `invalid_client` (section 2.3); an authenticated client not allowed to
/// introspect gets 403, and learns nothing of the token. Anything not live is
/// `{"active": false}` and nothing more.
pub async fn introspect(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (client, params) = authenticated_form(ctx, req).await?;
    if !client.confidential {
        return Err(GatewayError::OAuth(
            OAuthCode::InvalidClient,
            "client authentication failed",
        ));
    }
    if !client.client.introspect {
        return Err(GatewayError::ClientForbidden(
            "this client is not allowed to introspect tokens",
        ));
    }
    let (rec, token_type) = match find(ctx, &params).await? {
        Some(Found::Access(rec)) if grant_still_allowed(ctx.config, &rec.grant) => {
            let kind = if rec.cnf.is_some() { "DPoP" } else { "Bearer" };
            (rec, kind)
        }
        // RFC 7662 section 2.2: the RFC 6749 section 7.1 type the token goes
        // with, for a refresh token too (it yields Bearer or DPoP tokens).
        Some(Found::Refresh(rec)) if grant_still_allowed(ctx.config, &rec.grant) => {
            let kind = if rec.cnf.is_some() { "DPoP" } else { "Bearer" };
            (rec, kind)
        }
        _ => return Ok(json_no_store(json!({ "active": false }).to_string())),
    };
    let g = &rec.grant;
    let mut v = json!({
        "active": true,
        "scope": g.scope.to_string(),
        "client_id": g.client.as_ref(),
        "token_type": token_type,
        "exp": rec.expires_at,
        "iat": rec.issued_at,
        "sub": g.subject(),
        "iss": ctx.config.oauth.issuer,
    });
    if let Some(user) = &g.user {
        v["username"] = json!(user.as_ref());
    }
    // RFC 9449 section 6.2: the key the token is bound to.
    if let Some(jkt) = &rec.cnf {
        v["cnf"] = json!({ "jkt": jkt.as_ref() });
    }
    Ok(json_no_store(v.to_string()))
}

/// `GET /auth/userinfo`: who the bearer token belongs to.
pub async fn userinfo(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed("GET, POST".into()));
    }
    let head = super::bearer::RequestHead::of(&req, ctx.scheme);
    let rec = require_token(ctx.store, ctx.config, &head).await?;
    let g = &rec.grant;
    // OpenID Connect UserInfo (Core 5.3) for tokens granted `openid`.
    if super::oidc::enabled(ctx.config) && g.scope.contains("openid") {
        return Ok(json_no_store(
            super::oidc::userinfo(ctx.config, g).to_string(),
        ));
    }
    let v = json!({
        "sub": g.subject(),
        "user": g.user.as_deref(),
        "client": g.client.as_ref(),
        "scope": g.scope.to_string(),
        "expires": rec.expires_at,
    });
    Ok(json_no_store(v.to_string()))
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414 section 3) and,
/// with signing keys, `GET /.well-known/openid-configuration` (OIDC Discovery
/// 4): one document, so the two never disagree.
pub fn metadata(config: &Config) -> Response<Body> {
    let issuer = &config.oauth.issuer;
    let mut scopes: Vec<&str> = config
        .clients
        .values()
        .flat_map(|c| c.scopes.iter())
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let v = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{issuer}{}", config.oauth.token_path),
        "revocation_endpoint": format!("{issuer}{REVOKE_PATH}"),
        "introspection_endpoint": format!("{issuer}{INTROSPECT_PATH}"),
        "userinfo_endpoint": format!("{issuer}{USERINFO_PATH}"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "device_authorization_endpoint": format!("{issuer}{DEVICE_AUTHORIZATION_PATH}"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password", DEVICE_CODE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ALG_NAMES,
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": ALG_NAMES,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": ALG_NAMES,
        // RFC 9449 section 5.1.
        "dpop_signing_alg_values_supported": ALG_NAMES,
        "scopes_supported": scopes,
        "authorization_response_iss_parameter_supported": true,
    });
    let mut v = v;
    super::oidc::add_discovery(config, &mut v);
    let mut resp = error::json(v.to_string());
    // Public, cacheable data.
    resp.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}
