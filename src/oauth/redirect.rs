//! Which redirect URIs a client may use: exactly a registered one (RFC 9700
//! section 2.1), with the one exception RFC 8252 section 7.3 requires and RFC
//! 9700 section 4.1.3 keeps: a native app's loopback IP redirect URI
//! (`http://127.0.0.1` or `http://[::1]`) matches on any port, as the app
//! listens on whatever port the OS gives it. Never for `localhost` (RFC 8252
//! section 8.3: a name can resolve elsewhere) and never for other hosts.

/// Loopback IP literals the port exception is for.
const LOOPBACK_HOSTS: [&str; 2] = ["127.0.0.1", "[::1]"];

/// Whether `presented` may be used where `registered` was registered.
pub fn matches(registered: &str, presented: &str) -> bool {
    registered == presented || same_loopback_but_port(registered, presented)
}

/// Whether any of `registered` matches `presented`.
pub fn is_registered(registered: &[String], presented: &str) -> bool {
    registered.iter().any(|r| matches(r, presented))
}

/// `http://HOST[:port]REST` with HOST a loopback literal: `(host, rest)`. The
/// authority must be exactly the host and an optional port of digits (no user
/// info, no other spelling of the address).
fn loopback_parts(uri: &str) -> Option<(&str, &str)> {
    let after = uri.strip_prefix("http://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let host = LOOPBACK_HOSTS.iter().find(|h| authority.starts_with(**h))?;
    match &authority[host.len()..] {
        "" => {}
        port => {
            let digits = port.strip_prefix(':')?;
            if digits.is_empty()
                || digits.len() > 5
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.parse::<u16>().ok().is_none_or(|p| p == 0)
            {
                return None;
            }
        }
    }
    Some((host, rest))
}

fn same_loopback_but_port(registered: &str, presented: &str) -> bool {
    match (loopback_parts(registered), loopback_parts(presented)) {
        (Some((rh, rr)), Some((ph, pr))) => rh == ph && rr == pr && !pr.contains('#'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ip_redirects_match_on_any_port() {
        let reg = "http://127.0.0.1:18483/callback";
        assert!(matches(reg, reg));
        assert!(matches(reg, "http://127.0.0.1:51004/callback"));
        assert!(matches(reg, "http://127.0.0.1/callback"));
        assert!(matches("http://127.0.0.1/cb", "http://127.0.0.1:8080/cb"));
        assert!(matches(
            "http://[::1]:1/cb?x=1",
            "http://[::1]:65535/cb?x=1"
        ));
    }

    #[test]
    fn everything_else_is_exact() {
        let reg = "http://127.0.0.1:18483/callback";
        // Path, query, host and scheme still exact.
        assert!(!matches(reg, "http://127.0.0.1:1/callback2"));
        assert!(!matches(reg, "http://127.0.0.1:1/callback?x"));
        assert!(!matches(reg, "http://127.0.0.2:1/callback"));
        assert!(!matches(reg, "https://127.0.0.1:1/callback"));
        assert!(!matches(reg, "http://[::1]:1/callback"));
        // Other spellings and smuggled authorities.
        assert!(!matches(reg, "http://127.0.0.1.evil.example/callback"));
        assert!(!matches(reg, "http://127.0.0.1:1@evil.example/callback"));
        assert!(!matches(reg, "http://127.0.0.1:/callback"));
        assert!(!matches(reg, "http://127.0.0.1:0/callback"));
        assert!(!matches(reg, "http://127.0.0.1:99999/callback"));
        assert!(!matches(reg, "http://127.0.0.1:1/callback#frag"));
        // Never for names, never for other hosts.
        let named = "http://localhost:18483/callback";
        assert!(!matches(named, "http://localhost:1/callback"));
        let remote = "https://app.example:8443/cb";
        assert!(!matches(remote, "https://app.example:8444/cb"));
        assert!(!matches(remote, "https://app.example/cb"));
        assert!(is_registered(
            &[named.into(), reg.into()],
            "http://127.0.0.1:2/callback"
        ));
    }
}
