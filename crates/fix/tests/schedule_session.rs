//! Session schedules in the session layer, the store and the transport: the sequence reset
//! at a period boundary (fenced, once, surviving a failover), Logout at the end of the
//! period, Logons refused and connections not made outside it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveTime, Timelike, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use understudy_fix::client::{self, ClientConfig, ClientEvent};
use understudy_fix::codec::{parse, MessageBuilder};
use understudy_fix::engine::{Application, Engine, Outbox, SessionSlot};
use understudy_fix::schedule::SessionSchedule;
use understudy_fix::session::{
    Action, Again, AppMessage, DisconnectReason, Role, Session, SessionConfig, SessionEvent, State,
};
use understudy_fix::store::{
    FileStore, MemoryStore, SessionId, SessionStore, StoreError, SyncPolicy,
};
use understudy_fix::tags::BeginString;

/// 2023-11-14 00:00:00 UTC.
fn day0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_699_920_000)
}

fn at(day: u64, h: u64, m: u64) -> SystemTime {
    day0() + Duration::from_secs(day * 86_400 + h * 3600 + m * 60)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn hms(h: u32, m: u32, s: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, s).unwrap()
}

/// 08:00 to 17:00 UTC every day.
fn office_hours() -> SessionSchedule {
    SessionSchedule::Daily {
        start: hms(8, 0, 0),
        end: hms(17, 0, 0),
        tz: chrono_tz::UTC,
        days: Vec::new(),
    }
}

fn sid() -> SessionId {
    SessionId::new(BeginString::Fix44, "GW", "CLIENT")
}

fn open(dir: &std::path::Path, epoch: u64) -> Result<FileStore, StoreError> {
    FileStore::open(dir, &sid(), epoch, SyncPolicy::EveryWrite)
}

fn acceptor<S: SessionStore>(store: S, schedule: SessionSchedule) -> Session<S> {
    let mut c = SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor);
    c.schedule = schedule;
    c.max_latency = None;
    Session::new(c, store).expect("session")
}

fn peer_msg(mt: &str, seq: u64, body: &str, now: SystemTime) -> Vec<u8> {
    let mut b = MessageBuilder::new(BeginString::Fix44, mt.as_bytes());
    b.push_str(49, "CLIENT")
        .push_str(56, "GW")
        .push_uint(34, seq)
        .push_time(52, now);
    if !body.is_empty() {
        b.push_raw(format!("{body}|").replace('|', "\x01").as_bytes());
    }
    b.finish().expect("encode")
}

fn drain<S: SessionStore>(s: &mut Session<S>) -> Vec<Action> {
    s.drain().collect()
}

fn sent_types(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(f) => Some(String::from_utf8_lossy(parse(f).unwrap().msg_type()).into()),
            _ => None,
        })
        .collect()
}

#[test]
fn store_period_is_one_fenced_record_and_survives_takeover() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut a = open(tmp.path(), 1).expect("open");
    assert_eq!(a.period(), None);
    a.save_sent(1, b"one").expect("save");
    a.set_next_target_seq(7).expect("target");
    a.reset_for_period(1000).expect("reset");
    assert_eq!(
        (a.period(), a.next_sender_seq(), a.next_target_seq()),
        (Some(1000), 1, 1)
    );
    assert!(a.sent_range(1, 10).expect("range").is_empty());
    a.save_sent(1, b"new-one").expect("save");
    // A plain reset (ResetSeqNumFlag) keeps the period.
    let b = open(tmp.path(), 2).expect("takeover");
    assert_eq!(b.period(), Some(1000));
    assert_eq!(b.next_sender_seq(), 2);
    assert_eq!(
        b.sent_range(1, 5).expect("range"),
        vec![(1, b"new-one".to_vec())]
    );
    // The old active cannot reset the store the new one owns.
    assert!(matches!(
        a.reset_for_period(2000),
        Err(StoreError::Fenced { ours: 1, newest: 2 })
    ));
    drop(b);
    let mut c = open(tmp.path(), 3).expect("third");
    assert_eq!(c.period(), Some(1000));
    c.reset().expect("plain reset");
    assert_eq!(c.period(), Some(1000));
    drop(c);
    assert_eq!(open(tmp.path(), 4).expect("fourth").period(), Some(1000));
}

#[test]
fn sequence_reset_at_the_boundary_once_across_failover() {
    let tmp = tempfile::tempdir().expect("tmp");
    let day1_start = at(1, 8, 0);

    // Day 1, epoch 1: logon resets the fresh store into day 1's period, then traffic.
    let mut s = acceptor(open(tmp.path(), 1).expect("open"), office_hours());
    s.on_connected(at(1, 9, 0));
    s.on_frame(&peer_msg("A", 1, "98=0|108=30", at(1, 9, 0)), at(1, 9, 0));
    let a = drain(&mut s);
    assert!(a.contains(&Action::Event(SessionEvent::NewPeriod {
        start: secs(day1_start)
    })));
    assert_eq!(sent_types(&a), ["A"]);
    for i in 0..3 {
        s.send_app(b"8", b"37=X\x01", at(1, 10, i)).expect("send");
    }
    s.on_frame(&peer_msg("0", 2, "", at(1, 10, 5)), at(1, 10, 5));
    drain(&mut s);
    assert_eq!(s.store().next_sender_seq(), 5);
    assert_eq!(s.store().next_target_seq(), 3);

    // 17:00: Logout at the end of the period; the counterparty answers.
    s.on_timer(at(1, 17, 0));
    let a = drain(&mut s);
    assert_eq!(sent_types(&a), ["5"]);
    assert_eq!(s.state(), State::LogoutSent);
    s.on_frame(&peer_msg("5", 3, "", at(1, 17, 0)), at(1, 17, 0));
    assert!(drain(&mut s).contains(&Action::Disconnect(DisconnectReason::LoggedOut)));

    // Outside the window a Logon is refused without a reply.
    s.on_connected(at(1, 20, 0));
    s.on_frame(&peer_msg("A", 4, "98=0|108=30", at(1, 20, 0)), at(1, 20, 0));
    let a = drain(&mut s);
    assert_eq!(sent_types(&a), Vec::<String>::new());
    assert!(a.contains(&Action::Disconnect(DisconnectReason::OutsideSchedule)));
    let seqs = (s.store().next_sender_seq(), s.store().next_target_seq());
    assert_eq!(seqs, (6, 4));

    // Failover at 21:00 (same period, closed): the new active neither resets...
    drop(s);
    let mut s = acceptor(open(tmp.path(), 2).expect("takeover"), office_hours());
    s.on_timer(at(1, 21, 0));
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        (s.store().next_sender_seq(), s.store().next_target_seq()),
        seqs
    );
    assert_eq!(s.store().period(), Some(secs(day1_start)));

    // ...until day 2 starts: one reset, messages of day 1 no longer resendable.
    s.on_timer(at(2, 8, 0));
    let day2 = secs(at(2, 8, 0));
    assert_eq!(
        drain(&mut s),
        vec![Action::Event(SessionEvent::NewPeriod { start: day2 })]
    );
    assert_eq!(
        (s.store().next_sender_seq(), s.store().next_target_seq()),
        (1, 1)
    );
    assert!(s.store().sent_range(1, 100).expect("range").is_empty());
    s.on_timer(at(2, 8, 1));
    assert!(drain(&mut s).is_empty(), "reset once");
    s.on_connected(at(2, 9, 0));
    s.on_frame(&peer_msg("A", 1, "98=0|108=30", at(2, 9, 0)), at(2, 9, 0));
    s.send_app(b"8", b"37=Y\x01", at(2, 9, 1)).expect("send");
    drain(&mut s);
    assert_eq!(s.store().next_sender_seq(), 3);

    // Failover again inside day 2: the successor sees day 2 and does not reset.
    drop(s);
    let mut s = acceptor(open(tmp.path(), 3).expect("takeover 2"), office_hours());
    assert_eq!(s.store().period(), Some(day2));
    s.on_timer(at(2, 9, 5));
    s.on_connected(at(2, 9, 5));
    s.on_frame(&peer_msg("A", 2, "98=0|108=30", at(2, 9, 5)), at(2, 9, 5));
    let a = drain(&mut s);
    assert!(!a
        .iter()
        .any(|x| matches!(x, Action::Event(SessionEvent::NewPeriod { .. }))));
    assert!(a.contains(&Action::Event(SessionEvent::LoggedOn { reset: false })));
    assert_eq!(s.store().next_sender_seq(), 4);
    assert_eq!(s.store().sent_range(1, 10).expect("range").len(), 1);
}

#[test]
fn stale_replica_cannot_reset_at_the_boundary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut old = acceptor(open(tmp.path(), 1).expect("open"), office_hours());
    old.on_timer(at(1, 9, 0));
    drain(&mut old);
    old.send_or_store_app(b"8", b"37=X\x01", Again::No, at(1, 9, 1))
        .expect("store");
    let new = open(tmp.path(), 2).expect("takeover");
    // The old active wakes up in the next period: its reset is a write and is fenced.
    old.on_timer(at(2, 8, 0));
    let a = drain(&mut old);
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::Disconnect(DisconnectReason::Store { fenced: true, .. })
        )),
        "{a:?}"
    );
    drop(new);
    let s = open(tmp.path(), 3).expect("third");
    assert_eq!(s.period(), Some(secs(at(1, 8, 0))));
    assert_eq!(s.next_sender_seq(), 2);
}

// --- transport -------------------------------------------------------------------------

struct Nop;
impl Application for Nop {
    fn on_message(&mut self, _: &mut Outbox, _: usize, _: &AppMessage) {}
}

/// A daily UTC schedule from `start` to `end` seconds from now (whole seconds).
fn window(start: i64, end: i64) -> SessionSchedule {
    let now = DateTime::<Utc>::from(SystemTime::now())
        .with_nanosecond(0)
        .unwrap();
    let t = |d: i64| (now + chrono::Duration::seconds(d)).time();
    SessionSchedule::Daily {
        start: t(start),
        end: t(end),
        tz: chrono_tz::UTC,
        days: Vec::new(),
    }
}

async fn acceptor_engine(schedule: SessionSchedule) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut c = SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor);
    c.schedule = schedule;
    let session = Session::new(c, MemoryStore::new()).expect("session");
    let engine = Engine::new(vec![SessionSlot::new("CLIENT", session)], Some(listener))
        .with_tick(Duration::from_millis(20));
    tokio::spawn(async move { engine.run(&mut Nop, std::future::pending()).await });
    addr
}

fn client(addr: SocketAddr) -> client::Client {
    client::start(ClientConfig {
        connect: vec![addr],
        sender_comp_id: "CLIENT".into(),
        target_comp_id: "GW".into(),
        begin_string: BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(30),
        reconnect_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .expect("client")
}

async fn next_event(c: &mut client::Client, within: Duration) -> Option<ClientEvent> {
    tokio::time::timeout(within, c.events.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_logs_out_at_the_end_and_refuses_logons_outside() {
    // Open now, closing 3 s from now.
    let addr = acceptor_engine(window(-3600, 3)).await;
    let mut c = client(addr);
    let ev = next_event(&mut c, Duration::from_secs(2)).await;
    assert!(
        matches!(ev, Some(ClientEvent::LoggedOn(_))),
        "logon inside the window: {ev:?}"
    );
    let ev = next_event(&mut c, Duration::from_secs(6)).await;
    assert_eq!(
        ev,
        Some(ClientEvent::LoggedOut("LoggedOut".into())),
        "Logout handshake at the end of the window"
    );
    // The client keeps retrying: every Logon is now refused.
    let ev = next_event(&mut c, Duration::from_secs(1)).await;
    assert!(ev.is_none(), "no logon outside the window: {ev:?}");
    c.task.abort();

    // A raw Logon outside the window: the connection is closed, nothing is answered.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut b = MessageBuilder::new(BeginString::Fix44, b"A");
    b.push_str(49, "CLIENT")
        .push_str(56, "GW")
        .push_uint(34, 1)
        .push_time(52, SystemTime::now())
        .push_uint(98, 0)
        .push_uint(108, 30);
    s.write_all(&b.finish().expect("logon"))
        .await
        .expect("write");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .expect("closed within 2 s")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "refused without a reply: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_connects_only_inside_its_schedule() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Opens 2 s from now.
    let mut c = SessionConfig::new(BeginString::Fix44, "GW", "EXCH", Role::Initiator);
    c.schedule = window(2, 3600);
    let session = Session::new(c, MemoryStore::new()).expect("session");
    let mut slot = SessionSlot::new("EXCH", session);
    slot.connect = vec![addr];
    slot.reconnect_interval = Duration::from_millis(100);
    let engine = Engine::new(vec![slot], None).with_tick(Duration::from_millis(20));
    let started = std::time::Instant::now();
    let task = tokio::spawn(async move { engine.run(&mut Nop, std::future::pending()).await });
    let accepted = tokio::time::timeout(Duration::from_secs(6), listener.accept())
        .await
        .expect("connects once the schedule opens")
        .expect("accept");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "connected {waited:?} after start, before the window opened"
    );
    // Its Logon starts the new period at sequence number 1.
    let (mut rd, _wr) = accepted.0.into_split();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), rd.read(&mut buf))
        .await
        .expect("logon")
        .expect("read");
    let m = parse(&buf[..n]).expect("frame");
    assert_eq!(m.msg_type(), b"A");
    assert_eq!(m.get(34), Some(&b"1"[..]));
    task.abort();
}
