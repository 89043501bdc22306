//! A standby whose service cannot start (a bad configuration: it exits 2 at every start) is not
//! ready, says why in `status` (exit code and last stderr lines), and does not take over: when
//! the active is killed, the group is left without an active node rather than with a Hot node
//! that has no service, until a node whose service runs comes back and takes over.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::Duration;

use common::*;

const S: Duration = Duration::from_secs(1);

/// What the broken service says on stderr before it exits 2.
const COMPLAINT: &str = "gw.toml line 3: unknown key sesion";

fn epoch_file(g: &Group) -> Vec<u8> {
    let mut p = g.lock.as_os_str().to_owned();
    p.push(".epoch");
    std::fs::read(p).unwrap_or_default()
}

#[test]
fn a_standby_whose_service_cannot_start_is_not_ready_and_does_not_take_over() {
    let mut g = Group::new("trylock", "warm");
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    g.add("b");
    let config = &g.nodes["b"].config;
    let text = std::fs::read_to_string(config).expect("config");
    let command_line = text
        .lines()
        .find(|l| l.starts_with("command = "))
        .expect("command line")
        .to_string();
    let broken = format!(
        "command = {}",
        arr(&[
            "sh",
            "-c",
            &format!("echo starting >&2; echo '{COMPLAINT}' >&2; exit 2")
        ])
    );
    std::fs::write(config, text.replace(&command_line, &broken)).expect("write config");
    g.start("b");

    let st = g.wait_status("b", "not ready, with the reason", 10 * S, |s| {
        s["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("not ready") && w.contains(COMPLAINT))
    });
    let waiting = st["waiting"].as_str().unwrap_or_default();
    assert!(
        waiting.contains("exited with code 2"),
        "the exit code is missing: {waiting}"
    );
    assert_eq!(st["ready"], false);
    let (code, out, err) = run_cli(&["status", "--agent", &g.admin("b")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(COMPLAINT),
        "`understudy status` does not say why b is not ready:\n{out}"
    );

    let epoch = g.epoch("a");
    let before = epoch_file(&g);
    g.wait_service_active("a", epoch);
    g.kill9("a");
    // Without the rule b would be granted the lock within milliseconds and go Hot with no
    // service; it stays Warm, takes no epoch, and keeps saying why.
    g.stays("b", "Warm", 3 * S);
    let kinds = g.event_kinds("b");
    assert!(
        !kinds
            .iter()
            .any(|k| k == "lock_obtained" || k == "epoch_durable"),
        "b took over: {kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "not_ready"), "{kinds:?}");
    assert_eq!(epoch_file(&g), before, "an epoch was taken");
    assert!(g.waiting("b").contains(COMPLAINT), "{}", g.waiting("b"));

    // A node whose service runs takes the group back, and b still stands aside.
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    assert!(g.epoch("a") > epoch);
    g.expect_actives(2);
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));
}
