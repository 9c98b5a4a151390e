//! JWK thumbprints (RFC 7638): the SHA-256 of a key's required members, in
//! lexicographic order, without whitespace; base64url without padding. DPoP
//! binds tokens to this value (`cnf.jkt`, RFC 9449 section 6.1).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use sha2::{Digest, Sha256};

/// A JSON string literal (escaped: the members are base64url in valid keys,
/// but a thumbprint input must never be malformed JSON).
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn curve_name(c: &EllipticCurve) -> &'static str {
    match c {
        EllipticCurve::P256 => "P-256",
        EllipticCurve::P384 => "P-384",
        EllipticCurve::P521 => "P-521",
        EllipticCurve::Ed25519 => "Ed25519",
        _ => "unknown",
    }
}

/// RFC 7638 section 3: a key's required members (section 3.2), given in
/// lexicographic order, as JSON with no whitespace.
fn canonical(members: &[(&str, &str)]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{}", js(k), js(v)))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The thumbprint of a canonical input: SHA-256, base64url without padding.
fn digest(input: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
}

/// The RFC 7638 SHA-256 thumbprint of a key given by its required members in
/// lexicographic order: what the gateway's own keys ([`super::PublicJwk`])
/// are named by.
pub(crate) fn of_members(members: &[(&str, &str)]) -> String {
    digest(&canonical(members))
}

/// The RFC 7638 input: section 3.2 names the required members per key type.
fn thumbprint_input(jwk: &Jwk) -> String {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(k) => canonical(&[
            ("crv", curve_name(&k.curve)),
            ("kty", "EC"),
            ("x", &k.x),
            ("y", &k.y),
        ]),
        AlgorithmParameters::RSA(k) => canonical(&[("e", &k.e), ("kty", "RSA"), ("n", &k.n)]),
        AlgorithmParameters::OctetKey(k) => canonical(&[("k", &k.value), ("kty", "oct")]),
        AlgorithmParameters::OctetKeyPair(k) => {
            canonical(&[("crv", curve_name(&k.curve)), ("kty", "OKP"), ("x", &k.x)])
        }
        // A key type RFC 7638 does not define: every member, sorted (the map
        // is ordered). whosthat never binds to such a key (see `verify`).
        AlgorithmParameters::Other(k) => {
            serde_json::to_string(&k.fields).expect("a JSON map serialises")
        }
        _ => String::new(),
    }
}

/// The RFC 7638 SHA-256 thumbprint of `jwk` (a DPoP proof's key, a client's
/// registered key), base64url without padding.
pub fn jwk_thumbprint(jwk: &Jwk) -> String {
    digest(&thumbprint_input(jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example() {
        // RFC 7638 section 3.1.
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            jwk_thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ec_members_in_order_and_optional_members_ignored() {
        let a: Jwk = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
        )
        .unwrap();
        let b: Jwk = serde_json::from_str(
            r#"{"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k","alg":"ES256","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","crv":"P-256","kty":"EC"}"#,
        )
        .unwrap();
        assert_eq!(jwk_thumbprint(&a), jwk_thumbprint(&b));
        assert_eq!(
            thumbprint_input(&a),
            r#"{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#
        );
        assert_eq!(jwk_thumbprint(&a).len(), 43);
    }
}
