//! The price protocol: see `understudy_pricefeed::fuzz::protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_pricefeed::fuzz::protocol(data));
