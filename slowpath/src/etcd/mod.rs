//! etcd as a tenant source (seed 002): tenant records live at
//! `{prefix}{token}`; this module lists them, watches them, and hands the
//! full tenant map to a callback after every change. The data plane never
//! talks to etcd; whoever receives the map compiles it into the policy table.
//!
//! - [`config`]: the `[etcd]` table of the node's frps-style TOML.
//! - [`gateway`]: a blocking client for etcd's v3 HTTP/JSON gateway.
//! - [`snapshot`]: the tenant map as of one revision, updated by watch
//!   batches (pure, no I/O).
//! - [`spawn`]: the source itself, on a dedicated thread so that blocking
//!   HTTP never stalls the tokio runtime.
//!
//! The source's life: connect (authenticating if configured) → range the
//! prefix → hand over the map → watch from the next revision, handing over
//! the map after every batch. Any failure keeps the last good map (the
//! callback never sees an empty map because etcd went away), marks the
//! source disconnected with the reason, and starts over on the next
//! endpoint after an exponential backoff; a fresh range on reconnect picks
//! up whatever changed meanwhile.
//!
//! The map holds every tenant under the prefix, whatever its region: the
//! policy compiler compares regions, so that a token of another region is
//! refused as such rather than as unknown.

pub mod config;
pub mod gateway;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::now_ms;
use crate::domain::tenants::Tenant;
pub use config::{EtcdConfig, EtcdTls};
use gateway::{Gateway, GatewayError};
pub use snapshot::SkippedKey;
use snapshot::Snapshot;

/// First wait after a failed round over the endpoints.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between rounds.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The map handed to the callback: tenants by token.
pub type TenantMap = Arc<BTreeMap<String, Tenant>>;

/// How the source is doing, for the stats endpoint and for tests.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EtcdHealth {
    /// Listing done and watch open.
    pub connected: bool,
    /// The endpoint in use, or last tried.
    pub endpoint: String,
    /// etcd revision the map reflects (0 before the first load).
    pub revision: i64,
    /// Tenants in the map.
    pub tenants: usize,
    /// Keys whose value did not parse, with the reason.
    pub skipped: Vec<SkippedKey>,
    /// Why the source is disconnected (`None` while connected).
    pub last_error: Option<String>,
    /// When `connected` last changed, unix ms.
    pub since_ms: i64,
}

/// The running source. Dropping it asks the thread to stop; [`stop`]
/// also waits for it.
///
/// [`stop`]: EtcdHandle::stop
pub struct EtcdHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    health: Mutex<EtcdHealth>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn update(&self, f: impl FnOnce(&mut EtcdHealth)) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut h);
    }
}

impl EtcdHandle {
    /// A copy of the current health.
    pub fn health(&self) -> EtcdHealth {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the source and waits for its thread. The callback is not
    /// called after this returns. The wait is bounded by a watch poll
    /// (1 s) or, mid-request, by the dial timeout plus 30 s.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for EtcdHandle {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Starts the source on its own thread. `on_change` gets the full map after
/// the first load, after every watch batch that changed a key, and after
/// every reconnect; it runs on the source's thread, so it should hand the
/// map on rather than do slow work.
pub fn spawn(cfg: EtcdConfig, on_change: impl Fn(TenantMap) + Send + 'static) -> EtcdHandle {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        health: Mutex::new(EtcdHealth {
            endpoint: cfg.endpoints.first().cloned().unwrap_or_default(),
            since_ms: now_ms(),
            ..EtcdHealth::default()
        }),
    });
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("etcd-tenants".into())
        .spawn(move || Source::new(cfg, for_thread).run(&on_change));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "etcd: cannot start the tenant source thread");
            shared.update(|h| h.last_error = Some(format!("cannot start a thread: {e}")));
            None
        }
    };
    EtcdHandle { shared, thread }
}

/// The source's state on its thread.
struct Source {
    cfg: EtcdConfig,
    shared: Arc<Shared>,
    snapshot: Snapshot,
}

/// How a session with one endpoint ended.
struct SessionEnd {
    error: GatewayError,
    /// The session listed the prefix before failing (etcd was reachable).
    loaded: bool,
}

/// Wraps a gateway error as a session end.
fn fail(loaded: bool) -> impl Fn(GatewayError) -> SessionEnd {
    move |error| SessionEnd { error, loaded }
}

impl Source {
    fn new(cfg: EtcdConfig, shared: Arc<Shared>) -> Source {
        let snapshot = Snapshot::new(cfg.prefix.as_bytes());
        Source {
            cfg,
            shared,
            snapshot,
        }
    }

    fn run(mut self, on_change: &dyn Fn(TenantMap)) {
        let n = self.cfg.endpoints.len();
        if n == 0 {
            self.shared
                .update(|h| h.last_error = Some("no endpoints configured".into()));
            return;
        }
        let mut next = 0;
        let mut backoff = BACKOFF_MIN;
        let mut failed_in_round = 0;
        let mut last_logged: Option<String> = None;
        while !self.shared.stopped() {
            let endpoint = self.cfg.endpoints[next].clone();
            let Err(end) = self.session(&endpoint, on_change) else {
                break; // stopped
            };
            if self.shared.stopped() {
                break;
            }
            if end.loaded {
                backoff = BACKOFF_MIN;
                failed_in_round = 0;
            }
            let error = end.error.to_string();
            let was_connected = self.health_connected();
            // One log line per new trouble, not one per retry.
            if was_connected || last_logged.as_deref() != Some(error.as_str()) {
                tracing::warn!(endpoint = %endpoint, reason = %error, "etcd: tenant source disconnected; keeping the last tenant map");
                last_logged = Some(error.clone());
            }
            self.shared.update(|h| {
                if h.connected {
                    h.since_ms = now_ms();
                }
                h.connected = false;
                h.endpoint = endpoint;
                h.last_error = Some(error);
            });
            next = (next + 1) % n;
            failed_in_round += 1;
            if failed_in_round >= n {
                failed_in_round = 0;
                self.sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn health_connected(&self) -> bool {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connected
    }

    /// One connection: list, hand over, watch. Returns `Ok` only when asked
    /// to stop.
    fn session(&mut self, endpoint: &str, on_change: &dyn Fn(TenantMap)) -> Result<(), SessionEnd> {
        let mut loaded = false;
        let gw = Gateway::connect(&self.cfg, endpoint).map_err(fail(loaded))?;
        let prefix = self.cfg.prefix.clone().into_bytes();
        'listing: loop {
            let (revision, kvs) = gw.range_prefix(&prefix).map_err(fail(loaded))?;
            loaded = true;
            self.snapshot.load(revision, kvs);
            self.publish_snapshot(gw.endpoint());
            if self.shared.stopped() {
                return Ok(());
            }
            on_change(self.snapshot.tenants());
            let mut watch = match gw.watch(&prefix, revision + 1, &self.shared.stop) {
                Ok(w) => w,
                Err(GatewayError::Compacted { .. }) => continue 'listing,
                Err(e) => return Err(fail(loaded)(e)),
            };
            self.shared.update(|h| {
                if !h.connected {
                    h.since_ms = now_ms();
                }
                h.connected = true;
                h.last_error = None;
            });
            tracing::info!(
                endpoint,
                revision,
                tenants = self.snapshot.tenants().len(),
                skipped = self.snapshot.skipped().len(),
                "etcd: tenant source connected"
            );
            loop {
                match watch.next(&self.shared.stop) {
                    Ok(None) => return Ok(()),
                    Ok(Some(batch)) => {
                        let changed = self.snapshot.apply(batch);
                        self.publish_snapshot(gw.endpoint());
                        if changed && !self.shared.stopped() {
                            on_change(self.snapshot.tenants());
                        }
                    }
                    // Events between the listing and now are gone: list again.
                    Err(GatewayError::Compacted { .. }) => continue 'listing,
                    Err(e) => return Err(fail(loaded)(e)),
                }
            }
        }
    }

    /// Copies the snapshot's numbers into the health.
    fn publish_snapshot(&self, endpoint: &str) {
        let snap = &self.snapshot;
        self.shared.update(|h| {
            h.endpoint = endpoint.to_owned();
            h.revision = snap.revision();
            h.tenants = snap.tenants().len();
            h.skipped = snap.skipped();
        });
    }

    /// Sleeps for `d`, or less when asked to stop.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.shared.stopped() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::park_timeout(until - now);
        }
    }
}
