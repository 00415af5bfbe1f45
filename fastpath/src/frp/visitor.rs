//! Secret proxies (`stcp`, `sudp`) and their visitors, as frps serves
//! them: the proxy has no public port; a visitor frpc opens a connection
//! whose first message is `NewVisitorConn` naming the proxy, signed with
//! the proxy's secret key, and is then joined to a work connection of the
//! proxy's session like a user connection. An `sudp` visitor's bytes are
//! `UDPPacket` messages, which both ends frame themselves: here both types
//! are the same byte stream.
//!
//! In named steps:
//! 1. **find** the proxy in the server-wide table of secret proxies
//!    ([`Visitors`](crate::frp::targets::Visitors)): frps's "custom listener for \[X\] doesn't exist".
//! 2. **check** the visitor: its session's user (from the run_id; frps's
//!    "no client control found for run id \[..\]"), the signature
//!    `md5(sk ‖ timestamp)` ("visitor connection of \[X\] auth failed"; also
//!    a timestamp more than [`MAX_SKEW`] from the server's clock, which
//!    frps does not check), and the proxy's `allowUsers` ("visitor
//!    connection of \[X\] user \[U\] not allowed"; empty allows the proxy's
//!    own user, `*` anyone).
//! 3. **answer** `NewVisitorConnResp` (the refusal, or empty).
//! 4. **join** through a [`bridge`]: the
//!    visitor's leg stays on this worker (a yamux stream cannot leave its
//!    session), wrapped with the visitor's `useEncryption` (key: the
//!    secret key) and `useCompression`; the other end goes to the worker
//!    of the proxy's session, which relays it with a work connection like
//!    any user connection (the proxy's own wrapping, token key, traffic
//!    and limits).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::events::Event;
use proto::msg::{Message, NewVisitorConn, NewVisitorConnResp};
use proto::policy::ProxyType;

use crate::frp::control::Sessions;
use crate::frp::msgio::{self, Wire};
use crate::frp::proxy::{self, Proxy};
use crate::frp::targets::SecretProxy;
use crate::policy::tenants::Limits;
use crate::relay::{self, RelayOpts};
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::bridge;
use crate::transport::conn::Conn;
use crate::transport::handoff::{MovedVisitor, WorkerMsg};

/// A visitor's timestamp may be this far from the server's clock, seconds.
pub const MAX_SKEW: i64 = 15 * 60;

/// Why a visitor is refused: frps's words.
fn check(ctx: &WorkerCtx, v: &NewVisitorConn, now: i64) -> Result<SecretProxy, String> {
    let name = &v.proxy_name;
    // An xtcp proxy's visitors come through the broker, not here.
    let found = ctx
        .shared
        .visitors
        .get(name)
        .filter(|p| p.kind != ProxyType::Xtcp);
    let Some(target) = found else {
        return Err(format!("custom listener for [{name}] doesn't exist"));
    };
    // An empty run_id is a pre-0.50 visitor: user "" (frps tolerates it).
    let user = if v.run_id.is_empty() {
        String::new()
    } else {
        match ctx.shared.directory.session_user(&v.run_id) {
            Some(u) => u,
            None => return Err(format!("no client control found for run id [{}]", v.run_id)),
        }
    };
    if !proto::auth::verify_privilege_key(&target.sk, v.timestamp, &v.sign_key) {
        return Err(format!("visitor connection of [{name}] auth failed"));
    }
    if (now - v.timestamp).abs() > MAX_SKEW {
        return Err(format!(
            "visitor connection of [{name}] auth failed: its timestamp is more than {} minutes from the server's clock",
            MAX_SKEW / 60
        ));
    }
    if !target.allow_users.iter().any(|u| u == "*" || *u == user) {
        return Err(format!(
            "visitor connection of [{name}] user [{user}] not allowed"
        ));
    }
    Ok(target)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serve a connection that opened with `NewVisitorConn` (steps 1 to 4);
/// `pending`: what was read past that message.
pub async fn serve(
    ctx: Rc<WorkerCtx>,
    conn: Conn,
    v: NewVisitorConn,
    wire: Wire,
    pending: Vec<u8>,
    peer: SocketAddr,
) {
    let stats = ctx.stats();
    let audit = |invite, reason: &str| {
        ctx.events.emit(Event::Visitor {
            run_id: v.run_id.clone(),
            invite,
            proxy: v.proxy_name.clone(),
            peer: peer.to_string(),
            reason: reason.to_string(),
        })
    };
    let target = match check(&ctx, &v, now_secs()) {
        Ok(t) => t,
        Err(reason) => {
            WorkerStats::bump(&stats.visitors_refused, 1);
            tracing::warn!(%peer, proxy_name = %v.proxy_name, %reason, "visitor connection refused");
            let invite = ctx
                .shared
                .visitors
                .get(&v.proxy_name)
                .and_then(|p| p.invite);
            audit(invite, &reason);
            let error = if ctx.shared.config.detailed_errors_to_client {
                reason
            } else {
                "register visitor conn error".into()
            };
            let resp = Message::NewVisitorConnResp(NewVisitorConnResp {
                proxy_name: v.proxy_name,
                error,
            });
            return msgio::refuse(conn, &resp, wire).await;
        }
    };
    if !pending.is_empty() {
        // frpc waits for the answer before it sends a byte.
        tracing::warn!(%peer, proxy_name = %v.proxy_name, "visitor sent data before NewVisitorConnResp; closing it");
        return;
    }
    let mut conn = conn;
    let resp = Message::NewVisitorConnResp(NewVisitorConnResp {
        proxy_name: v.proxy_name.clone(),
        error: String::new(),
    });
    if conn.write_all(msgio::encode(&resp, wire)).await.0.is_err() {
        return;
    }
    WorkerStats::bump(&stats.visitors, 1);
    audit(target.invite, "");
    let across_workers = target.worker != ctx.id;
    tracing::info!(%peer, proxy_name = %v.proxy_name, kind = target.kind.name(), across_workers, "visitor connected");
    let (near, far) = bridge::pair();
    let moved = MovedVisitor {
        proxy: v.proxy_name.clone(),
        control_id: target.control_id,
        end: far,
        peer,
    };
    if ctx.shared.inboxes[target.worker]
        .send(WorkerMsg::Visitor(Box::new(moved)))
        .is_err()
    {
        return;
    }
    let opts = RelayOpts {
        encryption_key: v
            .use_encryption
            .then(|| proto::cfb::derive_key(target.sk.as_bytes())),
        compression: v.use_compression,
        buffer: ctx.shared.config.fastpath.relay_buffer,
        splice: false,
        splice_local: false,
    };
    // The visitor's leg: its bytes are the proxy's traffic, counted once,
    // on the proxy's side; this leg's counters are its own.
    let leg = WorkerStats::default();
    let cells = Default::default();
    let ends = relay::Ends {
        user: Conn::Bridge(near),
        work: conn,
        pending: Vec::new(),
    };
    relay::run(&leg, ends, opts, &cells, &Limits::default(), None).await;
}

/// On the proxy's worker: relay a visitor's bridge end with a work
/// connection of the proxy, as a user connection.
pub fn adopt(sessions: &Sessions, moved: MovedVisitor) {
    let MovedVisitor {
        proxy,
        control_id,
        end,
        peer,
    } = moved;
    let found: Option<(Rc<Proxy>, _)> = sessions
        .by_id(control_id)
        .and_then(|c| c.proxy(&proxy).map(|p| (p, c)));
    match found {
        Some((p, control)) => {
            monoio::spawn(proxy::serve_user(
                p,
                control,
                Conn::Bridge(end),
                peer,
                Vec::new(),
            ));
        }
        None => {
            // The proxy closed on the way: the visitor's leg ends.
            end.aborter().abort();
            tracing::debug!(%peer, proxy_name = %proxy, "visitor's proxy is gone");
        }
    }
}
