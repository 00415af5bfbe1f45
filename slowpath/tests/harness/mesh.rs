//! Seed 003 clients for tests: a node's keys and signed AUTH_REQUEST, a
//! WebSocket speaking the seed's frames (one frame per binary message) to
//! the controller or a relay, and waiting for what comes back.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use mesh::keys::{encode, MachineKey, NodeKey};
use proto::mesh::control::{auth_signed_bytes, AuthRequest, AuthResponse, Config, ErrorBody};
use proto::mesh::{frame, MsgType};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::Slowpath;

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

pub struct Node {
    pub machine: MachineKey,
    pub key: NodeKey,
    /// The last timestamp signed: each signed message carries a newer one.
    pub last: std::cell::Cell<u64>,
}

/// Unix ms, newer than `last`.
pub fn stamp(last: &std::cell::Cell<u64>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = now.max(last.get() + 1);
    last.set(ts);
    ts
}

impl Node {
    pub fn new() -> Node {
        Node {
            machine: MachineKey::generate().unwrap(),
            key: NodeKey::generate().unwrap(),
            last: std::cell::Cell::new(0),
        }
    }

    pub fn auth(&self) -> AuthRequest {
        self.auth_in("default")
    }

    /// AUTH_REQUEST joining `network`.
    pub fn auth_in(&self, network: &str) -> AuthRequest {
        let ts = stamp(&self.last);
        let (mk, nk) = (self.machine.public_b64(), self.key.public_b64());
        let sig = self.machine.sign(&auth_signed_bytes(&mk, &nk, ts, network));
        AuthRequest {
            machine_key: mk,
            node_key: nk,
            network: network.into(),
            hostname: "h".into(),
            timestamp: ts,
            signature: encode(&sig),
            ..AuthRequest::default()
        }
    }
}

pub fn connect(sp: &Slowpath) -> Ws {
    connect_to(sp, "/ws/control")
}

pub fn connect_to(sp: &Slowpath, path: &str) -> Ws {
    let url = format!("{}{path}", sp.base.replace("http://", "ws://"));
    let (ws, _) = tungstenite::connect(url).expect("websocket");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

/// One frame's bytes.
pub fn framed(kind: MsgType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(kind, 0, payload, &mut out).unwrap();
    out
}

pub fn send(ws: &mut Ws, kind: MsgType, payload: &[u8]) {
    ws.send(Message::Binary(framed(kind, payload).into()))
        .unwrap();
}

/// The next frame (type, payload); None when the server closed.
pub fn recv(ws: &mut Ws) -> Option<(MsgType, Vec<u8>)> {
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

pub fn expect<T: serde::de::DeserializeOwned>(ws: &mut Ws, kind: MsgType) -> T {
    let (k, p) = recv(ws).unwrap_or_else(|| panic!("closed while waiting for {kind}"));
    assert_eq!(k, kind, "{}", String::from_utf8_lossy(&p));
    serde_json::from_slice(&p).unwrap()
}

pub fn closed(ws: &mut Ws) -> bool {
    recv(ws).is_none()
}

/// Open a control channel for an authorized node: AUTH_RESPONSE, CONFIG.
pub fn join(sp: &Slowpath, n: &Node) -> (Ws, AuthResponse, Config) {
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

/// Skip frames until an ERROR (the server's last word before a close).
pub fn wait_error(ws: &mut Ws) -> ErrorBody {
    loop {
        match recv(ws) {
            Some((MsgType::Error, p)) => return serde_json::from_slice(&p).unwrap(),
            Some(_) => continue,
            None => panic!("closed without ERROR"),
        }
    }
}

/// Read frames of `kind` until one for which `pred` holds, within `within`.
pub fn wait_for<T: serde::de::DeserializeOwned>(
    ws: &mut Ws,
    kind: MsgType,
    within: Duration,
    pred: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (k, p) = recv(ws).unwrap_or_else(|| panic!("closed while waiting for {kind}"));
        if k != kind {
            continue;
        }
        let v: T = serde_json::from_slice(&p).unwrap();
        if pred(&v) {
            return v;
        }
    }
    panic!("no such {kind} within {within:?}");
}

/// A WebSocket to `url` (a relay's `/ws/data`), reads timing out after 5 s.
pub fn connect_url(url: &str) -> Ws {
    let (ws, _) = tungstenite::connect(url).expect("websocket");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

/// Node `n` registered in `network`, authorized by the operator, and on
/// its control channel: the channel, its id and its CONFIG.
pub fn authorized(sp: &Slowpath, n: &Node, network: &str) -> (Ws, u32, Config) {
    let mut ws = connect(sp);
    send(
        &mut ws,
        MsgType::AuthRequest,
        &serde_json::to_vec(&n.auth_in(network)).unwrap(),
    );
    let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
    let id = resp.node_id;
    if !resp.ok {
        let (st, v) = sp.admin_call("POST", &format!("/api/v1/mesh/nodes/{id}/authorize"), None);
        assert_eq!(st, 200, "{v}");
        ws = connect(sp);
        send(
            &mut ws,
            MsgType::AuthRequest,
            &serde_json::to_vec(&n.auth_in(network)).unwrap(),
        );
        let resp: AuthResponse = expect(&mut ws, MsgType::AuthResponse);
        assert!(resp.ok, "{resp:?}");
    }
    let cfg: Config = expect(&mut ws, MsgType::Config);
    (ws, id, cfg)
}
