//! Start-up of `slowpath up` and `slowpath serve`, as [`run`]'s steps:
//!
//! 1. check the flags; read what `--fastpath-config` says about the node
//!    ([`node::FastpathSettings`]);
//! 2. take the instance's lock in its shared-memory directory, before
//!    anything is created or changed;
//! 3. open the store and keys in the data directory ([`store`]);
//! 4. register or update the local node ([`node`]);
//! 5. publish the first policy table and start the background tasks:
//!    publisher, quotas, traffic reports, etcd, event drain ([`services`]);
//! 6. bind the API;
//! 7. for `up`: the fastpath child ([`supervisor`]) and the demo invite
//!    ([`up`]);
//! 8. serve the API until SIGTERM or Ctrl-C, then stop the fastpath child.

mod node;
pub mod relay;
mod services;
mod store;
mod supervisor;
mod up;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use shm::{InstanceDir, LockError, SLOWPATH_LOCK_FILE};
use slowpath::api::{self, App};
use slowpath::credentials;
use slowpath::rate_limit::RateLimiter;
use slowpath::store::{db, private_files};
use tokio::sync::watch;

use crate::cli::{ServeArgs, UpArgs};
use node::FastpathSettings;

/// Runs `serve` (when `up` is None) or `up`.
pub async fn run(args: ServeArgs, up: Option<UpArgs>) -> Result<()> {
    check_args(&args)?;
    let fp_settings = FastpathSettings::of(&args)?;
    let shm_dir = args
        .shm_dir
        .clone()
        .or_else(|| fp_settings.policy_dir.clone())
        .unwrap_or_else(|| shm::instance_path(&args.instance));
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;

    let (shm, _instance_lock) = lock_instance(&args, &shm_dir, &data_dir)?;

    private_files::ensure_dir(&data_dir, "--data-dir")?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let store = store::open(&args, &data_dir).await?;
    let db = store.db.clone();
    let node = node::ensure_local_node(&db, &args, &data_dir, &fp_settings).await?;
    let signer = match &args.mesh_jwt_secret_file {
        Some(p) => {
            let secret =
                slowpath::domain::tickets::read_mesh_secret(p).context("--mesh-jwt-secret-file")?;
            tracing::info!(
                "mesh tokens are signed with the HS256 shared secret (seed 003's jwt.secret)"
            );
            store.signer.with_mesh_secret(secret)
        }
        None => store.signer,
    };
    // Seed 003's built-in relay: a server record nodes are sent to, and its
    // id in the policy table (relay tokens name it).
    let relay_port = fp_settings.mesh_relay_port(&args, up.is_some());
    let relay_id = if relay_port == 0 {
        0
    } else {
        let url = format!(
            "ws://{}/ws/data",
            SocketAddrText(&args.public_addr, relay_port)
        );
        slowpath::domain::mesh::servers::ensure_builtin(
            &db,
            &signer.mesh_signer(),
            &format!("{}-relay", node.id),
            &url,
        )
        .await
        .context("the built-in mesh relay's server record")?
    };
    // No relay is connected to a control plane that just started (they
    // report their nodes again when they register); the built-in relay's
    // nodes stay where they are when its fastpath outlived the last
    // slowpath and is adopted, and are gone otherwise. Relays held by
    // another control plane on the same database keep theirs.
    let adopted = supervisor::running_fastpath(&shm).is_some();
    slowpath::domain::mesh::servers::reset_locations(
        &db,
        &node.id,
        (relay_id != 0).then_some(relay_id),
        adopted,
    )
    .await?;

    let services = services::start(&db, &shm, &node, &fp_settings, relay_id).await?;
    // Other control planes on the same PostgreSQL hear of the changes made
    // here, and this one of theirs (issue 17); SQLite has nobody to tell.
    let pg_url = args
        .database_url
        .clone()
        .filter(|u| db::Backend::of_url(u).ok() == Some(db::Backend::Postgres));
    let changes = slowpath::store::changes::Changes::new(db.clone(), pg_url);
    services.publisher.set_changes(Arc::clone(&changes));
    {
        let publisher = Arc::clone(&services.publisher);
        tokio::spawn(changes.listen(move |change| {
            let publisher = Arc::clone(&publisher);
            async move { publisher.apply_remote(change).await }
        }));
    }

    // Bound before the fastpath starts: a taken port stops `up` here.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    slowpath::domain::mesh::nodes::reset_online(&db, &node.id).await?;
    let verifier = slowpath::dns::verify::Verifier::new(&slowpath::dns::verify::VerifyConfig {
        nameservers: args
            .dns_resolvers
            .iter()
            .map(|a| dns_addr(a).with_context(|| format!("--dns-resolver {a}")))
            .collect::<anyhow::Result<_>>()?,
        http_port: args.domain_verify_http_port,
    });
    if let Err(e) = &verifier {
        tracing::warn!(error = %e, "domains cannot be verified");
    }
    let dns = dns_manager(&args, &db).await?;
    let app = Arc::new(App {
        db: db.clone(),
        signer,
        admin_key_hash: credentials::sha256_hex(&store.admin_key),
        limiter: RateLimiter::new(args.resolve_rate, args.resolve_rate),
        local_node_id: node.id.clone(),
        publisher: Arc::clone(&services.publisher),
        drain: services.drain,
        tenants: services.tenants,
        mesh: Default::default(),
        acme: args.acme_directory.as_ref().map(|directory| {
            slowpath::acme::spawn(
                slowpath::acme::AcmeConfig {
                    directory: directory.clone(),
                    ca_file: args.acme_ca_file.clone(),
                    contact: args.acme_contact.clone(),
                    interval: std::time::Duration::from_secs(args.acme_interval_secs.max(1)),
                },
                db.clone(),
                Arc::clone(&services.publisher),
            )
        }),
        dns,
        verifier,
        metrics: Default::default(),
        tunnel_addr: (node.vhost_http_port != 0)
            .then(|| SocketAddrText(&args.public_addr, node.vhost_http_port).to_string()),
    });

    app.mesh.publish_with(Arc::clone(&services.publisher));
    services.publisher.set_mesh_signer(app.signer.clone());
    services.publisher.set_mesh_relay(relay_id);
    if relay_id != 0 {
        let hub = Arc::clone(&app);
        let changed: Box<dyn Fn() + Send + Sync> = Box::new(move || hub.mesh.locations_changed());
        let _ = services.mesh_locations.set(changed);
        // Link tokens are made again when half their life is gone; a
        // recompile every hour finds out (an unchanged table is not
        // written again).
        let publisher = Arc::clone(&services.publisher);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            tick.tick().await;
            loop {
                tick.tick().await;
                publisher.mesh_changed();
            }
        });
    }
    services.publisher.publish(false).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let child = match &up {
        Some(up) => {
            let up = up::Up {
                args: &args,
                up,
                data_dir: &data_dir,
                shm_dir: &shm_dir,
                shm: &shm,
                db: &db,
                node: &node,
                publisher: &services.publisher,
                signer: &app.signer,
                mesh_relay_port: relay_port,
            };
            Some(up.start(stop_rx).await?)
        }
        None => {
            tokio::spawn(supervisor::heartbeat_beside(
                db.clone(),
                node.id.clone(),
                Arc::clone(&shm),
            ));
            println!(
                "slowpath serving on http://{} (node {}, policy {})",
                args.listen,
                node.id,
                shm_dir.display()
            );
            None
        }
    };

    serve_api(&args, listener, app).await?;
    let _ = stop_tx.send(true);
    if let Some(t) = child {
        let _ = t.await;
    }
    Ok(())
}

/// `ip` or `ip:port` (port 53 when not given).
fn dns_addr(text: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(a) = text.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not an IP address or IP:port"))?;
    Ok(std::net::SocketAddr::new(ip, 53))
}

/// Seed 004's DNS manager, from the --dns-* flags (None without
/// --dns-zone); the zone is remembered as official in the database.
async fn dns_manager(
    args: &ServeArgs,
    db: &slowpath::store::db::Db,
) -> anyhow::Result<Option<slowpath::dns::manager::DnsManager>> {
    let Some(zone) = &args.dns_zone else {
        slowpath::domain::domains::set_zone(db, None).await?;
        return Ok(None);
    };
    let zone = slowpath::domain::edge::hostname("dns_zone", zone)
        .map_err(|e| anyhow::anyhow!("--dns-zone: {e}"))?;
    let server = args
        .dns_server
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--dns-zone needs --dns-server (the zone's primary)"))?;
    let server = dns_addr(server).context("--dns-server")?;
    let key = match &args.dns_tsig_key_file {
        Some(p) => {
            slowpath::store::private_files::check_file(p).context("--dns-tsig-key-file")?;
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--dns-tsig-key-file {}", p.display()))?;
            Some(
                slowpath::dns::update::TsigKey::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--dns-tsig-key-file {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let mut addresses = args.dns_addresses.clone();
    if addresses.is_empty() {
        match args.public_addr.parse() {
            Ok(ip) => addresses.push(ip),
            Err(_) => anyhow::bail!(
                "--dns-zone needs --dns-address (the edge's IP): --public-addr {:?} is not an IP",
                args.public_addr
            ),
        }
    }
    slowpath::domain::domains::set_zone(db, Some(&zone)).await?;
    tracing::info!(%zone, %server, signed = key.is_some(), ?addresses, "DNS manager on");
    Ok(Some(slowpath::dns::manager::spawn(
        slowpath::dns::manager::DnsConfig {
            zone,
            server,
            key,
            addresses,
            ttl: args.dns_ttl,
            interval: std::time::Duration::from_secs(args.dns_interval_secs.max(1)),
        },
        db.clone(),
    )))
}

/// `host:port`, with an IPv6 address in brackets.
struct SocketAddrText<'a>(&'a str, u16);

impl std::fmt::Display for SocketAddrText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.contains(':') && !self.0.starts_with('[') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

/// Flags that clap's types cannot refuse on their own.
fn check_args(args: &ServeArgs) -> Result<()> {
    if args.resolve_rate == 0 {
        bail!("--resolve-rate must be at least 1 per minute");
    }
    if args.api_max_connections == 0 || args.api_max_connections_per_ip == 0 {
        bail!("--api-max-connections and --api-max-connections-per-ip must be at least 1");
    }
    if args.instance.is_empty() || args.instance.contains('/') {
        bail!("--instance must be a plain name (no '/')");
    }
    Ok(())
}

/// One instance, one owner: before anything is created or changed, take
/// the instance's lock (its directory verified first). A second `up` or
/// `serve` for a live instance stops here and names the holder. The lock
/// holds while the returned file is open.
fn lock_instance(
    args: &ServeArgs,
    shm_dir: &Path,
    data_dir: &Path,
) -> Result<(Arc<InstanceDir>, std::fs::File)> {
    let shm = Arc::new(InstanceDir::open(shm_dir).with_context(|| {
        format!(
            "the instance's shared-memory directory (--instance {})",
            args.instance
        )
    })?);
    let note = format!("pid {} data dir {}", std::process::id(), data_dir.display());
    let lock = match shm.dir.lock(SLOWPATH_LOCK_FILE, &note) {
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
    Ok((shm, lock))
}

/// Serves the API until SIGTERM or Ctrl-C.
async fn serve_api(
    args: &ServeArgs,
    listener: tokio::net::TcpListener,
    app: Arc<App>,
) -> Result<()> {
    let publisher = Arc::clone(&app.publisher);
    api::serve::run(
        listener,
        api::router(app),
        api::serve::ApiLimits {
            max_connections: args.api_max_connections,
            max_connections_per_ip: args.api_max_connections_per_ip,
            ..api::serve::ApiLimits::default()
        },
        async move {
            shutdown_signal().await;
            // Agents' long polls would hold the shutdown for their wait.
            publisher.stop_polls();
        },
    )
    .await
    .context("API server failed")
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
