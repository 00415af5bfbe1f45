//! The REST API under `/api/v1`, served by axum.
//!
//! [`ROUTES`] is the one route table: the router is built from it and the
//! OpenAPI document at `/api/v1/openapi.json` is generated from it, so the
//! two cannot disagree. Handlers live by audience: [`public`] (anonymous),
//! [`node`] (node key), [`admin`] (admin key), [`frps_plugin`] (stock frps
//! server-plugin hooks). [`error`] shapes every failure as JSON.

pub mod admin;
pub mod auth;
pub mod error;
pub mod frps_plugin;
pub mod node;
pub mod openapi;
pub mod public;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::Router;

use crate::db::Db;
use crate::events_drain::DrainStatus;
use crate::policy_publish::Publisher;
use crate::rate_limit::RateLimiter;
use crate::tickets::TicketSigner;
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
}

/// The running parts behind tenants, for the stats and health endpoints.
pub struct TenantServices {
    /// The etcd source, when the node config has `[etcd]`.
    pub etcd: Option<crate::etcd::EtcdHandle>,
    /// Traffic report settings and sender status.
    pub reports: Arc<crate::traffic_reports::ReportSettings>,
    /// Quota usage and the over-quota set.
    pub quotas: Arc<crate::quota::QuotaTracker>,
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
    /// One line for the OpenAPI document.
    pub summary: &'static str,
}

/// Declares the route table and the router built from it.
macro_rules! route_table {
    ($( $method:ident $path:literal => $handler:path, $access:ident, $summary:literal; )*) => {
        /// Every route served, in the order they are documented.
        pub const ROUTES: &[RouteDoc] = &[
            $( RouteDoc { method: stringify!($method), path: $path, access: Access::$access, summary: $summary }, )*
        ];

        fn routed(router: Router<AppState>) -> Router<AppState> {
            $( let router = router.route($path, axum::routing::$method($handler)); )*
            router
        }
    };
}

route_table! {
    get "/healthz" => public::healthz, Anonymous, "Liveness probe";
    get "/api/v1/openapi.json" => openapi::document, Anonymous, "This OpenAPI document";
    get "/api/v1/public/nodes" => public::nodes, Anonymous, "Public node directory";
    post "/api/v1/invites/resolve" => public::resolve, Anonymous, "Resolve an invite code into a ticket and frpc.toml (rate-limited per IP)";
    post "/api/v1/nodes/heartbeat" => node::heartbeat, NodeKey, "Node heartbeat with versions and load";
    post "/api/v1/nodes/invites" => node::create_invite, NodeKey, "Create an invite for the calling node";
    get "/api/v1/nodes/invites" => node::list_invites, NodeKey, "List the calling node's invites";
    post "/api/v1/nodes/invites/{id}/revoke" => node::revoke_invite, NodeKey, "Revoke one of the calling node's invites";
    post "/api/v1/admin/nodes" => admin::create_node, AdminKey, "Register a node (returns its node key once)";
    get "/api/v1/admin/nodes" => admin::list_nodes, AdminKey, "List nodes";
    get "/api/v1/admin/nodes/{id}" => admin::get_node, AdminKey, "Show a node";
    patch "/api/v1/admin/nodes/{id}" => admin::patch_node, AdminKey, "Change a node (public/private, pool, types, ...)";
    delete "/api/v1/admin/nodes/{id}" => admin::delete_node, AdminKey, "Delete a node and its invites";
    post "/api/v1/admin/nodes/{id}/invites" => admin::create_invite, AdminKey, "Create an invite on a node";
    get "/api/v1/admin/invites" => admin::list_invites, AdminKey, "List invites (optionally ?node_id=)";
    post "/api/v1/admin/invites/{id}/revoke" => admin::revoke_invite, AdminKey, "Revoke any invite";
    get "/api/v1/tenants" => admin::list_tenants, AdminKey, "List tenants kept in the database (seed 002 records)";
    post "/api/v1/tenants" => admin::create_tenant, AdminKey, "Create a tenant from a seed 002 JSON record";
    get "/api/v1/tenants/{token}" => admin::get_tenant, AdminKey, "Show a tenant";
    put "/api/v1/tenants/{token}" => admin::replace_tenant, AdminKey, "Replace a tenant's record (token from the path if the body leaves it out)";
    delete "/api/v1/tenants/{token}" => admin::delete_tenant, AdminKey, "Delete a tenant";
    get "/api/v1/admin/audit" => admin::audit, AdminKey, "Query the audit log (?kind=&node_id=&invite_id=&since_ms=&limit=)";
    get "/api/v1/admin/stats" => admin::stats, AdminKey, "Counts, traffic, event drops, per-worker policy generation";
    post "/api/v1/frps/auth/handshake" => frps_plugin::handshake, Anonymous, "frps server-plugin hook for Login";
    post "/api/v1/frps/auth/proxy" => frps_plugin::new_proxy, Anonymous, "frps server-plugin hook for NewProxy";
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// The router over every route in [`ROUTES`].
pub fn router(state: AppState) -> Router {
    routed(Router::new()).fallback(not_found).with_state(state)
}
