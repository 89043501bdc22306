//! A counterparty that sends faster than the engine's loop handles its bytes (the loop slowed
//! by passes on a stalling disk, or by a slow application) is held back by TCP: the
//! connection's reader stops once [`MAX_READ_QUEUE_BYTES`] are waiting, instead of reading
//! without end into memory. Once the loop keeps up again, every message is handled. A
//! connection that has not logged on gets far less, and every pause shows in `/health`.
#![allow(clippy::disallowed_methods)] // the slow application's own pause

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use understudy_fix::admin;
use understudy_fix::codec::{MessageBuilder, DEFAULT_MAX_BODY_LENGTH};
use understudy_fix::engine::{Application, Engine, Outbox, SessionSlot, MAX_READ_QUEUE_BYTES};
use understudy_fix::session::{AppMessage, Role, Session, SessionConfig};
use understudy_fix::store::MemoryStore;
use understudy_fix::tags::{self, BeginString};

/// Pauses the loop at every application message while `slow`, and for [`PAUSE_FOR`] at an
/// order whose ClOrdID is `PAUSE` (`paused` is true meanwhile); counts them all.
struct Slow {
    slow: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
}

/// How long an order `PAUSE` holds the loop.
const PAUSE_FOR: Duration = Duration::from_millis(1500);

impl Application for Slow {
    fn on_message(&mut self, _: &mut Outbox, _: usize, m: &AppMessage) {
        if m.frame.windows(10).any(|w| w == b"\x0111=PAUSE\x01") {
            self.paused.store(true, Ordering::SeqCst);
            std::thread::sleep(PAUSE_FOR);
            self.paused.store(false, Ordering::SeqCst);
        }
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

/// An acceptor engine for CLIENT running `app`, on a runtime of its own, with its health
/// endpoint: the runtime, the FIX address, the health endpoint's address.
fn acceptor(app: Slow) -> (tokio::runtime::Runtime, SocketAddr, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let health = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let health_addr = health.local_addr().expect("addr");
    let (probes_tx, probes) = tokio::sync::mpsc::unbounded_channel();
    admin::serve_on_own_thread(health, probes_tx).expect("health endpoint");
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
        let engine = Engine::new(vec![SessionSlot::new("CLIENT", session)], Some(listener))
            .with_health_probes(probes, 1);
        tokio::spawn(async move {
            let mut app = app;
            engine.run(&mut app, std::future::pending()).await
        });
        addr
    });
    (rt, addr, health_addr)
}

/// `reads_held_back` in the engine's `GET /health` answer.
fn reads_held_back(health: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(health).expect("connect to /health");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("a body") + 4..];
    let health: serde_json::Value = serde_json::from_str(body).expect("JSON");
    health["reads_held_back"]
        .as_u64()
        .unwrap_or_else(|| panic!("no reads_held_back in {body}"))
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

/// An acceptor running [`Slow`] (slow until told otherwise) and a connection logged on to
/// it.
struct Harness {
    rt: tokio::runtime::Runtime,
    /// The FIX address.
    addr: SocketAddr,
    /// The health endpoint's address.
    health: SocketAddr,
    slow: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    /// Application messages handled.
    seen: Arc<AtomicUsize>,
    client: TcpStream,
}

fn slow_acceptor() -> Harness {
    let slow = Arc::new(AtomicBool::new(true));
    let paused = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let (rt, addr, health) = acceptor(Slow {
        slow: slow.clone(),
        paused: paused.clone(),
        seen: seen.clone(),
    });
    Harness {
        rt,
        addr,
        health,
        slow,
        paused,
        seen,
        client: logged_on(addr),
    }
}

impl Harness {
    /// Holds the loop for [`PAUSE_FOR`] with an order `PAUSE` numbered 2, once the loop is
    /// in it.
    fn pause_loop(&mut self) {
        self.slow.store(false, Ordering::SeqCst);
        let pause = frame(
            b"D",
            2,
            &[(11, "PAUSE"), (55, "X"), (54, "1"), (38, "1"), (40, "1")],
        );
        self.client.write_all(&pause).expect("send PAUSE");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.paused.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the loop never took PAUSE");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the loop to be done with [`pause_loop`](Self::pause_loop)'s order.
    fn wait_unpaused(&self) {
        assert_eq!(handled(&self.seen, 1), 1, "PAUSE never handled");
    }

    /// A connection that has not logged on, its reader started by the loop.
    fn anonymous(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        // The loop starts the reader when it takes the accept, an event among others: it has
        // nothing else to do.
        std::thread::sleep(Duration::from_millis(200));
        s
    }

    fn finish(self) {
        drop(self.client);
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
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
    let h = slow_acceptor();
    let (slow, seen, mut s) = (
        h.slow.clone(),
        h.seen.clone(),
        h.client.try_clone().expect("clone"),
    );
    assert_eq!(
        reads_held_back(h.health),
        0,
        "a connection that only logged on was counted as held back"
    );

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
    assert!(
        reads_held_back(h.health) >= 1,
        "the reader stopped for the slow loop and /health does not show it"
    );
    drop(s);
    h.finish();
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
    let h = slow_acceptor();
    let (slow, seen, mut s) = (
        h.slow.clone(),
        h.seen.clone(),
        h.client.try_clone().expect("clone"),
    );
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
    h.finish();
}

// That each read costs at least 1 KiB is tested on the reader itself (the engine's unit
// tests): here a loop that holds its worker also holds the runtime's I/O driver, so the
// reader reads nothing until the loop lets go and one-byte sends arrive as one read.

/// Bytes an anonymous connection sends while the loop is held: four times what it may read
/// before its Logon, a quarter of what a logged-on connection may.
const ANONYMOUS_BYTES: usize = 256 * 1024;

#[test]
fn a_connection_that_has_not_logged_on_is_read_64_kib_ahead_at_most() {
    let mut h = slow_acceptor();
    let mut anon = h.anonymous();
    h.pause_loop();
    // What the kernel takes without blocking (the rest of the buffer it grows into later
    // does not matter): the reader stops after one read of it.
    anon.set_nonblocking(true).expect("nonblocking");
    let junk = vec![b'x'; ANONYMOUS_BYTES];
    let mut sent = 0;
    let until = Instant::now() + Duration::from_millis(300);
    while sent < junk.len() && Instant::now() < until {
        match anon.write(&junk[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        h.paused.load(Ordering::SeqCst),
        "the loop was not held throughout"
    );
    println!("{sent} bytes sent while the loop was held");
    assert!(sent > 64 * 1024, "only {sent} bytes went in");
    h.wait_unpaused();
    assert!(
        reads_held_back(h.health) >= 1,
        "an anonymous connection's reader read {sent} bytes ahead of a held loop without \
         stopping"
    );
    drop(anon);
    h.finish();
}
