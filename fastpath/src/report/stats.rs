//! Per-worker counters. Each worker writes only its own slot (relaxed
//! atomics, no sharing of cache lines between workers); anyone may read all
//! of them, e.g. an exporter or a test.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// What one worker's yamux sessions hold, written by the worker's
/// [`MuxBudget`](crate::transport::mux::MuxBudget).
#[derive(Debug, Default)]
pub struct MuxGauges {
    /// Received bytes not yet taken by their streams, all sessions.
    pub held: AtomicU64,
    /// Window above the initial 256 KiB per stream, all sessions.
    pub extra_window: AtomicU64,
    /// Times a session stopped being read because of its budget.
    pub holds: AtomicU64,
    /// Sessions closed for reading nothing of what was queued for them.
    pub write_stalls: AtomicU64,
    /// Streams reset because their reader took nothing while their session
    /// was over budget.
    pub stalled_resets: AtomicU64,
}

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
    /// TLS 1.3 handshakes after which this worker protects the records
    /// itself (proto::tls13).
    pub tls13_sessions: AtomicU64,
    /// TLS handshakes whose records stay with rustls (TLS 1.2).
    pub tls_rustls_sessions: AtomicU64,
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
    /// yamux streams answered with RST: over `fastpath.preAuthStreams`
    /// before a Login succeeded on their session, or over the backlog or
    /// stream cap after.
    pub mux_streams_refused: AtomicU64,
    /// Connections closed at accept: over `fastpath.preAuthPerSource`,
    /// `fastpath.preAuthPerWorker` or `fastpath.preAuthRate`.
    pub preauth_refused: AtomicU64,
    /// Connections (and yamux sessions) closed for not identifying within
    /// 10 s of being accepted.
    pub identify_timeouts: AtomicU64,
    /// Controls closed because the peer read nothing of what was queued
    /// for it for `fastpath.writeStallSecs` (yamux sessions closed so are
    /// in [`MuxGauges::write_stalls`]; the snapshot adds both).
    pub write_stalls: AtomicU64,
    /// User connections closed because their session already had
    /// `fastpath.pendingUserConns` waiting for a work connection.
    pub pending_refused: AtomicU64,
    /// Connections on a vhost port closed without a route: no TLS
    /// ClientHello, no server name, or a name no proxy serves.
    pub vhost_unrouted: AtomicU64,
    /// Vhost connections this worker took over from another (also in
    /// `handoffs_in`).
    pub vhost_handoffs: AtomicU64,
    /// TLS handshakes the edge completed on `vhostHTTPSPort`.
    pub edge_tls_handshakes: AtomicU64,
    /// Requests the edge sent to an address origin.
    pub edge_origin_requests: AtomicU64,
    /// Requests for an edge route whose origin was down (502).
    pub edge_origin_down: AtomicU64,
    /// ACME HTTP-01 challenges answered.
    pub acme_answers: AtomicU64,
    /// STUN Binding requests answered with the client's address.
    pub stun_answers: AtomicU64,
    /// STUN requests answered with an error (420: an attribute not
    /// understood, or CHANGE-REQUEST without a second address).
    pub stun_errors: AtomicU64,
    /// Datagrams on the STUN port that were not answered (malformed, not
    /// a request, not Binding).
    pub stun_dropped: AtomicU64,
    /// Datagrams `udp` proxies received from their users and queued for
    /// frpc.
    pub udp_datagrams_in: AtomicU64,
    /// Datagrams frpc sent back that `udp` proxies sent to their users.
    pub udp_datagrams_out: AtomicU64,
    /// Datagrams a `udp` proxy dropped: its queue for frpc was full
    /// (`fastpath.udpQueue`), the kernel dropped them at the proxy's socket
    /// (its buffer full: the queue was, or the worker was busy), or frpc's
    /// answer named no user address.
    pub udp_dropped: AtomicU64,
    /// Visitor connections joined to their secret proxy (`stcp`, `sudp`).
    pub visitors: AtomicU64,
    /// Visitor connections refused (no such proxy, a bad signature or
    /// timestamp, a user not allowed).
    pub visitors_refused: AtomicU64,
    /// Mesh nodes connected to this worker's relay now.
    pub mesh_nodes: AtomicI64,
    /// Mesh connections refused at authentication (ERROR 1001-1006).
    pub mesh_refused: AtomicU64,
    /// Mesh connections (nodes' and other relays') that came over TLS.
    pub mesh_tls: AtomicU64,
    /// DATA frames read from mesh nodes.
    pub mesh_frames_in: AtomicU64,
    /// DATA frames queued to their destination node.
    pub mesh_frames_out: AtomicU64,
    /// Bytes of those frames (seed frame headers included).
    pub mesh_bytes: AtomicU64,
    /// DATA frames dropped because the destination's outbox was full.
    pub mesh_dropped: AtomicU64,
    /// DATA frames for a node not connected here (answered 3001/3002).
    pub mesh_unroutable: AtomicU64,
    /// Relay-to-relay links (`/ws/mesh`) held by this worker now.
    pub mesh_links: AtomicI64,
    /// DATA frames sent to other relays over links.
    pub mesh_link_frames_out: AtomicU64,
    /// DATA frames received from other relays over links.
    pub mesh_link_frames_in: AtomicU64,
    /// Batches of mesh frames handed to another worker (a node's frames
    /// for a link served there, or a link's frames for a node there).
    pub mesh_crossings: AtomicU64,
    /// What this worker's yamux sessions hold.
    pub mux: Arc<MuxGauges>,
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
            tls13_sessions: self.tls13_sessions.load(Relaxed),
            tls_rustls_sessions: self.tls_rustls_sessions.load(Relaxed),
            handoffs_in: self.handoffs_in.load(Relaxed),
            handoffs_out: self.handoffs_out.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            foreign_work_conns: self.foreign_work_conns.load(Relaxed),
            mux_streams_refused: self.mux_streams_refused.load(Relaxed),
            preauth_refused: self.preauth_refused.load(Relaxed),
            identify_timeouts: self.identify_timeouts.load(Relaxed),
            write_stalls: self.write_stalls.load(Relaxed) + self.mux.write_stalls.load(Relaxed),
            pending_refused: self.pending_refused.load(Relaxed),
            vhost_unrouted: self.vhost_unrouted.load(Relaxed),
            vhost_handoffs: self.vhost_handoffs.load(Relaxed),
            edge_tls_handshakes: self.edge_tls_handshakes.load(Relaxed),
            edge_origin_requests: self.edge_origin_requests.load(Relaxed),
            edge_origin_down: self.edge_origin_down.load(Relaxed),
            acme_answers: self.acme_answers.load(Relaxed),
            stun_answers: self.stun_answers.load(Relaxed),
            stun_errors: self.stun_errors.load(Relaxed),
            stun_dropped: self.stun_dropped.load(Relaxed),
            udp_datagrams_in: self.udp_datagrams_in.load(Relaxed),
            udp_datagrams_out: self.udp_datagrams_out.load(Relaxed),
            udp_dropped: self.udp_dropped.load(Relaxed),
            visitors: self.visitors.load(Relaxed),
            visitors_refused: self.visitors_refused.load(Relaxed),
            mesh_nodes: self.mesh_nodes.load(Relaxed),
            mesh_refused: self.mesh_refused.load(Relaxed),
            mesh_tls: self.mesh_tls.load(Relaxed),
            mesh_frames_in: self.mesh_frames_in.load(Relaxed),
            mesh_frames_out: self.mesh_frames_out.load(Relaxed),
            mesh_bytes: self.mesh_bytes.load(Relaxed),
            mesh_dropped: self.mesh_dropped.load(Relaxed),
            mesh_unroutable: self.mesh_unroutable.load(Relaxed),
            mesh_links: self.mesh_links.load(Relaxed),
            mesh_link_frames_out: self.mesh_link_frames_out.load(Relaxed),
            mesh_link_frames_in: self.mesh_link_frames_in.load(Relaxed),
            mesh_crossings: self.mesh_crossings.load(Relaxed),
            mux_held: self.mux.held.load(Relaxed),
            mux_extra_window: self.mux.extra_window.load(Relaxed),
            mux_holds: self.mux.holds.load(Relaxed),
            mux_stalled_resets: self.mux.stalled_resets.load(Relaxed),
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
    pub tls13_sessions: u64,
    pub tls_rustls_sessions: u64,
    pub handoffs_in: u64,
    pub handoffs_out: u64,
    pub protocol_errors: u64,
    pub foreign_work_conns: u64,
    /// See [`WorkerStats::mux_streams_refused`].
    pub mux_streams_refused: u64,
    /// See [`WorkerStats::preauth_refused`].
    pub preauth_refused: u64,
    /// See [`WorkerStats::identify_timeouts`].
    pub identify_timeouts: u64,
    /// See [`WorkerStats::write_stalls`].
    pub write_stalls: u64,
    /// See [`WorkerStats::pending_refused`].
    pub pending_refused: u64,
    /// See [`WorkerStats::vhost_unrouted`].
    pub vhost_unrouted: u64,
    /// See [`WorkerStats::vhost_handoffs`].
    pub vhost_handoffs: u64,
    /// See [`WorkerStats::edge_tls_handshakes`].
    pub edge_tls_handshakes: u64,
    /// See [`WorkerStats::edge_origin_requests`].
    pub edge_origin_requests: u64,
    /// See [`WorkerStats::edge_origin_down`].
    pub edge_origin_down: u64,
    /// See [`WorkerStats::acme_answers`].
    pub acme_answers: u64,
    /// See [`WorkerStats::stun_answers`].
    pub stun_answers: u64,
    /// See [`WorkerStats::stun_errors`].
    pub stun_errors: u64,
    /// See [`WorkerStats::stun_dropped`].
    pub stun_dropped: u64,
    /// See [`WorkerStats::udp_datagrams_in`].
    pub udp_datagrams_in: u64,
    /// See [`WorkerStats::udp_datagrams_out`].
    pub udp_datagrams_out: u64,
    /// See [`WorkerStats::udp_dropped`].
    pub udp_dropped: u64,
    /// See [`WorkerStats::visitors`].
    pub visitors: u64,
    /// See [`WorkerStats::visitors_refused`].
    pub visitors_refused: u64,
    /// See [`WorkerStats::mesh_nodes`].
    pub mesh_nodes: i64,
    /// See [`WorkerStats::mesh_refused`].
    pub mesh_refused: u64,
    /// See [`WorkerStats::mesh_tls`].
    pub mesh_tls: u64,
    /// See [`WorkerStats::mesh_frames_in`].
    pub mesh_frames_in: u64,
    /// See [`WorkerStats::mesh_frames_out`].
    pub mesh_frames_out: u64,
    /// See [`WorkerStats::mesh_bytes`].
    pub mesh_bytes: u64,
    /// See [`WorkerStats::mesh_dropped`].
    pub mesh_dropped: u64,
    /// See [`WorkerStats::mesh_unroutable`].
    pub mesh_unroutable: u64,
    /// See [`WorkerStats::mesh_links`].
    pub mesh_links: i64,
    /// See [`WorkerStats::mesh_link_frames_out`].
    pub mesh_link_frames_out: u64,
    /// See [`WorkerStats::mesh_link_frames_in`].
    pub mesh_link_frames_in: u64,
    /// See [`WorkerStats::mesh_crossings`].
    pub mesh_crossings: u64,
    /// See [`MuxGauges::held`].
    pub mux_held: u64,
    /// See [`MuxGauges::extra_window`].
    pub mux_extra_window: u64,
    /// See [`MuxGauges::holds`].
    pub mux_holds: u64,
    /// See [`MuxGauges::stalled_resets`].
    pub mux_stalled_resets: u64,
}
