//! Starting and stopping a fastpath process: bind listeners, spawn one
//! worker thread per core, wait for a signal, stop within 5 s.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use shm::{InstanceDir, ShmDir, LOCK_FILE};

use crate::config::Config;
use crate::policy::Policy;
use crate::report::stats::{StatsSnapshot, WorkerStats};
use crate::runtime::shared::{Directory, PortTable, Shared};
use crate::runtime::upgrade::{Entry, Inherited, Upgrader};
use crate::runtime::worker;
use crate::transport::handoff::WorkerMsg;
use crate::transport::listener::bind_tcp;

/// How often the policy directory is checked for a new table. A stat of
/// one tmpfs file (500 a second cost nothing measurable), and it bounds how
/// late a revocation lands.
const POLICY_POLL: Duration = Duration::from_millis(2);
/// How often the tenant login index catches up with the table and clock.
const TENANT_INDEX_TICK: Duration = Duration::from_millis(100);

/// A running fastpath.
pub struct Server {
    shared: Arc<Shared>,
    /// Held while we run (see [`ShmDir::lock`]): two fastpaths on one
    /// directory would both bind the frp port (SO_REUSEPORT) and split the
    /// clients between them; the second one stops at start instead. An
    /// upgrade hands it to the successor (see [`crate::runtime::upgrade`]).
    instance_lock: Arc<std::sync::Mutex<Option<std::fs::File>>>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
    upgrader: Option<Arc<Upgrader>>,
}

/// How a server starts besides its config.
#[derive(Default)]
pub struct Launch {
    /// The sockets of the fastpath this one takes over (`--takeover`).
    pub takeover: Option<Inherited>,
    /// This binary and its arguments, to start a successor with.
    pub exe: Option<(std::path::PathBuf, Vec<std::ffi::OsString>)>,
}

/// Listening sockets: taken over from a predecessor where it had them,
/// bound otherwise; a duplicate of each is kept for the next successor.
struct Binder {
    inherited: Option<Inherited>,
    keep: Vec<(Entry, std::os::fd::OwnedFd)>,
}

impl Binder {
    /// The socket a predecessor handed over (`taken`), or a new one; a
    /// duplicate is kept, as `entry`, for the next successor.
    fn keep<T: std::os::fd::AsFd>(
        &mut self,
        entry: Entry,
        taken: Option<T>,
        bind: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let socket = match taken {
            Some(s) => s,
            None => bind()?,
        };
        match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => self.keep.push((entry, fd)),
            // Only an upgrade misses it, which then binds that one anew.
            Err(e) => {
                tracing::warn!(error = %e, kind = entry.kind, "cannot keep a socket for upgrades")
            }
        }
        Ok(socket)
    }

    fn tcp(
        &mut self,
        kind: &str,
        worker: usize,
        addr: SocketAddr,
        bind: impl FnOnce() -> std::io::Result<std::net::TcpListener>,
    ) -> std::io::Result<std::net::TcpListener> {
        let taken = self
            .inherited
            .as_mut()
            .and_then(|i| i.tcp(kind, worker, addr));
        self.keep(Entry::new(kind, worker), taken, bind)
    }

    fn udp(
        &mut self,
        worker: usize,
        place: (usize, usize),
        addr: SocketAddr,
        bind: impl FnOnce() -> std::io::Result<std::net::UdpSocket>,
    ) -> std::io::Result<std::net::UdpSocket> {
        let taken = self
            .inherited
            .as_mut()
            .and_then(|i| i.udp(worker, place, addr));
        let mut entry = Entry::new("stun", worker);
        entry.place = place;
        self.keep(entry, taken, bind)
    }
}

impl Server {
    /// Bind the bind port on every worker and start the workers.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        Server::launch(config, Launch::default())
    }

    /// [`Server::start`], taking a predecessor's sockets over when
    /// `launch` carries them.
    pub fn launch(config: Config, launch: Launch) -> anyhow::Result<Server> {
        let mut instance_lock = None;
        let taking_over = launch.takeover.is_some();
        let mut binder = Binder {
            inherited: launch.takeover,
            keep: Vec::new(),
        };
        let workers = config.worker_count(crate::config::available_cores());
        let governed = if config.fastpath.policy_dir.is_empty() {
            None
        } else {
            let path = std::path::Path::new(&config.fastpath.policy_dir);
            let dir = ShmDir::open(path).context("fastpath.policyDir")?;
            // The worker count tells the publisher how many rings to wait
            // for before a change counts as in force.
            let note = shm::fastpath_lock_note(std::process::id(), workers);
            // A successor takes the lock once its predecessor let it go.
            if !taking_over {
                instance_lock =
                    Some(dir.lock(LOCK_FILE, &note).with_context(|| {
                        format!("fastpath.policyDir {} is taken", path.display())
                    })?);
            }
            let key = dir
                .instance_key()
                .context("fastpath.policyDir: instance key")?;
            Some(InstanceDir { dir, key })
        };
        let policy = Arc::new(Policy::new(governed));
        if let Some(g) = policy.governed() {
            // Load what is there before accepting, so the first logins are
            // decided by the table rather than refused for want of one.
            if g.dir.path().join(shm::TABLE_FILE).exists() {
                match policy.try_load() {
                    Ok(generation) => tracing::info!(generation, "policy table in force"),
                    Err(reason) => tracing::warn!(%reason, "policy table refused"),
                }
            }
        }
        let ip: IpAddr = config.bind_addr.parse().context("bindAddr")?;
        let addr = SocketAddr::new(ip, config.bind_port);
        let tls = crate::transport::tls::server_config(&config.transport.tls)?;
        let mut listeners = Vec::with_capacity(workers);
        for w in 0..workers {
            listeners.push(
                binder
                    .tcp("bind", w, addr, || bind_tcp(addr, true))
                    .with_context(|| format!("cannot listen on {addr} (bindAddr/bindPort)"))?,
            );
        }
        let addr = listeners[0].local_addr()?;
        // frps's vhost listeners bind proxyBindAddr, as proxies do.
        let ip = config.proxy_ip();
        let b = &mut binder;
        let http = vhost_listeners(
            b,
            "http",
            ip,
            config.vhost_http_port,
            "vhostHTTPPort",
            workers,
        )?;
        let https = vhost_listeners(
            b,
            "https",
            ip,
            config.vhost_https_port,
            "vhostHTTPSPort",
            workers,
        )?;
        let not_found_page = match config.custom_404_page.as_str() {
            "" => crate::frp::http::NOT_FOUND_PAGE.as_bytes().to_vec(),
            path => std::fs::read(path)
                .with_context(|| format!("custom404Page: cannot read {path:?}"))?,
        };
        let tcpmux = vhost_listeners(
            b,
            "tcpmux",
            ip,
            config.tcpmux_http_connect_port,
            "tcpmuxHTTPConnectPort",
            workers,
        )?;
        // The mesh relay binds bindAddr, as the frp port does.
        let mesh = vhost_listeners(
            b,
            "mesh",
            addr.ip(),
            config.fastpath.mesh_relay_port,
            "fastpath.meshRelayPort",
            workers,
        )?;
        let site = config.stun_site();
        let mut stun: Vec<Option<crate::stun::WorkerSockets>> = match &site {
            Some(site) => crate::stun::bind(site, workers, |w, place, at, bind| {
                b.udp(w, place, at, bind)
            })
            .with_context(|| {
                format!(
                    "cannot listen for STUN on {} (fastpath.stunPort, stunIP, stunSecondaryIP)",
                    site.addr((0, 0))
                )
            })?
            .into_iter()
            .map(Some)
            .collect(),
            None => (0..workers).map(|_| None).collect(),
        };
        if let Some(site) = &site {
            tracing::info!(
                addr = %site.addr((0, 0)),
                alternate = site.alternate.then(|| site.addr((1, 1)).to_string()),
                "STUN server listening"
            );
        }
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| flume::unbounded()).unzip();
        let token_key = proto::cfb::derive_key(config.auth.token.as_bytes());
        let pin = config.fastpath.cpu_pinning;
        let shared = Arc::new(Shared {
            config,
            token_key,
            ports: PortTable::default(),
            udp_ports: PortTable::default(),
            directory: Directory::default(),
            inboxes: senders,
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            timings: Default::default(),
            stopping: Default::default(),
            draining: Default::default(),
            successor: Default::default(),
            parked: Default::default(),
            policy,
            tls,
            http_routes: Default::default(),
            groups: Default::default(),
            visitors: Default::default(),
            xtcp: Default::default(),
            not_found_page,
            https_routes: Default::default(),
            tcpmux_routes: Default::default(),
            mesh_crossing: (0..workers).map(|_| Default::default()).collect(),
            edge: Default::default(),
        });
        if shared.policy.governed().is_some() {
            // The table loaded at start may name a certificate store.
            shared.edge.refresh(&shared.policy);
            let s = shared.clone();
            std::thread::Builder::new()
                .name("fastpath-policy".into())
                .spawn(move || {
                    let stop = || s.is_stopping();
                    let notify = |generation| {
                        s.edge.refresh(&s.policy);
                        for inbox in &s.inboxes {
                            let _ = inbox.send(WorkerMsg::PolicyChanged { generation });
                        }
                    };
                    crate::policy::watch(s.policy.clone(), POLICY_POLL, stop, notify)
                })?;
            let s = shared.clone();
            std::thread::Builder::new()
                .name("fastpath-tenants".into())
                .spawn(move || {
                    // Keeps the tenant login index on the table in force and
                    // its window on the clock (see tenants.rs).
                    while !s.is_stopping() {
                        let loaded = s.policy.current();
                        let now = (crate::report::events::now_ms() / 1000) as i64;
                        s.policy
                            .finder
                            .refresh(loaded.as_ref().map(|l| l.get()).as_ref(), now);
                        std::thread::sleep(TENANT_INDEX_TICK);
                    }
                })?;
        }
        spawn_trimmer(shared.clone())?;
        if !shared.config.fastpath.metrics_addr.is_empty() {
            let at = &shared.config.fastpath.metrics_addr;
            // Validated as an address with the config.
            let sa: SocketAddr = at.parse().context("fastpath.metricsAddr")?;
            let l = binder
                .tcp("metrics", 0, sa, || std::net::TcpListener::bind(sa))
                .with_context(|| format!("cannot listen on {at} (fastpath.metricsAddr)"))?;
            tracing::info!(addr = %at, "metrics on /metrics");
            let s = shared.clone();
            std::thread::Builder::new()
                .name("fastpath-metrics".into())
                .spawn(move || crate::report::metrics::serve(l, s))?;
        }
        // Our own listening port must never be handed to a proxy.
        shared.ports.claim(addr.port());
        for port in [
            shared.config.vhost_http_port,
            shared.config.vhost_https_port,
            shared.config.tcpmux_http_connect_port,
            shared.config.fastpath.mesh_relay_port,
        ] {
            if port != 0 {
                shared.ports.claim(port);
            }
        }
        // Nor the STUN server's UDP ports to a udp proxy.
        if let Some(site) = shared.config.stun_site() {
            let n = if site.alternate { 2 } else { 1 };
            for &port in &site.ports[..n] {
                shared.udp_ports.claim(port);
            }
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut threads = Vec::with_capacity(workers);
        let listeners = listeners
            .into_iter()
            .zip(http)
            .zip(https)
            .zip(tcpmux)
            .zip(mesh);
        for (id, (((((listener, http), https), tcpmux), mesh), inbox)) in
            listeners.zip(receivers).enumerate()
        {
            let shared = shared.clone();
            let stun = stun.get_mut(id).and_then(Option::take);
            let t = std::thread::Builder::new()
                .name(format!("fastpath-w{id}"))
                .spawn(move || {
                    if pin {
                        if let Err(e) = monoio::utils::bind_to_cpu_set([id % cores]) {
                            tracing::warn!(worker = id, error = ?e, "cpu pinning failed");
                        }
                    }
                    let listeners = worker::Listeners {
                        bind: listener,
                        http,
                        https,
                        tcpmux,
                        mesh,
                        stun: site.zip(stun),
                    };
                    worker::run(id, shared, listeners, inbox)
                })?;
            threads.push(t);
        }
        tracing::info!(%addr, workers, "fastpath listening");
        let mut server = Server {
            shared,
            instance_lock: Arc::new(std::sync::Mutex::new(instance_lock)),
            threads,
            addr,
            upgrader: None,
        };
        if let Some(inherited) = binder.inherited.take() {
            let from = match inherited.ready() {
                Ok((pid, stream)) => {
                    if let Some(stream) = stream {
                        crate::runtime::upgrade::receive_parked(server.shared.clone(), stream)?;
                    }
                    pid
                }
                Err(e) => {
                    server.stop(Duration::from_secs(2));
                    return Err(e.context("taking over"));
                }
            };
            tracing::info!(
                predecessor = from,
                "took the listening sockets over; the predecessor drains"
            );
            // From here on this process serves whatever happens: the
            // predecessor has stopped accepting.
            if let Some(g) = server.shared.policy.governed() {
                if let Err(e) = server.take_instance_lock(&g.dir) {
                    tracing::error!("{e:#}");
                }
            }
        }
        let up = &server.shared.config.fastpath.upgrade_socket;
        if !up.is_empty() {
            let started = Upgrader::start(
                up,
                server.shared.clone(),
                std::mem::take(&mut binder.keep),
                server.instance_lock.clone(),
                launch.exe,
            );
            match started {
                Ok(u) => server.upgrader = Some(u),
                Err(e) if taking_over => tracing::error!("upgrades off: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        Ok(server)
    }

    /// After a takeover: the lock the predecessor let go.
    fn take_instance_lock(&self, dir: &ShmDir) -> anyhow::Result<()> {
        let note = shm::fastpath_lock_note(std::process::id(), self.shared.stats.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match dir.lock(LOCK_FILE, &note) {
                Ok(f) => {
                    *self.instance_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow::anyhow!("fastpath.policyDir: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Since when this process drains: a successor took its sockets.
    pub fn draining_since(&self) -> Option<Instant> {
        self.upgrader.as_ref().and_then(|u| u.draining_since())
    }

    /// Live sessions and user connections, all workers together.
    pub fn live(&self) -> i64 {
        self.shared
            .stats
            .iter()
            .map(|s| s.sessions.load(Ordering::Relaxed) + s.conns.load(Ordering::Relaxed))
            .sum()
    }

    /// Start a successor from this binary (`fastpath upgrade`, SIGUSR2);
    /// its pid once it took over.
    pub fn upgrade(&self) -> Result<u32, String> {
        match &self.upgrader {
            Some(u) => u.spawn_successor(),
            None => Err("fastpath.upgradeSocket is not set".into()),
        }
    }

    /// The bind address actually in use (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters of every worker.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// Stop accepting, close sessions, and wait for the workers, at most
    /// `limit`. Returns whether every worker finished in time.
    pub fn stop(self, limit: Duration) -> bool {
        self.shared.stopping.store(true, Ordering::Release);
        for inbox in &self.shared.inboxes {
            let _ = inbox.send(WorkerMsg::Stop);
        }
        let deadline = Instant::now() + limit;
        let mut clean = true;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !t.is_finished() {
                clean = false;
                break;
            }
            let _ = t.join();
        }
        // After the workers (they write events until they end).
        if let Some(u) = &self.upgrader {
            u.close();
        }
        clean
    }
}

/// How often freed heap memory is handed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// glibc keeps memory freed after a burst (a flood of connections or
/// streams, windows that filled) in its per-thread arenas for good. A
/// thread of its own hands the free pages back every few seconds, off the
/// workers: `malloc_trim` takes each arena's lock for the time it walks
/// that arena. (mimalloc was tried instead: its idle process is 2.5 times
/// larger and it kept more after the flood; see bench/RESULTS.md.)
fn spawn_trimmer(shared: Arc<Shared>) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("fastpath-trim".into())
        .spawn(move || {
            while !shared.is_stopping() {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only returns free pages to the kernel;
                // it synchronises with other threads through the arena locks.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        })?;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(shared);
    Ok(())
}

/// One listener per worker on a vhost port (SO_REUSEPORT), or none when
/// the port is 0; the error names the key.
fn vhost_listeners(
    binder: &mut Binder,
    kind: &str,
    ip: IpAddr,
    port: u16,
    key: &str,
    workers: usize,
) -> anyhow::Result<Vec<Option<std::net::TcpListener>>> {
    (0..workers)
        .map(|w| {
            if port == 0 {
                return Ok(None);
            }
            let a = SocketAddr::new(ip, port);
            binder
                .tcp(kind, w, a, || bind_tcp(a, true))
                .map(Some)
                .with_context(|| format!("cannot listen on {a} (proxyBindAddr/{key})"))
        })
        .collect()
}
