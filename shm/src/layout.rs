//! Where things are: the directory of an instance and the names of the
//! files in it. Both processes build and parse names only through these,
//! so a file cannot be named one way by its writer and another by its
//! reader.
//!
//! ```text
//! /dev/shm/totoro-<instance>/      0700, this user's ([`crate::ShmDir`])
//!   instance.key                   32 random bytes; authenticates the rest
//!   policy.tbl                     the policy table (slowpath → fastpath)
//!   policy.refused                 why the fastpath refused the last table
//!   edge-certs.bin                 the edge's certificates and keys, named
//!                                  by the table's SHA-256 (slowpath → fastpath)
//!   events-<worker>.ring           one event ring per fastpath worker
//!   fastpath.lock, slowpath.lock   POSIX-locked by the running processes
//!   draining-<pid>.lock            POSIX-locked by a fastpath that handed its
//!                                  listeners to a successor and still serves
//!                                  its sessions (its rings stay live)
//! ```

use std::path::PathBuf;

/// File in the directory that the running fastpath holds locked.
pub const LOCK_FILE: &str = "fastpath.lock";
/// File in the directory that the slowpath owning the instance holds locked.
pub const SLOWPATH_LOCK_FILE: &str = "slowpath.lock";
/// The per-instance key that authenticates tables and event records.
pub const KEY_FILE: &str = "instance.key";
/// The published policy table.
pub const TABLE_FILE: &str = "policy.tbl";
/// The edge's certificate store (`proto::certstore`): written before the
/// table that names its SHA-256.
pub const CERTS_FILE: &str = "edge-certs.bin";
/// Why the fastpath last refused a table (written by the fastpath, read by
/// the publisher when a change is not applied in time).
pub const REFUSED_FILE: &str = "policy.refused";

/// The shared-memory directory of instance `instance` when no other is
/// configured: `/dev/shm/totoro-<instance>`.
pub fn instance_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/totoro-{instance}"))
}

/// File name of worker `id`'s event ring.
pub fn ring_file(id: usize) -> String {
    format!("events-{id}.ring")
}

/// File a draining fastpath (process `pid`) holds locked while it still
/// writes to event rings that a successor's have replaced.
pub fn draining_file(pid: u32) -> String {
    format!("draining-{pid}.lock")
}

/// What the fastpath writes into [`LOCK_FILE`] once it holds it: its pid
/// and how many workers it runs, so that a reader waiting for every
/// worker's ring knows how many to wait for ([`fastpath_lock_workers`]).
pub fn fastpath_lock_note(pid: u32, workers: usize) -> String {
    format!("pid {pid} fastpath workers {workers}")
}

/// The worker count a [`fastpath_lock_note`] names (None for any other
/// text, such as the empty file between taking the lock and writing it).
pub fn fastpath_lock_workers(note: &str) -> Option<u32> {
    let mut words = note.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("pid"), Some(_), Some("fastpath"), Some("workers")) => {}
        _ => return None,
    }
    let n = words.next()?.parse().ok()?;
    words.next().is_none().then_some(n)
}

/// The worker id of an event ring's file name (None for any other file,
/// including a ring being written aside).
pub fn ring_worker(name: &str) -> Option<u32> {
    name.strip_prefix("events-")
        .and_then(|s| s.strip_suffix(".ring"))
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_names_round_trip() {
        assert_eq!(ring_worker(&ring_file(7)), Some(7));
        assert_eq!(ring_worker("events-7.ring.tmp-1-2"), None);
        assert_eq!(ring_worker("events-x.ring"), None);
        assert_eq!(ring_worker(TABLE_FILE), None);
    }

    #[test]
    fn lock_notes_name_the_worker_count() {
        assert_eq!(fastpath_lock_workers(&fastpath_lock_note(42, 16)), Some(16));
        assert_eq!(fastpath_lock_workers(""), None);
        assert_eq!(fastpath_lock_workers("pid 42 fastpath"), None);
        assert_eq!(fastpath_lock_workers("pid 42 fastpath workers x"), None);
        assert_eq!(fastpath_lock_workers("pid 42 fastpath workers 2 3"), None);
        assert_eq!(fastpath_lock_workers("pid 42 slowpath workers 2"), None);
    }
}
