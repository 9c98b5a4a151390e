//! Replacing a file atomically: the one way whosthat writes the files it owns
//! (the token state file, the CLI's in-place config edits, `keygen`'s new
//! keys).
//!
//! A reader sees the old file or the new one, never a mix, and a crash at any
//! point leaves one of the two on disk.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who should own the new file: `(uid, gid)`. Only root may give a file away,
/// so this is best effort.
pub type Owner = (u32, u32);

/// Writes `bytes` over `target` atomically:
///
/// 1. a temporary file in the same directory (so the rename stays on one file
///    system), with a random name, created with `O_CREAT|O_EXCL|O_NOFOLLOW`: a
///    file or symlink planted at that name is never opened or followed;
/// 2. its mode set to `mode` with `fchmod` (not through the umask), its owner to
///    `owner` if given;
/// 3. the data written and `fsync`ed;
/// 4. renamed over `target` (a symlink at `target` is replaced, not followed);
/// 5. the directory `fsync`ed, so the rename itself is on disk.
///
/// On any error the temporary file is removed and `target` is left as it was.
pub fn write_atomic(
    target: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<()> {
    let dir = parent_dir(target);
    let tmp = write_temp(&dir, target, bytes, mode, owner)?;
    if let Err(e) = std::fs::rename(&tmp, target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

/// Writes `bytes` to `target`, which must not exist yet: as [`write_atomic`],
/// but the temporary file is linked into place (`link(2)`), so a file someone
/// else wrote at `target` meanwhile is kept and this one fails with
/// `AlreadyExists`. `target` appears whole or not at all.
pub fn write_new(target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(target);
    let tmp = write_temp(&dir, target, bytes, mode, None)?;
    let linked = std::fs::hard_link(&tmp, target);
    let _ = std::fs::remove_file(&tmp);
    linked?;
    sync_dir(&dir)
}

/// Steps 1 to 3 of [`write_atomic`]: the temporary file beside `target`, with
/// its mode, owner and data, synced. Removed again on any error.
fn write_temp(
    dir: &Path,
    target: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{:016x}{:016x}.tmp",
        random_u64(),
        random_u64()
    ));
    let written = (|| {
        // Created owner-only: nothing can open it before its final mode is set.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        }
        f.set_permissions(Permissions::from_mode(mode & 0o7777))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A random temporary-file name part. Not a secret: `O_EXCL` is what makes
/// the name safe; randomness only keeps racing writers apart.
fn random_u64() -> u64 {
    getrandom::u64().expect("the OS random source failed")
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `fsync` of a directory: makes a rename or unlink in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    match d.sync_all() {
        // Some file systems cannot sync a directory; the rename happened regardless.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        r => r,
    }
}

/// Removes `path` (a symlink itself, never its target) and syncs the directory.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    sync_dir(&parent_dir(path))
}

/// Opens `path` for reading without following a symlink at its last component
/// and without blocking on a FIFO.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_the_file_with_the_mode_asked_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new", 0o600, None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Not through the umask: a group-readable mode is kept as asked.
        write_atomic(&path, b"newer", 0o640, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("state");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, b"data", 0o600, None).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_failed_write_leaves_the_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let path = dir.path().join("d");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"x").unwrap();
        assert!(write_atomic(&path, b"data", 0o600, None).is_err());
        assert!(path.join("x").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn open_nofollow_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_nofollow(&real).is_ok());
        let e = open_nofollow(&link).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn write_new_never_replaces_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_new(&path, b"first", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let e = write_new(&path, b"second", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // A symlink at the target is not followed either.
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        assert!(write_new(&link, b"x", 0o600).is_err());
        assert!(!dir.path().join("elsewhere").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
