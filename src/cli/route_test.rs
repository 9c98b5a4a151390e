//! `route test`: what the gateway would do with a request, for a person. The
//! decision is the pipeline's own ([`crate::dispatch::classify`]); this file
//! only reports it.

use std::fmt::Write as _;

use http::Method;

use crate::config::Config;
use crate::dispatch::{Decision, Needs, RouteMatch, classify};
use crate::routes::NormalizedPath;

/// What the gateway would do with `method target`: whether a route matches,
/// and a report for a person. Uses the gateway's own path normalisation and
/// decision, and the upstream path it would send.
pub fn route_test(config: &Config, method: &str, target: &str) -> (bool, String) {
    let mut out = String::new();
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        let _ = writeln!(out, "{method} {target}");
        let _ = writeln!(out, "  no route: {method:?} is not an HTTP method");
        return (false, out);
    };
    let _ = writeln!(out, "{method} {target}");
    let (raw_path, query) = match split_target(target) {
        Ok(parts) => parts,
        Err(why) => {
            let _ = writeln!(out, "  no route: {why}");
            return (false, out);
        }
    };
    let path = match NormalizedPath::new(&raw_path) {
        Ok(p) => p,
        Err(why) => {
            let _ = writeln!(
                out,
                "  no route: the gateway refuses the path (400 Bad Request): {why}"
            );
            return (false, out);
        }
    };
    if path.as_str() != raw_path {
        let _ = writeln!(out, "  path      {} (normalised)", path.as_str());
    }
    match classify(config, &method, &path) {
        Decision::Endpoint(endpoint) => {
            let _ = writeln!(
                out,
                "  no route: {} is the gateway's own {}; it answers it itself and never proxies it",
                endpoint.path(&config.oauth.token_path),
                endpoint.label()
            );
            (false, out)
        }
        Decision::NoRoute => {
            let _ = writeln!(
                out,
                "  no route: no route's prefix matches {} (404 Not Found)",
                path.as_str()
            );
            (false, out)
        }
        Decision::Route(matched) => {
            let ok = report_route(&mut out, &matched, &method, &path, query.as_deref());
            (ok, out)
        }
    }
}

/// The path and query of what a client would send: no fragment; an absolute
/// URL stands for its path.
fn split_target(target: &str) -> Result<(String, Option<String>), String> {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    if !target.starts_with('/') && target.contains("://") {
        return match target.parse::<http::Uri>() {
            Ok(u) => Ok((u.path().to_string(), u.query().map(str::to_string))),
            Err(_) => Err(format!("`{target}` is not a URL or a path")),
        };
    }
    Ok(match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    })
}

/// The matched route, what it needs, and where the request would go; `false`
/// when the route refuses the method.
fn report_route(
    out: &mut String,
    matched: &RouteMatch<'_>,
    method: &Method,
    path: &NormalizedPath,
    query: Option<&str>,
) -> bool {
    let route = matched.route;
    let stripped = route.strip_prefix && route.prefix != "/";
    let _ = writeln!(
        out,
        "  route     {}{}",
        route.prefix,
        if stripped { " (prefix stripped)" } else { "" }
    );
    let needs = match matched.needs {
        Needs::Nothing => "nothing: a public route, no token needed".to_string(),
        Needs::Token { scopes } if scopes.is_empty() => {
            "a valid bearer token (any scope)".to_string()
        }
        Needs::Token { scopes } => format!("a bearer token with scopes [{scopes}]"),
    };
    let _ = writeln!(out, "  needs     {needs}");
    let methods = if route.methods.is_empty() {
        "any".to_string()
    } else {
        matched.allow()
    };
    let _ = writeln!(out, "  methods   {methods}");
    if !matched.method_allowed {
        let _ = writeln!(
            out,
            "  no route: {} does not allow {method} (405 Method Not Allowed)",
            route.prefix
        );
        return false;
    }
    for (i, up) in route.upstreams.iter().enumerate() {
        let pq = route.upstream_path_and_query(up, path, query);
        let _ = writeln!(
            out,
            "  {}{}://{}{pq}",
            if i == 0 { "upstream  " } else { "          " },
            up.scheme,
            up.authority
        );
    }
    if route.upstreams.len() > 1 {
        let _ = writeln!(out, "            (requests take turns among these)");
    }
    let _ = writeln!(
        out,
        "  timeout   {}",
        humantime::format_duration(route.timeout)
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testing::{base, valid};

    #[test]
    fn route_test_reports() {
        let c = valid(&base());
        let (ok, r) = route_test(&c, "get", "/api/orders/7?a=1");
        assert!(ok, "{r}");
        assert!(r.contains("route     /api (prefix stripped)"), "{r}");
        assert!(r.contains("scopes [read]"), "{r}");
        assert!(r.contains("http://127.0.0.1:9000/orders/7?a=1"), "{r}");
        assert!(r.contains("http://127.0.0.1:9001/v1/orders/7?a=1"), "{r}");
        let (ok, r) = route_test(&c, "GET", "/api/../x");
        assert!(!ok && r.contains("'..'"), "{r}");
        let (ok, r) = route_test(&c, "GET", "/other");
        assert!(!ok && r.contains("404"), "{r}");
        let (ok, r) = route_test(&c, "POST", "/auth/access_token");
        assert!(!ok && r.contains("token endpoint"), "{r}");
        let (ok, r) = route_test(&c, "GET", "http://h/%61pi/x");
        assert!(ok && r.contains("/api/x (normalised)"), "{r}");
    }
}
