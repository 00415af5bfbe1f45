//! Seed 003's relay in the fastpath (`/ws/data`) through the real
//! `slowpath up`, on SQLite and PostgreSQL: nodes that joined through the
//! controller connect to the built-in relay named in their CONFIG with
//! their relay token; DATA sealed end to end by one node reaches the other
//! unchanged and opens there, in both directions and in bulk; a node of
//! another network is 3001, one not connected 3002; a forged `src`, a
//! bad version, a message over the limit each end that connection only;
//! tokens that are foreign, expired or forged are refused with their code;
//! a deauthorized node is cut off within 1 s; what crosses the relay
//! holds no plaintext.

mod harness;

use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::mesh::*;
use harness::{each_backend, Backend, Slowpath};
use mesh::session::Session;
use proto::mesh::control::{AuthRequest, AuthResponse, Config, ErrorBody};
use proto::mesh::token::{self, Claims, RelayClaims, Signer};
use proto::mesh::MsgType;
use ring::signature::Ed25519KeyPair;
use tungstenite::Message;

/// The relay's URL from a node's CONFIG (the built-in relay).
fn relay_url(cfg: &Config) -> String {
    assert_eq!(cfg.relays.len(), 1, "{:?}", cfg.relays);
    cfg.relays[0].url.clone()
}

/// A relay connection authenticated with `token`.
fn relay(url: &str, token: &str) -> Result<(Ws, AuthResponse), ErrorBody> {
    let mut ws = connect_url(url);
    let req = AuthRequest {
        token: token.into(),
        ..AuthRequest::default()
    };
    send(
        &mut ws,
        MsgType::AuthRequest,
        &serde_json::to_vec(&req).unwrap(),
    );
    match recv(&mut ws) {
        Some((MsgType::AuthResponse, p)) => Ok((ws, serde_json::from_slice(&p).unwrap())),
        Some((MsgType::Error, p)) => {
            let e = serde_json::from_slice(&p).unwrap();
            assert!(closed(&mut ws), "a refused relay connection is closed");
            Err(e)
        }
        other => panic!("unexpected answer: {other:?}"),
    }
}

/// The control plane's signing key, to mint tokens the relay must refuse.
fn signing_key(sp: &Slowpath) -> (String, Ed25519KeyPair) {
    let text = std::fs::read_to_string(sp.dir.join("signing.key")).unwrap();
    let (kid, pkcs8) = text.trim().split_once(' ').unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(pkcs8)
        .unwrap();
    (kid.to_owned(), Ed25519KeyPair::from_pkcs8(&der).unwrap())
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A node's session with `peer` (ids and keys as CONFIG gives them).
fn session(n: &Node, me: u32, cfg: &Config, peer: u32) -> Session {
    let p = cfg
        .peers
        .iter()
        .find(|p| p.node_id == peer)
        .expect("peer in CONFIG");
    let key = mesh::keys::decode_key(&p.node_key).unwrap();
    Session::new(&n.key, me, peer, &key).unwrap()
}

/// Read DATA frames until one arrives (skipping anything else).
fn next_data(ws: &mut Ws) -> Vec<u8> {
    loop {
        match recv(ws) {
            Some((MsgType::Data, p)) => return p,
            Some(_) => continue,
            None => panic!("closed while waiting for DATA"),
        }
    }
}

fn relay_case(backend: Backend) {
    let sp = Slowpath::up(&backend, &[]);
    sp.wait_frp();
    // Nodes a, b, c in the default network; d in another one.
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/mesh/networks",
        Some(serde_json::json!({ "name": "other", "subnet": "10.9.0.0/24" })),
    );
    assert_eq!(st, 201, "{v}");
    let nodes: Vec<Node> = (0..4).map(|_| Node::new()).collect();
    let (_ca, a, _) = authorized(&sp, &nodes[0], "default");
    let (_cb, b, _) = authorized(&sp, &nodes[1], "default");
    let (_cc, c, _) = authorized(&sp, &nodes[2], "default");
    let (_cd, d, cfg_d) = authorized(&sp, &nodes[3], "other");
    // Configs fetched again now that all peers exist.
    let (_ca, _, cfg_a) = join(&sp, &nodes[0]);
    let (_cb, _, cfg_b) = join(&sp, &nodes[1]);
    let url = relay_url(&cfg_a);
    assert_eq!(url, format!("ws://127.0.0.1:{}/ws/data", sp.mesh_port));

    let (mut ra, resp) = relay(&url, &cfg_a.relay_token).expect("a is let in");
    assert_eq!((resp.ok, resp.node_id), (true, a));
    let (mut rb, _) = relay(&url, &cfg_b.relay_token).expect("b is let in");
    let (mut rd, _) = relay(&url, &cfg_d.relay_token).expect("d is let in");

    // a -> b and back, sealed end to end, relayed unchanged.
    let (mut sa, mut sb) = (
        session(&nodes[0], a, &cfg_a, b),
        session(&nodes[1], b, &cfg_b, a),
    );
    let secret = b"the relay must never see this sentence in the clear";
    let mut payload = Vec::new();
    sa.seal(secret, &mut payload).unwrap();
    send(&mut ra, MsgType::Data, &payload);
    let mut got = next_data(&mut rb);
    assert_eq!(got, payload, "relayed unchanged");
    // What crossed the relay holds no plaintext.
    assert!(!got.windows(secret.len()).any(|w| w == secret));
    assert_eq!(sb.open(&mut got).unwrap(), &secret[..]);
    let mut back = Vec::new();
    sb.seal(b"pong", &mut back).unwrap();
    send(&mut rb, MsgType::Data, &back);
    let mut got = next_data(&mut ra);
    assert_eq!(sa.open(&mut got).unwrap(), b"pong");

    // In bulk, both ways at once: every frame, in order.
    let n = 600;
    let sender = std::thread::spawn({
        let mut sa = session(&nodes[0], a, &cfg_a, b);
        // A session resumes its counter from a fresh prefix: b's window
        // is per prefix-less counter, so use a fresh pair on both sides.
        let mut ra = ra;
        move || {
            for i in 0..n {
                let mut p = Vec::new();
                sa.seal(
                    format!("packet {i} {}", "x".repeat(1300)).as_bytes(),
                    &mut p,
                )
                .unwrap();
                send(&mut ra, MsgType::Data, &p);
            }
            ra
        }
    });
    let mut sb2 = session(&nodes[1], b, &cfg_b, a);
    for i in 0..n {
        let mut p = next_data(&mut rb);
        let plain = sb2.open(&mut p).expect("opens");
        assert!(plain.starts_with(format!("packet {i} ").as_bytes()));
    }
    let mut ra = sender.join().unwrap();

    // Another network's node is 3001; one not connected is 3002. The
    // connection stays.
    let mut to = |dst: u32| {
        let mut p = Vec::new();
        proto::mesh::data::put_header(&mut p, a, dst, &[7; 12]);
        p.extend_from_slice(&[0; 32]);
        send(&mut ra, MsgType::Data, &p);
        expect::<ErrorBody>(&mut ra, MsgType::Error)
    };
    let e = to(d);
    assert_eq!((e.code, e.node_id), (3001, Some(d)), "{e:?}");
    let e = to(c);
    assert_eq!((e.code, e.node_id), (3002, Some(c)), "{e:?}");
    let e = to(4242);
    assert_eq!(e.code, 3001);
    // PING is answered.
    send(&mut ra, MsgType::Ping, b"8 bytes!");
    let (k, p) = recv(&mut ra).unwrap();
    assert_eq!((k, p.as_slice()), (MsgType::Pong, &b"8 bytes!"[..]));

    // d cannot reach a, though both are on the relay.
    let mut p = Vec::new();
    proto::mesh::data::put_header(&mut p, d, a, &[1; 12]);
    p.extend_from_slice(&[0; 32]);
    send(&mut rd, MsgType::Data, &p);
    assert_eq!(expect::<ErrorBody>(&mut rd, MsgType::Error).code, 3001);

    // A forged src ends d's connection only (2002).
    let mut p = Vec::new();
    proto::mesh::data::put_header(&mut p, a, b, &[1; 12]);
    p.extend_from_slice(&[0; 32]);
    send(&mut rd, MsgType::Data, &p);
    assert_eq!(wait_error(&mut rd).code, 2002);
    assert!(closed(&mut rd));
    send(&mut ra, MsgType::Ping, b"still up");
    assert_eq!(recv(&mut ra).unwrap().0, MsgType::Pong);

    // A bad version (2001), a short DATA (2002), a message over the limit
    // (WebSocket close): each on a connection of its own.
    let (mut r, _) = relay(&url, &cfg_d.relay_token).unwrap();
    let mut f = framed(MsgType::Ping, b"12345678");
    f[0] = 9;
    r.send(Message::Binary(f.into())).unwrap();
    assert_eq!(wait_error(&mut r).code, 2001);
    let (mut r, _) = relay(&url, &cfg_d.relay_token).unwrap();
    send(&mut r, MsgType::Data, &[0; 10]);
    assert_eq!(wait_error(&mut r).code, 2002);
    let (mut r, _) = relay(&url, &cfg_d.relay_token).unwrap();
    let _ = r.send(Message::Binary(vec![0u8; 70_000].into()));
    assert!(closed(&mut r));
    // Only binary messages.
    let (mut r, _) = relay(&url, &cfg_d.relay_token).unwrap();
    r.send(Message::Text("hello".into())).unwrap();
    assert_eq!(wait_error(&mut r).code, 2002);

    // Before AUTH_REQUEST, pings buy no buffer: past 128 KiB the relay
    // closes.
    let mut r = connect_url(&url);
    let t = Instant::now();
    for _ in 0..2000 {
        if r.send(Message::Ping(vec![0u8; 125].into())).is_err() {
            break;
        }
    }
    let code = loop {
        match r.read() {
            Ok(Message::Close(c)) => break c.map(|c| u16::from(c.code)),
            Ok(_) => continue,
            Err(e) => panic!("no Close before {e} ({:?})", t.elapsed()),
        }
    };
    assert_eq!(code, Some(1009), "closed for size, not at the deadline");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Tokens: garbage, another relay's, expired, not a relay token.
    assert_eq!(relay(&url, "garbage").unwrap_err().code, 1001);
    let (kid, key) = signing_key(&sp);
    let signer = Signer::EdDsa {
        kid: &kid,
        key: &key,
    };
    let relay_id = cfg_a.relays[0].server_id;
    let mint = |allowed: Vec<u32>, exp: u64, node: u32, network: u32| {
        token::sign(
            &Claims::Relay(RelayClaims {
                node_id: node,
                network_id: network,
                allowed_relays: allowed,
                iat: now_s() - 10,
                exp,
                jti: format!("test-{node}-{exp}"),
            }),
            &signer,
        )
    };
    let e = relay(&url, &mint(vec![relay_id + 100], now_s() + 600, a, 1)).unwrap_err();
    assert_eq!(e.code, 1001, "{e:?}");
    assert!(e.message.contains("not valid on relay"), "{e:?}");
    assert_eq!(
        relay(&url, &mint(vec![relay_id], now_s() - 1, a, 1))
            .unwrap_err()
            .code,
        1002
    );
    // A node that is not authorized in the token's network.
    assert_eq!(
        relay(&url, &mint(vec![relay_id], now_s() + 600, a, 2))
            .unwrap_err()
            .code,
        1006
    );
    // Signed by another key.
    let other = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let forged = token::sign(
        &Claims::Relay(RelayClaims {
            node_id: a,
            network_id: 1,
            allowed_relays: vec![relay_id],
            iat: now_s(),
            exp: now_s() + 600,
            jti: "forged".into(),
        }),
        &Signer::EdDsa {
            kid: &kid,
            key: &other,
        },
    );
    assert_eq!(relay(&url, &forged).unwrap_err().code, 1001);

    // Not a WebSocket upgrade, or another path: refused before the upgrade.
    let wrong = url.replace("/ws/data", "/ws/nothing");
    match tungstenite::connect(wrong.as_str()) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // Deauthorized: b is cut off within 1 s (its token is revoked).
    let t = Instant::now();
    sp.admin_call("POST", &format!("/api/v1/mesh/nodes/{b}/deauthorize"), None);
    let e = wait_error(&mut rb);
    assert!([1003, 1006].contains(&e.code), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(closed(&mut rb));
    // And its token no longer opens a connection.
    let e = relay(&url, &cfg_b.relay_token).unwrap_err();
    assert!([1003, 1006].contains(&e.code), "{e:?}");
}

#[test]
fn the_relay_carries_sealed_data_between_nodes_and_refuses_the_rest() {
    each_backend("mesh_relay", relay_case);
}

/// A node that reads nothing while another floods it: the relay holds at
/// most its outbox (`fastpath.meshQueueBytes`, 4 MiB) for it, drops and
/// counts the rest, and the sender's connection keeps working.
#[test]
fn a_node_that_reads_nothing_costs_the_relay_a_bounded_outbox() {
    let sp = Slowpath::up(&Backend::Sqlite, &[]);
    sp.wait_frp();
    let nodes: Vec<Node> = (0..2).map(|_| Node::new()).collect();
    let (_ca, a, _) = authorized(&sp, &nodes[0], "default");
    let (_cb, b, _) = authorized(&sp, &nodes[1], "default");
    let (_ca, _, cfg_a) = join(&sp, &nodes[0]);
    let (_cb, _, cfg_b) = join(&sp, &nodes[1]);
    let url = relay_url(&cfg_a);
    let (mut ra, _) = relay(&url, &cfg_a.relay_token).unwrap();
    let (_rb, _) = relay(&url, &cfg_b.relay_token).unwrap();
    let fastpath = bench::netns::pid_with(&format!("{}/fastpath.toml", sp.dir.display()))
        .expect("the fastpath's pid");
    let before = bench::proc::rss_kib(fastpath);
    // 3000 frames of 60 KB: 180 MB that b never reads.
    let mut p = Vec::new();
    proto::mesh::data::put_header(&mut p, a, b, &[3; 12]);
    p.resize(60_000, 0x42);
    let msg = framed(MsgType::Data, &p);
    for _ in 0..3000 {
        ra.send(Message::Binary(msg.clone().into())).unwrap();
    }
    send(&mut ra, MsgType::Ping, b"after it");
    let (k, _) = recv(&mut ra).unwrap();
    assert_eq!(k, MsgType::Pong, "the sender is still served");
    let grown = bench::proc::rss_kib(fastpath).saturating_sub(before);
    // The outbox (4 MiB) and a frame or two in buffers; before the read
    // buffer was compacted every time, a busy sender grew it past 60 MiB.
    assert!(
        grown < 16 * 1024,
        "the relay grew by {grown} KiB for a node that reads nothing"
    );
    // The stats file says how many were dropped (rewritten every second).
    let stats = sp.dir.join("fastpath-stats.json");
    let read = || -> Option<u64> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).ok()?).ok()?;
        Some(
            v["workers"]
                .as_array()?
                .iter()
                .filter_map(|w| w["mesh_dropped"].as_u64())
                .sum(),
        )
    };
    harness::wait_until("dropped frames counted", || read().unwrap_or(0) > 0);
    let dropped = read().unwrap_or(0);
    assert!(dropped > 2000, "{dropped} dropped of 3000");
    eprintln!("[mesh_relay] RSS grew {grown} KiB; {dropped} of 3000 frames dropped");
}

/// Seed 003's HS256 mode (`--mesh-jwt-secret-file`): the controller signs
/// mesh tokens with the shared secret, the relay verifies them with it, a
/// token signed with another secret or with the Ed25519 key is 1001.
fn hs256_case(backend: Backend) {
    let dir = std::env::temp_dir().join(format!("totoro-hs256-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let which = match &backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgres",
    };
    let secret_file = dir.join(format!("jwt-{which}.secret"));
    let secret = "seed-003-shared-secret-of-32-bytes-or-more";
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let sp = Slowpath::up(
        &backend,
        &["--mesh-jwt-secret-file", secret_file.to_str().unwrap()],
    );
    sp.wait_frp();
    let nodes: Vec<Node> = (0..2).map(|_| Node::new()).collect();
    let (_ca, a, _) = authorized(&sp, &nodes[0], "default");
    let (_cb, b, _) = authorized(&sp, &nodes[1], "default");
    let (_ca, _, cfg_a) = join(&sp, &nodes[0]);
    let (_cb, _, cfg_b) = join(&sp, &nodes[1]);
    // The token says HS256 and verifies with the secret alone.
    let jwt = proto::jwt::Jwt::parse(&cfg_a.relay_token).unwrap();
    assert_eq!(jwt.alg(), proto::jwt::Alg::Hs256);
    let trust = token::Trust {
        ed25519: &[],
        hs256: Some(secret.as_bytes()),
    };
    let relays: Vec<u32> = cfg_a.relays.iter().map(|r| r.server_id).collect();
    token::check_relay_token(&cfg_a.relay_token, &trust, relays[0], now_s(), |_| false)
        .expect("an HS256 relay token");
    let url = relay_url(&cfg_a);
    let (mut ra, resp) = relay(&url, &cfg_a.relay_token).expect("a is let in");
    assert_eq!((resp.ok, resp.node_id), (true, a));
    let (mut rb, _) = relay(&url, &cfg_b.relay_token).expect("b is let in");
    // DATA flows.
    let mut s_ab = session(&nodes[0], a, &cfg_a, b);
    let mut s_ba = session(&nodes[1], b, &cfg_b, a);
    let mut payload = Vec::new();
    s_ab.seal(b"over HS256", &mut payload).unwrap();
    send(&mut ra, MsgType::Data, &payload);
    let mut got = next_data(&mut rb);
    assert_eq!(s_ba.open(&mut got).unwrap(), b"over HS256");
    // Another secret, or the Ed25519 key in HS256 mode: 1001.
    let claims = |jti: &str| {
        Claims::Relay(RelayClaims {
            node_id: a,
            network_id: resp.network_id,
            allowed_relays: relays.clone(),
            iat: now_s(),
            exp: now_s() + 600,
            jti: jti.into(),
        })
    };
    let other = token::sign(
        &claims("x1"),
        &Signer::Hs256(b"another-secret-of-32-bytes-or-more!"),
    );
    assert_eq!(relay(&url, &other).unwrap_err().code, 1001);
    let (kid, key) = signing_key(&sp);
    let ed = token::sign(
        &claims("x2"),
        &Signer::EdDsa {
            kid: &kid,
            key: &key,
        },
    );
    assert!(relay(&url, &ed).is_ok(), "the Ed25519 key still verifies");
    let _ = std::fs::remove_file(&secret_file);
}

#[test]
fn hs256_mode_signs_and_verifies_with_the_shared_secret() {
    each_backend("mesh_hs256", hs256_case);
}
