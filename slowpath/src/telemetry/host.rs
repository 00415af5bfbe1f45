//! What a relay host reports in its heartbeat (seed 000 §3.3: CPU, memory,
//! disk, bandwidth, versions, connections, proxies), read from its
//! fastpath's counters file and /proc: `up` for its own node and the node
//! agent ([`crate::agent`]) use it alike.

use std::path::{Path, PathBuf};

use crate::domain::nodes::Heartbeat;

/// Builds a node's heartbeat from what its fastpath exposes: its counters
/// file (sessions, proxies, bytes), /proc (CPU, memory) and the file
/// system under its policy directory (disk).
pub struct Probe {
    stats: PathBuf,
    disk: PathBuf,
    last: Option<(std::time::Instant, u64, u64, u64)>,
}

impl Probe {
    /// A probe of the fastpath writing `stats` (its `--stats-file`), on
    /// the file system holding `disk`.
    pub fn new(stats: PathBuf, disk: PathBuf) -> Probe {
        Probe {
            stats,
            disk,
            last: None,
        }
    }

    /// Total and available bytes of the disk it watches (0 when unknown).
    pub fn disk(&self) -> (u64, u64) {
        disk_space(&self.disk).unwrap_or((0, 0))
    }

    /// A heartbeat for the fastpath `pid` (rates since the last sample).
    pub fn sample(&mut self, pid: i32) -> Heartbeat {
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
        (hb.disk_total_bytes, hb.disk_free_bytes) = self.disk();
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

/// Total and available bytes of the file system holding `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a plain C struct of integers, for which all zeros is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) fills the struct we own from a NUL-terminated path.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}
