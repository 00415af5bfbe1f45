//! Totoro's wire formats and protocol logic, sans-IO.
//!
//! Nothing in this crate touches a socket, a clock or a runtime: every piece
//! takes bytes (and, where time matters, an explicit `now`) and hands bytes
//! and events back. The fastpath feeds these state machines from io_uring;
//! tests and fuzzers feed them plain slices.
//!
//! - [`msg`]: frp control messages (the JSON bodies) and their type bytes.
//! - [`frame`]: frp's v1 framing (type byte, 8-byte length, JSON), 10 KiB cap.
//! - [`auth`]: frp token auth (privilege key) and constant-time checks.
//! - [`cfb`]: the AES-128-CFB stream cipher frp wraps control and work
//!   connections in, with its PBKDF2 key derivation.
//! - [`snappy`]: the snappy framing format frp uses for `useCompression`.
//! - [`yamux`]: a yamux session state machine compatible with hashicorp/yamux.
//! - [`wire_v2`]: frp's optional wire protocol v2 (magic, hello, AEAD control).
//! - [`tls13`]: TLS 1.3 record protection once rustls has done the
//!   handshake: records opened in place in the reader's own buffer.
//! - [`vhost`]: what the HTTP, HTTPS and tcpmux vhost listeners route by:
//!   HTTP request heads and body framing, a ClientHello's server name, and
//!   the host × location × user route table with frps's precedence.
//! - [`jwt`]: compact JWTs signed with Ed25519 (EdDSA) or HMAC-SHA256.
//! - [`ticket`]: connection tickets (EdDSA JWTs) that resolved invites hand to
//!   frpc: signing, key-id peek, signature check, expiry and node binding.
//! - [`config`]: the node's frps-compatible TOML file, parsed and written
//!   the same way by the fastpath (which runs on it) and the slowpath
//!   (which reads its node keys and `[etcd]`, and writes it for `up`).
//! - [`policy`]: the policy table (node, invites, ticket keys) the slowpath
//!   compiles and the fastpath reads in place, the port/type set math, and
//!   the decisions both processes make over those rules
//!   ([`policy::decide`]: logins, proxies, live sessions), whose refusals
//!   are typed ([`policy::Refusal`], with a countable [`policy::RefusalKind`]).
//! - [`events`]: typed data-plane events and their binary record form.
//! - [`shm_auth`]: the per-instance key and the HMAC tags that authenticate
//!   policy tables and event records in the shared-memory directory.
//! - [`mesh`]: seed 003's mesh protocol: the 5-byte frame, message types,
//!   error codes, the DATA layout and the control messages' bodies.
//! - [`ws`]: WebSocket's opening handshake (server side) and frames, for
//!   the mesh relay's `/ws/data` and `/ws/mesh`.
//! - [`ring`]: the single-producer, single-consumer shared-memory ring that
//!   carries event records from a fastpath worker to the slowpath.

pub mod auth;
pub mod certstore;
pub mod cfb;
pub mod config;
pub mod event_batch;
pub mod events;
pub mod exposition;
pub mod frame;
pub mod jwt;
pub mod mesh;
pub mod msg;
pub mod nathole;
pub mod policy;
pub mod ring;
pub mod shm_auth;
pub mod snappy;
pub mod stun;
pub mod ticket;
pub mod tls13;
pub mod vhost;
pub mod wire_v2;
pub mod ws;
pub mod yamux;
