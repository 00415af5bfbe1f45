//! Tenants on the data plane: finding a tenant from a Login, and sharing a
//! tenant's bandwidth budget across every connection on every worker.
//!
//! **Finding the tenant.** frpc never sends its token, only
//! `privilege_key = md5(token ‖ timestamp)` and the timestamp, so which
//! tenant is logging in is a search. Searching 100k tokens per login costs
//! 100k MD5s (tens of milliseconds). Instead a background thread keeps, for
//! each second of a small window around now, a map from the key each
//! tenant would send in that second to the tenant: frpc stamps its Login
//! with the current time, so a login is one hash lookup plus one MD5 to
//! confirm. The window moves by one second per second (one MD5 per tenant
//! per second: about 2% of a core at 100k tenants). A timestamp outside the
//! window (a client clock off by more than [`WINDOW_S`] seconds), or a
//! table newer than the index, falls back to a linear scan of the table,
//! rate-limited so that a flood of bad logins cannot eat a worker.
//!
//! **Bandwidth.** A [`Bucket`] is a token bucket in three atomics, shared
//! by all workers: each relay takes the bytes it moved and, when the bucket
//! runs into debt, sleeps until the debt is paid. Taking first and paying
//! after keeps the long-run rate exact whatever the chunk sizes; chunks are
//! capped ([`Bucket::chunk`]) so that one chunk is a small part of a second.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use proto::policy::PolicyTable;

/// Seconds either side of now the index covers.
pub const WINDOW_S: i64 = 2;
/// Tables with at most this many tenants are scanned without a budget
/// (a scan of them costs well under a millisecond).
const FREE_SCAN: usize = 2_000;
/// Scans of bigger tables allowed per second, per process.
const SCANS_PER_S: u64 = 10;
/// Shorter waits are not slept (see [`Bucket::take`]).
const MIN_WAIT: Duration = Duration::from_millis(1);

/// The hash of a privilege key is already uniform: use its first 8 bytes
/// as the map's hash as they are.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap = HashMap<u64, u32, BuildHasherDefault<PrefixHasher>>;

/// One table generation's tenants, keyed by what each would send.
struct Index {
    generation: u64,
    /// Tokens in table order.
    tokens: Vec<Box<str>>,
    /// (second, key prefix → position in `tokens`), ascending seconds.
    seconds: VecDeque<(i64, KeyMap)>,
}

fn digest(token: &str, ts: i64) -> [u8; 16] {
    proto::auth::privilege_digest(token, ts)
}

fn prefix(d: &[u8; 16]) -> u64 {
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn build_second(tokens: &[Box<str>], ts: i64) -> KeyMap {
    let mut m = KeyMap::with_capacity_and_hasher(tokens.len(), Default::default());
    for (i, t) in tokens.iter().enumerate() {
        m.insert(prefix(&digest(t, ts)), i as u32);
    }
    m
}

/// How a login's privilege key was matched to a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// This tenant's token produced the key.
    Tenant(String),
    /// No tenant's token produces it.
    None,
    /// The search was needed but refused (scan budget spent).
    Busy,
}

/// The tenant finder of one fastpath process.
pub struct Finder {
    index: RwLock<Option<Index>>,
    scan_budget: Mutex<(Instant, u64)>,
    /// Logins matched through the index / through a scan (stats, tests).
    pub hits: AtomicU64,
    /// Scans done.
    pub scans: AtomicU64,
}

impl Default for Finder {
    fn default() -> Self {
        Finder {
            index: RwLock::new(None),
            scan_budget: Mutex::new((Instant::now(), SCANS_PER_S)),
            hits: AtomicU64::new(0),
            scans: AtomicU64::new(0),
        }
    }
}

impl Finder {
    /// Find the tenant whose token produced `key` at `ts`, given the table
    /// in force.
    pub fn find(&self, table: &PolicyTable<'_>, ts: i64, key: &str) -> Found {
        let mut want = [0u8; 16];
        if key.len() != 32 || hex::decode_to_slice(key, &mut want).is_err() {
            return Found::None;
        }
        if table.tenant_count() == 0 {
            return Found::None;
        }
        {
            let guard = self.index.read();
            if let Some(ix) = guard
                .as_ref()
                .filter(|ix| ix.generation == table.generation())
            {
                if let Some((_, map)) = ix.seconds.iter().find(|(s, _)| *s == ts) {
                    let hit = map
                        .get(&prefix(&want))
                        .map(|&i| &ix.tokens[i as usize])
                        .filter(|t| digest(t, ts) == want);
                    if let Some(t) = hit {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        return Found::Tenant(t.to_string());
                    }
                    // The index covers this second and this generation: a
                    // miss is a miss, unless two tokens share a key prefix
                    // (2^-64 per pair; the scan below settles it).
                    if map.len() == ix.tokens.len() {
                        return Found::None;
                    }
                }
            }
        }
        if table.tenant_count() > FREE_SCAN && !self.take_scan() {
            return Found::Busy;
        }
        self.scans.fetch_add(1, Ordering::Relaxed);
        match table.tenants().find(|t| digest(t.token(), ts) == want) {
            Some(t) => Found::Tenant(t.token().to_owned()),
            None => Found::None,
        }
    }

    fn take_scan(&self) -> bool {
        let mut b = self.scan_budget.lock();
        let now = Instant::now();
        if now.duration_since(b.0) >= Duration::from_secs(1) {
            *b = (now, SCANS_PER_S);
        }
        if b.1 == 0 {
            return false;
        }
        b.1 -= 1;
        true
    }

    /// Bring the index up to date with `table` at Unix second `now_s`:
    /// rebuilt when the table changed, otherwise slid to cover
    /// `now_s - WINDOW_S ..= now_s + WINDOW_S`. The MD5s run without the
    /// lock held; lookups meanwhile use the old index or scan.
    pub fn refresh(&self, table: Option<&PolicyTable<'_>>, now_s: i64) {
        let Some(table) = table.filter(|t| t.tenant_count() > 0) else {
            if self.index.read().is_some() {
                *self.index.write() = None;
            }
            return;
        };
        let (lo, hi) = (now_s - WINDOW_S, now_s + WINDOW_S);
        // Only this (one) thread writes the index, so the seconds to add
        // can be computed under the read lock, which lookups share, and
        // put in under a brief write lock.
        let added = {
            let guard = self.index.read();
            match guard
                .as_ref()
                .filter(|ix| ix.generation == table.generation())
            {
                Some(ix) => {
                    let from = ix.seconds.back().map_or(lo, |(l, _)| (l + 1).max(lo));
                    let stale = ix.seconds.front().is_some_and(|(s, _)| *s < lo);
                    if from > hi && !stale {
                        return;
                    }
                    Some(
                        (from..=hi)
                            .map(|s| (s, build_second(&ix.tokens, s)))
                            .collect::<Vec<_>>(),
                    )
                }
                None => None,
            }
        };
        match added {
            Some(added) => {
                let mut guard = self.index.write();
                if let Some(ix) = guard.as_mut() {
                    ix.seconds.extend(added);
                    while ix.seconds.front().is_some_and(|(s, _)| *s < lo) {
                        ix.seconds.pop_front();
                    }
                }
            }
            None => {
                let tokens: Vec<Box<str>> = table.tenants().map(|t| t.token().into()).collect();
                let seconds = (lo..=hi).map(|s| (s, build_second(&tokens, s))).collect();
                *self.index.write() = Some(Index {
                    generation: table.generation(),
                    tokens,
                    seconds,
                });
            }
        }
    }

    /// The generation the index was built for (0 = none).
    pub fn generation(&self) -> u64 {
        self.index.read().as_ref().map_or(0, |ix| ix.generation)
    }
}

/// A token bucket shared across workers. Rate 0 means unlimited.
pub struct Bucket {
    rate: AtomicU64,
    /// Bytes available; negative is debt.
    tokens: AtomicI64,
    /// Last refill, ns since `epoch`.
    last_ns: AtomicU64,
    epoch: Instant,
}

impl Bucket {
    /// A bucket refilling at `rate` bytes per second, starting full.
    pub fn new(rate: u64) -> Bucket {
        Bucket {
            rate: AtomicU64::new(rate),
            tokens: AtomicI64::new(Self::burst_of(rate)),
            last_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Bytes a full bucket holds: 50 ms at the rate, at least 16 KiB.
    fn burst_of(rate: u64) -> i64 {
        i64::try_from((rate / 20).max(16 * 1024)).unwrap_or(i64::MAX)
    }

    /// The rate in force (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Change the rate; the balance carries over (clamped to the new burst).
    pub fn set_rate(&self, rate: u64) {
        if self.rate.swap(rate, Ordering::AcqRel) != rate {
            let burst = Self::burst_of(rate);
            let _ = self
                .tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.min(burst)));
        }
    }

    /// The most bytes a relay should move between takes at this rate:
    /// 1/50 s of it, between 4 KiB and 1 MiB.
    pub fn chunk(&self) -> usize {
        match self.rate() {
            0 => usize::MAX,
            r => (r / 50).clamp(4 * 1024, 1 << 20) as usize,
        }
    }

    fn refill(&self, rate: u64) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.last_ns.load(Ordering::Acquire);
        if now <= last {
            return;
        }
        // Whoever moves `last` forward adds the tokens for that span.
        if self
            .last_ns
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let add = ((now - last) as u128 * rate as u128 / 1_000_000_000) as i64;
        let burst = Self::burst_of(rate);
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(add).min(burst))
            });
    }

    /// Account `n` bytes just moved; returns how long the mover should
    /// wait before moving more (zero when within budget).
    pub fn take(&self, n: usize) -> Duration {
        let rate = self.rate();
        if rate == 0 {
            return Duration::ZERO;
        }
        self.refill(rate);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let after = self.tokens.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
        if after >= 0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_nanos(((-after) as u128 * 1_000_000_000 / rate as u128) as u64);
        // The runtime's timers tick in milliseconds: a shorter sleep would
        // last a whole tick and waste most of it. The debt carries over
        // instead, and the next take that finds a millisecond of it waits
        // for all of it.
        if wait < MIN_WAIT {
            return Duration::ZERO;
        }
        wait
    }
}

/// The limits on one relay: the tenant's shared bucket and the proxy's own.
#[derive(Clone, Default)]
pub struct Limits {
    /// The tenant's budget across everything it runs.
    pub tenant: Option<Arc<Bucket>>,
    /// The proxy's `bandwidthLimit` with `bandwidthLimitMode = "server"`.
    pub proxy: Option<Arc<Bucket>>,
}

impl Limits {
    /// Whether nothing limits the relay.
    pub fn is_none(&self) -> bool {
        self.tenant.is_none() && self.proxy.is_none()
    }

    /// Largest chunk to move between takes.
    pub fn chunk(&self) -> usize {
        let a = self.tenant.as_ref().map_or(usize::MAX, |b| b.chunk());
        let b = self.proxy.as_ref().map_or(usize::MAX, |b| b.chunk());
        a.min(b)
    }

    /// Take `n` bytes from every bucket; the longest wait wins.
    pub fn take(&self, n: usize) -> Duration {
        let a = self.tenant.as_ref().map_or(Duration::ZERO, |b| b.take(n));
        let b = self.proxy.as_ref().map_or(Duration::ZERO, |b| b.take(n));
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::policy::{NodePolicy, PolicySpec, PortSet, ProxyTypes, TenantPolicy};

    fn table(n: usize, generation: u64) -> Vec<u8> {
        PolicySpec {
            edge: Default::default(),
            mesh: Default::default(),
            generation,
            created_ms: 0,
            node: NodePolicy {
                node_id: "n".into(),
                region: "r".into(),
                public: false,
                port_pool: PortSet::all(),
                proxy_types: ProxyTypes::ALL,
                max_proxies_per_session: 0,
                sub_domain_host: String::new(),
            },
            keys: vec![],
            invites: vec![],
            tenants: (0..n)
                .map(|i| TenantPolicy {
                    token: format!("tenant-{i}"),
                    region: "r".into(),
                    enabled: true,
                    allow_ports: PortSet::default(),
                    max_ports_per_client: 0,
                    bandwidth_bps: 0,
                    over_quota: false,
                    throttle_bps: 0,
                    report_interval_bytes: 0,
                })
                .collect(),
        }
        .encode()
    }

    #[test]
    fn finds_through_the_index_and_by_scan() {
        let bytes = table(3000, 1);
        let t = PolicyTable::parse(&bytes).unwrap();
        let f = Finder::default();
        let now = 1_700_000_000;
        f.refresh(Some(&t), now);
        let key = proto::auth::privilege_key("tenant-2999", now + 1);
        assert_eq!(
            f.find(&t, now + 1, &key),
            Found::Tenant("tenant-2999".into())
        );
        assert_eq!(f.hits.load(Ordering::Relaxed), 1);
        assert_eq!(f.scans.load(Ordering::Relaxed), 0);
        let wrong = proto::auth::privilege_key("nobody", now);
        assert_eq!(f.find(&t, now, &wrong), Found::None);
        assert_eq!(
            f.scans.load(Ordering::Relaxed),
            0,
            "a miss in the window needs no scan"
        );
        // Outside the window: a scan finds it.
        let old = proto::auth::privilege_key("tenant-7", now - 100);
        assert_eq!(
            f.find(&t, now - 100, &old),
            Found::Tenant("tenant-7".into())
        );
        assert_eq!(f.scans.load(Ordering::Relaxed), 1);
        // Garbage keys are a miss, not a panic.
        assert_eq!(f.find(&t, now, "zz"), Found::None);
        assert_eq!(f.find(&t, now, &"g".repeat(32)), Found::None);
        // The window slides.
        f.refresh(Some(&t), now + 10);
        let key = proto::auth::privilege_key("tenant-5", now + 12);
        assert_eq!(f.find(&t, now + 12, &key), Found::Tenant("tenant-5".into()));
        assert_eq!(f.scans.load(Ordering::Relaxed), 1);
        // A newer table than the index: scan until refreshed.
        let bytes2 = table(3001, 2);
        let t2 = PolicyTable::parse(&bytes2).unwrap();
        let key = proto::auth::privilege_key("tenant-3000", now + 10);
        assert_eq!(
            f.find(&t2, now + 10, &key),
            Found::Tenant("tenant-3000".into())
        );
        assert_eq!(f.scans.load(Ordering::Relaxed), 2);
        f.refresh(Some(&t2), now + 10);
        assert_eq!(f.generation(), 2);
    }

    #[test]
    fn big_tables_scan_on_a_budget() {
        let bytes = table(FREE_SCAN + 1, 1);
        let t = PolicyTable::parse(&bytes).unwrap();
        let f = Finder::default();
        let key = proto::auth::privilege_key("nobody", 5);
        let mut busy = 0;
        for _ in 0..SCANS_PER_S + 5 {
            if f.find(&t, 5, &key) == Found::Busy {
                busy += 1;
            }
        }
        assert_eq!(busy, 5);
    }

    #[test]
    fn bucket_debt_sets_the_pace() {
        let b = Bucket::new(1_000_000);
        // The first burst is free, then each MB costs a second.
        assert_eq!(b.take(16 * 1024), Duration::ZERO);
        let wait = b.take(1_000_000);
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_millis(1000),
            "{wait:?}"
        );
        assert_eq!(Bucket::new(0).take(1 << 30), Duration::ZERO);
        // Debt under a millisecond carries over instead of a short sleep.
        let b2 = Bucket::new(1_000_000_000);
        assert_eq!(b2.take(50_000_000 + 500_000), Duration::ZERO);
        assert!(b2.take(1_000_000) >= Duration::from_millis(1));
        assert_eq!(b.chunk(), 20_000);
        b.set_rate(0);
        assert_eq!(b.take(1 << 20), Duration::ZERO);
    }
}
