//! `run_price_server` as an agent's hot-standby service: role from the environment, SIGUSR1
//! promotion, epoch read from the agent's `GET /status`. Its own test binary, because it sets
//! process-wide environment variables and signals its own process.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use understudy_pricefeed::{ClientEvent, ClientOptions, PriceClient};

/// A stand-in for the agent's admin API: Warm for the first two requests, then Hot at epoch 7,
/// so the server must retry until its agent really is Hot.
async fn fake_agent() -> (std::net::SocketAddr, Task) {
    let listener = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU32::new(0));
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = hits.fetch_add(1, Ordering::SeqCst);
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let (mode, epoch) = if n < 2 { ("Warm", 6) } else { ("Hot", 7) };
            let body = format!(
                r#"{{"node":"b","group":"g","mode":"{mode}","name":"TryLock","epoch":{epoch},"since_unix_ms":1,"waiting":null,"holds_lock":true,"ready":false,"admin":"127.0.0.1:7701","agent_pid":9,"since":"1970-01-01T00:00:00.001Z","lock_file":"/run/g.lock","service":{{"state":"running","pid":10,"role":"standby","standby":"hot","command":["svc"],"healthy":true,"detail":null}}}}"#
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (addr, Task(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_promotes_a_standby_with_the_agents_epoch() {
    let (ex, _ex) = exchange(10, 2000).await;
    let (agent, _agent) = fake_agent().await;
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    std::env::set_var("UNDERSTUDY_ROLE", "standby");
    std::env::set_var("UNDERSTUDY_EPOCH", "6");
    std::env::set_var("UNDERSTUDY_NODE", "b");
    std::env::set_var("UNDERSTUDY_ADMIN", agent.to_string());
    let _srv = Task(tokio::spawn(async move {
        let _ = understudy_pricefeed::run_price_server(ex, listen).await;
    }));
    let syms = ["SYM1", "SYM2", "SYM3"];
    let mut client = PriceClient::connect(vec![listen], ClientOptions::default()).expect("client");
    client.subscribe(&syms);
    // Standby: connected (waited for), then no prices for a while (an observation window: the
    // scenario, not a wait for something to happen).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, client.next_event()).await {
            Ok(Some(ClientEvent::ServerConnected { .. })) => break,
            Ok(Some(ClientEvent::Quote(q))) => panic!("a standby published {q:?}"),
            Ok(Some(_)) => {}
            _ => panic!("the client never connected to the standby"),
        }
    }
    let window = Instant::now() + Duration::from_millis(500);
    while let Some(left) = window.checked_duration_since(Instant::now()) {
        if let Ok(Some(ClientEvent::Quote(q))) = timeout(left, client.next_event()).await {
            panic!("a standby published {q:?}");
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let t0 = Instant::now();
    let mut seen = std::collections::HashSet::new();
    // A liveness bound: promotion must happen at all; its speed is the benchmarks' business.
    while seen.len() < syms.len() && t0.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(ClientEvent::Quote(q))) =
            timeout(Duration::from_millis(100), client.next_event()).await
        {
            assert_eq!(q.epoch, 7, "the epoch comes from the agent once it is Hot");
            seen.insert(q.symbol);
        }
    }
    assert_eq!(
        seen.len(),
        syms.len(),
        "every subscription published after SIGUSR1"
    );
}
