//! Client authentication at the token endpoint (RFC 6749 section 2.3).
//!
//! A client names itself with HTTP Basic (client_secret_basic), with `client_id`
//! and `client_secret` in the body (client_secret_post), with a signed JWT
//! (private_key_jwt, RFC 7523 section 2.2; see [`super::client_jwt`]), with
//! `client_id` alone (a public client), or not at all (then
//! `oauth.default_client`). Unknown clients and wrong secrets get the same
//! answer after the same work.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::{OAuthContext, Params, form_urldecode, guarded_verify};
use crate::config::Client;
use crate::error::{GatewayError, OAuthCode};

/// What the request says about its client, before any check.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientCredentials {
    /// HTTP Basic: id and secret, form-urldecoded.
    Basic { id: String, secret: String },
    /// In the body; a public client sends no secret.
    Body { id: String, secret: Option<String> },
    /// A JWT client assertion; `id` is its (not yet verified) issuer.
    Assertion { id: String, assertion: String },
    /// Nothing: the configured default client, if any.
    None,
}

const AUTH_FAILED: GatewayError =
    GatewayError::OAuth(OAuthCode::InvalidClient, "client authentication failed");

/// Reads the client's credentials from the Authorization header and the body.
pub fn extract(headers: &HeaderMap, params: &Params) -> Result<ClientCredentials, GatewayError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    let basic = match (auth.next(), auth.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(GatewayError::OAuth(
                OAuthCode::InvalidRequest,
                "more than one Authorization header",
            ));
        }
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| AUTH_FAILED)?;
            let (scheme, rest) = v.split_once(' ').ok_or(AUTH_FAILED)?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(AUTH_FAILED);
            }
            let decoded = STANDARD.decode(rest.trim()).map_err(|_| AUTH_FAILED)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AUTH_FAILED)?;
            let (id, secret) = decoded.split_once(':').ok_or(AUTH_FAILED)?;
            Some((
                form_urldecode(id.as_bytes()).ok_or(AUTH_FAILED)?,
                form_urldecode(secret.as_bytes()).ok_or(AUTH_FAILED)?,
            ))
        }
    };
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    if params.get("client_assertion").is_some() || params.get("client_assertion_type").is_some() {
        return assertion_credentials(basic.is_some() || body_secret.is_some(), body_id, params);
    }
    match basic {
        Some((id, secret)) => {
            // One request, one authentication method (section 2.3).
            if body_secret.is_some() {
                return Err(GatewayError::OAuth(
                    OAuthCode::InvalidRequest,
                    "client credentials sent both in the Authorization header and in the body",
                ));
            }
            if body_id.is_some_and(|b| b != id) {
                return Err(GatewayError::OAuth(
                    OAuthCode::InvalidRequest,
                    "client_id differs from the client in the Authorization header",
                ));
            }
            Ok(ClientCredentials::Basic { id, secret })
        }
        None => match (body_id, body_secret) {
            (Some(id), secret) => Ok(ClientCredentials::Body {
                id: id.to_string(),
                secret: secret.map(str::to_string),
            }),
            (None, Some(_)) => Err(GatewayError::OAuth(
                OAuthCode::InvalidRequest,
                "client_secret without client_id",
            )),
            (None, None) => Ok(ClientCredentials::None),
        },
    }
}

/// A client assertion (RFC 7521 section 4.2): both parameters, the JWT bearer
/// type, no other method in the same request, and a `client_id`, if sent, that
/// names the assertion's issuer.
fn assertion_credentials(
    other_method: bool,
    body_id: Option<&str>,
    params: &Params,
) -> Result<ClientCredentials, GatewayError> {
    if other_method {
        return Err(GatewayError::OAuth(
            OAuthCode::InvalidRequest,
            "a client assertion and a client secret in one request",
        ));
    }
    let (Some(kind), Some(assertion)) = (
        params.get("client_assertion_type"),
        params.get("client_assertion"),
    ) else {
        return Err(GatewayError::OAuth(
            OAuthCode::InvalidRequest,
            "client_assertion and client_assertion_type go together",
        ));
    };
    if kind != super::client_jwt::ASSERTION_TYPE {
        return Err(GatewayError::OAuth(
            OAuthCode::InvalidRequest,
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let id = crate::jose::verify::assertion_issuer(assertion).ok_or(AUTH_FAILED)?;
    if body_id.is_some_and(|b| b != id) {
        return Err(AUTH_FAILED);
    }
    Ok(ClientCredentials::Assertion {
        id,
        assertion: assertion.to_string(),
    })
}

/// The authenticated client, and whether it proved a secret or a key (confidential).
pub struct AuthenticatedClient {
    pub client: Arc<Client>,
    pub confidential: bool,
}

/// Checks the credentials against the configured clients. Secret checks count
/// towards brute-force limits, under the account name `client:<id>`.
pub async fn authenticate(
    ctx: &OAuthContext<'_>,
    creds: ClientCredentials,
) -> Result<AuthenticatedClient, GatewayError> {
    let config = ctx.config;
    let (id, secret) = match creds {
        ClientCredentials::Basic { id, secret } => (id, Some(secret).filter(|s| !s.is_empty())),
        ClientCredentials::Body { id, secret } => (id, secret),
        ClientCredentials::Assertion { id, assertion } => {
            let client = super::client_jwt::authenticate(ctx, &id, &assertion).await?;
            return Ok(AuthenticatedClient {
                client,
                confidential: true,
            });
        }
        ClientCredentials::None => {
            let id = config.oauth.default_client.as_ref().ok_or(AUTH_FAILED)?;
            let client = config.clients.get(id).ok_or(AUTH_FAILED)?;
            return Ok(AuthenticatedClient {
                client: client.clone(),
                confidential: false,
            });
        }
    };
    let client = config.clients.get(&id);
    match (client, secret) {
        (Some(c), None) if c.is_public() => Ok(AuthenticatedClient {
            client: c.clone(),
            confidential: false,
        }),
        // A confidential client that did not authenticate.
        (Some(_), None) => Err(AUTH_FAILED),
        (None, None) => Err(AUTH_FAILED),
        (client, Some(secret)) => {
            // Unknown clients and public ones (which have no secret) are checked
            // against the dummy hash: same work, same answer as a wrong secret.
            let hash = client.and_then(|c| c.secret_hash.as_deref()).map(Arc::from);
            let ok = guarded_verify(ctx, &format!("client:{id}"), secret.as_bytes(), hash).await?;
            match client {
                Some(c) if ok => Ok(AuthenticatedClient {
                    client: c.clone(),
                    confidential: true,
                }),
                _ => Err(AUTH_FAILED),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode(raw));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_form_urldecoded() {
        let c = extract(&basic("a%3Ab:s+%25x"), &params(&[])).unwrap();
        assert_eq!(
            c,
            ClientCredentials::Basic {
                id: "a:b".into(),
                secret: "s %x".into()
            }
        );
    }

    #[test]
    fn two_methods_at_once_is_invalid_request() {
        let e = extract(&basic("a:b"), &params(&[("client_secret", "b")])).unwrap_err();
        assert_eq!(
            e,
            GatewayError::OAuth(
                OAuthCode::InvalidRequest,
                "client credentials sent both in the Authorization header and in the body"
            )
        );
        assert!(extract(&basic("a:b"), &params(&[("client_id", "other")])).is_err());
        assert!(extract(&basic("a:b"), &params(&[("client_id", "a")])).is_ok());
    }

    #[test]
    fn body_and_default() {
        assert_eq!(
            extract(&HeaderMap::new(), &params(&[("client_id", "x")])).unwrap(),
            ClientCredentials::Body {
                id: "x".into(),
                secret: None
            }
        );
        assert_eq!(
            extract(&HeaderMap::new(), &params(&[])).unwrap(),
            ClientCredentials::None
        );
        assert!(extract(&HeaderMap::new(), &params(&[("client_secret", "s")])).is_err());
    }

    #[test]
    fn malformed_basic_is_invalid_client() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(extract(&h, &params(&[])).unwrap_err(), AUTH_FAILED);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(extract(&h, &params(&[])).unwrap_err(), AUTH_FAILED);
    }
}
