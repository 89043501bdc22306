//! Identity mistakes are refused at start, changing nothing: a second agent with the name of a
//! live node of the group, and an agent of another group pointed at the group's lock file, exit
//! with code 2 and a clear error; the live nodes keep their records, the lock and the epoch.
//! A node restarted under its own name after `kill -9` is not taken for a duplicate.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const S: Duration = Duration::from_secs(1);

/// Run an agent on `config` and expect it to refuse to start: (exit code, its output).
fn refused(config: &std::path::Path) -> (i32, String) {
    let out = config.with_extension("out");
    let file = std::fs::File::create(&out).expect("output file");
    let mut child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("spawn agent");
    let st = exit_within(&mut child, 10 * S, || {
        format!(
            "the agent of {} joined instead of refusing:\n{}",
            config.display(),
            std::fs::read_to_string(&out).unwrap_or_default()
        )
    });
    (
        st.code().unwrap_or(-1),
        std::fs::read_to_string(&out).unwrap_or_default(),
    )
}

/// `name`'s configuration with another admin address (and optionally another name and group).
fn variant(g: &Group, name: &str, new_name: &str, group: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&g.nodes[name].config).expect("config");
    let text = text
        .replace(&q(&g.admin(name)), &q(&free_addr()))
        .replace(
            &format!("name = {}", q(name)),
            &format!("name = {}", q(new_name)),
        )
        .replace("group = \"g\"", &format!("group = {}", q(group)));
    let path = g
        .path
        .join(format!("{new_name}-{group}-{}.toml", unix_ms()));
    std::fs::write(&path, text).expect("write config");
    path
}

fn record(g: &Group, node: &str) -> Option<Value> {
    let mut p = g.lock.as_os_str().to_owned();
    p.push(format!(".members/{node}.json"));
    let text = std::fs::read_to_string(p).ok()?;
    serde_json::from_str(&text).ok()
}

fn epoch_file(g: &Group) -> Vec<u8> {
    let mut p = g.lock.as_os_str().to_owned();
    p.push(".epoch");
    std::fs::read(p).unwrap_or_default()
}

#[test]
fn a_second_agent_with_a_live_nodes_name_is_refused() {
    let mut g = Group::new("trylock", "warm");
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    let epoch = g.epoch("a");
    let before = epoch_file(&g);
    for name in ["a", "b"] {
        let pid = g.agent_pid(name);
        let (code, out) = refused(&variant(&g, name, name, "g"));
        assert_eq!(code, 2, "a duplicate {name} must exit 2:\n{out}");
        assert!(
            out.contains("already taken") && out.contains(&format!("pid {pid}")),
            "the error must say the name is taken, by which agent:\n{out}"
        );
        let rec = record(&g, name).expect("record");
        assert_eq!(
            rec["agent_pid"].as_u64(),
            Some(u64::from(pid)),
            "the live node's record was overwritten: {rec}"
        );
    }
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    assert_eq!(g.st("a")["holds_lock"], true);
    assert_eq!(g.epoch("a"), epoch);
    assert_eq!(epoch_file(&g), before, "the epoch file changed");
    g.wait_ready("b", 5 * S);
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));
    g.expect_actives(1);
}

#[test]
fn an_agent_of_another_group_on_the_lock_file_is_refused() {
    let mut g = Group::new("trylock", "warm");
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    let epoch = g.epoch("a");
    let before = epoch_file(&g);
    // Under a new name (the name check alone would let it in) and under a's own name.
    for name in ["x", "a"] {
        let (code, out) = refused(&variant(&g, "a", name, "other"));
        assert_eq!(code, 2, "an agent of another group must exit 2:\n{out}");
        assert!(
            out.contains("belongs to group \"g\""),
            "the error must name the group the lock file belongs to:\n{out}"
        );
    }
    assert!(
        record(&g, "x").is_none(),
        "the refused agent wrote a record"
    );
    assert_eq!(record(&g, "a").expect("a's record")["group"], "g");
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    assert_eq!(g.epoch("a"), epoch);
    assert_eq!(epoch_file(&g), before, "the epoch file changed");
    g.expect_actives(1);
}

#[test]
fn a_killed_node_restarts_under_its_own_name_at_once() {
    let mut g = Group::new("trylock", "warm");
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    g.kill9("b");
    // Its record is still fresh and names a dead agent of this machine: neither a refusal nor
    // a wait to see whether someone else keeps it up.
    g.start("b");
    g.wait_ready("b", 5 * S);
    assert!(
        !g.output("b").contains("watching it"),
        "a dead agent's record on this machine held the restart back:\n{}",
        g.output("b")
    );
    assert_eq!(
        record(&g, "b").expect("record")["agent_pid"].as_u64(),
        Some(u64::from(g.agent_pid("b")))
    );
    g.expect_actives(1);
}
