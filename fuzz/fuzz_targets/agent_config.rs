//! The agent's configuration parser: see `understudy_agent::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_agent::fuzz::config(data));
