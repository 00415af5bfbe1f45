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
//!    `Login` → a new control ([`control`]); `NewWorkConn`
//!    → into the owning session's pool, moving to the owner worker when it
//!    lives elsewhere, if it came the way that session's frpc sends them
//!    ([`work_conns`]);
//!    `NewVisitorConn` → a visitor of a secret proxy ([`visitor`]).
//!
//! Before step 1 the connection takes its place at the worker's pre-auth
//! gate ([`preauth`](crate::transport::preauth)) or is closed; it gives the
//! place back once its first message is read (a yamux session: once a
//! Login on it succeeds). Steps 1 to 4 together must be done within
//! [`IDENTIFY_DEADLINE`] of the accept (a yamux stream: of its opening).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use proto::msg::Message;
use proto::wire_v2::{self, FrameType};

use crate::frp::control::{self, ControlWire, Sessions};
use crate::frp::msgio::{MsgError, MsgReader, Wire};
use crate::frp::visitor;
use crate::frp::work_conns;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::{WorkerCtx, IDENTIFY_DEADLINE};
use crate::transport::conn::Conn;
use crate::transport::handoff::WorkConnOffer;
use crate::transport::mux::MuxConn;
use crate::transport::preauth::Ticket;
use crate::transport::tls::TlsStream;

/// What is left of the time until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Serve one accepted connection on the bind port.
pub async fn serve(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some((ticket, now)) = ctx.admit(peer) else {
        return;
    };
    let deadline = now + IDENTIFY_DEADLINE;
    let opened = ctx
        .within(left(deadline), "not identified", open(&ctx, stream))
        .await;
    let (conn, pending) = match opened {
        Ok(x) => x,
        Err(reason) => {
            tracing::debug!(%peer, %reason, "connection dropped before identification");
            return;
        }
    };
    serve_conn(ctx, sessions, conn, pending, peer, ticket, deadline).await;
}

/// Steps 1 and the first of 2: the transport, and at least one plaintext
/// byte.
async fn open(ctx: &WorkerCtx, stream: TcpStream) -> Result<(Conn, Vec<u8>), String> {
    let (mut conn, mut pending) = detect_transport(ctx, stream).await?;
    // Step 2 needs at least one plaintext byte to tell yamux from v1.
    while pending.is_empty() {
        pending.reserve(4096);
        let (r, b) = conn.read(pending).await;
        pending = b;
        match r {
            Ok(0) => return Err("closed before sending frp data".into()),
            Err(e) => return Err(format!("read error: {e}")),
            Ok(_) => {}
        }
    }
    Ok((conn, pending))
}

async fn detect_transport(
    ctx: &WorkerCtx,
    mut stream: TcpStream,
) -> Result<(Conn, Vec<u8>), String> {
    let buf = Vec::with_capacity(4096);
    let (r, buf) = stream.read(buf).await;
    match r {
        Ok(0) => return Err("closed before sending anything".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read error: {e}")),
    }
    let tls_cfg = ctx.shared.tls.clone();
    match buf[0] {
        0x17 | 0x16 => {
            let prefix = if buf[0] == 0x17 { &buf[1..] } else { &buf[..] };
            match TlsStream::accept(stream, tls_cfg, prefix).await {
                Ok(tls) => {
                    let stats = ctx.stats();
                    let path = match tls.protects_records() {
                        true => &stats.tls13_sessions,
                        false => &stats.tls_rustls_sessions,
                    };
                    WorkerStats::bump(path, 1);
                    Ok((Conn::tls(tls), Vec::new()))
                }
                Err(e) => Err(format!("TLS handshake failed: {e}")),
            }
        }
        _ if ctx.shared.config.transport.tls.force => {
            Err("plain connection refused: transport.tls.force is on".into())
        }
        _ => Ok((Conn::tcp(stream), buf)),
    }
}

/// Step 2 for a connection whose transport is known and whose first
/// plaintext bytes are in `pending`.
async fn serve_conn(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    conn: Conn,
    pending: Vec<u8>,
    peer: SocketAddr,
    ticket: Ticket,
    deadline: Instant,
) {
    if pending[0] == 0x00 {
        let (r, w) = conn.into_split();
        let cfg = mux_config(&ctx);
        let refused_ctx = ctx.clone();
        let budget = ctx.mux.clone();
        MuxConn::start(
            r,
            w,
            pending,
            cfg,
            budget,
            Some(ticket),
            move |stream| {
                let (ctx, sessions) = (ctx.clone(), sessions.clone());
                let deadline = Instant::now() + IDENTIFY_DEADLINE;
                let conn = Conn::Mux(stream);
                monoio::spawn(identify(
                    ctx,
                    sessions,
                    conn,
                    Vec::new(),
                    peer,
                    deadline,
                    None,
                ));
            },
            move |n, admitted| {
                WorkerStats::bump(&refused_ctx.stats().mux_streams_refused, n);
                if admitted {
                    tracing::debug!(%peer, streams = n, "yamux streams refused (backlog or maxStreams)");
                } else {
                    tracing::info!(%peer, streams = n, limit = refused_ctx.shared.config.fastpath.pre_auth_streams,
                        "yamux streams refused before login (fastpath.preAuthStreams)");
                }
            },
        );
        return;
    }
    identify(ctx, sessions, conn, pending, peer, deadline, Some(ticket)).await;
}

fn mux_config(ctx: &WorkerCtx) -> proto::yamux::Config {
    let cfg = &ctx.shared.config;
    let mut c = proto::yamux::Config::server();
    c.max_stream_window = cfg.fastpath.yamux_window;
    c.pre_auth_streams = cfg.fastpath.pre_auth_streams;
    c.max_streams = cfg.fastpath.max_streams;
    c.session_window_budget = cfg.fastpath.session_budget;
    c.window_autotune = cfg.fastpath.window_autotune;
    c.keepalive_interval = cfg.mux_keepalive();
    c
}

/// Steps 3 and 4: tell v1 from v2, read the first message of a connection
/// or stream by `deadline` and hand it on. A connection of its own gives its
/// `ticket` back once that message is read.
async fn identify(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    mut conn: Conn,
    mut pending: Vec<u8>,
    peer: SocketAddr,
    deadline: Instant,
    ticket: Option<Ticket>,
) {
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
                let (r, b) = match monoio::time::timeout(left(deadline), conn.read(pending)).await {
                    Ok(x) => x,
                    Err(_) => {
                        WorkerStats::bump(&ctx.stats().identify_timeouts, 1);
                        return;
                    }
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
        v2_first(&mut conn, &mut reader, peer, deadline).await
    } else {
        reader
            .next_within(&mut conn, left(deadline))
            .await
            .map(|m| (m, ControlWire::V1))
    };
    drop(ticket);
    let (first, control_wire) = match first {
        Ok(m) => m,
        Err(e) => {
            if matches!(e, MsgError::Timeout) {
                WorkerStats::bump(&ctx.stats().identify_timeouts, 1);
            }
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
        // A session's future is large (its login steps and its read loop);
        // boxed, it is allocated for logins only, and every other
        // connection's task (work connections above all, one per user
        // connection) stays the size of identification.
        Message::Login(login) => {
            Box::pin(control::run(
                ctx,
                sessions,
                conn,
                reader,
                login,
                peer,
                control_wire,
            ))
            .await
        }
        Message::NewWorkConn(msg) => {
            let offer = WorkConnOffer {
                pending: reader.into_pending(),
                msg,
                wire,
                peer,
            };
            work_conns::route(&ctx, &sessions, conn, offer).await;
        }
        Message::NewVisitorConn(v) => {
            let pending = reader.into_pending();
            Box::pin(visitor::serve(ctx, conn, v, wire, pending, peer)).await
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
    deadline: Instant,
) -> Result<(Message, ControlWire), MsgError> {
    let frame = reader.next_frame_within(conn, left(deadline)).await?;
    match frame.ty {
        FrameType::Message => Ok((wire_v2::decode_message(&frame.payload)?, ControlWire::V1)),
        FrameType::ClientHello => {
            let hello = wire_v2::ClientHello::parse(&frame.payload)?;
            let login = reader.next_within(conn, left(deadline)).await?;
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
