//! The supervisor and the guardian, with real processes.

mod common;

use std::time::Duration;

use common::{alive, all_gone, next, read_when_ready, sh};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use understudy_service::{ExitReason, ServiceError, ServiceEvent, Supervisor};

const SECOND: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(10);

/// Set in the environment of the re-executed test binary that plays the agent.
const AGENT_MODE: &str = "UNDERSTUDY_SERVICE_TEST_AGENT";

/// A service that starts two background grandchildren and prints every pid, then waits.
const FAMILY: &str = r#"sleep 1000 & echo "grandchild $!"; sleep 1000 & echo "grandchild $!"; echo "service $$"; wait"#;

fn supervisor() -> (Supervisor, UnboundedReceiver<ServiceEvent>) {
    let (tx, rx) = unbounded_channel();
    (Supervisor::new(tx), rx)
}

async fn started(rx: &mut UnboundedReceiver<ServiceEvent>) -> (u64, u32) {
    match next(rx, LONG).await {
        ServiceEvent::Started { generation, pid } => (generation, pid),
        other => panic!("expected Started, got {other:?}"),
    }
}

async fn exited(rx: &mut UnboundedReceiver<ServiceEvent>) -> (u64, Option<u32>, ExitReason) {
    match next(rx, LONG).await {
        ServiceEvent::Exited {
            generation,
            pid,
            reason,
            ..
        } => (generation, pid, reason),
        other => panic!("expected Exited, got {other:?}"),
    }
}

/// Parses "a b" pids written by a script.
fn pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn env_is_passed_and_started_pid_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    let spec = sh(
        r#"echo "$UNDERSTUDY_X" >"$D/env"; exec sleep 100"#,
        &[("UNDERSTUDY_X", "hello there"), ("D", d)],
    );
    let generation = sup.start(&spec).unwrap();
    assert_eq!(generation, 1);
    assert!(sup.is_running());
    let (g, pid) = started(&mut rx).await;
    assert_eq!(g, generation);
    assert_eq!(sup.pid(), Some(pid));
    assert!(alive(pid));
    // The service runs in the guardian's group, which is not ours.
    let pgid = sup.pgid().unwrap();
    assert_ne!(pgid, pid);
    assert_eq!(
        nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).unwrap(),
        Pid::from_raw(pgid as i32)
    );
    assert_eq!(
        read_when_ready(&dir.path().join("env"), LONG).await,
        "hello there\n"
    );

    sup.kill_now();
    let (g, p, reason) = exited(&mut rx).await;
    assert_eq!((g, p), (generation, Some(pid)));
    assert_eq!(reason, ExitReason::Signal(9));
    assert_eq!(reason.to_string(), "killed by SIGKILL");
    assert!(!sup.is_running());
    assert_eq!(sup.pid(), None);
    assert!(all_gone(&[pid, pgid], SECOND).await.is_ok());
}

#[tokio::test]
async fn signal_reaches_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    // `wait` on a background sleep, because sh runs traps only between commands.
    let script = r#"trap 'echo got >"$D/usr1"' USR1; echo ready >"$D/ready"; while :; do sleep 1 & wait $!; done"#;
    assert!(matches!(
        sup.signal(Signal::SIGUSR1),
        Err(ServiceError::NotRunning)
    ));
    sup.start(&sh(script, &[("D", d)])).unwrap();
    started(&mut rx).await;
    read_when_ready(&dir.path().join("ready"), LONG).await;
    sup.signal(Signal::SIGUSR1).unwrap();
    assert_eq!(
        read_when_ready(&dir.path().join("usr1"), LONG).await,
        "got\n"
    );
    // The guardian ignores the signal: the service is still supervised.
    assert!(sup.is_running());
    sup.kill_now();
    exited(&mut rx).await;
}

#[tokio::test]
async fn begin_stop_sends_sigterm_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    let script =
        r#"trap 'exit 7' TERM; echo ready >"$D/ready"; while :; do sleep 1 & wait $!; done"#;
    sup.start(&sh(script, &[("D", d)])).unwrap();
    started(&mut rx).await;
    read_when_ready(&dir.path().join("ready"), LONG).await;
    let t = tokio::time::Instant::now();
    sup.begin_stop(LONG);
    let (_, _, reason) = exited(&mut rx).await;
    assert_eq!(reason, ExitReason::Code(7));
    assert_eq!(reason.to_string(), "exited with code 7");
    // Code 7 already shows the service ran its TERM trap; this generous liveness bound (half
    // the stop timeout) shows the stop did not wait out the timeout as well.
    assert!(t.elapsed() < LONG / 2, "took {:?}", t.elapsed());
    assert!(!sup.is_running());
}

#[tokio::test]
async fn begin_stop_kills_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    let script = r#"trap '' TERM; echo ready >"$D/ready"; sleep 100"#;
    sup.start(&sh(script, &[("D", d)])).unwrap();
    let (_, pid) = started(&mut rx).await;
    read_when_ready(&dir.path().join("ready"), LONG).await;
    let grace = Duration::from_millis(300);
    let t = tokio::time::Instant::now();
    sup.begin_stop(grace);
    let (_, p, reason) = exited(&mut rx).await;
    assert!(t.elapsed() >= grace, "killed after {:?}", t.elapsed());
    assert_eq!((p, reason), (Some(pid), ExitReason::Signal(9)));
}

#[tokio::test]
async fn stop_takes_grandchildren_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    let script = r#"sleep 1000 & a=$!; sleep 1000 & b=$!; echo "$a $b" >"$D/pids"; wait"#;
    sup.start(&sh(script, &[("D", d)])).unwrap();
    let (_, pid) = started(&mut rx).await;
    let grandchildren = pids(&read_when_ready(&dir.path().join("pids"), LONG).await);
    assert_eq!(grandchildren.len(), 2);
    assert!(grandchildren.iter().all(|p| alive(*p)));
    // sh dies of SIGTERM at once; its background jobs would not.
    sup.begin_stop(LONG);
    let (_, _, reason) = exited(&mut rx).await;
    assert_eq!(reason, ExitReason::Signal(15));
    all_gone(&[pid, grandchildren[0], grandchildren[1]], SECOND)
        .await
        .unwrap();
}

#[tokio::test]
async fn exec_failure_is_start_failed() {
    let (mut sup, mut rx) = supervisor();
    let mut spec = sh("", &[]);
    spec.command = vec!["/nonexistent/understudy-test-service".into()];
    let generation = sup.start(&spec).unwrap();
    let (g, pid, reason) = exited(&mut rx).await;
    assert_eq!((g, pid), (generation, None));
    match &reason {
        ExitReason::StartFailed(why) => assert!(why.contains("No such file"), "{why}"),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(reason.to_string().starts_with("failed to start: "));
    assert!(!sup.is_running());
}

#[tokio::test]
async fn exit_code_restart_and_already_running() {
    let (mut sup, mut rx) = supervisor();
    assert_eq!(sup.generation(), 0);
    assert_eq!(sup.start(&sh("exit 3", &[])).unwrap(), 1);
    started(&mut rx).await;
    assert_eq!(exited(&mut rx).await.2, ExitReason::Code(3));
    assert!(!sup.is_running());

    assert_eq!(sup.start(&sh("exec sleep 100", &[])).unwrap(), 2);
    assert!(matches!(
        sup.start(&sh("true", &[])),
        Err(ServiceError::AlreadyRunning { .. })
    ));
    assert_eq!(started(&mut rx).await.0, 2);
    sup.kill_now();
    assert_eq!(exited(&mut rx).await.0, 2);
    assert_eq!(sup.generation(), 2);
}

#[tokio::test]
async fn guardian_killed_takes_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    let script = r#"sleep 1000 & a=$!; sleep 1000 & b=$!; echo "$a $b" >"$D/pids"; wait"#;
    sup.start(&sh(script, &[("D", d)])).unwrap();
    let (_, pid) = started(&mut rx).await;
    let mut family = pids(&read_when_ready(&dir.path().join("pids"), LONG).await);
    family.push(pid);
    let guardian = sup.pgid().unwrap();
    kill(Pid::from_raw(guardian as i32), Signal::SIGKILL).unwrap();
    let (_, _, reason) = exited(&mut rx).await;
    assert!(
        matches!(&reason, ExitReason::GuardianLost(why) if why.contains("SIGKILL")),
        "{reason:?}"
    );
    all_gone(&family, SECOND).await.unwrap();
}

#[tokio::test]
async fn dropping_the_supervisor_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    let script = r#"sleep 1000 & a=$!; sleep 1000 & b=$!; echo "$a $b" >"$D/pids"; wait"#;
    sup.start(&sh(script, &[("D", d)])).unwrap();
    let (_, pid) = started(&mut rx).await;
    let mut family = pids(&read_when_ready(&dir.path().join("pids"), LONG).await);
    family.push(pid);
    family.push(sup.pgid().unwrap());
    drop(sup);
    let (_, _, reason) = exited(&mut rx).await;
    assert_eq!(reason, ExitReason::Signal(9));
    all_gone(&family, SECOND).await.unwrap();
}

/// The agent process of `kill_9_of_the_agent_takes_everything`, run by re-executing this test
/// binary with [`AGENT_MODE`] set. It starts [`FAMILY`] and reports the guardian's and the
/// service's pids on stdout (which the service shares). Ignored so that it never counts as a
/// test; `scripts/test` leaves out ignored entries whose reason starts with "not a test".
#[tokio::test]
#[ignore = "not a test: the agent process of kill_9_of_the_agent_takes_everything"]
async fn agent_helper() {
    if std::env::var_os(AGENT_MODE).is_none() {
        return;
    }
    let (mut sup, mut rx) = supervisor();
    sup.start(&sh(FAMILY, &[])).unwrap();
    let (_, pid) = started(&mut rx).await;
    println!("started {pid}");
    println!("guardian {}", sup.pgid().unwrap());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn kill_9_of_the_agent_takes_everything() {
    let mut agent = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "agent_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(AGENT_MODE, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let (mut service, mut started_pid, mut guardian, mut grandchildren) =
        (None, None, None, vec![]);
    while service.is_none()
        || started_pid.is_none()
        || guardian.is_none()
        || grandchildren.len() < 2
    {
        let line = tokio::time::timeout(LONG, lines.next_line())
            .await
            .expect("agent helper too slow")
            .unwrap()
            .expect("agent helper ended");
        // The harness may put its own "test agent_helper ... " before ours on the same line.
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let Ok(pid) = pair[1].parse::<u32>() else {
                continue;
            };
            match pair[0] {
                "service" => service = Some(pid),
                "started" => started_pid = Some(pid),
                "guardian" => guardian = Some(pid),
                "grandchild" => grandchildren.push(pid),
                _ => {}
            }
        }
    }
    assert_eq!(service, started_pid);
    let mut family = grandchildren;
    family.extend([service.unwrap(), guardian.unwrap()]);
    assert!(family.iter().all(|p| alive(*p)), "{family:?}");

    kill(Pid::from_raw(agent.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    // A liveness bound: the family must go by itself (lifeline EOF → the guardian kills the
    // group); how fast is a speed figure, not this test's business.
    let took = all_gone(&family, LONG).await;
    agent.wait().await.unwrap();
    match took {
        Ok(took) => eprintln!("service family gone {took:?} after kill -9 of the agent"),
        Err(survivors) => {
            // Do not leave them behind (they hold the harness's stderr open).
            let _ = kill(Pid::from_raw(-(guardian.unwrap() as i32)), Signal::SIGKILL);
            panic!("still alive {LONG:?} after kill -9 of the agent: {survivors:?}");
        }
    }
}

/// A service started as the active one after its grant's deadline passed is never run: the
/// guardian reads the deadline, which the agent writes before starting it, before it spawns
/// the service. Before, it spawned first and killed a moment later, so a service could act
/// (and was reported started) past its node's grant.
#[tokio::test]
async fn an_active_start_after_the_deadline_never_runs_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let d = dir.path().to_str().unwrap();
    let (mut sup, mut rx) = supervisor();
    sup.fence()
        .arm(understudy_service::guardian::boottime_ns().saturating_sub(1));
    for _ in 0..30 {
        sup.start(&sh(r#"echo x >>"$D/ran"; exec sleep 1000"#, &[("D", d)]))
            .unwrap();
        match next(&mut rx, LONG).await {
            ServiceEvent::Exited { reason, .. } => assert!(
                matches!(&reason, ExitReason::StartFailed(why) if why.contains("deadline passed")),
                "{reason:?}"
            ),
            other => panic!("the service was started past the deadline: {other:?}"),
        }
    }
    assert!(!ran.exists(), "the service ran past the deadline");
}

/// A grant's deadline that passed before a service started keeps it from running when it is
/// started as the active one, and leaves it alone when it is started as a standby (the node was demoted
/// by that deadline and restarts its standby; killing it made a standby that never got ready).
#[tokio::test]
async fn a_passed_deadline_kills_an_active_start_and_spares_a_standby_start() {
    let (mut sup, mut rx) = supervisor();
    sup.fence()
        .arm(understudy_service::guardian::boottime_ns().saturating_sub(1));
    let mut standby = sh("exec sleep 1000", &[]);
    standby.standby = true;
    sup.start(&standby).unwrap();
    let (_, pid) = started(&mut rx).await;
    // The active start below is refused at once at the same deadline; half a second
    // without an exit shows the standby's guardian was not armed with it.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "the standby service ended at a deadline that passed before it started"
    );
    assert!(alive(pid));
    sup.kill_now();
    exited(&mut rx).await;

    sup.start(&sh("exec sleep 1000", &[])).unwrap();
    let (_, pid, reason) = exited(&mut rx).await;
    assert_eq!(pid, None);
    assert!(
        matches!(&reason, ExitReason::StartFailed(why) if why.contains("deadline passed")),
        "{reason:?}"
    );
}

/// The guardian run by hand, with a lifeline that holds many lines the agent never sends and
/// then a deadline long passed: it must read through all of them before it spawns, so the
/// service never runs, and say why. Before, it spawned while its thread was still reading:
/// whether the kill came first depended on the machine's load (the test above catches that
/// under `stress-ng`), and nothing said why no service ran.
#[test]
fn the_guardian_reads_every_waiting_line_before_it_spawns() {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut waiting = "junk\n".repeat(20_000);
    waiting.push_str("deadline 1\n");
    ours.write_all(waiting.as_bytes()).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_understudy-guard"))
        .args(["sh", "-c", r#"echo x >"$RAN"; exec sleep 1000"#])
        .env("RAN", &ran)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .process_group(0)
        .status()
        .unwrap();
    // Writing only: reading to EOF below needs our end alone to hold the socket.
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let mut said = String::new();
    ours.read_to_string(&mut said).unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}, said {said:?}");
    assert!(!said.contains("pid "), "the service was spawned: {said:?}");
    assert!(
        said.contains("error ") && said.contains("deadline passed"),
        "{said:?}"
    );
    assert!(!ran.exists(), "the service ran past the deadline");
}
