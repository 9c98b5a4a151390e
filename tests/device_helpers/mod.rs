//! Helpers for the device authorization grant (RFC 8628) over real HTTP: the
//! device's requests, and a browser with a cookie jar that walks the
//! verification page (code, sign-in, consent) without following redirects.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use crate::common::{Gateway, Reply, request};
use crate::oauth_helpers::{csrf_of, form, send_from, token};

pub const DEVICE_AUTHORIZATION: &str = "/auth/device_authorization";
pub const DEVICE: &str = "/auth/device";
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// `POST /auth/device_authorization` for `client` (public) with `scope`.
pub async fn authorize(gw: &Gateway, client: &str, scope: &str) -> Reply {
    request(
        Method::POST,
        &gw.url(DEVICE_AUTHORIZATION),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(&[("client_id", client), ("scope", scope)]),
    )
    .await
}

/// The device authorization response, asserting 200.
pub async fn started(gw: &Gateway, client: &str, scope: &str) -> Value {
    let r = authorize(gw, client, scope).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// One poll of the token endpoint by `client`.
pub async fn poll(gw: &Gateway, client: &str, device_code: &str) -> Reply {
    token(
        gw,
        &[
            ("grant_type", GRANT),
            ("device_code", device_code),
            ("client_id", client),
        ],
        &[],
    )
    .await
}

/// A browser: every cookie the gateway sets, sent back; redirects not followed.
#[derive(Default)]
pub struct DeviceBrowser {
    pub cookies: BTreeMap<String, String>,
    /// Connect from this loopback address (brute-force limits are per address).
    pub from: Option<Ipv4Addr>,
}

impl DeviceBrowser {
    pub fn new() -> DeviceBrowser {
        DeviceBrowser::default()
    }

    pub fn from(addr: Ipv4Addr) -> DeviceBrowser {
        DeviceBrowser {
            from: Some(addr),
            ..DeviceBrowser::default()
        }
    }

    fn take_cookies(&mut self, r: &Reply) {
        for v in r.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let Some((name, rest)) = v.split_once('=') else {
                continue;
            };
            let value = rest.split(';').next().unwrap().trim();
            let cleared = value.is_empty() || v.to_ascii_lowercase().contains("max-age=0");
            if cleared {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.to_string());
            }
        }
    }

    async fn send(&mut self, method: Method, url: &str, body: String) -> Reply {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut b = Request::builder().method(method.clone()).uri(url);
        if !cookie.is_empty() {
            b = b.header("cookie", cookie.join("; "));
        }
        if method == Method::POST {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = b.body(Full::new(Bytes::from(body))).unwrap();
        let r = match self.from {
            Some(addr) => send_from(addr, req).await,
            None => crate::common::send(req).await,
        };
        self.take_cookies(&r);
        r
    }

    pub async fn get(&mut self, url: &str) -> Reply {
        self.send(Method::GET, url, String::new()).await
    }

    pub async fn page(&mut self, gw: &Gateway) -> Reply {
        self.get(&gw.url(DEVICE)).await
    }

    pub async fn post(&mut self, gw: &Gateway, pairs: &[(&str, &str)]) -> Reply {
        self.send(Method::POST, &gw.url(DEVICE), form(pairs)).await
    }

    /// Posts `pairs` with the CSRF token of `page`, asserts the 303 back to the
    /// page, and returns the page that follows.
    pub async fn submit(&mut self, gw: &Gateway, page: &Reply, pairs: &[(&str, &str)]) -> Reply {
        let csrf = csrf_of(page);
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(pairs);
        let r = self.post(gw, &all).await;
        assert_eq!(r.status, 303, "{}", r.text());
        assert_eq!(r.header("location"), Some(DEVICE));
        self.page(gw).await
    }

    /// Enters `code` and returns the next page (the sign-in if it was right).
    pub async fn enter_code(&mut self, gw: &Gateway, code: &str) -> Reply {
        let page = self.page(gw).await;
        assert_eq!(page.status, 200, "{}", page.text());
        self.submit(gw, &page, &[("action", "code"), ("user_code", code)])
            .await
    }

    /// Code and sign-in; returns the consent page.
    pub async fn reach_consent(&mut self, gw: &Gateway, code: &str, user: &str, pw: &str) -> Reply {
        let login = self.enter_code(gw, code).await;
        assert!(login.text().contains("Sign in"), "{}", login.text());
        let consent = self
            .submit(
                gw,
                &login,
                &[("action", "login"), ("username", user), ("password", pw)],
            )
            .await;
        assert!(
            consent.text().contains("Connect this device?"),
            "{}",
            consent.text()
        );
        consent
    }

    /// `approve` or `deny` on the consent page; returns the final page.
    pub async fn decide(&mut self, gw: &Gateway, consent: &Reply, action: &str) -> Reply {
        let csrf = csrf_of(consent);
        self.post(gw, &[("csrf", &csrf), ("action", action)]).await
    }
}

/// The whole page flow for `code` as `user`, approved; asserts the done page.
pub async fn approve(gw: &Gateway, code: &str, user: &str, pw: &str) {
    let mut b = DeviceBrowser::new();
    let consent = b.reach_consent(gw, code, user, pw).await;
    let done = b.decide(gw, &consent, "approve").await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(
        done.text().contains("Your device is connected"),
        "{}",
        done.text()
    );
}
