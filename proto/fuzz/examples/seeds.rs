//! Writes the hand-made seed inputs in `proto/fuzz/seeds/<target>/`: a few
//! small, well-formed inputs per target, built with the crate's own
//! encoders, so a short CI run starts past the checksums, lengths and JSON
//! a random byte string never gets right. The files are committed; run this
//! again when a format changes:
//!
//! ```text
//! cargo run --manifest-path proto/fuzz/Cargo.toml --example seeds
//! ```
//!
//! Every seed follows the layout its target reads (a control byte first
//! where the target takes one); see the target's opening comment.

use std::fs;
use std::path::{Path, PathBuf};

use proto::event_batch::Batch;
use proto::events::{Event, EventRecord};
use proto::msg::Message;
use proto::policy::{
    InviteId, InvitePolicy, NodePolicy, PolicySpec, PortSet, ProxyTypes, RefusalKind, TenantPolicy,
    TicketKey,
};
use proto::snappy::SnappyEncoder;
use proto::ticket::{self, TicketClaims};
use proto::wire_v2::{self, AeadAlgorithm, AeadWriter, BootstrapInfo, ClientHello, FrameType};
use proto::yamux::{Flags, FrameType as MuxFrame, Header};
use ring::signature::Ed25519KeyPair;

/// Named inputs for one target: file name and bytes.
type Seeds = Vec<(&'static str, Vec<u8>)>;
type SeedFn = fn() -> Seeds;

/// Bodies of a frpc 0.70.1 session as captured (the same ones
/// `proto::msg`'s tests check byte for byte), by v1 type byte.
const SESSION: &[(u8, &str)] = &[
    (
        b'o',
        r#"{"version":"0.70.1","hostname":"vm","os":"linux","arch":"amd64","privilege_key":"f46948c4330a5294aa37186da62edea8","timestamp":1795383782,"client_spec":{},"pool_count":1}"#,
    ),
    (b'1', r#"{"version":"0.70.1","run_id":"55e2c9e45f9e9131"}"#),
    (
        b'p',
        r#"{"proxy_name":"web","proxy_type":"tcp","remote_port":16000}"#,
    ),
    (b'2', r#"{"proxy_name":"web","remote_addr":":16000"}"#),
    (b'w', r#"{"run_id":"55e2c9e45f9e9131"}"#),
    (
        b's',
        r#"{"proxy_name":"web","src_addr":"127.0.0.1","dst_addr":"127.0.0.1","src_port":43520,"dst_port":16000}"#,
    ),
    (b'r', "{}"),
    (b'h', "{}"),
    (b'4', "{}"),
];

fn session() -> Vec<Message> {
    SESSION
        .iter()
        .map(|&(ty, body)| Message::from_json(ty, body.as_bytes()).expect("captured body parses"))
        .collect()
}

fn frame_v1() -> Seeds {
    let mut all = Vec::new();
    for msg in session() {
        proto::frame::encode(&msg, &mut all);
    }
    // A udp proxy's work connection (StartWorkConn, then datagrams and
    // frpc's Ping), and the xtcp broker's messages, as Go writes them.
    let bodies: [(u8, &str, &str); 8] = [
        (b's', "udp-work-conn", r#"{"proxy_name":"dns","src_addr":"","dst_addr":"","src_port":0,"dst_port":0,"error":""}"#),
        (b'u', "udp-work-conn", r#"{"c":"AAEAAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB","r":{"IP":"192.0.2.7","Port":53535,"Zone":""}}"#),
        (b'u', "udp-work-conn", r#"{"c":"aGVsbG8=","l":{"IP":"","Port":0,"Zone":""},"r":{"IP":"fe80::1","Port":1,"Zone":"eth0"}}"#),
        (b'h', "udp-work-conn", r#"{}"#),
        (b'i', "nathole", r#"{"transaction_id":"1733200000a1b2c3d4e5f60718","proxy_name":"p2p","protocol":"quic","sign_key":"0123456789abcdef0123456789abcdef","timestamp":1733200000,"mapped_addrs":["203.0.113.5:40000","203.0.113.5:40001"],"assisted_addrs":["10.0.0.2:40000"]}"#),
        (b'n', "nathole", r#"{"transaction_id":"t2","proxy_name":"p2p","sid":"s1","mapped_addrs":["198.51.100.9:50000"],"assisted_addrs":["192.168.1.3:50000"]}"#),
        (b'm', "nathole", r#"{"transaction_id":"t2","sid":"s1","protocol":"quic","candidate_addrs":["203.0.113.5:40000"],"assisted_addrs":["10.0.0.2:40000"],"detect_behavior":{"role":"sender","mode":1,"ttl":7,"send_delay_ms":10,"read_timeout":5000,"candidate_ports":[{"from":40000,"to":40010}],"send_random_ports":3,"listen_random_ports":4}}"#),
        (b'5', "nathole", r#"{"sid":"s1"}"#),
    ];
    let mut named: Vec<(&'static str, Vec<u8>)> = vec![("frpc-session", all)];
    for (ty, seed, body) in bodies {
        let msg = Message::from_json(ty, body.as_bytes()).expect("seed body parses");
        match named.iter_mut().find(|(n, _)| *n == seed) {
            Some((_, bytes)) => proto::frame::encode(&msg, bytes),
            None => {
                let mut bytes = Vec::new();
                proto::frame::encode(&msg, &mut bytes);
                named.push((seed, bytes));
            }
        }
    }
    named
}

/// A visitor's and an owner's addresses, as two v1 frames.
fn nathole() -> Seeds {
    let pair = |v: &str, c: &str| {
        let mut out = Vec::new();
        for (ty, body) in [(b'i', v), (b'n', c)] {
            let m = Message::from_json(ty, body.as_bytes()).expect("seed body parses");
            proto::frame::encode(&m, &mut out);
        }
        out
    };
    vec![
        (
            "easy-easy",
            pair(
                r#"{"transaction_id":"tv","proxy_name":"p","protocol":"quic","mapped_addrs":["198.51.100.1:4000","198.51.100.1:4000"],"assisted_addrs":["192.168.1.2:4000"]}"#,
                r#"{"transaction_id":"tc","proxy_name":"p","sid":"s","mapped_addrs":["203.0.113.9:6000","203.0.113.9:6000"],"assisted_addrs":["10.0.0.2:6000"]}"#,
            ),
        ),
        (
            "hard-regular",
            pair(
                r#"{"transaction_id":"tv","proxy_name":"p","mapped_addrs":["198.51.100.1:65534","198.51.100.1:65535"]}"#,
                r#"{"transaction_id":"tc","sid":"s","mapped_addrs":["[2001:db8::1]:1","[2001:db8::2]:9"],"assisted_addrs":["[2001:db8::1]:1"]}"#,
            ),
        ),
    ]
}

fn wire_v2() -> Seeds {
    let mut control = wire_v2::MAGIC.to_vec();
    let bootstrap = BootstrapInfo {
        transport: "tcp".into(),
        tls: false,
        tcp_mux: true,
    };
    let hello = ClientHello::new(
        bootstrap,
        &[AeadAlgorithm::XChaCha20Poly1305, AeadAlgorithm::Aes256Gcm],
        [9; wire_v2::RANDOM_LEN],
    );
    wire_v2::encode_frame(FrameType::ClientHello, &hello.to_payload(), &mut control)
        .expect("hello fits a frame");
    let reply = wire_v2::server_hello(&hello, [7; wire_v2::RANDOM_LEN]);
    wire_v2::encode_frame(FrameType::ServerHello, &reply.payload, &mut control)
        .expect("hello fits a frame");
    for msg in session() {
        wire_v2::encode_message(&msg, &mut control).expect("message fits a frame");
    }
    // The magic only leads the connection; the frame loop starts after it.
    let frames = control[wire_v2::MAGIC.len()..].to_vec();

    let mut seeds = vec![("control-with-magic", control), ("control-frames", frames)];
    // AEAD records under the target's key: the first byte of a record says
    // where the target splits its input, so it is fed in two pieces.
    for (name, alg) in [
        ("records-aes256gcm", AeadAlgorithm::Aes256Gcm),
        (
            "records-xchacha20poly1305",
            AeadAlgorithm::XChaCha20Poly1305,
        ),
    ] {
        let mut writer = AeadWriter::new(alg, [0x42; 32]).expect("AEAD key");
        let mut records = Vec::new();
        for text in [&b"first record"[..], b"", &[0xa5; 300]] {
            writer.seal(text, &mut records).expect("record seals");
        }
        seeds.push((name, records));
    }
    seeds
}

fn yamux() -> Seeds {
    let frame = |out: &mut Vec<u8>, ty, flags, id, body: &[u8], length| {
        out.extend_from_slice(&Header::new(ty, flags, id, length).to_bytes());
        out.extend_from_slice(body);
    };
    // frpc opens streams 1 and 3, sends on both, half-closes one, resets
    // the other, pings and goes away. Control byte: 12-byte pieces (one
    // header at a time), streams closed rather than reset.
    let mut wire = vec![11];
    frame(&mut wire, MuxFrame::WindowUpdate, Flags::SYN, 1, &[], 0);
    frame(&mut wire, MuxFrame::Data, Flags::NONE, 1, b"hello", 5);
    frame(
        &mut wire,
        MuxFrame::Data,
        Flags::SYN,
        3,
        b"GET / HTTP/1.1\r\n\r\n",
        18,
    );
    frame(
        &mut wire,
        MuxFrame::WindowUpdate,
        Flags::NONE,
        1,
        &[],
        65536,
    );
    frame(&mut wire, MuxFrame::Data, Flags::FIN, 1, &[], 0);
    frame(&mut wire, MuxFrame::WindowUpdate, Flags::RST, 3, &[], 0);
    frame(&mut wire, MuxFrame::Ping, Flags::SYN, 0, &[], 0x0102_0304);
    frame(&mut wire, MuxFrame::GoAway, Flags::NONE, 0, &[], 0);
    let mut reset = wire.clone();
    reset[0] = 0x80 | 63;
    vec![("streams-close", wire), ("streams-reset", reset)]
}

fn snappy() -> Seeds {
    let mut stream = Vec::new();
    let mut enc = SnappyEncoder::new();
    enc.encode(b"hello hello hello hello, compressible text", &mut stream);
    enc.encode(&(0..=255).collect::<Vec<u8>>(), &mut stream);
    let mut whole = vec![255];
    whole.extend_from_slice(&stream);
    let mut bytewise = vec![1];
    bytewise.extend_from_slice(&stream);
    vec![("stream-whole", whole), ("stream-bytewise", bytewise)]
}

fn cfb() -> Seeds {
    let mut input = vec![0x11; 16]; // key
    input.extend_from_slice(&[0x22; 16]); // IV
    input.extend_from_slice(&6u16.to_le_bytes()); // split sizes: 6 bytes
    input.extend_from_slice(&[1, 15, 0, 3, 17, 16]);
    input.extend_from_slice(b"a plaintext a few blocks long, split at odd places");
    vec![("split", input)]
}

fn ticket() -> Seeds {
    // Signed by another key than the target's, so verification stops at
    // the signature; the parsing before it is what the seed reaches.
    let key = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).expect("seed is 32 bytes");
    let claims = TicketClaims {
        iss: ticket::ISSUER.into(),
        node: "node_fuzz".into(),
        inv: InviteId::from_u128(1).to_string(),
        iat: 1_700_000_000,
        exp: 1_700_000_600,
        jti: "t1".into(),
    };
    vec![("signed", ticket::sign(&claims, "k1", &key).into_bytes())]
}

fn events() -> Seeds {
    let invite = Some(InviteId::from_u128(0x0123_4567_89ab_cdef));
    let all = [
        Event::SessionOpen {
            run_id: "r1".into(),
            invite,
            user: "u".into(),
            version: "0.70.1".into(),
            peer: "192.0.2.1:40000".into(),
        },
        Event::ProxyRejected {
            run_id: "r1".into(),
            invite,
            proxy: "web".into(),
            proxy_type: "tcp".into(),
            reason: "port taken".into(),
            refusal: Some(RefusalKind::TokenMismatch),
        },
        Event::TenantTraffic {
            run_id: "r1".into(),
            token: "t".into(),
            proxy: "web".into(),
            bytes_in: 1000,
            bytes_out: 2000,
            closed: true,
        },
        Event::AuthFailed {
            peer: "192.0.2.2:1".into(),
            invite: None,
            reason: "bad ticket".into(),
            refusal: None,
        },
        Event::Visitor {
            run_id: "r2".into(),
            invite: None,
            proxy: "alice.db".into(),
            peer: "192.0.2.3:4000".into(),
            reason: "visitor connection of [alice.db] auth failed".into(),
        },
    ];
    let names = [
        "session-open",
        "proxy-rejected",
        "tenant-traffic",
        "auth-failed",
        "visitor",
    ];
    names
        .into_iter()
        .zip(all)
        .map(|(name, event)| {
            let rec = EventRecord {
                ts_ms: 1_700_000_000_000,
                worker: 1,
                event,
            };
            (name, rec.to_bytes())
        })
        .collect()
}

/// Two batches back to back (every event kind the events seeds have), and
/// an empty one that follows dropped records.
fn event_batch() -> Seeds {
    let records: Vec<EventRecord> = events()
        .into_iter()
        .filter_map(|(_, bytes)| EventRecord::decode(&bytes).ok())
        .collect();
    let mut two = Batch {
        spool: [9; 16],
        seq: 1,
        dropped: 0,
        records,
    }
    .to_bytes();
    Batch {
        spool: [9; 16],
        seq: 2,
        dropped: 0,
        records: Vec::new(),
    }
    .encode(&mut two);
    let gap = Batch {
        spool: [9; 16],
        seq: 40,
        dropped: 1234,
        records: Vec::new(),
    }
    .to_bytes();
    vec![("two", two), ("after-drops", gap)]
}

fn policy_table() -> Seeds {
    let invite = |n: u128, revoked| InvitePolicy {
        id: InviteId::from_u128(n),
        revoked,
        expires_ms: 1_800_000_000_000,
        max_conns: 2,
        max_proxies: 4,
        proxy_types: ProxyTypes::ALL,
        port_pool: PortSet::from_ranges(vec![(20000, 20010), (30000, 30000)]),
        domain_suffix: "a.example".into(),
        subdomain: String::new(),
    };
    let tenant = |token: &str, enabled| TenantPolicy {
        token: token.into(),
        region: "eu".into(),
        enabled,
        allow_ports: PortSet::from_ranges(vec![(8080, 8090)]),
        max_ports_per_client: 3,
        bandwidth_bps: 1_000_000,
        over_quota: false,
        throttle_bps: 0,
        report_interval_bytes: 1 << 20,
    };
    let spec = PolicySpec {
        edge: Default::default(),
        mesh: Default::default(),
        generation: 7,
        created_ms: 1_700_000_000_000,
        node: NodePolicy {
            node_id: "node_fuzz".into(),
            region: "eu".into(),
            public: true,
            port_pool: PortSet::from_ranges(vec![(10000, 19999), (8080, 8080)]),
            proxy_types: ProxyTypes::ALL,
            max_proxies_per_session: 8,
            sub_domain_host: String::new(),
        },
        keys: vec![TicketKey {
            kid: "k1".into(),
            public_key: [7; 32],
        }],
        invites: vec![invite(1, false), invite(2, true)],
        tenants: vec![tenant("tok-a", true), tenant("tok-b", false)],
    };
    // Mode 0: the sealed table as the encoder wrote it.
    let mut input = vec![0];
    input.extend_from_slice(&spec.encode());
    vec![("two-invites-two-tenants", input)]
}

/// The tls13 target's input: a control byte (suite, piece size), then
/// chunks of up to 257 bytes, each sealed as plaintext unless it starts
/// with 0xff (raw bytes on the wire) or 0xfe (repeated to 20,000 bytes).
fn tls13() -> Seeds {
    let text = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".repeat(8);
    let mut forged = vec![2];
    forged.extend_from_slice(&text[..256]);
    forged.extend_from_slice(&[0xff, 23, 3, 3, 0, 40]);
    forged.extend_from_slice(&[0x55; 60]);
    vec![
        ("plain", [&[0u8][..], &text].concat()),
        ("large", [&[5u8, 0xfe][..], &text[..100]].concat()),
        ("forged", forged),
    ]
}

/// The http_head target's input: a piece-size byte, then a request head
/// and what follows it.
fn http_head() -> Seeds {
    vec![
        (
            "get",
            b"\x07GET /api/v1?x=1 HTTP/1.1\r\nHost: App.Example.com:8080\r\nAuthorization: Basic dTpw\r\n\r\nGET / HTTP/1.1\r\n".to_vec(),
        ),
        (
            "chunked",
            b"\x05POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n0\r\nT: 1\r\n\r\nGET".to_vec(),
        ),
        (
            "length",
            b"\x03PUT / HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabcGET".to_vec(),
        ),
        (
            "connect",
            b"\x40CONNECT db.example.com:5432 HTTP/1.1\r\nHost: db.example.com:5432\r\nProxy-Authorization: Basic dTpw\r\n\r\n".to_vec(),
        ),
        (
            // A multi-byte character across the end of "Basic ": once
            // panicked basic_credentials.
            "basic-multibyte",
            "\u{40}GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic\u{75b}Tpw\r\n\r\n"
                .as_bytes()
                .to_vec(),
        ),
        (
            "websocket",
            b"\x11GET http://h.example.com/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec(),
        ),
    ]
}

/// The certstore target's input: a store of two entries, and one of none.
fn certstore() -> Seeds {
    let store = proto::certstore::encode(&[
        proto::certstore::Entry {
            names: vec!["app.hoge.com", "*.fuga.com"],
            chain: vec![b"leaf", b"issuer"],
            key: b"key",
        },
        proto::certstore::Entry {
            names: vec!["wiki.fuga.com"],
            chain: vec![b"leaf2"],
            key: b"key2",
        },
    ]);
    vec![
        ("two", store),
        ("empty", proto::certstore::encode(&[])),
    ]
}

/// The sni target's input: a prefix-step byte, then a ClientHello record
/// (with server_name) and the same hello split over two records.
fn sni() -> Seeds {
    let name = b"app.example.com";
    let mut list = vec![0u8];
    list.extend_from_slice(&(name.len() as u16).to_be_bytes());
    list.extend_from_slice(name);
    let mut ext = (list.len() as u16).to_be_bytes().to_vec();
    ext.extend_from_slice(&list);
    let mut exts = vec![0, 43, 0, 3, 2, 3, 4, 0, 0];
    exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&ext);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let record = |part: &[u8]| {
        let mut r = vec![22, 3, 1];
        r.extend_from_slice(&(part.len() as u16).to_be_bytes());
        r.extend_from_slice(part);
        r
    };
    let one = [&[9u8][..], &record(&hs)].concat();
    let two = [&[13u8][..], &record(&hs[..20]), &record(&hs[20..])].concat();
    vec![("one-record", one), ("two-records", two)]
}

/// The stun target's input: a control byte (second address, source
/// family, receiving socket), then a datagram: a Binding request, one with
/// CHANGE-REQUEST and FINGERPRINT, and one with an unknown attribute.
fn stun() -> Seeds {
    use proto::stun::{attr, kind, Builder};
    let txid = [7u8; 12];
    let mut plain = vec![0u8];
    Builder::new(&mut plain, kind::BINDING_REQUEST, txid);
    let mut change = vec![1u8];
    Builder::new(&mut change, kind::BINDING_REQUEST, txid)
        .attr(attr::CHANGE_REQUEST, &[0, 0, 0, 6])
        .fingerprint();
    let mut unknown = vec![2u8];
    Builder::new(&mut unknown, kind::BINDING_REQUEST, txid)
        .attr(0x0024, &[0, 0, 0, 1])
        .integrity(b"key")
        .fingerprint();
    vec![("binding", plain), ("change-request", change), ("unknown", unknown)]
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let targets: [(&str, SeedFn); 15] = [
        ("certstore", certstore),
        ("cfb", cfb),
        ("events", events),
        ("event_batch", event_batch),
        ("frame_v1", frame_v1),
        ("nathole", nathole),
        ("http_head", http_head),
        ("policy_table", policy_table),
        ("snappy", snappy),
        ("sni", sni),
        ("stun", stun),
        ("ticket", ticket),
        ("tls13", tls13),
        ("wire_v2", wire_v2),
        ("yamux", yamux),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds() {
            write(&dir.join(name), &bytes)?;
        }
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::write(path, bytes)?;
    println!("{} ({} bytes)", path.display(), bytes.len());
    Ok(())
}
