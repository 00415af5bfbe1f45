//! Tenants (seed 002) on the data plane: how long a login decision takes
//! with many tenants, and how closely bandwidth limits hold.
//!
//! `cargo bench -p totoro-fastpath --bench tenants [-- login|bandwidth]`
//!
//! **login**: a policy table with 1k / 10k / 100k tenants, loaded the way
//! the fastpath loads it; then `Policy::authorize_tenant` (find the tenant
//! from the privilege key, check region, enabled, quota, count the session)
//! for random tenants, timed one call at a time. Also: the index build and
//! per-second slide, its memory, the fallback scan (a client clock outside
//! the index window), and logins end to end against the real fastpath
//! binary with 100k tenants, beside logins with the node token.
//!
//! **bandwidth**: the real fastpath with one tenant limited to each rate
//! from 100 KB/s to 1 GB/s (frp units: 1 KB = 1024 B); visitors download
//! from a source backend through the tenant's proxy for 10 s. Reported:
//! achieved rate against the limit, and the largest 100 ms window against
//! the rate. Modes: one visitor over spliced TCP work connections; one
//! visitor over stock-frpc-style TLS + yamux; and four visitors spread over
//! two sessions on two workers (one shared budget).

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench::backend::Backend;
use bench::client::{Client, ClientOpts};
use bench::proc::{free_port, wait_listening, Daemon};
use fastpath::policy::Policy;
use proto::msg::Login;
use proto::policy::{NodePolicy, PolicySpec, PortSet, ProxyTypes, TenantPolicy};
use shm::{InstanceDir, ShmDir};

const NODE_TOKEN: &str = "bench-node-token";

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn spec(tenants: Vec<TenantPolicy>, pool: PortSet) -> PolicySpec {
    PolicySpec {
        edge: Default::default(),
        mesh: Default::default(),
        generation: 1,
        created_ms: 0,
        node: NodePolicy {
            node_id: "bench".into(),
            region: "chengdu".into(),
            public: true,
            port_pool: pool,
            proxy_types: ProxyTypes::ALL,
            max_proxies_per_session: 0,
            sub_domain_host: String::new(),
        },
        keys: vec![],
        invites: vec![],
        tenants,
    }
}

fn tenant(token: String, bps: u64) -> TenantPolicy {
    TenantPolicy {
        token,
        region: "chengdu".into(),
        enabled: true,
        allow_ports: PortSet::default(),
        max_ports_per_client: 0,
        bandwidth_bps: bps,
        over_quota: false,
        throttle_bps: 0,
        report_interval_bytes: 0,
    }
}

fn token_of(i: usize) -> String {
    format!(
        "tenant-{i:08}-{:016x}",
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

fn shm_dir(tag: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("totoro-bench-{tag}-{}", std::process::id()));
    ShmDir::open(&d).expect("create policy dir");
    d
}

/// Write `s` as the table in `dir`, sealed with the instance key the
/// fastpath will read there.
fn publish(dir: &Path, s: &PolicySpec) {
    let shm = ShmDir::open(dir).expect("policy dir");
    let mut bytes = s.encode();
    shm.instance_key()
        .expect("instance key")
        .seal_table(&mut bytes);
    shm.write_replacing(shm::TABLE_FILE, &bytes)
        .expect("write table");
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn login_for(token: &str, ts: i64) -> Login {
    Login {
        version: "0.61.1".into(),
        timestamp: ts,
        privilege_key: proto::auth::privilege_key(token, ts),
        ..Default::default()
    }
}

fn bench_login() {
    println!("## Login decision with N tenants\n");
    println!("`Policy::authorize_tenant` per call (find by privilege key, region, enabled, quota, session count), 20 000 random tenants each; ns.\n");
    println!("| tenants | table | index build | slide 1 s | index RSS | decision p50 | p99 | p99.9 | max | fallback scan (clock off) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [1_000usize, 10_000, 100_000] {
        let dir = shm_dir(&format!("login{n}"));
        let s = spec(
            (0..n).map(|i| tenant(token_of(i), 0)).collect(),
            PortSet::all(),
        );
        publish(&dir, &s);
        let size = std::fs::metadata(dir.join("policy.tbl")).map_or(0, |m| m.len());
        let shm = ShmDir::open(&dir).expect("policy dir");
        let key = shm.instance_key().expect("instance key");
        let policy = Policy::new(Some(InstanceDir { dir: shm, key }));
        policy.try_load().expect("table loads");
        let loaded = policy.current().expect("table in force");
        let now = now_s();
        let rss0 = rss_kib();
        let t = Instant::now();
        policy.finder.refresh(Some(&loaded.get()), now);
        let build = t.elapsed();
        let rss1 = rss_kib();
        let t = Instant::now();
        policy.finder.refresh(Some(&loaded.get()), now + 1);
        let slide = t.elapsed();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut lat = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n as u64) as usize;
            let login = login_for(&token_of(i), now + 1);
            let t = Instant::now();
            let r = policy.authorize_tenant(&login);
            let ns = t.elapsed().as_nanos() as u64;
            let (g, _) = r.expect("admitted").expect("found");
            policy.release_session(g);
            lat.push(ns);
        }
        lat.sort_unstable();
        // The fallback: a timestamp an hour off, outside the index window.
        let login = login_for(&token_of(n - 1), now - 3600);
        let t = Instant::now();
        let r = policy.authorize_tenant(&login);
        let scan = t.elapsed();
        assert!(matches!(r, Ok(Some(_))), "scan finds the tenant");
        println!(
            "| {n} | {:.1} MiB | {:.1} ms | {:.1} ms | {:.1} MiB | {} | {} | {} | {} | {:.2} ms |",
            size as f64 / (1 << 20) as f64,
            build.as_secs_f64() * 1e3,
            slide.as_secs_f64() * 1e3,
            (rss1.saturating_sub(rss0)) as f64 / 1024.0,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            lat.last().copied().unwrap_or(0),
            scan.as_secs_f64() * 1e3,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!();
    login_end_to_end(100_000);
}

struct Server {
    // Killed on drop.
    _daemon: Daemon,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_fastpath(dir: &Path, workers: usize) -> Server {
    let port = free_port();
    let cfg = dir.join("fastpath.toml");
    std::fs::write(
        &cfg,
        format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nauth.token = \"{NODE_TOKEN}\"\nlog.level = \"warn\"\nfastpath.workers = {workers}\nfastpath.policyDir = \"{}\"\n",
            dir.display()
        ),
    )
    .expect("write config");
    let daemon = Daemon::spawn(
        Path::new(env!("CARGO_BIN_EXE_fastpath")),
        &["-c", cfg.to_str().unwrap_or("")],
    )
    .expect("start fastpath");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(
        wait_listening(addr, Duration::from_secs(10)),
        "fastpath did not start"
    );
    Server {
        _daemon: daemon,
        addr,
        dir: dir.to_path_buf(),
    }
}

fn plain_opts(addr: std::net::SocketAddr, token: &str) -> ClientOpts {
    let mut o = ClientOpts::new(addr, token);
    o.tls = false;
    o.mux = false;
    o.pool_count = 0;
    o
}

fn login_end_to_end(n: usize) {
    let dir = shm_dir("login-e2e");
    let s = spec(
        (0..n).map(|i| tenant(token_of(i), 0)).collect(),
        PortSet::all(),
    );
    publish(&dir, &s);
    let server = start_fastpath(&dir, 2);
    // Let the index catch up with the table.
    std::thread::sleep(Duration::from_millis(1500));
    println!("End to end against the real fastpath ({n} tenants, 2 workers): 300 sequential logins each (plain TCP, Login → LoginResp), µs.\n");
    println!("| login with | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    for (label, tenant_login) in [("node token", false), ("random tenant token", true)] {
        let mut lat = Vec::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let token = if tenant_login {
                token_of((x % n as u64) as usize)
            } else {
                NODE_TOKEN.to_string()
            };
            let t = Instant::now();
            let c = Client::login(plain_opts(server.addr, &token)).expect("login");
            lat.push(t.elapsed().as_micros() as u64);
            c.kill();
        }
        lat.sort_unstable();
        println!(
            "| {label} | {} | {} | {} |",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0)
        );
    }
    println!();
    drop(server);
}

/// Read from `port` for `secs`, returning bytes per 100 ms window.
fn download(port: u16, secs: u64) -> Vec<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let start = Instant::now();
    let mut windows = vec![0u64; (secs * 10) as usize];
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let at = start.elapsed();
        if at >= Duration::from_secs(secs) {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let w = (start.elapsed().as_millis() / 100) as usize;
                if let Some(slot) = windows.get_mut(w) {
                    *slot += n as u64;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("download failed: {e}"),
        }
    }
    windows
}

fn bench_bandwidth() {
    const SECS: u64 = 10;
    let rates: [(&str, u64); 5] = [
        ("100 KB/s", 100 * 1024),
        ("1 MB/s", 1 << 20),
        ("10 MB/s", 10 << 20),
        ("100 MB/s", 100 << 20),
        ("1 GB/s", 1 << 30),
    ];
    println!("## Tenant bandwidth accuracy ({SECS} s per row)\n");
    println!("Achieved = bytes the visitors received / {SECS} s. Burst = the largest 100 ms window / (limit × 0.1 s). Unlimited = the same path with no limit, for scale.\n");
    println!("| limit | mode | achieved | error | burst | unlimited on this path |");
    println!("|---|---|---:|---:|---:|---:|");
    let source = Backend::source().expect("source backend");
    for (mode, plain, sessions, visitors) in [
        ("1 visitor, spliced TCP", true, 1usize, 1usize),
        ("1 visitor, TLS + yamux", false, 1, 1),
        ("4 visitors, 2 sessions, 2 workers", true, 2, 2),
    ] {
        let mut unlimited = None;
        for (label, bps) in std::iter::once(("unlimited", 0u64)).chain(rates) {
            let dir = shm_dir("bw");
            let pool_lo = 30000 + (free_port() % 20000);
            let s = spec(
                vec![tenant("bw-tenant".into(), bps)],
                PortSet::from_ranges(vec![(pool_lo, pool_lo + 50)]),
            );
            publish(&dir, &s);
            let server = start_fastpath(&dir, 2);
            std::thread::sleep(Duration::from_millis(300));
            let mut clients = Vec::new();
            let mut ports = Vec::new();
            for k in 0..sessions {
                let mut o = ClientOpts::new(server.addr, "bw-tenant");
                if plain {
                    o.tls = false;
                    o.mux = false;
                }
                let c = Client::login(o).expect("tenant login");
                let port = c
                    .add_plain_proxy(&format!("bw{k}"), 0, source.addr())
                    .expect("proxy");
                clients.push(c);
                ports.push(port);
            }
            let handles: Vec<_> = ports
                .iter()
                .flat_map(|&p| (0..visitors).map(move |_| p))
                .map(|p| std::thread::spawn(move || download(p, SECS)))
                .collect();
            let mut windows = vec![0u64; (SECS * 10) as usize];
            for h in handles {
                for (i, w) in h.join().expect("download thread").into_iter().enumerate() {
                    windows[i] += w;
                }
            }
            let total: u64 = windows.iter().sum();
            let achieved = total as f64 / SECS as f64;
            for c in &clients {
                c.kill();
            }
            drop(server);
            let _ = std::fs::remove_dir_all(&dir);
            if bps == 0 {
                unlimited = Some(achieved);
                continue;
            }
            let max_w = windows.iter().copied().max().unwrap_or(0) as f64;
            println!(
                "| {label} | {mode} | {} | {:+.1}% | {:.2}× | {} |",
                human(achieved),
                (achieved / bps as f64 - 1.0) * 100.0,
                max_w / (bps as f64 * 0.1),
                human(unlimited.unwrap_or(0.0)),
            );
        }
    }
    println!();
}

fn human(bps: f64) -> String {
    if bps >= (1u64 << 30) as f64 {
        format!("{:.3} GB/s", bps / (1u64 << 30) as f64)
    } else if bps >= (1 << 20) as f64 {
        format!("{:.2} MB/s", bps / (1 << 20) as f64)
    } else {
        format!("{:.1} KB/s", bps / 1024.0)
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = which.is_empty();
    println!(
        "<!-- cargo bench -p totoro-fastpath --bench tenants; {} -->\n",
        std::env::var("BENCH_NOTE").unwrap_or_default()
    );
    if all || which.iter().any(|w| w == "login") {
        bench_login();
    }
    if all || which.iter().any(|w| w == "bandwidth") {
        bench_bandwidth();
    }
}
