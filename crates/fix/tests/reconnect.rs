//! How often an initiator dials a peer that accepts and closes at once, as an acceptor does
//! while an older connection still holds the session (the former owner of a session, stalled
//! on its disk, not gone yet): a few times quickly, then once per `reconnect_interval`, never
//! in a tight loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use understudy_fix::client::{self, ClientConfig};
use understudy_fix::tags::BeginString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_before_the_logon_is_redialled_quickly_then_once_per_reconnect_interval()
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let peer = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let c = client::start(ClientConfig {
        connect: vec![addr],
        sender_comp_id: "GW".into(),
        target_comp_id: "EXCH".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .expect("client");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = accepted.load(Ordering::SeqCst);
    c.task.abort();
    peer.abort();
    // Waits of 10, 20, 40, 80, 160 ms, then 200 ms each: 9 in that second; retried with no
    // wait, it was 825.
    assert!((3..=12).contains(&n), "{n} connections in 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_took_the_connection_but_never_answered_the_logon_goes_after_the_other() {
    // What a former active stuck in the kernel looks like: its port completes handshakes and
    // nothing answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let other = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addrs = vec![
        silent.local_addr().expect("addr"),
        other.local_addr().expect("addr"),
    ];
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let reached = tokio::spawn(async move { other.accept().await.is_ok() });
    let c = client::start(ClientConfig {
        connect: addrs,
        sender_comp_id: "CLIENT1".into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(50),
        logon_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .expect("client");
    // The first Logon goes to the silent address and times out after 300 ms; the next
    // attempt must start at the other one.
    let got = tokio::time::timeout(Duration::from_secs(5), reached).await;
    c.task.abort();
    held.abort();
    assert!(
        matches!(got, Ok(Ok(true))),
        "the other address was never tried: {got:?}"
    );
}
