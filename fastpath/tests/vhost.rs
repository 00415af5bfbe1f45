//! `https` proxies on `vhostHTTPSPort`, end to end with the real binary:
//! connections routed by the server name of their ClientHello to the proxy
//! that claimed it, TLS passed through untouched (the backend's certificate
//! is what the user verifies), on either worker, over every kind of work
//! connection; and what cannot be routed closed, logged and counted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

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
