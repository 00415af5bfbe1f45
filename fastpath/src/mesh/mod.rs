//! Seed 003's mesh relay on the data plane: nodes connect to `/ws/data`
//! over WebSocket (or WebSocket over TLS) with a relay token, and their
//! DATA frames — end-to-end encrypted, routed by the clear destination id
//! — go to the destination node's connection. The relay holds no session
//! key and reads nothing but the ids.
//!
//! - [`relay`]: a connection's life: transport, upgrade, token, home
//!   worker, frames; the policy re-check that cuts revoked nodes off.
//! - [`nodes`]: the nodes connected to one worker and their outboxes.
//! - [`links`]: links to the other relays (`/ws/mesh`), and how frames
//!   cross workers.

pub mod frames;
pub mod links;
pub mod nodes;
pub mod relay;
