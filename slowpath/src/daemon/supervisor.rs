//! Runs the fastpath as a child: restarts it when it dies (with backoff),
//! stops it on shutdown, and heartbeats the local node while it runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shm::InstanceDir;
use slowpath::domain::nodes::{self, Heartbeat};
use slowpath::store::db::Db;
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

/// Builds the local node's heartbeat from what the fastpath exposes: its
/// counters file (sessions, proxies, bytes) and /proc (CPU, memory).
struct Probe {
    stats: PathBuf,
    last: Option<(std::time::Instant, u64, u64, u64)>,
}

impl Probe {
    fn new(fp: &Fastpath) -> Probe {
        Probe {
            stats: fp.stats_file(),
            last: None,
        }
    }

    fn sample(&mut self, pid: i32) -> Heartbeat {
        let mut hb = Heartbeat {
            versions: [
                ("slowpath".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("fastpath".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ]
            .into(),
            ..Heartbeat::default()
        };
        let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
        if let Some(workers) = std::fs::read_to_string(&self.stats)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["workers"].as_array().cloned())
        {
            for w in workers {
                let n = |k: &str| w[k].as_i64().unwrap_or(0).max(0) as u64;
                hb.connections += n("sessions");
                hb.proxies += n("proxies");
                bytes_in += n("bytes_in");
                bytes_out += n("bytes_out");
            }
        }
        let ticks = proc_cpu_ticks(pid).unwrap_or(0);
        hb.mem_bytes = proc_rss_bytes(pid).unwrap_or(0);
        let now = std::time::Instant::now();
        if let Some((then, bin, bout, t0)) = self.last {
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            hb.bandwidth_in_bps = (bytes_in.saturating_sub(bin) as f64 * 8.0 / secs) as u64;
            hb.bandwidth_out_bps = (bytes_out.saturating_sub(bout) as f64 * 8.0 / secs) as u64;
            // SAFETY: sysconf is a plain libc query.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            hb.cpu_percent = ticks.saturating_sub(t0) as f64 / hz / secs * 100.0;
        }
        self.last = Some((now, bytes_in, bytes_out, ticks));
        hb
    }
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process, bytes.
fn proc_rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    let mut probe = Probe::new(fp);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if running_fastpath(&fp.shm) != Some(pid) {
                    tracing::warn!(pid, "adopted fastpath exited; starting a new one");
                    return Some(());
                }
                beats += 1;
                if let (true, Some(db)) = (beats % 20 == 1, db) {
                    if let Err(e) = nodes::heartbeat(db, node_id, &probe.sample(pid)).await {
                        tracing::warn!(error = %e, "local heartbeat failed");
                    }
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
        let mut probe = Probe::new(&fp);
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = beat.tick() => {
                    let Some(db) = &db else { continue };
                    if let Err(e) = nodes::heartbeat(db, &node_id, &probe.sample(pid as i32)).await {
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
