//! Virtual hosts, as frps routes them: connections on `vhostHTTPSPort`
//! go to an `https` proxy by the server name of their TLS ClientHello
//! (TLS is not terminated: the ClientHello and everything after it go to
//! frpc unchanged, and the certificate stays with the client's service);
//! connections on `tcpmuxHTTPConnectPort` go to a `tcpmux` proxy by the
//! host of their HTTP CONNECT request and, when the proxy sets `httpUser`,
//! its Proxy-Authorization.
//!
//! Each worker accepts on the ports (SO_REUSEPORT). A connection is held by
//! the pre-auth gate (`fastpath.preAuth*`, like the bind port's) until
//! what routes it is read, within [`HELLO_DEADLINE`]; then the shared route
//! table names the proxy and the worker that owns its session. A connection
//! that landed elsewhere moves to that worker as a file descriptor with the
//! bytes read so far ([`MovedVhost`]); bytes are never relayed across
//! threads. What cannot be routed is closed (a CONNECT for an unknown host
//! after a 404), logged and counted (`vhost_unrouted`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use proto::vhost::canonical_host;
use proto::vhost::head;
use proto::vhost::sni::{self, Sni};

use crate::frp::control::Sessions;
use crate::frp::http;
use crate::frp::proxy;
use crate::frp::targets;
use crate::frp::targets::VhostTarget;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::conn::{read_append, Conn};
use crate::transport::handoff::{self, MovedVhost, WorkerMsg};
use crate::transport::listener::accept_each;

/// How long a connection on a vhost port has to send what routes it
/// (frps gives its vhost muxers 30 s).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(30);

/// Which vhost port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `vhostHTTPPort`: each request routed by Host, path and user
    /// ([`http`]).
    Http,
    /// `vhostHTTPSPort`: routed by TLS server name.
    Https,
    /// `tcpmuxHTTPConnectPort`: routed by HTTP CONNECT.
    Tcpmux,
}

impl Kind {
    fn port_key(self) -> &'static str {
        match self {
            Kind::Http => "vhostHTTPPort",
            Kind::Https => "vhostHTTPSPort",
            Kind::Tcpmux => "tcpmuxHTTPConnectPort",
        }
    }
}

/// Accept on one of this worker's vhost listeners until cancelled.
pub async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    listener: std::net::TcpListener,
    kind: Kind,
    cancel: monoio::io::CancelHandle,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = ctx.id, port = kind.port_key(), error = %e, "cannot register vhost listener");
            return;
        }
    };
    accept_each(&ctx, &listener, cancel, kind.port_key(), |stream, peer| {
        monoio::spawn(vhost_conn(
            ctx.clone(),
            sessions.clone(),
            stream,
            peer,
            kind,
        ));
    })
    .await
}

/// Read what routes a connection, route it, and serve it here or move it
/// to the worker that owns the proxy.
async fn vhost_conn(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
) {
    let Some((ticket, _)) = ctx.admit(peer) else {
        return;
    };
    let routed = match kind {
        Kind::Http => {
            // The first request head under the gate; then the connection
            // is the http loop's, which routes each request.
            let limit = ctx.shared.config.vhost_http_timeout();
            let mut conn = Conn::tcp(stream);
            let mut buf = Vec::with_capacity(2048);
            let first = ctx
                .within(
                    limit,
                    "no request head",
                    http::read_head(&mut conn, &mut buf),
                )
                .await;
            return match first {
                // The gate's ticket goes with it: it is let through once
                // its first request is routed.
                Ok(true) => {
                    monoio::spawn(http::serve(
                        ctx.clone(),
                        sessions.clone(),
                        conn,
                        (peer, Some(ticket)),
                        buf,
                        None,
                    ));
                }
                Ok(false) => unrouted(&ctx, peer, "closed before a request"),
                Err(reason) => unrouted(&ctx, peer, &reason),
            };
        }
        Kind::Https => {
            let hello = ctx
                .within(HELLO_DEADLINE, "no ClientHello", read_hello(&mut stream))
                .await;
            match hello {
                Ok((pending, name)) => match route_https(&ctx, &name) {
                    Ok(t) => Ok((t, pending)),
                    // No https proxy claims the name: terminated here when
                    // the edge holds a certificate for it.
                    Err(reason) => match terminating(&ctx, &name) {
                        Some(tls) => {
                            let hello = (pending, tls);
                            return terminate(ctx, sessions, stream, (peer, ticket), hello).await;
                        }
                        None => Err(reason),
                    },
                },
                Err(reason) => Err(reason),
            }
        }
        Kind::Tcpmux => {
            let connect = ctx
                .within(
                    HELLO_DEADLINE,
                    "no CONNECT request",
                    read_connect(&mut stream),
                )
                .await;
            match connect {
                Ok((buf, req)) => route_connect(&ctx, &mut stream, buf, req).await,
                Err(reason) => Err(reason),
            }
        }
    };
    let (target, pending) = match routed {
        Ok(x) => x,
        Err(reason) => return unrouted(&ctx, peer, &reason),
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
        tls: None,
        socket: handoff::detach(stream),
        pending,
        peer,
        target,
    };
    if inbox.send(WorkerMsg::VhostConn(Box::new(moved))).is_ok() {
        WorkerStats::bump(&ctx.stats().handoffs_out, 1);
    }
}

/// The https proxy that serves server name `name`.
fn route_https(ctx: &WorkerCtx, name: &str) -> Result<VhostTarget, String> {
    let host =
        canonical_host(name).ok_or_else(|| format!("server name {name:?} is not a host name"))?;
    let route = ctx.shared.https_routes.read().get(&host, "", "").cloned();
    route
        .and_then(|r| targets::resolve(r, None))
        .ok_or_else(|| format!("no https proxy serves {host:?}"))
}

/// The TLS configuration that terminates server name `name`, when the
/// edge holds a certificate for it.
fn terminating(ctx: &WorkerCtx, name: &str) -> Option<std::sync::Arc<rustls::ServerConfig>> {
    let host = canonical_host(name)?;
    let edge = ctx.shared.edge.in_force();
    edge.store.get(&host).is_some().then(|| edge.tls.clone())
}

/// Terminate TLS on a connection whose ClientHello (`hello.0`) named a
/// hostname with a managed certificate, read its first request head, and
/// serve it as the http port does (routed per request, by edge route or
/// `http` proxy).
async fn terminate(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    stream: TcpStream,
    (peer, ticket): (SocketAddr, crate::transport::preauth::Ticket),
    (hello, tls): (Vec<u8>, std::sync::Arc<rustls::ServerConfig>),
) {
    let accept = async {
        crate::transport::tls::TlsStream::accept(stream, tls, &hello)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    let tls = match ctx.within(HELLO_DEADLINE, "no TLS handshake", accept).await {
        Ok(t) => t,
        Err(reason) => return unrouted(&ctx, peer, &reason),
    };
    WorkerStats::bump(&ctx.stats().edge_tls_handshakes, 1);
    let mut conn = Conn::tls(tls);
    let mut buf = Vec::with_capacity(2048);
    let limit = ctx.shared.config.vhost_http_timeout();
    let first = ctx
        .within(
            limit,
            "no request head",
            http::read_head(&mut conn, &mut buf),
        )
        .await;
    match first {
        Ok(true) => {
            monoio::spawn(http::serve(
                ctx.clone(),
                sessions,
                conn,
                (peer, Some(ticket)),
                buf,
                None,
            ));
        }
        Ok(false) => unrouted(&ctx, peer, "closed before a request"),
        Err(reason) => unrouted(&ctx, peer, &reason),
    }
}

/// What routes a CONNECT request, taken from its head.
struct Connect {
    /// Canonical host of the target.
    host: String,
    /// Basic Proxy-Authorization user and password (empty: none).
    user: String,
    password: String,
    /// Bytes of the head; what follows is the tunnel's.
    head_len: usize,
}

/// Read until a request head is complete, parsing it once; every byte
/// read and the CONNECT it asks for. Refused: a bad head, or another
/// method (frps closes those without an answer).
async fn read_connect(stream: &mut TcpStream) -> Result<(Vec<u8>, Connect), String> {
    read_until(stream, "request head", |buf| match head::parse(buf) {
        Ok(None) => None,
        Err(e) => Some(Err(format!("bad request head: {e}"))),
        Ok(Some(req)) if req.method != "CONNECT" => Some(Err(format!(
            "connections to tcp vhost must be of method CONNECT, not {}",
            req.method
        ))),
        Ok(Some(req)) => {
            let (user, password) = req
                .proxy_authorization
                .and_then(head::basic_credentials)
                .unwrap_or_default();
            Some(Ok(Connect {
                host: canonical_host(req.host).unwrap_or_default().into_owned(),
                user,
                password,
                head_len: req.head_len,
            }))
        }
    })
    .await
}

/// Read into one buffer until `done` says what it holds (None: read
/// more); every byte read and what `done` said. `what` names the awaited
/// thing in the error for a connection closed before it.
async fn read_until<T>(
    stream: &mut TcpStream,
    what: &str,
    mut done: impl FnMut(&[u8]) -> Option<Result<T, String>>,
) -> Result<(Vec<u8>, T), String> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        if let Some(r) = done(&buf) {
            return r.map(|t| (buf, t));
        }
        let (r, b) = read_append(stream, buf).await;
        buf = b;
        match r {
            Ok(0) => return Err(format!("closed before its {what} was complete")),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

/// Route a CONNECT request as frps's tcpmux does: by its host and the
/// Proxy-Authorization user (a proxy with `routeByHTTPUser` first); a
/// proxy with `httpUser` wants that user and password (else 407). Unless
/// `tcpmuxPassthrough`, the request is answered with 200 here and what
/// followed it goes to frpc; with it, the request goes to frpc too.
async fn route_connect(
    ctx: &WorkerCtx,
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    req: Connect,
) -> Result<(VhostTarget, Vec<u8>), String> {
    let host = &req.host;
    let target = ctx
        .shared
        .tcpmux_routes
        .read()
        .get(host, "", &req.user)
        .cloned()
        .and_then(|r| targets::resolve(r, None));
    let Some(target) = target else {
        let _ = stream.write_all(not_found().into_bytes()).await;
        return Err(format!("no tcpmux proxy serves {host:?}"));
    };
    if let Some(want) = &target.credentials {
        if (req.user.as_str(), req.password.as_str()) != (want.0.as_str(), want.1.as_str()) {
            let _ = stream.write_all(PROXY_UNAUTHORIZED.as_bytes()).await;
            return Err(format!("wrong or no Proxy-Authorization for {host:?}"));
        }
    }
    if !ctx.shared.config.tcpmux_passthrough {
        let (r, _) = stream.write_all(CONNECTED.as_bytes()).await;
        r.map_err(|e| format!("write error: {e}"))?;
        buf.drain(..req.head_len);
    }
    Ok((target, buf))
}

/// What a CONNECT that is routed gets (as frps writes Go's empty 200).
const CONNECTED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// A CONNECT without the proxy's user and password (frps's words and
/// realm).
const PROXY_UNAUTHORIZED: &str = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"Restricted\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The body of the answer to a CONNECT for a host no proxy serves.
const NOT_FOUND_BODY: &str = "No tunnel is registered for this host.\n";

fn not_found() -> String {
    format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{NOT_FOUND_BODY}",
        NOT_FOUND_BODY.len()
    )
}

/// Read until the ClientHello is complete; every byte read (the hello, and
/// anything the client sent after it) and its server name.
async fn read_hello(stream: &mut TcpStream) -> Result<(Vec<u8>, String), String> {
    read_until(stream, "ClientHello", |buf| match sni::server_name(buf) {
        Sni::Name(name) => Some(Ok(name)),
        Sni::NoName => Some(Err("ClientHello without a server name".into())),
        Sni::NotHello(why) => Some(Err(format!("not a TLS ClientHello: {why}"))),
        Sni::NeedMore if buf.len() >= sni::MAX_HELLO => {
            Some(Err(format!("ClientHello over {} bytes", sni::MAX_HELLO)))
        }
        Sni::NeedMore => None,
    })
    .await
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
        tls,
        pending,
        peer,
        target,
    } = moved;
    tracing::debug!(worker = ctx.id, %peer, proxy_name = %target.proxy, "vhost connection moved here");
    let stream = match TcpStream::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(worker = ctx.id, error = %e, "cannot adopt vhost connection");
            return;
        }
    };
    if target.http.is_some() {
        let conn = match tls {
            Some(state) => Conn::tls(crate::transport::tls::TlsStream::from_parts(stream, state)),
            None => Conn::tcp(stream),
        };
        return http::adopt(ctx, sessions, conn, peer, pending, target);
    }
    serve(ctx, sessions, stream, pending, peer, &target);
}

/// Serve a routed connection on the worker that owns its proxy: the proxy
/// relays it through a work connection, what was read to route it first.
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
