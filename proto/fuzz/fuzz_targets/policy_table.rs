//! Arbitrary bytes as a policy table, as a corrupted or hostile file in the
//! shared-memory directory would present them.
//!
//! Properties: no panic in parse or in any lookup of a table that parsed.
#![no_main]

use proto::policy::{InviteId, PolicyTable};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Random bytes almost never match the checksum; seal them so the fuzzer
    // reaches the structural checks behind it. The first byte picks whether
    // to also claim the input's own length as the table length.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= 64 {
        let len = bytes.len() as u64;
        bytes[24..32].copy_from_slice(&len.to_le_bytes());
        bytes[..8].copy_from_slice(proto::policy::table::MAGIC);
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    }
    if mode & 2 == 2 {
        proto::policy::table::seal(&mut bytes);
    }
    if let Ok(t) = PolicyTable::parse(&bytes) {
        let node = t.node();
        let _ = (node.node_id(), node.region(), node.public());
        let _ = node.sub_domain_host();
        let _ = node.port_pool().iter().take(1000).count();
        let _ = node.port_pool().contains(8080);
        let _ = t.ticket_key("k");
        for inv in t.invites().take(1000) {
            let again = t.invite(&inv.id()).expect("every listed invite is found");
            assert_eq!(again.id(), inv.id());
            let _ = (inv.port_pool().to_set(), inv.domain_suffix());
            // A hostile table need not list the label in its subdomains
            // section: only that the lookup does not panic holds.
            let _ = t.subdomain_owner(inv.subdomain());
        }
        let _ = t.subdomain_owner("a");
        let _ = t.invite(&InviteId::from_u128(1));
        // The edge sections: every listed route is found again.
        for r in t.edge_routes().take(1000) {
            assert_eq!(t.edge_route(r.hostname), Some(r));
        }
        let _ = (t.edge_certs(), t.acme_answer("token"), t.edge_route("a.b"));
        // The mesh sections: every listed peer is found again; lookups of
        // any id do not panic.
        let _ = (t.mesh_relay_id(), t.mesh_hs256_secret(), t.mesh_revoked("j"));
        for p in t.mesh_peers().take(1000) {
            assert_eq!(t.mesh_peer(p.relay_id), Some(p));
            let _ = (p.url.len(), p.link_token.len(), t.mesh_location(p.relay_id));
            let _ = t.mesh_node_network(p.relay_id);
        }
        let _ = (t.mesh_location(0), t.mesh_location(u32::MAX));
    }
});
