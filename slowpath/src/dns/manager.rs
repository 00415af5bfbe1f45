//! Seed 004's DNS manager for one zone: every routed hostname under the
//! zone gets A/AAAA records pointing at the edge's addresses, and loses
//! them when its route goes, by RFC 2136 updates signed with TSIG, sent
//! over TCP to the zone's primary server.
//!
//! The task compares the routes with the records it keeps
//! ([`domains::dns_records`]) at every route change and every interval,
//! and sends what differs; a failed update is recorded on its row
//! (`failed`, with the server's answer), audited once, shown in the API
//! and `/healthz`, and tried again at the next pass. Other hostnames are
//! not held up by one that fails.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::update::{self, Change, TsigKey};
use crate::clock::now_ms;
use crate::domain::{domains, edge};
use crate::store::db::Db;

/// How long one update may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone and how to update it.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The zone, e.g. `hoge.com`.
    pub zone: String,
    /// Its primary server (TCP).
    pub server: SocketAddr,
    /// The TSIG key (None: unsigned updates, for a server that allows
    /// them by address).
    pub key: Option<TsigKey>,
    /// The addresses routed hostnames point at (the edge's).
    pub addresses: Vec<IpAddr>,
    /// Records' TTL, seconds.
    pub ttl: u32,
    /// Seconds between passes (a route change passes at once).
    pub interval: Duration,
}

/// What the task has done, for `/healthz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DnsStatus {
    /// The zone.
    pub zone: String,
    /// The server.
    pub server: String,
    /// Updates that succeeded since start.
    pub updates: u64,
    /// Updates that failed since start.
    pub failed: u64,
    /// The last failure, with its hostname.
    pub last_error: Option<String>,
    /// The last pass, unix ms.
    pub last_pass_ms: i64,
}

/// The running task's handle.
#[derive(Clone)]
pub struct DnsManager {
    /// Shared status.
    pub status: Arc<Mutex<DnsStatus>>,
    wake: Arc<Notify>,
}

impl DnsManager {
    /// Pass now (a route changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The status, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        serde_json::to_value(s).unwrap_or_default()
    }
}

/// Start the task.
pub fn spawn(cfg: DnsConfig, db: Db) -> DnsManager {
    let m = DnsManager {
        status: Arc::new(Mutex::new(DnsStatus {
            zone: cfg.zone.clone(),
            server: cfg.server.to_string(),
            ..Default::default()
        })),
        wake: Arc::new(Notify::new()),
    };
    let handle = m.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = pass(&cfg, &db, &handle).await {
                tracing::warn!(error = %e, "DNS manager pass failed");
            }
            tokio::select! {
                _ = handle.wake.notified() => {}
                _ = tokio::time::sleep(cfg.interval) => {}
            }
        }
    });
    m
}

fn set(m: &DnsManager, f: impl FnOnce(&mut DnsStatus)) {
    if let Ok(mut s) = m.status.lock() {
        f(&mut s);
    }
}

async fn pass(cfg: &DnsConfig, db: &Db, m: &DnsManager) -> crate::error::Result<()> {
    let wanted: Vec<String> = edge::list_routes(db)
        .await?
        .into_iter()
        .map(|r| r.hostname)
        .filter(|h| domains::is_under(h, &cfg.zone))
        .collect();
    let kept = domains::dns_records(db).await?;
    let mut addrs: Vec<String> = cfg.addresses.iter().map(IpAddr::to_string).collect();
    addrs.sort();
    for host in &wanted {
        let current = kept.iter().find(|r| &r.hostname == host);
        if current.is_some_and(|r| r.status == "present" && r.addresses == addrs) {
            continue;
        }
        let change = Change::Set {
            name: host.clone(),
            addresses: cfg.addresses.clone(),
            ttl: cfg.ttl,
        };
        match send(cfg, &change).await {
            Ok(()) => {
                tracing::info!(hostname = %host, addresses = ?addrs, "DNS records set");
                set(m, |s| s.updates += 1);
                domains::record_dns(db, host, Some(&addrs), None).await?;
            }
            Err(e) => {
                tracing::warn!(hostname = %host, error = %e, "DNS update failed");
                set(m, |s| {
                    s.failed += 1;
                    s.last_error = Some(format!("{host}: {e}"));
                });
                domains::record_dns(db, host, Some(&addrs), Some(&e)).await?;
            }
        }
    }
    for r in kept.iter().filter(|r| !wanted.contains(&r.hostname)) {
        let change = Change::Delete {
            name: r.hostname.clone(),
        };
        match send(cfg, &change).await {
            Ok(()) => {
                tracing::info!(hostname = %r.hostname, "DNS records deleted");
                set(m, |s| s.updates += 1);
                domains::record_dns(db, &r.hostname, None, None).await?;
            }
            Err(e) => {
                tracing::warn!(hostname = %r.hostname, error = %e, "DNS delete failed");
                set(m, |s| {
                    s.failed += 1;
                    s.last_error = Some(format!("{}: {e}", r.hostname));
                });
                domains::record_dns(db, &r.hostname, None, Some(&e)).await?;
            }
        }
    }
    set(m, |s| s.last_pass_ms = now_ms());
    Ok(())
}

/// Send one update over TCP and check the signed answer.
async fn send(cfg: &DnsConfig, change: &Change) -> Result<(), String> {
    let id = u16::from_be_bytes(rand_id());
    let time = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let msg = update::build(
        &cfg.zone,
        std::slice::from_ref(change),
        cfg.key.as_ref(),
        id,
        time,
    )?;
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(cfg.server)
            .await
            .map_err(|e| format!("connecting to {}: {e}", cfg.server))?;
        let mut out = Vec::with_capacity(msg.bytes.len() + 2);
        out.extend_from_slice(&(msg.bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&msg.bytes);
        s.write_all(&out)
            .await
            .map_err(|e| format!("sending to {}: {e}", cfg.server))?;
        let len = s
            .read_u16()
            .await
            .map_err(|e| format!("reading {}'s answer: {e}", cfg.server))?;
        let mut answer = vec![0; usize::from(len)];
        s.read_exact(&mut answer)
            .await
            .map_err(|e| format!("reading {}'s answer: {e}", cfg.server))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(UPDATE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{} did not answer within {UPDATE_TIMEOUT:?}", cfg.server))??;
    update::check_answer(&msg, cfg.key.as_ref(), &answer)
}

fn rand_id() -> [u8; 2] {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}
