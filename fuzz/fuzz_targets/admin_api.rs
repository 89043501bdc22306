//! The agent's admin API: see `understudy_agent::fuzz::admin_api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_agent::fuzz::admin_api(data));
