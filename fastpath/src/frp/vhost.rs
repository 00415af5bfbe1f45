//! Virtual hosts: connections on `vhostHTTPSPort`, routed to an `https`
//! proxy by the server name of their TLS ClientHello, as frps routes them.
//! TLS is not terminated: the ClientHello and everything after it go to
//! frpc unchanged, and the certificate stays with the client's service.
//!
//! Each worker accepts on the port (SO_REUSEPORT). A connection is held by
//! the pre-auth gate (`fastpath.preAuth*`, like the bind port's) until its
//! ClientHello is read, within [`HELLO_DEADLINE`]; then the shared route
//! table names the proxy and the worker that owns its session. A connection
//! that landed elsewhere moves to that worker as a file descriptor with the
//! bytes read so far ([`MovedVhost`]); bytes are never relayed across
//! threads. No ClientHello, no server name, or a name no proxy serves: the
//! connection is closed, logged and counted (`vhost_unrouted`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};
use proto::vhost::canonical_host;
use proto::vhost::sni::{self, Sni};

use crate::frp::control::Sessions;
use crate::frp::proxy;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::runtime::shared::VhostTarget;
use crate::transport::conn::{read_append, Conn};
use crate::transport::handoff::{self, MovedVhost, WorkerMsg};
use crate::transport::listener::accept_each;

/// How long a connection on a vhost port has to send what routes it
/// (frps gives its vhost muxers 30 s).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(30);

/// Accept on this worker's `vhostHTTPSPort` listener until cancelled.
pub async fn https_accept_loop(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    listener: std::net::TcpListener,
    cancel: monoio::io::CancelHandle,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = ctx.id, error = %e, "cannot register vhostHTTPSPort listener");
            return;
        }
    };
    accept_each(&ctx, &listener, cancel, "vhostHTTPSPort", |stream, peer| {
        monoio::spawn(https_conn(ctx.clone(), sessions.clone(), stream, peer));
    })
    .await
}

/// Read a connection's ClientHello, route it, and serve it here or move it
/// to the worker that owns the proxy.
async fn https_conn(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some((ticket, _)) = ctx.admit(peer) else {
        return;
    };
    let mut stream = stream;
    let hello = ctx
        .within(HELLO_DEADLINE, "no ClientHello", read_hello(&mut stream))
        .await;
    let (name, pending) = match hello {
        Ok(x) => x,
        Err(reason) => return unrouted(&ctx, peer, &reason),
    };
    let Some(host) = canonical_host(&name) else {
        return unrouted(
            &ctx,
            peer,
            &format!("server name {name:?} is not a host name"),
        );
    };
    let target = ctx.shared.https_routes.read().get(&host, "", "").cloned();
    let Some(target) = target else {
        return unrouted(&ctx, peer, &format!("no https proxy serves {host:?}"));
    };
    // Routed: the source gets its rate token back, as an identified frp
    // connection does, and the ticket goes with this scope.
    ctx.preauth.identified(peer.ip());
    drop(ticket);
    if target.worker == ctx.id {
        return serve(&ctx, &sessions, stream, pending, peer, &target);
    }
    let Some(inbox) = ctx.shared.inboxes.get(target.worker) else {
        return unrouted(&ctx, peer, "the route names no worker");
    };
    let moved = MovedVhost {
        socket: handoff::detach(stream),
        pending,
        peer,
        target,
    };
    if inbox.send(WorkerMsg::VhostConn(Box::new(moved))).is_ok() {
        WorkerStats::bump(&ctx.stats().handoffs_out, 1);
    }
}

/// Read until the ClientHello is complete; its server name and every byte
/// read (the hello, and anything the client sent after it).
async fn read_hello(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        match sni::server_name(&buf) {
            Sni::Name(name) => return Ok((name, buf)),
            Sni::NoName => return Err("ClientHello without a server name".into()),
            Sni::NotHello(why) => return Err(format!("not a TLS ClientHello: {why}")),
            Sni::NeedMore => {}
        }
        if buf.len() >= sni::MAX_HELLO {
            return Err(format!("ClientHello over {} bytes", sni::MAX_HELLO));
        }
        let (r, b) = read_append(stream, buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("closed before its ClientHello was complete".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

/// A connection this worker cannot route: closed (dropped), logged, counted.
fn unrouted(ctx: &WorkerCtx, peer: SocketAddr, reason: &str) {
    WorkerStats::bump(&ctx.stats().vhost_unrouted, 1);
    tracing::info!(worker = ctx.id, %peer, %reason, "vhost connection closed");
}

/// A vhost connection handed over by another worker.
pub fn adopt(ctx: &Rc<WorkerCtx>, sessions: &Rc<Sessions>, moved: MovedVhost) {
    WorkerStats::bump(&ctx.stats().handoffs_in, 1);
    WorkerStats::bump(&ctx.stats().vhost_handoffs, 1);
    let MovedVhost {
        socket,
        pending,
        peer,
        target,
    } = moved;
    tracing::debug!(worker = ctx.id, %peer, proxy = %target.proxy, "vhost connection moved here");
    let stream = match TcpStream::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(worker = ctx.id, error = %e, "cannot adopt vhost connection");
            return;
        }
    };
    serve(ctx, sessions, stream, pending, peer, &target);
}

/// Serve a routed connection on the worker that owns its proxy: the proxy
/// relays it through a work connection, the ClientHello first.
fn serve(
    ctx: &Rc<WorkerCtx>,
    sessions: &Sessions,
    stream: TcpStream,
    pending: Vec<u8>,
    peer: SocketAddr,
    target: &VhostTarget,
) {
    let found = sessions
        .get(&target.run_id)
        .filter(|c| c.who.id == target.control_id)
        .and_then(|c| c.proxy(&target.proxy).map(|p| (c, p)));
    let Some((control, proxy)) = found else {
        // The proxy closed between the lookup and now.
        return unrouted(ctx, peer, "its proxy has just closed");
    };
    monoio::spawn(proxy::serve_user(
        proxy,
        control,
        Conn::tcp(stream),
        peer,
        pending,
    ));
}
