//! Invites: a node owner shares a private node by creating an invite (TTL,
//! use count, scope); whoever holds its code resolves it into a short-lived
//! ticket and a ready frpc.toml.
//!
//! The code is shown once and stored as a SHA-256 hash. Use counting is one
//! conditional `UPDATE` inside the resolve transaction, so concurrent
//! resolves of an N-use invite succeed exactly N times on SQLite (one
//! writer) and on PostgreSQL (the row lock re-checks the condition).

use proto::policy::{InviteId, InvitePolicy, PortSet, ProxyTypes};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::clock::{now_ms, rfc3339};
use crate::credentials;
use crate::domain::nodes::{self, Node};
use crate::domain::tickets::{self, TicketSigner};
use crate::error::{Error, Result};
use crate::frpc_config;
use crate::store::db::Db;
use crate::telemetry::audit::{self, Entry};

// Defaults for what a create request leaves out. An invite is a door for
// one person's frpc: one resolve, a week to use it, room for the frpc and a
// reconnect racing its dead predecessor, a handful of proxies. Wider doors
// are asked for explicitly; 0 is how a request says "unlimited" for uses,
// sessions and proxies (README, "Invite defaults").

/// Invite lifetime when the request does not say, seconds (7 days).
pub const DEFAULT_TTL_S: u64 = 7 * 86_400;
/// Longest invite lifetime, seconds (365 days).
pub const MAX_TTL_S: u64 = 365 * 86_400;
/// Resolves allowed when the request does not say.
pub const DEFAULT_MAX_USES: u32 = 1;
/// Concurrent frpc sessions when the request's scope does not say.
pub const DEFAULT_MAX_CONNS: u32 = 2;
/// Proxies across an invite's sessions when the request's scope does not say.
pub const DEFAULT_MAX_PROXIES: u32 = 10;

// The demo invite `slowpath up` creates and prints: its code and a live
// ticket sit in the terminal and in DATA_DIR/frpc-demo.toml, so it opens
// little, briefly. Each start of `up` resolves it once (to print a ticket).

/// Demo invite lifetime, seconds (24 hours).
pub const DEMO_TTL_S: u64 = 86_400;
/// Demo invite resolves (each start of `slowpath up` uses one).
pub const DEMO_MAX_USES: u32 = 5;
/// Demo invite concurrent sessions.
pub const DEMO_MAX_CONNS: u32 = 2;
/// Demo invite proxies.
pub const DEMO_MAX_PROXIES: u32 = 10;

/// Create request (node key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    /// Lifetime in seconds (1 s to 365 days; default [`DEFAULT_TTL_S`]).
    pub ttl_s: Option<u64>,
    /// Resolves allowed (0 = unlimited; default [`DEFAULT_MAX_USES`]).
    pub max_uses: Option<u32>,
    /// What tickets from this invite may do.
    #[serde(default)]
    pub scope: ScopeRequest,
    /// Lifetime of each ticket, seconds (600-3600; default 1800).
    pub ticket_ttl_s: Option<u64>,
    /// Free-form note for the owner.
    #[serde(default)]
    pub note: String,
}

/// Requested scope; absent fields take the node's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    /// Proxy types (a subset of the node's).
    pub proxy_types: Option<Vec<String>>,
    /// Port pool text (a subset of the node's pool).
    pub port_pool: Option<String>,
    /// Concurrent frpc sessions (0 = unlimited; default [`DEFAULT_MAX_CONNS`]).
    pub max_conns: Option<u32>,
    /// Proxies across the invite's sessions (0 = unlimited; default
    /// [`DEFAULT_MAX_PROXIES`]).
    pub max_proxies: Option<u32>,
    /// Domain suffix for HTTP proxies.
    #[serde(default)]
    pub domain_suffix: String,
    /// Assign one subdomain of its own (`<label>.<node sub_domain_host>`).
    #[serde(default)]
    pub auto_subdomain: bool,
}

/// The proxy types a demo invite on `node` lists: those the node allows and
/// the fastpath serves. A node that allows none of the served types gets
/// its own list: the invite then says what the node allows, and the
/// fastpath refuses with its reason.
fn demo_proxy_types(node: &Node) -> ProxyTypes {
    let served = node
        .proxy_types
        .intersect(nodes::fastpath_proxy_types(node));
    if served == ProxyTypes::NONE {
        node.proxy_types
    } else {
        served
    }
}

/// Whether a demo invite on `node` gets a subdomain: the node has a
/// sub_domain_host and its fastpath serves http or https there.
fn demo_subdomain(node: &Node) -> bool {
    let types = demo_proxy_types(node);
    !node.sub_domain_host.is_empty() && (types.allows("http") || types.allows("https"))
}

impl NewInvite {
    /// The demo invite `slowpath up` creates on its node: the demo limits,
    /// and only the proxy types its fastpath serves.
    pub fn demo(node: &Node) -> NewInvite {
        let types = demo_proxy_types(node);
        NewInvite {
            ttl_s: Some(DEMO_TTL_S),
            max_uses: Some(DEMO_MAX_USES),
            scope: ScopeRequest {
                proxy_types: Some(types.names().iter().map(|n| (*n).to_owned()).collect()),
                max_conns: Some(DEMO_MAX_CONNS),
                max_proxies: Some(DEMO_MAX_PROXIES),
                auto_subdomain: demo_subdomain(node),
                ..ScopeRequest::default()
            },
            note: "demo invite created by slowpath up".to_owned(),
            ..NewInvite::default()
        }
    }
}

/// What tickets from an invite may do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Scope {
    /// Allowed proxy types.
    pub proxy_types: Vec<String>,
    /// Allowed ports.
    pub port_pool: String,
    /// Concurrent frpc sessions (0 = unlimited).
    pub max_conns: u32,
    /// Proxies across the invite's sessions (0 = unlimited).
    pub max_proxies: u32,
    /// Domain suffix for HTTP proxies.
    pub domain_suffix: String,
    /// The label under the node's sub_domain_host assigned to this invite
    /// alone ("" = none): frpc's `subdomain`.
    #[serde(default)]
    pub subdomain: String,
}

/// An invite as stored.
#[derive(Debug, Clone)]
pub struct Invite {
    /// `inv_<32 hex>`.
    pub id: InviteId,
    /// Node it opens.
    pub node_id: String,
    /// Created, ms.
    pub created_ms: i64,
    /// Stops resolving at, ms.
    pub expires_ms: i64,
    /// Resolves allowed (0 = unlimited).
    pub max_uses: u32,
    /// Resolves so far.
    pub used: u32,
    /// Revoked by its owner or an admin.
    pub revoked: bool,
    /// When revoked, ms (0 = not).
    pub revoked_ms: i64,
    /// Allowed proxy types.
    pub proxy_types: ProxyTypes,
    /// Allowed ports.
    pub port_pool: PortSet,
    /// Concurrent sessions cap.
    pub max_conns: u32,
    /// Proxies cap.
    pub max_proxies: u32,
    /// Domain suffix.
    pub domain_suffix: String,
    /// The subdomain label assigned to it ("" = none).
    pub subdomain: String,
    /// Ticket lifetime, seconds.
    pub ticket_ttl_s: u64,
    /// Owner's note.
    pub note: String,
}

/// An invite as the API shows it (never the code, except at creation).
#[derive(Debug, Serialize)]
pub struct InviteInfo {
    /// Invite id.
    pub id: String,
    /// The code, only in the creation response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Node id.
    pub node_id: String,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Expires, RFC 3339.
    pub expires_at: String,
    /// Expires, ms.
    pub expires_ms: i64,
    /// "active", "expired", "revoked" or "exhausted".
    pub status: &'static str,
    /// Resolves allowed (0 = unlimited).
    pub max_uses: u32,
    /// Resolves so far.
    pub used: u32,
    /// Revoked, RFC 3339, or null.
    pub revoked_at: Option<String>,
    /// Scope.
    pub scope: Scope,
    /// Ticket lifetime, seconds.
    pub ticket_ttl_s: u64,
    /// Note.
    pub note: String,
}

/// What a resolve returns.
#[derive(Debug, Serialize)]
pub struct Resolved {
    /// Address frpc dials.
    pub server_addr: String,
    /// Port frpc dials.
    pub server_port: u16,
    /// Node id (the ticket is bound to it).
    pub node_id: String,
    /// Invite id.
    pub invite_id: String,
    /// The ticket (frpc.toml `metadatas.ticket`).
    pub connection_ticket: String,
    /// Ticket expiry, RFC 3339.
    pub ticket_expires_at: String,
    /// Ticket expiry, ms.
    pub ticket_expires_ms: i64,
    /// What the ticket allows.
    pub scope: Scope,
    /// The invite's own domain, `<scope.subdomain>.<sub_domain_host>`
    /// (null when it has none).
    pub domain: Option<String>,
    /// Where that domain is served over HTTP (null without a domain or
    /// the node's vhostHTTPPort).
    pub url: Option<String>,
    /// A ready-to-use frpc.toml.
    pub frpc_toml: String,
}

impl Invite {
    /// The scope as the API shows it.
    pub fn scope(&self) -> Scope {
        Scope {
            proxy_types: self
                .proxy_types
                .names()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            port_pool: self.port_pool.to_string(),
            max_conns: self.max_conns,
            max_proxies: self.max_proxies,
            domain_suffix: self.domain_suffix.clone(),
            subdomain: self.subdomain.clone(),
        }
    }

    /// Whether this invite opens no more than a demo invite does (so that
    /// `slowpath up` may keep it): older versions made demo invites with
    /// unlimited uses and sessions for a year.
    pub fn within_demo_limits(&self, node: &Node) -> bool {
        let within = |v: u32, cap: u32| (1..=cap).contains(&v);
        let types = demo_proxy_types(node);
        within(self.max_uses, DEMO_MAX_USES)
            && within(self.max_conns, DEMO_MAX_CONNS)
            && within(self.max_proxies, DEMO_MAX_PROXIES)
            && self.expires_ms - self.created_ms
                <= i64::try_from(DEMO_TTL_S * 1000).unwrap_or(i64::MAX)
            && self.proxy_types.intersect(types) == self.proxy_types
            // A node that now offers subdomains gets a demo invite with one.
            && self.subdomain.is_empty() != demo_subdomain(node)
    }

    /// One line saying what this invite allows, for the operator.
    pub fn limits_line(&self) -> String {
        let count = |v: u32, what: &str| {
            if v == 0 {
                format!("unlimited {what}")
            } else {
                format!("at most {v} {what}")
            }
        };
        format!(
            "{} ({} used), until {}, {} and {} at a time, types {}, ports {}",
            count(self.max_uses, "resolves"),
            self.used,
            rfc3339(self.expires_ms),
            count(self.max_conns, "frpc sessions"),
            count(self.max_proxies, "proxies"),
            self.proxy_types,
            self.port_pool,
        )
    }

    /// Why this invite cannot be resolved at `now`, if it cannot.
    pub fn unusable_reason(&self, now: i64) -> Option<String> {
        if self.revoked {
            Some("invite revoked".to_owned())
        } else if self.expires_ms <= now {
            Some("invite expired".to_owned())
        } else if self.max_uses > 0 && self.used >= self.max_uses {
            Some(format!(
                "invite exhausted ({} of {} uses)",
                self.used, self.max_uses
            ))
        } else {
            None
        }
    }

    fn status(&self, now: i64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.expires_ms <= now {
            "expired"
        } else if self.max_uses > 0 && self.used >= self.max_uses {
            "exhausted"
        } else {
            "active"
        }
    }

    /// An audit row of `kind` about this invite (and its node).
    fn audit(&self, kind: &'static str) -> Entry {
        Entry {
            kind,
            node_id: self.node_id.clone(),
            invite_id: self.id.to_string(),
            ..Entry::default()
        }
    }

    /// The API view, with `code` only when just created.
    pub fn info(&self, code: Option<String>) -> InviteInfo {
        InviteInfo {
            id: self.id.to_string(),
            code,
            node_id: self.node_id.clone(),
            created_at: rfc3339(self.created_ms),
            expires_at: rfc3339(self.expires_ms),
            expires_ms: self.expires_ms,
            status: self.status(now_ms()),
            max_uses: self.max_uses,
            used: self.used,
            revoked_at: self.revoked.then(|| rfc3339(self.revoked_ms)),
            scope: self.scope(),
            ticket_ttl_s: self.ticket_ttl_s,
            note: self.note.clone(),
        }
    }
}

const INVITE_COLUMNS: &str =
    "id, node_id, created_ms, expires_ms, max_uses, used, revoked, revoked_ms, \
     proxy_types, port_pool, max_conns, max_proxies, domain_suffix, ticket_ttl_s, note, subdomain";

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored invite {what} is unreadable: {e}"))
}

fn small(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn invite_from_row(row: &AnyRow) -> Result<Invite> {
    let id: String = row.try_get("id")?;
    let proxy_types: String = row.try_get("proxy_types")?;
    let port_pool: String = row.try_get("port_pool")?;
    Ok(Invite {
        id: InviteId::parse(&id).ok_or_else(|| corrupt("id", &id))?,
        node_id: row.try_get("node_id")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        max_uses: small(row.try_get("max_uses")?),
        used: small(row.try_get("used")?),
        revoked: row.try_get::<i64, _>("revoked")? != 0,
        revoked_ms: row.try_get("revoked_ms")?,
        proxy_types: ProxyTypes::parse(&proxy_types).map_err(|e| corrupt("proxy_types", e))?,
        port_pool: PortSet::parse(&port_pool).map_err(|e| corrupt("port_pool", e))?,
        max_conns: small(row.try_get("max_conns")?),
        max_proxies: small(row.try_get("max_proxies")?),
        domain_suffix: row.try_get("domain_suffix")?,
        subdomain: row.try_get("subdomain")?,
        ticket_ttl_s: u64::try_from(row.try_get::<i64, _>("ticket_ttl_s")?).unwrap_or(0),
        note: row.try_get("note")?,
    })
}

/// Checks a create request against the node and turns it into an invite.
fn build(node: &Node, req: NewInvite, now: i64) -> Result<Invite> {
    let ttl_s = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl_s) {
        return Err(Error::invalid(
            "ttl_s",
            format!("ttl_s must be 1-{MAX_TTL_S} seconds, got {ttl_s}"),
        ));
    }
    let ticket_ttl_s = req.ticket_ttl_s.unwrap_or(tickets::DEFAULT_TICKET_TTL_S);
    if !(tickets::MIN_TICKET_TTL_S..=tickets::MAX_TICKET_TTL_S).contains(&ticket_ttl_s) {
        return Err(Error::invalid(
            "ticket_ttl_s",
            format!(
                "ticket_ttl_s must be {}-{} seconds, got {ticket_ttl_s}",
                tickets::MIN_TICKET_TTL_S,
                tickets::MAX_TICKET_TTL_S
            ),
        ));
    }
    let scope = req.scope;
    let proxy_types = match &scope.proxy_types {
        Some(names) => {
            let t = nodes::parse_proxy_types("scope.proxy_types", names)?;
            if t.intersect(node.proxy_types) != t {
                return Err(Error::invalid(
                    "scope.proxy_types",
                    format!(
                        "scope.proxy_types must be among the node's types ({})",
                        node.proxy_types
                    ),
                ));
            }
            t
        }
        None => node.proxy_types,
    };
    let port_pool = match &scope.port_pool {
        Some(text) => {
            let p = nodes::parse_port_pool("scope.port_pool", text)?;
            if !p.is_subset_of(&node.port_pool) {
                return Err(Error::invalid(
                    "scope.port_pool",
                    format!(
                        "scope.port_pool {p} is not inside the node's pool {}",
                        node.port_pool
                    ),
                ));
            }
            p
        }
        None => node.port_pool.clone(),
    };
    if scope.domain_suffix.len() > 253 || scope.domain_suffix.contains(['"', '\\', '\n', ' ']) {
        return Err(Error::invalid(
            "scope.domain_suffix",
            "scope.domain_suffix must be a domain name",
        ));
    }
    if req.note.len() > 1024 {
        return Err(Error::invalid("note", "note is longer than 1024 bytes"));
    }
    let subdomain = if scope.auto_subdomain {
        let field = "scope.auto_subdomain";
        if node.sub_domain_host.is_empty() {
            return Err(Error::invalid(
                field,
                format!("{field}: node {} has no sub_domain_host", node.id),
            ));
        }
        if !(proxy_types.allows("http") || proxy_types.allows("https")) {
            return Err(Error::invalid(
                field,
                format!("{field} needs http or https in scope.proxy_types (got {proxy_types})"),
            ));
        }
        credentials::new_subdomain_label()
            .ok_or_else(|| Error::Internal("no randomness for a subdomain label".into()))?
    } else {
        String::new()
    };
    let ttl_ms = i64::try_from(ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    Ok(Invite {
        id: InviteId::random(),
        node_id: node.id.clone(),
        created_ms: now,
        expires_ms: now.saturating_add(ttl_ms),
        max_uses: req.max_uses.unwrap_or(DEFAULT_MAX_USES),
        used: 0,
        revoked: false,
        revoked_ms: 0,
        proxy_types,
        port_pool,
        max_conns: scope.max_conns.unwrap_or(DEFAULT_MAX_CONNS),
        max_proxies: scope.max_proxies.unwrap_or(DEFAULT_MAX_PROXIES),
        domain_suffix: scope.domain_suffix,
        subdomain,
        ticket_ttl_s,
        note: req.note,
    })
}

/// Creates an invite on `node`; returns it with its code (shown only here).
pub async fn create(db: &Db, node: &Node, req: NewInvite) -> Result<(Invite, String)> {
    let mut invite = build(node, req, now_ms())?;
    let code = credentials::new_invite_code();
    let mut tx = db.begin().await?;
    // A fresh label that another invite of the node holds is drawn again
    // (about 40 bits each: in practice never; the unique index has the
    // last word).
    for _ in 0..8 {
        if invite.subdomain.is_empty()
            || sqlx::query("SELECT 1 FROM invites WHERE node_id = $1 AND subdomain = $2")
                .bind(&invite.node_id)
                .bind(&invite.subdomain)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
        {
            break;
        }
        invite.subdomain = credentials::new_subdomain_label()
            .ok_or_else(|| Error::Internal("no randomness for a subdomain label".into()))?;
    }
    sqlx::query(
        "INSERT INTO invites (id, node_id, code_hash, created_ms, expires_ms, max_uses, used, \
         revoked, revoked_ms, proxy_types, port_pool, max_conns, max_proxies, domain_suffix, \
         ticket_ttl_s, note, subdomain) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, 0, 0, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(invite.id.to_string())
    .bind(&invite.node_id)
    .bind(credentials::sha256_hex(
        &credentials::normalize_invite_code(&code),
    ))
    .bind(invite.created_ms)
    .bind(invite.expires_ms)
    .bind(i64::from(invite.max_uses))
    .bind(invite.proxy_types.to_string())
    .bind(invite.port_pool.to_string())
    .bind(i64::from(invite.max_conns))
    .bind(i64::from(invite.max_proxies))
    .bind(&invite.domain_suffix)
    .bind(i64::try_from(invite.ticket_ttl_s).unwrap_or(0))
    .bind(&invite.note)
    .bind(&invite.subdomain)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        &Entry {
            detail: serde_json::json!({
                "expires_ms": invite.expires_ms,
                "max_uses": invite.max_uses,
                "scope": invite.scope(),
                "ticket_ttl_s": invite.ticket_ttl_s,
            }),
            ..invite.audit("invite.created")
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(node_id = %invite.node_id, invite_id = %invite.id, max_uses = invite.max_uses, "invite created");
    Ok((invite, code))
}

/// One invite by id.
pub async fn get(db: &Db, id: &str) -> Result<Invite> {
    fetch(db, id, None).await
}

/// The invite `id`, if of `node_id` when given (node-key callers see only
/// their own), read through `exec` (the pool, or the transaction that goes
/// on to change it).
async fn fetch<'c, E>(exec: E, id: &str, node_id: Option<&str>) -> Result<Invite>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {INVITE_COLUMNS} FROM invites WHERE id = $1 AND ($2 = '' OR node_id = $2)"
    ))
    .bind(id)
    .bind(node_id.unwrap_or(""))
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else {
        return Err(Error::NotFound(format!("invite {id} not found")));
    };
    invite_from_row(&row)
}

/// Invites of one node (or all when `node_id` is None), newest first.
pub async fn list(db: &Db, node_id: Option<&str>) -> Result<Vec<Invite>> {
    let rows = sqlx::query(&format!(
        "SELECT {INVITE_COLUMNS} FROM invites WHERE ($1 = '' OR node_id = $1) \
         ORDER BY created_ms DESC, id DESC"
    ))
    .bind(node_id.unwrap_or(""))
    .fetch_all(db)
    .await?;
    rows.iter().map(invite_from_row).collect()
}

/// The columns [`for_policy`] reads, in the order it decodes them: only what
/// the policy table carries (reading every column of 100k rows through
/// sqlx's `Any` driver is most of a full compile's time on SQLite).
pub const POLICY_COLUMNS: &str = "id, revoked, expires_ms, max_conns, max_proxies, proxy_types, \
     port_pool, domain_suffix, subdomain";

/// The node's invites a live ticket may still name (expired less than the
/// longest ticket lifetime ago), as policy-table records; revoked ones are
/// included so the data plane can say why it refuses them.
pub async fn for_policy<'c, E>(exec: E, node_id: &str, now: i64) -> Result<Vec<InvitePolicy>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let horizon = tickets::invite_horizon_ms(now);
    let rows = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM invites WHERE node_id = $1 AND expires_ms > $2"
    ))
    .bind(node_id)
    .bind(horizon)
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0)?;
            let proxy_types: String = row.try_get(5)?;
            let port_pool: String = row.try_get(6)?;
            Ok(InvitePolicy {
                id: InviteId::parse(&id).ok_or_else(|| corrupt("id", &id))?,
                revoked: row.try_get::<i64, _>(1)? != 0,
                expires_ms: u64::try_from(row.try_get::<i64, _>(2)?).unwrap_or(0),
                max_conns: small(row.try_get(3)?),
                max_proxies: small(row.try_get(4)?),
                proxy_types: ProxyTypes::parse(&proxy_types)
                    .map_err(|e| corrupt("proxy_types", e))?,
                port_pool: PortSet::parse(&port_pool).map_err(|e| corrupt("port_pool", e))?,
                domain_suffix: row.try_get(7)?,
                subdomain: row.try_get(8)?,
            })
        })
        .collect()
}

/// The invite of `node_id` that `label` is reserved for, if any. A label
/// is reserved while the policy table carries its invite (revoked ones
/// too, until they have expired past the ticket horizon), the same span
/// the fastpath enforces; it is never handed to another invite.
pub async fn subdomain_owner(db: &Db, node_id: &str, label: &str) -> Result<Option<InviteId>> {
    if label.is_empty() {
        return Ok(None);
    }
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM invites WHERE node_id = $1 AND subdomain = $2 AND expires_ms > $3",
    )
    .bind(node_id)
    .bind(label)
    .bind(tickets::invite_horizon_ms(now_ms()))
    .fetch_optional(db)
    .await?;
    Ok(id.as_deref().and_then(InviteId::parse))
}

/// Revokes an invite; `node_id` restricts it to one node's invites (node-key
/// callers). Revoking twice is not an error; the audit row is written once.
pub async fn revoke(db: &Db, id: &str, node_id: Option<&str>, by: &str) -> Result<Invite> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let mut invite = fetch(&mut *tx, id, node_id).await?;
    if !invite.revoked {
        sqlx::query("UPDATE invites SET revoked = 1, revoked_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut *tx,
            &Entry {
                reason: format!("revoked by {by}"),
                ..invite.audit("invite.revoked")
            },
        )
        .await?;
        invite.revoked = true;
        invite.revoked_ms = now;
        tracing::info!(invite_id = %invite.id, by, "invite revoked");
    }
    tx.commit().await?;
    Ok(invite)
}

/// Resolves a code into a ticket: counts one use, signs a ticket bound to
/// the node and invite, records `invite.resolved` — all or nothing.
///
/// Unknown codes are [`Error::NotFound`]; revoked, expired and exhausted
/// invites are [`Error::Gone`] with the reason.
pub async fn resolve(db: &Db, signer: &TicketSigner, code: &str, client: &str) -> Result<Resolved> {
    let code = credentials::normalize_invite_code(code);
    if code.is_empty() || code.len() > 128 {
        return Err(Error::invalid("code", "code must be an invite code"));
    }
    let hash = credentials::sha256_hex(&code);
    resolve_where(db, signer, "code_hash", &hash, client).await
}

/// Resolves an invite by id, for the local operator (`slowpath up` prints a
/// ticket for its demo invite without knowing the code). Counts a use like
/// [`resolve`].
pub async fn resolve_id(
    db: &Db,
    signer: &TicketSigner,
    id: &str,
    client: &str,
) -> Result<Resolved> {
    resolve_where(db, signer, "id", id, client).await
}

/// The resolve transaction, keyed by `column` (`code_hash` or `id`, never input).
async fn resolve_where(
    db: &Db,
    signer: &TicketSigner,
    column: &'static str,
    key: &str,
    client: &str,
) -> Result<Resolved> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let counted = sqlx::query(&format!(
        "UPDATE invites SET used = used + 1 WHERE {column} = $1 AND revoked = 0 \
         AND expires_ms > $2 AND (max_uses = 0 OR used < max_uses)"
    ))
    .bind(key)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(&format!(
        "SELECT {INVITE_COLUMNS} FROM invites WHERE {column} = $1"
    ))
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::NotFound("invite code not found".into()));
    };
    let invite = invite_from_row(&row)?;
    if counted == 0 {
        drop(tx);
        let reason = invite
            .unusable_reason(now)
            .unwrap_or_else(|| "invite cannot be used now".to_owned());
        audit::record(
            db,
            &Entry {
                reason: reason.clone(),
                detail: serde_json::json!({ "client": client }),
                ..invite.audit("invite.rejected")
            },
        )
        .await?;
        return Err(Error::Gone(reason));
    }
    let node_row = sqlx::query(
        "SELECT server_addr, server_port, frp_token, sub_domain_host, vhost_http_port \
         FROM nodes WHERE id = $1",
    )
    .bind(&invite.node_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(node_row) = node_row else {
        return Err(Error::Gone("the invite's node no longer exists".into()));
    };
    let server_addr: String = node_row.try_get("server_addr")?;
    let server_port = u16::try_from(node_row.try_get::<i64, _>("server_port")?)
        .map_err(|e| Error::Internal(format!("stored node port: {e}")))?;
    let frp_token: String = node_row.try_get("frp_token")?;
    let sub_domain_host: String = node_row.try_get("sub_domain_host")?;
    let http_port = node_row.try_get::<i64, _>("vhost_http_port")?;
    let domain = (!invite.subdomain.is_empty() && !sub_domain_host.is_empty())
        .then(|| format!("{}.{sub_domain_host}", invite.subdomain));
    let url = domain
        .as_ref()
        .filter(|_| http_port > 0)
        .map(|d| match http_port {
            80 => format!("http://{d}/"),
            p => format!("http://{d}:{p}/"),
        });
    let issued = signer.issue(
        &invite.node_id,
        &invite.id.to_string(),
        invite.ticket_ttl_s,
        now,
    );
    let ticket_expires_ms =
        i64::try_from(issued.claims.exp.saturating_mul(1000)).unwrap_or(i64::MAX);
    audit::record(
        &mut *tx,
        &Entry {
            ts_ms: now,
            detail: serde_json::json!({
                "jti": issued.claims.jti,
                "ticket_exp": issued.claims.exp,
                "use": invite.used,
                "client": client,
            }),
            ..invite.audit("invite.resolved")
        },
    )
    .await?;
    // Rendered before the commit: a file that cannot be written does not
    // cost the invitee a use.
    let frpc_toml = frpc_config::render(&frpc_config::FrpcConfig {
        server_addr: &server_addr,
        server_port,
        token: &frp_token,
        ticket: &issued.token,
        ticket_expires: &rfc3339(ticket_expires_ms),
        port_pool: &invite.port_pool,
        proxy_types: invite.proxy_types,
        subdomain: domain
            .as_deref()
            .map(|d| (invite.subdomain.as_str(), url.as_deref().unwrap_or(d))),
    })
    .map_err(|e| Error::Internal(format!("cannot write the frpc.toml: {e}")))?;
    tx.commit().await?;
    tracing::info!(invite_id = %invite.id, node_id = %invite.node_id, use_n = invite.used, client, "invite resolved");
    Ok(Resolved {
        server_addr,
        server_port,
        node_id: invite.node_id.clone(),
        invite_id: invite.id.to_string(),
        connection_ticket: issued.token,
        ticket_expires_at: rfc3339(ticket_expires_ms),
        ticket_expires_ms,
        scope: invite.scope(),
        domain,
        url,
        frpc_toml,
    })
}
