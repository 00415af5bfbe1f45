//! The edge (seed 004): origins, hostname routes to them, edge nodes that
//! pull their configuration with a persistent token, and the managed
//! certificates of routed hostnames (tables of migration 0006).
//!
//! An origin is an address the edge reaches (seed 004's `wireguard_ip`,
//! or any address) or a **tunnel origin**: an `http` proxy that a client
//! of an invite registers on this node, named by invite and proxy name, so
//! that an origin behind NAT needs nothing but frpc.
//!
//! Hostnames are taken as they will be matched: lowercase ASCII, labels of
//! letters, digits and `-`, at least two labels, not an IP address. An
//! uppercase or internationalized name is refused rather than silently
//! changed: the caller sends the punycode (`xn--…`) form.
//!
//! Every change is an audit row (`edge.*`).

use std::net::IpAddr;

use proto::policy::{EdgeOrigin, EdgeRoute, InviteId};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::clock::now_ms;
use crate::credentials::{random_hex, sha256_hex};
use crate::error::{Error, Result};
use crate::store::db::Db;

/// A canonical hostname, or why not (naming `field`).
pub fn hostname(field: &str, value: &str) -> Result<String> {
    let bad = |why: &str| Err(Error::invalid(field, format!("{field} {value:?} {why}")));
    let v = value.strip_suffix('.').unwrap_or(value);
    if v.is_empty() {
        return bad("is empty");
    }
    if v.len() > 253 {
        return bad("is longer than 253 characters");
    }
    if !v.is_ascii() {
        return bad("is not ASCII: send its punycode form (xn--...)");
    }
    if v.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("has uppercase letters: send it in lowercase");
    }
    if v.parse::<IpAddr>().is_ok() || v.starts_with('[') {
        return bad("is an IP address, not a hostname");
    }
    if v.starts_with("*.") {
        return bad("is a wildcard: routes name one hostname each");
    }
    let labels: Vec<&str> = v.split('.').collect();
    if labels.len() < 2 {
        return bad("must have at least two labels (app.example.com)");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return bad("has an empty label or one longer than 63 characters");
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("may hold only letters, digits, '-' and '.'");
        }
        if l.starts_with('-') || l.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("ends in a numeric label");
    }
    Ok(v.to_owned())
}

/// An origin as stored and shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Origin {
    /// `origin_<hex>`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The address the edge connects to ("" for a tunnel origin).
    pub wireguard_ip: String,
    /// Seed 004's WireGuard public key of the origin ("" if none).
    pub wireguard_public_key: String,
    /// A tunnel origin's invite ("" for an address).
    pub invite_id: String,
    /// A tunnel origin's proxy name ("" for an address).
    pub proxy_name: String,
    /// `address` or `tunnel`.
    pub kind: &'static str,
    /// Created, unix ms.
    pub created_at: i64,
}

/// `POST /api/v1/origins`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrigin {
    /// Unique name.
    pub name: String,
    /// An address origin's IP.
    #[serde(default)]
    pub wireguard_ip: Option<String>,
    /// Its WireGuard public key (seed 004), kept for operators.
    #[serde(default)]
    pub wireguard_public_key: Option<String>,
    /// A tunnel origin's invite.
    #[serde(default)]
    pub invite_id: Option<String>,
    /// A tunnel origin's proxy name (as frps shows it: `user.name` when
    /// frpc sets a user).
    #[serde(default)]
    pub proxy_name: Option<String>,
}

const ORIGIN_COLUMNS: &str =
    "id, name, wireguard_ip, wireguard_public_key, invite_id, proxy_name, created_at";

fn origin_row(r: &AnyRow) -> Result<Origin> {
    let ip: String = r.try_get("wireguard_ip")?;
    Ok(Origin {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: if ip.is_empty() { "tunnel" } else { "address" },
        wireguard_ip: ip,
        wireguard_public_key: r.try_get("wireguard_public_key")?,
        invite_id: r.try_get("invite_id")?,
        proxy_name: r.try_get("proxy_name")?,
        created_at: r.try_get("created_at")?,
    })
}

fn plain(field: &str, value: &str, max: usize) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must be at most {max} bytes without control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// Create an origin: an address (`wireguard_ip`) or a tunnel
/// (`invite_id` and `proxy_name`), not both.
pub async fn create_origin(db: &Db, req: NewOrigin) -> Result<Origin> {
    let name = plain("name", &req.name, 64)?;
    let ip = req.wireguard_ip.as_deref().map(str::trim).unwrap_or("");
    let invite = req.invite_id.as_deref().map(str::trim).unwrap_or("");
    let proxy = req.proxy_name.as_deref().map(str::trim).unwrap_or("");
    let (ip, invite, proxy) = match (ip.is_empty(), invite.is_empty() && proxy.is_empty()) {
        (false, true) => {
            let addr: IpAddr = ip.parse().map_err(|_| {
                Error::invalid("wireguard_ip", format!("wireguard_ip {ip:?} is not an IP address"))
            })?;
            (addr.to_string(), String::new(), String::new())
        }
        (true, false) => {
            let id = InviteId::parse(invite).ok_or_else(|| {
                Error::invalid("invite_id", format!("invite_id {invite:?} is not an invite id"))
            })?;
            crate::domain::invites::get(db, &id.to_string())
                .await
                .map_err(|e| match e {
                    Error::NotFound(_) => {
                        Error::invalid("invite_id", format!("no invite {invite:?}"))
                    }
                    e => e,
                })?;
            (String::new(), id.to_string(), plain("proxy_name", proxy, 256)?)
        }
        (false, false) => {
            return Err(Error::invalid(
                "wireguard_ip",
                "an origin is an address (wireguard_ip) or a tunnel (invite_id, proxy_name), not both",
            ))
        }
        (true, true) => {
            return Err(Error::invalid(
                "wireguard_ip",
                "give wireguard_ip for an address origin, or invite_id and proxy_name for a tunnel origin",
            ))
        }
    };
    let key = req
        .wireguard_public_key
        .as_deref()
        .map(str::trim)
        .unwrap_or("");
    if key.len() > 64 {
        return Err(Error::invalid(
            "wireguard_public_key",
            "wireguard_public_key is longer than 64 characters",
        ));
    }
    let o = Origin {
        id: format!("origin_{}", random_hex(8)),
        name,
        kind: if ip.is_empty() { "tunnel" } else { "address" },
        wireguard_ip: ip,
        wireguard_public_key: key.to_owned(),
        invite_id: invite,
        proxy_name: proxy,
        created_at: now_ms(),
    };
    let mut tx = db.begin().await?;
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT id FROM origins WHERE name = $1 OR (wireguard_ip <> '' AND wireguard_ip = $2)",
    )
    .bind(&o.name)
    .bind(&o.wireguard_ip)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = taken {
        return Err(Error::Conflict(format!(
            "origin {id} has this name or address"
        )));
    }
    sqlx::query(&format!(
        "INSERT INTO origins ({ORIGIN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(&o.id)
    .bind(&o.name)
    .bind(&o.wireguard_ip)
    .bind(&o.wireguard_public_key)
    .bind(&o.invite_id)
    .bind(&o.proxy_name)
    .bind(o.created_at)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut *tx,
        "edge.origin.created",
        serde_json::to_value(&o).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(o)
}

/// Every origin, by name.
pub async fn list_origins(db: &Db) -> Result<Vec<Origin>> {
    let rows = sqlx::query(&format!(
        "SELECT {ORIGIN_COLUMNS} FROM origins ORDER BY name"
    ))
    .fetch_all(db)
    .await?;
    rows.iter().map(origin_row).collect()
}

/// One origin.
pub async fn get_origin(db: &Db, id: &str) -> Result<Origin> {
    let row = sqlx::query(&format!(
        "SELECT {ORIGIN_COLUMNS} FROM origins WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    match row {
        Some(r) => origin_row(&r),
        None => Err(Error::NotFound(format!("no origin {id:?}"))),
    }
}

/// Delete an origin that no route uses (409 otherwise).
pub async fn delete_origin(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM routes WHERE origin_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if used > 0 {
        return Err(Error::Conflict(format!(
            "origin {id} is used by {used} route(s): delete them first"
        )));
    }
    let done = sqlx::query("DELETE FROM origins WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no origin {id:?}")));
    }
    audit(
        &mut *tx,
        "edge.origin.deleted",
        serde_json::json!({ "id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A route as stored and shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Route {
    /// `route_<hex>`.
    pub id: String,
    /// The hostname.
    pub hostname: String,
    /// Its origin.
    pub origin_id: String,
    /// The origin's port (0 for a tunnel origin).
    pub target_port: u16,
    /// Plain HTTP is redirected to HTTPS.
    pub redirect_https: bool,
    /// Created, unix ms.
    pub created_at: i64,
}

/// `POST /api/v1/routes` (seed 004).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    /// `app.hoge.com`.
    pub hostname: String,
    /// The origin.
    pub origin_id: String,
    /// The origin's port; not used by a tunnel origin.
    #[serde(default)]
    pub target_port: Option<u32>,
    /// Redirect plain HTTP to HTTPS (default false).
    #[serde(default)]
    pub redirect_https: Option<bool>,
}

const ROUTE_COLUMNS: &str = "id, hostname, origin_id, target_port, redirect_https, created_at";

fn route_row(r: &AnyRow) -> Result<Route> {
    Ok(Route {
        id: r.try_get("id")?,
        hostname: r.try_get("hostname")?,
        origin_id: r.try_get("origin_id")?,
        target_port: u16::try_from(r.try_get::<i64, _>("target_port")?).unwrap_or(0),
        redirect_https: r.try_get::<i64, _>("redirect_https")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

/// Create a route: 400 for a bad hostname, an unknown origin or a port an
/// address origin needs; 403 for a hostname under no verified domain and
/// no official suffix; 409 when the hostname is routed already.
pub async fn create_route(db: &Db, req: NewRoute) -> Result<Route> {
    let host = hostname("hostname", &req.hostname)?;
    crate::domain::domains::check_routable(db, &host).await?;
    let origin = match get_origin(db, req.origin_id.trim()).await {
        Ok(o) => o,
        Err(Error::NotFound(_)) => {
            return Err(Error::invalid(
                "origin_id",
                format!("origin_id {:?} names no origin", req.origin_id),
            ))
        }
        Err(e) => return Err(e),
    };
    let port = match (origin.kind, req.target_port) {
        ("address", Some(p)) if (1..=65535).contains(&p) => p as u16,
        ("address", _) => {
            return Err(Error::invalid(
                "target_port",
                "target_port must be 1-65535 for an address origin",
            ))
        }
        (_, None | Some(0)) => 0,
        (_, Some(_)) => {
            return Err(Error::invalid(
                "target_port",
                "a tunnel origin takes no target_port: its proxy is reached by name",
            ))
        }
    };
    let r = Route {
        id: format!("route_{}", random_hex(8)),
        hostname: host,
        origin_id: origin.id,
        target_port: port,
        redirect_https: req.redirect_https.unwrap_or(false),
        created_at: now_ms(),
    };
    let mut tx = db.begin().await?;
    let taken: Option<String> = sqlx::query_scalar("SELECT id FROM routes WHERE hostname = $1")
        .bind(&r.hostname)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(id) = taken {
        return Err(Error::Conflict(format!(
            "hostname {:?} is routed already (route {id})",
            r.hostname
        )));
    }
    sqlx::query(&format!(
        "INSERT INTO routes ({ROUTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&r.id)
    .bind(&r.hostname)
    .bind(&r.origin_id)
    .bind(i64::from(r.target_port))
    .bind(i64::from(r.redirect_https))
    .bind(r.created_at)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut *tx,
        "edge.route.created",
        serde_json::to_value(&r).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(r)
}

/// Every route, by hostname.
pub async fn list_routes(db: &Db) -> Result<Vec<Route>> {
    let rows = sqlx::query(&format!(
        "SELECT {ROUTE_COLUMNS} FROM routes ORDER BY hostname"
    ))
    .fetch_all(db)
    .await?;
    rows.iter().map(route_row).collect()
}

/// One route.
pub async fn get_route(db: &Db, id: &str) -> Result<Route> {
    let row = sqlx::query(&format!("SELECT {ROUTE_COLUMNS} FROM routes WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    match row {
        Some(r) => route_row(&r),
        None => Err(Error::NotFound(format!("no route {id:?}"))),
    }
}

/// Delete a route and the certificate of its hostname.
pub async fn delete_route(db: &Db, id: &str) -> Result<Route> {
    let r = get_route(db, id).await?;
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM routes WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM certificates WHERE hostname = $1")
        .bind(&r.hostname)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut *tx,
        "edge.route.deleted",
        serde_json::to_value(&r).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(r)
}

/// A route with its origin, as the table and the edge config need it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The route.
    pub route: Route,
    /// Its origin.
    pub origin: Origin,
}

/// Every route with its origin.
pub async fn resolved(db: &Db) -> Result<Vec<Resolved>> {
    let origins: std::collections::HashMap<String, Origin> = list_origins(db)
        .await?
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    Ok(list_routes(db)
        .await?
        .into_iter()
        .filter_map(|r| {
            let origin = origins.get(&r.origin_id)?.clone();
            Some(Resolved { route: r, origin })
        })
        .collect())
}

/// The table's edge routes.
pub fn table_routes(routes: &[Resolved]) -> Vec<EdgeRoute> {
    routes
        .iter()
        .filter_map(|r| {
            let origin = if r.origin.kind == "tunnel" {
                EdgeOrigin::Tunnel {
                    invite: InviteId::parse(&r.origin.invite_id)?,
                    proxy: r.origin.proxy_name.clone(),
                }
            } else {
                let ip: IpAddr = r.origin.wireguard_ip.parse().ok()?;
                EdgeOrigin::Address(std::net::SocketAddr::new(ip, r.route.target_port).to_string())
            };
            Some(EdgeRoute {
                hostname: r.route.hostname.clone(),
                origin,
                redirect_https: r.route.redirect_https,
            })
        })
        .collect()
}

/// Seed 004's edge configuration: `routes` (hostname → "ip:port"),
/// `hostnames`, and `config_hash`, the SHA-256 of the payload without
/// it. A tunnel origin is reached through this node's http vhost port
/// (`tunnel_addr`), which routes by Host; without one it is left out.
pub fn edge_config(routes: &[Resolved], tunnel_addr: Option<&str>) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for r in routes {
        let target = if r.origin.kind == "tunnel" {
            match tunnel_addr {
                Some(a) => a.to_owned(),
                None => continue,
            }
        } else {
            match r.origin.wireguard_ip.parse::<IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, r.route.target_port).to_string(),
                Err(_) => continue,
            }
        };
        map.insert(r.route.hostname.clone(), serde_json::Value::String(target));
    }
    // serde_json's map keeps keys sorted: the same routes hash the same.
    let hostnames: Vec<&String> = map.keys().collect();
    let payload = serde_json::json!({ "routes": map, "hostnames": hostnames });
    let hash = sha256_hex(&payload.to_string());
    serde_json::json!({ "config_hash": hash, "routes": payload["routes"], "hostnames": payload["hostnames"] })
}

/// An edge node as shown (its token is shown once, when made).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EdgeNode {
    /// `edge_<hex>`.
    pub id: String,
    /// Operator's name.
    pub name: String,
    /// Its last config pull, unix ms (None: never).
    pub last_seen: Option<i64>,
    /// Created, unix ms.
    pub created_at: i64,
}

/// `POST /api/v1/edge-nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEdgeNode {
    /// Operator's name.
    pub name: String,
}

fn edge_row(r: &AnyRow) -> Result<EdgeNode> {
    Ok(EdgeNode {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        last_seen: r.try_get("last_seen")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Register an edge node; its token (`et_` + 48 hex digits) is returned
/// here only and stored as its SHA-256.
pub async fn create_edge_node(db: &Db, req: NewEdgeNode) -> Result<(EdgeNode, String)> {
    let n = EdgeNode {
        id: format!("edge_{}", random_hex(8)),
        name: plain("name", &req.name, 64)?,
        last_seen: None,
        created_at: now_ms(),
    };
    let token = format!("et_{}", random_hex(24));
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO edge_nodes (id, name, auth_token_hash, last_seen, created_at) \
         VALUES ($1, $2, $3, NULL, $4)",
    )
    .bind(&n.id)
    .bind(&n.name)
    .bind(sha256_hex(&token))
    .bind(n.created_at)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut *tx,
        "edge.node.created",
        serde_json::json!({ "id": n.id, "name": n.name }),
    )
    .await?;
    tx.commit().await?;
    Ok((n, token))
}

/// Every edge node.
pub async fn list_edge_nodes(db: &Db) -> Result<Vec<EdgeNode>> {
    let rows = sqlx::query("SELECT id, name, last_seen, created_at FROM edge_nodes ORDER BY name")
        .fetch_all(db)
        .await?;
    rows.iter().map(edge_row).collect()
}

/// Delete an edge node (its token stops working).
pub async fn delete_edge_node(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("DELETE FROM edge_nodes WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no edge node {id:?}")));
    }
    audit(
        &mut *tx,
        "edge.node.deleted",
        serde_json::json!({ "id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The edge node whose token this is, its last pull now.
pub async fn edge_node_by_token(db: &Db, token: &str) -> Result<Option<EdgeNode>> {
    let hash = sha256_hex(token);
    let row = sqlx::query(
        "SELECT id, name, last_seen, created_at FROM edge_nodes WHERE auth_token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut n = edge_row(&row)?;
    let now = now_ms();
    sqlx::query("UPDATE edge_nodes SET last_seen = $1 WHERE id = $2")
        .bind(now)
        .bind(&n.id)
        .execute(db)
        .await?;
    n.last_seen = Some(now);
    Ok(Some(n))
}

/// An `edge.*` audit row.
pub(crate) async fn audit<'c, E>(
    exec: E,
    kind: &'static str,
    detail: serde_json::Value,
) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    crate::telemetry::audit::record(
        exec,
        &crate::telemetry::audit::Entry {
            kind,
            detail,
            ..Default::default()
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_taken_only_in_canonical_form() {
        assert_eq!(hostname("h", "app.hoge.com").unwrap(), "app.hoge.com");
        assert_eq!(hostname("h", "app.hoge.com.").unwrap(), "app.hoge.com");
        assert_eq!(
            hostname("h", "xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "App.hoge.com",
            "bücher.example",
            "127.0.0.1",
            "::1",
            "[::1]",
            "localhost",
            "*.hoge.com",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.com",
            "a.123",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            let e = hostname("hostname", bad).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid { field: Some(f), .. } if f == "hostname"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn the_config_hash_follows_the_payload_alone() {
        let origin = |ip: &str| Origin {
            id: "o".into(),
            name: "o".into(),
            wireguard_ip: ip.into(),
            wireguard_public_key: String::new(),
            invite_id: String::new(),
            proxy_name: String::new(),
            kind: "address",
            created_at: 0,
        };
        let route = |h: &str, port: u16, created_at: i64| Route {
            id: format!("route_{h}"),
            hostname: h.into(),
            origin_id: "o".into(),
            target_port: port,
            redirect_https: false,
            created_at,
        };
        let set = |rs: Vec<Route>, ip: &str| -> Vec<Resolved> {
            rs.into_iter()
                .map(|route| Resolved {
                    route,
                    origin: origin(ip),
                })
                .collect()
        };
        let a = edge_config(
            &set(
                vec![route("a.x.com", 80, 1), route("b.x.com", 81, 2)],
                "10.0.0.1",
            ),
            None,
        );
        // Other ids and times, other order: the same payload, the same hash.
        let b = edge_config(
            &set(
                vec![route("b.x.com", 81, 9), route("a.x.com", 80, 8)],
                "10.0.0.1",
            ),
            None,
        );
        assert_eq!(a, b);
        assert_eq!(a["routes"]["a.x.com"], "10.0.0.1:80");
        assert_eq!(a["hostnames"], serde_json::json!(["a.x.com", "b.x.com"]));
        let c = edge_config(
            &set(
                vec![route("a.x.com", 80, 1), route("b.x.com", 82, 2)],
                "10.0.0.1",
            ),
            None,
        );
        assert_ne!(a["config_hash"], c["config_hash"]);
        let d = edge_config(&set(vec![route("a.x.com", 80, 1)], "10.0.0.1"), None);
        assert_ne!(a["config_hash"], d["config_hash"]);
    }
}
