//! The one-line listings of users and clients, one format for the three places
//! that print them: `whosthat user list`, `whosthat client list` and the
//! summary of `whosthat check-config`. Never a hash or a secret.

use std::fmt::Write as _;
use std::sync::Arc;

use super::{Client, User};

/// One line per user, by name: `NAME scopes [a b]`.
pub fn user_rows<'a>(users: impl IntoIterator<Item = &'a Arc<User>>) -> Vec<String> {
    let mut users: Vec<&User> = users.into_iter().map(|u| &**u).collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users
        .into_iter()
        .map(|u| format!("{:<20} scopes [{}]", u.name, u.scopes))
        .collect()
}

/// One line per client, by id: `ID KIND grants [g1, g2] scopes [a b]`, then its
/// redirect URIs if it has any.
pub fn client_rows<'a>(clients: impl IntoIterator<Item = &'a Arc<Client>>) -> Vec<String> {
    let mut clients: Vec<&Client> = clients.into_iter().map(|c| &**c).collect();
    clients.sort_by(|a, b| a.id.cmp(&b.id));
    clients
        .into_iter()
        .map(|c| {
            let grants: Vec<&str> = c.grants.iter().map(|g| g.as_str()).collect();
            let kind = if c.is_public() {
                "public"
            } else {
                "confidential"
            };
            let mut line = format!(
                "{:<20} {kind:<12} grants [{}] scopes [{}]",
                c.id,
                grants.join(", "),
                c.scopes
            );
            if !c.redirect_uris.is_empty() {
                let _ = write!(line, " redirect_uris [{}]", c.redirect_uris.join(", "));
            }
            line
        })
        .collect()
}
