//! The device authorization grant (RFC 8628): a device without a browser (a
//! CLI, a TV) asks for a device code and a short user code (section 3.2), the
//! user enters the code on the verification page ([`super::device_page`]) in
//! any browser and approves, and the device polls the token endpoint with
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code` (sections 3.4,
//! 3.5) until it gets tokens.
//!
//! Device codes are tokens (256 random bits, stored as hashes); user codes are
//! 8 letters from a 20-consonant alphabet (about 2^34.6 codes, section 6.1),
//! single use, and guessing them on the page is limited like passwords. The
//! state lives in the [`crate::store::TokenStore`], so with Redis the device
//! may poll one instance while the user approves on another.

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::json;

use super::client_auth::{self, AuthenticatedClient};
use super::{Binding, OAuthContext, Params, TokenResponse, grant_scope, read_form};
use crate::config::GrantType;
use crate::error::{Body, GatewayError, OAuthCode};
use crate::scope::ScopeSet;
use crate::store::{DevicePoll, DeviceRecord, TokenHash, new_token, now_secs, random_u64};

pub use crate::endpoint::{DEVICE_AUTHORIZATION_PATH, DEVICE_PATH};
/// RFC 8628 section 6.1: consonants only (no words), none that look alike
/// (no vowels, so no 0/O or 1/I confusion).
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Letters in a user code, shown as two groups of four.
pub const USER_CODE_LEN: usize = 8;

/// A fresh user code, uniform over the alphabet (bytes of 240 and more are
/// drawn again: 256 is no multiple of 20).
pub fn new_user_code() -> String {
    let mut out = String::with_capacity(USER_CODE_LEN);
    while out.len() < USER_CODE_LEN {
        let mut buf = [0u8; 16];
        getrandom::fill(&mut buf).expect("the OS random source failed");
        for b in buf {
            if b < 240 && out.len() < USER_CODE_LEN {
                out.push(char::from(USER_CODE_ALPHABET[usize::from(b % 20)]));
            }
        }
    }
    out
}

/// A user code as typed: case does not matter, nor do dashes and spaces
/// (section 6.1). `None` unless 8 letters of the alphabet remain.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    if typed.len() > 32 {
        return None;
    }
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let ok = code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
    ok.then_some(code)
}

/// `BCDFGHJK` as people read it: `BCDF-GHJK`.
pub fn display_user_code(code: &str) -> String {
    let (a, b) = code.split_at(code.len().min(4));
    format!("{a}-{b}")
}

/// The key of a user code in the store.
pub fn user_code_key(normalized: &str) -> TokenHash {
    TokenHash::of(&format!("user_code:{normalized}"))
}

/// `POST /auth/device_authorization` (section 3.1): the client authenticates as
/// at the token endpoint (a public client names itself with `client_id`) and
/// may ask for a `scope`.
pub async fn authorization(
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (parts, params) = read_form(req, false).await?;
    let creds = client_auth::extract(&parts.headers, &params)?;
    let client = client_auth::authenticate(ctx, creds).await?;
    let id = client.client.id.clone();
    if !client.client.allows(GrantType::DeviceCode) {
        return Err(GatewayError::OAuth(
            OAuthCode::UnauthorizedClient,
            "this client may not use the device authorization grant",
        ));
    }
    let scope = match params.get("scope") {
        None => None,
        Some(s) => match ScopeSet::parse(s) {
            Some(set) if set.is_subset_of(&client.client.scopes) => Some(set),
            _ => {
                return Err(GatewayError::OAuth(
                    OAuthCode::InvalidScope,
                    "the requested scope is malformed or exceeds this client's",
                ));
            }
        },
    };
    let o = &ctx.config.oauth;
    let ttl = super::ttl_secs(o.device_code_ttl);
    let interval = super::ttl_secs(o.device_poll_interval);
    let rec = DeviceRecord {
        client: id.clone(),
        scope,
        family: random_u64(),
        expires_at: now_secs().saturating_add(ttl),
        interval,
    };
    let device_code = new_token();
    let mut user_code = None;
    // A clash with a live code is rare (a few thousand live codes among 2^34);
    // a handful of draws make a failure practically impossible.
    for _ in 0..8 {
        let code = new_user_code();
        let stored = ctx
            .store
            .put_device(
                TokenHash::of(&device_code),
                user_code_key(&code),
                rec.clone(),
            )
            .await
            .map_err(GatewayError::from)?;
        if stored {
            user_code = Some(code);
            break;
        }
    }
    let user_code = user_code.ok_or_else(|| {
        GatewayError::from(crate::store::StoreError::Unavailable(
            "no free user code in 8 draws".into(),
        ))
    })?;
    let user_code = display_user_code(&user_code);
    ctx.audit(
        "device_code_issued",
        None,
        Some(&id),
        Some("device_code"),
        None,
    );
    let uri = format!("{}{DEVICE_PATH}", o.issuer);
    let complete = format!("{uri}?user_code={user_code}");
    let v = json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": uri,
        "verification_uri_complete": complete,
        "expires_in": ttl,
        "interval": interval,
    });
    Ok(crate::error::json_no_store(v.to_string()))
}

/// The token request of a polling device (sections 3.4, 3.5). The poll is
/// counted and judged by the store in one step; only the client the device
/// code was issued to may redeem it.
pub(super) async fn device_grant(
    ctx: &OAuthContext<'_>,
    client: &AuthenticatedClient,
    params: &Params,
    binding: Binding,
) -> Result<TokenResponse, GatewayError> {
    let code = params.require("device_code", "device_code is missing")?;
    const BAD: GatewayError = GatewayError::OAuth(
        OAuthCode::InvalidGrant,
        "the device code is invalid or was issued to another client",
    );
    let poll = ctx
        .store
        .poll_device(
            TokenHash::of(code),
            &client.client.id,
            crate::clock::now_ms(),
        )
        .await
        .map_err(GatewayError::from)?;
    let (grant, family) = match poll {
        DevicePoll::Approved { grant, family } => (grant, family),
        DevicePoll::Unknown => return Err(BAD),
        DevicePoll::Pending => {
            return Err(GatewayError::OAuth(
                OAuthCode::AuthorizationPending,
                "the user has not yet approved this device",
            ));
        }
        DevicePoll::SlowDown { .. } => {
            return Err(GatewayError::OAuth(
                OAuthCode::SlowDown,
                "polling too fast: the interval is now 5 seconds longer",
            ));
        }
        DevicePoll::Denied => {
            return Err(GatewayError::OAuth(
                OAuthCode::AccessDenied,
                "the user denied this device",
            ));
        }
        DevicePoll::Expired => {
            return Err(GatewayError::OAuth(
                OAuthCode::ExpiredToken,
                "the device code has expired: start again",
            ));
        }
        DevicePoll::Spent { family } => {
            // A device code redeemed twice: whatever it yielded is revoked
            // (as for a replayed authorization code, RFC 6749 section 4.1.2).
            super::revoke_family(ctx, family).await?;
            ctx.audit(
                "token_revoked",
                None,
                Some(&client.client.id),
                Some("device_code"),
                Some("replayed_credential"),
            );
            return Err(BAD);
        }
    };
    if !super::grant_still_allowed(ctx.config, &grant) {
        return Err(BAD);
    }
    // Held to what the client and user may have now (a reload may have narrowed it).
    let user_scopes = grant
        .user
        .as_deref()
        .and_then(|u| ctx.config.users.get(u))
        .map(|u| u.scopes.intersection(&client.client.scopes));
    let allowed = user_scopes.unwrap_or_else(|| client.client.scopes.clone());
    grant_scope(Some(grant.scope.clone()), &allowed)?;
    let refresh = client
        .client
        .allows(GrantType::RefreshToken)
        .then(|| grant.clone());
    super::issue_tokens(ctx, grant, family, refresh, binding).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes() {
        for _ in 0..200 {
            let c = new_user_code();
            assert_eq!(c.len(), USER_CODE_LEN);
            assert!(c.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)), "{c}");
            assert_eq!(normalize_user_code(&display_user_code(&c)), Some(c));
        }
        assert_eq!(display_user_code("BCDFGHJK"), "BCDF-GHJK");
        assert_eq!(
            normalize_user_code("bcdf-ghjk").as_deref(),
            Some("BCDFGHJK")
        );
        assert_eq!(
            normalize_user_code(" bcdf ghjk ").as_deref(),
            Some("BCDFGHJK")
        );
        // Vowels and digits are never part of a code; length is exact.
        assert_eq!(normalize_user_code("BCDF-GHJA"), None);
        assert_eq!(normalize_user_code("BCDF-GHJ0"), None);
        assert_eq!(normalize_user_code("BCDF-GHJ"), None);
        assert_eq!(normalize_user_code("BCDF-GHJKL"), None);
        assert_eq!(normalize_user_code("ＢCDFGHJK"), None);
        assert_eq!(normalize_user_code(&"B".repeat(40)), None);
    }

    #[test]
    fn every_letter_is_drawn() {
        let mut seen = [false; 20];
        for _ in 0..100 {
            for b in new_user_code().bytes() {
                let i = USER_CODE_ALPHABET.iter().position(|&a| a == b).unwrap();
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }
}
