//! The one place where a rejection becomes an HTTP response, so every rejection
//! has the same shape (RFC 6749 section 5.2 at the token endpoint, RFC 6750
//! section 3 on proxied requests) and none leaks internals.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The body type of every response the gateway sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Errors of streamed bodies (the peer's, or a limit of ours).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A JSON answer: `body` with `Content-Type: application/json`.
pub fn json(body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Marks an answer never to be stored by a cache: it carries tokens, or says
/// something about credentials (RFC 6749 sections 5.1 and 5.2, RFC 7662
/// section 4). `Pragma` for HTTP/1.0 caches.
pub fn no_store(h: &mut http::HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

/// [`json`], never to be stored ([`no_store`]): what the token, introspection
/// and userinfo endpoints answer.
pub fn json_no_store(body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = json(body);
    no_store(resp.headers_mut());
    resp
}

pub const REALM: &str = "whosthat";

/// The IETF httpapi draft's fields (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// RFC 6749 section 5.2 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// RFC 9449 section 5: the DPoP proof of a token request is missing or bad.
    InvalidDpopProof,
    /// RFC 8628 section 3.5: the device flow's polling answers.
    AuthorizationPending,
    SlowDown,
    AccessDenied,
    ExpiredToken,
}

impl OAuthCode {
    /// Every code, in declaration order: `ALL[c as usize] == c`.
    pub const ALL: [OAuthCode; 11] = [
        OAuthCode::InvalidRequest,
        OAuthCode::InvalidClient,
        OAuthCode::InvalidGrant,
        OAuthCode::UnauthorizedClient,
        OAuthCode::UnsupportedGrantType,
        OAuthCode::InvalidScope,
        OAuthCode::InvalidDpopProof,
        OAuthCode::AuthorizationPending,
        OAuthCode::SlowDown,
        OAuthCode::AccessDenied,
        OAuthCode::ExpiredToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::InvalidDpopProof => "invalid_dpop_proof",
            OAuthCode::AuthorizationPending => "authorization_pending",
            OAuthCode::SlowDown => "slow_down",
            OAuthCode::AccessDenied => "access_denied",
            OAuthCode::ExpiredToken => "expired_token",
        }
    }
}

/// A request with a DPoP-bound token refused (RFC 9449 section 7.1): answered
/// with a `DPoP` challenge naming the accepted algorithms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpopRefusal {
    /// The token is unknown, expired, revoked, bound but sent as Bearer, or
    /// unbound but sent as DPoP: 401 `invalid_token`.
    InvalidToken(&'static str),
    /// The proof is missing or fails a check: 401 `invalid_dpop_proof`.
    InvalidProof(&'static str),
    /// Carries the scopes the route requires: 403 `insufficient_scope`.
    InsufficientScope(String),
}

/// The gateway's own `error` codes, beside RFC 6749's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayCode {
    TooManyAttempts,
    RateLimited,
    Unauthorized,
    InvalidToken,
    InsufficientScope,
    NotFound,
    MethodNotAllowed,
    NotImplemented,
    RequestTimeout,
    BadGateway,
    GatewayTimeout,
    TemporarilyUnavailable,
}

impl GatewayCode {
    /// Every code, in declaration order: `ALL[c as usize] == c`.
    pub const ALL: [GatewayCode; 12] = [
        GatewayCode::TooManyAttempts,
        GatewayCode::RateLimited,
        GatewayCode::Unauthorized,
        GatewayCode::InvalidToken,
        GatewayCode::InsufficientScope,
        GatewayCode::NotFound,
        GatewayCode::MethodNotAllowed,
        GatewayCode::NotImplemented,
        GatewayCode::RequestTimeout,
        GatewayCode::BadGateway,
        GatewayCode::GatewayTimeout,
        GatewayCode::TemporarilyUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GatewayCode::TooManyAttempts => "too_many_attempts",
            GatewayCode::RateLimited => "rate_limited",
            GatewayCode::Unauthorized => "unauthorized",
            GatewayCode::InvalidToken => "invalid_token",
            GatewayCode::InsufficientScope => "insufficient_scope",
            GatewayCode::NotFound => "not_found",
            GatewayCode::MethodNotAllowed => "method_not_allowed",
            GatewayCode::NotImplemented => "not_implemented",
            GatewayCode::RequestTimeout => "request_timeout",
            GatewayCode::BadGateway => "bad_gateway",
            GatewayCode::GatewayTimeout => "gateway_timeout",
            GatewayCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// The `error` of every JSON error body the gateway sends: RFC 6749 section
/// 5.2's codes or the gateway's own. The access log's `reason` and
/// `whosthat_auth_failures_total`'s label say it; the metrics index arrays by
/// its [`slot`](ErrorCode::slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    OAuth(OAuthCode),
    Gateway(GatewayCode),
}

impl ErrorCode {
    /// How many codes there are: the slots are `0..COUNT`.
    pub const COUNT: usize = OAuthCode::ALL.len() + GatewayCode::ALL.len();

    /// Every code, by slot.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        let oauth = OAuthCode::ALL.into_iter().map(ErrorCode::OAuth);
        oauth.chain(GatewayCode::ALL.into_iter().map(ErrorCode::Gateway))
    }

    /// A dense index in `0..COUNT`, RFC 6749's codes first.
    pub fn slot(self) -> usize {
        match self {
            ErrorCode::OAuth(c) => c as usize,
            ErrorCode::Gateway(c) => OAuthCode::ALL.len() + c as usize,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::OAuth(c) => c.as_str(),
            ErrorCode::Gateway(c) => c.as_str(),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<OAuthCode> for ErrorCode {
    fn from(c: OAuthCode) -> ErrorCode {
        ErrorCode::OAuth(c)
    }
}

impl From<GatewayCode> for ErrorCode {
    fn from(c: GatewayCode) -> ErrorCode {
        ErrorCode::Gateway(c)
    }
}

/// Which side of the gateway an error comes from (pingora's `ErrorSource`):
/// whose fault the request's log line says it is, and what the metrics count
/// it as. Decided in one place, [`GatewayError::side`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream client sent something malformed, unroutable or over a
    /// limit (4xx); counted in `whosthat_requests_total` only.
    Client,
    /// The caller's authentication or authorization: bad or missing client
    /// credentials, grants, bearer tokens or scopes, and brute-force lockouts
    /// (`whosthat_auth_failures_total`, by reason).
    Auth,
    /// The upstream could not be reached or did not answer in time: 502 / 504
    /// (`whosthat_upstream_errors_total`, by kind).
    Upstream(UpstreamFault),
    /// The gateway cannot answer now (the token store, the password workers): 503.
    Internal,
}

impl Side {
    /// As written in the access log's `side` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Auth => "auth",
            Side::Upstream(_) => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// How an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    /// Refused, reset, or an answer that could not be used: 502.
    Unreachable,
    /// No answer within the route's `timeout`: 504.
    Timeout,
}

impl UpstreamFault {
    pub const ALL: [UpstreamFault; 2] = [UpstreamFault::Unreachable, UpstreamFault::Timeout];

    /// The `kind` label of `whosthat_upstream_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFault::Unreachable => "unreachable",
            UpstreamFault::Timeout => "timeout",
        }
    }
}

/// The fault under an error (a Redis error, say): it goes to the request's
/// log line, never to the response body. Shared, so errors stay cheap to clone.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(e))
    }
}

impl fmt::Display for Cause {
    /// The fault's own text (whosthat's errors include their source's text in
    /// it), then that of any source it names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cause({self})")
    }
}

/// Causes compare by their text: two errors are the same if they say the same.
impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// Everything the gateway may refuse, by where it comes from ([`Side`]).
/// Descriptions are fixed strings: they never carry request data. A fault's
/// cause is kept ([`GatewayError::cause`]) for the log, never for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    // -- token endpoint (downstream, RFC 6749)
    OAuth(OAuthCode, &'static str),
    /// Form endpoints only take POST.
    PostOnly,
    /// Too many failed password checks: 429 with Retry-After (seconds).
    TooManyAttempts(u64),
    /// Over a route's `rate_limit`: 429 with Retry-After and the draft's
    /// `RateLimit-Policy` / `RateLimit` fields.
    RateLimited {
        retry_after: u64,
        policy: HeaderValue,
        state: HeaderValue,
    },
    // -- bearer authentication (downstream, RFC 6750)
    NoToken,
    InvalidToken(&'static str),
    /// Carries the scopes the route requires.
    InsufficientScope(String),
    MalformedBearer(&'static str),
    /// DPoP (RFC 9449) on a request that presents a token.
    Dpop(DpopRefusal),
    /// An authenticated client asked for something it is not allowed (403):
    /// introspection without `introspect = true` (RFC 7662 section 4).
    ClientForbidden(&'static str),
    // -- routing (downstream)
    BadPath(&'static str),
    NoRoute,
    MethodNotAllowed(String),
    PayloadTooLarge,
    /// The request body broke off or was malformed (e.g. a bad chunk size).
    BadBody,
    // -- the request head and message framing (RFC 9112); the connection is closed
    /// Ambiguous framing, or a missing, repeated or invalid Host: 400.
    BadHead(&'static str),
    /// A transfer coding the gateway does not implement: 501 (RFC 9112 section 6.1).
    UnknownTransferCoding,
    /// CONNECT: the gateway is no tunnel (405).
    Connect,
    /// The request body did not arrive within `server.body_read_timeout`: 408.
    BodyTimeout,
    // -- upstream
    UpstreamUnreachable,
    UpstreamTimeout,
    // -- internal, transient
    PasswordBusy,
    /// The token store (or the brute-force limiter's) could not answer: why.
    StoreUnavailable(Cause),
}

impl From<crate::store::StoreError> for GatewayError {
    fn from(e: crate::store::StoreError) -> GatewayError {
        GatewayError::StoreUnavailable(Cause::new(e))
    }
}

impl fmt::Display for GatewayError {
    /// What the client is told (`error: error_description`); the cause is
    /// [`source`](std::error::Error::source).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, description) = self.code_and_description();
        write!(f, "{code}: {description}")
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause()
            .map(|c| &*c.0 as &(dyn std::error::Error + 'static))
    }
}

impl GatewayError {
    /// Whose fault this is; the metrics count errors by it.
    pub fn side(&self) -> Side {
        match self {
            GatewayError::UpstreamUnreachable => Side::Upstream(UpstreamFault::Unreachable),
            GatewayError::UpstreamTimeout => Side::Upstream(UpstreamFault::Timeout),
            GatewayError::OAuth(
                OAuthCode::InvalidClient
                | OAuthCode::InvalidGrant
                | OAuthCode::UnauthorizedClient
                | OAuthCode::InvalidScope
                | OAuthCode::InvalidDpopProof,
                _,
            )
            | GatewayError::TooManyAttempts(_)
            | GatewayError::NoToken
            | GatewayError::InvalidToken(_)
            | GatewayError::MalformedBearer(_)
            | GatewayError::InsufficientScope(_)
            | GatewayError::Dpop(_)
            | GatewayError::ClientForbidden(_) => Side::Auth,
            // The device flow's polling answers say where the flow stands.
            GatewayError::OAuth(
                OAuthCode::InvalidRequest
                | OAuthCode::UnsupportedGrantType
                | OAuthCode::AuthorizationPending
                | OAuthCode::SlowDown
                | OAuthCode::AccessDenied
                | OAuthCode::ExpiredToken,
                _,
            )
            | GatewayError::PostOnly
            | GatewayError::BadPath(_)
            | GatewayError::NoRoute
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::PayloadTooLarge
            | GatewayError::BadBody
            | GatewayError::RateLimited { .. }
            | GatewayError::BadHead(_)
            | GatewayError::UnknownTransferCoding
            | GatewayError::Connect
            | GatewayError::BodyTimeout => Side::Client,
            GatewayError::PasswordBusy | GatewayError::StoreUnavailable(_) => Side::Internal,
        }
    }

    /// The fault under this error, for the log line only.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            GatewayError::StoreUnavailable(c) => Some(c),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::OAuth(OAuthCode::InvalidClient, _) => StatusCode::UNAUTHORIZED,
            GatewayError::OAuth(..)
            | GatewayError::MalformedBearer(_)
            | GatewayError::BadPath(_)
            | GatewayError::BadBody
            | GatewayError::BadHead(_) => StatusCode::BAD_REQUEST,
            GatewayError::UnknownTransferCoding => StatusCode::NOT_IMPLEMENTED,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::PostOnly | GatewayError::MethodNotAllowed(_) | GatewayError::Connect => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            GatewayError::TooManyAttempts(_) | GatewayError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::NoToken | GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Dpop(DpopRefusal::InsufficientScope(_)) => StatusCode::FORBIDDEN,
            GatewayError::Dpop(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InsufficientScope(_) | GatewayError::ClientForbidden(_) => {
                StatusCode::FORBIDDEN
            }
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::PasswordBusy | GatewayError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `error` and `error_description` of the JSON body.
    fn code_and_description(&self) -> (ErrorCode, &str) {
        use GatewayCode as G;
        const INVALID_REQUEST: ErrorCode = ErrorCode::OAuth(OAuthCode::InvalidRequest);
        match self {
            GatewayError::OAuth(code, d) => ((*code).into(), d),
            GatewayError::PostOnly => (INVALID_REQUEST, "this endpoint only accepts POST"),
            GatewayError::TooManyAttempts(_) => (
                G::TooManyAttempts.into(),
                "too many failed attempts; retry later",
            ),
            GatewayError::RateLimited { .. } => (
                G::RateLimited.into(),
                "too many requests for this route; retry later",
            ),
            GatewayError::NoToken => (G::Unauthorized.into(), "a bearer token is required"),
            GatewayError::InvalidToken(d) => (G::InvalidToken.into(), d),
            GatewayError::InsufficientScope(_) => (
                G::InsufficientScope.into(),
                "the token lacks a scope this route requires",
            ),
            GatewayError::MalformedBearer(d) => (INVALID_REQUEST, d),
            GatewayError::Dpop(DpopRefusal::InvalidToken(d)) => (G::InvalidToken.into(), d),
            GatewayError::Dpop(DpopRefusal::InvalidProof(d)) => {
                (OAuthCode::InvalidDpopProof.into(), d)
            }
            GatewayError::Dpop(DpopRefusal::InsufficientScope(_)) => (
                G::InsufficientScope.into(),
                "the token lacks a scope this route requires",
            ),
            GatewayError::ClientForbidden(d) => (OAuthCode::UnauthorizedClient.into(), d),
            GatewayError::BadPath(d) => (INVALID_REQUEST, d),
            GatewayError::NoRoute => (G::NotFound.into(), "no route matches this path"),
            GatewayError::MethodNotAllowed(_) => (
                G::MethodNotAllowed.into(),
                "this route does not accept the method",
            ),
            GatewayError::PayloadTooLarge => (INVALID_REQUEST, "the request body is too large"),
            GatewayError::BadBody => (
                INVALID_REQUEST,
                "the request body is malformed or incomplete",
            ),
            GatewayError::BadHead(d) => (INVALID_REQUEST, d),
            GatewayError::UnknownTransferCoding => (
                G::NotImplemented.into(),
                "the request uses a transfer coding the gateway does not implement",
            ),
            GatewayError::Connect => (G::MethodNotAllowed.into(), "CONNECT is not supported"),
            GatewayError::BodyTimeout => (
                G::RequestTimeout.into(),
                "the request body did not arrive in time",
            ),
            GatewayError::UpstreamUnreachable => {
                (G::BadGateway.into(), "the upstream could not be reached")
            }
            GatewayError::UpstreamTimeout => (
                G::GatewayTimeout.into(),
                "the upstream did not answer in time",
            ),
            GatewayError::PasswordBusy => (
                G::TemporarilyUnavailable.into(),
                "too many logins at once; retry shortly",
            ),
            GatewayError::StoreUnavailable(_) => (
                G::TemporarilyUnavailable.into(),
                "the token store is unavailable",
            ),
        }
    }

    /// The `error` of the JSON body, as the access log's `reason` and the metrics' label.
    pub fn code(&self) -> ErrorCode {
        self.code_and_description().0
    }

    /// A short reason for the access log and the audit trail: [`Self::code`] as text.
    pub fn reason(&self) -> &'static str {
        self.code().as_str()
    }

    /// Whether the connection is closed after the answer: after ambiguous
    /// framing nothing more on it can be trusted (RFC 9112 section 6.3), and a
    /// 408 means the gateway stopped waiting (RFC 9110 section 15.5.9). hyper
    /// drops `Connection` from HTTP/2 answers (RFC 9113 section 8.2.2), where
    /// only the stream ends.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadHead(_)
                | GatewayError::UnknownTransferCoding
                | GatewayError::Connect
                | GatewayError::BodyTimeout
        )
    }

    pub fn into_response(self) -> Response<Body> {
        let (code, description) = self.code_and_description();
        let body = serde_json::json!({ "error": code.as_str(), "error_description": description });
        let mut resp = json(body.to_string());
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        if self.closes_connection() {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        match &self {
            GatewayError::ClientForbidden(_) => no_store(h),
            GatewayError::OAuth(c, _) => {
                no_store(h);
                if *c == OAuthCode::InvalidClient {
                    h.insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"whosthat\""),
                    );
                }
            }
            GatewayError::TooManyAttempts(secs) => {
                h.insert(RETRY_AFTER, HeaderValue::from(*secs));
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            GatewayError::RateLimited {
                retry_after,
                policy,
                state,
            } => {
                h.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
                h.insert(RATELIMIT_POLICY.clone(), policy.clone());
                h.insert(RATELIMIT.clone(), state.clone());
            }
            GatewayError::PostOnly => {
                h.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            }
            GatewayError::NoToken => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"whosthat\""),
                );
            }
            GatewayError::InvalidToken(d) | GatewayError::MalformedBearer(d) => {
                let v = format!(
                    "Bearer realm=\"{REALM}\", error=\"{code}\", error_description=\"{d}\""
                );
                h.insert(WWW_AUTHENTICATE, header_value(v));
            }
            GatewayError::InsufficientScope(scope) => {
                let v = format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""
                );
                h.insert(WWW_AUTHENTICATE, header_value(v));
            }
            GatewayError::Dpop(refusal) => {
                let algs = crate::jose::verify::ALGS;
                let v = match refusal {
                    DpopRefusal::InsufficientScope(scope) => format!(
                        "DPoP realm=\"{REALM}\", algs=\"{algs}\", error=\"{code}\", scope=\"{scope}\""
                    ),
                    _ => format!(
                        "DPoP realm=\"{REALM}\", algs=\"{algs}\", error=\"{code}\", error_description=\"{description}\""
                    ),
                };
                h.insert(WWW_AUTHENTICATE, header_value(v));
            }
            GatewayError::Connect => {
                // The target of a CONNECT (host:port) is a tunnel, a resource
                // the gateway has none of: it allows no method (RFC 9110 section 10.2.1).
                h.insert(http::header::ALLOW, HeaderValue::from_static(""));
            }
            GatewayError::MethodNotAllowed(allow) => {
                h.insert(http::header::ALLOW, header_value(allow.clone()));
            }
            GatewayError::PasswordBusy | GatewayError::StoreUnavailable(_) => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

fn header_value(s: String) -> HeaderValue {
    // Only built from config values and fixed strings, which are printable ASCII.
    HeaderValue::try_from(s)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"whosthat\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_use_only_allowed_characters() {
        // RFC 6749 section 5.2: %x20-21 / %x23-5B / %x5D-7E
        let all = [
            GatewayError::PostOnly,
            GatewayError::TooManyAttempts(3),
            GatewayError::NoToken,
            GatewayError::NoRoute,
            GatewayError::PayloadTooLarge,
            GatewayError::UpstreamUnreachable,
            GatewayError::UpstreamTimeout,
            GatewayError::PasswordBusy,
            crate::store::StoreError::Unavailable("down".into()).into(),
            GatewayError::InsufficientScope("a".into()),
            GatewayError::Dpop(DpopRefusal::InsufficientScope("a".into())),
            GatewayError::MethodNotAllowed("GET".into()),
            GatewayError::UnknownTransferCoding,
            GatewayError::Connect,
            GatewayError::BodyTimeout,
        ];
        for e in all {
            let (_, d) = e.code_and_description();
            assert!(
                d.bytes().all(|b| b == 0x20
                    || b == 0x21
                    || (0x23..=0x5B).contains(&b)
                    || (0x5D..=0x7E).contains(&b)),
                "{d}"
            );
        }
    }

    #[tokio::test]
    async fn a_cause_reaches_the_source_never_the_body() {
        use http_body_util::BodyExt;
        let e: GatewayError =
            crate::store::StoreError::Unavailable("redis at 10.0.0.7 said NOAUTH".into()).into();
        assert_eq!(e.side(), Side::Internal);
        let cause = e.cause().expect("a cause").to_string();
        assert!(cause.contains("NOAUTH"), "{cause}");
        let source = std::error::Error::source(&e).expect("a source").to_string();
        assert_eq!(source, cause);
        assert!(!e.to_string().contains("NOAUTH"), "{e}");
        let resp = e.into_response();
        assert_eq!(resp.status(), 503);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("NOAUTH") && !body.contains("10.0.0.7"),
            "{body}"
        );
        assert!(body.contains("the token store is unavailable"), "{body}");
        // Only faults have causes.
        assert!(GatewayError::NoRoute.cause().is_none());
        assert_eq!(
            GatewayError::UpstreamTimeout.side(),
            Side::Upstream(UpstreamFault::Timeout)
        );
        assert_eq!(GatewayError::NoToken.side(), Side::Auth);
        assert_eq!(GatewayError::BadBody.side(), Side::Client);
    }

    #[test]
    fn error_codes_index_their_own_slot() {
        for (i, c) in ErrorCode::all().enumerate() {
            assert_eq!(c.slot(), i, "{c:?}");
        }
        assert_eq!(ErrorCode::all().count(), ErrorCode::COUNT);
        for (i, c) in OAuthCode::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i, "{c:?}");
        }
        for (i, c) in GatewayCode::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i, "{c:?}");
        }
        for (i, f) in UpstreamFault::ALL.into_iter().enumerate() {
            assert_eq!(f as usize, i, "{f:?}");
        }
        assert_eq!(OAuthCode::InvalidScope.as_str(), "invalid_scope");
        assert_eq!(GatewayError::NoToken.reason(), "unauthorized");
    }

    #[test]
    fn invalid_client_is_401_with_basic_challenge() {
        let r = GatewayError::OAuth(OAuthCode::InvalidClient, "x").into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Basic realm=\"whosthat\"");
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn framing_errors_close_the_connection() {
        let r = GatewayError::BodyTimeout.into_response();
        assert_eq!(r.status(), 408);
        assert_eq!(r.headers()[CONNECTION], "close");
        let r = GatewayError::UnknownTransferCoding.into_response();
        assert_eq!(r.status(), 501);
        assert_eq!(r.headers()[CONNECTION], "close");
        let r = GatewayError::Connect.into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[http::header::ALLOW], "");
        assert!(GatewayError::BadHead("x").closes_connection());
        assert!(!GatewayError::NoRoute.closes_connection());
        assert!(
            GatewayError::NoRoute
                .into_response()
                .headers()
                .get(CONNECTION)
                .is_none()
        );
    }

    #[test]
    fn dpop_refusals_carry_a_dpop_challenge() {
        let r = GatewayError::Dpop(DpopRefusal::InvalidProof(
            "htu does not match the request URL",
        ))
        .into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "DPoP realm=\"whosthat\", algs=\"ES256 RS256\", error=\"invalid_dpop_proof\", error_description=\"htu does not match the request URL\""
        );
        let r = GatewayError::Dpop(DpopRefusal::InvalidToken("x")).into_response();
        assert!(
            r.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let r = GatewayError::Dpop(DpopRefusal::InsufficientScope("admin".into())).into_response();
        assert_eq!(r.status(), 403);
        assert!(
            r.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("DPoP ")
        );
    }

    #[test]
    fn no_token_challenge_has_no_error_attribute() {
        let r = GatewayError::NoToken.into_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"whosthat\"");
    }
}
