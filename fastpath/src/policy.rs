//! Enforcing the slowpath's policy table: who may log in, which proxies a
//! session may register, and which live sessions must end when the table
//! changes.
//!
//! The table is a file in the shared-memory directory (`fastpath.policyDir`)
//! that the slowpath replaces atomically (write aside, rename). A watcher
//! thread notices a new file, maps it, validates it once
//! ([`PolicyTable::parse`]) and swaps it in; a corrupt or stale file is
//! refused with a log line and the last good table stays in force — also
//! while the slowpath is down. Workers read the current table on the cold
//! paths only (login, NewProxy, the sweep after a switch); nothing per byte.
//!
//! Counters that span workers (an invite's sessions and proxies) are in one
//! small mutex-guarded map, touched at login, registration and close.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use proto::msg::Login;
use proto::policy::{InviteId, PolicyTable, PortSet};
use proto::ticket;

use crate::shm::{InstanceDir, ShmDir, REFUSED_FILE, TABLE_FILE};
use crate::tenants::{Bucket, Finder, Found};
use proto::shm_auth::InstanceKey;

/// Login metadata key that carries a ticket (`metadatas.ticket` in frpc.toml).
pub const TICKET_META: &str = "ticket";

/// A validated table generation, in memory of its own.
///
/// The table is read from the file into a private buffer and checked once
/// (its tag under the instance key, then its structure) before it is used,
/// so nothing another process does to the file afterwards (truncate it,
/// write into it) can reach a table in force. A table is at most a few MB
/// and is loaded only when a new generation appears.
pub struct LoadedTable {
    // Declared before the buffer it borrows from, so it is dropped first.
    table: PolicyTable<'static>,
    _bytes: Box<[u8]>,
}

impl LoadedTable {
    /// Validate a table file's bytes: the tag under `key`, then the table.
    pub fn from_file_bytes(file: Vec<u8>, key: &InstanceKey) -> Result<LoadedTable, String> {
        let len = key.open_table(&file).map_err(|e| e.to_string())?.len();
        let mut file = file;
        file.truncate(len);
        let bytes = file.into_boxed_slice();
        // SAFETY: the slice points into the heap buffer `bytes`, which this
        // struct owns, never writes, and drops after `table` (field order);
        // moving a Box does not move its heap allocation.
        let view: &'static [u8] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        let table = PolicyTable::parse(view).map_err(|e| e.to_string())?;
        Ok(LoadedTable {
            table,
            _bytes: bytes,
        })
    }

    /// Read and validate the table in `dir`.
    pub fn load(dir: &ShmDir, key: &InstanceKey) -> Result<LoadedTable, String> {
        let file = dir
            .read(TABLE_FILE)
            .map_err(|e| format!("cannot read: {e}"))?;
        Self::from_file_bytes(file, key)
    }

    /// The table.
    pub fn get(&self) -> PolicyTable<'_> {
        self.table
    }
}

/// What a session was allowed in on; decides its proxy rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// No policy directory: the config file's rules (frps drop-in).
    Standalone,
    /// Token login on a public node: the node's pool and types.
    Node,
    /// Ticket login: the invite's scope.
    Invite(InviteId),
    /// Tenant token login (seed 002): the tenant's rules; the id is this
    /// process's handle for the tenant ([`TenantLive`]).
    Tenant(u64),
}

impl Grant {
    /// The invite, for events and logs.
    pub fn invite(&self) -> Option<InviteId> {
        match self {
            Grant::Invite(id) => Some(*id),
            _ => None,
        }
    }
}

/// Where a proxy's port may come from.
pub enum PortRule {
    /// The config file's `allowPorts`.
    Config,
    /// This pool (node or invite).
    Pool(PortSet),
}

/// A refused login: the reason frpc reads, and the invite if the ticket
/// named one.
#[derive(Debug)]
pub struct LoginRefusal {
    /// Text for LoginResp.error and the audit log.
    pub reason: String,
    /// Invite named by the ticket, when it could be read.
    pub invite: Option<InviteId>,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    sessions: u32,
    proxies: u32,
}

/// A tenant with live sessions in this process.
pub struct TenantLive {
    /// Handle used in [`Grant::Tenant`].
    pub id: u64,
    /// The tenant's token (the session's frp token).
    pub token: String,
    /// The tenant's bandwidth budget, shared by all its relays on every
    /// worker; its rate follows the table.
    pub bucket: Arc<Bucket>,
    /// Live sessions (changed under the tenants lock).
    sessions: std::sync::atomic::AtomicU32,
}

#[derive(Default)]
struct Tenants {
    by_token: HashMap<String, Arc<TenantLive>>,
    by_id: HashMap<u64, String>,
}

/// The policy state of one fastpath process.
pub struct Policy {
    governed: Option<InstanceDir>,
    current: RwLock<Option<Arc<LoadedTable>>>,
    usage: Mutex<HashMap<InviteId, Usage>>,
    /// Finds the tenant a Login's privilege key belongs to.
    pub finder: Finder,
    tenants: Mutex<Tenants>,
    next_tenant: AtomicU64,
}

impl Policy {
    /// Policy from a governed directory (None = standalone).
    pub fn new(governed: Option<InstanceDir>) -> Policy {
        Policy {
            governed,
            current: RwLock::new(None),
            usage: Mutex::new(HashMap::new()),
            finder: Finder::default(),
            tenants: Mutex::new(Tenants::default()),
            next_tenant: AtomicU64::new(1),
        }
    }

    /// The policy directory and key, when a slowpath governs this fastpath.
    pub fn governed(&self) -> Option<&InstanceDir> {
        self.governed.as_ref()
    }

    /// The policy directory, when a slowpath governs this fastpath.
    pub fn dir(&self) -> Option<&Path> {
        self.governed.as_ref().map(|g| g.dir.path())
    }

    /// The table in force.
    pub fn current(&self) -> Option<Arc<LoadedTable>> {
        self.current.read().clone()
    }

    /// Generation in force (0 = none yet).
    pub fn generation(&self) -> u64 {
        self.current().map_or(0, |t| t.get().generation())
    }

    /// Try the table in the directory; swap it in when valid and newer.
    /// Returns the new generation, or why it was refused.
    pub fn try_load(&self) -> Result<u64, String> {
        let Some(g) = &self.governed else {
            return Err("no policy directory".into());
        };
        let loaded = LoadedTable::load(&g.dir, &g.key)?;
        let gen = loaded.get().generation();
        let cur = self.generation();
        if gen <= cur {
            return Err(format!("generation {gen} is not newer than {cur} in force"));
        }
        let loaded = Arc::new(loaded);
        *self.current.write() = Some(loaded.clone());
        // Bandwidth follows the new table at once (a throttled tenant slows
        // down, a raised limit applies); everything else about a tenant
        // applies to what is created from now on.
        let table = loaded.get();
        for t in self.tenants.lock().by_token.values() {
            if let Some(v) = table.tenant(&t.token) {
                t.bucket.set_rate(v.effective_bps());
            }
        }
        Ok(gen)
    }

    /// Find and admit the tenant whose token signed `login` (seed 002):
    /// Ok(None) when no tenant's token matches (the caller refuses as a
    /// wrong token); a refusal when the tenant may not log in here.
    pub fn authorize_tenant(
        &self,
        login: &Login,
    ) -> Result<Option<(Grant, Arc<TenantLive>)>, LoginRefusal> {
        if self.governed.is_none() {
            return Ok(None);
        }
        let Some(loaded) = self.current() else {
            return Ok(None);
        };
        let table = loaded.get();
        let refuse = |reason: String| {
            Err(LoginRefusal {
                reason,
                invite: None,
            })
        };
        let token = match self
            .finder
            .find(&table, login.timestamp, &login.privilege_key)
        {
            Found::Tenant(t) => t,
            Found::None => return Ok(None),
            Found::Busy => {
                return refuse(
                    "the server is busy checking logins whose timestamp is far from its clock; retry shortly"
                        .into(),
                )
            }
        };
        let Some(view) = table.tenant(&token) else {
            return Ok(None);
        };
        let region = table.node().region();
        if view.region() != region {
            return refuse(format!(
                "token is for region {:?}; this node serves region {region:?}",
                view.region()
            ));
        }
        if !view.enabled() {
            return refuse("token is disabled".into());
        }
        if view.quota_closed() {
            return refuse("token has used up its traffic quota for this period".into());
        }
        let mut tenants = self.tenants.lock();
        let live = match tenants.by_token.get(&token) {
            Some(t) => t.clone(),
            None => {
                let id = self.next_tenant.fetch_add(1, Ordering::Relaxed);
                let t = Arc::new(TenantLive {
                    id,
                    token: token.clone(),
                    bucket: Arc::new(Bucket::new(view.effective_bps())),
                    sessions: Default::default(),
                });
                tenants.by_id.insert(id, token.clone());
                tenants.by_token.insert(token, t.clone());
                t
            }
        };
        live.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Some((Grant::Tenant(live.id), live)))
    }

    /// The token of a live tenant handle.
    pub fn tenant_token(&self, id: u64) -> Option<String> {
        self.tenants.lock().by_id.get(&id).cloned()
    }

    /// Decide a login whose token already checked out: which grant its
    /// credential (the node token, or a ticket's invite) gives it. Limits
    /// are counted once the run_id is settled, by [`Policy::admit_session`].
    pub fn authorize_login(&self, login: &Login, now_s: u64) -> Result<Grant, LoginRefusal> {
        if self.governed.is_none() {
            return Ok(Grant::Standalone);
        }
        let refuse = |reason: String, invite| Err(LoginRefusal { reason, invite });
        let Some(loaded) = self.current() else {
            return refuse(
                "the node has no policy from its control plane yet; retry shortly".into(),
                None,
            );
        };
        let table = loaded.get();
        let Some(token) = login.metas.get(TICKET_META) else {
            if table.node().public() {
                return Ok(Grant::Node);
            }
            return refuse(
                "this node is private: log in with a ticket from an invite (metadatas.ticket in frpc.toml)"
                    .into(),
                None,
            );
        };
        let kid = ticket::peek_kid(token).map_err(|e| LoginRefusal {
            reason: e.to_string(),
            invite: None,
        })?;
        let Some(key) = table.ticket_key(&kid) else {
            return refuse(ticket::TicketError::UnknownKey.to_string(), None);
        };
        let claims = ticket::verify(token, &key).map_err(|e| LoginRefusal {
            reason: e.to_string(),
            invite: None,
        })?;
        let invite = InviteId::parse(&claims.inv);
        ticket::check(&claims, now_s, table.node().node_id()).map_err(|e| LoginRefusal {
            reason: e.to_string(),
            invite,
        })?;
        let Some(id) = invite else {
            return refuse("malformed ticket: bad invite id".into(), None);
        };
        let Some(inv) = table.invite(&id) else {
            return refuse(format!("invite {id} is unknown to this node"), Some(id));
        };
        if inv.revoked() {
            return refuse(format!("invite {id} has been revoked"), Some(id));
        }
        Ok(Grant::Invite(id))
    }

    /// Count a session of `grant` against its invite's max_conns; until
    /// [`Policy::release_session`]. `reconnect`: it replaces a live session
    /// of the same invite (decided by [`Directory::register`], which calls
    /// this under its lock), so it does not count twice. Only invite logins
    /// are refused here, and a refused one is not counted.
    ///
    /// [`Directory::register`]: crate::shared::Directory::register
    pub fn admit_session(&self, grant: Grant, reconnect: bool) -> Result<(), LoginRefusal> {
        let Grant::Invite(id) = grant else {
            return Ok(());
        };
        let refuse = |reason: String| {
            Err(LoginRefusal {
                reason,
                invite: Some(id),
            })
        };
        // The table may have changed since the ticket was checked.
        let max_conns = match self
            .current()
            .and_then(|t| t.get().invite(&id).map(|i| (i.revoked(), i.max_conns())))
        {
            None => return refuse(format!("invite {id} is unknown to this node")),
            Some((true, _)) => return refuse(format!("invite {id} has been revoked")),
            Some((false, max)) => max,
        };
        let mut usage = self.usage.lock();
        let live = usage.get(&id).map_or(0, |u| u.sessions);
        let counted = live.saturating_sub(reconnect as u32);
        if max_conns > 0 && counted >= max_conns {
            return refuse(format!(
                "invite {id} already has {live} of its {max_conns} concurrent sessions (max_conns)"
            ));
        }
        usage.entry(id).or_default().sessions += 1;
        Ok(())
    }

    /// A session granted by [`Policy::authorize_login`] ended.
    pub fn release_session(&self, grant: Grant) {
        if let Grant::Tenant(id) = grant {
            let mut tenants = self.tenants.lock();
            let Some(token) = tenants.by_id.get(&id).cloned() else {
                return;
            };
            let last = tenants
                .by_token
                .get(&token)
                .is_none_or(|t| t.sessions.fetch_sub(1, Ordering::Relaxed) <= 1);
            if last {
                tenants.by_token.remove(&token);
                tenants.by_id.remove(&id);
            }
            return;
        }
        if let Grant::Invite(id) = grant {
            let mut usage = self.usage.lock();
            if let Some(u) = usage.get_mut(&id) {
                u.sessions = u.sessions.saturating_sub(1);
                if u.sessions == 0 && u.proxies == 0 {
                    usage.remove(&id);
                }
            }
        }
    }

    /// Decide a NewProxy for a session with `grant` that already holds
    /// `session_proxies` proxies. On success the proxy counts against the
    /// invite until [`Policy::release_proxy`].
    pub fn authorize_proxy(
        &self,
        grant: Grant,
        proxy_type: &str,
        remote_port: u16,
        session_proxies: usize,
        session_ports: usize,
    ) -> Result<PortRule, String> {
        let proxy_type = if proxy_type.is_empty() {
            "tcp"
        } else {
            proxy_type
        };
        if grant == Grant::Standalone {
            return Ok(PortRule::Config);
        }
        let Some(loaded) = self.current() else {
            return Err("the node has no policy from its control plane yet".into());
        };
        let table = loaded.get();
        let node = table.node();
        if !node.proxy_types().allows(proxy_type) {
            return Err(format!(
                "proxy type {proxy_type} is not allowed on this node"
            ));
        }
        let pool = match grant {
            Grant::Standalone => return Ok(PortRule::Config),
            Grant::Tenant(id) => {
                let token = self
                    .tenant_token(id)
                    .ok_or_else(|| "the session's token is no longer known".to_string())?;
                let Some(t) = table.tenant(&token) else {
                    return Err("token was deleted".into());
                };
                if !t.enabled() {
                    return Err("token is disabled".into());
                }
                if t.quota_closed() {
                    return Err("token has used up its traffic quota for this period".into());
                }
                let node_pool = node.port_pool().to_set();
                // Seed 002: allowPorts and maxPortsPerClient concern the
                // proxies that take a port, TCP and UDP.
                if !matches!(proxy_type, "tcp" | "udp") {
                    return Ok(PortRule::Pool(node_pool));
                }
                let cap = t.max_ports_per_client();
                if cap > 0 && session_ports >= cap as usize {
                    return Err(format!(
                        "token allows {cap} ports per client (maxPortsPerClient) and this client has {session_ports}"
                    ));
                }
                // The token's allowPorts replace the node's pool (seed
                // 002: token settings take precedence over the server's).
                let allowed = t.allow_ports();
                if allowed.is_empty() {
                    node_pool
                } else {
                    let set = allowed.to_set();
                    if remote_port != 0 && !set.contains(remote_port) {
                        return Err(format!(
                            "port {remote_port} is not in the token's allowPorts ({set})"
                        ));
                    }
                    set
                }
            }
            Grant::Node => {
                let cap = node.max_proxies_per_session();
                if cap > 0 && session_proxies >= cap as usize {
                    return Err(format!(
                        "this session already has {session_proxies} of its {cap} proxies"
                    ));
                }
                node.port_pool().to_set()
            }
            Grant::Invite(id) => {
                let Some(inv) = table.invite(&id) else {
                    return Err(format!("invite {id} is unknown to this node"));
                };
                if inv.revoked() {
                    return Err(format!("invite {id} has been revoked"));
                }
                if !inv.proxy_types().allows(proxy_type) {
                    return Err(format!(
                        "proxy type {proxy_type} is not allowed by invite {id} (allowed: {})",
                        inv.proxy_types()
                    ));
                }
                let pool = inv
                    .port_pool()
                    .to_set()
                    .intersect(&node.port_pool().to_set());
                if remote_port != 0 && !pool.contains(remote_port) {
                    return Err(format!(
                        "port {remote_port} is not in the port pool of invite {id} ({pool})"
                    ));
                }
                let mut usage = self.usage.lock();
                let u = usage.entry(id).or_default();
                if inv.max_proxies() > 0 && u.proxies >= inv.max_proxies() {
                    return Err(format!(
                        "invite {id} already has {} of its {} proxies (max_proxies)",
                        u.proxies,
                        inv.max_proxies()
                    ));
                }
                u.proxies += 1;
                return Ok(PortRule::Pool(pool));
            }
        };
        if remote_port != 0 && !pool.contains(remote_port) {
            return Err(format!(
                "port {remote_port} is not in this node's port pool ({pool})"
            ));
        }
        Ok(PortRule::Pool(pool))
    }

    /// A proxy counted by [`Policy::authorize_proxy`] is gone (or its
    /// registration failed after authorization).
    pub fn release_proxy(&self, grant: Grant) {
        if let Grant::Invite(id) = grant {
            let mut usage = self.usage.lock();
            if let Some(u) = usage.get_mut(&id) {
                u.proxies = u.proxies.saturating_sub(1);
                if u.sessions == 0 && u.proxies == 0 {
                    usage.remove(&id);
                }
            }
        }
    }

    /// Whether a live session may go on under the table in force; the
    /// reason to end it otherwise.
    pub fn still_allowed(&self, grant: Grant) -> Result<(), String> {
        let Some(loaded) = self.current() else {
            return Ok(());
        };
        let id = match grant {
            Grant::Standalone => return Ok(()),
            Grant::Tenant(id) => {
                let table = loaded.get();
                let Some(token) = self.tenant_token(id) else {
                    return Ok(());
                };
                return match table.tenant(&token) {
                    None => Err("token was deleted".into()),
                    Some(t) if !t.enabled() => Err("token was disabled".into()),
                    Some(t) if t.region() != table.node().region() => {
                        Err(format!("token was moved to region {:?}", t.region()))
                    }
                    Some(t) if t.quota_closed() => {
                        Err("token has used up its traffic quota for this period".into())
                    }
                    Some(_) => Ok(()),
                };
            }
            Grant::Node if loaded.get().node().public() => return Ok(()),
            Grant::Node => {
                return Err("the node was made private: log in with a ticket from an invite".into())
            }
            Grant::Invite(id) => id,
        };
        match loaded.get().invite(&id) {
            None => Err(format!("invite {id} was removed from this node")),
            Some(inv) if inv.revoked() => Err(format!("invite {id} has been revoked")),
            Some(_) => Ok(()),
        }
    }
}

/// Watch the directory's `policy.tbl` every `every`, loading new
/// generations, and call `on_switch(generation)` after each switch. Runs
/// until `stop()` is true. A refused table is logged once and its reason
/// written to `policy.refused`, where the slowpath reads why its change
/// did not take.
pub fn watch(
    policy: Arc<Policy>,
    every: Duration,
    stop: impl Fn() -> bool,
    on_switch: impl Fn(u64),
) {
    let Some(g) = policy.governed() else {
        return;
    };
    let path = g.dir.path().join(TABLE_FILE);
    let id_of = |m: &std::fs::Metadata| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec());
    // (device, inode, size, mtime) of the last file looked at, good or bad:
    // a refused file is logged once, not every tick. The table loaded at
    // start counts as looked at.
    let mut seen = if policy.generation() > 0 {
        std::fs::symlink_metadata(&path).ok().map(|m| id_of(&m))
    } else {
        None
    };
    let mut missing_logged = false;
    while !stop() {
        match std::fs::symlink_metadata(&path) {
            Ok(m) => {
                missing_logged = false;
                let id = id_of(&m);
                if seen != Some(id) {
                    seen = Some(id);
                    match policy.try_load() {
                        Ok(generation) => {
                            tracing::info!(generation, path = %path.display(), "policy table in force");
                            on_switch(generation);
                        }
                        Err(reason) => {
                            tracing::warn!(
                                path = %path.display(), %reason, in_force = policy.generation(),
                                "policy table refused; keeping the last good one"
                            );
                            let note = format!("{} {reason}\n", crate::events::now_ms());
                            if let Err(e) = g.dir.write_replacing(REFUSED_FILE, note.as_bytes()) {
                                tracing::debug!(error = %e, "cannot record why the table was refused");
                            }
                        }
                    }
                }
            }
            Err(_) if !missing_logged => {
                missing_logged = true;
                tracing::info!(path = %path.display(), in_force = policy.generation(), "no policy table published yet");
            }
            Err(_) => {}
        }
        std::thread::sleep(every);
    }
}
