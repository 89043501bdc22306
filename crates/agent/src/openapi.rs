//! The admin API's OpenAPI 3.1 document, served at `GET /openapi.json`. A test checks it against
//! the real router (`crates/understudy/tests/plane_agent_api.rs`): every route is documented and
//! every documented operation exists, and each documented answer is parsed from a real one.

use serde_json::{json, Value};
use understudy_status::openapi::{self, error_ref, json_answer, nullable};

/// Every route of the admin API as `(method, path)`, in the order of the document.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/service/activationmode"),
    ("put", "/service/activationmode/hot"),
    ("post", "/service/switchover"),
    ("post", "/service/active-ack"),
    ("post", "/service/release"),
    ("post", "/failover/start"),
    ("put", "/config/wanted/{generation}"),
    ("get", "/status"),
    ("get", "/group"),
    ("get", "/events"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/openapi.json"),
];

/// The document.
pub fn document() -> Value {
    let unauthorized = json_answer(
        "a token is configured and the request does not carry it (Authorization: Bearer)",
        error_ref(),
    );
    let browser = json_answer(
        "refused: a cross-site browser request without a token (see README, Security)",
        error_ref(),
    );
    openapi::document(
        "understudy agent admin API",
        env!("CARGO_PKG_VERSION"),
        "One agent (node) of a failover group. Calls that can change who is active need `Authorization: Bearer <secret>` when `node.admin_token_file` is set; reads need it too with `node.admin_read_requires_token` (except /healthz).",
        json!({
            "Error": {
                "type": "object", "required": ["error"],
                "properties": { "error": { "type": "string" } }
            },
            "ActivationMode": {
                "type": "object", "required": ["mode", "name"],
                "properties": {
                    "mode": { "enum": ["Hot", "Warm"], "description": "the current state" },
                    "name": { "enum": ["Hot", "Warm", "TryLock", "TryHeartbeat"], "description": "the configured activation mode" }
                }
            },
            "Status": {
                "type": "object",
                "required": ["node", "group", "mode", "name", "epoch", "since", "since_unix_ms", "waiting", "holds_lock", "ready", "admin", "lock_file", "agent_pid", "service"],
                "properties": {
                    "node": { "type": "string" }, "group": { "type": "string" },
                    "mode": { "enum": ["Hot", "Warm"] }, "name": { "type": "string" },
                    "epoch": { "type": "integer", "minimum": 0 },
                    "since": { "type": "string", "description": "RFC 3339" },
                    "since_unix_ms": { "type": "integer", "minimum": 0 },
                    "waiting": nullable("string"),
                    "holds_lock": { "type": "boolean" }, "ready": { "type": "boolean" },
                    "admin": { "type": "string" }, "lock_file": { "type": "string" },
                    "agent_pid": { "type": "integer", "minimum": 0 },
                    "renewal_age_ms": { "type": "integer", "minimum": 0, "description": "etcd groups: this node's view of the holder's last renewal" },
                    "service": {
                        "type": "object",
                        "required": ["state", "pid", "role", "standby", "command", "healthy", "detail"],
                        "properties": {
                            "state": { "enum": ["stopped", "starting", "running", "stopping"] },
                            "pid": nullable("integer"), "role": nullable("string"),
                            "standby": { "enum": ["hot", "warm", "cold"] },
                            "command": { "type": "array", "items": { "type": "string" } },
                            "healthy": { "type": "boolean" },
                            "detail": { "description": "what the service answered to its last passing HTTP health check" }
                        }
                    }
                }
            },
            "Member": {
                "type": "object",
                "required": ["node", "group", "admin", "mode", "name", "epoch", "since_unix_ms", "last_seen_unix_ms", "holds_lock", "ready", "service", "pid", "agent_pid", "age_ms", "fresh"],
                "properties": {
                    "node": { "type": "string" }, "group": { "type": "string" }, "admin": { "type": "string" },
                    "mode": { "enum": ["Hot", "Warm"] }, "name": { "type": "string" },
                    "epoch": { "type": "integer", "minimum": 0 },
                    "since_unix_ms": { "type": "integer" }, "last_seen_unix_ms": { "type": "integer" },
                    "holds_lock": { "type": "boolean" }, "ready": { "type": "boolean" },
                    "service": { "type": "string" }, "pid": nullable("integer"),
                    "agent_pid": { "type": "integer" }, "waiting": nullable("string"),
                    "detail": nullable("string"), "handover_to": nullable("string"),
                    "age_ms": { "type": "integer", "minimum": 0 }, "fresh": { "type": "boolean" },
                    "agent_gone": { "type": "boolean", "description": "the record's agent process is known to be gone" },
                    "renewal_age_ms": { "type": "integer", "minimum": 0, "description": "etcd groups: the holder's last renewal as the asked node saw it" },
                    "boot_id": { "type": "string", "description": "the kernel boot id of the node's machine" },
                    "pid_ns": { "type": "integer", "minimum": 0, "description": "the agent's pid namespace (inode of /proc/self/ns/pid): with boot_id, whether its pids can be judged on the asking host" },
                    "agent_start": { "type": "integer", "minimum": 0, "description": "when the agent started, in clock ticks since boot (/proc/self/stat field 22): on the same host, whether the process at agent_pid is this record's writer" },
                    "connections_refused": { "type": "integer", "minimum": 0, "description": "admin API connections refused at the node's limits" },
                    "priority": { "type": "integer", "minimum": 0, "maximum": 1000, "description": "node.priority" },
                    "stepped_down": {
                        "description": "why the node last stepped down from Hot",
                        "oneOf": [
                            { "type": "null" },
                            {
                                "type": "object", "required": ["epoch", "at_unix_ms", "reason"],
                                "properties": {
                                    "epoch": { "type": "integer", "minimum": 0 },
                                    "at_unix_ms": { "type": "integer", "minimum": 0 },
                                    "reason": { "type": "string" }
                                }
                            }
                        ]
                    }
                }
            },
            "Takeover": {
                "type": "object", "required": ["epoch", "cause", "detected_unix_ms"],
                "properties": {
                    "epoch": { "type": "integer" }, "cause": { "type": "string" },
                    "detected_unix_ms": { "type": "integer" },
                    "lock_obtained_ms": nullable("number"),
                    "previous_service_gone_ms": nullable("number"),
                    "epoch_durable_ms": nullable("number"),
                    "service_notified_ms": nullable("number"),
                    "service_acked_ms": nullable("number"),
                    "ready_ms": nullable("number")
                }
            }
        }),
        json!({
            "/service/activationmode": { "get": {
                "summary": "the node's state and configured activation mode (document 002's call)",
                "responses": { "200": json_answer("state and mode", json!({ "$ref": "#/components/schemas/ActivationMode" })), "401": unauthorized }
            } },
            "/service/activationmode/hot": { "put": {
                "summary": "make this node Hot (empty body); refused while another node holds the group lock",
                "security": [{ "bearer": [] }],
                "responses": {
                    "200": json_answer("Hot", json!({ "type": "object", "required": ["mode", "name", "epoch"],
                        "properties": { "mode": { "const": "Hot" }, "name": { "type": "string" }, "epoch": { "type": "integer" } } })),
                    "401": unauthorized, "403": browser,
                    "409": json_answer("another node holds the group lock, or the node is stopping", json!({
                        "type": "object", "required": ["error", "holder"],
                        "properties": { "error": { "type": "string" }, "holder": nullable("string") } })),
                    "503": json_answer("the agent is stopping", error_ref())
                }
            } },
            "/service/switchover": { "post": {
                "summary": "hand activity to a ready standby (the chosen one with ?to=NODE); answers once it is Hot",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "to", "in": "query", "required": false, "schema": { "type": "string" }, "description": "the standby that must take over" }],
                "responses": {
                    "200": json_answer("switched over", json!({ "type": "object", "required": ["from", "to", "epoch", "took_ms"],
                        "properties": { "from": { "type": "string" }, "to": { "type": "string" }, "epoch": { "type": "integer" }, "took_ms": { "type": "number" } } })),
                    "400": json_answer("a query parameter other than to", error_ref()),
                    "401": unauthorized, "403": browser,
                    "409": json_answer("this node is not active, or no standby is ready", error_ref()),
                    "503": json_answer("the agent is stopping", error_ref()),
                    "504": json_answer("stepped down but no standby became Hot in time; campaigns again", error_ref())
                }
            } },
            "/service/active-ack": { "post": {
                "summary": "the service, told it is active, says it acts with this epoch (for the takeover timeline)",
                "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["pid", "epoch"], "additionalProperties": false,
                    "properties": { "pid": { "type": "integer", "minimum": 0 }, "epoch": { "type": "integer", "minimum": 0 } } } } } },
                "responses": {
                    "202": json_answer("noted", json!({ "type": "object", "required": ["pid", "epoch"],
                        "properties": { "pid": { "type": "integer" }, "epoch": { "type": "integer" } } })),
                    "400": { "description": "not JSON, or wrong fields" },
                    "401": unauthorized, "403": browser,
                    "415": { "description": "not application/json" },
                    "422": { "description": "wrong field types" },
                    "503": json_answer("the agent is busy or stopping", error_ref())
                }
            } },
            "/service/release": { "post": {
                "summary": "stop failover, keep the server: the active node hands its running service over as a plain server (no longer supervised or fenced: it outlives the agent) and the agent leaves the group and exits",
                "description": "Refused unless this node is Hot with its service running and no other member of the group is alive (a standby would take over while the released service keeps acting). The control plane's `stop failover` calls it after stopping the standbys.",
                "security": [{ "bearer": [] }],
                "responses": {
                    "200": json_answer("released; the agent exits", json!({ "type": "object", "required": ["node", "pid", "epoch"],
                        "properties": { "node": { "type": "string" }, "pid": { "type": "integer", "description": "the service, now a plain server" }, "epoch": { "type": "integer", "description": "the epoch it was last told" } } })),
                    "401": unauthorized, "403": browser,
                    "409": json_answer("not the active node, or another member is alive", error_ref()),
                    "503": json_answer("the agent is stopping", error_ref())
                }
            } },
            "/failover/start": { "post": {
                "summary": "start failover again: clear the group's stop of failover, which a release recorded, so that the group's nodes take it again",
                "description": "While the stop is recorded (in etcd's leader key, without a lease, or in `<lock>.stopped` beside the lock file) no node takes the group, however long it was away: a standby that missed the release would otherwise take the group while the released service keeps acting. Call it once the released service no longer runs (the control plane's `start failover` does, after the server was stopped). Refused while that service still runs on this machine.",
                "security": [{ "bearer": [] }],
                "responses": {
                    "200": json_answer("failover runs; `cleared` names the stop cleared (null: there was none)", json!({ "type": "object", "required": ["node", "cleared", "stop"],
                        "properties": { "node": { "type": "string" }, "cleared": nullable("string"),
                            "stop": { "type": ["object", "null"], "required": ["node", "epoch", "pid", "unix_ms"],
                                "properties": { "node": { "type": "string" }, "epoch": { "type": "integer" }, "pid": { "type": "integer" }, "unix_ms": { "type": "integer" },
                                    "boot_id": nullable("string"), "pid_ns": nullable("integer"), "start_ticks": nullable("integer"),
                                    "unreadable": { "type": "string" } } } } })),
                    "401": unauthorized, "403": browser,
                    "409": json_answer("the released service still runs on this machine", error_ref()),
                    "503": json_answer("the coordinator could not clear the stop, or the agent is stopping", error_ref())
                }
            } },
            "/config/wanted/{generation}": { "put": {
                "summary": "the configuration this node must run, by its generation (the digest of the configuration file's text): a node that runs another one is not ready and takes over only once started again with it; an active keeps acting with its own until it is a standby",
                "description": "The control plane calls it on every node of a running group before it changes their configuration, so that no standby takes over with the old one, and again while a node's host has not yet started it with the new one. The generation the node runs itself wanted again makes it current.",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "generation", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 0 } }],
                "responses": {
                    "200": json_answer("noted", json!({ "type": "object", "required": ["node", "running", "wanted", "outdated", "mode", "ready"],
                        "properties": { "node": { "type": "string" }, "running": { "type": "integer", "description": "the generation this agent runs" },
                            "wanted": { "type": "integer" }, "outdated": { "type": "boolean" },
                            "mode": { "enum": ["Hot", "Warm"] }, "ready": { "type": "boolean" } } })),
                    "400": json_answer("the generation is not a number", error_ref()),
                    "401": unauthorized, "403": browser,
                    "503": json_answer("the agent is stopping", error_ref())
                }
            } },
            "/status": { "get": {
                "summary": "this node: state, epoch, since when, why not Hot, readiness, the service",
                "responses": { "200": json_answer("the node", json!({ "$ref": "#/components/schemas/Status" })), "401": unauthorized }
            } },
            "/group": { "get": {
                "summary": "every member's record, as this node reads them",
                "responses": { "200": json_answer("the group", json!({ "type": "object", "required": ["group", "asked", "members"],
                    "properties": { "group": { "type": "string" }, "asked": { "type": "string" },
                        "members": { "type": "array", "items": { "$ref": "#/components/schemas/Member" } } } })), "401": unauthorized }
            } },
            "/events": { "get": {
                "summary": "the event timeline and each takeover's phases (ms from detection)",
                "responses": { "200": json_answer("the timeline", json!({ "type": "object", "required": ["node", "events", "takeovers"],
                    "properties": { "node": { "type": "string" },
                        "events": { "type": "array", "items": { "type": "object", "required": ["at_unix_ms", "kind", "epoch", "detail"],
                            "properties": { "at_unix_ms": { "type": "integer" }, "kind": { "type": "string" }, "epoch": { "type": "integer" }, "detail": { "type": "string" } } } },
                        "takeovers": { "type": "array", "items": { "$ref": "#/components/schemas/Takeover" } } } })), "401": unauthorized }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics",
                "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": { "schema": { "type": "string" } } } }, "401": unauthorized }
            } },
            "/healthz": { "get": {
                "summary": "200 while the agent's event loop runs (never needs a token)",
                "responses": {
                    "200": json_answer("alive", json!({ "type": "object", "required": ["ok"], "properties": { "ok": { "const": true } } })),
                    "503": json_answer("the event loop has not ticked for too long", error_ref())
                }
            } },
            "/openapi.json": { "get": {
                "summary": "this document",
                "responses": { "200": json_answer("OpenAPI 3.1", json!({ "type": "object", "required": ["openapi", "paths"] })), "401": unauthorized }
            } }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_exactly_the_operations() {
        let doc = document();
        let mut listed: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for method in ops.as_object().into_iter().flatten().map(|(m, _)| m) {
                listed.push((method.clone(), path.clone()));
            }
        }
        listed.sort();
        let mut want: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        want.sort();
        assert_eq!(listed, want);
    }
}
