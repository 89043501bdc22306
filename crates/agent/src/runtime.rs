//! The agent's event loop: everything that happens to the node arrives here as one input at a
//! time, goes through the engine, and the engine's commands are executed in order. Reading one
//! failover means reading [`Runtime::feed`] and [`Runtime::execute`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use understudy_coordinator::{
    CoordEvent, Coordinator, Heartbeat, HeartbeatReading, MemberRecord, Members, TryAcquire,
};
use understudy_engine::{
    Answer, Command, Engine, EngineConfig, EventKind, HeartbeatView, Input, Now, Role, State,
    SvcState,
};
use understudy_service::{HealthEvent, ServiceEvent, ServiceSpec, Supervisor};

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
    /// Anything else at start.
    #[error("{0}")]
    Start(String),
}

/// An operator request travelling from the admin API to the event loop.
#[derive(Debug)]
pub enum ApiRequest {
    /// `PUT /service/activationmode/hot`.
    Activate(oneshot::Sender<Answer>),
    /// `POST /service/switchover`.
    Switchover(oneshot::Sender<Answer>),
}

/// The service part of `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// `stopped`, `starting`, `running`, `stopping`.
    pub state: String,
    /// The service's pid when it runs.
    pub pid: Option<u32>,
    /// The role it was last told (`active` or `standby`), when it runs.
    pub role: Option<String>,
    /// `hot`, `warm` or `cold`.
    pub standby: String,
    /// The command.
    pub command: Vec<String>,
    /// True when the health check passes (or there is none).
    pub healthy: bool,
    /// What the service said about itself in its last passing HTTP health check (JSON when it
    /// answered JSON).
    pub detail: Option<serde_json::Value>,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Node name.
    pub node: String,
    /// Group name.
    pub group: String,
    /// `Hot` or `Warm`.
    pub mode: String,
    /// Configured activation mode (`TryLock`, …).
    pub name: String,
    /// The fencing epoch.
    pub epoch: u64,
    /// When the state last changed (RFC 3339).
    pub since: String,
    /// The same, Unix milliseconds.
    pub since_unix_ms: u64,
    /// Why a Warm node is not Hot.
    pub waiting: Option<String>,
    /// True while this node holds the group lock.
    pub holds_lock: bool,
    /// True when this node could take over now.
    pub ready: bool,
    /// The admin address.
    pub admin: String,
    /// The group lock file.
    pub lock_file: String,
    /// The agent's pid.
    pub agent_pid: u32,
    /// The service.
    pub service: ServiceStatus,
}

/// State shared between the event loop and the admin API.
pub struct Shared {
    /// The validated configuration.
    pub cfg: Config,
    /// The latest status, rewritten after every input.
    pub status: RwLock<StatusView>,
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
    pub fn status(&self) -> StatusView {
        let mut s = match self.status.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        // Past the grant's deadline the guardian has ended the service: a node that has not yet
        // heard (its agent was frozen and just continued) must not claim to be active.
        if s.mode == "Hot" && self.fence.expired() {
            s.mode = State::Warm.to_string();
            s.waiting = Some("the grant's deadline passed; stepping down".to_string());
        }
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

/// Run an agent until it is told to stop; returns the process exit code.
pub async fn run(cfg: Config, guardian_exe: PathBuf) -> Result<i32, AgentError> {
    let listener = tokio::net::TcpListener::bind(cfg.node.admin)
        .await
        .map_err(|source| AgentError::AdminBind {
            file: cfg.file.clone(),
            addr: cfg.node.admin,
            source,
        })?;
    let (svc_tx, svc_rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(svc_tx);
    // The coordinator (lock file or etcd); with etcd it arms the service's guardian itself.
    let (coord_tx, coord_rx) = mpsc::unbounded_channel();
    let (coord, members) = crate::coordination::connect(&cfg, coord_tx, supervisor.fence())?;
    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let (api_tx, api_rx) = mpsc::channel(64);

    let engine = Engine::new(EngineConfig {
        mode: cfg.activation.mode,
        standby: cfg.service.standby,
        heartbeat_delay: cfg.activation.heartbeat_delay,
        backoff_min: cfg.service.restart_backoff,
        backoff_max: cfg.service.restart_backoff_max,
        stable_after: Duration::from_secs(60),
        yield_timeout: cfg.activation.yield_timeout,
        health_check: cfg.health.is_some(),
    });
    let shared = Arc::new(Shared {
        status: RwLock::new(initial_status(&cfg)),
        cfg: cfg.clone(),
        timeline: Mutex::new(Timeline::default()),
        metrics: Metrics::new(),
        members,
        last_tick_ms: std::sync::atomic::AtomicU64::new(unix_ms()),
        fence: supervisor.fence(),
    });

    let app = crate::api::router(shared.clone(), api_tx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("admin API stopped: {e}");
        }
    });

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
        exit_code: None,
        last_record: None,
        deferred: None,
        pending_start: None,
        awaiting: None,
        service_detail: None,
    };
    info!(
        node = %cfg.node.name, group = %cfg.node.group, admin = %cfg.node.admin,
        mode = %cfg.activation.mode, lock = %cfg.activation.lock_file.display(),
        "agent starting"
    );
    let known_epoch = rt.coord.current_epoch();
    rt.feed(Input::Start { known_epoch });
    rt.run_loop(coord_rx, svc_rx, health_rx, api_rx).await;
    Ok(rt.exit_code.unwrap_or(0))
}

fn initial_status(cfg: &Config) -> StatusView {
    let now = unix_ms();
    StatusView {
        node: cfg.node.name.clone(),
        group: cfg.node.group.clone(),
        mode: State::Warm.to_string(),
        name: cfg.activation.mode.api_name().to_string(),
        epoch: 0,
        since: rfc3339(now),
        since_unix_ms: now,
        waiting: Some("starting".to_string()),
        holds_lock: false,
        ready: false,
        admin: cfg.node.admin.to_string(),
        lock_file: cfg.activation.lock_file.display().to_string(),
        agent_pid: std::process::id(),
        service: ServiceStatus {
            state: "stopped".to_string(),
            pid: None,
            role: None,
            standby: format!("{:?}", cfg.service.standby).to_lowercase(),
            command: cfg.service.command.clone(),
            healthy: cfg.health.is_none(),
            detail: None,
        },
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
    exit_code: Option<i32>,
    last_record: Option<MemberRecord>,
    /// A grant on a lock file we created while a peer still advertised Hot: fed to the engine
    /// once that peer has stepped down (or its record went stale).
    deferred: Option<HeartbeatReading>,
    /// A standby service that is running but not yet fed to the engine as started, because it
    /// has not yet installed a handler for the activate signal (see [`Runtime::on_service`]).
    pending_start: Option<PendingStart>,
    /// A grant held back until the services of the previous holders are gone (see
    /// [`Runtime::live_holder_services`]): the heartbeat it carried and the pids to wait for.
    awaiting: Option<(HeartbeatReading, Vec<(u32, String)>)>,
    /// The running service's last self-report (see [`ServiceStatus::detail`]).
    service_detail: Option<serde_json::Value>,
}

/// True while `pid` runs (not a zombie) with `UNDERSTUDY_NODE=node` and `UNDERSTUDY_GROUP=group`
/// in its environment: the service of that node of our group.
fn service_alive(pid: u32, node: &str, group: &str) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let has = |kv: String| env.split(|b| *b == 0).any(|e| e == kv.as_bytes());
    has(format!("UNDERSTUDY_NODE={node}")) && has(format!("UNDERSTUDY_GROUP={group}"))
}

/// True while `pid` can still act: it exists, is not a zombie, and has no SIGKILL pending (a
/// process with SIGKILL pending never runs user code again, even while the kernel finishes an
/// uninterruptible wait or unmaps a large address space).
fn pid_alive(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let kill_bit = 1u64 << (nix::sys::signal::Signal::SIGKILL as i32 - 1);
    let mut alive = true;
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "State" => alive &= !(v.starts_with('Z') || v.starts_with('X')),
            "SigPnd" | "ShdPnd" => {
                alive &= u64::from_str_radix(v, 16)
                    .map(|m| m & kill_bit == 0)
                    .unwrap_or(true)
            }
            _ => {}
        }
    }
    alive
}

/// See [`Runtime::pending_start`].
struct PendingStart {
    generation: u64,
    pid: u32,
    since: Instant,
    /// Its health check already passed: the engine ignores that before the start, and the
    /// check reports a success only once, so it is replayed after the start.
    healthy: bool,
}

/// Longest wait for a standby service to install its activate-signal handler; after it the service
/// counts as started anyway (a service that never handles the signal is misconfigured).
const SIGNAL_HANDLER_WAIT: Duration = Duration::from_secs(5);

/// True when `sig` is caught, ignored or blocked by process `pid` (so it cannot kill it), or when
/// that cannot be told (no /proc entry: the process is gone, its exit event follows).
fn signal_handled(pid: u32, sig: nix::sys::signal::Signal) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let bit = 1u64 << ((sig as i32 - 1) as u32);
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "SigBlk" | "SigIgn" | "SigCgt")
                .then(|| u64::from_str_radix(v.trim(), 16).ok())
                .flatten()
        })
        .any(|mask| mask & bit != 0)
}

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
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut tick = tokio::time::interval(self.shared.cfg.activation.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.exit_code.is_none() {
            tokio::select! {
                // Lock events first: a takeover must not queue behind anything else.
                biased;
                Some(ev) = coord_rx.recv() => self.on_coord(ev),
                Some(ev) = svc_rx.recv() => self.on_service(ev),
                Some(ev) = health_rx.recv() => self.on_health(ev),
                Some(req) = api_rx.recv() => self.on_api(req),
                _ = tokio::time::sleep(Duration::from_millis(1)),
                    if self.pending_start.is_some() || self.awaiting.is_some() => {
                    self.poll_pending_start();
                    self.poll_awaiting();
                }
                _ = recv_signal(&mut sigterm) => {
                    info!("SIGTERM: stopping gracefully");
                    self.feed(Input::Shutdown);
                }
                _ = recv_signal(&mut sigint) => {
                    info!("SIGINT: stopping gracefully");
                    self.feed(Input::Shutdown);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        // The supervisor's drop kills whatever is left of the service's process group.
        self.supervisor.kill_now();
        let _ = self.coord.release();
        self.advertise(true);
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
                if created {
                    if let Some(peer) = self.fresh_hot_peer() {
                        // We created the lock file, so the one the active holds was deleted or
                        // replaced under it. It steps down at its next check of the lock; going
                        // Hot before it has would make two actives.
                        warn!(
                            "the lock file was re-created while {peer} still advertises Hot; waiting for it to step down"
                        );
                        self.deferred = Some(previous);
                        return;
                    }
                }
                // The kernel hands the lock over the instant the holder's agent dies, but its
                // service dies only when the guardian has noticed and killed it: a few hundred µs
                // idle, >8 ms seen under CPU load, all the while acting next to ours (the tests'
                // overlap checker caught it). Act only once the services the holders advertised
                // are gone.
                let pids = self.live_holder_services();
                if !pids.is_empty() {
                    warn!(
                        ?pids,
                        "obtained the group lock; waiting for the previous active's service to die"
                    );
                    self.awaiting = Some((previous, pids));
                    return;
                }
                self.feed(Input::LockAcquired {
                    previous: view(previous),
                })
            }
            CoordEvent::Lost { reason } => {
                warn!("lost the group lock: {reason}");
                self.feed(Input::LockLost { reason })
            }
        }
    }

    fn on_service(&mut self, ev: ServiceEvent) {
        match ev {
            ServiceEvent::Started { generation, pid } => {
                if generation != self.supervisor.generation() {
                    return;
                }
                // The guardian reports the pid right after exec, long before the service has set
                // up its handler for the activate signal. A node that goes Hot while its standby
                // service is starting would signal it at once, and the signal's default action
                // killed it (then a failover, then the same again on restart: a lone hot-standby
                // node never stayed up). So a standby counts as started, and can be told it is
                // active, only once the signal cannot kill it.
                let sig = self.shared.cfg.service.activate_signal;
                if self.engine.service() == SvcState::Starting(Role::Standby)
                    && !signal_handled(pid, sig)
                {
                    self.pending_start = Some(PendingStart {
                        generation,
                        pid,
                        since: Instant::now(),
                        healthy: false,
                    });
                    return;
                }
                self.feed(Input::ServiceStarted { pid });
            }
            ServiceEvent::Exited {
                generation,
                pid,
                reason,
            } => {
                if generation != self.supervisor.generation() {
                    return;
                }
                self.pending_start = None;
                self.service_detail = None;
                if let Some(h) = self.health.take() {
                    h.abort();
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
                self.feed(Input::ServiceExited {
                    reason: format!("{who}{reason}"),
                });
            }
        }
    }

    /// The pids of other nodes' services that still run on this host although their node
    /// advertised holding the lock or being Hot (by its membership record, and by the service's own
    /// environment, so an unrelated process with a reused pid or on another host never counts).
    fn live_holder_services(&self) -> Vec<(u32, String)> {
        let cfg = &self.shared.cfg;
        self.shared
            .members
            .read_all()
            .into_iter()
            .filter(|m| m.node != cfg.node.name && (m.holds_lock || m.mode == "Hot"))
            .filter_map(|m| Some((m.pid?, m.node)))
            .filter(|(pid, node)| service_alive(*pid, node, &cfg.node.group))
            .collect()
    }

    /// Feed a held-back grant once the previous holders' services are gone.
    fn poll_awaiting(&mut self) {
        let Some((_, pids)) = &self.awaiting else {
            return;
        };
        if !self.coord.holds() {
            self.awaiting = None;
            return;
        }
        let group = &self.shared.cfg.node.group;
        if pids
            .iter()
            .any(|(pid, node)| service_alive(*pid, node, group))
        {
            return;
        }
        if let Some((previous, _)) = self.awaiting.take() {
            self.feed(Input::LockAcquired {
                previous: view(previous),
            });
        }
    }

    /// Feed the start of a standby service once it handles the activate signal (or waited long).
    fn poll_pending_start(&mut self) {
        let Some(p) = &self.pending_start else {
            return;
        };
        if p.generation != self.supervisor.generation() {
            self.pending_start = None;
            return;
        }
        let sig = self.shared.cfg.service.activate_signal;
        let handled = signal_handled(p.pid, sig);
        if !handled && p.since.elapsed() < SIGNAL_HANDLER_WAIT {
            return;
        }
        if !handled {
            warn!(
                pid = p.pid,
                "the standby service does not handle {sig} after {:?}; counting it as started anyway",
                SIGNAL_HANDLER_WAIT
            );
        }
        let (pid, healthy) = (p.pid, p.healthy);
        self.pending_start = None;
        self.feed(Input::ServiceStarted { pid });
        if healthy {
            self.feed(Input::HealthOk);
        }
    }

    fn on_health(&mut self, ev: HealthEvent) {
        let gen = self.supervisor.generation();
        match ev {
            HealthEvent::Healthy { generation } if generation == gen => {
                match &mut self.pending_start {
                    Some(p) if p.generation == gen => p.healthy = true,
                    _ => self.feed(Input::HealthOk),
                }
            }
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
                if self.service_detail.as_ref() != Some(&detail) {
                    self.service_detail = Some(detail);
                    self.publish_status();
                    self.advertise(false);
                }
            }
            _ => {}
        }
    }

    fn on_api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::Activate(tx) => {
                self.pending_activate.push_back(tx);
                self.feed(Input::Activate);
            }
            ApiRequest::Switchover(tx) => {
                self.pending_switchover.push_back(tx);
                let ready = self.ready_standbys();
                self.feed(Input::Switchover { ready });
            }
        }
    }

    fn on_tick(&mut self) {
        self.shared
            .last_tick_ms
            .store(unix_ms(), std::sync::atomic::Ordering::Relaxed);
        if self.deferred.is_some() {
            if !self.coord.holds() {
                self.deferred = None;
            } else if self.fresh_hot_peer().is_none() {
                if let Some(previous) = self.deferred.take() {
                    self.feed(Input::LockAcquired {
                        previous: view(previous),
                    });
                }
            }
        }
        self.feed(Input::Tick);
        // A peer that became Hot with a newer epoch ends a yield and raises our epoch floor.
        let me = self.shared.cfg.node.name.clone();
        let epoch = self.engine.epoch();
        let peer = self
            .fresh_members()
            .into_iter()
            .filter(|m| m.node != me && m.mode == "Hot" && m.epoch > epoch)
            .max_by_key(|m| m.epoch);
        if let Some(p) = peer {
            self.feed(Input::PeerActive {
                node: p.node,
                epoch: p.epoch,
            });
        }
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

    /// Another node that advertises Hot in a fresh record, if any.
    fn fresh_hot_peer(&self) -> Option<String> {
        let me = &self.shared.cfg.node.name;
        self.fresh_members()
            .into_iter()
            .find(|m| &m.node != me && m.mode == "Hot")
            .map(|m| m.node)
    }

    fn ready_standbys(&self) -> Vec<String> {
        let me = &self.shared.cfg.node.name;
        self.fresh_members()
            .into_iter()
            .filter(|m| &m.node != me && m.mode == "Warm" && m.ready)
            .map(|m| m.node)
            .collect()
    }

    /// Run one input through the engine and execute its commands; inputs that commands answer
    /// at once (try-lock, epoch) are fed back before anything else can happen.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            debug!(?input, "engine input");
            let now = self.now();
            for cmd in self.engine.handle(now, input) {
                if let Some(next) = self.execute(cmd) {
                    queue.push_back(next);
                }
            }
        }
        self.publish_status();
        self.advertise(false);
    }

    fn execute(&mut self, cmd: Command) -> Option<Input> {
        debug!(?cmd, "engine command");
        match cmd {
            Command::Campaign => {
                if let Err(e) = self.coord.campaign() {
                    error!("cannot wait for the group lock: {e}");
                }
                None
            }
            Command::TryLock => Some(match self.coord.try_acquire() {
                Ok(TryAcquire::Acquired { created: true, .. })
                    if self.fresh_hot_peer().is_some() =>
                {
                    // The lock file was deleted or replaced under a node that still acts.
                    let _ = self.coord.release();
                    Input::LockBusy {
                        holder: self.fresh_hot_peer(),
                    }
                }
                Ok(TryAcquire::Acquired { previous, .. }) => Input::LockAcquired {
                    previous: view(previous),
                },
                Ok(TryAcquire::HeldByOther) => Input::LockBusy {
                    holder: self.holder_hint(),
                },
                Err(e) => {
                    error!("cannot try the group lock: {e}");
                    Input::LockBusy { holder: None }
                }
            }),
            Command::Release => {
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
            Command::VerifyLock => {
                // A lost lock is reported through the coordinator's channel.
                self.coord.verify();
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
            Command::Exit { code } => {
                self.exit_code = Some(code);
                None
            }
        }
    }

    fn holder_hint(&self) -> Option<String> {
        let me = &self.shared.cfg.node.name;
        self.fresh_members()
            .into_iter()
            .filter(|m| &m.node != me && m.holds_lock)
            .max_by_key(|m| m.last_seen_unix_ms)
            .map(|m| m.node)
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
        let env = self.service_env(Role::Active, epoch);
        tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new(&hook[0]);
            cmd.args(&hook[1..]).envs(env).kill_on_drop(true);
            match cmd.status().await {
                Ok(s) if s.success() => info!("activate hook {:?} done", hook[0]),
                Ok(s) => warn!("activate hook {:?} failed: {s}", hook[0]),
                Err(e) => warn!("activate hook {:?} could not run: {e}", hook[0]),
            }
        });
    }

    fn record(&mut self, ev: understudy_engine::Event) {
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
        let took = match self.shared.timeline.lock() {
            Ok(mut t) => t.push(ev),
            Err(p) => p.into_inner().push(ev),
        };
        if let Some(d) = took {
            m.takeover_seconds.observe(d.as_secs_f64());
            info!(
                "takeover: service told it is active {:.3} ms after the lock was obtained",
                d.as_secs_f64() * 1e3
            );
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
        };
        if let Some(tx) = q.pop_front() {
            // The HTTP client may have gone away; the node's state is what matters.
            let _ = tx.send(a);
        }
    }

    fn publish_status(&self) {
        let snap = self.engine.snapshot();
        let m = &self.shared.metrics;
        m.hot.set(i64::from(snap.state == State::Hot));
        m.epoch.set(snap.epoch as i64);
        m.lock_held.set(i64::from(snap.holds_lock));
        let cfg = &self.shared.cfg;
        let role = match snap.service {
            understudy_engine::SvcState::Running { role, .. } => Some(role.as_env().to_string()),
            understudy_engine::SvcState::Starting(role) => Some(role.as_env().to_string()),
            _ => None,
        };
        let view = StatusView {
            node: cfg.node.name.clone(),
            group: cfg.node.group.clone(),
            mode: snap.state.to_string(),
            name: snap.mode.api_name().to_string(),
            epoch: snap.epoch,
            since: rfc3339(snap.since_unix_ms),
            since_unix_ms: snap.since_unix_ms,
            waiting: snap.waiting.clone(),
            holds_lock: snap.holds_lock,
            ready: snap.ready,
            admin: cfg.node.admin.to_string(),
            lock_file: cfg.activation.lock_file.display().to_string(),
            agent_pid: std::process::id(),
            service: ServiceStatus {
                state: snap.service.word().to_string(),
                pid: self.supervisor.pid(),
                role,
                standby: format!("{:?}", cfg.service.standby).to_lowercase(),
                command: cfg.service.command.clone(),
                healthy: snap.healthy,
                detail: self.service_detail.clone(),
            },
        };
        match self.shared.status.write() {
            Ok(mut s) => *s = view,
            Err(p) => *p.into_inner() = view,
        }
    }

    /// Rewrite this node's membership record: always when `force` (every tick, for last_seen),
    /// otherwise only when something a peer cares about changed.
    fn advertise(&mut self, force: bool) {
        let s = self.shared.status();
        let rec = MemberRecord {
            node: s.node.clone(),
            group: s.group.clone(),
            admin: s.admin.clone(),
            mode: s.mode.clone(),
            name: s.name.clone(),
            epoch: s.epoch,
            since_unix_ms: s.since_unix_ms,
            last_seen_unix_ms: unix_ms(),
            holds_lock: s.holds_lock,
            ready: s.ready,
            service: s.service.state.clone(),
            pid: s.service.pid,
            agent_pid: s.agent_pid,
            waiting: s.waiting.clone(),
            detail: s.service.detail.as_ref().map(one_line),
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
            .iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some(format!("{k}={s}")),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                    Some(format!("{k}={v}"))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::String(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    };
    text.chars().take(200).collect()
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
