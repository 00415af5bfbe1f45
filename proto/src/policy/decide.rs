//! Policy decisions, made in one place: who may log in ([`login`],
//! [`tenant_login`], [`invite_session`]), which proxies a session may
//! register ([`proxy`]) and whether a live session may go on
//! ([`still_allowed`]).
//!
//! The functions are pure: they read rules and a request and answer with a
//! grant or a [`Refusal`]. The rules are small value structs
//! ([`NodeRules`], [`InviteRules`], [`TenantRules`], [`ServerRules`]) that
//! the fastpath takes from its [`PolicyTable`] and the slowpath's frps
//! plugin builds from its database rows, so both give the same answer in
//! the same words. Counting state (an invite's live sessions and proxies, a
//! session's proxies) stays with the caller, which passes the counts in and
//! counts a grant once it has it.

use std::collections::BTreeMap;

use super::refusal::{Refusal, RefusalKind};
use super::table::{InviteView, NodeView, PolicyTable, PortsView, TenantView};
use super::{InviteId, PortSet, ProxyType, ProxyTypes};
use crate::ticket;

/// Login metadata key that carries a ticket (`metadatas.ticket` in frpc.toml).
pub const TICKET_META: &str = "ticket";

/// Most entries a Login's `metas` may have. frpc sends its `metadatas`
/// table there: a ticket and perhaps a few labels.
pub const MAX_LOGIN_METAS: usize = 64;

/// Most bytes of keys and values together in a Login's `metas` (a ticket
/// is about 400). Wire v1 frames stop at 10 KiB anyway; v2 frames go to
/// 64 KiB.
pub const MAX_LOGIN_METAS_BYTES: usize = 8 * 1024;

/// The ports a `remotePort = 0` proxy is given one of when the config has
/// no `allowPorts`. frps picks from 1-65535; a well-known port picked at
/// random is never what anyone wants, so the fastpath keeps to these.
pub const AUTO_PORTS: (u16, u16) = (10000, 60000);

/// A port set as a decision reads it: in place in a table, or owned by
/// whoever built the rules.
#[derive(Debug, Clone, Copy)]
pub enum Ports<'a> {
    /// A set inside a mapped table.
    Table(PortsView<'a>),
    /// A set in memory.
    Set(&'a PortSet),
}

impl Ports<'_> {
    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Table(v) => v.contains(port),
            Ports::Set(s) => s.contains(port),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        match self {
            Ports::Table(v) => v.is_empty(),
            Ports::Set(s) => s.is_empty(),
        }
    }

    /// An owned copy.
    pub fn to_set(&self) -> PortSet {
        match self {
            Ports::Table(v) => v.to_set(),
            Ports::Set(s) => (*s).clone(),
        }
    }
}

impl<'a> From<PortsView<'a>> for Ports<'a> {
    fn from(v: PortsView<'a>) -> Ports<'a> {
        Ports::Table(v)
    }
}

impl<'a> From<&'a PortSet> for Ports<'a> {
    fn from(s: &'a PortSet) -> Ports<'a> {
        Ports::Set(s)
    }
}

/// The node's rules.
#[derive(Debug, Clone, Copy)]
pub struct NodeRules<'a> {
    /// Node id (tickets are bound to it).
    pub node_id: &'a str,
    /// Region (tenant tokens are bound to one).
    pub region: &'a str,
    /// Whether the node token alone lets a client in.
    pub public: bool,
    /// Proxy types any session may register.
    pub proxy_types: ProxyTypes,
    /// Ports any session may use.
    pub port_pool: Ports<'a>,
    /// Proxies per token-only session (0 = no cap).
    pub max_proxies_per_session: u32,
}

impl<'a> From<NodeView<'a>> for NodeRules<'a> {
    fn from(n: NodeView<'a>) -> NodeRules<'a> {
        NodeRules {
            node_id: n.node_id(),
            region: n.region(),
            public: n.public(),
            proxy_types: n.proxy_types(),
            port_pool: n.port_pool().into(),
            max_proxies_per_session: n.max_proxies_per_session(),
        }
    }
}

/// An invite's rules.
#[derive(Debug, Clone, Copy)]
pub struct InviteRules<'a> {
    /// Whether it was revoked.
    pub revoked: bool,
    /// Concurrent sessions (0 = no cap).
    pub max_conns: u32,
    /// Proxies across its sessions (0 = no cap).
    pub max_proxies: u32,
    /// Proxy types it may register.
    pub proxy_types: ProxyTypes,
    /// Ports it may use (within the node's pool).
    pub port_pool: Ports<'a>,
    /// The domain its vhost proxies must be under (empty: any).
    pub domain_suffix: &'a str,
}

impl<'a> From<InviteView<'a>> for InviteRules<'a> {
    fn from(i: InviteView<'a>) -> InviteRules<'a> {
        InviteRules {
            revoked: i.revoked(),
            max_conns: i.max_conns(),
            max_proxies: i.max_proxies(),
            proxy_types: i.proxy_types(),
            port_pool: i.port_pool().into(),
            domain_suffix: i.domain_suffix(),
        }
    }
}

/// A tenant token's rules (seed 002).
#[derive(Debug, Clone, Copy)]
pub struct TenantRules<'a> {
    /// The only region whose nodes accept the token.
    pub region: &'a str,
    /// Whether the token may be used.
    pub enabled: bool,
    /// Over a quota that closes (rather than throttles).
    pub quota_closed: bool,
    /// Remote ports its tcp and udp proxies may use (empty = the node's
    /// pool). They replace the node's pool: token settings take precedence
    /// over the server's.
    pub allow_ports: Ports<'a>,
    /// Proxies with a remote port per session (0 = no cap).
    pub max_ports_per_client: u32,
}

impl<'a> From<TenantView<'a>> for TenantRules<'a> {
    fn from(t: TenantView<'a>) -> TenantRules<'a> {
        TenantRules {
            region: t.region(),
            enabled: t.enabled(),
            quota_closed: t.quota_closed(),
            allow_ports: t.allow_ports().into(),
            max_ports_per_client: t.max_ports_per_client(),
        }
    }
}

/// The server's own limits from its config file (frps's `allowPorts` and
/// `maxPortsPerClient`), in force whatever governs the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerRules {
    /// Ports standalone sessions may use (empty = any; [`AUTO_PORTS`] for
    /// `remotePort = 0`).
    pub allow_ports: PortSet,
    /// Proxies with a remote port per session, for sessions that are not a
    /// tenant's (0 = no cap; a tenant's own cap replaces it).
    pub max_ports_per_client: u32,
}

/// What a session's proxies go by: its grant with the rules it points at,
/// as the rules stand now.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// No control plane: the config file's rules (frps drop-in).
    Standalone,
    /// Governed, but no table has arrived yet.
    NoPolicy,
    /// The node token on a public node.
    Node {
        /// The node.
        node: NodeRules<'a>,
    },
    /// A ticket.
    Invite {
        /// The node.
        node: NodeRules<'a>,
        /// The ticket's invite.
        id: InviteId,
        /// Its rules; None once it is gone from the node.
        invite: Option<InviteRules<'a>>,
    },
    /// A tenant token.
    Tenant {
        /// The node.
        node: NodeRules<'a>,
        /// Its rules; None once it is deleted.
        tenant: Option<TenantRules<'a>>,
    },
}

/// How a login that proved the node's frp token comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEntry {
    /// The node is public and the Login carries no ticket.
    Public,
    /// The Login's ticket, for this invite.
    Ticket(InviteId),
}

/// Refuse `metas` over [`MAX_LOGIN_METAS`] entries or
/// [`MAX_LOGIN_METAS_BYTES`] bytes: a session keeps its Login while it
/// lives, so what a client sends here is memory it holds on the node.
pub fn login_metas(metas: &BTreeMap<String, String>) -> Result<(), Refusal> {
    let count = metas.len();
    let bytes: usize = metas.iter().map(|(k, v)| k.len() + v.len()).sum();
    let detail = if count > MAX_LOGIN_METAS {
        format!("Login carries {count} metas; at most {MAX_LOGIN_METAS} are accepted (metadatas in frpc.toml)")
    } else if bytes > MAX_LOGIN_METAS_BYTES {
        format!("Login metas hold {bytes} bytes of keys and values; at most {MAX_LOGIN_METAS_BYTES} are accepted (metadatas in frpc.toml)")
    } else {
        return Ok(());
    };
    Err(Refusal::new(RefusalKind::LoginMetas, detail))
}

/// The first half of a node-token login: the node being public, or the
/// ticket (checked against `key(kid)`, the clock and the node). The
/// refusal names the ticket's invite once the ticket's signature holds.
pub fn node_entry(
    node: &NodeRules,
    ticket: Option<&str>,
    now_s: u64,
    key: impl FnOnce(&str) -> Option<[u8; 32]>,
) -> Result<NodeEntry, Refusal> {
    let Some(token) = ticket else {
        if node.public {
            return Ok(NodeEntry::Public);
        }
        return Err(Refusal::new(
            RefusalKind::PrivateNode,
            "this node is private: log in with a ticket from an invite (metadatas.ticket in frpc.toml)",
        ));
    };
    let kid = ticket::peek_kid(token)?;
    let key = key(&kid).ok_or(ticket::TicketError::UnknownKey)?;
    let claims = ticket::verify(token, &key)?;
    let invite = InviteId::parse(&claims.inv);
    ticket::check(&claims, now_s, node.node_id)
        .map_err(|e| Refusal::from(e).with_invite(invite))?;
    match invite {
        Some(id) => Ok(NodeEntry::Ticket(id)),
        None => Err(Refusal::new(
            RefusalKind::TicketInvalid,
            "malformed ticket: bad invite id",
        )),
    }
}

/// The second half of a ticket login: the ticket's invite `id`, as the
/// rules know it (None: not on this node).
pub fn invite_entry(id: InviteId, invite: Option<&InviteRules>) -> Result<(), Refusal> {
    match invite {
        None => Err(invite_unknown(id)),
        Some(i) if i.revoked => Err(invite_revoked(id)),
        Some(_) => Ok(()),
    }
}

/// A node-token login over a table: [`node_entry`], then
/// [`invite_entry`] for a ticket.
pub fn login(table: &PolicyTable, ticket: Option<&str>, now_s: u64) -> Result<NodeEntry, Refusal> {
    let entry = node_entry(&table.node().into(), ticket, now_s, |kid| {
        table.ticket_key(kid)
    })?;
    if let NodeEntry::Ticket(id) = entry {
        let invite = table.invite(&id).map(InviteRules::from);
        invite_entry(id, invite.as_ref())?;
    }
    Ok(entry)
}

/// A tenant-token login: the token's region is the node's, it is enabled
/// and not over a quota that closes.
pub fn tenant_login(node: &NodeRules, tenant: &TenantRules) -> Result<(), Refusal> {
    if tenant.region != node.region {
        return Err(Refusal::new(
            RefusalKind::TokenWrongRegion,
            format!(
                "token is for region {:?}; this node serves region {:?}",
                tenant.region, node.region
            ),
        ));
    }
    tenant_usable(tenant)
}

/// Whether one more session of invite `id` fits: the invite is still
/// there and not revoked (the table may have changed since the ticket was
/// checked), and its `live` sessions are under `max_conns`. `reconnect`:
/// the new session replaces one of the live ones, so it does not count
/// twice.
pub fn invite_session(
    id: InviteId,
    invite: Option<&InviteRules>,
    live: u32,
    reconnect: bool,
) -> Result<(), Refusal> {
    invite_entry(id, invite)?;
    let max = invite.map_or(0, |i| i.max_conns);
    let counted = live.saturating_sub(reconnect as u32);
    if max > 0 && counted >= max {
        return Err(Refusal::new(
            RefusalKind::InviteMaxConns,
            format!("invite {id} already has {live} of its {max} concurrent sessions (max_conns)"),
        )
        .with_invite(Some(id)));
    }
    Ok(())
}

/// A NewProxy, as far as policy goes.
#[derive(Debug, Clone, Copy)]
pub struct ProxyRequest<'a> {
    /// The NewProxy's `proxy_type` (empty = tcp).
    pub proxy_type: &'a str,
    /// The NewProxy's `remote_port` (0 = the server picks).
    pub remote_port: u16,
    /// The domains a vhost proxy is reached by, in routing form (lower
    /// case, no port); empty for other types.
    pub domains: &'a [String],
    /// Its `subdomain`, when it names one.
    pub subdomain: Option<Subdomain<'a>>,
    /// The node's `subDomainHost` ("" = none).
    pub sub_domain_host: &'a str,
}

/// A NewProxy's `subdomain`, with who may use it: a node reserves a label
/// under its `sub_domain_host` for the invite it was assigned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subdomain<'a> {
    /// The label frpc asked for (lower case).
    pub label: &'a str,
    /// The domain it makes (one of the request's `domains`).
    pub domain: &'a str,
    /// The invite the label is reserved for, if any.
    pub reserved_by: Option<InviteId>,
}

/// Whether `domain` is `suffix` or under it (`suffix` with or without a
/// leading dot, in any case).
pub fn under_suffix(domain: &str, suffix: &str) -> bool {
    let suffix = suffix.trim_start_matches('.');
    let (d, s) = (domain.as_bytes(), suffix.as_bytes());
    if suffix.is_empty() || d.len() < s.len() {
        return suffix.is_empty();
    }
    let tail = &d[d.len() - s.len()..];
    tail.eq_ignore_ascii_case(s) && (d.len() == s.len() || d[d.len() - s.len() - 1] == b'.')
}

/// A NewProxy's `remote_port` as a port (frp sends an int).
pub fn remote_port(port: i64) -> Result<u16, Refusal> {
    u16::try_from(port)
        .map_err(|_| Refusal::invalid_proxy(format!("remote port {port} is out of range")))
}

/// What the session (and its invite) hold already.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Proxies the session holds.
    pub session_proxies: usize,
    /// Of those, the ones holding a remote port.
    pub session_ports: usize,
    /// Proxies the session's invite holds across all its sessions.
    pub invite_proxies: u32,
}

/// Which public port an allowed proxy gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChoice {
    /// The type takes no port of its own.
    NoPort,
    /// The port frpc asked for (if it is free).
    Exactly(u16),
    /// Any free port of these (frpc asked for 0).
    AnyOf(PortSet),
}

/// An allowed NewProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyGrant {
    /// Its type.
    pub proxy_type: ProxyType,
    /// Its port.
    pub port: PortChoice,
}

/// Decide a NewProxy of a session in `scope` that holds `counts`, on a
/// server that implements the `supported` types. Policy comes first, so
/// that a type an invite forbids is refused as such rather than as not
/// implemented. Ports and port caps concern the types that take a port
/// (tcp, udp); every type goes through the type, session and invite rules.
pub fn proxy(
    server: &ServerRules,
    scope: &Scope,
    req: &ProxyRequest,
    counts: &Counts,
    supported: ProxyTypes,
) -> Result<ProxyGrant, Refusal> {
    let name = if req.proxy_type.is_empty() {
        "tcp"
    } else {
        req.proxy_type
    };
    let ty = ProxyType::from_frp(req.proxy_type);
    let takes_port = ty.is_some_and(ProxyType::takes_port);
    let wanted = req.remote_port;
    let invite = match scope {
        Scope::Invite { id, .. } => Some(*id),
        _ => None,
    };
    let refuse = |r: Refusal| Err(r.with_invite(invite));
    // The server's own cap; a tenant's replaces it.
    if takes_port
        && server.max_ports_per_client > 0
        && !matches!(scope, Scope::Tenant { .. })
        && counts.session_ports >= server.max_ports_per_client as usize
    {
        return refuse(Refusal::max_ports_per_client());
    }
    let node = match scope {
        Scope::Standalone => None,
        Scope::NoPolicy => return refuse(Refusal::no_policy()),
        Scope::Node { node } | Scope::Invite { node, .. } | Scope::Tenant { node, .. } => {
            Some(node)
        }
    };
    if let Some(node) = node {
        if !ty.is_some_and(|t| node.proxy_types.contains(t)) {
            return refuse(Refusal::new(
                RefusalKind::TypeNotAllowed,
                format!("proxy type {name} is not allowed on this node"),
            ));
        }
    }
    // A reserved label is its invite's alone, whatever else allows it; for
    // that invite it is allowed outside its domain_suffix too.
    let own_domain = match req.subdomain {
        Some(Subdomain {
            label,
            domain,
            reserved_by: Some(owner),
        }) => {
            if invite != Some(owner) {
                return refuse(Refusal::new(
                    RefusalKind::DomainNotAllowed,
                    format!("subdomain [{label}] is reserved for an invite on this node"),
                ));
            }
            Some(domain)
        }
        _ => None,
    };
    // Under a control plane, the names under the subDomainHost are handed
    // out by label (and reserved for invites): no custom domain may name
    // one, and no wildcard may cover them, or it would serve a reserved
    // label whenever its owner is offline. (A standalone server keeps
    // frps's rules.)
    let host = req.sub_domain_host;
    if !host.is_empty() && !matches!(scope, Scope::Standalone) {
        let asked = req.subdomain.map(|s| s.domain);
        for d in req.domains.iter().filter(|d| Some(d.as_str()) != asked) {
            let why = if d == "*" || d.strip_prefix("*.").is_some_and(|w| under_suffix(host, w)) {
                format!("wildcard domain [{d}] would cover the subdomains under [{host}]")
            } else if under_suffix(d, host) {
                format!("custom domain [{d}] belongs to the subdomain host [{host}]; ask for it with subdomain")
            } else {
                continue;
            };
            return refuse(Refusal::new(RefusalKind::DomainNotAllowed, why));
        }
    }
    let port = match scope {
        Scope::Standalone | Scope::NoPolicy => {
            let any = if server.allow_ports.is_empty() {
                PortSet::from_ranges(vec![AUTO_PORTS])
            } else {
                server.allow_ports.clone()
            };
            let allowed = |p| server.allow_ports.is_empty() || server.allow_ports.contains(p);
            choose(takes_port, wanted, any, allowed, |_| {
                Refusal::port_not_allowed()
            })
        }
        Scope::Node { node } => {
            let cap = node.max_proxies_per_session;
            let n = counts.session_proxies;
            if cap > 0 && n >= cap as usize {
                return refuse(Refusal::new(
                    RefusalKind::MaxProxiesPerSession,
                    format!("this session already has {n} of its {cap} proxies"),
                ));
            }
            node_pool(takes_port, wanted, node)
        }
        Scope::Tenant { node, tenant } => {
            let Some(t) = tenant else {
                return refuse(token_deleted());
            };
            if let Err(r) = tenant_usable(t) {
                return refuse(r);
            }
            let (cap, n) = (t.max_ports_per_client, counts.session_ports);
            if takes_port && cap > 0 && n >= cap as usize {
                return refuse(Refusal::new(
                    RefusalKind::MaxPortsPerClient,
                    format!("token allows {cap} ports per client (maxPortsPerClient) and this client has {n}"),
                ));
            }
            if t.allow_ports.is_empty() {
                node_pool(takes_port, wanted, node)
            } else {
                let set = t.allow_ports.to_set();
                let ports = t.allow_ports;
                choose(
                    takes_port,
                    wanted,
                    set,
                    |p| ports.contains(p),
                    |set| {
                        Refusal::new(
                            RefusalKind::PortNotAllowed,
                            format!("port {wanted} is not in the token's allowPorts ({set})"),
                        )
                    },
                )
            }
        }
        Scope::Invite { node, id, invite } => {
            let inv = match invite {
                None => return refuse(invite_unknown(*id)),
                Some(i) if i.revoked => return refuse(invite_revoked(*id)),
                Some(i) => i,
            };
            if !ty.is_some_and(|t| inv.proxy_types.contains(t)) {
                return refuse(Refusal::new(
                    RefusalKind::TypeNotAllowed,
                    format!(
                        "proxy type {name} is not allowed by invite {id} (allowed: {})",
                        inv.proxy_types
                    ),
                ));
            }
            if let Some(d) = req
                .domains
                .iter()
                .find(|d| Some(d.as_str()) != own_domain && !under_suffix(d, inv.domain_suffix))
            {
                return refuse(Refusal::new(
                    RefusalKind::DomainNotAllowed,
                    format!(
                        "domain {d} is not under {} (domain_suffix of invite {id})",
                        inv.domain_suffix
                    ),
                ));
            }
            let pool = inv.port_pool.to_set().intersect(&node.port_pool.to_set());
            let port = choose(
                takes_port,
                wanted,
                pool.clone(),
                |p| pool.contains(p),
                |pool| {
                    Refusal::new(
                        RefusalKind::PortNotAllowed,
                        format!("port {wanted} is not in the port pool of invite {id} ({pool})"),
                    )
                },
            );
            let (max, n) = (inv.max_proxies, counts.invite_proxies);
            if port.is_ok() && max > 0 && n >= max {
                return refuse(Refusal::new(
                    RefusalKind::InviteMaxProxies,
                    format!("invite {id} already has {n} of its {max} proxies (max_proxies)"),
                ));
            }
            port
        }
    };
    let port = match port {
        Ok(p) => p,
        Err(r) => return refuse(r),
    };
    match ty {
        Some(t) if supported.contains(t) => Ok(ProxyGrant {
            proxy_type: t,
            port,
        }),
        _ => refuse(Refusal::type_not_supported(name)),
    }
}

/// Whether a live session in `scope` may go on under the rules as they
/// stand now; the refusal to end it with otherwise.
pub fn still_allowed(scope: &Scope) -> Result<(), Refusal> {
    match scope {
        Scope::Standalone | Scope::NoPolicy => Ok(()),
        Scope::Node { node } if node.public => Ok(()),
        Scope::Node { .. } => Err(Refusal::new(
            RefusalKind::PrivateNode,
            "the node was made private: log in with a ticket from an invite",
        )),
        Scope::Invite { id, invite, .. } => match invite {
            None => Err(Refusal::new(
                RefusalKind::InviteUnknown,
                format!("invite {id} was removed from this node"),
            )
            .with_invite(Some(*id))),
            Some(i) if i.revoked => Err(invite_revoked(*id)),
            Some(_) => Ok(()),
        },
        Scope::Tenant { node, tenant } => match tenant {
            None => Err(token_deleted()),
            Some(t) if !t.enabled => Err(Refusal::new(
                RefusalKind::TokenDisabled,
                "token was disabled",
            )),
            Some(t) if t.region != node.region => Err(Refusal::new(
                RefusalKind::TokenWrongRegion,
                format!("token was moved to region {:?}", t.region),
            )),
            Some(t) if t.quota_closed => Err(over_quota()),
            Some(_) => Ok(()),
        },
    }
}

/// The port of a proxy whose pool is the node's.
fn node_pool(takes_port: bool, wanted: u16, node: &NodeRules) -> Result<PortChoice, Refusal> {
    let ports = node.port_pool;
    choose(
        takes_port,
        wanted,
        ports.to_set(),
        |p| ports.contains(p),
        |pool| {
            Refusal::new(
                RefusalKind::PortNotAllowed,
                format!("port {wanted} is not in this node's port pool ({pool})"),
            )
        },
    )
}

/// The port choice for a request of `wanted` (0 = any of `any`), where
/// `allowed` says which explicit ports may be had and `outside` words the
/// refusal of one that may not.
fn choose(
    takes_port: bool,
    wanted: u16,
    any: PortSet,
    allowed: impl Fn(u16) -> bool,
    outside: impl FnOnce(&PortSet) -> Refusal,
) -> Result<PortChoice, Refusal> {
    if !takes_port {
        Ok(PortChoice::NoPort)
    } else if wanted == 0 {
        Ok(PortChoice::AnyOf(any))
    } else if allowed(wanted) {
        Ok(PortChoice::Exactly(wanted))
    } else {
        Err(outside(&any))
    }
}

fn invite_unknown(id: InviteId) -> Refusal {
    Refusal::new(
        RefusalKind::InviteUnknown,
        format!("invite {id} is unknown to this node"),
    )
    .with_invite(Some(id))
}

fn invite_revoked(id: InviteId) -> Refusal {
    Refusal::new(
        RefusalKind::InviteRevoked,
        format!("invite {id} has been revoked"),
    )
    .with_invite(Some(id))
}

/// A tenant token may be used: enabled and not over a quota that closes.
fn tenant_usable(tenant: &TenantRules) -> Result<(), Refusal> {
    if !tenant.enabled {
        return Err(Refusal::new(
            RefusalKind::TokenDisabled,
            "token is disabled",
        ));
    }
    if tenant.quota_closed {
        return Err(over_quota());
    }
    Ok(())
}

fn token_deleted() -> Refusal {
    Refusal::new(RefusalKind::TokenDeleted, "token was deleted")
}

fn over_quota() -> Refusal {
    Refusal::new(
        RefusalKind::TokenOverQuota,
        "token has used up its traffic quota for this period",
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;
    use crate::policy::{InvitePolicy, NodePolicy, PolicySpec, TenantPolicy, TicketKey};
    use crate::ticket::{TicketClaims, ISSUER};

    const NOW: u64 = 1_700_000_000;
    const NODE: &str = "node_1";

    fn id(n: u128) -> InviteId {
        InviteId::from_u128(n)
    }
    const GOOD: u128 = 1;
    const REVOKED: u128 = 2;
    const MISSING: u128 = 3;

    fn ports(text: &str) -> PortSet {
        PortSet::parse(text).unwrap()
    }

    fn types(text: &str) -> ProxyTypes {
        ProxyTypes::parse(text).unwrap()
    }

    /// A table and a key that signs tickets the table trusts (kid "k1").
    struct Fixture {
        bytes: Vec<u8>,
        key: Ed25519KeyPair,
    }

    fn tenant(token: &str) -> TenantPolicy {
        TenantPolicy {
            token: token.into(),
            region: "eu".into(),
            enabled: true,
            allow_ports: PortSet::default(),
            max_ports_per_client: 2,
            bandwidth_bps: 0,
            over_quota: false,
            throttle_bps: 0,
            report_interval_bytes: 0,
        }
    }

    fn fixture(public: bool) -> Fixture {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public_key = [0; 32];
        public_key.copy_from_slice(key.public_key().as_ref());
        let invite = |n, revoked| InvitePolicy {
            id: id(n),
            revoked,
            expires_ms: 0,
            max_conns: 2,
            max_proxies: 3,
            proxy_types: types("tcp,http"),
            // 30000 is outside the node's pool: the invite gets the overlap.
            port_pool: ports("20000-20009,30000"),
            domain_suffix: String::new(),
            subdomain: String::new(),
        };
        let spec = PolicySpec {
            edge: Default::default(),
            mesh: Default::default(),
            generation: 1,
            created_ms: 0,
            node: NodePolicy {
                node_id: NODE.into(),
                region: "eu".into(),
                public,
                port_pool: ports("20000-20099"),
                proxy_types: types("tcp,udp,http"),
                max_proxies_per_session: 2,
                sub_domain_host: String::new(),
            },
            keys: vec![TicketKey {
                kid: "k1".into(),
                public_key,
            }],
            invites: vec![invite(GOOD, false), invite(REVOKED, true)],
            tenants: vec![
                tenant("t_ok"),
                TenantPolicy {
                    allow_ports: ports("40000-40010"),
                    ..tenant("t_allow")
                },
                TenantPolicy {
                    enabled: false,
                    ..tenant("t_off")
                },
                TenantPolicy {
                    over_quota: true,
                    ..tenant("t_quota")
                },
                TenantPolicy {
                    over_quota: true,
                    throttle_bps: 1000,
                    ..tenant("t_throttled")
                },
                TenantPolicy {
                    region: "us".into(),
                    ..tenant("t_us")
                },
            ],
        };
        Fixture {
            bytes: spec.encode(),
            key,
        }
    }

    impl Fixture {
        fn table(&self) -> PolicyTable<'_> {
            PolicyTable::parse(&self.bytes).unwrap()
        }

        fn ticket(&self, inv: &str, node: &str, kid: &str, iat: u64, exp: u64) -> String {
            let claims = TicketClaims {
                iss: ISSUER.into(),
                node: node.into(),
                inv: inv.into(),
                iat,
                exp,
                jti: "j".into(),
            };
            ticket::sign(&claims, kid, &self.key)
        }

        fn good(&self, n: u128) -> String {
            self.ticket(&id(n).to_string(), NODE, "k1", NOW - 10, NOW + 600)
        }
    }

    type Outcome<T> = Result<T, RefusalKind>;

    /// What, the ticket, the outcome, the invite the refusal names.
    type LoginCase = (
        &'static str,
        Option<String>,
        Outcome<NodeEntry>,
        Option<u128>,
    );

    /// What, the server's config, the session, the type, the port, the
    /// counts, the supported types, the outcome.
    type ProxyCase<'a> = (
        &'a str,
        &'a ServerRules,
        Scope<'a>,
        &'a str,
        u16,
        Counts,
        ProxyTypes,
        Outcome<PortChoice>,
    );

    fn kind_of<T>(r: Result<T, Refusal>) -> Outcome<T> {
        r.map_err(|e| e.kind)
    }

    /// Login over a table: every way in and every refusal. Returns the
    /// kinds it saw refused.
    fn login_cases() -> BTreeSet<RefusalKind> {
        use RefusalKind::*;
        let mut seen = BTreeSet::new();
        for public in [false, true] {
            let f = fixture(public);
            let t = f.table();
            let other_key = f.ticket(&id(GOOD).to_string(), NODE, "k9", NOW - 10, NOW + 600);
            let cases: Vec<LoginCase> = vec![
                (
                    "no ticket",
                    None,
                    if public {
                        Ok(NodeEntry::Public)
                    } else {
                        Err(PrivateNode)
                    },
                    None,
                ),
                (
                    "good ticket",
                    Some(f.good(GOOD)),
                    Ok(NodeEntry::Ticket(id(GOOD))),
                    None,
                ),
                (
                    "revoked invite",
                    Some(f.good(REVOKED)),
                    Err(InviteRevoked),
                    Some(REVOKED),
                ),
                (
                    "unknown invite",
                    Some(f.good(MISSING)),
                    Err(InviteUnknown),
                    Some(MISSING),
                ),
                (
                    "garbage",
                    Some("not-a-ticket".into()),
                    Err(TicketInvalid),
                    None,
                ),
                ("unknown key", Some(other_key), Err(TicketUnknownKey), None),
                (
                    "expired",
                    Some(f.ticket(&id(GOOD).to_string(), NODE, "k1", NOW - 100, NOW)),
                    Err(TicketExpired),
                    Some(GOOD),
                ),
                (
                    "other node",
                    Some(f.ticket(&id(GOOD).to_string(), "node_2", "k1", NOW, NOW + 60)),
                    Err(TicketWrongNode),
                    Some(GOOD),
                ),
                (
                    "bad invite id",
                    Some(f.ticket("inv_zz", NODE, "k1", NOW, NOW + 60)),
                    Err(TicketInvalid),
                    None,
                ),
            ];
            for (what, ticket, want, invite) in cases {
                let got = login(&t, ticket.as_deref(), NOW);
                if let Err(r) = &got {
                    assert_eq!(r.invite, invite.map(id), "{what}: {r:?}");
                    assert!(!r.detail.is_empty());
                    seen.insert(r.kind);
                }
                assert_eq!(kind_of(got), want, "{what} (public node: {public})");
            }
        }
        // Tampered signature: the claims part edited.
        let f = fixture(true);
        let good = f.good(GOOD);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1].insert(0, 'A');
        let r = login(&f.table(), Some(&parts.join(".")), NOW).unwrap_err();
        assert_eq!(r.kind, TicketInvalid, "{r}");
        seen
    }

    #[test]
    fn logins() {
        login_cases();
        let f = fixture(false);
        let r = login(&f.table(), None, NOW).unwrap_err();
        assert_eq!(
            r.to_string(),
            "this node is private: log in with a ticket from an invite (metadatas.ticket in frpc.toml)"
        );
        let r = login(&f.table(), Some(&f.good(REVOKED)), NOW).unwrap_err();
        assert_eq!(
            r.to_string(),
            format!("invite {} has been revoked", id(REVOKED))
        );
    }

    fn tenant_cases() -> BTreeSet<RefusalKind> {
        use RefusalKind::*;
        let f = fixture(false);
        let t = f.table();
        let node = NodeRules::from(t.node());
        let cases: [(&str, Outcome<()>); 6] = [
            ("t_ok", Ok(())),
            ("t_allow", Ok(())),
            ("t_throttled", Ok(())),
            ("t_off", Err(TokenDisabled)),
            ("t_quota", Err(TokenOverQuota)),
            ("t_us", Err(TokenWrongRegion)),
        ];
        let mut seen = BTreeSet::new();
        for (token, want) in cases {
            let rules = TenantRules::from(t.tenant(token).unwrap());
            let got = tenant_login(&node, &rules);
            if let Err(r) = &got {
                seen.insert(r.kind);
            }
            assert_eq!(kind_of(got), want, "{token}");
        }
        let r = tenant_login(&node, &t.tenant("t_us").unwrap().into()).unwrap_err();
        assert_eq!(
            r.to_string(),
            "token is for region \"us\"; this node serves region \"eu\""
        );
        seen
    }

    #[test]
    fn tenant_logins() {
        tenant_cases();
    }

    fn session_cases() -> BTreeSet<RefusalKind> {
        use RefusalKind::*;
        let f = fixture(false);
        let t = f.table();
        let rules = |n| t.invite(&id(n)).map(InviteRules::from);
        // (invite, live sessions, reconnect, outcome); max_conns is 2.
        let cases = [
            (GOOD, 0, false, Ok(())),
            (GOOD, 1, false, Ok(())),
            (GOOD, 2, false, Err(InviteMaxConns)),
            (GOOD, 2, true, Ok(())),
            (GOOD, 3, true, Err(InviteMaxConns)),
            (REVOKED, 0, false, Err(InviteRevoked)),
            (MISSING, 0, false, Err(InviteUnknown)),
        ];
        let mut seen = BTreeSet::new();
        for (n, live, reconnect, want) in cases {
            let got = invite_session(id(n), rules(n).as_ref(), live, reconnect);
            if let Err(r) = &got {
                assert_eq!(r.invite, Some(id(n)));
                seen.insert(r.kind);
            }
            assert_eq!(
                kind_of(got),
                want,
                "invite {n}, {live} live, reconnect {reconnect}"
            );
        }
        let r = invite_session(id(GOOD), rules(GOOD).as_ref(), 2, false).unwrap_err();
        assert!(
            r.detail
                .ends_with("already has 2 of its 2 concurrent sessions (max_conns)"),
            "{r}"
        );
        seen
    }

    #[test]
    fn invite_sessions() {
        session_cases();
    }

    fn proxy_cases() -> BTreeSet<RefusalKind> {
        use PortChoice::*;
        use RefusalKind::*;
        let f = fixture(true);
        let t = f.table();
        let node = NodeRules::from(t.node());
        let invite = |n| Scope::Invite {
            node,
            id: id(n),
            invite: t.invite(&id(n)).map(InviteRules::from),
        };
        let tenant = |token| Scope::Tenant {
            node,
            tenant: t.tenant(token).map(TenantRules::from),
        };
        let open = ServerRules::default();
        let strict = ServerRules {
            allow_ports: ports("7000-7009"),
            max_ports_per_client: 1,
        };
        let none = Counts::default();
        let one_port = Counts {
            session_proxies: 1,
            session_ports: 1,
            invite_proxies: 0,
        };
        let two = Counts {
            session_proxies: 2,
            session_ports: 2,
            invite_proxies: 3,
        };
        let tcp = ProxyTypes::only(ProxyType::Tcp);
        let all = ProxyTypes::ALL;
        let node_pool = || AnyOf(ports("20000-20099"));
        let inv_pool = || AnyOf(ports("20000-20009"));
        #[rustfmt::skip]
        let cases: Vec<ProxyCase> = vec![
            // Standalone: the config file's allowPorts, or AUTO_PORTS.
            ("standalone any", &open, Scope::Standalone, "tcp", 0, none, tcp, Ok(AnyOf(ports("10000-60000")))),
            ("standalone empty type is tcp", &open, Scope::Standalone, "", 0, none, tcp, Ok(AnyOf(ports("10000-60000")))),
            ("standalone explicit", &open, Scope::Standalone, "tcp", 22, none, tcp, Ok(Exactly(22))),
            ("allowPorts pick", &strict, Scope::Standalone, "tcp", 0, none, tcp, Ok(AnyOf(ports("7000-7009")))),
            ("allowPorts inside", &strict, Scope::Standalone, "tcp", 7005, none, tcp, Ok(Exactly(7005))),
            ("allowPorts outside", &strict, Scope::Standalone, "tcp", 7010, none, tcp, Err(PortNotAllowed)),
            ("maxPortsPerClient", &strict, Scope::Standalone, "tcp", 0, one_port, tcp, Err(MaxPortsPerClient)),
            ("port cap spares portless types", &strict, Scope::Standalone, "http", 0, one_port, all, Ok(NoPort)),
            ("not implemented", &open, Scope::Standalone, "udp", 0, none, tcp, Err(TypeNotSupported)),
            ("unknown type", &open, Scope::Standalone, "ftp", 0, none, all, Err(TypeNotSupported)),
            ("no table yet", &open, Scope::NoPolicy, "tcp", 0, none, tcp, Err(NoPolicy)),
            // Node token on a public node.
            ("node pick", &open, Scope::Node { node }, "tcp", 0, none, tcp, Ok(node_pool())),
            ("node inside", &open, Scope::Node { node }, "tcp", 20050, none, tcp, Ok(Exactly(20050))),
            ("node outside", &open, Scope::Node { node }, "tcp", 20100, none, tcp, Err(PortNotAllowed)),
            ("node type", &open, Scope::Node { node }, "https", 0, none, all, Err(TypeNotAllowed)),
            ("node unknown type", &open, Scope::Node { node }, "ftp", 0, none, all, Err(TypeNotAllowed)),
            ("node session cap", &open, Scope::Node { node }, "http", 0, two, all, Err(MaxProxiesPerSession)),
            ("node server cap", &strict, Scope::Node { node }, "tcp", 0, one_port, tcp, Err(MaxPortsPerClient)),
            ("node http port ignored", &open, Scope::Node { node }, "http", 9, none, all, Ok(NoPort)),
            ("node policy before support", &open, Scope::Node { node }, "https", 0, none, tcp, Err(TypeNotAllowed)),
            ("node udp not implemented", &open, Scope::Node { node }, "udp", 0, none, tcp, Err(TypeNotSupported)),
            // Ticket: the invite's types and its pool within the node's.
            ("invite pick", &open, invite(GOOD), "tcp", 0, none, tcp, Ok(inv_pool())),
            ("invite inside", &open, invite(GOOD), "tcp", 20009, none, tcp, Ok(Exactly(20009))),
            ("invite outside node", &open, invite(GOOD), "tcp", 30000, none, tcp, Err(PortNotAllowed)),
            ("invite outside its pool", &open, invite(GOOD), "tcp", 20010, none, tcp, Err(PortNotAllowed)),
            ("invite type", &open, invite(GOOD), "udp", 20001, none, all, Err(TypeNotAllowed)),
            ("invite max_proxies", &open, invite(GOOD), "tcp", 0, two, tcp, Err(InviteMaxProxies)),
            ("invite port before cap", &open, invite(GOOD), "tcp", 20010, two, tcp, Err(PortNotAllowed)),
            ("invite revoked", &open, invite(REVOKED), "tcp", 0, none, tcp, Err(InviteRevoked)),
            ("invite gone", &open, invite(MISSING), "tcp", 0, none, tcp, Err(InviteUnknown)),
            ("invite http", &open, invite(GOOD), "http", 0, none, all, Ok(NoPort)),
            ("invite http not implemented", &open, invite(GOOD), "http", 0, none, tcp, Err(TypeNotSupported)),
            // Tenant token: its allowPorts replace the node's pool; its cap
            // replaces the server's.
            ("tenant pick", &open, tenant("t_ok"), "tcp", 0, none, tcp, Ok(node_pool())),
            ("tenant outside node", &open, tenant("t_ok"), "tcp", 20100, none, tcp, Err(PortNotAllowed)),
            ("tenant allowPorts pick", &open, tenant("t_allow"), "tcp", 0, none, tcp, Ok(AnyOf(ports("40000-40010")))),
            ("tenant allowPorts inside", &open, tenant("t_allow"), "tcp", 40000, none, tcp, Ok(Exactly(40000))),
            ("tenant allowPorts outside", &open, tenant("t_allow"), "tcp", 20000, none, tcp, Err(PortNotAllowed)),
            ("tenant cap", &open, tenant("t_ok"), "tcp", 0, two, tcp, Err(MaxPortsPerClient)),
            ("tenant cap replaces server's", &strict, tenant("t_ok"), "tcp", 0, one_port, tcp, Ok(node_pool())),
            ("tenant cap spares http", &open, tenant("t_ok"), "http", 0, two, all, Ok(NoPort)),
            ("tenant disabled", &open, tenant("t_off"), "tcp", 0, none, tcp, Err(TokenDisabled)),
            ("tenant over quota", &open, tenant("t_quota"), "tcp", 0, none, tcp, Err(TokenOverQuota)),
            ("tenant throttled", &open, tenant("t_throttled"), "tcp", 0, none, tcp, Ok(node_pool())),
            ("tenant deleted", &open, tenant("t_gone"), "tcp", 0, none, tcp, Err(TokenDeleted)),
            ("tenant node type", &open, tenant("t_ok"), "https", 0, none, all, Err(TypeNotAllowed)),
        ];
        let mut seen = BTreeSet::new();
        for (what, server, scope, ty, port, counts, supported, want) in cases {
            let req = ProxyRequest {
                proxy_type: ty,
                remote_port: port,
                domains: &[],
                subdomain: None,
                sub_domain_host: "",
            };
            let got = proxy(server, &scope, &req, &counts, supported);
            if let Err(r) = &got {
                seen.insert(r.kind);
                let invite = match scope {
                    Scope::Invite { id, .. } => Some(id),
                    _ => None,
                };
                assert_eq!(r.invite, invite, "{what}");
            }
            if let Ok(g) = &got {
                let name = if ty.is_empty() { "tcp" } else { ty };
                assert_eq!(g.proxy_type.name(), name, "{what}");
            }
            assert_eq!(kind_of(got).map(|g| g.port), want, "{what}");
        }
        // An invite's domain_suffix bounds its vhost proxies' domains.
        let suffixed = Scope::Invite {
            node,
            id: id(GOOD),
            invite: t.invite(&id(GOOD)).map(|v| InviteRules {
                domain_suffix: ".T.example.net",
                ..InviteRules::from(v)
            }),
        };
        for (domains, ok) in [
            (
                &["t.example.net".to_string(), "a.t.example.net".to_string()][..],
                true,
            ),
            (
                &["a.t.example.net".to_string(), "xt.example.net".to_string()][..],
                false,
            ),
            (&["example.net".to_string()][..], false),
            (&[][..], true),
        ] {
            let req = ProxyRequest {
                proxy_type: "http",
                remote_port: 0,
                domains,
                subdomain: None,
                sub_domain_host: "",
            };
            match proxy(&open, &suffixed, &req, &none, all) {
                Ok(g) => assert!(ok, "{domains:?} allowed: {g:?}"),
                Err(r) => {
                    assert!(!ok, "{domains:?} refused: {r}");
                    assert_eq!(r.kind, DomainNotAllowed);
                    assert!(
                        r.detail
                            .contains("is not under .T.example.net (domain_suffix of invite"),
                        "{r}"
                    );
                    seen.insert(r.kind);
                }
            }
        }
        // A label reserved for invite GOOD: its own (even outside its
        // domain_suffix), nobody else's, whatever else would allow it.
        let domains = ["ab12.node.example.com".to_string()];
        let reserved = |owner| ProxyRequest {
            proxy_type: "http",
            remote_port: 0,
            domains: &domains,
            subdomain: Some(Subdomain {
                label: "ab12",
                domain: "ab12.node.example.com",
                reserved_by: owner,
            }),
            sub_domain_host: "node.example.com",
        };
        let got = proxy(&open, &suffixed, &reserved(Some(id(GOOD))), &none, all);
        assert_eq!(kind_of(got).map(|g| g.port), Ok(NoPort));
        // Unreserved, the suffix applies.
        let got = proxy(&open, &suffixed, &reserved(None), &none, all);
        assert_eq!(got.unwrap_err().kind, DomainNotAllowed);
        let other = InviteId([7; 16]);
        for scope in [suffixed, invite(GOOD), Scope::Node { node }, tenant("t_ok")] {
            let r = proxy(&open, &scope, &reserved(Some(other)), &none, all).unwrap_err();
            assert_eq!(r.kind, DomainNotAllowed, "{scope:?}");
            assert_eq!(
                r.detail,
                "subdomain [ab12] is reserved for an invite on this node"
            );
        }
        // No custom domain under the subdomain host, no wildcard covering
        // it, for any governed session (the owner's own label aside).
        for (d, ok) in [
            ("AB12.node.example.com", false),
            ("x.node.example.com", false),
            ("*.example.com", false),
            ("*.com", false),
            ("*", false),
            ("*.other.example.com", true),
            ("node.example.com.evil", true),
        ] {
            let domains = [d.to_ascii_lowercase()];
            let req = ProxyRequest {
                proxy_type: "http",
                remote_port: 0,
                domains: &domains,
                subdomain: None,
                sub_domain_host: "node.example.com",
            };
            for scope in [Scope::Node { node }, tenant("t_ok"), invite(GOOD)] {
                let got = proxy(&open, &scope, &req, &none, all);
                assert_eq!(got.is_ok(), ok, "{d} in {scope:?}: {got:?}");
                if let Err(r) = got {
                    assert_eq!(r.kind, DomainNotAllowed);
                }
            }
            // A standalone server keeps frps's rules.
            assert!(
                proxy(&open, &Scope::Standalone, &req, &none, all).is_ok(),
                "{d}"
            );
        }
        // The words frpc users read.
        let words = |server, scope, ty, port, counts, supported| {
            let req = ProxyRequest {
                proxy_type: ty,
                remote_port: port,
                domains: &[],
                subdomain: None,
                sub_domain_host: "",
            };
            proxy(server, &scope, &req, &counts, supported)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            words(&strict, Scope::Standalone, "tcp", 1, none, tcp),
            "port not allowed"
        );
        assert_eq!(
            words(&strict, Scope::Standalone, "tcp", 0, one_port, tcp),
            "exceed the max_ports_per_client"
        );
        assert_eq!(
            words(&open, Scope::Standalone, "xtcp", 0, none, tcp),
            "proxy type [xtcp] is not supported by this server yet"
        );
        assert_eq!(
            words(&open, Scope::Node { node }, "tcp", 20100, none, tcp),
            "port 20100 is not in this node's port pool (20000-20099)"
        );
        assert_eq!(
            words(&open, invite(GOOD), "udp", 0, none, all),
            format!(
                "proxy type udp is not allowed by invite {} (allowed: tcp,http)",
                id(GOOD)
            )
        );
        assert_eq!(
            words(&open, invite(GOOD), "tcp", 30000, none, tcp),
            format!(
                "port 30000 is not in the port pool of invite {} (20000-20009)",
                id(GOOD)
            )
        );
        assert_eq!(
            words(&open, tenant("t_allow"), "tcp", 1, none, tcp),
            "port 1 is not in the token's allowPorts (40000-40010)"
        );
        assert_eq!(
            words(&open, tenant("t_ok"), "udp", 0, two, all),
            "token allows 2 ports per client (maxPortsPerClient) and this client has 2"
        );
        seen
    }

    #[test]
    fn proxies() {
        proxy_cases();
        assert_eq!(remote_port(0), Ok(0));
        assert_eq!(remote_port(65535), Ok(65535));
        for bad in [-1, 65536] {
            let r = remote_port(bad).unwrap_err();
            assert_eq!(r.kind, RefusalKind::InvalidProxy);
            assert_eq!(r.to_string(), format!("remote port {bad} is out of range"));
        }
    }

    fn still_allowed_cases() -> BTreeSet<RefusalKind> {
        use RefusalKind::*;
        let mut seen = BTreeSet::new();
        for public in [true, false] {
            let f = fixture(public);
            let t = f.table();
            let node = NodeRules::from(t.node());
            let invite = |n| Scope::Invite {
                node,
                id: id(n),
                invite: t.invite(&id(n)).map(InviteRules::from),
            };
            let tenant = |token| Scope::Tenant {
                node,
                tenant: t.tenant(token).map(TenantRules::from),
            };
            let cases: Vec<(&str, Scope, Outcome<()>)> = vec![
                ("standalone", Scope::Standalone, Ok(())),
                ("no table", Scope::NoPolicy, Ok(())),
                (
                    "node",
                    Scope::Node { node },
                    if public { Ok(()) } else { Err(PrivateNode) },
                ),
                ("invite", invite(GOOD), Ok(())),
                ("revoked", invite(REVOKED), Err(InviteRevoked)),
                ("removed", invite(MISSING), Err(InviteUnknown)),
                ("tenant", tenant("t_ok"), Ok(())),
                ("throttled", tenant("t_throttled"), Ok(())),
                ("disabled", tenant("t_off"), Err(TokenDisabled)),
                ("quota", tenant("t_quota"), Err(TokenOverQuota)),
                ("moved", tenant("t_us"), Err(TokenWrongRegion)),
                ("deleted", tenant("t_gone"), Err(TokenDeleted)),
            ];
            for (what, scope, want) in cases {
                let got = still_allowed(&scope);
                if let Err(r) = &got {
                    seen.insert(r.kind);
                }
                assert_eq!(kind_of(got), want, "{what} (public: {public})");
            }
            let r = still_allowed(&tenant("t_us")).unwrap_err();
            assert_eq!(r.to_string(), "token was moved to region \"us\"");
            let r = still_allowed(&invite(MISSING)).unwrap_err();
            assert_eq!(r.invite, Some(id(MISSING)));
            assert!(r.detail.ends_with("was removed from this node"), "{r}");
        }
        seen
    }

    #[test]
    fn live_sessions() {
        still_allowed_cases();
    }

    fn metas_cases() -> BTreeSet<RefusalKind> {
        let metas = |n: usize, len: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("k{i:03}"), "v".repeat(len)))
                .collect()
        };
        assert!(login_metas(&metas(0, 0)).is_ok());
        assert!(login_metas(&metas(MAX_LOGIN_METAS, 1)).is_ok());
        // 4-byte keys: 2 entries of 4092 bytes are exactly the cap.
        assert!(login_metas(&metas(2, MAX_LOGIN_METAS_BYTES / 2 - 4)).is_ok());
        let mut seen = BTreeSet::new();
        for m in [
            metas(MAX_LOGIN_METAS + 1, 1),
            metas(2, MAX_LOGIN_METAS_BYTES / 2),
        ] {
            let r = login_metas(&m).unwrap_err();
            assert!(r.detail.contains("(metadatas in frpc.toml)"), "{r}");
            seen.insert(r.kind);
        }
        seen
    }

    #[test]
    fn metas() {
        assert_eq!(
            metas_cases().into_iter().collect::<Vec<_>>(),
            [RefusalKind::LoginMetas]
        );
    }

    /// Every kind is reached by a case above, or (the ones the fastpath
    /// gives outside a decision: token matching, claiming names and ports)
    /// by its constructor, which keeps frps's words.
    #[test]
    fn every_refusal_kind_is_covered() {
        let mut seen = BTreeSet::new();
        for s in [
            login_cases(),
            tenant_cases(),
            session_cases(),
            proxy_cases(),
            still_allowed_cases(),
            metas_cases(),
        ] {
            seen.extend(s);
        }
        let outside: [(Refusal, &str); 9] = [
            (
                Refusal::token_mismatch(),
                "token in login doesn't match token from configuration",
            ),
            (
                Refusal::work_conn_token_mismatch(),
                "token in NewWorkConn doesn't match token from configuration",
            ),
            (Refusal::server_busy(), "the server is busy checking logins whose timestamp is far from its clock; retry shortly"),
            (Refusal::invalid_proxy("proxy name is empty"), "proxy name is empty"),
            (Refusal::proxy_exists("a.b"), "proxy [a.b] already exists"),
            (Refusal::port_already_used(), "port already used"),
            (
                Refusal::port_unavailable("Address in use"),
                "port unavailable: Address in use",
            ),
            (Refusal::no_available_port(), "no available port"),
            (
                Refusal::route_conflict("a.example.com"),
                "router config conflict: a.example.com",
            ),
        ];
        for (r, words) in outside {
            assert_eq!(r.to_string(), words);
            seen.insert(r.kind);
        }
        let missing: Vec<_> = RefusalKind::ALL
            .iter()
            .filter(|k| !seen.contains(k))
            .collect();
        assert!(missing.is_empty(), "no test reaches {missing:?}");
    }
}
