//! Upgrades that drop no tunnel: a new fastpath process takes the running
//! one's listening sockets over a Unix socket (`fastpath.upgradeSocket`),
//! as nginx's binary upgrade and Envoy's hot restart do.
//!
//! ```text
//! successor                         running fastpath (predecessor)
//!   connect, "takeover <pid>\n"  →  takes draining-<pid>.lock
//!                                ←  "ok <manifest json>\n", then the
//!                                   descriptors (SCM_RIGHTS, in batches)
//!   starts its workers on them
//!   "ready\n"                    →  stops accepting (its copies closed),
//!                                   lets the instance lock go, removes
//!                                   the socket's path
//!                                ←  "done\n"
//!   takes the instance lock,
//!   listens on the path itself       serves its live sessions and
//!                                    transfers until they end or
//!                                    fastpath.drainSecs, then exits
//! ```
//!
//! Until "ready" nothing changes for the running process: a successor that
//! fails to start (or dies, or never says ready within a minute) only
//! costs it the descriptors it duplicated, and it goes on serving and can
//! be upgraded again. A second takeover while one is under way, or after
//! one succeeded, is refused. Both processes accept on the same sockets
//! between "ok" and "ready"; no connection waits in a queue nobody reads.
//!
//! `fastpath upgrade -c <config>` (or SIGUSR2) asks the running process to
//! start its own binary again (the path it was started from, so a binary
//! replaced on disk is the one that starts) with its own arguments and
//! `--takeover`, and answers `ok <pid>` or `err <why>`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::runtime::shared::Shared;
use crate::transport::handoff::WorkerMsg;

/// The longest a park message may wait to be written to the successor.
const PARK_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the predecessor waits for a successor's "ready".
const READY_WAIT: Duration = Duration::from_secs(60);
/// Descriptors per message (the kernel takes at most 253).
const FDS_PER_MSG: usize = 200;
/// The longest line either side reads.
const MAX_LINE: usize = 1 << 20;

/// What a handed-over descriptor is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// "bind", "http", "https", "tcpmux", "mesh", "stun" or "metrics".
    pub kind: String,
    /// The worker that served it (0 for "metrics").
    pub worker: usize,
    /// A STUN socket's place: (ip index, port index).
    #[serde(default)]
    pub place: (usize, usize),
}

impl Entry {
    /// An entry of `kind` for `worker`.
    pub fn new(kind: &str, worker: usize) -> Entry {
        Entry {
            kind: kind.into(),
            worker,
            place: (0, 0),
        }
    }
}

/// Sockets a predecessor handed over, taken by role as the server binds;
/// what is not taken is closed here (the predecessor's copies stay open
/// until it drains).
pub struct Inherited {
    /// The predecessor's pid.
    pub from_pid: u32,
    items: Vec<(Entry, Option<OwnedFd>)>,
    stream: UnixStream,
}

impl Inherited {
    /// Connect to the running fastpath at `path` and take its sockets.
    pub fn take(path: &str) -> anyhow::Result<Inherited> {
        let mut stream = UnixStream::connect(path).map_err(|e| {
            anyhow::anyhow!("no fastpath to take over at {path} (fastpath.upgradeSocket): {e}")
        })?;
        same_user(&stream).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(stream, "takeover {}", std::process::id())?;
        let line = read_line(&mut stream)?;
        let manifest = match line.split_once(' ') {
            Some(("ok", m)) => m,
            _ => anyhow::bail!(
                "the running fastpath refused the takeover: {}",
                line.strip_prefix("err ").unwrap_or(&line)
            ),
        };
        let manifest: Manifest = serde_json::from_str(manifest)
            .map_err(|e| anyhow::anyhow!("the running fastpath's manifest: {e}"))?;
        let fds = recv_fds(&stream, manifest.entries.len())?;
        let items = manifest
            .entries
            .into_iter()
            .zip(fds.into_iter().map(Some))
            .collect();
        Ok(Inherited {
            from_pid: manifest.pid,
            items,
            stream,
        })
    }

    fn take_fd(&mut self, kind: &str, worker: usize, place: (usize, usize)) -> Option<OwnedFd> {
        self.items
            .iter_mut()
            .find(|(e, fd)| {
                fd.is_some() && e.kind == kind && e.worker == worker && e.place == place
            })
            .and_then(|(_, fd)| fd.take())
    }

    /// The TCP listener of `kind` that `worker` served, when it listens on
    /// `want` (any port when `want`'s is 0).
    pub fn tcp(
        &mut self,
        kind: &str,
        worker: usize,
        want: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let fd = self.take_fd(kind, worker, (0, 0))?;
        let l = std::net::TcpListener::from(fd);
        let at = l.local_addr().ok()?;
        (at.ip() == want.ip() && (want.port() == 0 || at.port() == want.port())).then_some(l)
    }

    /// The STUN socket of `worker` at `place`, when it is bound to `want`.
    pub fn udp(
        &mut self,
        worker: usize,
        place: (usize, usize),
        want: SocketAddr,
    ) -> Option<std::net::UdpSocket> {
        let fd = self.take_fd("stun", worker, place)?;
        let s = std::net::UdpSocket::from(fd);
        (s.local_addr().ok()? == want).then_some(s)
    }

    /// Tell the predecessor this process serves; returns once it stopped
    /// accepting and let go of the instance lock and the socket's path,
    /// with its pid and the stream on which it hands over the listening
    /// sockets of the sessions it moves ([`receive_parked`]). An error only
    /// when the predecessor clearly did not let go (it answered something
    /// else, or ready could not be sent): once ready is said, a predecessor
    /// that goes silent may have let go and died, so this process serves
    /// on (without the proxies' sockets: `None`).
    pub fn ready(mut self) -> anyhow::Result<(u32, Option<UnixStream>)> {
        let unused = self.items.iter().filter(|(_, fd)| fd.is_some()).count();
        if unused > 0 {
            tracing::warn!(
                sockets = unused,
                "sockets handed over and not used here (the worker count or an address changed); the predecessor closes them when it drains"
            );
        }
        self.stream.write_all(b"ready\n")?;
        match read_line(&mut self.stream) {
            Ok(line) if line == "done" => {
                let _ = self.stream.set_read_timeout(None);
                Ok((self.from_pid, Some(self.stream)))
            }
            Ok(line) => anyhow::bail!("the predecessor answered {line:?} to ready"),
            Err(e) => {
                tracing::warn!(error = %e, "the predecessor did not confirm; serving on");
                Ok((self.from_pid, None))
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    pid: u32,
    entries: Vec<Entry>,
}

/// Where the running process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// A successor holds copies of the sockets and has not said ready.
    HandingOver,
    /// The sockets are the successor's; this process only drains.
    Draining,
}

/// The running process's side: listens on the upgrade socket and hands
/// its sockets to one successor.
pub struct Upgrader {
    path: String,
    shared: Arc<Shared>,
    /// Duplicates of every listening socket, with what each is.
    sockets: Mutex<Vec<(Entry, OwnedFd)>>,
    phase: Mutex<Phase>,
    /// A successor started by this process is on its way.
    spawning: Mutex<bool>,
    /// The instance lock, let go once a successor serves.
    instance_lock: Arc<Mutex<Option<std::fs::File>>>,
    /// The draining lock while one is held.
    draining_lock: Mutex<Option<std::fs::File>>,
    /// How to start this binary again.
    exe: Option<(PathBuf, Vec<std::ffi::OsString>)>,
    /// When draining began.
    drained_since: Mutex<Option<Instant>>,
}

impl Upgrader {
    /// Listen on `path` (a stale socket file nobody answers on is
    /// replaced; one a live fastpath answers on is an error).
    pub fn start(
        path: &str,
        shared: Arc<Shared>,
        sockets: Vec<(Entry, OwnedFd)>,
        instance_lock: Arc<Mutex<Option<std::fs::File>>>,
        exe: Option<(PathBuf, Vec<std::ffi::OsString>)>,
    ) -> anyhow::Result<Arc<Upgrader>> {
        let listener = listen(path)?;
        let up = Arc::new(Upgrader {
            path: path.into(),
            shared,
            sockets: Mutex::new(sockets),
            phase: Mutex::new(Phase::Serving),
            spawning: Mutex::new(false),
            instance_lock,
            draining_lock: Mutex::new(None),
            exe,
            drained_since: Mutex::new(None),
        });
        let me = up.clone();
        std::thread::Builder::new()
            .name("fastpath-upgrade".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if *lock(&me.phase) == Phase::Draining {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let me = me.clone();
                    let _ = std::thread::Builder::new()
                        .name("fastpath-upgrade-conn".into())
                        .spawn(move || me.serve(conn));
                }
            })?;
        tracing::info!(
            path,
            "upgrades through this socket (fastpath upgrade, SIGUSR2)"
        );
        Ok(up)
    }

    /// Since when this process drains (its sockets are a successor's).
    pub fn draining_since(&self) -> Option<Instant> {
        *lock(&self.drained_since)
    }

    fn serve(&self, mut conn: UnixStream) {
        if let Err(e) = same_user(&conn) {
            tracing::warn!("upgrade socket: {e}");
            return;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(line) = read_line(&mut conn) else {
            return;
        };
        let reply = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("takeover", pid) => match self.hand_over(&mut conn, pid) {
                Ok(()) => return,
                Err(e) => format!("err {e}"),
            },
            ("upgrade", _) => match self.spawn_successor() {
                Ok(pid) => format!("ok {pid}"),
                Err(e) => format!("err {e}"),
            },
            _ => format!("err unknown request {line:?}"),
        };
        let _ = writeln!(conn, "{reply}");
    }

    /// Start this binary again with `--takeover` and wait until it took
    /// over (its pid) or failed (why); this process serves on either way
    /// until then.
    pub fn spawn_successor(&self) -> Result<u32, String> {
        {
            let mut spawning = lock(&self.spawning);
            if *spawning || *lock(&self.phase) != Phase::Serving {
                return Err("an upgrade is already under way or done".into());
            }
            *spawning = true;
        }
        let outcome = self.run_successor();
        *lock(&self.spawning) = false;
        outcome
    }

    fn run_successor(&self) -> Result<u32, String> {
        let Some((exe, args)) = &self.exe else {
            return Err("this process cannot start its own binary".into());
        };
        let mut child = std::process::Command::new(exe)
            .args(args)
            .arg("--takeover")
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let pid = child.id();
        tracing::info!(pid, exe = %exe.display(), "upgrade: new fastpath started");
        let deadline = Instant::now() + READY_WAIT + Duration::from_secs(5);
        loop {
            if *lock(&self.phase) == Phase::Draining {
                // Reap it whenever it ends, so that it leaves no zombie.
                let _ = std::thread::Builder::new()
                    .name("fastpath-successor".into())
                    .spawn(move || child.wait());
                return Ok(pid);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the new fastpath (pid {pid}) exited before taking over: {status}; this one serves on"
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new fastpath (pid {pid}) did not take over in time and was killed; this one serves on"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn hand_over(&self, conn: &mut UnixStream, pid: &str) -> Result<(), String> {
        {
            let mut phase = lock(&self.phase);
            if *phase != Phase::Serving {
                return Err("an upgrade is already under way or done".into());
            }
            *phase = Phase::HandingOver;
        }
        let outcome = self.try_hand_over(conn);
        match &outcome {
            Ok(()) => {
                tracing::info!(successor = pid, "upgrade: listeners handed over; draining");
            }
            Err(e) => {
                tracing::warn!(successor = pid, error = %e, "upgrade failed; serving on");
                self.release_draining_lock();
                *lock(&self.phase) = Phase::Serving;
            }
        }
        outcome
    }

    fn try_hand_over(&self, conn: &mut UnixStream) -> Result<(), String> {
        self.take_draining_lock()?;
        let (entries, fds): (Vec<Entry>, Vec<RawFd>) = lock(&self.sockets)
            .iter()
            .map(|(e, fd)| (e.clone(), fd.as_raw_fd()))
            .unzip();
        let manifest = serde_json::to_string(&Manifest {
            pid: std::process::id(),
            entries,
        })
        .map_err(|e| e.to_string())?;
        writeln!(conn, "ok {manifest}").map_err(|e| e.to_string())?;
        send_fds(conn, &fds).map_err(|e| format!("sending sockets: {e}"))?;
        let _ = conn.set_read_timeout(Some(READY_WAIT));
        match read_line(conn) {
            Ok(l) if l == "ready" => {}
            Ok(l) => return Err(format!("the successor said {l:?} instead of ready")),
            Err(e) => return Err(format!("the successor went away before ready: {e}")),
        }
        // Committed: no other upgrade, no lock or path of ours from here on.
        *lock(&self.phase) = Phase::Draining;
        lock(&self.instance_lock).take();
        // Wake the accept loop so that it sees the phase and ends, then
        // leave the path to the successor.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        // "done" goes before anything else on this stream: the successor
        // reads the proxies' sockets (park messages) only after it.
        if let Err(e) = conn.write_all(b"done\n") {
            // It went away after ready: serve on, as before (without
            // upgrades until a restart: the socket's path is gone).
            tracing::error!(error = %e, "the successor went away after saying ready; serving on, upgrades off");
            return Err(format!("the successor went away after ready: {e}"));
        }
        // From here on the sockets are the successor's, and so are the
        // proxies' listening sockets of the sessions that move.
        // Workers write park messages on it (see `send_parked`): a
        // successor that stops reading must not hold them for long.
        let to_successor = conn
            .try_clone()
            .ok()
            .filter(|c| c.set_write_timeout(Some(PARK_WRITE_TIMEOUT)).is_ok());
        *self.shared.successor.lock() = to_successor;
        *lock(&self.drained_since) = Some(Instant::now());
        self.shared.draining.store(true, Ordering::Release);
        for inbox in &self.shared.inboxes {
            let _ = inbox.send(WorkerMsg::Drain);
        }
        lock(&self.sockets).clear();
        Ok(())
    }

    fn take_draining_lock(&self) -> Result<(), String> {
        let Some(g) = self.shared.policy.governed() else {
            return Ok(());
        };
        let name = shm::draining_file(std::process::id());
        let f = g
            .dir
            .lock(
                &name,
                &format!("pid {} fastpath, draining", std::process::id()),
            )
            .map_err(|e| format!("{name}: {e}"))?;
        *lock(&self.draining_lock) = Some(f);
        Ok(())
    }

    /// At stop: the socket's path goes with this process, unless it was
    /// left to a successor.
    pub fn close(&self) {
        if *lock(&self.phase) != Phase::Draining {
            let _ = std::fs::remove_file(&self.path);
        }
        self.release_draining_lock();
    }

    /// Let the draining lock go (its file removed first, so that the
    /// slowpath never finds it unlocked with rings still being written).
    fn release_draining_lock(&self) {
        if let Some(f) = lock(&self.draining_lock).take() {
            if let Some(g) = self.shared.policy.governed() {
                g.dir.unlink(&shm::draining_file(std::process::id()));
            }
            drop(f);
        }
    }
}

/// How long a proxy's listening socket handed over with its session waits
/// for that session to register the proxy again.
const PARK_FOR: Duration = Duration::from_secs(30);

/// What a handed-over proxy socket is, or (an empty proxy name) a user
/// connection accepted on one as it was handed over.
#[derive(Serialize, Deserialize)]
struct ParkMsg {
    port: u16,
    run_id: String,
    proxy: String,
    #[serde(default)]
    peer: Option<SocketAddr>,
}

/// The predecessor's side: hand `proxy`'s listening socket (`port`, of
/// session `run_id`) to the successor before the session is closed, so
/// that users connecting meanwhile wait in its queue instead of being
/// refused, and the proxy registered again takes them.
pub fn park(shared: &Shared, port: u16, run_id: &str, proxy: &str, fd: OwnedFd) {
    let msg = ParkMsg {
        port,
        run_id: run_id.into(),
        proxy: proxy.into(),
        peer: None,
    };
    send_parked(shared, &msg, fd);
}

/// The predecessor's side: a user connection its proxy accepted on `port`
/// just as the proxy's session moved; the successor serves it once the
/// proxy is registered again there (or closes it with the port).
pub fn hand_user(shared: &Shared, port: u16, user: monoio::net::TcpStream, peer: SocketAddr) {
    let fd = OwnedFd::from(crate::transport::handoff::detach(user));
    let msg = ParkMsg {
        port,
        run_id: String::new(),
        proxy: String::new(),
        peer: Some(peer),
    };
    send_parked(shared, &msg, fd);
}

/// Writes one park message and its descriptor. On the worker's thread and
/// under the lock on purpose: the line and its descriptor must not
/// interleave with another worker's, and the socket must be the
/// successor's before the session closes (else frpc, logging in again
/// there at once, would find the port still bound here). The successor
/// reads these as they come; a write that blocks longer than
/// [`PARK_WRITE_TIMEOUT`] gives up on it, and the sessions still to move
/// are then closed without their sockets.
fn send_parked(shared: &Shared, msg: &ParkMsg, fd: OwnedFd) {
    let (port, proxy) = (msg.port, msg.proxy.as_str());
    let mut successor = shared.successor.lock();
    let Some(s) = successor.as_mut() else {
        return;
    };
    let sent = serde_json::to_string(msg)
        .map_err(io::Error::other)
        .and_then(|m| writeln!(s, "park {m}"))
        .and_then(|()| send_fds(s, &[fd.as_raw_fd()]));
    if let Err(e) = sent {
        tracing::warn!(port, proxy_name = proxy, error = %e, "cannot hand a proxy's socket to the successor");
        *successor = None;
    }
}

/// The successor's side: take the proxies' sockets the predecessor hands
/// over until it exits, and close those not taken in time.
pub fn receive_parked(shared: Arc<Shared>, mut stream: UnixStream) -> io::Result<()> {
    let sweeper = shared.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    std::thread::Builder::new()
        .name("fastpath-parked".into())
        .spawn(move || {
            while !sweeper.is_stopping() {
                let left = sweeper.parked.expire(&sweeper.ports);
                if left == 0 && finished.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })?;
    std::thread::Builder::new()
        .name("fastpath-handover".into())
        .spawn(move || {
            while let Ok(line) = read_line(&mut stream) {
                let Some(m) = line
                    .strip_prefix("park ")
                    .and_then(|m| serde_json::from_str::<ParkMsg>(m).ok())
                else {
                    tracing::warn!(line, "unexpected message from the predecessor");
                    break;
                };
                let Ok(mut fds) = recv_fds(&stream, 1) else {
                    break;
                };
                let Some(fd) = fds.pop() else { break };
                if let Some(peer) = m.peer {
                    shared
                        .parked
                        .add_user(m.port, std::net::TcpStream::from(fd), peer);
                    continue;
                }
                // Nobody here can have it: the predecessor held it.
                shared.ports.claim(m.port);
                let listener = std::net::TcpListener::from(fd);
                shared
                    .parked
                    .add(m.port, m.run_id, m.proxy, listener, PARK_FOR);
            }
            done.store(true, Ordering::Release);
        })?;
    Ok(())
}

/// Ask the fastpath at `path` to upgrade itself; its answer.
pub fn request(path: &str) -> anyhow::Result<u32> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!("no fastpath answers at {path} (fastpath.upgradeSocket): {e}")
    })?;
    same_user(&s).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    s.set_read_timeout(Some(READY_WAIT + Duration::from_secs(15)))?;
    s.write_all(b"upgrade\n")?;
    let line = read_line(&mut s)?;
    match line.split_once(' ') {
        Some(("ok", pid)) => Ok(pid.parse()?),
        _ => anyhow::bail!("{}", line.strip_prefix("err ").unwrap_or(&line)),
    }
}

/// Tell systemd (Type=notify, NotifyAccess=all) that this process is the
/// service's main process and ready; nothing without `NOTIFY_SOCKET`.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The upgrade socket, owner-only whatever the umask (the peer's uid is
/// checked too, see [`same_user`]).
fn listen(path: &str) -> anyhow::Result<UnixListener> {
    let l = bind_socket(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("fastpath.upgradeSocket {path}: {e}"))?;
    Ok(l)
}

fn bind_socket(path: &str) -> anyhow::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "fastpath.upgradeSocket {path} is served by a running fastpath (upgrade it with `fastpath upgrade`)"
                );
            }
            // Left by a process that died: nobody answers on it.
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
                .map_err(|e| anyhow::anyhow!("fastpath.upgradeSocket {path}: {e}"))
        }
        Err(e) => Err(anyhow::anyhow!("fastpath.upgradeSocket {path}: {e}")),
    }
}

/// Whoever is at the other end of the upgrade socket runs as this
/// process's user (or root): the sockets handed over are the node's
/// listening ports, and a successor takes whatever it is given, so a
/// socket file another local user planted (in a shared directory) must
/// not be talked to, in either direction.
fn same_user(s: &UnixStream) -> Result<(), String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a ucred
    // we own, on a socket we own.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot tell who is at the other end: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid == me || cred.uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "the other end runs as uid {} (pid {}), not as this process's uid {me}; refused",
            cred.uid, cred.pid
        ))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line, read a byte at a time: the descriptors that follow ride on
/// the next bytes, and a buffered read would take them and lose them.
fn read_line(s: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ if b[0] == b'\n' => break,
            _ if line.len() >= MAX_LINE => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
            }
            _ => line.push(b[0]),
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Room for one message's descriptors, aligned for `cmsghdr`.
fn cmsg_buffer() -> Vec<u64> {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let bytes = unsafe { libc::CMSG_SPACE((FDS_PER_MSG * std::mem::size_of::<RawFd>()) as u32) };
    vec![0u64; (bytes as usize).div_ceil(8)]
}

fn send_fds(s: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let mut buf = cmsg_buffer();
    for chunk in fds.chunks(FDS_PER_MSG) {
        let byte = [chunk.len() as u8];
        let mut iov = libc::iovec {
            iov_base: byte.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let data = std::mem::size_of_val(chunk);
        // SAFETY: msghdr is plain data; every pointer set below points into
        // `iov`, `byte` and `buf`, which outlive the sendmsg call, and the
        // control length is the CMSG_SPACE of what is written into it
        // (at most FDS_PER_MSG descriptors, which `buf` was sized for).
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = buf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data as u32) as _;
            std::ptr::copy_nonoverlapping(
                chunk.as_ptr(),
                libc::CMSG_DATA(cmsg).cast(),
                chunk.len(),
            );
            if libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn recv_fds(s: &UnixStream, want: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(want);
    let mut buf = cmsg_buffer();
    while out.len() < want {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: as in send_fds; the kernel writes at most msg_controllen
        // bytes into `buf` and one byte into `byte`. Each descriptor read
        // from the control data was just installed in this process by the
        // kernel and is owned by nothing else, so OwnedFd may take it.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = buf.as_mut_ptr().cast();
            msg.msg_controllen = (buf.len() * 8) as _;
            let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut got = Vec::new();
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let p: *const RawFd = libc::CMSG_DATA(cmsg).cast();
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        got.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            if msg.msg_flags & libc::MSG_CTRUNC != 0 || got.len() != usize::from(byte[0]) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "sockets lost on the way (truncated control data)",
                ));
            }
            out.extend(got);
        }
    }
    if out.len() != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more sockets than the manifest lists",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_cross_in_batches_and_stay_the_same_sockets() {
        let (a, b) = UnixStream::pair().unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..450)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let sender = std::thread::spawn(move || send_fds(&a, &fds));
        let got = recv_fds(&b, 450).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got.len(), 450);
        for (l, fd) in listeners.iter().zip(got) {
            let theirs = std::net::TcpListener::from(fd);
            assert_eq!(theirs.local_addr().unwrap(), l.local_addr().unwrap());
            // The same socket: a connection made to it is accepted through
            // the received descriptor.
            let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            assert!(theirs.accept().is_ok());
        }
    }

    #[test]
    fn the_other_end_of_our_own_pair_is_our_user() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(same_user(&a), Ok(()));
    }

    #[test]
    fn another_user_at_the_other_end_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root to connect as another user");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("totoro-peercred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.join("up.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg("import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(2)")
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let (conn, _) = l.accept().unwrap();
        let why = same_user(&conn).unwrap_err();
        assert!(why.contains("uid 65534"), "{why}");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_line_is_read_without_taking_what_follows() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        a.write_all(b"ok {}\n").unwrap();
        send_fds(&a, &[l.as_raw_fd()]).unwrap();
        assert_eq!(read_line(&mut b).unwrap(), "ok {}");
        assert_eq!(recv_fds(&b, 1).unwrap().len(), 1);
    }
}
