//! Replication of the session stores to the standby gateways (`[replication]`).
//!
//! # What moves
//!
//! The stores are append-only segment files (see [`crate::store`]); the active writes only the
//! segments of its own epoch. Replication mirrors those files byte for byte into each
//! standby's own `gateway.store_dir`, like PostgreSQL streams its WAL: the standby does not
//! interpret records, and on activation opens its local copy with [`crate::store::FileStore`]
//! as if the directory had been shared. A copy that ends inside a record is a torn tail, which
//! opening already cuts off and seals. The fence files are not replicated: each machine's
//! fence guards its own copy, and the stream carries the epoch instead.
//!
//! # The stream
//!
//! The active connects to every peer ([`active`]); the peer's listener ([`standby`]) checks
//! the token and the epoch, and answers with the length of every segment it holds. The active
//! sends what is missing (catch-up), then, for each group-commit batch, the new bytes and one
//! [`proto::Frame::Sync`]; the standby `fdatasync`s and acknowledges. With `mode = "sync"` the
//! batch counts as durable — its messages may leave — only when the local `fdatasync` is done
//! and every standby that may count itself in sync acknowledged it (at least one; one that
//! stays silent `sync_timeout` is dropped): one round trip per batch, run alongside the local sync
//! (see [`crate::store::GroupCommit::set_hook`]).
//!
//! # Fencing
//!
//! A standby remembers the newest epoch it has seen (`replication.epoch` in its store
//! directory) and refuses a hello of an older one, answering the newer epoch; a gateway that
//! was activated refuses every older active. The active that hears of a newer epoch records it
//! ([`crate::store::note_newer_epoch`]): every store write fails as fenced from then on, and
//! the batch in flight never becomes durable, so nothing more is sent.
//!
//! # When a standby is gone (`sync`)
//!
//! Like Patroni's `synchronous_mode` (not strict): the active waits up to `sync_timeout` for
//! an acknowledgement, then drops the standby, says so in the log and in its health
//! (`degraded`), and carries on without one; it returns to synchronous mode when a standby has
//! caught up again. A standby that misses heartbeats for `timeout` (shorter than
//! `sync_timeout`) declares itself out of sync, and its agent stops counting it as ready, so a
//! standby the active may have moved on without never takes over by itself.

pub mod active;
pub mod auth;
pub mod liveness;
pub mod proto;
pub mod standby;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use active::Sender;
pub use standby::Receiver;

/// `replication.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No replication: the group shares `gateway.store_dir` (one host, or storage both see).
    #[default]
    Off,
    /// Streamed, not waited for: a machine loss can lose the last batches.
    Async,
    /// A message leaves only once durable locally and on every standby in sync (at least
    /// one).
    Sync,
}

impl Mode {
    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Async => "async",
            Mode::Sync => "sync",
        }
    }
}

/// The validated `[replication]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `mode`.
    pub mode: Mode,
    /// `listen`: where this gateway receives the stream while standby (and refuses older
    /// actives once active).
    pub listen: SocketAddr,
    /// `peers`: the other gateways' `listen` addresses, streamed to while active.
    pub peers: Vec<SocketAddr>,
    /// The secret of `token_file`.
    pub token: Vec<u8>,
    /// `sync_timeout`: longest wait for a standby's acknowledgement before degrading.
    pub sync_timeout: Duration,
    /// `timeout`: silence after which a standby gives the connection up and is out of sync
    /// (the active's reads wait the longer of this and `sync_timeout`).
    pub timeout: Duration,
    /// `heartbeat`: the active's heartbeat interval on an idle stream.
    pub heartbeat: Duration,
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// `reconnect_interval`: pause before connecting again to a peer.
    pub reconnect_interval: Duration,
}

impl ReplicationConfig {
    /// How long either side waits for the other while a connection's catch-up runs: the
    /// standby's scan of its copy before its welcome, the active's read of every segment
    /// before it sends what is missing, the standby's apply of it. Each reads whole stores,
    /// far longer than `timeout` where they hold gigabytes, and with `timeout` alone the
    /// two gave up on each other at every reconnection for good. The standby is out of sync
    /// until the catch-up ends (its acknowledgement never counts), so nothing waits on this
    /// but the link: thirty `timeout`s, at least a minute.
    pub fn catch_up_wait(&self) -> Duration {
        self.timeout.saturating_mul(30).max(Duration::from_secs(60))
    }
}

/// The agent's `[health]` check of a replicated gateway, as far as [`check_agent_health`] needs
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentHealth {
    /// Whether the check is `http` (the agent reads `replication.ready` only from an HTTP
    /// answer's body).
    pub http: bool,
    /// `health.interval`.
    pub interval: Duration,
    /// `health.timeout`.
    pub timeout: Duration,
}

/// Checks a replicated gateway's settings against its agent's health check (`None`: the agent
/// has none); the error names the keys, their values and the bound.
///
/// Every replicated standby must be checked over HTTP: that answer is the only way its agent
/// learns that it is not in sync, and an agent that does not know campaigns with a copy that
/// lacks records. With `sync`, a standby's window ends `timeout` after its last acknowledgement
/// and the active goes on without it `sync_timeout` after; in between, the agent must have
/// read a "not in sync" answer. The next check starts at most `max(health.interval,
/// health.timeout)` after the last one that could still say "in sync" (checks run
/// start-to-start, a slow one delays the next) and answers within `health.timeout`, so
/// `sync_timeout − timeout` must exceed that sum.
pub fn check_agent_health(
    r: &ReplicationConfig,
    health: Option<AgentHealth>,
) -> Result<(), String> {
    let mode = r.mode.as_str();
    let h = match health {
        Some(h) if h.http => h,
        _ => {
            return Err(format!(
                "replication.mode = \"{mode}\" needs the agent's [health] http check of the gateway's GET /health (its [admin] http): that answer is how the agent learns a standby is not in sync, and an agent without it would take over with a copy that lacks records"
            ))
        }
    };
    if r.mode != Mode::Sync {
        return Ok(());
    }
    let margin = r.sync_timeout.saturating_sub(r.timeout);
    let needed = h.interval.max(h.timeout) + h.timeout;
    if margin <= needed {
        return Err(format!(
            "replication.sync_timeout ({:?}) − replication.timeout ({:?}) = {margin:?} must be more than {needed:?}, which the agent's health.interval ({:?}) and health.timeout ({:?}) need (max(interval, timeout) + timeout): a standby out of sync must be reported not ready by its agent before the active goes on without it; make replication.sync_timeout more than {:?}, or check more often",
            r.sync_timeout,
            r.timeout,
            h.interval,
            h.timeout,
            r.timeout + needed,
        ));
    }
    Ok(())
}

/// A fall-back from `sync` to async, in [`ReplicationHealth`]: why it came when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Degraded {
    /// When, Unix milliseconds.
    pub at_unix_ms: u64,
    /// How long the batch that fell back was held before it left without the standbys (what
    /// its counterparties saw as delay).
    pub held_ms: u64,
    /// How long the standby heard from last had then been silent: `sync_timeout` of this
    /// process's running time, plus the time it did not run (a quiet spell before the batch
    /// counts here, not in `held_ms`); 0 when no standby had acknowledged since the start.
    pub silent_ms: u64,
    /// Of `silent_ms`, the time this process was found not running.
    pub frozen_ms: u64,
}

/// A peer as the active sees it, in [`ReplicationHealth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerHealth {
    /// Its `listen` address.
    pub addr: String,
    /// Connected and past the handshake.
    pub connected: bool,
    /// Caught up and acknowledging batches.
    pub in_sync: bool,
    /// Last group-commit position it acknowledged durable.
    pub acked: u64,
    /// Records written here that it has not acknowledged.
    pub lag_records: u64,
    /// Why it is not connected, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `replication` in a `GET /health` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationHealth {
    /// `sync` or `async`.
    pub mode: &'static str,
    /// Whether this gateway may take over: a standby that is caught up and heard from the
    /// active within `timeout`. The agent reports a standby that is not ready as not ready,
    /// and it does not campaign. Always true on the active.
    pub ready: bool,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Records the active announced that this standby has not made durable (`None` when not
    /// connected, and on the active).
    pub lag_records: Option<u64>,
    /// How long the oldest of them has waited, ms.
    pub lag_ms: Option<u64>,
    /// Newest epoch seen on the stream (or activated with).
    pub seen_epoch: u64,
    /// The epoch this gateway's store was last active with (0: never; on the active, its
    /// epoch). Kept in the store across restarts: the group's last active holds everything it
    /// sent, and its agent may count it ready on that alone (see docs/fix-gateway.md).
    pub last_active_epoch: u64,
    /// Active with `sync`: no standby acknowledges, messages leave after the local sync only.
    pub degraded: bool,
    /// Active: how long, since the gateway started, this process was found not running (stopped,
    /// its VM paused, or starved: a 10 ms tick more than 100 ms late). Every `sync` hold runs
    /// that much longer in wall time than `sync_timeout`, so a failover to async that came late
    /// shows here why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_ms: Option<u64>,
    /// Active with `sync`: the last fall-back to async, kept after `sync` resumes.
    /// `frozen_ms` above counts since the start; this tells about that one hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_degraded: Option<Degraded>,
    /// Active: each peer.
    pub peers: Vec<PeerHealth>,
    /// Standby: why the last stream ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every segment under `store_dir`: (`SESSION/EPOCH.log`, full path). Other files (fences,
/// `replication.epoch`) are not replicated.
pub(crate) fn list_segments(store_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let dirs = match std::fs::read_dir(store_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for d in dirs {
        let d = d?;
        if !d.file_type()?.is_dir() {
            continue;
        }
        let Some(dname) = d.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        for f in std::fs::read_dir(d.path())? {
            let f = f?;
            let Some(fname) = f.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let rel = format!("{dname}/{fname}");
            if proto::segment_epoch(&rel).is_ok() {
                out.push((rel, f.path()));
            }
        }
        if out.len() > proto::MAX_FILES {
            return Err(std::io::Error::other(format!(
                "more than {} segments under {}",
                proto::MAX_FILES,
                store_dir.display()
            )));
        }
    }
    out.sort();
    Ok(out)
}

/// `[replication]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplication {
    mode: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    token_file: Option<PathBuf>,
    sync_timeout: Option<String>,
    timeout: Option<String>,
    heartbeat: Option<String>,
    connect_timeout: Option<String>,
    reconnect_interval: Option<String>,
}

type KeyError = (String, String);

fn key_err(k: &str, reason: impl Into<String>) -> KeyError {
    (format!("replication.{k}"), reason.into())
}

fn dur(k: &str, v: Option<&String>, default: Duration) -> Result<Duration, KeyError> {
    let key = format!("replication.{k}");
    let d = crate::gateway::duration(&key, v, default)?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err((key, format!("{d:?} is out of range (above 0, at most 1h)")));
    }
    Ok(d)
}

fn addr(k: &str, s: &str) -> Result<SocketAddr, KeyError> {
    let a: SocketAddr = s.parse().map_err(|_| {
        key_err(
            k,
            format!("{s:?} is not an address; use e.g. \"10.0.0.2:9880\""),
        )
    })?;
    if a.port() == 0 {
        return Err(key_err(
            k,
            "a fixed port is required: the peers must find it",
        ));
    }
    Ok(a)
}

/// Reads a token file with the rules of the agent's `node.admin_token_file`: a regular file
/// readable by its owner only, one line of printable ASCII.
fn token(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} is accessible by group or other (mode {mode:03o}); whoever reads it can feed a standby what the next active sends: chmod 600 {shown}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let secret = text.trim();
    if secret.is_empty() || secret.len() > proto::MAX_TEXT || secret.lines().count() != 1 {
        return Err(format!(
            "{shown} must hold one line of 1 to {} characters",
            proto::MAX_TEXT
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{shown}: the secret must be printable ASCII without spaces"
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

/// Validates `[replication]`; `None` when it is off. `taken` lists addresses this gateway
/// already uses (clients, admin), `group_commit` whether `gateway.sync` is `group`.
pub(crate) fn validate(
    raw: Option<RawReplication>,
    taken: &[SocketAddr],
    group_commit: bool,
) -> Result<Option<ReplicationConfig>, KeyError> {
    let Some(r) = raw else { return Ok(None) };
    let mode = match r.mode.as_deref() {
        None | Some("off") => Mode::Off,
        Some("async") => Mode::Async,
        Some("sync") => Mode::Sync,
        Some(m) => {
            return Err(key_err(
                "mode",
                format!("{m:?}: use \"sync\", \"async\" or \"off\""),
            ))
        }
    };
    if mode == Mode::Off {
        return Ok(None);
    }
    if !group_commit {
        return Err((
            "gateway.sync".into(),
            "replication streams each group-commit batch: gateway.sync must be \"group\" (the default)"
                .into(),
        ));
    }
    let listen = addr(
        "listen",
        r.listen
            .as_deref()
            .ok_or_else(|| key_err("listen", "is required with replication on"))?,
    )?;
    if taken.contains(&listen) {
        return Err(key_err(
            "listen",
            format!("{listen} is already used by this gateway"),
        ));
    }
    if r.peers.is_empty() {
        return Err(key_err(
            "peers",
            "at least one peer is required with replication on",
        ));
    }
    if r.peers.len() > 16 {
        return Err(key_err("peers", "at most 16 peers"));
    }
    let mut peers = Vec::new();
    for p in &r.peers {
        let a = addr("peers", p)?;
        if a == listen || peers.contains(&a) {
            return Err(key_err(
                "peers",
                format!("{a} is this gateway's listen or listed twice"),
            ));
        }
        peers.push(a);
    }
    let token = token(
        r.token_file
            .as_deref()
            .ok_or_else(|| key_err("token_file", "is required with replication on"))?,
    )
    .map_err(|e| key_err("token_file", e))?;
    let timeout = dur("timeout", r.timeout.as_ref(), Duration::from_secs(2))?;
    let sync_timeout = dur(
        "sync_timeout",
        r.sync_timeout.as_ref(),
        Duration::from_secs(5),
    )?;
    let heartbeat = dur(
        "heartbeat",
        r.heartbeat.as_ref(),
        Duration::from_millis(100),
    )?;
    if sync_timeout <= timeout {
        return Err(key_err(
            "sync_timeout",
            format!("{sync_timeout:?} must be longer than replication.timeout ({timeout:?}): a standby must know it is out of sync before the active goes on without it"),
        ));
    }
    // A standby's in-sync window starts at an acknowledgement and is renewed only when the
    // next frame proves the active took it: a heartbeat later (see `standby::Acks`). A third
    // leaves room for a round trip and a late heartbeat before the window would lapse.
    if heartbeat * 3 > timeout {
        return Err(key_err(
            "heartbeat",
            format!("{heartbeat:?} must be at most a third of replication.timeout ({timeout:?}): a standby's in-sync window, renewed a heartbeat after each acknowledgement, would lapse between heartbeats"),
        ));
    }
    let connect_timeout = dur(
        "connect_timeout",
        r.connect_timeout.as_ref(),
        Duration::from_millis(500),
    )?;
    let reconnect_interval = dur(
        "reconnect_interval",
        r.reconnect_interval.as_ref(),
        Duration::from_millis(100),
    )?;
    // An active woken from a freeze must reach its standby again (and hear of a newer epoch
    // there) well within the hold it then gives it: a pause and a connection attempt.
    if mode == Mode::Sync && reconnect_interval.saturating_add(connect_timeout) >= sync_timeout / 2
    {
        return Err(key_err(
            "reconnect_interval",
            format!("{reconnect_interval:?} + replication.connect_timeout ({connect_timeout:?}) must be less than half of replication.sync_timeout ({sync_timeout:?}): an active that was not running must reach its standby again well within the wait it then gives it"),
        ));
    }
    Ok(Some(ReplicationConfig {
        mode,
        listen,
        peers,
        token,
        sync_timeout,
        timeout,
        heartbeat,
        connect_timeout,
        reconnect_interval,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repl(mode: Mode, timeout_ms: u64, sync_timeout_ms: u64) -> ReplicationConfig {
        ReplicationConfig {
            mode,
            listen: "127.0.0.1:9880".parse().expect("addr"),
            peers: vec!["127.0.0.2:9880".parse().expect("addr")],
            token: b"t".to_vec(),
            sync_timeout: Duration::from_millis(sync_timeout_ms),
            timeout: Duration::from_millis(timeout_ms),
            heartbeat: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
            reconnect_interval: Duration::from_millis(100),
        }
    }

    fn http(interval_ms: u64, timeout_ms: u64) -> Option<AgentHealth> {
        Some(AgentHealth {
            http: true,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    #[test]
    fn the_heartbeat_is_at_most_a_third_of_the_timeout() {
        let dir = tempfile::tempdir().expect("tmp");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token-of-some-length\n").expect("token");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let raw = |heartbeat: &str| -> RawReplication {
            toml::from_str(&format!(
                "mode = \"sync\"\nlisten = \"127.0.0.1:9880\"\npeers = [\"127.0.0.2:9880\"]\n\
                 token_file = {:?}\ntimeout = \"900ms\"\nheartbeat = \"{heartbeat}\"\n",
                token.display().to_string()
            ))
            .expect("raw")
        };
        let ok = validate(Some(raw("300ms")), &[], true).expect("a third");
        assert_eq!(ok.map(|c| c.heartbeat), Some(Duration::from_millis(300)));
        let (key, why) = validate(Some(raw("301ms")), &[], true).expect_err("over a third");
        assert_eq!(key, "replication.heartbeat");
        assert!(why.contains("at most a third"), "{why}");
    }

    #[test]
    fn sync_timeout_must_exceed_timeout_by_more_than_the_agents_check_takes() {
        // 1 s margin against max(600, 300) + 300 = 900 ms, then exactly 900 ms (refused: the
        // agent may learn it at the very moment the active moves on).
        assert_eq!(
            check_agent_health(&repl(Mode::Sync, 2000, 3000), http(600, 300)),
            Ok(())
        );
        let e = check_agent_health(&repl(Mode::Sync, 2000, 2900), http(600, 300))
            .expect_err("no margin");
        assert!(e.contains("must be more than 900ms"), "{e}");
        assert!(e.contains("more than 2.9s"), "{e}");
        // A slow check delays the next: timeout counts twice when it exceeds the interval.
        let e = check_agent_health(&repl(Mode::Sync, 2000, 3000), http(300, 600))
            .expect_err("slow check");
        assert!(e.contains("must be more than 1.2s"), "{e}");
        // async never waits for a standby; no HTTP check is refused in every mode.
        assert_eq!(
            check_agent_health(&repl(Mode::Async, 2000, 2100), http(600, 300)),
            Ok(())
        );
        for mode in [Mode::Sync, Mode::Async] {
            let command = Some(AgentHealth {
                http: false,
                ..http(100, 100).expect("some")
            });
            for h in [None, command] {
                let e = check_agent_health(&repl(mode, 2000, 5000), h).expect_err("no http");
                assert!(e.contains("[health] http"), "{e}");
            }
        }
    }
}
