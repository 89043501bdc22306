//! The sans-IO FIX session (acceptor) fed arbitrary messages and timer ticks. Each input is
//! cut at `|` into steps: a step starting with `!` advances the clock by its second byte in
//! seconds and fires the timer; any other step becomes the body of a well-framed message from
//! the counterparty (BodyLength and CheckSum computed, `\x01` written as `^`), so the fuzzer
//! reaches the session's logic rather than the framing. Half the inputs start logged on.
//! Nothing may panic, whatever the numbers in the fields (HeartBtInt, sequence numbers, ...).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use understudy_fix::codec::MessageBuilder;
use understudy_fix::session::{Role, Session, SessionConfig};
use understudy_fix::store::MemoryStore;
use understudy_fix::tags::BeginString;

/// `8=FIX.4.4|9=N|<body>10=SUM|` around `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = format!("8=FIX.4.4\x019={}\x01", body.len()).into_bytes();
    f.extend_from_slice(body);
    let sum = f.iter().map(|&b| u32::from(b)).sum::<u32>() % 256;
    f.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
    f
}

fuzz_target!(|data: &[u8]| {
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
            }
            body => {
                let body: Vec<u8> = body
                    .iter()
                    .map(|&b| if b == b'^' { 0x01 } else { b })
                    .collect();
                // With mode bit 2 the header is ours, so the message passes the session's
                // checks of CompIDs and sequence numbers and reaches the message type's logic.
                let frame = if mode & 2 == 2 {
                    let mut full = format!(
                        "35={}\x0149=CLIENT\x0156=GW\x0134={seq}\x0152=20231114-22:13:20\x01",
                        body.first()
                            .map(|&c| c as char)
                            .filter(char::is_ascii_alphanumeric)
                            .unwrap_or('0')
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
});
