//! Issue 19: every byte relayed through a tenant's or an invite's proxy is
//! reported exactly once, whatever ends the session. Each test drives the
//! real `slowpath up --fastpath-config` (with `[etcd]` and a
//! `trafficReportUrl` at a test endpoint), a real etcd holding the tenant,
//! and the in-repo frp client, on SQLite and PostgreSQL.
//!
//! Bytes are counted as the far ends see them. A finished transfer is an
//! echo of a known length (both directions). A transfer cut short is a
//! download (backend → visitor only): the fastpath counts a chunk once its
//! write to the visitor's socket succeeded, and every way it ends the
//! visitor's socket is a FIN after the buffered bytes, so the bytes the
//! visitor reads up to EOF are the bytes relayed.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bench::backend::Backend as Echo;
use bench::client::{Client, ClientOpts};
use bench::proc::free_port;
use harness::echo;
use harness::etcd::Etcd;
use harness::report::report_server;
use harness::{each_backend, Backend, Slowpath};
use serde_json::{json, Value};

const REGION: &str = "chengdu";
/// The download every cut-short transfer starts (3 MiB, ~3 s at "1MB").
const DOWNLOAD: u64 = 3 << 20;
/// An echo that is not a whole number of report intervals.
const ECHO: usize = (5 << 19) + 123;
/// How long reports may take to add up after a session ended.
const REPORT_WAIT: Duration = Duration::from_secs(15);

/// One node: etcd, `slowpath up` with an frps.toml, the report endpoint.
struct Node {
    sp: Slowpath,
    frp: SocketAddr,
    reports: Arc<std::sync::Mutex<Vec<Value>>>,
    etcd: Etcd,
    dir: PathBuf,
}

impl Node {
    /// A node whose frps.toml adds `transport` (lines of `[transport]`);
    /// None when etcd is not installed (the skip is printed).
    fn start(test: &str, backend: &Backend, transport: &str) -> Option<Node> {
        let etcd = Etcd::start(test)?;
        let (url, reports) = report_server();
        let dir = std::env::temp_dir().join(format!("totoro-t19-{test}-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let cfg = dir.join("frps.toml");
        std::fs::write(
            &cfg,
            format!(
                "bindPort = {port}\n\n[transport]\n{transport}\n\n[etcd]\nendpoints = [\"{}\"]\nregion = \"{REGION}\"\ntrafficReportUrl = \"{url}\"\n",
                etcd.endpoint()
            ),
        )
        .unwrap();
        let sp = Slowpath::up(backend, &["--fastpath-config", cfg.to_str().unwrap()]);
        let frp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            bench::proc::wait_listening(frp, Duration::from_secs(20)),
            "fastpath did not start:\n{}",
            sp.log()
        );
        Some(Node {
            sp,
            frp,
            reports,
            etcd,
            dir,
        })
    }

    /// Puts `token` into etcd with a 1 MB report interval, plus `extra`.
    fn put_tenant(&self, token: &str, extra: Value) {
        let mut v = json!({
            "token": token,
            "region": REGION,
            "enabled": true,
            "trafficReportIntervalMB": 1,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        self.etcd
            .put(&format!("/frp/tokens/{token}"), &v.to_string());
    }

    /// Logs in as `token`, retrying while the node catches up with etcd.
    fn login(&self, opts: ClientOpts) -> Client {
        let t0 = Instant::now();
        loop {
            match Client::login(opts.clone()) {
                Ok(c) => return c,
                Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{}: no login within 10 s: {e}", opts.token),
            }
        }
    }

    fn stats(&self) -> Value {
        let (st, v) = self.sp.admin_call("GET", "/api/v1/admin/stats", None);
        assert_eq!(st, 200, "{v}");
        v
    }

    /// The reports received for `token`'s `proxy`.
    fn reports_of(&self, token: &str, proxy: &str) -> Vec<Value> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["token"] == token && v["proxyName"] == proxy)
            .cloned()
            .collect()
    }

    /// trafficIn + trafficOut over `token`'s `proxy`'s reports.
    fn reported(&self, token: &str, proxy: &str) -> u64 {
        sum(&self.reports_of(token, proxy))
    }

    /// Waits until the reports of `token`'s `proxy` add up to `moved`
    /// bytes, then a moment more: they must still equal it (nothing
    /// reported twice), no report may be a repeat of another, and nothing
    /// may be left unreported in the database.
    fn assert_reported_exactly(&self, token: &str, proxy: &str, moved: u64) {
        let t0 = Instant::now();
        while self.reported(token, proxy) < moved && t0.elapsed() < REPORT_WAIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let got = self.reports_of(token, proxy);
        assert_eq!(
            sum(&got),
            moved,
            "{token}/{proxy}: the reports do not add up to the {moved} bytes relayed \
             ({:?} after the session ended); reports: {got:#?}\npending: {:?}\nlog:\n{}",
            t0.elapsed(),
            self.pending(token),
            self.sp.log()
        );
        assert_no_repeats(&got);
        for v in &got {
            assert_eq!(v["region"], REGION, "{v}");
            assert!(v["timestamp"].as_i64().unwrap() > 1_700_000_000, "{v}");
        }
        assert_eq!(
            self.pending(token),
            Vec::<String>::new(),
            "{token}: bytes left unreported in traffic_report_pending"
        );
        eprintln!("{token}/{proxy}: {} reports, {moved} bytes", got.len());
    }

    /// The database this node's slowpath uses.
    fn db_url(&self) -> String {
        self.sp.database_url().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rw",
                self.sp.dir.join("totoro.db").display()
            )
        })
    }

    /// `token`'s rows in traffic_report_pending, as "proxy:in:out".
    fn pending(&self, token: &str) -> Vec<String> {
        harness::query_strings(
            &self.db_url(),
            &format!(
                "SELECT proxy || ':' || CAST(bytes_in AS TEXT) || ':' || CAST(bytes_out AS TEXT) \
                 FROM traffic_report_pending WHERE token = '{token}'"
            ),
        )
    }

    /// Waits until a periodic sample has left bytes of `token` pending
    /// (below the report interval); returns them (in + out).
    fn wait_pending(&self, token: &str, limit: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            let rows = self.pending(token);
            if let Some(row) = rows.first() {
                let parts: Vec<&str> = row.rsplitn(3, ':').collect();
                return parts[0].parse::<u64>().unwrap() + parts[1].parse::<u64>().unwrap();
            }
            assert!(
                t0.elapsed() < limit,
                "{token}: no periodic sample within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM or SIGKILL the fastpath `up` runs; returns its pid.
    fn signal_fastpath(&self, sig: i32) -> i32 {
        let pid = harness::instance_fastpath(&self.sp.shm).expect("a fastpath holds the lock");
        // SAFETY: signalling the process the kernel names as the lock holder.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        pid
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sum(reports: &[Value]) -> u64 {
    reports
        .iter()
        .map(|v| v["trafficIn"].as_u64().unwrap() + v["trafficOut"].as_u64().unwrap())
        .sum()
}

/// No report is another one sent again.
fn assert_no_repeats(reports: &[Value]) {
    for (i, a) in reports.iter().enumerate() {
        for b in &reports[i + 1..] {
            assert_ne!(a, b, "a report was sent twice: {reports:#?}");
        }
    }
}

/// A backend that writes `total` bytes to each connection and closes it,
/// `pace` bytes every 10 ms when set.
fn source(total: u64, pace: Option<usize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let step = pace.unwrap_or(64 << 10);
                let buf: Vec<u8> = (0..step).map(|i| (i % 251) as u8).collect();
                let mut left = total;
                while left > 0 {
                    let n = left.min(step as u64) as usize;
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                    if pace.is_some() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        }
    });
    addr
}

/// A visitor reading the tunnel at `port` until it ends.
struct Download {
    read: Arc<AtomicU64>,
    t: JoinHandle<u64>,
}

impl Download {
    fn start(port: u16) -> Download {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let read = Arc::new(AtomicU64::new(0));
        let r = read.clone();
        let t = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        r.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => panic!(
                        "the download ended with {e} after {} bytes, not with a FIN",
                        r.load(Ordering::Relaxed)
                    ),
                }
            }
            r.load(Ordering::Relaxed)
        });
        Download { read, t }
    }

    /// A visitor of a new proxy of `c` named `proxy` whose backend is a
    /// [`source`] of [`DOWNLOAD`] bytes (`pace` as there).
    fn through(c: &Client, proxy: &str, pace: Option<usize>) -> Download {
        let port = c.add_plain_proxy(proxy, 0, source(DOWNLOAD, pace)).unwrap();
        Download::start(port)
    }

    /// Waits until the visitor has read `n` bytes.
    fn wait_for(&self, n: u64) {
        let t0 = Instant::now();
        while self.read.load(Ordering::Relaxed) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "only {} bytes read",
                self.read.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The bytes read when the tunnel ended.
    fn finish(self) -> u64 {
        self.t.join().unwrap()
    }
}

/// Waits until `c`'s session has ended.
fn wait_closed(c: &Client, what: &str) {
    let t0 = Instant::now();
    while !c.is_closed() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A cut-short download: the tunnel ended before the whole of it.
fn assert_cut_short(got: u64) {
    assert!(
        got > 0 && got < DOWNLOAD,
        "{got} of {DOWNLOAD} bytes: the session was to end mid-transfer"
    );
}

/// A TCP forwarder for one client connection that can end it with a reset
/// towards the server (SO_LINGER 0, like a killed host's stack).
struct Resetter {
    addr: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl Resetter {
    fn start(to: SocketAddr) -> Resetter {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let kill = Arc::new(AtomicBool::new(false));
        let k = kill.clone();
        std::thread::spawn(move || {
            let Ok((client, _)) = l.accept() else { return };
            let server = TcpStream::connect(to).unwrap();
            let client = Arc::new(client);
            let server = Arc::new(server);
            for s in [&client, &server] {
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                s.set_nodelay(true).unwrap();
            }
            let pipe = |from: Arc<TcpStream>, to: Arc<TcpStream>, kill: Arc<AtomicBool>| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while !kill.load(Ordering::Acquire) {
                        match (&*from).read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if (&*to).write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                })
            };
            let a = pipe(client.clone(), server.clone(), k.clone());
            let b = pipe(server.clone(), client.clone(), k.clone());
            let _ = a.join();
            let _ = b.join();
            if k.load(Ordering::Acquire) {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on a socket this thread owns, with a
                // linger struct of the size given.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&*server),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const libc::linger as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
            // The last handles go here: with SO_LINGER 0 the close is a RST.
            drop(server);
            drop(client);
        });
        Resetter { addr, kill }
    }

    fn reset(&self) {
        self.kill.store(true, Ordering::Release);
    }
}

// 1. frpc closes the proxy (CloseProxy) after a finished transfer, once a
//    periodic sample has taken the last bytes: the closing report carries
//    bytes of an earlier sample.
fn proxy_closed(b: Backend) {
    let Some(n) = Node::start("t19_closeproxy", &b, "") else {
        return;
    };
    let token = "t19_closeproxy";
    n.put_tenant(token, json!({}));
    let echo_srv = Echo::echo().unwrap();
    let c = n.login(ClientOpts::new(n.frp, token));
    let port = c.add_plain_proxy("web", 0, echo_srv.addr()).unwrap();
    let moved = echo(port, ECHO);
    let pending = n.wait_pending(token, Duration::from_secs(8));
    eprintln!("{pending} bytes pending before CloseProxy");
    c.close_proxy("web").unwrap();
    n.assert_reported_exactly(token, "web", moved);
    assert!(!c.is_closed());
    c.kill();
}

#[test]
fn close_proxy_reports_every_byte_once() {
    each_backend("t19_close_proxy", proxy_closed);
}

// 2. frpc exits cleanly (close_notify and FIN) after transfers on two
//    proxies: one whose last bytes a periodic sample already took (they
//    wait in the database for the closing mark), one whose last bytes no
//    sample has taken yet.
fn client_exits(b: Backend) {
    let Some(n) = Node::start("t19_exit", &b, "") else {
        return;
    };
    let token = "t19_exit";
    n.put_tenant(token, json!({}));
    let echo_srv = Echo::echo().unwrap();
    let c = n.login(ClientOpts::new(n.frp, token));
    let sampled = c.add_plain_proxy("sampled", 0, echo_srv.addr()).unwrap();
    let fresh = c.add_plain_proxy("fresh", 0, echo_srv.addr()).unwrap();
    let moved_sampled = echo(sampled, ECHO);
    n.wait_pending(token, Duration::from_secs(8));
    let moved_fresh = echo(fresh, ECHO);
    c.close();
    wait_closed(&c, "the server did not hang up after frpc's FIN");
    n.assert_reported_exactly(token, "sampled", moved_sampled);
    n.assert_reported_exactly(token, "fresh", moved_fresh);
}

#[test]
fn client_exit_reports_every_byte_once() {
    each_backend("t19_client_exit", client_exits);
}

// 3. frpc is killed: its connection is reset mid-transfer.
fn client_killed(b: Backend) {
    let Some(n) = Node::start("t19_killed", &b, "") else {
        return;
    };
    let token = "t19_killed";
    n.put_tenant(token, json!({"bandwidthLimit": "1MB"}));
    // The forwarder carries one connection: log in directly first, until
    // the node has the tenant.
    n.login(ClientOpts::new(n.frp, token)).kill();
    let fwd = Resetter::start(n.frp);
    let c = Client::login(ClientOpts::new(fwd.addr, token)).unwrap();
    // Paced below the limit: what frpc has not sent when its connection
    // goes is not buffered on the node already.
    let dl = Download::through(&c, "dl", Some(8 << 10));
    dl.wait_for(3 << 19);
    fwd.reset();
    let got = dl.finish();
    assert_cut_short(got);
    n.assert_reported_exactly(token, "dl", got);
    c.kill();
}

#[test]
fn client_reset_mid_transfer_reports_every_byte_once() {
    each_backend("t19_client_reset", client_killed);
}

// 4. The session times out: frpc stops sending Pings mid-transfer.
fn heartbeat_lapses(b: Backend) {
    let Some(n) = Node::start("t19_heartbeat", &b, "heartbeatTimeout = 1") else {
        return;
    };
    let token = "t19_heartbeat";
    n.put_tenant(token, json!({"bandwidthLimit": "1MB"}));
    let mut o = ClientOpts::new(n.frp, token);
    o.heartbeat = Some(Duration::from_millis(200));
    let c = n.login(o);
    let dl = Download::through(&c, "dl", None);
    dl.wait_for(1 << 19);
    assert!(!c.is_closed(), "a heartbeating session timed out");
    c.stop_heartbeat();
    wait_closed(&c, "the session outlived its heartbeat timeout");
    // The relay may outlive its session (it then reports its own
    // remainder); the timeout must have come while it was running.
    let at_timeout = dl.read.load(Ordering::Relaxed);
    let got = dl.finish();
    assert!(
        at_timeout < got || got < DOWNLOAD,
        "the session timed out only after the transfer ({at_timeout} of {got} bytes)"
    );
    n.assert_reported_exactly(token, "dl", got);
}

#[test]
fn heartbeat_timeout_reports_every_byte_once() {
    each_backend("t19_heartbeat", heartbeat_lapses);
}

/// 5 and 6: the tenant's etcd record changes mid-transfer (`change` gets
/// the node and the token).
fn tenant_changes(b: Backend, name: &str, put: impl Fn(&Node, &str), change: impl Fn(&Node, &str)) {
    let Some(n) = Node::start(name, &b, "") else {
        return;
    };
    let token = name;
    put(&n, token);
    let c = n.login(ClientOpts::new(n.frp, token));
    let dl = Download::through(&c, "dl", None);
    dl.wait_for(3 << 19);
    change(&n, token);
    let got = dl.finish();
    assert_cut_short(got);
    wait_closed(&c, "the tenant's session survived");
    n.assert_reported_exactly(token, "dl", got);
}

#[test]
fn tenant_deleted_mid_transfer_reports_every_byte_once() {
    each_backend("t19_deleted", |b| {
        tenant_changes(b, "t19_deleted", put_in_etcd, |n, token| {
            n.etcd.delete(&format!("/frp/tokens/{token}"));
        })
    });
}

#[test]
fn tenant_disabled_mid_transfer_reports_every_byte_once() {
    each_backend("t19_disabled", |b| {
        tenant_changes(b, "t19_disabled", put_in_etcd, |n, token| {
            n.put_tenant(token, json!({"bandwidthLimit": "1MB", "enabled": false}));
        })
    });
}

fn put_in_etcd(n: &Node, token: &str) {
    n.put_tenant(token, json!({"bandwidthLimit": "1MB"}));
}

/// The tenant's record through the API (kept in the database).
fn api_record(token: &str, enabled: bool) -> Value {
    json!({
        "token": token,
        "region": REGION,
        "enabled": enabled,
        "trafficReportIntervalMB": 1,
        "bandwidthLimit": "1MB",
    })
}

fn put_through_api(n: &Node, token: &str) {
    let (st, v) =
        n.sp.admin_call("POST", "/api/v1/tenants", Some(api_record(token, true)));
    assert_eq!(st, 201, "{v}");
}

#[test]
fn tenant_deleted_through_the_api_mid_transfer_reports_every_byte_once() {
    each_backend("t19_api_deleted", |b| {
        tenant_changes(b, "t19_api_deleted", put_through_api, |n, token| {
            let (st, v) =
                n.sp.admin_call("DELETE", &format!("/api/v1/tenants/{token}"), None);
            assert!(st == 200 || st == 204, "{st} {v}");
        })
    });
}

#[test]
fn tenant_disabled_through_the_api_mid_transfer_reports_every_byte_once() {
    each_backend("t19_api_disabled", |b| {
        tenant_changes(b, "t19_api_disabled", put_through_api, |n, token| {
            let (st, v) = n.sp.admin_call(
                "PUT",
                &format!("/api/v1/tenants/{token}"),
                Some(api_record(token, false)),
            );
            assert_eq!(st, 200, "{v}");
        })
    });
}

// 7. A traffic quota closes the session; the quota's usage is the same
//    exact count.
fn quota_closes(b: Backend) {
    let Some(n) = Node::start("t19_quota", &b, "") else {
        return;
    };
    let token = "t19_quota";
    n.put_tenant(
        token,
        json!({"bandwidthLimit": "1MB", "trafficQuota": "1MB", "quotaPeriod": "day", "overQuota": "close"}),
    );
    let c = n.login(ClientOpts::new(n.frp, token));
    let dl = Download::through(&c, "dl", None);
    let got = dl.finish();
    assert_cut_short(got);
    wait_closed(&c, "the over-quota session survived");
    n.assert_reported_exactly(token, "dl", got);
    let usage = harness::query_strings(
        &n.db_url(),
        &format!("SELECT CAST(SUM(bytes) AS TEXT) FROM quota_usage WHERE token = '{token}'"),
    );
    assert_eq!(
        usage,
        vec![got.to_string()],
        "quota usage is the bytes relayed"
    );
}

#[test]
fn quota_close_reports_every_byte_once() {
    each_backend("t19_quota", quota_closes);
}

// 8. The fastpath is stopped (SIGTERM) mid-transfer; `up` starts another.
fn fastpath_stopped(b: Backend) {
    let Some(n) = Node::start("t19_sigterm", &b, "") else {
        return;
    };
    let token = "t19_sigterm";
    n.put_tenant(token, json!({"bandwidthLimit": "1MB"}));
    let c = n.login(ClientOpts::new(n.frp, token));
    let dl = Download::through(&c, "dl", None);
    dl.wait_for(3 << 19);
    let pid = n.signal_fastpath(libc::SIGTERM);
    let got = dl.finish();
    assert_cut_short(got);
    wait_closed(&c, "the session outlived the fastpath");
    n.assert_reported_exactly(token, "dl", got);
    let restarted = harness::instance_fastpath(&n.sp.shm);
    assert!(
        restarted.is_some() && restarted != Some(pid),
        "up did not start another fastpath"
    );
}

#[test]
fn fastpath_sigterm_mid_transfer_reports_every_byte_once() {
    each_backend("t19_sigterm", fastpath_stopped);
}

// 9. The fastpath is SIGKILLed mid-transfer: no closing mark comes, and the
//    slowpath reports what the rings delivered once the producer is gone.
fn fastpath_killed(b: Backend) {
    let Some(n) = Node::start("t19_sigkill", &b, "") else {
        return;
    };
    let token = "t19_sigkill";
    // Slow enough that a periodic sample leaves bytes pending (below the
    // 1 MB interval) before the kill.
    n.put_tenant(token, json!({"bandwidthLimit": "100KB"}));
    let c = n.login(ClientOpts::new(n.frp, token));
    let dl = Download::through(&c, "dl", None);
    let pending = n.wait_pending(token, Duration::from_secs(8));
    let before = n.reported(token, "dl");
    n.signal_fastpath(libc::SIGKILL);
    let got = dl.finish();
    assert_cut_short(got);
    wait_closed(&c, "the session outlived the fastpath");
    let t0 = Instant::now();
    while !n.pending(token).is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        n.pending(token),
        Vec::<String>::new(),
        "bytes the rings delivered were left unreported {:?} after the kill\nlog:\n{}",
        t0.elapsed(),
        n.sp.log()
    );
    let flushed = &n.stats()["events"]["flushed_without_close"];
    assert!(
        flushed.as_u64().unwrap_or(0) >= 1,
        "stats do not say the slowpath flushed without a closing mark: {flushed}"
    );
    let t0 = Instant::now();
    while n.reported(token, "dl") < before + pending && t0.elapsed() < REPORT_WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let reports = n.reports_of(token, "dl");
    let reported = sum(&reports);
    eprintln!("sigkill: {before} reported before, {pending} pending, {reported} after, {got} read");
    assert!(
        reported >= before + pending,
        "{reported} reported, less than the {before} reported and {pending} pending before the kill: {reports:#?}"
    );
    assert!(
        reported <= got,
        "{reported} reported, more than the {got} bytes the visitor read"
    );
    assert_no_repeats(&reports);
}

#[test]
fn fastpath_sigkill_mid_transfer_flushes_what_the_rings_delivered() {
    each_backend("t19_sigkill", fastpath_killed);
}

// 11. The fastpath is upgraded mid-transfer (SIGUSR2: it starts itself
//     again and hands its sockets over): the transfer is not cut, the
//     session then moves to the new process, and the old one's rings are
//     still read while it drains, so every byte is reported once.
fn fastpath_upgraded(b: Backend) {
    let sock = std::env::temp_dir().join(format!("totoro-t19-up-{}.sock", free_port()));
    let fastpath = format!(
        "[fastpath]\nupgradeSocket = \"{}\"\ndrainSecs = 60\n",
        sock.display()
    );
    let Some(n) = Node::start("t19_upgrade", &b, &fastpath) else {
        return;
    };
    let token = "t19_upgrade";
    n.put_tenant(token, json!({"bandwidthLimit": "1MB"}));
    let c = n.login(ClientOpts::new(n.frp, token));
    let dl = Download::through(&c, "dl", None);
    dl.wait_for(1 << 20);
    let old = n.signal_fastpath(libc::SIGUSR2);
    let got = dl.finish();
    assert_eq!(got, DOWNLOAD, "the transfer across the upgrade was cut");
    wait_closed(&c, "the session did not move once its transfer ended");
    n.assert_reported_exactly(token, "dl", got);
    let new = harness::instance_fastpath(&n.sp.shm);
    assert!(
        new.is_some() && new != Some(old),
        "the new fastpath does not hold the instance: {new:?}\n{}",
        n.sp.log()
    );
    // The client logs in again, to the new process.
    let c2 = n.login(ClientOpts::new(n.frp, token));
    let port = c2
        .add_plain_proxy("again", 0, source(ECHO as u64, None))
        .unwrap();
    assert_eq!(Download::start(port).finish(), ECHO as u64);
    c2.close();
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn fastpath_upgrade_mid_transfer_reports_every_byte_once() {
    each_backend("t19_upgrade", fastpath_upgraded);
}

// 10. An invite's proxy: its traffic goes to the node's totals (stats) and
//     the per-invite table; they must equal the bytes moved when the
//     client exits, and when the invite is revoked mid-transfer.
fn invite_traffic(b: Backend) {
    let sp = Slowpath::up(&b, &[]);
    sp.wait_frp();
    let node = sp.local_node.clone();
    let base = bench::proc::free_port_run(40);
    let (st, v) = sp.admin_call(
        "PATCH",
        &format!("/api/v1/admin/nodes/{node}"),
        Some(json!({ "public": false, "port_pool": format!("{}-{}", base, base + 29) })),
    );
    assert_eq!(st, 200, "{v}");
    let invite = |pool: (u16, u16)| -> (String, ClientOpts) {
        let inv = sp.admin_invite(json!({
            "max_uses": 5,
            "ttl_s": 3600,
            "scope": { "proxy_types": ["tcp"], "port_pool": format!("{}-{}", pool.0, pool.1) },
        }));
        let (st, resolved) = sp.resolve(inv["code"].as_str().unwrap());
        assert_eq!(st, 200, "{resolved}");
        let o = harness::ticket_opts(&sp, &resolved);
        (inv["id"].as_str().unwrap().to_owned(), o)
    };
    let login = |o: &ClientOpts| -> Client {
        let t0 = Instant::now();
        loop {
            match harness::login(o) {
                Ok(c) => return c,
                Err(_) if t0.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(r) => panic!("ticket login: {r}"),
            }
        }
    };
    let db_url = sp
        .database_url()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rw", sp.dir.join("totoro.db").display()));
    // Stats' node totals and the invite's own rows.
    let totals = |invite_id: &str| -> (u64, u64) {
        let (st, v) = sp.admin_call("GET", "/api/v1/admin/stats", None);
        assert_eq!(st, 200, "{v}");
        let node_total = v["traffic"]["bytes_in"].as_u64().unwrap()
            + v["traffic"]["bytes_out"].as_u64().unwrap();
        let invite_total: u64 = harness::query_strings(
            &db_url,
            &format!(
                "SELECT CAST(COALESCE(SUM(bytes_in + bytes_out), 0) AS TEXT) FROM proxy_traffic \
                 WHERE invite_id = '{invite_id}'"
            ),
        )[0]
        .parse()
        .unwrap();
        (node_total, invite_total)
    };
    let assert_totals = |invite_id: &str, node_want: u64, invite_want: u64, what: &str| {
        let t0 = Instant::now();
        while totals(invite_id).0 < node_want && t0.elapsed() < REPORT_WAIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            totals(invite_id),
            (node_want, invite_want),
            "{what}: (stats traffic, the invite's proxy_traffic) are not the bytes moved \
             ({:?} after the session ended)\nlog:\n{}",
            t0.elapsed(),
            sp.log()
        );
    };

    let revoke = |id: &str| {
        let (st, v) = sp.admin_call("POST", &format!("/api/v1/admin/invites/{id}/revoke"), None);
        assert_eq!(st, 200, "{v}");
    };

    // The client exits after a finished transfer.
    let echo_srv = Echo::echo().unwrap();
    let (first, o1) = invite((base, base + 9));
    let c = login(&o1);
    let port = c.add_plain_proxy("inv-web", 0, echo_srv.addr()).unwrap();
    let moved = echo(port, ECHO);
    c.close();
    wait_closed(&c, "the server did not hang up after frpc's FIN");
    assert_totals(&first, moved, moved, "client exited");

    // The invite is revoked mid-transfer.
    let (second, o2) = invite((base + 10, base + 19));
    let c = login(&o2);
    let dl = Download::through(&c, "inv-dl", Some(16 << 10));
    dl.wait_for(3 << 19);
    revoke(&second);
    let got = dl.finish();
    assert_cut_short(got);
    wait_closed(&c, "the revoked invite's session survived");
    assert_totals(&second, moved + got, got, "invite revoked");

    // Without TLS and yamux, one session's relays spread over the workers
    // (fastpath.spreadRelays): their bytes are counted into the proxy from
    // another worker and still reported once, and a revocation ends the
    // relays running there too.
    let (third, mut o3) = invite((base + 20, base + 29));
    o3.tls = false;
    o3.mux = false;
    let c = login(&o3);
    let port = c.add_plain_proxy("inv-spread", 0, echo_srv.addr()).unwrap();
    let echoes: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || echo(port, ECHO)))
        .collect();
    let spread: u64 = echoes.into_iter().map(|t| t.join().unwrap()).sum();
    let dl_port = c
        .add_plain_proxy("inv-spread-dl", 0, source(DOWNLOAD, Some(16 << 10)))
        .unwrap();
    let dls: Vec<Download> = (0..4).map(|_| Download::start(dl_port)).collect();
    for d in &dls {
        d.wait_for(1 << 19);
    }
    revoke(&third);
    let cut: u64 = dls
        .into_iter()
        .map(|d| {
            let got = d.finish();
            assert_cut_short(got);
            got
        })
        .sum();
    wait_closed(&c, "the revoked invite's spread session survived");
    assert_totals(
        &third,
        moved + got + spread + cut,
        spread + cut,
        "spread relays, invite revoked",
    );
}

#[test]
fn invite_traffic_adds_up_after_exit_and_revocation() {
    each_backend("t19_invite", invite_traffic);
}
