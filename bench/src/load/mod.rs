//! Load generators measured against a target address (a tunnel's public
//! port, or a backend directly for the loopback baseline).
//!
//! - [`latency`]: request/response latency, open-loop at a fixed rate or
//!   closed-loop (sequential RTT).
//! - [`connrate`]: new connections per second, each doing one small echo.
//! - [`bulk`]: bulk throughput over N parallel streams, up, down or echo.
//! - [`idle`]: many idle connections held open, and their cost in RSS.
//! - [`http`]: HTTP/1.1 keep-alive request rate (what wrk against nginx
//!   gives), closed loop, one request in flight per connection.
//! - [`login`]: frp logins per second, each a fresh session that is then
//!   dropped.
//! - [`proxies`]: many registered (idle) proxies, and their cost in RSS.
//! - [`udp`]: datagrams through a `udp` proxy at an offered rate, and what
//!   came back (`totoro-bench udp`: fastpath against frps, same frpc).
//! - [`attack`]: attacks on the server's memory (streams before login,
//!   stalled connections, users who never read, a Ping flood), and what the
//!   server holds during and after each.
//!
//! # Open loop and coordinated omission
//!
//! A closed-loop generator sends the next request only after the previous
//! answer, so when the target stalls it simply stops sending: the stall costs
//! one slow sample and the requests that *should* have been sent meanwhile
//! never exist ("coordinated omission"). The open-loop generator instead
//! fixes a schedule up front — request `i` of a connection is due at
//! `t0 + i * C / R` — and records each latency from that *intended* send time
//! to the arrival of the full echo. If the sender falls behind (because the
//! previous answer was late) it sends the overdue requests back to back, and
//! each of them carries the time it spent waiting to be sent, as a real user
//! arriving on that schedule would have seen (the method of wrk2).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

pub mod attack;
pub mod bulk;
pub mod connrate;
pub mod http;
pub mod idle;
pub mod latency;
pub mod login;
pub mod proxies;
pub mod udp;

/// Largest latency a histogram holds (60 s, in µs); larger values saturate.
const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5): this is not an I/O result and cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Records `d` in µs, clamped to the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_US);
    h.saturating_record(us);
}

/// `count / duration_s`, or 0 for a run that took no time.
pub(crate) fn per_sec(count: u64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        count as f64 / duration_s
    } else {
        0.0
    }
}

/// Totals the workers' results: their counts, each added to the first
/// with `add`, and their histograms in one.
pub(crate) fn merge<C: Default>(
    results: impl IntoIterator<Item = (C, Histogram<u64>)>,
    add: impl Fn(&mut C, C),
) -> (C, Histogram<u64>) {
    let mut total = C::default();
    let mut hist = new_histogram();
    for (c, h) in results {
        add(&mut total, c);
        // Same bounds on both sides, so adding cannot overflow the range.
        let _ = hist.add(&h);
    }
    (total, hist)
}

/// VmRSS in KiB of the process `pid` when there is one to measure and its
/// memory can be read.
pub(crate) fn rss_of(pid: Option<u32>) -> Option<u64> {
    pid.map(crate::proc::rss_kib).filter(|&k| k > 0)
}

/// What each of `n` things cost in bytes, from the VmRSS (KiB) before and
/// after they were made; None without both readings or without any.
pub(crate) fn bytes_each(before_kib: Option<u64>, after_kib: Option<u64>, n: u64) -> Option<f64> {
    match (before_kib, after_kib) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) * 1024.0 / n as f64),
        _ => None,
    }
}

/// Starts `threads` worker threads named `name-k` (256 KiB stacks), each
/// running `work(k)`, and returns the results of those that ran to the end
/// (a thread that cannot be started or that panics is absent).
pub(crate) fn run_workers<T, F>(name: &str, threads: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let work = std::sync::Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .filter_map(|k| {
            let work = work.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{k}"))
                .stack_size(256 * 1024)
                .spawn(move || work(k))
                .ok()
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Percentiles {
    /// Reads the percentiles off a histogram (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// What the generators' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::Percentiles;
    use std::net::SocketAddr;

    /// A loopback address nothing listens on (a port free a moment ago).
    pub fn closed_port() -> SocketAddr {
        ([127, 0, 0, 1], crate::proc::free_port()).into()
    }

    /// `l`, from a run with samples, is ordered (`run` shown if not), and
    /// the run's JSON carries it at the top level.
    pub fn assert_latency<R: serde::Serialize + std::fmt::Debug>(run: &R, l: Percentiles) {
        assert!(
            l.p50_us >= 1
                && l.p50_us <= l.p90_us
                && l.p90_us <= l.p99_us
                && l.p99_us <= l.p999_us
                && l.p999_us <= l.max_us,
            "{run:?}"
        );
        let json = serde_json::to_value(run).unwrap();
        for (key, v) in [
            ("p50_us", l.p50_us),
            ("p90_us", l.p90_us),
            ("p99_us", l.p99_us),
            ("p999_us", l.p999_us),
            ("max_us", l.max_us),
        ] {
            assert_eq!(json[key], v, "{json}");
        }
    }
}
