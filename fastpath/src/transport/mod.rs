//! The byte-moving core: the three kinds of byte stream ([`conn`]: plain
//! TCP, [`tls`], and [`mux`] streams over yamux), the listeners
//! ([`listener`]), the file-descriptor handoff between workers
//! ([`handoff`]), and [`bridge`]s joining two relays.

pub mod bridge;
pub mod conn;
pub mod handoff;
pub mod listener;
pub mod mux;
pub mod preauth;
pub mod tls;
