//! The mesh end to end on real TUN devices, in network namespaces this
//! test makes (root, `/dev/net/tun` and iproute2's `ip`; without them the
//! test says it is skipped, and under CI it fails): `slowpath up` (the
//! controller and the built-in relay) in the root namespace, one
//! `totoro-mesh up` in each of two namespaces reaching it over veth pairs.
//! Once authorized, the nodes ping each other's virtual IP and move 64 MiB
//! over TCP with the same SHA-256 at both ends, while a packet capture on
//! the relay's side of a veth sees the traffic but never the payload's
//! plaintext. A deauthorized node is no longer reached. With two relays
//! (the built-in one and a standalone `slowpath relay`) and nodes on each,
//! a gateway among them, the nodes and the gateway's LAN are reached
//! across the relay-to-relay link.

mod harness;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
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

/// The ids of the nodes named `names` (by host name, in that order), once
/// all have registered (they register in either order).
fn registered(sp: &Slowpath, names: &[&str]) -> Vec<u64> {
    wait_until("the nodes to register", Duration::from_secs(20), || {
        let (_, v) = sp.admin_call("GET", "/api/v1/mesh/nodes", None);
        let list = v.as_array()?.clone();
        names
            .iter()
            .map(|name| {
                list.iter()
                    .find(|n| n["hostname"] == *name)
                    .and_then(|n| n["id"].as_u64())
            })
            .collect()
    })
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

/// `payload` over TCP from namespace `from` to a listener at `to_addr` in
/// namespace `to`: what arrived and how long it took.
fn transfer(
    lab: &Lab,
    from: &str,
    to: &str,
    to_addr: SocketAddr,
    payload: Vec<u8>,
) -> (Vec<u8>, Duration) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = in_ns(&lab.ns(to), move || {
        let l = TcpListener::bind(to_addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::with_capacity(64 << 20);
        c.read_to_end(&mut got).unwrap();
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let source = in_ns(&lab.ns(from), move || {
        let mut c = TcpStream::connect_timeout(&to_addr, Duration::from_secs(5)).unwrap();
        c.write_all(&payload).unwrap();
    });
    source.join().unwrap();
    let got = sink.join().unwrap();
    (got, started.elapsed())
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
    let ids = registered(&sp, &["a", "b"]);
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
    let (got, took) = transfer(&lab, "a", "b", SocketAddr::from((ip_b, 5001)), payload);
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

/// A standalone relay (`slowpath relay`), stopped with SIGTERM (it stops
/// its fastpath) when dropped.
struct StandaloneRelay {
    child: std::process::Child,
    dir: PathBuf,
}

impl StandaloneRelay {
    fn start(
        controller: &str,
        token: &str,
        port: u16,
        dir: PathBuf,
        secret: &Path,
        tls: (&Path, &Path),
    ) -> StandaloneRelay {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .unwrap();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_slowpath"))
            .args(["relay", "--controller", controller, "--port"])
            .arg(port.to_string())
            .arg("--frp-port")
            .arg(bench::proc::free_port().to_string())
            .arg("--data-dir")
            .arg(&dir)
            .arg("--jwt-secret-file")
            .arg(secret)
            .arg("--tls-cert")
            .arg(tls.0)
            .arg("--tls-key")
            .arg(tls.1)
            .env("TOTORO_SERVER_TOKEN", token)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        StandaloneRelay { child, dir }
    }
}

impl StandaloneRelay {
    /// SIGTERM, and how long it took to exit (it stops its fastpath
    /// first); None if it had not within 10 s.
    fn stop(&mut self) -> Option<Duration> {
        let t = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for StandaloneRelay {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        harness::kill_instance_fastpath(&self.dir.join("policy"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One controller, two relays, nodes split between them: the built-in
/// relay of `slowpath up` holds a and c, a standalone `slowpath relay`
/// (registered on `/ws/server`, serving wss://) holds b and the gateway g
/// with a LAN behind it. a and b reach each other across the
/// relay-to-relay link (`/ws/mesh`, dialed by the lower id), c reaches a
/// within its relay, a reaches the LAN through g across the relays; 64 MiB
/// from b to a arrive intact; b deauthorized is cut off by relay 2. The mesh runs in seed 003's
/// HS256 mode here: the controller signs with the shared secret and the
/// standalone relay is configured with it (`jwt.secret`).
fn two_relays_case(backend: Backend) {
    let mut lab = Lab::new('m', 203, &["a", "b", "c", "g"]);
    lab.lan(&["g"]);
    let port = bench::proc::free_port();
    let listen = format!("0.0.0.0:{port}");
    let secret = std::env::temp_dir().join(format!("totoro-jwt-{}-{port}", std::process::id()));
    std::fs::write(&secret, "a-shared-secret-for-the-relay-mesh-test\n").unwrap();
    let mut sp = Slowpath::up(
        &backend,
        &[
            "--listen",
            &listen,
            "--public-addr",
            "10.203.1.1",
            "--mesh-jwt-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    sp.wait_frp();
    let controller = format!("http://10.203.1.1:{port}");
    // The second relay: a server record, its token, the process.
    let relay_port = bench::proc::free_port();
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/mesh/servers",
        Some(serde_json::json!({
            "name": "relay-2",
            "url": format!("wss://10.203.1.1:{relay_port}/ws/data"),
        })),
    );
    assert_eq!(st, 201, "{v}");
    let r2 = v["server"]["id"].as_u64().unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let (_, list) = sp.admin_call("GET", "/api/v1/mesh/servers", None);
    let r1 = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .find(|&id| id != r2)
        .expect("the built-in relay");
    assert!(r1 < r2, "the built-in relay dials: {r1} < {r2}");
    // Relay 2 serves its nodes over TLS (wss://) with a certificate for
    // its address; node b trusts it with --ca-file. (The built-in relay
    // links to it in plain WebSocket on the same port.)
    let ck = rcgen::generate_simple_self_signed(vec!["10.203.1.1".to_string()]).unwrap();
    let (cert, key) = (sp.dir.join("relay-2.crt"), sp.dir.join("relay-2.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut relay = StandaloneRelay::start(
        &format!("ws://127.0.0.1:{port}"),
        &token,
        relay_port,
        sp.dir.join("relay-2"),
        &secret,
        (&cert, &key),
    );
    // a and c on the built-in relay, b and the gateway g (a LAN behind
    // it) on relay 2.
    let states: Vec<PathBuf> = ["a", "b", "c", "g"]
        .iter()
        .map(|n| sp.dir.join(format!("node-{n}")))
        .collect();
    let r1s = r1.to_string();
    let ca = cert.to_str().unwrap();
    let flags: [&[&str]; 4] = [
        &["--relay", &r1s, "--accept-routes"],
        &["--relay", "relay-2", "--ca-file", ca],
        &["--relay", &r1s],
        &["--relay", "relay-2", "--ca-file", ca, "--gateway"],
    ];
    for (i, n) in ["a", "b", "c", "g"].iter().enumerate() {
        node(&mut lab, n, &controller, &states[i], flags[i]);
    }
    let ids = registered(&sp, &["a", "b", "c", "g"]);
    for id in &ids {
        let (st, v) = sp.admin_call("POST", &format!("/api/v1/mesh/nodes/{id}/authorize"), None);
        assert_eq!(st, 200, "{v}");
    }
    let (st, v) = sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{}/routes", ids[3]),
        Some(serde_json::json!({ "cidr": "192.168.77.0/24", "priority": 100 })),
    );
    assert_eq!(st, 201, "{v}");
    // Each on its own relay.
    let ips: Vec<Ipv4Addr> = states
        .iter()
        .zip([r1, r2, r1, r2])
        .map(|(s, relay)| {
            wait_until("a node on its relay", Duration::from_secs(30), || {
                let v = status(s)?;
                let ip = v["virtual_ip"].as_str()?.parse().ok()?;
                (v["relay"].as_u64()? == relay).then_some(ip)
            })
        })
        .collect();
    let (ip_a, ip_b) = (ips[0], ips[1]);
    // Once the controller knows where each is and the link is up, they
    // reach each other across the two relays.
    let t = Instant::now();
    wait_until(
        "a to reach b across the relays",
        Duration::from_secs(30),
        || ping(&lab, "a", &ip_b.to_string(), 1).then_some(()),
    );
    eprintln!(
        "[mesh_relays] first ping across two relays after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(ping(&lab, "b", &ip_a.to_string(), 3), "b reaches a");
    assert!(ping(&lab, "a", &ip_b.to_string(), 3), "a reaches b");
    // Within one relay too, and the LAN behind g from a, across the relays.
    assert!(ping(&lab, "c", &ip_a.to_string(), 3), "c reaches a");
    wait_until("a to hold g's route", Duration::from_secs(10), || {
        (status(&states[0])?["routes"].as_array()?.len() == 1).then_some(())
    });
    wait_until("the LAN behind g, from a", Duration::from_secs(10), || {
        ping(&lab, "a", "192.168.77.10", 1).then_some(())
    });
    assert!(ping(&lab, "a", "192.168.77.10", 3), "the LAN answers");
    let (_, locs) = sp.admin_call("GET", "/api/v1/mesh/stats/overview", None);
    eprintln!("[mesh_relays] overview {locs}");

    // 64 MiB from b to a, the same at both ends.
    let mut payload = Vec::with_capacity(64 << 20);
    let mut i = 0u64;
    while payload.len() < 64 << 20 {
        payload.extend_from_slice(&i.to_le_bytes());
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    let want = sha256(&payload);
    let (got, took) = transfer(&lab, "b", "a", SocketAddr::from((ip_a, 5002)), payload);
    assert_eq!(got.len(), 64 << 20);
    assert_eq!(sha256(&got), want, "64 MiB arrived changed");
    eprintln!(
        "[mesh_relays] 64 MiB b -> a across two relays in {:.2} s ({:.0} Mbit/s)",
        took.as_secs_f64(),
        (64u64 << 23) as f64 / took.as_secs_f64() / 1e6
    );

    // Relay 2 took b, g and the link from relay 1 over TLS (its URL is
    // wss://): three TLS connections, as its counters say.
    let stats = sp.dir.join("relay-2").join("fastpath-stats.json");
    let tls = || -> Option<u64> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&stats).ok()?).ok()?;
        Some(
            v["workers"]
                .as_array()?
                .iter()
                .filter_map(|w| w["mesh_tls"].as_u64())
                .sum(),
        )
    };
    wait_until("relay 2's TLS count", Duration::from_secs(5), || {
        (tls()? >= 3).then_some(())
    });

    // The controller restarts (killed): the built-in relay's fastpath goes
    // on serving a and c and is adopted with them, relay 2 registers again
    // with b and g still connected; a reaches b again, and b never left
    // relay 2.
    sp.kill_hard();
    sp.restart();
    let t = Instant::now();
    wait_until(
        "a to reach b after the controller restarted",
        Duration::from_secs(30),
        || ping(&lab, "a", &ip_b.to_string(), 1).then_some(()),
    );
    eprintln!(
        "[mesh_relays] a reaches b {:.1} s after the controller restarted",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        status(&states[1]).and_then(|v| v["relay"].as_u64()),
        Some(r2),
        "b stayed on relay 2"
    );

    // b deauthorized: the standalone relay cuts it off, a reaches it no
    // more.
    let t = Instant::now();
    let (st, _) = sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{}/deauthorize", ids[1]),
        None,
    );
    assert_eq!(st, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&states[1]).is_some_and(|v| v["relay"].as_u64() == Some(r2)) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(states[1].with_extension("log")).unwrap_or_default();
            panic!("b is still on relay 2 5 s after its deauthorization; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "[mesh_relays] deauthorized b off relay 2 after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        !ping(&lab, "a", &ip_b.to_string(), 1),
        "b is no longer reached"
    );
    let _ = std::fs::remove_file(&secret);
    // SIGTERM stops the relay, its fastpath first.
    let took = relay.stop().expect("slowpath relay exits on SIGTERM");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn nodes_on_two_relays_reach_each_other_across_the_relay_mesh() {
    on_tun("mesh_relays", two_relays_case);
}

#[test]
fn two_nodes_on_tun_devices_reach_each_other_through_the_relay() {
    on_tun("mesh_tun", tun_case);
}

/// Run `case` on each backend where TUN devices and namespaces can be
/// made; elsewhere say it is skipped (and fail under CI).
fn on_tun(tag: &str, case: fn(Backend)) {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the TUN test: {why}"
        );
        eprintln!("[{tag}] SKIPPED: {why}");
        return;
    }
    each_backend(tag, case);
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
