//! A counterparty that was away while we stored more for it than the write queue's bound
//! ([`MAX_WRITE_QUEUE_BYTES`]) logs on and asks for all of it in one ResendRequest, as
//! QuickFIX does by default. It reads, so it must get all of it: every stored message again
//! with PossDupFlag=Y, every other number gap-filled, in order, and then what the session
//! numbered meanwhile (a Heartbeat answering its TestRequest, the report for its new order)
//! behind the answer, not between its pieces. It is not a slow consumer; answered in one
//! write, the answer went over the bound at once and the counterparty was logged out as one,
//! however fast it read (review 22b, #1).
//!
//! A real engine over TCP with a real file store under group commit, as the gateway runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use understudy_fix::codec::{parse, Deframer, MessageBuilder, DEFAULT_MAX_BODY_LENGTH};
use understudy_fix::engine::{Application, Engine, Outbox, SessionSlot, MAX_WRITE_QUEUE_BYTES};
use understudy_fix::session::{AppMessage, Role, Session, SessionConfig};
use understudy_fix::store::{FileStore, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::{self, BeginString};

/// Answers every order with a report naming its ClOrdID.
struct Reports;

impl Application for Reports {
    fn on_message(&mut self, out: &mut Outbox, session: usize, m: &AppMessage) {
        let Ok(msg) = parse(&m.frame) else { return };
        if msg.msg_type() != b"D" {
            return;
        }
        let id = msg.get_str(11).unwrap_or("?");
        out.send(
            session,
            b"8",
            format!("37=N-{id}\x0111={id}\x01150=0\x0139=0\x01").into_bytes(),
        );
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

/// Reports stored for CLIENT while it was away, with a number left without a stored
/// message (an admin message) every 1000: (last number used, messages stored).
fn store_backlog(store: &mut FileStore, bytes: usize) -> (u64, usize) {
    let pad = "p".repeat(200);
    let mut seq = store.next_sender_seq();
    let (mut stored, mut total) = (0usize, 0usize);
    while total <= bytes {
        if seq % 1000 == 500 {
            seq += 1;
            store.set_next_sender_seq(seq).expect("admin number");
            continue;
        }
        let mut b = MessageBuilder::new(BeginString::Fix44, b"8");
        b.push_str(tags::SENDER_COMP_ID, "GW")
            .push_str(tags::TARGET_COMP_ID, "CLIENT")
            .push_uint(tags::MSG_SEQ_NUM, seq)
            .push_time(tags::SENDING_TIME, SystemTime::now())
            .push_str(37, &format!("E{seq}"))
            .push_str(58, &pad);
        let f = b.finish().expect("encode");
        store.save_sent(seq, &f).expect("stored");
        total += f.len();
        stored += 1;
        seq += 1;
    }
    (seq - 1, stored)
}

fn acceptor(store: FileStore) -> (tokio::runtime::Runtime, SocketAddr) {
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
        let c = SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor);
        let session = Session::new(c, store).expect("session");
        let engine = Engine::new(vec![SessionSlot::new("CLIENT", session)], Some(listener));
        tokio::spawn(async move { engine.run(&mut Reports, std::future::pending()).await });
        addr
    });
    (rt, addr)
}

/// One frame as read: type, MsgSeqNum, and the numbers it covers (a GapFill up to NewSeqNo).
struct Got {
    msg_type: String,
    seq: u64,
    covers: std::ops::Range<u64>,
    poss_dup: bool,
    orig_sending_time: bool,
    fields: Vec<(u32, String)>,
}

fn get(f: &Got, tag: u32) -> Option<&str> {
    f.fields
        .iter()
        .find_map(|(t, v)| (*t == tag).then_some(v.as_str()))
}

/// Reads `s` at a steady pace a WAN link might have (a pause every 256 KiB) until `done`
/// says so or the connection closes (then `true`), within two minutes.
fn read_until(s: &mut TcpStream, done: impl Fn(&[Got]) -> bool) -> (Vec<Got>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut d = Deframer::new(DEFAULT_MAX_BODY_LENGTH);
    let mut got: Vec<Got> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut since_pause = 0usize;
    let t0 = Instant::now();
    while !done(&got) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the answer did not end within 2 minutes: {} frames, last {:?}",
            got.len(),
            got.last().map(|g| (&g.msg_type, g.seq))
        );
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => {
                d.push(&buf[..n]);
                since_pause += n;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return (got, true),
        }
        if since_pause >= 256 * 1024 {
            since_pause = 0;
            #[allow(clippy::disallowed_methods)] // the reader's own pace
            std::thread::sleep(Duration::from_millis(20));
        }
        while let Some(f) = d.next_frame().expect("well-framed") {
            let m = parse(f).expect("parses");
            let seq = m.seq_num().expect("34");
            let msg_type = String::from_utf8_lossy(m.msg_type()).into_owned();
            let gap_fill = msg_type == "4" && m.get(123) == Some(b"Y");
            let covers = if gap_fill {
                seq..m.get_uint(36).ok().flatten().expect("36")
            } else {
                seq..seq + 1
            };
            got.push(Got {
                poss_dup: m.get(43) == Some(b"Y"),
                orig_sending_time: m.get(122).is_some(),
                fields: m
                    .fields()
                    .iter()
                    .map(|f| (f.tag, String::from_utf8_lossy(f.value).into_owned()))
                    .collect(),
                msg_type,
                seq,
                covers,
            });
        }
    }
    (got, false)
}

#[test]
fn a_resend_larger_than_the_write_queue_reaches_a_counterparty_that_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT");
    let mut store = FileStore::open(dir.path(), &sid, 1, SyncPolicy::Group).expect("store");
    let backlog = MAX_WRITE_QUEUE_BYTES + MAX_WRITE_QUEUE_BYTES / 2;
    let (last, stored) = store_backlog(&mut store, backlog);
    let (_rt, addr) = acceptor(store);

    let mut s = TcpStream::connect(addr).expect("connect");
    let mut ask = frame(b"A", 1, &[(98, "0"), (108, "30")]);
    ask.extend(frame(b"2", 2, &[(7, "1"), (16, "0")]));
    ask.extend(frame(b"1", 3, &[(112, "TR1")]));
    ask.extend(frame(
        b"D",
        4,
        &[(11, "NEW1"), (55, "X"), (54, "1"), (38, "1"), (40, "1")],
    ));
    s.write_all(&ask).expect("send");

    let t0 = Instant::now();
    let (got, closed) = read_until(&mut s, |got| got.iter().any(|g| get(g, 11) == Some("NEW1")));
    let logout = got.iter().find(|g| g.msg_type == "5");
    assert!(
        logout.is_none(),
        "logged out: {:?} ({} frames read before)",
        logout.and_then(|g| get(g, 58)),
        got.len()
    );
    assert!(!closed, "the connection closed after {} frames", got.len());

    // The Logon answer carries the next number; then the answer covers every number up to
    // the last sent (the Logon's own, gap-filled, included) once, in order; then the
    // Heartbeat and the report follow.
    assert_eq!(got[0].msg_type, "A");
    assert_eq!(got[0].seq, last + 1);
    let answer = &got[1..got.len() - 2];
    let numbers: Vec<u64> = answer.iter().flat_map(|g| g.covers.clone()).collect();
    let expected: Vec<u64> = (1..=last + 1).collect();
    assert!(
        numbers == expected,
        "the answer does not cover 1..={} once in order (first difference at {:?}; {} \
         numbers; its last frames {:?})",
        last + 1,
        numbers.iter().zip(&expected).position(|(a, b)| a != b),
        numbers.len(),
        answer[answer.len().saturating_sub(3)..]
            .iter()
            .map(|g| (&g.msg_type, g.seq, &g.covers))
            .collect::<Vec<_>>()
    );
    let resent = answer.iter().filter(|g| g.msg_type == "8").count();
    assert_eq!(resent, stored, "every stored report resent");
    assert!(answer.iter().all(|g| g.poss_dup && g.orig_sending_time));
    let hb = &got[got.len() - 2];
    let report = &got[got.len() - 1];
    assert_eq!((hb.msg_type.as_str(), hb.seq), ("0", last + 2));
    assert_eq!(get(hb, 112), Some("TR1"));
    assert_eq!((report.msg_type.as_str(), report.seq), ("8", last + 3));
    assert!(!report.poss_dup, "a new report is no resend");
    println!(
        "{stored} reports (over {backlog} bytes) resent in {} frames in {:?}",
        answer.len(),
        t0.elapsed()
    );
}

/// The same backlog, with the client sending orders all along while it reads the answer:
/// each order's report (stored under group commit, so pieces wait behind passes) joins the
/// answer and reaches the client once, as new (no PossDupFlag), in sequence after the
/// backlog; nothing is lost or sent twice, and the client is not dropped.
#[test]
fn reports_made_during_the_answer_join_it_and_arrive_once_as_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT");
    let mut store = FileStore::open(dir.path(), &sid, 1, SyncPolicy::Group).expect("store");
    let (last, stored) = store_backlog(&mut store, MAX_WRITE_QUEUE_BYTES);
    let (_rt, addr) = acceptor(store);

    let mut s = TcpStream::connect(addr).expect("connect");
    let mut ask = frame(b"A", 1, &[(98, "0"), (108, "30")]);
    ask.extend(frame(b"2", 2, &[(7, "1"), (16, "0")]));
    s.write_all(&ask).expect("send");
    const ORDERS: u64 = 200;
    let mut w = s.try_clone().expect("a second handle");
    let sender = std::thread::spawn(move || {
        for k in 0..ORDERS {
            let id = format!("LIVE{k}");
            let o = frame(
                b"D",
                3 + k,
                &[(11, &id), (55, "X"), (54, "1"), (38, "1"), (40, "1")],
            );
            if w.write_all(&o).is_err() {
                return;
            }
            #[allow(clippy::disallowed_methods)] // orders at a steady rate
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let done = |got: &[Got]| {
        got.iter()
            .filter(|g| get(g, 11).is_some_and(|id| id.starts_with("LIVE")))
            .count()
            >= ORDERS as usize
    };
    let (got, closed) = read_until(&mut s, done);
    let _ = sender.join();
    let logout = got.iter().find(|g| g.msg_type == "5");
    assert!(
        logout.is_none(),
        "logged out: {:?}",
        logout.and_then(|g| get(g, 58))
    );
    assert!(!closed, "the connection closed after {} frames", got.len());
    let numbers: Vec<u64> = got[1..].iter().flat_map(|g| g.covers.clone()).collect();
    let expected: Vec<u64> = (1..=last + 1 + ORDERS).collect();
    assert!(
        numbers == expected,
        "not every number once in order: {} numbers for {}, first difference at {:?}",
        numbers.len(),
        expected.len(),
        numbers.iter().zip(&expected).position(|(a, b)| a != b)
    );
    let resent = got
        .iter()
        .filter(|g| g.poss_dup && g.msg_type == "8")
        .count();
    assert_eq!(resent, stored, "the backlog resent, PossDupFlag=Y");
    for k in 0..ORDERS {
        let id = format!("LIVE{k}");
        let copies: Vec<&Got> = got
            .iter()
            .filter(|g| get(g, 11) == Some(id.as_str()))
            .collect();
        assert_eq!(copies.len(), 1, "{id}: {} reports", copies.len());
        assert!(
            !copies[0].poss_dup,
            "{id}'s report marked as a possible duplicate"
        );
    }
}
