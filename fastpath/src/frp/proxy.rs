//! Proxies: a TCP proxy has a public listener owned by the session's
//! worker; an `https` proxy has routes in the shared vhost table, its
//! connections accepted on `vhostHTTPSPort` ([`vhost`](crate::frp::vhost)).
//! Each user connection takes a work connection from the session's pool,
//! announces itself with StartWorkConn and is relayed.
//!
//! Port rules follow frps: `remotePort` must be inside `allowPorts`, free
//! server-wide (a lock-free bitmap shared by all workers) and bindable;
//! `0` lets the server pick one; `maxPortsPerClient` caps a session.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use proto::msg::{NewProxy, StartWorkConn};

use crate::config::Config;
use crate::frp::control::Control;
use crate::frp::domains;
use crate::frp::spread::{self, Handed};
use crate::frp::targets::{Group, Params};
use crate::frp::targets::{HttpEdits, VhostTarget};
use crate::policy::tenants::{Bucket, Limits};
use crate::relay::{self, RelayOpts};
use crate::report::events::EventSink;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::runtime::shared::Shared;
use crate::transport::conn::{Aborter, Conn};
use crate::transport::handoff::WorkerMsg;
use proto::events::Event;
use proto::policy::decide::{
    self, Counts, PortChoice, ProxyGrant, ProxyRequest, ServerRules, Subdomain,
};
use proto::policy::{PortSet, ProxyType, ProxyTypes, Refusal};

/// A registered proxy.
pub struct Proxy {
    /// Full proxy name (with the `user.` prefix frpc adds).
    pub name: String,
    /// The public port (0: a vhost proxy, which has routes instead).
    port: u16,
    /// A vhost proxy's routes.
    vhost: Option<VhostRoutes>,
    /// Its load-balancing group (`loadBalancer.group`).
    group: Option<Arc<Group>>,
    /// Whether its port goes back to the pool when its listener closes:
    /// a tcp group's port stays until its last member leaves.
    releases_port: Cell<bool>,
    /// The listening socket's descriptor while its accept loop runs (-1
    /// otherwise): an upgrade hands a copy to the successor.
    listen_fd: Cell<std::os::fd::RawFd>,
    /// User connections accepted and not relayed yet (their task not
    /// started, or a work connection being readied for them): with the
    /// relays and the connections waiting for a work connection, what a
    /// session has in flight.
    unstarted: Cell<u32>,
    use_encryption: bool,
    use_compression: bool,
    proxy_type: String,
    canceller: RefCell<Canceller>,
    closed: Cell<bool>,
    control: std::rc::Weak<Control>,
    /// The worker, for the events a proxy reports on its own (its closing
    /// report does not depend on its session still being there).
    worker: std::rc::Weak<WorkerCtx>,
    /// Bytes relayed visitor → frpc and frpc → visitor; shared with the
    /// workers that relay for it ([`crate::frp::spread`]).
    bytes: Arc<[AtomicU64; 2]>,
    /// What of `bytes` has been reported already.
    reported: [Cell<u64>; 2],
    /// Whether the closing report (the tenant's `closed` mark) went out.
    close_reported: Cell<bool>,
    /// Owning session's run_id and invite, and its tenant's token.
    run_id: String,
    invite: Option<proto::policy::InviteId>,
    tenant_token: Option<String>,
    /// The relays' limits: the tenant's shared budget, and the proxy's own
    /// `bandwidthLimit` when frpc asked for `bandwidthLimitMode = "server"`.
    limits: Limits,
    /// Live relays, so that a policy close can end them.
    relays: RefCell<HashMap<u64, Tracked>>,
    /// Sample traffic as soon as this many bytes are unreported (the
    /// tenant's report interval; 0 = periodic samples only).
    report_every: u64,
    next_relay: Cell<u64>,
    /// Work connections kept by idle keep-alive http connections.
    kept_idle: Cell<u32>,
}

/// A relay of a proxy, where a policy close reaches it.
pub enum Tracked {
    /// On this worker: its two connections' aborters.
    Here([Aborter; 2]),
    /// On worker `worker`, known there by `key` ([`crate::frp::spread`]).
    There { worker: usize, key: u64 },
}

/// The routes of a vhost proxy: its kind, domains (routing form),
/// locations (`[""]` but for `http`) and the user it routes by
/// (`routeByHTTPUser`).
struct VhostRoutes {
    kind: ProxyType,
    domains: Vec<String>,
    locations: Vec<String>,
    user: String,
    /// An `http` proxy of an invite's session is a possible tunnel origin
    /// of the edge, under this invite and its name.
    tunnel: Option<proto::policy::InviteId>,
}

/// The proxy types this server implements as configured (`https` needs
/// `vhostHTTPSPort`, `tcpmux` `tcpmuxHTTPConnectPort`); the policy decides
/// every type first, then the others are refused as not supported.
pub fn supported(cfg: &Config) -> ProxyTypes {
    let mut types = ProxyTypes::only(ProxyType::Tcp).with(ProxyType::Udp);
    if cfg.vhost_http_port != 0 {
        types = types.with(ProxyType::Http);
    }
    if cfg.vhost_https_port != 0 {
        types = types.with(ProxyType::Https);
    }
    if cfg.tcpmux_http_connect_port != 0 {
        types = types.with(ProxyType::Tcpmux);
    }
    types
        .with(ProxyType::Stcp)
        .with(ProxyType::Sudp)
        .with(ProxyType::Xtcp)
}

/// The shared route table of a vhost proxy type.
fn vhost_table(
    shared: &Shared,
    kind: ProxyType,
) -> &parking_lot::RwLock<proto::vhost::routes::Routes<VhostTarget>> {
    match kind {
        ProxyType::Tcpmux => &shared.tcpmux_routes,
        ProxyType::Http => &shared.http_routes,
        _ => &shared.https_routes,
    }
}

/// What validating a NewProxy yields.
struct Validated {
    remote_port: u16,
    /// The proxy's own `bandwidthLimit` when frpc leaves it to the server.
    bucket: Option<Arc<Bucket>>,
}

impl Proxy {
    /// Register a NewProxy, in named steps: **validate** the request,
    /// **decide** it under the policy (one read of the table, counted
    /// against the invite on success), **claim** its name and port
    /// server-wide, **build** the proxy, **announce** it. The refusal is
    /// what the client reads in NewProxyResp.
    pub fn register(control: &Rc<Control>, np: NewProxy) -> Result<Rc<Proxy>, Refusal> {
        let ctx = control.ctx();
        let shared = &ctx.shared;
        let grant = control.auth.grant;
        let valid = validate(&np)?;
        let loaded = shared.policy.current();
        let table = loaded.as_ref().map(|l| l.get());
        // The node's subDomainHost as the control plane sets it, else the
        // config file's.
        let sub_domain_host = table
            .as_ref()
            .map(|t| t.node().sub_domain_host())
            .filter(|h| !h.is_empty())
            .unwrap_or(&shared.config.sub_domain_host);
        let vhost = matches!(
            ProxyType::from_frp(&np.proxy_type),
            Some(ProxyType::Http | ProxyType::Https | ProxyType::Tcpmux)
        );
        let domains = if vhost {
            domains::domains(&np.custom_domains, &np.sub_domain, sub_domain_host)?
        } else {
            Vec::new()
        };
        // domains() put the subdomain's domain last.
        let label = np.sub_domain.to_ascii_lowercase();
        let subdomain = (vhost && !label.is_empty()).then(|| Subdomain {
            label: &label,
            domain: domains.last().map_or("", String::as_str),
            reserved_by: table.as_ref().and_then(|t| t.subdomain_owner(&label)),
        });
        let decided = shared.policy.authorize_proxy(
            table.as_ref(),
            grant,
            &server_rules(&shared.config),
            &ProxyRequest {
                proxy_type: &np.proxy_type,
                remote_port: valid.remote_port,
                domains: &domains,
                subdomain,
                sub_domain_host,
            },
            Counts {
                session_proxies: control.proxy_count(),
                session_ports: control.ports_in_use(),
                invite_proxies: 0,
            },
            supported(&shared.config),
        )?;
        let claimed = match decided.proxy_type {
            kind @ (ProxyType::Http | ProxyType::Https | ProxyType::Tcpmux) => {
                claim_routes(control, &np, kind, domains)
            }
            ProxyType::Tcp if !np.group.is_empty() => {
                claim_tcp_group(control, &np, &decided, valid.remote_port)
            }
            kind @ (ProxyType::Stcp | ProxyType::Sudp | ProxyType::Xtcp) => {
                claim_secret(control, &np, kind)
            }
            ProxyType::Udp => {
                claim_udp(shared, &np.proxy_name, &decided).map(|(port, s)| Claimed {
                    port,
                    listener: None,
                    udp: Some(s),
                    vhost: None,
                    group: None,
                })
            }
            _ => claim(shared, &np.proxy_name, &decided, &control.who.run_id).map(|(port, l)| {
                Claimed {
                    port,
                    listener: Some(l),
                    udp: None,
                    vhost: None,
                    group: None,
                }
            }),
        };
        let Claimed {
            port,
            listener,
            udp,
            vhost,
            group,
        } = match claimed {
            Ok(x) => x,
            Err(r) => {
                shared.policy.release_proxy(grant);
                return Err(r);
            }
        };
        let tenant = control.auth.tenant.as_ref();
        let report_every = tenant
            .and_then(|t| table?.tenant(&t.token))
            .map_or(0, |v| v.report_interval_bytes());
        let proxy = Rc::new(Proxy {
            name: np.proxy_name,
            port,
            releases_port: Cell::new(group.is_none()),
            listen_fd: Cell::new(-1),
            unstarted: Cell::new(0),
            group,
            vhost,
            proxy_type: decided.proxy_type.name().to_string(),
            use_encryption: np.use_encryption,
            use_compression: np.use_compression,
            canceller: RefCell::new(Canceller::new()),
            closed: Cell::new(false),
            control: Rc::downgrade(control),
            worker: Rc::downgrade(ctx),
            bytes: Default::default(),
            reported: Default::default(),
            close_reported: Cell::new(false),
            run_id: control.who.run_id.clone(),
            invite: grant.invite(),
            tenant_token: tenant.map(|t| t.token.clone()),
            limits: Limits {
                tenant: tenant.map(|t| t.bucket.clone()),
                proxy: valid.bucket,
            },
            relays: RefCell::new(HashMap::new()),
            next_relay: Cell::new(0),
            kept_idle: Cell::new(0),
            report_every,
        });
        proxy.announce(control, listener, udp);
        Ok(proxy)
    }

    /// Count the proxy, report it and start accepting visitors (a vhost
    /// proxy's come through the vhost listeners).
    fn announce(
        self: &Rc<Self>,
        control: &Rc<Control>,
        listener: Option<std::net::TcpListener>,
        udp: Option<std::net::UdpSocket>,
    ) {
        let ctx = control.ctx();
        let invite = control.auth.grant.invite();
        WorkerStats::add(&ctx.stats().proxies, 1);
        tracing::info!(session = %control.who.run_id, proxy_name = %self.name, port = self.port, invite_id = ?invite, "proxy registered");
        ctx.events.emit(Event::ProxyRegistered {
            run_id: control.who.run_id.clone(),
            invite,
            proxy: self.name.clone(),
            proxy_type: self.proxy_type.clone(),
            remote_port: self.port,
            domains: self
                .vhost
                .as_ref()
                .map_or_else(Vec::new, |v| v.domains.clone()),
        });
        if let Some(listener) = listener {
            monoio::spawn(accept_loop(self.clone(), control.clone(), listener));
        }
        if let Some(socket) = udp {
            let ctx = control.ctx().clone();
            monoio::spawn(crate::frp::udp::serve(self.clone(), ctx, socket, self.port));
        }
    }

    /// The public port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// NewProxyResp.remote_addr, as frps writes it: `:port`, nothing for a
    /// secret proxy, or a vhost
    /// proxy's domains with its vhost port (left out when 80 or 443),
    /// comma-separated.
    pub fn remote_addr(&self, cfg: &Config) -> String {
        let Some(v) = &self.vhost else {
            // A secret proxy (stcp, sudp, xtcp) has no address.
            return match self.port {
                0 => String::new(),
                port => format!(":{port}"),
            };
        };
        let port = match v.kind {
            ProxyType::Tcpmux => cfg.tcpmux_http_connect_port,
            ProxyType::Http => cfg.vhost_http_port,
            _ => cfg.vhost_https_port,
        };
        // frps lists an http proxy's domain once per location.
        let addrs: Vec<String> = v
            .domains
            .iter()
            .flat_map(|d| v.locations.iter().map(move |_| d))
            .map(|d| match port {
                80 | 443 => d.clone(),
                _ => format!("{d}:{port}"),
            })
            .collect();
        addrs.join(",")
    }

    /// Stop listening and free the port and the name.
    pub fn close(&self, reason: &str) {
        if self.closed.replace(true) {
            return;
        }
        // The accept loop sees the cancel, drops the listener, then frees
        // the port in the shared table (in that order, so a new owner can
        // bind it as soon as it can claim it).
        if let Some(ctx) = self.worker.upgrade() {
            // A group's routes and port stay while it has members.
            let last = match &self.group {
                Some(g) => ctx.shared.groups.leave(g, &self.name),
                None => true,
            };
            if matches!(
                ProxyType::from_frp(&self.proxy_type),
                Some(ProxyType::Stcp | ProxyType::Sudp | ProxyType::Xtcp)
            ) {
                ctx.shared.visitors.remove(&self.name);
            }
            if let Some(invite) = self.vhost.as_ref().and_then(|v| v.tunnel) {
                ctx.shared.edge.tunnels.remove(invite, &self.name);
            }
            if let (Some(v), true) = (&self.vhost, last) {
                let table = vhost_table(&ctx.shared, v.kind);
                domains::remove_routes(&mut table.write(), &v.domains, &v.locations, &v.user);
            }
            if self.vhost.is_none() && last {
                self.releases_port.set(true);
            }
        }
        let c = std::mem::replace(&mut *self.canceller.borrow_mut(), Canceller::new());
        let _ = c.cancel();
        // A udp proxy's work connection is its own, not a user's: it ends
        // with the proxy.
        if self.proxy_type == ProxyType::Udp.name() {
            self.abort_relays();
        }
        // The closing report goes out whatever else is gone: it is what
        // makes the slowpath report the remainder it holds.
        if let Some(ctx) = self.worker.upgrade() {
            self.report_traffic(&ctx.events, true);
        }
        if let Some(c) = self.control.upgrade() {
            let ctx = c.ctx();
            ctx.shared.directory.release_proxy(&self.name);
            ctx.shared.policy.release_proxy(c.auth.grant);
            WorkerStats::add(&ctx.stats().proxies, -1);
            ctx.events.emit(Event::ProxyClosed {
                run_id: c.who.run_id.clone(),
                invite: c.auth.grant.invite(),
                proxy: self.name.clone(),
                reason: reason.to_string(),
                refusal: None,
            });
            tracing::info!(session = %c.who.run_id, proxy_name = %self.name, %reason, "proxy closed");
        }
    }

    /// Report the bytes relayed since the last report. `closed` marks a
    /// tenant proxy's last report: the first one is sent even when no byte
    /// moved since the last sample, since it tells the slowpath to report
    /// the remainder it holds; relays that outlive the proxy report what
    /// they moved after it the same way, when they moved anything.
    pub fn report_traffic(&self, events: &EventSink, closed: bool) {
        let now = [
            self.bytes[0].load(Ordering::Relaxed),
            self.bytes[1].load(Ordering::Relaxed),
        ];
        let delta = [
            now[0] - self.reported[0].get(),
            now[1] - self.reported[1].get(),
        ];
        let first_close = closed && !self.close_reported.get();
        if delta == [0, 0] && !(first_close && self.tenant_token.is_some()) {
            return;
        }
        self.close_reported.set(self.close_reported.get() || closed);
        self.reported[0].set(now[0]);
        self.reported[1].set(now[1]);
        match &self.tenant_token {
            Some(token) => events.emit(Event::TenantTraffic {
                run_id: self.run_id.clone(),
                token: token.clone(),
                proxy: self.name.clone(),
                bytes_in: delta[0],
                bytes_out: delta[1],
                closed,
            }),
            None => events.emit(Event::Traffic {
                run_id: self.run_id.clone(),
                invite: self.invite,
                proxy: self.name.clone(),
                bytes_in: delta[0],
                bytes_out: delta[1],
            }),
        }
    }

    /// Bytes relayed towards frpc and from it, as [`relay::run`] counts.
    pub fn bytes(&self) -> &[AtomicU64; 2] {
        &self.bytes
    }

    /// The bandwidth limits its relays keep to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Count one more work connection kept by an idle http connection,
    /// unless `cap` are kept already (false: let it go instead).
    pub fn keep_idle(&self, cap: u32) -> bool {
        let n = self.kept_idle.get();
        if n >= cap {
            return false;
        }
        self.kept_idle.set(n + 1);
        true
    }

    /// One kept work connection is in use again, or gone.
    pub fn unkeep_idle(&self) {
        self.kept_idle.set(self.kept_idle.get().saturating_sub(1));
    }

    /// Whether the proxy has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Keep a user connection and its work connection where a policy
    /// close reaches them ([`Proxy::abort_relays`]); the id to untrack.
    pub fn track(&self, ends: [Aborter; 2]) -> u64 {
        self.track_any(Tracked::Here(ends))
    }

    /// [`Proxy::track`] for a relay of its on another worker.
    pub fn track_there(&self, worker: usize, key: u64) -> u64 {
        self.track_any(Tracked::There { worker, key })
    }

    fn track_any(&self, t: Tracked) -> u64 {
        let id = self.next_relay.get();
        self.next_relay.set(id + 1);
        self.relays.borrow_mut().insert(id, t);
        id
    }

    /// Forget what [`Proxy::track`] kept. A connection that outlived its
    /// proxy reports what it moved after the proxy's last report (as
    /// [`serve_user`] does), so no byte goes unreported.
    pub fn untrack(&self, id: u64) {
        self.relays.borrow_mut().remove(&id);
        if self.closed.get() {
            if let Some(ctx) = self.worker.upgrade() {
                self.report_traffic(&ctx.events, true);
            }
        }
    }

    /// Count `n` bytes moved towards frpc (`to_frpc`) or from it, in the
    /// worker's counters and the proxy's traffic, and wait as long as the
    /// proxy's bandwidth limits ask before more moves.
    pub async fn meter(&self, stats: &WorkerStats, to_frpc: bool, n: usize) {
        let (worker, proxy) = if to_frpc {
            (&stats.bytes_in, &self.bytes[0])
        } else {
            (&stats.bytes_out, &self.bytes[1])
        };
        WorkerStats::bump(worker, n as u64);
        proxy.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(ctx) = self.worker.upgrade() {
            self.report_if_due(&ctx.events);
        }
        let wait = self.limits.take(n);
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
    }

    /// A copy of the listening socket of a plain tcp proxy (not a group
    /// member's, which shares its port), for an upgrade's successor.
    pub fn listener_copy(&self) -> Option<(u16, std::os::fd::OwnedFd)> {
        let fd = self.listen_fd.get();
        if fd < 0 || self.group.is_some() || !self.releases_port.get() {
            return None;
        }
        // SAFETY: `fd` is the listener the accept loop owns and holds open
        // while listen_fd names it (reset before it is dropped); fcntl
        // makes a new descriptor of the same socket, owned by the caller.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: a descriptor fcntl just made and nobody else holds.
        Some((self.port, unsafe {
            std::os::fd::FromRawFd::from_raw_fd(dup)
        }))
    }

    /// Whether visitor connections are still being relayed.
    pub fn relaying(&self) -> bool {
        !self.relays.borrow().is_empty()
    }

    /// Whether a user connection is accepted and not relayed yet (its
    /// task not started, or handing frpc a work connection for it).
    pub fn starting(&self) -> bool {
        self.unstarted.get() > 0
    }

    /// One of [`Proxy::starting`]'s connections is relayed or gone.
    fn started(&self) {
        self.unstarted.set(self.unstarted.get().saturating_sub(1));
    }

    /// Sample now if the tenant's report interval is unreported.
    pub fn report_if_due(&self, events: &EventSink) {
        let moved = self.bytes[0].load(Ordering::Relaxed) + self.bytes[1].load(Ordering::Relaxed);
        let reported = self.reported[0].get() + self.reported[1].get();
        if self.report_every > 0 && moved - reported >= self.report_every {
            self.report_traffic(events, false);
        }
    }

    /// End every connection this proxy is relaying, here and on other
    /// workers.
    pub fn abort_relays(&self) {
        for t in self.relays.borrow().values() {
            match t {
                Tracked::Here(a) => a.iter().for_each(Aborter::abort),
                Tracked::There { worker, key } => {
                    if let Some(ctx) = self.worker.upgrade() {
                        let msg = WorkerMsg::AbortRelay { key: *key };
                        let _ = ctx.shared.inboxes[*worker].send(msg);
                    }
                }
            }
        }
    }

    /// A relay of this proxy ended: after an upgrade, the moment its
    /// session has nothing in flight is the moment to move it (a busy one
    /// rarely is when sampled).
    pub fn relay_ended(&self, shared: &Shared) {
        if !shared.is_accepting() && !shared.is_stopping() {
            if let Some(c) = self.control.upgrade() {
                c.move_if_idle();
            }
        }
    }
}

impl crate::frp::udp::Owner for Proxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn cancel_handle(&self) -> monoio::io::CancelHandle {
        self.canceller.borrow().handle()
    }

    fn wrapping(&self) -> (Option<[u8; 16]>, bool) {
        let key = self.control.upgrade().map(|c| c.auth.token_key);
        (key.filter(|_| self.use_encryption), self.use_compression)
    }

    async fn meter(&self, stats: &WorkerStats, to_frpc: bool, n: usize) {
        Proxy::meter(self, stats, to_frpc, n).await
    }

    fn track(&self, ends: [Aborter; 2]) -> u64 {
        Proxy::track(self, ends)
    }

    fn untrack(&self, id: u64) {
        Proxy::untrack(self, id)
    }

    async fn work_conn(&self) -> Option<(Conn, crate::frp::msgio::Wire)> {
        let control = self.control.upgrade()?;
        // frps names only the proxy: a udp work connection serves all users.
        let start = StartWorkConn {
            proxy_name: self.name.clone(),
            ..Default::default()
        };
        control.take_work_conn_wired(start).await
    }

    fn session_closed(&self) -> bool {
        self.control.upgrade().is_none_or(|c| c.is_closed())
    }
}

/// Check what the policy does not decide: a name, a port number, and the
/// bandwidth settings.
fn validate(np: &NewProxy) -> Result<Validated, Refusal> {
    if np.proxy_name.is_empty() {
        return Err(Refusal::invalid_proxy("proxy name is empty"));
    }
    let remote_port = decide::remote_port(np.remote_port)?;
    let bucket = match np.bandwidth_limit_mode.as_str() {
        "server" => {
            let bps = proto::policy::bandwidth::parse_bandwidth(
                "transport.bandwidthLimit",
                &np.bandwidth_limit,
            )
            .map_err(Refusal::invalid_proxy)?;
            (bps > 0).then(|| Arc::new(Bucket::new(bps)))
        }
        // "client" (frpc limits itself) or unset.
        "" | "client" => None,
        other => {
            return Err(Refusal::invalid_proxy(format!(
                "transport.bandwidthLimitMode {other:?} must be \"client\" or \"server\""
            )))
        }
    };
    Ok(Validated {
        remote_port,
        bucket,
    })
}

/// The config file's limits, as the decision reads them.
fn server_rules(cfg: &Config) -> ServerRules {
    ServerRules {
        allow_ports: PortSet::from_ranges(cfg.allow_ports.iter().map(|r| r.bounds()).collect()),
        max_ports_per_client: cfg.max_ports_per_client,
    }
}

/// Claim the proxy's name and its port server-wide and bind its listener;
/// on failure nothing stays claimed.
fn claim(
    shared: &Shared,
    name: &str,
    decided: &ProxyGrant,
    run_id: &str,
) -> Result<(u16, std::net::TcpListener), Refusal> {
    if !shared.directory.claim_proxy(name) {
        return Err(Refusal::proxy_exists(name));
    }
    // The same proxy of the same session, back after an upgrade: its
    // listening socket, with what queued on it meanwhile.
    let allowed = |port: u16| match &decided.port {
        PortChoice::AnyOf(set) => set.contains(port),
        &PortChoice::Exactly(p) => p == port,
        PortChoice::NoPort => false,
    };
    if let Some(parked) = shared.parked.take(run_id, name, allowed) {
        return Ok(parked);
    }
    let bound = claim_port(shared, decided, false);
    if bound.is_err() {
        shared.directory.release_proxy(name);
    }
    bound
}

/// Claim a secret proxy's (`stcp`, `sudp`, `xtcp`) name server-wide and
/// list it for its visitors (an xtcp proxy's come through the broker); it
/// has no port.
fn claim_secret(control: &Control, np: &NewProxy, kind: ProxyType) -> Result<Claimed, Refusal> {
    let shared = &control.ctx().shared;
    if np.sk.is_empty() {
        return Err(Refusal::invalid_proxy(format!(
            "{} proxy [{}] needs a secretKey",
            kind.name(),
            np.proxy_name
        )));
    }
    if !shared.directory.claim_proxy(&np.proxy_name) {
        return Err(Refusal::proxy_exists(&np.proxy_name));
    }
    // frps: no allowUsers admits only the proxy's own user.
    let allow_users = if np.allow_users.is_empty() {
        vec![control.who.login.user.clone()]
    } else {
        np.allow_users.clone()
    };
    shared.visitors.add(
        &np.proxy_name,
        crate::frp::targets::SecretProxy {
            kind,
            worker: control.ctx().id,
            control_id: control.who.id,
            sk: np.sk.clone(),
            invite: control.auth.grant.invite(),
            allow_users,
        },
    );
    Ok(Claimed {
        port: 0,
        listener: None,
        udp: None,
        vhost: None,
        group: None,
    })
}

/// Claim a udp proxy's name and its UDP port server-wide and bind its
/// socket; on failure nothing stays claimed.
fn claim_udp(
    shared: &Shared,
    name: &str,
    decided: &ProxyGrant,
) -> Result<(u16, std::net::UdpSocket), Refusal> {
    if !shared.directory.claim_proxy(name) {
        return Err(Refusal::proxy_exists(name));
    }
    let ip = shared.config.proxy_ip();
    let bound = claim_port_in(&shared.udp_ports, decided, |port| {
        crate::frp::udp::bind(ip, port)
    });
    if bound.is_err() {
        shared.directory.release_proxy(name);
    }
    bound
}

/// Claim the TCP port the decision names (or one of its set) and bind it;
/// `reuse`: with SO_REUSEPORT, for a tcp group's members.
fn claim_port(
    shared: &Shared,
    decided: &ProxyGrant,
    reuse: bool,
) -> Result<(u16, std::net::TcpListener), Refusal> {
    let ip = shared.config.proxy_ip();
    let lowat = shared.config.fastpath.user_not_sent_lowat;
    claim_port_in(&shared.ports, decided, |port| bind(ip, port, lowat, reuse))
}

/// Claim the port the decision names (or one of its set) in `ports` and
/// `bind` it; a port that does not bind goes back.
fn claim_port_in<T>(
    ports: &crate::runtime::shared::PortTable,
    decided: &ProxyGrant,
    bind: impl Fn(u16) -> std::io::Result<T>,
) -> Result<(u16, T), Refusal> {
    match &decided.port {
        PortChoice::AnyOf(set) => allocate_port(set.ranges(), ports, bind),
        &PortChoice::Exactly(port) => {
            if ports.claim(port) {
                bind(port).map(|l| (port, l)).map_err(|e| {
                    ports.release(port);
                    Refusal::port_unavailable(e)
                })
            } else {
                Err(Refusal::port_already_used())
            }
        }
        // Every type in SUPPORTED takes a port; a portless one (vhosts,
        // visitors) needs a listener of another kind, not here yet.
        PortChoice::NoPort => Err(Refusal::type_not_supported(decided.proxy_type.name())),
    }
}

/// Claim a tcp proxy's name and join its load-balancing group: the first
/// member claims and binds the port, the others bind the same port
/// (SO_REUSEPORT), which the decision must allow them too.
fn claim_tcp_group(
    control: &Control,
    np: &NewProxy,
    decided: &ProxyGrant,
    asked: u16,
) -> Result<Claimed, Refusal> {
    let shared = &control.ctx().shared;
    let name = &np.proxy_name;
    if !shared.directory.claim_proxy(name) {
        return Err(Refusal::proxy_exists(name));
    }
    let mut first = None;
    let joined = shared.groups.join(
        ProxyType::Tcp,
        control.auth.grant,
        &np.group,
        &np.group_key,
        Params::Tcp { asked },
        member(control, name),
        |g| {
            let (port, l) = claim_port(shared, decided, true)?;
            g.set_port(port);
            first = Some(l);
            Ok(())
        },
    );
    let group = match joined {
        Ok(g) => g,
        Err(r) => {
            shared.directory.release_proxy(name);
            return Err(r);
        }
    };
    let port = group.port();
    let listener = match first {
        Some(l) => Ok(l),
        None => {
            let allowed = match &decided.port {
                PortChoice::AnyOf(set) => set.contains(port),
                &PortChoice::Exactly(p) => p == port,
                PortChoice::NoPort => false,
            };
            let (ip, lowat) = (
                shared.config.proxy_ip(),
                shared.config.fastpath.user_not_sent_lowat,
            );
            if allowed {
                bind(ip, port, lowat, true).map_err(Refusal::port_unavailable)
            } else {
                Err(Refusal::port_not_allowed())
            }
        }
    };
    match listener {
        Ok(l) => Ok(Claimed {
            port,
            listener: Some(l),
            udp: None,
            vhost: None,
            group: Some(group),
        }),
        Err(r) => {
            if shared.groups.leave(&group, name) {
                shared.ports.release(port);
            }
            shared.directory.release_proxy(name);
            Err(r)
        }
    }
}

/// A group member: where its session and proxy are.
fn member(control: &Control, proxy: &str) -> VhostTarget {
    VhostTarget {
        worker: control.ctx().id,
        run_id: Arc::from(control.who.run_id.as_str()),
        control_id: control.who.id,
        proxy: Arc::from(proxy),
        credentials: None,
        http: None,
        group: None,
    }
}

/// What a proxy holds once claimed: its port (0 for a vhost proxy), its
/// listener, a vhost proxy's routes, its load-balancing group.
struct Claimed {
    port: u16,
    listener: Option<std::net::TcpListener>,
    /// A udp proxy's socket.
    udp: Option<std::net::UdpSocket>,
    vhost: Option<VhostRoutes>,
    group: Option<Arc<Group>>,
}

/// Claim a vhost proxy's name and its routes server-wide; on failure
/// nothing stays claimed.
fn claim_routes(
    control: &Control,
    np: &NewProxy,
    kind: ProxyType,
    domains: Vec<String>,
) -> Result<Claimed, Refusal> {
    let shared = &control.ctx().shared;
    let tcpmux = kind == ProxyType::Tcpmux;
    if tcpmux && np.multiplexer != "httpconnect" {
        return Err(Refusal::invalid_proxy(format!(
            "tcpmux multiplexer [{}] is not supported (only httpconnect)",
            np.multiplexer
        )));
    }
    let http = match kind {
        ProxyType::Http => Some(Arc::new(http_edits(np)?)),
        _ => None,
    };
    // http and tcpmux route by the (Proxy-)Authorization user and check
    // httpUser; https sees no HTTP and has neither.
    let user = if kind == ProxyType::Https {
        String::new()
    } else {
        np.route_by_http_user.clone()
    };
    let credentials = (kind != ProxyType::Https
        && !(np.http_user.is_empty() && np.http_pwd.is_empty()))
    .then(|| Arc::new((np.http_user.clone(), np.http_pwd.clone())));
    // Only http routes by path (frps: no locations is the one location "").
    let locations = match kind {
        ProxyType::Http if !np.locations.is_empty() => np.locations.clone(),
        _ => vec![String::new()],
    };
    if !shared.directory.claim_proxy(&np.proxy_name) {
        return Err(Refusal::proxy_exists(&np.proxy_name));
    }
    let target = VhostTarget {
        credentials,
        http,
        ..member(control, &np.proxy_name)
    };
    let table = vhost_table(shared, kind);
    let add =
        |t: &VhostTarget| domains::add_routes(&mut table.write(), &domains, &locations, &user, t);
    // In a group, the first member adds the routes, naming the group.
    let group = if np.group.is_empty() {
        add(&target).map(|()| None)
    } else {
        let params = Params::Http {
            domains: domains.clone(),
            locations: locations.clone(),
            user: user.clone(),
        };
        let m = member(control, &np.proxy_name);
        shared
            .groups
            .join(
                kind,
                control.auth.grant,
                &np.group,
                &np.group_key,
                params,
                m,
                |g| {
                    add(&VhostTarget {
                        group: Some(g.clone()),
                        ..target.clone()
                    })
                },
            )
            .map(Some)
    };
    let group = match group {
        Ok(g) => g,
        Err(r) => {
            shared.directory.release_proxy(&np.proxy_name);
            return Err(r);
        }
    };
    // The edge reaches the proxy itself under its name (a group's route
    // names its first member; the edge names one proxy).
    let tunnel = match (kind, control.auth.grant.invite()) {
        (ProxyType::Http, Some(invite)) => {
            shared.edge.tunnels.add(invite, target.clone());
            Some(invite)
        }
        _ => None,
    };
    let routes = VhostRoutes {
        kind,
        domains,
        locations,
        user,
        tunnel,
    };
    Ok(Claimed {
        port: 0,
        listener: None,
        udp: None,
        vhost: Some(routes),
        group,
    })
}

/// An http proxy's head rewrites, checked: a field it sets must be a
/// token name and a value without line breaks. The payload of an http
/// proxy's work connections is read here (heads are routed and rewritten
/// per request), so `useEncryption` and `useCompression` are refused
/// rather than ignored.
fn http_edits(np: &NewProxy) -> Result<HttpEdits, Refusal> {
    if np.use_encryption || np.use_compression {
        return Err(Refusal::invalid_proxy(
            "useEncryption and useCompression are not supported for http proxies",
        ));
    }
    let fields = |key: &str, m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| {
                if proto::vhost::rewrite::valid_field(k, v) {
                    Ok((proto::vhost::rewrite::canonical_name(k), v.clone()))
                } else {
                    Err(Refusal::invalid_proxy(format!(
                        "{key}.set: {k:?} is not a header field that can be sent"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    if !proto::vhost::rewrite::valid_field("Host", &np.host_header_rewrite) {
        return Err(Refusal::invalid_proxy(
            "hostHeaderRewrite holds a line break",
        ));
    }
    Ok(HttpEdits {
        host: np.host_header_rewrite.clone(),
        request: fields("requestHeaders", &np.headers)?,
        response: fields("responseHeaders", &np.response_headers)?,
    })
}

fn allocate_port<T>(
    ranges: &[(u16, u16)],
    ports: &crate::runtime::shared::PortTable,
    bind: impl Fn(u16) -> std::io::Result<T>,
) -> Result<(u16, T), Refusal> {
    let total: u64 = ranges.iter().map(|(a, b)| (*b - *a) as u64 + 1).sum();
    let start = rand_u64() % total.max(1);
    // Walk the allowed set from a random point; try every port at most once
    // but give up after a bounded number of bind attempts.
    let mut attempts = 0;
    for i in 0..total {
        let mut k = (start + i) % total;
        let mut port = 0;
        for (a, b) in ranges {
            let n = (*b - *a) as u64 + 1;
            if k < n {
                port = *a + k as u16;
                break;
            }
            k -= n;
        }
        if port == 0 || !ports.claim(port) {
            continue;
        }
        match bind(port) {
            Ok(l) => return Ok((port, l)),
            Err(_) => {
                ports.release(port);
                attempts += 1;
                if attempts > 64 {
                    break;
                }
            }
        }
    }
    Err(Refusal::no_available_port())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

fn bind(ip: IpAddr, port: u16, lowat: u32, reuse: bool) -> std::io::Result<std::net::TcpListener> {
    crate::transport::listener::bind_user(SocketAddr::new(ip, port), lowat, reuse)
}

/// Serve an accepted user connection in a task of its own, counted as
/// starting until the task runs (see [`Proxy::starting`]).
fn start_user(proxy: &Rc<Proxy>, control: &Rc<Control>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    proxy.unstarted.set(proxy.unstarted.get() + 1);
    monoio::spawn(serve_user(
        proxy.clone(),
        control.clone(),
        Conn::tcp(stream),
        peer,
        Vec::new(),
    ));
}

async fn accept_loop(proxy: Rc<Proxy>, control: Rc<Control>, listener: std::net::TcpListener) {
    let ctx = control.ctx().clone();
    let port = proxy.port;
    match TcpListener::from_std(listener) {
        Ok(listener) => {
            proxy
                .listen_fd
                .set(std::os::fd::AsRawFd::as_raw_fd(&listener));
            // Users a predecessor accepted for this port as it handed it
            // over (an upgrade).
            for (user, peer) in ctx.shared.parked.users(port) {
                match monoio::net::TcpStream::from_std(user) {
                    Ok(stream) => start_user(&proxy, &control, stream, peer),
                    Err(e) => {
                        tracing::warn!(port, error = %e, "cannot register a handed-over user connection")
                    }
                }
            }
            let handle = proxy.canceller.borrow().handle();
            while !proxy.closed.get() {
                match listener.cancelable_accept(handle.clone()).await {
                    Ok((stream, peer)) if proxy.closed.get() => {
                        // Accepted as the session moved to an upgrade's
                        // successor, which holds the port now.
                        crate::runtime::upgrade::hand_user(&ctx.shared, port, stream, peer);
                    }
                    Ok((stream, peer)) => start_user(&proxy, &control, stream, peer),
                    Err(_) if proxy.closed.get() => break,
                    Err(e) => {
                        tracing::warn!(proxy_name = %proxy.name, error = %e, "accept failed");
                        monoio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(proxy_name = %proxy.name, error = %e, "cannot register proxy listener")
        }
    }
    proxy.listen_fd.set(-1);
    // The listener is dropped (closed) by now. A tcp group's port stays
    // claimed until its last member closes.
    if proxy.releases_port.get() {
        ctx.shared.ports.release(port);
    }
    drop(control);
}

/// `user` is the accepted TCP connection, made a [`Conn`] by the accept
/// loop so that this task (one per user connection) holds it once;
/// `pending`, what was read from it to route it (a vhost connection's
/// ClientHello), goes to frpc first.
///
/// The wait for a work connection runs in a box of its own, made here,
/// and gives back what the relay needs: the task's `async` block captures
/// neither the connection nor the session (captured values keep their
/// place in a task's state for its whole life, moved out or not), and
/// this task lives as long as the connection (see [`relay::run`]).
pub fn serve_user(
    proxy: Rc<Proxy>,
    control: Rc<Control>,
    user: Conn,
    peer: SocketAddr,
    pending: Vec<u8>,
) -> impl std::future::Future<Output = ()> {
    let ctx = control.ctx().clone();
    let ready = Box::pin(ready_relay(proxy.clone(), control, user, peer, pending));
    async move {
        let stats = ctx.stats();
        WorkerStats::bump(&stats.conns_total, 1);
        WorkerStats::add(&stats.conns, 1);
        let Some((ends, opts, aborters)) = ready.await else {
            proxy.started();
            WorkerStats::add(&stats.conns, -1);
            return;
        };
        proxy.started();
        // A plain relay may go to a less busy worker (fastpath.spreadRelays).
        let samples = proxy.report_every > 0;
        let ends = match spread::hand_over(&ctx, ends, opts, &proxy.limits, &proxy.bytes, samples) {
            Handed::There { worker, key } => {
                let id = proxy.track_there(worker, key);
                let (p, shared) = (proxy.clone(), ctx.shared.clone());
                let on_done = Box::new(move || {
                    p.untrack(id);
                    p.relay_ended(&shared);
                });
                ctx.relays_out.borrow_mut().insert(key, on_done);
                return WorkerStats::add(&stats.conns, -1);
            }
            Handed::Here(ends) => ends,
            Handed::Gone => return WorkerStats::add(&stats.conns, -1),
        };
        let id = proxy.track(aborters);
        let due = || proxy.report_if_due(&ctx.events);
        let report = (proxy.report_every > 0).then_some(&due as &dyn Fn());
        relay::run(stats, ends, opts, &proxy.bytes, &proxy.limits, report).await;
        // Bytes moved after the proxy's last report go out here.
        proxy.untrack(id);
        WorkerStats::add(&stats.conns, -1);
        proxy.relay_ended(&ctx.shared);
    }
}

/// A work connection for `user`, and the relay's options and aborters;
/// `None` when the session gave none.
async fn ready_relay(
    proxy: Rc<Proxy>,
    control: Rc<Control>,
    user: Conn,
    peer: SocketAddr,
    pending: Vec<u8>,
) -> Option<(relay::Ends, RelayOpts, [Aborter; 2])> {
    let local = match &user {
        Conn::Tcp(s, _) => s.local_addr().ok(),
        _ => None,
    };
    let start = start_work_conn(&proxy, local, peer);
    let work = control.take_work_conn(start).await?;
    let fp = &control.ctx().shared.config.fastpath;
    let opts = RelayOpts {
        encryption_key: proxy.use_encryption.then_some(control.auth.token_key),
        compression: proxy.use_compression,
        buffer: fp.relay_buffer,
        splice: fp.splice,
        splice_local: fp.splice_local,
    };
    let aborters = [user.aborter(), work.aborter()];
    let ends = relay::Ends {
        user,
        work,
        pending,
    };
    Some((ends, opts, aborters))
}

/// What frpc is told about a user connection (from `peer`, accepted on
/// `local`) when it is handed a work connection for it.
pub fn start_work_conn(
    proxy: &Proxy,
    local: Option<SocketAddr>,
    peer: SocketAddr,
) -> StartWorkConn {
    StartWorkConn {
        proxy_name: proxy.name.clone(),
        src_addr: peer.ip().to_string(),
        src_port: peer.port(),
        dst_addr: local.map(|a| a.ip().to_string()).unwrap_or_default(),
        dst_port: local.map(|a| a.port()).unwrap_or_default(),
        error: String::new(),
    }
}
