//! Issue 14's policy half end to end, on SQLite and PostgreSQL: `slowpath
//! up` with frps's vhost keys (the node row, the fastpath.toml it writes,
//! the table), an invite with a subdomain of its own (stable, in the
//! resolve response and its frpc.toml, reserved on the data plane), the
//! invite's domain_suffix enforced, and the audit log naming the domains.
//! Real binaries, real sockets, the in-repo frp client.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bench::client::{Client, ProxySpec};
use harness::{each_backend, first_login, ticket_opts, wait_audit, Backend, Slowpath};
use serde_json::{json, Value};

/// An HTTP origin that answers every request with `body` and closes.
fn origin(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).ok() == Some(1) {
                    head.push(b[0]);
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// `GET /` for `host` on the vhost port; the status line and the body.
fn get(port: u16, host: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.lines().next().unwrap_or_default().to_owned();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Register an http proxy to `local`, `adjust`ed.
fn http_proxy(
    c: &Client,
    name: &str,
    local: SocketAddr,
    adjust: impl FnOnce(&mut proto::msg::NewProxy),
) -> Result<String, String> {
    c.register_proxy(ProxySpec::plain(name, 0, local), |np| {
        np.proxy_type = "http".into();
        adjust(np);
    })
    .map_err(|e| e.to_string())
}

fn resolve(sp: &Slowpath, code: &str) -> Value {
    let (st, v) = sp.resolve(code);
    assert_eq!(st, 200, "{v}");
    v
}

fn vhosts(backend: Backend) {
    let http = bench::proc::free_port();
    let http_s = http.to_string();
    let sp = Slowpath::up(
        &backend,
        &[
            "--vhost-http-port",
            &http_s,
            "--sub-domain-host",
            "Node.Example.Test",
        ],
    );
    sp.wait_frp();

    // The node row has the keys (the host in lower case) and http turned on.
    let (st, node) = sp.admin_call(
        "GET",
        &format!("/api/v1/admin/nodes/{}", sp.local_node),
        None,
    );
    assert_eq!(st, 200, "{node}");
    assert_eq!(node["sub_domain_host"], "node.example.test");
    assert_eq!(node["vhost_http_port"], http);
    assert_eq!(node["vhost_https_port"], 0);
    let types: Vec<&str> = node["proxy_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(types.contains(&"http"), "{node}");
    // The fastpath runs with them.
    let fp: toml::Table =
        toml::from_str(&std::fs::read_to_string(sp.dir.join("fastpath.toml")).unwrap()).unwrap();
    assert_eq!(fp["vhostHTTPPort"].as_integer(), Some(i64::from(http)));
    assert_eq!(fp["subDomainHost"].as_str(), Some("node.example.test"));
    // The demo invite got a subdomain, and its frpc.toml an http proxy on it.
    let demo: toml::Table =
        toml::from_str(&std::fs::read_to_string(sp.dir.join("frpc-demo.toml")).unwrap()).unwrap();
    let demo_http = demo["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"].as_str() == Some("http"))
        .unwrap_or_else(|| panic!("no http proxy in the demo frpc.toml: {demo:?}"));
    assert_eq!(demo_http["subdomain"].as_str().map(str::len), Some(8));

    // An invite with a subdomain of its own and a domain suffix.
    let inv = sp.admin_invite(json!({
        "max_uses": 2,
        "scope": {
            "proxy_types": ["tcp", "http"],
            "domain_suffix": "apps.example.test",
            "auto_subdomain": true,
        },
    }));
    let label = inv["scope"]["subdomain"].as_str().unwrap().to_owned();
    assert_eq!(label.len(), 8, "{inv}");
    assert!(
        label.starts_with(|c: char| c.is_ascii_lowercase()),
        "{label}"
    );
    assert!(
        label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{label}"
    );
    let domain = format!("{label}.node.example.test");
    let code = inv["code"].as_str().unwrap();
    let first = resolve(&sp, code);
    let again = resolve(&sp, code);
    for r in [&first, &again] {
        // Stable for the invite.
        assert_eq!(r["scope"]["subdomain"], label.as_str());
        assert_eq!(r["domain"], domain.as_str());
        assert_eq!(r["url"], format!("http://{domain}:{http}/"));
        let cfg: toml::Table = toml::from_str(r["frpc_toml"].as_str().unwrap()).unwrap();
        let p = cfg["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"].as_str() == Some("http"))
            .unwrap_or_else(|| panic!("no http proxy: {r}"));
        assert_eq!(p["subdomain"].as_str(), Some(label.as_str()));
    }
    // Another invite with http and no subdomain of its own.
    let other = sp.admin_invite(json!({ "scope": { "proxy_types": ["http"] } }));
    assert_eq!(other["scope"]["subdomain"], "");
    let other = resolve(&sp, other["code"].as_str().unwrap());
    assert_eq!(other["domain"], Value::Null);
    assert_eq!(other["url"], Value::Null);

    let a = first_login(&ticket_opts(&sp, &first));
    let b = first_login(&ticket_opts(&sp, &other));
    let (mine, inside, stolen) = (origin("mine"), origin("inside"), origin("stolen"));

    // The label is the first invite's alone.
    let err = http_proxy(&b, "steal", stolen, |np| np.sub_domain = label.clone()).unwrap_err();
    assert!(
        err.contains(&format!(
            "subdomain [{label}] is reserved for an invite on this node"
        )),
        "{err}"
    );
    // Nor can a wildcard cover it, or a custom domain name it.
    let err = http_proxy(&b, "cover", stolen, |np| {
        np.custom_domains = vec!["*.example.test".into()]
    })
    .unwrap_err();
    assert!(
        err.contains(
            "wildcard domain [*.example.test] would cover the subdomains under [node.example.test]"
        ),
        "{err}"
    );
    let err = http_proxy(&b, "named", stolen, |np| {
        np.custom_domains = vec![domain.to_uppercase()]
    })
    .unwrap_err();
    assert!(err.contains("should not belong to subdomain host"), "{err}");
    // Its own invite uses it, outside its domain_suffix.
    http_proxy(&a, "mine", mine, |np| np.sub_domain = label.to_uppercase()).expect("own label");
    // Its custom domains stay under the suffix.
    let err = http_proxy(&a, "outside", inside, |np| {
        np.custom_domains = vec!["web.other.test".into()]
    })
    .unwrap_err();
    assert!(
        err.contains("domain web.other.test is not under apps.example.test"),
        "{err}"
    );
    http_proxy(&a, "inside", inside, |np| {
        np.custom_domains = vec!["web.apps.example.test".into()]
    })
    .expect("a domain under the suffix");
    // A label nobody reserved is anyone's.
    http_proxy(&b, "free", stolen, |np| np.sub_domain = "free".into()).expect("free label");

    // Served on the vhost port.
    assert_eq!(
        get(http, &domain),
        ("HTTP/1.1 200 OK".to_owned(), "mine".to_owned())
    );
    assert_eq!(get(http, "web.apps.example.test").1, "inside");
    assert_eq!(get(http, "free.node.example.test").1, "stolen");
    assert!(get(http, "nobody.node.example.test").0.contains(" 404 "));

    // The audit log names the domains, and the refusals' reasons.
    let reg = wait_audit(&sp, "proxy.registered", |r| r["proxy"] == "mine");
    assert_eq!(reg["detail"]["domains"], json!([domain]), "{reg}");
    assert_eq!(reg["invite_id"], first["invite_id"], "{reg}");
    let reg = wait_audit(&sp, "proxy.registered", |r| r["proxy"] == "inside");
    assert_eq!(reg["detail"]["domains"], json!(["web.apps.example.test"]));
    let rej = wait_audit(&sp, "proxy.rejected", |r| r["proxy"] == "steal");
    assert!(
        rej["reason"].as_str().unwrap().contains("is reserved"),
        "{rej}"
    );
    let rej = wait_audit(&sp, "proxy.rejected", |r| r["proxy"] == "outside");
    assert!(
        rej["reason"].as_str().unwrap().contains("domain_suffix"),
        "{rej}"
    );
    a.kill();
    b.kill();

    // What the API refuses, naming the field.
    let (_, key) = sp.node(
        json!({ "name": "plain", "server_addr": "192.0.2.1", "proxy_types": ["tcp", "http"] }),
    );
    let (st, v) = sp.invite(&key, json!({ "scope": { "auto_subdomain": true } }));
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "scope.auto_subdomain", "{v}");
    assert!(v["error"].as_str().unwrap().contains("no sub_domain_host"));
    let (_, key) = sp.node(json!({
        "name": "named", "server_addr": "192.0.2.2", "sub_domain_host": "named.example.test",
        "proxy_types": ["tcp", "http"],
    }));
    let (st, v) = sp.invite(
        &key,
        json!({ "scope": { "auto_subdomain": true, "proxy_types": ["tcp"] } }),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "scope.auto_subdomain", "{v}");
    assert!(v["error"].as_str().unwrap().contains("needs http or https"));
    let (st, v) = sp.invite(&key, json!({ "scope": { "auto_subdomain": true } }));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["scope"]["subdomain"].as_str().map(str::len), Some(8));
    for bad in ["*.example.com", "a..b", "-a.example", "a b", "x/y"] {
        let (st, v) = sp.admin_call(
            "PATCH",
            &format!("/api/v1/admin/nodes/{}", sp.local_node),
            Some(json!({ "sub_domain_host": bad })),
        );
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(v["field"], "sub_domain_host", "{v}");
    }
}

#[test]
fn invites_get_subdomains_of_their_own_and_domains_are_policy() {
    each_backend("vhosts", vhosts);
}
