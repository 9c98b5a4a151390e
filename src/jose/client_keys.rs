//! A client's registered public keys for `private_key_jwt` (RFC 7523 section
//! 2.2): the JWKS file `[[clients]] jwks` names, read and checked key by key
//! when the config is (re)loaded. The assertions are checked in
//! [`crate::oauth::client_jwt`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::verify::PublicJwk;

/// Keys one client may register: each assertion without a `kid` is tried
/// against those of its type, so the number is bounded.
pub const MAX_CLIENT_KEYS: usize = 16;
/// A JWKS file larger than this is refused (a few dozen keys fit).
const MAX_JWKS_BYTES: u64 = 256 * 1024;

/// A client's registered public keys.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    /// The file they were read from (for `check-config` and errors).
    pub path: PathBuf,
    pub keys: Vec<PublicJwk>,
}

impl ClientKeys {
    /// Reads a JWKS file (RFC 7517 section 5). Every key must be a public EC
    /// P-256 or RSA key (see [`PublicJwk::from_json`]) the backend can use,
    /// `kid`s must differ; the error names the file and the key.
    pub fn load(path: &Path) -> Result<ClientKeys, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the JWKS file {shown}: {e}"))?
            .len();
        if len > MAX_JWKS_BYTES {
            return Err(format!(
                "the JWKS file {shown} is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWKS file {shown}: {e}"))?;
        let set: Value = serde_json::from_str(&text)
            .map_err(|e| format!("the JWKS file {shown} is not JSON: {e}"))?;
        let list = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the JWKS file {shown} has no \"keys\" array"))?;
        if list.is_empty() {
            return Err(format!("the JWKS file {shown} holds no key"));
        }
        if list.len() > MAX_CLIENT_KEYS {
            return Err(format!(
                "the JWKS file {shown} holds {} keys; at most {MAX_CLIENT_KEYS} are accepted",
                list.len()
            ));
        }
        let mut keys: Vec<PublicJwk> = Vec::with_capacity(list.len());
        for (i, k) in list.iter().enumerate() {
            let key = PublicJwk::from_json(k)
                .and_then(|key| key.check_usable().map(|()| key))
                .map_err(|why| format!("{shown}: keys[{i}]: {why}"))?;
            if key.kid.is_some() && keys.iter().any(|other| other.kid == key.kid) {
                return Err(format!("{shown}: keys[{i}]: another key has the same kid"));
            }
            keys.push(key);
        }
        Ok(ClientKeys {
            path: path.to_path_buf(),
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jwks_files_are_checked_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = include_str!("../../tests/fixtures/rsa-client.jwks.json");
        let keys = ClientKeys::load(&write(d, "good.json", good)).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].kid.as_deref(), Some("rsa-1"));
        let err = |name: &str, text: &str| ClientKeys::load(&write(d, name, text)).unwrap_err();
        assert!(
            err("a.json", "{").contains("is not JSON"),
            "{}",
            err("a.json", "{")
        );
        assert!(err("b.json", "{}").contains("no \"keys\" array"));
        assert!(err("c.json", r#"{"keys":[]}"#).contains("holds no key"));
        let private = good.replacen("\"kty\"", "\"d\": \"AAAA\", \"kty\"", 1);
        let e = err("d.json", &private);
        assert!(
            e.contains("keys[0]: the JWK holds private or symmetric key material"),
            "{e}"
        );
        assert!(e.contains("d.json"), "{e}");
        let v: Value = serde_json::from_str(good).unwrap();
        let twice = serde_json::json!({"keys": [v["keys"][0], v["keys"][0]]}).to_string();
        assert!(err("e.json", &twice).contains("keys[1]: another key has the same kid"));
        assert!(
            ClientKeys::load(&d.join("missing.json"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
