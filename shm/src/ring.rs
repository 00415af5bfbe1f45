//! Event ring files: a worker's ring mapped into memory ([`MappedRing`]),
//! and its header read without mapping it ([`RingHeader`]).
//!
//! A ring is the only shared memory the two processes map. The mapping is
//! never handed out as bytes: another process writes it while we read, and
//! a `&[u8]` over it would promise Rust that nobody does. The one view of
//! it is [`proto::ring::Ring`], which touches it only through atomics.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::ptr::NonNull;

use proto::ring::{HeaderSnapshot, Ring, RING_HEADER};

use crate::dir::ShmDir;

/// A ring file mapped shared, readable and writable (both sides write: the
/// producer `head`, the consumer `tail`), as a [`Ring`].
///
/// Ring files are only ever replaced, never truncated
/// ([`ShmDir::create_replacing`]), so the mapping stays backed by its
/// (possibly unlinked) file for as long as it lives; a reader notices a
/// replacement by the file's identity ([`MappedRing::identity`]).
pub struct MappedRing {
    // Points into `map`: declared first, so dropped first.
    ring: Ring,
    map: Mapping,
    inode: u64,
    size: u64,
}

impl MappedRing {
    /// Producer: replace `name` with a new ring of `len` bytes (header
    /// included) and map it. `len` should be [`RING_HEADER`] plus a power
    /// of two; a larger remainder is left unused.
    pub fn create(dir: &ShmDir, name: &str, len: usize) -> io::Result<MappedRing> {
        let file = dir.create_replacing(name, len)?;
        let map = Mapping::shared(&file, len)?;
        // SAFETY: `map` is a fresh page-aligned (so 8-aligned) MAP_SHARED
        // read-write mapping of `len` bytes of a file at least that long;
        // it lives in the same struct as the ring and is dropped after it
        // (field order). Its file is private to this user and only ever
        // replaced, not truncated, and every process maps it only through
        // a `MappedRing` (atomic accesses only).
        let ring = unsafe { Ring::create(map.ptr.as_ptr(), len) }.map_err(invalid)?;
        Self::of(ring, map, &file)
    }

    /// Consumer: map the ring a producer made in `name`, all of it.
    pub fn attach(dir: &ShmDir, name: &str) -> io::Result<MappedRing> {
        let file = dir.open_file(name, true)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(invalid)?;
        if len < RING_HEADER + 64 {
            return Err(invalid("ring file too small"));
        }
        let map = Mapping::shared(&file, len)?;
        // SAFETY: as in `create`: a page-aligned read-write shared mapping
        // of the whole file (`len` bytes as of the fstat above; ring files
        // are replaced, never shrunk), dropped after the ring, accessed by
        // every process only through a `MappedRing`.
        let ring = unsafe { Ring::attach(map.ptr.as_ptr(), len) }.map_err(invalid)?;
        Self::of(ring, map, &file)
    }

    fn of(ring: Ring, map: Mapping, file: &File) -> io::Result<MappedRing> {
        let meta = file.metadata()?;
        Ok(MappedRing {
            ring,
            map,
            inode: meta.ino(),
            size: meta.len(),
        })
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The mapped file's (inode, size) when it was mapped: compare with
    /// [`ShmDir::identity`] to notice a ring replaced by a new one.
    pub fn identity(&self) -> (u64, u64) {
        (self.inode, self.size)
    }

    /// Bytes mapped.
    pub fn mapped_len(&self) -> usize {
        self.map.len
    }
}

impl Deref for MappedRing {
    type Target = Ring;

    fn deref(&self) -> &Ring {
        &self.ring
    }
}

impl std::fmt::Debug for MappedRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRing")
            .field("inode", &self.inode)
            .field("size", &self.size)
            .field("capacity", &self.ring.capacity())
            .finish()
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A shared mapping, unmapped on drop. Private: it hands out no bytes,
/// only its address to the [`Ring`] built on it.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is an address range owned by the process, not by a
// thread; it gives no access to the memory (its only use is the address
// handed to a Ring, which is Send and Sync itself), and munmap may run on
// any thread.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` exposes nothing but the address and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the first `len` bytes of `file` for reading and writing, shared
    /// with every process that maps it.
    fn shared(file: &File, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(invalid("empty file"));
        }
        // SAFETY: a new mapping at an address the kernel picks (it cannot
        // overlap anything of ours) of a file we hold open; the result is
        // checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| invalid("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range `shared` mapped, once; the
        // ring that pointed into it was dropped before (MappedRing's field
        // order), and nothing else holds the address.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// What an event ring's header says about its producer, read with one
/// `pread` of the header (no mapping): for watchers that only need to know
/// which policy generation each worker enforces. The kernel copies the
/// bytes; a read racing the producer's store of a word sees the old or the
/// new value of that 8-byte aligned word on x86-64 and aarch64 (and at
/// worst a torn value elsewhere), and a poller simply reads again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHeader {
    /// The policy generation the worker enforces.
    pub applied_generation: u64,
    /// The worker's process.
    pub producer_pid: i32,
}

impl RingHeader {
    /// Read the header of an open ring file; None when it is not a ring.
    pub fn read(file: &File) -> Option<RingHeader> {
        let mut head = [0u8; RING_HEADER];
        file.read_exact_at(&mut head, 0).ok()?;
        let h = HeaderSnapshot::parse(&head)?;
        Some(RingHeader {
            applied_generation: h.applied_generation,
            producer_pid: i32::try_from(h.producer_pid).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ring_file;

    #[test]
    fn a_producer_and_a_consumer_share_a_ring_file() {
        let p = std::env::temp_dir().join(format!("totoro-shm-ring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let dir = ShmDir::open(&p).unwrap();
        let name = ring_file(3);
        let prod = MappedRing::create(&dir, &name, RING_HEADER + 4096).unwrap();
        prod.set_applied_generation(9);
        assert!(prod.push(b"hello"));
        let cons = MappedRing::attach(&dir, &name).unwrap();
        assert_eq!(cons.identity(), dir.identity(&name).unwrap());
        let mut out = Vec::new();
        assert!(cons.pop(&mut out));
        assert_eq!(out, b"hello");
        let h = RingHeader::read(&dir.open_file(&name, false).unwrap()).unwrap();
        assert_eq!(h.applied_generation, 9);
        assert_eq!(h.producer_pid as u32, std::process::id());
        // A replaced ring is a new file; the old mapping stays valid.
        let again = MappedRing::create(&dir, &name, RING_HEADER + 4096).unwrap();
        assert_ne!(cons.identity(), dir.identity(&name).unwrap());
        assert!(prod.push(b"old"));
        assert!(cons.pop(&mut out));
        assert_eq!(out, b"old");
        drop(again);
        // Anything that is not a ring is refused, mapped or read.
        dir.write_replacing("junk", &[0u8; 4096]).unwrap();
        assert!(MappedRing::attach(&dir, "junk").is_err());
        assert!(RingHeader::read(&dir.open_file("junk", false).unwrap()).is_none());
        std::fs::remove_dir_all(&p).unwrap();
    }
}
