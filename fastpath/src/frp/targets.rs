//! Where a virtual-host route leads ([`VhostTarget`]), and load-balancing
//! groups of them (frpc's `loadBalancer.group` / `groupKey`), as frps
//! keeps them: proxies of one type that name the same group share
//! what one proxy would hold alone, and the group's key admits them.
//!
//! - `http`: the group holds the routes of its first proxy (domains ×
//!   locations × `routeByHTTPUser`, and that proxy's rewrites and
//!   credentials, as frps keeps the first route config); a request that
//!   needs a new work connection takes the next member in turn.
//! - `tcp`: the members share one remote port; each binds it with
//!   SO_REUSEPORT and the kernel spreads connections among them (by a hash
//!   of the connection's addresses, not in strict turn as frps's shared
//!   listener does). The port is released with the last member.
//!
//! A proxy that asks for other routes or another port than the group has
//! is refused with frps's "group params invalid" / "group should have same
//! remote port", a wrong key with "group auth failed".
//!
//! Groups are per owner: the sessions of one invite, of one tenant, or
//! (standalone, or a public node's token) of the node. Another invite or
//! tenant naming the same group makes a group of its own, so it can never
//! take a share of another's traffic, whatever the key. On a public node
//! every stranger holds the token: there, a group needs a `groupKey`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use proto::policy::{ProxyType, Refusal};

use crate::policy::Grant;

/// Where a virtual-host route leads: a proxy of a session on a worker. A
/// connection for it that lands on another worker moves there.
#[derive(Debug, Clone)]
pub struct VhostTarget {
    /// The worker that owns the session.
    pub worker: usize,
    /// The session: its run_id, and its control id (a session that
    /// replaced it under the same run_id is not it).
    pub run_id: Arc<str>,
    pub control_id: u64,
    /// The proxy's full name.
    pub proxy: Arc<str>,
    /// The user and password a connection must present (tcpmux:
    /// Proxy-Authorization, http: Authorization), when the proxy sets
    /// `httpUser`.
    pub credentials: Option<Arc<(String, String)>>,
    /// An `http` proxy's head rewrites.
    pub http: Option<Arc<HttpEdits>>,
    /// The load-balancing group the route belongs to: a request takes
    /// one of its members in turn (an `http` group's route names its
    /// first member).
    pub group: Option<Arc<Group>>,
}

/// What an `http` proxy changes in the heads it carries.
#[derive(Debug, Default)]
pub struct HttpEdits {
    /// `hostHeaderRewrite` (empty: none).
    pub host: String,
    /// `requestHeaders.set`.
    pub request: Vec<(String, String)>,
    /// `responseHeaders.set`.
    pub response: Vec<(String, String)>,
}

/// What every member of a group must ask for alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    /// An http group's routes.
    Http {
        domains: Vec<String>,
        locations: Vec<String>,
        user: String,
    },
    /// A tcp group's `remotePort` as asked (0: any).
    Tcp { asked: u16 },
}

/// One group.
#[derive(Debug)]
pub struct Group {
    id: GroupId,
    key: String,
    params: Params,
    /// The members, in the order they joined.
    members: parking_lot::RwLock<Vec<VhostTarget>>,
    next: AtomicUsize,
    /// A tcp group's port, once its first member bound it.
    port: AtomicU16,
}

impl Group {
    /// A tcp group's port (0 until its first member bound it).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Acquire)
    }

    /// Set by the first member, in [`Groups::join`]'s `create`.
    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Release);
    }

    /// The member whose turn it is, or `keep` when it is still a member
    /// (a work connection kept for it serves on).
    pub fn choose(&self, keep: Option<&str>) -> Option<VhostTarget> {
        let members = self.members.read();
        if let Some(k) = keep {
            if let Some(m) = members.iter().find(|m| &*m.proxy == k) {
                return Some(m.clone());
            }
        }
        if members.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % members.len();
        Some(members[i].clone())
    }
}

/// Where a route leads: its own proxy, or, for a group's route, the
/// member whose turn it is (`keep` when it is a member still), with the
/// route's credentials and rewrites. None: the group has just emptied.
pub fn resolve(route: VhostTarget, keep: Option<&str>) -> Option<VhostTarget> {
    let Some(g) = &route.group else {
        return Some(route);
    };
    let m = g.choose(keep)?;
    Some(VhostTarget {
        worker: m.worker,
        run_id: m.run_id,
        control_id: m.control_id,
        proxy: m.proxy,
        group: None,
        ..route
    })
}

/// The groups of the server, all workers'.
#[derive(Debug, Default)]
pub struct Groups {
    by_name: parking_lot::Mutex<HashMap<GroupId, Arc<Group>>>,
}

/// A group's identity: its type, its owner and its name.
type GroupId = (ProxyType, Grant, String);

impl Groups {
    /// Join `member` to group `name` of `kind` with what it asks for
    /// (`params`), or create the group with it: then `create` takes what
    /// the group shares (adds the routes, binds the port), under the
    /// registry's lock, so that two first members cannot both create it.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        kind: ProxyType,
        owner: Grant,
        name: &str,
        key: &str,
        params: Params,
        member: VhostTarget,
        create: impl FnOnce(&Arc<Group>) -> Result<(), Refusal>,
    ) -> Result<Arc<Group>, Refusal> {
        if owner == Grant::Node && key.is_empty() {
            return Err(Refusal::invalid_proxy(
                "loadBalancer.groupKey is required for a group on a public node",
            ));
        }
        let id = (kind, owner, name.to_string());
        let mut by_name = self.by_name.lock();
        if let Some(g) = by_name.get(&id) {
            if g.params != params {
                return Err(Refusal::invalid_proxy(match params {
                    Params::Tcp { .. } => "group should have same remote port",
                    Params::Http { .. } => "group params invalid",
                }));
            }
            if g.key != key {
                return Err(Refusal::invalid_proxy("group auth failed"));
            }
            let mut members = g.members.write();
            if members.iter().any(|m| m.proxy == member.proxy) {
                return Err(Refusal::invalid_proxy("group proxy repeated"));
            }
            members.push(member);
            return Ok(g.clone());
        }
        let g = Arc::new(Group {
            id: id.clone(),
            key: key.to_string(),
            params,
            members: parking_lot::RwLock::new(vec![member]),
            next: AtomicUsize::new(0),
            port: AtomicU16::new(0),
        });
        create(&g)?;
        by_name.insert(id, g.clone());
        Ok(g)
    }

    /// Take proxy `proxy` out of `group`; true when it was the last
    /// member: the group is gone, and the caller lets go of what it
    /// shared (routes, port).
    pub fn leave(&self, group: &Group, proxy: &str) -> bool {
        let mut by_name = self.by_name.lock();
        let mut members = group.members.write();
        members.retain(|m| &*m.proxy != proxy);
        if !members.is_empty() {
            return false;
        }
        if by_name
            .get(&group.id)
            .is_some_and(|g| std::ptr::eq(Arc::as_ptr(g), group))
        {
            by_name.remove(&group.id);
        }
        true
    }
}

/// A target of proxy `p` on worker 0, for tests.
#[cfg(test)]
pub fn test_target(p: &str) -> VhostTarget {
    VhostTarget {
        worker: 0,
        run_id: Arc::from("r"),
        control_id: 1,
        proxy: Arc::from(p),
        credentials: None,
        http: None,
        group: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Grant = Grant::Standalone;

    fn member(p: &str) -> VhostTarget {
        test_target(p)
    }

    fn http(domain: &str) -> Params {
        Params::Http {
            domains: vec![domain.into()],
            locations: vec![String::new()],
            user: String::new(),
        }
    }

    #[test]
    fn members_join_with_the_key_and_take_turns() {
        let groups = Groups::default();
        let mut created = 0;
        let mut join = |name: &str, key: &str, params: Params| {
            groups.join(
                ProxyType::Http,
                OWNER,
                "web",
                key,
                params,
                member(name),
                |_| {
                    created += 1;
                    Ok(())
                },
            )
        };
        let g = join("one", "k", http("a.com")).unwrap();
        join("two", "k", http("a.com")).unwrap();
        let e = |r: Result<Arc<Group>, Refusal>| r.unwrap_err().detail;
        assert_eq!(
            e(join("three", "wrong", http("a.com"))),
            "group auth failed"
        );
        assert_eq!(e(join("three", "k", http("b.com"))), "group params invalid");
        assert_eq!(e(join("two", "k", http("a.com"))), "group proxy repeated");
        assert_eq!(created, 1);
        let picks: Vec<_> = (0..4)
            .map(|_| g.choose(None).unwrap().proxy.to_string())
            .collect();
        assert_eq!(picks, ["one", "two", "one", "two"]);
        assert_eq!(&*g.choose(Some("two")).unwrap().proxy, "two");
        assert!(!groups.leave(&g, "one"));
        assert_eq!(&*g.choose(Some("one")).unwrap().proxy, "two");
        assert!(groups.leave(&g, "two"));
        assert!(g.choose(None).is_none());
        // Gone: the next proxy creates it anew.
        let g2 = groups
            .join(
                ProxyType::Http,
                OWNER,
                "web",
                "other",
                http("a.com"),
                member("x"),
                |_| Ok(()),
            )
            .unwrap();
        assert!(!Arc::ptr_eq(&g, &g2));
    }

    #[test]
    fn tcp_members_share_the_port_they_asked_for() {
        let groups = Groups::default();
        let asked = |a| Params::Tcp { asked: a };
        let g = groups
            .join(
                ProxyType::Tcp,
                OWNER,
                "db",
                "",
                asked(0),
                member("a"),
                |g| {
                    g.set_port(6000);
                    Ok(())
                },
            )
            .unwrap();
        let fail = |_: &Arc<Group>| -> Result<(), Refusal> { panic!("created twice") };
        let g2 = groups
            .join(ProxyType::Tcp, OWNER, "db", "", asked(0), member("b"), fail)
            .unwrap();
        assert_eq!(g2.port(), 6000);
        let e = groups
            .join(
                ProxyType::Tcp,
                OWNER,
                "db",
                "",
                asked(7000),
                member("c"),
                fail,
            )
            .unwrap_err();
        assert_eq!(e.detail, "group should have same remote port");
        // A first member that fails to create leaves no group behind.
        let tcp_x = |m: &str, ok: bool| {
            groups.join(ProxyType::Tcp, OWNER, "x", "", asked(0), member(m), |_| {
                if ok {
                    Ok(())
                } else {
                    Err(Refusal::port_already_used())
                }
            })
        };
        assert_eq!(tcp_x("d", false).unwrap_err().detail, "port already used");
        tcp_x("e", true).unwrap();
        // Another type's group of the same name is another group.
        groups
            .join(
                ProxyType::Http,
                OWNER,
                "db",
                "",
                http("a.com"),
                member("f"),
                |_| Ok(()),
            )
            .unwrap();
        assert!(!groups.leave(&g, "a"));
        assert!(groups.leave(&g, "b"));
    }

    #[test]
    fn owners_have_groups_of_their_own() {
        let groups = Groups::default();
        let inv = |n| Grant::Invite(proto::policy::InviteId::from_u128(n));
        let join = |owner, key: &str, m: &str| {
            groups.join(
                ProxyType::Http,
                owner,
                "web",
                key,
                http("a.com"),
                member(m),
                |_| Ok(()),
            )
        };
        let a = join(inv(1), "", "a").unwrap();
        // Another invite with the same name and key: a group of its own,
        // never a member of the first.
        let b = join(inv(2), "", "b").unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(&*a.choose(None).unwrap().proxy, "a");
        assert_eq!(&*a.choose(None).unwrap().proxy, "a");
        // A tenant likewise; the node's token needs a key.
        assert!(!Arc::ptr_eq(&a, &join(Grant::Tenant(7), "", "c").unwrap()));
        let e = join(Grant::Node, "", "d").unwrap_err();
        assert!(e.detail.contains("groupKey is required"), "{}", e.detail);
        join(Grant::Node, "k", "d").unwrap();
    }
}

/// A secret proxy, as visitors find it.
#[derive(Debug, Clone)]
pub struct SecretProxy {
    /// `stcp`, `sudp` or `xtcp`.
    pub kind: ProxyType,
    /// The worker of its session.
    pub worker: usize,
    /// Its session's control there.
    pub control_id: u64,
    /// `secretKey`.
    pub sk: String,
    /// The invite of its session, for the audit of its visitors.
    pub invite: Option<proto::policy::InviteId>,
    /// Users whose visitors may connect: `allowUsers`, or the proxy's own
    /// user when it gave none; `*` is anyone.
    pub allow_users: Vec<String>,
}

/// The secret proxies of all workers, by full name.
#[derive(Default)]
pub struct Visitors {
    proxies: parking_lot::RwLock<HashMap<String, SecretProxy>>,
}

impl Visitors {
    /// A secret proxy registered (its name is claimed already).
    pub fn add(&self, name: &str, p: SecretProxy) {
        self.proxies.write().insert(name.to_owned(), p);
    }

    /// It closed.
    pub fn remove(&self, name: &str) {
        self.proxies.write().remove(name);
    }

    /// The secret proxy of this name.
    pub fn get(&self, name: &str) -> Option<SecretProxy> {
        self.proxies.read().get(name).cloned()
    }
}

/// An xtcp attempt that waits for the owner's NatHoleClient.
#[derive(Debug, Clone)]
pub struct XtcpPending {
    /// What the visitor asked, with its mapped addresses.
    pub visitor: proto::msg::NatHoleVisitor,
    /// Where the visitor's session lives: worker and control.
    pub visitor_at: (usize, u64),
    /// Where the proxy's owner lives: worker and control.
    pub owner_at: (usize, u64),
    /// When the owner's answer is no longer awaited.
    pub expires: std::time::Instant,
}

/// The xtcp broker's state, shared by the workers: attempts waiting for
/// the owner, attempts decided (to credit a reported success), and what
/// was learned per pair of NATs.
#[derive(Default)]
pub struct XtcpBroker {
    /// By sid.
    pub pending: parking_lot::Mutex<HashMap<String, XtcpPending>>,
    /// By sid, until the attempt's outcome can no longer be reported.
    pub decided: parking_lot::Mutex<HashMap<String, (proto::nathole::Attempt, std::time::Instant)>>,
    /// Scores per pair of NATs.
    pub analyzer: parking_lot::Mutex<proto::nathole::Analyzer>,
}
