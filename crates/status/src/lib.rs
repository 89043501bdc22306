//! The words and the records every part of understudy shares: the vocabulary of DESIGN.md
//! ([`State`], [`ActivationMode`], [`StandbyType`], [`Role`], [`ServiceState`]) and the JSON the
//! agent writes — `GET /status` ([`Status`]), the group's membership records ([`MemberRecord`],
//! `GET /group` as [`Group`]), the event timeline and its takeovers (`GET /events` as
//! [`Events`]) and the admin API's other answers. The agent writes them; the service SDK, the
//! CLI, `understudy top`, the control plane and the group's other agents read them, all through
//! these types. Only serde, so anything can depend on it ([`openapi`] holds what the agent's and
//! the control plane's OpenAPI documents share; feature `clap` lets command lines parse the
//! vocabulary).
//!
//! # Names
//!
//! - A node's **state** is `Hot` (active: its service serves) or `Warm` (standby): [`State`].
//!   The JSON calls it `mode`, document 002's word, kept on the wire
//!   (`GET /service/activationmode` answers `{"mode":"Hot","name":"TryLock"}`); in Rust it is
//!   [`Node::state`].
//! - How a node decides to become Hot is its **activation mode** (`activation.mode`):
//!   [`ActivationMode`]. The JSON calls it `name`, again document 002's word; in Rust it is
//!   [`Node::activation`].
//! - The service's **role** is `active` or `standby` ([`Role`], `UNDERSTUDY_ROLE`): the node's
//!   state as its service sees it. How ready a standby service is, is its **standby type**
//!   ([`StandbyType`]: hot, warm, cold). "Primary" is not our word; it appears only where a
//!   source document is quoted.
//!
//! # Reading and adding fields
//!
//! Readers ignore fields they do not know, so a newer agent's answer parses in an older reader. A
//! field that every agent has always written is required; a field added later is optional, so
//! an older agent's answer still parses in a newer reader. Adding one is one line in the struct
//! it belongs to (and the line in the agent that sets it):
//!
//! ```
//! # #[derive(serde::Deserialize)] struct Example {
//! /// How far the standby's copy trails the active's, in milliseconds.
//! #[serde(default)]
//! pub replication_lag_ms: Option<u64>,
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod openapi;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's state: what `mode` says in `/status`, `/service/activationmode` and the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Active: the node holds the group and its service serves.
    Hot,
    /// Standby: admin API up, the service standing by (or not started, cold standby).
    Warm,
}

impl State {
    /// The word on the wire (`"Hot"`, `"Warm"`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Hot => "Hot",
            State::Warm => "Warm",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a node decides to become Hot (document 002's activation modes). Written the way the admin
/// API reports it (`"TryLock"`); read in any case, so a config's `mode = "trylock"` and document
/// 002's `TryLock` both work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ActivationMode {
    /// Hot at once (takes the group lock without waiting; refused if another node holds it).
    Hot,
    /// Warm until an operator says `PUT /service/activationmode/hot`.
    Warm,
    /// Hot while holding the group lock; waits for it in the kernel.
    #[cfg_attr(feature = "clap", value(name = "trylock"))]
    TryLock,
    /// Like TryLock, but a node that obtains the lock becomes Hot by itself only if the previous
    /// holder's heartbeat is fresher than `heartbeat_delay`.
    #[cfg_attr(feature = "clap", value(name = "tryheartbeat"))]
    TryHeartbeat,
}

impl ActivationMode {
    const ALL: [ActivationMode; 4] = [
        ActivationMode::Hot,
        ActivationMode::Warm,
        ActivationMode::TryLock,
        ActivationMode::TryHeartbeat,
    ];
    const NAMES: &'static [&'static str] = &["hot", "warm", "trylock", "tryheartbeat"];

    /// The name the admin API reports (`"TryLock"`, …).
    pub fn api_name(self) -> &'static str {
        match self {
            ActivationMode::Hot => "Hot",
            ActivationMode::Warm => "Warm",
            ActivationMode::TryLock => "TryLock",
            ActivationMode::TryHeartbeat => "TryHeartbeat",
        }
    }

    /// True for the modes that wait for the group lock by themselves.
    pub fn campaigns(self) -> bool {
        matches!(self, ActivationMode::TryLock | ActivationMode::TryHeartbeat)
    }

    /// The word of the config file (`activation.mode = "trylock"`).
    pub fn config_name(self) -> &'static str {
        match self {
            ActivationMode::Hot => "hot",
            ActivationMode::Warm => "warm",
            ActivationMode::TryLock => "trylock",
            ActivationMode::TryHeartbeat => "tryheartbeat",
        }
    }
}

impl fmt::Display for ActivationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

impl Serialize for ActivationMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.api_name())
    }
}

impl<'de> Deserialize<'de> for ActivationMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::unknown_variant(&s, ActivationMode::NAMES))
    }
}

/// Any case: a config's `trylock` and document 002's `TryLock` both parse.
impl std::str::FromStr for ActivationMode {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, UnknownWord> {
        let lower = s.to_ascii_lowercase();
        ActivationMode::ALL
            .into_iter()
            .find(|m| m.config_name() == lower)
            .ok_or_else(|| UnknownWord::new(s, ActivationMode::NAMES))
    }
}

/// A word that names none of a vocabulary's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    word: String,
    expected: &'static [&'static str],
}

impl UnknownWord {
    fn new(word: &str, expected: &'static [&'static str]) -> UnknownWord {
        UnknownWord {
            word: word.to_string(),
            expected,
        }
    }
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown word `{}`, expected one of: {}",
            self.word,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownWord {}

/// How ready a standby's service is (`service.standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum StandbyType {
    /// Service running in standby role, mirroring state; told by signal when active.
    Hot,
    /// Service process up, core services not initialized; told by signal when active.
    Warm,
    /// Service not started until the node is Hot.
    Cold,
}

impl StandbyType {
    /// True when the service runs while the node is a standby.
    pub fn runs_while_standby(self) -> bool {
        !matches!(self, StandbyType::Cold)
    }

    /// The word of the config and the JSON (`"hot"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            StandbyType::Hot => "hot",
            StandbyType::Warm => "warm",
            StandbyType::Cold => "cold",
        }
    }
}

impl std::str::FromStr for StandbyType {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, UnknownWord> {
        [StandbyType::Hot, StandbyType::Warm, StandbyType::Cold]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownWord::new(s, &["hot", "warm", "cold"]))
    }
}

impl fmt::Display for StandbyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a service is told (`UNDERSTUDY_ROLE`): the node's state as its service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serving: the only replica of the group allowed to act.
    Active,
    /// Waiting to be told it is active (hot standby: running and mirroring, publishing nothing;
    /// warm standby: up, core services not started).
    Standby,
}

impl Role {
    /// The value of `UNDERSTUDY_ROLE`.
    pub fn as_env(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_env())
    }
}

/// Where the service process is in its life, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// No process.
    Stopped,
    /// Started, not yet known to be up.
    Starting,
    /// Up.
    Running,
    /// Told to stop, not yet gone.
    Stopping,
    /// A word this build does not know (a newer agent's): the record still counts.
    #[serde(other)]
    Unknown,
}

impl ServiceState {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Stopped => "stopped",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node says about itself, the same in `GET /status` and in its membership record (both
/// carry these fields at their top level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `node.name`, unique in the group. JSON: `node`.
    #[serde(rename = "node")]
    pub name: String,
    /// `node.group`.
    pub group: String,
    /// Hot or Warm. JSON: `mode`.
    #[serde(rename = "mode")]
    pub state: State,
    /// The configured activation mode. JSON: `name`.
    #[serde(rename = "name")]
    pub activation: ActivationMode,
    /// The fencing epoch: the one the node is active with, or the newest it had or saw.
    pub epoch: u64,
    /// When the state last changed, Unix milliseconds.
    pub since_unix_ms: u64,
    /// Why a Warm node is not Hot, in words.
    pub waiting: Option<String>,
    /// True while the node holds the group lock (or the etcd claim).
    pub holds_lock: bool,
    /// True when this standby could take over now: its service runs and handles the activate
    /// signal, and it is not backing off after a failure.
    pub ready: bool,
    /// The node's admin API address (`node.admin`).
    pub admin: String,
    /// The agent's process id, on its own host.
    pub agent_pid: u32,
}

/// `GET /status`: the node, and its service in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The node's part (at the top level of the JSON).
    #[serde(flatten)]
    pub node: Node,
    /// [`Node::since_unix_ms`] in RFC 3339, for people.
    pub since: String,
    /// Where the group lock lives: the lock file, or the etcd key of the claim.
    pub lock_file: String,
    /// The protected service.
    pub service: Service,
    /// etcd groups: how long ago this node saw the holder's last renewal (on the holder, its own
    /// last acknowledged one), in milliseconds; absent for lock files or with no holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_age_ms: Option<u64>,
}

impl Status {
    /// True when the node reports itself Hot.
    pub fn is_hot(&self) -> bool {
        self.node.state == State::Hot
    }
}

/// The `service` object of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Where the process is in its life.
    pub state: ServiceState,
    /// Its process id while it runs.
    pub pid: Option<u32>,
    /// The role it was last told, while it runs.
    pub role: Option<Role>,
    /// `service.standby`.
    pub standby: StandbyType,
    /// `service.command`.
    pub command: Vec<String>,
    /// True while the health check passes (always, without one).
    pub healthy: bool,
    /// What the service answered to its last passing `[health] http` check: its JSON, or its
    /// text as a string.
    pub detail: Option<serde_json::Value>,
}

/// A membership record: what one node advertises to the group, rewritten every heartbeat
/// interval and on every change (files beside the lock file, or keys in etcd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node's part (at the top level of the JSON).
    #[serde(flatten)]
    pub node: Node,
    /// When the record was written (files) or received (etcd), Unix milliseconds.
    pub last_seen_unix_ms: u64,
    /// The service's state; `GET /status` has the whole [`Service`].
    pub service: ServiceState,
    /// The service's process id, if it runs.
    pub pid: Option<u32>,
    /// What the service says about itself ([`Service::detail`]) on one line.
    #[serde(default)]
    pub detail: Option<String>,
    /// The standby a switchover hands activity to, while this node steps down: the other
    /// standbys stand aside for it.
    #[serde(default)]
    pub handover_to: Option<String>,
    /// The kernel's boot id of the agent's machine: a reader on the same boot can trust what
    /// `/proc` says about `agent_pid` (the identity check at start); any other reader cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The agent's pid namespace (the inode of `/proc/self/ns/pid`). Pids name a process only
    /// within one: two containers on one machine share the boot id, not this. A reader whose
    /// boot id and pid namespace both match may trust `/proc`; any other reader only a rewrite
    /// seen within the freshness window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    /// When the agent started, in clock ticks since boot (`/proc/self/stat` field 22): on the
    /// same host (boot id and pid namespace), the process at `agent_pid` is this record's
    /// writer only if it started then, whatever the wall clock did since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_start: Option<u64>,
    /// Admin API connections the node refused at its limits since it started.
    #[serde(default)]
    pub connections_refused: u64,
    /// Why the node last stepped down from Hot: what the next active names as the cause of its
    /// takeover. Kept until the node is Hot again.
    #[serde(default)]
    pub stepped_down: Option<StepDown>,
    /// `node.priority`: when several standbys could take over, the highest one does (0: none).
    #[serde(default)]
    pub priority: u32,
}

impl MemberRecord {
    /// A record of `node` with nothing else known: never seen (`last_seen_unix_ms` 0), service
    /// stopped, and every field added later at its default. Fill in what matters:
    /// `MemberRecord { pid: Some(42), ..MemberRecord::of(node) }`.
    pub fn of(node: Node) -> MemberRecord {
        MemberRecord {
            node,
            last_seen_unix_ms: 0,
            service: ServiceState::Stopped,
            pid: None,
            detail: None,
            handover_to: None,
            boot_id: None,
            pid_ns: None,
            agent_start: None,
            connections_refused: 0,
            stepped_down: None,
            priority: 0,
        }
    }
}

/// A node's last step down from Hot (see [`MemberRecord::stepped_down`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDown {
    /// The epoch it was active with.
    pub epoch: u64,
    /// When (Unix milliseconds, the writer's clock).
    pub at_unix_ms: u64,
    /// What happened, in words: "active service pid 812 exited with code 3", "switchover to b
    /// requested by 127.0.0.1:50112", …
    pub reason: String,
}

/// `GET /group`: every member's record as the node asked has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's name.
    pub group: String,
    /// The node that answered.
    pub asked: String,
    /// One per node, sorted by name.
    pub members: Vec<Member>,
}

/// One member in `GET /group`: its record, and how old it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The record (at the top level of the JSON).
    #[serde(flatten)]
    pub record: MemberRecord,
    /// Milliseconds since the record was last seen, on the answering node's clock.
    pub age_ms: u64,
    /// True when the record was rewritten recently enough for its agent to count as alive, and
    /// its agent is not known to be gone.
    pub fresh: bool,
    /// The answering node saw in /proc that the record's agent ended (only a record from its
    /// own machine and pid namespace is judged so, whatever the coordinator): what the record
    /// says is what a killed agent left behind.
    #[serde(default)]
    pub agent_gone: bool,
    /// etcd groups, on the holder's row: how long ago the answering node saw its last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_age_ms: Option<u64>,
}

impl Member {
    /// True for a fresh record that says Hot.
    pub fn claims_hot(&self) -> bool {
        self.fresh && self.record.node.state == State::Hot
    }
}

impl Group {
    /// The active's epoch: the highest among fresh records that say Hot. Epochs are unique per
    /// activation, so an older Hot record is one its (probably dead) agent has not yet
    /// refreshed or removed.
    pub fn active_epoch(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.claims_hot())
            .map(|m| m.record.node.epoch)
            .max()
    }

    /// The fresh Hot records at the active's epoch: one when all is well, none while no node is
    /// active, several only if two nodes claim the same epoch.
    pub fn actives(&self) -> Vec<&Member> {
        let top = self.active_epoch();
        self.members
            .iter()
            .filter(|m| m.claims_hot() && Some(m.record.node.epoch) == top)
            .collect()
    }

    /// True for a fresh Hot record of an epoch older than the active's.
    pub fn superseded(&self, m: &Member) -> bool {
        m.claims_hot() && Some(m.record.node.epoch) < self.active_epoch()
    }
}

/// `GET /service/activationmode` (without `epoch`) and the answer to
/// `PUT /service/activationmode/hot` (with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationModeView {
    /// Hot or Warm. JSON: `mode`.
    #[serde(rename = "mode")]
    pub state: State,
    /// The configured activation mode. JSON: `name`.
    #[serde(rename = "name")]
    pub activation: ActivationMode,
    /// The epoch the node is Hot with, after an activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The answer to `POST /service/switchover`: who handed over to whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Switchover {
    /// The node that stepped down.
    pub from: String,
    /// The node that took over.
    pub to: String,
    /// The new active's epoch.
    pub epoch: u64,
    /// From the request to the new active's record saying Hot.
    pub took_ms: f64,
}

/// The answer to `POST /failover/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverStart {
    /// The node that was asked.
    pub node: String,
    /// The stop of failover cleared, in words (None: failover was running).
    pub cleared: Option<String>,
}

/// What a timeline entry of `GET /events` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The agent started.
    AgentStarted,
    /// The group lock was obtained: the previous active is gone (failure detected) or let go.
    LockObtained,
    /// The lock was obtained but the heartbeat was stale or unreadable: waiting for an operator.
    HeartbeatStale,
    /// The grant is held: the lock file was re-created while a peer still acts on the old one.
    GrantDeferred,
    /// The services of the previous holders are gone (or there were none): the grant is usable.
    PreviousServiceGone,
    /// The standby service did not handle the activate signal in time; counted as able anyway.
    SignalWaitExpired,
    /// The active service acknowledged that it acts with the node's epoch.
    ServiceAcked,
    /// The new epoch is durable; the node is Hot.
    EpochDurable,
    /// The service process started.
    ServiceStarted,
    /// The service was told it is active (signal, hook, or started as active).
    ServiceNotified,
    /// The active service is ready (health check passed, or notified when there is none).
    Ready,
    /// The service process ended.
    ServiceExited,
    /// The health check failed past its threshold.
    HealthFailed,
    /// The node lost the group lock underneath it.
    LockLost,
    /// The node stepped down from Hot.
    Demoted,
    /// The group lock was released.
    LockReleased,
    /// An operator asked for a switchover.
    Switchover,
    /// An operator request was refused.
    Refused,
    /// Persisting the epoch failed.
    EpochFailed,
    /// The agent is shutting down.
    Shutdown,
    /// The standby service failed: the node stops campaigning until it is ready again.
    NotReady,
    /// The standby service is ready again: the node rejoins the group.
    ReadyAgain,
    /// Failover was stopped for the group (its active handed its service over): no node takes
    /// the group until it is started again.
    FailoverStopped,
    /// Failover was started again: the group's stop was cleared.
    FailoverStarted,
    /// A word this build does not know (a newer agent's); never written.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// Every kind an agent writes.
    pub const ALL: [EventKind; 24] = [
        EventKind::AgentStarted,
        EventKind::LockObtained,
        EventKind::HeartbeatStale,
        EventKind::GrantDeferred,
        EventKind::PreviousServiceGone,
        EventKind::SignalWaitExpired,
        EventKind::ServiceAcked,
        EventKind::EpochDurable,
        EventKind::ServiceStarted,
        EventKind::ServiceNotified,
        EventKind::Ready,
        EventKind::ServiceExited,
        EventKind::HealthFailed,
        EventKind::LockLost,
        EventKind::Demoted,
        EventKind::LockReleased,
        EventKind::Switchover,
        EventKind::Refused,
        EventKind::EpochFailed,
        EventKind::Shutdown,
        EventKind::NotReady,
        EventKind::ReadyAgain,
        EventKind::FailoverStopped,
        EventKind::FailoverStarted,
    ];

    /// The word on the wire (`"lock_obtained"`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AgentStarted => "agent_started",
            EventKind::LockObtained => "lock_obtained",
            EventKind::HeartbeatStale => "heartbeat_stale",
            EventKind::GrantDeferred => "grant_deferred",
            EventKind::PreviousServiceGone => "previous_service_gone",
            EventKind::SignalWaitExpired => "signal_wait_expired",
            EventKind::ServiceAcked => "service_acked",
            EventKind::EpochDurable => "epoch_durable",
            EventKind::ServiceStarted => "service_started",
            EventKind::ServiceNotified => "service_notified",
            EventKind::Ready => "ready",
            EventKind::ServiceExited => "service_exited",
            EventKind::HealthFailed => "health_failed",
            EventKind::LockLost => "lock_lost",
            EventKind::Demoted => "demoted",
            EventKind::LockReleased => "lock_released",
            EventKind::Switchover => "switchover",
            EventKind::Refused => "refused",
            EventKind::EpochFailed => "epoch_failed",
            EventKind::Shutdown => "shutdown",
            EventKind::NotReady => "not_ready",
            EventKind::ReadyAgain => "ready_again",
            EventKind::FailoverStopped => "failover_stopped",
            EventKind::FailoverStarted => "failover_started",
            EventKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /events`: a node's recent timeline and the takeovers it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// The node that answered.
    pub node: String,
    /// The timeline, oldest first (the agent keeps the last thousand entries).
    pub events: Vec<TimelineEntry>,
    /// The takeovers that reached a durable epoch, oldest first.
    pub takeovers: Vec<Takeover>,
}

impl Events {
    /// The takeover with `epoch`, or the last one when None.
    pub fn takeover(&self, epoch: Option<u64>) -> Option<&Takeover> {
        match epoch {
            Some(e) => self.takeovers.iter().rev().find(|t| t.epoch == e),
            None => self.takeovers.last(),
        }
    }
}

/// One entry of a node's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When, Unix milliseconds (the agent's wall clock).
    pub at_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The node's epoch at that moment.
    pub epoch: u64,
    /// Details in words.
    pub detail: String,
}

/// One takeover by a node: a failure event's per-phase timeline. Every phase is milliseconds
/// from detection on the agent's monotonic clock, each stamped when that phase happened, so two
/// phases share a figure only if nothing took time between them; a phase that did not happen
/// (yet) is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Takeover {
    /// The epoch the node became Hot with.
    pub epoch: u64,
    /// What the node found when it obtained the lock: who was active before and what became of it.
    pub cause: String,
    /// Wall clock of the detection, Unix milliseconds (whole milliseconds: only for comparing
    /// with another process's wall clock; the phases are the precise figures).
    pub detected_unix_ms: u64,
    /// The grant was taken.
    #[serde(default)]
    pub lock_obtained_ms: Option<f64>,
    /// The previous active's service had ended (or there was none to wait for).
    #[serde(default)]
    pub previous_service_gone_ms: Option<f64>,
    /// The new epoch was durable and the node Hot.
    #[serde(default)]
    pub epoch_durable_ms: Option<f64>,
    /// The service was told it is active (signal sent, or started as active).
    #[serde(default)]
    pub service_notified_ms: Option<f64>,
    /// The service said it acts with the new epoch (`POST /service/active-ack`); null for a
    /// service that does not acknowledge.
    #[serde(default)]
    pub service_acked_ms: Option<f64>,
    /// The active service was ready (its health check passed, or it was told when there is none).
    #[serde(default)]
    pub ready_ms: Option<f64>,
}

impl Takeover {
    /// The phases in the order they normally happen: the JSON field and its name for a person.
    pub const PHASES: [(&'static str, &'static str); 6] = [
        ("lock_obtained_ms", "lock obtained"),
        ("previous_service_gone_ms", "previous service gone"),
        ("epoch_durable_ms", "epoch durable"),
        ("service_notified_ms", "service notified"),
        ("service_acked_ms", "service acknowledged"),
        ("ready_ms", "ready"),
    ];

    /// Each phase's figure, in the order of [`Takeover::PHASES`].
    pub fn phase_values(&self) -> [Option<f64>; 6] {
        [
            self.lock_obtained_ms,
            self.previous_service_gone_ms,
            self.epoch_durable_ms,
            self.service_notified_ms,
            self.service_acked_ms,
            self.ready_ms,
        ]
    }

    /// The phases that happened, in time order: (milliseconds from detection, name).
    pub fn timeline(&self) -> Vec<(f64, &'static str)> {
        let mut at: Vec<(f64, &'static str)> = Takeover::PHASES
            .iter()
            .zip(self.phase_values())
            .filter_map(|((_, label), v)| Some((v?, *label)))
            .collect();
        at.sort_by(|a, b| a.0.total_cmp(&b.0));
        at
    }
}

/// The body of every error answer of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, in words.
    pub error: String,
    /// The node that holds the group, when an activation is refused because of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, state: State, epoch: u64) -> Node {
        Node {
            name: name.into(),
            group: "g".into(),
            state,
            activation: ActivationMode::TryLock,
            epoch,
            since_unix_ms: 1,
            waiting: None,
            holds_lock: state == State::Hot,
            ready: state == State::Warm,
            admin: "127.0.0.1:7701".into(),
            agent_pid: 10,
        }
    }

    fn member(name: &str, state: State, epoch: u64, fresh: bool) -> Member {
        Member {
            record: MemberRecord {
                last_seen_unix_ms: 2,
                service: ServiceState::Running,
                pid: Some(11),
                ..MemberRecord::of(node(name, state, epoch))
            },
            age_ms: 3,
            fresh,
            agent_gone: false,
            renewal_age_ms: None,
        }
    }

    #[test]
    fn status_keeps_the_contract_field_names() {
        let st = Status {
            node: node("a", State::Hot, 7),
            since: "2026-12-01T00:00:00.001Z".into(),
            lock_file: "/run/g.lock".into(),
            service: Service {
                state: ServiceState::Running,
                pid: Some(42),
                role: Some(Role::Active),
                standby: StandbyType::Hot,
                command: vec!["svc".into()],
                healthy: true,
                detail: Some(json!({"role": "active"})),
            },
            renewal_age_ms: None,
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["node"], "a");
        assert_eq!(v["group"], "g");
        assert_eq!(v["mode"], "Hot");
        assert_eq!(v["name"], "TryLock");
        assert_eq!(v["epoch"], 7);
        assert_eq!(v["since"], "2026-12-01T00:00:00.001Z");
        assert_eq!(v["service"]["state"], "running");
        assert_eq!(v["service"]["pid"], 42);
        assert_eq!(v["service"]["role"], "active");
        assert_eq!(v["service"]["standby"], "hot");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn readers_ignore_fields_they_do_not_know_and_words_they_do_not_know() {
        let mut v = serde_json::to_value(MemberRecord {
            last_seen_unix_ms: 5,
            service: ServiceState::Running,
            ..MemberRecord::of(node("b", State::Warm, 3))
        })
        .unwrap();
        v["renewal_age_ms"] = json!(12);
        v["service"] = json!("restarting");
        v.as_object_mut().unwrap().remove("handover_to");
        let rec: MemberRecord = serde_json::from_value(v).unwrap();
        assert_eq!(rec.node.name, "b");
        assert_eq!(rec.service, ServiceState::Unknown);
        assert_eq!(rec.handover_to, None);
        // A field every agent writes is required: a record without it is not one of ours.
        let mut bad = serde_json::to_value(&rec).unwrap();
        bad.as_object_mut().unwrap().remove("epoch");
        assert!(serde_json::from_value::<MemberRecord>(bad).is_err());
        let mut bad = serde_json::to_value(&rec).unwrap();
        bad["mode"] = json!("Active");
        assert!(serde_json::from_value::<MemberRecord>(bad).is_err());
    }

    #[test]
    fn the_activation_mode_answer_is_exactly_the_documented_body() {
        let v = ActivationModeView {
            state: State::Hot,
            activation: ActivationMode::TryLock,
            epoch: None,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"mode":"Hot","name":"TryLock"}"#
        );
        let activated: ActivationModeView =
            serde_json::from_str(r#"{"mode":"Hot","name":"tryheartbeat","epoch":4}"#).unwrap();
        assert_eq!(activated.activation, ActivationMode::TryHeartbeat);
        assert_eq!(activated.epoch, Some(4));
    }

    #[test]
    fn event_kinds_are_their_wire_words_and_unknown_words_still_parse() {
        for k in EventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
            let back: EventKind = serde_json::from_value(json!(k.as_str())).unwrap();
            assert_eq!(back, k);
        }
        let newer: Events = serde_json::from_value(json!({
            "node": "a",
            "events": [{"at_unix_ms": 1, "kind": "quorum_lost", "epoch": 2, "detail": "x"}],
            "takeovers": [{"epoch": 2, "cause": "c", "detected_unix_ms": 1, "ready_ms": 0.5,
                           "replicated_ms": 0.2}],
        }))
        .unwrap();
        assert_eq!(newer.events[0].kind, EventKind::Unknown);
        let t = newer.takeover(None).unwrap();
        assert_eq!(t.lock_obtained_ms, None, "a phase an older agent lacks");
        assert_eq!(t.timeline(), vec![(0.5, "ready")]);
        assert_eq!(newer.takeover(Some(3)), None);
    }

    #[test]
    fn parses_the_config_words_and_clap_sees_the_same() {
        assert_eq!("TryLock".parse(), Ok(ActivationMode::TryLock));
        assert_eq!("tryheartbeat".parse(), Ok(ActivationMode::TryHeartbeat));
        assert!("primary".parse::<ActivationMode>().is_err());
        assert_eq!("cold".parse(), Ok(StandbyType::Cold));
        assert!("Cold".parse::<StandbyType>().is_err());
        for m in ActivationMode::ALL {
            assert_eq!(m.config_name().parse(), Ok(m));
        }
    }

    #[test]
    fn the_active_is_the_fresh_hot_record_with_the_newest_epoch() {
        let g = |members| Group {
            group: "g".into(),
            asked: "a".into(),
            members,
        };
        let one = g(vec![
            member("a", State::Hot, 3, true),
            member("b", State::Warm, 3, true),
        ]);
        assert_eq!(one.actives().len(), 1);
        assert_eq!(one.actives()[0].record.node.name, "a");
        let stale = g(vec![
            member("a", State::Hot, 3, true),
            member("b", State::Hot, 4, true),
            member("c", State::Hot, 9, false),
        ]);
        assert_eq!(stale.active_epoch(), Some(4));
        assert_eq!(stale.actives()[0].record.node.name, "b");
        assert!(stale.superseded(&stale.members[0]));
        assert!(!stale.superseded(&stale.members[2]), "gone, not superseded");
        let two = g(vec![
            member("a", State::Hot, 4, true),
            member("b", State::Hot, 4, true),
        ]);
        assert_eq!(two.actives().len(), 2);
        let none = g(vec![member("a", State::Warm, 4, true)]);
        assert!(none.actives().is_empty());
        let back: Group = serde_json::from_value(serde_json::to_value(&two).unwrap()).unwrap();
        assert_eq!(back, two);
    }
}
