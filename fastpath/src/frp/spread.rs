//! Spreading one session's relays over the workers.
//!
//! A session lives on one worker, and so do its proxies' listeners and
//! the pool its work connections come to. Left there, every connection of
//! one frpc would be relayed by that worker: one core for a client with
//! many busy transfers, however many the host has (`bench/RESULTS.md`,
//! the 16-core run: 0.20× frps's bulk 8 streams).
//!
//! So once a plain relay is ready (user connection and work connection
//! both plain TCP, no `useEncryption`/`useCompression`, splice allowed), the
//! session's worker may hand both sockets to the worker that relays the
//! fewest connections, in steps:
//!
//! 1. **hand over** ([`hand_over`]): the session's worker detaches both
//!    sockets and sends them with the proxy's byte counters and bandwidth
//!    limits (both shared across threads already) to the other worker's
//!    inbox. The proxy tracks the relay as
//!    [`Tracked::There`](crate::frp::proxy::Tracked::There), so that a
//!    policy close still reaches it, and the session is not idle (an
//!    upgrade does not move it) until the relay ends.
//! 2. **host** ([`host`]): the other worker adopts the sockets and relays
//!    them as its own, counting into the proxy's counters.
//! 3. **done** ([`done`]): the relaying worker tells the owner, which
//!    untracks the relay and reports what the proxy moved after it closed,
//!    as for a relay of its own.
//!
//! Not spread: relays through TLS, yamux or a bridge (their state lives
//! with the session), encrypted or compressed ones, and those of a tenant
//! that samples its traffic every so many bytes (that sample runs on the
//! proxy's worker after each chunk).

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use monoio::net::TcpStream;

use crate::policy::tenants::Limits;
use crate::relay::{self, Ends, RelayOpts};
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::transport::conn::Conn;
use crate::transport::handoff::{detach, MovedRelay, WorkerMsg};

/// What [`hand_over`] did with a relay.
pub enum Handed {
    /// Sent to worker `worker`, where it is known by `key`: track it
    /// ([`crate::frp::proxy::Proxy::track_there`]) and register what to do
    /// when it ends in [`WorkerCtx::relays_out`].
    There { worker: usize, key: u64 },
    /// Not spread: relay it here.
    Here(Ends),
    /// Closed on the way (the process is stopping): nothing to relay.
    Gone,
}

/// Step 1: hand `ends` to a less busy worker, with the proxy's `limits`
/// and byte counters, or give them back to be relayed here. `samples`:
/// the proxy's tenant samples traffic every so many bytes.
pub fn hand_over(
    ctx: &WorkerCtx,
    ends: Ends,
    opts: RelayOpts,
    limits: &Limits,
    bytes: &Arc<[AtomicU64; 2]>,
    samples: bool,
) -> Handed {
    if !ctx.shared.config.fastpath.spread_relays || samples || !relay::is_direct(&ends, &opts) {
        return Handed::Here(ends);
    }
    let Some(to) = least_busy(ctx) else {
        return Handed::Here(ends);
    };
    let (Conn::Tcp(user, _), Conn::Tcp(work, _)) = (ends.user, ends.work) else {
        unreachable!("both ends were just matched as plain TCP");
    };
    let key = ctx.relay_key();
    let moved = MovedRelay {
        user: detach(user),
        work: detach(work),
        pending: ends.pending,
        opts,
        limits: limits.clone(),
        bytes: bytes.clone(),
        owner: ctx.id,
        key,
    };
    // Counted there from now on, so that the next choice sees it.
    WorkerStats::add(&ctx.shared.stats[to].conns, 1);
    if ctx.shared.inboxes[to]
        .send(WorkerMsg::Relay(Box::new(moved)))
        .is_err()
    {
        // Only when that worker has stopped, and so is the process: the
        // connections close (this worker's aborters for them are dead).
        WorkerStats::add(&ctx.shared.stats[to].conns, -1);
        tracing::warn!(
            worker = to,
            "relaying worker is gone; closing the connection"
        );
        return Handed::Gone;
    }
    WorkerStats::bump(&ctx.stats().handoffs_out, 1);
    Handed::There { worker: to, key }
}

/// The worker to relay a new connection on, when not this one: the one
/// relaying the fewest connections, if moving there leaves it with fewer
/// than this worker has with the connection (which it counts already).
fn least_busy(ctx: &WorkerCtx) -> Option<usize> {
    let shared = &ctx.shared;
    if shared.is_stopping() || !shared.is_accepting() {
        return None;
    }
    let load = |w: usize| shared.stats[w].conns.load(Ordering::Relaxed);
    let here = load(ctx.id);
    (0..shared.workers())
        .filter(|&w| w != ctx.id)
        .map(|w| (load(w), w))
        .min()
        .filter(|&(l, _)| l + 1 < here)
        .map(|(_, w)| w)
}

/// Step 2: relay a connection pair another worker handed over, then tell
/// it. A plain function returning the task: the task keeps only what the
/// relay needs (see [`relay::run`]).
pub fn host(ctx: Rc<WorkerCtx>, moved: MovedRelay) -> impl std::future::Future<Output = ()> {
    let MovedRelay {
        user,
        work,
        pending,
        opts,
        limits,
        bytes,
        owner,
        key,
    } = moved;
    WorkerStats::bump(&ctx.stats().handoffs_in, 1);
    let ends = match (TcpStream::from_std(user), TcpStream::from_std(work)) {
        (Ok(u), Ok(w)) => Some(Ends {
            user: Conn::tcp(u),
            work: Conn::tcp(w),
            pending,
        }),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(worker = ctx.id, error = %e, "cannot adopt a handed-over relay");
            None
        }
    };
    async move {
        let stats = ctx.stats();
        if let Some(ends) = ends {
            let aborters = [ends.user.aborter(), ends.work.aborter()];
            ctx.relays_in.borrow_mut().insert(key, aborters);
            relay::run(stats, ends, opts, &bytes, &limits, None).await;
            ctx.relays_in.borrow_mut().remove(&key);
        }
        // Counted here since the owner handed it over.
        WorkerStats::add(&stats.conns, -1);
        let _ = ctx.shared.inboxes[owner].send(WorkerMsg::RelayDone { key });
    }
}

/// Step 3: a relay handed over under `key` has ended.
pub fn done(ctx: &WorkerCtx, key: u64) {
    let on_done = ctx.relays_out.borrow_mut().remove(&key);
    if let Some(f) = on_done {
        f();
    }
}

/// On the relaying worker: end the relay known by `key`, if it still runs.
pub fn abort_here(ctx: &WorkerCtx, key: u64) {
    if let Some(a) = ctx.relays_in.borrow().get(&key) {
        a.iter().for_each(|x| x.abort());
    }
}

/// On a stopping worker: end every relay it runs for another worker.
pub fn abort_all_here(ctx: &WorkerCtx) {
    for a in ctx.relays_in.borrow().values() {
        a.iter().for_each(|x| x.abort());
    }
}

/// On a stopping worker, whose inbox loop has ended: what other workers
/// say about relays, handled until the relays are done (the owners and
/// the relaying workers stop at the same time).
pub fn stopping_mail(ctx: &WorkerCtx, msg: WorkerMsg) {
    match msg {
        WorkerMsg::RelayDone { key } => done(ctx, key),
        WorkerMsg::AbortRelay { key } => abort_here(ctx, key),
        // Too late to relay: its connections close, its owner hears.
        WorkerMsg::Relay(m) => {
            WorkerStats::add(&ctx.stats().conns, -1);
            let _ = ctx.shared.inboxes[m.owner].send(WorkerMsg::RelayDone { key: m.key });
        }
        _ => {}
    }
}
