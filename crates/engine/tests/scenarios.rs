//! Documented behaviours of the activation engine, one scenario at a time, with injected time.
//!
//! Each test drives a single [`Engine`] through its inputs and checks the commands it returns
//! (their order matters: the agent executes them in order) and the state it reports.

use std::time::Duration;

use understudy_engine::{
    ActivationMode, Answer, Command, Engine, EngineConfig, EventKind, HeartbeatView, Input, Now,
    PeerView, Role, Rules, StandbyType, State, SvcState,
};

const WALL0: u64 = 1_700_000_000_000;
const KNOWN: u64 = 5;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn cfg(mode: ActivationMode, standby: StandbyType) -> EngineConfig {
    EngineConfig {
        mode,
        standby,
        heartbeat_delay: secs(1),
        backoff_min: secs(1),
        backoff_max: secs(8),
        stable_after: secs(60),
        yield_timeout: secs(5),
        health_check: false,
        signal_wait: secs(5),
        rules: Rules::default(),
    }
}

/// One engine plus its clock.
struct Node {
    e: Engine,
    mono: Duration,
}

impl Node {
    fn new(cfg: EngineConfig) -> Self {
        Node {
            e: Engine::new(cfg),
            mono: secs(100),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.mono,
            wall_ms: WALL0 + self.mono.as_millis() as u64,
        }
    }

    fn wall_ms(&self) -> u64 {
        self.now().wall_ms
    }

    fn advance(&mut self, d: Duration) {
        self.mono += d;
    }

    /// Every command, timeline records included.
    fn feed_all(&mut self, input: Input) -> Vec<Command> {
        let now = self.now();
        self.e.handle(now, input)
    }

    /// The commands without timeline records.
    fn feed(&mut self, input: Input) -> Vec<Command> {
        actions(&self.feed_all(input))
    }

    /// The service reports its pid and, at once, that it handles the activate signal.
    fn up_all(&mut self, pid: u32) -> Vec<Command> {
        let mut out = self.feed_all(started(pid));
        out.retain(|c| !matches!(c, Command::WatchSignalReady { .. }));
        out.extend(self.feed_all(Input::ServiceSignalReady { pid }));
        out
    }

    fn up(&mut self, pid: u32) -> Vec<Command> {
        actions(&self.up_all(pid))
    }

    fn waiting(&self) -> String {
        self.e.snapshot().waiting.unwrap_or_default()
    }

    fn fresh_heartbeat(&self) -> HeartbeatView {
        HeartbeatView::At {
            node: "b".into(),
            wall_ms: self.wall_ms() - 200,
        }
    }
}

fn actions(cmds: &[Command]) -> Vec<Command> {
    cmds.iter()
        .filter(|c| !matches!(c, Command::Record(_)))
        .cloned()
        .collect()
}

fn kinds(cmds: &[Command]) -> Vec<EventKind> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Record(e) => Some(e.kind),
            _ => None,
        })
        .collect()
}

fn started(pid: u32) -> Input {
    Input::ServiceStarted { pid }
}

fn exited() -> Input {
    Input::ServiceExited {
        reason: "exited with code 1".into(),
    }
}

fn acquired(previous: HeartbeatView) -> Input {
    Input::LockAcquired {
        previous,
        created: false,
    }
}

/// Peer `node`, alive, advertises Warm without the lock.
/// `POST /service/release` with the agent's check passed and nothing beyond the records.
fn release() -> Input {
    Input::Release {
        unverified: None,
        because: vec![],
    }
}

/// [`peer_warm`], its agent known gone.
fn peer_gone(node: &str, epoch: u64) -> Input {
    let mut gone = peer_warm(node, epoch);
    if let Input::Peers(ps) = &mut gone {
        ps[0].agent_gone = true;
    }
    gone
}

fn peer_warm(node: &str, epoch: u64) -> Input {
    Input::Peers(vec![PeerView {
        node: node.into(),
        hot: false,
        epoch,
        holds_lock: false,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: None,
    }])
}

/// Peer `node` advertises Hot with `epoch` in a fresh record.
fn peer_hot(node: &str, epoch: u64) -> Input {
    Input::Peers(vec![PeerView {
        node: node.into(),
        hot: true,
        epoch,
        holds_lock: true,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: None,
    }])
}

fn acquired_fresh(n: &Node) -> Input {
    acquired(n.fresh_heartbeat())
}

fn durable(epoch: u64) -> Input {
    Input::EpochDurable { epoch }
}

fn lock_lost() -> Input {
    Input::LockLost {
        reason: "lock file deleted".into(),
    }
}

fn health_failed() -> Input {
    Input::HealthFailed {
        reason: "3 checks failed".into(),
    }
}

/// A started TryLock node with a running standby service (unless cold) that is now Hot with epoch
/// `KNOWN + 1` and an active service.
fn hot_trylock(standby: StandbyType) -> Node {
    hot_with(cfg(ActivationMode::TryLock, standby))
}

fn hot_with(c: EngineConfig) -> Node {
    let standby = c.standby;
    let mode = c.mode;
    let mut n = Node::new(c);
    n.feed(Input::Start { known_epoch: KNOWN });
    if standby.runs_while_standby() {
        n.up(10);
    }
    let out = match mode {
        ActivationMode::Warm => {
            assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
            n.feed(acquired(HeartbeatView::Missing))
        }
        _ => n.feed(acquired_fresh(&n)),
    };
    assert_eq!(out, vec![Command::PersistNextEpoch { floor: KNOWN }]);
    n.feed(durable(KNOWN + 1));
    if !standby.runs_while_standby() {
        n.up(20);
    }
    assert_eq!(n.e.state(), State::Hot);
    assert!(matches!(
        n.e.service(),
        SvcState::Running {
            role: Role::Active,
            ..
        }
    ));
    n
}

fn pos(cmds: &[Command], want: &Command) -> usize {
    cmds.iter()
        .position(|c| c == want)
        .unwrap_or_else(|| panic!("{want:?} not in {cmds:?}"))
}

// ---------------------------------------------------------------- start and the lock

#[test]
fn trylock_start_campaigns_and_starts_standby_service() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    let all = n.feed_all(Input::Start { known_epoch: KNOWN });
    assert_eq!(kinds(&all), vec![EventKind::AgentStarted]);
    assert_eq!(
        actions(&all),
        vec![
            Command::StartService {
                role: Role::Standby,
                epoch: KNOWN
            },
            Command::Campaign
        ]
    );
    assert_eq!(n.e.state(), State::Warm);
    assert!(!n.e.holds_lock());
    assert_eq!(n.e.epoch(), KNOWN);
    assert!(
        n.waiting().contains("waiting for the group lock"),
        "{}",
        n.waiting()
    );
    // Not ready until the standby service is up.
    assert!(!n.e.ready());
    n.up(10);
    assert!(n.e.ready());
    assert_eq!(
        n.e.service(),
        SvcState::Running {
            role: Role::Standby,
            pid: 10
        }
    );
}

#[test]
fn cold_standby_start_campaigns_without_a_service() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    assert_eq!(
        n.feed(Input::Start { known_epoch: KNOWN }),
        vec![Command::Campaign]
    );
    assert_eq!(n.e.service(), SvcState::Stopped);
    assert!(n.e.ready(), "a cold standby is ready without a service");
}

#[test]
fn lock_then_durable_epoch_then_hot_cold_standby_starts_active() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    let all = n.feed_all(acquired_fresh(&n));
    assert_eq!(
        kinds(&all),
        vec![EventKind::LockObtained, EventKind::PreviousServiceGone]
    );
    assert_eq!(
        actions(&all),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    // Not Hot before the epoch is durable.
    assert_eq!(n.e.state(), State::Warm);
    assert!(n.e.holds_lock());
    assert!(!n.e.ready());

    let all = n.feed_all(durable(KNOWN + 1));
    assert_eq!(
        actions(&all),
        vec![Command::StartService {
            role: Role::Active,
            epoch: KNOWN + 1
        }]
    );
    assert!(kinds(&all).contains(&EventKind::EpochDurable));
    assert_eq!(n.e.state(), State::Hot);
    assert_eq!(n.e.epoch(), KNOWN + 1);
    assert_eq!(n.e.snapshot().since_unix_ms, n.wall_ms());
    assert_eq!(n.e.snapshot().waiting, None);

    let all = n.up_all(42);
    assert!(actions(&all).is_empty(), "{all:?}");
    assert!(kinds(&all).contains(&EventKind::Ready));
    assert_eq!(
        n.e.service(),
        SvcState::Running {
            role: Role::Active,
            pid: 42
        }
    );
}

#[test]
fn hot_and_warm_standby_are_notified_not_restarted() {
    for standby in [StandbyType::Hot, StandbyType::Warm] {
        let mut n = Node::new(cfg(ActivationMode::TryLock, standby));
        n.feed(Input::Start { known_epoch: KNOWN });
        n.up(10);
        n.feed(acquired_fresh(&n));
        let all = n.feed_all(durable(KNOWN + 1));
        assert_eq!(
            actions(&all),
            vec![Command::NotifyActive { epoch: KNOWN + 1 }],
            "{standby:?}"
        );
        assert!(kinds(&all).contains(&EventKind::ServiceNotified));
        assert!(kinds(&all).contains(&EventKind::Ready));
        assert_eq!(
            n.e.service(),
            SvcState::Running {
                role: Role::Active,
                pid: 10
            }
        );
    }
}

#[test]
fn standby_still_starting_is_notified_once_it_is_up() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(acquired_fresh(&n));
    assert_eq!(n.feed(durable(KNOWN + 1)), vec![]);
    assert_eq!(n.e.state(), State::Hot);
    assert_eq!(n.up(10), vec![Command::NotifyActive { epoch: KNOWN + 1 }]);
    assert_eq!(
        n.e.service(),
        SvcState::Running {
            role: Role::Active,
            pid: 10
        }
    );
}

#[test]
fn health_check_gates_readiness_of_the_active() {
    let mut c = cfg(ActivationMode::TryLock, StandbyType::Hot);
    c.health_check = true;
    let mut n = Node::new(c);
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    assert!(
        !n.e.ready(),
        "standby not ready before its first health success"
    );
    n.feed(Input::HealthOk);
    assert!(n.e.ready());
    n.feed(acquired_fresh(&n));
    let all = n.feed_all(durable(KNOWN + 1));
    // Healthy standby: ready at once.
    assert!(kinds(&all).contains(&EventKind::Ready));
}

/// Review 13, T3: a standby with a health check does not campaign before its service has
/// passed it once since it started (at a cold start of the group, the first agent up took the
/// free lock before its service could say it is behind), and campaigns when it has.
#[test]
fn a_standby_with_a_health_check_campaigns_only_after_its_first_success() {
    let mut c = cfg(ActivationMode::TryLock, StandbyType::Warm);
    c.health_check = true;
    let mut n = Node::new(c);
    let start = n.feed(Input::Start { known_epoch: KNOWN });
    assert!(!start.contains(&Command::Campaign), "{start:?}");
    n.up(10);
    assert!(n.waiting().contains("health check"), "{}", n.waiting());
    let ok = n.feed(Input::HealthOk);
    assert!(ok.contains(&Command::Campaign), "{ok:?}");
    assert!(n.e.ready());

    // The service's report that it is not ready comes before the check passes: the node then
    // says that, not that it waits for the check.
    let mut c = cfg(ActivationMode::TryLock, StandbyType::Warm);
    c.health_check = true;
    let mut n = Node::new(c);
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    let why = "reports it is not ready (replication: no active has streamed to this standby yet)";
    n.feed(Input::ServiceReadiness {
        not_ready: Some(why.into()),
    });
    let ok = n.feed_all(Input::HealthOk);
    assert!(!actions(&ok).contains(&Command::Campaign), "{ok:?}");
    assert!(
        n.waiting().contains("no active has streamed"),
        "{}",
        n.waiting()
    );
    let back = n.feed_all(Input::ServiceReadiness { not_ready: None });
    assert_eq!(actions(&back), vec![Command::Campaign], "{back:?}");

    // Mode hot tries the lock at its first pass, not before (review 14, U8).
    let mut c = cfg(ActivationMode::Hot, StandbyType::Warm);
    c.health_check = true;
    let mut n = Node::new(c);
    let start = n.feed(Input::Start { known_epoch: KNOWN });
    assert!(!start.contains(&Command::TryLock), "{start:?}");
    n.up(10);
    let ok = n.feed(Input::HealthOk);
    assert!(ok.contains(&Command::TryLock), "{ok:?}");
}

/// A replicated standby service that says it is not in sync stands aside (it gives up its
/// campaign and is not ready) while it keeps running; once it says it is ready, it rejoins.
#[test]
fn a_standby_service_reporting_not_ready_stands_aside_and_rejoins_when_ready() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Warm));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    assert!(n.e.ready());
    let why = "reports it is not ready (replication: not in sync with the active)";
    let out = n.feed_all(Input::ServiceReadiness {
        not_ready: Some(why.into()),
    });
    assert_eq!(actions(&out), vec![Command::Release], "{out:?}");
    assert!(kinds(&out).contains(&EventKind::NotReady));
    assert!(!n.e.ready());
    assert!(n.waiting().contains("not in sync"), "{}", n.waiting());
    // The same report again changes nothing; the service is never stopped for it.
    let again = n.feed_all(Input::ServiceReadiness {
        not_ready: Some(why.into()),
    });
    assert!(again.is_empty(), "{again:?}");
    let back = n.feed_all(Input::ServiceReadiness { not_ready: None });
    assert!(kinds(&back).contains(&EventKind::ReadyAgain), "{back:?}");
    assert_eq!(actions(&back), vec![Command::Campaign]);
    assert!(n.e.ready());
}

#[test]
fn tick_while_holding_the_lock_verifies_it() {
    let mut n = hot_trylock(StandbyType::Hot);
    n.advance(ms(500));
    assert_eq!(n.feed(Input::Tick), vec![Command::VerifyLock]);
    let mut w = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    w.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(w.feed(Input::Tick), vec![]);
}

// ---------------------------------------------------------------- held grants

/// Peer `node` was Hot with `epoch`; its agent is gone but its service `pid` still runs.
fn dead_peer_with_live_service(node: &str, epoch: u64, pid: u32) -> Input {
    Input::Peers(vec![PeerView {
        node: node.into(),
        hot: true,
        epoch,
        holds_lock: true,
        fresh: true,
        agent_gone: true,
        live_service: Some(pid),
        handover_to: None,
    }])
}

#[test]
fn a_grant_waits_until_the_previous_active_service_is_gone() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    n.feed(dead_peer_with_live_service("b", KNOWN, 77));
    let all = n.feed_all(acquired_fresh(&n));
    assert_eq!(kinds(&all), vec![EventKind::LockObtained]);
    assert_eq!(
        actions(&all),
        vec![Command::WatchProcesses { pids: vec![77] }]
    );
    assert_eq!(n.e.state(), State::Warm);
    assert!(n.waiting().contains("pid [77]"), "{}", n.waiting());
    // An operator cannot hurry it: that is exactly the second active it prevents.
    assert_eq!(n.feed(Input::Activate), vec![]);
    assert_eq!(n.feed(Input::ProcessGone { pid: 78 }), vec![]);
    let all = n.feed_all(Input::ProcessGone { pid: 77 });
    assert!(kinds(&all).contains(&EventKind::PreviousServiceGone));
    assert_eq!(
        actions(&all),
        vec![Command::ConfirmLock],
        "held a while: the lock is checked first"
    );
    assert_eq!(
        n.feed(Input::LockConfirmed),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    let out = n.feed(durable(KNOWN + 1));
    assert_eq!(
        out,
        vec![
            Command::NotifyActive { epoch: KNOWN + 1 },
            Command::Answer(Answer::Activated { epoch: KNOWN + 1 })
        ]
    );
}

#[test]
fn a_grant_held_for_a_previous_service_is_dropped_with_the_lock() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(dead_peer_with_live_service("b", KNOWN, 77));
    n.feed(acquired_fresh(&n));
    let out = n.feed(Input::LockLost {
        reason: "lock file deleted".into(),
    });
    assert_eq!(out, vec![Command::Campaign]);
    assert_eq!(n.feed(Input::ProcessGone { pid: 77 }), vec![]);
    assert!(!n.e.holds_lock());
}

#[test]
fn a_grant_waits_while_a_live_peer_still_acts_on_a_replaced_lock_file() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(peer_hot("b", KNOWN));
    let all = n.feed_all(Input::LockAcquired {
        previous: HeartbeatView::Missing,
        created: true,
    });
    assert!(kinds(&all).contains(&EventKind::GrantDeferred));
    assert_eq!(actions(&all), vec![]);
    assert!(n.waiting().contains("node b"), "{}", n.waiting());
    // Still acting on the next tick: still waiting.
    n.advance(secs(1));
    assert_eq!(n.feed(peer_hot("b", KNOWN)), vec![]);
    // It stepped down.
    assert_eq!(n.feed(peer_warm("b", KNOWN)), vec![Command::ConfirmLock]);
    assert_eq!(
        n.feed(Input::LockConfirmed),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
}

#[test]
fn a_tried_lock_is_given_back_while_a_live_peer_still_acts() {
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(peer_hot("b", KNOWN));
    assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
    let out = n.feed(Input::LockAcquired {
        previous: HeartbeatView::Missing,
        created: true,
    });
    assert_eq!(
        out,
        vec![
            Command::Release,
            Command::Answer(Answer::ActivateRefused {
                holder: Some("b".into()),
                reason: "node b holds the group lock; activating here would make two actives"
                    .into()
            })
        ]
    );
    assert!(!n.e.holds_lock());
}

#[test]
fn a_standby_is_told_only_once_it_handles_the_signal() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(
        n.feed(started(10)),
        vec![Command::WatchSignalReady { pid: 10 }]
    );
    assert!(
        !n.e.ready(),
        "not ready to take over before it handles the signal"
    );
    n.feed(acquired_fresh(&n));
    assert_eq!(n.feed(durable(KNOWN + 1)), vec![]);
    assert_eq!(n.e.state(), State::Hot);
    assert_eq!(
        n.feed(Input::ServiceSignalReady { pid: 11 }),
        vec![],
        "another process"
    );
    assert_eq!(
        n.feed(Input::ServiceSignalReady { pid: 10 }),
        vec![Command::NotifyActive { epoch: KNOWN + 1 }]
    );
}

#[test]
fn a_standby_that_never_handles_the_signal_is_told_after_signal_wait() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(started(10));
    n.feed(acquired_fresh(&n));
    n.feed(durable(KNOWN + 1));
    n.advance(ms(4900));
    assert_eq!(n.feed(Input::Tick), vec![Command::VerifyLock]);
    n.advance(ms(100));
    let all = n.feed_all(Input::Tick);
    assert!(kinds(&all).contains(&EventKind::SignalWaitExpired));
    assert_eq!(
        actions(&all),
        vec![
            Command::NotifyActive { epoch: KNOWN + 1 },
            Command::VerifyLock
        ]
    );
}

#[test]
fn the_service_acknowledges_its_epoch_once() {
    let mut n = hot_trylock(StandbyType::Hot);
    let epoch = n.e.epoch();
    let stale = n.feed_all(Input::ServiceAcked {
        pid: 10,
        epoch: epoch - 1,
    });
    assert!(
        kinds(&stale).is_empty(),
        "an older epoch is no acknowledgement"
    );
    let other = n.feed_all(Input::ServiceAcked { pid: 99, epoch });
    assert!(kinds(&other).is_empty(), "another process");
    let ack = n.feed_all(Input::ServiceAcked { pid: 10, epoch });
    assert_eq!(kinds(&ack), vec![EventKind::ServiceAcked]);
    assert!(kinds(&n.feed_all(Input::ServiceAcked { pid: 10, epoch })).is_empty());
}

// ---------------------------------------------------------------- TryHeartbeat

#[test]
fn tryheartbeat_fresh_heartbeat_goes_hot_by_itself() {
    let mut n = Node::new(cfg(ActivationMode::TryHeartbeat, StandbyType::Hot));
    assert_eq!(
        n.feed(Input::Start { known_epoch: KNOWN }),
        vec![
            Command::StartService {
                role: Role::Standby,
                epoch: KNOWN
            },
            Command::Campaign
        ]
    );
    n.up(10);
    let prev = HeartbeatView::At {
        node: "b".into(),
        wall_ms: n.wall_ms() - 999,
    };
    assert_eq!(
        n.feed(acquired(prev)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    let out = n.feed(durable(KNOWN + 1));
    assert_eq!(
        out,
        vec![
            Command::WriteHeartbeat { epoch: KNOWN + 1 },
            Command::NotifyActive { epoch: KNOWN + 1 }
        ]
    );
    assert_eq!(n.e.state(), State::Hot);
    // The active keeps the heartbeat fresh.
    n.advance(ms(300));
    let out = n.feed(Input::Tick);
    assert!(
        out.contains(&Command::WriteHeartbeat { epoch: KNOWN + 1 }),
        "{out:?}"
    );
}

#[test]
fn tryheartbeat_stale_missing_or_garbage_waits_for_operator_holding_the_lock() {
    let cases = |n: &Node| {
        vec![
            HeartbeatView::Missing,
            HeartbeatView::Garbage("not a number".into()),
            HeartbeatView::At {
                node: "b".into(),
                wall_ms: n.wall_ms() - 1000, // exactly heartbeat_delay: not fresher
            },
            HeartbeatView::At {
                node: "b".into(),
                wall_ms: n.wall_ms() - 3_600_000,
            },
        ]
    };
    let probe = Node::new(cfg(ActivationMode::TryHeartbeat, StandbyType::Warm));
    for hb in cases(&probe) {
        let mut n = Node::new(cfg(ActivationMode::TryHeartbeat, StandbyType::Warm));
        n.feed(Input::Start { known_epoch: KNOWN });
        n.up(10);
        let all = n.feed_all(acquired(hb.clone()));
        assert_eq!(actions(&all), vec![], "{hb:?}");
        assert!(kinds(&all).contains(&EventKind::HeartbeatStale), "{hb:?}");
        assert_eq!(n.e.state(), State::Warm);
        assert!(n.e.holds_lock(), "holds the lock while an operator decides");
        let w = n.waiting();
        assert!(w.contains("holding the group lock"), "{w}");
        assert!(w.contains("PUT /service/activationmode/hot"), "{w}");

        // Nothing happens on its own.
        n.advance(secs(30));
        assert_eq!(n.feed(Input::Tick), vec![Command::VerifyLock]);
        assert_eq!(n.e.state(), State::Warm);

        // The operator decides; the lock, held a while, is checked to still be the group's.
        assert_eq!(n.feed(Input::Activate), vec![Command::ConfirmLock]);
        assert_eq!(
            n.feed(Input::LockConfirmed),
            vec![Command::PersistNextEpoch { floor: KNOWN }]
        );
        let out = n.feed(durable(KNOWN + 1));
        assert_eq!(
            out,
            vec![
                Command::WriteHeartbeat { epoch: KNOWN + 1 },
                Command::NotifyActive { epoch: KNOWN + 1 },
                Command::Answer(Answer::Activated { epoch: KNOWN + 1 }),
            ]
        );
        assert_eq!(n.e.state(), State::Hot);
    }
}

#[test]
fn tryheartbeat_stale_then_lock_lost_campaigns_again() {
    let mut n = Node::new(cfg(ActivationMode::TryHeartbeat, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(acquired(HeartbeatView::Missing));
    assert!(n.e.holds_lock());
    assert_eq!(n.feed(lock_lost()), vec![Command::Campaign]);
    assert!(!n.e.holds_lock());
    assert_eq!(n.e.state(), State::Warm);
}

#[test]
fn trylock_ignores_the_heartbeat() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
}

// ---------------------------------------------------------------- operator activation

#[test]
fn warm_mode_waits_for_activate() {
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Hot));
    assert_eq!(
        n.feed(Input::Start { known_epoch: KNOWN }),
        vec![Command::StartService {
            role: Role::Standby,
            epoch: KNOWN
        }]
    );
    n.up(10);
    assert!(n.waiting().contains("warm mode"), "{}", n.waiting());
    for _ in 0..5 {
        n.advance(secs(10));
        assert_eq!(n.feed(Input::Tick), vec![]);
    }
    assert_eq!(n.e.state(), State::Warm);
    assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    assert_eq!(
        n.feed(durable(KNOWN + 1)),
        vec![
            Command::NotifyActive { epoch: KNOWN + 1 },
            Command::Answer(Answer::Activated { epoch: KNOWN + 1 })
        ]
    );
    assert_eq!(n.e.state(), State::Hot);
    // Asking again answers at once.
    assert_eq!(
        n.feed(Input::Activate),
        vec![Command::Answer(Answer::Activated { epoch: KNOWN + 1 })]
    );
}

#[test]
fn activate_while_another_holds_the_lock_is_refused_with_the_holder() {
    for mode in [ActivationMode::Warm, ActivationMode::TryLock] {
        let mut n = Node::new(cfg(mode, StandbyType::Hot));
        n.feed(Input::Start { known_epoch: KNOWN });
        n.up(10);
        let before = n.waiting();
        assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
        let all = n.feed_all(Input::LockBusy {
            holder: Some("b".into()),
        });
        assert!(kinds(&all).contains(&EventKind::Refused));
        match actions(&all).as_slice() {
            [Command::Answer(Answer::ActivateRefused { holder, reason })] => {
                assert_eq!(holder.as_deref(), Some("b"));
                assert!(reason.contains('b'), "{reason}");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        assert_eq!(n.e.state(), State::Warm);
        assert!(!n.e.holds_lock());
        assert_eq!(n.waiting(), before, "{mode:?}: still waiting the same way");
    }
    // A TryLock node keeps campaigning: the lock it waits for still makes it Hot.
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(Input::Activate);
    n.feed(Input::LockBusy { holder: None });
    assert_eq!(
        n.feed(acquired_fresh(&n)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
}

#[test]
fn hot_mode_trylocks_at_start() {
    let mut n = Node::new(cfg(ActivationMode::Hot, StandbyType::Cold));
    assert_eq!(
        n.feed(Input::Start { known_epoch: KNOWN }),
        vec![Command::TryLock]
    );
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    n.feed(durable(KNOWN + 1));
    assert_eq!(n.e.state(), State::Hot);
}

#[test]
fn hot_mode_refused_when_the_lock_is_busy() {
    let mut n = Node::new(cfg(ActivationMode::Hot, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(
        n.feed(Input::LockBusy {
            holder: Some("b".into())
        }),
        vec![]
    );
    assert_eq!(n.e.state(), State::Warm);
    assert!(
        n.waiting().contains("node b holds the group lock"),
        "{}",
        n.waiting()
    );
    // A stray grant later is not wanted: it is given back at once.
    assert_eq!(n.feed(acquired_fresh(&n)), vec![Command::Release]);
    assert!(!n.e.holds_lock());
    // The operator can still activate it.
    n.up(10);
    assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
    assert_eq!(
        n.feed(acquired_fresh(&n)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
}

// ---------------------------------------------------------------- failures of the active

#[test]
fn active_service_exit_releases_and_backs_off_then_rejoins() {
    let mut n = hot_trylock(StandbyType::Hot);
    n.advance(secs(1));
    let all = n.feed_all(exited());
    assert_eq!(actions(&all), vec![Command::Release]);
    let k = kinds(&all);
    assert!(k.contains(&EventKind::ServiceExited));
    assert!(k.contains(&EventKind::Demoted));
    assert!(k.contains(&EventKind::LockReleased));
    assert_eq!(n.e.state(), State::Warm);
    assert!(!n.e.holds_lock());
    assert!(n.waiting().contains("backoff"), "{}", n.waiting());
    assert!(!n.e.ready(), "a node backing off is not ready");

    n.advance(ms(999));
    assert_eq!(n.feed(Input::Tick), vec![]);
    n.advance(ms(1));
    assert_eq!(
        n.feed(Input::Tick),
        vec![
            Command::Campaign,
            Command::StartService {
                role: Role::Standby,
                epoch: KNOWN + 1
            }
        ]
    );
    assert!(
        n.waiting().contains("waiting for the group lock"),
        "{}",
        n.waiting()
    );
}

#[test]
fn cold_standby_rejoins_without_a_service() {
    let mut n = hot_trylock(StandbyType::Cold);
    assert_eq!(n.feed(exited()), vec![Command::Release]);
    n.advance(secs(1));
    assert_eq!(n.feed(Input::Tick), vec![Command::Campaign]);
    assert_eq!(n.e.service(), SvcState::Stopped);
}

/// Returns the backoff delay after the active service fails `after` its start as active.
fn fail_and_measure(n: &mut Node, after: Duration) -> Duration {
    n.advance(after);
    assert_eq!(n.feed(exited()), vec![Command::Release]);
    let t0 = n.mono;
    let mut step = ms(0);
    loop {
        let out = n.feed(Input::Tick);
        if out.contains(&Command::Campaign) {
            let d = n.mono - t0;
            // Back Hot at once (cold standby: the service starts as active).
            n.feed(acquired_fresh(n));
            let epoch = n.e.epoch() + 1;
            n.feed(durable(epoch));
            n.up(7);
            assert_eq!(n.e.state(), State::Hot);
            return d;
        }
        assert!(step < secs(100), "never rejoined");
        n.advance(ms(250));
        step += ms(250);
    }
}

#[test]
fn backoff_doubles_and_is_capped() {
    let mut n = hot_trylock(StandbyType::Cold);
    let delays: Vec<u64> = (0..7)
        .map(|_| fail_and_measure(&mut n, ms(500)).as_millis() as u64)
        .collect();
    assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000, 8000]);
}

#[test]
fn backoff_doubles_with_a_hot_standby_too() {
    let mut n = hot_trylock(StandbyType::Hot);
    let mut delays = Vec::new();
    for _ in 0..5 {
        n.advance(ms(500));
        assert_eq!(n.feed(exited()), vec![Command::Release]);
        let t0 = n.mono;
        loop {
            n.advance(ms(250));
            let out = n.feed(Input::Tick);
            if out.contains(&Command::Campaign) {
                delays.push((n.mono - t0).as_millis() as u64);
                break;
            }
        }
        // The standby restarts, and is promoted quickly.
        n.up(11);
        n.feed(acquired_fresh(&n));
        let epoch = n.e.epoch() + 1;
        n.feed(durable(epoch));
        assert_eq!(n.e.state(), State::Hot);
    }
    assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000]);
}

#[test]
fn a_service_that_ran_stable_after_resets_the_backoff() {
    for standby in [StandbyType::Cold, StandbyType::Hot] {
        let mut n = hot_trylock(standby);
        // Three quick failures: the backoff grows.
        for want in [1000, 2000, 4000] {
            n.advance(ms(100));
            assert_eq!(n.feed(exited()), vec![Command::Release]);
            let t0 = n.mono;
            loop {
                n.advance(ms(250));
                if n.feed(Input::Tick).contains(&Command::Campaign) {
                    assert_eq!((n.mono - t0).as_millis() as u64, want, "{standby:?}");
                    break;
                }
            }
            if standby.runs_while_standby() {
                n.up(11);
            }
            n.feed(acquired_fresh(&n));
            let epoch = n.e.epoch() + 1;
            n.feed(durable(epoch));
            if !standby.runs_while_standby() {
                n.up(12);
            }
            assert_eq!(n.e.state(), State::Hot);
        }
        // Then the service runs well for longer than stable_after before failing.
        n.advance(secs(61));
        assert_eq!(n.feed(exited()), vec![Command::Release]);
        n.advance(secs(1));
        let out = n.feed(Input::Tick);
        assert!(
            out.contains(&Command::Campaign),
            "{standby:?}: a stable service failing restarts with backoff_min: {out:?} ({})",
            n.waiting()
        );
    }
}

#[test]
fn health_failure_while_hot_stops_gracefully_and_releases_after_exit() {
    let mut n = hot_trylock(StandbyType::Hot);
    let all = n.feed_all(health_failed());
    assert_eq!(actions(&all), vec![Command::StopService { graceful: true }]);
    assert!(kinds(&all).contains(&EventKind::HealthFailed));
    assert!(kinds(&all).contains(&EventKind::Demoted));
    assert_eq!(n.e.state(), State::Warm);
    assert!(
        n.e.holds_lock(),
        "the lock is kept until the service has stopped"
    );
    assert_eq!(n.e.service(), SvcState::Stopping);
    assert!(n.waiting().contains("stepping down"), "{}", n.waiting());
    // Ticks while stopping do not release.
    n.advance(secs(2));
    assert_eq!(n.feed(Input::Tick), vec![Command::VerifyLock]);
    // Operator activation is refused while stepping down.
    assert!(matches!(
        n.feed(Input::Activate).as_slice(),
        [Command::Answer(Answer::ActivateRefused { .. })]
    ));
    assert_eq!(n.feed(exited()), vec![Command::Release]);
    assert!(!n.e.holds_lock());
    assert!(n.waiting().contains("backoff"), "{}", n.waiting());
    n.advance(secs(1));
    assert_eq!(
        n.feed(Input::Tick),
        vec![
            Command::Campaign,
            Command::StartService {
                role: Role::Standby,
                epoch: KNOWN + 1
            }
        ]
    );
}

#[test]
fn lock_lost_while_hot_kills_the_service_at_once() {
    let mut n = hot_trylock(StandbyType::Hot);
    let all = n.feed_all(lock_lost());
    assert_eq!(
        actions(&all),
        vec![Command::StopService { graceful: false }]
    );
    assert!(kinds(&all).contains(&EventKind::LockLost));
    assert_eq!(
        n.e.state(),
        State::Warm,
        "Warm at once, before the service has exited"
    );
    assert!(!n.e.holds_lock());
    // Nothing to release when the service exits. A lost grant is no failure of the service: the
    // node rejoins at once as a standby (no backoff), so it can take over the next fault.
    let after = n.feed(exited());
    assert!(after.contains(&Command::Campaign), "{after:?}");
    assert!(
        after.iter().any(|c| matches!(
            c,
            Command::StartService {
                role: Role::Standby,
                ..
            }
        )),
        "{after:?}"
    );
    assert!(!n.waiting().contains("backoff"), "{}", n.waiting());
}

#[test]
fn lock_lost_during_a_graceful_stop_escalates_to_kill() {
    let mut n = hot_trylock(StandbyType::Hot);
    n.feed(health_failed());
    assert_eq!(
        n.feed(lock_lost()),
        vec![Command::StopService { graceful: false }]
    );
    assert_eq!(n.feed(exited()), vec![]);
}

#[test]
fn lock_lost_when_not_holding_is_ignored() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(n.feed(lock_lost()), vec![]);
}

#[test]
fn epoch_failure_releases_and_backs_off() {
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    n.feed(Input::Activate);
    n.feed(acquired(HeartbeatView::Missing));
    let out = n.feed(Input::EpochFailed {
        reason: "disk full".into(),
    });
    assert_eq!(out[0], Command::Release);
    assert!(matches!(
        out[1],
        Command::Answer(Answer::ActivateRefused { .. })
    ));
    assert_eq!(out.len(), 2);
    assert_eq!(n.e.state(), State::Warm);
    assert!(!n.e.holds_lock());
    assert!(n.waiting().contains("backoff"));
    // The standby service was never told it is active and keeps running.
    assert_eq!(
        n.e.service(),
        SvcState::Running {
            role: Role::Standby,
            pid: 10
        }
    );
}

#[test]
fn pending_activate_is_answered_when_promotion_is_cut_short() {
    // Lock lost while the epoch is being persisted.
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(Input::Activate);
    n.feed(acquired(HeartbeatView::Missing));
    let out = n.feed(lock_lost());
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Answer(Answer::ActivateRefused { .. }))),
        "the operator's PUT must not hang: {out:?}"
    );
    assert_eq!(n.feed(durable(KNOWN + 1)), vec![]);
    assert_eq!(n.e.state(), State::Warm);

    // The standby service dies while the epoch is being persisted: it never acted, so the
    // promotion goes on with a fresh process started as the active one, and the PUT is answered.
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    n.feed(Input::Activate);
    n.feed(acquired(HeartbeatView::Missing));
    assert_eq!(n.feed(exited()), vec![]);
    assert!(n.e.holds_lock());
    assert_eq!(
        n.feed(durable(KNOWN + 1)),
        vec![
            Command::StartService {
                role: Role::Active,
                epoch: KNOWN + 1
            },
            Command::Answer(Answer::Activated { epoch: KNOWN + 1 })
        ]
    );
    assert_eq!(n.e.state(), State::Hot);
}

#[test]
fn standby_failing_its_check_while_promoting_is_restarted_as_active() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    n.feed(acquired_fresh(&n));
    assert_eq!(
        n.feed(health_failed()),
        vec![Command::StopService { graceful: true }]
    );
    // Hot, but the old standby process is still going away: it is not told it is active.
    assert_eq!(n.feed(durable(KNOWN + 1)), vec![]);
    assert_eq!(n.e.state(), State::Hot);
    assert_eq!(n.e.service(), SvcState::Stopping);
    // Once gone, a fresh process starts as the active one.
    assert_eq!(
        n.feed(exited()),
        vec![Command::StartService {
            role: Role::Active,
            epoch: KNOWN + 1
        }]
    );
    assert_eq!(n.e.state(), State::Hot);
    assert!(n.e.holds_lock());
    n.up(11);
    assert_eq!(
        n.e.service(),
        SvcState::Running {
            role: Role::Active,
            pid: 11
        }
    );
}

#[test]
fn standby_service_failure_is_restarted_after_backoff_while_warm() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    n.advance(secs(1));
    // No restart in a tight loop; the campaign is called off until the service is ready again.
    assert_eq!(n.feed(exited()), vec![Command::Release]);
    assert!(!n.e.ready());
    assert!(n.waiting().contains("not ready"), "{}", n.waiting());
    n.advance(ms(500));
    assert_eq!(n.feed(Input::Tick), vec![]);
    n.advance(ms(500));
    assert_eq!(
        n.feed(Input::Tick),
        vec![Command::StartService {
            role: Role::Standby,
            epoch: KNOWN
        }]
    );
    // A standby failing its health check is stopped (and restarted later the same way).
    n.up(11);
    assert_eq!(
        n.feed(health_failed()),
        vec![Command::StopService { graceful: true }]
    );
    assert_eq!(n.e.state(), State::Warm);
}

#[test]
fn peer_active_with_a_newer_epoch_fences_a_hot_node() {
    let mut n = hot_trylock(StandbyType::Hot);
    // A stale record (an older active) changes nothing.
    assert_eq!(n.feed(peer_hot("b", KNOWN)), vec![]);
    assert_eq!(n.e.state(), State::Hot);
    assert_eq!(n.e.epoch(), KNOWN + 1);
    // A newer active exists: this node must stop acting, and must not claim the peer's epoch.
    let out = n.feed(peer_hot("b", KNOWN + 3));
    assert_eq!(out, vec![Command::StopService { graceful: false }]);
    assert_eq!(n.e.state(), State::Warm);
    // Its lock (if it still has one) goes only once the service is gone.
    assert_eq!(n.feed(exited()), vec![Command::Release]);
    n.advance(secs(1));
    n.feed(Input::Tick);
    n.up(12);
    // The peer stepped down since (its record says so when this node is granted the lock).
    n.feed(peer_warm("b", KNOWN + 3));
    assert_eq!(
        n.feed(acquired_fresh(&n)),
        vec![Command::PersistNextEpoch { floor: KNOWN + 3 }]
    );
}

// ---------------------------------------------------------------- switchover

#[test]
fn switchover_without_a_ready_standby_is_refused() {
    let mut n = hot_trylock(StandbyType::Hot);
    let all = n.feed_all(Input::Switchover {
        ready: vec![],
        to: None,
    });
    assert!(kinds(&all).contains(&EventKind::Refused));
    assert!(matches!(
        actions(&all).as_slice(),
        [Command::Answer(Answer::SwitchoverRefused { .. })]
    ));
    assert_eq!(n.e.state(), State::Hot);
    assert!(n.e.holds_lock());
}

#[test]
fn switchover_on_a_standby_is_refused() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert!(matches!(
        n.feed(Input::Switchover {
            ready: vec!["b".into()],
            to: None,
        })
        .as_slice(),
        [Command::Answer(Answer::SwitchoverRefused { .. })]
    ));
}

#[test]
fn switchover_stops_releases_and_yields_until_the_new_active_appears() {
    let mut n = hot_trylock(StandbyType::Hot);
    let all = n.feed_all(Input::Switchover {
        ready: vec!["b".into()],
        to: None,
    });
    assert!(kinds(&all).contains(&EventKind::Switchover));
    assert_eq!(
        actions(&all),
        vec![
            Command::Answer(Answer::SwitchoverStarted { epoch: KNOWN + 1 }),
            Command::StopService { graceful: true }
        ]
    );
    assert_eq!(n.e.state(), State::Warm);
    assert!(n.e.holds_lock());
    assert_eq!(
        n.feed(exited()),
        vec![
            Command::Release,
            Command::StartService {
                role: Role::Standby,
                epoch: KNOWN + 1
            }
        ]
    );
    assert!(n.waiting().contains("handed over"), "{}", n.waiting());
    assert!(!n.e.ready(), "the node that handed over is not a candidate");
    // Does not campaign while yielding...
    n.advance(secs(1));
    assert_eq!(n.feed(Input::Tick), vec![]);
    // ...until the new active shows up.
    assert_eq!(n.feed(peer_hot("b", KNOWN + 2)), vec![Command::Campaign]);
    assert_eq!(n.e.epoch(), KNOWN + 2);
}

#[test]
fn switchover_yield_times_out_and_campaigns_again() {
    let mut n = hot_trylock(StandbyType::Cold);
    n.feed(Input::Switchover {
        ready: vec!["b".into()],
        to: None,
    });
    assert_eq!(n.feed(exited()), vec![Command::Release]);
    n.advance(ms(4999));
    assert_eq!(n.feed(Input::Tick), vec![]);
    n.advance(ms(1));
    assert_eq!(n.feed(Input::Tick), vec![Command::Campaign]);
}

#[test]
fn tryheartbeat_switchover_leaves_a_fresh_heartbeat() {
    let mut n = hot_with(cfg(ActivationMode::TryHeartbeat, StandbyType::Cold));
    n.feed(Input::Switchover {
        ready: vec!["b".into()],
        to: None,
    });
    n.advance(secs(10)); // a long grace period
    let out = n.feed(exited());
    let hb = pos(&out, &Command::WriteHeartbeat { epoch: KNOWN + 1 });
    let rel = pos(&out, &Command::Release);
    assert!(hb < rel, "heartbeat before release: {out:?}");
}

// ---------------------------------------------------------------- shutdown

#[test]
fn shutdown_while_hot_stops_then_releases_then_exits() {
    let mut n = hot_trylock(StandbyType::Hot);
    let all = n.feed_all(Input::Shutdown);
    assert!(kinds(&all).contains(&EventKind::Shutdown));
    assert_eq!(actions(&all), vec![Command::StopService { graceful: true }]);
    assert!(n.e.holds_lock());
    assert!(!n.e.exited());
    assert_eq!(
        n.feed(exited()),
        vec![Command::Release, Command::Exit { code: 0 }]
    );
    assert!(n.e.exited());
    assert!(!n.e.holds_lock());
}

#[test]
fn second_shutdown_kills_at_once() {
    let mut n = hot_trylock(StandbyType::Hot);
    n.feed(Input::Shutdown);
    assert_eq!(
        n.feed(Input::Shutdown),
        vec![Command::StopService { graceful: false }]
    );
    assert!(
        n.e.holds_lock(),
        "still no release before the service is gone"
    );
    assert_eq!(
        n.feed(exited()),
        vec![Command::Release, Command::Exit { code: 0 }]
    );
    assert_eq!(n.feed(Input::Shutdown), vec![]);
}

#[test]
fn shutdown_while_warm_stops_the_standby_and_exits() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    assert_eq!(
        n.feed(Input::Shutdown),
        vec![Command::StopService { graceful: true }]
    );
    // The campaign answers meanwhile: the lock is given back.
    assert_eq!(n.feed(acquired_fresh(&n)), vec![Command::Release]);
    assert_eq!(n.feed(exited()), vec![Command::Exit { code: 0 }]);

    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(n.feed(Input::Shutdown), vec![Command::Exit { code: 0 }]);
}

#[test]
fn shutdown_answers_a_pending_activate() {
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(Input::Activate);
    n.feed(acquired(HeartbeatView::Missing));
    let out = n.feed(Input::Shutdown);
    assert!(matches!(
        out[0],
        Command::Answer(Answer::ActivateRefused { .. })
    ));
    assert!(out.contains(&Command::Release));
    assert_eq!(out.last(), Some(&Command::Exit { code: 0 }));
}

// ---------------------------------------------------------------- epochs

#[test]
fn epochs_strictly_increase_across_hot_periods() {
    let mut n = hot_trylock(StandbyType::Cold);
    let mut last = n.e.epoch();
    for i in 0..4 {
        n.advance(secs(1));
        n.feed(exited());
        n.advance(secs(10));
        n.feed(Input::Tick);
        // A peer was active meanwhile with a higher epoch.
        n.feed(peer_hot("b", last + 2));
        n.feed(peer_warm("b", last + 2));
        let out = n.feed(acquired_fresh(&n));
        let floor = match out.as_slice() {
            [Command::PersistNextEpoch { floor }] => *floor,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            floor,
            last + 2,
            "round {i}: floor is the highest epoch seen"
        );
        // A store that answers with an epoch not above the floor is refused.
        if i == 0 {
            let out = n.feed(durable(floor));
            assert_eq!(out, vec![Command::Release]);
            assert_eq!(n.e.state(), State::Warm);
            last = floor;
            continue;
        }
        n.feed(durable(floor + 1));
        n.up(30 + i);
        assert_eq!(n.e.state(), State::Hot);
        assert!(n.e.epoch() > last);
        last = n.e.epoch();
    }
}

#[test]
fn known_epoch_at_start_is_the_floor() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: 41 });
    assert_eq!(
        n.feed(acquired_fresh(&n)),
        vec![Command::PersistNextEpoch { floor: 41 }]
    );
    // A late or replayed answer cannot move the epoch back.
    assert_eq!(n.feed(durable(40)), vec![Command::Release]);
    assert_eq!(n.e.epoch(), 41);
}

#[test]
fn snapshot_reports_state_and_since() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    let s = n.e.snapshot();
    assert_eq!(s.state, State::Warm);
    assert_eq!(s.mode, ActivationMode::TryLock);
    assert_eq!(s.since_unix_ms, n.wall_ms());
    assert!(s.healthy, "no health check configured");
    n.advance(secs(3));
    n.feed(acquired_fresh(&n));
    n.advance(secs(1));
    n.feed(durable(KNOWN + 1));
    let s = n.e.snapshot();
    assert_eq!(s.state, State::Hot);
    assert_eq!(s.epoch, KNOWN + 1);
    assert!(s.holds_lock);
    assert_eq!(s.since_unix_ms, n.wall_ms());
}

#[test]
fn tryheartbeat_failed_active_leaves_a_fresh_heartbeat_after_a_long_stop() {
    for input in [health_failed(), Input::Shutdown] {
        let mut n = hot_with(cfg(ActivationMode::TryHeartbeat, StandbyType::Hot));
        n.feed(input.clone());
        n.advance(secs(10)); // longer than heartbeat_delay: the last tick's heartbeat is stale
        let out = n.feed(exited());
        let hb = pos(&out, &Command::WriteHeartbeat { epoch: KNOWN + 1 });
        let rel = pos(&out, &Command::Release);
        assert!(hb < rel, "{input:?}: heartbeat before release: {out:?}");
    }
}

#[test]
fn answer_of_an_abandoned_promotion_is_not_taken_for_a_new_one() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    assert_eq!(
        n.feed(acquired_fresh(&n)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    // The lock goes while the store works; the store still takes KNOWN + 1.
    n.feed(lock_lost());
    assert_eq!(n.e.state(), State::Warm);
    // The operator activates again before that answer arrived.
    assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![],
        "waits for the outstanding answer before persisting again"
    );
    // The old answer is not this promotion's: persist anew.
    assert_eq!(
        n.feed(durable(KNOWN + 1)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    assert_eq!(n.e.state(), State::Warm);
    assert_eq!(
        n.feed(durable(KNOWN + 2)),
        vec![
            Command::StartService {
                role: Role::Active,
                epoch: KNOWN + 2
            },
            Command::Answer(Answer::Activated { epoch: KNOWN + 2 })
        ]
    );
    assert_eq!(n.e.epoch(), KNOWN + 2);

    // The same with a failed answer outstanding.
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(acquired_fresh(&n));
    n.feed(lock_lost());
    n.feed(Input::Activate);
    n.feed(acquired(HeartbeatView::Missing));
    assert_eq!(
        n.feed(Input::EpochFailed {
            reason: "old".into()
        }),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    assert!(n.e.holds_lock());
}

// ---- switchover to a chosen standby ----------------------------------------------------------

/// Peers as a standby "c" sees them while "a" steps down, handing activity to `to`.
fn handing_over(to: Option<&str>) -> Input {
    let peer = |node: &str, hot: bool, handover_to: Option<&str>| PeerView {
        node: node.into(),
        hot,
        epoch: KNOWN + 1,
        holds_lock: false,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: handover_to.map(String::from),
    };
    Input::Peers(vec![peer("a", false, to), peer("b", false, None)])
}

#[test]
fn switchover_to_a_standby_that_is_not_ready_is_refused() {
    let mut n = hot_trylock(StandbyType::Hot);
    let out = n.feed(Input::Switchover {
        ready: vec!["b".into()],
        to: Some("c".into()),
    });
    assert!(
        matches!(out.as_slice(), [Command::Answer(Answer::SwitchoverRefused { reason })] if reason.contains("c is not a ready standby")),
        "{out:?}"
    );
    assert_eq!(n.e.state(), State::Hot);
}

#[test]
fn the_active_advertises_the_chosen_standby_until_it_campaigns_again() {
    let mut n = hot_trylock(StandbyType::Cold);
    n.feed(Input::Switchover {
        ready: vec!["b".into(), "c".into()],
        to: Some("b".into()),
    });
    assert_eq!(n.e.snapshot().handover_to.as_deref(), Some("b"));
    n.feed(exited());
    // b is active with a newer epoch: the old active campaigns again and says no more.
    n.feed(Input::Peers(vec![PeerView {
        node: "b".into(),
        hot: true,
        epoch: KNOWN + 2,
        holds_lock: true,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: None,
    }]));
    assert_eq!(n.e.snapshot().handover_to, None);
}

#[test]
fn another_standby_gives_a_grant_back_while_the_switchover_goes_to_the_chosen_one() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    assert_eq!(
        n.feed(Input::Start { known_epoch: KNOWN }),
        vec![Command::Campaign]
    );
    n.feed(handing_over(Some("b")));
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::Release],
        "a grant during a handover to b must go back to the kernel for b"
    );
    assert!(
        n.waiting().contains("hands activity to b"),
        "{}",
        n.waiting()
    );
    assert_eq!(n.e.state(), State::Warm);
    // The handover is over (b is active; a says no more): back to waiting for the lock.
    assert_eq!(n.feed(handing_over(None)), vec![Command::Campaign]);
}

/// With the lock-file rules, a standby whose grant came while a peer's record still said it
/// held the lock waits for that record to say otherwise. When the peer was a switchover's old
/// active, the grant must then go to the chosen standby: it promoted itself instead.
#[test]
fn a_grant_held_until_the_old_active_steps_down_still_goes_to_the_switchovers_target() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    let a = |holds_lock: bool| PeerView {
        node: "a".into(),
        hot: false,
        epoch: KNOWN + 1,
        holds_lock,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: Some("b".into()),
    };
    let b = PeerView {
        node: "b".into(),
        hot: false,
        epoch: KNOWN,
        holds_lock: false,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: None,
    };
    n.feed(Input::Peers(vec![a(true), b.clone()]));
    let held = n.feed_all(acquired(HeartbeatView::Missing));
    assert_eq!(
        actions(&held),
        vec![],
        "held while a says it holds the lock"
    );
    assert!(kinds(&held).contains(&EventKind::GrantDeferred), "{held:?}");
    let after = n.feed_all(Input::Peers(vec![a(false), b]));
    assert_eq!(
        actions(&after),
        vec![Command::Release],
        "the grant goes back for b once a's record says it let go: {after:?}"
    );
    assert!(
        n.waiting().contains("hands activity to b"),
        "{}",
        n.waiting()
    );
    assert_eq!(n.e.state(), State::Warm);
}

#[test]
fn a_handover_to_a_standby_that_died_ends_after_the_grace() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Cold));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.feed(handing_over(Some("b")));
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::Release]
    );
    n.advance(understudy_engine::HANDOVER_GRACE - ms(1));
    assert!(!n.feed(Input::Tick).contains(&Command::Campaign));
    n.advance(ms(2));
    assert!(n.feed(Input::Tick).contains(&Command::Campaign));
    // The chosen standby is gone: a grant now is used.
    let mut gone = n.feed(Input::Peers(vec![PeerView {
        node: "a".into(),
        hot: false,
        epoch: KNOWN + 1,
        holds_lock: false,
        fresh: true,
        agent_gone: false,
        live_service: None,
        handover_to: Some("b".into()),
    }]));
    gone.extend(n.feed(acquired(HeartbeatView::Missing)));
    assert!(
        gone.iter()
            .any(|c| matches!(c, Command::PersistNextEpoch { .. })),
        "{gone:?}"
    );
}

#[test]
fn a_standby_whose_service_keeps_failing_stands_aside_until_it_is_ready() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Warm));
    assert!(n
        .feed(Input::Start { known_epoch: KNOWN })
        .contains(&Command::Campaign));
    let all = n.feed_all(Input::ServiceExited {
        reason: "pid 7 exited with code 2; its last stderr lines: bad key".into(),
    });
    assert_eq!(
        actions(&all),
        vec![Command::Release],
        "the campaign is called off"
    );
    assert!(kinds(&all).contains(&EventKind::NotReady));
    assert!(n.waiting().contains("exited with code 2") && n.waiting().contains("bad key"));
    // A grant still on its way is given back, not used.
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::Release]
    );
    assert_eq!(n.e.state(), State::Warm);
    // Restarts keep failing: still aside, no campaign.
    for pid in 20..23 {
        n.advance(secs(10));
        assert_eq!(
            n.feed(Input::Tick),
            vec![Command::StartService {
                role: Role::Standby,
                epoch: KNOWN
            }]
        );
        assert_eq!(
            actions(&n.feed_all(started(pid))),
            vec![Command::WatchSignalReady { pid }]
        );
        assert_eq!(n.feed(exited()), vec![]);
        assert!(n.waiting().contains("not ready"), "{}", n.waiting());
    }
    // It runs and handles the activate signal: ready, and back in line for the lock.
    n.advance(secs(10));
    n.feed(Input::Tick);
    // Up for an instant proves nothing (the gateway blocks its signals first and reads its
    // configuration after); up for backoff_min does.
    let all = n.up_all(30);
    assert!(!kinds(&all).contains(&EventKind::ReadyAgain));
    n.advance(secs(1));
    let all = n.feed_all(Input::Tick);
    assert!(kinds(&all).contains(&EventKind::ReadyAgain));
    assert!(actions(&all).contains(&Command::Campaign));
    assert!(n.e.ready());
}

#[test]
fn a_standby_that_cannot_reach_its_coordinator_is_not_ready_and_says_why() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    assert!(n.e.ready());
    let cmds = n.feed(Input::CoordinatorReach {
        unreachable: Some(
            "etcd has not answered for more than three quarters of lease_ttl (150 ms)".into(),
        ),
    });
    assert!(
        cmds.is_empty(),
        "reachability changes readiness only: {cmds:?}"
    );
    assert!(!n.e.ready());
    assert!(n.e.snapshot().ready == n.e.ready());
    assert!(
        n.waiting().contains("etcd has not answered"),
        "{}",
        n.waiting()
    );
    n.feed(Input::CoordinatorReach { unreachable: None });
    assert!(n.e.ready());
    assert!(n.waiting().contains("waiting for the group lock"));
}

fn outdated() -> Input {
    Input::Configuration {
        outdated: Some("its configuration changed (generation 7; this agent runs 5)".into()),
    }
}

#[test]
fn a_standby_whose_configuration_changed_gives_back_every_grant_until_it_is_current() {
    for standby in [StandbyType::Hot, StandbyType::Warm, StandbyType::Cold] {
        let mut n = Node::new(cfg(ActivationMode::TryLock, standby));
        n.feed(Input::Start { known_epoch: KNOWN });
        if standby.runs_while_standby() {
            n.up(10);
        }
        assert!(n.e.ready(), "{standby:?}");
        let all = n.feed_all(outdated());
        assert_eq!(
            actions(&all),
            vec![Command::Release],
            "{standby:?}: campaign called off"
        );
        assert!(kinds(&all).contains(&EventKind::NotReady));
        assert!(!n.e.ready() && !n.e.snapshot().ready);
        assert!(
            n.waiting().contains("configuration changed"),
            "{}",
            n.waiting()
        );
        // A grant on its way (the active just died) is given back, however long it waits.
        assert_eq!(
            n.feed(acquired_fresh(&n)),
            vec![Command::Release],
            "{standby:?}"
        );
        for _ in 0..5 {
            n.advance(secs(30));
            let out = n.feed(Input::Tick);
            assert!(!out.contains(&Command::Campaign), "{standby:?}: {out:?}");
        }
        assert_eq!(n.e.state(), State::Warm);
        // A service that fails and recovers meanwhile does not bring it back either.
        if standby.runs_while_standby() {
            n.feed(exited());
            n.advance(secs(10));
            n.feed(Input::Tick);
            n.up(11);
            n.advance(secs(2));
            let all = n.feed_all(Input::Tick);
            assert!(!actions(&all).contains(&Command::Campaign), "{all:?}");
            assert!(!n.e.ready());
        }
        // Told that it runs the wanted configuration after all: back in line.
        let all = n.feed_all(Input::Configuration { outdated: None });
        assert!(
            actions(&all).contains(&Command::Campaign),
            "{standby:?}: {all:?}"
        );
        assert!(n.e.ready(), "{standby:?}: {}", n.waiting());
    }
}

#[test]
fn a_grant_being_judged_is_given_back_when_the_configuration_changes() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    assert_eq!(
        n.feed(acquired_fresh(&n)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
    assert_eq!(n.feed(outdated()), vec![Command::Release]);
    // The epoch that was being made durable no longer makes it Hot.
    n.feed(durable(KNOWN + 1));
    assert_eq!(n.e.state(), State::Warm);
    assert!(!n.e.ready());
}

#[test]
fn an_active_keeps_its_configuration_until_it_is_a_standby_then_stands_aside() {
    let mut n = hot_trylock(StandbyType::Hot);
    let all = n.feed_all(outdated());
    assert!(actions(&all).is_empty(), "{all:?}");
    assert_eq!(n.e.state(), State::Hot);
    assert!(n.e.holds_lock());
    // A switchover makes it a standby: it does not campaign again with the old configuration.
    n.feed(Input::Switchover {
        ready: vec!["b".into()],
        to: None,
    });
    n.feed(exited());
    n.feed(peer_hot("b", KNOWN + 2));
    for _ in 0..4 {
        n.advance(secs(5));
        let out = n.feed(Input::Tick);
        assert!(!out.contains(&Command::Campaign), "{out:?}");
    }
    assert_eq!(n.e.state(), State::Warm);
    assert!(!n.e.ready());
    assert!(
        n.waiting().contains("configuration changed"),
        "{}",
        n.waiting()
    );
}

#[test]
fn an_operator_may_still_activate_a_node_whose_configuration_changed() {
    let mut n = Node::new(cfg(ActivationMode::Warm, StandbyType::Warm));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    n.feed(outdated());
    assert!(!n.e.ready());
    // Not silent: a person asked for this node, with its configuration as it is.
    assert_eq!(n.feed(Input::Activate), vec![Command::TryLock]);
    assert_eq!(
        n.feed(acquired(HeartbeatView::Missing)),
        vec![Command::PersistNextEpoch { floor: KNOWN }]
    );
}

// ---------------------------------------------------------------- release (stop failover)

#[test]
fn release_hands_the_active_service_over_only_when_alone() {
    let mut n = hot_trylock(StandbyType::Hot);
    // A standby still in the group would take over while the released service keeps acting.
    n.feed(peer_warm("b", KNOWN + 1));
    let out = n.feed(release());
    assert!(
        matches!(&out[..], [Command::Answer(Answer::ReleaseRefused { reason })] if reason.contains("node b is still in the group (its record is fresh)")),
        "{out:?}"
    );
    // What the agent found speaking for it is named (review 28, L4).
    let out = n.feed(Input::Release {
        unverified: None,
        because: vec![(
            "b".into(),
            "its agent, pid 9, still runs on this machine".into(),
        )],
    });
    assert!(
        matches!(&out[..], [Command::Answer(Answer::ReleaseRefused { reason })] if reason.contains("node b is still in the group (its agent, pid 9, still runs")),
        "{out:?}"
    );
    assert_eq!(n.e.state(), State::Hot);

    // Alone (the standby's agent is gone): the stop of failover is recorded first, while the
    // node holds the group (review 28, H1); then the service is detached, never stopped, the
    // lock is let go and the agent exits.
    n.feed(peer_gone("b", KNOWN + 1));
    let out = n.feed(release());
    assert_eq!(
        out,
        vec![Command::StopFailover {
            pid: 10,
            epoch: KNOWN + 1
        }]
    );
    assert_eq!(n.e.state(), State::Hot);
    let out = n.feed(Input::StopRecorded { error: None });
    assert_eq!(
        out,
        vec![
            Command::DetachService,
            Command::Release,
            Command::Answer(Answer::Released {
                pid: 10,
                epoch: KNOWN + 1
            }),
            Command::Exit { code: 0 },
        ]
    );
    assert!(!out.iter().any(|c| matches!(c, Command::StopService { .. })));
}

/// Review 26, F9: the agent could not tell who else is alive (etcd unreadable, the lock lost
/// during the read). Refused like a live standby, and recorded in /events, not only logged.
#[test]
fn a_release_the_agent_could_not_verify_is_refused_and_recorded() {
    let mut n = hot_trylock(StandbyType::Hot);
    let why = "cannot read the group's members (etcd: timed out)";
    let all = n.feed_all(Input::Release {
        unverified: Some(why.to_string()),
        because: vec![],
    });
    assert!(
        matches!(&actions(&all)[..], [Command::Answer(Answer::ReleaseRefused { reason })] if reason == why),
        "{all:?}"
    );
    assert!(
        all.iter().any(|c| matches!(c, Command::Record(e)
            if e.kind == EventKind::Refused && e.detail.contains(why))),
        "not recorded: {all:?}"
    );
    assert_eq!(n.e.state(), State::Hot);
    // With a standby counted too, the agent's doubt is what the refusal says (it could not
    // tell what else counts that standby in).
    n.feed(peer_warm("b", KNOWN + 1));
    let out = n.feed(Input::Release {
        unverified: Some(why.to_string()),
        because: vec![],
    });
    assert!(
        matches!(&out[..], [Command::Answer(Answer::ReleaseRefused { reason })] if reason == why),
        "{out:?}"
    );
    n.feed(peer_gone("b", KNOWN + 1));
    // Once the agent can tell again, the same node alone is released.
    let out = n.feed(release());
    assert!(
        matches!(&out[..], [Command::StopFailover { pid: 10, .. }]),
        "{out:?}"
    );
    let out = n.feed(Input::StopRecorded { error: None });
    assert!(out.contains(&Command::DetachService), "{out:?}");
}

/// Review 28, H1: a release whose stop of failover the coordinator could not record (etcd did
/// not acknowledge it) hands nothing over: a standby that missed the release would find a free
/// group. Refused, recorded, and the node stays the active one, its service supervised.
#[test]
fn a_release_whose_stop_is_not_recorded_hands_nothing_over() {
    let mut n = hot_trylock(StandbyType::Hot);
    assert!(matches!(
        &n.feed(release())[..],
        [Command::StopFailover { pid: 10, .. }]
    ));
    let all = n.feed_all(Input::StopRecorded {
        error: Some("etcd: no answer before the deadline".into()),
    });
    assert!(
        matches!(&actions(&all)[..], [Command::Answer(Answer::ReleaseRefused { reason })]
            if reason.contains("cannot record in the coordinator that failover is stopped (etcd: no answer")),
        "{all:?}"
    );
    assert!(kinds(&all).contains(&EventKind::Refused), "{all:?}");
    assert_eq!(n.e.state(), State::Hot);
    assert!(n.e.holds_lock());
    assert!(matches!(n.e.service(), SvcState::Running { pid: 10, .. }));
    // An answer nobody waits for changes nothing.
    assert_eq!(n.feed(Input::StopRecorded { error: None }), vec![]);
    assert_eq!(n.e.state(), State::Hot);
}

/// While failover is stopped for the group, a standby is not ready and says why; the stop and
/// its end are in the timeline.
#[test]
fn a_standby_of_a_stopped_group_is_not_ready_and_says_why() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    assert!(n.e.ready());
    let why = "node a released its service (pid 7, epoch 3) at 2026-12-04T22:00:00Z";
    let all = n.feed_all(Input::FailoverStopped {
        stopped: Some(why.into()),
    });
    assert!(kinds(&all).contains(&EventKind::FailoverStopped), "{all:?}");
    assert!(!n.e.ready());
    assert!(
        n.waiting()
            .contains("failover is stopped: node a released its service")
            && n.waiting().contains("POST /failover/start"),
        "{}",
        n.waiting()
    );
    let all = n.feed_all(Input::FailoverStopped { stopped: None });
    assert!(kinds(&all).contains(&EventKind::FailoverStarted), "{all:?}");
    assert!(n.e.ready());
}

#[test]
fn a_standby_cannot_be_released() {
    let mut n = Node::new(cfg(ActivationMode::TryLock, StandbyType::Hot));
    n.feed(Input::Start { known_epoch: KNOWN });
    n.up(10);
    let out = n.feed(release());
    assert!(
        matches!(&out[..], [Command::Answer(Answer::ReleaseRefused { .. })]),
        "{out:?}"
    );
}

/// Review 30, M6: a hot-mode node tries the group once at its start; refused because failover
/// was stopped, it tries again once failover is started again (it used to wait for an
/// operator, and the control plane's start failover timed out on it).
#[test]
fn a_hot_mode_node_refused_while_failover_was_stopped_tries_again_once_started() {
    let mut n = Node::new(cfg(ActivationMode::Hot, StandbyType::Hot));
    let out = n.feed(Input::Start { known_epoch: KNOWN });
    assert!(out.contains(&Command::TryLock), "{out:?}");
    n.up(10);
    n.feed(Input::FailoverStopped {
        stopped: Some("node a released its service".into()),
    });
    n.feed(Input::LockBusy { holder: None });
    assert!(
        n.waiting().contains("failover is stopped"),
        "{}",
        n.waiting()
    );
    let out = n.feed(Input::FailoverStopped { stopped: None });
    assert_eq!(actions(&out), vec![Command::TryLock], "{out:?}");
    let out = n.feed(acquired(HeartbeatView::Missing));
    assert_eq!(out, vec![Command::PersistNextEpoch { floor: KNOWN }]);
}
