//! What every task on a worker may reach: the worker's id, the state all
//! workers share, its event sink and counters. A leaf: it knows nothing of
//! sessions, proxies or the worker loop, so every part of the server can
//! take it without an import circle. The sessions a worker owns are the frp
//! server's ([`Sessions`](crate::frp::control::Sessions)).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::report::events::EventSink;
use crate::report::stats::WorkerStats;
use crate::runtime::shared::Shared;
use crate::transport::mux::MuxBudget;
use crate::transport::preauth::{Limits, PreAuth};

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
    next_control: Cell<u64>,
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
        WorkerCtx {
            id,
            shared,
            events,
            preauth,
            mux,
            next_control: Cell::new(0),
        }
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
}
