//! `route test`: what the gateway would do with a request, for a person.

use std::fmt::Write as _;

use crate::config::Config;
use crate::routes::normalize_path;

fn endpoint_label(path: &str, config: &Config) -> &'static str {
    use crate::oauth::authorize::AUTHORIZE_PATH;
    use crate::oauth::endpoints::{INTROSPECT_PATH, METADATA_PATH, REVOKE_PATH, USERINFO_PATH};
    if path == config.oauth.token_path {
        return "token endpoint";
    }
    match path {
        AUTHORIZE_PATH => "authorization endpoint",
        REVOKE_PATH => "token revocation endpoint",
        INTROSPECT_PATH => "token introspection endpoint",
        USERINFO_PATH => "userinfo endpoint",
        METADATA_PATH => "server metadata endpoint",
        _ => "endpoint",
    }
}

/// What the gateway would do with `method target`: whether a route matches,
/// and a report for a person. Uses the gateway's own path normalisation,
/// endpoint check, route lookup and upstream path, in its order.
pub fn route_test(config: &Config, method: &str, target: &str) -> (bool, String) {
    let mut out = String::new();
    let method = match http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            let _ = writeln!(out, "{method} {target}");
            let _ = writeln!(out, "  no route: {method:?} is not an HTTP method");
            return (false, out);
        }
    };
    let _ = writeln!(out, "{method} {target}");
    // What a client would send: no fragment; an absolute URL stands for its path.
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (raw_path, query) = if !target.starts_with('/') && target.contains("://") {
        match target.parse::<http::Uri>() {
            Ok(u) => (u.path().to_string(), u.query().map(str::to_string)),
            Err(_) => {
                let _ = writeln!(out, "  no route: `{target}` is not a URL or a path");
                return (false, out);
            }
        }
    } else {
        match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        }
    };
    let path = match normalize_path(&raw_path) {
        Ok(p) => p,
        Err(why) => {
            let _ = writeln!(
                out,
                "  no route: the gateway refuses the path (400 Bad Request): {why}"
            );
            return (false, out);
        }
    };
    if path != raw_path {
        let _ = writeln!(out, "  path      {path} (normalised)");
    }
    if let Some(endpoint) = crate::gateway::own_endpoint(config, &path) {
        let _ = writeln!(
            out,
            "  no route: {} is the gateway's own {}; it answers it itself and never proxies it",
            endpoint.name(config),
            endpoint_label(&path, config)
        );
        return (false, out);
    }
    let Some(route) = config.routes.find(&path) else {
        let _ = writeln!(
            out,
            "  no route: no route's prefix matches {path} (404 Not Found)"
        );
        return (false, out);
    };
    let _ = writeln!(
        out,
        "  route     {}{}",
        route.prefix,
        if route.strip_prefix && route.prefix != "/" {
            " (prefix stripped)"
        } else {
            ""
        }
    );
    let needs = if !route.auth {
        "nothing: a public route, no token needed".to_string()
    } else if route.scopes.is_empty() {
        "a valid bearer token (any scope)".to_string()
    } else {
        format!("a bearer token with scopes [{}]", route.scopes)
    };
    let _ = writeln!(out, "  needs     {needs}");
    let methods = if route.methods.is_empty() {
        "any".to_string()
    } else {
        route
            .methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  methods   {methods}");
    if !route.allows_method(&method) {
        let _ = writeln!(
            out,
            "  no route: {} does not allow {method} (405 Method Not Allowed)",
            route.prefix
        );
        return (false, out);
    }
    for (i, up) in route.upstreams.iter().enumerate() {
        let pq = route.upstream_path_and_query(up, &path, query.as_deref());
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
    (true, out)
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
