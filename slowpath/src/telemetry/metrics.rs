//! The slowpath's Prometheus metrics (`GET /metrics`, `prometheus-client`):
//! API requests by route, method and status, with their latency; node
//! agents connected and the tables sent to them; and, read
//! when scraped, the event drain (events written and lost, refusals by
//! kind, each fastpath worker's ring drops and applied policy
//! generation), the ACME task, the DNS manager and the etcd source.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route as declared (`/api/v1/admin/nodes/{id}`).
    pub route: String,
    /// `GET`, `POST`, …
    pub method: String,
    /// The answer's status code.
    pub status: u16,
}

/// A route's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route as declared.
    pub route: String,
    /// `GET`, `POST`, …
    pub method: String,
}

/// What the API counts as it serves.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    /// Node agents' long polls open now.
    agents: Gauge,
    /// Tables sent to node agents.
    agent_tables: Counter,
    /// Event records node agents shipped, written.
    agent_events: Counter,
    /// Event batches node agents sent again, already written.
    agent_batches_repeated: Counter,
    /// Event records node agents' spools dropped for room, as they said.
    agent_events_dropped: Counter,
}

/// One node agent's long poll, counted while it is open.
pub struct AgentPoll(Gauge);

impl Drop for AgentPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 0.25 ms to about 8 s.
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            agents: Gauge::default(),
            agent_tables: Counter::default(),
            agent_events: Counter::default(),
            agent_batches_repeated: Counter::default(),
            agent_events_dropped: Counter::default(),
        }
    }
}

impl ApiMetrics {
    /// A node agent's long poll opens; it counts until the guard drops.
    pub fn agent_poll(&self) -> AgentPoll {
        self.agents.inc();
        AgentPoll(self.agents.clone())
    }

    /// A table went to a node agent.
    pub fn agent_table_sent(&self) {
        self.agent_tables.inc();
    }

    /// Event batches from a node agent: records written, batches already
    /// written, records its spool dropped.
    pub fn agent_events(&self, written: u64, repeated: u64, dropped: u64) {
        self.agent_events.inc_by(written);
        self.agent_batches_repeated.inc_by(repeated);
        self.agent_events_dropped.inc_by(dropped);
    }

    /// One answered request.
    pub fn observe(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The exposition, OpenMetrics text: the API's own metrics and the state
/// of the parts behind it now.
pub fn render(app: &crate::api::App) -> String {
    let mut r = Registry::with_prefix("totoro_slowpath");
    let m: &Arc<ApiMetrics> = &app.metrics;
    r.register(
        "api_requests",
        "API requests answered, by route, method and status",
        m.requests.clone(),
    );
    r.register(
        "api_request_duration_seconds",
        "time to answer an API request, by route and method",
        m.latency.clone(),
    );
    r.register(
        "agents_connected",
        "node agents waiting on a policy long poll now",
        m.agents.clone(),
    );
    r.register(
        "agent_tables_sent",
        "policy tables sent to node agents",
        m.agent_tables.clone(),
    );
    r.register(
        "agent_events",
        "Event records node agents shipped, written once each",
        m.agent_events.clone(),
    );
    r.register(
        "agent_batches_repeated",
        "Event batches node agents sent again that were already written (acknowledged, not written twice)",
        m.agent_batches_repeated.clone(),
    );
    r.register(
        "agent_events_dropped",
        "Event records node agents' spools dropped for room, oldest first, as the agents said",
        m.agent_events_dropped.clone(),
    );
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    let drain = app.drain.lock().map(|d| d.clone()).unwrap_or_default();
    r.register(
        "events_ingested",
        "fastpath events written to the database",
        counter(drain.events_ingested),
    );
    r.register(
        "events_lost",
        "fastpath events given up after the database refused them",
        counter(drain.events_lost),
    );
    r.register(
        "events_rejected",
        "ring records that did not decode or were not signed by this instance's fastpath",
        counter(drain.undecodable + drain.unauthenticated),
    );
    let refusals = Family::<Vec<(String, String)>, Counter>::default();
    for (kind, n) in &drain.refusals {
        refusals
            .get_or_create(&vec![("kind".into(), (*kind).to_owned())])
            .inc_by(*n);
    }
    r.register(
        "refusals",
        "logins and proxies refused, and sessions the policy ended, by kind",
        refusals,
    );
    let dropped = Family::<Vec<(String, String)>, Counter>::default();
    let applied = Family::<Vec<(String, String)>, Gauge>::default();
    for w in &drain.workers {
        let l = vec![("worker".into(), w.worker.to_string())];
        dropped.get_or_create(&l).inc_by(w.dropped);
        applied
            .get_or_create(&l)
            .set(i64::try_from(w.applied_generation).unwrap_or(i64::MAX));
    }
    r.register(
        "ring_dropped",
        "events a fastpath worker dropped because its ring was full",
        dropped,
    );
    r.register(
        "worker_policy_generation",
        "policy generation each fastpath worker enforces",
        applied,
    );
    r.register(
        "policy_generation",
        "policy generation last published",
        gauge(i64::try_from(app.publisher.status().generation).unwrap_or(i64::MAX)),
    );
    if let Some(acme) = &app.acme {
        let s = acme.status.lock().map(|s| s.clone()).unwrap_or_default();
        r.register(
            "acme_issued",
            "certificates issued since start",
            counter(s.issued),
        );
        r.register(
            "acme_failed",
            "certificate orders failed since start",
            counter(s.failed),
        );
        r.register(
            "acme_account_ready",
            "the ACME account is registered (1) or not (0)",
            gauge(i64::from(s.account)),
        );
    }
    if let Some(dns) = &app.dns {
        let s = dns.status.lock().map(|s| s.clone()).unwrap_or_default();
        r.register(
            "dns_updates",
            "DNS updates the zone's server accepted since start",
            counter(s.updates),
        );
        r.register(
            "dns_failed",
            "DNS updates that failed since start",
            counter(s.failed),
        );
    }
    if let Some(etcd) = &app.tenants.etcd {
        let h = etcd.health();
        r.register(
            "etcd_connected",
            "the etcd tenant source has listed and is watching (1) or not (0)",
            gauge(i64::from(h.connected)),
        );
        r.register(
            "etcd_tenants",
            "tenants read from etcd",
            gauge(i64::try_from(h.tenants).unwrap_or(i64::MAX)),
        );
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}
