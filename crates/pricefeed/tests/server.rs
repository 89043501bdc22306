//! Price server behaviour over real TCP: snapshots, standby silence, conflation, bad input.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep, Instant};
use understudy_pricefeed::protocol::{ErrorCode, Message, Role};
use understudy_pricefeed::{ClientEvent, ClientOptions, PriceClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_gets_snapshot_then_updates() {
    let (ex, _ex) = exchange(20, 4000).await;
    let (addr, h, _srv) = server(ex, Role::Primary, 5).await;
    wait_book(&h, 20).await;
    let mut c = Raw::connect(addr).await;
    assert_eq!(
        c.next(Duration::from_secs(1)).await,
        Some(Message::Hello {
            role: Role::Primary,
            epoch: 5,
            server: addr.to_string(),
            token: None,
        })
    );
    c.subscribe(&["SYM1", "SYM2"]).await;
    let updates_seen = |msgs: &[Message]| {
        msgs.iter()
            .filter(|m| matches!(m, Message::Update { .. }))
            .count()
            > 10
    };
    let msgs = c
        .collect_until("updates after the snapshots", updates_seen)
        .await;
    let mut first = std::collections::HashMap::new();
    let mut last_seq = std::collections::HashMap::new();
    let mut updates = 0;
    for m in &msgs {
        match m {
            Message::Snapshot { epoch, price } | Message::Update { epoch, price } => {
                assert_eq!(*epoch, 5, "every message carries the server's epoch");
                let snap = matches!(m, Message::Snapshot { .. });
                first.entry(price.symbol.to_string()).or_insert(snap);
                let prev = last_seq.insert(price.symbol.to_string(), price.exch_seq);
                assert!(
                    prev.is_none_or(|p| price.exch_seq > p),
                    "sequence goes forward"
                );
                if !snap {
                    updates += 1;
                }
            }
            Message::Heartbeat { role, epoch } => assert_eq!((*role, *epoch), (Role::Primary, 5)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        first.get("SYM1"),
        Some(&true),
        "first message of SYM1 is a snapshot"
    );
    assert_eq!(
        first.get("SYM2"),
        Some(&true),
        "first message of SYM2 is a snapshot"
    );
    assert!(updates > 10, "updates follow the snapshots ({updates})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_mirrors_subscriptions_and_publishes_nothing() {
    let (ex, _ex) = exchange(20, 4000).await;
    let (addr, h, _srv) = server(ex, Role::Standby, 2).await;
    wait_book(&h, 20).await;
    let mut c = Raw::connect(addr).await;
    c.subscribe(&["SYM1", "SYM2", "SYM3"]).await;
    let heartbeats = |msgs: &[Message]| {
        msgs.iter()
            .filter(|m| matches!(m, Message::Heartbeat { .. }))
            .count()
    };
    let msgs = c
        .collect_until("3 heartbeats", |m| heartbeats(m) >= 3)
        .await;
    assert!(matches!(
        msgs.first(),
        Some(Message::Hello {
            role: Role::Standby,
            epoch: 2,
            ..
        })
    ));
    assert!(
        msgs.iter().all(|m| matches!(
            m,
            Message::Hello { .. }
                | Message::Heartbeat {
                    role: Role::Standby,
                    ..
                }
        )),
        "a standby publishes nothing: {msgs:?}"
    );
    wait_until(ANSWER, || h.status().subscriptions == 3).await;
    let s = h.status();
    assert_eq!(s.role, Role::Standby);
    assert!(s.upstream_connected);
    assert_eq!(s.clients, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instrument_and_malformed_frames_get_error_replies() {
    let (ex, _ex) = exchange(10, 2000).await;
    let (addr, h, _srv) = server(ex, Role::Primary, 1).await;
    wait_book(&h, 10).await;
    let mut good = Raw::connect(addr).await;
    good.subscribe(&["NOPE", "SYM1"]).await;
    good.collect_until("an error for NOPE and a snapshot of SYM1", |msgs| {
        msgs.iter().any(|m| matches!(m,
            Message::Error { code: ErrorCode::UnknownInstrument, symbol, req_id: 1, .. } if symbol == "NOPE"))
            && msgs
                .iter()
                .any(|m| matches!(m, Message::Snapshot { price, .. } if &*price.symbol == "SYM1"))
    })
    .await;

    // A well-framed but undecodable body: error reply, connection kept.
    good.sock
        .write_all(&[0, 0, 0, 3, 1, 0x77, 0])
        .await
        .expect("send");
    // A server-only message from a client: error reply too.
    good.send(&Message::SnapshotComplete { epoch: 0, count: 1 })
        .await;
    good.subscribe(&["SYM2"]).await;
    // Answered in order: both errors come before SYM2's snapshot.
    let msgs = good
        .collect_until("a snapshot of SYM2", |msgs| {
            msgs.iter()
                .any(|m| matches!(m, Message::Snapshot { price, .. } if &*price.symbol == "SYM2"))
        })
        .await;
    assert!(msgs.iter().any(|m| matches!(
        m,
        Message::Error {
            code: ErrorCode::MalformedFrame,
            ..
        }
    )));
    assert!(msgs.iter().any(|m| matches!(
        m,
        Message::Error {
            code: ErrorCode::UnexpectedMessage,
            ..
        }
    )));

    // A broken length prefix: error reply, then that connection (only) is closed.
    let mut bad = Raw::connect(addr).await;
    bad.sock
        .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 1])
        .await
        .expect("send");
    bad.collect_until("a MalformedFrame error", |msgs| {
        msgs.iter().any(|m| {
            matches!(
                m,
                Message::Error {
                    code: ErrorCode::MalformedFrame,
                    ..
                }
            )
        })
    })
    .await;
    // Then the end of the stream (`next` gives None at the end or after the bound: told apart
    // by the time it took).
    let deadline = Instant::now() + ANSWER;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = bad.next(left).await;
        assert!(
            Instant::now() < deadline,
            "the broken connection was not closed"
        );
        if got.is_none() {
            break;
        }
    }
    good.collect_until("updates: others keep being served", |msgs| {
        msgs.iter().any(|m| matches!(m, Message::Update { .. }))
    })
    .await;
    wait_until(ANSWER, || h.status().clients == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_conflated_and_never_delays_a_fast_one() {
    let symbols: Vec<String> = (1..=100).map(|i| format!("SYM{i}")).collect();
    let syms: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let (ex, _ex) = exchange(100, 50_000).await;
    let (addr, h, _srv) = server(ex, Role::Primary, 1).await;
    wait_book(&h, 100).await;

    // The slow client subscribes and then never reads.
    let slow_sock = tokio::net::TcpSocket::new_v4().expect("socket");
    slow_sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let slow_tcp = slow_sock.connect(addr).await.expect("connect");
    let mut slow = Raw::from_stream(slow_tcp);
    slow.subscribe(&syms).await;

    let mut fast = PriceClient::connect(vec![addr], ClientOptions::default()).expect("client");
    fast.subscribe(&syms);
    let start = Instant::now();
    let mut quotes = 0u64;
    let mut last_quote = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut conflated_seen = false;
    let mut max_pending = 0;
    while start.elapsed() < Duration::from_secs(8) {
        if let Ok(Some(ClientEvent::Quote(_))) =
            tokio::time::timeout(Duration::from_millis(500), fast.next_event()).await
        {
            quotes += 1;
            if quotes > 100 {
                max_gap = max_gap.max(last_quote.elapsed());
            }
            last_quote = Instant::now();
        }
        if quotes % 1000 == 0 {
            let s = h.status();
            max_pending = max_pending.max(s.pending_updates);
            if s.conflated_updates > 10_000 && start.elapsed() > Duration::from_secs(2) {
                conflated_seen = true;
                break;
            }
        }
    }
    let s = h.status();
    assert!(
        conflated_seen,
        "the slow client's prices are conflated: {s:?}"
    );
    // Per client: at most the in-order queue (1024 prices) before it counts as behind, or one
    // price per subscribed instrument once it is.
    assert!(
        max_pending <= 2 * (1024 + 100),
        "pending prices bounded by queue limit and subscriptions ({max_pending})"
    );
    // Kept receiving (how many per second is a speed figure: `understudy bench fanout`).
    assert!(quotes > 1000, "the fast client kept receiving ({quotes})");
    // A liveness bound: a server that waited on the slow client would stall the fast one for
    // good; a few hundred ms are the machine's load. Latency is `understudy bench fanout`'s.
    assert!(
        max_gap < Duration::from_secs(3),
        "the fast client was stalled ({max_gap:?})"
    );
    assert_eq!(s.clients, 2);
    // The slow client is still served, just conflated: it can catch up.
    slow.collect_until("the slow client's prices", |m| !m.is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reconnects_to_a_restarted_upstream() {
    let sim = understudy_pricefeed::exchange_sim::ExchangeSim::bind(any_port(), 5, 1000)
        .await
        .expect("bind");
    let ex = sim.local_addr().expect("addr");
    let first = Task(tokio::spawn(async move {
        let _ = sim.run().await;
    }));
    let (_addr, h, _srv) = server(ex, Role::Standby, 0).await;
    wait_until(ANSWER, || h.status().upstream_connected).await;
    first.stop().await;
    wait_until(ANSWER, || !h.status().upstream_connected).await;
    // The scenario: the upstream stays away a moment, so reconnection attempts fail first.
    sleep(Duration::from_millis(100)).await;
    let sim = understudy_pricefeed::exchange_sim::ExchangeSim::bind(ex, 5, 1000)
        .await
        .expect("rebind on the same port");
    let _second = Task(tokio::spawn(async move {
        let _ = sim.run().await;
    }));
    wait_until(Duration::from_secs(5), || h.status().upstream_connected).await;
}
