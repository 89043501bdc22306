//! The FIX gateway as real processes: `understudy fix-exchange-sim` upstream, `understudy
//! fix-gateway` (alone, or as the warm-standby service of two agents), and a FIX client
//! initiator configured with both gateway addresses.
#![allow(clippy::disallowed_methods)] // test drivers may block

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use understudy_control::local::{free_port, LocalGroup};
use understudy_fix::client::{self, Client, ClientConfig, ClientEvent};
use understudy_fix::codec::{Deframer, MessageBuilder};
use understudy_fix::exchange_sim::{put_str, tag};
use understudy_fix::store::{FileStore, SessionId, SessionStore, SyncPolicy};
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

/// A gateway config for clients CLIENT1 and CLIENT2 and one upstream.
fn gateway_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
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

[[client]]
comp_id = "CLIENT2"

[[upstream]]
name = "EXCH"
connect = ["{sim}"]
target_comp_id = "EXCH"
heartbeat_interval = "5s"
reconnect_interval = "20ms"

[[route]]
upstream = "EXCH"
symbol_prefix = "Z"
"#,
            store.display()
        ),
    )
    .expect("write config");
    p
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

fn client_cfg(comp: &str, addrs: Vec<SocketAddr>) -> ClientConfig {
    ClientConfig {
        connect: addrs,
        sender_comp_id: comp.into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(10),
    }
}

fn order(id: &str, symbol: &str, qty: u32, market: bool) -> Vec<u8> {
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

/// Waits for the next event that `want` accepts, keeping the others in `seen`.
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

fn exec(e: &ClientEvent, cl: &str, exec_type: &str) -> bool {
    matches!(e, ClientEvent::Message { msg_type, .. } if msg_type == "8")
        && e.field(tag::CL_ORD_ID) == Some(cl)
        && e.field(tag::EXEC_TYPE) == Some(exec_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_acknowledged_filled_cancelled_and_replaced_through_the_gateway() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_sim, sim) = start_sim(dir.path());
    let gw = addr(free_port().expect("port"));
    let cfg = gateway_config(dir.path(), "gw", gw, &dir.path().join("store"), sim);
    let _g = Proc(start_gateway(&cfg, 1, &dir.path().join("gw.log")));
    assert!(
        wait_port(gw, Duration::from_secs(10)),
        "gateway did not listen"
    );

    let mut c = client::start(client_cfg("CLIENT1", vec![gw])).expect("client");
    let mut seen = Vec::new();
    let t = Duration::from_secs(10);
    assert!(
        next_where(&mut c, &mut seen, t, is_logon).await.is_some(),
        "no logon"
    );

    c.handle.send(0, b"D", order("m1", "ABC", 100, true));
    assert!(
        next_where(&mut c, &mut seen, t, |e| exec(e, "m1", "F")
            && e.field(tag::ORD_STATUS) == Some("2"))
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
    let mut f = Vec::new();
    put_str(&mut f, tag::ORIG_CL_ORD_ID, "l2");
    put_str(&mut f, tag::CL_ORD_ID, "l3");
    put_str(&mut f, tag::SYMBOL, "ZED");
    put_str(&mut f, tag::SIDE, "1");
    f.extend_from_slice(b"60=20240102-03:04:05.000\x01");
    c.handle.send(0, b"F", f);
    assert!(
        next_where(&mut c, &mut seen, t, |e| exec(e, "l3", "4"))
            .await
            .is_some(),
        "cancelled"
    );
    // Cancelling again is refused with an OrderCancelReject.
    let mut again = Vec::new();
    put_str(&mut again, tag::ORIG_CL_ORD_ID, "l3");
    put_str(&mut again, tag::CL_ORD_ID, "l4");
    put_str(&mut again, tag::SYMBOL, "ZED");
    put_str(&mut again, tag::SIDE, "1");
    c.handle.send(0, b"F", again);
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

/// Opens a raw connection and logs on as CLIENT1 with MsgSeqNum `seq`.
struct Raw {
    s: TcpStream,
    d: Deframer,
    seq: u64,
}

impl Raw {
    fn connect(a: SocketAddr) -> Raw {
        let s = TcpStream::connect(a).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Raw {
            s,
            d: Deframer::default(),
            seq: 1,
        }
    }

    fn build(&mut self, mt: &str, body: &str) -> Vec<u8> {
        let mut b = MessageBuilder::new(BeginString::Fix44, mt.as_bytes());
        b.push_str(49, "CLIENT1")
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

    /// Frames received within `wait`, as `|`-delimited text.
    fn recv(&mut self, wait: Duration) -> Vec<String> {
        let t = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while t.elapsed() < wait {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.d.push(&buf[..n]),
                Err(_) => {}
            }
            while let Ok(Some(f)) = self.d.next_frame() {
                out.push(String::from_utf8_lossy(f).replace('\x01', "|"));
            }
        }
        out
    }
}

fn field(msg: &str, t: u32) -> Option<&str> {
    let p = format!("|{t}=");
    let i = msg.find(&p)? + p.len();
    msg[i..].split('|').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_the_answer_the_spec_requires_and_never_a_crash() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_sim, sim) = start_sim(dir.path());
    let gw = addr(free_port().expect("port"));
    let cfg = gateway_config(dir.path(), "gw", gw, &dir.path().join("store"), sim);
    let mut g = Proc(start_gateway(&cfg, 1, &dir.path().join("gw.log")));
    assert!(wait_port(gw, Duration::from_secs(10)));
    tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(gw);
        let logon = r.build("A", "98=0|108=30|");
        r.send(&logon);
        let got = r.recv(Duration::from_millis(500));
        assert!(
            got.iter().any(|m| field(m, 35) == Some("A")),
            "logon answer: {got:?}"
        );

        // Bad checksum: garbled, ignored without a Reject and without using up MsgSeqNum 2.
        let mut bad = r.build("1", "112=T1|");
        let n = bad.len();
        bad[n - 2] = if bad[n - 2] == b'0' { b'1' } else { b'0' };
        r.send(&bad);
        // Bad body length and plain garbage: ignored too.
        r.send(b"8=FIX.4.4\x019=5\x0135=0\x0149=CLIENT1\x0156=GW\x0134=2\x0110=000\x01");
        r.send(b"\x00\xffgarbage bytes that are not FIX at all\x01\x01");
        assert!(
            r.recv(Duration::from_millis(300)).is_empty(),
            "garbled input answered"
        );
        // MsgSeqNum 2 is still expected: a TestRequest with it is answered.
        r.seq = 2;
        let tr = r.build("1", "112=T2|");
        r.send(&tr);
        let got = r.recv(Duration::from_millis(500));
        assert!(
            got.iter()
                .any(|m| field(m, 35) == Some("0") && field(m, 112) == Some("T2")),
            "heartbeat for T2: {got:?}"
        );
        // A NewOrderSingle without Symbol: session Reject, reason 1, RefTagID 55.
        let d = r.build("D", "11=x1|54=1|38=5|40=1|60=20240102-03:04:05|");
        r.send(&d);
        let got = r.recv(Duration::from_millis(500));
        let rej = got
            .iter()
            .find(|m| field(m, 35) == Some("3"))
            .expect("reject");
        assert_eq!(field(rej, 373), Some("1"), "{rej}");
        assert_eq!(field(rej, 371), Some("55"), "{rej}");
        assert_eq!(field(rej, 45), Some("3"), "{rej}");
        // An unsupported application message: BusinessMessageReject.
        let x = r.build("AE", "571=1|");
        r.send(&x);
        let got = r.recv(Duration::from_millis(500));
        assert!(got.iter().any(|m| field(m, 35) == Some("j")), "{got:?}");
        // MsgSeqNum too low without PossDupFlag: Logout, then disconnect.
        r.seq = 2;
        let low = r.build("0", "");
        r.send(&low);
        let got = r.recv(Duration::from_millis(500));
        assert!(
            got.iter().any(|m| field(m, 35) == Some("5")),
            "logout: {got:?}"
        );
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
    let (_sim, sim) = start_sim(dir.path());
    let store = dir.path().join("store");
    let gw = addr(free_port().expect("port"));
    let cfg = gateway_config(dir.path(), "gw", gw, &store, sim);
    // The current active, epoch 5.
    let mut g5 = Proc(start_gateway(&cfg, 5, &dir.path().join("gw5.log")));
    assert!(wait_port(gw, Duration::from_secs(10)));
    let mut c = client::start(client_cfg("CLIENT1", vec![gw])).expect("client");
    let mut seen = Vec::new();
    let t = Duration::from_secs(10);
    assert!(next_where(&mut c, &mut seen, t, is_logon).await.is_some());
    c.handle.send(0, b"D", order("s1", "ABC", 2, true));
    assert!(next_where(&mut c, &mut seen, t, |e| exec(e, "s1", "F")
        && e.field(tag::ORD_STATUS) == Some("2"))
    .await
    .is_some());

    // A former active with epoch 3 starts: refused before it writes or listens.
    // What a stale writer could touch: a segment of its own epoch, or any fence.
    let snapshot = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = walk(p)
            .into_iter()
            .filter(|f| {
                f.file_name().is_some_and(|n| {
                    n == "fence" || n.to_string_lossy().starts_with("00000000000000000003")
                })
            })
            .map(|f| {
                let bytes = std::fs::read(&f).unwrap_or_default();
                (f, bytes)
            })
            .collect();
        v.sort();
        v
    };
    let stale_port = addr(free_port().expect("port"));
    let stale_cfg = gateway_config(dir.path(), "stale", stale_port, &store, sim);
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
    // The client saw the connection drop and no further message.
    let more = next_where(&mut c, &mut seen, Duration::from_millis(500), |e| {
        matches!(e, ClientEvent::Message { .. })
    })
    .await;
    assert!(more.is_none(), "message after fencing: {more:?}");
    c.task.abort();
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

/// Exactly-once check: every ExecID at most once without PossDupFlag or PossResend (the
/// copies a client must check), and every order's
/// expected reports present.
fn reports_by_order(seen: &[ClientEvent]) -> HashMap<String, Vec<String>> {
    let mut by_exec: HashMap<String, (String, String, bool)> = HashMap::new();
    let mut dup_without_flag = Vec::new();
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
            let cl = e.field(tag::CL_ORD_ID).unwrap_or_default().to_owned();
            let et = e.field(tag::EXEC_TYPE).unwrap_or_default().to_owned();
            if by_exec.contains_key(&id) && !poss_dup && !poss_resend {
                dup_without_flag.push(id.clone());
            }
            by_exec.entry(id).or_insert((cl, et, *poss_dup));
        }
    }
    assert!(
        dup_without_flag.is_empty(),
        "duplicate reports without PossDupFlag: {dup_without_flag:?}"
    );
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (cl, et, _) in by_exec.into_values() {
        out.entry(cl).or_default().push(et);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_agent_the_client_carries_on_with_the_standby() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_sim, sim) = start_sim(dir.path());
    let store = dir.path().join("store");
    let ports = [
        addr(free_port().expect("port")),
        addr(free_port().expect("port")),
    ];
    let cfgs = [
        gateway_config(dir.path(), "gw-a", ports[0], &store, sim),
        gateway_config(dir.path(), "gw-b", ports[1], &store, sim),
    ];
    let cfgs2 = cfgs.clone();
    let mut g = LocalGroup::new(EXE.into(), &["a", "b"], "warm", move |n| {
        let cfg = if n == "a" { &cfgs2[0] } else { &cfgs2[1] };
        // The agent signals the first node's service the moment it is Hot, possibly before
        // the service has installed its handler; started with SIGUSR1 ignored, the gateway
        // survives that and finds the agent Hot by polling (see docs/fix-gateway.md).
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
    let mut g = tokio::task::spawn_blocking(move || {
        g.start(0).expect("start a");
        g.wait_hot(0).expect("a hot");
        g.start(1).expect("start b");
        g.wait_ready(1).expect("b ready");
        g
    })
    .await
    .expect("group start");
    assert!(
        wait_port(ports[0], Duration::from_secs(10)),
        "active gateway did not listen"
    );
    // The standby gateway is Warm: nothing listens on its address.
    assert!(TcpStream::connect_timeout(&ports[1], Duration::from_millis(200)).is_err());

    let mut c = client::start(client_cfg("CLIENT1", ports.to_vec())).expect("client");
    let mut seen = Vec::new();
    let t = Duration::from_secs(10);
    let first = next_where(&mut c, &mut seen, t, is_logon)
        .await
        .expect("logon");
    for i in 0..20 {
        c.handle
            .send(0, b"D", order(&format!("b{i}"), "ABC", 10, true));
    }
    for i in 0..20 {
        let cl = format!("b{i}");
        assert!(
            next_where(&mut c, &mut seen, t, |e| exec(e, &cl, "F")
                && e.field(tag::ORD_STATUS) == Some("2"))
            .await
            .is_some(),
            "{cl} filled"
        );
    }
    // Orders in flight at the kill, and a resting one to cancel afterwards.
    c.handle.send(0, b"D", order("r1", "ABC", 10, false));
    assert!(next_where(&mut c, &mut seen, t, |e| exec(e, "r1", "0"))
        .await
        .is_some());
    for i in 0..5 {
        c.handle
            .send(0, b"D", order(&format!("k{i}"), "ABC", 10, true));
    }
    let killed_at = Instant::now();
    let g = tokio::task::spawn_blocking(move || {
        g.kill9(0);
        g.wait_hot(1).expect("b hot");
        g
    })
    .await
    .expect("kill");
    let second = next_where(&mut c, &mut seen, t, is_logon)
        .await
        .expect("logon to the new active");
    println!(
        "kill -9 → client logged on to the new active: {:.1} ms",
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    let (ClientEvent::LoggedOn(a), ClientEvent::LoggedOn(b)) = (&first, &second) else {
        unreachable!()
    };
    assert!(!b.reset, "sequence numbers were reset");
    assert!(
        b.next_sender_seq > a.next_sender_seq && b.next_target_seq > a.next_target_seq,
        "{a:?} then {b:?}"
    );
    for i in 5..10 {
        c.handle
            .send(0, b"D", order(&format!("k{i}"), "ABC", 10, true));
    }
    let mut f = Vec::new();
    put_str(&mut f, tag::ORIG_CL_ORD_ID, "r1");
    put_str(&mut f, tag::CL_ORD_ID, "r2");
    put_str(&mut f, tag::SYMBOL, "ABC");
    put_str(&mut f, tag::SIDE, "1");
    c.handle.send(0, b"F", f);
    assert!(
        next_where(&mut c, &mut seen, t, |e| exec(e, "r2", "4"))
            .await
            .is_some(),
        "cancel after failover"
    );
    for i in 0..10 {
        let cl = format!("k{i}");
        if seen
            .iter()
            .any(|e| exec(e, &cl, "F") && e.field(tag::ORD_STATUS) == Some("2"))
        {
            continue;
        }
        assert!(
            next_where(&mut c, &mut seen, t, |e| exec(e, &cl, "F")
                && e.field(tag::ORD_STATUS) == Some("2"))
            .await
            .is_some(),
            "{cl} filled: {seen:#?}"
        );
    }
    // Let resends settle, then check every order got New, partial, full exactly once.
    let _ = next_where(&mut c, &mut seen, Duration::from_millis(300), |_| false).await;
    let reports = reports_by_order(&seen);
    for cl in (0..20)
        .map(|i| format!("b{i}"))
        .chain((0..10).map(|i| format!("k{i}")))
    {
        let mut got = reports.get(&cl).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, vec!["0", "F", "F"], "{cl}");
    }
    // A resend request is answered from the store the old active wrote.
    let gaps = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Session(understudy_fix::session::SessionEvent::GapDetected { .. })
            )
        })
        .count();
    println!("gaps detected by the client across the failover: {gaps}");
    c.task.abort();
    tokio::task::spawn_blocking(move || {
        let mut g = g;
        g.stop_all()
    })
    .await
    .expect("stop");
}
