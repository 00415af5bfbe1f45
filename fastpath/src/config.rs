//! The fastpath's configuration: one TOML file that accepts frps.toml's own
//! keys for everything implemented, plus a `[fastpath]` table for data-plane
//! knobs. Deserialized once, validated once; every error names its key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the fastpath reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    /// Address of the frp bind port (frps `bindAddr`).
    pub bind_addr: String,
    /// frp bind port (frps `bindPort`).
    pub bind_port: u16,
    /// Address proxies' public listeners bind to; defaults to `bindAddr`.
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
    /// Transport settings (frps `transport.*`).
    pub transport: TransportConfig,
    /// Logging (frps `log.*`).
    pub log: LogConfig,
    /// Data-plane settings that frps does not have.
    pub fastpath: FastpathConfig,
}

/// frps `auth.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthConfig {
    /// Only "token" is implemented.
    pub method: String,
    /// Shared secret: login auth and the control channel's encryption key.
    pub token: String,
    /// "HeartBeats" and/or "NewWorkConns": also authenticate those messages.
    pub additional_scopes: Vec<String>,
}

/// One `allowPorts` entry: `{ start = 2000, end = 3000 }` or `{ single = 3001 }`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PortRange {
    pub start: u32,
    pub end: u32,
    pub single: u32,
}

impl PortRange {
    /// The inclusive range this entry allows.
    pub fn bounds(&self) -> (u16, u16) {
        if self.single != 0 {
            (self.single as u16, self.single as u16)
        } else {
            (self.start as u16, self.end as u16)
        }
    }
}

/// frps `transport.*`.
#[derive(Debug, Clone, Deserialize)]
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
    pub heartbeat_timeout: Option<i64>,
    /// TLS settings (frps `transport.tls.*`).
    pub tls: TlsConfig,
}

/// frps `transport.tls.*`.
#[derive(Debug, Clone, Deserialize, Default)]
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
#[derive(Debug, Clone, Deserialize)]
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
}

/// Data-plane knobs (`[fastpath]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FastpathConfig {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Pin worker i to CPU i.
    pub cpu_pinning: bool,
    /// yamux receive window granted per stream, bytes.
    pub yamux_window: u32,
    /// Relay buffer size per direction, bytes.
    pub relay_buffer: usize,
    /// Use splice(2) for plain relays where the path allows.
    pub splice: bool,
    /// I/O driver: "auto" (io_uring when the kernel allows it, else epoll),
    /// "io_uring" or "epoll".
    pub driver: String,
    /// Shared-memory directory of a slowpath (`/dev/shm/totoro-<instance>`):
    /// when set, logins and proxies are decided by the policy table the
    /// slowpath publishes there, and events go back through per-worker
    /// rings in the same directory. Empty: run alone on this file's keys.
    pub policy_dir: String,
    /// Ring size per worker for events to the slowpath, bytes.
    pub event_ring_bytes: usize,
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
            transport: TransportConfig::default(),
            log: LogConfig::default(),
            fastpath: FastpathConfig::default(),
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
        }
    }
}

impl Default for FastpathConfig {
    fn default() -> Self {
        FastpathConfig {
            workers: 0,
            cpu_pinning: false,
            yamux_window: 16 * 1024 * 1024,
            relay_buffer: 64 * 1024,
            splice: true,
            driver: "auto".into(),
            policy_dir: String::new(),
            event_ring_bytes: 1 << 20,
        }
    }
}

/// A config problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Parse a TOML document. Returns the config and the unknown keys found
    /// (the caller logs them as a warning; they are not errors, as in frps).
    pub fn from_toml(text: &str, path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let cfg: Config =
            serde_ignored::deserialize(de, |p| unknown.push(p.to_string())).map_err(|e| {
                ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                }
            })?;
        cfg.validate()?;
        Ok((cfg, unknown))
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
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
        for r in &self.allow_ports {
            let ok = if r.single != 0 {
                r.start == 0 && r.end == 0 && r.single <= 65535
            } else {
                r.start >= 1 && r.start <= r.end && r.end <= 65535
            };
            if !ok {
                return Err(invalid(
                    "allowPorts",
                    format!("{r:?} must be {{ single = N }} or {{ start = A, end = B }} with 1 <= A <= B <= 65535"),
                ));
            }
        }
        if self.user_conn_timeout <= 0 || self.user_conn_timeout > 3600 {
            return Err(invalid(
                "userConnTimeout",
                "must be between 1 and 3600 seconds",
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
        if !matches!(fp.driver.as_str(), "auto" | "io_uring" | "epoll") {
            return Err(invalid(
                "fastpath.driver",
                format!("{:?} is not one of auto, io_uring, epoll", fp.driver),
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
        Ok(())
    }

    /// Address proxies bind their public ports on.
    pub fn proxy_ip(&self) -> IpAddr {
        let s = self.proxy_bind_addr.as_deref().unwrap_or(&self.bind_addr);
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// Worker count after resolving 0 to the number of cores.
    pub fn worker_count(&self) -> usize {
        if self.fastpath.workers > 0 {
            self.fastpath.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
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
        Config::from_toml(s, Path::new("test.toml"))
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
[fastpath]
workers = 2
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
        assert_eq!(c.worker_count(), 2);
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let (_, unknown) =
            parse("bindPort = 7000\nwebServer.port = 7500\nnoSuchKey = 1\n").unwrap();
        assert_eq!(
            unknown,
            vec!["webServer".to_string(), "noSuchKey".to_string()]
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = parse("bindPort = 70000").unwrap_err().to_string();
        assert!(e.contains("bindPort"), "{e}");
        let e = parse("bindAddr = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("bindAddr"), "{e}");
        let e = parse("allowPorts = [{ start = 5, end = 1 }]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allowPorts"), "{e}");
        let e = parse("log.level = \"loud\"").unwrap_err().to_string();
        assert!(e.contains("log.level"), "{e}");
        let e = parse("[fastpath]\nyamuxWindow = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fastpath.yamuxWindow"), "{e}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let (c, _) = parse("").unwrap();
        assert_eq!(c.bind_port, 7000);
        assert_eq!(c.heartbeat_timeout(false), Some(Duration::from_secs(90)));
        assert_eq!(c.heartbeat_timeout(true), None);
    }
}
