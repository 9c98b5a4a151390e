//! The authorization endpoint (RFC 6749 section 4.1.1) with a login page and a
//! consent page, for the authorization code flow with PKCE.
//!
//! `GET /auth/authorize?...` checks the client and its redirect URI (any problem
//! with either is an error page: never a redirect), then the rest of the request
//! (problems go back to the client as `error=` on the redirect URI, `state` kept).
//! A valid request shows the login page and hands the browser the whole sign-in
//! (the transaction) in an HttpOnly SameSite cookie, sealed with an AEAD
//! (ChaCha20-Poly1305) under a key only the gateway holds: nothing is stored on
//! the server for a caller who has not signed in, so a flood of requests costs
//! no memory and cannot crowd real users out. Each POST carries the step's CSRF
//! token and is answered 303 (RFC 9700 section 4.12): after the login, the
//! consent page; after the consent, the redirect with the code. A transaction
//! that ended (approve, deny, a scope refused after the login) is remembered as
//! used until it expires, so a replayed cookie cannot mint a second code; those
//! entries only exist after a right password, so argon2's rate bounds them.
//! With the Redis store the key and those entries are the fleet's (see
//! [`super::signin_state`]): any instance continues a sign-in another began.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use minijinja::{Environment, context};
use ring::aead::{Aad, NONCE_LEN, Nonce};
use subtle::ConstantTimeEq;

use super::oidc::{self, OidcRequest};
use super::signin_state::{CookieKey, Keys, Ledger, MemoryLedger, RedisLedger};
use super::{OAuthContext, pkce, read_form, redirect};
use crate::config::{Client, GrantType, User};
use crate::endpoint::AUTHORIZE_PATH;
use crate::error::{Body, GatewayCode, GatewayError, OAuthCode, full};
use crate::scope::ScopeSet;
use crate::store::{
    CodeOidc, CodeRecord, RedisConn, StoreError, TokenHash, new_token, now_secs, random_u64,
};

pub const COOKIE_NAME: &str = "whosthat_authz";
/// How long a sign-in may take, from the first page to the consent (seconds).
pub const TXN_TTL_SECS: u64 = 10 * 60;
/// Authorization codes live this long (RFC 6749 section 4.1.2: at most 10 minutes).
pub const CODE_TTL_SECS: u64 = 5 * 60;
/// The longest `state` accepted, in bytes once decoded. It is echoed to the
/// client and carried in the cookie, which browsers keep only up to 4 KB.
pub const MAX_STATE_BYTES: usize = 1024;
// The page that refuses a longer state names the figure.
const _: () = assert!(MAX_STATE_BYTES == 1024);
/// The longest authorization request query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// The longest `Set-Cookie` value sent: browsers drop cookies over 4096 bytes
/// (RFC 6265 section 6.1 asks them to keep at least that much).
const MAX_SET_COOKIE_BYTES: usize = 4000;
/// Bytes of the AEAD key.
pub use super::signin_state::KEY_BYTES;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// Binds a sealed cookie to its purpose and format: a blob sealed for another
/// use of the same key, or in another layout, does not open.
const AAD: &[u8] = b"whosthat_authz/1";
/// 2: the OpenID Connect fields (nonce, max_age, auth_time) at the end.
const FORMAT_VERSION: u8 = 2;

/// Unix seconds now. Injectable so tests can move time instead of sleeping.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A validated authorization request, with the client as the config in force has it.
#[derive(Clone)]
struct AuthzRequest {
    client: Arc<Client>,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    scope: Option<ScopeSet>,
    code_challenge: Option<String>,
    /// An OpenID Connect request's nonce and max_age.
    oidc: Option<OidcRequest>,
}

/// One sign-in in progress, as sealed into the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Txn {
    /// Random; names the transaction across its steps (and in the used set).
    id: [u8; 16],
    /// Unix seconds; the transaction is dead from this second on.
    expires: u64,
    client_id: String,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    /// This step's CSRF token; a fresh one after the login.
    csrf: String,
    /// Set once the password was right: the user and the scope to be granted.
    user: Option<(String, String)>,
    /// Shown once on the next login page.
    error: Option<String>,
    /// An OpenID Connect request's nonce and max_age.
    oidc: Option<OidcRequest>,
    /// When the password was right (unix seconds; 0 before).
    auth_time: u64,
}

impl Txn {
    /// A compact binary layout: strings are length-prefixed, so no escaping can
    /// blow a `state` up the way JSON's `\u0001` would. `None` if a field does
    /// not fit its 16-bit length.
    fn encode(&self) -> Option<Vec<u8>> {
        fn put(out: &mut Vec<u8>, s: &str) -> Option<()> {
            out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
            Some(())
        }
        fn put_opt(out: &mut Vec<u8>, s: Option<&str>) -> Option<()> {
            match s {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    put(out, s)?;
                }
            }
            Some(())
        }
        let mut out = Vec::with_capacity(
            128 + self.redirect_uri.len() + self.state.as_ref().map_or(0, String::len),
        );
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.push(u8::from(self.redirect_uri_given));
        put(&mut out, &self.client_id)?;
        put(&mut out, &self.redirect_uri)?;
        put_opt(&mut out, self.state.as_deref())?;
        put_opt(&mut out, self.scope.as_deref())?;
        put_opt(&mut out, self.code_challenge.as_deref())?;
        put(&mut out, &self.csrf)?;
        match &self.user {
            None => out.push(0),
            Some((name, scope)) => {
                out.push(1);
                put(&mut out, name)?;
                put(&mut out, scope)?;
            }
        }
        put_opt(&mut out, self.error.as_deref())?;
        match &self.oidc {
            None => out.push(0),
            Some(o) => {
                out.push(1);
                put_opt(&mut out, o.nonce.as_deref())?;
                match o.max_age {
                    None => out.push(0),
                    Some(m) => {
                        out.push(1);
                        out.extend_from_slice(&m.to_be_bytes());
                    }
                }
            }
        }
        out.extend_from_slice(&self.auth_time.to_be_bytes());
        Some(out)
    }

    fn decode(b: &[u8]) -> Option<Txn> {
        struct R<'a>(&'a [u8]);
        impl<'a> R<'a> {
            fn take(&mut self, n: usize) -> Option<&'a [u8]> {
                if self.0.len() < n {
                    return None;
                }
                let (head, rest) = self.0.split_at(n);
                self.0 = rest;
                Some(head)
            }
            fn byte(&mut self) -> Option<u8> {
                self.take(1).map(|b| b[0])
            }
            fn flag(&mut self) -> Option<bool> {
                match self.byte()? {
                    0 => Some(false),
                    1 => Some(true),
                    _ => None,
                }
            }
            fn string(&mut self) -> Option<String> {
                let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
                String::from_utf8(self.take(n.into())?.to_vec()).ok()
            }
            fn opt(&mut self) -> Option<Option<String>> {
                Some(if self.flag()? {
                    Some(self.string()?)
                } else {
                    None
                })
            }
            fn u64(&mut self) -> Option<u64> {
                Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
            }
            fn oidc(&mut self) -> Option<Option<OidcRequest>> {
                if !self.flag()? {
                    return Some(None);
                }
                let nonce = self.opt()?;
                let max_age = if self.flag()? {
                    Some(self.u64()?)
                } else {
                    None
                };
                Some(Some(OidcRequest { nonce, max_age }))
            }
        }
        let mut r = R(b);
        if r.byte()? != FORMAT_VERSION {
            return None;
        }
        let id = r.take(16)?.try_into().ok()?;
        let expires = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let redirect_uri_given = r.flag()?;
        let txn = Txn {
            id,
            expires,
            redirect_uri_given,
            client_id: r.string()?,
            redirect_uri: r.string()?,
            state: r.opt()?,
            scope: r.opt()?,
            code_challenge: r.opt()?,
            csrf: r.string()?,
            user: if r.flag()? {
                Some((r.string()?, r.string()?))
            } else {
                None
            },
            error: r.opt()?,
            oidc: r.oidc()?,
            auth_time: r.u64()?,
        };
        r.0.is_empty().then_some(txn)
    }
}

/// A transaction brought back by its cookie and checked against the config in force.
struct Step {
    txn: Txn,
    req: AuthzRequest,
    /// After the login: the user (as configured now) and the scope to grant.
    user: Option<(Arc<User>, ScopeSet)>,
}

/// The pages, the cookie key, and the transactions that ended.
pub struct Authorizer {
    templates: Environment<'static>,
    keys: Arc<Keys>,
    clock: Clock,
    /// Transaction ids that ended (approve, deny, scope refused), until they
    /// expire, and (Redis) the proofs of right passwords.
    ledger: Arc<dyn Ledger>,
    /// With the Redis store: where the fleet's cookie key is kept.
    fleet: Option<Arc<RedisLedger>>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer::new()
    }
}

impl Authorizer {
    /// With a fresh random key: cookies from before a restart, or from another
    /// instance, do not open (see [`Authorizer::with_key`]).
    pub fn new() -> Authorizer {
        Authorizer::build(Keys::fixed(CookieKey::random()), None)
    }

    /// With the given key: instances sharing it accept each other's cookies.
    pub fn with_key(key: &[u8; KEY_BYTES]) -> Authorizer {
        Authorizer::build(Keys::fixed(CookieKey::new(key)), None)
    }

    /// With the Redis store: the fleet's key and ledger, in Redis. The key is
    /// read by [`Authorizer::spawn_background`]; until then sign-ins get 503.
    pub fn fleet(conn: RedisConn) -> Authorizer {
        Authorizer::build(Keys::default(), Some(Arc::new(RedisLedger::new(conn))))
    }

    /// Starts reading (and keeping) the fleet's cookie key, with the Redis store.
    pub fn spawn_background(&self) -> Option<tokio::task::JoinHandle<()>> {
        let fleet = self.fleet.clone()?;
        Some(tokio::spawn(fleet.keep_key(self.keys.clone())))
    }

    fn build(keys: Keys, fleet: Option<Arc<RedisLedger>>) -> Authorizer {
        let mut env = Environment::new();
        // Names ending in .html are auto-escaped.
        for (name, src) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("login.html", include_str!("../../templates/login.html")),
            ("consent.html", include_str!("../../templates/consent.html")),
            ("error.html", include_str!("../../templates/error.html")),
            ("device.html", include_str!("../../templates/device.html")),
            (
                "device_consent.html",
                include_str!("../../templates/device_consent.html"),
            ),
            (
                "device_done.html",
                include_str!("../../templates/device_done.html"),
            ),
        ] {
            env.add_template(name, src)
                .expect("the built-in templates parse");
        }
        let ledger: Arc<dyn Ledger> = match &fleet {
            Some(f) => f.clone(),
            None => Arc::new(MemoryLedger::default()),
        };
        Authorizer {
            templates: env,
            keys: Arc::new(keys),
            clock: Arc::new(now_secs),
            ledger,
            fleet,
        }
    }

    /// Replaces the clock (unix seconds) that expiry is judged by.
    pub fn with_clock(mut self, clock: Clock) -> Authorizer {
        self.clock = clock;
        self
    }

    /// Forgets ended transactions whose cookies have expired anyway.
    pub fn sweep(&self) {
        self.ledger.sweep((self.clock)());
    }

    /// Ended transactions remembered in this process (for tests and metrics;
    /// with Redis they are kept there).
    pub fn used_len(&self) -> usize {
        self.ledger.len()
    }

    /// Unix seconds, by the injectable clock.
    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The transaction sealed into a cookie value: base64url(nonce || ciphertext || tag).
    fn seal(&self, txn: &Txn) -> Option<String> {
        self.seal_bytes(AAD, txn.encode()?)
    }

    /// `plain` sealed for the purpose `aad` names (another page's cookie
    /// uses another `aad`, so one never opens as the other).
    pub(crate) fn seal_bytes(&self, aad: &'static [u8], mut buf: Vec<u8>) -> Option<String> {
        // A random 96-bit nonce per cookie: the key outlives any counter (and will
        // be shared by several instances), and collisions stay negligible far
        // beyond the 2^32 cookies one key will ever seal.
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        let ring = self.keys.ring()?;
        ring.current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The transaction in a cookie value, if it is one this key sealed.
    fn open(&self, value: &str) -> Option<Txn> {
        Txn::decode(&self.open_bytes(AAD, value)?)
    }

    /// What [`seal_bytes`](Self::seal_bytes) sealed for `aad`, if this key did.
    pub(crate) fn open_bytes(&self, aad: &'static [u8], value: &str) -> Option<Vec<u8>> {
        if value.len() > MAX_SET_COOKIE_BYTES {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let ring = self.keys.ring()?;
        // The current key, then the one before it (a key changed meanwhile).
        std::iter::once(&ring.current)
            .chain(ring.previous.as_ref())
            .find_map(|key| {
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut buf = sealed.to_vec();
                let plain = key
                    .aead
                    .open_in_place(nonce, Aad::from(aad), &mut buf)
                    .ok()?;
                Some(plain.to_vec())
            })
    }

    /// The live, unused transaction the request's cookie carries; after the
    /// login, only with its proof in the ledger (see [`super::signin_state`]).
    async fn load(&self, headers: &HeaderMap) -> Result<Option<Txn>, GatewayError> {
        let now = (self.clock)();
        let Some(txn) = cookies(headers)
            .find_map(|v| self.open(v))
            .filter(|t| t.expires > now)
        else {
            return Ok(None);
        };
        if self.ledger.is_ended(&txn.id).await? {
            return Ok(None);
        }
        if txn.user.is_some() && self.ledger.verifies_logins() {
            let proof = TokenHash::of(&txn.csrf);
            let found = self.ledger.login(&proof).await?;
            if found.as_deref() != login_record(&txn).as_deref() {
                return Ok(None);
            }
        }
        Ok(Some(txn))
    }

    /// Marks the transaction ended; `false` if it already was (a replay).
    async fn finish(&self, txn: &Txn) -> Result<bool, GatewayError> {
        Ok(self.ledger.end(&txn.id, txn.expires).await?)
    }

    pub(crate) fn render(
        &self,
        status: StatusCode,
        name: &str,
        ctx: minijinja::Value,
    ) -> Response<Body> {
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

    pub(crate) fn error_page(&self, status: StatusCode, message: &str) -> Response<Body> {
        self.render(status, "error.html", context! { message })
    }

    fn too_long(&self) -> Response<Body> {
        self.error_page(
            StatusCode::BAD_REQUEST,
            "The authorization request is too long.",
        )
    }

    /// `GET` and `POST /auth/authorize`.
    pub async fn handle(
        &self,
        ctx: &OAuthContext<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        match *req.method() {
            Method::GET | Method::HEAD | Method::POST if self.keys.ring().is_none() => {
                // The fleet's cookie key is not known yet (Redis has not
                // answered since the start): no sign-in can be carried.
                Err(StoreError::Unavailable(
                    "the fleet's sign-in cookie key is not read yet".into(),
                )
                .into())
            }
            Method::GET | Method::HEAD => self.get(ctx, &req).await,
            Method::POST => self.post(ctx, req).await,
            _ => Err(GatewayError::MethodNotAllowed("GET, POST".into())),
        }
    }

    async fn get(
        &self,
        ctx: &OAuthContext<'_>,
        req: &Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        Ok(match req.uri().query().filter(|q| !q.is_empty()) {
            Some(query) => match validate(ctx, query) {
                Ok(areq) => self.start(ctx, areq),
                Err(Invalid::Page(msg)) => self.error_page(StatusCode::BAD_REQUEST, msg),
                Err(Invalid::Redirect(to)) => see_other(&to),
            },
            // Back from a POST: show where the sign-in stands.
            None => match self.load(req.headers()).await? {
                Some(txn) => match self.resume(ctx, txn) {
                    Ok(mut step) => {
                        let error = step.txn.error.take();
                        let resp = self.show(&step, error.as_deref());
                        if error.is_some() {
                            // The message is shown once: the cookie forgets it.
                            self.with_cookie(ctx, resp, &step.txn)
                        } else {
                            resp
                        }
                    }
                    Err(resp) => resp,
                },
                None if cookies(req.headers()).next().is_some() => self.expired(),
                None => self.error_page(
                    StatusCode::BAD_REQUEST,
                    "This page needs an authorization request from an application.",
                ),
            },
        })
    }

    fn expired(&self) -> Response<Body> {
        self.error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired or was already used.",
        )
    }

    /// Shows the login page and hands the browser the new transaction.
    fn start(&self, ctx: &OAuthContext<'_>, req: AuthzRequest) -> Response<Body> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the OS random source failed");
        let txn = Txn {
            id,
            expires: (self.clock)() + TXN_TTL_SECS,
            client_id: req.client.id.to_string(),
            redirect_uri: req.redirect_uri.clone(),
            redirect_uri_given: req.redirect_uri_given,
            state: req.state.clone(),
            scope: req.scope.as_ref().map(ScopeSet::to_string),
            code_challenge: req.code_challenge.clone(),
            csrf: new_token(),
            user: None,
            error: None,
            oidc: req.oidc.clone(),
            auth_time: 0,
        };
        let step = Step {
            txn,
            req,
            user: None,
        };
        let resp = self.show(&step, None);
        self.with_cookie(ctx, resp, &step.txn)
    }

    /// `resp` with the transaction's cookie set, or a 400 page if it cannot be
    /// carried (too long for a browser to keep).
    fn with_cookie(
        &self,
        ctx: &OAuthContext<'_>,
        mut resp: Response<Body>,
        txn: &Txn,
    ) -> Response<Body> {
        let Some(value) = self.seal(txn) else {
            return self.too_long();
        };
        let max_age = txn.expires.saturating_sub((self.clock)()).max(1);
        let cookie = format!(
            "{COOKIE_NAME}={value}; Path=/auth; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            secure_attr(ctx)
        );
        if cookie.len() > MAX_SET_COOKIE_BYTES {
            return self.too_long();
        }
        match HeaderValue::try_from(cookie) {
            Ok(v) => {
                resp.headers_mut().insert(SET_COOKIE, v);
                resp
            }
            Err(_) => self.too_long(),
        }
    }

    /// Checks a transaction against the config in force: a reload may have
    /// removed its client, redirect URI or user, or narrowed their scopes.
    // The Err is the page to answer with, built once per request: no point boxing it.
    #[allow(clippy::result_large_err)]
    fn resume(&self, ctx: &OAuthContext<'_>, txn: Txn) -> Result<Step, Response<Body>> {
        let client = ctx
            .config
            .clients
            .get(txn.client_id.as_str())
            .filter(|c| c.allows(GrantType::AuthorizationCode))
            .ok_or_else(|| {
                self.error_page(
                    StatusCode::BAD_REQUEST,
                    "The application is no longer allowed to sign you in here.",
                )
            })?;
        if !redirect::is_registered(&client.redirect_uris, &txn.redirect_uri) {
            return Err(self.error_page(
                StatusCode::BAD_REQUEST,
                "The redirect URI is no longer registered for this application.",
            ));
        }
        let mut req = AuthzRequest {
            client: client.clone(),
            redirect_uri: txn.redirect_uri.clone(),
            redirect_uri_given: txn.redirect_uri_given,
            state: txn.state.clone(),
            scope: None,
            code_challenge: txn.code_challenge.clone(),
            oidc: txn.oidc.clone(),
        };
        let scope_refused = |req: &AuthzRequest| {
            clear_cookie(
                ctx,
                see_other(&error_redirect(
                    req,
                    "invalid_scope",
                    "the requested scope is no longer allowed",
                    ctx,
                )),
            )
        };
        if client.is_public() && req.code_challenge.is_none() {
            return Err(see_other(&error_redirect(
                &req,
                "invalid_request",
                "code_challenge is required (PKCE, S256)",
                ctx,
            )));
        }
        if let Some(s) = &txn.scope {
            match ScopeSet::parse(s) {
                Some(set) if set.is_subset_of(&client.scopes) => req.scope = Some(set),
                _ => return Err(scope_refused(&req)),
            }
        }
        let user = match &txn.user {
            None => None,
            Some((name, granted)) => {
                let user = ctx.config.users.get(name.as_str()).ok_or_else(|| {
                    self.error_page(
                        StatusCode::BAD_REQUEST,
                        "The signed-in user is no longer known here.",
                    )
                })?;
                let allowed = oidc::grantable(ctx.config, user, client);
                match ScopeSet::parse(granted) {
                    Some(g) if g.is_subset_of(&allowed) => Some((user.clone(), g)),
                    _ => return Err(scope_refused(&req)),
                }
            }
        };
        Ok(Step { txn, req, user })
    }

    fn show(&self, step: &Step, error: Option<&str>) -> Response<Body> {
        let client = step.req.client.id.to_string();
        let csrf = step.txn.csrf.as_str();
        match &step.user {
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
        let Some(txn) = self.load(req.headers()).await? else {
            return Ok(self.expired());
        };
        // The device cookie (OWASP): a browser that signed in as a name before is
        // not locked out by an attack on that name from elsewhere.
        let device =
            super::limiter::device_cookie(req.headers()).map_or_else(new_token, str::to_string);
        let (_, form) = read_form(req, false).await?;
        let sent = form.get("csrf").unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(txn.csrf.as_bytes())) {
            return Ok(self.error_page(
                StatusCode::FORBIDDEN,
                "The form was not sent from this sign-in page.",
            ));
        }
        let step = match self.resume(ctx, txn) {
            Ok(step) => step,
            Err(resp) => return Ok(resp),
        };
        match (form.get("action"), step.user.is_some()) {
            (Some("login"), false) => self.login(ctx, step, &form, &device).await,
            (Some("approve"), true) => self.approve(ctx, step).await,
            (Some("deny"), true) => {
                if !self.finish(&step.txn).await? {
                    return Ok(self.expired());
                }
                let to = error_redirect(
                    &step.req,
                    "access_denied",
                    "the user denied the request",
                    ctx,
                );
                Ok(clear_cookie(ctx, see_other(&to)))
            }
            _ => Ok(self.error_page(
                StatusCode::BAD_REQUEST,
                "This form does not fit this step of the sign-in.",
            )),
        }
    }

    async fn approve(
        &self,
        ctx: &OAuthContext<'_>,
        step: Step,
    ) -> Result<Response<Body>, GatewayError> {
        if let Some(again) = self.sign_in_again(ctx, &step) {
            return Ok(again);
        }
        let Some((user, scope)) = step.user else {
            return Ok(self.expired());
        };
        // One code per transaction: of racing or replayed approvals, one gets past here.
        if !self.finish(&step.txn).await? {
            return Ok(self.expired());
        }
        let areq = &step.req;
        let scope_has_openid = scope.contains("openid");
        let code = new_token();
        let rec = CodeRecord {
            grant: ctx
                .grants
                .intern(Some(user.name.clone()), areq.client.id.clone(), scope),
            family: random_u64(),
            redirect_uri: areq.redirect_uri.clone(),
            redirect_uri_given: areq.redirect_uri_given,
            code_challenge: areq.code_challenge.clone(),
            expires_at: now_secs() + CODE_TTL_SECS,
            oidc: areq
                .oidc
                .as_ref()
                .filter(|_| scope_has_openid)
                .map(|o| CodeOidc {
                    nonce: o.nonce.clone(),
                    auth_time: step.txn.auth_time,
                }),
        };
        if let Err(e) = ctx.store.put_code(TokenHash::of(&code), rec).await {
            // No code exists: the user may try the approval again.
            let _ = self.ledger.reopen(&step.txn.id).await;
            return Err(e.into());
        }
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = &areq.state {
            params.push(("state", s));
        }
        params.push(("iss", &ctx.config.oauth.issuer));
        Ok(clear_cookie(
            ctx,
            see_other(&with_query(&areq.redirect_uri, &params)),
        ))
    }

    /// OpenID Connect `max_age` (Core 3.1.2.1): a sign-in older than it when
    /// the user approves is not good enough; back to the login page. `max_age=0`
    /// asks for a sign-in in this request (as `prompt=login`), which the login
    /// step was.
    fn sign_in_again(&self, ctx: &OAuthContext<'_>, step: &Step) -> Option<Response<Body>> {
        let max_age = step.txn.oidc.as_ref()?.max_age.filter(|m| *m > 0)?;
        if now_secs() <= step.txn.auth_time.saturating_add(max_age) {
            return None;
        }
        let txn = Txn {
            user: None,
            csrf: new_token(),
            error: Some("This application asks for a recent sign-in. Sign in again.".into()),
            auth_time: 0,
            ..step.txn.clone()
        };
        Some(self.with_cookie(ctx, see_other(AUTHORIZE_PATH), &txn))
    }

    async fn login(
        &self,
        ctx: &OAuthContext<'_>,
        mut step: Step,
        form: &super::Params,
        device: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let username = form.get("username").unwrap_or("");
        let password = form.get("password").unwrap_or("");
        let outcome = if username.is_empty() || password.is_empty() {
            Err("Enter your username and password.".to_string())
        } else {
            let client = Some(step.req.client.id.as_ref());
            let grant = Some("authorization_code");
            match super::check_user_password_from(ctx, username, Some(device), password).await {
                Ok(Some(user)) => {
                    ctx.audit("signin_succeeded", Some(username), client, grant, None);
                    Ok(user.clone())
                }
                Ok(None) => {
                    ctx.metrics.auth_failure(OAuthCode::InvalidGrant);
                    let reason = Some("invalid_username_or_password");
                    ctx.audit("signin_failed", Some(username), client, grant, reason);
                    Err("Invalid username or password.".to_string())
                }
                Err(GatewayError::TooManyAttempts(secs)) => {
                    ctx.metrics.auth_failure(GatewayCode::TooManyAttempts);
                    Err(format!(
                        "Too many failed attempts. Try again in {secs} seconds."
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        match outcome {
            Err(message) => {
                step.txn.error = Some(message);
                Ok(self.with_cookie(ctx, see_other(AUTHORIZE_PATH), &step.txn))
            }
            Ok(user) => {
                let areq = &step.req;
                let allowed = oidc::grantable(ctx.config, &user, &areq.client);
                let scope = match &areq.scope {
                    None => allowed,
                    Some(r) if r.is_subset_of(&allowed) => r.clone(),
                    Some(_) => {
                        self.finish(&step.txn).await?;
                        let to = error_redirect(
                            areq,
                            "invalid_scope",
                            "the requested scope exceeds what this user may grant",
                            ctx,
                        );
                        return Ok(clear_cookie(ctx, see_other(&to)));
                    }
                };
                step.txn.user = Some((user.name.to_string(), scope.to_string()));
                step.txn.auth_time = now_secs();
                // A fresh CSRF token for the consent step.
                step.txn.csrf = new_token();
                step.txn.error = None;
                if let Some(record) = login_record(&step.txn) {
                    self.ledger
                        .put_login(&TokenHash::of(&step.txn.csrf), record, step.txn.expires)
                        .await?;
                }
                let mut resp = self.with_cookie(ctx, see_other(AUTHORIZE_PATH), &step.txn);
                let secure = ctx.config.oauth.issuer.starts_with("https://");
                if let Some(v) = super::limiter::device_set_cookie(device, secure) {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
                Ok(resp)
            }
        }
    }
}

/// What the ledger keeps of a login: the transaction, user and scope (names
/// hold no control characters: the config refuses them).
fn login_record(txn: &Txn) -> Option<String> {
    let (user, scope) = txn.user.as_ref()?;
    let id: String = txn.id.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{id}\n{user}\n{scope}"))
}

/// A reason the request cannot go on.
enum Invalid {
    /// Client or redirect URI unknown or wrong, or the request too big to carry:
    /// shown here, never redirected.
    Page(&'static str),
    /// Anything else: sent back on the redirect URI.
    Redirect(String),
}

/// A fault sent back on the redirect URI: an OAuth error code and its description.
type Refusal = (&'static str, &'static str);

/// The decoded query of an authorization request.
struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes the query and refuses, on the page, one too big to carry.
    fn decode(query: &str) -> Result<Self, Invalid> {
        // The query is at most `server.max_header_bytes` long: decoding it is cheap.
        let pairs = super::form_pairs(query.as_bytes())
            .ok_or(Invalid::Page("The authorization request is malformed."))?;
        // Echoed back and carried in the cookie: bounded, and refused here rather
        // than sent back to the client on a redirect of that size.
        if pairs
            .iter()
            .any(|(k, v)| k == "state" && v.len() > MAX_STATE_BYTES)
        {
            return Err(Invalid::Page(
                "The state parameter is too long (at most 1024 bytes).",
            ));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(Invalid::Page("The authorization request is too long."));
        }
        Ok(Self(pairs))
    }

    /// How many times parameter `k` was sent.
    fn count(&self, k: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == k).count()
    }

    /// The first non-empty value of parameter `k`.
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

fn validate(ctx: &OAuthContext<'_>, query: &str) -> Result<AuthzRequest, Invalid> {
    let params = Params::decode(query)?;
    let partial = redirect_target(ctx, &params)?;
    let fail = |(code, d): Refusal| Invalid::Redirect(error_redirect(&partial, code, d, ctx));
    let scope = check_request(&params, &partial.client).map_err(fail)?;
    let code_challenge = code_challenge(&params, &partial.client).map_err(fail)?;
    let oidc = oidc::authz_params(ctx.config, scope.as_ref(), |k| params.get(k)).map_err(fail)?;
    Ok(AuthzRequest {
        scope,
        code_challenge,
        oidc,
        ..partial
    })
}

/// The client and redirect URI, checked before anything may be sent back to
/// that URI: a fault here is shown on the page. The rest of the request is
/// left empty.
fn redirect_target(ctx: &OAuthContext<'_>, params: &Params) -> Result<AuthzRequest, Invalid> {
    if params.count("client_id") > 1 || params.count("redirect_uri") > 1 {
        return Err(Invalid::Page(
            "The request names its client or redirect URI more than once.",
        ));
    }
    let client = params
        .get("client_id")
        .and_then(|id| ctx.config.clients.get(id))
        .ok_or(Invalid::Page("The application is not known here."))?;
    let (redirect_uri, given) = match params.get("redirect_uri") {
        // Exact string comparison (RFC 9700 section 2.1), any port for a
        // loopback IP (RFC 8252 section 7.3).
        Some(uri) if redirect::is_registered(&client.redirect_uris, uri) => (uri.to_string(), true),
        Some(_) => {
            return Err(Invalid::Page(
                "The redirect URI is not registered for this application.",
            ));
        }
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return Err(Invalid::Page("The request has no redirect URI.")),
    };
    Ok(AuthzRequest {
        client: client.clone(),
        redirect_uri,
        redirect_uri_given: given,
        state: params.get("state").map(str::to_string),
        scope: None,
        code_challenge: None,
        oidc: None,
    })
}

/// Repeated parameters, the response type, the client's grant and the scope
/// asked for (bounded by the client's own scopes, from the config).
fn check_request(params: &Params, client: &Client) -> Result<Option<ScopeSet>, Refusal> {
    if params.0.iter().any(|(k, _)| params.count(k) > 1) {
        return Err(("invalid_request", "a parameter was sent more than once"));
    }
    match params.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return Err((
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        None => return Err(("invalid_request", "response_type is missing")),
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Err((
            "unauthorized_client",
            "this client may not use the authorization code flow",
        ));
    }
    match params.get("scope") {
        None => Ok(None),
        Some(s) => match ScopeSet::parse(s) {
            Some(set) if set.is_subset_of(&client.scopes) => Ok(Some(set)),
            _ => Err((
                "invalid_scope",
                "the requested scope is malformed or exceeds this client's",
            )),
        },
    }
}

/// The PKCE challenge: S256 only, required of a public client. Exactly 43
/// characters when valid (RFC 7636 section 4.2).
fn code_challenge(params: &Params, client: &Client) -> Result<Option<String>, Refusal> {
    match (
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        (None, None) if client.is_public() => {
            Err(("invalid_request", "code_challenge is required (PKCE, S256)"))
        }
        (None, None) => Ok(None),
        (None, Some(_)) => Err((
            "invalid_request",
            "code_challenge_method without code_challenge",
        )),
        (Some(c), Some("S256")) if pkce::is_valid_s256_challenge(c) => Ok(Some(c.to_string())),
        (Some(_), Some("S256")) => Err(("invalid_request", "code_challenge is malformed")),
        // "plain", or a method left out (which means plain): not accepted.
        (Some(_), _) => Err((
            "invalid_request",
            "transform algorithm not supported: use S256",
        )),
    }
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

/// Every value of the sign-in cookie the request carries.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    cookie_values(headers, COOKIE_NAME)
}

/// Every value of cookie `name` the request carries (the sign-in pages' and
/// the device page's).
pub(crate) fn cookie_values<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `; Secure` when the issuer is https: the browser then never sends the
/// transaction over plain HTTP.
pub(crate) fn secure_attr(ctx: &OAuthContext<'_>) -> &'static str {
    let issuer = ctx.config.oauth.issuer.as_bytes();
    if issuer.len() >= 8 && issuer[..8].eq_ignore_ascii_case(b"https://") {
        "; Secure"
    } else {
        ""
    }
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
pub(crate) fn see_other(to: &str) -> Response<Body> {
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

fn clear_cookie(ctx: &OAuthContext<'_>, mut resp: Response<Body>) -> Response<Body> {
    let v = format!(
        "{COOKIE_NAME}=; Path=/auth; Max-Age=0; HttpOnly; SameSite=Lax{}",
        secure_attr(ctx)
    );
    if let Ok(v) = HeaderValue::try_from(v) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn() -> Txn {
        Txn {
            id: [7; 16],
            expires: 1_900_000_000,
            client_id: "spa".into(),
            redirect_uri: "http://127.0.0.1:8765/callback".into(),
            redirect_uri_given: true,
            state: Some("a\u{1}b é".into()),
            scope: Some("read write".into()),
            code_challenge: None,
            csrf: new_token(),
            user: Some(("alice".into(), "read".into())),
            error: Some("Invalid username or password.".into()),
            oidc: Some(OidcRequest {
                nonce: Some("n-0S6_WzA2Mj".into()),
                max_age: Some(60),
            }),
            auth_time: 1_899_999_000,
        }
    }

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
        h.append(COOKIE, HeaderValue::from_static("whosthat_authz=def"));
        assert_eq!(cookies(&h).collect::<Vec<_>>(), vec!["abc", "def"]);
    }

    #[test]
    fn encoding_round_trips_and_refuses_leftovers() {
        let t = txn();
        let bytes = t.encode().unwrap();
        assert_eq!(Txn::decode(&bytes), Some(t.clone()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Txn::decode(&longer), None);
        assert_eq!(Txn::decode(&bytes[..bytes.len() - 1]), None);
        let mut other_version = bytes;
        other_version[0] = 1;
        assert_eq!(Txn::decode(&other_version), None);
        let none = Txn {
            state: None,
            scope: None,
            user: None,
            error: None,
            oidc: None,
            auth_time: 0,
            ..t
        };
        assert_eq!(Txn::decode(&none.encode().unwrap()), Some(none.clone()));
        let no_nonce = Txn {
            oidc: Some(OidcRequest {
                nonce: None,
                max_age: None,
            }),
            ..none.clone()
        };
        assert_eq!(Txn::decode(&no_nonce.encode().unwrap()), Some(no_nonce));
        assert_eq!(Txn::decode(&none.encode().unwrap()), Some(none));
    }

    #[test]
    fn sealed_cookies_open_only_with_their_key_and_unaltered() {
        let a = Authorizer::with_key(&[1; KEY_BYTES]);
        let t = txn();
        let v = a.seal(&t).unwrap();
        assert_eq!(a.open(&v), Some(t.clone()));
        // A fresh nonce each time: the same transaction never seals the same way.
        assert_ne!(a.seal(&t).unwrap(), v);
        // Another instance with the same key opens it; another key does not.
        assert_eq!(Authorizer::with_key(&[1; KEY_BYTES]).open(&v), Some(t));
        assert_eq!(Authorizer::with_key(&[2; KEY_BYTES]).open(&v), None);
        // Any flipped bit, in the nonce, the ciphertext or the tag.
        let raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
        for i in [0, NONCE_LEN, raw.len() / 2, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            assert_eq!(a.open(&URL_SAFE_NO_PAD.encode(&bad)), None, "byte {i}");
        }
        assert_eq!(a.open(&URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 1])), None);
        assert_eq!(a.open(""), None);
        assert_eq!(a.open("not base64!"), None);
    }

    #[tokio::test]
    async fn a_transaction_ends_once_and_is_forgotten_after_it_expires() {
        let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
        let clock = now.clone();
        let a = Authorizer::with_key(&[3; KEY_BYTES]).with_clock(Arc::new(move || {
            clock.load(std::sync::atomic::Ordering::SeqCst)
        }));
        let t = Txn {
            expires: 1_600,
            ..txn()
        };
        assert!(a.finish(&t).await.unwrap());
        assert!(!a.finish(&t).await.unwrap());
        a.sweep();
        assert_eq!(a.used_len(), 1);
        now.store(1_600, std::sync::atomic::Ordering::SeqCst);
        a.sweep();
        assert_eq!(a.used_len(), 0);
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
