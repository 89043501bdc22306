//! The two calls a service makes to its agent's admin API: `GET /status` for the epoch after
//! activation, and `POST /service/active-ack` to say it now acts as the active.
//!
//! HTTP/1.0 over one short-lived TCP connection per call: the server closes after the answer and
//! never chunks it, so the answer is read to its end (bounded) and parsed as one piece. The
//! request building and answer parsing are plain functions; the exchange exists twice, blocking
//! (`std::net`) and async (`tokio`, feature `tokio`), with the same retry rule.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use understudy_status::{State, Status};

/// Longest answer read from the agent: `/status` is a few hundred bytes; anything this large is
/// not our agent.
const MAX_ANSWER: u64 = 1 << 20;
/// Pause before the first retry of `GET /status`; it doubles up to [`RETRY_MAX`]. The agent
/// publishes its new epoch before it signals, so the first answer is normally the right one;
/// retries cover a loaded machine.
const RETRY_FIRST: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(50);
/// The acknowledgement endpoint.
const ACK_PATH: &str = "/service/active-ack";

/// A client of one agent's admin API.
#[derive(Debug, Clone)]
pub struct Agent {
    addr: SocketAddr,
    /// Bound on one call (connect, write, read).
    call_timeout: Duration,
}

/// What became of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The agent recorded it in its takeover timeline.
    Recorded,
    /// The agent predates the endpoint (404/405); nothing is wrong.
    NotSupported,
    /// Stand-alone, or started active without `UNDERSTUDY_ADMIN`: nobody to tell.
    NoAgent,
}

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The connection failed or timed out.
    #[error("agent at {addr}: {source}")]
    Io {
        /// The admin address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered, but not with 2xx.
    #[error("agent at {addr} answered HTTP {status}: {body}")]
    Status {
        /// The admin address.
        addr: SocketAddr,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer is not the agent's (not HTTP, no JSON, no epoch).
    #[error("agent at {addr}: unreadable answer: {reason}")]
    Malformed {
        /// The admin address.
        addr: SocketAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent did not report itself Hot with an epoch above the one the service had, within
    /// the deadline. The service must not act: it cannot fence what it would send.
    #[error("agent at {addr} did not report Hot with an epoch above {above} within {waited:?} (last answer: {last})")]
    NoEpoch {
        /// The admin address.
        addr: SocketAddr,
        /// The epoch the service had; the new one must be higher.
        above: u64,
        /// How long it tried.
        waited: Duration,
        /// The last answer or error, in words.
        last: String,
    },
    /// There is no agent to ask (stand-alone).
    #[error("no agent to ask: the service runs stand-alone")]
    NoAgent,
}

impl Agent {
    /// A client of the admin API at `addr`; each call is bounded by `call_timeout`.
    pub fn new(addr: SocketAddr, call_timeout: Duration) -> Agent {
        Agent { addr, call_timeout }
    }

    /// The admin address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One `GET /status`.
    pub fn status(&self) -> Result<Status, AgentError> {
        let answer = self.exchange(
            &request("GET", "/status", self.addr, None),
            self.call_timeout,
        )?;
        parse_status(self.addr, &answer)
    }

    /// Asks `GET /status` until the agent reports `Hot` with an epoch above `above`, for at most
    /// `wait`; returns that epoch. An answer with an older epoch (published before the grant)
    /// or `Warm` is retried, as are connection errors.
    pub fn wait_for_epoch(&self, above: u64, wait: Duration) -> Result<u64, AgentError> {
        let start = Instant::now();
        let mut delay = RETRY_FIRST;
        loop {
            let left = wait.saturating_sub(start.elapsed());
            let last = match self
                .exchange(
                    &request("GET", "/status", self.addr, None),
                    left.min(self.call_timeout),
                )
                .and_then(|a| parse_status(self.addr, &a))
            {
                Ok(st) => match judge(&st, above) {
                    Some(epoch) => return Ok(epoch),
                    None => describe(&st),
                },
                Err(e) => e.to_string(),
            };
            if start.elapsed() + delay >= wait {
                return Err(self.no_epoch(above, start.elapsed(), last));
            }
            // A plain thread has no other clock; async callers use `wait_for_epoch_async`.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(delay);
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// `POST /service/active-ack` with `{"pid":…,"epoch":…}`: tells the agent this process now
    /// acts as the active at `epoch`, for its takeover timeline.
    pub fn acknowledge(&self, pid: u32, epoch: u64) -> Result<Ack, AgentError> {
        let body = ack_body(pid, epoch);
        let answer = self.exchange(
            &request("POST", ACK_PATH, self.addr, Some(&body)),
            self.call_timeout,
        )?;
        parse_ack(self.addr, &answer)
    }

    fn exchange(&self, req: &[u8], limit: Duration) -> Result<Vec<u8>, AgentError> {
        let io = |source| AgentError::Io {
            addr: self.addr,
            source,
        };
        // A zero timeout means "none" to the socket calls.
        let limit = limit.max(Duration::from_millis(1));
        let mut sock = TcpStream::connect_timeout(&self.addr, limit).map_err(io)?;
        sock.set_read_timeout(Some(limit)).map_err(io)?;
        sock.set_write_timeout(Some(limit)).map_err(io)?;
        sock.write_all(req).map_err(io)?;
        let mut answer = Vec::new();
        sock.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
        Ok(answer)
    }

    fn no_epoch(&self, above: u64, waited: Duration, last: String) -> AgentError {
        AgentError::NoEpoch {
            addr: self.addr,
            above,
            waited,
            last,
        }
    }
}

#[cfg(feature = "tokio")]
impl Agent {
    /// [`Agent::status`] on tokio.
    pub async fn status_async(&self) -> Result<Status, AgentError> {
        let req = request("GET", "/status", self.addr, None);
        let answer = self.exchange_async(&req, self.call_timeout).await?;
        parse_status(self.addr, &answer)
    }

    /// [`Agent::wait_for_epoch`] on tokio (its clock, so paused time reaches the retries).
    pub async fn wait_for_epoch_async(
        &self,
        above: u64,
        wait: Duration,
    ) -> Result<u64, AgentError> {
        let start = tokio::time::Instant::now();
        let mut delay = RETRY_FIRST;
        let req = request("GET", "/status", self.addr, None);
        loop {
            let left = wait.saturating_sub(start.elapsed());
            let last = match self
                .exchange_async(&req, left.min(self.call_timeout))
                .await
                .and_then(|a| parse_status(self.addr, &a))
            {
                Ok(st) => match judge(&st, above) {
                    Some(epoch) => return Ok(epoch),
                    None => describe(&st),
                },
                Err(e) => e.to_string(),
            };
            if start.elapsed() + delay >= wait {
                return Err(self.no_epoch(above, start.elapsed(), last));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// [`Agent::acknowledge`] on tokio.
    pub async fn acknowledge_async(&self, pid: u32, epoch: u64) -> Result<Ack, AgentError> {
        let body = ack_body(pid, epoch);
        let req = request("POST", ACK_PATH, self.addr, Some(&body));
        let answer = self.exchange_async(&req, self.call_timeout).await?;
        parse_ack(self.addr, &answer)
    }

    async fn exchange_async(&self, req: &[u8], limit: Duration) -> Result<Vec<u8>, AgentError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let io = |source| AgentError::Io {
            addr: self.addr,
            source,
        };
        let call = async {
            let mut sock = tokio::net::TcpStream::connect(self.addr).await?;
            sock.write_all(req).await?;
            let mut answer = Vec::new();
            sock.take(MAX_ANSWER).read_to_end(&mut answer).await?;
            Ok(answer)
        };
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r.map_err(io),
            Err(_) => Err(io(std::io::ErrorKind::TimedOut.into())),
        }
    }
}

/// The epoch to take from `st`, if it is the one a newly activated service may act with.
pub(crate) fn judge(st: &Status, above: u64) -> Option<u64> {
    let n = &st.node;
    (n.state == State::Hot && n.epoch > above).then_some(n.epoch)
}

fn describe(st: &Status) -> String {
    format!("{} at epoch {}", st.node.state, st.node.epoch)
}

fn ack_body(pid: u32, epoch: u64) -> String {
    format!("{{\"pid\":{pid},\"epoch\":{epoch}}}")
}

/// An HTTP/1.0 request (so the answer is never chunked and the connection closes after it).
fn request(method: &str, path: &str, host: SocketAddr, json: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n");
    // An agent whose reads need its token (`node.admin_read_requires_token`) hands it to its
    // service as UNDERSTUDY_TOKEN; a value that could break the header is never sent.
    if let Ok(t) = std::env::var("UNDERSTUDY_TOKEN") {
        let t = t.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
    }
    match json {
        Some(body) => {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

/// Splits an answer into its status code and body.
fn split_answer(addr: SocketAddr, answer: &[u8]) -> Result<(u16, &str), AgentError> {
    let malformed = |reason: &str| AgentError::Malformed {
        addr,
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(answer).map_err(|_| malformed("not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of the HTTP head"))?;
    let status_line = head.lines().next().unwrap_or("");
    let status = match status_line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    }
    .filter(|c| (100..600).contains(c))
    .ok_or_else(|| malformed("no HTTP status line"))?;
    if head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && !v.trim().eq_ignore_ascii_case("identity")
        })
    }) {
        return Err(malformed(
            "a transfer-encoded answer to an HTTP/1.0 request",
        ));
    }
    Ok((status, body))
}

/// The start of a body, for error messages.
fn excerpt(body: &str) -> String {
    body.chars().take(200).collect()
}

fn parse_status(addr: SocketAddr, answer: &[u8]) -> Result<Status, AgentError> {
    let (status, body) = split_answer(addr, answer)?;
    if !(200..300).contains(&status) {
        return Err(AgentError::Status {
            addr,
            status,
            body: excerpt(body),
        });
    }
    serde_json::from_str(body).map_err(|e| AgentError::Malformed {
        addr,
        reason: format!("not the agent's /status ({e}): {}", excerpt(body)),
    })
}

fn parse_ack(addr: SocketAddr, answer: &[u8]) -> Result<Ack, AgentError> {
    match split_answer(addr, answer)? {
        (200..=299, _) => Ok(Ack::Recorded),
        (404 | 405, _) => Ok(Ack::NotSupported),
        (status, body) => Err(AgentError::Status {
            addr,
            status,
            body: excerpt(body),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:7701".parse().unwrap()
    }

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.0 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn requests_are_http_1_0_with_a_sized_body() {
        let get = String::from_utf8(request("GET", "/status", addr(), None)).unwrap();
        assert!(get.starts_with("GET /status HTTP/1.0\r\n"));
        assert!(get.ends_with("\r\n\r\n"));
        let post =
            String::from_utf8(request("POST", ACK_PATH, addr(), Some(&ack_body(42, 7)))).unwrap();
        assert!(post.starts_with("POST /service/active-ack HTTP/1.0\r\n"));
        assert!(post.contains("Content-Length: 20\r\n"), "{post}");
        assert!(post.ends_with("\r\n\r\n{\"pid\":42,\"epoch\":7}"));
    }

    /// An agent's `/status` saying `mode` at `epoch`.
    fn status(mode: &str, epoch: i64) -> String {
        format!(
            r#"{{"node":"b","group":"g","mode":"{mode}","name":"TryLock","epoch":{epoch},"since_unix_ms":1,"waiting":null,"holds_lock":true,"ready":false,"admin":"127.0.0.1:7701","agent_pid":9,"since":"1970-01-01T00:00:00.001Z","lock_file":"/run/g.lock","service":{{"state":"running","pid":10,"role":"standby","standby":"hot","command":["svc"],"healthy":true,"detail":null}},"added_later":1}}"#
        )
    }

    #[test]
    fn status_answers_parse() {
        let st = parse_status(addr(), &answer("200 OK", &status("Hot", 7))).unwrap();
        assert_eq!(st.node.state, State::Hot);
        assert_eq!(st.node.epoch, 7);
        for bad in [
            answer("200 OK", r#"{"mode":"Hot"}"#),
            answer("200 OK", r#"{"mode":"Hot","epoch":7}"#),
            answer("200 OK", &status("Hot", -1)),
            answer("200 OK", &status("Active", 7)),
            answer("200 OK", "not json"),
            b"garbage".to_vec(),
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{}\r\n".to_vec(),
        ] {
            assert!(
                matches!(
                    parse_status(addr(), &bad),
                    Err(AgentError::Malformed { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
        assert!(matches!(
            parse_status(addr(), &answer("503 Service Unavailable", "{}")),
            Err(AgentError::Status { status: 503, .. })
        ));
    }

    #[test]
    fn only_a_hot_answer_above_the_old_epoch_counts() {
        let st = |mode: &str, epoch| {
            parse_status(addr(), &answer("200 OK", &status(mode, epoch))).unwrap()
        };
        assert_eq!(judge(&st("Hot", 7), 6), Some(7));
        assert_eq!(judge(&st("Hot", 6), 6), None, "not newer");
        assert_eq!(judge(&st("Hot", 5), 6), None, "older");
        assert_eq!(judge(&st("Warm", 7), 6), None, "not Hot");
    }

    #[test]
    fn ack_answers_parse() {
        assert_eq!(
            parse_ack(addr(), &answer("200 OK", "{}")).unwrap(),
            Ack::Recorded
        );
        assert_eq!(
            parse_ack(addr(), &answer("204 No Content", "")).unwrap(),
            Ack::Recorded
        );
        assert_eq!(
            parse_ack(addr(), &answer("404 Not Found", "")).unwrap(),
            Ack::NotSupported
        );
        assert!(matches!(
            parse_ack(addr(), &answer("409 Conflict", r#"{"error":"stale"}"#)),
            Err(AgentError::Status { status: 409, .. })
        ));
    }
}
