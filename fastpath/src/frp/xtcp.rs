//! xtcp: the server only introduces the two frpc, which then punch a
//! direct path between them; the decisions are [`proto::nathole`]'s, this
//! is their I/O, as frps does it:
//!
//! 1. The visitor's frpc sends `NatHoleVisitor` on its control. With
//!    `pre_check` it only learns whether the proxy exists and admits it
//!    ("xtcp server for \[X\] doesn't exist", "xtcp visitor user \[U\] not
//!    allowed for \[X\]"). Otherwise, its signature checked ("xtcp
//!    connection of \[X\] auth failed"), the attempt gets a sid and waits.
//! 2. The owner's session, on its worker, hands the sid to frpc on a work
//!    connection (StartWorkConn, then `NatHoleSid`, then close).
//! 3. The owner's frpc sends `NatHoleClient` with the sid and its own
//!    mapped addresses; both sides get a `NatHoleResp` (the sender's a
//!    second late, so that the receiver is listening first). No answer
//!    from the owner within [`WAIT`]: the attempt is dropped.
//! 4. `NatHoleReport` says whether it worked, which the scores learn.
//!
//! The attempts live in [`XtcpBroker`](crate::frp::targets::XtcpBroker),
//! shared by the workers; what a session must send goes to its worker's
//! inbox. Two choices of ours: the visitor's user is checked against
//! `allowUsers` on every attempt (frps only in the pre-check), and a
//! `NatHoleClient` counts only from the session that owns the proxy.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::msg::{Message, NatHoleClient, NatHoleReport, NatHoleResp, NatHoleVisitor};
use proto::nathole::refusal;
use proto::policy::ProxyType;

use crate::frp::targets::{SecretProxy, XtcpPending};
use crate::runtime::ctx::WorkerCtx;
use crate::transport::handoff::WorkerMsg;

/// How long an attempt waits for the owner's NatHoleClient (frps: 10 s).
pub const WAIT: Duration = Duration::from_secs(10);

/// Attempts waiting at once, all proxies together; more are refused.
const MAX_PENDING: usize = 4096;

/// Where a control lives: its worker and its id there.
pub type At = (usize, u64);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The xtcp proxy of this name, if one is registered.
fn find(ctx: &WorkerCtx, name: &str) -> Option<SecretProxy> {
    ctx.shared
        .visitors
        .get(name)
        .filter(|p| p.kind == ProxyType::Xtcp)
}

/// Send `msg` on the control at `at`, after `delay`.
fn send_to(ctx: &WorkerCtx, at: At, msg: Message, delay: Duration) {
    let m = WorkerMsg::ControlMsg {
        control_id: at.1,
        msg: Box::new(msg),
        delay_ms: delay.as_millis() as u64,
    };
    if ctx.shared.inboxes[at.0].send(m).is_err() {
        tracing::debug!("xtcp: the worker of a session is gone");
    }
}

/// Step 1: a `NatHoleVisitor` from the session at `me`, whose Login user
/// is `user`; `reply` answers on its control.
pub fn on_visitor(ctx: &WorkerCtx, me: At, user: &str, m: NatHoleVisitor, reply: &dyn Fn(Message)) {
    let name = m.proxy_name.clone();
    let answer = |error: String| {
        tracing::info!(proxy_name = %name, user, %error, "xtcp visitor refused");
        reply(Message::NatHoleResp(refusal(&m.transaction_id, &error)));
    };
    let Some(target) = find(ctx, &name) else {
        return answer(format!("xtcp server for [{name}] doesn't exist"));
    };
    if !target.allow_users.iter().any(|u| u == "*" || u == user) {
        return answer(format!(
            "xtcp visitor user [{user}] not allowed for [{name}]"
        ));
    }
    if m.pre_check {
        reply(Message::NatHoleResp(refusal(&m.transaction_id, "")));
        return;
    }
    if !proto::auth::verify_privilege_key(&target.sk, m.timestamp, &m.sign_key) {
        return answer(format!("xtcp connection of [{name}] auth failed"));
    }
    let sid = format!("{}{}", now_secs(), proto::auth::new_run_id());
    let now = Instant::now();
    {
        let mut pending = ctx.shared.xtcp.pending.lock();
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_PENDING {
            drop(pending);
            return answer("too many xtcp attempts in progress; try again".into());
        }
        pending.insert(
            sid.clone(),
            XtcpPending {
                visitor: m,
                visitor_at: me,
                owner_at: (target.worker, target.control_id),
                expires: now + WAIT,
            },
        );
    }
    tracing::debug!(proxy_name = %name, %sid, "xtcp attempt waits for the owner");
    let handoff = WorkerMsg::XtcpSid {
        control_id: target.control_id,
        proxy: name,
        sid,
    };
    if ctx.shared.inboxes[target.worker].send(handoff).is_err() {
        tracing::debug!("xtcp: the owner's worker is gone");
    }
}

/// Step 3: a `NatHoleClient` from the session at `me`.
pub fn on_client(ctx: &WorkerCtx, me: At, m: NatHoleClient) {
    let now = Instant::now();
    let pending = {
        let mut all = ctx.shared.xtcp.pending.lock();
        match all.get(&m.sid) {
            Some(p) if p.owner_at == me && p.expires > now => all.remove(&m.sid),
            _ => None,
        }
    };
    let Some(p) = pending else {
        tracing::debug!(sid = %m.sid, "NatHoleClient for no attempt of this session; ignored");
        return;
    };
    let decided = ctx
        .shared
        .xtcp
        .analyzer
        .lock()
        .decide(&m.sid, &p.visitor, &m, now_secs());
    let (v, c) = match decided {
        Ok((v, c, attempt)) => {
            let keep = Duration::from_millis(c.detect_behavior.read_timeout_ms.max(0) as u64)
                + Duration::from_secs(30);
            let mut d = ctx.shared.xtcp.decided.lock();
            d.retain(|_, (_, until)| *until > now);
            if d.len() < MAX_PENDING {
                d.insert(m.sid.clone(), (attempt, now + keep));
            }
            (v, c)
        }
        Err(e) => {
            tracing::info!(sid = %m.sid, proxy_name = %m.proxy_name, error = %e, "xtcp attempt cannot be decided");
            (
                refusal(&p.visitor.transaction_id, &e),
                refusal(&m.transaction_id, &e),
            )
        }
    };
    tracing::info!(sid = %m.sid, proxy_name = %m.proxy_name, mode = v.detect_behavior.mode,
        visitor = %v.detect_behavior.role, owner = %c.detect_behavior.role, "xtcp attempt decided");
    // A sender hears a second later, once the receiver listens.
    let delay = |r: &NatHoleResp| {
        if r.detect_behavior.role == "sender" {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        }
    };
    let (dv, dc) = (delay(&v), delay(&c));
    send_to(ctx, p.visitor_at, Message::NatHoleResp(v), dv);
    send_to(ctx, me, Message::NatHoleResp(c), dc);
}

/// Step 4: a `NatHoleReport`.
pub fn on_report(ctx: &WorkerCtx, m: NatHoleReport) {
    tracing::info!(sid = %m.sid, success = m.success, "xtcp attempt reported");
    if !m.success {
        return;
    }
    // A sid's success counts once.
    let attempt = ctx
        .shared
        .xtcp
        .decided
        .lock()
        .remove(&m.sid)
        .map(|(a, _)| a);
    if let Some(a) = attempt {
        ctx.shared
            .xtcp
            .analyzer
            .lock()
            .report_success(&a, now_secs());
    }
}
