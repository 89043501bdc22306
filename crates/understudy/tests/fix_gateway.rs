//! The FIX gateway as real processes: `understudy fix-exchange-sim` upstream, `understudy
//! fix-gateway` (alone, or as the warm-standby service of two agents), and a FIX client
//! initiator configured with both gateway addresses.
#![allow(clippy::disallowed_methods)] // test drivers may block

mod fix_common;
mod skip;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fix_common::{
    addr, assert_new_partial_full, assert_sequences_continue, cancel, exec, filled, free_port,
    gateway_config, gateway_group, gateway_group_with, logged_on_client, logon_to_new_active,
    names, next_where, order, pair, send_market_orders, start_active_then_standby, start_sim,
    stop_client_and_group, store_files, wait_filled, wait_port, Pair, Proc, Replicated, EXE,
};
use understudy_fix::client::ClientEvent;
use understudy_fix::codec::{Deframer, MessageBuilder};
use understudy_fix::orders::{put_str, tag};
use understudy_fix::store::{FileStore, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

/// Gateway config additions: a second client, CLIENT2, and a route for symbols starting Z.
const CLIENT2_AND_Z_ROUTE: &str = r#"
[[client]]
comp_id = "CLIENT2"

[[route]]
upstream = "EXCH"
symbol_prefix = "Z"
"#;

/// A replicated `sync` pair in `dir`, its agents a and b not started.
fn sync_pair(dir: &Path) -> (Pair, fix_common::Group) {
    sync_pair_with(dir, |_| {})
}

/// [`sync_pair`], the group's agent configuration changed by `edit` before the nodes are added.
fn sync_pair_with(
    dir: &Path,
    edit: impl FnOnce(&mut fix_common::Group),
) -> (Pair, fix_common::Group) {
    let repl = Replicated::new(dir, "sync").expect("replication settings");
    let p = pair(dir, |i| repl.extra(dir, i));
    let mut g =
        testbed::fix::group::gateway_group(EXE.as_ref()).unwrap_or_else(|e| panic!("{e:#}"));
    edit(&mut g);
    testbed::fix::group::add_gateways_with(&mut g, &p.cfgs, Some(&repl))
        .unwrap_or_else(|e| panic!("{e:#}"));
    (p, g)
}

/// A gateway config for clients CLIENT1 and CLIENT2 and one upstream.
fn config(dir: &Path, name: &str, listen: SocketAddr, store: &Path, sim: SocketAddr) -> PathBuf {
    gateway_config(dir, name, listen, store, sim, CLIENT2_AND_Z_ROUTE)
}

fn start_gateway(cfg: &Path, epoch: u64, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(EXE)
        .args(["fix-gateway", "--config"])
        .arg(cfg)
        .env("UNDERSTUDY_ROLE", "active")
        .env("UNDERSTUDY_EPOCH", epoch.to_string())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start fix-gateway")
}

/// The exchange sim and one gateway, active with `epoch`, listening at `addr`.
struct Single {
    _sim: Proc,
    sim: SocketAddr,
    store: PathBuf,
    gateway: Proc,
    addr: SocketAddr,
}

fn start_single(dir: &Path, epoch: u64) -> Single {
    let (_sim, sim) = start_sim(dir);
    let store = dir.join("store");
    let gw = addr(free_port().expect("port"));
    let cfg = config(dir, "gw", gw, &store, sim);
    let gateway = Proc(start_gateway(
        &cfg,
        epoch,
        &dir.join(format!("gw{epoch}.log")),
    ));
    assert!(
        wait_port(gw, Duration::from_secs(10)),
        "gateway did not listen"
    );
    Single {
        _sim,
        sim,
        store,
        gateway,
        addr: gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_acknowledged_filled_cancelled_and_replaced_through_the_gateway() {
    let dir = tempfile::tempdir().expect("tmp");
    let gw = start_single(dir.path(), 1);

    let t = Duration::from_secs(10);
    let (mut c, mut seen, _) = logged_on_client(vec![gw.addr], t).await;

    c.handle.send(0, b"D", order("m1", "ABC", 100, true));
    assert!(
        next_where(&mut c, &mut seen, t, |e| filled(e, "m1"))
            .await
            .is_some(),
        "m1 filled"
    );
    assert!(seen.iter().any(|e| exec(e, "m1", "0")), "m1 acknowledged");
    let fills: Vec<_> = seen.iter().filter(|e| exec(e, "m1", "F")).collect();
    assert_eq!(fills.len(), 2, "a partial and a full fill: {seen:?}");
    assert_eq!(fills[0].field(tag::ORD_STATUS), Some("1"));
    assert_eq!(fills[1].field(tag::ORD_STATUS), Some("2"));
    assert_eq!(fills[1].field(tag::CUM_QTY), Some("100"));

    // A resting order (routed by the Z rule), replaced, then cancelled.
    c.handle.send(0, b"D", order("l1", "ZED", 10, false));
    assert!(next_where(&mut c, &mut seen, t, |e| exec(e, "l1", "0"))
        .await
        .is_some());
    let mut g = Vec::new();
    put_str(&mut g, tag::ORIG_CL_ORD_ID, "l1");
    g.extend_from_slice(&order("l2", "ZED", 20, false));
    c.handle.send(0, b"G", g);
    let r = next_where(&mut c, &mut seen, t, |e| exec(e, "l2", "5"))
        .await
        .expect("replaced");
    assert_eq!(r.field(tag::ORIG_CL_ORD_ID), Some("l1"));
    assert_eq!(r.field(tag::ORDER_QTY), Some("20"));
    let mut f = cancel("l2", "l3", "ZED");
    f.extend_from_slice(b"60=20240102-03:04:05.000\x01");
    c.handle.send(0, b"F", f);
    assert!(
        next_where(&mut c, &mut seen, t, |e| exec(e, "l3", "4"))
            .await
            .is_some(),
        "cancelled"
    );
    // Cancelling again is refused with an OrderCancelReject.
    c.handle.send(0, b"F", cancel("l3", "l4", "ZED"));
    let rej = next_where(
        &mut c,
        &mut seen,
        t,
        |e| matches!(e, ClientEvent::Message { msg_type, .. } if msg_type == "9"),
    )
    .await
    .expect("cancel reject");
    assert_eq!(rej.field(tag::CL_ORD_ID), Some("l4"));
    c.task.abort();
}

/// How long a raw connection waits for an answer: a liveness bound, far above the few ms an
/// answer takes, so that a loaded machine does not fail the test (speed is the benchmarks' job).
const ANSWER: Duration = Duration::from_secs(10);

/// A raw FIX 4.4 connection to the gateway as `comp`, numbering its messages from `seq`.
struct Raw {
    s: TcpStream,
    d: Deframer,
    comp: &'static str,
    seq: u64,
}

impl Raw {
    fn connect(a: SocketAddr, comp: &'static str) -> Raw {
        let s = TcpStream::connect(a).expect("connect");
        // Short reads, so that `until` checks its deadline often.
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Raw {
            s,
            d: Deframer::default(),
            comp,
            seq: 1,
        }
    }

    fn build(&mut self, mt: &str, body: &str) -> Vec<u8> {
        let mut b = MessageBuilder::new(BeginString::Fix44, mt.as_bytes());
        b.push_str(49, self.comp)
            .push_str(56, "GW")
            .push_uint(34, self.seq)
            .push_time(52, SystemTime::now());
        b.push_raw(body.replace('|', "\x01").as_bytes());
        self.seq += 1;
        b.finish().expect("encode")
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Every frame received (as `|`-delimited text) up to and including the first one `want`
    /// accepts; panics with what came when none does within [`ANSWER`] or the peer closes.
    fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + ANSWER;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            while let Ok(Some(f)) = self.d.next_frame() {
                let m = String::from_utf8_lossy(f).replace('\x01', "|");
                let done = want(&m);
                out.push(m);
                if done {
                    return out;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {ANSWER:?}; received {out:#?}"
            );
            match self.s.read(&mut buf) {
                Ok(0) => panic!("connection closed before {what}; received {out:#?}"),
                Ok(n) => self.d.push(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// Logs on (HeartBtInt 30 s) and waits for the answer.
    fn logon(&mut self) -> Vec<String> {
        let logon = self.build("A", "98=0|108=30|");
        self.send(&logon);
        self.until("logon answer", |m| field(m, 35) == Some("A"))
    }

    /// Logs on with ResetSeqNumFlag=Y (both sides start again at 1), as a client that resets
    /// every morning does, and waits for the answer.
    fn logon_with_reset(&mut self) -> Vec<String> {
        self.seq = 1;
        let logon = self.build("A", "98=0|108=30|141=Y|");
        self.send(&logon);
        self.until("logon answer", |m| field(m, 35) == Some("A"))
    }

    /// Sends a market order and waits for its fill; returns every frame received meanwhile.
    fn order_filled(&mut self, id: &str) -> Vec<String> {
        let d = self.build(
            "D",
            &format!("11={id}|21=1|55=ABC|54=1|60=20240102-03:04:05|38=10|40=1|"),
        );
        self.send(&d);
        self.until(&format!("{id} filled"), |m| {
            field(m, 35) == Some("8") && field(m, 11) == Some(id) && field(m, 39) == Some("2")
        })
    }
}

/// The gateway's `GET /health` at `admin`, asserting it answered 200.
fn health_of(admin: SocketAddr) -> serde_json::Value {
    let (code, body) =
        testbed::http("GET", &admin.to_string(), "/health", ANSWER).expect("GET /health");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// `store_bytes` of `session` in the gateway's `GET /health` at `admin`.
fn store_bytes_of(admin: SocketAddr, session: &str) -> u64 {
    let v = health_of(admin);
    v["sessions"]
        .as_array()
        .and_then(|ss| ss.iter().find(|s| s["name"] == session))
        .and_then(|s| s["store_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no store_bytes for {session}: {v}"))
}

/// The segment files of one session's store under `store`, oldest first.
fn segments(store: &Path, session: &str) -> Vec<String> {
    understudy_fix::store::segment_files(&store.join(session)).expect("segments")
}

fn field(msg: &str, t: u32) -> Option<&str> {
    let p = format!("|{t}=");
    let i = msg.find(&p)? + p.len();
    msg[i..].split('|').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_the_answer_the_spec_requires_and_never_a_crash() {
    let dir = tempfile::tempdir().expect("tmp");
    let Single {
        _sim,
        gateway: mut g,
        addr: gw,
        ..
    } = start_single(dir.path(), 1);
    tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(gw, "CLIENT1");
        r.logon();

        // Bad checksum: garbled, ignored without a Reject and without using up MsgSeqNum 2.
        let mut bad = r.build("1", "112=T1|");
        let n = bad.len();
        bad[n - 2] = if bad[n - 2] == b'0' { b'1' } else { b'0' };
        r.send(&bad);
        // Bad body length and plain garbage: ignored too.
        r.send(b"8=FIX.4.4\x019=5\x0135=0\x0149=CLIENT1\x0156=GW\x0134=2\x0110=000\x01");
        r.send(b"\x00\xffgarbage bytes that are not FIX at all\x01\x01");
        // MsgSeqNum 2 is still expected: a TestRequest with it is answered. The gateway reads
        // one connection in order, so an answer to the garbage would come before this one.
        r.seq = 2;
        let tr = r.build("1", "112=T2|");
        r.send(&tr);
        let got = r.until("heartbeat for T2", |m| {
            field(m, 35) == Some("0") && field(m, 112) == Some("T2")
        });
        assert_eq!(got.len(), 1, "garbled input answered: {got:#?}");
        // A NewOrderSingle without Symbol: session Reject, reason 1, RefTagID 55.
        let d = r.build("D", "11=x1|54=1|38=5|40=1|60=20240102-03:04:05|");
        r.send(&d);
        let got = r.until("reject", |m| field(m, 35) == Some("3"));
        let rej = got.last().expect("reject");
        assert_eq!(field(rej, 373), Some("1"), "{rej}");
        assert_eq!(field(rej, 371), Some("55"), "{rej}");
        assert_eq!(field(rej, 45), Some("3"), "{rej}");
        // An unsupported application message: BusinessMessageReject.
        let x = r.build("AE", "571=1|");
        r.send(&x);
        r.until("BusinessMessageReject", |m| field(m, 35) == Some("j"));
        // MsgSeqNum too low without PossDupFlag: Logout, then disconnect.
        r.seq = 2;
        let low = r.build("0", "");
        r.send(&low);
        r.until("logout", |m| field(m, 35) == Some("5"));
    })
    .await
    .expect("raw client");
    // The gateway survived all of it.
    assert!(g.0.try_wait().expect("wait").is_none(), "gateway exited");
    assert!(wait_port(gw, Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_writes_nothing_and_sends_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    // The current active, epoch 5.
    let Single {
        _sim,
        sim,
        store,
        gateway: mut g5,
        addr: gw,
    } = start_single(dir.path(), 5);
    let t = Duration::from_secs(10);
    let (mut c, mut seen, _) = logged_on_client(vec![gw], t).await;
    c.handle.send(0, b"D", order("s1", "ABC", 2, true));
    assert!(next_where(&mut c, &mut seen, t, |e| filled(e, "s1"))
        .await
        .is_some());

    // A former active with epoch 3 starts: refused before it writes or listens.
    // What a stale writer could touch: a segment of its own epoch, or any fence.
    let snapshot =
        |p: &Path| store_files(p, |n| n == "fence" || n.starts_with("00000000000000000003"));
    let stale_port = addr(free_port().expect("port"));
    let stale_cfg = config(dir.path(), "stale", stale_port, &store, sim);
    let before = snapshot(&store);
    let mut g3 = start_gateway(&stale_cfg, 3, &dir.path().join("gw3.log"));
    let status = g3.wait().expect("wait");
    assert_eq!(status.code(), Some(3), "stale gateway must exit 3");
    assert_eq!(snapshot(&store), before, "stale gateway wrote to the store");
    assert!(TcpStream::connect_timeout(&stale_port, Duration::from_millis(200)).is_err());

    // Now a newer epoch claims the store under the running epoch-5 gateway: it stops within
    // a tick, sending nothing more.
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT1");
    let newer = FileStore::open(&store, &sid, 6, SyncPolicy::EveryWrite).expect("claim 6");
    let sent_before = newer.next_sender_seq();
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(s) = g5.0.try_wait().expect("wait") {
            break s.code();
        }
        assert!(Instant::now() < deadline, "fenced gateway kept running");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(3));
    drop(newer);
    let reopened = FileStore::open(&store, &sid, 7, SyncPolicy::EveryWrite).expect("claim 7");
    assert_eq!(
        reopened.next_sender_seq(),
        sent_before,
        "a fenced writer's records count"
    );
    // The client saw the connection drop with no message before it (the gateway has exited,
    // so nothing can come after).
    let before = seen.len();
    let dropped = next_where(&mut c, &mut seen, t, |e| {
        matches!(e, ClientEvent::LoggedOut(_))
    })
    .await;
    assert!(
        dropped.is_some(),
        "the client never saw the connection drop"
    );
    let more: Vec<_> = seen[before..]
        .iter()
        .filter(|e| matches!(e, ClientEvent::Message { .. }))
        .collect();
    assert!(more.is_empty(), "message after fencing: {more:?}");
    c.task.abort();
}

#[test]
fn a_bad_config_is_refused_at_start_even_as_a_warm_standby() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[gateway]\nlisten = \"127.0.0.1:1\"\ncomp_id = \"GW\"\nstore_dir = \"/tmp/x\"\ndefault_route = \"NOPE\"\n\n[[client]]\ncomp_id = \"C\"\n\n[[upstream]]\nname = \"EXCH\"\nconnect = [\"127.0.0.1:2\"]\ntarget_comp_id = \"EXCH\"\n",
    )
    .expect("write");
    let out = Command::new(EXE)
        .args(["fix-gateway", "--config"])
        .arg(&p)
        .env("UNDERSTUDY_ROLE", "standby")
        .env("UNDERSTUDY_ADMIN", "127.0.0.1:1")
        .stdout(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("gateway.default_route") && err.contains("NOPE"),
        "{err}"
    );
}

/// Adds a second session to the same exchange (`EXCH2`, as `GW2`) to both gateways' configs,
/// and to node a's only a route sending symbols starting RST there: a routing change rolled
/// out to the standby first. Orders already resting stay where they are, so a cancel must
/// follow the order, which only the order map knows.
fn second_upstream_routing_rst_on_node_a_only(cfgs: &[PathBuf; 2]) {
    for (i, cfg) in cfgs.iter().enumerate() {
        let mut doc: toml::Table = std::fs::read_to_string(cfg)
            .expect("read config")
            .parse()
            .expect("TOML");
        let ups = doc
            .get_mut("upstream")
            .and_then(|u| u.as_array_mut())
            .expect("[[upstream]]");
        let mut second = ups[0].as_table().expect("upstream table").clone();
        second.insert("name".into(), "EXCH2".into());
        second.insert("sender_comp_id".into(), "GW2".into());
        ups.push(second.into());
        if i == 0 {
            let mut route = toml::Table::new();
            route.insert("upstream".into(), "EXCH2".into());
            route.insert("symbol_prefix".into(), "RST".into());
            match doc.get_mut("route").and_then(|r| r.as_array_mut()) {
                Some(routes) => routes.insert(0, route.into()),
                None => {
                    doc.insert("route".into(), vec![toml::Value::from(route)].into());
                }
            }
        }
        std::fs::write(cfg, toml::to_string(&doc).expect("TOML")).expect("write config");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_agent_the_client_carries_on_with_the_standby() {
    let dir = tempfile::tempdir().expect("tmp");
    let Pair {
        _sim, ports, cfgs, ..
    } = pair(dir.path(), |_| CLIENT2_AND_Z_ROUTE.to_owned());
    second_upstream_routing_rst_on_node_a_only(&cfgs);
    let mut g = gateway_group(&cfgs);
    let mut g = tokio::task::spawn_blocking(move || {
        start_active_then_standby(&mut g, ports[0]);
        g
    })
    .await
    .expect("group start");
    // The standby gateway is Warm: nothing listens on its address.
    assert!(TcpStream::connect_timeout(&ports[1], Duration::from_millis(200)).is_err());

    let t = Duration::from_secs(10);
    let (mut c, mut seen, first) = logged_on_client(ports.to_vec(), t).await;
    send_market_orders(&c, &names("b", 20));
    wait_filled(&mut c, &mut seen, t, names("b", 20)).await;
    // CLIENT2, on a raw connection, gets one order filled by the active gateway: the reports
    // the old active stores, asked for again from the new active below.
    let active = ports[0];
    let (mut raw, old_reports) = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(active, "CLIENT2");
        raw.logon();
        let d = raw.build(
            "D",
            "11=c2|21=1|55=ABC|54=1|60=20240102-03:04:05|38=10|40=1|",
        );
        raw.send(&d);
        let got = raw.until("c2 filled", |m| {
            field(m, 35) == Some("8") && field(m, 11) == Some("c2") && field(m, 39) == Some("2")
        });
        let reports: Vec<String> = got
            .into_iter()
            .filter(|m| field(m, 35) == Some("8"))
            .collect();
        (raw, reports)
    })
    .await
    .expect("CLIENT2");
    // Orders in flight at the kill, and a resting one to cancel afterwards: routed to EXCH2
    // by node a, which the kill leaves no time to write its order map (written once a tick).
    let k_orders = names("k", 10);
    c.handle.send(0, b"D", order("r1", "RST", 10, false));
    assert!(next_where(&mut c, &mut seen, t, |e| exec(e, "r1", "0"))
        .await
        .is_some());
    send_market_orders(&c, &k_orders[..5]);
    let killed_at = Instant::now();
    let g = tokio::task::spawn_blocking(move || {
        g.kill9("a");
        g.wait_hot("b").expect("b hot");
        g
    })
    .await
    .expect("kill");
    let second = logon_to_new_active(&mut c, &mut seen, t, "kill -9", killed_at).await;
    assert_sequences_continue(&first, &second);
    send_market_orders(&c, &k_orders[5..]);
    // Node b's rules send RST to EXCH, where the simulator knows no r1 and would reject the
    // cancel: it reaches EXCH2 because b's order map has r1, rebuilt from EXCH2's store if a
    // never wrote it.
    c.handle.send(0, b"F", cancel("r1", "r2", "RST"));
    assert!(
        next_where(&mut c, &mut seen, t, |e| exec(e, "r2", "4"))
            .await
            .is_some(),
        "cancel after failover (reaching the upstream that has the order)"
    );
    wait_filled(&mut c, &mut seen, t, k_orders.clone()).await;
    // A barrier instead of a pause: the exchange answers a session in order and the gateway
    // forwards in order, so once a later order is filled every report caused by the earlier
    // ones (and any copy forwarded again) has arrived. Then each order got New, partial, full
    // exactly once.
    send_market_orders(&c, &names("z", 1));
    wait_filled(&mut c, &mut seen, t, names("z", 1)).await;
    assert_new_partial_full(&seen, names("b", 20).into_iter().chain(k_orders));

    // A resend request is answered from the store the old active wrote: CLIENT2 logs on to the
    // new active and asks for everything from MsgSeqNum 1; each report the old active sent it
    // comes again, same MsgSeqNum and ExecID, with PossDupFlag=Y.
    let standby = ports[1];
    let last = old_reports
        .last()
        .and_then(|m| field(m, 34))
        .map(str::to_owned);
    let resent = tokio::task::spawn_blocking(move || {
        raw.s = TcpStream::connect(standby).expect("connect to the new active");
        raw.s
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        raw.d = Deframer::default();
        raw.logon();
        let rr = raw.build("2", "7=1|16=0|");
        raw.send(&rr);
        raw.until("the resent reports", |m| {
            field(m, 35) == Some("8") && field(m, 34).map(str::to_owned) == last
        })
    })
    .await
    .expect("CLIENT2 resend");
    assert!(
        old_reports.len() >= 3,
        "New, partial, full: {old_reports:#?}"
    );
    for old in &old_reports {
        let again = resent
            .iter()
            .find(|m| field(m, 35) == Some("8") && field(m, 34) == field(old, 34));
        let again = again.unwrap_or_else(|| panic!("not resent: {old}\nresent: {resent:#?}"));
        assert_eq!(field(again, 43), Some("Y"), "PossDupFlag: {again}");
        assert_eq!(
            field(again, 17),
            field(old, 17),
            "same ExecID: {old} / {again}"
        );
    }
    stop_client_and_group(c, g).await;
}

/// A client that resets its sequence numbers at every logon (a new trading day) into a
/// replicated pair, past a small `store_rotate_bytes`: each reset starts a new generation of
/// its store, the active deletes the older ones and so does the standby's copy; after kill
/// -9 of the active's agent the standby takes over from that copy, and the client logs on
/// with its sequence numbers continuing, never two actives.
#[test]
fn daily_resets_keep_both_copies_of_a_store_small_and_the_standby_takes_over_from_them() {
    const SESSION: &str = "GW-RESETTER-FIX.4.4";
    let dir = tempfile::tempdir().expect("tmp");
    let repl = Replicated::new(dir.path(), "sync").expect("replication settings");
    let Pair {
        _sim, ports, cfgs, ..
    } = pair(dir.path(), |i| {
        repl.extra(dir.path(), i)
            .replace("[gateway]\n", "[gateway]\nstore_rotate_bytes = 4096\n")
            + "[[client]]\ncomp_id = \"RESETTER\"\nallow_reset = true\n"
    });
    let stores = [dir.path().join("store-a"), dir.path().join("store-b")];
    let mut g = gateway_group_with(&cfgs, Some(&repl));
    let watcher = g.watch();
    start_active_then_standby(&mut g, ports[0]);
    g.wait_ready_standby("b")
        .expect("b a ready standby, in sync");

    let mut raw = Raw::connect(ports[0], "RESETTER");
    let mut last_seq = 0u64;
    let mut replayed = Vec::new();
    for day in 1..=5 {
        if day > 1 {
            raw = Raw::connect(ports[0], "RESETTER");
        }
        let answer = raw.logon_with_reset();
        assert!(
            answer
                .iter()
                .any(|m| field(m, 35) == Some("A") && field(m, 34) == Some("1")),
            "day {day}: the reset logon is answered with MsgSeqNum 1: {answer:#?}"
        );
        for i in 0..10 {
            let got = raw.order_filled(&format!("d{day}o{i}"));
            if let Some(seq) = got.iter().rev().find_map(|m| field(m, 34)?.parse().ok()) {
                last_seq = seq;
            }
        }
        // The day ends with a Logout both ways, so the next logon is not a second
        // connection of a session still up.
        let logout = raw.build("5", "");
        raw.send(&logout);
        let got = raw.until("logout answer", |m| field(m, 35) == Some("5"));
        if let Some(seq) = got.iter().rev().find_map(|m| field(m, 34)?.parse().ok()) {
            last_seq = seq;
        }
        replayed.push(store_bytes_of(repl.health[0], "RESETTER"));
    }
    // What a new active would replay is one day's, not five days'.
    println!("RESETTER's store_bytes after each day: {replayed:?}");
    assert!(
        replayed.iter().all(|&b| b > 0 && b <= 2 * replayed[0]),
        "store_bytes day by day: {replayed:?}"
    );
    // Five days written; on the active only the last two generations are left.
    let on_a = segments(&stores[0], SESSION);
    assert_eq!(on_a.len(), 2, "the active's files: {on_a:?}");
    assert!(on_a[1].contains('-'), "a later generation: {on_a:?}");
    // The standby deletes the same once the newest generation is durable in its copy.
    let deadline = Instant::now() + Duration::from_secs(10);
    while segments(&stores[1], SESSION) != on_a {
        assert!(
            Instant::now() < deadline,
            "the standby's copy {:?}, the active's {on_a:?}",
            segments(&stores[1], SESSION)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    g.kill9("a");
    g.wait_hot("b").expect("b hot");
    assert!(
        wait_port(ports[1], Duration::from_secs(10)),
        "the new active does not listen"
    );
    let mut again = Raw {
        s: TcpStream::connect(ports[1]).expect("connect to the new active"),
        d: Deframer::default(),
        comp: "RESETTER",
        seq: raw.seq,
    };
    again
        .s
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let answer = again.logon();
    let next = (last_seq + 1).to_string();
    assert!(
        answer
            .iter()
            .any(|m| field(m, 35) == Some("A") && field(m, 34) == Some(next.as_str())),
        "the new active answers the logon with MsgSeqNum {next}: {answer:#?}"
    );
    // The copy may lack the record of the Logout a received last (a received number rides
    // with the next batch: the safe direction), and the new active then asks for it again,
    // as any engine may: the client fills the gap, as any client must.
    again
        .s
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    let mut asked = None;
    while asked.is_none() && Instant::now() < deadline {
        while let Ok(Some(f)) = again.d.next_frame() {
            let m = String::from_utf8_lossy(f).replace('\x01', "|");
            if field(&m, 35) == Some("2") {
                asked = field(&m, 7).and_then(|v| v.parse::<u64>().ok());
            }
        }
        if let Ok(n) = again.s.read(&mut buf) {
            again.d.push(&buf[..n]);
        }
    }
    if let Some(from) = asked {
        // One instant for both: an OrigSendingTime a millisecond after the SendingTime (two
        // clock reads across a tick) is a SendingTime accuracy problem, and ends the session.
        let now = SystemTime::now();
        let mut b = MessageBuilder::new(BeginString::Fix44, b"4");
        b.push_str(49, "RESETTER")
            .push_str(56, "GW")
            .push_uint(34, from)
            .push_str(43, "Y")
            .push_time(52, now)
            .push_time(122, now)
            .push_str(123, "Y")
            .push_uint(36, again.seq);
        again.send(&b.finish().expect("gap fill"));
    }
    again.order_filled("after");
    // The new active opened the last generation and kept what its claim names.
    let on_b = segments(&stores[1], SESSION);
    assert_eq!(on_b.len(), 3, "the new active's files: {on_b:?}");
    assert_eq!(on_b[..2], on_a[..], "{on_b:?}");
    let rep = watcher.finish();
    println!("two-Hot watcher: {} sweeps, no two actives", rep.sweeps);
    g.stop_all();
}

/// A sync-mode active whose standby answers a batch with a newer epoch (the way a former
/// active on another machine learns it is stale) exits 3, the
/// fenced code, as the store's own fence check would: the failed pass once made it a store
/// failure, exit 1, whenever the answer came while the batch waited (review 11, R4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_has_seen_a_newer_epoch_stops_a_sync_active_with_exit_3() {
    use understudy_fix::replica::proto::{read_frame, Frame};
    let dir = tempfile::tempdir().expect("tmp");
    let (_sim, sim) = start_sim(dir.path());
    // A standby by hand: it takes the hello of epoch 5, acknowledges the catch-up and any
    // heartbeat, and refuses the first batch after the catch-up: it has seen epoch 6.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let standby = listener.local_addr().expect("addr");
    let refused = std::thread::spawn(move || {
        use understudy_fix::replica::auth::{self, Side};
        let (mut s, _) = listener.accept().expect("accept");
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        let token = b"replication-secret-of-this-test";
        // The handshake: the hello of epoch 5, our proof of the token, the active's.
        let theirs = match read_frame(&mut s, &mut buf).expect("hello") {
            Frame::Hello {
                epoch: 5, nonce, ..
            } => <[u8; auth::NONCE_LEN]>::try_from(nonce.as_slice()).expect("nonce"),
            other => panic!("{other:?}"),
        };
        let ours = auth::nonce().expect("nonce");
        Frame::Challenge {
            nonce: ours,
            mac: auth::prove(token, Side::Standby, 5, &theirs, &ours),
        }
        .write_to(&mut s, &mut out)
        .expect("challenge");
        match read_frame(&mut s, &mut buf).expect("proof") {
            Frame::Proof { mac } => {
                assert!(auth::verify(token, Side::Active, 5, &theirs, &ours, &mac))
            }
            other => panic!("{other:?}"),
        }
        Frame::Welcome {
            seen_epoch: 5,
            files: vec![],
        }
        .write_to(&mut s, &mut out)
        .expect("welcome");
        let mut caught_up = false;
        loop {
            match read_frame(&mut s, &mut buf) {
                Ok(Frame::Sync { pos }) if !caught_up => {
                    caught_up = true;
                    Frame::Ack { pos }.write_to(&mut s, &mut out).expect("ack");
                }
                Ok(Frame::Sync { .. }) => {
                    Frame::Refuse {
                        newest_epoch: 6,
                        reason: "epoch 6 seen here".into(),
                    }
                    .write_to(&mut s, &mut out)
                    .expect("refuse");
                    return true;
                }
                Ok(Frame::Heartbeat { .. }) => {
                    Frame::Ack { pos: 0 }
                        .write_to(&mut s, &mut out)
                        .expect("ack");
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    });
    let token = dir.path().join("repl.token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&token)
            .expect("token");
        f.write_all(b"replication-secret-of-this-test\n")
            .expect("token");
    }
    let gw = addr(free_port().expect("port"));
    let listen = addr(free_port().expect("port"));
    let extra = format!(
        "[replication]\nmode = \"sync\"\nlisten = \"{listen}\"\npeers = [\"{standby}\"]\n\
         token_file = \"{}\"\ntimeout = \"1500ms\"\nsync_timeout = \"3s\"\nheartbeat = \"100ms\"\n",
        token.display()
    );
    let store = dir.path().join("store");
    let cfg = gateway_config(dir.path(), "gw", gw, &store, sim, &extra);
    // Its first batch (the logon to the upstream) is refused: nothing of it may leave.
    let mut g5 = Proc(start_gateway(&cfg, 5, &dir.path().join("gw5.log")));
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = g5.0.try_wait().expect("wait") {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "a fenced gateway kept running:\n{}",
            std::fs::read_to_string(dir.path().join("gw5.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        refused.join().expect("standby"),
        "no batch reached the standby"
    );
    assert_eq!(
        code,
        Some(3),
        "a fenced gateway must exit 3:\n{}",
        std::fs::read_to_string(dir.path().join("gw5.log")).unwrap_or_default()
    );
}

/// Only a standby in sync with the group's newest active may take over (review 11, R2). A
/// standby counts itself in sync for `replication.timeout` after its last acknowledgement,
/// across a disconnect, so that it may take over from an active that just died; a newer
/// active that has not reached it yet sends without it. Here that newer active is node x, of
/// higher priority, whose service is not a gateway and never streams to b: from x's epoch on,
/// b's agent reports b not ready (in sync with a's epoch only), and when x is killed in turn,
/// b, which may lack what x sent, does not take over. Never two actives.
#[test]
fn a_standby_in_sync_with_an_older_active_than_the_groups_newest_does_not_take_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let (Pair { _sim, ports, .. }, mut g) = sync_pair(dir.path());
    let demo = g.demo_service(None);
    g.add_node("x", |c| {
        c.service.command = demo;
        c.health = None;
    })
    .expect("node x");
    // x is preferred over b when a is gone.
    let path = g.nodes["x"].config.clone();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replacen("[node]\n", "[node]\npriority = 10\n", 1),
    )
    .expect("write config");
    let watcher = g.watch();
    start_active_then_standby(&mut g, ports[0]);
    g.wait_ready_standby("b").expect("b in sync with a");
    g.spawn("x").expect("spawn x");
    g.wait_ready_standby("x").expect("x ready");
    let a_epoch = g.epoch("a");

    g.kill9("a");
    g.wait_hot("x").expect("x takes over");
    let x_epoch = g.epoch("x");
    assert!(x_epoch > a_epoch, "x's epoch {x_epoch}, a's {a_epoch}");
    let why = format!("in sync with epoch {a_epoch}, but the group is at epoch");
    let deadline = Instant::now() + Duration::from_secs(5);
    // In b's status (`waiting`), where the agent says why it does not take over.
    while !g.st("b").to_string().contains(&why) {
        assert!(
            Instant::now() < deadline,
            "b never said it is in sync with an older active only; status {}, events {}",
            g.st("b"),
            g.events("b")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(
        g.st("b").get("ready").and_then(|v| v.as_bool()),
        Some(true),
        "b ready while x, which never streamed to it, is the newest active"
    );

    g.kill9("x");
    // b may lack what x sent: it stays a standby, whatever its window from a says.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_ne!(
            g.mode("b").as_deref(),
            Some("Hot"),
            "b took over without what the newest active may have sent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    watcher.finish();
    g.stop_all();
}

/// Review 14, U6: the last active's node takes a new epoch, but its gateway cannot activate
/// with it (its disk is full: the epoch file cannot be written). Nothing was sent with that
/// epoch, so once the disk has room its gateway, still last active with the old one, is ready
/// and takes the group back by itself; on the code before, nobody was ever ready again
/// without `understudy activate`. The other node, judged against the newer epoch, stays a
/// standby (the watcher sees one active at a time).
#[test]
fn the_last_active_whose_gateway_could_not_activate_takes_the_group_back_once_its_disk_has_room() {
    let dir = tempfile::tempdir().expect("tmp");
    let fs = match testbed::Tmpfs::mount(&dir.path().join("store-a"), "32m") {
        Ok(fs) => fs,
        Err(why) => {
            return skip::skip(
                "the_last_active_whose_gateway_could_not_activate_takes_the_group_back_once_its_disk_has_room",
                &why,
            )
        }
    };
    let (Pair { _sim, ports, .. }, mut g) = sync_pair(dir.path());
    let watcher = g.watch();
    start_active_then_standby(&mut g, ports[0]);
    testbed::fix::group::last_active_fails_to_activate_then_has_room(&mut g, &fs)
        .unwrap_or_else(|e| panic!("{e:#}"));
    watcher.finish();
    g.stop_all();
}

/// Review 16, W7.1: as above, but a's agent is restarted after its gateway failed to activate
/// once, and the disk freed while it was down: the restarted agent knows its run of epochs only
/// from the epoch file, and still finds the epoch it was last active with its own (the file's
/// other slot). It takes the group back by itself.
#[test]
fn the_last_active_restarted_after_one_failed_activation_takes_the_group_back() {
    restarted_after_failing_to_activate(
        "the_last_active_restarted_after_one_failed_activation_takes_the_group_back",
        1,
    );
}

/// Review 16, W7.1, the other side: after two failed activations the epoch file's two slots
/// show only a's failed epochs, so the restarted agent cannot tell that the one before them was
/// its own. Neither node is ready (the safe side: one of them may lack what an unknown holder
/// sent) until an operator's `understudy activate`, after which b is a's standby again.
#[test]
fn the_last_active_restarted_after_two_failed_activations_waits_for_an_operator() {
    restarted_after_failing_to_activate(
        "the_last_active_restarted_after_two_failed_activations_waits_for_an_operator",
        2,
    );
}

fn restarted_after_failing_to_activate(name: &str, failures: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let fs = match testbed::Tmpfs::mount(&dir.path().join("store-a"), "32m") {
        Ok(fs) => fs,
        Err(why) => return skip::skip(name, &why),
    };
    // A failed service's agent waits 5 s before it rejoins: the test alone decides when a stops.
    let (Pair { _sim, ports, .. }, mut g) = sync_pair_with(dir.path(), |g| {
        g.config.service.restart_backoff = Some(Duration::from_secs(5));
        g.config.service.restart_backoff_max = Some(Duration::from_secs(5));
    });
    let watcher = g.watch();
    start_active_then_standby(&mut g, ports[0]);
    testbed::fix::group::restarted_after_failing_to_activate(&mut g, &fs, failures)
        .unwrap_or_else(|e| panic!("{e:#}"));
    watcher.finish();
    g.stop_all();
}

/// Review 13, T3 and T4, on the lock file: a sync pair stopped whole (standby first, so the
/// active may have gone on alone at the end) and started again, standby first. The standby's agent used
/// to take the free lock before its gateway's first health answer and go active without what
/// the other sent alone; now it waits for that answer, which says no active streamed to it. The
/// last active's gateway (its store active with the epoch its node took last, the lock file's
/// newest) holds everything it sent: ready on that alone, it starts the group again.
#[test]
fn a_sync_pair_stopped_whole_starts_again_from_its_last_active_not_from_the_first_agent_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let (Pair { _sim, ports, .. }, mut g) = sync_pair(dir.path());
    let watcher = g.watch();
    start_active_then_standby(&mut g, ports[0]);
    let a_epoch = g.epoch("a");
    g.sigterm("b", Duration::from_secs(10));
    g.sigterm("a", Duration::from_secs(10));

    g.spawn("b").expect("restart b");
    // Not Hot: it went active alone, at once, on the code before.
    g.wait_mode("b", "Warm", Duration::from_secs(5));
    g.stays("b", "Warm", Duration::from_secs(3));
    assert!(
        g.waiting("b").contains("no active has streamed"),
        "b waits for {}",
        g.waiting("b")
    );
    g.spawn("a").expect("restart a");
    g.wait_hot("a").unwrap_or_else(|e| {
        panic!(
            "a, the last active, did not start again: {e:#}\nstatus {}\nevents {}",
            g.st("a"),
            g.events("a")
        )
    });
    assert!(g.epoch("a") > a_epoch);
    g.wait_ready_standby("b").expect("b in sync with a again");
    watcher.finish();
    g.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_disk_delays_orders_loses_none_and_the_gateway_reports_how_long_it_held_them() {
    const TEST: &str =
        "a_stalling_disk_delays_orders_loses_none_and_the_gateway_reports_how_long_it_held_them";
    let (dir, throttle) = match testbed::IoThrottle::on_temp_disk("understudy-stall") {
        Ok(d) => d,
        Err(why) => return skip::skip(TEST, &why),
    };
    let (_sim, sim) = start_sim(dir.path());
    let store = dir.path().join("store");
    let gw = addr(free_port().expect("port"));
    let admin = addr(free_port().expect("port"));
    let cfg = gateway_config(
        dir.path(),
        "gw",
        gw,
        &store,
        sim,
        &format!("[admin]\nhttp = \"{admin}\"\n"),
    );
    let log = dir.path().join("gw.log");
    let gateway = Proc(start_gateway(&cfg, 1, &log));
    assert!(wait_port(gw, ANSWER), "gateway did not listen");
    let t = Duration::from_secs(30);
    let (mut c, mut seen, _) = logged_on_client(vec![gw], t).await;
    c.handle.send(0, b"D", order("before", "ABC", 1, true));
    assert!(next_where(&mut c, &mut seen, t, |e| filled(e, "before"))
        .await
        .is_some());
    let calm = health_of(admin)["store_sync"].clone();
    assert!(calm["passes"].as_u64() >= Some(2), "{calm}");
    assert_eq!(calm["slow_pass_ms"], 20, "{calm}");

    // Every fdatasync of the gateway now waits for the throttled device (about 620 ms here
    // at 5 writes a second); its writes still land in the page cache at once.
    throttle.add(gateway.0.id()).expect("into the cgroup");
    throttle.set_write_iops(Some(5)).expect("throttle");
    let stalled = ["s1", "s2"];
    for id in stalled {
        c.handle.send(0, b"D", order(id, "ABC", 1, true));
        assert!(
            next_where(&mut c, &mut seen, t, |e| filled(e, id))
                .await
                .is_some(),
            "{id} not filled on a slow disk: {seen:?}"
        );
    }
    let s = health_of(admin)["store_sync"].clone();
    let us = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k}: {s}"));
    assert!(us("slow_passes") >= 2, "{s}");
    assert!(
        us("slowest_fdatasync_us") >= 100_000,
        "the disk's stall not seen: {s}"
    );
    assert!(us("slowest_pass_us") >= us("slowest_fdatasync_us"), "{s}");
    let text = std::fs::read_to_string(&log).expect("gateway log");
    assert!(
        text.contains("a group-commit pass took over 20 ms"),
        "no warning about the slow disk in its log:\n{text}"
    );

    // The disk recovers: orders flow on, and nothing was lost or sent twice on the way.
    throttle.set_write_iops(None).expect("lift");
    c.handle.send(0, b"D", order("after", "ABC", 1, true));
    assert!(next_where(&mut c, &mut seen, t, |e| filled(e, "after"))
        .await
        .is_some());
    for id in ["before", "s1", "s2", "after"] {
        let acks = seen.iter().filter(|e| exec(e, id, "0")).count();
        let fills = seen.iter().filter(|e| filled(e, id)).count();
        assert_eq!((acks, fills), (1, 1), "{id}: {seen:?}");
    }
    use understudy_fix::session::SessionEvent;
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ClientEvent::Message { poss_dup: true, .. }
                | ClientEvent::Message {
                    poss_resend: true,
                    ..
                }
                | ClientEvent::Session(SessionEvent::GapDetected { .. })
        )),
        "a gap or a message sent again: {seen:?}"
    );
    c.task.abort();
    drop(gateway);
    drop(throttle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_logon_for_a_logged_on_session_is_closed_unanswered_and_the_first_carries_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let Single {
        _sim,
        gateway: _gateway,
        addr: gw,
        ..
    } = start_single(dir.path(), 1);
    let log = dir.path().join("gw1.log");
    tokio::task::spawn_blocking(move || {
        let mut first = Raw::connect(gw, "CLIENT1");
        first.logon();
        // A second owner of CLIENT1 (its former active after a failover on the client's side,
        // not gone yet): closed with nothing sent, since a Logout would count as a message
        // received for some engines (QuickFIX) and break the session's numbers later.
        let mut second = Raw::connect(gw, "CLIENT1");
        let logon = second.build("A", "98=0|108=30|");
        second.send(&logon);
        let deadline = Instant::now() + ANSWER;
        let mut buf = [0u8; 1024];
        loop {
            match second.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => panic!(
                    "an answer to the second Logon: {}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "the second connection not closed"
                ),
            }
        }
        // Our side says why, for our operator.
        let text = std::fs::read_to_string(&log).expect("gateway log");
        assert!(
            text.contains("second connection for a connected session refused"),
            "{text}"
        );
        first.order_filled("still-here");
    })
    .await
    .expect("test");
}
