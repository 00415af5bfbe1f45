//! Shared set-up for the end-to-end tests: run the real `fastpath` binary
//! on loopback with a config written to a temp file.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use bench::client::{Client, ClientOpts, ProxySpec};
use bench::proc::{free_port, wait_listening, Daemon};
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "test-token";

/// A fastpath under test.
pub struct Fastpath {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Fastpath {
    /// Start with the given extra TOML (bind address, port and token are set here).
    pub fn start(extra: &str, workers: usize) -> Fastpath {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("totoro-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("fastpath.toml");
        std::fs::write(
            &cfg,
            format!("bindAddr = \"127.0.0.1\"\nbindPort = {port}\nauth.token = \"{TOKEN}\"\nlog.level = \"debug\"\n{extra}\nfastpath.workers = {workers}\n"),
        )
        .unwrap();
        let stats = dir.join("stats.json");
        let daemon = Daemon::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_fastpath")),
            &[
                "-c",
                cfg.to_str().unwrap(),
                "--stats-file",
                stats.to_str().unwrap(),
            ],
        )
        .expect("start fastpath");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_listening(addr, Duration::from_secs(10)),
            "fastpath did not start: {:?}",
            daemon.log()
        );
        // Ready when every worker says it started, not when the port first
        // accepts: twice in CI a login made in the first moments after the
        // bind was reset, with nothing logged yet (never reproduced here).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while daemon
            .log()
            .iter()
            .filter(|l| l.contains("worker started"))
            .count()
            < workers
        {
            assert!(
                std::time::Instant::now() < deadline,
                "fastpath workers did not start: {:?}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Fastpath { daemon, addr, dir }
    }

    /// Client options for this server (frpc defaults: TLS on, mux on).
    pub fn opts(&self) -> ClientOpts {
        ClientOpts::new(self.addr, TOKEN)
    }

    /// Per-worker counters from the stats file (written every second).
    pub fn stats(&self) -> serde_json::Value {
        let raw = std::fs::read_to_string(self.dir.join("stats.json")).unwrap_or_default();
        serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null)
    }

    /// One per-worker counter, summed over the workers, as the stats file
    /// has it now.
    pub fn counter(&self, name: &str) -> u64 {
        worker_sum(&self.stats(), name)
    }

    /// A plain TCP dial to this server (no TLS), 5 s per step: how an
    /// attacker's raw connections start.
    pub fn plain_dial(&self) -> bench::client::transport::Dial {
        bench::client::transport::Dial {
            addr: self.addr,
            tls: false,
            tls_custom_byte: false,
            tls12_only: false,
            timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// One per-worker counter of `stats` (as [`Fastpath::stats`] returns it),
/// summed over the workers.
pub fn worker_sum(stats: &serde_json::Value, name: &str) -> u64 {
    stats["workers"]
        .as_array()
        .map(|ws| ws.iter().map(|w| w[name].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

impl Drop for Fastpath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Register a TCP proxy to `local` and return its public port.
pub fn tcp_proxy(
    c: &Client,
    name: &str,
    remote_port: i64,
    local: SocketAddr,
    enc: bool,
    comp: bool,
) -> u16 {
    let addr = c
        .add_proxy(ProxySpec {
            name: name.into(),
            remote_port,
            local,
            use_encryption: enc,
            use_compression: comp,
            server_bandwidth_limit: String::new(),
        })
        .unwrap_or_else(|e| panic!("proxy {name}: {e}"));
    addr.trim_start_matches(':')
        .parse()
        .expect("remote_addr is :port")
}

/// Send `len` pseudo-random bytes through an echo tunnel at `port` and check
/// that the same bytes come back: returns (sent hash, received hash).
pub fn echo_integrity(port: u16, len: usize, seed: u64) -> (String, String) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to proxy");
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut x = seed | 1;
        let mut left = len;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let n = left.min(buf.len());
            for chunk in buf[..n].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_le_bytes();
                chunk.copy_from_slice(&b[..chunk.len()]);
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).expect("write to tunnel");
            left -= n;
        }
        hex::encode(h.finalize())
    });
    let mut r = s;
    r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut h = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while got < len {
        let n = match r.read(&mut buf) {
            // A socket with a receive timeout reports a signal as EINTR
            // rather than restarting; the read is simply tried again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("read from tunnel"),
        };
        assert!(n > 0, "tunnel closed after {got} of {len} bytes");
        h.update(&buf[..n]);
        got += n;
    }
    let sent = writer.join().unwrap();
    (sent, hex::encode(h.finalize()))
}

/// Raise this process's open-file limit to its hard limit (tests that
/// hold thousands of connections).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct passed in.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}
