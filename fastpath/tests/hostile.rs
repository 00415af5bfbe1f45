//! Hostile clients (issue 13): what a connection that never logs in can
//! claim. A yamux session may open `fastpath.preAuthStreams` streams (8 by
//! default) until a Login on it succeeds; every stream over that is reset,
//! counted and logged, and a legitimate frpc session is served meanwhile.

mod common;

use std::io::Read;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench::backend::Backend;
use bench::client::mux::MuxClient;
use bench::client::transport::Dial;
use bench::client::Client;
use common::*;

const PRE_AUTH_STREAMS: usize = 8;

/// The attacks run one at a time: each measures one server's memory and
/// pushes the host's sockets hard, and two at once would measure each
/// other (TCP memory pressure slows every socket on the host).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens `streams` yamux streams on one connection that never logs in and
/// returns how many of them the server reset within `limit`, or as soon as
/// `expected` were (an accepted stream just waits for its first message).
/// The client stays connected while it is held.
fn flood(dial: &Dial, streams: usize, expected: usize, limit: Duration) -> (MuxClient, usize) {
    let (r, w) = dial.connect().expect("attacker connects");
    let m = MuxClient::start(r, w);
    let (tx, rx) = mpsc::channel();
    for _ in 0..streams {
        let mut s = m.open().expect("open a stream");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let reset =
                matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
            let _ = tx.send(reset);
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut reset = 0;
    // Once `expected` are in, a little longer: a server that reset more
    // than that must be seen doing it.
    let mut grace = None;
    loop {
        let until = match grace {
            Some(g) => g,
            None if reset >= expected => *grace.insert(Instant::now() + Duration::from_millis(300)),
            None => deadline,
        };
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok(true) => reset += 1,
            Ok(false) => {}
            Err(_) => break,
        }
    }
    (m, reset)
}

#[test]
fn streams_before_login_are_capped_and_a_real_session_is_served() {
    let _serial = one_at_a_time();
    let fp = Fastpath::start("", 2);
    let dial = fp.plain_dial();
    let rss_start = fp.daemon.rss_kib();

    // 20 connections × 512 streams that never send a byte. Within the
    // 10 s identification deadline only the first 8 of each may live.
    let (conns, streams) = (20, 512);
    let mut held = Vec::new();
    let mut reset = 0;
    for _ in 0..conns {
        let (m, n) = flood(
            &dial,
            streams,
            streams - PRE_AUTH_STREAMS,
            Duration::from_secs(3),
        );
        reset += n;
        held.push(m);
    }
    assert_eq!(
        reset,
        conns * (streams - PRE_AUTH_STREAMS),
        "each connection keeps exactly {PRE_AUTH_STREAMS} streams before login"
    );
    assert!(
        fp.daemon
            .wait_log("yamux streams refused before login", Duration::from_secs(2)),
        "refusal not logged"
    );

    // A logged-in frpc on yamux opens its work connections as streams
    // beyond the pre-login cap: they must be let in, and carry data.
    let echo = Backend::echo().unwrap();
    let mut o = fp.opts();
    o.tls = false;
    o.mux = true;
    o.pool_count = 16;
    let client = Client::login(o).expect("login during the flood");
    let port = tcp_proxy(&client, "legit", 0, echo.addr(), false, false);
    for seed in 0..4 {
        let (a, b) = echo_integrity(port, 1 << 20, seed);
        assert_eq!(a, b, "data differs through the legitimate session");
    }
    let rss_flood = fp.daemon.rss_kib();

    std::thread::sleep(Duration::from_millis(1500));
    let counted = fp.counter("mux_streams_refused");
    assert!(
        counted >= reset as u64,
        "{counted} counted, {reset} reset: {}",
        fp.stats()
    );
    // 20 × 8 streams waiting for a first message cost little; without the
    // cap this flood held 20 × 512 identification tasks and windows.
    let grown = rss_flood.saturating_sub(rss_start);
    eprintln!("RSS {rss_start} KiB at start, {rss_flood} KiB during the flood (+{grown} KiB)");
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB under the flood");
    drop(held);
    client.kill();
}

// ---------------------------------------------------------------- raw floods

/// A TCP connection from `src` (any 127/8 address on loopback) to `to`.
fn connect_from(
    src: std::net::IpAddr,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&std::net::SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

/// What a flood of yamux stream opens got back.
struct SynFlood {
    /// The attacker's connections, open until dropped.
    conns: Vec<std::net::TcpStream>,
    /// RST frames the server sent back, all connections together.
    resets: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        // The reader threads hold clones: shut the sockets, not just drop.
        for c in &self.conns {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// `conns` connections from `src` that each open `streams` yamux streams
/// (SYN frames only, as frpc opens them) and then send nothing; a thread
/// per connection reads what the server answers and counts RSTs.
fn syn_flood(
    to: std::net::SocketAddr,
    src: std::net::IpAddr,
    conns: usize,
    streams: u32,
) -> SynFlood {
    use proto::yamux::{Flags, FrameType, Header};
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let resets = std::sync::Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    let mut syns = Vec::with_capacity(streams as usize * 12);
    for i in 0..streams {
        syns.extend_from_slice(
            &Header::new(FrameType::WindowUpdate, Flags::SYN, 2 * i + 1, 0).to_bytes(),
        );
    }
    for _ in 0..conns {
        let mut s = connect_from(src, to).expect("attacker connects");
        let mut r = s.try_clone().unwrap();
        let resets = resets.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut have = 0;
            loop {
                let n = match r.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                have += n;
                let whole = have / 12 * 12;
                for f in buf[..whole].chunks_exact(12) {
                    // flags are bytes 2..4; RST is 0x8
                    if f[1] != 0 && u16::from_be_bytes([f[2], f[3]]) & 0x8 != 0 {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
        });
        s.write_all(&syns).expect("send stream opens");
        held.push(s);
    }
    SynFlood {
        conns: held,
        resets,
    }
}

/// Waits up to `limit` for `f` to hold.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Moves `len` bytes through the echo tunnel at `port` and returns MB/s.
fn echo_rate(port: u16, len: usize, seed: u64) -> f64 {
    let t = Instant::now();
    let (a, b) = echo_integrity(port, len, seed);
    assert_eq!(a, b, "data differs through the legitimate session");
    len as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// A logged-in frpc (plain TCP, yamux) with an echo proxy; its port.
fn legit_session(fp: &Fastpath, echo: &Backend) -> (Client, u16) {
    let mut o = fp.opts();
    o.tls = false;
    o.mux = true;
    o.pool_count = 4;
    let client = Client::login(o).expect("legitimate login");
    let port = tcp_proxy(&client, "legit", 0, echo.addr(), false, false);
    (client, port)
}

/// After an attack: RSS comes back within 20% of `rss_start` (KiB). The
/// fastpath hands freed pages back every 5 s (its trimmer thread), and a
/// slow machine may still be tearing the attack down when one round
/// passes, so this waits up to `settle` plus two rounds, and returns as
/// soon as the reading is inside the bound.
fn memory_comes_back(fp: &Fastpath, rss_start: u64, settle: Duration) {
    let bound = rss_start + rss_start / 5;
    let deadline = Instant::now() + settle + Duration::from_secs(10);
    let mut low = fp.daemon.rss_kib();
    while low > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        low = low.min(fp.daemon.rss_kib());
    }
    eprintln!("RSS after: {low} KiB");
    assert!(low <= bound, "RSS {low} KiB after, {rss_start} KiB before");
}

/// RSS (KiB) once it has settled: the lowest of a few readings over `for_`.
fn settled_rss(fp: &Fastpath, for_: Duration) -> u64 {
    let deadline = Instant::now() + for_;
    let mut low = fp.daemon.rss_kib();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        low = low.min(fp.daemon.rss_kib());
    }
    low
}

#[test]
fn a_stream_flood_ten_times_larger_stays_bounded_and_memory_comes_back() {
    let _serial = one_at_a_time();
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let (client, port) = legit_session(&fp, &echo);
    let before = echo_rate(port, 16 << 20, 1);
    let rss_start = settled_rss(&fp, Duration::from_millis(600));
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();

    // The flood (20 × 4,096 stream opens) and ten times that.
    let mut peaks = Vec::new();
    for streams in [4096u32, 40_960] {
        let conns = 20;
        let flood = syn_flood(fp.addr, attacker, conns, streams);
        let want = (conns * (streams as usize - PRE_AUTH_STREAMS)) as u64;
        let all_reset = eventually(Duration::from_secs(20), || {
            flood.resets.load(std::sync::atomic::Ordering::Relaxed) >= want
        });
        assert!(
            all_reset,
            "{} of {want} streams reset",
            flood.resets.load(std::sync::atomic::Ordering::Relaxed)
        );
        // Served at normal speed while the attacker holds its connections.
        let during = echo_rate(port, 16 << 20, 2);
        let peak = fp.daemon.rss_kib();
        eprintln!("{conns} × {streams} streams: RSS {rss_start} → {peak} KiB; echo {before:.0} MB/s before, {during:.0} MB/s during");
        // 24 MiB for the flood; ten times the flood measured
        // +19.5 to +25.5 MiB here and on CI (the x1 flood +4 to +6), so it
        // is held to 32 MiB: still under a third of what frps takes for the
        // x1 flood (98 MiB).
        let limit_kib = if streams > 4096 { 32 * 1024 } else { 24 * 1024 };
        assert!(
            peak < rss_start + limit_kib,
            "RSS grew from {rss_start} to {peak} KiB under {conns} × {streams} stream opens"
        );
        assert!(
            during > before / 4.0,
            "legitimate session slowed from {before:.0} to {during:.0} MB/s"
        );
        drop(flood);
        peaks.push(peak);
    }
    // The streams that stayed wait for a first message; 10 s later they are
    // gone, and so is the memory.
    eprintln!("RSS at start {rss_start} KiB, peaks during the floods {peaks:?}");
    memory_comes_back(&fp, rss_start, Duration::from_secs(7));
    client.kill();
}

#[test]
fn ten_thousand_stalled_connections_from_one_source_are_capped() {
    let _serial = one_at_a_time();
    // Two workers: each holds half of the per-source cap.
    let fp = Fastpath::start("fastpath.preAuthPerSource = 1000\n", 2);
    let echo = Backend::echo().unwrap();
    let (client, port) = legit_session(&fp, &echo);
    let rss_start = settled_rss(&fp, Duration::from_millis(600));
    raise_nofile();
    let attacker: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..10_000 {
        match connect_from(attacker, fp.addr) {
            Ok(s) => conns.push(s),
            Err(e) => panic!("connect {}: {e}", conns.len()),
        }
    }
    // Those over the cap are closed at once: a read sees EOF or a reset.
    std::thread::sleep(Duration::from_millis(1500));
    let mut open = 0;
    for s in &conns {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        if matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    let refused = fp.counter("preauth_refused");
    let rss = fp.daemon.rss_kib();
    eprintln!("10000 stalled connections: {open} kept open, {refused} refused; RSS {rss_start} → {rss} KiB");
    assert!(
        open <= 1000,
        "{open} unidentified connections kept from one source"
    );
    assert!(open >= 900, "only {open} kept: the cap is 1000");
    assert!(refused >= 9000, "{refused} counted as refused");
    assert!(
        fp.daemon
            .wait_log("over a pre-auth limit", Duration::from_secs(2)),
        "refusals not logged"
    );
    // Other sources are served meanwhile.
    echo_rate(port, 4 << 20, 3);
    let mut o = fp.opts();
    o.tls = false;
    Client::login(o)
        .expect("a login from another address")
        .kill();
    // The rest are closed at the 10 s identification deadline.
    let closed_all = eventually(Duration::from_secs(15), || {
        conns.iter().all(|s| {
            let mut b = [0u8; 1];
            !matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
    });
    assert!(
        closed_all,
        "stalled connections outlived the identification deadline"
    );
    assert!(
        eventually(Duration::from_secs(3), || fp.counter("identify_timeouts")
            >= open as u64),
        "{} identification timeouts counted, {open} connections timed out",
        fp.counter("identify_timeouts")
    );
    drop(conns);
    memory_comes_back(&fp, rss_start, Duration::from_secs(6));
    client.kill();
}

/// Lets this process hold tens of thousands of sockets.
#[test]
fn a_session_whose_users_never_read_stays_within_its_budget() {
    let _serial = one_at_a_time();
    // An 8 MiB session budget makes the bound sharp: without it, 1,000
    // streams × 256 KiB of initial window is 250 MiB.
    // 256 KiB of unsent data per user socket (the default is 1 MiB): the
    // 1,000 users' sockets then cannot push this host into TCP memory
    // pressure, which would slow the other session for reasons outside
    // the fastpath.
    let fp = Fastpath::start(
        "fastpath.sessionBudget = 8388608\nfastpath.userNotSentLowat = 262144\n",
        1,
    );
    // Each user connection gets 1 MiB from the source (an endless one
    // would fill this host's own sockets between the source and the
    // attacking client, which on a real attack sit on the attacker's host).
    let source = Backend::source_limited(1 << 20).unwrap();
    let echo = Backend::echo().unwrap();
    let mut o = fp.opts();
    o.tls = false;
    o.mux = true;
    o.pool_count = 8;
    let attacker = Client::login(o).expect("attacker logs in");
    let port = tcp_proxy(&attacker, "firehose", 0, source.addr(), false, false);
    // Another session on the same worker.
    let (other, other_port) = legit_session(&fp, &echo);
    let before = echo_rate(other_port, 16 << 20, 4);
    let rss_start = settled_rss(&fp, Duration::from_millis(600));
    raise_nofile();
    // 1,000 users that never read what the source pours at them. Their
    // receive buffers are small so that the kernel's own socket memory
    // stays small too (past tcp_mem's pressure mark it would shrink every
    // socket's buffers, the other session's included).
    let to: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let users: Vec<_> = (0..1000)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            sock.connect(&to.into()).expect("user connects");
            std::net::TcpStream::from(sock)
        })
        .collect();
    let held_enough = eventually(Duration::from_secs(20), || fp.counter("mux_holds") > 0);
    // Let the user sockets' buffers fill and everything settle.
    let mut last = 0;
    eventually(Duration::from_secs(10), || {
        let now = fp.counter("mux_held");
        std::thread::sleep(Duration::from_millis(1000));
        std::mem::replace(&mut last, now) == now
    });
    let held = fp.counter("mux_held");
    let rss = fp.daemon.rss_kib();
    let during = echo_rate(other_port, 16 << 20, 5);
    eprintln!("1000 unread users: {held} bytes held, RSS {rss_start} → {rss} KiB; the other session {before:.0} → {during:.0} MB/s");
    assert!(
        held_enough,
        "the session was never held at its budget: {}",
        fp.stats()
    );
    assert!(
        held <= 8 << 20 | 1 << 20,
        "{held} bytes held for one session"
    );
    // The budget bounds what is held (above); the process around it (1,000
    // relays, their streams, allocator slack) stays far below the 250 MiB
    // that 1,000 initial windows could pin.
    assert!(
        rss < rss_start + 64 * 1024,
        "RSS grew from {rss_start} to {rss} KiB"
    );
    assert!(
        during > before / 4.0,
        "another session slowed from {before:.0} to {during:.0} MB/s"
    );
    // Users that take nothing for 2 s while the session is over budget are
    // reset, and the session itself lives on. (Its other proxies share one
    // TCP connection with what the attacking client still has queued for
    // the stalled streams, so how fast they go is up to that client.)
    assert!(
        eventually(Duration::from_secs(10), || fp.counter("mux_stalled_resets")
            > 0),
        "no stalled stream was reset: {}",
        fp.stats()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !attacker.is_closed(),
        "the session was closed, not its stalled streams"
    );
    eprintln!(
        "{} stalled streams reset; the session lives on",
        fp.counter("mux_stalled_resets")
    );
    drop(users);
    memory_comes_back(&fp, rss_start, Duration::from_secs(7));
    attacker.kill();
    other.kill();
}

/// Whether the kernel still has `s` established: the server's FIN (which
/// waits behind whatever the attacker never read) or RST shows here.
fn established(s: &std::net::TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into the buffer given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // tcpi_state is the first byte; 1 is TCP_ESTABLISHED.
    r == 0 && info[0] == 1
}

/// A logged-in client that sends Pings as fast as it can and never reads a
/// Pong: `mux` picks tcpMux. Returns how long until the server closed the
/// connection (None: not within `limit`), and the peak RSS seen (KiB).
fn ping_flood(fp: &Fastpath, mux: bool, limit: Duration) -> (Option<Duration>, u64) {
    use bench::load::attack::{raw_control::RawControl, Target};
    let target = Target {
        frp: fp.addr,
        token: TOKEN.into(),
        tls: false,
        mux,
        pid: fp.daemon.pid(),
    };
    let mut ctl = RawControl::login(&target, Duration::from_secs(5)).expect("attacker logs in");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ping = proto::msg::Message::Ping(proto::msg::Ping {
        privilege_key: proto::auth::privilege_key(TOKEN, ts),
        timestamp: ts,
    });
    let mut plain = Vec::new();
    for _ in 0..256 {
        proto::frame::encode(&ping, &mut plain);
    }
    let mut sock = ctl.socket().try_clone().unwrap();
    write_until_closed(fp, &mut sock, limit, |out| ctl.seal(&plain, out))
}

/// Writes what `refill` appends, again and again, to `sock` (a 50 ms write
/// timeout is set), until the server closes it or `limit` passes. Returns
/// how long until it was closed (None: not within `limit`) and the peak RSS
/// seen while writes stalled (KiB).
fn write_until_closed(
    fp: &Fastpath,
    sock: &mut std::net::TcpStream,
    limit: Duration,
    mut refill: impl FnMut(&mut Vec<u8>),
) -> (Option<Duration>, u64) {
    use std::io::Write;
    sock.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let mut peak = 0;
    let mut buf = Vec::new();
    let mut at = 0;
    while start.elapsed() < limit {
        if at == buf.len() {
            buf.clear();
            refill(&mut buf);
            at = 0;
        }
        match sock.write(&buf[at..]) {
            Ok(0) => return (Some(start.elapsed()), peak),
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                peak = peak.max(fp.daemon.rss_kib());
                if !established(sock) {
                    return (Some(start.elapsed()), peak);
                }
            }
            Err(_) => return (Some(start.elapsed()), peak),
        }
    }
    (None, peak)
}

#[test]
fn a_ping_flood_that_never_reads_is_held_then_closed() {
    let _serial = one_at_a_time();
    let fp = Fastpath::start("fastpath.writeStallSecs = 2\n", 1);
    let echo = Backend::echo().unwrap();
    let (client, port) = legit_session(&fp, &echo);
    // The legitimate session's own steady state is part of the start.
    echo_rate(port, 4 << 20, 7);
    let rss_start = settled_rss(&fp, Duration::from_millis(600));
    for mux in [false, true] {
        let (closed, peak) = ping_flood(&fp, mux, Duration::from_secs(20));
        eprintln!(
            "Ping flood (tcpMux {mux}): closed after {closed:?}, RSS {rss_start} → {peak} KiB"
        );
        let closed = closed.unwrap_or_else(|| {
            let log = fp.daemon.log();
            let tail = log[log.len().saturating_sub(15)..].join("\n");
            panic!(
                "the server never closed a client that reads nothing: {}\n{tail}",
                fp.stats()
            )
        });
        assert!(
            closed < Duration::from_secs(10),
            "closed only after {closed:?}"
        );
        assert!(
            peak < rss_start + 16 * 1024,
            "RSS grew from {rss_start} to {peak} KiB"
        );
        // The legitimate session is untouched.
        echo_rate(port, 4 << 20, 6);
    }
    // yamux's own Ping, which the session answers by itself: the answers
    // pile up until the reader stops, and the connection is closed after
    // the write stall.
    {
        use proto::yamux::{Flags, FrameType, Header};
        let mut s = connect_from("127.0.0.4".parse().unwrap(), fp.addr).unwrap();
        let pings: Vec<u8> = (0..4096u32)
            .flat_map(|i| Header::new(FrameType::Ping, Flags::SYN, 0, i).to_bytes())
            .collect();
        let (closed, peak) = write_until_closed(&fp, &mut s, Duration::from_secs(20), |out| {
            out.extend_from_slice(&pings)
        });
        eprintln!("yamux Ping flood: closed after {closed:?}, RSS {rss_start} → {peak} KiB");
        let closed = closed.expect("the server never closed a yamux Ping flood");
        assert!(
            closed < Duration::from_secs(10),
            "closed only after {closed:?}"
        );
        assert!(
            peak < rss_start + 16 * 1024,
            "RSS grew from {rss_start} to {peak} KiB"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || fp.counter("write_stalls") >= 1),
        "no write stall counted: {}",
        fp.stats()
    );
    memory_comes_back(&fp, rss_start, Duration::from_secs(6));
    client.kill();
}
