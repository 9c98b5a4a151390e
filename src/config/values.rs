//! Checks of value kinds that several sections use: durations, bounded counts,
//! names, scope lists and argon2 hashes. The `check_*` functions are the rules
//! themselves, shared with the CLI so that `user add` and `client add` refuse
//! what the loader refuses.

use std::time::Duration;

use toml::Spanned;

use super::{ConfigError, Validator};
use crate::scope::{ScopeSet, is_valid_scope_token};

/// Token expiry times are unix seconds plus a lifetime: keep them far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);

/// Why a scope token is refused, after the token itself.
const BAD_SCOPE: &str =
    "is not a valid scope (RFC 6749 section 3.3: printable ASCII, no space, `\"` or `\\`)";

/// A user name or client id: not empty, no control characters (they would
/// forge lines in logs and headers).
pub(crate) fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_control)
}

/// A scope-token (RFC 6749 section 3.3). `Err`: why, to follow the token.
pub(crate) fn check_scope_name(s: &str) -> Result<(), &'static str> {
    if !is_valid_scope_token(s) {
        return Err(BAD_SCOPE);
    }
    Ok(())
}

impl Validator<'_> {
    /// A humantime duration, more than zero and at most [`MAX_DURATION`].
    pub(super) fn duration(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.err(
                v.span(),
                key,
                format!(
                    "`{}` is not a duration like \"90s\", \"15m\", \"1h\" or \"14d\": {e}",
                    v.get_ref()
                ),
            )
        })?;
        if d.is_zero() {
            return Err(self.err(v.span(), key, "must be longer than zero"));
        }
        if d > MAX_DURATION {
            return Err(self.err(v.span(), key, "must be at most 10 years"));
        }
        Ok(d)
    }

    pub(super) fn opt_duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            Some(v) => self.duration(v, key),
            None => Ok(default),
        }
    }

    /// An integer in `min..=max`; `default` when absent.
    pub(super) fn positive(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: usize,
        max: usize,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) => {
                let val = *n.get_ref();
                if val < min as i64 || val > max as i64 {
                    Err(self.err(n.span(), key, format!("must be between {min} and {max}")))
                } else {
                    Ok(val as usize)
                }
            }
        }
    }

    /// A list of scope tokens (RFC 6749 section 3.3); empty when absent.
    pub(super) fn scopes(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<ScopeSet, ConfigError> {
        let Some(v) = v else {
            return Ok(ScopeSet::default());
        };
        for s in v.get_ref() {
            check_scope_name(s).map_err(|why| self.err(v.span(), key, format!("`{s}` {why}")))?;
        }
        Ok(ScopeSet::from_iter(v.get_ref().iter().map(String::as_str)))
    }

    /// An argon2 PHC string, as `hash-password` makes.
    pub(super) fn phc(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        crate::password::check_phc(v.get_ref()).map_err(|why| {
            self.err(
                v.span(),
                key,
                format!("not an argon2 PHC string ({why}); make one with `whosthat hash-password`"),
            )
        })?;
        Ok(v.get_ref().clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, parse};

    #[test]
    fn bad_duration_is_refused() {
        let text = base() + "timeout = \"soon\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[0].timeout"));
        assert_eq!(e.line, Some(text.lines().count()));
    }
}
