//! A price group of real processes facing bad clients: one that stops reading, and one that
//! sends malformed frames, unexpected messages and unknown instruments. The server answers the
//! bad ones and keeps serving everyone else without a stall.

// The driver allows dead code itself: each user needs only part of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use testbed::price::recorder::QuoteRecorder;
use testbed::price::{GroupOptions, PriceGroup};
use testbed::rss_kib;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use understudy_pricefeed::protocol::{read_frame, BytesMut, ErrorCode, Message};
use understudy_pricefeed::{ClientOptions, PriceClient};

fn start() -> PriceGroup {
    PriceGroup::start(
        PathBuf::from(env!("CARGO_BIN_EXE_understudy")),
        GroupOptions {
            servers: 2,
            instruments: 200,
            rate: 20_000,
            subscribe: 50,
            // The good client gives up on a silent primary only after a real stall, not after
            // the default 300 ms, which a loaded machine reaches without any fault.
            client: ClientOptions {
                heartbeat_timeout: NO_STALL,
                ..ClientOptions::default()
            },
            ..GroupOptions::default()
        },
    )
    .expect("price group starts")
}

/// Bytes queued in the kernel for sending on the loopback TCP connection from port `from` to
/// port `to` (the `tx_queue` of /proc/net/tcp), if there is such a connection.
fn tx_queue(from: u16, to: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || port(f[1])? != from || port(f[2])? != to {
            return None;
        }
        u64::from_str_radix(f[4].split(':').next()?, 16).ok()
    })
}

/// How long the good client may go without a price while a bad client misbehaves: a liveness
/// bound. A server that waited on a bad client would starve the good one for good; a pause of a
/// few hundred ms is only the machine's load. Latency figures are `understudy bench fanout`'s.
const NO_STALL: Duration = Duration::from_secs(2);

/// A raw protocol connection, for sending exactly what a misbehaving client would.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            sock: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
        }
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        self.sock.write_all(b).await.expect("send");
    }

    async fn send(&mut self, m: &Message) {
        let f = m.to_frame().expect("encode");
        self.send_bytes(&f).await;
    }

    /// The next message that is not a heartbeat, hello or price (None: closed or timed out).
    async fn next_reply(&mut self) -> Option<Message> {
        loop {
            // A liveness bound: answers take milliseconds; a loaded machine must not fail this.
            let f = match timeout(
                Duration::from_secs(10),
                read_frame(&mut self.sock, &mut self.buf),
            )
            .await
            {
                Ok(Ok(Some(f))) => f,
                _ => return None,
            };
            match Message::decode(&f).expect("the server sends valid frames") {
                Message::Heartbeat { .. } | Message::Hello { .. } | Message::Update { .. } => {}
                other => return Some(other),
            }
        }
    }
}

/// A length-prefixed frame around `body` (version and type included in `body`).
fn frame(body: &[u8]) -> Vec<u8> {
    let mut b = (body.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(body);
    b
}

fn error_code(m: &Option<Message>) -> Option<ErrorCode> {
    match m {
        Some(Message::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

#[test]
fn a_slow_client_does_not_delay_a_fast_one() {
    let g = start();
    let active = g.active().expect("active");
    let addr = g.servers[active];
    let pid = g.service_pid(active).expect("price server pid");

    // Baseline: the fast client alone, over an observation window.
    g.recorder.reset_phase();
    g.sleep(Duration::from_secs(2));
    let (base_p99, base_updates) = g.recorded(|r| (r.age_ns.quantile(0.99), r.age_ns.count()));

    // A client that subscribes to every instrument and never reads, with a tiny receive
    // buffer so that the server's writes to it block almost at once.
    let all: Vec<String> = (1..=200).map(|i| format!("SYM{i}")).collect();
    let slow = g.block_on(async {
        let s = TcpSocket::new_v4().expect("socket");
        s.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut sock = s.connect(addr).await.expect("connect");
        let m = Message::Subscribe {
            req_id: 1,
            symbols: all,
        };
        sock.write_all(&m.to_frame().expect("encode"))
            .await
            .expect("subscribe");
        sock
    });
    // Wait until the slow client is really stalled: the server's writes to it block, and from
    // now on the server must conflate. Bytes queued toward it (`tx_queue`) are not enough: the
    // kernel grows the server's send buffer (up to `net.ipv4.tcp_wmem`'s maximum, megabytes),
    // so for seconds the server still writes every price to it, as to a client of 200
    // instruments that keeps up; on a loaded machine that is what starved the fast client.
    // Stalled is a queue that stopped growing.
    let slow_port = slow.local_addr().expect("slow client's address").port();
    let queued = || tx_queue(addr.port(), slow_port).unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = queued();
    loop {
        g.sleep(Duration::from_millis(500));
        let now = queued();
        if now > 0 && now == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server's writes to the stalled client never blocked ({now} bytes queued)"
        );
        last = now;
    }
    let rss_before = rss_kib(pid);
    // The slow client stays stalled over an observation window.
    g.recorder.reset_phase();
    g.sleep(Duration::from_secs(3));
    let (p99, updates, gap) =
        g.recorded(|r| (r.age_ns.quantile(0.99), r.age_ns.count(), r.max_gap));
    let rss_after = rss_kib(pid);

    // Latency is a speed figure (`understudy bench fanout`): shown, not asserted.
    eprintln!(
        "fast client's p99 age {} ms with a slow client (alone: {} ms)",
        p99 / 1_000_000,
        base_p99 / 1_000_000
    );
    // Updates did not collapse (3 s measured now, 2 s before): a generous bound, since the
    // exchange's rate, not our speed, sets how many there are.
    assert!(
        updates * 2 > base_updates,
        "fast client got {updates} updates in 3 s, {base_updates} in 2 s alone"
    );
    assert!(gap < NO_STALL, "fast client paused {gap:?}");
    // The slow client's backlog is conflated per instrument: memory does not grow with time.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "price server grew from {rss_before} KiB to {rss_after} KiB with a stalled client"
    );
    assert_eq!(g.recorded(|r| r.primary_lost.len()), 0);
}

#[test]
fn malformed_frames_and_unknown_instruments_get_errors_and_others_are_served() {
    let g = start();
    let active = g.active().expect("active");
    let addr = g.servers[active];
    g.recorder.reset_phase();
    let lost_before = g.recorded(|r| r.primary_lost.len());

    g.block_on(async {
        let mut c = Raw::connect(addr).await;
        // Wrong protocol version: refused, connection kept.
        c.send_bytes(&frame(&[9, 0x10, 0, 0, 0, 1, 0, 0])).await;
        assert_eq!(
            error_code(&c.next_reply().await),
            Some(ErrorCode::MalformedFrame)
        );
        // Unknown message type.
        c.send_bytes(&frame(&[1, 0x7f])).await;
        assert_eq!(
            error_code(&c.next_reply().await),
            Some(ErrorCode::MalformedFrame)
        );
        // Subscribe announcing 5 symbols and carrying none (truncated body).
        c.send_bytes(&frame(&[1, 0x10, 0, 0, 0, 7, 0, 5])).await;
        assert_eq!(
            error_code(&c.next_reply().await),
            Some(ErrorCode::MalformedFrame)
        );
        // A message only servers send.
        c.send(&Message::RoleChange {
            role: understudy_pricefeed::protocol::Role::Primary,
            epoch: 99,
        })
        .await;
        assert_eq!(
            error_code(&c.next_reply().await),
            Some(ErrorCode::UnexpectedMessage)
        );
        // Unknown instrument next to a known one: an error for one, a snapshot for the other.
        c.send(&Message::Subscribe {
            req_id: 42,
            symbols: vec!["NOPE".into(), "SYM1".into()],
        })
        .await;
        let mut got_error = false;
        let mut got_snapshot = false;
        while !(got_error && got_snapshot) {
            match c.next_reply().await {
                Some(Message::Error {
                    code: ErrorCode::UnknownInstrument,
                    req_id: 42,
                    symbol,
                    ..
                }) => {
                    assert_eq!(symbol, "NOPE");
                    got_error = true;
                }
                Some(Message::Snapshot { price, .. }) => {
                    assert_eq!(&*price.symbol, "SYM1");
                    got_snapshot = true;
                }
                other => panic!("unexpected reply {other:?}"),
            }
        }
        // A length prefix beyond the limit loses framing: an error, then the connection closes.
        c.send_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
        assert_eq!(
            error_code(&c.next_reply().await),
            Some(ErrorCode::MalformedFrame)
        );
        assert!(
            c.next_reply().await.is_none(),
            "the connection should be closed"
        );

        // The client library reports an unknown instrument to the application.
        let client =
            PriceClient::connect(g.servers.clone(), ClientOptions::default()).expect("client");
        client.subscribe(&["SYM2", "NOPE2"]);
        let rec = QuoteRecorder::start(client);
        assert!(
            rec.wait_for(Duration::from_secs(10), |r| {
                r.rejected.iter().any(|(s, _)| s == "NOPE2") && r.latest.contains_key("SYM2")
            })
            .await,
            "the unknown instrument was not reported, or SYM2 not priced: {:?}",
            rec.snapshot().rejected
        );
    });

    // Meanwhile the well-behaved client was served without a pause.
    let (gap, lost) = g.recorded(|r| (r.max_gap, r.primary_lost.len()));
    assert!(gap < NO_STALL, "the good client paused {gap:?}");
    assert_eq!(lost, lost_before);
    // And the server still accepts and serves new clients.
    let n = g.recorded(|r| r.quotes);
    assert!(g.wait(Duration::from_secs(10), |r| r.quotes > n + 100));
}
