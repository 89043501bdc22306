//! The entry points of the cargo-fuzz targets `fix_codec` and `fix_session` (`fuzz/`), kept here
//! so that the stable test suite replays every seed and corpus input through the same code the
//! fuzzer runs (`crates/understudy/tests/fuzz_corpus.rs`). Each panics only on a finding.

use std::time::{Duration, UNIX_EPOCH};

use crate::codec::{frame, parse, Deframer, Framed, MessageBuilder};
use crate::session::{Role, Session, SessionConfig};
use crate::store::MemoryStore;
use crate::tags::BeginString;

/// The deframer fed `data` in pieces (the first byte picks their size, so frames are cut at
/// every place), and every frame it yields parsed field by field. Every frame must lie inside
/// what was fed.
pub fn codec(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut % 64) + 1;
    let mut d = Deframer::new(4096);
    let mut fed = 0usize;
    for chunk in rest.chunks(piece) {
        d.push(chunk);
        fed += chunk.len();
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.len() <= fed, "a frame longer than what was fed");
                    if let Ok(m) = parse(f) {
                        for field in m.fields() {
                            let _ = m.get(field.tag);
                        }
                        let _ = m.header();
                        let _ = m.get_uint(34);
                        let _ = m.get_str(35);
                    }
                }
                Ok(None) => break,
                // A garbled stretch is skipped; the deframer goes on with what follows.
                Err(_) => {}
            }
            if d.buffered() == 0 {
                break;
            }
        }
    }
    if let Ok(Framed::Complete(n)) = frame(rest, 1 << 20) {
        assert!(n <= rest.len(), "frame() past the end of its input");
    }
    let _ = parse(rest);
}

/// `8=FIX.4.4|9=N|<body>10=SUM|` around `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = format!("8=FIX.4.4\x019={}\x01", body.len()).into_bytes();
    f.extend_from_slice(body);
    let sum = f.iter().map(|&b| u32::from(b)).sum::<u32>() % 256;
    f.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
    f
}

/// The sans-IO session (acceptor) fed messages and timer ticks. `data` is cut at `|` into
/// steps: a step starting with `!` advances the clock by its second byte in seconds and fires
/// the timer; any other step becomes the body of a well-framed message from the counterparty
/// (BodyLength and CheckSum computed, `^` standing for SOH), so the fuzzer reaches the
/// session's logic rather than the framing. Bit 0 of the first byte starts logged on; with
/// bit 1 the session header (MsgType from the step's first byte, CompIDs, the expected
/// MsgSeqNum, SendingTime) is written for each step, so messages pass the header checks and
/// reach their message type's logic.
pub fn session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let Ok(mut s) = Session::new(
        SessionConfig::new(BeginString::Fix44, "GW", "CLIENT", Role::Acceptor),
        MemoryStore::new(),
    ) else {
        return;
    };
    s.on_connected(now);
    let mut seq = 1u64;
    if mode & 1 == 1 {
        let mut b = MessageBuilder::new(BeginString::Fix44, b"A");
        b.push_str(49, "CLIENT")
            .push_str(56, "GW")
            .push_uint(34, seq)
            .push_time(52, now)
            .push_raw(b"98=0\x01108=30\x01");
        if let Ok(logon) = b.finish() {
            s.on_frame(&logon, now);
            seq += 1;
        }
    }
    for step in rest.split(|&b| b == b'|') {
        match step {
            [b'!', secs, ..] => {
                now += Duration::from_secs(u64::from(*secs));
                s.on_timer(now);
                // As the transport does once the last piece of a resend answer is written.
                s.continue_resend(now);
            }
            body => {
                let body: Vec<u8> = body
                    .iter()
                    .map(|&b| if b == b'^' { 0x01 } else { b })
                    .collect();
                let frame = if mode & 2 == 2 {
                    let msg_type = body
                        .first()
                        .map(|&c| c as char)
                        .filter(char::is_ascii_alphanumeric)
                        .unwrap_or('0');
                    let mut full = format!(
                        "35={msg_type}\x0149=CLIENT\x0156=GW\x0134={seq}\x0152={}\x01",
                        crate::time::format_utc_timestamp(now)
                    )
                    .into_bytes();
                    full.extend_from_slice(body.get(1..).unwrap_or_default());
                    seq += 1;
                    framed(&full)
                } else {
                    framed(&body)
                };
                s.on_frame(&frame, now);
            }
        }
        for _ in s.drain() {}
    }
    let _ = s.state();
}
