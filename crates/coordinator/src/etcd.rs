//! The etcd coordinator: a group spread over machines, split-brain safe, with takeover in about
//! one `lease_ttl` (200 ms by default) instead of etcd's own lease (over a second).
//!
//! Keys, under `<prefix>/<group>/`:
//! - `leader`: [`LeaderRecord`] of the holder (node, epoch, renewal counter); the holder rewrites it
//!   by compare-and-swap on its `mod_revision` every `renew_interval`.
//! - `epoch`: the group epoch, decimal; raised by the claiming transaction itself, so an epoch is
//!   quorum-committed before the claimant learns it holds the group.
//! - `members/<node>`: membership records (JSON [`MemberRecord`]).
//! - `used`: [`UsedRecord`], the newest epoch a holder went on to use (handed out by
//!   [`Coordinator::next_epoch`], before its service is told it is active), who used it, and
//!   the newest another node used before. A claim raises `epoch` before its holder decides to
//!   keep the grant; `used` tells the epochs an active may have sent with from those given back
//!   unused. Written in the same transaction as a renewal of `leader`, so a claim, which
//!   compares `leader`'s revision, commits only on a view that holds it (and reads it back).
//!
//! Every key a node writes but `epoch` and `used` carries that node's etcd lease
//! (`backstop_ttl`, ≥ 1 s): only a backstop, so that a group whose agents all died frees
//! itself. `epoch` and `used` outlive them: the group's epochs never start again below what
//! its services' stores hold, and a claim never compares against a counter that vanished. Activity is decided by the agents' own
//! clocks, as ARCHITECTURE.md ("etcd coordinator: the timing argument") explains:
//! - a standby claims only after it has seen no change of `leader` for `lease_ttl` on its own
//!   monotonic clock (or at once when the holder marked it released), by a transaction that
//!   compares against the revision it last saw;
//! - the holder stops acting [`Timing::deadline`] after the *send* time of its last acknowledged
//!   renewal: it reports [`CoordEvent::Lost`], and the guardian kills the service by itself at the
//!   same deadline ([`Fence`]), so a frozen agent does not leave its service acting.
//!
//! All network work runs on one thread with its own single-threaded tokio runtime; the
//! [`Coordinator`] methods only exchange messages with it. Two of them wait for an answer, with a
//! bound: [`Coordinator::try_acquire`] (at start in mode `hot`, and on an operator's request) and
//! [`Coordinator::next_epoch`] (one transaction, which marks the epoch used: one etcd commit on
//! the takeover path, after the claim's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::lease::{Lease, Loss, Nanos, Outcome, Reply, Sent, Step, Timing};
use crate::lockfile::{Heartbeat, HeartbeatReading};
use crate::members::MemberRecord;
use crate::{
    is_valid_node_name, unix_ms, Allow, CoordError, CoordEvent, Coordinator, LiveMember, StopMark,
    TryAcquire, UsedEpochs,
};

/// A leader record is one short JSON object; anything bigger is not ours.
const MAX_LEADER_BYTES: usize = 4096;
/// Member records are a few hundred bytes.
const MAX_MEMBER_BYTES: usize = 64 * 1024;
/// A group has a handful of nodes; more records than this are ignored (and logged).
const MAX_MEMBERS: usize = 1024;
/// Pause before a connection or a watch that failed is tried again.
const RETRY: Duration = Duration::from_millis(100);
/// Longest wait for etcd at start before the agent goes on without it (it keeps trying).
const START_WAIT: Duration = Duration::from_secs(3);

/// TLS client files for etcd (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA that signed the etcd servers' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and its key, for servers that ask for one.
    pub cert_key: Option<(PathBuf, PathBuf)>,
}

/// Everything the etcd coordinator needs, from the agent's configuration.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `http://HOST:PORT` (or https) of the etcd members.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. `/understudy`.
    pub prefix: String,
    /// The group name.
    pub group: String,
    /// This node's name.
    pub node: String,
    /// The timing knobs, already validated.
    pub timing: Timing,
    /// TTL of the backstop etcd lease on this node's keys (whole seconds, at least 1).
    pub backstop_ttl: Duration,
    /// TLS, when the endpoints are https.
    pub tls: Option<EtcdTls>,
    /// User name and password for etcd's authentication.
    pub auth: Option<(String, String)>,
}

impl EtcdSettings {
    fn group_prefix(&self) -> String {
        format!("{}/{}/", self.prefix, self.group)
    }
    fn leader_key(&self) -> String {
        format!("{}leader", self.group_prefix())
    }
    fn epoch_key(&self) -> String {
        format!("{}epoch", self.group_prefix())
    }
    fn used_key(&self) -> String {
        format!("{}used", self.group_prefix())
    }
    fn members_prefix(&self) -> String {
        format!("{}members/", self.group_prefix())
    }
    fn member_key(&self, node: &str) -> String {
        format!("{}{node}", self.members_prefix())
    }
    /// Where the group's lock lives, for /status and logs.
    pub fn describe(&self) -> String {
        format!("etcd {} {}", self.endpoints.join(","), self.leader_key())
    }
}

/// What the holder's stop deadline means for the service's guardian (see
/// `understudy_service::supervisor::Fence`). Deadlines are `CLOCK_BOOTTIME` nanoseconds: monotonic,
/// untouched by wall-clock steps, and counting time spent suspended (a machine that slept past the
/// deadline must not wake up acting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The service may act until this instant, and not a moment longer.
    Until(u64),
    /// The group was released after the service stopped acting: no deadline any more.
    Released,
    /// The grant was lost: guardians already armed keep their deadline (and kill at it); services
    /// started from now on are not armed.
    Lost,
}

/// Receives every change of the holder's deadline, from the coordinator's thread.
pub type FenceSink = Arc<dyn Fn(Fence) + Send + Sync>;

/// `CLOCK_BOOTTIME` in nanoseconds (see [`Fence`]).
pub fn boottime_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        // Cannot fail on Linux; a zero would only make deadlines pass early (the safe side).
        Err(_) => 0,
    }
}

/// The value of the `leader` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The holder.
    pub node: String,
    /// The epoch it is (or will be) active with.
    pub epoch: u64,
    /// Renewals since the claim.
    pub renewals: u64,
    /// The holder's wall clock at the write (informational: nobody decides on it).
    pub unix_ms: u64,
    /// Set by a holder that let go after its service stopped: standbys may claim at once.
    #[serde(default)]
    pub released: bool,
    /// Failover is stopped (the holder handed its service over as a plain server): nobody
    /// claims until it is started again, which deletes the key. Written without a lease, so it
    /// outlives the agent that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<StopMark>,
}

impl LeaderRecord {
    fn parse(bytes: &[u8]) -> Result<LeaderRecord, String> {
        if bytes.len() > MAX_LEADER_BYTES {
            return Err(format!("leader record of {} bytes", bytes.len()));
        }
        let r: LeaderRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !is_valid_node_name(&r.node) {
            return Err(format!(
                "invalid node name {:?} in the leader record",
                r.node
            ));
        }
        Ok(r)
    }
}

/// The value of the `used` key (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedRecord {
    /// The node that took the epoch for its service.
    pub node: String,
    /// The newest epoch a holder used.
    pub epoch: u64,
    /// The newest epoch a node other than `node` used before (0: none).
    pub before: u64,
}

impl UsedRecord {
    fn parse(bytes: &[u8]) -> Result<UsedRecord, String> {
        if bytes.len() > MAX_LEADER_BYTES {
            return Err(format!("used-epoch record of {} bytes", bytes.len()));
        }
        let r: UsedRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !is_valid_node_name(&r.node) {
            return Err(format!(
                "invalid node name {:?} in the used-epoch record",
                r.node
            ));
        }
        if r.before >= r.epoch {
            return Err(format!(
                "used-epoch record: epoch {} not above the one before, {}",
                r.epoch, r.before
            ));
        }
        Ok(r)
    }

    /// The record after `node` used `epoch`, from the group's record before (`prev`).
    /// Without one (a new group, or one whose key was deleted or never written) the run
    /// starts at `epoch`: what came before stands for another node's, the highest it could be,
    /// as on the lock file (review 16, W3; a run from 0 made every store this node was ever
    /// active with count as the last active's after a forced activation).
    fn after(prev: Option<&UsedRecord>, node: &str, epoch: u64) -> UsedRecord {
        let before = match prev {
            Some(p) if p.node == node => p.before,
            Some(p) => p.epoch,
            None => epoch.saturating_sub(1),
        };
        UsedRecord {
            node: node.to_string(),
            epoch,
            before: before.min(epoch.saturating_sub(1)),
        }
    }

    /// The newest epoch a node other than `node` used (None: none).
    fn newest_of_another(&self, node: &str) -> Option<u64> {
        let e = if self.node == node {
            self.before
        } else {
            self.epoch
        };
        (e > 0).then_some(e)
    }
}

fn etcd_error(what: &str, e: impl std::fmt::Display) -> CoordError {
    CoordError::Etcd(format!("{what}: {e}"))
}

/// What the coordinator and the agent's threads share.
#[derive(Debug, Default)]
struct View {
    holds: bool,
    campaigning: bool,
    /// The epoch the last claim raised the group to, until [`Coordinator::next_epoch`] hands it out.
    claimed_epoch: Option<u64>,
    /// The highest epoch seen anywhere in the group.
    epoch: u64,
    /// The group's `used` key, the newest seen (it never goes back: a deleted or older one
    /// is ignored).
    used: Option<UsedRecord>,
    /// When etcd last answered this node (a watch message, a read, a transaction).
    heard_at: Option<Instant>,
    /// The stop of failover the leader key records, as last seen.
    stopped: Option<StopMark>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Cmd {
    Campaign,
    TryAcquire(std::sync::mpsc::SyncSender<Result<TryAcquire, CoordError>>),
    Release,
    /// [`Coordinator::next_epoch`]: the epoch the claim raised (`claimed`) when it is above
    /// `floor`, else a new one.
    UseEpoch {
        floor: u64,
        claimed: Option<u64>,
        reply: std::sync::mpsc::SyncSender<Result<u64, CoordError>>,
    },
    /// Answered once every command before it is done.
    Flush(std::sync::mpsc::SyncSender<()>),
    /// [`Coordinator::live_members`].
    ReadMembers(std::sync::mpsc::SyncSender<Result<Vec<LiveMember>, CoordError>>),
    /// Delete this node's member key (the agent stops).
    Leave(std::sync::mpsc::SyncSender<()>),
    /// [`Coordinator::stop_failover`].
    StopFailover(
        StopMark,
        std::sync::mpsc::SyncSender<Result<(), CoordError>>,
    ),
    /// [`Coordinator::start_failover`].
    StartFailover(
        Allow,
        std::sync::mpsc::SyncSender<Result<Option<StopMark>, CoordError>>,
    ),
}

/// Membership records kept in etcd: written by a background task (the newest record wins, so a
/// slow etcd never queues them up), read from a cache that the group watch keeps current.
#[derive(Clone)]
pub struct EtcdMembers {
    cache: Arc<Mutex<BTreeMap<String, MemberRecord>>>,
    namesake: Namesakes,
    seen: Arc<Mutex<LeaderSeen>>,
    own: watch::Sender<Option<MemberRecord>>,
    /// Set before the record is removed: a `None` the member writer sees then is the agent's
    /// stop, not the empty record it starts with, and only that one is told on `left`.
    removed: Arc<AtomicBool>,
    node: String,
}

impl std::fmt::Debug for EtcdMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembers")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EtcdMembers {
    /// Publish this node's record (only this node's: the key carries this node's lease).
    pub fn write(&self, rec: &MemberRecord) -> Result<(), CoordError> {
        if rec.node.name != self.node {
            return Err(CoordError::Etcd(format!(
                "node {} cannot write the record of {}",
                self.node, rec.node.name
            )));
        }
        lock(&self.cache).insert(rec.node.name.clone(), rec.clone());
        self.own.send_replace(Some(rec.clone()));
        Ok(())
    }

    /// Every known record, sorted by node name. `last_seen_unix_ms` is when this node received the
    /// record (its own wall clock), so freshness never depends on another machine's clock.
    pub fn read_all(&self) -> Vec<MemberRecord> {
        lock(&self.cache).values().cloned().collect()
    }

    /// The record under this node's name and its `mod_revision`, as etcd last showed it (the
    /// cache leaves it out: once this node writes, it is its own).
    pub fn namesake(&self) -> Option<(MemberRecord, u64)> {
        lock(&self.namesake).clone()
    }

    /// The holder of the group as this node sees it, and how long ago this node saw its last
    /// renewal (its own acknowledged renewal, on the holder). `None` when nobody holds it.
    pub fn renewal(&self) -> Option<(String, Duration)> {
        let seen = lock(&self.seen);
        let holder = seen.holder.clone()?;
        let age = now().saturating_sub(seen.since?);
        Some((holder, Duration::from_nanos(age)))
    }

    /// Delete this node's record.
    pub fn remove(&self, node: &str) {
        if node == self.node {
            lock(&self.cache).remove(node);
            self.removed.store(true, Ordering::SeqCst);
            self.own.send_replace(None);
        }
    }
}

/// What the member writer tells the stopping agent on (once its key is deleted), and the flag
/// that says the record was removed for the stop.
type Leaving = (std::sync::mpsc::SyncSender<()>, Arc<AtomicBool>);

/// The key under this node's own name, seen through the group's snapshot and watch.
type Namesakes = Arc<Mutex<Option<(MemberRecord, u64)>>>;

/// The etcd coordinator. See the module documentation.
pub struct EtcdCoordinator {
    settings: EtcdSettings,
    view: Arc<Mutex<View>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    members: EtcdMembers,
    /// Told by the member writer once this node's key is deleted after its record was removed;
    /// disconnected once a started writer ended. See the drop.
    left: std::sync::mpsc::Receiver<()>,
    /// The member writer was started (at the first connection): only then is there a key of
    /// this agent's to wait for.
    writer_started: Arc<AtomicBool>,
    /// The task's `lease_id`, and its view of this node's member key: whether it stands on
    /// etcd now, on that lease.
    key: (Arc<AtomicI64>, Arc<OwnKey>),
    /// Dropping it stops the thread (and with it every etcd task of this coordinator).
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("leader", &self.settings.leader_key())
            .field("node", &self.settings.node)
            .field("holds", &self.holds())
            .finish_non_exhaustive()
    }
}

impl EtcdCoordinator {
    /// Start the coordinator's thread and connect. Waits up to a few seconds for etcd to answer
    /// (so that the group's epoch is known at start); when it does not, the agent starts anyway
    /// and the thread keeps trying. Fails only on settings that can never work (bad node name,
    /// unreadable TLS files, thread not started).
    pub fn new(
        settings: EtcdSettings,
        events: mpsc::UnboundedSender<CoordEvent>,
        fence: FenceSink,
    ) -> Result<Self, CoordError> {
        if !is_valid_node_name(&settings.node) {
            return Err(CoordError::Etcd(format!(
                "invalid node name {:?}",
                settings.node
            )));
        }
        let options = connect_options(&settings)?;
        let view = Arc::new(Mutex::new(View::default()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (own_tx, own_rx) = watch::channel(None);
        let (left_tx, left_rx) = std::sync::mpsc::sync_channel(1);
        let writer_started = Arc::new(AtomicBool::new(false));
        let key = (Arc::new(AtomicI64::new(0)), Arc::new(OwnKey::default()));
        let members = EtcdMembers {
            cache: Arc::default(),
            namesake: Arc::default(),
            seen: Arc::default(),
            own: own_tx,
            removed: Arc::new(AtomicBool::new(false)),
            node: settings.node.clone(),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let task = Task {
            s: settings.clone(),
            options,
            view: Arc::clone(&view),
            events,
            fence,
            cache: Arc::clone(&members.cache),
            namesake: Arc::clone(&members.namesake),
            seen: Arc::clone(&members.seen),
            lease_id: Arc::clone(&key.0),
            own_key: Arc::clone(&key.1),
            absorbed_at: BTreeMap::new(),
            lease_lost: Arc::new(tokio::sync::Notify::new()),
            lease_granted: Arc::new(tokio::sync::Notify::new()),
            client: None,
            watch: None,
            lease: Lease::new(settings.timing),
            leader: None,
            held: None,
            own_stops: OwnStops::default(),
            epoch_key: (0, 0),
            campaigning: false,
            ready: Some(ready_tx),
            own_now: own_rx.clone(),
            own_rx: Some((own_rx, (left_tx, Arc::clone(&members.removed)))),
            heard: None,
            keeper_spawned: false,
            writer_started: Arc::clone(&writer_started),
            put_lease: Arc::new(AtomicI64::new(0)),
        };
        std::thread::Builder::new()
            .name("etcd-coordinator".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("etcd coordinator: cannot start its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    tokio::select! {
                        _ = task.run(cmd_rx) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .map_err(|e| etcd_error("cannot start the etcd coordinator thread", e))?;
        if ready_rx.recv_timeout(START_WAIT).is_err() {
            tracing::warn!(endpoints = ?settings.endpoints,
                "etcd did not answer within {START_WAIT:?}; starting anyway and retrying");
        }
        Ok(EtcdCoordinator {
            settings,
            view,
            cmds: cmd_tx,
            members,
            left: left_rx,
            writer_started,
            key,
            _stop: stop_tx,
        })
    }

    /// The group's membership records in etcd.
    pub fn members(&self) -> EtcdMembers {
        self.members.clone()
    }

    /// How long the blocking calls wait for the thread's answer at most.
    fn answer_wait(&self) -> Duration {
        let t = &self.settings.timing;
        t.lease_ttl + t.deadline + t.renew_interval
    }

    fn send(&self, cmd: Cmd) -> Result<(), CoordError> {
        self.cmds
            .send(cmd)
            .map_err(|_| CoordError::Etcd("the etcd coordinator thread has stopped".into()))
    }
}

fn connect_options(s: &EtcdSettings) -> Result<ConnectOptions, CoordError> {
    let t = &s.timing;
    // A request that takes longer than the deadline is useless to the holder anyway.
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_keep_alive(
            Duration::from_secs(1),
            t.deadline.max(Duration::from_millis(500)),
        );
    if let Some((user, password)) = &s.auth {
        o = o.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &s.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| CoordError::Io {
                path: p.clone(),
                source: e,
            })
        };
        let mut cfg = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &tls.cert_key {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        o = o.with_tls(cfg);
    }
    Ok(o)
}

impl Coordinator for EtcdCoordinator {
    fn campaign(&mut self) -> Result<(), CoordError> {
        // Recorded even while the thread still holds: the agent may have learnt of a lost grant
        // (its deadline passed) before the thread did, and the campaign must survive that.
        lock(&self.view).campaigning = true;
        self.send(Cmd::Campaign)
    }

    fn try_acquire(&mut self) -> Result<TryAcquire, CoordError> {
        if lock(&self.view).holds {
            return Ok(TryAcquire::Acquired {
                previous: HeartbeatReading::Missing,
                created: false,
            });
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Cmd::TryAcquire(tx))?;
        match rx.recv_timeout(self.answer_wait()) {
            Ok(answer) => answer,
            // The thread gives back a grant nobody waits for any more.
            Err(_) => Err(CoordError::Etcd("etcd did not answer in time".into())),
        }
    }

    fn release(&mut self) -> Result<(), CoordError> {
        {
            let mut v = lock(&self.view);
            v.holds = false;
            v.campaigning = false;
            v.claimed_epoch = None;
        }
        self.send(Cmd::Release)
    }

    fn holds(&self) -> bool {
        lock(&self.view).holds
    }

    /// One etcd transaction: the epoch is marked used (see [`UsedRecord`]) before the service
    /// may act with it, so no other node's standby can count an active's epoch as unused.
    fn next_epoch(&mut self, floor: u64) -> Result<u64, CoordError> {
        let claimed = {
            let mut v = lock(&self.view);
            if !v.holds {
                return Err(CoordError::NotHolder);
            }
            v.claimed_epoch.take()
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Cmd::UseEpoch {
            floor,
            claimed,
            reply: tx,
        })?;
        match rx.recv_timeout(self.answer_wait()) {
            Ok(answer) => answer,
            Err(_) => Err(CoordError::Etcd("etcd did not answer in time".into())),
        }
    }

    fn current_epoch(&self) -> u64 {
        lock(&self.view).epoch
    }

    fn used_epochs(&self) -> UsedEpochs {
        let v = lock(&self.view);
        let node = &self.settings.node;
        UsedEpochs {
            newest_by_another: v.used.as_ref().and_then(|u| u.newest_of_another(node)),
            last_by_this_node: v.used.as_ref().filter(|u| &u.node == node).map(|u| u.epoch),
        }
    }

    fn heartbeat(&mut self, _hb: &Heartbeat) -> Result<(), CoordError> {
        // The renewals are the heartbeat: every standby sees each one through its watch.
        Ok(())
    }

    fn verify(&mut self) -> bool {
        // A lost grant is reported by the thread the moment it is lost.
        self.holds()
    }

    fn live_members(&mut self) -> Result<Option<Vec<LiveMember>>, CoordError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Cmd::ReadMembers(tx))?;
        match rx.recv_timeout(self.answer_wait()) {
            Ok(answer) => answer.map(Some),
            Err(_) => Err(CoordError::Etcd("etcd did not answer in time".into())),
        }
    }

    fn unreachable(&self) -> Option<String> {
        // A standby probes after a quarter of lease_ttl of silence and waits at most half of it
        // for the answer, so a healthy one is never silent for three quarters of it; a silent
        // one could not claim in time.
        let limit = self.settings.timing.lease_ttl * 3 / 4;
        let silent = match lock(&self.view).heard_at {
            None => Some("etcd has not answered yet".to_string()),
            Some(at) => (Instant::now().saturating_duration_since(at) > limit).then(|| {
                format!(
                    "etcd has not answered for more than three quarters of lease_ttl ({} ms)",
                    limit.as_millis()
                )
            }),
        };
        // A standby the active cannot see on etcd is not counted by a release, which then goes
        // through while this node lives on, stopped or slow, and would find the group free
        // but for the recorded stop; nor can a switchover pick it. It is ready only once etcd
        // shows its key on the lease it holds now: what its watch delivered, not what its
        // writer believes (an expired lease took the key with it before the keeper noticed;
        // a twin under the same name, or an operator, replaced or deleted it).
        let lease = self.key.0.load(Ordering::Relaxed);
        let shown = self.key.1.on_etcd.load(Ordering::Relaxed);
        silent.or_else(|| {
            (lease == 0 || shown != lease).then(|| {
                let why = match shown {
                    0 => "this node's member key is not on etcd",
                    _ if lease == 0 => "this node's member key is on a lease it no longer holds",
                    _ => "this node's member key is on another lease than the one this agent holds now (being moved to it; if this lasts, another agent may run under this node's name)",
                };
                let last = lock(&self.key.1.put_error)
                    .as_ref()
                    .map(|e| format!(" (last put: {e})"))
                    .unwrap_or_default();
                format!("{why}{last}: the active would not count this node")
            })
        })
    }

    fn stop_failover(&mut self, mark: &StopMark) -> Result<(), CoordError> {
        if !self.holds() {
            return Err(CoordError::NotHolder);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Cmd::StopFailover(mark.clone(), tx))?;
        match rx.recv_timeout(self.answer_wait()) {
            Ok(answer) => answer,
            Err(_) => Err(CoordError::Etcd("etcd did not answer in time".into())),
        }
    }

    fn failover_stopped(&self) -> Option<StopMark> {
        lock(&self.view).stopped.clone()
    }

    fn start_failover(&mut self, allow: Allow) -> Result<Option<StopMark>, CoordError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Cmd::StartFailover(allow, tx))?;
        // The thread bounds its read and its delete by this much each.
        match rx.recv_timeout(self.answer_wait() * 2) {
            Ok(answer) => answer,
            Err(_) => Err(CoordError::Etcd("etcd did not answer in time".into())),
        }
    }
}

impl Drop for EtcdCoordinator {
    fn drop(&mut self) {
        // Let a held group go at once rather than after lease_ttl; the agent only drops the
        // coordinator after its service is gone.
        if self.holds() {
            let _ = self.release();
        }
        // Wait (bounded) until the thread has done what it was asked, the release above included.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.cmds.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(self.settings.timing.lease_ttl);
        }
        // Then this node's member key goes: left to expire with its lease, it counted as a live
        // member for up to `backstop_ttl`, and a release of the group (the control plane's stop
        // failover, right after stopping the standbys) was refused meanwhile (review 27, N4).
        // Only the key: revoking the lease would delete the released leader record too, and a
        // standby that finds that key gone waits `lease_ttl` before it claims (a SIGTERMed
        // active's hand-over took 2 s instead of milliseconds). The member writer deletes it,
        // after any put it had in flight: a delete from here alone could land first, and that
        // put recreate the key for `backstop_ttl` (seen under load).
        self.members.remove(&self.settings.node);
        if self.writer_started.load(Ordering::Relaxed) {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                self.left.recv_timeout(Duration::from_secs(2))
            {
                tracing::debug!("etcd: the member writer did not delete the key in time");
            }
        }
        // Also from here, in case the writer could not (a delete is idempotent).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.cmds.send(Cmd::Leave(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}
/// This node's clock for the lease: `CLOCK_BOOTTIME`, the clock the guardian kills on, so the
/// deadline the lease computes is the very instant the guardian is armed with.
fn now() -> Nanos {
    boottime_ns()
}

/// The runtime's instant for a point on the lease's clock, for tokio's timers.
fn instant_at(t: Nanos) -> Instant {
    Instant::now() + Duration::from_nanos(t.saturating_sub(now()))
}

/// A write's outcome for the lease: an error is an answer that says nothing ([`Reply::Failed`]),
/// kept for the caller to report.
fn answered(r: Result<Reply, CoordError>) -> (Reply, Option<CoordError>) {
    match r {
        Ok(reply) => (reply, None),
        Err(e) => (Reply::Failed, Some(e)),
    }
}

/// `leader` as this node last saw it, for /status and `understudy status`.
#[derive(Debug, Clone, Default)]
struct LeaderSeen {
    /// The holder named in the record (`None`: absent, garbage, or released).
    holder: Option<String>,
    /// When this node saw the record change (a renewal, a claim), on the lease's clock.
    since: Option<Nanos>,
}

/// Most doubtful stops kept at once: the control plane retries a refused release every 100 ms
/// for 5 s, each attempt a record of its own.
const MAX_DOUBTFUL_STOPS: usize = 64;

/// Stops of failover of this node's that may stand in the leader key although their release was
/// refused (nothing was handed over), so that the group never stays stopped with nobody active
/// for a stop nobody needs (reviews 31 and 32, M1/M2).
#[derive(Default)]
struct OwnStops {
    /// Records sent whose answers never came, all comparing `expect`: the held revision does
    /// not move until a write of ours commits, so every attempt compares the same one, and any
    /// of them may still commit, late.
    doubtful: Vec<LeaderRecord>,
    expect: i64,
    /// The revision of one of them, seen committed while holding and adopted: withdrawn if the
    /// group is lost before a renewal of ours replaced it.
    adopted: Option<i64>,
    /// A renewal refused for the adopted stop is tried again rather than losing the group.
    retry: bool,
    /// A committed stop of ours to delete (not holding), and when to try: (revision, at,
    /// back-off).
    withdraw: Option<(i64, Instant, Duration)>,
    /// A stop of this holding was acknowledged: its release may have gone through, its service
    /// acting unfenced, so from now on no write carrying it is doubted, adopted or withdrawn
    /// (the renewals between the acknowledgement and the release carry it too: withdrawn,
    /// one would free the group next to the released service; review 33, H1). Until the
    /// next claim.
    acknowledged: bool,
    /// The oldest in doubt were dropped for the bound: a stop like those kept (this node's, of
    /// the same service, epoch and machine) that commits above `expect` is taken for one of
    /// them, or a forgotten one that landed late would hold the group stopped for good.
    forgot: bool,
}

impl OwnStops {
    /// `record` was sent comparing `expect` and its outcome is unknown.
    fn doubt(&mut self, record: LeaderRecord, expect: i64) {
        if self.acknowledged {
            return;
        }
        if expect != self.expect {
            self.doubtful.clear();
            self.forgot = false;
            self.expect = expect;
        }
        if self.doubtful.len() >= MAX_DOUBTFUL_STOPS {
            tracing::warn!("etcd: too many stops of failover in doubt; forgetting the oldest");
            self.doubtful.remove(0);
            self.forgot = true;
        }
        self.doubtful.push(record);
    }

    /// What `record`, seen at `rev`, says of the stops in doubt: None, nothing (none in doubt,
    /// or not newer than what they compared); Some(true), one of them committed; Some(false),
    /// the key moved on without them, and they never can.
    fn landed(&self, record: &LeaderRecord, rev: i64, node: &str) -> Option<bool> {
        // A dropped attempt differs from those kept only in what each attempt sets anew (its
        // time, the renewal count): the stop's node, epoch and machine are the same in all.
        let like_ours = |r: &LeaderRecord| {
            let kept = self.doubtful.first().and_then(|d| d.stopped.as_ref());
            match (&r.stopped, kept) {
                (Some(m), Some(k)) => {
                    r.node == node
                        && m.node == k.node
                        && m.epoch == k.epoch
                        && m.pid == k.pid
                        && m.boot_id == k.boot_id
                        && m.pid_ns == k.pid_ns
                }
                _ => false,
            }
        };
        (!self.doubtful.is_empty() && rev > self.expect)
            .then(|| self.doubtful.contains(record) || (self.forgot && like_ours(record)))
    }

    fn clear_doubts(&mut self) {
        self.doubtful.clear();
        self.forgot = false;
    }

    /// A write of ours committed at `rev`: whatever was in doubt compared an older revision
    /// and can never commit; an adopted stop was replaced.
    fn ours_committed(&mut self) {
        self.clear_doubts();
        self.adopted = None;
    }

    fn withdraw(&mut self, rev: i64) {
        if self.acknowledged {
            return;
        }
        self.withdraw = Some((rev, Instant::now(), Duration::from_millis(100)));
    }

    /// A write carrying a stop was acknowledged (see [`OwnStops::acknowledged`]).
    fn acknowledge(&mut self) {
        *self = OwnStops {
            acknowledged: true,
            ..OwnStops::default()
        };
    }
}

struct Task {
    s: EtcdSettings,
    options: ConnectOptions,
    view: Arc<Mutex<View>>,
    events: mpsc::UnboundedSender<CoordEvent>,
    fence: FenceSink,
    cache: Arc<Mutex<BTreeMap<String, MemberRecord>>>,
    namesake: Namesakes,
    /// Shared with [`EtcdMembers::renewal`].
    seen: Arc<Mutex<LeaderSeen>>,
    /// This node's backstop lease (0 while none is granted).
    lease_id: Arc<AtomicI64>,
    /// Shared with the coordinator: see [`OwnKey`].
    own_key: Arc<OwnKey>,
    /// The `mod_revision` each cached member record was read at: read again unchanged (by a
    /// resync's snapshot), a record keeps the time it was first received, or a frozen agent's
    /// would look fresh after every resync (review 34, L6).
    absorbed_at: BTreeMap<String, i64>,
    /// Told by the member writer when etcd no longer knows the lease: the keeper grants a new
    /// one now rather than at its next keep-alive.
    lease_lost: Arc<tokio::sync::Notify>,
    /// Told by the keeper when it granted a lease: the member writer, waiting for one, puts
    /// the key at once rather than on its next retry.
    lease_granted: Arc<tokio::sync::Notify>,
    client: Option<Client>,
    watch: Option<WatchStream>,
    /// Every timing decision: when to claim, to renew, to stop acting.
    lease: Lease,
    /// The parsed value of `leader` as last seen (`Err` for garbage, `None` while absent).
    leader: Option<Result<LeaderRecord, String>>,
    /// Our own record while holding: what a renewal rewrites.
    held: Option<LeaderRecord>,
    /// Stops of failover this node wrote, or may have, for releases that did not go through.
    own_stops: OwnStops,
    /// Value and `mod_revision` (0: missing) of the epoch key.
    epoch_key: (u64, i64),
    campaigning: bool,
    /// Told once the first snapshot of the group is in.
    ready: Option<std::sync::mpsc::SyncSender<()>>,
    /// For the member writer, spawned at the first connection: this node's record, and whom
    /// to tell once its key is deleted.
    own_rx: Option<(watch::Receiver<Option<MemberRecord>>, Leaving)>,
    /// This node's record as the agent last wrote it: the release commits it with the leader
    /// key (see [`Task::release`]).
    own_now: watch::Receiver<Option<MemberRecord>>,
    /// When etcd last answered (the same as the view's `heard_at`, without its lock).
    heard: Option<Instant>,
    /// The backstop lease's keeper runs (on the first client; it survives reconnections).
    keeper_spawned: bool,
    /// Shared with the coordinator: see its `writer_started`.
    writer_started: Arc<AtomicBool>,
    /// The lease this node's member key was last put with (0: never): what a delete of "our"
    /// key compares, not the current lease, which the keeper may have replaced since.
    put_lease: Arc<AtomicI64>,
}

/// What the claim transaction tells.
enum Claim {
    Won {
        epoch: u64,
        created: bool,
        previous: HeartbeatReading,
    },
    Busy,
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let connected = self.client.is_some() && self.watch.is_some();
            if !connected {
                // A holder keeps renewing without a watch; resynchronising must not run past
                // its deadline.
                let limit = match self.lease.deadline() {
                    Some(d) => instant_at(d),
                    None => Instant::now() + Duration::from_secs(5),
                };
                match tokio::time::timeout_at(limit, self.resync()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!("etcd: {e}");
                        self.watch = None;
                    }
                    Err(_) => self.watch = None,
                }
            }
            self.publish_seen();
            // The agent's commands before the lease's next step: with a round trip to etcd
            // longer than `renew_interval`, renewals run back to back and the select below is
            // never reached (a `next_epoch` waited for its answer in vain, and gave the grant
            // back).
            loop {
                match cmds.try_recv() {
                    Ok(cmd) => self.on_cmd(cmd).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            let connected = self.client.is_some() && self.watch.is_some();
            if connected && !self.lease.holds() && Instant::now() >= self.probe_at() {
                self.probe().await;
                if self.client.is_none() {
                    continue;
                }
            }
            if let Some((rev, at, _)) = self.own_stops.withdraw {
                if Instant::now() >= at {
                    self.withdraw_stop(rev).await;
                }
            }
            let wake = match self.lease.poll(now(), self.campaigning) {
                Step::Lost(loss) => {
                    self.on_loss(loss);
                    continue;
                }
                Step::Renew(sent) => {
                    self.renew(sent).await;
                    continue;
                }
                Step::Claim(sent) => {
                    self.campaign_claim(sent).await;
                    continue;
                }
                Step::Idle(at) => at.map(instant_at),
            };
            let wake = match (wake, self.own_stops.withdraw.map(|w| w.1)) {
                (Some(w), Some(at)) => Some(w.min(at)),
                (w, at) => w.or(at),
            };
            let connected = self.client.is_some() && self.watch.is_some();
            let wake = if !connected {
                let retry = Instant::now() + RETRY;
                Some(wake.map_or(retry, |w| w.min(retry)))
            } else if self.lease.holds() {
                wake
            } else {
                let probe = self.probe_at();
                Some(wake.map_or(probe, |w| w.min(probe)))
            };
            tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => return,
                },
                msg = next_watch(&mut self.watch) => self.on_watch(msg),
                _ = sleep_until_opt(wake) => {}
            }
        }
    }

    /// A standby hears every renewal through its watch; after a quarter of `lease_ttl` of
    /// silence it asks etcd itself, so that a connection that stalled (a link that was down,
    /// packets dropped) is found and replaced before a claim depends on it, not after TCP's
    /// retransmission back-off or the seconds a keep-alive takes.
    fn probe_at(&self) -> Instant {
        let every = self.s.timing.lease_ttl / 4;
        self.heard.map(|h| h + every).unwrap_or_else(Instant::now)
    }

    fn heard(&mut self) {
        let now = Instant::now();
        self.heard = Some(now);
        lock(&self.view).heard_at = Some(now);
    }

    /// One linearizable read of the leader key, bounded by half of `lease_ttl` (a slow link's
    /// round trip is not a stalled connection). An answer also catches up a watch that lags; no
    /// answer means the connection is replaced, still before a claim is due.
    async fn probe(&mut self) {
        let Ok(mut client) = self.client() else {
            return;
        };
        let limit = self.s.timing.lease_ttl / 2;
        match tokio::time::timeout(limit, client.get(self.s.leader_key(), None)).await {
            Ok(Ok(resp)) => {
                self.heard();
                let kv = resp.kvs().first().cloned();
                let rev = kv.as_ref().map(|kv| kv.mod_revision()).unwrap_or(0);
                let seen = self.lease.seen().map_or(0, |s| s.rev);
                if rev > seen || (kv.is_none() && seen != 0) {
                    self.set_leader(kv.as_ref());
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("etcd: probe failed ({e}); reconnecting");
                self.client = None;
                self.watch = None;
            }
            Err(_) => {
                tracing::warn!(
                    "etcd: no answer to a probe within {} ms; reconnecting",
                    limit.as_millis()
                );
                self.client = None;
                self.watch = None;
            }
        }
    }

    fn publish_seen(&self) {
        let holder = match &self.leader {
            Some(Ok(r)) if !r.released => Some(r.node.clone()),
            _ => None,
        };
        let since = self.lease.seen().map(|s| s.since);
        let mut seen = lock(&self.seen);
        seen.holder = holder;
        seen.since = since;
    }

    /// A claim the campaign asked for.
    async fn campaign_claim(&mut self, sent: Sent) {
        match self.claim(sent).await {
            Ok(Claim::Won {
                epoch,
                created,
                previous,
            }) => {
                self.campaigning = false;
                let told = {
                    let mut v = lock(&self.view);
                    if v.campaigning {
                        v.holds = true;
                        v.campaigning = false;
                        v.claimed_epoch = Some(epoch);
                        // Sent under the view lock, so a release() cannot slip in between
                        // holding and telling (a grant that arrives after a release is then
                        // seen as stale).
                        let _ = self.events.send(CoordEvent::Acquired {
                            previous,
                            created,
                            lease: Some(self.s.timing.deadline),
                        });
                        true
                    } else {
                        false
                    }
                };
                if !told {
                    // The agent released (stopped campaigning) while the claim was on its
                    // way: it must not be told, and the group goes back at once.
                    self.release().await;
                }
            }
            Ok(Claim::Busy) => {}
            Err(e) => {
                // A connection that did not carry the claim in time may have stalled: the next
                // attempt goes over a new one.
                tracing::warn!("etcd: claim failed: {e}; reconnecting");
                self.client = None;
                self.watch = None;
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Campaign => {
                // While holding, the lease renews instead of claiming; the wish stays for after.
                self.campaigning = lock(&self.view).campaigning;
            }
            Cmd::Release => {
                self.campaigning = false;
                self.release().await;
            }
            Cmd::TryAcquire(reply) => {
                let answer = self.try_acquire().await;
                let won = matches!(answer, Ok(TryAcquire::Acquired { .. }));
                if reply.send(answer).is_err() && won {
                    // Nobody waits for this grant any more: give it back.
                    {
                        let mut v = lock(&self.view);
                        v.holds = false;
                        v.claimed_epoch = None;
                    }
                    self.release().await;
                }
            }
            Cmd::UseEpoch {
                floor,
                claimed,
                reply,
            } => {
                let answer = self.use_epoch(floor, claimed).await;
                let _ = reply.send(answer);
            }
            Cmd::Flush(reply) => {
                let _ = reply.send(());
            }
            Cmd::ReadMembers(reply) => self.read_members(reply),
            Cmd::StopFailover(mark, reply) => {
                let answer = self.stop_failover(mark).await;
                let _ = reply.send(answer);
            }
            Cmd::StartFailover(allow, reply) => {
                let answer = self.start_failover(allow).await;
                let _ = reply.send(answer);
            }
            Cmd::Leave(reply) => {
                // Only the key this agent's lease holds: an agent that found its name taken by
                // a live one (the same configuration on two machines) and exits must not
                // delete that one's key, which counts it in for a release (review 29, M2).
                let key = self.s.member_key(&self.s.node);
                let ours = [
                    self.put_lease.load(Ordering::Relaxed),
                    self.lease_id.load(Ordering::Relaxed),
                ];
                if let Ok(client) = self.client() {
                    if delete_if_ours(client, &key, ours).await.is_err() {
                        tracing::debug!(
                            "etcd: the member key was not deleted; it expires with its lease"
                        );
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    /// The keys under `members/` other than this node's, with their records, read now (etcd's
    /// default, linearizable read) on a task of its own: a holder's renewals go on meanwhile
    /// (read on this loop, a slow etcd let the lease lapse and the guardian kill the very
    /// service a release was to keep). A key hangs on its agent's backstop lease, so each one
    /// stands for an agent alive a moment ago, whether or not the watch delivered its record
    /// yet; its record says which agent (a restarted node's key is the new run's while the
    /// cache may still hold the old one). The cache is left alone: a dead agent's key, alive
    /// until its lease ends, must not make its record look fresh to every other decision.
    fn read_members(
        &mut self,
        reply: std::sync::mpsc::SyncSender<Result<Vec<LiveMember>, CoordError>>,
    ) {
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let prefix = self.s.members_prefix();
        let own = self.s.node.clone();
        tokio::spawn(async move {
            let got = tokio::time::timeout(
                Duration::from_secs(2),
                client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await;
            let answer = match got {
                Err(_) => Err(CoordError::Etcd(
                    "reading the group's members timed out".into(),
                )),
                Ok(Err(e)) => Err(etcd_error("cannot read the group's members", e)),
                Ok(Ok(resp)) => Ok(resp
                    .kvs()
                    .iter()
                    .filter_map(|kv| {
                        let name = kv.key().strip_prefix(prefix.as_bytes())?;
                        let name = std::str::from_utf8(name).ok()?;
                        if name == own || !is_valid_node_name(name) {
                            return None;
                        }
                        // Unreadable or oversized: the key alone speaks for a live agent.
                        let record = member_record(name, kv.value());
                        Some(LiveMember {
                            name: name.to_owned(),
                            record,
                        })
                    })
                    .collect()),
            };
            let _ = reply.send(answer);
        });
    }

    async fn try_acquire(&mut self) -> Result<TryAcquire, CoordError> {
        if self.lease.holds() {
            return Ok(TryAcquire::Acquired {
                previous: HeartbeatReading::Missing,
                created: false,
            });
        }
        if self.client.is_none() {
            return Err(CoordError::Etcd("not connected to etcd".into()));
        }
        if let Some(Ok(LeaderRecord {
            stopped: Some(mark),
            ..
        })) = &self.leader
        {
            return Err(CoordError::FailoverStopped(mark.describe()));
        }
        if self.lease.held_by_other(now()) {
            return Ok(TryAcquire::HeldByOther);
        }
        // A missing, garbage or released key may hide a holder whose key changed a moment ago:
        // wait out the rest of lease_ttl (bounded by it) rather than grant next to it.
        let sent = loop {
            match self.lease.claim_now(now()) {
                Ok(sent) => break sent,
                Err(Some(at)) => tokio::time::sleep_until(instant_at(at)).await,
                Err(None) => return Err(CoordError::Etcd("the group was not read yet".into())),
            }
        };
        match self.claim(sent).await? {
            Claim::Won {
                epoch,
                created,
                previous,
            } => {
                let mut v = lock(&self.view);
                v.holds = true;
                v.claimed_epoch = Some(epoch);
                Ok(TryAcquire::Acquired { previous, created })
            }
            Claim::Busy => Ok(TryAcquire::HeldByOther),
        }
    }

    fn client(&self) -> Result<Client, CoordError> {
        self.client
            .clone()
            .ok_or_else(|| CoordError::Etcd("not connected to etcd".into()))
    }

    fn leader_compare(&self, expect: i64) -> Compare {
        if expect == 0 {
            Compare::version(self.s.leader_key(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(self.s.leader_key(), CompareOp::Equal, expect)
        }
    }

    fn epoch_compare(&self) -> Compare {
        if self.epoch_key.1 == 0 {
            Compare::version(self.s.epoch_key(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(self.s.epoch_key(), CompareOp::Equal, self.epoch_key.1)
        }
    }

    fn put_options(&self) -> Option<PutOptions> {
        let lease = self.lease_id.load(Ordering::Relaxed);
        (lease != 0).then(|| PutOptions::new().with_lease(lease))
    }

    /// How `record` is put as the leader key: on this node's lease, except a stop of failover,
    /// which must outlive the agent that hands its service over and exits.
    fn leader_put_options(&self, record: &LeaderRecord) -> Option<PutOptions> {
        if record.stopped.is_some() {
            None
        } else {
            self.put_options()
        }
    }

    /// What TryHeartbeat decides on: the last renewal seen, dated by this node's own clock.
    fn as_heartbeat(&self) -> HeartbeatReading {
        match &self.leader {
            None => HeartbeatReading::Missing,
            Some(Err(why)) => HeartbeatReading::Garbage(why.clone()),
            Some(Ok(r)) => {
                let age = self.lease.renewal_age(now()).unwrap_or_default();
                HeartbeatReading::At(Heartbeat {
                    node: r.node.clone(),
                    epoch: r.epoch,
                    unix_ms: unix_ms().saturating_sub(age.as_millis() as u64),
                })
            }
        }
    }

    /// Sends `sent` (a compare-and-swap of `leader`, with `ops` when the compare holds) and waits
    /// for the answer until `until` on the lease's clock.
    async fn write_leader(
        &mut self,
        sent: Sent,
        extra: Vec<Compare>,
        ops: Vec<TxnOp>,
        until: Nanos,
    ) -> Result<Reply, CoordError> {
        self.write_leader_reading(sent, extra, ops, until)
            .await
            .map(|(reply, _)| reply)
    }

    /// [`Self::write_leader`], with the answers to the `Get`s among `ops` when it committed.
    async fn write_leader_reading(
        &mut self,
        sent: Sent,
        extra: Vec<Compare>,
        ops: Vec<TxnOp>,
        until: Nanos,
    ) -> Result<(Reply, Vec<TxnOpResponse>), CoordError> {
        let mut client = self.client()?;
        let mut when = vec![self.leader_compare(sent.expect)];
        when.extend(extra);
        let txn = Txn::new().when(when).and_then(ops).or_else([
            TxnOp::get(self.s.leader_key(), None),
            TxnOp::get(self.s.epoch_key(), None),
            TxnOp::get(self.s.used_key(), None),
        ]);
        let resp = tokio::time::timeout_at(instant_at(until), client.txn(txn))
            .await
            .map_err(|_| CoordError::Etcd("no answer before the deadline".into()))?
            .map_err(|e| etcd_error("transaction", e))?;
        self.heard();
        if !resp.succeeded() {
            let gets = resp.op_responses();
            self.absorb_gets(&gets);
            // The second Get is `epoch`'s: empty, the key is gone, and a claim must expect
            // it absent (its value stays a floor in the view).
            if let Some(TxnOpResponse::Get(g)) = gets.get(1) {
                if g.kvs().is_empty() {
                    self.epoch_key.1 = 0;
                }
            }
            return Ok((Reply::Refused, Vec::new()));
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((Reply::Committed { rev }, resp.op_responses()))
    }

    /// The claim: one transaction that takes `leader` if it is still what this node last saw, and
    /// raises the group epoch in the same commit.
    async fn claim(&mut self, sent: Sent) -> Result<Claim, CoordError> {
        tracing::trace!(expect = sent.expect, "etcd: claiming");
        let highest = {
            let v = lock(&self.view);
            v.epoch
        }
        .max(self.epoch_key.0)
        .max(match &self.leader {
            Some(Ok(r)) => r.epoch,
            _ => 0,
        })
        .max(
            lock(&self.cache)
                .values()
                .map(|m| m.node.epoch)
                .max()
                .unwrap_or(0),
        );
        let Some(epoch) = highest.checked_add(1) else {
            self.lease.answer(sent, Reply::Failed, now());
            return Err(CoordError::Etcd(
                "the group epoch cannot grow any further".into(),
            ));
        };
        let record = LeaderRecord {
            node: self.s.node.clone(),
            epoch,
            renewals: 0,
            unix_ms: unix_ms(),
            released: false,
            stopped: None,
        };
        let value = serde_json::to_vec(&record).map_err(|e| etcd_error("encoding", e))?;
        let previous = self.as_heartbeat();
        let created = sent.expect == 0;
        // `used` read back in the commit: whom the readiness rule judges against is exact
        // when the grant is told, whatever the watch has delivered yet.
        let ops = vec![
            TxnOp::put(self.s.epoch_key(), epoch.to_string(), None),
            TxnOp::put(self.s.leader_key(), value, self.put_options()),
            TxnOp::get(self.s.used_key(), None),
        ];
        let until = sent
            .at
            .saturating_add(self.s.timing.deadline.as_nanos() as u64);
        let (reply, err, read) = match self
            .write_leader_reading(sent, vec![self.epoch_compare()], ops, until)
            .await
        {
            Ok((reply, read)) => (reply, None, read),
            Err(e) => (Reply::Failed, Some(e), Vec::new()),
        };
        let Outcome::Granted { deadline } = self.lease.answer(sent, reply, now()) else {
            return match err {
                Some(e) => Err(e),
                None => Ok(Claim::Busy),
            };
        };
        let Reply::Committed { rev } = reply else {
            return Ok(Claim::Busy);
        };
        // Armed before anyone is told: the guardian kills at this deadline unless extended.
        (self.fence)(Fence::Until(deadline));
        self.epoch_key = (epoch, rev);
        self.leader = Some(Ok(record.clone()));
        self.held = Some(record);
        // A new holding: whatever an earlier one left in doubt compared an older revision and
        // can never commit now, and a stop to withdraw was overwritten by this claim (review
        // 33, L2).
        self.own_stops = OwnStops::default();
        self.absorb_gets(&read);
        {
            let mut v = lock(&self.view);
            v.epoch = v.epoch.max(epoch);
        }
        tracing::info!(epoch, rev, "etcd: group claimed");
        Ok(Claim::Won {
            epoch,
            created,
            previous,
        })
    }

    /// One compare-and-swap renewal; the deadline moves to its send time + `deadline`.
    async fn renew(&mut self, sent: Sent) {
        let record = self.held.clone().unwrap_or_else(|| LeaderRecord {
            node: self.s.node.clone(),
            epoch: lock(&self.view).epoch,
            renewals: 0,
            unix_ms: 0,
            released: false,
            stopped: None,
        });
        if let (_, Some(e)) = self.write_renewal(sent, record).await {
            tracing::debug!("etcd: renewal failed: {e}");
        }
    }

    /// One renewal of `record` (this node's own, the counter and time moved on): put on this
    /// node's lease unless it stops failover. Extended, it is the held record from now on;
    /// lost, the loss is handled. A stop whose answer was lost is looked up in the key: it may
    /// have committed, and then it stops failover for good while this node would go on as if
    /// not (review 30, M1).
    async fn write_renewal(
        &mut self,
        sent: Sent,
        mut record: LeaderRecord,
    ) -> (Outcome, Option<CoordError>) {
        record.renewals = record.renewals.saturating_add(1);
        record.unix_ms = unix_ms();
        let ops = match serde_json::to_vec(&record) {
            Ok(value) => vec![TxnOp::put(
                self.s.leader_key(),
                value,
                self.leader_put_options(&record),
            )],
            Err(_) => Vec::new(),
        };
        let until = self.lease.deadline().unwrap_or(sent.at);
        // Only the write that puts a stop into a record without one is the stop a release
        // waits for; the renewals after it carry the same stop (review 33, H1).
        let introduces =
            record.stopped.is_some() && self.held.as_ref().is_some_and(|h| h.stopped.is_none());
        self.own_stops.retry = false;
        let (mut reply, err) = answered(self.write_leader(sent, Vec::new(), ops, until).await);
        if reply == Reply::Failed && record.stopped.is_some() {
            if let Some(rev) = self.own_write_at(&record, until).await {
                reply = Reply::Committed { rev };
            }
        }
        match reply {
            Reply::Failed if introduces => {
                self.own_stops.doubt(record.clone(), sent.expect);
            }
            // Refused because a doubtful stop of ours committed meanwhile (seen in the
            // transaction's reads and adopted): soon again, from its revision.
            Reply::Refused if std::mem::take(&mut self.own_stops.retry) => reply = Reply::Failed,
            Reply::Committed { .. } => self.own_stops.ours_committed(),
            _ => {}
        }
        let took = Duration::from_nanos(now().saturating_sub(sent.at));
        let outcome = self.lease.answer(sent, reply, now());
        if let (true, Reply::Committed { rev }, Outcome::Lost(_)) = (introduces, reply, &outcome) {
            // The stop committed, but too late to count: the release is refused and the
            // service fenced, so the stop is withdrawn (review 32, M2).
            self.own_stops.withdraw(rev);
        }
        match outcome {
            Outcome::Extended { deadline } => {
                tracing::trace!(?took, "etcd: renewal acknowledged");
                if record.stopped.is_some() {
                    self.own_stops.acknowledge();
                }
                (self.fence)(Fence::Until(deadline));
                lock(&self.view).stopped.clone_from(&record.stopped);
                self.leader = Some(Ok(record.clone()));
                self.held = Some(record);
            }
            Outcome::Lost(loss) => self.on_loss(loss),
            _ => {}
        }
        (outcome, err)
    }

    fn on_loss(&mut self, loss: Loss) {
        if self.held.take().is_none() {
            return;
        }
        if let Some(rev) = self.own_stops.adopted.take() {
            // Adopted, and lost before a renewal of ours replaced it (review 32, M2).
            self.own_stops.withdraw(rev);
        }
        (self.fence)(Fence::Lost);
        {
            let mut v = lock(&self.view);
            v.holds = false;
            v.claimed_epoch = None;
            // A campaign the agent asked for meanwhile goes on; otherwise the agent campaigns
            // again once it has stopped its service.
            self.campaigning = v.campaigning;
        }
        if loss != Loss::Overwritten {
            // The connection that could not renew in time is not trusted any more: it may sit
            // in TCP's retransmission back-off for seconds after the network is back, delivering
            // the new holder's writes late, so a standby on it would claim late. A fresh one is
            // made now, and until it has answered, this node is not ready (`unreachable`).
            self.client = None;
            self.watch = None;
            self.heard = None;
            lock(&self.view).heard_at = None;
        }
        tracing::warn!("etcd: lost the group: {loss}");
        let _ = self.events.send(CoordEvent::Lost {
            reason: loss.to_string(),
        });
    }

    /// Graceful hand-over: mark the record released (by compare-and-swap), so standbys claim at
    /// once instead of after lease_ttl. The engine releases only once the service stopped acting.
    async fn release(&mut self) {
        let Some(sent) = self.lease.release(now()) else {
            return;
        };
        (self.fence)(Fence::Released);
        let Some(mut record) = self.held.take() else {
            return;
        };
        record.released = true;
        record.unix_ms = unix_ms();
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        let leader = TxnOp::put(self.s.leader_key(), value, self.leader_put_options(&record));
        let until = now().saturating_add(self.s.timing.lease_ttl.as_nanos() as u64);
        // This node's record goes in the same commit: written by its own task, it could reach
        // etcd after the release, and a standby claiming in between judged the grant without
        // it — without a switchover's `handover_to`, so it kept a group handed to another node
        // (review 25, R25-4).
        let ops = std::iter::once(leader)
            .chain(self.own_record_op())
            .collect();
        let result = self.write_leader(sent, Vec::new(), ops, until).await;
        match result {
            Ok(Reply::Committed { .. }) => tracing::info!("etcd: group released"),
            Ok(_) => tracing::info!("etcd: group already taken over"),
            Err(e) => {
                tracing::warn!("etcd: release failed ({e}); standbys take over after lease_ttl")
            }
        }
    }

    /// Records a stop of failover in the leader key while holding: a renewal (the deadline
    /// moves as with any) of a record that carries the stop, without a lease. Every later write
    /// of the record (renewals until the release, the release) keeps it. Err when it did not
    /// commit for sure; the next renewal then writes the record without it.
    async fn stop_failover(&mut self, mark: StopMark) -> Result<(), CoordError> {
        let Some(mut record) = self.held.clone() else {
            return Err(CoordError::NotHolder);
        };
        // Commands run between the lease's steps, so no write of ours is in flight here.
        let Some(sent) = self.lease.renew_now(now()) else {
            return Err(CoordError::Etcd(
                "a write of the leader key is in flight".into(),
            ));
        };
        record.stopped = Some(mark);
        match self.write_renewal(sent, record).await {
            (Outcome::Extended { .. }, _) => {
                tracing::info!("etcd: failover stopped for the group");
                Ok(())
            }
            (Outcome::Lost(loss), _) => {
                Err(CoordError::Etcd(format!("the group was lost: {loss}")))
            }
            (_, err) => Err(err.unwrap_or_else(|| {
                CoordError::Etcd("the stop was not acknowledged in time".into())
            })),
        }
    }

    /// The revision at which the leader key holds `record` (this node's, compared whole), read
    /// now, by `until` on the lease's clock; None when it does not or cannot be told.
    async fn own_write_at(&mut self, record: &LeaderRecord, until: Nanos) -> Option<i64> {
        let mut client = self.client().ok()?;
        let got = tokio::time::timeout_at(instant_at(until), client.get(self.s.leader_key(), None))
            .await
            .ok()?
            .ok()?;
        self.heard();
        let kv = got.kvs().first()?;
        let found = LeaderRecord::parse(kv.value()).ok()?;
        (&found == record).then(|| kv.mod_revision())
    }

    /// Deletes the leader key if it records a stop of failover (compared on its revision, so
    /// nothing written since is deleted). The nodes then claim as for a key that vanished.
    async fn start_failover(&mut self, allow: Allow) -> Result<Option<StopMark>, CoordError> {
        if self.lease.holds() {
            // The holder's record is no stop, and its renewals must not wait behind this
            // (review 30, M4).
            return Ok(None);
        }
        let mut client = self.client()?;
        let key = self.s.leader_key();
        let limit = self.s.timing.lease_ttl + self.s.timing.deadline;
        let got = tokio::time::timeout(limit, client.get(key.clone(), None))
            .await
            .map_err(|_| CoordError::Etcd("reading the leader key timed out".into()))?
            .map_err(|e| etcd_error("reading the leader key", e))?;
        self.heard();
        let Some(kv) = got.kvs().first() else {
            return Ok(None);
        };
        let Some(mark) = LeaderRecord::parse(kv.value()).ok().and_then(|r| r.stopped) else {
            return Ok(None);
        };
        allow(&mark).map_err(CoordError::FailoverStopped)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        let resp = tokio::time::timeout(limit, client.txn(txn))
            .await
            .map_err(|_| CoordError::Etcd("deleting the stop timed out".into()))?
            .map_err(|e| etcd_error("deleting the stop", e))?;
        if !resp.succeeded() {
            return Err(CoordError::Etcd(
                "the leader key changed while failover was being started; try again".into(),
            ));
        }
        tracing::info!(stop = %mark.describe(), "etcd: failover started again");
        Ok(Some(mark))
    }

    /// Deletes the leader key while it still holds, at `rev`, the stop this node sent for a
    /// release that was refused for want of its answer: nothing was handed over, and the group
    /// would otherwise stay stopped with no active (its service was fenced when the group was
    /// lost). Tried again on the loop's next turn while etcd does not answer.
    async fn withdraw_stop(&mut self, rev: i64) {
        let result = match self.client() {
            Ok(mut client) => {
                let key = self.s.leader_key();
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::delete(key, None)]);
                let limit = self.s.timing.lease_ttl + self.s.timing.deadline;
                match tokio::time::timeout(limit, client.txn(txn)).await {
                    Ok(Ok(resp)) => Ok(resp.succeeded()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(deleted) => {
                self.heard();
                self.own_stops.withdraw = None;
                if deleted {
                    tracing::warn!("etcd: withdrew the stop of failover of a release that did not go through; failover runs again");
                } else {
                    tracing::info!("etcd: the stop of failover of a release that did not go through was already replaced");
                }
            }
            Err(e) => {
                // Tried again after a doubling pause (at most 5 s), so a lasting refusal (a role
                // without delete on the key) neither floods the log nor holds up the loop.
                let Some((_, _, backoff)) = self.own_stops.withdraw else {
                    return;
                };
                tracing::warn!(retry_in = ?backoff, "etcd: withdrawing the stop of failover of a release that did not go through: {e}");
                self.own_stops.withdraw = Some((
                    rev,
                    Instant::now() + backoff,
                    (backoff * 2).min(Duration::from_secs(5)),
                ));
            }
        }
    }

    /// A put of this node's current record, as the member writer would put it.
    fn own_record_op(&self) -> Option<TxnOp> {
        let rec = self.own_now.borrow().clone()?;
        let json = serde_json::to_vec(&rec).ok()?;
        let key = self.s.member_key(&rec.node.name);
        // Never without a lease: a key that outlived its agent would make every later release
        // of the group refused.
        let id = self.lease_id.load(Ordering::Relaxed);
        if id == 0 {
            return None;
        }
        Some(TxnOp::put(
            key,
            json,
            Some(PutOptions::new().with_lease(id)),
        ))
    }

    /// Marks an epoch used, by a renewal that also writes `used` (and `epoch` when it must go
    /// above the claimed one): the epoch the claim raised when it is above `floor`, else one
    /// above everything seen.
    async fn use_epoch(&mut self, floor: u64, claimed: Option<u64>) -> Result<u64, CoordError> {
        let mut record = self.held.clone().ok_or(CoordError::NotHolder)?;
        let (epoch, raise) = match claimed {
            Some(e) if e > floor => (e, false),
            _ => {
                let e = self
                    .epoch_key
                    .0
                    .max(floor)
                    .max(lock(&self.view).epoch)
                    .checked_add(1)
                    .ok_or_else(|| {
                        CoordError::Etcd("the group epoch cannot grow any further".into())
                    })?;
                (e, true)
            }
        };
        let used = UsedRecord::after(lock(&self.view).used.as_ref(), &self.s.node, epoch);
        let used_value = serde_json::to_vec(&used).map_err(|e| etcd_error("encoding", e))?;
        let sent = self.lease.renew_now(now()).ok_or(CoordError::NotHolder)?;
        record.epoch = epoch;
        record.renewals = record.renewals.saturating_add(1);
        record.unix_ms = unix_ms();
        let value = serde_json::to_vec(&record).map_err(|e| etcd_error("encoding", e))?;
        let mut ops = Vec::with_capacity(3);
        if raise {
            ops.push(TxnOp::put(self.s.epoch_key(), epoch.to_string(), None));
        }
        // Before `leader` in the commit, so a watcher never sees the renewal without it; on no
        // lease, so that it outlives every agent (see the module documentation).
        ops.push(TxnOp::put(self.s.used_key(), used_value, None));
        let options = self.leader_put_options(&record);
        ops.push(TxnOp::put(self.s.leader_key(), value, options));
        let until = self.lease.deadline().unwrap_or(sent.at);
        let (answer, err) = answered(
            self.write_leader(sent, vec![self.epoch_compare()], ops, until)
                .await,
        );
        match self.lease.answer(sent, answer, now()) {
            Outcome::Extended { deadline } => {
                (self.fence)(Fence::Until(deadline));
                if raise {
                    let rev = match answer {
                        Reply::Committed { rev } => rev,
                        _ => 0,
                    };
                    self.epoch_key = (epoch, rev);
                }
                self.leader = Some(Ok(record.clone()));
                self.held = Some(record);
                let mut v = lock(&self.view);
                v.epoch = v.epoch.max(epoch);
                v.used = Some(used);
                Ok(epoch)
            }
            Outcome::Lost(loss) => {
                self.on_loss(loss);
                Err(CoordError::Etcd(format!("taking the epoch: {loss}")))
            }
            _ => Err(err.unwrap_or_else(|| {
                CoordError::Etcd("the group changed while taking the epoch".into())
            })),
        }
    }

    /// Connect if needed, read the whole group, and watch it from the revision read.
    async fn resync(&mut self) -> Result<(), CoordError> {
        if self.client.is_none() {
            let client = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect(self.s.endpoints.clone(), Some(self.options.clone())),
            )
            .await
            .map_err(|_| CoordError::Etcd("connecting to etcd timed out".into()))?
            .map_err(|e| etcd_error("cannot connect to etcd", e))?;
            self.client = Some(client.clone());
            if !self.keeper_spawned {
                self.keeper_spawned = true;
                self.spawn_lease_keeper(client.clone());
            }
            if let Some((rx, leaving)) = self.own_rx.take() {
                self.writer_started.store(true, Ordering::Relaxed);
                tokio::spawn(member_writer(
                    client,
                    rx,
                    leaving,
                    self.s.members_prefix(),
                    WriterLeases {
                        lease: Arc::clone(&self.lease_id),
                        put_lease: Arc::clone(&self.put_lease),
                        granted: Arc::clone(&self.lease_granted),
                        lost: Arc::clone(&self.lease_lost),
                        own_key: Arc::clone(&self.own_key),
                    },
                ));
            }
        }
        let mut client = self.client()?;
        let resp = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(self.s.group_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| CoordError::Etcd("reading the group timed out".into()))?
        .map_err(|e| etcd_error("cannot read the group", e))?;
        self.heard();
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut leader = None;
        // Kept from the cache: only the records the snapshot shows unchanged (at the revision
        // they were read at), so that they keep when they were first received (see
        // `absorbed_at`). Everything else is read anew; a name the snapshot lacks, or whose
        // value no longer reads, goes. This node's own record is the agent's, put back below.
        let prefix = self.s.members_prefix();
        let unchanged: BTreeMap<String, i64> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = std::str::from_utf8(kv.key().strip_prefix(prefix.as_bytes())?).ok()?;
                (self.absorbed_at.get(name) == Some(&kv.mod_revision()))
                    .then(|| (name.to_owned(), kv.mod_revision()))
            })
            .collect();
        let mut fresh = lock(&self.cache).clone();
        fresh.retain(|name, _| *name != self.s.node && unchanged.contains_key(name));
        self.absorbed_at = unchanged;
        if !resp
            .kvs()
            .iter()
            .any(|kv| kv.key() == self.s.epoch_key().as_bytes())
        {
            self.epoch_key.1 = 0;
        }
        let own_key = self.s.member_key(&self.s.node);
        if !resp.kvs().iter().any(|kv| kv.key() == own_key.as_bytes()) {
            *lock(&self.namesake) = None;
            self.own_key.on_etcd.store(0, Ordering::Relaxed);
        }
        for kv in resp.kvs() {
            if kv.key() == self.s.leader_key().as_bytes() {
                leader = Some(kv.clone());
            } else {
                self.absorb(kv, &mut fresh);
            }
        }
        self.set_leader(leader.as_ref());
        {
            let mut cache = lock(&self.cache);
            let own = cache.remove(&self.s.node);
            *cache = fresh;
            if let Some(own) = own {
                cache.insert(self.s.node.clone(), own);
            }
        }
        let stream = client
            .watch(
                self.s.group_prefix(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
            .map_err(|e| etcd_error("cannot watch the group", e))?;
        self.watch = Some(stream);
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        Ok(())
    }

    /// A non-leader key of the group: the epoch counter, the used epoch or a member record.
    fn absorb(&mut self, kv: &KeyValue, members: &mut BTreeMap<String, MemberRecord>) {
        let key = kv.key();
        if key == self.s.used_key().as_bytes() {
            match UsedRecord::parse(kv.value()) {
                Ok(used) => {
                    let mut v = lock(&self.view);
                    v.epoch = v.epoch.max(used.epoch);
                    if v.used.as_ref().is_none_or(|u| u.epoch < used.epoch) {
                        v.used = Some(used);
                    }
                }
                // Only a holder writes it, and only what it read: garbage there is an
                // operator's, and the next holder's write replaces it.
                Err(why) => tracing::warn!("etcd: the used-epoch key holds garbage: {why}"),
            }
            return;
        }
        if key == self.s.epoch_key().as_bytes() {
            let value = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            match value {
                Some(e) => {
                    // A lagging watch must not take the compare back to an older write.
                    if kv.mod_revision() >= self.epoch_key.1 {
                        self.epoch_key = (e, kv.mod_revision());
                    }
                    let mut v = lock(&self.view);
                    v.epoch = v.epoch.max(e);
                }
                None => {
                    tracing::warn!("etcd: the epoch key holds garbage; it will be overwritten");
                    self.epoch_key = (0, kv.mod_revision());
                }
            }
            return;
        }
        let Some(name) = key
            .strip_prefix(self.s.members_prefix().as_bytes())
            .and_then(|n| std::str::from_utf8(n).ok())
        else {
            return;
        };
        if kv.value().len() > MAX_MEMBER_BYTES {
            return;
        }
        if name == self.s.node {
            self.own_key.on_etcd.store(kv.lease(), Ordering::Relaxed);
            // Dated on receipt, like every record read from etcd: the key hangs on its writer's
            // lease, so it is there only while that agent lived a moment ago.
            let rec = member_record(name, kv.value()).map(|r| MemberRecord {
                last_seen_unix_ms: unix_ms(),
                ..r
            });
            *lock(&self.namesake) = rec.map(|r| (r, kv.mod_revision().max(0) as u64));
            return;
        }
        match member_record(name, kv.value()).filter(|_| is_valid_node_name(name)) {
            Some(mut rec) => {
                if members.len() >= MAX_MEMBERS && !members.contains_key(name) {
                    tracing::warn!("etcd: more than {MAX_MEMBERS} member records; ignoring {name}");
                    return;
                }
                let unchanged = self.absorbed_at.get(name) == Some(&kv.mod_revision());
                rec.last_seen_unix_ms = match members.get(name) {
                    Some(prev) if unchanged => prev.last_seen_unix_ms,
                    _ => unix_ms(),
                };
                self.absorbed_at.insert(name.to_string(), kv.mod_revision());
                let mut v = lock(&self.view);
                v.epoch = v.epoch.max(rec.node.epoch);
                drop(v);
                members.insert(name.to_string(), rec);
            }
            None => tracing::debug!(node = name, "etcd: skipping an unreadable member record"),
        }
    }

    fn set_leader(&mut self, kv: Option<&KeyValue>) {
        let rev = kv.map(|kv| kv.mod_revision()).unwrap_or(0);
        if self.lease.seen().is_some_and(|s| s.rev == rev) {
            return;
        }
        let record = kv.map(|kv| LeaderRecord::parse(kv.value()));
        // Only a newer revision says anything about a doubtful stop: the watch may deliver
        // events older than our own writes' answers. A deletion (no revision here) is left
        // alone: our exact record can only appear after it if it never mattered.
        let own = &self.own_stops;
        let landed = match &record {
            Some(Ok(r)) => own.landed(r, rev, &self.s.node),
            _ => None,
        };
        let adopting = landed == Some(true) && self.lease.holds();
        let (mine, released, stopped) = match &record {
            Some(Ok(r)) => {
                let mut v = lock(&self.view);
                v.epoch = v.epoch.max(r.epoch);
                if !adopting {
                    // Adopted, the stop is gone at the next renewal: not shown meanwhile
                    // (review 32, L6).
                    v.stopped.clone_from(&r.stopped);
                }
                (r.node == self.s.node, r.released, r.stopped.is_some())
            }
            _ => {
                lock(&self.view).stopped = None;
                (false, false, false)
            }
        };
        self.leader = record;
        tracing::trace!(rev, mine, released, stopped, "etcd: leader observed");
        if let Some(loss) = self
            .lease
            .observe_record(rev, mine, released, stopped, now())
        {
            self.on_loss(loss);
        }
        match landed {
            // The key moved on without them: their compare can never hold any more.
            Some(false) => self.own_stops.clear_doubts(),
            Some(true) => {
                self.own_stops.clear_doubts();
                if self.lease.holds() {
                    // Still holding: renewals go on from it (the held record, which has no
                    // stop, replaces it at the next one), rather than finding the key changed
                    // and losing the group.
                    tracing::warn!(rev, "etcd: a stop of failover whose answer was lost committed after all; renewing over it");
                    self.lease.adopt(rev);
                    self.own_stops.adopted = Some(rev);
                    self.own_stops.retry = true;
                } else {
                    tracing::warn!(rev, "etcd: a stop of failover whose answer was lost committed after all, after this node lost the group; withdrawing it");
                    self.own_stops.withdraw(rev);
                }
            }
            None => {}
        }
    }

    /// The `Get`s of a failed transaction: the state that made it fail.
    fn absorb_gets(&mut self, responses: &[TxnOpResponse]) {
        for r in responses {
            if let TxnOpResponse::Get(g) = r {
                let is_leader = |kv: &KeyValue| kv.key() == self.s.leader_key().as_bytes();
                match g.kvs().first() {
                    Some(kv) if is_leader(kv) => {
                        let kv = kv.clone();
                        self.set_leader(Some(&kv));
                    }
                    Some(kv) => {
                        let kv = kv.clone();
                        let mut scratch = BTreeMap::new();
                        self.absorb(&kv, &mut scratch);
                    }
                    None => {}
                }
            }
        }
        // An empty Get of the leader key means it is gone: the Else branch asks for it first.
        if let Some(TxnOpResponse::Get(g)) = responses.first() {
            if g.kvs().is_empty() {
                self.set_leader(None);
            }
        }
    }

    fn on_watch(&mut self, msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>) {
        let resp = match msg {
            Ok(Some(resp)) => {
                self.heard();
                resp
            }
            Ok(None) => {
                tracing::warn!("etcd: the watch ended; resynchronising");
                self.watch = None;
                return;
            }
            Err(e) => {
                tracing::warn!("etcd: the watch failed ({e}); resynchronising");
                self.watch = None;
                return;
            }
        };
        if resp.canceled() {
            tracing::warn!(
                reason = resp.cancel_reason(),
                "etcd: the watch was cancelled; resynchronising"
            );
            self.watch = None;
            return;
        }
        let leader_key = self.s.leader_key();
        // Held for the whole response: taken out and put back, the cache read empty to the
        // agent meanwhile, and an own record it wrote in between was lost (review 36). Nothing
        // below locks it again (the fence sink only arms or disarms the guardian).
        let cache = Arc::clone(&self.cache);
        let mut members = lock(&cache);
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let delete = ev.event_type() == EventType::Delete;
            if kv.key() == leader_key.as_bytes() {
                if delete {
                    self.set_leader(None);
                } else {
                    let kv = kv.clone();
                    self.set_leader(Some(&kv));
                }
            } else if delete && kv.key() == self.s.epoch_key().as_bytes() {
                // Gone (an operator, or a key written on a lease before 3 December): claims
                // expect it absent; its value stays a floor in the view.
                self.epoch_key.1 = 0;
            } else if delete {
                if let Some(name) = kv
                    .key()
                    .strip_prefix(self.s.members_prefix().as_bytes())
                    .and_then(|n| std::str::from_utf8(n).ok())
                {
                    if name != self.s.node {
                        members.remove(name);
                        self.absorbed_at.remove(name);
                    } else {
                        *lock(&self.namesake) = None;
                        self.own_key.on_etcd.store(0, Ordering::Relaxed);
                    }
                }
            } else {
                self.absorb(kv, &mut members);
            }
        }
    }

    /// Keeps the backstop lease alive; grants a new one when it expired (e.g. after a long
    /// freeze). Only member records and the leader key hang on it (`epoch` and `used` must
    /// outlive every agent: a counter that vanished made claims compare against a key that
    /// no longer exists).
    fn spawn_lease_keeper(&self, client: Client) {
        let lease = Arc::clone(&self.lease_id);
        let granted_tx = Arc::clone(&self.lease_granted);
        let lost = Arc::clone(&self.lease_lost);
        let ttl = self.s.backstop_ttl.as_secs().max(1) as i64;
        tokio::spawn(async move {
            let mut client = client;
            loop {
                let granted = match client.lease_grant(ttl, None).await {
                    Ok(g) => g.id(),
                    Err(e) => {
                        tracing::warn!("etcd: cannot grant the backstop lease: {e}");
                        tokio::time::sleep(RETRY * 5).await;
                        continue;
                    }
                };
                let (mut keeper, mut stream) = match client.lease_keep_alive(granted).await {
                    Ok(k) => k,
                    Err(e) => {
                        // Not granted again at once: a lasting refusal would grant lease after
                        // lease, each left to expire, and the key would never settle on one.
                        tracing::warn!("etcd: cannot keep the backstop lease alive: {e}");
                        tokio::time::sleep(RETRY * 5).await;
                        continue;
                    }
                };
                // Used only once it is kept alive.
                lease.store(granted, Ordering::Relaxed);
                granted_tx.notify_one();
                loop {
                    let pause = Duration::from_millis(ttl as u64 * 1000 / 3);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        // The writer found it unknown to etcd (expired meanwhile) and dropped
                        // it; a wake left from an earlier lease finds this one still held.
                        _ = lost.notified() => {
                            if lease.load(Ordering::Relaxed) != granted {
                                // Paced: etcd answering every put with "not found" (endpoints
                                // of two clusters) must not have leases granted back to back.
                                tokio::time::sleep(RETRY).await;
                                break;
                            }
                            continue;
                        }
                    }
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        // Expired, or the stream broke: a new lease.
                        _ => break,
                    }
                }
                lease.store(0, Ordering::Relaxed);
            }
        });
    }
}

/// Deletes `key` if one of `leases` (0s skipped) holds it, each tried in one transaction
/// bounded by a second: a key under another lease is another agent's (a twin of this node's
/// name), and must stay.
async fn delete_if_ours(
    mut client: Client,
    key: &str,
    leases: [i64; 2],
) -> Result<(), etcd_client::Error> {
    let mut tried = 0;
    for id in leases {
        if id == 0 || id == tried {
            continue;
        }
        tried = id;
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, id)])
            .and_then([TxnOp::delete(key, None)]);
        match tokio::time::timeout(Duration::from_secs(1), client.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(etcd_client::Error::InvalidArgs(
                    "deleting the member key timed out".into(),
                ))
            }
        }
    }
    Ok(())
}

/// The leases and signals the member writer shares with the keeper and the coordinator.
struct WriterLeases {
    /// The backstop lease held now (0: none).
    lease: Arc<AtomicI64>,
    /// The lease of the writer's last successful put (see [`Task::put_lease`]).
    put_lease: Arc<AtomicI64>,
    /// Told by the keeper when it granted a lease.
    granted: Arc<tokio::sync::Notify>,
    /// Told by the writer when etcd does not know the lease any more.
    lost: Arc<tokio::sync::Notify>,
    own_key: Arc<OwnKey>,
}

/// Whether this node's member key stands on etcd, shared by the etcd task and the
/// coordinator's readiness ([`Coordinator::unreachable`]).
#[derive(Debug, Default)]
struct OwnKey {
    /// The lease etcd last showed the key on, through the watch or a snapshot (0: absent).
    on_etcd: AtomicI64,
    /// Why the last put failed; cleared by the next one that succeeds.
    put_error: Mutex<Option<String>>,
}

/// How long a put of the member record may take: a stalled connection must not keep the
/// writer from the next record, nor the agent's stop from its key.
const PUT_WAIT: Duration = Duration::from_secs(2);

/// Writes this node's member record whenever it changes (the newest wins; nothing queues),
/// and again on each new lease. Once the record is removed (the agent stops), deletes the key
/// and tells `left`: a put still in flight then cannot land after the delete and outlive the
/// agent.
async fn member_writer(
    mut client: Client,
    mut rx: watch::Receiver<Option<MemberRecord>>,
    (left, removed): Leaving,
    prefix: String,
    leases: WriterLeases,
) {
    let WriterLeases {
        lease,
        put_lease,
        granted,
        lost,
        own_key,
    } = leases;
    let mut last_key: Option<String> = None;
    let mut warned: Vec<String> = Vec::new();
    loop {
        let rec = rx.borrow_and_update().clone();
        // Err(None): nothing to say (no lease yet, the keeper is on it).
        let result: Result<(), Option<String>> = match &rec {
            Some(rec) => match serde_json::to_vec(rec) {
                Ok(json) => {
                    let key = format!("{prefix}{}", rec.node.name);
                    last_key = Some(key.clone());
                    // Never without a lease: a key that outlived its agent would count as a
                    // live member for good, and refuse every later release of the group
                    // (review 27, N3). Without one yet (or revoked at the agent's stop), wait.
                    match lease.load(Ordering::Relaxed) {
                        0 => Err(None),
                        id => {
                            let put = client.put(key, json, Some(PutOptions::new().with_lease(id)));
                            match tokio::time::timeout(PUT_WAIT, put).await {
                                Ok(Ok(_)) => {
                                    put_lease.store(id, Ordering::Relaxed);
                                    Ok(())
                                }
                                Ok(Err(e)) => {
                                    if is_not_found(&e)
                                        && lease
                                            .compare_exchange(
                                                id,
                                                0,
                                                Ordering::Relaxed,
                                                Ordering::Relaxed,
                                            )
                                            .is_ok()
                                    {
                                        // Expired on etcd before its keeper's next keep-alive
                                        // (a long freeze or suspend): the key went with it.
                                        lost.notify_one();
                                    }
                                    Err(Some(e.to_string()))
                                }
                                Err(_) => Err(Some(format!(
                                    "no answer within {} ms",
                                    PUT_WAIT.as_millis()
                                ))),
                            }
                        }
                    }
                }
                Err(_) => Ok(()),
            },
            None => {
                // Its own key only (see Cmd::Leave), bounded: the agent's exit waits for it.
                let ours = [
                    put_lease.load(Ordering::Relaxed),
                    lease.load(Ordering::Relaxed),
                ];
                let gone = match &last_key {
                    Some(key) => delete_if_ours(client.clone(), key, ours).await,
                    None => Ok(()),
                };
                // Not the empty record the writer starts with: told then, the stop would not
                // wait for a put still in flight (a key left for `backstop_ttl`, seen in tests
                // that stop an agent within milliseconds of its start).
                if gone.is_ok() && removed.load(Ordering::SeqCst) {
                    let _ = left.try_send(());
                }
                gone.map_err(|e| Some(e.to_string()))
            }
        };
        match result {
            Ok(()) => {
                *lock(&own_key.put_error) = None;
                warned.clear();
            }
            Err(why) => {
                if let Some(e) = why {
                    // Said once per cause until a put succeeds, even when causes alternate: a
                    // put refused for good (a role without write on the members' keys) keeps
                    // the node not ready, and must not hide at debug, nor flood the log.
                    if !warned.contains(&e) {
                        tracing::warn!("etcd: cannot write this node's member record: {e}");
                        if warned.len() >= 8 {
                            warned.remove(0);
                        }
                        warned.push(e.clone());
                    }
                    *lock(&own_key.put_error) = Some(e);
                }
                // A lease granted meanwhile ends the wait: until the key is put, this node is
                // not ready (see `unreachable`).
                let _ = tokio::time::timeout(RETRY, granted.notified()).await;
                rx.mark_changed();
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // A new lease (the old one expired or its keep-alive broke): the key moves to it
            // now, not at the agent's next record.
            _ = granted.notified() => {}
        }
    }
}

/// The record a member key `name` holds, when it reads as one and names that node (bounded:
/// a record is a few hundred bytes).
fn member_record(name: &str, value: &[u8]) -> Option<MemberRecord> {
    if value.len() > MAX_MEMBER_BYTES {
        return None;
    }
    serde_json::from_slice::<MemberRecord>(value)
        .ok()
        .filter(|r| r.node.name == name)
}

/// etcd's answer to a put on a lease it does not know (expired or revoked): gRPC's NOT_FOUND
/// (5), which a put returns for nothing else.
fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 5)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_watch(
    w: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempt `n` of a stop by node a of its service, pid 77: attempts differ in what each
    /// sets anew (renewal count, times).
    fn stop_record(n: u32) -> LeaderRecord {
        LeaderRecord {
            node: "a".into(),
            epoch: 3,
            renewals: u64::from(n),
            unix_ms: u64::from(n),
            released: false,
            stopped: Some(StopMark {
                node: "a".into(),
                epoch: 3,
                pid: 77,
                unix_ms: u64::from(n),
                boot_id: None,
                pid_ns: None,
                start_ticks: None,
                unreadable: None,
            }),
        }
    }

    /// Review 33, H1: once a stop was acknowledged its release may have gone through, the
    /// service acting unfenced; the renewals after it carry the same stop, and none of them may
    /// be doubted or withdrawn, or the group would be freed next to the released service.
    /// Before it, every failed attempt is kept (review 32, M1); the next claim starts afresh.
    #[tokio::test]
    async fn a_stop_once_acknowledged_is_never_doubted_nor_withdrawn() {
        let mut o = OwnStops::default();
        o.doubt(stop_record(1), 5);
        o.doubt(stop_record(2), 5);
        assert_eq!(o.doubtful.len(), 2, "every attempt comparing 5 is kept");
        o.doubt(stop_record(3), 6);
        assert_eq!(
            o.doubtful,
            vec![stop_record(3)],
            "a newer compare replaces them"
        );
        o.withdraw(9);
        assert!(o.withdraw.is_some());
        o.acknowledge();
        assert!(o.doubtful.is_empty() && o.withdraw.is_none() && o.adopted.is_none());
        o.doubt(stop_record(4), 6);
        o.withdraw(10);
        assert!(
            o.doubtful.is_empty(),
            "a renewal carrying an acknowledged stop was doubted"
        );
        assert!(
            o.withdraw.is_none(),
            "an acknowledged stop would be withdrawn"
        );
        let mut o = OwnStops::default();
        for pid in 0..(MAX_DOUBTFUL_STOPS as u32 + 5) {
            o.doubt(stop_record(pid), 5);
        }
        assert_eq!(o.doubtful.len(), MAX_DOUBTFUL_STOPS);
    }

    /// Which record seen on the key is one of this node's stops in doubt. Past the bound, the
    /// oldest are dropped, yet one of them may still commit: a stop like the kept ones above
    /// the compare is then taken for ours (review 34, L5), or the group would stay stopped for
    /// good; review 35, L7: only one like them (node, service, epoch, machine).
    #[tokio::test]
    async fn a_stop_in_doubt_is_known_when_it_lands_even_once_dropped_for_the_bound() {
        let mut o = OwnStops::default();
        assert_eq!(o.landed(&stop_record(1), 9, "a"), None, "nothing in doubt");
        o.doubt(stop_record(1), 5);
        assert_eq!(
            o.landed(&stop_record(1), 5, "a"),
            None,
            "not newer than the compare"
        );
        assert_eq!(o.landed(&stop_record(1), 6, "a"), Some(true));
        assert_eq!(
            o.landed(&stop_record(2), 6, "a"),
            Some(false),
            "not one sent"
        );
        for pid in 2..(MAX_DOUBTFUL_STOPS as u32 + 5) {
            o.doubt(stop_record(pid), 5);
        }
        assert!(
            !o.doubtful.contains(&stop_record(1)),
            "the oldest was dropped"
        );
        assert_eq!(
            o.landed(&stop_record(1), 6, "a"),
            Some(true),
            "dropped, yet ours"
        );
        assert_eq!(
            o.landed(&stop_record(1), 6, "b"),
            Some(false),
            "another node's record is never ours"
        );
        let renewal = LeaderRecord {
            stopped: None,
            ..stop_record(1)
        };
        assert_eq!(o.landed(&renewal, 6, "a"), Some(false), "no stop in it");
        let mut other = stop_record(1);
        if let Some(m) = other.stopped.as_mut() {
            m.pid = 78;
        }
        assert_eq!(
            o.landed(&other, 6, "a"),
            Some(false),
            "a stop of another service is none of these"
        );
        o.doubt(stop_record(1), 7);
        assert_eq!(
            o.landed(&stop_record(0), 8, "a"),
            Some(false),
            "a new compare starts a new count"
        );
    }

    #[test]
    fn leader_records_are_checked() {
        let ok = br#"{"node":"a","epoch":3,"renewals":9,"unix_ms":1}"#;
        assert_eq!(LeaderRecord::parse(ok).unwrap().epoch, 3);
        assert!(!LeaderRecord::parse(ok).unwrap().released);
        assert!(
            LeaderRecord::parse(br#"{"node":"a/b","epoch":3,"renewals":9,"unix_ms":1}"#).is_err()
        );
        assert!(
            LeaderRecord::parse(br#"{"node":"a","epoch":-3,"renewals":9,"unix_ms":1}"#).is_err()
        );
        assert!(LeaderRecord::parse(b"garbage").is_err());
        assert!(LeaderRecord::parse(&vec![b' '; MAX_LEADER_BYTES + 1]).is_err());
    }

    #[test]
    fn used_epoch_records_are_checked() {
        let ok = UsedRecord::parse(br#"{"node":"a","epoch":9,"before":8}"#).unwrap();
        assert_eq!((ok.epoch, ok.before), (9, 8));
        assert!(UsedRecord::parse(br#"{"node":"a","epoch":8,"before":8}"#).is_err());
        assert!(UsedRecord::parse(br#"{"node":"../a","epoch":9,"before":8}"#).is_err());
        assert!(UsedRecord::parse(br#"{"node":"a","epoch":9}"#).is_err());
        assert!(UsedRecord::parse(&vec![b' '; MAX_LEADER_BYTES + 1]).is_err());
    }

    /// Review 13, T1: c claims 9 and gives it back unused (a switchover to b), b claims 10:
    /// b is judged against a's 8, the newest epoch an active may have sent with, not c's 9.
    #[test]
    fn only_epochs_a_holder_used_count_against_another_nodes_standby() {
        let a8 = UsedRecord::after(None, "a", 8);
        // No record before: 7 stands for another's (review 16, W3).
        assert_eq!(a8.before, 7);
        assert_eq!(UsedRecord::after(None, "a", 1).before, 0);
        // Claims raise the epoch key only; `used` moves when b takes 10 for its service.
        assert_eq!(a8.newest_of_another("b"), Some(8));
        assert_eq!(a8.newest_of_another("c"), Some(8));
        assert_eq!(a8.newest_of_another("a"), Some(7));
        let b10 = UsedRecord::after(Some(&a8), "b", 10);
        assert_eq!((b10.epoch, b10.before), (10, 8));
        assert_eq!(b10.newest_of_another("b"), Some(8));
        assert_eq!(b10.newest_of_another("c"), Some(10));
        // b again (its service restarted while active): its run keeps a's 8 as the one before.
        let b11 = UsedRecord::after(Some(&b10), "b", 11);
        assert_eq!((b11.epoch, b11.before), (11, 8));
        assert_eq!(b11.newest_of_another("a"), Some(11));
        // What it writes, it reads back.
        let text = serde_json::to_vec(&b11).unwrap();
        assert_eq!(UsedRecord::parse(&text).unwrap(), b11);
    }
}
