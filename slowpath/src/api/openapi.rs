//! The OpenAPI 3 document, generated from the route table so it lists
//! exactly the routes served.

use axum::Json;
use serde_json::{json, Map, Value};

use super::{Access, ROUTES};

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
            op.insert(
                "requestBody".into(),
                json!({ "content": { "application/json": { "schema": { "type": "object" } } } }),
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
                "nodeKey": { "type": "http", "scheme": "bearer", "description": "node key from registration" }
            },
            "schemas": {
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

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}
