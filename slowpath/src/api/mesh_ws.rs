//! Seed 003's control channel, `/ws/control`: a node authenticates with a
//! machine-key-signed AUTH_REQUEST (registering on first contact), gets
//! AUTH_RESPONSE and CONFIG once authorized, then CONFIG_UPDATE whenever
//! its network changes; it may PING and rotate its node key (a signed
//! CONFIG_UPDATE). Every message is one binary WebSocket message holding
//! one seed 003 frame. Protocol and authentication errors are answered
//! with an ERROR frame and the connection is closed; a deauthorized or
//! deleted node is cut off at the next change of its network.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use proto::mesh::control::{
    self, AuthRequest, AuthResponse, Config, ConfigUpdate, ErrorBody, NodeKeyUpdate,
};
use proto::mesh::{frame, ErrorCode, MsgType};
use tokio::sync::broadcast;

use super::AppState;
use crate::clock::now_ms;
use crate::domain::mesh::{config, nodes, settings, tokens};

/// Largest control frame payload accepted (anything larger is 2003) and
/// sent: a CONFIG whose peers do not fit in one frame goes out as CONFIG and
/// CONFIG_UPDATEs.
pub const MAX_CONTROL_PAYLOAD: usize = 60 * 1024;

/// How long a new connection has to send its AUTH_REQUEST.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Control channels open at once. An upgraded connection leaves the API's
/// own connection caps (hyper hands its socket over), so the channels
/// have theirs; past it an upgrade is refused with 503.
pub const MAX_CONTROL_CHANNELS: usize = 4096;

/// Control channels open at once from one address (as the API's own
/// per-address cap): one address cannot take every channel.
pub const MAX_CONTROL_CHANNELS_PER_IP: usize = 256;

/// Changes of mesh networks, for the open control channels.
pub struct MeshHub {
    tx: broadcast::Sender<u32>,
    /// Republishes the policy table (the relay's nodes and revocations).
    publisher: std::sync::OnceLock<std::sync::Arc<crate::policy::publish::Publisher>>,
    channels: std::sync::Arc<tokio::sync::Semaphore>,
    per_ip: std::sync::Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl std::fmt::Debug for MeshHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHub")
            .field("receivers", &self.tx.receiver_count())
            .finish()
    }
}

impl Default for MeshHub {
    fn default() -> Self {
        MeshHub {
            tx: broadcast::channel(256).0,
            publisher: std::sync::OnceLock::new(),
            channels: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CHANNELS)),
            per_ip: Default::default(),
        }
    }
}

/// One address's count of open channels, given back on drop.
pub(super) struct IpSlot {
    ip: IpAddr,
    map: std::sync::Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl MeshHub {
    /// A slot for one more channel from `ip`, unless it holds its share.
    fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_CONTROL_CHANNELS_PER_IP {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            map: std::sync::Arc::clone(&self.per_ip),
        })
    }
}

/// What [`MeshHub::servers_changed`] sends: every network's channels and
/// every server channel look again (network ids start at 1).
pub const ALL_NETWORKS: u32 = 0;

/// What [`MeshHub::locations_changed`] sends: only server channels look
/// again (no network has this id: ids are small counters).
pub const LOCATIONS_ONLY: u32 = u32::MAX;

impl MeshHub {
    /// Network `id` changed: its channels recompute what they pushed
    /// (server channels look again at the blacklist and node locations).
    pub fn changed(&self, network_id: u32) {
        let _ = self.tx.send(network_id);
        if let Some(p) = self.publisher.get() {
            p.mesh_changed();
        }
    }

    /// Changes republish the policy table through `publisher` too (set
    /// once, at start).
    pub fn publish_with(&self, publisher: std::sync::Arc<crate::policy::publish::Publisher>) {
        let _ = self.publisher.set(publisher);
    }

    /// The servers (relays, their tokens) changed: every channel looks
    /// again.
    pub fn servers_changed(&self) {
        self.changed(ALL_NETWORKS);
    }

    /// Only node locations changed (a relay's report): the server channels
    /// look again, and the built-in relay's table (it routes by them);
    /// nodes' configurations hold no locations and are not recomputed.
    pub fn locations_changed(&self) {
        let _ = self.tx.send(LOCATIONS_ONLY);
        if let Some(p) = self.publisher.get() {
            p.mesh_changed();
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<u32> {
        self.tx.subscribe()
    }
}

/// What holds one channel's place (its share of the caps), kept until
/// the channel closes.
pub(super) type Admission = (tokio::sync::OwnedSemaphorePermit, IpSlot);

/// A place for one more mesh channel (control or server) from `peer`, or
/// the 503 that refuses it.
fn admit(app: &AppState, peer: SocketAddr) -> Result<Admission, Box<Response>> {
    let Some(slot) = app.mesh.admit(peer.ip()) else {
        tracing::warn!(
            peer = %peer.ip(),
            max = MAX_CONTROL_CHANNELS_PER_IP,
            "mesh control channel refused: too many open from this address"
        );
        return Err(Box::new(axum::response::IntoResponse::into_response((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many mesh control channels from this address",
        ))));
    };
    let Ok(permit) = std::sync::Arc::clone(&app.mesh.channels).try_acquire_owned() else {
        tracing::warn!(
            max = MAX_CONTROL_CHANNELS,
            "mesh control channel refused: too many open"
        );
        return Err(Box::new(axum::response::IntoResponse::into_response((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many mesh control channels",
        ))));
    };
    Ok((permit, slot))
}

/// Upgrade `ws` for a mesh channel from `peer`, holding its place under
/// the caps while `serve` runs (or the 503 that refuses it).
pub(super) fn upgrade<F, Fut>(
    app: AppState,
    peer: SocketAddr,
    ws: WebSocketUpgrade,
    serve: F,
) -> Response
where
    F: FnOnce(WebSocket, AppState) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let admission = match admit(&app, peer) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    ws.max_message_size(frame::HEADER_LEN + frame::MAX_PAYLOAD)
        .on_upgrade(move |socket| async move {
            let _admission = admission;
            serve(socket, app).await;
        })
}

/// `GET /ws/control`.
pub async fn control(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(app, peer, ws, |socket, app| async move {
        let mut ch = Channel {
            ws: socket,
            pushed: 0,
            rotations: RotationBudget::default(),
        };
        if let Err(why) = ch.serve(&app).await {
            tracing::info!(%why, "mesh control channel closed");
        }
    })
}

pub(super) struct Channel {
    pub(super) ws: WebSocket,
    /// CONFIG and CONFIG_UPDATE frames sent (their version).
    pub(super) pushed: u64,
    /// Node-key rotations this channel may still make now.
    pub(super) rotations: RotationBudget,
}

/// Node-key rotations a control channel may make: a burst of
/// [`RotationBudget::BURST`], then one a second. Each rotation is pushed
/// to every peer of the node's network, so a node may not make the
/// controller do that at will (4003 past it; the key stays). A node
/// rotates once a day by default.
#[derive(Debug)]
pub(super) struct RotationBudget {
    left: f64,
    at: tokio::time::Instant,
}

impl Default for RotationBudget {
    fn default() -> Self {
        RotationBudget {
            left: Self::BURST,
            at: tokio::time::Instant::now(),
        }
    }
}

impl RotationBudget {
    const BURST: f64 = 5.0;

    /// Take one rotation, if there is one.
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64();
        self.left = (self.left + refill).min(Self::BURST);
        self.at = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A node's configuration (without tokens: those are minted when due).
async fn node_config(app: &AppState, node: &nodes::MeshNode) -> Result<Config, String> {
    config::for_node(&app.db, node)
        .await
        .map_err(|e| e.to_string())
}

/// The relays a relay token lets a node use: every enabled relay server.
async fn relay_ids(app: &AppState) -> Result<Vec<u32>, String> {
    Ok(crate::domain::mesh::servers::relays(&app.db)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.server_id)
        .collect())
}

/// `peers` in groups whose JSON fits in `room` bytes each (at least one
/// group, empty when there are no peers).
fn chunk_peers(peers: Vec<control::Peer>, room: usize) -> Vec<Vec<control::Peer>> {
    let mut out = vec![Vec::new()];
    let mut used = 0;
    for p in peers {
        let size = json(&p).len() + 1;
        if used + size > room && !out.last().is_some_and(Vec::is_empty) {
            out.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(last) = out.last_mut() {
            last.push(p);
        }
    }
    out
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Channel {
    pub(super) async fn send(&mut self, kind: MsgType, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::with_capacity(frame::HEADER_LEN + payload.len());
        frame::encode(kind, 0, payload, &mut out).map_err(|e| e.to_string())?;
        self.ws
            .send(Message::Binary(out.into()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Send ERROR; Err(the message) so callers can `return` it.
    pub(super) async fn fail(&mut self, body: ErrorBody) -> Result<(), String> {
        let _ = self.send(MsgType::Error, &json(&body)).await;
        let _ = self.ws.send(Message::Close(None)).await;
        Err(format!("{} {}", body.code, body.message))
    }

    /// The next frame's bytes (None: closed).
    pub(super) async fn recv(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            match self.ws.recv().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(format!("receive: {e}")),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b.to_vec())),
                Some(Ok(Message::Text(_))) => {
                    return self
                        .fail(ErrorBody::new(
                            ErrorCode::InvalidMessage,
                            "frames are binary messages",
                        ))
                        .await
                        .map(|_| None)
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn serve(&mut self, app: &AppState) -> Result<(), String> {
        let first = match tokio::time::timeout(AUTH_TIMEOUT, self.recv()).await {
            Ok(r) => r?,
            Err(_) => {
                return self
                    .fail(ErrorBody::new(
                        ErrorCode::InvalidMessage,
                        "no AUTH_REQUEST within 10 s",
                    ))
                    .await
            }
        };
        let Some(msg) = first else { return Ok(()) };
        let req: AuthRequest = match frame::parse(&msg, MAX_CONTROL_PAYLOAD) {
            Err(e) => return self.fail(ErrorBody::new(e.code(), &e.to_string())).await,
            Ok(f) if f.kind != MsgType::AuthRequest => {
                let why = format!("expected AUTH_REQUEST, got {}", f.kind);
                return self
                    .fail(ErrorBody::new(ErrorCode::InvalidMessage, &why))
                    .await;
            }
            Ok(f) => match control::decode(f.payload) {
                Ok(r) => r,
                Err(body) => return self.fail(body).await,
            },
        };
        let reg = match nodes::register(&app.db, &req, now_ms()).await {
            Ok(r) => r,
            Err(refusal) => {
                return self
                    .fail(ErrorBody {
                        code: refusal.code.code(),
                        message: refusal.to_string(),
                        node_id: None,
                    })
                    .await
            }
        };
        let mut node = reg.node;
        if !node.authorized {
            let resp = AuthResponse {
                ok: false,
                node_id: node.id,
                network_id: node.network_id,
                error: Some(ErrorBody::new(
                    ErrorCode::NodeNotAuthorized,
                    "waiting for an operator to authorize this node",
                )),
                ..AuthResponse::default()
            };
            let _ = self.send(MsgType::AuthResponse, &json(&resp)).await;
            let _ = self.ws.send(Message::Close(None)).await;
            return Err(format!("node {} not authorized", node.id));
        }
        let net = node.network_id;
        let mut changes = app.mesh.subscribe();
        let ch = crate::domain::mesh::channels::Channel::new(&app.local_node_id);
        let result = self.session(app, &mut node, &mut changes, &ch).await;
        let _ = nodes::set_online(&app.db, node.id, false, &ch).await;
        app.mesh.changed(net);
        result
    }

    async fn session(
        &mut self,
        app: &AppState,
        node: &mut nodes::MeshNode,
        changes: &mut broadcast::Receiver<u32>,
        ch: &crate::domain::mesh::channels::Channel,
    ) -> Result<(), String> {
        let db = &app.db;
        let err = |e: crate::error::Error| e.to_string();
        nodes::set_online(db, node.id, true, ch)
            .await
            .map_err(err)?;
        app.mesh.changed(node.network_id);
        let signer = app.signer.mesh_signer();
        let auth = tokens::auth(db, &signer, node, now_ms())
            .await
            .map_err(err)?;
        let mut auth_exp = auth.claims.exp();
        let resp = AuthResponse {
            ok: true,
            node_id: node.id,
            virtual_ip: node.virtual_ip.clone(),
            network_id: node.network_id,
            auth_token: auth.token,
            error: None,
        };
        self.send(MsgType::AuthResponse, &json(&resp)).await?;
        let mut last = node_config(app, node).await?;
        let relay = tokens::relay(db, &signer, node, relay_ids(app).await?, now_ms())
            .await
            .map_err(err)?;
        last.relay_token = relay.token;
        last.relay_token_exp = relay.claims.exp();
        self.push_config(&last).await?;
        // A node that sends nothing (not even PING) for three keepalive
        // intervals is gone.
        let keepalive = settings::keepalive_s(db).await.map_err(err)?;
        let silence = Duration::from_secs(3 * keepalive);
        let mut heard = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(keepalive.min(30)));
        loop {
            tokio::select! {
                msg = self.recv() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    heard = tokio::time::Instant::now();
                    self.handle(app, node, &msg).await?;
                }
                _ = tick.tick() => {
                    if heard.elapsed() > silence {
                        return Err(format!("node {} silent for {} s", node.id, silence.as_secs()));
                    }
                    // Tokens refreshed before they run out (seed 003 §4.3:
                    // the auth token 2 h before, the relay token 15 min).
                    let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
                    let mut update = ConfigUpdate::default();
                    if last.relay_token_exp.saturating_sub(now_s) < 15 * 60 {
                        let t = tokens::relay(db, &signer, node, relay_ids(app).await?, now_ms())
                            .await
                            .map_err(err)?;
                        last.relay_token_exp = t.claims.exp();
                        update.relay_token = Some((t.token, t.claims.exp()));
                    }
                    if auth_exp.saturating_sub(now_s) < 2 * 3600 {
                        let t = tokens::auth(db, &signer, node, now_ms()).await.map_err(err)?;
                        auth_exp = t.claims.exp();
                        update.auth_token = Some((t.token, t.claims.exp()));
                    }
                    if update.relay_token.is_some() || update.auth_token.is_some() {
                        self.pushed += 1;
                        update.version = self.pushed;
                        self.send(MsgType::ConfigUpdate, &json(&update)).await?;
                    }
                }
                changed = changes.recv() => {
                    match changed {
                        Ok(n) if n != node.network_id && n != ALL_NETWORKS => continue,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                        _ => {}
                    }
                    match nodes::get(db, node.id).await {
                        Ok(n) if n.authorized => *node = n,
                        _ => {
                            // Tokens issued since the revocation ran (this
                            // channel may have been opening) go too.
                            let _ = tokens::revoke_node(db, node.id, "node deauthorized").await;
                            return self
                                .fail(ErrorBody::new(
                                    ErrorCode::NodeNotAuthorized,
                                    "this node was deauthorized or deleted",
                                ))
                                .await
                        }
                    }
                    let new = node_config(app, node).await?;
                    if let Some(mut update) = config::diff(&last, &new, 0) {
                        if update.relays.is_some() {
                            // The token names the relays that take it.
                            let t = tokens::relay(db, &signer, node, relay_ids(app).await?, now_ms())
                                .await
                                .map_err(err)?;
                            last.relay_token_exp = t.claims.exp();
                            update.relay_token = Some((t.token, t.claims.exp()));
                        }
                        self.push_update(update).await?;
                    }
                    last = Config {
                        version: self.pushed,
                        relay_token: std::mem::take(&mut last.relay_token),
                        relay_token_exp: last.relay_token_exp,
                        ..new
                    };
                }
            }
        }
    }

    /// Send CONFIG, its peers split over CONFIG_UPDATEs when one frame
    /// cannot hold them all.
    async fn push_config(&mut self, cfg: &Config) -> Result<(), String> {
        let mut head = cfg.clone();
        let chunks = chunk_peers(
            std::mem::take(&mut head.peers),
            MAX_CONTROL_PAYLOAD.saturating_sub(json(&head).len() + 16),
        );
        let mut chunks = chunks.into_iter();
        head.peers = chunks.next().unwrap_or_default();
        self.pushed += 1;
        head.version = self.pushed;
        self.send(MsgType::Config, &json(&head)).await?;
        for peers in chunks {
            self.pushed += 1;
            let u = ConfigUpdate {
                version: self.pushed,
                peers,
                ..ConfigUpdate::default()
            };
            self.send(MsgType::ConfigUpdate, &json(&u)).await?;
        }
        Ok(())
    }

    /// Send CONFIG_UPDATE, its peers split when one frame cannot hold them.
    async fn push_update(&mut self, mut update: ConfigUpdate) -> Result<(), String> {
        let peers = std::mem::take(&mut update.peers);
        let room = MAX_CONTROL_PAYLOAD.saturating_sub(json(&update).len() + 16);
        for (i, chunk) in chunk_peers(peers, room).into_iter().enumerate() {
            self.pushed += 1;
            let u = if i == 0 {
                ConfigUpdate {
                    version: self.pushed,
                    peers: chunk,
                    ..std::mem::take(&mut update)
                }
            } else {
                ConfigUpdate {
                    version: self.pushed,
                    peers: chunk,
                    ..ConfigUpdate::default()
                }
            };
            self.send(MsgType::ConfigUpdate, &json(&u)).await?;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        app: &AppState,
        node: &nodes::MeshNode,
        msg: &[u8],
    ) -> Result<(), String> {
        let f = match frame::parse(msg, MAX_CONTROL_PAYLOAD) {
            Ok(f) => f,
            Err(e) => return self.fail(ErrorBody::new(e.code(), &e.to_string())).await,
        };
        match f.kind {
            MsgType::Ping => self.send(MsgType::Pong, f.payload).await,
            MsgType::ConfigUpdate => {
                let upd: NodeKeyUpdate = match control::decode(f.payload) {
                    Ok(u) => u,
                    Err(body) => return self.fail(body).await,
                };
                if !self.rotations.take() {
                    let body = ErrorBody::new(
                        ErrorCode::Overloaded,
                        "node key rotations are limited to a burst of 5, then one a second; the key stays",
                    );
                    return self.send(MsgType::Error, &json(&body)).await;
                }
                match nodes::rotate_key(&app.db, node.id, &upd, now_ms()).await {
                    Ok(_) => {
                        app.mesh.changed(node.network_id);
                        Ok(())
                    }
                    // The key stays; the channel stays open.
                    Err(refusal) => {
                        let body = ErrorBody {
                            code: refusal.code.code(),
                            message: refusal.to_string(),
                            node_id: None,
                        };
                        self.send(MsgType::Error, &json(&body)).await
                    }
                }
            }
            other => {
                let why = format!("{other} is not accepted on the control channel");
                self.fail(ErrorBody::new(ErrorCode::InvalidMessage, &why))
                    .await
            }
        }
    }
}
