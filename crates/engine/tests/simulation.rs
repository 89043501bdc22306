//! A simulated group of 2–4 nodes, driven by random faults, checking after every input that two
//! services are never active at once.
//!
//! The world models what the engines cannot see:
//! - the kernel's file lock: one holder and a FIFO of waiters. `Campaign` waits, `TryLock` answers
//!   at once, `Release` (or the death of the agent) hands the lock to the first waiter, whose
//!   `LockAcquired` is queued like any other event;
//! - the lock file being deleted or replaced: its holder keeps acting until its next `VerifyLock`
//!   (on a tick) tells it, while the next node creates a new file and is granted a lock on it
//!   (`created`);
//! - the epoch store: `PersistNextEpoch{floor}` sets `store = max(store, floor) + 1`, and is only
//!   legal while holding the lock (or a lock on a file that was replaced unnoticed). Like the
//!   agent, the world answers it (and `ConfirmLock`) at once, before anything else happens;
//! - the heartbeat record in the lock file, and each node's membership record (what it last
//!   advertised: Hot, epoch, lock, service pid), which survives the death of its agent;
//! - one service process per node. Its start and exit reach the engine asynchronously, through a
//!   per-node queue delivered by a random action. A graceful stop leaves it acting until its exit
//!   is delivered; a kill or a crash stops it at once. When the agent dies the kernel releases its
//!   lock at once, but its service lives on (still active) until its guardian kills it, a random
//!   moment later;
//! - a standby service handles the activate signal only some time after it started (at most
//!   4 s); before that the signal would kill it.
//!
//! Events of one node arrive in two independent FIFO channels (lock/epoch/processes, service), so
//! their interleaving is random too.
//!
//! Modelling assumption: an agent restarted after a `kill -9` starts only once its guardian has
//! killed the old service (an agent's start is far slower than the guardian's reaction).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestError, TestRng, TestRunner};
use understudy_engine::{
    ActivationMode, Answer, Command, Engine, EngineConfig, HeartbeatView, Input, Now, PeerView,
    Role, Rules, StandbyType, State, SvcState,
};

const WALL0: u64 = 1_700_000_000_000;

/// `PROPTEST_CASES` when set (to search longer), else `default`: proptest reads the variable
/// only for a configuration that does not name its own number of cases.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
enum Action {
    /// Deliver the head of one non-empty queue (`pick` modulo their number).
    Deliver {
        pick: usize,
    },
    /// Advance time, then tick every running agent.
    Tick {
        ms: u64,
    },
    /// kill -9 of the agent: the kernel releases its lock, its service dies with it.
    Kill {
        node: usize,
    },
    /// Start a dead or exited agent again with a fresh engine.
    Restart {
        node: usize,
    },
    /// The service process dies by itself.
    Crash {
        node: usize,
    },
    HealthOk {
        node: usize,
    },
    HealthFail {
        node: usize,
    },
    Activate {
        node: usize,
    },
    Switchover {
        node: usize,
        /// Hand over to the ready standby at this index (mod their number), or to any.
        to: Option<usize>,
    },
    /// The lock file is replaced: its holder learns it at its next `VerifyLock`.
    LockLost,
    /// The guardian of a dead agent kills its service (`pick` among them).
    Reap {
        pick: usize,
    },
    /// A standby service installs its activate-signal handler.
    SignalReady {
        node: usize,
    },
    Shutdown {
        node: usize,
    },
    /// The membership record of the last active reaches a node.
    Gossip {
        node: usize,
    },
    /// The next `PersistNextEpoch` fails.
    StoreFault,
    /// The node's configuration changes (the control plane imports a new one): it runs an
    /// outdated one until its agent is started again.
    Outdate {
        node: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        45 => any::<usize>().prop_map(|pick| Action::Deliver { pick }),
        10 => (0u64..=3000).prop_map(|ms| Action::Tick { ms }),
        2 => (0usize..4).prop_map(|node| Action::Kill { node }),
        4 => (0usize..4).prop_map(|node| Action::Restart { node }),
        3 => (0usize..4).prop_map(|node| Action::Crash { node }),
        4 => (0usize..4).prop_map(|node| Action::HealthOk { node }),
        2 => (0usize..4).prop_map(|node| Action::HealthFail { node }),
        3 => (0usize..4).prop_map(|node| Action::Activate { node }),
        3 => ((0usize..4), proptest::option::of(0usize..4))
            .prop_map(|(node, to)| Action::Switchover { node, to }),
        2 => Just(Action::LockLost),
        2 => (0usize..4).prop_map(|node| Action::Shutdown { node }),
        2 => (0usize..4).prop_map(|node| Action::Gossip { node }),
        3 => any::<usize>().prop_map(|pick| Action::Reap { pick }),
        4 => (0usize..4).prop_map(|node| Action::SignalReady { node }),
        1 => Just(Action::StoreFault),
    ]
}

fn config() -> impl Strategy<Value = EngineConfig> {
    (
        prop_oneof![
            3 => Just(ActivationMode::TryLock),
            3 => Just(ActivationMode::TryHeartbeat),
            1 => Just(ActivationMode::Hot),
            1 => Just(ActivationMode::Warm),
        ],
        prop_oneof![
            Just(StandbyType::Hot),
            Just(StandbyType::Warm),
            Just(StandbyType::Cold)
        ],
        any::<bool>(),
        1000u64..4000,
    )
        .prop_map(|(mode, standby, health_check, hb)| EngineConfig {
            mode,
            standby,
            heartbeat_delay: Duration::from_millis(hb),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            stable_after: Duration::from_secs(30),
            yield_timeout: Duration::from_secs(5),
            health_check,
            signal_wait: Duration::from_secs(5),
            rules: Rules::default(),
        })
}

/// The service process of one node, from its start until its exit reached the engine.
#[derive(Debug)]
struct Proc {
    pid: u32,
    /// Still running (a killed or crashed process stops at once; a terminated one at its exit).
    alive: bool,
    /// Started as active or told it is active, and still alive.
    active: bool,
    /// SIGTERM sent: it still acts until it exits.
    terminating: bool,
    /// Its `ServiceExited` is queued.
    exit_queued: bool,
    epoch: u64,
    /// It catches the activate signal (a service started active never gets it).
    handles_signal: bool,
    /// The agent asked to be told when it catches the signal.
    signal_watched: bool,
    started_at: Duration,
}

/// The service of a dead agent, alive until its guardian kills it.
#[derive(Debug)]
struct Orphan {
    node: usize,
    pid: u32,
    active: bool,
}

/// What a node last wrote in its membership record.
#[derive(Debug, Clone)]
struct Record {
    hot: bool,
    epoch: u64,
    holds_lock: bool,
    pid: Option<u32>,
    handover_to: Option<String>,
}

struct NodeW {
    name: String,
    cfg: EngineConfig,
    /// None while the agent is not running (killed, exited, or not restarted yet).
    engine: Option<Engine>,
    lock_q: VecDeque<Input>,
    svc_q: VecDeque<Input>,
    /// The service process, until its exit was delivered.
    proc_: Option<Proc>,
    was_hot: bool,
    hot_epoch: u64,
    /// An operator's PUT …/hot waits for an answer.
    put_pending: bool,
    /// Holds a lock on a lock file that was replaced; learns it at its next `VerifyLock`.
    lock_stale: bool,
    /// Processes the agent waits on (`WatchProcesses`).
    watching: Vec<u32>,
    record: Option<Record>,
    /// Its service exits at every start (a bad configuration), before it is ever ready.
    broken: bool,
    /// The agent has been told of such an exit since it started, of a process it saw up for
    /// less than `backoff_min` (one it saw up longer counts as started, whatever came after).
    failure_seen: bool,
    /// When the agent was told of its latest service start.
    started_seen: Duration,
    /// The agent was told that its configuration is outdated (until it is started again).
    outdated: bool,
    /// An operator asked this node to activate since then (not silent: allowed).
    asked_while_outdated: bool,
}

struct World {
    nodes: Vec<NodeW>,
    holder: Option<usize>,
    waiters: VecDeque<usize>,
    store: u64,
    store_fault: bool,
    heartbeat: HeartbeatView,
    mono: Duration,
    next_pid: u32,
    last_hot_epoch: u64,
    last_hot: Option<(usize, u64)>,
    /// The lock file was replaced: the next grant is on a file its holder created.
    recreated: bool,
    orphans: Vec<Orphan>,
    trace: Vec<String>,
}

impl World {
    fn new(cfgs: Vec<EngineConfig>) -> Self {
        Self::with_broken(cfgs, None)
    }

    /// A world whose node `broken` has a service that exits at every start.
    fn with_broken(cfgs: Vec<EngineConfig>, broken: Option<usize>) -> Self {
        let nodes = cfgs
            .into_iter()
            .enumerate()
            .map(|(i, cfg)| NodeW {
                name: format!("n{i}"),
                cfg,
                engine: None,
                lock_q: VecDeque::new(),
                svc_q: VecDeque::new(),
                proc_: None,
                was_hot: false,
                hot_epoch: 0,
                put_pending: false,
                lock_stale: false,
                watching: Vec::new(),
                record: None,
                broken: broken == Some(i),
                failure_seen: false,
                started_seen: Duration::ZERO,
                outdated: false,
                asked_while_outdated: false,
            })
            .collect();
        let mut w = World {
            nodes,
            holder: None,
            waiters: VecDeque::new(),
            store: 0,
            store_fault: false,
            heartbeat: HeartbeatView::Missing,
            mono: Duration::from_secs(1000),
            next_pid: 100,
            last_hot_epoch: 0,
            last_hot: None,
            recreated: false,
            orphans: Vec::new(),
            trace: Vec::new(),
        };
        for i in 0..w.nodes.len() {
            let c = &w.nodes[i].cfg;
            let broken = w.nodes[i].broken;
            w.log(format!(
                "{i}: {:?} standby {:?} health_check {} broken {broken}",
                c.mode, c.standby, c.health_check
            ));
            w.restart(i);
        }
        w
    }

    fn now(&self) -> Now {
        Now {
            mono: self.mono,
            wall_ms: WALL0 + self.mono.as_millis() as u64,
        }
    }

    fn log(&mut self, s: String) {
        self.trace.push(s);
    }

    /// Fails the test with the recent history.
    #[track_caller]
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let from = self.trace.len().saturating_sub(400);
            let mut t = String::new();
            for l in &self.trace[from..] {
                let _ = writeln!(t, "  {l}");
            }
            panic!("{}\n--- last steps ---\n{t}", what());
        }
    }

    fn live(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some()
    }

    // ------------------------------------------------------------ the kernel lock

    fn grant_next(&mut self) {
        if self.holder.is_some() {
            return;
        }
        while let Some(w) = self.waiters.pop_front() {
            if !self.live(w) {
                continue;
            }
            self.holder = Some(w);
            let previous = self.heartbeat.clone();
            let created = std::mem::take(&mut self.recreated);
            self.log(format!("kernel: lock -> {w} (created {created})"));
            self.nodes[w]
                .lock_q
                .push_back(Input::LockAcquired { previous, created });
            return;
        }
    }

    /// The kernel drops everything the agent `i` had: its lock, its wait. Its service lives on
    /// until its guardian kills it ([`Action::Reap`]).
    fn agent_gone(&mut self, i: usize) {
        self.nodes[i].engine = None;
        self.nodes[i].lock_q.clear();
        self.nodes[i].svc_q.clear();
        if let Some(p) = self.nodes[i].proc_.take() {
            if p.alive {
                self.orphans.push(Orphan {
                    node: i,
                    pid: p.pid,
                    active: p.active,
                });
            } else {
                self.process_gone(p.pid);
            }
        }
        self.nodes[i].was_hot = false;
        self.nodes[i].put_pending = false;
        self.nodes[i].lock_stale = false;
        self.nodes[i].watching.clear();
        self.waiters.retain(|&w| w != i);
        if self.holder == Some(i) {
            self.holder = None;
            self.grant_next();
        }
    }

    // ------------------------------------------------------------ engines

    fn restart(&mut self, i: usize) {
        if self.live(i) {
            return;
        }
        // See the modelling assumption at the top.
        while let Some(k) = self.orphans.iter().position(|o| o.node == i) {
            self.reap(k);
        }
        self.nodes[i].engine = Some(Engine::new(self.nodes[i].cfg.clone()));
        self.nodes[i].failure_seen = false;
        // Started with the configuration it must run.
        self.nodes[i].outdated = false;
        self.nodes[i].asked_while_outdated = false;
        let known_epoch = self.store;
        self.feed(i, Input::Start { known_epoch });
    }

    fn feed(&mut self, i: usize, input: Input) {
        let now = self.now();
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        let cmds = engine.handle(now, input.clone());
        let shown: Vec<&Command> = cmds
            .iter()
            .filter(|c| !matches!(c, Command::Record(_)))
            .collect();
        let t = self.mono.as_millis();
        self.log(format!("t={t} {i} <- {input:?} => {shown:?}"));
        self.execute(i, cmds);
        self.advertise(i);
        self.invariants();
    }

    /// The agent rewrites its membership record after every input.
    fn advertise(&mut self, i: usize) {
        let Some(e) = self.nodes[i].engine.as_ref() else {
            return;
        };
        self.nodes[i].record = Some(Record {
            hot: e.state() == State::Hot,
            epoch: e.epoch(),
            holds_lock: e.holds_lock(),
            pid: self.nodes[i].proc_.as_ref().map(|p| p.pid),
            handover_to: e.snapshot().handover_to,
        });
    }

    fn pid_alive(&self, pid: u32) -> bool {
        self.orphans.iter().any(|o| o.pid == pid)
            || self
                .nodes
                .iter()
                .any(|n| n.proc_.as_ref().is_some_and(|p| p.pid == pid && p.alive))
    }

    /// What node `i`'s agent learns from the membership records and /proc.
    fn peers(&self, i: usize) -> Vec<PeerView> {
        (0..self.nodes.len())
            .filter(|&j| j != i)
            .filter_map(|j| {
                let r = self.nodes[j].record.as_ref()?;
                let live_service = r
                    .pid
                    .filter(|&pid| (r.hot || r.holds_lock) && self.pid_alive(pid));
                Some(PeerView {
                    node: self.nodes[j].name.clone(),
                    hot: r.hot,
                    epoch: r.epoch,
                    holds_lock: r.holds_lock,
                    fresh: true,
                    agent_gone: !self.live(j),
                    live_service,
                    // The agent never names the node itself (see PeerView::handover_to).
                    handover_to: r.handover_to.clone().filter(|t| *t != self.nodes[i].name),
                })
            })
            .collect()
    }

    fn gossip(&mut self, i: usize) {
        if self.live(i) {
            let view = self.peers(i);
            self.feed(i, Input::Peers(view));
        }
    }

    /// The guardian of a dead agent kills its service.
    fn reap(&mut self, k: usize) {
        let o = self.orphans.remove(k);
        self.log(format!("guardian of {}: kills pid {}", o.node, o.pid));
        self.process_gone(o.pid);
        self.invariants();
    }

    fn process_gone(&mut self, pid: u32) {
        for n in &mut self.nodes {
            if let Some(k) = n.watching.iter().position(|&p| p == pid) {
                n.watching.remove(k);
                n.lock_q.push_back(Input::ProcessGone { pid });
            }
        }
    }

    /// The service of node `i` installs its handler for the activate signal.
    fn signal_ready(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc_.as_mut() {
            if p.alive && !p.handles_signal {
                p.handles_signal = true;
                if std::mem::take(&mut p.signal_watched) {
                    let pid = p.pid;
                    self.nodes[i]
                        .svc_q
                        .push_back(Input::ServiceSignalReady { pid });
                }
            }
        }
    }

    fn execute(&mut self, i: usize, cmds: Vec<Command>) {
        let mut answers = Vec::new();
        let n = cmds.len();
        for (k, c) in cmds.into_iter().enumerate() {
            match c {
                Command::Record(_) => {}
                Command::Campaign => {
                    let dup = self.holder == Some(i) || self.waiters.contains(&i);
                    self.check(!dup, || {
                        format!("{i} campaigns while already holding or waiting for the lock")
                    });
                    self.waiters.push_back(i);
                    self.grant_next();
                }
                Command::TryLock => match self.holder {
                    None => {
                        self.holder = Some(i);
                        self.waiters.retain(|&w| w != i);
                        let created = std::mem::take(&mut self.recreated);
                        answers.push(Input::Peers(self.peers(i)));
                        answers.push(Input::LockAcquired {
                            previous: self.heartbeat.clone(),
                            created,
                        });
                    }
                    // Already granted to this agent, its answer still queued.
                    Some(h) if h == i => {
                        answers.push(Input::Peers(self.peers(i)));
                        answers.push(Input::LockAcquired {
                            previous: self.heartbeat.clone(),
                            created: false,
                        })
                    }
                    Some(h) => answers.push(Input::LockBusy {
                        holder: Some(self.nodes[h].name.clone()),
                    }),
                },
                Command::Release => {
                    let active = self.nodes[i].proc_.as_ref().is_some_and(|p| p.active);
                    self.check(!active, || {
                        format!("{i} releases the lock while its service is active")
                    });
                    let holds = self.nodes[i]
                        .engine
                        .as_ref()
                        .is_some_and(|e| e.holds_lock());
                    if !holds && !self.nodes[i].lock_stale && self.holder != Some(i) {
                        // A campaign called off: the waiter leaves the kernel's queue.
                        self.waiters.retain(|&w| w != i);
                        continue;
                    }
                    if std::mem::take(&mut self.nodes[i].lock_stale) {
                        // A lock on the replaced file: giving it back changes nothing.
                        continue;
                    }
                    self.check(self.holder == Some(i), || {
                        format!("{i} releases a lock it does not hold ({:?})", self.holder)
                    });
                    // A grant still queued for this agent is now stale.
                    self.nodes[i]
                        .lock_q
                        .retain(|e| !matches!(e, Input::LockAcquired { .. }));
                    self.waiters.retain(|&w| w != i);
                    self.holder = None;
                    self.grant_next();
                }
                Command::PersistNextEpoch { floor } => {
                    let holds = self.nodes[i].engine.as_ref().unwrap().holds_lock();
                    let locked = self.holder == Some(i) || self.nodes[i].lock_stale;
                    self.check(locked && holds, || {
                        format!("{i} persists an epoch without the lock ({:?})", self.holder)
                    });
                    // Answered at once, as the agent does (the epoch store is a local fsync).
                    if self.store_fault {
                        self.store_fault = false;
                        answers.push(Input::EpochFailed {
                            reason: "injected".into(),
                        });
                    } else {
                        self.store = self.store.max(floor) + 1;
                        let epoch = self.store;
                        answers.push(Input::EpochDurable { epoch });
                    }
                }
                Command::StartService { role, epoch } => {
                    self.check(self.nodes[i].proc_.is_none(), || {
                        format!("{i} starts a second service process")
                    });
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    let broken = self.nodes[i].broken;
                    self.nodes[i].proc_ = Some(Proc {
                        pid,
                        alive: !broken,
                        active: role == Role::Active && !broken,
                        terminating: false,
                        exit_queued: broken,
                        epoch,
                        handles_signal: false,
                        signal_watched: false,
                        started_at: self.mono,
                    });
                    self.nodes[i].svc_q.push_back(Input::ServiceStarted { pid });
                    if broken {
                        self.nodes[i].svc_q.push_back(Input::ServiceExited {
                            reason: "exited with code 2".into(),
                        });
                    }
                }
                Command::NotifyActive { epoch } => {
                    self.check(self.nodes[i].proc_.is_some(), || {
                        format!("{i} notifies a service that is not there")
                    });
                    let p = self.nodes[i].proc_.as_ref().unwrap();
                    let (alive, handles, pid) = (p.alive, p.handles_signal, p.pid);
                    self.check(!alive || handles, || {
                        format!(
                            "{i} signals service pid {pid}, which does not handle the signal yet: it dies of it"
                        )
                    });
                    let p = self.nodes[i].proc_.as_mut().unwrap();
                    if p.alive {
                        p.active = true;
                        p.epoch = epoch;
                    }
                }
                Command::StopService { graceful } => {
                    self.check(self.nodes[i].proc_.is_some(), || {
                        format!("{i} stops a service that is not there")
                    });
                    let node = &mut self.nodes[i];
                    let p = node.proc_.as_mut().unwrap();
                    if !graceful {
                        p.alive = false;
                        p.active = false;
                    } else if p.alive {
                        p.terminating = true;
                    }
                    if !p.exit_queued {
                        p.exit_queued = true;
                        node.svc_q.push_back(Input::ServiceExited {
                            reason: if graceful { "terminated" } else { "killed" }.into(),
                        });
                    }
                }
                Command::WriteHeartbeat { .. } => {
                    let stale = self.nodes[i].lock_stale;
                    self.check(self.holder == Some(i) || stale, || {
                        format!("{i} writes the heartbeat without the lock")
                    });
                    if !stale {
                        self.heartbeat = HeartbeatView::At {
                            node: self.nodes[i].name.clone(),
                            wall_ms: self.now().wall_ms,
                        };
                    }
                }
                Command::VerifyLock | Command::ConfirmLock => {
                    let confirm = c == Command::ConfirmLock;
                    if std::mem::take(&mut self.nodes[i].lock_stale) {
                        answers.push(Input::LockLost {
                            reason: "lock file replaced".into(),
                        });
                    } else if confirm {
                        answers.push(Input::LockConfirmed);
                    }
                }
                Command::WatchProcesses { pids } => {
                    for pid in pids {
                        if self.pid_alive(pid) {
                            self.nodes[i].watching.push(pid);
                        } else {
                            self.nodes[i].lock_q.push_back(Input::ProcessGone { pid });
                        }
                    }
                }
                Command::WatchSignalReady { pid } => {
                    let there = self.nodes[i].proc_.as_ref().is_some_and(|p| p.pid == pid);
                    self.check(there, || format!("{i} watches a service that is not there"));
                    let node = &mut self.nodes[i];
                    let p = node.proc_.as_mut().unwrap();
                    if p.handles_signal {
                        node.svc_q.push_back(Input::ServiceSignalReady { pid });
                    } else {
                        p.signal_watched = true;
                    }
                }
                Command::Answer(a) => match a {
                    Answer::Activated { epoch } => {
                        let e = self.nodes[i].engine.as_ref().unwrap();
                        let (st, ep) = (e.state(), e.epoch());
                        self.check(self.nodes[i].put_pending, || {
                            format!("{i}: answer without PUT")
                        });
                        self.check(st == State::Hot && ep == epoch, || {
                            format!("{i} answers Activated {epoch} while {st} {ep}")
                        });
                        self.nodes[i].put_pending = false;
                    }
                    Answer::ActivateRefused { .. } => {
                        self.check(self.nodes[i].put_pending, || {
                            format!("{i}: answer without PUT")
                        });
                        self.nodes[i].put_pending = false;
                    }
                    Answer::SwitchoverStarted { .. } | Answer::SwitchoverRefused { .. } => {}
                    Answer::Released { .. } | Answer::ReleaseRefused { .. } => {
                        self.check(false, || format!("{i}: release answered, never asked"));
                    }
                },
                Command::DetachService => {
                    self.check(false, || format!("{i} detaches its service, never asked"));
                }
                Command::StopFailover { .. } => {
                    self.check(false, || format!("{i} stops failover, never asked"));
                }
                Command::Exit { code } => {
                    self.check(code == 0 && k + 1 == n, || format!("{i}: odd exit {code}"));
                    self.check(self.nodes[i].proc_.is_none(), || {
                        format!("{i} exits before its service is gone")
                    });
                    let holds = self.nodes[i].engine.as_ref().unwrap().holds_lock();
                    self.check(!holds, || format!("{i} exits holding the lock"));
                    self.agent_gone(i);
                    return;
                }
            }
        }
        for a in answers {
            self.feed(i, a);
        }
    }

    // ------------------------------------------------------------ invariants

    fn invariants(&mut self) {
        let actives: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].proc_.as_ref().is_some_and(|p| p.active))
            .chain(self.orphans.iter().filter(|o| o.active).map(|o| o.node))
            .collect();
        self.check(actives.len() <= 1, || {
            format!("two active services: {actives:?}")
        });

        let mut hot = Vec::new();
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if let Some(p) = &node.proc_ {
                self.check(!p.active || p.alive, || format!("{i}: dead process active"));
                if p.active {
                    let e = node.engine.as_ref();
                    let ok = e.is_some_and(|e| {
                        e.holds_lock() && (e.state() == State::Hot || p.terminating)
                    }) && (self.holder == Some(i) || node.lock_stale);
                    self.check(ok, || {
                        format!(
                            "{i}: service pid {} active while the node is {:?}, lock holder {:?}",
                            p.pid,
                            e.map(|e| e.snapshot()),
                            self.holder
                        )
                    });
                    self.check(p.epoch == self.store, || {
                        format!(
                            "{i}: active with epoch {} but the store is at {}",
                            p.epoch, self.store
                        )
                    });
                }
            }
            let Some(e) = node.engine.as_ref() else {
                continue;
            };
            // The engine's view of its service matches the world.
            let stopped = e.service() == SvcState::Stopped;
            self.check(stopped == node.proc_.is_none(), || {
                format!(
                    "{i}: engine thinks {:?}, world has {:?}",
                    e.service(),
                    node.proc_
                )
            });
            self.check(
                !e.holds_lock() || self.holder == Some(i) || node.lock_stale,
                || {
                    format!(
                        "{i}: believes it holds the lock, kernel says {:?}",
                        self.holder
                    )
                },
            );
            if e.state() == State::Hot {
                hot.push(i);
                self.check(e.holds_lock(), || format!("{i}: Hot without the lock"));
            }
        }
        self.check(hot.len() <= 1, || format!("two Hot nodes: {hot:?}"));

        for i in 0..self.nodes.len() {
            let (is_hot, epoch) = match &self.nodes[i].engine {
                Some(e) => (e.state() == State::Hot, e.epoch()),
                None => (false, 0),
            };
            if is_hot && !self.nodes[i].was_hot {
                let n = &self.nodes[i];
                // A process the agent has seen up for `backoff_min` counts as started, whatever
                // comes after (its exit may still be on its way here, as no supervisor is that
                // slow in life): the agent can know no more.
                let seen_up = n.engine.as_ref().is_some_and(|e| {
                    matches!(e.service(), SvcState::Running { .. })
                        && self.mono.saturating_sub(n.started_seen) >= n.cfg.backoff_min
                });
                let knew =
                    n.broken && n.failure_seen && !seen_up && n.cfg.standby.runs_while_standby();
                self.check(!knew, || {
                    format!("{i} went Hot although its service failed and was never ready since")
                });
                self.check(!n.outdated || n.asked_while_outdated, || {
                    format!("{i} went Hot with an outdated configuration, unasked")
                });
                let last = self.last_hot_epoch;
                self.check(epoch > last, || {
                    format!("{i}: Hot with epoch {epoch}, not above the previous Hot epoch {last}")
                });
                self.last_hot_epoch = epoch;
                self.last_hot = Some((i, epoch));
                self.nodes[i].hot_epoch = epoch;
            } else if is_hot {
                let was = self.nodes[i].hot_epoch;
                self.check(epoch == was, || {
                    format!("{i}: epoch changed while Hot: {was} -> {epoch}")
                });
            }
            self.nodes[i].was_hot = is_hot;
        }
    }

    // ------------------------------------------------------------ actions

    fn pending(&self) -> Vec<(usize, bool)> {
        let mut v = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.lock_q.is_empty() {
                v.push((i, false));
            }
            if !n.svc_q.is_empty() {
                v.push((i, true));
            }
        }
        v
    }

    fn deliver(&mut self, i: usize, svc: bool) {
        let q = if svc {
            &mut self.nodes[i].svc_q
        } else {
            &mut self.nodes[i].lock_q
        };
        let Some(ev) = q.pop_front() else { return };
        if let Input::ServiceExited { .. } = ev {
            // The process is gone for good now (a graceful stop ends here).
            if let Some(p) = self.nodes[i].proc_.take() {
                self.process_gone(p.pid);
            }
            // A failure the agent can tell: the service ended without being asked to stop.
            let asked = self.nodes[i]
                .engine
                .as_ref()
                .is_some_and(|e| e.service() == SvcState::Stopping);
            let n = &mut self.nodes[i];
            let up = self.mono.saturating_sub(n.started_seen);
            if up >= n.cfg.backoff_min {
                // Seen up this long, it counts as started, however it ended: also when the agent
                // stopped it (a lost grant), as the engine judges it. Only unasked exits counted
                // here before, so a broken service whose exit came late (it ran for
                // `backoff_min`) and was then killed by its agent still counted as never ready:
                // the engine rightly rejoined, and this oracle called it a takeover by a broken node.
                n.failure_seen = false;
            } else if n.broken && !asked {
                n.failure_seen = true;
            }
        }
        if let Input::ServiceStarted { .. } = ev {
            self.nodes[i].started_seen = self.mono;
        }
        if let Input::LockAcquired { .. } = ev {
            // The agent reads the membership records right as it is granted the lock, and
            // drops a grant it no longer holds (released meanwhile).
            self.gossip(i);
            if self.holder != Some(i) {
                return;
            }
        }
        self.feed(i, ev);
    }

    fn step(&mut self, a: &Action) {
        let len = self.nodes.len();
        self.log(format!("== {a:?}"));
        match *a {
            Action::Deliver { pick } => {
                let p = self.pending();
                if !p.is_empty() {
                    let (i, svc) = p[pick % p.len()];
                    self.deliver(i, svc);
                }
            }
            Action::Tick { ms } => {
                self.mono += Duration::from_millis(ms);
                for i in 0..len {
                    let started = self.nodes[i].proc_.as_ref().map(|p| p.started_at);
                    if started.is_some_and(|t| self.mono - t >= Duration::from_secs(4)) {
                        self.signal_ready(i);
                    }
                }
                for i in 0..len {
                    self.gossip(i);
                    self.feed(i, Input::Tick);
                }
            }
            Action::Kill { node } => {
                let i = node % len;
                if self.live(i) {
                    self.agent_gone(i);
                    self.invariants();
                }
            }
            Action::Restart { node } => self.restart(node % len),
            Action::Crash { node } => {
                let i = node % len;
                if let Some(p) = self.nodes[i].proc_.as_mut() {
                    if p.alive {
                        p.alive = false;
                        p.active = false;
                        if !p.exit_queued {
                            p.exit_queued = true;
                            self.nodes[i].svc_q.push_back(Input::ServiceExited {
                                reason: "crashed".into(),
                            });
                        }
                    }
                }
            }
            Action::HealthOk { node } | Action::HealthFail { node } => {
                let i = node % len;
                if self.nodes[i].proc_.as_ref().is_some_and(|p| p.alive) {
                    let input = if matches!(a, Action::HealthOk { .. }) {
                        Input::HealthOk
                    } else {
                        Input::HealthFailed {
                            reason: "injected".into(),
                        }
                    };
                    self.feed(i, input);
                }
            }
            Action::Activate { node } => {
                let i = node % len;
                if self.live(i) {
                    if self.nodes[i].outdated {
                        self.nodes[i].asked_while_outdated = true;
                    }
                    self.nodes[i].put_pending = true;
                    self.feed(i, Input::Activate);
                }
            }
            Action::Switchover { node, to } => {
                let i = node % len;
                let ready: Vec<String> = (0..len)
                    .filter(|&j| j != i)
                    .filter(|&j| self.nodes[j].engine.as_ref().is_some_and(|e| e.ready()))
                    .map(|j| self.nodes[j].name.clone())
                    .collect();
                let to = to
                    .filter(|_| !ready.is_empty())
                    .map(|k| ready[k % ready.len()].clone());
                self.feed(i, Input::Switchover { ready, to });
            }
            Action::LockLost => {
                if let Some(h) = self.holder {
                    // Only a holder that knows it holds: a grant still queued stays a grant.
                    if self.nodes[h]
                        .engine
                        .as_ref()
                        .is_some_and(|e| e.holds_lock())
                    {
                        self.holder = None;
                        self.nodes[h].lock_stale = true;
                        self.recreated = true;
                        // A duplicate grant still queued (TryLock racing the campaign) was for
                        // the lost lock: the agent drops it, as on Release.
                        self.nodes[h]
                            .lock_q
                            .retain(|e| !matches!(e, Input::LockAcquired { .. }));
                        self.grant_next();
                    }
                }
            }
            Action::Reap { pick } => {
                if !self.orphans.is_empty() {
                    self.reap(pick % self.orphans.len());
                }
            }
            Action::SignalReady { node } => self.signal_ready(node % len),
            Action::Shutdown { node } => self.feed(node % len, Input::Shutdown),
            Action::Gossip { node } => self.gossip(node % len),
            Action::StoreFault => self.store_fault = true,
            Action::Outdate { node } => {
                let i = node % len;
                if self.live(i) && !self.nodes[i].outdated {
                    self.nodes[i].outdated = true;
                    // An operator's activation already on its way was asked for this node as
                    // it is: honoured, not silent.
                    self.nodes[i].asked_while_outdated = self.nodes[i].put_pending;
                    self.feed(
                        i,
                        Input::Configuration {
                            outdated: Some("its configuration changed".into()),
                        },
                    );
                }
            }
        }
    }

    /// Faults stop: deliver everything, keep services healthy, let timers run out.
    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            // Their hosts start the standbys that run an outdated configuration again with the
            // new one; the active keeps its own.
            for i in 0..self.nodes.len() {
                let hot = self.nodes[i]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.state() == State::Hot);
                if self.nodes[i].outdated && !hot {
                    self.log(format!("== host restarts {i} with its new configuration"));
                    self.agent_gone(i);
                }
            }
            while !self.orphans.is_empty() {
                self.reap(0);
            }
            for i in 0..self.nodes.len() {
                self.restart(i);
                self.signal_ready(i);
            }
            let mut guard = 0;
            while !self.pending().is_empty() {
                let (i, svc) = self.pending()[0];
                self.deliver(i, svc);
                guard += 1;
                self.check(guard < 10_000, || "events never settle".to_string());
                if self.pending().is_empty() {
                    // A service started while the events settled installs its handler long
                    // before the 10 s below pass (the engine's signal_wait fallback is for
                    // services that never do).
                    for i in 0..self.nodes.len() {
                        self.signal_ready(i);
                    }
                }
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].proc_.as_ref().is_some_and(|p| p.alive) {
                    self.feed(i, Input::HealthOk);
                }
            }
            self.mono += Duration::from_secs(10);
            for i in 0..self.nodes.len() {
                self.gossip(i);
                self.feed(i, Input::Tick);
            }
        }
    }

    fn hot_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.state() == State::Hot)
            })
            .collect()
    }

    /// After the faults, the group recovers by itself (TryLock groups) or with one PUT …/hot.
    fn liveness(&mut self) {
        self.log("== settle".into());
        self.store_fault = false;
        self.settle(6);
        let all_trylock = self
            .nodes
            .iter()
            .all(|n| n.cfg.mode == ActivationMode::TryLock);
        if all_trylock {
            let hot = self.hot_nodes();
            self.check(hot.len() == 1, || {
                format!("TryLock group without an active: {hot:?}")
            });
        }
        if self.hot_nodes().is_empty() {
            let i = self.holder.unwrap_or(0);
            self.log(format!("== operator activates {i}"));
            self.nodes[i].put_pending = true;
            self.feed(i, Input::Activate);
            self.settle(6);
        }
        let hot = self.hot_nodes();
        self.check(hot.len() == 1, || {
            format!("no single active after recovery: {hot:?}")
        });
        let h = hot[0];
        let active = self.nodes[h].proc_.as_ref().is_some_and(|p| p.active);
        self.check(active, || {
            format!("{h} is Hot but its service is not active")
        });
        for (i, n) in self.nodes.iter().enumerate() {
            self.check(!n.put_pending, || {
                format!("{i}: a PUT …/hot was never answered")
            });
        }
    }
}

fn world() -> impl Strategy<Value = (Vec<EngineConfig>, Vec<Action>)> {
    (
        prop::collection::vec(config(), 2..=4),
        prop::collection::vec(action(), 1..200),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1000),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_two_actives((cfgs, actions) in world()) {
        let mut w = World::new(cfgs);
        for a in &actions {
            w.step(a);
        }
        w.liveness();
    }
}

/// The same world, where the configuration of any node may change at any time (an import
/// while failover runs). Its own strategy: the counterexample searches below replay the fixed
/// random stream of [`world`].
fn outdating_world() -> impl Strategy<Value = (Vec<EngineConfig>, Vec<Action>)> {
    let step = prop_oneof![
        30 => action(),
        1 => (0usize..4).prop_map(|node| Action::Outdate { node }),
    ];
    (
        prop::collection::vec(config(), 2..=4),
        prop::collection::vec(step, 1..200),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(500),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Never two actives, and a node told that its configuration changed goes Hot only when an
    /// operator asks (checked at every step); the group recovers once hosts restart such nodes.
    #[test]
    fn a_node_whose_configuration_changed_never_takes_over_unasked((cfgs, actions) in outdating_world()) {
        let mut w = World::new(cfgs);
        for a in &actions {
            w.step(a);
        }
        w.liveness();
    }
}

/// The same world, all nodes TryLock with hot standbys, so that takeovers happen often.
fn trylock_world() -> impl Strategy<Value = (Vec<EngineConfig>, Vec<Action>)> {
    (
        prop::collection::vec(
            config().prop_map(|mut c| {
                c.mode = ActivationMode::TryLock;
                c
            }),
            2..=4,
        ),
        prop::collection::vec(action(), 1..200),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(400),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn trylock_group_never_two_actives_and_recovers((cfgs, actions) in trylock_world()) {
        let mut w = World::new(cfgs);
        for a in &actions {
            w.step(a);
        }
        w.liveness();
    }
}

/// Runs the world with one rule switched off (and, when given, every node in one activation
/// mode) and returns the first counterexample's message; None when proptest found none. The
/// random source is fixed, so the outcome does not change from run to run.
fn counterexample(off: fn(&mut Rules), mode: Option<ActivationMode>, cases: u32) -> Option<String> {
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases,
            max_shrink_iters: 0,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = world().prop_map(move |(mut cfgs, actions)| {
        for c in &mut cfgs {
            off(&mut c.rules);
            if let Some(m) = mode {
                c.mode = m;
            }
        }
        (cfgs, actions)
    });
    let outcome = runner.run(&strategy, |(cfgs, actions)| {
        let mut w = World::new(cfgs);
        for a in &actions {
            w.step(a);
        }
        w.liveness();
        Ok(())
    });
    match outcome {
        Err(TestError::Fail(why, _)) => Some(why.to_string()),
        _ => None,
    }
}

#[track_caller]
fn assert_found(off: fn(&mut Rules), mode: Option<ActivationMode>, want: &[&str]) {
    let why = counterexample(off, mode, 3000).expect("the simulation found no counterexample");
    assert!(
        want.iter().any(|w| why.contains(w)),
        "found something else: {why}"
    );
}

/// Two services acting, or two nodes Hot (each believing it is the group's active).
const TWO_ACTIVES: &[&str] = &["two active services", "two Hot nodes"];

#[test]
fn without_awaiting_the_previous_service_there_are_two_actives() {
    assert_found(|r| r.await_previous_service = false, None, TWO_ACTIVES);
}

#[test]
fn without_deferring_a_grant_under_a_live_holder_there_are_two_actives() {
    assert_found(
        |r| r.defer_recreated_lock = false,
        Some(ActivationMode::TryLock),
        TWO_ACTIVES,
    );
}

#[test]
fn without_releasing_a_tried_lock_under_a_live_holder_there_are_two_actives() {
    // Warm mode: every activation is a try of its own (an operator's PUT).
    assert_found(
        |r| r.release_recreated_trylock = false,
        Some(ActivationMode::Warm),
        TWO_ACTIVES,
    );
}

#[test]
fn without_waiting_for_the_signal_handler_the_signal_kills_the_standby() {
    assert_found(
        |r| r.wait_signal_ready = false,
        None,
        &["does not handle the signal yet"],
    );
}

/// A TryLock group with hot or warm standbys whose node 0 has a service that exits at every start
/// (a bad configuration), without operator activations (an operator may force any node Hot).
fn broken_world() -> impl Strategy<Value = (Vec<EngineConfig>, Vec<Action>)> {
    (
        prop::collection::vec(
            config().prop_map(|mut c| {
                c.mode = ActivationMode::TryLock;
                if c.standby == StandbyType::Cold {
                    c.standby = StandbyType::Warm;
                }
                c
            }),
            2..=4,
        ),
        prop::collection::vec(
            action().prop_filter("no operator activation", |a| {
                !matches!(a, Action::Activate { .. })
            }),
            1..200,
        ),
    )
}

fn run_broken(cfgs: Vec<EngineConfig>, actions: &[Action]) {
    let mut w = World::with_broken(cfgs, Some(0));
    for a in actions {
        w.step(a);
    }
    // The group recovers with a node whose service runs, never with the broken one.
    w.liveness();
    let hot = w.hot_nodes();
    w.check(hot != [0], || {
        "the broken node is the active one".to_string()
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(300),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_node_whose_service_cannot_start_never_takes_over((cfgs, actions) in broken_world()) {
        run_broken(cfgs, &actions);
    }
}

#[test]
fn without_standing_aside_a_node_whose_service_cannot_start_takes_over() {
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases: 1000,
            max_shrink_iters: 0,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = broken_world().prop_map(|(mut cfgs, actions)| {
        for c in &mut cfgs {
            c.rules.campaign_only_when_ready = false;
        }
        (cfgs, actions)
    });
    let outcome = runner.run(&strategy, |(cfgs, actions)| {
        run_broken(cfgs, &actions);
        Ok(())
    });
    let Err(TestError::Fail(why, _)) = outcome else {
        panic!("the simulation found no counterexample");
    };
    let why = why.to_string();
    assert!(
        why.contains("although its service failed") || why.contains("broken node"),
        "found something else: {why}"
    );
}
