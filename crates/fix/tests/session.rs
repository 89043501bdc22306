//! The session state machine fed with byte sequences, alone and as an initiator/acceptor
//! pair, over memory and file stores.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use understudy_fix::codec::{parse, MessageBuilder};
use understudy_fix::session::{
    Action, Again, DisconnectReason, Role, SendError, Session, SessionConfig, SessionEvent, State,
    RESEND_PIECE_BYTES,
};
use understudy_fix::store::{FileStore, MemoryStore, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn secs(n: u64) -> SystemTime {
    t0() + Duration::from_secs(n)
}

/// The counterparty, writing raw messages.
struct Peer {
    bs: BeginString,
    seq: u64,
}

impl Peer {
    fn new(bs: BeginString) -> Self {
        Peer { bs, seq: 1 }
    }

    /// A message with the next MsgSeqNum; `body` is `|`-delimited fields.
    fn msg(&mut self, mt: &str, body: &str, now: SystemTime) -> Vec<u8> {
        let seq = self.seq;
        self.seq += 1;
        self.msg_with_seq(mt, seq, body, now)
    }

    fn msg_with_seq(&self, mt: &str, seq: u64, body: &str, now: SystemTime) -> Vec<u8> {
        let mut b = MessageBuilder::new(self.bs, mt.as_bytes());
        b.push_str(49, "CLIENT")
            .push_str(56, "GW")
            .push_uint(34, seq)
            .push_time(52, now);
        b.push_raw(body.replace('|', "\x01").as_bytes());
        b.finish().expect("encode")
    }
}

/// Wire bytes from `|`-delimited fields without 9 and 10, which are computed; for messages
/// the builder would refuse to write.
fn raw_frame(s: &str) -> Vec<u8> {
    let s = s.replace('|', "\x01");
    let split = s.find('\x01').expect("BeginString") + 1;
    let (bs, body) = s.split_at(split);
    let mut frame = format!("{bs}9={}\x01{body}", body.len()).into_bytes();
    let sum = frame.iter().map(|&b| u32::from(b)).sum::<u32>() % 256;
    frame.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
    frame
}

fn acceptor(bs: BeginString) -> Session<MemoryStore> {
    Session::new(
        SessionConfig::new(bs, "GW", "CLIENT", Role::Acceptor),
        MemoryStore::new(),
    )
    .expect("session")
}

fn initiator(bs: BeginString) -> Session<MemoryStore> {
    Session::new(
        SessionConfig::new(bs, "CLIENT", "GW", Role::Initiator),
        MemoryStore::new(),
    )
    .expect("session")
}

fn actions<S: SessionStore>(s: &mut Session<S>) -> Vec<Action> {
    s.drain().collect()
}

fn sent(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn field(frame: &[u8], tag: u32) -> Option<String> {
    parse(frame)
        .expect("our own frames parse")
        .get_str(tag)
        .map(str::to_owned)
}

fn summary(frame: &[u8]) -> String {
    format!(
        "{}:{}",
        field(frame, 35).unwrap_or_default(),
        field(frame, 34).unwrap_or_default()
    )
}

fn logged_on(bs: BeginString) -> (Session<MemoryStore>, Peer) {
    let mut s = acceptor(bs);
    let mut peer = Peer::new(bs);
    s.on_connected(t0());
    s.on_frame(&peer.msg("A", "98=0|108=30|", t0()), t0());
    let a = actions(&mut s);
    assert!(a.contains(&Action::Event(SessionEvent::LoggedOn { reset: false })));
    assert_eq!(s.state(), State::Active);
    (s, peer)
}

#[test]
fn acceptor_logon() {
    let (s, _) = logged_on(BeginString::Fix44);
    assert_eq!(s.store().next_target_seq(), 2);
    assert_eq!(s.store().next_sender_seq(), 2);
    assert_eq!(s.heartbeat_interval(), Duration::from_secs(30));
}

#[test]
fn first_message_must_be_logon() {
    let mut s = acceptor(BeginString::Fix44);
    let mut peer = Peer::new(BeginString::Fix44);
    s.on_connected(t0());
    s.on_frame(&peer.msg("D", "11=x|", t0()), t0());
    let a = actions(&mut s);
    assert!(sent(&a).is_empty());
    assert!(matches!(
        a.last(),
        Some(Action::Disconnect(DisconnectReason::Protocol(_)))
    ));
}

#[test]
fn logon_timeout() {
    let mut s = acceptor(BeginString::Fix44);
    s.on_connected(t0());
    s.on_timer(secs(5));
    assert!(actions(&mut s).is_empty());
    s.on_timer(secs(10));
    assert_eq!(
        actions(&mut s),
        vec![Action::Disconnect(DisconnectReason::LogonTimeout)]
    );
}

/// HeartBtInt values a peer may send that are outside the documented range
/// (`understudy_fix::session::HEART_BT_INT_RANGE`): each gets a Logout naming the field, then
/// a disconnect, and no later tick panics (9999999999999999999 s used to overflow `hb * 12`).
#[test]
fn out_of_range_heart_bt_int_is_logged_out_not_a_panic() {
    for hb in [
        "9999999999999999999",
        "18446744073709551615",
        "4294967296",
        "0",
        "3601",
    ] {
        let mut s = acceptor(BeginString::Fix44);
        let mut peer = Peer::new(BeginString::Fix44);
        s.on_connected(t0());
        s.on_frame(&peer.msg("A", &format!("98=0|108={hb}|"), t0()), t0());
        for t in [1, 100, 10_000, 1_000_000] {
            s.on_timer(secs(t));
        }
        let a = actions(&mut s);
        let out = sent(&a);
        assert_eq!(out.len(), 1, "HeartBtInt={hb}: {a:?}");
        assert_eq!(field(&out[0], 35).as_deref(), Some("5"), "HeartBtInt={hb}");
        let text = field(&out[0], 58).unwrap_or_default();
        assert!(text.contains("HeartBtInt"), "HeartBtInt={hb}: {text}");
        assert!(
            matches!(
                a.last(),
                Some(Action::Disconnect(DisconnectReason::Protocol(_)))
            ),
            "HeartBtInt={hb}: {a:?}"
        );
        assert!(!a.contains(&Action::Event(SessionEvent::LoggedOn { reset: false })));
        assert_eq!(s.state(), State::Disconnected);
    }
    // The bounds themselves are accepted.
    for hb in [1, 3600] {
        let mut s = acceptor(BeginString::Fix44);
        let mut peer = Peer::new(BeginString::Fix44);
        s.on_connected(t0());
        s.on_frame(&peer.msg("A", &format!("98=0|108={hb}|"), t0()), t0());
        assert_eq!(s.state(), State::Active, "HeartBtInt={hb}");
        s.on_timer(secs(100_000));
        assert_eq!(s.state(), State::Disconnected);
    }
}

/// Messages that arrive ahead of a gap wait in a queue; a peer that keeps sending them without
/// ever filling the gap is logged out with the reason once the queue bound is reached, instead
/// of growing the queue without limit.
#[test]
fn out_of_order_queue_is_bounded() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    peer.seq = 10; // 2..=9 never come
    let limit = understudy_fix::session::MAX_QUEUED_MESSAGES;
    let mut ended = None;
    for i in 0..limit + 10 {
        s.on_frame(&peer.msg("D", "11=x|", secs(1)), secs(1));
        let a = actions(&mut s);
        if let Some(Action::Disconnect(r)) = a.last() {
            let out = sent(&a);
            let logout = out.last().expect("a Logout before the disconnect");
            assert_eq!(field(logout, 35).as_deref(), Some("5"));
            assert!(field(logout, 58)
                .unwrap_or_default()
                .contains("out of sequence"));
            ended = Some((i, r.clone()));
            break;
        }
    }
    let (i, reason) = ended.expect("the session ends once the queue is full");
    assert_eq!(i, limit, "ended after {i} queued messages");
    assert!(
        matches!(reason, DisconnectReason::Protocol(_)),
        "{reason:?}"
    );
}

/// Numbers a peer controls at their extremes (MsgSeqNum, NewSeqNo, BeginSeqNo/EndSeqNo near
/// u64::MAX) are handled without a panic.
#[test]
fn extreme_sequence_numbers_do_not_panic() {
    let max = u64::MAX;
    let (mut s, peer) = logged_on(BeginString::Fix44);
    s.on_frame(
        &peer.msg_with_seq("2", 2, &format!("7={max}|16={max}|"), secs(1)),
        secs(1),
    );
    s.on_frame(
        &peer.msg_with_seq("4", 3, &format!("123=Y|36={max}|"), secs(1)),
        secs(1),
    );
    s.on_frame(&peer.msg_with_seq("0", max, "", secs(1)), secs(1));
    s.on_frame(
        &peer.msg_with_seq("4", max, &format!("36={max}|"), secs(1)),
        secs(1),
    );
    s.on_timer(secs(2));
    let _ = actions(&mut s);
    let (mut s, peer) = logged_on(BeginString::Fix44);
    s.on_frame(&peer.msg_with_seq("D", max, "11=x|", secs(1)), secs(1));
    s.on_frame(
        &peer.msg_with_seq("2", max - 1, "7=1|16=0|", secs(1)),
        secs(1),
    );
    s.on_timer(secs(2));
    let _ = actions(&mut s);
}

/// A report forwarded again after a failover goes out under the next MsgSeqNum with
/// PossDupFlag=Y, PossResend=Y and an OrigSendingTime never after its SendingTime, and a
/// receiving session delivers it in sequence, flagged, to its application.
#[test]
fn a_report_forwarded_again_carries_poss_dup_flag() {
    let (mut gw, mut client_side) = logged_on(BeginString::Fix44);
    let _ = client_side.msg("0", "", secs(1));
    let body = b"37=O1\x0111=o1\x0117=E1\x01150=0\x0139=0\x01";
    // The original came from a clock ahead of ours: clamped to our SendingTime.
    for (orig, want) in [
        (Some(secs(3)), "20231114-22:13:23.000"),
        (Some(secs(50)), "20231114-22:13:30.000"),
        (None, "20231114-22:13:30.000"),
    ] {
        gw.send_or_store_app(
            b"8",
            body,
            Again::PossDup {
                orig_sending_time: orig,
            },
            secs(10),
        )
        .expect("send");
        let f = sent(&actions(&mut gw)).pop().expect("sent");
        assert_eq!(field(&f, 43).as_deref(), Some("Y"), "{}", summary(&f));
        assert_eq!(field(&f, 97).as_deref(), Some("Y"));
        assert_eq!(field(&f, 122).as_deref(), Some(want));
    }
    gw.send_or_store_app(b"8", body, Again::PossResend, secs(11))
        .expect("send");
    let f = sent(&actions(&mut gw)).pop().expect("sent");
    assert_eq!((field(&f, 43), field(&f, 97).as_deref()), (None, Some("Y")));

    // The receiving side: an initiator that takes it in sequence, PossDupFlag and all.
    let mut client = initiator(BeginString::Fix44);
    let mut gw = acceptor(BeginString::Fix44);
    client.on_connected(t0());
    gw.on_connected(t0());
    for f in sent(&actions(&mut client)) {
        gw.on_frame(&f, t0());
    }
    for f in sent(&actions(&mut gw)) {
        client.on_frame(&f, t0());
    }
    assert_eq!(client.state(), State::Active);
    let _ = actions(&mut client);
    gw.send_or_store_app(
        b"8",
        body,
        Again::PossDup {
            orig_sending_time: Some(t0()),
        },
        secs(1),
    )
    .expect("send");
    for f in sent(&actions(&mut gw)) {
        client.on_frame(&f, secs(1));
    }
    match &actions(&mut client)[..] {
        [Action::Deliver(m)] => assert!(m.poss_dup, "delivered without the flag"),
        other => panic!("not delivered in sequence: {other:?}"),
    }
}

#[test]
fn initiator_and_acceptor_talk() {
    let mut init = initiator(BeginString::Fix42);
    let mut acc = acceptor(BeginString::Fix42);
    init.on_connected(t0());
    acc.on_connected(t0());
    // Pump until quiet.
    let pump = |init: &mut Session<MemoryStore>, acc: &mut Session<MemoryStore>, now| {
        let mut delivered = Vec::new();
        for _ in 0..10 {
            let a = actions(init);
            let b = actions(acc);
            if a.is_empty() && b.is_empty() {
                break;
            }
            for f in sent(&a) {
                acc.on_frame(&f, now);
            }
            for f in sent(&b) {
                init.on_frame(&f, now);
            }
            delivered.extend(b.into_iter().filter(|x| matches!(x, Action::Deliver(_))));
        }
        delivered
    };
    pump(&mut init, &mut acc, t0());
    assert_eq!((init.state(), acc.state()), (State::Active, State::Active));

    let seq = init
        .send_app(b"D", b"11=ord-1\x0155=EUR/USD\x01", secs(1))
        .expect("send");
    assert_eq!(seq, 2);
    let delivered = pump(&mut init, &mut acc, secs(1));
    match &delivered[..] {
        [Action::Deliver(m)] => {
            assert_eq!(m.seq_num, 2);
            assert_eq!(field(&m.frame, 11).as_deref(), Some("ord-1"));
        }
        other => panic!("{other:?}"),
    }

    // Heartbeats keep both sides alive.
    for t in (31..200).step_by(10) {
        init.on_timer(secs(t));
        acc.on_timer(secs(t));
        pump(&mut init, &mut acc, secs(t));
    }
    assert_eq!((init.state(), acc.state()), (State::Active, State::Active));

    // Logout handshake.
    init.logout(Some("bye"), secs(200));
    assert_eq!(init.state(), State::LogoutSent);
    pump(&mut init, &mut acc, secs(200));
    assert_eq!(
        (init.state(), acc.state()),
        (State::Disconnected, State::Disconnected)
    );
}

#[test]
fn heartbeat_test_request_and_timeout() {
    let (mut s, _peer) = logged_on(BeginString::Fix44);
    s.on_timer(secs(29));
    assert!(actions(&mut s).is_empty());
    s.on_timer(secs(30));
    let a = actions(&mut s);
    assert_eq!(
        sent(&a).iter().map(|f| summary(f)).collect::<Vec<_>>(),
        ["0:2"]
    );
    s.on_timer(secs(36));
    let a = sent(&actions(&mut s));
    assert_eq!(a.iter().map(|f| summary(f)).collect::<Vec<_>>(), ["1:3"]);
    assert_eq!(field(&a[0], 112).as_deref(), Some("TEST1"));
    s.on_timer(secs(72));
    let a = actions(&mut s);
    assert_eq!(
        a.last(),
        Some(&Action::Disconnect(DisconnectReason::HeartbeatTimeout))
    );
}

#[test]
fn test_request_is_answered() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.on_frame(&peer.msg("1", "112=abc|", secs(1)), secs(1));
    let a = sent(&actions(&mut s));
    assert_eq!(a.len(), 1);
    assert_eq!(field(&a[0], 35).as_deref(), Some("0"));
    assert_eq!(field(&a[0], 112).as_deref(), Some("abc"));
}

#[test]
fn gap_is_requested_queued_and_filled() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    peer.seq = 5; // 2, 3, 4 lost
    s.on_frame(&peer.msg("D", "11=five|", secs(1)), secs(1));
    let a = actions(&mut s);
    let out = sent(&a);
    assert_eq!(out.len(), 1);
    assert_eq!(field(&out[0], 35).as_deref(), Some("2"));
    assert_eq!(field(&out[0], 7).as_deref(), Some("2"));
    assert_eq!(field(&out[0], 16).as_deref(), Some("0"));
    assert!(!a.iter().any(|x| matches!(x, Action::Deliver(_))));

    // Another early message does not trigger a second request.
    s.on_frame(&peer.msg("D", "11=six|", secs(1)), secs(1));
    assert!(sent(&actions(&mut s)).is_empty());

    // Resent 2, gap fill 3 -> 4 (admin), resent 4; then 5 and 6 come out of the queue.
    let resend = |peer: &Peer, mt: &str, seq, body: &str| {
        peer.msg_with_seq(
            mt,
            seq,
            &format!("43=Y|122=20231114-22:13:20|{body}"),
            secs(2),
        )
    };
    s.on_frame(&resend(&peer, "D", 2, "11=two|"), secs(2));
    let gf = peer.msg_with_seq("4", 3, "43=Y|123=Y|36=4|", secs(2));
    s.on_frame(&gf, secs(2));
    s.on_frame(&resend(&peer, "D", 4, "11=four|"), secs(2));
    let delivered: Vec<String> = actions(&mut s)
        .into_iter()
        .filter_map(|a| match a {
            Action::Deliver(m) => field(&m.frame, 11),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, ["two", "four", "five", "six"]);
    assert_eq!(s.store().next_target_seq(), 7);
}

#[test]
fn seq_too_low() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.on_frame(&peer.msg("D", "11=a|", secs(1)), secs(1));
    actions(&mut s);
    // Duplicate with PossDupFlag: ignored.
    let dup = peer.msg_with_seq("D", 2, "43=Y|122=20231114-22:13:20|11=a|", secs(2));
    s.on_frame(&dup, secs(2));
    assert_eq!(
        actions(&mut s),
        vec![Action::Event(SessionEvent::DuplicateIgnored(2))]
    );
    // Without it: Logout and disconnect.
    s.on_frame(&peer.msg_with_seq("D", 2, "11=a|", secs(3)), secs(3));
    let a = actions(&mut s);
    let out = sent(&a);
    assert_eq!(field(&out[0], 35).as_deref(), Some("5"));
    assert!(field(&out[0], 58).unwrap_or_default().contains("too low"));
    assert_eq!(
        a.last(),
        Some(&Action::Disconnect(DisconnectReason::SeqTooLow {
            expected: 3,
            received: 2
        }))
    );
}

/// A Logon below the number expected gets a Logout that says so, then the close (session
/// test case 2c; QuickFIX does the same), PossDupFlag or not.
#[test]
fn a_logon_with_msg_seq_num_too_low_gets_a_logout_saying_so() {
    for poss_dup in ["", "43=Y|122=20231114-22:13:20|"] {
        let (mut s, mut peer) = logged_on(BeginString::Fix44);
        s.on_frame(&peer.msg("D", "11=a|", secs(1)), secs(1));
        s.on_frame(&peer.msg("D", "11=b|", secs(1)), secs(1));
        actions(&mut s);
        s.on_disconnected(secs(2));
        s.on_connected(secs(3));
        // The counterparty lost its store: it starts again from 1.
        let logon = peer.msg_with_seq("A", 1, &format!("{poss_dup}98=0|108=30|"), secs(3));
        s.on_frame(&logon, secs(3));
        let a = actions(&mut s);
        let out = sent(&a);
        assert_eq!(out.len(), 1, "{poss_dup:?}: {a:?}");
        assert_eq!(field(&out[0], 35).as_deref(), Some("5"));
        assert_eq!(
            field(&out[0], 58).as_deref(),
            Some("MsgSeqNum too low, expecting 4 but received 1")
        );
        assert_eq!(
            a.last(),
            Some(&Action::Disconnect(DisconnectReason::SeqTooLow {
                expected: 4,
                received: 1
            }))
        );
        assert_ne!(s.state(), State::Active, "{poss_dup:?}: logged on");
    }
}

/// A SequenceReset whose GapFillFlag is neither Y nor N is rejected in its turn, never taken
/// as a reset that skips messages: sent ahead of a gap, it is queued and the gap asked for.
#[test]
fn a_sequence_reset_with_a_malformed_gap_fill_flag_skips_nothing() {
    let (mut s, peer) = logged_on(BeginString::Fix44);
    // Expected 2; the reset arrives as 5, moving to 9, flagged "y".
    s.on_frame(&peer.msg_with_seq("4", 5, "123=y|36=9|", secs(1)), secs(1));
    let a = actions(&mut s);
    assert_eq!(s.store().next_target_seq(), 2, "the target moved: {a:?}");
    let out = sent(&a);
    assert_eq!(out.len(), 1, "{a:?}");
    assert_eq!(
        field(&out[0], 35).as_deref(),
        Some("2"),
        "not a ResendRequest"
    );
    // In sequence: rejected, its number consumed, nothing skipped.
    let (mut s, peer) = logged_on(BeginString::Fix44);
    s.on_frame(&peer.msg_with_seq("4", 2, "123=1|36=9|", secs(1)), secs(1));
    let out = sent(&actions(&mut s));
    assert_eq!(out.len(), 1);
    assert_eq!(field(&out[0], 35).as_deref(), Some("3"));
    assert_eq!(field(&out[0], 371).as_deref(), Some("123"));
    assert_eq!(field(&out[0], 373).as_deref(), Some("6"));
    assert_eq!(s.store().next_target_seq(), 3);
}

/// A message resent after a failover carries OrigSendingTime never later than its
/// SendingTime, though the machine that first sent it had a clock ahead of this one.
#[test]
fn a_resend_never_carries_an_orig_sending_time_after_its_sending_time() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    // Stored at secs(100) (another machine's clock), resent at secs(50) here.
    s.send_app(b"8", b"37=x\x01", secs(100)).expect("2");
    actions(&mut s);
    s.on_frame(&peer.msg("2", "7=2|16=0|", secs(50)), secs(50));
    let out = sent(&actions(&mut s));
    assert_eq!(out.len(), 1);
    assert_eq!(field(&out[0], 43).as_deref(), Some("Y"));
    assert_eq!(field(&out[0], 122), field(&out[0], 52));
}

#[test]
fn resend_request_is_served_from_the_store() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.send_app(b"D", b"11=two\x01", secs(1)).expect("2");
    s.send_app(b"D", b"11=three\x01", secs(2)).expect("3");
    s.on_timer(secs(40)); // test request 4 (which also resets the heartbeat timer)
    s.on_frame(&peer.msg("0", "112=TEST1|", secs(40)), secs(40));
    s.send_app(b"8", b"37=x\x01", secs(41)).expect("5");
    actions(&mut s);
    assert_eq!(s.store().next_sender_seq(), 6);

    s.on_frame(&peer.msg("2", "7=2|16=0|", secs(42)), secs(42));
    let a = actions(&mut s);
    let out = sent(&a);
    let kinds: Vec<String> = out.iter().map(|f| summary(f)).collect();
    assert_eq!(kinds, ["D:2", "D:3", "4:4", "8:5"]);
    for f in &out {
        assert_eq!(field(f, 43).as_deref(), Some("Y"));
        assert!(field(f, 122).is_some());
    }
    assert_eq!(
        field(&out[0], 122).as_deref(),
        Some("20231114-22:13:21.000")
    );
    assert_eq!(field(&out[0], 11).as_deref(), Some("two"));
    assert_eq!(field(&out[2], 123).as_deref(), Some("Y"));
    assert_eq!(field(&out[2], 36).as_deref(), Some("5"));
    // Resends reuse old numbers.
    assert_eq!(s.store().next_sender_seq(), 6);
}

/// Every number `frames` covers (a GapFill covers its MsgSeqNum up to NewSeqNo - 1), in
/// order.
fn covered(frames: &[Vec<u8>]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for f in frames {
        let seq: u64 = field(f, 34).and_then(|v| v.parse().ok()).expect("34");
        if field(f, 35).as_deref() == Some("4") {
            let new: u64 = field(f, 36).and_then(|v| v.parse().ok()).expect("36");
            seqs.extend(seq..new);
        } else {
            seqs.push(seq);
        }
    }
    seqs
}

/// A ResendRequest for more than a piece is answered a piece at a time, each when the
/// transport asks (`continue_resend`): what one piece queues stays near
/// [`RESEND_PIECE_BYTES`], whatever the range. Messages we number meanwhile (a heartbeat
/// answering a TestRequest, an application message) follow the last piece, never sit
/// between pieces; a second request during the answer joins it; and the answer as a whole
/// covers every number once, in order.
#[test]
fn a_long_resend_is_answered_in_pieces_with_new_messages_behind_it() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    let pad = "x".repeat(200);
    let stored = 3000u64; // about 3 pieces and a half
    for i in 0..stored {
        if i % 100 == 50 {
            // Its Heartbeat answer: a number with nothing stored.
            s.on_frame(&peer.msg("1", "112=hb|", secs(40 + i)), secs(40 + i));
        }
        s.send_app(
            b"8",
            format!("37=o{i}\x0158={pad}\x01").as_bytes(),
            secs(40 + i),
        )
        .expect("stored");
    }
    actions(&mut s);
    let last = s.store().next_sender_seq() - 1;
    let now = secs(5000);
    s.on_frame(&peer.msg("2", "7=2|16=0|", now), now);
    let first = actions(&mut s);
    let mut answer = sent(&first);
    let bytes: usize = answer.iter().map(Vec::len).sum();
    // A piece reads that much of the store; resent, each message gains PossDupFlag and
    // OrigSendingTime (about 30 bytes here).
    assert!(
        bytes <= RESEND_PIECE_BYTES * 5 / 4,
        "one piece queued {bytes} bytes"
    );
    assert!(s.resending(), "the range is longer than one piece");
    assert!(!first
        .iter()
        .any(|a| matches!(a, Action::Event(SessionEvent::ResendServed { .. }))));
    // Numbered during the answer: a heartbeat for a TestRequest and a report.
    s.on_frame(&peer.msg("1", "112=T1|", now), now);
    let seq_new = s.send_app(b"8", b"37=new\x01", now).expect("stored");
    assert!(sent(&actions(&mut s)).is_empty(), "sent between pieces");
    assert!(s.bytes_behind_resend() > 0);
    // Asked again from the start (the counterparty gave up waiting): joined, and what is
    // already on its way is not queued twice.
    s.on_frame(&peer.msg("2", "7=2|16=0|", now), now);
    assert!(sent(&actions(&mut s)).is_empty());
    let mut pieces = 1;
    let mut served = None;
    while s.resending() {
        s.continue_resend(now);
        let a = actions(&mut s);
        for e in &a {
            if let Action::Event(SessionEvent::ResendServed { begin, end, resent }) = e {
                served = Some((*begin, *end, *resent));
            }
        }
        answer.extend(sent(&a));
        pieces += 1;
        assert!(pieces < 100, "the answer does not end");
    }
    assert!(pieces >= 4, "{pieces} pieces");
    assert_eq!(served, Some((2, last, stored as usize)));
    assert_eq!(s.bytes_behind_resend(), 0);
    let resent = &answer[answer.len() - 2..];
    let tail: Vec<String> = resent.iter().map(|f| summary(f)).collect();
    assert_eq!(
        tail,
        [format!("0:{}", last + 1), format!("8:{seq_new}")],
        "what was numbered meanwhile follows the answer, in its order"
    );
    assert_eq!(field(&resent[0], 112).as_deref(), Some("T1"));
    assert_eq!(field(&resent[1], 43), None, "a new message is no resend");
    let expected: Vec<u64> = (2..=seq_new).collect();
    assert_eq!(covered(&answer), expected);
    for f in &answer[..answer.len() - 2] {
        assert_eq!(field(f, 43).as_deref(), Some("Y"), "{}", summary(f));
    }
    // Nothing more after the end.
    s.continue_resend(now);
    assert!(actions(&mut s).is_empty());
}

/// A ResendRequest that arrives ahead of a gap is answered at once (or both sides could wait
/// for each other); when the gap is filled and its turn comes, it only advances the number
/// expected: answered again, the counterparty got the whole range twice (FIX test case 20,
/// QuickFIX's `nextQueued`).
#[test]
fn a_resend_request_answered_ahead_of_a_gap_is_not_answered_again_in_its_turn() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.send_app(b"8", b"37=a\x01", secs(1)).expect("2");
    s.send_app(b"8", b"37=b\x01", secs(1)).expect("3");
    actions(&mut s);
    peer.seq = 3; // its 2 is lost
    s.on_frame(&peer.msg("2", "7=2|16=0|", secs(2)), secs(2));
    let first: Vec<String> = sent(&actions(&mut s)).iter().map(|f| summary(f)).collect();
    assert_eq!(
        first,
        ["8:2", "8:3", "2:4"],
        "answered, then asked for its 2"
    );
    let fill = peer.msg_with_seq("D", 2, "43=Y|122=20231114-22:13:20|11=x|", secs(3));
    s.on_frame(&fill, secs(3));
    let a = actions(&mut s);
    let again: Vec<String> = sent(&a).iter().map(|f| summary(f)).collect();
    assert!(again.is_empty(), "answered twice: {again:?}");
    assert_eq!(s.store().next_target_seq(), 4);
}

/// A ResendRequest whose range is missing or not numbers is rejected naming the first field
/// at fault and why: missing (reason 1) or not a number (reason 6).
#[test]
fn a_malformed_resend_request_is_rejected_naming_the_field_at_fault() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    for (body, tag, reason) in [
        ("7=abc|16=0|", "7", "6"),
        ("16=0|", "7", "1"),
        ("7=1|", "16", "1"),
        ("7=1|16=x|", "16", "6"),
    ] {
        s.on_frame(&peer.msg("2", body, secs(1)), secs(1));
        let out = sent(&actions(&mut s));
        assert_eq!(out.len(), 1, "{body}");
        assert_eq!(field(&out[0], 35).as_deref(), Some("3"), "{body}");
        assert_eq!(field(&out[0], 371).as_deref(), Some(tag), "{body}");
        assert_eq!(field(&out[0], 373).as_deref(), Some(reason), "{body}");
    }
    assert_eq!(s.state(), State::Active);
}

/// A logged-on acceptor that has sent `n` reports of about 550 bytes (numbers 2..=n+1),
/// their output drained: a backlog to answer in several pieces.
fn with_backlog(n: u64) -> (Session<MemoryStore>, Peer) {
    let (mut s, peer) = logged_on(BeginString::Fix44);
    let pad = "x".repeat(500);
    for i in 0..n {
        s.send_app(b"8", format!("58={pad}\x01").as_bytes(), secs(1 + i))
            .expect("stored");
    }
    actions(&mut s);
    (s, peer)
}

/// A session that ends during an answer (here the counterparty logs out) sends nothing
/// numbered past what the answer reached, its own Logout included: a QuickFIX counterparty
/// takes a Logout's number as the next one expected without checking it, and would skip the
/// first number the answer did not reach (review 23). It closes, and forgets the answer.
#[test]
fn a_session_ending_during_a_resend_answer_sends_nothing_past_it() {
    let (mut s, mut peer) = with_backlog(1000);
    s.on_frame(&peer.msg("2", "7=1|16=0|", secs(2000)), secs(2000));
    actions(&mut s);
    assert!(s.resending());
    s.on_frame(&peer.msg("5", "", secs(2000)), secs(2000));
    let a = actions(&mut s);
    let out: Vec<String> = sent(&a).iter().map(|f| summary(f)).collect();
    assert!(out.is_empty(), "sent past the answer: {out:?}");
    assert!(matches!(
        a.last(),
        Some(Action::Disconnect(DisconnectReason::LoggedOut))
    ));
    assert!(!s.resending());
    assert_eq!(s.bytes_behind_resend(), 0);
    s.continue_resend(secs(2001));
    assert!(actions(&mut s).is_empty());
}

/// Our own Logout during an answer (an operator's, or the schedule's end) waits for the
/// answer and goes out after its last piece, in sequence.
#[test]
fn our_logout_during_a_resend_answer_follows_the_answer() {
    let (mut s, mut peer) = with_backlog(1000);
    let last = s.store().next_sender_seq() - 1;
    s.on_frame(&peer.msg("2", "7=1|16=0|", secs(2000)), secs(2000));
    let mut out = sent(&actions(&mut s));
    s.logout(Some("end of day"), secs(2000));
    assert!(
        sent(&actions(&mut s)).is_empty(),
        "the Logout went between pieces"
    );
    while s.resending() {
        s.continue_resend(secs(2000));
        out.extend(sent(&actions(&mut s)));
    }
    let logout = out.last().expect("frames");
    assert_eq!(summary(logout), format!("5:{}", last + 1));
    let expected: Vec<u64> = (1..=last + 1).collect();
    assert_eq!(covered(&out), expected);
}

/// Messages the application sends during an answer join it when nothing else waits: the
/// answer sends them from the store when it reaches them, for the first time (no
/// PossDupFlag: a new order marked as a possible duplicate is one venues reject, review 24),
/// and they hold no memory however long the answer runs (held in memory, a busy session
/// passed the write-queue bound and a counterparty reading as fast as it could was dropped
/// as a slow consumer, review 23).
#[test]
fn live_messages_during_an_answer_join_it_and_hold_no_memory() {
    let (mut s, mut peer) = with_backlog(1000);
    s.on_frame(&peer.msg("2", "7=1|16=0|", secs(2000)), secs(2000));
    let mut out = sent(&actions(&mut s));
    let mut live = Vec::new();
    while s.resending() {
        // A report for every piece, sent while the answer runs.
        live.push(
            s.send_app(b"8", b"37=live\x01", secs(2000))
                .expect("stored"),
        );
        assert_eq!(s.bytes_behind_resend(), 0);
        s.continue_resend(secs(2000));
        out.extend(sent(&actions(&mut s)));
    }
    let last = *live.last().expect("sent during the answer");
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(covered(&out), expected);
    for seq in live {
        let f = out
            .iter()
            .find(|f| field(f, 34).and_then(|v| v.parse::<u64>().ok()) == Some(seq))
            .expect("the live message went out");
        assert_eq!(field(f, 37).as_deref(), Some("live"));
        assert_eq!(field(f, 43), None, "a first sending is no resend");
        assert_eq!(field(f, 122), None);
    }
}

/// An answer to an older range (a counterparty asking in chunks) does not take live messages
/// in: it would have to send everything between again to reach them. They wait behind it.
#[test]
fn live_messages_do_not_join_an_answer_to_an_older_range() {
    let (mut s, mut peer) = with_backlog(2000);
    s.on_frame(&peer.msg("2", "7=1|16=1000|", secs(3000)), secs(3000));
    let mut out = sent(&actions(&mut s));
    assert!(s.resending());
    let live = s
        .send_app(b"8", b"37=live\x01", secs(3000))
        .expect("stored");
    assert!(s.bytes_behind_resend() > 0, "held, not joined");
    while s.resending() {
        s.continue_resend(secs(3000));
        out.extend(sent(&actions(&mut s)));
    }
    let numbers = covered(&out);
    assert_eq!(numbers.last(), Some(&live));
    assert_eq!(
        numbers[..numbers.len() - 1],
        (1..=1000).collect::<Vec<u64>>()[..]
    );
    let f = out.last().expect("the live message");
    assert_eq!(field(f, 43), None);
}

/// A joined message already sent for the first time and asked for again (a request going
/// back below the running answer) goes out as a resend, PossDupFlag=Y: never twice as new.
#[test]
fn a_joined_message_asked_for_again_is_a_resend() {
    let (mut s, mut peer) = with_backlog(1000);
    s.on_frame(&peer.msg("2", "7=100|16=0|", secs(2000)), secs(2000));
    let mut out = sent(&actions(&mut s));
    // More than a piece of live messages joins the answer.
    let pad = "x".repeat(500);
    let live: Vec<u64> = (0..1000)
        .map(|_| {
            s.send_app(
                b"8",
                format!("37=live\x0158={pad}\x01").as_bytes(),
                secs(2000),
            )
            .expect("stored")
        })
        .collect();
    let first = live[0];
    while out.iter().all(|f| field(f, 34) != Some(first.to_string())) {
        assert!(s.resending());
        s.continue_resend(secs(2000));
        out.extend(sent(&actions(&mut s)));
    }
    assert!(s.resending(), "still answering");
    // Asked again from below the answer's start: the first live message comes again.
    s.on_frame(&peer.msg("2", "7=1|16=0|", secs(2000)), secs(2000));
    out.extend(sent(&actions(&mut s)));
    while s.resending() {
        s.continue_resend(secs(2000));
        out.extend(sent(&actions(&mut s)));
    }
    let copies: Vec<Option<String>> = out
        .iter()
        .filter(|f| field(f, 34) == Some(first.to_string()))
        .map(|f| field(f, 43))
        .collect();
    assert_eq!(copies.first(), Some(&None), "first sent as new");
    assert!(copies.len() >= 2, "asked again, sent again");
    assert!(
        copies[1..].iter().all(|c| c.as_deref() == Some("Y")),
        "sent twice as new: {copies:?}"
    );
}

/// A second request reaching below the running answer gets those numbers too.
#[test]
fn a_second_request_below_the_running_answer_is_answered_too() {
    let (mut s, mut peer) = with_backlog(1000);
    s.on_frame(&peer.msg("2", "7=500|16=0|", secs(2000)), secs(2000));
    let mut out = sent(&actions(&mut s));
    s.on_frame(&peer.msg("2", "7=100|16=0|", secs(2000)), secs(2000));
    out.extend(sent(&actions(&mut s)));
    while s.resending() {
        s.continue_resend(secs(2000));
        out.extend(sent(&actions(&mut s)));
    }
    let got: std::collections::BTreeSet<u64> = covered(&out).into_iter().collect();
    assert!(
        (100..=1001).all(|n| got.contains(&n)),
        "numbers 100..=1001 not all answered"
    );
}

#[test]
fn malformed_message_is_rejected_with_reason() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    let _ = &mut peer;
    s.on_frame(
        &raw_frame("8=FIX.4.4|35=D|49=CLIENT|56=GW|34=2|52=20231114-22:13:21|11=|"),
        secs(1),
    );
    let out = sent(&actions(&mut s));
    assert_eq!(out.len(), 1);
    assert_eq!(field(&out[0], 35).as_deref(), Some("3"));
    assert_eq!(field(&out[0], 45).as_deref(), Some("2"));
    assert_eq!(field(&out[0], 371).as_deref(), Some("11"));
    assert_eq!(field(&out[0], 372).as_deref(), Some("D"));
    assert_eq!(field(&out[0], 373).as_deref(), Some("4"));
    assert_eq!(s.store().next_target_seq(), 3);
    assert_eq!(s.state(), State::Active);
}

#[test]
fn fix42_reject_omits_reasons_it_does_not_define() {
    let (mut s, mut peer) = logged_on(BeginString::Fix42);
    // A header tag repeated: reason 13 exists only from FIX 4.3 on.
    let _ = &mut peer;
    let frame =
        raw_frame("8=FIX.4.2|35=D|49=CLIENT|56=GW|34=2|49=CLIENT|52=20231114-22:13:21|11=a|");
    s.on_frame(&frame, secs(1));
    let out = sent(&actions(&mut s));
    assert_eq!(field(&out[0], 35).as_deref(), Some("3"));
    assert_eq!(field(&out[0], 373), None);
    assert!(field(&out[0], 58).is_some());
}

#[test]
fn comp_id_problem_rejects_and_logs_out() {
    let (mut s, peer) = logged_on(BeginString::Fix44);
    let mut b = MessageBuilder::new(BeginString::Fix44, b"D");
    b.push_str(49, "INTRUDER")
        .push_str(56, "GW")
        .push_uint(34, peer.seq)
        .push_time(52, secs(1))
        .push_str(11, "x");
    s.on_frame(&b.finish().expect("encode"), secs(1));
    let a = actions(&mut s);
    let out = sent(&a);
    assert_eq!(
        out.iter()
            .map(|f| field(f, 35).unwrap_or_default())
            .collect::<Vec<_>>(),
        ["3", "5"]
    );
    assert_eq!(field(&out[0], 373).as_deref(), Some("9"));
    assert!(matches!(a.last(), Some(Action::Disconnect(_))));
}

#[test]
fn sending_time_accuracy() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    let old = peer.msg("D", "11=x|", secs(0));
    s.on_frame(&old, secs(500));
    let out = sent(&actions(&mut s));
    assert_eq!(field(&out[0], 373).as_deref(), Some("10"));
    assert_eq!(field(&out[1], 35).as_deref(), Some("5"));
}

#[test]
fn poss_dup_without_orig_sending_time_is_rejected() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.on_frame(&peer.msg("D", "43=Y|11=x|", secs(1)), secs(1));
    let out = sent(&actions(&mut s));
    assert_eq!(field(&out[0], 373).as_deref(), Some("1"));
    assert_eq!(field(&out[0], 371).as_deref(), Some("122"));
    // Too low as well (test case 2g: 2 again after 2): rejected, not ignored, and the
    // number expected stays where it was.
    assert_eq!(s.store().next_target_seq(), 3);
    let dup = peer.msg_with_seq("D", 2, "43=Y|11=x|", secs(2));
    s.on_frame(&dup, secs(2));
    let out = sent(&actions(&mut s));
    assert_eq!(out.len(), 1);
    assert_eq!(field(&out[0], 35).as_deref(), Some("3"));
    assert_eq!(field(&out[0], 45).as_deref(), Some("2"));
    assert_eq!(field(&out[0], 371).as_deref(), Some("122"));
    assert_eq!(field(&out[0], 373).as_deref(), Some("1"));
    assert_eq!(s.store().next_target_seq(), 3);
    // With OrigSendingTime it is a duplicate, ignored.
    let dup = peer.msg_with_seq("D", 2, "43=Y|122=20231114-22:13:20|11=x|", secs(2));
    s.on_frame(&dup, secs(2));
    assert!(sent(&actions(&mut s)).is_empty());
}

#[test]
fn sequence_reset_modes() {
    let (mut s, peer) = logged_on(BeginString::Fix44);
    // Reset mode ignores MsgSeqNum.
    s.on_frame(&peer.msg_with_seq("4", 99, "36=10|", secs(1)), secs(1));
    assert_eq!(s.store().next_target_seq(), 10);
    actions(&mut s);
    s.on_frame(&peer.msg_with_seq("4", 99, "36=5|", secs(1)), secs(1));
    let out = sent(&actions(&mut s));
    assert_eq!(field(&out[0], 373).as_deref(), Some("5"));
    assert_eq!(s.store().next_target_seq(), 10);
    // Gap fill in sequence.
    s.on_frame(
        &peer.msg_with_seq("4", 10, "123=Y|36=20|", secs(2)),
        secs(2),
    );
    assert_eq!(s.store().next_target_seq(), 20);
}

#[test]
fn garbled_and_wrong_begin_string() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    let mut m = peer.msg("D", "11=x|", secs(1));
    let n = m.len();
    m[n - 3] ^= 1; // checksum digit
    s.on_frame(&m, secs(1));
    let a = actions(&mut s);
    assert!(matches!(&a[..], [Action::Event(SessionEvent::Garbled(_))]));
    assert_eq!(s.store().next_target_seq(), 2);

    let mut other = Peer::new(BeginString::Fix42);
    other.seq = 2;
    s.on_frame(&other.msg("D", "11=x|", secs(1)), secs(1));
    let a = actions(&mut s);
    assert_eq!(field(&sent(&a)[0], 35).as_deref(), Some("5"));
    assert!(matches!(a.last(), Some(Action::Disconnect(_))));
}

#[test]
fn counterparty_logout_is_answered() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.on_frame(&peer.msg("5", "58=eod|", secs(1)), secs(1));
    let a = actions(&mut s);
    assert_eq!(field(&sent(&a)[0], 35).as_deref(), Some("5"));
    assert_eq!(
        a.last(),
        Some(&Action::Disconnect(DisconnectReason::LoggedOut))
    );
    assert_eq!(s.state(), State::Disconnected);
}

#[test]
fn reset_seq_num_flag_on_logon() {
    // A client may reset only where the session allows it (a gateway's `allow_reset`).
    let mut cfg = SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor);
    cfg.allow_peer_reset = true;
    let mut s = Session::new(cfg, MemoryStore::new()).expect("session");
    let mut peer = Peer::new(BeginString::Fix44);
    s.on_connected(t0());
    s.on_frame(&peer.msg("A", "98=0|108=30|", t0()), t0());
    assert!(actions(&mut s).contains(&Action::Event(SessionEvent::LoggedOn { reset: false })));
    s.send_app(b"D", b"11=a\x01", secs(1)).expect("send");
    actions(&mut s);
    s.on_disconnected(secs(2));
    s.on_connected(secs(3));
    peer.seq = 1;
    s.on_frame(&peer.msg("A", "98=0|108=10|141=Y|", secs(3)), secs(3));
    let a = actions(&mut s);
    assert!(a.contains(&Action::Event(SessionEvent::LoggedOn { reset: true })));
    let out = sent(&a);
    assert_eq!(field(&out[0], 34).as_deref(), Some("1"));
    assert_eq!(field(&out[0], 141).as_deref(), Some("Y"));
    assert_eq!(s.store().next_target_seq(), 2);
    assert_eq!(s.heartbeat_interval(), Duration::from_secs(10));
}

fn file_session(dir: &std::path::Path, epoch: u64) -> Session<FileStore> {
    let id = SessionId::new(BeginString::Fix44, "GW", "CLIENT");
    let store = FileStore::open(dir, &id, epoch, SyncPolicy::EveryWrite).expect("store");
    Session::new(
        SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor),
        store,
    )
    .expect("session")
}

#[test]
fn failover_continues_sequences_and_fences_the_old_active() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut peer = Peer::new(BeginString::Fix44);
    let mut old = file_session(tmp.path(), 1);
    old.on_connected(t0());
    old.on_frame(&peer.msg("A", "98=0|108=30|", t0()), t0());
    old.send_app(b"8", b"37=e1\x01", secs(1)).expect("2");
    old.send_app(b"8", b"37=e2\x01", secs(2)).expect("3");
    actions(&mut old);

    // The standby takes over (the old active is merely paused, not dead).
    let mut new = file_session(tmp.path(), 2);
    assert_eq!(new.store().next_sender_seq(), 4);
    assert_eq!(new.store().next_target_seq(), 2);

    // The old active wakes up: its send is refused and it disconnects.
    match old.send_app(b"8", b"37=e3\x01", secs(3)) {
        Err(SendError::Store(_)) => {}
        other => panic!("{other:?}"),
    }
    let a = actions(&mut old);
    assert!(matches!(
        a.last(),
        Some(Action::Disconnect(DisconnectReason::Store {
            fenced: true,
            ..
        }))
    ));
    assert!(sent(&a).is_empty());

    // The counterparty reconnects to the new active, having missed 3.
    new.on_connected(secs(4));
    new.on_frame(&peer.msg("A", "98=0|108=30|", secs(4)), secs(4));
    new.on_frame(&peer.msg("2", "7=3|16=0|", secs(4)), secs(4));
    let a = actions(&mut new);
    let kinds: Vec<String> = sent(&a).iter().map(|f| summary(f)).collect();
    // 3 resent; 4 is our Logon, an admin message, so it is gap-filled.
    assert_eq!(kinds, ["A:4", "8:3", "4:4"]);
    assert_eq!(field(&sent(&a)[1], 37).as_deref(), Some("e2"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Arbitrary, mutated and truncated frames never panic the session, and it never
        /// moves its expected sequence number backwards.
        #[test]
        fn session_survives_any_input(
            mutations in proptest::collection::vec((0usize..400, any::<u8>(), 0usize..400), 1..20),
            junk in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let (mut s, mut peer) = logged_on(BeginString::Fix44);
            s.on_frame(&junk, secs(1));
            for (i, (idx, byte, cut)) in mutations.into_iter().enumerate() {
                let before = s.store().next_target_seq();
                let mut m = peer.msg(["D", "0", "1", "2", "4", "5"][i % 6], "7=1|16=0|36=9|112=x|11=a|", secs(1));
                let n = m.len();
                m[idx % n] = byte;
                m.truncate(cut.max(1).min(n));
                s.on_frame(&m, secs(1));
                s.on_timer(secs(1 + i as u64));
                let _ = actions(&mut s);
                if s.state() == State::Disconnected {
                    break;
                }
                prop_assert!(s.store().next_target_seq() >= before);
            }
        }
    }
}

#[test]
fn reset_seq_num_flag_from_a_client_is_refused_unless_allowed() {
    let (mut s, mut peer) = logged_on(BeginString::Fix44);
    s.on_disconnected(secs(2));
    s.on_connected(secs(3));
    peer.seq = 1;
    s.on_frame(&peer.msg("A", "98=0|108=10|141=Y|", secs(3)), secs(3));
    let a = actions(&mut s);
    assert!(!a.contains(&Action::Event(SessionEvent::LoggedOn { reset: true })));
    let out = sent(&a);
    assert_eq!(
        field(&out[0], 35).as_deref(),
        Some("5"),
        "a Logout with the reason"
    );
    assert!(a.iter().any(|x| matches!(x, Action::Disconnect(_))));
}

#[test]
fn a_logon_refused_with_a_logout_says_why() {
    let mut s = initiator(BeginString::Fix44);
    s.on_connected(t0());
    assert_eq!(summary(&sent(&actions(&mut s))[0]), "A:1");
    assert_eq!(s.state(), State::LogonSent);
    // What an acceptor answers while an older connection holds the session (MsgSeqNum 1: it
    // belongs to no session).
    s.on_frame(
        &raw_frame("8=FIX.4.4|35=5|49=GW|56=CLIENT|34=1|52=20240102-03:04:05|58=session CLIENT is logged on from another connection|"),
        t0(),
    );
    let a = actions(&mut s);
    assert!(sent(&a).is_empty(), "a refusal is not answered: {a:?}");
    match a.last() {
        Some(Action::Disconnect(DisconnectReason::Protocol(why))) => assert_eq!(
            why,
            "Logon refused by the counterparty: \"session CLIENT is logged on from another connection\""
        ),
        other => panic!("not disconnected with the reason: {other:?}"),
    }
    assert_eq!(
        s.store().next_target_seq(),
        1,
        "nothing of the refusal counts"
    );
}
