//! Seed 003's mesh node, the parts that hold secrets: the machine key that
//! identifies a device ([`keys::MachineKey`], Ed25519), the node key that
//! agrees session keys ([`keys::NodeKey`], X25519), and the end-to-end
//! session between two nodes ([`session::Session`]: the seed's key
//! schedule, ChaCha20-Poly1305 with its nonce layout, and the replay window
//! of [`replay::ReplayWindow`]). Relays and the controller never see these;
//! they route and distribute public keys only.
//!
//! The client around them: [`node`] (the control channel, the relay
//! connection and the TUN loop of `totoro-mesh up`), [`tun`] (the device),
//! [`ws`] (a blocking WebSocket client), [`icmp`] (`totoro-mesh ping`),
//! [`gateway`] (forwarding and SNAT for `--gateway`), [`files`] (the state
//! directory and what is written there, the owner's alone).

pub mod files;
pub mod gateway;
pub mod icmp;
pub mod keys;
pub mod node;
pub mod replay;
pub mod session;
pub mod tls;
pub mod tun;
pub mod ws;
