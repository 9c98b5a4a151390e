//! `private_key_jwt` client authentication (RFC 7523 section 2.2, OpenID
//! Connect Core section 9): the client signs a short-lived JWT with a key only
//! it holds; the gateway has its public keys (`[[clients]] jwks`, a JWKS file
//! read with the config, so a reload re-reads it).
//!
//! The assertion's signature and claims are checked by [`crate::jose::verify`];
//! here the client is found, the audiences named, and the `jti` spent: each
//! assertion is used once, remembered until its `exp` (in Redis when the
//! store is Redis, so a replay to another instance fails too).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::OAuthContext;
use crate::error::{GatewayError, OAuthCode};
use crate::jose::verify::{AssertionCheck, PublicJwk, check_client_assertion};
use crate::store::{TokenHash, now_secs};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Keys one client may register: each assertion without a `kid` is tried
/// against those of its type, so the number is bounded.
pub const MAX_CLIENT_KEYS: usize = 16;
/// A JWKS file larger than this is refused (a few dozen keys fit).
const MAX_JWKS_BYTES: u64 = 256 * 1024;

/// A client's registered public keys.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    /// The file they were read from (for `check-config` and errors).
    pub path: PathBuf,
    pub keys: Vec<PublicJwk>,
}

impl ClientKeys {
    /// Reads a JWKS file (RFC 7517 section 5). Every key must be a public EC
    /// P-256 or RSA key (see [`PublicJwk::from_json`]) the backend can use,
    /// `kid`s must differ; the error names the file and the key.
    pub fn load(path: &Path) -> Result<ClientKeys, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the JWKS file {shown}: {e}"))?
            .len();
        if len > MAX_JWKS_BYTES {
            return Err(format!(
                "the JWKS file {shown} is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWKS file {shown}: {e}"))?;
        let set: Value = serde_json::from_str(&text)
            .map_err(|e| format!("the JWKS file {shown} is not JSON: {e}"))?;
        let list = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the JWKS file {shown} has no \"keys\" array"))?;
        if list.is_empty() {
            return Err(format!("the JWKS file {shown} holds no key"));
        }
        if list.len() > MAX_CLIENT_KEYS {
            return Err(format!(
                "the JWKS file {shown} holds {} keys; at most {MAX_CLIENT_KEYS} are accepted",
                list.len()
            ));
        }
        let mut keys: Vec<PublicJwk> = Vec::with_capacity(list.len());
        for (i, k) in list.iter().enumerate() {
            let key = PublicJwk::from_json(k)
                .and_then(|key| key.check_usable().map(|()| key))
                .map_err(|why| format!("{shown}: keys[{i}]: {why}"))?;
            if key.kid.is_some() && keys.iter().any(|other| other.kid == key.kid) {
                return Err(format!("{shown}: keys[{i}]: another key has the same kid"));
            }
            keys.push(key);
        }
        Ok(ClientKeys {
            path: path.to_path_buf(),
            keys,
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jwks_files_are_checked_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = include_str!("../../tests/fixtures/rsa-client.jwks.json");
        let keys = ClientKeys::load(&write(d, "good.json", good)).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].kid.as_deref(), Some("rsa-1"));
        let err = |name: &str, text: &str| ClientKeys::load(&write(d, name, text)).unwrap_err();
        assert!(
            err("a.json", "{").contains("is not JSON"),
            "{}",
            err("a.json", "{")
        );
        assert!(err("b.json", "{}").contains("no \"keys\" array"));
        assert!(err("c.json", r#"{"keys":[]}"#).contains("holds no key"));
        let private = good.replacen("\"kty\"", "\"d\": \"AAAA\", \"kty\"", 1);
        let e = err("d.json", &private);
        assert!(
            e.contains("keys[0]: the JWK holds private or symmetric key material"),
            "{e}"
        );
        assert!(e.contains("d.json"), "{e}");
        let v: Value = serde_json::from_str(good).unwrap();
        let twice = serde_json::json!({"keys": [v["keys"][0], v["keys"][0]]}).to_string();
        assert!(err("e.json", &twice).contains("keys[1]: another key has the same kid"));
        assert!(
            ClientKeys::load(&d.join("missing.json"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
