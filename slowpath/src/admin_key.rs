//! The admin API key: `ADMIN_API_KEY` if set, else `<data-dir>/admin.key`,
//! generated (mode 0600) at first start.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::credentials;
use crate::error::{Error, Result};

/// File name of the admin key in the data directory.
pub const FILE: &str = "admin.key";
/// Environment variable that overrides the file.
pub const ENV: &str = "ADMIN_API_KEY";

/// Path of the key file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads the key (env first, then the file), if there is one.
pub fn read(data_dir: &Path) -> Result<Option<String>> {
    if let Ok(key) = std::env::var(ENV) {
        if !key.trim().is_empty() {
            return Ok(Some(key.trim().to_owned()));
        }
    }
    match std::fs::read_to_string(path(data_dir)) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Internal(format!(
            "cannot read {}: {e}",
            path(data_dir).display()
        ))),
    }
}

/// The key, generating and saving one if there is none. Returns it and
/// whether it was just generated.
pub fn ensure(data_dir: &Path) -> Result<(String, bool)> {
    if let Some(key) = read(data_dir)? {
        return Ok((key, false));
    }
    let key = credentials::new_admin_key();
    let p = path(data_dir);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", p.display())))?;
    file.write_all(format!("{key}\n").as_bytes())
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", p.display())))?;
    Ok((key, true))
}
