//! What every task on a worker may reach: the worker's id, the state all
//! workers share, its event sink and counters. A leaf: it knows nothing of
//! sessions, proxies or the worker loop, so every part of the server can
//! take it without an import circle. The sessions a worker owns are the frp
//! server's ([`Sessions`](crate::frp::control::Sessions)).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::events::EventSink;
use crate::report::stats::WorkerStats;
use crate::report::timings::WorkerTimings;
use crate::runtime::shared::Shared;
use crate::transport::conn::Aborter;
use crate::transport::mux::MuxBudget;
use crate::transport::preauth::{Limits, PreAuth, Ticket};

/// How long a new connection may take to say who it is, from accept to its
/// first message read (frps: 10 s); for a yamux session, until a Login on
/// it succeeds.
pub const IDENTIFY_DEADLINE: Duration = Duration::from_secs(10);

/// Received data a yamux session may hold before its Login succeeds: a
/// Login (and a v2 hello) is a few KiB.
pub const PRE_AUTH_HELD: u64 = 128 * 1024;

/// Per-worker context, shared by all tasks on the worker.
pub struct WorkerCtx {
    /// This worker's index.
    pub id: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Where this worker reports events for the slowpath.
    pub events: EventSink,
    /// The gate unidentified connections pass (per-source and per-worker
    /// caps, new-connection rate).
    pub preauth: Rc<PreAuth>,
    /// Memory limits of this worker's yamux sessions.
    pub mux: Rc<MuxBudget>,
    /// This worker's latency histograms.
    pub timings: WorkerTimings,
    next_control: Cell<u64>,
    /// Relays this worker runs for other workers' sessions, by key: what
    /// ends them when their owner asks ([`crate::frp::spread`]).
    pub relays_in: RefCell<HashMap<u64, [Aborter; 2]>>,
    /// Relays of this worker's sessions that run elsewhere, by key: what
    /// to do here when one ends (untrack it from its proxy, report).
    pub relays_out: RefCell<HashMap<u64, Box<dyn FnOnce()>>>,
    next_relay_key: Cell<u64>,
}

impl WorkerCtx {
    /// The context of worker `id`.
    pub fn new(id: usize, shared: Arc<Shared>, events: EventSink) -> WorkerCtx {
        let fp = &shared.config.fastpath;
        let preauth = PreAuth::new(Limits::share(
            fp.pre_auth_per_source,
            fp.pre_auth_per_worker,
            fp.pre_auth_rate,
            shared.workers(),
        ));
        let mux = MuxBudget::new(
            fp.session_budget,
            PRE_AUTH_HELD,
            fp.worker_budget,
            Duration::from_secs(fp.write_stall_secs),
            IDENTIFY_DEADLINE,
            shared.stats[id].mux.clone(),
        );
        let timings = shared.timings.for_worker(id);
        WorkerCtx {
            id,
            shared,
            events,
            preauth,
            mux,
            timings,
            next_control: Cell::new(0),
            relays_in: RefCell::default(),
            relays_out: RefCell::default(),
            next_relay_key: Cell::new(0),
        }
    }

    /// A key for a relay handed to another worker, unique in the process
    /// (this worker's id in the top 16 bits).
    pub fn relay_key(&self) -> u64 {
        let n = self.next_relay_key.get();
        self.next_relay_key.set(n + 1);
        ((self.id as u64) << 48) | (n & ((1 << 48) - 1))
    }

    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.id]
    }

    /// A process-unique control id: worker id in the top bits.
    pub fn next_control_id(&self) -> u64 {
        let n = self.next_control.get() + 1;
        self.next_control.set(n);
        ((self.id as u64) << 48) | n
    }

    /// A new connection from `peer` through the pre-auth gate: its place
    /// (held until it identifies) and the time it was let in; None when
    /// the gate refused it (counted and logged; the caller drops the
    /// connection).
    pub fn admit(&self, peer: SocketAddr) -> Option<(Ticket, Instant)> {
        let now = Instant::now();
        match self.preauth.enter(peer.ip(), now) {
            Ok(t) => Some((t, now)),
            Err(why) => {
                WorkerStats::bump(&self.stats().preauth_refused, 1);
                tracing::debug!(%peer, limit = why.key(), "connection refused before identification");
                if let Some(n) = self.preauth.note_refusal(now) {
                    tracing::warn!(worker = self.id, %peer, limit = why.key(), refused = n,
                        "refusing connections that have not identified: over a pre-auth limit");
                }
                None
            }
        }
    }

    /// `step` of an unidentified connection, given `limit`; past it, the
    /// connection counts as an identify timeout and the error says `what`
    /// (rounded up to whole seconds).
    pub async fn within<T>(
        &self,
        limit: Duration,
        what: &str,
        step: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        match monoio::time::timeout(limit, step).await {
            Ok(r) => r,
            Err(_) => {
                WorkerStats::bump(&self.stats().identify_timeouts, 1);
                let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
                Err(format!("{what} within {secs} s"))
            }
        }
    }
}
