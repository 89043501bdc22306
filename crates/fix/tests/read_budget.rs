//! A counterparty that sends faster than the engine's loop handles its bytes (the loop slowed
//! by passes on a stalling disk, or by a slow application) is held back by TCP: the
//! connection's reader stops once [`MAX_READ_QUEUE_BYTES`] are waiting, instead of reading
//! without end into memory. Once the loop keeps up again, every message is handled.
#![allow(clippy::disallowed_methods)] // the slow application's own pause

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use understudy_fix::codec::{MessageBuilder, DEFAULT_MAX_BODY_LENGTH};
use understudy_fix::engine::{Application, Engine, Outbox, SessionSlot, MAX_READ_QUEUE_BYTES};
use understudy_fix::session::{AppMessage, Role, Session, SessionConfig};
use understudy_fix::store::MemoryStore;
use understudy_fix::tags::{self, BeginString};

/// Pauses the loop at every application message while `slow`; counts them all.
struct Slow {
    slow: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
}

impl Application for Slow {
    fn on_message(&mut self, _: &mut Outbox, _: usize, _: &AppMessage) {
        self.seen.fetch_add(1, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// A frame from CLIENT to GW numbered `seq`.
fn frame(msg_type: &[u8], seq: u64, body: &[(u32, &str)]) -> Vec<u8> {
    let mut b = MessageBuilder::new(BeginString::Fix44, msg_type);
    b.push_str(tags::SENDER_COMP_ID, "CLIENT")
        .push_str(tags::TARGET_COMP_ID, "GW")
        .push_uint(tags::MSG_SEQ_NUM, seq)
        .push_time(tags::SENDING_TIME, SystemTime::now());
    for (t, v) in body {
        b.push_str(*t, v);
    }
    b.finish().expect("encode")
}

fn order(seq: u64) -> Vec<u8> {
    let id = format!("O{seq}");
    frame(
        b"D",
        seq,
        &[(11, &id), (55, "X"), (54, "1"), (38, "1"), (40, "1")],
    )
}

/// Most bytes the sender may get into the connection in [`FLOOD_FOR`] while the loop is slow:
/// the read budget, what the two sockets buffer (on this host a receive buffer may grow to
/// 32 MiB, a send buffer to 4 MiB, but a reader that stopped keeps the window where it was)
/// and what the slow loop handles meanwhile (about 1.5 MB/s). Read without a bound, the
/// whole flood goes in at once.
const HELD_BACK_BELOW: usize = 32 << 20;
/// What the sender tries to get in.
const FLOOD: usize = 64 << 20;
/// How long it tries while the loop is slow.
const FLOOD_FOR: Duration = Duration::from_secs(2);

/// An acceptor engine for CLIENT running `app`, on a runtime of its own.
fn acceptor(app: Slow) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut c = SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor);
        // Every order is stamped before it is sent; on a slow machine the last may be handled
        // long after.
        c.max_latency = None;
        let session = Session::new(c, MemoryStore::new()).expect("session");
        let engine = Engine::new(vec![SessionSlot::new("CLIENT", session)], Some(listener));
        tokio::spawn(async move {
            let mut app = app;
            engine.run(&mut app, std::future::pending()).await
        });
        addr
    });
    (rt, addr)
}

/// A raw connection to `addr`, logged on as CLIENT (its Logon numbered 1).
fn logged_on(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&frame(b"A", 1, &[(98, "0"), (108, "30")]))
        .expect("logon");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\x0135=A\x01") {
        let n = s.read(&mut buf).expect("no Logon answer");
        assert!(n > 0, "closed before the Logon answer");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// A slow acceptor (see [`Slow`]; slow until told otherwise) and a connection logged on to
/// it: its runtime, the switch, the count of messages handled, the connection.
fn slow_acceptor() -> (
    tokio::runtime::Runtime,
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    TcpStream,
) {
    let slow = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(AtomicUsize::new(0));
    let (rt, addr) = acceptor(Slow {
        slow: slow.clone(),
        seen: seen.clone(),
    });
    (rt, slow, seen, logged_on(addr))
}

/// Waits up to 60 s for `seen` to reach `want`; returns what it reached.
fn handled(seen: &AtomicUsize, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::SeqCst) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    seen.load(Ordering::SeqCst)
}

#[test]
fn a_peer_flooding_a_slow_loop_is_held_back_by_tcp_and_loses_nothing() {
    let (rt, slow, seen, mut s) = slow_acceptor();

    // Orders from 2 on, as fast as the kernel takes them, while the loop is slow.
    let mut flood = Vec::with_capacity(FLOOD + 256);
    let mut orders = 0;
    while flood.len() < FLOOD {
        flood.extend_from_slice(&order(orders + 2));
        orders += 1;
    }
    s.set_nonblocking(true).expect("nonblocking");
    let mut sent = 0;
    let until = Instant::now() + FLOOD_FOR;
    while sent < flood.len() && Instant::now() < until {
        match s.write(&flood[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    println!("{sent} bytes taken in {FLOOD_FOR:?}");
    assert!(
        sent < HELD_BACK_BELOW,
        "{sent} bytes taken from a peer in {FLOOD_FOR:?} while the loop was slow: read \
         without bound (budget {MAX_READ_QUEUE_BYTES} bytes)"
    );

    // The loop keeps up again: the rest goes in and every order is handled.
    slow.store(false, Ordering::SeqCst);
    s.set_nonblocking(false).expect("blocking");
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(&flood[sent..])
        .expect("the reader did not resume");
    assert_eq!(
        handled(&seen, orders as usize),
        orders as usize,
        "orders handled of {orders} sent"
    );
    drop(s);
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// The BodyLength(9) of `frame`.
fn body_length(frame: &[u8]) -> usize {
    let text = String::from_utf8_lossy(frame);
    let from = text.find("\x019=").expect("BodyLength") + 3;
    let to = from + text[from..].find('\x01').expect("end of BodyLength");
    text[from..to].parse().expect("a number")
}

#[test]
fn a_frame_larger_than_the_read_budget_is_handled_whole_while_the_loop_is_slow() {
    let (rt, slow, seen, mut s) = slow_acceptor();
    // Orders ahead of it keep the loop busy (about 100 µs each) while the big one arrives.
    let ahead: u64 = 2000;
    let mut bytes = Vec::new();
    for seq in 2..2 + ahead {
        bytes.extend_from_slice(&order(seq));
    }
    // An order whose Text(58) makes its body the largest accepted.
    let big = |text: &str| {
        frame(
            b"D",
            2 + ahead,
            &[
                (11, "BIG"),
                (55, "X"),
                (54, "1"),
                (38, "1"),
                (40, "1"),
                (58, text),
            ],
        )
    };
    let filler = DEFAULT_MAX_BODY_LENGTH - body_length(&big("x")) + 1;
    let big = big(&"x".repeat(filler));
    assert_eq!(body_length(&big), DEFAULT_MAX_BODY_LENGTH);
    assert!(big.len() > MAX_READ_QUEUE_BYTES, "{} bytes", big.len());
    bytes.extend_from_slice(&big);
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(&bytes)
        .expect("the reader did not take the frame");
    slow.store(false, Ordering::SeqCst);
    let want = ahead as usize + 1;
    assert_eq!(
        handled(&seen, want),
        want,
        "messages handled of {want} sent (the last {} bytes long)",
        big.len()
    );
    drop(s);
    rt.shutdown_timeout(Duration::from_secs(1));
}
