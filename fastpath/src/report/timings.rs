//! Latencies the workers observe, as Prometheus histograms
//! ([`crate::report::metrics`] exposes them).

use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

type Labels = Vec<(String, String)>;

pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Latencies the workers observe (a histogram per worker and outcome).
#[derive(Clone)]
pub struct Timings {
    /// From a Login read to its decision (token, policy, limits, the
    /// session registered), seconds, by worker and outcome.
    login: Histograms,
    /// From the slowpath compiling a policy table to this worker having
    /// applied it (sessions it no longer allows closed), seconds.
    propagation: Histograms,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            login: Family::new_with_constructor(|| {
                Histogram::new([
                    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
                    0.1,
                ])
            }),
            propagation: Family::new_with_constructor(|| {
                Histogram::new([
                    1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
        }
    }
}

impl Timings {
    /// Worker `worker`'s histograms, looked up once: a login or a table
    /// applied then costs no label allocation and no family lookup.
    pub fn for_worker(&self, worker: usize) -> WorkerTimings {
        let outcome = |o: &str| {
            let mut l = labels(worker);
            l.push(("outcome".into(), o.into()));
            self.login.get_or_create(&l).clone()
        };
        WorkerTimings {
            admitted: outcome("admitted"),
            refused: outcome("refused"),
            propagation: self.propagation.get_or_create(&labels(worker)).clone(),
        }
    }

    /// The login histograms, to register.
    pub fn login_family(&self) -> Histograms {
        self.login.clone()
    }

    /// The propagation histograms, to register.
    pub fn propagation_family(&self) -> Histograms {
        self.propagation.clone()
    }
}

/// One worker's histograms ([`Timings::for_worker`]).
pub struct WorkerTimings {
    admitted: Histogram,
    refused: Histogram,
    propagation: Histogram,
}

impl WorkerTimings {
    /// A login decided in `took`.
    pub fn login(&self, admitted: bool, took: Duration) {
        let h = if admitted {
            &self.admitted
        } else {
            &self.refused
        };
        h.observe(took.as_secs_f64());
    }

    /// A table made at `created_ms` applied at `now_ms`.
    pub fn propagated(&self, created_ms: u64, now_ms: u64) {
        let secs = now_ms.saturating_sub(created_ms) as f64 / 1000.0;
        self.propagation.observe(secs);
    }
}

fn labels(worker: usize) -> Labels {
    vec![("worker".into(), worker.to_string())]
}
