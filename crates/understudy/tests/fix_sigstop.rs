//! SIGSTOP of the active FIX gateway *process* (not its agent), as real processes: two agents
//! (trylock, warm-standby `fix-gateway`s) whose `[health] http` check reads each gateway's
//! `GET /health`, `fix-exchange-sim` upstream and a FIX client configured with both gateway
//! addresses. The frozen gateway fails its health check; its agent stops it (SIGTERM, then
//! SIGKILL after `service.stop_timeout`) and releases the lock; the standby becomes Hot and the
//! client carries on there. Continued afterwards, the old process writes nothing to the store
//! and sends nothing, and at no moment are two agents Hot.
//!
//! The same with the active gateway's disk stalling instead (its writes throttled to one a
//! second by the kernel, for that process only): its event loop waits in `fdatasync`, its
//! health check fails, the standby takes over, and nothing is lost or sent twice.
#![allow(clippy::disallowed_methods)] // test drivers may block

mod fix_common;
mod skip;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fix_common::{
    addr, assert_new_partial_full, assert_sequences_continue, free_port, gateway_group, is_logon,
    logged_on_client, logon_to_new_active, names, next_where, pair, send_market_orders,
    start_active_then_standby, stop_client_and_group, store_files, wait_filled, Group, Pair, NODES,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testbed::{alive, get_json, is_mode};
use understudy_fix::client::ClientEvent;

/// Every store segment written by `epoch`, with its bytes.
fn segments_of(store: &Path, epoch: u64) -> Vec<(PathBuf, Vec<u8>)> {
    let name = format!("{epoch:020}.log");
    store_files(store, |n| n == name)
}

/// The process state letter from /proc (`T` stopped, `Z` zombie), or None when gone.
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next()?.trim_start().chars().next()
}

/// GET `path` on a gateway's health endpoint: status code and body.
fn http_get(a: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&a, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// The JSON of a gateway's `GET /health`, asserting it answered 200, and the body as text.
fn health_ok(a: SocketAddr, what: &str) -> (serde_json::Value, String) {
    let (code, body) = http_get(a, "/health").expect(what);
    assert_eq!(code, 200, "{body}");
    let v = serde_json::from_str(&body).expect("json");
    (v, body)
}

/// Polls both agents' /status until stopped. Two Hot at once is recorded only when one was
/// Hot both before and after the other answered Hot (a-b-a), so a step-down between two
/// sequential reads is not mistaken for an overlap.
struct HotMonitor {
    stop: Arc<AtomicBool>,
    overlaps: Arc<Mutex<Vec<String>>>,
    hot_seen: Arc<Mutex<[bool; 2]>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HotMonitor {
    fn start(admins: [String; 2]) -> HotMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let hot_seen = Arc::new(Mutex::new([false; 2]));
        let (s, o, h) = (stop.clone(), overlaps.clone(), hot_seen.clone());
        let thread = std::thread::spawn(move || {
            let hot = |i: usize| -> (bool, Option<u64>) {
                match get_json(&admins[i], "/status") {
                    Some(v) => (is_mode(&v, "Hot"), v.get("epoch").and_then(|e| e.as_u64())),
                    None => (false, None),
                }
            };
            let mut k = 0usize;
            while !s.load(Ordering::Relaxed) {
                let (x, y) = (k % 2, (k + 1) % 2);
                k += 1;
                let (h1, e1) = hot(x);
                let (h2, e2) = hot(y);
                let (h3, e3) = hot(x);
                {
                    let mut seen = h.lock().expect("lock");
                    seen[x] |= h1 || h3;
                    seen[y] |= h2;
                }
                if h1 && h2 && h3 {
                    o.lock().expect("lock").push(format!(
                        "node {x} Hot (epoch {e1:?}, then {e3:?}) around node {y} Hot (epoch {e2:?})"
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        HotMonitor {
            stop,
            overlaps,
            hot_seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, [bool; 2]) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let o = self.overlaps.lock().expect("lock").clone();
        let h = *self.hot_seen.lock().expect("lock");
        (o, h)
    }
}

impl Drop for HotMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Two agents running the gateways of `cfgs`, each checking its own gateway's health
/// endpoint at `health` and stopping a failing service fast.
fn gateway_group_checking(cfgs: &[PathBuf; 2], health: &[SocketAddr; 2]) -> Group {
    let g = gateway_group(cfgs);
    for (i, n) in NODES.iter().map(|n| &g.nodes[*n]).enumerate() {
        let text = std::fs::read_to_string(&n.config).expect("agent config");
        assert!(text.contains("stop_timeout = \"3s\""), "{text}");
        let text = text.replace("stop_timeout = \"3s\"", "stop_timeout = \"500ms\"")
            + &format!(
                "\n[health]\nhttp = \"http://{}/health\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfailures = 3\nstart_period = \"3s\"\n",
                health[i]
            );
        std::fs::write(&n.config, text).expect("agent config");
    }
    g
}

/// A [`pair`] whose agents check their gateways' health, started (a Hot, b a ready standby:
/// its health check passed, the Warm gateway answers /health) under a two-Hot monitor.
struct Checked {
    pair: Pair,
    /// Each gateway's `[admin] http`.
    health: [SocketAddr; 2],
    /// Each agent's admin API.
    admins: [String; 2],
    monitor: HotMonitor,
    g: Group,
}

async fn start_checked_pair(dir: &Path) -> Checked {
    let health = [
        addr(free_port().expect("port")),
        addr(free_port().expect("port")),
    ];
    let pair = pair(dir, |i| format!("\n[admin]\nhttp = \"{}\"\n", health[i]));
    let g = gateway_group_checking(&pair.cfgs, &health);
    let admins = [g.admin("a"), g.admin("b")];
    let monitor = HotMonitor::start(admins.clone());
    let active = pair.ports[0];
    let g = tokio::task::spawn_blocking(move || {
        let mut g = g;
        start_active_then_standby(&mut g, active);
        g
    })
    .await
    .expect("group start");
    Checked {
        pair,
        health,
        admins,
        monitor,
        g,
    }
}

/// Waits, off the runtime, until agent b of `g` is Hot (`after`: what should have made it).
async fn b_hot_after(g: Group, after: &'static str) -> Group {
    tokio::task::spawn_blocking(move || {
        g.wait_hot("b")
            .unwrap_or_else(|e| panic!("b hot after {after}: {e:#}"));
        g
    })
    .await
    .expect("wait b")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_active_gateway_fails_its_health_check_and_the_standby_takes_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let Checked {
        pair:
            Pair {
                _sim,
                store,
                ports: fix,
                ..
            },
        health,
        admins,
        monitor,
        g,
    } = start_checked_pair(dir.path()).await;
    let (v, body) = health_ok(health[1], "standby health");
    assert_eq!(v["role"], "standby", "{body}");
    assert_eq!(v["fenced"], false, "{body}");

    let t = Duration::from_secs(10);
    let (mut c, mut seen, first) = logged_on_client(fix.to_vec(), t).await;
    send_market_orders(&c, &names("b", 10));
    // Nothing is in flight when the gateway is frozen: each order's last report is its full
    // fill, and the gateway sends one session's messages in order.
    wait_filled(&mut c, &mut seen, t, names("b", 10)).await;

    let (v, body) = health_ok(health[0], "active health");
    assert_eq!(v["role"], "active", "{body}");
    assert_eq!(v["sessions_logged_on"], 2, "client and upstream: {body}");
    assert_eq!(v["fenced"], false, "{body}");
    let status = get_json(&admins[0], "/status").expect("status a");
    let old_epoch = status["epoch"].as_u64().expect("epoch");
    assert_eq!(v["epoch"], old_epoch, "{body}");
    let pid = status["service"]["pid"].as_u64().expect("service pid") as u32;
    assert!(alive(pid), "gateway pid {pid}");

    // Freeze the gateway process itself; its agent runs on.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    let stopped_at = Instant::now();
    let t0 = Instant::now();
    while proc_state(pid) != Some('T') {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "pid {pid} not stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let frozen = segments_of(&store, old_epoch);
    assert!(!frozen.is_empty(), "no segment of epoch {old_epoch}");
    let seen_at_stop = seen.len();
    // Orders sent while the active is frozen: queued toward it, then resent to the new one.
    let f_orders = names("f", 10);
    send_market_orders(&c, &f_orders[..5]);
    let g = b_hot_after(g, "the frozen gateway failed its health check").await;
    let second = logon_to_new_active(&mut c, &mut seen, t, "SIGSTOP", stopped_at).await;
    // Nothing came from the frozen gateway: no message between the freeze and the new logon.
    let from_old: Vec<_> = seen[seen_at_stop..]
        .iter()
        .take_while(|e| !is_logon(e))
        .filter(|e| matches!(e, ClientEvent::Message { .. }))
        .collect();
    assert!(from_old.is_empty(), "messages while frozen: {from_old:?}");
    assert_sequences_continue(&first, &second);
    let new_epoch = get_json(&admins[1], "/status").expect("status b")["epoch"]
        .as_u64()
        .expect("epoch");
    assert!(new_epoch > old_epoch, "{old_epoch} → {new_epoch}");
    let (v, body) = health_ok(health[1], "new active health");
    assert_eq!(v["role"], "active", "{body}");
    assert_eq!(v["epoch"], new_epoch, "{body}");

    // The agent stopped the frozen gateway: SIGKILL after stop_timeout ends even a stopped
    // process. Continue it anyway (a no-op when it is gone) and give it time to misbehave: an
    // observation window, the scenario itself.
    let still_there = alive(pid) && proc_state(pid).is_some();
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
    send_market_orders(&c, &f_orders[5..]);
    wait_filled(&mut c, &mut seen, t, f_orders.clone()).await;
    let _ = next_where(&mut c, &mut seen, Duration::from_millis(500), |_| false).await;
    assert!(
        !alive(pid),
        "the frozen gateway {pid} outlived its agent's stop (there at SIGCONT: {still_there})"
    );
    assert_eq!(
        segments_of(&store, old_epoch),
        frozen,
        "the old gateway wrote to the store after it was frozen"
    );
    // Every order answered exactly once: New, partial fill, full fill.
    assert_new_partial_full(&seen, names("b", 10).into_iter().chain(f_orders));
    let (overlaps, hot_seen) = monitor.finish();
    assert!(overlaps.is_empty(), "two agents Hot: {overlaps:?}");
    assert_eq!(hot_seen, [true, true], "the monitor saw both actives");
    stop_client_and_group(c, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_stall_of_the_active_gateway_fails_its_health_check_and_the_standby_takes_over() {
    const TEST: &str =
        "a_disk_stall_of_the_active_gateway_fails_its_health_check_and_the_standby_takes_over";
    let (dir, throttle) = match testbed::IoThrottle::on_temp_disk("understudy-stall") {
        Ok(d) => d,
        Err(why) => return skip::skip(TEST, &why),
    };
    let Checked {
        pair: Pair {
            _sim, ports: fix, ..
        },
        health,
        admins,
        monitor,
        g,
    } = start_checked_pair(dir.path()).await;

    let t = Duration::from_secs(20);
    let (mut c, mut seen, first) = logged_on_client(fix.to_vec(), t).await;
    send_market_orders(&c, &names("b", 10));
    wait_filled(&mut c, &mut seen, t, names("b", 10)).await;
    let status = get_json(&admins[0], "/status").expect("status a");
    let old_epoch = status["epoch"].as_u64().expect("epoch");
    let pid = status["service"]["pid"].as_u64().expect("service pid") as u32;
    assert!(alive(pid), "gateway pid {pid}");

    // The active gateway's disk stalls: each of its writes to the device waits up to a
    // second, so every fdatasync takes seconds. Its agent and everything else run on.
    throttle.add(pid).expect("into the cgroup");
    throttle.set_write_iops(Some(1)).expect("throttle");
    let stalled_at = Instant::now();
    // Orders sent into the stall: held until durable, then answered by whichever gateway
    // holds the session by then, exactly once.
    let s_orders = names("s", 10);
    send_market_orders(&c, &s_orders[..5]);
    let g = b_hot_after(g, "the stalled gateway failed its health check").await;
    let second = logon_to_new_active(&mut c, &mut seen, t, "disk stall", stalled_at).await;
    assert_sequences_continue(&first, &second);
    let new_epoch = get_json(&admins[1], "/status").expect("status b")["epoch"]
        .as_u64()
        .expect("epoch");
    assert!(new_epoch > old_epoch, "{old_epoch} → {new_epoch}");
    send_market_orders(&c, &s_orders[5..]);
    wait_filled(&mut c, &mut seen, t, s_orders.clone()).await;
    // The stalled gateway does not outlive its agent's stop, however long its disk makes the
    // kill wait (a process in fdatasync dies once its write returns).
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(pid),
        "the stalled gateway {pid} outlived its agent's stop by 20 s"
    );
    // Its agent says why the gateway's ports and connections outlived the SIGKILL a while
    // (unless the gateway ended on SIGTERM, or its write returned just before the SIGKILL).
    let a_log = std::fs::read_to_string(&g.nodes["a"].out).expect("agent a's output");
    assert!(
        a_log.contains("the service got SIGKILL inside an uninterruptible wait")
            || !a_log.contains("service did not stop in time, killing it"),
        "{a_log}"
    );
    let _ = next_where(&mut c, &mut seen, Duration::from_millis(500), |_| false).await;
    let (v, body) = health_ok(health[1], "new active health");
    assert_eq!(v["role"], "active", "{body}");
    assert_eq!(v["epoch"], new_epoch, "{body}");
    // Every order answered exactly once (a copy only with PossDupFlag): New, partial, full.
    assert_new_partial_full(&seen, names("b", 10).into_iter().chain(s_orders));
    let (overlaps, hot_seen) = monitor.finish();
    assert!(overlaps.is_empty(), "two agents Hot: {overlaps:?}");
    assert_eq!(hot_seen, [true, true], "the monitor saw both actives");
    stop_client_and_group(c, g).await;
    drop(throttle);
}
