//! In-process measurements of pure data-plane pieces, without sockets.
//!
//! [`routes`]: the vhost route table (`proto::vhost::routes`) at the size
//! of a large node: build time, memory, and the cost of one lookup for a
//! host that is there, one a wildcard catches, and one nobody serves.

use proto::vhost::routes::Routes;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

/// What the route table measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct RoutesResult {
    /// Hostnames in the table (each with one location, plus one wildcard
    /// per hundred).
    pub hosts: usize,
    /// Routes in the table.
    pub routes: usize,
    /// Time to add them all, ms.
    pub build_ms: f64,
    /// Growth of this process's RSS while building, bytes per route
    /// (None where /proc cannot be read).
    pub bytes_per_route: Option<f64>,
    /// Mean time of one lookup, ns, by kind: exact host, wildcard, miss.
    pub exact_ns: f64,
    pub wildcard_ns: f64,
    pub miss_ns: f64,
    /// Lookups timed per kind.
    pub lookups: usize,
}

/// Builds a table of `hosts` hostnames (`app-<i>.tenant-<i/100>.example.net`,
/// location "" or "/api", and `*.tenant-<k>.example.net` for every hundredth
/// tenant) and times `lookups` lookups of each kind, in shuffled order, in
/// batches (a clock read per lookup would cost as much as the lookup).
pub fn routes(hosts: usize, lookups: usize) -> RoutesResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let names: Vec<String> = (0..hosts)
        .map(|i| format!("app-{i}.tenant-{}.example.net", i / 100))
        .collect();
    let rss0 = crate::proc::rss_kib(std::process::id());
    let t = Instant::now();
    let mut table: Routes<u32> = Routes::new();
    for (i, n) in names.iter().enumerate() {
        let location = if i % 2 == 0 { "" } else { "/api" };
        // Generated names are distinct: no conflict.
        let _ = table.add(n, location, "", i as u32);
    }
    // The tenants with a wildcard: every hundredth.
    let wild_tenants: Vec<usize> = (0..hosts.div_ceil(100).max(1)).step_by(100).collect();
    for k in &wild_tenants {
        let _ = table.add(&format!("*.tenant-{k}.example.net"), "", "", u32::MAX);
    }
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss1 = crate::proc::rss_kib(std::process::id());
    let bytes_per_route = (rss0 > 0 && rss1 >= rss0 && !table.is_empty())
        .then(|| (rss1 - rss0) as f64 * 1024.0 / table.len() as f64);

    let mut exact: Vec<&str> = names.iter().map(String::as_str).collect();
    exact.shuffle(&mut rng);
    exact.truncate(lookups);
    let wild: Vec<String> = (0..lookups)
        .map(|i| {
            let k = wild_tenants[i % wild_tenants.len()];
            format!("new-{i}.tenant-{k}.example.net")
        })
        .collect();
    let miss: Vec<String> = (0..lookups)
        .map(|i| format!("nobody-{i}.elsewhere.org"))
        .collect();
    let time = |hosts: &[&str], want_hit: bool| -> f64 {
        let t = Instant::now();
        let mut hits = 0usize;
        for h in hosts {
            if black_box(table.get(black_box(h), "/api/v1", "")).is_some() {
                hits += 1;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / hosts.len().max(1) as f64;
        assert_eq!(
            hits == hosts.len(),
            want_hit || hosts.is_empty(),
            "unexpected lookups"
        );
        ns
    };
    let wild_refs: Vec<&str> = wild.iter().map(String::as_str).collect();
    let miss_refs: Vec<&str> = miss.iter().map(String::as_str).collect();
    // One warm-up pass, then the measured one.
    let _ = time(&exact, true);
    let exact_ns = time(&exact, true);
    let wildcard_ns = time(&wild_refs, true);
    let miss_ns = time(&miss_refs, false);
    RoutesResult {
        hosts,
        routes: table.len(),
        build_ms,
        bytes_per_route,
        exact_ns,
        wildcard_ns,
        miss_ns,
        lookups: exact.len(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_of_lookup_is_timed_and_finds_what_it_should() {
        // The assertions on hits inside `routes` fail the test if a lookup
        // of a present host misses or a miss finds something.
        let r = super::routes(2_000, 500);
        assert_eq!(r.routes, 2_000 + 1);
        assert_eq!(r.lookups, 500);
        assert!(
            r.exact_ns > 0.0 && r.wildcard_ns > 0.0 && r.miss_ns > 0.0,
            "{r:?}"
        );
    }
}
