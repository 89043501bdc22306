//! The price protocol decoder on arbitrary bytes: a stream of frames split and decoded as a
//! server or client reads them, and every message that decodes encoded again and decoded to
//! the same message. Nothing may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use understudy_pricefeed::protocol::{decode_message, Message};

fuzz_target!(|data: &[u8]| {
    let _ = Message::decode(data);
    let mut buf = BytesMut::from(data);
    loop {
        match decode_message(&mut buf) {
            Ok(Some(m)) => {
                let mut out = BytesMut::new();
                if m.encode(&mut out).is_ok() {
                    // Compared as bytes re-encoded: a NaN price is not equal to itself.
                    let first = out.clone();
                    match decode_message(&mut out) {
                        Ok(Some(again)) => {
                            let mut second = BytesMut::new();
                            assert!(again.encode(&mut second).is_ok(), "{again:?}");
                            assert_eq!(first, second, "{m:?} changed through a round trip");
                        }
                        other => panic!("{m:?} encoded as a frame that decodes to {other:?}"),
                    }
                }
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
});
