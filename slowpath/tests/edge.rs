//! Issue 16, the edge (seed 004), end to end on SQLite and PostgreSQL:
//! origins and routes through the API (bad input refused naming the
//! field), hostnames served on the vhost port to an address origin and to
//! a tunnel origin behind the in-repo frp client, seed 004's edge config
//! with its `config_hash` and `ETag`/304, a redirect to HTTPS, and a
//! deleted route answering 404 at once. Certificates from a real ACME CA
//! are `edge_acme.rs`.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bench::client::ProxySpec;
use harness::dns::{have, ChallTestSrv};
use harness::{each_backend, first_login, ticket_opts, Backend, Slowpath};
use serde_json::{json, Value};

/// An HTTP/1.1 origin that answers every request with `body`, keeping
/// the connection.
fn origin(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).ok() != Some(1) {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_lowercase();
                let proto = if text.contains("x-forwarded-proto: https") {
                    "https"
                } else {
                    "http"
                };
                let reply = format!("{body} via {proto}");
                if write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                )
                .is_err()
                {
                    return;
                }
            });
        }
    });
    addr
}

/// A user's server answering the domain-verification token: 200 with the
/// token for `/.well-known/totoro-verify/<token>` once `token` is set,
/// 404 otherwise.
fn token_origin(token: std::sync::Arc<std::sync::Mutex<String>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).ok() != Some(1) {
                    break;
                }
                head.push(b[0]);
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let t = token.lock().unwrap().clone();
            let reply = if !t.is_empty()
                && text.starts_with(&format!("GET /.well-known/totoro-verify/{t} "))
            {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{t}\n",
                    t.len() + 1
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
            };
            let _ = s.write_all(reply.as_bytes());
        }
    });
    port
}

/// `GET path` for `host` on the vhost port: status line, headers, body.
pub fn get(port: u16, host: &str, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, head.to_owned(), body.to_owned())
}

/// `GET /api/v1/edge-nodes/me/config` with `token` and `If-None-Match`.
fn pull(sp: &Slowpath, token: &str, etag: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = ureq::get(&format!("{}/api/v1/edge-nodes/me/config", sp.base))
        .set("Authorization", &format!("Bearer {token}"));
    if let Some(e) = etag {
        req = req.set("If-None-Match", e);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let etag = resp.header("ETag").map(str::to_owned);
    let body = resp.into_string().unwrap_or_default();
    (
        status,
        etag,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn edge(backend: Backend) {
    if !have(&["pebble-challtestsrv"]) {
        return;
    }
    let http = bench::proc::free_port();
    let https = bench::proc::free_port();
    // hoge.test is the node's own suffix (official); fuga.test is a
    // user's domain, verified by its HTTP token on a server its name
    // resolves to (challtestsrv answers 127.0.0.1 for every name).
    let dir = std::env::temp_dir().join(format!("totoro-edge-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dns = ChallTestSrv::start(&dir);
    let published = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let verify_port = token_origin(published.clone());
    let sp = Slowpath::up(
        &backend,
        &[
            "--vhost-http-port",
            &http.to_string(),
            "--vhost-https-port",
            &https.to_string(),
            "--sub-domain-host",
            "hoge.test",
            "--dns-resolver",
            &format!("127.0.0.1:{}", dns.dns),
            "--domain-verify-http-port",
            &verify_port.to_string(),
        ],
    );
    sp.wait_frp();

    // Origins: an address, and a tunnel (an http proxy of an invite).
    let app = origin("app");
    let (st, addr_origin) = sp.admin_call(
        "POST",
        "/api/v1/origins",
        Some(json!({ "name": "home", "wireguard_ip": "127.0.0.1", "wireguard_public_key": "k" })),
    );
    assert_eq!(st, 201, "{addr_origin}");
    assert_eq!(addr_origin["kind"], "address");
    let inv = sp.admin_invite(json!({ "scope": { "proxy_types": ["http"] } }));
    let (st, resolved) = sp.resolve(inv["code"].as_str().unwrap());
    assert_eq!(st, 200, "{resolved}");
    let (st, tunnel_origin) = sp.admin_call(
        "POST",
        "/api/v1/origins",
        Some(json!({ "name": "behind-nat", "invite_id": inv["id"], "proxy_name": "wiki" })),
    );
    assert_eq!(st, 201, "{tunnel_origin}");
    assert_eq!(tunnel_origin["kind"], "tunnel");

    // Bad input, each naming its field.
    let bad_origin = [
        (json!({ "name": "x" }), "wireguard_ip"),
        (
            json!({ "name": "x", "wireguard_ip": "10.0.0.300" }),
            "wireguard_ip",
        ),
        (
            json!({ "name": "x", "invite_id": "nope", "proxy_name": "p" }),
            "invite_id",
        ),
        (json!({ "name": "", "wireguard_ip": "10.0.0.3" }), "name"),
    ];
    for (body, field) in bad_origin {
        let (st, v) = sp.admin_call("POST", "/api/v1/origins", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/origins",
        Some(json!({ "name": "home", "wireguard_ip": "127.0.0.2" })),
    );
    assert_eq!(st, 409, "{v}");
    let oid = addr_origin["id"].as_str().unwrap();
    for bad in [
        "App.hoge.test",
        "bücher.hoge.test",
        "127.0.0.1",
        "localhost",
        "*.hoge.test",
        "a..hoge.test",
        &format!("{}.test", "a".repeat(64)),
    ] {
        let (st, v) = sp.admin_call(
            "POST",
            "/api/v1/routes",
            Some(json!({ "hostname": bad, "origin_id": oid, "target_port": app.port() })),
        );
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(v["field"], "hostname", "{bad}: {v}");
    }
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/routes",
        Some(json!({ "hostname": "x.hoge.test", "origin_id": "origin_nope", "target_port": 80 })),
    );
    assert_eq!((st, v["field"].as_str()), (400, Some("origin_id")), "{v}");
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/routes",
        Some(json!({ "hostname": "x.hoge.test", "origin_id": oid })),
    );
    assert_eq!((st, v["field"].as_str()), (400, Some("target_port")), "{v}");

    // An edge node, and the config before any route.
    let (st, node) = sp.admin_call(
        "POST",
        "/api/v1/edge-nodes",
        Some(json!({ "name": "edge-1" })),
    );
    assert_eq!(st, 201, "{node}");
    let token = node["token"].as_str().unwrap().to_owned();
    let (st, list) = sp.admin_call("GET", "/api/v1/edge-nodes", None);
    assert_eq!(st, 200);
    assert!(
        list[0].get("token").is_none(),
        "the token is shown once: {list}"
    );
    let (st, _, empty) = pull(&sp, &token, None);
    assert_eq!(st, 200);
    assert_eq!(empty["routes"], json!({}));
    assert_eq!(pull(&sp, "et_wrong", None).0, 403);

    // wiki.fuga.test is under a user's own domain: refused until the
    // domain's ownership is verified.
    let wiki_route = json!({ "hostname": "wiki.fuga.test", "origin_id": tunnel_origin["id"] });
    let (st, v) = sp.admin_call("POST", "/api/v1/routes", Some(wiki_route.clone()));
    assert_eq!((st, v["field"].as_str()), (403, Some("hostname")), "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no verified domain"),
        "{v}"
    );
    for (bad, field, status) in [
        (json!({ "domain": "Fuga.test" }), "domain", 400),
        (json!({ "domain": "1.2.3.4" }), "domain", 400),
        (json!({ "domain": "x.hoge.test" }), "domain", 400),
        (json!({ "name": "fuga.test" }), "name", 400),
    ] {
        let (st, v) = sp.admin_call("POST", "/api/v1/domains", Some(bad.clone()));
        assert_eq!(st, status, "{bad}: {v}");
        assert_eq!(v["field"], field, "{bad}: {v}");
    }
    let (st, dom) = sp.admin_call(
        "POST",
        "/api/v1/domains",
        Some(json!({ "domain": "fuga.test" })),
    );
    assert_eq!(st, 201, "{dom}");
    assert_eq!(dom["status"], "pending");
    assert_eq!(dom["txt"]["name"], "_totoro-verify.fuga.test");
    let t = dom["token"].as_str().unwrap().to_owned();
    assert_eq!(dom["txt"]["value"], t.as_str());
    assert_eq!(
        dom["http"]["url"],
        format!("http://fuga.test/.well-known/totoro-verify/{t}")
    );
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/domains",
        Some(json!({ "domain": "fuga.test" })),
    );
    assert_eq!(st, 409, "{v}");
    let (st, v) = sp.admin_call("POST", "/api/v1/routes", Some(wiki_route.clone()));
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not verified yet"),
        "{v}"
    );
    // Neither the TXT record nor the HTTP token is there yet.
    for m in ["dns", "http"] {
        let (st, v) = sp.admin_call(
            "POST",
            &format!("/api/v1/domains/fuga.test/verify?method={m}"),
            None,
        );
        assert_eq!((st, v["field"].as_str()), (403, Some("domain")), "{m}: {v}");
        println!(
            "verify by {m} before the token is published: {}",
            v["error"]
        );
    }
    let (st, v) = sp.admin_call("POST", "/api/v1/domains/fuga.test/verify?method=ftp", None);
    assert_eq!((st, v["field"].as_str()), (400, Some("method")), "{v}");
    let (_, d) = sp.admin_call("GET", "/api/v1/domains/fuga.test", None);
    assert!(d["last_error"].as_str().unwrap().contains("404"), "{d}");
    // The owner publishes the token on the server the domain points at.
    *published.lock().unwrap() = t.clone();
    let (st, d) = sp.admin_call("POST", "/api/v1/domains/fuga.test/verify", None);
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        (d["status"].as_str(), d["method"].as_str()),
        (Some("verified"), Some("http"))
    );
    harness::wait_audit(&sp, "edge.domain.verified", |r| {
        r["detail"]["domain"] == "fuga.test"
    });
    harness::wait_audit(&sp, "edge.domain.verify_failed", |r| {
        r["detail"]["domain"] == "fuga.test"
    });
    let (_, list) = sp.admin_call("GET", "/api/v1/domains", None);
    assert_eq!(list["official"], json!(["hoge.test"]), "{list}");

    // Routes: seed 004's request, across two base domains.
    let (st, r_app) = sp.admin_call(
        "POST",
        "/api/v1/routes",
        Some(json!({ "hostname": "app.hoge.test", "origin_id": oid, "target_port": app.port() })),
    );
    assert_eq!(st, 201, "{r_app}");
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/routes",
        Some(json!({ "hostname": "app.hoge.test", "origin_id": oid, "target_port": 1 })),
    );
    assert_eq!(st, 409, "{v}");
    let (st, r_wiki) = sp.admin_call("POST", "/api/v1/routes", Some(wiki_route));
    assert_eq!(st, 201, "{r_wiki}");
    // A domain with routes under it stays.
    let (st, v) = sp.admin_call("DELETE", "/api/v1/domains/fuga.test", None);
    assert_eq!(st, 409, "{v}");
    let (st, r_red) = sp.admin_call(
        "POST",
        "/api/v1/routes",
        Some(json!({ "hostname": "secure.hoge.test", "origin_id": oid,
                     "target_port": app.port(), "redirect_https": true })),
    );
    assert_eq!(st, 201, "{r_red}");

    // The address origin is served at once (the call waited for the table).
    let (status, _, body) = get(http, "app.hoge.test", "/");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "app via http")
    );
    // The tunnel origin is down until its proxy registers: 502, saying so.
    let (status, _, body) = get(http, "wiki.fuga.test", "/");
    assert!(status.contains(" 502 "), "{status} {body}");
    assert!(body.contains("not connected"), "{body}");
    let c = first_login(&ticket_opts(&sp, &resolved));
    let wiki = origin("wiki");
    c.register_proxy(ProxySpec::plain("wiki", 0, wiki), |np| {
        np.proxy_type = "http".into();
        np.custom_domains = vec!["wiki.internal.test".into()];
    })
    .expect("http proxy");
    let (status, _, body) = get(http, "wiki.fuga.test", "/");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "wiki via http")
    );
    // Redirected to HTTPS, path and query kept.
    let (status, head, _) = get(http, "secure.hoge.test", "/a/b?c=d");
    assert!(status.contains(" 308 "), "{status}");
    assert!(
        head.contains("Location: https://secure.hoge.test/a/b?c=d"),
        "{head}"
    );

    // The edge config, field for field; 304 while it is the same.
    let (st, etag, cfg) = pull(&sp, &token, None);
    assert_eq!(st, 200);
    let hash = cfg["config_hash"].as_str().unwrap().to_owned();
    assert_eq!(etag.as_deref(), Some(format!("\"{hash}\"").as_str()));
    assert_eq!(
        cfg["routes"],
        json!({
            "app.hoge.test": format!("127.0.0.1:{}", app.port()),
            "secure.hoge.test": format!("127.0.0.1:{}", app.port()),
            "wiki.fuga.test": format!("127.0.0.1:{http}"),
        }),
        "a tunnel origin is reached through this node's vhost port"
    );
    assert_eq!(
        cfg["hostnames"],
        json!(["app.hoge.test", "secure.hoge.test", "wiki.fuga.test"])
    );
    let (st, _, _) = pull(&sp, &token, etag.as_deref());
    assert_eq!(st, 304);
    // A change of something outside the payload keeps the hash.
    sp.admin_call(
        "POST",
        "/api/v1/edge-nodes",
        Some(json!({ "name": "edge-2" })),
    );
    assert_eq!(pull(&sp, &token, etag.as_deref()).0, 304);
    let (_, list) = sp.admin_call("GET", "/api/v1/edge-nodes", None);
    let seen = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "edge-1")
        .unwrap();
    assert!(seen["last_seen"].as_i64().is_some(), "{seen}");

    // Deleting a route: 404 for its hostname at once, and a new hash.
    let started = Instant::now();
    let (st, _) = sp.admin_call(
        "DELETE",
        &format!("/api/v1/routes/{}", r_app["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(st, 204);
    let (status, _, _) = get(http, "app.hoge.test", "/");
    assert!(status.contains(" 404 "), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (st, _, cfg2) = pull(&sp, &token, etag.as_deref());
    assert_eq!(st, 200);
    assert_ne!(cfg2["config_hash"], cfg["config_hash"]);
    assert!(cfg2["routes"].get("app.hoge.test").is_none());
    // An origin in use is not deleted; one without routes is.
    let (st, v) = sp.admin_call("DELETE", &format!("/api/v1/origins/{oid}"), None);
    assert_eq!(st, 409, "{v}");
    sp.admin_call(
        "DELETE",
        &format!("/api/v1/routes/{}", r_red["id"].as_str().unwrap()),
        None,
    );
    let (st, _) = sp.admin_call("DELETE", &format!("/api/v1/origins/{oid}"), None);
    assert_eq!(st, 204);

    // The operator verbs drive the same API.
    let verb = |args: &[&str]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_slowpath"))
            .args(args)
            .args(["--api", &sp.base, "--admin-key", &sp.admin])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let o = verb(&["origin", "add", "cli", "--ip", "127.0.0.1"]);
    let oid = o["id"].as_str().unwrap().to_owned();
    let port = app.port().to_string();
    let r = verb(&["route", "add", "cli.hoge.test", &oid, "--port", &port]);
    assert_eq!(r["hostname"], "cli.hoge.test");
    assert_eq!(get(http, "cli.hoge.test", "/").2, "app via http");
    let listed = verb(&["route", "list"]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == r["id"]));
    assert!(verb(&["cert", "list"])["certificates"].is_array());
    verb(&["route", "rm", r["id"].as_str().unwrap()]);
    verb(&["origin", "rm", &oid]);
    assert!(get(http, "cli.hoge.test", "/").0.contains(" 404 "));
    // Domains: add, verify (the HTTP token is still served), list, rm.
    let d = verb(&["domain", "add", "piyo.test"]);
    *published.lock().unwrap() = d["token"].as_str().unwrap().to_owned();
    let d = verb(&["domain", "verify", "piyo.test", "--method", "http"]);
    assert_eq!(d["status"], "verified", "{d}");
    let listed = verb(&["domain", "list"]);
    assert_eq!(listed["domains"].as_array().unwrap().len(), 2, "{listed}");
    verb(&["domain", "rm", "piyo.test"]);
    let (st, _) = sp.admin_call("GET", "/api/v1/domains/piyo.test", None);
    assert_eq!(st, 404);

    // Every change is in the audit log.
    let rows = harness::audit(&sp, "&kind=edge.route.deleted");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let rows = harness::audit(&sp, "&kind=edge.route.created");
    assert_eq!(rows.len(), 4, "{rows:?}");
    c.kill();
}

#[test]
fn edge_routes_origins_and_the_pulled_config() {
    each_backend("edge", edge);
}

/// Seed 004's nginx edge: `slowpath edge-agent` writes the map file from
/// the pulled config, a real nginx routes by it, and the agent reloads
/// nginx only when the config changed.
#[test]
fn the_nginx_edge_agent_routes_both_hostnames() {
    if !have(&["nginx", "pebble-challtestsrv"]) {
        return;
    }
    let nginx = harness::dns::which("nginx").unwrap();
    // hoge.test is the node's suffix; fuga.test is a user's domain,
    // verified here by its TXT record.
    let dns_dir = std::env::temp_dir().join(format!("totoro-nginx-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dns_dir).unwrap();
    let dns = ChallTestSrv::start(&dns_dir);
    let sp = Slowpath::up(
        &Backend::Sqlite,
        &[
            "--sub-domain-host",
            "hoge.test",
            "--dns-resolver",
            &format!("127.0.0.1:{}", dns.dns),
        ],
    );
    let (st, dom) = sp.admin_call(
        "POST",
        "/api/v1/domains",
        Some(json!({ "domain": "fuga.test" })),
    );
    assert_eq!(st, 201, "{dom}");
    dns.set_txt("_totoro-verify.fuga.test", dom["token"].as_str().unwrap());
    let (st, d) = sp.admin_call("POST", "/api/v1/domains/fuga.test/verify?method=dns", None);
    assert_eq!((st, d["method"].as_str()), (200, Some("dns")), "{d}");
    let (a, b) = (origin("origin-a"), origin("origin-b"));
    let (_, o) = sp.admin_call(
        "POST",
        "/api/v1/origins",
        Some(json!({ "name": "home", "wireguard_ip": "127.0.0.1" })),
    );
    let route = |host: &str, port: u16| {
        let (st, r) = sp.admin_call(
            "POST",
            "/api/v1/routes",
            Some(json!({ "hostname": host, "origin_id": o["id"], "target_port": port })),
        );
        assert_eq!(st, 201, "{r}");
    };
    route("app.hoge.test", a.port());
    let (_, node) = sp.admin_call(
        "POST",
        "/api/v1/edge-nodes",
        Some(json!({ "name": "nginx-1" })),
    );
    let token = node["token"].as_str().unwrap().to_owned();

    let dir = sp.dir.join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = bench::proc::free_port();
    let map = dir.join("kokoa-map.conf");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
               include {map};\n\
               server {{\n    listen 127.0.0.1:{port} default_server;\n    server_name _;\n\
                 location / {{\n      if ($kokoa_backend = \"\") {{ return 404; }}\n\
                   proxy_pass http://$kokoa_backend;\n    }}\n  }}\n}}\n",
            d = dir.display(),
            map = map.display(),
        ),
    )
    .unwrap();
    let agent = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_slowpath"));
        c.args(["edge-agent", "--control", &sp.base, "--token", &token])
            .arg("--map-file")
            .arg(&map)
            .arg("--cert-dir")
            .arg(dir.join("certs"))
            .args(extra);
        c
    };
    // The first map, then nginx on it.
    let st = agent(&["--once", "--reload", ""]).status().unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&map).unwrap();
    assert!(
        text.contains(&format!("\"app.hoge.test\" \"127.0.0.1:{}\";", a.port())),
        "{text}"
    );
    let mut nginx_proc = std::process::Command::new(&nginx)
        .args(["-p"])
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .spawn()
        .unwrap();
    harness::wait_until("nginx listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(get(port, "app.hoge.test", "/").2, "origin-a via http");
    assert!(get(port, "other.hoge.test", "/").0.contains(" 404 "));

    // A second hostname under another base domain; the agent, running,
    // applies it and reloads nginx once.
    route("wiki.fuga.test", b.port());
    let reload = format!(
        "{} -p {} -e {} -c {} -s reload",
        nginx.display(),
        dir.display(),
        dir.join("error.log").display(),
        conf.display()
    );
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut running = agent(&["--interval-secs", "1", "--reload", &reload])
        .stderr(log)
        .spawn()
        .unwrap();
    harness::wait_until("the second hostname through nginx", || {
        get(port, "wiki.fuga.test", "/").2 == "origin-b via http"
    });
    assert_eq!(get(port, "app.hoge.test", "/").2, "origin-a via http");
    // Unchanged pulls (304) reload nothing.
    std::thread::sleep(Duration::from_secs(3));
    let text = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert_eq!(
        text.matches("edge configuration applied").count(),
        1,
        "{text}"
    );
    let _ = running.kill();
    let _ = running.wait();
    // TERM: the master stops its workers before it exits (a killed master
    // would leave them serving).
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(nginx_proc.id().to_string())
        .status();
    let _ = nginx_proc.wait();
}
