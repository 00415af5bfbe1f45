//! `https` proxies on `vhostHTTPSPort` and `tcpmux` proxies on
//! `tcpmuxHTTPConnectPort`, end to end with the real binary. https:
//! connections routed by the server name of their ClientHello to the proxy
//! that claimed it, TLS passed through untouched (the backend's certificate
//! is what the user verifies), on either worker, over every kind of work
//! connection; and what cannot be routed closed, logged and counted.
//! tcpmux: CONNECT requests routed by host and Proxy-Authorization user,
//! answered (200, 407, 404) as frps answers them, or passed through.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bench::backend::Backend;
use bench::client::{Client, ProxySpec};
use bench::proc::free_port;
use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// A TLS echo server with a certificate for `names` (its own root).
struct TlsEcho {
    addr: SocketAddr,
    root: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsEcho {
    fn start(names: &[&str]) -> TlsEcho {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let root = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![root.clone()], key)
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(cfg).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, s);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        TlsEcho { addr, root }
    }
}

/// A TLS client of `port` asking for `name`, trusting only `root`.
fn tls_to(
    port: u16,
    name: &str,
    root: &CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, s)
}

/// Echo `len` pseudo-random bytes over TLS through the vhost port; true
/// when the same bytes come back (the handshake verified `name` against
/// `root` on the way).
fn tls_echo(port: u16, name: &str, root: &CertificateDer<'static>, len: usize, seed: u64) -> bool {
    let mut tls = tls_to(port, name, root);
    let data: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8)
        .collect();
    // rustls is not split into halves: write everything, then read (the
    // echo's socket buffers hold what `len` callers use).
    if tls.write_all(&data).is_err() {
        return false;
    }
    let mut got = vec![0u8; len];
    tls.read_exact(&mut got).is_ok() && got == data
}

fn spec(name: &str, local: SocketAddr, encrypted: bool) -> ProxySpec {
    ProxySpec {
        name: name.into(),
        remote_port: 0,
        local,
        use_encryption: encrypted,
        use_compression: encrypted,
        server_bandwidth_limit: String::new(),
    }
}

fn start(workers: usize) -> (Fastpath, u16) {
    let https = free_port();
    let fp = Fastpath::start(
        &format!("vhostHTTPSPort = {https}\nsubDomainHost = \"t.example.net\""),
        workers,
    );
    (fp, https)
}

#[test]
fn https_proxies_route_by_server_name_on_every_worker() {
    let (fp, port) = start(2);
    let a = TlsEcho::start(&["a.example.com"]);
    let b = TlsEcho::start(&["app.t.example.net"]);
    // One session with TLS + yamux and an encrypted, compressed proxy (the
    // copying relay); one plain session (the spliced relay).
    let mut o = fp.opts();
    o.pool_count = 2;
    let muxed = Client::login(o).expect("login");
    let mut o = fp.opts();
    o.mux = false;
    o.tls = false;
    o.pool_count = 2;
    let plain = Client::login(o).expect("login");
    let ra = muxed
        .add_vhost_proxy(spec("a", a.addr, true), "https", &["A.example.com"], "")
        .expect("https proxy a");
    assert_eq!(ra, format!("a.example.com:{port}"));
    let rb = plain
        .add_vhost_proxy(spec("b", b.addr, false), "https", &[], "app")
        .expect("https proxy b");
    assert_eq!(rb, format!("app.t.example.net:{port}"));

    // Connections spread over both workers (SO_REUSEPORT); each session
    // lives on one, so some of these move to the other.
    for i in 0..16u64 {
        assert!(
            tls_echo(port, "a.example.com", &a.root, 48 * 1024, i),
            "a #{i}"
        );
        assert!(
            tls_echo(port, "app.t.example.net", &b.root, 48 * 1024, i),
            "b #{i}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while fp.counter("vhost_handoffs") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        fp.counter("vhost_handoffs") > 0,
        "no connection was served through a handoff"
    );

    // The same name elsewhere is frps's conflict; names outside the rules
    // are refused with frps's words.
    let other = Client::login(fp.opts()).expect("login");
    let err = other
        .add_vhost_proxy(spec("a2", a.addr, false), "https", &["a.example.com"], "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("router config conflict: a.example.com"),
        "{err}"
    );
    for (domains, sub, want) in [
        (
            &["x.t.example.net"][..],
            "",
            "should not belong to subdomain host",
        ),
        (&[][..], "a.b", "'.' and '*' are not supported in subdomain"),
        (&[][..], "", "should set at least one of them"),
    ] {
        let err = other
            .add_vhost_proxy(spec("bad", a.addr, false), "https", domains, sub)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{domains:?} {sub:?}: {err}");
    }

    // When the session that holds a name goes, so does its route: the name
    // is free for another, and is served by it.
    muxed.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match other.add_vhost_proxy(spec("a3", a.addr, false), "https", &["a.example.com"], "") {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("conflict"), "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("route of a closed session still held: {e}"),
        }
    }
    assert!(tls_echo(port, "a.example.com", &a.root, 4096, 99));
}

#[test]
fn unroutable_connections_are_closed_logged_and_counted() {
    let (fp, port) = start(1);
    let b = TlsEcho::start(&["app.t.example.net"]);
    let c = Client::login(fp.opts()).expect("login");
    c.add_vhost_proxy(spec("b", b.addr, false), "https", &[], "app")
        .expect("https proxy");
    let closed = |bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    };
    assert!(
        closed(b"GET / HTTP/1.1\r\nHost: app.t.example.net\r\n\r\n"),
        "plain HTTP"
    );
    // A real ClientHello for a name nobody serves, and one without a name
    // (rustls sends none for an IP address).
    for name in ["nobody.example.org", "127.0.0.1"] {
        let conn = rustls::ClientConnection::new(
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        let mut conn = conn;
        conn.write_tls(&mut hello).unwrap();
        assert!(closed(&hello), "{name}");
    }
    assert!(fp.daemon.wait_log(
        "no https proxy serves \"nobody.example.org\"",
        Duration::from_secs(5)
    ));
    assert!(fp
        .daemon
        .wait_log("ClientHello without a server name", Duration::from_secs(5)));
    assert!(fp
        .daemon
        .wait_log("not a TLS ClientHello", Duration::from_secs(5)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fp.counter("vhost_unrouted") < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fp.counter("vhost_unrouted"), 3);
    // Nothing else was disturbed.
    assert!(tls_echo(port, "app.t.example.net", &b.root, 4096, 1));
}

#[test]
fn https_needs_the_vhost_port() {
    let fp = Fastpath::start("", 1);
    let c = Client::login(fp.opts()).expect("login");
    let err = c
        .add_vhost_proxy(spec("s", fp.addr, false), "https", &["a.example.com"], "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy type [https] is not supported"), "{err}");
}

// --- tcpmux (HTTP CONNECT) ---

/// A CONNECT for `host` with `auth` (user, password) as Basic
/// Proxy-Authorization; the stream and the response head (empty when the
/// server closed without one).
fn connect(port: u16, host: &str, auth: Option<(&str, &str)>) -> (TcpStream, String) {
    use base64::Engine as _;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("CONNECT {host}:22 HTTP/1.1\r\nHost: {host}:22\r\n");
    if let Some((u, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Proxy-Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// `len` pseudo-random bytes through `s` and back, intact.
fn echoes(s: &mut TcpStream, len: usize, seed: u64) -> bool {
    let data: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 5) as u8)
        .collect();
    let mut w = s.try_clone().unwrap();
    let d = data.clone();
    let t = std::thread::spawn(move || w.write_all(&d).is_ok());
    let mut got = vec![0u8; len];
    let ok = s.read_exact(&mut got).is_ok();
    t.join().unwrap() && ok && got == data
}

fn tcpmux_proxy(
    c: &Client,
    name: &str,
    local: SocketAddr,
    domains: &[&str],
    creds: Option<(&str, &str)>,
    route_by: &str,
    multiplexer: &str,
) -> Result<String, String> {
    c.register_proxy(spec(name, local, false), |np| {
        np.proxy_type = "tcpmux".into();
        np.multiplexer = multiplexer.into();
        np.custom_domains = domains.iter().map(|d| d.to_string()).collect();
        if let Some((u, p)) = creds {
            np.http_user = u.into();
            np.http_pwd = p.into();
        }
        np.route_by_http_user = route_by.into();
    })
    .map_err(|e| e.to_string())
}

#[test]
fn tcpmux_routes_connect_requests_by_host_and_user() {
    let port = free_port();
    let fp = Fastpath::start(&format!("tcpmuxHTTPConnectPort = {port}"), 2);
    let echo = Backend::echo().unwrap();
    // Nothing listens here: a connection routed to it is closed by frpc's
    // side once it fails to reach it.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut o = fp.opts();
    o.pool_count = 2;
    let c = Client::login(o).expect("login");
    let ok = |r: Result<String, String>| r.expect("tcpmux proxy");
    assert_eq!(
        ok(tcpmux_proxy(
            &c,
            "open",
            echo.addr(),
            &["m.example.com"],
            None,
            "",
            "httpconnect"
        )),
        format!("m.example.com:{port}")
    );
    ok(tcpmux_proxy(
        &c,
        "locked",
        echo.addr(),
        &["s.example.com"],
        Some(("alice", "secret")),
        "",
        "httpconnect",
    ));
    ok(tcpmux_proxy(
        &c,
        "bob",
        echo.addr(),
        &["r.example.com"],
        Some(("bob", "pw")),
        "bob",
        "httpconnect",
    ));
    ok(tcpmux_proxy(
        &c,
        "anyone",
        dead,
        &["r.example.com"],
        None,
        "",
        "httpconnect",
    ));
    let e = tcpmux_proxy(&c, "nomux", echo.addr(), &["n.example.com"], None, "", "").unwrap_err();
    assert!(e.contains("tcpmux multiplexer [] is not supported"), "{e}");

    // Answered with 200, then a tunnel, on whichever worker.
    for i in 0..8 {
        let (mut s, head) = connect(port, "m.example.com", None);
        assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(echoes(&mut s, 256 * 1024, i), "open #{i}");
    }
    // httpUser: 407 (frps's realm) without the right user and password.
    for auth in [None, Some(("alice", "wrong")), Some(("mallory", "secret"))] {
        let (_, head) = connect(port, "s.example.com", auth);
        assert!(
            head.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
            "{auth:?}: {head}"
        );
        assert!(
            head.contains("Proxy-Authenticate: Basic realm=\"Restricted\"\r\n"),
            "{head}"
        );
    }
    let (mut s, head) = connect(port, "s.example.com", Some(("alice", "secret")));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(echoes(&mut s, 64 * 1024, 1));
    // routeByHTTPUser: bob's proxy for bob, the other one for the rest.
    let (mut s, head) = connect(port, "r.example.com", Some(("bob", "pw")));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(echoes(&mut s, 64 * 1024, 2), "bob's route");
    let (mut s, head) = connect(port, "r.example.com", None);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        !echoes(&mut s, 1024, 3),
        "the catch-all route reached bob's service"
    );
    // Unknown host: 404; not CONNECT: closed without an answer.
    let (_, head) = connect(port, "nobody.example.com", None);
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: m.example.com\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert!(fp
        .daemon
        .wait_log("must be of method CONNECT, not GET", Duration::from_secs(5)));
    assert!(fp.daemon.wait_log(
        "no tcpmux proxy serves \"nobody.example.com\"",
        Duration::from_secs(5)
    ));
}

#[test]
fn tcpmux_passthrough_sends_the_connect_request_on() {
    let port = free_port();
    let fp = Fastpath::start(
        &format!("tcpmuxHTTPConnectPort = {port}\ntcpmuxPassthrough = true"),
        1,
    );
    let echo = Backend::echo().unwrap();
    let c = Client::login(fp.opts()).expect("login");
    tcpmux_proxy(
        &c,
        "p",
        echo.addr(),
        &["m.example.com"],
        None,
        "",
        "httpconnect",
    )
    .expect("proxy");
    // No 200 from the server: the echo service sends the request back.
    let (mut s, head) = connect(port, "m.example.com", None);
    assert_eq!(
        head,
        "CONNECT m.example.com:22 HTTP/1.1\r\nHost: m.example.com:22\r\n\r\n"
    );
    assert!(echoes(&mut s, 64 * 1024, 4));
}
