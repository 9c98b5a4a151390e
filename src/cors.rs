//! CORS (the Fetch standard's CORS protocol) for routes and for the gateway's
//! own endpoints that browser apps call.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered by the gateway itself, without a token, and never forwarded.
//! - Other requests with an allowed `Origin` get `Access-Control-Allow-Origin`
//!   (and `Vary: Origin`) on whatever the answer is, errors included, so that
//!   the app can read a 401 or a 429.
//! - `*` is refused together with credentials (the Fetch standard forbids the
//!   pair; the config loader says so).

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::error::{Body, empty};

/// Response headers a browser app may read besides the safelisted ones.
const EXPOSED: &str = "www-authenticate, retry-after, ratelimit, ratelimit-policy, x-request-id";

/// One CORS policy (a route's, or the endpoints').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Serialised origins (`https://app.example`); empty with `any`.
    pub origins: Vec<String>,
    /// `origins = ["*"]`.
    pub any: bool,
    pub methods: Vec<Method>,
    /// Lower-case request header names the app may send.
    pub headers: Vec<String>,
    pub max_age: Duration,
    pub credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    max_age_value: HeaderValue,
}

/// Whether `s` is a serialised origin: `scheme://host[:port]`, nothing after.
pub fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return false;
    }
    if rest.contains(['/', '?', '#', '@']) || s != s.trim() {
        return false;
    }
    rest.parse::<http::uri::Authority>().is_ok()
}

/// The origin of an absolute http(s) URL (`https://app.example/cb` ->
/// `https://app.example`), lower-cased scheme and host, default port dropped.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let auth = uri.authority()?;
    let host = auth.host().to_ascii_lowercase();
    let default = if scheme == "https" { 443 } else { 80 };
    Some(match auth.port_u16() {
        Some(p) if p != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

impl CorsPolicy {
    pub fn new(
        origins: Vec<String>,
        methods: Vec<Method>,
        headers: Vec<String>,
        max_age: Duration,
        credentials: bool,
    ) -> CorsPolicy {
        let any = origins.iter().any(|o| o == "*");
        let origins = if any {
            Vec::new()
        } else {
            origins
                .iter()
                .map(|o| origin_of(o).unwrap_or_else(|| o.to_ascii_lowercase()))
                .collect()
        };
        let join = |v: Vec<&str>| HeaderValue::try_from(v.join(", ")).ok();
        let allow_methods = join(methods.iter().map(Method::as_str).collect())
            .unwrap_or(HeaderValue::from_static("GET"));
        let headers: Vec<String> = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let allow_headers = join(headers.iter().map(String::as_str).collect())
            .unwrap_or(HeaderValue::from_static(""));
        CorsPolicy {
            origins,
            any,
            methods,
            headers,
            max_age,
            credentials,
            allow_methods,
            allow_headers,
            max_age_value: HeaderValue::from(max_age.as_secs()),
        }
    }

    /// The request's one `Origin`, if it has exactly one.
    pub fn origin_of_request(headers: &HeaderMap) -> Option<HeaderValue> {
        let mut all = headers.get_all(ORIGIN).iter();
        match (all.next(), all.next()) {
            (Some(origin), None) => Some(origin.clone()),
            _ => None,
        }
    }

    /// The request's `Origin`, when this policy allows it.
    fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let mut all = headers.get_all(ORIGIN).iter();
        let (Some(origin), None) = (all.next(), all.next()) else {
            return None;
        };
        self.allows(origin).then_some(origin)
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any {
            return true;
        }
        let Some(normal) = origin.to_str().ok().and_then(origin_of) else {
            return false;
        };
        self.origins.contains(&normal)
    }

    /// Whether `req` is a CORS preflight (Fetch standard, "CORS-preflight request").
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204 with the allowances, or 403 without any
    /// (the browser then stops the request).
    pub fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(VARY, HeaderValue::from_static("Origin"));
        let method_ok = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let headers_ok = headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .all(|n| self.headers.iter().any(|a| a.eq_ignore_ascii_case(n)));
        match self.allowed_origin(headers) {
            Some(origin) if method_ok && headers_ok => {
                *resp.status_mut() = StatusCode::NO_CONTENT;
                let origin = origin.clone();
                let h = resp.headers_mut();
                self.allow_origin(h, origin);
                h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
                if !self.headers.is_empty() {
                    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
                }
                h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age_value.clone());
            }
            _ => *resp.status_mut() = StatusCode::FORBIDDEN,
        }
        resp
    }

    /// A preflight nothing allows (no policy): 403, no CORS fields.
    pub fn refused_preflight() -> Response<Body> {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut()
            .insert(VARY, HeaderValue::from_static("Origin"));
        resp
    }

    fn allow_origin(&self, h: &mut HeaderMap, origin: HeaderValue) {
        if self.any && !self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Adds the CORS fields to the answer of an actual (non-preflight) request
    /// whose one `Origin` was `origin` (see [`CorsPolicy::origin_of_request`]).
    pub fn apply(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        // The answer depends on Origin whether or not it is allowed: caches must
        // not serve one origin's answer to another.
        response.append(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        // What the upstream said about CORS is replaced by the route's policy.
        response.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
        response.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        self.allow_origin(response, origin.clone());
        response.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::new(
            origins.iter().map(|s| s.to_string()).collect(),
            vec![Method::GET, Method::POST],
            vec!["authorization".into(), "content-type".into()],
            Duration::from_secs(600),
            credentials,
        )
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins() {
        assert!(is_origin("https://app.example"));
        assert!(is_origin("http://127.0.0.1:8765"));
        assert!(!is_origin("https://app.example/"));
        assert!(!is_origin("app.example"));
        assert!(!is_origin("ftp://app.example"));
        assert_eq!(
            origin_of("HTTPS://App.Example:443/cb?x").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8765/callback").as_deref(),
            Some("http://127.0.0.1:8765")
        );
    }

    #[test]
    fn preflight_allows_only_what_is_listed() {
        let p = policy(&["https://app.example"], false);
        let ok = p.preflight(&req(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, content-type",
            ),
        ]));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(ok.headers()[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        for bad in [
            req(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ]),
            req(&[
                ("origin", "https://app.example"),
                ("access-control-request-method", "DELETE"),
            ]),
            req(&[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-secret"),
            ]),
            req(&[
                ("origin", "https://app.example"),
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ]),
        ] {
            let r = p.preflight(&bad);
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        }
    }

    #[test]
    fn actual_requests_get_the_origin_back() {
        let p = policy(&["https://app.example"], true);
        let mut resp = HeaderMap::new();
        resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        let origin = |o: &'static str| Some(HeaderValue::from_static(o));
        p.apply(origin("https://app.example").as_ref(), &mut resp);
        assert_eq!(resp[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(resp[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(resp[VARY], "Origin");
        let mut other = HeaderMap::new();
        p.apply(origin("https://evil.example").as_ref(), &mut other);
        assert!(other.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        // A wildcard without credentials answers `*`.
        let any = policy(&["*"], false);
        let mut r = HeaderMap::new();
        any.apply(origin("https://x.example").as_ref(), &mut r);
        assert_eq!(r[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
