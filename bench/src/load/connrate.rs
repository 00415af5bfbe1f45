//! New-connection rate: `T` threads each open a TCP connection, write `N`
//! bytes, read the same `N` bytes back, close, and start over, until the
//! duration is up. Every attempt counts as a success or a failure (connect
//! error, write error, short or wrong echo, timeout); successes record the
//! time from the start of the connect to the last byte of the echo.

use super::{merge, new_histogram, per_sec, record, run_workers, Percentiles};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How many connections, for how long.
#[derive(Debug, Clone)]
pub struct ConnRateOpts {
    /// Worker threads, each with one connection at a time.
    pub threads: usize,
    /// Bytes written and expected back on each connection.
    pub payload: usize,
    /// How long the workers keep opening connections.
    pub duration: Duration,
    /// Limit on the connect and on each read/write of one connection.
    pub timeout: Duration,
}

impl Default for ConnRateOpts {
    /// The "new conns/s with one echo (32 workers)" case.
    fn default() -> Self {
        ConnRateOpts {
            threads: 32,
            payload: 32,
            duration: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Outcome of one connection-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRateResult {
    pub threads: usize,
    pub payload: usize,
    /// Wall time the workers ran, in seconds.
    pub duration_s: f64,
    /// Connections that completed the exchange.
    pub successes: u64,
    /// All failed attempts (`connect_failures + exchange_failures`).
    pub failures: u64,
    /// Connects that failed or timed out.
    pub connect_failures: u64,
    /// Connected, but the write, the echo or its contents failed.
    pub exchange_failures: u64,
    /// `successes / duration_s`.
    pub conns_per_sec: f64,
    /// Connect + exchange time of the successful connections.
    #[serde(flatten)]
    pub latency: Percentiles,
}

#[derive(Default)]
struct Counts {
    successes: u64,
    connect_failures: u64,
    exchange_failures: u64,
}

/// Runs the workers against `target` for `opts.duration` and totals them.
/// Never fails: every problem is counted as a failure (a worker thread that
/// cannot be started is simply absent from the totals).
pub fn run(target: SocketAddr, opts: ConnRateOpts) -> ConnRateResult {
    run_spread(&[target], opts)
}

/// Like [`run`], worker `k` against `targets[k % targets.len()]`.
pub fn run_spread(targets: &[SocketAddr], opts: ConnRateOpts) -> ConnRateResult {
    let start = Instant::now();
    let end = start + opts.duration;
    let results = {
        let opts = opts.clone();
        let targets = targets.to_vec();
        run_workers("connrate", opts.threads, move |k| match targets.len() {
            0 => (Counts::default(), new_histogram()),
            n => worker(targets[k % n], k, &opts, end),
        })
    };
    let (c, hist) = merge(results, |t, c| {
        t.successes += c.successes;
        t.connect_failures += c.connect_failures;
        t.exchange_failures += c.exchange_failures;
    });
    let duration_s = start.elapsed().as_secs_f64();
    ConnRateResult {
        threads: opts.threads,
        payload: opts.payload,
        duration_s,
        successes: c.successes,
        failures: c.connect_failures + c.exchange_failures,
        connect_failures: c.connect_failures,
        exchange_failures: c.exchange_failures,
        conns_per_sec: per_sec(c.successes, duration_s),
        latency: Percentiles::of(&hist),
    }
}

fn exchange(
    s: &mut TcpStream,
    timeout: Duration,
    out: &[u8],
    back: &mut [u8],
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(out)?;
    s.read_exact(back)?;
    if back != out {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "echo differs",
        ));
    }
    Ok(())
}

fn worker(
    target: SocketAddr,
    k: usize,
    opts: &ConnRateOpts,
    end: Instant,
) -> (Counts, Histogram<u64>) {
    let mut c = Counts::default();
    let mut hist = new_histogram();
    let out: Vec<u8> = (0..opts.payload)
        .map(|i| (i.wrapping_add(k)) as u8)
        .collect();
    let mut back = vec![0u8; opts.payload];
    while Instant::now() < end {
        let t = Instant::now();
        let mut s = match TcpStream::connect_timeout(&target, opts.timeout) {
            Ok(s) => s,
            Err(_) => {
                c.connect_failures += 1;
                // A refused connect returns at once; back off a little so a
                // dead target does not turn the run into a busy loop.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        match exchange(&mut s, opts.timeout, &out, &mut back) {
            Ok(()) => {
                record(&mut hist, t.elapsed());
                c.successes += 1;
            }
            Err(_) => c.exchange_failures += 1,
        }
        drop(s);
    }
    (c, hist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::load::testing::{assert_latency, closed_port};

    fn short() -> ConnRateOpts {
        ConnRateOpts {
            threads: 4,
            duration: Duration::from_millis(500),
            ..ConnRateOpts::default()
        }
    }

    #[test]
    fn echo_backend_gives_conns_and_no_failures() {
        let b = Backend::echo().unwrap();
        let r = run(b.addr(), short());
        assert_eq!(r.failures, 0, "{r:?}");
        assert!(r.successes > 0 && r.conns_per_sec > 0.0, "{r:?}");
        assert_latency(&r, r.latency);
        assert!(r.duration_s >= 0.5 && r.duration_s < 1.5, "{r:?}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["successes"], r.successes);
    }

    #[test]
    fn closed_port_counts_failures() {
        let r = run(
            closed_port(),
            ConnRateOpts {
                duration: Duration::from_millis(200),
                ..short()
            },
        );
        assert_eq!(r.successes, 0, "{r:?}");
        assert!(
            r.connect_failures > 0 && r.failures == r.connect_failures,
            "{r:?}"
        );
        assert_eq!(r.conns_per_sec, 0.0);
        assert_eq!(r.latency, Percentiles::default());
    }

    #[test]
    fn silent_server_is_a_timeout_failure() {
        // Accepts (via the backlog) but never answers: every exchange times out.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let r = run(
            l.local_addr().unwrap(),
            ConnRateOpts {
                threads: 2,
                duration: Duration::from_millis(100),
                timeout: Duration::from_millis(200),
                ..ConnRateOpts::default()
            },
        );
        assert_eq!(r.successes, 0, "{r:?}");
        assert!(r.exchange_failures >= 2, "{r:?}");
    }
}
