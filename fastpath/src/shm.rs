//! Memory-mapped files in the shared-memory directory the fastpath and the
//! slowpath both see (`/dev/shm/totoro-<instance>`).
//!
//! Files there are only ever **replaced** (written aside, then renamed), never
//! rewritten in place: a mapping keeps the old inode alive, so a reader never
//! sees a half-written table or a file shrinking under it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A mapped file, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may write what is the business
// of the types built on top (read-only tables, SPSC rings).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map all of `file` read-only.
    pub fn read_only(file: &File) -> io::Result<Mapping> {
        let len = file.metadata()?.len() as usize;
        Self::map(file, len, libc::PROT_READ)
    }

    /// Map the first `len` bytes of `file` for reading and writing, shared
    /// with every other process that maps it.
    pub fn read_write(file: &File, len: usize) -> io::Result<Mapping> {
        Self::map(file, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn map(file: &File, len: usize, prot: i32) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a fresh mapping of a file we hold open; the kernel picks
        // the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is mapped for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Start of the mapping (page-aligned).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true for a live mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// File in the policy directory that the running fastpath holds locked.
pub const LOCK_FILE: &str = "fastpath.lock";

/// Claim the policy directory for this process: an exclusive `flock` on
/// `dir/fastpath.lock`, which holds our pid. Two fastpaths on one directory
/// would both bind the frp port (SO_REUSEPORT) and split the clients between
/// them; the second one stops here instead. The kernel drops the lock when
/// the process dies, however it dies.
pub fn lock_instance(dir: &Path) -> io::Result<File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another fastpath (pid {}) serves {}",
                holder.trim(),
                dir.display()
            ),
        ));
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Create `path` with `len` zero bytes by writing a sibling and renaming it
/// over `path`, so that a process still mapping the old file keeps its
/// (now unlinked) copy instead of seeing it truncated.
pub fn create_replacing(path: &Path, len: usize) -> io::Result<File> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.set_len(len as u64)?;
    std::fs::rename(&tmp, path)?;
    Ok(file)
}
