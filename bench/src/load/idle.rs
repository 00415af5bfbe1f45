//! Idle connections: open `N` TCP connections to the target, optionally at a
//! fixed ramp rate, send one byte on each (so a tunnel has to set up the
//! work connection behind it) and, when the target echoes, read that byte
//! back (or, against an HTTP target, make one keep-alive request and read
//! its whole response); then keep them all open for a while and see what
//! they cost in the resident memory of a given process (the tunnel under
//! test).
//!
//! The soft `RLIMIT_NOFILE` of this process is raised to its hard limit
//! first, since tens of thousands of sockets need as many descriptors.

use super::{bytes_each, rss_of};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How many connections, how fast, whose memory.
#[derive(Debug, Clone)]
pub struct IdleOpts {
    /// Connections to open and keep open.
    pub conns: usize,
    /// Connections opened per second; 0 opens them as fast as possible.
    pub ramp_per_sec: u32,
    /// How long all of them stay open after the last one is opened; the
    /// "after" memory is read at its end.
    pub hold: Duration,
    /// Process whose resident set is measured (`None`: no memory figures).
    pub pid_to_measure: Option<u32>,
    /// Whether the target echoes, so each connection reads its byte back.
    pub expect_echo: bool,
    /// Whether the target answers HTTP: each connection makes one
    /// keep-alive request instead of sending a byte.
    pub http: bool,
    /// Limit on each connect and on the read of the echoed byte.
    pub timeout: Duration,
}

impl Default for IdleOpts {
    /// The "10 000 idle connections" case, as fast as possible.
    fn default() -> Self {
        IdleOpts {
            conns: 10_000,
            ramp_per_sec: 0,
            hold: Duration::from_secs(2),
            pid_to_measure: None,
            expect_echo: true,
            http: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Outcome of one idle-connection run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub conns: usize,
    /// Connections that opened (and, with `expect_echo`, echoed their byte).
    pub opened: u64,
    /// Connections that failed to open, to send, or to echo in time.
    pub failed: u64,
    /// Seconds spent opening them all.
    pub open_s: f64,
    /// Soft `RLIMIT_NOFILE` of this process after raising it.
    pub nofile_limit: u64,
    /// Measured process's VmRSS in KiB before the first connection.
    pub rss_before_kib: Option<u64>,
    /// Measured process's VmRSS in KiB with all connections open, at the end
    /// of the hold.
    pub rss_after_kib: Option<u64>,
    /// `(rss_after - rss_before) / opened`, in bytes (may be negative).
    pub bytes_per_conn: Option<f64>,
}

/// Open files the harness asks for: enough for 50k idle connections
/// through an in-process client (about eight descriptors each).
const WANT_NOFILE: u64 = 262_144;

/// Raises `RLIMIT_NOFILE` (soft and, where permitted, hard) to
/// 262,144, or the soft limit to the hard limit where raising the
/// hard one is not permitted; returns the soft limit in force afterwards.
/// Processes the harness starts inherit it.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_max < WANT_NOFILE {
            let wanted = libc::rlimit {
                rlim_cur: WANT_NOFILE,
                rlim_max: WANT_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return Ok(WANT_NOFILE);
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Ok(lim.rlim_cur)
}

fn open_one(target: SocketAddr, opts: &IdleOpts) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&target, opts.timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(opts.timeout))?;
    if opts.http {
        s.set_read_timeout(Some(opts.timeout))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        read_response(&mut s)?;
        return Ok(s);
    }
    s.write_all(b"i")?;
    if opts.expect_echo {
        s.set_read_timeout(Some(opts.timeout))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        if b != *b"i" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
        }
    }
    Ok(s)
}

/// Reads one response with a Content-Length body (what the harness's
/// HTTP backend sends); a 2xx or an error.
fn read_response(s: &mut TcpStream) -> io::Result<()> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = crate::backend::find_head_end(&buf) {
            break end;
        }
        match s.read(&mut chunk)? {
            0 => return Err(bad("closed before a response")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("response head too long"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 2") {
        return Err(bad("not a 2xx response"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad("no Content-Length"))?;
    let mut left = (head_end + len).saturating_sub(buf.len());
    while left > 0 {
        match s.read(&mut chunk[..left.min(4096)])? {
            0 => return Err(bad("closed inside a response")),
            n => left -= n,
        }
    }
    Ok(())
}

/// Opens the connections, holds them, measures, and closes them all.
/// Fails only if the descriptor limit cannot be read; every connection
/// problem counts in `failed`.
pub fn run(target: SocketAddr, opts: IdleOpts) -> io::Result<IdleResult> {
    let nofile_limit = raise_nofile()?;
    let rss_before_kib = rss_of(opts.pid_to_measure);
    let mut open = Vec::with_capacity(opts.conns);
    let mut failed = 0u64;
    let start = Instant::now();
    for i in 0..opts.conns {
        if opts.ramp_per_sec > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(opts.ramp_per_sec));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        match open_one(target, &opts) {
            Ok(s) => open.push(s),
            Err(_) => failed += 1,
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    std::thread::sleep(opts.hold);
    let rss_after_kib = rss_of(opts.pid_to_measure);
    let opened = open.len() as u64;
    drop(open);
    let bytes_per_conn = bytes_each(rss_before_kib, rss_after_kib, opened);
    Ok(IdleResult {
        conns: opts.conns,
        opened,
        failed,
        open_s,
        nofile_limit,
        rss_before_kib,
        rss_after_kib,
        bytes_per_conn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::load::testing::closed_port;

    #[test]
    fn two_hundred_idle_conns_to_echo_all_open() {
        let b = Backend::echo().unwrap();
        let r = run(
            b.addr(),
            IdleOpts {
                conns: 200,
                hold: Duration::from_millis(100),
                pid_to_measure: Some(std::process::id()),
                ..IdleOpts::default()
            },
        )
        .unwrap();
        assert_eq!(r.opened, 200, "{r:?}");
        assert_eq!(r.failed, 0, "{r:?}");
        assert!(
            r.rss_before_kib.is_some() && r.rss_after_kib.is_some(),
            "{r:?}"
        );
        assert!(r.bytes_per_conn.is_some(), "{r:?}");
        assert!(r.nofile_limit >= 256, "{r:?}");
        assert_eq!(b.bytes(), 200);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["opened"], 200);
    }

    #[test]
    fn http_idle_conns_each_make_one_request() {
        let b = Backend::http(1024).unwrap();
        let r = run(
            b.addr(),
            IdleOpts {
                conns: 50,
                hold: Duration::from_millis(50),
                http: true,
                ..IdleOpts::default()
            },
        )
        .unwrap();
        assert_eq!((r.opened, r.failed), (50, 0), "{r:?}");
        // Backend::http counts requests answered.
        assert_eq!(b.bytes(), 50);
        // An echo target is not HTTP: every connection fails.
        let e = Backend::echo().unwrap();
        let r = run(
            e.addr(),
            IdleOpts {
                conns: 3,
                hold: Duration::from_millis(10),
                http: true,
                timeout: Duration::from_millis(500),
                ..IdleOpts::default()
            },
        )
        .unwrap();
        assert_eq!((r.opened, r.failed), (0, 3), "{r:?}");
    }

    #[test]
    fn ramp_paces_the_opening() {
        let b = Backend::echo().unwrap();
        let r = run(
            b.addr(),
            IdleOpts {
                conns: 10,
                ramp_per_sec: 50,
                hold: Duration::ZERO,
                ..IdleOpts::default()
            },
        )
        .unwrap();
        assert_eq!((r.opened, r.failed), (10, 0), "{r:?}");
        // The 10th is due at 9/50 s.
        assert!(r.open_s >= 0.17, "{r:?}");
        assert_eq!(r.rss_before_kib, None);
        assert_eq!(r.bytes_per_conn, None);
    }

    #[test]
    fn closed_port_counts_failures() {
        let r = run(
            closed_port(),
            IdleOpts {
                conns: 5,
                hold: Duration::ZERO,
                ..IdleOpts::default()
            },
        )
        .unwrap();
        assert_eq!((r.opened, r.failed), (0, 5), "{r:?}");
    }
}
