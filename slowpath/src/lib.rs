//! Totoro's control plane ("slowpath"): decides and records, never sits on
//! the per-connection path.
//!
//! - [`domain`]: relay nodes, invites and tickets, seed 002's tenants and
//!   their quota; every multi-step change is one transaction.
//! - [`store`]: the `sqlx::Any` pool (SQLite by default, PostgreSQL by URL)
//!   and the embedded migrations both share; owner-only files for
//!   everything that holds a secret or policy (checked at start, refused
//!   when open to others); the admin key.
//! - [`policy`]: compiles the local node's state into a `proto::policy`
//!   table (`compile`, no I/O), publishes it to the shared-memory directory
//!   the fastpath loads it from (`publish`), and waits until the fastpath's
//!   workers enforce it (`applied`).
//! - [`telemetry`]: reads the fastpath's event rings back into the audit
//!   log, and tenant traffic into seed 002's reports (sent from a durable
//!   outbox) and the quota tracker.
//! - [`api`]: the axum REST API built from one route table, which also
//!   yields the OpenAPI document.
//! - [`etcd`]: seed 002's tenant tokens kept in sync with an etcd prefix on
//!   a thread of its own.
//! - [`agent`]: the node agent of a relay host governed from elsewhere
//!   (pulls its node's table by long poll; no database credentials).
//! - [`credentials`], [`clock`], [`rate_limit`], [`frpc_config`],
//!   [`error`]: small pieces the above share.
//!
//! The library reaches the fastpath only through that directory (the `shm`
//! crate: file names, locks, the table file, the event rings); it does not
//! link the fastpath. The `slowpath` binary adds the CLI, the daemon
//! start-up and the fastpath child supervisor (its `daemon` module) on top,
//! and with the default feature `embedded-fastpath` the data plane itself
//! (`slowpath fastpath …`), so one installed binary is a whole node.

pub mod acme;
pub mod agent;
pub mod api;
pub mod clock;
pub mod credentials;
pub mod dns;
pub mod domain;
pub mod edge_agent;
pub mod error;
pub mod etcd;
pub mod frpc_config;
pub mod policy;
pub mod rate_limit;
pub mod store;
pub mod telemetry;
