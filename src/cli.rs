//! The administration commands: `user`, `client` and `route test`.
//!
//! `user` and `client` edit the `[[users]]` / `[[clients]]` of the config file in
//! place with `toml_edit`, so every comment and the layout of everything else
//! survive. An edit is validated as a whole config before it is written, and
//! written atomically (a temporary file in the same directory, then a rename):
//! a refused or failed edit leaves the file as it was.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{IsTerminal, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use crate::config::{Config, GrantType};
use crate::routes::normalize_path;
use crate::scope::is_valid_scope_token;

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
            &id,
            &grants,
            &scopes,
            public,
            redirect_uris,
            introspect,
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

fn check_name(what: &str, name: &str) -> CliResult<()> {
    if name.is_empty() || name.chars().any(char::is_control) {
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
        if !is_valid_scope_token(s) {
            return Err(format!(
                "{s:?} is not a valid scope (RFC 6749 section 3.3: printable ASCII, no space, `\"` or `\\`)"
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// A client to add, its input checked.
#[derive(Debug, Clone)]
pub struct NewClient {
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
    ) -> CliResult<NewClient> {
        check_name("client id", id)?;
        let mut parsed = Vec::new();
        for g in grants.iter().map(|g| g.trim()).filter(|g| !g.is_empty()) {
            let grant = GrantType::parse(g).ok_or_else(|| {
                format!(
                    "{g:?} is not a grant: use password, client_credentials, refresh_token or authorization_code"
                )
            })?;
            if !parsed.contains(&grant) {
                parsed.push(grant);
            }
        }
        if parsed.is_empty() {
            return Err("a client needs at least one grant (--grants)".into());
        }
        if public && parsed.contains(&GrantType::ClientCredentials) {
            return Err(
                "client_credentials needs a confidential client: drop --public or that grant"
                    .into(),
            );
        }
        for r in &redirect_uris {
            let ok = r
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.authority().is_some())
                && !r.contains('#');
            if !ok {
                return Err(format!(
                    "{r:?} is not a redirect URI: it must be an absolute URL without a fragment"
                ));
            }
        }
        if parsed.contains(&GrantType::AuthorizationCode) && redirect_uris.is_empty() {
            return Err("authorization_code needs at least one --redirect-uri".into());
        }
        Ok(NewClient {
            id: id.to_string(),
            grants: parsed,
            scopes: check_scopes(scopes)?,
            public,
            redirect_uris,
            introspect: false,
        })
    }
}

// --------------------------------------------------------- document edits

/// The two arrays these commands edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Users,
    Clients,
}

impl Section {
    fn key(self) -> &'static str {
        match self {
            Section::Users => "users",
            Section::Clients => "clients",
        }
    }

    fn id_key(self) -> &'static str {
        match self {
            Section::Users => "name",
            Section::Clients => "id",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Section::Users => "user",
            Section::Clients => "client",
        }
    }
}

/// The name or id of each entry of `section`, in file order.
pub fn entry_ids(doc: &DocumentMut, section: Section) -> CliResult<Vec<Option<String>>> {
    let id_key = section.id_key();
    match doc.get(section.key()) {
        None => Ok(Vec::new()),
        Some(Item::ArrayOfTables(a)) => Ok(a
            .iter()
            .map(|t| t.get(id_key).and_then(Item::as_str).map(str::to_string))
            .collect()),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .map(|v| match v {
                Value::InlineTable(t) => {
                    Ok(t.get(id_key).and_then(Value::as_str).map(str::to_string))
                }
                _ => Err(not_a_list(section)),
            })
            .collect(),
        Some(_) => Err(not_a_list(section)),
    }
}

fn not_a_list(section: Section) -> String {
    format!(
        "`{}` in the config file is not a list of [[{}]] tables; fix it by hand",
        section.key(),
        section.key()
    )
}

fn string_array<'a>(items: impl IntoIterator<Item = &'a str>) -> Array {
    items.into_iter().collect()
}

/// Appends an entry after the section's last one, as a `[[section]]` table
/// (or an inline table, when the file writes the section as an inline array).
fn append_entry(
    doc: &mut DocumentMut,
    section: Section,
    fields: Vec<(&str, Value)>,
) -> CliResult<()> {
    match doc.get_mut(section.key()) {
        None => {
            doc.insert(section.key(), Item::ArrayOfTables(ArrayOfTables::new()));
            append_entry(doc, section, fields)
        }
        Some(Item::ArrayOfTables(a)) => {
            let mut t = Table::new();
            for (k, v) in fields {
                t.insert(k, Item::Value(v));
            }
            a.push(t);
            Ok(())
        }
        Some(Item::Value(Value::Array(a))) => {
            let mut t = InlineTable::new();
            for (k, v) in fields {
                t.insert(k, v);
            }
            a.push(t);
            Ok(())
        }
        Some(_) => Err(not_a_list(section)),
    }
}

/// `file`: for messages only.
fn refuse_duplicate(doc: &DocumentMut, section: Section, id: &str, file: &Path) -> CliResult<()> {
    if entry_ids(doc, section)?
        .iter()
        .any(|n| n.as_deref() == Some(id))
    {
        return Err(format!(
            "{} already has a {} {id:?}; remove it first to replace it",
            file.display(),
            section.noun()
        ));
    }
    Ok(())
}

/// Adds a `[[users]]` entry; refuses a name already there (`file`: for messages).
pub fn add_user(
    doc: &mut DocumentMut,
    name: &str,
    password_hash: &str,
    scopes: &[String],
    file: &Path,
) -> CliResult<()> {
    refuse_duplicate(doc, Section::Users, name, file)?;
    append_entry(
        doc,
        Section::Users,
        vec![
            ("name", name.into()),
            ("password_hash", password_hash.into()),
            (
                "scopes",
                string_array(scopes.iter().map(String::as_str)).into(),
            ),
        ],
    )
}

/// Adds a `[[clients]]` entry; refuses an id already there (`file`: for messages).
pub fn add_client(
    doc: &mut DocumentMut,
    client: &NewClient,
    secret_hash: Option<&str>,
    file: &Path,
) -> CliResult<()> {
    refuse_duplicate(doc, Section::Clients, &client.id, file)?;
    let mut fields: Vec<(&str, Value)> = vec![("id", client.id.as_str().into())];
    if let Some(h) = secret_hash {
        fields.push(("secret_hash", h.into()));
    }
    fields.push((
        "grants",
        string_array(client.grants.iter().map(|g| g.as_str())).into(),
    ));
    fields.push((
        "scopes",
        string_array(client.scopes.iter().map(String::as_str)).into(),
    ));
    if !client.redirect_uris.is_empty() {
        fields.push((
            "redirect_uris",
            string_array(client.redirect_uris.iter().map(String::as_str)).into(),
        ));
    }
    if client.introspect {
        fields.push(("introspect", true.into()));
    }
    append_entry(doc, Section::Clients, fields)
}

/// Removes every entry of `section` named `id` (the comments just above it go
/// with it); refuses a name that is not there (`file`: for messages).
pub fn remove_entry(
    doc: &mut DocumentMut,
    section: Section,
    id: &str,
    file: &Path,
) -> CliResult<()> {
    let ids = entry_ids(doc, section)?;
    let at: Vec<usize> = (0..ids.len())
        .filter(|&i| ids[i].as_deref() == Some(id))
        .collect();
    if at.is_empty() {
        return Err(format!(
            "{} has no {} {id:?}",
            file.display(),
            section.noun()
        ));
    }
    let now_empty = match doc.get_mut(section.key()) {
        Some(Item::ArrayOfTables(a)) => {
            for &i in at.iter().rev() {
                a.remove(i);
            }
            a.is_empty()
        }
        Some(Item::Value(Value::Array(a))) => {
            for &i in at.iter().rev() {
                a.remove(i);
            }
            false
        }
        _ => return Err(not_a_list(section)),
    };
    if now_empty {
        doc.remove(section.key());
    }
    Ok(())
}

// ------------------------------------------------------------- file access

fn parse_doc(text: &str, path: &Path) -> CliResult<DocumentMut> {
    text.parse::<DocumentMut>()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))
}

fn read_doc(path: &Path) -> CliResult<DocumentMut> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    parse_doc(&text, path)
}

/// The config file, opened and locked (`flock`) against other edits by this
/// command for as long as this lives.
struct Locked {
    /// The file itself, symlinks resolved: what gets replaced.
    target: PathBuf,
    text: String,
    meta: std::fs::Metadata,
    _file: File,
}

fn lock_config(path: &Path) -> CliResult<Locked> {
    let cannot = |e: std::io::Error| format!("{}: cannot read the file: {e}", path.display());
    let target = std::fs::canonicalize(path).map_err(cannot)?;
    // Another edit may replace the file while this one waits for the lock:
    // then the lock is on the old file, so take it again on the new one.
    for _ in 0..50 {
        let mut file = File::open(&target).map_err(cannot)?;
        // SAFETY: flock on a descriptor this function owns; it blocks until granted.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "{}: cannot lock the file: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let meta = file.metadata().map_err(cannot)?;
        let now = std::fs::metadata(&target).map_err(cannot)?;
        if (meta.dev(), meta.ino()) != (now.dev(), now.ino()) {
            continue;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(cannot)?;
        return Ok(Locked {
            target,
            text,
            meta,
            _file: file,
        });
    }
    Err(format!(
        "{}: the file keeps being replaced; try again",
        path.display()
    ))
}

/// Writes `text` over `target` atomically (see [`crate::fsutil::write_atomic`]),
/// keeping the original's permissions and (best effort) owner.
fn write_atomically(target: &Path, text: &str, like: &std::fs::Metadata) -> std::io::Result<()> {
    crate::fsutil::write_atomic(
        target,
        text.as_bytes(),
        like.mode() & 0o7777,
        Some((like.uid(), like.gid())),
    )
}

/// Applies `edit` to the config at `path` under the lock, validates the result
/// as a whole config, and writes it atomically. Nothing is written on any error.
fn edit_config(path: &Path, edit: impl FnOnce(&mut DocumentMut) -> CliResult<()>) -> CliResult<()> {
    let locked = lock_config(path)?;
    let mut doc = parse_doc(&locked.text, path)?;
    edit(&mut doc)?;
    let text = doc.to_string();
    Config::parse(&text, path).map_err(|e| {
        format!("the config would not be valid after this change, so it was left as it was: {e}")
    })?;
    write_atomically(&locked.target, &text, &locked.meta)
        .map_err(|e| format!("{}: cannot write the file: {e}", path.display()))
}

// ------------------------------------------------------------ the commands

fn user_add(path: &Path, name: &str, scopes: &[String]) -> CliResult<()> {
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

fn user_passwd(path: &Path, name: &str) -> CliResult<()> {
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
pub fn set_password_hash(
    doc: &mut DocumentMut,
    name: &str,
    hash: &str,
    file: &Path,
) -> CliResult<()> {
    let is_it = |v: Option<&str>| v == Some(name);
    let found = match doc.get_mut(Section::Users.key()) {
        Some(Item::ArrayOfTables(a)) => a
            .iter_mut()
            .filter(|t| is_it(t.get("name").and_then(Item::as_str)))
            .map(|t| t.insert("password_hash", Item::Value(Value::from(hash))))
            .count(),
        Some(Item::Value(Value::Array(a))) => a
            .iter_mut()
            .filter_map(|v| match v {
                Value::InlineTable(t) if is_it(t.get("name").and_then(Value::as_str)) => Some(t),
                _ => None,
            })
            .map(|t| t.insert("password_hash", Value::from(hash)))
            .count(),
        _ => 0,
    };
    if found == 0 {
        return Err(format!("{} has no user {name:?}", file.display()));
    }
    Ok(())
}

fn client_add(
    path: &Path,
    id: &str,
    grants: &[String],
    scopes: &[String],
    public: bool,
    redirect_uris: Vec<String>,
    introspect: bool,
) -> CliResult<()> {
    let mut client = NewClient::check(id, grants, scopes, public, redirect_uris)?;
    if introspect && public {
        // The loader's rule (config.rs): only a client that proves a secret.
        return Err("--introspect needs a confidential client (not --public)".into());
    }
    client.introspect = introspect;
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

fn remove(path: &Path, section: Section, id: &str) -> CliResult<()> {
    edit_config(path, |doc| remove_entry(doc, section, id, path))?;
    eprintln!("removed {} `{id}` from {}", section.noun(), path.display());
    eprintln!("{RELOAD_HINT}");
    Ok(())
}

fn user_list(path: &Path) -> CliResult<()> {
    list(path, Section::Users, |c| {
        crate::listing::user_rows(c.users.values())
    })
}

fn client_list(path: &Path) -> CliResult<()> {
    list(path, Section::Clients, |c| {
        crate::listing::client_rows(c.clients.values())
    })
}

/// Prints `rows` of the config at `path` (see [`crate::listing`]), one a line.
fn list(path: &Path, section: Section, rows: impl Fn(&Config) -> Vec<String>) -> CliResult<()> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let rows = rows(&config);
    if rows.is_empty() {
        eprintln!("no {} in {}", section.key(), path.display());
    }
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

// --------------------------------------------------------------- route test

fn endpoint_label(path: &str, config: &Config) -> &'static str {
    use crate::oauth::authorize::AUTHORIZE_PATH;
    use crate::oauth::endpoints::{INTROSPECT_PATH, METADATA_PATH, REVOKE_PATH, USERINFO_PATH};
    if path == config.oauth.token_path {
        return "token endpoint";
    }
    match path {
        AUTHORIZE_PATH => "authorization endpoint",
        REVOKE_PATH => "token revocation endpoint",
        INTROSPECT_PATH => "token introspection endpoint",
        USERINFO_PATH => "userinfo endpoint",
        METADATA_PATH => "server metadata endpoint",
        _ => "endpoint",
    }
}

/// What the gateway would do with `method target`: whether a route matches,
/// and a report for a person. Uses the gateway's own path normalisation,
/// endpoint check, route lookup and upstream path, in its order.
pub fn route_test(config: &Config, method: &str, target: &str) -> (bool, String) {
    let mut out = String::new();
    let method = match http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            let _ = writeln!(out, "{method} {target}");
            let _ = writeln!(out, "  no route: {method:?} is not an HTTP method");
            return (false, out);
        }
    };
    let _ = writeln!(out, "{method} {target}");
    // What a client would send: no fragment; an absolute URL stands for its path.
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (raw_path, query) = if !target.starts_with('/') && target.contains("://") {
        match target.parse::<http::Uri>() {
            Ok(u) => (u.path().to_string(), u.query().map(str::to_string)),
            Err(_) => {
                let _ = writeln!(out, "  no route: `{target}` is not a URL or a path");
                return (false, out);
            }
        }
    } else {
        match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        }
    };
    let path = match normalize_path(&raw_path) {
        Ok(p) => p,
        Err(why) => {
            let _ = writeln!(
                out,
                "  no route: the gateway refuses the path (400 Bad Request): {why}"
            );
            return (false, out);
        }
    };
    if path != raw_path {
        let _ = writeln!(out, "  path      {path} (normalised)");
    }
    if let Some(endpoint) = crate::gateway::own_endpoint(config, &path) {
        let _ = writeln!(
            out,
            "  no route: {} is the gateway's own {}; it answers it itself and never proxies it",
            endpoint.name(config),
            endpoint_label(&path, config)
        );
        return (false, out);
    }
    let Some(route) = config.routes.find(&path) else {
        let _ = writeln!(
            out,
            "  no route: no route's prefix matches {path} (404 Not Found)"
        );
        return (false, out);
    };
    let _ = writeln!(
        out,
        "  route     {}{}",
        route.prefix,
        if route.strip_prefix && route.prefix != "/" {
            " (prefix stripped)"
        } else {
            ""
        }
    );
    let needs = if !route.auth {
        "nothing: a public route, no token needed".to_string()
    } else if route.scopes.is_empty() {
        "a valid bearer token (any scope)".to_string()
    } else {
        format!("a bearer token with scopes [{}]", route.scopes)
    };
    let _ = writeln!(out, "  needs     {needs}");
    let methods = if route.methods.is_empty() {
        "any".to_string()
    } else {
        route
            .methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  methods   {methods}");
    if !route.allows_method(&method) {
        let _ = writeln!(
            out,
            "  no route: {} does not allow {method} (405 Method Not Allowed)",
            route.prefix
        );
        return (false, out);
    }
    for (i, up) in route.upstreams.iter().enumerate() {
        let pq = route.upstream_path_and_query(up, &path, query.as_deref());
        let _ = writeln!(
            out,
            "  {}{}://{}{pq}",
            if i == 0 { "upstream  " } else { "          " },
            up.scheme,
            up.authority
        );
    }
    if route.upstreams.len() > 1 {
        let _ = writeln!(out, "            (requests take turns among these)");
    }
    let _ = writeln!(
        out,
        "  timeout   {}",
        humantime::format_duration(route.timeout)
    );
    (true, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ckw0KX5ivcbTIRZv6y2QOwF0P5pjSyCGbaXWfGKmCqE";

    fn base() -> String {
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

    fn f() -> &'static Path {
        Path::new("t.toml")
    }

    fn doc(text: &str) -> DocumentMut {
        text.parse().unwrap()
    }

    fn valid(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn add_user_after_the_last_user_keeping_comments() {
        let mut d = doc(&base());
        add_user(&mut d, "bob", HASH, &["read".into(), "write".into()], f()).unwrap();
        let text = d.to_string();
        let c = valid(&text);
        assert_eq!(c.users["bob"].scopes.to_string(), "read write");
        for line in base().lines() {
            assert!(text.contains(line), "{line:?} lost:\n{text}");
        }
        let bob = text.find("name = \"bob\"").unwrap();
        assert!(bob > text.find("alice's scopes").unwrap(), "{text}");
        assert!(bob < text.find("# the client").unwrap(), "{text}");
        assert!(add_user(&mut d, "bob", HASH, &[], f()).is_err());
    }

    #[test]
    fn remove_user_and_client() {
        let mut d = doc(&base());
        assert!(remove_entry(&mut d, Section::Users, "nobody", f()).is_err());
        remove_entry(&mut d, Section::Users, "alice", f()).unwrap();
        let text = d.to_string();
        assert!(!text.contains("alice"), "{text}");
        assert!(text.contains("# the client"), "{text}");
        assert!(valid(&text).users.is_empty());
        // And back.
        add_user(&mut d, "alice", HASH, &[], f()).unwrap();
        assert_eq!(valid(&d.to_string()).users.len(), 1);
        remove_entry(&mut d, Section::Clients, "cli", f()).unwrap();
        assert!(valid(&d.to_string()).clients.is_empty());
    }

    #[test]
    fn inline_array_sections_are_edited_too() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\nusers = []\n";
        // `users` under [server] is not the top-level list: unknown key.
        assert!(Config::parse(text, Path::new("t")).is_err());
        let text = format!(
            "users = [{{ name = \"a\", password_hash = \"{HASH}\" }}]\n[server]\nlisten = \"127.0.0.1:0\"\n"
        );
        let mut d = doc(&text);
        add_user(&mut d, "b", HASH, &["x".into()], f()).unwrap();
        assert_eq!(valid(&d.to_string()).users.len(), 2);
        remove_entry(&mut d, Section::Users, "a", f()).unwrap();
        let c = valid(&d.to_string());
        assert!(c.users.contains_key("b") && !c.users.contains_key("a"));
    }

    #[test]
    fn client_input_checks() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(NewClient::check("x", &s(&["nope"]), &[], false, vec![]).is_err());
        assert!(NewClient::check("x", &s(&["client_credentials"]), &[], true, vec![]).is_err());
        assert!(NewClient::check("x", &s(&["authorization_code"]), &[], true, vec![]).is_err());
        assert!(NewClient::check("x", &s(&["password"]), &s(&["a\"b"]), true, vec![]).is_err());
        assert!(NewClient::check("", &s(&["password"]), &[], true, vec![]).is_err());
        assert!(
            NewClient::check("x", &s(&["authorization_code"]), &[], true, s(&["/cb"])).is_err()
        );
        let c = NewClient::check(
            "x",
            &s(&["authorization_code", "refresh_token", "refresh_token"]),
            &s(&["read", "read"]),
            true,
            s(&["http://127.0.0.1:1/cb"]),
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

    #[test]
    fn route_test_reports() {
        let c = valid(&base());
        let (ok, r) = route_test(&c, "get", "/api/orders/7?a=1");
        assert!(ok, "{r}");
        assert!(r.contains("route     /api (prefix stripped)"), "{r}");
        assert!(r.contains("scopes [read]"), "{r}");
        assert!(r.contains("http://127.0.0.1:9000/orders/7?a=1"), "{r}");
        assert!(r.contains("http://127.0.0.1:9001/v1/orders/7?a=1"), "{r}");
        let (ok, r) = route_test(&c, "GET", "/api/../x");
        assert!(!ok && r.contains("'..'"), "{r}");
        let (ok, r) = route_test(&c, "GET", "/other");
        assert!(!ok && r.contains("404"), "{r}");
        let (ok, r) = route_test(&c, "POST", "/auth/access_token");
        assert!(!ok && r.contains("token endpoint"), "{r}");
        let (ok, r) = route_test(&c, "GET", "http://h/%61pi/x");
        assert!(ok && r.contains("/api/x (normalised)"), "{r}");
    }
}
