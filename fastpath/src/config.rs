//! The fastpath's configuration file: loaded here, parsed by
//! [`proto::config`] (the same parser the slowpath reads the node's file
//! with, and the same types `slowpath up` writes it from). Every error
//! names its key.

use std::path::{Path, PathBuf};

pub use proto::config::{
    AuthConfig, Config, ConfigError, FastpathConfig, LogConfig, TlsConfig, TransportConfig,
};

/// A config file that cannot be read or does not hold a valid config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// Read and parse a config file. Returns the config and the unknown keys
/// found (the caller warns about them; they are not errors, as in frps).
pub fn load(path: &Path) -> Result<(Config, Vec<String>), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Config::from_toml(&text).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Cores this process may run on: the worker count when
/// `fastpath.workers` is 0 ([`Config::worker_count`]).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
