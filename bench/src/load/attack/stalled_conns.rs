//! Stalled connections: `conns` TCP connections from one source address to
//! the bind port that send nothing (or one byte, 0x00, which starts a yamux
//! session, and nothing after it). frps waits 10 s for the first byte, and
//! after a 0x00 has a yamux session that waits for its first frame with no
//! limit. After the hold, each connection is checked without reading from
//! it: one the server closed or reset is "refused", like one that could not
//! connect; the rest it "kept open".

use super::{dial, hold, LoginCheck, RssWatch, Target, Timing};
use serde::Serialize;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How many connections, and what they send.
#[derive(Debug, Clone, Copy)]
pub struct StalledOpts {
    /// Connections to open and hold.
    pub conns: usize,
    /// The one byte each sends, or nothing.
    pub first_byte: Option<u8>,
    /// Threads opening them (a connect the server's backlog delays holds
    /// up only its own thread).
    pub threads: usize,
    /// Limit on each connect.
    pub timeout: Duration,
    /// Limit on opening them all: a server that stops accepting makes
    /// every connect wait out its timeout.
    pub open_limit: Duration,
}

/// Outcome of one stalled-connections run.
#[derive(Debug, Clone, Serialize)]
pub struct StalledResult {
    pub conns: usize,
    pub first_byte: Option<u8>,
    /// Connections that opened (and sent their byte).
    pub connected: u64,
    /// Connections that could not open or send.
    pub connect_failed: u64,
    /// Open ones the server had closed or reset by the end of the hold.
    pub closed_by_server: u64,
    /// `connect_failed + closed_by_server`.
    pub refused: u64,
    /// Open ones the server still held at the end of the hold.
    pub kept_open: u64,
    /// Seconds to open them all.
    pub open_s: f64,
    /// The first connect error.
    pub first_error: Option<String>,
    #[serde(flatten)]
    pub memory: super::Footprint,
    #[serde(flatten)]
    pub login: LoginCheck,
}

/// What one opening thread got.
#[derive(Default)]
struct Opened {
    socks: Vec<TcpStream>,
    failed: u64,
    first_error: Option<String>,
}

/// Runs the attack against `target` and measures it (see the module docs).
/// Fails only if the server's memory cannot be read.
pub fn run(target: &Target, timing: &Timing, opts: StalledOpts) -> io::Result<StalledResult> {
    let watch = RssWatch::start(target.pid, timing.ceiling_kib)?;
    let start = Instant::now();
    let open_until = start + opts.open_limit;
    let threads = opts.threads.max(1);
    let opened: Vec<Opened> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let share = opts.conns / threads + usize::from(k < opts.conns % threads);
                let watch = &watch;
                std::thread::Builder::new()
                    .name(format!("stalled-{k}"))
                    .stack_size(128 * 1024)
                    .spawn_scoped(scope, move || {
                        open_share(target, &opts, share, open_until, watch)
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_default(),
                Err(e) => Opened {
                    first_error: Some(format!("thread: {e}")),
                    ..Opened::default()
                },
            })
            .collect()
    });
    let open_s = start.elapsed().as_secs_f64();
    let login = hold(target, timing, &watch);
    let mut connected = 0u64;
    let mut failed = 0u64;
    let mut closed = 0u64;
    let mut first_error = None;
    for o in &opened {
        connected += o.socks.len() as u64;
        failed += o.failed;
        closed += o.socks.iter().filter(|s| dial::peer_closed(s)).count() as u64;
        if first_error.is_none() {
            first_error.clone_from(&o.first_error);
        }
    }
    drop(opened);
    let memory = watch.finish(timing.after);
    Ok(StalledResult {
        conns: opts.conns,
        first_byte: opts.first_byte,
        connected,
        connect_failed: failed,
        closed_by_server: closed,
        refused: failed + closed,
        kept_open: connected - closed,
        open_s,
        first_error,
        memory,
        login,
    })
}

/// Opens `n` connections (fewer once the server passes the ceiling or
/// `until` has passed: those not tried count as failed).
fn open_share(
    target: &Target,
    opts: &StalledOpts,
    n: usize,
    until: Instant,
    watch: &RssWatch,
) -> Opened {
    let mut o = Opened {
        socks: Vec::with_capacity(n),
        ..Opened::default()
    };
    for k in 0..n {
        if watch.over_ceiling() {
            break;
        }
        if Instant::now() > until {
            o.failed += (n - k) as u64;
            o.first_error
                .get_or_insert_with(|| "not all opened within the time limit".into());
            break;
        }
        let r = dial::connect(target.frp, opts.timeout).and_then(|mut s| {
            if let Some(b) = opts.first_byte {
                s.write_all(&[b])?;
            }
            Ok(s)
        });
        match r {
            Ok(s) => o.socks.push(s),
            Err(e) => {
                o.failed += 1;
                o.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, TcpListener};

    #[test]
    fn counts_what_the_server_closed_and_kept() {
        // Keeps every other attacker connection and closes the rest, and
        // the probe's login (from 127.0.0.1), at once: the probe fails fast.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for (n, s) in l.incoming().flatten().enumerate() {
                let attacker = s.peer_addr().ok().map(|a| a.ip());
                if attacker == Some(IpAddr::V4(dial::ATTACKER_SOURCE)) && n % 2 == 0 {
                    kept.push(s);
                }
            }
        });
        let (target, timing) = super::super::test_setup(addr);
        let r = run(
            &target,
            &timing,
            StalledOpts {
                conns: 20,
                first_byte: Some(0),
                threads: 3,
                timeout: Duration::from_secs(2),
                open_limit: Duration::from_secs(10),
            },
        )
        .unwrap();
        assert_eq!((r.connected, r.connect_failed), (20, 0), "{r:?}");
        assert_eq!(
            (r.closed_by_server, r.kept_open, r.refused),
            (10, 10, 10),
            "{r:?}"
        );
        assert!(!r.login.ok && r.login.error.is_some(), "{r:?}");
        assert!(
            r.memory.rss_before_kib > 0 && r.memory.samples >= 1,
            "{r:?}"
        );
    }
}
