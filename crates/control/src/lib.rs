//! The control plane's client side: what `understudy status`, `activate` and `switchover` do
//! against an agent's admin API, and how the group is shown to a person.
#![forbid(unsafe_code)]

pub mod local;
pub mod stats;

pub use stats::{percentile, percentiles, Summary};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

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
    /// The agent answered something that is not JSON.
    #[error("{addr} answered something that is not JSON: {source}")]
    BadAnswer {
        /// The admin address.
        addr: String,
        /// What was wrong.
        #[source]
        source: reqwest::Error,
    },
}

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
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .use_rustls_tls();
        if let Some(ca) = &tls.ca {
            let cert = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| format!("{} is not a PEM certificate: {e}", ca.display()))?;
            b = b.add_root_certificate(cert).tls_built_in_root_certs(false);
        }
        if let Some(c) = &tls.cert {
            let id = reqwest::Identity::from_pem(&read(c)?).map_err(|e| {
                format!(
                    "{} is not a PEM certificate with its private key: {e}",
                    c.display()
                )
            })?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| format!("cannot set up TLS: {e}"))?;
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

    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Value, ControlError> {
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
        let body: Value = resp
            .json()
            .await
            .map_err(|source| ControlError::BadAnswer {
                addr: self.addr.clone(),
                source,
            })?;
        if !status.is_success() {
            let mut message = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            if let Some(h) = body.get("holder").and_then(Value::as_str) {
                message.push_str(&format!(" (holder: {h})"));
            }
            return Err(ControlError::Refused {
                addr: self.addr.clone(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Value, ControlError> {
        self.call(reqwest::Method::GET, "/status").await
    }

    /// `GET /group`.
    pub async fn group(&self) -> Result<Value, ControlError> {
        self.call(reqwest::Method::GET, "/group").await
    }

    /// `GET /events`.
    pub async fn events(&self) -> Result<Value, ControlError> {
        self.call(reqwest::Method::GET, "/events").await
    }

    /// `PUT /service/activationmode/hot`.
    pub async fn activate(&self) -> Result<Value, ControlError> {
        self.call(reqwest::Method::PUT, "/service/activationmode/hot")
            .await
    }

    /// `POST /service/switchover[?to=NODE]`: hand activity to a ready standby, or to `to`.
    pub async fn switchover(&self, to: Option<&str>) -> Result<Value, ControlError> {
        let path = match to {
            Some(t) => format!(
                "/service/switchover?to={}",
                t.replace('%', "%25")
                    .replace('&', "%26")
                    .replace('#', "%23")
            ),
            None => "/service/switchover".to_string(),
        };
        self.call(reqwest::Method::POST, &path).await
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
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
pub fn render_group(group: &Value) -> String {
    let mut out = String::new();
    let members = group
        .get("members")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let fresh = |m: &Value| m.get("fresh").and_then(Value::as_bool) == Some(true);
    // Epochs are unique per activation, so among fresh Hot records only the newest epoch is the
    // active; an older one is a record its (probably dead) agent has not yet refreshed or removed.
    let top = members
        .iter()
        .filter(|m| s(m, "mode") == "Hot" && fresh(m))
        .filter_map(|m| u(m, "epoch"))
        .max();
    let active: Vec<&Value> = members
        .iter()
        .filter(|m| s(m, "mode") == "Hot" && fresh(m) && u(m, "epoch") == top)
        .collect();
    out.push_str(&format!("group {}: ", s(group, "group")));
    match active.as_slice() {
        [] => out.push_str("NO ACTIVE NODE\n"),
        [a] => out.push_str(&format!(
            "active {} (epoch {}, since {})\n",
            s(a, "node"),
            u(a, "epoch").unwrap_or(0),
            u(a, "since_unix_ms").map(ago).unwrap_or_default()
        )),
        many => out.push_str(&format!(
            "{} NODES CLAIM TO BE ACTIVE WITH EPOCH {}: {}\n",
            many.len(),
            top.unwrap_or(0),
            many.iter()
                .map(|m| s(m, "node"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    out.push_str(&format!(
        "{:<12} {:<5} {:<13} {:>6} {:<16} {:<18} {:<14} {}\n",
        "NODE", "STATE", "MODE", "EPOCH", "SINCE", "SERVICE", "LAST SEEN", "ADMIN"
    ));
    for m in &members {
        let is_fresh = fresh(m);
        let superseded = s(m, "mode") == "Hot" && u(m, "epoch") < top;
        let state = match (is_fresh, superseded) {
            (false, _) => "gone".to_string(),
            (true, true) => "stale".to_string(),
            (true, false) => s(m, "mode").to_string(),
        };
        let svc = match u(m, "pid") {
            Some(p) => format!("{} pid {p}", s(m, "service")),
            None => s(m, "service").to_string(),
        };
        let mut line = format!(
            "{:<12} {:<5} {:<13} {:>6} {:<16} {:<18} {:<14} {}",
            s(m, "node"),
            state,
            s(m, "name"),
            u(m, "epoch").unwrap_or(0),
            u(m, "since_unix_ms").map(ago).unwrap_or_default(),
            svc,
            u(m, "last_seen_unix_ms").map(ago).unwrap_or_default(),
            s(m, "admin"),
        );
        if superseded && is_fresh {
            line.push_str(&format!(
                "  record of an older epoch; epoch {} is active",
                top.unwrap_or(0)
            ));
        }
        if is_fresh && s(m, "mode") == "Warm" {
            if m.get("ready").and_then(Value::as_bool) == Some(true) {
                line.push_str("  ready");
            }
            if let Some(w) = m.get("waiting").and_then(Value::as_str) {
                line.push_str(&format!("\n{:<12} └ {w}", ""));
            }
        }
        if is_fresh {
            if let Some(d) = m.get("detail").and_then(Value::as_str) {
                line.push_str(&format!("\n{:<12} └ service: {d}", ""));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The phases of a takeover in `GET /events` `takeovers[]`, in the order they normally happen:
/// the field (milliseconds from detection) and its name for a person.
pub const TAKEOVER_PHASES: &[(&str, &str)] = &[
    ("lock_obtained_ms", "lock obtained"),
    ("previous_service_gone_ms", "previous service gone"),
    ("epoch_durable_ms", "epoch durable"),
    ("service_notified_ms", "service notified"),
    ("service_acked_ms", "service acknowledged"),
    ("ready_ms", "ready"),
];

/// A takeover as a short timeline: each phase that happened, in time order, with its time from
/// detection and the step from the phase before.
fn render_takeover(t: &Value) -> String {
    let mut phases: Vec<(f64, &str)> = TAKEOVER_PHASES
        .iter()
        .filter_map(|(k, label)| Some((t.get(*k)?.as_f64()?, *label)))
        .collect();
    phases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = format!(
        "  epoch {:>4}  {}  cause: {}\n    {:>10.3} ms  {:>11}  previous active lost (detected)\n",
        u(t, "epoch").unwrap_or(0),
        u(t, "detected_unix_ms").map(ago).unwrap_or_default(),
        s(t, "cause"),
        0.0,
        ""
    );
    let mut prev = 0.0;
    for (at, label) in phases {
        out.push_str(&format!(
            "    {at:>10.3} ms  (+{:>8.3})  {label}\n",
            at - prev
        ));
        prev = at;
    }
    out
}

/// A node's takeovers (failure events) and its recent timeline, for a person.
pub fn render_events(ev: &Value) -> String {
    let mut out = String::new();
    let node = s(ev, "node");
    let takeovers = ev
        .get("takeovers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out.push_str(&format!("takeovers by {node}: {}\n", takeovers.len()));
    for t in &takeovers {
        out.push_str(&render_takeover(t));
    }
    let events = ev
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out.push_str(&format!("timeline (last {}):\n", events.len().min(30)));
    for e in events.iter().rev().take(30).rev() {
        let at = u(e, "at_unix_ms")
            .map(|m| {
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(m)).to_string()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  {at}  {:<17} epoch {:>4}  {}\n",
            s(e, "kind"),
            u(e, "epoch").unwrap_or(0),
            s(e, "detail")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_takeover_reads_as_a_timeline_in_time_order() {
        let ev = json!({"node": "b", "events": [], "takeovers": [{
            "epoch": 7, "cause": "lock", "detected_unix_ms": 1,
            "lock_obtained_ms": 0.01, "previous_service_gone_ms": 0.5, "epoch_durable_ms": 0.9,
            "service_notified_ms": 1.0, "service_acked_ms": 2.5, "ready_ms": 1.0
        }]});
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

    #[test]
    fn the_table_names_the_active_node_and_flags_two_actives() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let m = |n: &str, mode: &str| {
            json!({"node": n, "mode": mode, "name": "TryLock", "epoch": 3, "since_unix_ms": now,
                   "last_seen_unix_ms": now, "service": "running", "pid": 42, "admin": "127.0.0.1:1",
                   "fresh": true, "ready": true, "waiting": "waiting for the group lock"})
        };
        let mut b = m("b", "Warm");
        b["detail"] = json!("role=standby upstream_connected=true subscriptions=50");
        let one = render_group(&json!({"group": "g", "members": [m("a", "Hot"), b]}));
        assert!(
            one.contains("service: role=standby upstream_connected=true subscriptions=50"),
            "{one}"
        );
        assert!(one.contains("active a (epoch 3"), "{one}");
        assert!(one.contains("ready"), "{one}");
        let two = render_group(&json!({"group": "g", "members": [m("a", "Hot"), m("b", "Hot")]}));
        assert!(two.contains("2 NODES CLAIM TO BE ACTIVE"), "{two}");
        let mut newer = m("b", "Hot");
        newer["epoch"] = json!(4);
        let stale = render_group(&json!({"group": "g", "members": [m("a", "Hot"), newer]}));
        assert!(stale.contains("active b (epoch 4"), "{stale}");
        assert!(stale.contains("stale"), "{stale}");
        let none = render_group(&json!({"group": "g", "members": [m("b", "Warm")]}));
        assert!(none.contains("NO ACTIVE NODE"), "{none}");
    }
}
