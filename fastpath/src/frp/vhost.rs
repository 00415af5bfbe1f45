//! Virtual hosts: connections on `vhostHTTPSPort`, routed to an `https`
//! proxy by the server name of their TLS ClientHello, as frps routes them.
//! TLS is not terminated: the ClientHello and everything after it go to
//! frpc unchanged, and the certificate stays with the client's service.
//!
//! Each worker accepts on the port (SO_REUSEPORT). A connection is held by
//! the pre-auth gate (`fastpath.preAuth*`, like the bind port's) until its
//! ClientHello is read, within [`HELLO_DEADLINE`]; then the shared route
//! table names the proxy and the worker that owns its session. A connection
//! that landed elsewhere moves to that worker as a file descriptor with the
//! bytes read so far ([`MovedVhost`]); bytes are never relayed across
//! threads. No ClientHello, no server name, or a name no proxy serves: the
//! connection is closed, logged and counted (`vhost_unrouted`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};
use proto::policy::Refusal;
use proto::vhost::sni::{self, Sni};
use proto::vhost::{canonical_host, routes::Routes};

use crate::frp::accept::{admit, within};
use crate::frp::control::Sessions;
use crate::frp::proxy;
use crate::report::stats::WorkerStats;
use crate::runtime::ctx::WorkerCtx;
use crate::runtime::shared::VhostTarget;
use crate::runtime::worker::accept_each;
use crate::transport::conn::{read_append, Conn};
use crate::transport::handoff::{self, MovedVhost, WorkerMsg};

/// How long a connection on a vhost port has to send what routes it
/// (frps gives its vhost muxers 30 s).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(30);

/// Accept on this worker's `vhostHTTPSPort` listener until cancelled.
pub async fn https_accept_loop(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    listener: std::net::TcpListener,
    cancel: monoio::io::CancelHandle,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = ctx.id, error = %e, "cannot register vhostHTTPSPort listener");
            return;
        }
    };
    accept_each(&ctx, &listener, cancel, "vhostHTTPSPort", |stream, peer| {
        monoio::spawn(https_conn(ctx.clone(), sessions.clone(), stream, peer));
    })
    .await
}

/// Read a connection's ClientHello, route it, and serve it here or move it
/// to the worker that owns the proxy.
async fn https_conn(
    ctx: Rc<WorkerCtx>,
    sessions: Rc<Sessions>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some((ticket, _)) = admit(&ctx, peer) else {
        return;
    };
    let mut stream = stream;
    let hello = within(
        &ctx,
        HELLO_DEADLINE,
        "no ClientHello",
        read_hello(&mut stream),
    )
    .await;
    let (name, pending) = match hello {
        Ok(x) => x,
        Err(reason) => return unrouted(&ctx, peer, &reason),
    };
    let Some(host) = canonical_host(&name) else {
        return unrouted(
            &ctx,
            peer,
            &format!("server name {name:?} is not a host name"),
        );
    };
    let target = ctx.shared.https_routes.read().get(&host, "", "").cloned();
    let Some(target) = target else {
        return unrouted(&ctx, peer, &format!("no https proxy serves {host:?}"));
    };
    // Routed: the source gets its rate token back, as an identified frp
    // connection does, and the ticket goes with this scope.
    ctx.preauth.identified(peer.ip());
    drop(ticket);
    if target.worker == ctx.id {
        return serve(&ctx, &sessions, stream, pending, peer, &target);
    }
    let Some(inbox) = ctx.shared.inboxes.get(target.worker) else {
        return unrouted(&ctx, peer, "the route names no worker");
    };
    let moved = MovedVhost {
        socket: handoff::detach(stream),
        pending,
        peer,
        target,
    };
    if inbox.send(WorkerMsg::VhostConn(Box::new(moved))).is_ok() {
        WorkerStats::bump(&ctx.stats().handoffs_out, 1);
    }
}

/// Read until the ClientHello is complete; its server name and every byte
/// read (the hello, and anything the client sent after it).
async fn read_hello(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        match sni::server_name(&buf) {
            Sni::Name(name) => return Ok((name, buf)),
            Sni::NoName => return Err("ClientHello without a server name".into()),
            Sni::NotHello(why) => return Err(format!("not a TLS ClientHello: {why}")),
            Sni::NeedMore => {}
        }
        if buf.len() >= sni::MAX_HELLO {
            return Err(format!("ClientHello over {} bytes", sni::MAX_HELLO));
        }
        let (r, b) = read_append(stream, buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("closed before its ClientHello was complete".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

/// A connection this worker cannot route: closed (dropped), logged, counted.
fn unrouted(ctx: &WorkerCtx, peer: SocketAddr, reason: &str) {
    WorkerStats::bump(&ctx.stats().vhost_unrouted, 1);
    tracing::info!(worker = ctx.id, %peer, %reason, "vhost connection closed");
}

/// A vhost connection handed over by another worker.
pub fn adopt(ctx: &Rc<WorkerCtx>, sessions: &Rc<Sessions>, moved: MovedVhost) {
    WorkerStats::bump(&ctx.stats().handoffs_in, 1);
    WorkerStats::bump(&ctx.stats().vhost_handoffs, 1);
    let MovedVhost {
        socket,
        pending,
        peer,
        target,
    } = moved;
    tracing::debug!(worker = ctx.id, %peer, proxy = %target.proxy, "vhost connection moved here");
    let stream = match TcpStream::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(worker = ctx.id, error = %e, "cannot adopt vhost connection");
            return;
        }
    };
    serve(ctx, sessions, stream, pending, peer, &target);
}

/// Serve a routed connection on the worker that owns its proxy: the proxy
/// relays it through a work connection, the ClientHello first.
fn serve(
    ctx: &Rc<WorkerCtx>,
    sessions: &Sessions,
    stream: TcpStream,
    pending: Vec<u8>,
    peer: SocketAddr,
    target: &VhostTarget,
) {
    let found = sessions
        .get(&target.run_id)
        .filter(|c| c.who.id == target.control_id)
        .and_then(|c| c.proxy(&target.proxy).map(|p| (c, p)));
    let Some((control, proxy)) = found else {
        // The proxy closed between the lookup and now.
        return unrouted(ctx, peer, "its proxy has just closed");
    };
    monoio::spawn(proxy::serve_user(
        proxy,
        control,
        Conn::tcp(stream),
        peer,
        pending,
    ));
}

/// The domains an `https` proxy is reached by, in routing form and frps's
/// order: each of `customDomains`, then `subdomain` under `subDomainHost`,
/// with frps's checks.
pub fn domains(
    custom_domains: &[String],
    subdomain: &str,
    sub_domain_host: &str,
) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::with_capacity(custom_domains.len() + 1);
    for d in custom_domains {
        let d = d.trim();
        if d.is_empty() {
            continue;
        }
        let host = canonical_host(d)
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b))
            })
            .ok_or_else(|| {
                Refusal::invalid_proxy(format!("custom domain [{d}] is not a host name"))
            })?;
        if !sub_domain_host.is_empty()
            && (host.ends_with(&format!(".{sub_domain_host}")) || host == sub_domain_host)
        {
            return Err(Refusal::invalid_proxy(format!(
                "custom domain [{host}] should not belong to subdomain host [{sub_domain_host}]"
            )));
        }
        out.push(host.into_owned());
    }
    if !subdomain.is_empty() {
        if sub_domain_host.is_empty() {
            return Err(Refusal::invalid_proxy(
                "subdomain is not supported because this feature is not enabled in server",
            ));
        }
        if subdomain.contains(['.', '*']) {
            return Err(Refusal::invalid_proxy(
                "'.' and '*' are not supported in subdomain",
            ));
        }
        out.push(format!(
            "{}.{sub_domain_host}",
            subdomain.to_ascii_lowercase()
        ));
    }
    if out.is_empty() {
        return Err(Refusal::invalid_proxy(
            "custom domains and subdomain should set at least one of them",
        ));
    }
    // frps's order (customDomains as given, then the subdomain), each once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert(d.clone()));
    Ok(out)
}

/// Add a proxy's routes: all of them, or none and the conflicting domain.
pub fn add_routes(
    routes: &mut Routes<VhostTarget>,
    domains: &[String],
    target: &VhostTarget,
) -> Result<(), Refusal> {
    for (i, d) in domains.iter().enumerate() {
        if routes.add(d, "", "", target.clone()).is_err() {
            for done in &domains[..i] {
                routes.remove(done, "", "");
            }
            return Err(Refusal::route_conflict(d));
        }
    }
    Ok(())
}

/// Remove a proxy's routes (only those that still lead to it).
pub fn remove_routes(routes: &mut Routes<VhostTarget>, domains: &[String], target: &VhostTarget) {
    for d in domains {
        if let Some(t) = routes.remove(d, "", "") {
            if &t != target {
                // Not ours (cannot happen while names are unique): put back.
                let _ = routes.add(d, "", "", t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn domains_follow_frps_rules() {
        let cd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            domains(&cd(&["A.example.com.", "b.example.com:443"]), "", "").unwrap(),
            vec!["a.example.com", "b.example.com"]
        );
        assert_eq!(
            domains(&cd(&[]), "App", "t.example.net").unwrap(),
            vec!["app.t.example.net"]
        );
        let err = |r: Result<Vec<String>, Refusal>| r.unwrap_err().detail;
        assert!(err(domains(&cd(&[]), "", "")).contains("at least one"));
        assert!(err(domains(&cd(&[]), "app", "")).contains("not enabled in server"));
        assert!(err(domains(&cd(&[]), "a.b", "t.example.net")).contains("'.' and '*'"));
        assert!(err(domains(&cd(&["x.t.example.net"]), "", "t.example.net"))
            .contains("should not belong to subdomain host [t.example.net]"));
        assert!(err(domains(&cd(&["a:b:c"]), "", "")).contains("[a:b:c] is not a host name"));
    }

    #[test]
    fn routes_go_in_whole_or_not_at_all() {
        let t = |p: &str| VhostTarget {
            worker: 0,
            run_id: Arc::from("r"),
            control_id: 1,
            proxy: Arc::from(p),
        };
        let mut r = Routes::new();
        add_routes(&mut r, &["a.com".into(), "b.com".into()], &t("one")).unwrap();
        let e = add_routes(&mut r, &["c.com".into(), "b.com".into()], &t("two")).unwrap_err();
        assert_eq!(e.detail, "router config conflict: b.com");
        assert_eq!(r.len(), 2, "c.com of the refused proxy is not left behind");
        remove_routes(&mut r, &["a.com".into(), "b.com".into()], &t("one"));
        assert!(r.is_empty());
    }
}
