//! Runs the fastpath as a child: restarts it when it dies (with backoff),
//! stops it on shutdown, and heartbeats the local node while it runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shm::InstanceDir;
use slowpath::domain::nodes;
use slowpath::store::db::Db;
use slowpath::telemetry::host::Probe;
use tokio::process::Command;
use tokio::sync::watch;

/// What to run.
pub struct Fastpath {
    /// Binary.
    pub bin: PathBuf,
    /// Arguments before `-c` (`fastpath` when the binary is this one).
    pub prefix: Vec<String>,
    /// Config file passed with `-c`.
    pub config: PathBuf,
    /// The instance's verified shared-memory directory (holds the
    /// fastpath's lock).
    pub shm: Arc<InstanceDir>,
}

/// The pid of a fastpath that holds the instance lock, if any. A fastpath
/// outlives a slowpath that was killed (the data plane must keep serving);
/// the next `up` finds it here and supervises it instead of starting a
/// second one. The pid is the lock holder as the kernel reports it, never
/// a number read from a file, so signalling it cannot hit a bystander.
pub fn running_fastpath(shm: &InstanceDir) -> Option<i32> {
    shm.dir.holder(shm::LOCK_FILE)
}

impl Fastpath {
    /// Where the child writes its per-worker counters every second.
    pub fn stats_file(&self) -> PathBuf {
        self.config.with_file_name("fastpath-stats.json")
    }
}

/// The local node's heartbeat with the fastpath `pid`'s figures; a failure
/// is logged, and the next beat tries again.
async fn heartbeat(db: &Db, node_id: &str, probe: &mut Probe, pid: i32) {
    if let Err(e) = nodes::heartbeat(db, node_id, &probe.sample(pid)).await {
        tracing::warn!(error = %e, "local heartbeat failed");
    }
}

/// `serve`: a fastpath that runs beside it on the same policy directory (in
/// another container sharing its pid namespace, or another unit) is this
/// host's node; heartbeat for it as `up` does for its child, every 10 s
/// while the kernel names it the directory's holder (and at once when a
/// new one appears), so the node shows online with its CPU, memory and
/// disk. Forever.
pub async fn heartbeat_beside(db: Db, node_id: String, shm: Arc<InstanceDir>) {
    let mut probe = Probe::new(PathBuf::new(), shm.dir.path().to_path_buf());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<(i32, tokio::time::Instant)> = None;
    loop {
        tick.tick().await;
        let Some(pid) = running_fastpath(&shm) else {
            continue;
        };
        if last.is_some_and(|(p, at)| p == pid && at.elapsed() < Duration::from_secs(10)) {
            continue;
        }
        last = Some((pid, tokio::time::Instant::now()));
        heartbeat(&db, &node_id, &mut probe, pid).await;
    }
}

/// Watch an adopted fastpath until it exits (Some) or we are told to stop
/// (None, after stopping it).
async fn adopt(
    pid: i32,
    fp: &Fastpath,
    db: Option<&Db>,
    node_id: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<()> {
    tracing::info!(pid, dir = %fp.shm.dir.path().display(), "a fastpath already serves this instance; supervising it");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut beats = 0u32;
    let mut probe = Probe::new(fp.stats_file(), fp.shm.dir.path().to_path_buf());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if running_fastpath(&fp.shm) != Some(pid) {
                    tracing::warn!(pid, "adopted fastpath exited; starting a new one");
                    return Some(());
                }
                beats += 1;
                if let (true, Some(db)) = (beats % 20 == 1, db) {
                    heartbeat(db, node_id, &mut probe, pid).await;
                }
            }
            _ = stop.changed() => {
                // Only while it still holds the lock: the last tick is up to
                // 500 ms old, and a pid that exited since may be reused.
                if running_fastpath(&fp.shm) == Some(pid) {
                    // SAFETY: kill(2) touches no memory of ours; `pid` is
                    // the process the kernel named as the lock's holder
                    // just now, so alive (a freed and reused pid in the
                    // instructions between would be needed to miss).
                    unsafe { libc::kill(pid, libc::SIGTERM); }
                }
                for _ in 0..60 {
                    if running_fastpath(&fp.shm) != Some(pid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tracing::info!(pid, "fastpath stopped");
                return None;
            }
        }
    }
}

/// Supervises the child until `stop` turns true; its heartbeats go to the
/// node's row when there is a database (a standalone relay has none).
pub async fn run(
    fp: Arc<Fastpath>,
    db: Option<Db>,
    node_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        if let Some(pid) = running_fastpath(&fp.shm) {
            match adopt(pid, &fp, db.as_ref(), &node_id, &mut stop).await {
                Some(()) => continue,
                None => return,
            }
        }
        let child = Command::new(&fp.bin)
            .args(&fp.prefix)
            .arg("-c")
            .arg(&fp.config)
            .arg("--stats-file")
            .arg(fp.stats_file())
            .arg("--policy-dir")
            .arg(fp.shm.dir.path())
            .arg("--node-id")
            .arg(&node_id)
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(bin = %fp.bin.display(), error = %e, "cannot start the fastpath (see --fastpath-bin)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, config = %fp.config.display(), "fastpath started");
        let started = tokio::time::Instant::now();
        let mut beat = tokio::time::interval(Duration::from_secs(10));
        let mut probe = Probe::new(fp.stats_file(), fp.shm.dir.path().to_path_buf());
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = beat.tick() => {
                    let Some(db) = &db else { continue };
                    heartbeat(db, &node_id, &mut probe, pid as i32).await;
                }
                _ = stop.changed() => break None,
            }
        };
        match status {
            None => {
                terminate(&mut child, pid).await;
                return;
            }
            Some(status) => {
                tracing::warn!(pid, status = ?status.ok(), "fastpath exited; restarting");
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(500);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// SIGTERM, then SIGKILL if it has not gone within 6 s (the fastpath
/// itself gives sessions 4.5 s to close).
async fn terminate(child: &mut tokio::process::Child, pid: u32) {
    // `id()` is None once the child has been reaped; until then its pid
    // cannot name another process.
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) touches no memory of ours; `pid` is our child,
        // not reaped yet (running or a zombie), so the number is still its.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(6), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    tracing::info!(pid, "fastpath stopped");
}
