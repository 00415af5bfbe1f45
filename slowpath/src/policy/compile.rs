//! Compile: the local node's state in the policy table's form, without I/O.
//!
//! [`PolicyState`] is what the next table holds: the node's rules, the
//! ticket keys, the invites a live ticket may still name, the tenants. The
//! publisher keeps it between publishes, so that a change to one invite
//! replaces one entry ([`PolicyState::apply_invite`]), a change of tenants
//! replaces the tenants, and the periodic pass only drops invites no
//! ticket can name any more ([`PolicyState::prune_invites`]). Reading the
//! rows and writing the table are [`super::publish`]'s.

use std::collections::{BTreeMap, HashSet};

use proto::policy::{
    table, EdgePolicy, InviteId, InvitePolicy, MeshPolicy, NodePolicy, PolicySpec, TenantPolicy,
    TicketKey,
};

use crate::domain::invites::Invite;
use crate::domain::nodes::Node;
use crate::domain::tenants::Tenant;
use crate::domain::tickets::{self, PublicKey};

/// What the next table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The node's own rules.
    pub node: NodePolicy,
    /// Keys that verify tickets.
    pub keys: Vec<TicketKey>,
    /// The node's invites a live ticket may still name, by id.
    pub invites: BTreeMap<InviteId, InvitePolicy>,
    /// Every tenant, in token order.
    pub tenants: Vec<TenantPolicy>,
    /// The mesh relay's part: its id, the authorized nodes, revocations.
    pub mesh: MeshPolicy,
    /// The edge's part: routes, the certificate store's digest, ACME
    /// answers.
    pub edge: EdgePolicy,
    /// The certificate store file the edge's digest names (empty: none).
    pub certs: Vec<u8>,
}

impl PolicyState {
    /// The state of a full compile: the node's row, the active ticket keys,
    /// the invites [`crate::domain::invites::for_policy`] read, the
    /// compiled tenants.
    pub fn new(
        node: &Node,
        keys: Vec<PublicKey>,
        invites: Vec<InvitePolicy>,
        tenants: Vec<TenantPolicy>,
        mesh: MeshPolicy,
    ) -> PolicyState {
        PolicyState {
            node: node_policy(node),
            keys: keys
                .into_iter()
                .map(|k| TicketKey {
                    kid: k.kid,
                    public_key: k.public_key,
                })
                .collect(),
            invites: invites.into_iter().map(|i| (i.id, i)).collect(),
            tenants,
            mesh,
            edge: EdgePolicy::default(),
            certs: Vec::new(),
        }
    }

    /// Takes in the row of invite `id` as read now (None: it is gone): kept
    /// while it is this node's and a live ticket may name it, else dropped.
    pub fn apply_invite(&mut self, id: InviteId, row: Option<Invite>, node_id: &str, now_ms: i64) {
        let horizon = tickets::invite_horizon_ms(now_ms);
        match row {
            Some(inv) if inv.node_id == node_id && inv.expires_ms > horizon => {
                self.invites.insert(inv.id, invite_policy(inv));
            }
            _ => {
                self.invites.remove(&id);
            }
        }
    }

    /// Drops the invites no live ticket can name any more; returns how many.
    pub fn prune_invites(&mut self, now_ms: i64) -> usize {
        let horizon = u64::try_from(tickets::invite_horizon_ms(now_ms)).unwrap_or(0);
        let before = self.invites.len();
        self.invites.retain(|_, inv| inv.expires_ms > horizon);
        before - self.invites.len()
    }

    /// The table's bytes with generation and time left at 0 (the writer
    /// stamps them), so that two compiles of the same state compare equal.
    pub fn encode(&self) -> Vec<u8> {
        table::encode_parts(
            0,
            0,
            &self.node,
            &self.keys,
            self.invites.len(),
            self.invites.values(),
            table::Sections {
                tenants: &self.tenants,
                mesh: &self.mesh,
                edge: &self.edge,
            },
        )
    }

    /// As a spec (generation and time left at 0).
    pub fn into_spec(self) -> PolicySpec {
        PolicySpec {
            edge: self.edge,
            generation: 0,
            created_ms: 0,
            node: self.node,
            keys: self.keys,
            invites: self.invites.into_values().collect(),
            tenants: self.tenants,
            mesh: self.mesh,
        }
    }
}

/// The node row's rules.
pub fn node_policy(node: &Node) -> NodePolicy {
    NodePolicy {
        node_id: node.id.clone(),
        region: node.region.clone(),
        public: node.public,
        port_pool: node.port_pool.clone(),
        proxy_types: node.proxy_types,
        max_proxies_per_session: node.max_proxies_per_session,
        sub_domain_host: node.sub_domain_host.clone(),
    }
}

/// One invite's table record.
pub fn invite_policy(i: Invite) -> InvitePolicy {
    InvitePolicy {
        id: i.id,
        revoked: i.revoked,
        expires_ms: u64::try_from(i.expires_ms).unwrap_or(0),
        max_conns: i.max_conns,
        max_proxies: i.max_proxies,
        proxy_types: i.proxy_types,
        port_pool: i.port_pool,
        domain_suffix: i.domain_suffix,
        subdomain: i.subdomain,
    }
}

/// Every tenant from every source, in token order: the database's, then
/// etcd's (a token in both is taken from etcd).
pub fn merge_tenants(
    database: Vec<Tenant>,
    etcd: Option<&BTreeMap<String, Tenant>>,
) -> Vec<Tenant> {
    let mut by_token: BTreeMap<String, Tenant> = database
        .into_iter()
        .map(|t| (t.token().to_owned(), t))
        .collect();
    for (token, t) in etcd.into_iter().flatten() {
        if by_token.insert(token.clone(), t.clone()).is_some() {
            tracing::debug!(token = %token, "tenant in both etcd and the database; etcd's record wins");
        }
    }
    by_token.into_values().collect()
}

/// The tenants' table records; `over_quota` are the tokens over their
/// traffic quota now.
pub fn tenant_policies(tenants: &[Tenant], over_quota: &HashSet<String>) -> Vec<TenantPolicy> {
    tenants
        .iter()
        .map(|t| t.policy(over_quota.contains(t.token())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::policy::{PortSet, ProxyTypes};

    const HOUR_MS: i64 = 3_600_000;

    fn node() -> Node {
        Node {
            id: "node_1".into(),
            name: "n".into(),
            server_addr: "127.0.0.1".into(),
            server_port: 7000,
            region: "r".into(),
            tags: Vec::new(),
            public: false,
            frp_token: "t".into(),
            port_pool: PortSet::parse("10000-10010").unwrap(),
            proxy_types: ProxyTypes::parse("tcp").unwrap(),
            max_proxies_per_session: 0,
            sub_domain_host: String::new(),
            vhost_http_port: 0,
            vhost_https_port: 0,
            last_heartbeat_ms: 0,
            heartbeat: serde_json::Value::Null,
            created_ms: 0,
        }
    }

    fn invite(n: u128, node_id: &str, expires_ms: i64) -> Invite {
        Invite {
            id: InviteId::from_u128(n),
            node_id: node_id.into(),
            created_ms: 0,
            expires_ms,
            max_uses: 1,
            used: 0,
            revoked: false,
            revoked_ms: 0,
            proxy_types: ProxyTypes::parse("tcp").unwrap(),
            port_pool: PortSet::parse("10000").unwrap(),
            max_conns: 1,
            max_proxies: 1,
            domain_suffix: String::new(),
            subdomain: String::new(),
            ticket_ttl_s: 60,
            note: String::new(),
        }
    }

    fn tenant(token: &str, region: &str) -> Tenant {
        Tenant::parse_json(
            format!(r#"{{"token":"{token}","region":"{region}","enabled":true}}"#).as_bytes(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn one_invite_is_taken_in_or_dropped() {
        let now = 100 * HOUR_MS;
        let mut s = PolicyState::new(
            &node(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Default::default(),
        );
        let live = invite(1, "node_1", now + HOUR_MS);
        s.apply_invite(live.id, Some(live.clone()), "node_1", now);
        assert_eq!(s.invites.len(), 1);
        // Revoked: still carried, so the data plane can say why it refuses.
        let mut revoked = live.clone();
        revoked.revoked = true;
        s.apply_invite(live.id, Some(revoked), "node_1", now);
        assert!(s.invites[&live.id].revoked);
        // Another node's, long expired, or deleted: dropped.
        s.apply_invite(
            live.id,
            Some(invite(1, "node_2", now + HOUR_MS)),
            "node_1",
            now,
        );
        assert!(s.invites.is_empty());
        s.apply_invite(live.id, Some(live.clone()), "node_1", now);
        s.apply_invite(
            live.id,
            Some(invite(1, "node_1", now - 2 * HOUR_MS)),
            "node_1",
            now,
        );
        assert!(s.invites.is_empty());
        s.apply_invite(live.id, Some(live.clone()), "node_1", now);
        s.apply_invite(live.id, None, "node_1", now);
        assert!(s.invites.is_empty());
    }

    #[test]
    fn prune_drops_what_no_live_ticket_can_name() {
        let now = 100 * HOUR_MS;
        let invites = vec![
            invite_policy(invite(1, "node_1", now + HOUR_MS)),
            // Expired, but a ticket issued before may still be live.
            invite_policy(invite(2, "node_1", now - HOUR_MS / 2)),
            invite_policy(invite(3, "node_1", now - 2 * HOUR_MS)),
        ];
        let mut s = PolicyState::new(&node(), Vec::new(), invites, Vec::new(), Default::default());
        assert_eq!(s.prune_invites(now), 1);
        assert_eq!(s.prune_invites(now), 0);
        assert_eq!(
            s.invites.keys().copied().collect::<Vec<_>>(),
            [InviteId::from_u128(1), InviteId::from_u128(2)]
        );
    }

    #[test]
    fn same_state_same_bytes() {
        let s = PolicyState::new(
            &node(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Default::default(),
        );
        assert_eq!(s.encode(), s.clone().encode());
        let spec = s.clone().into_spec();
        assert_eq!(spec.node.node_id, "node_1");
        assert_eq!(spec.encode(), s.encode());
    }

    #[test]
    fn etcd_wins_over_the_database_and_quota_marks_tenants() {
        let mut etcd = BTreeMap::new();
        etcd.insert("b".to_owned(), tenant("b", "from-etcd"));
        etcd.insert("c".to_owned(), tenant("c", "r"));
        let all = merge_tenants(vec![tenant("b", "from-db"), tenant("a", "r")], Some(&etcd));
        let tokens: Vec<&str> = all.iter().map(Tenant::token).collect();
        assert_eq!(tokens, ["a", "b", "c"]);
        assert_eq!(all[1].record.region, "from-etcd");
        assert_eq!(merge_tenants(vec![tenant("a", "r")], None).len(), 1);
        let over: HashSet<String> = ["c".to_owned()].into();
        let p = tenant_policies(&all, &over);
        // No quota configured: never over it.
        assert!(p.iter().all(|t| !t.over_quota));
    }
}
