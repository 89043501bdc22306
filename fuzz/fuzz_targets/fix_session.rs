//! The FIX session (acceptor): see `understudy_fix::fuzz::session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_fix::fuzz::session(data));
