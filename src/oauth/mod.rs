//! OAuth 2.0: the token endpoint and its grants ([`token`]), the form
//! handling every endpoint shares ([`form`]), the request context and guarded
//! password checks ([`context`]), client authentication, the authorization and
//! device endpoints, revocation, introspection, userinfo and metadata, OpenID
//! Connect, DPoP, and the brute-force limiter.

pub mod authorize;
pub mod bearer;
pub mod client_auth;
pub(crate) mod client_jwt;
mod context;
pub(crate) mod device;
pub(crate) mod device_page;
pub(crate) mod dpop;
pub(crate) mod endpoints;
mod form;
pub mod limiter;
pub(crate) mod oidc;
pub(crate) mod pkce;
pub(crate) mod redirect;
pub(crate) mod signin_state;
mod token;

pub use crate::clock::ttl_secs;
pub use context::{
    OAuthContext, check_user_password, check_user_password_from, guarded_verify,
    guarded_verify_from,
};
pub use form::{BodyReadTimeout, MAX_FORM_BYTES, Params, read_form};
pub(crate) use form::{form_pairs, form_urldecode};
pub use token::{
    Binding, TokenResponse, grant_still_allowed, issue, revoke_family, token_endpoint,
};
pub(crate) use token::{grant_scope, issue_tokens};
