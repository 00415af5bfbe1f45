//! An frp client that matches upstream frpc on the wire.
//!
//! Blocking, thread-based on purpose: it is the measuring and testing side,
//! so it must be obviously correct rather than clever. The pieces:
//! [`transport`] (TCP, TLS with or without frp's 0x17 byte), [`mux`] (a
//! yamux client session over the sans-IO `proto::yamux`), [`session`]
//! (login, control channel, proxies, work connections) and [`codec`]
//! (useEncryption / useCompression wrappers); [`udp`] serves a `udp`
//! proxy's work connection; [`nathole`] is xtcp's STUN discovery and hole
//! punching.

pub mod codec;
pub mod mux;
pub mod nathole;
pub mod session;
pub mod transport;
pub mod udp;

pub use session::{Client, ClientError, ClientOpts, ProxySpec};
