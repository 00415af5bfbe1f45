//! The node agent's event shipping: one thread takes what the fastpath's
//! rings hold into the disk spool ([`super::spool`]) and gives the rings
//! their space back once it is there; another sends the spool's batches to
//! the control plane (`POST /api/v1/nodes/events`, node key), oldest
//! first, and removes them once it answers that they are written.
//!
//! While no control plane answers, batches wait in the spool (up to its
//! budget, then the oldest are dropped and counted), and the rings keep
//! draining into it. A batch the control plane refuses as malformed is set
//! aside, not retried forever; the others go on.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use proto::events::EventRecord;
use shm::InstanceDir;

use super::spool::Spool;
use crate::telemetry::events_drain::RingReader;

/// How often the rings are read.
const TICK: Duration = Duration::from_millis(200);
/// Records taken from one ring per pass.
const MAX_PER_RING: usize = 8192;
/// Record bytes taken in one pass (one batch file): well inside one
/// request to the control plane, which takes 8 MiB.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The most bytes of batches in one request (the control plane takes 8 MiB).
const MAX_BODY: usize = 4 << 20;

/// The spool, shared by the two threads, and how the reader wakes the
/// sender.
pub struct Shared {
    /// The spool.
    pub spool: Mutex<Spool>,
    wake: Condvar,
}

impl Shared {
    /// Shares `spool`.
    pub fn new(spool: Spool) -> Arc<Shared> {
        Arc::new(Shared {
            spool: Mutex::new(spool),
            wake: Condvar::new(),
        })
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the rings into the spool; forever.
pub fn read_rings(shm: Arc<InstanceDir>, shared: Arc<Shared>, cursors: Vec<super::Cursor>) {
    let mut reader = RingReader::new(shm);
    let mut restored = false;
    // Records read but not yet in the spool (its write failed): written
    // again before anything new is read, as the local drain does.
    let mut unwritten: Vec<EventRecord> = Vec::new();
    let mut failing = false;
    loop {
        std::thread::sleep(TICK);
        reader.rescan();
        if !restored {
            restored = true;
            let n = reader.restore(&cursors);
            if n > 0 {
                tracing::info!(
                    rings = n,
                    "reading on where the spool's newest batch left the rings"
                );
            }
        }
        let take = unwritten.is_empty();
        let pass = reader.pass(take, MAX_PER_RING, MAX_BATCH_BYTES, &mut unwritten);
        if pass.unauthenticated + pass.undecodable > 0 {
            tracing::warn!(
                unauthenticated = pass.unauthenticated,
                undecodable = pass.undecodable,
                "event records refused"
            );
        }
        if unwritten.is_empty() {
            continue;
        }
        let appended = shared.spool().append(&unwritten, &reader.cursors());
        match appended {
            Ok(seq) => {
                tracing::debug!(seq, records = unwritten.len(), "event batch spooled");
                unwritten.clear();
                reader.release();
                shared.wake.notify_one();
                if failing {
                    tracing::info!("the event spool takes batches again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, records = unwritten.len(),
                        "cannot write to the event spool; the rings keep the records meanwhile");
                    failing = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Sends the spool's batches to the control planes in turn as they fail;
/// forever.
pub fn send(controls: Vec<String>, node_key: String, http: ureq::Agent, shared: Arc<Shared>) {
    let mut at = 0;
    let mut backoff = Duration::from_millis(500);
    let mut refused_said = false;
    // After a malformed refusal, batches go one at a time to find which.
    let mut one_at_a_time = false;
    loop {
        let taken = {
            let mut spool = shared.spool();
            let max = if one_at_a_time { 1 } else { MAX_BODY };
            match spool.take_unacked(max) {
                Some(t) => Some(t),
                None => {
                    let _ = shared
                        .wake
                        .wait_timeout(spool, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner());
                    None
                }
            }
        };
        let Some((last, body)) = taken else {
            continue;
        };
        let url = format!("{}/api/v1/nodes/events", controls[at]);
        let sent = http
            .post(&url)
            .set("Authorization", &format!("Bearer {node_key}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&body);
        match sent {
            Ok(resp) => {
                let acked = resp
                    .into_json::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v["acked_seq"].as_u64())
                    .unwrap_or(last);
                shared.spool().acked(acked.min(last));
                tracing::debug!(seq = last, "event batches written by the control plane");
                backoff = Duration::from_millis(500);
                refused_said = false;
                one_at_a_time = false;
            }
            Err(ureq::Error::Status(s @ (401 | 403), r)) => {
                shared.spool().not_sent();
                if !refused_said {
                    tracing::error!(status = s, reason = %r.into_string().unwrap_or_default(),
                        "the control plane refuses this node key; events stay in the spool");
                    refused_said = true;
                }
                std::thread::sleep(Duration::from_secs(5));
            }
            Err(ureq::Error::Status(s @ (400 | 413), r)) => {
                let why = r.into_string().unwrap_or_default();
                let mut spool = shared.spool();
                spool.not_sent();
                if one_at_a_time {
                    spool.set_aside(
                        last,
                        &format!("the control plane refused it (HTTP {s}): {why}"),
                    );
                } else {
                    tracing::warn!(status = s, reason = %why, "the control plane refused a body of event batches; sending them one at a time");
                    one_at_a_time = true;
                }
            }
            Err(e) => {
                shared.spool().not_sent();
                tracing::warn!(control = %controls[at], error = %e, retry_ms = backoff.as_millis() as u64,
                    "cannot ship events; they stay in the spool");
                if controls.len() > 1 {
                    at = (at + 1) % controls.len();
                    if at != 0 {
                        continue;
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
