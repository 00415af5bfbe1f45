//! Relay-to-relay links (seed 003 §2.4.2, `/ws/mesh`): how a DATA frame
//! for a node connected to another relay gets there.
//!
//! - **Who dials.** The table lists the other relays ([`PolicyTable::mesh_peers`]);
//!   for each one with a higher id it holds a link token (from the
//!   controller, naming this pair), and this relay dials it. One link per
//!   pair; a newer link from the same relay replaces the older.
//! - **Where a link lives.** On worker `relay_id % workers`
//!   ([`link_worker`]), dialed there or moved there after authentication,
//!   as a node's connection moves to its network's home worker.
//! - **Crossing workers.** A node's frames for a link on another worker,
//!   and a link's frames for nodes on another worker, are gathered per
//!   destination while one read is handled and sent on as one inbox message
//!   ([`flush`]): one channel send per read, not per frame.
//! - **On the wire.** A WebSocket message on a link carries one or more
//!   whole seed frames back to back (up to [`LINK_BATCH`]). The dialer
//!   masks with a zero key (RFC 6455 asks for a mask from clients; it
//!   guards browsers' frames against caches, and a relay is no browser).
//!   PING every 30 s; a link silent for 90 s is closed; the dialer
//!   reconnects with backoff (1 s doubling to 30 s). A relay whose URL is
//!   `wss://` is dialed over TLS 1.3 without a certificate check
//!   ([`crate::transport::tls::link_client_config`]): the token is kept
//!   from passive eyes, not from an active man in the middle.
//! - **Trust.** A link token is checked like a relay token (signature by a
//!   table key, expiry, addressed to this relay, not revoked) and its
//!   sender must be a relay of the table. A relay still cannot send DATA
//!   between two networks, nor to a node that is not connected here.
//!
//! [`PolicyTable::mesh_peers`]: proto::policy::PolicyTable::mesh_peers

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use proto::mesh::control::{self, AuthRequest, AuthResponse, ErrorBody};
use proto::mesh::token;
use proto::mesh::{data, frame, ErrorCode, MsgType};
use proto::ws;

use super::frames::FrameReader;
use super::nodes::{home_worker, link_worker, ws_binary, Link, LinkAuth, MeshNodes};
use super::relay::{first_message, now_s, presented, write_loop};
use crate::policy::LoadedTable;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::conn::{Conn, ConnReader};
use crate::transport::handoff::WorkerMsg;
use crate::transport::tls::TlsStream;

/// The path relays link on.
pub const MESH_PATH: &str = "/ws/mesh";

/// Largest WebSocket message on a link.
const LINK_MAX_MESSAGE: usize = 1 << 20;
/// Bytes of frames gathered for one destination before they go.
pub const LINK_BATCH: usize = 256 * 1024;
/// How often a link is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A link that says nothing for this long is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(90);
/// Connecting, upgrading and authenticating a dialed link.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two dials of the same relay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Check the link token of an AUTH_REQUEST on `/ws/mesh`.
pub fn authenticate(ctx: &WorkerCtx, msg: &[u8]) -> Result<LinkAuth, ErrorBody> {
    let p = presented(ctx, msg)?;
    let t = p.table.get();
    let claims = token::check_link_token(&p.token, &p.trust(), p.relay_id, now_s(), |j| {
        t.mesh_revoked(j)
    })
    .map_err(|e| ErrorBody::new(e.code(), &e.to_string()))?;
    if t.mesh_peer(claims.from).is_none() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidToken,
            &format!("relay {} is not a relay of this mesh", claims.from),
        ));
    }
    Ok(LinkAuth {
        relay_id: claims.from,
        jti: claims.jti,
        dialer: false,
    })
}

/// The table in force, taken once for all the frames of one read rather
/// than per frame (each take is a lock and a count shared by all workers).
#[derive(Default)]
pub struct TableOnce(Option<Option<std::sync::Arc<LoadedTable>>>);

impl TableOnce {
    /// The table, taken on first use.
    pub fn get(&mut self, ctx: &WorkerCtx) -> Option<&LoadedTable> {
        self.0
            .get_or_insert_with(|| ctx.shared.policy.current())
            .as_deref()
    }
}

/// A node's DATA frame (`msg`, whole) for `dst`, which is not connected
/// to this worker: gathered for the relay that holds it, if another does
/// and `dst` is in the sender's network. False: no other relay holds it.
pub fn forward(
    ctx: &WorkerCtx,
    nodes: &MeshNodes,
    table: &mut TableOnce,
    network_id: u32,
    dst: u32,
    msg: &[u8],
) -> bool {
    let Some(table) = table.get(ctx) else {
        return false;
    };
    let t = table.get();
    if t.mesh_node_network(dst) != Some(network_id) {
        return false;
    }
    let Some(relay) = t.mesh_location(dst) else {
        return false;
    };
    let worker = link_worker(relay, ctx.shared.inboxes.len());
    WorkerStats::bump(&ctx.stats().mesh_link_frames_out, 1);
    // A batch never outgrows the queues it goes into.
    let most = LINK_BATCH.min(ctx.shared.config.fastpath.mesh_queue_bytes);
    if nodes.gather(worker, relay, msg) >= most {
        flush(ctx, nodes);
    }
    true
}

/// Bytes a link's outbox holds, and what may be on its way to one worker
/// from all the others: four node outboxes.
fn link_cap(ctx: &WorkerCtx) -> usize {
    ctx.shared
        .config
        .fastpath
        .mesh_queue_bytes
        .saturating_mul(4)
}

/// Send on what was gathered: to this worker's links and nodes directly,
/// to other workers as one message per destination.
pub fn flush(ctx: &WorkerCtx, nodes: &MeshNodes) {
    // What may be on its way to one worker, from all of them.
    let cap = link_cap(ctx);
    for b in nodes.take_batches() {
        if b.worker == ctx.id {
            deliver(ctx, nodes, b.relay, b.frames);
            continue;
        }
        let len = b.frames.len();
        let inflight = &ctx.shared.mesh_crossing[b.worker];
        if inflight.fetch_add(len, Ordering::Relaxed) + len > cap {
            // That worker is behind: drop, as a full outbox does.
            inflight.fetch_sub(len, Ordering::Relaxed);
            WorkerStats::bump(&ctx.stats().mesh_dropped, 1);
            continue;
        }
        let msg = WorkerMsg::MeshFrames {
            relay: b.relay,
            frames: b.frames,
        };
        match ctx.shared.inboxes[b.worker].send(msg) {
            Ok(()) => WorkerStats::bump(&ctx.stats().mesh_crossings, 1),
            Err(_) => {
                inflight.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }
}

/// Frames gathered for this worker: onto the link to `relay` as one
/// message, or (`relay` = 0) each to its node.
pub fn deliver(ctx: &WorkerCtx, nodes: &MeshNodes, relay: u32, frames: Vec<u8>) {
    let stats = ctx.stats();
    if relay != 0 {
        match nodes.link(relay) {
            Some(link) if link.has_room(frames.len() + 14) => {
                if !link.push(message(&link, &frames)) {
                    WorkerStats::bump(&stats.mesh_dropped, 1);
                }
            }
            _ => WorkerStats::bump(&stats.mesh_dropped, 1),
        }
        return;
    }
    let mut rest = &frames[..];
    while let Ok(Some((f, more))) = frame::split(rest) {
        rest = more;
        let dst = data::peek_dst(&f[frame::HEADER_LEN..]).unwrap_or(0);
        match nodes.get(dst) {
            Some(node) if node.has_room(f.len() + 10) && node.push(ws_binary(f)) => {
                WorkerStats::bump(&stats.mesh_frames_out, 1);
                WorkerStats::bump(&stats.mesh_bytes, f.len() as u64);
            }
            Some(_) => WorkerStats::bump(&stats.mesh_dropped, 1),
            None => WorkerStats::bump(&stats.mesh_unroutable, 1),
        }
    }
}

/// After a new table or on the tick: links to relays that left the table
/// (or whose token was revoked) are closed, and the relays this worker
/// dials are dialed.
pub fn recheck(ctx: &Rc<WorkerCtx>, nodes: &Rc<MeshNodes>, table: Option<&LoadedTable>, now: u64) {
    let _ = now;
    let Some(t) = table.map(LoadedTable::get) else {
        return;
    };
    for link in nodes.all_links() {
        let gone = t.mesh_relay_id() == 0 || t.mesh_peer(link.auth.relay_id).is_none();
        let revoked = !link.auth.jti.is_empty() && t.mesh_revoked(&link.auth.jti);
        if gone || revoked {
            let body = if revoked {
                ErrorBody::new(ErrorCode::TokenRevoked, "the link token was revoked")
            } else {
                ErrorBody::new(ErrorCode::InvalidToken, "no longer a relay of this mesh")
            };
            tracing::info!(relay = link.auth.relay_id, reason = %body.message, "mesh link cut off");
            nodes.remove_link(&link);
            link.close(Some(&body), "cut off");
        }
    }
    if t.mesh_relay_id() == 0 {
        return;
    }
    let workers = ctx.shared.inboxes.len();
    for peer in t.mesh_peers() {
        if peer.link_token.is_empty() || link_worker(peer.relay_id, workers) != ctx.id {
            continue;
        }
        if nodes.start_dialing(peer.relay_id) {
            monoio::spawn(dial_loop(ctx.clone(), nodes.clone(), peer.relay_id));
        }
    }
}

/// Dial relay `relay_id` and keep a link to it while the table lists it
/// with a link token.
async fn dial_loop(ctx: Rc<WorkerCtx>, nodes: Rc<MeshNodes>, relay_id: u32) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if ctx.shared.is_stopping() {
            break;
        }
        let Some(table) = ctx.shared.policy.current() else {
            break;
        };
        let Some((url, token)) = table
            .get()
            .mesh_peer(relay_id)
            .filter(|p| !p.link_token.is_empty())
            .map(|p| (p.url.to_owned(), p.link_token.to_owned()))
        else {
            break;
        };
        drop(table);
        let started = Instant::now();
        match monoio::time::timeout(DIAL_TIMEOUT, dial(&url, &token)).await {
            Ok(Ok((conn, pending, peer))) => {
                let auth = LinkAuth {
                    relay_id,
                    jti: String::new(),
                    dialer: true,
                };
                run(&ctx, &nodes, conn, pending, auth, peer).await;
            }
            Ok(Err(why)) => {
                tracing::warn!(relay = relay_id, %url, reason = %why, "mesh link: dial failed")
            }
            Err(_) => tracing::warn!(relay = relay_id, %url, "mesh link: dial timed out"),
        }
        // A link that held a while starts the backoff again.
        if started.elapsed() > BACKOFF_MAX {
            backoff = Duration::from_secs(1);
        }
        monoio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    nodes.stop_dialing(relay_id);
}

/// `host:port` of a relay's `ws://` or `wss://` URL (a `wss://` relay is
/// dialed with TLS, see [`crate::transport::tls::link_client_config`]).
fn authority(url: &str) -> Result<String, String> {
    let (rest, port) = match url.strip_prefix("ws://") {
        Some(r) => (r, 80),
        None => (
            url.strip_prefix("wss://")
                .ok_or_else(|| format!("{url:?} is not a ws:// or wss:// URL"))?,
            443,
        ),
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host.ends_with(']');
    Ok(if has_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    })
}

fn random16() -> [u8; 16] {
    let mut k = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k);
    k
}

/// A relay's host name resolved on a thread of its own: the resolver
/// blocks, and a worker must not (the dial's timeout still bounds this).
async fn resolve(host: &str) -> Result<SocketAddr, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("mesh-resolve".into())
        .spawn(move || {
            let _ = tx.send(name.to_socket_addrs().map(|mut a| a.next()));
        })
        .map_err(|e| format!("{host}: {e}"))?;
    loop {
        match rx.try_recv() {
            Ok(Ok(Some(a))) => return Ok(a),
            Ok(Ok(None)) => return Err(format!("{host}: no address")),
            Ok(Err(e)) => return Err(format!("{host}: {e}")),
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                monoio::time::sleep(Duration::from_millis(20)).await
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(format!("{host}: the resolver failed"))
            }
        }
    }
}

/// Connect to a relay's `/ws/mesh`, upgrade, authenticate with `token`.
async fn dial(url: &str, token: &str) -> Result<(Conn, Vec<u8>, SocketAddr), String> {
    let host = authority(url)?;
    let host = host.as_str();
    let addr = match host.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => resolve(host).await?,
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut conn = if url.starts_with("wss://") {
        let name = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| format!("{name}: {e}"))?;
        let tls = TlsStream::connect(stream, crate::transport::tls::link_client_config(), name)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        Conn::tls(tls)
    } else {
        Conn::tcp(stream)
    };
    let (req, key) = ws::upgrade_request(host, MESH_PATH, random16());
    let (r, _) = conn.write_all(req).await;
    r.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        if let Some(n) = ws::check_upgrade_answer(&buf, &key)? {
            break n;
        }
        buf.reserve(4096);
        let (r, b) = conn.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("closed during the upgrade".into()),
            Err(e) => return Err(format!("read: {e}")),
            Ok(_) => {}
        }
    };
    buf.drain(..head);
    let req = AuthRequest {
        token: token.to_owned(),
        ..AuthRequest::default()
    };
    let mut f = Vec::new();
    let payload = serde_json::to_vec(&req).unwrap_or_default();
    frame::encode(MsgType::AuthRequest, 0, &payload, &mut f).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(f.len() + 14);
    ws::encode_head(ws::Opcode::Binary, true, f.len(), Some([0; 4]), &mut out);
    out.extend_from_slice(&f);
    let (r, _) = conn.write_all(out).await;
    r.map_err(|e| format!("write: {e}"))?;
    let (msg, rest) = loop {
        if let Some(m) = first_message(&buf, false)? {
            break m;
        }
        if buf.len() > 2 * LINK_MAX_MESSAGE {
            return Err("no AUTH_RESPONSE".into());
        }
        buf.reserve(4096);
        let (r, b) = conn.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("closed before AUTH_RESPONSE".into()),
            Err(e) => return Err(format!("read: {e}")),
            Ok(_) => {}
        }
    };
    let f = frame::parse(&msg, frame::MAX_PAYLOAD).map_err(|e| e.to_string())?;
    match f.kind {
        MsgType::AuthResponse => {
            let resp: AuthResponse = control::decode(f.payload).map_err(|e| e.message)?;
            if !resp.ok {
                return Err("refused".into());
            }
        }
        MsgType::Error => {
            let e: ErrorBody = control::decode(f.payload).map_err(|e| e.message)?;
            return Err(format!("refused: {} {}", e.code, e.message));
        }
        other => return Err(format!("expected AUTH_RESPONSE, got {other}")),
    }
    Ok((conn, rest, addr))
}

/// A link's life on its worker, either side.
pub async fn run(
    ctx: &Rc<WorkerCtx>,
    nodes: &Rc<MeshNodes>,
    conn: Conn,
    pending: Vec<u8>,
    auth: LinkAuth,
    peer: SocketAddr,
) {
    let cap = link_cap(ctx);
    let dialer = auth.dialer;
    let (link, outbox, queued) = Link::new(auth, cap);
    if !dialer {
        let resp = AuthResponse {
            ok: true,
            ..AuthResponse::default()
        };
        link.push(super::nodes::ws_seed_frame(
            MsgType::AuthResponse,
            &serde_json::to_vec(&resp).unwrap_or_default(),
        ));
    }
    let (reader, writer) = conn.into_split();
    let aborter = reader.aborter();
    let stall = Duration::from_secs(ctx.shared.config.fastpath.write_stall_secs.max(1));
    monoio::spawn(write_loop(writer, outbox, queued, aborter, stall));
    monoio::spawn(pinger(Rc::clone(&link)));
    nodes.insert_link(Rc::clone(&link));
    WorkerStats::add(&ctx.stats().mesh_links, 1);
    let relay = link.auth.relay_id;
    tracing::info!(relay, %peer, dialer, worker = ctx.id, "mesh link up");
    let why = read_loop(ctx, nodes, &link, reader, pending).await;
    tracing::info!(relay, %peer, reason = %why, "mesh link down");
    flush(ctx, nodes);
    nodes.remove_link(&link);
    if !link.is_closing() {
        link.close(None, &why);
    }
    WorkerStats::add(&ctx.stats().mesh_links, -1);
}

/// A seed PING on the link every [`PING_EVERY`] while it stays.
async fn pinger(link: Rc<Link<LinkAuth>>) {
    let mut n = 0u64;
    loop {
        monoio::time::sleep(PING_EVERY).await;
        if link.is_closing() {
            return;
        }
        n += 1;
        send(&link, MsgType::Ping, &n.to_be_bytes());
    }
}

/// A binary WebSocket message holding `body`, as this side of the link
/// sends it (the dialer masks, with a zero key).
fn message(link: &Link<LinkAuth>, body: &[u8]) -> Vec<u8> {
    let mask = link.auth.dialer.then_some([0; 4]);
    let mut out = Vec::with_capacity(body.len() + 14);
    ws::encode_head(ws::Opcode::Binary, true, body.len(), mask, &mut out);
    out.extend_from_slice(body);
    out
}

/// A seed frame onto a link (PING, PONG), framed for its side.
fn send(link: &Link<LinkAuth>, kind: MsgType, payload: &[u8]) {
    let mut f = Vec::with_capacity(frame::HEADER_LEN + payload.len());
    if frame::encode(kind, 0, payload, &mut f).is_ok() {
        link.push(message(link, &f));
    }
}

/// Reads a link's messages until it ends; returns why it ended.
async fn read_loop(
    ctx: &WorkerCtx,
    nodes: &MeshNodes,
    link: &Rc<Link<LinkAuth>>,
    mut reader: ConnReader,
    pending: Vec<u8>,
) -> String {
    let stats = ctx.stats();
    // The accepting side reads a client's (masked) frames.
    let mut frames = FrameReader::new(pending, !link.auth.dialer, LINK_MAX_MESSAGE);
    loop {
        while let Some((h, at)) = match frames.next_frame() {
            Ok(h) => h,
            Err(e) => {
                WorkerStats::bump(&stats.protocol_errors, 1);
                link.close_with(e.close_code(), None, &e.to_string());
                return format!("WebSocket: {e}");
            }
        } {
            let payload = frames.payload(at);
            match h.opcode {
                ws::Opcode::Binary if h.fin => {
                    if let Err(why) = handle(ctx, nodes, link, payload) {
                        return why;
                    }
                }
                ws::Opcode::Ping => {
                    let mask = link.auth.dialer.then_some([0; 4]);
                    let mut pong = Vec::with_capacity(h.len + 6);
                    ws::encode_head(ws::Opcode::Pong, true, h.len, mask, &mut pong);
                    pong.extend_from_slice(payload);
                    link.push(pong);
                }
                ws::Opcode::Pong => {}
                ws::Opcode::Close => {
                    link.close(None, "closed by the other relay");
                    return "closed by the other relay".into();
                }
                // Relays send whole binary messages only.
                _ => {
                    WorkerStats::bump(&stats.protocol_errors, 1);
                    link.close_with(1002, None, "relay links carry whole binary messages");
                    return "a fragment or a text message on a link".into();
                }
            }
        }
        flush(ctx, nodes);
        let r = match monoio::time::timeout(SILENCE_LIMIT, frames.fill(&mut reader)).await {
            Ok(r) => r,
            Err(_) => {
                link.close(None, "silent for 90 s");
                return "silent for 90 s".into();
            }
        };
        match r {
            Ok(0) => return "closed".into(),
            Err(e) => return format!("read error: {e}"),
            Ok(_) => {}
        }
    }
}

/// One message from another relay: seed frames back to back. Err(why)
/// ends the link.
fn handle(
    ctx: &WorkerCtx,
    nodes: &MeshNodes,
    link: &Rc<Link<LinkAuth>>,
    msg: &[u8],
) -> Result<(), String> {
    if link.is_closing() {
        return Err("cut off".into());
    }
    let stats = ctx.stats();
    let fail = |body: ErrorBody| {
        WorkerStats::bump(&stats.protocol_errors, 1);
        let why = format!("{} {}", body.code, body.message);
        link.close(Some(&body), "protocol error");
        Err(why)
    };
    let table = ctx.shared.policy.current();
    let workers = ctx.shared.inboxes.len();
    let mut rest = msg;
    loop {
        let f = match frame::split(rest) {
            Ok(Some((f, more))) => {
                rest = more;
                f
            }
            Ok(None) => return Ok(()),
            Err(e) => return fail(ErrorBody::new(e.code(), &e.to_string())),
        };
        let parsed = match frame::parse(f, frame::MAX_PAYLOAD) {
            Ok(p) => p,
            Err(e) => return fail(ErrorBody::new(e.code(), &e.to_string())),
        };
        match parsed.kind {
            MsgType::Data => {
                let d = match data::Data::parse(parsed.payload) {
                    Ok(d) => d,
                    Err(e) => return fail(ErrorBody::new(e.code(), &e.to_string())),
                };
                WorkerStats::bump(&stats.mesh_link_frames_in, 1);
                // Within one network, to a node this relay knows.
                let t = table.as_deref().map(LoadedTable::get);
                let net = t.and_then(|t| t.mesh_node_network(d.dst));
                match net {
                    Some(n) if t.and_then(|t| t.mesh_node_network(d.src)) == Some(n) => {
                        nodes.gather(home_worker(n, workers), 0, f);
                    }
                    _ => WorkerStats::bump(&stats.mesh_unroutable, 1),
                }
            }
            MsgType::Ping => send(link, MsgType::Pong, parsed.payload),
            MsgType::Pong => {}
            MsgType::Error => {
                let e: Result<ErrorBody, _> = control::decode(parsed.payload);
                if let Ok(e) = e {
                    tracing::warn!(relay = link.auth.relay_id, code = e.code, reason = %e.message,
                        "mesh link: error from the other relay");
                }
            }
            other => {
                return fail(ErrorBody::new(
                    ErrorCode::InvalidMessage,
                    &format!("{other} is not accepted on {MESH_PATH}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn a_relay_url_gives_the_address_to_dial() {
        assert_eq!(
            authority("ws://10.0.0.2:8444/ws/data").unwrap(),
            "10.0.0.2:8444"
        );
        assert_eq!(
            authority("wss://relay.example/ws/data").unwrap(),
            "relay.example:443"
        );
        assert_eq!(authority("ws://[::1]/ws/data").unwrap(), "[::1]:80");
        assert_eq!(authority("wss://[::1]:9/x").unwrap(), "[::1]:9");
        assert!(authority("http://h/x").is_err());
        assert!(authority("ws:///x").is_err());
    }
}
