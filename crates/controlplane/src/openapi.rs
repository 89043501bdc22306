//! The OpenAPI 3.1 document of the control plane's REST API, served at `/openapi.json`. The test
//! in `tests/api.rs` calls every operation listed here against the real router, so the document
//! cannot name an endpoint that does not exist.

use serde_json::{json, Value};
use understudy_status::openapi::{self, error_ref, json_answer};

fn name_param() -> Value {
    json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } })
}

fn server_op(summary: &str, extra_codes: &[(&str, &str)]) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert(
        "200".into(),
        json_answer(
            "the server afterwards",
            json!({ "$ref": "#/components/schemas/Server" }),
        ),
    );
    responses.insert("404".into(), json_answer("no such server", error_ref()));
    for (code, desc) in extra_codes {
        responses.insert((*code).into(), json_answer(desc, error_ref()));
    }
    json!({
        "summary": summary,
        "parameters": [name_param()],
        "security": [{ "bearer": [] }],
        "responses": responses,
    })
}

/// The document.
pub fn document() -> Value {
    openapi::document(
        "understudy control plane",
        env!("CARGO_PKG_VERSION"),
        "Add failover to trading servers, start it only from a stopped server, stop it (the active keeps running), delete it, switch over by hand, and read the failure events (document 000). Calls that change anything need `Authorization: Bearer <token>` when the plane runs with --token-file.",
        json!({
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": { "type": "string" },
                    "hint": { "type": "string", "description": "what to do instead" },
                    "forcible": { "type": "boolean", "description": "present and true when the same call with `?force=true` goes through: the refusal guards against a host that cannot confirm, and only an operator who knows its machine is gone for good should answer for it" },
                    "host_seen_unix_ms": { "type": "integer", "description": "with `forcible`: the host's last report as this refusal saw it (0: never); send it back as `?seen=` with `?force=true`, and the forced call is refused if the host reported since" },
                    "fields": { "type": "array", "items": {
                        "type": "object",
                        "properties": { "field": { "type": "string" }, "reason": { "type": "string" } }
                    }}
                }
            },
            "Service": {
                "type": "object",
                "required": ["command"],
                "additionalProperties": false,
                "properties": {
                    "command": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                    "env": { "type": "object", "additionalProperties": { "type": "string" } },
                    "health": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "http": { "type": "string" },
                            "command": { "type": "array", "items": { "type": "string" } }
                        }
                    }
                }
            },
            "ServerSpec": {
                "type": "object",
                "required": ["name", "service"],
                "additionalProperties": false,
                "properties": {
                    "name": { "type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,47}$" },
                    "host": { "type": "string", "default": "local" },
                    "service": { "$ref": "#/components/schemas/Service" }
                }
            },
            "FailoverSpec": {
                "type": "object",
                "required": ["standby", "standby_hosts"],
                "additionalProperties": false,
                "properties": {
                    "standby": { "enum": ["hot", "warm", "cold"] },
                    "standby_hosts": { "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": 8 },
                    "mode": { "enum": ["trylock", "tryheartbeat", "warm"], "default": "trylock" },
                    "preferred": { "type": "string", "description": "node name, e.g. gw-2; default the server's own node gw-1. It becomes active at start and has the higher node.priority: when several standbys could take over, it does" },
                    "failback": { "type": "string", "description": "activation.failback, a duration such as 30s: the active hands activity back to the preferred node once it has been a ready standby this long; default never" }
                }
            },
            "Server": {
                "type": "object",
                "properties": {
                    "name": { "type": "string" },
                    "host": { "type": "string" },
                    "state": { "enum": ["stopped", "running", "protected"] },
                    "service": { "$ref": "#/components/schemas/Service" },
                    "process": { "type": "object" },
                    "failover": { "type": ["object", "null"] }
                }
            }
        }),
        json!({
            "/api/health": { "get": { "summary": "the control plane answers", "responses": { "200": json_answer("ok", json!({"type": "object"})) } } },
            "/api/hosts": { "get": { "summary": "hosts that can run servers and nodes: the built-in one and every `understudy host`, with what runs there", "responses": { "200": json_answer("the hosts", json!({"type": "object"})) } } },
            "/api/hosts/{name}": { "delete": {
                "summary": "forget a host whose machine is gone for good, with every process it ran: its last report is dropped (an agent or server it listed no longer blocks start-server, start failover or stop failover) and a stop of anything placed there counts as done; refused while it reports, while an agent placed there answers, and (unless `?force=true`) while its last report lists a plain server running. A host that reports again counts again; `&seen=` with `?force=true`: the `host_seen_unix_ms` of the refusal being forced, which is refused if the host reported since",
                "parameters": [name_param()],
                "security": [{ "bearer": [] }],
                "responses": {
                    "200": json_answer("forgotten, with the keys it last reported", json!({"type": "object", "properties": { "forgotten": { "type": "string" }, "last_reported": { "type": "array", "items": { "type": "string" } } }})),
                    "404": json_answer("no such host ever reported", error_ref()),
                    "409": json_answer("the built-in host, or a host that reported within 5 s", error_ref())
                }
            } },
            "/api/hosts/{name}/desired": { "get": { "summary": "what a host should run (polled by `understudy host`)", "parameters": [name_param()], "responses": { "200": json_answer("the desired processes", json!({"type": "object"})), "422": json_answer("not a host name", error_ref()) } } },
            "/api/hosts/{name}/report": { "put": {
                "summary": "a host reports what runs there (and registers itself)",
                "parameters": [name_param()],
                "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["advertise", "processes"], "additionalProperties": false,
                    "properties": { "advertise": { "type": "string" }, "processes": { "type": "array", "maxItems": 1024 } } } } } },
                "responses": { "200": json_answer("recorded", json!({"type": "object"})), "415": json_answer("not JSON", error_ref()), "422": json_answer("bad report", error_ref()) }
            } },
            "/api/servers": {
                "get": { "summary": "every server with its failover state, live; `hosts` names where a server can be placed, `host_states` each remote host: `connected`, its last report while it is dark (`last_seen_unix_ms`), `forgotten_unix_ms` once forgotten", "responses": { "200": json_answer("the inventory", json!({"type": "object"})) } },
                "post": {
                    "summary": "add a trading server (stopped)",
                    "security": [{ "bearer": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ServerSpec" } } } },
                    "responses": {
                        "201": json_answer("added", json!({ "$ref": "#/components/schemas/Server" })),
                        "409": json_answer("the name is taken", error_ref()),
                        "415": json_answer("not JSON", error_ref()),
                        "422": json_answer("wrong fields, each named", error_ref())
                    }
                }
            },
            "/api/servers/{name}": {
                "get": { "summary": "one server", "parameters": [name_param()], "responses": {
                    "200": json_answer("the server", json!({ "$ref": "#/components/schemas/Server" })),
                    "404": json_answer("no such server", error_ref()) } },
                "delete": server_op("remove a stopped server from the inventory", &[("409", "the server runs")])
            },
            "/api/servers/{name}/start": { "post": server_op("start as a plain server, without failover", &[("409", "not stopped")]) },
            "/api/servers/{name}/stop": { "post": server_op("stop the plain server; Stopped once its host confirms (`?force=true`: the host is gone for good, Stopped without it; `&seen=` the `host_seen_unix_ms` of the refusal being forced)", &[("409", "not a running plain server (stop failover first), or its host did not confirm the stop (it stays running)")]) },
            "/api/servers/{name}/failover": {
                "put": {
                    "summary": "add (or replace) the failover service: standby type, standby hosts, activation mode, preferred node; validated in full",
                    "parameters": [name_param()],
                    "security": [{ "bearer": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/FailoverSpec" } } } },
                    "responses": {
                        "200": json_answer("added", json!({ "$ref": "#/components/schemas/Server" })),
                        "404": json_answer("no such server", error_ref()),
                        "409": json_answer("failover runs", error_ref()),
                        "415": json_answer("not JSON", error_ref()),
                        "422": json_answer("wrong fields, each named", error_ref())
                    }
                },
                "delete": server_op("remove the failover configuration; the server stays as a plain server", &[("409", "failover runs")])
            },
            "/api/servers/{name}/failover/start": { "post": server_op("start failover: only from a stopped server; boots the server and its standbys, the preferred node active", &[("409", "the server runs, or no failover service"), ("502", "a node did not come up")]) },
            "/api/servers/{name}/failover/stop": { "post": server_op("stop failover: standbys discontinued; the active's service keeps running as a plain server", &[("409", "failover is not running")]) },
            "/api/servers/{name}/failover/switchover": { "post": {
                "summary": "hand activity to a ready standby (optionally a chosen one)",
                "parameters": [name_param()],
                "security": [{ "bearer": [] }],
                "requestBody": { "required": false, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false, "properties": { "to": { "type": "string" } } } } } },
                "responses": {
                    "200": json_answer("switched over: from, to, epoch", json!({"type": "object"})),
                    "404": json_answer("no such server", error_ref()),
                    "409": json_answer("refused (no ready standby, failover not running)", error_ref()),
                    "422": json_answer("`to` is not a node of the group", error_ref())
                }
            } },
            "/api/servers/{name}/events": { "get": {
                "summary": "the server's failure events, newest first, kept across restarts",
                "parameters": [name_param(),
                    { "name": "format", "in": "query", "schema": { "enum": ["json", "csv"] } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 } }],
                "responses": {
                    "200": { "description": "the events", "content": { "application/json": { "schema": { "type": "object" } }, "text/csv": { "schema": { "type": "string" } } } },
                    "400": json_answer("bad query", error_ref()),
                    "404": json_answer("no such server", error_ref())
                }
            } },
            "/api/config": { "get": { "summary": "the whole configuration (servers and their failover services, and the files kept from the last import: include fragments), as `ctl export` writes it", "responses": { "200": json_answer("the configuration", json!({"type": "object"})) } } },
            "/api/config/import": { "post": {
                "summary": "validate a whole configuration and show the difference; with apply=true change the inventory (all or nothing); prune=true removes servers not in it",
                "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["servers"], "additionalProperties": false,
                    "properties": { "servers": { "type": "array" }, "files": { "type": "object", "description": "files kept as written: servers' files that use include, and the fragments (relative path → text)", "additionalProperties": { "type": "string" } }, "apply": { "type": "boolean" }, "prune": { "type": "boolean" } } } } } },
                "responses": {
                    "200": json_answer("the difference (and whether it was applied)", json!({"type": "object"})),
                    "415": json_answer("not JSON", error_ref()),
                    "422": json_answer("errors, per server; nothing changed", error_ref())
                }
            } },
            "/api/stream": { "get": { "summary": "server-sent events: the whole inventory (as GET /api/servers) on every change", "responses": { "200": { "description": "text/event-stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } } } } }
        }),
    )
}
