//! The administration commands: `user`, `client` and `route test`.
//!
//! `user` and `client` edit the `[[users]]` / `[[clients]]` of the config file in
//! place with `toml_edit`, so every comment and the layout of everything else
//! survive. An edit is validated as a whole config before it is written, and
//! written atomically (a temporary file in the same directory, then a rename):
//! a refused or failed edit leaves the file as it was.
//!
//! Where things are: this file has the clap types and the dispatch;
//! `commands.rs` the commands themselves, their prompts and input checks;
//! `edit.rs` the document edits, the file lock and the atomic write;
//! `route_test.rs` what `route test` reports.

use std::path::Path;

use clap::Subcommand;

use crate::config::Config;

mod commands;
mod edit;
mod route_test;

use commands::{NewClient, client_add, client_list, remove, user_add, user_list, user_passwd};
use edit::Section;

pub use commands::read_password;
pub use route_test::route_test;

/// What a command failed on, shown as `error: ...`; the exit code is 1.
pub type CliResult<T> = Result<T, String>;

const RELOAD_HINT: &str =
    "a running gateway picks the change up on reload: send it SIGHUP (kill -HUP <pid>)";

// ------------------------------------------------------------------ commands

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read like `hash-password` does: from stdin
    /// when it is not a terminal, else from a prompt without echo (twice).
    Add {
        /// The user's name (what the password grant calls `username`).
        name: String,
        /// The most this user's tokens may carry, comma-separated: `read,write`
        /// (required: a user without scopes would get tokens that open nothing).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Change a user's password (read like `add` reads it); live tokens stay valid.
    Passwd {
        /// The user's name.
        name: String,
    },
    /// Remove a user.
    Remove {
        /// The user's name.
        name: String,
    },
    /// List the users and their scopes (never the password hashes).
    List,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Add a client. A confidential one (the default) gets a freshly generated
    /// secret, printed once on stdout; only its argon2 hash is stored.
    Add {
        /// The client id.
        id: String,
        /// Grants, comma-separated, of: password, client_credentials,
        /// refresh_token, authorization_code.
        #[arg(long, value_delimiter = ',', required = true)]
        grants: Vec<String>,
        /// The most this client may ask for, comma-separated: `read,write`.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// A public client: no secret (PKCE is required for its codes).
        #[arg(long)]
        public: bool,
        /// A redirect URI for the authorization code flow; repeat for several.
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// Let this (confidential) client call /auth/introspect (RFC 7662).
        #[arg(long)]
        introspect: bool,
    },
    /// Remove a client.
    Remove {
        /// The client id.
        id: String,
    },
    /// List the clients: id, public or confidential, grants, scopes and
    /// redirect URIs (never the secret hashes).
    List,
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Say which route a request would hit, what it needs and the upstream URL
    /// it would go to, or why none matches. Exit 0 when a route matches, 1 otherwise.
    Test {
        /// The request method: GET, POST, ...
        method: String,
        /// The request path, with a query if any: `/api/orders/7?full=1`.
        path: String,
    },
}

pub fn user(config: &Path, cmd: UserCommand) -> CliResult<()> {
    match cmd {
        UserCommand::Add { name, scopes } => user_add(config, &name, &scopes),
        UserCommand::Passwd { name } => user_passwd(config, &name),
        UserCommand::Remove { name } => remove(config, Section::Users, &name),
        UserCommand::List => user_list(config),
    }
}

pub fn client(config: &Path, cmd: ClientCommand) -> CliResult<()> {
    match cmd {
        ClientCommand::Add {
            id,
            grants,
            scopes,
            public,
            redirect_uris,
            introspect,
        } => client_add(
            config,
            NewClient::check(&id, &grants, &scopes, public, redirect_uris, introspect)?,
        ),
        ClientCommand::Remove { id } => remove(config, Section::Clients, &id),
        ClientCommand::List => client_list(config),
    }
}

/// `Ok(true)`: a route matches.
pub fn route(config: &Path, cmd: RouteCommand) -> CliResult<bool> {
    match cmd {
        RouteCommand::Test { method, path } => {
            let config = Config::load(config).map_err(|e| e.to_string())?;
            let (matched, report) = route_test(&config, &method, &path);
            print!("{report}");
            Ok(matched)
        }
    }
}

#[cfg(test)]
mod testing {
    pub(super) use crate::config::testing::HASH;

    use std::path::Path;

    use toml_edit::DocumentMut;

    use crate::config::Config;

    pub(super) fn base() -> String {
        format!(
            r#"# top comment
[server]
listen = "127.0.0.1:0"   # where

# the users
[[users]]
name = "alice"
password_hash = "{HASH}"
scopes = ["read"]        # alice's scopes

# the client
[[clients]]
id = "cli"
grants = ["password"]

# routes follow
[[routes]]
prefix = "/api/"
upstream = ["http://127.0.0.1:9000", "http://127.0.0.1:9001/v1"]
strip_prefix = true
scopes = ["read"]
"#
        )
    }

    pub(super) fn f() -> &'static Path {
        Path::new("t.toml")
    }

    pub(super) fn doc(text: &str) -> DocumentMut {
        text.parse().unwrap()
    }

    pub(super) fn valid(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }
}
