//! Totoro's data plane: an io_uring, thread-per-core frp server.
//!
//! The tree, by part:
//!
//! - [`runtime`]: the [`Server`](runtime::server::Server) runs N workers
//!   ([`runtime::worker`]), one per core, each a monoio runtime with its own
//!   SO_REUSEPORT listener on the bind port; the little they share is in
//!   [`runtime::shared`]; what every task on a worker may reach (its id,
//!   the shared state, its events and counters) is its
//!   [`WorkerCtx`](runtime::ctx::WorkerCtx), a leaf any part may take.
//! - [`transport`]: the byte-moving core: plain TCP, [`tls`](transport::tls)
//!   and yamux ([`mux`](transport::mux)) unified as one
//!   [`Conn`](transport::conn::Conn); listeners; cross-worker traffic is
//!   limited to [`handoff`](transport::handoff) messages.
//! - [`frp`]: the frp server: a connection's life in
//!   [`accept`](frp::accept) (transport → framing → first message),
//!   sessions in [`control`](frp::control), public ports in
//!   [`proxy`](frp::proxy), work connections into their session's pool
//!   (across workers when needed) in [`work_conns`](frp::work_conns).
//!
//! The worker loop imports the frp server, never the other way round;
//! every part takes the worker's context from [`runtime::ctx`]; no import
//! circle spans more than two files (`.ci/module_cycles.py` checks it).
//! - [`mesh`]: seed 003's mesh relay (`/ws/data`): nodes' encrypted DATA
//!   frames to the destination node's connection, every node of a network
//!   on one worker.
//! - [`relay`]: bytes between a user connection and a work connection; it
//!   is given the counters it bumps, nothing of the worker.
//! - [`policy`]: under a slowpath, the published policy table, who may log
//!   in and which proxies a session may register; tenants' bandwidth
//!   buckets and token lookup ([`policy::tenants`]).
//! - [`report`]: counters ([`report::stats`]) and events back to the
//!   slowpath through shared-memory rings ([`report::events`]; the
//!   directory, its files and the rings are the `shm` crate's).
//! - [`config`] and [`cli`]: the frps-compatible config file and the
//!   binary's flags.

pub mod cli;
pub mod config;
pub mod edge;
pub mod frp;
pub mod mesh;
pub mod policy;
pub mod relay;
pub mod report;
pub mod runtime;
pub mod stun;
pub mod transport;
