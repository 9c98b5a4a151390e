//! The one path interpretation used for matching and forwarding
//! (`normalize_path`, `normalize_prefix`, `RouteTable::find`,
//! `Route::upstream_path_and_query`) and the bearer token parser
//! (`gateway::bearer_token`).
//!
//! Input: a request path (any UTF-8). It is also tried as an Authorization
//! header value, raw and after `Bearer `.

#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use whosthat::Config;
use whosthat::gateway::bearer_token;
use whosthat::routes::{RouteTable, normalize_path, normalize_prefix};

/// Routes of both tables; the second table adds a catch-all `/` route. Built
/// through `Config::parse`, as the gateway builds them.
const ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"

[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:9001/v1/"
strip_prefix = true

[[routes]]
prefix = "/api/admin"
upstream = "http://127.0.0.1:9002"

[[routes]]
prefix = "/public/"
upstream = "http://127.0.0.1:9003"
strip_prefix = true

[[routes]]
prefix = "/%7Euser/x%2a"
upstream = "http://127.0.0.1:9004/u"
strip_prefix = true

[[routes]]
prefix = "/a.b"
upstream = ["http://127.0.0.1:9005/%7Ebase", "http://127.0.0.1:9006"]
strip_prefix = true
"#;

const ROOT_ROUTE: &str = r#"
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9000/root"
strip_prefix = true
"#;

fn tables() -> &'static [Arc<RouteTable>; 2] {
    static T: OnceLock<[Arc<RouteTable>; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let parse = |text: &str| {
            Config::parse(text, Path::new("routes.toml"))
                .expect("the fuzz route table is valid")
                .routes
                .clone()
        };
        [parse(ROUTES), parse(&format!("{ROUTES}{ROOT_ROUTE}"))]
    })
}

/// Whether `prefix` matches `path` on whole segments.
fn matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'/')
}

fn check_path(raw: &str) {
    let prefix = normalize_prefix(raw);
    let Ok(path) = normalize_path(raw) else {
        assert!(prefix.is_err(), "normalize_prefix accepted {raw:?}");
        return;
    };

    // The normalised form is final and unambiguous.
    assert_eq!(
        normalize_path(&path).as_deref(),
        Ok(path.as_str()),
        "not a fixed point"
    );
    assert!(path.starts_with('/'));
    assert!(path.is_ascii());
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.contains('\\') && !path.contains(';'), "{path:?}");
    let upper = path.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%3B", "%2E", "%7E", "%00"] {
        assert!(!upper.contains(bad), "{path:?} contains {bad}");
    }
    for seg in path[1..].split('/') {
        assert!(seg != "." && seg != "..", "{path:?}");
    }
    // Percent-escapes are upper-case hex.
    let b = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        assert!(
            b.len() > i + 2
                && b[i + 1..i + 3]
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "{path:?}"
        );
    }

    let prefix = prefix.expect("normalize_prefix refused a valid path");
    assert!(prefix == "/" || !prefix.ends_with('/'));
    assert_eq!(prefix.trim_end_matches('/'), path.trim_end_matches('/'));
    assert_eq!(normalize_prefix(&prefix).as_deref(), Ok(prefix.as_str()));

    for table in tables() {
        let found = table.find(&path);
        // The longest prefix that matches on whole segments.
        let expected = table
            .routes()
            .iter()
            .filter(|r| matches(&r.prefix, &path))
            .max_by_key(|r| r.prefix.len());
        assert_eq!(
            found.map(|r| r.prefix.as_str()),
            expected.map(|r| r.prefix.as_str()),
            "{path:?}"
        );
        let Some(route) = found else { continue };
        for up in &route.upstreams {
            for query in [None, Some("a=1&b")] {
                let out = route.upstream_path_and_query(up, &path, query);
                assert!(out.starts_with('/'), "{out:?}");
                let rest = if route.strip_prefix && route.prefix != "/" {
                    &path[route.prefix.len()..]
                } else {
                    path.as_str()
                };
                let sep = if rest.starts_with('/') { "" } else { "/" };
                let q = query.map(|q| format!("?{q}")).unwrap_or_default();
                assert_eq!(
                    out,
                    format!("{}{sep}{rest}{q}", up.base_path),
                    "{path:?} via {}",
                    route.prefix
                );
                // What goes upstream is as plain as what came in.
                if query.is_none() {
                    assert_eq!(
                        normalize_path(&out).as_deref(),
                        Ok(out.as_str()),
                        "{path:?}"
                    );
                }
            }
        }
    }
}

fn check_bearer(value: &str) {
    let Ok(hv) = HeaderValue::from_str(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, hv.clone());
    match bearer_token(&headers) {
        Ok(Some(token)) => {
            let (scheme, _) = value.split_once(' ').expect("a scheme and a token");
            assert!(scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
            assert!(value.ends_with(token));
            let body = token.trim_end_matches('=');
            assert!(!body.is_empty());
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')));
        }
        Ok(None) => {
            let scheme = value.split(' ').next().unwrap_or("");
            assert!(!scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
        }
        Err(_) => {}
    }
    // Two headers are always refused.
    headers.append(AUTHORIZATION, hv);
    assert!(bearer_token(&headers).is_err());
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_path(s);
    check_bearer(s);
    check_bearer(&format!("Bearer {s}"));
});
