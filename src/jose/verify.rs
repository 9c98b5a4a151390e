//! Verifying compact JWS (RFC 7515 section 7.1) signed with ES256 or RS256
//! (RFC 7518 sections 3.3, 3.4) against public JWKs (RFC 7517), and the rules of
//! the two JWTs whosthat is handed: DPoP proofs (RFC 9449 section 4.3) and
//! client assertions (RFC 7523 section 3, OpenID Connect Core section 9).
//!
//! Only asymmetric algorithms, and only the two every client library has: `none`,
//! HMAC and everything else are refused before any key is looked at, so no
//! algorithm confusion is possible. A key is taken only from where the rules
//! say (the proof's own `jwk` header, or the client's registered JWKS), never
//! from `jku`/`x5u`. Claims are checked before the signature, so a malformed or
//! stale JWT costs no signature check. Every refusal is a fixed description,
//! safe to send back: nothing of the input is echoed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, RSAKeyParameters, RSAKeyType,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwk_thumbprint;

/// The algorithms accepted, for `WWW-Authenticate: DPoP algs="..."` (RFC 9449
/// section 7.1) and server metadata.
pub const ALGS: &str = "ES256 RS256";
pub const ALG_NAMES: [&str; 2] = ["ES256", "RS256"];
/// A JWS longer than this is refused unread (an RSA-4096 proof is about 1.5 KB).
pub const MAX_JWS_BYTES: usize = 8 * 1024;
/// RSA moduli from 2048 (RFC 7518 section 3.3: at least) to 4096 bits.
const MIN_RSA_BYTES: usize = 256;
const MAX_RSA_BYTES: usize = 512;
/// The longest `jti` accepted (it is remembered, as a hash, until it expires).
pub const MAX_JTI_BYTES: usize = 256;
/// `typ` of a DPoP proof (RFC 9449 section 4.2).
pub const DPOP_TYP: &str = "dpop+jwt";
/// A DPoP proof is accepted for this long after its `iat` (RFC 9449 section 11.1:
/// a brief window; its `jti` is remembered that long).
pub const DPOP_MAX_AGE_SECS: u64 = 60;
/// ... and this far before it (client clocks run a little ahead).
pub const DPOP_MAX_AHEAD_SECS: u64 = 10;
/// A client assertion may expire at most this far ahead (RFC 7523 section 3:
/// the server may reject a JWT with an unreasonably far `exp`).
pub const ASSERTION_MAX_LIFETIME_SECS: u64 = 300;
/// Clock skew tolerated on a client assertion's `exp`, `nbf` and `iat`.
pub const ASSERTION_SKEW_SECS: u64 = 30;

/// Members only a private or symmetric key has (RFC 7518 sections 6.2.2, 6.3.2, 6.4).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWK, JWS or JWT was refused: a fixed description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

/// The two signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    Rs256,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "ES256" => Some(Alg::Es256),
            "RS256" => Some(Alg::Rs256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
        }
    }
}

/// A public key from a JWK: EC on P-256 (for ES256) or RSA of 2048 to 4096
/// bits (for RS256).
#[derive(Clone)]
pub struct PublicJwk {
    pub alg: Alg,
    pub kid: Option<String>,
    pub jwk: Jwk,
    key: VerifyKey,
}

/// The key material a signature is checked with, by ring (as whosthat's own
/// signatures are made): a DPoP proof is checked on every request, and ring's
/// P-256 verification is several times faster than the pure-Rust backend
/// (`cargo bench --bench dpop`).
#[derive(Clone)]
enum VerifyKey {
    /// The uncompressed SEC1 point, `0x04 || x || y`; ring checks it is on the curve.
    Es256(Vec<u8>),
    /// Modulus and exponent, big-endian.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

impl VerifyKey {
    /// Whether `signature` (the JWS's raw bytes: `r || s` for ES256, RFC 7518
    /// section 3.4) signs `message`.
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyKey::Es256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
            VerifyKey::Rs256 { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
        }
    }
}

impl std::fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicJwk")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Exactly `len` bytes of canonical base64url (no padding, no stray bits).
fn b64_exact(v: Option<&str>, len: usize, what: &'static str) -> Result<Vec<u8>, Refused> {
    let bytes = v
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or(Refused(what))?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(Refused(what))
    }
}

/// An unsigned big-endian integer in canonical base64url: no leading zero byte
/// (RFC 7518 section 6.3.1.1), at most `max` bytes.
fn b64_uint(v: Option<&str>, max: usize, what: &'static str) -> Result<Vec<u8>, Refused> {
    let bytes = v
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or(Refused(what))?;
    if bytes.is_empty() || bytes[0] == 0 || bytes.len() > max {
        return Err(Refused(what));
    }
    Ok(bytes)
}

impl PublicJwk {
    /// Reads a JWK (RFC 7517 section 4). Refused: anything holding private or
    /// symmetric key material, key types and curves other than EC P-256 and RSA,
    /// RSA outside 2048..4096 bits, non-canonical encodings, and an `alg` or
    /// `use` that does not fit.
    pub fn from_json(v: &Value) -> Result<PublicJwk, Refused> {
        let m: &Map<String, Value> = v.as_object().ok_or(Refused("the JWK is not an object"))?;
        if PRIVATE_MEMBERS.iter().any(|k| m.contains_key(*k)) {
            return Err(Refused("the JWK holds private or symmetric key material"));
        }
        let s = |k: &str| m.get(k).and_then(Value::as_str);
        let (alg, algorithm, key) = match s("kty") {
            Some("EC") => {
                if s("crv") != Some("P-256") {
                    return Err(Refused("only EC keys on the P-256 curve are accepted"));
                }
                let x = b64_exact(s("x"), 32, "the EC key's x is not 32 bytes of base64url")?;
                let y = b64_exact(s("y"), 32, "the EC key's y is not 32 bytes of base64url")?;
                let params = EllipticCurveKeyParameters {
                    key_type: EllipticCurveKeyType::EC,
                    curve: EllipticCurve::P256,
                    x: URL_SAFE_NO_PAD.encode(&x),
                    y: URL_SAFE_NO_PAD.encode(&y),
                };
                let point = [&[4u8][..], &x, &y].concat();
                (
                    Alg::Es256,
                    AlgorithmParameters::EllipticCurve(params),
                    VerifyKey::Es256(point),
                )
            }
            Some("RSA") => {
                let n = b64_uint(s("n"), MAX_RSA_BYTES, "the RSA modulus is malformed")?;
                if n.len() < MIN_RSA_BYTES {
                    return Err(Refused("RSA keys must have at least 2048 bits"));
                }
                let e = b64_uint(s("e"), 4, "the RSA exponent is malformed")?;
                let params = RSAKeyParameters {
                    key_type: RSAKeyType::RSA,
                    n: URL_SAFE_NO_PAD.encode(&n),
                    e: URL_SAFE_NO_PAD.encode(&e),
                };
                (
                    Alg::Rs256,
                    AlgorithmParameters::RSA(params),
                    VerifyKey::Rs256 { n, e },
                )
            }
            Some("oct") => return Err(Refused("symmetric keys are not accepted")),
            Some(_) => return Err(Refused("only EC (P-256) and RSA keys are accepted")),
            None => return Err(Refused("the JWK has no kty")),
        };
        if m.get("alg")
            .is_some_and(|a| a.as_str() != Some(alg.as_str()))
        {
            return Err(Refused(
                "the JWK's alg is not ES256 for EC or RS256 for RSA",
            ));
        }
        if m.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            return Err(Refused("the JWK is not for signatures (use)"));
        }
        let kid = match m.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Refused("the JWK's kid is not a string")),
        };
        Ok(PublicJwk {
            alg,
            kid: kid.clone(),
            jwk: Jwk {
                common: CommonParameters {
                    key_id: kid,
                    ..CommonParameters::default()
                },
                algorithm,
            },
            key,
        })
    }

    /// Checks that the key can verify at all (an EC point on the curve, an RSA
    /// key ring takes): done once for keys from a file, so a bad one is refused
    /// with the config rather than failing every signature later.
    pub fn check_usable(&self) -> Result<(), Refused> {
        const BAD: Refused = Refused("the key is not a valid public key");
        match &self.key {
            VerifyKey::Es256(point) => {
                // ring only says "not verified"; the pure-Rust backend tells an
                // off-curve point (an error) from a wrong signature (`false`).
                let (x, y) = point[1..].split_at(32);
                let key = DecodingKey::from_ec_components(
                    &URL_SAFE_NO_PAD.encode(x),
                    &URL_SAFE_NO_PAD.encode(y),
                )
                .map_err(|_| BAD)?;
                let zeros = URL_SAFE_NO_PAD.encode([1u8; 64]);
                jsonwebtoken::crypto::verify(&zeros, b"probe", &key, Algorithm::ES256)
                    .map(|_| ())
                    .map_err(|_| BAD)
            }
            VerifyKey::Rs256 { n, e } => {
                // What ring's RSA_PKCS1_2048_8192_SHA256 takes besides the size
                // (checked when read): an odd modulus, an odd exponent >= 3.
                let e = e.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
                let odd_n = n.last().is_some_and(|b| b % 2 == 1);
                if odd_n && e >= 3 && e % 2 == 1 {
                    Ok(())
                } else {
                    Err(BAD)
                }
            }
        }
    }

    /// RFC 7638 thumbprint (`cnf.jkt`).
    pub fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.jwk)
    }
}

/// The JOSE header members whosthat reads (RFC 7515 section 4.1). A member
/// given twice is refused by the parser.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub jwk: Option<Value>,
    /// Extensions that must be understood: whosthat understands none
    /// (RFC 7515 section 4.1.11).
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// A compact JWS, split and decoded, its signature not yet checked.
pub struct Compact<'a> {
    signing_input: &'a str,
    signature: &'a str,
    pub header: Header,
    payload: Vec<u8>,
}

/// Splits a compact JWS into its three base64url parts (RFC 7515 section 7.1).
pub fn parse_compact(token: &str) -> Result<Compact<'_>, Refused> {
    const MALFORMED: Refused = Refused("not a compact JWS");
    if token.len() > MAX_JWS_BYTES {
        return Err(Refused("the JWS is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let header_json = URL_SAFE_NO_PAD.decode(h).map_err(|_| MALFORMED)?;
    let header: Header = serde_json::from_slice(&header_json)
        .map_err(|_| Refused("the JWS header is malformed or lacks alg"))?;
    if header.crit.is_some() {
        return Err(Refused("the JWS names critical extensions (crit)"));
    }
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| MALFORMED)?;
    if sig.is_empty() {
        return Err(Refused("the JWS is unsigned"));
    }
    Ok(Compact {
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: sig,
        header,
        payload,
    })
}

impl Compact<'_> {
    /// The header's `alg`, if one of the two accepted.
    pub fn alg(&self) -> Result<Alg, Refused> {
        Alg::parse(&self.header.alg).ok_or(Refused("the alg is not supported (ES256, RS256)"))
    }

    /// Checks the signature with `key`, whose type must fit the header's `alg`.
    pub fn verify_with(&self, key: &PublicJwk) -> Result<(), Refused> {
        if self.alg()? != key.alg {
            return Err(Refused("the alg does not fit the key"));
        }
        let valid = URL_SAFE_NO_PAD
            .decode(self.signature)
            .is_ok_and(|sig| key.key.verify(self.signing_input.as_bytes(), &sig));
        if valid {
            Ok(())
        } else {
            Err(Refused("the signature is invalid"))
        }
    }

    /// The payload as a JSON claims set.
    fn claims<T: serde::de::DeserializeOwned>(&self, what: Refused) -> Result<T, Refused> {
        serde_json::from_slice(&self.payload).map_err(|_| what)
    }
}

/// A NumericDate (RFC 7519 section 2): seconds, possibly fractional, not negative.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

fn valid_jti(jti: &str) -> bool {
    !jti.is_empty() && jti.len() <= MAX_JTI_BYTES
}

// ---------------------------------------------------------------- DPoP

/// The request a DPoP proof is checked against.
pub struct DpopRequest<'a> {
    /// The HTTP method, as sent.
    pub method: &'a str,
    /// The request URL, normalised by [`normalize_url`].
    pub url: &'a str,
    /// At a resource: the access token the request carries (`ath`).
    pub access_token: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

/// A valid proof: its key's thumbprint, and what replay detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
}

impl DpopProof {
    /// Until when (unix seconds) the proof could be accepted: its `jti` is
    /// remembered that long.
    pub fn replay_window_end(&self) -> u64 {
        self.iat.saturating_add(DPOP_MAX_AGE_SECS).saturating_add(1)
    }
}

#[derive(Deserialize)]
struct DpopClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: Value,
    #[serde(default)]
    ath: Option<String>,
}

/// `ath`: base64url(SHA-256(the access token)) (RFC 9449 section 4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Checks a DPoP proof (RFC 9449 section 4.3, steps 2 to 12, without server
/// nonces): a JWS with `typ` dpop+jwt, ES256 or RS256, signed by the public
/// key in its `jwk` header; `htm` and `htu` those of the request; `iat` within
/// the window; at a resource, `ath` the hash of the access token. Replay of
/// the `jti` is the caller's to check (it needs the store).
pub fn check_dpop_proof(proof: &str, req: &DpopRequest<'_>) -> Result<DpopProof, Refused> {
    let c = parse_compact(proof)?;
    if c.header.typ.as_deref() != Some(DPOP_TYP) {
        return Err(Refused("the proof's typ is not dpop+jwt"));
    }
    c.alg()?;
    let claims: DpopClaims = c.claims(Refused(
        "the proof lacks jti, htm, htu or iat, or they are malformed",
    ))?;
    if !valid_jti(&claims.jti) {
        return Err(Refused("the proof's jti is empty or too long"));
    }
    if claims.htm != req.method {
        return Err(Refused("htm does not match the request method"));
    }
    if normalize_htu(&claims.htu).as_deref() != Some(req.url) {
        return Err(Refused("htu does not match the request URL"));
    }
    let iat = numeric_date(&claims.iat).ok_or(Refused("the proof's iat is not a date"))?;
    if iat.saturating_add(DPOP_MAX_AGE_SECS) < req.now {
        return Err(Refused("the proof is too old (iat)"));
    }
    if iat > req.now.saturating_add(DPOP_MAX_AHEAD_SECS) {
        return Err(Refused("the proof's iat is in the future"));
    }
    if let Some(token) = req.access_token
        && claims.ath.as_deref() != Some(access_token_hash(token).as_str())
    {
        return Err(Refused("ath does not match the access token"));
    }
    let jwk = c
        .header
        .jwk
        .as_ref()
        .ok_or(Refused("the proof has no jwk header"))?;
    let key = PublicJwk::from_json(jwk)?;
    c.verify_with(&key)?;
    Ok(DpopProof {
        jkt: key.thumbprint(),
        jti: claims.jti,
        iat,
    })
}

/// `scheme://authority/path` as DPoP compares URLs (RFC 9449 section 4.3 step
/// 9, RFC 3986 sections 6.2.2 and 6.2.3): scheme and host lower-cased, the
/// scheme's default port dropped, an empty path made `/`, percent-encoded
/// unreserved characters decoded and other escapes upper-cased. No query.
pub fn normalize_url(scheme: &str, authority: &str, path: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    if let Some(port) = default_port
        && authority.ends_with(port)
    {
        authority.truncate(authority.len() - port.len());
    }
    let mut out = Vec::with_capacity(scheme.len() + 3 + authority.len() + path.len() + 1);
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"://");
    out.extend_from_slice(authority.as_bytes());
    if path.is_empty() {
        out.push(b'/');
    }
    let b = path.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let v = (h * 16 + l) as u8;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v);
            } else {
                const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[
                    b'%',
                    DIGITS[usize::from(v >> 4)],
                    DIGITS[usize::from(v & 15)],
                ]);
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only whole UTF-8 sequences of the input and ASCII were written.
    String::from_utf8(out).unwrap_or_default()
}

/// An `htu` claim normalised like [`normalize_url`], its query and fragment
/// dropped; `None` if it is not an absolute http(s) URL.
pub fn normalize_htu(htu: &str) -> Option<String> {
    let without = htu.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = without.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(normalize_url(scheme, authority, path))
}

// ------------------------------------------------------- client assertions

/// What a client assertion is checked against.
pub struct AssertionCheck<'a> {
    /// The client the assertion must be issued by and about.
    pub client_id: &'a str,
    /// Any of these in `aud` will do (the issuer, the token endpoint URL).
    pub audiences: &'a [&'a str],
    pub now: u64,
}

/// A valid assertion: what replay detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub jti: String,
    pub exp: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: Value,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    jti: String,
}

/// The `iss` of a client assertion, read without any check: it only says which
/// client's keys to check the assertion with.
pub fn assertion_issuer(assertion: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let c = parse_compact(assertion).ok()?;
    c.claims::<Iss>(Refused("")).ok().map(|i| i.iss)
}

/// Checks a client assertion (RFC 7523 sections 2.2 and 3): `iss` = `sub` =
/// the client, `aud` naming this server, `exp` present, in the future and at
/// most [`ASSERTION_MAX_LIFETIME_SECS`] ahead, `nbf` and `iat` not in the
/// future, a `jti`; signed by one of `keys` (the one its `kid` names, else any
/// of the right type). Replay of the `jti` is the caller's to check.
pub fn check_client_assertion(
    assertion: &str,
    keys: &[PublicJwk],
    check: &AssertionCheck<'_>,
) -> Result<Assertion, Refused> {
    let c = parse_compact(assertion)?;
    if c.header.typ.as_deref() == Some(DPOP_TYP) {
        return Err(Refused("a DPoP proof is not a client assertion"));
    }
    let alg = c.alg()?;
    let claims: AssertionClaims = c.claims(Refused(
        "the assertion lacks iss, sub, aud, exp or jti, or they are malformed",
    ))?;
    if claims.iss != check.client_id || claims.sub != check.client_id {
        return Err(Refused(
            "the assertion's iss and sub must both be the client_id",
        ));
    }
    let audience_ok = match &claims.aud {
        Audience::One(a) => check.audiences.contains(&a.as_str()),
        Audience::Many(v) => v.iter().any(|a| check.audiences.contains(&a.as_str())),
    };
    if !audience_ok {
        return Err(Refused(
            "the assertion's aud names neither the issuer nor the token endpoint",
        ));
    }
    let exp = numeric_date(&claims.exp).ok_or(Refused("the assertion's exp is not a date"))?;
    if exp.saturating_add(ASSERTION_SKEW_SECS) <= check.now {
        return Err(Refused("the assertion has expired"));
    }
    if exp
        > check
            .now
            .saturating_add(ASSERTION_MAX_LIFETIME_SECS + ASSERTION_SKEW_SECS)
    {
        return Err(Refused(
            "the assertion's exp is too far ahead (at most 5 minutes)",
        ));
    }
    let not_after_now = |v: &Option<Value>| {
        v.as_ref().is_none_or(|v| {
            numeric_date(v).is_some_and(|t| t <= check.now.saturating_add(ASSERTION_SKEW_SECS))
        })
    };
    if !not_after_now(&claims.nbf) || !not_after_now(&claims.iat) {
        return Err(Refused("the assertion is not valid yet (nbf or iat)"));
    }
    if !valid_jti(&claims.jti) {
        return Err(Refused("the assertion's jti is empty or too long"));
    }
    let kid = c.header.kid.as_deref();
    let mut candidates = keys
        .iter()
        .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
        .peekable();
    if candidates.peek().is_none() {
        return Err(Refused(
            "no registered key of the client fits the assertion's kid and alg",
        ));
    }
    if candidates.any(|k| c.verify_with(k).is_ok()) {
        Ok(Assertion {
            jti: claims.jti,
            exp,
        })
    } else {
        Err(Refused("the signature is invalid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
    use serde_json::json;

    /// A fresh P-256 key: its signer and its public JWK.
    fn es256_key() -> (EncodingKey, Value) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65);
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        });
        (EncodingKey::from_ec_der(&kp.serialize_der()), jwk)
    }

    fn rsa_key() -> (EncodingKey, Value) {
        let der = include_bytes!("../../tests/fixtures/rsa-client.der");
        let jwks: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/rsa-client.jwks.json"))
                .unwrap();
        (EncodingKey::from_rsa_der(der), jwks["keys"][0].clone())
    }

    fn sign(
        alg: Algorithm,
        typ: Option<&str>,
        jwk: Option<&Value>,
        claims: &Value,
        key: &EncodingKey,
    ) -> String {
        let mut h = JwtHeader::new(alg);
        h.typ = typ.map(str::to_string);
        h.jwk = jwk.map(|j| serde_json::from_value(j.clone()).unwrap());
        encode(&h, claims, key).unwrap()
    }

    const URL: &str = "https://gw.example/api/orders";
    const NOW: u64 = 1_900_000_000;

    fn req(token: Option<&str>) -> DpopRequest<'_> {
        DpopRequest {
            method: "GET",
            url: URL,
            access_token: token,
            now: NOW,
        }
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"jti": "j-1", "htm": "GET", "htu": URL, "iat": NOW});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn a_valid_proof_gives_its_key_thumbprint() {
        for (alg, (key, jwk)) in [
            (Algorithm::ES256, es256_key()),
            (Algorithm::RS256, rsa_key()),
        ] {
            let p = sign(alg, Some(DPOP_TYP), Some(&jwk), &claims(json!({})), &key);
            let proof = check_dpop_proof(&p, &req(None)).unwrap();
            let expect = PublicJwk::from_json(&jwk).unwrap().thumbprint();
            assert_eq!(proof.jkt, expect);
            assert_eq!((proof.jti.as_str(), proof.iat), ("j-1", NOW));
            // The query and fragment of htu are ignored, and so are case and
            // default ports.
            let p = sign(
                alg,
                Some(DPOP_TYP),
                Some(&jwk),
                &claims(json!({"htu": "HTTPS://GW.example:443/api/%6Frders?x=1#f"})),
                &key,
            );
            assert!(check_dpop_proof(&p, &req(None)).is_ok());
        }
    }

    #[test]
    fn every_rule_of_the_proof_is_checked() {
        let (key, jwk) = es256_key();
        let ok = |c: Value| {
            sign(
                Algorithm::ES256,
                Some(DPOP_TYP),
                Some(&jwk),
                &claims(c),
                &key,
            )
        };
        let refused = |p: &str, r: &DpopRequest<'_>| check_dpop_proof(p, r).unwrap_err().0;
        assert_eq!(
            refused(&ok(json!({"htm": "POST"})), &req(None)),
            "htm does not match the request method"
        );
        assert_eq!(
            refused(
                &ok(json!({"htu": "https://gw.example/api/other"})),
                &req(None)
            ),
            "htu does not match the request URL"
        );
        assert_eq!(
            refused(
                &ok(json!({"htu": "https://evil.example/api/orders"})),
                &req(None)
            ),
            "htu does not match the request URL"
        );
        assert_eq!(
            refused(&ok(json!({"iat": NOW - DPOP_MAX_AGE_SECS - 1})), &req(None)),
            "the proof is too old (iat)"
        );
        assert!(check_dpop_proof(&ok(json!({"iat": NOW - DPOP_MAX_AGE_SECS})), &req(None)).is_ok());
        assert_eq!(
            refused(
                &ok(json!({"iat": NOW + DPOP_MAX_AHEAD_SECS + 1})),
                &req(None)
            ),
            "the proof's iat is in the future"
        );
        assert_eq!(
            refused(&ok(json!({"jti": ""})), &req(None)),
            "the proof's jti is empty or too long"
        );
        // ath: required and exact where a token is presented.
        let token = "tok-123";
        assert_eq!(
            refused(&ok(json!({})), &req(Some(token))),
            "ath does not match the access token"
        );
        assert_eq!(
            refused(
                &ok(json!({"ath": access_token_hash("other")})),
                &req(Some(token))
            ),
            "ath does not match the access token"
        );
        assert!(
            check_dpop_proof(
                &ok(json!({"ath": access_token_hash(token)})),
                &req(Some(token))
            )
            .is_ok()
        );
        // typ, jwk, alg.
        let c = claims(json!({}));
        assert_eq!(
            refused(
                &sign(Algorithm::ES256, Some("JWT"), Some(&jwk), &c, &key),
                &req(None)
            ),
            "the proof's typ is not dpop+jwt"
        );
        assert_eq!(
            refused(
                &sign(Algorithm::ES256, Some(DPOP_TYP), None, &c, &key),
                &req(None)
            ),
            "the proof has no jwk header"
        );
        let hs = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            refused(
                &sign(Algorithm::HS256, Some(DPOP_TYP), Some(&jwk), &c, &hs),
                &req(None)
            ),
            "the alg is not supported (ES256, RS256)"
        );
        // Signed by another key than the one in the header.
        let (other, _) = es256_key();
        assert_eq!(
            refused(
                &sign(Algorithm::ES256, Some(DPOP_TYP), Some(&jwk), &c, &other),
                &req(None)
            ),
            "the signature is invalid"
        );
        // An RSA jwk with an ES256 signature.
        let (_, rsa_jwk) = rsa_key();
        assert_eq!(
            refused(
                &sign(Algorithm::ES256, Some(DPOP_TYP), Some(&rsa_jwk), &c, &key),
                &req(None)
            ),
            "the alg does not fit the key"
        );
    }

    #[test]
    fn alg_none_and_altered_tokens_are_refused() {
        let (key, jwk) = es256_key();
        let p = sign(
            Algorithm::ES256,
            Some(DPOP_TYP),
            Some(&jwk),
            &claims(json!({})),
            &key,
        );
        let (head, rest) = p.split_once('.').unwrap();
        let (payload, _sig) = rest.split_once('.').unwrap();
        let none_header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": DPOP_TYP, "jwk": jwk}).to_string());
        assert!(check_dpop_proof(&format!("{none_header}.{payload}."), &req(None)).is_err());
        assert!(check_dpop_proof(&format!("{none_header}.{payload}.AAAA"), &req(None)).is_err());
        // A changed payload, same signature.
        let changed = URL_SAFE_NO_PAD.encode(claims(json!({"jti": "j-2"})).to_string());
        let sig = p.rsplit('.').next().unwrap();
        assert_eq!(
            check_dpop_proof(&format!("{head}.{changed}.{sig}"), &req(None))
                .unwrap_err()
                .0,
            "the signature is invalid"
        );
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_JWS_BYTES + 1),
        ] {
            assert!(check_dpop_proof(junk, &req(None)).is_err(), "{junk:.20}");
        }
        // crit is refused; a header member twice is refused.
        let crit = URL_SAFE_NO_PAD.encode(
            json!({"alg": "ES256", "typ": DPOP_TYP, "jwk": jwk, "crit": ["x"], "x": 1}).to_string(),
        );
        assert_eq!(
            check_dpop_proof(&format!("{crit}.{payload}.{sig}"), &req(None))
                .unwrap_err()
                .0,
            "the JWS names critical extensions (crit)"
        );
        let twice = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","alg":"ES256","typ":"dpop+jwt"}"#);
        assert!(check_dpop_proof(&format!("{twice}.{payload}.{sig}"), &req(None)).is_err());
    }

    #[test]
    fn private_or_odd_jwks_are_refused() {
        let (_, jwk) = es256_key();
        let with = |k: &str, v: Value| {
            let mut j = jwk.clone();
            j[k] = v;
            PublicJwk::from_json(&j).map(|_| ())
        };
        assert_eq!(
            with("d", json!("AAAA")),
            Err(Refused("the JWK holds private or symmetric key material"))
        );
        assert_eq!(
            with("crv", json!("P-384")),
            Err(Refused("only EC keys on the P-256 curve are accepted"))
        );
        assert!(with("x", json!("AAAA")).is_err());
        assert!(
            with("x", json!(format!("{}=", jwk["x"].as_str().unwrap()))).is_err(),
            "padding"
        );
        assert!(with("alg", json!("RS256")).is_err());
        assert!(with("use", json!("enc")).is_err());
        assert!(with("kid", json!(7)).is_err());
        assert!(with("alg", json!("ES256")).is_ok());
        assert!(PublicJwk::from_json(&json!({"kty": "oct", "k": "AAAA"})).is_err());
        assert!(
            PublicJwk::from_json(&json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})).is_err()
        );
        assert!(PublicJwk::from_json(&json!("EC")).is_err());
        // RSA: at least 2048 bits, no leading zero byte.
        let (_, rsa) = rsa_key();
        assert!(PublicJwk::from_json(&rsa).is_ok());
        let mut short = rsa.clone();
        short["n"] = json!(URL_SAFE_NO_PAD.encode([0xC1u8; 128]));
        assert_eq!(
            PublicJwk::from_json(&short).unwrap_err(),
            Refused("RSA keys must have at least 2048 bits")
        );
        let mut zero = rsa.clone();
        let mut n = URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap();
        n.insert(0, 0);
        zero["n"] = json!(URL_SAFE_NO_PAD.encode(&n));
        assert!(PublicJwk::from_json(&zero).is_err());
        // A point off the curve parses but is not usable.
        let mut off = jwk.clone();
        off["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        let k = PublicJwk::from_json(&off).unwrap();
        assert!(k.check_usable().is_err());
        assert!(PublicJwk::from_json(&jwk).unwrap().check_usable().is_ok());
        assert!(PublicJwk::from_json(&rsa).unwrap().check_usable().is_ok());
        // RSA exponents ring would never verify with: even, or below 3.
        for e in [[1u8].as_slice(), &[2], &[1, 0, 0]] {
            let mut bad = rsa.clone();
            bad["e"] = json!(URL_SAFE_NO_PAD.encode(e));
            let k = PublicJwk::from_json(&bad).unwrap();
            assert!(k.check_usable().is_err(), "e = {e:?}");
        }
    }

    #[test]
    fn urls_are_normalised_once() {
        assert_eq!(
            normalize_url("HTTP", "Example.COM:80", ""),
            "http://example.com/"
        );
        assert_eq!(
            normalize_url("https", "a:8443", "/x%2fy%7e"),
            "https://a:8443/x%2Fy~"
        );
        assert_eq!(
            normalize_htu("https://a/p?q#f").as_deref(),
            Some("https://a/p")
        );
        assert_eq!(normalize_htu("ftp://a/p"), None);
        assert_eq!(normalize_htu("https://u@a/p"), None);
        assert_eq!(normalize_htu("/relative"), None);
        assert_eq!(normalize_url("http", "a", "/é%"), "http://a/é%");
    }

    fn assertion_claims(extra: Value) -> Value {
        let mut c = json!({"iss": "svc", "sub": "svc", "aud": "https://gw.example", "exp": NOW + 60, "iat": NOW, "jti": "a-1"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn client_assertions() {
        let (key, jwk) = rsa_key();
        let (ec_key, ec_jwk) = es256_key();
        let keys = vec![
            PublicJwk::from_json(&jwk).unwrap(),
            PublicJwk::from_json(&ec_jwk).unwrap(),
        ];
        let check = AssertionCheck {
            client_id: "svc",
            audiences: &["https://gw.example", "https://gw.example/token"],
            now: NOW,
        };
        let signed = |c: Value| {
            let mut h = JwtHeader::new(Algorithm::RS256);
            h.kid = Some("rsa-1".into());
            encode(&h, &assertion_claims(c), &key).unwrap()
        };
        let a = check_client_assertion(&signed(json!({})), &keys, &check).unwrap();
        assert_eq!(
            a,
            Assertion {
                jti: "a-1".into(),
                exp: NOW + 60
            }
        );
        assert_eq!(assertion_issuer(&signed(json!({}))).as_deref(), Some("svc"));
        // ES256, without a kid, aud as a list.
        let es = encode(
            &JwtHeader::new(Algorithm::ES256),
            &assertion_claims(json!({"aud": ["x", "https://gw.example/token"]})),
            &ec_key,
        )
        .unwrap();
        assert!(check_client_assertion(&es, &keys, &check).is_ok());
        let refused = |t: String| check_client_assertion(&t, &keys, &check).unwrap_err().0;
        assert_eq!(
            refused(signed(json!({"sub": "other"}))),
            "the assertion's iss and sub must both be the client_id"
        );
        assert_eq!(
            refused(signed(json!({"iss": "other"}))),
            "the assertion's iss and sub must both be the client_id"
        );
        assert_eq!(
            refused(signed(json!({"aud": "https://other.example"}))),
            "the assertion's aud names neither the issuer nor the token endpoint"
        );
        assert_eq!(
            refused(signed(json!({"exp": NOW - ASSERTION_SKEW_SECS}))),
            "the assertion has expired"
        );
        assert_eq!(
            refused(signed(json!({"exp": NOW + 3600}))),
            "the assertion's exp is too far ahead (at most 5 minutes)"
        );
        assert_eq!(
            refused(signed(json!({"nbf": NOW + 3600}))),
            "the assertion is not valid yet (nbf or iat)"
        );
        assert_eq!(
            refused(signed(json!({"jti": ""}))),
            "the assertion's jti is empty or too long"
        );
        let mut no_exp = assertion_claims(json!({}));
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut h = JwtHeader::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        assert!(
            check_client_assertion(&encode(&h, &no_exp, &key).unwrap(), &keys, &check).is_err()
        );
        // A kid the client has not registered; a key of another client.
        h.kid = Some("nope".into());
        assert_eq!(
            refused(encode(&h, &assertion_claims(json!({})), &key).unwrap()),
            "no registered key of the client fits the assertion's kid and alg"
        );
        let (stranger, _) = es256_key();
        assert_eq!(
            refused(
                encode(
                    &JwtHeader::new(Algorithm::ES256),
                    &assertion_claims(json!({})),
                    &stranger
                )
                .unwrap()
            ),
            "the signature is invalid"
        );
        // A DPoP proof is no assertion.
        let mut dh = JwtHeader::new(Algorithm::ES256);
        dh.typ = Some(DPOP_TYP.into());
        assert_eq!(
            refused(encode(&dh, &assertion_claims(json!({})), &ec_key).unwrap()),
            "a DPoP proof is not a client assertion"
        );
    }
}
