//! Moving bytes between a user connection and a work connection.
//!
//! Two paths:
//! - **direct**: both ends are plain TCP sockets and the proxy neither
//!   encrypts nor compresses: nonblocking syscalls, waiting for readiness
//!   when a side would block. Towards a remote peer the kernel moves pages
//!   socket → pipe → socket (splice), the bytes never enter user space.
//!   Towards a peer on this host each read is copied through a buffer
//!   per worker instead: that reader then copies bytes that are still in
//!   cache, where spliced pages were written long before by another
//!   process (measured: `bench/RESULTS.md`, issue 13 point 7). A copy
//!   moves 32 KiB at a time while at most one relay on the worker is
//!   busy, and from 128 KiB up to 512 KiB while several are (larger while
//!   the destination takes each step whole), in whole segments of the
//!   destination (`Busy::chunk` and `Busy::adapt` say why).
//! - **buffered**: anything else (TLS, yamux, `useEncryption`,
//!   `useCompression`). One buffer per direction, reused for the life of the
//!   connection; no allocation per chunk in steady state.
//!
//! Either direction reaching EOF half-closes the other side's writer, as a
//! TCP proxy should; an error in either direction aborts both connections
//! so that the other direction's pending I/O wakes up and the relay ends.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;

use monoio::net::TcpStream;
use monoio::time::{Instant, Sleep};
use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::snappy::{SnappyDecoder, SnappyEncoder};

use crate::policy::tenants::Limits;
use crate::report::stats::WorkerStats;
use crate::transport::conn::{Aborter, Conn, ConnReader, ConnWriter};

/// How a work connection's payload is wrapped.
#[derive(Debug, Clone, Copy)]
pub struct RelayOpts {
    /// `useEncryption`: AES-CFB with this key, IV first, per direction.
    pub encryption_key: Option<[u8; 16]>,
    /// `useCompression`: snappy framing (inside the encryption).
    pub compression: bool,
    /// Buffer size per direction.
    pub buffer: usize,
    /// Whether splice may be used.
    pub splice: bool,
    /// Whether splice may be used towards a peer on this host.
    pub splice_local: bool,
}

impl RelayOpts {
    fn plain(&self) -> bool {
        self.encryption_key.is_none() && !self.compression
    }
}

/// Counts relayed bytes for the worker (process stats) and for the proxy
/// (traffic events), and paces them when bandwidth is limited. The proxy
/// side is shared with the proxy's worker, which may not be this one (a
/// spread relay): an uncontended add per chunk.
pub struct Meter<'a> {
    worker: &'a AtomicU64,
    proxy: &'a AtomicU64,
    limits: Option<&'a Limits>,
    /// Called after each chunk when the proxy samples its traffic early
    /// (tenant traffic reports).
    report: Option<&'a dyn Fn()>,
    /// The pacing timer: boxed (monoio's timer is 640 bytes aligned to
    /// 128, and inline it would make every relay's task that large, also
    /// the many never paced), made at the first wait and reset after.
    timer: RefCell<Option<Pin<Box<Sleep>>>>,
}

impl Meter<'_> {
    fn add(&self, n: u64) {
        WorkerStats::bump(self.worker, n);
        self.proxy
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = self.report {
            r();
        }
    }

    /// Count `n` bytes and, when a budget is in debt, wait until it is
    /// paid off before the caller moves more.
    async fn add_paced(&self, n: usize) {
        self.add(n as u64);
        self.pace(n).await;
    }

    /// Wait as [`Meter::add_paced`] would for `n` bytes already counted.
    async fn pace(&self, n: usize) {
        if let Some(l) = self.limits {
            let wait = l.take(n);
            if !wait.is_zero() {
                let deadline = Instant::now() + wait;
                let mut timer = self.timer.take();
                match &mut timer {
                    Some(t) => t.as_mut().reset(deadline),
                    None => timer = Some(Box::pin(monoio::time::sleep_until(deadline))),
                }
                if let Some(t) = &mut timer {
                    t.await;
                }
                *self.timer.borrow_mut() = timer;
            }
        }
    }

    /// The most bytes to move in one step.
    fn chunk(&self, default: usize) -> usize {
        self.limits.map_or(default, |l| l.chunk().min(default))
    }
}

/// The two connections of a relay, and what was read from the user's
/// before it (to route a vhost connection), which goes to frpc first.
pub struct Ends {
    /// The user's connection.
    pub user: Conn,
    /// The work connection to frpc.
    pub work: Conn,
    /// Bytes of the user's already read, usually none.
    pub pending: Vec<u8>,
}

/// Whether `ends` take the direct path (module docs): both plain TCP, the
/// payload neither encrypted nor compressed, splice allowed. Only such a
/// relay may move to another worker ([`crate::frp::spread`]).
pub fn is_direct(ends: &Ends, opts: &RelayOpts) -> bool {
    opts.splice
        && opts.plain()
        && matches!((&ends.user, &ends.work), (Conn::Tcp(..), Conn::Tcp(..)))
}

/// Relay until both directions are done, counting the bytes in the
/// worker's `stats` and the proxy's `proxy_bytes`.
///
/// A plain function returning an `async move` block, like the other futures
/// here that live as long as a connection: an `async fn` keeps each of its
/// arguments twice in its state (as passed, and bound again as a local),
/// and an idle connection's memory is mostly this state.
// An async move block on purpose: an async fn would keep each argument
// twice in the connection's task (see `run`).
#[allow(clippy::manual_async_fn)]
pub fn run<'a>(
    stats: &'a WorkerStats,
    mut ends: Ends,
    opts: RelayOpts,
    proxy_bytes: &'a [AtomicU64; 2],
    limits: &'a Limits,
    report: Option<&'a dyn Fn()>,
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        let limits = (!limits.is_none()).then_some(limits);
        let meter = |worker, proxy| Meter {
            worker,
            proxy,
            limits,
            report,
            timer: RefCell::new(None),
        };
        let meter_in = meter(&stats.bytes_in, &proxy_bytes[0]);
        let meter_out = meter(&stats.bytes_out, &proxy_bytes[1]);
        // `ends` is used where it was captured, never moved into locals:
        // the task would keep the connections twice (the captured copy
        // stays in its state), 216 bytes more per idle connection.
        let aborters = [ends.user.aborter(), ends.work.aborter()];
        let spliced = is_direct(&ends, &opts);
        if spliced && !ends.pending.is_empty() {
            let n = ends.pending.len();
            if ends
                .work
                .write_all(std::mem::take(&mut ends.pending))
                .await
                .0
                .is_err()
            {
                return abort_all(&aborters);
            }
            meter_in.add(n as u64);
        }
        // Borrowed, not destructured: the connections (and the SocketFds
        // that keep the aborters alive) stay where they are until both
        // pumps are done, and the task holds no second copy of either.
        if let (Conn::Tcp(u, _), Conn::Tcp(w, _)) = (&ends.user, &ends.work) {
            if spliced {
                let copy = |s: &TcpStream| !opts.splice_local && peer_on_this_host(s);
                let up = direct_pump(u, w, copy(w), &meter_in, &aborters);
                let down = direct_pump(w, u, copy(u), &meter_out, &aborters);
                monoio::join!(up, down);
                return;
            }
        }
        // The copying relay's state (transforms, cipher and compressor
        // state) is large; its directions are boxed, which keeps every
        // connection's task the size of the splice relay.
        copy_relay(ends, opts, &meter_in, &meter_out, &aborters).await;
    }
}

/// The copying relay: yamux, TLS, encryption or compression on a side.
/// Each direction is boxed on its own and the two are polled by [`Both`]:
/// an `async` block joining them would keep the halves it hands to the
/// directions a second time in its own state.
fn copy_relay<'a>(
    ends: Ends,
    opts: RelayOpts,
    meter_in: &'a Meter<'a>,
    meter_out: &'a Meter<'a>,
    aborters: &'a [Aborter; 2],
) -> Both<'a> {
    let (ur, uw) = ends.user.into_split();
    let (wr, ww) = ends.work.into_split();
    let first = ends.pending;
    match wr {
        // yamux → user without a copy: received chunks go out as they are.
        ConnReader::Mux(mr) if opts.plain() => Both::new(
            Box::pin(pump(
                (ur, first),
                ww,
                Transform::None,
                meter_in,
                aborters,
                opts.buffer,
            )),
            Box::pin(mux_pump(mr, uw, meter_out, aborters)),
        ),
        wr => Both::new(
            Box::pin(pump(
                (ur, first),
                ww,
                Transform::new(&opts, true),
                meter_in,
                aborters,
                opts.buffer,
            )),
            Box::pin(pump(
                (wr, Vec::new()),
                uw,
                Transform::new(&opts, false),
                meter_out,
                aborters,
                opts.buffer,
            )),
        ),
    }
}

/// A relay direction, boxed.
type Direction<'a> = Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Two directions run to their ends together.
struct Both<'a>([Option<Direction<'a>>; 2]);

impl<'a> Both<'a> {
    fn new(a: Direction<'a>, b: Direction<'a>) -> Both<'a> {
        Both([Some(a), Some(b)])
    }
}

impl std::future::Future for Both<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        for slot in self.0.iter_mut() {
            if let Some(d) = slot {
                if d.as_mut().poll(cx).is_ready() {
                    // Done: its state (buffers, halves) goes now.
                    *slot = None;
                }
            }
        }
        if self.0.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

fn abort_all(aborters: &[Aborter; 2]) {
    for a in aborters {
        a.abort();
    }
}

/// A pipe for splice, closed on drop.
struct Pipe([i32; 2]);

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, an array of two.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // A bigger pipe moves more per call; the kernel may refuse, which is fine.
        // SAFETY: F_SETPIPE_SZ on the pipe just made, which we own; it
        // touches no memory of ours.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
        Ok(Pipe(fds))
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: closing the two descriptors `new` made, which this Pipe
        // owns alone, once (a Pipe exists only when pipe2 succeeded).
        unsafe {
            libc::close(self.0[0]);
            libc::close(self.0[1]);
        }
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: F_GETFL/F_SETFL touch no memory of ours; the caller passes
    // the descriptor of a socket it borrows, so it is open and is that
    // socket.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: with null offsets splice(2) reads and writes no memory of
    // ours; the caller passes descriptors open for the call (splice_pump:
    // the sockets it borrows and the ends of its own pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A splice or read that took less than this took all the socket had
/// (bulk data comes in reads of 64 KiB and more, as the pipe and the
/// socket's segments allow; a copying read asks for [`COPY_CHUNK`]).
const SMALL_READ: usize = 16 * 1024;

/// The most a direct relay direction moves before it lets the worker's
/// other connections run: with 32 busy relays on a worker, one round of
/// them moves 32 MiB (about 13 ms at 20 Gbit/s), and the wait it costs
/// is one readiness poll per MiB.
const TURN: u32 = 1 << 20;

/// What a copying direct relay reads at once while it is the only busy
/// one on its worker: the size frps reads. Measured on Intel with the
/// bench client, one stream moved less with 128 KiB: with nothing else to
/// run, the worker and the reader downstream overlap better on smaller
/// pieces.
const COPY_CHUNK: usize = 32 * 1024;

/// Up to what a copying direct relay reads at once while several on its
/// worker are busy ([`Busy::chunk`]).
const BUSY_CHUNK: usize = 128 * 1024;

/// How many times a busy direction's step may double ([`Busy::adapt`]):
/// up to 512 KiB.
const BUSY_GROW: u8 = 2;

thread_local! {
    /// The worker's copy buffer: a direction holds it only between a read
    /// and the write of what was read, with no wait in between, so one
    /// serves every relay on the worker. [`COPY_CHUNK`] at first, grown
    /// to the largest busy step asked when several relays are busy
    /// ([`Busy`]), at most 512 KiB.
    static COPY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; COPY_CHUNK]);

    /// How many copying directions on this worker are busy: their last
    /// read filled [`COPY_CHUNK`] or more, so their source holds more.
    static BUSY: Cell<u32> = const { Cell::new(0) };
}

/// Whether two or more copying directions on this worker are busy: then
/// they step larger than [`COPY_CHUNK`] ([`Busy::chunk`], [`Busy::adapt`]).
fn several_busy() -> bool {
    BUSY.with(Cell::get) >= 2
}

/// A direction's place in [`BUSY`], given back when the direction ends
/// however it ends (a relay's task can be dropped at any await), and the
/// segment size of its destination.
struct Busy {
    /// Counted in [`BUSY`].
    on: bool,
    /// How many times [`BUSY_CHUNK`] was doubled for this direction
    /// ([`Busy::adapt`]), at most [`BUSY_GROW`].
    grow: u8,
    /// The destination's segment size ([`segment_size`]), asked the first
    /// time the direction is busy (0: not yet; a small HTTP exchange never
    /// asks). u32 to keep the relay's task small.
    mss: u32,
}

impl Busy {
    /// Not busy, not grown, the segment size not asked yet.
    fn new() -> Busy {
        Busy {
            on: false,
            grow: 0,
            mss: 0,
        }
    }

    /// What this direction reads at once now: [`COPY_CHUNK`] while no
    /// other direction on the worker is busy, [`BUSY_CHUNK`] doubled as
    /// many times as [`Busy::adapt`] says while one is, each cut to whole
    /// segments of the destination once its segment size is known, so
    /// that no write ends in a runt segment.
    ///
    /// Why larger steps: with several busy relays the worker is the
    /// bottleneck, every socket on both sides is full or empty, and each
    /// step's cost is mostly fixed: waking the reader downstream, and the
    /// window update that makes the sender upstream transmit, both run in
    /// the worker's context on loopback. Fewer, larger steps pay them less
    /// often. Why whole segments: loopback connections here were opened
    /// with segment sizes of 65,483, 32,768 and 31,744 bytes (the kernel
    /// bounds it by half the peer's first window), and 32 KiB on the last
    /// is one segment and a runt of 1,024 bytes, which costs the reader
    /// downstream a wake-up and the stack a packet of its own.
    fn chunk(&self) -> usize {
        let limit = if several_busy() {
            BUSY_CHUNK << self.grow
        } else {
            COPY_CHUNK
        };
        whole_segments(limit, self.mss as usize)
    }

    /// After a busy step of `asked` bytes that read `n`: the next step is
    /// twice as large (up to [`BUSY_GROW`] doublings) when this one was
    /// filled and the destination took all of it, half as large when the
    /// destination left some behind. Kept while the direction is idle.
    ///
    /// Why: each step's fixed cost on loopback is a wake-up of the reader
    /// downstream, which then preempts the worker (a worker that always
    /// has work never sleeps, so the woken reader is the one the scheduler
    /// owes); measured in bulk 8 down, 17,388 such wake-ups in 2 s with
    /// 128 KiB steps and 5,379 with 512 KiB, and 16-18% less server CPU
    /// per GB in both 8-stream cells (`bench/RESULTS.md`). Why only while
    /// the destination takes every step whole: what it does not take
    /// waits in a buffer of the direction's own, and a fixed 512 KiB step
    /// moved 3-7% less in bulk 8 up than 128 KiB did.
    fn adapt(&mut self, asked: usize, n: usize, backlog: bool) {
        if backlog {
            self.grow = self.grow.saturating_sub(1);
        } else if n >= asked && self.grow < BUSY_GROW {
            self.grow += 1;
        }
    }

    /// Marks the direction busy or not; the first time busy, asks `dfd`'s
    /// segment size.
    fn set(&mut self, on: bool, dfd: i32) {
        if on && self.mss == 0 {
            self.mss = u32::try_from(segment_size(dfd)).unwrap_or(u32::MAX);
        }
        self.count(on);
    }

    fn count(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            BUSY.with(|b| {
                b.set(if on {
                    b.get() + 1
                } else {
                    b.get().saturating_sub(1)
                })
            });
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.count(false);
    }
}

/// The most whole segments of `mss` bytes in `limit`; `limit` itself when
/// the size is unknown (0) or one segment is larger (a step of one partial
/// segment has no runt after it).
fn whole_segments(limit: usize, mss: usize) -> usize {
    if mss == 0 || mss > limit {
        limit
    } else {
        limit / mss * mss
    }
}

/// The segment size of the connected TCP socket `fd` (TCP_MAXSEG: what the
/// kernel cuts its writes into, asked through socket2); `usize::MAX` when it
/// cannot be had (no descriptor, not a TCP socket), which
/// [`whole_segments`] reads as larger than any step.
fn segment_size(fd: i32) -> usize {
    if fd < 0 {
        return usize::MAX;
    }
    // SAFETY: `fd` is not -1, and it is the caller's borrowed socket, open
    // for the length of this call, which is all the borrow lives.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match socket2::SockRef::from(&fd).mss() {
        Ok(m) if m > 0 => m as usize,
        _ => usize::MAX,
    }
}

/// Whether the peer of `s` runs on this host: a loopback address, or the
/// address the connection came in on (a host's own address also goes
/// through the loopback device). Unknown counts as remote.
fn peer_on_this_host(s: &TcpStream) -> bool {
    match (s.peer_addr(), s.local_addr()) {
        (Ok(p), Ok(l)) => {
            let p = p.ip().to_canonical();
            p.is_loopback() || p == l.ip().to_canonical()
        }
        _ => false,
    }
}

/// send(2) of `buf` on the socket `fd`, without SIGPIPE when the peer has
/// gone (EPIPE instead).
fn send_some(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send(2) reads at most `buf.len()` bytes from `buf`, which we
    // borrow; the callers pass the descriptor of a socket they borrow, so
    // it is open and is that socket.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// How a direct relay direction moves what it reads, and what it holds
/// that the destination has not taken yet.
enum Mover {
    /// socket → pipe → socket; the bytes in the pipe.
    Splice(Pipe, usize),
    /// Read into the worker's buffer and sent at once; what the socket
    /// did not take, in a buffer of this direction's own until written.
    Copy(Vec<u8>),
}

impl Mover {
    /// The most one step reads (`busy`: the direction's place among the
    /// worker's busy copies).
    fn chunk(&self, busy: &Busy) -> usize {
        match self {
            Mover::Splice(..) => 1 << 20,
            Mover::Copy(_) => busy.chunk(),
        }
    }

    /// Reads at most `asked` bytes from `sfd` (0: end of stream). A copy
    /// sends them to `dfd` in the same step, since the worker's buffer is
    /// free again only then.
    fn take(&mut self, sfd: i32, dfd: i32, asked: usize) -> io::Result<usize> {
        match self {
            Mover::Splice(pipe, held) => {
                let n = splice(sfd, pipe.0[1], asked)?;
                *held = n;
                Ok(n)
            }
            Mover::Copy(rest) => COPY_BUF.with(|b| {
                let mut b = b.borrow_mut();
                if b.len() < asked {
                    b.resize(asked, 0);
                }
                let buf = &mut b[..asked];
                // SAFETY: read(2) writes at most `buf.len()` bytes into
                // `buf`, which we borrow mutably; `sfd` is the caller's
                // borrowed socket, open.
                let n = unsafe { libc::read(sfd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = n as usize;
                if n == 0 {
                    return Ok(0);
                }
                let sent = match send_some(dfd, &buf[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
                rest.extend_from_slice(&buf[sent..n]);
                Ok(n)
            }),
        }
    }

    /// Whether bytes wait for the destination.
    fn holds(&self) -> bool {
        match self {
            Mover::Splice(_, held) => *held > 0,
            Mover::Copy(rest) => !rest.is_empty(),
        }
    }

    /// Writes some of what it holds to `dfd`: how much went.
    fn give(&mut self, dfd: i32) -> io::Result<usize> {
        match self {
            Mover::Splice(pipe, held) => {
                let m = splice(pipe.0[0], dfd, *held)?;
                *held -= m;
                Ok(m)
            }
            Mover::Copy(rest) => {
                let m = send_some(dfd, rest)?;
                rest.drain(..m);
                if rest.is_empty() {
                    // The allocation goes with the backlog.
                    *rest = Vec::new();
                }
                Ok(m)
            }
        }
    }
}

/// One direction of a direct relay: nonblocking syscalls, waiting for
/// readiness when a side would block. `copy`: through the worker's buffer
/// (the destination is on this host); else socket → pipe → socket with
/// splice(2).
///
/// Not io_uring's own splice op: measured on loopback, the ring punts
/// socket splices to its worker threads, costing about twice the CPU per GB
/// of a buffered copy. Readiness plus a direct syscall is what Go does.
// An async move block on purpose: an async fn would keep each argument
// twice in the connection's task (see `run`).
#[allow(clippy::manual_async_fn)]
fn direct_pump<'a>(
    src: &'a TcpStream,
    dst: &'a TcpStream,
    copy: bool,
    counter: &'a Meter<'a>,
    aborters: &'a [Aborter; 2],
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
        set_nonblocking(sfd);
        set_nonblocking(dfd);
        let r: io::Result<()> = async {
            let mut mover = if copy {
                Mover::Copy(Vec::new())
            } else {
                Mover::Splice(Pipe::new()?, 0)
            };
            // Whether the last read took what the socket had: then the
            // next read would most likely find nothing and fail with
            // EAGAIN, a syscall spent on learning that (one per request
            // and direction of a keep-alive HTTP connection); waiting for
            // readiness first answers at once if more has arrived.
            let mut drained = false;
            // u32: it sits in the task beside `drained` for the relay's life.
            let mut turn = 0u32;
            let mut busy = Busy::new();
            loop {
                if drained {
                    src.readable(false).await?;
                }
                let asked = counter.chunk(mover.chunk(&busy));
                let n = match mover.take(sfd, dfd, asked) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        busy.set(false, dfd);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // A paced relay may ask for less than SMALL_READ and get
                // all of it: that says nothing about what is left.
                drained = n < asked.min(SMALL_READ);
                if copy {
                    busy.set(n >= asked.min(COPY_CHUNK), dfd);
                    if several_busy() {
                        busy.adapt(asked, n, mover.holds());
                    }
                }
                // A direction whose source never runs dry and whose
                // destination never fills would never suspend, and the
                // worker's other connections would wait for as long as it
                // moves bytes. After a turn it waits for readiness, which
                // returns at once but only once the worker has gone round
                // its ring (a plain yield would not: with deferred task work
                // the kernel posts completions only when the worker waits).
                turn += u32::try_from(n).unwrap_or(TURN);
                if turn >= TURN {
                    turn = 0;
                    drained = true;
                }
                while mover.holds() {
                    match mover.give(dfd) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "peer stopped accepting data",
                            ))
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            dst.writable(false).await?
                        }
                        Err(e) => return Err(e),
                    }
                }
                counter.add_paced(n).await;
            }
        }
        .await;
        match r {
            // SAFETY: shutdown(2) touches no memory of ours; `dfd` is the
            // descriptor of `dst`, still borrowed here, so still that socket.
            Ok(()) => unsafe {
                libc::shutdown(dfd, libc::SHUT_WR);
            },
            Err(_) => abort_all(aborters),
        }
    }
}

// An async move block on purpose: an async fn would keep each argument
// twice in the connection's task (see `run`).
#[allow(clippy::manual_async_fn)]
fn mux_pump<'a>(
    mut r: crate::transport::mux::MuxReader,
    mut w: ConnWriter,
    counter: &'a Meter<'a>,
    aborters: &'a [Aborter; 2],
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        let result: io::Result<()> = async {
            while let Some(chunk) = r.read_chunk().await? {
                let n = chunk.len();
                w.write_all(chunk).await.0?;
                counter.add_paced(n).await;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => w.shutdown().await,
            Err(_) => abort_all(aborters),
        }
    }
}

/// What a direction does to the bytes between read and write.
// One per relay direction, built once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Transform {
    /// Nothing: write what was read.
    None,
    /// Towards frpc: compress, then encrypt.
    Encode(Box<Encoder>),
    /// From frpc: decrypt, then decompress.
    Decode(Box<Decoder>),
}

/// Compressor and cipher state (kilobytes: boxed so that a relay without
/// a transform does not carry it in its future).
struct Encoder {
    snappy: Option<SnappyEncoder>,
    cipher: Option<CfbStreamWriter>,
    out: Vec<u8>,
}

/// Decipher and decompressor state.
struct Decoder {
    cipher: Option<CfbStreamReader>,
    snappy: Option<SnappyDecoder>,
    carry: Vec<u8>,
    out: Vec<u8>,
}

impl Transform {
    /// Towards frpc (`encode`) or from it: nothing when the proxy neither
    /// encrypts nor compresses.
    fn new(o: &RelayOpts, encode: bool) -> Self {
        if o.plain() {
            return Transform::None;
        }
        let (key, snappy) = (o.encryption_key, o.compression);
        if encode {
            Transform::Encode(Box::new(Encoder {
                snappy: snappy.then(SnappyEncoder::new),
                cipher: key.map(CfbStreamWriter::new),
                out: Vec::with_capacity(o.buffer + 64),
            }))
        } else {
            Transform::Decode(Box::new(Decoder {
                cipher: key.map(CfbStreamReader::new),
                snappy: snappy.then(SnappyDecoder::new),
                carry: Vec::new(),
                out: Vec::with_capacity(o.buffer),
            }))
        }
    }
}

/// The buffer a buffered relay direction reads into while its connection
/// is idle or quiet: a pending read holds its buffer, so an idle
/// connection costs this much. Not below 256 bytes: a read with less room
/// than that reserves 16 KiB first (see `conn::read_append`).
const IDLE_READ: usize = 256;

/// The next read's buffer size, when it should change: after `n` bytes
/// came into a buffer of `asked`, the full `full` once a read filled the
/// buffer (more is likely waiting), [`IDLE_READ`] once a read came back
/// well short of the full size (the peer has paused).
fn next_size(n: usize, asked: usize, full: usize) -> Option<usize> {
    if n >= asked && asked < full {
        Some(full)
    } else if n < full / 4 && asked > IDLE_READ {
        Some(IDLE_READ.min(full))
    } else {
        None
    }
}

// An async move block on purpose: an async fn would keep each argument
// twice in the connection's task (see `run`).
#[allow(clippy::manual_async_fn)]
fn pump<'a>(
    (mut r, mut first): (ConnReader, Vec<u8>),
    mut w: ConnWriter,
    mut t: Transform,
    counter: &'a Meter<'a>,
    aborters: &'a [Aborter; 2],
    bufsize: usize,
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        // A limited relay reads at most a pacing step at a time.
        let full = counter.chunk(bufsize);
        // An idle connection waits with a small buffer (a pending read holds
        // its buffer); a read that fills it switches to the full one, a short
        // one switches back (see `next_size`).
        let mut buf = Vec::with_capacity(IDLE_READ.min(full));
        let result: io::Result<()> = async {
            loop {
                buf.clear();
                // What was read before the relay (a vhost connection's
                // ClientHello) goes first, as if just read.
                let (res, b) = if first.is_empty() {
                    r.read(buf).await
                } else {
                    let f = std::mem::take(&mut first);
                    (Ok(f.len()), f)
                };
                buf = b;
                let n = res?;
                if n == 0 {
                    return Ok(());
                }
                let asked = buf.capacity();
                let mut defer_pace = 0;
                match &mut t {
                    Transform::None => {
                        let (res, b) = w.write_all(buf).await;
                        buf = b;
                        res?;
                        counter.add_paced(n).await;
                    }
                    Transform::Encode(e) => {
                        defer_pace = n;
                        let Encoder {
                            snappy,
                            cipher,
                            out,
                        } = &mut **e;
                        counter.add(n as u64);
                        // Compress into `out`, or keep the read buffer; then
                        // encrypt whichever holds the bytes in place.
                        let compressed = snappy.is_some();
                        if let Some(s) = snappy {
                            out.clear();
                            s.encode(&buf, out);
                        }
                        let data = if compressed { &mut *out } else { &mut buf };
                        if let Some(iv) = cipher.as_mut().and_then(|c| c.encrypt_in_place(data)) {
                            // Once per connection: the IV goes ahead of the first bytes.
                            w.write_all(iv.to_vec()).await.0?;
                        }
                        if compressed {
                            let (res, o) = w.write_all(std::mem::take(out)).await;
                            *out = o;
                            res?;
                        } else {
                            let (res, b) = w.write_all(buf).await;
                            buf = b;
                            res?;
                        }
                    }
                    Transform::Decode(d) => {
                        // Paced by what came off the wire (before decompression).
                        counter.pace(n).await;
                        let Decoder {
                            cipher,
                            snappy,
                            carry,
                            out,
                        } = &mut **d;
                        // Decrypt in place; the first bytes of the stream are the
                        // IV, which the reader swallows.
                        let plain_len = match cipher {
                            Some(c) => c.decrypt_in_place(&mut buf[..]).len(),
                            None => n,
                        };
                        let iv_bytes = n - plain_len;
                        match snappy {
                            Some(s) => {
                                carry.extend_from_slice(&buf[iv_bytes..]);
                                out.clear();
                                let used = s.decode(carry, out).map_err(|e| {
                                    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
                                })?;
                                carry.drain(..used);
                                if out.is_empty() {
                                    continue;
                                }
                                counter.add(out.len() as u64);
                                let (res, o) = w.write_all(std::mem::take(out)).await;
                                *out = o;
                                res?;
                            }
                            None => {
                                if iv_bytes > 0 {
                                    buf.drain(..iv_bytes);
                                }
                                if buf.is_empty() {
                                    continue;
                                }
                                counter.add(buf.len() as u64);
                                let (res, b) = w.write_all(buf).await;
                                buf = b;
                                res?;
                            }
                        }
                    }
                }
                if defer_pace > 0 {
                    counter.pace(defer_pace).await;
                }
                if let Some(size) = next_size(n, asked, full) {
                    buf = Vec::with_capacity(size);
                }
            }
        }
        .await;
        match result {
            Ok(()) => w.shutdown().await,
            Err(e) => {
                tracing::debug!(error = %e, "relay direction failed; aborting both sides");
                abort_all(aborters);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::rc::Weak;
    use std::time::Duration;

    /// A meter counting into `worker` and `proxy`, with no limits.
    fn unlimited<'a>(worker: &'a AtomicU64, proxy: &'a AtomicU64) -> Meter<'a> {
        Meter {
            worker,
            proxy,
            limits: None,
            report: None,
            timer: RefCell::new(None),
        }
    }

    /// A connected loopback TCP pair: the dialling end and the accepted one.
    fn loopback_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }

    /// Aborters that reach no connection.
    fn no_aborters() -> [Aborter; 2] {
        [Aborter::Socket(Weak::new()), Aborter::Socket(Weak::new())]
    }

    /// Steps end on segment boundaries: whole segments, or one step shorter
    /// than a segment; the size unknown, the plain limit.
    #[test]
    fn copies_step_in_whole_segments() {
        assert_eq!(whole_segments(COPY_CHUNK, 31_744), 31_744);
        assert_eq!(whole_segments(COPY_CHUNK, 32_768), 32_768);
        assert_eq!(whole_segments(COPY_CHUNK, 65_483), COPY_CHUNK);
        assert_eq!(whole_segments(BUSY_CHUNK, 65_483), 130_966);
        assert_eq!(whole_segments(BUSY_CHUNK, 31_744), 126_976);
        assert_eq!(whole_segments(BUSY_CHUNK, 1_448), 130_320);
        assert_eq!(whole_segments(BUSY_CHUNK, 0), BUSY_CHUNK);
        assert_eq!(whole_segments(BUSY_CHUNK, usize::MAX), BUSY_CHUNK);
        // A real socket's size is what the kernel reports; not a socket
        // counts as larger than any step.
        let (c, _accepted) = loopback_pair();
        let mss = segment_size(c.as_raw_fd());
        assert!((536..=65_535).contains(&mss), "{mss}");
        assert_eq!(segment_size(-1), usize::MAX);
    }

    /// Large steps only while two or more directions on the worker are
    /// busy, cut to the destination's segments once it was busy; a
    /// direction dropped mid-relay gives its place back.
    #[test]
    fn copies_step_larger_only_while_several_are_busy() {
        let (c, _accepted) = loopback_pair();
        let fd = c.as_raw_fd();
        let mss = segment_size(fd);
        let mut a = Busy::new();
        let mut b = Busy::new();
        assert_eq!(a.chunk(), COPY_CHUNK);
        a.set(true, fd);
        a.set(true, fd);
        assert_eq!(BUSY.with(Cell::get), 1, "set twice counts once");
        assert_eq!(a.mss as usize, mss);
        assert_eq!(
            a.chunk(),
            whole_segments(COPY_CHUNK, mss),
            "alone on the worker"
        );
        b.set(true, fd);
        assert_eq!(a.chunk(), whole_segments(BUSY_CHUNK, mss));
        assert!(a.chunk() > COPY_CHUNK);
        drop(b);
        assert_eq!(BUSY.with(Cell::get), 1);
        assert_eq!(a.chunk(), whole_segments(COPY_CHUNK, mss));
        a.set(false, fd);
        assert_eq!(BUSY.with(Cell::get), 0);
        drop(a);
        assert_eq!(
            BUSY.with(Cell::get),
            0,
            "an idle direction gives nothing back"
        );
    }

    /// A busy direction's step doubles while it is filled and taken
    /// whole, up to BUSY_GROW doublings, and halves when the destination
    /// leaves a backlog; a step that was not filled does not grow it.
    #[test]
    fn busy_steps_grow_while_taken_whole_and_shrink_on_a_backlog() {
        let mut a = Busy::new();
        let mut b = Busy::new();
        a.set(true, -1);
        b.set(true, -1);
        assert_eq!(a.chunk(), BUSY_CHUNK);
        a.adapt(a.chunk(), a.chunk() - 1, false);
        assert_eq!(a.chunk(), BUSY_CHUNK, "not filled: no growth");
        for want in [2 * BUSY_CHUNK, 4 * BUSY_CHUNK, 4 * BUSY_CHUNK] {
            a.adapt(a.chunk(), a.chunk(), false);
            assert_eq!(a.chunk(), want);
        }
        a.adapt(a.chunk(), a.chunk(), true);
        assert_eq!(a.chunk(), 2 * BUSY_CHUNK, "a backlog halves it");
        drop(b);
        assert_eq!(a.chunk(), COPY_CHUNK, "alone on the worker again");
        a.adapt(COPY_CHUNK, 10, true);
        a.adapt(COPY_CHUNK, 10, true);
        assert_eq!(a.grow, 0, "never below BUSY_CHUNK");
        drop(a);
        assert_eq!(BUSY.with(Cell::get), 0);
    }

    /// Two copying relays on one worker whose sources are full both count
    /// as busy and step larger (the worker's buffer grows past
    /// [`COPY_CHUNK`]), and every byte arrives in order; when they end,
    /// both give their places back.
    #[test]
    fn two_busy_copies_step_larger_and_move_every_byte() {
        const LEN: usize = 16 << 20;
        fn pattern(i: usize) -> u8 {
            (i % 251) as u8
        }
        let mut relays = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..2 {
            let (mut writer, src) = loopback_pair();
            let (dst, mut reader) = loopback_pair();
            std::thread::spawn(move || {
                use std::io::Write;
                let data: Vec<u8> = (0..LEN).map(pattern).collect();
                writer.write_all(&data).unwrap();
            });
            readers.push(std::thread::spawn(move || {
                use std::io::Read;
                let mut got = Vec::with_capacity(LEN);
                reader.read_to_end(&mut got).unwrap();
                got.len() == LEN && got.iter().enumerate().all(|(i, b)| *b == pattern(i))
            }));
            relays.push((src, dst));
        }
        // Both sources full before the relays start.
        std::thread::sleep(Duration::from_millis(200));
        let grown = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ends: Vec<(TcpStream, TcpStream)> = relays
                    .into_iter()
                    .map(|(s, d)| {
                        (
                            TcpStream::from_std(s).unwrap(),
                            TcpStream::from_std(d).unwrap(),
                        )
                    })
                    .collect();
                let (worker, proxy) = (AtomicU64::new(0), AtomicU64::new(0));
                let meter = unlimited(&worker, &proxy);
                let aborters = no_aborters();
                let a = direct_pump(&ends[0].0, &ends[0].1, true, &meter, &aborters);
                let b = direct_pump(&ends[1].0, &ends[1].1, true, &meter, &aborters);
                monoio::join!(a, b);
                assert_eq!(
                    worker.load(std::sync::atomic::Ordering::Relaxed),
                    2 * LEN as u64
                );
            });
            (COPY_BUF.with(|b| b.borrow().len()), BUSY.with(Cell::get))
        })
        .join()
        .unwrap();
        for r in readers {
            assert!(r.join().unwrap(), "bytes lost or out of order");
        }
        assert!(
            grown.0 > COPY_CHUNK,
            "never stepped larger: buffer {}",
            grown.0
        );
        assert_eq!(grown.1, 0, "places not given back");
    }

    /// A direct relay whose source always has bytes (`/dev/zero`) and
    /// whose destination always has room (a UDP socket to a receiver that
    /// never reads: each send is taken whole, and dropped there) never
    /// finds a reason to wait. On the worker's own ring (deferred task
    /// work) it must still hand the worker back, so that a timer and a
    /// socket of another task are served while it runs.
    #[test]
    fn a_relay_that_never_waits_gives_its_worker_back() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut rt, _)) = crate::runtime::ring::uring_runtime("auto") else {
                // No io_uring here (the worker would run on epoll).
                let _ = done_tx.send(None);
                return;
            };
            rt.block_on(async move {
                let zero = std::fs::File::open("/dev/zero").unwrap();
                let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let out = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                out.connect(sink.local_addr().unwrap()).unwrap();
                // Only the descriptors matter to the relay: it reads and
                // sends with syscalls and waits for poll readiness.
                // SAFETY: each descriptor is moved out of its owner
                // (into_raw_fd) and owned by exactly one wrapper after.
                let (src, dst) = unsafe {
                    use std::os::fd::IntoRawFd;
                    (
                        std::net::TcpStream::from_raw_fd(zero.into_raw_fd()),
                        std::net::TcpStream::from_raw_fd(out.into_raw_fd()),
                    )
                };
                let (src, dst) = (
                    TcpStream::from_std(src).unwrap(),
                    TcpStream::from_std(dst).unwrap(),
                );
                let (worker, proxy) = (AtomicU64::new(0), AtomicU64::new(0));
                let meter = unlimited(&worker, &proxy);
                let aborters = no_aborters();
                let relay = direct_pump(&src, &dst, true, &meter, &aborters);
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let others = async {
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    std::thread::spawn(move || std::net::TcpStream::connect(addr));
                    let accepted = listener.accept().await.is_ok();
                    (accepted, worker.load(std::sync::atomic::Ordering::Relaxed))
                };
                // Whichever ends first: the relay never does.
                let (accepted, moved) = monoio::select! {
                    _ = relay => (false, 0),
                    r = others => r,
                };
                let _ = done_tx.send(Some((accepted, moved)));
                drop(sink);
            });
        });
        let Some((accepted, moved)) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the worker's timer and accept waited behind one relay for 10 s")
        else {
            eprintln!("skipped: this kernel gives no io_uring");
            return;
        };
        assert!(accepted, "the other task's connection was not accepted");
        assert!(
            moved > 1 << 20,
            "the relay moved only {moved} bytes meanwhile"
        );
    }

    #[test]
    fn buffers_grow_for_bulk_and_shrink_when_quiet() {
        let full = 64 * 1024;
        // Idle start: a small read that filled its buffer asks for the full one.
        assert_eq!(next_size(IDLE_READ, IDLE_READ, full), Some(full));
        // A short small read keeps the small buffer.
        assert_eq!(next_size(100, IDLE_READ, full), None);
        // Bulk: full reads keep the full buffer, so do reads of a quarter or more.
        assert_eq!(next_size(full, full, full), None);
        assert_eq!(next_size(full / 4, full, full), None);
        // Quiet again: back to the small one.
        assert_eq!(next_size(full / 4 - 1, full, full), Some(IDLE_READ));
        // A pacing step smaller than the idle buffer is the buffer.
        assert_eq!(next_size(10, 128, 128), None);
    }
}
