//! The little state all workers share. Everything here is on a cold path
//! (login, proxy registration, a work connection landing on the wrong
//! worker); nothing here is touched per byte or per chunk.
//!
//! - [`PortTable`]: which public ports are taken, lock-free, unique across
//!   workers.
//! - [`Directory`]: which worker owns which client session (`run_id`) and
//!   which proxy names are in use server-wide.
//! - [`Inbox`]: the per-worker channel other workers use to hand over a file
//!   descriptor or a command.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::Config;
use crate::handoff::WorkerMsg;
use crate::stats::WorkerStats;

/// Lock-free set of taken ports: one bit per port.
pub struct PortTable {
    bits: Vec<AtomicU64>,
}

impl Default for PortTable {
    fn default() -> Self {
        PortTable {
            bits: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PortTable {
    /// Claim `port`; false if someone holds it.
    pub fn claim(&self, port: u16) -> bool {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        self.bits[w].fetch_or(b, Ordering::AcqRel) & b == 0
    }

    /// Give `port` back.
    pub fn release(&self, port: u16) {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        self.bits[w].fetch_and(!b, Ordering::AcqRel);
    }

    /// Whether `port` is held.
    pub fn is_taken(&self, port: u16) -> bool {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        self.bits[w].load(Ordering::Acquire) & b != 0
    }
}

/// Where a client session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRef {
    /// Worker that owns the session.
    pub worker: usize,
    /// Unique id of the control on that worker (distinguishes a replaced
    /// session from its successor with the same run_id).
    pub control_id: u64,
}

/// Server-wide names: sessions by run_id, proxies by name.
#[derive(Default)]
pub struct Directory {
    sessions: Mutex<HashMap<String, SessionRef>>,
    proxies: Mutex<HashSet<String>>,
}

impl Directory {
    /// Register a session; returns the one it replaces, if any.
    pub fn insert_session(&self, run_id: &str, at: SessionRef) -> Option<SessionRef> {
        self.sessions.lock().insert(run_id.to_owned(), at)
    }

    /// Remove a session if it is still the one registered under run_id.
    pub fn remove_session(&self, run_id: &str, at: SessionRef) {
        let mut map = self.sessions.lock();
        if map.get(run_id) == Some(&at) {
            map.remove(run_id);
        }
    }

    /// Where the session with this run_id lives.
    pub fn find_session(&self, run_id: &str) -> Option<SessionRef> {
        self.sessions.lock().get(run_id).copied()
    }

    /// Reserve a proxy name server-wide; false if it exists.
    pub fn claim_proxy(&self, name: &str) -> bool {
        self.proxies.lock().insert(name.to_owned())
    }

    /// Free a proxy name.
    pub fn release_proxy(&self, name: &str) {
        self.proxies.lock().remove(name);
    }
}

/// Sending side of a worker's inbox.
pub type Inbox = flume::Sender<WorkerMsg>;

/// State shared by all workers of one fastpath process.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Derived control-channel key (PBKDF2 of the token), computed once.
    pub token_key: [u8; 16],
    /// Taken public ports.
    pub ports: PortTable,
    /// Sessions and proxy names.
    pub directory: Directory,
    /// One inbox per worker, indexed by worker id.
    pub inboxes: Vec<Inbox>,
    /// One counter block per worker, indexed by worker id.
    pub stats: Vec<WorkerStats>,
    /// Set when the process is shutting down.
    pub stopping: AtomicBool,
    /// The slowpath's policy (or standalone rules).
    pub policy: Arc<crate::policy::Policy>,
    /// TLS server configuration for the bind port.
    pub tls: Arc<rustls::ServerConfig>,
}

impl Shared {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_claimed_once() {
        let t = PortTable::default();
        assert!(t.claim(7000));
        assert!(!t.claim(7000));
        assert!(t.is_taken(7000));
        t.release(7000);
        assert!(!t.is_taken(7000));
        assert!(t.claim(65535));
        assert!(t.claim(0));
    }

    #[test]
    fn replaced_session_is_not_removed_by_its_predecessor() {
        let d = Directory::default();
        let a = SessionRef {
            worker: 0,
            control_id: 1,
        };
        let b = SessionRef {
            worker: 1,
            control_id: 2,
        };
        assert_eq!(d.insert_session("r", a), None);
        assert_eq!(d.insert_session("r", b), Some(a));
        d.remove_session("r", a);
        assert_eq!(d.find_session("r"), Some(b));
        d.remove_session("r", b);
        assert_eq!(d.find_session("r"), None);
    }
}
