//! Arbitrary bytes as a policy table, as a corrupted or hostile file in the
//! shared-memory directory would present them.
//!
//! Properties: no panic in parse or in any lookup of a table that parsed.
#![no_main]

use proto::policy::{InviteId, PolicyTable};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(t) = PolicyTable::parse(data) {
        let node = t.node();
        let _ = (node.node_id(), node.region(), node.public());
        let _ = node.port_pool().iter().take(1000).count();
        let _ = node.port_pool().contains(8080);
        let _ = t.ticket_key("k");
        for inv in t.invites().take(1000) {
            let again = t.invite(&inv.id()).expect("every listed invite is found");
            assert_eq!(again.id(), inv.id());
            let _ = (inv.port_pool().to_set(), inv.domain_suffix());
        }
        let _ = t.invite(&InviteId::from_u128(1));
    }
});
