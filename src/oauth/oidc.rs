//! OpenID Connect (Core 1.0, the Basic OP profile; Discovery 1.0), on when
//! `[oauth] signing_keys` is set: `scope=openid` in the code flow yields an ID
//! token, `/.well-known/openid-configuration` describes the provider,
//! `/.well-known/jwks.json` publishes the keys, and UserInfo answers with the
//! user's claims.
//!
//! whosthat keeps no single-sign-on session: every authorization request is a
//! fresh sign-in. So `prompt=login` and `max_age` always hold, `auth_time` is
//! the moment the password was entered, and `prompt=none` is always answered
//! `login_required` (Core 3.1.2.6), by redirect, without a page.

use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Method, Response};
use serde_json::{Map, Value, json};

use crate::config::{Client, Config, User};
use crate::error::{Body, GatewayError};
use crate::jose::{half_hash, sign::compact};
use crate::scope::ScopeSet;
use crate::store::{CodeOidc, Grant, now_secs};

use crate::endpoint::JWKS_PATH;

/// Scopes about the user's own identity. A user need not list them: they are
/// the user's to give, on the consent page. A client must, to ask for them.
pub const IDENTITY_SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];
/// Claims an ID token or UserInfo answer may carry (Discovery `claims_supported`).
const CLAIMS: [&str; 14] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "azp",
    "name",
    "preferred_username",
    "email",
    "email_verified",
    "groups",
];
/// The longest `nonce` accepted, in bytes: it rides in the sign-in cookie.
pub const MAX_NONCE_BYTES: usize = 512;
/// ID tokens live as long as access tokens, at most this (seconds): a relying
/// party checks one once, at sign-in.
const MAX_ID_TOKEN_TTL: u64 = 3600;
/// How long caches may keep the JWKS: short, so a new key is seen within
/// minutes (README, key rotation).
pub const JWKS_MAX_AGE: &str = "public, max-age=300";

/// Whether OpenID Connect is on: it needs a key to sign ID tokens with.
pub fn enabled(config: &Config) -> bool {
    config.oauth.signing.is_some()
}

/// The scopes `user` may grant `client`: those both list, and with OpenID
/// Connect on, the identity scopes the client lists.
pub fn grantable(config: &Config, user: &User, client: &Client) -> ScopeSet {
    let oidc = enabled(config);
    client
        .scopes
        .iter()
        .filter(|s| user.scopes.contains(s) || (oidc && IDENTITY_SCOPES.contains(s)))
        .collect()
}

/// What an OpenID Connect authentication request asks beyond OAuth (Core 3.1.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcRequest {
    pub nonce: Option<String>,
    /// `max_age` in seconds.
    pub max_age: Option<u64>,
}

/// Reads the OpenID Connect parameters of an authorization request whose
/// scope is `scope` (`get` gives a parameter's non-empty value). `Ok(None)`:
/// not an OpenID Connect request (no `openid` scope, or OIDC off), which is
/// then served as plain OAuth, as before. `Err`: the error code and
/// description to redirect with.
pub fn authz_params<'q>(
    config: &Config,
    scope: Option<&ScopeSet>,
    get: impl Fn(&str) -> Option<&'q str>,
) -> Result<Option<OidcRequest>, (&'static str, &'static str)> {
    if !enabled(config) || !scope.is_some_and(|s| s.contains("openid")) {
        return Ok(None);
    }
    if get("request").is_some() {
        return Err(("request_not_supported", "request objects are not supported"));
    }
    if get("request_uri").is_some() {
        return Err(("request_uri_not_supported", "request_uri is not supported"));
    }
    let prompts: Vec<&str> = get("prompt").map_or(Vec::new(), |p| p.split(' ').collect());
    if prompts.contains(&"none") {
        if prompts.iter().any(|p| *p != "none" && !p.is_empty()) {
            return Err((
                "invalid_request",
                "prompt=none cannot go with other prompt values",
            ));
        }
        // No session is ever kept: nobody is signed in without the page.
        return Err(("login_required", "the user must sign in"));
    }
    let nonce = get("nonce");
    if nonce.is_some_and(|n| n.len() > MAX_NONCE_BYTES) {
        return Err(("invalid_request", "nonce is too long (at most 512 bytes)"));
    }
    let max_age = match get("max_age") {
        None => None,
        Some(m) => Some(
            m.parse::<u64>()
                .ok()
                .filter(|_| m.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(("invalid_request", "max_age must be a number of seconds"))?,
        ),
    };
    Ok(Some(OidcRequest {
        nonce: nonce.map(str::to_string),
        max_age,
    }))
}

/// The claims `user` has under `scope` (Core 5.4): `profile` gives `name` and
/// `preferred_username`, `email` gives `email` and `email_verified`, `groups`
/// gives `groups`. Claims the user has no value for are left out.
pub fn user_claims(user: &User, scope: &ScopeSet) -> Map<String, Value> {
    let c = &user.claims;
    let mut m = Map::new();
    if scope.contains("profile") {
        if let Some(name) = &c.name {
            m.insert("name".into(), json!(name));
        }
        m.insert("preferred_username".into(), json!(user.name.as_ref()));
    }
    if scope.contains("email")
        && let Some(email) = &c.email
    {
        m.insert("email".into(), json!(email));
        m.insert(
            "email_verified".into(),
            json!(c.email_verified.unwrap_or(false)),
        );
    }
    if scope.contains("groups") && !c.groups.is_empty() {
        m.insert("groups".into(), json!(c.groups));
    }
    m
}

/// The claims of `grant`'s user (as configured now) under its scope; none for
/// a client acting for itself.
fn grant_claims(config: &Config, grant: &Grant) -> Map<String, Value> {
    grant
        .user
        .as_deref()
        .and_then(|u| config.users.get(u))
        .map(|u| user_claims(u, &grant.scope))
        .unwrap_or_default()
}

/// The ID token for a code redeemed by `grant`'s client (Core 3.1.3.3, 2),
/// with `at_hash` of `access_token` (3.1.3.6). `None` when OpenID Connect is
/// off (keys removed by a reload since the code was issued).
pub fn id_token(
    config: &Config,
    grant: &Grant,
    oidc: &CodeOidc,
    access_token: &str,
) -> Option<String> {
    let keys = config.oauth.signing.as_ref()?;
    let key = keys.id_token_signer();
    let now = now_secs();
    let ttl = config
        .oauth
        .access_token_ttl
        .as_secs()
        .clamp(1, MAX_ID_TOKEN_TTL);
    let mut claims = grant_claims(config, grant);
    for (k, v) in [
        ("iss", json!(config.oauth.issuer)),
        ("sub", json!(grant.subject())),
        ("aud", json!(grant.client.as_ref())),
        ("azp", json!(grant.client.as_ref())),
        ("iat", json!(now)),
        ("exp", json!(now + ttl)),
        ("auth_time", json!(oidc.auth_time)),
        ("at_hash", json!(half_hash(key.alg(), access_token))),
    ] {
        claims.insert(k.into(), v);
    }
    if let Some(n) = &oidc.nonce {
        claims.insert("nonce".into(), json!(n));
    }
    Some(compact(key, "JWT", &Value::Object(claims)))
}

/// UserInfo for a token with the `openid` scope (Core 5.3.2): `sub` and the
/// claims its scopes give.
pub fn userinfo(config: &Config, grant: &Grant) -> Value {
    let mut m = grant_claims(config, grant);
    m.insert("sub".into(), json!(grant.subject()));
    Value::Object(m)
}

/// The OpenID Connect members of the provider metadata (Discovery 3), added
/// to the RFC 8414 document so both say the same thing.
pub fn add_discovery(config: &Config, v: &mut Value) {
    let Some(keys) = &config.oauth.signing else {
        return;
    };
    let issuer = &config.oauth.issuer;
    let mut scopes: Vec<String> = v["scopes_supported"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.push("openid".into());
        scopes.sort_unstable();
    }
    let extra = json!({
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "scopes_supported": scopes,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [keys.id_token_signer().alg().as_str()],
        "claims_supported": CLAIMS,
        "prompt_values_supported": ["none", "login", "consent"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        // Discovery's default is true: say it.
        "request_uri_parameter_supported": false,
    });
    if let (Some(doc), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            doc.insert(k.clone(), val.clone());
        }
    }
}

/// `GET /.well-known/jwks.json` (RFC 7517 section 5): every configured key,
/// cacheable for a short while.
pub fn jwks(config: &Config, method: &Method) -> Result<Response<Body>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed("GET".into()));
    }
    let keys = config.oauth.signing.as_ref().ok_or(GatewayError::NoRoute)?;
    let mut resp = crate::error::json(keys.jwks_json());
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(JWKS_MAX_AGE));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ckw0KX5ivcbTIRZv6y2QOwF0P5pjSyCGbaXWfGKmCqE";

    /// A config with keys (from a temporary directory kept alive by the caller).
    fn config(dir: &tempfile::TempDir) -> Config {
        let key = dir.path().join("k.pem");
        if !key.exists() {
            crate::jose::keys::write_new_key(&key, crate::jose::Alg::Es256).unwrap();
        }
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[oauth]
signing_keys = ["k.pem"]
[[users]]
name = "ada"
password_hash = "{HASH}"
scopes = ["read"]
claims = {{ name = "Ada L", email = "ada@example.com", email_verified = true, groups = ["eng"] }}
[[clients]]
id = "app"
grants = ["authorization_code"]
scopes = ["read", "openid", "email"]
redirect_uris = ["http://127.0.0.1:1/cb"]
"#
        );
        Config::parse(&text, &dir.path().join("gw.toml")).unwrap()
    }

    #[test]
    fn identity_scopes_need_the_client_not_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir);
        let g = grantable(&c, &c.users["ada"], &c.clients["app"]);
        assert_eq!(g.to_string(), "email openid read");
    }

    #[test]
    fn claims_follow_the_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir);
        let ada = &c.users["ada"];
        let only = |s: &str| Value::Object(user_claims(ada, &ScopeSet::parse(s).unwrap()));
        assert_eq!(only("openid"), json!({}));
        assert_eq!(
            only("openid profile"),
            json!({"name": "Ada L", "preferred_username": "ada"})
        );
        assert_eq!(
            only("email"),
            json!({"email": "ada@example.com", "email_verified": true})
        );
        assert_eq!(only("groups"), json!({"groups": ["eng"]}));
        let grant = Grant::new(
            Some(Arc::from("ada")),
            Arc::from("app"),
            ScopeSet::parse("openid email").unwrap(),
        );
        let info = userinfo(&c, &grant);
        assert_eq!(info["sub"], "ada");
        assert_eq!(info["email"], "ada@example.com");
        assert!(info.get("name").is_none());
    }

    #[test]
    fn authorization_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir);
        let openid = ScopeSet::parse("openid").unwrap();
        let run = |pairs: &[(&'static str, &'static str)], scope: Option<&ScopeSet>| {
            authz_params(&c, scope, |k| {
                pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
            })
        };
        assert_eq!(run(&[("prompt", "none")], None), Ok(None), "plain OAuth");
        assert_eq!(
            run(&[("prompt", "none")], Some(&openid)),
            Err(("login_required", "the user must sign in"))
        );
        assert_eq!(
            run(&[("prompt", "none login")], Some(&openid))
                .unwrap_err()
                .0,
            "invalid_request"
        );
        assert_eq!(
            run(&[("max_age", "-1")], Some(&openid)).unwrap_err().0,
            "invalid_request"
        );
        assert_eq!(
            run(&[("max_age", "+5")], Some(&openid)).unwrap_err().0,
            "invalid_request"
        );
        assert_eq!(
            run(&[("request", "x")], Some(&openid)).unwrap_err().0,
            "request_not_supported"
        );
        assert_eq!(
            run(
                &[
                    ("nonce", "n"),
                    ("max_age", "60"),
                    ("prompt", "login consent")
                ],
                Some(&openid)
            ),
            Ok(Some(OidcRequest {
                nonce: Some("n".into()),
                max_age: Some(60)
            }))
        );
        let long: &'static str = Box::leak("n".repeat(MAX_NONCE_BYTES + 1).into_boxed_str());
        assert_eq!(
            run(&[("nonce", long)], Some(&openid)).unwrap_err().0,
            "invalid_request"
        );
    }

    #[test]
    fn off_without_keys() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[users]]\nname = \"ada\"\npassword_hash = \"{HASH}\"\n"
        );
        let c = Config::parse(&text, Path::new("gw.toml")).unwrap();
        assert!(!enabled(&c));
        let mut v = json!({"scopes_supported": []});
        add_discovery(&c, &mut v);
        assert!(v.get("jwks_uri").is_none());
        assert!(jwks(&c, &Method::GET).is_err());
    }
}
