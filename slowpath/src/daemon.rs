//! Start-up of `slowpath up` and `slowpath serve`: database, admin key,
//! signing key, the local node, the first policy table, the event drain, the
//! API, and (for `up`) the demo invite and the fastpath child.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use fastpath::shm::{InstanceDir, LockError, SLOWPATH_LOCK_FILE};
use slowpath::api::{self, App, TenantServices};
use slowpath::db::{self, Backend, Db};
use slowpath::etcd::{self, EtcdConfig};
use slowpath::events_drain::EventDrain;
use slowpath::invites::{self, Invite, NewInvite};
use slowpath::nodes::{self, NewNode, Node, NodePatch};
use slowpath::policy_publish::Publisher;
use slowpath::quota::QuotaTracker;
use slowpath::rate_limit::RateLimiter;
use slowpath::tenants::{Tenant, TenantRecord};
use slowpath::traffic_reports::{self, ReportSettings};
use slowpath::{admin_key, credentials, frpc_config, private_files, tickets};
use tokio::sync::watch;

use crate::cli::{ServeArgs, UpArgs};
use crate::supervisor::{self, Fastpath};

const LOCAL_NODE_KEY: &str = "local_node_id";
const DEMO_INVITE_KEY: &str = "demo_invite_id";
/// `meta` key of the last tenant list read from etcd (JSON records): a
/// slowpath that restarts while etcd is down publishes these, so the
/// fastpath keeps the last good tenants.
const ETCD_SNAPSHOT_KEY: &str = "etcd_tenants_snapshot";
/// The etcd snapshot is written at most this often.
const ETCD_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a fastpath config says about the node it serves.
#[derive(Debug, Default)]
struct FastpathSettings {
    bind_port: Option<u16>,
    token: Option<String>,
    allow_ports: Option<String>,
    policy_dir: Option<PathBuf>,
    etcd: Option<EtcdConfig>,
}

/// Reads the keys the node row must agree with from a fastpath TOML.
fn read_fastpath_config(path: &Path) -> Result<FastpathSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--fastpath-config {}: cannot read", path.display()))?;
    let v: toml::Value = toml::from_str(&text)
        .with_context(|| format!("--fastpath-config {}: not valid TOML", path.display()))?;
    let mut s = FastpathSettings::default();
    if let Some(p) = v.get("bindPort").and_then(|p| p.as_integer()) {
        s.bind_port = Some(u16::try_from(p).with_context(|| {
            format!(
                "--fastpath-config {}: bindPort must be 1-65535",
                path.display()
            )
        })?);
    }
    s.token = v
        .get("auth")
        .and_then(|a| a.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    if let Some(ranges) = v.get("allowPorts").and_then(|a| a.as_array()) {
        let mut parts = Vec::new();
        for r in ranges {
            let get = |k: &str| r.get(k).and_then(|x| x.as_integer());
            match (get("single"), get("start"), get("end")) {
                (Some(p), _, _) => parts.push(p.to_string()),
                (None, Some(a), Some(b)) => parts.push(format!("{a}-{b}")),
                _ => bail!(
                    "--fastpath-config {}: allowPorts entries need start/end or single",
                    path.display()
                ),
            }
        }
        if !parts.is_empty() {
            s.allow_ports = Some(parts.join(","));
        }
    }
    s.policy_dir = v
        .get("fastpath")
        .and_then(|f| f.get("policyDir"))
        .and_then(|d| d.as_str())
        .map(PathBuf::from);
    s.etcd = EtcdConfig::from_toml(&v)
        .map_err(|e| anyhow!("--fastpath-config {}: {e}", path.display()))?;
    Ok(s)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

/// Registers this host as a node on first start (remembered in `meta`), and
/// brings it in line with the fastpath config on later ones.
async fn ensure_local_node(
    db: &Db,
    args: &ServeArgs,
    data_dir: &Path,
    fp: &FastpathSettings,
) -> Result<Node> {
    let port = fp.bind_port.unwrap_or(args.frp_port);
    if let Some(id) = db::meta_get(db, LOCAL_NODE_KEY).await? {
        if let Ok(node) = nodes::get(db, &id).await {
            let mut patch = NodePatch::default();
            if node.server_port != port {
                patch.server_port = Some(port);
            }
            if node.server_addr != args.public_addr {
                patch.server_addr = Some(args.public_addr.clone());
            }
            if let Some(t) = fp.token.as_ref().filter(|t| **t != node.frp_token) {
                patch.token = Some(t.clone());
            }
            if let Some(p) = fp
                .allow_ports
                .as_ref()
                .filter(|p| **p != node.port_pool.to_string())
            {
                patch.port_pool = Some(p.clone());
            }
            if let Some(r) = fp
                .etcd
                .as_ref()
                .map(|e| &e.region)
                .filter(|r| **r != node.region)
            {
                patch.region = Some(r.clone());
            }
            return Ok(nodes::update(db, &id, patch).await?);
        }
    }
    let (node, key) = nodes::register(
        db,
        NewNode {
            name: hostname(),
            server_addr: args.public_addr.clone(),
            server_port: port,
            region: fp
                .etcd
                .as_ref()
                .map(|e| e.region.clone())
                .unwrap_or_default(),
            tags: vec!["local".to_owned()],
            public: false,
            port_pool: fp.allow_ports.clone(),
            proxy_types: None,
            max_proxies_per_session: 0,
            token: fp.token.clone(),
        },
    )
    .await?;
    db::meta_set(db, LOCAL_NODE_KEY, &node.id).await?;
    let key_path = data_dir.join("node.key");
    private_files::write(&key_path, format!("{key}\n").as_bytes())?;
    println!(
        "Registered this host as node {} (node key in {})",
        node.id,
        key_path.display()
    );
    Ok(node)
}

/// The fastpath config `up` writes when none is given.
fn fastpath_toml(node: &Node, shm_dir: &Path) -> Result<String> {
    // The config holds the directory as a string: a path that is not UTF-8
    // cannot be written there as the same path.
    let policy_dir = shm_dir
        .to_str()
        .with_context(|| format!("--shm-dir {}: not UTF-8", shm_dir.display()))?;
    frpc_config::render_fastpath(&frpc_config::FastpathFile {
        node_id: &node.id,
        bind_port: node.server_port,
        token: &node.frp_token,
        allow_ports: &node.port_pool,
        policy_dir,
    })
    .context("cannot write the fastpath config")
}

/// A usable demo invite on the local node (reused across starts while it
/// stays within the demo limits; one made with wider limits, as older
/// versions did, is revoked and replaced).
async fn ensure_demo_invite(db: &Db, node: &Node) -> Result<(Invite, Option<String>)> {
    if let Some(id) = db::meta_get(db, DEMO_INVITE_KEY).await? {
        if let Ok(inv) = invites::get(db, &id).await {
            let usable =
                inv.node_id == node.id && inv.unusable_reason(slowpath::clock::now_ms()).is_none();
            if usable && inv.within_demo_limits(node) {
                return Ok((inv, None));
            }
            if usable {
                invites::revoke(db, &id, None, "slowpath up (wider than a demo invite)").await?;
                println!("Revoked the old demo invite {id}: it was wider than a demo invite.");
            }
        }
    }
    let (inv, code) = invites::create(db, node, NewInvite::demo(node)).await?;
    db::meta_set(db, DEMO_INVITE_KEY, &inv.id.to_string()).await?;
    Ok((inv, Some(code)))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the slowpath");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// Runs `serve` (when `up` is None) or `up`.
pub async fn run(args: ServeArgs, up: Option<UpArgs>) -> Result<()> {
    if args.resolve_rate == 0 {
        bail!("--resolve-rate must be at least 1 per minute");
    }
    if args.api_max_connections == 0 || args.api_max_connections_per_ip == 0 {
        bail!("--api-max-connections and --api-max-connections-per-ip must be at least 1");
    }
    if args.instance.is_empty() || args.instance.contains('/') {
        bail!("--instance must be a plain name (no '/')");
    }
    let fp_settings = match args.fastpath_config.as_ref() {
        Some(p) => read_fastpath_config(p)?,
        None => FastpathSettings::default(),
    };
    let shm_dir = args
        .shm_dir
        .clone()
        .or_else(|| fp_settings.policy_dir.clone())
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/totoro-{}", args.instance)));
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;

    // One instance, one owner: before anything is created or changed, take
    // the instance's lock (its directory verified first). A second `up` or
    // `serve` for a live instance stops here and names the holder.
    let shm = Arc::new(InstanceDir::open(&shm_dir).with_context(|| {
        format!(
            "the instance's shared-memory directory (--instance {})",
            args.instance
        )
    })?);
    let note = format!("pid {} data dir {}", std::process::id(), data_dir.display());
    let _instance_lock = match shm.dir.lock(SLOWPATH_LOCK_FILE, &note) {
        Ok(f) => f,
        Err(LockError::Held(held)) => bail!(
            "instance '{}' ({}) is already served by a live slowpath ({}{}); \
             stop it first or pick another --instance",
            args.instance,
            shm_dir.display(),
            held.pid.map(|p| format!("pid {p}, ")).unwrap_or_default(),
            held.note
        ),
        Err(LockError::Io(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", shm_dir.display()))
        }
    };

    private_files::ensure_dir(&data_dir, "--data-dir")?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let url = match &args.database_url {
        Some(u) => {
            Backend::of_url(u)?;
            u.clone()
        }
        None => {
            // SQLite's journal files take the database file's mode; the
            // file is made 0600 before SQLite opens it.
            let file = data_dir.join(db::SQLITE_FILE);
            for suffix in ["", "-wal", "-shm", "-journal"] {
                private_files::check_file(&PathBuf::from(format!("{}{suffix}", file.display())))?;
            }
            private_files::create_new(&file, b"")?;
            db::sqlite_url(&data_dir)
        }
    };
    for name in ["node.key", tickets::KEY_FILE] {
        private_files::check_file(&data_dir.join(name))?;
    }
    let db = db::open(&url)
        .await
        .context("opening the database (--database-url)")?;
    let (admin, generated) = admin_key::ensure(&data_dir)?;
    if generated {
        println!(
            "Generated the admin key: {}",
            admin_key::path(&data_dir).display()
        );
    }
    let signer = tickets::ensure_signer(&db, &data_dir).await?;
    let node = ensure_local_node(&db, &args, &data_dir, &fp_settings).await?;

    let publisher = Publisher::new(db.clone(), Arc::clone(&shm), node.id.clone());
    let (reports, quotas) = tenant_services(&db, &node, &fp_settings, &publisher).await?;
    publisher
        .publish(true)
        .await
        .with_context(|| format!("publishing the first policy table to {}", shm_dir.display()))?;
    quotas
        .refresh(&db, slowpath::clock::now_ms())
        .await
        .context("reading quota usage")?;
    publisher.set_over_quota(quotas.over_quota());
    tokio::spawn(Arc::clone(&publisher).run());
    tokio::spawn(Arc::clone(&quotas).run(db.clone()));
    tokio::spawn(follow_quotas(Arc::clone(&quotas), Arc::clone(&publisher)));
    tokio::spawn(traffic_reports::run_sender(
        db.clone(),
        Arc::clone(&reports),
    ));
    let etcd = fp_settings
        .etcd
        .clone()
        .map(|cfg| start_etcd(cfg, db.clone(), Arc::clone(&publisher)));

    let drain = EventDrain::new(db.clone(), Arc::clone(&shm), node.id.clone())
        .with_reports(Arc::clone(&reports))
        .with_quotas(Arc::clone(&quotas));
    let drain_status = drain.status_handle();
    tokio::spawn(drain.run());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let app = Arc::new(App {
        db: db.clone(),
        signer,
        admin_key_hash: credentials::sha256_hex(&admin),
        limiter: RateLimiter::new(args.resolve_rate, args.resolve_rate),
        local_node_id: node.id.clone(),
        publisher: Arc::clone(&publisher),
        drain: drain_status,
        tenants: TenantServices {
            etcd,
            reports,
            quotas,
        },
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut child_task = None;
    if let Some(up) = up {
        let config = match &args.fastpath_config {
            Some(p) => p.clone(),
            None => {
                let p = data_dir.join("fastpath.toml");
                private_files::write(&p, fastpath_toml(&node, &shm_dir)?.as_bytes())?;
                p
            }
        };
        let (bin, prefix) = match &up.fastpath_bin {
            Some(b) => (b.clone(), Vec::new()),
            None => (
                std::env::current_exe().context("cannot find this executable")?,
                vec!["fastpath".to_string()],
            ),
        };
        if !bin.is_file() {
            bail!("--fastpath-bin {}: no such file", bin.display());
        }
        let (demo, code) = ensure_demo_invite(&db, &node).await?;
        let demo_id = demo.id.to_string();
        publisher.publish(false).await?;
        let mut resolved = invites::resolve_id(&db, &app.signer, &demo_id, "slowpath up").await?;
        // The limits go into the file too: the file is what gets copied.
        let demo = invites::get(&db, &demo_id).await?;
        let demo_limits = format!("Demo invite: {}.", demo.limits_line());
        let real_invite = format!(
            "For a real one: slowpath invite create (defaults {} days, {} use, \
             {} sessions, {} proxies; see --help).",
            invites::DEFAULT_TTL_S / 86_400,
            invites::DEFAULT_MAX_USES,
            invites::DEFAULT_MAX_CONNS,
            invites::DEFAULT_MAX_PROXIES,
        );
        let mut header = String::new();
        frpc_config::comment(&mut header, &demo_limits);
        frpc_config::comment(&mut header, &real_invite);
        resolved.frpc_toml.insert_str(0, &header);
        let frpc_path = data_dir.join("frpc-demo.toml");
        private_files::write(&frpc_path, resolved.frpc_toml.as_bytes())?;
        let fp = Arc::new(Fastpath {
            bin,
            prefix,
            config: config.clone(),
            shm: Arc::clone(&shm),
        });
        child_task = Some(tokio::spawn(supervisor::run(
            fp,
            db.clone(),
            node.id.clone(),
            stop_rx.clone(),
        )));
        println!("Totoro is up.");
        println!(
            "  API        http://{}  (admin key: {})",
            args.listen,
            admin_key::path(&data_dir).display()
        );
        println!(
            "  node       {} at {}:{} (ports {}; private)",
            node.id, node.server_addr, node.server_port, node.port_pool
        );
        println!(
            "  fastpath   {} -c {}",
            up.fastpath_bin
                .as_deref()
                .unwrap_or(Path::new("slowpath fastpath"))
                .display(),
            config.display()
        );
        println!("  policy     {}", shm_dir.display());
        if let Some(code) = code {
            println!("  demo invite code (shown once): {code}");
        }
        println!(
            "  demo invite {demo_id}; frpc.toml below is also in {}",
            frpc_path.display()
        );
        println!("  {demo_limits} {real_invite}");
        println!(
            "----- frpc.toml -----\n{}---------------------",
            resolved.frpc_toml
        );
    } else {
        println!(
            "slowpath serving on http://{} (node {}, policy {})",
            args.listen,
            node.id,
            shm_dir.display()
        );
    }

    let router = api::router(app);
    api::serve::run(
        listener,
        router,
        api::serve::ApiLimits {
            max_connections: args.api_max_connections,
            max_connections_per_ip: args.api_max_connections_per_ip,
            ..api::serve::ApiLimits::default()
        },
        shutdown_signal(),
    )
    .await
    .context("API server failed")?;
    let _ = stop_tx.send(true);
    if let Some(t) = child_task {
        let _ = t.await;
    }
    Ok(())
}

/// Traffic reports and quotas follow every tenant compile; the etcd
/// tenants last seen are loaded so that the first table has them even if
/// etcd is down now.
async fn tenant_services(
    db: &Db,
    node: &Node,
    fp: &FastpathSettings,
    publisher: &Arc<Publisher>,
) -> Result<(Arc<ReportSettings>, Arc<QuotaTracker>)> {
    let (url, region) = match &fp.etcd {
        Some(e) => (e.traffic_report_url.clone(), e.region.clone()),
        None => (None, node.region.clone()),
    };
    let reports = Arc::new(
        ReportSettings::new(node.id.clone(), url, region).map_err(|e| anyhow!("[etcd] {e}"))?,
    );
    let quotas = Arc::new(QuotaTracker::new());
    {
        let (reports, quotas) = (Arc::clone(&reports), Arc::clone(&quotas));
        publisher.on_tenants(Box::new(move |tenants: &[Tenant]| {
            reports.set_from_tenants(tenants);
            quotas.set_from_tenants(tenants);
        }));
    }
    if fp.etcd.is_some() {
        if let Some(text) = db::meta_get(db, ETCD_SNAPSHOT_KEY).await? {
            match serde_json::from_str::<Vec<TenantRecord>>(&text) {
                Ok(records) => {
                    let map: std::collections::BTreeMap<String, Tenant> = records
                        .into_iter()
                        .filter_map(|r| Tenant::from_record(r, None).ok())
                        .map(|t| (t.token().to_owned(), t))
                        .collect();
                    tracing::info!(
                        tenants = map.len(),
                        "starting with the tenants last read from etcd"
                    );
                    publisher.set_etcd_tenants(Arc::new(map));
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable etcd tenant snapshot"),
            }
        }
    }
    Ok((reports, quotas))
}

/// Recompile when a tenant crosses its quota or a period rolls over.
async fn follow_quotas(quotas: Arc<QuotaTracker>, publisher: Arc<Publisher>) {
    let mut rx = quotas.subscribe();
    while rx.changed().await.is_ok() {
        publisher.set_over_quota(quotas.over_quota());
    }
}

/// Start the etcd source: every change goes to the publisher at once, and
/// to the database (at most every few seconds) for restarts while etcd is
/// down.
fn start_etcd(cfg: EtcdConfig, db: Db, publisher: Arc<Publisher>) -> etcd::EtcdHandle {
    tracing::info!(endpoints = ?cfg.endpoints, region = %cfg.region, prefix = %cfg.prefix, "following tenants in etcd");
    let (tx, mut rx) = watch::channel::<Option<etcd::TenantMap>>(None);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(map) = rx.borrow_and_update().clone() else {
                continue;
            };
            let records: Vec<&TenantRecord> = map.values().map(|t| &t.record).collect();
            match serde_json::to_string(&records) {
                Ok(text) => {
                    if let Err(e) = db::meta_set(&db, ETCD_SNAPSHOT_KEY, &text).await {
                        tracing::warn!(error = %e, "cannot save the etcd tenant snapshot");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the etcd tenant snapshot"),
            }
            tokio::time::sleep(ETCD_SNAPSHOT_EVERY).await;
        }
    });
    etcd::spawn(cfg, move |map| {
        publisher.set_etcd_tenants(map.clone());
        let _ = tx.send(Some(map));
    })
}
