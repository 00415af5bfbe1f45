//! `totoro-bench mesh`: seed 003's mesh measured on this machine, side by
//! side with its anchors, in network namespaces (root): two machines `a`
//! and `b`, each joined to the root namespace by a veth pair.
//!
//! - **veth**: TCP from `a` to the root namespace over its veth, no tunnel
//!   (the limit);
//! - **mesh**: `slowpath up` in the root namespace (controller and built-in
//!   relay), `totoro-mesh up` in `a` and `b`; TCP between their virtual
//!   IPs, every packet sealed by `a`, relayed, opened by `b`;
//! - **mesh, two relays**: a standalone `slowpath relay` in the root
//!   namespace too, `c` on it (`a` and `b` on the built-in relay); TCP
//!   from `a` to `c` crosses the relay-to-relay link (`/ws/mesh`);
//! - **boringtun** (when `--boringtun` names `boringtun-cli` and `wg` is
//!   installed): a direct userspace WireGuard tunnel between `a` and `b`,
//!   no relay, the root namespace forwarding between the veths.
//!
//! For each: TCP throughput with 1 and 8 streams, the CPU seconds per GB
//! of the processes that carry it (the relay; each node; each boringtun),
//! ICMP RTT, and for the mesh the relay's frames per second at 64-byte and
//! 1400-byte packets (UDP from `a` to `b`, counted as they arrive).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{in_ns, pid_with, Lab};
use crate::proc::{cpu_seconds, free_port, Daemon};

/// What to run.
#[derive(Debug, Clone)]
pub struct MeshOpts {
    /// The `slowpath` binary.
    pub slowpath: PathBuf,
    /// The `totoro-mesh` binary.
    pub mesh: PathBuf,
    /// `boringtun-cli`, for the WireGuard anchor.
    pub boringtun: Option<PathBuf>,
    /// Bytes per throughput measurement.
    pub bytes: u64,
    /// Seconds per frame-rate measurement.
    pub seconds: u64,
}

/// One row of the results.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// Gbit/s.
    pub gbps: f64,
    /// CPU seconds per GB moved, by process.
    pub cpu_per_gb: Vec<(String, f64)>,
}

/// TCP from `src` (a namespace; None: the root one) to `dst_ip:port` in
/// `dst`, `bytes` split over `streams` connections; seconds taken.
fn tcp(src: Option<String>, dst: Option<String>, ip: Ipv4Addr, streams: usize, bytes: u64) -> f64 {
    let port = 5201;
    let addr = SocketAddr::from((ip, port));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = move || {
        let l = TcpListener::bind(addr).expect("sink bind");
        ready_tx.send(()).unwrap();
        let mut readers = Vec::new();
        for _ in 0..streams {
            let (mut c, _) = l.accept().unwrap();
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0u64;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return n,
                        Ok(k) => n += k as u64,
                    }
                }
            }));
        }
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    };
    let sink = match dst {
        Some(ns) => in_ns(&ns, sink),
        None => std::thread::spawn(sink),
    };
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("sink ready");
    let per = bytes / streams as u64;
    let started = Instant::now();
    let source = move || {
        let writers: Vec<_> = (0..streams)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                    let chunk = vec![0x5Au8; 256 * 1024];
                    let mut left = per;
                    while left > 0 {
                        let k = left.min(chunk.len() as u64) as usize;
                        c.write_all(&chunk[..k]).unwrap();
                        left -= k as u64;
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
    };
    match src {
        Some(ns) => in_ns(&ns, source).join().unwrap(),
        None => std::thread::spawn(source).join().unwrap(),
    }
    let got = sink.join().unwrap();
    assert_eq!(got, per * streams as u64, "all bytes arrived");
    started.elapsed().as_secs_f64()
}

/// UDP packets of `size` bytes (IP) from `src` to `ip` in `dst` for
/// `secs`; packets per second that arrived.
fn udp_rate(src: String, dst: String, ip: Ipv4Addr, size: usize, secs: u64) -> f64 {
    let addr = SocketAddr::from((ip, 5202));
    let payload = size.saturating_sub(28).max(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = in_ns(&dst, move || {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 2048];
        let (mut n, mut first, mut last) = (0u64, None, Instant::now());
        while let Ok(_k) = s.recv(&mut buf) {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            n += 1;
        }
        let span = first.map_or(1.0, |f: Instant| (last - f).as_secs_f64().max(1e-3));
        n as f64 / span
    });
    ready_rx.recv().unwrap();
    in_ns(&src, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let buf = vec![0x33u8; payload];
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            for _ in 0..64 {
                let _ = s.send_to(&buf, addr);
            }
        }
    })
    .join()
    .unwrap();
    sink.join().unwrap()
}

/// Median RTT in ms of `totoro-mesh ping` from `ns` to `ip`.
fn rtt(lab: &Lab, mesh: &Path, ns: &str, ip: &str) -> Option<f64> {
    let out = lab.exec(ns, mesh, &["ping", ip, "--count", "20"]);
    let mut times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").parse().ok())
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times.get(times.len() / 2).copied()
}

fn cpu(pids: &[(String, u32)]) -> Vec<(String, f64)> {
    pids.iter()
        .map(|(n, p)| (n.clone(), cpu_seconds(*p)))
        .collect()
}

fn measure(what: &str, pids: &[(String, u32)], bytes: u64, run: impl FnOnce() -> f64) -> Row {
    let before = cpu(pids);
    let secs = run();
    let after = cpu(pids);
    let gb = bytes as f64 / 1e9;
    Row {
        what: what.into(),
        gbps: bytes as f64 * 8.0 / secs / 1e9,
        cpu_per_gb: before
            .iter()
            .zip(after)
            .map(|((n, b), (_, a))| (n.clone(), (a - b) / gb))
            .collect(),
    }
}

fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory of the bench's own (0700: it holds the control plane's data
/// and WireGuard keys).
fn owner_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// A new file holding a secret: 0600, never through a symlink.
fn owner_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn status(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).ok()?).ok()
}

/// Run everything; the results as a markdown table.
pub fn run(o: &MeshOpts) -> Result<String, String> {
    if let Some(why) = crate::netns::missing() {
        return Err(format!("the mesh bench needs namespaces: {why}"));
    }
    let mut lab = Lab::new('m', 203, &["a", "b", "c"]);
    let dir = std::env::temp_dir().join(format!("totoro-mesh-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    owner_dir(&dir)?;
    let (api, relay, frp) = (free_port(), free_port(), free_port());
    let data = dir.join("sp");
    let listen = format!("0.0.0.0:{api}");
    let (relay_s, frp_s) = (relay.to_string(), frp.to_string());
    let shm = dir.join("shm");
    let args = [
        "up",
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--shm-dir",
        shm.to_str().unwrap_or_default(),
        "--listen",
        &listen,
        "--public-addr",
        "10.203.1.1",
        "--mesh-relay-port",
        &relay_s,
        "--frp-port",
        &frp_s,
    ];
    let mut sp = Daemon::spawn_logging(&o.slowpath, &args, "warn").map_err(|e| e.to_string())?;
    wait("the controller", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", relay)).ok()
    })?;
    let controller = format!("http://10.203.1.1:{api}");
    let api_url = format!("http://127.0.0.1:{api}");
    let cli = |args: &[&str]| -> Option<serde_json::Value> {
        let out = Command::new(&o.slowpath)
            .args(args)
            .args(["--api", &api_url, "--data-dir", data.to_str()?])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    // The second relay: a server record, then `slowpath relay` with its
    // token (the built-in relay, with the lower id, dials it).
    let relay2 = free_port();
    let url2 = format!("ws://10.203.1.1:{relay2}/ws/data");
    let added = wait("the second relay's record", Duration::from_secs(20), || {
        cli(&["mesh", "server", "add", "--name", "relay-2", "--url", &url2])
    })?;
    let token = added["token"].as_str().ok_or("no server token")?.to_owned();
    let r2 = added["server"]["id"].as_u64().ok_or("no server id")?;
    let r1 = cli(&["mesh", "server", "list"])
        .and_then(|v| {
            v.as_array()?
                .iter()
                .filter_map(|s| s["id"].as_u64())
                .find(|&id| id != r2)
        })
        .ok_or("no built-in relay")?;
    let data2 = dir.join("relay-2");
    owner_dir(&data2)?;
    let relay_args = [
        "relay",
        "--controller",
        &format!("ws://127.0.0.1:{api}"),
        "--token",
        &token,
        "--port",
        &relay2.to_string(),
        "--frp-port",
        &free_port().to_string(),
        "--data-dir",
        data2.to_str().unwrap_or_default(),
    ];
    let mut relay2d =
        Daemon::spawn_logging(&o.slowpath, &relay_args, "warn").map_err(|e| e.to_string())?;
    wait("the second relay", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", relay2)).ok()
    })?;
    for (n, relay) in [("a", r1), ("b", r1), ("c", r2)] {
        let state = dir.join(n);
        let log = std::fs::File::create(dir.join(format!("{n}.log"))).map_err(|e| e.to_string())?;
        let st = state.to_str().unwrap_or_default().to_owned();
        lab.spawn(
            n,
            &o.mesh,
            &[
                "up",
                "--controller",
                &controller,
                "--hostname",
                n,
                "--state-dir",
                &st,
                "--relay",
                &relay.to_string(),
            ],
            log,
        );
    }
    let ids: Vec<u64> = wait("three nodes", Duration::from_secs(20), || {
        let v = cli(&["mesh", "node", "list"])?;
        let l = v.as_array()?;
        (l.len() == 3).then(|| l.iter().filter_map(|n| n["id"].as_u64()).collect())
    })?;
    for id in &ids {
        cli(&["mesh", "node", "authorize", &id.to_string()]);
    }
    let ips: Vec<Ipv4Addr> = [("a", r1), ("b", r1), ("c", r2)]
        .iter()
        .map(|(n, relay)| {
            wait("a node on its relay", Duration::from_secs(30), || {
                let v = status(&dir.join(n))?;
                (v["relay"].as_u64()? == *relay).then_some(())?;
                v["virtual_ip"].as_str()?.parse().ok()
            })
        })
        .collect::<Result<_, _>>()?;
    let relay_pid = pid_with(&format!("{}/fastpath.toml", data.display())).ok_or("no fastpath")?;
    let relay2_pid =
        pid_with(&format!("{}/fastpath.toml", data2.display())).ok_or("no second fastpath")?;
    let node_pid = |n: &str| pid_with(&dir.join(n).display().to_string());
    let pids = vec![
        ("relay".to_string(), relay_pid),
        ("node a".to_string(), node_pid("a").ok_or("no node a")?),
        ("node b".to_string(), node_pid("b").ok_or("no node b")?),
    ];
    let pids2 = vec![
        ("relay 1".to_string(), relay_pid),
        ("relay 2".to_string(), relay2_pid),
        ("node a".to_string(), pids[1].1),
        ("node c".to_string(), node_pid("c").ok_or("no node c")?),
    ];
    // The link is up once a reaches c.
    wait(
        "a to reach c across the relays",
        Duration::from_secs(30),
        || rtt(&lab, &o.mesh, "a", &ips[2].to_string()),
    )?;
    let nc = lab.ns("c");
    let (na, nb) = (lab.ns("a"), lab.ns("b"));
    let mut rows = Vec::new();
    for streams in [1usize, 8] {
        let a = na.clone();
        rows.push(measure(
            &format!("veth, no tunnel, {streams} stream(s)"),
            &[],
            o.bytes,
            || {
                tcp(
                    Some(a),
                    None,
                    Ipv4Addr::new(10, 203, 1, 1),
                    streams,
                    o.bytes,
                )
            },
        ));
        let (a, b) = (na.clone(), nb.clone());
        rows.push(measure(
            &format!("mesh through one relay, {streams} stream(s)"),
            &pids,
            o.bytes,
            || tcp(Some(a), Some(b), ips[1], streams, o.bytes),
        ));
        let (a, c) = (na.clone(), nc.clone());
        rows.push(measure(
            &format!("mesh through two relays, {streams} stream(s)"),
            &pids2,
            o.bytes,
            || tcp(Some(a), Some(c), ips[2], streams, o.bytes),
        ));
    }
    let mut extra = Vec::new();
    let veth_rtt = rtt(&lab, &o.mesh, "a", "10.203.1.1");
    let mesh_rtt = rtt(&lab, &o.mesh, "a", &ips[1].to_string());
    let mesh2_rtt = rtt(&lab, &o.mesh, "a", &ips[2].to_string());
    extra.push(format!(
        "ICMP RTT, median of 20: veth {:.3} ms, mesh through one relay {:.3} ms, through two relays {:.3} ms",
        veth_rtt.unwrap_or(f64::NAN),
        mesh_rtt.unwrap_or(f64::NAN),
        mesh2_rtt.unwrap_or(f64::NAN)
    ));
    for size in [64usize, 1400] {
        let before = cpu_seconds(relay_pid);
        let t = Instant::now();
        let rate = udp_rate(na.clone(), nb.clone(), ips[1], size, o.seconds);
        let cpu = cpu_seconds(relay_pid) - before;
        extra.push(format!(
            "relay frames/s at {size}-byte packets: {rate:.0} delivered (relay CPU {:.2} s over {:.1} s)",
            cpu,
            t.elapsed().as_secs_f64()
        ));
        let before = (cpu_seconds(relay_pid), cpu_seconds(relay2_pid));
        let t = Instant::now();
        let rate = udp_rate(na.clone(), nc.clone(), ips[2], size, o.seconds);
        let cpu = (
            cpu_seconds(relay_pid) - before.0,
            cpu_seconds(relay2_pid) - before.1,
        );
        extra.push(format!(
            "two relays, frames/s at {size}-byte packets: {rate:.0} delivered (relay CPU {:.2} s and {:.2} s over {:.1} s)",
            cpu.0,
            cpu.1,
            t.elapsed().as_secs_f64()
        ));
    }
    if let Some(bt) = &o.boringtun {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            boringtun(&lab, bt, &o.mesh, o.bytes)
        }))
        .unwrap_or_else(|_| Err("it failed (see the panic above)".into()));
        match run {
            Ok(mut r) => {
                rows.append(&mut r.0);
                extra.push(r.1);
            }
            Err(e) => extra.push(format!("boringtun anchor not run: {e}")),
        }
    }
    // How frames crossed workers on each relay: a link lives on the worker
    // of the other relay's id, a network's nodes on the worker of the
    // network's id; where they differ, frames cross in batches.
    for (name, d) in [("relay 1", &data), ("relay 2", &data2)] {
        let Some(v) = std::fs::read_to_string(d.join("fastpath-stats.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        else {
            continue;
        };
        let (crossings, link_in, link_out) = (
            sum_key(&v, "mesh_crossings"),
            sum_key(&v, "mesh_link_frames_in"),
            sum_key(&v, "mesh_link_frames_out"),
        );
        extra.push(format!(
            "{name}: {link_out} DATA frames onto the link, {link_in} off it, {crossings} batches handed between workers ({:.1} frames per batch)",
            (link_in + link_out) as f64 / crossings.max(1) as f64
        ));
    }
    let mut md = String::from("| path | Gbit/s | CPU-s per GB |\n|---|---:|---|\n");
    for r in &rows {
        let cpu: Vec<String> = r
            .cpu_per_gb
            .iter()
            .map(|(n, c)| format!("{n} {c:.2}"))
            .collect();
        md.push_str(&format!(
            "| {} | {:.2} | {} |\n",
            r.what,
            r.gbps,
            cpu.join(", ")
        ));
    }
    md.push('\n');
    for e in extra {
        md.push_str(&format!("- {e}\n"));
    }
    // Stopped with SIGTERM, each stops its fastpath.
    for d in [&mut sp, &mut relay2d] {
        d.signal(15);
        d.wait_exit(Duration::from_secs(10));
    }
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(md)
}

/// The sum of every number under `key`, anywhere in `v`.
fn sum_key(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == key {
                    x.as_u64().unwrap_or(0)
                } else {
                    sum_key(x, key)
                }
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(|x| sum_key(x, key)).sum(),
        _ => 0,
    }
}

/// The WireGuard anchor: boringtun in `a` and `b`, configured with `wg`,
/// direct between their veth addresses (the root namespace forwards).
fn boringtun(
    lab: &Lab,
    bin: &Path,
    o_mesh: &Path,
    bytes: u64,
) -> Result<(Vec<Row>, String), String> {
    let wg = |args: &[&str], input: Option<&str>| -> Result<String, String> {
        let mut c = Command::new("wg")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("wg: {e}"))?;
        if let (Some(i), Some(mut s)) = (input, c.stdin.take()) {
            let _ = s.write_all(i.as_bytes());
        }
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let k = wg(&["genkey"], None)?;
            let p = wg(&["pubkey"], Some(&k))?;
            Ok((k, p))
        })
        .collect::<Result<_, String>>()?;
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("totoro-bt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    owner_dir(&dir)?;
    let mut children = Vec::new();
    let names = ["a", "b"];
    for (i, n) in names.iter().enumerate() {
        let dev = format!("wg{n}");
        // A socket left by an earlier run would look like this one's.
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(n)])
            .arg(bin)
            .args(["--foreground", "--disable-drop-privileges", &dev])
            .env("WG_SUDO", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        children.push(child);
        wait("the boringtun socket", Duration::from_secs(10), || {
            Path::new(&format!("/var/run/wireguard/{dev}.sock"))
                .exists()
                .then_some(())
        })?;
        let key = dir.join(format!("{n}.key"));
        owner_file(&key, keys[i].0.as_bytes())?;
        let other = 1 - i;
        let endpoint = format!("10.203.{}.2:51820", other + 1);
        let allowed = format!("10.99.0.{}/32", other + 1);
        lab.inside(
            n,
            &[
                "wg",
                "set",
                &dev,
                "private-key",
                key.to_str().unwrap_or_default(),
                "listen-port",
                "51820",
                "peer",
                &keys[other].1,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        );
        lab.inside(
            n,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                &dev,
            ],
        );
        lab.inside(n, &["ip", "link", "set", &dev, "up"]);
    }
    // The tunnel is up once a packet crosses it (the handshake).
    wait("the WireGuard handshake", Duration::from_secs(10), || {
        let out = lab.exec("a", o_mesh, &["ping", "10.99.0.2", "--count", "1"]);
        out.status.success().then_some(())
    })?;
    let pids: Vec<(String, u32)> = children
        .iter()
        .zip(names)
        .filter_map(|(c, n)| {
            pid_with(&format!("wg{n}"))
                .or(Some(c.id()))
                .map(|p| (format!("boringtun {n}"), p))
        })
        .collect();
    let mut rows = Vec::new();
    for streams in [1usize, 8] {
        let (a, b) = (lab.ns("a"), lab.ns("b"));
        rows.push(measure(
            &format!("boringtun direct, {streams} stream(s)"),
            &pids,
            bytes,
            || {
                tcp(
                    Some(a),
                    Some(b),
                    Ipv4Addr::new(10, 99, 0, 2),
                    streams,
                    bytes,
                )
            },
        ));
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", forward.trim());
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rows, format!("boringtun: {}", bin.display())))
}
