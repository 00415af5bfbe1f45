//! Seed 003's control channel `/ws/control` through the real `slowpath
//! serve`, on SQLite and PostgreSQL, with a WebSocket client speaking the
//! seed's frames: a node not yet authorized gets 1006 and is closed;
//! authorized, it gets AUTH_RESPONSE and CONFIG with its address and its
//! peers' node keys; a peer joining, rotating its key and being
//! deauthorized reach it as CONFIG_UPDATE; the deauthorized node is cut off
//! with 1006 within 1 s; bad frames get 2001/2002/2003 and a close; a node
//! key update with a bad signature is 1005 and changes nothing.

mod harness;

use std::time::{Duration, Instant};

use harness::mesh::*;
use harness::{each_backend, Backend, Slowpath};
use mesh::keys::{encode, MachineKey, NodeKey};
use proto::mesh::control::{
    auth_signed_bytes, node_key_signed_bytes, AuthResponse, Blacklist, ConfigUpdate, ErrorBody,
    NodeKeyUpdate, NodeLocations, ServerConfig, ServerNodes, ServerRegister,
};
use proto::mesh::MsgType;
use serde_json::{json, Value};
use tungstenite::Message;

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

/// Register a relay on `/ws/server` with `token`: AUTH_RESPONSE, CONFIG,
/// the whole blacklist and every node's location.
fn register(sp: &Slowpath, token: &str) -> (Ws, ServerConfig, Blacklist, NodeLocations) {
    let mut ws = connect_to(sp, "/ws/server");
    let reg = ServerRegister {
        token: token.into(),
        version: "test".into(),
    };
    send(
        &mut ws,
        MsgType::ServerRegister,
        &serde_json::to_vec(&reg).unwrap(),
    );
    let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
    assert!(resp.ok, "{resp:?}");
    let cfg: ServerConfig = expect(&mut ws, MsgType::Config);
    let bl: Blacklist = expect(&mut ws, MsgType::ServerBlacklist);
    assert!(bl.full);
    // A relay hears of the authorized nodes (the whole list, first).
    let nodes: ServerNodes = expect(&mut ws, MsgType::ConfigUpdate);
    assert!(nodes.full, "{nodes:?}");
    let loc: NodeLocations = expect(&mut ws, MsgType::ServerNodeLoc);
    assert!(loc.full);
    (ws, cfg, bl, loc)
}

/// A refused registration: the ERROR's code, then a close.
fn refused(sp: &Slowpath, token: &str) -> ErrorBody {
    let mut ws = connect_to(sp, "/ws/server");
    let reg = ServerRegister {
        token: token.into(),
        version: String::new(),
    };
    send(
        &mut ws,
        MsgType::ServerRegister,
        &serde_json::to_vec(&reg).unwrap(),
    );
    let err: ErrorBody = expect(&mut ws, MsgType::Error);
    assert!(closed(&mut ws));
    err
}

fn servers(backend: Backend) {
    let sp = Slowpath::start(&backend, &[]);
    // Refusals name the field.
    for (body, field) in [
        (
            json!({ "name": "r", "capabilities": ["turn"], "url": "ws://x/ws/data" }),
            "capabilities",
        ),
        (json!({ "name": "r" }), "url"),
        (json!({ "name": "r", "url": "http://x/ws/data" }), "url"),
        (json!({ "name": "s", "capabilities": ["stun"] }), "stun_ip"),
        (
            json!({ "name": "r", "url": "ws://x/", "colour": 1 }),
            "colour",
        ),
    ] {
        let (st, v) = sp.admin_call("POST", "/api/v1/mesh/servers", Some(body));
        assert_eq!(st, 400, "{v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
    let add = |name: &str| {
        let (st, v) = sp.admin_call(
            "POST",
            "/api/v1/mesh/servers",
            Some(json!({ "name": name, "url": format!("ws://127.0.0.1:9/{name}/ws/data"), "region": "eu" })),
        );
        assert_eq!(st, 201, "{v}");
        (
            v["server"]["id"].as_u64().unwrap() as u32,
            v["token"].as_str().unwrap().to_owned(),
        )
    };
    let (r1, t1) = add("relay-1");
    let (r2, t2) = add("relay-2");
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/mesh/servers",
        Some(json!({ "name": "relay-1", "url": "ws://x/" })),
    );
    assert_eq!(st, 409, "{v}");

    // A registered relay learns who it is, the relays, and the key tokens
    // are signed with.
    let (mut w1, cfg, bl, loc) = register(&sp, &t1);
    assert_eq!(cfg.server_id, r1);
    assert_eq!(
        cfg.relays.iter().map(|r| r.server_id).collect::<Vec<_>>(),
        vec![r1, r2]
    );
    assert!(bl.entries.is_empty() && loc.locations.is_empty());
    use base64::Engine as _;
    let keys: Vec<(String, [u8; 32])> = cfg
        .token_keys
        .iter()
        .map(|(kid, k)| {
            let raw = base64::engine::general_purpose::STANDARD.decode(k).unwrap();
            (kid.clone(), raw.try_into().unwrap())
        })
        .collect();
    let trust = proto::mesh::token::Trust {
        ed25519: &keys,
        hs256: None,
    };
    // The lower id dials: relay 1 holds a link token for relay 2, made for
    // that pair alone.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(cfg.links.len(), 1, "{cfg:?}");
    assert_eq!(cfg.links[0].0, r2);
    let link = proto::mesh::token::check_link_token(&cfg.links[0].1, &trust, r2, now_s, |_| false)
        .expect("the link token verifies on relay 2");
    assert_eq!(link.from, r1);
    assert!(
        proto::mesh::token::check_link_token(&cfg.links[0].1, &trust, r1, now_s, |_| false)
            .is_err()
    );

    // A node's CONFIG lists both relays, and its relay token verifies on
    // the relay with that key alone.
    let a = Node::new();
    let mut wa = connect(&sp);
    send(
        &mut wa,
        MsgType::AuthRequest,
        &serde_json::to_vec(&a.auth()).unwrap(),
    );
    let a_id = expect::<AuthResponse>(&mut wa, MsgType::AuthResponse).node_id;
    sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{a_id}/authorize"),
        None,
    );
    let (mut wa, _, node_cfg) = join(&sp, &a);
    assert_eq!(node_cfg.relays.len(), 2);
    // The relay hears that a is authorized.
    wait_for::<ServerNodes>(
        &mut w1,
        MsgType::ConfigUpdate,
        Duration::from_secs(5),
        |n| n.nodes.iter().any(|&(id, _)| id == a_id),
    );
    let claims =
        proto::mesh::token::check_relay_token(&node_cfg.relay_token, &trust, r1, now_s, |_| false)
            .expect("the relay token verifies on relay 1");
    assert_eq!(claims.node_id, a_id);
    assert_eq!(
        proto::mesh::token::check_relay_token(&node_cfg.relay_token, &trust, 999, now_s, |_| false)
            .unwrap_err()
            .code()
            .code(),
        1001
    );

    // Relay 1 reports node a; relay 2, registering, hears of it.
    let report = NodeLocations {
        full: true,
        locations: vec![(a_id, r1)],
        removed: vec![],
    };
    send(
        &mut w1,
        MsgType::ServerNodeLoc,
        &serde_json::to_vec(&report).unwrap(),
    );
    wait_for::<NodeLocations>(
        &mut w1,
        MsgType::ServerNodeLoc,
        Duration::from_secs(5),
        |l| l.locations.contains(&(a_id, r1)),
    );
    let (mut w2, _, _, loc) = register(&sp, &t2);
    assert_eq!(loc.locations, vec![(a_id, r1)]);

    // Deauthorizing a: its relay token's id reaches both relays within 1 s.
    let t = Instant::now();
    sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{a_id}/deauthorize"),
        None,
    );
    for w in [&mut w1, &mut w2] {
        let b = wait_for::<Blacklist>(w, MsgType::ServerBlacklist, Duration::from_secs(1), |b| {
            b.entries.iter().any(|(j, _)| *j == claims.jti)
        });
        assert!(!b.full);
        // And the node leaves its list of authorized nodes.
        wait_for::<ServerNodes>(w, MsgType::ConfigUpdate, Duration::from_secs(1), |n| {
            n.removed.iter().any(|&(id, _)| id == a_id)
        });
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let err = wait_error(&mut wa);
    assert_eq!(err.code, 1006);
    let (_, v) = sp.admin_call("GET", "/api/v1/mesh/tokens/blacklist", None);
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["jti"] == claims.jti.as_str()),
        "{v}"
    );

    // A relay speaks for itself only: 2002 and a close.
    let lie = NodeLocations {
        full: false,
        locations: vec![(a_id, r1)],
        removed: vec![],
    };
    send(
        &mut w2,
        MsgType::ServerNodeLoc,
        &serde_json::to_vec(&lie).unwrap(),
    );
    assert_eq!(wait_error(&mut w2).code, 2002);
    assert!(closed(&mut w2));

    // A new token for relay 2: the old one is revoked (1003), the new works.
    let (st, v) = sp.admin_call("POST", &format!("/api/v1/mesh/servers/{r2}/token"), None);
    assert_eq!(st, 200, "{v}");
    let t2_new = v["token"].as_str().unwrap().to_owned();
    assert_eq!(refused(&sp, &t2).code, 1003);
    let (mut w2, _, _, _) = register(&sp, &t2_new);

    // Disabling relay 1 cuts it off at once and leaves nodes one relay.
    let b = Node::new();
    let mut wb = connect(&sp);
    send(
        &mut wb,
        MsgType::AuthRequest,
        &serde_json::to_vec(&b.auth()).unwrap(),
    );
    let b_id = expect::<AuthResponse>(&mut wb, MsgType::AuthResponse).node_id;
    sp.admin_call(
        "POST",
        &format!("/api/v1/mesh/nodes/{b_id}/authorize"),
        None,
    );
    let (mut wb, _, _) = join(&sp, &b);
    let t = Instant::now();
    let (st, v) = sp.admin_call(
        "PUT",
        &format!("/api/v1/mesh/servers/{r1}"),
        Some(json!({ "enabled": false })),
    );
    assert_eq!((st, v["enabled"].clone()), (200, json!(false)));
    let err = wait_error(&mut w1);
    assert_eq!(err.code, 1001, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let upd = wait_update(&mut wb, |u| u.relays.is_some());
    assert_eq!(
        upd.relays
            .unwrap()
            .iter()
            .map(|r| r.server_id)
            .collect::<Vec<_>>(),
        vec![r2]
    );
    let (token, _) = upd.relay_token.expect("a relay token for the relays left");
    proto::mesh::token::check_relay_token(&token, &trust, r2, now_s, |_| false).unwrap();
    assert!(proto::mesh::token::check_relay_token(&token, &trust, r1, now_s, |_| false).is_err());
    // Relay 2 hears that the relay list changed, and that relay 1 holds
    // node a no more.
    wait_for::<ServerConfig>(&mut w2, MsgType::Config, Duration::from_secs(5), |c| {
        c.relays.len() == 1
    });
    wait_for::<NodeLocations>(
        &mut w2,
        MsgType::ServerNodeLoc,
        Duration::from_secs(5),
        |l| l.removed.contains(&(a_id, r1)),
    );
    assert_eq!(refused(&sp, &t1).code, 1001);

    // Tokens that are not a live server's.
    assert_eq!(refused(&sp, "not.a.token").code, 1001);
    assert_eq!(
        refused(&sp, &token).code,
        1001,
        "a relay token is not a server token"
    );

    // Deleted: cut off, its token blacklisted.
    let (st, _) = sp.admin_call("DELETE", &format!("/api/v1/mesh/servers/{r2}"), None);
    assert_eq!(st, 204);
    assert_eq!(wait_error(&mut w2).code, 1003);
    let (_, v) = sp.admin_call("GET", "/api/v1/mesh/servers", None);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    harness::wait_audit(&sp, "mesh.server.token_regenerated", |r| {
        r["detail"]["server_id"] == r2
    });
}

#[test]
fn relays_register_learn_the_blacklist_and_node_locations_and_are_cut_off() {
    each_backend("mesh_servers", servers);
}

/// What one node, or anyone able to make machine keys, can make the
/// controller hold or do: node-key rotations come in a burst of 5, then
/// one a second (4003 past it, the key and the channel stay); at most 1024
/// nodes of a network wait for authorization (a new machine key past it
/// is 4003, one already waiting is still told 1006).
fn bounded(backend: Backend) {
    let sp = Slowpath::start(&backend, &[]);
    let a = Node::new();
    let (mut wa, a_id, _) = authorized(&sp, &a, "default");
    let keys: Vec<NodeKey> = (0..8).map(|_| NodeKey::generate().unwrap()).collect();
    for k in &keys {
        let ts = stamp(&a.last);
        let upd = NodeKeyUpdate {
            node_key: k.public_b64(),
            timestamp: ts,
            signature: encode(
                &a.machine
                    .sign(&node_key_signed_bytes(a_id, &k.public_b64(), ts)),
            ),
        };
        send(
            &mut wa,
            MsgType::ConfigUpdate,
            &serde_json::to_vec(&upd).unwrap(),
        );
    }
    send(&mut wa, MsgType::Ping, b"still-on");
    let mut refused = 0;
    loop {
        match recv(&mut wa) {
            Some((MsgType::Error, p)) => {
                let e: ErrorBody = serde_json::from_slice(&p).unwrap();
                assert_eq!(e.code, 4003, "{e:?}");
                refused += 1;
            }
            Some((MsgType::Pong, p)) => {
                assert_eq!(p, b"still-on");
                break;
            }
            Some(_) => {}
            None => panic!("the channel was closed"),
        }
    }
    assert!(
        (2..=3).contains(&refused),
        "{refused} of 8 rotations refused"
    );
    // The key in force is one of the five taken.
    let (_, v) = sp.admin_call("GET", &format!("/api/v1/mesh/nodes/{a_id}"), None);
    let now = v["node_key_pub"].as_str().unwrap().to_owned();
    assert!(keys[..6].iter().any(|k| k.public_b64() == now), "{now}");

    // 1024 machine keys wait in "default"; the next new one is refused.
    let t = Instant::now();
    let waiting: Vec<Node> = (0..1024).map(|_| Node::new()).collect();
    for n in &waiting {
        let mut ws = connect(&sp);
        send(
            &mut ws,
            MsgType::AuthRequest,
            &serde_json::to_vec(&n.auth()).unwrap(),
        );
        let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
        assert_eq!(resp.error.map(|e| e.code), Some(1006));
    }
    eprintln!(
        "[mesh_bounds] 1024 registrations in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut ws = connect(&sp);
    send(
        &mut ws,
        MsgType::AuthRequest,
        &serde_json::to_vec(&Node::new().auth()).unwrap(),
    );
    let err = wait_error(&mut ws);
    assert_eq!(err.code, 4003, "{err:?}");
    assert!(err.message.contains("waiting for authorization"), "{err:?}");
    // One already waiting is still told to wait.
    let mut ws = connect(&sp);
    send(
        &mut ws,
        MsgType::AuthRequest,
        &serde_json::to_vec(&waiting[0].auth()).unwrap(),
    );
    let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
    assert_eq!(resp.error.map(|e| e.code), Some(1006));
    let (_, v) = sp.admin_call("GET", "/api/v1/mesh/stats/overview", None);
    assert_eq!(v["nodes_pending"], 1024, "{v}");
}

#[test]
fn rotations_and_waiting_nodes_are_bounded() {
    each_backend("mesh_bounds", bounded);
}
