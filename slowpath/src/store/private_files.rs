//! Files and directories that hold secrets or policy: created for this
//! user only (0600 files, 0700 directories, whatever the umask), never
//! opened through a symlink, and checked when they already exist.
//!
//! What is found too open at start is **refused**, with a message naming
//! the file and the fix, not silently repaired: a key or database that
//! other users could read may already have been copied, and the operator
//! has to decide whether to rotate it. Directories are the exception:
//! a too-open data directory of ours is closed (chmod 0700) with a
//! warning, since the files in it are checked one by one anyway.
//!
//! Files Totoro regenerates at every start (the fastpath config `up`
//! writes, the demo frpc.toml) are simply replaced by private ones.

use std::io::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

use crate::error::{Error, Result};

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// What a checked path must be (the link itself: a symlink is neither).
#[derive(Clone, Copy)]
enum Kind {
    Dir,
    File,
}

/// Refuse what `meta` describes (`named` in messages) unless it is of
/// `kind` and this user's.
fn check_kind_and_owner(meta: &std::fs::Metadata, named: &str, kind: Kind) -> Result<()> {
    let (is_kind, wanted) = match kind {
        Kind::Dir => (
            meta.file_type().is_dir(),
            "a directory; refusing it (give the real path)",
        ),
        Kind::File => (
            meta.file_type().is_file(),
            "a regular file; refusing it (remove it)",
        ),
    };
    if !is_kind {
        return Err(Error::Internal(format!(
            "{named} is a symlink or not {wanted}"
        )));
    }
    if meta.uid() != euid() {
        return Err(Error::Internal(format!(
            "{named} belongs to uid {}, not to this user (uid {}); refusing it",
            meta.uid(),
            euid()
        )));
    }
    Ok(())
}

/// Create `dir` (0700, parents too) or check the one there: a directory
/// (not a symlink) of this user. A too-open one is closed with a warning.
pub fn ensure_dir(dir: &Path, what: &str) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    Error::Internal(format!("{what} {}: cannot create: {e}", dir.display()))
                });
        }
        Err(e) => return Err(Error::Internal(format!("{what} {}: {e}", dir.display()))),
        Ok(meta) => meta,
    };
    check_kind_and_owner(&meta, &format!("{what} {}", dir.display()), Kind::Dir)?;
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o7777),
            "{what} was open to other users; closing it (chmod 700)"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            Error::Internal(format!("{what} {}: cannot chmod 700: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// Refuse an existing `path` that is a symlink, not this user's, or
/// readable or writable by others; a missing one passes.
pub fn check_file(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Internal(format!("{}: {e}", path.display()))),
    };
    check_kind_and_owner(&meta, &path.display().to_string(), Kind::File)?;
    if meta.mode() & 0o077 != 0 {
        return Err(Error::Internal(format!(
            "{} is readable or writable by other users (mode {:o}); refusing to start. \
             Fix: chmod 600 {} — and, since others could read it, rotate what it holds \
             (keys, tokens) if this host has untrusted users",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

/// Replace `path` with `bytes` in a new 0600 file (written aside, then
/// renamed over it), so an old, too-open file is not reused.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let done = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Internal(format!(
            "cannot write {}: {e}",
            path.display()
        )));
    }
    Ok(())
}

/// Create `path` (0600) only if it does not exist; false if it did.
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot create {}: {e}",
                path.display()
            )))
        }
    };
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// Read a private file: it must pass [`check_file`]; None when missing.
pub fn read(path: &Path) -> Result<Option<String>> {
    check_file(path)?;
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Internal(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("totoro-private-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        let d = scratch("umask");
        ensure_dir(&d, "test dir").unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let f = d.join("secret");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_file(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("secret"), "{e}");
        write(&f, b"new").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read(&f).unwrap().as_deref(), Some("new"));
        assert!(!create_new(&f, b"x").unwrap());
        std::os::unix::fs::symlink(&f, d.join("link")).unwrap();
        assert!(check_file(&d.join("link")).is_err());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&d, "test dir").unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
