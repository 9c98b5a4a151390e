//! OAuth 2.0: the token endpoint and its grants ([`token`]), the form
//! handling every endpoint shares ([`form`]), the request context and guarded
//! password checks ([`context`]), client authentication, the authorization
//! endpoint, revocation, introspection, userinfo and metadata, and the
//! brute-force limiter.

pub mod authorize;
pub mod client_auth;
mod context;
pub mod endpoints;
mod form;
pub mod limiter;
pub mod pkce;
mod token;

pub use context::{
    OAuthContext, check_user_password, check_user_password_from, guarded_verify,
    guarded_verify_from,
};
pub use form::{BodyReadTimeout, MAX_FORM_BYTES, Params, read_form};
pub(crate) use form::{form_pairs, form_urldecode};
pub use token::{
    TokenResponse, grant_still_allowed, issue, revoke_family, token_endpoint, ttl_secs,
};
