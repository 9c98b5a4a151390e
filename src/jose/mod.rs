//! JOSE for whosthat: the JWK thumbprint (RFC 7638) and the verification of
//! compact JWS (RFC 7515) the gateway is handed: DPoP proofs (RFC 9449) and
//! client assertions (RFC 7523). Signatures are checked by the `jsonwebtoken`
//! crate (RustCrypto backend); parsing and every claim rule are here.

pub mod thumbprint;
pub mod verify;

pub use thumbprint::jwk_thumbprint;
