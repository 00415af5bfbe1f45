//! `slowpath relay`: seed 003's standalone relay (§12.2) — a fastpath
//! serving `/ws/data` and `/ws/mesh`, governed by a controller it reaches
//! over `/ws/server` with its server token. It holds no database and no
//! signing key: what its fastpath enforces (the relay id, the keys that
//! sign relay and link tokens, the authorized nodes, the blacklist, the
//! other relays and where the nodes are) comes from the controller and is
//! published into the local policy directory as `up` publishes it; the
//! nodes connected to it (the fastpath's event rings) go back to the
//! controller as SERVER_NODE_LOC. While the controller is away, the last
//! table stays in force.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use proto::events::{Event, EventRecord};
use proto::mesh::control::{
    AuthResponse, Blacklist, ErrorBody, NodeLocations, ServerConfig, ServerNodes, ServerRegister,
};
use proto::mesh::{frame, MsgType};
use proto::policy::{MeshPolicy, NodePolicy, PolicySpec, PortSet, ProxyTypes, TicketKey};
use shm::{InstanceDir, MappedRing};
use slowpath::store::private_files;
use tokio::sync::watch;

use super::supervisor::{self, Fastpath};
use crate::cli::RelayArgs;

/// What the controller said in one session, as the table needs it.
#[derive(Default)]
struct Told {
    config: Option<ServerConfig>,
    nodes: BTreeSet<(u32, u32)>,
    revoked: BTreeMap<String, u64>,
    locations: BTreeSet<(u32, u32)>,
    /// The first (full) blacklist and location messages came: the
    /// controller sends CONFIG, the blacklist, the nodes, then the
    /// locations, so the whole picture is in once the locations' pieces
    /// have come ([`Told::complete`]).
    blacklist_full: bool,
    locations_full: bool,
}

impl Told {
    /// Whether a table made from this replaces the one in force: not
    /// before the session's first whole picture (a partial one would cut
    /// off every node, or let revoked tokens in).
    fn complete(&self) -> bool {
        self.config.is_some() && self.blacklist_full && self.locations_full
    }
}

/// Pairs sent in one SERVER_NODE_LOC, as the controller sends them.
const PER_FRAME: usize = 1000;

/// What changed since `before` (None: everything, `full`), in pieces.
fn location_reports(
    me: u32,
    before: Option<&BTreeSet<u32>>,
    here: &BTreeSet<u32>,
) -> Vec<NodeLocations> {
    let (added, removed): (Vec<u32>, Vec<u32>) = match before {
        None => (here.iter().copied().collect(), Vec::new()),
        Some(b) => (
            here.difference(b).copied().collect(),
            b.difference(here).copied().collect(),
        ),
    };
    let pair = |n: &u32| (*n, me);
    let (added, removed): (Vec<_>, Vec<_>) = (
        added.iter().map(pair).collect(),
        removed.iter().map(pair).collect(),
    );
    proto::mesh::control::pieces(&added, &removed, PER_FRAME, before.is_none())
        .into_iter()
        .map(|(full, locations, removed)| NodeLocations {
            full,
            locations,
            removed,
        })
        .collect()
}

impl Told {
    /// The table for this relay, once CONFIG came; `hs256` is the
    /// controller's shared secret when it signs with one.
    fn spec(&self, hs256: &str) -> Option<PolicySpec> {
        let c = self.config.as_ref()?;
        let keys = c
            .token_keys
            .iter()
            .filter_map(|(kid, b64)| {
                let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                Some(TicketKey {
                    kid: kid.clone(),
                    public_key: raw.try_into().ok()?,
                })
            })
            .collect();
        let me = c.server_id;
        Some(PolicySpec {
            edge: Default::default(),
            generation: 0,
            created_ms: 0,
            node: NodePolicy {
                node_id: format!("relay-{me}"),
                region: String::new(),
                public: false,
                port_pool: PortSet::default(),
                proxy_types: ProxyTypes::NONE,
                max_proxies_per_session: 0,
                sub_domain_host: String::new(),
            },
            keys,
            invites: Vec::new(),
            tenants: Vec::new(),
            mesh: MeshPolicy {
                relay_id: me,
                nodes: self.nodes.iter().copied().collect(),
                revoked: self.revoked.keys().cloned().collect(),
                peers: slowpath::policy::publish::peers(me, &c.relays, &c.links),
                locations: self
                    .locations
                    .iter()
                    .copied()
                    .filter(|&(_, s)| s != me)
                    .collect(),
                hs256_secret: hs256.to_owned(),
            },
        })
    }
}

/// Writes tables into the policy directory: sealed, generations counting
/// up from what is there.
struct TableOut {
    shm: Arc<InstanceDir>,
    generation: u64,
    last: Option<Vec<u8>>,
}

impl TableOut {
    fn write(&mut self, spec: &PolicySpec) -> Result<()> {
        let bytes = spec.encode();
        if self.last.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        self.generation = self
            .generation
            .max(self.shm.table_generation().unwrap_or(0))
            + 1;
        let mut sealed = bytes.clone();
        let now = slowpath::clock::now_ms();
        proto::policy::table::stamp(
            &mut sealed,
            self.generation,
            u64::try_from(now).unwrap_or(0),
        );
        self.shm.key.seal_table(&mut sealed);
        self.shm
            .dir
            .write_replacing(shm::TABLE_FILE, &sealed)
            .context("cannot write the policy table")?;
        tracing::info!(
            generation = self.generation,
            nodes = spec.mesh.nodes.len(),
            peers = spec.mesh.peers.len(),
            locations = spec.mesh.locations.len(),
            "relay policy table published"
        );
        self.last = Some(bytes);
        Ok(())
    }
}

/// The fastpath's event rings, read for `mesh.node.*`.
struct Rings {
    shm: Arc<InstanceDir>,
    /// Each ring, where it was read to, and the nodes its worker reported
    /// connected (a node's connection lives on one worker: its network's
    /// home). A ring replaced (the fastpath restarted) forgets its nodes.
    mapped: HashMap<String, (MappedRing, u64, BTreeSet<u32>)>,
}

impl Rings {
    /// Read what is new.
    fn poll(&mut self) {
        let names = self.shm.dir.names().unwrap_or_default();
        for name in names {
            if shm::ring_worker(&name).is_none() {
                continue;
            }
            let Ok(identity) = self.shm.dir.identity(&name) else {
                continue;
            };
            if self.mapped.get(&name).map(|m| m.0.identity()) != Some(identity) {
                match MappedRing::attach(&self.shm.dir, &name) {
                    Ok(r) => {
                        let tail = r.tail();
                        self.mapped.insert(name.clone(), (r, tail, BTreeSet::new()));
                    }
                    Err(_) => continue,
                }
            }
            let Some((ring, read_to, here)) = self.mapped.get_mut(&name) else {
                continue;
            };
            let mut buf = Vec::new();
            while ring.peek(read_to, &mut buf) {
                let Ok(plain) = self.shm.key.open_record(&buf) else {
                    continue;
                };
                if let Ok(EventRecord {
                    event: Event::MeshNode { node_id, up, .. },
                    ..
                }) = EventRecord::decode(plain)
                {
                    if up {
                        here.insert(node_id);
                    } else {
                        here.remove(&node_id);
                    }
                }
            }
            ring.release(*read_to);
        }
    }

    /// The nodes connected here now.
    fn here(&self) -> BTreeSet<u32> {
        self.mapped
            .values()
            .flat_map(|m| m.2.iter().copied())
            .collect()
    }
}

/// `slowpath relay`.
pub async fn run(args: RelayArgs) -> Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("--token-file {}", p.display()))?
            .trim()
            .to_owned(),
        (None, None) => {
            bail!("a server token is needed: --token, TOTORO_SERVER_TOKEN or --token-file")
        }
    };
    let controller = server_url(&args.controller)?;
    if let Some(ca) = &args.ca_file {
        mesh::tls::set_ca_file(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
    }
    let hs256 = match &args.jwt_secret_file {
        Some(p) => slowpath::domain::tickets::read_mesh_secret(p)?,
        None => String::new(),
    };
    private_files::ensure_dir(&args.data_dir, "--data-dir")?;
    let shm_dir = args.data_dir.join("policy");
    let shm = Arc::new(
        InstanceDir::open(&shm_dir)
            .with_context(|| format!("the relay's policy directory {}", shm_dir.display()))?,
    );
    let _lock = shm
        .dir
        .lock(
            "slowpath.lock",
            &format!("relay pid {}", std::process::id()),
        )
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", shm_dir.display()))?;
    let fp = fastpath(&args, &shm, &shm_dir)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let child = tokio::spawn(supervisor::run(Arc::new(fp), None, "relay".into(), stop_rx));
    println!(
        "Totoro relay: ws://0.0.0.0:{}/ws/data and /ws/mesh; controller {controller}; policy {}",
        args.port,
        shm_dir.display()
    );
    let control = {
        let shm = Arc::clone(&shm);
        tokio::task::spawn_blocking(move || control_loop(&controller, &token, &hs256, shm))
    };
    tokio::select! {
        _ = super::shutdown_signal() => {}
        r = control => {
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "relay control loop ended");
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = child.await;
    Ok(())
}

/// `ws[s]://host:port/ws/server` from the controller's base URL.
fn server_url(base: &str) -> Result<String> {
    let base = base.trim_end_matches('/');
    let (rest, tls) = if let Some(r) = base
        .strip_prefix("ws://")
        .or_else(|| base.strip_prefix("http://"))
    {
        (r, false)
    } else if let Some(r) = base
        .strip_prefix("wss://")
        .or_else(|| base.strip_prefix("https://"))
    {
        (r, true)
    } else {
        bail!("--controller {base:?}: give ws://HOST:PORT or wss://HOST[:PORT]");
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        bail!("--controller {base:?} names no host");
    }
    Ok(format!(
        "{}://{host}/ws/server",
        if tls { "wss" } else { "ws" }
    ))
}

fn fastpath(args: &RelayArgs, shm: &Arc<InstanceDir>, shm_dir: &Path) -> Result<Fastpath> {
    let config = args.data_dir.join("fastpath.toml");
    let policy_dir = shm_dir
        .to_str()
        .context("the data directory is not UTF-8")?;
    // The frp port takes no logins: the table has no invites and nobody
    // knows this token.
    let token = slowpath::credentials::random_hex(16);
    let mut c = slowpath::frpc_config::FastpathFile {
        node_id: "relay",
        bind_port: args.frp_port,
        token: &token,
        allow_ports: &PortSet::default(),
        policy_dir,
        vhost_http_port: 0,
        vhost_https_port: 0,
        sub_domain_host: "",
        mesh_relay_port: args.port,
    }
    .config();
    // Seed 003 §12.2's relay.tls: nodes reach it as wss:// with this
    // certificate (without it, a self-signed one is made at every start).
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            c.transport.tls.cert_file = cert.to_str().context("--tls-cert: not UTF-8")?.into();
            c.transport.tls.key_file = key.to_str().context("--tls-key: not UTF-8")?.into();
        }
        (None, None) => {}
        _ => bail!("--tls-cert and --tls-key go together"),
    }
    let text = format!(
        "# Written by `slowpath relay`; it is rewritten at every start.\n{}",
        c.to_toml().context("cannot write the fastpath config")?
    );
    private_files::write(&config, text.as_bytes())?;
    let (bin, prefix): (PathBuf, Vec<String>) = match &args.fastpath_bin {
        Some(b) => (b.clone(), Vec::new()),
        None if !cfg!(feature = "embedded-fastpath") => {
            bail!("this slowpath is built without its own fastpath: name one with --fastpath-bin")
        }
        None => (
            std::env::current_exe().context("cannot find this executable")?,
            vec!["fastpath".into()],
        ),
    };
    Ok(Fastpath {
        bin,
        prefix,
        config,
        shm: Arc::clone(shm),
    })
}

/// The channel's stream: TCP, or the plain end of a TLS bridge (wss://).
enum Stream {
    Tcp(TcpStream),
    Tls(std::os::unix::net::UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.set_read_timeout(t),
        }
    }
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl std::io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Ws = tungstenite::WebSocket<Stream>;

/// Connects to the controller and serves the channel, again and again.
fn control_loop(url: &str, token: &str, hs256: &str, shm: Arc<InstanceDir>) -> Result<()> {
    let mut out = TableOut {
        shm: Arc::clone(&shm),
        generation: 0,
        last: None,
    };
    let mut rings = Rings {
        shm,
        mapped: HashMap::new(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match session(url, token, hs256, &mut out, &mut rings) {
            Ok(()) => tracing::warn!("controller closed the relay channel"),
            Err(e) => tracing::warn!(error = %e, "relay channel to the controller"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        // The rings are read while waiting too (a full ring drops events).
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            rings.poll();
            std::thread::sleep(Duration::from_millis(200));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn send(ws: &mut Ws, kind: MsgType, payload: &[u8]) -> Result<()> {
    let mut f = Vec::with_capacity(frame::HEADER_LEN + payload.len());
    frame::encode(kind, 0, payload, &mut f).map_err(|e| anyhow::anyhow!("{e}"))?;
    ws.send(tungstenite::Message::binary(f))?;
    Ok(())
}

fn connect(url: &str) -> Result<Ws> {
    let u = mesh::ws::WsUrl::parse(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let timeout = Duration::from_secs(10);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&u.authority)
        .with_context(|| format!("resolve {}", u.authority))?
        .next()
        .with_context(|| format!("{}: no address", u.authority))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connect {}", u.authority))?;
    tcp.set_nodelay(true)?;
    let stream = if u.tls {
        Stream::Tls(mesh::tls::connect(tcp, u.host(), timeout)?)
    } else {
        Stream::Tcp(tcp)
    };
    stream.set_read_timeout(Some(timeout))?;
    // TLS, if any, is done: the handshake is plain WebSocket either way.
    let plain = format!("ws://{}{}", u.authority, u.path);
    let (ws, _) =
        tungstenite::client(plain, stream).map_err(|e| anyhow::anyhow!("upgrade: {e}"))?;
    Ok(ws)
}

/// One channel's life: register, then apply what comes and report the
/// nodes connected here.
fn session(
    url: &str,
    token: &str,
    hs256: &str,
    out: &mut TableOut,
    rings: &mut Rings,
) -> Result<()> {
    let mut ws = connect(url)?;
    let reg = ServerRegister {
        token: token.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    send(&mut ws, MsgType::ServerRegister, &serde_json::to_vec(&reg)?)?;
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))?;
    // A new session starts from nothing; the table in force stays until
    // this session's picture is whole.
    let mut told = Told::default();
    let mut registered = false;
    // What the controller was told is here.
    let mut reported: Option<BTreeSet<u32>> = None;
    let mut last_ping = Instant::now();
    // Changes not yet in a table, since when.
    let mut dirty: Option<Instant> = None;
    // Whether this session wrote a table yet: the first waits for the
    // channel to go quiet (the first burst is the whole picture, in pieces).
    let mut published = false;
    loop {
        let quiet = match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => {
                if apply(&mut told, &mut registered, &b)? {
                    dirty.get_or_insert_with(Instant::now);
                }
                false
            }
            Ok(tungstenite::Message::Close(_)) => return Ok(()),
            Ok(_) => false,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(e) => return Err(e.into()),
        };
        // A burst of pieces makes one table: written when the channel goes
        // quiet (or after a second of steady changes).
        if let Some(since) = dirty {
            let steady = published && since.elapsed() > Duration::from_secs(1);
            if told.complete() && (quiet || steady) {
                if let Some(spec) = told.spec(hs256) {
                    out.write(&spec)?;
                }
                dirty = None;
                published = true;
            }
        }
        // The rings are read all the time (a full ring drops events).
        rings.poll();
        // Only a relay reports nodes (a STUN-only server record may not).
        let Some(me) = told
            .config
            .as_ref()
            .filter(|c| registered && c.relays.iter().any(|r| r.server_id == c.server_id))
            .map(|c| c.server_id)
        else {
            continue;
        };
        let here = rings.here();
        if reported.as_ref() != Some(&here) {
            for loc in location_reports(me, reported.as_ref(), &here) {
                send(&mut ws, MsgType::ServerNodeLoc, &serde_json::to_vec(&loc)?)?;
            }
            reported = Some(here);
        }
        if last_ping.elapsed() > Duration::from_secs(15) {
            send(&mut ws, MsgType::Ping, &[0; 8])?;
            last_ping = Instant::now();
        }
    }
}

/// One message from the controller; whether the table changes.
fn apply(told: &mut Told, registered: &mut bool, msg: &[u8]) -> Result<bool> {
    let f = frame::parse(msg, frame::MAX_PAYLOAD).map_err(|e| anyhow::anyhow!("{e}"))?;
    let decode_err = |e: ErrorBody| anyhow::anyhow!("{} {}", e.code, e.message);
    match f.kind {
        MsgType::AuthResponse => {
            let r: AuthResponse = proto::mesh::control::decode(f.payload).map_err(decode_err)?;
            if !r.ok {
                bail!("the controller refused this relay");
            }
            *registered = true;
            Ok(false)
        }
        MsgType::Error => {
            let e: ErrorBody = proto::mesh::control::decode(f.payload).map_err(decode_err)?;
            bail!("the controller says {} {}", e.code, e.message)
        }
        MsgType::Config => {
            let c: ServerConfig = proto::mesh::control::decode(f.payload).map_err(decode_err)?;
            told.config = Some(c);
            Ok(true)
        }
        MsgType::ConfigUpdate => {
            let n: ServerNodes = proto::mesh::control::decode(f.payload).map_err(decode_err)?;
            if n.full {
                told.nodes.clear();
            }
            for p in n.removed {
                told.nodes.remove(&p);
            }
            told.nodes.extend(n.nodes);
            Ok(true)
        }
        MsgType::ServerBlacklist => {
            let b: Blacklist = proto::mesh::control::decode(f.payload).map_err(decode_err)?;
            if b.full {
                told.revoked.clear();
                told.blacklist_full = true;
            }
            told.revoked.extend(b.entries);
            Ok(true)
        }
        MsgType::ServerNodeLoc => {
            let l: NodeLocations = proto::mesh::control::decode(f.payload).map_err(decode_err)?;
            if l.full {
                told.locations.clear();
                told.locations_full = true;
            }
            for p in l.removed {
                told.locations.remove(&p);
            }
            told.locations.extend(l.locations);
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_reports_come_in_pieces_and_the_first_one_says_full() {
        let here: BTreeSet<u32> = (1..=2500).collect();
        let first = location_reports(7, None, &here);
        assert_eq!(first.len(), 3);
        assert!(first[0].full && !first[1].full);
        assert_eq!(first.iter().map(|l| l.locations.len()).sum::<usize>(), 2500);
        assert!(first
            .iter()
            .all(|l| l.locations.iter().all(|&(_, s)| s == 7)));
        // Every piece fits in a frame.
        for l in &first {
            assert!(serde_json::to_vec(l).unwrap().len() < frame::MAX_PAYLOAD);
        }
        let none = location_reports(7, None, &BTreeSet::new());
        assert_eq!(none.len(), 1);
        assert!(none[0].full && none[0].locations.is_empty());
        let now: BTreeSet<u32> = (2..=2501).collect();
        let diff = location_reports(7, Some(&here), &now);
        assert_eq!(diff.len(), 2);
        assert_eq!(diff[0].locations, vec![(2501, 7)]);
        assert_eq!(diff[1].removed, vec![(1, 7)]);
        assert!(diff.iter().all(|l| !l.full));
    }

    #[test]
    fn no_table_before_the_whole_picture() {
        let mut t = Told::default();
        let mut registered = false;
        let msg = |kind: MsgType, body: serde_json::Value| {
            let mut f = Vec::new();
            frame::encode(kind, 0, &serde_json::to_vec(&body).unwrap(), &mut f).unwrap();
            f
        };
        apply(
            &mut t,
            &mut registered,
            &msg(MsgType::AuthResponse, serde_json::json!({"ok": true})),
        )
        .unwrap();
        assert!(registered);
        apply(
            &mut t,
            &mut registered,
            &msg(
                MsgType::Config,
                serde_json::json!({"server_id": 2, "name": "r2", "relays": []}),
            ),
        )
        .unwrap();
        assert!(!t.complete());
        apply(
            &mut t,
            &mut registered,
            &msg(
                MsgType::ServerBlacklist,
                serde_json::json!({"full": true, "entries": []}),
            ),
        )
        .unwrap();
        assert!(!t.complete(), "the nodes and locations are still to come");
        apply(
            &mut t,
            &mut registered,
            &msg(MsgType::ServerNodeLoc, serde_json::json!({"full": true})),
        )
        .unwrap();
        assert!(t.complete());
        assert_eq!(t.spec("").unwrap().mesh.relay_id, 2);
    }
}
