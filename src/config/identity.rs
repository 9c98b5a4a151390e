//! The keys of verifiable identity: `[oauth] signing_keys`, `[[users]] claims`,
//! `[[routes]] identity_assertion` and `audience`. One small validator per key;
//! the key files are read after validation, by [`super::load`], through
//! [`load_keys`].

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::load::{KeyFiles, Site};
use super::raw::{RawClaims, RawOAuth, RawRoute};
use super::{Client, ConfigError, ConfigWarning, OAuthConfig, Validator};
use crate::assertion::RouteAssertion;
use crate::endpoint::Endpoint;
use crate::jose::{Alg, KeySet};
use crate::routes::Upstream;

/// A user's OpenID Connect claims (OIDC Core 5.1): what the `profile`, `email`
/// and `groups` scopes give away. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserClaims {
    pub name: Option<String>,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub groups: Vec<String>,
}

/// Text a claim may hold: not empty, no control characters, not absurdly long.
fn is_claim_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control)
}

/// The `check-config` summary line of the signing keys.
pub(super) fn keys_summary(keys: &KeySet) -> String {
    let list: Vec<String> = keys
        .keys()
        .iter()
        .map(|k| format!("{} {}", k.alg(), k.kid()))
        .collect();
    format!(
        "signing keys ({}, the first signs; ID tokens by {}): {}",
        list.len(),
        keys.id_token_signer().kid(),
        list.join(", ")
    )
}

/// Reads `oauth.signing_keys` (after validation): the set, and a warning per
/// key file others may read. `Err`: which entry and why, never its content.
pub(super) fn load_keys(files: &KeyFiles) -> Result<(Arc<KeySet>, Vec<String>), String> {
    let (set, warnings) = KeySet::load(&files.paths)
        .map_err(|e| format!("key {} ({}) {}", e.index + 1, e.path.display(), e.why))?;
    Ok((Arc::new(set), warnings))
}

/// OpenID Connect set-ups that will not do what they look like: a client
/// asking for `openid` with no key to sign ID tokens, and ID tokens that
/// cannot be RS256 (the algorithm clients assume). `at`: where `signing_keys` is.
pub(super) fn oidc_warnings(
    oauth: &OAuthConfig,
    clients: &HashMap<String, Arc<Client>>,
    file: &Path,
    at: Option<&Site>,
) -> Vec<ConfigWarning> {
    let mut oidc_clients: Vec<&str> = clients
        .values()
        .filter(|c| c.scopes.contains("openid"))
        .map(|c| c.id.as_ref())
        .collect();
    oidc_clients.sort_unstable();
    let warning = |line: Option<usize>, message: String| ConfigWarning {
        file: file.to_path_buf(),
        line,
        key: Some("oauth.signing_keys".into()),
        message,
    };
    match &oauth.signing {
        None => oidc_clients
            .into_iter()
            .map(|id| {
                warning(None, format!(
                    "client `{id}` may ask for scope openid, but without signing keys it is a plain scope and no ID token is issued"
                ))
            })
            .collect(),
        Some(set)
            if !oidc_clients.is_empty() && !set.keys().iter().any(|k| k.alg() == Alg::Rs256) =>
        {
            vec![warning(at.map(|a| a.line), format!(
                "no RS256 key: ID tokens are signed {}, and OpenID Connect clients accept only RS256 unless configured otherwise (add one: `whosthat keygen --alg RS256 PATH`)",
                set.id_token_signer().alg()
            ))]
        }
        Some(_) => Vec::new(),
    }
}

impl Validator<'_> {
    /// `[oauth] signing_keys`: at least one PEM file, relative to the config
    /// file; read by `load`.
    pub(super) fn signing_keys(
        &self,
        raw: Option<&RawOAuth>,
    ) -> Result<Option<KeyFiles>, ConfigError> {
        const KEY: &str = "oauth.signing_keys";
        let Some(list) = raw.and_then(|r| r.signing_keys.as_ref()) else {
            return Ok(None);
        };
        if list.get_ref().is_empty() {
            return Err(self.err(list.span(), KEY, "name at least one key file"));
        }
        let base = self.file.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = list.get_ref().iter().map(|p| base.join(p)).collect();
        Ok(Some(KeyFiles {
            paths,
            at: self.site(list.span(), KEY),
        }))
    }

    /// `[[users]] claims`.
    pub(super) fn user_claims(
        &self,
        v: &Option<Spanned<RawClaims>>,
        key: &str,
    ) -> Result<UserClaims, ConfigError> {
        let Some(v) = v else {
            return Ok(UserClaims::default());
        };
        let raw = v.get_ref();
        let bad = |k: &str, why: &str| self.err(v.span(), format!("{key}.{k}"), why);
        if raw.name.as_deref().is_some_and(|n| !is_claim_text(n)) {
            return Err(bad(
                "name",
                "must be non-empty text without control characters",
            ));
        }
        if let Some(e) = &raw.email {
            let parts = e.split_once('@');
            if !is_claim_text(e)
                || e.chars().any(char::is_whitespace)
                || parts.is_none_or(|(l, d)| l.is_empty() || d.is_empty())
            {
                return Err(bad("email", "must be an address like \"ada@example.com\""));
            }
        }
        if raw.email_verified.is_some() && raw.email.is_none() {
            return Err(bad(
                "email_verified",
                "says something of an email: set email too",
            ));
        }
        let groups = raw.groups.clone().unwrap_or_default();
        if let Some(g) = groups.iter().find(|g| !is_claim_text(g)) {
            return Err(bad(
                "groups",
                &format!("`{g}` must be non-empty text without control characters"),
            ));
        }
        Ok(UserClaims {
            name: raw.name.clone(),
            email: raw.email.clone(),
            email_verified: raw.email_verified,
            groups,
        })
    }

    /// `[[routes]] identity_assertion` and `audience`: `aud` is the audience,
    /// or the origins of the route's upstreams.
    pub(super) fn route_assertion(
        &self,
        r: &RawRoute,
        route_span: &Range<usize>,
        auth: bool,
        upstreams: &[Upstream],
        signing: bool,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<Arc<RouteAssertion>>, ConfigError> {
        let on = r.identity_assertion.as_ref().is_some_and(|f| *f.get_ref());
        if !on {
            return match &r.audience {
                Some(a) => Err(self.err(
                    a.span(),
                    key("audience"),
                    "only used with identity_assertion = true",
                )),
                None => Ok(None),
            };
        }
        let flag_span = r
            .identity_assertion
            .as_ref()
            .map_or(route_span.clone(), |f| f.span());
        if !auth {
            return Err(self.err(
                flag_span,
                key("identity_assertion"),
                "a public route (auth = false) has no caller to assert",
            ));
        }
        if !signing {
            return Err(self.err(
                flag_span,
                key("identity_assertion"),
                "needs a key to sign with: set [oauth] signing_keys (make one with `whosthat keygen`)",
            ));
        }
        let audiences = match &r.audience {
            Some(a) if is_claim_text(a.get_ref()) => vec![a.get_ref().clone()],
            Some(a) => {
                return Err(self.err(
                    a.span(),
                    key("audience"),
                    "must be non-empty text without control characters",
                ));
            }
            None => upstreams
                .iter()
                .map(|u| format!("{}://{}", u.scheme, u.authority))
                .collect(),
        };
        Ok(Some(Arc::new(RouteAssertion::new(audiences))))
    }

    /// With signing keys the gateway serves the JWKS and the OpenID Connect
    /// discovery document itself: no route may have their paths as its prefix.
    pub(super) fn refuse_identity_path(
        &self,
        prefix: &str,
        signing: bool,
        raw_prefix: &Spanned<String>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        let taken = Endpoint::IDENTITY
            .iter()
            .filter_map(|e| e.fixed_path())
            .any(|p| p.eq_ignore_ascii_case(prefix));
        if signing && taken {
            return Err(self.err(
                raw_prefix.span(),
                key("prefix"),
                "is the path of one of the gateway's own endpoints",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ckw0KX5ivcbTIRZv6y2QOwF0P5pjSyCGbaXWfGKmCqE";

    /// `oauth` lines and `route` lines into a small config in `dir` (which holds `k.pem`).
    fn parse(
        dir: &tempfile::TempDir,
        oauth: &str,
        user: &str,
        route: &str,
    ) -> Result<Config, ConfigError> {
        let key = dir.path().join("k.pem");
        if !key.exists() {
            crate::jose::keys::write_new_key(&key, crate::jose::Alg::Es256).unwrap();
        }
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[oauth]\n{oauth}\n[[users]]\nname = \"ada\"\npassword_hash = \"{HASH}\"\n{user}\n[[routes]]\nprefix = \"/api/\"\nupstream = [\"http://10.0.0.1:9000\", \"http://10.0.0.2:9000\"]\n{route}\n"
        );
        Config::parse(&text, &dir.path().join("gw.toml"))
    }

    fn key_of(r: Result<Config, ConfigError>) -> (Option<String>, Option<usize>, String) {
        let e = r.unwrap_err();
        (e.key, e.line, e.message)
    }

    const KEYS: &str = "signing_keys = [\"k.pem\"]";

    #[test]
    fn assertions_default_to_the_upstreams_origins() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(&dir, KEYS, "", "identity_assertion = true").unwrap();
        let a = c.routes.routes()[0].assertion.as_ref().unwrap();
        assert_eq!(
            a.audience(),
            &serde_json::json!(["http://10.0.0.1:9000", "http://10.0.0.2:9000"])
        );
        let c = parse(
            &dir,
            KEYS,
            "",
            "identity_assertion = true\naudience = \"orders\"",
        )
        .unwrap();
        let a = c.routes.routes()[0].assertion.as_ref().unwrap();
        assert_eq!(a.audience(), &serde_json::json!("orders"));
        assert!(
            parse(&dir, KEYS, "", "identity_assertion = false")
                .unwrap()
                .routes
                .routes()[0]
                .assertion
                .is_none()
        );
    }

    #[test]
    fn assertion_settings_that_cannot_work_are_refused_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line, msg) = key_of(parse(&dir, "", "", "identity_assertion = true"));
        assert_eq!(key.as_deref(), Some("routes[0].identity_assertion"));
        assert_eq!(line, Some(13));
        assert!(msg.contains("signing_keys"), "{msg}");
        let (key, _, _) = key_of(parse(&dir, KEYS, "", "audience = \"x\""));
        assert_eq!(key.as_deref(), Some("routes[0].audience"));
        let (key, _, msg) = key_of(parse(
            &dir,
            KEYS,
            "",
            "auth = false\nidentity_assertion = true",
        ));
        assert_eq!(key.as_deref(), Some("routes[0].identity_assertion"));
        assert!(msg.contains("public route"), "{msg}");
        let (key, _, _) = key_of(parse(
            &dir,
            KEYS,
            "",
            "identity_assertion = true\naudience = \"\"",
        ));
        assert_eq!(key.as_deref(), Some("routes[0].audience"));
    }

    #[test]
    fn signing_keys_errors_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line, msg) = key_of(parse(
            &dir,
            "signing_keys = [\"k.pem\", \"missing.pem\"]",
            "",
            "",
        ));
        assert_eq!(key.as_deref(), Some("oauth.signing_keys"));
        assert_eq!(line, Some(5));
        assert!(
            msg.starts_with("key 2 (") && msg.contains("cannot be read"),
            "{msg}"
        );
        let (_, _, msg) = key_of(parse(&dir, "signing_keys = []", "", ""));
        assert!(msg.contains("at least one"), "{msg}");
        let (_, _, msg) = key_of(parse(&dir, "signing_keys = [\"k.pem\", \"k.pem\"]", "", ""));
        assert!(msg.contains("same key"), "{msg}");
    }

    #[test]
    fn user_claims_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = parse(
            &dir,
            KEYS,
            "claims = { name = \"Ada\", email = \"ada@x.org\", email_verified = true, groups = [\"eng\"] }",
            "",
        )
        .unwrap();
        let c = &ok.users["ada"].claims;
        assert_eq!(c.email.as_deref(), Some("ada@x.org"));
        assert_eq!(c.groups, ["eng"]);
        for (claims, key) in [
            (
                "claims = { email = \"not an address\" }",
                "users[0].claims.email",
            ),
            ("claims = { email = \"@x\" }", "users[0].claims.email"),
            (
                "claims = { email_verified = true }",
                "users[0].claims.email_verified",
            ),
            ("claims = { groups = [\"\"] }", "users[0].claims.groups"),
            ("claims = { name = \"a\\u0007\" }", "users[0].claims.name"),
            // An unknown claim: the toml error points at the table.
            ("claims = { phone = \"1\" }", "users[0].claims"),
        ] {
            let (k, _, msg) = key_of(parse(&dir, KEYS, claims, ""));
            assert_eq!(k.as_deref(), Some(key), "{claims}: {msg}");
        }
    }

    #[test]
    fn with_keys_the_identity_paths_are_the_gateways() {
        let dir = tempfile::tempdir().unwrap();
        let route =
            "\n[[routes]]\nprefix = \"/.well-known/jwks.json\"\nupstream = \"http://10.0.0.1:1\"\n";
        let (key, _, _) = key_of(parse(&dir, KEYS, "", route));
        assert_eq!(key.as_deref(), Some("routes[1].prefix"));
        assert!(
            parse(&dir, "", "", route).is_ok(),
            "without keys, as before"
        );
    }

    #[test]
    fn oidc_set_ups_that_will_not_work_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let client = "\n[[clients]]\nid = \"rp\"\ngrants = [\"authorization_code\"]\nscopes = [\"openid\"]\nredirect_uris = [\"http://127.0.0.1:1/cb\"]\n";
        let warned = |oauth: &str| {
            parse(&dir, oauth, "", client)
                .unwrap()
                .warnings
                .into_iter()
                .filter(|w| w.key.as_deref() == Some("oauth.signing_keys"))
                .map(|w| w.message)
                .collect::<Vec<_>>()
        };
        let no_keys = warned("");
        assert!(
            no_keys.len() == 1 && no_keys[0].contains("plain scope"),
            "{no_keys:?}"
        );
        let no_rs256 = warned(KEYS);
        assert!(
            no_rs256.len() == 1 && no_rs256[0].contains("no RS256 key"),
            "{no_rs256:?}"
        );
    }
}
