//! The one path interpretation used for matching and forwarding
//! (`normalize_path`, `normalize_prefix`, `RouteTable::find`,
//! `Route::upstream_path_and_query`) and the bearer token parser
//! (`oauth::bearer::bearer_token`).
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
use whosthat::oauth::bearer::bearer_token;
use whosthat::routes::{RouteTable, normalize_path, normalize_prefix};

/// Routes of both tables; the second table adds a catch-all `/` route (the
/// overlaps among them are config warnings, not errors). Built
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

/// Whether `prefix` matches `path` on whole segments, ignoring ASCII case.
fn matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path.eq_ignore_ascii_case(prefix)
        || (path.len() > prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            && path.as_bytes()[prefix.len()] == b'/')
}

/// Every escape of a normalised path decoded: the bytes an upstream reads.
fn decoded(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
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
        // IIS and ASP.NET trim trailing dots and spaces.
        assert!(!seg.ends_with('.') && !seg.ends_with("%20"), "{path:?}");
    }
    // No double encoding: `%25` is never followed by two hex digits.
    for (i, _) in path.match_indices("%25") {
        let next = &path.as_bytes()[i + 3..];
        assert!(
            !(next.len() >= 2 && next[..2].iter().all(u8::is_ascii_hexdigit)),
            "{path:?}"
        );
    }
    // The decoded text is UTF-8 (no overlong forms), NFKC-stable (no fullwidth
    // forms), and no non-ASCII letter in it has an ASCII case.
    let text = String::from_utf8(decoded(&path)).expect("decoded path is UTF-8");
    assert!(unicode_normalization::is_nfkc(&text), "{path:?}");
    for c in text.chars().filter(|c| !c.is_ascii()) {
        assert!(
            !c.to_lowercase().chain(c.to_uppercase()).any(|x| x.is_ascii()),
            "{path:?}"
        );
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
        // Matching ignores ASCII case; the path itself is not changed.
        for variant in [path.to_ascii_uppercase(), path.to_ascii_lowercase()] {
            assert_eq!(
                table.find(&variant).map(|r| r as *const _),
                found.map(|r| r as *const _),
                "{path:?} vs {variant:?}"
            );
        }
        let Some(route) = found else { continue };
        for up in &route.upstreams {
            for query in [None, Some("a=1&b")] {
                let out = route.upstream_path_and_query(up, &path, query);
                assert!(out.starts_with('/'), "{out:?}");
                // Case variants of the prefix have its length: strip by length.
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
