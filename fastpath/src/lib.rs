//! Totoro's data plane: an io_uring, thread-per-core frp server.
//!
//! A [`Server`](server::Server) runs N workers ([`worker`]), one per core,
//! each a monoio runtime with its own SO_REUSEPORT listener on the bind
//! port. A connection's life is in [`accept`] (transport → framing →
//! first message); sessions live in [`control`], public ports in [`proxy`],
//! bytes move in [`relay`]. The yamux driver is [`mux`], TLS is [`tls`],
//! and [`conn`] unifies the three kinds of byte stream. Cross-worker
//! traffic is limited to [`handoff`] messages; the little that is shared
//! is in [`shared`], counters in [`stats`]. Under a slowpath, [`policy`]
//! maps the published policy table and decides logins and proxies from it,
//! and [`events`] reports back through shared-memory rings ([`shm`]).

pub mod accept;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod events;
pub mod handoff;
pub mod listener;
pub mod msgio;
pub mod mux;
pub mod policy;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod shared;
pub mod shm;
pub mod stats;
pub mod tenants;
pub mod tls;
pub mod worker;
