//! A work connection must come the way frpc sends it: a session that logged
//! in over yamux gets its work connections as streams of that same yamux
//! session, so one offered by anyone else — a stream of another yamux
//! session, or a separate connection — is refused even when it names the
//! right run_id (issue 11, "sessions that cannot be hijacked"). Sessions
//! without tcpMux keep frps's behaviour: their work connections are
//! separate connections (covered by e2e.rs's `integrity_nomux_*` and
//! `two_workers_spread_sessions_and_hand_off`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use bench::backend::Backend;
use bench::client::mux::MuxClient;
use bench::client::session::read_msg_exact;
use bench::client::transport::{BoxRead, BoxWrite};
use bench::client::Client;
use common::*;
use proto::msg::{Message, NewWorkConn};

/// How the attacker offers its work connection.
#[derive(Debug, Clone, Copy)]
enum Offer {
    /// A stream of a yamux session of its own (which never logged in).
    ForeignStream,
    /// A separate plain TCP connection.
    SeparateConn,
}

/// The victim logs in, with tcpMux (frpc's default) or without, and a TCP
/// proxy to an echo backend; the attacker offers a NewWorkConn carrying the
/// victim's run_id. The offer must be refused, and a user of the victim's
/// proxy must still reach the victim's backend.
fn hijack_case(victim_mux: bool, workers: usize, offer: Offer) {
    let what = format!("{offer:?} to a victim with mux={victim_mux}, {workers} worker(s)");
    let fp = Fastpath::start("", workers);
    let echo = Backend::echo().unwrap();
    let mut o = fp.opts();
    o.mux = victim_mux;
    // No pooled work connection of the victim's own: the first user
    // connection takes whatever is pooled — the attacker's, if it was let in.
    o.pool_count = 0;
    let victim = Client::login(o).unwrap_or_else(|e| {
        panic!(
            "victim login: {e:?} ({what}); fastpath log:\n{}",
            fp.daemon.log().join("\n")
        )
    });
    let port = tcp_proxy(&victim, "victim", 0, echo.addr(), false, false);

    let dial = fp.plain_dial();
    let (r, w) = dial.connect().expect("attacker connects");
    let (mut r, mut w, _session): (BoxRead, BoxWrite, Option<MuxClient>) = match offer {
        Offer::ForeignStream => {
            let m = MuxClient::start(r, w);
            let s = m.open().expect("attacker opens a stream");
            (Box::new(s.clone()), Box::new(s), Some(m))
        }
        Offer::SeparateConn => (r, w, None),
    };
    let mut nwc = Vec::new();
    proto::frame::encode(
        &Message::NewWorkConn(NewWorkConn {
            run_id: victim.run_id().to_string(),
            ..Default::default()
        }),
        &mut nwc,
    );
    w.write_all(&nwc).expect("send NewWorkConn");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_msg_exact(&mut r, false));
    });
    // Let the offer land (in the victim's pool, were it accepted) before a
    // user arrives.
    std::thread::sleep(Duration::from_millis(500));

    let mut user = TcpStream::connect(("127.0.0.1", port)).expect("user connects");
    user.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    user.write_all(b"ping").unwrap();
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(Message::StartWorkConn(s))) => assert!(
            !s.error.is_empty(),
            "{what}: the attacker was handed a user connection of proxy {:?}",
            s.proxy_name
        ),
        Ok(Ok(other)) => panic!("{what}: unexpected answer {}", other.name()),
        // Closed without an answer is a refusal too.
        Ok(Err(_)) => {}
        Err(_) => panic!("{what}: no answer to the attacker's NewWorkConn within 10 s"),
    }
    let mut got = [0u8; 4];
    user.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: user got no echo from the victim's backend: {e}"));
    assert_eq!(&got, b"ping", "{what}");
    let (a, b) = echo_integrity(port, 1 << 20, 17);
    assert_eq!(a, b, "{what}: data differs");

    assert!(
        fp.daemon
            .wait_log("foreign work connection refused", Duration::from_secs(2)),
        "{what}: refusal not logged"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let stats = fp.stats();
    let refused = worker_sum(&stats, "foreign_work_conns");
    assert!(refused >= 1, "{what}: not counted: {stats}");
    victim.kill();
}

#[test]
fn foreign_yamux_stream_cannot_take_a_sessions_work() {
    hijack_case(true, 1, Offer::ForeignStream);
    hijack_case(true, 2, Offer::ForeignStream);
    // frpc without tcpMux never sends a stream either.
    hijack_case(false, 1, Offer::ForeignStream);
}

#[test]
fn separate_connection_cannot_take_a_muxed_sessions_work() {
    hijack_case(true, 1, Offer::SeparateConn);
    hijack_case(true, 2, Offer::SeparateConn);
}
