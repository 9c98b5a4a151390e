//! `[oauth]`: issuer, token endpoint path, token lifetimes, the default client,
//! the password pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawOAuth;
use super::{Client, ConfigError, OAuthConfig, Validator, cores};
use crate::endpoint::{DEFAULT_TOKEN_PATH, Endpoint};

impl Validator<'_> {
    /// `[oauth]` but `default_client`, which needs the clients: see
    /// [`Validator::default_client`].
    pub(super) fn oauth(
        &self,
        raw: Option<&RawOAuth>,
        listen: SocketAddr,
    ) -> Result<OAuthConfig, ConfigError> {
        let none = RawOAuth::default();
        let r = raw.unwrap_or(&none);
        Ok(OAuthConfig {
            token_path: match &r.token_path {
                Some(p) => self.token_path(p)?,
                None => DEFAULT_TOKEN_PATH.to_string(),
            },
            issuer: match &r.issuer {
                Some(i) => self.issuer(i)?,
                None => format!("http://{listen}"),
            },
            access_token_ttl: self.opt_duration(
                &r.access_token_ttl,
                "oauth.access_token_ttl",
                Duration::from_secs(3600),
            )?,
            refresh_token_ttl: self.opt_duration(
                &r.refresh_token_ttl,
                "oauth.refresh_token_ttl",
                Duration::from_secs(14 * 86400),
            )?,
            default_client: None,
            password_workers: self.positive(
                &r.password_workers,
                "oauth.password_workers",
                1,
                256,
                cores(),
            )?,
            password_queue: self.positive(
                &r.password_queue,
                "oauth.password_queue",
                1,
                100_000,
                256,
            )?,
            // Read by `load`.
            signing: None,
            device_code_ttl: self.opt_duration(
                &r.device_code_ttl,
                "oauth.device_code_ttl",
                Duration::from_secs(600),
            )?,
            device_poll_interval: self.opt_duration(
                &r.device_poll_interval,
                "oauth.device_poll_interval",
                Duration::from_secs(5),
            )?,
        })
    }

    /// `oauth.token_path`: a plain absolute path no other endpoint has.
    fn token_path(&self, p: &Spanned<String>) -> Result<String, ConfigError> {
        let path = p.get_ref();
        if !path.starts_with('/')
            || path.len() < 2
            || crate::routes::normalize_path(path).ok().as_deref() != Some(path.as_str())
        {
            return Err(self.err(
                p.span(),
                "oauth.token_path",
                format!("`{path}` must be a plain absolute path like \"/auth/access_token\""),
            ));
        }
        // The fixed endpoints' paths are not the token endpoint's to take.
        if Endpoint::fixed_paths().any(|e| e == path) {
            return Err(self.err(
                p.span(),
                "oauth.token_path",
                format!("`{path}` is another endpoint's path"),
            ));
        }
        Ok(path.clone())
    }

    /// `oauth.issuer` (RFC 8414 section 2), without a trailing `/`.
    fn issuer(&self, i: &Spanned<String>) -> Result<String, ConfigError> {
        let uri: http::Uri = i.get_ref().parse().map_err(|_| {
            self.err(
                i.span(),
                "oauth.issuer",
                format!("`{}` is not a URL", i.get_ref()),
            )
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.authority().is_none()
            || uri.query().is_some()
            || i.get_ref().contains('#')
        {
            return Err(self.err(
                i.span(),
                "oauth.issuer",
                "must be an http(s) URL with a host and no query or fragment (RFC 8414 section 2)",
            ));
        }
        Ok(i.get_ref().trim_end_matches('/').to_string())
    }

    /// `oauth.default_client`: a public client among `clients`.
    pub(super) fn default_client(
        &self,
        raw: Option<&RawOAuth>,
        clients: &HashMap<String, Arc<Client>>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(dc) = raw.and_then(|r| r.default_client.as_ref()) else {
            return Ok(None);
        };
        match clients.get(dc.get_ref()) {
            None => Err(self.err(
                dc.span(),
                "oauth.default_client",
                format!("no [[clients]] entry has id `{}`", dc.get_ref()),
            )),
            Some(c) if !c.is_public() => Err(self.err(
                dc.span(),
                "oauth.default_client",
                format!(
                    "client `{}` is confidential; the default client must be public",
                    dc.get_ref()
                ),
            )),
            Some(_) => Ok(Some(dc.get_ref().clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, parse};

    #[test]
    fn default_client_must_exist() {
        let text = base() + "\n[oauth]\ndefault_client = \"nope\"\n";
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("oauth.default_client")
        );
    }
}
