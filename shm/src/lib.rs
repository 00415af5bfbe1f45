//! The shared-memory protocol between a fastpath and the slowpath that
//! governs it: one directory per instance (`/dev/shm/totoro-<instance>`),
//! what lives in it, and how each side opens, writes, maps and locks it.
//! Both processes link this crate and nothing of each other.
//!
//! # Map
//!
//! - [`layout`]: the directory of an instance and the names of its files
//!   (built and parsed here only).
//! - [`dir`]: [`ShmDir`], the verified directory (0700 and ours, files
//!   opened relative to it with `O_NOFOLLOW`, created 0600, only ever
//!   replaced, never rewritten in place), its POSIX locks and their holder,
//!   and [`InstanceDir`], the directory with its instance key.
//! - [`table`]: the policy table file (slowpath → fastpath): loaded as a
//!   private validated copy ([`LoadedTable`]) and its header read for the
//!   generation on disk.
//! - [`ring`]: event ring files (fastpath → slowpath): [`MappedRing`], the
//!   one piece of memory the two processes share, and [`RingHeader`], a
//!   ring's header read without mapping it.
//!
//! # Memory another process writes
//!
//! Nothing here hands out `&[u8]` over a shared mapping: Rust assumes that
//! the bytes behind a shared reference do not change, and a file another
//! process maps can. Rings are mapped and only ever touched through
//! [`proto::ring::Ring`], whose accesses are all atomic; everything else is
//! read into memory of our own (`read`, `pread`).
//!
//! # The policy table: a private copy, not a sealed memfd
//!
//! A table in force must not change or shrink under the reader (a mapped
//! file truncated by another process is a SIGBUS; one written in place is
//! a data race). Two ways out: the slowpath hands over a memfd sealed
//! against writes and shrinking (`F_SEAL_WRITE | F_SEAL_SHRINK`), which the
//! fastpath maps; or the fastpath reads the file into a buffer of its own
//! and validates that. We copy ([`LoadedTable`]):
//!
//! - It costs little and rarely: a table is loaded once per generation,
//!   off the data path (the policy watcher thread). On the 2-core dev
//!   machine a table of 100,000 invites (6.5 MiB) loads in 7.5 ms, of
//!   which the copy (`read` from tmpfs) is 1.5 ms; the tag check
//!   (HMAC-SHA256, 4.9 ms) and the validation (1.0 ms) would be paid the
//!   same with a memfd, since a mapped table must be checked too
//!   (`cargo bench -p totoro-shm --bench table_load`, medians of 20).
//! - A memfd needs a channel to pass descriptors (a Unix socket and
//!   `SCM_RIGHTS`) between processes that today share only a directory: a
//!   fastpath that outlives its slowpath, or starts before it, would need
//!   it re-established; a file in the directory is simply there.
//! - The copy is safe whatever is done to the file, by anyone: the reader
//!   never depends on a writer's discipline.
//!
//! What it costs instead is memory: the fastpath holds its own copy of the
//! table (6.5 MiB for 100,000 invites, two for a moment while a new
//! generation replaces the old) besides the file's pages in tmpfs, where a
//! memfd mapping would share them.
//!
//! Rings cannot be copied (both sides write them while they live), so they
//! are mapped; they are never truncated by a Totoro process (replaced
//! instead, [`ShmDir::create_replacing`]), and the directory is this
//! user's only.

pub mod dir;
pub mod layout;
pub mod ring;
pub mod table;

pub use dir::{owner_only_umask, Held, InstanceDir, LockError, ShmDir};
pub use layout::{
    draining_file, fastpath_lock_note, fastpath_lock_workers, instance_path, ring_file,
    ring_worker, CERTS_FILE, KEY_FILE, LOCK_FILE, REFUSED_FILE, SLOWPATH_LOCK_FILE, TABLE_FILE,
};
pub use ring::{MappedRing, RingHeader};
pub use table::{read_table_header, LoadError, LoadedTable};
