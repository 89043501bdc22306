//! The activate hook (`service.activate_hook`) runs under a guardian like the service: it gets
//! the active's environment, and it dies with its agent, however the agent dies.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::Duration;

use common::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn kill_9_of_the_agent_kills_its_slow_activate_hook() {
    let mut g = Group::new("trylock", "warm");
    let pids = g.path.join("hook.pids");
    // Slow: it starts a grandchild and waits for it; it writes its environment and both pids
    // once (the rename makes the file appear whole).
    let hook = format!(
        r#"sleep 1000 & echo "$$ $! $UNDERSTUDY_ROLE $UNDERSTUDY_EPOCH" >"{p}.tmp"; mv "{p}.tmp" "{p}"; wait"#,
        p = pids.display()
    );
    g.set_service("activate_hook", &arr(&["sh", "-c", &hook]));
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    let epoch = g.epoch("a");
    assert!(
        wait_until(10 * S, || pids.exists()),
        "the activate hook never ran"
    );
    let text = std::fs::read_to_string(&pids).expect("hook pids");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{text:?}");
    assert_eq!(words[2], "active");
    assert_eq!(words[3], epoch.to_string());
    let hook_pids: Vec<u32> = words[..2].iter().map(|p| p.parse().expect("pid")).collect();
    assert!(hook_pids.iter().all(|p| alive(*p)), "{hook_pids:?}");
    // Its own process group, not the agent's: the guardian leads it.
    assert_ne!(pgid_of(hook_pids[0]), pgid_of(g.agent_pid("a")));

    g.kill9("a");
    assert!(
        wait_until(S, || hook_pids.iter().all(|p| !alive(*p))),
        "the activate hook outlived its agent: {:?}",
        hook_pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}
