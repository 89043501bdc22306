//! The activation engine: one node's decisions, as a function of inputs and injected time.
//!
//! Architecture invariants (checked by the property tests in `tests/`):
//! - The node is Hot only while it holds the group lock and after its epoch was reported durable.
//! - The service is started as, or told it is, active only while the node is Hot.
//! - Every epoch this node is Hot with is strictly greater than every epoch it has seen before.
//! - The lock is released only once the service is known to have stopped acting (or was never
//!   told it is active), so a standby can never be granted activity while this service still acts.
//! - A grant is used only once no previous active's service can still act (the lock passes the
//!   instant an agent dies, its service dies a moment later) and no live peer still acts on a
//!   lock file that was replaced under it; a grant held for either is confirmed before use.
//! - A standby service is told it is active only once the signal cannot kill it.

use std::time::Duration;

use serde::Serialize;

use crate::types::{ActivationMode, Role, StandbyType, State};
pub use understudy_status::EventKind;

/// The current time, given to the engine with every input: monotonic for timers and durations,
/// wall clock for heartbeats written by other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin fixed for the agent's life.
    pub mono: Duration,
    /// Wall-clock time, Unix milliseconds.
    pub wall_ms: u64,
}

/// Static settings of the engine, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// `activation.mode`.
    pub mode: ActivationMode,
    /// `service.standby`.
    pub standby: StandbyType,
    /// `activation.heartbeat_delay`: a heartbeat younger than this makes TryHeartbeat go Hot alone.
    pub heartbeat_delay: Duration,
    /// First delay before a node whose service failed rejoins (doubles up to `backoff_max`).
    pub backoff_min: Duration,
    /// Longest such delay.
    pub backoff_max: Duration,
    /// A service that ran this long before failing resets the backoff.
    pub stable_after: Duration,
    /// How long a node that handed over waits for the new active before it campaigns again.
    pub yield_timeout: Duration,
    /// True when a health check is configured: readiness then waits for its first success.
    pub health_check: bool,
    /// Longest wait for a standby service to handle the activate signal; after it the service
    /// counts as able to be told anyway (one that never handles it is misconfigured).
    pub signal_wait: Duration,
    /// The safety rules, each of which can be switched off so that a test can show the
    /// simulation catching its absence. All on outside such tests.
    #[doc(hidden)]
    pub rules: Rules,
}

/// Switches for the rules that keep two services from acting at once (see [`EngineConfig::rules`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Hold a grant until the services of the previous holders are gone (`awaiting`).
    pub await_previous_service: bool,
    /// Hold a waited-for grant while a live peer still acts or holds the lock it knew: the lock
    /// file was re-created under it (`deferred`).
    pub defer_recreated_lock: bool,
    /// Give back a tried lock while a live peer still acts or holds (the try's answer is due now).
    pub release_recreated_trylock: bool,
    /// Signal a standby service only once it handles the activate signal (`pending_start`).
    pub wait_signal_ready: bool,
    /// Give a grant back while a live peer hands activity over to another live standby.
    pub honour_handover: bool,
    /// A node whose standby service failed takes no grant until that service runs and is ready
    /// again (`svc_failure`): going Hot would leave the group with an active node and no service.
    pub campaign_only_when_ready: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            await_previous_service: true,
            defer_recreated_lock: true,
            release_recreated_trylock: true,
            wait_signal_ready: true,
            honour_handover: true,
            campaign_only_when_ready: true,
        }
    }
}

/// What the agent knows of another node of the group (its membership record, and whether its
/// service still runs on this host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// Node name.
    pub node: String,
    /// The record says Hot.
    pub hot: bool,
    /// The record's epoch.
    pub epoch: u64,
    /// The record says it holds the group lock.
    pub holds_lock: bool,
    /// The record was rewritten recently enough to be believed.
    pub fresh: bool,
    /// The record's agent is known to have ended (it ran on this host and its process no longer
    /// acts): what the record says is what a killed agent left behind. False when not known.
    pub agent_gone: bool,
    /// The peer's service, when the record says Hot or holding the lock and that process still
    /// runs on this host and can act (not a zombie, no SIGKILL pending): it may still be active.
    pub live_service: Option<u32>,
    /// The peer is handing activity over to this other node (a switchover to a chosen standby).
    /// The agent never puts this node's own name here.
    pub handover_to: Option<String>,
}

impl PeerView {
    /// True when this peer may be acting or about to act on the lock it believes it holds.
    fn may_act(&self) -> bool {
        self.fresh && !self.agent_gone && (self.hot || self.holds_lock)
    }
}

/// A node's place in the group's order of preference (`node.priority`, `activation.failback`),
/// given with [`Engine::with_preference`]. The default, priority 0 everywhere, prefers nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preference {
    /// Among standbys that could take over, the highest priority does: a grant that reaches a
    /// lower one while a higher one is ready is given back for at most [`PREFERENCE_DEFER`].
    pub priority: u32,
    /// While Hot, hand activity back (a switchover) to a standby of higher priority once it has
    /// been ready this long. None: never.
    pub failback: Option<Duration>,
}

/// Another node's rank (from its membership record), fed with [`Input::Ranks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rank {
    /// Node name, as in its [`PeerView`].
    pub node: String,
    /// Its `node.priority`.
    pub priority: u32,
    /// It could take over by itself now: a ready standby in a mode that waits for the lock.
    pub ready: bool,
}

/// What the lock file said when the lock was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatView {
    /// Nobody ever wrote a heartbeat.
    Missing,
    /// Unparseable content; the string says why.
    Garbage(String),
    /// A heartbeat written by `node` at `wall_ms`.
    At {
        /// Writer.
        node: String,
        /// Unix milliseconds of the write.
        wall_ms: u64,
    },
}

/// Everything that can happen to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The agent starts; `known_epoch` is the group's highest recorded epoch.
    Start {
        /// Highest epoch recorded for the group.
        known_epoch: u64,
    },
    /// The group lock is ours (after [`Command::Campaign`] or [`Command::TryLock`]). The agent
    /// feeds a fresh [`Input::Peers`] right before, for the engine judges the grant by it.
    LockAcquired {
        /// The heartbeat found in the lock file.
        previous: HeartbeatView,
        /// This node created the lock file (it did not exist or had been replaced): a peer that
        /// held the old one may not have noticed yet (for the timeline; the engine judges by the
        /// peers' records, for the node that created the file may have let go unnoticed).
        created: bool,
    },
    /// [`Command::TryLock`] failed: another node holds the lock.
    LockBusy {
        /// Its name, when known.
        holder: Option<String>,
    },
    /// [`Command::ConfirmLock`]: the held lock is still the group's.
    LockConfirmed,
    /// The lock is gone (file deleted or replaced, lease lost).
    LockLost {
        /// Why, in words.
        reason: String,
    },
    /// [`Command::PersistNextEpoch`] succeeded.
    EpochDurable {
        /// The new epoch, fsynced.
        epoch: u64,
    },
    /// [`Command::PersistNextEpoch`] failed.
    EpochFailed {
        /// Why, in words.
        reason: String,
    },
    /// The current service process is up.
    ServiceStarted {
        /// Its pid.
        pid: u32,
    },
    /// The current service process ended (or could not start).
    ServiceExited {
        /// How, in words.
        reason: String,
    },
    /// The service's health check succeeded.
    HealthOk,
    /// The service's health check reached its failure threshold.
    HealthFailed {
        /// Why, in words.
        reason: String,
    },
    /// What a passing health check's answer says about the standby service's readiness (a
    /// replicated service that is not in sync with the active): `Some(why)` when it may not
    /// take over, `None` when it may. The service keeps running either way.
    ServiceReadiness {
        /// Why it is not ready, in words.
        not_ready: Option<String>,
    },
    /// `PUT /service/activationmode/hot`.
    Activate,
    /// `POST /service/switchover`; `ready` lists the standbys that could take over now.
    Switchover {
        /// Names of ready standbys.
        ready: Vec<String>,
        /// The standby that must take over (one of `ready`); any of them when None.
        to: Option<String>,
    },
    /// The other nodes of the group, as their membership records and /proc show them now.
    Peers(Vec<PeerView>),
    /// Whether this node can reach its coordinator now (None: it can; Some: why not). A standby
    /// that cannot reach it could not take over, so it is not ready; the grant itself stays the
    /// coordinator's to judge.
    CoordinatorReach {
        /// Why the coordinator is out of reach, in words.
        unreachable: Option<String>,
    },
    /// Whether the configuration this node runs is still the one it must run (None: it is;
    /// Some: why not). A node whose configuration changed applies it before it can be ready:
    /// a standby takes no grant until its agent is started again with the new one, never
    /// running the old one at a takeover; an active keeps its own until it is a standby.
    Configuration {
        /// Why the running configuration is outdated, in words.
        outdated: Option<String>,
    },
    /// A process named in [`Command::WatchProcesses`] has ended (or can no longer act).
    ProcessGone {
        /// The process.
        pid: u32,
    },
    /// The service process named in [`Command::WatchSignalReady`] now handles the activate
    /// signal (caught, ignored or blocked), so the signal can no longer kill it.
    ServiceSignalReady {
        /// The service process.
        pid: u32,
    },
    /// The service says it is active with `epoch` (`POST /service/active-ack`).
    ServiceAcked {
        /// The process that says so.
        pid: u32,
        /// The epoch it read.
        epoch: u64,
    },
    /// The other nodes' ranks, as their membership records show them now; fed with
    /// [`Input::Peers`] (each rank counts only for a peer that view shows fresh and alive).
    Ranks(Vec<Rank>),
    /// Periodic timer, every heartbeat interval.
    Tick,
    /// SIGTERM or SIGINT: stop gracefully. A second one stops at once.
    Shutdown,
    /// `POST /service/release` (the control plane's "stop failover"): leave the group and hand the
    /// running service over as a plain, unfenced server. Only the active may, and only alone: a
    /// standby still in the group would take over while the released service keeps acting.
    /// Feed the current [`Input::Peers`] first.
    Release {
        /// Why the agent could not establish who else is alive (etcd unreadable, the lock lost
        /// during the read): the release is refused for it, and the refusal recorded.
        unverified: Option<String>,
        /// What speaks for each member the agent counts alive beyond its record's age (its
        /// process runs here, its etcd key exists): a refusal names it.
        because: Vec<(String, String)>,
    },
    /// The answer to [`Command::StopFailover`]: None when the stop is recorded, else why not
    /// (the release is then refused and nothing changes).
    StopRecorded {
        /// Why the stop could not be recorded, in words.
        error: Option<String>,
    },
    /// Whether failover is stopped for the group (None: it runs; Some: the stop, in words). A
    /// node takes no grant while it is (the coordinator refuses them), so it is not ready.
    FailoverStopped {
        /// The stop, in words.
        stopped: Option<String>,
    },
}

/// What the agent must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Wait (in the kernel) for the group lock; answer with [`Input::LockAcquired`].
    Campaign,
    /// Try the lock without waiting; answer with [`Input::LockAcquired`] or [`Input::LockBusy`].
    TryLock,
    /// Give up the group lock and stop campaigning.
    Release,
    /// Durably take the next group epoch, above `floor`; answer with [`Input::EpochDurable`].
    PersistNextEpoch {
        /// The highest epoch this node has seen.
        floor: u64,
    },
    /// Start the service with this role and epoch in its environment.
    StartService {
        /// `UNDERSTUDY_ROLE`.
        role: Role,
        /// `UNDERSTUDY_EPOCH`.
        epoch: u64,
    },
    /// Tell the running standby service it is now active (activate signal and hook).
    NotifyActive {
        /// The new epoch.
        epoch: u64,
    },
    /// Stop the service: gracefully (SIGTERM, then SIGKILL after the grace period) or at once.
    StopService {
        /// False: SIGKILL the process group now.
        graceful: bool,
    },
    /// Write the heartbeat into the lock file.
    WriteHeartbeat {
        /// The epoch to write.
        epoch: u64,
    },
    /// Check that the held lock is still the group's (answers with [`Input::LockLost`] if not).
    VerifyLock,
    /// Check at once that the held lock is still the group's; answer with
    /// [`Input::LockConfirmed`] or [`Input::LockLost`].
    ConfirmLock,
    /// Wait for each of these processes to end; answer with one [`Input::ProcessGone`] per pid.
    WatchProcesses {
        /// The processes (services of previous holders).
        pids: Vec<u32>,
    },
    /// Find out when the service process handles the activate signal; answer with
    /// [`Input::ServiceSignalReady`].
    WatchSignalReady {
        /// The standby service.
        pid: u32,
    },
    /// Append to the event timeline.
    Record(Event),
    /// Answer the pending operator request.
    Answer(Answer),
    /// Hand the running service over: from now on it is neither supervised nor fenced and it
    /// outlives the agent (its guardian stops watching the agent). Forget it.
    DetachService,
    /// Record in the coordinator, while still holding, that failover is stopped for the group
    /// (the running service `pid`, told `epoch`, is about to be handed over): no node may take
    /// the group until failover is started again. Answer with [`Input::StopRecorded`].
    StopFailover {
        /// The service to be handed over.
        pid: u32,
        /// The epoch it was last told.
        epoch: u64,
    },
    /// Exit the agent.
    Exit {
        /// Process exit code.
        code: i32,
    },
}

/// Answers to operator requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `PUT …/hot` done: the node is Hot with this epoch.
    Activated {
        /// The node's epoch.
        epoch: u64,
    },
    /// `PUT …/hot` refused (409): it would make a second active, or the node is stopping.
    ActivateRefused {
        /// The holder of the group lock, when known.
        holder: Option<String>,
        /// Why, in words.
        reason: String,
    },
    /// Switchover under way: this node stepped down from `epoch`.
    SwitchoverStarted {
        /// The epoch given up.
        epoch: u64,
    },
    /// Switchover refused (409).
    SwitchoverRefused {
        /// Why, in words.
        reason: String,
    },
    /// Release done: the service keeps running, unfenced, and the agent exits.
    Released {
        /// The service's pid.
        pid: u32,
        /// The epoch it was last told.
        epoch: u64,
    },
    /// Release refused (409).
    ReleaseRefused {
        /// Why, in words.
        reason: String,
    },
}

/// One entry of the event timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    /// Monotonic time (for durations between entries).
    #[serde(skip)]
    pub mono: Duration,
    /// Wall clock, Unix milliseconds.
    pub at_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The node's epoch at that moment.
    pub epoch: u64,
    /// Details in words.
    pub detail: String,
}

/// Why a Warm node is not Hot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Waiting for the group lock (another node holds it).
    Lock,
    /// Warm mode: waiting for `PUT /service/activationmode/hot`.
    Operator,
    /// Holding the lock, but the previous heartbeat was stale or unreadable: an operator decides.
    StaleHeartbeat(String),
    /// Activation was refused because another node holds the lock.
    Refused(Option<String>),
    /// Activation was refused because this node held the lock, but it is gone now and no node
    /// acts: the lock is free for an operator's `PUT …/hot` (Hot mode does not wait for it).
    HolderGone(String),
    /// The service failed; rejoining at `until`.
    Backoff {
        /// Monotonic time at which the node rejoins.
        until: Duration,
    },
    /// The standby service failed (how, in words) and has not been ready since: the node does
    /// not campaign until it is.
    NotReady(String),
    /// Handed over; waiting for the new active (or `until`) before campaigning again.
    Yield {
        /// Monotonic time at which the node campaigns again anyway.
        until: Duration,
    },
    /// Holding a lock on a file this node re-created, until this peer, which still acts on the
    /// old file, has stepped down or its record went stale.
    PeerStepDown(String),
    /// Holding the lock until these services of the previous holders are gone: the kernel hands
    /// the lock over the instant an agent dies, its guardian kills the service a moment later.
    PreviousService(Vec<u32>),
    /// A standby of higher priority is ready: the grant was given back, and the node stays aside
    /// until that standby holds the lock, is no longer there or ready, or `until`.
    Preferred {
        /// The preferred standby.
        to: String,
        /// Monotonic time at which the node campaigns again anyway.
        until: Duration,
    },
    /// A switchover hands activity to this other standby: the grant was given back, and the node
    /// stays aside until that standby is active, the handing node stops saying so, or `until`.
    Handover {
        /// The chosen standby.
        to: String,
        /// Monotonic time at which the node campaigns again anyway.
        until: Duration,
    },
}

/// How long the other standbys stay aside for a switchover's chosen standby. The chosen one is
/// waiting in the kernel for the lock and gets it within a millisecond of the release; this bounds
/// the time without an active node if it dies in between.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// Why a standby with a health check waits (see `Engine::not_ready`).
const NOT_CHECKED_YET: &str = "has not passed its health check since it started";

/// How long a standby stands aside for a ready standby of higher priority after giving it the
/// lock back. The preferred one waits for the lock in the kernel and gets it within a
/// millisecond; this bounds the time without an active node if it does not take it (it died
/// meanwhile, its campaign is stuck). A node that stood aside this long in vain does not stand
/// aside again until the group has had an active.
pub const PREFERENCE_DEFER: Duration = Duration::from_millis(500);

/// Where the service stands, as far as the engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvcState {
    /// Not running.
    Stopped,
    /// Start requested, pid not yet known.
    Starting(Role),
    /// Running with this pid.
    Running {
        /// Role it was last told.
        role: Role,
        /// Its pid.
        pid: u32,
    },
    /// Stop requested.
    Stopping,
}

impl SvcState {
    /// What `/status` and the membership record say of it.
    pub fn status(&self) -> understudy_status::ServiceState {
        use understudy_status::ServiceState;
        match self {
            SvcState::Stopped => ServiceState::Stopped,
            SvcState::Starting(_) => ServiceState::Starting,
            SvcState::Running { .. } => ServiceState::Running,
            SvcState::Stopping => ServiceState::Stopping,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    Warm(Waiting),
    /// Lock held, epoch being persisted.
    Promoting,
    Hot,
    /// Stepping down: the service is being stopped; the lock is released once it has.
    Demoting(After),
    Exited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Backoff,
    Yield,
    Exit,
    /// Campaign again at once: the grant was lost (a lease that expired while the agent was
    /// frozen or cut off), which is no failure of the service and must not hold the node back
    /// from being the next standby.
    Rejoin,
}

/// A grant being held back (see [`Waiting::PeerStepDown`] and [`Waiting::PreviousService`]).
#[derive(Debug, Clone, PartialEq)]
struct Grant {
    previous: HeartbeatView,
    /// Promote without looking at the heartbeat: an operator asked.
    operator: bool,
    /// A try asked for it (an operator's, or Hot mode's start): it is answered, never given
    /// back to a chosen or preferred standby.
    asked: bool,
    /// It was held across inputs (see [`Engine::accept_grant`]).
    waited: bool,
}

/// Why a [`Command::TryLock`] was issued, so its answer is routed right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TryFor {
    Operator,
    Auto,
}

/// A read-only view for /status and membership records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Hot or Warm.
    pub state: State,
    /// Configured activation mode.
    pub mode: ActivationMode,
    /// The epoch the node is Hot with, or the highest it has seen.
    pub epoch: u64,
    /// Wall clock of the last state change, Unix milliseconds.
    pub since_unix_ms: u64,
    /// Why a Warm node waits, in words; None when Hot.
    pub waiting: Option<String>,
    /// True while the node holds the group lock.
    pub holds_lock: bool,
    /// Service state.
    pub service: SvcState,
    /// True when this node could take over now.
    pub ready: bool,
    /// True when the active service passed its health check (or has none).
    pub healthy: bool,
    /// The standby a switchover is handing activity to (for the membership record).
    pub handover_to: Option<String>,
}

/// One node's activation state machine.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: EngineConfig,
    /// The standby a switchover hands activity to, while this node steps down and yields.
    handover_to: Option<String>,
    phase: Phase,
    holds_lock: bool,
    /// Highest epoch seen anywhere; the active epoch while Hot.
    epoch: u64,
    svc: SvcState,
    svc_started_at: Duration,
    svc_restart_at: Option<Duration>,
    failures: u32,
    /// How the service last failed, while it has not been ready since (see
    /// [`Rules::campaign_only_when_ready`]).
    svc_failure: Option<String>,
    /// The running standby service says it may not take over (see
    /// [`Input::ServiceReadiness`]): not ready, like `svc_failure`, without stopping it.
    svc_not_ready: Option<String>,
    healthy: bool,
    ready_recorded: bool,
    /// Deliver NotifyActive once the standby service is up and handles the activate signal.
    notify_when_started: bool,
    /// The running service handles the activate signal (or was started active, or waited long).
    svc_signal_ready: bool,
    /// When the running service reported its pid.
    svc_pid_at: Duration,
    /// The active service acknowledged the current epoch.
    acked: bool,
    /// Why the coordinator is out of reach, while it is.
    coord_unreachable: Option<String>,
    /// The group's stop of failover, in words, while there is one.
    failover_stopped: Option<String>,
    /// A release waiting for its stop to be recorded: the service it hands over.
    releasing: Option<u32>,
    /// Why the running configuration is outdated, while it is (see [`Input::Configuration`]).
    outdated: Option<String>,
    /// The grant held back while the phase is PeerStepDown or PreviousService.
    grant: Option<Grant>,
    /// The latest view of the other nodes.
    peers: Vec<PeerView>,
    /// [`Input::LockConfirmed`] arrived for the held grant.
    confirmed: bool,
    /// While the phase is PreviousService: each awaited service and the node it belongs to.
    awaited: Vec<(String, u32)>,
    trying: Option<TryFor>,
    /// An operator's PUT waits for the epoch to become durable.
    answer_activate: bool,
    /// A [`Command::PersistNextEpoch`] is unanswered.
    persist_pending: bool,
    /// The unanswered one belongs to an abandoned promotion: skip its answer, then persist anew.
    persist_again: bool,
    shutdowns: u32,
    since_wall_ms: u64,
    out: Vec<Command>,
    now: Now,
    /// This node's preference settings.
    pref: Preference,
    /// The other nodes' ranks, latest view.
    ranks: Vec<Rank>,
    /// A deferral to a preferred standby ran out in vain: no more until the group has an active.
    defer_spent: bool,
    /// While Hot with failback: the preferred standby and since when it has been ready.
    failback_since: Option<(String, Duration)>,
}

impl Engine {
    /// A new engine; nothing happens until [`Input::Start`].
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            handover_to: None,
            phase: Phase::Idle,
            holds_lock: false,
            epoch: 0,
            svc: SvcState::Stopped,
            svc_started_at: Duration::ZERO,
            svc_restart_at: None,
            failures: 0,
            svc_failure: None,
            svc_not_ready: None,
            healthy: false,
            ready_recorded: false,
            notify_when_started: false,
            svc_signal_ready: false,
            svc_pid_at: Duration::ZERO,
            acked: false,
            coord_unreachable: None,
            failover_stopped: None,
            releasing: None,
            outdated: None,
            grant: None,
            peers: Vec::new(),
            confirmed: false,
            awaited: Vec::new(),
            trying: None,
            answer_activate: false,
            persist_pending: false,
            persist_again: false,
            shutdowns: 0,
            since_wall_ms: 0,
            out: Vec::new(),
            now: Now {
                mono: Duration::ZERO,
                wall_ms: 0,
            },
            pref: Preference::default(),
            ranks: Vec::new(),
            defer_spent: false,
            failback_since: None,
        }
    }

    /// The same engine with this node's preference (`node.priority`, `activation.failback`).
    pub fn with_preference(mut self, pref: Preference) -> Self {
        self.pref = pref;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Hot or Warm, as the admin API reports it.
    pub fn state(&self) -> State {
        if self.phase == Phase::Hot {
            State::Hot
        } else {
            State::Warm
        }
    }

    /// The node's epoch (active epoch while Hot, else the highest seen).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True while the engine believes it holds the group lock.
    pub fn holds_lock(&self) -> bool {
        self.holds_lock
    }

    /// The service state.
    pub fn service(&self) -> SvcState {
        self.svc
    }

    /// True once the engine told the agent to exit.
    pub fn exited(&self) -> bool {
        self.phase == Phase::Exited
    }

    /// A view for status displays.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state(),
            mode: self.cfg.mode,
            epoch: self.epoch,
            since_unix_ms: self.since_wall_ms,
            waiting: self.waiting_text(),
            holds_lock: self.holds_lock,
            service: self.svc,
            ready: self.ready(),
            healthy: self.healthy || !self.cfg.health_check,
            handover_to: self.handover_to.clone(),
        }
    }

    /// True when this node could take over now: a standby that is not backing off or yielding,
    /// whose service (if it runs while standby) is up and healthy, that can reach its coordinator
    /// and runs the configuration it must run.
    pub fn ready(&self) -> bool {
        let waiting_ok = matches!(
            self.phase,
            Phase::Warm(
                Waiting::Lock
                    | Waiting::Operator
                    | Waiting::StaleHeartbeat(_)
                    | Waiting::Refused(_)
                    | Waiting::HolderGone(_)
            )
        );
        let svc_ok = if self.cfg.standby.runs_while_standby() {
            matches!(self.svc, SvcState::Running { .. })
                && self.svc_signal_ready
                && (self.healthy || !self.cfg.health_check)
                && self.svc_not_ready.is_none()
        } else {
            true
        };
        waiting_ok
            && svc_ok
            && self.coord_unreachable.is_none()
            && self.failover_stopped.is_none()
            && self.outdated.is_none()
    }

    fn waiting_text(&self) -> Option<String> {
        let now = self.now.mono;
        let secs = |until: Duration| until.saturating_sub(now).as_secs_f64();
        Some(match &self.phase {
            Phase::Hot => return None,
            Phase::Idle => "starting".to_string(),
            Phase::Promoting => "obtained the group lock; making the new epoch durable".to_string(),
            Phase::Demoting(_) => "stepping down: stopping the service before releasing the lock".to_string(),
            Phase::Exited => "stopped".to_string(),
            Phase::Warm(_) if self.coord_unreachable.is_some() => format!(
                "not ready: {}",
                self.coord_unreachable.as_deref().unwrap_or_default()
            ),
            Phase::Warm(_) if self.failover_stopped.is_some() => format!(
                "failover is stopped: {}; no node takes the group until failover is started again (POST /failover/start, `understudy start-failover`, or the control plane's start failover) once that service no longer runs",
                self.failover_stopped.as_deref().unwrap_or_default()
            ),
            Phase::Warm(w) => match w {
                Waiting::Lock => "waiting for the group lock (another node is active)".to_string(),
                Waiting::Operator => {
                    "warm mode: waiting for PUT /service/activationmode/hot".to_string()
                }
                Waiting::StaleHeartbeat(why) => format!(
                    "holding the group lock, but {why}; waiting for PUT /service/activationmode/hot (an operator decides after an outage)"
                ),
                Waiting::Refused(Some(h)) => {
                    format!("activation refused: node {h} holds the group lock")
                }
                Waiting::Refused(None) => {
                    "activation refused: another process holds the group lock".to_string()
                }
                Waiting::HolderGone(h) => format!(
                    "activation refused earlier: node {h} held the group lock, but it is gone and no node is active; PUT /service/activationmode/hot (understudy activate) makes this node Hot"
                ),
                Waiting::Backoff { until } => format!(
                    "service failed; rejoining the group in {:.1} s (backoff)",
                    secs(*until)
                ),
                Waiting::NotReady(_) if self.outdated.is_some() => format!(
                    "not ready: {}",
                    self.outdated.as_deref().unwrap_or_default()
                ),
                Waiting::NotReady(why) => {
                    let next = match self.svc_restart_at {
                        Some(at) if self.svc == SvcState::Stopped => {
                            format!("; restarting it in {:.1} s", secs(at))
                        }
                        _ => String::new(),
                    };
                    format!("not ready: the service {why}; not taking over until it runs and is ready{next}")
                }
                Waiting::Yield { until } => format!(
                    "handed over; waiting for the new active (campaigning again in {:.1} s at the latest)",
                    secs(*until)
                ),
                Waiting::PeerStepDown(peer) => format!(
                    "holding a re-created group lock; waiting for node {peer}, which still acts on the old one, to step down"
                ),
                Waiting::PreviousService(pids) => format!(
                    "holding the group lock; waiting for the previous active's service (pid {pids:?}) to end"
                ),
                Waiting::Preferred { to, until } => format!(
                    "node {to} is preferred (higher priority) and ready; standing aside for it (campaigning again in {:.1} s at the latest)",
                    secs(*until)
                ),
                Waiting::Handover { to, until } => format!(
                    "a switchover hands activity to {to}; standing aside (campaigning again in {:.1} s at the latest)",
                    secs(*until)
                ),
            },
        })
    }

    /// Feed one input; returns the commands to execute, in order.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Command> {
        self.now = now;
        match input {
            Input::Start { known_epoch } => self.on_start(known_epoch),
            Input::LockAcquired { previous, created } => self.on_lock_acquired(previous, created),
            Input::LockBusy { holder } => self.on_lock_busy(holder),
            Input::LockLost { reason } => self.on_lock_lost(reason),
            Input::EpochDurable { epoch } => {
                if !self.persist_answered() {
                    self.on_epoch_durable(epoch)
                }
            }
            Input::EpochFailed { reason } => {
                if !self.persist_answered() {
                    self.on_epoch_failed(reason)
                }
            }
            Input::ServiceStarted { pid } => self.on_service_started(pid),
            Input::ServiceExited { reason } => self.on_service_exited(reason),
            Input::HealthOk => self.on_health_ok(),
            Input::HealthFailed { reason } => self.on_health_failed(reason),
            Input::ServiceReadiness { not_ready } => self.on_service_readiness(not_ready),
            Input::Activate => self.on_activate(),
            Input::Switchover { ready, to } => self.on_switchover(ready, to),
            Input::Peers(peers) => self.on_peers(peers),
            Input::CoordinatorReach { unreachable } => self.coord_unreachable = unreachable,
            Input::FailoverStopped { stopped } => self.on_failover_stopped(stopped),
            Input::StopRecorded { error } => self.on_stop_recorded(error),
            Input::Configuration { outdated } => self.on_configuration(outdated),
            Input::LockConfirmed => {
                if self.holds_lock
                    && self.grant.is_some()
                    && self.phase == Phase::Warm(Waiting::PreviousService(Vec::new()))
                {
                    self.confirmed = true;
                    self.accept_grant();
                }
            }
            Input::ProcessGone { pid } => self.on_process_gone(pid),
            Input::ServiceSignalReady { pid } => self.on_signal_ready(pid),
            Input::ServiceAcked { pid, epoch } => self.on_service_acked(pid, epoch),
            Input::Ranks(ranks) => {
                self.ranks = ranks;
                self.recheck_preferred();
            }
            Input::Tick => self.on_tick(),
            Input::Shutdown => self.on_shutdown(),
            Input::Release {
                unverified,
                because,
            } => self.on_release(unverified, &because),
        }
        std::mem::take(&mut self.out)
    }

    fn emit(&mut self, c: Command) {
        self.out.push(c);
    }

    fn record(&mut self, kind: EventKind, detail: impl Into<String>) {
        let ev = Event {
            mono: self.now.mono,
            at_unix_ms: self.now.wall_ms,
            kind,
            epoch: self.epoch,
            detail: detail.into(),
        };
        self.emit(Command::Record(ev));
    }

    fn set_phase(&mut self, p: Phase) {
        let was_hot = self.phase == Phase::Hot;
        let is_hot = p == Phase::Hot;
        if was_hot != is_hot || self.phase == Phase::Idle {
            self.since_wall_ms = self.now.wall_ms;
        }
        self.phase = p;
    }

    fn on_start(&mut self, known_epoch: u64) {
        if self.phase != Phase::Idle {
            return;
        }
        self.epoch = self.epoch.max(known_epoch);
        self.record(
            EventKind::AgentStarted,
            format!(
                "activation mode {}, standby {:?}",
                self.cfg.mode, self.cfg.standby
            ),
        );
        self.set_phase(Phase::Warm(Waiting::Lock));
        if self.cfg.standby.runs_while_standby() {
            self.start_service(Role::Standby);
        }
        self.join();
    }

    /// (Re)join the group the way the activation mode says.
    fn join(&mut self) {
        self.handover_to = None;
        if let Some(why) = self.outdated.clone().or_else(|| self.not_ready()) {
            self.phase = Phase::Warm(Waiting::NotReady(why));
            return;
        }
        match self.cfg.mode {
            ActivationMode::TryLock | ActivationMode::TryHeartbeat => {
                self.phase = Phase::Warm(Waiting::Lock);
                self.emit(Command::Campaign);
            }
            ActivationMode::Hot => {
                self.phase = Phase::Warm(Waiting::Lock);
                self.trying = Some(TryFor::Auto);
                self.emit(Command::TryLock);
            }
            ActivationMode::Warm => self.phase = Phase::Warm(Waiting::Operator),
        }
    }

    fn start_service(&mut self, role: Role) {
        self.svc = SvcState::Starting(role);
        self.svc_started_at = self.now.mono;
        self.svc_restart_at = None;
        self.healthy = false;
        let epoch = self.epoch;
        self.emit(Command::StartService { role, epoch });
    }

    /// Why this node must not take a grant now: its standby service failed and has not been
    /// ready since, says it is not ready, or (with a health check) has not passed it since it
    /// started. Cold standbys run no service before they are Hot, so nothing tells.
    ///
    /// That last one (review 13, T3): a standby that campaigned before its service's first
    /// health answer took a free lock at once at a cold start of its group, whatever the
    /// answer would have said (a replicated gateway behind the others, or empty).
    fn not_ready(&self) -> Option<String> {
        if !self.cfg.rules.campaign_only_when_ready || !self.cfg.standby.runs_while_standby() {
            return None;
        }
        self.svc_failure
            .clone()
            .or_else(|| self.svc_not_ready.clone())
            .or_else(|| {
                (self.cfg.health_check && !self.healthy).then(|| NOT_CHECKED_YET.to_string())
            })
    }

    /// The standby service says whether it may take over. Not ready: a node waiting for the
    /// lock stands aside as for a failed service (the service keeps running, so it can get
    /// ready); ready again: it rejoins.
    fn on_service_readiness(&mut self, not_ready: Option<String>) {
        let was = std::mem::replace(&mut self.svc_not_ready, not_ready.clone());
        match (was, not_ready) {
            (None, Some(_)) if self.phase != Phase::Hot => self.stand_aside_for_service(),
            (Some(_), None)
                if self.svc_failure.is_none()
                    && matches!(self.phase, Phase::Warm(Waiting::NotReady(_))) =>
            {
                self.record(
                    EventKind::ReadyAgain,
                    "the service is ready; rejoining the group",
                );
                self.join();
            }
            _ => {}
        }
    }

    /// The standby service failed: a node waiting for the lock stops waiting for it.
    fn service_failed(&mut self, reason: &str) {
        if !self.cfg.standby.runs_while_standby() {
            return;
        }
        self.svc_failure = Some(reason.to_string());
        self.stand_aside_for_service();
    }

    /// A node that is not ready (see [`Self::not_ready`]) stops waiting for the lock and
    /// gives back a grant being made.
    fn stand_aside_for_service(&mut self) {
        let Some(why) = self.not_ready() else {
            return;
        };
        let detail = format!("the service {why}; not taking over until it is ready");
        self.stand_aside(why, detail);
    }

    /// The configuration this node runs is outdated, or current again.
    fn on_configuration(&mut self, outdated: Option<String>) {
        let was = std::mem::replace(&mut self.outdated, outdated.clone());
        match (was, outdated) {
            (None, Some(why)) => {
                let detail = format!("{why}; not taking over until then");
                self.stand_aside(why, detail);
            }
            (Some(_), None) => {
                if let Phase::Warm(Waiting::NotReady(_)) = self.phase {
                    if self.not_ready().is_none() {
                        self.record(
                            EventKind::ReadyAgain,
                            "the configuration is current again; rejoining the group",
                        );
                        self.join();
                    }
                }
            }
            _ => {}
        }
    }

    /// Take no grant while `why` holds: a node waiting for the lock calls its campaign off (the
    /// next standby in line gets the lock), a grant being judged or made durable is given back
    /// unless an operator asked. An active node, or one stepping down or standing aside for a
    /// while, is left as it is: `join` keeps it aside when its turn comes.
    fn stand_aside(&mut self, why: String, detail: String) {
        let operator = self.answer_activate || self.grant.as_ref().is_some_and(|g| g.operator);
        match &self.phase {
            // A try under way is answered first (`on_lock_acquired` gives the grant back).
            Phase::Warm(Waiting::Lock | Waiting::Refused(_) | Waiting::Operator)
                if self.trying.is_none() && !self.holds_lock =>
            {
                if self.cfg.mode.campaigns() {
                    self.emit(Command::Release);
                }
            }
            Phase::Promoting
            | Phase::Warm(
                Waiting::PreviousService(_) | Waiting::PeerStepDown(_) | Waiting::StaleHeartbeat(_),
            ) if !operator => {
                self.grant = None;
                self.awaited.clear();
                self.confirmed = false;
                self.release();
            }
            _ => return,
        }
        self.record(EventKind::NotReady, detail);
        self.phase = Phase::Warm(Waiting::NotReady(why));
    }

    /// The service has run and been ready for `backoff_min` (a service that blocks its signals
    /// first and fails on its configuration a moment later is ready for an instant only): a
    /// node that stood aside for it rejoins.
    fn service_progress(&mut self) {
        let ready = matches!(self.svc, SvcState::Running { .. })
            && self.svc_signal_ready
            && (self.healthy || !self.cfg.health_check)
            && self.now.mono.saturating_sub(self.svc_pid_at) >= self.cfg.backoff_min;
        if !ready || self.svc_failure.is_none() {
            return;
        }
        self.svc_failure = None;
        if self.outdated.is_some() {
            // Still aside, for its configuration: only a restart with the new one ends that.
            return;
        }
        if let Phase::Warm(Waiting::NotReady(_)) = self.phase {
            self.record(
                EventKind::ReadyAgain,
                "the service is ready; rejoining the group",
            );
            self.join();
        }
    }

    fn on_lock_acquired(&mut self, previous: HeartbeatView, created: bool) {
        let trying = self.trying.take();
        // A try while the campaign is outstanding may be answered with the campaign's own grant.
        let campaigning = self.cfg.mode.campaigns() && self.phase == Phase::Warm(Waiting::Lock);
        if self.holds_lock {
            // A duplicate grant (e.g. a waiter racing a non-blocking try): we already hold it.
            return;
        }
        self.holds_lock = true;
        let wanted = match (&self.phase, trying) {
            (Phase::Warm(_), Some(_)) => true,
            (Phase::Warm(Waiting::Lock), None) => self.cfg.mode.campaigns(),
            _ => false,
        };
        if !wanted {
            self.release();
            return;
        }
        if trying != Some(TryFor::Operator) {
            // A grant from before the service failed (going Hot would leave the group with an
            // active node and no service), or to a node whose configuration changed (it would
            // run the old one at a takeover, unnoticed): let the next standby have it.
            let aside = match (&self.outdated, self.not_ready()) {
                (Some(changed), _) => Some((changed.clone(), changed.clone())),
                (None, Some(failed)) => Some((format!("the service {failed}"), failed)),
                (None, None) => None,
            };
            if let Some((said, why)) = aside {
                self.record(
                    EventKind::LockReleased,
                    format!("group lock given back: {said}"),
                );
                self.release();
                self.phase = Phase::Warm(Waiting::NotReady(why));
                return;
            }
        }
        let prev = describe_heartbeat(&previous, self.now.wall_ms);
        self.record(
            EventKind::LockObtained,
            format!("group lock obtained; {prev}"),
        );
        let grant = Grant {
            previous,
            operator: trying == Some(TryFor::Operator),
            asked: trying.is_some(),
            waited: false,
        };
        // A live peer that still says it acts or holds the lock holds one on a lock file that was
        // deleted or replaced under it (by us, `created`, or by a node that created it and let
        // go). It steps down at its next check of the lock; acting before it has makes two
        // actives. A killed peer's record says the same, but then its agent is known gone.
        let acting_peer = self
            .peers
            .iter()
            .find(|p| p.may_act())
            .map(|p| p.node.clone());
        let file = if created { "re-created " } else { "" };
        if let Some(peer) = acting_peer {
            let tried_alone = trying.is_some() && !campaigning;
            if tried_alone && self.cfg.rules.release_recreated_trylock {
                // An answer is expected now (an operator's PUT, or Hot mode's start): say busy.
                self.release();
                self.trying = trying;
                self.on_lock_busy(Some(peer));
                return;
            }
            if !tried_alone && self.cfg.rules.defer_recreated_lock {
                self.record(
                    EventKind::GrantDeferred,
                    format!("{file}group lock obtained while node {peer} still acts on the old lock file; waiting for it to step down"),
                );
                self.grant = Some(Grant {
                    waited: true,
                    ..grant
                });
                self.set_phase(Phase::Warm(Waiting::PeerStepDown(peer)));
                return;
            }
        }
        self.hand_over_or_use(grant);
    }

    /// The rest of a grant's judgement, once no peer acts any more (at the grant, or when the
    /// peer it waited for stepped down): given back to a chosen or preferred standby, or used.
    /// A deferred grant is judged here too (lock files: `defer_recreated_lock`): a standby that
    /// waited for a peer still claiming the lock must, once that peer's record says it let go,
    /// still give the grant to the standby a switchover chose; it used to promote itself.
    fn hand_over_or_use(&mut self, grant: Grant) {
        // A switchover to a chosen standby: a grant that reaches another standby is given back
        // (the chosen one waits for the lock too, and gets it once this node lets go).
        if !grant.asked && self.cfg.rules.honour_handover {
            if let Some(to) = self.handover_target() {
                self.record(
                    EventKind::LockReleased,
                    format!("group lock given back: the switchover hands activity to {to}"),
                );
                self.release();
                let until = self.now.mono + HANDOVER_GRACE;
                self.set_phase(Phase::Warm(Waiting::Handover { to, until }));
                return;
            }
        }
        // A standby of higher priority could take over too: give it the lock (it waits for it
        // in the kernel). Only a waited-for grant: an operator's or Hot mode's try is answered now.
        if !grant.asked && !self.defer_spent {
            if let Some((to, priority)) = self.preferred_standby() {
                self.record(
                    EventKind::LockReleased,
                    format!(
                        "group lock given back: node {to} (priority {priority}, above this node's {}) is ready and preferred",
                        self.pref.priority
                    ),
                );
                self.release();
                let until = self.now.mono + PREFERENCE_DEFER;
                self.set_phase(Phase::Warm(Waiting::Preferred { to, until }));
                return;
            }
        }
        self.grant = Some(grant);
        self.await_previous_services();
    }

    /// The standby a live peer is handing activity to, while that standby is alive and not this
    /// node (the agent never names this node in [`PeerView::handover_to`]).
    fn handover_target(&self) -> Option<String> {
        let to = self
            .peers
            .iter()
            .filter(|p| p.fresh && !p.agent_gone)
            .find_map(|p| p.handover_to.clone())?;
        self.peers
            .iter()
            .any(|p| p.node == to && p.fresh && !p.agent_gone)
            .then_some(to)
    }

    /// The ready standby of highest priority above this node's, alive and neither acting nor
    /// holding the lock, with its priority.
    fn preferred_standby(&self) -> Option<(String, u32)> {
        self.ranks
            .iter()
            .filter(|r| r.ready && r.priority > self.pref.priority)
            .filter(|r| {
                self.peers.iter().any(|p| {
                    p.node == r.node && p.fresh && !p.agent_gone && !p.hot && !p.holds_lock
                })
            })
            .max_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| b.node.cmp(&a.node))
            })
            .map(|r| (r.node.clone(), r.priority))
    }

    /// A node standing aside for a preferred standby goes back to waiting for the lock as soon as
    /// that standby took it, or is no longer there or ready: never a delay without a reason.
    fn recheck_preferred(&mut self) {
        if let Phase::Warm(Waiting::Preferred { to, .. }) = &self.phase {
            let still = self.preferred_standby().is_some_and(|(p, _)| &p == to);
            if !still && self.trying.is_none() {
                self.join();
            }
        }
    }

    /// While Hot with `failback`: hand activity to a preferred standby once it has been ready for
    /// that long (a switchover to it, the way an operator's would go).
    fn check_failback(&mut self) {
        let Some(after) = self.pref.failback else {
            return;
        };
        if self.phase != Phase::Hot {
            self.failback_since = None;
            return;
        }
        let Some((to, priority)) = self.preferred_standby() else {
            self.failback_since = None;
            return;
        };
        let now = self.now.mono;
        let since = match &self.failback_since {
            Some((n, t)) if *n == to => *t,
            _ => {
                self.failback_since = Some((to.clone(), now));
                now
            }
        };
        if now.saturating_sub(since) < after {
            return;
        }
        self.failback_since = None;
        self.record(
            EventKind::Switchover,
            format!(
                "failback to {to}: preferred (priority {priority}, above this node's {}) and ready for {:.1} s",
                self.pref.priority,
                after.as_secs_f64()
            ),
        );
        self.handover_to = Some(to);
        self.demote(After::Yield, true);
    }

    /// The grant is ours to use once the services the previous holders advertised are gone.
    fn await_previous_services(&mut self) {
        self.awaited = if self.cfg.rules.await_previous_service {
            self.peers
                .iter()
                .filter_map(|p| Some((p.node.clone(), p.live_service?)))
                .collect()
        } else {
            Vec::new()
        };
        let pids: Vec<u32> = self.awaited.iter().map(|(_, pid)| *pid).collect();
        if pids.is_empty() {
            self.record(
                EventKind::PreviousServiceGone,
                "no service of a previous active is running",
            );
            self.accept_grant();
            return;
        }
        if let Some(g) = self.grant.as_mut() {
            g.waited = true;
        }
        self.set_phase(Phase::Warm(Waiting::PreviousService(pids.clone())));
        self.emit(Command::WatchProcesses { pids });
    }

    fn on_process_gone(&mut self, pid: u32) {
        self.awaited.retain(|(_, p)| *p != pid);
        self.awaited_changed("the previous active's service has ended");
    }

    fn awaited_changed(&mut self, why: &str) {
        let Phase::Warm(Waiting::PreviousService(pids)) = &mut self.phase else {
            return;
        };
        *pids = self.awaited.iter().map(|(_, pid)| *pid).collect();
        if pids.is_empty() {
            self.record(EventKind::PreviousServiceGone, why);
            self.accept_grant();
        }
    }

    /// Go on with a held grant: promote, unless TryHeartbeat finds the heartbeat stale.
    fn accept_grant(&mut self) {
        let Some(grant) = self.grant.take() else {
            return;
        };
        if grant.waited && !self.confirmed {
            // Held a while: the lock file may have been replaced meanwhile, unnoticed until the
            // next check, and going Hot on it while a peer is granted the new one makes two
            // actives. Promote only once the lock is confirmed to be still the group's.
            self.grant = Some(grant);
            self.set_phase(Phase::Warm(Waiting::PreviousService(Vec::new())));
            self.emit(Command::ConfirmLock);
            return;
        }
        self.confirmed = false;
        if !grant.operator && self.cfg.mode == ActivationMode::TryHeartbeat {
            if let Some(stale) = self.stale_reason(&grant.previous) {
                self.record(EventKind::HeartbeatStale, stale.clone());
                self.set_phase(Phase::Warm(Waiting::StaleHeartbeat(stale)));
                return;
            }
        }
        self.promote();
    }

    /// None when the heartbeat is fresh enough for TryHeartbeat to go Hot by itself.
    fn stale_reason(&self, hb: &HeartbeatView) -> Option<String> {
        let delay = self.cfg.heartbeat_delay.as_millis() as u64;
        match hb {
            HeartbeatView::Missing => Some("there is no heartbeat in the lock file".to_string()),
            HeartbeatView::Garbage(why) => Some(format!("the heartbeat cannot be parsed ({why})")),
            HeartbeatView::At { node, wall_ms } => {
                let age = self.now.wall_ms.abs_diff(*wall_ms);
                if age < delay {
                    None
                } else {
                    Some(format!(
                        "the last heartbeat (from {node}) is {:.1} s old, older than heartbeat_delay {:.1} s",
                        age as f64 / 1000.0,
                        delay as f64 / 1000.0
                    ))
                }
            }
        }
    }

    fn on_lock_busy(&mut self, holder: Option<String>) {
        match self.trying.take() {
            Some(TryFor::Operator) => {
                let reason = match (&holder, &self.failover_stopped) {
                    (_, Some(why)) => format!("failover is stopped for the group ({why}): start failover again (POST /failover/start) once that service no longer runs"),
                    (Some(h), None) => format!("node {h} holds the group lock; activating here would make two actives"),
                    (None, None) => "another process holds the group lock; activating here would make two actives".to_string(),
                };
                self.record(EventKind::Refused, reason.clone());
                self.answer_activate = false;
                self.emit(Command::Answer(Answer::ActivateRefused { holder, reason }));
            }
            Some(TryFor::Auto) => {
                if let Phase::Warm(_) = self.phase {
                    self.set_phase(Phase::Warm(Waiting::Refused(holder)));
                }
            }
            None => {}
        }
    }

    fn promote(&mut self) {
        self.set_phase(Phase::Promoting);
        if self.persist_pending {
            // The answer of an abandoned promotion (lock lost, service gone, …) is still on its
            // way, and answers carry nothing to tell them apart: taking it for this promotion
            // would make the node Hot with an epoch below the store's, possibly below a peer's
            // that was active meanwhile. Wait for it, then persist anew (`persist_answered`).
            self.persist_again = true;
            return;
        }
        self.persist_pending = true;
        let floor = self.epoch;
        self.emit(Command::PersistNextEpoch { floor });
    }

    /// Bookkeeping of the one outstanding [`Command::PersistNextEpoch`] (the agent answers each
    /// one exactly once). True when this answer was for an abandoned promotion and is consumed.
    fn persist_answered(&mut self) -> bool {
        self.persist_pending = false;
        if !std::mem::take(&mut self.persist_again) {
            return false;
        }
        if self.phase == Phase::Promoting {
            self.persist_pending = true;
            let floor = self.epoch;
            self.emit(Command::PersistNextEpoch { floor });
        }
        true
    }

    fn on_epoch_durable(&mut self, epoch: u64) {
        if self.phase != Phase::Promoting || !self.holds_lock || epoch <= self.epoch {
            // Not ours to use: a late answer, or (never expected) an epoch that does not advance.
            if self.phase == Phase::Promoting {
                self.on_epoch_failed(format!(
                    "epoch store returned {epoch}, not above {}",
                    self.epoch
                ));
            }
            return;
        }
        self.epoch = epoch;
        self.failures_reset_if_stable();
        self.defer_spent = false;
        self.set_phase(Phase::Hot);
        self.ready_recorded = false;
        self.record(
            EventKind::EpochDurable,
            format!("epoch {epoch} is durable; node is Hot"),
        );
        if self.cfg.mode == ActivationMode::TryHeartbeat {
            self.emit(Command::WriteHeartbeat { epoch });
        }
        self.acked = false;
        match self.svc {
            SvcState::Running { .. } => self.tell_active(),
            SvcState::Starting(_) => self.notify_when_started = true,
            SvcState::Stopped => self.start_service(Role::Active),
            // A standby service being stopped (e.g. it failed its check): start afresh once it is gone.
            SvcState::Stopping => {}
        }
        if self.answer_activate {
            self.answer_activate = false;
            self.emit(Command::Answer(Answer::Activated { epoch }));
        }
    }

    fn failures_reset_if_stable(&mut self) {
        if self.now.mono.saturating_sub(self.svc_started_at) >= self.cfg.stable_after {
            self.failures = 0;
        }
    }

    fn on_epoch_failed(&mut self, reason: String) {
        if self.phase != Phase::Promoting {
            return;
        }
        self.record(
            EventKind::EpochFailed,
            format!("cannot make the next epoch durable: {reason}; not going Hot"),
        );
        self.release();
        if self.answer_activate {
            self.answer_activate = false;
            self.emit(Command::Answer(Answer::ActivateRefused {
                holder: None,
                reason: format!("cannot make the next epoch durable: {reason}"),
            }));
        }
        self.enter_backoff();
    }

    /// Answer an operator's PUT that waits for a promotion that will not happen now.
    fn refuse_pending_activate(&mut self, reason: &str) {
        if self.answer_activate {
            self.answer_activate = false;
            self.emit(Command::Answer(Answer::ActivateRefused {
                holder: None,
                reason: reason.to_string(),
            }));
        }
    }

    fn release(&mut self) {
        if self.holds_lock {
            self.holds_lock = false;
            self.emit(Command::Release);
            self.record(EventKind::LockReleased, "group lock released");
        }
    }

    fn backoff_delay(&self) -> Duration {
        let shift = self.failures.saturating_sub(1).min(16);
        let d = self.cfg.backoff_min.saturating_mul(1u32 << shift);
        d.min(self.cfg.backoff_max)
    }

    fn enter_backoff(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let until = self.now.mono + self.backoff_delay();
        self.set_phase(Phase::Warm(Waiting::Backoff { until }));
        if self.cfg.standby.runs_while_standby() && self.svc == SvcState::Stopped {
            self.svc_restart_at = Some(until);
        }
    }

    fn on_service_started(&mut self, pid: u32) {
        let role = match self.svc {
            SvcState::Starting(r) => r,
            _ => return,
        };
        self.svc = SvcState::Running { role, pid };
        self.svc_pid_at = self.now.mono;
        // The pid is reported right after exec, long before the service has installed its
        // handler for the activate signal, whose default action kills it.
        self.svc_signal_ready = role == Role::Active || !self.cfg.rules.wait_signal_ready;
        self.record(
            EventKind::ServiceStarted,
            format!("service pid {pid} started as {}", role.as_env()),
        );
        if !self.svc_signal_ready {
            self.emit(Command::WatchSignalReady { pid });
        }
        if self.phase == Phase::Hot {
            if role == Role::Standby || self.notify_when_started {
                self.tell_active();
            } else {
                self.record(
                    EventKind::ServiceNotified,
                    format!("service pid {pid} started as active"),
                );
                self.maybe_ready();
            }
        } else if role == Role::Active {
            // Started as active but the node is no longer Hot: it must not act.
            self.svc = SvcState::Stopping;
            self.emit(Command::StopService { graceful: false });
        }
        self.service_progress();
    }

    /// Tell the running service it is active, as soon as the signal cannot kill it.
    fn tell_active(&mut self) {
        let SvcState::Running { pid, .. } = self.svc else {
            self.notify_when_started = true;
            return;
        };
        if !self.svc_signal_ready {
            self.notify_when_started = true;
            return;
        }
        self.notify_when_started = false;
        let epoch = self.epoch;
        self.svc = SvcState::Running {
            role: Role::Active,
            pid,
        };
        self.emit(Command::NotifyActive { epoch });
        self.record(
            EventKind::ServiceNotified,
            format!("service pid {pid} told it is active"),
        );
        self.maybe_ready();
    }

    fn on_signal_ready(&mut self, pid: u32) {
        if !matches!(self.svc, SvcState::Running { pid: p, .. } if p == pid)
            || self.svc_signal_ready
        {
            return;
        }
        self.svc_signal_ready = true;
        if self.phase == Phase::Hot && self.notify_when_started {
            self.tell_active();
        }
        self.service_progress();
    }

    fn on_service_acked(&mut self, pid: u32, epoch: u64) {
        let acting = matches!(
            self.svc,
            SvcState::Running { role: Role::Active, pid: p } if p == pid
        );
        if self.phase == Phase::Hot && acting && epoch == self.epoch && !self.acked {
            self.acked = true;
            self.record(
                EventKind::ServiceAcked,
                format!("service pid {pid} acts with epoch {epoch}"),
            );
        }
    }

    fn maybe_ready(&mut self) {
        if self.phase == Phase::Hot
            && !self.ready_recorded
            && matches!(
                self.svc,
                SvcState::Running {
                    role: Role::Active,
                    ..
                }
            )
            && (self.healthy || !self.cfg.health_check)
        {
            self.ready_recorded = true;
            self.record(EventKind::Ready, "active service ready");
        }
    }

    fn on_service_exited(&mut self, reason: String) {
        if self.svc == SvcState::Stopped {
            return;
        }
        let was_active = matches!(
            self.svc,
            SvcState::Running {
                role: Role::Active,
                ..
            } | SvcState::Starting(Role::Active)
        );
        // "A service that ran this long before failing resets the backoff": judge it now, when it
        // ends. Checking only at promotion missed a hot standby restarted just before it was
        // promoted, or a cold one started at promotion, that then served well for hours: its next
        // failure still got the grown backoff of old failures.
        self.failures_reset_if_stable();
        self.svc = SvcState::Stopped;
        self.healthy = false;
        self.notify_when_started = false;
        self.record(EventKind::ServiceExited, format!("service {reason}"));
        match self.phase.clone() {
            Phase::Demoting(after) => self.finish_demote(after),
            Phase::Hot | Phase::Promoting if !was_active => {
                // A standby process (or one being stopped because it failed its check before the
                // node went Hot) ended before it was ever told it is active: nothing acted, so
                // there is nothing to fail over. Hot: start a fresh process as the active one, as
                // `on_epoch_durable` intends for a standby being stopped. Promoting: it starts
                // once the epoch is durable. (Failing over here left the node Hot with no service,
                // then released a lock it had just been granted.) In Hot, `Stopping` never holds
                // an active process: every stop of one goes through `demote`, which leaves Hot.
                if self.phase == Phase::Hot {
                    // Remembered: should the active process fail at once too, the node stands
                    // aside once it has stepped down.
                    if self.cfg.standby.runs_while_standby() {
                        self.svc_failure = Some(reason);
                    }
                    self.start_service(Role::Active);
                } else {
                    // Promoting: a standby that failed gives the grant back (see
                    // `service_failed`), and its service is started again after a backoff.
                    self.service_failed(&reason);
                    if matches!(self.phase, Phase::Warm(Waiting::NotReady(_))) {
                        self.failures = self.failures.saturating_add(1);
                        self.svc_restart_at = Some(self.now.mono + self.backoff_delay());
                    }
                }
            }
            Phase::Hot | Phase::Promoting => {
                // The active service died: hand over rather than restart it silently in place.
                self.record(
                    EventKind::Demoted,
                    format!("active service {reason}; failing over"),
                );
                self.set_phase(Phase::Warm(Waiting::Lock));
                self.release();
                // Not "not ready" yet: the node rejoins at the end of the backoff while its standby
                // service starts again; only a standby that fails in turn stands aside.
                self.enter_backoff();
            }
            Phase::Warm(w) => {
                if was_active {
                    // Cannot normally happen (active only while Hot), but never leave it unhandled.
                    self.release();
                }
                if self.cfg.standby.runs_while_standby() {
                    // A standby service only ends on its own or after failing its health check:
                    // both count as failures, so a broken service cannot restart in a tight loop.
                    self.failures = self.failures.saturating_add(1);
                    let at = match w {
                        Waiting::Backoff { until } => until,
                        _ => self.now.mono + self.backoff_delay(),
                    };
                    self.svc_restart_at = Some(at);
                    self.service_failed(&reason);
                }
            }
            Phase::Idle | Phase::Exited => {}
        }
    }

    fn on_health_ok(&mut self) {
        // A check of this process may pass before its start is reported (the checker reports a
        // success once): remember it, or the standby never becomes ready.
        if !matches!(self.svc, SvcState::Running { .. } | SvcState::Starting(_)) {
            return;
        }
        self.healthy = true;
        self.maybe_ready();
        self.service_progress();
        // Standing aside only for the first health answer: it came. What else keeps this node
        // aside (the service's own report comes before the check passes) is said now.
        if self.phase == Phase::Warm(Waiting::NotReady(NOT_CHECKED_YET.to_string())) {
            match self.outdated.clone().or_else(|| self.not_ready()) {
                None => self.join(),
                Some(why) => {
                    self.record(
                        EventKind::NotReady,
                        format!("the service {why}; not taking over until it is ready"),
                    );
                    self.phase = Phase::Warm(Waiting::NotReady(why));
                }
            }
        }
    }

    fn on_health_failed(&mut self, reason: String) {
        if !matches!(self.svc, SvcState::Running { .. }) {
            return;
        }
        self.healthy = false;
        self.record(EventKind::HealthFailed, reason.clone());
        match self.phase {
            Phase::Hot => {
                self.record(
                    EventKind::Demoted,
                    format!("health check failed ({reason}); failing over"),
                );
                self.demote(After::Backoff, true);
            }
            _ => {
                self.svc = SvcState::Stopping;
                self.emit(Command::StopService { graceful: true });
            }
        }
    }

    /// Step down: stop the service first, release the lock once it has stopped acting.
    fn demote(&mut self, after: After, graceful: bool) {
        self.grant = None;
        self.set_phase(Phase::Demoting(after));
        match self.svc {
            SvcState::Stopped => self.finish_demote(after),
            SvcState::Stopping if graceful => {}
            _ => {
                self.svc = SvcState::Stopping;
                self.emit(Command::StopService { graceful });
            }
        }
    }

    fn finish_demote(&mut self, after: After) {
        if self.holds_lock && self.cfg.mode == ActivationMode::TryHeartbeat {
            // A fresh heartbeat lets a TryHeartbeat standby take over by itself. Not only after a
            // switchover: stopping a failed active (health check) or a shutdown can outlast
            // `heartbeat_delay` (grace period), and a live failover must not wait for an operator.
            let epoch = self.epoch;
            self.emit(Command::WriteHeartbeat { epoch });
        }
        self.release();
        match after {
            After::Backoff => self.enter_backoff(),
            After::Yield => {
                let until = self.now.mono + self.cfg.yield_timeout;
                self.set_phase(Phase::Warm(Waiting::Yield { until }));
                if self.cfg.standby.runs_while_standby() {
                    self.start_service(Role::Standby);
                }
            }
            After::Exit => {
                self.set_phase(Phase::Exited);
                self.emit(Command::Exit { code: 0 });
            }
            After::Rejoin => {
                self.set_phase(Phase::Warm(Waiting::Lock));
                if self.cfg.standby.runs_while_standby() {
                    self.start_service(Role::Standby);
                }
                self.join();
            }
        }
    }

    fn on_lock_lost(&mut self, reason: String) {
        if !self.holds_lock {
            return;
        }
        self.holds_lock = false;
        self.record(EventKind::LockLost, reason.clone());
        match self.phase.clone() {
            Phase::Hot | Phase::Promoting => {
                // Someone else may be granted activity at any moment: stop acting now.
                self.record(
                    EventKind::Demoted,
                    format!("lost the group lock ({reason})"),
                );
                // An operator's PUT waiting for this promotion would otherwise never be answered.
                self.refuse_pending_activate(&format!("lost the group lock ({reason})"));
                self.demote(After::Rejoin, false);
            }
            Phase::Demoting(after) => {
                if self.svc != SvcState::Stopped {
                    self.svc = SvcState::Stopping;
                    self.emit(Command::StopService { graceful: false });
                }
                self.phase = Phase::Demoting(after);
            }
            Phase::Warm(Waiting::StaleHeartbeat(_)) => self.join(),
            Phase::Warm(Waiting::PeerStepDown(_) | Waiting::PreviousService(_)) => {
                self.grant = None;
                self.refuse_pending_activate(&format!("lost the group lock ({reason})"));
                self.join();
            }
            _ => {}
        }
    }

    fn on_activate(&mut self) {
        match self.phase.clone() {
            Phase::Hot => {
                let epoch = self.epoch;
                self.emit(Command::Answer(Answer::Activated { epoch }));
            }
            Phase::Promoting => self.answer_activate = true,
            // Never overridden: promoting now is exactly the second active these waits prevent.
            Phase::Warm(Waiting::PeerStepDown(_) | Waiting::PreviousService(_)) => {
                self.answer_activate = true;
                if let Some(g) = self.grant.as_mut() {
                    g.operator = true;
                    g.asked = true;
                }
            }
            Phase::Warm(_) if self.holds_lock => {
                self.record(EventKind::LockObtained, "operator override: activating");
                self.answer_activate = true;
                self.grant = Some(Grant {
                    previous: HeartbeatView::Missing,
                    operator: true,
                    asked: true,
                    waited: true,
                });
                self.accept_grant();
            }
            Phase::Warm(_) => {
                self.answer_activate = true;
                self.trying = Some(TryFor::Operator);
                self.emit(Command::TryLock);
            }
            Phase::Demoting(_) | Phase::Exited | Phase::Idle => {
                let reason = "the node is stepping down or stopping".to_string();
                self.emit(Command::Answer(Answer::ActivateRefused {
                    holder: None,
                    reason,
                }));
            }
        }
    }

    fn on_switchover(&mut self, ready: Vec<String>, to: Option<String>) {
        if self.phase != Phase::Hot {
            let reason = "this node is not the active one; ask the active node".to_string();
            self.emit(Command::Answer(Answer::SwitchoverRefused { reason }));
            return;
        }
        if ready.is_empty() {
            let reason = "no standby is ready to take over; the active stays active".to_string();
            self.record(EventKind::Refused, reason.clone());
            self.emit(Command::Answer(Answer::SwitchoverRefused { reason }));
            return;
        }
        if let Some(t) = &to {
            if !ready.contains(t) {
                let reason = format!(
                    "{t} is not a ready standby (ready: {}); the active stays active",
                    ready.join(", ")
                );
                self.record(EventKind::Refused, reason.clone());
                self.emit(Command::Answer(Answer::SwitchoverRefused { reason }));
                return;
            }
        }
        let epoch = self.epoch;
        self.record(
            EventKind::Switchover,
            match &to {
                Some(t) => format!("switchover to {t} requested"),
                None => format!("switchover requested; ready standbys: {}", ready.join(", ")),
            },
        );
        // Advertised in this node's record until it campaigns again: the other standbys give a
        // grant back while it says so (see `handover_target`).
        self.handover_to = to;
        self.emit(Command::Answer(Answer::SwitchoverStarted { epoch }));
        self.demote(After::Yield, true);
    }

    fn on_peers(&mut self, peers: Vec<PeerView>) {
        self.peers = peers;
        // A node that says, alive, that it neither acts nor holds the lock has stepped down, and
        // stepping down stops its service first: the process that still runs is a standby (the
        // record named it while that node believed it held a lock on a replaced file).
        let stepped_down = |node: &str, peers: &[PeerView]| {
            peers
                .iter()
                .any(|p| p.node == node && p.fresh && !p.agent_gone && !p.hot && !p.holds_lock)
        };
        let before = self.awaited.len();
        let peers = std::mem::take(&mut self.peers);
        self.awaited.retain(|(node, _)| !stepped_down(node, &peers));
        self.peers = peers;
        if self.awaited.len() != before {
            self.awaited_changed("the previous holder stepped down");
        }
        let newest = self
            .peers
            .iter()
            .filter(|p| p.fresh && p.hot && p.epoch > self.epoch)
            .max_by_key(|p| p.epoch)
            .map(|p| (p.node.clone(), p.epoch));
        if let Some((node, epoch)) = newest {
            self.on_peer_active(node, epoch);
        }
        if matches!(self.phase, Phase::Warm(Waiting::Handover { .. }))
            && self.handover_target().is_none()
            && self.trying.is_none()
        {
            // The chosen standby is active (the handing node campaigns again and says no more) or
            // gone: back to waiting for the lock like any standby.
            self.join();
        }
        self.refresh_refusal();
        self.recheck_preferred();
        if let Phase::Warm(Waiting::PeerStepDown(peer)) = &self.phase {
            if !self.peers.iter().any(|p| p.may_act()) {
                let detail = format!("node {peer} stepped down or went silent");
                self.record(EventKind::GrantDeferred, detail);
                match self.grant.take() {
                    Some(grant) => self.hand_over_or_use(grant),
                    None => self.await_previous_services(),
                }
            }
        }
    }

    /// A refusal names the node that holds the lock now, or says that the one it named is gone:
    /// a reason read long after the refusal must still be true.
    fn refresh_refusal(&mut self) {
        let named = match &self.phase {
            Phase::Warm(Waiting::Refused(Some(h)) | Waiting::HolderGone(h)) => h.clone(),
            // Nobody known held it (another process): the records cannot tell when it lets go.
            _ => return,
        };
        let holder = self
            .peers
            .iter()
            .filter(|p| p.may_act())
            .max_by_key(|p| p.epoch)
            .map(|p| p.node.clone());
        self.phase = Phase::Warm(match holder {
            Some(h) => Waiting::Refused(Some(h)),
            None => Waiting::HolderGone(named),
        });
    }

    fn on_peer_active(&mut self, node: String, epoch: u64) {
        if self.phase == Phase::Hot && epoch > self.epoch {
            // A newer active exists, so our grant is gone even if the lock has not told us yet.
            // Stop acting at once, as on a lost lock. (Before, the Hot node adopted the peer's
            // epoch as its own active epoch and stayed Hot: two actives, with the same token.)
            self.record(
                EventKind::Demoted,
                format!("node {node} is active with the newer epoch {epoch}"),
            );
            self.demote(After::Backoff, false);
        }
        self.epoch = self.epoch.max(epoch);
        self.defer_spent = false;
        // A try under way is answered first; joining now would campaign for a lock it may hold.
        if let (Phase::Warm(Waiting::Yield { .. }), None) = (&self.phase, self.trying) {
            self.join();
        }
    }

    fn on_tick(&mut self) {
        let now = self.now.mono;
        match self.phase.clone() {
            Phase::Hot if self.cfg.mode == ActivationMode::TryHeartbeat => {
                let epoch = self.epoch;
                self.emit(Command::WriteHeartbeat { epoch });
            }
            Phase::Warm(Waiting::Backoff { until })
            | Phase::Warm(Waiting::Yield { until })
            | Phase::Warm(Waiting::Handover { until, .. })
                if now >= until =>
            {
                self.join();
            }
            Phase::Warm(Waiting::Preferred { until, .. }) if now >= until => {
                self.defer_spent = true;
                self.join();
            }
            _ => {}
        }
        self.check_failback();
        if let SvcState::Running { pid, .. } = self.svc {
            if !self.svc_signal_ready && now.saturating_sub(self.svc_pid_at) >= self.cfg.signal_wait
            {
                self.record(
                    EventKind::SignalWaitExpired,
                    format!(
                        "service pid {pid} does not handle the activate signal after {:?}; counting it as able anyway",
                        self.cfg.signal_wait
                    ),
                );
                self.on_signal_ready(pid);
            }
        }
        if let Some(at) = self.svc_restart_at {
            if now >= at && self.svc == SvcState::Stopped && matches!(self.phase, Phase::Warm(_)) {
                self.start_service(Role::Standby);
            }
        }
        self.service_progress();
        if self.holds_lock {
            self.emit(Command::VerifyLock);
        }
    }

    fn on_release(&mut self, unverified: Option<String>, because: &[(String, String)]) {
        let pid = match (&self.phase, self.svc) {
            (Phase::Hot, SvcState::Running { pid, .. }) => Some(pid),
            _ => None,
        };
        let alone = self.peers.iter().find(|p| p.fresh && !p.agent_gone);
        let refusal = match (pid, alone, unverified) {
            (None, _, _) => Some(
                "only the active node, with its service running, can hand its service over"
                    .to_string(),
            ),
            // The agent's own doubt first: its `because` is empty then, and a peer it counted
            // would be named without what counts it in (review 29, L1).
            (Some(_), _, Some(why)) => Some(why),
            (Some(_), Some(p), None) => {
                let why = because
                    .iter()
                    .find(|(n, _)| *n == p.node)
                    .map_or("its record is fresh", |(_, why)| why.as_str());
                Some(format!(
                    "node {} is still in the group ({why}): stop the standbys first, or one would take over while the released service keeps acting",
                    p.node
                ))
            }
            (Some(_), None, None) => None,
        };
        let (Some(pid), None) = (pid, refusal.clone()) else {
            let reason = refusal.unwrap_or_default();
            self.refuse_release(reason);
            return;
        };
        // The stop is recorded first, while this node still holds the group: a standby that
        // missed the release (cut off or frozen long enough that nothing here counts it) must
        // find it when it comes back, rather than a free group (review 28, H1).
        self.releasing = Some(pid);
        let epoch = self.epoch;
        self.emit(Command::StopFailover { pid, epoch });
    }

    fn on_failover_stopped(&mut self, stopped: Option<String>) {
        match (&self.failover_stopped, &stopped) {
            (None, Some(why)) => self.record(
                EventKind::FailoverStopped,
                format!("failover is stopped for the group: {why}"),
            ),
            (Some(_), None) => {
                self.record(
                    EventKind::FailoverStarted,
                    "failover runs again: the group's stop was cleared",
                );
                // A hot-mode node tried once while the group was stopped and was refused for
                // it: it tries again, as at its start (review 30, M6).
                if self.cfg.mode == ActivationMode::Hot
                    && matches!(self.phase, Phase::Warm(Waiting::Refused(_)))
                    && self.trying.is_none()
                {
                    self.phase = Phase::Warm(Waiting::Lock);
                    self.trying = Some(TryFor::Auto);
                    self.emit(Command::TryLock);
                }
            }
            _ => {}
        }
        self.failover_stopped = stopped;
    }

    fn refuse_release(&mut self, reason: String) {
        self.record(EventKind::Refused, format!("release: {reason}"));
        self.emit(Command::Answer(Answer::ReleaseRefused { reason }));
    }

    fn on_stop_recorded(&mut self, error: Option<String>) {
        let Some(pid) = self.releasing.take() else {
            return;
        };
        let running = matches!((&self.phase, self.svc), (Phase::Hot, SvcState::Running { pid: p, .. }) if p == pid);
        if let Some(e) = error {
            self.refuse_release(format!(
                "cannot record in the coordinator that failover is stopped ({e}): handed over without it, a standby that missed the release could take the group while the service keeps acting; the service was not handed over (should the stop commit all the same, this agent withdraws it once it sees it; if this agent ends first, a standby's status says so and POST /failover/start clears it)"
            ));
            return;
        }
        if !running {
            // The service ended, or this node lost the group, while the stop was written: it
            // stays recorded (only a start of failover clears it), and nothing is handed over.
            self.refuse_release(
                "the service or the group was lost while the stop was recorded; failover stays stopped until it is started again".to_string(),
            );
            return;
        }
        self.record(
            EventKind::Shutdown,
            format!("released: service pid {pid} keeps running as a plain server, no longer fenced; failover is stopped for the group; leaving it"),
        );
        self.emit(Command::DetachService);
        self.svc = SvcState::Stopped;
        self.release();
        self.set_phase(Phase::Exited);
        let epoch = self.epoch;
        self.emit(Command::Answer(Answer::Released { pid, epoch }));
        self.emit(Command::Exit { code: 0 });
    }

    fn on_shutdown(&mut self) {
        self.shutdowns += 1;
        if self.shutdowns == 1 {
            self.record(
                EventKind::Shutdown,
                "stopping: service first, then the lock",
            );
        }
        if self.phase == Phase::Exited {
            return;
        }
        let graceful = self.shutdowns == 1;
        if self.answer_activate {
            self.answer_activate = false;
            self.emit(Command::Answer(Answer::ActivateRefused {
                holder: None,
                reason: "the node is stopping".to_string(),
            }));
        }
        self.demote(After::Exit, graceful);
    }
}

fn describe_heartbeat(hb: &HeartbeatView, now_ms: u64) -> String {
    match hb {
        HeartbeatView::Missing => "no heartbeat in the lock file".to_string(),
        HeartbeatView::Garbage(why) => format!("unreadable heartbeat ({why})"),
        HeartbeatView::At { node, wall_ms } => format!(
            "last heartbeat from {node}, {} ms old",
            now_ms.saturating_sub(*wall_ms)
        ),
    }
}
