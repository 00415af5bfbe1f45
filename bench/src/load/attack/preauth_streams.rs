//! Streams before login: `conns` plain TCP connections to the bind port,
//! each a yamux session that opens `streams` streams at once (WindowUpdate
//! frames with SYN, stream ids 1, 3, 5, …) and then sends nothing more and
//! never logs in. frps (tcpMux on) accepts every stream and waits up to
//! 10 s for its first message; a careful server refuses streams beyond a
//! few until the session has logged in.
//!
//! Each connection has a thread that, once its opens are written, reads
//! what the server answers and tallies it: streams acknowledged, streams
//! reset (RST), GoAway, and whether the server ended the session. Reading
//! costs the server nothing it would not spend anyway, and keeps its
//! answers from backing up.

use super::{dial, hold, LoginCheck, RssWatch, Target, Timing};
use proto::yamux::{Flags, FrameType, Header, HEADER_LEN};
use serde::Serialize;
use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many sessions and streams.
#[derive(Debug, Clone, Copy)]
pub struct PreauthOpts {
    /// Connections, each one yamux session.
    pub conns: usize,
    /// Streams each session opens.
    pub streams: usize,
    /// Limit on each connect and on writing a session's opens.
    pub timeout: Duration,
}

/// Outcome of one pre-login stream flood.
#[derive(Debug, Clone, Serialize)]
pub struct PreauthResult {
    pub conns: usize,
    pub streams_per_conn: usize,
    /// Connections that opened.
    pub connected: u64,
    /// Stream opens written in full.
    pub streams_sent: u64,
    /// Stream frames the server sent with ACK.
    pub streams_acked: u64,
    /// Frames the server sent with RST.
    pub streams_reset: u64,
    /// GoAway frames the server sent.
    pub go_aways: u64,
    /// Sessions the server ended (EOF or reset) before the hold was over.
    pub sessions_closed: u64,
    /// Seconds from the first connect to the last session's opens written.
    pub open_s: f64,
    /// The first connect or write error.
    pub first_error: Option<String>,
    #[serde(flatten)]
    pub memory: super::Footprint,
    #[serde(flatten)]
    pub login: LoginCheck,
}

/// What the server answered on one session.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    connected: u64,
    sent: u64,
    acked: u64,
    reset: u64,
    go_aways: u64,
    closed: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.connected += o.connected;
        self.sent += o.sent;
        self.acked += o.acked;
        self.reset += o.reset;
        self.go_aways += o.go_aways;
        self.closed += o.closed;
    }
}

/// Counts the frames in a byte stream from a yamux server, whole or in
/// pieces: a header at a time, skipping Data payloads.
#[derive(Default)]
struct FrameCounter {
    head: Vec<u8>,
    skip: usize,
}

impl FrameCounter {
    /// Counts the frames `data` completes into `t`; false once the bytes
    /// are not yamux (the rest is not counted).
    fn feed(&mut self, mut data: &[u8], t: &mut Tally) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() < HEADER_LEN {
                break;
            }
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&self.head);
            self.head.clear();
            let Ok(h) = Header::decode(&b) else {
                return false;
            };
            if h.flags.contains(Flags::ACK) {
                t.acked += 1;
            }
            if h.flags.contains(Flags::RST) {
                t.reset += 1;
            }
            match h.frame_type {
                FrameType::GoAway => t.go_aways += 1,
                FrameType::Data => self.skip = h.length as usize,
                _ => {}
            }
        }
        true
    }
}

/// The opens of one session: WindowUpdate|SYN for streams 1, 3, 5, ….
fn opens(streams: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(streams * HEADER_LEN);
    for i in 0..streams {
        let id = u32::try_from(2 * i + 1).unwrap_or(u32::MAX);
        out.extend_from_slice(&Header::new(FrameType::WindowUpdate, Flags::SYN, id, 0).to_bytes());
    }
    out
}

/// Runs the flood against `target` and measures it (see the module docs).
/// Fails only if the server's memory cannot be read.
pub fn run(target: &Target, timing: &Timing, opts: PreauthOpts) -> io::Result<PreauthResult> {
    let watch = RssWatch::start(target.pid, timing.ceiling_kib)?;
    let frames: Arc<[u8]> = opens(opts.streams).into();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(parking_lot::Mutex::new(None::<String>));
    let start = Instant::now();
    let mut threads = Vec::with_capacity(opts.conns);
    for k in 0..opts.conns {
        if watch.over_ceiling() {
            break;
        }
        let (f, st, d, err) = (
            frames.clone(),
            stop.clone(),
            done.clone(),
            first_error.clone(),
        );
        let addr = target.frp;
        let t = std::thread::Builder::new()
            .name(format!("preauth-{k}"))
            .stack_size(128 * 1024)
            .spawn(move || session(addr, &f, opts.timeout, &st, &d, &err));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                first_error
                    .lock()
                    .get_or_insert_with(|| format!("thread: {e}"));
            }
        }
    }
    // Every session's opens written (or failed), within a limit.
    let deadline = Instant::now() + opts.timeout * 2;
    while done.load(Ordering::Acquire) < threads.len()
        && Instant::now() < deadline
        && !watch.over_ceiling()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let open_s = start.elapsed().as_secs_f64();
    let login = hold(target, timing, &watch);
    stop.store(true, Ordering::Release);
    let mut total = Tally::default();
    for t in threads {
        if let Ok(t) = t.join() {
            total.add(&t);
        }
    }
    let memory = watch.finish(timing.after);
    let first_error = first_error.lock().take();
    Ok(PreauthResult {
        conns: opts.conns,
        streams_per_conn: opts.streams,
        connected: total.connected,
        streams_sent: total.sent,
        streams_acked: total.acked,
        streams_reset: total.reset,
        go_aways: total.go_aways,
        sessions_closed: total.closed,
        open_s,
        first_error,
        memory,
        login,
    })
}

/// One session: connect, write the opens, then tally the answers until
/// `stop`; the socket resets when it goes out of scope. `done` counts the
/// session once its opens are written or it failed to connect, so that
/// the wait for all of them ends either way.
fn session(
    addr: std::net::SocketAddr,
    frames: &[u8],
    timeout: Duration,
    stop: &AtomicBool,
    done: &AtomicUsize,
    first_error: &parking_lot::Mutex<Option<String>>,
) -> Tally {
    let mut t = Tally::default();
    let note = |e: String| {
        first_error.lock().get_or_insert(e);
    };
    let mut s = match dial::connect(addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            note(format!("connect: {e}"));
            done.fetch_add(1, Ordering::AcqRel);
            return t;
        }
    };
    t.connected = 1;
    let written = write_within(&mut s, frames, timeout);
    t.sent = (written / HEADER_LEN) as u64;
    done.fetch_add(1, Ordering::AcqRel);
    if written < frames.len() {
        note(format!(
            "wrote {written} of {} bytes of stream opens",
            frames.len()
        ));
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut counter = FrameCounter::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut yamux = true;
    while !stop.load(Ordering::Acquire) {
        match s.read(&mut buf) {
            Ok(0) => {
                t.closed = 1;
                break;
            }
            Ok(n) => {
                if yamux {
                    yamux = counter.feed(&buf[..n], &mut t);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                t.closed = 1;
                break;
            }
        }
    }
    // Hold a session the server ended until the others end too, so that
    // all close at the same time.
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    t
}

/// Writes as much of `data` as the peer takes within `limit`; returns the
/// bytes written.
pub(crate) fn write_within(s: &mut std::net::TcpStream, data: &[u8], limit: Duration) -> usize {
    let end = Instant::now() + limit;
    let mut at = 0;
    while at < data.len() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_write_timeout(Some(left)).is_err() {
            break;
        }
        match s.write(&data[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_resets_every_stream_is_tallied() {
        use std::net::TcpListener;
        // Reads each session's opens and resets every stream, then holds.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let mut got = vec![0u8; 5 * HEADER_LEN];
                    if s.read_exact(&mut got).is_err() {
                        return;
                    }
                    for h in got.chunks(HEADER_LEN) {
                        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        let rst = Header::new(FrameType::WindowUpdate, Flags::RST, id, 0);
                        let _ = s.write_all(&rst.to_bytes());
                    }
                    let _ = s.read(&mut [0u8; 1]);
                });
            }
        });
        let (target, timing) = super::super::test_setup(addr);
        let r = run(
            &target,
            &timing,
            PreauthOpts {
                conns: 3,
                streams: 5,
                timeout: Duration::from_secs(2),
            },
        )
        .unwrap();
        assert_eq!((r.connected, r.streams_sent), (3, 15), "{r:?}");
        assert_eq!((r.streams_reset, r.streams_acked), (15, 0), "{r:?}");
        assert_eq!(r.sessions_closed, 0, "{r:?}");
    }

    #[test]
    fn opens_are_syn_window_updates_on_odd_ids() {
        let f = opens(3);
        assert_eq!(f.len(), 36);
        assert_eq!(&f[..12], &[0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&f[12..24], &[0, 1, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0]);
        assert_eq!(&f[24..], &[0, 1, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0]);
    }

    #[test]
    fn counter_tallies_acks_resets_and_go_away_across_pieces() {
        let mut wire = Vec::new();
        let mut put = |ty, flags, id, len: u32, payload: &[u8]| {
            wire.extend_from_slice(&Header::new(ty, flags, id, len).to_bytes());
            wire.extend_from_slice(payload);
        };
        put(FrameType::WindowUpdate, Flags::ACK, 1, 5 << 20, &[]);
        put(FrameType::Data, Flags::ACK, 3, 4, b"abcd");
        put(FrameType::WindowUpdate, Flags::RST, 5, 0, &[]);
        put(FrameType::WindowUpdate, Flags::RST, 7, 0, &[]);
        put(FrameType::GoAway, Flags::NONE, 0, 1, &[]);
        for step in [1, 5, 13, wire.len()] {
            let (mut c, mut t) = (FrameCounter::default(), Tally::default());
            for piece in wire.chunks(step) {
                assert!(c.feed(piece, &mut t));
            }
            assert_eq!((t.acked, t.reset, t.go_aways), (2, 2, 1), "step {step}");
        }
        let (mut c, mut t) = (FrameCounter::default(), Tally::default());
        assert!(!c.feed(b"HTTP/1.1 400 Bad Request\r\n", &mut t));
    }
}
