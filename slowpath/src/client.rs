//! Operator verbs: small HTTP calls to a running slowpath with the admin key.

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::cli::{
    AuditArgs, CertCommand, ClientArgs, DomainCommand, EdgeNodeCommand, InviteCommand, MeshCommand,
    MeshNetworkCommand, MeshNodeCommand, MeshRouteCommand, MeshServerCommand, MeshTokenCommand,
    NodeCommand, NodeVhostArgs, OriginCommand, RouteCommand,
};

fn admin_key(c: &ClientArgs) -> Result<String> {
    if let Some(k) = &c.admin_key {
        return Ok(k.clone());
    }
    slowpath::store::admin_key::read(&c.data_dir)?.with_context(|| {
        format!(
            "no admin key: pass --admin-key, set ADMIN_API_KEY, or point --data-dir at a directory with admin.key (tried {})",
            slowpath::store::admin_key::path(&c.data_dir).display()
        )
    })
}

/// Sends one request; a non-2xx answer becomes an error carrying the API's message.
fn call(method: &str, url: &str, key: Option<&str>, body: Option<Value>) -> Result<Value> {
    let mut req = ureq::request(method, url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match resp {
        Ok(r) => {
            let text = r.into_string()?;
            Ok(if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)?
            })
        }
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            bail!("{method} {url}: HTTP {code}: {msg}")
        }
        Err(e) => bail!("{method} {url}: {e} (is `slowpath up` running? see --api)"),
    }
}

fn admin(c: &ClientArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let key = admin_key(c)?;
    call(
        method,
        &format!("{}{path}", c.api.trim_end_matches('/')),
        Some(&key),
        body,
    )
}

fn print(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn list(text: &Option<String>) -> Option<Vec<String>> {
    text.as_ref().map(|t| {
        t.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Sets `key` in `body` only when a value was given: the API keeps (or
/// defaults) what a request leaves out.
fn set_given<T: serde::Serialize>(body: &mut Value, key: &str, value: Option<T>) {
    if let Some(v) = value {
        body[key] = json!(v);
    }
}

/// `slowpath node …`.
pub fn node(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::List(c) => print(&admin(&c, "GET", "/api/v1/admin/nodes", None)?),
        NodeCommand::Add {
            client,
            name,
            server_addr,
            server_port,
            region,
            public,
            port_pool,
            proxy_types,
            vhost,
        } => {
            let mut body = json!({
                "name": name, "server_addr": server_addr, "server_port": server_port,
                "region": region, "public": public,
            });
            set_given(&mut body, "port_pool", port_pool);
            set_given(&mut body, "proxy_types", list(&proxy_types));
            set_vhost(&mut body, vhost);
            let v = admin(&client, "POST", "/api/v1/admin/nodes", Some(body))?;
            print(&v)?;
            eprintln!("The node_key above is shown only now; give it to the node's agent.");
            Ok(())
        }
        NodeCommand::Set {
            client,
            id,
            public,
            port_pool,
            proxy_types,
            name,
            server_addr,
            vhost,
        } => {
            let mut body = json!({});
            set_given(&mut body, "public", public);
            set_given(&mut body, "port_pool", port_pool);
            set_given(&mut body, "proxy_types", list(&proxy_types));
            set_given(&mut body, "name", name);
            set_given(&mut body, "server_addr", server_addr);
            set_vhost(&mut body, vhost);
            print(&admin(
                &client,
                "PATCH",
                &format!("/api/v1/admin/nodes/{id}"),
                Some(body),
            )?)
        }
    }
}

/// A node body's vhost keys, those given.
fn set_vhost(body: &mut Value, v: NodeVhostArgs) {
    set_given(body, "sub_domain_host", v.sub_domain_host);
    set_given(body, "vhost_http_port", v.vhost_http_port);
    set_given(body, "vhost_https_port", v.vhost_https_port);
}

/// `slowpath invite …`.
pub fn invite(cmd: InviteCommand) -> Result<()> {
    match cmd {
        InviteCommand::Create {
            client,
            node,
            ttl_s,
            max_uses,
            ticket_ttl_s,
            port_pool,
            proxy_types,
            max_conns,
            max_proxies,
            domain_suffix,
            auto_subdomain,
            note,
        } => {
            let node = match node {
                Some(n) => n,
                None => admin(&client, "GET", "/api/v1/admin/stats", None)?
                    .get("local_node_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .context("the slowpath reported no local node; pass --node")?,
            };
            // Only what was given: the API fills in its documented defaults.
            let mut scope = json!({});
            set_given(&mut scope, "max_conns", max_conns);
            set_given(&mut scope, "max_proxies", max_proxies);
            set_given(&mut scope, "port_pool", port_pool);
            set_given(&mut scope, "proxy_types", list(&proxy_types));
            set_given(&mut scope, "domain_suffix", domain_suffix);
            if auto_subdomain {
                set_given(&mut scope, "auto_subdomain", Some(true));
            }
            let mut body = json!({ "scope": scope, "note": note });
            set_given(&mut body, "ttl_s", ttl_s);
            set_given(&mut body, "max_uses", max_uses);
            set_given(&mut body, "ticket_ttl_s", ticket_ttl_s);
            let v = admin(
                &client,
                "POST",
                &format!("/api/v1/admin/nodes/{node}/invites"),
                Some(body),
            )?;
            print(&v)?;
            eprintln!("The code above is shown only now.");
            Ok(())
        }
        InviteCommand::List { client, node } => {
            let path = match node {
                Some(n) => format!("/api/v1/admin/invites?node_id={n}"),
                None => "/api/v1/admin/invites".to_owned(),
            };
            print(&admin(&client, "GET", &path, None)?)
        }
        InviteCommand::Revoke { client, id } => print(&admin(
            &client,
            "POST",
            &format!("/api/v1/admin/invites/{id}/revoke"),
            None,
        )?),
        InviteCommand::Resolve { api, code, json } => {
            let url = format!("{}/api/v1/invites/resolve", api.trim_end_matches('/'));
            let v = call("POST", &url, None, Some(json!({ "code": code })))?;
            if json {
                print(&v)
            } else {
                print!(
                    "{}",
                    v.get("frpc_toml")
                        .and_then(|t| t.as_str())
                        .unwrap_or_default()
                );
                Ok(())
            }
        }
    }
}

/// `slowpath audit`.
pub fn audit(a: AuditArgs) -> Result<()> {
    let mut path = format!("/api/v1/admin/audit?limit={}", a.limit);
    if let Some(k) = &a.kind {
        path.push_str(&format!("&kind={k}"));
    }
    if let Some(i) = &a.invite {
        path.push_str(&format!("&invite_id={i}"));
    }
    let rows = admin(&a.client, "GET", &path, None)?;
    for row in rows.as_array().into_iter().flatten() {
        let s = |k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        println!(
            "{}  {:<17} {:<24} {:<38} {:<16} {}",
            s("ts"),
            s("kind"),
            s("node_id"),
            s("invite_id"),
            s("proxy"),
            s("reason")
        );
    }
    Ok(())
}

/// `slowpath stats`.
pub fn stats(c: ClientArgs) -> Result<()> {
    print(&admin(&c, "GET", "/api/v1/admin/stats", None)?)
}

/// `slowpath mesh …`.
/// `slowpath route …`.
pub fn route(cmd: RouteCommand) -> Result<()> {
    let v = match cmd {
        RouteCommand::List(c) => admin(&c, "GET", "/api/v1/routes", None)?,
        RouteCommand::Add {
            client,
            hostname,
            origin,
            port,
            redirect_https,
        } => {
            let mut body = json!({ "hostname": hostname, "origin_id": origin,
                                   "redirect_https": redirect_https });
            set_given(&mut body, "target_port", port);
            admin(&client, "POST", "/api/v1/routes", Some(body))?
        }
        RouteCommand::Rm { client, id } => {
            admin(&client, "DELETE", &format!("/api/v1/routes/{id}"), None)?
        }
    };
    print(&v)
}

/// `slowpath origin …`.
pub fn origin(cmd: OriginCommand) -> Result<()> {
    let v = match cmd {
        OriginCommand::List(c) => admin(&c, "GET", "/api/v1/origins", None)?,
        OriginCommand::Add {
            client,
            name,
            ip,
            wireguard_public_key,
            invite,
            proxy,
        } => {
            let mut body = json!({ "name": name });
            set_given(&mut body, "wireguard_ip", ip);
            set_given(&mut body, "wireguard_public_key", wireguard_public_key);
            set_given(&mut body, "invite_id", invite);
            set_given(&mut body, "proxy_name", proxy);
            admin(&client, "POST", "/api/v1/origins", Some(body))?
        }
        OriginCommand::Rm { client, id } => {
            admin(&client, "DELETE", &format!("/api/v1/origins/{id}"), None)?
        }
    };
    print(&v)
}

/// `slowpath cert …`.
pub fn cert(cmd: CertCommand) -> Result<()> {
    let v = match cmd {
        CertCommand::List(c) => admin(&c, "GET", "/api/v1/certificates", None)?,
        CertCommand::Renew { client, hostname } => admin(
            &client,
            "POST",
            &format!("/api/v1/certificates/{hostname}/renew"),
            None,
        )?,
    };
    print(&v)
}

/// `slowpath domain …`.
pub fn domain(cmd: DomainCommand) -> Result<()> {
    let v = match cmd {
        DomainCommand::List(c) => admin(&c, "GET", "/api/v1/domains", None)?,
        DomainCommand::Add { client, domain } => admin(
            &client,
            "POST",
            "/api/v1/domains",
            Some(json!({ "domain": domain })),
        )?,
        DomainCommand::Verify {
            client,
            domain,
            method,
        } => {
            let q = method.map(|m| format!("?method={m}")).unwrap_or_default();
            admin(
                &client,
                "POST",
                &format!("/api/v1/domains/{domain}/verify{q}"),
                None,
            )?
        }
        DomainCommand::Rm { client, domain } => admin(
            &client,
            "DELETE",
            &format!("/api/v1/domains/{domain}"),
            None,
        )?,
    };
    print(&v)
}

/// `slowpath edge-node …`.
pub fn edge_node(cmd: EdgeNodeCommand) -> Result<()> {
    let v = match cmd {
        EdgeNodeCommand::List(c) => admin(&c, "GET", "/api/v1/edge-nodes", None)?,
        EdgeNodeCommand::Add { client, name } => admin(
            &client,
            "POST",
            "/api/v1/edge-nodes",
            Some(json!({ "name": name })),
        )?,
        EdgeNodeCommand::Rm { client, id } => {
            admin(&client, "DELETE", &format!("/api/v1/edge-nodes/{id}"), None)?
        }
    };
    print(&v)
}

pub fn mesh(cmd: MeshCommand) -> Result<()> {
    let m = |c: &ClientArgs, method: &str, path: &str, body: Option<Value>| {
        admin(c, method, &format!("/api/v1/mesh{path}"), body)
    };
    let v = match cmd {
        MeshCommand::Network(MeshNetworkCommand::List(c)) => m(&c, "GET", "/networks", None)?,
        MeshCommand::Network(MeshNetworkCommand::Create {
            client,
            name,
            subnet,
            description,
        }) => m(
            &client,
            "POST",
            "/networks",
            Some(json!({ "name": name, "subnet": subnet, "description": description })),
        )?,
        MeshCommand::Network(MeshNetworkCommand::Delete { client, id }) => {
            m(&client, "DELETE", &format!("/networks/{id}"), None)?
        }
        MeshCommand::Node(MeshNodeCommand::List { client, network }) => {
            let q = network
                .map(|n| format!("?network_id={n}"))
                .unwrap_or_default();
            m(&client, "GET", &format!("/nodes{q}"), None)?
        }
        MeshCommand::Node(MeshNodeCommand::Authorize { client, id }) => {
            m(&client, "POST", &format!("/nodes/{id}/authorize"), None)?
        }
        MeshCommand::Node(MeshNodeCommand::Deauthorize { client, id }) => {
            m(&client, "POST", &format!("/nodes/{id}/deauthorize"), None)?
        }
        MeshCommand::Node(MeshNodeCommand::Rename { client, id, name }) => m(
            &client,
            "POST",
            &format!("/nodes/{id}/rename"),
            Some(json!({ "name": name })),
        )?,
        MeshCommand::Node(MeshNodeCommand::Delete { client, id }) => {
            m(&client, "DELETE", &format!("/nodes/{id}"), None)?
        }
        MeshCommand::Route(MeshRouteCommand::List { client, node }) => match node {
            Some(n) => m(&client, "GET", &format!("/nodes/{n}/routes"), None)?,
            None => m(&client, "GET", "/routes", None)?,
        },
        MeshCommand::Route(MeshRouteCommand::Add {
            client,
            node,
            cidr,
            priority,
            weight,
        }) => {
            let mut body = json!({ "cidr": cidr });
            set_given(&mut body, "priority", priority);
            set_given(&mut body, "weight", weight);
            m(
                &client,
                "POST",
                &format!("/nodes/{node}/routes"),
                Some(body),
            )?
        }
        MeshCommand::Route(MeshRouteCommand::Delete { client, node, id }) => m(
            &client,
            "DELETE",
            &format!("/nodes/{node}/routes/{id}"),
            None,
        )?,
        MeshCommand::Server(MeshServerCommand::List(c)) => m(&c, "GET", "/servers", None)?,
        MeshCommand::Server(MeshServerCommand::Add {
            client,
            name,
            url,
            region,
            capability,
            stun_ip,
            stun_ip2,
            stun_port,
            builtin,
        }) => {
            let mut body = json!({
                "name": name,
                "url": url,
                "region": region,
                "stun_ip": stun_ip,
                "stun_ip2": stun_ip2,
                "type": if builtin { "builtin" } else { "external" },
            });
            if !capability.is_empty() {
                body["capabilities"] = json!(capability);
            }
            set_given(&mut body, "stun_port", stun_port);
            m(&client, "POST", "/servers", Some(body))?
        }
        MeshCommand::Server(MeshServerCommand::Show { client, id }) => {
            m(&client, "GET", &format!("/servers/{id}"), None)?
        }
        MeshCommand::Server(MeshServerCommand::Enable { client, id }) => m(
            &client,
            "PUT",
            &format!("/servers/{id}"),
            Some(json!({ "enabled": true })),
        )?,
        MeshCommand::Server(MeshServerCommand::Disable { client, id }) => m(
            &client,
            "PUT",
            &format!("/servers/{id}"),
            Some(json!({ "enabled": false })),
        )?,
        MeshCommand::Server(MeshServerCommand::Token { client, id })
        | MeshCommand::Token(MeshTokenCommand::Generate { client, server: id }) => {
            m(&client, "POST", &format!("/servers/{id}/token"), None)?
        }
        MeshCommand::Server(MeshServerCommand::Delete { client, id }) => {
            m(&client, "DELETE", &format!("/servers/{id}"), None)?
        }
        MeshCommand::Token(MeshTokenCommand::Blacklist {
            client, add: None, ..
        }) => m(&client, "GET", "/tokens/blacklist", None)?,
        MeshCommand::Token(MeshTokenCommand::Blacklist {
            client,
            add: Some(jti),
            reason,
        }) => m(
            &client,
            "POST",
            "/tokens/blacklist",
            Some(json!({ "jti": jti, "reason": reason })),
        )?,
        MeshCommand::Config { client, set } if set.is_empty() => {
            m(&client, "GET", "/settings", None)?
        }
        MeshCommand::Config { client, set } => {
            let mut body = serde_json::Map::new();
            for pair in set {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("{pair:?}: settings are given as key=value");
                };
                body.insert(k.trim().to_owned(), json!(v.trim()));
            }
            m(&client, "PUT", "/settings", Some(Value::Object(body)))?
        }
        MeshCommand::Status(c) => m(&c, "GET", "/stats/overview", None)?,
        MeshCommand::Latency(c) => m(&c, "GET", "/latency/matrix", None)?,
    };
    if v.is_null() {
        println!("done");
        return Ok(());
    }
    print(&v)
}
