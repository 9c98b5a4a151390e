//! How token and code records are written outside the process: in Redis
//! values and in the memory store's state file. One set of serde types with
//! readable field names serves both.
//!
//! The one-letter names earlier versions wrote (`u`, `c`, `s`, `i`, `e`, ...) are
//! still read (`alias`): a state file saved by one is loaded once (loading
//! deletes it, and the next save writes the new names), and records already in
//! a running Redis stay readable until they expire. A record never holds a
//! token, only who it speaks for and its lifetime.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CodeOidc, CodeRecord, Grant, Grants, TokenRecord};
use crate::scope::ScopeSet;

/// Who a record speaks for: a [`Grant`] as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGrant {
    /// `None` for a client_credentials token.
    #[serde(alias = "u")]
    pub user: Option<String>,
    #[serde(alias = "c")]
    pub client: String,
    /// Space-separated (RFC 6749 section 3.3).
    #[serde(alias = "s")]
    pub scope: String,
}

impl StoredGrant {
    pub fn of(g: &Grant) -> StoredGrant {
        StoredGrant {
            user: g.user.as_deref().map(str::to_string),
            client: g.client.to_string(),
            scope: g.scope.to_string(),
        }
    }

    /// The interned grant; `None` if the scope does not parse.
    pub fn intern(self, grants: &Grants) -> Option<Arc<Grant>> {
        let scope = ScopeSet::parse(&self.scope)?;
        Some(grants.intern(self.user.map(Arc::from), Arc::from(self.client), scope))
    }
}

/// An access or refresh token's record (its family is kept beside it: the
/// Redis value's prefix, the state file's own field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    #[serde(flatten)]
    pub grant: StoredGrant,
    /// Unix seconds.
    #[serde(alias = "i")]
    pub issued_at: u64,
    /// Unix seconds; dead from this second on.
    #[serde(alias = "e")]
    pub expires_at: u64,
    /// The DPoP binding (RFC 9449 `cnf.jkt`): a bound token must stay bound.
    #[serde(alias = "j", default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<String>,
}

impl StoredToken {
    pub fn of(rec: &TokenRecord) -> StoredToken {
        StoredToken {
            grant: StoredGrant::of(&rec.grant),
            issued_at: rec.issued_at,
            expires_at: rec.expires_at,
            cnf: rec.cnf.as_deref().cloned(),
        }
    }

    /// The record, of grant family `family`; `None` if the scope does not parse.
    pub fn into_record(self, family: u64, grants: &Grants) -> Option<TokenRecord> {
        Some(TokenRecord {
            grant: self.grant.intern(grants)?,
            family,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            cnf: self.cnf.map(Arc::from),
        })
    }
}

/// An authorization code's record (RFC 6749 section 4.1.2, RFC 7636).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCode {
    #[serde(flatten)]
    pub grant: StoredGrant,
    #[serde(alias = "e")]
    pub expires_at: u64,
    #[serde(alias = "r")]
    pub redirect_uri: String,
    #[serde(alias = "g")]
    pub redirect_uri_given: bool,
    /// The S256 challenge, when PKCE was used.
    #[serde(alias = "p")]
    pub code_challenge: Option<String>,
    /// OpenID Connect: `auth_time` (present for an OIDC code) and `nonce`.
    #[serde(alias = "a", default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    #[serde(alias = "n", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl StoredCode {
    pub fn of(rec: &CodeRecord) -> StoredCode {
        StoredCode {
            grant: StoredGrant::of(&rec.grant),
            expires_at: rec.expires_at,
            redirect_uri: rec.redirect_uri.clone(),
            redirect_uri_given: rec.redirect_uri_given,
            code_challenge: rec.code_challenge.clone(),
            auth_time: rec.oidc.as_ref().map(|o| o.auth_time),
            nonce: rec.oidc.as_ref().and_then(|o| o.nonce.clone()),
        }
    }

    /// The record, of grant family `family`; `None` if the scope does not parse.
    pub fn into_record(self, family: u64, grants: &Grants) -> Option<CodeRecord> {
        Some(CodeRecord {
            grant: self.grant.intern(grants)?,
            family,
            redirect_uri: self.redirect_uri,
            redirect_uri_given: self.redirect_uri_given,
            code_challenge: self.code_challenge,
            expires_at: self.expires_at,
            oidc: self.auth_time.map(|auth_time| CodeOidc {
                nonce: self.nonce,
                auth_time,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(grants: &Grants) -> Arc<Grant> {
        grants.intern(
            Some(Arc::from("alice")),
            Arc::from("cli"),
            ScopeSet::parse("read write").unwrap(),
        )
    }

    #[test]
    fn tokens_are_written_with_readable_names_and_read_back() {
        let grants = Grants::default();
        let rec = TokenRecord {
            grant: grant(&grants),
            family: 7,
            issued_at: 100,
            expires_at: 200,
            cnf: None,
        };
        let json = serde_json::to_string(&StoredToken::of(&rec)).unwrap();
        assert_eq!(
            json,
            r#"{"user":"alice","client":"cli","scope":"read write","issued_at":100,"expires_at":200}"#
        );
        let back: StoredToken = serde_json::from_str(&json).unwrap();
        let back = back.into_record(7, &grants).unwrap();
        assert!(Arc::ptr_eq(&back.grant, &rec.grant));
        assert_eq!(
            (back.family, back.issued_at, back.expires_at),
            (7, 100, 200)
        );
    }

    #[test]
    fn the_one_letter_names_of_earlier_versions_are_still_read() {
        let grants = Grants::default();
        let old: StoredToken =
            serde_json::from_str(r#"{"u":"alice","c":"cli","s":"read write","i":100,"e":200}"#)
                .unwrap();
        let rec = old.into_record(3, &grants).unwrap();
        assert!(Arc::ptr_eq(&rec.grant, &grant(&grants)));
        assert_eq!((rec.issued_at, rec.expires_at), (100, 200));
        let old: StoredToken =
            serde_json::from_str(r#"{"u":null,"c":"svc","s":"read","i":1,"e":2}"#).unwrap();
        assert_eq!(old.grant.user, None);
        let code: StoredCode = serde_json::from_str(
            r#"{"u":"alice","c":"spa","s":"read","e":9,"r":"http://x/cb","g":true,"p":"abc"}"#,
        )
        .unwrap();
        assert_eq!(code.redirect_uri, "http://x/cb");
        assert!(code.redirect_uri_given);
        assert_eq!(code.code_challenge.as_deref(), Some("abc"));
        let code = code.into_record(5, &grants).unwrap();
        assert_eq!((code.family, code.expires_at), (5, 9));
    }

    #[test]
    fn codes_round_trip() {
        let grants = Grants::default();
        let rec = CodeRecord {
            grant: grant(&grants),
            family: 1,
            redirect_uri: "http://127.0.0.1/cb".into(),
            redirect_uri_given: false,
            code_challenge: None,
            expires_at: 60,
            oidc: None,
        };
        let json = serde_json::to_string(&StoredCode::of(&rec)).unwrap();
        assert!(
            json.contains(r#""redirect_uri":"http://127.0.0.1/cb""#),
            "{json}"
        );
        let back: StoredCode = serde_json::from_str(&json).unwrap();
        let back = back.into_record(1, &grants).unwrap();
        assert_eq!(back.redirect_uri, rec.redirect_uri);
        assert!(!back.redirect_uri_given);
        // A scope that does not parse: no record.
        let mut bad = StoredCode::of(&rec);
        bad.grant.scope = "re\"ad".into();
        assert!(bad.into_record(1, &grants).is_none());
    }

    #[test]
    fn dpop_bindings_and_oidc_codes_round_trip_and_their_old_names_are_read() {
        let grants = Grants::default();
        let rec = TokenRecord {
            grant: grant(&grants),
            family: 2,
            issued_at: 1,
            expires_at: 2,
            cnf: Some(Arc::new("jkt-value".to_string())),
        };
        let json = serde_json::to_string(&StoredToken::of(&rec)).unwrap();
        assert!(json.contains(r#""cnf":"jkt-value""#), "{json}");
        let back: StoredToken = serde_json::from_str(&json).unwrap();
        let back = back.into_record(2, &grants).unwrap();
        assert_eq!(back.cnf.as_deref().map(String::as_str), Some("jkt-value"));
        let old: StoredToken =
            serde_json::from_str(r#"{"u":"alice","c":"cli","s":"read","i":1,"e":2,"j":"k"}"#)
                .unwrap();
        assert_eq!(old.cnf.as_deref(), Some("k"));

        let code = CodeRecord {
            grant: grant(&grants),
            family: 1,
            redirect_uri: "http://127.0.0.1/cb".into(),
            redirect_uri_given: true,
            code_challenge: None,
            expires_at: 60,
            oidc: Some(CodeOidc {
                nonce: Some("n-0".into()),
                auth_time: 50,
            }),
        };
        let json = serde_json::to_string(&StoredCode::of(&code)).unwrap();
        assert!(json.contains(r#""auth_time":50"#), "{json}");
        let back: StoredCode = serde_json::from_str(&json).unwrap();
        let oidc = back.into_record(1, &grants).unwrap().oidc.unwrap();
        assert_eq!((oidc.nonce.as_deref(), oidc.auth_time), (Some("n-0"), 50));
        let old: StoredCode = serde_json::from_str(
            r#"{"u":"alice","c":"spa","s":"read","e":9,"r":"http://x/cb","g":true,"p":null,"a":7,"n":"x"}"#,
        )
        .unwrap();
        let oidc = old.into_record(1, &grants).unwrap().oidc.unwrap();
        assert_eq!((oidc.nonce.as_deref(), oidc.auth_time), (Some("x"), 7));
    }
}
