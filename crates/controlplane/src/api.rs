//! The REST API and the dashboard, in one axum router. Every answer is JSON (the page and the
//! CSV export aside); every refusal is a 4xx with `error`, and `hint` or `fields` where they help.
//! Calls that change anything need the bearer token when one is configured; reads are public
//! unless the plane is started `--private`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use crate::model::{FailoverSpec, FieldError, ServerSpec};
use crate::plane::{Plane, PlaneError};

/// Largest request body accepted: a server or failover definition is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// What the router needs.
pub struct Ctx {
    /// The control plane.
    pub plane: Plane,
    /// Bearer token for mutating calls (and reads when `private`).
    pub token: Option<String>,
    /// Reads need the token too.
    pub private: bool,
    /// The latest whole view, for the live stream.
    pub view: watch::Receiver<Value>,
}

type Shared = Arc<Ctx>;

/// The router: the page at `/`, the API under `/api`, the OpenAPI document at `/openapi.json`.
pub fn router(ctx: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/openapi.json", get(openapi))
        .route("/api/health", get(health))
        .route("/api/hosts", get(hosts))
        .route("/api/hosts/{name}", axum::routing::delete(forget_host))
        .route("/api/hosts/{name}/desired", get(host_desired))
        .route("/api/hosts/{name}/report", axum::routing::put(host_report))
        .route("/api/servers", get(list).post(add_server))
        .route("/api/servers/{name}", get(one).delete(delete_server))
        .route("/api/servers/{name}/start", post(start_server))
        .route("/api/servers/{name}/stop", post(stop_server))
        .route(
            "/api/servers/{name}/failover",
            axum::routing::put(put_failover).delete(delete_failover),
        )
        .route("/api/servers/{name}/failover/start", post(start_failover))
        .route("/api/servers/{name}/failover/stop", post(stop_failover))
        .route("/api/servers/{name}/failover/switchover", post(switchover))
        .route("/api/servers/{name}/events", get(events))
        .route("/api/stream", get(stream))
        .route("/api/config", get(export))
        .route("/api/config/import", post(import))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

impl IntoResponse for PlaneError {
    fn into_response(self) -> Response {
        match self {
            PlaneError::NotFound(_) | PlaneError::UnknownHost(_) => {
                err(StatusCode::NOT_FOUND, self.to_string())
            }
            PlaneError::Exists(_) => err(StatusCode::CONFLICT, self.to_string()),
            PlaneError::Refused(r) => {
                let mut body = json!({ "error": r.reason, "hint": r.hint });
                if let Some(seen) = r.forcible {
                    body["forcible"] = json!(true);
                    body["host_seen_unix_ms"] = json!(seen);
                }
                (StatusCode::CONFLICT, Json(body)).into_response()
            }
            PlaneError::Invalid(fields) => invalid(fields),
            PlaneError::Start(m) => err(StatusCode::BAD_GATEWAY, m),
            PlaneError::Store(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            PlaneError::Host(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn invalid(fields: Vec<FieldError>) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": "invalid request: see fields",
            "fields": fields,
        })),
    )
        .into_response()
}

/// A refused request body: small, so that `Result<T, Reject>` stays cheap to return.
struct Reject(StatusCode, Value);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

/// Parse a JSON body with the path of the wrong field in the error, and a 4xx for every way it can
/// be wrong (not JSON, wrong type, unknown field, missing field).
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, Reject> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(Reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "error": "send the body as JSON with Content-Type: application/json" }),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        Reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "error": "invalid request: see fields",
                "fields": [FieldError {
                    field: if field == "." || field == "?" {
                        "(body)".into()
                    } else {
                        field
                    },
                    reason: e.into_inner().to_string(),
                }],
            }),
        )
    })
}

/// Token check: mutating calls always (when a token is set), reads when private. The token is
/// compared in constant time and never logged.
async fn auth(State(ctx): State<Shared>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let is_page = req.uri().path() == "/";
    if let Some(token) = &ctx.token {
        if mutating || (ctx.private && !is_page) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "this call needs Authorization: Bearer <token> (the file given to --token-file)",
                );
            }
        }
    } else if mutating && cross_site(req.headers()) {
        // Without a token, a web page the operator happens to open must not be able to drive the
        // plane: browsers mark cross-site requests, scripts and the CLI do not.
        return err(
            StatusCode::FORBIDDEN,
            "cross-site request refused; use the dashboard served by this control plane, or the CLI",
        );
    }
    next.run(req).await
}

fn cross_site(h: &HeaderMap) -> bool {
    let site = h
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site == "cross-site" {
        return true;
    }
    match (
        h.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        h.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => {
            let o = origin
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            o != host
        }
        _ => false,
    }
}

async fn not_found() -> Response {
    err(
        StatusCode::NOT_FOUND,
        "no such endpoint; the API is described at GET /openapi.json",
    )
}

async fn page() -> Html<&'static str> {
    Html(crate::DASHBOARD)
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

async fn health() -> Json<Value> {
    Json(json!({ "ok": true }))
}

async fn hosts(State(ctx): State<Shared>) -> Response {
    match ctx.plane.hosts_json() {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/hosts/{name}`: the host's machine is gone for good.
async fn forget_host(
    State(ctx): State<Shared>,
    Path(name): Path<String>,
    q: Result<Query<StopQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match force_query(q) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    match ctx.plane.forget_host(&name, q).await {
        Ok(keys) => Json(json!({ "forgotten": name, "last_reported": keys })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn host_desired(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    if !crate::model::valid_name(&name) || name == crate::model::LOCAL_HOST {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{name:?} cannot name a host (\"local\" is the built-in one)"),
        );
    }
    match ctx.plane.desired_json(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostReport {
    advertise: String,
    processes: Vec<crate::hostd::ProcReport>,
}

/// Most processes one host may report: far above any real placement, low enough to bound a row.
const MAX_REPORTED: usize = 1024;

async fn host_report(
    State(ctx): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    if !crate::model::valid_name(&name) || name == crate::model::LOCAL_HOST {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{name:?} cannot name a host (\"local\" is the built-in one)"),
        );
    }
    let rep: HostReport = match body(&headers, &bytes) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    if rep.advertise.parse::<std::net::IpAddr>().is_err() || rep.processes.len() > MAX_REPORTED {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "advertise must be an IP address; at most 1024 processes",
        );
    }
    let procs = serde_json::to_value(&rep.processes).unwrap_or(json!([]));
    match ctx.plane.host_report(&name, &rep.advertise, &procs) {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(ctx): State<Shared>) -> Response {
    match ctx.plane.view() {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn one(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    match ctx.plane.server_json(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn done(ctx: &Ctx, name: &str, r: Result<(), PlaneError>, code: StatusCode) -> Response {
    match r.and_then(|_| ctx.plane.server_json(name)) {
        Ok(v) => (code, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add_server(State(ctx): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    let spec: ServerSpec = match body(&headers, &bytes) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let name = spec.name.clone();
    let r = ctx.plane.add_server(spec).map(|_| ());
    done(&ctx, &name, r, StatusCode::CREATED)
}

async fn delete_server(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    match ctx.plane.delete_server(&name).await {
        Ok(()) => Json(json!({ "deleted": name })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start_server(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    let r = ctx.plane.start_server(&name).await.map(|_| ());
    done(&ctx, &name, r, StatusCode::OK)
}

#[derive(serde::Deserialize)]
struct StopQuery {
    /// The host is gone for good: Stopped without its confirmation (stop), or forgotten
    /// although it last reported a plain server running (forget).
    #[serde(default)]
    force: bool,
    /// The host's last report (Unix ms) as the refusal being forced showed it
    /// (`host_seen_unix_ms`): a host that reported since makes the force stale.
    seen: Option<u64>,
}

/// The `force` of [`StopQuery`], or the 400 for a query that is not one.
fn force_query(
    q: Result<Query<StopQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<crate::plane::Force, Reject> {
    q.map(|Query(q)| crate::plane::Force {
        given: q.force,
        seen: q.seen,
    })
    .map_err(|_| {
        Reject(
            StatusCode::BAD_REQUEST,
            json!({ "error": "query parameters: force=true|false, seen=UNIX_MS" }),
        )
    })
}

async fn stop_server(
    State(ctx): State<Shared>,
    Path(name): Path<String>,
    q: Result<Query<StopQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match force_query(q) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let r = ctx.plane.stop_server(&name, q).await.map(|_| ());
    done(&ctx, &name, r, StatusCode::OK)
}

async fn put_failover(
    State(ctx): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let spec: FailoverSpec = match body(&headers, &bytes) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let r = ctx.plane.put_failover(&name, spec).await.map(|_| ());
    done(&ctx, &name, r, StatusCode::OK)
}

async fn delete_failover(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    let r = ctx.plane.delete_failover(&name).await.map(|_| ());
    done(&ctx, &name, r, StatusCode::OK)
}

async fn start_failover(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    let r = ctx.plane.start_failover(&name).await.map(|_| ());
    ctx.plane.collect(false).await;
    done(&ctx, &name, r, StatusCode::OK)
}

async fn stop_failover(State(ctx): State<Shared>, Path(name): Path<String>) -> Response {
    let r = ctx.plane.stop_failover(&name).await.map(|_| ());
    done(&ctx, &name, r, StatusCode::OK)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SwitchoverReq {
    /// The standby to hand over to; any ready one when absent.
    to: Option<String>,
}

async fn switchover(
    State(ctx): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let req: SwitchoverReq = if bytes.is_empty() {
        SwitchoverReq::default()
    } else {
        match body(&headers, &bytes) {
            Ok(r) => r,
            Err(r) => return r.into_response(),
        }
    };
    match ctx.plane.switchover(&name, req.to).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    format: Option<String>,
    limit: Option<usize>,
}

/// Most events one answer carries.
const MAX_EVENTS: usize = 10_000;

async fn events(
    State(ctx): State<Shared>,
    Path(name): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return err(
            StatusCode::BAD_REQUEST,
            "query parameters: format=json|csv, limit=N",
        );
    };
    if let Err(e) = ctx.plane.server_json(&name) {
        return e.into_response();
    }
    let limit = q.limit.unwrap_or(200).clamp(1, MAX_EVENTS);
    let ev = match ctx.plane.store.failure_events(&name, limit) {
        Ok(v) => v,
        Err(e) => return PlaneError::from(e).into_response(),
    };
    match q.format.as_deref().unwrap_or("json") {
        "json" => Json(json!({ "server": name, "events": ev })).into_response(),
        "csv" => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"failure-events.csv\"",
                ),
            ],
            crate::export::csv(&ev),
        )
            .into_response(),
        other => err(
            StatusCode::BAD_REQUEST,
            format!("format {other:?}: use json or csv"),
        ),
    }
}

async fn stream(
    State(ctx): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let s = WatchStream::new(ctx.view.clone())
        .map(|v| Ok(Event::default().event("view").data(v.to_string())));
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

async fn export(State(ctx): State<Shared>) -> Response {
    match ctx.plane.export() {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportReq {
    servers: Vec<crate::config_io::ServerConfig>,
    /// Files kept as written (servers' files that use `include`, and the fragments).
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
    /// Change the inventory (otherwise only validate and show the difference).
    #[serde(default)]
    apply: bool,
    /// Remove servers that are not in the import.
    #[serde(default)]
    prune: bool,
}

async fn import(State(ctx): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    let req: ImportReq = match body(&headers, &bytes) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let cfg = crate::config_io::ConfigDir {
        servers: req.servers,
        files: req.files,
    };
    match ctx.plane.import(cfg, req.apply, req.prune).await {
        Ok(rep) if !rep.errors.is_empty() => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the import has errors; nothing was changed",
                "report": rep,
            })),
        )
            .into_response(),
        Ok(rep) => Json(json!({ "report": rep })).into_response(),
        Err(e) => e.into_response(),
    }
}
