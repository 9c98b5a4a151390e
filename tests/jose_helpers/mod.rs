//! A DPoP client and a `private_key_jwt` signer for the tests, built on the
//! `jsonwebtoken` crate (signing) and `rcgen` (fresh P-256 keys): not the
//! gateway's code. The RSA key is a fixture (`tests/fixtures/rsa-client.*`):
//! generating one per test would cost seconds.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const RSA_JWKS: &str = include_str!("../fixtures/rsa-client.jwks.json");
pub const RSA_KID: &str = "rsa-1";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A unique `jti`.
pub fn fresh_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A key pair: the signer, its public JWK, and its algorithm.
pub struct Key {
    pub alg: Algorithm,
    pub signer: EncodingKey,
    pub jwk: Value,
    /// PKCS#8 PEM of the private key (for the Python clients).
    pub pem: String,
}

impl Key {
    /// A fresh ES256 (P-256) key.
    pub fn es256() -> Key {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        Key {
            alg: Algorithm::ES256,
            signer: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
            }),
            pem: kp.serialize_pem(),
        }
    }

    /// The fixture RS256 key (2048 bits).
    pub fn rs256() -> Key {
        let jwks: Value = serde_json::from_str(RSA_JWKS).unwrap();
        Key {
            alg: Algorithm::RS256,
            signer: EncodingKey::from_rsa_der(include_bytes!("../fixtures/rsa-client.der")),
            jwk: jwks["keys"][0].clone(),
            pem: include_str!("../fixtures/rsa-client.pem").to_string(),
        }
    }

    /// The JWK with a `kid`, as a client registers it.
    pub fn jwk_with_kid(&self, kid: &str) -> Value {
        let mut j = self.jwk.clone();
        j["kid"] = json!(kid);
        j
    }

    /// A JWKS file's text holding this key's public part under `kid`.
    pub fn jwks(&self, kid: &str) -> String {
        json!({ "keys": [self.jwk_with_kid(kid)] }).to_string()
    }

    /// RFC 7638 thumbprint, computed here independently of the gateway.
    pub fn thumbprint(&self) -> String {
        let input = match self.jwk["kty"].as_str().unwrap() {
            "EC" => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                self.jwk["x"].as_str().unwrap(),
                self.jwk["y"].as_str().unwrap()
            ),
            _ => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                self.jwk["e"].as_str().unwrap(),
                self.jwk["n"].as_str().unwrap()
            ),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
    }

    /// A JWS over `claims` with this key, the header built by `header`.
    pub fn sign(&self, claims: &Value, header: impl FnOnce(&mut Header)) -> String {
        let mut h = Header::new(self.alg);
        header(&mut h);
        encode(&h, claims, &self.signer).unwrap()
    }

    /// A DPoP proof (RFC 9449 section 4.2) for `method` `url`, naming
    /// `access_token` (`ath`) when given.
    pub fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        self.proof_with(method, url, access_token, |_| {})
    }

    /// A proof whose claims `tweak` may change.
    pub fn proof_with(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        tweak: impl FnOnce(&mut Value),
    ) -> String {
        let mut claims = json!({
            "jti": fresh_jti(),
            "htm": method,
            "htu": url,
            "iat": now(),
        });
        if let Some(t) = access_token {
            claims["ath"] = json!(ath(t));
        }
        tweak(&mut claims);
        self.sign(&claims, |h| {
            h.typ = Some("dpop+jwt".into());
            h.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        })
    }

    /// A `private_key_jwt` client assertion (RFC 7523 section 3) for `client`
    /// with audience `aud`.
    pub fn assertion(&self, client: &str, aud: &str, kid: Option<&str>) -> String {
        self.assertion_with(client, aud, kid, |_| {})
    }

    pub fn assertion_with(
        &self,
        client: &str,
        aud: &str,
        kid: Option<&str>,
        tweak: impl FnOnce(&mut Value),
    ) -> String {
        let mut claims = json!({
            "iss": client, "sub": client, "aud": aud,
            "iat": now(), "exp": now() + 120, "jti": fresh_jti(),
        });
        tweak(&mut claims);
        self.sign(&claims, |h| h.kid = kid.map(str::to_string))
    }
}

/// `ath`: base64url(SHA-256(token)).
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}
