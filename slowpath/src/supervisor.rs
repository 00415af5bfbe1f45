//! Runs the fastpath as a child: restarts it when it dies (with backoff),
//! stops it on shutdown, and heartbeats the local node while it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slowpath::db::Db;
use slowpath::nodes::{self, Heartbeat};
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
    /// The instance's shared-memory directory (holds the fastpath's lock).
    pub shm_dir: PathBuf,
}

/// The pid of a fastpath that holds the instance lock in `dir`, if any.
/// A fastpath outlives a slowpath that was killed (the data plane must keep
/// serving); the next `up` finds it here and supervises it instead of
/// starting a second one.
pub fn running_fastpath(dir: &Path) -> Option<i32> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .open(dir.join(fastpath::shm::LOCK_FILE))
        .ok()?;
    // SAFETY: flock on a descriptor we own; released at once if we got it.
    unsafe {
        if libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            return None;
        }
    }
    let mut pid = String::new();
    file.read_to_string(&mut pid).ok()?;
    pid.trim().parse().ok()
}

fn local_heartbeat() -> Heartbeat {
    Heartbeat {
        versions: [("slowpath".to_owned(), env!("CARGO_PKG_VERSION").to_owned())].into(),
        ..Heartbeat::default()
    }
}

/// Watch an adopted fastpath until it exits (Some) or we are told to stop
/// (None, after stopping it).
async fn adopt(
    pid: i32,
    fp: &Fastpath,
    db: &Db,
    node_id: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<()> {
    tracing::info!(pid, dir = %fp.shm_dir.display(), "a fastpath already serves this instance; supervising it");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut beats = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if running_fastpath(&fp.shm_dir).is_none() {
                    tracing::warn!(pid, "adopted fastpath exited; starting a new one");
                    return Some(());
                }
                beats += 1;
                if beats % 20 == 1 {
                    if let Err(e) = nodes::heartbeat(db, node_id, &local_heartbeat()).await {
                        tracing::warn!(error = %e, "local heartbeat failed");
                    }
                }
            }
            _ = stop.changed() => {
                // SAFETY: signalling the pid that holds our instance lock.
                unsafe { libc::kill(pid, libc::SIGTERM); }
                for _ in 0..60 {
                    if running_fastpath(&fp.shm_dir).is_none() {
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

/// Supervises the child until `stop` turns true.
pub async fn run(fp: Arc<Fastpath>, db: Db, node_id: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        if let Some(pid) = running_fastpath(&fp.shm_dir) {
            match adopt(pid, &fp, &db, &node_id, &mut stop).await {
                Some(()) => continue,
                None => return,
            }
        }
        let child = Command::new(&fp.bin)
            .args(&fp.prefix)
            .arg("-c")
            .arg(&fp.config)
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
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = beat.tick() => {
                    if let Err(e) = nodes::heartbeat(&db, &node_id, &local_heartbeat()).await {
                        tracing::warn!(error = %e, "local heartbeat failed");
                    }
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
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
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
