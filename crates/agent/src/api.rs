//! The admin API, JSON over HTTP. Reads are served from shared state without touching the event
//! loop; requests that change the node's state go through the loop and the engine.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use understudy_engine::Answer;

use crate::runtime::{unix_ms, ApiRequest, Shared, FRESH_INTERVALS};

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    tx: mpsc::Sender<ApiRequest>,
}

/// The admin API's routes.
pub fn router(shared: Arc<Shared>, tx: mpsc::Sender<ApiRequest>) -> Router {
    Router::new()
        .route("/service/activationmode", get(activation_mode))
        .route("/service/activationmode/hot", put(activate))
        .route("/service/switchover", post(switchover))
        .route("/service/active-ack", post(active_ack))
        .route("/status", get(status))
        .route("/group", get(group))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(Api { shared, tx })
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /status, /group, /events, /metrics, /healthz, /service/activationmode, PUT /service/activationmode/hot, POST /service/switchover, POST /service/active-ack",
    )
}

async fn activation_mode(AxState(api): AxState<Api>) -> Response {
    let s = api.shared.status();
    Json(json!({ "mode": s.mode, "name": s.name })).into_response()
}

async fn ask(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<Answer>) -> ApiRequest,
) -> Result<Answer, Response> {
    let (tx, rx) = oneshot::channel();
    if api.tx.send(make(tx)).await.is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping",
        ));
    }
    rx.await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))
}

async fn activate(AxState(api): AxState<Api>) -> Response {
    match ask(&api, ApiRequest::Activate).await {
        Ok(Answer::Activated { epoch }) => {
            let s = api.shared.status();
            Json(json!({ "mode": "Hot", "name": s.name, "epoch": epoch })).into_response()
        }
        Ok(Answer::ActivateRefused { holder, reason }) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": reason, "holder": holder })),
        )
            .into_response(),
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
        Err(r) => r,
    }
}

/// `POST /service/switchover?to=NODE`: the standby that must take over (any ready one without).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverQuery {
    to: Option<String>,
}

async fn switchover(
    AxState(api): AxState<Api>,
    q: Result<axum::extract::Query<SwitchoverQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is to=NODE (the standby that must take over)",
        );
    };
    let started = tokio::time::Instant::now();
    let to = q.to;
    let from_epoch = match ask(&api, |tx| ApiRequest::Switchover(tx, to)).await {
        Ok(Answer::SwitchoverStarted { epoch }) => epoch,
        Ok(Answer::SwitchoverRefused { reason }) => return error(StatusCode::CONFLICT, reason),
        Ok(other) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected answer {other:?}"),
            )
        }
        Err(r) => return r,
    };
    // Report who took over: wait for a peer to advertise Hot with a newer epoch.
    let cfg = &api.shared.cfg;
    let me = cfg.node.name.clone();
    let deadline = started + cfg.activation.yield_timeout;
    while tokio::time::Instant::now() < deadline {
        let new = api
            .shared
            .members
            .read_all()
            .into_iter()
            .find(|m| m.node != me && m.mode == "Hot" && m.epoch > from_epoch);
        if let Some(m) = new {
            return Json(json!({
                "from": me,
                "to": m.node,
                "epoch": m.epoch,
                "took_ms": started.elapsed().as_secs_f64() * 1e3,
            }))
            .into_response();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    error(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "{me} stepped down but no standby became Hot within {}; {me} campaigns again",
            humantime::format_duration(cfg.activation.yield_timeout)
        ),
    )
}

/// `POST /service/active-ack` body: the service, told it is active, says it acts with `epoch`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActiveAck {
    pid: u32,
    epoch: u64,
}

/// Only the takeover timeline uses it (the engine keeps it when `pid` is the active service and
/// `epoch` the node's), so it needs no token and never waits for the event loop.
async fn active_ack(AxState(api): AxState<Api>, body: Json<ActiveAck>) -> Response {
    let Json(ActiveAck { pid, epoch }) = body;
    match api.tx.try_send(ApiRequest::ServiceAck { pid, epoch }) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "pid": pid, "epoch": epoch })),
        )
            .into_response(),
        Err(mpsc::error::TrySendError::Full(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is busy; try again",
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping")
        }
    }
}

async fn status(AxState(api): AxState<Api>) -> Response {
    Json(api.shared.status()).into_response()
}

async fn group(AxState(api): AxState<Api>) -> Response {
    let now = unix_ms();
    let fresh_ms =
        (api.shared.cfg.activation.heartbeat_interval * FRESH_INTERVALS).as_millis() as u64;
    let members: Vec<serde_json::Value> = api
        .shared
        .members
        .read_all()
        .into_iter()
        .map(|m| {
            let age = now.saturating_sub(m.last_seen_unix_ms);
            let mut v = serde_json::to_value(&m).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("age_ms".into(), json!(age));
                o.insert("fresh".into(), json!(age <= fresh_ms));
            }
            v
        })
        .collect();
    let s = api.shared.status();
    Json(json!({ "group": s.group, "asked": s.node, "members": members })).into_response()
}

async fn events(AxState(api): AxState<Api>) -> Response {
    let (events, takeovers) = match api.shared.timeline.lock() {
        Ok(t) => (t.events(), t.takeovers()),
        Err(p) => {
            let t = p.into_inner();
            (t.events(), t.takeovers())
        }
    };
    Json(json!({ "node": api.shared.cfg.node.name, "events": events, "takeovers": takeovers }))
        .into_response()
}

async fn metrics(AxState(api): AxState<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.shared.metrics.render(),
    )
        .into_response()
}

async fn healthz(AxState(api): AxState<Api>) -> Response {
    let last = api
        .shared
        .last_tick_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let limit = api.shared.cfg.activation.heartbeat_interval * 10 + Duration::from_secs(1);
    let age = unix_ms().saturating_sub(last);
    if age > limit.as_millis() as u64 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the agent's event loop has not ticked for {age} ms"),
        );
    }
    Json(json!({ "ok": true })).into_response()
}
