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

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use proto::yamux::{Config as MuxConfig, Event, Session};

use crate::conn::{ConnReader, ConnWriter};

/// Outbound bytes above which stream writers wait for the socket.
const HIGH_WATER: usize = 1024 * 1024;

#[derive(Default)]
struct Slot {
    recv: VecDeque<Bytes>,
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
    closed: Cell<bool>,
    fd: i32,
}

impl MuxConn {
    /// Start driving a yamux session over `reader`/`writer`. `pending`
    /// holds bytes already read from the connection. Every stream the peer
    /// opens is passed to `on_stream`, which should spawn its handler.
    pub fn start(
        reader: ConnReader,
        writer: ConnWriter,
        pending: Vec<u8>,
        config: MuxConfig,
        on_stream: impl Fn(MuxStream) + 'static,
    ) -> Rc<MuxConn> {
        let fd = reader.raw_fd();
        let conn = Rc::new(MuxConn {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            session: RefCell::new(Session::new(config, Instant::now())),
            slots: RefCell::new(HashMap::new()),
            writer_waker: RefCell::new(None),
            drain_wakers: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            fd,
        });
        monoio::spawn(read_loop(conn.clone(), reader, pending, on_stream));
        monoio::spawn(write_loop(conn.clone(), writer));
        monoio::spawn(timer_loop(conn.clone()));
        conn
    }

    /// Which yamux session this is (process-unique): a control records the
    /// one its Login came on, and takes work connections only from it.
    pub fn id(&self) -> u64 {
        self.id
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
        // SAFETY: shutdown on a descriptor we still own (the reader half holds it).
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
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

    fn dispatch(self: &Rc<Self>, on_stream: &impl Fn(MuxStream)) {
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
                            slot.recv.push_back(data);
                            wake(&mut slot.read_waker);
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
        self.kick_writer();
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
) {
    let mut input = BytesMut::with_capacity(256 * 1024);
    input.extend_from_slice(&pending);
    let mut scratch = Vec::with_capacity(64 * 1024);
    let reason: String = loop {
        if !input.is_empty() {
            let r = conn
                .session
                .borrow_mut()
                .receive(&mut input, Instant::now());
            conn.dispatch(&on_stream);
            if let Err(e) = r {
                // The session queued a GoAway; give the writer a moment to send it.
                conn.kick_writer();
                monoio::time::sleep(Duration::from_millis(10)).await;
                break format!("yamux protocol error: {e}");
            }
        }
        if conn.closed.get() {
            break "closed".into();
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
        for w in conn.drain_wakers.borrow_mut().drain(..) {
            w.wake();
        }
        if r.is_err() || conn.closed.get() {
            break;
        }
    }
    conn.close();
}

async fn timer_loop(conn: Rc<MuxConn>) {
    while !conn.closed.get() {
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
        s.consumed(id, unread);
    }
    if abort && !finished {
        s.reset_stream(id);
    }
    drop(s);
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
            drop(slots);
            conn.session.borrow_mut().consumed(id, n);
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
