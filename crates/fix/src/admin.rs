//! The gateway's HTTP health endpoint (`[admin] http`), for an agent's `[health] http` check.
//!
//! `GET /health` is answered by the process's event loop itself, not by the HTTP task: the
//! HTTP task hands a [`Probe`] to the loop over a channel and waits for the loop's
//! [`Health`]. A loop that is wedged (stuck in a system call, a long fsync, a busy callback) or a
//! process that is stopped (SIGSTOP) therefore fails the check: no answer within
//! [`LOOP_DEADLINE`] gives 503, a stopped process gives no answer at all and the agent's
//! `health.timeout` expires. While Warm the waiting loop answers with role `standby`, so the
//! agent's check passes on standbys too.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// How long the HTTP task waits for the event loop before answering 503.
pub const LOOP_DEADLINE: Duration = Duration::from_secs(1);

/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// One session's state in a [`Health`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionHealth {
    /// The slot name (the client's CompID or the upstream's name).
    pub name: String,
    /// Logged on now.
    pub logged_on: bool,
    /// Our next MsgSeqNum.
    pub next_sender_seq: u64,
    /// The MsgSeqNum we expect next.
    pub next_target_seq: u64,
    /// Bytes of its store that a new active replays when it opens it: the live period (see
    /// `gateway.store_rotate_bytes`), what recovery time grows with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_bytes: Option<u64>,
}

/// The body of a `GET /health` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `standby` (Warm: no store open, no port bound) or `active`.
    pub role: &'static str,
    /// The epoch the stores are open with (`null` while standby).
    pub epoch: Option<u64>,
    /// How many sessions are logged on.
    pub sessions_logged_on: usize,
    /// Every session (empty while standby).
    pub sessions: Vec<SessionHealth>,
    /// A newer epoch owns at least one store (the loop stops at its next tick).
    pub fenced: bool,
    /// Connections closed before naming a session (too many waiting, logon timeout, unknown
    /// CompIDs), since the loop started.
    pub connections_refused: u64,
    /// Counterparties logged out and disconnected for not reading what they were sent.
    pub slow_consumers_dropped: u64,
    /// Times the gateway stopped reading a connection because 1 MiB from it was waiting for
    /// the loop (the loop behind, TCP holding that counterparty back), since the loop started.
    pub reads_held_back: u64,
    /// With `[replication]`: the stream as this gateway sees it. On a standby, `ready: false`
    /// makes its agent report the node not ready (it does not campaign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::replica::ReplicationHealth>,
    /// The gateway's order map (active only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_map: Option<OrderMapHealth>,
    /// The process's group commit (`gateway.sync = "group"`, active only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_sync: Option<StoreSyncHealth>,
}

/// Group commit in a [`Health`] answer, since the process started: informational (a slow
/// disk delays, it loses nothing), so that a stall a counterparty noticed can be told apart
/// from the network's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreSyncHealth {
    /// Passes run: each made the records written since the one before durable.
    pub passes: u64,
    /// `fdatasync`s the passes issued (one per file a pass found written).
    pub fdatasyncs: u64,
    /// Passes slower than `slow_pass_ms`: every message each held waited that long. They
    /// are logged (at most one warning per 10 s, counting those it did not log).
    pub slow_passes: u64,
    /// What counts as slow.
    pub slow_pass_ms: u64,
    /// The slowest pass, in µs, from its start to its records counting as durable (a sync
    /// standby's acknowledgement included).
    pub slowest_pass_us: u64,
    /// The `fdatasync` part of that slowest pass, in µs. Near `slowest_pass_us`: the disk
    /// stalled; far below it: a standby did.
    pub slowest_fdatasync_us: u64,
}

impl From<crate::store::PassStats> for StoreSyncHealth {
    fn from(s: crate::store::PassStats) -> StoreSyncHealth {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        StoreSyncHealth {
            passes: s.passes,
            fdatasyncs: s.syncs,
            slow_passes: s.slow_passes,
            slow_pass_ms: u64::try_from(crate::store::SLOW_PASS.as_millis()).unwrap_or(u64::MAX),
            slowest_pass_us: us(s.slowest),
            slowest_fdatasync_us: us(s.slowest_fdatasync),
        }
    }
}

/// The order map in a [`Health`] answer: informational (it never fails the check), since a
/// map that cannot be written still routes from memory; what it costs is a longer read of
/// the session stores at the next activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderMapHealth {
    /// Orders in the map, live and done.
    pub orders: usize,
    /// Changes not written to its file yet (written once a tick).
    pub unwritten: usize,
    /// False after a failed write, until a snapshot of the whole map has been written: a
    /// successor then reads the session stores from the last checkpoint before the failure.
    pub checkpoints: bool,
    /// The last write error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Health {
    /// The answer of a Warm gateway.
    pub fn standby() -> Health {
        Health {
            role: "standby",
            epoch: None,
            sessions_logged_on: 0,
            sessions: Vec::new(),
            fenced: false,
            connections_refused: 0,
            slow_consumers_dropped: 0,
            reads_held_back: 0,
            replication: None,
            order_map: None,
            store_sync: None,
        }
    }
}

/// A pending health request; the event loop answers it with its [`Health`].
pub type Probe = oneshot::Sender<Health>;

/// Serves `GET /health` on `listener`, asking the loop that receives from the other end of
/// `probes` for every answer. Runs until the runtime stops.
pub fn serve(listener: TcpListener, probes: mpsc::UnboundedSender<Probe>) {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let probes = probes.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), handle(s, probes)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed; continuing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}

/// [`serve`] on a thread and runtime of its own, for as long as the process lives.
///
/// Why: the gateway's runtime has one worker (its loop owns every session), and a loop stuck
/// in a system call holds that worker: an endpoint on the same runtime could not answer at
/// all, and the agent would wait for its own `health.timeout` instead of getting the 503 of
/// [`LOOP_DEADLINE`].
pub fn serve_on_own_thread(
    listener: std::net::TcpListener,
    probes: mpsc::UnboundedSender<Probe>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("fix-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => {
                        serve(l, probes);
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "admin endpoint: cannot use its listener")
                    }
                }
            });
        })?;
    Ok(())
}

async fn handle(mut s: TcpStream, probes: mpsc::UnboundedSender<Probe>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(&mut s, 431, "{\"error\":\"request head too large\"}").await;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if path != "/health" {
        return respond(
            &mut s,
            404,
            "{\"error\":\"no such endpoint; see GET /health\"}",
        )
        .await;
    }
    if method != "GET" {
        return respond(&mut s, 405, "{\"error\":\"use GET\"}").await;
    }
    let (tx, rx) = oneshot::channel();
    if probes.send(tx).is_err() {
        return respond(&mut s, 503, "{\"error\":\"event loop stopped\"}").await;
    }
    match tokio::time::timeout(LOOP_DEADLINE, rx).await {
        Ok(Ok(h)) => {
            let body = serde_json::to_string(&h).unwrap_or_else(|_| "{}".into());
            respond(&mut s, 200, &body).await
        }
        Ok(Err(_)) => respond(&mut s, 503, "{\"error\":\"event loop stopped\"}").await,
        Err(_) => respond(&mut s, 503, "{\"error\":\"event loop not responding\"}").await,
    }
}

async fn respond(s: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_from_the_loop_and_503_when_the_loop_does_not_answer() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::unbounded_channel::<Probe>();
        serve(l, tx);
        let req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        // A loop that answers.
        let answering = tokio::spawn(async move {
            let p = rx.recv().await.expect("probe");
            let _ = p.send(Health::standby());
            rx
        });
        let r = get(a, req).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("\"role\":\"standby\""), "{r}");
        assert!(r.contains("\"fenced\":false"), "{r}");
        // A loop that holds the probe without answering: 503 after the deadline.
        let mut rx = answering.await.expect("loop");
        let wedged = tokio::spawn(async move {
            let p = rx.recv().await.expect("probe");
            tokio::time::sleep(LOOP_DEADLINE * 2).await;
            drop(p);
        });
        let r = get(a, req).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        wedged.abort();
        let r = get(a, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }

    /// The gateway's case: the loop's runtime has one worker, and the loop blocks it in a
    /// system call. The endpoint, on its own thread, still answers 503 within the deadline.
    #[test]
    #[allow(clippy::disallowed_methods)] // blocking the worker is the case under test
    fn a_loop_blocking_its_runtimes_only_worker_gets_a_503() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, mut rx) = mpsc::unbounded_channel::<Probe>();
        serve_on_own_thread(l, tx).expect("serve");
        // The loop takes the probe, then blocks the worker (a wedged fsync, say).
        rt.spawn(async move {
            let p = rx.recv().await;
            std::thread::sleep(LOOP_DEADLINE * 4);
            drop(p);
        });
        let mut s = std::net::TcpStream::connect(a).expect("connect");
        s.set_read_timeout(Some(LOOP_DEADLINE * 3))
            .expect("timeout");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut r = String::new();
        // The read times out before the loop unblocks: an answer at all came from elsewhere.
        s.read_to_string(&mut r)
            .expect("an answer before the loop unblocks");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        rt.shutdown_background();
    }
}
