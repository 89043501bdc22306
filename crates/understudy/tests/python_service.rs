//! The Python example service (`examples/python/service.py`, the contract of
//! `docs/service-contract.md` without the Rust crate) under real agents: it is told it is active
//! by signal, reads its epoch from its agent, and fails over on kill -9 of the active agent with
//! never two actives, as the built-in services do.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const S: Duration = Duration::from_secs(1);

/// The interpreter itself, not a version manager's shim script in front of it (whose start is
/// slower and whose pid is not the service's for a while).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("this test runs the Python example service: python3 must be installed");
    assert!(out.status.success(), "python3 does not run: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python/service.py")
}

/// A trylock group with warm standbys protecting the Python service, logging into the group's
/// service log (the format the overlap checker reads). With `wrapper`, the service is started by
/// `sh -c "WRAPPER; exec python3 service.py"`.
fn python_group(wrapper: Option<&str>) -> Group {
    let mut g = Group::new("trylock", "warm");
    let script = script().display().to_string();
    match wrapper {
        Some(w) => {
            let line = format!("{w}; exec {} {script}", python());
            g.set_service("command", &arr(&["sh", "-c", &line]));
        }
        None => g.set_service("command", &arr(&[&python(), &script])),
    }
    g.set_service(
        "env",
        &format!("{{ SERVICE_LOG = {} }}", q(&g.log.display().to_string())),
    );
    g
}

#[test]
fn the_python_service_fails_over_on_kill_9_of_the_active_agent() {
    fails_over(python_group(None));
}

/// Started with the activation signal ignored (a wrapper's `trap '' USR1`), which the agent
/// counts as handled: its signal to the first active comes while the wrapper still runs and is
/// discarded. The service finds out from the agent's status that it must activate.
#[test]
fn the_python_service_activates_even_when_started_with_the_signal_ignored() {
    fails_over(python_group(Some("trap '' USR1; sleep 0.3")));
}

fn fails_over(mut g: Group) {
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", 10 * S);
    let e1 = g.epoch("a");
    g.wait_service_active("a", e1);
    let pa = g.service_pid("a").expect("a's service");
    let pb = g.service_pid("b").expect("b's standby service");
    assert_eq!(
        environ(pb).get("UNDERSTUDY_ROLE").map(String::as_str),
        Some("standby")
    );
    // a's service acts (ticks) before it is killed, so its interval has a length.
    assert!(wait_until(5 * S, || g.logged(|l| l.pid == pa && l.event == "tick")));

    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e2 = g.epoch("b");
    assert!(e2 > e1, "epoch {e2} after {e1}");
    // The standby process itself became active, told by signal, with the new epoch it read
    // from its agent (not a fresh process started active).
    g.wait_service_active("b", e2);
    assert!(g.logged(|l| l.pid == pb && l.event == "active" && l.epoch == e2));
    assert!(
        wait_until(S, || !alive(pa)),
        "the killed node's service (pid {pa}) outlived its agent"
    );
    assert!(wait_until(5 * S, || g.logged(|l| l.pid == pb && l.event == "tick")));
    w.finish();
    let ivs = g.expect_actives(2);
    assert_eq!((ivs[0].pid, ivs[0].epoch), (pa, e1));
    assert_eq!((ivs[1].pid, ivs[1].epoch), (pb, e2));

    // Stopping the node stops the service cleanly (SIGTERM: it logs stop and exits 0).
    let st = g.sigterm("b", 10 * S);
    assert!(st.success(), "agent b: {st}");
    assert!(g.logged(|l| l.pid == pb && l.event == "stop"));
}

#[test]
fn the_python_service_follows_the_environment_rule() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(python());
        cmd.arg(script()).env_remove("SERVICE_LOG");
        testbed::proc::without_service_env(&mut cmd);
        cmd.envs(env.iter().copied());
        cmd.output().expect("run the python service")
    };
    for (env, named) in [
        (
            &[("UNDERSTUDY_ROLE", "standby"), ("UNDERSTUDY_EPOCH", "1")][..],
            "UNDERSTUDY_ADMIN",
        ),
        (&[("UNDERSTUDY_NODE", "a")][..], "UNDERSTUDY_ROLE"),
        (
            &[("UNDERSTUDY_ROLE", "active"), ("UNDERSTUDY_EPOCH", "-3")][..],
            "UNDERSTUDY_EPOCH",
        ),
    ] {
        let out = run(env);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{env:?}: {err}");
    }
}
