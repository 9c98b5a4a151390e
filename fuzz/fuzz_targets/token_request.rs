//! The token endpoint's request parsing: the form body (`Params::parse`), the
//! client's credentials (`client_auth::extract`, HTTP Basic) and the `scope`
//! parameter (`ScopeSet::parse`).
//!
//! Input: the form body up to the first `\n`; each later line is one
//! Authorization header value. A line starting with `=` becomes
//! `Basic <base64 of the rest>`, so the fuzzer reaches the id:secret decoding
//! without having to invent base64 itself.
//!
//! `WHOSTHAT_FUZZ_SKIP_KNOWN=1` skips the check for a bug that is known and
//! not fixed yet (fuzz/README.md), to look for others meanwhile.

#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;
use whosthat::oauth::Params;
use whosthat::oauth::client_auth::{self, ClientCredentials};
use whosthat::scope::{ScopeSet, is_valid_scope_token};

fn skip_known() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("WHOSTHAT_FUZZ_SKIP_KNOWN").is_some_and(|v| v != "0"))
}

/// Whether every name and value of the form decodes (`+` as space, then
/// percent-escapes) to valid UTF-8.
fn decodes_strictly(body: &[u8]) -> bool {
    body.split(|&b| b == b'&').all(|part| {
        let plus: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let decoded: Vec<u8> = percent_decode(&plus).collect();
        std::str::from_utf8(&decoded).is_ok()
    })
}

fuzz_target!(|data: &[u8]| {
    let (body, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };

    // Oracle for the form: what serde_urlencoded decodes, with each name at
    // most once and empty values counting as absent.
    // (serde_urlencoded decodes lossily: bad UTF-8 becomes U+FFFD.)
    let pairs: Option<Vec<(String, String)>> = serde_urlencoded::from_bytes(body).ok();
    let strict = decodes_strictly(body);
    let params = match Params::parse(body) {
        Ok(p) => p,
        Err(_) => {
            if let Some(pairs) = &pairs {
                let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                names.sort_unstable();
                let n = names.len();
                names.dedup();
                assert!(
                    names.len() < n || !strict,
                    "a form without repeated names or bad UTF-8 was refused"
                );
            }
            return;
        }
    };
    // Known bug (fuzz/README.md): bytes that are not UTF-8 are replaced, so
    // different passwords or client ids read the same. HTTP Basic refuses them.
    assert!(
        strict || skip_known(),
        "a form that decodes to invalid UTF-8 was accepted"
    );
    let pairs = pairs.expect("Params::parse accepted what serde_urlencoded refuses");
    for (k, v) in &pairs {
        assert_eq!(
            params.get(k),
            if v.is_empty() { None } else { Some(v.as_str()) },
            "parameter {k:?}"
        );
    }
    for name in [
        "grant_type",
        "client_id",
        "client_secret",
        "scope",
        "username",
    ] {
        if let Some(v) = params.get(name) {
            assert!(!v.is_empty());
            assert!(pairs.iter().any(|(k, pv)| k == name && pv == v));
        }
    }

    if let Some(s) = params.get("scope") {
        match ScopeSet::parse(s) {
            Some(set) => {
                for tok in set.iter() {
                    assert!(is_valid_scope_token(tok), "{tok:?}");
                }
                let shown = set.to_string();
                assert!(!shown.contains("  ") && !shown.starts_with(' ') && !shown.ends_with(' '));
                assert_eq!(ScopeSet::parse(&shown).as_ref(), Some(&set), "round trip");
                assert!(set.is_subset_of(&set));
                assert_eq!(set.intersection(&set), set);
            }
            None => assert!(
                s.split(' ')
                    .any(|t| !t.is_empty() && !is_valid_scope_token(t))
            ),
        }
    }

    let mut headers = HeaderMap::new();
    if !rest.is_empty() {
        for line in rest.split(|&b| b == b'\n') {
            let value = match line.strip_prefix(b"=") {
                Some(raw) => HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).ok(),
                None => HeaderValue::from_bytes(line).ok(),
            };
            if let Some(v) = value {
                headers.append(AUTHORIZATION, v);
            }
        }
    }
    let n_auth = headers.get_all(AUTHORIZATION).iter().count();
    let client_id = params.get("client_id");
    let client_secret = params.get("client_secret");
    match client_auth::extract(&headers, &params) {
        Ok(ClientCredentials::Basic { id, .. }) => {
            assert_eq!(n_auth, 1);
            assert!(client_secret.is_none(), "Basic and a body secret at once");
            assert!(client_id.is_none_or(|b| b == id), "client_id differs");
        }
        Ok(ClientCredentials::Body { id, secret }) => {
            assert_eq!(n_auth, 0);
            assert_eq!(Some(id.as_str()), client_id);
            assert_eq!(secret.as_deref(), client_secret);
        }
        Ok(ClientCredentials::Assertion { id, assertion }) => {
            // RFC 7523 section 2.2: no secret beside it, and a client_id, if
            // sent, naming the assertion's issuer.
            assert!(client_secret.is_none(), "an assertion and a secret at once");
            assert!(client_id.is_none_or(|b| b == id), "client_id differs");
            assert_eq!(params.get("client_assertion"), Some(assertion.as_str()));
        }
        Ok(ClientCredentials::None) => {
            assert_eq!(n_auth, 0);
            assert!(client_id.is_none() && client_secret.is_none());
        }
        Err(e) => {
            let _ = (e.status(), e.reason());
            if n_auth == 0 {
                assert!(client_id.is_none() && client_secret.is_some());
            }
        }
    }
});
