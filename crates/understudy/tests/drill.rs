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
