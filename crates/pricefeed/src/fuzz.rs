//! The entry point of the cargo-fuzz target `price_protocol` (`fuzz/`), kept here so that the
//! stable test suite replays every seed and corpus input through the same code the fuzzer runs
//! (`crates/understudy/tests/fuzz_corpus.rs`). It panics only on a finding.

use bytes::BytesMut;

use crate::protocol::{decode_message, Message};

/// `data` decoded as one frame's payload, then as a stream of frames the way a server or a
/// client reads them; every message that decodes must encode to a frame that decodes and
/// encodes to the same bytes (compared as bytes: a NaN price is not equal to itself).
pub fn protocol(data: &[u8]) {
    let _ = Message::decode(data);
    let mut buf = BytesMut::from(data);
    loop {
        match decode_message(&mut buf) {
            Ok(Some(m)) => {
                let mut first = BytesMut::new();
                if m.encode(&mut first).is_err() {
                    continue;
                }
                let mut out = first.clone();
                match decode_message(&mut out) {
                    Ok(Some(again)) => {
                        let mut second = BytesMut::new();
                        assert!(
                            again.encode(&mut second).is_ok(),
                            "{again:?} does not encode"
                        );
                        assert_eq!(first, second, "{m:?} changed through a round trip");
                        assert!(out.is_empty(), "{m:?} encoded as more than one frame");
                    }
                    other => panic!("{m:?} encoded as a frame that decodes to {other:?}"),
                }
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
}
