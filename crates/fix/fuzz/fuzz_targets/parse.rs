//! Fuzzes framing, parsing and header validation: none may panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fix::codec::{frame, parse, Deframer};

fuzz_target!(|data: &[u8]| {
    let _ = frame(data, 4096);
    if let Ok(m) = parse(data) {
        let _ = m.header();
    }
    let mut d = Deframer::new(4096);
    // Feed in two pieces so the buffering and compaction paths run too.
    let (a, b) = data.split_at(data.len() / 2);
    for piece in [a, b] {
        d.push(piece);
        // Each error skips at least one byte, so this loop ends.
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let _ = parse(f).map(|m| m.header());
                }
                Ok(None) => break,
                Err(_) => continue,
            }
        }
    }
});
