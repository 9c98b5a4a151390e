//! Form handling for the gateway's own endpoints: reading a POSTed
//! `application/x-www-form-urlencoded` body within its size and time limits,
//! and decoding it strictly into [`Params`] (RFC 6749 section 3.2).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::error::{GatewayError, OAuthCode};

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

    pub(crate) fn require(&self, k: &str, missing: &'static str) -> Result<&str, GatewayError> {
        self.get(k).ok_or_else(|| invalid_request(missing))
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
}
