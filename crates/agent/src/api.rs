//! The admin API, JSON over HTTP. Reads are served from shared state without touching the event
//! loop; requests that change the node's state go through the loop and the engine.
//!
//! # Who may do what
//!
//! Every request passes [`guard`] first. With `node.admin_token_file`, a request that can
//! change the node (any method but GET and HEAD) needs `Authorization: Bearer <secret>`,
//! compared in constant time, and is answered 401 without it, before anything else happens;
//! with `node.admin_read_requires_token` reads need it too, except `GET /healthz`. Without a
//! token, a mutating request that comes from a web browser (it carries `Origin`, or a
//! `Sec-Fetch-Site` other than `none`: browsers always send these, curl and scripts never do)
//! is refused with 403 unless it also carries `X-Understudy: 1` or a JSON content type —
//! which a browser sends cross-site only after a CORS preflight this API never grants — and
//! names an IP address or `localhost` as its Host (no DNS rebinding).
//!
//! # Limits
//!
//! [`serve`] bounds what a client can hold: at most `node.admin_max_connections` connections
//! (fewer when the descriptor limit is low: [`FD_RESERVE`] descriptors stay free for the lock,
//! the epoch file, the service and its health check), further ones answered 503 and closed at
//! once; at most `node.admin_max_connections_per_ip` of them from one IP address (the same
//! answer beyond); `node.admin_header_timeout` to send each request's headers; request heads of at most
//! [`MAX_HEAD_BYTES`]; and a connection lifetime of the switchover wait plus
//! [`CONNECTION_GRACE`].
//!
//! Everything here handles what a client sent, so the lints below hold it to no unchecked
//! arithmetic, no `unwrap`/`expect`, no indexing that could panic.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{info, warn};
use understudy_engine::{Answer, State};
use understudy_status::{
    ActivationModeView, ApiError, Events, Group, Member, MemberRecord, ServiceState, Switchover,
};

use crate::config::AdminToken;

use crate::runtime::{unix_ms, ApiRequest, Shared, StartRefused, FRESH_INTERVALS};

/// The address of the client that sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub SocketAddr);

fn caller(c: Option<axum::Extension<Caller>>) -> Option<SocketAddr> {
    c.map(|axum::Extension(Caller(a))| a)
}

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    tx: mpsc::Sender<ApiRequest>,
}

/// Descriptors kept free for the agent's own work when the admin connection limit is derived
/// from `RLIMIT_NOFILE`.
pub const FD_RESERVE: u64 = 64;

/// Largest request head (request line and headers) read; the admin API takes no bodies.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A connection may live this long beyond `activation.yield_timeout` (the longest a request,
/// a switchover, can legitimately take).
pub const CONNECTION_GRACE: Duration = Duration::from_secs(60);

/// Serves the admin API on `listener` until the listener fails, within the limits of the
/// module documentation.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tx: mpsc::Sender<ApiRequest>,
) -> std::io::Result<()> {
    let app = router(shared.clone(), tx);
    let node = &shared.cfg.node;
    let limit = connection_limit(node.admin_max_connections);
    if limit < node.admin_max_connections {
        warn!(
            configured = node.admin_max_connections,
            limit, "the descriptor limit (ulimit -n) lowers the admin API's connection limit"
        );
    }
    info!(limit, header_timeout = ?node.admin_header_timeout, "admin API limits");
    let slots = Arc::new(Semaphore::new(limit));
    let per_ip = PerIp::new(node.admin_max_connections_per_ip.min(limit));
    let lifetime = shared
        .cfg
        .activation
        .yield_timeout
        .saturating_add(CONNECTION_GRACE);
    let header_timeout = node.admin_header_timeout;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient_accept_error(&e) => {
                // Out of descriptors: refusing is all we can do; the backlog waits meanwhile.
                shared.metrics.admin_connections_refused.inc();
                warn!(error = %e, "admin API: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(from_ip) = per_ip.admit(peer.ip()) else {
            refuse_busy(
                stream,
                peer,
                "too many admin API connections from this address",
            );
            shared.metrics.admin_connections_refused.inc();
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse_busy(stream, peer, "too many admin API connections; try again");
            shared.metrics.admin_connections_refused.inc();
            continue;
        };
        // Each request knows its connection's peer: a switchover or an activation is recorded
        // with who asked for it.
        let svc = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(Caller(peer))),
        );
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = (permit, from_ip);
            let tls = shared.cfg.node.admin_tls.as_ref();
            let stream = match crate::tls::accept(tls, stream, header_timeout).await {
                Ok(s) => s,
                // A probe that connected and closed: nothing to count or warn about.
                Err(crate::tls::Refused::Closed) => return,
                Err(e) => {
                    match &e {
                        crate::tls::Refused::Slow(_) => {
                            shared.metrics.admin_connections_timed_out.inc()
                        }
                        _ => shared.metrics.admin_unauthorized.inc(),
                    };
                    warn!(%peer, "admin API connection closed: {e}");
                    return;
                }
            };
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = b.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            match tokio::time::timeout(lifetime, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_timeout() => {
                    shared.metrics.admin_connections_timed_out.inc();
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    shared.metrics.admin_connections_timed_out.inc();
                }
            }
        });
    }
}

/// Connections open per source address, bounded by one limit.
#[derive(Clone)]
struct PerIp {
    limit: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`PerIp`], given back when dropped.
struct IpSlot {
    ip: IpAddr,
    per_ip: PerIp,
}

impl PerIp {
    fn new(limit: usize) -> Self {
        PerIp {
            limit,
            open: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<IpAddr, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.lock();
        let n = open.entry(ip.to_canonical()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n = n.saturating_add(1);
        Some(IpSlot {
            ip: ip.to_canonical(),
            per_ip: self.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answers 503 without reading the request and closes: the client learns why at once, and
/// the descriptor is free again before the next accept.
fn refuse_busy(stream: TcpStream, peer: SocketAddr, why: &str) {
    let body = json!({ "error": why }).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
        body.len()
    );
    // Best effort: a fresh socket's send buffer takes this without blocking. What the client
    // already sent is read and dropped, or closing would reset the connection and the client
    // might lose the answer.
    let _ = stream.try_write(head.as_bytes());
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    warn!(%peer, "admin API connection refused: {why}");
}

/// The connection limit: `configured`, lowered so that [`FD_RESERVE`] descriptors stay free
/// under `RLIMIT_NOFILE` beside those open now. At least 1.
fn connection_limit(configured: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return configured;
    };
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let room = soft.saturating_sub(open).saturating_sub(FD_RESERVE);
    usize::try_from(room)
        .unwrap_or(usize::MAX)
        .clamp(1, configured.max(1))
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ECONNABORTED | libc::ENOBUFS | libc::ENOMEM)
    ) || e.kind() == std::io::ErrorKind::ConnectionAborted
}

/// Authentication and the cross-site rule; see the module documentation.
async fn guard(AxState(api): AxState<Api>, req: Request, next: Next) -> Response {
    let node = &api.shared.cfg.node;
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    match &node.admin_token {
        Some(token) => {
            let open = reads && (!node.admin_read_requires_token || req.uri().path() == "/healthz");
            if !open && !bearer_matches(req.headers(), token) {
                api.shared.metrics.admin_unauthorized.inc();
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    if reads {
                        "this node's admin API needs Authorization: Bearer <secret of node.admin_token_file>"
                    } else {
                        "this call can change who is active: it needs Authorization: Bearer <secret of node.admin_token_file>"
                    },
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"understudy\""),
                );
                return r;
            }
        }
        None if !reads => {
            if let Some(why) = browser_refusal(req.headers()) {
                api.shared.metrics.admin_unauthorized.inc();
                return error(StatusCode::FORBIDDEN, why);
            }
        }
        None => {}
    }
    next.run(req).await
}

fn bearer_matches(headers: &HeaderMap, token: &AdminToken) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, rest)) = value.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && token.matches(rest.trim_ascii())
}

/// Why a mutating request without a configured token is refused, if it is.
fn browser_refusal(headers: &HeaderMap) -> Option<&'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let site = text("sec-fetch-site");
    let from_browser = headers.contains_key(header::ORIGIN) || site.is_some_and(|s| s != "none");
    if !from_browser {
        return None;
    }
    if matches!(site, Some("cross-site" | "same-site")) {
        return Some("cross-site requests may not change who is active; use the CLI or set node.admin_token_file");
    }
    let marked = text("x-understudy") == Some("1")
        || text(header::CONTENT_TYPE.as_str())
            .is_some_and(|c| c.trim_start().starts_with("application/json"));
    if !marked {
        return Some("a browser request may change who is active only with X-Understudy: 1 or a JSON body; use the CLI or set node.admin_token_file");
    }
    let host = text(header::HOST.as_str()).unwrap_or("");
    let bare = host
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| host.parse::<std::net::IpAddr>())
        .is_ok();
    let local = host == "localhost" || host.starts_with("localhost:");
    if !(bare || local) {
        return Some("a browser request must name this node by IP address or localhost (Host header), not by a DNS name");
    }
    None
}

/// The admin API's routes.
pub fn router(shared: Arc<Shared>, tx: mpsc::Sender<ApiRequest>) -> Router {
    let api = Api { shared, tx };
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
        .route("/service/release", post(release))
        .route("/failover/start", post(start_failover))
        .route("/config/wanted/{generation}", put(config_wanted))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    let body = ApiError {
        error: msg.into(),
        holder: None,
    };
    (code, Json(body)).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /openapi.json: GET /status, /group, /events, /metrics, /healthz, /service/activationmode, PUT /service/activationmode/hot, POST /service/switchover, /service/active-ack, /service/release, PUT /config/wanted/{generation}",
    )
}

async fn activation_mode(AxState(api): AxState<Api>) -> Response {
    let s = api.shared.status().node;
    Json(ActivationModeView {
        state: s.state,
        activation: s.activation,
        epoch: None,
    })
    .into_response()
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

async fn activate(AxState(api): AxState<Api>, from: Option<axum::Extension<Caller>>) -> Response {
    let from = caller(from);
    match ask(&api, |tx| ApiRequest::Activate(tx, from)).await {
        Ok(Answer::Activated { epoch }) => Json(ActivationModeView {
            state: State::Hot,
            activation: api.shared.status().node.activation,
            epoch: Some(epoch),
        })
        .into_response(),
        Ok(Answer::ActivateRefused { holder, reason }) => (
            StatusCode::CONFLICT,
            Json(ApiError {
                error: reason,
                holder,
            }),
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
    from: Option<axum::Extension<Caller>>,
    q: Result<axum::extract::Query<SwitchoverQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let from = caller(from);
    let Ok(axum::extract::Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is to=NODE (the standby that must take over)",
        );
    };
    let started = tokio::time::Instant::now();
    let to = q.to;
    let from_epoch = match ask(&api, |tx| ApiRequest::Switchover(tx, to, from)).await {
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
    let deadline = started
        .checked_add(cfg.activation.yield_timeout)
        .unwrap_or(started);
    while tokio::time::Instant::now() < deadline {
        let new =
            api.shared.members.read_all().into_iter().find(|m| {
                m.node.name != me && m.node.state == State::Hot && m.node.epoch > from_epoch
            });
        if let Some(m) = new {
            return Json(Switchover {
                from: me,
                to: m.node.name,
                epoch: m.node.epoch,
                took_ms: started.elapsed().as_secs_f64() * 1e3,
            })
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
    let cfg = &api.shared.cfg;
    let fresh_ms = (cfg.activation.heartbeat_interval)
        .saturating_mul(FRESH_INTERVALS)
        .as_millis() as u64;
    // etcd groups: the holder's last renewal as this node saw it, shown on the holder's row.
    let renewal = api.shared.members.renewal();
    let members = api
        .shared
        .members
        .read_all()
        .into_iter()
        .map(|mut record| {
            let age_ms = now.saturating_sub(record.last_seen_unix_ms);
            let renewal_age_ms = renewal
                .as_ref()
                .filter(|(holder, _)| *holder == record.node.name)
                .map(|(_, age)| age.as_millis() as u64);
            let agent_gone = agent_gone(cfg, &record);
            // A killed agent's record is recent for a moment; nobody vouches for it any more.
            let fresh = age_ms <= fresh_ms && !agent_gone;
            if let Some(state) = truthful_service(cfg, &record, fresh) {
                record.service = state;
                record.pid = None;
            }
            Member {
                record,
                age_ms,
                fresh,
                agent_gone,
                renewal_age_ms,
            }
        })
        .collect();
    let s = api.shared.status().node;
    Json(Group {
        group: s.group,
        asked: s.name,
        members,
    })
    .into_response()
}

/// True when the record's agent ran on this host (this machine and pid namespace) and no longer
/// runs. A record from another host (a shared filesystem, another container, another machine
/// on etcd) names a pid that means nothing here. The engine judges by the same rule (review 26,
/// F11: on etcd this page said alive what the engine already counted gone).
fn agent_gone(cfg: &crate::Config, m: &MemberRecord) -> bool {
    understudy_coordinator::same_host(m)
        && m.node.name != cfg.node.name
        && !understudy_service::procwatch::can_act(m.node.agent_pid)
}

/// What a record's service must say instead of its pid when that pid may be false (None: the
/// record stands). A row never claims a pid for a process that is gone, or that nobody vouches
/// for any more (a dead agent's guardian has killed its service).
fn truthful_service(cfg: &crate::Config, m: &MemberRecord, fresh: bool) -> Option<ServiceState> {
    if m.node.name == cfg.node.name {
        return None;
    }
    if !fresh {
        return (m.service != ServiceState::Stopped).then_some(ServiceState::Unknown);
    }
    let pid = m.pid?;
    let here = understudy_coordinator::same_host(m);
    (here && !understudy_service::procwatch::can_act(pid)).then_some(ServiceState::Stopped)
}

async fn events(AxState(api): AxState<Api>) -> Response {
    let (events, takeovers) = match api.shared.timeline.lock() {
        Ok(t) => (t.events(), t.takeovers()),
        Err(p) => {
            let t = p.into_inner();
            (t.events(), t.takeovers())
        }
    };
    Json(Events {
        node: api.shared.cfg.node.name.clone(),
        events,
        takeovers,
    })
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
    let limit = (api.shared.cfg.activation.heartbeat_interval)
        .saturating_mul(10)
        .saturating_add(Duration::from_secs(1));
    let age = unix_ms().saturating_sub(last);
    if age > limit.as_millis() as u64 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the agent's event loop has not ticked for {age} ms"),
        );
    }
    Json(json!({ "ok": true })).into_response()
}

/// `POST /service/release` (the control plane's "stop failover"): the active node hands its
/// running service over as a plain server — no longer supervised or fenced, it outlives this
/// agent — and the agent leaves the group and exits. 409 unless this node is Hot and alone.
async fn release(AxState(api): AxState<Api>) -> Response {
    match ask(&api, ApiRequest::Release).await {
        Ok(Answer::Released { pid, epoch }) => {
            Json(json!({ "node": api.shared.cfg.node.name, "pid": pid, "epoch": epoch }))
                .into_response()
        }
        Ok(Answer::ReleaseRefused { reason }) => error(StatusCode::CONFLICT, reason),
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
        Err(r) => r,
    }
}

/// `POST /failover/start`: clear the group's stop of failover (a release recorded it), so that
/// its nodes take the group again. 200 names the stop cleared (`null`: there was none).
async fn start_failover(AxState(api): AxState<Api>) -> Response {
    let (tx, rx) = oneshot::channel();
    if api.tx.send(ApiRequest::StartFailover(tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    match rx.await {
        Ok(Ok(cleared)) => Json(json!({
            "node": api.shared.cfg.node.name,
            "cleared": cleared.as_ref().map(|m| m.describe()),
            "stop": cleared,
        }))
        .into_response(),
        Ok(Err(StartRefused::StillRuns(why))) => error(StatusCode::CONFLICT, why),
        Ok(Err(StartRefused::Coordinator(why))) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot start failover: {why}"),
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    }
}

/// `PUT /config/wanted/{generation}`: whoever hands this node its configuration (the control
/// plane) says which one it must run. A node that runs another is not ready and takes over only
/// once started again with it; an active keeps acting with its own until it is a standby.
async fn config_wanted(
    AxState(api): AxState<Api>,
    generation: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(axum::extract::Path(generation)) = generation else {
        return error(
            StatusCode::BAD_REQUEST,
            "the generation is a number: the digest of the configuration file's text",
        );
    };
    let (done, told) = oneshot::channel();
    let asked = ApiRequest::ConfigWanted { generation, done };
    if api.tx.send(asked).await.is_err() || told.await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    let running = api.shared.cfg.generation;
    let s = api.shared.status().node;
    Json(json!({
        "node": s.name,
        "running": running,
        "wanted": generation,
        "outdated": running != generation,
        "mode": s.state,
        "ready": s.ready,
    }))
    .into_response()
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

#[cfg(test)]
// Test code handles its own fixtures; the deny above is for what clients send.
#[allow(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn scripts_pass_and_pages_are_refused_without_a_token() {
        // curl, python, the contract's harness: no browser marks.
        assert_eq!(browser_refusal(&headers(&[])), None);
        assert_eq!(
            browser_refusal(&headers(&[(
                "content-type",
                "application/x-www-form-urlencoded"
            )])),
            None
        );
        assert_eq!(
            browser_refusal(&headers(&[("sec-fetch-site", "none")])),
            None
        );
        // A form or a simple fetch from a page.
        let page = [
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ];
        assert!(browser_refusal(&headers(&page)).is_some());
        let cross = [("sec-fetch-site", "cross-site"), ("x-understudy", "1")];
        assert!(browser_refusal(&headers(&cross)).is_some());
        // Same-origin with the marker, by IP or localhost: a deliberate local tool.
        let local = [
            ("origin", "http://127.0.0.1:7701"),
            ("x-understudy", "1"),
            ("host", "127.0.0.1:7701"),
        ];
        assert_eq!(browser_refusal(&headers(&local)), None);
        let json = [
            ("origin", "http://localhost:7701"),
            ("content-type", "application/json"),
            ("host", "localhost:7701"),
        ];
        assert_eq!(browser_refusal(&headers(&json)), None);
        // DNS rebinding: same origin as far as the browser knows, but a DNS name.
        let rebound = [
            ("origin", "http://evil.example:7701"),
            ("x-understudy", "1"),
            ("host", "evil.example:7701"),
        ];
        assert!(browser_refusal(&headers(&rebound)).is_some());
    }
}
