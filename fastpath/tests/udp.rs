//! `udp` proxies through the real fastpath with the in-repo frpc: datagrams
//! echoed by a local UDP service, counted for loss; every transport and
//! payload wrapping; users kept apart; a flood at a proxy whose frpc does
//! not read; a malformed or oversized UDPPacket from frpc.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bench::client::session::read_msg_exact;
use bench::client::transport::{BoxRead, BoxWrite};
use bench::client::{Client, ClientOpts, ProxySpec};
use common::Fastpath;
use proto::msg::{Message, NewWorkConn};

/// A UDP echo service on loopback, until dropped.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        Echo { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Register a udp proxy to `local`; its public port.
fn udp_proxy(c: &Client, name: &str, local: SocketAddr, enc: bool, comp: bool) -> u16 {
    let spec = ProxySpec {
        use_encryption: enc,
        use_compression: comp,
        ..ProxySpec::plain(name, 0, local)
    };
    let addr = c
        .register_proxy(spec, |np| np.proxy_type = "udp".into())
        .unwrap_or_else(|e| panic!("udp proxy {name}: {e}"));
    addr.trim_start_matches(':').parse().expect(":port")
}

/// What an echo run saw.
#[derive(Debug)]
struct Run {
    sent: u64,
    lost: u64,
    wrong: u64,
    rate: f64,
}

/// Send `count` numbered datagrams of `size` bytes to the proxy at `port`,
/// at most `window` unanswered at a time, and check each echo. A datagram
/// not answered within 1 s counts as lost.
fn echo_run(port: u16, count: u64, size: usize, window: u64) -> Run {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let size = size.max(8);
    let payload = |seq: u64| {
        let mut d = vec![(seq % 251) as u8; size];
        d[..8].copy_from_slice(&seq.to_be_bytes());
        d
    };
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut next, mut lost, mut wrong) = (0u64, 0u64, 0u64);
    let mut outstanding: HashSet<u64> = HashSet::new();
    let mut buf = vec![0u8; 65536];
    let t = Instant::now();
    while next < count || !outstanding.is_empty() {
        while next < count && (outstanding.len() as u64) < window {
            s.send(&payload(next)).unwrap();
            outstanding.insert(next);
            next += 1;
        }
        match s.recv(&mut buf) {
            Ok(n) => {
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                if n != size || buf[..n] != payload(seq)[..] || !seen.insert(seq) {
                    wrong += 1;
                }
                outstanding.remove(&seq);
            }
            Err(_) => {
                // Nothing for 1 s: what is still out is lost.
                lost += outstanding.len() as u64;
                outstanding.clear();
            }
        }
    }
    Run {
        sent: count,
        lost,
        wrong,
        rate: count as f64 / t.elapsed().as_secs_f64(),
    }
}

fn login(fp: &Fastpath, adjust: impl FnOnce(&mut ClientOpts)) -> Client {
    let mut o = fp.opts();
    adjust(&mut o);
    Client::login(o)
        .unwrap_or_else(|e| panic!("login: {e}; fastpath log:\n{}", fp.daemon.log().join("\n")))
}

/// 100k datagrams through a udp proxy under frpc's defaults (TLS and
/// yamux), none lost on loopback at the rate a window of 64 sets.
#[test]
fn a_hundred_thousand_datagrams_echo_without_loss() {
    let fp = Fastpath::start("", 2);
    let echo = Echo::start();
    let c = login(&fp, |_| {});
    let port = udp_proxy(&c, "dns", echo.addr, false, false);
    let run = echo_run(port, 100_000, 64, 64);
    println!(
        "udp echo, 64 B, TLS + yamux: {:.0} datagrams/s, {run:?}",
        run.rate
    );
    assert_eq!((run.lost, run.wrong), (0, 0), "{run:?}");
    assert!(
        fp.counter("udp_datagrams_in") >= run.sent || {
            std::thread::sleep(Duration::from_millis(1500));
            fp.counter("udp_datagrams_in") >= run.sent
        }
    );
    assert_eq!(fp.counter("udp_dropped"), 0);
    c.kill();
}

/// Every way a work connection can come and be wrapped carries datagrams
/// whole: plain TCP and TLS, with and without yamux, wire v2, encryption
/// and compression, and datagrams up to `udpPacketSize`.
#[test]
fn every_transport_and_wrapping_carries_datagrams() {
    let fp = Fastpath::start("", 2);
    let echo = Echo::start();
    type Case = (&'static str, fn(&mut ClientOpts), bool, bool, usize);
    let cases: [Case; 6] = [
        (
            "plain tcp, no mux",
            |o| (o.tls, o.mux) = (false, false),
            false,
            false,
            64,
        ),
        ("tls, no mux, 1200 B", |o| o.mux = false, false, false, 1200),
        ("tls + mux, encrypted", |_| {}, true, false, 512),
        ("tls + mux, compressed", |_| {}, false, true, 1200),
        (
            "plain mux, both, 1500 B",
            |o| o.tls = false,
            true,
            true,
            1500,
        ),
        ("wire v2, both", |o| o.wire_v2 = true, true, true, 300),
    ];
    for (i, (what, adjust, enc, comp, size)) in cases.into_iter().enumerate() {
        let c = login(&fp, adjust);
        let port = udp_proxy(&c, &format!("u{i}"), echo.addr, enc, comp);
        let run = echo_run(port, 5_000, size, 32);
        println!("{what}: {run:?}");
        assert_eq!((run.lost, run.wrong), (0, 0), "{what}: {run:?}");
        c.kill();
    }
}

/// Answers go to the user who asked: two users of one proxy each get
/// their own datagrams back, and a datagram longer than `udpPacketSize`
/// is cut there, as frps does.
#[test]
fn users_get_their_own_answers_and_long_datagrams_are_cut() {
    let fp = Fastpath::start("udpPacketSize = 1000", 1);
    let echo = Echo::start();
    let c = login(&fp, |_| {});
    let port = udp_proxy(&c, "u", echo.addr, false, false);
    let users: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    let mut buf = [0u8; 4096];
    for round in 0..50u8 {
        for (i, u) in users.iter().enumerate() {
            u.send(&[i as u8, round]).unwrap();
        }
        for (i, u) in users.iter().enumerate() {
            let n = u.recv(&mut buf).expect("answer");
            assert_eq!(&buf[..n], &[i as u8, round], "user {i} round {round}");
        }
    }
    users[0].send(&[7u8; 1400]).unwrap();
    let n = users[0].recv(&mut buf).expect("answer to a long datagram");
    assert_eq!(n, 1000, "cut at udpPacketSize");
    c.kill();
}

/// A flood at a proxy whose frpc does not read: the queue stays at
/// `fastpath.udpQueue`, the rest is dropped and counted, memory stays
/// flat, and once frpc reads again the proxy carries datagrams whole.
#[test]
fn a_flood_at_a_stalled_frpc_is_dropped_not_queued() {
    let fp = Fastpath::start("fastpath.udpQueue = 256", 1);
    let echo = Echo::start();
    let c = login(&fp, |_| {});
    let port = udp_proxy(&c, "u", echo.addr, false, false);
    let warm = echo_run(port, 1000, 1200, 32);
    assert_eq!((warm.lost, warm.wrong), (0, 0), "{warm:?}");
    let rss_start = fp.daemon.rss_kib();

    c.pause_udp(true);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(("127.0.0.1", port)).unwrap();
    let d = vec![0x55u8; 1200];
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed() < Duration::from_secs(3) {
        for _ in 0..256 {
            if s.send(&d).is_ok() {
                sent += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let rss_flood = fp.daemon.rss_kib();
    let (queued, dropped) = (fp.counter("udp_datagrams_in"), fp.counter("udp_dropped"));
    println!(
        "flood: {sent} sent, {} queued, {dropped} dropped; RSS {rss_start} -> {rss_flood} KiB",
        queued - 1000
    );
    assert!(dropped > 0, "nothing dropped of {sent}");
    // Every datagram sent was queued, dropped and counted (here or in the
    // kernel's socket buffer, which the full queue leaves the flood to), or
    // still waits in that buffer (a few hundred at most).
    let unaccounted = sent.saturating_sub(queued - 1000 + dropped);
    assert!(
        unaccounted < 1000,
        "{sent} sent, {} queued, {dropped} dropped: {unaccounted} unaccounted",
        queued - 1000
    );
    // What went in is bounded by the queue and what the paused frpc's
    // socket buffers and window took before it stopped reading.
    assert!(queued - 1000 < sent, "{queued} queued of {sent}");
    assert!(
        rss_flood < rss_start + 16 * 1024,
        "RSS grew from {rss_start} to {rss_flood} KiB"
    );
    assert!(
        fp.daemon
            .wait_log("queue for frpc is full", Duration::from_secs(2)),
        "drops not logged"
    );

    c.pause_udp(false);
    // Let the backlog drain through the echo (its answers go to `s`).
    std::thread::sleep(Duration::from_secs(2));
    let after = echo_run(port, 2000, 1200, 32);
    assert_eq!((after.lost, after.wrong), (0, 0), "{after:?}");
    c.kill();
}

/// A plain work connection made by hand for `c`'s session (its NewWorkConn
/// sent): its two halves.
fn offer_work_conn(fp: &Fastpath, c: &Client) -> (BoxRead, BoxWrite) {
    let (r, mut w) = fp.plain_dial().connect().expect("connect");
    let mut nwc = Vec::new();
    proto::frame::encode(
        &Message::NewWorkConn(NewWorkConn {
            run_id: c.run_id().to_string(),
            ..Default::default()
        }),
        &mut nwc,
    );
    w.write_all(&nwc).unwrap();
    (r, w)
}

/// A UDPPacket frpc should never send closes that work connection with a
/// logged reason, and the proxy goes on over a new one.
#[test]
fn a_bad_udp_packet_closes_its_work_connection_only() {
    // An oversized frame (20 000 bytes, over frp's 10 KiB), and a packet
    // whose content is not base64.
    let oversized = {
        let mut b = vec![b'u'];
        b.extend_from_slice(&20_000i64.to_be_bytes());
        b.extend(std::iter::repeat_n(b' ', 64));
        b
    };
    let not_base64 = {
        let body = br#"{"c":"!!","r":{"IP":"127.0.0.1","Port":9,"Zone":""}}"#;
        let mut b = vec![b'u'];
        b.extend_from_slice(&(body.len() as i64).to_be_bytes());
        b.extend_from_slice(body);
        b
    };
    for (what, bad) in [("oversized", oversized), ("not base64", not_base64)] {
        let fp = Fastpath::start("", 1);
        let echo = Echo::start();
        // No pool of the client's own: the proxy takes the connection
        // offered below, which speaks for this client.
        let c = login(&fp, |o| {
            (o.tls, o.mux) = (false, false);
            o.pool_count = 0;
        });
        let (mut r, mut w) = offer_work_conn(&fp, &c);
        std::thread::sleep(Duration::from_millis(300));
        let port = udp_proxy(&c, "u", echo.addr, false, false);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let start = read_msg_exact(&mut r, false);
            let _ = tx.send(start.map(|m| m.name()));
            // The server's close.
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r, &mut rest);
            let _ = tx.send(Ok("closed"));
        });
        let start = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("StartWorkConn");
        assert_eq!(start.ok(), Some("StartWorkConn"), "{what}");
        w.write_all(&bad).unwrap();
        let closed = rx.recv_timeout(Duration::from_secs(5));
        assert!(closed.is_ok(), "{what}: the work connection stayed open");
        assert!(
            fp.daemon.wait_log(
                "udp work connection closed: malformed message from frpc",
                Duration::from_secs(2)
            ),
            "{what}: reason not logged"
        );
        // The proxy takes the client's own connection next and carries on.
        let run = echo_run(port, 500, 100, 16);
        assert_eq!((run.lost, run.wrong), (0, 0), "{what}: {run:?}");
        c.kill();
    }
}

/// A udp work connection frpc says nothing on for `fastpath.udpIdleSecs`
/// (frps's fixed 60 s; 8 s here, so the test takes seconds) is closed with
/// the reason logged, and the proxy goes on over a new one; Pings (every
/// 30 s in frpc against 60; every 2 s here against 8) keep one open past
/// that. The new one is silent too: the checks after the close take well
/// under 8 s, or it would be closed in turn.
#[test]
fn a_silent_udp_work_connection_is_closed_and_pings_keep_one() {
    let fp = Fastpath::start("fastpath.udpIdleSecs = 8", 1);
    let echo = Echo::start();
    let c = login(&fp, |o| {
        (o.tls, o.mux) = (false, false);
        o.pool_count = 0;
    });
    // Two work connections made by hand, offered before the two proxies
    // ask: each proxy takes one. One says nothing, the other pings.
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(offer_work_conn(&fp, &c));
    }
    std::thread::sleep(Duration::from_millis(300));
    let ports = [
        udp_proxy(&c, "u1", echo.addr, false, false),
        udp_proxy(&c, "u2", echo.addr, false, false),
    ];
    let t0 = Instant::now();
    // For each connection: the proxy it serves, and when the server closed
    // it.
    let (names, closed_at): (Vec<_>, Vec<_>) = conns
        .into_iter()
        .enumerate()
        .map(|(i, (mut r, mut w))| {
            let (name_tx, name_rx) = mpsc::channel();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                match read_msg_exact(&mut r, false) {
                    Ok(Message::StartWorkConn(s)) => {
                        let _ = name_tx.send(s.proxy_name);
                    }
                    other => panic!("connection {i}: {other:?}"),
                }
                if i == 1 {
                    std::thread::spawn(move || {
                        let mut ping = Vec::new();
                        proto::frame::encode(&Message::Ping(Default::default()), &mut ping);
                        for _ in 0..8 {
                            std::thread::sleep(Duration::from_secs(2));
                            if w.write_all(&ping).is_err() {
                                return;
                            }
                        }
                    });
                } else {
                    std::mem::forget(w);
                }
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut r, &mut rest);
                let _ = tx.send(Instant::now());
            });
            (name_rx, rx)
        })
        .unzip();
    let silent_proxy = names[0]
        .recv_timeout(Duration::from_secs(5))
        .expect("StartWorkConn on the first connection");
    let silent = closed_at[0]
        .recv_timeout(Duration::from_secs(20))
        .expect("the silent work connection stayed open past 20 s");
    let after = silent.duration_since(t0);
    assert!(
        after >= Duration::from_millis(7500) && after <= Duration::from_secs(12),
        "the silent work connection was closed after {after:?}, not 8 s"
    );
    assert!(
        fp.daemon
            .wait_log("no message from frpc for 8 s", Duration::from_secs(2)),
        "reason not logged"
    );
    // The one that pings: still open 3 s past its neighbour's close.
    assert!(
        closed_at[1].recv_timeout(Duration::from_secs(3)).is_err(),
        "the work connection that pings was closed"
    );
    // The proxy whose connection was closed carries datagrams again, over
    // the client's own connection that replaced it.
    let port = if silent_proxy == "u1" {
        ports[0]
    } else {
        ports[1]
    };
    let run = echo_run(port, 200, 100, 16);
    assert_eq!((run.lost, run.wrong), (0, 0), "{silent_proxy}: {run:?}");
    c.kill();
}
