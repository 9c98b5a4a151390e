//! gateway.toml validation (`Config::parse`): no panic on any text; every
//! refusal names the file; an accepted config holds only normalised paths,
//! token lifetimes that unix-seconds arithmetic can add to now, and an issuer
//! without a fragment (RFC 8414 section 2).
//!
//! `WHOSTHAT_FUZZ_SKIP_KNOWN=1` skips the checks for bugs that are known and
//! not fixed yet (fuzz/README.md), to look for others meanwhile.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use whosthat::Config;
use whosthat::oauth::ttl_secs;
use whosthat::routes::{normalize_path, normalize_prefix};
use whosthat::store::now_secs;

fn skip_known() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("WHOSTHAT_FUZZ_SKIP_KNOWN").is_some_and(|v| v != "0"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown:?}");
            assert_eq!(e.file, Path::new("fuzz.toml"));
            if let Some(line) = e.line {
                // 1-based, at most one past the last line.
                assert!(
                    line >= 1 && line <= text.split('\n').count(),
                    "line {line}: {shown}"
                );
            }
        }
        Ok(c) => {
            let _ = c.summary();
            // A warning names a route of the file.
            for w in &c.warnings {
                assert!(w.to_string().starts_with("fuzz.toml:"), "{w}");
                let key = w.key.as_deref().unwrap_or_default();
                let i: usize = key
                    .strip_prefix("routes[")
                    .and_then(|k| k.strip_suffix("].prefix"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("warning key {key:?}"));
                assert!(i < c.routes.routes().len(), "{w}");
            }
            let tp = &c.oauth.token_path;
            assert_eq!(normalize_path(tp).as_deref(), Ok(tp.as_str()));
            for r in c.routes.routes() {
                assert_eq!(
                    normalize_prefix(&r.prefix).as_deref(),
                    Ok(r.prefix.as_str())
                );
                assert!(!r.upstreams.is_empty());
                assert_ne!(&r.prefix, tp);
                assert!(std::ptr::eq(c.routes.find(&r.prefix).unwrap(), r));
                // Prefixes match ignoring ASCII case, and no two are equal so.
                for variant in [r.prefix.to_ascii_uppercase(), r.prefix.to_ascii_lowercase()] {
                    assert!(std::ptr::eq(c.routes.find(&variant).unwrap(), r));
                }
                assert!(!tp.eq_ignore_ascii_case(&r.prefix));
                for u in &r.upstreams {
                    assert!(
                        u.base_path.is_empty()
                            || normalize_prefix(&u.base_path).as_deref()
                                == Ok(u.base_path.as_str())
                    );
                }
            }
            assert!(!c.oauth.access_token_ttl.is_zero());
            assert!(!c.oauth.refresh_token_ttl.is_zero());
            if !skip_known() {
                // Known bugs (fuzz/README.md). oauth::revoke_family computes
                // `now_secs() + ttl_secs(max ttl) + 1`, issue_tokens `now + ttl`.
                for ttl in [c.oauth.access_token_ttl, c.oauth.refresh_token_ttl] {
                    let end = now_secs()
                        .checked_add(ttl_secs(ttl))
                        .and_then(|t| t.checked_add(1));
                    assert!(
                        end.is_some(),
                        "a token lifetime of {ttl:?} overflows unix seconds"
                    );
                }
                assert!(!c.oauth.issuer.contains('#'), "issuer {:?}", c.oauth.issuer);
            }
            if let Some(dc) = &c.oauth.default_client {
                assert!(c.clients.get(dc).is_some_and(|cl| cl.is_public()));
            }
        }
    }
});
