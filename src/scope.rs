//! OAuth scopes (RFC 6749 section 3.3): space-delimited, case-sensitive tokens.

use std::fmt;

/// A set of scope tokens, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<String>);

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`
pub fn is_valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

impl ScopeSet {
    /// Parses a `scope` request parameter. `None` if a token is malformed.
    pub fn parse(s: &str) -> Option<ScopeSet> {
        let mut v = Vec::new();
        // The grammar is single-space separated; tolerate runs of spaces, refuse other whitespace.
        for tok in s.split(' ').filter(|t| !t.is_empty()) {
            if !is_valid_scope_token(tok) {
                return None;
            }
            v.push(tok.to_string());
        }
        Some(ScopeSet::from_vec(v))
    }

    fn from_vec(mut v: Vec<String>) -> ScopeSet {
        v.sort_unstable();
        v.dedup();
        ScopeSet(v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, s: &str) -> bool {
        self.0.binary_search_by(|x| x.as_str().cmp(s)).is_ok()
    }

    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }

    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(
            self.0
                .iter()
                .filter(|s| other.contains(s))
                .cloned()
                .collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<'a> FromIterator<&'a str> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        ScopeSet::from_vec(iter.into_iter().map(str::to_string).collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sorts_and_dedups() {
        let s = ScopeSet::parse("write read  read").unwrap();
        assert_eq!(s.to_string(), "read write");
        assert!(ScopeSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn parse_refuses_bad_tokens() {
        assert!(ScopeSet::parse("a\"b").is_none());
        assert!(ScopeSet::parse("a\\b").is_none());
        assert!(ScopeSet::parse("a\tb").is_none());
        assert!(ScopeSet::parse("é").is_none());
    }

    #[test]
    fn subset_and_intersection() {
        let all = ScopeSet::parse("a b c").unwrap();
        let some = ScopeSet::parse("c a").unwrap();
        assert!(some.is_subset_of(&all));
        assert!(!all.is_subset_of(&some));
        assert_eq!(
            all.intersection(&ScopeSet::parse("b d").unwrap())
                .to_string(),
            "b"
        );
    }
}
