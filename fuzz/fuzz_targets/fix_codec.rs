//! The FIX codec on arbitrary bytes: the deframer fed in arbitrary pieces, and every frame it
//! yields parsed field by field. Nothing may panic; every frame must lie inside what was fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fix::codec::{frame, parse, Deframer, Framed};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, so frames are cut at every place.
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
                    assert!(f.len() <= fed);
                    if let Ok(m) = parse(f) {
                        for field in m.fields() {
                            let _ = m.get(field.tag);
                        }
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
        assert!(n <= rest.len());
    }
    let _ = parse(rest);
});
