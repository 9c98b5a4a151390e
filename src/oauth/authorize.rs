//! The authorization endpoint (RFC 6749 section 4.1.1) with a login page and a
//! consent page, for the authorization code flow with PKCE.
//!
//! `GET /auth/authorize?...` checks the client and its redirect URI (any problem
//! with either is an error page: never a redirect), then the rest of the request
//! (problems go back to the client as `error=` on the redirect URI, `state` kept).
//! A valid request opens a short server-side transaction, named by an HttpOnly
//! SameSite cookie, and shows the login page. Each POST carries the transaction's
//! CSRF token and is answered 303 (RFC 9700 section 4.12): after the login, the
//! consent page; after the consent, the redirect with the code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use minijinja::{Environment, context};
use subtle::ConstantTimeEq;

use super::{OAuthContext, pkce, read_form};
use crate::config::{Client, GrantType, User};
use crate::error::{Body, GatewayError, full};
use crate::scope::ScopeSet;
use crate::store::{CodeRecord, TokenHash, new_token, now_secs, random_u64};

pub const AUTHORIZE_PATH: &str = "/auth/authorize";
const COOKIE_NAME: &str = "whosthat_authz";
/// How long a sign-in may take, from the first page to the consent.
const TXN_TTL: Duration = Duration::from_secs(10 * 60);
/// Authorization codes live this long (RFC 6749 section 4.1.2: at most 10 minutes).
pub const CODE_TTL_SECS: u64 = 5 * 60;
/// Open sign-ins held at once; beyond it new ones are refused (503).
const MAX_TXNS: usize = 100_000;

/// A validated authorization request.
#[derive(Clone)]
struct AuthzRequest {
    client: Arc<Client>,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    scope: Option<ScopeSet>,
    code_challenge: Option<String>,
}

/// One sign-in in progress.
struct Txn {
    req: AuthzRequest,
    csrf: String,
    /// Set once the password was right, with the scope that will be granted.
    user: Option<(Arc<User>, ScopeSet)>,
    /// Shown once on the next login page.
    error: Option<String>,
    expires: Instant,
}

/// The pages and the sign-ins in progress.
pub struct Authorizer {
    templates: Environment<'static>,
    txns: DashMap<TokenHash, Txn>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer::new()
    }
}

impl Authorizer {
    pub fn new() -> Authorizer {
        let mut env = Environment::new();
        // Names ending in .html are auto-escaped.
        for (name, src) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("login.html", include_str!("../../templates/login.html")),
            ("consent.html", include_str!("../../templates/consent.html")),
            ("error.html", include_str!("../../templates/error.html")),
        ] {
            env.add_template(name, src)
                .expect("the built-in templates parse");
        }
        Authorizer {
            templates: env,
            txns: DashMap::new(),
        }
    }

    pub fn sweep(&self) {
        let now = Instant::now();
        self.txns.retain(|_, t| t.expires > now);
    }

    fn render(&self, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response<Body> {
        let html = self
            .templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, template = name, "template failed");
                "<!doctype html><title>whosthat</title><p>Something went wrong.</p>".to_string()
            });
        let mut resp = Response::new(full(html));
        *resp.status_mut() = status;
        page_headers(resp.headers_mut());
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }

    fn error_page(&self, status: StatusCode, message: &str) -> Response<Body> {
        self.render(status, "error.html", context! { message })
    }

    /// `GET` and `POST /auth/authorize`.
    pub async fn handle(
        &self,
        ctx: &OAuthContext<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        match *req.method() {
            Method::GET | Method::HEAD => Ok(self.get(ctx, &req)),
            Method::POST => self.post(ctx, req).await,
            _ => Err(GatewayError::MethodNotAllowed("GET, POST".into())),
        }
    }

    fn get(&self, ctx: &OAuthContext<'_>, req: &Request<Incoming>) -> Response<Body> {
        match req.uri().query().filter(|q| !q.is_empty()) {
            Some(query) => match validate(ctx, query) {
                Ok(areq) => self.start(areq),
                Err(Invalid::Page(msg)) => self.error_page(StatusCode::BAD_REQUEST, msg),
                Err(Invalid::Redirect(to)) => see_other(&to),
            },
            // Back from a POST: show where the sign-in stands.
            None => match cookie(req.headers()) {
                Some(id) => match self.txns.get_mut(&TokenHash::of(id)) {
                    Some(mut t) if t.expires > Instant::now() => {
                        let error = t.error.take();
                        self.show(&t, error)
                    }
                    _ => self.expired(),
                },
                None => self.error_page(
                    StatusCode::BAD_REQUEST,
                    "This page needs an authorization request from an application.",
                ),
            },
        }
    }

    fn expired(&self) -> Response<Body> {
        self.error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired or was already used.",
        )
    }

    /// Opens a transaction and shows the login page.
    fn start(&self, req: AuthzRequest) -> Response<Body> {
        if self.txns.len() >= MAX_TXNS {
            self.sweep();
            if self.txns.len() >= MAX_TXNS {
                return self.error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sign-ins at once; try again shortly.",
                );
            }
        }
        let id = new_token();
        let txn = Txn {
            req,
            csrf: new_token(),
            user: None,
            error: None,
            expires: Instant::now() + TXN_TTL,
        };
        let mut resp = self.show(&txn, None);
        self.txns.insert(TokenHash::of(&id), txn);
        let cookie = format!(
            "{COOKIE_NAME}={id}; Path=/auth; Max-Age={}; HttpOnly; SameSite=Lax",
            TXN_TTL.as_secs()
        );
        if let Ok(v) = HeaderValue::try_from(cookie) {
            resp.headers_mut().insert(SET_COOKIE, v);
        }
        resp
    }

    fn show(&self, t: &Txn, error: Option<String>) -> Response<Body> {
        let client = t.req.client.id.to_string();
        let csrf = t.csrf.clone();
        match &t.user {
            None => self.render(
                StatusCode::OK,
                "login.html",
                context! { client, csrf, error, action => AUTHORIZE_PATH },
            ),
            Some((user, scope)) => {
                let scopes: Vec<String> = scope.iter().map(str::to_string).collect();
                let user = user.name.to_string();
                self.render(
                    StatusCode::OK,
                    "consent.html",
                    context! { client, csrf, user, scopes, action => AUTHORIZE_PATH },
                )
            }
        }
    }

    async fn post(
        &self,
        ctx: &OAuthContext<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        let Some(id) = cookie(req.headers()).map(str::to_string) else {
            return Ok(self.expired());
        };
        let key = TokenHash::of(&id);
        // The device cookie (OWASP): a browser that signed in as a name before is
        // not locked out by an attack on that name from elsewhere.
        let device =
            super::limiter::device_cookie(req.headers()).map_or_else(new_token, str::to_string);
        let (_, form) = read_form(req, false).await?;
        // Copy what is needed out of the map: no lock is held across an await.
        let (csrf, has_user, areq) = match self.txns.get(&key) {
            Some(t) if t.expires > Instant::now() => {
                (t.csrf.clone(), t.user.is_some(), t.req.clone())
            }
            _ => return Ok(self.expired()),
        };
        let sent = form.get("csrf").unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
            return Ok(self.error_page(
                StatusCode::FORBIDDEN,
                "The form was not sent from this sign-in page.",
            ));
        }
        match (form.get("action"), has_user) {
            (Some("login"), false) => self.login(ctx, key, &areq, &form, &device).await,
            (Some("approve"), true) => {
                let Some((_, txn)) = self.txns.remove(&key) else {
                    return Ok(self.expired());
                };
                let Some((user, scope)) = txn.user else {
                    return Ok(self.expired());
                };
                let code = new_token();
                let rec = CodeRecord {
                    grant: ctx.grants.intern(
                        Some(user.name.clone()),
                        areq.client.id.clone(),
                        scope,
                    ),
                    family: random_u64(),
                    redirect_uri: areq.redirect_uri.clone(),
                    redirect_uri_given: areq.redirect_uri_given,
                    code_challenge: areq.code_challenge.clone(),
                    expires_at: now_secs() + CODE_TTL_SECS,
                };
                ctx.store
                    .put_code(TokenHash::of(&code), rec)
                    .await
                    .map_err(|_| GatewayError::StoreUnavailable)?;
                let mut params = vec![("code", code.as_str())];
                if let Some(s) = &areq.state {
                    params.push(("state", s));
                }
                params.push(("iss", &ctx.config.oauth.issuer));
                Ok(clear_cookie(see_other(&with_query(
                    &areq.redirect_uri,
                    &params,
                ))))
            }
            (Some("deny"), true) => {
                self.txns.remove(&key);
                let to = error_redirect(&areq, "access_denied", "the user denied the request", ctx);
                Ok(clear_cookie(see_other(&to)))
            }
            _ => Ok(self.error_page(
                StatusCode::BAD_REQUEST,
                "This form does not fit this step of the sign-in.",
            )),
        }
    }

    async fn login(
        &self,
        ctx: &OAuthContext<'_>,
        key: TokenHash,
        areq: &AuthzRequest,
        form: &super::Params,
        device: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let username = form.get("username").unwrap_or("");
        let password = form.get("password").unwrap_or("");
        let outcome = if username.is_empty() || password.is_empty() {
            Err("Enter your username and password.".to_string())
        } else {
            match super::check_user_password_from(ctx, username, Some(device), password).await {
                Ok(Some(user)) => Ok(user.clone()),
                Ok(None) => {
                    ctx.metrics.auth_failure("invalid_grant");
                    Err("Invalid username or password.".to_string())
                }
                Err(GatewayError::TooManyAttempts(secs)) => {
                    ctx.metrics.auth_failure("too_many_attempts");
                    Err(format!(
                        "Too many failed attempts. Try again in {secs} seconds."
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        match outcome {
            Err(message) => {
                if let Some(mut t) = self.txns.get_mut(&key) {
                    t.error = Some(message);
                }
                Ok(see_other(AUTHORIZE_PATH))
            }
            Ok(user) => {
                let allowed = user.scopes.intersection(&areq.client.scopes);
                let scope = match &areq.scope {
                    None => allowed,
                    Some(r) if r.is_subset_of(&allowed) => r.clone(),
                    Some(_) => {
                        self.txns.remove(&key);
                        let to = error_redirect(
                            areq,
                            "invalid_scope",
                            "the requested scope exceeds what this user may grant",
                            ctx,
                        );
                        return Ok(clear_cookie(see_other(&to)));
                    }
                };
                match self.txns.get_mut(&key) {
                    Some(mut t) => {
                        t.user = Some((user, scope));
                        // A fresh CSRF token for the consent step.
                        t.csrf = new_token();
                    }
                    None => return Ok(self.expired()),
                }
                let mut resp = see_other(AUTHORIZE_PATH);
                let secure = ctx.config.oauth.issuer.starts_with("https://");
                if let Some(v) = super::limiter::device_set_cookie(device, secure) {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
                Ok(resp)
            }
        }
    }
}

/// A reason the request cannot go on.
enum Invalid {
    /// Client or redirect URI unknown or wrong: shown here, never redirected.
    Page(&'static str),
    /// Anything else: sent back on the redirect URI.
    Redirect(String),
}

fn validate(ctx: &OAuthContext<'_>, query: &str) -> Result<AuthzRequest, Invalid> {
    let pairs = super::form_pairs(query.as_bytes())
        .ok_or(Invalid::Page("The authorization request is malformed."))?;
    let count = |k: &str| pairs.iter().filter(|(n, _)| n == k).count();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    if count("client_id") > 1 || count("redirect_uri") > 1 {
        return Err(Invalid::Page(
            "The request names its client or redirect URI more than once.",
        ));
    }
    let client = get("client_id")
        .and_then(|id| ctx.config.clients.get(id))
        .ok_or(Invalid::Page("The application is not known here."))?;
    let (redirect_uri, given) = match get("redirect_uri") {
        // Exact string comparison (RFC 9700 section 2.1).
        Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => (uri.to_string(), true),
        Some(_) => {
            return Err(Invalid::Page(
                "The redirect URI is not registered for this application.",
            ));
        }
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return Err(Invalid::Page("The request has no redirect URI.")),
    };
    let state = get("state").map(str::to_string);
    let partial = AuthzRequest {
        client: client.clone(),
        redirect_uri,
        redirect_uri_given: given,
        state,
        scope: None,
        code_challenge: None,
    };
    let fail = |code, d| Invalid::Redirect(error_redirect(&partial, code, d, ctx));
    if pairs.iter().any(|(k, _)| count(k) > 1) {
        return Err(fail(
            "invalid_request",
            "a parameter was sent more than once",
        ));
    }
    match get("response_type") {
        Some("code") => {}
        Some(_) => {
            return Err(fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        None => return Err(fail("invalid_request", "response_type is missing")),
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Err(fail(
            "unauthorized_client",
            "this client may not use the authorization code flow",
        ));
    }
    let scope = match get("scope") {
        None => None,
        Some(s) => match ScopeSet::parse(s) {
            Some(set) if set.is_subset_of(&client.scopes) => Some(set),
            _ => {
                return Err(fail(
                    "invalid_scope",
                    "the requested scope is malformed or exceeds this client's",
                ));
            }
        },
    };
    let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (None, None) if client.is_public() => {
            return Err(fail(
                "invalid_request",
                "code_challenge is required (PKCE, S256)",
            ));
        }
        (None, None) => None,
        (None, Some(_)) => {
            return Err(fail(
                "invalid_request",
                "code_challenge_method without code_challenge",
            ));
        }
        (Some(c), Some("S256")) if pkce::is_valid_s256_challenge(c) => Some(c.to_string()),
        (Some(_), Some("S256")) => {
            return Err(fail("invalid_request", "code_challenge is malformed"));
        }
        // "plain", or a method left out (which means plain): not accepted.
        (Some(_), _) => {
            return Err(fail(
                "invalid_request",
                "transform algorithm not supported: use S256",
            ));
        }
    };
    Ok(AuthzRequest {
        scope,
        code_challenge,
        ..partial
    })
}

fn error_redirect(
    req: &AuthzRequest,
    error: &str,
    description: &str,
    ctx: &OAuthContext<'_>,
) -> String {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(s) = &req.state {
        params.push(("state", s));
    }
    params.push(("iss", &ctx.config.oauth.issuer));
    with_query(&req.redirect_uri, &params)
}

/// `uri` with `params` added to its query.
fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", ser.finish())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v)
}

fn page_headers(h: &mut HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

/// 303 See Other: after a POST the browser follows with a GET and never resends
/// the credentials (RFC 9700 section 4.12).
fn see_other(to: &str) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    page_headers(resp.headers_mut());
    match HeaderValue::try_from(to) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

fn clear_cookie(mut resp: Response<Body>) -> Response<Body> {
    let v = format!("{COOKIE_NAME}=; Path=/auth; Max-Age=0; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::try_from(v) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_appended() {
        assert_eq!(
            with_query("https://a/cb", &[("code", "x y"), ("state", "s&t")]),
            "https://a/cb?code=x+y&state=s%26t"
        );
        assert_eq!(
            with_query("https://a/cb?k=1", &[("code", "c")]),
            "https://a/cb?k=1&code=c"
        );
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; whosthat_authz=abc; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
    }

    #[tokio::test]
    async fn templates_escape() {
        use http_body_util::BodyExt;
        let a = Authorizer::new();
        let r = a.render(
            StatusCode::OK,
            "error.html",
            context! { message => "<script>x</script>" },
        );
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert!(
            r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8_lossy(&body);
        assert!(html.contains("&lt;script&gt;x&lt;"), "{html}");
        assert!(!html.contains("<script>"));
    }
}
