//! What the controller pushes to a node (seed 003's CONFIG and
//! CONFIG_UPDATE): its address, its network's other authorized nodes with
//! their node keys, the relays, and the subnet routes of authorized
//! gateways.

use proto::mesh::control::{Config, ConfigUpdate, Peer, Route};

use super::networks;
use super::nodes::{self, MeshNode};
use super::routes;
use super::servers;
use crate::error::Result;
use crate::store::db::Db;

/// The configuration of `node` (version 0; the channel numbers its pushes).
pub async fn for_node(db: &Db, node: &MeshNode) -> Result<Config> {
    let net = networks::get(db, node.network_id).await?;
    let members = nodes::list(db, Some(node.network_id)).await?;
    let authorized: Vec<&MeshNode> = members.iter().filter(|n| n.authorized).collect();
    let peers = authorized
        .iter()
        .filter(|n| n.id != node.id)
        .map(|n| Peer {
            node_id: n.id,
            name: n.name.clone(),
            virtual_ip: n.virtual_ip.clone(),
            node_key: n.node_key_pub.clone(),
            online: n.online,
        })
        .collect();
    let mut routes_out = Vec::new();
    for agg in routes::aggregated(db).await? {
        for g in agg.gateways {
            if authorized.iter().any(|n| n.id == g.node_id) {
                routes_out.push(Route {
                    id: g.id,
                    cidr: g.cidr.clone(),
                    node_id: g.node_id,
                    priority: g.priority,
                    weight: g.weight,
                    enabled: g.enabled,
                });
            }
        }
    }
    routes_out.sort_by_key(|r| r.id);
    Ok(Config {
        version: 0,
        node_id: node.id,
        virtual_ip: node.virtual_ip.clone(),
        subnet: net.subnet,
        peers,
        relays: servers::relays(db).await?,
        routes: routes_out,
        relay_token: String::new(),
        relay_token_exp: 0,
    })
}

/// What changed from `old` to `new`, as CONFIG_UPDATE (None: nothing).
pub fn diff(old: &Config, new: &Config, version: u64) -> Option<ConfigUpdate> {
    let peers: Vec<Peer> = new
        .peers
        .iter()
        .filter(|p| !old.peers.contains(p))
        .cloned()
        .collect();
    let removed: Vec<u32> = old
        .peers
        .iter()
        .filter(|p| !new.peers.iter().any(|n| n.node_id == p.node_id))
        .map(|p| p.node_id)
        .collect();
    let routes = (old.routes != new.routes).then(|| new.routes.clone());
    let relays = (old.relays != new.relays).then(|| new.relays.clone());
    if peers.is_empty() && removed.is_empty() && routes.is_none() && relays.is_none() {
        return None;
    }
    Some(ConfigUpdate {
        version,
        peers,
        removed,
        routes,
        relays,
        ..ConfigUpdate::default()
    })
}
