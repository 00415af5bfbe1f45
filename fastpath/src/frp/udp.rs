//! `udp` proxies, as frps serves them: a UDP socket on the proxy's public
//! port, owned by its session's worker, and **one** work connection from
//! frpc that carries every datagram both ways as a `UDPPacket` message
//! (the datagram in base64, and the user's address), wrapped in the
//! proxy's `useEncryption`/`useCompression` like any work connection's
//! payload.
//!
//! - Users → frpc: one io_uring receive waits for a datagram, then
//!   recvmmsg(2) takes what else the socket holds, 32 per call; each
//!   datagram (cut at `udpPacketSize`) is queued for the
//!   work connection, at most `fastpath.udpQueue` of them (frps: 1024).
//!   A full queue stops the receiving until the writer has taken from it:
//!   meanwhile the kernel's socket buffer takes the flood and drops what
//!   overflows it, which costs this process nothing (frps reads each
//!   datagram and then drops it). The kernel's drops at the socket
//!   (`SO_MEMINFO`, looked at while the queue is full, every 64 receives
//!   and at the end) are counted with the few dropped here
//!   (`udp_dropped`), so a flood at a proxy whose frpc is slow costs a
//!   bounded queue and is seen.
//! - The writer takes everything queued at once and writes it as one
//!   buffer (frps writes each message on its own).
//! - frpc → users: each `UDPPacket` is sent to the address it names; the
//!   answers among the messages one read brought in (up to 32) go out with
//!   one sendmmsg(2), and whatever the socket did not take at once (and a
//!   lone answer) by io_uring, one send each.
//!   frpc's `Ping`s keep the connection; with no message for 60 s it is
//!   closed (as frps does), and so is one that sends a malformed or
//!   oversized message (a frame over 10 KiB), with the reason logged.
//! - A failed work connection is replaced: the proxy takes another from
//!   the session's pool (after 1 s when none comes), as frps does.
//!
//! Bytes are counted in the proxy's traffic and paced by its tenant's
//! bandwidth bucket like any relay's (a paced receive leaves datagrams in
//! the kernel's socket buffer, which drops what overflows it).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::io::CancelHandle;
use monoio::net::udp::UdpSocket;
use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::msg::{Message, UdpPacket};
use proto::snappy::{SnappyDecoder, SnappyEncoder};
use socket2::{Domain, Protocol, Socket, Type};

use crate::frp::msgio::{self, ByteRead, MsgError, MsgReader, Wire};
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::conn::{Aborter, Conn, ConnReader, ConnWriter};

/// frps waits this long after registering the proxy before it asks for
/// the work connection, so that NewProxyResp reaches frpc first.
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// How long to wait before asking again when no work connection came.
const RETRY: Duration = Duration::from_secs(1);

/// The most bytes of messages written to frpc in one write.
const BATCH: usize = 64 * 1024;

/// The most bytes of frpc's messages read in one read.
const READ_AHEAD: usize = 64 * 1024;

/// What the datagram pump needs of its proxy and the proxy's session
/// (the proxy implements it; this module knows neither).
#[allow(async_fn_in_trait)]
pub trait Owner {
    /// The proxy's name, for logs.
    fn name(&self) -> &str;
    /// Whether the proxy has closed.
    fn is_closed(&self) -> bool;
    /// What ends a pending receive when the proxy closes.
    fn cancel_handle(&self) -> CancelHandle;
    /// Its work connections' wrapping: the AES-CFB key (`useEncryption`)
    /// and whether they are snappy-framed (`useCompression`).
    fn wrapping(&self) -> (Option<[u8; 16]>, bool);
    /// Count `n` bytes towards frpc (`to_frpc`) or from it, and wait as
    /// long as the bandwidth limits ask.
    async fn meter(&self, stats: &WorkerStats, to_frpc: bool, n: usize);
    /// Keep the work connection where a policy close reaches it.
    fn track(&self, ends: [Aborter; 2]) -> u64;
    /// Forget what `track` kept.
    fn untrack(&self, id: u64);
    /// A work connection from the session, started for this proxy, and
    /// its wire protocol; None when none came.
    async fn work_conn(&self) -> Option<(Conn, Wire)>;
    /// Whether the session has ended (no work connection will come).
    fn session_closed(&self) -> bool;
}

/// Bind a udp proxy's socket.
pub fn bind(ip: IpAddr, port: u16) -> io::Result<std::net::UdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Datagrams from users waiting for the work connection, bounded.
struct Queue {
    items: RefCell<VecDeque<(Vec<u8>, SocketAddr)>>,
    cap: usize,
    waker: Cell<Option<Waker>>,
    /// The receiver, waiting for room in a full queue.
    room_waker: Cell<Option<Waker>>,
    /// The proxy's socket is done receiving: the writer ends.
    closed: Cell<bool>,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        Queue {
            items: RefCell::new(VecDeque::new()),
            cap,
            waker: Cell::new(None),
            room_waker: Cell::new(None),
            closed: Cell::new(false),
        }
    }

    fn is_full(&self) -> bool {
        self.items.borrow().len() >= self.cap
    }

    /// The oldest datagram, taken out (and the receiver woken, should it
    /// wait for room).
    fn pop(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let item = self.items.borrow_mut().pop_front();
        if item.is_some() {
            if let Some(w) = self.room_waker.take() {
                w.wake();
            }
        }
        item
    }

    /// Wait until the queue has room.
    async fn room(&self) {
        poll_fn(|cx| {
            if self.is_full() {
                self.room_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Queue one datagram; false (dropped) when the queue is full.
    fn push(&self, datagram: Vec<u8>, from: SocketAddr) -> bool {
        let mut items = self.items.borrow_mut();
        if items.len() >= self.cap {
            return false;
        }
        items.push_back((datagram, from));
        drop(items);
        self.wake();
        true
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    /// Wait until something is queued (true), or the queue closed or
    /// `stop` was set (false).
    async fn ready(&self, stop: &Cell<bool>) -> bool {
        poll_fn(|cx| {
            if self.closed.get() || stop.get() {
                Poll::Ready(false)
            } else if !self.items.borrow().is_empty() {
                Poll::Ready(true)
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Serve a udp proxy on `socket` (its public `port`) until it closes,
/// then free the port.
pub async fn serve<O: Owner + 'static>(
    proxy: Rc<O>,
    ctx: Rc<WorkerCtx>,
    socket: std::net::UdpSocket,
    port: u16,
) {
    match UdpSocket::from_std(socket) {
        Ok(sock) => {
            let sock = Rc::new(sock);
            let queue = Rc::new(Queue::new(ctx.shared.config.fastpath.udp_queue));
            let feeder = monoio::spawn(feed(
                proxy.clone(),
                ctx.clone(),
                sock.clone(),
                queue.clone(),
            ));
            receive(&*proxy, &ctx, &sock, &queue).await;
            queue.close();
            feeder.await;
        }
        Err(e) => {
            tracing::warn!(proxy_name = %proxy.name(), error = %e, "cannot register udp proxy socket")
        }
    }
    // The socket is closed by now.
    ctx.shared.udp_ports.release(port);
}

/// Users' datagrams into the queue, until the proxy closes: an io_uring
/// receive waits for the first, then what else the socket already holds
/// is taken [`BURST`] at a time with recvmmsg(2), without waiting.
async fn receive<O: Owner>(proxy: &O, ctx: &WorkerCtx, sock: &UdpSocket, queue: &Queue) {
    let stats = ctx.stats();
    let size = ctx.shared.config.udp_packet_size as usize;
    let handle = proxy.cancel_handle();
    let mut buf = vec![0u8; size];
    let mut burst = Burst::new(size);
    let mut dropped = 0u64;
    let mut kernel = KernelDrops::new(sock.as_raw_fd());
    let mut wakes = 0u32;
    while !proxy.is_closed() {
        if queue.is_full() {
            // Leave the flood to the kernel until the writer takes some
            // (looking again now and then: the proxy may have closed).
            let _ = monoio::time::timeout(ROOM_WAIT, queue.room()).await;
            let n = kernel.since_last();
            count_drops(proxy, stats, queue, n, &mut dropped, QUEUE_FULL);
            continue;
        }
        // What the kernel dropped while this worker was busy elsewhere,
        // looked at every so often.
        wakes = wakes.wrapping_add(1);
        if wakes.is_multiple_of(KERNEL_DROPS_EVERY) {
            let n = kernel.since_last();
            count_drops(proxy, stats, queue, n, &mut dropped, SOCKET_FULL);
        }
        let (r, b) = sock.cancelable_recv_from(buf, handle.clone()).await;
        buf = b;
        match r {
            Ok((n, from)) => {
                take_in(proxy, stats, queue, buf[..n].to_vec(), from, &mut dropped).await;
                // What came in meanwhile, a bounded number of rounds before
                // the next wait lets other tasks run.
                for _ in 0..BURST_ROUNDS {
                    let k = burst.take(sock.as_raw_fd());
                    for i in 0..k {
                        if let Some((datagram, from)) = burst.get(i) {
                            let datagram = datagram.to_vec();
                            take_in(proxy, stats, queue, datagram, from, &mut dropped).await;
                        }
                    }
                    if k < BURST {
                        break;
                    }
                }
            }
            Err(_) if proxy.is_closed() => break,
            Err(e) => {
                tracing::debug!(proxy_name = %proxy.name(), error = %e, "udp receive failed");
            }
        }
    }
    let n = kernel.since_last();
    count_drops(proxy, stats, queue, n, &mut dropped, SOCKET_FULL);
}

/// One user datagram into the queue, or dropped and counted when it is
/// full (one log line per 1024 drops).
async fn take_in<O: Owner>(
    proxy: &O,
    stats: &WorkerStats,
    queue: &Queue,
    datagram: Vec<u8>,
    from: SocketAddr,
    dropped: &mut u64,
) {
    let n = datagram.len();
    if queue.push(datagram, from) {
        WorkerStats::bump(&stats.udp_datagrams_in, 1);
        proxy.meter(stats, true, n).await;
    } else {
        count_drops(proxy, stats, queue, 1, dropped, QUEUE_FULL);
    }
}

/// Why datagrams were dropped: the queue for frpc was full (and the
/// receiving stopped, or a burst already read did not fit).
const QUEUE_FULL: &str = "the queue for frpc is full (fastpath.udpQueue)";
/// Why datagrams were dropped: the socket's buffer overflowed while the
/// worker was busy.
const SOCKET_FULL: &str = "the proxy's socket buffer overflowed (the worker was busy)";

/// Receives between two looks at the kernel's drop count.
const KERNEL_DROPS_EVERY: u32 = 64;

/// Count `n` datagrams dropped, here or in the kernel's socket buffer
/// (a log line for the first and then one per 1024).
fn count_drops<O: Owner>(
    proxy: &O,
    stats: &WorkerStats,
    queue: &Queue,
    n: u64,
    dropped: &mut u64,
    why: &str,
) {
    if n == 0 {
        return;
    }
    WorkerStats::bump(&stats.udp_dropped, n);
    if *dropped / 1024 != (*dropped + n) / 1024 || *dropped == 0 {
        tracing::info!(proxy_name = %proxy.name(), queued = queue.cap, total = *dropped + n,
            "udp datagrams dropped: {why}");
    }
    *dropped += n;
}

/// How long the receiver waits for room in a full queue before it looks
/// whether the proxy closed.
const ROOM_WAIT: Duration = Duration::from_millis(100);

/// The kernel's count of datagrams a socket dropped (`SK_MEMINFO_DROPS`,
/// what `/proc/net/udp` shows as drops), read with `SO_MEMINFO`.
struct KernelDrops {
    fd: std::os::fd::RawFd,
    seen: u32,
}

impl KernelDrops {
    /// For the socket `fd`, which outlives this.
    fn new(fd: std::os::fd::RawFd) -> KernelDrops {
        KernelDrops {
            fd,
            seen: kernel_drops(fd).unwrap_or(0),
        }
    }

    /// Drops since the last call (0 where the kernel does not say).
    fn since_last(&mut self) -> u64 {
        let Some(now) = kernel_drops(self.fd) else {
            return 0;
        };
        let n = now.wrapping_sub(self.seen);
        self.seen = now;
        u64::from(n)
    }
}

/// `SK_MEMINFO_DROPS` of a socket.
fn kernel_drops(fd: std::os::fd::RawFd) -> Option<u32> {
    const DROPS: usize = libc::SK_MEMINFO_DROPS as usize;
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` and the
    // length it wrote into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize > DROPS * 4).then(|| info[DROPS])
}

/// Datagrams per recvmmsg(2).
const BURST: usize = 32;

/// recvmmsg(2) calls after one io_uring receive, at most.
const BURST_ROUNDS: usize = 8;

/// Buffers for one recvmmsg(2) of up to [`BURST`] datagrams of `size`
/// bytes (a longer one is cut, as the first receive cuts it).
struct Burst {
    size: usize,
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Burst {
    fn new(size: usize) -> Burst {
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr (null
        // pointers, zero lengths); `take` fills them before each call.
        let (addr, hdr) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Burst {
            size,
            bufs: vec![0u8; size * BURST],
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BURST
            ],
            addrs: vec![addr; BURST],
            hdrs: vec![hdr; BURST],
        }
    }

    /// Take what the socket holds now, up to [`BURST`] datagrams, without
    /// waiting: how many (none on EAGAIN or any error).
    fn take(&mut self, fd: std::os::fd::RawFd) -> usize {
        let base = self.bufs.as_mut_ptr();
        for i in 0..BURST {
            self.iov[i] = libc::iovec {
                // SAFETY: i * size is within `bufs` (BURST * size bytes).
                iov_base: unsafe { base.add(i * self.size) }.cast(),
                iov_len: self.size,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at buffers owned by `self`, which
        // outlive the call; MSG_DONTWAIT keeps it from blocking.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BURST as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(n).unwrap_or(0)
    }

    /// Datagram `i` of the last [`Burst::take`] and who sent it.
    fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let len = (self.hdrs[i].msg_len as usize).min(self.size);
        let from = sockaddr(&self.addrs[i])?;
        Some((&self.bufs[i * self.size..i * self.size + len], from))
    }
}

/// The address in a sockaddr_storage the kernel filled.
fn sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in, which fits.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6, which fits.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Keep one work connection carrying the queue, replacing it when it
/// fails, until the proxy closes.
async fn feed<O: Owner + 'static>(
    proxy: Rc<O>,
    ctx: Rc<WorkerCtx>,
    sock: Rc<UdpSocket>,
    queue: Rc<Queue>,
) {
    monoio::time::sleep(FIRST_WAIT).await;
    while !proxy.is_closed() && !queue.closed.get() {
        match proxy.work_conn().await {
            Some((work, wire)) => {
                let reason = carry(&proxy, &ctx, &sock, &queue, work, wire).await;
                if !proxy.is_closed() {
                    tracing::info!(proxy_name = %proxy.name(), %reason, "udp work connection ended; taking another");
                }
            }
            None if proxy.session_closed() => break,
            None => monoio::time::sleep(RETRY).await,
        }
    }
}

/// Carry datagrams both ways over one work connection until it fails;
/// why it ended.
async fn carry<O: Owner + 'static>(
    proxy: &Rc<O>,
    ctx: &Rc<WorkerCtx>,
    sock: &Rc<UdpSocket>,
    queue: &Rc<Queue>,
    work: Conn,
    wire: Wire,
) -> String {
    let (key, compress) = proxy.wrapping();
    let aborter = work.aborter();
    // A policy close of the proxy (or of its session) ends it too.
    let id = proxy.track([aborter.clone(), aborter.clone()]);
    let (r, w) = work.into_split();
    let stop = Rc::new(Cell::new(false));
    let writer = monoio::spawn(write_loop(
        proxy.clone(),
        ctx.clone(),
        w,
        queue.clone(),
        Framer::new(wire, key, compress),
        stop.clone(),
        aborter.clone(),
    ));
    let reason = read_loop(&**proxy, ctx, sock, r, wire, key, compress).await;
    stop.set(true);
    queue.wake();
    aborter.abort();
    writer.await;
    proxy.untrack(id);
    reason
}

/// frpc's answers to their users; returns why it stopped.
async fn read_loop<O: Owner>(
    proxy: &O,
    ctx: &WorkerCtx,
    sock: &UdpSocket,
    r: ConnReader,
    wire: Wire,
    key: Option<[u8; 16]>,
    compress: bool,
) -> String {
    let stats = ctx.stats();
    // One read takes up to READ_AHEAD of answers (about 40 of 1200 B):
    // with a few KiB per read, a busy proxy port took the worker 256
    // datagrams at a time while frpc's answers came in a few per turn,
    // and the answers waited, in frpc's socket buffers and then dropped.
    let mut src = Unwrap {
        r,
        cipher: key.map(CfbStreamReader::new),
        snappy: compress.then(SnappyDecoder::new),
        raw: Vec::with_capacity(READ_AHEAD),
        carry: Vec::new(),
    };
    let mut reader = MsgReader::new(Vec::with_capacity(READ_AHEAD), wire);
    // frps closes a udp work connection after 60 s without a message
    // (frpc sends a Ping every 30 s): `fastpath.udpIdleSecs`.
    let idle = ctx.shared.config.fastpath.udp_idle_secs;
    let mut out: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    loop {
        // One message waited for, then every whole one already read: the
        // answers among them go out together (sendmmsg(2)).
        let first = reader
            .next_within(&mut src, Duration::from_secs(idle))
            .await;
        let mut next = Some(first);
        let mut stop = None;
        while let Some(msg) = next.take() {
            match msg {
                Ok(Message::UdpPacket(packet)) => match user_addr(&packet) {
                    Some(to) => out.push((packet.content, to)),
                    None => {
                        WorkerStats::bump(&stats.udp_dropped, 1);
                        tracing::debug!(proxy_name = %proxy.name(), "udp packet from frpc names no user address; dropped");
                    }
                },
                // frpc's keep-alive.
                Ok(Message::Ping(_)) => {}
                Ok(other) => {
                    // frps ignores other messages here.
                    tracing::debug!(proxy_name = %proxy.name(), msg = other.name(), "ignored on a udp work connection");
                }
                Err(MsgError::Timeout) => {
                    stop = Some(format!("no message from frpc for {idle} s"));
                    break;
                }
                Err(e) => {
                    if e.is_malformed() {
                        WorkerStats::bump(&stats.protocol_errors, 1);
                        tracing::warn!(proxy_name = %proxy.name(), error = %e,
                            "udp work connection closed: malformed message from frpc");
                    }
                    stop = Some(e.to_string());
                    break;
                }
            }
            if out.len() < BURST {
                next = reader.try_next().transpose();
            }
        }
        let (sent, bytes) = send_answers(sock, proxy.name(), &mut out).await;
        if sent > 0 {
            WorkerStats::bump(&stats.udp_datagrams_out, sent);
            proxy.meter(stats, false, bytes).await;
        }
        if let Some(reason) = stop {
            return reason;
        }
    }
}

/// Sends frpc's answers to their users (and empties `items`): as many as
/// the socket takes at once with one sendmmsg(2), the rest (and a lone
/// one) by io_uring one at a time. Returns how many went and their bytes.
async fn send_answers(
    sock: &UdpSocket,
    proxy: &str,
    items: &mut Vec<(Vec<u8>, SocketAddr)>,
) -> (u64, usize) {
    let done = if items.len() > 1 {
        sendmmsg(sock.as_raw_fd(), items)
    } else {
        0
    };
    let mut bytes: usize = items[..done].iter().map(|(c, _)| c.len()).sum();
    let mut sent = done as u64;
    for (content, to) in items.drain(..).skip(done) {
        let n = content.len();
        let (res, _) = sock.send_to(content, to).await;
        match res {
            Ok(_) => {
                sent += 1;
                bytes += n;
            }
            Err(e) => {
                tracing::debug!(proxy_name = %proxy, %to, error = %e, "udp send to user failed")
            }
        }
    }
    (sent, bytes)
}

/// Sends `items` with one sendmmsg(2), without waiting: how many the
/// kernel took (0 on EAGAIN or any error; the caller sends the rest).
fn sendmmsg(fd: std::os::fd::RawFd, items: &[(Vec<u8>, SocketAddr)]) -> usize {
    let addrs: Vec<socket2::SockAddr> = items
        .iter()
        .map(|(_, to)| socket2::SockAddr::from(*to))
        .collect();
    let mut iov: Vec<libc::iovec> = items
        .iter()
        .map(|(c, _)| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths);
    // each is filled below.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; items.len()];
    for (i, h) in hdrs.iter_mut().enumerate() {
        h.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = addrs[i].len();
        h.msg_hdr.msg_iov = &mut iov[i];
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at addresses and buffers that live until
    // the call returns (`addrs`, `iov`, `items`); the kernel only reads the
    // data; MSG_DONTWAIT keeps the call from blocking.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            u32::try_from(hdrs.len()).unwrap_or(u32::MAX),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// The user address of a packet from frpc.
fn user_addr(p: &UdpPacket) -> Option<SocketAddr> {
    let a = p.remote_addr.as_ref()?;
    let port = u16::try_from(a.port).ok().filter(|&p| p != 0)?;
    Some(SocketAddr::new(a.ip?, port))
}

/// Queued datagrams to frpc, as many per write as are queued.
async fn write_loop<O: Owner>(
    proxy: Rc<O>,
    ctx: Rc<WorkerCtx>,
    mut w: ConnWriter,
    queue: Rc<Queue>,
    mut framer: Framer,
    stop: Rc<Cell<bool>>,
    aborter: Aborter,
) {
    let mut out = Vec::with_capacity(BATCH + 4096);
    while queue.ready(&stop).await {
        out.clear();
        while out.len() < BATCH {
            let Some((data, from)) = queue.pop() else {
                break;
            };
            framer.push(
                &Message::UdpPacket(UdpPacket {
                    content: data,
                    local_addr: None,
                    remote_addr: Some(from.into()),
                }),
                &mut out,
            );
        }
        framer.seal(&mut out);
        let (r, o) = w.write_all(std::mem::take(&mut out)).await;
        out = o;
        if let Err(e) = r {
            if !stop.get() {
                tracing::debug!(proxy_name = %proxy.name(), error = %e, "udp work connection write failed");
            }
            aborter.abort();
            break;
        }
    }
    drop(ctx);
}

/// Frames messages and wraps them as the proxy asks (snappy, then AES-CFB
/// with the IV ahead of the first bytes), as one buffer per write.
struct Framer {
    wire: Wire,
    snappy: Option<SnappyEncoder>,
    cipher: Option<CfbStreamWriter>,
    plain: Vec<u8>,
}

impl Framer {
    fn new(wire: Wire, key: Option<[u8; 16]>, compress: bool) -> Framer {
        Framer {
            wire,
            snappy: compress.then(SnappyEncoder::new),
            cipher: key.map(CfbStreamWriter::new),
            plain: Vec::new(),
        }
    }

    /// Frame `msg` into `out` (plaintext, or into the framer's staging
    /// buffer when it compresses).
    fn push(&mut self, msg: &Message, out: &mut Vec<u8>) {
        match &self.snappy {
            Some(_) => msgio::encode_into(msg, self.wire, &mut self.plain),
            None => msgio::encode_into(msg, self.wire, out),
        }
    }

    /// Compress and encrypt what was pushed, leaving `out` ready to write.
    fn seal(&mut self, out: &mut Vec<u8>) {
        if let Some(s) = &mut self.snappy {
            s.encode(&self.plain, out);
            self.plain.clear();
        }
        if let Some(c) = &mut self.cipher {
            if let Some(iv) = c.encrypt_in_place(out) {
                // The first write of the connection carries the IV first.
                out.splice(0..0, iv);
            }
        }
    }
}

/// A work connection's reading half with the proxy's wrapping undone.
struct Unwrap {
    r: ConnReader,
    cipher: Option<CfbStreamReader>,
    snappy: Option<SnappyDecoder>,
    raw: Vec<u8>,
    carry: Vec<u8>,
}

impl ByteRead for Unwrap {
    async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if self.cipher.is_none() && self.snappy.is_none() {
            return self.r.read(buf).await;
        }
        loop {
            let mut raw = std::mem::take(&mut self.raw);
            raw.clear();
            let (res, raw) = self.r.read(raw).await;
            let n = match res {
                Ok(0) => {
                    self.raw = raw;
                    return (Ok(0), buf);
                }
                Ok(n) => n,
                Err(e) => {
                    self.raw = raw;
                    return (Err(e), buf);
                }
            };
            self.raw = raw;
            let plain: &[u8] = match &mut self.cipher {
                // The reader swallows the IV at the start of the stream.
                Some(c) => c.decrypt_in_place(&mut self.raw[..n]),
                None => &self.raw[..n],
            };
            let before = buf.len();
            match &mut self.snappy {
                Some(s) => {
                    self.carry.extend_from_slice(plain);
                    match s.decode(&self.carry, &mut buf) {
                        Ok(used) => {
                            self.carry.drain(..used);
                        }
                        Err(e) => {
                            return (
                                Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
                                buf,
                            )
                        }
                    }
                }
                None => buf.extend_from_slice(plain),
            }
            if buf.len() > before {
                return (Ok(buf.len() - before), buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_takes_what_is_queued_without_waiting_and_cuts_at_the_size() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(1 << 20);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut burst = Burst::new(8);
        // Nothing queued: no datagram, no wait.
        assert_eq!(burst.take(rx.as_raw_fd()), 0);
        for i in 0..40u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut seen = Vec::new();
        for want in [BURST, 40 - BURST, 0] {
            let k = burst.take(rx.as_raw_fd());
            assert_eq!(k, want);
            for i in 0..k {
                let (d, from) = burst.get(i).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(d.len(), 8, "cut at the size");
                seen.push(d[0]);
            }
        }
        assert_eq!(seen, (0..40u8).collect::<Vec<_>>());
    }

    #[test]
    fn answers_to_several_users_go_out_in_one_call_each_to_its_own() {
        let users: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let items: Vec<(Vec<u8>, SocketAddr)> = users
            .iter()
            .enumerate()
            .map(|(i, u)| (vec![i as u8; 5 + i], u.local_addr().unwrap()))
            .collect();
        assert_eq!(sendmmsg(tx.as_raw_fd(), &items), 3);
        for (i, u) in users.iter().enumerate() {
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = u.recv_from(&mut buf).unwrap();
            assert_eq!(
                (&buf[..n], from),
                (&vec![i as u8; 5 + i][..], tx.local_addr().unwrap())
            );
        }
        // A closed descriptor: nothing sent, the caller sends the rest.
        assert_eq!(sendmmsg(-1, &items), 0);
    }

    #[test]
    fn the_queue_is_bounded() {
        let q = Queue::new(2);
        let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert!(q.push(vec![1], from));
        assert!(q.push(vec![2], from));
        assert!(!q.push(vec![3], from));
        assert_eq!(q.items.borrow().len(), 2);
    }

    #[test]
    fn the_writer_taking_from_a_full_queue_wakes_the_receiver() {
        let q = Rc::new(Queue::new(1));
        let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert!(q.push(vec![1], from));
        assert!(q.is_full());
        let woken = Rc::new(Cell::new(false));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiter = {
                let (q, woken) = (q.clone(), woken.clone());
                monoio::spawn(async move {
                    q.room().await;
                    woken.set(true);
                })
            };
            monoio::time::sleep(Duration::from_millis(0)).await;
            assert!(!woken.get(), "a full queue has no room");
            assert_eq!(q.pop().map(|(d, _)| d), Some(vec![1]));
            waiter.await;
            assert!(woken.get());
        });
    }

    #[test]
    fn the_kernel_says_what_a_full_socket_buffer_dropped() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4096)
            .unwrap();
        let fd = rx.as_raw_fd();
        let mut drops = KernelDrops::new(fd);
        assert_eq!(drops.since_last(), 0);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0u64;
        for _ in 0..200 {
            if tx.send_to(&[7u8; 1000], rx.local_addr().unwrap()).is_ok() {
                sent += 1;
            }
        }
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2000];
        let mut read = 0u64;
        while rx.recv(&mut buf).is_ok() {
            read += 1;
        }
        let n = drops.since_last();
        assert!(read > 0 && read < 50, "{read} of {sent} fit in 4 KiB");
        assert_eq!(read + n, sent, "{read} read, {n} dropped, {sent} sent");
        assert_eq!(drops.since_last(), 0);
        assert_eq!(kernel_drops(-1), None);
    }

    #[test]
    fn a_packet_without_a_usable_address_has_no_user() {
        let mut p = UdpPacket {
            content: b"x".to_vec(),
            local_addr: None,
            remote_addr: Some("192.0.2.1:53".parse::<SocketAddr>().unwrap().into()),
        };
        assert_eq!(user_addr(&p), Some("192.0.2.1:53".parse().unwrap()));
        p.remote_addr.as_mut().unwrap().port = 70000;
        assert_eq!(user_addr(&p), None);
        p.remote_addr.as_mut().unwrap().port = 0;
        assert_eq!(user_addr(&p), None);
        p.remote_addr.as_mut().unwrap().ip = None;
        p.remote_addr.as_mut().unwrap().port = 53;
        assert_eq!(user_addr(&p), None);
        p.remote_addr = None;
        assert_eq!(user_addr(&p), None);
    }

    #[test]
    fn framed_batches_decode_back_through_the_wrapping() {
        let key = proto::cfb::derive_key(b"t");
        for (enc, comp) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut f = Framer::new(Wire::V1, enc.then_some(key), comp);
            let mut wire_bytes = Vec::new();
            for round in 0..2u8 {
                let mut out = Vec::new();
                for i in 0..3u8 {
                    let m = Message::UdpPacket(UdpPacket {
                        content: vec![round, i],
                        local_addr: None,
                        remote_addr: Some("192.0.2.1:9".parse::<SocketAddr>().unwrap().into()),
                    });
                    f.push(&m, &mut out);
                }
                f.seal(&mut out);
                wire_bytes.extend_from_slice(&out);
            }
            // Undo as the client does: decrypt, decompress, then frames.
            let mut plain = wire_bytes.clone();
            let plain = match enc {
                true => CfbStreamReader::new(key)
                    .decrypt_in_place(&mut plain)
                    .to_vec(),
                false => plain,
            };
            let plain = if comp {
                let mut out = Vec::new();
                let used = SnappyDecoder::new().decode(&plain, &mut out).unwrap();
                assert_eq!(used, plain.len());
                out
            } else {
                plain
            };
            let mut at = 0;
            let mut got = Vec::new();
            while let Some((m, used)) = proto::frame::decode(&plain[at..]).unwrap() {
                at += used;
                let Message::UdpPacket(p) = m else { panic!() };
                got.push(p.content);
            }
            assert_eq!(at, plain.len(), "enc {enc} comp {comp}");
            assert_eq!(
                got,
                vec![
                    vec![0, 0],
                    vec![0, 1],
                    vec![0, 2],
                    vec![1, 0],
                    vec![1, 1],
                    vec![1, 2]
                ]
            );
        }
    }
}
