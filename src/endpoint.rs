//! The gateway's own endpoints: each one's path and name, defined here once.
//! The pipeline, the config's checks (no route may take an endpoint's path),
//! the server metadata and `route test` all read this table.

/// `oauth.token_path` when the config names none.
pub const DEFAULT_TOKEN_PATH: &str = "/auth/access_token";
/// The authorization endpoint (RFC 6749 section 3.1).
pub const AUTHORIZE_PATH: &str = "/auth/authorize";
/// Token revocation (RFC 7009).
pub const REVOKE_PATH: &str = "/auth/revoke";
/// Token introspection (RFC 7662).
pub const INTROSPECT_PATH: &str = "/auth/introspect";
/// Who a bearer token belongs to.
pub const USERINFO_PATH: &str = "/auth/userinfo";
/// The device authorization endpoint (RFC 8628 section 3.1).
pub const DEVICE_AUTHORIZATION_PATH: &str = "/auth/device_authorization";
/// The device flow's verification page (RFC 8628 section 3.3).
pub const DEVICE_PATH: &str = "/auth/device";
/// Authorization server metadata (RFC 8414 section 3).
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// The signing keys' public JWKs (RFC 7517 section 5); with signing keys only.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// OpenID Connect Discovery (section 4); with signing keys only.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";

/// One of the gateway's own endpoints: answered by the gateway, never proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Authorize,
    DeviceAuthorization,
    Device,
    Revoke,
    Introspect,
    Userinfo,
    Metadata,
    /// With `[oauth] signing_keys` only (see [`Endpoint::IDENTITY`]).
    Jwks,
    /// With `[oauth] signing_keys` only.
    OpenIdConfiguration,
}

impl Endpoint {
    /// Every endpoint, in declaration order: `ALL[e as usize] == e` (the
    /// metrics keep an array of counters indexed so).
    pub const ALL: [Endpoint; 10] = [
        Endpoint::Token,
        Endpoint::Authorize,
        Endpoint::DeviceAuthorization,
        Endpoint::Device,
        Endpoint::Revoke,
        Endpoint::Introspect,
        Endpoint::Userinfo,
        Endpoint::Metadata,
        Endpoint::Jwks,
        Endpoint::OpenIdConfiguration,
    ];

    /// The endpoints at a fixed path that are always there: every one but the
    /// token endpoint (first in [`Endpoint::ALL`]; its path is
    /// `oauth.token_path`) and the [`Endpoint::IDENTITY`] ones (last).
    pub const FIXED: &[Endpoint] = Endpoint::ALL
        .split_at(1)
        .1
        .split_at(Endpoint::ALL.len() - 1 - Endpoint::IDENTITY.len())
        .0;

    /// The endpoints that exist only with signing keys: without them their
    /// paths are not the gateway's, and routes get them as before.
    pub const IDENTITY: [Endpoint; 2] = [Endpoint::Jwks, Endpoint::OpenIdConfiguration];

    /// The path of an endpoint at a fixed path; `None` for the token endpoint.
    pub const fn fixed_path(self) -> Option<&'static str> {
        match self {
            Endpoint::Token => None,
            Endpoint::Authorize => Some(AUTHORIZE_PATH),
            Endpoint::DeviceAuthorization => Some(DEVICE_AUTHORIZATION_PATH),
            Endpoint::Device => Some(DEVICE_PATH),
            Endpoint::Revoke => Some(REVOKE_PATH),
            Endpoint::Introspect => Some(INTROSPECT_PATH),
            Endpoint::Userinfo => Some(USERINFO_PATH),
            Endpoint::Metadata => Some(METADATA_PATH),
            Endpoint::Jwks => Some(JWKS_PATH),
            Endpoint::OpenIdConfiguration => Some(OPENID_CONFIGURATION_PATH),
        }
    }

    /// The endpoint's path (`token_path`: the config's `oauth.token_path`);
    /// also the access log's route for it.
    pub fn path(self, token_path: &str) -> &str {
        self.fixed_path().unwrap_or(token_path)
    }

    /// What a person calls it.
    pub const fn label(self) -> &'static str {
        match self {
            Endpoint::Token => "token endpoint",
            Endpoint::Authorize => "authorization endpoint",
            Endpoint::DeviceAuthorization => "device authorization endpoint",
            Endpoint::Device => "device verification page",
            Endpoint::Revoke => "token revocation endpoint",
            Endpoint::Introspect => "token introspection endpoint",
            Endpoint::Userinfo => "userinfo endpoint",
            Endpoint::Metadata => "server metadata endpoint",
            Endpoint::Jwks => "JWKS (signing keys)",
            Endpoint::OpenIdConfiguration => "OpenID Connect discovery",
        }
    }

    /// Browser apps call these across origins (the code flow with PKCE), so
    /// they answer CORS for the clients' redirect URI origins.
    pub const fn cross_origin(self) -> bool {
        matches!(
            self,
            Endpoint::Token
                | Endpoint::Revoke
                | Endpoint::Metadata
                | Endpoint::Userinfo
                | Endpoint::Jwks
                | Endpoint::OpenIdConfiguration
        )
    }

    /// Which endpoint `path` (normalised) is, compared exactly; `token_path`
    /// is the config's `oauth.token_path`.
    pub fn at(path: &str, token_path: &str) -> Option<Endpoint> {
        if path == token_path {
            return Some(Endpoint::Token);
        }
        Endpoint::FIXED
            .iter()
            .copied()
            .find(|e| e.fixed_path() == Some(path))
    }

    /// Which identity endpoint (see [`Endpoint::IDENTITY`]) `path` is, exactly.
    pub fn identity_at(path: &str) -> Option<Endpoint> {
        Endpoint::IDENTITY
            .into_iter()
            .find(|e| e.fixed_path() == Some(path))
    }

    /// The fixed paths, for the config's checks.
    pub fn fixed_paths() -> impl Iterator<Item = &'static str> {
        Endpoint::FIXED.iter().filter_map(|e| e.fixed_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_endpoints_are_all_but_the_token_and_identity_ones() {
        for (i, e) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "{e:?}");
            let special = e == Endpoint::Token || Endpoint::IDENTITY.contains(&e);
            assert_eq!(Endpoint::FIXED.contains(&e), !special, "{e:?}");
        }
        assert_eq!(Endpoint::FIXED.len(), 7);
    }

    #[test]
    fn every_endpoint_is_found_at_its_path() {
        let token = "/oauth/token";
        for e in Endpoint::FIXED.iter().copied().chain([Endpoint::Token]) {
            assert_eq!(Endpoint::at(e.path(token), token), Some(e), "{e:?}");
        }
        assert_eq!(Endpoint::at(DEFAULT_TOKEN_PATH, token), None);
        // Exact: another case is not the endpoint (the config keeps routes off it).
        assert_eq!(Endpoint::at("/Auth/Revoke", token), None);
        assert_eq!(Endpoint::fixed_paths().count(), 7);
        for e in Endpoint::IDENTITY {
            assert_eq!(
                Endpoint::at(e.path(token), token),
                None,
                "{e:?} only with keys"
            );
            assert_eq!(Endpoint::identity_at(e.path(token)), Some(e));
        }
    }
}
