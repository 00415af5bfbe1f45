//! One worker: a thread with its own monoio runtime, its own SO_REUSEPORT
//! listener on the bind port, and everything that belongs to the sessions
//! it owns. Nothing in here is shared with other workers except through
//! [`Shared`] and the inbox.
//!
//! The loop holds the worker's [`WorkerCtx`] and its frp [`Sessions`], and
//! runs three tasks: the accept loop, the inbox (handoffs, kicks, policy
//! changes, stop) and, under a slowpath, the traffic sampler.

use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpListener;

use crate::frp::accept;
use crate::frp::control::Sessions;
use crate::frp::vhost;
use crate::frp::work_conns;
use crate::mesh;
use crate::mesh::nodes::MeshNodes;
use crate::report::events::EventSink;
use crate::runtime::ctx::WorkerCtx;
use crate::runtime::ring::uring_runtime;
use crate::runtime::shared::Shared;
use crate::transport::handoff::WorkerMsg;
use crate::transport::listener::accept_each;

/// A worker's listening sockets, each one of a SO_REUSEPORT group.
pub struct Listeners {
    /// The frp bind port.
    pub bind: std::net::TcpListener,
    /// `vhostHTTPPort`, when set.
    pub http: Option<std::net::TcpListener>,
    /// `vhostHTTPSPort`, when set.
    pub https: Option<std::net::TcpListener>,
    /// `tcpmuxHTTPConnectPort`, when set.
    pub tcpmux: Option<std::net::TcpListener>,
    /// `fastpath.meshRelayPort`, when set.
    pub mesh: Option<std::net::TcpListener>,
    /// The STUN server's UDP sockets (`fastpath.stunPort`), when set.
    pub stun: Option<(proto::stun::Site, crate::stun::WorkerSockets)>,
}

/// Run a worker until told to stop. Called on the worker's own thread.
pub fn run(id: usize, shared: Arc<Shared>, listener: Listeners, inbox: flume::Receiver<WorkerMsg>) {
    let uring = match shared.config.fastpath.driver.as_str() {
        "epoll" => false,
        "io_uring" => true,
        _ => monoio::utils::detect_uring(),
    };
    let started = if uring {
        uring_runtime(&shared.config.fastpath.task_work).map(|(mut rt, task_work)| {
            let driver = match task_work {
                "defer" => "io_uring, deferred task work",
                "coop" => "io_uring, cooperative task work",
                _ => "io_uring, signalled task work",
            };
            rt.block_on(serve(id, shared, listener, inbox, driver))
        })
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(serve(id, shared, listener, inbox, "epoll")))
    };
    if let Err(e) = started {
        let driver = if uring { "io_uring" } else { "epoll" };
        tracing::error!(worker = id, driver, error = %e, "cannot start worker runtime");
    }
    tracing::debug!(worker = id, "worker stopped");
}

async fn serve(
    id: usize,
    shared: Arc<Shared>,
    listeners: Listeners,
    inbox: flume::Receiver<WorkerMsg>,
    driver: &'static str,
) {
    tracing::info!(worker = id, driver, "worker started");
    let events = match shared.policy.governed() {
        Some(g) => EventSink::create(g, id, shared.config.fastpath.event_ring_bytes),
        None => EventSink::none(id),
    };
    events.set_applied_generation(shared.policy.generation());
    let ctx = Rc::new(WorkerCtx::new(id, shared, events));
    let sessions = Rc::new(Sessions::default());
    let mesh_nodes = Rc::new(MeshNodes::default());
    let listener = match TcpListener::from_std(listeners.bind) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot register bind listener");
            return;
        }
    };
    let canceller = monoio::io::Canceller::new();
    let accept_task = monoio::spawn(accept_loop(
        ctx.clone(),
        sessions.clone(),
        listener,
        canceller.handle(),
    ));
    let vhost_tasks: Vec<_> = [
        (listeners.http, vhost::Kind::Http),
        (listeners.https, vhost::Kind::Https),
        (listeners.tcpmux, vhost::Kind::Tcpmux),
    ]
    .into_iter()
    .filter_map(|(l, kind)| {
        let l = l?;
        let task = vhost::accept_loop(ctx.clone(), sessions.clone(), l, kind, canceller.handle());
        Some(monoio::spawn(task))
    })
    .collect();
    let mesh_task = listeners.mesh.map(|l| {
        let task = mesh::relay::accept_loop(ctx.clone(), mesh_nodes.clone(), l, canceller.handle());
        monoio::spawn(task)
    });
    if let Some((site, sockets)) = listeners.stun {
        // Not awaited at stop: its sockets go with the runtime.
        monoio::spawn(crate::stun::serve(ctx.clone(), site, sockets));
    }
    if ctx.shared.policy.governed().is_some() {
        monoio::spawn(traffic_sampler(ctx.clone(), sessions.clone()));
    }
    if mesh_task.is_some() {
        monoio::spawn(mesh_ticker(ctx.clone(), mesh_nodes.clone()));
    }
    let canceller = std::cell::RefCell::new(Some(canceller));
    inbox_loop(&ctx, &sessions, &mesh_nodes, &inbox, &canceller).await;
    // Stop: no new connections, close every session we own.
    if let Some(c) = canceller.take() {
        let _ = c.cancel();
    }
    let _ = accept_task.await;
    for t in vhost_tasks {
        let _ = t.await;
    }
    if let Some(t) = mesh_task {
        let _ = t.await;
    }
    for link in mesh_nodes.all() {
        link.close(None, "server shutting down");
    }
    for link in mesh_nodes.all_links() {
        link.close(None, "server shutting down");
    }
    // Relays are ended too, and given a moment to finish, so that each
    // reports the bytes it moved since the last sample before the worker
    // goes (their tasks would otherwise be dropped with the runtime).
    // Relays this worker runs for other workers' sessions end as well;
    // their owners hear of it through their inboxes, read here too.
    let controls = sessions.all();
    let proxies: Vec<_> = controls.iter().flat_map(|c| c.proxies()).collect();
    for c in controls {
        c.close_for_policy("server shutting down");
    }
    crate::frp::spread::abort_all_here(&ctx);
    let deadline = std::time::Instant::now() + RELAYS_DRAIN;
    let busy = || proxies.iter().any(|p| p.relaying()) || !ctx.relays_in.borrow().is_empty();
    while busy() && std::time::Instant::now() < deadline {
        while let Ok(msg) = inbox.try_recv() {
            crate::frp::spread::stopping_mail(&ctx, msg);
        }
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    monoio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// How long a stopping worker waits for its aborted relays to report.
const RELAYS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    listener: TcpListener,
    cancel: monoio::io::CancelHandle,
) {
    accept_each(&ctx, &listener, cancel, "bind port", |stream, peer| {
        if let Some(idle) = ctx.shared.config.tcp_keepalive() {
            let _ = stream.set_tcp_keepalive(Some(idle), None, None);
        }
        monoio::spawn(accept::serve(ctx.clone(), sessions.clone(), stream, peer));
    })
    .await
}

async fn inbox_loop(
    ctx: &Rc<WorkerCtx>,
    sessions: &Rc<Sessions>,
    mesh_nodes: &Rc<MeshNodes>,
    inbox: &flume::Receiver<WorkerMsg>,
    accepting: &std::cell::RefCell<Option<monoio::io::Canceller>>,
) {
    while let Ok(msg) = inbox.recv_async().await {
        match msg {
            WorkerMsg::Stop => break,
            WorkerMsg::Drain => {
                // The successor accepts on the same sockets; ours close
                // as the accept loops end. Sessions and their proxies'
                // own listeners stay.
                if let Some(c) = accepting.take() {
                    let _ = c.cancel();
                }
                tracing::info!(
                    worker = ctx.id,
                    sessions = sessions.all().len(),
                    "draining: no longer accepting"
                );
                monoio::spawn(move_idle_sessions(sessions.clone()));
            }
            WorkerMsg::Kick { control_id } => {
                if let Some(c) = sessions.by_id(control_id) {
                    c.close("replaced by a new login with the same run_id");
                }
            }
            WorkerMsg::PolicyChanged { generation } => {
                for c in sessions.all() {
                    if let Err(refusal) = ctx.shared.policy.still_allowed(c.auth.grant) {
                        c.close_refused(&refusal);
                    }
                }
                mesh::relay::recheck(ctx, mesh_nodes);
                ctx.events.set_applied_generation(generation);
                if let Some(t) = ctx.shared.policy.current() {
                    let now = crate::report::events::now_ms();
                    ctx.timings.propagated(t.get().created_ms(), now);
                }
            }
            WorkerMsg::WorkConn(moved) => work_conns::adopt(ctx, sessions, *moved).await,
            WorkerMsg::VhostConn(moved) => vhost::adopt(ctx, sessions, *moved),
            WorkerMsg::Visitor(moved) => crate::frp::visitor::adopt(sessions, *moved),
            WorkerMsg::XtcpSid {
                control_id,
                proxy,
                sid,
            } => {
                if let Some(c) = sessions.by_id(control_id) {
                    monoio::spawn(hand_sid(c, proxy, sid));
                }
            }
            WorkerMsg::ControlMsg {
                control_id,
                msg,
                delay_ms,
            } => {
                if let Some(c) = sessions.by_id(control_id) {
                    monoio::spawn(async move {
                        if delay_ms > 0 {
                            monoio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                        }
                        if !c.is_closed() {
                            c.send(*msg);
                        }
                    });
                }
            }
            WorkerMsg::Relay(moved) => {
                monoio::spawn(crate::frp::spread::host(ctx.clone(), *moved));
            }
            WorkerMsg::AbortRelay { key } => crate::frp::spread::abort_here(ctx, key),
            WorkerMsg::RelayDone { key } => crate::frp::spread::done(ctx, key),
            WorkerMsg::MeshConn(moved) => {
                monoio::spawn(mesh::relay::adopt(ctx.clone(), mesh_nodes.clone(), *moved));
            }
            WorkerMsg::MeshFrames { relay, frames } => {
                ctx.shared.mesh_crossing[ctx.id]
                    .fetch_sub(frames.len(), std::sync::atomic::Ordering::Relaxed);
                mesh::links::deliver(ctx, mesh_nodes, relay, frames);
            }
        }
    }
}

/// How often a draining worker looks for sessions with nothing in flight.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// After an upgrade: sessions with nothing in flight move to the new
/// process ([`Control::move_if_idle`](crate::frp::control::Control::move_if_idle)),
/// checked here every tick and by each relay as it ends. What still
/// relays at `fastpath.drainSecs` is closed by the stop.
async fn move_idle_sessions(sessions: Rc<Sessions>) {
    loop {
        for c in sessions.all() {
            c.move_if_idle();
        }
        monoio::time::sleep(DRAIN_TICK).await;
    }
}

/// xtcp: hand an attempt's sid to the owner of `proxy` on a work
/// connection, as frps does (StartWorkConn, NatHoleSid, close).
async fn hand_sid(control: std::rc::Rc<crate::frp::control::Control>, proxy: String, sid: String) {
    let start = proto::msg::StartWorkConn {
        proxy_name: proxy,
        ..Default::default()
    };
    if let Some((conn, wire)) = control.take_work_conn_wired(start).await {
        let m = proto::msg::Message::NatHoleSid(proto::msg::NatHoleSid {
            sid,
            ..Default::default()
        });
        crate::frp::msgio::refuse(conn, &m, wire).await;
    }
}

/// How often mesh relay tokens are checked for expiry (revocations come
/// with a new policy table and are checked then).
const MESH_TICK: std::time::Duration = std::time::Duration::from_secs(1);

async fn mesh_ticker(ctx: Rc<WorkerCtx>, nodes: Rc<MeshNodes>) {
    while !ctx.shared.is_stopping() {
        monoio::time::sleep(MESH_TICK).await;
        mesh::relay::recheck(&ctx, &nodes);
    }
}

/// How often each proxy's relayed bytes are reported (deltas; the rest is
/// reported when the proxy closes).
const TRAFFIC_SAMPLE: std::time::Duration = std::time::Duration::from_secs(5);

async fn traffic_sampler(ctx: Rc<WorkerCtx>, sessions: Rc<Sessions>) {
    while !ctx.shared.is_stopping() {
        monoio::time::sleep(TRAFFIC_SAMPLE).await;
        for c in sessions.all() {
            c.report_traffic();
        }
    }
}
