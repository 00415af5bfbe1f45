//! Applied: waiting until the fastpath's workers enforce a published table.
//!
//! Each worker reports the policy generation it enforces in its event
//! ring's header. An API call that changed policy waits (at most
//! [`ENFORCE_WAIT`]) until every worker of the live fastpath reports the
//! generation its change was published in, so that when the call returns
//! the change holds; otherwise it fails with [`Error::Unavailable`] (503)
//! saying how far the workers are and, if the fastpath refused the table,
//! why.

use std::time::{Duration, Instant};

use shm::InstanceDir;

use crate::clock::now_ms;
use crate::error::{Error, Result};

/// How long an API call waits for the fastpath to enforce its change.
pub const ENFORCE_WAIT: Duration = Duration::from_secs(1);

/// Waits for the workers, up to [`ENFORCE_WAIT`] from now (the publish
/// itself may have taken a while on a big table); the returned time counts
/// from `started`. A change not applied by then is in the database and the
/// table but not in force: [`Error::Unavailable`], with what the fastpath
/// said about the table if it refused it.
pub async fn wait_applied(
    shm: &InstanceDir,
    generation: u64,
    started: Instant,
) -> Result<Duration> {
    let waiting = Instant::now();
    let lagging = loop {
        let lagging = lagging_workers(shm, generation);
        if lagging.is_empty() {
            return Ok(started.elapsed());
        }
        if waiting.elapsed() > ENFORCE_WAIT {
            break lagging;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let reporting: Vec<u64> = lagging.iter().filter_map(|l| l.enforces).collect();
    let silent = lagging.len() - reporting.len();
    let oldest = reporting.iter().min().copied();
    let mut how_far = Vec::new();
    if let Some(enforced) = oldest {
        how_far.push(format!(
            "{} worker(s) still enforce generation {enforced}",
            reporting.len()
        ));
    }
    if silent > 0 {
        how_far.push(format!("{silent} worker(s) have not reported one yet"));
    }
    let enforced = oldest.unwrap_or(0);
    let mut reason = format!(
        "the change is recorded but not in force: the fastpath did not apply policy \
         generation {generation} within {} ms ({})",
        ENFORCE_WAIT.as_millis(),
        how_far.join(", ")
    );
    if let Some(why) = refusal_since(shm, started) {
        reason.push_str(&format!("; it refused the table: {why}"));
    }
    tracing::warn!(generation, enforced, %reason, "policy change not applied");
    Err(Error::Unavailable(reason))
}

/// What the fastpath last wrote about a refused table, if it wrote it
/// after `since` (roughly: the refusal note carries a wall-clock ms).
fn refusal_since(shm: &InstanceDir, since: Instant) -> Option<String> {
    let text = String::from_utf8(shm.dir.read(shm::REFUSED_FILE).ok()?).ok()?;
    let (ms, why) = text.trim().split_once(' ')?;
    let ms: i64 = ms.parse().ok()?;
    let since_ms = now_ms() - i64::try_from(since.elapsed().as_millis()).unwrap_or(0) - 1000;
    (ms >= since_ms).then(|| why.to_owned())
}

/// A worker of the live fastpath that does not enforce a generation yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagging {
    /// The worker's id.
    pub worker: u32,
    /// The generation its ring reports; None while it has no ring (the
    /// fastpath is starting, or could not make one).
    pub enforces: Option<u64>,
}

/// The workers of the live fastpath that do not report `generation` (or a
/// later one) in their rings in the directory.
///
/// The live fastpath is the holder of `fastpath.lock` as the kernel names
/// it; rings of any other producer (a stopped fastpath's leftovers, a
/// predecessor's that drains) do not count, and with no fastpath at all
/// there is nothing to wait for (a `serve` without a local fastpath). The
/// holder's note says how many workers it runs: each of them without a
/// ring of its own counts as lagging, for a fastpath holds the lock before
/// its workers make their rings, and a change published in between is not
/// yet known to be in force. Without a readable count (the instant between
/// taking the lock and writing the note), at least one ring is expected.
pub fn lagging_workers(shm: &InstanceDir, generation: u64) -> Vec<Lagging> {
    let Some(live) = shm.dir.holder(shm::LOCK_FILE) else {
        return Vec::new();
    };
    let workers = shm
        .dir
        .read(shm::LOCK_FILE)
        .ok()
        .and_then(|note| shm::fastpath_lock_workers(&String::from_utf8_lossy(&note)));
    let mut reported = std::collections::BTreeMap::new();
    for name in shm.dir.names().unwrap_or_default() {
        let Some(worker) = shm::ring_worker(&name) else {
            continue;
        };
        let Ok(file) = shm.dir.open_file(&name, false) else {
            continue;
        };
        let Some(header) = shm::RingHeader::read(&file) else {
            continue;
        };
        if header.producer_pid == live {
            reported.insert(worker, header.applied_generation);
        }
    }
    let expected = match workers {
        Some(n) => n,
        None if reported.is_empty() => 1,
        None => 0,
    };
    let silent = (0..expected)
        .filter(|w| !reported.contains_key(w))
        .map(|worker| Lagging {
            worker,
            enforces: None,
        });
    let behind = reported
        .iter()
        .filter(|&(_, &g)| g < generation)
        .map(|(&worker, &g)| Lagging {
            worker,
            enforces: Some(g),
        });
    let mut lagging: Vec<Lagging> = silent.chain(behind).collect();
    lagging.sort_by_key(|l| l.worker);
    lagging
}
