//! Issue 16: certificates from a real ACME CA. Debian's `pebble` issues,
//! `pebble-challtestsrv` is the DNS server it resolves hostnames with;
//! `slowpath up` orders a certificate per routed hostname (HTTP-01,
//! answered by the fastpath on the vhost port from its table), the
//! fastpath terminates TLS with them by SNI, and `curl --cacert <pebble
//! root> --resolve` reads each origin through it: two address origins
//! under two base domains, and a tunnel origin behind the in-repo frp
//! client. Then a forced renewal replaces a certificate while a TLS
//! connection made with the old one keeps serving, a hostname the CA
//! refuses is reported and retried while the others are served, and a
//! server name nobody serves gets no handshake.
//!
//! Without pebble the test prints a SKIPPED line, except under CI (env
//! `CI`), where that is a failure: `.ci/run` installs it.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::client::ProxySpec;
use bench::proc::free_port;
use harness::dns::{have, ChallTestSrv};
use harness::{first_login, ticket_opts, wait_within, Backend, Slowpath};
use serde_json::{json, Value};

/// An origin answering every request with `body`, keeping the connection.
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
                let proto = if String::from_utf8_lossy(&head)
                    .to_lowercase()
                    .contains("x-forwarded-proto: https")
                {
                    "https"
                } else {
                    "http"
                };
                let reply = format!("{body} via {proto}");
                let r = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                if r.is_err() {
                    return;
                }
            });
        }
    });
    addr
}

/// pebble and its DNS server, killed on drop.
struct Pebble {
    child: Child,
    /// The DNS server pebble resolves names with (TXT records set there).
    dns: ChallTestSrv,
    /// The ACME directory URL.
    directory: String,
    /// The CA of pebble's own HTTPS (for `--acme-ca-file`).
    https_ca: PathBuf,
    /// Management address (the issuing root is at `/roots/0`).
    management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pebble {
    /// Start pebble validating HTTP-01 on `http_port`; every hostname
    /// resolves to 127.0.0.1; orders for names under `blocked` are
    /// refused.
    fn start(dir: &Path, http_port: u16, blocked: &str) -> Pebble {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        // pebble's own HTTPS: a CA and a certificate for 127.0.0.1.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let https_ca = dir.join("pebble-https-ca.pem");
        std::fs::write(&https_ca, ca.pem()).unwrap();
        std::fs::write(dir.join("pebble.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("pebble.key"), key.serialize_pem()).unwrap();
        let (acme, management) = (free_port(), free_port());
        let config = json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": [blocked],
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let dns = ChallTestSrv::start(dir);
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", dns.dns)])
            // No random sleeps before validation, no random nonce
            // refusals: the test measures us, not pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(log("pebble.log")))
            .stderr(Stdio::from(log("pebble.err")))
            .spawn()
            .expect("pebble");
        let p = Pebble {
            child: pebble,
            dns,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            https_ca,
            management,
        };
        wait_within(Duration::from_secs(20), "pebble listening", || {
            TcpStream::connect(("127.0.0.1", acme)).is_ok()
        });
        p
    }

    /// The root pebble issues under (new at every start).
    fn root(&self, out: &Path) -> PathBuf {
        // The management listener has a certificate of pebble's own
        // making; this reads the root over loopback, nothing depends on
        // who answered but the checks below, which need the right root.
        let o = Command::new("curl")
            .args(["-sSk"])
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(out, &o.stdout).unwrap();
        out.to_owned()
    }
}

/// `curl --cacert ROOT --resolve HOST:PORT:127.0.0.1 https://HOST:PORT/`.
fn curl(root: &Path, host: &str, port: u16) -> Result<String, String> {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A TLS connection with keep-alive, for seeing that a renewal does not
/// drop it.
struct Kept {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: String,
}

impl Kept {
    fn open(root: &Path, host: &str, port: u16) -> Result<Kept, String> {
        let pem = std::fs::read(root).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(Kept {
            tls,
            host: host.to_owned(),
        })
    }

    /// The leaf certificate the server presented.
    fn leaf(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// One keep-alive request; the body.
    fn get(&mut self) -> String {
        write!(self.tls, "GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.host).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.tls.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0; len];
        self.tls.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

fn certificates(sp: &Slowpath) -> Value {
    let (st, v) = sp.admin_call("GET", "/api/v1/certificates", None);
    assert_eq!(st, 200, "{v}");
    v
}

fn cert<'a>(list: &'a Value, host: &str) -> Option<&'a Value> {
    list["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["hostname"] == host)
}

#[test]
fn certificates_from_a_real_acme_ca_terminate_tls_at_the_edge() {
    if !have(&["pebble", "pebble-challtestsrv", "curl"]) {
        return;
    }
    let http = free_port();
    let https = free_port();
    let dir = std::env::temp_dir().join(format!("totoro-acme-{}", std::process::id()));
    let pebble = Pebble::start(&dir, http, "blocked.test");
    let sp = Slowpath::up(
        &Backend::Sqlite,
        &[
            "--vhost-http-port",
            &http.to_string(),
            "--vhost-https-port",
            &https.to_string(),
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-file",
            pebble.https_ca.to_str().unwrap(),
            "--acme-interval-secs",
            "1",
            "--sub-domain-host",
            "hoge.test",
            "--dns-resolver",
            &format!("127.0.0.1:{}", pebble.dns.dns),
        ],
    );
    sp.wait_frp();

    // hoge.test is the node's own suffix; fuga.test and blocked.test are
    // users' domains, verified by their TXT records first.
    for domain in ["fuga.test", "blocked.test"] {
        let (st, d) = sp.admin_call("POST", "/api/v1/domains", Some(json!({ "domain": domain })));
        assert_eq!(st, 201, "{d}");
        pebble.dns.set_txt(
            &format!("_totoro-verify.{domain}"),
            d["token"].as_str().unwrap(),
        );
        let (st, d) = sp.admin_call(
            "POST",
            &format!("/api/v1/domains/{domain}/verify?method=dns"),
            None,
        );
        assert_eq!((st, d["status"].as_str()), (200, Some("verified")), "{d}");
    }

    // Two address origins and a tunnel origin behind the frp client.
    let (app, wiki, api) = (origin("app"), origin("wiki"), origin("api"));
    let inv = sp.admin_invite(json!({ "scope": { "proxy_types": ["http"] } }));
    let (_, resolved) = sp.resolve(inv["code"].as_str().unwrap());
    let client = first_login(&ticket_opts(&sp, &resolved));
    client
        .register_proxy(ProxySpec::plain("api", 0, api), |np| {
            np.proxy_type = "http".into();
            np.custom_domains = vec!["api.internal.test".into()];
        })
        .expect("http proxy");
    let mut origins = Vec::new();
    for body in [
        json!({ "name": "app", "wireguard_ip": "127.0.0.1" }),
        json!({ "name": "api", "invite_id": inv["id"], "proxy_name": "api" }),
    ] {
        let (st, o) = sp.admin_call("POST", "/api/v1/origins", Some(body));
        assert_eq!(st, 201, "{o}");
        origins.push(o["id"].as_str().unwrap().to_owned());
    }
    let routes = [
        ("app.hoge.test", &origins[0], Some(app.port())),
        ("wiki.fuga.test", &origins[0], Some(wiki.port())),
        ("api.hoge.test", &origins[1], None),
        ("refused.blocked.test", &origins[0], Some(app.port())),
    ];
    for (host, origin, port) in routes {
        let (st, r) = sp.admin_call(
            "POST",
            "/api/v1/routes",
            Some(json!({ "hostname": host, "origin_id": origin, "target_port": port })),
        );
        assert_eq!(st, 201, "{r}");
    }

    // Three certificates from pebble; the refused name is reported.
    let hosts = ["app.hoge.test", "wiki.fuga.test", "api.hoge.test"];
    let started = Instant::now();
    // A pass takes the hostnames due when it starts: the refused one may
    // come in a pass after the other three.
    wait_within(
        Duration::from_secs(90),
        "three certificates and a refusal",
        || {
            let list = certificates(&sp);
            hosts
                .iter()
                .all(|h| cert(&list, h).is_some_and(|c| c["status"] == "valid"))
                && cert(&list, "refused.blocked.test").is_some()
        },
    );
    println!("three certificates in {:?}", started.elapsed());
    let list = certificates(&sp);
    let refused = cert(&list, "refused.blocked.test").expect("the refused name is listed");
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(refused["attempts"].as_u64().unwrap() >= 1, "{refused}");
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("new order"),
        "{refused}"
    );
    assert!(refused["renew_at"].as_i64().unwrap() > refused["updated_at"].as_i64().unwrap());
    let health: Value = ureq::get(&format!("{}/healthz", sp.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["acme"]["issued"], 3, "{health}");
    assert!(health["acme"]["failed"].as_u64().unwrap() >= 1, "{health}");
    assert!(!harness::audit(&sp, "&kind=edge.cert.failed").is_empty());
    assert_eq!(harness::audit(&sp, "&kind=edge.cert.issued").len(), 3);
    let valid = cert(&list, "app.hoge.test").unwrap();
    let (nb, na) = (
        valid["not_before"].as_i64().unwrap(),
        valid["not_after"].as_i64().unwrap(),
    );
    assert!(na > nb, "{valid}");
    assert_eq!(valid["renew_at"].as_i64().unwrap(), nb + (na - nb) * 2 / 3);

    // Each origin through the edge, by curl with pebble's root.
    let root = pebble.root(&dir.join("pebble-root.pem"));
    assert_eq!(
        curl(&root, "app.hoge.test", https).unwrap(),
        "app via https"
    );
    assert_eq!(
        curl(&root, "wiki.fuga.test", https).unwrap(),
        "wiki via https"
    );
    assert_eq!(
        curl(&root, "api.hoge.test", https).unwrap(),
        "api via https"
    );
    // A name nobody serves gets no handshake.
    let err = curl(&root, "nobody.hoge.test", https).unwrap_err();
    assert!(!err.is_empty());
    assert!(Kept::open(&root, "nobody.hoge.test", https).is_err());

    // An nginx edge takes the same certificates through its agent.
    let (_, node) = sp.admin_call(
        "POST",
        "/api/v1/edge-nodes",
        Some(json!({ "name": "nginx" })),
    );
    let certs = dir.join("edge-certs");
    let st = Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .args([
            "edge-agent",
            "--once",
            "--reload",
            "",
            "--control",
            &sp.base,
        ])
        .args(["--token", node["token"].as_str().unwrap()])
        .arg("--map-file")
        .arg(dir.join("map.conf"))
        .arg("--cert-dir")
        .arg(&certs)
        .status()
        .unwrap();
    assert!(st.success());
    for h in hosts {
        use std::os::unix::fs::PermissionsExt as _;
        let chain = std::fs::read_to_string(certs.join(h).join("fullchain.pem")).unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"), "{h}");
        let key = certs.join(h).join("privkey.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{h}'s key is the owner's alone");
    }
    assert!(!certs.join("refused.blocked.test").exists());
    assert_eq!(harness::audit(&sp, "&kind=edge.certs.pulled").len(), 1);

    // A forced renewal replaces the certificate; a connection made with
    // the old one keeps serving.
    let mut kept = Kept::open(&root, "app.hoge.test", https).unwrap();
    let old = kept.leaf();
    assert_eq!(kept.get(), "app via https");
    let (st, v) = sp.admin_call("POST", "/api/v1/certificates/app.hoge.test/renew", None);
    assert_eq!(st, 202, "{v}");
    wait_within(
        Duration::from_secs(60),
        "the renewed certificate served",
        || Kept::open(&root, "app.hoge.test", https).is_ok_and(|k| k.leaf() != old),
    );
    assert_eq!(
        kept.get(),
        "app via https",
        "the old connection is not dropped"
    );
    assert_eq!(kept.leaf(), old);
    let health: Value = ureq::get(&format!("{}/healthz", sp.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["acme"]["issued"], 4, "{health}");
    client.kill();
    drop(pebble);
    let _ = std::fs::remove_dir_all(&dir);
}
