//! Editing the config file in place: `toml_edit` keeps every comment and the
//! layout; the file is locked against concurrent edits by this command, the
//! result is validated as a whole config, and written atomically.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use super::CliResult;
use super::commands::NewClient;
use crate::config::Config;

// --------------------------------------------------------- document edits

/// The two arrays these commands edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Users,
    Clients,
}

impl Section {
    pub(super) fn key(self) -> &'static str {
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

    pub(super) fn noun(self) -> &'static str {
        match self {
            Section::Users => "user",
            Section::Clients => "client",
        }
    }
}

/// The name or id of each entry of `section`, in file order.
pub(super) fn entry_ids(doc: &DocumentMut, section: Section) -> CliResult<Vec<Option<String>>> {
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
pub(super) fn refuse_duplicate(
    doc: &DocumentMut,
    section: Section,
    id: &str,
    file: &Path,
) -> CliResult<()> {
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
pub(super) fn add_user(
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
pub(super) fn add_client(
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
pub(super) fn remove_entry(
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

pub(super) fn read_doc(path: &Path) -> CliResult<DocumentMut> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    parse_doc(&text, path)
}

/// The config file, opened and locked against other edits by this command for
/// as long as this lives.
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
        // `flock(LOCK_EX)` on Unix: blocks until granted, released when `file` closes.
        file.lock()
            .map_err(|e| format!("{}: cannot lock the file: {e}", path.display()))?;
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

/// Applies `edit` to the config at `path` under the lock, validates the result
/// as a whole config, and writes it atomically. Nothing is written on any error.
pub(super) fn edit_config(
    path: &Path,
    edit: impl FnOnce(&mut DocumentMut) -> CliResult<()>,
) -> CliResult<()> {
    let locked = lock_config(path)?;
    let mut doc = parse_doc(&locked.text, path)?;
    edit(&mut doc)?;
    let text = doc.to_string();
    Config::parse(&text, path).map_err(|e| {
        format!("the config would not be valid after this change, so it was left as it was: {e}")
    })?;
    // The original's permissions and (best effort) owner are kept.
    let like = &locked.meta;
    crate::fsutil::write_atomic(
        &locked.target,
        text.as_bytes(),
        like.mode() & 0o7777,
        Some((like.uid(), like.gid())),
    )
    .map_err(|e| format!("{}: cannot write the file: {e}", path.display()))
}

pub(super) fn set_password_hash(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testing::{HASH, base, doc, f, valid};

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
}
