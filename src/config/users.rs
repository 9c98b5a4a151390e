//! `[[users]]`: the resource owners of the password and code grants.

use std::collections::HashMap;
use std::sync::Arc;

use toml::Spanned;

use super::raw::RawUser;
use super::values::is_valid_id;
use super::{ConfigError, User, Validator};

impl Validator<'_> {
    /// `[[users]]`, by name; a name given twice is refused.
    pub(super) fn users(
        &self,
        raw: &[Spanned<RawUser>],
    ) -> Result<HashMap<String, Arc<User>>, ConfigError> {
        let mut users = HashMap::new();
        for (i, u) in raw.iter().enumerate() {
            let u = u.get_ref();
            let key = |k: &str| format!("users[{i}].{k}");
            let name = u.name.get_ref();
            if !is_valid_id(name) {
                return Err(self.err(
                    u.name.span(),
                    key("name"),
                    "must be a non-empty name without control characters",
                ));
            }
            let user = User {
                name: Arc::from(name.as_str()),
                password_hash: self.phc(&u.password_hash, &key("password_hash"))?,
                scopes: self.scopes(&u.scopes, &key("scopes"))?,
            };
            if users.insert(name.clone(), Arc::new(user)).is_some() {
                return Err(self.err(
                    u.name.span(),
                    key("name"),
                    format!("user `{name}` is defined twice"),
                ));
            }
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{HASH, base, parse};

    #[test]
    fn bad_hash_and_scope_are_refused() {
        let text = base().replace(HASH, "plaintext");
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("users[0].password_hash")
        );
        let text = base().replace(
            "scopes = [\"read\"]\n\n[[clients]]",
            "scopes = [\"a b\"]\n\n[[clients]]",
        );
        assert_eq!(
            parse(&text).unwrap_err().key.as_deref(),
            Some("users[0].scopes")
        );
    }
}
