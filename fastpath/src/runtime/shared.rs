//! The little state all workers share. Everything here is on a cold path
//! (login, proxy registration, a work connection landing on the wrong
//! worker); nothing here is touched per byte or per chunk.
//!
//! - [`PortTable`]: which public ports are taken, lock-free, unique across
//!   workers.
//! - [`Directory`]: which worker owns which client session (`run_id`) and
//!   which proxy names are in use server-wide.
//! - the vhost route tables ([`VhostTarget`](crate::frp::targets::VhostTarget)
//!   payloads) and load-balancing groups: which proxy (on which worker)
//!   serves a virtual host, read once per new connection or request.
//! - [`Inbox`]: the per-worker channel other workers use to hand over a file
//!   descriptor or a command.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::Config;
use crate::policy::Grant;
use crate::report::stats::WorkerStats;
use crate::transport::handoff::WorkerMsg;

/// Lock-free set of taken ports: one bit per port.
pub struct PortTable {
    bits: Vec<AtomicU64>,
}

impl Default for PortTable {
    fn default() -> Self {
        PortTable {
            bits: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PortTable {
    /// Claim `port`; false if someone holds it.
    pub fn claim(&self, port: u16) -> bool {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        self.bits[w].fetch_or(b, Ordering::AcqRel) & b == 0
    }

    /// Give `port` back.
    pub fn release(&self, port: u16) {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        self.bits[w].fetch_and(!b, Ordering::AcqRel);
    }

    /// Whether `port` is held.
    pub fn is_taken(&self, port: u16) -> bool {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        self.bits[w].load(Ordering::Acquire) & b != 0
    }
}

/// Where a client session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRef {
    /// Worker that owns the session.
    pub worker: usize,
    /// Unique id of the control on that worker (distinguishes a replaced
    /// session from its successor with the same run_id).
    pub control_id: u64,
}

/// A session in the directory: where it lives, and the grant it logged in
/// on, which names the credential its run_id belongs to.
struct SessionEntry {
    at: SessionRef,
    owner: Grant,
    /// Its Login's `user`: who its visitor connections speak for
    /// (`allowUsers` of stcp/sudp proxies).
    user: String,
}

/// What [`Directory::register`] did for a login.
#[derive(Debug, PartialEq, Eq)]
pub struct Registered {
    /// The session's run_id: the one the Login asked for, or a fresh one
    /// when that run_id belongs to another credential.
    pub run_id: String,
    /// The session of the same credential this login replaces (a
    /// reconnect); its owner must close it.
    pub replaced: Option<SessionRef>,
}

/// Server-wide names: sessions by run_id, proxies by name.
#[derive(Default)]
pub struct Directory {
    sessions: Mutex<HashMap<String, SessionEntry>>,
    proxies: Mutex<HashSet<String>>,
}

impl Directory {
    /// Register the session `at`, logged in on `owner`, under the run_id
    /// its Login asked for (`wanted`, empty for a first login).
    ///
    /// The one place that decides whether a login is a reconnect. A run_id
    /// belongs to the credential that opened it (an invite, a tenant token,
    /// the node token; [`Grant`] equality, a tenant's handle being one for
    /// as long as any of its sessions lives): a live run_id of the same
    /// credential is a reconnect and the old session is replaced; a live
    /// run_id of another credential is never touched, and the login gets a
    /// fresh run_id instead (frpc uses the one LoginResp returns); a free
    /// one is taken as asked, as frps does after a restart.
    ///
    /// `admit(reconnect)` counts the session against its credential's
    /// limits (a reconnect does not count twice). It runs under this
    /// directory's lock, so two logins racing for one run_id or one
    /// invite's last slot are decided one after the other; on refusal
    /// nothing is registered. Lock order: directory, then the policy's.
    pub fn register<E>(
        &self,
        wanted: &str,
        owner: Grant,
        user: &str,
        at: SessionRef,
        admit: impl FnOnce(bool) -> Result<(), E>,
    ) -> Result<Registered, E> {
        let mut map = self.sessions.lock();
        let (run_id, reconnect) = match map.get(wanted) {
            _ if wanted.is_empty() => (fresh_run_id(&map), false),
            Some(e) if e.owner == owner => (wanted.to_owned(), true),
            Some(_) => (fresh_run_id(&map), false),
            None => (wanted.to_owned(), false),
        };
        admit(reconnect)?;
        let replaced = map
            .insert(
                run_id.clone(),
                SessionEntry {
                    at,
                    owner,
                    user: user.to_owned(),
                },
            )
            .map(|old| old.at);
        Ok(Registered { run_id, replaced })
    }

    /// Remove a session if it is still the one registered under run_id.
    pub fn remove_session(&self, run_id: &str, at: SessionRef) {
        let mut map = self.sessions.lock();
        if map.get(run_id).is_some_and(|e| e.at == at) {
            map.remove(run_id);
        }
    }

    /// Where the session with this run_id lives.
    pub fn find_session(&self, run_id: &str) -> Option<SessionRef> {
        self.sessions.lock().get(run_id).map(|e| e.at)
    }

    /// The Login `user` of the session with this run_id.
    pub fn session_user(&self, run_id: &str) -> Option<String> {
        self.sessions.lock().get(run_id).map(|e| e.user.clone())
    }

    /// Reserve a proxy name server-wide; false if it exists.
    pub fn claim_proxy(&self, name: &str) -> bool {
        self.proxies.lock().insert(name.to_owned())
    }

    /// Free a proxy name.
    pub fn release_proxy(&self, name: &str) {
        self.proxies.lock().remove(name);
    }
}

/// A run_id no live session has (64 random bits: a clash is all but
/// impossible, but a clash would hand over a session, so it is checked).
fn fresh_run_id(live: &HashMap<String, SessionEntry>) -> String {
    loop {
        let id = proto::auth::new_run_id();
        if !live.contains_key(&id) {
            return id;
        }
    }
}

/// Sending side of a worker's inbox.
pub type Inbox = flume::Sender<WorkerMsg>;

/// State shared by all workers of one fastpath process.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Derived control-channel key (PBKDF2 of the token), computed once.
    pub token_key: [u8; 16],
    /// Taken public TCP ports.
    pub ports: PortTable,
    /// Taken public UDP ports (`udp` proxies, the STUN server's): a
    /// space of their own, as frps keeps.
    pub udp_ports: PortTable,
    /// Sessions and proxy names.
    pub directory: Directory,
    /// One inbox per worker, indexed by worker id.
    pub inboxes: Vec<Inbox>,
    /// One counter block per worker, indexed by worker id.
    pub stats: Vec<WorkerStats>,
    /// Login decision and policy propagation latencies.
    pub timings: crate::report::timings::Timings,
    /// Set when the process is shutting down.
    pub stopping: AtomicBool,
    /// Set once a successor took the listening sockets over (an upgrade):
    /// nothing new is accepted here, live sessions are served on.
    pub draining: AtomicBool,
    /// While draining: the stream to the successor, which takes the
    /// proxies' sockets of the sessions that move.
    pub successor: parking_lot::Mutex<Option<std::os::unix::net::UnixStream>>,
    /// After a takeover: proxies' sockets the predecessor handed over.
    pub parked: crate::runtime::parked::Parked,
    /// The slowpath's policy (or standalone rules).
    pub policy: Arc<crate::policy::Policy>,
    /// TLS server configuration for the bind port.
    pub tls: Arc<rustls::ServerConfig>,
    /// Live `http` routes (host × location × user → proxy), all workers'.
    pub http_routes:
        parking_lot::RwLock<proto::vhost::routes::Routes<crate::frp::targets::VhostTarget>>,
    /// The body of the 404 for a request no `http` proxy serves
    /// (`custom404Page`, or our own page).
    pub not_found_page: Vec<u8>,
    /// Secret proxies (`stcp`, `sudp`), all workers', for their visitors.
    pub visitors: crate::frp::targets::Visitors,
    /// The xtcp broker's attempts and what it learned.
    pub xtcp: crate::frp::targets::XtcpBroker,
    /// Load-balancing groups (`loadBalancer.group`), all workers'.
    pub groups: crate::frp::targets::Groups,
    /// Live `https` routes (server name → proxy), all workers'.
    pub https_routes:
        parking_lot::RwLock<proto::vhost::routes::Routes<crate::frp::targets::VhostTarget>>,
    /// Live `tcpmux` routes (CONNECT host × user → proxy), all workers'.
    pub tcpmux_routes:
        parking_lot::RwLock<proto::vhost::routes::Routes<crate::frp::targets::VhostTarget>>,
    /// Bytes of mesh frames on their way to each worker's inbox
    /// (`WorkerMsg::MeshFrames`), so that a busy worker is not sent more
    /// than it can take (see `mesh::links::flush`).
    pub mesh_crossing: Vec<std::sync::atomic::AtomicUsize>,
    /// The edge: managed certificates and tunnel origins.
    pub edge: crate::edge::Edge,
}

impl Shared {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether this process still takes new connections and datagrams on
    /// its listening sockets (neither stopping nor handed over).
    pub fn is_accepting(&self) -> bool {
        !self.is_stopping() && !self.draining.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::policy::InviteId;

    #[test]
    fn ports_are_claimed_once() {
        let t = PortTable::default();
        assert!(t.claim(7000));
        assert!(!t.claim(7000));
        assert!(t.is_taken(7000));
        t.release(7000);
        assert!(!t.is_taken(7000));
        assert!(t.claim(65535));
        assert!(t.claim(0));
    }

    const A: SessionRef = SessionRef {
        worker: 0,
        control_id: 1,
    };
    const B: SessionRef = SessionRef {
        worker: 1,
        control_id: 2,
    };

    /// Register with an `admit` that records what it was asked.
    fn register(d: &Directory, wanted: &str, owner: Grant, at: SessionRef) -> (Registered, bool) {
        let mut seen = None;
        let r = d
            .register(wanted, owner, "", at, |reconnect| {
                seen = Some(reconnect);
                Ok::<(), ()>(())
            })
            .unwrap();
        (r, seen.unwrap())
    }

    #[test]
    fn replaced_session_is_not_removed_by_its_predecessor() {
        let d = Directory::default();
        let (first, reconnect) = register(&d, "r", Grant::Node, A);
        assert_eq!(
            (first.run_id.as_str(), first.replaced, reconnect),
            ("r", None, false)
        );
        let (second, reconnect) = register(&d, "r", Grant::Node, B);
        assert_eq!(
            (second.run_id.as_str(), second.replaced, reconnect),
            ("r", Some(A), true)
        );
        d.remove_session("r", A);
        assert_eq!(d.find_session("r"), Some(B));
        d.remove_session("r", B);
        assert_eq!(d.find_session("r"), None);
    }

    #[test]
    fn another_credentials_run_id_gets_a_fresh_one_and_touches_nothing() {
        let d = Directory::default();
        let (inv_a, inv_b) = (InviteId::random(), InviteId::random());
        register(&d, "r", Grant::Invite(inv_a), A);
        for other in [Grant::Invite(inv_b), Grant::Node, Grant::Tenant(7)] {
            let (got, reconnect) = register(&d, "r", other, B);
            assert!(!reconnect, "{other:?}");
            assert_eq!(got.replaced, None);
            assert_ne!(got.run_id, "r");
            assert_eq!(got.run_id.len(), proto::auth::RUN_ID_LEN);
            assert_eq!(d.find_session(&got.run_id), Some(B));
        }
        assert_eq!(d.find_session("r"), Some(A));
    }

    #[test]
    fn a_refused_login_registers_nothing() {
        let d = Directory::default();
        register(&d, "r", Grant::Node, A);
        let r = d.register("r", Grant::Node, "", B, |_| Err("full"));
        assert_eq!(r, Err("full"));
        assert_eq!(d.find_session("r"), Some(A));
        let r = d.register("", Grant::Node, "", B, |_| Err("full"));
        assert_eq!(r, Err("full"));
    }
}
