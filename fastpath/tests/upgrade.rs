//! Upgrades that drop no transfer (issue 17): `fastpath upgrade` starts the
//! binary on disk again, hands it the listening sockets, and the old
//! process serves its live sessions until they have nothing in flight;
//! a new binary that fails to start leaves the old one serving; a second
//! upgrade while one is under way is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench::backend::Backend;
use bench::client::Client;
use bench::proc::{free_port, wait_listening, Daemon};
use common::*;

/// Kills a process this test did not spawn (a successor) when dropped.
struct Pid(u32);

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid and a signal number.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not reaped) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// `fastpath upgrade -c cfg` with `bin`: (exit code, stdout, stderr).
fn upgrade(bin: &Path, cfg: &Path) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(["upgrade", "-c", cfg.to_str().unwrap()])
        .output()
        .expect("run fastpath upgrade");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn new_pid(stdout: &str) -> u32 {
    stdout
        .split_whitespace()
        .find_map(|w| w.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
}

/// Echoes `len` bytes through the proxy at `port` slowly (about `secs`).
fn slow_echo(port: u16, len: usize, secs: f64) -> std::thread::JoinHandle<(String, String)> {
    std::thread::spawn(move || {
        use sha2::{Digest, Sha256};
        use std::io::{Read, Write};
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut w = s.try_clone().unwrap();
        let chunk = 64 * 1024;
        let pause = Duration::from_secs_f64(secs / (len / chunk) as f64);
        let writer = std::thread::spawn(move || {
            let mut h = Sha256::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; chunk];
            for _ in 0..len / chunk {
                for b in buf.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b.copy_from_slice(&x.to_le_bytes());
                }
                h.update(&buf);
                w.write_all(&buf).unwrap();
                std::thread::sleep(pause);
            }
            hex::encode(h.finalize())
        });
        let mut r = s;
        r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut h = Sha256::new();
        let mut got = 0;
        let mut buf = vec![0u8; chunk];
        while got < len / chunk * chunk {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "the transfer was cut after {got} bytes");
            h.update(&buf[..n]);
            got += n;
        }
        (writer.join().unwrap(), hex::encode(h.finalize()))
    })
}

struct Setup {
    dir: PathBuf,
    bin: PathBuf,
    cfg: PathBuf,
    addr: std::net::SocketAddr,
}

fn setup(name: &str) -> Setup {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("totoro-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A copy of the binary, so that the test can replace it on disk.
    let bin = dir.join("fastpath");
    std::fs::copy(env!("CARGO_BIN_EXE_fastpath"), &bin).unwrap();
    let cfg = dir.join("fastpath.toml");
    std::fs::write(
        &cfg,
        format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nauth.token = \"{TOKEN}\"\nlog.level = \"info\"\nfastpath.workers = 2\nfastpath.drainSecs = 30\nfastpath.upgradeSocket = \"{}\"\n",
            dir.join("upgrade.sock").display()
        ),
    )
    .unwrap();
    Setup {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        dir,
        bin,
        cfg,
    }
}

/// Every process started from this test's directory (the successors an
/// upgrade made, which no `Daemon` owns) is killed when the test ends,
/// passed or failed: one left running would hold its ports and sessions
/// into the test binaries that run after this one.
impl Drop for Setup {
    fn drop(&mut self) {
        let needle = self.dir.to_string_lossy().into_owned();
        for _ in 0..20 {
            let Some(pid) = bench::netns::pid_with(&needle) else {
                break;
            };
            drop(Pid(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start a binary this test wrote. Another test thread that forks while
/// the file is still open for writing here holds it open until its child
/// execs (ETXTBSY, "Text file busy"): that passes, so try again.
fn spawn_copy(bin: &Path, args: &[&str]) -> Daemon {
    let mut tries = 0;
    loop {
        match Daemon::spawn(bin, args) {
            Ok(d) => return d,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("start {}: {e}", bin.display()),
        }
    }
}

/// A fastpath started from the copy in `setup`, a client logged in to it
/// and a TCP proxy of that client to an echo backend (its port).
fn serving(name: &str) -> (Setup, Daemon, Backend, Client, u16) {
    let s = setup(name);
    let old = spawn_copy(&s.bin, &["-c", s.cfg.to_str().unwrap()]);
    assert!(
        wait_listening(s.addr, Duration::from_secs(10)),
        "{:?}",
        old.log()
    );
    let echo = Backend::echo().unwrap();
    let client = login(s.addr);
    let port = tcp_proxy(&client, "web", 0, echo.addr(), false, false);
    (s, old, echo, client, port)
}

fn login(addr: std::net::SocketAddr) -> Client {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::login(bench::client::ClientOpts::new(addr, TOKEN)) {
            Ok(c) => return c,
            Err(e) if Instant::now() > end => panic!("login: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn an_upgrade_keeps_live_transfers_and_the_new_process_takes_the_port() {
    // The client is held: its session is the one that drains.
    let (s, mut old, echo, client, port) = serving("live");

    // A transfer of about 3 s, in flight across the upgrade.
    let transfer = slow_echo(port, 48 << 20, 3.0);
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = upgrade(&s.bin, &s.cfg);
    assert_eq!(
        code,
        0,
        "upgrade failed: {out} {err}\n{}",
        old.log().join("\n")
    );
    let successor = Pid(new_pid(&out));
    assert_ne!(successor.0, old.pid());
    assert!(alive(successor.0));
    // The old process drains: its session has a transfer in flight.
    assert!(
        old.alive(),
        "the old process left with a transfer in flight"
    );
    // New user connections still reach the proxy meanwhile.
    let (a, b) = echo_integrity(port, 1 << 20, 7);
    assert_eq!(a, b);
    let (sent, got) = transfer.join().unwrap();
    assert_eq!(sent, got, "the transfer across the upgrade was damaged");
    // Nothing in flight any more: the session is moved and the old
    // process exits long before drainSecs.
    assert!(
        old.wait_exit(Duration::from_secs(10)).is_some(),
        "the old process did not exit once drained:\n{}",
        old.log().join("\n")
    );
    let log = old.log().join("\n");
    assert!(log.contains("listeners handed over"), "{log}");
    assert!(log.contains("drained"), "{log}");
    // The client logs in again with its run_id, as frpc does, now to the
    // successor, and the same port serves through it.
    let mut o = bench::client::ClientOpts::new(s.addr, TOKEN);
    o.run_id = client.run_id().to_string();
    let again = Client::login(o).expect("log in again");
    let port2 = tcp_proxy(&again, "web", i64::from(port), echo.addr(), false, false);
    assert_eq!(port2, port);
    let (a, b) = echo_integrity(port, 4 << 20, 9);
    assert_eq!(a, b);
    drop(successor);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_binary_that_fails_to_start_leaves_the_old_one_serving_and_upgrades_do_not_overlap() {
    let (s, mut old, echo, client, port) = serving("fail");

    // A broken binary on disk: the upgrade fails, nothing changes.
    let good = s.dir.join("fastpath.good");
    std::fs::rename(&s.bin, &good).unwrap();
    std::fs::write(&s.bin, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&s.bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Other test threads' children that inherited the file open for
    // writing (until they exec) would make its start fail differently.
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = upgrade(&good, &s.cfg);
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("exited before taking over"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(old.alive());
    let (a, b) = echo_integrity(port, 1 << 20, 3);
    assert_eq!(
        a, b,
        "the old process stopped serving after a failed upgrade"
    );
    let fresh = Client::login(bench::client::ClientOpts::new(s.addr, TOKEN));
    assert!(fresh.is_ok(), "the old process stopped accepting logins");

    // Two upgrades that overlap, whatever the scheduling: the binary on
    // disk is now a script that says it started and holds the first
    // upgrade until the test has tried a second one, then runs the good
    // binary. (Two commands merely started together could run one after
    // the other on a loaded machine, and both win.)
    let started = s.dir.join("started");
    let go = s.dir.join("go");
    std::fs::write(
        &s.bin,
        format!(
            "#!/bin/sh\ntouch {}\ni=0\nwhile [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\nexec {} \"$@\"\n",
            started.display(),
            go.display(),
            good.display()
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let first = {
        let (good, cfg) = (good.clone(), s.cfg.clone());
        std::thread::spawn(move || upgrade(&good, &cfg))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(
            Instant::now() < deadline,
            "the first upgrade never started its binary"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = upgrade(&good, &s.cfg);
    assert_eq!(
        code, 1,
        "a second upgrade while one is under way: {out} {err}"
    );
    assert!(err.contains("already under way"), "{out} {err}");
    std::fs::write(&go, "").unwrap();
    let (code, out, err) = first.join().unwrap();
    assert_eq!(code, 0, "the first upgrade: {out} {err}");
    let successor = Pid(new_pid(&out));
    assert!(
        old.wait_exit(Duration::from_secs(10)).is_some(),
        "{:?}",
        old.log()
    );
    let again = login(s.addr);
    let p = tcp_proxy(&again, "web2", 0, echo.addr(), false, false);
    let (a, b) = echo_integrity(p, 1 << 20, 5);
    assert_eq!(a, b);
    drop(client);
    drop(successor);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// What a client opening a connection every millisecond saw.
#[derive(Debug, Default)]
struct Probes {
    ok: u64,
    failed: Vec<String>,
    /// The longest time from one connection's start to its echo.
    slowest: Duration,
}

/// Opens a connection to `port` every millisecond (each echoes one byte
/// and closes) until `stop`; a refusal, reset or missing echo is a failure.
fn probe(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Probes> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut p = Probes::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t0 = Instant::now();
            let one = (|| -> std::io::Result<()> {
                let mut s = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(5),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                Ok(())
            })();
            match one {
                Ok(()) => p.ok += 1,
                Err(e) => p
                    .failed
                    .push(format!("{:?} after {:?}: {e}", t0.elapsed(), t0)),
            }
            p.slowest = p.slowest.max(t0.elapsed());
            std::thread::sleep(Duration::from_millis(1).saturating_sub(t0.elapsed()));
        }
        p
    })
}

#[test]
fn a_client_connecting_every_millisecond_sees_no_refusal_across_an_upgrade() {
    let (s, mut old, echo, client, port) = serving("probe");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = probe(port, stop.clone());
    // 256 MiB through the live tunnel, across the upgrade.
    let transfer = slow_echo(port, 256 << 20, 4.0);
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = upgrade(&s.bin, &s.cfg);
    assert_eq!(code, 0, "upgrade failed: {out} {err}");
    let successor = Pid(new_pid(&out));
    let (sent, got) = transfer.join().unwrap();
    assert_eq!(
        sent, got,
        "the 256 MiB transfer across the upgrade was damaged"
    );
    // The session moves once nothing is in flight; the client logs in
    // again with its run_id, as frpc does, and asks for the same port.
    let end = Instant::now() + Duration::from_secs(10);
    while !client.is_closed() {
        assert!(
            Instant::now() < end,
            "the session was never moved:\n{}",
            old.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut o = bench::client::ClientOpts::new(s.addr, TOKEN);
    o.run_id = client.run_id().to_string();
    let back = Client::login(o).expect("log in again");
    let port2 = tcp_proxy(&back, "web", i64::from(port), echo.addr(), false, false);
    assert_eq!(port2, port);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let p = prober.join().unwrap();
    eprintln!(
        "probes: {} ok, {} failed, slowest {:?}",
        p.ok,
        p.failed.len(),
        p.slowest
    );
    assert!(p.ok > 1000, "{p:?}");
    assert!(
        p.failed.is_empty(),
        "connections failed across the upgrade: {:?}\n{}",
        p.failed,
        old.log().join("\n")
    );
    assert!(
        old.wait_exit(Duration::from_secs(10)).is_some(),
        "{:?}",
        old.log()
    );
    let log = old.log().join("\n");
    assert!(
        log.contains("proxy registered again on its handed-over socket"),
        "{log}"
    );
    drop(successor);
    let _ = std::fs::remove_dir_all(&s.dir);
}
