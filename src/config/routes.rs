//! `[[routes]]`: prefixes, upstreams, what a route needs (auth, scopes,
//! methods), timeouts, upgrades, rate limits and CORS.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::load::CaFile;
use super::raw::{RawCors, RawRateLimit, RawRoute, RawUpstreams};
use super::{ConfigError, ConfigWarning, Validator, spanned_items};
use crate::cors::CorsPolicy;
use crate::endpoint::Endpoint;
use crate::ratelimit::{RateKeyKind, RateLimitSpec, RateLimiter};
use crate::routes::{Route, RouteTable, Upstream};

/// Upgrade protocols a route tunnels when it names none.
const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

/// A checked route; its CA file (if any) is read by [`super::load`].
pub(super) struct CheckedRoute {
    /// `tls` is `None` here.
    pub(super) route: Route,
    pub(super) ca_file: Option<CaFile>,
    /// The line of `prefix`, for warnings about this route.
    pub(super) prefix_line: usize,
}

impl Validator<'_> {
    /// `[[routes]]`, in file order. No two prefixes may be equal ignoring case,
    /// and none may be an endpoint's path (`token_path` or a fixed one).
    pub(super) fn routes(
        &self,
        raw: &[Spanned<RawRoute>],
        token_path: &str,
        signing: bool,
    ) -> Result<Vec<CheckedRoute>, ConfigError> {
        // Lower-cased: prefixes match ignoring ASCII case.
        let mut prefixes: HashSet<String> = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let prefix = self.prefix(r.get_ref(), token_path, &mut prefixes, &key("prefix"))?;
            self.refuse_identity_path(&prefix, signing, &r.get_ref().prefix, &key)?;
            routes.push(self.route(r, prefix, signing, key)?);
        }
        Ok(routes)
    }

    /// `prefix`, normalised: not an endpoint's path, not another route's.
    fn prefix(
        &self,
        r: &RawRoute,
        token_path: &str,
        taken: &mut HashSet<String>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let raw_prefix = r.prefix.get_ref();
        let prefix = crate::routes::normalize_prefix(raw_prefix)
            .map_err(|why| self.err(r.prefix.span(), key, format!("`{raw_prefix}` {why}")))?;
        // Ignoring case, as prefixes match: a route at `/Auth/Revoke` would take
        // the revocation endpoint's path written in another case.
        if prefix.eq_ignore_ascii_case(token_path)
            || Endpoint::fixed_paths().any(|e| e.eq_ignore_ascii_case(&prefix))
        {
            return Err(self.err(
                r.prefix.span(),
                key,
                "is the path of one of the gateway's own endpoints",
            ));
        }
        if !taken.insert(prefix.to_ascii_lowercase()) {
            return Err(self.err(
                r.prefix.span(),
                key,
                format!(
                    "another route already has prefix `{prefix}` (prefixes match ignoring case)"
                ),
            ));
        }
        Ok(prefix)
    }

    /// One route whose `prefix` is checked; `key` names its keys (`routes[1].timeout`).
    fn route(
        &self,
        raw: &Spanned<RawRoute>,
        prefix: String,
        signing: bool,
        key: impl Fn(&str) -> String,
    ) -> Result<CheckedRoute, ConfigError> {
        let r = raw.get_ref();
        let upstreams = self.upstreams(&r.upstream, raw.span(), &key("upstream"))?;
        let methods = self.methods(&r.methods, &key("methods"))?;
        let auth = r.auth.unwrap_or(true);
        let scopes = self.scopes(&r.scopes, &key("scopes"))?;
        if !auth && !scopes.is_empty() {
            return Err(self.err(
                r.scopes.as_ref().map_or(raw.span(), |s| s.span()),
                key("scopes"),
                "a public route (auth = false) cannot require scopes",
            ));
        }
        let timeout = self.opt_duration(&r.timeout, &key("timeout"), Duration::from_secs(30))?;
        let connect_timeout = self.opt_duration(
            &r.connect_timeout,
            &key("connect_timeout"),
            Duration::from_secs(5),
        )?;
        let cooldown = self.opt_duration(&r.cooldown, &key("cooldown"), Duration::from_secs(10))?;
        let max_body_bytes = match &r.max_body_bytes {
            None => None,
            Some(n) if *n.get_ref() >= 0 => Some(*n.get_ref() as u64),
            Some(n) => return Err(self.err(n.span(), key("max_body_bytes"), "must be 0 or more")),
        };
        // Relative to the config file; read by `load`.
        let base = self.file.parent().unwrap_or(Path::new("."));
        let ca_file = r.ca_file.as_ref().map(|f| CaFile {
            path: base.join(f.get_ref()),
            at: self.site(f.span(), key("ca_file")),
        });
        let upgrades = self.upgrades(&r.upgrades, &key("upgrades"))?;
        let rate_limit = match &r.rate_limit {
            None => None,
            Some(rl) => Some(Arc::new(RateLimiter::new(
                self.rate_limit(rl, auth, &key("rate_limit"))?,
                &prefix,
            ))),
        };
        let cors = match &r.cors {
            None => None,
            Some(c) => Some(Arc::new(self.cors(c, &methods, &key("cors"))?)),
        };
        let assertion = self.route_assertion(r, &raw.span(), auth, &upstreams, signing, &key)?;
        Ok(CheckedRoute {
            prefix_line: self.line_of(r.prefix.span().start),
            ca_file,
            route: Route {
                prefix,
                upstreams,
                strip_prefix: r.strip_prefix,
                scopes,
                methods,
                auth,
                timeout,
                next_upstream: Default::default(),
                connect_timeout,
                cooldown,
                max_body_bytes,
                tls: None,
                upgrades,
                rate_limit,
                cors,
                assertion,
                // Given by RouteTable::new.
                stats: Default::default(),
            },
        })
    }

    /// `upstream`: one URL or a list, at least one.
    fn upstreams(
        &self,
        v: &Option<Spanned<RawUpstreams>>,
        route_span: Range<usize>,
        key: &str,
    ) -> Result<Vec<Upstream>, ConfigError> {
        let ups = v
            .as_ref()
            .ok_or_else(|| self.err(route_span, key, "a route needs an upstream URL"))?;
        let list: Vec<&String> = match ups.get_ref() {
            RawUpstreams::One(u) => vec![u],
            RawUpstreams::Many(v) => v.iter().collect(),
        };
        if list.is_empty() {
            return Err(self.err(ups.span(), key, "a route needs at least one upstream URL"));
        }
        list.into_iter()
            .map(|u| {
                Upstream::parse(u).map_err(|why| self.err(ups.span(), key, format!("`{u}` {why}")))
            })
            .collect()
    }

    /// A list of HTTP methods, upper-cased.
    fn methods(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<Vec<http::Method>, ConfigError> {
        spanned_items(v)
            .map(|(m, span)| {
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| self.err(span, key, format!("`{m}` is not an HTTP method")))
            })
            .collect()
    }

    /// `rate_limit = { requests, per, burst, key }`.
    fn rate_limit(
        &self,
        v: &Spanned<RawRateLimit>,
        auth: bool,
        key: &str,
    ) -> Result<RateLimitSpec, ConfigError> {
        let raw = v.get_ref();
        let sub = |k: &str| format!("{key}.{k}");
        let requests = *raw.requests.get_ref();
        if !(1..=i64::from(u32::MAX)).contains(&requests) {
            return Err(self.err(raw.requests.span(), sub("requests"), "must be 1 or more"));
        }
        let per = self.duration(&raw.per, &sub("per"))?;
        let burst = match &raw.burst {
            None => requests,
            Some(b) if (1..=i64::from(u32::MAX)).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                return Err(self.err(
                    b.span(),
                    sub("burst"),
                    "must be 1 or more (the requests that may arrive at once)",
                ));
            }
        };
        let kind = match &raw.key {
            None => RateKeyKind::Client,
            Some(k) => RateKeyKind::parse(k.get_ref()).ok_or_else(|| {
                self.err(
                    k.span(),
                    sub("key"),
                    format!(
                        "`{}` is not a key: use client, user or address",
                        k.get_ref()
                    ),
                )
            })?,
        };
        if !auth && kind != RateKeyKind::Address {
            return Err(self.err(
                raw.key.as_ref().map_or(v.span(), |k| k.span()),
                sub("key"),
                "a public route (auth = false) has no client or user: use key = \"address\"",
            ));
        }
        Ok(RateLimitSpec {
            requests: requests as u32,
            per,
            burst: burst as u32,
            key: kind,
        })
    }

    /// `cors = { origins, methods, headers, max_age, credentials }`.
    fn cors(
        &self,
        v: &Spanned<RawCors>,
        route_methods: &[http::Method],
        key: &str,
    ) -> Result<CorsPolicy, ConfigError> {
        let raw = v.get_ref();
        let sub = |k: &str| format!("{key}.{k}");
        let origins = raw.origins.get_ref();
        if origins.is_empty() {
            return Err(self.err(
                raw.origins.span(),
                sub("origins"),
                "name at least one origin",
            ));
        }
        for o in origins {
            if o != "*" && !crate::cors::is_origin(o) {
                return Err(self.err(
                    raw.origins.span(),
                    sub("origins"),
                    format!("`{o}` is not an origin like \"https://app.example\" (scheme, host, port; no path)"),
                ));
            }
        }
        let credentials = raw.credentials.unwrap_or(false);
        if credentials && origins.iter().any(|o| o == "*") {
            return Err(self.err(
                raw.origins.span(),
                sub("origins"),
                "\"*\" cannot go with credentials = true (the Fetch standard forbids it): list the origins",
            ));
        }
        let mut methods = self.methods(&raw.methods, &sub("methods"))?;
        if raw.methods.is_none() {
            methods = if route_methods.is_empty() {
                ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            } else {
                route_methods.to_vec()
            };
        }
        let mut headers = Vec::new();
        for (h, span) in spanned_items(&raw.headers) {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(self.err(span, sub("headers"), format!("`{h}` is not a header name")));
            }
            headers.push(h.to_ascii_lowercase());
        }
        if raw.headers.is_none() {
            headers = vec!["authorization".into(), "content-type".into()];
        }
        let max_age = self.opt_duration(&raw.max_age, &sub("max_age"), Duration::from_secs(600))?;
        Ok(CorsPolicy::new(
            origins.clone(),
            methods,
            headers,
            max_age,
            credentials,
        ))
    }

    /// Upgrade protocols a route tunnels (lower case); `h2c` is never one of them.
    fn upgrades(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = v else {
            return Ok(DEFAULT_UPGRADES.iter().map(|s| s.to_string()).collect());
        };
        let mut out = Vec::new();
        for item in list.get_ref() {
            let p = item.trim().to_ascii_lowercase();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(self.err(
                    list.span(),
                    key,
                    format!("`{item}` is not a protocol name like \"websocket\""),
                ));
            }
            if p == "h2c" || p.starts_with("h2c/") {
                return Err(self.err(
                    list.span(),
                    key,
                    "h2c is never tunnelled: an upgraded h2c connection would carry requests the gateway never checks",
                ));
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }
}

/// Routes whose upstream paths overlap with different checks (see
/// [`crate::shadowing`]), each named by the weaker route's `prefix`.
pub(super) fn warnings(
    table: &RouteTable,
    prefix_lines: &[usize],
    file: &Path,
) -> Vec<ConfigWarning> {
    crate::shadowing::analyse(table)
        .into_iter()
        .map(|found| ConfigWarning {
            file: file.to_path_buf(),
            line: Some(prefix_lines[found.weaker]),
            key: Some(format!("routes[{}].prefix", found.weaker)),
            message: found.message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, parse};

    #[test]
    fn bad_upstream_url_is_refused() {
        let text = base().replace("http://127.0.0.1:9000", "ftp://x");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[0].upstream"));
    }

    #[test]
    fn route_without_upstream_is_refused() {
        let text = base() + "\n[[routes]]\nprefix = \"/b\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[1].upstream"));
    }

    #[test]
    fn prefixes_equal_ignoring_case_are_duplicates() {
        let dup = base() + "\n[[routes]]\nprefix = \"/API\"\nupstream = \"http://127.0.0.1:1\"\n";
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[1].prefix"));
        assert!(e.message.contains("ignoring case"), "{e}");
        // An endpoint's path in another case is still the endpoint's.
        let ep = base()
            + "\n[[routes]]\nprefix = \"/Auth/Access_Token\"\nupstream = \"http://127.0.0.1:1\"\n";
        assert_eq!(
            parse(&ep).unwrap_err().key.as_deref(),
            Some("routes[1].prefix")
        );
    }

    #[test]
    fn overlapping_routes_are_warnings_with_line_and_key() {
        assert!(parse(&base()).unwrap().warnings.is_empty());
        let text = base().replace(
            "upstream = \"http://127.0.0.1:9000\"\n",
            "upstream = \"http://127.0.0.1:9000\"\nstrip_prefix = true\n",
        ) + "\n[[routes]]\nprefix = \"/public/\"\nupstream = \"http://127.0.0.1:9000\"\nstrip_prefix = true\nauth = false\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert_eq!(w.key.as_deref(), Some("routes[1].prefix"));
        let line = text[..text.find("prefix = \"/public/\"").unwrap()]
            .matches('\n')
            .count()
            + 1;
        assert_eq!(w.line, Some(line));
        assert!(
            w.to_string().starts_with(&format!(
                "gw.toml:{line}: key `routes[1].prefix`: routes `/api`"
            )),
            "{w}"
        );
    }
}
