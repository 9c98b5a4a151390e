//! The verification page of the device flow, `GET/POST /auth/device`
//! (RFC 8628 section 3.3): enter the code, sign in, approve or deny.
//!
//! It works like the login page of the code flow ([`super::authorize`]): the
//! steps are carried in an HttpOnly SameSite cookie sealed with the
//! authorizer's key (for its own purpose: the two cookies never open as each
//! other), every POST carries the step's CSRF token and is answered 303, the
//! pages may not be framed and need no JavaScript. A code given in the link
//! (`verification_uri_complete`) is only filled in: the user still submits
//! it, and the consent page shows it again beside the client's name, so that
//! a code sent by someone else is noticed (section 5.4). Wrong codes count
//! against the same brute-force limits as passwords (section 5.1), under the
//! one account name `device-user-code`: guessing from many addresses drains a
//! shared budget, while a browser or address that entered a right code before
//! is limited on its own.

use std::sync::Arc;

use http::header::{HeaderValue, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use minijinja::context;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::authorize::{Authorizer, cookie_values, secure_attr, see_other};
use super::device::{DEVICE_PATH, display_user_code, normalize_user_code, user_code_key};
use super::limiter::{self, Origin, Refusal};
use super::{OAuthContext, Params, read_form};
use crate::config::{Client, GrantType, User};
use crate::error::{Body, GatewayCode, GatewayError, OAuthCode};
use crate::scope::ScopeSet;
use crate::store::{DeviceDecision, DeviceRecord, new_token};

pub const DEVICE_COOKIE: &str = "whosthat_device_txn";
/// Seals the page's cookie for this purpose and layout only.
const AAD: &[u8] = b"whosthat_device_txn/1";
/// How long the page's steps may take (the device code may live less).
const TXN_TTL_SECS: u64 = 10 * 60;
/// The account wrong user codes are counted against.
pub const USER_CODE_ACCOUNT: &str = "device-user-code";

/// Where the user is on the page, as sealed into the cookie.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DeviceTxn {
    expires: u64,
    csrf: String,
    /// The code entered, normalised, once it named a pending authorization.
    user_code: Option<String>,
    /// The user, once signed in.
    user: Option<String>,
    /// Shown once on the next page.
    error: Option<String>,
}

impl DeviceTxn {
    fn new(now: u64) -> DeviceTxn {
        DeviceTxn {
            expires: now + TXN_TTL_SECS,
            csrf: new_token(),
            user_code: None,
            user: None,
            error: None,
        }
    }
}

/// `GET` and `POST /auth/device`.
pub async fn handle(
    authz: &Authorizer,
    ctx: &OAuthContext<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let page = Page { authz, ctx };
    match *req.method() {
        Method::GET | Method::HEAD => page.get(&req).await,
        Method::POST => page.post(req).await,
        _ => Err(GatewayError::MethodNotAllowed("GET, POST".into())),
    }
}

/// The pending authorization a step is about, and its client as configured now.
struct Pending {
    rec: DeviceRecord,
    client: Arc<Client>,
}

struct Page<'a, 'c> {
    authz: &'a Authorizer,
    ctx: &'a OAuthContext<'c>,
}

impl Page<'_, '_> {
    fn load(&self, headers: &HeaderMap) -> Option<DeviceTxn> {
        let now = self.authz.now();
        cookie_values(headers, DEVICE_COOKIE)
            .filter_map(|v| self.authz.open_bytes(AAD, v))
            .find_map(|b| serde_json::from_slice::<DeviceTxn>(&b).ok())
            .filter(|t| t.expires > now)
    }

    fn with_cookie(&self, mut resp: Response<Body>, txn: &DeviceTxn) -> Response<Body> {
        let sealed = serde_json::to_vec(txn)
            .ok()
            .and_then(|b| self.authz.seal_bytes(AAD, b));
        let max_age = txn.expires.saturating_sub(self.authz.now()).max(1);
        let cookie = sealed.map(|v| {
            format!(
                "{DEVICE_COOKIE}={v}; Path={DEVICE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
                secure_attr(self.ctx)
            )
        });
        match cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
            Some(v) => {
                resp.headers_mut().append(SET_COOKIE, v);
                resp
            }
            None => self
                .authz
                .error_page(StatusCode::BAD_REQUEST, "This page could not be kept."),
        }
    }

    fn cleared(&self, mut resp: Response<Body>) -> Response<Body> {
        let v = format!(
            "{DEVICE_COOKIE}=; Path={DEVICE_PATH}; Max-Age=0; HttpOnly; SameSite=Lax{}",
            secure_attr(self.ctx)
        );
        if let Ok(v) = HeaderValue::try_from(v) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
        resp
    }

    /// The live, undecided authorization `code` names, with its client if that
    /// may still use the grant.
    async fn pending(&self, code: &str) -> Result<Option<Pending>, GatewayError> {
        let rec = self
            .ctx
            .store
            .device_by_user_code(user_code_key(code))
            .await
            .map_err(GatewayError::from)?;
        Ok(rec.and_then(|rec| {
            let client = self.ctx.config.clients.get(rec.client.as_ref())?;
            client.allows(GrantType::DeviceCode).then(|| Pending {
                client: client.clone(),
                rec,
            })
        }))
    }

    /// The scope `user` would grant, or `None` if the device asked for more
    /// than the user and client may have together.
    fn scope_for(&self, p: &Pending, user: &User) -> Option<ScopeSet> {
        let allowed = user.scopes.intersection(&p.client.scopes);
        match &p.rec.scope {
            None => Some(allowed),
            Some(asked) if asked.is_subset_of(&allowed) => Some(asked.clone()),
            Some(_) => None,
        }
    }

    async fn get(&self, req: &Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        let mut txn = self
            .load(req.headers())
            .unwrap_or_else(|| DeviceTxn::new(self.authz.now()));
        let error = txn.error.take();
        let resp = self
            .show(&mut txn, error.as_deref(), prefill(req.uri().query()))
            .await?;
        Ok(self.with_cookie(resp, &txn))
    }

    /// The page for where `txn` stands; a step whose authorization is gone
    /// goes back to the code.
    async fn show(
        &self,
        txn: &mut DeviceTxn,
        error: Option<&str>,
        prefill: String,
    ) -> Result<Response<Body>, GatewayError> {
        let action = DEVICE_PATH;
        let csrf = txn.csrf.clone();
        let pending = match &txn.user_code {
            Some(code) => self.pending(code).await?,
            None => None,
        };
        let (Some(p), Some(code)) = (pending, txn.user_code.clone()) else {
            let error = match txn.user_code.take() {
                Some(_) => {
                    Some("That code has expired or was already used. Start again on your device.")
                }
                None => error,
            };
            txn.user = None;
            return Ok(self.authz.render(
                StatusCode::OK,
                "device.html",
                context! { csrf, error, action, user_code => prefill },
            ));
        };
        let client = p.client.id.to_string();
        let user = txn
            .user
            .as_deref()
            .and_then(|u| self.ctx.config.users.get(u));
        let Some(user) = user else {
            txn.user = None;
            return Ok(self.authz.render(
                StatusCode::OK,
                "login.html",
                context! { client, csrf, error, action },
            ));
        };
        let scopes: Vec<String> = self
            .scope_for(&p, user)
            .map(|s| s.iter().map(str::to_string).collect())
            .unwrap_or_default();
        Ok(self.authz.render(
            StatusCode::OK,
            "device_consent.html",
            context! {
                client, csrf, action, scopes,
                user => user.name.to_string(),
                user_code => display_user_code(&code),
            },
        ))
    }

    async fn post(&self, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        let Some(mut txn) = self.load(req.headers()) else {
            // No live page: start again (a forged POST gets nothing else).
            return Ok(see_other(DEVICE_PATH));
        };
        let device = limiter::device_cookie(req.headers()).map_or_else(new_token, str::to_string);
        let (_, form) = read_form(req, false).await?;
        let sent = form.get("csrf").unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(txn.csrf.as_bytes())) {
            return Ok(self.authz.error_page(
                StatusCode::FORBIDDEN,
                "The form was not sent from this page.",
            ));
        }
        match (form.get("action"), &txn.user_code, &txn.user) {
            (Some("code"), None, _) => self.enter_code(txn, &form, &device).await,
            (Some("login"), Some(_), None) => self.login(txn, &form, &device).await,
            (Some(a @ ("approve" | "deny")), Some(_), Some(_)) => {
                let approve = a == "approve";
                self.decide(&mut txn, approve).await
            }
            _ => Ok(self.authz.error_page(
                StatusCode::BAD_REQUEST,
                "This form does not fit this step of the page.",
            )),
        }
    }

    /// Back to the page with `txn` (and its message, shown once).
    fn back(&self, txn: &DeviceTxn) -> Response<Body> {
        self.with_cookie(see_other(DEVICE_PATH), txn)
    }

    async fn enter_code(
        &self,
        mut txn: DeviceTxn,
        form: &Params,
        device: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let Some(code) = form.get("user_code").and_then(normalize_user_code) else {
            txn.error = Some("Enter the 8-letter code your device shows.".into());
            return Ok(self.back(&txn));
        };
        let origin = Origin {
            addr: self.ctx.peer,
            device: Some(device),
        };
        let attempt = match self.ctx.limiter.begin(USER_CODE_ACCOUNT, &origin).await {
            Ok(a) => a,
            Err(Refusal::TooMany(secs)) => {
                self.ctx.audit(
                    "lockout",
                    None,
                    None,
                    Some("device_code"),
                    Some("too_many_attempts"),
                );
                txn.error = Some(format!(
                    "Too many wrong codes. Try again in {secs} seconds."
                ));
                return Ok(self.back(&txn));
            }
            Err(Refusal::Unavailable(e)) => {
                return Err(GatewayError::StoreUnavailable(crate::error::Cause::new(e)));
            }
        };
        match self.pending(&code).await {
            Ok(Some(p)) => {
                attempt.succeeded().await;
                let client = Some(p.client.id.as_ref());
                self.ctx.audit(
                    "device_code_entered",
                    None,
                    client,
                    Some("device_code"),
                    None,
                );
                txn.user_code = Some(code);
                let mut resp = self.back(&txn);
                let secure = !secure_attr(self.ctx).is_empty();
                if let Some(v) = limiter::device_set_cookie(device, secure) {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
                Ok(resp)
            }
            Ok(None) => {
                let delay = attempt.failure_delay();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                attempt.failed().await;
                self.ctx.audit(
                    "device_code_refused",
                    None,
                    None,
                    Some("device_code"),
                    Some("unknown_user_code"),
                );
                txn.error = Some("That code is not valid, has expired or was already used.".into());
                Ok(self.back(&txn))
            }
            Err(e) => {
                attempt.not_checked().await;
                Err(e)
            }
        }
    }

    async fn login(
        &self,
        mut txn: DeviceTxn,
        form: &Params,
        device: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let username = form.get("username").unwrap_or("");
        let password = form.get("password").unwrap_or("");
        let Some(p) = self.pending(txn.user_code.as_deref().unwrap_or("")).await? else {
            return Ok(self.back(&txn));
        };
        let client = Some(p.client.id.as_ref());
        let grant = Some("device_code");
        let outcome = if username.is_empty() || password.is_empty() {
            Err("Enter your username and password.".to_string())
        } else {
            match super::check_user_password_from(self.ctx, username, Some(device), password).await
            {
                Ok(Some(user)) => {
                    self.ctx
                        .audit("signin_succeeded", Some(username), client, grant, None);
                    Ok(user.clone())
                }
                Ok(None) => {
                    self.ctx.metrics.auth_failure(OAuthCode::InvalidGrant);
                    let reason = Some("invalid_username_or_password");
                    self.ctx
                        .audit("signin_failed", Some(username), client, grant, reason);
                    Err("Invalid username or password.".to_string())
                }
                Err(GatewayError::TooManyAttempts(secs)) => {
                    self.ctx.metrics.auth_failure(GatewayCode::TooManyAttempts);
                    Err(format!(
                        "Too many failed attempts. Try again in {secs} seconds."
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        match outcome {
            Err(message) => txn.error = Some(message),
            Ok(user) if self.scope_for(&p, &user).is_none() => {
                txn.error = Some("This account may not grant what the device asks for.".into());
            }
            Ok(user) => {
                txn.user = Some(user.name.to_string());
                // A fresh CSRF token for the consent step.
                txn.csrf = new_token();
            }
        }
        Ok(self.back(&txn))
    }

    async fn decide(
        &self,
        txn: &mut DeviceTxn,
        approve: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let code = txn.user_code.clone().unwrap_or_default();
        let pending = self.pending(&code).await?;
        let user = txn
            .user
            .as_deref()
            .and_then(|u| self.ctx.config.users.get(u));
        let (Some(p), Some(user)) = (pending, user) else {
            return Ok(self.done(false, "That code has expired or was already used."));
        };
        let decision = if approve {
            let Some(scope) = self.scope_for(&p, user) else {
                return Ok(self.done(
                    false,
                    "This account may not grant what the device asks for.",
                ));
            };
            let grant = self
                .ctx
                .grants
                .intern(Some(user.name.clone()), p.client.id.clone(), scope);
            DeviceDecision::Approved(grant)
        } else {
            DeviceDecision::Denied
        };
        // Of racing approvals (two browsers, one code), one decides.
        let decided = self
            .ctx
            .store
            .decide_device(user_code_key(&code), decision)
            .await
            .map_err(GatewayError::from)?;
        if !decided {
            return Ok(self.done(false, "That code has expired or was already used."));
        }
        let event = if approve {
            "device_approved"
        } else {
            "device_denied"
        };
        let user = Some(user.name.as_ref());
        self.ctx
            .audit(event, user, Some(&p.client.id), Some("device_code"), None);
        Ok(if approve {
            self.done(true, "Your device is connected. You can close this page.")
        } else {
            self.done(true, "The device was not allowed. You can close this page.")
        })
    }

    /// The last page: the outcome; the page's cookie is cleared.
    fn done(&self, ok: bool, message: &str) -> Response<Body> {
        let title = if ok { "Done" } else { "Cannot continue" };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        self.cleared(
            self.authz
                .render(status, "device_done.html", context! { title, message }),
        )
    }
}

/// The code the link (`verification_uri_complete`) carries, to fill in.
fn prefill(query: Option<&str>) -> String {
    query
        .and_then(|q| super::form_pairs(q.as_bytes()))
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "user_code"))
        .and_then(|(_, v)| normalize_user_code(&v))
        .map(|c| display_user_code(&c))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_only_fills_in_a_well_formed_code() {
        assert_eq!(prefill(Some("user_code=bcdf-ghjk")), "BCDF-GHJK");
        assert_eq!(prefill(Some("x=1&user_code=BCDFGHJK")), "BCDF-GHJK");
        assert_eq!(prefill(Some("user_code=<script>")), "");
        assert_eq!(prefill(None), "");
    }

    #[test]
    fn the_cookie_opens_only_as_a_device_page_cookie() {
        let a = Authorizer::with_key(&[5; super::super::authorize::KEY_BYTES]);
        let txn = DeviceTxn::new(1_000);
        let sealed = a
            .seal_bytes(AAD, serde_json::to_vec(&txn).unwrap())
            .unwrap();
        let back: DeviceTxn = serde_json::from_slice(&a.open_bytes(AAD, &sealed).unwrap()).unwrap();
        assert_eq!(back, txn);
        assert!(a.open_bytes(b"whosthat_authz/1", &sealed).is_none());
    }
}
