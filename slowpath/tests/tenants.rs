//! The tenants API (seed 002 records kept in the database), each test
//! against SQLite and (when TOTORO_TEST_DATABASE_URL is set) PostgreSQL.

mod harness;

use harness::{each_backend, strings_at, Slowpath};
use serde_json::{json, Value};

/// The seed's record for `user1_chengdu`.
fn seed_record() -> Value {
    json!({
        "token": "user1_chengdu",
        "region": "chengdu",
        "allowPorts": [{"single": 8080}, {"start": 9000, "end": 9100}],
        "bandwidthLimit": "10MB",
        "maxPortsPerClient": 5,
        "enabled": true,
        "description": "用户1的成都节点",
        "trafficReportIntervalMB": 50
    })
}

fn audit_kinds(sp: &Slowpath) -> Vec<String> {
    let (status, rows) = sp.admin_call("GET", "/api/v1/admin/audit?limit=1000", None);
    assert_eq!(status, 200, "{rows}");
    rows.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .filter(|k| k.starts_with("tenant."))
        .map(str::to_owned)
        .collect()
}

#[test]
fn create_list_get_replace_delete() {
    each_backend("tenants_crud", |b| {
        let sp = Slowpath::start(&b, &[]);
        let (status, v) = sp.admin_call("GET", "/api/v1/tenants", None);
        assert_eq!((status, v.clone()), (200, json!([])), "{v}");

        let (status, created) = sp.admin_call("POST", "/api/v1/tenants", Some(seed_record()));
        assert_eq!(status, 201, "{created}");
        let mut want = seed_record();
        want["source"] = json!("database");
        assert_eq!(created, want);

        let (status, dup) = sp.admin_call("POST", "/api/v1/tenants", Some(seed_record()));
        assert_eq!(status, 409, "{dup}");
        assert!(dup["error"].as_str().unwrap().contains("exists"), "{dup}");

        let (status, other) = sp.admin_call(
            "POST",
            "/api/v1/tenants",
            Some(
                json!({"token": "user1_shanghai", "region": "shanghai", "enabled": true,
                        "trafficQuota": "100GB", "quotaPeriod": "day"}),
            ),
        );
        assert_eq!(status, 201, "{other}");
        assert_eq!(other["trafficQuota"], "100GB");

        let (status, list) = sp.admin_call("GET", "/api/v1/tenants", None);
        assert_eq!(status, 200);
        assert_eq!(
            strings_at(&list, "token"),
            ["user1_chengdu", "user1_shanghai"]
        );

        let (status, got) = sp.admin_call("GET", "/api/v1/tenants/user1_chengdu", None);
        assert_eq!((status, &got), (200, &want));

        // PUT replaces the whole record; the token may come from the path.
        let (status, put) = sp.admin_call(
            "PUT",
            "/api/v1/tenants/user1_chengdu",
            Some(json!({"region": "chengdu", "allowPorts": [{"single": 7001}], "enabled": false})),
        );
        assert_eq!(status, 200, "{put}");
        assert_eq!(put["token"], "user1_chengdu");
        assert_eq!(put["enabled"], false);
        assert_eq!(put["bandwidthLimit"], "", "replaced, not merged");
        let (_, got) = sp.admin_call("GET", "/api/v1/tenants/user1_chengdu", None);
        assert_eq!(got, put);

        let (status, e) = sp.admin_call(
            "PUT",
            "/api/v1/tenants/user1_chengdu",
            Some(json!({"token": "someone_else", "region": "chengdu"})),
        );
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["field"], "token");
        let (status, e) = sp.admin_call(
            "PUT",
            "/api/v1/tenants/nobody",
            Some(json!({"region": "chengdu"})),
        );
        assert_eq!(status, 404, "{e}");

        let (status, _) = sp.admin_call("DELETE", "/api/v1/tenants/user1_chengdu", None);
        assert_eq!(status, 204);
        let (status, e) = sp.admin_call("GET", "/api/v1/tenants/user1_chengdu", None);
        assert_eq!(status, 404, "{e}");
        assert!(
            e["error"].as_str().unwrap().contains("user1_chengdu"),
            "{e}"
        );
        let (status, _) = sp.admin_call("DELETE", "/api/v1/tenants/user1_chengdu", None);
        assert_eq!(status, 404);
        let (_, list) = sp.admin_call("GET", "/api/v1/tenants", None);
        assert_eq!(list.as_array().unwrap().len(), 1);

        let mut kinds = audit_kinds(&sp);
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "tenant.created",
                "tenant.created",
                "tenant.deleted",
                "tenant.updated"
            ]
        );
    });
}

#[test]
fn bad_records_are_400_naming_the_field_and_only_the_admin_may_call() {
    each_backend("tenants_refusals", |b| {
        let sp = Slowpath::start(&b, &[]);
        let post = |body: &str| sp.call("POST", "/api/v1/tenants", Some(&sp.admin), Some(body));
        let cases = [
            (
                r#"{"token":"t","region":"r","enabled":"yes"}"#,
                Some("enabled"),
            ),
            (r#"{"token":"t"}"#, Some("region")),
            (r#"{"region":"r"}"#, Some("token")),
            (
                r#"{"token":"t","region":"r","allowPort":[]}"#,
                Some("allowPort"),
            ),
            (
                r#"{"token":"t","region":"r","allowPorts":[{"start":9,"end":2}]}"#,
                Some("allowPorts[0]"),
            ),
            (
                r#"{"token":"t","region":"r","bandwidthLimit":"10mb"}"#,
                Some("bandwidthLimit"),
            ),
            (
                r#"{"token":"t","region":"r","trafficQuota":"1GB","overQuota":"throttle"}"#,
                Some("throttleLimit"),
            ),
            (r#"{"token":"t","region":"r""#, None),
            (r#"["t","r"]"#, None),
            ("", None),
        ];
        for (body, field) in cases {
            let (status, e) = post(body);
            assert_eq!(status, 400, "{body}: {e}");
            assert_eq!(e["field"].as_str(), field, "{body}: {e}");
            if let Some(f) = field {
                assert!(e["error"].as_str().unwrap().starts_with(f), "{body}: {e}");
            }
        }
        let (_, list) = sp.admin_call("GET", "/api/v1/tenants", None);
        assert_eq!(list, json!([]), "nothing stored");

        // Not the admin: no key, a wrong key, a node key.
        let (_, node_key) = sp.node(json!({
            "name": "n", "server_addr": "relay.example", "server_port": 7000,
        }));
        let body = seed_record().to_string();
        for (key, want) in [
            (None, 401),
            (Some("wrong"), 403),
            (Some(node_key.as_str()), 403),
        ] {
            for (method, path, body) in [
                ("GET", "/api/v1/tenants", None),
                ("POST", "/api/v1/tenants", Some(body.as_str())),
                ("GET", "/api/v1/tenants/user1_chengdu", None),
                ("PUT", "/api/v1/tenants/user1_chengdu", Some(body.as_str())),
                ("DELETE", "/api/v1/tenants/user1_chengdu", None),
            ] {
                let (status, e) = sp.call(method, path, key, body);
                assert_eq!(status, want, "{method} {path} with {key:?}: {e}");
            }
        }
        let (_, list) = sp.admin_call("GET", "/api/v1/tenants", None);
        assert_eq!(list, json!([]));
    });
}
