//! UDP datagrams through a `udp` proxy: an open-loop sender at a fixed
//! offered rate (or as fast as it can, rate 0), numbered datagrams to an
//! echo service behind the proxy, and a receiver that counts each number
//! back once. What comes back after the sending window and a grace second
//! is lost.
//!
//! [`compare`] runs the side-by-side table of `totoro-bench udp`: the
//! fastpath and frps, each with the same client and one udp proxy to an
//! in-process echo service, at every size and offered rate, systems
//! alternating in each repeat. The client is stock frpc (TLS + tcpMux, its
//! defaults) or the bench's own frp client in a process of its own
//! ([`serve_bench_client`]: plain TCP, no mux), which costs less per
//! datagram than frpc and so leaves more of the machine to the server.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proc::{cpu_seconds, free_port, wait_listening, Daemon};

/// What one run saw.
#[derive(Debug, Clone, Copy)]
pub struct UdpRun {
    /// Datagrams sent.
    pub sent: u64,
    /// Distinct datagrams that came back.
    pub received: u64,
    /// How long the sending took, seconds.
    pub secs: f64,
    /// Answers the kernel dropped at the sender's own socket (its receive
    /// buffer was full: the harness's receiver fell behind).
    pub receiver_drops: u64,
}

impl UdpRun {
    /// Datagrams offered per second (what was sent).
    pub fn offered(&self) -> f64 {
        self.sent as f64 / self.secs
    }

    /// Datagrams echoed per second of the sending window.
    pub fn echoed(&self) -> f64 {
        self.received as f64 / self.secs
    }

    /// The share of datagrams that did not come back, percent.
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * (self.sent - self.received.min(self.sent)) as f64 / self.sent as f64
    }
}

/// A UDP echo service on loopback, in this process, until dropped.
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    /// Start it.
    pub fn start() -> io::Result<Echo> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
        let addr = s.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::Builder::new()
            .name("udp-echo".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !st.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })?;
        Ok(Echo { addr, stop })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Offer `rate` datagrams/s (0: as fast as the sender goes) of `size`
/// bytes to `target` for `secs` seconds; count what comes back.
pub fn open_loop(target: SocketAddr, size: usize, rate: f64, secs: f64) -> io::Result<UdpRun> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(target)?;
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let r = s.try_clone()?;
    let own_port = s.local_addr()?.port();
    let size = size.max(8);
    let done = Arc::new(AtomicBool::new(false));
    let sent_total = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (done, sent_total) = (done.clone(), sent_total.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<u64> = Vec::new();
            let mut received = 0u64;
            let mut buf = vec![0u8; 65536];
            let mut grace: Option<Instant> = None;
            loop {
                if done.load(Ordering::Acquire) {
                    let g = *grace.get_or_insert_with(Instant::now);
                    if g.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                }
                let Ok(n) = r.recv(&mut buf) else { continue };
                if n < 8 {
                    continue;
                }
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                if seq >= sent_total.load(Ordering::Acquire) + 1_000_000 {
                    continue;
                }
                let (w, b) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if seen.len() <= w {
                    seen.resize(w + 1024, 0);
                }
                if seen[w] & b == 0 {
                    seen[w] |= b;
                    received += 1;
                }
            }
            received
        })
    };
    let mut d = vec![0x5au8; size];
    let t0 = Instant::now();
    let window = Duration::from_secs_f64(secs);
    let mut seq = 0u64;
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= window {
            break;
        }
        let due = if rate > 0.0 {
            (elapsed.as_secs_f64() * rate) as u64
        } else {
            seq + 64
        };
        if seq >= due {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        while seq < due {
            d[..8].copy_from_slice(&seq.to_be_bytes());
            // A full socket buffer drops the datagram here: it counts as
            // sent and lost, as it would for a real sender.
            let _ = s.send(&d);
            seq += 1;
        }
        sent_total.store(seq, Ordering::Release);
    }
    let secs = t0.elapsed().as_secs_f64();
    sent_total.store(seq, Ordering::Release);
    done.store(true, Ordering::Release);
    let received = receiver.join().unwrap_or(0);
    Ok(UdpRun {
        sent: seq,
        received,
        secs,
        receiver_drops: socket_drops(Bound::Local(own_port)),
    })
}

/// Which UDP sockets [`socket_drops`] counts.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// Those bound to this local port.
    Local(u16),
    /// Those connected to this remote port (a client's sockets to its
    /// local service).
    Remote(u16),
}

/// Datagrams the kernel dropped at the UDP sockets `which` names in this
/// network namespace, for lack of receive buffer (the last column of
/// `/proc/net/udp` and `udp6`), summed over the sockets.
pub fn socket_drops(which: Bound) -> u64 {
    drops_in_tables(&udp_tables(), which)
}

/// The text of `/proc/net/udp` and `udp6` (those that can be read).
fn udp_tables() -> Vec<String> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// [`socket_drops`] over tables already read.
fn drops_in_tables(tables: &[String], which: Bound) -> u64 {
    tables.iter().map(|text| drops_in(text, which)).sum()
}

/// [`socket_drops`] over the text of one `/proc/net/udp*` table.
fn drops_in(table: &str, which: Bound) -> u64 {
    let (column, port) = match which {
        Bound::Local(port) => (1, port),
        Bound::Remote(port) => (2, port),
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(column)?;
            let p = u16::from_str_radix(addr.rsplit(':').next()?, 16).ok()?;
            (p == port).then(|| fields.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// A server under test, and the client that serves its udp proxy.
struct System {
    _server: Daemon,
    _client: Daemon,
    server_pid: u32,
    client_pid: u32,
    port: u16,
}

/// What to compare and how.
pub struct Compare {
    /// The fastpath binary.
    pub fastpath: PathBuf,
    /// frps.
    pub frps: PathBuf,
    /// The client, the same for both.
    pub client: UdpClient,
    /// Datagram sizes.
    pub sizes: Vec<usize>,
    /// Offered rates (0: unpaced).
    pub rates: Vec<f64>,
    /// Seconds per run.
    pub secs: f64,
    /// Rounds, systems alternating.
    pub repeats: usize,
    /// Where configs and logs go.
    pub scratch: PathBuf,
    /// The CPUs of the harness's sender and receiver, and those of
    /// everything else (servers, clients, echo); None: not pinned.
    pub cpus: Option<(Vec<usize>, Vec<usize>)>,
}

/// Which frp client serves the udp proxy.
#[derive(Debug, Clone)]
pub enum UdpClient {
    /// Stock frpc at this path, with its defaults (TLS + tcpMux).
    Frpc(PathBuf),
    /// The bench's own client, run as `<exe> udp-client …` (this binary's
    /// hidden subcommand, [`serve_bench_client`]): plain TCP work
    /// connections, no mux.
    Bench(PathBuf),
}

impl UdpClient {
    /// How the table names it.
    pub fn label(&self) -> &'static str {
        match self {
            UdpClient::Frpc(_) => "frpc",
            UdpClient::Bench(_) => "bench client",
        }
    }
}

/// The bench client's side of `totoro-bench udp --client bench`: log in to
/// `server` (plain TCP, no mux, as frpc with `transport.tls.enable = false`
/// and `transport.tcpMux = false`), register a udp proxy on `remote_port`
/// to `local`, and serve it until the server closes the session.
pub fn serve_bench_client(
    server: SocketAddr,
    token: &str,
    local: SocketAddr,
    remote_port: u16,
) -> anyhow::Result<()> {
    use crate::client::{Client, ClientOpts, ProxySpec};
    let mut opts = ClientOpts::new(server, token);
    opts.tls = false;
    opts.mux = false;
    opts.proxy_type = "udp".into();
    opts.heartbeat = Some(Duration::from_secs(30));
    let client = Client::login(opts).map_err(|e| anyhow::anyhow!("login: {e}"))?;
    client
        .add_proxy(ProxySpec::plain("udp", remote_port, local))
        .map_err(|e| anyhow::anyhow!("udp proxy: {e}"))?;
    while !client.is_closed() {
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("the server closed the session")
}

/// One cell: a system at a size and rate in one round.
#[derive(Debug, Clone)]
pub struct Cell {
    /// "fastpath" or "frps".
    pub system: &'static str,
    /// Round.
    pub repeat: usize,
    /// Datagram size.
    pub size: usize,
    /// Offered rate asked (0: unpaced).
    pub rate: f64,
    /// What it saw.
    pub run: UdpRun,
    /// Server CPU-seconds during the run.
    pub server_cpu: f64,
    /// Client CPU-seconds during the run.
    pub client_cpu: f64,
    /// Datagrams the kernel dropped at the proxy's public port (the server
    /// did not read them in time).
    pub server_drops: u64,
    /// Datagrams the kernel dropped at the client's sockets to the echo
    /// service (the echo's answers, not read by the client in time).
    pub client_drops: u64,
    /// Datagrams the kernel dropped at the echo service's socket.
    pub echo_drops: u64,
}

fn start(kind: &str, c: &Compare, echo: SocketAddr) -> anyhow::Result<System> {
    let dir = c.scratch.join(kind);
    std::fs::create_dir_all(&dir)?;
    let bind = free_port();
    let remote = free_port();
    let token = "udp-bench";
    let server_cfg = dir.join("server.toml");
    let server = match kind {
        "fastpath" => {
            std::fs::write(
                &server_cfg,
                format!("bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nauth.token = \"{token}\"\n"),
            )?;
            Daemon::spawn_logging(&c.fastpath, &["-c", path(&server_cfg)?], "warn")?
        }
        _ => {
            std::fs::write(
                &server_cfg,
                format!(
                    "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nauth.token = \"{token}\"\nlog.level = \"warn\"\n{}",
                    // frps expects the client's tcpMux setting; the
                    // fastpath tells from the first bytes.
                    match c.client {
                        UdpClient::Frpc(_) => "",
                        UdpClient::Bench(_) => "transport.tcpMux = false\n",
                    }
                ),
            )?;
            Daemon::spawn_logging(&c.frps, &["-c", path(&server_cfg)?], "warn")?
        }
    };
    let addr: SocketAddr = format!("127.0.0.1:{bind}").parse()?;
    anyhow::ensure!(
        wait_listening(addr, Duration::from_secs(10)),
        "{kind} did not start: {:?}",
        server.log()
    );
    let client = match &c.client {
        UdpClient::Frpc(frpc) => {
            let frpc_cfg = dir.join("frpc.toml");
            std::fs::write(
                &frpc_cfg,
                format!(
                    "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"{token}\"\nlog.level = \"warn\"\n\
                     [[proxies]]\nname = \"udp\"\ntype = \"udp\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {}\nremotePort = {remote}\n",
                    echo.port()
                ),
            )?;
            Daemon::spawn_logging(frpc, &["-c", path(&frpc_cfg)?], "warn")?
        }
        UdpClient::Bench(exe) => Daemon::spawn_logging(
            exe,
            &[
                "udp-client",
                "--server",
                &addr.to_string(),
                "--token",
                token,
                "--local",
                &echo.to_string(),
                "--remote-port",
                &remote.to_string(),
            ],
            "warn",
        )?,
    };
    // Ready when a datagram comes back.
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.connect(("127.0.0.1", remote))?;
    probe.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 64];
    loop {
        let _ = probe.send(&[0u8; 8]);
        if probe.recv(&mut buf).is_ok() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{kind}: the udp proxy did not answer within 15 s; client: {:?}",
            client.log()
        );
    }
    // Let the probes' answers drain.
    std::thread::sleep(Duration::from_millis(300));
    Ok(System {
        server_pid: server.pid(),
        client_pid: client.pid(),
        _server: server,
        _client: client,
        port: remote,
    })
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", p.display()))
}

/// Run the comparison; every cell, in the order run.
pub fn compare(c: &Compare) -> anyhow::Result<Vec<Cell>> {
    if let Some((_, systems)) = &c.cpus {
        // The echo thread and every process started from here inherit it.
        crate::proc::pin_this_thread(systems)?;
    }
    let echo = Echo::start()?;
    let mut cells = Vec::new();
    for repeat in 0..c.repeats {
        // Alternate which system goes first.
        let order: [&'static str; 2] = if repeat % 2 == 0 {
            ["fastpath", "frps"]
        } else {
            ["frps", "fastpath"]
        };
        for system in order {
            let sys = start(system, c, echo.addr)?;
            let target: SocketAddr = format!("127.0.0.1:{}", sys.port).parse()?;
            for &size in &c.sizes {
                for &rate in &c.rates {
                    let (s0, f0) = (cpu_seconds(sys.server_pid), cpu_seconds(sys.client_pid));
                    let drops = || {
                        let t = udp_tables();
                        (
                            drops_in_tables(&t, Bound::Local(sys.port)),
                            drops_in_tables(&t, Bound::Remote(echo.addr.port())),
                            drops_in_tables(&t, Bound::Local(echo.addr.port())),
                        )
                    };
                    let (p0, c0, e0) = drops();
                    let run = match &c.cpus {
                        None => open_loop(target, size, rate, c.secs)?,
                        Some((load, _)) => std::thread::scope(|scope| {
                            scope
                                .spawn(|| {
                                    // The receiver it starts inherits it.
                                    crate::proc::pin_this_thread(load)?;
                                    open_loop(target, size, rate, c.secs)
                                })
                                .join()
                                .unwrap_or_else(|_| Err(io::Error::other("the sender panicked")))
                        })?,
                    };
                    let (s1, f1) = (cpu_seconds(sys.server_pid), cpu_seconds(sys.client_pid));
                    let (p1, c1, e1) = drops();
                    eprintln!(
                        "  {system} {size} B @ {}: offered {:.0}/s echoed {:.0}/s loss {:.2}%",
                        if rate > 0.0 {
                            format!("{rate:.0}")
                        } else {
                            "max".into()
                        },
                        run.offered(),
                        run.echoed(),
                        run.loss_pct()
                    );
                    cells.push(Cell {
                        system,
                        repeat,
                        size,
                        rate,
                        run,
                        server_cpu: s1 - s0,
                        client_cpu: f1 - f0,
                        server_drops: p1.saturating_sub(p0),
                        client_drops: c1.saturating_sub(c0),
                        echo_drops: e1.saturating_sub(e0),
                    });
                    // Whatever is still queued drains before the next rate.
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
    Ok(cells)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The markdown table: per size and offered rate, each system's median
/// echo rate, loss and server CPU per 100k datagrams, and the ratio of
/// the echo rates.
pub fn markdown(c: &Compare, cells: &[Cell]) -> String {
    let mut o = format!(
        "| size | offered/s | fastpath echoed/s | loss | frps echoed/s | loss | ratio | fastpath server CPU-s per 100k | frps | {} CPU-s per 100k, fastpath / frps | kernel drops, % of sent, at the proxy port · the client's sockets · echo · receiver: fastpath / frps |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        c.client.label()
    );
    for &size in &c.sizes {
        for &rate in &c.rates {
            let pick = |sys: &str| -> Vec<&Cell> {
                cells
                    .iter()
                    .filter(|x| x.system == sys && x.size == size && x.rate == rate)
                    .collect()
            };
            let stat = |v: &[&Cell]| {
                (
                    median(v.iter().map(|x| x.run.offered()).collect()),
                    median(v.iter().map(|x| x.run.echoed()).collect()),
                    median(v.iter().map(|x| x.run.loss_pct()).collect()),
                    median(
                        v.iter()
                            .map(|x| 1e5 * x.server_cpu / x.run.received.max(1) as f64)
                            .collect(),
                    ),
                    median(
                        v.iter()
                            .map(|x| 1e5 * x.client_cpu / x.run.received.max(1) as f64)
                            .collect(),
                    ),
                )
            };
            let (fo, fe, fl, fc, ff) = stat(&pick("fastpath"));
            let (_, se, sl, sc, sf) = stat(&pick("frps"));
            let drops = |v: &[&Cell]| {
                let share = |f: &dyn Fn(&Cell) -> u64| {
                    median(
                        v.iter()
                            .map(|x| 100.0 * f(x) as f64 / x.run.sent.max(1) as f64)
                            .collect(),
                    )
                };
                format!(
                    "{:.1} · {:.1} · {:.1} · {:.1}",
                    share(&|x| x.server_drops),
                    share(&|x| x.client_drops),
                    share(&|x| x.echo_drops),
                    share(&|x| x.run.receiver_drops)
                )
            };
            let (fd, sd) = (drops(&pick("fastpath")), drops(&pick("frps")));
            let offered = if rate > 0.0 {
                format!("{rate:.0}")
            } else {
                format!("max ({fo:.0})")
            };
            o.push_str(&format!(
                "| {size} B | {offered} | {fe:.0} | {fl:.2}% | {se:.0} | {sl:.2}% | {:.2}× | {fc:.3} | {sc:.3} | {ff:.3} / {sf:.3} | {fd} / {sd} |\n",
                fe / se
            ));
        }
    }
    o.push('\n');
    for &size in &c.sizes {
        let f = summary(cells, "fastpath", size);
        let s = summary(cells, "frps", size);
        let rate = |r: Option<f64>| r.map_or("none".to_string(), |r| format!("{r:.0}/s"));
        let ratio = match (f.lossless, s.lossless) {
            (Some(a), Some(b)) => format!(" ({:.2}×)", a / b),
            _ => String::new(),
        };
        o.push_str(&format!(
            "- {size} B: highest paced rate with at most {LOSSLESS_PCT}% loss: fastpath {}, frps {}{ratio}; \
             peak echo: fastpath {:.0}/s, frps {:.0}/s ({:.2}×)\n",
            rate(f.lossless),
            rate(s.lossless),
            f.peak,
            s.peak,
            f.peak / s.peak
        ));
    }
    if let Some((load, systems)) = &c.cpus {
        o.push_str(&format!(
            "- pinned: the harness's sender and receiver on CPUs {load:?}; servers, clients and the echo service on {systems:?}\n"
        ));
    }
    o
}

/// The loss (median over the repeats, percent) under which a paced rate
/// counts as carried.
pub const LOSSLESS_PCT: f64 = 1.0;

/// One system's figures at one size, over every rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The highest paced offered rate whose median loss is at most
    /// [`LOSSLESS_PCT`], if any.
    pub lossless: Option<f64>,
    /// The highest median echo rate at any offered rate.
    pub peak: f64,
}

/// [`Summary`] of `system` at `size`.
pub fn summary(cells: &[Cell], system: &str, size: usize) -> Summary {
    let mut rates: Vec<f64> = cells
        .iter()
        .filter(|x| x.system == system && x.size == size)
        .map(|x| x.rate)
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates.dedup();
    let mut out = Summary {
        lossless: None,
        peak: 0.0,
    };
    for rate in rates {
        let at: Vec<&Cell> = cells
            .iter()
            .filter(|x| x.system == system && x.size == size && x.rate == rate)
            .collect();
        let loss = median(at.iter().map(|x| x.run.loss_pct()).collect());
        let echoed = median(at.iter().map(|x| x.run.echoed()).collect());
        if rate > 0.0 && loss <= LOSSLESS_PCT {
            out.lossless = Some(out.lossless.map_or(rate, |r: f64| r.max(rate)));
        }
        out.peak = out.peak.max(echoed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_on_loopback_loses_nothing_at_a_low_rate() {
        let echo = Echo::start().unwrap();
        let run = open_loop(echo.addr, 64, 2000.0, 0.5).unwrap();
        assert!(run.sent >= 900, "{run:?}");
        assert_eq!(run.received, run.sent, "{run:?}");
        assert_eq!(run.loss_pct(), 0.0);
    }

    #[test]
    fn the_summary_takes_medians_and_the_highest_paced_rate_under_the_loss_bound() {
        let cell = |system: &'static str, size, rate, sent, received| Cell {
            system,
            repeat: 0,
            size,
            rate,
            run: UdpRun {
                sent,
                received,
                secs: 1.0,
                receiver_drops: 0,
            },
            server_cpu: 0.0,
            client_cpu: 0.0,
            server_drops: 0,
            client_drops: 0,
            echo_drops: 0,
        };
        let cells = vec![
            cell("fastpath", 64, 1000.0, 1000, 1000),
            // 2000/s: two rounds of three lose more than 1%, so the
            // median does too.
            cell("fastpath", 64, 2000.0, 2000, 2000),
            cell("fastpath", 64, 2000.0, 2000, 1900),
            cell("fastpath", 64, 2000.0, 2000, 1950),
            // 4000/s: one bad round of three; the median is lossless.
            cell("fastpath", 64, 4000.0, 4000, 4000),
            cell("fastpath", 64, 4000.0, 4000, 1000),
            cell("fastpath", 64, 4000.0, 4000, 3990),
            // Unpaced: never counts as a carried rate, but its echo
            // counts for the peak.
            cell("fastpath", 64, 0.0, 9000, 5000),
            cell("frps", 64, 1000.0, 1000, 980),
            cell("frps", 1200, 1000.0, 1000, 1000),
        ];
        assert_eq!(
            summary(&cells, "fastpath", 64),
            Summary {
                lossless: Some(4000.0),
                peak: 5000.0
            }
        );
        assert_eq!(
            summary(&cells, "frps", 64),
            Summary {
                lossless: None,
                peak: 980.0
            }
        );
        assert_eq!(summary(&cells, "frps", 1200).lossless, Some(1000.0));
        assert_eq!(
            summary(&cells, "frps", 9),
            Summary {
                lossless: None,
                peak: 0.0
            }
        );
    }

    #[test]
    fn drops_are_read_per_local_port_from_the_kernels_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:464D 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 ffff 230109
  2: 0100007F:88BE 0100007F:464D 01 00000000:00000000 00:00000000 00000000     0        0 3 2 ffff 7
  3: 0100007F:464D 0100007F:A7F5 01 00000000:00000000 00:00000000 00000000     0        0 4 2 ffff 5
  4: garbage
";
        // Sockets 1 and 3 are bound to 0x464D; socket 2 is connected to it.
        assert_eq!(drops_in(table, Bound::Local(0x464D)), 230114);
        assert_eq!(drops_in(table, Bound::Local(0x88BE)), 7);
        assert_eq!(drops_in(table, Bound::Local(0xA7F5)), 0);
        assert_eq!(drops_in(table, Bound::Remote(0x464D)), 7);
        assert_eq!(drops_in(table, Bound::Remote(0xA7F5)), 5);
    }

    #[test]
    fn a_receiver_that_never_reads_is_seen_dropping() {
        // A socket with a small buffer that nobody reads, on a port of its own.
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4096);
        let port = sink.local_addr().unwrap().port();
        let before = socket_drops(Bound::Local(port));
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..2000 {
            let _ = s.send_to(&[0u8; 512], ("127.0.0.1", port));
        }
        let after = socket_drops(Bound::Local(port));
        assert!(after - before > 1000, "{before} → {after}");
    }

    #[test]
    fn nothing_listening_is_all_lost() {
        let port = free_port();
        let run = open_loop(
            format!("127.0.0.1:{port}").parse().unwrap(),
            64,
            1000.0,
            0.2,
        )
        .unwrap();
        assert!(run.sent > 0);
        assert_eq!(run.received, 0);
        assert_eq!(run.loss_pct(), 100.0);
    }
}
