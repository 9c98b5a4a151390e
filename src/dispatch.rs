//! What a request is, decided in one place: one of the gateway's own
//! endpoints, a route (and what it needs of the caller), or nothing. A pure
//! function of the config, the method and the normalised path, so the pipeline
//! (`gateway.rs`) and `whosthat route test` cannot disagree.

use http::{HeaderMap, Method};

use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::routes::{NormalizedPath, Route};
use crate::scope::ScopeSet;

/// What a request is.
#[derive(Debug)]
pub enum Decision<'c> {
    /// One of the gateway's own endpoints, which take precedence over routes;
    /// the gateway answers it and never proxies it.
    Endpoint(Endpoint),
    /// The route with the longest prefix matching the path.
    Route(RouteMatch<'c>),
    /// No route's prefix matches: 404.
    NoRoute,
}

/// A matched route and what it asks of a request.
#[derive(Debug)]
pub struct RouteMatch<'c> {
    pub route: &'c Route,
    pub needs: Needs<'c>,
    /// Whether the route takes the request's method; when not, 405 with
    /// [`RouteMatch::allow`]. (A CORS preflight is answered before this counts.)
    pub method_allowed: bool,
}

/// What a route needs of the caller.
#[derive(Debug, Clone, Copy)]
pub enum Needs<'c> {
    /// A public route (`auth = false`): nothing.
    Nothing,
    /// A live bearer token (see [`crate::oauth::bearer::require_token`])
    /// carrying at least these scopes (none: any token).
    Token { scopes: &'c ScopeSet },
}

impl RouteMatch<'_> {
    /// Whether the request is refused with 405: its method is not the route's,
    /// or a method-override header (`X-HTTP-Method-Override` and kin, dropped
    /// before forwarding) names one the route refuses, so it is answered as
    /// that method would be.
    pub fn method_refused(&self, headers: &HeaderMap) -> bool {
        !self.method_allowed || crate::proxy::override_refused(self.route, headers)
    }

    /// The `Allow` header of a 405: the route's methods.
    pub fn allow(&self) -> String {
        let allow: Vec<&str> = self.route.methods.iter().map(|m| m.as_str()).collect();
        allow.join(", ")
    }
}

/// Decides what `method path` is under `config`.
pub fn classify<'c>(config: &'c Config, method: &Method, path: &NormalizedPath) -> Decision<'c> {
    if let Some(endpoint) = Endpoint::at(path, &config.oauth.token_path) {
        return Decision::Endpoint(endpoint);
    }
    let Some(route) = config.routes.find(path) else {
        return Decision::NoRoute;
    };
    let needs = if route.auth {
        Needs::Token {
            scopes: &route.scopes,
        }
    } else {
        Needs::Nothing
    };
    Decision::Route(RouteMatch {
        route,
        needs,
        method_allowed: route.allows_method(method),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[oauth]\ntoken_path = \"/oauth/token\"\n\
            [[routes]]\nprefix = \"/api/\"\nupstream = \"http://127.0.0.1:1\"\nscopes = [\"read\"]\nmethods = [\"GET\"]\n\
            [[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\nauth = false\n";
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    fn decide(c: &Config, method: Method, path: &str) -> String {
        let path = NormalizedPath::new(path).unwrap();
        match classify(c, &method, &path) {
            Decision::Endpoint(e) => format!("endpoint {e:?}"),
            Decision::NoRoute => "none".into(),
            Decision::Route(m) => format!(
                "{} {} {}",
                m.route.prefix,
                match m.needs {
                    Needs::Nothing => "public".to_string(),
                    Needs::Token { scopes } => format!("token[{scopes}]"),
                },
                if m.method_allowed { "allowed" } else { "405" }
            ),
        }
    }

    #[test]
    fn endpoints_then_the_longest_prefix() {
        let c = config();
        let cases = [
            (Method::POST, "/oauth/token", "endpoint Token"),
            (Method::GET, "/auth/userinfo", "endpoint Userinfo"),
            // The default token path is no endpoint when another is configured.
            (Method::POST, "/auth/access_token", "/ public allowed"),
            (Method::GET, "/api/x", "/api token[read] allowed"),
            (Method::GET, "/API/x", "/api token[read] allowed"),
            (Method::POST, "/api/x", "/api token[read] 405"),
            (Method::DELETE, "/elsewhere", "/ public allowed"),
        ];
        for (method, path, want) in cases {
            assert_eq!(decide(&c, method, path), want, "{path}");
        }
    }

    #[test]
    fn no_route() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n";
        let c = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(decide(&c, Method::GET, "/x"), "none");
    }
}
