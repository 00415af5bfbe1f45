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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use proto::msg::Login;
use proto::policy::{InviteId, PolicyTable, PortSet};
use proto::ticket;

use crate::shm::Mapping;
use crate::tenants::{Bucket, Finder, Found};

/// The table file's name inside the policy directory.
pub const TABLE_FILE: &str = "policy.tbl";
/// Login metadata key that carries a ticket (`metadatas.ticket` in frpc.toml).
pub const TICKET_META: &str = "ticket";

/// A mapped, validated table generation.
pub struct LoadedTable {
    // Declared before the mapping it borrows from, so it is dropped first.
    table: PolicyTable<'static>,
    _map: Mapping,
}

impl LoadedTable {
    /// Map and validate a table file.
    pub fn open(path: &Path) -> Result<LoadedTable, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let map = Mapping::read_only(&file).map_err(|e| format!("cannot map: {e}"))?;
        // SAFETY: the slice points into `map`, which lives exactly as long
        // as `table` (same struct, dropped after it) and is never written:
        // the slowpath replaces the file, it does not rewrite it.
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(map.as_mut_ptr(), map.len()) };
        let table = PolicyTable::parse(bytes).map_err(|e| e.to_string())?;
        Ok(LoadedTable { table, _map: map })
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
    dir: Option<PathBuf>,
    current: RwLock<Option<Arc<LoadedTable>>>,
    usage: Mutex<HashMap<InviteId, Usage>>,
    /// Finds the tenant a Login's privilege key belongs to.
    pub finder: Finder,
    tenants: Mutex<Tenants>,
    next_tenant: AtomicU64,
}

impl Policy {
    /// Policy from `dir` (empty = standalone).
    pub fn new(dir: &str) -> Policy {
        Policy {
            dir: (!dir.is_empty()).then(|| PathBuf::from(dir)),
            current: RwLock::new(None),
            usage: Mutex::new(HashMap::new()),
            finder: Finder::default(),
            tenants: Mutex::new(Tenants::default()),
            next_tenant: AtomicU64::new(1),
        }
    }

    /// The policy directory, when a slowpath governs this fastpath.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The table in force.
    pub fn current(&self) -> Option<Arc<LoadedTable>> {
        self.current.read().clone()
    }

    /// Generation in force (0 = none yet).
    pub fn generation(&self) -> u64 {
        self.current().map_or(0, |t| t.get().generation())
    }

    /// Try the file at `path`; swap it in when valid and newer. Returns the
    /// new generation, or why it was refused.
    pub fn try_load(&self, path: &Path) -> Result<u64, String> {
        let loaded = LoadedTable::open(path)?;
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
        if self.dir.is_none() {
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

    /// Decide a login whose token already checked out.
    /// `replacing`: the run_id belongs to a live session (a reconnect), which
    /// does not count twice against max_conns.
    pub fn authorize_login(
        &self,
        login: &Login,
        now_s: u64,
        replacing: bool,
    ) -> Result<Grant, LoginRefusal> {
        if self.dir.is_none() {
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
        let mut usage = self.usage.lock();
        let u = usage.entry(id).or_default();
        let live = u.sessions.saturating_sub(replacing as u32);
        if inv.max_conns() > 0 && live >= inv.max_conns() {
            return refuse(
                format!(
                    "invite {id} already has {live} of its {} concurrent sessions (max_conns)",
                    inv.max_conns()
                ),
                Some(id),
            );
        }
        u.sessions += 1;
        Ok(Grant::Invite(id))
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

/// Watch `dir/policy.tbl` every `every`, loading new generations, and call
/// `on_switch(generation)` after each switch. Runs until `stop()` is true.
pub fn watch(
    policy: Arc<Policy>,
    every: Duration,
    stop: impl Fn() -> bool,
    on_switch: impl Fn(u64),
) {
    let Some(dir) = policy.dir().map(Path::to_path_buf) else {
        return;
    };
    let path = dir.join(TABLE_FILE);
    // (device, inode, size, mtime) of the last file looked at, good or bad:
    // a refused file is logged once, not every tick.
    let mut seen: Option<(u64, u64, u64, i64, i64)> = None;
    let mut missing_logged = false;
    while !stop() {
        match std::fs::metadata(&path) {
            Ok(m) => {
                missing_logged = false;
                let id = (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec());
                if seen != Some(id) {
                    seen = Some(id);
                    match policy.try_load(&path) {
                        Ok(generation) => {
                            tracing::info!(generation, path = %path.display(), "policy table in force");
                            on_switch(generation);
                        }
                        Err(reason) => tracing::warn!(
                            path = %path.display(), %reason, in_force = policy.generation(),
                            "policy table refused; keeping the last good one"
                        ),
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
