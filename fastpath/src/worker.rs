//! One worker: a thread with its own monoio runtime, its own SO_REUSEPORT
//! listener on the bind port, and everything that belongs to the sessions
//! it owns. Nothing in here is shared with other workers except through
//! [`Shared`](crate::shared::Shared) and the inbox.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::{TcpListener, TcpStream};

use crate::accept;
use crate::conn::Conn;
use crate::control::Control;
use crate::events::EventSink;
use crate::handoff::{MovedConn, WorkerMsg};
use crate::shared::Shared;
use crate::stats::WorkerStats;
use crate::tls::TlsStream;

/// Per-worker context, shared by all tasks on the worker.
pub struct WorkerCtx {
    /// This worker's index.
    pub id: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Controls owned by this worker, by run_id.
    pub controls: RefCell<HashMap<String, Rc<Control>>>,
    /// Where this worker reports events for the slowpath.
    pub events: EventSink,
    next_control: Cell<u64>,
}

impl WorkerCtx {
    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.id]
    }

    /// A process-unique control id: worker id in the top bits.
    pub fn next_control_id(&self) -> u64 {
        let n = self.next_control.get() + 1;
        self.next_control.set(n);
        ((self.id as u64) << 48) | n
    }

    /// Find a local control by run_id.
    pub fn control(&self, run_id: &str) -> Option<Rc<Control>> {
        self.controls.borrow().get(run_id).cloned()
    }

    /// Find a local control by id.
    pub fn control_by_id(&self, id: u64) -> Option<Rc<Control>> {
        self.controls
            .borrow()
            .values()
            .find(|c| c.id == id)
            .cloned()
    }
}

/// Run a worker until told to stop. Called on the worker's own thread.
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    inbox: flume::Receiver<WorkerMsg>,
) {
    let uring = match shared.config.fastpath.driver.as_str() {
        "epoll" => false,
        "io_uring" => true,
        _ => monoio::utils::detect_uring(),
    };
    let name = if uring { "io_uring" } else { "epoll" };
    let main = serve(id, shared, listener, inbox, name);
    let started = if uring {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .build()
            .map(|mut rt| rt.block_on(main))
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main))
    };
    if let Err(e) = started {
        tracing::error!(worker = id, driver = name, error = %e, "cannot start worker runtime");
    }
    tracing::debug!(worker = id, "worker stopped");
}

async fn serve(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    inbox: flume::Receiver<WorkerMsg>,
    driver: &'static str,
) {
    tracing::info!(worker = id, driver, "worker started");
    let events = match shared.policy.governed() {
        Some(g) => EventSink::create(g, id, shared.config.fastpath.event_ring_bytes),
        None => EventSink::none(id),
    };
    events.set_applied_generation(shared.policy.generation());
    let ctx = Rc::new(WorkerCtx {
        id,
        shared,
        controls: RefCell::new(HashMap::new()),
        events,
        next_control: Cell::new(0),
    });
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot register bind listener");
            return;
        }
    };
    let canceller = monoio::io::Canceller::new();
    let accept_task = monoio::spawn(accept_loop(ctx.clone(), listener, canceller.handle()));
    if ctx.shared.policy.governed().is_some() {
        monoio::spawn(traffic_sampler(ctx.clone()));
    }
    inbox_loop(ctx.clone(), inbox).await;
    // Stop: no new connections, close every session we own.
    let _ = canceller.cancel();
    let _ = accept_task.await;
    // Relays are ended too, and given a moment to finish, so that each
    // reports the bytes it moved since the last sample before the worker
    // goes (their tasks would otherwise be dropped with the runtime).
    let controls: Vec<_> = ctx.controls.borrow().values().cloned().collect();
    let proxies: Vec<_> = controls.iter().flat_map(|c| c.proxies()).collect();
    for c in controls {
        c.close_for_policy("server shutting down");
    }
    let deadline = std::time::Instant::now() + RELAYS_DRAIN;
    while proxies.iter().any(|p| p.relaying()) && std::time::Instant::now() < deadline {
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    monoio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// How long a stopping worker waits for its aborted relays to report.
const RELAYS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn accept_loop(ctx: Rc<WorkerCtx>, listener: TcpListener, cancel: monoio::io::CancelHandle) {
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                if ctx.shared.is_stopping() {
                    break;
                }
                let _ = stream.set_nodelay(true);
                if let Some(idle) = ctx.shared.config.tcp_keepalive() {
                    let _ = stream.set_tcp_keepalive(Some(idle), None, None);
                }
                monoio::spawn(accept::serve(ctx.clone(), stream, peer));
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) || ctx.shared.is_stopping() => {
                break
            }
            Err(e) => {
                tracing::warn!(worker = ctx.id, error = %e, "accept failed");
                // Out of descriptors or similar: back off instead of spinning.
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn inbox_loop(ctx: Rc<WorkerCtx>, inbox: flume::Receiver<WorkerMsg>) {
    while let Ok(msg) = inbox.recv_async().await {
        match msg {
            WorkerMsg::Stop => break,
            WorkerMsg::Kick { control_id } => {
                if let Some(c) = ctx.control_by_id(control_id) {
                    c.close("replaced by a new login with the same run_id");
                }
            }
            WorkerMsg::PolicyChanged { generation } => {
                let controls: Vec<_> = ctx.controls.borrow().values().cloned().collect();
                for c in controls {
                    if let Err(reason) = ctx.shared.policy.still_allowed(c.grant) {
                        c.close_for_policy(&reason);
                    }
                }
                ctx.events.set_applied_generation(generation);
            }
            WorkerMsg::WorkConn(moved) => {
                WorkerStats::bump(&ctx.stats().handoffs_in, 1);
                let MovedConn {
                    socket,
                    tls,
                    pending,
                    msg,
                    wire,
                    peer,
                } = *moved;
                let stream = match TcpStream::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(worker = ctx.id, error = %e, "cannot adopt handed-over connection");
                        continue;
                    }
                };
                let conn = match tls {
                    Some((state, ciphertext)) => {
                        Conn::Tls(Box::new(TlsStream::from_parts(stream, state, ciphertext)))
                    }
                    None => Conn::Tcp(stream),
                };
                accept::deliver_work_conn(&ctx, conn, pending, msg, wire, peer).await;
            }
        }
    }
}

/// How often each proxy's relayed bytes are reported (deltas; the rest is
/// reported when the proxy closes).
const TRAFFIC_SAMPLE: std::time::Duration = std::time::Duration::from_secs(5);

async fn traffic_sampler(ctx: Rc<WorkerCtx>) {
    while !ctx.shared.is_stopping() {
        monoio::time::sleep(TRAFFIC_SAMPLE).await;
        let controls: Vec<_> = ctx.controls.borrow().values().cloned().collect();
        for c in controls {
            c.report_traffic();
        }
    }
}

/// Detach a monoio socket from this worker so it can move to another.
pub fn detach(stream: TcpStream) -> std::net::TcpStream {
    let fd = stream.into_raw_fd();
    // SAFETY: we own `fd`: into_raw_fd released it from monoio.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}
