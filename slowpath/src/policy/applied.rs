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
    let enforced = lagging.iter().map(|(_, g)| *g).min().unwrap_or(0);
    let mut reason = format!(
        "the change is recorded but not in force: the fastpath did not apply policy \
         generation {generation} within {} ms ({} worker(s) still enforce generation {enforced})",
        ENFORCE_WAIT.as_millis(),
        lagging.len()
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

/// The workers of the live fastpath whose ring in the directory reports a
/// policy generation older than `generation`, with the one each reports.
/// The live fastpath is the holder of `fastpath.lock` as the kernel names
/// it; rings of any other producer (a stopped fastpath's leftovers) do not
/// count, and with no fastpath at all there is nothing to wait for (a
/// `serve` without a local fastpath).
pub fn lagging_workers(shm: &InstanceDir, generation: u64) -> Vec<(u32, u64)> {
    let Some(live) = shm.dir.holder(shm::LOCK_FILE) else {
        return Vec::new();
    };
    let mut lagging = Vec::new();
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
        if header.producer_pid == live && header.applied_generation < generation {
            lagging.push((worker, header.applied_generation));
        }
    }
    lagging
}
