//! The frp generators (login storm, registered proxies) against the real
//! fastpath binary on loopback.
//!
//! The binary belongs to another package, so Cargo does not build it for
//! `cargo test -p totoro-bench`: it is looked up next to this test's own
//! target directory (`cargo test --workspace` builds it; otherwise run
//! `cargo build -p totoro-fastpath` first, same profile and target dir).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench::load::login::{self, LoginOpts};
use bench::load::proxies::{self, ProxiesOpts};
use bench::load::Percentiles;
use bench::proc::{free_port, wait_listening, Daemon};

const TOKEN: &str = "generators-token";

/// One test at a time: one of them counts this process's threads, and a
/// 2-core machine is loaded enough by one server and one generator.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/<profile>/fastpath`, from this test's `target/<profile>/deps/…`.
fn fastpath_bin() -> PathBuf {
    bench::harness::systems::sibling_binary("fastpath").unwrap_or_else(|| {
        panic!(
            "the fastpath binary is not next to {:?}: run `cargo build -p totoro-fastpath` \
             (same profile and CARGO_TARGET_DIR as the tests) first",
            std::env::current_exe().ok()
        )
    })
}

/// A fastpath on 127.0.0.1 with one worker; removes its files on drop.
struct Server {
    daemon: Daemon,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    /// `extra` is more TOML. Without `allowPorts`, remotePort 0 gets a
    /// port from 10000–60000.
    fn start(extra: &str) -> Server {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("totoro-bench-gen-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("fastpath.toml");
        std::fs::write(
            &cfg,
            format!(
                "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nauth.token = \"{TOKEN}\"\n\
                 log.level = \"info\"\n{extra}\n"
            ),
        )
        .unwrap();
        let daemon = Daemon::spawn(
            &fastpath_bin(),
            &["-c", cfg.to_str().unwrap(), "--workers", "1"],
        )
        .expect("start fastpath");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            wait_listening(addr, Duration::from_secs(10)),
            "fastpath did not start: {:?}",
            daemon.log()
        );
        Server { daemon, addr, dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Threads of this process, from /proc/self/status.
fn threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/self/status")
}

fn assert_ordered(l: Percentiles) {
    assert!(
        l.p50_us >= 1 && l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.max_us,
        "{l:?}"
    );
}

#[test]
fn login_storm_logs_in_and_leaves_no_threads() {
    let _g = serial();
    let s = Server::start("");
    let before = threads();
    // frpc's defaults less TLS (mux), then the other transport (TLS, no
    // mux), so both ways a client ends are exercised.
    for (tls, mux) in [(false, true), (true, false)] {
        let r = login::run(
            s.addr,
            LoginOpts {
                threads: 2,
                duration: Duration::from_millis(700),
                token: TOKEN.into(),
                tls,
                mux,
                timeout: Duration::from_secs(5),
            },
        );
        assert_eq!(
            (r.failures, r.refused),
            (0, 0),
            "tls={tls} mux={mux}: {r:?}"
        );
        assert!(r.logins > 0 && r.logins_per_sec > 0.0, "{r:?}");
        assert_ordered(r.latency);
        assert!(r.duration_s >= 0.7 && r.duration_s < 3.0, "{r:?}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["logins"], r.logins);
        assert_eq!(json["p50_us"], r.latency.p50_us);
    }
    // Killed clients end their threads; mux timers notice within 0.5 s.
    let end = Instant::now() + Duration::from_secs(5);
    while threads() > before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        threads() <= before,
        "{} threads left, {before} before the storm",
        threads()
    );
}

#[test]
fn wrong_token_is_refused() {
    let _g = serial();
    // A wrong token never identifies, so each attempt spends a pre-auth
    // rate token. Runs of this storm that failed (in .ci/run, 2 threads,
    // 300 ms) stopped at exactly 1024 refusals and the rest failed as
    // closed connections, which is how the gate turns a source away. The
    // gate has tests of its own (hostile.rs); this one is about the
    // LoginResp refusal, so the gate is out of its way.
    let s = Server::start(
        "fastpath.preAuthRate = 1000000\nfastpath.preAuthPerSource = 1048576\nfastpath.preAuthPerWorker = 16777216",
    );
    let r = login::run(
        s.addr,
        LoginOpts {
            threads: 2,
            duration: Duration::from_millis(300),
            token: "not-the-token".into(),
            ..LoginOpts::default()
        },
    );
    assert_eq!((r.logins, r.failures), (0, 0), "{r:?}");
    assert!(r.refused > 0, "{r:?}");
    assert_eq!(r.latency, Percentiles::default());
}

#[test]
fn sixty_proxies_register_and_are_measured() {
    let _g = serial();
    let s = Server::start("");
    let r = proxies::run(
        s.addr,
        ProxiesOpts {
            clients: 3,
            proxies_per_client: 20,
            token: TOKEN.into(),
            pid_to_measure: Some(s.daemon.pid()),
            settle: Duration::from_millis(300),
            ..ProxiesOpts::default()
        },
    )
    .unwrap();
    assert_eq!(
        (r.registered, r.failed, r.logins_failed),
        (60, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.first_error, None);
    let (before, after) = (r.rss_before_kib.unwrap(), r.rss_after_kib.unwrap());
    assert!(after >= before, "{r:?}");
    assert!(r.bytes_per_proxy.is_some_and(|b| b >= 0.0), "{r:?}");
    assert!(r.register_s > 0.0, "{r:?}");
}

#[test]
fn proxies_past_the_allowed_ports_are_counted_as_failed() {
    let _g = serial();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let allow: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ single = {p} }}"))
        .collect();
    let s = Server::start(&format!("allowPorts = [{}]", allow.join(", ")));
    let r = proxies::run(
        s.addr,
        ProxiesOpts {
            clients: 2,
            proxies_per_client: 4,
            token: TOKEN.into(),
            settle: Duration::ZERO,
            ..ProxiesOpts::default()
        },
    )
    .unwrap();
    assert_eq!(
        (r.registered, r.failed, r.logins_failed),
        (5, 3, 0),
        "{r:?}"
    );
    let e = r.first_error.as_deref().unwrap_or_default();
    assert!(e.contains("no available port"), "{r:?}");
    assert_eq!(r.rss_before_kib, None);
    // The run closed its clients, so the server frees all five ports.
    let again = ProxiesOpts {
        clients: 1,
        proxies_per_client: 5,
        token: TOKEN.into(),
        settle: Duration::ZERO,
        ..ProxiesOpts::default()
    };
    let end = Instant::now() + Duration::from_secs(5);
    let mut r = proxies::run(s.addr, again.clone()).unwrap();
    while r.registered < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        r = proxies::run(s.addr, again.clone()).unwrap();
    }
    assert_eq!((r.registered, r.failed), (5, 0), "{r:?}");
}
