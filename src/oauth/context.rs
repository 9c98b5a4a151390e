//! What the OAuth endpoints share: the request's context ([`OAuthContext`],
//! borrowed from the gateway's state) and password checks under brute-force
//! accounting (see [`super::limiter`]).

use std::net::IpAddr;
use std::sync::Arc;

use super::limiter::{self, Limiter};
use crate::config::{Config, User};
use crate::error::{Cause, GatewayError};
use crate::password::PasswordPool;
use crate::store::{Grants, TokenStore};

/// What grant handling needs; borrowed from the gateway's state.
pub struct OAuthContext<'a> {
    pub config: &'a Config,
    pub store: &'a dyn TokenStore,
    pub passwords: &'a PasswordPool,
    pub limiter: &'a Limiter,
    pub grants: &'a Grants,
    pub metrics: &'a crate::metrics::Metrics,
    /// The client's address (through `server.trusted_proxies`), for
    /// brute-force accounting.
    pub peer: IpAddr,
    /// The request's id, for audit lines.
    pub request_id: &'a str,
    /// `https` or `http`, as the client used it (DPoP's `htu`).
    pub scheme: &'a str,
}

impl OAuthContext<'_> {
    /// Writes one audit line (see [`crate::audit`]) for this request.
    pub fn audit(
        &self,
        event: &'static str,
        user: Option<&str>,
        client: Option<&str>,
        grant: Option<&str>,
        reason: Option<&str>,
    ) {
        let who = crate::audit::Who {
            address: self.peer,
            request_id: self.request_id,
        };
        crate::audit::event(&who, event, user, client, grant, reason);
    }
}

/// Runs a password check under brute-force accounting (RFC 6749 section 4.3.2;
/// see [`limiter`]): the guess is counted before argon2 runs, and refused with
/// 429 (no argon2 work) when a limit has no room; a right password refunds it.
/// Failed answers are held back a little once failures pile up. `account` names
/// what is being guessed at (a user name, or `client:<id>`).
pub async fn guarded_verify(
    ctx: &OAuthContext<'_>,
    account: &str,
    password: &[u8],
    hash: Option<Arc<str>>,
) -> Result<bool, GatewayError> {
    guarded_verify_from(ctx, account, None, password, hash).await
}

/// [`guarded_verify`] for a browser that may carry a device cookie (the login page).
pub async fn guarded_verify_from(
    ctx: &OAuthContext<'_>,
    account: &str,
    device: Option<&str>,
    password: &[u8],
    hash: Option<Arc<str>>,
) -> Result<bool, GatewayError> {
    let origin = limiter::Origin {
        addr: ctx.peer,
        device,
    };
    let attempt = ctx
        .limiter
        .begin(account, &origin)
        .await
        .map_err(|r| match r {
            limiter::Refusal::TooMany(secs) => {
                ctx.audit(
                    "lockout",
                    Some(account),
                    None,
                    None,
                    Some("too_many_attempts"),
                );
                GatewayError::TooManyAttempts(secs)
            }
            limiter::Refusal::Unavailable(e) => GatewayError::StoreUnavailable(Cause::new(e)),
        })?;
    let ok = match ctx.passwords.verify(password, hash).await {
        Ok(ok) => ok,
        Err(_) => {
            attempt.not_checked().await;
            return Err(GatewayError::PasswordBusy);
        }
    };
    ctx.metrics.password_checked();
    if ok {
        attempt.succeeded().await;
    } else {
        // Held back with its slots still taken: waiting out the delay in
        // parallel gains nothing.
        let delay = attempt.failure_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        attempt.failed().await;
    }
    Ok(ok)
}

/// Checks a user's password; unknown users are checked against the dummy hash,
/// so they cost the same time and get the same answer.
pub async fn check_user_password<'c>(
    ctx: &OAuthContext<'c>,
    username: &str,
    password: &str,
) -> Result<Option<&'c Arc<User>>, GatewayError> {
    check_user_password_from(ctx, username, None, password).await
}

/// [`check_user_password`] from a browser with a device cookie (the login page):
/// a device that signed in as `username` before is limited on its own, so an
/// attack on the name from elsewhere does not lock it out.
pub async fn check_user_password_from<'c>(
    ctx: &OAuthContext<'c>,
    username: &str,
    device: Option<&str>,
    password: &str,
) -> Result<Option<&'c Arc<User>>, GatewayError> {
    let user = ctx.config.users.get(username);
    let hash = user.map(|u| Arc::from(u.password_hash.as_str()));
    let ok = guarded_verify_from(ctx, username, device, password.as_bytes(), hash).await?;
    Ok(user.filter(|_| ok))
}
