//! The agent's event loop: everything that happens to the node arrives here as one input at a
//! time, goes through the engine, and the engine's commands are executed in order. Reading one
//! failover means reading [`Runtime::feed`] and [`Runtime::execute`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};
use understudy_coordinator::{
    CoordEvent, Coordinator, Heartbeat, HeartbeatReading, LiveMember, MemberRecord, Members,
    StopMark, TryAcquire,
};
use understudy_engine::{
    Answer, Command, Engine, EngineConfig, EventKind, HeartbeatView, Input, Now, PeerView,
    Preference, Rank, Role, Rules, State,
};
use understudy_service::{procwatch, HealthEvent, ServiceEvent, ServiceSpec, Supervisor};
use understudy_status::{Node, Service, Status, StepDown};

use crate::config::Config;
use crate::events::Timeline;
use crate::metrics::Metrics;

/// Errors that stop the agent before it runs.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The admin address cannot be used (exit code 2, like other configuration errors).
    #[error("{file}: node.admin: cannot listen on {addr}: {source}")]
    AdminBind {
        /// The configuration file.
        file: PathBuf,
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The coordinator could not be set up.
    #[error("cannot use the group lock: {0}")]
    Coordinator(#[from] understudy_coordinator::CoordError),
    /// Another agent has this node's name, or the lock file serves another group (exit code 2).
    #[error(transparent)]
    Identity(#[from] crate::coordination::IdentityError),
    /// Anything else at start.
    #[error("{0}")]
    Start(String),
}

/// Why `POST /failover/start` did not clear the group's stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRefused {
    /// The released service still runs on this machine (409).
    StillRuns(String),
    /// The coordinator could not clear it (503).
    Coordinator(String),
}

/// An operator request travelling from the admin API to the event loop.
#[derive(Debug)]
pub enum ApiRequest {
    /// `PUT /service/activationmode/hot`, from this client.
    Activate(oneshot::Sender<Answer>, Option<std::net::SocketAddr>),
    /// `POST /service/switchover[?to=NODE]`, from this client.
    Switchover(
        oneshot::Sender<Answer>,
        Option<String>,
        Option<std::net::SocketAddr>,
    ),
    /// `POST /service/release`: hand the service over as a plain server and leave the group.
    Release(oneshot::Sender<Answer>),
    /// `POST /failover/start`: clear the group's stop of failover.
    StartFailover(oneshot::Sender<Result<Option<StopMark>, StartRefused>>),
    /// `PUT /config/wanted/{generation}`: the configuration this node must run; answered once
    /// the engine knows whether the running one is it.
    ConfigWanted {
        /// Its [`crate::config::generation`].
        generation: u64,
        /// Told when done.
        done: oneshot::Sender<()>,
    },
    /// `POST /service/active-ack`: the service says it acts with this epoch.
    ServiceAck {
        /// The process that says so.
        pid: u32,
        /// The epoch it read.
        epoch: u64,
    },
}

/// What the process watchers found (see [`Command::WatchProcesses`] and
/// [`Command::WatchSignalReady`]).
#[derive(Debug)]
enum ProcEvent {
    Gone(u32),
    SignalReady(u32),
}

/// State shared between the event loop and the admin API.
pub struct Shared {
    /// The validated configuration.
    pub cfg: Config,
    /// The latest status, rewritten after every input.
    pub status: RwLock<Status>,
    /// The event timeline.
    pub timeline: Mutex<Timeline>,
    /// Metrics.
    pub metrics: Metrics,
    /// The group's membership records.
    pub members: Members,
    /// Wall clock of the loop's last tick, for /healthz.
    pub last_tick_ms: std::sync::atomic::AtomicU64,
    /// The deadline of the node's grant (etcd), shared with the service's guardian.
    pub fence: understudy_service::Fence,
}

impl Shared {
    /// The current status.
    pub fn status(&self) -> Status {
        let mut s = match self.status.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        // Past the grant's deadline the guardian has ended the service: a node that has not yet
        // heard (its agent was frozen and just continued) must not claim to be active.
        if s.is_hot() && self.fence.expired() {
            s.node.state = State::Warm;
            s.node.waiting = Some("the grant's deadline passed; stepping down".to_string());
        }
        s.renewal_age_ms = self
            .members
            .renewal()
            .map(|(_, age)| age.as_millis() as u64);
        s
    }
}

/// Wall clock in Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A member record is fresh when it was rewritten within this many heartbeat intervals.
pub const FRESH_INTERVALS: u32 = 5;

/// Run an agent until it is told to stop; returns the process exit code. Everything it logs,
/// its tasks included, carries the node and group (a `node` span: text logs show
/// `node{node=a group=g}:`, JSON logs a `span` object).
pub async fn run(cfg: Config, guardian_exe: PathBuf) -> Result<i32, AgentError> {
    let span = tracing::info_span!("node", node = %cfg.node.name, group = %cfg.node.group);
    run_node(cfg, guardian_exe).instrument(span).await
}

/// How long a start waits for the admin address to be free. A supervisor that restarts a killed
/// agent at once can be quicker than the kernel: a multi-threaded process killed by SIGKILL keeps
/// its sockets until its last thread has gone, which under load takes milliseconds after its
/// main thread is reported dead.
const ADMIN_BIND_WAIT: Duration = Duration::from_secs(1);

async fn bind_admin(cfg: &Config) -> Result<tokio::net::TcpListener, AgentError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match tokio::net::TcpListener::bind(cfg.node.admin).await {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < ADMIN_BIND_WAIT =>
            {
                if !said {
                    said = true;
                    warn!(
                        addr = %cfg.node.admin,
                        "node.admin is in use; waiting up to {ADMIN_BIND_WAIT:?} for it to be free (a previous instance ending)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => {
                return Err(AgentError::AdminBind {
                    file: cfg.file.clone(),
                    addr: cfg.node.admin,
                    source,
                })
            }
        }
    }
}

async fn run_node(cfg: Config, guardian_exe: PathBuf) -> Result<i32, AgentError> {
    let listener = bind_admin(&cfg).await?;
    let (svc_tx, svc_rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(svc_tx);
    // The coordinator (lock file or etcd); with etcd it arms the service's guardian itself.
    let (coord_tx, coord_rx) = mpsc::unbounded_channel();
    let (coord, members) = crate::coordination::connect(&cfg, coord_tx, supervisor.fence())?;
    // Before anything of this node is written (journal, record) or locked.
    crate::coordination::check_identity(&cfg, &members).await?;
    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let (api_tx, api_rx) = mpsc::channel(64);
    let (proc_tx, proc_rx) = mpsc::unbounded_channel();

    let engine = Engine::new(EngineConfig {
        mode: cfg.activation.mode,
        standby: cfg.service.standby,
        heartbeat_delay: cfg.activation.heartbeat_delay,
        backoff_min: cfg.service.restart_backoff,
        backoff_max: cfg.service.restart_backoff_max,
        stable_after: Duration::from_secs(60),
        yield_timeout: cfg.activation.yield_timeout,
        health_check: cfg.health.is_some(),
        signal_wait: SIGNAL_HANDLER_WAIT,
        rules: Rules {
            // A re-created lock file is a lock-file hazard. An etcd grant comes only after the
            // holder's lease ran out unrenewed, and by then its guardian has killed its service
            // (the timing argument in ARCHITECTURE.md): a frozen holder's record, still fresh
            // for a moment, must not hold the takeover back.
            defer_recreated_lock: cfg.etcd.is_none(),
            ..Rules::default()
        },
    })
    .with_preference(Preference {
        priority: cfg.node.priority,
        failback: cfg.activation.failback,
    });
    // The timeline an earlier run of this agent left: `understudy events` after a restart still
    // shows the earlier takeovers. A journal that cannot be opened costs history, not the node.
    let timeline = match crate::events::Journal::open(&cfg.node.journal_file) {
        Ok((journal, events, takeovers, bad)) => {
            if bad > 0 {
                warn!(journal = %cfg.node.journal_file.display(), bad, "skipped unreadable journal lines");
            }
            Timeline::with_journal(journal, events, takeovers)
        }
        Err(e) => {
            warn!(
                "cannot open the event journal {}: {e}; events are kept in memory only",
                cfg.node.journal_file.display()
            );
            Timeline::default()
        }
    };
    let shared = Arc::new(Shared {
        status: RwLock::new(status_of(&cfg, &engine.snapshot(), None, None)),
        cfg: cfg.clone(),
        timeline: Mutex::new(timeline),
        metrics: Metrics::new(),
        members,
        last_tick_ms: std::sync::atomic::AtomicU64::new(unix_ms()),
        fence: supervisor.fence(),
    });

    let admin = crate::api::serve(listener, shared.clone(), api_tx);
    tokio::spawn(
        async move {
            if let Err(e) = admin.await {
                error!("admin API stopped: {e}");
            }
        }
        .in_current_span(),
    );

    let mut rt = Runtime {
        shared,
        engine,
        coord,
        supervisor,
        health_tx,
        health: None,
        guardian_exe,
        origin: Instant::now(),
        pending_activate: VecDeque::new(),
        pending_switchover: VecDeque::new(),
        pending_release: VecDeque::new(),
        released: false,
        exit_code: None,
        last_record: None,
        proc_tx,
        watches: Vec::new(),
        signal_watch: None,
        service_detail: None,
        service_not_ready: None,
        sd_status: String::new(),
        seen: Vec::new(),
        grant_created: false,
        asking: None,
        stepped_down: None,
        coord_unreachable: None,
        failover_stopped: None,
        config_outdated: false,
    };
    info!(
        node = %cfg.node.name, group = %cfg.node.group, admin = %cfg.node.admin,
        mode = %cfg.activation.mode, lock = %cfg.activation.lock_file.display(),
        "agent starting"
    );
    let known_epoch = rt.coord.current_epoch();
    // Judged in the start's own feed: the status published after it said a standby ready
    // before its first tick told the engine that its coordinator was not reached yet (or
    // failover stopped), and a test (or an operator's script) that acted on it stopped a
    // standby the active could not count.
    let judged: Vec<Input> = rt
        .reach_change()
        .into_iter()
        .chain(rt.stop_change())
        .collect();
    rt.feed_all(std::iter::once(Input::Start { known_epoch }).chain(judged));
    // The admin listener is bound (connections queue until the server task accepts them) and the
    // node has joined: its record is written and it waits for the lock or was refused it.
    crate::sdnotify::send("READY=1");
    rt.run_loop(coord_rx, svc_rx, health_rx, api_rx, proc_rx)
        .await;
    Ok(rt.exit_code.unwrap_or(0))
}

/// `GET /status` of the node `cfg` describes, in the engine's state `snap`, with its service's
/// pid and last self-report.
fn status_of(
    cfg: &Config,
    snap: &understudy_engine::Snapshot,
    pid: Option<u32>,
    detail: Option<serde_json::Value>,
) -> Status {
    let role = match snap.service {
        understudy_engine::SvcState::Running { role, .. } => Some(role),
        understudy_engine::SvcState::Starting(role) => Some(role),
        _ => None,
    };
    Status {
        node: Node {
            name: cfg.node.name.clone(),
            group: cfg.node.group.clone(),
            state: snap.state,
            activation: snap.mode,
            epoch: snap.epoch,
            since_unix_ms: snap.since_unix_ms,
            waiting: snap.waiting.clone(),
            holds_lock: snap.holds_lock,
            ready: snap.ready,
            admin: cfg.node.admin.to_string(),
            agent_pid: std::process::id(),
        },
        since: rfc3339(snap.since_unix_ms),
        lock_file: cfg.activation.lock_file.display().to_string(),
        service: Service {
            state: snap.service.status(),
            pid,
            role,
            standby: cfg.service.standby,
            command: cfg.service.command.clone(),
            healthy: snap.healthy,
            detail,
        },
        renewal_age_ms: None,
    }
}

struct Runtime {
    shared: Arc<Shared>,
    engine: Engine,
    coord: Box<dyn Coordinator>,
    supervisor: Supervisor,
    health_tx: mpsc::UnboundedSender<HealthEvent>,
    health: Option<tokio::task::JoinHandle<()>>,
    guardian_exe: PathBuf,
    origin: Instant,
    pending_activate: VecDeque<oneshot::Sender<Answer>>,
    pending_switchover: VecDeque<oneshot::Sender<Answer>>,
    pending_release: VecDeque<oneshot::Sender<Answer>>,
    /// The service was handed over (`POST /service/release`): at exit, linger a moment so the
    /// answer, which carries its pid, reaches the caller.
    released: bool,
    exit_code: Option<i32>,
    last_record: Option<MemberRecord>,
    proc_tx: mpsc::UnboundedSender<ProcEvent>,
    /// Tasks waiting on the previous holders' services, at most one per member record; replaced
    /// by the next [`Command::WatchProcesses`].
    watches: Vec<tokio::task::JoinHandle<()>>,
    /// The task watching the standby service's signal disposition.
    signal_watch: Option<tokio::task::JoinHandle<()>>,
    /// The running service's last self-report (see [`Service::detail`]).
    service_detail: Option<serde_json::Value>,
    /// What the service's health answer last said about its readiness (see
    /// [`service_not_ready`]).
    service_not_ready: Option<String>,
    /// The last `STATUS=` line sent to systemd.
    sd_status: String,
    /// The group's records as last read for the engine, with what /proc says of their agents:
    /// the source of a takeover's cause.
    seen: Vec<Seen>,
    /// The grant being judged came with a lock file this node created (it was deleted or
    /// replaced under the previous holder).
    grant_created: bool,
    /// Who asked for the input being fed (an operator's request, a signal).
    asking: Option<Asker>,
    /// This node's last step down from Hot, advertised in its record.
    stepped_down: Option<StepDown>,
    /// What the engine was last told of the coordinator's reach.
    coord_unreachable: Option<String>,
    /// What the engine was last told of the group's stop of failover.
    failover_stopped: Option<String>,
    /// What the engine was last told of the running configuration.
    config_outdated: bool,
}

/// How long a released agent stays up after answering, so the answer is written out.
const RELEASE_LINGER: Duration = Duration::from_millis(300);
/// A member record as the engine was last shown it.
#[derive(Debug, Clone)]
struct Seen {
    rec: MemberRecord,
    fresh: bool,
    agent_gone: bool,
    /// Written on this machine and in this pid namespace ([`understudy_coordinator::same_host`]).
    local: bool,
}

/// Who asked for what the engine is handling now.
#[derive(Debug, Clone)]
enum Asker {
    Activate(Option<std::net::SocketAddr>),
    Switchover(Option<std::net::SocketAddr>),
    Signal(&'static str),
}

/// A step-down reason in a record stays short: records are rewritten every heartbeat interval.
const MAX_REASON_CHARS: usize = 300;

/// Longest wait for a standby service to install its activate-signal handler; after it the service
/// counts as started anyway (a service that never handles the signal is misconfigured).
const SIGNAL_HANDLER_WAIT: Duration = Duration::from_secs(5);

impl Runtime {
    fn now(&self) -> Now {
        Now {
            mono: self.origin.elapsed(),
            wall_ms: unix_ms(),
        }
    }

    async fn run_loop(
        &mut self,
        mut coord_rx: mpsc::UnboundedReceiver<CoordEvent>,
        mut svc_rx: mpsc::UnboundedReceiver<ServiceEvent>,
        mut health_rx: mpsc::UnboundedReceiver<HealthEvent>,
        mut api_rx: mpsc::Receiver<ApiRequest>,
        mut proc_rx: mpsc::UnboundedReceiver<ProcEvent>,
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut tick = tokio::time::interval(self.shared.cfg.activation.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pinged from this loop, between inputs, so that a loop stuck in one of them stops the
        // pings and systemd restarts the agent (its guardian then kills the service).
        let mut watchdog = crate::sdnotify::watchdog_interval().map(|every| {
            let mut i = tokio::time::interval(every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        while self.exit_code.is_none() {
            tokio::select! {
                // Lock events first: a takeover must not queue behind anything else.
                biased;
                Some(ev) = coord_rx.recv() => self.on_coord(ev),
                // Then the end of a previous active's service: the rest of a takeover.
                Some(ev) = proc_rx.recv() => self.on_proc(ev),
                Some(ev) = svc_rx.recv() => self.on_service(ev),
                Some(ev) = health_rx.recv() => self.on_health(ev),
                Some(req) = api_rx.recv() => self.on_api(req),
                _ = recv_signal(&mut sigterm) => {
                    info!("SIGTERM: stopping gracefully");
                    crate::sdnotify::send("STOPPING=1");
                    self.feed_asked(Asker::Signal("SIGTERM"), Input::Shutdown);
                }
                _ = recv_signal(&mut sigint) => {
                    info!("SIGINT: stopping gracefully");
                    crate::sdnotify::send("STOPPING=1");
                    self.feed_asked(Asker::Signal("SIGINT"), Input::Shutdown);
                }
                _ = tick.tick() => self.on_tick(),
                _ = next_tick(&mut watchdog) => crate::sdnotify::send("WATCHDOG=1"),
            }
        }
        // The supervisor's drop kills whatever is left of the service's process group.
        self.supervisor.kill_now();
        let _ = self.coord.release();
        self.advertise(true);
        if self.released {
            tokio::time::sleep(RELEASE_LINGER).await;
        }
        info!(code = self.exit_code.unwrap_or(0), "agent stopped");
    }

    fn on_coord(&mut self, ev: CoordEvent) {
        match ev {
            CoordEvent::Acquired {
                previous, created, ..
            } => {
                // A grant queued before a release is stale: only a lock we hold counts.
                if !self.coord.holds() {
                    return;
                }
                self.detected();
                self.grant_created = created;
                // A newer active may have come and gone since the last health answer: a
                // standby in sync with an older one must not take this grant.
                self.rejudge_readiness();
                // The engine judges the grant by the group as it is now (who still acts, whose
                // service still runs), so it gets a fresh view first.
                let peers = self.peer_views();
                self.feed_all([
                    Input::Peers(peers),
                    Input::Ranks(self.ranks()),
                    Input::LockAcquired {
                        previous: view(previous),
                        created,
                    },
                ]);
            }
            CoordEvent::Lost { reason } => {
                warn!("lost the group lock: {reason}");
                // A grant lost for want of etcd's answers leaves a standby that cannot count
                // as ready until etcd answers again: said before the engine rejoins the group,
                // not at the next tick.
                let reach = self.reach_change();
                self.feed_all(reach.into_iter().chain([Input::LockLost { reason }]))
            }
        }
    }

    /// The moment the previous active was found lost: the timeline counts the takeover from it.
    fn detected(&self) {
        let mono = self.origin.elapsed();
        self.with_timeline(|t| t.detected(mono, unix_ms()));
    }

    fn with_timeline<R>(&self, f: impl FnOnce(&mut Timeline) -> R) -> R {
        match self.shared.timeline.lock() {
            Ok(mut t) => f(&mut t),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn on_service(&mut self, ev: ServiceEvent) {
        match ev {
            ServiceEvent::Started { generation, pid } => {
                if generation != self.supervisor.generation() {
                    return;
                }
                self.feed(Input::ServiceStarted { pid });
            }
            ServiceEvent::Exited {
                generation,
                pid,
                reason,
                stderr,
            } => {
                if generation != self.supervisor.generation() {
                    return;
                }
                self.service_detail = None;
                if let Some(h) = self.health.take() {
                    h.abort();
                }
                if let Some(w) = self.signal_watch.take() {
                    w.abort();
                }
                self.shared.metrics.service_exits.inc();
                if self.shared.fence.expired() {
                    // The guardian ended the service at the grant's deadline; the coordinator's
                    // report of the lost grant may still be on its way (the agent was frozen).
                    // The loss comes first: it is not a failure of the service.
                    self.feed(Input::LockLost {
                        reason: "the grant's deadline passed".to_string(),
                    });
                }
                let who = pid.map(|p| format!("pid {p} ")).unwrap_or_default();
                // What it said last tells why it failed (a bad configuration, a missing file),
                // shown in /status while the node is not ready.
                let said = match stderr.is_empty() {
                    true => String::new(),
                    false => format!("; its last stderr lines: {}", stderr.join(" | ")),
                };
                self.feed(Input::ServiceExited {
                    reason: format!("{who}{reason}{said}"),
                });
            }
        }
    }

    fn on_proc(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Gone(pid) => self.feed(Input::ProcessGone { pid }),
            ProcEvent::SignalReady(pid) => self.feed(Input::ServiceSignalReady { pid }),
        }
    }

    /// The other nodes as their membership records show them, with what /proc says about them.
    fn peer_views(&mut self) -> Vec<PeerView> {
        let cfg = &self.shared.cfg;
        let now = unix_ms();
        let fresh_ms = (cfg.activation.heartbeat_interval * FRESH_INTERVALS).as_millis() as u64;
        let mut seen = Vec::new();
        let views = self
            .shared
            .members
            .read_all()
            .into_iter()
            .filter(|m| m.node.name != cfg.node.name)
            .map(|m| {
                let rec = m.clone();
                let local = understudy_coordinator::same_host(&rec);
                let (agent_gone, live_service) =
                    peer_processes(&rec, local, procwatch::can_act, |pid| {
                        procwatch::is_service_of(pid, &rec.node.name, &cfg.node.group)
                    });
                let n = m.node;
                let hot = n.state == State::Hot;
                let fresh = now.saturating_sub(m.last_seen_unix_ms) <= fresh_ms;
                seen.push(Seen {
                    rec,
                    fresh,
                    agent_gone,
                    local,
                });
                PeerView {
                    // Only another node can be the chosen one from this node's point of view.
                    handover_to: m.handover_to.filter(|t| *t != cfg.node.name),
                    node: n.name,
                    hot,
                    epoch: n.epoch,
                    holds_lock: n.holds_lock,
                    fresh,
                    agent_gone,
                    live_service,
                }
            })
            .collect();
        self.seen = seen;
        views
    }

    /// Marks fresh, in `peers` (from [`Runtime::peer_views`]), every member whose agent is known
    /// alive (see [`judge_for_release`]), reading etcd's member keys now. Err (the release must
    /// be refused) when etcd cannot be read, or the grant was lost meanwhile.
    fn alive_for_release(
        &mut self,
        peers: &mut Vec<PeerView>,
    ) -> Result<Vec<(String, String)>, String> {
        let live = self.coord.live_members().map_err(|e| e.to_string());
        let now = Grant {
            holds: self.coord.holds(),
            expired: self.shared.fence.expired(),
        };
        let ns_here = understudy_coordinator::pid_ns().is_some();
        // Gone also when its pid now holds another process (review 35, L8): the key is a dead
        // agent's, alive only until its lease ends.
        let gone_here = |rec: &MemberRecord| {
            understudy_coordinator::same_host(rec)
                && (!procwatch::can_act(rec.node.agent_pid)
                    || !is_its_writer(rec, procwatch::start_ticks, procwatch::started_unix_ms))
        };
        judge_for_release(peers, &self.seen, live, now, ns_here, gone_here, |rec| {
            is_its_writer(rec, procwatch::start_ticks, procwatch::started_unix_ms)
        })
    }

    /// The other nodes' priorities from the records last read by [`Runtime::peer_views`]. Only a
    /// node that waits for the lock by itself can take it when this one gives it back.
    fn ranks(&self) -> Vec<Rank> {
        self.seen
            .iter()
            .map(|p| Rank {
                node: p.rec.node.name.clone(),
                priority: p.rec.priority,
                ready: p.rec.node.ready && p.rec.node.activation.campaigns(),
            })
            .collect()
    }

    fn on_health(&mut self, ev: HealthEvent) {
        let gen = self.supervisor.generation();
        match ev {
            HealthEvent::Healthy { generation } if generation == gen => self.feed(Input::HealthOk),
            HealthEvent::Failing {
                generation,
                consecutive,
                reason,
            } if generation == gen => {
                warn!("health check failing ({consecutive} in a row): {reason}");
            }
            HealthEvent::Failed { generation, reason } if generation == gen => {
                self.service_detail = None;
                self.feed(Input::HealthFailed { reason })
            }
            HealthEvent::Report { generation, body } if generation == gen => {
                let detail = serde_json::from_str(&body)
                    .unwrap_or(serde_json::Value::String(body.trim().to_string()));
                self.judge_readiness(&detail);
                if self.service_detail.as_ref() != Some(&detail) {
                    self.service_detail = Some(detail);
                    self.publish_status();
                    self.advertise(false);
                }
            }
            _ => {}
        }
    }

    /// Judges the standby service's readiness from its health answer `detail` and the group's
    /// newest epoch, and tells the engine when that changed.
    fn judge_readiness(&mut self, detail: &serde_json::Value) {
        if let Some(input) = self.readiness_change(detail) {
            self.feed(input);
        }
    }

    /// What [`Self::judge_readiness`] tells the engine, when anything.
    fn readiness_change(&mut self, detail: &serde_json::Value) -> Option<Input> {
        let used = self.coord.used_epochs();
        let not_ready = service_not_ready(detail, used.newest_by_another, used.last_by_this_node);
        (not_ready != self.service_not_ready).then(|| {
            self.service_not_ready = not_ready.clone();
            Input::ServiceReadiness { not_ready }
        })
    }

    /// [`Self::judge_readiness`] on the last health answer, for when the group's epoch may
    /// have moved since it came (a tick, a grant).
    fn rejudge_readiness(&mut self) {
        if let Some(input) = self.readiness_rejudged() {
            self.feed(input);
        }
    }

    /// What [`Self::rejudge_readiness`] tells the engine, when anything.
    fn readiness_rejudged(&mut self) -> Option<Input> {
        let detail = self.service_detail.take()?;
        let input = self.readiness_change(&detail);
        self.service_detail = Some(detail);
        input
    }

    fn on_api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::Activate(tx, from) => {
                self.pending_activate.push_back(tx);
                self.feed_asked(Asker::Activate(from), Input::Activate);
            }
            ApiRequest::Switchover(tx, to, from) => {
                self.pending_switchover.push_back(tx);
                let ready = self.ready_standbys();
                self.feed_asked(Asker::Switchover(from), Input::Switchover { ready, to });
            }
            ApiRequest::ServiceAck { pid, epoch } => self.feed(Input::ServiceAcked { pid, epoch }),
            ApiRequest::ConfigWanted { generation, done } => {
                let running = self.shared.cfg.generation;
                let outdated = (generation != running).then(|| {
                    format!(
                        "its configuration changed (generation {generation}; this agent runs {running}); it can take over only once started again with the new one"
                    )
                });
                if outdated.is_some() != self.config_outdated {
                    match &outdated {
                        Some(why) => warn!("not ready: {why}"),
                        None => info!("the configuration this agent runs is the wanted one again"),
                    }
                    self.config_outdated = outdated.is_some();
                    self.feed(Input::Configuration { outdated });
                }
                let _ = done.send(());
            }
            ApiRequest::StartFailover(tx) => {
                let _ = tx.send(self.start_failover());
            }
            ApiRequest::Release(tx) => {
                self.pending_release.push_back(tx);
                // The engine refuses while another member is alive: give it the group as it is
                // now, every member whose agent is known alive counted however old its record
                // (review 25, R25-2, and review 26, F3).
                // Refused, the engine records why in /events, as it does its own refusals.
                let mut peers = self.peer_views();
                let (unverified, because) = match self.engine.state() {
                    State::Hot => match self.alive_for_release(&mut peers) {
                        Ok(because) => (None, because),
                        Err(why) => (Some(why), Vec::new()),
                    },
                    _ => (None, Vec::new()),
                };
                if let Some(reason) = &unverified {
                    warn!("release refused: {reason}");
                }
                self.feed_all([
                    Input::Peers(peers),
                    Input::Release {
                        unverified,
                        because,
                    },
                ]);
            }
        }
    }

    /// Whether the coordinator can be reached, when that changed: told only on a change, and
    /// without the silence's running length, which changes on every tick.
    fn reach_change(&mut self) -> Option<Input> {
        let unreachable = self.coord.unreachable();
        // The whole reason, not only whether there is one: the status must name the cause that
        // holds now (etcd silent at first, then this node's key missing). Each is a fixed text.
        if unreachable == self.coord_unreachable {
            return None;
        }
        match &unreachable {
            Some(why) => warn!("not ready: {why}"),
            None => info!("the coordinator answers again"),
        }
        self.coord_unreachable = unreachable.clone();
        Some(Input::CoordinatorReach { unreachable })
    }

    /// The group's stop of failover, when it changed (see [`Runtime::reach_change`]).
    fn stop_change(&mut self) -> Option<Input> {
        let stopped = self.coord.failover_stopped().map(|m| m.describe());
        if stopped == self.failover_stopped {
            return None;
        }
        match &stopped {
            Some(why) => warn!("not ready: failover is stopped: {why}"),
            None => info!("failover runs for the group"),
        }
        self.failover_stopped = stopped.clone();
        Some(Input::FailoverStopped { stopped })
    }

    /// `POST /failover/start`: refused while the released service runs on this machine (it
    /// acts unfenced: a node taking the group now would make two actives); elsewhere, the
    /// operator (or the control plane, which stopped the server) answers for it.
    fn start_failover(&mut self) -> Result<Option<StopMark>, StartRefused> {
        // Judged on the stop the coordinator is about to clear, not on a cached copy (review
        // 30, M5).
        let allow: understudy_coordinator::Allow = Box::new(|mark: &StopMark| {
            // A released service that was killed but not yet reaped (a zombie, or SIGKILL
            // pending) never acts again: it does not count. One whose main thread alone ended
            // still does (review 33, L1).
            let live_ticks = |pid| procwatch::start_ticks(pid).filter(|_| procwatch::may_act(pid));
            if mark.runs_here(live_ticks) == Some(true) {
                return Err(format!(
                    "the released service, pid {}, still runs on this machine as a plain server ({}): stop it first, or a node taking the group would act next to it",
                    mark.pid,
                    mark.describe()
                ));
            }
            Ok(())
        });
        let cleared = self.coord.start_failover(allow).map_err(|e| match e {
            understudy_coordinator::CoordError::FailoverStopped(why) => {
                StartRefused::StillRuns(why)
            }
            e => StartRefused::Coordinator(e.to_string()),
        })?;
        let mut inputs = Vec::new();
        if let Some(mark) = &cleared {
            info!(
                "failover started again; cleared the stop: {}",
                mark.describe()
            );
            // Cleared before this agent's first tick looked: the engine hears of the stop and
            // its end all the same (a hot-mode node refused meanwhile tries again on it).
            if self.failover_stopped.is_none() {
                let stopped = Some(mark.describe());
                self.failover_stopped.clone_from(&stopped);
                inputs.push(Input::FailoverStopped { stopped });
            }
        }
        inputs.extend(self.stop_change());
        self.feed_all(inputs);
        Ok(cleared)
    }

    fn on_tick(&mut self) {
        self.shared
            .last_tick_ms
            .store(unix_ms(), std::sync::atomic::Ordering::Relaxed);
        // The engine derives from the group's view what it needs: a newer active elsewhere, a
        // peer that stepped down at last, the end of a yield.
        self.rejudge_readiness();
        let peers = self.peer_views();
        let mut inputs = vec![Input::Peers(peers), Input::Ranks(self.ranks())];
        inputs.extend(self.reach_change());
        inputs.extend(self.stop_change());
        inputs.push(Input::Tick);
        self.feed_all(inputs);
        self.advertise(true);
    }

    fn fresh_members(&self) -> Vec<MemberRecord> {
        let now = unix_ms();
        let fresh = self.shared.cfg.activation.heartbeat_interval * FRESH_INTERVALS;
        self.shared
            .members
            .read_all()
            .into_iter()
            .filter(|m| now.saturating_sub(m.last_seen_unix_ms) <= fresh.as_millis() as u64)
            .collect()
    }

    /// The standbys a switchover can hand activity to: fresh, ready, and waiting for the lock by
    /// themselves. A Warm- or Hot-mode standby never campaigns; handed a switchover, it left
    /// the group without an active until the old one's `yield_timeout` (review 25, R25-5).
    fn ready_standbys(&self) -> Vec<String> {
        let me = &self.shared.cfg.node.name;
        self.fresh_members()
            .into_iter()
            .filter(|m| &m.node.name != me && m.node.state == State::Warm && m.node.ready)
            .filter(|m| m.node.activation.campaigns())
            .map(|m| m.node.name)
            .collect()
    }

    /// Run one input through the engine and execute its commands; inputs that commands answer
    /// at once (try-lock, epoch) are fed back before anything else can happen.
    fn feed(&mut self, input: Input) {
        self.feed_all([input]);
    }

    /// [`Runtime::feed`] for an input someone asked for: what it records names them.
    fn feed_asked(&mut self, who: Asker, input: Input) {
        self.asking = Some(who);
        self.feed(input);
        self.asking = None;
    }

    /// [`Runtime::feed`] for inputs that belong together (a view of the group, then the grant
    /// judged by it).
    fn feed_all(&mut self, inputs: impl IntoIterator<Item = Input>) {
        let mut queue = VecDeque::from_iter(inputs);
        while let Some(input) = queue.pop_front() {
            debug!(?input, "engine input");
            let now = self.now();
            for cmd in self.engine.handle(now, input) {
                self.execute(cmd, &mut queue);
            }
        }
        // A detection not claimed by a takeover in this feed (a grant the engine did not want)
        // must not date a later one.
        self.with_timeline(|t| t.forget_detection());
        self.publish_status();
        self.advertise(false);
    }

    /// Execute one command; inputs that answer it at once go to the back of `answers`.
    fn execute(&mut self, cmd: Command, answers: &mut VecDeque<Input>) {
        debug!(?cmd, "engine command");
        if let Some(input) = self.execute_one(cmd, answers) {
            answers.push_back(input);
        }
    }

    fn execute_one(&mut self, cmd: Command, answers: &mut VecDeque<Input>) -> Option<Input> {
        match cmd {
            Command::Campaign => {
                if let Err(e) = self.coord.campaign() {
                    error!("cannot wait for the group lock: {e}");
                }
                None
            }
            Command::TryLock => Some(match self.coord.try_acquire() {
                Ok(TryAcquire::Acquired { previous, created }) => {
                    self.detected();
                    self.grant_created = created;
                    // As for a waited-for grant (`on_coord`): judged by the group as the
                    // claim read it (review 14, U3).
                    answers.extend(self.readiness_rejudged());
                    let peers = self.peer_views();
                    answers.push_back(Input::Peers(peers));
                    answers.push_back(Input::Ranks(self.ranks()));
                    Input::LockAcquired {
                        previous: view(previous),
                        created,
                    }
                }
                Ok(TryAcquire::HeldByOther) => Input::LockBusy {
                    holder: self.holder_hint(),
                },
                Err(understudy_coordinator::CoordError::FailoverStopped(why)) => {
                    warn!("not taking the group: failover is stopped: {why}");
                    Input::LockBusy { holder: None }
                }
                Err(e) => {
                    error!("cannot try the group lock: {e}");
                    Input::LockBusy { holder: None }
                }
            }),
            Command::Release => {
                // Say so before letting go: the next holder reads our record the instant the
                // kernel hands the lock over, and would otherwise wait for a node that stepped down.
                self.publish_status();
                self.advertise(false);
                if let Err(e) = self.coord.release() {
                    error!("releasing the group lock: {e}");
                }
                None
            }
            Command::PersistNextEpoch { floor } => Some(match self.coord.next_epoch(floor) {
                Ok(epoch) => Input::EpochDurable { epoch },
                Err(e) => Input::EpochFailed {
                    reason: e.to_string(),
                },
            }),
            Command::StartService { role, epoch } => self.start_service(role, epoch),
            Command::NotifyActive { epoch } => {
                // The engine is already Hot with the new epoch: publish it before the signal, for
                // the service reads its new epoch from /status as soon as it is told (it read the
                // old one when it won the race against the publish at the end of `feed`).
                self.publish_status();
                let sig = self.shared.cfg.service.activate_signal;
                if let Err(e) = self.supervisor.signal(sig) {
                    error!("cannot tell the service it is active: {e}");
                }
                self.run_hook(epoch);
                None
            }
            Command::StopService { graceful } => {
                if let Some(h) = self.health.take() {
                    h.abort();
                }
                if graceful {
                    self.supervisor
                        .begin_stop(self.shared.cfg.service.stop_timeout);
                } else {
                    self.supervisor.kill_now();
                }
                None
            }
            Command::WriteHeartbeat { epoch } => {
                let hb = Heartbeat {
                    node: self.shared.cfg.node.name.clone(),
                    epoch,
                    unix_ms: unix_ms(),
                };
                if let Err(e) = self.coord.heartbeat(&hb) {
                    warn!("cannot write the heartbeat: {e}");
                }
                None
            }
            // A failed check is answered at once, before any answer already queued (an epoch
            // that would make the node Hot); the coordinator also reports it on its channel,
            // which the engine ignores once it knows.
            Command::VerifyLock => (!self.coord.verify()).then(lock_replaced),
            Command::ConfirmLock => Some(if self.coord.verify() {
                Input::LockConfirmed
            } else {
                lock_replaced()
            }),
            Command::WatchProcesses { pids } => {
                self.watch_processes(pids);
                None
            }
            Command::WatchSignalReady { pid } => {
                self.watch_signal(pid);
                None
            }
            Command::Record(ev) => {
                self.record(ev);
                None
            }
            Command::Answer(a) => {
                self.answer(a);
                None
            }
            Command::StopFailover { pid, epoch } => {
                let mark = StopMark {
                    node: self.shared.cfg.node.name.clone(),
                    epoch,
                    pid,
                    unix_ms: unix_ms(),
                    boot_id: understudy_coordinator::boot_id(),
                    pid_ns: understudy_coordinator::pid_ns(),
                    start_ticks: procwatch::start_ticks(pid),
                    unreadable: None,
                };
                let error = self.coord.stop_failover(&mark).err().map(|e| e.to_string());
                match &error {
                    None => info!("failover stopped for the group: {}", mark.describe()),
                    Some(e) => warn!("cannot record the stop of failover: {e}"),
                }
                Some(Input::StopRecorded { error })
            }
            Command::DetachService => {
                if let Some(h) = self.health.take() {
                    h.abort();
                }
                self.supervisor.release();
                self.released = true;
                None
            }
            Command::Exit { code } => {
                self.exit_code = Some(code);
                None
            }
        }
    }

    /// Wait on each process with a pidfd, in tasks, and report each end as [`ProcEvent::Gone`].
    fn watch_processes(&mut self, pids: Vec<u32>) {
        for w in self.watches.drain(..) {
            w.abort();
        }
        for pid in pids {
            let tx = self.proc_tx.clone();
            self.watches.push(tokio::spawn(
                async move {
                    // A process with SIGKILL pending never acts again: counted as gone.
                    if let Some(e) = procwatch::gone(pid, procwatch::can_act).await {
                        warn!("no pidfd for process {pid} ({e}); watched it through /proc instead");
                    }
                    let _ = tx.send(ProcEvent::Gone(pid));
                }
                .in_current_span(),
            ));
        }
        info!(
            count = self.watches.len(),
            "waiting for the previous active's service to end"
        );
    }

    /// Find out, in a task, when the standby service handles the activate signal.
    fn watch_signal(&mut self, pid: u32) {
        if let Some(w) = self.signal_watch.take() {
            w.abort();
        }
        let sig = self.shared.cfg.service.activate_signal;
        let tx = self.proc_tx.clone();
        self.signal_watch = Some(tokio::spawn(async move {
            if procwatch::signal_handled(pid, sig).await {
                let _ = tx.send(ProcEvent::SignalReady(pid));
            }
        }));
    }

    fn holder_hint(&self) -> Option<String> {
        let me = &self.shared.cfg.node.name;
        self.fresh_members()
            .into_iter()
            .filter(|m| &m.node.name != me && m.node.holds_lock)
            .max_by_key(|m| m.last_seen_unix_ms)
            .map(|m| m.node.name)
            .or_else(|| {
                match understudy_coordinator::lockfile::read_heartbeat(
                    &self.shared.cfg.activation.lock_file,
                ) {
                    HeartbeatReading::At(hb) if &hb.node != me => Some(hb.node),
                    _ => None,
                }
            })
    }

    fn service_env(&self, role: Role, epoch: u64) -> Vec<(String, String)> {
        let cfg = &self.shared.cfg;
        let mut env: Vec<(String, String)> = cfg
            .service
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend([
            ("UNDERSTUDY_ROLE".to_string(), role.as_env().to_string()),
            ("UNDERSTUDY_EPOCH".to_string(), epoch.to_string()),
            ("UNDERSTUDY_GROUP".to_string(), cfg.node.group.clone()),
            ("UNDERSTUDY_NODE".to_string(), cfg.node.name.clone()),
            ("UNDERSTUDY_ADMIN".to_string(), cfg.node.admin.to_string()),
        ]);
        env
    }

    fn start_service(&mut self, role: Role, epoch: u64) -> Option<Input> {
        let env = self.service_env(role, epoch);
        let spec = ServiceSpec {
            command: self.shared.cfg.service.command.clone(),
            env: env.clone(),
            guardian_exe: self.guardian_exe.clone(),
            guardian_args: vec!["__guard".to_string()],
            standby: role == Role::Standby,
        };
        match self.supervisor.start(&spec) {
            Ok(generation) => {
                if let Some(h) = &self.shared.cfg.health {
                    let hc = understudy_service::HealthConfig {
                        check: h.check.clone(),
                        interval: h.interval,
                        timeout: h.timeout,
                        failures: h.failures,
                        start_period: h.start_period,
                    };
                    if let Some(old) = self.health.take() {
                        old.abort();
                    }
                    self.health = Some(understudy_service::health::spawn_health(
                        hc,
                        generation,
                        env,
                        self.health_tx.clone(),
                    ));
                }
                None
            }
            Err(e) => {
                error!("{e}");
                Some(Input::ServiceExited {
                    reason: format!("could not start: {e}"),
                })
            }
        }
    }

    fn run_hook(&self, epoch: u64) {
        let Some(hook) = self.shared.cfg.service.activate_hook.clone() else {
            return;
        };
        // Under a guardian, like the service: the hook's whole process group dies with this
        // agent, however the agent dies.
        let spec = ServiceSpec {
            command: hook,
            env: self.service_env(Role::Active, epoch),
            guardian_exe: self.guardian_exe.clone(),
            guardian_args: vec!["__guard".to_string()],
            standby: false,
        };
        tokio::spawn(
            async move {
                let name = spec.command.first().map(String::as_str).unwrap_or_default();
                match understudy_service::run_guarded(&spec).await {
                    Ok(understudy_service::ExitReason::Code(0)) => {
                        info!("activate hook {name:?} done")
                    }
                    Ok(reason) => warn!("activate hook {name:?} {reason}"),
                    Err(e) => warn!("activate hook {name:?} could not run: {e}"),
                }
            }
            .in_current_span(),
        );
    }

    fn record(&mut self, mut ev: understudy_engine::Event) {
        // The agent's own clock, read as it executes the record: the engine's `now` is one
        // instant per input, shared by everything decided on it (epoch durable, service told and
        // ready came out the same figure), while the commands before this one took real time.
        ev.mono = self.origin.elapsed();
        ev.at_unix_ms = unix_ms();
        self.explain(&mut ev);
        info!(kind = ?ev.kind, epoch = ev.epoch, "{}", ev.detail);
        let m = &self.shared.metrics;
        match ev.kind {
            EventKind::EpochDurable => {
                m.activations.inc();
            }
            EventKind::Demoted => {
                m.demotions.inc();
            }
            EventKind::Refused => {
                m.refused.inc();
            }
            _ => {}
        }
        let kind = ev.kind;
        let took = self.with_timeline(|t| t.push(ev));
        if let Some(d) = took {
            m.takeover_seconds.observe(d.as_secs_f64());
            info!(
                "takeover: service told it is active {:.3} ms after the previous active was found lost",
                d.as_secs_f64() * 1e3
            );
        }
        if matches!(kind, EventKind::Ready | EventKind::ServiceAcked) {
            if let Some(t) = self.with_timeline(|t| t.current()) {
                log_takeover(&t, kind);
            }
        }
    }

    /// Complete an event's words with what only the agent knows (who asked, what the group's
    /// records say), and keep this node's step-down reason for its record.
    fn explain(&mut self, ev: &mut understudy_engine::Event) {
        match ev.kind {
            EventKind::LockObtained => ev.detail = self.takeover_cause(&ev.detail),
            EventKind::Switchover => {
                if let Some(Asker::Switchover(Some(from))) = &self.asking {
                    ev.detail = ev
                        .detail
                        .replacen("requested", &format!("requested by {from}"), 1);
                }
            }
            EventKind::EpochDurable => self.stepped_down = None,
            _ => {}
        }
        let reason = match ev.kind {
            EventKind::Demoted | EventKind::Switchover => Some(ev.detail.clone()),
            // The status published before this input: whether the node was active when told.
            EventKind::Shutdown if self.shared.status().node.state == State::Hot => {
                Some(match &self.asking {
                    Some(Asker::Signal(sig)) => format!("the agent was stopped ({sig})"),
                    _ => "the agent was stopped".to_string(),
                })
            }
            _ => None,
        };
        if let Some(reason) = reason {
            self.stepped_down = Some(StepDown {
                epoch: ev.epoch,
                at_unix_ms: ev.at_unix_ms,
                reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            });
        }
    }

    /// Why this node takes over, in words: who asked (a manual activation), the previous active
    /// and what happened to it as far as its record and /proc tell, then what the lock file held
    /// (the engine's words).
    fn takeover_cause(&self, engine_words: &str) -> String {
        let lock = engine_words.strip_prefix("group lock obtained; ");
        let mut parts = Vec::new();
        if let Some(Asker::Activate(from)) = &self.asking {
            parts.push(match from {
                Some(a) => format!("manual activate (PUT /service/activationmode/hot from {a})"),
                None => "manual activate (PUT /service/activationmode/hot)".to_string(),
            });
        }
        parts.push(self.previous_active());
        match lock {
            Some(l) => parts.push(l.to_string()),
            // The engine's own words for an operator override say less than the above.
            None if parts.len() > 1 => {}
            None => parts.push(engine_words.to_string()),
        }
        parts.join("; ")
    }

    /// The previous active and what became of it, from the records last read for the engine.
    fn previous_active(&self) -> String {
        let acting = self
            .seen
            .iter()
            .filter(|p| p.rec.node.state == State::Hot || p.rec.node.holds_lock)
            .max_by_key(|p| p.rec.node.epoch);
        let stepped = self
            .seen
            .iter()
            .filter_map(|p| Some((p, p.rec.stepped_down.as_ref()?)))
            .max_by_key(|(_, s)| (s.epoch, s.at_unix_ms));
        // A step down at a later epoch than any record that still claims to act is the news.
        let acting = acting.filter(|p| stepped.is_none_or(|(_, s)| p.rec.node.epoch >= s.epoch));
        match (acting, stepped) {
            (Some(p), _) => {
                let r = &p.rec.node;
                let who = format!("previous active {} (epoch {})", r.name, r.epoch);
                if p.agent_gone {
                    format!(
                        "{who}: its agent is gone (pid {} no longer runs)",
                        r.agent_pid
                    )
                } else if !p.fresh {
                    format!(
                        "{who} went silent: its record was last written {} ms ago",
                        unix_ms().saturating_sub(p.rec.last_seen_unix_ms)
                    )
                } else if self.grant_created {
                    format!("{who} still holds the old lock: the group lock file was deleted or replaced")
                } else {
                    format!("{who} let go of the group lock")
                }
            }
            (_, Some((p, s))) => format!(
                "previous active {} (epoch {}) stepped down: {}",
                p.rec.node.name, s.epoch, s.reason
            ),
            (None, None) => "no previous active in the group's records".to_string(),
        }
    }

    fn answer(&mut self, a: Answer) {
        // Publish first: a client that got "Hot" from PUT and then reads /status must not see
        // the state from before its request (it did: Warm, with the old epoch).
        self.publish_status();
        let q = match a {
            Answer::Activated { .. } | Answer::ActivateRefused { .. } => &mut self.pending_activate,
            Answer::SwitchoverStarted { .. } | Answer::SwitchoverRefused { .. } => {
                &mut self.pending_switchover
            }
            Answer::Released { .. } | Answer::ReleaseRefused { .. } => &mut self.pending_release,
        };
        if let Some(tx) = q.pop_front() {
            // The HTTP client may have gone away; the node's state is what matters.
            let _ = tx.send(a);
        }
    }

    fn publish_status(&mut self) {
        let snap = self.engine.snapshot();
        let m = &self.shared.metrics;
        m.hot.set(i64::from(snap.state == State::Hot));
        m.epoch.set(snap.epoch as i64);
        m.lock_held.set(i64::from(snap.holds_lock));
        let view = status_of(
            &self.shared.cfg,
            &snap,
            self.supervisor.pid(),
            self.service_detail.clone(),
        );
        if crate::sdnotify::enabled() {
            self.notify_status(&view);
        }
        match self.shared.status.write() {
            Ok(mut s) => *s = view,
            Err(p) => *p.into_inner() = view,
        }
    }

    /// `STATUS=` for `systemctl status`, when the state, epoch or reason changed.
    fn notify_status(&mut self, view: &Status) {
        let mut line = format!("{} epoch {}", view.node.state, view.node.epoch);
        match &view.node.waiting {
            Some(w) => line.push_str(&format!(": {w}")),
            None => line.push_str(&format!(", service {}", view.service.state.as_str())),
        }
        // STATUS is one line of the notification; a reason never spans lines, but be sure.
        let line = line.replace('\n', " ");
        if line != self.sd_status {
            crate::sdnotify::send(&format!("STATUS={line}"));
            self.sd_status = line;
        }
    }

    /// Rewrite this node's membership record: always when `force` (every tick, for last_seen),
    /// otherwise only when something a peer cares about changed.
    fn advertise(&mut self, force: bool) {
        let s = self.shared.status();
        let rec = MemberRecord {
            last_seen_unix_ms: unix_ms(),
            service: s.service.state,
            pid: s.service.pid,
            detail: s.service.detail.as_ref().map(one_line),
            handover_to: self.engine.snapshot().handover_to,
            stepped_down: self.stepped_down.clone(),
            priority: self.shared.cfg.node.priority,
            node: s.node,
            boot_id: understudy_coordinator::boot_id(),
            pid_ns: understudy_coordinator::pid_ns(),
            agent_start: procwatch::own_start_ticks(),
            connections_refused: self.shared.metrics.admin_connections_refused.get(),
        };
        let changed = match &self.last_record {
            Some(last) => {
                let mut l = last.clone();
                l.last_seen_unix_ms = rec.last_seen_unix_ms;
                l != rec
            }
            None => true,
        };
        if !force && !changed {
            return;
        }
        if let Err(e) = self.shared.members.write(&rec) {
            warn!("cannot write the membership record: {e}");
        }
        self.last_record = Some(rec);
    }
}

/// One log line with a takeover's figures, the same as `GET /events` `takeovers[]` (milliseconds
/// from detection; a phase that has not happened is null in JSON logs, NaN in text).
fn log_takeover(t: &understudy_status::Takeover, at: EventKind) {
    let f = |v: Option<f64>| v.unwrap_or(f64::NAN);
    info!(
        epoch = t.epoch,
        cause = %t.cause,
        lock_obtained_ms = f(t.lock_obtained_ms),
        previous_service_gone_ms = f(t.previous_service_gone_ms),
        epoch_durable_ms = f(t.epoch_durable_ms),
        service_notified_ms = f(t.service_notified_ms),
        service_acked_ms = f(t.service_acked_ms),
        ready_ms = f(t.ready_ms),
        "takeover: {}",
        if at == EventKind::Ready { "active service ready" } else { "service acknowledged the epoch" }
    );
}

async fn next_tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// A service's self-report on one line for the membership record: the scalar fields of a JSON
/// object as `key=value`, or the text itself, cut to 200 characters.
fn one_line(v: &serde_json::Value) -> String {
    let text = match v {
        serde_json::Value::Object(o) => o
            .get("replication")
            .map(replication_line)
            .into_iter()
            .chain(o.get("store_sync").and_then(stall_line))
            .chain(o.iter().filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some(format!("{k}={s}")),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                    Some(format!("{k}={v}"))
                }
                _ => None,
            }))
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::String(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    };
    text.chars().take(200).collect()
}

/// A replicated service's `replication` object, first on the line so `understudy status`
/// shows each standby's lag: `replication=sync in-sync lag=0rec/0ms`, or for the active
/// `replication=sync standbys-in-sync=1/1` (then ` DEGRADED held=1500ms
/// standby-silent=3500ms(frozen=2000ms)`, ` frozen=2990ms` when so).
fn replication_line(r: &serde_json::Value) -> String {
    let mode = r.get("mode").and_then(|v| v.as_str()).unwrap_or("?");
    let peers = r.get("peers").and_then(|v| v.as_array());
    if let Some(peers) = peers.filter(|p| !p.is_empty()) {
        let in_sync = peers
            .iter()
            .filter(|p| p.get("in_sync").and_then(|v| v.as_bool()) == Some(true))
            .count();
        let degraded = r.get("degraded").and_then(|v| v.as_bool()) == Some(true);
        // Time the gateway did not run stretches every sync hold: shown once there was some,
        // so a late fall-back to async has its reason on the same line.
        let frozen = match r.get("frozen_ms").and_then(|v| v.as_u64()) {
            Some(ms) if ms > 0 => format!(" frozen={ms}ms"),
            _ => String::new(),
        };
        // This fall-back's own wait, and how much of it the gateway did not run: the
        // cumulative figure cannot single out one hold.
        let last = r.get("last_degraded");
        let field = |k: &str| last.and_then(|l| l.get(k)).and_then(|v| v.as_u64());
        let degraded = match (
            degraded,
            field("held_ms"),
            field("silent_ms"),
            field("frozen_ms"),
        ) {
            (false, ..) => String::new(),
            (true, Some(h), Some(s), Some(f)) => {
                format!(" DEGRADED held={h}ms standby-silent={s}ms(frozen={f}ms)")
            }
            (true, ..) => " DEGRADED".to_string(),
        };
        return format!(
            "replication={mode} standbys-in-sync={in_sync}/{}{degraded}{frozen}",
            peers.len(),
        );
    }
    let ready = r.get("ready").and_then(|v| v.as_bool()) == Some(true);
    let lag = match (
        r.get("lag_records").and_then(|v| v.as_u64()),
        r.get("lag_ms").and_then(|v| v.as_u64()),
    ) {
        (Some(n), Some(ms)) => format!("lag={n}rec/{ms}ms"),
        _ => "lag=unknown".to_owned(),
    };
    let state = if ready { "in-sync" } else { "NOT-in-sync" };
    format!("replication={mode} {state} {lag}")
}

/// A gateway's `store_sync` object, once its disk (or a sync standby) held messages longer
/// than the gateway counts as slow: `sync-stalls=3 slowest=412ms`, so `understudy status`
/// shows why a counterparty waited. Nothing while none was slow.
fn stall_line(s: &serde_json::Value) -> Option<String> {
    let slow = s
        .get("slow_passes")
        .and_then(|v| v.as_u64())
        .filter(|n| *n > 0)?;
    let slowest_ms = s
        .get("slowest_pass_us")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
        / 1000;
    Some(format!("sync-stalls={slow} slowest={slowest_ms}ms"))
}

/// What this host can tell of a peer's processes: whether its agent is gone, and its service's
/// pid while that still runs here as the node's service. `local`: the record was written on this
/// machine and in this pid namespace ([`understudy_coordinator::same_host`]). A killed agent's
/// record stays recent for a while and still says Hot: here its process tells at once. A record
/// from elsewhere (etcd or a shared filesystem across machines, another container) names an
/// agent pid that means nothing here, so only its freshness speaks for it: read from `/proc`,
/// every remote peer counted as gone, and a Hot node let go of the group "alone" while standbys
/// on other machines were alive (review 25, R25-1: two actives).
fn peer_processes(
    rec: &MemberRecord,
    local: bool,
    can_act: impl Fn(u32) -> bool,
    is_service: impl Fn(u32) -> bool,
) -> (bool, Option<u32>) {
    let n = &rec.node;
    let agent_gone = local && !can_act(n.agent_pid);
    // Only a node that acts or holds the lock can have a service that acts, and its
    // environment names it: a reused pid, or one from another host, never counts, wherever the
    // record came from (waiting for a process that is not that service cannot happen; not
    // waiting for one that is makes two actives).
    let live_service = rec
        .pid
        .filter(|&pid| (n.state == State::Hot || n.holds_lock) && is_service(pid));
    (agent_gone, live_service)
}

/// The group grant as the agent found it once the members were read (the read may take a
/// while).
#[derive(Debug, Clone, Copy)]
struct Grant {
    /// The coordinator still reports the lock held.
    holds: bool,
    /// The grant's deadline passed: the guardian ends the service whether or not the loss was
    /// reported yet (review 27, N5), and the pid a release would name may be gone.
    expired: bool,
}

/// Who counts as alive for a release, on top of what the records say (`seen`, with `peers`
/// built from them one to one): a release while another member lives makes two actives, so
/// whatever speaks for a member counts, however old its record.
/// - On this host, its agent process still runs and already ran when the record was last
///   written (a stopped standby's record goes stale, and it takes the released group once
///   continued; a process that reused a gone agent's pid is not that agent).
/// - "Gone" judged by the boot alone (a record without `pid_ns`, from an agent of an earlier
///   version) does not count: in another container its pid is not visible here (review 27,
///   N1), fresh or stale (review 28, M1: its etcd key was ignored once its record was stale).
/// - On etcd (`live`: the member keys read from etcd now, each hanging on its agent's lease,
///   with the records they hold), a key counts unless the agent of the record it holds is
///   known gone here (`gone_here`, with its pid namespace said): judged on that record, not
///   on the cached one, which may be an earlier run of the same node, gone, while the key is
///   a restarted agent's (review 34, M1). A key without a record is added.
///
/// Err (refuse) when the members could not be read, or the grant was lost meanwhile.
fn judge_for_release(
    peers: &mut Vec<PeerView>,
    seen: &[Seen],
    live: Result<Option<Vec<LiveMember>>, String>,
    grant: Grant,
    ns_here: bool,
    gone_here: impl Fn(&MemberRecord) -> bool,
    writer_runs: impl Fn(&MemberRecord) -> bool,
) -> Result<Vec<(String, String)>, String> {
    // What speaks for each member, first found first: a refusal says it, so that an operator
    // who just stopped or killed that node learns what still counts it in (review 28, L4).
    let mut because: Vec<(String, String)> = Vec::new();
    let mut note = |node: &str, why: String| {
        if !because.iter().any(|(n, _)| n == node) {
            because.push((node.to_owned(), why));
        }
    };
    for (p, s) in peers.iter_mut().zip(seen) {
        if s.fresh && !s.agent_gone {
            note(&p.node, "its record is fresh".into());
        }
        if s.local && !s.agent_gone && writer_runs(&s.rec) {
            p.fresh = true;
            note(
                &p.node,
                format!(
                    "its agent, pid {}, still runs on this machine",
                    s.rec.node.agent_pid
                ),
            );
        } else if s.agent_gone && !(ns_here && s.rec.pid_ns.is_some()) {
            p.agent_gone = false;
            if s.fresh {
                note(
                    &p.node,
                    "its record is fresh, and its agent (of an earlier version, which does not say its pid namespace) may run in another container".into(),
                );
            }
        }
    }
    let live = live.map_err(|e| {
        format!("cannot read the group's members ({e}): a member this node cannot see could take over while the released service keeps acting")
    })?;
    for m in live.into_iter().flatten() {
        // The key of an agent that died here lives on until its lease ends: it does not count.
        if m.record
            .as_ref()
            .is_some_and(|r| ns_here && r.pid_ns.is_some() && gone_here(r))
        {
            continue;
        }
        let name = m.name;
        note(&name, "its etcd member key exists (held by its agent's lease: gone once that agent stops cleanly or its lease expires)".to_string());
        match peers.iter_mut().find(|p| p.node == name) {
            Some(p) => {
                p.fresh = true;
                p.agent_gone = false;
            }
            None => peers.push(PeerView {
                node: name,
                hot: false,
                epoch: 0,
                holds_lock: false,
                fresh: true,
                agent_gone: false,
                live_service: None,
                handover_to: None,
            }),
        }
    }
    if !grant.holds {
        return Err("the group lock was lost while the members were read".to_string());
    }
    if grant.expired {
        return Err("the grant's deadline passed while the members were read".to_string());
    }
    // Noted only where a member was counted alive, so every entry names one (the unit test
    // holds it to that).
    Ok(because)
}

/// Whether the process at the record's agent pid (on this host) is the record's writer: a
/// process that reused the pid of an agent long gone (a lock-file group keeps every node's
/// record file) must not count as that node alive (review 27, N2: every later release
/// refused). A record that says when its agent started (`agent_start`, clock ticks since
/// boot) is matched on that exactly. An older one by the wall clock: the process already ran
/// when the record was last written, with a second's slack for the kernel's whole-second boot
/// time; a clock step moves every process's start by as much (review 28, L2), which the ticks
/// do not. Unknown counts as its writer (refusing is the safe side).
fn is_its_writer(
    rec: &MemberRecord,
    start_ticks: impl Fn(u32) -> Option<u64>,
    started_unix_ms: impl Fn(u32) -> Option<u64>,
) -> bool {
    let pid = rec.node.agent_pid;
    match rec.agent_start {
        Some(ticks) => start_ticks(pid).is_none_or(|t| t == ticks),
        None => {
            started_unix_ms(pid).is_none_or(|t| t <= rec.last_seen_unix_ms.saturating_add(1000))
        }
    }
}

fn lock_replaced() -> Input {
    Input::LockLost {
        reason: "the group lock file was deleted or replaced".to_string(),
    }
}

fn view(r: HeartbeatReading) -> HeartbeatView {
    match r {
        HeartbeatReading::Missing => HeartbeatView::Missing,
        HeartbeatReading::Garbage(why) => HeartbeatView::Garbage(why),
        HeartbeatReading::At(hb) => HeartbeatView::At {
            node: hb.node,
            wall_ms: hb.unix_ms,
        },
    }
}

/// Why a service's health answer says it may not take over: a JSON object with
/// `"replication": {"ready": false, "reason": "..."}` (the FIX gateway's standby while it is
/// not in sync with the active), or, with `"mode": "sync"`, a standby in sync with an active
/// older than `newest_of_another`, the newest epoch another node may have been active with
/// (`UsedEpochs::newest_by_another`, from [`Coordinator::used_epochs`]). Anything else says
/// nothing against it.
///
/// That last rule (review 11, R2): a standby counts itself in sync for `timeout` after its
/// last acknowledgement, across a disconnect, so that it may take over from an active that
/// just died. A newer active that cannot reach it yet waits for no such standby (it never
/// heard from it) and sends alone; were it to die within that `timeout`, the standby would
/// take over without what it sent. In sync only with the newest active is in sync.
///
/// And one exception the other way: a gateway whose store was last active with an epoch of
/// this node's latest run, which holds the group's newest used epoch (`last_used_here`), and
/// has seen none since, was the group's last active. It holds everything it sent (nothing
/// leaves before the active's own sync), so it is ready without a stream: a whole group
/// stopped and started again, or an active whose gateway crashed (even before it activated
/// with the epoch its node took last) and restarts as a standby, starts again from it
/// (review 13, T4, and review 14, U6; before, nobody was ready until `understudy activate`).
fn service_not_ready(
    detail: &serde_json::Value,
    newest_of_another: Option<u64>,
    last_used_here: Option<u64>,
) -> Option<String> {
    let r = detail.get("replication")?;
    let seen = r.get("seen_epoch").and_then(|v| v.as_u64());
    let last_active = r.get("last_active_epoch").and_then(|v| v.as_u64());
    if let (Some(mine), Some(active), Some(seen)) = (last_used_here, last_active, seen) {
        // When this node took the newest used epoch, `newest_of_another` is the newest before
        // its run of them: every epoch after that one up to `mine` was this node's, so a store
        // last active within the run, that has seen nothing newer, sent the group's last
        // message. Its gateway may not have activated with the run's last epochs (it died
        // first, or its disk was full): nothing was sent with those (review 14, U6).
        // Another node's epoch at or above this node's newest contradicts "this node took the
        // newest" (a rolled-back epoch file): no exception then (review 16, W2).
        let run_from = newest_of_another.unwrap_or(0);
        if run_from < mine && active > run_from && active <= mine && seen == active {
            return None;
        }
    }
    // A group that never had an active: nothing was sent that a standby could lack, and one
    // of them must start. A gateway never streamed to has seen no epoch (it keeps the newest
    // it saw in its store); judged not ready, a new group started only when its first agent
    // took the lock before its gateway's first health answer, and on etcd never.
    // Never used by this node either (review 14, U2): a node that used every epoch so far
    // and whose store was lost or wiped also reports seen 0.
    if seen == Some(0) && newest_of_another.is_none() && last_used_here.is_none() {
        return None;
    }
    if r.get("ready")?.as_bool()? {
        return match (
            r.get("mode").and_then(|v| v.as_str()),
            seen,
            newest_of_another,
        ) {
            (Some("sync"), Some(seen), Some(newest)) if seen < newest => Some(format!(
                "reports it is not ready (replication: in sync with epoch {seen}, but the group is \
                 at epoch {newest}: it may lack what that active sent)"
            )),
            _ => None,
        };
    }
    let why = r
        .get("reason")
        .and_then(|v| v.as_str())
        .unwrap_or("replication: not in sync");
    Some(format!("reports it is not ready ({why})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// R25-1: a record from another machine or pid namespace names pids that mean nothing here.
    #[test]
    fn only_a_record_from_this_host_is_judged_by_its_processes() {
        let rec = MemberRecord {
            pid: Some(77),
            ..MemberRecord::of(Node {
                name: "b".into(),
                group: "g".into(),
                state: State::Hot,
                activation: understudy_status::ActivationMode::TryLock,
                epoch: 3,
                since_unix_ms: 0,
                waiting: None,
                holds_lock: true,
                ready: true,
                admin: "127.0.0.1:1".into(),
                agent_pid: 42,
            })
        };
        let nothing_runs = |_: u32| false;
        let everything_runs = |_: u32| true;
        // Elsewhere: pid 42 absent here is no agent gone. A service is judged by its
        // environment wherever the record came from: waited for only if it names the node.
        assert_eq!(
            peer_processes(&rec, false, nothing_runs, nothing_runs),
            (false, None)
        );
        assert_eq!(
            peer_processes(&rec, false, nothing_runs, everything_runs),
            (false, Some(77))
        );
        // Here: /proc tells at once.
        assert_eq!(
            peer_processes(&rec, true, nothing_runs, nothing_runs),
            (true, None)
        );
        assert_eq!(
            peer_processes(&rec, true, everything_runs, everything_runs),
            (false, Some(77))
        );
        // A record this agent writes is one this host judges by its processes.
        let mine = MemberRecord {
            boot_id: understudy_coordinator::boot_id(),
            pid_ns: understudy_coordinator::pid_ns(),
            ..rec.clone()
        };
        assert!(understudy_coordinator::same_host(&mine));
        if let Some(ns) = understudy_coordinator::pid_ns() {
            let container = MemberRecord {
                pid_ns: Some(ns ^ 1),
                ..mine.clone()
            };
            assert!(!understudy_coordinator::same_host(&container));
        }
        // An agent of an earlier version says no namespace: judged by its boot, as it was.
        let older_agent = MemberRecord {
            pid_ns: None,
            ..mine.clone()
        };
        assert!(understudy_coordinator::same_host(&older_agent));
        let other_machine = MemberRecord {
            boot_id: Some("another-boot".into()),
            ..mine
        };
        assert!(!understudy_coordinator::same_host(&other_machine));
    }

    /// A standby's record, last written at Unix ms 1 000 000 by agent pid 42.
    fn standby_record(name: &str, pid_ns: Option<u64>) -> MemberRecord {
        MemberRecord {
            last_seen_unix_ms: 1_000_000,
            pid_ns,
            ..MemberRecord::of(Node {
                name: name.into(),
                group: "g".into(),
                state: State::Warm,
                activation: understudy_status::ActivationMode::TryLock,
                epoch: 3,
                since_unix_ms: 0,
                waiting: None,
                holds_lock: false,
                ready: true,
                admin: "127.0.0.1:1".into(),
                agent_pid: 42,
            })
        }
    }

    /// Review 27, N2: a pid reused after the record was last written is not its writer.
    #[test]
    fn a_process_that_reused_a_gone_agents_pid_is_not_that_agent() {
        let rec = standby_record("b", None);
        let by_wall = |started: Option<u64>| is_its_writer(&rec, |_| Some(5), |_| started);
        assert!(by_wall(Some(900_000)), "its writer, still running");
        assert!(by_wall(Some(1_000_800)), "within the second's slack");
        assert!(!by_wall(Some(1_060_000)), "started a minute later");
        assert!(by_wall(None), "unknown: alive");
        // A record that says its agent's start ticks is matched on them, whatever the wall
        // clock says (review 28, L2: a clock stepped forward made a stopped standby's agent
        // look started after its record, and a release went through).
        let ticked = MemberRecord {
            agent_start: Some(4242),
            ..rec.clone()
        };
        let by_ticks =
            |ticks: Option<u64>, wall: u64| is_its_writer(&ticked, |_| ticks, |_| Some(wall));
        assert!(
            by_ticks(Some(4242), 1_060_000),
            "its writer, the clock stepped"
        );
        assert!(
            !by_ticks(Some(4243), 900_000),
            "another process at that pid"
        );
        assert!(by_ticks(None, 1_060_000), "unknown: alive");
    }

    /// The runtime's part of a release's judgement (review 28, T2): what speaks for a member
    /// beyond its record's age, and when the release cannot be judged at all.
    #[test]
    fn a_release_counts_every_member_something_speaks_for() {
        let rec = standby_record;
        // Every record stale in the cache, as the engine saw them before the read.
        let seen_as = |r: MemberRecord, local: bool, agent_gone: bool| Seen {
            rec: r,
            fresh: false,
            agent_gone,
            local,
        };
        let view = |s: &Seen| PeerView {
            node: s.rec.node.name.clone(),
            hot: false,
            epoch: 3,
            holds_lock: false,
            fresh: s.fresh,
            agent_gone: s.agent_gone,
            live_service: None,
            handover_to: None,
        };
        let ok = Grant {
            holds: true,
            expired: false,
        };
        // The agent at pid 42 on this machine ("here") is gone; any other runs.
        let gone_here =
            |r: &MemberRecord| r.boot_id.as_deref() == Some("here") && r.node.agent_pid == 42;
        let judge =
            |seen: &[Seen], live: Result<Option<Vec<LiveMember>>, String>, grant, started| {
                let mut peers: Vec<PeerView> = seen.iter().map(view).collect();
                let writer_runs =
                    move |r: &MemberRecord| is_its_writer(r, |_| None, move |_| started);
                judge_for_release(&mut peers, seen, live, grant, true, gone_here, writer_runs).map(
                    |because| {
                        let alive: Vec<String> = peers
                            .iter()
                            .filter(|p| p.fresh && !p.agent_gone)
                            .map(|p| p.node.clone())
                            .collect();
                        // Every member counted alive is told with what speaks for it, and only those.
                        let told: Vec<String> = because.iter().map(|(n, _)| n.clone()).collect();
                        assert_eq!(told, alive, "{because:?}");
                        alive
                    },
                )
            };
        let keys = |k: &[&MemberRecord]| {
            Ok(Some(
                k.iter()
                    .map(|r| LiveMember {
                        name: r.node.name.clone(),
                        record: Some((*r).clone()),
                    })
                    .collect(),
            ))
        };
        let here = |r: MemberRecord| MemberRecord {
            boot_id: Some("here".into()),
            ..r
        };
        // A stopped standby here: its process runs, and ran when its record was written.
        let stopped = [seen_as(rec("b", Some(7)), true, false)];
        assert_eq!(
            judge(&stopped, Ok(None), ok, Some(900_000)),
            Ok(vec!["b".into()])
        );
        // The process at that pid started after the record: another process, b is gone.
        assert_eq!(judge(&stopped, Ok(None), ok, Some(1_060_000)), Ok(vec![]));
        // Killed here (gone by both boot and namespace): its live key does not bring it back.
        let dead = here(rec("b", Some(7)));
        let killed = [seen_as(dead.clone(), true, true)];
        assert_eq!(judge(&killed, keys(&[&dead]), ok, None), Ok(vec![]));
        // Restarted here (review 34, M1): the cache still holds the dead run, the key holds the
        // new one, whose agent runs: it counts.
        let restarted = MemberRecord {
            node: Node {
                agent_pid: 43,
                ..dead.node.clone()
            },
            ..dead.clone()
        };
        assert_eq!(
            judge(&killed, keys(&[&restarted]), ok, None),
            Ok(vec!["b".into()])
        );
        // A key whose record cannot be read speaks for its agent by itself.
        let unreadable = Ok(Some(vec![LiveMember {
            name: "b".into(),
            record: None,
        }]));
        assert_eq!(judge(&killed, unreadable, ok, None), Ok(vec!["b".into()]));
        // An agent of an earlier version (no pid_ns) "gone" by its boot alone, its record
        // stale: its key speaks for it (review 28, M1); on a lock file nothing does.
        let old = here(rec("b", None));
        let older = [seen_as(old.clone(), true, true)];
        assert_eq!(judge(&older, keys(&[&old]), ok, None), Ok(vec!["b".into()]));
        assert_eq!(judge(&older, Ok(None), ok, None), Ok(vec![]));
        // Another machine, stale in the cache: its key counts; a key with no record is added.
        let far = rec("b", Some(7));
        let remote = [seen_as(far.clone(), false, false)];
        assert_eq!(
            judge(&remote, keys(&[&far]), ok, None),
            Ok(vec!["b".into()])
        );
        assert_eq!(judge(&remote, Ok(Some(vec![])), ok, None), Ok(vec![]));
        assert_eq!(
            judge(&[], keys(&[&rec("c", Some(7))]), ok, None),
            Ok(vec!["c".into()])
        );
        // Nothing to judge by: refused.
        let unread = judge(&remote, Err("timed out".into()), ok, None);
        assert!(
            unread.as_ref().is_err_and(|e| e.contains("timed out")),
            "{unread:?}"
        );
        let lost = Grant {
            holds: false,
            expired: false,
        };
        assert!(judge(&[], Ok(None), lost, None).is_err());
        let expired = Grant {
            holds: true,
            expired: true,
        };
        assert!(judge(&[], Ok(None), expired, None).is_err());
    }

    #[test]
    fn status_shows_a_gateways_sync_stalls_only_once_there_were_some() {
        let calm = json!({"role": "active", "store_sync": {"passes": 10, "fdatasyncs": 12,
            "slow_passes": 0, "slow_pass_ms": 20, "slowest_pass_us": 900}});
        assert_eq!(one_line(&calm), "role=active");
        let stalled = json!({"role": "active", "store_sync": {"passes": 10, "fdatasyncs": 12,
            "slow_passes": 3, "slow_pass_ms": 20, "slowest_pass_us": 412_345}});
        assert_eq!(
            one_line(&stalled),
            "sync-stalls=3 slowest=412ms role=active"
        );
        let replicated = json!({"role": "active", "replication": {"mode": "sync",
            "peers": [{"in_sync": true}]}, "store_sync": {"slow_passes": 1, "slowest_pass_us": 25_000}});
        assert_eq!(
            one_line(&replicated),
            "replication=sync standbys-in-sync=1/1 sync-stalls=1 slowest=25ms role=active"
        );
        let frozen = json!({"replication": {"mode": "sync", "degraded": true, "frozen_ms": 2990,
            "peers": [{"in_sync": false}]}});
        assert_eq!(
            one_line(&frozen),
            "replication=sync standbys-in-sync=0/1 DEGRADED frozen=2990ms"
        );
        let late = json!({"replication": {"mode": "sync", "degraded": true, "frozen_ms": 2990,
            "last_degraded": {"at_unix_ms": 1, "held_ms": 1500, "silent_ms": 3510, "frozen_ms": 1990},
            "peers": [{"in_sync": false}]}});
        assert_eq!(
            one_line(&late),
            "replication=sync standbys-in-sync=0/1 DEGRADED held=1500ms standby-silent=3510ms(frozen=1990ms) frozen=2990ms"
        );
        // Back in sync: the last fall-back stays in the health answer, not on the line.
        let back = json!({"replication": {"mode": "sync", "degraded": false, "frozen_ms": 0,
            "last_degraded": {"at_unix_ms": 1, "held_ms": 1500, "silent_ms": 1500, "frozen_ms": 0},
            "peers": [{"in_sync": true}]}});
        assert_eq!(one_line(&back), "replication=sync standbys-in-sync=1/1");
        let never = json!({"replication": {"mode": "sync", "frozen_ms": 0, "peers": [{}]}});
        assert_eq!(one_line(&never), "replication=sync standbys-in-sync=0/1");
    }

    #[test]
    fn a_replicated_standby_not_in_sync_is_not_ready_and_status_shows_its_lag() {
        let lagging = json!({"role": "standby", "replication": {"mode": "sync", "ready": false,
            "reason": "replication: not in sync with the active", "lag_records": 12, "lag_ms": 40,
            "peers": []}});
        assert_eq!(
            service_not_ready(&lagging, None, None).as_deref(),
            Some("reports it is not ready (replication: not in sync with the active)")
        );
        assert!(one_line(&lagging).starts_with("replication=sync NOT-in-sync lag=12rec/40ms"));
        let synced = json!({"role": "standby", "replication": {"mode": "sync", "ready": true,
            "lag_records": 0, "lag_ms": 0, "peers": []}});
        assert_eq!(service_not_ready(&synced, None, None), None);
        assert!(one_line(&synced).starts_with("replication=sync in-sync lag=0rec/0ms"));
        let active = json!({"role": "active", "replication": {"mode": "sync", "ready": true,
            "degraded": true, "peers": [{"in_sync": false}]}});
        assert!(one_line(&active).starts_with("replication=sync standbys-in-sync=0/1 DEGRADED"));
        // Services that say nothing about replication are never held back by this.
        assert_eq!(
            service_not_ready(&json!({"role": "standby"}), Some(9), None),
            None
        );
        assert_eq!(service_not_ready(&json!("plain text"), Some(9), None), None);
    }

    #[test]
    fn a_sync_standby_in_sync_with_an_older_active_than_the_groups_newest_is_not_ready() {
        let at = |mode: &str, seen: u64| {
            json!({"role": "standby", "replication": {"mode": mode, "ready": true,
                "seen_epoch": seen, "lag_records": 0, "lag_ms": 0, "peers": []}})
        };
        assert_eq!(
            service_not_ready(&at("sync", 7), Some(8), None).as_deref(),
            Some(
                "reports it is not ready (replication: in sync with epoch 7, but the group is at \
                 epoch 8: it may lack what that active sent)"
            )
        );
        // In sync with the newest active, or the newest epoch is this node's own.
        assert_eq!(service_not_ready(&at("sync", 8), Some(8), None), None);
        assert_eq!(service_not_ready(&at("sync", 7), None, None), None);
        // Async promises nothing of the kind: a caught-up standby stays ready.
        assert_eq!(service_not_ready(&at("async", 7), Some(8), None), None);
        // A new group (no epoch taken by anyone else) starts from a gateway never streamed
        // to; once another node took an epoch, that gateway waits for its stream.
        let never = json!({"role": "standby", "replication": {"mode": "sync", "ready": false,
            "reason": "replication: no active has streamed to this standby yet", "seen_epoch": 0}});
        assert_eq!(service_not_ready(&never, None, None), None);
        assert!(service_not_ready(&never, Some(1), None).is_some());
        // Not when this node used an epoch (review 14, U2): the store of a node that was the
        // only active so far, lost or wiped, also reports seen 0.
        assert!(service_not_ready(&never, None, Some(8)).is_some());
        // A standby not in sync keeps its own reason.
        let behind = json!({"role": "standby", "replication": {"mode": "sync", "ready": false,
            "reason": "replication: not in sync with the active", "seen_epoch": 7}});
        assert!(service_not_ready(&behind, None, None).is_some());
        assert_eq!(
            service_not_ready(&behind, Some(8), None).as_deref(),
            Some("reports it is not ready (replication: not in sync with the active)")
        );
    }

    /// Review 13, T4: the group's last active, restarted as a standby nobody streams to.
    #[test]
    fn the_groups_last_active_is_ready_without_a_stream() {
        let restarted = |seen: u64, active: u64| {
            json!({"role": "standby", "replication": {"mode": "sync", "ready": false,
                "reason": "replication: no active has streamed to this standby yet",
                "seen_epoch": seen, "last_active_epoch": active}})
        };
        // This node took 8, the group's newest used epoch, and its store was active with 8.
        assert_eq!(service_not_ready(&restarted(8, 8), Some(7), Some(8)), None);
        // Another node used an epoch since (this one's grant is not the newest used).
        assert!(service_not_ready(&restarted(8, 8), Some(9), None).is_some());
        // A store active with an older epoch of this node's, or streamed at a newer one since.
        assert!(service_not_ready(&restarted(8, 6), Some(7), Some(8)).is_some());
        assert!(service_not_ready(&restarted(9, 8), Some(7), Some(8)).is_some());
        // A gateway from before the field, or never active.
        let old = json!({"role": "standby", "replication": {"mode": "sync", "ready": false,
            "reason": "replication: no active has streamed to this standby yet", "seen_epoch": 8}});
        assert!(service_not_ready(&old, Some(7), Some(8)).is_some());
        assert!(service_not_ready(&restarted(8, 0), Some(7), Some(8)).is_some());
        // Review 14, U6: this node took 9 and 10 after its store was active with 8 (its
        // gateway died before activating, twice), and nobody else used one since 7.
        assert_eq!(service_not_ready(&restarted(8, 8), Some(7), Some(10)), None);
        // Not when another node's epoch lies between: 8 is not this run's.
        assert!(service_not_ready(&restarted(8, 8), Some(8), Some(10)).is_some());
        assert!(service_not_ready(&restarted(8, 8), Some(9), Some(10)).is_some());
        // Nor when the store saw a newer epoch than it was active with.
        assert!(service_not_ready(&restarted(9, 8), Some(7), Some(10)).is_some());
        // A store never active, whatever this node took.
        assert!(service_not_ready(&restarted(0, 0), None, Some(3)).is_some());
        // Another node's epoch at or above this node's newest: the coordinator contradicts
        // itself (a lock file's epoch file rolled back below what its agent took), so no
        // exception (review 16, W2; a restarted agent's own newest is no longer counted as
        // another's, the lock file reads its run from the epoch file).
        assert!(service_not_ready(&restarted(8, 8), Some(8), Some(8)).is_some());
        assert!(service_not_ready(&restarted(8, 8), Some(9), Some(8)).is_some());
        assert!(service_not_ready(&restarted(7, 7), Some(8), Some(8)).is_some());
        // The group's only active so far: no other node's epoch, its run from the first.
        assert_eq!(service_not_ready(&restarted(2, 2), None, Some(3)), None);
    }
}
