//! The control plane across "machines" (network namespaces on one bridge): `understudy serve` and
//! etcd on one, `understudy host --control URL` on each of two others, a failover service added
//! through the API with its active on one host and its standby on the other, then the active
//! host's link cut. The standby takes over through etcd, and the control plane records the
//! failure event; the two-Hot watcher and the overlap checker run throughout.
#![allow(clippy::disallowed_methods)] // real processes run in real time

mod common;
use testbed::netns;
mod plane_common;
mod skip;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{check_overlaps, get_json, wait_until, Watcher, BIN};
use netns::{Lab, Machine};
use plane_common::ctl;
use serde_json::Value;

const ETCD: &str = "/usr/bin/etcd";

/// A process started in a namespace, killed on drop (the lab's drop kills the rest).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_on(m: &Machine, args: &[&str], log: &std::path::Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let mut argv = Lab::launcher(m);
    argv.extend(args.iter().map(|s| s.to_string()));
    Proc(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}")),
    )
}

#[test]
fn hosts_on_two_machines_run_a_group_and_a_cut_link_is_a_recorded_failure_event() {
    const TEST: &str =
        "hosts_on_two_machines_run_a_group_and_a_cut_link_is_a_recorded_failure_event";
    if !std::path::Path::new(ETCD).exists() {
        return skip::skip(TEST, "etcd is missing (Debian package etcd-server)");
    }
    let mut lab = match Lab::new() {
        Ok(l) => l,
        Err(e) => return skip::skip(TEST, &format!("no network namespaces here: {e}")),
    };
    let mc = lab.machine("c").expect("machine c");
    let m1 = lab.machine("h1").expect("machine h1");
    let m2 = lab.machine("h2").expect("machine h2");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).display().to_string();
    // etcd on tmpfs: the test judges the agents, not a disk shared with compilers.
    let etcd_data = tempfile::Builder::new()
        .prefix("us-etcd-")
        .tempdir_in("/dev/shm")
        .expect("etcd data dir");
    let endpoint = format!("http://{}:2379", mc.ip);
    let peer = format!("http://{}:2380", mc.ip);
    let etcd_dir = etcd_data.path().join("d").display().to_string();
    let _etcd = spawn_on(
        &mc,
        &[
            ETCD,
            "--data-dir",
            &etcd_dir,
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("default={peer}"),
        ],
        &etcd_data.path().join("etcd.log"),
    );
    let listen = format!("{}:7700", mc.ip);
    let control = format!("http://{listen}");
    let _serve = spawn_on(
        &mc,
        &[
            BIN,
            "serve",
            "--listen",
            &listen,
            "--data",
            &p("c"),
            "--etcd",
            &endpoint,
        ],
        &dir.path().join("serve.log"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || get_json(&listen, "/api/health")
            .is_some()),
        "understudy serve did not answer on {listen}"
    );
    let mut hosts = Vec::new();
    for (name, m) in [("h1", &m1), ("h2", &m2)] {
        hosts.push(spawn_on(
            m,
            &[
                BIN,
                "host",
                "--control",
                &control,
                "--name",
                name,
                "--advertise",
                &m.ip,
                "--data",
                &p(name),
            ],
            &dir.path().join(format!("{name}.log")),
        ));
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            get_json(&listen, "/api/hosts").is_some_and(|v| {
                ["h1", "h2"].iter().all(|h| {
                    v["hosts"].as_array().is_some_and(|hs| {
                        hs.iter().any(|x| x["name"] == *h && x["connected"] == true)
                    })
                })
            })
        }),
        "the hosts did not register: {:?}",
        get_json(&listen, "/api/hosts")
    );

    // A failover service added through the API: the server on h1, a hot standby on h2.
    let log = dir.path().join("service.log");
    let log_s = log.display().to_string();
    let (code, v) = ctl(
        &control,
        &[
            "add-server",
            "nx",
            "--host",
            "h1",
            "--",
            BIN,
            "demo-service",
            "--log",
            &log_s,
        ],
    );
    assert_eq!(code, 0, "{v}");
    let (code, v) = ctl(
        &control,
        &[
            "add-failover",
            "nx",
            "--standby",
            "hot",
            "--standby-host",
            "h2",
        ],
    );
    assert_eq!(code, 0, "{v}");
    let (code, v) = ctl(&control, &["start-failover", "nx"]);
    assert_eq!(code, 0, "{v}");
    let server = || get_json(&listen, "/api/servers/nx").unwrap_or(Value::Null);
    let node = |name: &str| {
        server()["failover"]["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(Duration::from_secs(30), || node("nx-1")["mode"] == "Hot"
            && node("nx-2")["ready"] == true),
        "the group did not come up across the hosts: {}",
        server()
    );
    let admins: Vec<(String, String)> = ["nx-1", "nx-2"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                node(n)["admin"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        admins[0].1.starts_with(&m1.ip) && admins[1].1.starts_with(&m2.ip),
        "{admins:?}"
    );
    let watcher = Watcher::start(admins);
    let epoch = node("nx-1")["epoch"].as_u64().expect("epoch");
    let events_before = server()["failure_events"].as_u64().unwrap_or(0);

    // The active machine's network is cut: nx-2 takes over through etcd, and the control plane
    // (which no longer reaches h1 at all) records the failure event from nx-2.
    Lab::link_down(&m1).expect("link down");
    assert!(
        wait_until(Duration::from_secs(10), || node("nx-2")["mode"] == "Hot"
            && node("nx-2")["epoch"].as_u64() > Some(epoch)),
        "no takeover after the active host's link was cut: {}",
        server()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            get_json(&listen, "/api/servers/nx/events").is_some_and(|v| {
                v["events"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|t| t["node"] == "nx-2" && t["epoch"].as_u64() > Some(epoch))
                })
            })
        }),
        "the control plane did not record the failure event"
    );
    assert!(server()["failure_events"].as_u64().unwrap_or(0) > events_before);
    let h1 = get_json(&listen, "/api/hosts").unwrap_or(Value::Null);
    assert!(
        wait_until(Duration::from_secs(10), || get_json(&listen, "/api/hosts")
            .is_some_and(|v| v["hosts"].as_array().is_some_and(|hs| hs
                .iter()
                .any(|x| x["name"] == "h1" && x["connected"] == false)))),
        "the cut-off host is still shown connected: {h1}"
    );

    // Back on the network, h1's node rejoins as a standby; never two actives.
    Lab::link_up(&m1).expect("link up");
    assert!(
        wait_until(Duration::from_secs(30), || node("nx-1")["mode"] == "Warm"
            && node("nx-2")["mode"] == "Hot"),
        "the cut-off node did not rejoin as a standby: {}",
        server()
    );

    // Stop failover while the standby's machine is cut off (review 28, H1). Its host cannot be
    // told to stop it, and after `backstop_ttl` its etcd key is gone too, so the active would
    // find itself alone: released, the group would be free for nx-1, which would take over
    // once back while the released service keeps acting. Refused instead, failover stays on.
    // h1's host reporting again too: the first stop below then finds it current, stops
    // what it can and waits for h1's answer (the path of a link cut a moment ago).
    let h1_connected = || {
        get_json(&listen, "/api/hosts").is_some_and(|v| {
            v["hosts"].as_array().is_some_and(|hs| {
                hs.iter()
                    .any(|x| x["name"] == "h1" && x["connected"] == true)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || node("nx-1")["ready"] == true
            && h1_connected()),
        "nx-1 never ready as a standby, or h1's host never reported again: {}",
        server()
    );
    Lab::link_down(&m1).expect("link down");
    let (code, v) = ctl(&control, &["stop-failover", "nx"]);
    assert_ne!(
        code, 0,
        "stop failover went ahead with standby nx-1 cut off: {v}"
    );
    assert!(v.to_string().contains("nx-1"), "{v}");
    assert_eq!(server()["failover"]["running"], true, "{}", server());
    assert_eq!(node("nx-2")["mode"], "Hot", "{}", server());
    // Still cut off, its host now silent for longer than HOST_STALE (the refusal above waited
    // HOST_TIMEOUT for it): refused at once, before anything is stopped (review 29, M3).
    let t0 = std::time::Instant::now();
    let (code, v) = ctl(&control, &["stop-failover", "nx"]);
    assert_ne!(code, 0, "{v}");
    assert!(
        v.to_string().contains("nx-1 (host h1 has not reported for"),
        "{v}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the refusal waited for the dark host: {:?}",
        t0.elapsed()
    );
    assert_eq!(server()["failover"]["running"], true, "{}", server());
    Lab::link_up(&m1).expect("link up");
    assert!(
        wait_until(Duration::from_secs(30), || node("nx-1")["mode"] == "Warm"
            && node("nx-1")["ready"] == true
            && node("nx-2")["mode"] == "Hot"
            && h1_connected()),
        "nx-1 is not a ready standby again after the refused stop, or h1's host is silent: {}",
        server()
    );
    // Every host reachable: the stop goes through, and nothing takes over after it.
    let (code, v) = ctl(&control, &["stop-failover", "nx"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(server()["failover"]["running"], false, "{}", server());
    std::thread::sleep(Duration::from_secs(2));
    watcher.finish();
    check_overlaps(&log);
    drop(hosts);
    drop(lab);
}
