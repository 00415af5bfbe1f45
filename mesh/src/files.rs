//! The node's own files: its state directory is the owner's alone (0700,
//! whatever the umask), and what it writes there (the pid, the status) is
//! written 0600 without following a symlink, so a link planted in its
//! place cannot turn a root process's write into someone else's file.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Make `dir` (and its parents) if missing; a `dir` that is a symlink, or
/// open to others, is refused.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{}: not a directory of its own (a symlink?)",
            dir.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{}: open to others (mode {mode:o}); chmod 700 it",
            dir.display()
        )));
    }
    Ok(())
}

/// Replace `path` with `bytes`: written 0600 to `path.tmp` (never through
/// a symlink), then renamed over it.
pub fn private_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_the_owners_and_links_are_refused() {
        let dir = std::env::temp_dir().join(format!("totoro-mesh-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir.join("state")).unwrap();
        let state = dir.join("state");
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        private_write(&state.join("pid"), b"1").unwrap();
        let mode = std::fs::metadata(state.join("pid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A link where the temporary file goes is not followed.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, state.join("status.tmp")).unwrap();
        private_write(&state.join("status.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&state).is_err());
        std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
        assert!(private_dir(&dir.join("link")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
