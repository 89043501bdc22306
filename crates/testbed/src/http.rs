//! The one client of an agent's admin API the harness uses: a small blocking HTTP/1.1 exchange
//! (`Connection: close`), and readers of the `/status` and `/events` documents.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use understudy_status::Takeover;

/// One HTTP/1.1 request with an empty body; returns (status, body).
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address {addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {text:?}")))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET a JSON document; None when the node does not answer 200 with JSON within 500 ms.
pub fn get_json(addr: &str, path: &str) -> Option<Value> {
    match http("GET", addr, path, Duration::from_millis(500)) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// PUT with an empty body; (status, parsed body or the raw text as a JSON string). Panics when
/// the node does not answer (for tests).
pub fn put(addr: &str, path: &str) -> (u16, Value) {
    send("PUT", addr, path, Duration::from_secs(10))
}

/// POST with an empty body; (status, parsed body or the raw text as a JSON string). Panics
/// when the node does not answer (for tests).
pub fn post(addr: &str, path: &str) -> (u16, Value) {
    send("POST", addr, path, Duration::from_secs(20))
}

fn send(method: &str, addr: &str, path: &str, timeout: Duration) -> (u16, Value) {
    let (code, body) = http(method, addr, path, timeout)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr} failed: {e}"));
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// True when a `/status` (or `/service/activationmode`) body says the node's state is `m`
/// (`Hot` or `Warm`).
pub fn is_mode(v: &Value, m: &str) -> bool {
    v.get("mode").and_then(Value::as_str) == Some(m)
}

/// True when a `/status` body is a Warm node ready to take over.
pub fn is_ready_standby(v: &Value) -> bool {
    is_mode(v, "Warm") && v.get("ready").and_then(Value::as_bool) == Some(true)
}

/// The epoch of a `/status` body.
pub fn epoch_of(v: &Value) -> Option<u64> {
    v.get("epoch").and_then(Value::as_u64)
}

/// The service's pid in a `/status` body.
pub fn service_pid_of(v: &Value) -> Option<u32> {
    v.pointer("/service/pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
}

/// The agent's own figures of a takeover: (detection → service notified, in ms on the agent's
/// clock; the kill at `kill_unix_ms` → service notified, through the agent's wall-clock
/// detection stamp, which is in whole milliseconds).
pub fn notified_ms(takeover: &Takeover, kill_unix_ms: f64) -> Option<(f64, f64)> {
    let notified = takeover.service_notified_ms?;
    let detected = takeover.detected_unix_ms as f64;
    Some((notified, (detected + notified - kill_unix_ms).max(0.0)))
}

/// Polls until something accepts TCP connections on `addr`; false after `timeout`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> bool {
    crate::clock::poll(timeout, Duration::from_millis(5), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100))
            .ok()
            .map(drop)
    })
    .is_some()
}

/// [`wait_port`] from async code: an error naming the address after `timeout`.
pub async fn listening(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("nothing listens on {addr} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
