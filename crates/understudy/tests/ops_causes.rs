//! A takeover's cause names the previous active and what happened to it (issue 12, item 1):
//! agent gone, service exited with its code, health check failed with its last error,
//! switchover asked by which address, manual activation by which address. Each is provoked for
//! real on a group of real agents, and every test runs the safety checkers.

mod common;
mod skip;

use std::time::Duration;

use common::{arr, Group, BIN};
use serde_json::Value;

/// The cause of `node`'s takeover at `epoch`, waiting for it to be in `/events`.
fn cause(g: &Group, node: &str, epoch: u64) -> String {
    let mut last = Value::Null;
    let found = common::wait_until(Duration::from_secs(5), || {
        last = g.events(node);
        last["takeovers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["epoch"].as_u64() == Some(epoch)))
    });
    assert!(found, "{node} lists no takeover at epoch {epoch}: {last}");
    last["takeovers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["epoch"].as_u64() == Some(epoch)))
        .and_then(|t| t["cause"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn assert_names(cause: &str, parts: &[&str]) {
    for p in parts {
        assert!(cause.contains(p), "the cause lacks {p:?}: {cause}");
    }
}

/// a active, b a ready standby, both watched.
fn a_active_b_ready(g: &mut Group) -> common::Watcher {
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", Duration::from_secs(20));
    // A kill before a's service logged its activity would hide it from the overlap checker.
    g.wait_service_active("a", g.epoch("a"));
    w
}

#[test]
fn kill_9_of_the_active_agent_names_it_and_its_agent_gone() {
    let mut g = Group::new("trylock", "hot");
    let w = a_active_b_ready(&mut g);
    let pid = g.agent_pid("a");
    g.kill9("a");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    let c = cause(&g, "b", g.epoch("b"));
    assert_names(
        &c,
        &[
            "previous active a (epoch 1)",
            &format!("its agent is gone (pid {pid} no longer runs)"),
        ],
    );
    w.finish();
    g.expect_actives(2);
}

#[test]
fn an_active_service_that_exits_is_named_with_its_exit_code() {
    let mut g = Group::new("trylock", "cold");
    // The demo service, ended (and the shell exiting 3) when `exit-<node>` appears.
    let script = r#""$0" demo-service --log "$1" & while [ ! -e "$2/exit-$UNDERSTUDY_NODE" ]; do sleep 0.02; done; kill $!; wait; exit 3"#;
    g.set_service(
        "command",
        &arr(&[
            "sh",
            "-c",
            script,
            BIN,
            &g.log.display().to_string(),
            &g.path.display().to_string(),
        ]),
    );
    let w = a_active_b_ready(&mut g);
    g.wait_service_active("a", 1);
    std::fs::write(g.path.join("exit-a"), "").expect("touch");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    let c = cause(&g, "b", g.epoch("b"));
    assert_names(
        &c,
        &[
            "previous active a (epoch 1) stepped down",
            "exited with code 3",
        ],
    );
    w.finish();
    g.expect_actives(2);
}

#[test]
fn a_failed_health_check_is_named_with_its_last_error() {
    let mut g = Group::new("trylock", "hot");
    let sick = g.path.join("sick-");
    g.tail = format!(
        "[health]\ncommand = {}\ninterval = \"100ms\"\ntimeout = \"1s\"\nfailures = 2\nstart_period = \"100ms\"\n",
        arr(&[
            "sh",
            "-c",
            &format!("test ! -e {}$UNDERSTUDY_NODE", sick.display())
        ])
    );
    let w = a_active_b_ready(&mut g);
    std::fs::write(g.path.join("sick-a"), "").expect("touch");
    g.wait_mode("b", "Hot", Duration::from_secs(15));
    let c = cause(&g, "b", g.epoch("b"));
    assert_names(
        &c,
        &[
            "previous active a (epoch 1) stepped down",
            "health check failed",
        ],
    );
    w.finish();
    g.expect_actives(2);
}

#[test]
fn a_switchover_is_named_with_who_asked() {
    let mut g = Group::new("trylock", "hot");
    let w = a_active_b_ready(&mut g);
    let (code, out, err) = common::run_cli(&["switchover", "--agent", &g.admin("a")]);
    assert_eq!(code, 0, "{out}{err}");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    let c = cause(&g, "b", g.epoch("b"));
    assert_names(
        &c,
        &[
            "previous active a (epoch 1) stepped down",
            "switchover",
            "requested by 127.0.0.1:",
        ],
    );
    w.finish();
    g.expect_actives(2);
}

#[test]
fn a_manual_activation_is_named_with_who_asked() {
    let mut g = Group::new("warm", "cold");
    let w = g.add_watched_pair();
    g.start("a");
    g.start("b");
    g.put_hot_ok("a");
    let c = cause(&g, "a", g.epoch("a"));
    assert_names(
        &c,
        &[
            "manual activate (PUT /service/activationmode/hot from 127.0.0.1:",
            "no previous active",
        ],
    );
    g.wait_service_active("a", 1);
    g.kill9("a");
    g.put_hot_ok("b");
    let c = cause(&g, "b", g.epoch("b"));
    assert_names(
        &c,
        &[
            "manual activate (PUT /service/activationmode/hot from 127.0.0.1:",
            "previous active a (epoch 1): its agent is gone",
        ],
    );
    w.finish();
    g.expect_actives(2);
}
