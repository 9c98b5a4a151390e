//! JOSE for whosthat: signing keys (PEM, ES256 / RS256 / EdDSA), their public
//! JWKs with RFC 7638 thumbprints as `kid`, and compact JWS (RFC 7515).
//!
//! ring does the cryptography (it is already here for TLS, and its RSA is
//! constant time); this module only frames it: base64url parts joined by dots,
//! and a handful of JSON members per key.
//!
//! - [`keys`]: loading PEM private keys, the configured [`keys::KeySet`], keygen.
//! - [`jwks`]: public JWKs ([`jwks::PublicJwk`]), their thumbprints, the JWKS document.
//! - [`sign`]: compact JWS signed by a [`keys::SigningKey`].
//!
//! - [`verify`]: the verification of compact JWS the gateway is handed (DPoP
//!   proofs, RFC 9449; client assertions, RFC 7523), signatures by ring as
//!   well, with every claim rule (the `jsonwebtoken` crate gives the JWK
//!   type); [`thumbprint`] gives every key's RFC 7638 thumbprint.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) mod client_keys;
pub(crate) mod jwks;
pub mod keys;
pub mod sign;
pub(crate) mod thumbprint;
pub mod verify;

pub use jwks::PublicJwk;
pub use keys::{KeySet, SigningKey};
pub use thumbprint::jwk_thumbprint;

/// A JWS algorithm whosthat signs with (RFC 7518 section 3.1, RFC 8037 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA with P-256 and SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: what OpenID Connect clients expect by default.
    Rs256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Parses an `alg` value (exactly: JOSE names are case-sensitive).
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "ES256" => Some(Alg::Es256),
            "RS256" => Some(Alg::Rs256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }

    /// The hash an OpenID Connect `at_hash` is taken with: the signature's
    /// (OIDC Core 3.1.3.6); SHA-512 for Ed25519, as relying-party libraries do.
    pub fn oidc_hash(self) -> &'static ring::digest::Algorithm {
        match self {
            Alg::Es256 | Alg::Rs256 => &ring::digest::SHA256,
            Alg::EdDsa => &ring::digest::SHA512,
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// base64url without padding (RFC 7515 section 2).
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The left half of the `alg`'s hash of `value`, base64url: `at_hash`
/// (OIDC Core 3.1.3.6).
pub fn half_hash(alg: Alg, value: &str) -> String {
    let digest = ring::digest::digest(alg.oidc_hash(), value.as_bytes());
    let bytes = digest.as_ref();
    b64(&bytes[..bytes.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_round_trip() {
        for a in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            assert_eq!(Alg::parse(a.as_str()), Some(a));
        }
        assert_eq!(Alg::parse("es256"), None);
        assert_eq!(Alg::parse("none"), None);
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_hash() {
        // OIDC Core appendix A.3: this access token's at_hash under RS256.
        assert_eq!(
            half_hash(Alg::Rs256, "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
        // SHA-512 for Ed25519: 32 bytes, 43 characters.
        assert_eq!(half_hash(Alg::EdDsa, "x").len(), 43);
    }
}
