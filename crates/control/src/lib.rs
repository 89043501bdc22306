//! The control plane's client side: what `understudy status`, `activate` and `switchover` do
//! against an agent's admin API, and how the group is shown to a person.
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use understudy_status::{
    ActivationModeView, ApiError, Events, FailoverStart, Group, State, Status, Switchover, Takeover,
};

/// Errors talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The agent could not be reached.
    #[error("cannot reach the agent at {addr}: {source}. Is `understudy agent` running there? (the address is node.admin in its config)")]
    Unreachable {
        /// The admin address.
        addr: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error.
    #[error("{addr} refused ({status}): {message}")]
    Refused {
        /// The admin address.
        addr: String,
        /// HTTP status.
        status: u16,
        /// The agent's explanation.
        message: String,
    },
    /// The agent answered something that is not what it should have.
    #[error("{addr} answered something that is not its admin API's {what}: {reason}")]
    BadAnswer {
        /// The admin address.
        addr: String,
        /// The answer expected (`/status`, …).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// The admin address every command that talks to an agent uses when given none: the example
/// configuration's `node.admin`.
pub const DEFAULT_AGENT: &str = "127.0.0.1:7701";

/// A client of one agent's admin API.
pub struct AgentClient {
    addr: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// TLS settings of a client of the admin API (the CLI's `--ca` and `--cert`).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificate that signed the agent's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// PEM file with a client certificate and its private key.
    pub cert: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// True when either is given: the client then speaks TLS.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    /// An HTTP client that trusts `ca` (or the system's roots without one) and presents `cert`
    /// (PEM, certificate and key) when given; also what the control plane's collector uses.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, String> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .use_rustls_tls();
        if let Some(ca) = &self.ca {
            let cert = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| format!("{} is not a PEM certificate: {e}", ca.display()))?;
            b = b.add_root_certificate(cert).tls_built_in_root_certs(false);
        }
        if let Some(c) = &self.cert {
            let id = reqwest::Identity::from_pem(&read(c)?).map_err(|e| {
                format!(
                    "{} is not a PEM certificate with its private key: {e}",
                    c.display()
                )
            })?;
            b = b.identity(id);
        }
        b.build().map_err(|e| format!("cannot set up TLS: {e}"))
    }
}

/// The environment variable the CLI reads the admin token from when no `--token-file` is given.
pub const TOKEN_ENV: &str = "UNDERSTUDY_TOKEN";

/// Reads an admin token from `file` (trimmed; the agent's `node.admin_token_file` format), or
/// else from [`TOKEN_ENV`]; `Ok(None)` when neither is given.
pub fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let (token, from) = match file {
        Some(f) => (
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the token file {}: {e}", f.display()))?,
            f.display().to_string(),
        ),
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) => (t, TOKEN_ENV.to_owned()),
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("the admin token in {from} is empty"));
    }
    Ok(Some(token.to_owned()))
}

impl AgentClient {
    /// A client for the agent at `addr` (`host:port`, or a full `http://` URL).
    pub fn new(addr: &str, timeout: Duration) -> Self {
        let addr = addr.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_default();
        AgentClient {
            addr,
            http,
            token: None,
        }
    }

    /// A client for an agent whose admin API speaks TLS (`node.admin_tls_cert`): it trusts
    /// `tls.ca` (or the system's roots without one) and presents `tls.cert` (PEM, certificate
    /// and key) when the agent requires client certificates. An `addr` without a scheme is
    /// reached over `https://`.
    pub fn new_tls(addr: &str, timeout: Duration, tls: &ClientTls) -> Result<Self, String> {
        let http = tls.http_client(timeout)?;
        let addr = addr.trim_end_matches('/');
        let addr = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("https://{addr}")
        };
        Ok(AgentClient {
            addr,
            http,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request (`node.admin_token_file`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn url(&self, path: &str) -> String {
        if self.addr.starts_with("http://") || self.addr.starts_with("https://") {
            format!("{}{path}", self.addr)
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    /// One request; a 2xx answer parsed as `T`, any other as the API's [`ApiError`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        what: &'static str,
    ) -> Result<T, ControlError> {
        // X-Understudy marks a deliberate client: the agent refuses browser requests that lack it.
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("X-Understudy", "1");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ControlError::Unreachable {
                addr: self.addr.clone(),
                source,
            })?;
        let status = resp.status();
        let bad = |what, reason: String| ControlError::BadAnswer {
            addr: self.addr.clone(),
            what,
            reason,
        };
        let body = resp.bytes().await.map_err(|e| bad(what, e.to_string()))?;
        if !status.is_success() {
            // Not every refusal is the agent's own (a proxy, an older agent): its text then.
            let message = match serde_json::from_slice::<ApiError>(&body) {
                Ok(ApiError {
                    error,
                    holder: Some(h),
                }) => format!("{error} (holder: {h})"),
                Ok(ApiError { error, .. }) => error,
                Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
            };
            return Err(ControlError::Refused {
                addr: self.addr.clone(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| bad(what, e.to_string()))
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, ControlError> {
        self.call(reqwest::Method::GET, "/status", "/status").await
    }

    /// `GET /group`.
    pub async fn group(&self) -> Result<Group, ControlError> {
        self.call(reqwest::Method::GET, "/group", "/group").await
    }

    /// `GET /events`.
    pub async fn events(&self) -> Result<Events, ControlError> {
        self.call(reqwest::Method::GET, "/events", "/events").await
    }

    /// `PUT /service/activationmode/hot`.
    pub async fn activate(&self) -> Result<ActivationModeView, ControlError> {
        self.call(
            reqwest::Method::PUT,
            "/service/activationmode/hot",
            "activation answer",
        )
        .await
    }

    /// `POST /service/switchover[?to=NODE]`: hand activity to a ready standby, or to `to`.
    pub async fn switchover(&self, to: Option<&str>) -> Result<Switchover, ControlError> {
        let path = match to {
            Some(t) => format!(
                "/service/switchover?to={}",
                t.replace('%', "%25")
                    .replace('&', "%26")
                    .replace('#', "%23")
            ),
            None => "/service/switchover".to_string(),
        };
        self.call(reqwest::Method::POST, &path, "switchover answer")
            .await
    }

    /// `POST /failover/start`: clear the group's stop of failover (a release recorded it).
    pub async fn start_failover(&self) -> Result<FailoverStart, ControlError> {
        self.call(
            reqwest::Method::POST,
            "/failover/start",
            "start failover answer",
        )
        .await
    }
}

/// "12.3 s ago", "4 min ago" for a Unix-millisecond timestamp.
pub fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let d = now.saturating_sub(unix_ms);
    if d < 1_000 {
        format!("{d} ms ago")
    } else if d < 120_000 {
        format!("{:.1} s ago", d as f64 / 1000.0)
    } else if d < 7_200_000 {
        format!("{} min ago", d / 60_000)
    } else {
        format!("{} h ago", d / 3_600_000)
    }
}

/// The group as a table a person reads at a glance: who is active, with which epoch, since when.
pub fn render_group(group: &Group) -> String {
    let mut out = format!("group {}: ", group.group);
    let top = group.active_epoch();
    match group.actives().as_slice() {
        [] => out.push_str("NO ACTIVE NODE\n"),
        [a] => {
            let n = &a.record.node;
            out.push_str(&format!(
                "active {} (epoch {}, since {})\n",
                n.name,
                n.epoch,
                ago(n.since_unix_ms)
            ))
        }
        many => out.push_str(&format!(
            "{} NODES CLAIM TO BE ACTIVE WITH EPOCH {}: {}\n",
            many.len(),
            top.unwrap_or(0),
            many.iter()
                .map(|m| m.record.node.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    out.push_str(&format!(
        "{:<12} {:<5} {:<13} {:>6} {:<16} {:<18} {:<14} {}\n",
        "NODE", "STATE", "MODE", "EPOCH", "SINCE", "SERVICE", "LAST SEEN", "ADMIN"
    ));
    for m in &group.members {
        let (r, n) = (&m.record, &m.record.node);
        let superseded = group.superseded(m);
        let state = match (m.fresh, superseded) {
            (false, _) => "gone".to_string(),
            (true, true) => "stale".to_string(),
            (true, false) => n.state.to_string(),
        };
        let svc = match r.pid {
            Some(p) => format!("{} pid {p}", r.service),
            None => r.service.to_string(),
        };
        let mut line = format!(
            "{:<12} {:<5} {:<13} {:>6} {:<16} {:<18} {:<14} {}",
            n.name,
            state,
            n.activation.to_string(),
            n.epoch,
            ago(n.since_unix_ms),
            svc,
            ago(r.last_seen_unix_ms),
            n.admin,
        );
        if let Some(age) = m.renewal_age_ms {
            line.push_str(&format!("  renewed {age} ms ago"));
        }
        if superseded {
            line.push_str(&format!(
                "  record of an older epoch; epoch {} is active",
                top.unwrap_or(0)
            ));
        }
        if m.fresh && n.state == State::Warm {
            if n.ready {
                line.push_str("  ready");
            }
            if let Some(w) = &n.waiting {
                line.push_str(&format!("\n{:<12} └ {w}", ""));
            }
        }
        if m.fresh {
            if let Some(d) = &r.detail {
                line.push_str(&format!("\n{:<12} └ service: {d}", ""));
            }
            let refused = m.record.connections_refused;
            if refused > 0 {
                line.push_str(&format!(
                    "\n{:<12} └ admin API: {refused} connections refused at its limits",
                    ""
                ));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A takeover as a short timeline: each phase that happened, in time order, with its time from
/// detection and the step from the phase before.
fn render_takeover(t: &Takeover) -> String {
    let mut out = format!(
        "  epoch {:>4}  {}  cause: {}\n    {:>10.3} ms  {:>11}  previous active lost (detected)\n",
        t.epoch,
        ago(t.detected_unix_ms),
        t.cause,
        0.0,
        ""
    );
    let mut prev = 0.0;
    for (at, label) in t.timeline() {
        out.push_str(&format!(
            "    {at:>10.3} ms  (+{:>8.3})  {label}\n",
            at - prev
        ));
        prev = at;
    }
    out
}

/// A node's takeovers (failure events) and its recent timeline, for a person.
pub fn render_events(ev: &Events) -> String {
    let mut out = format!("takeovers by {}: {}\n", ev.node, ev.takeovers.len());
    for t in &ev.takeovers {
        out.push_str(&render_takeover(t));
    }
    let shown = &ev.events[ev.events.len().saturating_sub(30)..];
    out.push_str(&format!("timeline (last {}):\n", shown.len()));
    for e in shown {
        let at = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.at_unix_ms));
        out.push_str(&format!(
            "  {at}  {:<17} epoch {:>4}  {}\n",
            e.kind.as_str(),
            e.epoch,
            e.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_status::{ActivationMode, Member, MemberRecord, Node, ServiceState};

    #[test]
    fn a_takeover_reads_as_a_timeline_in_time_order() {
        let ev = serde_json::from_value(
            serde_json::json!({"node": "b", "events": [], "takeovers": [{
                "epoch": 7, "cause": "lock", "detected_unix_ms": 1,
                "lock_obtained_ms": 0.01, "previous_service_gone_ms": 0.5, "epoch_durable_ms": 0.9,
                "service_notified_ms": 1.0, "service_acked_ms": 2.5, "ready_ms": 1.0
            }]}),
        )
        .unwrap();
        let text = render_events(&ev);
        let order: Vec<usize> = [
            "previous active lost",
            "lock obtained",
            "previous service gone",
            "epoch durable",
            "service notified",
            "ready",
            "service acknowledged",
        ]
        .iter()
        .map(|l| {
            text.find(l)
                .unwrap_or_else(|| panic!("{l} missing: {text}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.contains("2.500 ms  (+   1.500)  service acknowledged"),
            "{text}"
        );
    }

    fn member(name: &str, state: State, epoch: u64) -> Member {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        Member {
            record: MemberRecord {
                last_seen_unix_ms: now,
                service: ServiceState::Running,
                pid: Some(42),
                ..MemberRecord::of(Node {
                    name: name.into(),
                    group: "g".into(),
                    state,
                    activation: ActivationMode::TryLock,
                    epoch,
                    since_unix_ms: now,
                    waiting: Some("waiting for the group lock".into()),
                    holds_lock: state == State::Hot,
                    ready: true,
                    admin: "127.0.0.1:1".into(),
                    agent_pid: 41,
                })
            },
            age_ms: 0,
            fresh: true,
            agent_gone: false,
            renewal_age_ms: None,
        }
    }

    fn group(members: Vec<Member>) -> Group {
        Group {
            group: "g".into(),
            asked: "a".into(),
            members,
        }
    }

    #[test]
    fn the_table_names_the_active_node_and_flags_two_actives() {
        let mut b = member("b", State::Warm, 3);
        b.record.detail = Some("role=standby upstream_connected=true subscriptions=50".into());
        let one = render_group(&group(vec![member("a", State::Hot, 3), b]));
        assert!(
            one.contains("service: role=standby upstream_connected=true subscriptions=50"),
            "{one}"
        );
        assert!(one.contains("active a (epoch 3"), "{one}");
        assert!(one.contains("ready"), "{one}");
        assert!(one.contains("TryLock"), "{one}");
        assert!(one.contains("running pid 42"), "{one}");
        let two = render_group(&group(vec![
            member("a", State::Hot, 3),
            member("b", State::Hot, 3),
        ]));
        assert!(two.contains("2 NODES CLAIM TO BE ACTIVE"), "{two}");
        let stale = render_group(&group(vec![
            member("a", State::Hot, 3),
            member("b", State::Hot, 4),
        ]));
        assert!(stale.contains("active b (epoch 4"), "{stale}");
        assert!(stale.contains("stale"), "{stale}");
        let mut gone = member("a", State::Hot, 5);
        gone.fresh = false;
        let none = render_group(&group(vec![gone, member("b", State::Warm, 3)]));
        assert!(none.contains("NO ACTIVE NODE"), "{none}");
        assert!(
            none.lines()
                .any(|l| l.starts_with("a ") && l.contains("gone")),
            "{none}"
        );
    }

    #[test]
    fn an_etcd_holder_shows_its_last_renewal_age() {
        let mut a = member("a", State::Hot, 3);
        a.renewal_age_ms = Some(12);
        let text = render_group(&group(vec![a, member("b", State::Warm, 3)]));
        let line = |n: &str| text.lines().find(|l| l.starts_with(n)).unwrap_or_default();
        assert!(line("a ").contains("renewed 12 ms ago"), "{text}");
        assert!(!line("b ").contains("renewed"), "{text}");
    }
}
