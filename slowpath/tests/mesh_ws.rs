//! Seed 003's control channel `/ws/control` through the real `slowpath
//! serve`, on SQLite and PostgreSQL, with a WebSocket client speaking the
//! seed's frames: a node not yet authorized gets 1006 and is closed;
//! authorized, it gets AUTH_RESPONSE and CONFIG with its address and its
//! peers' node keys; a peer joining, rotating its key and being
//! deauthorized reach it as CONFIG_UPDATE; the deauthorized node is cut off
//! with 1006 within 1 s; bad frames get 2001/2002/2003 and a close; a node
//! key update with a bad signature is 1005 and changes nothing.

mod harness;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{each_backend, Backend, Slowpath};
use mesh::keys::{encode, MachineKey, NodeKey};
use proto::mesh::control::{
    auth_signed_bytes, node_key_signed_bytes, AuthRequest, AuthResponse, Config, ConfigUpdate,
    ErrorBody, NodeKeyUpdate,
};
use proto::mesh::{frame, MsgType};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

struct Node {
    machine: MachineKey,
    key: NodeKey,
    /// The last timestamp signed: each signed message carries a newer one.
    last: std::cell::Cell<u64>,
}

/// Unix ms, newer than `last`.
fn stamp(last: &std::cell::Cell<u64>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = now.max(last.get() + 1);
    last.set(ts);
    ts
}

impl Node {
    fn new() -> Node {
        Node {
            machine: MachineKey::generate().unwrap(),
            key: NodeKey::generate().unwrap(),
            last: std::cell::Cell::new(0),
        }
    }

    fn auth(&self) -> AuthRequest {
        let ts = stamp(&self.last);
        let (mk, nk) = (self.machine.public_b64(), self.key.public_b64());
        let sig = self
            .machine
            .sign(&auth_signed_bytes(&mk, &nk, ts, "default"));
        AuthRequest {
            machine_key: mk,
            node_key: nk,
            network: "default".into(),
            hostname: "h".into(),
            timestamp: ts,
            signature: encode(&sig),
            ..AuthRequest::default()
        }
    }
}

fn connect(sp: &Slowpath) -> Ws {
    let url = format!("{}/ws/control", sp.base.replace("http://", "ws://"));
    let (ws, _) = tungstenite::connect(url).expect("websocket");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

/// One frame's bytes.
fn framed(kind: MsgType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(kind, 0, payload, &mut out).unwrap();
    out
}

fn send(ws: &mut Ws, kind: MsgType, payload: &[u8]) {
    ws.send(Message::Binary(framed(kind, payload).into()))
        .unwrap();
}

/// The next frame (type, payload); None when the server closed.
fn recv(ws: &mut Ws) -> Option<(MsgType, Vec<u8>)> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                let f = frame::parse(&b, frame::MAX_PAYLOAD).expect("a frame from the server");
                return Some((f.kind, f.payload.to_vec()));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn expect<T: serde::de::DeserializeOwned>(ws: &mut Ws, kind: MsgType) -> T {
    let (k, p) = recv(ws).unwrap_or_else(|| panic!("closed while waiting for {kind}"));
    assert_eq!(k, kind, "{}", String::from_utf8_lossy(&p));
    serde_json::from_slice(&p).unwrap()
}

fn closed(ws: &mut Ws) -> bool {
    recv(ws).is_none()
}

/// Open a control channel for an authorized node: AUTH_RESPONSE, CONFIG.
fn join(sp: &Slowpath, n: &Node) -> (Ws, AuthResponse, Config) {
    let mut ws = connect(sp);
    send(
        &mut ws,
        MsgType::AuthRequest,
        &serde_json::to_vec(&n.auth()).unwrap(),
    );
    let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
    assert!(resp.ok, "{resp:?}");
    let cfg: Config = expect(&mut ws, MsgType::Config);
    (ws, resp, cfg)
}

fn control(backend: Backend) {
    let sp = Slowpath::start(&backend, &[]);
    let (a, b) = (Node::new(), Node::new());

    // Not authorized yet: registered, told 1006, closed.
    let mut ws = connect(&sp);
    send(
        &mut ws,
        MsgType::AuthRequest,
        &serde_json::to_vec(&a.auth()).unwrap(),
    );
    let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
    assert!(!resp.ok);
    assert_eq!(resp.error.as_ref().unwrap().code, 1006);
    assert!(closed(&mut ws));
    let a_id = resp.node_id;
    let (st, v) = sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{a_id}/authorize"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["virtual_ip"], "10.0.1.1");

    // Authorized: its address, no peers yet, a relay token.
    let (mut wa, resp, cfg) = join(&sp, &a);
    assert_eq!((resp.node_id, resp.virtual_ip.as_str()), (a_id, "10.0.1.1"));
    assert!(!resp.auth_token.is_empty());
    assert_eq!(
        (cfg.version, cfg.virtual_ip.as_str(), cfg.subnet.as_str()),
        (1, "10.0.1.1", "10.0.1.0/24")
    );
    assert!(cfg.peers.is_empty());
    assert!(!cfg.relay_token.is_empty());
    let (st, v) = sp.admin_call("GET", &format!("/api/v1/mesh/nodes/{a_id}"), None);
    assert_eq!((st, v["online"].clone()), (200, json!(true)));

    // PING is answered with the same bytes.
    send(&mut wa, MsgType::Ping, b"12345678");
    let (k, p) = recv(&mut wa).unwrap();
    assert_eq!((k, p.as_slice()), (MsgType::Pong, &b"12345678"[..]));

    // b registers and is authorized: a hears of it with b's node key.
    let mut wb = connect(&sp);
    send(
        &mut wb,
        MsgType::AuthRequest,
        &serde_json::to_vec(&b.auth()).unwrap(),
    );
    let resp: AuthResponse = expect(&mut wb, MsgType::AuthResponse);
    let b_id = resp.node_id;
    sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{b_id}/authorize"),
        None,
    );
    let (mut wb, _, cfg_b) = join(&sp, &b);
    assert_eq!(cfg_b.peers.len(), 1);
    assert_eq!(cfg_b.peers[0].node_key, a.key.public_b64());
    let upd = wait_update(&mut wa, |u| {
        u.peers.iter().any(|p| p.node_id == b_id && p.online)
    });
    let peer = upd.peers.iter().find(|p| p.node_id == b_id).unwrap();
    assert_eq!(
        (peer.virtual_ip.as_str(), peer.node_key.clone()),
        ("10.0.1.2", b.key.public_b64())
    );

    // b rotates its node key: a bad signature is 1005 and changes nothing;
    // a good one reaches a.
    let new_key = NodeKey::generate().unwrap();
    let ts = stamp(&b.last);
    let signed_by = |m: &MachineKey| NodeKeyUpdate {
        node_key: new_key.public_b64(),
        timestamp: ts,
        signature: encode(&m.sign(&node_key_signed_bytes(b_id, &new_key.public_b64(), ts))),
    };
    send(
        &mut wb,
        MsgType::ConfigUpdate,
        &serde_json::to_vec(&signed_by(&a.machine)).unwrap(),
    );
    let err: ErrorBody = expect(&mut wb, MsgType::Error);
    assert_eq!(err.code, 1005, "{err:?}");
    let (_, v) = sp.admin_call("GET", &format!("/api/v1/mesh/nodes/{b_id}"), None);
    assert_eq!(v["node_key_pub"], b.key.public_b64());
    send(
        &mut wb,
        MsgType::ConfigUpdate,
        &serde_json::to_vec(&signed_by(&b.machine)).unwrap(),
    );
    wait_update(&mut wa, |u| {
        u.peers.iter().any(|p| p.node_key == new_key.public_b64())
    });

    // A subnet route behind b reaches a.
    let (st, v) = sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{b_id}/routes"),
        Some(json!({ "cidr": "192.168.50.0/24" })),
    );
    assert_eq!(st, 201, "{v}");
    let upd = wait_update(&mut wa, |u| u.routes.is_some());
    assert_eq!(upd.routes.unwrap()[0].cidr, "192.168.50.0/24");

    // Deauthorized: b is cut off with 1006 within 1 s; a hears b removed.
    let t = Instant::now();
    sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{b_id}/deauthorize"),
        None,
    );
    let err = wait_error(&mut wb);
    assert_eq!(err.code, 1006);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(closed(&mut wb));
    wait_update(&mut wa, |u| u.removed.contains(&b_id));
    // Its tokens (an auth token and the relay tokens of its configs) are
    // blacklisted; a's are not.
    let (_, v) = sp.admin_call("GET", "/api/v1/mesh/stats/overview", None);
    let listed = v["tokens_blacklisted"].as_u64().unwrap();
    assert!(listed >= 2, "{v}");
    let (st, _) = sp.admin_call("DELETE", &format!("/api/v1/mesh/nodes/{a_id}"), None);
    assert_eq!(st, 204);
    let (_, v) = sp.admin_call("GET", "/api/v1/mesh/stats/overview", None);
    assert!(
        v["tokens_blacklisted"].as_u64().unwrap() >= listed + 2,
        "{v}"
    );
    // Deleted while connected: cut off too.
    let err = wait_error(&mut wa);
    assert_eq!(err.code, 1006);
}

/// Skip frames until an ERROR (the server's last word before a close).
fn wait_error(ws: &mut Ws) -> ErrorBody {
    loop {
        match recv(ws) {
            Some((MsgType::Error, p)) => return serde_json::from_slice(&p).unwrap(),
            Some(_) => continue,
            None => panic!("closed without ERROR"),
        }
    }
}

/// Read CONFIG_UPDATEs until one for which `pred` holds.
fn wait_update(ws: &mut Ws, pred: impl Fn(&ConfigUpdate) -> bool) -> ConfigUpdate {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let u: ConfigUpdate = expect(ws, MsgType::ConfigUpdate);
        if pred(&u) {
            return u;
        }
    }
    panic!("no such CONFIG_UPDATE within 5 s");
}

#[test]
fn the_control_channel_authenticates_pushes_changes_and_cuts_off() {
    each_backend("mesh_control", control);
}

fn bad_frames(backend: Backend) {
    let sp = Slowpath::start(&backend, &[]);
    let code = |msg: Vec<u8>| -> u16 {
        let mut ws = connect(&sp);
        ws.send(Message::Binary(msg.into())).unwrap();
        let (k, p) = recv(&mut ws).expect("an answer");
        assert_eq!(k, MsgType::Error);
        let e: ErrorBody = serde_json::from_slice(&p).unwrap();
        assert!(closed(&mut ws), "closed after {e:?}");
        e.code
    };
    assert_eq!(code(vec![2, 1, 0, 0, 0]), 2001);
    assert_eq!(code(vec![1, 0x77, 0, 0, 0]), 2002);
    assert_eq!(code(vec![1, 1, 0, 0, 5, b'{']), 2002);
    let mut big = vec![1, 1, 0, 0xff, 0xff];
    big.resize(5 + 65535, b' ');
    assert_eq!(code(big), 2003);
    // A well-formed frame of the wrong type first, a body with a typo.
    assert_eq!(code(framed(MsgType::Ping, b"12345678")), 2002);
    assert_eq!(
        code(framed(MsgType::AuthRequest, br#"{"machine_kye":"x"}"#)),
        2002
    );
    // A bad machine key and a bad signature.
    let n = Node::new();
    let mut req = n.auth();
    req.machine_key = "AAAA".into();
    assert_eq!(
        code(framed(
            MsgType::AuthRequest,
            &serde_json::to_vec(&req).unwrap()
        )),
        1004
    );
    let mut req = n.auth();
    req.hostname = "other".into();
    req.network = "default".into();
    req.timestamp += 1;
    assert_eq!(
        code(framed(
            MsgType::AuthRequest,
            &serde_json::to_vec(&req).unwrap()
        )),
        1005
    );
    // Text messages are not frames.
    let mut ws = connect(&sp);
    ws.send(Message::Text("hello".into())).unwrap();
    let (k, p) = recv(&mut ws).unwrap();
    assert_eq!(k, MsgType::Error);
    assert_eq!(serde_json::from_slice::<Value>(&p).unwrap()["code"], 2002);
}

/// A network too large for one CONFIG frame: its peers arrive split over
/// CONFIG and CONFIG_UPDATEs, all of them.
fn large_network(backend: Backend) {
    let sp = Slowpath::start(&backend, &[]);
    let (st, v) = sp.admin_call(
        "PUT",
        "/api/v1/mesh/settings",
        Some(json!({ "require_authorization": false })),
    );
    assert_eq!(st, 200, "{v}");
    // Room for more than a /24's addresses.
    let (st, v) = sp.admin_call(
        "PUT",
        "/api/v1/mesh/networks/1",
        Some(json!({ "subnet": "10.0.0.0/16" })),
    );
    assert_eq!(st, 200, "{v}");
    let long = "h".repeat(250);
    let peers = 300;
    for _ in 0..peers {
        let n = Node::new();
        let mut req = n.auth();
        req.hostname = long.clone();
        let (mk, nk) = (req.machine_key.clone(), req.node_key.clone());
        req.signature =
            encode(
                &n.machine
                    .sign(&auth_signed_bytes(&mk, &nk, req.timestamp, "default")),
            );
        let mut ws = connect(&sp);
        send(
            &mut ws,
            MsgType::AuthRequest,
            &serde_json::to_vec(&req).unwrap(),
        );
        let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
        assert!(resp.ok, "{resp:?}");
    }
    let me = Node::new();
    let (mut ws, _, cfg) = join(&sp, &me);
    let mut seen: std::collections::BTreeSet<u32> = cfg.peers.iter().map(|p| p.node_id).collect();
    assert!(
        seen.len() < peers,
        "all {} peers fit in one CONFIG?",
        seen.len()
    );
    while seen.len() < peers {
        let u: ConfigUpdate = expect(&mut ws, MsgType::ConfigUpdate);
        seen.extend(u.peers.iter().map(|p| p.node_id));
    }
    assert_eq!(seen.len(), peers);
}

#[test]
fn a_network_too_large_for_one_frame_arrives_in_pieces() {
    each_backend("mesh_large", large_network);
}

/// One address holds at most its share of control channels (256); the
/// next upgrade gets 503, and a closed one gives its place back.
#[test]
fn one_address_holds_at_most_its_share_of_channels() {
    let sp = Slowpath::start(&Backend::Sqlite, &[]);
    let mut open: Vec<Ws> = (0..256).map(|_| connect(&sp)).collect();
    let url = format!("{}/ws/control", sp.base.replace("http://", "ws://"));
    match tungstenite::connect(url.as_str()) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("the 257th channel: {:?}", other.map(|_| ())),
    }
    let mut first = open.remove(0);
    first.close(None).unwrap();
    let _ = first.read();
    drop(first);
    // The server sees the close soon after.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tungstenite::connect(url.as_str()) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no place freed: {e}"),
        }
    }
}

#[test]
fn bad_frames_get_the_seeds_codes_and_a_close() {
    each_backend("mesh_bad_frames", bad_frames);
}
