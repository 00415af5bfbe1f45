//! Bulk throughput: `N` parallel TCP streams push bytes through the target
//! for a warm-up and then a measured window. The direction decides who
//! writes: [`Direction::Up`] the client (the far side is a
//! [sink](crate::backend::Backend::sink)), [`Direction::Down`] the far side
//! (a [source](crate::backend::Backend::source)), [`Direction::Echo`] both
//! (an [echo](crate::backend::Backend::echo); the client writes and reads
//! on separate threads).
//!
//! What counts: bytes written by the client for `Up` (on loopback the sink
//! keeps up, so written ≈ delivered), bytes read by the client for `Down`
//! and `Echo`. Each stream keeps a running total; the totals are read at
//! the end of the warm-up and at the end of the window, and the difference
//! is the figure.
//!
//! The warm-up lasts at least its set time and then until every stream is
//! moving (each total grew within the last 0.5 s), for at most 10 s
//! more: a stream still waiting to be set up (a tunnel's
//! work connection comes late on a machine where the load starves the
//! server) would otherwise count as a stream the server starves. What the
//! warm-up took is recorded (`warmup_s`); a stream that moves nothing
//! after it shows as a slowest stream of 0.

use super::per_sec;
use serde::Serialize;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who sends the bulk bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client writes, the far side discards.
    Up,
    /// Far side writes, the client reads.
    Down,
    /// Client writes, the far side echoes, the client reads.
    Echo,
}

/// How many streams, which way, for how long.
#[derive(Debug, Clone)]
pub struct BulkOpts {
    /// Parallel TCP streams.
    pub streams: usize,
    /// Which way the bytes go.
    pub direction: Direction,
    /// Measured window.
    pub duration: Duration,
    /// Time before the measured window whose bytes are not counted.
    pub warmup: Duration,
    /// Size of each read/write call in bytes.
    pub buffer: usize,
}

impl Default for BulkOpts {
    /// One stream up, 5 s after 1 s of warm-up, 128 KiB calls.
    fn default() -> Self {
        BulkOpts {
            streams: 1,
            direction: Direction::Up,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            buffer: 128 * 1024,
        }
    }
}

/// Outcome of one bulk run.
#[derive(Debug, Clone, Serialize)]
pub struct BulkResult {
    pub streams: usize,
    pub direction: Direction,
    pub buffer: usize,
    /// Length of the measured window actually observed, in seconds.
    pub duration_s: f64,
    /// Bytes moved by all streams in the measured window.
    pub bytes: u64,
    /// `bytes * 8 / duration_s / 1e9`.
    pub gbit_per_s: f64,
    /// Slowest stream's Gbit/s in the window.
    pub stream_gbit_min: f64,
    /// Fastest stream's Gbit/s in the window.
    pub stream_gbit_max: f64,
    /// Streams that hit an I/O error (other than a timeout) or an early
    /// close before the end of the window.
    pub errors: u64,
    /// How long the warm-up took: its set time, or longer while a stream
    /// had not started moving (see the module).
    pub warmup_s: f64,
}

/// How often a blocked read or write wakes up to check for the end.
const POLL: Duration = Duration::from_millis(100);

/// The most the warm-up waits past its set time for every stream to move.
const START_WAIT: Duration = Duration::from_secs(10);

/// How often the warm-up looks whether every stream moves: long enough
/// that a stream served in turns with many others moved in between, a
/// stream still being set up has filled its socket buffers and stopped.
const START_CHECK: Duration = Duration::from_millis(500);

/// Sets the stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Stream {
    count: AtomicU64,
    failed: AtomicBool,
}

/// Opens `opts.streams` connections to `target`, moves bytes for
/// `opts.warmup + opts.duration`, and reports the measured window.
/// Fails only if a connection cannot be opened or set up (or a thread
/// cannot be started); I/O errors during the run are counted in `errors`.
pub fn run(target: SocketAddr, opts: BulkOpts) -> io::Result<BulkResult> {
    run_spread(&[target], opts)
}

/// Like [`run`], stream `k` to `targets[k % targets.len()]` (several
/// tunnels, e.g. one per client session).
pub fn run_spread(targets: &[SocketAddr], opts: BulkOpts) -> io::Result<BulkResult> {
    if targets.is_empty() {
        return Err(io::Error::new(ErrorKind::InvalidInput, "no bulk target"));
    }
    let buffer = opts.buffer.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(opts.streams);
    for k in 0..opts.streams {
        let target = targets[k % targets.len()];
        let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        s.set_read_timeout(Some(POLL))?;
        s.set_write_timeout(Some(POLL))?;
        conns.push(s);
    }
    let mut stats = Vec::with_capacity(opts.streams);
    let mut handles = Vec::new();
    // Stops the threads on every way out, early errors included.
    let _guard = StopOnDrop(stop.clone());
    for (k, s) in conns.into_iter().enumerate() {
        let st = Arc::new(Stream {
            count: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        });
        stats.push(st.clone());
        let write_side = matches!(opts.direction, Direction::Up | Direction::Echo);
        let read_side = matches!(opts.direction, Direction::Down | Direction::Echo);
        if write_side {
            let w = s.try_clone()?;
            let (st, stop) = (st.clone(), stop.clone());
            // For Echo the writer's bytes are not the figure; reads are.
            let counts = opts.direction == Direction::Up;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("bulk-w{k}"))
                    .stack_size(256 * 1024)
                    .spawn(move || writer(w, buffer, k, &st, counts, &stop))?,
            );
        }
        if read_side {
            let (st, stop) = (st.clone(), stop.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("bulk-r{k}"))
                    .stack_size(256 * 1024)
                    .spawn(move || reader(s, buffer, &st, &stop))?,
            );
        }
    }
    let warming = Instant::now();
    // The first look comes one check before the set time is up.
    std::thread::sleep(opts.warmup.saturating_sub(START_CHECK));
    let totals = || -> Vec<u64> {
        stats
            .iter()
            .map(|s| s.count.load(Ordering::Relaxed))
            .collect()
    };
    let mut last = totals();
    while warming.elapsed() < opts.warmup + START_WAIT {
        std::thread::sleep(START_CHECK);
        let now = totals();
        // A stream that failed counts as started: it will not move again.
        let all_moving = now
            .iter()
            .zip(&last)
            .zip(&stats)
            .all(|((n, l), s)| n > l || s.failed.load(Ordering::Acquire));
        last = now;
        if all_moving {
            break;
        }
    }
    let warmup_s = warming.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let before = last;
    std::thread::sleep(opts.duration);
    let after = totals();
    let duration_s = t0.elapsed().as_secs_f64();
    let errors = stats
        .iter()
        .filter(|s| s.failed.load(Ordering::Acquire))
        .count() as u64;
    stop.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    let gbit = |b: u64| per_sec(b, duration_s) * 8.0 / 1e9;
    let per: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let bytes: u64 = per.iter().sum();
    Ok(BulkResult {
        streams: opts.streams,
        direction: opts.direction,
        buffer,
        duration_s,
        bytes,
        gbit_per_s: gbit(bytes),
        stream_gbit_min: per.iter().copied().min().map(gbit).unwrap_or(0.0),
        stream_gbit_max: per.iter().copied().max().map(gbit).unwrap_or(0.0),
        errors,
        warmup_s,
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Runs `io` (one write or one read) until `stop`, adding the bytes it
/// moved to `st` when `counts`; an end of stream or an error other than a
/// timeout or an interruption marks `st` failed and ends it.
fn pump(st: &Stream, counts: bool, stop: &AtomicBool, mut io: impl FnMut() -> io::Result<usize>) {
    while !stop.load(Ordering::Acquire) {
        match io() {
            Ok(0) => {
                st.failed.store(true, Ordering::Release);
                break;
            }
            Ok(n) => {
                if counts {
                    st.count.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                st.failed.store(true, Ordering::Release);
                break;
            }
        }
    }
}

fn writer(mut s: TcpStream, buffer: usize, k: usize, st: &Stream, counts: bool, stop: &AtomicBool) {
    let buf: Vec<u8> = (0..buffer)
        .map(|i| (i.wrapping_add(k) % 251) as u8)
        .collect();
    pump(st, counts, stop, || s.write(&buf));
    let _ = s.shutdown(std::net::Shutdown::Write);
}

fn reader(mut s: TcpStream, buffer: usize, st: &Stream, stop: &AtomicBool) {
    let mut buf = vec![0u8; buffer];
    pump(st, true, stop, || s.read(&mut buf));
    let _ = s.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::load::testing::closed_port;

    /// A backend to start and the direction to measure through it.
    type Case = (fn() -> io::Result<Backend>, Direction);

    fn check(b: &Backend, direction: Direction, streams: usize) {
        let r = run(
            b.addr(),
            BulkOpts {
                streams,
                direction,
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(100),
                buffer: 64 * 1024,
            },
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.gbit_per_s > 0.1, "{r:?}");
        assert!(
            r.stream_gbit_min > 0.0 && r.stream_gbit_min <= r.stream_gbit_max,
            "{r:?}"
        );
        assert!(r.duration_s >= 0.5 && r.duration_s < 1.5, "{r:?}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["bytes"], r.bytes);
        assert_eq!(json["streams"], streams);
    }

    /// Up into a sink, down from a source, both ways through an echo: one
    /// stream, then four.
    #[test]
    fn each_direction_one_and_four_streams() {
        let cases: [Case; 3] = [
            (Backend::sink, Direction::Up),
            (Backend::source, Direction::Down),
            (Backend::echo, Direction::Echo),
        ];
        for (backend, direction) in cases {
            let b = backend().unwrap();
            check(&b, direction, 1);
            check(&b, direction, 4);
            assert!(b.bytes() > 0, "{direction:?}");
        }
    }

    #[test]
    fn direction_serializes_lowercase() {
        assert_eq!(serde_json::to_value(Direction::Down).unwrap(), "down");
    }

    #[test]
    fn closed_port_is_an_error() {
        assert!(run(closed_port(), BulkOpts::default()).is_err());
    }
}
