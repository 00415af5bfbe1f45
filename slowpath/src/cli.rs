//! Command-line interface: the daemon verbs (`up`, `serve`) and the operator
//! verbs that call a running slowpath's HTTP API with the admin key.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Totoro control plane.
#[derive(Debug, Parser)]
#[command(
    name = "slowpath",
    version,
    about = "Totoro control plane: API, invites, tickets, policy tables, audit"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log line format on stderr: text, or json (one object per line with
    /// `ts`, `level`, `msg` and the event's fields; `up` gives its
    /// fastpath the same).
    #[arg(long, global = true, env = "TOTORO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start everything: database, API, this host as a node, a demo invite,
    /// and the fastpath; prints a ready frpc.toml.
    Up(UpArgs),
    /// Start the API and policy publisher without launching the fastpath.
    Serve(ServeArgs),
    /// Nodes (admin).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Invites (admin).
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Query the audit log (admin).
    Audit(AuditArgs),
    /// Show counts, traffic and policy propagation (admin).
    Stats(ClientArgs),
    /// The mesh controller (seed 003): networks, nodes, routes, settings.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Seed 004's edge agent for nginx: pulls the edge config and
    /// certificates, writes nginx's map file and PEM files, reloads nginx
    /// when they change.
    EdgeAgent(EdgeAgentArgs),
    /// The node agent of a relay host governed by a control plane
    /// elsewhere: keeps its fastpath's policy table current (a long poll
    /// with the node key; no database credentials here).
    Agent(AgentArgs),
    /// Edge routes (seed 004): hostnames to origins.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Edge origins: addresses, or tunnel origins (an invite's http proxy).
    #[command(subcommand)]
    Origin(OriginCommand),
    /// Managed certificates of routed hostnames.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Users' own domains: add, verify ownership (TXT or HTTP token), list.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Edge nodes that pull their config (seed 004).
    #[command(subcommand)]
    EdgeNode(EdgeNodeCommand),
    /// A standalone mesh relay (seed 003 §12.2): a fastpath serving
    /// /ws/data and /ws/mesh, governed by a controller over /ws/server.
    Relay(RelayArgs),
    /// Run the data plane (the fastpath) in this process, with fastpath's own
    /// flags (`slowpath fastpath --help`); `up` starts it this way as a child.
    #[command(disable_help_flag = true)]
    Fastpath {
        /// fastpath flags, e.g. `-c fastpath.toml`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Flags shared by `up` and `serve`.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Data directory (SQLite database, admin.key, fastpath.toml).
    #[arg(long, default_value = "./totoro-data")]
    pub data_dir: PathBuf,
    /// API listen address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// PostgreSQL URL (postgres://…); default: SQLite in the data directory.
    #[arg(long, env = "TOTORO_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Instance name: policy tables and event rings live in /dev/shm/totoro-<instance>.
    #[arg(long, default_value = "default")]
    pub instance: String,
    /// Shared-memory directory (overrides --instance).
    #[arg(long)]
    pub shm_dir: Option<PathBuf>,
    /// Address frpc should dial for this host's node.
    #[arg(long, default_value = "127.0.0.1")]
    pub public_addr: String,
    /// frp port of this host's node when no --fastpath-config is given
    /// (with one, its bindPort, 7000 when unset, as the fastpath reads it).
    #[arg(long, default_value_t = 7000)]
    pub frp_port: u16,
    /// Resolve requests allowed per client IP per minute (also the burst).
    #[arg(long, default_value_t = 30)]
    pub resolve_rate: u32,
    /// API connections open at once, all client addresses together (past
    /// it a new connection is closed at once).
    #[arg(long, default_value_t = 4096)]
    pub api_max_connections: usize,
    /// API connections open at once from one client address.
    #[arg(long, default_value_t = 256)]
    pub api_max_connections_per_ip: usize,
    /// frps's vhostHTTPPort for this host's node when no --fastpath-config
    /// is given: the port `http` proxies are served on (0 = none).
    #[arg(long, default_value_t = 0)]
    pub vhost_http_port: u16,
    /// frps's vhostHTTPSPort likewise: `https` proxies, routed by SNI (0 = none).
    #[arg(long, default_value_t = 0)]
    pub vhost_https_port: u16,
    /// frps's subDomainHost likewise: proxies' `subdomain`s are labels under
    /// it, and invites created with auto_subdomain get one of their own.
    #[arg(long, default_value = "")]
    pub sub_domain_host: String,
    /// Seed 003's mesh relay on this host's fastpath (`/ws/data`), on this
    /// TCP port (0 = no relay); nodes are told of it as
    /// ws://PUBLIC_ADDR:PORT/ws/data. Default: 8444 for `up`, none for
    /// `serve`; a --fastpath-config's fastpath.meshRelayPort is taken
    /// instead when given.
    #[arg(long)]
    pub mesh_relay_port: Option<u16>,
    /// Seed 003's HS256 mode: a file holding the shared `jwt.secret` (at
    /// least 32 bytes); mesh tokens are then signed with it, and relays
    /// verify them with it. Default: Ed25519, relays holding only the
    /// public key.
    #[arg(long)]
    pub mesh_jwt_secret_file: Option<PathBuf>,
    /// The edge's ACME directory URL: certificates for routed hostnames
    /// are ordered there (HTTP-01, answered on vhostHTTPPort, which must
    /// be port 80 as the CA sees it). Let's Encrypt is
    /// https://acme-v02.api.letsencrypt.org/directory (staging:
    /// https://acme-staging-v02.api.letsencrypt.org/directory). Default:
    /// none, no certificates are ordered.
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// A root certificate (PEM) that the ACME server's HTTPS is checked
    /// against, for a CA that is not publicly trusted (a test CA).
    #[arg(long)]
    pub acme_ca_file: Option<PathBuf>,
    /// Contact of the ACME account (`mailto:ops@example.com`).
    #[arg(long)]
    pub acme_contact: Option<String>,
    /// Seconds between looks for certificates due for renewal (a route
    /// change looks at once).
    #[arg(long, default_value_t = 60)]
    pub acme_interval_secs: u64,
    /// A nameserver (`ip` or `ip:port`) for checking users' domains (the
    /// TXT record `_totoro-verify.<domain>`, and the addresses the HTTP
    /// token is fetched from); repeatable. Default: the system's
    /// (/etc/resolv.conf).
    #[arg(long = "dns-resolver", value_name = "ADDR")]
    pub dns_resolvers: Vec<String>,
    /// The port a domain's HTTP token is fetched on
    /// (http://DOMAIN:PORT/.well-known/totoro-verify/TOKEN); 80 but for
    /// tests.
    #[arg(long, default_value_t = 80)]
    pub domain_verify_http_port: u16,
    /// Seed 004's DNS manager: the one zone (e.g. `hoge.com`) in which
    /// every routed hostname gets A/AAAA records for the edge, by RFC 2136
    /// updates; hostnames under it need no domain verification. Needs
    /// --dns-server. Default: none.
    #[arg(long)]
    pub dns_zone: Option<String>,
    /// The zone's primary server, `ip` or `ip:port` (TCP; port 53 by
    /// default), which must allow updates with the TSIG key.
    #[arg(long)]
    pub dns_server: Option<String>,
    /// The TSIG key, a file holding `hmac-sha256:NAME:BASE64SECRET` (the
    /// form of nsupdate/knsupdate -y), readable by its owner only.
    /// Without it updates go unsigned.
    #[arg(long)]
    pub dns_tsig_key_file: Option<PathBuf>,
    /// An address the zone's records point at (the edge's public IPv4 or
    /// IPv6); repeatable. Default: --public-addr when it is an IP.
    #[arg(long = "dns-address", value_name = "IP")]
    pub dns_addresses: Vec<std::net::IpAddr>,
    /// TTL of the records, seconds.
    #[arg(long, default_value_t = 60)]
    pub dns_ttl: u32,
    /// Seconds between the DNS manager's passes (a route change passes at
    /// once; a failed update is tried again at the next).
    #[arg(long, default_value_t = 60)]
    pub dns_interval_secs: u64,
    /// The node's fastpath (frps-style) TOML: `up` runs the fastpath with
    /// it (default: DATA_DIR/fastpath.toml, written from the node); both
    /// `up` and `serve` take the node's bindPort, auth.token, allowPorts,
    /// vhostHTTPPort, vhostHTTPSPort, subDomainHost, fastpath.policyDir and
    /// seed 002's [etcd] table from it.
    #[arg(long)]
    pub fastpath_config: Option<PathBuf>,
}

/// Flags of `up`.
#[derive(Debug, Args, Clone)]
pub struct UpArgs {
    /// Everything `serve` takes.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// A separate fastpath binary to run; default: this executable's own
    /// `fastpath` subcommand.
    #[arg(long)]
    pub fastpath_bin: Option<PathBuf>,
}

/// `slowpath relay`.
#[derive(Debug, Args, Clone)]
pub struct RelayArgs {
    /// The controller: ws://HOST:PORT (its API address), or wss://HOST[:PORT]
    /// behind TLS; /ws/server is used.
    #[arg(long)]
    pub controller: String,
    /// This server's token (`slowpath mesh server add` prints it).
    #[arg(long, env = "TOTORO_SERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token instead.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Data directory (fastpath.toml, the policy directory).
    #[arg(long, default_value = "./totoro-relay")]
    pub data_dir: PathBuf,
    /// The relay port (/ws/data for nodes, /ws/mesh for relays).
    #[arg(long, default_value_t = 8444)]
    pub port: u16,
    /// The fastpath's frp port (it takes no logins on a relay).
    #[arg(long, default_value_t = 7000)]
    pub frp_port: u16,
    /// A separate fastpath binary; default: this executable's `fastpath`.
    #[arg(long)]
    pub fastpath_bin: Option<PathBuf>,
    /// The controller's HS256 `jwt.secret` file, when it runs in that mode.
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM certificate chain nodes see on wss:// (with --tls-key).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Trust the certificates in this PEM file for a wss:// controller
    /// instead of the web PKI's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// How operator verbs reach the API.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// slowpath API base URL.
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    pub api: String,
    /// Admin key; default: ADMIN_API_KEY, else DATA_DIR/admin.key.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Data directory to read admin.key from.
    #[arg(long, default_value = "./totoro-data")]
    pub data_dir: PathBuf,
}

/// `slowpath node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List(ClientArgs),
    /// Register a node; prints its node key once.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Name.
        #[arg(long)]
        name: String,
        /// Address frpc dials.
        #[arg(long)]
        server_addr: String,
        /// frp port.
        #[arg(long, default_value_t = 7000)]
        server_port: u16,
        /// Region label.
        #[arg(long, default_value = "")]
        region: String,
        /// List it publicly.
        #[arg(long)]
        public: bool,
        /// Port pool, e.g. 2000-3000,4000.
        #[arg(long)]
        port_pool: Option<String>,
        /// Proxy types, e.g. tcp,udp.
        #[arg(long)]
        proxy_types: Option<String>,
        #[command(flatten)]
        vhost: NodeVhostArgs,
    },
    /// Change a node.
    Set {
        #[command(flatten)]
        client: ClientArgs,
        /// Node id.
        id: String,
        /// Make it public (true) or private (false).
        #[arg(long)]
        public: Option<bool>,
        /// New port pool.
        #[arg(long)]
        port_pool: Option<String>,
        /// New proxy types, e.g. tcp,udp.
        #[arg(long)]
        proxy_types: Option<String>,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New dial address.
        #[arg(long)]
        server_addr: Option<String>,
        #[command(flatten)]
        vhost: NodeVhostArgs,
    },
}

/// `slowpath mesh …` (seed 003's operator verbs, through the admin API).
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Networks.
    #[command(subcommand)]
    Network(MeshNetworkCommand),
    /// Nodes.
    #[command(subcommand)]
    Node(MeshNodeCommand),
    /// Subnet routes.
    #[command(subcommand)]
    Route(MeshRouteCommand),
    /// Relay and STUN servers.
    #[command(subcommand)]
    Server(MeshServerCommand),
    /// Tokens: a server's new token, the blacklist.
    #[command(subcommand)]
    Token(MeshTokenCommand),
    /// Settings: show them, or set `key=value` pairs.
    Config {
        #[command(flatten)]
        client: ClientArgs,
        /// `key=value` to set (none: show all).
        set: Vec<String>,
    },
    /// Counts of networks, nodes, routes, servers.
    Status(ClientArgs),
    /// Measured latencies.
    Latency(ClientArgs),
}

/// Flags of `agent`.
#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// The control plane's base URL (`https://cp.example.com`); repeat it,
    /// or separate with commas, for several control planes on one
    /// database: the agent moves to the next when one fails.
    #[arg(long, env = "TOTORO_CONTROL", value_delimiter = ',', required = true)]
    pub control: Vec<String>,
    /// This node's key (`slowpath node add` prints it once).
    #[arg(long, env = "TOTORO_NODE_KEY", hide_env_values = true)]
    pub node_key: Option<String>,
    /// A file holding the node key.
    #[arg(long)]
    pub node_key_file: Option<PathBuf>,
    /// Root certificate (PEM) for the control plane's HTTPS, when it is
    /// not publicly trusted.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The fastpath's policy directory (its `fastpath.policyDir`).
    #[arg(long)]
    pub shm_dir: PathBuf,
    /// Seconds each long poll waits for a change (1-60).
    #[arg(long, default_value_t = slowpath::agent::WAIT_S)]
    pub wait_secs: u64,
    /// The fastpath's `--stats-file`, for the heartbeat's sessions,
    /// proxies and bandwidth.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_secs: u64,
    /// Where events and traffic wait on disk until a control plane has
    /// written them (made 0700 if missing).
    #[arg(
        long,
        env = "TOTORO_SPOOL_DIR",
        default_value = "/var/lib/totoro/agent-spool"
    )]
    pub spool_dir: PathBuf,
    /// The most the spool keeps on disk, KiB; past it the oldest batches
    /// are dropped and counted.
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(16..))]
    pub spool_max_kib: u64,
}

/// Flags of `edge-agent`.
#[derive(Debug, Args, Clone)]
pub struct EdgeAgentArgs {
    /// The control plane's base URL.
    #[arg(long)]
    pub control: String,
    /// The edge node's token (`slowpath edge-node add`).
    #[arg(long, env = "TOTORO_EDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Root certificate (PEM) for the control plane's HTTPS, when it is
    /// not publicly trusted.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// nginx's map file.
    #[arg(long, default_value = "/etc/nginx/conf.d/kokoa-map.conf")]
    pub map_file: PathBuf,
    /// Where each hostname's fullchain.pem and privkey.pem go.
    #[arg(long, default_value = "/etc/totoro-edge/certs")]
    pub cert_dir: PathBuf,
    /// Command run after a change (split on spaces; "" for none).
    #[arg(long, default_value = "nginx -s reload")]
    pub reload: String,
    /// Seconds between pulls.
    #[arg(long, default_value_t = 5)]
    pub interval_secs: u64,
    /// Pull and apply once, then exit.
    #[arg(long)]
    pub once: bool,
}

/// `slowpath route …`.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// List routes.
    List(ClientArgs),
    /// Route a hostname to an origin.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Hostname, e.g. app.example.com.
        hostname: String,
        /// Origin id (`slowpath origin list`).
        origin: String,
        /// The origin's port (address origins).
        #[arg(long)]
        port: Option<u32>,
        /// Redirect plain HTTP for the hostname to HTTPS.
        #[arg(long)]
        redirect_https: bool,
    },
    /// Delete a route (by id).
    Rm {
        #[command(flatten)]
        client: ClientArgs,
        /// Route id.
        id: String,
    },
}

/// `slowpath origin …`.
#[derive(Debug, Subcommand)]
pub enum OriginCommand {
    /// List origins.
    List(ClientArgs),
    /// Add an address origin (`--ip`) or a tunnel origin (`--invite`,
    /// `--proxy`).
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Name.
        name: String,
        /// The address the edge connects to (seed 004's WireGuard IP).
        #[arg(long)]
        ip: Option<String>,
        /// Its WireGuard public key.
        #[arg(long)]
        wireguard_public_key: Option<String>,
        /// A tunnel origin's invite id.
        #[arg(long)]
        invite: Option<String>,
        /// A tunnel origin's http proxy name.
        #[arg(long)]
        proxy: Option<String>,
    },
    /// Delete an origin no route uses.
    Rm {
        #[command(flatten)]
        client: ClientArgs,
        /// Origin id.
        id: String,
    },
}

/// `slowpath cert …`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Certificates and the ACME task's state.
    List(ClientArgs),
    /// Order a new certificate for a hostname now.
    Renew {
        #[command(flatten)]
        client: ClientArgs,
        /// Hostname.
        hostname: String,
    },
}

/// `slowpath domain …`.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Domains, their state, and the official suffixes.
    List(ClientArgs),
    /// Add a domain; prints the token to publish as a TXT record or over
    /// HTTP.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// The domain, e.g. fuga.com.
        domain: String,
    },
    /// Check the domain's token now.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        /// The domain.
        domain: String,
        /// `dns` or `http` (default: both, the TXT record first).
        #[arg(long)]
        method: Option<String>,
    },
    /// Delete a domain no route is under.
    Rm {
        #[command(flatten)]
        client: ClientArgs,
        /// The domain.
        domain: String,
    },
}

/// `slowpath edge-node …`.
#[derive(Debug, Subcommand)]
pub enum EdgeNodeCommand {
    /// List edge nodes.
    List(ClientArgs),
    /// Register an edge node; prints its token once.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Name.
        name: String,
    },
    /// Delete an edge node (its token stops working).
    Rm {
        #[command(flatten)]
        client: ClientArgs,
        /// Edge node id.
        id: String,
    },
}

/// `slowpath mesh network …`.
#[derive(Debug, Subcommand)]
pub enum MeshNetworkCommand {
    /// List networks.
    List(ClientArgs),
    /// Create a network.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Name.
        name: String,
        /// IPv4 subnet, e.g. 10.100.0.0/16.
        subnet: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a network and its nodes.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// Network id.
        id: u32,
    },
}

/// `slowpath mesh node …`.
#[derive(Debug, Subcommand)]
pub enum MeshNodeCommand {
    /// List nodes (optionally of one network).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this network's.
        #[arg(long)]
        network: Option<u32>,
    },
    /// Authorize a node (gives it an address).
    Authorize {
        #[command(flatten)]
        client: ClientArgs,
        /// Node id.
        id: u32,
    },
    /// Take a node's authorization away (its tokens are revoked).
    Deauthorize {
        #[command(flatten)]
        client: ClientArgs,
        /// Node id.
        id: u32,
    },
    /// Rename a node.
    Rename {
        #[command(flatten)]
        client: ClientArgs,
        /// Node id.
        id: u32,
        /// New name.
        name: String,
    },
    /// Delete a node.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// Node id.
        id: u32,
    },
}

/// `slowpath mesh route …`.
#[derive(Debug, Subcommand)]
pub enum MeshRouteCommand {
    /// Every route, grouped by subnet (or one node's with --node).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this gateway node's.
        #[arg(long)]
        node: Option<u32>,
    },
    /// Advertise a subnet behind a gateway node.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Gateway node id.
        node: u32,
        /// Subnet, e.g. 192.168.1.0/24.
        cidr: String,
        /// Lower wins (default 100).
        #[arg(long)]
        priority: Option<u32>,
        /// Share among equal priorities (default 100).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a route.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// Gateway node id.
        node: u32,
        /// Route id.
        id: u32,
    },
}

/// `slowpath mesh server …`.
#[derive(Debug, Subcommand)]
pub enum MeshServerCommand {
    /// List servers.
    List(ClientArgs),
    /// Add a server; prints its token once.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Where nodes connect, e.g. wss://relay.example.com/ws/data.
        #[arg(long, default_value = "")]
        url: String,
        /// Region label.
        #[arg(long, default_value = "")]
        region: String,
        /// relay, stun, or both (repeat or comma-separate; default relay).
        #[arg(long, value_delimiter = ',')]
        capability: Vec<String>,
        /// STUN's public address (with stun).
        #[arg(long, default_value = "")]
        stun_ip: String,
        /// STUN's second address.
        #[arg(long, default_value = "")]
        stun_ip2: String,
        /// STUN's UDP port (default 3478).
        #[arg(long)]
        stun_port: Option<u16>,
        /// The relay in this control plane's own process.
        #[arg(long)]
        builtin: bool,
    },
    /// Show a server.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u32,
    },
    /// Send nodes to it again.
    Enable {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u32,
    },
    /// Stop sending nodes to it; it is cut off.
    Disable {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u32,
    },
    /// A new token for it (the old one is blacklisted).
    Token {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u32,
    },
    /// Delete a server (its token is blacklisted).
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        id: u32,
    },
}

/// `slowpath mesh token …`.
#[derive(Debug, Subcommand)]
pub enum MeshTokenCommand {
    /// A new server token for a server (as `server token`).
    Generate {
        #[command(flatten)]
        client: ClientArgs,
        /// Server id.
        #[arg(long)]
        server: u32,
    },
    /// List revoked token ids, or revoke one with --add.
    Blacklist {
        #[command(flatten)]
        client: ClientArgs,
        /// A token id (jti) to revoke.
        #[arg(long)]
        add: Option<String>,
        /// Why (with --add).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// A node's frps vhost keys, those given.
#[derive(Debug, Args, Clone)]
pub struct NodeVhostArgs {
    /// frps's subDomainHost: proxies' subdomains are labels under it.
    #[arg(long)]
    pub sub_domain_host: Option<String>,
    /// frps's vhostHTTPPort (0 = none).
    #[arg(long)]
    pub vhost_http_port: Option<u16>,
    /// frps's vhostHTTPSPort (0 = none).
    #[arg(long)]
    pub vhost_https_port: Option<u16>,
}

/// `slowpath invite …`.
#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// Create an invite on a node (default: the local node); prints its code once.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Node id (default: the slowpath's local node).
        #[arg(long)]
        node: Option<String>,
        /// Invite lifetime, seconds (default 7 days).
        #[arg(long)]
        ttl_s: Option<u64>,
        /// Resolves allowed (default 1; 0 = unlimited).
        #[arg(long)]
        max_uses: Option<u32>,
        /// Ticket lifetime, seconds (600-3600).
        #[arg(long)]
        ticket_ttl_s: Option<u64>,
        /// Port pool (subset of the node's).
        #[arg(long)]
        port_pool: Option<String>,
        /// Proxy types, e.g. tcp.
        #[arg(long)]
        proxy_types: Option<String>,
        /// Concurrent frpc sessions (default 2; 0 = unlimited).
        #[arg(long)]
        max_conns: Option<u32>,
        /// Proxies across the invite's sessions (default 10; 0 = unlimited).
        #[arg(long)]
        max_proxies: Option<u32>,
        /// Domain suffix its http/https proxies' domains must be under.
        #[arg(long)]
        domain_suffix: Option<String>,
        /// Assign it one subdomain of its own under the node's subDomainHost.
        #[arg(long)]
        auto_subdomain: bool,
        /// Note.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List invites.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
    },
    /// Revoke an invite.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// Invite id.
        id: String,
    },
    /// Resolve a code (as a client would) and print the frpc.toml.
    Resolve {
        /// slowpath API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7400")]
        api: String,
        /// Invite code.
        code: String,
        /// Print the whole JSON answer instead of the frpc.toml.
        #[arg(long)]
        json: bool,
    },
}

/// `slowpath audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    /// API access.
    pub client: ClientArgs,
    /// Only this kind (e.g. invite.resolved, session.open).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this invite.
    #[arg(long)]
    pub invite: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}
