//! Totoro's control plane ("slowpath"): decides and records, never sits on
//! the per-connection path.
//!
//! - [`db`]: the `sqlx::Any` pool (SQLite by default, PostgreSQL by URL) and
//!   the embedded migrations both share.
//! - [`nodes`], [`invites`], [`tickets`], [`audit`]: the domain, each over
//!   its own tables; every multi-step change is one transaction.
//! - [`policy_publish`]: compiles the local node's state into a
//!   `proto::policy` table and publishes it to the shm directory the
//!   fastpath maps; [`events_drain`] reads the fastpath's event rings back
//!   into the audit log, and tenant traffic into [`traffic_reports`] (seed
//!   002's reports, sent from a durable outbox) and [`quota`] (usage per
//!   period and who is over quota).
//! - [`api`]: the axum REST API built from one route table, which also
//!   yields the OpenAPI document.
//! - [`tenants`]: seed 002's multi-tenant frp tokens; [`etcd`] keeps them
//!   in sync with an etcd prefix on a thread of its own.
//! - [`private_files`]: owner-only files and directories for everything
//!   that holds a secret or policy (checked at start, refused when open to
//!   others).
//! - [`credentials`], [`clock`], [`rate_limit`], [`frpc_config`],
//!   [`admin_key`]: small pieces the above share.
//!
//! The `slowpath` binary adds the CLI, the daemon start-up and the fastpath
//! child supervisor on top.

pub mod admin_key;
pub mod api;
pub mod audit;
pub mod clock;
pub mod credentials;
pub mod db;
pub mod error;
pub mod etcd;
pub mod events_drain;
pub mod frpc_config;
pub mod invites;
pub mod nodes;
pub mod policy_publish;
pub mod private_files;
pub mod quota;
pub mod rate_limit;
pub mod tenants;
pub mod tickets;
pub mod traffic_reports;
