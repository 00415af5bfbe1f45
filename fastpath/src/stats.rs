//! Per-worker counters. Each worker writes only its own slot (relaxed
//! atomics, no sharing of cache lines between workers); anyone may read all
//! of them, e.g. an exporter or a test.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Counters owned by one worker.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Live frpc sessions (controls) owned by this worker.
    pub sessions: AtomicI64,
    /// Live proxies registered on this worker.
    pub proxies: AtomicI64,
    /// Live user connections being relayed.
    pub conns: AtomicI64,
    /// Total user connections accepted.
    pub conns_total: AtomicU64,
    /// Bytes from users towards frpc.
    pub bytes_in: AtomicU64,
    /// Bytes from frpc towards users.
    pub bytes_out: AtomicU64,
    /// Connections handed to this worker from another one.
    pub handoffs_in: AtomicU64,
    /// Connections this worker handed to another one.
    pub handoffs_out: AtomicU64,
    /// Connections closed because of malformed input.
    pub protocol_errors: AtomicU64,
    /// Work connections refused because they did not come the way their
    /// session's frpc sends them (another yamux session's stream, or a
    /// separate connection for a session on yamux): hijack attempts.
    pub foreign_work_conns: AtomicU64,
}

impl WorkerStats {
    /// Add to a gauge or counter.
    #[inline]
    pub fn add(c: &AtomicI64, n: i64) {
        c.fetch_add(n, Relaxed);
    }

    /// Add to a monotonic counter.
    #[inline]
    pub fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// A point-in-time copy for reporting.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sessions: self.sessions.load(Relaxed),
            proxies: self.proxies.load(Relaxed),
            conns: self.conns.load(Relaxed),
            conns_total: self.conns_total.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            handoffs_in: self.handoffs_in.load(Relaxed),
            handoffs_out: self.handoffs_out.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            foreign_work_conns: self.foreign_work_conns.load(Relaxed),
        }
    }
}

/// Plain values read from a [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub sessions: i64,
    pub proxies: i64,
    pub conns: i64,
    pub conns_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub handoffs_in: u64,
    pub handoffs_out: u64,
    pub protocol_errors: u64,
    pub foreign_work_conns: u64,
}
