//! The FIX codec: see `understudy_fix::fuzz::codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_fix::fuzz::codec(data));
