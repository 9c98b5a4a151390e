//! Helpers for the authorization code flow and the OAuth side endpoints, over real
//! HTTP: a cookie-carrying browser that never follows redirects, a hidden-field
//! extractor, a PKCE pair, a parsed `Location`, and a client that connects from
//! another loopback address (the brute-force limits are per address).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{Gateway, Reply, request, token_request};

pub const AUTHORIZE: &str = "/auth/authorize";
pub const COOKIE: &str = "whosthat_authz";
pub const ISSUER: &str = "http://127.0.0.1:8080";
pub const SPA_CB: &str = "http://127.0.0.1:8765/callback";
pub const SPA_OTHER: &str = "http://127.0.0.1:8765/other?x=1";
pub const WEB_CB: &str = "http://127.0.0.1:8765/web";
/// RFC 7636 Appendix B.
pub const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// An `application/x-www-form-urlencoded` string, every name and value encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

/// The authorization endpoint's URL with `pairs` as its query.
pub fn authorize_url(gw: &Gateway, pairs: &[(&str, &str)]) -> String {
    gw.url(&format!("{AUTHORIZE}?{}", form(pairs)))
}

/// A fresh PKCE pair `(verifier, S256 challenge)`; the verifier is 43 base64url characters.
pub fn pkce_pair() -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!(
        "{nanos}-{}-{}",
        N.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    );
    let verifier = URL_SAFE_NO_PAD.encode(Sha256::digest(seed.as_bytes()));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The `value` of the hidden input `name="<name>"` in `html`.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_string())
}

#[track_caller]
pub fn csrf_of(page: &Reply) -> String {
    hidden_field(&page.text(), "csrf")
        .unwrap_or_else(|| panic!("no csrf field in the page: {}", page.text()))
}

/// A parsed `Location`: everything before `?`, and the query's pairs in order.
#[derive(Debug)]
pub struct Location {
    pub base: String,
    pub params: Vec<(String, String)>,
}

impl Location {
    pub fn parse(loc: &str) -> Location {
        assert!(!loc.contains('#'), "a fragment in {loc:?}");
        let (base, query) = loc.split_once('?').unwrap_or((loc, ""));
        let params = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Location {
            base: base.to_string(),
            params,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.params.iter().filter(|(k, _)| k == name).count()
    }

    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The `Location` of a 303, asserting the status.
#[track_caller]
pub fn see_other(r: &Reply) -> Location {
    assert_eq!(
        r.status,
        303,
        "a 303 redirect was expected, got: {} {:?}",
        r.status,
        r.text()
    );
    Location::parse(r.header("location").expect("a 303 has a Location"))
}

/// Security headers every page and redirect of the authorization endpoint carries.
#[track_caller]
pub fn assert_page_headers(r: &Reply) {
    let csp = r
        .header("content-security-policy")
        .expect("Content-Security-Policy is set");
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "no CORS on the authorization endpoint"
    );
}

/// An HTML error page: status, never a redirect, no new transaction, the message.
#[track_caller]
pub fn assert_error_page(r: &Reply, status: u16, message: &str) {
    assert_eq!(r.status, status, "expected an error page: {}", r.text());
    assert!(
        r.header("location").is_none(),
        "an error page must not redirect: {:?}",
        r.header("location")
    );
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_page_headers(r);
    let html = r.text();
    assert!(html.contains("Cannot continue"), "{html}");
    assert!(html.contains(message), "expected {message:?} in {html}");
    assert!(
        hidden_field(&html, "csrf").is_none(),
        "an error page has no form"
    );
}

/// A browser: keeps the `whosthat_authz` cookie, never follows redirects.
#[derive(Default)]
pub struct Browser {
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser::default()
    }

    fn take_cookie(&mut self, r: &Reply) {
        for v in r.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let Some((name, rest)) = v.split_once('=') else {
                continue;
            };
            if name.trim() != COOKIE {
                continue;
            }
            let value = rest.split(';').next().unwrap().trim();
            let cleared = value.is_empty()
                || rest
                    .split(';')
                    .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            self.cookie = (!cleared).then(|| value.to_string());
        }
    }

    fn cookie_header(&self) -> Option<String> {
        self.cookie.as_ref().map(|c| format!("{COOKIE}={c}"))
    }

    pub async fn get(&mut self, url: &str) -> Reply {
        let cookie = self.cookie_header();
        let mut h = vec![("origin", "http://evil.example")];
        if let Some(c) = &cookie {
            h.push(("cookie", c));
        }
        let r = request(Method::GET, url, &h, "").await;
        self.take_cookie(&r);
        r
    }

    /// `GET /auth/authorize` (back from a POST).
    pub async fn page(&mut self, gw: &Gateway) -> Reply {
        self.get(&gw.url(AUTHORIZE)).await
    }

    pub async fn post(&mut self, gw: &Gateway, pairs: &[(&str, &str)]) -> Reply {
        let cookie = self.cookie_header();
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(c) = &cookie {
            h.push(("cookie", c));
        }
        let r = request(Method::POST, &gw.url(AUTHORIZE), &h, &form(pairs)).await;
        self.take_cookie(&r);
        r
    }
}

/// Opens a sign-in with `pairs`, asserting the login page. Returns the browser and
/// the page.
pub async fn start(gw: &Gateway, pairs: &[(&str, &str)]) -> (Browser, Reply) {
    let mut b = Browser::new();
    let page = b.get(&authorize_url(gw, pairs)).await;
    assert_eq!(page.status, 200, "login page expected: {}", page.text());
    assert!(page.text().contains("Sign in"), "{}", page.text());
    assert!(b.cookie.is_some(), "the sign-in sets its cookie");
    (b, page)
}

/// Posts the login form of `page`; returns the 303 answer.
pub async fn post_login(
    gw: &Gateway,
    b: &mut Browser,
    page: &Reply,
    user: &str,
    pw: &str,
) -> Reply {
    let csrf = csrf_of(page);
    b.post(
        gw,
        &[
            ("csrf", &csrf),
            ("action", "login"),
            ("username", user),
            ("password", pw),
        ],
    )
    .await
}

/// Logs in with the right password and returns the consent page.
pub async fn reach_consent(
    gw: &Gateway,
    b: &mut Browser,
    page: &Reply,
    user: &str,
    pw: &str,
) -> Reply {
    let r = post_login(gw, b, page, user, pw).await;
    let loc = see_other(&r);
    assert_eq!(loc.base, AUTHORIZE, "{loc:?}");
    let consent = b.page(gw).await;
    assert_eq!(consent.status, 200, "{}", consent.text());
    assert!(
        consent.text().contains("Allow access?"),
        "consent page expected: {}",
        consent.text()
    );
    consent
}

/// Posts `action` (approve/deny) on the consent page; returns the 303 answer.
pub async fn decide(gw: &Gateway, b: &mut Browser, consent: &Reply, action: &str) -> Reply {
    let csrf = csrf_of(consent);
    b.post(gw, &[("csrf", &csrf), ("action", action)]).await
}

/// The whole flow for `pairs` as `user`, approved. Returns the redirect.
pub async fn approved(gw: &Gateway, pairs: &[(&str, &str)], user: &str, pw: &str) -> Location {
    let (mut b, page) = start(gw, pairs).await;
    let consent = reach_consent(gw, &mut b, &page, user, pw).await;
    let r = decide(gw, &mut b, &consent, "approve").await;
    let loc = see_other(&r);
    assert!(loc.get("code").is_some(), "no code in {loc:?}");
    loc
}

/// A code for spa (alice, `scope`) bound to `challenge` and redirect URI `SPA_CB`.
pub async fn spa_code(gw: &Gateway, challenge: &str, scope: &str) -> String {
    let loc = approved(
        gw,
        &[
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", SPA_CB),
            ("scope", scope),
            ("state", "s"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
        "alice",
        crate::common::ALICE_PW,
    )
    .await;
    loc.get("code").unwrap().to_string()
}

/// Exchanges a code of spa (redirect URI `SPA_CB`) with its PKCE verifier.
pub async fn spa_exchange(gw: &Gateway, code: &str, verifier: &str) -> Reply {
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", SPA_CB),
        ("client_id", "spa"),
        ("code_verifier", verifier),
    ];
    token(gw, &pairs, &[]).await
}

/// POSTs `pairs` to the token endpoint with extra headers.
pub async fn token(gw: &Gateway, pairs: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
    token_request(gw, &form(pairs), headers).await
}

/// A JSON OAuth error (RFC 6749 5.2) with `status` and `code`.
#[track_caller]
pub fn assert_oauth_error(r: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "expected {status} {code}, got: {}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"], code, "body: {j}");
    assert!(j["error_description"].is_string(), "body: {j}");
    assert!(j.get("access_token").is_none(), "{j}");
    j
}

/// A token response, asserting 200.
#[track_caller]
pub fn assert_tokens(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "tokens expected: {}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    assert_eq!(j["token_type"], "Bearer", "{j}");
    assert!(j["access_token"].is_string(), "{j}");
    j
}

pub fn str_of<'a>(j: &'a Value, k: &str) -> &'a str {
    j[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {j}"))
}

/// The scope string as a sorted list.
pub fn scopes(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.split(' ').filter(|s| !s.is_empty()).collect();
    v.sort_unstable();
    v
}

/// Sends `req` from the local address `from` (e.g. 127.0.0.2): the gateway sees
/// another client address.
pub async fn send_from(from: Ipv4Addr, req: Request<Full<Bytes>>) -> Reply {
    let mut conn = HttpConnector::new();
    conn.set_local_address(Some(IpAddr::V4(from)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(conn);
    let resp = tokio::time::timeout(crate::common::HANG_GUARD, client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A token request from the local address `from`.
pub async fn token_from(from: Ipv4Addr, gw: &Gateway, pairs: &[(&str, &str)]) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(gw.url("/auth/access_token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form(pairs))))
        .unwrap();
    send_from(from, req).await
}

/// `POST /auth/introspect` for `token` as `svc` (allowed to introspect): the JSON answer.
pub async fn introspect_as_svc(gw: &Gateway, token: &str) -> Value {
    let auth = crate::common::basic("svc", crate::common::SVC_SECRET);
    let r = request(
        Method::POST,
        &gw.url("/auth/introspect"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &auth),
        ],
        &form(&[("token", token)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}
