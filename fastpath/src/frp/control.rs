//! A client session ("control"): login, the encrypted control channel,
//! heartbeats, proxy registration and the work-connection pool.
//!
//! A control and everything that belongs to it lives on the worker that
//! accepted its Login. Its life, as the steps of [`run`]:
//!
//! 1. **hello** (`hello`) — wire v2's ServerHello and the keys it agreed
//!    on (v1 has none).
//! 2. **admit** (`admit`) — authorize (metas within their cap; the token,
//!    ticket or tenant token), then register (run_id in the server
//!    directory and the session counted against its limits, as one step: a
//!    run_id belongs to the credential that opened it, so a login replaces
//!    an older session with the same run_id only when it is of the same
//!    credential, and otherwise gets a fresh run_id); or **refuse**
//!    (`refuse_login`).
//! 3. **replace** (`replace_older`) — close the older session of the
//!    same credential and run_id, here or on its worker.
//! 4. **answer** (`answer_login`, `channel_cipher`) — LoginResp, then
//!    the channel's cipher from here on.
//! 5. **open** (`open`) — the [`Control`] joins this worker's
//!    [`Sessions`]; frpc is asked for its pool of work connections.
//! 6. **serve** (`serve`) — messages (`Control::handle`: NewProxy,
//!    CloseProxy, Ping) until the channel ends or the heartbeat lapses.
//! 7. **close** ([`Control::close`]) — proxies, pool, directory entry, the
//!    connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use local_sync::mpsc;
use proto::msg::{
    Login, LoginResp, Message, NewProxyResp, NewWorkConn, Pong, ReqWorkConn, StartWorkConn,
};

use crate::frp::msgio::{self, MsgError, MsgReader, MsgWriter, Wire};
use crate::frp::proxy::Proxy;
use crate::frp::work_conns::pool::{NoWorkConn, WorkConnPool};
use crate::frp::xtcp;
use crate::policy::{Grant, TenantLive};
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::runtime::shared::{Registered, SessionRef, Shared};
use crate::transport::conn::{Aborter, Conn, ConnReader, ConnWriter};
use crate::transport::handoff::WorkerMsg;
use proto::events::Event;
use proto::policy::{decide, Refusal, RefusalKind};
use proto::wire_v2::AeadAlgorithm;

/// Server version reported in LoginResp.
pub const SERVER_VERSION: &str = concat!("totoro-", env!("CARGO_PKG_VERSION"));

pub use proto::policy::decide::{MAX_LOGIN_METAS, MAX_LOGIN_METAS_BYTES};

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

/// The sessions one worker owns, by run_id: where a work connection finds
/// its session, and what the worker closes on a kick, a policy change or
/// shutdown. A control enters when its Login is answered and leaves when it
/// closes.
#[derive(Default)]
pub struct Sessions {
    by_run_id: RefCell<HashMap<String, Rc<Control>>>,
}

impl Sessions {
    /// The local session with this run_id.
    pub fn get(&self, run_id: &str) -> Option<Rc<Control>> {
        self.by_run_id.borrow().get(run_id).cloned()
    }

    /// The local session with this control id.
    pub fn by_id(&self, id: u64) -> Option<Rc<Control>> {
        self.by_run_id
            .borrow()
            .values()
            .find(|c| c.who.id == id)
            .cloned()
    }

    /// Every local session now (a copy: closing one changes the map).
    pub fn all(&self) -> Vec<Rc<Control>> {
        self.by_run_id.borrow().values().cloned().collect()
    }

    fn insert(&self, control: Rc<Control>) {
        self.by_run_id
            .borrow_mut()
            .insert(control.who.run_id.clone(), control);
    }

    /// Remove `control` if it is still the session under its run_id (a
    /// replaced one must not remove its successor).
    fn remove(&self, control: &Control) {
        let mut map = self.by_run_id.borrow_mut();
        if map
            .get(&control.who.run_id)
            .is_some_and(|c| c.who.id == control.who.id)
        {
            map.remove(&control.who.run_id);
        }
    }
}

/// One logged-in frpc, in parts: who it is ([`Identity`]) and what its
/// credential let it in on ([`Authorized`]) (public: its proxies and the
/// worker read them), the control `Channel`, its [`WorkConnPool`], its
/// proxies, and the worker it lives on.
pub struct Control {
    /// Who the session is.
    pub who: Identity,
    /// What its credential let it in on.
    pub auth: Authorized,
    /// The control connection.
    channel: Channel,
    /// Work connections frpc opened, waiting for user connections.
    pool: WorkConnPool,
    /// The session's proxies, by name.
    proxies: RefCell<HashMap<String, Rc<Proxy>>>,
    /// The worker it lives on, and the sessions it is one of there.
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    closed: Cell<bool>,
}

/// Who a session is.
pub struct Identity {
    /// Process-unique id.
    pub id: u64,
    /// frp's run_id for this session.
    pub run_id: String,
    /// Login details (user, version, metas).
    pub login: Login,
    /// The client's address.
    pub peer: SocketAddr,
}

/// The control connection, as the session holds it: the queue its writer
/// task sends from (the cipher lives in that task), what aborts it, the
/// yamux session it rides on, and when frpc last sent a heartbeat.
struct Channel {
    outbox: RefCell<Option<mpsc::unbounded::Tx<Message>>>,
    /// What sits in the outbox, shared with the writer task.
    backlog: Rc<Backlog>,
    aborter: Aborter,
    /// The yamux session the Login came on ([`Conn::mux_session`]); None
    /// for a control on a connection of its own (tcpMux off).
    carrier: Option<u64>,
    last_ping: Cell<Instant>,
}

impl Channel {
    /// The channel over `conn`, and the queue its writer task drains.
    fn new(conn: &Conn) -> (Channel, mpsc::unbounded::Rx<Message>) {
        let (tx, rx) = mpsc::unbounded::channel();
        let channel = Channel {
            outbox: RefCell::new(Some(tx)),
            backlog: Rc::new(Backlog {
                queued: Cell::new(0),
                waker: RefCell::new(None),
                last_write: Cell::new(Instant::now()),
            }),
            aborter: conn.aborter(),
            carrier: conn.mux_session(),
            last_ping: Cell::new(Instant::now()),
        };
        (channel, rx)
    }

    /// Queue a message for frpc (dropped once the channel is closed).
    fn send(&self, msg: Message) {
        if let Some(tx) = &*self.outbox.borrow() {
            if tx.send(msg).is_ok() {
                self.backlog.queued.set(self.backlog.queued.get() + 1);
            }
        }
    }

    /// End the writer task and abort the connection. With yamux the whole
    /// session goes: frpc reconnects on its own, and its work streams must
    /// not outlive the control.
    fn close(&self) {
        // Dropping the sender ends the writer task.
        self.outbox.borrow_mut().take();
        match &self.aborter {
            Aborter::Mux(conn, _) => conn.close(),
            a => a.abort(),
        }
    }
}

/// Messages queued for frpc and not yet written. The outbox itself is
/// unbounded; what bounds it is that the read loop stops reading while
/// this is over `fastpath.controlQueue` (replies only answer what frpc
/// sends, ReqWorkConn are bounded by `fastpath.pendingUserConns`), as frps
/// stops reading a client that does not read.
struct Backlog {
    queued: Cell<usize>,
    /// The read loop, waiting for the writer to catch up.
    waker: RefCell<Option<Waker>>,
    /// When the writer last finished a write.
    last_write: Cell<Instant>,
}

impl Backlog {
    /// The writer wrote `n` messages.
    fn written(&self, n: usize) {
        self.queued.set(self.queued.get().saturating_sub(n));
        self.last_write.set(Instant::now());
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits while more than `limit` messages are queued; Err once the
    /// writer has written nothing for `stall`.
    async fn room(&self, limit: usize, stall: Duration) -> Result<(), String> {
        while self.queued.get() > limit {
            let stalled = self.last_write.get().elapsed();
            if stalled >= stall {
                return Err(format!(
                    "client reads nothing: {} messages queued for it for {} s (fastpath.writeStallSecs)",
                    self.queued.get(),
                    stalled.as_secs()
                ));
            }
            let wait = std::future::poll_fn(|cx| {
                if self.queued.get() <= limit {
                    return std::task::Poll::Ready(());
                }
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            });
            let _ = monoio::time::timeout(Duration::from_secs(1), wait).await;
        }
        Ok(())
    }
}

/// Serve a connection whose first message was Login, step by step (see
/// the module's map).
pub async fn run(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    mut conn: Conn,
    reader: MsgReader,
    login: Login,
    peer: SocketAddr,
    cwire: ControlWire,
) {
    let wire = reader.wire();
    let Some(Hello { preface, keys }) = hello(&ctx, cwire, wire, peer) else {
        return;
    };
    // A v2 hello that agreed on no keys ends here.
    let keys = match keys {
        Ok(keys) => keys,
        Err(reason) => {
            let out = login_refusal(&ctx, &reason, wire, preface);
            conn.finish(out).await;
            return;
        }
    };
    let me = SessionRef {
        worker: ctx.id,
        control_id: ctx.next_control_id(),
    };
    let decided = std::time::Instant::now();
    let admitted = admit(&ctx.shared, &login, me);
    ctx.timings.login(admitted.is_ok(), decided.elapsed());
    let (authorized, Registered { run_id, replaced }) = match admitted {
        Ok(x) => x,
        Err(r) => return refuse_login(&ctx, conn, &login, peer, r, wire, preface).await,
    };
    if run_id != login.run_id && !login.run_id.is_empty() {
        tracing::info!(%peer, session = %run_id, asked = %login.run_id, invite_id = ?authorized.grant.invite(),
            "login asked for a run_id that belongs to another credential; it gets a session of its own");
    }
    if let Some(old) = replaced {
        replace_older(&ctx, &sessions, old);
    }
    // A real client: the connection it opened counts no more against its
    // address's pre-auth rate.
    ctx.preauth.identified(peer.ip());
    // The yamux session that carried the Login may now open the streams a
    // logged-in frpc opens (work connections), with full windows.
    if let Conn::Mux(stream) = &conn {
        stream.conn().admit();
    }
    let answered = match answer_login(&mut conn, preface, &run_id, wire).await {
        Ok(()) => channel_cipher(reader, keys, &authorized, peer),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "could not send LoginResp");
            None
        }
    };
    let Some((reader, writer)) = answered else {
        ctx.shared.directory.remove_session(&run_id, me);
        ctx.shared.policy.release_session(authorized.grant);
        return;
    };
    let who = Identity {
        id: me.control_id,
        run_id,
        login,
        peer,
    };
    let (control, outbox) = open(&ctx, &sessions, &conn, wire, who, authorized);
    serve(&control, conn, reader, writer, outbox).await;
}

/// What a v2 ClientHello asks the server to say before LoginResp, and the
/// keys it agreed on.
struct Hello {
    /// Bytes to send ahead of LoginResp (v2: the ServerHello frame).
    preface: Vec<u8>,
    /// v2: the AEAD and the handshake transcript the channel keys derive
    /// from, or why negotiation failed; v1: none.
    keys: Result<Option<(AeadAlgorithm, [u8; 32])>, String>,
}

/// Step 1: the hello's answer and keys; None (the connection is closed)
/// for a v2 Login that came without a ClientHello.
fn hello(ctx: &WorkerCtx, cwire: ControlWire, wire: Wire, peer: SocketAddr) -> Option<Hello> {
    match cwire {
        ControlWire::V1 if wire == Wire::V2 => {
            WorkerStats::bump(&ctx.stats().protocol_errors, 1);
            tracing::warn!(%peer, reason = "v2 Login without ClientHello", "closing connection");
            None
        }
        ControlWire::V1 => Some(Hello {
            preface: Vec::new(),
            keys: Ok(None),
        }),
        ControlWire::V2 { hello_frame, keys } => Some(Hello {
            preface: hello_frame,
            keys: keys.map(Some),
        }),
    }
}

/// The LoginResp that refuses a login, after `preface`: the reason when
/// the config sends details to clients, frps's generic words otherwise.
fn login_refusal(ctx: &WorkerCtx, reason: &str, wire: Wire, mut preface: Vec<u8>) -> Vec<u8> {
    let error = if ctx.shared.config.detailed_errors_to_client {
        reason.to_string()
    } else {
        "register control error".into()
    };
    let resp = Message::LoginResp(LoginResp {
        version: SERVER_VERSION.into(),
        run_id: String::new(),
        error,
    });
    msgio::encode_into(&resp, wire, &mut preface);
    preface
}

/// Step 2: authorize (metas cap, credential), then register (settle the
/// run_id and count the session, as one step): one refusal path for all.
fn admit(
    shared: &Shared,
    login: &Login,
    me: SessionRef,
) -> Result<(Authorized, Registered), Refusal> {
    decide::login_metas(&login.metas)
        .and_then(|()| authorize(shared, login))
        .and_then(|a| {
            let reg = shared.directory.register(
                &login.run_id,
                a.grant,
                &login.user,
                me,
                |reconnect| shared.policy.admit_session(a.grant, reconnect),
            )?;
            Ok((a, reg))
        })
}

/// Step 2, refused: log, answer, report and close.
async fn refuse_login(
    ctx: &WorkerCtx,
    conn: Conn,
    login: &Login,
    peer: SocketAddr,
    r: Refusal,
    wire: Wire,
    preface: Vec<u8>,
) {
    tracing::info!(%peer, user = %login.user, invite_id = ?r.invite, kind = %r.kind, reason = %r.detail, "login refused");
    let out = login_refusal(ctx, &r.detail, wire, preface);
    ctx.events.emit(Event::AuthFailed {
        peer: peer.to_string(),
        invite: r.invite,
        reason: r.detail,
        refusal: Some(r.kind),
    });
    conn.finish(out).await;
}

/// Step 3: close the older session this login replaces. Same worker: now,
/// before the new control takes its place in this worker's sessions (a
/// Kick arriving later would not find it there). Elsewhere: its owner
/// closes it on the Kick.
fn replace_older(ctx: &WorkerCtx, sessions: &Sessions, old: SessionRef) {
    if old.worker == ctx.id {
        if let Some(c) = sessions.by_id(old.control_id) {
            c.close("replaced by a new login with the same run_id");
        }
    } else {
        let _ = ctx.shared.inboxes[old.worker].send(WorkerMsg::Kick {
            control_id: old.control_id,
        });
    }
}

/// Step 4: send LoginResp (after the hello's preface, in one write).
async fn answer_login(
    conn: &mut Conn,
    mut preface: Vec<u8>,
    run_id: &str,
    wire: Wire,
) -> std::io::Result<()> {
    let resp = Message::LoginResp(LoginResp {
        version: SERVER_VERSION.into(),
        run_id: run_id.to_owned(),
        error: String::new(),
    });
    msgio::encode_into(&resp, wire, &mut preface);
    conn.write_all(preface).await.0
}

/// Step 4, then: the channel's cipher both ways from here on: v1 AES-CFB
/// keyed by the token, v2 the negotiated AEAD with keys derived from the
/// token and the hello transcript. None if v2's cannot be set up.
fn channel_cipher(
    mut reader: MsgReader,
    keys: Option<(AeadAlgorithm, [u8; 32])>,
    authorized: &Authorized,
    peer: SocketAddr,
) -> Option<(MsgReader, MsgWriter)> {
    match keys {
        None => {
            reader.set_cfb(authorized.token_key);
            Some((reader, MsgWriter::cfb(authorized.token_key)))
        }
        Some((alg, transcript)) => {
            let keys = proto::wire_v2::derive_keys(authorized.token.as_bytes(), &transcript, alg);
            match (
                reader.set_aead(alg, keys.c2s),
                MsgWriter::aead(alg, keys.s2c),
            ) {
                (Ok(()), Ok(w)) => Some((reader, w)),
                _ => {
                    tracing::warn!(%peer, "cannot set up the v2 control cipher");
                    None
                }
            }
        }
    }
}

/// Step 5: the session opens: its Control joins this worker's sessions,
/// counted, logged and reported. Returns the queue the writer task drains.
fn open(
    ctx: &Rc<WorkerCtx>,
    sessions: &Rc<Sessions>,
    conn: &Conn,
    wire: Wire,
    who: Identity,
    auth: Authorized,
) -> (Rc<Control>, mpsc::unbounded::Rx<Message>) {
    let cfg = &ctx.shared.config;
    let asked = who.login.pool_count.max(0) as usize;
    let pool_count = asked.min(cfg.transport.max_pool_count as usize);
    let (grant, peer) = (auth.grant, who.peer);
    let (channel, outbox) = Channel::new(conn);
    let control = Rc::new(Control {
        who,
        auth,
        channel,
        pool: WorkConnPool::new(pool_count, cfg.fastpath.pending_user_conns),
        proxies: RefCell::new(HashMap::new()),
        ctx: ctx.clone(),
        sessions: sessions.clone(),
        closed: Cell::new(false),
    });
    sessions.insert(control.clone());
    WorkerStats::add(&ctx.stats().sessions, 1);
    tracing::info!(
        session = %control.who.run_id, %peer, user = %control.who.login.user, version = %control.who.login.version,
        invite_id = ?grant.invite(), transport = conn.kind(), wire = wire.name(), worker = ctx.id,
        "client logged in"
    );
    ctx.events.emit(Event::SessionOpen {
        run_id: control.who.run_id.clone(),
        invite: grant.invite(),
        user: control.who.login.user.clone(),
        version: control.who.login.version.clone(),
        peer: peer.to_string(),
    });
    (control, outbox)
}

/// Steps 6 and 7: ask frpc for its pool, watch its heartbeats, handle its
/// messages until the channel ends; then close the session and let the
/// writer finish.
async fn serve(
    control: &Rc<Control>,
    conn: Conn,
    reader: MsgReader,
    writer: MsgWriter,
    outbox: mpsc::unbounded::Rx<Message>,
) {
    let (r, w) = conn.into_split();
    let backlog = control.channel.backlog.clone();
    let writer = monoio::spawn(write_loop(w, outbox, writer, backlog));
    for _ in 0..control.pool.count() {
        control.send(Message::ReqWorkConn(ReqWorkConn {}));
    }
    let cfg = &control.ctx.shared.config;
    if let Some(limit) = cfg.heartbeat_timeout(control.channel.carrier.is_some()) {
        monoio::spawn(heartbeat_watch(control.clone(), limit));
    }
    let reason = read_loop(control, r, reader).await;
    control.close(&reason);
    let _ = writer.await;
}

async fn write_loop(
    mut w: ConnWriter,
    mut rx: mpsc::unbounded::Rx<Message>,
    mut out: MsgWriter,
    backlog: Rc<Backlog>,
) {
    while let Some(msg) = rx.recv().await {
        out.push(&msg);
        let mut n = 1;
        // Batch whatever else is queued into the same write (a bounded
        // batch, so that a flood is written and counted in steps).
        while n < 256 {
            let Ok(m) = rx.try_recv() else { break };
            out.push(&m);
            n += 1;
        }
        if out.flush(&mut w).await.is_err() {
            break;
        }
        backlog.written(n);
    }
}

async fn heartbeat_watch(control: Rc<Control>, limit: Duration) {
    let tick = (limit / 4).max(Duration::from_millis(250));
    while !control.closed.get() {
        monoio::time::sleep(tick).await;
        if control.channel.last_ping.get().elapsed() > limit {
            control.close("heartbeat timeout");
            break;
        }
    }
}

async fn read_loop(control: &Rc<Control>, mut r: ConnReader, mut reader: MsgReader) -> String {
    let fp = &control.ctx.shared.config.fastpath;
    let (limit, stall) = (fp.control_queue, Duration::from_secs(fp.write_stall_secs));
    loop {
        if let Err(reason) = control.channel.backlog.room(limit, stall).await {
            WorkerStats::bump(&control.ctx.stats().write_stalls, 1);
            tracing::warn!(session = %control.who.run_id, %reason, "closing session");
            return reason;
        }
        if control.closed.get() {
            return "closed".into();
        }
        let msg = match reader.next(&mut r).await {
            Ok(m) => m,
            Err(MsgError::Closed) => return "client closed the control connection".into(),
            Err(e) if e.is_malformed() => {
                WorkerStats::bump(&control.ctx.stats().protocol_errors, 1);
                let reason = format!("malformed control message: {e}");
                tracing::warn!(session = %control.who.run_id, %reason, "closing session");
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
    /// Queue `msg` for frpc on the control channel.
    pub fn send(&self, msg: Message) {
        self.channel.send(msg);
    }

    /// Step 6: one message from frpc.
    fn handle(self: &Rc<Self>, msg: Message) {
        match msg {
            Message::NewProxy(np) => {
                let name = np.proxy_name.clone();
                let proxy_type = np.proxy_type.clone();
                let resp = match Proxy::register(self, np) {
                    Ok(proxy) => {
                        let remote_addr = proxy.remote_addr(&self.ctx.shared.config);
                        self.proxies.borrow_mut().insert(name.clone(), proxy);
                        NewProxyResp {
                            proxy_name: name,
                            remote_addr,
                            error: String::new(),
                        }
                    }
                    Err(r) => {
                        tracing::info!(session = %self.who.run_id, proxy_name = %name, invite_id = ?self.auth.grant.invite(), kind = %r.kind, reason = %r.detail, "proxy refused");
                        self.ctx.events.emit(Event::ProxyRejected {
                            run_id: self.who.run_id.clone(),
                            invite: self.auth.grant.invite(),
                            proxy: name.clone(),
                            proxy_type,
                            reason: r.detail.clone(),
                            refusal: Some(r.kind),
                        });
                        let error = if self.ctx.shared.config.detailed_errors_to_client {
                            r.detail
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
                        &self.auth.token,
                        ping.timestamp,
                        &ping.privilege_key,
                    ) {
                    "token in heartbeat doesn't match token from configuration".to_string()
                } else {
                    self.channel.last_ping.set(Instant::now());
                    String::new()
                };
                self.send(Message::Pong(Pong { error }));
            }
            Message::NatHoleVisitor(m) => {
                let me = (self.ctx.id, self.who.id);
                let reply = |r| self.send(r);
                xtcp::on_visitor(&self.ctx, me, &self.who.login.user, m, &reply);
            }
            Message::NatHoleClient(m) => xtcp::on_client(&self.ctx, (self.ctx.id, self.who.id), m),
            Message::NatHoleReport(m) => xtcp::on_report(&self.ctx, m),
            other => {
                tracing::debug!(session = %self.who.run_id, msg = other.name(), "ignoring unsupported control message");
            }
        }
    }

    /// The worker this control lives on.
    pub fn ctx(&self) -> &Rc<WorkerCtx> {
        &self.ctx
    }

    /// Check NewWorkConn auth when the `NewWorkConns` scope is on.
    pub fn check_work_conn_auth(&self, msg: &NewWorkConn) -> Result<(), Refusal> {
        let cfg = &self.ctx.shared.config;
        if cfg.auth_work_conns()
            && !proto::auth::verify_privilege_key(
                &self.auth.token,
                msg.timestamp,
                &msg.privilege_key,
            )
        {
            return Err(Refusal::work_conn_token_mismatch());
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
        match (self.channel.carrier, conn.mux_session()) {
            (Some(ours), Some(theirs)) if ours == theirs => Ok(()),
            (Some(_), Some(_)) => Err("a yamux stream of another session"),
            (Some(_), None) => Err("a separate connection for a session that logged in over yamux"),
            (None, Some(_)) => Err("a yamux stream for a session that logged in without yamux"),
            (None, None) => Ok(()),
        }
    }

    /// A work connection arrived for this session.
    pub fn put_work_conn(&self, conn: Conn, wire: Wire) {
        if !self.pool.put(conn, wire) && !self.closed.get() {
            tracing::debug!(session = %self.who.run_id, "work connection pool is full, discarding");
        }
    }

    /// Take a work connection for a user connection and start it with
    /// `start` (see [`WorkConnPool::take`]).
    pub async fn take_work_conn(&self, start: StartWorkConn) -> Option<Conn> {
        self.take_work_conn_wired(start).await.map(|(c, _)| c)
    }

    /// [`Control::take_work_conn`], with the wire protocol the connection
    /// speaks: for a proxy whose payload is frp messages (`udp`).
    pub async fn take_work_conn_wired(&self, start: StartWorkConn) -> Option<(Conn, Wire)> {
        let wait = Duration::from_secs(self.ctx.shared.config.user_conn_timeout as u64);
        let start = Message::StartWorkConn(start);
        let ask = || self.send(Message::ReqWorkConn(ReqWorkConn {}));
        match self.pool.take(&start, wait, ask).await {
            Ok(taken) => Some(taken),
            Err(NoWorkConn::TimedOut) => {
                tracing::info!(session = %self.who.run_id, "no work connection arrived in time");
                None
            }
            Err(NoWorkConn::TooManyWaiting) => {
                WorkerStats::bump(&self.ctx.stats().pending_refused, 1);
                tracing::debug!(session = %self.who.run_id,
                    limit = self.ctx.shared.config.fastpath.pending_user_conns,
                    "user connection closed: too many waiting for a work connection (fastpath.pendingUserConns)");
                None
            }
            Err(NoWorkConn::Closed | NoWorkConn::Stale) => None,
        }
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

    /// End the session because the policy no longer allows it (a
    /// [`Refusal`] from [`Policy::still_allowed`]): like
    /// [`Control::close_for_policy`], and its close event records the kind.
    ///
    /// [`Policy::still_allowed`]: crate::policy::Policy::still_allowed
    pub fn close_refused(&self, refusal: &Refusal) {
        for p in self.proxies.borrow().values() {
            p.abort_relays();
        }
        self.close_with(&refusal.detail, Some(refusal.kind));
    }

    /// End the session: close proxies and pooled connections, leave the
    /// directory, abort the control connection. Idempotent.
    pub fn close(&self, reason: &str) {
        self.close_with(reason, None);
    }

    /// [`Control::close`], recording the refusal kind that ended it.
    fn close_with(&self, reason: &str, refusal: Option<RefusalKind>) {
        if self.closed.replace(true) {
            return;
        }
        let ctx = &self.ctx;
        let proxies: Vec<_> = self.proxies.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in proxies {
            p.close("session closed");
        }
        self.pool.close();
        ctx.shared.directory.remove_session(
            &self.who.run_id,
            SessionRef {
                worker: ctx.id,
                control_id: self.who.id,
            },
        );
        self.sessions.remove(self);
        self.channel.close();
        WorkerStats::add(&ctx.stats().sessions, -1);
        ctx.shared.policy.release_session(self.auth.grant);
        ctx.events.emit(Event::SessionClose {
            run_id: self.who.run_id.clone(),
            invite: self.auth.grant.invite(),
            reason: reason.to_string(),
            refusal,
        });
        tracing::info!(session = %self.who.run_id, peer = %self.who.peer, %reason, "session closed");
    }

    /// The session's proxy of this (full) name.
    pub fn proxy(&self, name: &str) -> Option<Rc<Proxy>> {
        self.proxies.borrow().get(name).cloned()
    }

    /// Whether a user connection of this session is relayed or waits for
    /// a work connection.
    pub fn in_flight(&self) -> bool {
        self.pool.waiting() > 0
            || self
                .proxies
                .borrow()
                .values()
                .any(|p| p.relaying() || p.starting())
    }

    /// After an upgrade: close this session if nothing is in flight, so
    /// that its client logs in again to the new process, its tcp proxies'
    /// listening sockets handed there first (users connecting meanwhile
    /// wait in their queues, and the proxies registered again take them).
    /// Whether it was moved.
    pub fn move_if_idle(&self) -> bool {
        if self.closed.get() || self.in_flight() {
            return false;
        }
        let shared = &self.ctx.shared;
        for p in self.proxies() {
            if let Some((port, fd)) = p.listener_copy() {
                crate::runtime::upgrade::park(shared, port, &self.who.run_id, &p.name, fd);
            }
        }
        self.close("server upgraded: log in again to the new process");
        true
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
    crate::report::events::now_ms() / 1000
}

/// What a login's credential let it in on.
pub struct Authorized {
    /// What the session was let in on (decides its proxy rules).
    pub grant: Grant,
    /// The frp token it proved (the node's or its tenant's): heartbeats
    /// and work connections are checked against it.
    pub token: String,
    /// The control and `useEncryption` key derived from `token`.
    pub token_key: [u8; 16],
    /// The tenant, for tenant-token sessions.
    pub tenant: Option<Arc<TenantLive>>,
}

/// Check a Login's credential: the node token (then, under a policy, its
/// ticket or the node being public), else a tenant's token.
fn authorize(shared: &Shared, login: &Login) -> Result<Authorized, Refusal> {
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
        None => Err(Refusal::token_mismatch()),
    }
}
