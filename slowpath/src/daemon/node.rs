//! The local node: what the fastpath config says about it
//! ([`FastpathSettings`]), its row (registered on first start, brought in
//! line with the config on later ones), and the fastpath config `up`
//! writes for it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use proto::policy::ProxyType;
use slowpath::domain::nodes::{self, NewNode, Node, NodePatch};
use slowpath::etcd::EtcdConfig;
use slowpath::frpc_config;
use slowpath::store::db::Db;
use slowpath::store::private_files;

use crate::cli::ServeArgs;

/// What a fastpath config says about the node it serves (all None without
/// `--fastpath-config`; the node row keeps or takes its own values then).
#[derive(Debug, Default)]
pub struct FastpathSettings {
    /// `bindPort` (7000 when the file leaves it out, as the fastpath binds).
    pub bind_port: Option<u16>,
    /// `auth.token`, unless empty.
    pub token: Option<String>,
    /// `allowPorts` in frp's shorthand, unless empty (all ports).
    pub allow_ports: Option<String>,
    /// `fastpath.policyDir`, unless empty.
    pub policy_dir: Option<PathBuf>,
    /// Seed 002's `[etcd]`, checked.
    pub etcd: Option<EtcdConfig>,
    /// `vhostHTTPPort`, `vhostHTTPSPort` and `subDomainHost`.
    pub vhost: Option<Vhost>,
    /// `fastpath.meshRelayPort`.
    pub mesh_relay_port: Option<u16>,
}

/// The mesh relay port `up` gives its fastpath unless told otherwise.
pub const DEFAULT_MESH_RELAY_PORT: u16 = 8444;

/// A node's frps vhost keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vhost {
    /// `vhostHTTPPort` (0 = none).
    pub http_port: u16,
    /// `vhostHTTPSPort` (0 = none).
    pub https_port: u16,
    /// `subDomainHost` ("" = none).
    pub sub_domain_host: String,
}

impl Vhost {
    /// What the node is to have: the fastpath config's keys, else the
    /// command line's.
    fn wanted(args: &ServeArgs, fp: &FastpathSettings) -> Vhost {
        fp.vhost.clone().unwrap_or_else(|| Vhost {
            http_port: args.vhost_http_port,
            https_port: args.vhost_https_port,
            sub_domain_host: args.sub_domain_host.clone(),
        })
    }
}

impl FastpathSettings {
    /// The mesh relay port in force: the file's, else the flag's, else
    /// 8444 for `up` (it runs the fastpath) and none for `serve`.
    pub fn mesh_relay_port(&self, args: &ServeArgs, up: bool) -> u16 {
        self.mesh_relay_port
            .or(args.mesh_relay_port)
            .unwrap_or(if up { DEFAULT_MESH_RELAY_PORT } else { 0 })
    }

    /// From `--fastpath-config`, when given.
    pub fn of(args: &ServeArgs) -> Result<FastpathSettings> {
        match args.fastpath_config.as_ref() {
            Some(p) => read_fastpath_config(p),
            None => Ok(FastpathSettings::default()),
        }
    }
}

/// Reads the keys the node row must agree with from a fastpath TOML,
/// through the parser the fastpath itself reads it with.
fn read_fastpath_config(path: &Path) -> Result<FastpathSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--fastpath-config {}: cannot read", path.display()))?;
    let (config, unknown) = proto::config::Config::from_toml(&text)
        .map_err(|e| anyhow!("--fastpath-config {}: {e}", path.display()))?;
    let etcd = EtcdConfig::from_config(&config, &unknown)
        .map_err(|e| anyhow!("--fastpath-config {}: {e}", path.display()))?;
    // deploy/compose/fastpath.toml ships a placeholder the operator must
    // replace: a node must not go live with a token everyone can read.
    if config
        .auth
        .token
        .to_ascii_lowercase()
        .starts_with("change-me")
    {
        anyhow::bail!(
            "--fastpath-config {}: auth.token is still the placeholder {:?}; set a long random one (e.g. `openssl rand -hex 24`)",
            path.display(),
            config.auth.token
        );
    }
    let allow_ports: proto::policy::PortSet = config.allow_ports.iter().copied().collect();
    Ok(FastpathSettings {
        bind_port: Some(config.bind_port),
        token: Some(config.auth.token).filter(|t| !t.is_empty()),
        allow_ports: (!allow_ports.is_empty()).then(|| allow_ports.to_string()),
        policy_dir: Some(config.fastpath.policy_dir)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        etcd,
        vhost: Some(Vhost {
            http_port: config.vhost_http_port,
            https_port: config.vhost_https_port,
            sub_domain_host: config.sub_domain_host,
        }),
        mesh_relay_port: Some(config.fastpath.mesh_relay_port),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

/// Registers this host as a node on first start (its node key kept in the
/// data directory names it from then on), and brings it in line with the
/// fastpath config on later ones.
pub async fn ensure_local_node(
    db: &Db,
    args: &ServeArgs,
    data_dir: &Path,
    fp: &FastpathSettings,
) -> Result<Node> {
    let port = fp.bind_port.unwrap_or(args.frp_port);
    let vhost = Vhost::wanted(args, fp);
    // The host name as the node stores it, so that an unchanged one is
    // not patched at every start.
    let sub_domain_host = nodes::parse_sub_domain_host(&vhost.sub_domain_host)
        .map_err(|e| anyhow!("--sub-domain-host / subDomainHost: {e}"))?;
    // This host's node is the one its key file names: several hosts may
    // share one database (one PostgreSQL under several `slowpath serve`),
    // so nothing in the database itself can say which node is "local".
    let key_path = data_dir.join("node.key");
    let mine = match private_files::read(&key_path)? {
        Some(key) => nodes::by_key(db, key.trim()).await?,
        None => None,
    };
    if let Some(node) = mine {
        let id = node.id.clone();
        {
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
            if node.sub_domain_host != sub_domain_host {
                patch.sub_domain_host = Some(sub_domain_host.clone());
            }
            if node.vhost_http_port != vhost.http_port {
                patch.vhost_http_port = Some(vhost.http_port);
            }
            if node.vhost_https_port != vhost.https_port {
                patch.vhost_https_port = Some(vhost.https_port);
            }
            // A vhost port turned on turns its proxy type on (turning it
            // off leaves the types: the fastpath then refuses the type as
            // not served).
            let mut types = node.proxy_types;
            if node.vhost_http_port == 0 && vhost.http_port != 0 {
                types = types.with(ProxyType::Http);
            }
            if node.vhost_https_port == 0 && vhost.https_port != 0 {
                types = types.with(ProxyType::Https);
            }
            if types != node.proxy_types {
                patch.proxy_types = Some(types.names().iter().map(|n| (*n).to_owned()).collect());
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
            proxy_types: Some(local_proxy_types(&vhost)),
            max_proxies_per_session: 0,
            token: fp.token.clone(),
            sub_domain_host,
            vhost_http_port: vhost.http_port,
            vhost_https_port: vhost.https_port,
        },
    )
    .await?;
    private_files::write(&key_path, format!("{key}\n").as_bytes())?;
    println!(
        "Registered this host as node {} (node key in {})",
        node.id,
        key_path.display()
    );
    Ok(node)
}

/// A new local node's proxy types: a node's default (tcp and udp), and
/// http and https when their vhost port is set.
fn local_proxy_types(vhost: &Vhost) -> Vec<String> {
    let mut types = vec!["tcp", "udp"];
    if vhost.http_port != 0 {
        types.push("http");
    }
    if vhost.https_port != 0 {
        types.push("https");
    }
    types.into_iter().map(str::to_owned).collect()
}

/// The fastpath config `up` writes when none is given.
pub fn fastpath_toml(node: &Node, shm_dir: &Path, mesh_relay_port: u16) -> Result<String> {
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
        vhost_http_port: node.vhost_http_port,
        vhost_https_port: node.vhost_https_port,
        sub_domain_host: &node.sub_domain_host,
        mesh_relay_port,
    })
    .context("cannot write the fastpath config")
}
