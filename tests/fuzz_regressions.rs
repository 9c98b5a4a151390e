//! Inputs from fuzzing (fuzz/, see fuzz/run.sh): the parsers of the token
//! endpoint, of request paths and bearer tokens, and of gateway.toml, checked
//! on the inputs that found bugs or that sit on an edge of their contracts.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use whosthat::Config;
use whosthat::error::{GatewayError, OAuthCode};
use whosthat::oauth::Params;
use whosthat::oauth::bearer::bearer_token;
use whosthat::oauth::client_auth::{ClientCredentials, extract};
use whosthat::routes::{RouteTable, normalize_path, normalize_prefix};
use whosthat::scope::ScopeSet;

// ------------------------------------------------------------------ helpers

fn auth_headers(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn basic(raw: &[u8]) -> String {
    format!("Basic {}", STANDARD.encode(raw))
}

/// A route table built as the gateway builds it, from gateway.toml text.
fn route_table(routes: &str) -> Arc<RouteTable> {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{routes}");
    Config::parse(&text, Path::new("routes.toml"))
        .unwrap()
        .routes
        .clone()
}

fn invalid_request(d: &'static str) -> GatewayError {
    GatewayError::OAuth(OAuthCode::InvalidRequest, d)
}

fn invalid_client() -> GatewayError {
    GatewayError::OAuth(OAuthCode::InvalidClient, "client authentication failed")
}

// ------------------------------------------------------- token request form

#[test]
fn a_name_repeated_once_decoded_is_refused() {
    // `grant%5Ftype` is `grant_type`: duplicates are judged on decoded names.
    assert_eq!(
        Params::parse(b"grant%5Ftype=password&grant_type=password").unwrap_err(),
        invalid_request("a parameter was sent more than once")
    );
    // An empty repeat is still a repeat, even though an empty value is absent.
    assert!(Params::parse(b"scope=read&scope=").is_err());
    assert!(Params::parse(b"scope=&scope").is_err());
}

#[test]
fn empty_names_values_and_separators() {
    let p = Params::parse(b"&&=&grant_type=password&&username=&password").unwrap();
    assert_eq!(p.get("grant_type"), Some("password"));
    assert_eq!(p.get(""), None);
    assert_eq!(p.get("username"), None);
    assert_eq!(p.get("password"), None);
    // Two empty names are two of the same name.
    assert!(Params::parse(b"=&=").is_err());
    assert!(Params::parse(b"").is_ok());
}

#[test]
fn plus_and_percent_decoding_in_the_body() {
    let p = Params::parse(b"username=st%C3%A9fano&password=p%26ss+word%3D%2B&scope=read+write")
        .unwrap();
    assert_eq!(p.get("username"), Some("stéfano"));
    assert_eq!(p.get("password"), Some("p&ss word=+"));
    let scope = ScopeSet::parse(p.get("scope").unwrap()).unwrap();
    assert_eq!(scope.to_string(), "read write");
}

#[test]
fn malformed_percent_escapes_in_the_body_are_kept_literally() {
    // form_urlencoded leaves a `%` that starts no escape as it is.
    let p = Params::parse(b"grant_type=%zz&password=%&code=%4").unwrap();
    assert_eq!(p.get("grant_type"), Some("%zz"));
    assert_eq!(p.get("password"), Some("%"));
    assert_eq!(p.get("code"), Some("%4"));
}

/// Found by `token_request` (minimal input: the one byte 0xFF). A body that
/// is not UTF-8, raw or once percent-decoded, is accepted with each bad
/// sequence replaced by U+FFFD, so `password=%FF` and `password=%FE` are the
/// same password and `client_id=%FF` names the client "\u{FFFD}". HTTP Basic
/// credentials with the same bytes are refused. Desired: invalid_request.
#[test]
fn a_body_that_decodes_to_invalid_utf8_is_refused() {
    for body in [
        &b"\xff"[..],
        b"%FF",
        b"grant_type=password&username=alice&password=%FF",
        b"grant_type=password&client_id=%C3%28",
        b"grant_type=password&username=2%82",
    ] {
        assert!(Params::parse(body).is_err(), "{body:?}");
    }
}

#[test]
fn basic_credentials_that_decode_to_invalid_utf8_are_refused() {
    let p = Params::parse(b"grant_type=client_credentials").unwrap();
    for raw in [&b"id%FF:secret"[..], b"id:%C3", b"\xff:x", b"%:x"] {
        let h = auth_headers(&[&basic(raw)]);
        let got = extract(&h, &p);
        if raw == b"%:x" {
            // A lone `%` is kept, as in the body.
            assert_eq!(
                got.unwrap(),
                ClientCredentials::Basic {
                    id: "%".into(),
                    secret: "x".into()
                }
            );
        } else {
            assert_eq!(got.unwrap_err(), invalid_client(), "{raw:?}");
        }
    }
}

#[test]
fn basic_edge_cases() {
    let none = Params::parse(b"grant_type=password").unwrap();
    // Extra spaces around the credentials are tolerated.
    let h = auth_headers(&[&format!("basic   {}  ", STANDARD.encode("a:b"))]);
    assert_eq!(
        extract(&h, &none).unwrap(),
        ClientCredentials::Basic {
            id: "a".into(),
            secret: "b".into()
        }
    );
    // The first `:` splits: the secret may hold more.
    let h = auth_headers(&[&basic(b"a:b:c")]);
    assert_eq!(
        extract(&h, &none).unwrap(),
        ClientCredentials::Basic {
            id: "a".into(),
            secret: "b:c".into()
        }
    );
    // No colon, no scheme separator, another scheme, a tab: all invalid_client.
    for v in [
        basic(b"justanid"),
        "Basic".to_string(),
        "Bearer abc".to_string(),
        format!("Basic\t{}", STANDARD.encode("a:b")),
        "Basic YTpi!".to_string(),
    ] {
        assert_eq!(
            extract(&auth_headers(&[&v]), &none).unwrap_err(),
            invalid_client(),
            "{v}"
        );
    }
    // Two Authorization headers: invalid_request, whatever they hold.
    let h = auth_headers(&[&basic(b"a:b"), "Bearer x"]);
    assert_eq!(
        extract(&h, &none).unwrap_err(),
        invalid_request("more than one Authorization header")
    );
    // The body's client_id must name the same (decoded) client.
    let p = Params::parse(b"grant_type=password&client_id=a+b").unwrap();
    assert!(extract(&auth_headers(&[&basic(b"a+b:s")]), &p).is_ok());
    assert!(extract(&auth_headers(&[&basic(b"a%20b:s")]), &p).is_ok());
    assert!(extract(&auth_headers(&[&basic(b"a%2Bb:s")]), &p).is_err());
}

#[test]
fn scope_tokens_with_odd_characters() {
    let p = Params::parse(b"scope=read%09write").unwrap();
    assert_eq!(ScopeSet::parse(p.get("scope").unwrap()), None);
    let p = Params::parse(b"scope=+read++write+read+").unwrap();
    assert_eq!(
        ScopeSet::parse(p.get("scope").unwrap())
            .unwrap()
            .to_string(),
        "read write"
    );
    // Only spaces: present in the form, an empty set once parsed.
    let p = Params::parse(b"scope=+++").unwrap();
    assert!(ScopeSet::parse(p.get("scope").unwrap()).unwrap().is_empty());
    for bad in ["\"x\"", "a\\b", "é", "\u{7f}"] {
        assert_eq!(ScopeSet::parse(bad), None, "{bad:?}");
    }
}

// ------------------------------------------------------------ request paths

#[test]
fn normalised_paths_are_fixed_points() {
    for (raw, want) in [
        ("/%61pi/x%2a%7e", "/api/x%2A~"),
        ("/api/%C3%A9t%c3%a9", "/api/%C3%A9t%C3%A9"),
        // `%25` before what is not two hex digits stays encoded, forwarded as it came.
        ("/api/50%25off", "/api/50%25off"),
        ("/a.b/c", "/a.b/c"),
        ("/api/x/", "/api/x/"),
        ("/%7Euser/x%2A/y", "/~user/x%2A/y"),
    ] {
        let out = normalize_path(raw).unwrap();
        assert_eq!(out, want, "{raw}");
        assert_eq!(normalize_path(&out).unwrap(), out, "{raw}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    for raw in [
        "/api/%2e%2E/admin",
        "/api/.%2e",
        "/api/%2E",
        "/api/x/.",
        // A segment ending in `.` or a space, and a double-encoded `..` (issue 9).
        "/api/...",
        "/api/x./y",
        "/api/x%20",
        "/api/%252e%252e/admin",
        "/api/..%2fadmin",
        "/api%2Fadmin",
        "/api%5cadmin",
        "/api%3Bx",
        "/api/a;jsessionid=1",
        "/api\\admin",
        "/api//admin",
        "//api",
        "/api/%00x",
        "/api/%7F",
        "/api/%1f",
        "/api/été",
        "/api/a b",
        "/api/%",
        "/api/%4",
        "/api/%g0",
        "",
        "api",
    ] {
        assert!(normalize_path(raw).is_err(), "{raw:?} should be refused");
        assert!(normalize_prefix(raw).is_err(), "{raw:?} should be refused");
    }
}

#[test]
fn routes_match_whole_segments_and_strip_exactly() {
    let t = route_table(
        r#"
[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:9001/v1/"
strip_prefix = true

[[routes]]
prefix = "/api/admin"
upstream = "http://127.0.0.1:9002"

[[routes]]
prefix = "/%7Euser/x%2a"
upstream = "http://127.0.0.1:9004/u"
strip_prefix = true

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9000/root"
strip_prefix = true
"#,
    );
    let go = |raw: &str| {
        let path = normalize_path(raw).unwrap();
        let r = t.find(&path).unwrap();
        (
            r.prefix.clone(),
            r.upstream_path_and_query(&r.upstreams[0], &path, Some("q=1")),
        )
    };
    assert_eq!(go("/api"), ("/api".into(), "/v1/?q=1".into()));
    assert_eq!(go("/api/"), ("/api".into(), "/v1/?q=1".into()));
    assert_eq!(
        go("/api/orders/7"),
        ("/api".into(), "/v1/orders/7?q=1".into())
    );
    assert_eq!(
        go("/api/administrator"),
        ("/api".into(), "/v1/administrator?q=1".into())
    );
    assert_eq!(
        go("/api/admin/x"),
        ("/api/admin".into(), "/api/admin/x?q=1".into())
    );
    assert_eq!(
        go("/%7euser/x%2A/y"),
        ("/~user/x%2A".into(), "/u/y?q=1".into())
    );
    // The root route with strip_prefix forwards the whole path.
    assert_eq!(go("/apix"), ("/".into(), "/root/apix?q=1".into()));
    assert_eq!(go("/"), ("/".into(), "/root/?q=1".into()));
}

// ------------------------------------------------------------- bearer tokens

#[test]
fn bearer_token_edges() {
    let b = |v: &str| bearer_token(&auth_headers(&[v])).map(|t| t.map(str::to_string));
    assert_eq!(b("Bearer  abc").unwrap().as_deref(), Some("abc"));
    assert_eq!(
        b("BEARER a-b.c_d~e+f/g==").unwrap().as_deref(),
        Some("a-b.c_d~e+f/g==")
    );
    // Another scheme, or no space after the scheme: no bearer credentials.
    assert_eq!(b("Basic abc").unwrap(), None);
    assert_eq!(b("Bearer\tabc").unwrap(), None);
    assert_eq!(b("Bearerabc").unwrap(), None);
    // Malformed bearer credentials.
    for v in [
        "Bearer",
        "Bearer ",
        "Bearer ==",
        "Bearer a=b",
        "Bearer abc ",
        "Bearer a b",
        "Bearer é",
    ] {
        assert!(b(v).is_err(), "{v:?}");
    }
}

// -------------------------------------------------------------- gateway.toml

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ckw0KX5ivcbTIRZv6y2QOwF0P5pjSyCGbaXWfGKmCqE";

fn config_err(text: &str) -> whosthat::ConfigError {
    let e = Config::parse(text, Path::new("fuzz.toml")).unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("fuzz.toml"), "{shown}");
    if let Some(line) = e.line {
        assert!(line >= 1 && line <= text.split('\n').count(), "{shown}");
    }
    e
}

#[test]
fn config_errors_name_the_file_on_any_text() {
    for text in [
        "",
        "\n\n\n",
        "[server",
        "[server]\n",
        "[server]\nlisten = 3\n",
        "server = 3",
        "[server]\nlisten = \"127.0.0.1:0\"\n[server]\n",
        "\u{feff}[server]\nlisten = \"127.0.0.1:0\"\nx = 1",
        "[server]\r\nlisten = \"127.0.0.1:0\"\r\nbogus = 1\r\n",
        "[server]\nlisten = \"127.0.0.1:0\"\n[oauth]\naccess_token_ttl = \"99999999999999999999d\"\n",
        "[server]\nlisten = \"127.0.0.1:0\"\n[oauth]\npassword_workers = -1\n",
    ] {
        config_err(text);
    }
}

/// `oauth::revoke_family` computes `now_secs() + ttl_secs(max ttl) + 1` and
/// `issue_tokens` `now + ttl`: a lifetime near u64::MAX seconds, which humantime
/// accepts, overflows them (a panic in debug builds; in release, wrapped
/// expiry times: tokens born expired, revocations that end at once).
/// Desired: such lifetimes refused at load, with a sane upper bound.
#[test]
fn token_lifetimes_that_overflow_unix_seconds_are_refused() {
    for ttl in ["18446744073709551615s", "584542046090y"] {
        for key in ["access_token_ttl", "refresh_token_ttl"] {
            let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[oauth]\n{key} = \"{ttl}\"\n");
            let e = config_err_or_none(&text);
            let want = format!("oauth.{key}");
            assert_eq!(
                e.and_then(|e| e.key).as_deref(),
                Some(want.as_str()),
                "{ttl}"
            );
        }
    }
}

/// Found by `config` (minimal input below). RFC 8414 section 2: the issuer
/// has no query or fragment. The query is refused; a fragment is kept and
/// shows up in the metadata document, and http::Uri ignores what follows `#`,
/// so `http://127.0.#0.1:8080` passes with the host `127.0.`.
#[test]
fn an_issuer_with_a_fragment_is_refused() {
    let minimal = "[server]\nlisten=\"1.0.0.1:8\"\n[oauth]\nissuer=\"http://2#\"";
    assert_eq!(
        config_err_or_none(minimal).and_then(|e| e.key).as_deref(),
        Some("oauth.issuer")
    );
    for issuer in [
        "http://gw.example/#frag",
        "http://gw.example/a#",
        "http://127.0.#0.1:8080",
    ] {
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[oauth]\nissuer = \"{issuer}\"\n");
        let e = config_err_or_none(&text);
        assert_eq!(
            e.and_then(|e| e.key).as_deref(),
            Some("oauth.issuer"),
            "{issuer}"
        );
    }
}

fn config_err_or_none(text: &str) -> Option<whosthat::ConfigError> {
    Config::parse(text, Path::new("fuzz.toml")).err()
}

#[test]
fn shipped_config_and_fuzz_seeds() {
    let text = include_str!("../gateway.toml");
    let c = Config::parse(text, Path::new("gateway.toml")).unwrap();
    for r in c.routes.routes() {
        assert_eq!(normalize_prefix(&r.prefix).unwrap(), r.prefix);
    }

    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n\n\
         [[clients]]\nid = \"cli\"\ngrants = [\"password\"]\n\n[[routes]]\nprefix = \"/api/\"\n\
         upstream = \"http://127.0.0.1:9000\"\n"
    );
    Config::parse(&base, Path::new("fuzz.toml")).unwrap();
    for (extra, key) in [
        (
            "\n[[routes]]\nprefix = \"/x/%2e%2e/api\"\nupstream = \"http://127.0.0.1:1\"\n",
            "routes[1].prefix",
        ),
        (
            "\n[[routes]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n",
            "routes[1].prefix",
        ),
        (
            "\n[[routes]]\nprefix = \"/%61uth/authorize\"\nupstream = \"http://127.0.0.1:1\"\n",
            "routes[1].prefix",
        ),
        (
            "\n[[routes]]\nprefix = \"/s\"\nupstream = []\n",
            "routes[1].upstream",
        ),
        (
            "\n[[routes]]\nprefix = \"/h\"\nupstream = \"http://127.0.0.1:1/a%2Fb\"\n",
            "routes[1].upstream",
        ),
        (
            "\n[oauth]\ntoken_path = \"/auth//token\"\n",
            "oauth.token_path",
        ),
        (
            "\n[oauth]\ntoken_path = \"/%7Etoken\"\n",
            "oauth.token_path",
        ),
        ("\n[store]\nbackend = \"redis\"\n", "store.redis_url"),
        ("\n[store]\nredis_url = \"redis://h\"\n", "store.backend"),
    ] {
        let e = config_err(&(base.clone() + extra));
        assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
    }
}

/// Found by `token_request` after the strict decoding landed: a raw byte that
/// is not UTF-8 on its own (0xD8) completed by a percent-escape (%A9) decodes,
/// byte by byte as the URL Standard says, to valid UTF-8 and must be accepted.
#[test]
fn raw_and_escaped_bytes_are_decoded_together() {
    let body = b"x&gnt&sgtrant&grant_type=%C\xd8%A9t";
    let p = Params::parse(body).expect("decodes to UTF-8");
    assert_eq!(p.get("grant_type"), Some("%C\u{629}t"));
}
