//! Login storm: `T` threads each log in to an frp server with a fresh
//! client (no run_id, so the server makes a new session every time), record
//! the time from the start of the connect to the LoginResp, drop the
//! connection like a killed frpc, and start over until the duration is up.
//!
//! Every attempt is a success, a refusal (the server answered with an error
//! in LoginResp, e.g. a wrong token) or a failure (connect, TLS, protocol,
//! or no answer within the timeout). The measuring side is the crate's own
//! [`Client`], which starts a few threads per login (control reader, and
//! with tcpMux the session's reader and timer, plus a deadline watchdog):
//! a few tens of microseconds per attempt that the figures include.

use super::{merge, new_histogram, per_sec, record, run_workers, Percentiles};
use crate::client::{Client, ClientError, ClientOpts};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How many logins at once, for how long, how.
#[derive(Debug, Clone)]
pub struct LoginOpts {
    /// Worker threads, each with one login in progress at a time.
    pub threads: usize,
    /// How long the workers keep logging in.
    pub duration: Duration,
    /// auth.token.
    pub token: String,
    /// transport.tls.enable.
    pub tls: bool,
    /// transport.tcpMux.
    pub mux: bool,
    /// Limit on each step of a login: connect, TLS handshake, LoginResp.
    pub timeout: Duration,
}

impl Default for LoginOpts {
    /// 8 workers for 5 s, plain TCP with tcpMux (frpc's default minus TLS).
    fn default() -> Self {
        LoginOpts {
            threads: 8,
            duration: Duration::from_secs(5),
            token: String::new(),
            tls: false,
            mux: true,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Outcome of one login storm. Attempts = `logins + refused + failures`.
#[derive(Debug, Clone, Serialize)]
pub struct LoginResult {
    pub threads: usize,
    /// Wall time the workers ran, in seconds.
    pub duration_s: f64,
    /// Logins the server accepted.
    pub logins: u64,
    /// Attempts that failed other than by refusal: connect, TLS, protocol
    /// errors, timeouts.
    pub failures: u64,
    /// Attempts the server answered with an error (`ClientError::Refused`).
    pub refused: u64,
    /// `logins / duration_s`.
    pub logins_per_sec: f64,
    /// What the failures were: each distinct error (the first
    /// [`FAILURE_KINDS`] of them) and how often it happened.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_kinds: BTreeMap<String, u64>,
    /// Connect to LoginResp, of the accepted logins.
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// Distinct failure messages a run keeps (more are counted, not named).
pub const FAILURE_KINDS: usize = 8;

#[derive(Default)]
struct Counts {
    logins: u64,
    failures: u64,
    refused: u64,
    kinds: BTreeMap<String, u64>,
}

impl Counts {
    fn failed(&mut self, why: String) {
        self.failures += 1;
        self.name(why, 1);
    }

    fn name(&mut self, why: String, n: u64) {
        if self.kinds.len() < FAILURE_KINDS || self.kinds.contains_key(&why) {
            *self.kinds.entry(why).or_default() += n;
        }
    }
}

/// Runs the workers against the frp server at `server` and totals them.
/// Never fails: every problem is counted (a worker thread that cannot be
/// started is simply absent from the totals).
pub fn run(server: SocketAddr, opts: LoginOpts) -> LoginResult {
    let start = Instant::now();
    let end = start + opts.duration;
    let results = {
        let opts = opts.clone();
        run_workers("login", opts.threads, move |_k| worker(server, &opts, end))
    };
    let (c, hist) = merge(results, |t, c| {
        t.logins += c.logins;
        t.failures += c.failures;
        t.refused += c.refused;
        for (why, n) in c.kinds {
            t.name(why, n);
        }
    });
    let duration_s = start.elapsed().as_secs_f64();
    LoginResult {
        threads: opts.threads,
        duration_s,
        logins: c.logins,
        failures: c.failures,
        refused: c.refused,
        logins_per_sec: per_sec(c.logins, duration_s),
        failure_kinds: c.kinds,
        latency: Percentiles::of(&hist),
    }
}

fn worker(server: SocketAddr, opts: &LoginOpts, end: Instant) -> (Counts, Histogram<u64>) {
    let mut c = Counts::default();
    let mut hist = new_histogram();
    let mut copts = ClientOpts::new(server, &opts.token);
    copts.tls = opts.tls;
    copts.mux = opts.mux;
    copts.timeout = Some(opts.timeout);
    // No pool: the server would ask each session for a work connection
    // right after the LoginResp, and the client, killed by then, would
    // still dial some of them. Those name a session that is gone, never
    // identify, and count against the source's pre-auth rate like an
    // attacker's: a storm of them is not a storm of logins.
    copts.pool_count = 0;
    // Empty run_id (ClientOpts' default): a new session every time, never
    // the reclaiming of an earlier one.
    while Instant::now() < end {
        let t = Instant::now();
        match Client::login(copts.clone()) {
            Ok(client) => {
                record(&mut hist, t.elapsed());
                c.logins += 1;
                // Ends the connection and with it the client's threads.
                client.kill();
            }
            Err(ClientError::Refused(_)) => c.refused += 1,
            Err(e) => {
                c.failed(e.to_string());
                // A refused connect returns at once; back off a little so a
                // dead server does not turn the run into a busy loop.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    (c, hist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::testing::closed_port;

    #[test]
    fn closed_port_counts_failures() {
        let r = run(
            closed_port(),
            LoginOpts {
                threads: 2,
                duration: Duration::from_millis(200),
                ..LoginOpts::default()
            },
        );
        assert_eq!((r.logins, r.refused), (0, 0), "{r:?}");
        assert!(r.failures > 0, "{r:?}");
        // Every failure is named, and each is a connect error.
        let named: u64 = r.failure_kinds.values().sum();
        let io = r.failure_kinds.keys().all(|k| k.starts_with("i/o"));
        assert!(named == r.failures && io, "{r:?}");
        assert_eq!(r.logins_per_sec, 0.0);
        assert_eq!(r.latency, Percentiles::default());
    }

    #[test]
    fn silent_server_is_a_timeout_failure() {
        // Accepts (via the backlog) but never answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let r = run(
            l.local_addr().unwrap(),
            LoginOpts {
                threads: 2,
                duration: Duration::from_millis(100),
                timeout: Duration::from_millis(300),
                ..LoginOpts::default()
            },
        );
        assert_eq!((r.logins, r.refused, r.failures), (0, 0, 2), "{r:?}");
        // Each worker waited out its timeout once.
        assert!(r.duration_s >= 0.3 && r.duration_s < 2.0, "{r:?}");
    }
}
