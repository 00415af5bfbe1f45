//! TCP proxies: a public listener owned by the session's worker. Each user
//! connection takes a work connection from the session's pool, announces
//! itself with StartWorkConn and is relayed.
//!
//! Port rules follow frps: `remotePort` must be inside `allowPorts`, free
//! server-wide (a lock-free bitmap shared by all workers) and bindable;
//! `0` lets the server pick one; `maxPortsPerClient` caps a session.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use proto::msg::{NewProxy, StartWorkConn};

use crate::config::Config;
use crate::conn::Aborter;
use crate::control::Control;
use crate::events::EventSink;
use crate::policy::{Grant, PortRule};
use crate::relay::{self, RelayOpts};
use crate::stats::WorkerStats;
use crate::tenants::{Bucket, Limits};
use crate::worker::WorkerCtx;
use proto::events::Event;

/// A registered proxy.
pub struct Proxy {
    /// Full proxy name (with the `user.` prefix frpc adds).
    pub name: String,
    port: u16,
    use_encryption: bool,
    use_compression: bool,
    proxy_type: String,
    canceller: RefCell<Canceller>,
    closed: Cell<bool>,
    control: std::rc::Weak<Control>,
    /// The worker, for the events a proxy reports on its own (its closing
    /// report does not depend on its session still being there).
    worker: std::rc::Weak<WorkerCtx>,
    /// Bytes relayed visitor → frpc and frpc → visitor.
    bytes: [Cell<u64>; 2],
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
    /// Live visitor relays, so that a policy close can end them.
    relays: RefCell<HashMap<u64, [Aborter; 2]>>,
    /// Sample traffic as soon as this many bytes are unreported (the
    /// tenant's report interval; 0 = periodic samples only).
    report_every: u64,
    next_relay: Cell<u64>,
}

impl Proxy {
    /// Validate a NewProxy and open its listener. The error string is what
    /// the client reads in NewProxyResp.
    pub fn register(control: &Rc<Control>, np: NewProxy) -> Result<Rc<Proxy>, String> {
        let ctx = control.ctx();
        let shared = &ctx.shared;
        let cfg = &shared.config;
        let name = np.proxy_name.clone();
        if name.is_empty() {
            return Err("proxy name is empty".into());
        }
        if np.remote_port < 0 || np.remote_port > 65535 {
            return Err(format!("remote port {} is out of range", np.remote_port));
        }
        let grant = control.grant;
        // A tenant's maxPortsPerClient replaces the server's.
        if cfg.max_ports_per_client > 0
            && !matches!(grant, Grant::Tenant(_))
            && control.ports_in_use() >= cfg.max_ports_per_client as usize
        {
            return Err("exceed the max_ports_per_client".into());
        }
        let proxy_bucket = match np.bandwidth_limit_mode.as_str() {
            "server" => {
                let bps = proto::policy::bandwidth::parse_bandwidth(
                    "transport.bandwidthLimit",
                    &np.bandwidth_limit,
                )?;
                (bps > 0).then(|| Arc::new(Bucket::new(bps)))
            }
            // "client" (frpc limits itself) or unset.
            "" | "client" => None,
            other => {
                return Err(format!(
                    "transport.bandwidthLimitMode {other:?} must be \"client\" or \"server\""
                ))
            }
        };
        let rule = shared.policy.authorize_proxy(
            grant,
            &np.proxy_type,
            np.remote_port as u16,
            control.proxy_count(),
            control.ports_in_use(),
        )?;
        // Policy first, so that a type the invite forbids is refused as
        // such rather than as not implemented.
        if !matches!(np.proxy_type.as_str(), "" | "tcp") {
            shared.policy.release_proxy(grant);
            return Err(format!(
                "proxy type [{}] is not supported by this server yet",
                np.proxy_type
            ));
        }
        if !shared.directory.claim_proxy(&name) {
            shared.policy.release_proxy(grant);
            return Err(format!("proxy [{name}] already exists"));
        }
        let ranges: Vec<(u16, u16)> = match &rule {
            PortRule::Config if cfg.allow_ports.is_empty() => vec![(10000, 60000)],
            PortRule::Config => cfg.allow_ports.iter().map(|r| r.bounds()).collect(),
            PortRule::Pool(pool) => pool.ranges().to_vec(),
        };
        let ip = cfg.proxy_ip();
        let bound = if np.remote_port == 0 {
            allocate_port(&ranges, &shared.ports, ip)
        } else {
            let port = np.remote_port as u16;
            if matches!(rule, PortRule::Config) && !port_allowed(cfg, port) {
                Err("port not allowed".to_string())
            } else if !shared.ports.claim(port) {
                Err("port already used".to_string())
            } else {
                bind(ip, port).map(|l| (port, l)).map_err(|e| {
                    shared.ports.release(port);
                    format!("port unavailable: {e}")
                })
            }
        };
        let (port, listener) = match bound {
            Ok(x) => x,
            Err(e) => {
                shared.directory.release_proxy(&name);
                shared.policy.release_proxy(grant);
                return Err(e);
            }
        };
        let proxy_type = if np.proxy_type.is_empty() {
            "tcp".to_string()
        } else {
            np.proxy_type
        };
        let proxy = Rc::new(Proxy {
            name,
            port,
            proxy_type,
            use_encryption: np.use_encryption,
            use_compression: np.use_compression,
            canceller: RefCell::new(Canceller::new()),
            closed: Cell::new(false),
            control: Rc::downgrade(control),
            worker: Rc::downgrade(ctx),
            bytes: Default::default(),
            reported: Default::default(),
            close_reported: Cell::new(false),
            run_id: control.run_id.clone(),
            invite: grant.invite(),
            tenant_token: control.tenant.as_ref().map(|t| t.token.clone()),
            limits: Limits {
                tenant: control.tenant.as_ref().map(|t| t.bucket.clone()),
                proxy: proxy_bucket,
            },
            relays: RefCell::new(HashMap::new()),
            next_relay: Cell::new(0),
            report_every: control
                .tenant
                .as_ref()
                .and_then(|t| {
                    let loaded = shared.policy.current()?;
                    let every = loaded.get().tenant(&t.token)?.report_interval_bytes();
                    Some(every)
                })
                .unwrap_or(0),
        });
        WorkerStats::add(&ctx.stats().proxies, 1);
        tracing::info!(session = %control.run_id, proxy = %proxy.name, port, invite = ?grant.invite(), "proxy registered");
        ctx.events.emit(Event::ProxyRegistered {
            run_id: control.run_id.clone(),
            invite: grant.invite(),
            proxy: proxy.name.clone(),
            proxy_type: proxy.proxy_type.clone(),
            remote_port: port,
        });
        monoio::spawn(accept_loop(proxy.clone(), control.clone(), listener));
        Ok(proxy)
    }

    /// The public port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// NewProxyResp.remote_addr, as frps writes it.
    pub fn remote_addr(&self) -> String {
        format!(":{}", self.port)
    }

    /// Stop listening and free the port and the name.
    pub fn close(&self, reason: &str) {
        if self.closed.replace(true) {
            return;
        }
        // The accept loop sees the cancel, drops the listener, then frees
        // the port in the shared table (in that order, so a new owner can
        // bind it as soon as it can claim it).
        let c = std::mem::replace(&mut *self.canceller.borrow_mut(), Canceller::new());
        let _ = c.cancel();
        // The closing report goes out whatever else is gone: it is what
        // makes the slowpath report the remainder it holds.
        if let Some(ctx) = self.worker.upgrade() {
            self.report_traffic(&ctx.events, true);
        }
        if let Some(c) = self.control.upgrade() {
            let ctx = c.ctx();
            ctx.shared.directory.release_proxy(&self.name);
            ctx.shared.policy.release_proxy(c.grant);
            WorkerStats::add(&ctx.stats().proxies, -1);
            ctx.events.emit(Event::ProxyClosed {
                run_id: c.run_id.clone(),
                invite: c.grant.invite(),
                proxy: self.name.clone(),
                reason: reason.to_string(),
            });
            tracing::info!(session = %c.run_id, proxy = %self.name, %reason, "proxy closed");
        }
    }

    /// Report the bytes relayed since the last report. `closed` marks a
    /// tenant proxy's last report: the first one is sent even when no byte
    /// moved since the last sample, since it tells the slowpath to report
    /// the remainder it holds; relays that outlive the proxy report what
    /// they moved after it the same way, when they moved anything.
    pub fn report_traffic(&self, events: &EventSink, closed: bool) {
        let now = [self.bytes[0].get(), self.bytes[1].get()];
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

    /// Whether visitor connections are still being relayed.
    pub fn relaying(&self) -> bool {
        !self.relays.borrow().is_empty()
    }

    /// Sample now if the tenant's report interval is unreported.
    pub fn report_if_due(&self, events: &EventSink) {
        let moved = self.bytes[0].get() + self.bytes[1].get();
        let reported = self.reported[0].get() + self.reported[1].get();
        if self.report_every > 0 && moved - reported >= self.report_every {
            self.report_traffic(events, false);
        }
    }

    /// End every visitor connection this proxy is relaying.
    pub fn abort_relays(&self) {
        for a in self.relays.borrow().values() {
            for x in a {
                x.abort();
            }
        }
    }
}

fn port_allowed(cfg: &Config, port: u16) -> bool {
    cfg.allow_ports.is_empty()
        || cfg.allow_ports.iter().any(|r| {
            let (a, b) = r.bounds();
            a <= port && port <= b
        })
}

fn allocate_port(
    ranges: &[(u16, u16)],
    ports: &crate::shared::PortTable,
    ip: IpAddr,
) -> Result<(u16, std::net::TcpListener), String> {
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
        match bind(ip, port) {
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
    Err("no available port".into())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<std::net::TcpListener> {
    crate::listener::bind_tcp(SocketAddr::new(ip, port), false)
}

async fn accept_loop(proxy: Rc<Proxy>, control: Rc<Control>, listener: std::net::TcpListener) {
    let ctx = control.ctx().clone();
    let port = proxy.port;
    match TcpListener::from_std(listener) {
        Ok(listener) => {
            let handle = proxy.canceller.borrow().handle();
            while !proxy.closed.get() {
                match listener.cancelable_accept(handle.clone()).await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        monoio::spawn(serve_user(proxy.clone(), control.clone(), stream, peer));
                    }
                    Err(_) if proxy.closed.get() => break,
                    Err(e) => {
                        tracing::warn!(proxy = %proxy.name, error = %e, "accept failed");
                        monoio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Err(e) => tracing::warn!(proxy = %proxy.name, error = %e, "cannot register proxy listener"),
    }
    // The listener is dropped (closed) by now.
    ctx.shared.ports.release(port);
    drop(control);
}

async fn serve_user(proxy: Rc<Proxy>, control: Rc<Control>, user: TcpStream, peer: SocketAddr) {
    let ctx = control.ctx().clone();
    let stats = ctx.stats();
    WorkerStats::bump(&stats.conns_total, 1);
    WorkerStats::add(&stats.conns, 1);
    let local = user.local_addr().ok();
    let start = StartWorkConn {
        proxy_name: proxy.name.clone(),
        src_addr: peer.ip().to_string(),
        src_port: peer.port(),
        dst_addr: local.map(|a| a.ip().to_string()).unwrap_or_default(),
        dst_port: local.map(|a| a.port()).unwrap_or_default(),
        error: String::new(),
    };
    if let Some(work) = control.take_work_conn(&start).await {
        let key = control.token_key;
        let opts = RelayOpts {
            encryption_key: proxy.use_encryption.then_some(key),
            compression: proxy.use_compression,
            buffer: ctx.shared.config.fastpath.relay_buffer,
            splice: ctx.shared.config.fastpath.splice,
        };
        drop(control);
        let id = proxy.next_relay.get();
        proxy.next_relay.set(id + 1);
        proxy
            .relays
            .borrow_mut()
            .insert(id, [Aborter::Fd(user.as_raw_fd()), work.aborter()]);
        let due = || proxy.report_if_due(&ctx.events);
        let report = (proxy.report_every > 0).then_some(&due as &dyn Fn());
        relay::run(&ctx, user, work, opts, &proxy.bytes, &proxy.limits, report).await;
        proxy.relays.borrow_mut().remove(&id);
        if proxy.closed.get() {
            // Bytes moved after the proxy's last report.
            proxy.report_traffic(&ctx.events, true);
        }
    }
    WorkerStats::add(&stats.conns, -1);
}
