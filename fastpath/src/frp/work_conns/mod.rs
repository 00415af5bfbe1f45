//! Work connections: how a `NewWorkConn` reaches its session's pool
//! ([`pool`]), in named steps:
//!
//! 1. **route** ([`route`]) — the server directory names the worker that
//!    owns the run_id. None: refused with frps's unknown-run_id answer. This
//!    worker: delivered here. Another worker: a TCP or TLS connection is
//!    detached from this worker's runtime and handed to the owner through
//!    its inbox (a file descriptor, plus the rustls state); a yamux stream
//!    cannot move (its session lives here), so a stream for a session
//!    owned elsewhere is another session's stream and is refused.
//! 2. **adopt** ([`adopt`]) — on the owner, a handed-over connection is
//!    registered with this worker's runtime and delivered.
//! 3. **deliver** (`deliver`) — checks that it came the way the session's
//!    frpc sends them
//!    ([`Control::check_work_conn_carrier`](crate::frp::control::Control::check_work_conn_carrier))
//!    and its privilege key when work connections are authenticated, then
//!    puts it into the session's pool, where a user connection takes it.

pub mod pool;

use std::net::SocketAddr;

use monoio::net::TcpStream;
use proto::msg::{Message, StartWorkConn};

use crate::frp::control::Sessions;
use crate::frp::msgio::{self, Wire};
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::conn::Conn;
use crate::transport::handoff::{detach, MovedConn, WorkConnOffer, WorkerMsg};
use crate::transport::tls::TlsStream;

/// Step 1: send a work connection to the worker that owns its session.
pub async fn route(ctx: &WorkerCtx, sessions: &Sessions, conn: Conn, offer: WorkConnOffer) {
    let WorkConnOffer {
        msg, wire, peer, ..
    } = &offer;
    let (wire, peer) = (*wire, *peer);
    let Some(owner) = ctx.shared.directory.find_session(&msg.run_id) else {
        return refuse(conn, &msg.run_id, wire, peer).await;
    };
    // It names a live session: its address's pre-auth token comes back
    // (frpc without tcpMux opens one connection per user connection).
    ctx.preauth.identified(peer.ip());
    // A yamux session lives on one worker with the control it carries, so
    // a stream for a session owned elsewhere is another session's stream.
    let (socket, tls) = match conn {
        Conn::Mux(_) if owner.worker != ctx.id => {
            let reason = "a yamux stream of another session";
            return refuse_foreign(ctx, conn, &msg.run_id, wire, peer, reason).await;
        }
        // Detached, the socket is no longer this worker's: its SocketFd
        // goes with the Conn (no Aborter was made for it yet).
        Conn::Tcp(s, _) if owner.worker != ctx.id => (detach(s), None),
        Conn::Tls(t, _) if owner.worker != ctx.id => {
            let (s, state) = t.into_parts();
            (detach(s), Some(state))
        }
        local => return deliver(ctx, sessions, local, offer).await,
    };
    let moved = MovedConn { socket, tls, offer };
    match ctx.shared.inboxes[owner.worker].send(WorkerMsg::WorkConn(Box::new(moved))) {
        Ok(()) => WorkerStats::bump(&ctx.stats().handoffs_out, 1),
        Err(_) => tracing::warn!(%peer, "owner worker is gone; dropping work connection"),
    }
}

/// Step 2: take in a work connection another worker handed over.
pub async fn adopt(ctx: &WorkerCtx, sessions: &Sessions, moved: MovedConn) {
    WorkerStats::bump(&ctx.stats().handoffs_in, 1);
    let MovedConn { socket, tls, offer } = moved;
    let stream = match TcpStream::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(worker = ctx.id, error = %e, "cannot adopt handed-over connection");
            return;
        }
    };
    let conn = match tls {
        Some(state) => Conn::tls(TlsStream::from_parts(stream, state)),
        None => Conn::tcp(stream),
    };
    deliver(ctx, sessions, conn, offer).await;
}

/// Step 3: put a work connection into a local session's pool.
async fn deliver(ctx: &WorkerCtx, sessions: &Sessions, conn: Conn, offer: WorkConnOffer) {
    let WorkConnOffer {
        pending,
        msg,
        wire,
        peer,
    } = offer;
    let Some(control) = sessions.get(&msg.run_id) else {
        refuse(conn, &msg.run_id, wire, peer).await;
        return;
    };
    if let Err(reason) = control.check_work_conn_carrier(&conn) {
        refuse_foreign(ctx, conn, &msg.run_id, wire, peer, reason).await;
        return;
    }
    if let Err(reason) = control.check_work_conn_auth(&msg) {
        tracing::info!(%peer, session = %msg.run_id, %reason, "work connection refused");
        let resp = Message::StartWorkConn(StartWorkConn {
            error: reason.detail,
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

/// Refuse a work connection whose run_id has no session.
async fn refuse(conn: Conn, run_id: &str, wire: Wire, peer: SocketAddr) {
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
async fn refuse_foreign(
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
