//! The frps server-plugin hooks (seed 001's `/api/v1/frps/auth/*`): a stock
//! frps configured with `httpPlugins` posting Login and NewProxy bodies gets
//! the same verdicts the fastpath reaches from its table.

mod harness;

use harness::{each_backend, Slowpath};
use serde_json::{json, Value};

fn hook(sp: &Slowpath, path: &str, body: Value) -> Value {
    let (status, v) = sp.call("POST", path, None, Some(&body.to_string()));
    assert_eq!(status, 200, "{v}");
    v
}

fn login_body(ticket: Option<&str>) -> Value {
    let mut content =
        json!({ "version": "0.61.1", "user": "", "privilege_key": "x", "timestamp": 1 });
    if let Some(t) = ticket {
        content["metas"] = json!({ "ticket": t });
    }
    json!({ "version": "0.1.0", "op": "Login", "content": content })
}

/// The hook paths of the local node, as the admin API gives them, with
/// the `?version=…&op=…` frps appends to each.
struct Hooks {
    login: String,
    proxy: String,
    token: String,
}

fn hooks(sp: &Slowpath) -> Hooks {
    let (st, v) = sp.admin_call(
        "GET",
        &format!("/api/v1/admin/nodes/{}/frps-hook", sp.local_node),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let path = |k: &str| v[k].as_str().unwrap().to_owned();
    assert!(v["frps_toml"]
        .as_str()
        .unwrap()
        .contains(&path("proxy_path")));
    let token = path("handshake_path").split('/').nth(5).unwrap().to_owned();
    Hooks {
        login: format!("{}?version=0.1.0&op=Login", path("handshake_path")),
        proxy: format!("{}?version=0.1.0&op=NewProxy", path("proxy_path")),
        token,
    }
}

fn login(sp: &Slowpath, ticket: Option<&str>) -> Value {
    hook(sp, &hooks(sp).login, login_body(ticket))
}

fn new_proxy(sp: &Slowpath, ticket: &str, proxy_type: &str, port: u16) -> Value {
    hook(
        sp,
        &hooks(sp).proxy,
        json!({ "version": "0.1.0", "op": "NewProxy", "content": {
            "user": { "user": "", "metas": { "ticket": ticket }, "run_id": "r1" },
            "proxy_name": "p", "proxy_type": proxy_type, "remote_port": port,
        }}),
    )
}

#[test]
fn plugin_hooks_decide_like_the_fastpath() {
    each_backend("frps_plugin", |b| {
        let sp = Slowpath::start(&b, &[]);
        let node = sp.local_node.clone();
        let (st, inv) = sp.admin_call(
            "POST",
            &format!("/api/v1/admin/nodes/{node}/invites"),
            Some(json!({ "max_uses": 2, "scope": { "port_pool": "10000-10009", "proxy_types": ["tcp"] } })),
        );
        assert_eq!(st, 201, "{inv}");
        let (st, r) = sp.resolve(inv["code"].as_str().unwrap());
        assert_eq!(st, 200, "{r}");
        let ticket = r["connection_ticket"].as_str().unwrap().to_owned();

        // Private node: no ticket, no entry; a good ticket gets in.
        let v = login(&sp, None);
        assert_eq!(v["reject"], true);
        // The fastpath's words: both come from proto::policy::decide.
        assert_eq!(
            v["reject_reason"],
            "this node is private: log in with a ticket from an invite (metadatas.ticket in frpc.toml)",
            "{v}"
        );
        let v = login(&sp, Some(&ticket));
        assert_eq!(v["reject"], false, "{v}");
        assert_eq!(v["unchange"], true);
        let v = login(&sp, Some("a.b.c"));
        assert_eq!(v["reject"], true, "{v}");

        // Proxies: the invite's pool and types.
        assert_eq!(new_proxy(&sp, &ticket, "tcp", 10005)["reject"], false);
        let id = inv["id"].as_str().unwrap();
        let v = new_proxy(&sp, &ticket, "tcp", 10010);
        assert_eq!(
            v["reject_reason"],
            format!("port 10010 is not in the port pool of invite {id} (10000-10009)"),
            "{v}"
        );
        let v = new_proxy(&sp, &ticket, "udp", 10001);
        assert_eq!(
            v["reject_reason"],
            format!("proxy type udp is not allowed by invite {id} (allowed: tcp)"),
            "{v}"
        );

        // Revoked: refused with that reason.
        let (st, _) = sp.admin_call("POST", &format!("/api/v1/admin/invites/{id}/revoke"), None);
        assert_eq!(st, 200);
        let v = login(&sp, Some(&ticket));
        assert_eq!(
            v["reject_reason"],
            format!("invite {id} has been revoked"),
            "{v}"
        );
        assert_eq!(new_proxy(&sp, &ticket, "tcp", 10005)["reject"], true);

        // A wrong op is refused, a malformed body is a 400 naming the field.
        let h = hooks(&sp);
        let v = hook(&sp, &h.login, json!({ "op": "NewProxy", "content": {} }));
        assert_eq!(v["reject"], true);
        let (st, v) = sp.call("POST", &h.login, None, Some("{\"op\": 5}"));
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["field"], "op", "{v}");

        // Seed 001's path takes the node and token in the query, read up
        // to the `?version=…` frps appends (which used to corrupt the node).
        let body = login_body(None).to_string();
        let seed_path = format!(
            "/api/v1/frps/auth/handshake?node_id={node}&token={}?version=0.1.0&op=Login",
            h.token
        );
        let (st, v) = sp.call("POST", &seed_path, None, Some(&body));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["reject"], true, "private node, no ticket: {v}");
        // No token: 401; a wrong one, or the token for another node: 403.
        // Each names the field.
        for (path, want) in [
            (
                "/api/v1/frps/auth/handshake?version=0.1.0&op=Login".to_owned(),
                401,
            ),
            (
                "/api/v1/frps/auth/handshake?token=fh_00?version=0.1.0&op=Login".to_owned(),
                403,
            ),
            (
                format!("/api/v1/frps/auth/proxy?node_id=other&token={}", h.token),
                403,
            ),
            (
                format!("/api/v1/frps/{node}/fh_{}/auth/handshake", "ab".repeat(32)),
                403,
            ),
            (format!("/api/v1/frps/other/{}/auth/proxy", h.token), 403),
        ] {
            let (st, v) = sp.call("POST", &path, None, Some(&body));
            assert_eq!(st, want, "{path}: {v}");
            assert_eq!(v["field"], "token", "{path}: {v}");
        }
    });
}
