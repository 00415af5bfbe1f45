//! The edge (seed 004, issue 16): what terminating TLS costs, against
//! Debian's nginx doing the same job, and what the route table and the
//! certificate store cost at size.
//!
//! `cargo bench -p totoro-fastpath --bench edge [-- store|tls]`
//!
//! **store**: 100k edge routes in a policy table (encode, validate as the
//! fastpath maps it, one lookup), and 10k certificates in a store file
//! (load as the fastpath does: parse and key every entry; one SNI lookup;
//! memory).
//!
//! **tls**: the real fastpath binary, governed by a policy directory this
//! bench writes (one route, one certificate), and nginx (`NGINX_BIN`, else
//! /usr/sbin/nginx) with the same certificate and key in front of the same
//! HTTP backend (1 KiB answers), one worker each, systems alternating:
//! keep-alive requests per second over 32 TLS connections, new TLS
//! connections per second (handshake, one request, close), server
//! CPU-seconds for each, and server memory per idle TLS connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::backend::Backend;
use bench::proc::{free_port, wait_listening, Daemon};
use proto::policy::{
    EdgeOrigin, EdgePolicy, EdgeRoute, NodePolicy, PolicySpec, PolicyTable, PortSet, ProxyTypes,
};
use shm::ShmDir;

const HOST: &str = "bench.edge.test";

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

fn spec(edge: EdgePolicy) -> PolicySpec {
    PolicySpec {
        edge,
        mesh: Default::default(),
        generation: 1,
        created_ms: 0,
        node: NodePolicy {
            node_id: "node_bench".into(),
            region: String::new(),
            public: true,
            port_pool: PortSet::parse("20000-20100").unwrap(),
            proxy_types: ProxyTypes::parse("tcp,http,https").unwrap(),
            max_proxies_per_session: 0,
            sub_domain_host: String::new(),
        },
        keys: vec![],
        invites: vec![],
        tenants: vec![],
    }
}

/// A CA and a certificate for `host` it signed: (CA DER, leaf DER, key
/// DER, leaf PEM, key PEM).
fn certificate(host: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (
        ca.der().to_vec(),
        leaf.der().to_vec(),
        key.serialize_der(),
        leaf.pem(),
        key.serialize_pem(),
    )
}

fn store() {
    // 100k routes.
    let routes: Vec<EdgeRoute> = (0..100_000)
        .map(|i| EdgeRoute {
            hostname: format!("h{i}.tenant{}.example.com", i % 997),
            origin: EdgeOrigin::Address(format!("10.{}.{}.1:8080", i % 250, i / 250 % 250)),
            redirect_https: false,
        })
        .collect();
    let t = Instant::now();
    let bytes = spec(EdgePolicy {
        routes: routes.clone(),
        ..Default::default()
    })
    .encode();
    let encode = t.elapsed();
    let t = Instant::now();
    let table = PolicyTable::parse(&bytes).unwrap();
    let parse = t.elapsed();
    let n = 200_000;
    let t = Instant::now();
    let mut found = 0;
    for i in 0..n {
        let r = &routes[(i * 7919) % routes.len()];
        found += table.edge_route(&r.hostname).is_some() as usize;
    }
    let hit = t.elapsed() / n as u32;
    assert_eq!(found, n);
    let t = Instant::now();
    for i in 0..n {
        let _ = table.edge_route(&format!("miss{i}.example.com"));
    }
    let miss = t.elapsed() / n as u32;
    println!("| 100k edge routes | encode {encode:.1?} | validate {parse:.1?} | table {} KiB | lookup hit {hit:?}, miss (with a format!) {miss:?} |", bytes.len() / 1024);

    // 10k certificates.
    let t = Instant::now();
    let key = rcgen::KeyPair::generate().unwrap();
    let certs: Vec<(String, Vec<u8>)> = (0..10_000)
        .map(|i| {
            let host = format!("h{i}.example.com");
            let c = rcgen::CertificateParams::new(vec![host.clone()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (host, c.der().to_vec())
        })
        .collect();
    let made = t.elapsed();
    let key_der = key.serialize_der();
    let entries: Vec<proto::certstore::Entry<'_>> = certs
        .iter()
        .map(|(h, c)| proto::certstore::Entry {
            names: vec![h.as_str()],
            chain: vec![c.as_slice()],
            key: &key_der,
        })
        .collect();
    let file = proto::certstore::encode(&entries);
    let before = rss_kib();
    let t = Instant::now();
    let digest = proto::certstore::digest(&file);
    let (store, skipped, _) = fastpath::edge::CertStore::from_bytes(&file).unwrap();
    let load = t.elapsed();
    let grew = rss_kib().saturating_sub(before);
    assert_eq!((store.len(), skipped), (10_000, 0));
    let _ = digest;
    let t = Instant::now();
    let mut found = 0;
    for i in 0..n {
        found += store.get(&certs[(i * 7919) % certs.len()].0).is_some() as usize;
    }
    let lookup = t.elapsed() / n as u32;
    assert_eq!(found, n);
    println!(
        "| 10k certificates | file {} KiB (made in {made:.1?}) | load (digest, parse, key each) {load:.1?} | RSS +{grew} KiB | SNI lookup {lookup:?} |",
        file.len() / 1024
    );
}

/// Keep-alive requests over `conns` TLS connections for `secs`:
/// requests per second.
fn keepalive(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, conns: usize, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, count, config) = (stop.clone(), count.clone(), config.clone());
            std::thread::spawn(move || {
                let mut tls = connect(addr, &config);
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if request(&mut tls, &mut buf).is_err() {
                        tls = connect(addr, &config);
                        continue;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let start = count.load(Ordering::Relaxed);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let done = count.load(Ordering::Relaxed) - start;
    let rate = done as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    rate
}

/// New TLS connections (handshake, one request, close) from `clients`
/// threads for `secs`: connections per second.
fn newconns(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    clients: usize,
    secs: u64,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, count, config) = (stop.clone(), count.clone(), config.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let mut tls = connect(addr, &config);
                    if request(&mut tls, &mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let rate = count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    rate
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Tls {
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// One GET and its whole 1 KiB answer.
fn request(tls: &mut Tls, buf: &mut [u8]) -> std::io::Result<()> {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: bench.edge.test\r\n\r\n")?;
    let mut got = Vec::with_capacity(1200);
    loop {
        let n = tls.read(buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= end + 4 + 1024 {
                return Ok(());
            }
        }
    }
}

/// Server KiB per idle TLS connection (handshake and one request each).
fn idle_cost(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, pids: &[u32]) -> f64 {
    let rss = || pids.iter().map(|&p| bench::proc::rss_kib(p)).sum::<u64>();
    let mut buf = vec![0u8; 4096];
    // Warm the server's allocator first.
    let warm: Vec<Tls> = (0..100)
        .filter_map(|_| {
            let mut t = connect(addr, config);
            request(&mut t, &mut buf).ok().map(|()| t)
        })
        .collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss();
    let n = 2000;
    // A connection whose request failed (no local port left after the
    // new-connection runs, say) is not counted.
    let held: Vec<Tls> = (0..n)
        .filter_map(|_| {
            let mut t = connect(addr, config);
            request(&mut t, &mut buf).ok().map(|()| t)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss();
    let n = held.len().max(1);
    drop(held);
    (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
}

fn tls() {
    let backend = Backend::http(1024).unwrap();
    let dir = std::env::temp_dir().join(format!("totoro-edge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, leaf, key, leaf_pem, key_pem) = certificate(HOST);

    // The fastpath, governed by a policy directory written here.
    let policy = dir.join("policy");
    let shm = ShmDir::open(&policy).unwrap();
    let instance = shm.instance_key().unwrap();
    let file = proto::certstore::encode(&[proto::certstore::Entry {
        names: vec![HOST],
        chain: vec![&leaf],
        key: &key,
    }]);
    shm.write_replacing(shm::CERTS_FILE, &file).unwrap();
    let mut table = spec(EdgePolicy {
        routes: vec![EdgeRoute {
            hostname: HOST.into(),
            origin: EdgeOrigin::Address(backend.addr().to_string()),
            redirect_https: false,
        }],
        certs: Some((proto::certstore::digest(&file), 1)),
        challenges: vec![],
    })
    .encode();
    instance.seal_table(&mut table);
    shm.write_replacing(shm::TABLE_FILE, &table).unwrap();
    let (bind, fp_port) = (free_port(), free_port());
    let cfg = dir.join("fastpath.toml");
    std::fs::write(
        &cfg,
        format!(
            "bindPort = {bind}\nvhostHTTPSPort = {fp_port}\n[fastpath]\nworkers = 1\npolicyDir = \"{}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    let mut fastpath = Daemon::spawn(
        Path::new(env!("CARGO_BIN_EXE_fastpath")),
        &["-c", cfg.to_str().unwrap()],
    )
    .unwrap();

    // nginx with the same certificate, to the same backend, kept
    // connections upstream as the fastpath keeps them.
    let nginx_bin = std::env::var_os("NGINX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    std::fs::write(dir.join("cert.pem"), &leaf_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let ng_port = free_port();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
               upstream backend {{ server {b}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{ng_port} ssl;\n    server_name {HOST};\n\
                 ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_tickets off;\n    ssl_session_cache off;\n    keepalive_requests 1000000;\n\
                 location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
            d = dir.display(),
            b = backend.addr(),
        ),
    )
    .unwrap();
    let nginx = std::process::Command::new(&nginx_bin)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .spawn();
    let mut nginx = match nginx {
        Ok(n) => n,
        Err(e) => {
            println!("nginx ({}) did not start: {e}", nginx_bin.display());
            return;
        }
    };
    let fp_addr: SocketAddr = format!("127.0.0.1:{fp_port}").parse().unwrap();
    let ng_addr: SocketAddr = format!("127.0.0.1:{ng_port}").parse().unwrap();
    assert!(wait_listening(fp_addr, Duration::from_secs(10)));
    assert!(wait_listening(ng_addr, Duration::from_secs(10)));
    // nginx's worker is the child of its master: both count.
    std::thread::sleep(Duration::from_millis(300));
    let ng_pids: Vec<u32> = std::iter::once(nginx.id())
        .chain(
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", nginx.id(), nginx.id()))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok()),
        )
        .collect();
    let fp_pids = vec![fastpath.pid()];

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // TLS 1.3 with X25519 and AES-128-GCM, no resumption: the same
    // handshake against both.
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let cpu = |pids: &[u32]| {
        pids.iter()
            .map(|&p| bench::proc::cpu_seconds(p))
            .sum::<f64>()
    };
    // One request through each first: a system that cannot answer is
    // reported, not measured at 0.
    for (name, addr) in [("fastpath", fp_addr), ("nginx", ng_addr)] {
        let mut tls = connect(addr, &config);
        let mut buf = vec![0u8; 4096];
        if let Err(e) = request(&mut tls, &mut buf) {
            println!(
                "{name} does not answer: {e}; nginx's log:\n{}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            fastpath.signal(libc::SIGTERM);
            stop_nginx(&mut nginx);
            return;
        }
    }
    println!("| system | round | keep-alive req/s | server CPU-s | req per server CPU-s | new TLS conns/s | server CPU-s | conns per server CPU-s |");
    println!("|---|---|---|---|---|---|---|---|");
    let secs = std::env::var("EDGE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    for round in 1..=3 {
        for (name, addr, pids) in [
            ("fastpath", fp_addr, &fp_pids),
            ("nginx", ng_addr, &ng_pids),
        ] {
            let c0 = cpu(pids);
            let rps = keepalive(addr, &config, 32, secs);
            let c1 = cpu(pids);
            let cps = newconns(addr, &config, 8, secs);
            let c2 = cpu(pids);
            let (ka_cpu, nc_cpu) = (c1 - c0, c2 - c1);
            println!(
                "| {name} | {round} | {rps:.0} | {ka_cpu:.2} | {:.0} | {cps:.0} | {nc_cpu:.2} | {:.0} |",
                rps * (secs as f64 + 0.5) / ka_cpu.max(1e-9),
                cps * secs as f64 / nc_cpu.max(1e-9),
            );
        }
    }
    for (name, addr, pids) in [
        ("fastpath", fp_addr, &fp_pids),
        ("nginx", ng_addr, &ng_pids),
    ] {
        let b = idle_cost(addr, &config, pids);
        println!("| {name} | idle TLS connection: {b:.0} bytes of server RSS each (2000 held) |");
    }
    fastpath.signal(libc::SIGTERM);
    stop_nginx(&mut nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

/// TERM: nginx's master stops its workers before it exits (a killed
/// master would leave them serving).
fn stop_nginx(nginx: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(nginx.id() as i32, libc::SIGTERM);
    }
    let _ = nginx.wait();
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("store") {
        store();
    }
    if run("tls") {
        tls();
    }
}
