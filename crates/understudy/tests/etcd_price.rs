//! The price group across machines with etcd: etcd on one network namespace, a price server run
//! by an agent (hot standby) on each of two others, the exchange simulator and the client library
//! in the test's own namespace. The primary's machine is cut off; its service must be gone before
//! the standby is Hot, and the client must follow the new primary with every subscription.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;
mod etcd_support;
use testbed::netns;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use etcd_support::*;
use netns::Lab;
use testbed::price::recorder::{self as harness, QuoteRecorder};
use understudy_pricefeed::{ClientOptions, PriceClient};

const SYMBOLS: u32 = 50;
const SERVER_PORT: u16 = 7800;

#[test]
fn cutting_the_primary_machine_moves_every_subscription_to_the_new_primary() {
    let mut lab = Lab::new().expect("network namespaces (root, iproute2)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The exchange listens on the bridge's address, which every machine reaches.
    let bridge = lab.address(1);
    let exch: SocketAddr = TcpListener::bind((bridge.as_str(), 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on the bridge");
    let _exchange = rt
        .block_on(harness::start_exchange(
            Path::new(BIN),
            exch,
            SYMBOLS * 2,
            20_000,
            None,
        ))
        .expect("exchange-sim");
    let listen: SocketAddr = format!("0.0.0.0:{SERVER_PORT}").parse().expect("addr");
    let (_etcd, g, ma, mb) = lab_group_with(&mut lab, |g| {
        let cmd = harness::price_server_command(Path::new(BIN), exch, listen);
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        g.set_service("command", &arr(&cmd));
        g.set_service("standby", &q("hot"));
    });
    let w = g.watch();
    let servers: Vec<SocketAddr> = [&ma, &mb]
        .iter()
        .map(|m| format!("{}:{SERVER_PORT}", m.ip).parse().expect("addr"))
        .collect();
    let subscribed = harness::symbols(SYMBOLS);
    let recorder = rt
        .block_on(async {
            let client = PriceClient::connect(
                servers,
                ClientOptions {
                    heartbeat_timeout: Duration::from_secs(1),
                    ..ClientOptions::default()
                },
            )?;
            client.subscribe(&subscribed);
            Ok::<_, understudy_pricefeed::Error>(QuoteRecorder::start(client))
        })
        .expect("price client");
    let old = g.epoch("a");
    let want = subscribed.len();
    let all_at = |epoch: u64| {
        let r = &recorder;
        move || r.with(|r| r.symbols_at_epoch(epoch) == want)
    };
    assert!(
        wait_until(10 * S, all_at(old)),
        "the client never had every price from the primary"
    );

    let svc = g
        .wait_service_pid("a", Duration::from_secs(5))
        .expect("primary's service pid");
    let t0 = Instant::now();
    Lab::link_down(&ma).expect("cut");
    assert!(
        wait_until(S, || !alive(svc)),
        "the cut-off primary's price server kept running"
    );
    let killed = t0.elapsed();
    let took = wait_takeover(&g, "b", old, t0, 2 * S);
    assert!(took >= killed, "b was Hot before a's price server was gone");
    let new = g.epoch("b");
    assert!(
        wait_until(5 * S, || recorder
            .with(|r| r.all_back_at(old, want).is_some())),
        "not every subscription came back after the failover: {} of {want}",
        recorder.with(|r| r.symbols_after(old).len())
    );
    let back = t0.elapsed();
    recorder.with(|r| {
        assert_eq!(
            r.older_after_newer, 0,
            "a price older than one already seen"
        );
        assert_eq!(
            r.highest_epoch, new,
            "the client follows epoch {}",
            r.highest_epoch
        );
    });
    eprintln!(
        "machine cut: old price server gone after {killed:?}, b Hot after {took:?}, every subscription back after {back:?}"
    );
    Lab::link_up(&ma).expect("heal");
    g.wait_status("a", "Warm after the network is back", 10 * S, |s| {
        s["mode"] == "Warm" && s["holds_lock"] == false
    });
    g.stays("b", "Hot", Duration::from_millis(500));
    let report = w.finish();
    assert!(report.sweeps > 0, "the two-Hot watcher never swept");
}
