//! SIGSTOP of the active FIX gateway *process* (not its agent), as real processes: two agents
//! (trylock, warm-standby `fix-gateway`s) whose `[health] http` check reads each gateway's
//! `GET /health`, `fix-exchange-sim` upstream and a FIX client configured with both gateway
//! addresses. The frozen gateway fails its health check; its agent stops it (SIGTERM, then
//! SIGKILL after `service.stop_timeout`) and releases the lock; the standby becomes Hot and the
//! client carries on there. Continued afterwards, the old process writes nothing to the store
//! and sends nothing, and at no moment are two agents Hot.
#![allow(clippy::disallowed_methods)] // test drivers may block

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use understudy_control::local::{alive, free_port, get_json, is_mode, LocalGroup};
use understudy_fix::client::{self, Client, ClientConfig, ClientEvent};
use understudy_fix::exchange_sim::{put_str, tag};
use understudy_fix::tags::BeginString;

const EXE: &str = env!("CARGO_BIN_EXE_understudy");

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_port(a: SocketAddr, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if TcpStream::connect_timeout(&a, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn start_sim(dir: &Path) -> (Proc, SocketAddr) {
    let a = addr(free_port().expect("port"));
    let log = std::fs::File::create(dir.join("sim.log")).expect("log");
    let child = Command::new(EXE)
        .args([
            "fix-exchange-sim",
            "--listen",
            &a.to_string(),
            "--sender-comp-id",
            "EXCH",
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start fix-exchange-sim");
    assert!(
        wait_port(a, Duration::from_secs(10)),
        "exchange sim did not listen"
    );
    (Proc(child), a)
}

/// A gateway config for CLIENT1, one upstream, and the health endpoint on `admin`.
fn gateway_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    store: &Path,
    sim: SocketAddr,
) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"[gateway]
listen = "{listen}"
comp_id = "GW"
store_dir = "{}"
default_route = "EXCH"

[[client]]
comp_id = "CLIENT1"

[[upstream]]
name = "EXCH"
connect = ["{sim}"]
target_comp_id = "EXCH"
heartbeat_interval = "5s"
reconnect_interval = "20ms"

[admin]
http = "{admin}"
"#,
            store.display()
        ),
    )
    .expect("write config");
    p
}

fn order(id: &str, qty: u32) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, tag::CL_ORD_ID, id);
    put_str(&mut b, 21, "1");
    put_str(&mut b, tag::SYMBOL, "ABC");
    put_str(&mut b, tag::SIDE, "1");
    b.extend_from_slice(b"60=20240102-03:04:05.000\x01");
    put_str(&mut b, tag::ORDER_QTY, &qty.to_string());
    put_str(&mut b, tag::ORD_TYPE, "1");
    b
}

/// Waits for the next event that `want` accepts, keeping every event in `seen`.
async fn next_where(
    c: &mut Client,
    seen: &mut Vec<ClientEvent>,
    timeout: Duration,
    want: impl Fn(&ClientEvent) -> bool,
) -> Option<ClientEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Ok(Some(e)) => {
                seen.push(e.clone());
                if want(&e) {
                    return Some(e);
                }
            }
            _ => return None,
        }
    }
}

fn is_logon(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::LoggedOn(_))
}

fn filled(e: &ClientEvent, cl: &str) -> bool {
    matches!(e, ClientEvent::Message { msg_type, .. } if msg_type == "8")
        && e.field(tag::CL_ORD_ID) == Some(cl)
        && e.field(tag::EXEC_TYPE) == Some("F")
        && e.field(tag::ORD_STATUS) == Some("2")
}

/// ExecTypes received per ClOrdID, each ExecID once; a repeated ExecID must carry
/// PossDupFlag or PossResend.
fn reports_by_order(seen: &[ClientEvent]) -> HashMap<String, Vec<String>> {
    let mut by_exec: HashMap<String, (String, String)> = HashMap::new();
    for e in seen {
        if let ClientEvent::Message {
            msg_type,
            poss_dup,
            poss_resend,
            ..
        } = e
        {
            if msg_type != "8" {
                continue;
            }
            let id = e.field(tag::EXEC_ID).unwrap_or_default().to_owned();
            assert!(
                !by_exec.contains_key(&id) || *poss_dup || *poss_resend,
                "ExecID {id} twice without PossDupFlag/PossResend"
            );
            by_exec.entry(id).or_insert((
                e.field(tag::CL_ORD_ID).unwrap_or_default().to_owned(),
                e.field(tag::EXEC_TYPE).unwrap_or_default().to_owned(),
            ));
        }
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (cl, et) in by_exec.into_values() {
        out.entry(cl).or_default().push(et);
    }
    out
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every store segment written by `epoch`, with its bytes.
fn segments_of(store: &Path, epoch: u64) -> Vec<(PathBuf, Vec<u8>)> {
    let name = format!("{epoch:020}.log");
    let mut v: Vec<_> = walk(store)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy() == name))
        .map(|f| {
            let bytes = std::fs::read(&f).unwrap_or_default();
            (f, bytes)
        })
        .collect();
    v.sort();
    v
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_active_gateway_fails_its_health_check_and_the_standby_takes_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_sim, sim) = start_sim(dir.path());
    let store = dir.path().join("store");
    let port = || addr(free_port().expect("port"));
    let fix = [port(), port()];
    let health = [port(), port()];
    let cfgs = [
        gateway_config(dir.path(), "gw-a", fix[0], health[0], &store, sim),
        gateway_config(dir.path(), "gw-b", fix[1], health[1], &store, sim),
    ];
    let cfgs2 = cfgs.clone();
    let g = LocalGroup::new(EXE.into(), &["a", "b"], "warm", move |n| {
        let cfg = if n == "a" { &cfgs2[0] } else { &cfgs2[1] };
        // As in fix_gateway.rs: SIGUSR1 ignored until the gateway installs its handler.
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "trap '' USR1; exec {EXE} fix-gateway --config {}",
                cfg.display()
            ),
        ]
    })
    .expect("group");
    // Each agent checks its own gateway's health endpoint, and stops a failing service fast.
    for (i, n) in g.nodes.iter().enumerate() {
        let text = std::fs::read_to_string(&n.cfg).expect("agent config");
        assert!(text.contains("stop_timeout = \"1s\""), "{text}");
        let text = text.replace("stop_timeout = \"1s\"", "stop_timeout = \"500ms\"")
            + &format!(
                "\n[health]\nhttp = \"http://{}/health\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfailures = 3\nstart_period = \"3s\"\n",
                health[i]
            );
        std::fs::write(&n.cfg, text).expect("agent config");
    }
    let admins = [g.nodes[0].admin.clone(), g.nodes[1].admin.clone()];
    let monitor = HotMonitor::start(admins.clone());
    let g = tokio::task::spawn_blocking(move || {
        let mut g = g;
        g.start(0).expect("start a");
        g.wait_hot(0).expect("a hot");
        g.start(1).expect("start b");
        // Ready means its health check passed: the Warm gateway answers /health.
        g.wait_ready(1).expect("b ready");
        g
    })
    .await
    .expect("group start");
    assert!(
        wait_port(fix[0], Duration::from_secs(10)),
        "active gateway did not listen"
    );
    let (code, body) = http_get(health[1], "/health").expect("standby health");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["role"], "standby", "{body}");
    assert_eq!(v["fenced"], false, "{body}");

    let mut c = client::start(ClientConfig {
        connect: fix.to_vec(),
        sender_comp_id: "CLIENT1".into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(10),
    })
    .expect("client");
    let mut seen = Vec::new();
    let t = Duration::from_secs(10);
    let first = next_where(&mut c, &mut seen, t, is_logon)
        .await
        .expect("logon");
    for i in 0..10 {
        c.handle.send(0, b"D", order(&format!("b{i}"), 10));
    }
    for i in 0..10 {
        let cl = format!("b{i}");
        if !seen.iter().any(|e| filled(e, &cl)) {
            assert!(
                next_where(&mut c, &mut seen, t, |e| filled(e, &cl))
                    .await
                    .is_some(),
                "{cl} filled"
            );
        }
    }
    // Let the trailing reports arrive: nothing is in flight when the gateway is frozen.
    let _ = next_where(&mut c, &mut seen, Duration::from_millis(300), |_| false).await;

    let (code, body) = http_get(health[0], "/health").expect("active health");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
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
    for i in 0..5 {
        c.handle.send(0, b"D", order(&format!("f{i}"), 10));
    }
    let g = tokio::task::spawn_blocking(move || {
        g.wait_hot(1)
            .expect("b hot after the frozen gateway failed its health check");
        g
    })
    .await
    .expect("wait b");
    let second = next_where(&mut c, &mut seen, t, is_logon)
        .await
        .expect("logon to the new active");
    println!(
        "SIGSTOP → client logged on to the new active: {:.1} ms",
        stopped_at.elapsed().as_secs_f64() * 1e3
    );
    // Nothing came from the frozen gateway: no message between the freeze and the new logon.
    let from_old: Vec<_> = seen[seen_at_stop..]
        .iter()
        .take_while(|e| !is_logon(e))
        .filter(|e| matches!(e, ClientEvent::Message { .. }))
        .collect();
    assert!(from_old.is_empty(), "messages while frozen: {from_old:?}");
    let (ClientEvent::LoggedOn(a), ClientEvent::LoggedOn(b)) = (&first, &second) else {
        unreachable!()
    };
    assert!(!b.reset, "sequence numbers were reset");
    assert!(
        b.next_sender_seq > a.next_sender_seq && b.next_target_seq > a.next_target_seq,
        "{a:?} then {b:?}"
    );
    let new_epoch = get_json(&admins[1], "/status").expect("status b")["epoch"]
        .as_u64()
        .expect("epoch");
    assert!(new_epoch > old_epoch, "{old_epoch} → {new_epoch}");
    let (code, body) = http_get(health[1], "/health").expect("new active health");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["role"], "active", "{body}");
    assert_eq!(v["epoch"], new_epoch, "{body}");

    // The agent stopped the frozen gateway: SIGKILL after stop_timeout ends even a stopped
    // process. Continue it anyway (a no-op when it is gone) and give it time to misbehave.
    let still_there = alive(pid) && proc_state(pid).is_some();
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
    for i in 5..10 {
        c.handle.send(0, b"D", order(&format!("f{i}"), 10));
    }
    for i in 0..10 {
        let cl = format!("f{i}");
        if !seen.iter().any(|e| filled(e, &cl)) {
            assert!(
                next_where(&mut c, &mut seen, t, |e| filled(e, &cl))
                    .await
                    .is_some(),
                "{cl} filled: {seen:#?}"
            );
        }
    }
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
    let reports = reports_by_order(&seen);
    for cl in (0..10)
        .map(|i| format!("b{i}"))
        .chain((0..10).map(|i| format!("f{i}")))
    {
        let mut got = reports.get(&cl).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, vec!["0", "F", "F"], "{cl}");
    }
    let (overlaps, hot_seen) = monitor.finish();
    assert!(overlaps.is_empty(), "two agents Hot: {overlaps:?}");
    assert_eq!(hot_seen, [true, true], "the monitor saw both actives");
    c.task.abort();
    tokio::task::spawn_blocking(move || {
        let mut g = g;
        g.stop_all()
    })
    .await
    .expect("stop");
}
