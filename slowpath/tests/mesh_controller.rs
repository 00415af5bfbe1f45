//! Seed 003's controller, the parts built so far, on SQLite and
//! PostgreSQL: the REST API under `/api/v1/mesh/` through the real
//! `slowpath serve`, and node registration by machine key with keys made
//! by the node's own crate (`totoro-mesh`), signatures checked, addresses
//! allocated from the subnet on authorization.

mod harness;

use harness::{block_on, each_backend, wait_audit, Backend, Slowpath, TestDb};
use mesh::keys::{MachineKey, NodeKey};
use proto::mesh::control::{auth_signed_bytes, node_key_signed_bytes, AuthRequest, NodeKeyUpdate};
use serde_json::{json, Value};
use slowpath::domain::mesh::{networks, nodes, settings};
use slowpath::store::db;

fn api(backend: Backend) {
    let sp = Slowpath::start(&backend, &[]);
    let call =
        |m: &str, p: &str, b: Option<Value>| sp.admin_call(m, &format!("/api/v1/mesh{p}"), b);

    // The seed's default network is there.
    let (st, list) = call("GET", "/networks", None);
    assert_eq!(st, 200, "{list}");
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["subnet"], "10.0.1.0/24");

    let (st, net) = call(
        "POST",
        "/networks",
        Some(json!({ "name": "lab", "subnet": "10.100.0.0/16", "description": "test" })),
    );
    assert_eq!(st, 201, "{net}");
    assert_eq!(net["id"], 2);
    // Refusals name the field.
    for (body, field) in [
        (json!({ "name": "x", "subnet": "10.100.0.1/16" }), "subnet"),
        (json!({ "name": "x", "subnet": "10.0.0.0/31" }), "subnet"),
        (json!({ "name": "", "subnet": "10.9.0.0/24" }), "name"),
        (
            json!({ "name": "x", "subnet": "10.9.0.0/24", "colour": 1 }),
            "",
        ),
    ] {
        let (st, v) = call("POST", "/networks", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{v}");
        }
    }
    let (st, v) = call(
        "POST",
        "/networks",
        Some(json!({ "name": "lab", "subnet": "10.9.0.0/24" })),
    );
    assert_eq!(st, 409, "{v}");
    let (st, v) = call(
        "PUT",
        "/networks/2",
        Some(json!({ "description": "changed" })),
    );
    assert_eq!((st, v["description"].clone()), (200, json!("changed")));
    let (st, v) = call("PUT", "/networks/x", Some(json!({})));
    assert_eq!((st, v["field"].clone()), (400, json!("id")), "{v}");
    let (st, _) = call("PUT", "/networks/99", Some(json!({})));
    assert_eq!(st, 404);

    // Settings: the seed's defaults; unknown keys and bad values refused.
    let (st, s) = call("GET", "/settings", None);
    assert_eq!(st, 200);
    assert_eq!(s["auth_token_expire_hours"], "24");
    assert_eq!(s["relay_token_expire_hours"], "1.5");
    assert_eq!(s["require_authorization"], "true");
    let (st, s) = call(
        "PUT",
        "/settings",
        Some(json!({ "keepalive_interval_seconds": 30, "require_authorization": false })),
    );
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["keepalive_interval_seconds"], "30");
    for (body, field) in [
        (json!({ "jwt_secret": "x" }), "jwt_secret"),
        (
            json!({ "relay_token_expire_hours": 100 }),
            "relay_token_expire_hours",
        ),
        (
            json!({ "require_authorization": "maybe" }),
            "require_authorization",
        ),
    ] {
        let (st, v) = call("PUT", "/settings", Some(body));
        assert_eq!((st, v["field"].clone()), (400, json!(field)), "{v}");
    }

    // Nodes and routes: none yet; unknown ids are 404s.
    let (st, v) = call("GET", "/nodes", None);
    assert_eq!((st, v), (200, json!([])));
    assert_eq!(call("POST", "/nodes/7/authorize", None).0, 404);
    assert_eq!(call("GET", "/nodes/7/routes", None).0, 404);
    let (st, v) = call("GET", "/stats/overview", None);
    assert_eq!(st, 200);
    assert_eq!(
        (v["networks"].clone(), v["nodes"].clone()),
        (json!(2), json!(0))
    );
    let (st, v) = call("GET", "/latency/matrix", None);
    assert_eq!((st, v), (200, json!({ "records": [] })));
    let (st, v) = call("GET", "/routes", None);
    assert_eq!((st, v), (200, json!([])));
    // Without the admin key: 401.
    let (st, _) = sp.call("GET", "/api/v1/mesh/networks", None, None);
    assert_eq!(st, 401);

    let (st, _) = call("DELETE", "/networks/2", None);
    assert_eq!(st, 204);
    wait_audit(&sp, "mesh.network.deleted", |r| {
        r["detail"]["name"] == "lab"
    });
}

#[test]
fn the_mesh_api_manages_networks_settings_and_refuses_naming_the_field() {
    each_backend("mesh_api", api);
}

/// A signed AUTH_REQUEST of `machine` with `node_key` for `network`.
fn auth(machine: &MachineKey, node_key: &NodeKey, network: &str, ts: u64) -> AuthRequest {
    let (mk, nk) = (machine.public_b64(), node_key.public_b64());
    let sig = machine.sign(&auth_signed_bytes(&mk, &nk, ts, network));
    AuthRequest {
        machine_key: mk,
        node_key: nk,
        network: network.into(),
        hostname: "host-a".into(),
        version: "0.1.0".into(),
        timestamp: ts,
        signature: mesh::keys::encode(&sig),
        ..AuthRequest::default()
    }
}

/// A node with fresh keys registering in network "lab".
async fn newcomer(db: &slowpath::store::db::Db, ts: u64, now: i64) -> nodes::Registered {
    newcomer_in(db, "lab", ts, now).await
}

/// A node with fresh keys registering in `network`.
async fn newcomer_in(
    db: &slowpath::store::db::Db,
    network: &str,
    ts: u64,
    now: i64,
) -> nodes::Registered {
    let (m, k) = (
        MachineKey::generate().unwrap(),
        NodeKey::generate().unwrap(),
    );
    nodes::register(db, &auth(&m, &k, network, ts), now)
        .await
        .unwrap()
}

fn registration(backend: Backend) {
    let tdb = TestDb::new(&backend);
    block_on(async {
        let db = db::open(&tdb.url).await.unwrap();
        let now = slowpath::clock::now_ms();
        let ts = now as u64;
        let net = networks::create(
            &db,
            networks::NewNetwork {
                name: "lab".into(),
                subnet: "10.100.0.0/30".into(),
                description: String::new(),
            },
        )
        .await
        .unwrap();
        let (ma, ka) = (
            MachineKey::generate().unwrap(),
            NodeKey::generate().unwrap(),
        );
        // First contact: registered, waiting for authorization, no address.
        let a = nodes::register(&db, &auth(&ma, &ka, "lab", ts), now)
            .await
            .unwrap();
        assert!(a.new);
        assert_eq!(a.node.network_id, net.id);
        assert!(!a.node.authorized);
        assert_eq!(a.node.virtual_ip, "");
        assert_eq!(a.node.name, "host-a");
        // Authorized: the first host address of the subnet.
        let a1 = nodes::authorize(&db, a.node.id).await.unwrap();
        assert_eq!(a1.virtual_ip, "10.100.0.1");
        // Again with a new node key: the same node, the new key.
        let ka2 = NodeKey::generate().unwrap();
        let again = nodes::register(&db, &auth(&ma, &ka2, "lab", ts + 1), now)
            .await
            .unwrap();
        assert!(!again.new);
        assert_eq!(again.node.id, a.node.id);
        assert_eq!(again.node.node_key_pub, ka2.public_b64());
        // Bad signatures, keys, clocks and networks: the seed's codes.
        let mut bad = auth(&ma, &ka, "lab", ts);
        bad.node_key = NodeKey::generate().unwrap().public_b64();
        let e = nodes::register(&db, &bad, now).await.unwrap_err();
        assert_eq!(e.code.code(), 1005, "{e}");
        let mut bad = auth(&ma, &ka, "lab", ts);
        bad.machine_key = "short".into();
        assert_eq!(
            nodes::register(&db, &bad, now)
                .await
                .unwrap_err()
                .code
                .code(),
            1004
        );
        let old = auth(&ma, &ka, "lab", ts - 3_600_000);
        assert_eq!(
            nodes::register(&db, &old, now)
                .await
                .unwrap_err()
                .code
                .code(),
            1005
        );
        let e = nodes::register(&db, &auth(&ma, &ka, "nope", ts), now)
            .await
            .unwrap_err();
        assert_eq!(e.code.code(), 2002);
        assert!(e.message.contains("\"nope\" does not exist"), "{e}");
        // A replayed AUTH_REQUEST (a timestamp not newer than the last one
        // taken) is 1005, and changes nothing.
        let replay = nodes::register(&db, &auth(&ma, &ka, "lab", ts + 1), now)
            .await
            .unwrap_err();
        assert_eq!(replay.code.code(), 1005, "{replay}");
        assert!(replay.message.contains("replayed"), "{replay}");
        // The same key written another way is the same node, not a new one
        // (in this network or another).
        let mut spaced = auth(&ma, &ka2, "lab", ts + 2);
        spaced.machine_key = format!(" {}\n", spaced.machine_key);
        let mk = ma.public_b64();
        let signed_text = auth_signed_bytes(&spaced.machine_key, &spaced.node_key, ts + 2, "lab");
        spaced.signature = mesh::keys::encode(&ma.sign(&signed_text));
        let same = nodes::register(&db, &spaced, now).await.unwrap();
        assert!(!same.new && same.node.id == a.node.id, "{same:?}");
        assert_eq!(same.node.machine_key_pub, mk);
        // A small-order machine key (the identity point) is 1004.
        let mut small = auth(&ma, &ka, "lab", ts + 3);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        small.machine_key = mesh::keys::encode(&identity);
        assert_eq!(
            nodes::register(&db, &small, now)
                .await
                .unwrap_err()
                .code
                .code(),
            1004
        );
        // The node key is unchanged by all of that.
        assert_eq!(
            nodes::get(&db, a.node.id).await.unwrap().node_key_pub,
            ka2.public_b64()
        );

        // A rotation signed by the machine key is taken; one signed by
        // another key is 1005 and changes nothing.
        let ka3 = NodeKey::generate().unwrap();
        let at = ts + 10;
        let signed = |m: &MachineKey, k: &NodeKey| NodeKeyUpdate {
            node_key: k.public_b64(),
            timestamp: at,
            signature: mesh::keys::encode(&m.sign(&node_key_signed_bytes(
                a.node.id,
                &k.public_b64(),
                at,
            ))),
        };
        let e = nodes::rotate_key(
            &db,
            a.node.id,
            &signed(&MachineKey::generate().unwrap(), &ka3),
            now,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code.code(), 1005);
        assert_eq!(
            nodes::get(&db, a.node.id).await.unwrap().node_key_pub,
            ka2.public_b64()
        );
        let n = nodes::rotate_key(&db, a.node.id, &signed(&ma, &ka3), now)
            .await
            .unwrap();
        assert_eq!(n.node_key_pub, ka3.public_b64());
        // The same rotation again is a replay: 1005.
        let e = nodes::rotate_key(&db, a.node.id, &signed(&ma, &ka3), now)
            .await
            .unwrap_err();
        assert_eq!(e.code.code(), 1005);

        // With require_authorization off, a new node is authorized at once;
        // the /30 has two addresses, so a third node waits for one.
        let mut off = serde_json::Map::new();
        off.insert("require_authorization".into(), json!(false));
        settings::update(&db, &off).await.unwrap();
        let b = newcomer(&db, ts, now).await;
        assert!(b.node.authorized);
        assert_eq!(b.node.virtual_ip, "10.100.0.2");
        let c = newcomer(&db, ts, now).await;
        assert!(!c.node.authorized, "a third address in a /30");
        assert_eq!(c.node.virtual_ip, "");
        let full = nodes::authorize(&db, c.node.id).await.unwrap_err();
        assert!(full.to_string().contains("has no free address"), "{full}");
        // Deauthorized, then deleted: its address is free for another.
        nodes::deauthorize(&db, b.node.id).await.unwrap();
        assert!(!nodes::get(&db, b.node.id).await.unwrap().authorized);
        nodes::delete(&db, b.node.id).await.unwrap();
        let d = newcomer(&db, ts, now).await;
        assert_eq!(d.node.virtual_ip, "10.100.0.2");
        db.close().await;
    });
}

#[test]
fn nodes_register_by_machine_key_and_get_addresses_when_authorized() {
    each_backend("mesh_registration", registration);
}

fn tokens(backend: Backend) {
    use proto::mesh::token::{check_relay_token, verify, Claims, Trust};
    let tdb = TestDb::new(&backend);
    block_on(async {
        let db = db::open(&tdb.url).await.unwrap();
        let signer = slowpath::domain::tickets::ensure_signer(&db, tdb.dir())
            .await
            .unwrap();
        let now = slowpath::clock::now_ms();
        // Registration is signed in ms; tokens count seconds.
        let ts = (now / 1000) as u64;
        let node = newcomer_in(&db, "default", now as u64, now).await.node;
        let keys = vec![(signer.kid().to_owned(), signer.public_key())];
        let trust = Trust {
            ed25519: &keys,
            hs256: None,
        };

        // The seed's lifetimes: auth 24 h, relay 1.5 h (from the settings).
        let auth = slowpath::domain::mesh::tokens::auth(&db, &signer.mesh_signer(), &node, now)
            .await
            .unwrap();
        let Claims::Auth(a) = verify(&auth.token, &trust).unwrap() else {
            panic!("not an auth token")
        };
        assert_eq!(a.exp - a.iat, 24 * 3600);
        assert_eq!(a.node_id, node.id);
        assert!(a.machine_key_hash.starts_with("sha256:"));
        let relay = slowpath::domain::mesh::tokens::relay(
            &db,
            &signer.mesh_signer(),
            &node,
            vec![1, 2],
            now,
        )
        .await
        .unwrap();
        let bl = slowpath::domain::mesh::tokens::blacklist(&db)
            .await
            .unwrap();
        let listed = |j: &str| bl.iter().any(|(x, _)| x == j);
        let r = check_relay_token(&relay.token, &trust, 2, ts, listed).unwrap();
        assert_eq!(r.exp - r.iat, 5400);
        assert_eq!(
            check_relay_token(&relay.token, &trust, 3, ts, listed)
                .unwrap_err()
                .code()
                .code(),
            1001
        );
        // Revoked: blacklisted until the token's expiry, then 1003.
        slowpath::domain::mesh::tokens::revoke(&db, &r.jti, node.id, "deauthorized", r.exp)
            .await
            .unwrap();
        let bl = slowpath::domain::mesh::tokens::blacklist(&db)
            .await
            .unwrap();
        assert_eq!(bl, vec![(r.jti.clone(), r.exp)]);
        let listed = |j: &str| bl.iter().any(|(x, _)| x == j);
        assert_eq!(
            check_relay_token(&relay.token, &trust, 2, ts, listed)
                .unwrap_err()
                .code()
                .code(),
            1003
        );
        // An expired entry leaves the list.
        slowpath::domain::mesh::tokens::revoke(&db, "old", node.id, "x", ts - 10)
            .await
            .unwrap();
        let bl = slowpath::domain::mesh::tokens::blacklist(&db)
            .await
            .unwrap();
        assert_eq!(bl.len(), 1);
        // A shorter relay lifetime in the settings applies to new tokens.
        let mut short = serde_json::Map::new();
        short.insert("relay_token_expire_hours".into(), json!(0.25));
        settings::update(&db, &short).await.unwrap();
        let relay =
            slowpath::domain::mesh::tokens::relay(&db, &signer.mesh_signer(), &node, vec![1], now)
                .await
                .unwrap();
        assert_eq!(relay.claims.exp() - ts, 900);
        db.close().await;
    });
}

#[test]
fn tokens_carry_the_seeds_claims_and_lifetimes_and_revocation_sticks() {
    each_backend("mesh_tokens", tokens);
}
