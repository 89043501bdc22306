//! `understudy drill`, run as a user runs it: a short campaign on a local group it starts, a
//! drill of a group of real agents it is pointed at by admin address, document 001's price
//! server failover test, and the register checker on forged registers (it must be able to fail).
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;
mod skip;

use std::io::Write;
use std::time::Duration;

use common::*;

/// The fault lines of a drill's output: `[ i/n] kind …`.
fn fault_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with('[') && l.contains('/') && l.contains(']'))
        .collect()
}

#[test]
fn a_short_local_drill_injects_every_kind_and_finds_no_two_actives() {
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
        skip::skip(
            "a_short_local_drill_injects_every_kind_and_finds_no_two_actives",
            "the full-disk fault needs root to mount a tmpfs",
        );
        return;
    }
    let (code, out, err) = run_cli(&["drill", "--local", "3", "--faults", "14", "--seed", "11"]);
    assert_eq!(code, 0, "drill failed:\n{out}\n{err}");
    assert_eq!(fault_lines(&out).len(), 14, "{out}");
    assert!(out.contains("two actives at once: never"), "{out}");
    // The register was read: it holds one active period per failover and the first.
    let failovers: usize = out
        .lines()
        .find(|l| l.starts_with("all "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary row:\n{out}"));
    assert!(failovers >= 5, "few failovers in 14 faults:\n{out}");
    let periods: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("register: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no register line:\n{out}"));
    assert!(periods > failovers, "{out}");
    for kind in ["kill-agent", "disk-full", "delete-lock"] {
        assert!(
            !out.contains(&format!("not injected: {kind}")),
            "{kind} left out:\n{out}"
        );
    }
}

#[test]
fn a_drill_of_running_agents_by_address_restarts_what_it_killed() {
    let mut g = Group::new("trylock", "hot");
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(5));
    g.start("b");
    g.wait_ready("b", Duration::from_secs(10));
    let log = g.log.display().to_string();
    let work = g.path.join("drill").display().to_string();
    let (a, b) = (g.admin("a"), g.admin("b"));
    let (code, out, err) = run_cli(&[
        "drill",
        "--agent",
        &a,
        "--agent",
        &b,
        "--register",
        &log,
        "--work-dir",
        &work,
        "--faults",
        "6",
        "--seed",
        "3",
        "--kinds",
        "kill-agent,kill-service,switchover,sigstop",
    ]);
    // Agents the drill started again are not the harness's children: stop them here.
    for admin in [&a, &b] {
        if let Some(pid) = get_json(admin, "/status").and_then(|s| s["agent_pid"].as_u64()) {
            let owned = ["a", "b"]
                .iter()
                .any(|n| g.running(n) && u64::from(g.agent_pid(n)) == pid);
            if !owned {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    assert_eq!(code, 0, "drill failed:\n{out}\n{err}");
    assert_eq!(fault_lines(&out).len(), 6, "{out}");
    assert!(out.contains("two actives at once: never"), "{out}");
    // The harness's own overlap checker agrees.
    g.check_log();
}

#[test]
fn the_price_scenario_stops_the_active_price_server_and_the_client_gets_prices_from_another() {
    let (code, out, err) = run_cli(&[
        "drill",
        "--local",
        "2",
        "--scenario",
        "price",
        "--faults",
        "3",
    ]);
    assert_eq!(code, 0, "drill failed:\n{out}\n{err}");
    let rounds: Vec<&str> = fault_lines(&out);
    assert_eq!(rounds.len(), 3, "{out}");
    for r in rounds {
        assert!(r.contains("the client got prices from"), "{r}");
    }
    assert!(out.contains("every subscription intact in 3"), "{out}");
    assert!(out.contains("two actives at once: never"), "{out}");
}

fn register(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f
}

#[test]
fn the_register_check_exits_3_on_two_actives_and_0_on_a_clean_handover() {
    let clean = register(&[
        "100 1 a start 1",
        "110 1 a active 1",
        "130 1 a tick 1",
        "150 2 b active 2",
        "160 2 b stop 2",
    ]);
    let p = clean.path().display().to_string();
    let (code, out, _) = run_cli(&["drill", "--check-register", &p]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 active periods"), "{out}");
    let overlap = register(&["110 1 a active 1", "125 2 b active 2", "130 1 a tick 1"]);
    let p = overlap.path().display().to_string();
    let (code, out, _) = run_cli(&["drill", "--check-register", &p]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("TWO ACTIVES"), "{out}");
}

/// A drill of its own local group, its stdout read line by line as it comes.
struct Running {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(seed: &str) -> Running {
        use std::io::BufRead;
        let mut child = testbed::proc::spawn(
            std::process::Command::new(BIN)
                .args(["drill", "--local", "3", "--faults", "10000", "--seed", seed])
                .args(["--kinds", "kill-agent,switchover"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null()),
        )
        .expect("start the drill");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = out.clone();
        let reader = std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(l);
            }
        });
        Running {
            child,
            out,
            reader: Some(reader),
        }
    }

    /// Everything it printed, once it has exited and its output is read to the end.
    fn rest(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            r.join().expect("the output reader");
        }
        self.text()
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().join("\n")
    }

    /// Waits until `n` faults were reported; returns the drill's children (its agents).
    fn after_faults(&self, n: usize) -> Vec<u32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while fault_lines(&self.text()).len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} faults not reported in 120 s:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let kids = testbed::proc::children(self.child.id());
        // One may be between its kill and its restart.
        assert!(kids.len() >= 2, "the drill's agents not found: {kids:?}");
        kids
    }
}

/// The directory of the local group a drill printed (`register: <dir>/register.log`).
fn group_dir(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("register: "))
        .and_then(|r| r.strip_suffix("/register.log"))
        .unwrap_or_else(|| panic!("no register line:\n{out}"))
        .to_string()
}

/// Nothing is mounted under `dir` any more (the drill's tmpfs for the lock file).
fn unmounted(dir: &str) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&format!(" {dir}/")),
        "still mounted under {dir}:\n{mounts}"
    );
}

fn all_gone(pids: &[u32]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the drill left processes running: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctrl_c_ends_a_drill_after_the_current_fault_with_its_summary() {
    let mut d = Running::start("21");
    let kids = d.after_faults(2);
    signal(d.child.id(), nix::sys::signal::Signal::SIGINT);
    let st = exit_within(&mut d.child, Duration::from_secs(90), || {
        "the drill did not stop within 90 s of Ctrl-C".into()
    });
    all_gone(&kids);
    let out = d.rest();
    unmounted(&group_dir(&out));
    assert_eq!(st.code(), Some(130), "{out}");
    let done = fault_lines(&out).len();
    assert!(
        out.contains(&format!("stopped by SIGINT (Ctrl-C) after {done} faults")),
        "{out}"
    );
    assert!(out.contains("two actives at once: never"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("kill-agent ") || l.starts_with("switchover ")),
        "no summary table:\n{out}"
    );
}

#[test]
fn a_second_ctrl_c_kills_the_drill_and_its_group_at_once() {
    use nix::sys::signal::Signal;
    let mut d = Running::start("22");
    let kids = d.after_faults(1);
    // With every agent frozen the group cannot settle, so after the first Ctrl-C the drill is
    // still waiting (for the current fault's recovery, then for its agents to stop) when the
    // second one comes: otherwise a quick fault lets it finish cleanly in between.
    for k in &kids {
        signal(*k, Signal::SIGSTOP);
    }
    signal(d.child.id(), Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.child.try_wait().expect("wait").is_none(),
        "the drill ended after one Ctrl-C with its group frozen:\n{}",
        d.text()
    );
    signal(d.child.id(), Signal::SIGINT);
    let st = exit_within(&mut d.child, Duration::from_secs(5), || {
        "the drill did not die within 5 s of a second Ctrl-C".into()
    });
    all_gone(&kids);
    // The handler re-raises the signal with its default action, as a shell expects.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(Signal::SIGINT as i32)
    );
    let out = d.rest();
    unmounted(&group_dir(&out));
    assert!(!out.contains("two actives at once"), "{out}");
}
