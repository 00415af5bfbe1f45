//! The life of a connection on the bind port, in named steps:
//!
//! 1. **detect transport** — first byte: `0x17` (frp's custom TLS byte,
//!    dropped) or `0x16` (a TLS ClientHello) → TLS; anything else → plain
//!    (refused when `transport.tls.force`).
//! 2. **detect framing** — first plaintext byte `0x00` → a yamux session
//!    (tcpMux on); `FRP\0` → wire protocol v2; else one v1 message per
//!    connection (tcpMux off). Detected per connection, so clients with
//!    and without tcpMux share one port.
//! 3. **identify** — the first message on each connection or stream:
//!    `Login` → a new control ([`control`](crate::control)); `NewWorkConn`
//!    → into the owning session's pool, moving to the owner worker when it
//!    lives elsewhere; `NewVisitorConn` → refused (visitors come later).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use proto::msg::{Message, NewVisitorConnResp, NewWorkConn, StartWorkConn};

use crate::conn::Conn;
use crate::control;
use crate::handoff::{MovedConn, WorkerMsg};
use crate::msgio::{self, MsgReader};
use crate::mux::MuxConn;
use crate::stats::WorkerStats;
use crate::tls::TlsStream;
use crate::worker::{detach, WorkerCtx};

/// How long a new connection may take to say who it is (frps: 10 s).
pub const FIRST_MSG_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve one accepted connection on the bind port.
pub async fn serve(ctx: Rc<WorkerCtx>, stream: TcpStream, peer: SocketAddr) {
    let (conn, pending) = match detect_transport(&ctx, stream).await {
        Ok(x) => x,
        Err(reason) => {
            tracing::debug!(%peer, %reason, "connection dropped before identification");
            return;
        }
    };
    serve_conn(ctx, conn, pending, peer).await;
}

async fn detect_transport(
    ctx: &WorkerCtx,
    mut stream: TcpStream,
) -> Result<(Conn, Vec<u8>), String> {
    let buf = Vec::with_capacity(4096);
    let (r, buf) = match monoio::time::timeout(FIRST_MSG_TIMEOUT, stream.read(buf)).await {
        Ok(x) => x,
        Err(_) => return Err("no data within 10 s".into()),
    };
    match r {
        Ok(0) => return Err("closed before sending anything".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read error: {e}")),
    }
    let tls_cfg = ctx.shared.tls.clone();
    match buf[0] {
        0x17 | 0x16 => {
            let prefix = if buf[0] == 0x17 { &buf[1..] } else { &buf[..] };
            let handshake = TlsStream::accept(stream, tls_cfg, prefix);
            match monoio::time::timeout(FIRST_MSG_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => Ok((Conn::Tls(Box::new(tls)), Vec::new())),
                Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                Err(_) => Err("TLS handshake timed out".into()),
            }
        }
        _ if ctx.shared.config.transport.tls.force => {
            Err("plain connection refused: transport.tls.force is on".into())
        }
        _ => Ok((Conn::Tcp(stream), buf)),
    }
}

/// Steps 2 and 3 for a connection whose transport is known.
pub async fn serve_conn(
    ctx: Rc<WorkerCtx>,
    mut conn: Conn,
    mut pending: Vec<u8>,
    peer: SocketAddr,
) {
    // Step 2: we need at least one plaintext byte to tell yamux from v1.
    while pending.is_empty() {
        pending.reserve(4096);
        let (r, b) = match monoio::time::timeout(FIRST_MSG_TIMEOUT, conn.read(pending)).await {
            Ok(x) => x,
            Err(_) => {
                tracing::debug!(%peer, "no frp data within 10 s");
                return;
            }
        };
        pending = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    if pending[0] == 0x00 {
        let (r, w) = conn.into_split();
        let cfg = mux_config(&ctx);
        let sctx = ctx.clone();
        MuxConn::start(r, w, pending, cfg, move |stream| {
            monoio::spawn(identify(
                sctx.clone(),
                Conn::Mux(stream),
                Vec::new(),
                peer,
                true,
            ));
        });
        return;
    }
    if pending.starts_with(b"FRP\0") {
        tracing::info!(%peer, "wire protocol v2 client refused: not supported yet");
        WorkerStats::bump(&ctx.stats().protocol_errors, 1);
        return;
    }
    identify(ctx, conn, pending, peer, false).await;
}

fn mux_config(ctx: &WorkerCtx) -> proto::yamux::Config {
    let cfg = &ctx.shared.config;
    let mut c = proto::yamux::Config::server();
    c.max_stream_window = cfg.fastpath.yamux_window;
    c.keepalive_interval = cfg.mux_keepalive();
    c
}

/// Step 3: read the first message of a connection or stream and hand it on.
async fn identify(
    ctx: Rc<WorkerCtx>,
    mut conn: Conn,
    pending: Vec<u8>,
    peer: SocketAddr,
    muxed: bool,
) {
    let mut reader = MsgReader::new(pending);
    let first = match reader.next_within(&mut conn, FIRST_MSG_TIMEOUT).await {
        Ok(m) => m,
        Err(e) => {
            if matches!(e, msgio::MsgError::Frame(_)) {
                WorkerStats::bump(&ctx.stats().protocol_errors, 1);
                tracing::warn!(%peer, transport = conn.kind(), reason = %e, "closing connection: bad first message");
            } else {
                tracing::debug!(%peer, reason = %e, "connection ended before its first message");
            }
            return;
        }
    };
    match first {
        Message::Login(login) => control::run(ctx, conn, reader, login, peer, muxed).await,
        Message::NewWorkConn(msg) => {
            let pending = reader.into_pending();
            route_work_conn(&ctx, conn, pending, msg, peer).await;
        }
        Message::NewVisitorConn(v) => {
            let resp = Message::NewVisitorConnResp(NewVisitorConnResp {
                proxy_name: v.proxy_name.clone(),
                error: "visitor connections are not supported by this server yet".into(),
            });
            let _ = msgio::write_plain(&mut conn, &resp).await;
            tracing::info!(%peer, proxy = %v.proxy_name, reason = "visitors not supported", "visitor connection refused");
        }
        other => {
            WorkerStats::bump(&ctx.stats().protocol_errors, 1);
            tracing::warn!(%peer, msg = other.name(), reason = "unexpected first message", "closing connection");
        }
    }
}

/// Send a work connection to the worker that owns its session.
async fn route_work_conn(
    ctx: &Rc<WorkerCtx>,
    mut conn: Conn,
    pending: Vec<u8>,
    msg: NewWorkConn,
    peer: SocketAddr,
) {
    let Some(owner) = ctx.shared.directory.find_session(&msg.run_id) else {
        return refuse_work_conn(&mut conn, &msg.run_id, peer).await;
    };
    // yamux streams always belong to the session that carries them, which
    // lives here; only separate connections can land on the wrong worker.
    let (socket, tls) = match conn {
        Conn::Tcp(s) if owner.worker != ctx.id => (detach(s), None),
        Conn::Tls(t) if owner.worker != ctx.id => {
            let (s, state, ciphertext) = t.into_parts();
            (detach(s), Some((state, ciphertext)))
        }
        local => return deliver_work_conn(ctx, local, pending, msg, peer).await,
    };
    let moved = MovedConn {
        socket,
        tls,
        pending,
        msg,
        peer,
    };
    match ctx.shared.inboxes[owner.worker].send(WorkerMsg::WorkConn(Box::new(moved))) {
        Ok(()) => WorkerStats::bump(&ctx.stats().handoffs_out, 1),
        Err(_) => tracing::warn!(%peer, "owner worker is gone; dropping work connection"),
    }
}

async fn refuse_work_conn(conn: &mut Conn, run_id: &str, peer: SocketAddr) {
    let error = format!("no client control found for run id [{run_id}]");
    tracing::info!(%peer, reason = %error, "work connection refused");
    let resp = Message::StartWorkConn(StartWorkConn {
        error,
        ..Default::default()
    });
    let _ = msgio::write_plain(conn, &resp).await;
}

/// Put a work connection into a local control's pool.
pub async fn deliver_work_conn(
    ctx: &Rc<WorkerCtx>,
    mut conn: Conn,
    pending: Vec<u8>,
    msg: NewWorkConn,
    peer: SocketAddr,
) {
    let Some(control) = ctx.control(&msg.run_id) else {
        refuse_work_conn(&mut conn, &msg.run_id, peer).await;
        return;
    };
    if let Err(reason) = control.check_work_conn_auth(&msg) {
        tracing::info!(%peer, session = %msg.run_id, %reason, "work connection refused");
        let resp = Message::StartWorkConn(StartWorkConn {
            error: reason,
            ..Default::default()
        });
        let _ = msgio::write_plain(&mut conn, &resp).await;
        return;
    }
    if !pending.is_empty() {
        tracing::warn!(%peer, session = %msg.run_id, "work connection sent data before StartWorkConn; closing it");
        return;
    }
    control.put_work_conn(conn);
}
