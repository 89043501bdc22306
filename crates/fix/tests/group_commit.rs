//! Group commit against real files and a real engine over TCP: records are made durable in
//! batches, a lone record without waiting for company, the records of one event in one pass,
//! a received sequence number reaches the file only after what was forwarded before it is
//! durable, a gateway syncs per order only the files its sends depend on, nothing is sent
//! before the records written ahead of it are durable, and a session that ends while a pass
//! is held (a standby gone under `replication.mode = "sync"`) stops no other.
//!
//! The syncer is one per process and one case pauses it, so the cases run in order inside
//! one test.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use understudy_fix::client::{self, ClientConfig, ClientEvent};
use understudy_fix::engine::{Engine, SessionSlot};
use understudy_fix::exchange_sim::ExchangeSim;
use understudy_fix::orders::{put_str, tag};
use understudy_fix::session::{Role, Session, SessionConfig};
use understudy_fix::store::{
    Deferred, FileStore, GroupCommit, SessionId, SessionStore, SyncPolicy,
};
use understudy_fix::tags::BeginString;

fn sid(target: &str) -> SessionId {
    SessionId::new(BeginString::Fix44, "EXCH", target)
}

fn open(dir: &Path, target: &str, epoch: u64) -> FileStore {
    FileStore::open(dir, &sid(target), epoch, SyncPolicy::Group).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit() {
    many_records_few_passes();
    a_lone_record_is_synced_at_once();
    received_number_waits_for_the_forward();
    one_pass_per_lone_order().await;
    gateway_order_costs_one_sync_per_file_it_depends_on().await;
    nothing_leaves_before_it_is_durable().await;
    a_session_ending_while_a_pass_is_held_stops_nothing_else().await;
    a_new_generation_waits_for_no_pass();
}

/// Records of three stores written back to back become durable in far fewer passes than
/// records, and every one is there after a reopen by a new epoch.
fn many_records_few_passes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut stores: Vec<FileStore> = ["A", "B", "C"]
        .iter()
        .map(|t| open(tmp.path(), t, 1))
        .collect();
    let g = GroupCommit::shared().expect("syncer");
    let passes = g.passes();
    for seq in 1..=300u64 {
        for s in &mut stores {
            s.save_sent(seq, format!("msg {seq}").as_bytes())
                .expect("save");
        }
    }
    let last = g.written();
    g.wait_durable(last).expect("durable");
    assert!(g.durable() >= last);
    let used = g.passes() - passes;
    assert!(used < 300, "900 records took {used} passes: not batched");
    drop(stores);
    for t in ["A", "B", "C"] {
        let s = open(tmp.path(), t, 2);
        assert_eq!(s.next_sender_seq(), 301);
        assert_eq!(
            s.sent_range(300, 300).expect("range"),
            vec![(300, b"msg 300".to_vec())]
        );
    }
    println!("900 records in 3 files made durable in {used} passes");
}

/// A record written alone starts no pass by itself, and a pass asked for on the writer's
/// thread makes it durable there and then: no other record, timer or syncer thread involved.
fn a_lone_record_is_synced_at_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut s = open(tmp.path(), "L", 1);
    let g = GroupCommit::shared().expect("syncer");
    // Nothing owed: the syncer is idle and stays so until asked.
    g.wait_durable(g.written()).expect("durable");
    let passes = g.passes();
    s.save_sent(1, b"alone").expect("save");
    let pos = s.unsynced_position().expect("group store");
    assert!(g.durable() < pos, "written, not yet durable");
    assert_eq!(g.sync_now(), Some(Ok(pos)), "synced on this thread");
    assert!(g.durable() >= pos);
    assert_eq!(g.passes(), passes + 1);
}

/// Under group commit a [`Deferred`] store writes the received number only once the
/// position it was committed at is durable.
fn received_number_waits_for_the_forward() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut d = Deferred::new(open(tmp.path(), "D", 1));
    d.set_next_target_seq(5).expect("target");
    d.commit().expect("commit");
    assert_eq!(
        d.next_target_seq(),
        5,
        "the session sees its number at once"
    );
    assert_eq!(
        d.inner().next_target_seq(),
        1,
        "not written before it is durable"
    );
    let pos = d.unsynced_position().expect("group store");
    d.on_durable(pos - 1).expect("earlier position");
    assert_eq!(d.inner().next_target_seq(), 1);
    d.on_durable(pos).expect("position reached");
    assert_eq!(d.inner().next_target_seq(), 5);
    drop(d);
    let mut s = Deferred::new(open(tmp.path(), "D", 1));
    s.check_fence().expect("fence");
    assert_eq!(s.next_target_seq(), 5, "written to the file");
}

/// The client's next event within `within`.
async fn next(c: &mut client::Client, within: Duration) -> Option<ClientEvent> {
    tokio::time::timeout(within, c.events.recv())
        .await
        .ok()
        .flatten()
}

fn order(id: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, tag::CL_ORD_ID, id);
    put_str(&mut b, tag::SYMBOL, "X");
    put_str(&mut b, tag::SIDE, "1");
    put_str(&mut b, tag::ORDER_QTY, "100");
    put_str(&mut b, tag::ORD_TYPE, "1");
    b
}

/// A client `CLIENT` logged on to `target` at `addr`.
async fn logged_on(addr: SocketAddr, target: &str) -> client::Client {
    let mut c = client::start(ClientConfig {
        connect: vec![addr],
        sender_comp_id: "CLIENT".into(),
        target_comp_id: target.into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(30),
        reconnect_interval: Duration::from_millis(10),
        ..Default::default()
    })
    .expect("client");
    loop {
        match next(&mut c, Duration::from_secs(10)).await {
            Some(ClientEvent::LoggedOn(_)) => break,
            Some(_) => {}
            None => panic!("no logon"),
        }
    }
    c
}

/// An exchange simulator on a group-commit store and a client logged on to it.
async fn sim_and_client(dir: &Path) -> (tokio::task::JoinHandle<()>, client::Client) {
    let store = open(dir, "CLIENT", 1);
    let mut cfg = SessionConfig::new(BeginString::Fix44, "EXCH", "CLIENT", Role::Acceptor);
    cfg.logon_timeout = Duration::from_secs(5);
    let session = Session::new(cfg, store).expect("session");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let engine = Engine::new(vec![SessionSlot::new("CLIENT", session)], Some(listener));
    let sim = tokio::spawn(async move {
        let mut app = ExchangeSim::new();
        let _ = engine.run(&mut app, std::future::pending()).await;
    });
    let c = logged_on(addr, "EXCH").await;
    (sim, c)
}

/// Waits for the three reports of one order (New, partial fill, fill).
async fn reports(c: &mut client::Client) {
    let mut n = 0;
    while n < 3 {
        match next(c, Duration::from_secs(10)).await {
            Some(ClientEvent::Message { msg_type, .. }) if msg_type == "8" => n += 1,
            Some(_) => {}
            None => panic!("only {n} reports"),
        }
    }
}

/// One order is one event for the simulator: the order's sequence number and its three
/// reports are all written before a pass is asked for, so one pass makes them durable. (A
/// pass started by the first record would leave the others, and the reports waiting on
/// them, to a second.)
async fn one_pass_per_lone_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (sim, mut c) = sim_and_client(tmp.path()).await;
    let g = GroupCommit::started().expect("syncer running");
    for i in 0..5 {
        // Nothing owed before the order, so every pass counted is the order's.
        g.wait_durable(g.written()).expect("durable");
        let passes = g.passes();
        c.handle.send(0, b"D", order(&format!("lone{i}")));
        reports(&mut c).await;
        assert_eq!(g.passes() - passes, 1, "order {i}: passes for one order");
    }
    c.task.abort();
    sim.abort();
}

/// A gateway (client session, upstream session and order map, each a file of its own) between
/// a client and an in-memory simulator: per lone order, one pass on the way in (the forwarded
/// order: the upstream's file only) and one on the way back (the reports: the client's file
/// only). The order map's owner and done records wait for the tick (nothing sent depends on
/// them: a successor rebuilds them from the session stores). Every done mark is in the order
/// map once the gateway stops.
async fn gateway_order_costs_one_sync_per_file_it_depends_on() {
    use understudy_fix::gateway::{Gateway, GatewayConfig};
    use understudy_fix::order_map::OrderMap;

    let tmp = tempfile::tempdir().expect("tmp");
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sim_addr = sim_listener.local_addr().expect("addr");
    let sim_engine =
        Engine::<understudy_fix::store::MemoryStore>::new(Vec::new(), Some(sim_listener))
            .with_factory(Box::new(ExchangeSim::factory("EXCH".into())));
    let sim = tokio::spawn(async move {
        let mut app = ExchangeSim::new();
        let _ = sim_engine.run(&mut app, std::future::pending()).await;
    });
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gw_addr = gw_listener.local_addr().expect("addr");
    let text = format!(
        "[gateway]\nlisten = \"{gw_addr}\"\ncomp_id = \"GW\"\nstore_dir = \"{}\"\ndefault_route = \"EXCH\"\n\
         [[client]]\ncomp_id = \"CLIENT\"\n\
         [[upstream]]\nname = \"EXCH\"\nconnect = [\"{sim_addr}\"]\ntarget_comp_id = \"EXCH\"\n",
        tmp.path().display()
    );
    let cfg = GatewayConfig::parse(Path::new("gw.toml"), &text).expect("config");
    let activated = Gateway::open(cfg, 1).expect("open");
    let (probe_tx, probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let gw_engine = Engine::new(activated.slots, Some(gw_listener)).with_health_probes(probe_rx, 1);
    let gw = tokio::spawn(async move {
        let mut app = activated.gateway;
        let _ = gw_engine.run(&mut app, std::future::pending()).await;
    });
    let mut c = logged_on(gw_addr, "GW").await;
    // An order sent before the upstream session is logged on would reach the simulator as
    // a resend, which it does not fill.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        probe_tx.send(tx).expect("gateway running");
        let health = rx.await.expect("health");
        if health.sessions_logged_on == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never logged on upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first order also warms the path (page cache, allocations).
    c.handle.send(0, b"D", order("warm"));
    reports(&mut c).await;
    let g = GroupCommit::started().expect("syncer running");
    let (mut passes, mut syncs) = (Vec::new(), Vec::new());
    for i in 0..10 {
        g.wait_durable(g.written()).expect("durable");
        let (p, s) = (g.passes(), g.syncs());
        c.handle.send(0, b"D", order(&format!("gw{i}")));
        reports(&mut c).await;
        passes.push(g.passes() - p);
        syncs.push(g.syncs() - s);
    }
    // A tick may add a pass of its own (records nobody waits on) to an order's count, so
    // the fewest over the orders is the order's own cost.
    let min = |v: &[u64]| v.iter().copied().min().unwrap_or(0);
    println!("per gateway order: passes {passes:?}, fdatasyncs {syncs:?}");
    assert_eq!(
        min(&passes),
        2,
        "passes per order (one each way): {passes:?}"
    );
    assert_eq!(
        min(&syncs),
        2,
        "fdatasyncs per order (upstream in, client out): {syncs:?}"
    );
    c.task.abort();
    gw.abort();
    // The gateway is dropped with the aborted task: its done marks are written then.
    let _ = gw.await;
    sim.abort();
    let store = FileStore::open(
        tmp.path(),
        &SessionId::new(BeginString::Fix44, "ORDERS", "GW"),
        2,
        SyncPolicy::Group,
    )
    .expect("order map store");
    let mut map = OrderMap::open(store, Duration::ZERO).expect("order map");
    assert_eq!(map.len(), 11, "every order is in the map");
    assert_eq!(
        map.prune(i64::MAX).expect("prune"),
        11,
        "every filled order is marked done"
    );
}

/// An exchange simulator on a group-commit store answers an order only once the syncer has
/// made its records durable: with the syncer paused the reports are written (the segment
/// grows) but none reaches the client; resumed, they all arrive.
async fn nothing_leaves_before_it_is_durable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (sim, mut c) = sim_and_client(tmp.path()).await;
    let segment = tmp
        .path()
        .join(sid("CLIENT").dir_name())
        .join(format!("{:020}.log", 1));
    let g = GroupCommit::started().expect("syncer running");
    // The records' length, not the file's: a writer keeps zeros written ahead of them.
    let records = |p: &std::path::Path| understudy_fix::store::records_len(p).expect("segment");
    let before = records(&segment);
    g.pause(true);
    c.handle.send(0, b"D", order("o1"));
    // The simulator stores its three reports (New, partial and full fill); none may reach
    // the client yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&segment) <= before {
        assert!(Instant::now() < deadline, "the reports were never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        let early = next(&mut c, left).await;
        assert!(
            !matches!(early, Some(ClientEvent::Message { .. })),
            "a message arrived before its record was durable: {early:?}"
        );
    }
    assert!(g.durable() < g.written(), "records written but not durable");
    g.pause(false);
    reports(&mut c).await;
    c.task.abort();
    sim.abort();
}

/// A session that ends while a pass cannot finish (the syncer paused, as a pass waiting for a
/// standby that is gone): its Logout answer waits for the pass like every send, and the loop
/// goes on with the other sessions meanwhile. It used to wait for the pass on the spot,
/// freezing every session (and the health answers) until the pass ended.
async fn a_session_ending_while_a_pass_is_held_stops_nothing_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut slots = Vec::new();
    for target in ["CLIENT", "CLIENT2"] {
        let mut cfg = SessionConfig::new(BeginString::Fix44, "EXCH", target, Role::Acceptor);
        cfg.logon_timeout = Duration::from_secs(5);
        let session = Session::new(cfg, open(tmp.path(), target, 1)).expect("session");
        slots.push(SessionSlot::new(target, session));
    }
    // The simulator on a thread and runtime of its own, as the gateway's loop is: a loop
    // that blocks its thread then fails this test instead of stalling the test's runtime.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let engine = Engine::new(slots, Some(listener));
            let mut app = ExchangeSim::new();
            let _ = engine
                .run(&mut app, async {
                    let _ = stopped.await;
                })
                .await;
        });
    });
    let mut a = logged_on(addr, "EXCH").await;
    let mut b = client::start(ClientConfig {
        connect: vec![addr],
        sender_comp_id: "CLIENT2".into(),
        target_comp_id: "EXCH".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(30),
        reconnect_interval: Duration::from_millis(10),
        ..Default::default()
    })
    .expect("client 2");
    while !matches!(
        next(&mut b, Duration::from_secs(10)).await,
        Some(ClientEvent::LoggedOn(_))
    ) {}
    let b_segment = tmp
        .path()
        .join(sid("CLIENT2").dir_name())
        .join(format!("{:020}.log", 1));
    let records = |p: &std::path::Path| understudy_fix::store::records_len(p).expect("segment");
    let g = GroupCommit::started().expect("syncer running");
    g.pause(true);
    // A logs out: the simulator's answer is written, held, and A's session ends.
    assert!(a.handle.logout(0), "logout queued");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B's order is still handled: its reports are written (and held too).
    let before = records(&b_segment);
    b.handle.send(0, b"D", order("b1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while records(&b_segment) <= before {
        assert!(
            Instant::now() < deadline,
            "the loop handled nothing after a session ended while a pass was held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing of either left before it was durable.
    let quiet_until = Instant::now() + Duration::from_millis(300);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        let early = next(&mut b, left).await;
        assert!(
            !matches!(early, Some(ClientEvent::Message { .. })),
            "a report arrived before its record was durable: {early:?}"
        );
    }
    g.pause(false);
    // Resumed: B gets its reports, A its Logout answer and the end of its connection.
    reports(&mut b).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match next(&mut a, deadline.saturating_duration_since(Instant::now())).await {
            Some(ClientEvent::LoggedOut(_)) => break,
            Some(_) => {}
            None => panic!("A's session never ended"),
        }
    }
    a.task.abort();
    b.task.abort();
    let _ = stop.send(());
    sim.join().expect("the simulator's thread");
}

/// A reset past the rotation size starts a new generation, which makes the old one durable
/// with an `fdatasync` of its own: it runs on the event loop, so it must not wait for a
/// pass that may be waiting for a standby that is gone (here: the syncer paused).
fn a_new_generation_waits_for_no_pass() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut st = open(tmp.path(), "ROTATE", 1);
    st.set_rotate_after(4096);
    for i in 1..=40 {
        st.save_sent(i, &[b'x'; 200]).expect("save");
    }
    let g = GroupCommit::started().expect("syncer running");
    g.pause(true);
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = tmp.path().to_path_buf();
    std::thread::spawn(move || {
        let r = st.reset().map(|()| st.segment());
        let _ = tx.send(r);
    });
    let segment = rx.recv_timeout(Duration::from_secs(3));
    g.pause(false);
    let segment = segment
        .expect("the reset waited for the paused syncer")
        .expect("reset");
    assert_eq!(segment.generation, 1, "no new generation: {segment:?}");
    let reopened =
        FileStore::open(&dir, &sid("ROTATE"), 2, SyncPolicy::EveryWrite).expect("reopen");
    assert_eq!(
        reopened.next_sender_seq(),
        1,
        "the reset is not what a successor reads"
    );
}
