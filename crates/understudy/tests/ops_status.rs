//! What status shows stays true after the fact (issue 12, item 1): a Hot-mode node refused at
//! start stops blaming a holder that is gone, and a dead node's row never claims a live pid.

mod common;
mod skip;

use std::time::Duration;

use common::{q, Group};

#[test]
fn a_refusal_stops_naming_a_holder_that_is_gone() {
    let mut g = Group::new("trylock", "cold");
    g.add("a");
    g.set_activation("mode", &q("hot"));
    g.add("b");
    let w = g.watch();
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.start("b");
    g.wait_status("b", "refused naming a", Duration::from_secs(10), |s| {
        s["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("activation refused: node a holds the group lock"))
    });
    g.wait_service_active("a", g.epoch("a"));
    g.kill9("a");
    let st = g.wait_status(
        "b",
        "the refusal says a is gone",
        Duration::from_secs(10),
        |s| {
            s["waiting"].as_str().is_some_and(|w| {
                w.contains("node a held the group lock, but it is gone and no node is active")
            })
        },
    );
    assert_eq!(
        st["mode"], "Warm",
        "Hot mode does not take the lock by itself"
    );
    let (code, out, err) = common::run_cli(&["status", "--agent", &g.admin("b")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NO ACTIVE NODE"), "{out}");
    assert!(
        !out.contains("node a holds the group lock"),
        "the table still blames a: {out}"
    );
    assert!(out.contains("it is gone"), "{out}");
    // What the reason says works.
    let (code, out, err) = common::run_cli(&["activate", "--agent", &g.admin("b")]);
    assert_eq!(code, 0, "{out}{err}");
    g.wait_mode("b", "Hot", Duration::from_secs(5));
    w.finish();
    g.expect_actives(2);
}

#[test]
fn a_dead_node_row_never_claims_a_live_pid() {
    let mut g = Group::new("trylock", "cold");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_mode("b", "Warm", Duration::from_secs(10));
    // The kill must come after a's service logged its activity, or the log holds one active.
    g.wait_service_active("a", g.epoch("a"));
    // One /status read can miss its timeout on a loaded machine: wait for the pid, as
    // admin_limits does.
    assert!(
        common::wait_until(Duration::from_secs(5), || g.service_pid("a").is_some()),
        "a's service pid never showed in its /status"
    );
    let svc = g.service_pid("a").expect("a's service pid");
    g.kill9("a");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    assert!(
        common::wait_until(Duration::from_secs(5), || !common::alive(svc)),
        "a's service {svc} outlived its agent"
    );
    let row = || {
        common::get_json(&g.admin("b"), "/group")
            .and_then(|g| {
                g["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["node"] == "a"))
                    .cloned()
            })
            .expect("a's row in /group")
    };
    let check = |row: serde_json::Value| {
        assert!(row["pid"].is_null(), "a's row claims a pid: {row}");
        assert_ne!(row["service"], "running", "{row}");
        assert_eq!(row["agent_gone"], true, "{row}");
        let (_, out, _) = common::run_cli(&["status", "--agent", &g.admin("b")]);
        let line = out
            .lines()
            .find(|l| l.starts_with("a "))
            .unwrap_or_default()
            .to_string();
        assert!(
            !line.contains(&format!("pid {svc}")) && !line.contains("running"),
            "the status table's row for a: {line}\n{out}"
        );
    };
    // Right after the kill, while a's record is still fresh, and once it is stale.
    check(row());
    assert!(
        common::wait_until(Duration::from_secs(5), || row()["fresh"] == false),
        "a's record never went stale"
    );
    check(row());
    // b's service logs its activity a moment after b reports Hot.
    let epoch = g.epoch("b");
    g.wait_service_active("b", epoch);
    w.finish();
    g.expect_actives(2);
}
