//! The node's frps-compatible TOML file, shared by both processes: the
//! fastpath runs on it, the slowpath reads the node's keys and seed 002's
//! `[etcd]` table from it, and `slowpath up` writes one by serializing a
//! [`Config`]. It accepts frps.toml's own keys for everything implemented,
//! plus a `[fastpath]` table for data-plane knobs.
//!
//! Text in, struct out ([`Config::from_toml`], [`Config::to_toml`]): reading
//! the file is the caller's. Deserialized once, validated once; every error
//! names its key ([`ConfigError`]).

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::PortRange;

/// Everything the frps-style file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    /// Address of the frp bind port (frps `bindAddr`).
    pub bind_addr: String,
    /// frp bind port (frps `bindPort`).
    pub bind_port: u16,
    /// Address proxies' public listeners bind to; defaults to `bindAddr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_bind_addr: Option<String>,
    /// Token authentication (frps `auth.*`).
    pub auth: AuthConfig,
    /// Ports proxies may take; empty means all of 1–65535.
    pub allow_ports: Vec<PortRange>,
    /// Maximum ports one client may hold; 0 means unlimited.
    pub max_ports_per_client: u32,
    /// How long a user connection waits for a work connection, seconds.
    pub user_conn_timeout: i64,
    /// Send detailed refusal reasons to clients (frps default true).
    pub detailed_errors_to_client: bool,
    /// frps `vhostHTTPPort`: where `http` proxies are reached, each request
    /// routed by its Host, path and Basic-auth user; 0: no such listener,
    /// and `http` proxies are refused.
    #[serde(rename = "vhostHTTPPort")]
    pub vhost_http_port: u16,
    /// frps `vhostHTTPTimeout`, seconds: how long a request head may take
    /// to arrive, and a response head to come back from frpc (frps: the
    /// response header timeout); 60 by default.
    #[serde(rename = "vhostHTTPTimeout")]
    pub vhost_http_timeout: i64,
    /// frps `custom404Page`: a file whose content is the body of the 404
    /// answered for a request no `http` proxy serves; read at start (an
    /// unreadable file is a config error, naming the key).
    #[serde(rename = "custom404Page")]
    pub custom_404_page: String,
    /// frps `vhostHTTPSPort`: where `https` proxies are reached, each
    /// connection routed by the server name of its TLS ClientHello (TLS is
    /// not terminated); 0: no such listener, and `https` proxies are
    /// refused.
    #[serde(rename = "vhostHTTPSPort")]
    pub vhost_https_port: u16,
    /// frps `subDomainHost`: a proxy's `subdomain` is served as
    /// `<subdomain>.<subDomainHost>`; empty: `subdomain` is refused.
    pub sub_domain_host: String,
    /// frps `tcpmuxHTTPConnectPort`: where `tcpmux` proxies
    /// (`multiplexer = "httpconnect"`) are reached, each connection routed
    /// by the host of its HTTP CONNECT request; 0: none.
    #[serde(rename = "tcpmuxHTTPConnectPort")]
    pub tcpmux_http_connect_port: u16,
    /// frps `tcpmuxPassthrough`: the CONNECT request goes on to frpc's
    /// service instead of being answered with 200 here.
    pub tcpmux_passthrough: bool,
    /// frps `udpPacketSize`: the largest datagram a `udp` proxy reads from
    /// its users, bytes (a longer one is cut there, as frps does); 1500
    /// by default.
    #[serde(rename = "udpPacketSize")]
    pub udp_packet_size: i64,
    /// Transport settings (frps `transport.*`).
    pub transport: TransportConfig,
    /// Logging (frps `log.*`).
    pub log: LogConfig,
    /// Data-plane settings that frps does not have.
    pub fastpath: FastpathConfig,
    /// Seed 002's `[etcd]` table: read by the slowpath, which compiles
    /// etcd's tenants into the policy table; the fastpath never talks to
    /// etcd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSection>,
}

/// frps `auth.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthConfig {
    /// Only "token" is implemented.
    pub method: String,
    /// Shared secret: login auth and the control channel's encryption key.
    pub token: String,
    /// "HeartBeats" and/or "NewWorkConns": also authenticate those messages.
    pub additional_scopes: Vec<String>,
}

/// frps `transport.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TransportConfig {
    /// Whether clients are expected to multiplex with yamux. The fastpath
    /// detects yamux per connection either way; this only sets the default
    /// of `heartbeatTimeout`, as in frps.
    pub tcp_mux: bool,
    /// yamux keepalive ping interval, seconds; <= 0 disables.
    pub tcp_mux_keepalive_interval: i64,
    /// TCP keepalive on accepted connections, seconds; <= 0 disables.
    pub tcp_keepalive: i64,
    /// Cap on the work connections a client may keep pooled.
    pub max_pool_count: u32,
    /// Drop a control after this long without a Ping, seconds; -1 disables.
    /// Unset: 90 for clients that do not multiplex, off for yamux clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<i64>,
    /// TLS settings (frps `transport.tls.*`).
    pub tls: TlsConfig,
}

/// frps `transport.tls.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsConfig {
    /// Refuse clients that do not use TLS.
    pub force: bool,
    /// PEM certificate chain; a self-signed one is generated when empty.
    pub cert_file: String,
    /// PEM private key for `certFile`.
    pub key_file: String,
    /// CA for client certificates. Not implemented yet: setting it is a
    /// config error rather than a silently unenforced mTLS.
    pub trusted_ca_file: String,
}

/// frps `log.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LogConfig {
    /// "console" or a file path.
    pub to: String,
    /// trace, debug, info, warn, error.
    pub level: String,
    /// Accepted for frps compatibility; rotation is left to the operator.
    pub max_days: i64,
    /// Accepted for frps compatibility.
    pub disable_print_color: bool,
    /// "text" (frps's look) or "json" (one object per line, for log
    /// shippers; `logfmt`).
    pub format: String,
}

/// Data-plane knobs (`[fastpath]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FastpathConfig {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Pin worker i to CPU i.
    pub cpu_pinning: bool,
    /// yamux receive window granted per stream, bytes.
    pub yamux_window: u32,
    /// yamux streams a session may open before a Login on it succeeds
    /// (frpc opens one); each gets only the initial 256 KiB window.
    pub pre_auth_streams: usize,
    /// Relay buffer size per direction, bytes.
    pub relay_buffer: usize,
    /// Use splice(2) for plain relays where the path allows.
    pub splice: bool,
    /// Splice also towards a peer on this host (loopback, or the address
    /// the connection came in on). Off: that direction copies through a
    /// 32 KiB buffer per worker, so the local reader gets bytes still in
    /// cache rather than pages another process wrote long before.
    pub splice_local: bool,
    /// Relay a session's plain TCP connections on whichever worker relays
    /// the fewest connections, not only on the session's own: one frpc
    /// with many busy connections then gets every core, not one. A
    /// connection moves between workers as two file descriptors, once,
    /// before its first byte is relayed.
    pub spread_relays: bool,
    /// I/O driver: "auto" (io_uring when the kernel allows it, else epoll),
    /// "io_uring" or "epoll".
    pub driver: String,
    /// How io_uring runs the kernel's completion work for a worker:
    /// "defer" (only when the worker waits for completions; Linux 6.1+),
    /// "coop" (at the worker's next syscall, without interrupting it;
    /// 5.19+), "signal" (the kernel interrupts the worker at once, the
    /// oldest behaviour), or "auto": the first of these the kernel takes.
    pub task_work: String,
    /// Shared-memory directory of a slowpath (`/dev/shm/totoro-<instance>`):
    /// when set, logins and proxies are decided by the policy table the
    /// slowpath publishes there, and events go back through per-worker
    /// rings in the same directory. Empty: run alone on this file's keys.
    pub policy_dir: String,
    /// Ring size per worker for events to the slowpath, bytes.
    pub event_ring_bytes: usize,
    /// Connections one source address (an IPv6 /64) may hold open before
    /// they identify (first message read; for yamux, Login succeeded).
    pub pre_auth_per_source: u32,
    /// Unidentified connections one worker may hold, all sources together.
    pub pre_auth_per_worker: u32,
    /// New connections per second a source may open that never identify
    /// (a token bucket of twice `preAuthPerSource`; identified connections
    /// give their token back).
    pub pre_auth_rate: u32,
    /// What one yamux session's streams may hold together, bytes: window
    /// growth above the initial 256 KiB per stream, and received data not
    /// yet passed on (over it, the session is not read until it drains).
    pub session_budget: u64,
    /// The same for all yamux sessions of one worker together, bytes.
    pub worker_budget: u64,
    /// Streams one yamux session may have open after its Login.
    pub max_streams: usize,
    /// User connections one session may have waiting for a work
    /// connection; more are closed at once.
    pub pending_user_conns: usize,
    /// Messages queued for one client that it has not read yet (Pongs,
    /// replies, ReqWorkConn); over it, its control is not read until it
    /// drains.
    pub control_queue: usize,
    /// A client that has data queued and reads nothing for this long is
    /// closed, seconds.
    pub write_stall_secs: u64,
    /// Unsent bytes a user connection's socket may queue in the kernel
    /// (TCP_NOTSENT_LOWAT); 0 leaves the kernel's default (no limit).
    pub user_not_sent_lowat: u32,
    /// yamux receive windows start at 256 KiB and grow with the rate in
    /// use (true), or are granted `yamuxWindow` in full at once (false).
    pub window_autotune: bool,
    /// Seed 003's mesh relay (`/ws/data`, WebSocket or WebSocket over
    /// TLS with `transport.tls`'s certificate) on this TCP port of
    /// `bindAddr`; 0 = no relay. Needs a slowpath: relay tokens are
    /// checked against the policy table's keys, revocations and nodes.
    pub mesh_relay_port: u16,
    /// Bytes queued for one mesh node that it has not read yet; past it
    /// frames to it are dropped (and counted), as a router drops.
    pub mesh_queue_bytes: usize,
    /// A STUN server (RFC 5389 Binding, what frpc's `natHoleStunServer`
    /// and mesh nodes point at) on this UDP port; 0 = none.
    pub stun_port: u16,
    /// The IP the STUN server listens on and names as its own (seed 003's
    /// `stun_external_ip`: a public address with nothing in between).
    /// Empty: `bindAddr`.
    #[serde(rename = "stunIP")]
    pub stun_ip: String,
    /// A second IP of this host (seed 003's `secondary_ip`): with it the
    /// server also answers on it and on `stunAlternatePort`, and does RFC
    /// 5780's behaviour discovery (CHANGE-REQUEST, OTHER-ADDRESS). Empty:
    /// none.
    #[serde(rename = "stunSecondaryIP")]
    pub stun_secondary_ip: String,
    /// The alternate UDP port with a secondary IP; 0 = `stunPort` + 1.
    pub stun_alternate_port: u16,
    /// Prometheus metrics (`GET /metrics`, OpenMetrics text) on this
    /// `ip:port`; empty = none. Per-worker counters and gauges, the same
    /// as the stats file's.
    pub metrics_addr: String,
    /// Datagrams a `udp` proxy keeps for frpc while its work connection
    /// is busy or being replaced (frps: 1024); past it, new ones are
    /// dropped and counted (`udp_dropped`).
    pub udp_queue: usize,
    /// A udp work connection frpc says nothing on for this long is closed
    /// and replaced, seconds (frps: 60; frpc pings every 30).
    pub udp_idle_secs: u64,
    /// The Unix socket through which a new fastpath takes this one's
    /// listening sockets over (`fastpath upgrade`, SIGUSR2); empty = none.
    pub upgrade_socket: String,
    /// After handing its listeners over, how long this process keeps
    /// serving its live sessions and transfers before closing what is
    /// left, seconds.
    pub drain_secs: u64,
    /// This node's id, written as `node_id` on every JSON log line
    /// (`slowpath up` passes its local node's); empty = none.
    pub node_id: String,
}

/// Seed 002's `[etcd]` table as written. The slowpath checks it into its
/// etcd settings (endpoint URLs, the TLS files, empty strings as "not
/// set", as the seed's sample writes them); here the keys only get their
/// types. Unknown keys under `etcd.` come back with the other unknown keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EtcdSection {
    /// `host:port` or URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// The region this node serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix of tenant records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Seconds (integer or fractional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<f64>,
    /// Where traffic reports are POSTed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_report_url: Option<String>,
    /// etcd user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// That user's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `[etcd.tls]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTlsSection>,
}

/// `[etcd.tls]` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EtcdTlsSection {
    /// PEM client certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key of `certFile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// PEM CA certificates for etcd's server certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_addr: "0.0.0.0".into(),
            bind_port: 7000,
            proxy_bind_addr: None,
            auth: AuthConfig::default(),
            allow_ports: Vec::new(),
            max_ports_per_client: 0,
            user_conn_timeout: 10,
            detailed_errors_to_client: true,
            vhost_http_port: 0,
            vhost_http_timeout: 60,
            custom_404_page: String::new(),
            vhost_https_port: 0,
            sub_domain_host: String::new(),
            tcpmux_http_connect_port: 0,
            tcpmux_passthrough: false,
            udp_packet_size: 1500,
            transport: TransportConfig::default(),
            log: LogConfig::default(),
            fastpath: FastpathConfig::default(),
            etcd: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: "token".into(),
            token: String::new(),
            additional_scopes: Vec::new(),
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            tcp_mux: true,
            tcp_mux_keepalive_interval: 30,
            tcp_keepalive: 7200,
            max_pool_count: 5,
            heartbeat_timeout: None,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            to: "console".into(),
            level: "info".into(),
            max_days: 3,
            disable_print_color: false,
            format: "text".into(),
        }
    }
}

impl Default for FastpathConfig {
    fn default() -> Self {
        FastpathConfig {
            workers: 0,
            cpu_pinning: false,
            yamux_window: 16 * 1024 * 1024,
            pre_auth_streams: 8,
            relay_buffer: 64 * 1024,
            splice: true,
            splice_local: false,
            spread_relays: true,
            driver: "auto".into(),
            task_work: "auto".into(),
            policy_dir: String::new(),
            event_ring_bytes: 1 << 20,
            pre_auth_per_source: 1024,
            pre_auth_per_worker: 8192,
            pre_auth_rate: 200,
            session_budget: 32 << 20,
            worker_budget: 256 << 20,
            max_streams: 8192,
            pending_user_conns: 1024,
            control_queue: 1024,
            write_stall_secs: 30,
            user_not_sent_lowat: 1024 * 1024,
            window_autotune: true,
            mesh_relay_port: 0,
            mesh_queue_bytes: 4 << 20,
            stun_port: 0,
            stun_ip: String::new(),
            stun_secondary_ip: String::new(),
            stun_alternate_port: 0,
            metrics_addr: String::new(),
            udp_queue: 1024,
            udp_idle_secs: 60,
            upgrade_socket: String::new(),
            drain_secs: 600,
            node_id: String::new(),
        }
    }
}

/// A config problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a value of the wrong type or out of its type's range.
    /// `key` is where (`etcd.endpoints[1]`; empty for a syntax error).
    #[error("{}{message}{}", key_prefix(key), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        key: String,
        line: Option<usize>,
        message: String,
    },
    /// A value outside its allowed range.
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    /// The key the error is about (empty when the text is not TOML).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Parse { key, .. } => key,
            ConfigError::Invalid { key, .. } => key,
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Parse and validate a TOML document. Returns the config and the
    /// unknown keys found (the caller warns about them; they are not
    /// errors, as in frps).
    pub fn from_toml(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let mut unknown = Vec::new();
        let mut note_unknown = |p: serde_ignored::Path<'_>| {
            // An Option shows as a `?` segment: `etcd.?.prefx`.
            let path = p.to_string();
            let named: Vec<&str> = path.split('.').filter(|s| *s != "?").collect();
            unknown.push(named.join("."));
        };
        let de = serde_ignored::Deserializer::new(toml::Deserializer::new(text), &mut note_unknown);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                key: if path == "." { String::new() } else { path },
                line: inner
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
                message: inner.message().trim_end().to_owned(),
            }
        })?;
        cfg.validate()?;
        Ok((cfg, unknown))
    }

    /// The document [`Config::from_toml`] reads back as this config: every
    /// key, defaults included, so the file says what the fastpath runs with.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The STUN server's addresses (None: `fastpath.stunPort` is 0).
    pub fn stun_site(&self) -> Option<crate::stun::Site> {
        let f = &self.fastpath;
        if f.stun_port == 0 {
            return None;
        }
        let primary = self.stun_primary()?;
        let secondary = f.stun_secondary_ip.parse::<IpAddr>().ok();
        Some(crate::stun::Site {
            ips: [primary, secondary.unwrap_or(primary)],
            // Without a secondary IP the alternate port is never bound.
            ports: [
                f.stun_port,
                self.stun_alternate_port().unwrap_or(f.stun_port),
            ],
            alternate: secondary.is_some(),
        })
    }

    /// The STUN server's own IP: `stunIP`, else `bindAddr`.
    fn stun_primary(&self) -> Option<IpAddr> {
        match self.fastpath.stun_ip.as_str() {
            "" => self.bind_addr.parse().ok(),
            ip => ip.parse().ok(),
        }
    }

    /// `stunAlternatePort`, or `stunPort` + 1 when it is 0 (None past 65535).
    fn stun_alternate_port(&self) -> Option<u16> {
        match self.fastpath.stun_alternate_port {
            0 => self.fastpath.stun_port.checked_add(1),
            p => Some(p),
        }
    }

    fn check_stun(&self) -> Result<(), ConfigError> {
        let f = &self.fastpath;
        for (key, v) in [
            ("fastpath.stunIP", &f.stun_ip),
            ("fastpath.stunSecondaryIP", &f.stun_secondary_ip),
        ] {
            if !v.is_empty() && v.parse::<IpAddr>().is_err() {
                return Err(invalid(key, format!("{v:?} is not an IP address")));
            }
        }
        let Some(site) = self.stun_site().filter(|s| s.alternate) else {
            return Ok(());
        };
        let [primary, secondary] = site.ips;
        if primary.is_unspecified() {
            return Err(invalid(
                "fastpath.stunIP",
                "with fastpath.stunSecondaryIP the primary IP must be given (or bindAddr be one address)",
            ));
        }
        if secondary == primary || secondary.is_ipv4() != primary.is_ipv4() {
            return Err(invalid(
                "fastpath.stunSecondaryIP",
                "must be another address of the same family as the primary",
            ));
        }
        if self.stun_alternate_port().is_none_or(|p| p == f.stun_port) {
            return Err(invalid(
                "fastpath.stunAlternatePort",
                "must be a port other than fastpath.stunPort",
            ));
        }
        Ok(())
    }

    /// Check every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr.parse::<IpAddr>().map_err(|_| {
            invalid(
                "bindAddr",
                format!("{:?} is not an IP address", self.bind_addr),
            )
        })?;
        if let Some(a) = &self.proxy_bind_addr {
            a.parse::<IpAddr>()
                .map_err(|_| invalid("proxyBindAddr", format!("{a:?} is not an IP address")))?;
        }
        if self.sub_domain_host.starts_with('.')
            || self.sub_domain_host.contains(['*', ':', '/', ' '])
        {
            return Err(invalid(
                "subDomainHost",
                format!(
                    "{:?} is not a domain name (no leading dot, port or wildcard)",
                    self.sub_domain_host
                ),
            ));
        }
        if self.vhost_http_port != 0 && self.vhost_http_port == self.bind_port {
            return Err(invalid("vhostHTTPPort", "must differ from bindPort"));
        }
        let https = self.vhost_https_port;
        if https != 0 && (https == self.bind_port || https == self.vhost_http_port) {
            return Err(invalid(
                "vhostHTTPSPort",
                "must differ from bindPort and vhostHTTPPort",
            ));
        }
        let mux = self.tcpmux_http_connect_port;
        if mux != 0 && [self.bind_port, self.vhost_http_port, https].contains(&mux) {
            return Err(invalid(
                "tcpmuxHTTPConnectPort",
                "must differ from bindPort, vhostHTTPPort and vhostHTTPSPort",
            ));
        }
        let relay = self.fastpath.mesh_relay_port;
        if relay != 0 && [self.bind_port, self.vhost_http_port, https, mux].contains(&relay) {
            return Err(invalid(
                "fastpath.meshRelayPort",
                "must differ from bindPort and the vhost and tcpmux ports",
            ));
        }
        if relay != 0 && self.fastpath.policy_dir.is_empty() {
            return Err(invalid(
                "fastpath.meshRelayPort",
                "the mesh relay needs a slowpath (fastpath.policyDir)",
            ));
        }
        self.check_stun()?;
        let m = &self.fastpath.metrics_addr;
        if !m.is_empty() && m.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "fastpath.metricsAddr",
                format!("{m:?} is not an ip:port"),
            ));
        }
        if !(64 << 10..=1 << 30).contains(&self.fastpath.mesh_queue_bytes) {
            return Err(invalid(
                "fastpath.meshQueueBytes",
                format!("{} must be 64 KiB to 1 GiB", self.fastpath.mesh_queue_bytes),
            ));
        }
        if !(1..=86_400).contains(&self.vhost_http_timeout) {
            return Err(invalid(
                "vhostHTTPTimeout",
                format!("{} must be 1 to 86400 seconds", self.vhost_http_timeout),
            ));
        }
        if self.auth.method != "token" {
            return Err(invalid(
                "auth.method",
                format!("{:?} is not supported (only \"token\")", self.auth.method),
            ));
        }
        for s in &self.auth.additional_scopes {
            if s != "HeartBeats" && s != "NewWorkConns" {
                return Err(invalid(
                    "auth.additionalScopes",
                    format!("{s:?} is not a scope (allowed: \"HeartBeats\", \"NewWorkConns\")"),
                ));
            }
        }
        // allowPorts entries are checked as they are read (PortRange).
        if self.user_conn_timeout <= 0 || self.user_conn_timeout > 3600 {
            return Err(invalid(
                "userConnTimeout",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(1..=65507).contains(&self.udp_packet_size) {
            return Err(invalid(
                "udpPacketSize",
                format!("{} must be 1 to 65507 bytes", self.udp_packet_size),
            ));
        }
        if !(1..=1 << 20).contains(&self.fastpath.udp_queue) {
            return Err(invalid(
                "fastpath.udpQueue",
                format!("{} must be 1 to 1048576 datagrams", self.fastpath.udp_queue),
            ));
        }
        let up = &self.fastpath.upgrade_socket;
        // sun_path holds 108 bytes with its NUL.
        if !up.is_empty() && (!up.starts_with('/') || up.len() > 107) {
            return Err(invalid(
                "fastpath.upgradeSocket",
                format!("{up:?} must be an absolute path of at most 107 bytes"),
            ));
        }
        if self.transport.max_pool_count > 1000 {
            return Err(invalid(
                "transport.maxPoolCount",
                "must be between 0 and 1000",
            ));
        }
        if let Some(t) = self.transport.heartbeat_timeout {
            if t == 0 || t < -1 {
                return Err(invalid(
                    "transport.heartbeatTimeout",
                    "must be -1 (off) or a positive number of seconds",
                ));
            }
        }
        let tls = &self.transport.tls;
        if !tls.trusted_ca_file.is_empty() {
            return Err(invalid(
                "transport.tls.trustedCaFile",
                "client certificate verification is not supported yet; remove the key (frps would require client certificates)",
            ));
        }
        if tls.cert_file.is_empty() != tls.key_file.is_empty() {
            return Err(invalid(
                "transport.tls.certFile",
                "certFile and keyFile must be set together",
            ));
        }
        match self.log.level.as_str() {
            "trace" | "debug" | "info" | "warn" | "error" => {}
            other => {
                return Err(invalid(
                    "log.level",
                    format!("{other:?} is not one of trace, debug, info, warn, error"),
                ))
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("{:?} is not one of text, json", self.log.format),
            ));
        }
        let fp = &self.fastpath;
        if fp.workers > 1024 {
            return Err(invalid(
                "fastpath.workers",
                "must be between 0 (one per core) and 1024",
            ));
        }
        if fp.yamux_window < 256 * 1024 || fp.yamux_window > 1 << 30 {
            return Err(invalid(
                "fastpath.yamuxWindow",
                "must be between 262144 and 1073741824 bytes",
            ));
        }
        if fp.pre_auth_streams == 0 || fp.pre_auth_streams > 65536 {
            return Err(invalid(
                "fastpath.preAuthStreams",
                "must be between 1 and 65536",
            ));
        }
        if !matches!(fp.driver.as_str(), "auto" | "io_uring" | "epoll") {
            return Err(invalid(
                "fastpath.driver",
                format!("{:?} is not one of auto, io_uring, epoll", fp.driver),
            ));
        }
        if !matches!(fp.task_work.as_str(), "auto" | "defer" | "coop" | "signal") {
            return Err(invalid(
                "fastpath.taskWork",
                format!("{:?} is not one of auto, defer, coop, signal", fp.task_work),
            ));
        }
        if fp.event_ring_bytes < 4096 || fp.event_ring_bytes > 1 << 30 {
            return Err(invalid(
                "fastpath.eventRingBytes",
                format!("{} is outside 4096..=1073741824", fp.event_ring_bytes),
            ));
        }
        if fp.relay_buffer < 4096 || fp.relay_buffer > 16 << 20 {
            return Err(invalid(
                "fastpath.relayBuffer",
                "must be between 4096 and 16777216 bytes",
            ));
        }
        let ranges: [(&str, u64, u64, u64); 11] = [
            (
                "fastpath.preAuthPerSource",
                fp.pre_auth_per_source.into(),
                1,
                1 << 20,
            ),
            (
                "fastpath.preAuthPerWorker",
                fp.pre_auth_per_worker.into(),
                1,
                1 << 24,
            ),
            ("fastpath.preAuthRate", fp.pre_auth_rate.into(), 1, 1 << 24),
            (
                "fastpath.sessionBudget",
                fp.session_budget,
                1 << 20,
                1 << 40,
            ),
            ("fastpath.workerBudget", fp.worker_budget, 1 << 20, 1 << 44),
            ("fastpath.maxStreams", fp.max_streams as u64, 1, 1 << 20),
            (
                "fastpath.pendingUserConns",
                fp.pending_user_conns as u64,
                1,
                1 << 20,
            ),
            (
                "fastpath.controlQueue",
                fp.control_queue as u64,
                16,
                1 << 20,
            ),
            ("fastpath.writeStallSecs", fp.write_stall_secs, 1, 86_400),
            ("fastpath.drainSecs", fp.drain_secs, 0, 7 * 86_400),
            ("fastpath.udpIdleSecs", fp.udp_idle_secs, 2, 86_400),
        ];
        for (key, v, lo, hi) in ranges {
            if v < lo || v > hi {
                return Err(invalid(key, format!("{v} is outside {lo}..={hi}")));
            }
        }
        if fp.session_budget > fp.worker_budget {
            return Err(invalid(
                "fastpath.sessionBudget",
                "must not be above fastpath.workerBudget",
            ));
        }
        Ok(())
    }

    /// `vhostHTTPTimeout` as a duration (validated to be 1 s or more).
    pub fn vhost_http_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.vhost_http_timeout.max(1).unsigned_abs())
    }

    /// Address proxies bind their public ports on.
    pub fn proxy_ip(&self) -> IpAddr {
        let s = self.proxy_bind_addr.as_deref().unwrap_or(&self.bind_addr);
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// Worker count, with 0 (`fastpath.workers` unset) resolved to the
    /// `available_cores` the caller found.
    pub fn worker_count(&self, available_cores: usize) -> usize {
        if self.fastpath.workers > 0 {
            self.fastpath.workers
        } else {
            available_cores.max(1)
        }
    }

    /// Heartbeat timeout for a control, depending on whether it multiplexes.
    pub fn heartbeat_timeout(&self, muxed: bool) -> Option<Duration> {
        match self.transport.heartbeat_timeout {
            Some(t) if t > 0 => Some(Duration::from_secs(t as u64)),
            Some(_) => None,
            None if muxed => None,
            None => Some(Duration::from_secs(90)),
        }
    }

    /// yamux keepalive interval, if enabled.
    pub fn mux_keepalive(&self) -> Option<Duration> {
        let s = self.transport.tcp_mux_keepalive_interval;
        (s > 0).then(|| Duration::from_secs(s as u64))
    }

    /// TCP keepalive idle time for accepted connections, if enabled.
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        let s = self.transport.tcp_keepalive;
        (s > 0).then(|| Duration::from_secs(s as u64))
    }

    /// Whether `HeartBeats` is among the extra auth scopes.
    pub fn auth_heartbeats(&self) -> bool {
        self.auth
            .additional_scopes
            .iter()
            .any(|s| s == "HeartBeats")
    }

    /// Whether `NewWorkConns` is among the extra auth scopes.
    pub fn auth_work_conns(&self) -> bool {
        self.auth
            .additional_scopes
            .iter()
            .any(|s| s == "NewWorkConns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(Config, Vec<String>), ConfigError> {
        Config::from_toml(s)
    }

    #[test]
    fn frps_keys_are_read() {
        let (c, unknown) = parse(
            r#"
bindAddr = "127.0.0.1"
bindPort = 17000
auth.method = "token"
auth.token = "test-token"
allowPorts = [{ start = 2000, end = 3000 }, { single = 3001 }]
maxPortsPerClient = 3
transport.maxPoolCount = 7
transport.tls.force = true
log.to = "console"
log.level = "trace"
vhostHTTPPort = 17081
vhostHTTPTimeout = 30
custom404Page = "/etc/frp/404.html"
vhostHTTPSPort = 17443
subDomainHost = "t.example.net"
tcpmuxHTTPConnectPort = 17080
tcpmuxPassthrough = true
[fastpath]
workers = 2
taskWork = "coop"
"#,
        )
        .unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(c.bind_port, 17000);
        assert_eq!(c.auth.token, "test-token");
        assert_eq!(c.allow_ports[0].bounds(), (2000, 3000));
        assert_eq!(c.allow_ports[1].bounds(), (3001, 3001));
        assert_eq!(c.transport.max_pool_count, 7);
        assert!(c.transport.tls.force);
        assert_eq!(c.worker_count(8), 2);
        assert_eq!(Config::default().worker_count(8), 8);
        assert_eq!(c.etcd, None);
        assert_eq!(c.vhost_http_port, 17081);
        assert_eq!(c.vhost_http_timeout, 30);
        assert_eq!(c.custom_404_page, "/etc/frp/404.html");
        assert_eq!(c.vhost_https_port, 17443);
        assert_eq!(c.sub_domain_host, "t.example.net");
        assert_eq!(c.tcpmux_http_connect_port, 17080);
        assert!(c.tcpmux_passthrough);
        assert_eq!(c.fastpath.task_work, "coop");
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let (_, unknown) = parse(
            "bindPort = 7000\nwebServer.port = 7500\nnoSuchKey = 1\n[etcd]\nregion = \"r\"\nprefx = 1\n",
        )
        .unwrap();
        assert_eq!(unknown, ["webServer", "noSuchKey", "etcd.prefx"]);
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, key) in [
            ("bindPort = 70000", "bindPort"),
            ("bindPort = \"seven\"", "bindPort"),
            ("bindAddr = \"nope\"", "bindAddr"),
            ("allowPorts = [{ start = 5, end = 1 }]", "allowPorts[0]"),
            (
                "allowPorts = [{ single = 5 }, { single = 0 }]",
                "allowPorts[1]",
            ),
            ("log.level = \"loud\"", "log.level"),
            ("log.format = \"xml\"", "log.format"),
            ("[fastpath]\nyamuxWindow = 5", "fastpath.yamuxWindow"),
            (
                "[fastpath]\npreAuthPerSource = 0",
                "fastpath.preAuthPerSource",
            ),
            ("[fastpath]\ncontrolQueue = 2", "fastpath.controlQueue"),
            ("[fastpath]\ntaskWork = \"soon\"", "fastpath.taskWork"),
            ("subDomainHost = \".example.net\"", "subDomainHost"),
            ("bindPort = 7000\nvhostHTTPSPort = 7000", "vhostHTTPSPort"),
            ("bindPort = 7000\nvhostHTTPPort = 7000", "vhostHTTPPort"),
            ("vhostHTTPPort = 80\nvhostHTTPSPort = 80", "vhostHTTPSPort"),
            ("vhostHTTPTimeout = 0", "vhostHTTPTimeout"),
            (
                "bindPort = 7000\ntcpmuxHTTPConnectPort = 7000",
                "tcpmuxHTTPConnectPort",
            ),
            (
                "[fastpath]\nsessionBudget = 1099511627775\nworkerBudget = 268435456",
                "fastpath.sessionBudget",
            ),
            ("[fastpath]\nstunIP = \"here\"", "fastpath.stunIP"),
            ("[fastpath]\nmetricsAddr = \"9100\"", "fastpath.metricsAddr"),
            (
                "[fastpath]\nupgradeSocket = \"run/up.sock\"",
                "fastpath.upgradeSocket",
            ),
            ("[fastpath]\ndrainSecs = 9999999", "fastpath.drainSecs"),
            ("[fastpath]\nudpIdleSecs = 1", "fastpath.udpIdleSecs"),
            (
                "[fastpath]\nstunPort = 3478\nstunSecondaryIP = \"10.0.0.2\"",
                "fastpath.stunIP",
            ),
            (
                "[fastpath]\nstunPort = 3478\nstunIP = \"10.0.0.1\"\nstunSecondaryIP = \"10.0.0.1\"",
                "fastpath.stunSecondaryIP",
            ),
            (
                "[fastpath]\nstunPort = 3478\nstunIP = \"10.0.0.1\"\nstunSecondaryIP = \"::2\"",
                "fastpath.stunSecondaryIP",
            ),
            (
                "[fastpath]\nstunPort = 65535\nstunIP = \"10.0.0.1\"\nstunSecondaryIP = \"10.0.0.2\"",
                "fastpath.stunAlternatePort",
            ),
            ("[etcd]\nendpoints = [\"a:1\", 5]", "etcd.endpoints[1]"),
            ("etcd = 1", "etcd"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key(), key, "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("{key}: ")),
                "{text}: {e}"
            );
        }
        let e = parse("bindPort = 7000\nthis is = = not toml").unwrap_err();
        assert_eq!(e.key(), "");
        assert!(e.to_string().ends_with("(line 2)"), "{e}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let (c, _) = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.bind_port, 7000);
        assert_eq!(c.heartbeat_timeout(false), Some(Duration::from_secs(90)));
        assert_eq!(c.heartbeat_timeout(true), None);
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut c = Config {
            bind_port: 7001,
            allow_ports: crate::policy::PortSet::parse("2000-3000,4000")
                .unwrap()
                .entries(),
            proxy_bind_addr: Some("127.0.0.1".into()),
            etcd: Some(EtcdSection {
                endpoints: Some(vec!["127.0.0.1:2379".into()]),
                region: Some("chengdu".into()),
                dial_timeout: Some(2.5),
                tls: Some(EtcdTlsSection::default()),
                ..EtcdSection::default()
            }),
            ..Config::default()
        };
        c.auth.token = "tok\"en\n[fastpath]\npolicyDir = \"/evil\"".into();
        c.fastpath.policy_dir = "/dev/shm/totoro-x".into();
        c.transport.heartbeat_timeout = Some(-1);
        let text = c.to_toml().unwrap();
        let (back, unknown) =
            parse(&text).unwrap_or_else(|e| panic!("not read back ({e}):\n{text}"));
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(back, c, "{text}");
        let (back, _) = parse(&Config::default().to_toml().unwrap()).unwrap();
        assert_eq!(back, Config::default());
    }
}
