//! Tenant traffic (seed 002): reports counted from samples, kept in the
//! database, POSTed to a real HTTP endpoint with retries; quota usage per
//! period, who is over quota, and what survives a restart. Runs the library
//! in-process against SQLite and (with TOTORO_TEST_DATABASE_URL) PostgreSQL.

mod harness;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use harness::ring::Producer;
use harness::{each_backend, Backend, TestDb};
use proto::events::Event;
use serde_json::Value;
use slowpath::clock::now_ms;
use slowpath::domain::quota::{period_start, QuotaTracker};
use slowpath::domain::tenants::{OverQuota, Quota, QuotaPeriod};
use slowpath::store::db::{self, Db};
use slowpath::telemetry::events_drain::EventDrain;
use slowpath::telemetry::traffic_reports::{self, Report, ReportSettings, Sample};

const NODE: &str = "node_test";
const TS_MS: i64 = 1_707_412_800_000;

/// One request the endpoint saw.
#[derive(Debug, Clone)]
struct Seen {
    status: u16,
    content_type: String,
    body: Value,
}

/// A report URL: answers each POST with the next scripted status (200 once
/// the script runs out) and remembers what it was sent.
#[derive(Default)]
struct Endpoint {
    script: Mutex<VecDeque<u16>>,
    seen: Mutex<Vec<Seen>>,
}

impl Endpoint {
    async fn start(script: &[u16]) -> (Arc<Endpoint>, String) {
        let ep = Arc::new(Endpoint {
            script: Mutex::new(script.iter().copied().collect()),
            ..Endpoint::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/traffic/report", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/traffic/report", axum::routing::post(receive))
            .with_state(Arc::clone(&ep));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (ep, url)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The reports answered with 2xx, in arrival order.
    fn delivered(&self) -> Vec<Report> {
        self.seen()
            .into_iter()
            .filter(|s| (200..300).contains(&s.status))
            .map(|s| serde_json::from_value(s.body).unwrap())
            .collect()
    }
}

async fn receive(State(ep): State<Arc<Endpoint>>, headers: HeaderMap, body: String) -> StatusCode {
    let status = ep.script.lock().unwrap().pop_front().unwrap_or(200);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    ep.seen.lock().unwrap().push(Seen {
        status,
        content_type,
        body,
    });
    StatusCode::from_u16(status).unwrap()
}

/// A fresh database of the backend a test runs on, opened.
struct Fresh {
    db: Db,
    /// Its URL, to open it again as a restarted process would.
    url: String,
    /// A directory that goes with it.
    dir: PathBuf,
}

/// Runs `f` once per backend on a fresh database, in a runtime of its own;
/// the pool `f` was given is closed after it.
fn each_database<Fut: std::future::Future<Output = ()>>(name: &str, f: impl Fn(Fresh) -> Fut) {
    each_backend(name, |b| {
        let tdb = TestDb::new(&b);
        run(async {
            let db = db::open(&tdb.url).await.unwrap();
            f(Fresh {
                db: db.clone(),
                url: tdb.url.clone(),
                dir: tdb.dir().to_owned(),
            })
            .await;
            db.close().await;
        });
    });
}

/// Runs `f` in a fresh runtime (the database is dropped outside it).
fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn settings(url: &str, thresholds: &[(&str, u64)]) -> Arc<ReportSettings> {
    let s = ReportSettings::new(NODE, Some(url.to_owned()), "chengdu").unwrap();
    s.set_thresholds(
        thresholds
            .iter()
            .map(|(t, b)| (t.to_string(), *b))
            .collect(),
    );
    Arc::new(s)
}

fn sample<'a>(token: &'a str, proxy: &'a str, bytes_in: u64, bytes_out: u64) -> Sample<'a> {
    Sample {
        token,
        proxy,
        bytes_in,
        bytes_out,
        closed: false,
        ts_ms: TS_MS,
    }
}

/// The report sender, running until aborted.
fn start_sender(db: &Db, settings: &Arc<ReportSettings>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(traffic_reports::run_sender(
        db.clone(),
        Arc::clone(settings),
    ))
}

/// Records samples in one transaction; returns how many reports they queued.
async fn record_all(db: &Db, settings: &ReportSettings, samples: &[Sample<'_>]) -> usize {
    let mut tx = db.begin().await.unwrap();
    let mut queued = 0;
    for s in samples {
        if traffic_reports::record(&mut tx, s, settings, None)
            .await
            .unwrap()
        {
            queued += 1;
        }
    }
    tx.commit().await.unwrap();
    settings.poke();
    queued
}

async fn count(db: &Db, sql: &str) -> i64 {
    use sqlx::Row as _;
    sqlx::query(sql).fetch_one(db).await.unwrap().get(0)
}

fn report(proxy: &str, traffic_in: u64, traffic_out: u64) -> Report {
    Report {
        token: "tok".into(),
        region: "chengdu".into(),
        proxy_name: proxy.into(),
        traffic_in,
        traffic_out,
        timestamp: TS_MS / 1000,
    }
}

#[test]
fn thresholds_and_close_produce_reports_that_add_up() {
    each_database("reports_thresholds", |Fresh { db, .. }| async move {
        let (ep, url) = Endpoint::start(&[]).await;
        let settings = settings(&url, &[("tok", 1000)]);
        let mut closed = sample("tok", "web", 5, 5);
        closed.closed = true;
        let samples = [
            sample("tok", "web", 300, 100),
            sample("tok", "ssh", 0, 999),
            sample("tok", "web", 400, 300),     // 1100 >= 1000: report
            sample("other", "web", 1 << 40, 0), // no threshold: ignored
            sample("tok", "web", 4000, 500),    // several thresholds at once: one report
            sample("tok", "web", 10, 0),
            sample("tok", "web", 0, 0),
            closed, // remainder 15 + 5
        ];
        assert_eq!(record_all(&db, &settings, &samples).await, 3);
        // A proxy that closes with nothing unreported sends nothing.
        let mut empty_close = sample("tok", "web", 0, 0);
        empty_close.closed = true;
        assert_eq!(record_all(&db, &settings, &[empty_close]).await, 0);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM traffic_report_pending").await,
            1,
            "only ssh has unreported bytes"
        );

        start_sender(&db, &settings);
        wait_until("three reports", || ep.delivered().len() == 3).await;
        assert_eq!(
            ep.delivered(),
            vec![
                report("web", 700, 400),
                report("web", 4000, 500),
                report("web", 15, 5)
            ]
        );
        assert!(ep
            .seen()
            .iter()
            .all(|s| s.content_type == "application/json"));
        let body = &ep.seen()[0].body;
        for key in [
            "token",
            "region",
            "proxyName",
            "trafficIn",
            "trafficOut",
            "timestamp",
        ] {
            assert!(body.get(key).is_some(), "{key} missing from {body}");
        }

        // Close ssh too: then everything sampled has been reported.
        let mut ssh_close = sample("tok", "ssh", 1, 0);
        ssh_close.closed = true;
        assert_eq!(record_all(&db, &settings, &[ssh_close]).await, 1);
        wait_until("the ssh remainder", || ep.delivered().len() == 4).await;
        let sampled: u64 = samples
            .iter()
            .chain([&ssh_close])
            .filter(|s| s.token == "tok")
            .map(|s| s.bytes_in + s.bytes_out)
            .sum();
        let reported: u64 = ep
            .delivered()
            .iter()
            .map(|r| r.traffic_in + r.traffic_out)
            .sum();
        assert_eq!(reported, sampled);
        assert_eq!(ep.delivered()[3], report("ssh", 1, 999));
        wait_until("empty outbox", || settings.status().pending == 0).await;
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM traffic_report_outbox").await,
            0
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM traffic_report_pending").await,
            0
        );
        let status = settings.status();
        assert_eq!((status.sent, status.failures), (4, 0), "{status:?}");
    });
}

#[test]
fn a_failed_delivery_is_retried_in_order_and_delivered_once() {
    each_database("reports_retry", |Fresh { db, .. }| async move {
        let (ep, url) = Endpoint::start(&[500]).await;
        let settings = settings(&url, &[("tok", 100)]);
        let first = sample("tok", "a", 100, 0);
        let second = sample("tok", "b", 0, 200);
        assert_eq!(record_all(&db, &settings, &[first, second]).await, 2);
        start_sender(&db, &settings);
        wait_until("both reports", || ep.delivered().len() == 2).await;
        let seen = ep.seen();
        let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
        assert_eq!(statuses, [500, 200, 200]);
        assert_eq!(seen[0].body, seen[1].body, "the same report again");
        assert_eq!(
            ep.delivered(),
            vec![report("a", 100, 0), report("b", 0, 200)]
        );
        // The sender counts a report once the endpoint's answer is in,
        // a moment after the endpoint has seen it.
        wait_until("the sender's count", || settings.status().sent == 2).await;
        let status = settings.status();
        assert_eq!((status.sent, status.failures), (2, 1), "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("500"),
            "{status:?}"
        );
        wait_until("empty outbox", || settings.status().pending == 0).await;
        // Nothing is sent again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ep.seen().len(), 3);
    });
}

#[test]
fn unreachable_url_keeps_reports_until_it_answers() {
    let tdb = TestDb::new(&Backend::Sqlite);
    run(async {
        let db = db::open(&tdb.url).await.unwrap();
        // A port nothing listens on: connect errors, then backoff.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = settings(&format!("http://127.0.0.1:{port}/r"), &[("tok", 10)]);
        assert_eq!(
            record_all(&db, &settings, &[sample("tok", "a", 10, 0)]).await,
            1
        );
        let sender = start_sender(&db, &settings);
        wait_until("a failure", || settings.status().failures >= 1).await;
        let status = settings.status();
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("unreachable"),
            "{status:?}"
        );
        assert_eq!(status.pending, 1);
        sender.abort();
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM traffic_report_outbox").await,
            1
        );
        db.close().await;
    });
}

#[test]
fn settings_refuse_what_cannot_be_sent() {
    assert!(ReportSettings::new(NODE, Some("https://api.example/report".into()), "r").is_ok());
    for bad in ["ftp://x", "https://", "http://", "http:///x"] {
        let e = ReportSettings::new(NODE, Some(bad.into()), "r").unwrap_err();
        assert!(e.to_string().starts_with("trafficReportUrl"), "{bad}: {e}");
    }
    let off = ReportSettings::new(NODE, None, "r").unwrap();
    off.set_thresholds(HashMap::from([("t".to_string(), 5)]));
    assert_eq!(off.threshold("t"), 0, "no URL: nothing is counted");
    let on = ReportSettings::new(NODE, Some("http://h/r".into()), "r").unwrap();
    on.set_thresholds(HashMap::from([("t".to_string(), 5), ("z".to_string(), 0)]));
    assert_eq!(
        (on.threshold("t"), on.threshold("z"), on.threshold("u")),
        (5, 0, 0)
    );
    // A token that leaves (deleted) keeps its threshold for the closing
    // samples of the sessions it had; one that comes back takes its new one.
    on.set_thresholds(HashMap::new());
    assert_eq!(
        on.threshold("t"),
        5,
        "a departed token's bytes are still reported"
    );
    on.set_thresholds(HashMap::from([("t".to_string(), 7)]));
    assert_eq!(on.threshold("t"), 7);
}

#[test]
fn a_restart_keeps_unreported_bytes_and_the_outbox() {
    each_database(
        "reports_restart",
        |Fresh {
             db, url: db_url, ..
         }| async move {
            let (ep, url) = Endpoint::start(&[]).await;
            let settings = settings(&url, &[("tok", 1000)]);
            let samples = [sample("tok", "a", 900, 200), sample("tok", "b", 600, 0)];
            assert_eq!(record_all(&db, &settings, &samples).await, 1);
            db.close().await;

            // A new process: new pool, new settings, same database.
            let settings = self::settings(&url, &[("tok", 1000)]);
            let db = db::open(&db_url).await.unwrap();
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM traffic_report_outbox").await,
                1
            );
            assert_eq!(
                record_all(&db, &settings, &[sample("tok", "b", 300, 100)]).await,
                1
            );
            start_sender(&db, &settings);
            wait_until("two reports", || ep.delivered().len() == 2).await;
            assert_eq!(
                ep.delivered(),
                vec![report("a", 900, 200), report("b", 900, 100)]
            );
            db.close().await;
        },
    );
}

fn quota(bytes: u64, period: QuotaPeriod) -> Quota {
    Quota {
        bytes,
        period,
        over: OverQuota::Close,
    }
}

async fn use_bytes(db: &Db, tracker: &QuotaTracker, token: &str, bytes: u64, at_ms: i64) {
    let mut tx = db.begin().await.unwrap();
    tracker.record(&mut tx, token, bytes, at_ms).await.unwrap();
    tx.commit().await.unwrap();
}

#[test]
fn quota_usage_flips_over_quota_and_rolls_over() {
    each_database(
        "quota",
        |Fresh {
             db, url: db_url, ..
         }| async move {
            // Long windows: `now` and the wall clock set_quotas judges by
            // stay in the same one.
            let window = QuotaPeriod::Every(30 * 86_400);
            let now = now_ms();
            let tracker = QuotaTracker::new();
            let mut changes = tracker.subscribe();
            tracker.set_quotas(HashMap::from([("q".to_string(), quota(1000, window))]));
            assert!(!changes.has_changed().unwrap());

            use_bytes(&db, &tracker, "q", 600, now).await;
            use_bytes(&db, &tracker, "free", 1 << 50, now).await;
            assert!(tracker.over_quota().is_empty());
            assert_eq!(tracker.usage("q").unwrap().bytes, 600);
            use_bytes(&db, &tracker, "q", 400, now).await;
            assert!(tracker.is_over("q"), "1000 of 1000 used");
            assert!(changes.has_changed().unwrap());
            changes.mark_unchanged();
            // Over stays over: no new notification.
            use_bytes(&db, &tracker, "q", 1, now).await;
            assert!(!changes.has_changed().unwrap());
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM quota_usage WHERE token = 'free'").await,
                0,
                "no quota, no usage rows"
            );
            assert!(!tracker.refresh(&db, now).await.unwrap(), "nothing changed");

            // A restart: a new tracker reads the usage back.
            db.close().await;
            let db = db::open(&db_url).await.unwrap();
            let tracker = QuotaTracker::new();
            tracker.set_quotas(HashMap::from([("q".to_string(), quota(1000, window))]));
            assert!(tracker.over_quota().is_empty());
            assert!(tracker.refresh(&db, now).await.unwrap());
            assert_eq!(tracker.over_quota(), ["q".to_string()].into());
            assert_eq!(tracker.usage("q").unwrap().bytes, 1001);

            // A raised quota takes the tenant back under at once, a lowered
            // one over again; each change is announced.
            let mut changes = tracker.subscribe();
            tracker.set_quotas(HashMap::from([("q".to_string(), quota(2000, window))]));
            assert!(!tracker.is_over("q"));
            assert!(changes.has_changed().unwrap());
            changes.mark_unchanged();
            tracker.set_quotas(HashMap::from([("q".to_string(), quota(1000, window))]));
            assert!(tracker.is_over("q"));
            assert!(changes.has_changed().unwrap());
            changes.mark_unchanged();

            // The next window starts empty.
            let next = period_start(window, now) + 30 * 86_400_000;
            assert!(tracker.refresh(&db, next).await.unwrap());
            assert!(tracker.over_quota().is_empty());
            assert!(changes.has_changed().unwrap());
            use_bytes(&db, &tracker, "q", 10, next).await;
            assert_eq!(tracker.usage("q").unwrap().bytes, 10);

            // Usage saturates instead of overflowing the column.
            use_bytes(&db, &tracker, "q", u64::MAX, next).await;
            use_bytes(&db, &tracker, "q", u64::MAX, next).await;
            assert_eq!(tracker.usage("q").unwrap().bytes, i64::MAX as u64);
            db.close().await;
        },
    );
}

#[test]
fn the_drain_feeds_reports_and_quotas() {
    each_database("drain_tenant_traffic", |Fresh { db, dir, .. }| async move {
        let shm = dir.join("shm");
        let instance = Arc::new(shm::InstanceDir::open(&shm).unwrap());
        let (ep, url) = Endpoint::start(&[503]).await;
        let settings = settings(&url, &[("tok", 1000)]);
        let tracker = Arc::new(QuotaTracker::new());
        tracker.set_quotas(HashMap::from([(
            "tok".to_string(),
            quota(1500, QuotaPeriod::Month),
        )]));
        let changes = tracker.subscribe();
        let producer = Producer::create(&shm.join("events-0.ring"));
        let drain = EventDrain::new(db.clone(), Arc::clone(&instance), NODE.into())
            .with_reports(Arc::clone(&settings))
            .with_quotas(Arc::clone(&tracker));
        let drain = tokio::spawn(drain.run());
        start_sender(&db, &settings);

        let now = u64::try_from(now_ms()).unwrap();
        let traffic = |bytes_in, bytes_out, closed| Event::TenantTraffic {
            run_id: "run1".into(),
            token: "tok".into(),
            proxy: "web".into(),
            bytes_in,
            bytes_out,
            closed,
        };
        producer.push_at(traffic(600, 100, false), now);
        producer.push_at(traffic(200, 200, false), now);
        wait_until("a report", || ep.delivered().len() == 1).await;
        assert_eq!(ep.delivered()[0].traffic_in, 800);
        assert_eq!(ep.delivered()[0].traffic_out, 300);
        assert_eq!(ep.delivered()[0].timestamp, (now / 1000) as i64);
        assert!(!tracker.is_over("tok"));

        producer.push_at(traffic(300, 100, false), now);
        producer.push_at(traffic(0, 50, true), now);
        wait_until("over quota", || tracker.is_over("tok")).await;
        assert!(changes.has_changed().unwrap());
        wait_until("the remainder", || ep.delivered().len() == 2).await;
        assert_eq!(
            (ep.delivered()[1].traffic_in, ep.delivered()[1].traffic_out),
            (300, 150)
        );
        assert_eq!(tracker.usage("tok").unwrap().bytes, 1550);
        drain.abort();
    });
}
