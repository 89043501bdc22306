//! A one-shot command under a guardian (the activate hook), with real processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{alive, all_gone, read_when_ready, sh};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use understudy_service::{run_guarded, ExitReason, ServiceSpec};

const SECOND: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(10);

/// Set in the environment of the re-executed test binary that plays the agent: the directory
/// where its slow hook writes its pids.
const AGENT_MODE: &str = "UNDERSTUDY_ONESHOT_TEST_AGENT";

/// A slow hook: starts a background grandchild, writes "<own pid> <grandchild pid>" to
/// `$D/pids`, then waits for ever.
const SLOW: &str = r#"sleep 1000 & echo "$$ $!" >"$D/pids.tmp"; mv "$D/pids.tmp" "$D/pids"; wait"#;

/// The hook's pids, its guardian's (its parent) added.
async fn family(dir: &Path) -> Vec<u32> {
    let text = read_when_ready(&dir.join("pids"), LONG).await;
    let mut pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).expect("hook stat");
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("ppid");
    pids.push(ppid);
    pids
}

fn slow(dir: &Path) -> ServiceSpec {
    sh(SLOW, &[("D", dir.to_str().expect("utf-8 path"))])
}

#[tokio::test]
async fn a_hook_runs_to_its_end_with_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let spec = sh(
        r#"echo "$UNDERSTUDY_ROLE $UNDERSTUDY_EPOCH" >"$D/env"; exit 3"#,
        &[
            ("UNDERSTUDY_ROLE", "active"),
            ("UNDERSTUDY_EPOCH", "7"),
            ("D", d),
        ],
    );
    let reason = tokio::time::timeout(LONG, run_guarded(&spec))
        .await
        .expect("the hook did not end")
        .expect("the hook did not start");
    assert_eq!(reason, ExitReason::Code(3));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("env")).unwrap(),
        "active 7\n"
    );
}

#[tokio::test]
async fn a_hook_that_cannot_be_executed_is_reported() {
    let mut spec = sh("exit 0", &[]);
    spec.command = vec!["/nonexistent/hook".into()];
    let reason = tokio::time::timeout(LONG, run_guarded(&spec))
        .await
        .expect("no answer")
        .expect("the guardian did not start");
    assert!(
        matches!(&reason, ExitReason::StartFailed(why) if why.contains("/nonexistent/hook")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn giving_up_the_wait_kills_the_hook_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let spec = slow(dir.path());
    let run = tokio::spawn(async move { run_guarded(&spec).await });
    let pids = family(dir.path()).await;
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    run.abort();
    let _ = run.await;
    if let Err(survivors) = all_gone(&pids, LONG).await {
        panic!("still alive after the wait was dropped: {survivors:?}");
    }
}

/// Not a test on its own: the agent of `kill_9_of_the_agent_kills_a_slow_hook`, run by
/// re-executing this test binary with [`AGENT_MODE`] set.
#[tokio::test]
async fn agent_helper() {
    let Some(dir) = std::env::var_os(AGENT_MODE) else {
        return;
    };
    let reason = run_guarded(&slow(Path::new(&dir))).await;
    panic!("the slow hook ended: {reason:?}");
}

#[tokio::test]
async fn kill_9_of_the_agent_kills_a_slow_hook() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["agent_helper", "--exact", "--test-threads=1"])
        .env(AGENT_MODE, dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pids = family(dir.path()).await;
    assert_eq!(pids.len(), 3, "hook, grandchild, guardian: {pids:?}");
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    kill(Pid::from_raw(agent.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    let took = all_gone(&pids, SECOND).await;
    agent.wait().await.unwrap();
    if let Err(survivors) = took {
        for p in &survivors {
            let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
        }
        panic!("still alive 1 s after kill -9 of the agent: {survivors:?}");
    }
}
