//! The event drain: a ring file made the way a fastpath worker makes one is
//! mapped by `slowpath serve`, its records land in the audit log and the
//! traffic totals, and the worker's applied generation shows in the stats.

mod harness;

use std::time::{Duration, Instant};

use harness::ring::Producer;
use harness::{each_backend, Slowpath};
use proto::events::Event;
use proto::policy::InviteId;

fn wait_for(
    sp: &Slowpath,
    path: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = sp.admin_call("GET", path, None);
        assert_eq!(status, 200, "{v}");
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never matched; last: {v}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn ring_events_reach_audit_and_stats() {
    each_backend("event_drain", |b| {
        let sp = Slowpath::start(&b, &[]);
        let invite = Some(InviteId::from_u128(7));
        let producer = Producer::create(&sp.shm.join("events-0.ring"));
        producer.ring.set_applied_generation(42);
        producer.push(Event::SessionOpen {
            run_id: "run1".into(),
            invite,
            user: "u".into(),
            version: "0.61.0".into(),
            peer: "127.0.0.1:5555".into(),
        });
        producer.push(Event::ProxyRejected {
            run_id: "run1".into(),
            invite,
            proxy: "ssh".into(),
            proxy_type: "tcp".into(),
            reason: "port 9999 is not in the invite's pool".into(),
        });
        producer.push(Event::Traffic {
            run_id: "run1".into(),
            invite,
            proxy: "ssh".into(),
            bytes_in: 100,
            bytes_out: 250,
        });
        let rows = wait_for(
            &sp,
            "/api/v1/admin/audit?invite_id=inv_00000000000000000000000000000007",
            |v| v.as_array().is_some_and(|a| a.len() == 2),
        );
        // Both were pushed within the same millisecond: find them by kind,
        // not by position.
        let kind = |k: &str| {
            rows.as_array()
                .and_then(|a| a.iter().find(|r| r["kind"] == k))
                .cloned()
                .unwrap_or_else(|| panic!("no {k} row in {rows}"))
        };
        let rejected = kind("proxy.rejected");
        assert_eq!(rejected["reason"], "port 9999 is not in the invite's pool");
        let open = kind("session.open");
        assert_eq!(open["run_id"], "run1");
        assert_eq!(open["node_id"], sp.local_node.as_str());
        let stats = wait_for(&sp, "/api/v1/admin/stats", |v| {
            v["traffic"]["bytes_out"] == 250
        });
        assert_eq!(stats["traffic"]["bytes_in"], 100);
        assert_eq!(stats["sessions_open"], 1);
        assert_eq!(stats["workers"][0]["applied_generation"], 42);

        // A restarted fastpath makes a new ring file (new inode): it is remapped.
        drop(producer);
        std::fs::remove_file(sp.shm.join("events-0.ring")).unwrap();
        let producer = Producer::create(&sp.shm.join("events-0.ring"));
        producer.push(Event::SessionClose {
            run_id: "run1".into(),
            invite,
            reason: "client closed".into(),
        });
        wait_for(&sp, "/api/v1/admin/stats", |v| v["sessions_open"] == 0);

        // A record without the instance key's tag (a forger's) is refused,
        // counted, and never reaches the audit log.
        producer.push_unsealed(Event::SessionOpen {
            run_id: "forged".into(),
            invite,
            user: "u".into(),
            version: "0.61.0".into(),
            peer: "127.0.0.1:6666".into(),
        });
        wait_for(&sp, "/api/v1/admin/stats", |v| {
            v["events"]["unauthenticated"] == 1
        });
        let (_, rows) = sp.admin_call("GET", "/api/v1/admin/audit?limit=100", None);
        assert!(
            !rows.to_string().contains("forged"),
            "a forged event reached the audit log: {rows}"
        );
    });
}
