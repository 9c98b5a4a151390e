//! Public JSON Web Keys (RFC 7517, RFC 7518 section 6, RFC 8037 section 2), their
//! RFC 7638 thumbprints, and the JWKS document `/.well-known/jwks.json` serves.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::{Alg, b64};

/// A public key as a JWK carries it: the numbers only, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    /// `kty: EC`, `crv: P-256`: the point's coordinates, 32 bytes each.
    P256 { x: Vec<u8>, y: Vec<u8> },
    /// `kty: RSA`: modulus and public exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// `kty: OKP`, `crv: Ed25519`: the 32-byte public key.
    Ed25519 { x: Vec<u8> },
}

/// Why a JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("the JWK is not a JSON object")]
    NotAnObject,
    #[error("the JWK's `kty` is missing or not EC, RSA or OKP")]
    UnsupportedKeyType,
    #[error("the JWK's `crv` is missing or not P-256 (EC) or Ed25519 (OKP)")]
    UnsupportedCurve,
    #[error("the JWK member `{0}` is missing or not base64url of the right length")]
    BadMember(&'static str),
    #[error("the JWK holds private key material (`{0}`)")]
    PrivateKey(&'static str),
}

/// Members that only a private key has (RFC 7518 sections 6.2.2, 6.3.2, 6.4; RFC 8037).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

impl PublicJwk {
    /// The `kty` member.
    pub fn kty(&self) -> &'static str {
        match self {
            PublicJwk::P256 { .. } => "EC",
            PublicJwk::Rsa { .. } => "RSA",
            PublicJwk::Ed25519 { .. } => "OKP",
        }
    }

    /// The algorithm this key signs with here.
    pub fn alg(&self) -> Alg {
        match self {
            PublicJwk::P256 { .. } => Alg::Es256,
            PublicJwk::Rsa { .. } => Alg::Rs256,
            PublicJwk::Ed25519 { .. } => Alg::EdDsa,
        }
    }

    /// The JWK's required members as (name, value) in lexicographic order: the
    /// input of the RFC 7638 thumbprint, and the core of the published JWK.
    fn required_members(&self) -> Vec<(&'static str, String)> {
        match self {
            PublicJwk::P256 { x, y } => vec![
                ("crv", "P-256".into()),
                ("kty", "EC".into()),
                ("x", b64(x)),
                ("y", b64(y)),
            ],
            PublicJwk::Rsa { n, e } => {
                vec![("e", b64(e)), ("kty", "RSA".into()), ("n", b64(n))]
            }
            PublicJwk::Ed25519 { x } => vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", b64(x)),
            ],
        }
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url) of the required members
    /// (see [`super::thumbprint`]): `kid` of the keys published here, `jkt`
    /// of a DPoP key (RFC 9449 section 6).
    pub fn thumbprint(&self) -> String {
        let members = self.required_members();
        let members: Vec<(&str, &str)> = members.iter().map(|(k, v)| (*k, v.as_str())).collect();
        super::thumbprint::of_members(&members)
    }

    /// The JWK as published: the public members, `kid`, `alg` and `use: sig`.
    pub fn to_json(&self, kid: &str) -> Value {
        let mut m = Map::new();
        for (k, v) in self.required_members() {
            m.insert(k.into(), Value::String(v));
        }
        m.insert("kid".into(), json!(kid));
        m.insert("alg".into(), json!(self.alg().as_str()));
        m.insert("use".into(), json!("sig"));
        Value::Object(m)
    }

    /// Reads a public JWK (a JWKS entry, a DPoP proof's `jwk` header). Private
    /// members are refused (RFC 9449 section 4.2: a proof's key is public), as
    /// are key types and curves whosthat does not sign with. Values must be
    /// canonical base64url (no padding, no stray bits) and integers minimal, so
    /// the thumbprint of what is read equals the thumbprint of what was sent.
    pub fn from_json(v: &Value) -> Result<PublicJwk, JwkError> {
        let obj = v.as_object().ok_or(JwkError::NotAnObject)?;
        if let Some(p) = PRIVATE_MEMBERS.iter().find(|p| obj.contains_key(**p)) {
            return Err(JwkError::PrivateKey(p));
        }
        let member = |name: &'static str| -> Result<Vec<u8>, JwkError> {
            obj.get(name)
                .and_then(Value::as_str)
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .ok_or(JwkError::BadMember(name))
        };
        let crv = obj.get("crv").and_then(Value::as_str);
        match obj.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                if crv != Some("P-256") {
                    return Err(JwkError::UnsupportedCurve);
                }
                let (x, y) = (member("x")?, member("y")?);
                if x.len() != 32 {
                    return Err(JwkError::BadMember("x"));
                }
                if y.len() != 32 {
                    return Err(JwkError::BadMember("y"));
                }
                Ok(PublicJwk::P256 { x, y })
            }
            Some("RSA") => {
                let (n, e) = (member("n")?, member("e")?);
                // RFC 7518 section 6.3.1: the minimum number of octets.
                if n.first().is_none_or(|b| *b == 0) {
                    return Err(JwkError::BadMember("n"));
                }
                if e.first().is_none_or(|b| *b == 0) {
                    return Err(JwkError::BadMember("e"));
                }
                Ok(PublicJwk::Rsa { n, e })
            }
            Some("OKP") => {
                if crv != Some("Ed25519") {
                    return Err(JwkError::UnsupportedCurve);
                }
                let x = member("x")?;
                if x.len() != 32 {
                    return Err(JwkError::BadMember("x"));
                }
                Ok(PublicJwk::Ed25519 { x })
            }
            _ => Err(JwkError::UnsupportedKeyType),
        }
    }
}

/// The JWKS document (RFC 7517 section 5) of `keys`: `(public key, kid)` pairs.
pub fn document<'a>(keys: impl IntoIterator<Item = (&'a PublicJwk, &'a str)>) -> String {
    let keys: Vec<Value> = keys.into_iter().map(|(k, kid)| k.to_json(kid)).collect();
    json!({ "keys": keys }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1's example key and its thumbprint.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rsa_thumbprint_is_rfc7638s_example() {
        let jwk = PublicJwk::from_json(&json!({
            "kty": "RSA",
            "n": RFC7638_N,
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ed25519_thumbprint_is_rfc8037s_example() {
        // RFC 8037 appendix A.3.
        let jwk = PublicJwk::from_json(&json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn published_jwk_reads_back_the_same() {
        let jwk = PublicJwk::P256 {
            x: vec![1; 32],
            y: vec![2; 32],
        };
        let v = jwk.to_json("k1");
        assert_eq!(v["kty"], "EC");
        assert_eq!(v["crv"], "P-256");
        assert_eq!(v["alg"], "ES256");
        assert_eq!(v["use"], "sig");
        assert_eq!(v["kid"], "k1");
        assert_eq!(PublicJwk::from_json(&v).unwrap(), jwk);
        let doc: Value = serde_json::from_str(&document([(&jwk, "k1")])).unwrap();
        assert_eq!(doc["keys"][0], v);
    }

    #[test]
    fn bad_jwks_are_refused() {
        let ec = |extra: Value| {
            let mut v = json!({"kty": "EC", "crv": "P-256", "x": b64([1; 32]), "y": b64([2; 32])});
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            PublicJwk::from_json(&v)
        };
        assert!(ec(json!({})).is_ok());
        assert_eq!(ec(json!({"d": "AA"})), Err(JwkError::PrivateKey("d")));
        assert_eq!(ec(json!({"crv": "P-384"})), Err(JwkError::UnsupportedCurve));
        assert_eq!(
            ec(json!({"x": b64([1; 31])})),
            Err(JwkError::BadMember("x"))
        );
        // Padding is not base64url as JOSE has it.
        assert_eq!(
            ec(json!({"y": format!("{}=", b64([2; 32]))})),
            Err(JwkError::BadMember("y"))
        );
        assert_eq!(ec(json!({"kty": "oct"})), Err(JwkError::UnsupportedKeyType));
        let rsa = json!({"kty": "RSA", "n": b64([0, 1, 2]), "e": "AQAB"});
        assert_eq!(PublicJwk::from_json(&rsa), Err(JwkError::BadMember("n")));
        assert_eq!(
            PublicJwk::from_json(&json!("x")),
            Err(JwkError::NotAnObject)
        );
    }
}
