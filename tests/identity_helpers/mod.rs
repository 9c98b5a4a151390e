//! Helpers for signed identity: key files made with the gateway's keygen, a
//! test config with `signing_keys`, and verification of assertions and ID
//! tokens by the `jsonwebtoken` crate against the JWKS fetched over HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use crate::common::{
    Gateway, Upstream, config_text, get, spawn_gateway_as_issuer, spawn_gateway_with,
    spawn_upstream,
};

pub use whosthat::jose::Alg;

pub const JWKS: &str = "/.well-known/jwks.json";
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
pub const METADATA: &str = "/.well-known/oauth-authorization-server";

/// A new key `name` in `dir`, made as `whosthat keygen` makes one.
pub fn key_file(dir: &Path, name: &str, alg: Alg) -> PathBuf {
    let path = dir.join(name);
    whosthat::jose::keys::write_new_key(&path, alg).expect("a new key");
    path
}

/// The `kid` of a key file, as the gateway computes it (RFC 7638).
pub fn kid_of(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    whosthat::jose::SigningKey::from_pem(&pem)
        .unwrap()
        .kid()
        .to_string()
}

/// `signing_keys = [...]` for `keys` (absolute paths).
pub fn signing_keys_line(keys: &[&Path]) -> String {
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    format!("signing_keys = [{}]\n", list.join(", "))
}

/// The standard test config with `keys`, alice's OpenID Connect claims, an
/// OpenID Connect client `rp` (confidential, the svc secret) and `app`
/// (public, PKCE), and two routes to `upstream`: `/signed/` with
/// `identity_assertion` (its upstream's origin as audience) and `/aud/` with
/// `audience = "orders-api"`.
pub fn signed_config(upstream: SocketAddr, keys: &[&Path]) -> String {
    let base = config_text(upstream);
    let base = base.replacen(
        "[oauth]\n",
        &format!("[oauth]\n{}", signing_keys_line(keys)),
        1,
    );
    let alice_scopes = "scopes = [\"read\", \"write\", \"admin\"]\n\n[[users]]\nname = \"bob\"";
    assert!(base.contains(alice_scopes));
    let claims = "claims = { name = \"Alice Liddell\", email = \"alice@example.com\", email_verified = true, groups = [\"eng\", \"ops\"] }";
    let base = base.replacen(
        alice_scopes,
        &alice_scopes.replacen("\n\n", &format!("\n{claims}\n\n"), 1),
        1,
    );
    let svc_hash = base
        .split("id = \"svc\"\nsecret_hash = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("svc's secret hash")
        .to_string();
    format!(
        r#"{base}
[[clients]]
id = "rp"
secret_hash = "{svc_hash}"
grants = ["authorization_code", "refresh_token"]
scopes = ["openid", "profile", "email", "groups", "read"]
redirect_uris = ["http://127.0.0.1:8765/rp"]

[[clients]]
id = "app"
grants = ["authorization_code"]
scopes = ["openid", "profile", "read"]
redirect_uris = ["http://127.0.0.1:8765/app"]

[[routes]]
prefix = "/signed/"
upstream = "http://{upstream}"
strip_prefix = true
identity_assertion = true

[[routes]]
prefix = "/aud/"
upstream = "http://{upstream}"
identity_assertion = true
audience = "orders-api"
"#
    )
}

/// A gateway on [`signed_config`] with a key per `algs` (in that order), and
/// the upstream; `as_issuer`: its issuer is its own URL (for discovery).
pub struct Signed {
    pub gw: Gateway,
    pub up: Upstream,
    /// The keys' kids, in order.
    pub kids: Vec<String>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_signed(algs: &[Alg], as_issuer: bool) -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<PathBuf> = algs
        .iter()
        .enumerate()
        .map(|(i, alg)| key_file(dir.path(), &format!("k{i}.pem"), *alg))
        .collect();
    let up = spawn_upstream().await;
    let paths: Vec<&Path> = keys.iter().map(PathBuf::as_path).collect();
    let text = signed_config(up.addr, &paths);
    let gw = if as_issuer {
        spawn_gateway_as_issuer(&text).await
    } else {
        spawn_gateway_with(&text).await
    };
    Signed {
        gw,
        up,
        kids: keys.iter().map(|k| kid_of(k)).collect(),
        _dir: dir,
    }
}

pub const RP_CB: &str = "http://127.0.0.1:8765/rp";
pub const APP_CB: &str = "http://127.0.0.1:8765/app";

/// The gateway's JWKS, fetched over HTTP and read by `jsonwebtoken`.
pub async fn jwks(gw: &Gateway) -> JwkSet {
    let r = get(&gw.url(JWKS), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("a JWKS jsonwebtoken reads")
}

/// `token` verified by `jsonwebtoken` with the key its `kid` names in `set`
/// (the algorithm the key says, never the header alone), for `aud` and the
/// test issuer: the claims, or why not.
pub fn verify(set: &JwkSet, token: &str, aud: &str) -> Result<Value, String> {
    let header = decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("no key {kid} in the JWKS"))?;
    let alg = jwk
        .common
        .key_algorithm
        .ok_or("the JWK has no alg")?
        .to_string()
        .parse()
        .map_err(|e| format!("alg: {e}"))?;
    if alg != header.alg {
        return Err(format!(
            "header alg {:?} is not the key's {alg:?}",
            header.alg
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key: {e}"))?;
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[crate::oauth_helpers::ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| format!("{e}"))
}

/// The `kid` in a JWT's header.
pub fn kid_in(token: &str) -> String {
    decode_header(token).unwrap().kid.unwrap()
}
