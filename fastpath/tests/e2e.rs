//! End-to-end: the real fastpath binary, real sockets, the in-repo frp
//! client (which matches frpc on the wire).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bench::backend::Backend;
use bench::client::{Client, ClientError, ClientOpts};
use common::*;

/// `fp`'s client options over tcpMux and TLS as given.
fn opts_over(fp: &Fastpath, mux: bool, tls: bool) -> ClientOpts {
    let mut o = fp.opts();
    o.mux = mux;
    o.tls = tls;
    o
}

/// Logs in with `o` and registers a plain proxy `name` (any port) to
/// `echo`; the client and the proxy's port.
fn tunnel(o: ClientOpts, name: &str, echo: &Backend) -> (Client, u16) {
    let c = Client::login(o).expect("login");
    let port = tcp_proxy(&c, name, 0, echo.addr(), false, false);
    (c, port)
}

#[test]
fn login_accepted_and_bad_token_refused() {
    let fp = Fastpath::start("", 1);
    let c = Client::login(fp.opts()).expect("login with the right token");
    assert_eq!(c.run_id().len(), 16);

    let mut bad = fp.opts();
    bad.token = "wrong".into();
    match Client::login(bad) {
        Err(ClientError::Refused(msg)) => assert!(msg.contains("token"), "{msg}"),
        Err(e) => panic!("expected a LoginResp error, got {e}"),
        Ok(_) => panic!("login with a wrong token succeeded"),
    }
    assert!(fp.daemon.wait_log("login refused", Duration::from_secs(2)));
}

fn integrity_case(mux: bool, tls: bool) {
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let c = Client::login(opts_over(&fp, mux, tls)).expect("login");
    let len = 64 << 20;
    for (i, (enc, comp)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let port = tcp_proxy(&c, &format!("p{i}"), 0, echo.addr(), enc, comp);
        let (sent, got) = echo_integrity(port, len, 0x9e3779b97f4a7c15 + i as u64);
        assert_eq!(
            sent, got,
            "mux={mux} tls={tls} enc={enc} comp={comp}: data differs"
        );
    }
}

#[test]
fn integrity_mux_tls() {
    integrity_case(true, true);
}

#[test]
fn integrity_mux_plain() {
    integrity_case(true, false);
}

#[test]
fn integrity_nomux_tls() {
    integrity_case(false, true);
}

#[test]
fn integrity_nomux_plain() {
    integrity_case(false, false);
}

/// A connection to the echo tunnel at `port` that echoed a ping: its
/// relay is set up and running.
fn pinged(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s
}

/// Pipes `pid` holds open (the splice relay makes one per direction).
fn pipes_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// A plain relay between peers on this host copies through the worker's
/// buffer (no pipe); with `fastpath.spliceLocal` it splices (a pipe per
/// direction). Either way the bytes arrive intact.
#[test]
fn plain_relay_to_local_peers_copies_unless_splice_local() {
    for (extra, pipes) in [("", 0), ("fastpath.spliceLocal = true", 4)] {
        let fp = Fastpath::start(extra, 1);
        let echo = Backend::echo().unwrap();
        let (_c, port) = tunnel(opts_over(&fp, false, false), "p", &echo);
        let before = pipes_of(fp.daemon.pid());
        let _s = pinged(port);
        assert_eq!(
            pipes_of(fp.daemon.pid()) - before,
            pipes,
            "{extra:?}: pipe descriptors of a relay in progress"
        );
        let (sent, got) = echo_integrity(port, 16 << 20, 7);
        assert_eq!(sent, got, "{extra:?}: data differs");
    }
}

/// One session's plain relays go to the worker that relays the fewest
/// connections (`fastpath.spreadRelays`, on by default): four connections
/// through one session on two workers are relayed two and two, and move
/// their bytes intact while spread. With the key off, the session's worker
/// relays all four.
#[test]
fn one_sessions_relays_spread_over_workers() {
    for (extra, want) in [("", [2, 2]), ("fastpath.spreadRelays = false", [0, 4])] {
        let fp = Fastpath::start(extra, 2);
        let echo = Backend::echo().unwrap();
        let (_c, port) = tunnel(opts_over(&fp, false, false), "p", &echo);
        let held: Vec<TcpStream> = (0..4).map(|_| pinged(port)).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let per = loop {
            let s = fp.stats();
            let mut per: Vec<i64> = s["workers"]
                .as_array()
                .map(|ws| {
                    ws.iter()
                        .map(|w| w["conns"].as_i64().unwrap_or(0))
                        .collect()
                })
                .unwrap_or_default();
            per.sort_unstable();
            if per.iter().sum::<i64>() == 4 || Instant::now() > deadline {
                break per;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(per, want, "{extra:?}: connections relayed per worker");
        let movers: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || echo_integrity(port, 8 << 20, 11 + i)))
            .collect();
        for m in movers {
            let (sent, got) = m.join().unwrap();
            assert_eq!(sent, got, "{extra:?}: data differs");
        }
        drop(held);
    }
}

#[test]
fn legacy_tls_first_byte_is_accepted() {
    let fp = Fastpath::start("", 1);
    let echo = Backend::echo().unwrap();
    let mut o = fp.opts();
    o.tls_custom_byte = true;
    let (_c, port) = tunnel(o, "p", &echo);
    let (a, b) = echo_integrity(port, 1 << 20, 7);
    assert_eq!(a, b);
}

#[test]
fn remote_port_zero_and_conflicts() {
    let fp = Fastpath::start(
        "allowPorts = [{ start = 21000, end = 21009 }]\nmaxPortsPerClient = 5",
        2,
    );
    let echo = Backend::echo().unwrap();
    let c = Client::login(fp.opts()).unwrap();
    let p = tcp_proxy(&c, "auto", 0, echo.addr(), false, false);
    assert!(
        (21000..=21009).contains(&p),
        "allocated {p} outside allowPorts"
    );
    // The same port for another proxy, from another client: refused.
    let c2 = Client::login(fp.opts()).unwrap();
    let spec = |name: &str, port: i64| bench::client::ProxySpec {
        name: name.into(),
        remote_port: port,
        local: echo.addr(),
        use_encryption: false,
        use_compression: false,
        server_bandwidth_limit: String::new(),
    };
    match c2.add_proxy(spec("clash", p as i64)) {
        Err(ClientError::Refused(m)) => assert!(m.contains("port already used"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match c2.add_proxy(spec("outside", 30000)) {
        Err(ClientError::Refused(m)) => assert!(m.contains("port not allowed"), "{m}"),
        other => panic!("expected not allowed, got {other:?}"),
    }
    match c2.add_proxy(spec("auto", 0)) {
        Err(ClientError::Refused(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("expected a name clash, got {other:?}"),
    }
    // maxPortsPerClient = 5: the sixth is refused.
    for i in 0..4 {
        tcp_proxy(&c2, &format!("n{i}"), 0, echo.addr(), false, false);
    }
    tcp_proxy(&c2, "n4", 0, echo.addr(), false, false);
    match c2.add_proxy(spec("n5", 0)) {
        Err(ClientError::Refused(m)) => assert!(m.contains("max_ports_per_client"), "{m}"),
        other => panic!("expected max ports, got {other:?}"),
    }
    // CloseProxy frees the port for someone else.
    c.close_proxy("auto").unwrap();
    let c3 = Client::login(fp.opts()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c3.add_proxy(spec("again", p as i64)) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("port {p} not freed after CloseProxy: {e}"),
        }
    }
}

#[test]
fn thousand_concurrent_user_connections() {
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let mut o = fp.opts();
    o.pool_count = 5;
    let (_c, port) = tunnel(o, "many", &echo);
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    // All 1000 open at once; each does a round trip.
    let mut threads = Vec::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        threads.push(
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let msg = format!("hello {i:05}\n");
                    s.write_all(msg.as_bytes()).unwrap();
                    let mut got = vec![0u8; msg.len()];
                    s.read_exact(&mut got).unwrap();
                    assert_eq!(got, msg.as_bytes());
                    s
                })
                .unwrap(),
        );
    }
    let open: Vec<TcpStream> = threads
        .into_iter()
        .map(|t| t.join().expect("round trip"))
        .collect();
    assert_eq!(open.len(), 1000);
}

#[test]
fn killed_client_frees_its_ports() {
    for mux in [true, false] {
        let fp = Fastpath::start("", 2);
        let echo = Backend::echo().unwrap();
        let o = opts_over(&fp, mux, true);
        let (c, port) = tunnel(o.clone(), "victim", &echo);
        // Mid-transfer: a connection is relaying when the client dies.
        let mut user = TcpStream::connect(("127.0.0.1", port)).unwrap();
        user.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        user.read_exact(&mut one).unwrap();
        c.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        let c2 = Client::login(o).unwrap();
        loop {
            match c2.add_proxy(bench::client::ProxySpec {
                name: "victim".into(),
                remote_port: port as i64,
                local: echo.addr(),
                use_encryption: false,
                use_compression: false,
                server_bandwidth_limit: String::new(),
            }) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("mux={mux}: port {port} not freed after the client died: {e}"),
            }
        }
        // The old user connection was closed.
        user.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = user.read(&mut one);
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "user connection still open after its client died"
        );
    }
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let fp = Fastpath::start("transport.tls.force = false", 2);
    let echo = Backend::echo().unwrap();
    let (_c, port) = tunnel(opts_over(&fp, true, false), "keep", &echo);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized length", {
            let mut v = vec![b'o'];
            v.extend_from_slice(&(1_000_000i64).to_be_bytes());
            v
        }),
        ("negative length", {
            let mut v = vec![b'o'];
            v.extend_from_slice(&(-5i64).to_be_bytes());
            v
        }),
        ("unknown type", {
            let mut v = vec![b'Z'];
            v.extend_from_slice(&2i64.to_be_bytes());
            v.extend_from_slice(b"{}");
            v
        }),
        ("bad json", {
            let mut v = vec![b'o'];
            v.extend_from_slice(&5i64.to_be_bytes());
            v.extend_from_slice(b"{nope");
            v
        }),
        (
            "bad yamux version",
            vec![0, 9, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0],
        ),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(fp.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut buf = [0u8; 64];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break true,
                Ok(_) => continue,
            }
        };
        assert!(closed, "{what}: connection not closed");
    }
    assert!(
        fp.daemon.wait_log("malformed", Duration::from_secs(2))
            || fp
                .daemon
                .wait_log("bad first message", Duration::from_secs(2))
    );
    // The good session still serves.
    let (a, b) = echo_integrity(port, 1 << 20, 3);
    assert_eq!(a, b);
    let mut fp = fp;
    assert!(fp.daemon.alive());
}

#[test]
fn two_workers_spread_sessions_and_hand_off() {
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let mut clients = Vec::new();
    let mut ports = Vec::new();
    for i in 0..16 {
        let c = Client::login(opts_over(&fp, false, i % 2 == 0)).unwrap();
        ports.push(tcp_proxy(
            &c,
            &format!("s{i}"),
            0,
            echo.addr(),
            false,
            false,
        ));
        clients.push(c);
    }
    for (i, p) in ports.iter().enumerate() {
        let (a, b) = echo_integrity(*p, 256 << 10, i as u64);
        assert_eq!(a, b);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let stats = fp.stats();
    let workers = stats["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(workers.len(), 2, "{stats}");
    for (i, w) in workers.iter().enumerate() {
        assert!(
            w["sessions"].as_i64().unwrap_or(0) > 0,
            "worker {i} owns no session: {stats}"
        );
    }
    let handoffs: i64 = workers
        .iter()
        .map(|w| w["handoffs_in"].as_i64().unwrap_or(0))
        .sum();
    assert!(
        handoffs > 0,
        "no work connection was handed between workers: {stats}"
    );
}

#[test]
fn sigterm_stops_within_five_seconds() {
    let mut fp = Fastpath::start("", 2);
    let _c = Client::login(fp.opts()).unwrap();
    let t = Instant::now();
    fp.daemon.signal(15);
    let code = fp.daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "exit within 5 s with status 0");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Registers two proxies on `c` (plain, and encrypted + compressed) named
/// after `tag`, and echoes `len` bytes through each `rounds` times.
fn carries_data(c: &Client, echo: &Backend, tag: &str, len: usize, rounds: u64) {
    for (i, (enc, comp)) in [(false, false), (true, true)].into_iter().enumerate() {
        let port = tcp_proxy(c, &format!("{tag}-{i}"), 0, echo.addr(), enc, comp);
        for seed in 0..rounds {
            let (sent, got) = echo_integrity(port, len, 11 + seed + i as u64);
            assert_eq!(sent, got, "{tag} enc={enc} comp={comp}: data differs");
        }
    }
}

fn v2_case(mux: bool, tls: bool) {
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let mut o = opts_over(&fp, mux, tls);
    o.wire_v2 = true;
    let c = Client::login(o).expect("v2 login");
    carries_data(&c, &echo, &format!("v2-mux{mux}-tls{tls}"), 16 << 20, 1);
}

#[test]
fn wire_v2_mux_tls() {
    v2_case(true, true);
}

#[test]
fn wire_v2_nomux_plain() {
    v2_case(false, false);
}

#[test]
fn wire_v2_xchacha_and_bad_token() {
    let fp = Fastpath::start("", 1);
    let mut o = fp.opts();
    o.wire_v2 = true;
    o.v2_algorithms = vec![proto::wire_v2::AeadAlgorithm::XChaCha20Poly1305];
    let echo = Backend::echo().unwrap();
    let (_c, port) = tunnel(o.clone(), "x", &echo);
    let (a, b) = echo_integrity(port, 1 << 20, 5);
    assert_eq!(a, b);
    o.token = "wrong".into();
    match Client::login(o) {
        Err(ClientError::Refused(m)) => assert!(m.contains("token"), "{m}"),
        other => panic!("expected refusal, got {:?}", other.err()),
    }
}

#[test]
fn heartbeat_timeout_closes_silent_sessions() {
    let fp = Fastpath::start("transport.heartbeatTimeout = 2", 1);
    let echo = Backend::echo().unwrap();
    let quiet = opts_over(&fp, false, true);
    let (_c, port) = tunnel(quiet.clone(), "quiet", &echo);
    let mut chatty = quiet.clone();
    chatty.heartbeat = Some(Duration::from_millis(500));
    let c2 = Client::login(chatty).unwrap();
    tcp_proxy(&c2, "chatty", 0, echo.addr(), false, false);
    assert!(
        fp.daemon
            .wait_log("heartbeat timeout", Duration::from_secs(6)),
        "silent session not closed"
    );
    // Its port is free again; the pinging one is still served.
    let c3 = Client::login(quiet).unwrap();
    tcp_proxy(&c3, "reuse", port as i64, echo.addr(), false, false);
    assert!(c2.pongs() > 0);
    assert!(!c2.is_closed());
}

#[test]
fn epoll_driver_serves_too() {
    let fp = Fastpath::start("fastpath.driver = \"epoll\"", 0);
    assert!(
        fp.daemon
            .wait_log("driver=\"epoll\"", Duration::from_secs(5))
            || fp.daemon.wait_log("driver=epoll", Duration::from_secs(1))
    );
    let echo = Backend::echo().unwrap();
    for (mux, tls) in [(true, true), (false, false)] {
        let c = Client::login(opts_over(&fp, mux, tls)).unwrap();
        carries_data(&c, &echo, &format!("epoll-mux{mux}-tls{tls}"), 8 << 20, 1);
    }
}

/// Each io_uring task-work mode the kernel offers serves sessions and work
/// connections across two workers (the handoff wakes a worker through its
/// ring); the log names the mode. A mode this kernel lacks stops the worker
/// with a logged reason, which is what the test then expects.
#[test]
fn each_task_work_mode_serves() {
    if !monoio::utils::detect_uring() {
        eprintln!("skipped: io_uring unavailable");
        return;
    }
    let echo = Backend::echo().unwrap();
    for (mode, log) in [
        ("defer", "deferred task work"),
        ("coop", "cooperative task work"),
        ("signal", "signalled task work"),
    ] {
        let fp = Fastpath::start(&format!("fastpath.taskWork = \"{mode}\""), 2);
        if !fp.daemon.wait_log(log, Duration::from_secs(5)) {
            assert!(
                fp.daemon
                    .wait_log("cannot start worker runtime", Duration::from_secs(1)),
                "{mode}: neither started nor refused"
            );
            eprintln!("{mode}: not offered by this kernel");
            continue;
        }
        for (mux, tls) in [(true, true), (false, false)] {
            let mut o = opts_over(&fp, mux, tls);
            o.pool_count = 4;
            let c = Client::login(o).unwrap();
            carries_data(&c, &echo, &format!("{mode}-mux{mux}-tls{tls}"), 4 << 20, 4);
        }
    }
}

/// A TLS 1.3 session's records are protected by the fastpath itself after
/// the handshake (proto::tls13); a client that offers only TLS 1.2 stays
/// with rustls's record layer. Both carry data intact, with and without
/// yamux, encrypted and compressed or not, and work connections of both
/// move between workers.
#[test]
fn tls12_and_tls13_record_paths_carry_data() {
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    for tls12_only in [false, true] {
        for mux in [false, true] {
            let mut o = opts_over(&fp, mux, true);
            o.tls12_only = tls12_only;
            o.pool_count = 4;
            let c = Client::login(o).expect("login");
            carries_data(
                &c,
                &echo,
                &format!("tls12only{tls12_only}-mux{mux}"),
                4 << 20,
                3,
            );
            c.kill();
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    let stats = fp.stats();
    assert!(worker_sum(&stats, "tls13_sessions") >= 2, "{stats}");
    assert!(worker_sum(&stats, "tls_rustls_sessions") >= 2, "{stats}");
}
