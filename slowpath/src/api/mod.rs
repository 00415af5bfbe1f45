//! The REST API under `/api/v1`, served by axum.
//!
//! [`ROUTES`] is the one route table: the router is built from it and the
//! OpenAPI document at `/api/v1/openapi.json` is generated from it, so the
//! two cannot disagree. Each route is built with its guard: the caller's
//! key is checked from the headers ([`auth::guard`]), then the body is read
//! within the route's limit ([`bounds`]); [`serve`] bounds connections
//! before that. Handlers live by audience: [`public`] (anonymous),
//! [`node`] (node key), [`admin`] (admin key), [`frps_plugin`] (stock frps
//! server-plugin hooks). [`error`] shapes every failure as JSON.

pub mod admin;
pub mod auth;
pub mod bounds;
pub mod edge;
pub mod error;
pub mod frps_plugin;
pub mod mesh;
pub mod mesh_server_ws;
pub mod mesh_ws;
pub mod node;
pub mod openapi;
pub mod public;
pub mod serve;

pub use bounds::{
    BODY_LIMIT_EMPTY, BODY_LIMIT_FRPS_HOOK, BODY_LIMIT_REQUEST, BODY_LIMIT_RESOLVE,
    BODY_LIMIT_TENANT, BODY_READ_TIMEOUT,
};

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::routing::MethodRouter;
use axum::Router;

use crate::domain::tickets::TicketSigner;
use crate::policy::publish::Publisher;
use crate::rate_limit::RateLimiter;
use crate::store::db::Db;
use crate::telemetry::events_drain::DrainStatus;
use error::ApiError;

/// Everything handlers share.
pub struct App {
    /// Database.
    pub db: Db,
    /// Ticket signing key.
    pub signer: TicketSigner,
    /// SHA-256 hex of the admin key.
    pub admin_key_hash: String,
    /// Resolve rate limiter.
    pub limiter: RateLimiter,
    /// The node this slowpath publishes policy for.
    pub local_node_id: String,
    /// Policy publisher for the local node.
    pub publisher: Arc<Publisher>,
    /// What the event drain has seen.
    pub drain: Arc<Mutex<DrainStatus>>,
    /// Tenants (seed 002): the etcd source, traffic reports and quotas.
    pub tenants: TenantServices,
    /// Changes of mesh networks, for the open `/ws/control` channels.
    pub mesh: mesh_ws::MeshHub,
    /// The ACME task, when `--acme-directory` is set.
    pub acme: Option<crate::acme::Acme>,
    /// Seed 004's DNS manager, when `--dns-zone` is set.
    pub dns: Option<crate::dns::manager::DnsManager>,
    /// The domain ownership checker (or why there is none: no resolver).
    pub verifier: std::result::Result<crate::dns::verify::Verifier, String>,
    /// API request counts and latencies, for `/metrics`.
    pub metrics: Arc<crate::telemetry::metrics::ApiMetrics>,
    /// Where an nginx edge reaches a tunnel origin: this node's
    /// `host:vhostHTTPPort` (None: no http vhost port).
    pub tunnel_addr: Option<String>,
}

/// The running parts behind tenants, for the stats and health endpoints.
pub struct TenantServices {
    /// The etcd source, when the node config has `[etcd]`.
    pub etcd: Option<crate::etcd::EtcdHandle>,
    /// Traffic report settings and sender status.
    pub reports: Arc<crate::telemetry::traffic_reports::ReportSettings>,
    /// Quota usage and the over-quota set.
    pub quotas: Arc<crate::domain::quota::QuotaTracker>,
}

impl TenantServices {
    /// What the stats endpoint shows about tenants.
    pub fn status(&self) -> serde_json::Value {
        let mut over: Vec<String> = self.quotas.over_quota().into_iter().collect();
        over.sort();
        serde_json::json!({
            "etcd": self.etcd.as_ref().map(|e| e.health()),
            "reports": self.reports.status(),
            "over_quota": over,
        })
    }
}

/// Handler state.
pub type AppState = Arc<App>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Anonymous,
    /// `Authorization: Bearer <node key>`.
    NodeKey,
    /// `Authorization: Bearer <admin key>`.
    AdminKey,
    /// `Authorization: Bearer <edge node token>` (seed 004).
    EdgeToken,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method, lower case (`get`, `post`, …).
    pub method: &'static str,
    /// Path in axum/OpenAPI form (`/api/v1/admin/nodes/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Largest request body, in bytes (a larger one is a 413).
    pub body_limit: usize,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
}

/// Declares the route table and the router built from it.
macro_rules! route_table {
    ($( $method:ident $path:literal => $handler:path, $access:ident, $body:ident, $summary:literal; )*) => {
        /// Every route served, in the order they are documented.
        pub const ROUTES: &[RouteDoc] = &[
            $( RouteDoc { method: stringify!($method), path: $path, access: Access::$access, body_limit: bounds::$body, summary: $summary }, )*
        ];

        fn routed(router: Router<AppState>, state: &AppState) -> Router<AppState> {
            $( let router = router.route(
                $path,
                measured(
                    guarded(axum::routing::$method($handler), Access::$access, bounds::$body, state),
                    $path,
                    state,
                ),
            ); )*
            router
        }
    };
}

route_table! {
    get "/healthz" => public::healthz, Anonymous, BODY_LIMIT_EMPTY, "Liveness probe";
    get "/metrics" => public::metrics, Anonymous, BODY_LIMIT_EMPTY, "Prometheus metrics (OpenMetrics when asked, else the classic text format): API requests and latency, the event drain, ACME, DNS, etcd";
    get "/api/v1/openapi.json" => openapi::document, Anonymous, BODY_LIMIT_EMPTY, "This OpenAPI document";
    get "/api/v1/public/nodes" => public::nodes, Anonymous, BODY_LIMIT_EMPTY, "Public node directory";
    post "/api/v1/invites/resolve" => public::resolve, Anonymous, BODY_LIMIT_RESOLVE, "Resolve an invite code into a ticket and frpc.toml (rate-limited per IP)";
    post "/api/v1/nodes/heartbeat" => node::heartbeat, NodeKey, BODY_LIMIT_REQUEST, "Node heartbeat with versions and load";
    get "/api/v1/nodes/policy" => node::policy, NodeKey, BODY_LIMIT_EMPTY, "The calling node's policy table for its agent (?have=<sha256>&wait=<s>: a long poll, 204 when unchanged; the body's SHA-256 and HMAC under the node key in headers)";
    post "/api/v1/nodes/events" => node::events, NodeKey, BODY_LIMIT_EVENTS, "Event batches from the calling node's agent spool (application/octet-stream, proto::event_batch); a batch already written is acknowledged, not written again";
    post "/api/v1/nodes/invites" => node::create_invite, NodeKey, BODY_LIMIT_REQUEST, "Create an invite for the calling node";
    get "/api/v1/nodes/invites" => node::list_invites, NodeKey, BODY_LIMIT_EMPTY, "List the calling node's invites";
    post "/api/v1/nodes/invites/{id}/revoke" => node::revoke_invite, NodeKey, BODY_LIMIT_EMPTY, "Revoke one of the calling node's invites";
    post "/api/v1/admin/nodes" => admin::create_node, AdminKey, BODY_LIMIT_REQUEST, "Register a node (returns its node key once)";
    get "/api/v1/admin/nodes" => admin::list_nodes, AdminKey, BODY_LIMIT_EMPTY, "List nodes";
    get "/api/v1/admin/nodes/{id}" => admin::get_node, AdminKey, BODY_LIMIT_EMPTY, "Show a node";
    get "/api/v1/admin/nodes/{id}/frps-hook" => admin::frps_hook, AdminKey, BODY_LIMIT_EMPTY, "The frps hook paths (with the node's token) and frps.toml lines for a stock frps running as this node";
    patch "/api/v1/admin/nodes/{id}" => admin::patch_node, AdminKey, BODY_LIMIT_REQUEST, "Change a node (public/private, pool, types, ...)";
    delete "/api/v1/admin/nodes/{id}" => admin::delete_node, AdminKey, BODY_LIMIT_EMPTY, "Delete a node and its invites";
    post "/api/v1/admin/nodes/{id}/invites" => admin::create_invite, AdminKey, BODY_LIMIT_REQUEST, "Create an invite on a node";
    get "/api/v1/admin/invites" => admin::list_invites, AdminKey, BODY_LIMIT_EMPTY, "List invites (optionally ?node_id=)";
    post "/api/v1/admin/invites/{id}/revoke" => admin::revoke_invite, AdminKey, BODY_LIMIT_EMPTY, "Revoke any invite";
    get "/api/v1/tenants" => admin::list_tenants, AdminKey, BODY_LIMIT_EMPTY, "List tenants kept in the database (seed 002 records)";
    post "/api/v1/tenants" => admin::create_tenant, AdminKey, BODY_LIMIT_TENANT, "Create a tenant from a seed 002 JSON record";
    get "/api/v1/tenants/{token}" => admin::get_tenant, AdminKey, BODY_LIMIT_EMPTY, "Show a tenant";
    put "/api/v1/tenants/{token}" => admin::replace_tenant, AdminKey, BODY_LIMIT_TENANT, "Replace a tenant's record (token from the path if the body leaves it out)";
    delete "/api/v1/tenants/{token}" => admin::delete_tenant, AdminKey, BODY_LIMIT_EMPTY, "Delete a tenant";
    get "/api/v1/admin/audit" => admin::audit, AdminKey, BODY_LIMIT_EMPTY, "Query the audit log (?kind=&node_id=&invite_id=&since_ms=&limit=)";
    get "/api/v1/admin/stats" => admin::stats, AdminKey, BODY_LIMIT_EMPTY, "Counts, traffic, event drops, per-worker policy generation";
    get "/ws/control" => mesh_ws::control, Anonymous, BODY_LIMIT_EMPTY, "Mesh: a node's control channel (WebSocket, seed 003 frames)";
    get "/api/v1/mesh/networks" => mesh::list_networks, AdminKey, BODY_LIMIT_EMPTY, "Mesh: list networks";
    post "/api/v1/mesh/networks" => mesh::create_network, AdminKey, BODY_LIMIT_REQUEST, "Mesh: create a network {name, subnet, description}";
    put "/api/v1/mesh/networks/{id}" => mesh::update_network, AdminKey, BODY_LIMIT_REQUEST, "Mesh: change a network (subnet only while no node has an address)";
    delete "/api/v1/mesh/networks/{id}" => mesh::delete_network, AdminKey, BODY_LIMIT_EMPTY, "Mesh: delete a network and its nodes";
    get "/api/v1/mesh/nodes" => mesh::list_nodes, AdminKey, BODY_LIMIT_EMPTY, "Mesh: list nodes (?network_id=)";
    get "/api/v1/mesh/nodes/{id}" => mesh::get_node, AdminKey, BODY_LIMIT_EMPTY, "Mesh: show a node";
    post "/api/v1/mesh/nodes/{id}/authorize" => mesh::authorize_node, AdminKey, BODY_LIMIT_EMPTY, "Mesh: authorize a node (gives it a virtual IP)";
    post "/api/v1/mesh/nodes/{id}/deauthorize" => mesh::deauthorize_node, AdminKey, BODY_LIMIT_EMPTY, "Mesh: take a node's authorization away";
    post "/api/v1/mesh/nodes/{id}/rename" => mesh::rename_node, AdminKey, BODY_LIMIT_REQUEST, "Mesh: rename a node {name}";
    delete "/api/v1/mesh/nodes/{id}" => mesh::delete_node, AdminKey, BODY_LIMIT_EMPTY, "Mesh: delete a node";
    get "/api/v1/mesh/nodes/{id}/routes" => mesh::node_routes, AdminKey, BODY_LIMIT_EMPTY, "Mesh: a node's subnet routes";
    post "/api/v1/mesh/nodes/{id}/routes" => mesh::add_route, AdminKey, BODY_LIMIT_REQUEST, "Mesh: add a subnet route {cidr, priority, weight, enabled}";
    put "/api/v1/mesh/nodes/{id}/routes/{rid}" => mesh::update_route, AdminKey, BODY_LIMIT_REQUEST, "Mesh: change a route's priority, weight or state";
    delete "/api/v1/mesh/nodes/{id}/routes/{rid}" => mesh::delete_route, AdminKey, BODY_LIMIT_EMPTY, "Mesh: remove a route";
    get "/api/v1/mesh/routes" => mesh::aggregated_routes, AdminKey, BODY_LIMIT_EMPTY, "Mesh: every route, grouped by CIDR";
    get "/ws/server" => mesh_server_ws::server, Anonymous, BODY_LIMIT_EMPTY, "Mesh: a relay or STUN server's channel (WebSocket, seed 003 frames; server token)";
    get "/api/v1/mesh/servers" => mesh::list_servers, AdminKey, BODY_LIMIT_EMPTY, "Mesh: list relay and STUN servers";
    post "/api/v1/mesh/servers" => mesh::create_server, AdminKey, BODY_LIMIT_REQUEST, "Mesh: add a server {name, url, region, capabilities, stun_ip, stun_ip2, stun_port, enabled}; answers its token once";
    get "/api/v1/mesh/servers/{id}" => mesh::get_server, AdminKey, BODY_LIMIT_EMPTY, "Mesh: show a server";
    put "/api/v1/mesh/servers/{id}" => mesh::update_server, AdminKey, BODY_LIMIT_REQUEST, "Mesh: change a server (enable, disable, url, ...)";
    delete "/api/v1/mesh/servers/{id}" => mesh::delete_server, AdminKey, BODY_LIMIT_EMPTY, "Mesh: delete a server (its token is blacklisted)";
    post "/api/v1/mesh/servers/{id}/token" => mesh::regenerate_server_token, AdminKey, BODY_LIMIT_EMPTY, "Mesh: a new server token; the old one is blacklisted";
    get "/api/v1/mesh/tokens/blacklist" => mesh::blacklist, AdminKey, BODY_LIMIT_EMPTY, "Mesh: revoked token ids";
    post "/api/v1/mesh/tokens/blacklist" => mesh::revoke_token, AdminKey, BODY_LIMIT_REQUEST, "Mesh: revoke a token by id {jti, reason, expires_at}";
    get "/api/v1/mesh/latency/matrix" => mesh::latency_matrix, AdminKey, BODY_LIMIT_EMPTY, "Mesh: measured latencies";
    get "/api/v1/mesh/settings" => mesh::get_settings, AdminKey, BODY_LIMIT_EMPTY, "Mesh: controller settings";
    put "/api/v1/mesh/settings" => mesh::put_settings, AdminKey, BODY_LIMIT_REQUEST, "Mesh: change settings";
    get "/api/v1/mesh/stats/overview" => mesh::overview, AdminKey, BODY_LIMIT_EMPTY, "Mesh: counts of networks, nodes, routes, servers";
    post "/api/v1/origins" => edge::create_origin, AdminKey, BODY_LIMIT_REQUEST, "Edge: add an origin {name, wireguard_ip, wireguard_public_key} or a tunnel origin {name, invite_id, proxy_name}";
    get "/api/v1/origins" => edge::list_origins, AdminKey, BODY_LIMIT_EMPTY, "Edge: list origins";
    get "/api/v1/origins/{id}" => edge::get_origin, AdminKey, BODY_LIMIT_EMPTY, "Edge: show an origin";
    delete "/api/v1/origins/{id}" => edge::delete_origin, AdminKey, BODY_LIMIT_EMPTY, "Edge: delete an origin no route uses";
    post "/api/v1/routes" => edge::create_route, AdminKey, BODY_LIMIT_REQUEST, "Edge: route a hostname {hostname, origin_id, target_port, redirect_https} (seed 004)";
    get "/api/v1/routes" => edge::list_routes, AdminKey, BODY_LIMIT_EMPTY, "Edge: list routes";
    get "/api/v1/routes/{id}" => edge::get_route, AdminKey, BODY_LIMIT_EMPTY, "Edge: show a route";
    delete "/api/v1/routes/{id}" => edge::delete_route, AdminKey, BODY_LIMIT_EMPTY, "Edge: delete a route (its hostname is no longer served)";
    post "/api/v1/edge-nodes" => edge::create_edge_node, AdminKey, BODY_LIMIT_REQUEST, "Edge: register an edge node {name}; answers its token once";
    get "/api/v1/edge-nodes" => edge::list_edge_nodes, AdminKey, BODY_LIMIT_EMPTY, "Edge: list edge nodes";
    get "/api/v1/edge-nodes/me/config" => edge::my_config, EdgeToken, BODY_LIMIT_EMPTY, "Edge: the calling edge node's config {config_hash, routes, hostnames} (ETag, If-None-Match: 304)";
    get "/api/v1/edge-nodes/me/certificates" => edge::my_certificates, EdgeToken, BODY_LIMIT_EMPTY, "Edge: valid certificates with their keys, for an edge terminating TLS itself (ETag, If-None-Match: 304)";
    delete "/api/v1/edge-nodes/{id}" => edge::delete_edge_node, AdminKey, BODY_LIMIT_EMPTY, "Edge: delete an edge node (its token stops working)";
    post "/api/v1/domains" => edge::add_domain, AdminKey, BODY_LIMIT_REQUEST, "Edge: add a user's own domain {domain}; answers the token to publish (TXT or HTTP)";
    get "/api/v1/domains" => edge::list_domains, AdminKey, BODY_LIMIT_EMPTY, "Edge: domains and their verification state";
    get "/api/v1/domains/{domain}" => edge::get_domain, AdminKey, BODY_LIMIT_EMPTY, "Edge: one domain, with what to publish";
    post "/api/v1/domains/{domain}/verify" => edge::verify_domain, AdminKey, BODY_LIMIT_EMPTY, "Edge: check a domain's token now (?method=dns|http; default both)";
    delete "/api/v1/domains/{domain}" => edge::delete_domain, AdminKey, BODY_LIMIT_EMPTY, "Edge: delete a domain no route is under";
    get "/api/v1/dns/records" => edge::dns_records, AdminKey, BODY_LIMIT_EMPTY, "Edge: the records the DNS manager keeps in its zone, and its state";
    get "/api/v1/certificates" => edge::list_certificates, AdminKey, BODY_LIMIT_EMPTY, "Edge: managed certificates and the ACME task's state";
    post "/api/v1/certificates/{hostname}/renew" => edge::renew_certificate, AdminKey, BODY_LIMIT_EMPTY, "Edge: order a new certificate for a hostname now";
    post "/api/v1/frps/auth/handshake" => frps_plugin::handshake, Anonymous, BODY_LIMIT_FRPS_HOOK, "frps server-plugin hook for Login (?token=…[&node_id=…]; seed 001's path)";
    post "/api/v1/frps/auth/proxy" => frps_plugin::new_proxy, Anonymous, BODY_LIMIT_FRPS_HOOK, "frps server-plugin hook for NewProxy (?token=…[&node_id=…]; seed 001's path)";
    post "/api/v1/frps/{node_id}/{token}/auth/handshake" => frps_plugin::handshake_at, Anonymous, BODY_LIMIT_FRPS_HOOK, "frps server-plugin hook for Login, for node_id (token: GET /api/v1/admin/nodes/{id}/frps-hook)";
    post "/api/v1/frps/{node_id}/{token}/auth/proxy" => frps_plugin::new_proxy_at, Anonymous, BODY_LIMIT_FRPS_HOOK, "frps server-plugin hook for NewProxy, for node_id";
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// A route with its guards. Layers run outermost first: the key is checked
/// from the head, and only then is the body read.
fn guarded(
    route: MethodRouter<AppState>,
    access: Access,
    body_limit: usize,
    state: &AppState,
) -> MethodRouter<AppState> {
    route
        .route_layer(middleware::from_fn(move |req: Request, next: Next| {
            bounds::read_body(body_limit, req, next)
        }))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            move |State(app): State<AppState>, req: Request, next: Next| {
                auth::guard(access, app, req, next)
            },
        ))
}

/// A route counted and timed for `/metrics`, outermost: refusals by its
/// guards (401, 403, 413) are counted too.
fn measured(
    route: MethodRouter<AppState>,
    path: &'static str,
    state: &AppState,
) -> MethodRouter<AppState> {
    let metrics = state.metrics.clone();
    route.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let method = req.method().as_str().to_owned();
            let started = std::time::Instant::now();
            let resp = next.run(req).await;
            metrics.observe(path, &method, resp.status().as_u16(), started.elapsed());
            resp
        }
    }))
}

/// The router over every route in [`ROUTES`].
pub fn router(state: AppState) -> Router {
    routed(Router::new(), &state)
        .fallback(not_found)
        .with_state(state)
}
