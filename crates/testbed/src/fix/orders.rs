//! What the FIX tests, the demo and the benchmarks do as a FIX client: order and cancel
//! bodies, waiting for the events that matter, and the exactly-once check of execution
//! reports. Assertions panic (for tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use understudy_fix::client::{self, Client, ClientConfig, ClientEvent};
use understudy_fix::orders::{put_str, tag};
use understudy_fix::tags::BeginString;

use crate::group::Group;

/// A FIX 4.4 client CLIENT1-style config toward the gateway GW at `addrs`.
pub fn client_cfg(comp: &str, addrs: Vec<SocketAddr>) -> ClientConfig {
    ClientConfig {
        connect: addrs,
        sender_comp_id: comp.into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

/// Starts a client CLIENT1 toward `addrs` and waits up to `timeout` for its logon: the client,
/// every event so far, and the logon.
pub async fn logged_on_client(
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> (Client, Vec<ClientEvent>, ClientEvent) {
    let mut c = client::start(client_cfg("CLIENT1", addrs))
        .unwrap_or_else(|e| panic!("starting a FIX client: {e}"));
    let mut seen = Vec::new();
    let logon = next_where(&mut c, &mut seen, timeout, is_logon)
        .await
        .unwrap_or_else(|| panic!("no logon within {timeout:?}"));
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
        .unwrap_or_else(|| panic!("no logon to the new active within {timeout:?}"));
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
        panic!("not two logons: {first:?}, {second:?}")
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
pub async fn stop_client_and_group(c: Client, mut g: Group) {
    c.task.abort();
    if tokio::task::spawn_blocking(move || g.stop_all())
        .await
        .is_err()
    {
        panic!("stopping the group failed");
    }
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
