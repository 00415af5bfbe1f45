//! Registered-proxy cost: `K` clients log in and each registers `M` TCP
//! proxies, one after the other; with all of them registered (and idle: no
//! one visits them), the resident memory of a given process (the server
//! under test) is read against its value before the first login.
//!
//! Every proxy asks for `remotePort = 0`, so the server picks the port: the
//! server must allow that. frps and the fastpath both do by default; the
//! fastpath then picks from `allowPorts`, or from 10000–60000 when
//! `allowPorts` is empty, and M×K must fit in what is free there.
//!
//! Proxy names carry a random per-run tag, since names are server-wide and
//! another run (or a session the server has not dropped yet) may hold the
//! same ones.

use super::{bytes_each, rss_of};
use crate::client::{Client, ClientOpts};
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How many clients and proxies, to where, whose memory.
#[derive(Debug, Clone)]
pub struct ProxiesOpts {
    /// Clients logged in at once.
    pub clients: usize,
    /// Proxies each client registers.
    pub proxies_per_client: usize,
    /// auth.token.
    pub token: String,
    /// transport.tls.enable.
    pub tls: bool,
    /// transport.tcpMux.
    pub mux: bool,
    /// localIP:localPort of every proxy (never dialled: nobody visits them).
    pub local: SocketAddr,
    /// Process whose resident set is measured (`None`: no memory figures).
    pub pid_to_measure: Option<u32>,
    /// Wait between the last registration and the "after" reading.
    pub settle: Duration,
}

impl Default for ProxiesOpts {
    /// 100 clients × 10 proxies, plain TCP with tcpMux, 1 s settle.
    fn default() -> Self {
        ProxiesOpts {
            clients: 100,
            proxies_per_client: 10,
            token: String::new(),
            tls: false,
            mux: true,
            local: SocketAddr::from(([127, 0, 0, 1], 9)),
            pid_to_measure: None,
            settle: Duration::from_secs(1),
        }
    }
}

/// Outcome of one registered-proxies run.
#[derive(Debug, Clone, Serialize)]
pub struct ProxiesResult {
    pub clients: usize,
    pub proxies_per_client: usize,
    /// Clients that could not log in (each also adds its M proxies to
    /// `failed`).
    pub logins_failed: u64,
    /// Proxies the server accepted.
    pub registered: u64,
    /// Proxies refused, or not attempted because their client's login
    /// failed.
    pub failed: u64,
    /// The first login or proxy error, as the client saw it.
    pub first_error: Option<String>,
    /// Measured process's VmRSS in KiB before the first login.
    pub rss_before_kib: Option<u64>,
    /// Measured process's VmRSS in KiB with everything registered, after
    /// the settle time.
    pub rss_after_kib: Option<u64>,
    /// `(rss_after - rss_before) / registered`, in bytes (may be negative).
    pub bytes_per_proxy: Option<f64>,
    /// Seconds from the first login to the last NewProxyResp (logins
    /// included).
    pub register_s: f64,
}

/// Logs the clients in, registers their proxies, measures, and closes
/// every client. Fails only if `pid_to_measure` is given and its memory
/// cannot be read at the start; login and proxy errors are counted.
pub fn run(server: SocketAddr, opts: ProxiesOpts) -> io::Result<ProxiesResult> {
    let rss_before_kib = rss_of(opts.pid_to_measure);
    if let (Some(pid), None) = (opts.pid_to_measure, rss_before_kib) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot read VmRSS of process {pid}"),
        ));
    }
    let tag: u32 = rand::random();
    let mut copts = ClientOpts::new(server, &opts.token);
    copts.tls = opts.tls;
    copts.mux = opts.mux;
    copts.timeout = Some(Duration::from_secs(10));
    // Like frpc: without tcpMux, app-level pings keep the session alive.
    copts.heartbeat = (!opts.mux).then_some(Duration::from_secs(30));
    let mut clients = Vec::with_capacity(opts.clients);
    let (mut registered, mut failed, mut logins_failed) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let start = Instant::now();
    for k in 0..opts.clients {
        let c = match Client::login(copts.clone()) {
            Ok(c) => c,
            Err(e) => {
                logins_failed += 1;
                failed += opts.proxies_per_client as u64;
                first_error.get_or_insert_with(|| format!("login {k}: {e}"));
                continue;
            }
        };
        for p in 0..opts.proxies_per_client {
            let name = format!("bench-{tag:08x}-{k}-{p}");
            match c.add_plain_proxy(&name, 0, opts.local) {
                Ok(_) => registered += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("proxy {name}: {e}"));
                }
            }
        }
        clients.push(c);
    }
    let register_s = start.elapsed().as_secs_f64();
    std::thread::sleep(opts.settle);
    let rss_after_kib = rss_of(opts.pid_to_measure);
    for c in &clients {
        c.kill();
    }
    let bytes_per_proxy = bytes_each(rss_before_kib, rss_after_kib, registered);
    Ok(ProxiesResult {
        clients: opts.clients,
        proxies_per_client: opts.proxies_per_client,
        logins_failed,
        registered,
        failed,
        first_error,
        rss_before_kib,
        rss_after_kib,
        bytes_per_proxy,
        register_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::testing::closed_port;

    #[test]
    fn closed_port_fails_every_proxy() {
        let r = run(
            closed_port(),
            ProxiesOpts {
                clients: 3,
                proxies_per_client: 4,
                settle: Duration::ZERO,
                pid_to_measure: Some(std::process::id()),
                ..ProxiesOpts::default()
            },
        )
        .unwrap();
        assert_eq!(
            (r.registered, r.failed, r.logins_failed),
            (0, 12, 3),
            "{r:?}"
        );
        assert!(
            r.first_error
                .as_deref()
                .is_some_and(|e| e.starts_with("login 0:")),
            "{r:?}"
        );
        assert!(r.rss_before_kib.is_some() && r.rss_after_kib.is_some());
        assert_eq!(r.bytes_per_proxy, None, "{r:?}");
    }

    #[test]
    fn unreadable_pid_is_an_error() {
        // Above any pid_max Linux allows (2^22).
        let e = run(
            ([127, 0, 0, 1], 1).into(),
            ProxiesOpts {
                pid_to_measure: Some(u32::MAX),
                ..ProxiesOpts::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
