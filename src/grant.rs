//! The OAuth grant types: their names in the config and in a token request.
//! Below the config, which lists each client's grants, and the metrics,
//! which count tokens by grant.

/// An OAuth grant type a client may be allowed (`grants` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    Password,
    ClientCredentials,
    RefreshToken,
    AuthorizationCode,
    /// RFC 8628; `device_code` in the config.
    DeviceCode,
}

/// The `grant_type` of a device access token request (RFC 8628 section 3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

impl GrantType {
    pub fn parse(s: &str) -> Option<GrantType> {
        match s {
            "password" => Some(GrantType::Password),
            "client_credentials" => Some(GrantType::ClientCredentials),
            "refresh_token" => Some(GrantType::RefreshToken),
            "authorization_code" => Some(GrantType::AuthorizationCode),
            "device_code" => Some(GrantType::DeviceCode),
            _ => None,
        }
    }

    /// A token request's `grant_type`: the config's names, except that the
    /// device grant goes by its URN there.
    pub fn from_request(s: &str) -> Option<GrantType> {
        match s {
            DEVICE_CODE_GRANT => Some(GrantType::DeviceCode),
            "device_code" => None,
            other => GrantType::parse(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::DeviceCode => "device_code",
        }
    }
}
