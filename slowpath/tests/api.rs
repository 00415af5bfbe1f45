//! End-to-end tests of the slowpath API, each against SQLite and (when
//! TOTORO_TEST_DATABASE_URL is set) PostgreSQL, driving the real binary.

mod harness;

use std::time::Duration;

use harness::{each_backend, strings_at, wait_within, Backend, Slowpath};
use proto::policy::{InviteId, PolicyTable};
use serde_json::json;

fn private_node(sp: &Slowpath) -> (serde_json::Value, String) {
    sp.node(json!({
        "name": "relay-a", "server_addr": "relay.example", "server_port": 7000,
        "port_pool": "2000-3000", "proxy_types": ["tcp", "udp"],
    }))
}

#[test]
fn concurrent_resolves_of_a_ten_use_invite_succeed_exactly_ten_times() {
    each_backend("concurrent_resolves", |b| {
        let sp = Slowpath::start(&b, &["--resolve-rate", "10000"]);
        let (_, key) = private_node(&sp);
        let (status, inv) = sp.invite(&key, json!({ "max_uses": 10 }));
        assert_eq!(status, 201, "{inv}");
        let code = inv["code"].as_str().unwrap().to_owned();
        let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100).map(|_| s.spawn(|| sp.resolve(&code))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.0 == 200).count();
        let gone: Vec<_> = results.iter().filter(|r| r.0 == 410).collect();
        assert_eq!(ok, 10, "{results:?}");
        assert_eq!(gone.len(), 90, "{results:?}");
        for g in gone {
            assert_eq!(g.1["error"], "invite exhausted (10 of 10 uses)");
        }
        let (_, list) = sp.call("GET", "/api/v1/nodes/invites", Some(&key), None);
        assert_eq!(list[0]["used"], 10);
        assert_eq!(list[0]["status"], "exhausted");
        assert!(
            list[0].get("code").is_none(),
            "list must never show the code"
        );
        let (_, audit) = sp.admin_call(
            "GET",
            &format!(
                "/api/v1/admin/audit?kind=invite.resolved&invite_id={}&limit=1000",
                inv["id"].as_str().unwrap()
            ),
            None,
        );
        assert_eq!(audit.as_array().unwrap().len(), 10);
    });
}

#[test]
fn resolve_is_rate_limited_per_ip() {
    each_backend("rate_limit", |b| {
        let sp = Slowpath::start(&b, &["--resolve-rate", "3"]);
        for _ in 0..3 {
            assert_eq!(sp.resolve("NOPE-NOPE").0, 404);
        }
        let ((status, body), retry) = harness::call(
            &format!("{}/api/v1/invites/resolve", sp.base),
            "POST",
            None,
            Some(r#"{"code":"NOPE-NOPE"}"#),
        );
        assert_eq!(status, 429, "{body}");
        assert!(body["error"].as_str().unwrap().contains("too many"));
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=30).contains(&retry));
    });
}

#[test]
fn bad_input_is_400_naming_the_field() {
    each_backend("bad_input", |b| {
        let sp = Slowpath::start(&b, &[]);
        let (_, key) = private_node(&sp);
        let cases: &[(&str, &str, Option<&str>)] = &[
            (r#"{"max_uses": 1"#, "malformed JSON", None),
            (r#"{"max_uses": "ten"}"#, "max_uses", Some("max_uses")),
            (
                r#"{"scope": {"max_conns": -1}}"#,
                "scope.max_conns",
                Some("scope.max_conns"),
            ),
            (
                r#"{"scope": {"port_pool": "2000-4000"}}"#,
                "not inside the node's pool",
                Some("scope.port_pool"),
            ),
            (
                r#"{"scope": {"port_pool": "abc"}}"#,
                "scope.port_pool",
                Some("scope.port_pool"),
            ),
            (
                r#"{"scope": {"proxy_types": ["http"]}}"#,
                "node's types",
                Some("scope.proxy_types"),
            ),
            (r#"{"ticket_ttl_s": 599}"#, "600-3600", Some("ticket_ttl_s")),
            (
                r#"{"ticket_ttl_s": 3601}"#,
                "600-3600",
                Some("ticket_ttl_s"),
            ),
            (r#"{"bogus": 1}"#, "unknown field", Some("bogus")),
        ];
        for (body, needle, field) in cases {
            let (status, v) = sp.call("POST", "/api/v1/nodes/invites", Some(&key), Some(body));
            assert_eq!(status, 400, "{body}: {v}");
            assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
            assert_eq!(v["field"].as_str(), *field, "{body}: {v}");
        }
        let (status, v) = sp.call("POST", "/api/v1/invites/resolve", None, Some("{}"));
        assert_eq!((status, v["field"].as_str()), (400, Some("code")), "{v}");
        let (status, v) = sp.admin_call(
            "POST",
            "/api/v1/admin/nodes",
            Some(json!({"name": "x", "server_addr": "h", "port_pool": "9-2"})),
        );
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some("port_pool")),
            "{v}"
        );
        let (status, v) = sp.admin_call(
            "POST",
            "/api/v1/admin/nodes",
            Some(json!({"name": "x", "server_addr": "h", "server_port": 70000})),
        );
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some("server_port")),
            "{v}"
        );
        // Nothing was half-written: the node still has no invites.
        let (_, list) = sp.call("GET", "/api/v1/nodes/invites", Some(&key), None);
        assert_eq!(list.as_array().unwrap().len(), 0);
        let (status, _) = sp.call("GET", "/api/v1/no/such/route", None, None);
        assert_eq!(status, 404);
    });
}

#[test]
fn missing_key_is_401_wrong_key_is_403() {
    each_backend("auth", |b| {
        let sp = Slowpath::start(&b, &[]);
        assert_eq!(sp.call("GET", "/api/v1/admin/nodes", None, None).0, 401);
        assert_eq!(
            sp.call("GET", "/api/v1/admin/nodes", Some("tak_wrong"), None)
                .0,
            403
        );
        assert_eq!(sp.call("GET", "/api/v1/admin/audit", None, None).0, 401);
        assert_eq!(sp.call("GET", "/api/v1/nodes/invites", None, None).0, 401);
        assert_eq!(
            sp.call("GET", "/api/v1/nodes/invites", Some("nk_wrong"), None)
                .0,
            403
        );
        let (status, v) = sp.call(
            "POST",
            "/api/v1/nodes/heartbeat",
            Some(&sp.admin),
            Some("{}"),
        );
        assert_eq!(status, 403, "the admin key is not a node key: {v}");
        assert_eq!(
            sp.call("GET", "/api/v1/admin/nodes", Some(&sp.admin), None)
                .0,
            200
        );
    });
}

#[test]
fn unknown_expired_and_revoked_invites_say_why() {
    each_backend("expired_revoked", |b| {
        let sp = Slowpath::start(&b, &[]);
        let (_, key) = private_node(&sp);
        let (status, v) = sp.resolve("0000-0000-0000-0000-0000");
        assert_eq!(status, 404, "{v}");
        let (_, short) = sp.invite(&key, json!({ "ttl_s": 1 }));
        let (_, revoked) = sp.invite(&key, json!({ "max_uses": 5 }));
        let id = revoked["id"].as_str().unwrap();
        let (status, v) = sp.call(
            "POST",
            &format!("/api/v1/nodes/invites/{id}/revoke"),
            Some(&key),
            None,
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "revoked");
        let (status, v) = sp.resolve(revoked["code"].as_str().unwrap());
        assert_eq!(
            (status, v["error"].as_str()),
            (410, Some("invite revoked")),
            "{v}"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let (status, v) = sp.resolve(short["code"].as_str().unwrap());
        assert_eq!(
            (status, v["error"].as_str()),
            (410, Some("invite expired")),
            "{v}"
        );
        // Codes are case-insensitive.
        let (_, ok) = sp.invite(&key, json!({}));
        let (status, v) = sp.resolve(&ok["code"].as_str().unwrap().to_lowercase());
        assert_eq!(status, 200, "{v}");
        // Another node's key cannot revoke it.
        let (_, other_key) = private_node(&sp);
        let path = format!(
            "/api/v1/nodes/invites/{}/revoke",
            ok["id"].as_str().unwrap()
        );
        assert_eq!(sp.call("POST", &path, Some(&other_key), None).0, 404);
    });
}

#[test]
fn openapi_lists_exactly_the_served_routes() {
    each_backend("openapi", |b| {
        let sp = Slowpath::start(&b, &[]);
        let (status, doc) = sp.call("GET", "/api/v1/openapi.json", None, None);
        assert_eq!(status, 200);
        let paths = doc["paths"].as_object().unwrap();
        for required in [
            "/api/v1/public/nodes",
            "/api/v1/invites/resolve",
            "/api/v1/nodes/heartbeat",
            "/api/v1/nodes/invites",
            "/api/v1/frps/auth/handshake",
            "/api/v1/frps/auth/proxy",
            "/api/v1/admin/audit",
            "/api/v1/admin/stats",
            "/api/v1/tenants",
            "/api/v1/tenants/{token}",
        ] {
            assert!(paths.contains_key(required), "{required} not documented");
        }
        // Every documented method+path is routed: the fallback (404 "no such
        // route") and 405 never answer a documented pair.
        for (path, methods) in paths {
            let concrete = path.replace("{id}", "x").replace("{token}", "x");
            for method in methods.as_object().unwrap().keys() {
                let body = matches!(method.as_str(), "post" | "patch").then_some("{}");
                let (status, v) = sp.call(&method.to_uppercase(), &concrete, Some(&sp.admin), body);
                assert_ne!(status, 405, "{method} {path}");
                assert!(
                    !(status == 404 && v["error"] == "no such route"),
                    "{method} {path} is documented but not routed"
                );
            }
        }
    });
}

/// Reads the published table and waits until `pred` holds for it.
fn wait_table(sp: &Slowpath, pred: impl Fn(&PolicyTable<'_>) -> bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    wait_within(
        Duration::from_secs(5),
        "the policy table to reach the expected state",
        || {
            bytes = std::fs::read(sp.shm.join("policy.tbl")).unwrap_or_default();
            PolicyTable::parse(&bytes).is_ok_and(|t| pred(&t))
        },
    );
    bytes
}

#[test]
fn ticket_verifies_against_the_published_key_and_revocation_is_published() {
    each_backend("ticket_and_table", |b| {
        let sp = Slowpath::start(&b, &[]);
        let node = sp.local_node.clone();
        let inv = sp.admin_invite(json!({ "max_uses": 3, "ticket_ttl_s": 600, "scope": { "port_pool": "10000-10009", "max_conns": 2 } }));
        let inv_id = InviteId::parse(inv["id"].as_str().unwrap()).unwrap();
        let (status, r) = sp.resolve(inv["code"].as_str().unwrap());
        assert_eq!(status, 200, "{r}");
        let ticket = r["connection_ticket"].as_str().unwrap();
        let toml = r["frpc_toml"].as_str().unwrap();
        let cfg: toml::Table = toml::from_str(toml).expect("frpc_toml parses as TOML");
        assert_eq!(cfg["metadatas"]["ticket"].as_str(), Some(ticket), "{toml}");
        assert_eq!(cfg["serverPort"].as_integer(), Some(7000), "{toml}");
        assert_eq!(
            cfg["proxies"][0]["remotePort"].as_integer(),
            Some(10000),
            "{toml}"
        );

        let bytes = wait_table(&sp, |t| t.invite(&inv_id).is_some());
        let table = PolicyTable::parse(&bytes).unwrap();
        assert_eq!(table.node().node_id(), node);
        let kid = proto::ticket::peek_kid(ticket).unwrap();
        let key = table
            .ticket_key(&kid)
            .expect("the signing key is in the table");
        let claims = proto::ticket::verify(ticket, &key).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        proto::ticket::check(&claims, now, &node).unwrap();
        assert_eq!(
            proto::ticket::check(&claims, now, "node_other"),
            Err(proto::ticket::TicketError::WrongNode)
        );
        assert_eq!(claims.inv, inv_id.to_string());
        assert!(claims.exp - claims.iat == 600);
        let view = table.invite(&inv_id).unwrap();
        assert_eq!(view.max_conns(), 2);
        assert!(!view.revoked());
        let gen = table.generation();

        let (status, _) = sp.admin_call(
            "POST",
            &format!("/api/v1/admin/invites/{inv_id}/revoke"),
            None,
        );
        assert_eq!(status, 200);
        let bytes = wait_table(&sp, |t| t.invite(&inv_id).is_some_and(|i| i.revoked()));
        assert!(PolicyTable::parse(&bytes).unwrap().generation() > gen);
    });
}

#[test]
fn audit_shows_the_invite_lifecycle() {
    each_backend("audit", |b| {
        let sp = Slowpath::start(&b, &[]);
        let (_, key) = private_node(&sp);
        let (_, inv) = sp.invite(&key, json!({ "max_uses": 1 }));
        let id = inv["id"].as_str().unwrap();
        assert_eq!(sp.resolve(inv["code"].as_str().unwrap()).0, 200);
        assert_eq!(sp.resolve(inv["code"].as_str().unwrap()).0, 410);
        assert_eq!(
            sp.call(
                "POST",
                &format!("/api/v1/nodes/invites/{id}/revoke"),
                Some(&key),
                None
            )
            .0,
            200
        );
        let (status, rows) =
            sp.admin_call("GET", &format!("/api/v1/admin/audit?invite_id={id}"), None);
        assert_eq!(status, 200, "{rows}");
        assert_eq!(
            strings_at(&rows, "kind"),
            [
                "invite.revoked",
                "invite.rejected",
                "invite.resolved",
                "invite.created"
            ]
        );
        let rejected = &rows[1];
        assert_eq!(rejected["reason"], "invite exhausted (1 of 1 uses)");
        let (status, v) = sp.admin_call("GET", "/api/v1/admin/audit?limit=abc", None);
        assert_eq!(status, 400, "{v}");
    });
}

#[test]
fn public_directory_and_heartbeat() {
    each_backend("public_nodes", |b| {
        let sp = Slowpath::start(&b, &[]);
        let (node, key) = sp.node(json!({
            "name": "pub", "server_addr": "pub.example", "public": true, "region": "eu",
            "tags": ["fast"], "port_pool": "5000-5100", "token": "pubtoken",
        }));
        private_node(&sp);
        let (_, list) = sp.call("GET", "/api/v1/public/nodes", None, None);
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["id"], node["id"]);
        assert_eq!(list[0]["token"], "pubtoken");
        assert_eq!(list[0]["status"], "offline");
        assert!(list[0].get("node_key").is_none());
        let hb = json!({ "versions": { "fastpath": "0.1.0" }, "cpu_percent": 3.5, "connections": 2, "proxies": 1 });
        let (status, v) = sp.call(
            "POST",
            "/api/v1/nodes/heartbeat",
            Some(&key),
            Some(&hb.to_string()),
        );
        assert_eq!(status, 200, "{v}");
        let (_, list) = sp.call("GET", "/api/v1/public/nodes", None, None);
        assert_eq!(list[0]["status"], "online");
        // Making it private takes it out of the directory.
        let path = format!("/api/v1/admin/nodes/{}", node["id"].as_str().unwrap());
        assert_eq!(
            sp.admin_call("PATCH", &path, Some(json!({ "public": false })))
                .0,
            200
        );
        let (_, list) = sp.call("GET", "/api/v1/public/nodes", None, None);
        assert_eq!(list.as_array().unwrap().len(), 0);
    });
}

/// `GET /metrics`: requests counted by route, method and status (the
/// guards' refusals too), their latency, and the drain; OpenMetrics when
/// asked, and the classic text format that `promtool check metrics`
/// accepts (Debian's prometheus; under CI it must be installed).
#[test]
fn metrics_count_requests_by_route_and_status() {
    let sp = Slowpath::start(&Backend::Sqlite, &[]);
    let node = sp.local_node.clone();
    let get = |accept: &str| {
        let r = ureq::get(&format!("{}/metrics", sp.base))
            .set("Accept", accept)
            .call()
            .unwrap();
        let kind = r.header("content-type").unwrap_or_default().to_owned();
        (kind, r.into_string().unwrap())
    };
    let healthz =
        "totoro_slowpath_api_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} ";
    let sample = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = sample(&get("application/openmetrics-text").1, healthz);
    for _ in 0..3 {
        assert_eq!(sp.call("GET", "/healthz", None, None).0, 200);
    }
    let path = format!("/api/v1/admin/nodes/{node}");
    assert_eq!(sp.call("GET", &path, None, None).0, 401);
    assert_eq!(sp.admin_call("GET", &path, None).0, 200);
    let (kind, open) = get("application/openmetrics-text; version=1.0.0");
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert_eq!(sample(&open, healthz), before + 3, "{open}");
    for want in [
        "totoro_slowpath_api_requests_total{route=\"/api/v1/admin/nodes/{id}\",method=\"GET\",status=\"401\"} 1",
        "totoro_slowpath_api_requests_total{route=\"/api/v1/admin/nodes/{id}\",method=\"GET\",status=\"200\"} 1",
        "# TYPE totoro_slowpath_api_request_duration_seconds histogram",
        "totoro_slowpath_events_ingested_total ",
        "totoro_slowpath_policy_generation ",
    ] {
        assert!(open.contains(want), "{want} missing from:\n{open}");
    }
    assert!(open.ends_with("# EOF\n"));
    let (kind, text) = get("text/plain");
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    match bench::proc::promtool_check(&text) {
        Some(verdict) => verdict.unwrap_or_else(|e| panic!("promtool: {e}\n{text}")),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed (.ci/metrics.sh installs Debian's prometheus)"
            );
            println!("SKIPPED: promtool not installed");
        }
    }
}
