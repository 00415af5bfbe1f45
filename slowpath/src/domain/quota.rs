//! Tenant traffic quotas: bytes (both directions) per UTC day, UTC calendar
//! month or fixed window, counted from the fastpath's `tenant.traffic`
//! samples.
//!
//! Usage lives in `quota_usage`, one row per (token, period start), and is
//! added to inside the event drain's transaction ([`QuotaTracker::record`]),
//! so it commits with the events it came from. Every node sharing the
//! database adds to the same rows: a quota is per tenant, not per node.
//!
//! The tracker keeps each tenant's current-period usage in memory, and from
//! it the set of tenants over quota ([`QuotaTracker::over_quota`]), which the
//! policy compiler reads. The set changes when a sample takes a tenant over
//! its quota, and when a period rolls over or another node's usage shows up
//! ([`QuotaTracker::refresh`], every [`CHECK_INTERVAL`] in
//! [`QuotaTracker::run`]); each change bumps the generation that
//! [`QuotaTracker::subscribe`] watches, so the policy can be recompiled.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use sqlx::Row as _;
use tokio::sync::watch;

use crate::clock::{civil_from_days, days_from_civil, now_ms};
use crate::domain::tenants::{Quota, QuotaPeriod, Tenant};
use crate::error::Result;
use crate::store::db::Db;

/// How often [`QuotaTracker::run`] re-reads usage and looks for period
/// rollovers.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

const DAY_MS: i64 = 86_400_000;

/// The start (unix ms) of the period of kind `period` that contains `now_ms`.
pub fn period_start(period: QuotaPeriod, now_ms: i64) -> i64 {
    match period {
        QuotaPeriod::Day => now_ms.div_euclid(DAY_MS).saturating_mul(DAY_MS),
        QuotaPeriod::Month => {
            let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
            days_from_civil(y, m, 1).saturating_mul(DAY_MS)
        }
        QuotaPeriod::Every(secs) => {
            // Zero is refused when a record is read; here it would divide by
            // zero, so it counts as the shortest window instead.
            let len = i64::try_from(secs.saturating_mul(1000))
                .unwrap_or(i64::MAX)
                .max(1);
            now_ms.div_euclid(len).saturating_mul(len)
        }
    }
}

/// A tenant's usage in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Start of the period (unix ms).
    pub period_start_ms: i64,
    /// Bytes used in it, both directions.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    quotas: HashMap<String, Quota>,
    /// Latest-period usage of each tenant with a quota, as last seen.
    usage: HashMap<String, Usage>,
    over: HashSet<String>,
    generation: u64,
}

impl State {
    fn is_over(&self, token: &str, now_ms: i64) -> bool {
        match (self.quotas.get(token), self.usage.get(token)) {
            (Some(q), Some(u)) => {
                u.period_start_ms == period_start(q.period, now_ms) && u.bytes >= q.bytes
            }
            _ => false,
        }
    }

    /// Merges a usage reading. Usage only grows within a period, so of two
    /// readings of the same period the larger is the newer: a refresh that
    /// read the table just before the drain added to it cannot undo the
    /// drain's update.
    fn merge(&mut self, token: &str, seen: Usage) {
        match self.usage.get_mut(token) {
            Some(u) if u.period_start_ms > seen.period_start_ms => {}
            Some(u) if u.period_start_ms == seen.period_start_ms => {
                u.bytes = u.bytes.max(seen.bytes)
            }
            Some(u) => *u = seen,
            None => {
                self.usage.insert(token.to_owned(), seen);
            }
        }
    }

    /// Recomputes the over-quota set; true when it changed.
    fn recompute(&mut self, now_ms: i64) -> bool {
        let over: HashSet<String> = self
            .quotas
            .keys()
            .filter(|t| self.is_over(t, now_ms))
            .cloned()
            .collect();
        if over == self.over {
            return false;
        }
        self.over = over;
        self.generation += 1;
        true
    }
}

/// Tenants' quota usage and which of them are over quota; shared by the
/// event drain (which records), the policy compiler (which reads) and the
/// periodic check.
#[derive(Debug)]
pub struct QuotaTracker {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl Default for QuotaTracker {
    fn default() -> Self {
        QuotaTracker::new()
    }
}

impl QuotaTracker {
    /// A tracker with no quotas. Give it quotas with [`Self::set_quotas`],
    /// then [`Self::refresh`] it from the database before the first policy
    /// is compiled, so that a restart remembers who is over quota.
    pub fn new() -> QuotaTracker {
        QuotaTracker {
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bumps the watched generation after a change of the over-quota set.
    fn announce(&self, generation: u64) {
        self.changes.send_replace(generation);
    }

    /// Replaces the quotas (token → quota); tokens left out have none. Call
    /// on every compile of the tenant set. A token that gains a quota has
    /// its earlier usage read in by the next [`Self::refresh`].
    pub fn set_quotas(&self, quotas: HashMap<String, Quota>) {
        let mut s = self.lock();
        s.usage.retain(|t, _| quotas.contains_key(t));
        s.quotas = quotas;
        if s.recompute(now_ms()) {
            let generation = s.generation;
            drop(s);
            self.announce(generation);
        }
    }

    /// [`Self::set_quotas`] from validated tenants.
    pub fn set_from_tenants<'a>(&self, tenants: impl IntoIterator<Item = &'a Tenant>) {
        self.set_quotas(
            tenants
                .into_iter()
                .filter_map(|t| Some((t.token().to_owned(), t.quota?)))
                .collect(),
        );
    }

    /// The quota of `token`, if it has one.
    pub fn quota(&self, token: &str) -> Option<Quota> {
        self.lock().quotas.get(token).copied()
    }

    /// Tokens over quota in their current period.
    pub fn over_quota(&self) -> HashSet<String> {
        self.lock().over.clone()
    }

    /// Whether `token` is over quota in its current period.
    pub fn is_over(&self, token: &str) -> bool {
        self.lock().over.contains(token)
    }

    /// `token`'s usage in its latest period seen (which is not the current
    /// one when it has not used anything since a rollover).
    pub fn usage(&self, token: &str) -> Option<Usage> {
        self.lock().usage.get(token).copied()
    }

    /// A receiver of the over-quota set's generation: `changed()` resolves
    /// after every change of [`Self::over_quota`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Adds `bytes` to `token`'s usage in the period containing `now_ms`,
    /// inside the drain's transaction. Tokens without a quota are not
    /// counted.
    ///
    /// The in-memory usage is updated before the transaction commits. The
    /// drain retries a failed batch as a whole, so the committed usage
    /// catches up; if it never does, the next [`Self::refresh`] only ever
    /// raises readings, so the tenant stays marked until its period ends.
    pub async fn record(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        token: &str,
        bytes: u64,
        now_ms: i64,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let Some(quota) = self.quota(token) else {
            return Ok(());
        };
        let start = period_start(quota.period, now_ms);
        // The sum saturates at i64::MAX rather than overflowing, which
        // PostgreSQL would refuse (and fail the drain's transaction with).
        let row = sqlx::query(
            "INSERT INTO quota_usage (token, period_start_ms, bytes, updated_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (token, period_start_ms) DO UPDATE SET \
             bytes = CASE WHEN quota_usage.bytes > 9223372036854775807 - excluded.bytes \
             THEN 9223372036854775807 ELSE quota_usage.bytes + excluded.bytes END, \
             updated_ms = excluded.updated_ms \
             RETURNING bytes",
        )
        .bind(token)
        .bind(start)
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .bind(now_ms)
        .fetch_one(&mut **tx)
        .await?;
        let total = u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0);
        let mut s = self.lock();
        s.merge(
            token,
            Usage {
                period_start_ms: start,
                bytes: total,
            },
        );
        let over = s.is_over(token, now_ms);
        if over != s.over.contains(token) {
            if over {
                s.over.insert(token.to_owned());
                tracing::info!(
                    tenant = token,
                    bytes = total,
                    quota = quota.bytes,
                    "tenant over its traffic quota"
                );
            } else {
                s.over.remove(token);
            }
            s.generation += 1;
            let generation = s.generation;
            drop(s);
            self.announce(generation);
        }
        Ok(())
    }

    /// Reads every quota tenant's current-period usage (as of `now_ms`)
    /// from the database and recomputes the over-quota set; true when the
    /// set changed (subscribers are told). This is what brings tenants back
    /// under quota when a period ends, and what shows usage other nodes
    /// added.
    pub async fn refresh(&self, db: &Db, now_ms: i64) -> Result<bool> {
        // Which period starts to read, and whose usage each holds.
        let mut wanted: HashMap<i64, Vec<String>> = HashMap::new();
        for (token, q) in &self.lock().quotas {
            wanted
                .entry(period_start(q.period, now_ms))
                .or_default()
                .push(token.clone());
        }
        let mut seen = Vec::new();
        for (start, tokens) in wanted {
            let rows =
                sqlx::query("SELECT token, bytes FROM quota_usage WHERE period_start_ms = $1")
                    .bind(start)
                    .fetch_all(db)
                    .await?;
            let mut used = HashMap::with_capacity(rows.len());
            for row in rows {
                let token: String = row.try_get(0)?;
                let bytes = u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
                used.insert(token, bytes);
            }
            for token in tokens {
                let bytes = used.get(&token).copied().unwrap_or(0);
                seen.push((
                    token,
                    Usage {
                        period_start_ms: start,
                        bytes,
                    },
                ));
            }
        }
        let mut s = self.lock();
        for (token, usage) in seen {
            // Quotas may have changed while the database was read.
            if s.quotas.contains_key(&token) {
                s.merge(&token, usage);
            }
        }
        if !s.recompute(now_ms) {
            return Ok(false);
        }
        let (generation, over) = (s.generation, s.over.len());
        drop(s);
        tracing::info!(over, "tenants over quota changed");
        self.announce(generation);
        Ok(true)
    }

    /// Runs [`Self::refresh`] every [`CHECK_INTERVAL`], forever.
    pub async fn run(self: Arc<Self>, db: Db) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh(&db, now_ms()).await {
                tracing::warn!(error = %e, "quota check failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn at(y: i64, m: i64, d: i64, h: i64) -> i64 {
        (days_from_civil(y, m, d) * 24 + h) * 3_600_000
    }

    #[test]
    fn months_start_on_the_first() {
        let p = QuotaPeriod::Month;
        assert_eq!(period_start(p, at(2024, 3, 15, 13)), at(2024, 3, 1, 0));
        assert_eq!(period_start(p, at(2024, 3, 1, 0)), at(2024, 3, 1, 0));
        assert_eq!(period_start(p, at(2024, 3, 1, 0) - 1), at(2024, 2, 1, 0));
        assert_eq!(period_start(p, at(2024, 2, 29, 23)), at(2024, 2, 1, 0));
        // December to January crosses the year.
        assert_eq!(period_start(p, at(2024, 12, 31, 23)), at(2024, 12, 1, 0));
        assert_eq!(period_start(p, at(2025, 1, 1, 0)), at(2025, 1, 1, 0));
        assert_eq!(period_start(p, at(2025, 1, 1, 0) - 1), at(2024, 12, 1, 0));
        assert_eq!(at(2025, 1, 1, 0), 1_735_689_600_000);
    }

    #[test]
    fn days_and_windows() {
        let d = QuotaPeriod::Day;
        assert_eq!(
            period_start(d, at(2024, 2, 29, 23) + 59),
            at(2024, 2, 29, 0)
        );
        assert_eq!(period_start(d, at(2024, 3, 1, 0)), at(2024, 3, 1, 0));
        assert_eq!(period_start(d, -1), -DAY_MS);
        let w = QuotaPeriod::Every(3600);
        assert_eq!(period_start(w, 7_199_999), 3_600_000);
        assert_eq!(period_start(w, 7_200_000), 7_200_000);
        assert_eq!(period_start(QuotaPeriod::Every(0), 1234), 1234);
        assert_eq!(period_start(QuotaPeriod::Every(u64::MAX), i64::MAX - 1), 0);
        assert_eq!(period_start(d, i64::MIN), i64::MIN, "saturates");
        let _ = period_start(QuotaPeriod::Month, i64::MIN);
        let _ = period_start(QuotaPeriod::Month, i64::MAX);
    }

    #[test]
    fn rollover_clears_the_set() {
        let hour = QuotaPeriod::Every(3600);
        let tracker = QuotaTracker::new();
        let quota = Quota {
            bytes: 100,
            period: hour,
            over: crate::domain::tenants::OverQuota::Close,
        };
        {
            let mut s = tracker.lock();
            s.quotas.insert("t".into(), quota);
            s.merge(
                "t",
                Usage {
                    period_start_ms: 3_600_000,
                    bytes: 150,
                },
            );
            assert!(s.recompute(3_600_001));
            assert!(!s.recompute(7_199_999));
            assert!(s.recompute(7_200_000), "next window");
            assert!(s.over.is_empty());
            // An older reading does not replace a newer one.
            s.merge(
                "t",
                Usage {
                    period_start_ms: 0,
                    bytes: 500,
                },
            );
            assert_eq!(s.usage["t"].period_start_ms, 3_600_000);
        }
    }
}
