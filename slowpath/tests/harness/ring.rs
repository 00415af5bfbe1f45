//! A producer-side event ring in a file, made the way a fastpath worker
//! makes one, for tests that feed the slowpath's event drain.

use proto::events::{Event, EventRecord};
use shm::{InstanceDir, MappedRing};

/// The timestamp [`Producer::push`] gives its records.
pub const TEST_TS_MS: u64 = 1_700_000_000_000;

/// A ring file the test writes as worker 0 would.
pub struct Producer {
    key: proto::shm_auth::InstanceKey,
    /// The ring itself (for its header fields).
    pub ring: MappedRing,
}

impl Producer {
    /// Creates (or replaces) the ring file at `path`, in an instance
    /// directory whose key it signs its records with (made if missing).
    pub fn create(path: &std::path::Path) -> Producer {
        let instance = InstanceDir::open(path.parent().unwrap()).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let len = proto::ring::RING_HEADER + 64 * 1024;
        let ring = MappedRing::create(&instance.dir, name, len).unwrap();
        Producer {
            key: instance.key,
            ring,
        }
    }

    /// Pushes `event` stamped [`TEST_TS_MS`].
    pub fn push(&self, event: Event) {
        self.push_at(event, TEST_TS_MS);
    }

    /// Pushes `event` stamped `ts_ms`.
    pub fn push_at(&self, event: Event, ts_ms: u64) {
        let rec = EventRecord {
            ts_ms,
            worker: 0,
            event,
        };
        let mut bytes = rec.to_bytes();
        self.key.seal_record(&mut bytes);
        assert!(self.ring.push(&bytes));
    }

    /// Pushes `event` without the instance tag, as a forger would.
    pub fn push_unsealed(&self, event: Event) {
        let rec = EventRecord {
            ts_ms: TEST_TS_MS,
            worker: 0,
            event,
        };
        assert!(self.ring.push(&rec.to_bytes()));
    }
}
