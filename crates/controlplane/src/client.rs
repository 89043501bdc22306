//! The control plane's client side for `understudy ctl`: send one API call, and say its answer
//! to a person in a few lines.

use std::time::Duration;

pub use reqwest::Method;
use serde_json::Value;

/// One API call.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path and query, e.g. `/api/servers/gw/failover/start`.
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

/// Errors reaching the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not reachable, or the answer could not be read.
    #[error(
        "cannot reach the control plane at {base}: {source}. Is `understudy serve` running there?"
    )]
    Unreachable {
        /// The control plane's URL.
        base: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
}

/// The control plane's base URL from `--control` (`host:port` or a URL).
pub fn base_url(control: &str) -> String {
    let b = control.trim_end_matches('/');
    if b.starts_with("http://") || b.starts_with("https://") {
        b.to_string()
    } else {
        format!("http://{b}")
    }
}

/// A path segment with `/` and `?` escaped, so a name cannot reach another endpoint.
pub fn seg(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('#', "%23")
}

/// Send `call`; the HTTP status and the body's text.
pub async fn send(
    base: &str,
    token: Option<&str>,
    call: Call,
) -> Result<(u16, String), ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        base: base.to_string(),
        source,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let mut req = http.request(call.method, format!("{base}{}", call.path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = call.body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(unreachable)?;
    let code = resp.status().as_u16();
    let text = resp.text().await.map_err(unreachable)?;
    Ok((code, text))
}

/// What kind of answer to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `GET /api/servers`.
    Servers,
    /// One server.
    Server,
    /// A switchover.
    Switchover,
    /// Failure events (JSON).
    Events,
    /// A deletion.
    Deleted,
    /// The configuration (written to files by the caller).
    Export,
    /// An import's difference report.
    Import,
    /// `GET /api/hosts`.
    Hosts,
    /// A host forgotten.
    Forgotten,
}

/// A refusal in words: the error, what to do, and each wrong field.
pub fn refusal_text(v: &Value) -> String {
    if v.get("report").is_some() {
        return import_text(v);
    }
    let mut s = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("(no reason given)")
        .to_string();
    if let Some(h) = v.get("hint").and_then(Value::as_str) {
        s.push_str(&format!("\n  what to do: {h}"));
    }
    if let Some(f) = v.get("fields").and_then(Value::as_array) {
        for e in f {
            s.push_str(&format!(
                "\n  {}: {}",
                e.get("field").and_then(Value::as_str).unwrap_or("?"),
                e.get("reason").and_then(Value::as_str).unwrap_or("?")
            ));
        }
    }
    s
}

fn server_line(s: &Value) -> String {
    let name = s.get("name").and_then(Value::as_str).unwrap_or("?");
    let state = s.get("state").and_then(Value::as_str).unwrap_or("?");
    let mut line = format!("{name:<16} {state:<10}");
    if let Some(h) = s
        .get("unconfirmed_stop")
        .and_then(|u| u.get("host"))
        .and_then(Value::as_str)
    {
        line.push_str(&format!(
            " STOP UNCONFIRMED (host {h} never confirmed that it stopped it: it may still run there)"
        ));
    }
    match s.get("failover").filter(|f| !f.is_null()) {
        None => line.push_str(" no failover"),
        Some(f) => {
            line.push_str(&format!(
                " {} standby, {}",
                f.get("standby").and_then(Value::as_str).unwrap_or("?"),
                f.get("mode").and_then(Value::as_str).unwrap_or("?")
            ));
            if f.get("running").and_then(Value::as_bool) == Some(true) {
                match f.get("active").and_then(Value::as_str) {
                    Some(a) => line.push_str(&format!(", active {a}")),
                    None => line.push_str(", NO ACTIVE NODE"),
                }
                for n in f
                    .get("nodes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let nm = n.get("name").and_then(Value::as_str).unwrap_or("?");
                    let what = match (
                        n.get("mode").and_then(Value::as_str),
                        n.get("ready").and_then(Value::as_bool),
                    ) {
                        (Some("Hot"), _) => "active".to_string(),
                        (Some(_), Some(true)) => "standby ready".to_string(),
                        (Some(_), _) => format!(
                            "standby not ready ({})",
                            n.get("waiting").and_then(Value::as_str).unwrap_or("?")
                        ),
                        (None, _) => "unreachable".to_string(),
                    };
                    let epoch = n
                        .get("epoch")
                        .and_then(Value::as_u64)
                        .map(|e| format!(" epoch {e}"))
                        .unwrap_or_default();
                    line.push_str(&format!("\n    {nm:<14} {what}{epoch}"));
                }
            } else {
                line.push_str(", not running");
            }
        }
    }
    line
}

/// An answer in words.
pub fn render(kind: Answer, v: &Value) -> String {
    match kind {
        Answer::Servers => {
            let servers = v.get("servers").and_then(Value::as_array);
            match servers {
                Some(s) if !s.is_empty() => {
                    s.iter().map(server_line).collect::<Vec<_>>().join("\n")
                }
                _ => "no servers".to_string(),
            }
        }
        Answer::Switchover => format!(
            "switched over: {} → {} (epoch {})",
            v.get("from").and_then(Value::as_str).unwrap_or("?"),
            v.get("to").and_then(Value::as_str).unwrap_or("?"),
            v.get("epoch").map(|e| e.to_string()).unwrap_or("?".into())
        ),
        Answer::Events => {
            let ev = v.get("events").and_then(Value::as_array);
            let mut out = String::new();
            for e in ev.into_iter().flatten() {
                let mut phases: Vec<(String, f64)> = e
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.ends_with("_ms") && *k != "detected_unix_ms")
                    .filter_map(|(k, v)| Some((k.trim_end_matches("_ms").to_string(), v.as_f64()?)))
                    .collect();
                phases.sort_by(|a, b| a.1.total_cmp(&b.1));
                out.push_str(&format!(
                    "epoch {:>4}  {}  {}\n    {}\n",
                    e.get("epoch").and_then(Value::as_u64).unwrap_or(0),
                    e.get("node").and_then(Value::as_str).unwrap_or("?"),
                    e.get("detected_unix_ms")
                        .and_then(Value::as_u64)
                        .map(understudy_control::ago)
                        .unwrap_or_default(),
                    phases
                        .iter()
                        .map(|(k, v)| format!("{k} +{v}"))
                        .collect::<Vec<_>>()
                        .join(" → ")
                ));
                if let Some(c) = e.get("cause").and_then(Value::as_str) {
                    out.push_str(&format!("    cause: {c}\n"));
                }
            }
            if out.is_empty() {
                "no failure events".to_string()
            } else {
                out.trim_end().to_string()
            }
        }
        Answer::Deleted => format!(
            "deleted {}",
            v.get("deleted").and_then(Value::as_str).unwrap_or("?")
        ),
        Answer::Server => server_line(v),
        Answer::Export => "configuration exported".to_string(),
        Answer::Import => import_text(v),
        Answer::Hosts => hosts_text(v, crate::plane::unix_ms()),
        Answer::Forgotten => {
            let keys: Vec<&str> = v
                .get("last_reported")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!(
                "forgot host {} (declared gone for good); it last reported: {}",
                v.get("forgotten").and_then(Value::as_str).unwrap_or("?"),
                if keys.is_empty() {
                    "nothing".to_string()
                } else {
                    keys.join(", ")
                }
            )
        }
    }
}

/// `GET /api/hosts` in words, one host a line, judged at `now_ms`.
fn hosts_text(v: &Value, now_ms: u64) -> String {
    let mut lines = Vec::new();
    for h in v
        .get("hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = h.get("name").and_then(Value::as_str).unwrap_or("?");
        let count = h
            .get("processes")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let state = if h.get("builtin").and_then(Value::as_bool) == Some(true) {
            "built in".to_string()
        } else if h.get("forgotten_unix_ms").is_some() {
            "forgotten (declared gone for good)".to_string()
        } else {
            let ago = h
                .get("last_seen_unix_ms")
                .and_then(Value::as_u64)
                .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0);
            let connected = h.get("connected").and_then(Value::as_bool) == Some(true);
            match (connected, ago) {
                (true, _) => "connected".to_string(),
                (false, Some(a)) => format!("DISCONNECTED, last report {a:.1} s ago"),
                (false, None) => "DISCONNECTED".to_string(),
            }
        };
        lines.push(format!("{name:<16} {state}, {count} processes reported"));
    }
    lines.join("\n")
}

/// An import's report in words (also printed with a refusal: the report is in the error body).
pub fn import_text(v: &Value) -> String {
    let r = v.get("report").unwrap_or(v);
    let list = |k: &str| -> Vec<String> {
        r.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for n in list("added") {
        out.push(format!("+ {n} (new)"));
    }
    if let Some(ch) = r.get("changed").and_then(Value::as_object) {
        for (n, d) in ch {
            out.push(format!("~ {n}"));
            for line in d.as_array().into_iter().flatten() {
                out.push(format!("    {}", line.as_str().unwrap_or("?")));
            }
        }
    }
    for n in list("rolling") {
        out.push(format!(
            "  {n} runs with failover: its standbys restart with the new configuration (not ready until they have); the active keeps its own until it is a standby (switch over)"
        ));
    }
    for n in list("missing") {
        out.push(format!(
            "- {n} (not in the import; removed only with --prune)"
        ));
    }
    let unchanged = list("unchanged").len();
    if unchanged > 0 {
        out.push(format!("= {unchanged} unchanged"));
    }
    if let Some(errs) = r.get("errors").and_then(Value::as_object) {
        for (n, es) in errs {
            for e in es.as_array().into_iter().flatten() {
                out.push(format!(
                    "! {n}: {}: {}",
                    e.get("field").and_then(Value::as_str).unwrap_or("?"),
                    e.get("reason").and_then(Value::as_str).unwrap_or("?")
                ));
            }
        }
    }
    out.push(if r.get("applied").and_then(Value::as_bool) == Some(true) {
        "applied".to_string()
    } else if r
        .get("errors")
        .and_then(Value::as_object)
        .is_some_and(|e| !e.is_empty())
    {
        "nothing changed: fix the errors above".to_string()
    } else {
        "nothing changed yet: run again with --apply to apply".to_string()
    });
    out.join("\n")
}
