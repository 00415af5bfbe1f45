//! The event drain: a ring file made the way a fastpath worker makes one is
//! mapped by `slowpath serve`, its records land in the audit log and the
//! traffic totals, and the worker's applied generation shows in the stats.

mod harness;

use std::time::{Duration, Instant};

use harness::ring::Producer;
use harness::{each_backend, Slowpath};
use proto::events::Event;
use proto::policy::{InviteId, RefusalKind};

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
            refusal: Some(RefusalKind::PortNotAllowed),
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
        assert_eq!(
            rejected["detail"]["refusal"], "port_not_allowed",
            "{rejected}"
        );
        let open = kind("session.open");
        assert_eq!(open["run_id"], "run1");
        assert_eq!(open["node_id"], sp.local_node.as_str());
        let stats = wait_for(&sp, "/api/v1/admin/stats", |v| {
            v["traffic"]["bytes_out"] == 250
        });
        assert_eq!(stats["traffic"]["bytes_in"], 100);
        assert_eq!(stats["sessions_open"], 1);
        assert_eq!(stats["workers"][0]["applied_generation"], 42);
        assert_eq!(
            stats["events"]["refusals"],
            serde_json::json!({ "port_not_allowed": 1 }),
            "refusals are counted by kind"
        );

        // A restarted fastpath makes a new ring file (new inode): it is remapped.
        drop(producer);
        std::fs::remove_file(sp.shm.join("events-0.ring")).unwrap();
        let producer = Producer::create(&sp.shm.join("events-0.ring"));
        producer.push(Event::SessionClose {
            run_id: "run1".into(),
            invite,
            reason: "client closed".into(),
            refusal: None,
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

/// A slowpath that dies between reading events and committing them loses
/// none: the ring's space is given back only after the commit, so the next
/// slowpath reads them again (at least once across a crash).
#[test]
fn events_read_but_not_committed_survive_a_slowpath_crash() {
    each_backend("drain_crash", |b| {
        let mut sp = Slowpath::start(&b, &[]);
        let producer = Producer::create(&sp.shm.join("events-0.ring"));
        let url = match &b {
            harness::Backend::Sqlite => slowpath::store::db::sqlite_url(&sp.dir),
            harness::Backend::Postgres(_) => sp.database_url().unwrap(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Hold the database so the drain's write cannot commit.
        let blocker = rt.block_on(async {
            use sqlx::Connection as _;
            use sqlx::Executor as _;
            sqlx::any::install_default_drivers();
            let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
            match &b {
                harness::Backend::Sqlite => {
                    c.execute("BEGIN EXCLUSIVE").await.unwrap();
                }
                harness::Backend::Postgres(_) => {
                    c.execute("BEGIN").await.unwrap();
                    c.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
                        .await
                        .unwrap();
                }
            }
            c
        });
        producer.push(Event::SessionOpen {
            run_id: "crash1".into(),
            invite: None,
            user: "u".into(),
            version: "0.61.0".into(),
            peer: "127.0.0.1:7777".into(),
        });
        // The drain reads every 20 ms; it has read the record and is
        // waiting on the database by now.
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            producer.ring.pending_bytes() > 0,
            "the ring gave the record's space back before it was committed"
        );
        sp.kill_hard();
        rt.block_on(async {
            use sqlx::Connection as _;
            blocker.close().await.unwrap();
        });
        sp.restart();
        wait_for(&sp, "/api/v1/admin/audit?limit=100", |v| {
            v.to_string().contains("crash1")
        });
        wait_for(&sp, "/api/v1/admin/stats", |_| {
            producer.ring.pending_bytes() == 0
        });
    });
}
