//! `[[clients]]`: OAuth clients, their grants, scopes and redirect URIs.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawClient;
use super::{Client, ConfigError, GrantType, Validator, spanned_items};
use crate::cors::CorsPolicy;

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
        if id.is_empty() || id.chars().any(|ch| ch.is_control()) {
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
        if secret_hash.is_none() && grants.contains(&GrantType::ClientCredentials) {
            return Err(self.err(
                c.grants.span(),
                key("grants"),
                "client_credentials needs a confidential client (set secret_hash)",
            ));
        }
        let redirect_uris = self.redirect_uris(&c.redirect_uris, &key("redirect_uris"))?;
        if grants.contains(&GrantType::AuthorizationCode) && redirect_uris.is_empty() {
            return Err(self.err(
                c.grants.span(),
                key("redirect_uris"),
                "authorization_code needs at least one redirect URI",
            ));
        }
        let introspect = match &c.introspect {
            Some(flag) if *flag.get_ref() && secret_hash.is_none() => {
                return Err(self.err(
                    flag.span(),
                    key("introspect"),
                    "only a confidential client (with secret_hash) may introspect",
                ));
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        };
        Ok(Client {
            id: Arc::from(id.as_str()),
            introspect,
            secret_hash,
            grants,
            scopes: self.scopes(&c.scopes, &key("scopes"))?,
            redirect_uris,
        })
    }

    /// `grants`, each once, in order.
    fn grants(&self, v: &Spanned<Vec<String>>, key: &str) -> Result<Vec<GrantType>, ConfigError> {
        let mut grants = Vec::new();
        for g in v.get_ref() {
            let grant = GrantType::parse(g).ok_or_else(|| {
                self.err(
                    v.span(),
                    key,
                    format!("`{g}` is not a grant: use password, client_credentials, refresh_token or authorization_code"),
                )
            })?;
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
        let uri: http::Uri = r
            .parse()
            .map_err(|_| self.err(span.clone(), key, format!("`{r}` is not a URL")))?;
        if uri.scheme().is_none() || r.contains('#') {
            return Err(self.err(
                span,
                key,
                format!("`{r}` must be an absolute URL without a fragment"),
            ));
        }
        Ok(())
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
