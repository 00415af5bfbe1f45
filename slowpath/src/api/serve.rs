//! Serving the API on its listener, with the bounds a stranger meets before
//! any handler runs.
//!
//! A connection's life:
//! 1. **accept**: the listener hands over a socket and its peer address;
//! 2. **admit**: it counts against the total and its address's cap; over
//!    either it is closed at once (nothing read, nothing written);
//! 3. **head**: hyper reads the request head within
//!    [`ApiLimits::header_read_timeout`] and [`ApiLimits::max_header_bytes`],
//!    the same for every later request on a kept-alive connection, so an
//!    idle or slow one is cut off too;
//! 4. **route**: axum's router, where each route checks the caller's key
//!    from the headers and then reads the body within its limit and time
//!    ([`super::bounds`]);
//! 5. **close**: the slot is given back; after a burst of connections has
//!    drained, the allocator is asked to return the freed memory.
//!
//! axum's own `serve` has none of the bounds of steps 2 and 3, hence this
//! loop; it stands in for it, with graceful shutdown and `ConnectInfo`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Connection-level bounds of the API. The defaults are well past what a
/// control plane's legitimate callers (nodes, frps hooks, operators, frpc
/// users resolving invites) use at once.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Connections open at once, all addresses together.
    pub max_connections: usize,
    /// Connections open at once from one address (IPv4, or IPv6 as given).
    pub max_connections_per_ip: usize,
    /// Time to receive a request head, from the first poll for it (for a
    /// kept-alive connection: from the end of the previous response).
    pub header_read_timeout: Duration,
    /// Most bytes hyper buffers for a request head (it answers 431 past it).
    pub max_header_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves,
/// then lets requests in flight finish (up to `limits.shutdown_grace`).
/// Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let conns = Arc::new(Connections::new(&limits));
    // Graceful shutdown by hand: hyper-util's watcher does not take
    // connections served with upgrades (mesh WebSockets). Each connection
    // task holds a clone of `alive` and watches `stop`.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let alive = Arc::new(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = conns.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        // With upgrades: mesh control channels are WebSockets.
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let conns = Arc::clone(&conns);
        let mut stop = stop_rx.clone();
        let alive = Arc::clone(&alive);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            drop(alive);
            if let Err(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "API connection ended");
            }
            drop(slot);
            if conns.take_trim_due() {
                // malloc_trim walks every arena: not on a worker thread.
                tokio::task::spawn_blocking(release_freed_memory);
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + limits.shutdown_grace;
    while Arc::strong_count(&alive) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                grace_s = limits.shutdown_grace.as_secs(),
                "API connections still open at shutdown; closing them"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// hyper refuses a buffer limit under 8 KiB.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// After this many connections at once, their draining asks the allocator
/// to give memory back.
const TRIM_AFTER_PEAK: usize = 64;

/// Refusals are logged at most this often (a flood would write a line per
/// connection otherwise).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// An accept error: one that concerns only that connection is skipped; one
/// that concerns the process (out of file descriptors) is waited out, as
/// axum's `serve` does, so the loop does not spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "API accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Open connections, in total and per address.
struct Connections {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Most open at once since the allocator was last trimmed.
    peak: usize,
    /// Most open at once since the count was last zero.
    high: usize,
    trim_due: bool,
    refused: u64,
    refusal_logged: Option<Instant>,
}

/// One admitted connection; dropping it gives the slot back.
struct Slot {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn new(limits: &ApiLimits) -> Connections {
        Connections {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent under every panic point (none).
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, or None when a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut c = self.counts();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if c.total >= self.max_total {
            Some("total connection cap reached")
        } else if from_ip >= self.max_per_ip {
            Some("per-address connection cap reached")
        } else {
            None
        };
        if let Some(reason) = refusal {
            c.refused += 1;
            let now = Instant::now();
            if c.refusal_logged
                .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
            {
                tracing::warn!(
                    peer = %ip,
                    reason,
                    open = c.total,
                    open_from_peer = from_ip,
                    refused = c.refused,
                    "API connection refused"
                );
                c.refusal_logged = Some(now);
                c.refused = 0;
            }
            return None;
        }
        c.total += 1;
        c.per_ip.insert(ip, from_ip + 1);
        c.peak = c.peak.max(c.total);
        c.high = c.high.max(c.total);
        Some(Slot {
            conns: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        match c.per_ip.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                c.per_ip.remove(&ip);
            }
        }
        // Trim when a burst has mostly drained, and once more when it is
        // all gone: the memory its connections held is free by then.
        let drained = c.peak >= TRIM_AFTER_PEAK && c.total <= c.peak / 4;
        let idle = c.total == 0 && c.high >= TRIM_AFTER_PEAK;
        if drained || idle {
            c.trim_due = true;
            c.peak = c.total;
            if c.total == 0 {
                c.high = 0;
                // The map keeps its capacity from the burst otherwise.
                c.per_ip.shrink_to_fit();
            }
        }
    }

    fn take_trim_due(&self) -> bool {
        std::mem::take(&mut self.counts().trim_due)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.release(self.ip);
    }
}

/// Hands freed heap memory back to the system. glibc keeps what a burst of
/// connections freed in its arenas (a flood's worth stayed resident after
/// the connections closed); `malloc_trim` returns the free pages of every
/// arena.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it takes the arena locks
    // itself and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> ApiLimits {
        ApiLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..ApiLimits::default()
        }
    }

    #[test]
    fn caps_count_per_address_and_in_total() {
        let conns = Arc::new(Connections::new(&limits(3, 2)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = conns.admit(a).unwrap();
        let _a2 = conns.admit(a).unwrap();
        assert!(conns.admit(a).is_none(), "per-address cap");
        let _b1 = conns.admit(b).unwrap();
        assert!(conns.admit(b).is_none(), "total cap");
        drop(a1);
        assert!(conns.admit(b).is_some(), "a freed slot is reusable");
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_its_ipv4_address() {
        let conns = Arc::new(Connections::new(&limits(10, 1)));
        let _v4 = conns.admit("10.0.0.1".parse().unwrap()).unwrap();
        assert!(conns.admit("::ffff:10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_drained_burst_asks_for_a_trim_once() {
        let conns = Arc::new(Connections::new(&limits(1000, 1000)));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..100).map(|_| conns.admit(ip).unwrap()).collect();
        drop(slots);
        assert!(conns.take_trim_due());
        assert!(!conns.take_trim_due());
        assert!(conns.counts().per_ip.is_empty());
    }
}
