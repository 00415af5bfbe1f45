//! STUN Binding requests answered per second and per server CPU-second
//! (issue 18's "STUN bindings/s per core"): the real fastpath with one
//! worker and `fastpath.stunPort`, clients on other threads of the same
//! machine each keeping `STUN_BENCH_WINDOW` requests in flight.
//!
//! `cargo bench -p totoro-fastpath --bench stun` (`STUN_BENCH_SECS`,
//! default 5; `STUN_BENCH_CLIENTS`, default 4).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::proc::{free_port, wait_listening, Daemon};
use proto::stun::{kind, Builder};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env("STUN_BENCH_SECS", 5);
    let clients = env("STUN_BENCH_CLIENTS", 4) as usize;
    let window = env("STUN_BENCH_WINDOW", 32) as usize;
    let dir = std::env::temp_dir().join(format!("totoro-stun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (bind, port) = (free_port(), free_port());
    let cfg = dir.join("fastpath.toml");
    std::fs::write(
        &cfg,
        format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\n[fastpath]\nworkers = 1\nstunPort = {port}\n"
        ),
    )
    .unwrap();
    let mut fastpath = Daemon::spawn(
        Path::new(env!("CARGO_BIN_EXE_fastpath")),
        &["-c", cfg.to_str().unwrap()],
    )
    .unwrap();
    let tcp: SocketAddr = format!("127.0.0.1:{bind}").parse().unwrap();
    assert!(wait_listening(tcp, Duration::from_secs(10)));
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, answered, sent) = (stop.clone(), answered.clone(), sent.clone());
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut n = 0u64;
                let mut req = Vec::new();
                let mut send = |s: &UdpSocket, n: &mut u64| {
                    req.clear();
                    let mut txid = [c as u8; 12];
                    txid[4..].copy_from_slice(&n.to_be_bytes());
                    Builder::new(&mut req, kind::BINDING_REQUEST, txid);
                    let _ = s.send_to(&req, server);
                    *n += 1;
                };
                for _ in 0..window {
                    send(&s, &mut n);
                }
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    match s.recv_from(&mut buf) {
                        Ok(_) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            send(&s, &mut n);
                        }
                        // A lost one: put another in flight.
                        Err(_) => send(&s, &mut n),
                    }
                }
                sent.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (a0, c0) = (
        answered.load(Ordering::Relaxed),
        bench::proc::cpu_seconds(fastpath.pid()),
    );
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (a1, c1) = (
        answered.load(Ordering::Relaxed),
        bench::proc::cpu_seconds(fastpath.pid()),
    );
    let wall = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let rate = (a1 - a0) as f64 / wall;
    let cpu = c1 - c0;
    println!("| clients | window each | answers/s | server CPU-s | answers per server CPU-s | sent | answered |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {clients} | {window} | {rate:.0} | {cpu:.2} | {:.0} | {} | {} |",
        (a1 - a0) as f64 / cpu.max(1e-9),
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    fastpath.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}
