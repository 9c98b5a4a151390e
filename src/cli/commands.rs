//! The `user` and `client` commands: their input checks, the password
//! prompt, and what each prints.

use std::io::{IsTerminal, Read};
use std::path::Path;

use super::edit::{
    Section, add_client, add_user, edit_config, entry_ids, read_doc, refuse_duplicate,
    remove_entry, set_password_hash,
};
use super::{CliResult, RELOAD_HINT};
use crate::config::clients::{ClientConflict, check_client_shape, check_grant, check_redirect_uri};
use crate::config::values::{check_scope_name, is_valid_id};
use crate::config::{Config, GrantType};

// ------------------------------------------------------------------ passwords

/// Reads a password: from stdin when it is not a terminal (one trailing line
/// end dropped), else from a prompt without echo, twice.
pub fn read_password() -> CliResult<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Again: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => return Err("the passwords differ".into()),
            (Err(e), _) | (_, Err(e)) => return Err(format!("cannot read the password: {e}")),
        }
    } else {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        // One trailing newline is the line's end, not part of the password.
        let trimmed = s.strip_suffix('\n').unwrap_or(&s);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

// ------------------------------------------------------------- input checks
//
// The rules are the loader's own (`config::values`, `config::clients`); only
// the wording of the messages is the command line's.

fn check_name(what: &str, name: &str) -> CliResult<()> {
    if !is_valid_id(name) {
        return Err(format!(
            "{name:?} is not a valid {what}: it must be non-empty, without control characters"
        ));
    }
    Ok(())
}

/// The scope tokens of `--scopes`, checked, in order, without duplicates or empties.
fn check_scopes(scopes: &[String]) -> CliResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        check_scope_name(s).map_err(|why| format!("{s:?} {why}"))?;
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// A client to add, its input checked.
#[derive(Debug, Clone)]
pub(super) struct NewClient {
    pub id: String,
    pub grants: Vec<GrantType>,
    pub scopes: Vec<String>,
    pub public: bool,
    pub redirect_uris: Vec<String>,
    /// May call `/auth/introspect` (confidential clients only).
    pub introspect: bool,
}

impl NewClient {
    pub fn check(
        id: &str,
        grants: &[String],
        scopes: &[String],
        public: bool,
        redirect_uris: Vec<String>,
        introspect: bool,
    ) -> CliResult<NewClient> {
        check_name("client id", id)?;
        let mut parsed = Vec::new();
        for g in grants.iter().map(|g| g.trim()).filter(|g| !g.is_empty()) {
            let grant = check_grant(g).map_err(|why| format!("{g:?} {why}"))?;
            if !parsed.contains(&grant) {
                parsed.push(grant);
            }
        }
        if parsed.is_empty() {
            return Err("a client needs at least one grant (--grants)".into());
        }
        check_client_shape(&parsed, !public, redirect_uris.len(), introspect).map_err(
            |conflict| match conflict {
                ClientConflict::CredentialsWithoutSecret => {
                    "client_credentials needs a confidential client: drop --public or that grant"
                }
                ClientConflict::CodeWithoutRedirect => {
                    "authorization_code needs at least one --redirect-uri"
                }
                ClientConflict::IntrospectWithoutSecret => {
                    "--introspect needs a confidential client (not --public)"
                }
            },
        )?;
        for r in &redirect_uris {
            check_redirect_uri(r)
                .map_err(|fault| format!("{r:?} is not a redirect URI: it {fault}"))?;
        }
        Ok(NewClient {
            id: id.to_string(),
            grants: parsed,
            scopes: check_scopes(scopes)?,
            public,
            redirect_uris,
            introspect,
        })
    }
}

// ------------------------------------------------------------ the commands

pub(super) fn user_add(path: &Path, name: &str, scopes: &[String]) -> CliResult<()> {
    check_name("user name", name)?;
    let scopes = check_scopes(scopes)?;
    // Before asking for a password: a name already taken is refused at once.
    refuse_duplicate(&read_doc(path)?, Section::Users, name, path)?;
    let password = read_password()?;
    let hash = crate::password::hash_password(password.as_bytes());
    edit_config(path, |doc| add_user(doc, name, &hash, &scopes, path))?;
    eprintln!(
        "added user `{name}` with scopes [{}] to {}",
        scopes.join(" "),
        path.display()
    );
    eprintln!("{RELOAD_HINT}");
    Ok(())
}

pub(super) fn user_passwd(path: &Path, name: &str) -> CliResult<()> {
    // Before asking for a password: an unknown name is refused at once.
    if !entry_ids(&read_doc(path)?, Section::Users)?
        .iter()
        .any(|n| n.as_deref() == Some(name))
    {
        return Err(format!("{} has no user {name:?}", path.display()));
    }
    let password = read_password()?;
    let hash = crate::password::hash_password(password.as_bytes());
    edit_config(path, |doc| set_password_hash(doc, name, &hash, path))?;
    eprintln!(
        "changed the password of user `{name}` in {}",
        path.display()
    );
    eprintln!("{RELOAD_HINT}");
    Ok(())
}

/// Sets `password_hash` of user `name`, wherever and however it is written.
/// Adds `client` (its input checked); a confidential one gets a new secret.
pub(super) fn client_add(path: &Path, client: NewClient) -> CliResult<()> {
    let (id, public) = (client.id.as_str(), client.public);
    refuse_duplicate(&read_doc(path)?, Section::Clients, id, path)?;
    let secret = (!public).then(crate::store::new_token);
    let hash = secret
        .as_ref()
        .map(|s| crate::password::hash_password(s.as_bytes()));
    edit_config(path, |doc| add_client(doc, &client, hash.as_deref(), path))?;
    let grants: Vec<&str> = client.grants.iter().map(|g| g.as_str()).collect();
    eprintln!(
        "added {} client `{id}` (grants {}; scopes [{}]) to {}",
        if public { "public" } else { "confidential" },
        grants.join(", "),
        client.scopes.join(" "),
        path.display()
    );
    if let Some(secret) = secret {
        eprintln!(
            "its client secret is on the next line of standard output; it will not be shown again (only its hash is stored), so keep it now:"
        );
        println!("{secret}");
    }
    eprintln!("{RELOAD_HINT}");
    Ok(())
}

pub(super) fn remove(path: &Path, section: Section, id: &str) -> CliResult<()> {
    edit_config(path, |doc| remove_entry(doc, section, id, path))?;
    eprintln!("removed {} `{id}` from {}", section.noun(), path.display());
    eprintln!("{RELOAD_HINT}");
    Ok(())
}

pub(super) fn user_list(path: &Path) -> CliResult<()> {
    list(path, "users", |c| {
        crate::config::listing::user_rows(c.users.values())
    })
}

pub(super) fn client_list(path: &Path) -> CliResult<()> {
    list(path, "clients", |c| {
        crate::config::listing::client_rows(c.clients.values())
    })
}

/// Prints `rows` of the config at `path` (see [`crate::config::listing`]), one a line.
fn list(path: &Path, what: &str, rows: impl Fn(&Config) -> Vec<String>) -> CliResult<()> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let rows = rows(&config);
    if rows.is_empty() {
        eprintln!("no {what} in {}", path.display());
    }
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::edit::add_client;
    use crate::cli::testing::{HASH, base, doc, f, valid};
    use toml_edit::Value;

    #[test]
    fn client_input_checks() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(NewClient::check("x", &s(&["nope"]), &[], false, vec![], false).is_err());
        assert!(
            NewClient::check("x", &s(&["client_credentials"]), &[], true, vec![], false).is_err()
        );
        assert!(
            NewClient::check("x", &s(&["authorization_code"]), &[], true, vec![], false).is_err()
        );
        assert!(
            NewClient::check("x", &s(&["password"]), &s(&["a\"b"]), true, vec![], false).is_err()
        );
        assert!(NewClient::check("", &s(&["password"]), &[], true, vec![], false).is_err());
        assert!(
            NewClient::check(
                "x",
                &s(&["authorization_code"]),
                &[],
                true,
                s(&["/cb"]),
                false
            )
            .is_err()
        );
        let c = NewClient::check(
            "x",
            &s(&["authorization_code", "refresh_token", "refresh_token"]),
            &s(&["read", "read"]),
            true,
            s(&["http://127.0.0.1:1/cb"]),
            false,
        )
        .unwrap();
        assert_eq!(c.grants.len(), 2);
        assert_eq!(c.scopes, s(&["read"]));
        let mut d = doc(&base());
        add_client(&mut d, &c, None, f()).unwrap();
        let cfg = valid(&d.to_string());
        assert!(cfg.clients["x"].is_public());
        assert_eq!(
            cfg.clients["x"].redirect_uris,
            s(&["http://127.0.0.1:1/cb"])
        );
        assert!(add_client(&mut d, &c, None, f()).is_err());
    }

    /// One client entry as the loader reads it, each value quoted as TOML.
    fn client_toml(id: &str, grant: &str, scope: &str, redirect: &str) -> String {
        let q = |v: &str| Value::from(v).to_string();
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nid = {}\nsecret_hash = \"{HASH}\"\ngrants = [{}]\nscopes = [{}]\nredirect_uris = [{}]\n",
            q(id),
            q(grant),
            q(scope),
            q(redirect)
        )
    }

    #[test]
    fn client_add_and_the_loader_refuse_alike() {
        let ok = (
            "app",
            "authorization_code",
            "read",
            "https://app.example/cb",
        );
        let cases = [
            // An http URL with an empty host: once let through by both.
            (ok.0, ok.1, ok.2, "http://:80/cb"),
            (ok.0, ok.1, ok.2, "https://:443"),
            (ok.0, ok.1, ok.2, "/relative"),
            (ok.0, ok.1, ok.2, "https://app.example/cb#frag"),
            (ok.0, ok.1, ok.2, "not a url"),
            (ok.0, "magic", ok.2, ok.3),
            (ok.0, ok.1, "a\"b", ok.3),
            ("", ok.1, ok.2, ok.3),
            ("a\u{7}b", ok.1, ok.2, ok.3),
        ];
        let s = |v: &str| vec![v.to_string()];
        let verdicts = |(id, grant, scope, uri): (&str, &str, &str, &str)| {
            let cli = NewClient::check(id, &s(grant), &s(scope), false, s(uri), false);
            let loader = Config::parse(&client_toml(id, grant, scope, uri), f());
            (cli.map(|_| ()), loader.map(|_| ()))
        };
        let (cli, loader) = verdicts(ok);
        assert!(cli.is_ok() && loader.is_ok(), "{cli:?} {loader:?}");
        // A native app's custom scheme (RFC 8252 section 7.1) stays allowed by both.
        let (cli, loader) = verdicts((ok.0, ok.1, ok.2, "com.example.app://cb"));
        assert!(cli.is_ok() && loader.is_ok(), "{cli:?} {loader:?}");
        for case in cases {
            let (cli, loader) = verdicts(case);
            assert!(
                cli.is_err() && loader.is_err(),
                "{case:?}: {cli:?} {loader:?}"
            );
        }
        let (cli, loader) = verdicts((ok.0, ok.1, ok.2, "http://:80/cb"));
        assert!(cli.unwrap_err().contains("must name a host"));
        let loader = loader.unwrap_err();
        assert_eq!(loader.key.as_deref(), Some("clients[0].redirect_uris"));
        assert!(loader.message.contains("must name a host"), "{loader}");
        // The user-name rule is the client-id rule.
        assert!(check_name("user name", "a\u{7}b").is_err());
        let user = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[users]]\nname = \"a\\u0007b\"\npassword_hash = \"{HASH}\"\n"
        );
        assert_eq!(
            Config::parse(&user, f()).unwrap_err().key.as_deref(),
            Some("users[0].name")
        );
    }
}
