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
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use proto::msg::Login;
use proto::policy::{InviteId, PolicyTable, PortSet};
use proto::ticket;

use crate::shm::Mapping;

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

/// The policy state of one fastpath process.
pub struct Policy {
    dir: Option<PathBuf>,
    current: RwLock<Option<Arc<LoadedTable>>>,
    usage: Mutex<HashMap<InviteId, Usage>>,
}

impl Policy {
    /// Policy from `dir` (empty = standalone).
    pub fn new(dir: &str) -> Policy {
        Policy {
            dir: (!dir.is_empty()).then(|| PathBuf::from(dir)),
            current: RwLock::new(None),
            usage: Mutex::new(HashMap::new()),
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
        *self.current.write() = Some(Arc::new(loaded));
        Ok(gen)
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
