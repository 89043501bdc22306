//! The frame and the building blocks of understudy's two OpenAPI 3.1 documents: the agent's
//! admin API and the control plane's REST API. Both authenticate with the same bearer scheme
//! and answer errors with a schema named `Error`; each document brings its own schemas and paths.

use serde_json::{json, Value};

/// A reference to the document's `Error` schema.
pub fn error_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Error" })
}

/// A response with a JSON body of `schema`.
pub fn json_answer(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// A value of JSON type `t` or null.
pub fn nullable(t: &str) -> Value {
    json!({ "type": [t, "null"] })
}

/// A whole document: `info` from `title`, `version` and `description`, the `bearer` security
/// scheme, and the caller's `schemas` (components) and `paths`.
pub fn document(
    title: &str,
    version: &str,
    description: &str,
    schemas: Value,
    paths: Value,
) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": version, "description": description },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas
        },
        "paths": paths
    })
}
