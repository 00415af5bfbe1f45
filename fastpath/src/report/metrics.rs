//! Prometheus metrics (`fastpath.metricsAddr`): `GET /metrics` answers the
//! per-worker counters and gauges of the stats file in the OpenMetrics
//! text format (`prometheus-client`), labelled `worker`, and the policy
//! generation in force.
//!
//! A small blocking server on its own thread: one request per connection,
//! read for at most 2 s and 8 KiB; it takes nothing from the workers but
//! their atomic counters.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::report::timings::Timings;
use crate::runtime::shared::Shared;

/// Fields of the stats that are levels, not running totals.
const GAUGES: &[&str] = &[
    "sessions",
    "proxies",
    "conns",
    "mesh_nodes",
    "mesh_links",
    "mux_held",
    "mux_extra_window",
];

type Labels = Vec<(String, String)>;

/// The exposition of these per-worker snapshots (as the stats file has
/// them) and the policy generation.
pub fn render(workers: &[serde_json::Value], generation: u64, timings: &Timings) -> String {
    let mut registry = Registry::with_prefix("totoro_fastpath");
    registry.register(
        "login_decision_seconds",
        "time from a Login read to its decision, by worker and outcome",
        timings.login_family(),
    );
    registry.register(
        "policy_propagation_seconds",
        "time from the slowpath compiling a policy table to a worker applying it",
        timings.propagation_family(),
    );
    let mut names: Vec<&String> = workers
        .iter()
        .filter_map(|w| w.as_object())
        .flat_map(|o| o.keys())
        .collect();
    names.sort();
    names.dedup();
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for name in names {
        let help = format!("the stats file's per-worker `{name}`");
        if GAUGES.contains(&name.as_str()) {
            let family = Family::<Labels, Gauge>::default();
            for (i, w) in workers.iter().enumerate() {
                let v = w[name.as_str()].as_i64().unwrap_or(0);
                family.get_or_create(&worker(i)).set(v);
            }
            registry.register(name.as_str(), help, family);
        } else {
            let family = Family::<Labels, Counter>::default();
            for (i, w) in workers.iter().enumerate() {
                let v = w[name.as_str()].as_u64().unwrap_or(0);
                family.get_or_create(&worker(i)).inc_by(v);
            }
            registry.register(counter_name(name, &all), help, family);
        }
    }
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(generation).unwrap_or(i64::MAX));
    registry.register(
        "policy_generation",
        "generation of the policy table in force (0: none)",
        g,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

/// A counter's family name: the encoder adds `_total`, so a field that
/// ends in it loses it (`conns_total` would then meet the `conns` gauge:
/// it becomes `conns_accepted`).
fn counter_name(name: &str, all: &[String]) -> String {
    let mut n = name;
    while let Some(s) = n.strip_suffix("_total") {
        n = s;
    }
    if n == name {
        return n.to_owned();
    }
    if n == "conns" {
        return "conns_accepted".into();
    }
    if n.is_empty() || all.iter().any(|a| a == n) {
        return format!("{n}_counted");
    }
    n.to_owned()
}

fn worker(i: usize) -> Labels {
    vec![("worker".into(), i.to_string())]
}

/// Serve `/metrics` on `listener` until the process ends.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        // A successor that took the listener over answers from here on.
        if !shared.is_accepting() {
            break;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let reply = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            let workers: Vec<serde_json::Value> = shared
                .stats
                .iter()
                .map(|s| serde_json::to_value(s.snapshot()).unwrap_or_default())
                .collect();
            let body = render(&workers, shared.policy.generation(), &shared.timings);
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let accept = head.lines().find_map(|l| l.strip_prefix("accept:"));
            let (kind, body) = proto::exposition::negotiate(accept, body);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = conn.write_all(reply.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_per_worker() {
        let w = vec![
            serde_json::json!({ "sessions": 2, "bytes_in": 10, "conns": 1, "conns_total": 4,
                                "x_total_total": 1, "y": 2, "y_total": 3 }),
            serde_json::json!({ "sessions": 1, "bytes_in": 5 }),
        ];
        let t = Timings::default();
        t.for_worker(1).login(true, Duration::from_micros(40));
        t.for_worker(1).login(false, Duration::from_micros(3));
        t.for_worker(0).propagated(1_000, 1_004);
        let text = render(&w, 7, &t);
        assert!(
            text.contains("# TYPE totoro_fastpath_login_decision_seconds histogram"),
            "{text}"
        );
        // 40 µs is above the 25 µs bound and within the 50 µs one.
        for (le, n) in [("0.000025", 0), ("0.00005", 1)] {
            let line = format!(
                "totoro_fastpath_login_decision_seconds_bucket{{le=\"{le}\",worker=\"1\",outcome=\"admitted\"}} {n}"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains("totoro_fastpath_policy_propagation_seconds_count{worker=\"0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE totoro_fastpath_sessions gauge"),
            "{text}"
        );
        assert!(
            text.contains("totoro_fastpath_sessions{worker=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE totoro_fastpath_bytes_in counter"),
            "{text}"
        );
        assert!(
            text.contains("totoro_fastpath_bytes_in_total{worker=\"0\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("totoro_fastpath_policy_generation 7"),
            "{text}"
        );
        assert!(
            text.contains("totoro_fastpath_conns_accepted_total{worker=\"0\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("totoro_fastpath_x_total{worker=\"0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("totoro_fastpath_y_counted_total{worker=\"0\"} 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = proto::exposition::to_text_format(&text);
        assert!(
            classic.contains("# TYPE totoro_fastpath_bytes_in_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP totoro_fastpath_bytes_in_total "),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE totoro_fastpath_sessions gauge\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
