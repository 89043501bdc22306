//! The gateway writes its order map once a tick; a successor completes it from the session
//! stores. Here the first gateway never ticks after its start (a one-hour tick) and is then
//! abandoned without running its destructor, as `kill -9` would leave it (the page cache
//! keeps what it wrote, its memory is gone): its order map file holds none of its orders.
//! The successor, opened with a newer epoch and routing rules that now send the resting
//! order's symbol elsewhere, still routes that order's cancel to the upstream that has it,
//! and knows which orders the first gateway saw finish.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use understudy_fix::client::{self, ClientConfig, ClientEvent};
use understudy_fix::engine::Engine;
use understudy_fix::exchange_sim::ExchangeSim;
use understudy_fix::gateway::{Gateway, GatewayConfig};
use understudy_fix::order_map::OrderMap;
use understudy_fix::orders::{put_str, tag};
use understudy_fix::store::{FileStore, MemoryStore, SessionId, SyncPolicy};
use understudy_fix::tags::BeginString;

async fn sim(comp_id: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let engine = Engine::<MemoryStore>::new(Vec::new(), Some(listener))
        .with_factory(Box::new(ExchangeSim::factory(comp_id.into())));
    let task = tokio::spawn(async move {
        let mut app = ExchangeSim::new();
        let _ = engine.run(&mut app, std::future::pending()).await;
    });
    (addr, task)
}

fn config(
    gw: SocketAddr,
    dir: &Path,
    a: SocketAddr,
    b: SocketAddr,
    sb_to_a: bool,
) -> GatewayConfig {
    let extra = if sb_to_a {
        "[[route]]\nupstream = \"A\"\nsymbol_prefix = \"SB\"\n"
    } else {
        ""
    };
    let text = format!(
        "[gateway]\nlisten = \"{gw}\"\ncomp_id = \"GW\"\nstore_dir = \"{}\"\ndefault_route = \"B\"\n\
         [[client]]\ncomp_id = \"CLIENT\"\n\
         [[upstream]]\nname = \"A\"\nconnect = [\"{a}\"]\ntarget_comp_id = \"EXA\"\n\
         [[upstream]]\nname = \"B\"\nconnect = [\"{b}\"]\ntarget_comp_id = \"EXB\"\n\
         [[route]]\nupstream = \"A\"\nsymbol_prefix = \"SA\"\n{extra}",
        dir.display()
    );
    GatewayConfig::parse(Path::new("gw.toml"), &text).expect("config")
}

/// A gateway opened with `epoch` and running with `tick`, logged on to both upstreams; the
/// task hands the application back when `stop` fires.
async fn gateway(
    cfg: GatewayConfig,
    epoch: u64,
    tick: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Gateway>,
    usize,
) {
    // The client retries this port while no gateway listens; a retry can connect to itself
    // (its ephemeral port chosen equal to this one) and hold the port until it gives up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind the gateway's port: {e}"),
        }
    };
    let activated = Gateway::open(cfg, epoch).expect("open");
    let orders = activated.gateway.orders();
    let (probe_tx, probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(activated.slots, Some(listener))
        .with_tick(tick)
        .with_health_probes(probe_rx, 1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut app = activated.gateway;
    let task = tokio::spawn(async move {
        let _ = engine
            .run(&mut app, async {
                let _ = stopped.await;
            })
            .await;
        app
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        probe_tx.send(tx).expect("gateway running");
        let health = rx.await.expect("health");
        let upstreams = health
            .sessions
            .iter()
            .filter(|s| s.logged_on && s.name != "CLIENT")
            .count();
        if upstreams == 2 {
            let map = health
                .order_map
                .expect("the gateway's health shows its order map");
            assert_eq!(map.orders, orders);
            assert!(map.checkpoints && map.last_error.is_none(), "{map:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never logged on upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stop, task, orders)
}

fn order(id: &str, symbol: &str, limit: bool) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, tag::CL_ORD_ID, id);
    put_str(&mut b, tag::SYMBOL, symbol);
    put_str(&mut b, tag::SIDE, "1");
    put_str(&mut b, tag::ORDER_QTY, "1");
    if limit {
        put_str(&mut b, tag::ORD_TYPE, "2");
        put_str(&mut b, tag::PRICE, "1");
    } else {
        put_str(&mut b, tag::ORD_TYPE, "1");
    }
    b
}

/// The next ExecutionReport or OrderCancelReject for `cl_ord_id`: (MsgType, OrdStatus).
async fn answer(c: &mut client::Client, cl_ord_id: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, c.events.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no answer for {cl_ord_id}"));
        if let ClientEvent::Message { msg_type, .. } = &ev {
            if (msg_type == "8" || msg_type == "9") && ev.field(tag::CL_ORD_ID) == Some(cl_ord_id) {
                let status = ev.field(tag::ORD_STATUS).unwrap_or_default().to_owned();
                return (msg_type.clone(), status);
            }
        }
    }
}

async fn logged_on(c: &mut client::Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.events.recv()).await {
            Ok(Some(ClientEvent::LoggedOn(_))) => return,
            Ok(Some(_)) => {}
            _ => panic!("the client never logged on"),
        }
    }
}

fn order_map(dir: &Path, epoch: u64) -> OrderMap {
    let store = FileStore::open(
        dir,
        &SessionId::new(BeginString::Fix44, "ORDERS", "GW"),
        epoch,
        SyncPolicy::EveryWrite,
    )
    .expect("order map store");
    OrderMap::open(store, Duration::ZERO).expect("order map")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_rebuilds_the_orders_the_map_never_wrote_and_routes_their_cancels() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, sim_a) = sim("EXA").await;
    let (b, sim_b) = sim("EXB").await;
    let gw: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };

    let (stop, task, _) = gateway(
        config(gw, tmp.path(), a, b, false),
        1,
        Duration::from_secs(3600),
    )
    .await;
    let mut c = client::start(ClientConfig {
        connect: vec![gw],
        sender_comp_id: "CLIENT".into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(30),
        reconnect_interval: Duration::from_millis(10),
        ..Default::default()
    })
    .expect("client");
    logged_on(&mut c).await;
    // o1 fills at A, o2 rests at B, o3 fills at B.
    c.handle.send(0, b"D", order("o1", "SA1", false));
    assert_eq!(answer(&mut c, "o1").await, ("8".into(), "0".into()));
    assert_eq!(answer(&mut c, "o1").await, ("8".into(), "2".into()));
    c.handle.send(0, b"D", order("o2", "SB1", true));
    assert_eq!(answer(&mut c, "o2").await, ("8".into(), "0".into()));
    c.handle.send(0, b"D", order("o3", "SB1", false));
    assert_eq!(answer(&mut c, "o3").await, ("8".into(), "0".into()));
    assert_eq!(answer(&mut c, "o3").await, ("8".into(), "2".into()));

    let _ = stop.send(());
    let first = task.await.expect("gateway task");
    // What kill -9 leaves: no destructor, so the changes held in memory are never written.
    std::mem::forget(first);
    let written = order_map(tmp.path(), 2);
    assert_eq!(
        written.len(),
        0,
        "the first gateway wrote no order (it never ticked), so the successor's map is all rebuilt"
    );
    drop(written);

    // The successor routes SB… to A now, but the map must send o2's cancel to B, which has it.
    let (stop, task, rebuilt) = gateway(
        config(gw, tmp.path(), a, b, true),
        3,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        rebuilt, 3,
        "every order the first gateway routed is in the map"
    );
    logged_on(&mut c).await;
    let mut cancel = Vec::new();
    put_str(&mut cancel, tag::CL_ORD_ID, "c1");
    put_str(&mut cancel, tag::ORIG_CL_ORD_ID, "o2");
    put_str(&mut cancel, tag::SYMBOL, "SB1");
    put_str(&mut cancel, tag::SIDE, "1");
    put_str(&mut cancel, tag::ORDER_QTY, "1");
    c.handle.send(0, b"F", cancel);
    assert_eq!(
        answer(&mut c, "c1").await,
        ("8".into(), "4".into()),
        "the cancel reached B, which cancelled o2 (at A it would have been rejected)"
    );
    let _ = stop.send(());
    drop(task.await.expect("gateway task"));
    c.task.abort();
    sim_a.abort();
    sim_b.abort();

    // Owners and done marks: o1 and o3 finished under the first gateway (rebuilt from the
    // client's store), o2 and c1 under the second.
    let mut map = order_map(tmp.path(), 4);
    assert_eq!(map.get("CLIENT~o1").map(|o| o.upstream.as_str()), Some("A"));
    assert_eq!(map.get("CLIENT~o2").map(|o| o.upstream.as_str()), Some("B"));
    assert_eq!(map.get("CLIENT~o3").map(|o| o.upstream.as_str()), Some("B"));
    assert_eq!(map.get("CLIENT~c1").map(|o| o.upstream.as_str()), Some("B"));
    assert_eq!(
        map.prune(i64::MAX).expect("prune"),
        4,
        "every order is marked done, the cancelled one included"
    );
}
