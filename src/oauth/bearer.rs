//! The bearer guard (RFC 6750): the one check of a presented access token, for
//! proxied routes and for every endpoint that takes a bearer token (userinfo).

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, Uri};

use crate::config::{Client, Config};
use crate::error::{DpopRefusal, GatewayError};
use crate::store::{TokenHash, TokenRecord, TokenStore};

/// What of a request the guard looks at.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// `https` or `http`, as the client used it (see
    /// [`super::dpop::client_scheme`]): DPoP proofs name the URL.
    pub scheme: &'a str,
}

impl<'a> RequestHead<'a> {
    pub fn of<B>(req: &'a Request<B>, scheme: &'a str) -> RequestHead<'a> {
        RequestHead {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            scheme,
        }
    }
}

const UNKNOWN: &str = "the access token is unknown, expired or revoked";

/// The live record of the request's access token, or the RFC 6750 / RFC 9449
/// error: a token in the query or a malformed header is `invalid_request`
/// (400), no token is a bare challenge (401), and a token that is unknown,
/// expired, revoked or whose user or client the config no longer has is
/// `invalid_token` (401). A bearer token must not be DPoP-bound, nor of a
/// `require_dpop` client; `Authorization: DPoP` takes a bound token and a
/// valid proof ([`super::dpop::check_request`]). Scopes are the caller's to check.
pub async fn require_token(
    store: &dyn TokenStore,
    config: &Config,
    head: &RequestHead<'_>,
) -> Result<TokenRecord, GatewayError> {
    if query_has_access_token(head.uri.query()) {
        // RFC 6750 section 2.3, RFC 9700 section 4.3.2: never in the query,
        // which upstreams and proxies log; refused, not forwarded.
        return Err(GatewayError::MalformedBearer(
            "a bearer token must not be sent in the query",
        ));
    }
    let cred = credential(head.headers)?.ok_or(GatewayError::NoToken)?;
    let token = match cred {
        Credential::Bearer(t) | Credential::Dpop(t) => t,
    };
    let found = store
        .get_access(TokenHash::of(token))
        .await?
        .and_then(|r| live_client(config, &r).map(|c| (r, c.require_dpop)));
    match cred {
        Credential::Bearer(_) => {
            let (record, require_dpop) = found.ok_or(GatewayError::InvalidToken(UNKNOWN))?;
            if record.cnf.is_some() {
                // RFC 9449 section 7.2: a bound token is no bearer token.
                return Err(GatewayError::Dpop(DpopRefusal::InvalidToken(
                    "this token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof",
                )));
            }
            if require_dpop {
                return Err(GatewayError::Dpop(DpopRefusal::InvalidToken(
                    "this client's tokens must be DPoP-bound",
                )));
            }
            Ok(record)
        }
        Credential::Dpop(token) => {
            let record = found.map(|(r, _)| r);
            super::dpop::check_request(store, head, token, record).await
        }
    }
}

/// The client of a token whose user and client are still configured (one
/// removed and reloaded loses its live tokens at once): one map lookup, as
/// [`super::grant_still_allowed`], that also yields the client's settings.
fn live_client<'c>(config: &'c Config, rec: &TokenRecord) -> Option<&'c Arc<Client>> {
    let client = config.clients.get(rec.grant.client.as_ref())?;
    let user_known = rec
        .grant
        .user
        .as_deref()
        .is_none_or(|u| config.users.contains_key(u));
    user_known.then_some(client)
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

/// The credential a request presents (RFC 6750 section 2.1, RFC 9449 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    Dpop(&'a str),
}

/// The token of `Authorization: Bearer <token>` or `Authorization: DPoP <token>`.
/// `Ok(None)`: no such credentials (no header, or another scheme).
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, GatewayError> {
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
    // The bearer scheme is compared first: a bearer request pays nothing more.
    let wrap = if scheme.eq_ignore_ascii_case("bearer") {
        Credential::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Credential::Dpop
    } else {
        return Ok(None);
    };
    // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let well_formed = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !well_formed {
        return Err(GatewayError::MalformedBearer(
            "the access token is malformed",
        ));
    }
    Ok(Some(wrap(token)))
}

/// The bearer token of `Authorization: Bearer <token>` (RFC 6750 section 2.1).
/// `Ok(None)`: no bearer credentials at all (no header, or another scheme,
/// `DPoP` included).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    Ok(match credential(headers)? {
        Some(Credential::Bearer(t)) => Some(t),
        _ => None,
    })
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

    #[test]
    fn credentials() {
        assert_eq!(credential(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            credential(&auth("Bearer abc")).unwrap(),
            Some(Credential::Bearer("abc"))
        );
        assert_eq!(
            credential(&auth("dpop abc")).unwrap(),
            Some(Credential::Dpop("abc"))
        );
        assert_eq!(bearer_token(&auth("DPoP abc")).unwrap(), None);
        assert_eq!(credential(&auth("Basic abc")).unwrap(), None);
        assert!(credential(&auth("DPoP a b")).is_err());
        assert!(credential(&auth("DPoP")).is_err());
    }
}
