//! Issue 12's rules. A Hot-mode node refused the lock at start keeps its reason true. The
//! preference rule (`node.priority`, `activation.failback`) in a multi-node world: engines
//! joined by a lock that the test hands to any waiter it likes (the kernel's order is not ours to
//! choose), membership records, and services that die with their agent.
//!
//! Scenarios show each documented behaviour; the property test checks, over random kills,
//! restarts, grants and time, that there are never two actives and that with failback the group
//! ends with a node of the highest priority alive as its active.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use understudy_engine::{
    ActivationMode, Command, Engine, EngineConfig, EventKind, HeartbeatView, Input, Now, PeerView,
    Preference, Rank, Rules, Snapshot, StandbyType, State, PREFERENCE_DEFER,
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

fn cfg() -> EngineConfig {
    cfg_of(ActivationMode::TryLock, StandbyType::Hot)
}

fn cfg_of(mode: ActivationMode, standby: StandbyType) -> EngineConfig {
    EngineConfig {
        mode,
        standby,
        heartbeat_delay: Duration::from_secs(2),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        stable_after: Duration::from_secs(60),
        yield_timeout: Duration::from_secs(5),
        health_check: false,
        signal_wait: Duration::from_secs(5),
        rules: Rules::default(),
    }
}

struct Node {
    name: String,
    pref: Preference,
    e: Engine,
    alive: bool,
    /// The last record the node wrote (kept after it dies, as a file would be).
    record: Option<Snapshot>,
    service_active: bool,
    /// Every event it recorded: (kind, detail).
    log: Vec<(EventKind, String)>,
}

struct World {
    nodes: Vec<Node>,
    mono: Duration,
    holder: Option<usize>,
    /// Nodes waiting for the lock, in the order they asked.
    waiting: Vec<usize>,
    epoch: u64,
    next_pid: u32,
}

impl World {
    fn new(prefs: &[(&str, u32, Option<Duration>)]) -> World {
        let nodes = prefs
            .iter()
            .map(|(name, priority, failback)| {
                let pref = Preference {
                    priority: *priority,
                    failback: *failback,
                };
                Node {
                    name: name.to_string(),
                    e: Engine::new(cfg()).with_preference(pref.clone()),
                    pref,
                    alive: false,
                    record: None,
                    service_active: false,
                    log: Vec::new(),
                }
            })
            .collect();
        World {
            nodes,
            mono: Duration::from_secs(100),
            holder: None,
            waiting: Vec::new(),
            epoch: 0,
            next_pid: 1000,
        }
    }

    fn idx(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node")
    }

    fn now(&self) -> Now {
        Now {
            mono: self.mono,
            wall_ms: WALL0 + self.mono.as_millis() as u64,
        }
    }

    fn peers(&self, i: usize) -> Vec<PeerView> {
        (0..self.nodes.len())
            .filter(|&j| j != i)
            .filter_map(|j| {
                let n = &self.nodes[j];
                let r = n.record.as_ref()?;
                Some(PeerView {
                    node: n.name.clone(),
                    hot: r.state == State::Hot,
                    epoch: r.epoch,
                    holds_lock: r.holds_lock,
                    fresh: true,
                    agent_gone: !n.alive,
                    // A service dies with its agent here (the guardian), at once.
                    live_service: None,
                    handover_to: r.handover_to.clone().filter(|t| *t != self.nodes[i].name),
                })
            })
            .collect()
    }

    fn ranks(&self, i: usize) -> Vec<Rank> {
        (0..self.nodes.len())
            .filter(|&j| j != i)
            .filter_map(|j| {
                let n = &self.nodes[j];
                Some(Rank {
                    node: n.name.clone(),
                    priority: n.pref.priority,
                    ready: n.record.as_ref()?.ready,
                })
            })
            .collect()
    }

    fn start(&mut self, name: &str) {
        let i = self.idx(name);
        let n = &mut self.nodes[i];
        n.e = Engine::new(cfg()).with_preference(n.pref.clone());
        n.alive = true;
        let known_epoch = self.epoch;
        self.feed(i, vec![Input::Start { known_epoch }]);
    }

    fn kill(&mut self, name: &str) {
        let i = self.idx(name);
        self.nodes[i].alive = false;
        self.nodes[i].service_active = false;
        if self.holder == Some(i) {
            self.holder = None;
        }
        self.waiting.retain(|&w| w != i);
    }

    /// Hand the free lock to waiter `name`.
    fn grant_to(&mut self, name: &str) {
        let i = self.idx(name);
        assert!(self.holder.is_none(), "the lock is held");
        assert!(
            self.waiting.contains(&i),
            "{name} does not wait for the lock"
        );
        self.grant(i);
    }

    fn grant(&mut self, i: usize) {
        self.waiting.retain(|&w| w != i);
        self.holder = Some(i);
        let view = vec![
            Input::Peers(self.peers(i)),
            Input::Ranks(self.ranks(i)),
            Input::LockAcquired {
                previous: HeartbeatView::Missing,
                created: false,
            },
        ];
        self.feed(i, view);
    }

    fn tick(&mut self, d: Duration) {
        self.mono += d;
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive {
                let view = vec![
                    Input::Peers(self.peers(i)),
                    Input::Ranks(self.ranks(i)),
                    Input::Tick,
                ];
                self.feed(i, view);
            }
        }
    }

    fn feed(&mut self, i: usize, inputs: Vec<Input>) {
        let mut queue = VecDeque::from(inputs);
        while let Some(input) = queue.pop_front() {
            if !self.nodes[i].alive {
                return;
            }
            let now = self.now();
            let cmds = self.nodes[i].e.handle(now, input);
            for c in cmds {
                self.execute(i, c, &mut queue);
            }
        }
        let n = &mut self.nodes[i];
        n.record = Some(n.e.snapshot());
        self.check();
    }

    fn execute(&mut self, i: usize, c: Command, answers: &mut VecDeque<Input>) {
        match c {
            Command::Campaign => {
                if self.holder != Some(i) && !self.waiting.contains(&i) {
                    self.waiting.push(i);
                }
            }
            Command::TryLock => {
                if self.holder.is_none() {
                    self.waiting.retain(|&w| w != i);
                    self.holder = Some(i);
                    answers.push_back(Input::Peers(self.peers(i)));
                    answers.push_back(Input::Ranks(self.ranks(i)));
                    answers.push_back(Input::LockAcquired {
                        previous: HeartbeatView::Missing,
                        created: false,
                    });
                } else {
                    let holder = self.holder.map(|h| self.nodes[h].name.clone());
                    answers.push_back(Input::LockBusy { holder });
                }
            }
            Command::DetachService => panic!("node {i} detaches its service, never asked"),
            Command::StopFailover { .. } => panic!("node {i} stops failover, never asked"),
            Command::Release => {
                // The record says it let go before the lock passes (the agent writes it first).
                self.nodes[i].record = Some(self.nodes[i].e.snapshot());
                if self.holder == Some(i) {
                    self.holder = None;
                }
                self.waiting.retain(|&w| w != i);
            }
            Command::PersistNextEpoch { floor } => {
                self.epoch = self.epoch.max(floor) + 1;
                answers.push_back(Input::EpochDurable { epoch: self.epoch });
            }
            Command::StartService { role, .. } => {
                self.next_pid += 1;
                let pid = self.next_pid;
                self.nodes[i].service_active = role == understudy_engine::Role::Active;
                answers.push_back(Input::ServiceStarted { pid });
                answers.push_back(Input::ServiceSignalReady { pid });
            }
            Command::NotifyActive { .. } => self.nodes[i].service_active = true,
            Command::StopService { .. } => {
                self.nodes[i].service_active = false;
                answers.push_back(Input::ServiceExited {
                    reason: "exited with code 0".into(),
                });
            }
            Command::ConfirmLock => answers.push_back(if self.holder == Some(i) {
                Input::LockConfirmed
            } else {
                Input::LockLost {
                    reason: "replaced".into(),
                }
            }),
            Command::WatchProcesses { pids } => {
                answers.extend(pids.into_iter().map(|pid| Input::ProcessGone { pid }))
            }
            Command::WatchSignalReady { pid } => {
                answers.push_back(Input::ServiceSignalReady { pid })
            }
            Command::Record(ev) => self.nodes[i].log.push((ev.kind, ev.detail)),
            Command::Exit { .. } => self.nodes[i].alive = false,
            Command::WriteHeartbeat { .. } | Command::VerifyLock | Command::Answer(_) => {}
        }
    }

    /// Never two actives: one Hot node at most, holding the lock; one acting service at most.
    fn check(&self) {
        let hot: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.e.state() == State::Hot)
            .map(|n| n.name.as_str())
            .collect();
        assert!(hot.len() <= 1, "TWO ACTIVES: {hot:?}");
        if let Some(h) = hot.first() {
            assert_eq!(
                self.holder.map(|i| self.nodes[i].name.as_str()),
                Some(*h),
                "{h} is Hot without the lock"
            );
        }
        let acting = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.service_active)
            .count();
        assert!(acting <= 1, "two services acting");
    }

    fn hot(&self) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.alive && n.e.state() == State::Hot)
            .map(|n| n.name.as_str())
    }

    fn gave_back(&self, name: &str) -> bool {
        self.nodes[self.idx(name)]
            .log
            .iter()
            .any(|(k, d)| *k == EventKind::LockReleased && d.contains("preferred"))
    }

    /// c active; then b and a waiting for the lock, b first.
    fn c_active_then_b_and_a(&mut self) {
        self.start("c");
        self.grant_to("c");
        assert_eq!(self.hot(), Some("c"));
        self.start("b");
        self.start("a");
        self.tick(Duration::from_millis(100));
    }
}

fn three(failback: Option<Duration>) -> World {
    World::new(&[("a", 10, failback), ("b", 0, failback), ("c", 0, failback)])
}

#[test]
fn a_grant_that_reaches_a_lower_standby_goes_to_the_ready_preferred_one() {
    let mut w = three(None);
    w.c_active_then_b_and_a();
    w.kill("c");
    let t = w.mono;
    w.grant_to("b");
    assert!(w.gave_back("b"), "b kept the lock");
    assert_eq!(w.hot(), None);
    w.grant_to("a");
    assert_eq!(w.hot(), Some("a"));
    assert_eq!(
        w.mono, t,
        "the preferred node took over without waiting for time"
    );
    // b waits for the lock again once a holds it.
    w.tick(Duration::from_millis(100));
    assert!(w.waiting.contains(&w.idx("b")), "b stays aside");
}

#[test]
fn no_deferral_for_a_preferred_node_that_is_gone() {
    let mut w = three(None);
    w.c_active_then_b_and_a();
    w.kill("a");
    w.kill("c");
    w.grant_to("b");
    assert_eq!(w.hot(), Some("b"));
    assert!(!w.gave_back("b"));
}

#[test]
fn a_deferral_ends_when_the_preferred_node_does_not_take_the_lock() {
    let mut w = three(None);
    w.c_active_then_b_and_a();
    w.kill("c");
    w.grant_to("b");
    assert!(w.gave_back("b"));
    // a never gets the lock (its campaign is stuck): b campaigns again after the deferral and
    // is not held back a second time.
    let a = w.idx("a");
    w.waiting.retain(|&x| x != a);
    w.tick(PREFERENCE_DEFER / 2);
    assert!(!w.waiting.contains(&w.idx("b")), "b came back too early");
    w.tick(PREFERENCE_DEFER);
    w.grant_to("b");
    assert_eq!(w.hot(), Some("b"));
}

#[test]
fn failback_hands_activity_to_the_preferred_node_once_ready_long_enough() {
    let mut w = three(Some(Duration::from_secs(1)));
    w.c_active_then_b_and_a();
    w.kill("c");
    w.kill("a");
    w.grant_to("b");
    assert_eq!(w.hot(), Some("b"));
    w.start("a");
    w.tick(Duration::from_millis(500));
    assert_eq!(w.hot(), Some("b"), "too early for failback");
    for _ in 0..12 {
        w.tick(Duration::from_millis(100));
    }
    assert_eq!(w.hot(), None, "b did not hand over");
    w.grant_to("a");
    assert_eq!(w.hot(), Some("a"));
    let b = &w.nodes[w.idx("b")];
    assert!(
        b.log
            .iter()
            .any(|(k, d)| *k == EventKind::Switchover && d.contains("failback to a")),
        "{:?}",
        b.log
    );
}

#[derive(Debug, Clone)]
enum Action {
    Grant { pick: usize },
    Tick { ms: u64 },
    Kill { node: usize },
    Start { node: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => any::<usize>().prop_map(|pick| Action::Grant { pick }),
        4 => (0u64..1500).prop_map(|ms| Action::Tick { ms }),
        1 => (0usize..3).prop_map(|node| Action::Kill { node }),
        2 => (0usize..3).prop_map(|node| Action::Start { node }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    #[test]
    fn never_two_actives_and_failback_ends_with_a_highest_priority_active(
        prios in proptest::collection::vec(0u32..3, 3),
        actions in proptest::collection::vec(action(), 1..60),
    ) {
        let fb = Some(Duration::from_secs(1));
        let mut w = World::new(&[("a", prios[0], fb), ("b", prios[1], fb), ("c", prios[2], fb)]);
        for n in ["a", "b", "c"] {
            w.start(n);
        }
        let names = ["a", "b", "c"];
        for a in &actions {
            match a {
                Action::Grant { pick } => {
                    if w.holder.is_none() && !w.waiting.is_empty() {
                        let i = w.waiting[pick % w.waiting.len()];
                        w.grant(i);
                    }
                }
                Action::Tick { ms } => w.tick(Duration::from_millis(*ms)),
                Action::Kill { node } => w.kill(names[*node]),
                Action::Start { node } => {
                    if !w.nodes[*node].alive {
                        w.start(names[*node]);
                    }
                }
            }
        }
        // Settle: grants go to the first waiter, time passes.
        for _ in 0..200 {
            if w.holder.is_none() && !w.waiting.is_empty() {
                let i = w.waiting[0];
                w.grant(i);
            }
            w.tick(Duration::from_millis(100));
        }
        let alive: Vec<&Node> = w.nodes.iter().filter(|n| n.alive).collect();
        if let Some(top) = alive.iter().map(|n| n.pref.priority).max() {
            let hot = w.hot().map(str::to_string);
            prop_assert!(hot.is_some(), "no active among {:?}", alive.iter().map(|n| (&n.name, n.e.snapshot().waiting)).collect::<Vec<_>>());
            let h = &w.nodes[w.idx(hot.as_deref().unwrap_or_default())];
            prop_assert_eq!(h.pref.priority, top, "active {} is not of the highest priority", h.name);
        }
    }
}

fn refused_engine() -> Engine {
    Engine::new(cfg_of(ActivationMode::Hot, StandbyType::Cold))
}

fn at_ten() -> Now {
    Now {
        mono: Duration::from_secs(10),
        wall_ms: 1_700_000_000_000,
    }
}

fn peer(node: &str, hot: bool, agent_gone: bool) -> PeerView {
    PeerView {
        node: node.into(),
        hot,
        epoch: 3,
        holds_lock: hot,
        fresh: true,
        agent_gone,
        live_service: None,
        handover_to: None,
    }
}

fn waiting(e: &Engine) -> String {
    e.snapshot().waiting.unwrap_or_default()
}

#[test]
fn the_refusal_follows_the_holder_and_says_when_it_is_gone() {
    let mut e = refused_engine();
    e.handle(at_ten(), Input::Start { known_epoch: 3 });
    e.handle(
        at_ten(),
        Input::LockBusy {
            holder: Some("w1".into()),
        },
    );
    assert!(
        waiting(&e).contains("node w1 holds the group lock"),
        "{}",
        waiting(&e)
    );
    e.handle(at_ten(), Input::Peers(vec![peer("w1", true, false)]));
    assert!(waiting(&e).contains("node w1 holds the group lock"));
    // w1 is killed: its record still says Hot, but its agent is gone.
    e.handle(at_ten(), Input::Peers(vec![peer("w1", true, true)]));
    let w = waiting(&e);
    assert!(
        w.contains("node w1 held the group lock, but it is gone and no node is active"),
        "{w}"
    );
    assert!(!w.contains("holds the group lock"), "{w}");
    assert!(
        e.snapshot().ready,
        "a refused node is still a ready standby"
    );
    assert_eq!(
        e.state(),
        State::Warm,
        "Hot mode never takes the lock by itself later"
    );
    // Another node became active meanwhile: the reason names it.
    e.handle(
        at_ten(),
        Input::Peers(vec![peer("w1", true, true), peer("w2", true, false)]),
    );
    assert!(
        waiting(&e).contains("node w2 holds the group lock"),
        "{}",
        waiting(&e)
    );
}
