//! The server's resident memory over an attack: VmRSS before, sampled every
//! 100 ms while the attack runs (with the harness's own alongside, to show
//! that the attacker stayed small), and once more a while after the
//! attacker has gone.
//!
//! Samples can miss a spike between them, so the watch also resets the
//! server's VmHWM at the start (`echo 5 > /proc/PID/clear_refs`, which the
//! harness may do to its own children) and takes the larger of the two as
//! the peak.

use serde::Serialize;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::proc;

/// How often the server's RSS is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What an attack cost the server, in KiB of VmRSS.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Footprint {
    /// Before the attack's first connection.
    pub rss_before_kib: u64,
    /// The most while it lasted: the larger of the samples and VmHWM.
    pub rss_peak_kib: u64,
    /// A while after the attacker disconnected.
    pub rss_after_kib: u64,
    /// Samples taken.
    pub samples: u32,
    /// Whether VmHWM was reset at the start (else only samples count).
    pub hwm_reset: bool,
    /// The RSS at which the attack would stop opening more.
    pub ceiling_kib: u64,
    /// Whether the server reached that ceiling.
    pub hit_ceiling: bool,
    /// This harness's own largest sampled RSS over the attack.
    pub harness_rss_peak_kib: u64,
    /// The server's open descriptors before the attack.
    pub fds_before: Option<u64>,
    /// Its open descriptors when the last RSS is read: more than before
    /// means it still holds some of the attacker's connections, whatever
    /// its allocator has or has not handed back.
    pub fds_after: Option<u64>,
}

/// Samples a process's RSS until finished.
pub struct RssWatch {
    pid: u32,
    before_kib: u64,
    hwm_reset: bool,
    fds_before: Option<u64>,
    ceiling_kib: u64,
    stop: Arc<AtomicBool>,
    over: Arc<AtomicBool>,
    sampler: Option<JoinHandle<Peaks>>,
}

#[derive(Default)]
struct Peaks {
    server_kib: u64,
    harness_kib: u64,
    samples: u32,
}

/// Half of MemAvailable in KiB (8 GiB where it cannot be read).
pub fn default_ceiling_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 2)
        .unwrap_or(8 << 20)
}

impl RssWatch {
    /// Resets `pid`'s VmHWM, reads its VmRSS as "before" and starts
    /// sampling. Fails if its memory cannot be read.
    pub fn start(pid: u32, ceiling_kib: u64) -> io::Result<RssWatch> {
        let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let fds_before = proc::open_fds(pid);
        let before_kib = proc::rss_kib(pid);
        if before_kib == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot read VmRSS of process {pid}"),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let over = Arc::new(AtomicBool::new(false));
        let (st, ov) = (stop.clone(), over.clone());
        let me = std::process::id();
        let sampler = std::thread::Builder::new()
            .name("rss-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut p = Peaks::default();
                while !st.load(Ordering::Acquire) {
                    let kib = proc::rss_kib(pid);
                    p.server_kib = p.server_kib.max(kib);
                    p.harness_kib = p.harness_kib.max(proc::rss_kib(me));
                    p.samples += 1;
                    if kib > ceiling_kib {
                        ov.store(true, Ordering::Release);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
                p
            })?;
        Ok(RssWatch {
            pid,
            before_kib,
            hwm_reset,
            fds_before,
            ceiling_kib,
            stop,
            over,
            sampler: Some(sampler),
        })
    }

    /// Whether the server's RSS has passed the ceiling: the attack should
    /// stop opening more and end.
    pub fn over_ceiling(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Stops sampling (the attacker has gone), waits `after`, reads the
    /// last VmRSS and sums up.
    pub fn finish(mut self, after: Duration) -> Footprint {
        let peaks = self.stop_sampling();
        std::thread::sleep(after);
        let rss_after_kib = proc::rss_kib(self.pid);
        let hwm = if self.hwm_reset {
            proc::peak_rss_kib(self.pid)
        } else {
            0
        };
        Footprint {
            rss_before_kib: self.before_kib,
            rss_peak_kib: peaks.server_kib.max(hwm).max(self.before_kib),
            rss_after_kib,
            samples: peaks.samples,
            hwm_reset: self.hwm_reset,
            ceiling_kib: self.ceiling_kib,
            hit_ceiling: self.over_ceiling(),
            harness_rss_peak_kib: peaks.harness_kib,
            fds_before: self.fds_before,
            fds_after: proc::open_fds(self.pid),
        }
    }

    fn stop_sampling(&mut self) -> Peaks {
        self.stop.store(true, Ordering::Release);
        self.sampler
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop_sampling();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watching_this_process_sees_an_allocation() {
        let w = RssWatch::start(std::process::id(), u64::MAX).unwrap();
        // 64 MiB, touched, held past two samples.
        let v = vec![1u8; 64 << 20];
        std::thread::sleep(SAMPLE_EVERY * 3);
        assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
        drop(v);
        let f = w.finish(Duration::ZERO);
        assert!(f.samples >= 2, "{f:?}");
        assert!(f.rss_peak_kib >= f.rss_before_kib + 60 * 1024, "{f:?}");
        assert!(!f.hit_ceiling, "{f:?}");
    }

    #[test]
    fn an_unreadable_pid_is_an_error() {
        // Above any pid_max Linux allows (2^22).
        assert!(RssWatch::start(u32::MAX, u64::MAX).is_err());
    }
}
