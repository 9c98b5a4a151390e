//! The OAuth 2.0 token endpoint (RFC 6749 sections 3.2, 4.3, 4.4, 5, 6).
//!
//! Grant rules are plain code over the [`TokenStore`] trait and the config; the
//! HTTP side (method, content type, body limit) is in [`token_endpoint`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use std::net::IpAddr;

use http::request::Parts;

use crate::config::{Config, GrantType, User};
use crate::error::{Body, Cause, GatewayError, OAuthCode, full};
use crate::password::PasswordPool;
use crate::scope::ScopeSet;
use crate::store::{
    Grant, Grants, Redeem, TokenHash, TokenRecord, TokenStore, new_token, now_secs, random_u64,
};

pub mod authorize;
pub mod client_auth;
pub mod endpoints;
pub mod limiter;
pub mod pkce;

use client_auth::AuthenticatedClient;
use limiter::Limiter;

/// Token and form requests are small; anything bigger is refused with 413.
pub const MAX_FORM_BYTES: usize = 8 * 1024;

fn invalid_request(d: &'static str) -> GatewayError {
    GatewayError::OAuth(OAuthCode::InvalidRequest, d)
}

/// One form-urlencoded component, byte by byte as the URL Standard does: `+` is
/// a space, `%XX` a byte; `None` if the result is not UTF-8.
pub(crate) fn form_urldecode(s: &[u8]) -> Option<String> {
    let plus_decoded: Vec<u8> = s
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_decoded).collect();
    String::from_utf8(bytes).ok()
}

/// The name/value pairs of a form body or query string, decoded strictly;
/// `None` if any of them is not UTF-8 once decoded.
pub(crate) fn form_pairs(s: &[u8]) -> Option<Vec<(String, String)>> {
    s.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|piece| {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(i) => (&piece[..i], &piece[i + 1..]),
                None => (piece, &b""[..]),
            };
            Some((form_urldecode(name)?, form_urldecode(value)?))
        })
        .collect()
}

/// Form parameters of a token request: each name at most once; an empty value
/// counts as absent (section 3.2).
#[derive(Default)]
pub struct Params(HashMap<String, String>);

impl std::fmt::Debug for Params {
    // Names only: values include passwords, secrets and tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Params {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Params, GatewayError> {
        let mut map = HashMap::with_capacity(pairs.len());
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        for (k, v) in pairs {
            if !seen.insert(k.clone()) {
                return Err(invalid_request("a parameter was sent more than once"));
            }
            if !v.is_empty() {
                map.insert(k, v);
            }
        }
        Ok(Params(map))
    }

    /// Decodes `application/x-www-form-urlencoded` strictly: a name or value that
    /// is not UTF-8 once decoded refuses the whole form, instead of being read
    /// with replacement characters (which would make `%FF` and `%FE` equal).
    pub fn parse(body: &[u8]) -> Result<Params, GatewayError> {
        let pairs = form_pairs(body).ok_or(invalid_request("the body is not a valid form"))?;
        Params::from_pairs(pairs)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn require(&self, k: &str, missing: &'static str) -> Result<&str, GatewayError> {
        self.get(k).ok_or_else(|| invalid_request(missing))
    }
}

/// A successful token response (section 5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
    /// Who the tokens speak for (for the audit line; not sent).
    #[serde(skip)]
    pub grant: Arc<Grant>,
}

impl TokenResponse {
    fn into_response(self) -> Response<Body> {
        let body = serde_json::to_vec(&self).expect("a token response serialises");
        let mut resp = Response::new(full(body));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        resp
    }
}

/// What grant handling needs; borrowed from the gateway's state.
pub struct OAuthContext<'a> {
    pub config: &'a Config,
    pub store: &'a dyn TokenStore,
    pub passwords: &'a PasswordPool,
    pub limiter: &'a Limiter,
    pub grants: &'a Grants,
    pub metrics: &'a crate::metrics::Metrics,
    /// The client's address (through `server.trusted_proxies`), for
    /// brute-force accounting.
    pub peer: IpAddr,
    /// The request's id, for audit lines.
    pub request_id: &'a str,
}

impl OAuthContext<'_> {
    /// Writes one audit line (see [`crate::audit`]) for this request.
    pub fn audit(
        &self,
        event: &'static str,
        user: Option<&str>,
        client: Option<&str>,
        grant: Option<&str>,
        reason: Option<&str>,
    ) {
        let who = crate::audit::Who {
            address: self.peer,
            request_id: self.request_id,
        };
        crate::audit::event(&who, event, user, client, grant, reason);
    }
}

/// How long a form body may take to arrive: `server.body_read_timeout`, put in
/// the request's extensions by the gateway for its own endpoints.
#[derive(Debug, Clone, Copy)]
pub struct BodyReadTimeout(pub Duration);

/// When no [`BodyReadTimeout`] was set (the config's default).
const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a POSTed form (the token, revocation, introspection and authorization
/// endpoints): POST only, no query parameters, `application/x-www-form-urlencoded`,
/// at most [`MAX_FORM_BYTES`] (413 above), all of it within the
/// [`BodyReadTimeout`] (408 after it: a body trickled a byte at a time must not
/// hold a connection forever).
pub async fn read_form(
    req: Request<Incoming>,
    allow_query: bool,
) -> Result<(Parts, Params), GatewayError> {
    if req.method() != Method::POST {
        return Err(GatewayError::PostOnly);
    }
    if !allow_query && req.uri().query().is_some() {
        // Credentials in a URL end up in logs and histories (sections 3.2, 2.3.1).
        return Err(invalid_request(
            "parameters belong in the body, not the query",
        ));
    }
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let limit = req
        .extensions()
        .get::<BodyReadTimeout>()
        .map_or(DEFAULT_BODY_READ_TIMEOUT, |t| t.0);
    let (parts, body) = req.into_parts();
    let body: Bytes = tokio::time::timeout(limit, Limited::new(body, MAX_FORM_BYTES).collect())
        .await
        .map_err(|_| GatewayError::BodyTimeout)?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::PayloadTooLarge
            } else {
                invalid_request("the request body could not be read")
            }
        })?
        .to_bytes();
    Ok((parts, Params::parse(&body)?))
}

/// The token endpoint (RFC 6749 section 3.2).
pub async fn token_endpoint(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (parts, params) = read_form(req, false).await?;
    issue(ctx, &parts.headers, &params)
        .await
        .map(TokenResponse::into_response)
}

/// Runs a token request: client authentication, then the grant.
pub async fn issue(
    ctx: &OAuthContext<'_>,
    headers: &HeaderMap,
    params: &Params,
) -> Result<TokenResponse, GatewayError> {
    let result = issue_inner(ctx, headers, params).await;
    // Only a grant type we know is logged as such: the parameter is the caller's.
    let grant = params
        .get("grant_type")
        .map(|g| GrantType::parse(g).map_or("unsupported", GrantType::as_str));
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
                | Ok(client_auth::ClientCredentials::Body { id, .. }) => Some(id),
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
) -> Result<TokenResponse, GatewayError> {
    let grant_type = params.require("grant_type", "grant_type is missing")?;
    let creds = client_auth::extract(headers, params)?;
    let grant = GrantType::parse(grant_type).ok_or(GatewayError::OAuth(
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
    let requested = match params.get("scope") {
        Some(s) => Some(ScopeSet::parse(s).ok_or(GatewayError::OAuth(
            OAuthCode::InvalidScope,
            "the scope parameter is malformed",
        ))?),
        None => None,
    };
    let response = match grant {
        GrantType::Password => password_grant(ctx, &client, params, requested).await,
        GrantType::ClientCredentials => client_credentials_grant(ctx, &client, requested).await,
        GrantType::RefreshToken => refresh_grant(ctx, &client, params, requested).await,
        GrantType::AuthorizationCode => code_grant(ctx, &client, params).await,
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
fn grant_scope(requested: Option<ScopeSet>, allowed: &ScopeSet) -> Result<ScopeSet, GatewayError> {
    match requested {
        None => Ok(allowed.clone()),
        Some(r) if r.is_subset_of(allowed) => Ok(r),
        Some(_) => Err(GatewayError::OAuth(
            OAuthCode::InvalidScope,
            "the requested scope exceeds what may be granted",
        )),
    }
}

/// Runs a password check under brute-force accounting (RFC 6749 section 4.3.2;
/// see [`limiter`]): the guess is counted before argon2 runs, and refused with
/// 429 (no argon2 work) when a limit has no room; a right password refunds it.
/// Failed answers are held back a little once failures pile up. `account` names
/// what is being guessed at (a user name, or `client:<id>`).
pub async fn guarded_verify(
    ctx: &OAuthContext<'_>,
    account: &str,
    password: &[u8],
    hash: Option<Arc<str>>,
) -> Result<bool, GatewayError> {
    guarded_verify_from(ctx, account, None, password, hash).await
}

/// [`guarded_verify`] for a browser that may carry a device cookie (the login page).
pub async fn guarded_verify_from(
    ctx: &OAuthContext<'_>,
    account: &str,
    device: Option<&str>,
    password: &[u8],
    hash: Option<Arc<str>>,
) -> Result<bool, GatewayError> {
    let origin = limiter::Origin {
        addr: ctx.peer,
        device,
    };
    let attempt = ctx
        .limiter
        .begin(account, &origin)
        .await
        .map_err(|r| match r {
            limiter::Refusal::TooMany(secs) => {
                ctx.audit(
                    "lockout",
                    Some(account),
                    None,
                    None,
                    Some("too_many_attempts"),
                );
                GatewayError::TooManyAttempts(secs)
            }
            limiter::Refusal::Unavailable(e) => GatewayError::StoreUnavailable(Cause::new(e)),
        })?;
    let ok = match ctx.passwords.verify(password, hash).await {
        Ok(ok) => ok,
        Err(_) => {
            attempt.not_checked().await;
            return Err(GatewayError::PasswordBusy);
        }
    };
    ctx.metrics.password_checked();
    if ok {
        attempt.succeeded().await;
    } else {
        // Held back with its slots still taken: waiting out the delay in
        // parallel gains nothing.
        let delay = attempt.failure_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        attempt.failed().await;
    }
    Ok(ok)
}

/// Checks a user's password; unknown users are checked against the dummy hash,
/// so they cost the same time and get the same answer.
pub async fn check_user_password<'c>(
    ctx: &OAuthContext<'c>,
    username: &str,
    password: &str,
) -> Result<Option<&'c Arc<User>>, GatewayError> {
    check_user_password_from(ctx, username, None, password).await
}

/// [`check_user_password`] from a browser with a device cookie (the login page):
/// a device that signed in as `username` before is limited on its own, so an
/// attack on the name from elsewhere does not lock it out.
pub async fn check_user_password_from<'c>(
    ctx: &OAuthContext<'c>,
    username: &str,
    device: Option<&str>,
    password: &str,
) -> Result<Option<&'c Arc<User>>, GatewayError> {
    let user = ctx.config.users.get(username);
    let hash = user.map(|u| Arc::from(u.password_hash.as_str()));
    let ok = guarded_verify_from(ctx, username, device, password.as_bytes(), hash).await?;
    Ok(user.filter(|_| ok))
}

async fn password_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    params: &Params,
    requested: Option<ScopeSet>,
) -> Result<TokenResponse, GatewayError> {
    let username = params.require("username", "username is missing")?;
    let password = params.require("password", "password is missing")?;
    let user = check_user_password(ctx, username, password)
        .await?
        .ok_or(GatewayError::OAuth(
            OAuthCode::InvalidGrant,
            "invalid username or password",
        ))?;
    let allowed = user.scopes.intersection(&client.client.scopes);
    let scope = grant_scope(requested, &allowed)?;
    let grant = ctx
        .grants
        .intern(Some(user.name.clone()), client.client.id.clone(), scope);
    let with_refresh = client.client.allows(GrantType::RefreshToken);
    issue_tokens(ctx, grant, random_u64(), with_refresh).await
}

async fn client_credentials_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    requested: Option<ScopeSet>,
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
    issue_tokens(ctx, grant, random_u64(), false).await
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
    let scope = grant_scope(requested, &rec.grant.scope)?;
    // Of racing requests, only the one that takes the token goes on; the others
    // are replays.
    let rec = redeemed(ctx, ctx.store.take_refresh(key).await, BAD, id).await?;
    let grant = if scope == rec.grant.scope {
        rec.grant.clone()
    } else {
        ctx.grants
            .intern(rec.grant.user.clone(), rec.grant.client.clone(), scope)
    };
    issue_tokens(ctx, grant, rec.family, true).await
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
    let with_refresh = client.client.allows(GrantType::RefreshToken);
    issue_tokens(ctx, rec.grant, rec.family, with_refresh).await
}

pub fn ttl_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

async fn issue_tokens(
    ctx: &OAuthContext<'_>,
    grant: Arc<Grant>,
    family: u64,
    with_refresh: bool,
) -> Result<TokenResponse, GatewayError> {
    let now = now_secs();
    let access_ttl = ttl_secs(ctx.config.oauth.access_token_ttl);
    let access = new_token();
    let refresh = with_refresh.then(new_token);
    let scope = grant.scope.to_string();
    if let Some(refresh) = &refresh {
        let rec = TokenRecord {
            grant: grant.clone(),
            family,
            issued_at: now,
            expires_at: now.saturating_add(ttl_secs(ctx.config.oauth.refresh_token_ttl)),
        };
        ctx.store.put_refresh(TokenHash::of(refresh), rec).await?;
    }
    let rec = TokenRecord {
        grant: grant.clone(),
        family,
        issued_at: now,
        expires_at: now.saturating_add(access_ttl),
    };
    ctx.store.put_access(TokenHash::of(&access), rec).await?;
    Ok(TokenResponse {
        access_token: access,
        token_type: "Bearer",
        expires_in: access_ttl,
        refresh_token: refresh,
        scope,
        grant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameter_is_invalid_request() {
        let e = Params::parse(b"grant_type=password&grant_type=password").unwrap_err();
        assert_eq!(e, invalid_request("a parameter was sent more than once"));
    }

    #[test]
    fn empty_value_is_absent() {
        let p = Params::parse(b"grant_type=password&scope&username=").unwrap();
        assert_eq!(p.get("grant_type"), Some("password"));
        assert_eq!(p.get("scope"), None);
        assert_eq!(p.get("username"), None);
    }

    #[test]
    fn scope_rules() {
        let allowed = ScopeSet::parse("read write").unwrap();
        assert_eq!(grant_scope(None, &allowed).unwrap(), allowed);
        let r = ScopeSet::parse("read").unwrap();
        assert_eq!(grant_scope(Some(r.clone()), &allowed).unwrap(), r);
        assert!(grant_scope(Some(ScopeSet::parse("admin").unwrap()), &allowed).is_err());
    }
}
