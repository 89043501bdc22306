//! A Hot-mode node refused the lock at start keeps its reason true: it names the node that holds
//! the lock now, or says that the one it named is gone (issue 12).

use std::time::Duration;

use understudy_engine::{
    ActivationMode, Engine, EngineConfig, Input, Now, PeerView, Rules, StandbyType, State,
};

fn engine() -> Engine {
    Engine::new(EngineConfig {
        mode: ActivationMode::Hot,
        standby: StandbyType::Cold,
        heartbeat_delay: Duration::from_secs(2),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        stable_after: Duration::from_secs(60),
        yield_timeout: Duration::from_secs(5),
        health_check: false,
        signal_wait: Duration::from_secs(5),
        rules: Rules::default(),
    })
}

fn now() -> Now {
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
    let mut e = engine();
    e.handle(now(), Input::Start { known_epoch: 3 });
    e.handle(
        now(),
        Input::LockBusy {
            holder: Some("w1".into()),
        },
    );
    assert!(
        waiting(&e).contains("node w1 holds the group lock"),
        "{}",
        waiting(&e)
    );
    e.handle(now(), Input::Peers(vec![peer("w1", true, false)]));
    assert!(waiting(&e).contains("node w1 holds the group lock"));
    // w1 is killed: its record still says Hot, but its agent is gone.
    e.handle(now(), Input::Peers(vec![peer("w1", true, true)]));
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
        now(),
        Input::Peers(vec![peer("w1", true, true), peer("w2", true, false)]),
    );
    assert!(
        waiting(&e).contains("node w2 holds the group lock"),
        "{}",
        waiting(&e)
    );
}
