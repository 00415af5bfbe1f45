//! Enforcing the slowpath's policy table: who may log in, which proxies a
//! session may register, and which live sessions must end when the table
//! changes.
//!
//! The table is a file in the shared-memory directory (`fastpath.policyDir`)
//! that the slowpath replaces atomically (write aside, rename). A watcher
//! thread notices a new file, reads it into memory of its own, validates
//! it once ([`LoadedTable`]) and swaps it in; a corrupt or stale file is
//! refused with a log line and the last good table stays in force — also
//! while the slowpath is down. Workers read the current table on the cold
//! paths only (login, NewProxy, the sweep after a switch); nothing per byte.
//!
//! The decisions themselves are [`proto::policy::decide`]'s, the same the
//! slowpath's frps plugin makes: this module looks up the rules a grant
//! points at in the table in force and keeps what the decisions take as
//! input — counters that span workers (an invite's sessions and proxies,
//! in one small mutex-guarded map touched at login, registration and
//! close) and the tenants with live sessions. A refusal is a
//! [`Refusal`], whose kind goes into the events.

pub mod tenants;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use proto::msg::Login;
use proto::policy::decide::{
    self, Counts, InviteRules, NodeEntry, NodeRules, ProxyGrant, ProxyRequest, Scope, ServerRules,
    TenantRules,
};
use proto::policy::{InviteId, PolicyTable, ProxyTypes, Refusal};

pub use shm::LoadedTable;
use shm::{InstanceDir, REFUSED_FILE, TABLE_FILE};
use tenants::{Bucket, Finder, Found};

pub use proto::policy::decide::TICKET_META;

/// What a session was allowed in on; decides its proxy rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
        let loaded = g.load_table().map_err(|e| e.to_string())?;
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
    /// wrong token); a refusal when the tenant may not log in here
    /// ([`decide::tenant_login`]).
    pub fn authorize_tenant(
        &self,
        login: &Login,
    ) -> Result<Option<(Grant, Arc<TenantLive>)>, Refusal> {
        if self.governed.is_none() {
            return Ok(None);
        }
        let Some(loaded) = self.current() else {
            return Ok(None);
        };
        let table = loaded.get();
        let token = match self
            .finder
            .find(&table, login.timestamp, &login.privilege_key)
        {
            Found::Tenant(t) => t,
            Found::None => return Ok(None),
            Found::Busy => return Err(Refusal::server_busy()),
        };
        let Some(view) = table.tenant(&token) else {
            return Ok(None);
        };
        decide::tenant_login(&table.node().into(), &view.into())?;
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
    /// credential (the node token, or a ticket's invite) gives it
    /// ([`decide::login`]). Limits are counted once the run_id is settled,
    /// by [`Policy::admit_session`].
    pub fn authorize_login(&self, login: &Login, now_s: u64) -> Result<Grant, Refusal> {
        if self.governed.is_none() {
            return Ok(Grant::Standalone);
        }
        let Some(loaded) = self.current() else {
            return Err(Refusal::no_policy());
        };
        let ticket = login.metas.get(TICKET_META).map(String::as_str);
        Ok(match decide::login(&loaded.get(), ticket, now_s)? {
            NodeEntry::Public => Grant::Node,
            NodeEntry::Ticket(id) => Grant::Invite(id),
        })
    }

    /// Count a session of `grant` against its invite's max_conns; until
    /// [`Policy::release_session`]. `reconnect`: it replaces a live session
    /// of the same invite (decided by [`Directory::register`], which calls
    /// this under its lock), so it does not count twice. Only invite logins
    /// are refused here ([`decide::invite_session`]), and a refused one is
    /// not counted.
    ///
    /// [`Directory::register`]: crate::runtime::shared::Directory::register
    pub fn admit_session(&self, grant: Grant, reconnect: bool) -> Result<(), Refusal> {
        let Grant::Invite(id) = grant else {
            return Ok(());
        };
        // The table may have changed since the ticket was checked.
        let loaded = self.current();
        let table = loaded.as_ref().map(|l| l.get());
        let invite = table
            .as_ref()
            .and_then(|t| t.invite(&id))
            .map(InviteRules::from);
        let mut usage = self.usage.lock();
        let live = usage.get(&id).map_or(0, |u| u.sessions);
        decide::invite_session(id, invite.as_ref(), live, reconnect)?;
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

    /// The rules a session of `grant` goes by under `table` (None: none
    /// has arrived yet), for the decisions.
    fn scope<'t>(&self, grant: Grant, table: Option<&PolicyTable<'t>>) -> Scope<'t> {
        let Some(table) = table.filter(|_| grant != Grant::Standalone) else {
            return match grant {
                Grant::Standalone => Scope::Standalone,
                _ => Scope::NoPolicy,
            };
        };
        let node = NodeRules::from(table.node());
        match grant {
            Grant::Standalone => Scope::Standalone,
            Grant::Node => Scope::Node { node },
            Grant::Invite(id) => Scope::Invite {
                node,
                id,
                invite: table.invite(&id).map(InviteRules::from),
            },
            // A handle no longer known is a tenant no longer there.
            Grant::Tenant(handle) => Scope::Tenant {
                node,
                tenant: self
                    .tenant_token(handle)
                    .and_then(|token| table.tenant(&token))
                    .map(TenantRules::from),
            },
        }
    }

    /// Decide a NewProxy of a session with `grant` that holds `counts`
    /// (its invite's proxies are counted here) under `table` (the one in
    /// force, read once by the caller), on a server whose config says
    /// `server` and that implements the `supported` types
    /// ([`decide::proxy`]). On success the proxy counts against the invite
    /// until [`Policy::release_proxy`].
    pub fn authorize_proxy(
        &self,
        table: Option<&PolicyTable>,
        grant: Grant,
        server: &ServerRules,
        req: &ProxyRequest,
        counts: Counts,
        supported: ProxyTypes,
    ) -> Result<ProxyGrant, Refusal> {
        let scope = self.scope(grant, table);
        let mut usage = self.usage.lock();
        let counts = Counts {
            invite_proxies: grant
                .invite()
                .and_then(|id| usage.get(&id))
                .map_or(0, |u| u.proxies),
            ..counts
        };
        let granted = decide::proxy(server, &scope, req, &counts, supported)?;
        if let Some(id) = grant.invite() {
            usage.entry(id).or_default().proxies += 1;
        }
        Ok(granted)
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

    /// Whether a live session may go on under the table in force
    /// ([`decide::still_allowed`]); the refusal to end it with otherwise.
    pub fn still_allowed(&self, grant: Grant) -> Result<(), Refusal> {
        let Some(loaded) = self.current() else {
            return Ok(());
        };
        decide::still_allowed(&self.scope(grant, Some(&loaded.get())))
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
                            let note = format!("{} {reason}\n", crate::report::events::now_ms());
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
