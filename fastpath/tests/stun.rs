//! The STUN server (`fastpath.stunPort`) on real UDP sockets: Binding
//! answers with the client's address, RFC 5780's behaviour discovery with
//! a secondary IP (127.0.0.2 on loopback) and an alternate port, answers
//! sent from the address CHANGE-REQUEST names, malformed datagrams
//! counted and never answered, and a burst of requests from several
//! clients answered in full.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bench::proc::free_port;
use common::Fastpath;
use proto::stun::{attr, kind, parse, Builder};

struct Server {
    fp: Fastpath,
    primary: SocketAddr,
    alternate: SocketAddr,
}

fn start() -> Server {
    let (port, alt) = (free_port(), free_port());
    let fp = Fastpath::start(
        &format!(
            "fastpath.stunPort = {port}\nfastpath.stunIP = \"127.0.0.1\"\n\
             fastpath.stunSecondaryIP = \"127.0.0.2\"\nfastpath.stunAlternatePort = {alt}\n"
        ),
        2,
    );
    Server {
        fp,
        primary: format!("127.0.0.1:{port}").parse().unwrap(),
        alternate: format!("127.0.0.2:{alt}").parse().unwrap(),
    }
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn request(txid: u8, change: Option<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = Builder::new(&mut out, kind::BINDING_REQUEST, [txid; 12]);
    if let Some(flags) = change {
        b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, flags]);
    }
    b.fingerprint();
    out
}

/// Send `msg` to `to`; the answer and where it came from.
fn exchange(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<(Vec<u8>, SocketAddr)> {
    s.send_to(msg, to).unwrap();
    let mut buf = [0u8; 1500];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

#[test]
fn binding_and_rfc_5780_behaviour_discovery_on_real_sockets() {
    let srv = start();
    let c = client();
    let me = c.local_addr().unwrap();

    // Test I of RFC 5780: the mapped address, where the answer comes
    // from, and the other address.
    let (answer, from) = exchange(&c, srv.primary, &request(1, None)).expect("an answer");
    assert_eq!(from, srv.primary);
    let m = parse(&answer).unwrap();
    assert_eq!(m.kind, kind::BINDING_SUCCESS);
    assert_eq!(m.txid, [1; 12]);
    assert!(m.fingerprint);
    assert_eq!(m.address(attr::XOR_MAPPED_ADDRESS, true), Some(me));
    assert_eq!(m.address(attr::RESPONSE_ORIGIN, false), Some(srv.primary));
    assert_eq!(m.address(attr::OTHER_ADDRESS, false), Some(srv.alternate));

    // CHANGE-REQUEST: the answer leaves from the address asked for, and
    // RESPONSE-ORIGIN says which.
    for (flags, want) in [
        (6u8, srv.alternate),
        (2, SocketAddr::new(srv.primary.ip(), srv.alternate.port())),
        (4, SocketAddr::new(srv.alternate.ip(), srv.primary.port())),
    ] {
        let (answer, from) =
            exchange(&c, srv.primary, &request(flags, Some(flags))).expect("an answer");
        assert_eq!(from, want, "CHANGE-REQUEST {flags}");
        let m = parse(&answer).unwrap();
        assert_eq!(m.address(attr::RESPONSE_ORIGIN, false), Some(want));
        assert_eq!(m.address(attr::XOR_MAPPED_ADDRESS, true), Some(me));
    }

    // Asked on the alternate address: OTHER-ADDRESS is the primary.
    let (answer, from) = exchange(&c, srv.alternate, &request(9, None)).expect("an answer");
    assert_eq!(from, srv.alternate);
    let m = parse(&answer).unwrap();
    assert_eq!(m.address(attr::OTHER_ADDRESS, false), Some(srv.primary));

    // An attribute the server must understand and does not: 420.
    let mut unknown = Vec::new();
    Builder::new(&mut unknown, kind::BINDING_REQUEST, [3; 12]).attr(0x0024, &[0, 0, 0, 1]);
    let (answer, _) = exchange(&c, srv.primary, &unknown).expect("an error answer");
    let m = parse(&answer).unwrap();
    assert_eq!(m.kind, kind::BINDING_ERROR);
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x24][..]));

    // Malformed datagrams: no answer at all, each counted.
    let good = request(4, None);
    let mut bad_cookie = good.clone();
    bad_cookie[5] ^= 0xff;
    let mut bad_length = good.clone();
    bad_length[3] = 0x40;
    let mut bad_fingerprint = good.clone();
    let n = bad_fingerprint.len();
    bad_fingerprint[n - 1] ^= 1;
    let mut truncated = good[..20].to_vec();
    truncated[3] = 4;
    truncated.extend_from_slice(&[0x80, 0x22, 0x00, 0x40]);
    let quiet = client();
    quiet
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let bad = [
        &bad_cookie[..],
        &bad_length[..],
        &bad_fingerprint[..],
        &truncated[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 3][..],
    ];
    for msg in bad {
        assert!(
            exchange(&quiet, srv.primary, msg).is_none(),
            "answered {msg:?}"
        );
    }
    // The stats file is written every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while srv.fp.counter("stun_dropped") < bad.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "stun_dropped = {}",
            srv.fp.counter("stun_dropped")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(srv.fp.counter("stun_dropped"), bad.len() as u64);
    assert!(srv.fp.counter("stun_errors") >= 1);
    // Still serving.
    assert!(exchange(&c, srv.primary, &request(5, None)).is_some());
}

#[test]
fn a_burst_from_many_clients_is_answered_in_full() {
    let srv = start();
    let clients: Vec<UdpSocket> = (0..16).map(|_| client()).collect();
    let per = 250u32;
    let mut answered = 0u32;
    for round in 0..per {
        // Each client sends one request and reads its answer: 16 in
        // flight at a time, 4,000 in all.
        for (i, c) in clients.iter().enumerate() {
            let mut msg = Vec::new();
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&round.to_be_bytes());
            txid[4] = i as u8;
            Builder::new(&mut msg, kind::BINDING_REQUEST, txid);
            c.send_to(&msg, srv.primary).unwrap();
        }
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = c.recv_from(&mut buf) {
                let m = parse(&buf[..n]).unwrap();
                assert_eq!(&m.txid[..4], &round.to_be_bytes());
                assert_eq!(m.txid[4], i as u8);
                assert_eq!(
                    m.address(attr::XOR_MAPPED_ADDRESS, true),
                    Some(c.local_addr().unwrap())
                );
                answered += 1;
            }
        }
    }
    assert_eq!(answered, 16 * per, "answers lost on loopback");
}
