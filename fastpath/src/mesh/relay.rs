//! The life of a connection on the mesh relay port, in named steps:
//!
//! 1. **transport** — a first byte `0x16` (a TLS ClientHello) → TLS with
//!    the fastpath's certificate; anything else → plain.
//! 2. **upgrade** — an HTTP/1.1 GET of `/ws/data` asking for WebSocket 13;
//!    anything else is answered with 400/404/426/431 and closed.
//! 3. **authenticate** — the first message is seed 003's AUTH_REQUEST with
//!    a relay token, checked against the policy table alone: signature by
//!    a key of the table, expiry, this relay's id in `allowed_relays`, the
//!    jti not revoked, the node authorized in the token's network. Refused:
//!    ERROR 1001/1002/1003/1006 and a close. Accepted: AUTH_RESPONSE.
//! 4. **home** — the connection moves (socket, TLS state, unread bytes) to
//!    the worker that serves the node's network ([`home_worker`]), so that
//!    DATA between two nodes never crosses threads.
//! 5. **relay** — DATA frames go to the destination node's outbox by the
//!    clear `dst` id, unread and unchanged; a node not connected gets
//!    ERROR 3002 (3001 when it is no node of the sender's network). PING
//!    is answered with PONG. A frame that is not seed 003's (2001, 2002,
//!    2003), a `src` that is not the sender, or a WebSocket protocol error
//!    ends that connection only.
//!
//! Steps 1 to 3 hold a place at the pre-auth gate and must be done within
//! [`IDENTIFY_DEADLINE`]. After a new policy table, every connection is
//! checked again: revoked, expired or deauthorized ones are closed with
//! their code ([`recheck`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use local_sync::mpsc;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use proto::mesh::control::{self, AuthRequest, AuthResponse, ErrorBody};
use proto::mesh::token::{self, TokenError, Trust};
use proto::mesh::{data, frame, ErrorCode, MsgType};
use proto::ws;

use super::frames::FrameReader;
use super::links::{self, TableOnce, MESH_PATH};
use super::nodes::{
    home_worker, link_worker, ws_close, ws_error, ws_seed_frame, Link, MeshAuth, MeshNodes,
    NodeAuth,
};
use crate::policy::LoadedTable;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::{WorkerCtx, IDENTIFY_DEADLINE};
use crate::transport::conn::{Aborter, Conn, ConnReader, ConnWriter};
use crate::transport::handoff::{detach, MovedMesh, WorkerMsg};
use crate::transport::listener::accept_each;
use crate::transport::tls::TlsStream;
use proto::events::Event;

/// The path nodes connect to.
pub const DATA_PATH: &str = "/ws/data";

/// Largest WebSocket message accepted: one seed frame.
const MAX_MESSAGE: usize = frame::HEADER_LEN + frame::MAX_PAYLOAD;

/// Bytes one write gathers from a node's outbox.
const WRITE_BATCH: usize = 256 * 1024;

/// Accept on the relay port until cancelled.
pub async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    nodes: Rc<MeshNodes>,
    listener: std::net::TcpListener,
    cancel: monoio::io::CancelHandle,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = ctx.id, error = %e, "cannot register the mesh relay listener");
            return;
        }
    };
    accept_each(
        &ctx,
        &listener,
        cancel,
        "mesh relay port",
        |stream, peer| {
            monoio::spawn(serve(ctx.clone(), nodes.clone(), stream, peer));
        },
    )
    .await
}

pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub(super) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Steps 1 to 4 for one accepted connection.
async fn serve(ctx: Rc<WorkerCtx>, nodes: Rc<MeshNodes>, stream: TcpStream, peer: SocketAddr) {
    let Some((ticket, now)) = ctx.admit(peer) else {
        return;
    };
    let opened = ctx
        .within(
            left(now + IDENTIFY_DEADLINE),
            "mesh relay: not authenticated",
            open(&ctx, stream),
        )
        .await;
    let (conn, pending, auth) = match opened {
        Ok(x) => x,
        Err(reason) => {
            tracing::debug!(%peer, %reason, "mesh connection closed before authentication");
            return;
        }
    };
    ctx.preauth.identified(peer.ip());
    drop(ticket);
    let workers = ctx.shared.inboxes.len();
    let home = match &auth {
        MeshAuth::Node(n) => home_worker(n.network_id, workers),
        MeshAuth::Relay(l) => link_worker(l.relay_id, workers),
    };
    if home == ctx.id {
        return match auth {
            MeshAuth::Node(auth) => run(&ctx, &nodes, conn, pending, auth, peer).await,
            MeshAuth::Relay(auth) => links::run(&ctx, &nodes, conn, pending, auth, peer).await,
        };
    }
    let (socket, tls) = match conn {
        Conn::Tcp(s, _) => (detach(s), None),
        Conn::Tls(t, _) => {
            let (s, state) = t.into_parts();
            (detach(s), Some(state))
        }
        Conn::Mux(_) | Conn::Bridge(_) => return,
    };
    let moved = MovedMesh {
        socket,
        tls,
        pending,
        auth,
        peer,
    };
    match ctx.shared.inboxes[home].send(WorkerMsg::MeshConn(Box::new(moved))) {
        Ok(()) => WorkerStats::bump(&ctx.stats().handoffs_out, 1),
        Err(_) => tracing::warn!(%peer, "home worker is gone; dropping mesh connection"),
    }
}

/// Take in a connection another worker moved here.
pub async fn adopt(ctx: Rc<WorkerCtx>, nodes: Rc<MeshNodes>, moved: MovedMesh) {
    WorkerStats::bump(&ctx.stats().handoffs_in, 1);
    let MovedMesh {
        socket,
        tls,
        pending,
        auth,
        peer,
    } = moved;
    let stream = match TcpStream::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(worker = ctx.id, error = %e, "cannot adopt a mesh connection");
            return;
        }
    };
    let conn = match tls {
        Some(state) => Conn::tls(TlsStream::from_parts(stream, state)),
        None => Conn::tcp(stream),
    };
    match auth {
        MeshAuth::Node(auth) => run(&ctx, &nodes, conn, pending, auth, peer).await,
        MeshAuth::Relay(auth) => links::run(&ctx, &nodes, conn, pending, auth, peer).await,
    }
}

/// Steps 1 to 3: the transport, the upgrade, the token.
async fn open(ctx: &WorkerCtx, mut stream: TcpStream) -> Result<(Conn, Vec<u8>, MeshAuth), String> {
    let (r, first) = stream.read(Vec::with_capacity(4096)).await;
    match r {
        Ok(0) => return Err("closed before sending anything".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read error: {e}")),
    }
    let (mut conn, mut buf) = if first[0] == 0x16 {
        let tls = TlsStream::accept(stream, ctx.shared.tls.clone(), &first)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        WorkerStats::bump(&ctx.stats().mesh_tls, 1);
        (Conn::tls(tls), Vec::with_capacity(4096))
    } else {
        (Conn::tcp(stream), first)
    };
    // Step 2.
    let upgrade = loop {
        match ws::parse_upgrade(&buf) {
            Ok(Some(u)) => break u,
            Ok(None) => {}
            Err(e) => {
                let _ = conn
                    .write_all(ws::refusal_response(e.status(), &e.to_string()))
                    .await;
                return Err(e.to_string());
            }
        }
        buf.reserve(4096);
        let (r, b) = conn.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("closed during the upgrade".into()),
            Err(e) => return Err(format!("read error: {e}")),
            Ok(_) => {}
        }
    };
    let relay_link = upgrade.path == MESH_PATH;
    if upgrade.path != DATA_PATH && !relay_link {
        let why = format!(
            "no WebSocket endpoint at {}; nodes use {DATA_PATH}, relays {MESH_PATH}",
            upgrade.path
        );
        let _ = conn.write_all(ws::refusal_response(404, &why)).await;
        return Err(why);
    }
    let (r, _) = conn.write_all(ws::upgrade_response(&upgrade.key)).await;
    r.map_err(|e| format!("write error: {e}"))?;
    buf.drain(..upgrade.head_len);
    // Step 3: the first whole message.
    let (msg, rest) = loop {
        match first_message(&buf, true) {
            Ok(Some(m)) => break m,
            Ok(None) => {}
            Err(why) => {
                let _ = conn.write_all(ws_close(1002, &why)).await;
                return Err(why);
            }
        }
        // Before AUTH_REQUEST a client gets room for one message and no
        // more (pings and fragments do not buy it a growing buffer).
        if buf.len() > 2 * MAX_MESSAGE {
            let why = "no AUTH_REQUEST in the first 128 KiB";
            let _ = conn.write_all(ws_close(1009, why)).await;
            return Err(why.into());
        }
        buf.reserve(4096);
        let (r, b) = conn.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("closed before AUTH_REQUEST".into()),
            Err(e) => return Err(format!("read error: {e}")),
            Ok(_) => {}
        }
    };
    let checked = if relay_link {
        links::authenticate(ctx, &msg).map(MeshAuth::Relay)
    } else {
        authenticate(ctx, &msg).map(MeshAuth::Node)
    };
    match checked {
        // AUTH_RESPONSE comes from the home worker once the node is
        // registered there, so that nothing sent to it is 3002 after it.
        Ok(auth) => Ok((conn, rest, auth)),
        Err(body) => {
            WorkerStats::bump(&ctx.stats().mesh_refused, 1);
            let mut out = ws_error(&body);
            out.extend_from_slice(&ws_close(1008, "authentication failed"));
            let why = format!("{} {}", body.code, body.message);
            conn.finish(out).await;
            Err(why)
        }
    }
}

/// A message and the bytes read after it.
type WholeMessage = (Vec<u8>, Vec<u8>);

/// The first WebSocket message in `buf` (unmasked; continuation frames
/// joined), and the bytes after it; None until it is all there.
pub(super) fn first_message(buf: &[u8], masked: bool) -> Result<Option<WholeMessage>, String> {
    let mut at = 0;
    let mut msg = Vec::new();
    loop {
        let Some(h) = ws::parse_head(&buf[at..], masked, MAX_MESSAGE).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let body = at + h.head_len;
        if buf.len() < body + h.len {
            return Ok(None);
        }
        match h.opcode {
            ws::Opcode::Binary | ws::Opcode::Continuation => {
                if msg.len() + h.len > MAX_MESSAGE {
                    return Err("message over the limit".into());
                }
                let start = msg.len();
                msg.extend_from_slice(&buf[body..body + h.len]);
                ws::apply_mask(&mut msg[start..], h.mask.unwrap_or_default(), 0);
                if h.fin {
                    let rest = buf[body + h.len..].to_vec();
                    return Ok(Some((msg, rest)));
                }
            }
            ws::Opcode::Ping | ws::Opcode::Pong => {}
            ws::Opcode::Text | ws::Opcode::Close => {
                return Err("expected AUTH_REQUEST in a binary message".into())
            }
        }
        at = body + h.len;
    }
}

/// An AUTH_REQUEST's token with what it is checked against: the table in
/// force, this relay's id in it and the table's key of the token's `kid`.
pub(super) struct Presented {
    pub token: String,
    pub table: std::sync::Arc<LoadedTable>,
    pub relay_id: u32,
    keys: Vec<(String, [u8; 32])>,
    hs256: Option<String>,
}

impl Presented {
    /// The keys a token is verified with.
    pub fn trust(&self) -> Trust<'_> {
        Trust {
            ed25519: &self.keys,
            hs256: self.hs256.as_deref().map(str::as_bytes),
        }
    }
}

/// The first message on the relay port, read as an AUTH_REQUEST, and the
/// table that decides it (refused when there is no relay in it).
pub(super) fn presented(ctx: &WorkerCtx, msg: &[u8]) -> Result<Presented, ErrorBody> {
    let f = frame::parse(msg, frame::MAX_PAYLOAD)
        .map_err(|e| ErrorBody::new(e.code(), &e.to_string()))?;
    if f.kind != MsgType::AuthRequest {
        let why = format!("expected AUTH_REQUEST, got {}", f.kind);
        return Err(ErrorBody::new(ErrorCode::InvalidMessage, &why));
    }
    let req: AuthRequest = control::decode(f.payload)?;
    let Some(table) = ctx.shared.policy.current() else {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            "no policy table yet",
        ));
    };
    let t = table.get();
    let relay_id = t.mesh_relay_id();
    if relay_id == 0 {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            "no mesh relay on this node",
        ));
    }
    let kid = proto::jwt::Jwt::parse(&req.token)
        .ok()
        .and_then(|j| j.kid().map(str::to_owned))
        .unwrap_or_default();
    let keys = t.ticket_key(&kid).map(|k| (kid, k)).into_iter().collect();
    let hs256 = t.mesh_hs256_secret().map(str::to_owned);
    Ok(Presented {
        hs256,
        token: req.token,
        table,
        relay_id,
        keys,
    })
}

/// Check a relay token against the table in force.
fn authenticate(ctx: &WorkerCtx, msg: &[u8]) -> Result<NodeAuth, ErrorBody> {
    let p = presented(ctx, msg)?;
    let t = p.table.get();
    let claims = token::check_relay_token(&p.token, &p.trust(), p.relay_id, now_s(), |j| {
        t.mesh_revoked(j)
    })
    .map_err(|e: TokenError| ErrorBody::new(e.code(), &e.to_string()))?;
    if t.mesh_node_network(claims.node_id) != Some(claims.network_id) {
        return Err(ErrorBody::new(
            ErrorCode::NodeNotAuthorized,
            &format!(
                "node {} is not authorized in network {}",
                claims.node_id, claims.network_id
            ),
        ));
    }
    Ok(NodeAuth {
        node_id: claims.node_id,
        network_id: claims.network_id,
        jti: claims.jti,
        exp: claims.exp,
    })
}

/// Why a connection in the table in force may no longer stay, if so.
fn refused_now(table: Option<&LoadedTable>, auth: &NodeAuth, now: u64) -> Option<ErrorBody> {
    if auth.exp <= now {
        return Some(ErrorBody::new(
            ErrorCode::TokenExpired,
            "the relay token expired",
        ));
    }
    let t = table?.get();
    if t.mesh_revoked(&auth.jti) {
        return Some(ErrorBody::new(
            ErrorCode::TokenRevoked,
            "the relay token was revoked",
        ));
    }
    if t.mesh_node_network(auth.node_id) != Some(auth.network_id) {
        return Some(ErrorBody::new(
            ErrorCode::NodeNotAuthorized,
            "this node was deauthorized or deleted",
        ));
    }
    None
}

/// After a new policy table, or on the worker's tick: close the
/// connections it no longer allows, with their code.
pub fn recheck(ctx: &Rc<WorkerCtx>, nodes: &Rc<MeshNodes>) {
    let now = now_s();
    // The table in force, read once for the whole pass.
    let table = ctx.shared.policy.current();
    for link in nodes.all() {
        if let Some(body) = refused_now(table.as_deref(), &link.auth, now) {
            tracing::info!(node = link.auth.node_id, code = body.code, reason = %body.message,
                "mesh node cut off");
            if nodes.remove(&link) {
                node_gone(ctx, &link.auth);
            }
            link.close(Some(&body), "cut off");
        }
    }
    links::recheck(ctx, nodes, table.as_deref(), now);
}

/// Tell the control plane a node is connected here.
fn node_here(ctx: &WorkerCtx, auth: &NodeAuth) {
    ctx.events.emit(Event::MeshNode {
        node_id: auth.node_id,
        network_id: auth.network_id,
        up: true,
    });
}

/// Tell the control plane a node is no longer connected here.
fn node_gone(ctx: &WorkerCtx, auth: &NodeAuth) {
    ctx.events.emit(Event::MeshNode {
        node_id: auth.node_id,
        network_id: auth.network_id,
        up: false,
    });
}

/// Step 5: the connection's life on its home worker.
async fn run(
    ctx: &Rc<WorkerCtx>,
    nodes: &Rc<MeshNodes>,
    conn: Conn,
    pending: Vec<u8>,
    auth: NodeAuth,
    peer: SocketAddr,
) {
    // It may have been revoked while moving.
    if let Some(body) = refused_now(ctx.shared.policy.current().as_deref(), &auth, now_s()) {
        let mut out = ws_error(&body);
        out.extend_from_slice(&ws_close(1008, "cut off"));
        conn.finish(out).await;
        return;
    }
    let cap = ctx.shared.config.fastpath.mesh_queue_bytes;
    let resp = AuthResponse {
        ok: true,
        node_id: auth.node_id,
        network_id: auth.network_id,
        ..AuthResponse::default()
    };
    let (link, outbox, queued) = Link::new(auth, cap);
    link.push(ws_seed_frame(
        MsgType::AuthResponse,
        &serde_json::to_vec(&resp).unwrap_or_default(),
    ));
    let (reader, writer) = conn.into_split();
    let aborter = reader.aborter();
    let stall = Duration::from_secs(ctx.shared.config.fastpath.write_stall_secs.max(1));
    monoio::spawn(write_loop(writer, outbox, queued, aborter, stall));
    nodes.insert(Rc::clone(&link));
    node_here(ctx, &link.auth);
    WorkerStats::add(&ctx.stats().mesh_nodes, 1);
    tracing::debug!(node = link.auth.node_id, network = link.auth.network_id, %peer, worker = ctx.id,
        "mesh node connected");
    let why = read_loop(ctx, nodes, &link, reader, pending).await;
    tracing::debug!(node = link.auth.node_id, %peer, reason = %why, "mesh node disconnected");
    links::flush(ctx, nodes);
    if nodes.remove(&link) {
        node_gone(ctx, &link.auth);
    }
    if !link.is_closing() {
        link.close(None, &why);
    }
    WorkerStats::add(&ctx.stats().mesh_nodes, -1);
}

/// Writes a node's outbox, gathering what is queued into one write.
pub(super) async fn write_loop(
    mut w: ConnWriter,
    mut outbox: mpsc::unbounded::Rx<Vec<u8>>,
    queued: Rc<Cell<usize>>,
    aborter: Aborter,
    stall: Duration,
) {
    while let Some(first) = outbox.recv().await {
        queued.set(queued.get().saturating_sub(first.len()));
        let mut batch = first;
        while batch.len() < WRITE_BATCH {
            match outbox.try_recv() {
                Ok(more) => {
                    queued.set(queued.get().saturating_sub(more.len()));
                    batch.extend_from_slice(&more);
                }
                Err(_) => break,
            }
        }
        match monoio::time::timeout(stall, w.write_all(batch)).await {
            Ok((Ok(()), _)) => {}
            _ => break,
        }
    }
    let _ = monoio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    aborter.abort();
}

/// Reads frames until the connection ends; returns why it ended.
async fn read_loop(
    ctx: &WorkerCtx,
    nodes: &MeshNodes,
    link: &Rc<Link>,
    mut reader: ConnReader,
    pending: Vec<u8>,
) -> String {
    let stats = ctx.stats();
    let mut frames = FrameReader::new(pending, true, MAX_MESSAGE);
    // A message arriving in fragments.
    let mut partial: Option<Vec<u8>> = None;
    loop {
        // The frames of one read see one table.
        let mut table = TableOnce::default();
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
                ws::Opcode::Binary if h.fin && partial.is_none() => {
                    if let Err(why) = handle(ctx, nodes, link, &mut table, payload) {
                        return why;
                    }
                }
                ws::Opcode::Binary | ws::Opcode::Continuation => {
                    let p = match (h.opcode, partial.as_mut()) {
                        (ws::Opcode::Binary, None) => partial.insert(Vec::new()),
                        (ws::Opcode::Continuation, Some(p)) => p,
                        _ => {
                            link.close_with(1002, None, "fragments out of order");
                            return "WebSocket: fragments out of order".into();
                        }
                    };
                    if p.len() + h.len > MAX_MESSAGE {
                        link.close_with(1009, None, "message over the limit");
                        return "WebSocket: message over the limit".into();
                    }
                    p.extend_from_slice(payload);
                    if h.fin {
                        let msg = partial.take().unwrap_or_default();
                        if let Err(why) = handle(ctx, nodes, link, &mut table, &msg) {
                            return why;
                        }
                    }
                }
                ws::Opcode::Ping => {
                    let mut pong = Vec::with_capacity(h.len + 2);
                    ws::encode_head(ws::Opcode::Pong, true, h.len, None, &mut pong);
                    pong.extend_from_slice(payload);
                    link.push(pong);
                }
                ws::Opcode::Pong => {}
                ws::Opcode::Close => {
                    link.close(None, "closed by the node");
                    return "closed by the node".into();
                }
                ws::Opcode::Text => {
                    let body =
                        ErrorBody::new(ErrorCode::InvalidMessage, "frames are binary messages");
                    link.close_with(1003, Some(&body), "text message");
                    return "a text message".into();
                }
            }
        }
        // What this read gathered for links and other workers goes now,
        // in one piece per destination.
        links::flush(ctx, nodes);
        match frames.fill(&mut reader).await {
            Ok(0) => return "closed".into(),
            Err(e) => return format!("read error: {e}"),
            Ok(_) => {}
        }
    }
}

/// One seed frame from the node: Err(why) ends the connection.
fn handle(
    ctx: &WorkerCtx,
    nodes: &MeshNodes,
    link: &Rc<Link>,
    table: &mut TableOnce,
    msg: &[u8],
) -> Result<(), String> {
    // A node cut off (revoked, replaced) sends nothing more, even while
    // its last frames are still being written to it.
    if link.is_closing() {
        return Err("cut off".into());
    }
    let stats = ctx.stats();
    let me = &link.auth;
    let fail = |body: ErrorBody| {
        WorkerStats::bump(&stats.protocol_errors, 1);
        let why = format!("{} {}", body.code, body.message);
        link.close(Some(&body), "protocol error");
        Err(why)
    };
    let f = match frame::parse(msg, frame::MAX_PAYLOAD) {
        Ok(f) => f,
        Err(e) => return fail(ErrorBody::new(e.code(), &e.to_string())),
    };
    match f.kind {
        MsgType::Data => {
            let d = match data::Data::parse(f.payload) {
                Ok(d) => d,
                Err(e) => return fail(ErrorBody::new(e.code(), &e.to_string())),
            };
            if d.src != me.node_id {
                let why = format!(
                    "DATA from node {} on node {}'s connection",
                    d.src, me.node_id
                );
                return fail(ErrorBody::new(ErrorCode::InvalidMessage, &why));
            }
            WorkerStats::bump(&stats.mesh_frames_in, 1);
            let local = nodes.get(d.dst);
            if local.is_none() && links::forward(ctx, nodes, table, me.network_id, d.dst, msg) {
                return Ok(());
            }
            match local {
                Some(dst) if dst.auth.network_id == me.network_id => {
                    if dst.has_room(msg.len() + 10) && dst.push(super::nodes::ws_binary(msg)) {
                        WorkerStats::bump(&stats.mesh_frames_out, 1);
                        WorkerStats::bump(&stats.mesh_bytes, msg.len() as u64);
                    } else {
                        WorkerStats::bump(&stats.mesh_dropped, 1);
                    }
                }
                other => {
                    WorkerStats::bump(&stats.mesh_unroutable, 1);
                    let known = other.is_some()
                        || table.get(ctx).is_some_and(|t| {
                            t.get().mesh_node_network(d.dst) == Some(me.network_id)
                        });
                    let mut body = if known && other.is_none() {
                        ErrorBody::new(ErrorCode::NodeOffline, &format!("node {}", d.dst))
                    } else {
                        ErrorBody::new(ErrorCode::NodeNotFound, &format!("node {}", d.dst))
                    };
                    body.node_id = Some(d.dst);
                    link.push(ws_error(&body));
                }
            }
            Ok(())
        }
        MsgType::Ping => {
            link.push(ws_seed_frame(MsgType::Pong, f.payload));
            Ok(())
        }
        other => fail(ErrorBody::new(
            ErrorCode::InvalidMessage,
            &format!("{other} is not accepted on {DATA_PATH}"),
        )),
    }
}
