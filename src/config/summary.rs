//! The summary `whosthat check-config` prints: listeners, endpoints, store,
//! routes, users and clients, never a secret.

use std::fmt::Write;

use super::Config;

impl Config {
    /// A short human summary, printed by `whosthat check-config`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.file.display());
        let _ = writeln!(s, "listeners:");
        let scheme = if self.server.tls.is_some() {
            "https"
        } else {
            "http "
        };
        let _ = writeln!(s, "  {scheme} {}", self.server.listen);
        if let Some(a) = self.server.admin_listen {
            let _ = writeln!(s, "  admin {a} (/healthz, /readyz, /metrics)");
        }
        let _ = writeln!(
            s,
            "token endpoint: {} (issuer {})",
            self.oauth.token_path, self.oauth.issuer
        );
        if let Some(keys) = &self.oauth.signing {
            let _ = writeln!(s, "{}", super::identity::keys_summary(keys));
        }
        let _ = writeln!(s, "store: {}", self.store.backend);
        let _ = writeln!(s, "routes ({}):", self.routes.routes().len());
        for r in self.routes.routes() {
            route_lines(&mut s, r);
        }
        // The same rows as `user list` and `client list`.
        let _ = writeln!(s, "users ({}):", self.users.len());
        for row in super::listing::user_rows(self.users.values()) {
            let _ = writeln!(s, "  {row}");
        }
        let _ = writeln!(s, "clients ({}):", self.clients.len());
        for row in super::listing::client_rows(self.clients.values()) {
            let _ = writeln!(s, "  {row}");
        }
        s
    }
}

/// A route's line, with its rate limit and CORS lines if any.
fn route_lines(s: &mut String, r: &crate::routes::Route) {
    let ups: Vec<String> = r.upstreams.iter().map(|u| u.to_string()).collect();
    let auth = if r.auth {
        if r.scopes.is_empty() {
            "token".to_string()
        } else {
            format!("token with scopes [{}]", r.scopes)
        }
    } else {
        "public".to_string()
    };
    let methods = if r.methods.is_empty() {
        "*".to_string()
    } else {
        r.methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let _ = writeln!(
        s,
        "  {:<20} {:<8} {} -> {}{}",
        r.prefix,
        methods,
        auth,
        ups.join(", "),
        if r.strip_prefix {
            " (prefix stripped)"
        } else {
            ""
        }
    );
    if let Some(l) = &r.rate_limit {
        let spec = &l.spec;
        let _ = writeln!(
            s,
            "  {:<29} rate limit {} per {} by {}, {} at once",
            "",
            spec.requests,
            humantime::format_duration(spec.per),
            spec.key.as_str(),
            spec.burst
        );
    }
    if let Some(c) = &r.cors {
        let origins = if c.any {
            "*".to_string()
        } else {
            c.origins.join(", ")
        };
        let _ = writeln!(s, "  {:<29} cors for {origins}", "");
    }
    if let Some(a) = &r.assertion {
        let _ = writeln!(s, "  {:<29} X-Auth-Assertion for aud {}", "", a.audience());
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, parse};

    #[test]
    fn the_summary_never_shows_a_redis_password() {
        let text = base()
            + "\n[store]\nbackend = \"redis\"\nredis_url = \"redis://:hunter2@10.0.0.5:6379/0\"\n";
        let summary = parse(&text).unwrap().summary();
        assert!(
            summary.contains("redis redis://***@10.0.0.5:6379/0"),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"));
    }
}
