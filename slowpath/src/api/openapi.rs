//! The OpenAPI 3 document, generated from the route table so it lists
//! exactly the routes served.

use axum::Json;
use serde_json::{json, Map, Value};

use super::{Access, ROUTES};
use crate::domain::invites;
use crate::domain::tickets;

/// Builds the document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(route.summary));
        op.insert(
            "operationId".into(),
            json!(format!("{} {}", route.method, route.path)),
        );
        match route.access {
            Access::Anonymous => {}
            Access::NodeKey => {
                op.insert("security".into(), json!([{ "nodeKey": [] }]));
            }
            Access::AdminKey => {
                op.insert("security".into(), json!([{ "adminKey": [] }]));
            }
            Access::EdgeToken => {
                op.insert("security".into(), json!([{ "edgeToken": [] }]));
            }
        }
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if matches!(route.method, "post" | "patch" | "put") {
            // The invite-create routes say their fields and the defaults a
            // request that leaves one out gets; the others take any object.
            let schema = if route.method == "post" && route.path.ends_with("/invites") {
                json!({ "$ref": "#/components/schemas/NewInvite" })
            } else {
                json!({ "type": "object" })
            };
            op.insert(
                "requestBody".into(),
                json!({ "content": { "application/json": { "schema": schema } } }),
            );
        }
        op.insert(
            "responses".into(),
            json!({
                "200": { "description": "success (201 for creations, 204 for deletions)" },
                "default": { "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }),
        );
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.to_owned(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Totoro slowpath API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminKey": { "type": "http", "scheme": "bearer", "description": "ADMIN_API_KEY" },
                "nodeKey": { "type": "http", "scheme": "bearer", "description": "node key from registration" },
                "edgeToken": { "type": "http", "scheme": "bearer", "description": "edge node token from registration (seed 004)" }
            },
            "schemas": {
                "NewInvite": new_invite_schema(),
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": { "type": "string" },
                        "field": { "type": "string", "nullable": true }
                    },
                    "required": ["error", "field"]
                }
            }
        }
    })
}

/// An invite-create body, with the defaults from [`invites`] (0 =
/// unlimited where the description says so).
fn new_invite_schema() -> Value {
    let unlimited = "0 = unlimited";
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "ttl_s": { "type": "integer", "minimum": 1, "maximum": invites::MAX_TTL_S, "default": invites::DEFAULT_TTL_S, "description": "invite lifetime, seconds" },
            "max_uses": { "type": "integer", "minimum": 0, "default": invites::DEFAULT_MAX_USES, "description": format!("resolves allowed; {unlimited}") },
            "ticket_ttl_s": { "type": "integer", "minimum": tickets::MIN_TICKET_TTL_S, "maximum": tickets::MAX_TICKET_TTL_S, "default": tickets::DEFAULT_TICKET_TTL_S, "description": "lifetime of each ticket, seconds" },
            "note": { "type": "string", "maxLength": 1024, "default": "" },
            "scope": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "proxy_types": { "type": "array", "items": { "type": "string" }, "description": "a subset of the node's; default: the node's" },
                    "port_pool": { "type": "string", "description": "inside the node's pool, e.g. \"2000-2099,3000\"; default: the node's" },
                    "max_conns": { "type": "integer", "minimum": 0, "default": invites::DEFAULT_MAX_CONNS, "description": format!("concurrent frpc sessions; {unlimited}") },
                    "max_proxies": { "type": "integer", "minimum": 0, "default": invites::DEFAULT_MAX_PROXIES, "description": format!("proxies across the invite's sessions; {unlimited}") },
                    "domain_suffix": { "type": "string", "default": "" },
                    "auto_subdomain": { "type": "boolean", "default": false, "description": "assign the invite one subdomain of its own under the node's sub_domain_host (needs http or https in proxy_types)" }
                }
            }
        }
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}
