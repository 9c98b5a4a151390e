//! Compact JWS (RFC 7515 section 7.1): `base64url(header) . base64url(payload)
//! . base64url(signature)`, the signature over the first two parts as sent.

use serde::Serialize;

use super::b64;
use super::keys::SigningKey;

/// `claims` signed by `key`, with the protected header `{"alg", "kid", "typ"}`.
/// `typ` names what the JWT is for (RFC 8725 section 3.11): `"JWT"` for
/// assertions and ID tokens, so one kind is never taken for another by a
/// verifier that checks it.
pub fn compact(key: &SigningKey, typ: &'static str, claims: &impl Serialize) -> String {
    // Every value is fixed ASCII or base64url: nothing to escape.
    let header = format!(
        r#"{{"alg":"{}","kid":"{}","typ":"{typ}"}}"#,
        key.alg().as_str(),
        key.kid()
    );
    let payload = serde_json::to_vec(claims).expect("JWT claims serialise");
    let mut out = String::with_capacity(64 + header.len() + payload.len() * 4 / 3 + 512);
    out.push_str(&b64(header.as_bytes()));
    out.push('.');
    out.push_str(&b64(&payload));
    let signature = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&b64(&signature));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Alg;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{self, UnparsedPublicKey};

    fn parts(jws: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
        let p: Vec<&str> = jws.split('.').collect();
        assert_eq!(p.len(), 3, "{jws}");
        let json = |s: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
        (
            json(p[0]),
            json(p[1]),
            URL_SAFE_NO_PAD.decode(p[2]).unwrap(),
        )
    }

    #[test]
    fn every_algorithm_signs_what_ring_verifies() {
        for alg in [Alg::Es256, Alg::EdDsa, Alg::Rs256] {
            let key = SigningKey::from_pem(&crate::jose::keys::test_pem(alg)).unwrap();
            let jws = compact(&key, "JWT", &serde_json::json!({"sub": "alice", "n": 1}));
            let (header, claims, sig) = parts(&jws);
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["kid"], key.kid());
            assert_eq!(header["typ"], "JWT");
            assert_eq!(claims["sub"], "alice");
            let input = &jws[..jws.rfind('.').unwrap()];
            let public = key.public_key_bytes();
            let ok = match alg {
                Alg::Es256 => {
                    assert_eq!(sig.len(), 64, "r || s, not DER (RFC 7518 section 3.4)");
                    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public)
                        .verify(input.as_bytes(), &sig)
                }
                Alg::EdDsa => UnparsedPublicKey::new(&signature::ED25519, &public)
                    .verify(input.as_bytes(), &sig),
                Alg::Rs256 => {
                    UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &public)
                        .verify(input.as_bytes(), &sig)
                }
            };
            assert!(ok.is_ok(), "{alg} signature does not verify");
        }
    }
}
