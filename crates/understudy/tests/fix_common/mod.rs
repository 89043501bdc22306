//! Shared helpers of the FIX gateway real-process tests (`fix_gateway.rs`, `fix_quickfix.rs`,
//! `fix_sigstop.rs`): child processes killed on drop, `fix-exchange-sim` upstream, gateway
//! configs, a warm-standby pair of agents running `fix-gateway`, and a FIX client's orders,
//! events and exactly-once check.
#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::disallowed_methods)] // test drivers may block

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use understudy_control::local::{free_port, LocalGroup};
use understudy_fix::client::{self, Client, ClientConfig, ClientEvent};
use understudy_fix::exchange_sim::{put_str, tag};
use understudy_fix::tags::BeginString;

pub const EXE: &str = env!("CARGO_BIN_EXE_understudy");

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn wait_port(a: SocketAddr, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if TcpStream::connect_timeout(&a, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `fix-exchange-sim` (SenderCompID EXCH) on a free port, logging into `dir/sim.log`.
pub fn start_sim(dir: &Path) -> (Proc, SocketAddr) {
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

/// A gateway config `dir/{name}.toml` for client CLIENT1 and the upstream EXCH at `sim`,
/// followed by `extra` (more clients, routes, an `[admin]` section).
pub fn gateway_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    store: &Path,
    sim: SocketAddr,
    extra: &str,
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
{extra}"#,
            store.display()
        ),
    )
    .expect("write config");
    p
}

/// The exchange sim, and the configs of two gateways `gw-a` and `gw-b` listening at `ports`
/// on one shared store.
pub struct Pair {
    pub _sim: Proc,
    pub store: PathBuf,
    pub ports: [SocketAddr; 2],
    pub cfgs: [PathBuf; 2],
}

/// Starts the exchange sim and writes the configs of a [`Pair`], config `i` followed by
/// `extra(i)` (see [`gateway_config`]).
pub fn pair(dir: &Path, extra: impl Fn(usize) -> String) -> Pair {
    let (_sim, sim) = start_sim(dir);
    let store = dir.join("store");
    let ports = [
        addr(free_port().expect("port")),
        addr(free_port().expect("port")),
    ];
    let cfgs = [
        gateway_config(dir, "gw-a", ports[0], &store, sim, &extra(0)),
        gateway_config(dir, "gw-b", ports[1], &store, sim, &extra(1)),
    ];
    Pair {
        _sim,
        store,
        ports,
        cfgs,
    }
}

/// Two agents `a` and `b` (warm standby), each running `fix-gateway` with its config.
///
/// Each gateway starts with SIGUSR1 ignored until it installs its own handler, so a signal from
/// its agent that arrives early cannot kill it; the gateway also finds the agent Hot by polling
/// the agent's /status (see docs/fix-gateway.md).
pub fn gateway_group(cfgs: &[PathBuf; 2]) -> LocalGroup {
    let cfgs = cfgs.clone();
    LocalGroup::new(EXE.into(), &["a", "b"], "warm", move |n| {
        let cfg = if n == "a" { &cfgs[0] } else { &cfgs[1] };
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "trap '' USR1; exec {EXE} fix-gateway --config {}",
                cfg.display()
            ),
        ]
    })
    .expect("group")
}

/// Starts node 0 and waits until it is Hot, then node 1 and waits until it is Ready; asserts
/// that the active gateway listens at `active` within 10 s.
pub fn start_active_then_standby(g: &mut LocalGroup, active: SocketAddr) {
    g.start(0).expect("start a");
    g.wait_hot(0).expect("a hot");
    g.start(1).expect("start b");
    g.wait_ready(1).expect("b ready");
    assert!(
        wait_port(active, Duration::from_secs(10)),
        "active gateway did not listen"
    );
}

/// A FIX 4.4 client CLIENT1-style config toward the gateway GW at `addrs`.
pub fn client_cfg(comp: &str, addrs: Vec<SocketAddr>) -> ClientConfig {
    ClientConfig {
        connect: addrs,
        sender_comp_id: comp.into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(10),
    }
}

/// Starts a client CLIENT1 toward `addrs` and waits up to `timeout` for its logon: the client,
/// every event so far, and the logon.
pub async fn logged_on_client(
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> (Client, Vec<ClientEvent>, ClientEvent) {
    let mut c = client::start(client_cfg("CLIENT1", addrs)).expect("client");
    let mut seen = Vec::new();
    let logon = next_where(&mut c, &mut seen, timeout, is_logon)
        .await
        .expect("logon");
    (c, seen, logon)
}

/// Waits up to `timeout` for the client's logon to the new active and prints how long after
/// `cause` (at `since`) it came.
pub async fn logon_to_new_active(
    c: &mut Client,
    seen: &mut Vec<ClientEvent>,
    timeout: Duration,
    cause: &str,
    since: Instant,
) -> ClientEvent {
    let logon = next_where(c, seen, timeout, is_logon)
        .await
        .expect("logon to the new active");
    println!(
        "{cause} → client logged on to the new active: {:.1} ms",
        since.elapsed().as_secs_f64() * 1e3
    );
    logon
}

/// Asserts that the logon `second`, after a failover, continues the sequence numbers of the
/// logon `first` without a reset.
pub fn assert_sequences_continue(first: &ClientEvent, second: &ClientEvent) {
    let (ClientEvent::LoggedOn(a), ClientEvent::LoggedOn(b)) = (first, second) else {
        unreachable!()
    };
    assert!(!b.reset, "sequence numbers were reset");
    assert!(
        b.next_sender_seq > a.next_sender_seq && b.next_target_seq > a.next_target_seq,
        "{a:?} then {b:?}"
    );
}

/// Sends a market order to buy 10 ABC for each ClOrdID of `cls`.
pub fn send_market_orders(c: &Client, cls: &[String]) {
    for cl in cls {
        c.handle.send(0, b"D", order(cl, "ABC", 10, true));
    }
}

/// Drops the client's connection, then stops both agents of `g`.
pub async fn stop_client_and_group(c: Client, mut g: LocalGroup) {
    c.task.abort();
    tokio::task::spawn_blocking(move || g.stop_all())
        .await
        .expect("stop");
}

/// The body of a NewOrderSingle to buy: a market order, or a limit order at 10.5.
pub fn order(id: &str, symbol: &str, qty: u32, market: bool) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, tag::CL_ORD_ID, id);
    put_str(&mut b, 21, "1");
    put_str(&mut b, tag::SYMBOL, symbol);
    put_str(&mut b, tag::SIDE, "1");
    b.extend_from_slice(b"60=20240102-03:04:05.000\x01");
    put_str(&mut b, tag::ORDER_QTY, &qty.to_string());
    put_str(&mut b, tag::ORD_TYPE, if market { "1" } else { "2" });
    if !market {
        put_str(&mut b, tag::PRICE, "10.5");
    }
    b
}

/// The body of an OrderCancelRequest `cl` for the buy order `orig`.
pub fn cancel(orig: &str, cl: &str, symbol: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, tag::ORIG_CL_ORD_ID, orig);
    put_str(&mut b, tag::CL_ORD_ID, cl);
    put_str(&mut b, tag::SYMBOL, symbol);
    put_str(&mut b, tag::SIDE, "1");
    b
}

/// Waits for the next event that `want` accepts, keeping every event in `seen`.
pub async fn next_where(
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

pub fn is_logon(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::LoggedOn(_))
}

/// An ExecutionReport for `cl` with ExecType `exec_type`.
pub fn exec(e: &ClientEvent, cl: &str, exec_type: &str) -> bool {
    matches!(e, ClientEvent::Message { msg_type, .. } if msg_type == "8")
        && e.field(tag::CL_ORD_ID) == Some(cl)
        && e.field(tag::EXEC_TYPE) == Some(exec_type)
}

/// The ExecutionReport of `cl`'s full fill.
pub fn filled(e: &ClientEvent, cl: &str) -> bool {
    exec(e, cl, "F") && e.field(tag::ORD_STATUS) == Some("2")
}

/// Asserts that every order in `cls` is fully filled: already in `seen`, or within `timeout`
/// of waiting for it.
pub async fn wait_filled(
    c: &mut Client,
    seen: &mut Vec<ClientEvent>,
    timeout: Duration,
    cls: impl IntoIterator<Item = String>,
) {
    for cl in cls {
        if seen.iter().any(|e| filled(e, &cl)) {
            continue;
        }
        let got = next_where(c, seen, timeout, |e| filled(e, &cl)).await;
        assert!(got.is_some(), "{cl} filled: {seen:#?}");
    }
}

/// `prefix0` … `prefix{n-1}`.
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Exactly-once check: every ExecID at most once without PossDupFlag (the copies a client
/// must check: resent from the store, or forwarded again after a failover). Returns the ExecTypes received per ClOrdID, each ExecID once.
pub fn reports_by_order(seen: &[ClientEvent]) -> HashMap<String, Vec<String>> {
    let mut by_exec: HashMap<String, (String, String)> = HashMap::new();
    let mut dup_without_flag = Vec::new();
    for e in seen {
        if let ClientEvent::Message {
            msg_type, poss_dup, ..
        } = e
        {
            if msg_type != "8" {
                continue;
            }
            let id = e.field(tag::EXEC_ID).unwrap_or_default().to_owned();
            let cl = e.field(tag::CL_ORD_ID).unwrap_or_default().to_owned();
            let et = e.field(tag::EXEC_TYPE).unwrap_or_default().to_owned();
            if by_exec.contains_key(&id) && !poss_dup {
                dup_without_flag.push(id.clone());
            }
            by_exec.entry(id).or_insert((cl, et));
        }
    }
    assert!(
        dup_without_flag.is_empty(),
        "duplicate reports without PossDupFlag: {dup_without_flag:?}"
    );
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (cl, et) in by_exec.into_values() {
        out.entry(cl).or_default().push(et);
    }
    out
}

/// Asserts that each of `orders` got New, partial fill, full fill, each exactly once.
pub fn assert_new_partial_full(seen: &[ClientEvent], orders: impl IntoIterator<Item = String>) {
    let reports = reports_by_order(seen);
    for cl in orders {
        let mut got = reports.get(&cl).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, vec!["0", "F", "F"], "{cl}");
    }
}

/// Every file under `p`, recursively.
pub fn walk(p: &Path) -> Vec<PathBuf> {
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

/// The files under `store` whose name `keep` accepts, with their bytes, sorted.
pub fn store_files(store: &Path, keep: impl Fn(&str) -> bool) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = walk(store)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| keep(&n.to_string_lossy())))
        .map(|f| {
            let bytes = std::fs::read(&f).unwrap_or_default();
            (f, bytes)
        })
        .collect();
    v.sort();
    v
}
