//! DPoP (RFC 9449): tokens bound to a key the client holds.
//!
//! At the token endpoint a request with a valid `DPoP` proof gets tokens bound
//! to the proof key's thumbprint (`token_type: "DPoP"`, section 5); refresh
//! tokens of public clients are bound too. On a request that presents a token
//! (the bearer guard, [`super::bearer::require_token`]), a bound token is accepted only as `Authorization: DPoP` with a
//! fresh proof for this very request, signed by the bound key and naming the
//! token (`ath`), its `jti` never seen before (section 7.1, 11.1). A bearer
//! request never runs any of this beyond one branch on the record.

use http::HeaderMap;

use super::OAuthContext;
use super::bearer::RequestHead;
use crate::error::{DpopRefusal, GatewayError, OAuthCode};
use crate::jose::verify::{DpopProof, DpopRequest, check_dpop_proof, normalize_url};
use crate::store::{TokenHash, TokenRecord, TokenStore, now_secs};

// The `DPoP` request header carrying the proof (section 4.1); the header
// rules, which never forward it, are the proxy's.
use crate::proxy::DPOP;

/// The URL as the client sent it, normalised, without the query: the
/// authority of an absolute-form target or HTTP/2's `:authority`, else
/// `Host`; the path as sent (before any normalisation or prefix strip).
fn request_url(head: &RequestHead<'_>) -> Option<String> {
    let authority = match head.uri.authority() {
        Some(a) => a.as_str(),
        None => head.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(normalize_url(head.scheme, authority, head.uri.path()))
}

/// The scheme the client used: `X-Forwarded-Proto` when a trusted proxy (a
/// TLS-terminating load balancer) sent one, else whether this connection is TLS.
pub fn client_scheme(headers: &HeaderMap, from_trusted_proxy: bool, tls: bool) -> &'static str {
    if from_trusted_proxy {
        let proto = headers
            .get_all(crate::proxy::X_FORWARDED_PROTO.clone())
            .iter()
            .next_back();
        match proto.map(|v| v.as_bytes()) {
            Some(p) if p.eq_ignore_ascii_case(b"https") => return "https",
            Some(p) if p.eq_ignore_ascii_case(b"http") => return "http",
            _ => {}
        }
    }
    if tls { "https" } else { "http" }
}

/// The one `DPoP` header of a request; `Ok(None)` if there is none.
fn proof_header(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut all = headers.get_all(&DPOP).iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err("more than one DPoP header"),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| "the DPoP header is not ASCII"),
    }
}

/// Checks a proof for `head` and spends its `jti` (section 11.1: a replay
/// within the window is refused, by every instance sharing the store).
async fn checked_proof(
    store: &dyn TokenStore,
    head: &RequestHead<'_>,
    proof: &str,
    access_token: Option<&str>,
) -> Result<DpopProof, Result<&'static str, GatewayError>> {
    let url = request_url(head).ok_or(Ok("the request has no host to check htu against"))?;
    let req = DpopRequest {
        method: head.method.as_str(),
        url: &url,
        access_token,
        now: now_secs(),
    };
    let proof = check_dpop_proof(proof, &req).map_err(|r| Ok(r.0))?;
    let key = TokenHash::of(&format!("dpop:{}:{}", proof.jkt, proof.jti));
    match store.first_use(key, proof.replay_window_end()).await {
        Ok(true) => Ok(proof),
        Ok(false) => Err(Ok("the proof was used before (jti)")),
        Err(e) => Err(Err(GatewayError::from(e))),
    }
}

/// The proof of a token request (section 5), checked; `None` without a `DPoP`
/// header. Refusals are 400 `invalid_dpop_proof`.
pub async fn token_request_proof(
    ctx: &OAuthContext<'_>,
    head: &RequestHead<'_>,
) -> Result<Option<DpopProof>, GatewayError> {
    let bad = |d| GatewayError::OAuth(OAuthCode::InvalidDpopProof, d);
    let Some(proof) = proof_header(head.headers).map_err(bad)? else {
        return Ok(None);
    };
    match checked_proof(ctx.store, head, proof, None).await {
        Ok(p) => Ok(Some(p)),
        Err(Ok(d)) => Err(bad(d)),
        Err(Err(e)) => Err(e),
    }
}

/// `Authorization: DPoP <token>` (section 7.1): `record` is the token's live
/// record, if any. It must be DPoP-bound, and the request must carry one proof
/// for this request, naming the token, signed by the bound key, never used
/// before.
pub async fn check_request(
    store: &dyn TokenStore,
    head: &RequestHead<'_>,
    token: &str,
    record: Option<TokenRecord>,
) -> Result<TokenRecord, GatewayError> {
    let refuse = |d| GatewayError::Dpop(DpopRefusal::InvalidProof(d));
    let proof = proof_header(head.headers)
        .map_err(refuse)?
        .ok_or(refuse("a DPoP proof is required"))?;
    let record = record.ok_or(GatewayError::Dpop(DpopRefusal::InvalidToken(
        "the access token is unknown, expired or revoked",
    )))?;
    let Some(jkt) = record.cnf.as_deref().map(String::as_str) else {
        return Err(GatewayError::Dpop(DpopRefusal::InvalidToken(
            "this token is not DPoP-bound: send it as Authorization: Bearer",
        )));
    };
    let proof = match checked_proof(store, head, proof, Some(token)).await {
        Ok(p) => p,
        Err(Ok(d)) => return Err(refuse(d)),
        Err(Err(e)) => return Err(e),
    };
    if proof.jkt != jkt {
        return Err(refuse(
            "the proof is not signed by the key the token is bound to",
        ));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method, Uri};

    #[test]
    fn the_url_as_the_client_sent_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("GW.example:443"),
        );
        let uri: Uri = "/api/a%2fb?x=1".parse().unwrap();
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            scheme: "https",
        };
        assert_eq!(request_url(&head).unwrap(), "https://gw.example/api/a%2Fb");
        let abs: Uri = "http://h:8080/p".parse().unwrap();
        let head = RequestHead {
            uri: &abs,
            scheme: "http",
            ..head
        };
        assert_eq!(request_url(&head).unwrap(), "http://h:8080/p");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(client_scheme(&h, true, false), "https");
        assert_eq!(client_scheme(&h, false, false), "http");
        assert_eq!(client_scheme(&HeaderMap::new(), true, true), "https");
    }

    #[test]
    fn one_proof_header() {
        let mut h = HeaderMap::new();
        assert_eq!(proof_header(&h), Ok(None));
        h.insert(&DPOP, HeaderValue::from_static("a.b.c"));
        assert_eq!(proof_header(&h), Ok(Some("a.b.c")));
        h.append(&DPOP, HeaderValue::from_static("d.e.f"));
        assert!(proof_header(&h).is_err());
    }
}
