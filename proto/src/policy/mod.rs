//! Policy: what the control plane decides and the data plane enforces.
//!
//! The slowpath compiles its state (the node, its invites, ticket keys) into
//! a [`PolicySpec`] and encodes it ([`table`]); the fastpath maps the bytes
//! and reads them in place through [`PolicyTable`]. [`ports`] and [`types`]
//! are the set math both sides share. [`decide`] makes every decision over
//! those rules (logins, proxies, live sessions) for both processes, and
//! answers a refusal with a [`Refusal`] of a [`RefusalKind`].

pub mod bandwidth;
pub mod decide;
pub mod ports;
pub mod refusal;
pub mod table;
pub mod types;

use std::fmt;

pub use ports::{PortRange, PortSet};
pub use refusal::{Refusal, RefusalKind};
pub use table::{
    EdgeOrigin, EdgePolicy, EdgeRoute, EdgeRouteView, InvitePolicy, InviteView, MeshPeer,
    MeshPeerView, MeshPolicy, NodePolicy, NodeView, PolicySpec, PolicyTable, PortsView, TableError,
    TenantPolicy, TenantView, TicketKey,
};
pub use types::{ProxyType, ProxyTypes};

/// An invite's id: 16 random bytes, written `inv_` + 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InviteId(pub [u8; 16]);

impl InviteId {
    /// Parse the text form; None unless it is exactly `inv_` + 32 hex digits.
    pub fn parse(text: &str) -> Option<InviteId> {
        let hex_part = text.strip_prefix("inv_")?;
        if hex_part.len() != 32 {
            return None;
        }
        let mut id = [0; 16];
        hex::decode_to_slice(hex_part, &mut id).ok()?;
        Some(InviteId(id))
    }

    /// A fresh random id.
    pub fn random() -> InviteId {
        use ring::rand::SecureRandom;
        let mut id = [0; 16];
        // The system RNG failing is not something a caller can act on; an
        // all-zero id would then collide and be refused by the unique key.
        let _ = ring::rand::SystemRandom::new().fill(&mut id);
        InviteId(id)
    }

    /// An id from a number (tests and benches).
    pub fn from_u128(n: u128) -> InviteId {
        InviteId(n.to_be_bytes())
    }
}

impl fmt::Display for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inv_{}", hex::encode(self.0))
    }
}

impl fmt::Debug for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_id_text_form() {
        let id = InviteId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(InviteId::parse(&s), Some(id));
        assert_eq!(InviteId::parse("inv_00"), None);
        assert_eq!(InviteId::parse(&s[1..]), None);
        assert_eq!(InviteId::parse(&format!("inv_{}", "zz".repeat(16))), None);
    }
}
