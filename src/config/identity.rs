//! The keys of verifiable identity: `[oauth] signing_keys`, `[[users]] claims`,
//! `[[routes]] identity_assertion` and `audience`. One small validator per key.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{Client, ConfigError, ConfigWarning, OAuthConfig, RawOAuth, RawRoute, Validator};
use crate::assertion::RouteAssertion;
use crate::jose::{Alg, KeySet};
use crate::oauth::oidc::{JWKS_PATH, OPENID_CONFIGURATION_PATH};
use crate::routes::Upstream;

/// `claims = { name, email, email_verified, groups }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaims {
    name: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    groups: Option<Vec<String>>,
}

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

impl Validator<'_> {
    /// `[oauth] signing_keys`: PEM files relative to the config file. Returns
    /// the set and a warning per key file others may read.
    pub(super) fn signing_keys(
        &self,
        list: &Spanned<Vec<String>>,
    ) -> Result<(Arc<KeySet>, Vec<ConfigWarning>), ConfigError> {
        const KEY: &str = "oauth.signing_keys";
        let base = self.file.parent().unwrap_or(Path::new("."));
        let paths: Vec<_> = list.get_ref().iter().map(|p| base.join(p)).collect();
        let (set, warnings) = KeySet::load(&paths).map_err(|e| {
            let what = if e.path.as_os_str().is_empty() {
                e.why.clone()
            } else {
                format!("key {} ({}) {}", e.index + 1, e.path.display(), e.why)
            };
            self.err(list.span(), KEY, what)
        })?;
        let warnings = warnings
            .into_iter()
            .map(|w| self.err(list.span(), KEY, w))
            .collect();
        Ok((Arc::new(set), warnings))
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
        let taken = [JWKS_PATH, OPENID_CONFIGURATION_PATH]
            .iter()
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

    /// OpenID Connect set-ups that will not do what they look like: a client
    /// asking for `openid` with no key to sign ID tokens, and ID tokens that
    /// cannot be RS256 (the algorithm clients assume).
    pub(super) fn oidc_warnings(
        &self,
        oauth: &OAuthConfig,
        clients: &std::collections::HashMap<String, Arc<Client>>,
        raw: &RawOAuth,
    ) -> Vec<ConfigWarning> {
        let mut oidc_clients: Vec<&str> = clients
            .values()
            .filter(|c| c.scopes.contains("openid"))
            .map(|c| c.id.as_ref())
            .collect();
        oidc_clients.sort_unstable();
        let mut out = Vec::new();
        match (&oauth.signing, &raw.signing_keys) {
            (None, _) => {
                for id in oidc_clients {
                    out.push(ConfigWarning {
                        file: self.file.to_path_buf(),
                        line: None,
                        key: Some("oauth.signing_keys".into()),
                        message: format!(
                            "client `{id}` may ask for scope openid, but without signing keys it is a plain scope and no ID token is issued"
                        ),
                    });
                }
            }
            (Some(set), Some(list)) => {
                let has_rs256 = set.keys().iter().any(|k| k.alg() == Alg::Rs256);
                if !has_rs256 && !oidc_clients.is_empty() {
                    out.push(self.err(
                        list.span(),
                        "oauth.signing_keys",
                        format!(
                            "no RS256 key: ID tokens are signed {}, and OpenID Connect clients accept only RS256 unless configured otherwise (add one: `whosthat keygen --alg RS256 PATH`)",
                            set.id_token_signer().alg()
                        ),
                    ));
                }
            }
            (Some(_), None) => {}
        }
        out
    }
}
