//! The fastpath under a policy table, with this test standing in for the
//! slowpath: it signs tickets, publishes tables into the policy directory the
//! way the slowpath does (write aside, rename), and drains the event rings.
//! The fastpath is the real binary; the client speaks frp on real sockets.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench::backend::Backend;
use bench::client::{Client, ClientError, ClientOpts};
use bench::proc::free_port;
use common::{echo_integrity, Fastpath};
use proto::events::{Event, EventRecord};
use proto::policy::{
    InviteId, InvitePolicy, NodePolicy, PolicySpec, PortSet, ProxyTypes, RefusalKind, TenantPolicy,
    TicketKey,
};
use proto::ticket::{self, TicketClaims};
use ring::signature::{Ed25519KeyPair, KeyPair};
use shm::{MappedRing, ShmDir};

const NODE: &str = "node_test";

struct Control {
    dir: PathBuf,
    /// The instance key the fastpath will find in `dir`.
    shm_key: proto::shm_auth::InstanceKey,
    key: Ed25519KeyPair,
    generation: u64,
    pool: PortSet,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Control {
    fn new() -> Control {
        let dir = PathBuf::from("/dev/shm").join(format!(
            "totoro-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        let dir = if Path::new("/dev/shm").is_dir() {
            dir
        } else {
            std::env::temp_dir().join(dir.file_name().unwrap())
        };
        let shm = ShmDir::open(&dir).unwrap();
        let shm_key = shm.instance_key().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
        // A run of ports that were free a moment ago.
        let base = bench::proc::free_port_run(40);
        Control {
            dir,
            shm_key,
            key,
            generation: 0,
            pool: PortSet::from_ranges(vec![(base, base + 40)]),
        }
    }

    fn spec(&self, public: bool, invites: Vec<InvitePolicy>) -> PolicySpec {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.key.public_key().as_ref());
        PolicySpec {
            edge: Default::default(),
            mesh: Default::default(),
            generation: 0,
            created_ms: 0,
            node: NodePolicy {
                node_id: NODE.into(),
                region: "test".into(),
                public,
                port_pool: self.pool.clone(),
                proxy_types: ProxyTypes::parse("tcp,udp").unwrap(),
                max_proxies_per_session: 3,
                sub_domain_host: String::new(),
            },
            keys: vec![TicketKey {
                kid: "k1".into(),
                public_key: pk,
            }],
            invites,
            tenants: vec![],
        }
    }

    fn publish(&mut self, mut spec: PolicySpec) -> u64 {
        self.generation += 1;
        spec.generation = self.generation;
        self.write_raw(&spec.encode());
        self.generation
    }

    /// Publish `bytes` as the slowpath would: sealed with the instance key.
    fn write_raw(&self, bytes: &[u8]) {
        let mut sealed = bytes.to_vec();
        self.shm_key.seal_table(&mut sealed);
        self.write_unsealed(&sealed);
    }

    /// Put `bytes` in place of the table as they are (forgeries).
    fn write_unsealed(&self, bytes: &[u8]) {
        ShmDir::open(&self.dir)
            .unwrap()
            .write_replacing(shm::TABLE_FILE, bytes)
            .unwrap();
    }

    fn invite(
        &self,
        id: InviteId,
        max_conns: u32,
        max_proxies: u32,
        ports: &PortSet,
    ) -> InvitePolicy {
        InvitePolicy {
            id,
            revoked: false,
            expires_ms: u64::MAX,
            max_conns,
            max_proxies,
            proxy_types: ProxyTypes::parse("tcp").unwrap(),
            port_pool: ports.clone(),
            domain_suffix: String::new(),
            subdomain: String::new(),
        }
    }

    fn ticket_for(&self, node: &str, inv: InviteId, exp: u64, kid: &str) -> String {
        let claims = TicketClaims {
            iss: ticket::ISSUER.into(),
            node: node.into(),
            inv: inv.to_string(),
            iat: now_s(),
            exp,
            jti: "t".into(),
        };
        ticket::sign(&claims, kid, &self.key)
    }

    fn ticket(&self, inv: InviteId) -> String {
        self.ticket_for(NODE, inv, now_s() + 600, "k1")
    }

    fn start(&self, workers: usize) -> Fastpath {
        Fastpath::start(
            &format!("fastpath.policyDir = \"{}\"", self.dir.display()),
            workers,
        )
    }

    /// Every event in every worker's ring so far.
    fn drain(&self, rings: &mut Vec<MappedRing>) -> Vec<EventRecord> {
        if rings.is_empty() {
            let dir = ShmDir::open(&self.dir).unwrap();
            for name in dir.names().unwrap() {
                if shm::ring_worker(&name).is_some() {
                    rings.push(MappedRing::attach(&dir, &name).unwrap());
                }
            }
        }
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for r in rings.iter() {
            while r.pop(&mut buf) {
                let rec = self
                    .shm_key
                    .open_record(&buf)
                    .expect("records carry the instance tag");
                out.push(EventRecord::decode(rec).expect("fastpath writes valid records"));
            }
        }
        out
    }

    fn applied(&self, rings: &[MappedRing]) -> Vec<u64> {
        rings.iter().map(|r| r.applied_generation()).collect()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tenant(
    token: &str,
    region: &str,
    ports: &[(u16, u16)],
    max_ports: u32,
    bps: u64,
) -> TenantPolicy {
    TenantPolicy {
        token: token.into(),
        region: region.into(),
        enabled: true,
        allow_ports: PortSet::from_ranges(ports.to_vec()),
        max_ports_per_client: max_ports,
        bandwidth_bps: bps,
        over_quota: false,
        throttle_bps: 0,
        report_interval_bytes: 0,
    }
}

/// Client options for a tenant token; `plain`: no TLS, no yamux (work
/// connections are separate TCP connections and relay by splice).
fn tenant_opts(fp: &Fastpath, token: &str, plain: bool) -> ClientOpts {
    let mut o = fp.opts();
    o.token = token.into();
    if plain {
        o.tls = false;
        o.mux = false;
    }
    o
}

fn opts_with_ticket(fp: &Fastpath, ticket: &str) -> ClientOpts {
    let mut o = fp.opts();
    o.metas.insert("ticket".into(), ticket.into());
    o
}

fn refused(r: Result<Client, ClientError>) -> String {
    match r {
        Ok(_) => panic!("login was accepted"),
        Err(ClientError::Refused(reason)) => reason,
        Err(e) => panic!("expected a refusal, got {e}"),
    }
}

fn proxy(c: &Client, name: &str, port: u16, local: std::net::SocketAddr) -> Result<u16, String> {
    c.add_plain_proxy(name, port, local)
        .map_err(|e| e.to_string())
}

#[test]
fn private_node_enforces_invite_scope_and_limits() {
    let mut ctl = Control::new();
    let inv = InviteId::random();
    let lo = ctl.pool.ranges()[0].0;
    let inv_pool = PortSet::from_ranges(vec![(lo, lo + 9)]);
    let spec = ctl.spec(false, vec![ctl.invite(inv, 2, 2, &inv_pool)]);
    ctl.publish(spec);
    let fp = ctl.start(2);
    let echo = Backend::echo().unwrap();

    // No ticket on a private node.
    let r = refused(Client::login(fp.opts()));
    assert!(r.contains("private"), "{r}");

    // A ticket: in, and a tunnel from the invite's pool carries data.
    let t = ctl.ticket(inv);
    let a = Client::login(opts_with_ticket(&fp, &t)).expect("ticket login");
    let port = proxy(&a, "p1", 0, echo.addr()).expect("port 0 from the pool");
    assert!(inv_pool.contains(port), "{port} not in {inv_pool}");
    let (sent, got) = echo_integrity(port, 2 << 20, 1);
    assert_eq!(sent, got);

    // A port outside the invite's pool.
    let e = proxy(&a, "p-out", lo + 20, echo.addr()).unwrap_err();
    assert!(e.contains("not in the port pool"), "{e}");

    // max_proxies = 2, counted across the invite's sessions.
    let b = Client::login(opts_with_ticket(&fp, &t)).expect("second session");
    proxy(&b, "p2", 0, echo.addr()).expect("second proxy");
    let e = proxy(&b, "p3", 0, echo.addr()).unwrap_err();
    assert!(e.contains("max_proxies"), "{e}");

    // max_conns = 2.
    let r = refused(Client::login(opts_with_ticket(&fp, &t)));
    assert!(r.contains("max_conns"), "{r}");

    // A type the invite does not allow.
    b.kill();
    let mut o = opts_with_ticket(&fp, &t);
    o.proxy_type = "udp".into();
    let deadline = Instant::now() + Duration::from_secs(5);
    let c = loop {
        match Client::login(o.clone()) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("slot not freed after the session ended: {e}"),
        }
    };
    let e = proxy(&c, "u1", 0, echo.addr()).unwrap_err();
    assert!(e.contains("proxy type udp is not allowed by invite"), "{e}");

    // The first tunnel still works after all those refusals.
    let (sent, got) = echo_integrity(port, 1 << 20, 2);
    assert_eq!(sent, got);
}

/// An invite's `domain_suffix` bounds the domains of its `https` proxies;
/// the decision names the domain, and a proxy inside it is routed.
#[test]
fn invite_domain_suffix_bounds_https_proxies() {
    let mut ctl = Control::new();
    let inv = InviteId::random();
    let mut spec = ctl.spec(false, vec![]);
    spec.node.proxy_types = ProxyTypes::parse("tcp,https").unwrap();
    let mut invite = ctl.invite(inv, 2, 4, &ctl.pool.clone());
    invite.proxy_types = ProxyTypes::parse("https").unwrap();
    invite.domain_suffix = "t.example.net".into();
    spec.invites = vec![invite];
    ctl.publish(spec);
    let https = free_port();
    let fp = Fastpath::start(
        &format!(
            "fastpath.policyDir = \"{}\"\nvhostHTTPSPort = {https}\nsubDomainHost = \"sub.t.example.net\"",
            ctl.dir.display()
        ),
        1,
    );
    let echo = Backend::echo().unwrap();
    let c = Client::login(opts_with_ticket(&fp, &ctl.ticket(inv))).expect("ticket login");
    let spec = |name: &str| bench::client::ProxySpec {
        name: name.into(),
        remote_port: 0,
        local: echo.addr(),
        use_encryption: false,
        use_compression: false,
        server_bandwidth_limit: String::new(),
    };
    let e = c
        .add_vhost_proxy(spec("out"), "https", &["www.example.com"], "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("domain www.example.com is not under t.example.net (domain_suffix of invite"),
        "{e}"
    );
    let e = c
        .add_vhost_proxy(
            spec("near"),
            "https",
            &["a.t.example.net", "evilt.example.net"],
            "",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("domain evilt.example.net is not under"), "{e}");
    let addr = c
        .add_vhost_proxy(spec("in"), "https", &["A.t.example.net"], "shop")
        .expect("inside the suffix");
    assert_eq!(
        addr,
        format!("a.t.example.net:{https},shop.sub.t.example.net:{https}")
    );
    // A tcp proxy is outside this invite's types, whatever its domains.
    let e = proxy(&c, "t", 0, echo.addr()).unwrap_err();
    assert!(e.contains("proxy type tcp is not allowed by invite"), "{e}");
}

#[test]
fn each_bad_ticket_has_its_own_reason() {
    let mut ctl = Control::new();
    let (good, revoked, missing) = (InviteId::random(), InviteId::random(), InviteId::random());
    let pool = ctl.pool.clone();
    let mut r = ctl.invite(revoked, 0, 0, &pool);
    r.revoked = true;
    let spec = ctl.spec(false, vec![ctl.invite(good, 0, 0, &pool), r]);
    ctl.publish(spec);
    let fp = ctl.start(1);

    let cases = [
        (
            ctl.ticket_for(NODE, good, now_s() - 1, "k1"),
            "ticket expired",
        ),
        (
            ctl.ticket_for("node_other", good, now_s() + 600, "k1"),
            "another node",
        ),
        (
            ctl.ticket_for(NODE, good, now_s() + 600, "k9"),
            "unknown key",
        ),
        (ctl.ticket(revoked), "revoked"),
        (ctl.ticket(missing), "unknown to this node"),
        ("not-a-ticket".to_string(), "malformed ticket"),
    ];
    for (t, want) in &cases {
        let r = refused(Client::login(opts_with_ticket(&fp, t)));
        assert!(r.contains(want), "want {want:?}, got {r:?}");
    }
    // Tampered: change one character of the claims.
    let t = ctl.ticket(good);
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let mut claims: Vec<u8> = parts[1].clone().into_bytes();
    claims[10] = if claims[10] == b'A' { b'B' } else { b'A' };
    parts[1] = String::from_utf8(claims).unwrap();
    let r = refused(Client::login(opts_with_ticket(&fp, &parts.join("."))));
    assert!(r.contains("signature") || r.contains("malformed"), "{r}");
    // And the good one works.
    Client::login(opts_with_ticket(&fp, &t)).expect("good ticket");
}

#[test]
fn revocation_ends_live_sessions_within_a_second_on_every_worker() {
    let mut ctl = Control::new();
    let inv = InviteId::random();
    let pool = ctl.pool.clone();
    let spec = ctl.spec(false, vec![ctl.invite(inv, 0, 0, &pool)]);
    ctl.publish(spec);
    let fp = ctl.start(2);
    let echo = Backend::echo().unwrap();
    let t = ctl.ticket(inv);
    // Several sessions so that both workers hold some.
    let clients: Vec<Client> = (0..6)
        .map(|_| Client::login(opts_with_ticket(&fp, &t)).expect("login"))
        .collect();
    let port = proxy(&clients[0], "live", 0, echo.addr()).unwrap();
    let (sent, got) = echo_integrity(port, 1 << 20, 3);
    assert_eq!(sent, got);

    let mut rings = Vec::new();
    ctl.drain(&mut rings);
    assert_eq!(rings.len(), 2, "one ring per worker");

    let mut revoked = ctl.invite(inv, 0, 0, &pool);
    revoked.revoked = true;
    let spec = ctl.spec(false, vec![revoked]);
    let t0 = Instant::now();
    let gen = ctl.publish(spec);
    while !clients.iter().all(Client::is_closed) {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "sessions still open after 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    while ctl.applied(&rings).iter().any(|&g| g < gen) {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{:?}",
            ctl.applied(&rings)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "revocation: sessions closed after {took:?}, all workers at generation {gen} after {:?}",
        t0.elapsed()
    );
    let events = ctl.drain(&mut rings);
    let closes = events
        .iter()
        .filter(|e| matches!(&e.event, Event::SessionClose { reason, invite, refusal, .. }
            if reason.contains("revoked") && *invite == Some(inv) && *refusal == Some(RefusalKind::InviteRevoked)))
        .count();
    assert_eq!(closes, 6, "{events:?}");
    let r = refused(Client::login(opts_with_ticket(&fp, &t)));
    assert!(r.contains("revoked"), "{r}");
}

#[test]
fn corrupt_or_stale_tables_are_refused_and_the_last_good_one_stays() {
    let mut ctl = Control::new();
    let inv = InviteId::random();
    let pool = ctl.pool.clone();
    let good = ctl.spec(false, vec![ctl.invite(inv, 0, 0, &pool)]);
    ctl.publish(good.clone());
    let fp = ctl.start(1);
    let t = ctl.ticket(inv);
    Client::login(opts_with_ticket(&fp, &t)).expect("login under generation 1");

    // Garbage, then a truncated table, then a table with a flipped byte.
    let mut next = good.clone();
    next.generation = 5;
    next.invites.clear();
    let bytes = next.encode();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    for bad in [
        b"garbage".to_vec(),
        bytes[..bytes.len() - 3].to_vec(),
        flipped,
    ] {
        ctl.write_raw(&bad);
        std::thread::sleep(Duration::from_millis(100));
        Client::login(opts_with_ticket(&fp, &t)).expect("still generation 1");
    }
    // A forged table: newer, structurally valid, with a correct CRC, but
    // not sealed with the instance key (or sealed with another key).
    let mut forged = good.clone();
    forged.generation = u64::MAX;
    forged.invites.clear();
    ctl.write_unsealed(&forged.encode());
    std::thread::sleep(Duration::from_millis(100));
    Client::login(opts_with_ticket(&fp, &t)).expect("unsealed forgery refused");
    let mut other_key = forged.encode();
    proto::shm_auth::InstanceKey::new(&[7; 32]).seal_table(&mut other_key);
    ctl.write_unsealed(&other_key);
    std::thread::sleep(Duration::from_millis(100));
    Client::login(opts_with_ticket(&fp, &t)).expect("forgery under another key refused");
    assert!(
        fp.daemon.log().join("\n").contains("authentication failed"),
        "{}",
        fp.daemon.log().join("\n")
    );
    // A stale generation (0 < 1) is refused too.
    let mut stale = good.clone();
    stale.generation = 0;
    stale.invites.clear();
    ctl.write_raw(&stale.encode());
    std::thread::sleep(Duration::from_millis(100));
    Client::login(opts_with_ticket(&fp, &t)).expect("stale table ignored");
    let log = fp.daemon.log().join("\n");
    assert!(log.contains("policy table refused"), "{log}");
    assert!(
        log.contains("checksum") || log.contains("truncated"),
        "{log}"
    );

    // A good newer generation without the invite: refused from then on.
    ctl.generation = 1;
    let mut newer = good.clone();
    newer.invites.clear();
    ctl.publish(newer);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match Client::login(opts_with_ticket(&fp, &t)) {
            Err(ClientError::Refused(r)) => {
                assert!(r.contains("unknown to this node"), "{r}");
                break;
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => panic!("newer generation not applied"),
        }
    }
}

#[test]
fn public_node_takes_token_logins_and_events_reach_the_rings() {
    let mut ctl = Control::new();
    let spec = ctl.spec(true, vec![]);
    ctl.publish(spec);
    let fp = ctl.start(2);
    let echo = Backend::echo().unwrap();
    let c = Client::login(fp.opts()).expect("token login on a public node");
    let port = proxy(&c, "pub1", 0, echo.addr()).unwrap();
    assert!(ctl.pool.contains(port));
    let (sent, got) = echo_integrity(port, 3 << 20, 4);
    assert_eq!(sent, got);
    let outside = ctl.pool.ranges()[0].1 + 1;
    let e = proxy(&c, "pub-out", outside, echo.addr()).unwrap_err();
    assert!(e.contains("not in this node's port pool"), "{e}");
    let mut bad = fp.opts();
    bad.token = "wrong".into();
    refused(Client::login(bad));
    let other = Client::login(fp.opts()).expect("second token session");
    c.close_proxy("pub1").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.kill();

    let mut rings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut events = Vec::new();
    loop {
        events.extend(ctl.drain(&mut rings));
        let kinds: Vec<&str> = events.iter().map(|e| e.event.kind()).collect();
        let done = [
            "session.open",
            "proxy.registered",
            "proxy.rejected",
            "auth.failed",
            "proxy.traffic",
            "proxy.closed",
            "session.close",
        ]
        .iter()
        .all(|k| kinds.contains(k));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "missing events: {kinds:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (bytes_in, bytes_out) = events.iter().fold((0, 0), |acc, e| match &e.event {
        Event::Traffic {
            bytes_in,
            bytes_out,
            ..
        } => (acc.0 + bytes_in, acc.1 + bytes_out),
        _ => acc,
    });
    assert_eq!(
        (bytes_in, bytes_out),
        (3 << 20, 3 << 20),
        "traffic counts every relayed byte"
    );
    let rejected = events.iter().find_map(|e| match &e.event {
        Event::ProxyRejected { proxy, refusal, .. } => Some((proxy.clone(), *refusal)),
        _ => None,
    });
    assert_eq!(
        rejected,
        Some(("pub-out".to_string(), Some(RefusalKind::PortNotAllowed)))
    );

    // Made private: token-only sessions end, token-only logins are refused.
    let spec = ctl.spec(false, vec![]);
    ctl.publish(spec);
    let t0 = Instant::now();
    while !other.is_closed() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "token session survived going private"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = refused(Client::login(fp.opts()));
    assert!(r.contains("private"), "{r}");
}

#[test]
fn tenant_tokens_log_in_where_their_region_matches_and_follow_their_rules() {
    let mut ctl = Control::new();
    let base = ctl.pool.ranges()[0].0;
    let mut spec = ctl.spec(false, vec![]);
    spec.tenants = vec![
        tenant(
            "user1_test",
            "test",
            &[(base, base), (base + 10, base + 12)],
            2,
            0,
        ),
        tenant("user1_elsewhere", "shanghai", &[], 0, 0),
        TenantPolicy {
            enabled: false,
            ..tenant("user2_off", "test", &[], 0, 0)
        },
        TenantPolicy {
            over_quota: true,
            ..tenant("user3_spent", "test", &[], 0, 0)
        },
    ];
    ctl.publish(spec);
    let fp = ctl.start(2);
    let echo = Backend::echo().unwrap();
    for plain in [false, true] {
        // frpc defaults (TLS + yamux), then plain TCP work connections,
        // which also prove NewWorkConn is checked against the tenant token.
        let c = Client::login(tenant_opts(&fp, "user1_test", plain)).expect("tenant login");
        let e = proxy(&c, "out", base + 5, echo.addr()).unwrap_err();
        assert!(e.contains("allowPorts"), "{e}");
        assert_eq!(proxy(&c, "a", base, echo.addr()).unwrap(), base);
        let p2 = proxy(&c, "b", 0, echo.addr()).unwrap();
        assert!((base + 10..=base + 12).contains(&p2), "{p2}");
        let e = proxy(&c, "c", base + 11, echo.addr()).unwrap_err();
        assert!(e.contains("maxPortsPerClient"), "{e}");
        let (sent, got) = echo_integrity(p2, 1 << 20, 9);
        assert_eq!(sent, got);
        c.kill();
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = refused(Client::login(tenant_opts(&fp, "user1_elsewhere", false)));
    assert!(
        r.contains("region \"shanghai\"") && r.contains("\"test\""),
        "{r}"
    );
    let r = refused(Client::login(tenant_opts(&fp, "user2_off", false)));
    assert!(r.contains("disabled"), "{r}");
    let r = refused(Client::login(tenant_opts(&fp, "user3_spent", false)));
    assert!(r.contains("quota"), "{r}");
    let r = refused(Client::login(tenant_opts(&fp, "nobody", false)));
    assert!(r.contains("doesn't match"), "{r}");
    // A clock far off the server's: found by the fallback scan.
    let mut skewed = tenant_opts(&fp, "user1_test", true);
    skewed.timestamp = Some(now_s() as i64 - 3600);
    Client::login(skewed).expect("tenant login with a skewed clock");
    // The node's own token still works on a node with tenants (here a
    // private node: it needs a ticket, and says so).
    let r = refused(Client::login(fp.opts()));
    assert!(r.contains("private"), "{r}");
}

#[test]
fn deleting_or_disabling_a_tenant_ends_its_transfers_at_once() {
    let mut ctl = Control::new();
    let mut spec = ctl.spec(false, vec![]);
    spec.tenants = vec![
        tenant("del", "test", &[], 0, 0),
        tenant("dis", "test", &[], 0, 0),
        tenant("keep", "test", &[], 0, 0),
    ];
    ctl.publish(spec.clone());
    let fp = ctl.start(2);
    let echo = Backend::echo().unwrap();
    let mut rings = Vec::new();
    for (victim, plain) in [("del", true), ("dis", false)] {
        let c = Client::login(tenant_opts(&fp, victim, plain)).expect("login");
        let keep = Client::login(tenant_opts(&fp, "keep", plain)).expect("login");
        let port = proxy(&c, &format!("{victim}-p"), 0, echo.addr()).unwrap();
        let kport = proxy(&keep, &format!("{victim}-keep"), 0, echo.addr()).unwrap();
        // A transfer in flight: the visitor sends, reads the echo, and
        // keeps going until the tunnel ends.
        let mut v = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        v.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![7u8; 64 * 1024];
        use std::io::{Read, Write};
        v.write_all(&buf).unwrap();
        let mut got = 0;
        while got < buf.len() {
            got += v.read(&mut buf[got..]).unwrap();
        }
        let ended = std::thread::spawn(move || loop {
            if v.write_all(&[1u8; 4096]).is_err() {
                return Instant::now();
            }
            let mut b = [0u8; 4096];
            match v.read(&mut b) {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        match victim {
            "del" => spec.tenants.retain(|t| t.token != "del"),
            _ => {
                for t in spec.tenants.iter_mut().filter(|t| t.token == "dis") {
                    t.enabled = false;
                }
            }
        }
        let t0 = Instant::now();
        ctl.publish(spec.clone());
        let end = ended.join().unwrap();
        let took = end.saturating_duration_since(t0);
        assert!(
            took < Duration::from_secs(1),
            "{victim}: transfer went on for {took:?}"
        );
        while !c.is_closed() {
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{victim}: session survived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "{victim}: transfer ended {took:?} and session closed {:?} after the publish",
            t0.elapsed()
        );
        // The other tenant is untouched.
        let (sent, back) = echo_integrity(kport, 256 * 1024, 2);
        assert_eq!(sent, back);
        assert!(!keep.is_closed());
        let r = refused(Client::login(tenant_opts(&fp, victim, plain)));
        assert!(
            r.contains(if victim == "del" {
                "doesn't match"
            } else {
                "disabled"
            }),
            "{r}"
        );
        keep.kill();
    }
    let events = ctl.drain(&mut rings);
    let reasons: Vec<(String, Option<RefusalKind>)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::SessionClose {
                reason, refusal, ..
            } => Some((reason.clone(), *refusal)),
            _ => None,
        })
        .collect();
    assert!(
        reasons.contains(&("token was deleted".into(), Some(RefusalKind::TokenDeleted))),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(
            "token was disabled".into(),
            Some(RefusalKind::TokenDisabled)
        )),
        "{reasons:?}"
    );
}

#[test]
fn tenant_bandwidth_is_enforced_and_tenant_traffic_is_reported() {
    let mut ctl = Control::new();
    let mut spec = ctl.spec(false, vec![]);
    // 1 MiB/s for the tenant, both directions together.
    spec.tenants = vec![tenant("slow", "test", &[], 0, 1 << 20)];
    ctl.publish(spec);
    let fp = ctl.start(2);
    let echo = Backend::echo().unwrap();
    let mut rings = Vec::new();
    for plain in [true, false] {
        let c = Client::login(tenant_opts(&fp, "slow", plain)).expect("login");
        let name = format!("bw-{plain}");
        let port = proxy(&c, &name, 0, echo.addr()).unwrap();
        // 768 KiB each way through two visitors at once: 3 MiB counted
        // against one 1 MiB/s budget.
        let t0 = Instant::now();
        let a = std::thread::spawn(move || echo_integrity(port, 768 << 10, 1));
        let b = std::thread::spawn(move || echo_integrity(port, 768 << 10, 2));
        for h in [a, b] {
            let (s1, s2) = h.join().unwrap();
            assert_eq!(s1, s2);
        }
        let took = t0.elapsed();
        eprintln!("plain={plain}: 3 MiB at 1 MiB/s took {took:?}");
        assert!(took > Duration::from_millis(2500), "not limited: {took:?}");
        c.close_proxy(&name).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.kill();
        let events = ctl.drain(&mut rings);
        let mut sum = (0, 0);
        let mut closed = false;
        for e in &events {
            if let Event::TenantTraffic {
                token,
                proxy,
                bytes_in,
                bytes_out,
                closed: last,
                ..
            } = &e.event
            {
                assert_eq!(token, "slow");
                assert!(proxy.ends_with(&name), "{proxy}");
                sum.0 += bytes_in;
                sum.1 += bytes_out;
                closed |= *last;
            }
        }
        assert_eq!(sum, (3 << 19, 3 << 19), "{events:?}");
        assert!(closed, "the proxy's last sample is marked closed");
    }
    // A proxy's own limit with bandwidthLimitMode = "server", on a token
    // session of a public node.
    let mut spec = ctl.spec(true, vec![]);
    spec.tenants = vec![];
    ctl.publish(spec);
    std::thread::sleep(Duration::from_millis(100));
    let c = Client::login(fp.opts()).expect("login");
    let addr = c
        .add_proxy(bench::client::ProxySpec {
            name: "own-limit".into(),
            remote_port: 0,
            local: echo.addr(),
            use_encryption: false,
            use_compression: false,
            server_bandwidth_limit: "512KB".into(),
        })
        .unwrap();
    let port: u16 = addr.trim_start_matches(':').parse().unwrap();
    let t0 = Instant::now();
    let (s1, s2) = echo_integrity(port, 512 << 10, 5);
    assert_eq!(s1, s2);
    let took = t0.elapsed();
    eprintln!("1 MiB at 512 KiB/s took {took:?}");
    assert!(took > Duration::from_millis(1500), "not limited: {took:?}");
    // Over a throttling quota: served, at the throttle rate.
    let mut spec = ctl.spec(true, vec![]);
    spec.tenants = vec![TenantPolicy {
        over_quota: true,
        throttle_bps: 512 << 10,
        ..tenant("thr", "test", &[], 0, 0)
    }];
    ctl.publish(spec);
    std::thread::sleep(Duration::from_millis(100));
    let t = Client::login(tenant_opts(&fp, "thr", true)).expect("a throttled tenant logs in");
    let port = proxy(&t, "thr-p", 0, echo.addr()).unwrap();
    let t0 = Instant::now();
    let (s1, s2) = echo_integrity(port, 512 << 10, 6);
    assert_eq!(s1, s2);
    let took = t0.elapsed();
    eprintln!("throttled: 1 MiB at 512 KiB/s took {took:?}");
    assert!(
        took > Duration::from_millis(1500),
        "not throttled: {took:?}"
    );
    let e = c
        .add_proxy(bench::client::ProxySpec {
            name: "bad-limit".into(),
            remote_port: 0,
            local: echo.addr(),
            use_encryption: false,
            use_compression: false,
            server_bandwidth_limit: "5GB".into(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("bandwidthLimit"), "{e}");
}

/// A CA and a certificate it signed for `host`: (CA DER, leaf DER, key
/// DER).
fn signed_for(host: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.der().to_vec(), leaf.der().to_vec(), key.serialize_der())
}

/// TLS to the https port with server name `host`, trusting `ca`; one
/// request: (the leaf presented, the body).
fn tls_get(port: u16, host: &str, ca: &[u8]) -> Result<(Vec<u8>, String), String> {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.to_vec().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let leaf = tls
        .conn
        .peer_certificates()
        .ok_or("no handshake")?
        .first()
        .ok_or("no certificate")?
        .to_vec();
    let out = String::from_utf8_lossy(&out).into_owned();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((leaf, body.ok_or(format!("no response: {out:?}"))?))
}

#[test]
fn the_edge_certificate_store_is_checked_and_the_last_good_one_stays() {
    use proto::policy::{EdgeOrigin, EdgePolicy, EdgeRoute};
    let mut ctl = Control::new();
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in origin.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).ok() == Some(1) {
                head.push(b[0]);
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin",
            );
        }
    });
    let host = "app.hoge.test";
    let store = |leaf: &[u8], key: &[u8]| {
        proto::certstore::encode(&[proto::certstore::Entry {
            names: vec![host],
            chain: vec![leaf],
            key,
        }])
    };
    let shm = ShmDir::open(&ctl.dir).unwrap();
    let publish = |ctl: &mut Control, file: Option<&[u8]>, named: Option<&[u8]>| {
        if let Some(f) = file {
            shm.write_replacing(shm::CERTS_FILE, f).unwrap();
        }
        let mut spec = ctl.spec(true, vec![]);
        spec.edge = EdgePolicy {
            routes: vec![EdgeRoute {
                hostname: host.into(),
                origin: EdgeOrigin::Address(origin_addr.to_string()),
                redirect_https: false,
            }],
            certs: named.map(|n| (proto::certstore::digest(n), 1)),
            challenges: vec![],
        };
        ctl.publish(spec)
    };
    let (ca1, leaf1, key1) = signed_for(host);
    let (ca2, leaf2, key2) = signed_for(host);
    let good1 = store(&leaf1, &key1);
    let good2 = store(&leaf2, &key2);
    publish(&mut ctl, Some(&good1), Some(&good1));
    let https = free_port();
    let _fp = Fastpath::start(
        &format!(
            "fastpath.policyDir = \"{}\"\nvhostHTTPSPort = {https}",
            ctl.dir.display()
        ),
        2,
    );
    let served = || tls_get(https, host, &ca1);
    let (leaf, body) = served().expect("terminated with the first store");
    assert_eq!(
        (leaf.as_slice(), body.as_str()),
        (leaf1.as_slice(), "origin")
    );

    // A file that is not the one the table names (corrupt, cut short, or
    // another store): refused, the first store stays.
    let mut corrupt = good2.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0xff;
    for bad in [corrupt.as_slice(), &good2[..good2.len() - 10], &good1] {
        let gen = publish(&mut ctl, Some(bad), Some(&good2));
        wait_generation(&ctl, gen);
        let (leaf, _) = served().expect("still served");
        assert_eq!(leaf, leaf1, "the last good store stays");
    }
    // The store the table names: in force.
    let gen = publish(&mut ctl, Some(&good2), Some(&good2));
    wait_generation(&ctl, gen);
    let (leaf, body) = tls_get(https, host, &ca2).expect("the second store");
    assert_eq!(
        (leaf.as_slice(), body.as_str()),
        (leaf2.as_slice(), "origin")
    );
    // A server name nobody serves, and no certificates at all: no
    // handshake.
    assert!(tls_get(https, "other.hoge.test", &ca2).is_err());
    let gen = publish(&mut ctl, None, None);
    wait_generation(&ctl, gen);
    assert!(tls_get(https, host, &ca2).is_err());
}

/// Wait until every worker runs generation `gen` (as its ring says).
fn wait_generation(ctl: &Control, gen: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rings = Vec::new();
    loop {
        ctl.drain(&mut rings);
        let applied = ctl.applied(&rings);
        if !applied.is_empty() && applied.iter().all(|&g| g >= gen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {gen} not applied: {applied:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
