//! Seed 003's server channel, `/ws/server`: a relay (or STUN server)
//! registers with its server token (SERVER_REGISTER), gets AUTH_RESPONSE,
//! CONFIG (its id, the relays to link with, the keys tokens are signed
//! with), the whole token blacklist (SERVER_BLACKLIST) and every node's
//! location (SERVER_NODE_LOC); after that only what changed, as it
//! changes. It reports the nodes connected to it with SERVER_NODE_LOC and
//! answers nothing else but PING. A server whose token is regenerated or
//! blacklisted, or that is disabled or deleted, is cut off at once with
//! 1002/1003.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proto::mesh::control::{
    self, AuthResponse, Blacklist, ErrorBody, NodeLocations, ServerConfig, ServerNodes,
    ServerRegister,
};
use proto::mesh::token::Trust;
use proto::mesh::{frame, ErrorCode, MsgType};
use tokio::sync::broadcast;

use super::mesh_ws::{json, upgrade, Channel, AUTH_TIMEOUT, MAX_CONTROL_PAYLOAD};
use super::AppState;
use crate::clock::now_ms;
use crate::domain::mesh::channels;
use crate::domain::mesh::servers::{self, Server};
use crate::domain::mesh::{settings, tokens};

/// Blacklist entries or locations in one frame; more go in several.
const PER_FRAME: usize = 1000;

/// `GET /ws/server`.
pub async fn server(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(app, peer, ws, |socket, app| async move {
        let mut ch = ServerChannel {
            ch: Channel {
                ws: socket,
                pushed: 0,
                rotations: Default::default(),
            },
            blacklist: BTreeSet::new(),
            locations: BTreeSet::new(),
            nodes: BTreeSet::new(),
            config: ServerConfig::default(),
            link_tokens: Default::default(),
        };
        if let Err(why) = ch.serve(&app).await {
            tracing::info!(%why, "mesh server channel closed");
        }
    })
}

/// The keys mesh tokens are verified with, as (kid, public key).
fn trust_keys(app: &AppState) -> Vec<(String, [u8; 32])> {
    vec![(app.signer.kid().to_owned(), app.signer.public_key())]
}

struct ServerChannel {
    ch: Channel,
    /// What the server was told: blacklisted jtis, (node, server) pairs
    /// and its CONFIG.
    blacklist: BTreeSet<String>,
    locations: BTreeSet<(u32, u32)>,
    /// The authorized (node, network) pairs it was told (relays only).
    nodes: BTreeSet<(u32, u32)>,
    config: ServerConfig,
    /// Link tokens made for it.
    link_tokens: servers::LinkTokens,
}

impl ServerChannel {
    async fn serve(&mut self, app: &AppState) -> Result<(), String> {
        let first = match tokio::time::timeout(AUTH_TIMEOUT, self.ch.recv()).await {
            Ok(r) => r?,
            Err(_) => {
                return self
                    .ch
                    .fail(ErrorBody::new(
                        ErrorCode::InvalidMessage,
                        "no SERVER_REGISTER within 10 s",
                    ))
                    .await
            }
        };
        let Some(msg) = first else { return Ok(()) };
        let reg: ServerRegister = match frame::parse(&msg, MAX_CONTROL_PAYLOAD) {
            Err(e) => return self.ch.fail(ErrorBody::new(e.code(), &e.to_string())).await,
            Ok(f) if f.kind != MsgType::ServerRegister => {
                let why = format!("expected SERVER_REGISTER, got {}", f.kind);
                return self
                    .ch
                    .fail(ErrorBody::new(ErrorCode::InvalidMessage, &why))
                    .await;
            }
            Ok(f) => match control::decode(f.payload) {
                Ok(r) => r,
                Err(body) => return self.ch.fail(body).await,
            },
        };
        let server = match authenticate(app, &reg.token).await {
            Ok(s) => s,
            Err(body) => return self.ch.fail(body).await,
        };
        let id = server.id;
        let mut changes = app.mesh.subscribe();
        tracing::info!(server = id, name = %server.name, version = %reg.version, "mesh server registered");
        // Held here from now on (a start of another control plane on the
        // same database leaves this relay's locations alone).
        let ch = channels::Channel::new(&app.local_node_id);
        if let Err(e) = channels::open(&app.db, channels::Kind::Server, id, &ch).await {
            tracing::warn!(server = id, error = %e, "cannot record the relay's channel");
        }
        let result = self.session(app, server, &reg.token, &mut changes).await;
        let _ = servers::heartbeat(&app.db, id, now_ms()).await;
        // Its nodes are no longer known to be there (it reports them all
        // again when it comes back), unless it already came back on a
        // newer channel, here or through another control plane.
        let ours = channels::close(&app.db, channels::Kind::Server, id, &ch)
            .await
            .unwrap_or(true);
        if ours
            && servers::report_locations(&app.db, id, true, &[], &[], now_ms())
                .await
                .is_ok()
        {
            app.mesh.locations_changed();
        }
        result
    }
}

/// The server `token` names, or the ERROR that refuses it.
async fn authenticate(app: &AppState, token: &str) -> Result<Server, ErrorBody> {
    let keys = trust_keys(app);
    let trust = Trust {
        ed25519: &keys,
        hs256: app.signer.mesh_secret().map(str::as_bytes),
    };
    match servers::authenticate(&app.db, token, &trust, now_ms()).await {
        Ok((s, _)) => Ok(s),
        Err(servers::Refusal::Store(e)) => {
            tracing::error!(error = %e, "mesh server channel: store");
            Err(ErrorBody::new(ErrorCode::Internal, ""))
        }
        Err(refusal) => Err(ErrorBody {
            code: refusal.code().code(),
            message: refusal.to_string(),
            node_id: None,
        }),
    }
}

impl ServerChannel {
    async fn session(
        &mut self,
        app: &AppState,
        server: Server,
        token: &str,
        changes: &mut broadcast::Receiver<u32>,
    ) -> Result<(), String> {
        let db = &app.db;
        let id = server.id;
        let mut relays = server.relays();
        servers::heartbeat(db, id, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        let resp = AuthResponse {
            ok: true,
            ..AuthResponse::default()
        };
        self.ch.send(MsgType::AuthResponse, &json(&resp)).await?;
        self.push(app, &server).await?;
        let keepalive = settings::keepalive_s(db).await.map_err(|e| e.to_string())?;
        let silence = Duration::from_secs(3 * keepalive);
        let mut heard = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(keepalive.min(30)));
        // Link tokens are renewed when half their life is gone: a look
        // every ten minutes finds out (an unchanged CONFIG is not sent).
        let mut renew = tokio::time::interval(Duration::from_secs(600));
        renew.tick().await;
        loop {
            tokio::select! {
                msg = self.ch.recv() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    heard = tokio::time::Instant::now();
                    self.handle(app, id, relays, &msg).await?;
                }
                _ = tick.tick() => {
                    if heard.elapsed() > silence {
                        return Err(format!("server {id} silent for {} s", silence.as_secs()));
                    }
                }
                _ = renew.tick() => self.push(app, &server).await?,
                changed = changes.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = changed {
                        return Ok(());
                    }
                    // Its token may have been replaced or revoked, the
                    // server disabled or deleted.
                    let server = match authenticate(app, token).await {
                        Ok(s) => s,
                        Err(body) => return self.ch.fail(body).await,
                    };
                    relays = server.relays();
                    self.push(app, &server).await?;
                }
            }
        }
    }

    /// Send what changed since the last push: CONFIG, new blacklist
    /// entries, node locations.
    async fn push(&mut self, app: &AppState, server: &Server) -> Result<(), String> {
        let db = &app.db;
        let err = |e: crate::error::Error| e.to_string();
        let relays = servers::relays(db).await.map_err(err)?;
        let links = if server.relays() && server.enabled {
            let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
            self.link_tokens
                .for_relay(&app.signer.mesh_signer(), server.id, &relays, now_s)
        } else {
            Vec::new()
        };
        let config = ServerConfig {
            server_id: server.id,
            name: server.name.clone(),
            relays,
            token_keys: trust_keys(app)
                .into_iter()
                .map(|(kid, k)| (kid, STANDARD.encode(k)))
                .collect(),
            links,
        };
        if config != self.config {
            self.ch.send(MsgType::Config, &json(&config)).await?;
            self.config = config;
        }
        let first = self.ch.pushed == 0;
        self.ch.pushed += 1;
        let list = tokens::blacklist(db).await.map_err(err)?;
        let fresh: Vec<(String, u64)> = list
            .iter()
            .filter(|(jti, _)| !self.blacklist.contains(jti))
            .cloned()
            .collect();
        // Expired entries are dropped here as the controller drops them.
        self.blacklist = list.into_iter().map(|(j, _)| j).collect();
        if first || !fresh.is_empty() {
            let mut chunks = fresh.chunks(PER_FRAME).peekable();
            if chunks.peek().is_none() {
                let b = Blacklist {
                    full: true,
                    entries: Vec::new(),
                };
                self.ch.send(MsgType::ServerBlacklist, &json(&b)).await?;
            }
            for (i, chunk) in chunks.enumerate() {
                let b = Blacklist {
                    full: first && i == 0,
                    entries: chunk.to_vec(),
                };
                self.ch.send(MsgType::ServerBlacklist, &json(&b)).await?;
            }
        }
        if server.relays() {
            let now: BTreeSet<(u32, u32)> = crate::domain::mesh::nodes::list(db, None)
                .await
                .map_err(err)?
                .into_iter()
                .filter(|n| n.authorized)
                .map(|n| (n.id, n.network_id))
                .collect();
            let added: Vec<(u32, u32)> = now.difference(&self.nodes).copied().collect();
            let removed: Vec<(u32, u32)> = self.nodes.difference(&now).copied().collect();
            if first || !added.is_empty() || !removed.is_empty() {
                for (full, nodes, removed) in control::pieces(&added, &removed, PER_FRAME, first) {
                    let f = ServerNodes {
                        full,
                        nodes,
                        removed,
                    };
                    self.ch.send(MsgType::ConfigUpdate, &json(&f)).await?;
                }
                self.nodes = now;
            }
        }
        let now: BTreeSet<(u32, u32)> = servers::locations(db)
            .await
            .map_err(err)?
            .into_iter()
            .collect();
        let added: Vec<(u32, u32)> = now.difference(&self.locations).copied().collect();
        let removed: Vec<(u32, u32)> = self.locations.difference(&now).copied().collect();
        if first || !added.is_empty() || !removed.is_empty() {
            for (full, locations, removed) in control::pieces(&added, &removed, PER_FRAME, first) {
                let f = NodeLocations {
                    full,
                    locations,
                    removed,
                };
                self.ch.send(MsgType::ServerNodeLoc, &json(&f)).await?;
            }
            self.locations = now;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        app: &AppState,
        id: u32,
        relays: bool,
        msg: &[u8],
    ) -> Result<(), String> {
        let f = match frame::parse(msg, MAX_CONTROL_PAYLOAD) {
            Ok(f) => f,
            Err(e) => return self.ch.fail(ErrorBody::new(e.code(), &e.to_string())).await,
        };
        match f.kind {
            MsgType::Ping => {
                servers::heartbeat(&app.db, id, now_ms())
                    .await
                    .map_err(|e| e.to_string())?;
                self.ch.send(MsgType::Pong, f.payload).await
            }
            MsgType::ServerNodeLoc if !relays => {
                let why = format!("server {id} is not a relay: it holds no nodes");
                self.ch
                    .fail(ErrorBody::new(ErrorCode::InvalidMessage, &why))
                    .await
            }
            MsgType::ServerNodeLoc => {
                let report: NodeLocations = match control::decode(f.payload) {
                    Ok(r) => r,
                    Err(body) => return self.ch.fail(body).await,
                };
                // A server speaks for itself only.
                if let Some((node, other)) = report
                    .locations
                    .iter()
                    .chain(&report.removed)
                    .find(|(_, s)| *s != id)
                {
                    let why = format!(
                        "server {id} reported node {node} on server {other}: a server reports its own nodes"
                    );
                    return self
                        .ch
                        .fail(ErrorBody::new(ErrorCode::InvalidMessage, &why))
                        .await;
                }
                let added: Vec<u32> = report.locations.iter().map(|(n, _)| *n).collect();
                let removed: Vec<u32> = report.removed.iter().map(|(n, _)| *n).collect();
                servers::report_locations(&app.db, id, report.full, &added, &removed, now_ms())
                    .await
                    .map_err(|e| e.to_string())?;
                app.mesh.locations_changed();
                Ok(())
            }
            other => {
                let why = format!("{other} is not accepted on the server channel");
                self.ch
                    .fail(ErrorBody::new(ErrorCode::InvalidMessage, &why))
                    .await
            }
        }
    }
}
