//! Ping flood: a client logs in ([`RawControl`]), then sends Ping messages
//! (with a correct privilege key, so a server that authenticates heartbeats
//! accepts them too) as fast as its connection takes them, and never reads
//! a byte, for `duration`. Every Ping asks for a Pong the client will not
//! take: a server that keeps answering queues the Pongs; a careful one
//! stops reading the control once its writes back up, and the client's
//! writes stall; with tcpMux, the client then overruns the stream window it
//! cannot see, and the server may close the session.
//!
//! Writes wait at most 50 ms each; whether the server closed the connection
//! is checked without reading it, between writes.

use super::raw_control::RawControl;
use super::{dial, LoginCheck, LoginProbe, RssWatch, Target, Timing};
use proto::frame;
use proto::msg::{Message, Ping};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long, and limits.
#[derive(Debug, Clone, Copy)]
pub struct PingFloodOpts {
    /// How long the flood lasts.
    pub duration: Duration,
    /// Limit on the login (each step).
    pub timeout: Duration,
}

/// Outcome of one Ping flood.
#[derive(Debug, Clone, Serialize)]
pub struct PingFloodResult {
    pub duration_s: f64,
    /// Pings written in full.
    pub pings_sent: u64,
    /// Bytes written (encrypted, with yamux frames under tcpMux).
    pub bytes_sent: u64,
    /// Seconds the writes waited on a full connection (the server not
    /// reading).
    pub stalled_s: f64,
    /// Seconds into the flood at which the server closed or reset the
    /// connection, if it did.
    pub server_closed_after_s: Option<f64>,
    #[serde(flatten)]
    pub memory: super::Footprint,
    #[serde(flatten)]
    pub login: LoginCheck,
}

/// Pings sealed together into one write.
const BATCH: u64 = 256;

/// How long one write may wait.
const WRITE_WAIT: Duration = Duration::from_millis(50);

/// Runs the flood against `target` and measures it (see the module docs).
/// Fails if the server's memory cannot be read or the login fails.
pub fn run(target: &Target, timing: &Timing, opts: PingFloodOpts) -> io::Result<PingFloodResult> {
    let watch = RssWatch::start(target.pid, timing.ceiling_kib)?;
    let mut ctl = RawControl::login(target, opts.timeout)
        .map_err(|e| io::Error::other(format!("attacker's login: {e}")))?;
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let ping = Message::Ping(Ping {
        privilege_key: proto::auth::privilege_key(&target.token, ts),
        timestamp: ts,
    });
    let mut plain = Vec::new();
    for _ in 0..BATCH {
        frame::encode(&ping, &mut plain);
    }
    let mut sock = ctl.socket().try_clone()?;
    sock.set_write_timeout(Some(WRITE_WAIT))?;
    // The legitimate login, in the middle of the flood.
    let probe = LoginProbe::start(target, opts.duration / 2);
    let mut pending: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut at = 0usize;
    // Cumulative wire offset at which each queued batch ends.
    let mut batches: VecDeque<u64> = VecDeque::new();
    let (mut written, mut pings_sent) = (0u64, 0u64);
    let mut stalled = Duration::ZERO;
    let mut closed_after = None;
    let start = Instant::now();
    while start.elapsed() < opts.duration && !watch.over_ceiling() {
        if pending.len() - at < 64 * 1024 {
            pending.drain(..at);
            at = 0;
            ctl.seal(&plain, &mut pending);
            batches.push_back(written + pending.len() as u64);
        }
        let t = Instant::now();
        match sock.write(&pending[at..]) {
            Ok(0) => {
                closed_after = Some(start.elapsed().as_secs_f64());
                break;
            }
            Ok(n) => {
                at += n;
                written += n as u64;
                while batches.front().is_some_and(|&end| end <= written) {
                    batches.pop_front();
                    pings_sent += BATCH;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                stalled += t.elapsed();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                closed_after = Some(start.elapsed().as_secs_f64());
                break;
            }
        }
        if dial::peer_closed(&sock) {
            closed_after = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    let duration_s = start.elapsed().as_secs_f64();
    let login = probe.finish();
    drop(sock);
    drop(ctl);
    let memory = watch.finish(timing.after);
    Ok(PingFloodResult {
        duration_s,
        pings_sent,
        bytes_sent: written,
        stalled_s: stalled.as_secs_f64(),
        server_closed_after_s: closed_after,
        memory,
        login,
    })
}
