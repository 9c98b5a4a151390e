//! `[[clients]]`: OAuth clients, their grants, scopes and redirect URIs.
//!
//! The `check_*` functions are the rules themselves; `client add` calls them
//! too, so the CLI never writes a client the loader would refuse.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawClient;
use super::values::is_valid_id;
use super::{Client, ConfigError, GrantType, Validator, spanned_items};
use crate::cors::CorsPolicy;

/// Why a grant name is refused, after the name itself.
const BAD_GRANT: &str = "is not a grant: use password, client_credentials, refresh_token, authorization_code or device_code";

/// A grant type's name. `Err`: why, to follow the name.
pub(crate) fn check_grant(g: &str) -> Result<GrantType, &'static str> {
    GrantType::parse(g).ok_or(BAD_GRANT)
}

/// What is wrong with a redirect URI; shown after the URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedirectUriFault {
    NotAUrl,
    /// No scheme (a relative reference), or a fragment (RFC 6749 section 3.1.2).
    NotAbsolute,
    /// An http(s) URL with an empty host.
    NoHost,
}

impl fmt::Display for RedirectUriFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedirectUriFault::NotAUrl => "is not a URL",
            RedirectUriFault::NotAbsolute => "must be an absolute URL without a fragment",
            RedirectUriFault::NoHost => {
                "must name a host (an http or https URL with an empty host is invalid: RFC 9110 section 4.2.1)"
            }
        })
    }
}

/// A redirect URI (RFC 6749 section 3.1.2): an absolute URI without a
/// fragment; an http or https one names a host. Other schemes (a native app's
/// `com.example.app://cb`, RFC 8252 section 7.1) are taken as the URI parser
/// reads them: with a scheme, the parser also requires an authority.
pub(crate) fn check_redirect_uri(r: &str) -> Result<(), RedirectUriFault> {
    let uri: http::Uri = r.parse().map_err(|_| RedirectUriFault::NotAUrl)?;
    let Some(scheme) = uri.scheme_str() else {
        return Err(RedirectUriFault::NotAbsolute);
    };
    if r.contains('#') {
        return Err(RedirectUriFault::NotAbsolute);
    }
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if web && uri.host().is_none_or(str::is_empty) {
        return Err(RedirectUriFault::NoHost);
    }
    Ok(())
}

/// Settings of one client that only make sense together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientConflict {
    /// `client_credentials` authenticates the client by its secret alone.
    CredentialsWithoutSecret,
    /// `authorization_code` sends the code to a registered redirect URI.
    CodeWithoutRedirect,
    /// Introspection is for callers that authenticate (RFC 7662 section 4).
    IntrospectWithoutSecret,
}

/// The rules between a client's grants, its secret, its redirect URIs and
/// `introspect`, checked in that order.
pub(crate) fn check_client_shape(
    grants: &[GrantType],
    confidential: bool,
    redirect_uris: usize,
    introspect: bool,
) -> Result<(), ClientConflict> {
    if !confidential && grants.contains(&GrantType::ClientCredentials) {
        return Err(ClientConflict::CredentialsWithoutSecret);
    }
    if grants.contains(&GrantType::AuthorizationCode) && redirect_uris == 0 {
        return Err(ClientConflict::CodeWithoutRedirect);
    }
    if introspect && !confidential {
        return Err(ClientConflict::IntrospectWithoutSecret);
    }
    Ok(())
}

impl Validator<'_> {
    /// `[[clients]]`, by id; an id given twice is refused.
    pub(super) fn clients(
        &self,
        raw: &[Spanned<RawClient>],
    ) -> Result<HashMap<String, Arc<Client>>, ConfigError> {
        let mut clients = HashMap::new();
        for (i, c) in raw.iter().enumerate() {
            let c = c.get_ref();
            let id = c.id.get_ref();
            let client = self.client(c, |k| format!("clients[{i}].{k}"))?;
            if clients.insert(id.clone(), Arc::new(client)).is_some() {
                return Err(self.err(
                    c.id.span(),
                    format!("clients[{i}].id"),
                    format!("client `{id}` is defined twice"),
                ));
            }
        }
        Ok(clients)
    }

    /// One `[[clients]]` entry; `key` names its keys (`clients[2].grants`).
    fn client(&self, c: &RawClient, key: impl Fn(&str) -> String) -> Result<Client, ConfigError> {
        let id = c.id.get_ref();
        if !is_valid_id(id) {
            return Err(self.err(
                c.id.span(),
                key("id"),
                "must be a non-empty id without control characters",
            ));
        }
        let grants = self.grants(&c.grants, &key("grants"))?;
        let secret_hash = match &c.secret_hash {
            Some(h) => Some(self.phc(h, &key("secret_hash"))?),
            None => None,
        };
        let jwks = match &c.jwks {
            Some(p) => Some(self.client_keys(p, &key("jwks"))?),
            None => None,
        };
        let introspect = c.introspect.as_ref().is_some_and(|f| *f.get_ref());
        let redirects = c.redirect_uris.as_ref().map_or(0, |r| r.get_ref().len());
        let confidential = secret_hash.is_some() || jwks.is_some();
        let shape = check_client_shape(&grants, confidential, redirects, introspect);
        if let Err(conflict) = shape {
            return Err(match conflict {
                ClientConflict::CredentialsWithoutSecret => self.err(
                    c.grants.span(),
                    key("grants"),
                    "client_credentials needs a confidential client (set secret_hash or jwks)",
                ),
                ClientConflict::CodeWithoutRedirect => self.err(
                    c.grants.span(),
                    key("redirect_uris"),
                    "authorization_code needs at least one redirect URI",
                ),
                ClientConflict::IntrospectWithoutSecret => self.err(
                    c.introspect.as_ref().map_or(c.id.span(), |f| f.span()),
                    key("introspect"),
                    "only a confidential client (with secret_hash or jwks) may introspect",
                ),
            });
        }
        let redirect_uris = self.redirect_uris(&c.redirect_uris, &key("redirect_uris"))?;
        Ok(Client {
            id: Arc::from(id.as_str()),
            introspect,
            jwks,
            require_dpop: c.require_dpop.as_ref().is_some_and(|f| *f.get_ref()),
            secret_hash,
            grants,
            scopes: self.scopes(&c.scopes, &key("scopes"))?,
            redirect_uris,
        })
    }

    /// A client's JWKS file (relative to the config file), read and checked
    /// now: a reload re-reads it. Problems in it are named with the key.
    fn client_keys(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<Arc<crate::jose::client_keys::ClientKeys>, ConfigError> {
        let base = self.file.parent().unwrap_or(std::path::Path::new("."));
        crate::jose::client_keys::ClientKeys::load(&base.join(v.get_ref()))
            .map(Arc::new)
            .map_err(|why| self.err(v.span(), key, why))
    }

    /// `grants`, each once, in order.
    fn grants(&self, v: &Spanned<Vec<String>>, key: &str) -> Result<Vec<GrantType>, ConfigError> {
        let mut grants = Vec::new();
        for g in v.get_ref() {
            let grant =
                check_grant(g).map_err(|why| self.err(v.span(), key, format!("`{g}` {why}")))?;
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        Ok(grants)
    }

    /// `redirect_uris`: absolute URLs without a fragment (RFC 6749 section 3.1.2).
    fn redirect_uris(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for (r, span) in spanned_items(v) {
            self.redirect_uri(r, span, key)?;
            out.push(r.clone());
        }
        Ok(out)
    }

    fn redirect_uri(&self, r: &str, span: Range<usize>, key: &str) -> Result<(), ConfigError> {
        check_redirect_uri(r).map_err(|fault| self.err(span, key, format!("`{r}` {fault}")))
    }
}

/// The CORS policy of the endpoints browser apps call (token, revocation,
/// metadata): the origins of every client's redirect URIs, POST and GET, the
/// `Authorization` and `Content-Type` headers, no credentials (cookies play no
/// part there).
pub(super) fn endpoint_cors(clients: &HashMap<String, Arc<Client>>) -> Option<Arc<CorsPolicy>> {
    let mut origins: Vec<String> = clients
        .values()
        .flat_map(|c| c.redirect_uris.iter())
        .filter_map(|u| crate::cors::origin_of(u))
        .collect();
    origins.sort();
    origins.dedup();
    if origins.is_empty() {
        return None;
    }
    Some(Arc::new(CorsPolicy::new(
        origins,
        vec![http::Method::GET, http::Method::POST],
        vec!["authorization".into(), "content-type".into()],
        Duration::from_secs(600),
        false,
    )))
}
