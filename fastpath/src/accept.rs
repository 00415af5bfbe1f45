//! The life of a connection on the bind port, in named steps:
//!
//! 1. **detect transport** — first byte: `0x17` (frp's custom TLS byte,
//!    dropped) or `0x16` (a TLS ClientHello) → TLS; anything else → plain
//!    (refused when `transport.tls.force`).
//! 2. **detect framing** — first plaintext byte `0x00` → a yamux session
//!    (tcpMux on); else one frp connection (tcpMux off). Detected per
//!    connection, so clients with and without tcpMux share one port.
//! 3. **detect wire protocol** — per connection or yamux stream: the magic
//!    `FRP\0\x02\r\n` → wire protocol v2 (a control then starts with a
//!    ClientHello); anything else → v1.
//! 4. **identify** — the first message on each connection or stream:
//!    `Login` → a new control ([`control`](crate::control)); `NewWorkConn`
//!    → into the owning session's pool, moving to the owner worker when it
//!    lives elsewhere, if it came the way that session's frpc sends them
//!    (a yamux session's own stream; see
//!    [`Control::check_work_conn_carrier`](crate::control::Control::check_work_conn_carrier));
//!    `NewVisitorConn` → refused (visitors come later).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use proto::msg::{Message, NewVisitorConnResp, NewWorkConn, StartWorkConn};
use proto::wire_v2::{self, FrameType};

use crate::conn::Conn;
use crate::control::{self, ControlWire};
use crate::handoff::{MovedConn, WorkerMsg};
use crate::msgio::{self, MsgError, MsgReader, Wire};
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
            monoio::spawn(identify(sctx.clone(), Conn::Mux(stream), Vec::new(), peer));
        });
        return;
    }
    identify(ctx, conn, pending, peer).await;
}

fn mux_config(ctx: &WorkerCtx) -> proto::yamux::Config {
    let cfg = &ctx.shared.config;
    let mut c = proto::yamux::Config::server();
    c.max_stream_window = cfg.fastpath.yamux_window;
    c.keepalive_interval = cfg.mux_keepalive();
    c
}

/// Steps 3 and 4: tell v1 from v2, read the first message of a connection
/// or stream and hand it on.
async fn identify(ctx: Rc<WorkerCtx>, mut conn: Conn, mut pending: Vec<u8>, peer: SocketAddr) {
    // Step 3: v2 announces itself with a 7-byte magic; v1 has no preamble.
    let wire = loop {
        match wire_v2::detect_magic(&pending) {
            Some(true) => {
                pending.drain(..wire_v2::MAGIC.len());
                break Wire::V2;
            }
            Some(false) => break Wire::V1,
            None => {
                pending.reserve(4096);
                let (r, b) =
                    match monoio::time::timeout(FIRST_MSG_TIMEOUT, conn.read(pending)).await {
                        Ok(x) => x,
                        Err(_) => return,
                    };
                pending = b;
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
            }
        }
    };
    let mut reader = MsgReader::new(pending, wire);
    let first = if wire == Wire::V2 {
        v2_first(&mut conn, &mut reader, peer).await
    } else {
        reader
            .next_within(&mut conn, FIRST_MSG_TIMEOUT)
            .await
            .map(|m| (m, ControlWire::V1))
    };
    let (first, control_wire) = match first {
        Ok(m) => m,
        Err(e) => {
            if e.is_malformed() {
                WorkerStats::bump(&ctx.stats().protocol_errors, 1);
                tracing::warn!(%peer, transport = conn.kind(), wire = wire.name(), reason = %e, "closing connection: bad first message");
            } else {
                tracing::debug!(%peer, reason = %e, "connection ended before its first message");
            }
            return;
        }
    };
    match first {
        Message::Login(login) => control::run(ctx, conn, reader, login, peer, control_wire).await,
        Message::NewWorkConn(msg) => {
            let pending = reader.into_pending();
            route_work_conn(&ctx, conn, pending, msg, wire, peer).await;
        }
        Message::NewVisitorConn(v) => {
            let resp = Message::NewVisitorConnResp(NewVisitorConnResp {
                proxy_name: v.proxy_name.clone(),
                error: "visitor connections are not supported by this server yet".into(),
            });
            msgio::refuse(conn, &resp, wire).await;
            tracing::info!(%peer, proxy = %v.proxy_name, reason = "visitors not supported", "visitor connection refused");
        }
        other => {
            WorkerStats::bump(&ctx.stats().protocol_errors, 1);
            tracing::warn!(%peer, msg = other.name(), reason = "unexpected first message", "closing connection");
        }
    }
}

/// v2: a control opens with ClientHello then Login (pipelined); work and
/// visitor connections go straight to their message.
async fn v2_first(
    conn: &mut Conn,
    reader: &mut MsgReader,
    peer: SocketAddr,
) -> Result<(Message, ControlWire), MsgError> {
    let frame = reader.next_frame_within(conn, FIRST_MSG_TIMEOUT).await?;
    match frame.ty {
        FrameType::Message => Ok((wire_v2::decode_message(&frame.payload)?, ControlWire::V1)),
        FrameType::ClientHello => {
            let hello = wire_v2::ClientHello::parse(&frame.payload)?;
            let login = reader.next_within(conn, FIRST_MSG_TIMEOUT).await?;
            let random = wire_v2::random_bytes::<{ wire_v2::RANDOM_LEN }>()?;
            let reply = wire_v2::server_hello(&hello, random);
            let mut hello_frame = Vec::with_capacity(reply.payload.len() + 8);
            wire_v2::encode_frame(FrameType::ServerHello, &reply.payload, &mut hello_frame)?;
            let keys = match reply.outcome {
                // Keys are derived once the Login says whose token it is.
                Ok(alg) => Ok((
                    alg,
                    wire_v2::transcript_hash(&frame.payload, &reply.payload),
                )),
                Err(e) => {
                    tracing::info!(%peer, reason = %e, "v2 hello negotiation failed");
                    Err(e.to_string())
                }
            };
            Ok((login, ControlWire::V2 { hello_frame, keys }))
        }
        other => Err(MsgError::UnexpectedFrame(other)),
    }
}

/// Send a work connection to the worker that owns its session.
async fn route_work_conn(
    ctx: &Rc<WorkerCtx>,
    conn: Conn,
    pending: Vec<u8>,
    msg: NewWorkConn,
    wire: Wire,
    peer: SocketAddr,
) {
    let Some(owner) = ctx.shared.directory.find_session(&msg.run_id) else {
        return refuse_work_conn(conn, &msg.run_id, wire, peer).await;
    };
    // A yamux session lives on one worker with the control it carries, so
    // a stream for a session owned elsewhere is another session's stream.
    let (socket, tls) = match conn {
        Conn::Mux(_) if owner.worker != ctx.id => {
            let reason = "a yamux stream of another session";
            return refuse_foreign_work_conn(ctx, conn, &msg.run_id, wire, peer, reason).await;
        }
        Conn::Tcp(s) if owner.worker != ctx.id => (detach(s), None),
        Conn::Tls(t) if owner.worker != ctx.id => {
            let (s, state, ciphertext) = t.into_parts();
            (detach(s), Some((state, ciphertext)))
        }
        local => return deliver_work_conn(ctx, local, pending, msg, wire, peer).await,
    };
    let moved = MovedConn {
        socket,
        tls,
        pending,
        msg,
        wire,
        peer,
    };
    match ctx.shared.inboxes[owner.worker].send(WorkerMsg::WorkConn(Box::new(moved))) {
        Ok(()) => WorkerStats::bump(&ctx.stats().handoffs_out, 1),
        Err(_) => tracing::warn!(%peer, "owner worker is gone; dropping work connection"),
    }
}

/// Refuse a work connection whose run_id has no session.
async fn refuse_work_conn(conn: Conn, run_id: &str, wire: Wire, peer: SocketAddr) {
    tracing::info!(%peer, session = %run_id, reason = "no such session", "work connection refused");
    answer_no_control(conn, run_id, wire).await;
}

/// Answer a NewWorkConn with frps's words for an unknown run_id.
async fn answer_no_control(conn: Conn, run_id: &str, wire: Wire) {
    let resp = Message::StartWorkConn(StartWorkConn {
        error: format!("no client control found for run id [{run_id}]"),
        ..Default::default()
    });
    msgio::refuse(conn, &resp, wire).await;
}

/// Refuse a work connection that did not come the way its session's frpc
/// sends them: someone who knows the run_id offering to take its users.
/// The client hears what it would for an unknown run_id, so the answer
/// does not confirm that the run_id is live; the log says why.
async fn refuse_foreign_work_conn(
    ctx: &WorkerCtx,
    conn: Conn,
    run_id: &str,
    wire: Wire,
    peer: SocketAddr,
    reason: &str,
) {
    WorkerStats::bump(&ctx.stats().foreign_work_conns, 1);
    tracing::warn!(%peer, session = %run_id, transport = conn.kind(), %reason, "foreign work connection refused");
    answer_no_control(conn, run_id, wire).await;
}

/// Put a work connection into a local control's pool.
pub async fn deliver_work_conn(
    ctx: &Rc<WorkerCtx>,
    conn: Conn,
    pending: Vec<u8>,
    msg: NewWorkConn,
    wire: Wire,
    peer: SocketAddr,
) {
    let Some(control) = ctx.control(&msg.run_id) else {
        refuse_work_conn(conn, &msg.run_id, wire, peer).await;
        return;
    };
    if let Err(reason) = control.check_work_conn_carrier(&conn) {
        refuse_foreign_work_conn(ctx, conn, &msg.run_id, wire, peer, reason).await;
        return;
    }
    if let Err(reason) = control.check_work_conn_auth(&msg) {
        tracing::info!(%peer, session = %msg.run_id, %reason, "work connection refused");
        let resp = Message::StartWorkConn(StartWorkConn {
            error: reason,
            ..Default::default()
        });
        msgio::refuse(conn, &resp, wire).await;
        return;
    }
    if !pending.is_empty() {
        tracing::warn!(%peer, session = %msg.run_id, "work connection sent data before StartWorkConn; closing it");
        return;
    }
    control.put_work_conn(conn, wire);
}
