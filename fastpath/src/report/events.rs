//! A worker's event ring: how it tells the slowpath what happened (session
//! and proxy life, refusals with reasons, traffic) without waiting for it.
//!
//! Each record carries a tag under the instance key
//! ([`proto::shm_auth`]), so the slowpath drops anything not written by a
//! fastpath of this instance.
//!
//! Each worker creates `events-<worker>.ring` in the policy directory when
//! it starts (replacing any old file, so a slowpath still mapping the old
//! one keeps a valid mapping and notices the new inode). A full ring drops
//! the event and counts it ([`proto::ring::Ring::push`]); forwarding never
//! waits on the control plane. The ring header also carries the policy
//! generation this worker enforces, which is how the slowpath measures
//! propagation.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::events::{Event, EventRecord};
use proto::ring::{Ring, RING_HEADER};
use proto::shm_auth::InstanceKey;
use shm::{ring_file, InstanceDir, MappedRing};

/// Current wall-clock time in ms since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One worker's producer side.
pub struct EventSink {
    worker: u16,
    ring: Option<MappedRing>,
    key: Option<InstanceKey>,
    buf: RefCell<Vec<u8>>,
}

impl EventSink {
    /// A sink that discards everything (standalone fastpath).
    pub fn none(worker: usize) -> EventSink {
        EventSink {
            worker: worker as u16,
            ring: None,
            key: None,
            buf: RefCell::new(Vec::new()),
        }
    }

    /// Create worker `id`'s ring of `data_bytes` in `dir`. On failure the
    /// worker runs without events, and says so.
    pub fn create(g: &InstanceDir, id: usize, data_bytes: usize) -> EventSink {
        let name = ring_file(id);
        let path = g.dir.path().join(&name);
        let len = RING_HEADER + data_bytes.next_power_of_two();
        match MappedRing::create(&g.dir, &name, len) {
            Ok(ring) => EventSink {
                worker: id as u16,
                ring: Some(ring),
                key: Some(g.key.clone()),
                buf: RefCell::new(Vec::with_capacity(256)),
            },
            Err(e) => {
                tracing::warn!(worker = id, path = %path.display(), error = %e, "cannot create event ring; events from this worker are lost");
                EventSink::none(id)
            }
        }
    }

    /// Report an event (dropped, and counted in the ring, when it is full).
    pub fn emit(&self, event: Event) {
        let (Some(ring), Some(key)) = (&self.ring, &self.key) else {
            return;
        };
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        EventRecord {
            ts_ms: now_ms(),
            worker: self.worker,
            event,
        }
        .encode(&mut buf);
        key.seal_record(&mut buf);
        ring.push(&buf);
    }

    /// Say which policy generation this worker now enforces.
    pub fn set_applied_generation(&self, generation: u64) {
        if let Some(ring) = &self.ring {
            ring.set_applied_generation(generation);
        }
    }

    /// Events dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.ring.as_deref().map_or(0, Ring::dropped)
    }
}
