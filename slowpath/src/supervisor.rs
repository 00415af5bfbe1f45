//! Runs the fastpath as a child: restarts it when it dies (with backoff),
//! stops it on shutdown, and heartbeats the local node while it runs.

use std::path::PathBuf;
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
    /// Config file passed with `-c`.
    pub config: PathBuf,
}

/// Supervises the child until `stop` turns true.
pub async fn run(fp: Arc<Fastpath>, db: Db, node_id: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        let child = Command::new(&fp.bin)
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
                    let hb = Heartbeat {
                        versions: [("slowpath".to_owned(), env!("CARGO_PKG_VERSION").to_owned())].into(),
                        ..Heartbeat::default()
                    };
                    if let Err(e) = nodes::heartbeat(&db, &node_id, &hb).await {
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

/// SIGTERM, then SIGKILL if it has not gone within 3 s.
async fn terminate(child: &mut tokio::process::Child, pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    tracing::info!(pid, "fastpath stopped");
}
