//! The yamux driver: feeds a [`proto::yamux::Session`] from a socket and
//! gives the application one [`MuxStream`] per yamux stream.
//!
//! Three tasks per connection, all on the owning worker: a reader (socket →
//! session → per-stream queues), a writer (session outbound → socket) and a
//! timer (keepalive pings). Streams are plain handles into the shared
//! connection state; waking is by stored `Waker`s, no channels and no locks,
//! because everything lives on one thread.
//!
//! Flow control: received data is acknowledged to the session (`consumed`)
//! only when the application has taken it, so a slow user socket throttles
//! frpc through yamux windows instead of growing our buffers. Writes wait
//! for send credit and for the outbound buffer to drain below a high-water
//! mark, so a fast user cannot make us buffer without bound either.
//!
//! Bounds against a hostile peer ([`MuxBudget`]):
//! - received data not yet taken by the application is counted per session
//!   and per worker; over the session's budget (a small one before the
//!   session is admitted), or while the worker is over its budget and the
//!   session holds more than its fair share, the reader stops reading the
//!   socket until the application catches up (TCP then holds the peer);
//! - window growth (auto-tuned windows) is capped by the same budgets;
//! - when what we queue for the peer passes [`OUTBOUND_LIMIT`] (it does not
//!   read: Ping answers and window updates pile up), the reader stops too,
//!   and a peer that reads nothing for `write_stall` is closed;
//! - a session not admitted within `pre_auth_deadline` is closed.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use proto::yamux::{Config as MuxConfig, Event, Session};

use crate::report::stats::MuxGauges;
use crate::transport::conn::{Aborter, ConnReader, ConnWriter};
use crate::transport::preauth::Ticket;

/// Outbound bytes above which stream writers wait for the socket.
const HIGH_WATER: usize = 1024 * 1024;

/// Outbound bytes above which the reader stops reading: the peer is not
/// reading what we send (stream writers stop at `HIGH_WATER` already;
/// what passes it is answers to the peer's own frames).
pub const OUTBOUND_LIMIT: usize = 2 * HIGH_WATER;

/// A session may always hold this much received data, even while its
/// worker is over budget.
const FAIR_SHARE: u64 = 1024 * 1024;

/// Over budget, a stream whose reader has taken nothing for this long is
/// reset (its user does not read), so that the session's other streams,
/// its control among them, carry on.
const SHED_AFTER: Duration = Duration::from_secs(2);

/// The memory limits of one worker's yamux sessions, and what they use.
#[derive(Debug)]
pub struct MuxBudget {
    /// Received data plus window growth one admitted session may hold.
    pub session: u64,
    /// The same for a session not yet admitted (no window growth then).
    pub pre_auth: u64,
    /// All sessions of the worker together.
    pub worker: u64,
    /// A peer that has data queued and reads nothing for this long is closed.
    pub write_stall: Duration,
    /// A session must be admitted within this long.
    pub pre_auth_deadline: Duration,
    /// What all sessions use; only this worker writes them.
    use_: Arc<MuxGauges>,
}

impl MuxBudget {
    /// A budget with these limits, nothing used yet.
    pub fn new(
        session: u64,
        pre_auth: u64,
        worker: u64,
        write_stall: Duration,
        pre_auth_deadline: Duration,
        gauges: Arc<MuxGauges>,
    ) -> Rc<MuxBudget> {
        Rc::new(MuxBudget {
            session,
            pre_auth,
            worker,
            write_stall,
            pre_auth_deadline,
            use_: gauges,
        })
    }

    /// Received data all sessions hold, not yet taken by their streams.
    pub fn held(&self) -> u64 {
        self.use_.held.load(Ordering::Relaxed)
    }

    /// Window all sessions' streams hold above the initial 256 KiB.
    pub fn extra_window(&self) -> u64 {
        self.use_.extra_window.load(Ordering::Relaxed)
    }

    /// Adds `n` (may be negative) to a gauge this worker alone writes.
    fn add(gauge: &AtomicU64, n: i64) {
        let v = gauge.load(Ordering::Relaxed).saturating_add_signed(n);
        gauge.store(v, Ordering::Relaxed);
    }
}

/// Why the reader is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// The peer is not reading what we queue for it.
    OutboundFull,
    /// Received data not yet taken is over budget.
    OverBudget,
}

#[derive(Default)]
struct Slot {
    recv: VecDeque<Bytes>,
    /// Since when `recv` holds data its reader has not taken (restarts at
    /// each take; None while empty).
    waiting_since: Option<Instant>,
    fin: bool,
    reset: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    handles: u8,
}

/// Source of [`MuxConn::id`]s: process-wide, so that two sessions never
/// share an id whichever workers they live on.
static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// State shared by a yamux connection's tasks and its streams.
pub struct MuxConn {
    id: u64,
    session: RefCell<Session>,
    slots: RefCell<HashMap<u32, Slot>>,
    writer_waker: RefCell<Option<Waker>>,
    drain_wakers: RefCell<Vec<Waker>>,
    /// The reader, waiting at its gate.
    gate_waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    /// Shuts the connection underneath down, while it lives.
    socket: Aborter,
    budget: Rc<MuxBudget>,
    /// Received bytes in the slots, not yet taken.
    held: Cell<u64>,
    /// The session's window growth as last added to the worker's.
    extra: Cell<u64>,
    /// When the writer last finished a write (or the session started).
    last_write: Cell<Instant>,
    started: Instant,
    /// The connection's place at the pre-auth gate, until admitted.
    ticket: RefCell<Option<Ticket>>,
}

impl MuxConn {
    /// Start driving a yamux session over `reader`/`writer`. `pending`
    /// holds bytes already read from the connection. Every stream the peer
    /// opens is passed to `on_stream`, which should spawn its handler;
    /// `on_refused(n, admitted)` hears of streams the session answered with
    /// RST (over its caps), and whether it had been admitted then.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        reader: ConnReader,
        writer: ConnWriter,
        pending: Vec<u8>,
        config: MuxConfig,
        budget: Rc<MuxBudget>,
        ticket: Option<Ticket>,
        on_stream: impl Fn(MuxStream) + 'static,
        on_refused: impl Fn(u64, bool) + 'static,
    ) -> Rc<MuxConn> {
        let socket = reader.aborter();
        let now = Instant::now();
        let conn = Rc::new(MuxConn {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            session: RefCell::new(Session::new(config, now)),
            slots: RefCell::new(HashMap::new()),
            writer_waker: RefCell::new(None),
            drain_wakers: RefCell::new(Vec::new()),
            gate_waker: RefCell::new(None),
            closed: Cell::new(false),
            socket,
            budget,
            held: Cell::new(0),
            extra: Cell::new(0),
            last_write: Cell::new(now),
            started: now,
            ticket: RefCell::new(ticket),
        });
        conn.sync_window();
        monoio::spawn(read_loop(
            conn.clone(),
            reader,
            pending,
            on_stream,
            on_refused,
        ));
        monoio::spawn(write_loop(conn.clone(), writer));
        monoio::spawn(timer_loop(conn.clone()));
        conn
    }

    /// Which yamux session this is (process-unique): a control records the
    /// one its Login came on, and takes work connections only from it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Admit the session (its Login succeeded): lift the pre-login stream
    /// cap, let new streams' windows grow to the full window (see
    /// `proto::yamux::Config::pre_auth_streams`), give the connection's
    /// place at the pre-auth gate back.
    pub fn admit(&self) {
        self.session.borrow_mut().admit(Instant::now());
        self.ticket.borrow_mut().take();
        self.wake_gate();
        self.kick_writer();
    }

    /// Received bytes this session holds that its streams have not taken.
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// Counts `n` received bytes in (`n > 0`) or taken (`n < 0`).
    fn hold(&self, n: i64) {
        self.held.set(self.held.get().saturating_add_signed(n));
        MuxBudget::add(&self.budget.use_.held, n);
        if n < 0 {
            self.wake_gate();
        }
    }

    /// Brings the worker's count of window growth up to date with the
    /// session's, and lets the session grow only into what the worker has
    /// left.
    fn sync_window(&self) {
        let mut s = self.session.borrow_mut();
        let now = s.extra_window();
        let before = self.extra.replace(now);
        let b = &self.budget;
        if now != before {
            MuxBudget::add(&b.use_.extra_window, now as i64 - before as i64);
        }
        let free = b.worker.saturating_sub(b.extra_window());
        s.set_window_allowance(now.saturating_add(free).min(b.session));
    }

    /// What this session may hold: its budget, a small one before admission.
    fn held_limit(&self, s: &Session) -> u64 {
        if s.is_admitted() {
            self.budget.session
        } else {
            self.budget.pre_auth
        }
    }

    /// Over budget: resets the streams whose readers have taken nothing
    /// for [`SHED_AFTER`] or more, longest waiting first, dropping what
    /// they held, until the session holds at most `floor` (at least one is
    /// reset when any qualifies). Returns how many were reset. One scan of
    /// the streams, however many go.
    fn shed_stalled(&self, now: Instant, floor: u64) -> usize {
        let mut victims: Vec<(Duration, u32)> = self
            .slots
            .borrow()
            .iter()
            .filter_map(|(&id, slot)| {
                let waited = now.saturating_duration_since(slot.waiting_since?);
                (waited >= SHED_AFTER).then_some((waited, id))
            })
            .collect();
        victims.sort_unstable_by(|a, b| b.cmp(a));
        let mut reset = 0;
        for (waited, id) in victims {
            if reset > 0 && self.held.get() <= floor {
                break;
            }
            let dropped: usize = match self.slots.borrow_mut().get_mut(&id) {
                Some(slot) => {
                    slot.waiting_since = None;
                    slot.recv.drain(..).map(|b| b.len()).sum()
                }
                None => 0,
            };
            self.hold(-(dropped as i64));
            abort_stream(self, id);
            MuxBudget::add(&self.budget.use_.stalled_resets, 1);
            tracing::debug!(
                session = self.id,
                stream = id,
                bytes = dropped,
                waited_ms = waited.as_millis() as u64,
                "yamux stream reset: its reader took nothing while the session was over its budget"
            );
            reset += 1;
        }
        reset
    }

    fn wake_gate(&self) {
        wake(&mut self.gate_waker.borrow_mut());
    }

    /// Whether the reader may read now.
    fn gate(&self) -> Gate {
        let s = self.session.borrow();
        if s.outbound_len() > OUTBOUND_LIMIT {
            return Gate::OutboundFull;
        }
        let held = self.held.get();
        let limit = self.held_limit(&s);
        if held > limit || (self.budget.held() > self.budget.worker && held > FAIR_SHARE) {
            return Gate::OverBudget;
        }
        Gate::Open
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Tear the whole connection down: every stream sees an error and the
    /// socket is shut so the reader task wakes up.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.socket.abort();
        for slot in self.slots.borrow_mut().values_mut() {
            wake(&mut slot.read_waker);
            wake(&mut slot.write_waker);
        }
        wake(&mut self.writer_waker.borrow_mut());
        for w in self.drain_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    fn kick_writer(&self) {
        if self.session.borrow().has_outbound() {
            wake(&mut self.writer_waker.borrow_mut());
        }
    }

    /// Hands the session's events (from input received at `now`) to the
    /// streams and the application.
    fn dispatch(self: &Rc<Self>, on_stream: &impl Fn(MuxStream), now: Instant) {
        loop {
            let ev = self.session.borrow_mut().poll_event();
            let Some(ev) = ev else { break };
            match ev {
                Event::StreamOpened(id) => {
                    self.slots.borrow_mut().insert(
                        id,
                        Slot {
                            handles: 1,
                            ..Slot::default()
                        },
                    );
                    on_stream(MuxStream {
                        conn: self.clone(),
                        id,
                    });
                }
                Event::Data(id, data) => {
                    let mut slots = self.slots.borrow_mut();
                    match slots.get_mut(&id) {
                        Some(slot) => {
                            let n = data.len() as i64;
                            if slot.recv.is_empty() {
                                slot.waiting_since = Some(now);
                            }
                            slot.recv.push_back(data);
                            wake(&mut slot.read_waker);
                            drop(slots);
                            self.hold(n);
                        }
                        None => {
                            drop(slots);
                            // Nobody will read it: give the credit back so the
                            // session's accounting stays right.
                            self.session.borrow_mut().consumed(id, data.len());
                        }
                    }
                }
                Event::Fin(id) => {
                    if let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
                        slot.fin = true;
                        wake(&mut slot.read_waker);
                    }
                }
                Event::Reset(id) => {
                    if let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
                        slot.reset = true;
                        wake(&mut slot.read_waker);
                        wake(&mut slot.write_waker);
                    }
                }
                Event::WindowUpdate(id) => {
                    if let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
                        wake(&mut slot.write_waker);
                    }
                }
                Event::StreamAcked(_) => {}
                Event::GoAway(code) => {
                    tracing::debug!(code, "yamux peer sent GoAway");
                }
            }
        }
        self.sync_window();
        self.kick_writer();
    }
}

impl Drop for MuxConn {
    fn drop(&mut self) {
        // Whatever is left stops counting against the worker.
        let b = &self.budget;
        MuxBudget::add(&b.use_.held, -(self.held.get() as i64));
        MuxBudget::add(&b.use_.extra_window, -(self.extra.get() as i64));
    }
}

/// Waits until the reader may read; Err(reason) when the connection must
/// end instead (closed, or the peer has read nothing for too long).
async fn pass_gate(conn: &MuxConn) -> Result<(), String> {
    let mut counted = false;
    let mut shed_logged = false;
    loop {
        if conn.closed.get() {
            return Err("closed".into());
        }
        match conn.gate() {
            Gate::Open => return Ok(()),
            Gate::OutboundFull => {
                let stalled = conn.last_write.get().elapsed();
                if stalled >= conn.budget.write_stall {
                    let queued = conn.session.borrow().outbound_len();
                    let reason = format!(
                        "peer reads nothing: {queued} bytes queued for it for {} s (fastpath.writeStallSecs)",
                        stalled.as_secs()
                    );
                    MuxBudget::add(&conn.budget.use_.write_stalls, 1);
                    tracing::warn!(session = conn.id, %reason, "closing yamux session");
                    return Err(reason);
                }
            }
            Gate::OverBudget => {
                let now = Instant::now();
                // Down to three quarters of the budget, so that reading
                // resumes for a while rather than a frame at a time.
                let floor = conn.held_limit(&conn.session.borrow()) / 4 * 3;
                if conn.shed_stalled(now, floor) > 0 {
                    if !shed_logged {
                        shed_logged = true;
                        tracing::info!(session = conn.id, held = conn.held.get(),
                            "yamux session over its receive budget (fastpath.sessionBudget / workerBudget): resetting streams whose readers take nothing");
                    }
                    continue;
                }
                if !counted {
                    counted = true;
                    MuxBudget::add(&conn.budget.use_.holds, 1);
                    tracing::debug!(
                        session = conn.id,
                        held = conn.held.get(),
                        worker_held = conn.budget.held(),
                        "yamux session over its receive budget: not reading until its streams catch up"
                    );
                }
                // Its keepalive answer may be among the unread bytes.
                conn.session.borrow_mut().defer_keepalive(Instant::now());
            }
        }
        let wait = poll_fn(|cx| {
            if conn.closed.get() || conn.gate() == Gate::Open {
                return Poll::Ready(());
            }
            *conn.gate_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let _ = monoio::time::timeout(Duration::from_secs(1), wait).await;
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

async fn read_loop(
    conn: Rc<MuxConn>,
    mut reader: ConnReader,
    pending: Vec<u8>,
    on_stream: impl Fn(MuxStream),
    on_refused: impl Fn(u64, bool),
) {
    let mut refused = 0;
    let mut input = BytesMut::with_capacity(256 * 1024);
    input.extend_from_slice(&pending);
    let mut scratch = Vec::with_capacity(64 * 1024);
    let reason: String = loop {
        if !input.is_empty() {
            let now = Instant::now();
            let r = conn.session.borrow_mut().receive(&mut input, now);
            conn.dispatch(&on_stream, now);
            let (now_refused, admitted) = {
                let s = conn.session.borrow();
                (s.refused_streams(), s.is_admitted())
            };
            if now_refused > refused {
                on_refused(now_refused - refused, admitted);
                refused = now_refused;
            }
            if let Err(e) = r {
                // The session queued a GoAway; give the writer a moment to send it.
                conn.kick_writer();
                monoio::time::sleep(Duration::from_millis(10)).await;
                tracing::info!(session = conn.id, reason = %e, "closing yamux session: protocol error");
                break format!("yamux protocol error: {e}");
            }
        }
        if let Err(reason) = pass_gate(&conn).await {
            break reason;
        }
        let (r, i, s) = reader.read_bytes(input, scratch).await;
        input = i;
        scratch = s;
        match r {
            Ok(0) => break "peer closed the connection".into(),
            Ok(_) => {}
            Err(e) => break format!("read error: {e}"),
        }
    };
    tracing::debug!(%reason, "yamux connection ended");
    conn.close();
}

async fn write_loop(conn: Rc<MuxConn>, mut writer: ConnWriter) {
    loop {
        let out = poll_fn(|cx| {
            if conn.closed.get() {
                // Flush what is left (e.g. a GoAway) before giving up.
                let out = conn.session.borrow_mut().take_outbound();
                return Poll::Ready((!out.is_empty()).then_some(out));
            }
            if conn.session.borrow().has_outbound() {
                return Poll::Ready(Some(conn.session.borrow_mut().take_outbound()));
            }
            *conn.writer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(out) = out else { break };
        // The session's outbound buffer goes to the socket as it is; once
        // written and dropped, the session's next split reuses the memory.
        let (r, out) = writer.write_all(out).await;
        drop(out);
        conn.last_write.set(Instant::now());
        for w in conn.drain_wakers.borrow_mut().drain(..) {
            w.wake();
        }
        conn.wake_gate();
        if r.is_err() || conn.closed.get() {
            break;
        }
    }
    conn.close();
}

async fn timer_loop(conn: Rc<MuxConn>) {
    while !conn.closed.get() {
        if !conn.session.borrow().is_admitted()
            && conn.started.elapsed() >= conn.budget.pre_auth_deadline
        {
            tracing::info!(
                session = conn.id,
                "closing yamux session: no Login succeeded on it within {} s",
                conn.budget.pre_auth_deadline.as_secs()
            );
            conn.close();
            break;
        }
        let next = conn.session.borrow().next_timeout();
        let wait = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        monoio::time::sleep(wait).await;
        let r = conn.session.borrow_mut().tick(Instant::now());
        if let Err(e) = r {
            tracing::info!(reason = %e, "yamux session closed");
            conn.close();
            break;
        }
        conn.sync_window();
        conn.kick_writer();
    }
}

/// One yamux stream, not yet split.
pub struct MuxStream {
    conn: Rc<MuxConn>,
    id: u32,
}

impl MuxStream {
    /// The yamux stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The connection this stream belongs to.
    pub fn conn(&self) -> &Rc<MuxConn> {
        &self.conn
    }

    /// Split into a reader and a writer.
    pub fn into_split(self) -> (MuxReader, MuxWriter) {
        let conn = self.conn.clone();
        let id = self.id;
        // Two halves will each hold a handle; `self` gives its own back when
        // dropped here. (Counting one would let the first half to go take the
        // stream away from the other, e.g. after a half-close.)
        if let Some(slot) = conn.slots.borrow_mut().get_mut(&id) {
            slot.handles += 2;
        }
        drop(self);
        (
            MuxReader {
                conn: conn.clone(),
                id,
            },
            MuxWriter {
                conn,
                id,
                shut: false,
            },
        )
    }

    /// Append received bytes to `buf`; 0 means the peer half-closed.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        read_stream(&self.conn, self.id, buf).await
    }

    /// Send all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let r = write_stream(&self.conn, self.id, &buf).await;
        (r, buf)
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        release(&self.conn, self.id, true);
    }
}

/// Abort a stream (RST) by id, waking whoever waits on it.
pub fn abort_stream(conn: &MuxConn, id: u32) {
    if let Some(slot) = conn.slots.borrow_mut().get_mut(&id) {
        slot.reset = true;
        wake(&mut slot.read_waker);
        wake(&mut slot.write_waker);
    }
    conn.session.borrow_mut().reset_stream(id);
    conn.sync_window();
    conn.kick_writer();
}

/// Drop one handle; when the last goes, forget the slot. `abort`: the
/// stream is being dropped without an orderly close, so reset it unless it
/// already finished.
fn release(conn: &MuxConn, id: u32, abort: bool) {
    let mut slots = conn.slots.borrow_mut();
    let Some(slot) = slots.get_mut(&id) else {
        return;
    };
    slot.handles = slot.handles.saturating_sub(1);
    if slot.handles > 0 {
        return;
    }
    let finished = slot.fin || slot.reset;
    let unread: usize = slot.recv.iter().map(|b| b.len()).sum();
    slots.remove(&id);
    drop(slots);
    let mut s = conn.session.borrow_mut();
    if unread > 0 {
        s.consumed_at(id, unread, Instant::now());
    }
    if abort && !finished {
        s.reset_stream(id);
    }
    drop(s);
    if unread > 0 {
        conn.hold(-(unread as i64));
    }
    conn.sync_window();
    conn.kick_writer();
}

/// Take received data from a stream: `take` gets the queue when it is not
/// empty and returns how many bytes it took (credit goes back to the peer).
/// Ok(None) once the peer has half-closed and everything was taken.
async fn recv_with<T>(
    conn: &Rc<MuxConn>,
    id: u32,
    mut take: impl FnMut(&mut VecDeque<Bytes>) -> (usize, T),
) -> io::Result<Option<T>> {
    poll_fn(|cx| {
        let mut slots = conn.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stream gone",
            )));
        };
        if !slot.recv.is_empty() {
            let (n, out) = take(&mut slot.recv);
            // One clock read per chunk, for progress and window growth.
            let now = Instant::now();
            slot.waiting_since = (!slot.recv.is_empty()).then_some(now);
            drop(slots);
            conn.session.borrow_mut().consumed_at(id, n, now);
            conn.hold(-(n as i64));
            conn.sync_window();
            conn.kick_writer();
            return Poll::Ready(Ok(Some(out)));
        }
        if slot.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset",
            )));
        }
        if slot.fin {
            return Poll::Ready(Ok(None));
        }
        if conn.closed.get() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "yamux session closed",
            )));
        }
        slot.read_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Copy received bytes into the spare capacity of `buf`; 0 is EOF.
async fn read_stream(
    conn: &Rc<MuxConn>,
    id: u32,
    mut buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let r = recv_with(conn, id, |q| {
        let Some(front) = q.front_mut() else {
            return (0, 0);
        };
        let n = (buf.capacity() - buf.len()).max(1).min(front.len());
        buf.extend_from_slice(&front[..n]);
        front.advance(n);
        if front.is_empty() {
            q.pop_front();
        }
        (n, n)
    })
    .await;
    (r.map(|n| n.unwrap_or(0)), buf)
}

async fn write_stream(conn: &Rc<MuxConn>, id: u32, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // Back-pressure: let the writer task catch up first.
        poll_fn(|cx| {
            if conn.closed.get() || conn.session.borrow().outbound_len() < HIGH_WATER {
                Poll::Ready(())
            } else {
                conn.drain_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let n = poll_fn(|cx| {
            if conn.closed.get() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "yamux session closed",
                )));
            }
            let mut slots = conn.slots.borrow_mut();
            let Some(slot) = slots.get_mut(&id) else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "stream gone",
                )));
            };
            if slot.reset {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stream reset",
                )));
            }
            match conn.session.borrow_mut().write_data(id, data) {
                Ok(0) => {
                    slot.write_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                Ok(n) => Poll::Ready(Ok(n)),
                Err(e) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    e.to_string(),
                ))),
            }
        })
        .await?;
        data = &data[n..];
        conn.kick_writer();
    }
    Ok(())
}

/// Reading half of a [`MuxStream`].
pub struct MuxReader {
    conn: Rc<MuxConn>,
    id: u32,
}

impl MuxReader {
    /// Resets this stream (see [`Aborter`]).
    pub fn aborter(&self) -> Aborter {
        Aborter::Mux(self.conn.clone(), self.id)
    }

    /// Take the next received chunk as it arrived, without copying; `None`
    /// means the peer half-closed. The credit goes back to the peer at once:
    /// the caller holds at most this one chunk.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        recv_with(&self.conn, self.id, |q| {
            let chunk = q.pop_front().unwrap_or_default();
            (chunk.len(), chunk)
        })
        .await
    }

    /// Append received bytes to `buf`; 0 means the peer half-closed.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        read_stream(&self.conn, self.id, buf).await
    }
}

impl Drop for MuxReader {
    fn drop(&mut self) {
        release(&self.conn, self.id, true);
    }
}

/// Writing half of a [`MuxStream`].
pub struct MuxWriter {
    conn: Rc<MuxConn>,
    id: u32,
    shut: bool,
}

impl MuxWriter {
    /// Send all of `data`.
    pub async fn write_slice(&mut self, data: &[u8]) -> io::Result<()> {
        write_stream(&self.conn, self.id, data).await
    }

    /// Half-close: send FIN.
    pub fn shutdown(&mut self) {
        if !self.shut {
            self.shut = true;
            self.conn.session.borrow_mut().close_stream(self.id);
            self.conn.kick_writer();
        }
    }
}

impl Drop for MuxWriter {
    fn drop(&mut self) {
        self.shutdown();
        release(&self.conn, self.id, false);
    }
}
