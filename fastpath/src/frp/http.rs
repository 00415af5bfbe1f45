//! `http` proxies on `vhostHTTPPort`, served as frps serves them: every
//! request on a user's connection is routed on its own, by Host, path
//! (the longest `locations` prefix) and Basic-auth user
//! (`routeByHTTPUser`); checked against the proxy's `httpUser` (401); its
//! head rewritten (`hostHeaderRewrite`, `requestHeaders.set`,
//! `X-Forwarded-For` / `-Host` / `-Proto`, `X-Real-IP`) and sent to frpc
//! on a work connection; the response head rewritten
//! (`responseHeaders.set`) on the way back. Bodies are relayed as they
//! come, in their own framing, followed only as far as needed to find
//! where the next request or response starts. A `101 Switching
//! Protocols` answer to an `Upgrade` request (WebSocket) turns the
//! connection into a plain relay.
//!
//! A work connection is kept for the next request as long as both sides
//! keep the connection alive and the next request goes to the same
//! proxy. A request for a proxy of a session on another worker moves the
//! user's connection there, with the bytes read so far (the handoff of
//! [`vhost`](crate::frp::vhost)).
//!
//! What this answers itself: 400 for a malformed head, 431 for one over
//! 64 KiB, 404 (frps's status; the body is `custom404Page` or ours) for a
//! request no proxy serves or when no work connection came in time, 401
//! with `WWW-Authenticate: Basic realm="Restricted"` for wrong or missing
//! credentials, 502 for a response head frpc's side got wrong, 504 when no
//! response head came within `vhostHTTPTimeout`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use proto::vhost::canonical_host;
use proto::vhost::head::{self, Body, BodyFraming, ResponseBody};
use proto::vhost::rewrite::{self, RequestEdits};

use crate::edge;
use crate::frp::control::Sessions;
use crate::frp::proxy::{self, Proxy};
use crate::frp::targets;
use crate::frp::targets::VhostTarget;
use crate::relay::{self, RelayOpts};
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::conn::Conn;
use crate::transport::handoff::{self, MovedVhost, WorkerMsg};
use crate::transport::preauth::Ticket;

/// The body of the 404 when `custom404Page` is not set.
pub const NOT_FOUND_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>404 Not Found</title></head>\n<body>\n<h1>404 Not Found</h1>\n<p>No tunnel on this server serves this host and path.</p>\n</body>\n</html>\n";

/// What a request that waits for it gets before its body is read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The most work connections one proxy keeps for idle keep-alive
/// connections; past it, a connection lets its work connection go after
/// each response and takes a new one for its next request. (frps keeps 5
/// per route, but takes a work connection per request beyond them.)
const KEPT_PER_PROXY: u32 = 128;

/// A read buffer's size while the connection waits for its next request:
/// an idle keep-alive connection holds this much (see `read_append`).
const IDLE_BUF: usize = 512;

/// What of a request head the loop needs after the buffer moves on.
struct Head {
    head_len: usize,
    /// The request target in origin form (for a redirect's Location).
    target: String,
    host: String,
    path: String,
    user: String,
    password: String,
    forwarded_host: String,
    body: Body,
    upgrade: bool,
    keep_alive: bool,
    is_head: bool,
    /// CONNECT: a tunnel once the head is sent, as frps hijacks it.
    is_connect: bool,
    expect_continue: bool,
}

impl Head {
    fn of(req: &head::Request<'_>) -> Result<Head, head::HeadError> {
        let (user, password) = req
            .authorization
            .or(req.proxy_authorization)
            .and_then(head::basic_credentials)
            .unwrap_or_default();
        let host = canonical_host(req.host)
            .ok_or(head::HeadError::Malformed("malformed Host"))?
            .into_owned();
        // An absolute-form target keeps its path and query.
        let t = req.target;
        let t = match t.find("://") {
            Some(i) => t[i + 3..].find('/').map_or("/", |p| &t[i + 3 + p..]),
            None => t,
        };
        let target = if t.starts_with('/') {
            t.to_string()
        } else {
            "/".to_string()
        };
        Ok(Head {
            target,
            head_len: req.head_len,
            host,
            path: head::decoded_path(req.path)?.into_owned(),
            user,
            password,
            forwarded_host: req.host.to_string(),
            body: req.body,
            upgrade: req.upgrade.is_some(),
            keep_alive: req.keep_alive,
            is_head: req.method == "HEAD",
            is_connect: req.method == "CONNECT",
            expect_continue: req.expect_continue,
        })
    }
}

/// Read until `buf` holds a complete request head, or one that is
/// refused (the caller parses it again and answers). Err: the connection
/// closed or failed first; `Ok(false)`: it closed cleanly before a byte
/// of a new request.
pub async fn read_head(stream: &mut Conn, buf: &mut Vec<u8>) -> Result<bool, String> {
    // Parsed again only when a read brought a line end (a head arriving a
    // byte at a time would otherwise cost a parse of all of it per byte).
    let mut fresh = 0;
    loop {
        let line_end = buf[fresh..].contains(&b'\n') || buf.len() >= head::MAX_HEAD;
        if !buf.is_empty() && line_end && !matches!(head::parse(buf), Ok(None)) {
            return Ok(true);
        }
        fresh = buf.len();
        let (r, b) = stream.read(std::mem::take(buf)).await;
        *buf = b;
        match r {
            Ok(0) if buf.is_empty() => return Ok(false),
            Ok(0) => return Err("closed inside a request head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

/// Where a request goes once routed: a proxy's work connection, or an
/// edge route's address origin.
enum Dest {
    Proxy {
        control: Rc<crate::frp::control::Control>,
        proxy: Rc<Proxy>,
        edits: Arc<targets::HttpEdits>,
    },
    Origin(SocketAddr),
}

/// A connection to where requests go, kept between requests: a work
/// connection of one proxy, or a connection to an address origin.
struct Upstream {
    /// The proxy; None for an address origin.
    proxy: Option<Rc<Proxy>>,
    /// The address origin (None for a proxy's work connection).
    origin: Option<SocketAddr>,
    work: Conn,
    /// Its entry in the proxy's tracked relays.
    tracked: u64,
}

impl Upstream {
    fn release(self) {
        if let Some(p) = &self.proxy {
            p.untrack(self.tracked);
        }
    }

    /// Count `n` bytes towards the origin (`to_origin`) or back.
    async fn meter(&self, stats: &WorkerStats, to_origin: bool, n: usize) {
        match &self.proxy {
            Some(p) => p.meter(stats, to_origin, n).await,
            None => {
                let c = if to_origin {
                    &stats.bytes_in
                } else {
                    &stats.bytes_out
                };
                WorkerStats::bump(c, n as u64);
            }
        }
    }

    /// For logs.
    fn name(&self) -> String {
        match (&self.proxy, self.origin) {
            (Some(p), _) => p.name.to_string(),
            (None, Some(a)) => a.to_string(),
            (None, None) => String::new(),
        }
    }

    /// Whether it may be kept for the next request (a proxy keeps at
    /// most [`KEPT_PER_PROXY`]).
    fn keep_idle(&self) -> bool {
        self.proxy
            .as_ref()
            .is_none_or(|p| p.keep_idle(KEPT_PER_PROXY))
    }

    /// Whether it serves `dest`.
    fn serves(&self, dest: &Dest) -> bool {
        match (dest, &self.proxy) {
            (Dest::Proxy { proxy, .. }, Some(p)) => Rc::ptr_eq(p, proxy) && !proxy.is_closed(),
            (Dest::Origin(a), None) => self.origin == Some(*a),
            _ => false,
        }
    }
}

/// How one exchange ended.
enum Next {
    /// Both sides keep the connection: read the next request.
    KeepAlive,
    /// Close the user's connection.
    Close,
    /// The connection went elsewhere (another worker, or a relay).
    Gone,
}

/// One user connection on the http port, from its first request (in
/// `buf`) to its end. `routed`: the route of that first request, when
/// another worker already looked it up and moved the connection here.
pub async fn serve(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    stream: Conn,
    (peer, gate): (SocketAddr, Option<Ticket>),
    buf: Vec<u8>,
    routed: Option<VhostTarget>,
) {
    let stats = ctx.stats();
    WorkerStats::bump(&stats.conns_total, 1);
    WorkerStats::add(&stats.conns, 1);
    let https = matches!(stream, Conn::Tls(..));
    let mut conn = UserConn {
        https,
        ctx: &ctx,
        sessions: &sessions,
        user: Some(stream),
        peer,
        client_ip: peer.ip().to_string(),
        gate,
        buf,
        upstream: None,
    };
    let mut routed = routed;
    loop {
        // Boxed: an exchange's state (routing, the work connection, the
        // response) is kilobytes, and inline it would stay in the task of
        // every idle keep-alive connection.
        match Box::pin(conn.exchange(routed.take())).await {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close | Next::Gone) => break,
            Err(reason) => {
                tracing::debug!(worker = ctx.id, %peer, %reason, "http connection closed");
                break;
            }
        }
        if conn.buf.is_empty() && conn.buf.capacity() > IDLE_BUF {
            conn.buf = Vec::with_capacity(IDLE_BUF);
        }
        let timeout = conn.timeout();
        let Some(user) = conn.user.as_mut() else {
            break;
        };
        match monoio::time::timeout(timeout, read_head(user, &mut conn.buf)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Err(_) => break,
            Ok(Err(reason)) => {
                tracing::debug!(worker = ctx.id, %peer, %reason, "http connection closed");
                break;
            }
        }
    }
    if let Some(u) = conn.take_kept() {
        u.release();
    }
    WorkerStats::add(&stats.conns, -1);
}

/// A user's connection between requests.
struct UserConn<'a> {
    ctx: &'a Rc<WorkerCtx>,
    sessions: &'a Sessions,
    /// None once it has moved to another worker or into a relay.
    user: Option<Conn>,
    peer: SocketAddr,
    /// The user's address as the forwarded fields carry it.
    client_ip: String,
    /// The pre-auth gate's hold on a new connection, until its first
    /// request is routed (until then it counts against the per-source
    /// limits, and a source whose requests route nowhere keeps paying).
    gate: Option<Ticket>,
    /// Read from the user and not yet sent on: the next request's head
    /// first.
    buf: Vec<u8>,
    upstream: Option<Upstream>,
    /// TLS terminated by the edge: the scheme is https.
    https: bool,
}

impl UserConn<'_> {
    fn timeout(&self) -> Duration {
        self.ctx.shared.config.vhost_http_timeout()
    }

    /// The user's connection, while it is still this task's.
    fn user(&mut self) -> Result<&mut Conn, String> {
        self.user
            .as_mut()
            .ok_or_else(|| "the connection has moved".to_string())
    }

    /// The kept work connection, no longer counted as kept.
    fn take_kept(&mut self) -> Option<Upstream> {
        let up = self.upstream.take()?;
        if let Some(p) = &up.proxy {
            p.unkeep_idle();
        }
        Some(up)
    }

    /// Answer the user with `status` and a short body, closing after it.
    async fn answer(&mut self, status: u16, extra: &str, body: &[u8]) -> Next {
        let reason = match status {
            200 => "OK",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        if let Ok(user) = self.user() {
            let _ = user.write_all(out).await;
        }
        Next::Close
    }

    async fn not_found(&mut self, why: &str) -> Next {
        WorkerStats::bump(&self.ctx.stats().vhost_unrouted, 1);
        tracing::info!(worker = self.ctx.id, peer = %self.peer, reason = %why, "http request not routed");
        let page = self.ctx.shared.not_found_page.clone();
        self.answer(404, "Content-Type: text/html; charset=utf-8\r\n", &page)
            .await
    }

    /// Route the request at the start of `buf` and carry it and its
    /// response.
    async fn exchange(&mut self, routed: Option<VhostTarget>) -> Result<Next, String> {
        let head = match head::parse(&self.buf).and_then(|r| r.map(|r| Head::of(&r)).transpose()) {
            Ok(Some(head)) => head,
            Ok(None) => return Err("request head incomplete".into()),
            Err(e) => {
                tracing::info!(worker = self.ctx.id, peer = %self.peer, error = %e, "bad http request head");
                let status = e.status();
                let body = format!("{e}\n");
                return Ok(self
                    .answer(
                        status,
                        "Content-Type: text/plain; charset=utf-8\r\n",
                        body.as_bytes(),
                    )
                    .await);
            }
        };
        let target = match routed {
            Some(t) => Some(t),
            None => match self.edge(&head) {
                Edge::Proxy(t) => Some(t),
                Edge::Origin(addr) => {
                    self.identified();
                    return self.exchange_with(Dest::Origin(addr), head).await;
                }
                Edge::Answer(status, extra, body) => {
                    self.identified();
                    let (status, extra) = (status, extra.as_str());
                    return Ok(self.answer(status, extra, body.as_bytes()).await);
                }
                Edge::NoRoute => {
                    let route = self
                        .ctx
                        .shared
                        .http_routes
                        .read()
                        .get(&head.host, &head.path, &head.user)
                        .cloned();
                    let kept = self.upstream.as_ref().and_then(|u| u.proxy.clone());
                    let keep = kept.as_ref().map(|p| p.name.as_str());
                    route.and_then(|r| targets::resolve(r, keep))
                }
            },
        };
        let Some(target) = target else {
            let why = format!("no http proxy serves {:?} {:?}", head.host, head.path);
            return Ok(self.not_found(&why).await);
        };
        self.identified();
        if target.worker != self.ctx.id {
            return Ok(self.move_to(target));
        }
        let found = self
            .sessions
            .get(&target.run_id)
            .filter(|c| c.who.id == target.control_id)
            .and_then(|c| c.proxy(&target.proxy).map(|p| (c, p)));
        let Some((control, proxy)) = found else {
            return Ok(self.not_found("its proxy has just closed").await);
        };
        if let Some(want) = &target.credentials {
            if (head.user.as_str(), head.password.as_str()) != (want.0.as_str(), want.1.as_str()) {
                tracing::info!(worker = self.ctx.id, peer = %self.peer, proxy_name = %proxy.name, "http request without the proxy's credentials");
                return Ok(self
                    .answer(
                        401,
                        "WWW-Authenticate: Basic realm=\"Restricted\"\r\nContent-Type: text/plain; charset=utf-8\r\n",
                        b"Unauthorized\n",
                    )
                    .await);
            }
        }
        let edits = target.http.clone().unwrap_or_default();
        let dest = Dest::Proxy {
            control,
            proxy,
            edits,
        };
        self.exchange_with(dest, head).await
    }

    /// The gate's hold on a new connection ends with its first routed
    /// request.
    fn identified(&mut self) {
        if self.gate.take().is_some() {
            self.ctx.preauth.identified(self.peer.ip());
        }
    }

    /// What the edge makes of a request: an ACME HTTP-01 answer, a
    /// redirect to HTTPS, an edge route's origin; or nothing, and the
    /// request is routed to `http` proxies as frps does.
    fn edge(&self, head: &Head) -> Edge {
        let shared = &self.ctx.shared;
        if shared.policy.governed().is_none() {
            return Edge::NoRoute;
        }
        if !self.https {
            if let Some(token) = head.path.strip_prefix(ACME_PREFIX) {
                if let Some(answer) = edge::acme_answer(&shared.policy, token) {
                    WorkerStats::bump(&self.ctx.stats().acme_answers, 1);
                    let extra = "Content-Type: application/octet-stream\r\n".to_string();
                    return Edge::Answer(200, extra, answer);
                }
            }
        }
        let Some(route) = edge::route(&shared.policy, &shared.edge, &head.host) else {
            return Edge::NoRoute;
        };
        if route.redirect_https && !self.https {
            let location = format!(
                "Location: https://{}{}\r\n",
                head.forwarded_host, head.target
            );
            return Edge::Answer(308, location, String::new());
        }
        match route.origin {
            edge::Origin::Proxy(t) => Edge::Proxy(t),
            edge::Origin::Address(a) => Edge::Origin(a),
            edge::Origin::Down(why) => {
                WorkerStats::bump(&self.ctx.stats().edge_origin_down, 1);
                tracing::info!(worker = self.ctx.id, peer = %self.peer, host = %head.host, reason = %why, "edge origin down");
                Edge::Answer(502, String::new(), format!("{why}\n"))
            }
        }
    }

    /// Carry the request at the start of `buf` to `dest`, and its
    /// response back.
    async fn exchange_with(&mut self, dest: Dest, head: Head) -> Result<Next, String> {
        let no_edits = Arc::new(targets::HttpEdits::default());
        let edits = match &dest {
            Dest::Proxy { edits, .. } => edits.clone(),
            Dest::Origin(_) => no_edits,
        };
        let mut out = Vec::with_capacity(head.head_len + 256);
        let e = RequestEdits {
            host: &edits.host,
            set: &edits.request,
            client_ip: &self.client_ip,
            forwarded_host: &head.forwarded_host,
            proto: if self.https { "https" } else { "http" },
            drop_expect: head.expect_continue,
        };
        rewrite::request(&self.buf, &e, &mut out).map_err(|e| e.to_string())?;
        self.buf.drain(..head.head_len);
        if head.expect_continue && head.body != Body::None {
            let (r, _) = self.user()?.write_all(CONTINUE.to_vec()).await;
            r.map_err(|e| format!("write error: {e}"))?;
        }
        // A kept work connection that frpc's side has closed shows as an
        // error or EOF before the response: a request without a body is
        // sent again on a new one, once.
        let mut retry = head.body == Body::None;
        loop {
            let reused = self.take_upstream(&dest);
            let mut up = match reused {
                Some(u) => u,
                None => {
                    retry = false;
                    match self.connect(&dest).await {
                        Ok(u) => u,
                        Err(next) => return Ok(next),
                    }
                }
            };
            let stats = self.ctx.stats();
            let (r, o) = up.work.write_all(out).await;
            out = o;
            if let Err(e) = r {
                up.release();
                if retry {
                    retry = false;
                    continue;
                }
                return Err(format!("write to {} failed: {e}", up_name(&dest)));
            }
            up.meter(stats, true, out.len()).await;
            if head.is_connect {
                // frps hijacks a CONNECT: the request goes on and the
                // connection is a tunnel (frpc's side answers it).
                self.tunnel(up, Vec::new()).await;
                return Ok(Next::Gone);
            }
            if let Err(e) = self.request_body(&mut up, head.body).await {
                up.release();
                return Err(e);
            }
            match self.response(&mut up, &head, &edits.response).await {
                Ok(Exchange::Done { keep, delimited }) => {
                    if !head.keep_alive || !delimited {
                        up.release();
                        return Ok(Next::Close);
                    }
                    if keep && up.keep_idle() {
                        self.upstream = Some(up);
                    } else {
                        up.release();
                    }
                    return Ok(Next::KeepAlive);
                }
                Ok(Exchange::Upgraded(rest)) => {
                    self.tunnel(up, rest).await;
                    return Ok(Next::Gone);
                }
                Ok(Exchange::Answer(status)) => {
                    up.release();
                    let body = format!("{status}\n");
                    return Ok(self.answer(status, "", body.as_bytes()).await);
                }
                Err(Failed::BeforeResponse(_)) if retry => {
                    up.release();
                    retry = false;
                }
                Err(Failed::BeforeResponse(e) | Failed::During(e)) => {
                    up.release();
                    return Err(e);
                }
            }
        }
    }

    /// The kept connection, when it serves `dest` (a proxy still open, or
    /// the same address origin); a kept one for elsewhere is let go.
    fn take_upstream(&mut self, dest: &Dest) -> Option<Upstream> {
        let up = self.take_kept()?;
        if up.serves(dest) {
            return Some(up);
        }
        up.release();
        None
    }

    /// A new connection to `dest`: a work connection from frpc, or a
    /// connection to the address origin. Err: what the user was answered.
    async fn connect(&mut self, dest: &Dest) -> Result<Upstream, Next> {
        match dest {
            Dest::Proxy { control, proxy, .. } => {
                let local = match &self.user {
                    Some(Conn::Tcp(u, _)) => u.local_addr().ok(),
                    Some(Conn::Tls(t, _)) => t.socket().local_addr().ok(),
                    _ => None,
                };
                let start = proxy::start_work_conn(proxy, local, self.peer);
                let Some(work) = Box::pin(control.take_work_conn(start)).await else {
                    return Err(self.not_found("no work connection from frpc in time").await);
                };
                let user_fd = match &self.user {
                    Some(u) => u.aborter(),
                    None => return Err(Next::Gone),
                };
                let tracked = proxy.track([user_fd, work.aborter()]);
                Ok(Upstream {
                    proxy: Some(proxy.clone()),
                    origin: None,
                    work,
                    tracked,
                })
            }
            Dest::Origin(addr) => {
                WorkerStats::bump(&self.ctx.stats().edge_origin_requests, 1);
                let dial = monoio::net::TcpStream::connect(*addr);
                let failed = match monoio::time::timeout(self.timeout(), dial).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Upstream {
                            proxy: None,
                            origin: Some(*addr),
                            work: Conn::tcp(s),
                            tracked: 0,
                        });
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_string(),
                };
                WorkerStats::bump(&self.ctx.stats().edge_origin_down, 1);
                tracing::info!(worker = self.ctx.id, peer = %self.peer, origin = %addr, error = %failed, "edge origin unreachable");
                let body = format!("origin {addr} unreachable: {failed}\n");
                Err(self.answer(502, "", body.as_bytes()).await)
            }
        }
    }

    /// Move the connection, with the request it starts with, to the worker
    /// that owns its proxy.
    fn move_to(&mut self, target: VhostTarget) -> Next {
        if let Some(u) = self.take_kept() {
            u.release();
        }
        let Some(inbox) = self.ctx.shared.inboxes.get(target.worker) else {
            return Next::Close;
        };
        // The descriptor's token goes with the Conn, so that no aborter
        // of this worker's reaches the socket once it has moved.
        let (user, tls) = match self.user.take() {
            Some(Conn::Tcp(user, _)) => (user, None),
            Some(Conn::Tls(t, _)) => {
                let (user, state) = t.into_parts();
                (user, Some(state))
            }
            _ => return Next::Gone,
        };
        let moved = MovedVhost {
            tls,
            socket: handoff::detach(user),
            pending: std::mem::take(&mut self.buf),
            peer: self.peer,
            target,
        };
        if inbox.send(WorkerMsg::VhostConn(Box::new(moved))).is_ok() {
            WorkerStats::bump(&self.ctx.stats().handoffs_out, 1);
        }
        Next::Gone
    }

    /// Send the request's body (what of it `buf` holds, then what the
    /// user sends) to frpc; what follows it stays in `buf`.
    async fn request_body(&mut self, up: &mut Upstream, body: Body) -> Result<(), String> {
        let mut framing = BodyFraming::new(body);
        let stats = self.ctx.stats();
        loop {
            let n = framing
                .advance(&self.buf)
                .map_err(|e| format!("request body: {e}"))?;
            if n > 0 {
                let chunk = if n == self.buf.len() {
                    std::mem::take(&mut self.buf)
                } else {
                    self.buf.drain(..n).collect()
                };
                let (r, mut back) = up.work.write_all(chunk).await;
                r.map_err(|e| format!("write to frpc failed: {e}"))?;
                up.meter(stats, true, n).await;
                if self.buf.is_empty() {
                    back.clear();
                    self.buf = back;
                }
            }
            if framing.is_done() {
                return Ok(());
            }
            let buf = std::mem::take(&mut self.buf);
            let (r, b) = self.user()?.read(buf).await;
            self.buf = b;
            match r {
                Ok(0) => return Err("closed inside a request body".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }

    /// Carry the response (interim ones first) back to the user.
    async fn response(
        &mut self,
        up: &mut Upstream,
        req: &Head,
        set: &[(String, String)],
    ) -> Result<Exchange, Failed> {
        let stats = self.ctx.stats();
        let timeout = self.timeout();
        let mut rbuf: Vec<u8> = Vec::with_capacity(2048);
        let mut got_any = false;
        let res = loop {
            let parsed = match head::parse_response(&rbuf, req.is_head) {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(worker = self.ctx.id, upstream = %up.name(), error = %e, "bad response head from frpc");
                    return Ok(Exchange::Answer(502));
                }
            };
            if let Some(res) = parsed {
                if !res.is_interim() {
                    break res;
                }
                // 100 Continue and the like go on as they are.
                let interim: Vec<u8> = rbuf.drain(..res.head_len).collect();
                let n = interim.len();
                let user = self.user().map_err(Failed::During)?;
                let (r, _) = user.write_all(interim).await;
                r.map_err(|e| Failed::During(format!("write error: {e}")))?;
                up.meter(stats, false, n).await;
                continue;
            }
            let read = monoio::time::timeout(timeout, up.work.read(std::mem::take(&mut rbuf)));
            let (r, b) = match read.await {
                Ok(x) => x,
                Err(_) => return Ok(Exchange::Answer(504)),
            };
            rbuf = b;
            match r {
                Ok(0) if !got_any => {
                    return Err(Failed::BeforeResponse(
                        "frpc closed before a response".into(),
                    ))
                }
                Ok(0) => return Ok(Exchange::Answer(502)),
                Ok(_) => got_any = true,
                Err(e) if !got_any => {
                    return Err(Failed::BeforeResponse(format!(
                        "read from frpc failed: {e}"
                    )))
                }
                Err(e) => return Err(Failed::During(format!("read from frpc failed: {e}"))),
            }
        };
        // The head, rewritten in place when the proxy sets response
        // fields; `start` is where the body begins in `rbuf`.
        let mut start = res.head_len;
        if !set.is_empty() {
            let mut o = Vec::with_capacity(res.head_len + 128);
            rewrite::response(&rbuf, set, &mut o).map_err(|e| Failed::During(e.to_string()))?;
            start = o.len();
            rbuf.splice(..res.head_len, o);
        }
        if res.status == 101 {
            if !req.upgrade {
                return Ok(Exchange::Answer(502));
            }
            let rest = rbuf.split_off(start);
            let (r, _) = self.user().map_err(Failed::During)?.write_all(rbuf).await;
            r.map_err(|e| Failed::During(format!("write error: {e}")))?;
            up.meter(stats, false, start).await;
            return Ok(Exchange::Upgraded(rest));
        }
        // Each read goes out as it came (the head with the first one),
        // cut where the body ends.
        let (mut framing, until_close) = match res.body {
            ResponseBody::Framed(b) => (BodyFraming::new(b), false),
            ResponseBody::UntilClose => (BodyFraming::new(Body::None), true),
        };
        let mut extra_bytes = false;
        loop {
            let n = if until_close {
                rbuf.len() - start
            } else {
                framing
                    .advance(&rbuf[start..])
                    .map_err(|e| Failed::During(format!("response body: {e}")))?
            };
            extra_bytes |= start + n < rbuf.len();
            rbuf.truncate(start + n);
            if !rbuf.is_empty() {
                let len = rbuf.len();
                let user = self.user().map_err(Failed::During)?;
                let (r, back) = user.write_all(rbuf).await;
                r.map_err(|e| Failed::During(format!("write error: {e}")))?;
                up.meter(stats, false, len).await;
                rbuf = back;
            }
            if !until_close && framing.is_done() {
                break;
            }
            rbuf.clear();
            start = 0;
            let (r, b) = up.work.read(rbuf).await;
            rbuf = b;
            match r {
                Ok(0) if until_close => {
                    return Ok(Exchange::Done {
                        keep: false,
                        delimited: false,
                    });
                }
                Ok(0) => return Err(Failed::During("frpc closed inside a response".into())),
                Ok(_) => {}
                Err(e) => return Err(Failed::During(format!("read from frpc failed: {e}"))),
            }
        }
        Ok(Exchange::Done {
            keep: res.keep_alive && !extra_bytes,
            delimited: true,
        })
    }

    /// After a 101: relay both ways until both are done, what each side
    /// sent past the heads first.
    async fn tunnel(&mut self, up: Upstream, from_frpc: Vec<u8>) {
        let Some(mut user) = self.user.take() else {
            return up.release();
        };
        let stats = self.ctx.stats();
        if !from_frpc.is_empty() {
            let n = from_frpc.len();
            if user.write_all(from_frpc).await.0.is_err() {
                return up.release();
            }
            up.meter(stats, false, n).await;
        }
        let cfg = &self.ctx.shared.config.fastpath;
        let opts = RelayOpts {
            encryption_key: None,
            compression: false,
            buffer: cfg.relay_buffer,
            splice: cfg.splice,
            splice_local: cfg.splice_local,
        };
        // The tracked aborters already name these two connections.
        let (proxy, tracked) = (up.proxy.clone(), up.tracked);
        let ends = relay::Ends {
            user,
            work: up.work,
            pending: std::mem::take(&mut self.buf),
        };
        let Some(proxy) = proxy else {
            // An address origin: counted in the worker's bytes only.
            let bytes = [
                std::sync::atomic::AtomicU64::new(0),
                std::sync::atomic::AtomicU64::new(0),
            ];
            let limits = crate::policy::tenants::Limits::default();
            return relay::run(stats, ends, opts, &bytes, &limits, None).await;
        };
        let ctx = self.ctx.clone();
        let due = || proxy.report_if_due(&ctx.events);
        let report = Some(&due as &dyn Fn());
        relay::run(stats, ends, opts, proxy.bytes(), proxy.limits(), report).await;
        proxy.untrack(tracked);
    }
}

/// What the edge makes of a request (see `UserConn::edge`).
enum Edge {
    /// Not the edge's: route it to `http` proxies.
    NoRoute,
    /// An edge route to a tunnel origin.
    Proxy(VhostTarget),
    /// An edge route to an address origin.
    Origin(SocketAddr),
    /// Answered here: status, extra header lines, body.
    Answer(u16, String, String),
}

/// Where ACME HTTP-01 challenges are asked (RFC 8555 §8.3).
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// For errors.
fn up_name(dest: &Dest) -> String {
    match dest {
        Dest::Proxy { .. } => "frpc".to_string(),
        Dest::Origin(a) => format!("origin {a}"),
    }
}

/// How carrying a response ended.
enum Exchange {
    /// Sent in full; whether frpc's side keeps the connection, and
    /// whether the response was delimited by its framing (not by the
    /// close, which the user's connection must then see too).
    Done { keep: bool, delimited: bool },
    /// 101: the connection is now a relay; what frpc sent past the head.
    Upgraded(Vec<u8>),
    /// Nothing was sent to the user yet: answer with this status.
    Answer(u16),
}

/// Why carrying a response failed.
enum Failed {
    /// Before any byte of a response: a kept connection frpc's side had
    /// closed, worth one retry.
    BeforeResponse(String),
    /// After the user got part of it: the user's connection closes.
    During(String),
}

/// A connection another worker moved here: `pending` starts with the
/// request it routed to `target`.
pub fn adopt(
    ctx: &Rc<WorkerCtx>,
    sessions: &Rc<Sessions>,
    stream: Conn,
    peer: SocketAddr,
    pending: Vec<u8>,
    target: VhostTarget,
) {
    monoio::spawn(serve(
        ctx.clone(),
        sessions.clone(),
        stream,
        (peer, None),
        pending,
        Some(target),
    ));
}
