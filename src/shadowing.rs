//! Routes whose upstream paths overlap while their checks differ.
//!
//! A route forwards a request `prefix + s` to the upstream path `P + s`, where
//! `P` is the upstream's base path, followed by the prefix unless it is stripped.
//! Two routes to the same upstream (scheme, host ignoring case, port) reach a
//! common upstream path when one `P` is a whole-segment prefix of the other: with
//! `P_long = P_short + d`, the request `short.prefix + d` goes where the longer
//! route forwards its own prefix to. That path is only really reachable through
//! the shorter route when the gateway routes `short.prefix + d` to it (a longer
//! route may capture it). If it is, and the two routes do not check the same
//! things (auth, scopes, methods), one route's checks can be skipped through the
//! other: `/public/orders/7` and `/api/orders/7` both reach upstream `/orders/7`,
//! or a read token reaches the admin route's `/api/admin/x` as `/api/api/admin/x`.
//!
//! Paths compare ignoring ASCII case, as the route table matches them and as
//! many upstreams read them. Different host names for one server (`localhost`
//! and `127.0.0.1`) are not recognised.

use crate::routes::{Route, RouteTable, Upstream};

/// One overlap: routes `a` and `b` (indexes into the table, `a` < `b`) reach a
/// common upstream path with different checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowing {
    pub a: usize,
    pub b: usize,
    /// The route whose checks are the weaker one (`a` or `b`): where to fix it.
    pub weaker: usize,
    /// For a person: both routes, their checks, the upstream path and requests
    /// that reach it through each route.
    pub message: String,
}

/// Every pair of routes of `table` that reach a common upstream path with
/// different checks; at most one finding per pair.
pub fn analyse(table: &RouteTable) -> Vec<Shadowing> {
    let routes = table.routes();
    let mut found = Vec::new();
    for (a, ra) in routes.iter().enumerate() {
        for (b, rb) in routes.iter().enumerate().skip(a + 1) {
            let (a_more, b_more) = (admits_more(ra, rb), admits_more(rb, ra));
            if !a_more && !b_more {
                continue;
            }
            if let Some((message, a_is_short)) = overlap(table, ra, rb, a_more, b_more) {
                // Neither is plainly weaker (scopes that do not contain each
                // other): the shorter upstream path is the one that wanders.
                let weaker = match (a_more, b_more) {
                    (true, false) => a,
                    (false, true) => b,
                    _ if a_is_short => a,
                    _ => b,
                };
                found.push(Shadowing {
                    a,
                    b,
                    weaker,
                    message,
                });
            }
        }
    }
    found
}

/// Whether `x` lets through some request that `y` refuses.
fn admits_more(x: &Route, y: &Route) -> bool {
    let auth = y.auth && (!x.auth || !y.scopes.is_subset_of(&x.scopes));
    let methods = !y.methods.is_empty()
        && (x.methods.is_empty() || x.methods.iter().any(|m| !y.methods.contains(m)));
    auth || methods
}

/// Scheme, lower-case host without a trailing dot, port (the scheme's default
/// when none is given).
fn origin(u: &Upstream) -> (&str, String, u16) {
    let host = u
        .authority
        .host()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let default = if u.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    (
        u.scheme.as_str(),
        host,
        u.authority.port_u16().unwrap_or(default),
    )
}

/// The route's prefix as the start of a request path: "" for the root route.
fn request_base(r: &Route) -> &str {
    if r.prefix == "/" { "" } else { &r.prefix }
}

/// `P`: the upstream path the route forwards its prefix to ("" for the root).
fn space(r: &Route, u: &Upstream) -> String {
    let kept = if r.strip_prefix { "" } else { request_base(r) };
    format!("{}{kept}", u.base_path)
}

/// `d` with `long == short + d` on whole segments, ignoring ASCII case.
fn segment_rest<'l>(short: &str, long: &'l str) -> Option<&'l str> {
    let head = long.get(..short.len())?;
    let rest = &long[short.len()..];
    (head.eq_ignore_ascii_case(short) && (rest.is_empty() || rest.starts_with('/'))).then_some(rest)
}

/// What a route checks, for a person.
fn checks(r: &Route) -> String {
    let auth = match (r.auth, r.scopes.is_empty()) {
        (false, _) => "public".to_string(),
        (true, true) => "any token".to_string(),
        (true, false) => format!("scopes [{}]", r.scopes),
    };
    if r.methods.is_empty() {
        auth
    } else {
        let m: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
        format!("{auth}, {} only", m.join(","))
    }
}

/// Whether the gateway routes `path` to `r`.
fn routes_to(table: &RouteTable, path: &str, r: &Route) -> bool {
    table.find(path).is_some_and(|f| std::ptr::eq(f, r))
}

/// The overlap of two routes with different checks, described, and whether `ra`
/// is the route with the shorter upstream path; `None` when no upstream path is
/// reachable through both.
fn overlap(
    table: &RouteTable,
    ra: &Route,
    rb: &Route,
    a_more: bool,
    b_more: bool,
) -> Option<(String, bool)> {
    for ua in &ra.upstreams {
        for ub in &rb.upstreams {
            if origin(ua) != origin(ub) {
                continue;
            }
            let (pa, pb) = (space(ra, ua), space(rb, ub));
            // The route with the shorter P reaches the other's P through `d`.
            let (short, long, ul, d) = if let Some(d) = segment_rest(&pa, &pb) {
                (ra, rb, ub, d.to_string())
            } else if let Some(d) = segment_rest(&pb, &pa) {
                (rb, ra, ua, d.to_string())
            } else {
                continue;
            };
            let through_short = match format!("{}{d}", request_base(short)) {
                p if p.is_empty() => "/".to_string(),
                p => p,
            };
            if !routes_to(table, &through_short, short) {
                continue;
            }
            // Example requests, one level below the prefixes when that stays on
            // the two routes.
            let (short_x, long_x) = (
                format!("{}/x", through_short.trim_end_matches('/')),
                format!("{}/x", request_base(long)),
            );
            let (req_short, req_long) =
                if routes_to(table, &short_x, short) && routes_to(table, &long_x, long) {
                    (short_x, long_x)
                } else {
                    (through_short, long.prefix.clone())
                };
            let upstream_path = long.upstream_path_and_query(ul, &req_long, None);
            let how = match (a_more, b_more) {
                (true, false) => format!(
                    "`{}`'s checks can be skipped through `{}`",
                    rb.prefix, ra.prefix
                ),
                (false, true) => format!(
                    "`{}`'s checks can be skipped through `{}`",
                    ra.prefix, rb.prefix
                ),
                // Neither contains the other: the longer route's own paths are the
                // ones reached by a detour, so it comes first.
                _ => format!(
                    "`{}`'s checks can be skipped through `{}` (and the other way round)",
                    long.prefix, short.prefix
                ),
            };
            let (req_a, req_b) = if std::ptr::eq(short, ra) {
                (req_short, req_long)
            } else {
                (req_long, req_short)
            };
            let message = format!(
                "routes `{}` ({}) and `{}` ({}) reach the same upstream paths: \
                 {req_a} and {req_b} both go to {}://{}{upstream_path}, so {how}; \
                 give them different upstreams or upstream paths",
                ra.prefix,
                checks(ra),
                rb.prefix,
                checks(rb),
                ul.scheme,
                ul.authority,
            );
            return Some((message, std::ptr::eq(short, ra)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::normalize_prefix;
    use crate::scope::ScopeSet;

    fn route(prefix: &str, up: &str, strip: bool, auth: bool, scopes: &[&str]) -> Route {
        Route {
            prefix: normalize_prefix(prefix).unwrap(),
            upstreams: up.split(' ').map(|u| Upstream::parse(u).unwrap()).collect(),
            strip_prefix: strip,
            scopes: ScopeSet::from_iter(scopes.iter().copied()),
            auth,
            ..Default::default()
        }
    }

    fn found(routes: Vec<Route>) -> Vec<Shadowing> {
        analyse(&RouteTable::new(routes))
    }

    const UP: &str = "http://127.0.0.1:9000";

    #[test]
    fn public_and_protected_stripped_to_one_upstream() {
        let f = found(vec![
            route("/api/", UP, true, true, &["read"]),
            route("/public/", UP, true, false, &[]),
        ]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].a, f[0].b, f[0].weaker), (0, 1, 1));
        let m = &f[0].message;
        assert!(m.contains("`/api` (scopes [read])"), "{m}");
        assert!(m.contains("`/public` (public)"), "{m}");
        assert!(
            m.contains("/api/x and /public/x both go to http://127.0.0.1:9000/x"),
            "{m}"
        );
        assert!(
            m.contains("`/api`'s checks can be skipped through `/public`"),
            "{m}"
        );
    }

    #[test]
    fn a_stripped_route_reaching_a_longer_route_upstream_path() {
        let f = found(vec![
            route("/api", UP, true, true, &["read"]),
            route("/api/admin", UP, false, true, &["admin"]),
        ]);
        assert_eq!(f.len(), 1, "{f:?}");
        let m = &f[0].message;
        assert!(
            m.contains(
                "/api/api/admin/x and /api/admin/x both go to http://127.0.0.1:9000/api/admin/x"
            ),
            "{m}"
        );
        assert_eq!(f[0].weaker, 0);
    }

    #[test]
    fn captured_or_disjoint_routes_are_fine() {
        // The usual layouts: a public root with a protected subtree, no strip.
        assert!(
            found(vec![
                route("/", UP, false, false, &[]),
                route("/admin", UP, false, true, &["admin"]),
            ])
            .is_empty()
        );
        assert!(
            found(vec![
                route("/", UP, false, true, &[]),
                route("/public", UP, false, false, &[]),
            ])
            .is_empty()
        );
        assert!(
            found(vec![
                route("/api", UP, false, true, &["read"]),
                route("/api/admin", UP, false, true, &["admin"]),
            ])
            .is_empty()
        );
        // Different upstreams, or different base paths.
        assert!(
            found(vec![
                route("/api/", UP, true, true, &["read"]),
                route("/public/", "http://127.0.0.1:9001", true, false, &[]),
            ])
            .is_empty()
        );
        assert!(
            found(vec![
                route("/api/", "http://127.0.0.1:9000/v1", true, true, &["read"]),
                route("/public/", "http://127.0.0.1:9000/pub", true, false, &[]),
            ])
            .is_empty()
        );
        // Same checks: nothing to skip.
        assert!(
            found(vec![
                route("/a/", UP, true, true, &["read"]),
                route("/b/", UP, true, true, &["read"]),
            ])
            .is_empty()
        );
        // A stricter route reaching into a laxer one's space is still an overlap.
        assert_eq!(
            found(vec![
                route("/all", UP, true, true, &["read", "write"]),
                route("/w", UP, false, true, &["write"]),
            ])
            .len(),
            1
        );
    }

    #[test]
    fn same_origin_is_scheme_host_ignoring_case_and_port() {
        let f = found(vec![
            route(
                "/api/",
                "http://Backend.Example:80/v1",
                true,
                true,
                &["read"],
            ),
            route(
                "/p/",
                "http://127.0.0.1:1 http://backend.example/V1/x",
                true,
                false,
                &[],
            ),
        ]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].message.contains("http://backend.example/V1/x/x"),
            "{}",
            f[0].message
        );
        assert!(
            found(vec![
                route("/api/", "https://backend.example", true, true, &["read"]),
                route("/p/", "http://backend.example", true, false, &[]),
            ])
            .is_empty()
        );
    }

    #[test]
    fn methods_count_as_checks() {
        let mut get_only = route("/ro/", UP, true, true, &[]);
        get_only.methods = vec![http::Method::GET];
        let f = found(vec![get_only, route("/rw/", UP, true, true, &[])]);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("(any token, GET only)"),
            "{}",
            f[0].message
        );
    }
}
