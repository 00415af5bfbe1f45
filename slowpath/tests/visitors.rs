//! Secret proxies under the control plane (`slowpath up` and its
//! fastpath, SQLite and PostgreSQL): an invite's scope decides whether its
//! sessions may register `stcp`, and every visitor, joined or refused, is
//! in the audit log under the proxy's invite with its reason.

mod harness;

use std::io::{Read, Write};

use bench::backend::Backend as Echo;
use bench::client::{Client, ClientError, ProxySpec};
use harness::{each_backend, first_login, ticket_opts, wait_audit, Backend, Slowpath};
use serde_json::json;

const SK: &str = "visitor-secret";

fn stcp(c: &Client, name: &str, local: std::net::SocketAddr) -> Result<String, ClientError> {
    c.register_proxy(ProxySpec::plain(name, 0, local), |np| {
        np.proxy_type = "stcp".into();
        np.sk = SK.into();
        np.allow_users = vec!["*".into()];
    })
}

fn session(sp: &Slowpath, proxy_types: &[&str]) -> (Client, String) {
    let inv = sp.admin_invite(json!({
        "max_uses": 1,
        "scope": { "proxy_types": proxy_types, "max_conns": 1 },
    }));
    let (st, resolved) = sp.resolve(inv["code"].as_str().unwrap());
    assert_eq!(st, 200, "{resolved}");
    let c = first_login(&ticket_opts(sp, &resolved));
    (c, inv["id"].as_str().unwrap().to_owned())
}

fn visitors(backend: Backend) {
    let sp = Slowpath::up(&backend, &[]);
    sp.wait_frp();
    let echo = Echo::echo().unwrap();
    // A node allows tcp and udp unless its operator says more.
    let (st, v) = sp.admin_call(
        "PATCH",
        &format!("/api/v1/admin/nodes/{}", sp.local_node),
        Some(json!({ "proxy_types": ["tcp", "udp", "stcp", "sudp"] })),
    );
    assert_eq!(st, 200, "{v}");

    // An invite that does not list stcp does not get one.
    let (tcp_only, _) = session(&sp, &["tcp"]);
    let e = stcp(&tcp_only, "nope", echo.addr())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("proxy type stcp is not allowed by invite"),
        "{e}"
    );

    let (owner, owner_invite) = session(&sp, &["stcp"]);
    stcp(&owner, "db", echo.addr()).expect("stcp under an invite that lists it");
    let (visitor, _) = session(&sp, &["tcp"]);

    match visitor.visit("db", "not-the-key", None, false, false) {
        Err(ClientError::Refused(r)) => {
            assert_eq!(r, "visitor connection of [db] auth failed")
        }
        other => panic!("a wrong key was not refused: {:?}", other.err()),
    }
    let (mut r, mut w) = visitor.visit("db", SK, None, true, false).expect("visit");
    w.write_all(b"through the visitor").unwrap();
    let mut got = [0u8; 19];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through the visitor");

    let refused = wait_audit(&sp, "visitor.refused", |r| {
        r["proxy"] == "db" && r["invite_id"] == owner_invite.as_str()
    });
    assert_eq!(
        refused["reason"], "visitor connection of [db] auth failed",
        "{refused}"
    );
    assert_eq!(refused["run_id"], visitor.run_id(), "{refused}");
    let joined = wait_audit(&sp, "visitor.connected", |r| {
        r["proxy"] == "db" && r["invite_id"] == owner_invite.as_str()
    });
    assert_eq!(joined["run_id"], visitor.run_id(), "{joined}");
    for c in [tcp_only, owner, visitor] {
        c.kill();
    }
}

#[test]
fn secret_proxies_follow_invites_and_visitors_are_audited() {
    each_backend("visitors", visitors);
}
