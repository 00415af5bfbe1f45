//! `totoro-mesh up`: a node's life. Three threads share the node's state:
//!
//! - **control** (`Node::control_loop`): `/ws/control` on the
//!   controller; a machine-key-signed AUTH_REQUEST (registering on first
//!   contact; an unauthorized node waits and asks again), then CONFIG and
//!   CONFIG_UPDATEs: the node's address, its peers and their node keys, the
//!   relays and a relay token, the routes. PING every 10 s; reconnects
//!   with backoff.
//! - **relay** (`Node::relay_loop`): `/ws/data` on a relay of the
//!   CONFIG with the relay token; DATA frames are opened with the sending
//!   peer's session and written to the TUN device. Reconnects with backoff,
//!   to the next relay when one fails.
//! - **tun** (`Node::tun_loop`): IP packets read from the TUN device go
//!   to the peer that holds their destination (its virtual IP, or a subnet
//!   route it advertises: longest prefix, then lowest priority among online
//!   gateways), sealed with that peer's session, over the relay.
//!
//! The relay sees node ids and ciphertext only.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use proto::mesh::control::{
    self, auth_signed_bytes, node_key_signed_bytes, AuthRequest, AuthResponse, Config,
    ConfigUpdate, ErrorBody, NodeKeyUpdate, Peer, Relay, Route,
};
use proto::mesh::{data, frame, MsgType};

use crate::keys::{decode_key, encode, MachineKey, NodeKey};
use crate::session::Session;
use crate::tun::{self, Tun};
use crate::ws::{Incoming, WsConn};

/// What `up` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The controller's base URL (`http://host:7400`).
    pub controller: String,
    /// The network to join.
    pub network: String,
    /// Where the machine key and the status file live.
    pub state_dir: PathBuf,
    /// TUN interface name.
    pub tun: String,
    /// TUN MTU.
    pub mtu: u32,
    /// The name shown to operators.
    pub hostname: String,
    /// Install the subnet routes other nodes advertise.
    pub accept_routes: bool,
    /// Forward between the mesh and this host's networks, with the mesh's
    /// sources translated to this host's (SNAT by nftables masquerade).
    pub gateway: bool,
    /// How often the node key is replaced (zero: never). The old key
    /// still opens what peers sealed for it for [`OLD_KEY_KEPT`].
    pub key_rotation: Duration,
    /// The relay to use first, by name or id (None: the first listed).
    pub relay: Option<String>,
}

/// Bytes of WebSocket messages the TUN loop gathers into one write.
const BATCH: usize = 128 * 1024;

/// How long a replaced node key still opens packets (peers learn the new
/// key from the controller, in milliseconds normally).
pub const OLD_KEY_KEPT: Duration = Duration::from_secs(300);

/// A replaced node key and the sessions made with it.
struct OldKey {
    key: Arc<NodeKey>,
    until: Instant,
    sessions: HashMap<u32, Session>,
}

/// Counters, written to the status file.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets sent into the mesh.
    pub tx_packets: AtomicU64,
    /// Packets received from it and written to the TUN device.
    pub rx_packets: AtomicU64,
    /// Packets read from the TUN device with no peer or route.
    pub no_route: AtomicU64,
    /// DATA frames that did not open (wrong key, tampered, replayed).
    pub rejected: AtomicU64,
    /// Packets dropped for want of a relay connection.
    pub no_relay: AtomicU64,
    /// Node keys replaced.
    pub key_rotations: AtomicU64,
}

/// The state the threads share.
pub struct Node {
    opts: Options,
    machine: MachineKey,
    key: RwLock<Arc<NodeKey>>,
    key_born: Mutex<Instant>,
    old: Mutex<Option<OldKey>>,
    me: RwLock<Option<Me>>,
    peers: RwLock<HashMap<u32, Peer>>,
    by_ip: RwLock<HashMap<Ipv4Addr, u32>>,
    routes: RwLock<Vec<Route>>,
    relays: RwLock<Vec<Relay>>,
    relay_token: RwLock<String>,
    sessions: Mutex<HashMap<u32, Session>>,
    /// Bumped (under the sessions lock) whenever keys change.
    generation: AtomicU64,
    relay_out: Mutex<Option<WsConn>>,
    relay_server: RwLock<Option<u32>>,
    tun: Mutex<Option<Tun>>,
    /// Counters.
    pub counters: Counters,
    last_signed: Mutex<u64>,
}

/// This node as the controller numbered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Me {
    id: u32,
    ip: Ipv4Addr,
    prefix: u8,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn seed_frame(kind: MsgType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::HEADER_LEN + payload.len());
    let _ = frame::encode(kind, 0, payload, &mut out);
    out
}

/// `a.b.c.d/n` as (network address, prefix).
fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = text.split_once('/')?;
    let ip: Ipv4Addr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    Some((ip, prefix))
}

fn contains(net: Ipv4Addr, prefix: u8, ip: Ipv4Addr) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Backoff between reconnects: 0.5 s doubling to 10 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(500))
    }
    fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(500);
    }
}

impl Node {
    /// A node with its machine key from the state directory (made on first
    /// start, mode 0600) and a fresh node key.
    pub fn new(opts: Options) -> Result<Arc<Node>, String> {
        crate::files::private_dir(&opts.state_dir)
            .map_err(|e| format!("{}: {e}", opts.state_dir.display()))?;
        let path = opts.state_dir.join("machine.key");
        let machine =
            MachineKey::load_or_create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = NodeKey::generate().map_err(|e| e.to_string())?;
        Ok(Arc::new(Node {
            opts,
            machine,
            key: RwLock::new(Arc::new(key)),
            key_born: Mutex::new(Instant::now()),
            old: Mutex::new(None),
            me: RwLock::new(None),
            peers: Default::default(),
            by_ip: Default::default(),
            routes: Default::default(),
            relays: Default::default(),
            relay_token: Default::default(),
            sessions: Default::default(),
            generation: AtomicU64::new(0),
            relay_out: Mutex::new(None),
            relay_server: RwLock::new(None),
            tun: Mutex::new(None),
            counters: Counters::default(),
            last_signed: Mutex::new(0),
        }))
    }

    /// A signing timestamp newer than every earlier one.
    fn stamp(&self) -> u64 {
        let mut last = self.last_signed.lock().unwrap_or_else(|p| p.into_inner());
        *last = now_ms().max(*last + 1);
        *last
    }

    fn current_key(&self) -> Arc<NodeKey> {
        Arc::clone(&self.key.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn auth_request(&self) -> AuthRequest {
        let ts = self.stamp();
        let (mk, nk) = (self.machine.public_b64(), self.current_key().public_b64());
        let sig = self
            .machine
            .sign(&auth_signed_bytes(&mk, &nk, ts, &self.opts.network));
        AuthRequest {
            machine_key: mk,
            node_key: nk,
            network: self.opts.network.clone(),
            hostname: self.opts.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            timestamp: ts,
            signature: encode(&sig),
            ..AuthRequest::default()
        }
    }

    /// Run until the process is killed.
    pub fn run(self: &Arc<Node>) {
        let n = Arc::clone(self);
        std::thread::Builder::new()
            .name("mesh-relay".into())
            .spawn(move || n.relay_loop())
            .ok();
        let n = Arc::clone(self);
        std::thread::Builder::new()
            .name("mesh-status".into())
            .spawn(move || loop {
                n.write_status();
                std::thread::sleep(Duration::from_secs(1));
            })
            .ok();
        self.control_loop();
    }

    /// The control channel, reconnecting for ever.
    fn control_loop(self: &Arc<Node>) {
        let url = format!(
            "{}/ws/control",
            self.opts
                .controller
                .trim_end_matches('/')
                .replacen("http://", "ws://", 1)
        );
        let mut backoff = Backoff::new();
        // The same complaint is said once, not at every retry.
        let mut said = String::new();
        loop {
            match self.control_session(&url) {
                Ok(()) => backoff.reset(),
                Err(why) if why != said => {
                    eprintln!("totoro-mesh: control channel: {why}");
                    said = why;
                }
                Err(_) => {}
            }
            backoff.wait();
        }
    }

    fn control_session(self: &Arc<Node>, url: &str) -> Result<(), String> {
        let mut ws = WsConn::connect(url, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let req = serde_json::to_vec(&self.auth_request()).map_err(|e| e.to_string())?;
        ws.send(&seed_frame(MsgType::AuthRequest, &req))
            .map_err(|e| e.to_string())?;
        let tick = if self.opts.key_rotation.is_zero() {
            Duration::from_secs(10)
        } else {
            (self.opts.key_rotation / 2).clamp(Duration::from_millis(200), Duration::from_secs(10))
        };
        ws.set_read_timeout(Some(tick)).map_err(|e| e.to_string())?;
        let mut last_ping = Instant::now();
        // The controller answers every PING: a minute without a word from
        // it means it is gone even if TCP has not said so.
        let mut heard = Instant::now();
        ws.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        loop {
            self.maybe_rotate(&mut ws)?;
            if heard.elapsed() > Duration::from_secs(60) {
                return Err("the controller stopped answering".into());
            }
            let msg = match ws.recv() {
                Ok(Incoming::Binary(m)) => {
                    heard = Instant::now();
                    m
                }
                Ok(Incoming::Closed) => return Err("closed by the controller".into()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    ws.send(&seed_frame(MsgType::Ping, b"keepalv"))
                        .map_err(|e| e.to_string())?;
                    last_ping = Instant::now();
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            if last_ping.elapsed() > Duration::from_secs(10) {
                ws.send(&seed_frame(MsgType::Ping, b"keepalv"))
                    .map_err(|e| e.to_string())?;
                last_ping = Instant::now();
            }
            let f = frame::parse(&msg, frame::MAX_PAYLOAD).map_err(|e| e.to_string())?;
            match f.kind {
                MsgType::AuthResponse => {
                    let r: AuthResponse = control::decode(f.payload).map_err(|e| e.message)?;
                    if !r.ok {
                        let why = r.error.map(|e| e.message).unwrap_or_default();
                        // Asked again after the backoff (at most 10 s).
                        return Err(format!("node {} is waiting ({why})", r.node_id));
                    }
                }
                MsgType::Config => {
                    let c: Config = control::decode(f.payload).map_err(|e| e.message)?;
                    self.apply_config(c)?;
                }
                MsgType::ConfigUpdate => {
                    let u: ConfigUpdate = control::decode(f.payload).map_err(|e| e.message)?;
                    self.apply_update(u);
                }
                MsgType::Error => {
                    let e: ErrorBody = control::decode(f.payload).map_err(|e| e.message)?;
                    return Err(format!("{} {}", e.code, e.message));
                }
                _ => {}
            }
        }
    }

    /// Replace the node key when it is due: the new key, signed by the
    /// machine key, to the controller (which tells the peers); sessions
    /// start over with it, and the old key keeps opening packets for
    /// [`OLD_KEY_KEPT`].
    fn maybe_rotate(&self, ws: &mut WsConn) -> Result<(), String> {
        let Some(me) = *self.me.read().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(());
        };
        let mut born = self.key_born.lock().unwrap_or_else(|p| p.into_inner());
        if self.opts.key_rotation.is_zero() || born.elapsed() < self.opts.key_rotation {
            return Ok(());
        }
        let new = Arc::new(NodeKey::generate().map_err(|e| e.to_string())?);
        let ts = self.stamp();
        let public = new.public_b64();
        let upd = NodeKeyUpdate {
            signature: encode(
                &self
                    .machine
                    .sign(&node_key_signed_bytes(me.id, &public, ts)),
            ),
            node_key: public,
            timestamp: ts,
        };
        let body = serde_json::to_vec(&upd).map_err(|e| e.to_string())?;
        ws.send(&seed_frame(MsgType::ConfigUpdate, &body))
            .map_err(|e| e.to_string())?;
        let old = std::mem::replace(
            &mut *self.key.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        let sessions = {
            let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            std::mem::take(&mut *s)
        };
        *self.old.lock().unwrap_or_else(|p| p.into_inner()) = Some(OldKey {
            key: old,
            until: Instant::now() + OLD_KEY_KEPT,
            sessions,
        });
        *born = Instant::now();
        self.counters.key_rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Open `payload` with the session of `src` made with the replaced
    /// key, while it is kept.
    fn open_with_old(&self, src: u32, payload: &mut [u8]) -> Option<Vec<u8>> {
        let me = (*self.me.read().unwrap_or_else(|p| p.into_inner()))?;
        let mut old = self.old.lock().unwrap_or_else(|p| p.into_inner());
        if old.as_ref().is_some_and(|o| Instant::now() > o.until) {
            *old = None;
        }
        let o = old.as_mut()?;
        if let std::collections::hash_map::Entry::Vacant(slot) = o.sessions.entry(src) {
            let key = self
                .peers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&src)
                .and_then(|p| decode_key(&p.node_key))?;
            slot.insert(Session::new(&o.key, me.id, src, &key)?);
        }
        o.sessions
            .get_mut(&src)?
            .open(payload)
            .ok()
            .map(<[u8]>::to_vec)
    }

    fn apply_config(self: &Arc<Node>, c: Config) -> Result<(), String> {
        let ip: Ipv4Addr = c
            .virtual_ip
            .parse()
            .map_err(|_| format!("bad virtual IP {:?}", c.virtual_ip))?;
        let (_, prefix) =
            parse_cidr(&c.subnet).ok_or_else(|| format!("bad subnet {:?}", c.subnet))?;
        let me = Me {
            id: c.node_id,
            ip,
            prefix,
        };
        let first = self
            .me
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|m| m != me);
        if first {
            self.bring_up(me)?;
        }
        {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            // A whole configuration (a reconnect): keys may have changed
            // while the channel was down.
            peers.clear();
            sessions.clear();
            for p in c.peers {
                peers.insert(p.node_id, p);
            }
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.reindex();
        *self.relays.write().unwrap_or_else(|p| p.into_inner()) = c.relays;
        *self.relay_token.write().unwrap_or_else(|p| p.into_inner()) = c.relay_token;
        self.set_routes(c.routes);
        Ok(())
    }

    fn apply_update(&self, u: ConfigUpdate) {
        {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            for p in u.peers {
                // A new node key means a new session.
                if peers
                    .get(&p.node_id)
                    .is_some_and(|old| old.node_key != p.node_key)
                {
                    sessions.remove(&p.node_id);
                }
                peers.insert(p.node_id, p);
            }
            for id in u.removed {
                peers.remove(&id);
                sessions.remove(&id);
            }
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.reindex();
        if let Some(r) = u.relays {
            *self.relays.write().unwrap_or_else(|p| p.into_inner()) = r;
        }
        if let Some((t, _)) = u.relay_token {
            *self.relay_token.write().unwrap_or_else(|p| p.into_inner()) = t;
        }
        if let Some(routes) = u.routes {
            self.set_routes(routes);
        }
    }

    fn reindex(&self) {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut by_ip = self.by_ip.write().unwrap_or_else(|p| p.into_inner());
        by_ip.clear();
        for p in peers.values() {
            if let Ok(ip) = p.virtual_ip.parse() {
                by_ip.insert(ip, p.node_id);
            }
        }
    }

    fn set_routes(&self, routes: Vec<Route>) {
        let me = *self.me.read().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(
            &mut *self.routes.write().unwrap_or_else(|p| p.into_inner()),
            routes.clone(),
        );
        if !self.opts.accept_routes {
            return;
        }
        let mine = |r: &Route| me.is_some_and(|m| m.id == r.node_id);
        // A subnet this node routes itself is its own network: never
        // through the TUN device, whoever else also advertises it.
        let own: Vec<&str> = routes
            .iter()
            .filter(|r| mine(r))
            .map(|r| r.cidr.as_str())
            .collect();
        let mine = |r: &Route| mine(r) || own.contains(&r.cidr.as_str());
        // Only real prefixes reach `ip route` (never "default" or another
        // of its words), written back in their canonical form.
        let wanted = |list: &[Route]| -> Vec<String> {
            let mut v: Vec<String> = list
                .iter()
                .filter(|r| r.enabled && !mine(r))
                .filter_map(|r| parse_cidr(&r.cidr))
                .map(|(net, p)| format!("{net}/{p}"))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let (before, now) = (wanted(&old), wanted(&routes));
        for cidr in before.iter().filter(|c| !now.contains(c)) {
            let _ = tun::route(&self.opts.tun, cidr, false);
        }
        for cidr in &now {
            if let Err(e) = tun::route(&self.opts.tun, cidr, true) {
                eprintln!("totoro-mesh: {e}");
            }
        }
    }

    /// Open the TUN device with this node's address and start reading it.
    fn bring_up(self: &Arc<Node>, me: Me) -> Result<(), String> {
        let tun = Tun::open(&self.opts.tun).map_err(|e| e.to_string())?;
        tun.configure(me.ip, me.prefix, self.opts.mtu)
            .map_err(|e| format!("{}: {e}", self.opts.tun))?;
        if self.opts.gateway {
            let subnet = format!(
                "{}/{}",
                Ipv4Addr::from(u32::from(me.ip) & (u32::MAX << (32 - u32::from(me.prefix)))),
                me.prefix
            );
            crate::gateway::enable(&self.opts.tun, &subnet)?;
            eprintln!(
                "totoro-mesh: gateway: forwarding {subnet} out of this host's interfaces with SNAT"
            );
        }
        let reader = tun.try_clone().map_err(|e| e.to_string())?;
        *self.tun.lock().unwrap_or_else(|p| p.into_inner()) = Some(tun);
        let was = self
            .me
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(me);
        eprintln!(
            "totoro-mesh: node {} is {}/{} on {}",
            me.id, me.ip, me.prefix, self.opts.tun
        );
        if was.is_none() {
            let n = Arc::clone(self);
            std::thread::Builder::new()
                .name("mesh-tun".into())
                .spawn(move || n.tun_loop(reader))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The peer that takes a packet for `dst`.
    fn peer_for(&self, dst: Ipv4Addr) -> Option<u32> {
        if let Some(id) = self
            .by_ip
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&dst)
        {
            return Some(*id);
        }
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        // Longest prefix; among those, the lowest priority of an online
        // gateway, then the highest weight; an offline gateway is passed
        // over (failover).
        routes
            .iter()
            .filter(|r| r.enabled)
            .filter_map(|r| parse_cidr(&r.cidr).map(|(net, p)| (r, net, p)))
            .filter(|(_, net, p)| contains(*net, *p, dst))
            .filter(|(r, _, _)| peers.get(&r.node_id).is_some_and(|p| p.online))
            .max_by(|a, b| {
                a.2.cmp(&b.2)
                    .then(b.0.priority.cmp(&a.0.priority))
                    .then(a.0.weight.cmp(&b.0.weight))
                    .then(b.0.node_id.cmp(&a.0.node_id))
            })
            .map(|(r, _, _)| r.node_id)
    }

    fn with_session<T>(&self, peer: u32, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let me = (*self.me.read().unwrap_or_else(|p| p.into_inner()))?;
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = sessions.get_mut(&peer) {
                return Some(f(s));
            }
        }
        // The peers lock is never taken under the sessions lock (updates
        // take them in the other order); a change between reading the keys
        // and storing the session (a rotation, a peer's new key) shows as
        // a new generation, and the session is not kept.
        let generation = self.generation.load(Ordering::SeqCst);
        let key = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .and_then(|p| decode_key(&p.node_key))?;
        let mut fresh = Session::new(&self.current_key(), me.id, peer, &key)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) != generation {
            return Some(f(&mut fresh));
        }
        Some(f(sessions.entry(peer).or_insert(fresh)))
    }

    /// Packets from the TUN device into the mesh: read until the device
    /// is empty (or a batch is full), each sealed into its WebSocket
    /// message in one buffer, written to the relay in one write.
    fn tun_loop(self: Arc<Node>, mut tun: Tun) {
        let mut buf = vec![0u8; 65536];
        let mut batch = Vec::with_capacity(BATCH + 65536);
        if let Err(e) = tun.set_nonblocking(true) {
            eprintln!("totoro-mesh: {}: {e}", self.opts.tun);
        }
        loop {
            batch.clear();
            let mut packets = 0u64;
            while batch.len() < BATCH {
                let n = match tun.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        eprintln!("totoro-mesh: reading {}: {e}", self.opts.tun);
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                };
                let packet = &buf[..n];
                let Some(peer) = tun::ipv4_dst(packet).and_then(|d| self.peer_for(d)) else {
                    self.counters.no_route.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let len = frame::HEADER_LEN + data::HEADER_LEN + n + data::TAG_LEN;
                let Ok(head) = frame::header(MsgType::Data, 0, len - frame::HEADER_LEN) else {
                    continue;
                };
                let start = batch.len();
                let body = crate::ws::begin_message(len, &mut batch);
                batch.extend_from_slice(&head);
                let ok = self
                    .with_session(peer, |s| s.seal(packet, &mut batch).is_ok())
                    .unwrap_or(false);
                if !ok || batch.len() != body + len {
                    batch.truncate(start);
                    self.counters.no_route.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                crate::ws::end_message(&mut batch, body);
                packets += 1;
            }
            if batch.is_empty() {
                let _ = tun.wait_readable();
                continue;
            }
            let mut out = self.relay_out.lock().unwrap_or_else(|p| p.into_inner());
            let sent = out.as_mut().map(|ws| ws.send_raw(&batch).is_ok());
            match sent {
                Some(true) => {
                    self.counters
                        .tx_packets
                        .fetch_add(packets, Ordering::Relaxed);
                }
                Some(false) => {
                    *out = None;
                    self.counters.no_relay.fetch_add(packets, Ordering::Relaxed);
                }
                None => {
                    self.counters.no_relay.fetch_add(packets, Ordering::Relaxed);
                }
            }
        }
    }

    /// The relay connection, reconnecting for ever.
    fn relay_loop(self: Arc<Node>) {
        let mut backoff = Backoff::new();
        // Relays are tried in turn from the preferred one.
        let mut next = 0usize;
        loop {
            let relays = self
                .relays
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let token = self
                .relay_token
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if relays.is_empty()
                || token.is_empty()
                || self.me.read().unwrap_or_else(|p| p.into_inner()).is_none()
            {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let first = self
                .opts
                .relay
                .as_deref()
                .and_then(|want| {
                    relays
                        .iter()
                        .position(|r| r.name == want || r.server_id.to_string() == want)
                })
                .unwrap_or(0);
            let relay = &relays[(first + next) % relays.len()];
            match self.relay_session(relay, &token) {
                Ok(()) => backoff.reset(),
                Err(why) => {
                    eprintln!(
                        "totoro-mesh: relay {} ({}): {why}",
                        relay.server_id, relay.url
                    );
                    next += 1;
                }
            }
            *self.relay_out.lock().unwrap_or_else(|p| p.into_inner()) = None;
            *self.relay_server.write().unwrap_or_else(|p| p.into_inner()) = None;
            backoff.wait();
        }
    }

    fn relay_session(&self, relay: &Relay, token: &str) -> Result<(), String> {
        let mut ws =
            WsConn::connect(&relay.url, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let req = AuthRequest {
            token: token.into(),
            ..AuthRequest::default()
        };
        let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
        ws.send(&seed_frame(MsgType::AuthRequest, &body))
            .map_err(|e| e.to_string())?;
        ws.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        match ws.recv().map_err(|e| e.to_string())? {
            Incoming::Binary(m) => {
                let f = frame::parse(&m, frame::MAX_PAYLOAD).map_err(|e| e.to_string())?;
                if f.kind != MsgType::AuthResponse {
                    let e: Result<ErrorBody, _> = control::decode(f.payload);
                    return Err(
                        e.map_or_else(|e| e.message, |e| format!("{} {}", e.code, e.message))
                    );
                }
            }
            Incoming::Closed => return Err("closed before AUTH_RESPONSE".into()),
        }
        // A relay that stops reading cannot hold the TUN loop for ever.
        ws.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        ws.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        *self.relay_out.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(ws.try_clone().map_err(|e| e.to_string())?);
        *self.relay_server.write().unwrap_or_else(|p| p.into_inner()) = Some(relay.server_id);
        eprintln!(
            "totoro-mesh: connected to relay {} ({})",
            relay.server_id, relay.url
        );
        // Two quiet periods in a row, a PING sent after each, and no PONG:
        // the relay is gone even if TCP has not said so.
        let mut quiet = 0;
        loop {
            let msg = match ws.recv() {
                Ok(Incoming::Binary(m)) => {
                    quiet = 0;
                    m
                }
                Ok(Incoming::Closed) => return Err("closed by the relay".into()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Quiet for 30 s: make sure the relay is still there.
                    quiet += 1;
                    if quiet > 2 {
                        return Err("the relay stopped answering".into());
                    }
                    let mut out = self.relay_out.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(w) = out.as_mut() {
                        w.send(&seed_frame(MsgType::Ping, b"relaypng"))
                            .map_err(|e| e.to_string())?;
                    }
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let mut msg = msg;
            let Ok(kind) = frame::parse(&msg, frame::MAX_PAYLOAD).map(|f| f.kind) else {
                continue;
            };
            let payload = &mut msg[frame::HEADER_LEN..];
            match kind {
                MsgType::Data => self.deliver(payload),
                MsgType::Error => {
                    if let Ok(e) = control::decode::<ErrorBody>(payload) {
                        if e.code < 3000 {
                            return Err(format!("{} {}", e.code, e.message));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A DATA payload from the relay: open it, check the packet came from
    /// what the sender may send for, write it to the TUN device.
    fn deliver(&self, payload: &mut [u8]) {
        let Ok(d) = data::Data::parse(payload) else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let src = d.src;
        // While a replaced key is kept, a packet that does not open with
        // the new one is tried with the old one (from a copy: a failed
        // open leaves its buffer unspecified).
        let spare = self
            .old
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            .then(|| payload.to_vec());
        if let Some(packet) = self.with_session(src, |s| s.open(payload).ok()).flatten() {
            return self.emit(src, packet);
        }
        match spare.and_then(|mut p| self.open_with_old(src, &mut p)) {
            Some(packet) => self.emit(src, &packet),
            None => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A packet `src` sealed: to the TUN device, if `src` may send it.
    fn emit(&self, src: u32, packet: &[u8]) {
        // A peer speaks for its own address, or for the subnets it routes.
        let allowed = tun::ipv4_src(packet).is_some_and(|ip| {
            let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
            peers
                .get(&src)
                .is_some_and(|p| p.virtual_ip.parse() == Ok(ip))
                || self
                    .routes
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|r| r.node_id == src)
                    .filter_map(|r| parse_cidr(&r.cidr))
                    .any(|(net, p)| contains(net, p, ip))
        });
        if !allowed {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut tun = self.tun.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tun.as_mut() {
            if t.send(packet).is_ok() {
                self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `status.json` in the state directory.
    fn write_status(&self) {
        let me = *self.me.read().unwrap_or_else(|p| p.into_inner());
        let peers: Vec<serde_json::Value> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| {
                serde_json::json!({
                    "node_id": p.node_id, "name": p.name, "virtual_ip": p.virtual_ip, "online": p.online,
                })
            })
            .collect();
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let c = &self.counters;
        let v = serde_json::json!({
            "node_id": me.map(|m| m.id),
            "virtual_ip": me.map(|m| m.ip.to_string()),
            "tun": self.opts.tun,
            "relay": *self.relay_server.read().unwrap_or_else(|p| p.into_inner()),
            "peers": peers,
            "routes": routes,
            "counters": {
                "tx_packets": c.tx_packets.load(Ordering::Relaxed),
                "rx_packets": c.rx_packets.load(Ordering::Relaxed),
                "no_route": c.no_route.load(Ordering::Relaxed),
                "rejected": c.rejected.load(Ordering::Relaxed),
                "no_relay": c.no_relay.load(Ordering::Relaxed),
                "key_rotations": c.key_rotations.load(Ordering::Relaxed),
            },
        });
        let path = self.opts.state_dir.join("status.json");
        let _ = crate::files::private_write(&path, v.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_what_they_should() {
        let (net, p) = parse_cidr("192.168.50.0/24").unwrap();
        assert!(contains(net, p, Ipv4Addr::new(192, 168, 50, 7)));
        assert!(!contains(net, p, Ipv4Addr::new(192, 168, 51, 7)));
        assert!(contains(
            Ipv4Addr::UNSPECIFIED,
            0,
            Ipv4Addr::new(8, 8, 8, 8)
        ));
        assert!(parse_cidr("1.2.3.4/33").is_none());
    }
}
