//! etcd as a tenant source (seed 002): tenant records live at
//! `{prefix}{token}`.
//!
//! - [`config`]: the `[etcd]` table of the node's frps-style TOML.

pub mod config;

pub use config::{EtcdConfig, EtcdTls};
