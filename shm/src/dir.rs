//! The shared-memory directory the fastpath and the slowpath both use
//! (`/dev/shm/totoro-<instance>`): opening it safely, its private files,
//! the instance key and the instance locks.
//!
//! The directory holds policy (tables), events (rings) and the instance key
//! that authenticates both, so nobody but the user Totoro runs as may touch
//! it. [`ShmDir::open`] creates it 0700 or, when it exists, refuses it unless
//! it is a real directory (not a symlink) owned by this user and closed to
//! everyone else; afterwards every file in it is opened relative to that
//! verified directory with `O_NOFOLLOW`, created 0600, and checked to be a
//! regular file of ours.
//!
//! Files there are only ever **replaced** (written aside, then renamed), never
//! rewritten in place: a mapping keeps the old inode alive, so a reader never
//! sees a half-written table or a file shrinking under it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use proto::shm_auth::{InstanceKey, KEY_LEN};

use crate::layout::KEY_FILE;

/// Make everything this process creates from now on private to its user
/// (umask 077), whatever umask it was started with: tables, rings, keys,
/// stats and the database are for the user Totoro runs as only. Files that
/// must say so explicitly are also created 0600 ([`ShmDir`] does).
pub fn owner_only_umask() {
    // SAFETY: umask(2) cannot fail; it only swaps the process's
    // file-creation mask and touches no memory of ours.
    unsafe {
        libc::umask(0o077);
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn cstr(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(())
}

/// A lock on a file in the directory is held by another live process.
#[derive(Debug)]
pub struct Held {
    /// The holder, as the kernel reports it (`F_GETLK`), when it can.
    pub pid: Option<i32>,
    /// What the holder wrote into the lock file (a note for the operator).
    pub note: String,
}

/// The verified shared-memory directory of an instance and its key: what
/// a fastpath governed by a slowpath, and that slowpath, both hold.
pub struct InstanceDir {
    /// The directory (tables one way, event rings the other).
    pub dir: ShmDir,
    /// Authenticates tables and event records.
    pub key: InstanceKey,
}

impl InstanceDir {
    /// Open (or create) and verify the directory, and read (or make) its key.
    pub fn open(path: &Path) -> io::Result<InstanceDir> {
        let dir = ShmDir::open(path)?;
        let key = dir.instance_key()?;
        Ok(InstanceDir { dir, key })
    }
}

/// The verified shared-memory directory of one instance.
#[derive(Debug)]
pub struct ShmDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl ShmDir {
    /// Create `path` (mode 0700) or verify the one that is there: a
    /// directory, not a symlink, owned by the effective user, with no
    /// access for group or others. Anything else is refused with an error
    /// that names the path and the fix; nothing in it is touched.
    pub fn open(path: &Path) -> io::Result<ShmDir> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", path.display()),
                ))
            }
        }
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
        // SAFETY: opening a NUL-terminated path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let why = if e.raw_os_error() == Some(libc::ELOOP)
                || e.raw_os_error() == Some(libc::ENOTDIR)
            {
                "is a symlink or not a directory".to_string()
            } else {
                format!("cannot be opened: {e}")
            };
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} {why}; refusing to use it (remove it, then start again)",
                    path.display()
                ),
            ));
        }
        // SAFETY: a descriptor we just opened and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = File::from(fd.try_clone()?).metadata()?;
        if meta.uid() != euid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to this user (uid {}): another user may have \
                     planted it; refusing to use it (remove it, then start again)",
                    path.display(),
                    meta.uid(),
                    euid()
                ),
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is open to other users (mode {:o}); refusing to use it \
                     (chmod 700 it if you trust what is in it, or remove it)",
                    path.display(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        Ok(ShmDir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// The directory's path (for messages and for `stat` polling).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn openat(&self, name: &str, flags: i32) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: a NUL-terminated name relative to our directory fd; the
        // result is owned by the File.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() || meta.uid() != euid() || meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a private regular file of this user; refusing it",
                    self.path.join(name).display()
                ),
            ));
        }
        Ok(file)
    }

    /// Open an existing file for reading (and writing, if `write`).
    pub fn open_file(&self, name: &str, write: bool) -> io::Result<File> {
        self.openat(name, if write { libc::O_RDWR } else { libc::O_RDONLY })
    }

    /// All of an existing file.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut f = self.open_file(name, false)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The file's (inode, size), for noticing a replacement.
    pub fn identity(&self, name: &str) -> io::Result<(u64, u64)> {
        let meta = self.open_file(name, false)?.metadata()?;
        Ok((meta.ino(), meta.len()))
    }

    /// Names of the files in the directory.
    pub fn names(&self) -> io::Result<Vec<String>> {
        Ok(std::fs::read_dir(&self.path)?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        // SAFETY: two NUL-terminated names relative to our directory fd.
        let r = unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                self.fd.as_raw_fd(),
                b.as_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Remove `name` from the directory (nothing if it is not there).
    pub fn unlink(&self, name: &str) {
        if let Ok(c) = cstr(name) {
            // SAFETY: a NUL-terminated name relative to our directory fd.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        }
    }

    /// A new private file next to `name`, to be renamed over it.
    fn create_aside(&self, name: &str) -> io::Result<(String, File)> {
        let mut r = [0u8; 8];
        random_bytes(&mut r)?;
        let tmp = format!(
            "{name}.tmp-{}-{}",
            std::process::id(),
            u64::from_le_bytes(r)
        );
        let f = self.openat(&tmp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)?;
        Ok((tmp, f))
    }

    /// Create `name` with `len` zero bytes by writing a sibling and renaming
    /// it over `name`, so that a process still mapping the old file keeps
    /// its (now unlinked) copy instead of seeing it truncated.
    pub fn create_replacing(&self, name: &str, len: usize) -> io::Result<File> {
        let (tmp, file) = self.create_aside(name)?;
        let done = file
            .set_len(len as u64)
            .and_then(|()| self.rename(&tmp, name));
        if done.is_err() {
            self.unlink(&tmp);
        }
        done.map(|()| file)
    }

    /// Replace `name` with `bytes` (written aside, then renamed over it).
    pub fn write_replacing(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let (tmp, mut file) = self.create_aside(name)?;
        let done = file.write_all(bytes).and_then(|()| self.rename(&tmp, name));
        if done.is_err() {
            self.unlink(&tmp);
        }
        done
    }

    /// Take the exclusive lock on `name` (created if missing) for as long as
    /// the returned file stays open, and write `note` into it for the
    /// operator. The lock is a POSIX record lock, so the kernel drops it
    /// when the process dies however it dies, and [`ShmDir::holder`] learns
    /// the holder's pid from the kernel rather than from the file.
    pub fn lock(&self, name: &str, note: &str) -> Result<File, LockError> {
        let mut file = self
            .openat(name, libc::O_RDWR | libc::O_CREAT)
            .map_err(LockError::Io)?;
        if !set_lock(&file, libc::F_WRLCK).map_err(LockError::Io)? {
            return Err(LockError::Held(self.held(name)));
        }
        file.set_len(0)
            .and_then(|()| file.write_all(note.as_bytes()))
            .map_err(LockError::Io)?;
        Ok(file)
    }

    fn held(&self, name: &str) -> Held {
        let mut note = String::new();
        let pid = self.open_file(name, false).ok().and_then(|mut f| {
            let _ = f.read_to_string(&mut note);
            lock_holder(&f)
        });
        Held {
            pid,
            note: note.trim().to_owned(),
        }
    }

    /// The live process holding the lock on `name`, if any. The pid comes
    /// from the kernel (`F_GETLK`), never from the file's contents, so it
    /// is safe to signal.
    ///
    /// Do not call this on a lock the calling process holds itself: closing
    /// any descriptor of a file drops the POSIX locks the process has on it.
    pub fn holder(&self, name: &str) -> Option<i32> {
        lock_holder(&self.open_file(name, false).ok()?)
    }

    /// The instance key: read from [`KEY_FILE`], or made (32 random bytes,
    /// 0600) by whichever process comes first. A key file that is not
    /// exactly a key is refused.
    pub fn instance_key(&self) -> io::Result<InstanceKey> {
        match self.read(KEY_FILE) {
            Ok(raw) => return key_of(&raw, &self.path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut raw = [0u8; KEY_LEN];
        random_bytes(&mut raw)?;
        let (tmp, mut file) = self.create_aside(KEY_FILE)?;
        file.write_all(&raw)?;
        let (t, k) = (cstr(&tmp)?, cstr(KEY_FILE)?);
        // link(2) never replaces: of two processes racing here, one key wins
        // and the other reads it.
        // SAFETY: two NUL-terminated names relative to our directory fd.
        let linked = unsafe {
            libc::linkat(
                self.fd.as_raw_fd(),
                t.as_ptr(),
                self.fd.as_raw_fd(),
                k.as_ptr(),
                0,
            )
        };
        let err = io::Error::last_os_error();
        self.unlink(&tmp);
        if linked == 0 {
            return Ok(InstanceKey::new(&raw));
        }
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
        key_of(&self.read(KEY_FILE)?, &self.path)
    }
}

fn key_of(raw: &[u8], dir: &Path) -> io::Result<InstanceKey> {
    let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a {KEY_LEN}-byte key; remove it and restart both processes",
                dir.join(KEY_FILE).display()
            ),
        )
    })?;
    Ok(InstanceKey::new(&raw))
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another live process holds it.
    Held(Held),
    /// The file could not be opened or locked.
    Io(io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held(h) => match h.pid {
                Some(pid) => write!(f, "held by pid {pid} ({})", h.note),
                None => write!(f, "held by another process ({})", h.note),
            },
            LockError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LockError {}

fn whole_file_lock(kind: i32) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Try to take (`F_WRLCK`) a whole-file POSIX lock; false if another
/// process holds it.
fn set_lock(file: &File, kind: i32) -> io::Result<bool> {
    let fl = whole_file_lock(kind);
    // SAFETY: F_SETLK reads the flock struct we pass.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

/// The pid of the process holding a POSIX lock on `file`, per the kernel.
fn lock_holder(file: &File) -> Option<i32> {
    let mut fl = whole_file_lock(libc::F_WRLCK);
    // SAFETY: F_GETLK reads and writes the flock struct we pass.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return None;
    }
    (i32::from(fl.l_type) != libc::F_UNLCK && fl.l_pid > 0).then_some(fl.l_pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LOCK_FILE;
    use std::os::unix::fs::PermissionsExt as _;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("totoro-shm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn creates_a_private_directory_and_files() {
        let p = scratch("create");
        let dir = ShmDir::open(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        dir.write_replacing("a", b"hello").unwrap();
        assert_eq!(dir.read("a").unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(p.join("a")).unwrap().mode() & 0o777,
            0o600
        );
        let k1 = dir.instance_key().unwrap();
        let k2 = ShmDir::open(&p).unwrap().instance_key().unwrap();
        let mut t = vec![0u8; 64];
        t[24] = 64;
        k1.seal_table(&mut t);
        assert!(
            k2.open_table(&t).is_ok(),
            "the second open reads the same key"
        );
        assert!(dir.names().unwrap().iter().all(|n| !n.contains(".tmp-")));
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn refuses_open_symlinked_or_planted_things() {
        let p = scratch("open");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ShmDir::open(&p).unwrap_err().to_string();
        assert!(e.contains("open to other users"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = ShmDir::open(&p).unwrap();
        // A symlink inside is not followed.
        std::os::unix::fs::symlink("/etc/hostname", p.join("policy.tbl")).unwrap();
        assert!(dir.read("policy.tbl").is_err());
        // A group-readable file is refused.
        std::fs::write(p.join("loose"), b"x").unwrap();
        std::fs::set_permissions(p.join("loose"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(dir.read("loose").is_err());
        assert!(dir.read("../etc").is_err());
        // A symlink in place of the directory is refused.
        let link = scratch("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = ShmDir::open(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn lock_holder_comes_from_the_kernel() {
        let p = scratch("lock");
        let dir = ShmDir::open(&p).unwrap();
        assert_eq!(dir.holder(LOCK_FILE), None);
        dir.write_replacing(LOCK_FILE, b"1").unwrap();
        // Another process takes a POSIX lock on a file that names pid 1:
        // the kernel names the real holder. The forked child only makes
        // async-signal-safe calls (open, fcntl, write, pause, _exit).
        let path = CString::new(p.join(LOCK_FILE).as_os_str().as_bytes()).unwrap();
        let mut ready = [0i32; 2];
        // SAFETY: pipe(2) writes two descriptors into `ready`, an array of
        // two.
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
        // SAFETY: fork(2) in the (multi-threaded) test process: the child
        // only makes the async-signal-safe calls below, with memory made
        // before the fork, and leaves with _exit, never returning into the
        // test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: async-signal-safe calls only (open, fcntl, write,
            // pause, _exit) on a NUL-terminated path and a stack flock and
            // byte; `whole_file_lock` only fills a struct on the stack.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                let fl = whole_file_lock(libc::F_WRLCK);
                let ok = fd >= 0 && libc::fcntl(fd, libc::F_SETLK, &fl) == 0;
                libc::write(ready[1], [u8::from(ok)].as_ptr().cast(), 1);
                libc::pause();
                libc::_exit(0);
            }
        }
        let mut ok = [0u8; 1];
        // SAFETY: reading at most one byte into `ok`, a one-byte buffer of
        // ours, from the pipe made above.
        let got = unsafe { libc::read(ready[0], ok.as_mut_ptr().cast(), 1) };
        assert_eq!(got, 1);
        assert_eq!(ok[0], 1, "the child took the lock");
        assert_eq!(dir.holder(LOCK_FILE), Some(pid));
        match dir.lock(LOCK_FILE, "me") {
            Err(LockError::Held(h)) => {
                assert_eq!(h.pid, Some(pid));
                assert_eq!(h.note, "1");
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // SAFETY: kill/waitpid name our own child, not reaped before this
        // waitpid, so its pid is still its; the two descriptors are the
        // pipe's, closed once here.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(ready[0]);
            libc::close(ready[1]);
        }
        let _mine = dir.lock(LOCK_FILE, "me").unwrap();
        assert_eq!(std::fs::read_to_string(p.join(LOCK_FILE)).unwrap(), "me");
        std::fs::remove_dir_all(&p).unwrap();
    }
}
