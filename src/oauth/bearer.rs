//! The bearer guard (RFC 6750): the one check of a presented access token, for
//! proxied routes and for every endpoint that takes a bearer token (userinfo).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::grant_still_allowed;
use crate::config::Config;
use crate::error::GatewayError;
use crate::store::{TokenHash, TokenRecord, TokenStore};

/// The live record of the request's bearer token, or the RFC 6750 error:
/// a token in the query or a malformed header is `invalid_request` (400), no
/// token is a bare challenge (401), and a token that is unknown, expired,
/// revoked or whose user or client the config no longer has is
/// `invalid_token` (401). Scopes are the caller's to check.
pub async fn require_token(
    store: &dyn TokenStore,
    config: &Config,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<TokenRecord, GatewayError> {
    if query_has_access_token(query) {
        // RFC 6750 section 2.3, RFC 9700 section 4.3.2: never in the query,
        // which upstreams and proxies log; refused, not forwarded.
        return Err(GatewayError::MalformedBearer(
            "a bearer token must not be sent in the query",
        ));
    }
    let token = bearer_token(headers)?.ok_or(GatewayError::NoToken)?;
    store
        .get_access(TokenHash::of(token))
        .await?
        .filter(|r| grant_still_allowed(config, &r.grant))
        .ok_or(GatewayError::InvalidToken(
            "the access token is unknown, expired or revoked",
        ))
}

/// Whether a query string has an `access_token` parameter (its name compared
/// once form-decoded, so `access%5Ftoken` counts too).
pub fn query_has_access_token(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let plus_decoded = name.replace('+', " ");
        percent_encoding::percent_decode_str(&plus_decoded).eq(b"access_token".iter().copied())
    })
}

/// The bearer token of `Authorization: Bearer <token>` (RFC 6750 section 2.1).
/// `Ok(None)`: no bearer credentials at all (no header, or another scheme).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let value = match (all.next(), all.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(GatewayError::MalformedBearer(
                "more than one Authorization header",
            ));
        }
        (Some(v), None) => v,
    };
    let value = value
        .to_str()
        .map_err(|_| GatewayError::MalformedBearer("the Authorization header is not ASCII"))?;
    let (scheme, token) = match value.split_once(' ') {
        Some((s, t)) => (s, t.trim_start_matches(' ')),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let well_formed = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !well_formed {
        return Err(GatewayError::MalformedBearer(
            "the bearer token is malformed",
        ));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn access_token_in_the_query() {
        assert!(!query_has_access_token(None));
        assert!(!query_has_access_token(Some("a=1&token=x&access_tokens=y")));
        assert!(query_has_access_token(Some("access_token=x")));
        assert!(query_has_access_token(Some("a=1&access_token")));
        assert!(query_has_access_token(Some("a=1&access%5Ftoken=x")));
        assert!(query_has_access_token(Some("%61ccess_token=")));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            bearer_token(&auth("Bearer abc-_.~+/==")).unwrap(),
            Some("abc-_.~+/==")
        );
        assert_eq!(bearer_token(&auth("bEaReR abc")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&auth("Basic abc")).unwrap(), None);
        assert!(bearer_token(&auth("Bearer")).is_err());
        assert!(bearer_token(&auth("Bearer a b")).is_err());
        assert!(bearer_token(&auth("Bearer a,b")).is_err());
        let mut two = auth("Bearer a");
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(bearer_token(&two).is_err());
    }
}
