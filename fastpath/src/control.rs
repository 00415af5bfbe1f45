//! A client session ("control"): login, the encrypted control channel,
//! heartbeats, proxy registration and the work-connection pool.
//!
//! A control and everything that belongs to it lives on the worker that
//! accepted its Login. Steps: **authorize** (metas within their cap; the
//! token, ticket or tenant token) → **register** (run_id in the server
//! directory and the session counted against its limits, as one step: a
//! run_id belongs to the credential that opened it, so a login replaces an
//! older session with the same run_id only when it is of the same
//! credential, and otherwise gets a fresh run_id) → **serve** (messages until the channel ends or the heartbeat lapses) →
//! **close** (proxies, pool, directory entry).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use local_sync::{mpsc, oneshot};
use proto::msg::{
    Login, LoginResp, Message, NewProxyResp, NewWorkConn, Pong, ReqWorkConn, StartWorkConn,
};

use crate::conn::{Aborter, Conn, ConnReader, ConnWriter};
use crate::handoff::WorkerMsg;
use crate::msgio::{self, MsgError, MsgReader, MsgWriter, Wire};
use crate::policy::{Grant, LoginRefusal, TenantLive};
use crate::proxy::Proxy;
use crate::shared::{Registered, SessionRef, Shared};
use crate::stats::WorkerStats;
use crate::worker::WorkerCtx;
use proto::events::Event;
use proto::wire_v2::AeadAlgorithm;

/// Server version reported in LoginResp.
pub const SERVER_VERSION: &str = concat!("totoro-", env!("CARGO_PKG_VERSION"));

/// Most entries a Login's `metas` may have. frpc sends its `metadatas`
/// table there: a ticket and perhaps a few labels.
pub const MAX_LOGIN_METAS: usize = 64;

/// Most bytes of keys and values together in a Login's `metas` (a ticket
/// is about 400). Wire v1 frames stop at 10 KiB anyway; v2 frames go to
/// 64 KiB.
pub const MAX_LOGIN_METAS_BYTES: usize = 8 * 1024;

/// How the control channel is protected after Login.
pub enum ControlWire {
    /// v1: AES-CFB keyed by the token.
    V1,
    /// v2: the ServerHello frame to send before LoginResp, and the
    /// negotiated AEAD and handshake transcript the keys derive from with
    /// the session's token (or why negotiation failed).
    V2 {
        hello_frame: Vec<u8>,
        keys: Result<(AeadAlgorithm, [u8; 32]), String>,
    },
}

/// One logged-in frpc.
pub struct Control {
    /// Process-unique id.
    pub id: u64,
    /// frp's run_id for this session.
    pub run_id: String,
    /// Login details (user, version, metas).
    pub login: Login,
    /// The client's address.
    pub peer: SocketAddr,
    /// What the session was let in on (decides its proxy rules).
    pub grant: Grant,
    /// The frp token the session proved (the node's, or its tenant's):
    /// heartbeats and work connections are checked against it.
    pub token: String,
    /// The control and `useEncryption` key derived from `token`.
    pub token_key: [u8; 16],
    /// The tenant, for tenant-token sessions.
    pub tenant: Option<Arc<TenantLive>>,
    /// The yamux session the Login came on ([`Conn::mux_session`]); None
    /// for a control on a connection of its own (tcpMux off).
    carrier: Option<u64>,
    ctx: Rc<WorkerCtx>,
    tx: RefCell<Option<mpsc::unbounded::Tx<Message>>>,
    pool: RefCell<VecDeque<(Conn, Wire)>>,
    waiters: RefCell<VecDeque<oneshot::Sender<(Conn, Wire)>>>,
    pool_cap: usize,
    pool_count: usize,
    proxies: RefCell<HashMap<String, Rc<Proxy>>>,
    closed: Cell<bool>,
    aborter: Aborter,
    last_ping: Cell<Instant>,
}

/// Serve a connection whose first message was Login.
pub async fn run(
    ctx: Rc<WorkerCtx>,
    mut conn: Conn,
    reader: MsgReader,
    login: Login,
    peer: SocketAddr,
    cwire: ControlWire,
) {
    let shared = ctx.shared.clone();
    let cfg = &shared.config;
    let wire = reader.wire();
    // v2 answers the hello first, in the same write as LoginResp.
    let (mut preface, keys) = match cwire {
        ControlWire::V1 if wire == Wire::V2 => {
            WorkerStats::bump(&ctx.stats().protocol_errors, 1);
            tracing::warn!(%peer, reason = "v2 Login without ClientHello", "closing connection");
            return;
        }
        ControlWire::V1 => (Vec::new(), None),
        ControlWire::V2 { hello_frame, keys } => (hello_frame, Some(keys)),
    };
    let refuse = |reason: &str, preface: &mut Vec<u8>| {
        let error = if cfg.detailed_errors_to_client {
            reason.to_string()
        } else {
            "register control error".into()
        };
        let resp = Message::LoginResp(LoginResp {
            version: SERVER_VERSION.into(),
            run_id: String::new(),
            error,
        });
        msgio::encode_into(&resp, wire, preface);
        std::mem::take(preface)
    };

    // A v2 hello that agreed on no keys ends here.
    let v2_keys = match keys {
        Some(Err(reason)) => {
            let out = refuse(&reason, &mut preface);
            conn.finish(out).await;
            return;
        }
        Some(Ok(k)) => Some(k),
        None => None,
    };
    // Authorize (metas cap, credential), then register (settle the run_id
    // and count the session, as one step): one refusal path for all.
    let id = ctx.next_control_id();
    let me = SessionRef {
        worker: ctx.id,
        control_id: id,
    };
    let admitted = check_metas(&login)
        .and_then(|()| authorize(&shared, &login))
        .and_then(|a| {
            let reg = shared
                .directory
                .register(&login.run_id, a.grant, me, |reconnect| {
                    shared.policy.admit_session(a.grant, reconnect)
                })?;
            Ok((a, reg))
        });
    let (
        Authorized {
            grant,
            token,
            token_key,
            tenant,
        },
        Registered { run_id, replaced },
    ) = match admitted {
        Ok(x) => x,
        Err(r) => {
            tracing::info!(%peer, user = %login.user, invite = ?r.invite, reason = %r.reason, "login refused");
            let out = refuse(&r.reason, &mut preface);
            ctx.events.emit(Event::AuthFailed {
                peer: peer.to_string(),
                invite: r.invite,
                reason: r.reason,
            });
            conn.finish(out).await;
            return;
        }
    };
    if run_id != login.run_id && !login.run_id.is_empty() {
        tracing::info!(%peer, session = %run_id, asked = %login.run_id, invite = ?grant.invite(),
            "login asked for a run_id that belongs to another credential; it gets a session of its own");
    }
    if let Some(old) = replaced {
        // Same worker: close it now, before the new control takes its place
        // in this worker's run_id map (a Kick arriving later would not find
        // it there). Elsewhere: its owner closes it on the Kick.
        if old.worker == ctx.id {
            if let Some(c) = ctx.control_by_id(old.control_id) {
                c.close("replaced by a new login with the same run_id");
            }
        } else {
            let _ = shared.inboxes[old.worker].send(WorkerMsg::Kick {
                control_id: old.control_id,
            });
        }
    }
    let resp = Message::LoginResp(LoginResp {
        version: SERVER_VERSION.into(),
        run_id: run_id.clone(),
        error: String::new(),
    });
    msgio::encode_into(&resp, wire, &mut preface);
    if let Err(e) = conn.write_all(preface).await.0 {
        tracing::debug!(%peer, error = %e, "could not send LoginResp");
        shared.directory.remove_session(&run_id, me);
        shared.policy.release_session(grant);
        return;
    }
    let (writer_cipher, mut reader) = match v2_keys {
        None => {
            let mut reader = reader;
            reader.set_cfb(token_key);
            (MsgWriter::cfb(token_key), reader)
        }
        Some((alg, transcript)) => {
            let keys = proto::wire_v2::derive_keys(token.as_bytes(), &transcript, alg);
            let mut reader = reader;
            match (
                reader.set_aead(alg, keys.c2s),
                MsgWriter::aead(alg, keys.s2c),
            ) {
                (Ok(()), Ok(w)) => (w, reader),
                _ => {
                    tracing::warn!(%peer, "cannot set up the v2 control cipher");
                    shared.directory.remove_session(&run_id, me);
                    shared.policy.release_session(grant);
                    return;
                }
            }
        }
    };
    let _ = &mut reader;

    let (tx, rx) = mpsc::unbounded::channel();
    let pool_count = (login.pool_count.max(0) as usize).min(cfg.transport.max_pool_count as usize);
    let control = Rc::new(Control {
        id,
        run_id: run_id.clone(),
        login,
        peer,
        grant,
        token,
        token_key,
        tenant,
        carrier: conn.mux_session(),
        ctx: ctx.clone(),
        tx: RefCell::new(Some(tx)),
        pool: RefCell::new(VecDeque::new()),
        waiters: RefCell::new(VecDeque::new()),
        pool_cap: pool_count + 10,
        pool_count,
        proxies: RefCell::new(HashMap::new()),
        closed: Cell::new(false),
        aborter: conn.aborter(),
        last_ping: Cell::new(Instant::now()),
    });
    ctx.controls
        .borrow_mut()
        .insert(run_id.clone(), control.clone());
    WorkerStats::add(&ctx.stats().sessions, 1);
    tracing::info!(
        session = %run_id, %peer, user = %control.login.user, version = %control.login.version,
        invite = ?grant.invite(), transport = conn.kind(), wire = wire.name(), worker = ctx.id,
        "client logged in"
    );
    ctx.events.emit(Event::SessionOpen {
        run_id: run_id.clone(),
        invite: grant.invite(),
        user: control.login.user.clone(),
        version: control.login.version.clone(),
        peer: peer.to_string(),
    });

    // Serve.
    let (r, w) = conn.into_split();
    let writer = monoio::spawn(write_loop(w, rx, writer_cipher));
    for _ in 0..pool_count {
        control.send(Message::ReqWorkConn(ReqWorkConn {}));
    }
    if let Some(limit) = cfg.heartbeat_timeout(control.carrier.is_some()) {
        monoio::spawn(heartbeat_watch(control.clone(), limit));
    }
    let reason = read_loop(&control, r, reader).await;

    // Close.
    control.close(&reason);
    let _ = writer.await;
}

async fn write_loop(mut w: ConnWriter, mut rx: mpsc::unbounded::Rx<Message>, mut out: MsgWriter) {
    while let Some(msg) = rx.recv().await {
        out.push(&msg);
        // Batch whatever else is queued into the same write.
        while let Ok(m) = rx.try_recv() {
            out.push(&m);
        }
        if out.flush(&mut w).await.is_err() {
            break;
        }
    }
}

async fn heartbeat_watch(control: Rc<Control>, limit: Duration) {
    let tick = (limit / 4).max(Duration::from_millis(250));
    while !control.closed.get() {
        monoio::time::sleep(tick).await;
        if control.last_ping.get().elapsed() > limit {
            control.close("heartbeat timeout");
            break;
        }
    }
}

async fn read_loop(control: &Rc<Control>, mut r: ConnReader, mut reader: MsgReader) -> String {
    loop {
        let msg = match reader.next(&mut r).await {
            Ok(m) => m,
            Err(MsgError::Closed) => return "client closed the control connection".into(),
            Err(e) if e.is_malformed() => {
                WorkerStats::bump(&control.ctx.stats().protocol_errors, 1);
                let reason = format!("malformed control message: {e}");
                tracing::warn!(session = %control.run_id, %reason, "closing session");
                return reason;
            }
            Err(e) => return e.to_string(),
        };
        if control.closed.get() {
            return "closed".into();
        }
        control.handle(msg);
    }
}

impl Control {
    fn send(&self, msg: Message) {
        if let Some(tx) = &*self.tx.borrow() {
            let _ = tx.send(msg);
        }
    }

    fn handle(self: &Rc<Self>, msg: Message) {
        match msg {
            Message::NewProxy(np) => {
                let name = np.proxy_name.clone();
                let proxy_type = np.proxy_type.clone();
                let resp = match Proxy::register(self, np) {
                    Ok(proxy) => {
                        let remote_addr = proxy.remote_addr();
                        self.proxies.borrow_mut().insert(name.clone(), proxy);
                        NewProxyResp {
                            proxy_name: name,
                            remote_addr,
                            error: String::new(),
                        }
                    }
                    Err(reason) => {
                        tracing::info!(session = %self.run_id, proxy = %name, invite = ?self.grant.invite(), %reason, "proxy refused");
                        self.ctx.events.emit(Event::ProxyRejected {
                            run_id: self.run_id.clone(),
                            invite: self.grant.invite(),
                            proxy: name.clone(),
                            proxy_type,
                            reason: reason.clone(),
                        });
                        let error = if self.ctx.shared.config.detailed_errors_to_client {
                            reason
                        } else {
                            format!("new proxy [{name}] error")
                        };
                        NewProxyResp {
                            proxy_name: name,
                            remote_addr: String::new(),
                            error,
                        }
                    }
                };
                self.send(Message::NewProxyResp(resp));
            }
            Message::CloseProxy(cp) => {
                let p = self.proxies.borrow_mut().remove(&cp.proxy_name);
                if let Some(p) = p {
                    p.close("client closed the proxy");
                }
            }
            Message::Ping(ping) => {
                let cfg = &self.ctx.shared.config;
                let error = if cfg.auth_heartbeats()
                    && !proto::auth::verify_privilege_key(
                        &self.token,
                        ping.timestamp,
                        &ping.privilege_key,
                    ) {
                    "token in heartbeat doesn't match token from configuration".to_string()
                } else {
                    self.last_ping.set(Instant::now());
                    String::new()
                };
                self.send(Message::Pong(Pong { error }));
            }
            other => {
                tracing::debug!(session = %self.run_id, msg = other.name(), "ignoring unsupported control message");
            }
        }
    }

    /// The worker this control lives on.
    pub fn ctx(&self) -> &Rc<WorkerCtx> {
        &self.ctx
    }

    /// Check NewWorkConn auth when the `NewWorkConns` scope is on.
    pub fn check_work_conn_auth(&self, msg: &NewWorkConn) -> Result<(), String> {
        let cfg = &self.ctx.shared.config;
        if cfg.auth_work_conns()
            && !proto::auth::verify_privilege_key(&self.token, msg.timestamp, &msg.privilege_key)
        {
            return Err("token in NewWorkConn doesn't match token from configuration".into());
        }
        Ok(())
    }

    /// Check that a work connection came the way frpc sends it: with tcpMux
    /// on, frpc opens every work connection as a stream of the yamux
    /// session that carries its control, never anything else; so a stream
    /// of another session, or a separate connection for a yamux control, is
    /// someone who learnt the run_id offering to take this session's users.
    ///
    /// A control without tcpMux takes separate connections from anywhere,
    /// as frps does: tying them to the control's address would break
    /// clients behind NAT pools, whose connections leave from several.
    pub fn check_work_conn_carrier(&self, conn: &Conn) -> Result<(), &'static str> {
        match (self.carrier, conn.mux_session()) {
            (Some(ours), Some(theirs)) if ours == theirs => Ok(()),
            (Some(_), Some(_)) => Err("a yamux stream of another session"),
            (Some(_), None) => Err("a separate connection for a session that logged in over yamux"),
            (None, Some(_)) => Err("a yamux stream for a session that logged in without yamux"),
            (None, None) => Ok(()),
        }
    }

    /// A work connection arrived for this session.
    pub fn put_work_conn(&self, conn: Conn, wire: Wire) {
        if self.closed.get() {
            return;
        }
        let mut conn = (conn, wire);
        loop {
            let waiter = self.waiters.borrow_mut().pop_front();
            match waiter {
                Some(tx) => match tx.send(conn) {
                    Ok(()) => return,
                    Err(back) => conn = back,
                },
                None => break,
            }
        }
        let mut pool = self.pool.borrow_mut();
        if pool.len() >= self.pool_cap {
            tracing::debug!(session = %self.run_id, "work connection pool is full, discarding");
            return;
        }
        pool.push_back(conn);
    }

    /// Take a work connection for a user connection and start it with
    /// `start`. Follows frps: use a pooled one or ask for one and wait,
    /// then ask for another to refill the pool; retry over stale ones.
    pub async fn take_work_conn(&self, start: &StartWorkConn) -> Option<Conn> {
        let timeout = Duration::from_secs(self.ctx.shared.config.user_conn_timeout as u64);
        let start = Message::StartWorkConn(start.clone());
        for _ in 0..=self.pool_count {
            if self.closed.get() {
                return None;
            }
            let pooled = self.pool.borrow_mut().pop_front();
            let (mut conn, wire) = match pooled {
                Some(c) => c,
                None => {
                    let (tx, rx) = oneshot::channel();
                    self.waiters.borrow_mut().push_back(tx);
                    self.send(Message::ReqWorkConn(ReqWorkConn {}));
                    match monoio::time::timeout(timeout, rx).await {
                        Ok(Ok(c)) => c,
                        _ => {
                            tracing::info!(session = %self.run_id, "no work connection arrived in time");
                            return None;
                        }
                    }
                }
            };
            self.send(Message::ReqWorkConn(ReqWorkConn {}));
            let (r, _) = conn.write_all(msgio::encode(&start, wire)).await;
            if r.is_ok() {
                return Some(conn);
            }
        }
        None
    }

    /// Number of public ports this session's proxies hold.
    pub fn ports_in_use(&self) -> usize {
        self.proxies
            .borrow()
            .values()
            .filter(|p| p.port() != 0)
            .count()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// End the session because the policy no longer allows it: like
    /// [`Control::close`], and the visitor connections its proxies are
    /// relaying end too (a deleted token's transfers stop mid-way).
    pub fn close_for_policy(&self, reason: &str) {
        for p in self.proxies.borrow().values() {
            p.abort_relays();
        }
        self.close(reason);
    }

    /// End the session: close proxies and pooled connections, leave the
    /// directory, abort the control connection. Idempotent.
    pub fn close(&self, reason: &str) {
        if self.closed.replace(true) {
            return;
        }
        let ctx = &self.ctx;
        let proxies: Vec<_> = self.proxies.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in proxies {
            p.close("session closed");
        }
        self.pool.borrow_mut().clear();
        // Dropping the sender ends the writer task.
        self.tx.borrow_mut().take();
        self.waiters.borrow_mut().clear();
        ctx.shared.directory.remove_session(
            &self.run_id,
            SessionRef {
                worker: ctx.id,
                control_id: self.id,
            },
        );
        {
            let mut controls = ctx.controls.borrow_mut();
            if controls.get(&self.run_id).is_some_and(|c| c.id == self.id) {
                controls.remove(&self.run_id);
            }
        }
        // With yamux the whole session goes: frpc reconnects on its own,
        // and its work streams must not outlive the control.
        match &self.aborter {
            Aborter::Mux(conn, _) => conn.close(),
            a => a.abort(),
        }
        WorkerStats::add(&ctx.stats().sessions, -1);
        ctx.shared.policy.release_session(self.grant);
        ctx.events.emit(Event::SessionClose {
            run_id: self.run_id.clone(),
            invite: self.grant.invite(),
            reason: reason.to_string(),
        });
        tracing::info!(session = %self.run_id, peer = %self.peer, %reason, "session closed");
    }

    /// The proxies the session holds now.
    pub fn proxies(&self) -> Vec<Rc<Proxy>> {
        self.proxies.borrow().values().cloned().collect()
    }

    /// Number of proxies the session holds.
    pub fn proxy_count(&self) -> usize {
        self.proxies.borrow().len()
    }

    /// Report the bytes each proxy relayed since the last report.
    pub fn report_traffic(&self) {
        for p in self.proxies.borrow().values() {
            p.report_traffic(&self.ctx.events, false);
        }
    }
}

fn now_s() -> u64 {
    crate::events::now_ms() / 1000
}

/// What a login's credential let it in on.
struct Authorized {
    grant: Grant,
    /// The frp token it proved (the node's or its tenant's).
    token: String,
    /// The control key derived from `token`.
    token_key: [u8; 16],
    tenant: Option<Arc<TenantLive>>,
}

/// Check a Login's credential: the node token (then, under a policy, its
/// ticket or the node being public), else a tenant's token.
fn authorize(shared: &Shared, login: &Login) -> Result<Authorized, LoginRefusal> {
    let cfg = &shared.config;
    if proto::auth::verify_privilege_key(&cfg.auth.token, login.timestamp, &login.privilege_key) {
        let grant = shared.policy.authorize_login(login, now_s())?;
        return Ok(Authorized {
            grant,
            token: cfg.auth.token.clone(),
            token_key: shared.token_key,
            tenant: None,
        });
    }
    match shared.policy.authorize_tenant(login)? {
        Some((grant, live)) => Ok(Authorized {
            grant,
            token: live.token.clone(),
            token_key: proto::cfb::derive_key(live.token.as_bytes()),
            tenant: Some(live),
        }),
        None => Err(LoginRefusal {
            reason: "token in login doesn't match token from configuration".into(),
            invite: None,
        }),
    }
}

/// Refuse a Login whose `metas` are over [`MAX_LOGIN_METAS`] entries or
/// [`MAX_LOGIN_METAS_BYTES`] bytes: a session keeps its Login while it
/// lives, so what a client sends here is memory it holds on the node.
fn check_metas(login: &Login) -> Result<(), LoginRefusal> {
    let count = login.metas.len();
    let bytes: usize = login.metas.iter().map(|(k, v)| k.len() + v.len()).sum();
    let reason = if count > MAX_LOGIN_METAS {
        format!("Login carries {count} metas; at most {MAX_LOGIN_METAS} are accepted (metadatas in frpc.toml)")
    } else if bytes > MAX_LOGIN_METAS_BYTES {
        format!("Login metas hold {bytes} bytes of keys and values; at most {MAX_LOGIN_METAS_BYTES} are accepted (metadatas in frpc.toml)")
    } else {
        return Ok(());
    };
    Err(LoginRefusal {
        reason,
        invite: None,
    })
}
