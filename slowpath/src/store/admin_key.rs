//! The admin API key: `ADMIN_API_KEY` if set, else `<data-dir>/admin.key`,
//! generated (mode 0600) at first start.

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
    // A key file other users can read is refused (see private_files).
    Ok(crate::store::private_files::read(&path(data_dir))?
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// The key, generating and saving one if there is none. Returns it and
/// whether it was just generated.
pub fn ensure(data_dir: &Path) -> Result<(String, bool)> {
    if let Some(key) = read(data_dir)? {
        return Ok((key, false));
    }
    let key = credentials::new_admin_key();
    let p = path(data_dir);
    if !crate::store::private_files::create_new(&p, format!("{key}\n").as_bytes())? {
        return Err(Error::Internal(format!(
            "{} appeared while starting; start again",
            p.display()
        )));
    }
    Ok((key, true))
}
