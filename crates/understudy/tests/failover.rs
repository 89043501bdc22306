//! Failover with real processes: agents are `understudy agent` processes, services are real
//! processes, faults are real signals. Every test ends with both safety checkers: the overlap
//! checker over the service log and the two-Hot watcher.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const S: Duration = Duration::from_secs(1);

/// The other node of a two-node group.
fn other(name: &str) -> &'static str {
    if name == "a" {
        "b"
    } else {
        "a"
    }
}

fn wait_ready(g: &Group, node: &str) {
    g.wait_status(node, "a ready Warm standby", 10 * S, |s| {
        s["mode"] == "Warm" && s["ready"] == true
    });
}

/// Add `a` and `b` to `g` and watch them; `a` goes Hot, then `b` joins as a ready standby.
fn ready_pair(mut g: Group) -> (Group, Watcher) {
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    wait_ready(&g, "b");
    (g, w)
}

/// The epoch of `node`, once its service logged active with it, and the service's pid.
fn active_service(g: &Group, node: &str) -> (u64, u32) {
    let e = g.epoch(node);
    g.wait_service_active(node, e);
    let pid = g.service_pid(node).expect("active service pid");
    (e, pid)
}

/// Whether the service `pid` logged `stop` (it was stopped with SIGTERM).
fn logged_stop(g: &Group, pid: u32) -> bool {
    g.logged(|l| l.pid == pid && l.event == "stop")
}

/// Kill -9 the active agent `rounds` times, restarting it as the standby each time; the survivor
/// must be Hot with a larger epoch and the killed agent's whole service process group gone at once.
fn kill9_rounds(standby: &str, rounds: usize, grandchild: bool) {
    let mut g = Group::new("trylock", standby);
    if grandchild {
        // The service forks: the shell, the demo service and a sleep share one process group.
        let inner = format!(
            "{} demo-service --log {} & sleep 100000 & wait",
            BIN,
            g.log.display()
        );
        g.set_service("command", &arr(&["sh", "-c", &inner]));
    }
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    let mut last_active = String::new();
    let mut gone_ms = Vec::new();
    for round in 0..rounds {
        let active = g.active(5 * S);
        let standby = other(&active);
        assert_ne!(
            active, last_active,
            "round {round}: the active did not alternate"
        );
        wait_ready(&g, standby);
        let (e0, spid) = active_service(&g, &active);
        let pgid = pgid_of(spid).expect("service process group");
        let procs = pids_in_group(pgid);
        assert!(
            procs.contains(&spid),
            "service pid {spid} not in its group {procs:?}"
        );
        if grandchild {
            // guardian, sh, demo service, sleep
            assert!(
                procs.len() >= 4,
                "expected the shell's children in the group: {procs:?}"
            );
        }
        let t = Instant::now();
        g.kill9(&active);
        // A liveness bound: the group must die with its agent by itself; how fast (a few ms,
        // printed below) is a speed figure, not asserted, so that load cannot fail the test.
        let gone = wait_until(5 * S, || procs.iter().all(|p| !alive(*p)));
        let left: Vec<u32> = procs.iter().copied().filter(|p| alive(*p)).collect();
        assert!(
            gone,
            "round {round}: processes {left:?} of {active}'s service group {procs:?} outlived its agent by 5 s"
        );
        gone_ms.push(t.elapsed().as_secs_f64() * 1e3);
        g.wait_mode(standby, "Hot", 5 * S);
        let e1 = g.epoch(standby);
        assert!(
            e1 > e0,
            "round {round}: epoch {e1} of the new active is not above {e0}"
        );
        g.wait_service_active(standby, e1);
        let s = g.st(standby);
        assert_eq!(s["service"]["role"], "active", "{s}");
        g.start(&active);
        g.wait_mode(&active, "Warm", 5 * S);
        last_active = active;
    }
    let rep = w.finish();
    let ivs = g.check_log();
    assert!(
        ivs.len() > rounds,
        "expected at least {} active intervals in the log, found {}",
        rounds + 1,
        ivs.len()
    );
    let waited: usize = ["a", "b"]
        .iter()
        .map(|n| {
            g.output(n)
                .matches("waiting for the previous active's service to end")
                .count()
        })
        .sum();
    eprintln!(
        "{standby} standby, {rounds} kill -9 rounds: service group gone after {gone_ms:.1?} ms; {waited} takeovers waited for the old service to die; watcher: {} sweeps, {} with two Hot answers explained by a handover",
        rep.sweeps, rep.two_hot_answers
    );
}

/// One test per row: `name: standby, rounds, grandchild;` runs [`kill9_rounds`].
macro_rules! kill9_tests {
    ($($name:ident: $standby:literal, $rounds:literal, $grandchild:literal;)*) => {$(
        #[test]
        fn $name() {
            kill9_rounds($standby, $rounds, $grandchild);
        }
    )*};
}

kill9_tests! {
    trylock_cold_standby_kill9_of_the_active: "cold", 4, false;
    trylock_hot_standby_kill9_of_the_active: "hot", 4, false;
    trylock_warm_standby_kill9_of_the_active: "warm", 2, false;
    kill9_of_the_active_takes_the_services_grandchildren_down: "cold", 2, true;
}

#[test]
fn put_hot_on_a_standby_while_another_is_hot_is_409() {
    let (g, w) = ready_pair(Group::new("trylock", "hot"));
    let e = g.epoch("a");
    for _ in 0..3 {
        let body = g.put_hot_refused("b", "a");
        assert!(body.to_string().contains('a'), "{body}");
    }
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    assert_eq!(g.epoch("a"), e, "the active's epoch changed");
    // PUT hot on the active itself is a no-op success.
    let body = g.put_hot_ok("a");
    assert_eq!(body["epoch"].as_u64(), Some(e), "{body}");
    g.assert_events("b", &["refused"]);
    w.finish();
    g.expect_actives(1);
}

#[test]
fn service_crash_while_active_fails_over_and_the_node_comes_back_as_standby() {
    let (mut g, w) = ready_pair(Group::new("trylock", "hot"));
    let (e0, spid) = active_service(&g, "a");
    signal(spid, Signal::SIGKILL);
    g.wait_mode("b", "Hot", 5 * S);
    assert!(g.epoch("b") > e0);
    assert_eq!(g.mode("a").as_deref(), Some("Warm"));
    // Back as a standby after its backoff, with a new standby service.
    let s = g.wait_status("a", "a ready standby again", 10 * S, |s| {
        s["ready"] == true
            && s["service"]["pid"]
                .as_u64()
                .is_some_and(|p| p as u32 != spid)
    });
    assert_eq!(s["service"]["role"], "standby", "{s}");
    assert_eq!(g.mode("a").as_deref(), Some("Warm"));
    g.assert_events("a", &["service_exited", "demoted", "lock_released"]);
    let ev = g.events("a").to_string();
    assert!(
        ev.contains(&spid.to_string()),
        "the events name the dead pid {spid}: {ev}"
    );
    // And it takes over again when needed (once b's service has logged its activity, which
    // the overlap checker counts).
    g.wait_service_active("b", g.epoch("b"));
    g.kill9("b");
    g.wait_mode("a", "Hot", 5 * S);
    w.finish();
    g.expect_actives(3);
}

#[test]
fn failing_health_check_fails_over() {
    let mut g = Group::new("trylock", "hot");
    let flag_base = g.path.join("sick");
    g.tail = format!(
        "[health]\ncommand = {}\ninterval = \"50ms\"\ntimeout = \"1s\"\nfailures = 2\nstart_period = \"100ms\"\n",
        arr(&["sh", "-c", &format!("test ! -e {}.$UNDERSTUDY_NODE", flag_base.display())])
    );
    let (g, w) = ready_pair(g);
    let (e0, spid) = active_service(&g, "a");
    std::fs::write(format!("{}.a", flag_base.display()), "").unwrap();
    g.wait_mode("b", "Hot", 5 * S);
    assert!(g.epoch("b") > e0);
    g.assert_events("a", &["health_failed", "demoted"]);
    // The failed service was stopped gracefully: it logged stop.
    assert!(wait_until(5 * S, || !alive(spid)));
    assert!(
        logged_stop(&g, spid),
        "the unhealthy service was not stopped with SIGTERM"
    );
    std::fs::remove_file(format!("{}.a", flag_base.display())).unwrap();
    wait_ready(&g, "a");
    w.finish();
    g.expect_actives(2);
}

#[test]
fn sigterm_to_the_active_stops_its_service_gracefully_and_hands_over() {
    let (mut g, w) = ready_pair(Group::new("trylock", "hot"));
    let (e0, spid) = active_service(&g, "a");
    let st = g.sigterm("a", 10 * S);
    assert_eq!(st.code(), Some(0), "agent exit status after SIGTERM: {st}");
    assert!(!alive(spid), "service {spid} outlived its agent");
    assert!(
        logged_stop(&g, spid),
        "the service did not get SIGTERM (no stop line)"
    );
    g.wait_mode("b", "Hot", 5 * S);
    assert!(g.epoch("b") > e0);
    w.finish();
    let ivs = g.expect_actives(2);
    assert!(ivs[0].stopped, "{ivs:?}");
}

#[test]
fn switchover_hands_over_to_a_ready_standby_and_refuses_without_one() {
    let mut g = Group::new("trylock", "hot");
    let w = g.add_watched_pair();
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    // Alone: nobody to hand over to.
    let (code, body) = g.switchover("a");
    assert_eq!(code, 409, "switchover without a standby: {body}");
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));

    g.start("b");
    wait_ready(&g, "b");
    // Asking the standby is refused too.
    let (code, body) = g.switchover("b");
    assert_eq!(code, 409, "switchover asked of the standby: {body}");

    let e0 = g.epoch("a");
    g.wait_service_active("a", e0);
    let (code, body) = g.switchover("a");
    assert_eq!(code, 200, "switchover: {body}");
    assert_eq!(body["to"], "b", "{body}");
    g.wait_mode("b", "Hot", 5 * S);
    let e1 = g.epoch("b");
    assert!(e1 > e0);
    wait_ready(&g, "a");
    assert_eq!(g.st("a")["service"]["role"], "standby");

    // And back.
    g.wait_service_active("b", e1);
    let (code, body) = g.switchover("b");
    assert_eq!(code, 200, "switchover back: {body}");
    g.wait_mode("a", "Hot", 5 * S);
    assert!(g.epoch("a") > e1);
    wait_ready(&g, "b");

    // b leaves cleanly: a is alone again.
    assert_eq!(g.sigterm("b", 10 * S).code(), Some(0));
    let (code, body) = g.switchover("a");
    assert_eq!(code, 409, "switchover after the standby left: {body}");
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    w.finish();
    let ivs = g.expect_actives(3);
    assert!(
        ivs[0].stopped && ivs[1].stopped,
        "switchover stops gracefully: {ivs:?}"
    );
}

#[test]
fn lock_file_deleted_under_the_active_makes_it_step_down() {
    let (g, w) = ready_pair(Group::new("trylock", "cold"));
    let (e0, spid) = active_service(&g, "a");
    std::fs::remove_file(&g.lock).unwrap();
    g.wait_status("a", "a steps down", 5 * S, |s| s["mode"] == "Warm");
    assert!(
        wait_until(S, || !alive(spid)),
        "a's service still runs after a stepped down"
    );
    g.assert_events("a", &["lock_lost"]);
    // Someone is active again, with a newer epoch; a is a standby after its backoff.
    let active = g.active(5 * S);
    assert!(g.epoch(&active) > e0);
    wait_ready(&g, other(&active));
    w.finish();
    g.expect_actives(2);
}

#[test]
fn sigstop_of_the_active_agent_causes_no_failover() {
    let (g, w) = ready_pair(Group::new("trylock", "hot"));
    let e0 = g.epoch("a");
    g.sigstop("a");
    let t = Instant::now();
    let mut b_hot = false;
    while t.elapsed() < 2 * S {
        if g.mode("b").as_deref() == Some("Hot") {
            b_hot = true;
            break;
        }
        sleep_ms(10);
    }
    g.sigcont("a");
    assert!(
        !b_hot,
        "b left Warm while a was stopped (the kernel keeps a stopped holder's lock)"
    );
    g.wait_mode("a", "Hot", 2 * S);
    sleep_ms(500); // an observation window after the resume: nothing changes hands
    assert_eq!(g.active(S), "a");
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));
    assert_eq!(g.epoch("a"), e0);
    w.finish();
    g.expect_actives(1);
}

/// A process frozen in a cgroup (v1 freezer) until dropped or thawed: it does not run, and,
/// unlike SIGSTOP, the SIGCONT the kernel sends to an orphaned process group does not wake it.
struct Frozen {
    dir: std::path::PathBuf,
}

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/freezer/understudy-test-{}-{pid}",
            std::process::id()
        ));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("this test needs root and the cgroup v1 freezer: {e}"));
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move into the freezer");
        std::fs::write(dir.join("freezer.state"), "FROZEN").expect("freeze");
        let frozen = wait_until(5 * S, || {
            std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        });
        assert!(frozen, "process {pid} never froze");
        Frozen { dir }
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        // Back to the root cgroup, so that the directory can go.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/freezer/cgroup.procs", p);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The kernel hands the lock over the instant the active agent dies; its service dies only when
/// its guardian kills it. Here the guardian is frozen first, so the old service outlives its agent
/// for as long as we like (as under heavy load, only longer): the standby must hold the grant
/// (Warm, naming the pid) until the service is gone, learn of its end by waiting on it, and only
/// then go Hot.
#[test]
fn a_takeover_waits_until_the_previous_active_service_has_ended() {
    let (mut g, w) = ready_pair(Group::new("trylock", "hot"));
    let (e0, spid) = active_service(&g, "a");
    let guardian = pgid_of(spid).expect("the guardian leads the service's process group");
    assert_ne!(guardian, spid);
    let frozen = Frozen::new(guardian);
    g.kill9("a");
    let s = g.wait_status("b", "holding the grant for a's service", 5 * S, |s| {
        s["holds_lock"] == true
            && s["waiting"]
                .as_str()
                .is_some_and(|t| t.contains(&spid.to_string()))
    });
    assert_eq!(s["mode"], "Warm", "{s}");
    g.stays("b", "Warm", Duration::from_millis(300));
    assert!(
        alive(spid),
        "a's service must still run while its guardian is frozen"
    );
    let t = Instant::now();
    frozen.thaw();
    g.wait_mode("b", "Hot", 5 * S);
    let took = t.elapsed();
    assert!(
        !alive(spid),
        "b went Hot while a's service {spid} still ran"
    );
    let e1 = g.epoch("b");
    assert!(e1 > e0);
    g.wait_service_active("b", e1);
    let ev = g.events("b");
    let tk = ev["takeovers"]
        .as_array()
        .and_then(|t| t.last().cloned())
        .expect("a takeover on b");
    let gone = tk["previous_service_gone_ms"].as_f64().expect("phase");
    let obtained = tk["lock_obtained_ms"].as_f64().expect("phase");
    assert!(
        gone >= obtained + 300.0,
        "the wait for the old service is part of the takeover: {tk}"
    );
    w.finish();
    g.expect_actives(2);
    drop(frozen);
    eprintln!("b went Hot {took:?} after a's guardian was thawed; takeover {tk}");
}

/// `POST /service/active-ack` with a JSON body, as a service library sends it (HTTP/1.0).
fn post_ack(admin: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("connect to the admin API");
    let req = format!(
        "POST /service/active-ack HTTP/1.0\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The service's acknowledgement ends the takeover's timeline: only the active service's pid
/// with the node's epoch counts, once.
#[test]
fn the_active_service_acknowledges_its_epoch_in_the_takeover_timeline() {
    let (mut g, w) = ready_pair(Group::new("trylock", "hot"));
    active_service(&g, "a");
    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let (e, pid) = active_service(&g, "b");
    let admin = g.admin("b");
    let last = |g: &Group| {
        g.events("b")["takeovers"]
            .as_array()
            .and_then(|t| t.last().cloned())
            .expect("a takeover on b")
    };
    // The demo service acknowledges by itself through understudy-sdk.
    let ok = wait_until(2 * S, || last(&g)["service_acked_ms"].is_number());
    let t = last(&g);
    assert!(
        ok,
        "the service's acknowledgement never reached the timeline: {t}"
    );
    assert_eq!(t["epoch"].as_u64(), Some(e), "{t}");
    let acked = t["service_acked_ms"].as_f64().unwrap_or(0.0);
    let told = t["service_notified_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(acked >= told, "acknowledged before being told: {t}");
    // Later acknowledgements (a repeat, an older epoch, another process) change nothing; a bad
    // body is refused.
    for body in [
        format!(r#"{{"pid":{pid},"epoch":{e}}}"#),
        format!(r#"{{"pid":{pid},"epoch":{}}}"#, e - 1),
        format!(r#"{{"pid":{},"epoch":{e}}}"#, pid + 100_000),
    ] {
        assert_eq!(post_ack(&admin, &body), 202);
    }
    assert_eq!(
        post_ack(&admin, r#"{"pid":"x"}"#),
        422,
        "a bad body is refused"
    );
    // The acknowledgements above go through the event loop; the timeline must not move.
    assert!(wait_until(S, || g.events("b")["events"]
        .as_array()
        .is_some()));
    assert_eq!(
        last(&g)["service_acked_ms"],
        t["service_acked_ms"],
        "{}",
        last(&g)
    );
    w.finish();
    g.expect_actives(2);
}
