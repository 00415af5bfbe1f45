//! A producer-side event ring in a file, made the way a fastpath worker
//! makes one, for tests that feed the slowpath's event drain.

use std::os::fd::AsRawFd as _;

use proto::events::{Event, EventRecord};
use proto::ring::Ring;

/// The timestamp [`Producer::push`] gives its records.
pub const TEST_TS_MS: u64 = 1_700_000_000_000;

/// A ring file the test writes as worker 0 would.
pub struct Producer {
    _file: std::fs::File,
    key: proto::shm_auth::InstanceKey,
    addr: *mut libc::c_void,
    len: usize,
    /// The ring itself (for its header fields).
    pub ring: Ring,
}

impl Producer {
    /// Creates (or replaces) the ring file at `path`, in an instance
    /// directory whose key it signs its records with (made if missing).
    pub fn create(path: &std::path::Path) -> Producer {
        use std::os::unix::fs::OpenOptionsExt as _;
        let key = fastpath::shm::InstanceDir::open(path.parent().unwrap())
            .unwrap()
            .key;
        let len = proto::ring::RING_HEADER + 64 * 1024;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        file.set_len(len as u64).unwrap();
        // SAFETY: a fresh shared mapping of a file of `len` bytes.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the mapping outlives the ring (both dropped together).
        let ring = unsafe { Ring::create(addr.cast(), len) }.unwrap();
        Producer {
            _file: file,
            key,
            addr,
            len,
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

impl Drop for Producer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}
