//! The gate in front of identification: how many connections that have not
//! yet said who they are (no Login or NewWorkConn read yet, or a yamux
//! session whose Login has not succeeded) one source address and one worker
//! may hold, and how fast a source may open new ones.
//!
//! Each connection takes a [`Ticket`] when it is accepted and gives it back
//! when it is identified or closed, whichever comes first. A source also
//! spends a token from its bucket per new connection; a connection that
//! identifies successfully (a Login admitted, a work connection taken) gets
//! its token back, so a real frpc, however many work connections it opens,
//! never runs out, while one that keeps opening connections that never log
//! in does. A connection over a limit is closed at once; the caller logs and
//! counts it.
//!
//! All of this is per worker (no locks on the accept path). Connections
//! from one source spread over the workers by the kernel's hash of their
//! ports, so each worker holds its share of the configured per-source
//! figures (rounded up). IPv6 sources count per /64: one host owns at least
//! that much address space.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The limits one worker enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Unidentified connections one source may hold on this worker.
    pub per_source: u32,
    /// Unidentified connections this worker holds, all sources together.
    pub per_worker: u32,
    /// New connections per second a source may open that do not identify.
    pub rate: f64,
    /// How many such connections a source may open at once before the rate
    /// applies.
    pub burst: f64,
}

impl Limits {
    /// Worker `share` of the process-wide figures (`workers` workers).
    pub fn share(per_source: u32, per_worker: u32, rate: u32, workers: usize) -> Limits {
        let workers = workers.max(1) as u32;
        let per_source = per_source.div_ceil(workers).max(1);
        Limits {
            per_source,
            per_worker,
            rate: f64::from(rate) / f64::from(workers),
            // A source may open twice its connection cap in one go.
            burst: f64::from(per_source) * 2.0,
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds as many unidentified connections as it may.
    Source,
    /// The worker holds as many unidentified connections as it may.
    Worker,
    /// Its source opened too many that never identified, too fast.
    Rate,
}

impl Refused {
    /// The config key behind the limit, for log lines.
    pub fn key(self) -> &'static str {
        match self {
            Refused::Source => "fastpath.preAuthPerSource",
            Refused::Worker => "fastpath.preAuthPerWorker",
            Refused::Rate => "fastpath.preAuthRate",
        }
    }
}

/// A source as the gate counts it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The key for `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(u128::from(u32::from(v4))),
                None => SourceKey(u128::from(v6) & !((1u128 << 64) - 1)),
            },
        }
    }
}

#[derive(Debug)]
struct Source {
    live: u32,
    tokens: f64,
    at: Instant,
}

/// One worker's gate.
#[derive(Debug)]
pub struct PreAuth {
    limits: Limits,
    sources: RefCell<HashMap<SourceKey, Source>>,
    live: Cell<u32>,
    last_sweep: Cell<Instant>,
    /// Refusals since the last log line about them, and when that was.
    unlogged: Cell<u64>,
    last_log: Cell<Option<Instant>>,
}

/// How often a worker logs that it turns connections away.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often sources with nothing to remember are forgotten.
const SWEEP: Duration = Duration::from_secs(1);

impl PreAuth {
    /// A gate with these limits.
    pub fn new(limits: Limits) -> Rc<PreAuth> {
        Rc::new(PreAuth {
            limits,
            sources: RefCell::new(HashMap::new()),
            live: Cell::new(0),
            last_sweep: Cell::new(Instant::now()),
            unlogged: Cell::new(0),
            last_log: Cell::new(None),
        })
    }

    /// Counts a refusal; returns how many to report in a log line when one
    /// is due (the first, then at most one line per 10 s), so that a flood
    /// does not flood the log too.
    pub fn note_refusal(&self, now: Instant) -> Option<u64> {
        let n = self.unlogged.get() + 1;
        let due = match self.last_log.get() {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= LOG_EVERY,
        };
        if due {
            self.unlogged.set(0);
            self.last_log.set(Some(now));
            Some(n)
        } else {
            self.unlogged.set(n);
            None
        }
    }

    /// A new connection from `ip` at `now`: its ticket, or why not.
    pub fn enter(self: &Rc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refused> {
        self.sweep(now);
        if self.live.get() >= self.limits.per_worker {
            return Err(Refused::Worker);
        }
        let key = SourceKey::of(ip);
        let mut sources = self.sources.borrow_mut();
        let src = sources.entry(key).or_insert(Source {
            live: 0,
            tokens: self.limits.burst,
            at: now,
        });
        self.refill(src, now);
        if src.live >= self.limits.per_source {
            return Err(Refused::Source);
        }
        if src.tokens < 1.0 {
            return Err(Refused::Rate);
        }
        src.tokens -= 1.0;
        src.live += 1;
        self.live.set(self.live.get() + 1);
        Ok(Ticket {
            gate: self.clone(),
            key,
        })
    }

    /// A connection from `ip` identified successfully: its source gets the
    /// token it spent back.
    pub fn identified(&self, ip: IpAddr) {
        let now = Instant::now();
        if let Some(src) = self.sources.borrow_mut().get_mut(&SourceKey::of(ip)) {
            self.refill(src, now);
            src.tokens = (src.tokens + 1.0).min(self.limits.burst);
        }
    }

    /// Unidentified connections on this worker now.
    pub fn live(&self) -> u32 {
        self.live.get()
    }

    /// Sources remembered now (for tests: the table does not grow without
    /// bound).
    pub fn sources(&self) -> usize {
        self.sources.borrow().len()
    }

    fn refill(&self, src: &mut Source, now: Instant) {
        let secs = now.saturating_duration_since(src.at).as_secs_f64();
        src.tokens = (src.tokens + secs * self.limits.rate).min(self.limits.burst);
        src.at = now;
    }

    /// Forgets sources that hold no connection and whose bucket is full
    /// again: they would start over exactly the same.
    fn sweep(&self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep.get()) < SWEEP {
            return;
        }
        self.last_sweep.set(now);
        let (rate, burst) = (self.limits.rate, self.limits.burst);
        self.sources.borrow_mut().retain(|_, s| {
            let secs = now.saturating_duration_since(s.at).as_secs_f64();
            s.live > 0 || s.tokens + secs * rate < burst
        });
    }

    fn leave(&self, key: SourceKey) {
        self.live.set(self.live.get().saturating_sub(1));
        if let Some(src) = self.sources.borrow_mut().get_mut(&key) {
            src.live = src.live.saturating_sub(1);
        }
    }
}

/// One unidentified connection's place at the gate; dropping it gives the
/// place back.
#[derive(Debug)]
pub struct Ticket {
    gate: Rc<PreAuth>,
    key: SourceKey,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.leave(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gate(per_source: u32, per_worker: u32, rate: f64, burst: f64) -> Rc<PreAuth> {
        PreAuth::new(Limits {
            per_source,
            per_worker,
            rate,
            burst,
        })
    }

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_places_back() {
        let g = gate(3, 100, 1000.0, 1000.0);
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let held: Vec<_> = (0..3).map(|_| g.enter(a, now).unwrap()).collect();
        assert_eq!(g.enter(a, now).unwrap_err(), Refused::Source);
        // Another source is not affected.
        let _other = g.enter(ip("192.0.2.2"), now).unwrap();
        drop(held);
        assert!(g.enter(a, now).is_ok());
        assert_eq!(g.live(), 1);
    }

    #[test]
    fn the_worker_cap_counts_all_sources() {
        let g = gate(10, 4, 1000.0, 1000.0);
        let now = Instant::now();
        let _held: Vec<_> = (1..=4)
            .map(|i| g.enter(ip(&format!("198.51.100.{i}")), now).unwrap())
            .collect();
        assert_eq!(
            g.enter(ip("198.51.100.9"), now).unwrap_err(),
            Refused::Worker
        );
    }

    #[test]
    fn connections_that_never_identify_run_the_bucket_dry_and_identified_ones_do_not() {
        let g = gate(1000, 1000, 10.0, 5.0);
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        // A real client: every connection identifies, so it never runs out.
        for _ in 0..50 {
            let t = g.enter(a, t0).unwrap();
            g.identified(a);
            drop(t);
        }
        // An attacker: 5 connections that never identify use the burst up.
        for _ in 0..5 {
            drop(g.enter(a, t0).unwrap());
        }
        assert_eq!(g.enter(a, t0).unwrap_err(), Refused::Rate);
        // 10 per second come back.
        let t1 = t0 + Duration::from_millis(300);
        for _ in 0..3 {
            drop(g.enter(a, t1).unwrap());
        }
        assert_eq!(g.enter(a, t1).unwrap_err(), Refused::Rate);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn forgotten_sources_do_not_pile_up() {
        let g = gate(10, 100_000, 100.0, 2.0);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(g.enter(a, t0).unwrap());
        }
        assert_eq!(g.sources(), 1000);
        // A second later every bucket is full again; the next entry sweeps.
        drop(
            g.enter(ip("10.255.0.1"), t0 + Duration::from_secs(2))
                .unwrap(),
        );
        assert_eq!(g.sources(), 1);
    }

    #[test]
    fn shares_round_up_per_worker() {
        let l = Limits::share(1024, 8192, 200, 3);
        assert_eq!(l.per_source, 342);
        assert_eq!(l.per_worker, 8192);
        assert!((l.rate - 200.0 / 3.0).abs() < 1e-9);
    }
}
