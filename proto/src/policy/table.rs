//! The policy table's binary layout: a builder ([`PolicySpec::encode`]) and
//! a zero-copy reader ([`PolicyTable`]).
//!
//! The slowpath writes a table into a file in shared memory; the fastpath
//! maps that file and reads it in place. So the layout is
//! position-independent (offsets, never pointers), little-endian, and
//! validated **once**, when a generation is mapped: after
//! [`PolicyTable::parse`] succeeds every offset in the table is known to be
//! in bounds, every string is UTF-8 and every sorted array is sorted, so the
//! lookups on the login path are plain binary searches with no checks left
//! to fail.
//!
//! ```text
//! header (64 bytes)
//!   0  magic "TOTOPOL\0"        8  version u32 (1)     12 header_len u32 (64)
//!  16  generation u64          24  total_len u64      32 created_ms u64
//!  40  section_count u32       44  reserved u32       48 checksum u64 (crc32c)
//!  56  reserved [8]
//! section directory: section_count x { kind u32, reserved u32, offset u64, len u64 }
//! sections (8-byte aligned):
//!   NODE    (1) one 48-byte record: node_id str, region str, flags u32 (bit 0
//!               public), proxy_types u32, max_proxies_per_session u32, pad u32,
//!               port_pool ports-ref, sub_domain_host str
//!   KEYS    (2) 48-byte records: kid str, pad [8], Ed25519 public key [32]
//!   INVITES (3) 64-byte records sorted by id: id [16], flags u32 (bit 0
//!               revoked), proxy_types u32, max_conns u32, max_proxies u32,
//!               expires_ms u64, port_pool ports-ref, domain_suffix str,
//!               subdomain str
//!   PORTS   (4) (lo u16, hi u16) pairs; a ports-ref is { first u32, count u32 }
//!   STRINGS (5) UTF-8 bytes; a str is { offset u32, len u32 }
//!   TENANTS (6) 64-byte records sorted by token bytes (optional section):
//!               token str, region str, flags u32 (bit 0 enabled, bit 1 over
//!               quota), max_ports_per_client u32, bandwidth_bps u64,
//!               throttle_bps u64, allow_ports ports-ref,
//!               report_interval_bytes u64, pad [8]
//!   SUBDOMAINS (7) 24-byte records sorted by label, each label once
//!               (optional section): label str, invite id [16]
//!   MESH    (8) one 8-byte record (optional section): relay_id u32 (the
//!               mesh server id of this node's relay; 0 = none), pad u32
//!   MESH_NODES (9) 8-byte records sorted by node id (optional section):
//!               node_id u32, network_id u32 (authorized mesh nodes)
//!   MESH_REVOKED (10) 8-byte records sorted by jti, each once (optional
//!               section): jti str (blacklisted mesh token ids)
//!   MESH_PEERS (11) 24-byte records sorted by relay id, each once
//!               (optional section): relay_id u32, pad u32, url str (the
//!               relay's `/ws/data` URL; its `/ws/mesh` is on the same
//!               port), link_token str (empty: this relay does not dial it)
//!   MESH_LOCS (12) 8-byte records sorted by (node id, relay id), each
//!               once (optional section): node_id u32, relay_id u32 (mesh
//!               nodes connected to other relays)
//!   MESH_HS256 (13) one 8-byte record (optional section): secret str
//!               (seed 003's HS256 shared secret; empty = Ed25519 only)
//!   EDGE_ROUTES (14) 40-byte records sorted by hostname, each once
//!               (optional section): hostname str, origin str (an
//!               address "ip:port", or a tunnel origin's proxy name),
//!               invite id [16] (a tunnel origin's), flags u32 (bit 0
//!               tunnel origin, bit 1 redirect plain HTTP to HTTPS), pad u32
//!   EDGE_CERTS (15) one 40-byte record (optional section): SHA-256 [32]
//!               of the certificate store file that goes with this table,
//!               count u32 (its certificates), pad u32
//!   ACME_TOKENS (16) 16-byte records sorted by token, each once (optional
//!               section): token str, key authorization str (ACME HTTP-01
//!               answers for `/.well-known/acme-challenge/<token>`)
//! ```
//!
//! `sub_domain_host` and `subdomain` sit where tables before them had
//! zeros, which read as the empty string.
//!
//! The checksum is CRC-32C of the whole file with the checksum field read as
//! zero. Section kinds this reader does not know are skipped, so later
//! generations of the format can add sections (tenants, routes, mesh) without
//! breaking older fastpaths.

use std::fmt;

use super::{InviteId, PortSet, ProxyTypes};

/// First eight bytes of every table.
pub const MAGIC: &[u8; 8] = b"TOTOPOL\0";
/// Layout version this code writes and reads.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const DIR_ENTRY: usize = 24;
const NODE_REC: usize = 48;
const KEY_REC: usize = 48;
const INVITE_REC: usize = 64;
const TENANT_REC: usize = 64;
const CHECKSUM_AT: usize = 48;

const SEC_NODE: u32 = 1;
const SEC_KEYS: u32 = 2;
const SEC_INVITES: u32 = 3;
const SEC_PORTS: u32 = 4;
const SEC_STRINGS: u32 = 5;
const SEC_TENANTS: u32 = 6;
const SEC_SUBDOMAINS: u32 = 7;
const SUBDOMAIN_REC: usize = 24;
const SEC_MESH: u32 = 8;
const SEC_MESH_NODES: u32 = 9;
const SEC_MESH_REVOKED: u32 = 10;
const SEC_MESH_PEERS: u32 = 11;
const SEC_MESH_LOCS: u32 = 12;
const SEC_MESH_HS256: u32 = 13;
const SEC_EDGE_ROUTES: u32 = 14;
const SEC_EDGE_CERTS: u32 = 15;
const SEC_ACME_TOKENS: u32 = 16;
const MESH_PEER_REC: usize = 24;
const MESH_REC: usize = 8;
const EDGE_ROUTE_REC: usize = 40;
const EDGE_CERTS_REC: usize = 40;
const ACME_REC: usize = 16;
/// Sections a reader of this build knows (kinds below this).
const KNOWN_SECTIONS: usize = 17;

/// The node this table governs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePolicy {
    /// Node id as the slowpath knows it (tickets are bound to it).
    pub node_id: String,
    /// Region label.
    pub region: String,
    /// Public nodes accept logins with the frp token alone; private nodes
    /// require a ticket.
    pub public: bool,
    /// Ports any session on this node may use.
    pub port_pool: PortSet,
    /// Proxy types any session on this node may register.
    pub proxy_types: ProxyTypes,
    /// Cap on proxies per session without a ticket (0 = none).
    pub max_proxies_per_session: u32,
    /// frps's `subDomainHost` for this node: a proxy's `subdomain` is a
    /// label under it (empty = the fastpath's own config decides).
    pub sub_domain_host: String,
}

/// One invite's limits, as the data plane enforces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitePolicy {
    /// Invite id (tickets name it).
    pub id: InviteId,
    /// Revoked invites refuse logins and end their live sessions.
    pub revoked: bool,
    /// When the invite stops resolving (ms since the epoch); informational
    /// for the data plane, which goes by the ticket's own expiry.
    pub expires_ms: u64,
    /// Concurrent frpc sessions under this invite (0 = no cap).
    pub max_conns: u32,
    /// Proxies across all of the invite's sessions (0 = no cap).
    pub max_proxies: u32,
    /// Proxy types the invite may register.
    pub proxy_types: ProxyTypes,
    /// Ports the invite may use (a subset of the node's pool).
    pub port_pool: PortSet,
    /// Domain suffix for HTTP proxies (empty = none).
    pub domain_suffix: String,
    /// The label under the node's `sub_domain_host` reserved for this
    /// invite's proxies alone (empty = none).
    pub subdomain: String,
}

/// A tenant (seed 002): a token with its own region, ports, bandwidth and
/// quota state. frpc logs in with `auth.token = <token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// The frp token (also the tenant's name; unique).
    pub token: String,
    /// The only region whose nodes accept the token.
    pub region: String,
    /// Disabled tenants refuse logins and end their live sessions.
    pub enabled: bool,
    /// Remote ports TCP and UDP proxies may use (empty = any port of the
    /// node's pool).
    pub allow_ports: PortSet,
    /// Proxies with a remote port per frpc session (0 = no cap).
    pub max_ports_per_client: u32,
    /// Bytes per second across all of the tenant's traffic on this node
    /// (0 = unlimited).
    pub bandwidth_bps: u64,
    /// The traffic quota of the current period is used up.
    pub over_quota: bool,
    /// Over quota: 0 = refuse new connections and end live ones; otherwise
    /// throttle the tenant to this many bytes per second.
    pub throttle_bps: u64,
    /// A proxy's traffic is sampled as soon as this many bytes (both
    /// directions) are unreported, so that each traffic report threshold
    /// is crossed in its own sample (0 = the periodic samples only).
    pub report_interval_bytes: u64,
}

/// A [`MeshPeer`] read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshPeerView<'a> {
    /// Its server id.
    pub relay_id: u32,
    /// Its `/ws/data` URL.
    pub url: &'a str,
    /// The link token for dialing it ("" when it dials this relay).
    pub link_token: &'a str,
}

/// A ticket verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketKey {
    /// Key id, the JWT header's `kid` (at most 64 bytes).
    pub kid: String,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
}

/// What the data plane's mesh relay needs (seed 003): which relay it is,
/// the authorized nodes and their networks (DATA crosses no network), and
/// the revoked token ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshPolicy {
    /// This node's relay as the mesh controller numbers servers (relay
    /// tokens name it in `allowed_relays`); 0 = no relay here.
    pub relay_id: u32,
    /// Authorized nodes: (node_id, network_id), any order.
    pub nodes: Vec<(u32, u32)>,
    /// Revoked token ids (`jti`), any order.
    pub revoked: Vec<String>,
    /// The other relays (any order).
    pub peers: Vec<MeshPeer>,
    /// (node_id, relay_id): nodes on other relays, any order.
    pub locations: Vec<(u32, u32)>,
    /// Seed 003's HS256 shared secret ("" = none: Ed25519 only).
    pub hs256_secret: String,
}

/// Another relay of the mesh, as this one sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshPeer {
    /// Its server id.
    pub relay_id: u32,
    /// Its `/ws/data` URL (`ws://host:port/ws/data`).
    pub url: String,
    /// The link token for dialing it; empty when it dials this relay (the
    /// lower id dials).
    pub link_token: String,
}

/// What the edge serves (seed 004): hostnames routed to origins, the
/// certificate store that goes with the table, and the answers to ACME
/// HTTP-01 challenges in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgePolicy {
    /// Hostname routes (any order; of two for one hostname the last is
    /// kept).
    pub routes: Vec<EdgeRoute>,
    /// SHA-256 and certificate count of the certificate store file
    /// published with this table (None: no managed certificates).
    pub certs: Option<([u8; 32], u32)>,
    /// (token, key authorization) of pending HTTP-01 challenges.
    pub challenges: Vec<(String, String)>,
}

/// Where an edge route leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeOrigin {
    /// An address the edge connects to ("ip:port"; seed 004's WireGuard
    /// IP and target port, or any reachable address).
    Address(String),
    /// An `http` proxy registered on this node by a client of `invite`,
    /// under its full proxy name.
    Tunnel {
        /// The invite its session logged in with.
        invite: InviteId,
        /// The proxy's name as registered.
        proxy: String,
    },
}

/// One hostname the edge serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRoute {
    /// The canonical hostname (lowercase, no trailing dot, punycode).
    pub hostname: String,
    /// Its origin.
    pub origin: EdgeOrigin,
    /// Plain HTTP requests for it are redirected to HTTPS.
    pub redirect_https: bool,
}

/// An edge route, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeRouteView<'a> {
    /// The hostname.
    pub hostname: &'a str,
    /// An address, or a tunnel origin's proxy name.
    pub origin: &'a str,
    /// The invite of a tunnel origin (None: an address).
    pub tunnel: Option<InviteId>,
    /// Plain HTTP is redirected to HTTPS.
    pub redirect_https: bool,
}

/// Everything a table holds, in owned form: what the slowpath compiles its
/// state into before encoding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Monotonic generation number; the fastpath refuses a table that is not
    /// newer than the one it runs on.
    pub generation: u64,
    /// When the table was compiled (ms since the epoch).
    pub created_ms: u64,
    /// The node.
    pub node: NodePolicy,
    /// Ticket verification keys.
    pub keys: Vec<TicketKey>,
    /// Invites (any order; the encoder sorts them).
    pub invites: Vec<InvitePolicy>,
    /// Tenants (any order; the encoder sorts them by token).
    pub tenants: Vec<TenantPolicy>,
    /// The mesh relay's part.
    pub mesh: MeshPolicy,
    /// The edge's part.
    pub edge: EdgePolicy,
}

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Shorter than its header or its own total length.
    #[error("table truncated: {0}")]
    Truncated(&'static str),
    /// Not a policy table.
    #[error("not a policy table (bad magic)")]
    BadMagic,
    /// A layout version this build does not read.
    #[error("unsupported table version {0}")]
    Version(u32),
    /// Bytes do not match the checksum.
    #[error("table checksum mismatch")]
    Checksum,
    /// An offset, string or order that cannot hold.
    #[error("corrupt table: {0}")]
    Corrupt(&'static str),
}

struct Strings {
    buf: Vec<u8>,
}

impl Strings {
    fn add(&mut self, s: &str) -> (u32, u32) {
        let off = self.buf.len() as u32;
        self.buf.extend_from_slice(s.as_bytes());
        (off, s.len() as u32)
    }
}

fn put_ref(out: &mut Vec<u8>, r: (u32, u32)) {
    out.extend_from_slice(&r.0.to_le_bytes());
    out.extend_from_slice(&r.1.to_le_bytes());
}

fn add_ports(ports: &mut Vec<u8>, set: &PortSet) -> (u32, u32) {
    let first = (ports.len() / 4) as u32;
    for &(lo, hi) in set.ranges() {
        ports.extend_from_slice(&lo.to_le_bytes());
        ports.extend_from_slice(&hi.to_le_bytes());
    }
    (first, set.ranges().len() as u32)
}

impl PolicySpec {
    /// Encode the table. Invites are sorted by id; duplicate ids keep the
    /// last one given.
    pub fn encode(&self) -> Vec<u8> {
        let mut sorted: Vec<&InvitePolicy> = self.invites.iter().collect();
        sorted.sort_by_key(|a| a.id.0);
        // Keep the last of equal ids: walk backwards, skip repeats.
        let mut uniq: Vec<&InvitePolicy> = Vec::with_capacity(sorted.len());
        for inv in sorted.into_iter().rev() {
            if uniq.last().is_none_or(|l| l.id != inv.id) {
                uniq.push(inv);
            }
        }
        uniq.reverse();
        encode_parts(
            self.generation,
            self.created_ms,
            &self.node,
            &self.keys,
            uniq.len(),
            uniq.into_iter(),
            Sections {
                tenants: &self.tenants,
                mesh: &self.mesh,
                edge: &self.edge,
            },
        )
    }
}

/// The sections [`encode_parts`] takes whole, after the invites.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    /// Tenants, any order; of two with the same token the last is kept.
    pub tenants: &'a [TenantPolicy],
    /// The mesh relay's part.
    pub mesh: &'a MeshPolicy,
    /// The edge's part.
    pub edge: &'a EdgePolicy,
}

/// Set the generation and creation time of an encoded table and reseal it:
/// a publisher encodes once, compares with what it last published, and only
/// then stamps the generation.
pub fn stamp(bytes: &mut [u8], generation: u64, created_ms: u64) {
    if bytes.len() >= HEADER_LEN {
        bytes[16..24].copy_from_slice(&generation.to_le_bytes());
        bytes[32..40].copy_from_slice(&created_ms.to_le_bytes());
        seal(bytes);
    }
}

/// Encode a table from parts. `invites` must come sorted by id with no
/// repeats (a `BTreeMap<InviteId, _>`'s values are); `count` is how many.
/// Publishers that keep their invites in such a map encode without copying
/// or sorting 100k records per change. Tenants may come in any order; of
/// two with the same token the last one given is kept.
pub fn encode_parts<'a>(
    generation: u64,
    created_ms: u64,
    node: &NodePolicy,
    keys: &[TicketKey],
    count: usize,
    invite_iter: impl Iterator<Item = &'a InvitePolicy>,
    rest: Sections<'_>,
) -> Vec<u8> {
    let Sections {
        tenants: tenant_list,
        mesh: mesh_policy,
        edge: edge_policy,
    } = rest;
    let mut strings = Strings { buf: Vec::new() };
    let mut ports = Vec::new();

    let node_rec = node;
    let mut node = Vec::with_capacity(NODE_REC);
    put_ref(&mut node, strings.add(&node_rec.node_id));
    put_ref(&mut node, strings.add(&node_rec.region));
    node.extend_from_slice(&(node_rec.public as u32).to_le_bytes());
    node.extend_from_slice(&node_rec.proxy_types.0.to_le_bytes());
    node.extend_from_slice(&node_rec.max_proxies_per_session.to_le_bytes());
    node.extend_from_slice(&0u32.to_le_bytes());
    put_ref(&mut node, add_ports(&mut ports, &node_rec.port_pool));
    put_ref(&mut node, strings.add(&node_rec.sub_domain_host));

    let key_list = keys;
    let mut keys = Vec::with_capacity(key_list.len() * KEY_REC);
    for k in key_list {
        put_ref(&mut keys, strings.add(&k.kid));
        keys.extend_from_slice(&[0; 8]);
        keys.extend_from_slice(&k.public_key);
    }

    let mut invites = Vec::with_capacity(count * INVITE_REC);
    let mut reserved: Vec<(&str, InviteId)> = Vec::new();
    for inv in invite_iter {
        invites.extend_from_slice(&inv.id.0);
        invites.extend_from_slice(&(inv.revoked as u32).to_le_bytes());
        invites.extend_from_slice(&inv.proxy_types.0.to_le_bytes());
        invites.extend_from_slice(&inv.max_conns.to_le_bytes());
        invites.extend_from_slice(&inv.max_proxies.to_le_bytes());
        invites.extend_from_slice(&inv.expires_ms.to_le_bytes());
        put_ref(&mut invites, add_ports(&mut ports, &inv.port_pool));
        put_ref(&mut invites, strings.add(&inv.domain_suffix));
        let label = strings.add(&inv.subdomain);
        put_ref(&mut invites, label);
        if !inv.subdomain.is_empty() {
            reserved.push((&inv.subdomain, inv.id));
        }
    }
    // By label; of two invites naming one label the first in id order
    // keeps it (the slowpath's unique index never lets that happen).
    reserved.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    reserved.dedup_by(|b, a| a.0 == b.0);
    let mut subdomains = Vec::with_capacity(reserved.len() * SUBDOMAIN_REC);
    for (label, id) in reserved {
        put_ref(&mut subdomains, strings.add(label));
        subdomains.extend_from_slice(&id.0);
    }

    let mut sorted: Vec<&TenantPolicy> = tenant_list.iter().collect();
    // Stable: equal tokens stay in the order given, so the last one wins.
    sorted.sort_by(|a, b| a.token.as_bytes().cmp(b.token.as_bytes()));
    let mut tenants = Vec::with_capacity(sorted.len() * TENANT_REC);
    for (i, t) in sorted.iter().enumerate() {
        if sorted.get(i + 1).is_some_and(|n| n.token == t.token) {
            continue;
        }
        put_ref(&mut tenants, strings.add(&t.token));
        put_ref(&mut tenants, strings.add(&t.region));
        let flags = t.enabled as u32 | (t.over_quota as u32) << 1;
        tenants.extend_from_slice(&flags.to_le_bytes());
        tenants.extend_from_slice(&t.max_ports_per_client.to_le_bytes());
        tenants.extend_from_slice(&t.bandwidth_bps.to_le_bytes());
        tenants.extend_from_slice(&t.throttle_bps.to_le_bytes());
        put_ref(&mut tenants, add_ports(&mut ports, &t.allow_ports));
        tenants.extend_from_slice(&t.report_interval_bytes.to_le_bytes());
        tenants.extend_from_slice(&[0; 8]);
    }

    let mut mesh = Vec::with_capacity(MESH_REC);
    mesh.extend_from_slice(&mesh_policy.relay_id.to_le_bytes());
    mesh.extend_from_slice(&0u32.to_le_bytes());
    let mut node_list = mesh_policy.nodes.clone();
    node_list.sort_unstable();
    node_list.dedup_by_key(|n| n.0);
    let mut mesh_nodes = Vec::with_capacity(node_list.len() * MESH_REC);
    for (id, net) in node_list {
        mesh_nodes.extend_from_slice(&id.to_le_bytes());
        mesh_nodes.extend_from_slice(&net.to_le_bytes());
    }
    let mut jtis: Vec<&str> = mesh_policy.revoked.iter().map(String::as_str).collect();
    jtis.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    jtis.dedup();
    let mut revoked = Vec::with_capacity(jtis.len() * MESH_REC);
    for j in jtis {
        put_ref(&mut revoked, strings.add(j));
    }
    let mut peer_list: Vec<&MeshPeer> = mesh_policy.peers.iter().collect();
    peer_list.sort_by_key(|p| p.relay_id);
    peer_list.dedup_by_key(|p| p.relay_id);
    let mut peers = Vec::with_capacity(peer_list.len() * MESH_PEER_REC);
    for p in peer_list {
        peers.extend_from_slice(&p.relay_id.to_le_bytes());
        peers.extend_from_slice(&0u32.to_le_bytes());
        put_ref(&mut peers, strings.add(&p.url));
        put_ref(&mut peers, strings.add(&p.link_token));
    }
    let mut loc_list = mesh_policy.locations.clone();
    loc_list.sort_unstable();
    loc_list.dedup();
    let mut locs = Vec::with_capacity(loc_list.len() * MESH_REC);
    for (node, relay) in loc_list {
        locs.extend_from_slice(&node.to_le_bytes());
        locs.extend_from_slice(&relay.to_le_bytes());
    }

    let mut hs256 = Vec::with_capacity(MESH_REC);
    if !mesh_policy.hs256_secret.is_empty() {
        put_ref(&mut hs256, strings.add(&mesh_policy.hs256_secret));
    }

    let mut route_list: Vec<&EdgeRoute> = edge_policy.routes.iter().collect();
    // Stable: of equal hostnames the last one given is kept.
    route_list.sort_by(|a, b| a.hostname.as_bytes().cmp(b.hostname.as_bytes()));
    let mut edge_routes = Vec::with_capacity(route_list.len() * EDGE_ROUTE_REC);
    for (i, r) in route_list.iter().enumerate() {
        if route_list
            .get(i + 1)
            .is_some_and(|n| n.hostname == r.hostname)
        {
            continue;
        }
        put_ref(&mut edge_routes, strings.add(&r.hostname));
        let (origin, invite, tunnel) = match &r.origin {
            EdgeOrigin::Address(a) => (a.as_str(), [0; 16], 0u32),
            EdgeOrigin::Tunnel { invite, proxy } => (proxy.as_str(), invite.0, 1),
        };
        put_ref(&mut edge_routes, strings.add(origin));
        edge_routes.extend_from_slice(&invite);
        let flags = tunnel | (r.redirect_https as u32) << 1;
        edge_routes.extend_from_slice(&flags.to_le_bytes());
        edge_routes.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut edge_certs = Vec::with_capacity(EDGE_CERTS_REC);
    if let Some((digest, count)) = edge_policy.certs {
        edge_certs.extend_from_slice(&digest);
        edge_certs.extend_from_slice(&count.to_le_bytes());
        edge_certs.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut tokens: Vec<&(String, String)> = edge_policy.challenges.iter().collect();
    tokens.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    tokens.dedup_by(|b, a| a.0 == b.0);
    let mut acme = Vec::with_capacity(tokens.len() * ACME_REC);
    for (token, answer) in tokens {
        put_ref(&mut acme, strings.add(token));
        put_ref(&mut acme, strings.add(answer));
    }

    let sections: [(u32, &[u8]); 16] = [
        (SEC_NODE, &node),
        (SEC_KEYS, &keys),
        (SEC_INVITES, &invites),
        (SEC_TENANTS, &tenants),
        (SEC_SUBDOMAINS, &subdomains),
        (SEC_MESH, &mesh),
        (SEC_MESH_NODES, &mesh_nodes),
        (SEC_MESH_REVOKED, &revoked),
        (SEC_MESH_PEERS, &peers),
        (SEC_MESH_LOCS, &locs),
        (SEC_MESH_HS256, &hs256),
        (SEC_EDGE_ROUTES, &edge_routes),
        (SEC_EDGE_CERTS, &edge_certs),
        (SEC_ACME_TOKENS, &acme),
        (SEC_PORTS, &ports),
        (SEC_STRINGS, &strings.buf),
    ];
    let mut out = vec![0u8; HEADER_LEN + DIR_ENTRY * sections.len()];
    let mut dir = Vec::with_capacity(DIR_ENTRY * sections.len());
    for (kind, body) in sections {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        dir.extend_from_slice(&kind.to_le_bytes());
        dir.extend_from_slice(&0u32.to_le_bytes());
        dir.extend_from_slice(&(out.len() as u64).to_le_bytes());
        dir.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
    }
    out[HEADER_LEN..HEADER_LEN + dir.len()].copy_from_slice(&dir);
    let total = out.len() as u64;
    out[0..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    out[16..24].copy_from_slice(&generation.to_le_bytes());
    out[24..32].copy_from_slice(&total.to_le_bytes());
    out[32..40].copy_from_slice(&created_ms.to_le_bytes());
    out[40..44].copy_from_slice(&(sections.len() as u32).to_le_bytes());
    let sum = checksum(&out) as u64;
    out[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Recompute the checksum of a table edited by hand (fuzzing and tests
/// that need structurally bad tables to get past the checksum).
pub fn seal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        let sum = checksum(bytes) as u64;
        bytes[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    }
}

fn checksum(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(&bytes[..CHECKSUM_AT]);
    let c = crc32c::crc32c_append(c, &[0; 8]);
    crc32c::crc32c_append(c, &bytes[CHECKSUM_AT + 8..])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

/// The fixed fields at the start of a table: what a reader needs to know
/// which generation a file holds without validating all of it (the
/// slowpath's publisher and benches; the fastpath validates the whole table
/// with [`PolicyTable::parse`], which reads the header through this too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableHeader {
    /// The generation number.
    pub generation: u64,
    /// Length of the table in bytes, header included (a sealed table file
    /// has its tag after this many bytes).
    pub total_len: u64,
    /// When the slowpath compiled it (ms since the epoch).
    pub created_ms: u64,
    /// Length of the header (at least [`TableHeader::LEN`]).
    pub header_len: u32,
}

impl TableHeader {
    /// Bytes of the fixed header (a file shorter than this is no table).
    pub const LEN: usize = HEADER_LEN;

    /// Read the header from the first [`TableHeader::LEN`] bytes of a
    /// table (more may follow): magic and version are checked, nothing
    /// else (the checksum covers the whole table, see [`PolicyTable::parse`]).
    pub fn parse(bytes: &[u8]) -> Result<TableHeader, TableError> {
        if bytes.len() < HEADER_LEN {
            return Err(TableError::Truncated("shorter than the header"));
        }
        if &bytes[0..8] != MAGIC {
            return Err(TableError::BadMagic);
        }
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(TableError::Version(version));
        }
        Ok(TableHeader {
            generation: u64_at(bytes, 16),
            total_len: u64_at(bytes, 24),
            created_ms: u64_at(bytes, 32),
            header_len: u32_at(bytes, 12),
        })
    }
}

/// The record of `section` (sorted records of `len` bytes) that `cmp`
/// finds Equal, by binary search in place.
fn search<'a>(
    section: &'a [u8],
    len: usize,
    cmp: impl Fn(&'a [u8]) -> std::cmp::Ordering,
) -> Option<&'a [u8]> {
    let (mut lo, mut hi) = (0, section.len() / len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let rec = &section[mid * len..(mid + 1) * len];
        match cmp(rec) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(rec),
        }
    }
    None
}

/// A validated table, read in place.
#[derive(Clone, Copy)]
pub struct PolicyTable<'a> {
    bytes: &'a [u8],
    node: &'a [u8],
    keys: &'a [u8],
    invites: &'a [u8],
    tenants: &'a [u8],
    subdomains: &'a [u8],
    mesh: &'a [u8],
    mesh_nodes: &'a [u8],
    mesh_revoked: &'a [u8],
    mesh_peers: &'a [u8],
    mesh_locs: &'a [u8],
    mesh_hs256: &'a [u8],
    edge_routes: &'a [u8],
    edge_certs: &'a [u8],
    acme_tokens: &'a [u8],
    ports: &'a [u8],
    strings: &'a [u8],
}

impl fmt::Debug for PolicyTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyTable")
            .field("generation", &self.generation())
            .field("node", &self.node().node_id())
            .field("invites", &self.invite_count())
            .finish()
    }
}

impl<'a> PolicyTable<'a> {
    /// Validate `bytes` as a table. Everything a lookup will touch is
    /// checked here, once.
    pub fn parse(bytes: &'a [u8]) -> Result<PolicyTable<'a>, TableError> {
        let header = TableHeader::parse(bytes)?;
        let header_len = header.header_len as usize;
        if header_len < HEADER_LEN {
            return Err(TableError::Corrupt("header length"));
        }
        let total = header.total_len;
        if total > bytes.len() as u64 {
            return Err(TableError::Truncated("shorter than its stated length"));
        }
        let bytes = &bytes[..total as usize];
        if header_len > bytes.len() {
            return Err(TableError::Truncated("shorter than the header"));
        }
        if checksum(bytes) as u64 != u64_at(bytes, CHECKSUM_AT) {
            return Err(TableError::Checksum);
        }
        let count = u32_at(bytes, 40) as usize;
        let dir_end = count
            .checked_mul(DIR_ENTRY)
            .and_then(|d| d.checked_add(header_len))
            .filter(|&e| e <= bytes.len())
            .ok_or(TableError::Corrupt("section directory out of bounds"))?;
        let mut found: [Option<&'a [u8]>; KNOWN_SECTIONS] = [None; KNOWN_SECTIONS];
        for at in (header_len..dir_end).step_by(DIR_ENTRY) {
            let kind = u32_at(bytes, at);
            let off = u64_at(bytes, at + 8);
            let len = u64_at(bytes, at + 16);
            let end = off
                .checked_add(len)
                .filter(|&e| e <= bytes.len() as u64)
                .ok_or(TableError::Corrupt("section out of bounds"))?;
            if (off as usize) < dir_end {
                return Err(TableError::Corrupt("section overlaps the header"));
            }
            if let Some(slot) = found.get_mut(kind as usize) {
                if kind == 0 {
                    continue;
                }
                if slot.is_some() {
                    return Err(TableError::Corrupt("section appears twice"));
                }
                *slot = Some(&bytes[off as usize..end as usize]);
            }
        }
        let need = |k: u32, what| found[k as usize].ok_or(TableError::Corrupt(what));
        let t = PolicyTable {
            bytes,
            node: need(SEC_NODE, "no node section")?,
            keys: need(SEC_KEYS, "no keys section")?,
            invites: need(SEC_INVITES, "no invites section")?,
            // Tables from before tenants have none.
            tenants: found[SEC_TENANTS as usize].unwrap_or(&[]),
            // Tables from before reserved subdomains have none.
            subdomains: found[SEC_SUBDOMAINS as usize].unwrap_or(&[]),
            // Tables from before the mesh relay have none of its sections.
            mesh: found[SEC_MESH as usize].unwrap_or(&[]),
            mesh_nodes: found[SEC_MESH_NODES as usize].unwrap_or(&[]),
            mesh_revoked: found[SEC_MESH_REVOKED as usize].unwrap_or(&[]),
            mesh_peers: found[SEC_MESH_PEERS as usize].unwrap_or(&[]),
            mesh_locs: found[SEC_MESH_LOCS as usize].unwrap_or(&[]),
            mesh_hs256: found[SEC_MESH_HS256 as usize].unwrap_or(&[]),
            // Tables from before the edge have none of its sections.
            edge_routes: found[SEC_EDGE_ROUTES as usize].unwrap_or(&[]),
            edge_certs: found[SEC_EDGE_CERTS as usize].unwrap_or(&[]),
            acme_tokens: found[SEC_ACME_TOKENS as usize].unwrap_or(&[]),
            ports: need(SEC_PORTS, "no ports section")?,
            strings: need(SEC_STRINGS, "no strings section")?,
        };
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<(), TableError> {
        if self.node.len() != NODE_REC {
            return Err(TableError::Corrupt("node section size"));
        }
        if !self.keys.len().is_multiple_of(KEY_REC) {
            return Err(TableError::Corrupt("keys section size"));
        }
        if !self.invites.len().is_multiple_of(INVITE_REC) {
            return Err(TableError::Corrupt("invites section size"));
        }
        if !self.tenants.len().is_multiple_of(TENANT_REC) {
            return Err(TableError::Corrupt("tenants section size"));
        }
        if !self.subdomains.len().is_multiple_of(SUBDOMAIN_REC) {
            return Err(TableError::Corrupt("subdomains section size"));
        }
        if !self.ports.len().is_multiple_of(4) {
            return Err(TableError::Corrupt("ports section size"));
        }
        if !(self.mesh.is_empty() || self.mesh.len() == MESH_REC) {
            return Err(TableError::Corrupt("mesh section size"));
        }
        if !self.mesh_nodes.len().is_multiple_of(MESH_REC) {
            return Err(TableError::Corrupt("mesh nodes section size"));
        }
        if !self.mesh_revoked.len().is_multiple_of(MESH_REC) {
            return Err(TableError::Corrupt("mesh revoked section size"));
        }
        let mut prev: Option<u32> = None;
        for rec in self.mesh_nodes.chunks_exact(MESH_REC) {
            let id = u32_at(rec, 0);
            if prev.is_some_and(|p| p >= id) {
                return Err(TableError::Corrupt("mesh nodes not sorted by id"));
            }
            prev = Some(id);
        }
        if !self.mesh_peers.len().is_multiple_of(MESH_PEER_REC) {
            return Err(TableError::Corrupt("mesh peers section size"));
        }
        if !self.mesh_locs.len().is_multiple_of(MESH_REC) {
            return Err(TableError::Corrupt("mesh locations section size"));
        }
        if !(self.mesh_hs256.is_empty() || self.mesh_hs256.len() == MESH_REC) {
            return Err(TableError::Corrupt("mesh HS256 section size"));
        }
        if !self.mesh_hs256.is_empty() {
            self.check_str(self.mesh_hs256, 0)?;
        }
        let mut prev: Option<u32> = None;
        for rec in self.mesh_peers.chunks_exact(MESH_PEER_REC) {
            let id = u32_at(rec, 0);
            if prev.is_some_and(|p| p >= id) {
                return Err(TableError::Corrupt("mesh peers not sorted by id"));
            }
            prev = Some(id);
            self.check_str(rec, 8)?;
            self.check_str(rec, 16)?;
        }
        let mut prev: Option<(u32, u32)> = None;
        for rec in self.mesh_locs.chunks_exact(MESH_REC) {
            let key = (u32_at(rec, 0), u32_at(rec, 4));
            if prev.is_some_and(|p| p >= key) {
                return Err(TableError::Corrupt("mesh locations not sorted"));
            }
            prev = Some(key);
        }
        let mut prev: Option<&str> = None;
        for rec in self.mesh_revoked.chunks_exact(MESH_REC) {
            self.check_str(rec, 0)?;
            let jti = self.str_at(rec, 0);
            if prev.is_some_and(|p| p.as_bytes() >= jti.as_bytes()) {
                return Err(TableError::Corrupt("mesh revoked ids not sorted"));
            }
            prev = Some(jti);
        }
        self.validate_edge()?;
        self.check_str(self.node, 0)?;
        self.check_str(self.node, 8)?;
        self.check_ports(self.node, 32)?;
        self.check_str(self.node, 40)?;
        for rec in self.keys.chunks_exact(KEY_REC) {
            self.check_str(rec, 0)?;
        }
        let mut prev: Option<&[u8]> = None;
        for rec in self.invites.chunks_exact(INVITE_REC) {
            let id = &rec[..16];
            if prev.is_some_and(|p| p >= id) {
                return Err(TableError::Corrupt("invites not sorted by id"));
            }
            prev = Some(id);
            self.check_ports(rec, 40)?;
            self.check_str(rec, 48)?;
            self.check_str(rec, 56)?;
        }
        let mut prev: Option<&str> = None;
        for rec in self.subdomains.chunks_exact(SUBDOMAIN_REC) {
            self.check_str(rec, 0)?;
            let label = self.str_at(rec, 0);
            if prev.is_some_and(|p| p.as_bytes() >= label.as_bytes()) {
                return Err(TableError::Corrupt("subdomains not sorted by label"));
            }
            prev = Some(label);
        }
        let mut prev: Option<&str> = None;
        for rec in self.tenants.chunks_exact(TENANT_REC) {
            self.check_str(rec, 0)?;
            self.check_str(rec, 8)?;
            self.check_ports(rec, 40)?;
            let token = self.str_at(rec, 0);
            if prev.is_some_and(|p| p.as_bytes() >= token.as_bytes()) {
                return Err(TableError::Corrupt("tenants not sorted by token"));
            }
            prev = Some(token);
        }
        Ok(())
    }

    fn validate_edge(&self) -> Result<(), TableError> {
        if !self.edge_routes.len().is_multiple_of(EDGE_ROUTE_REC) {
            return Err(TableError::Corrupt("edge routes section size"));
        }
        if !(self.edge_certs.is_empty() || self.edge_certs.len() == EDGE_CERTS_REC) {
            return Err(TableError::Corrupt("edge certificates section size"));
        }
        if !self.acme_tokens.len().is_multiple_of(ACME_REC) {
            return Err(TableError::Corrupt("ACME tokens section size"));
        }
        let mut prev: Option<&str> = None;
        for rec in self.edge_routes.chunks_exact(EDGE_ROUTE_REC) {
            self.check_str(rec, 0)?;
            self.check_str(rec, 8)?;
            let host = self.str_at(rec, 0);
            if prev.is_some_and(|p| p.as_bytes() >= host.as_bytes()) {
                return Err(TableError::Corrupt("edge routes not sorted by hostname"));
            }
            prev = Some(host);
        }
        let mut prev: Option<&str> = None;
        for rec in self.acme_tokens.chunks_exact(ACME_REC) {
            self.check_str(rec, 0)?;
            self.check_str(rec, 8)?;
            let token = self.str_at(rec, 0);
            if prev.is_some_and(|p| p.as_bytes() >= token.as_bytes()) {
                return Err(TableError::Corrupt("ACME tokens not sorted"));
            }
            prev = Some(token);
        }
        Ok(())
    }

    fn check_str(&self, rec: &[u8], at: usize) -> Result<(), TableError> {
        let (off, len) = (u32_at(rec, at) as usize, u32_at(rec, at + 4) as usize);
        let s = self
            .strings
            .get(off..off.saturating_add(len))
            .ok_or(TableError::Corrupt("string out of bounds"))?;
        std::str::from_utf8(s).map_err(|_| TableError::Corrupt("string is not UTF-8"))?;
        Ok(())
    }

    fn check_ports(&self, rec: &[u8], at: usize) -> Result<(), TableError> {
        let set = self
            .ports_raw(rec, at)
            .ok_or(TableError::Corrupt("port set out of bounds"))?;
        let mut prev_hi: Option<u16> = None;
        for pair in set.chunks_exact(4) {
            let (lo, hi) = (u16_at(pair, 0), u16_at(pair, 2));
            if lo > hi || prev_hi.is_some_and(|p| p >= lo) {
                return Err(TableError::Corrupt("port set not sorted"));
            }
            prev_hi = Some(hi);
        }
        Ok(())
    }

    fn ports_raw(&self, rec: &[u8], at: usize) -> Option<&'a [u8]> {
        let first = (u32_at(rec, at) as usize).checked_mul(4)?;
        let len = (u32_at(rec, at + 4) as usize).checked_mul(4)?;
        self.ports.get(first..first.checked_add(len)?)
    }

    fn str_at(&self, rec: &[u8], at: usize) -> &'a str {
        let (off, len) = (u32_at(rec, at) as usize, u32_at(rec, at + 4) as usize);
        // Validated in parse(); the fallback is unreachable.
        self.strings
            .get(off..off + len)
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("")
    }

    /// The generation number.
    pub fn generation(&self) -> u64 {
        u64_at(self.bytes, 16)
    }

    /// When the slowpath compiled it (ms since the epoch).
    pub fn created_ms(&self) -> u64 {
        u64_at(self.bytes, 32)
    }

    /// The table's bytes (as validated).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The node this table governs.
    pub fn node(&self) -> NodeView<'a> {
        NodeView {
            node_id: self.str_at(self.node, 0),
            region: self.str_at(self.node, 8),
            flags: u32_at(self.node, 16),
            proxy_types: ProxyTypes(u32_at(self.node, 20)),
            max_proxies_per_session: u32_at(self.node, 24),
            port_pool: PortsView(self.ports_raw(self.node, 32).unwrap_or(&[])),
            sub_domain_host: self.str_at(self.node, 40),
        }
    }

    /// The invite that reserved `label` (a `subdomain` under the node's
    /// `sub_domain_host`), if one did: a binary search in place.
    pub fn subdomain_owner(&self, label: &str) -> Option<InviteId> {
        let rec = search(self.subdomains, SUBDOMAIN_REC, |rec| {
            self.str_at(rec, 0).as_bytes().cmp(label.as_bytes())
        })?;
        let mut id = [0; 16];
        id.copy_from_slice(&rec[8..24]);
        Some(InviteId(id))
    }

    /// This node's mesh relay id (0: no relay here).
    pub fn mesh_relay_id(&self) -> u32 {
        u32_at(self.mesh, 0)
    }

    /// The network of authorized mesh node `id`, if it is one.
    pub fn mesh_node_network(&self, id: u32) -> Option<u32> {
        search(self.mesh_nodes, MESH_REC, |rec| u32_at(rec, 0).cmp(&id)).map(|rec| u32_at(rec, 4))
    }

    /// The edge route for `hostname` (canonical), if there is one.
    pub fn edge_route(&self, hostname: &str) -> Option<EdgeRouteView<'a>> {
        search(self.edge_routes, EDGE_ROUTE_REC, |rec| {
            self.str_at(rec, 0).as_bytes().cmp(hostname.as_bytes())
        })
        .map(|rec| self.edge_route_view(rec))
    }

    /// Every edge route, by hostname.
    pub fn edge_routes(&self) -> impl Iterator<Item = EdgeRouteView<'a>> + '_ {
        self.edge_routes
            .chunks_exact(EDGE_ROUTE_REC)
            .map(move |rec| self.edge_route_view(rec))
    }

    fn edge_route_view(&self, rec: &'a [u8]) -> EdgeRouteView<'a> {
        let flags = u32_at(rec, 32);
        let mut id = [0; 16];
        id.copy_from_slice(&rec[16..32]);
        EdgeRouteView {
            hostname: self.str_at(rec, 0),
            origin: self.str_at(rec, 8),
            tunnel: (flags & 1 != 0).then_some(InviteId(id)),
            redirect_https: flags & 2 != 0,
        }
    }

    /// SHA-256 and certificate count of the certificate store that goes
    /// with this table (None: no managed certificates).
    pub fn edge_certs(&self) -> Option<([u8; 32], u32)> {
        (!self.edge_certs.is_empty()).then(|| {
            let mut d = [0; 32];
            d.copy_from_slice(&self.edge_certs[..32]);
            (d, u32_at(self.edge_certs, 32))
        })
    }

    /// The key authorization that answers ACME HTTP-01 token `token`.
    pub fn acme_answer(&self, token: &str) -> Option<&'a str> {
        search(self.acme_tokens, ACME_REC, |rec| {
            self.str_at(rec, 0).as_bytes().cmp(token.as_bytes())
        })
        .map(|rec| self.str_at(rec, 8))
    }

    /// Seed 003's HS256 shared secret, when the mesh uses one.
    pub fn mesh_hs256_secret(&self) -> Option<&'a str> {
        (!self.mesh_hs256.is_empty()).then(|| self.str_at(self.mesh_hs256, 0))
    }

    /// The other relays, by id.
    pub fn mesh_peers(&self) -> impl Iterator<Item = MeshPeerView<'a>> + '_ {
        self.mesh_peers
            .chunks_exact(MESH_PEER_REC)
            .map(|rec| MeshPeerView {
                relay_id: u32_at(rec, 0),
                url: self.str_at(rec, 8),
                link_token: self.str_at(rec, 16),
            })
    }

    /// Relay `id`, if it is one of the other relays.
    pub fn mesh_peer(&self, id: u32) -> Option<MeshPeerView<'a>> {
        search(self.mesh_peers, MESH_PEER_REC, |rec| {
            u32_at(rec, 0).cmp(&id)
        })
        .map(|rec| MeshPeerView {
            relay_id: id,
            url: self.str_at(rec, 8),
            link_token: self.str_at(rec, 16),
        })
    }

    /// A relay (the lowest id) that holds mesh node `node_id`, other than
    /// this one.
    pub fn mesh_location(&self, node_id: u32) -> Option<u32> {
        // The first record of the node: a lower bound by node id.
        let n = self.mesh_locs.len() / MESH_REC;
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if u32_at(&self.mesh_locs[mid * MESH_REC..], 0) < node_id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let rec = self.mesh_locs.get(lo * MESH_REC..(lo + 1) * MESH_REC)?;
        (u32_at(rec, 0) == node_id).then(|| u32_at(rec, 4))
    }

    /// Whether the mesh token with this `jti` is revoked.
    pub fn mesh_revoked(&self, jti: &str) -> bool {
        search(self.mesh_revoked, MESH_REC, |rec| {
            self.str_at(rec, 0).as_bytes().cmp(jti.as_bytes())
        })
        .is_some()
    }

    /// The verification key with this `kid`.
    pub fn ticket_key(&self, kid: &str) -> Option<[u8; 32]> {
        self.keys.chunks_exact(KEY_REC).find_map(|rec| {
            (self.str_at(rec, 0) == kid).then(|| {
                let mut k = [0; 32];
                k.copy_from_slice(&rec[16..48]);
                k
            })
        })
    }

    /// Number of invites.
    pub fn invite_count(&self) -> usize {
        self.invites.len() / INVITE_REC
    }

    /// Look an invite up by id (binary search in place).
    pub fn invite(&self, id: &InviteId) -> Option<InviteView<'a>> {
        search(self.invites, INVITE_REC, |rec| rec[..16].cmp(&id.0[..]))
            .map(|rec| self.invite_view(rec))
    }

    /// Every invite, in id order.
    pub fn invites(&self) -> impl Iterator<Item = InviteView<'a>> + '_ {
        self.invites
            .chunks_exact(INVITE_REC)
            .map(move |rec| self.invite_view(rec))
    }

    /// Number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len() / TENANT_REC
    }

    /// Look a tenant up by token (binary search in place).
    pub fn tenant(&self, token: &str) -> Option<TenantView<'a>> {
        search(self.tenants, TENANT_REC, |rec| {
            self.str_at(rec, 0).as_bytes().cmp(token.as_bytes())
        })
        .map(|rec| self.tenant_view(rec))
    }

    /// The tenant at position `i` in token order.
    pub fn tenant_at(&self, i: usize) -> Option<TenantView<'a>> {
        self.tenants
            .get(i * TENANT_REC..(i + 1) * TENANT_REC)
            .map(|rec| self.tenant_view(rec))
    }

    /// Every tenant, in token order.
    pub fn tenants(&self) -> impl Iterator<Item = TenantView<'a>> + '_ {
        self.tenants
            .chunks_exact(TENANT_REC)
            .map(move |rec| self.tenant_view(rec))
    }

    fn tenant_view(&self, rec: &'a [u8]) -> TenantView<'a> {
        TenantView {
            token: self.str_at(rec, 0),
            region: self.str_at(rec, 8),
            flags: u32_at(rec, 16),
            max_ports_per_client: u32_at(rec, 20),
            bandwidth_bps: u64_at(rec, 24),
            throttle_bps: u64_at(rec, 32),
            allow_ports: PortsView(self.ports_raw(rec, 40).unwrap_or(&[])),
            report_interval_bytes: u64_at(rec, 48),
        }
    }

    fn invite_view(&self, rec: &'a [u8]) -> InviteView<'a> {
        let mut id = [0; 16];
        id.copy_from_slice(&rec[..16]);
        InviteView {
            id: InviteId(id),
            flags: u32_at(rec, 16),
            proxy_types: ProxyTypes(u32_at(rec, 20)),
            max_conns: u32_at(rec, 24),
            max_proxies: u32_at(rec, 28),
            expires_ms: u64_at(rec, 32),
            port_pool: PortsView(self.ports_raw(rec, 40).unwrap_or(&[])),
            domain_suffix: self.str_at(rec, 48),
            subdomain: self.str_at(rec, 56),
        }
    }
}

/// A tenant record of a mapped table.
#[derive(Debug, Clone, Copy)]
pub struct TenantView<'a> {
    token: &'a str,
    region: &'a str,
    flags: u32,
    max_ports_per_client: u32,
    bandwidth_bps: u64,
    throttle_bps: u64,
    allow_ports: PortsView<'a>,
    report_interval_bytes: u64,
}

impl<'a> TenantView<'a> {
    /// The token.
    pub fn token(&self) -> &'a str {
        self.token
    }
    /// The region whose nodes accept it.
    pub fn region(&self) -> &'a str {
        self.region
    }
    /// Whether the token may be used.
    pub fn enabled(&self) -> bool {
        self.flags & 1 != 0
    }
    /// Whether the period's traffic quota is used up.
    pub fn over_quota(&self) -> bool {
        self.flags & 2 != 0
    }
    /// Proxies with a remote port per session (0 = no cap).
    pub fn max_ports_per_client(&self) -> u32 {
        self.max_ports_per_client
    }
    /// Configured bytes per second (0 = unlimited).
    pub fn bandwidth_bps(&self) -> u64 {
        self.bandwidth_bps
    }
    /// Rate while over quota (0 = over quota means closed).
    pub fn throttle_bps(&self) -> u64 {
        self.throttle_bps
    }
    /// The rate in force now: the throttle rate when over a throttling
    /// quota (or the configured rate if that is lower), else the
    /// configured rate (0 = unlimited).
    pub fn effective_bps(&self) -> u64 {
        if self.over_quota() && self.throttle_bps > 0 {
            match self.bandwidth_bps {
                0 => self.throttle_bps,
                b => b.min(self.throttle_bps),
            }
        } else {
            self.bandwidth_bps
        }
    }
    /// Over a quota that closes: nothing may be served.
    pub fn quota_closed(&self) -> bool {
        self.over_quota() && self.throttle_bps == 0
    }
    /// Ports allowed for TCP/UDP proxies (empty = any).
    pub fn allow_ports(&self) -> PortsView<'a> {
        self.allow_ports
    }
    /// Sample a proxy once this many bytes are unreported (0 = never early).
    pub fn report_interval_bytes(&self) -> u64 {
        self.report_interval_bytes
    }
}

/// A port set inside a mapped table.
#[derive(Debug, Clone, Copy)]
pub struct PortsView<'a>(&'a [u8]);

impl<'a> PortsView<'a> {
    fn pair(&self, i: usize) -> (u16, u16) {
        (u16_at(self.0, i * 4), u16_at(self.0, i * 4 + 2))
    }

    fn len_ranges(&self) -> usize {
        self.0.len() / 4
    }

    /// Whether `port` is in the set (binary search).
    pub fn contains(&self, port: u16) -> bool {
        let (mut lo, mut hi) = (0, self.len_ranges());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (a, b) = self.pair(mid);
            if b < port {
                lo = mid + 1;
            } else if a > port {
                hi = mid;
            } else {
                return true;
            }
        }
        false
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every port in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        let me = *self;
        (0..me.len_ranges()).flat_map(move |i| {
            let (lo, hi) = me.pair(i);
            lo..=hi
        })
    }

    /// An owned copy.
    pub fn to_set(&self) -> PortSet {
        PortSet::from_ranges((0..self.len_ranges()).map(|i| self.pair(i)).collect())
    }
}

/// The node record of a mapped table.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    node_id: &'a str,
    region: &'a str,
    flags: u32,
    proxy_types: ProxyTypes,
    max_proxies_per_session: u32,
    port_pool: PortsView<'a>,
    sub_domain_host: &'a str,
}

impl<'a> NodeView<'a> {
    /// Node id.
    pub fn node_id(&self) -> &'a str {
        self.node_id
    }
    /// Region label.
    pub fn region(&self) -> &'a str {
        self.region
    }
    /// Whether token-only logins are allowed.
    pub fn public(&self) -> bool {
        self.flags & 1 != 0
    }
    /// Proxy types allowed on the node.
    pub fn proxy_types(&self) -> ProxyTypes {
        self.proxy_types
    }
    /// Cap on proxies per ticketless session (0 = none).
    pub fn max_proxies_per_session(&self) -> u32 {
        self.max_proxies_per_session
    }
    /// The node's port pool.
    pub fn port_pool(&self) -> PortsView<'a> {
        self.port_pool
    }
    /// frps's `subDomainHost` for the node (empty = not set here).
    pub fn sub_domain_host(&self) -> &'a str {
        self.sub_domain_host
    }
}

/// An invite record of a mapped table.
#[derive(Debug, Clone, Copy)]
pub struct InviteView<'a> {
    id: InviteId,
    flags: u32,
    proxy_types: ProxyTypes,
    max_conns: u32,
    max_proxies: u32,
    expires_ms: u64,
    port_pool: PortsView<'a>,
    domain_suffix: &'a str,
    subdomain: &'a str,
}

impl<'a> InviteView<'a> {
    /// Invite id.
    pub fn id(&self) -> InviteId {
        self.id
    }
    /// Whether the invite was revoked.
    pub fn revoked(&self) -> bool {
        self.flags & 1 != 0
    }
    /// When the invite stops resolving (ms since the epoch).
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }
    /// Concurrent sessions allowed (0 = no cap).
    pub fn max_conns(&self) -> u32 {
        self.max_conns
    }
    /// Proxies allowed across the invite's sessions (0 = no cap).
    pub fn max_proxies(&self) -> u32 {
        self.max_proxies
    }
    /// Proxy types allowed.
    pub fn proxy_types(&self) -> ProxyTypes {
        self.proxy_types
    }
    /// Ports allowed.
    pub fn port_pool(&self) -> PortsView<'a> {
        self.port_pool
    }
    /// Domain suffix for HTTP proxies.
    pub fn domain_suffix(&self) -> &'a str {
        self.domain_suffix
    }
    /// The label reserved for the invite under the node's
    /// `sub_domain_host` (empty = none).
    pub fn subdomain(&self) -> &'a str {
        self.subdomain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: usize) -> PolicySpec {
        PolicySpec {
            edge: Default::default(),
            mesh: Default::default(),
            generation: 7,
            created_ms: 1_700_000_000_000,
            node: NodePolicy {
                node_id: "node_1".into(),
                region: "eu".into(),
                public: false,
                port_pool: PortSet::parse("10000-20000").unwrap(),
                proxy_types: ProxyTypes::parse("tcp,udp").unwrap(),
                max_proxies_per_session: 5,
                sub_domain_host: "node.example.com".into(),
            },
            keys: vec![TicketKey {
                kid: "k1".into(),
                public_key: [9; 32],
            }],
            invites: (0..n)
                .map(|i| InvitePolicy {
                    id: InviteId::from_u128(i as u128 * 7919 % 1_000_003),
                    revoked: i % 3 == 0,
                    expires_ms: i as u64,
                    max_conns: 2,
                    max_proxies: 3,
                    proxy_types: ProxyTypes::parse("tcp").unwrap(),
                    port_pool: PortSet::from_ranges(vec![(
                        10000 + i as u16 % 100,
                        10005 + i as u16 % 100,
                    )]),
                    domain_suffix: format!("d{i}.example"),
                    // Every fourth invite has a label of its own.
                    subdomain: if i % 4 == 1 {
                        format!("s{i}")
                    } else {
                        String::new()
                    },
                })
                .collect(),
            tenants: (0..n)
                .map(|i| TenantPolicy {
                    token: format!("tok{}", (i * 7919) % 1_000_003),
                    region: if i % 2 == 0 { "eu" } else { "us" }.into(),
                    enabled: i % 5 != 0,
                    allow_ports: PortSet::from_ranges(vec![(8080, 8080), (9000, 9100)]),
                    max_ports_per_client: i as u32 % 4,
                    bandwidth_bps: i as u64 * 1024,
                    over_quota: i % 7 == 0,
                    throttle_bps: if i % 2 == 0 { 65536 } else { 0 },
                    report_interval_bytes: i as u64 * 3,
                })
                .collect(),
        }
    }

    /// Invite `n` with no limits.
    fn open_invite(n: u128) -> InvitePolicy {
        InvitePolicy {
            id: InviteId::from_u128(n),
            revoked: false,
            expires_ms: 0,
            max_conns: 0,
            max_proxies: 0,
            proxy_types: ProxyTypes::ALL,
            port_pool: PortSet::default(),
            domain_suffix: String::new(),
            subdomain: String::new(),
        }
    }

    #[test]
    fn mesh_sections_round_trip_and_older_tables_have_none() {
        let mut s = spec(3);
        let t_bytes = s.encode();
        let t = PolicyTable::parse(&t_bytes).unwrap();
        assert_eq!((t.mesh_relay_id(), t.mesh_node_network(1)), (0, None));
        assert!(!t.mesh_revoked("a"));
        s.mesh = MeshPolicy {
            relay_id: 3,
            nodes: (1..500u32).rev().map(|n| (n * 3, n % 4 + 1)).collect(),
            revoked: vec!["zz".into(), "a1".into(), "m".into(), "a1".into()],
            peers: vec![
                MeshPeer {
                    relay_id: 9,
                    url: "ws://r9:8444/ws/data".into(),
                    link_token: String::new(),
                },
                MeshPeer {
                    relay_id: 2,
                    url: "ws://r2:8444/ws/data".into(),
                    link_token: "t.o.k".into(),
                },
            ],
            locations: vec![(30, 9), (30, 2), (31, 9), (1, 2)],
            hs256_secret: "s".repeat(32),
        };
        let bytes = s.encode();
        let t = PolicyTable::parse(&bytes).unwrap();
        assert_eq!(t.mesh_relay_id(), 3);
        assert_eq!(t.mesh_node_network(30), Some(30 / 3 % 4 + 1));
        assert_eq!(t.mesh_node_network(31), None);
        assert_eq!(t.mesh_node_network(0), None);
        for j in ["a1", "m", "zz"] {
            assert!(t.mesh_revoked(j), "{j}");
        }
        assert!(!t.mesh_revoked("a") && !t.mesh_revoked("a10"));
        let peers: Vec<_> = t.mesh_peers().map(|p| (p.relay_id, p.link_token)).collect();
        assert_eq!(peers, [(2, "t.o.k"), (9, "")]);
        assert_eq!(t.mesh_peer(9).unwrap().url, "ws://r9:8444/ws/data");
        assert_eq!(t.mesh_peer(3), None);
        assert_eq!(t.mesh_hs256_secret(), Some("s".repeat(32).as_str()));
        assert_eq!(
            [1, 2, 30, 31, 32].map(|n| t.mesh_location(n)),
            [Some(2), None, Some(2), Some(9), None]
        );
        // Out of order, the table is refused.
        let mut spoiled = bytes.clone();
        let dir = HEADER_LEN;
        let count = u32_at(&spoiled, 40) as usize;
        let at = (0..count)
            .map(|i| dir + i * DIR_ENTRY)
            .find(|&e| u32_at(&spoiled, e) == SEC_MESH_NODES)
            .unwrap();
        let off = u64_at(&spoiled, at + 8) as usize;
        spoiled[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        seal(&mut spoiled);
        assert_eq!(
            PolicyTable::parse(&spoiled).unwrap_err(),
            TableError::Corrupt("mesh nodes not sorted by id")
        );
    }

    #[test]
    fn edge_sections_round_trip_and_older_tables_have_none() {
        let mut s = spec(2);
        assert!(PolicyTable::parse(&s.encode())
            .unwrap()
            .edge_route("a.com")
            .is_none());
        let route = |h: &str, origin: EdgeOrigin| EdgeRoute {
            hostname: h.into(),
            origin,
            redirect_https: h.starts_with('w'),
        };
        s.edge = EdgePolicy {
            routes: vec![
                route("wiki.fuga.com", EdgeOrigin::Address("10.0.0.1:80".into())),
                route("app.hoge.com", EdgeOrigin::Address("10.0.0.2:8080".into())),
                route(
                    "app.hoge.com",
                    EdgeOrigin::Tunnel {
                        invite: InviteId::from_u128(9),
                        proxy: "web".into(),
                    },
                ),
            ],
            certs: Some(([7; 32], 3)),
            challenges: vec![("tok2".into(), "b".into()), ("tok1".into(), "a".into())],
        };
        let bytes = s.encode();
        let t = PolicyTable::parse(&bytes).unwrap();
        let app = t.edge_route("app.hoge.com").unwrap();
        assert_eq!(app.origin, "web", "the last route for a hostname is kept");
        assert_eq!(app.tunnel, Some(InviteId::from_u128(9)));
        assert!(!app.redirect_https);
        let wiki = t.edge_route("wiki.fuga.com").unwrap();
        assert_eq!(
            (wiki.origin, wiki.tunnel, wiki.redirect_https),
            ("10.0.0.1:80", None, true)
        );
        assert_eq!(t.edge_routes().count(), 2);
        assert!(t.edge_route("hoge.com").is_none());
        assert_eq!(t.edge_certs(), Some(([7; 32], 3)));
        assert_eq!(t.acme_answer("tok1"), Some("a"));
        assert_eq!(t.acme_answer("tok2"), Some("b"));
        assert_eq!(t.acme_answer("tok3"), None);
    }

    #[test]
    fn header_reads_the_generation_from_the_first_bytes_alone() {
        let bytes = spec(3).encode();
        let h = TableHeader::parse(&bytes[..TableHeader::LEN]).unwrap();
        assert_eq!(h.generation, 7);
        assert_eq!(h.created_ms, 1_700_000_000_000);
        assert_eq!(h.total_len, bytes.len() as u64);
        assert_eq!(
            TableHeader::parse(&bytes[..TableHeader::LEN - 1]),
            Err(TableError::Truncated("shorter than the header"))
        );
        let mut other = bytes.clone();
        other[0] ^= 1;
        assert_eq!(TableHeader::parse(&other), Err(TableError::BadMagic));
        let mut later = bytes;
        later[8] = 2;
        assert_eq!(TableHeader::parse(&later), Err(TableError::Version(2)));
    }

    #[test]
    fn round_trip() {
        let s = spec(1000);
        let bytes = s.encode();
        let t = PolicyTable::parse(&bytes).unwrap();
        assert_eq!(t.generation(), 7);
        assert_eq!(t.node().node_id(), "node_1");
        assert_eq!(t.node().region(), "eu");
        assert!(!t.node().public());
        assert!(t.node().port_pool().contains(15000));
        assert!(!t.node().port_pool().contains(9999));
        assert_eq!(t.node().max_proxies_per_session(), 5);
        assert_eq!(t.ticket_key("k1"), Some([9; 32]));
        assert_eq!(t.ticket_key("k2"), None);
        assert_eq!(t.invite_count(), 1000);
        for inv in &s.invites {
            let v = t.invite(&inv.id).expect("present");
            assert_eq!(v.revoked(), inv.revoked);
            assert_eq!(v.expires_ms(), inv.expires_ms);
            assert_eq!(v.port_pool().to_set(), inv.port_pool);
            assert_eq!(v.domain_suffix(), inv.domain_suffix);
            assert_eq!(v.subdomain(), inv.subdomain);
            assert!(v.proxy_types().allows("tcp"));
            if !inv.subdomain.is_empty() {
                assert_eq!(t.subdomain_owner(&inv.subdomain), Some(inv.id));
            }
        }
        assert_eq!(t.node().sub_domain_host(), "node.example.com");
        assert_eq!(t.subdomain_owner("s0"), None);
        assert_eq!(t.subdomain_owner(""), None);
        assert_eq!(t.subdomain_owner("s1x"), None);
        assert!(t.invite(&InviteId::from_u128(u128::MAX)).is_none());
        let ids: Vec<_> = t.invites().map(|v| v.id().0).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.tenant_count(), 1000);
        for tp in &s.tenants {
            let v = t.tenant(&tp.token).expect("tenant present");
            assert_eq!(v.token(), tp.token);
            assert_eq!(v.region(), tp.region);
            assert_eq!(v.enabled(), tp.enabled);
            assert_eq!(v.over_quota(), tp.over_quota);
            assert_eq!(v.max_ports_per_client(), tp.max_ports_per_client);
            assert_eq!(v.bandwidth_bps(), tp.bandwidth_bps);
            assert_eq!(v.throttle_bps(), tp.throttle_bps);
            assert_eq!(v.allow_ports().to_set(), tp.allow_ports);
            assert_eq!(v.report_interval_bytes(), tp.report_interval_bytes);
        }
        assert!(t.tenant("nope").is_none());
        assert_eq!(
            t.tenant_at(0).unwrap().token(),
            t.tenants().next().unwrap().token()
        );
        assert!(t.tenant_at(1000).is_none());
    }

    #[test]
    fn tenant_rates_and_duplicates() {
        let mut s = spec(0);
        let base = TenantPolicy {
            token: "a".into(),
            region: "eu".into(),
            enabled: true,
            allow_ports: PortSet::default(),
            max_ports_per_client: 0,
            bandwidth_bps: 1000,
            over_quota: false,
            throttle_bps: 100,
            report_interval_bytes: 0,
        };
        s.tenants.push(base.clone());
        s.tenants.push(TenantPolicy {
            over_quota: true,
            ..base.clone()
        });
        s.tenants.push(TenantPolicy {
            token: "b".into(),
            over_quota: true,
            throttle_bps: 0,
            ..base
        });
        let bytes = s.encode();
        let t = PolicyTable::parse(&bytes).unwrap();
        assert_eq!(t.tenant_count(), 2);
        let a = t.tenant("a").unwrap();
        assert!(a.over_quota() && !a.quota_closed());
        assert_eq!(a.effective_bps(), 100);
        let b = t.tenant("b").unwrap();
        assert!(b.quota_closed());
    }

    #[test]
    fn tables_without_a_tenant_section_still_parse() {
        // A table whose directory lists the tenant section with kind 0
        // (ignored) reads as one with no tenants.
        let bytes = spec(3).encode();
        let dir = |i: usize| HEADER_LEN + i * DIR_ENTRY;
        let mut b = bytes.clone();
        b[dir(3)..dir(3) + 4].copy_from_slice(&0u32.to_le_bytes());
        seal(&mut b);
        let t = PolicyTable::parse(&b).unwrap();
        assert_eq!(t.tenant_count(), 0);
        assert_eq!(t.invite_count(), 3);
        // Likewise one without reserved subdomains (the fifth entry).
        assert!(PolicyTable::parse(&bytes)
            .unwrap()
            .subdomain_owner("s1")
            .is_some());
        let mut b = bytes.clone();
        b[dir(4)..dir(4) + 4].copy_from_slice(&0u32.to_le_bytes());
        seal(&mut b);
        let t = PolicyTable::parse(&b).unwrap();
        assert_eq!(t.subdomain_owner("s1"), None);
        assert_eq!(t.invite_count(), 3);
    }

    #[test]
    fn every_flipped_byte_or_cut_is_refused() {
        let bytes = spec(20).encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x41;
            assert!(PolicyTable::parse(&b).is_err(), "flip at {i} accepted");
        }
        for cut in 0..bytes.len() {
            assert!(PolicyTable::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn sealed_but_inconsistent_tables_are_refused() {
        let bytes = spec(8).encode();
        let dir = |i: usize| HEADER_LEN + i * DIR_ENTRY;
        // Invites section (third entry) pointing past the end.
        let mut b = bytes.clone();
        b[dir(2) + 8..dir(2) + 16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        seal(&mut b);
        assert!(matches!(
            PolicyTable::parse(&b),
            Err(TableError::Corrupt(_))
        ));
        // The first two records of a section swapped: no longer sorted.
        let swapped = |section: usize, rec: usize| {
            let mut b = bytes.clone();
            let off = u64_at(&bytes, dir(section) + 8) as usize;
            assert!(u64_at(&bytes, dir(section) + 16) as usize >= 2 * rec);
            let (first, second) = b[off..off + 2 * rec].split_at_mut(rec);
            first.swap_with_slice(second);
            seal(&mut b);
            PolicyTable::parse(&b).unwrap_err()
        };
        let unsorted = |what| TableError::Corrupt(what);
        assert_eq!(swapped(2, INVITE_REC), unsorted("invites not sorted by id"));
        assert_eq!(
            swapped(3, TENANT_REC),
            unsorted("tenants not sorted by token")
        );
        // Invites 1 and 5 have a reserved subdomain each.
        assert_eq!(
            swapped(4, SUBDOMAIN_REC),
            unsorted("subdomains not sorted by label")
        );
        // A string reference past the strings section.
        let mut b = bytes.clone();
        let node = u64_at(&bytes, dir(0) + 8) as usize;
        b[node..node + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        seal(&mut b);
        assert_eq!(
            PolicyTable::parse(&b).unwrap_err(),
            TableError::Corrupt("string out of bounds")
        );
    }

    #[test]
    fn duplicate_ids_keep_the_last() {
        let mut s = spec(0);
        let id = InviteId::from_u128(5);
        for revoked in [false, true] {
            s.invites.push(InvitePolicy {
                revoked,
                ..open_invite(5)
            });
        }
        let bytes = s.encode();
        let t = PolicyTable::parse(&bytes).unwrap();
        assert_eq!(t.invite_count(), 1);
        assert!(t.invite(&id).unwrap().revoked());
    }

    #[test]
    fn a_label_named_twice_stays_with_the_first_invite() {
        let mut s = spec(0);
        for n in [9, 3] {
            s.invites.push(InvitePolicy {
                subdomain: "same".into(),
                ..open_invite(n)
            });
        }
        let bytes = s.encode();
        let t = PolicyTable::parse(&bytes).unwrap();
        assert_eq!(t.subdomain_owner("same"), Some(InviteId::from_u128(3)));
    }
}
