//! The mesh end to end on real TUN devices, in network namespaces this
//! test makes (root, `/dev/net/tun` and iproute2's `ip`; without them the
//! test says it is skipped, and under CI it fails): `slowpath up` (the
//! controller and the built-in relay) in the root namespace, one
//! `totoro-mesh up` in each of two namespaces reaching it over veth pairs.
//! Once authorized, the nodes ping each other's virtual IP and move 64 MiB
//! over TCP with the same SHA-256 at both ends, while a packet capture on
//! the relay's side of a veth sees the traffic but never the payload's
//! plaintext. A deauthorized node is no longer reached.

mod harness;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::netns::{in_ns, missing, Lab};
use harness::{each_backend, Backend, Slowpath};
use serde_json::Value;

/// The `totoro-mesh` binary, built beside this test's `slowpath`.
fn mesh_bin() -> PathBuf {
    let slowpath = PathBuf::from(env!("CARGO_BIN_EXE_slowpath"));
    let bin = slowpath.with_file_name("totoro-mesh");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// `totoro-mesh up` in machine `n` of `lab`, against `controller`.
fn node(lab: &mut Lab, n: &str, controller: &str, state: &Path, flags: &[&str]) {
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    let mut args = vec![
        "up",
        "--controller",
        controller,
        "--hostname",
        n,
        "--state-dir",
    ];
    let state = state.to_str().unwrap();
    args.push(state);
    args.extend_from_slice(flags);
    lab.spawn(n, &mesh_bin(), &args, log);
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(state: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(state.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Captures what crosses interface `dev` (AF_PACKET) until told to stop;
/// returns the bytes seen and whether `needle` was among them.
fn capture(
    dev: &str,
    needle: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, bool)> {
    let dev = std::ffi::CString::new(dev).unwrap();
    std::thread::spawn(move || {
        // SAFETY: plain integer arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: `dev` is a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are
        // all it needs.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll for the call.
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET");
        mesh::icmp::set_recv_timeout(fd, Duration::from_millis(100));
        // A large buffer: a capture that falls behind drops frames.
        let size: libc::c_int = 64 << 20;
        // SAFETY: `size` is valid for the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let (mut seen, mut found) = (0usize, false);
        let mut buf = vec![0u8; 70_000];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n > 0 {
                let frame = &buf[..n as usize];
                seen += frame.len();
                found |= frame.windows(needle.len()).any(|w| w == needle.as_slice());
            }
        }
        // SAFETY: ours, closed once.
        unsafe { libc::close(fd) };
        (seen, found)
    })
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn tun_case(backend: Backend) {
    let mut lab = Lab::new('t', 201, &["a", "b"]);
    let port = bench::proc::free_port();
    let listen = format!("0.0.0.0:{port}");
    let sp = Slowpath::up(
        &backend,
        &["--listen", &listen, "--public-addr", "10.201.1.1"],
    );
    sp.wait_frp();
    let controller = format!("http://10.201.1.1:{port}");
    let states: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| sp.dir.join(format!("node-{n}")))
        .collect();
    // Node keys are replaced every 3.6 s here (24 h by default).
    let rotate = ["--key-rotation-hours", "0.001"];
    node(&mut lab, "a", &controller, &states[0], &rotate);
    node(&mut lab, "b", &controller, &states[1], &rotate);

    // Both register and wait; the operator authorizes them.
    let ids: Vec<u64> = wait_until("both nodes to register", Duration::from_secs(20), || {
        let (_, v) = sp.admin_call("GET", "/api/v1/mesh/nodes", None);
        let list = v.as_array()?.clone();
        (list.len() == 2).then(|| list.iter().map(|n| n["id"].as_u64().unwrap()).collect())
    });
    for id in &ids {
        let (st, v) = sp.admin_call("POST", &format!("/api/v1/mesh/nodes/{id}/authorize"), None);
        assert_eq!(st, 200, "{v}");
    }
    let ips: Vec<Ipv4Addr> = states
        .iter()
        .map(|s| {
            wait_until(
                "a node on its relay with its address",
                Duration::from_secs(20),
                || {
                    let v = status(s)?;
                    let ip = v["virtual_ip"].as_str()?.parse().ok()?;
                    v["relay"].as_u64().map(|_| ip)
                },
            )
        })
        .collect();
    let (ip_a, ip_b) = (ips[0], ips[1]);

    // ping, with totoro-mesh's own ICMP echo, both ways.
    for (ns, ip) in [("a", ip_b), ("b", ip_a)] {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns(ns)])
            .arg(mesh_bin())
            .args(["ping", &ip.to_string(), "--count", "3"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("reply from"),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // 64 MiB over TCP from a to b, while the relay's side of a's veth is
    // captured: the marker in every block never shows.
    let marker = b"TOTORO-MESH-PLAINTEXT-MARKER-0123456789".to_vec();
    let mut payload = Vec::with_capacity(64 << 20);
    let mut i = 0u64;
    while payload.len() < 64 << 20 {
        payload.extend_from_slice(&marker);
        payload.extend_from_slice(&i.to_le_bytes());
        i += 1;
    }
    payload.truncate(64 << 20);
    let want = sha256(&payload);
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(&format!("{}a", lab.tag), marker.clone(), Arc::clone(&stop));
    let sink_addr = SocketAddr::from((ip_b, 5001));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = in_ns(&lab.ns("b"), move || {
        let l = TcpListener::bind(sink_addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::with_capacity(64 << 20);
        c.read_to_end(&mut got).unwrap();
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let source = in_ns(&lab.ns("a"), move || {
        let mut c = TcpStream::connect_timeout(&sink_addr, Duration::from_secs(5)).unwrap();
        c.write_all(&payload).unwrap();
    });
    source.join().unwrap();
    let got = sink.join().unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (seen, found) = cap.join().unwrap();
    assert_eq!(got.len(), 64 << 20);
    assert_eq!(sha256(&got), want, "64 MiB arrived changed");
    // The capture may drop frames under load; most of the transfer is
    // enough to say it worked.
    assert!(
        seen > 32 << 20,
        "the capture saw the transfer ({seen} bytes)"
    );
    assert!(!found, "the relay's wire carried plaintext");
    eprintln!(
        "[mesh_tun] 64 MiB a -> b through the relay in {:.2} s ({:.0} Mbit/s)",
        took.as_secs_f64(),
        (64u64 << 23) as f64 / took.as_secs_f64() / 1e6
    );

    // A packet for an address of the mesh that no node holds goes nowhere
    // and is counted.
    let no_route = |s: &Path| status(s).and_then(|v| v["counters"]["no_route"].as_u64());
    let before = no_route(&states[0]).unwrap_or(0);
    assert!(
        !ping(&lab, "a", "10.0.1.250", 1),
        "nobody answers for 10.0.1.250"
    );
    wait_until("the drop to be counted", Duration::from_secs(3), || {
        (no_route(&states[0])? > before).then_some(())
    });

    // Both replace their node keys (the controller hands the new ones to
    // the peer) and still reach each other.
    let (_, before) = sp.admin_call("GET", &format!("/api/v1/mesh/nodes/{}", ids[1]), None);
    wait_until(
        "two key rotations on each node",
        Duration::from_secs(15),
        || {
            states
                .iter()
                .all(|s| {
                    status(s).is_some_and(|v| v["counters"]["key_rotations"].as_u64() >= Some(2))
                })
                .then_some(())
        },
    );
    let (_, after) = sp.admin_call("GET", &format!("/api/v1/mesh/nodes/{}", ids[1]), None);
    assert_ne!(
        before["node_key_pub"], after["node_key_pub"],
        "b's key was replaced"
    );
    for (ns, ip) in [("a", ip_b), ("b", ip_a)] {
        assert!(
            ping(&lab, ns, &ip.to_string(), 3),
            "{ns} reaches {ip} after the keys changed"
        );
    }

    // b deauthorized: a reaches it no more.
    let (st, _) = sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{}/deauthorize", ids[1]),
        None,
    );
    assert_eq!(st, 200);
    wait_until("b to be unreachable", Duration::from_secs(5), || {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns("a")])
            .arg(mesh_bin())
            .args(["ping", &ip_b.to_string(), "--count", "1"])
            .output()
            .unwrap();
        (!out.status.success()).then_some(())
    });
}

#[test]
fn two_nodes_on_tun_devices_reach_each_other_through_the_relay() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the TUN test: {why}"
        );
        eprintln!("[mesh_tun] SKIPPED: {why}");
        return;
    }
    each_backend("mesh_tun", tun_case);
}

/// Ping `ip` from namespace `ns` with `totoro-mesh ping`; whether it answered.
fn ping(lab: &Lab, ns: &str, ip: &str, count: u32) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(ns)])
        .arg(mesh_bin())
        .args(["ping", ip, "--count", &count.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

fn rx_packets(state: &Path) -> u64 {
    status(state)
        .and_then(|v| v["counters"]["rx_packets"].as_u64())
        .unwrap_or(0)
}

fn gateway_case(backend: Backend) {
    let mut lab = Lab::new('g', 202, &["a", "g1", "g2"]);
    lab.lan(&["g1", "g2"]);
    let port = bench::proc::free_port();
    let listen = format!("0.0.0.0:{port}");
    let sp = Slowpath::up(
        &backend,
        &["--listen", &listen, "--public-addr", "10.202.1.1"],
    );
    sp.wait_frp();
    let controller = format!("http://10.202.1.1:{port}");
    let state = |n: &str| sp.dir.join(format!("node-{n}"));
    node(
        &mut lab,
        "a",
        &controller,
        &state("a"),
        &["--accept-routes"],
    );
    node(&mut lab, "g1", &controller, &state("g1"), &["--gateway"]);
    node(&mut lab, "g2", &controller, &state("g2"), &["--gateway"]);
    let ids: std::collections::HashMap<String, u64> =
        wait_until("three nodes to register", Duration::from_secs(20), || {
            let (_, v) = sp.admin_call("GET", "/api/v1/mesh/nodes", None);
            let list = v.as_array()?.clone();
            (list.len() == 3).then(|| {
                list.iter()
                    .map(|n| {
                        let name = n["hostname"].as_str().unwrap().to_owned();
                        (name, n["id"].as_u64().unwrap())
                    })
                    .collect()
            })
        });
    for id in ids.values() {
        let (st, v) = sp.admin_call("POST", &format!("/api/v1/mesh/nodes/{id}/authorize"), None);
        assert_eq!(st, 200, "{v}");
    }
    // Both gateways advertise the LAN; g1 is preferred.
    for (g, priority) in [("g1", 100), ("g2", 200)] {
        let (st, v) = sp.admin_call(
            "POST",
            &format!("/api/v1/mesh/nodes/{}/routes", ids[g]),
            Some(serde_json::json!({ "cidr": "192.168.77.0/24", "priority": priority })),
        );
        assert_eq!(st, 201, "{v}");
    }
    for n in ["a", "g1", "g2"] {
        wait_until("a node on its relay", Duration::from_secs(20), || {
            status(&state(n))?["relay"].as_u64()
        });
    }
    wait_until("a to hold both routes", Duration::from_secs(10), || {
        (status(&state("a"))?["routes"].as_array()?.len() == 2).then_some(())
    });
    // The LAN host answers through g1.
    assert!(
        ping(&lab, "a", "192.168.77.10", 3),
        "the LAN behind g1 is reached"
    );
    // (status.json is rewritten every second.)
    wait_until("g1's counters", Duration::from_secs(3), || {
        (rx_packets(&state("g1")) > 0).then_some(())
    });
    let through_g2 = rx_packets(&state("g2"));

    // g1 dies: within 5 s the LAN answers through g2.
    lab.kill("g1");
    let t = Instant::now();
    wait_until("failover to g2", Duration::from_secs(5), || {
        ping(&lab, "a", "192.168.77.10", 1).then_some(())
    });
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    wait_until("g2's counters", Duration::from_secs(3), || {
        (rx_packets(&state("g2")) > through_g2).then_some(())
    });
    eprintln!(
        "[mesh_gateway] failover to the second gateway in {:.2} s",
        took.as_secs_f64()
    );
}

#[test]
fn a_subnet_behind_gateways_is_reached_and_fails_over() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the TUN test: {why}"
        );
        eprintln!("[mesh_gateway] SKIPPED: {why}");
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the gateway test: no nft"
        );
        eprintln!("[mesh_gateway] SKIPPED: no nft (nftables)");
        return;
    }
    each_backend("mesh_gateway", gateway_case);
}
