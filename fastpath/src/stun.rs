//! The STUN server (`fastpath.stunPort`): what frpc's `natHoleStunServer`
//! and mesh nodes ask for their public address, answered by
//! [`proto::stun::answer`].
//!
//! Every worker holds its own SO_REUSEPORT socket on each of the server's
//! addresses (one, or four with a secondary IP: both IPs × both ports,
//! RFC 5780), so the kernel spreads clients over the workers and no
//! datagram crosses a thread. An answer goes out of the socket the
//! request's CHANGE-REQUEST names, which is this worker's own socket on
//! that address. Malformed datagrams are counted and never answered.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::udp::UdpSocket;
use proto::stun::{Dropped, Site};
use socket2::{Domain, Protocol, Socket, Type};

use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;

/// One worker's sockets: `(ip index, port index)` and the socket.
pub type WorkerSockets = Vec<((usize, usize), std::net::UdpSocket)>;

/// A worker's registered sockets, by place.
type Sockets = Rc<Vec<((usize, usize), Rc<UdpSocket>)>>;

/// The largest datagram read; a longer one is cut there and then fails
/// the length check.
const RECV_BUF: usize = 2048;

/// Bind the server's sockets for `workers` workers.
/// `get(worker, place, address, bind)` gives each socket: `bind` makes a
/// new one, or it comes from a predecessor that handed its sockets over.
pub fn bind(
    site: &Site,
    workers: usize,
    mut get: impl FnMut(
        usize,
        (usize, usize),
        SocketAddr,
        &dyn Fn() -> std::io::Result<std::net::UdpSocket>,
    ) -> std::io::Result<std::net::UdpSocket>,
) -> std::io::Result<Vec<WorkerSockets>> {
    let places: Vec<(usize, usize)> = if site.alternate {
        vec![(0, 0), (0, 1), (1, 0), (1, 1)]
    } else {
        vec![(0, 0)]
    };
    (0..workers)
        .map(|w| {
            places
                .iter()
                .map(|&at| {
                    let a = site.addr(at);
                    get(w, at, a, &|| bind_udp(a)).map(|s| (at, s))
                })
                .collect()
        })
        .collect()
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Serve on this worker's sockets until the worker stops.
pub async fn serve(ctx: Rc<WorkerCtx>, site: Site, sockets: WorkerSockets) {
    let mut socks: Vec<((usize, usize), Rc<UdpSocket>)> = Vec::with_capacity(sockets.len());
    for (at, s) in sockets {
        match UdpSocket::from_std(s) {
            Ok(s) => socks.push((at, Rc::new(s))),
            Err(e) => {
                tracing::error!(worker = ctx.id, error = %e, "cannot register a STUN socket");
                return;
            }
        }
    }
    let socks = Rc::new(socks);
    let tasks: Vec<_> = socks
        .iter()
        .map(|(at, s)| monoio::spawn(recv_loop(ctx.clone(), site, *at, s.clone(), socks.clone())))
        .collect();
    for t in tasks {
        t.await;
    }
}

async fn recv_loop(
    ctx: Rc<WorkerCtx>,
    site: Site,
    at: (usize, usize),
    sock: Rc<UdpSocket>,
    all: Sockets,
) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::with_capacity(256);
    let stats = ctx.stats();
    // A successor that took the sockets over answers from here on.
    while ctx.shared.is_accepting() {
        let (r, b) = sock.recv_from(buf).await;
        buf = b;
        let (n, src) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(worker = ctx.id, error = %e, "STUN receive failed");
                continue;
            }
        };
        match proto::stun::answer(&buf[..n], src, at, &site, &mut out) {
            Ok(from) => {
                let error = out.get(..2) == Some(&proto::stun::kind::BINDING_ERROR.to_be_bytes());
                WorkerStats::bump(
                    if error {
                        &stats.stun_errors
                    } else {
                        &stats.stun_answers
                    },
                    1,
                );
                let via = all
                    .iter()
                    .find(|(a, _)| *a == from)
                    .map_or(&sock, |(_, s)| s);
                let (r, o) = via.send_to(std::mem::take(&mut out), src).await;
                out = o;
                if let Err(e) = r {
                    tracing::debug!(worker = ctx.id, %src, error = %e, "STUN answer not sent");
                }
            }
            Err(why) => {
                WorkerStats::bump(&stats.stun_dropped, 1);
                if why != Dropped::NotStun {
                    tracing::debug!(worker = ctx.id, %src, reason = why.as_str(), "STUN datagram dropped");
                }
            }
        }
    }
}
