//! Launching the real binaries under test and reading their figures from
//! /proc.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ports [`free_port`] hands out: below the kernel's ephemeral range
/// (32768 and up by default), where any outgoing connection may take a
/// port between the check and the bind (busy tests open thousands), and
/// above the default invite pool (10000-10999).
const FREE_PORTS: std::ops::Range<u16> = 11000..20000;
/// Where [`free_port_run`] puts runs of ports (proxy pools), apart from
/// single ports.
const FREE_RUNS: std::ops::Range<u16> = 20000..32000;

/// A pseudo-random number, different per call and per process.
fn spread() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// Whether `port` can be listened on, on every address, right now.
fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Takes `ports` for this process if none was handed out before and all
/// can be listened on now. A port handed out is not handed out again by
/// this process: tests run in parallel threads, and a port one of them
/// picked but whose server has not bound it yet looks free to another
/// (a CI run once failed with "Address already in use" that way). The
/// last [`REMEMBERED`] are remembered, so that a long bench run, which
/// starts servers by the thousand, does not run out.
fn claim(ports: std::ops::RangeInclusive<u16>) -> bool {
    static GIVEN: Mutex<std::collections::VecDeque<u16>> =
        Mutex::new(std::collections::VecDeque::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if ports.clone().any(|p| given.contains(&p)) || !ports.clone().all(bindable) {
        return false;
    }
    given.extend(ports);
    while given.len() > REMEMBERED {
        given.pop_front();
    }
    true
}

/// How many handed-out ports [`claim`] remembers: under half of
/// [`FREE_PORTS`], so that a free one is still found at random.
const REMEMBERED: usize = 4096;

/// A TCP port nobody listens on now, and not handed out before in this
/// process (racy against other processes by nature; fine for tests).
pub fn free_port() -> u16 {
    let span = u64::from(FREE_PORTS.end - FREE_PORTS.start);
    for _ in 0..1000 {
        let port = FREE_PORTS.start + (spread() % span) as u16;
        if claim(port..=port) {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The first of `len` consecutive ports nobody listens on now, for a
/// proxy port pool, none handed out before in this process (racy against
/// other processes by nature; fine for tests).
pub fn free_port_run(len: u16) -> u16 {
    let span = u64::from(FREE_RUNS.end - FREE_RUNS.start - len);
    for _ in 0..1000 {
        let base = FREE_RUNS.start + (spread() % span) as u16;
        if claim(base..=base + len) {
            return base;
        }
    }
    FREE_RUNS.start
}

/// CPUs online on this machine (not only those this process may use).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// Parses a CPU list as taskset and /sys write it: `0-7,12,14-15`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("{part:?} is not a CPU number or range"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("{part:?}: range runs backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(format!("{s:?}: CPU number too large"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn cpu_set(cpus: &[usize]) -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("CPU {c} out of range"),
            ));
        }
        // SAFETY: c is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// Confines the calling thread, and every thread it starts from now on,
/// to `cpus` (call it before starting threads to confine a process).
pub fn pin_this_thread(cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus)?;
    // SAFETY: the set is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs this process may run on (its `Cpus_allowed_list`), or every
/// online CPU where that cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            parse_cpu_list(list).ok()
        })
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| (0..online_cpus()).collect())
}

/// Wait until something accepts on `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process whose stderr is captured line by line.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start `bin` with `args`, capturing stderr (and stdout).
    pub fn spawn(bin: &Path, args: &[&str]) -> std::io::Result<Daemon> {
        let level = std::env::var("TOTORO_TEST_LOG").unwrap_or_else(|_| "info".into());
        Daemon::spawn_logging(bin, args, &level)
    }

    /// Like [`Daemon::spawn`] with `RUST_LOG` set to `level` (benchmarks
    /// run servers at `warn` so that logging is not what they measure).
    pub fn spawn_logging(bin: &Path, args: &[&str], level: &str) -> std::io::Result<Daemon> {
        Daemon::spawn_logging_on(bin, args, level, &[])
    }

    /// Like [`Daemon::spawn_logging`], the process (and every thread it
    /// starts) confined to `cpus` from its first instruction; `cpus` empty:
    /// wherever this process may run.
    pub fn spawn_logging_on(
        bin: &Path,
        args: &[&str],
        level: &str,
        cpus: &[usize],
    ) -> std::io::Result<Daemon> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !cpus.is_empty() {
            let set = cpu_set(cpus)?;
            use std::os::unix::process::CommandExt;
            // SAFETY: sched_setaffinity is async-signal-safe, and the set
            // was built before the fork; nothing here allocates.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let l = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("TOTORO_TEST_ECHO").is_some() {
                        eprintln!("[daemon] {line}");
                    }
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        Ok(Daemon { child, log })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.log().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal, unless the process has already exited.
    pub fn signal(&mut self, sig: i32) {
        // Once `try_wait`/`wait` have reaped the child its pid is free for
        // another process: signal only a child not reaped yet.
        if !self.alive() {
            return;
        }
        // SAFETY: kill(2) touches no memory of ours; the pid is our child's,
        // which `alive` just found running, and only this Daemon reaps it,
        // so the number cannot have been given to another process.
        unsafe {
            libc_kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit up to `limit`; returns the exit code if it exited.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// CPU seconds (user + system) used so far, from /proc/PID/stat.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// Peak resident set (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current resident set (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// CPU seconds (user + system) of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Current resident set (VmRSS) of a process in KiB; 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Hands the memory this process has freed back to the system (glibc's
/// malloc_trim; nothing elsewhere): after a load that used many threads,
/// glibc keeps their arenas' freed memory, and the harness would carry
/// hundreds of MiB into the next measurement.
pub fn trim_own_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks glibc's own heaps; it
    // takes no pointer of ours and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Open file descriptors of a process (its sockets, mostly); None if they
/// cannot be listed.
pub fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Peak resident set (VmHWM) of a process in KiB; 0 if it cannot be read.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// `promtool check metrics` (Debian's prometheus) on `text`: None when
/// promtool is not installed, else its verdict with what it said.
pub fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write as _;
    let promtool = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([std::path::PathBuf::from("/usr/bin")])
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())?;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let _ = child.stdin.take()?.write_all(text.as_bytes());
    let out = child.wait_with_output().ok()?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

#[cfg(test)]
mod tests {
    /// Tests of one binary run in parallel threads and pick ports before
    /// their servers bind them: no port is handed out twice. 500 picks at
    /// random from 9,000 ports would repeat one about 14 times over.
    #[test]
    fn a_port_is_handed_out_once_per_process() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let p = super::free_port();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let run = super::free_port_run(10);
        assert!((run..=run + 10).all(|p| !seen.contains(&p)));
    }
}
