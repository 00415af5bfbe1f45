//! End-to-end against the real upstream `frpc`: the fastpath binary on
//! loopback, a stock frpc driven with a generated `frpc.toml`, bytes pushed
//! through its proxies and compared by hash.
//!
//! The frpc binaries are not part of the repository. Point the tests at them
//! with `FRPC_BIN=/path/to/frpc`, or `FRPC_BINS=/a/frpc:/b/frpc` to run every
//! test once per version; without either, each test says it is skipped and
//! passes, so CI stays green without frpc. frpc 0.52 or newer (the TOML
//! config format) is required.
//!
//! ```sh
//! FRPC_BINS=/opt/frp/0.70.1/frpc:/opt/frp/0.52.3/frpc \
//!     cargo test -p totoro-fastpath --test real_frpc -- --nocapture
//! ```
//!
//! `TOTORO_TEST_ECHO=1` echoes both daemons' logs as they run.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::backend::Backend;
use bench::proc::{free_port, Daemon};
use common::*;

/// Bytes pushed through each proxy of a matrix cell.
const PAYLOAD: usize = 16 << 20;

/// How long frpc gets to log in and register its proxies.
const REGISTER_LIMIT: Duration = Duration::from_secs(20);

/// The tests in this file run one at a time: each drives two daemons that
/// move tens of MiB through TLS, AES and snappy, and on a two-core runner
/// three such tests side by side would only make the bounded waits flaky.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An upstream frpc binary and the version it reports.
struct FrpcBin {
    path: PathBuf,
    version: String,
    /// (major, minor) of `version`.
    release: (u32, u32),
}

/// The frpc binaries named by `FRPC_BINS` (colon-separated) or `FRPC_BIN`;
/// empty, after printing the skip line, when neither is set.
fn frpc_bins(test: &str) -> Vec<FrpcBin> {
    let list = std::env::var("FRPC_BINS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::env::var("FRPC_BIN").ok())
        .unwrap_or_default();
    let paths: Vec<PathBuf> = list
        .split(':')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        println!("{test}: skipped: FRPC_BIN is unset (set FRPC_BIN or FRPC_BINS to upstream frpc binaries to run it)");
        return Vec::new();
    }
    paths.into_iter().map(FrpcBin::probe).collect()
}

impl FrpcBin {
    /// Ask the binary for its version; refuse the ones without TOML config.
    fn probe(path: PathBuf) -> FrpcBin {
        let out = Command::new(&path)
            .arg("-v")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        assert!(
            (major, minor) >= (0, 52),
            "{}: frpc {version:?} predates the TOML config these tests write (0.52+)",
            path.display()
        );
        FrpcBin {
            path,
            version,
            release: (major, minor),
        }
    }
}

/// How frpc reaches the server: the matrix axes that live in `transport.*`.
#[derive(Clone, Copy, Debug)]
struct Transport {
    tls: bool,
    mux: bool,
    /// `transport.tls.disableCustomTLSFirstByte = false`: the 0x17 byte
    /// before the TLS handshake, as frpc sent by default before 0.50.
    legacy_first_byte: bool,
    /// `transport.wireProtocol = "v2"` (frpc 0.69+).
    v2: bool,
}

impl Transport {
    fn label(&self) -> String {
        let tls = match (self.tls, self.legacy_first_byte) {
            (false, _) => "plain",
            (true, false) => "tls",
            (true, true) => "tls+0x17",
        };
        let mux = if self.mux { "mux" } else { "nomux" };
        let wire = if self.v2 { " wire=v2" } else { "" };
        format!("{tls} {mux}{wire}")
    }
}

/// One `[[proxies]]` entry, always TCP to the echo backend.
struct ProxyConf {
    name: String,
    /// 0: the server picks one from `allowPorts`.
    remote_port: u16,
    enc: bool,
    comp: bool,
}

/// Everything an `frpc.toml` for these tests says.
struct FrpcConf {
    server: SocketAddr,
    token: String,
    transport: Transport,
    local: SocketAddr,
    proxies: Vec<ProxyConf>,
}

impl FrpcConf {
    fn toml(&self) -> String {
        let t = &self.transport;
        let mut s = format!(
            "serverAddr = \"{}\"\nserverPort = {}\nloginFailExit = true\n\
             auth.token = \"{}\"\n\
             log.to = \"console\"\nlog.level = \"info\"\nlog.disablePrintColor = true\n\
             transport.tls.enable = {}\ntransport.tcpMux = {}\n",
            self.server.ip(),
            self.server.port(),
            self.token,
            t.tls,
            t.mux,
        );
        if t.legacy_first_byte {
            s.push_str("transport.tls.disableCustomTLSFirstByte = false\n");
        }
        if t.v2 {
            s.push_str("transport.wireProtocol = \"v2\"\n");
        }
        for p in &self.proxies {
            s.push_str(&format!(
                "\n[[proxies]]\nname = \"{}\"\ntype = \"tcp\"\nlocalIP = \"{}\"\nlocalPort = {}\n\
                 remotePort = {}\ntransport.useEncryption = {}\ntransport.useCompression = {}\n",
                p.name,
                self.local.ip(),
                self.local.port(),
                p.remote_port,
                p.enc,
                p.comp,
            ));
        }
        s
    }
}

/// A running frpc and the temp dir holding its config.
struct Frpc {
    daemon: Daemon,
    dir: PathBuf,
}

impl Frpc {
    fn start(bin: &FrpcBin, conf: &FrpcConf) -> Frpc {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "totoro-frpc-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("frpc.toml");
        std::fs::write(&cfg, conf.toml()).unwrap();
        let daemon = Daemon::spawn(&bin.path, &["-c", cfg.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.path.display()));
        Frpc { daemon, dir }
    }
}

impl Drop for Frpc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `n` lines of a daemon's log, indented for a failure message.
fn tail(d: &Daemon, n: usize) -> String {
    let log = d.log();
    let from = log.len().saturating_sub(n);
    log[from..].iter().map(|l| format!("    {l}\n")).collect()
}

/// Both logs, for a failure message.
fn logs(fp: &Fastpath, frpc: &Frpc) -> String {
    format!(
        "\n  fastpath log:\n{}  frpc log:\n{}",
        tail(&fp.daemon, 40),
        tail(&frpc.daemon, 40)
    )
}

/// One short echo through `port`: the proxy is registered and frpc answers
/// work-connection requests.
fn round_trip(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut got = [0u8; 5];
    s.write_all(b"ping\n").is_ok() && s.read_exact(&mut got).is_ok() && &got == b"ping\n"
}

/// Wait until every port answers a round trip, while frpc keeps running.
fn wait_registered(fp: &Fastpath, frpc: &mut Frpc, ports: &[u16], limit: Duration) {
    let end = Instant::now() + limit;
    let mut pending: Vec<u16> = ports.to_vec();
    while !pending.is_empty() {
        assert!(
            frpc.daemon.alive(),
            "frpc exited before registering its proxies{}",
            logs(fp, frpc)
        );
        assert!(
            Instant::now() < end,
            "ports {pending:?} did not echo within {limit:?}{}",
            logs(fp, frpc)
        );
        pending.retain(|p| !round_trip(*p));
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Wait until nothing accepts on `port` any more.
fn wait_port_closed(port: u16, limit: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `N` distinct free ports (free_port alone may hand the same one out twice).
fn distinct_free_ports<const N: usize>() -> [u16; N] {
    let mut ports = [0u16; N];
    let mut n = 0;
    for _ in 0..100 * N {
        let p = free_port();
        if p != 0 && !ports[..n].contains(&p) {
            ports[n] = p;
            n += 1;
            if n == N {
                return ports;
            }
        }
    }
    panic!("no {N} distinct free ports");
}

/// A relay between frpc and fastpath that records the first byte of every
/// connection frpc opens, so a cell proves it ran the transport it names
/// instead of trusting frpc to honour its config: 0x16 (TLS), 0x17 (frp's
/// custom TLS byte), 0x00 (plain yamux) or a message type (plain, no mux).
struct FirstByteTap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl FirstByteTap {
    fn start(upstream: SocketAddr) -> FirstByteTap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || tap_conn(client, upstream, &seen));
            }
        });
        FirstByteTap { addr, seen, stop }
    }

    /// First bytes of the connections so far, in arrival order.
    fn seen(&self) -> Vec<u8> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FirstByteTap {
    fn drop(&mut self) {
        // Wake the accept loop so it sees `stop`; relays end with their sockets.
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Relay one connection, recording its first byte. The first chunk is
/// forwarded as read, so fastpath sees the segmentation frpc produced.
fn tap_conn(mut client: TcpStream, upstream: SocketAddr, seen: &Mutex<Vec<u8>>) {
    let mut first = vec![0u8; 64 * 1024];
    let n = match client.read(&mut first) {
        Ok(n) if n > 0 => n,
        _ => return,
    };
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(first[0]);
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if server.write_all(&first[..n]).is_err() {
        return;
    }
    let (Ok(mut client_w), Ok(mut server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client, &mut server);
        let _ = server.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// Check that frpc used the transport `t` names: first bytes on the wire,
/// and the framing fastpath reported at login (`transport="mux"` for a
/// yamux stream, else the socket kind).
fn assert_transport(t: Transport, tap: &FirstByteTap, fp: &Fastpath, frpc: &Frpc) {
    let seen = tap.seen();
    let ok_byte = |b: u8| match (t.tls, t.legacy_first_byte, t.mux) {
        (true, false, _) => b == 0x16,
        (true, true, _) => b == 0x17,
        (false, _, true) => b == 0x00,
        // v2: the magic "FRP\0…"; v1: Login ('o') or NewWorkConn ('w').
        (false, _, false) if t.v2 => b == b'F',
        (false, _, false) => b == b'o' || b == b'w',
    };
    assert!(
        !seen.is_empty() && seen.iter().all(|&b| ok_byte(b)),
        "{}: unexpected first bytes from frpc: {seen:02x?}{}",
        t.label(),
        logs(fp, frpc)
    );
    let kind = match (t.mux, t.tls) {
        (true, _) => "mux",
        (false, true) => "tls",
        (false, false) => "tcp",
    };
    let want = format!("transport=\"{kind}\"");
    let wire = if t.v2 { "wire=\"v2\"" } else { "wire=\"v1\"" };
    assert!(
        fp.daemon
            .log()
            .iter()
            .any(|l| l.contains("client logged in") && l.contains(&want) && l.contains(wire)),
        "{}: fastpath did not log a login with {want}{}",
        t.label(),
        logs(fp, frpc)
    );
}

/// The four proxies of a cell: plain, enc, comp, enc+comp.
fn four_proxies(ports: &[u16; 4]) -> Vec<ProxyConf> {
    [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .zip(ports)
        .map(|((enc, comp), &remote_port)| ProxyConf {
            name: match (enc, comp) {
                (false, false) => "plain",
                (true, false) => "enc",
                (false, true) => "comp",
                (true, true) => "enc-comp",
            }
            .into(),
            remote_port,
            enc,
            comp,
        })
        .collect()
}

/// One matrix cell: a fresh fastpath, one frpc with four proxies, 16 MiB
/// through each. With `auto_ports` every proxy asks for remotePort = 0 and
/// fastpath's allowPorts holds exactly four ports, so all four must be
/// handed out (all proxies echo, so which got which does not matter).
fn matrix_cell(bin: &FrpcBin, t: Transport, auto_ports: bool) {
    let ports = distinct_free_ports::<4>();
    let extra = if auto_ports {
        let singles: Vec<String> = ports
            .iter()
            .map(|p| format!("{{ single = {p} }}"))
            .collect();
        format!("allowPorts = [{}]", singles.join(", "))
    } else {
        String::new()
    };
    let fp = Fastpath::start(&extra, 2);
    let tap = FirstByteTap::start(fp.addr);
    let echo = Backend::echo().unwrap();
    let mut proxies = four_proxies(&ports);
    if auto_ports {
        proxies.iter_mut().for_each(|p| p.remote_port = 0);
    }
    let conf = FrpcConf {
        server: tap.addr,
        token: TOKEN.into(),
        transport: t,
        local: echo.addr(),
        proxies,
    };
    let mut frpc = Frpc::start(bin, &conf);
    wait_registered(&fp, &mut frpc, &ports, REGISTER_LIMIT);
    assert_transport(t, &tap, &fp, &frpc);
    for (i, &port) in ports.iter().enumerate() {
        let what = if auto_ports {
            format!("allocated port {port}")
        } else {
            format!("proxy {}", conf.proxies[i].name)
        };
        let r = catch_unwind(AssertUnwindSafe(|| {
            echo_integrity(port, PAYLOAD, 0x5851f42d4c957f2d + i as u64)
        }));
        match r {
            Ok((sent, got)) => assert_eq!(sent, got, "{what}: data differs{}", logs(&fp, &frpc)),
            Err(e) => panic!("{what}: {}{}", panic_text(&*e), logs(&fp, &frpc)),
        }
    }
    let mut fp = fp;
    assert!(fp.daemon.alive(), "fastpath died{}", logs(&fp, &frpc));
}

/// The text of a caught panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs named cells one after another, each to its end even when an earlier
/// one failed, prints PASS/FAIL with its time, and fails at the end listing
/// every failed cell.
struct Cells {
    failures: Vec<String>,
}

impl Cells {
    fn new() -> Cells {
        Cells {
            failures: Vec::new(),
        }
    }

    fn run(&mut self, label: &str, cell: impl FnOnce()) {
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(cell)) {
            Ok(()) => println!("PASS {label} ({:.1?})", t.elapsed()),
            Err(e) => {
                println!("FAIL {label} ({:.1?})", t.elapsed());
                self.failures.push(format!("{label}: {}", panic_text(&*e)));
            }
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} cell(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Runs `cell` for each frpc binary (see [`frpc_bins`]) and each of
/// `variants`, serially and as [`Cells`] (every one to its end); `label`
/// names a cell.
fn each_frpc_cell<V: Copy, const N: usize>(
    test: &str,
    variants: [V; N],
    label: impl Fn(&FrpcBin, V) -> String,
    cell: impl Fn(&FrpcBin, V),
) {
    let bins = frpc_bins(test);
    let _serial = serial();
    let mut cells = Cells::new();
    for bin in &bins {
        for v in variants {
            cells.run(&label(bin, v), || cell(bin, v));
        }
    }
    cells.finish();
}

#[test]
fn real_frpc_matrix() {
    let bins = frpc_bins("real_frpc_matrix");
    let _serial = serial();
    let t = |tls, mux, legacy_first_byte| Transport {
        tls,
        mux,
        legacy_first_byte,
        v2: false,
    };
    let v2 = |tls, mux| Transport {
        tls,
        mux,
        legacy_first_byte: false,
        v2: true,
    };
    // (transport, remotePort = 0)
    let matrix = [
        (t(true, true, false), false),
        (t(true, false, false), false),
        (t(false, true, false), false),
        (t(false, false, false), false),
        (t(true, true, true), false),
        (t(true, false, true), false),
        (t(true, true, false), true),
        (t(false, false, false), true),
        (v2(true, true), false),
        (v2(false, false), false),
        (v2(false, true), true),
    ];
    let mut cells = Cells::new();
    for bin in &bins {
        let started = Instant::now();
        for (tr, auto_ports) in matrix {
            if tr.v2 && bin.release < (0, 69) {
                continue;
            }
            let ports = if auto_ports {
                "remotePort=0"
            } else {
                "fixed ports"
            };
            let label = format!("frpc {} {} {ports}", bin.version, tr.label());
            cells.run(&label, || matrix_cell(bin, tr, auto_ports));
        }
        println!(
            "frpc {}: matrix took {:.1?}",
            bin.version,
            started.elapsed()
        );
    }
    cells.finish();
}

/// frpc SIGKILLed while a user connection is relaying: its port closes
/// within seconds, the user connection ends, fastpath lives on and a new
/// frpc can register the same remotePort.
fn killed_cell(bin: &FrpcBin, mux: bool) {
    let mut fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let port = free_port();
    let conf = FrpcConf {
        server: fp.addr,
        token: TOKEN.into(),
        transport: Transport {
            tls: true,
            mux,
            legacy_first_byte: false,
            v2: false,
        },
        local: echo.addr(),
        proxies: vec![ProxyConf {
            name: "victim".into(),
            remote_port: port,
            enc: false,
            comp: false,
        }],
    };
    let mut frpc = Frpc::start(bin, &conf);
    wait_registered(&fp, &mut frpc, &[port], REGISTER_LIMIT);

    // Mid-transfer: a writer keeps pushing while we read the echo.
    let user = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = user.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0usize;
        // Ends when the tunnel breaks; bounded in case it never does.
        while sent < (1 << 30) && w.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let mut r = user;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 4 << 20 {
        match r.read(&mut buf) {
            Ok(n) if n > 0 => got += n,
            other => panic!(
                "echo stopped after {got} bytes: {other:?}{}",
                logs(&fp, &frpc)
            ),
        }
    }
    let killed = Instant::now();
    frpc.daemon.signal(9);
    assert!(
        frpc.daemon.wait_exit(Duration::from_secs(5)).is_some(),
        "frpc survived SIGKILL"
    );
    assert!(
        wait_port_closed(port, Duration::from_secs(5)),
        "port {port} still accepts 5 s after frpc died{}",
        logs(&fp, &frpc)
    );
    let closed = killed.elapsed();
    // The relaying user connection is closed too.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(
                Instant::now() < end,
                "user connection still open 10 s after its frpc died{}",
                logs(&fp, &frpc)
            ),
        }
    }
    let sent = writer.join().unwrap();
    assert!(sent < 1 << 30, "the writer never saw the tunnel break");
    println!("  port {port} refused connections {closed:.1?} after SIGKILL");

    // A new frpc takes the same remotePort.
    let mut again = Frpc::start(bin, &conf);
    wait_registered(&fp, &mut again, &[port], REGISTER_LIMIT);
    let (a, b) = echo_integrity(port, 1 << 20, 11);
    assert_eq!(a, b, "data differs after re-registering");
    assert!(fp.daemon.alive(), "fastpath died{}", logs(&fp, &again));
}

#[test]
fn killed_frpc_frees_its_ports() {
    each_frpc_cell(
        "killed_frpc_frees_its_ports",
        [true, false],
        |bin, mux| format!("frpc {} kill -9, tls mux={mux}", bin.version),
        killed_cell,
    );
}

/// frpc with the wrong token: fastpath refuses the Login, frpc reads the
/// reason from LoginResp and, with loginFailExit, exits non-zero.
fn wrong_token_cell(bin: &FrpcBin, tls: bool, mux: bool) {
    let mut fp = Fastpath::start("", 1);
    let echo = Backend::echo().unwrap();
    let conf = FrpcConf {
        server: fp.addr,
        token: "wrong-token".into(),
        transport: Transport {
            tls,
            mux,
            legacy_first_byte: false,
            v2: false,
        },
        local: echo.addr(),
        proxies: vec![ProxyConf {
            name: "never".into(),
            remote_port: free_port(),
            enc: false,
            comp: false,
        }],
    };
    let mut frpc = Frpc::start(bin, &conf);
    let code = frpc.daemon.wait_exit(Duration::from_secs(15));
    // frpc before 0.53 exits with status 0 even when the first login fails
    // (upstream fatedier/frp#3740 made it 1).
    let nonzero = bin.release >= (0, 53);
    assert!(
        matches!(code, Some(c) if c != 0 || !nonzero),
        "expected frpc to exit{}, got {code:?}{}",
        if nonzero { " non-zero" } else { "" },
        logs(&fp, &frpc)
    );
    assert!(
        fp.daemon.wait_log("login refused", Duration::from_secs(2)),
        "fastpath did not log the refusal{}",
        logs(&fp, &frpc)
    );
    // frpc's own words differ by version ("login to server failed: …" in
    // 0.52, "login to the server failed: …" later); the reason is ours.
    assert!(
        frpc.daemon
            .log()
            .iter()
            .any(|l| l.contains("login to") && l.contains("token in login doesn't match")),
        "frpc's log does not carry the token error from LoginResp{}",
        logs(&fp, &frpc)
    );
    assert!(fp.daemon.alive(), "fastpath died");
}

#[test]
fn wrong_token_makes_frpc_exit() {
    each_frpc_cell(
        "wrong_token_makes_frpc_exit",
        [(true, true), (true, false), (false, true), (false, false)],
        |bin, (tls, mux)| format!("frpc {} wrong token, tls={tls} mux={mux}", bin.version),
        |bin, (tls, mux)| wrong_token_cell(bin, tls, mux),
    );
}
