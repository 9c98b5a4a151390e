//! The audit trail: request ids, and security events as log lines of their own
//! (target `whosthat::audit`), one shape for all:
//!
//! `event` (what happened), `user`, `client`, `grant`, `address` (the client
//! address, after `server.trusted_proxies`), `reason` (why something was
//! refused), `request_id` (the same id as the access log line and the
//! upstream's `X-Request-Id`). Never a password, secret or token.
//!
//! Events: `token_issued`, `token_refreshed`, `token_refused`, `token_revoked`,
//! `signin_succeeded`, `signin_failed`, `lockout`, `client_auth_failed`
//! (private_key_jwt), `device_code_issued`, `device_code_entered`,
//! `device_code_refused`, `device_approved`, `device_denied` (RFC 8628).

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a trusted proxy.
const MAX_ID_LEN: usize = 128;

/// A fresh request id: 32 hex digits, a random per-process half and a
/// per-thread counter half (the thread's number in its top bits), so ids are
/// unique without a random draw per request.
pub fn new_request_id() -> HeaderValue {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static NEXT: Cell<u64> = Cell::new(
            THREADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 48,
        );
    }
    let process = *PROCESS.get_or_init(crate::store::random_u64);
    let n = NEXT.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in process
        .to_be_bytes()
        .iter()
        .chain(n.to_be_bytes().iter())
        .enumerate()
    {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// The request's id: the one a trusted proxy sent (one `X-Request-Id` of at
/// most 128 visible ASCII characters), or a fresh one. A client that is not a
/// trusted proxy cannot choose the id the logs and the upstream see.
pub fn request_id(headers: &HeaderMap, from_trusted_proxy: bool) -> HeaderValue {
    if from_trusted_proxy {
        let mut all = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(v), None) = (all.next(), all.next()) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= MAX_ID_LEN && b.iter().all(|c| c.is_ascii_graphic()) {
                return v.clone();
            }
        }
    }
    new_request_id()
}

/// Who and where, for an audit line.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub address: IpAddr,
    pub request_id: &'a str,
}

/// One audit line. `user` and `client` are what the request named or the
/// grant holds; `-` when unknown.
pub fn event(
    who: &Who<'_>,
    event: &'static str,
    user: Option<&str>,
    client: Option<&str>,
    grant: Option<&str>,
    reason: Option<&str>,
) {
    tracing::info!(
        target: "whosthat::audit",
        event,
        user = user.unwrap_or("-"),
        client = client.unwrap_or("-"),
        grant = grant.unwrap_or("-"),
        address = %who.address,
        reason = reason.unwrap_or("-"),
        request_id = who.request_id,
        "{event}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_unique_and_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        let other = std::thread::spawn(new_request_id).join().unwrap();
        assert_ne!(other, a);
        assert_ne!(other, b);
    }

    #[test]
    fn only_a_trusted_proxy_chooses_the_id() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("lb-1234"));
        assert_eq!(request_id(&h, true), "lb-1234");
        assert_ne!(request_id(&h, false), "lb-1234");
        h.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_ne!(request_id(&h, true), "lb-1234");
        let mut long = HeaderMap::new();
        long.insert(
            &X_REQUEST_ID,
            HeaderValue::try_from("x".repeat(200)).unwrap(),
        );
        assert_eq!(request_id(&long, true).len(), 32);
        let mut spaced = HeaderMap::new();
        spaced.insert(&X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(request_id(&spaced, true).len(), 32);
    }
}
