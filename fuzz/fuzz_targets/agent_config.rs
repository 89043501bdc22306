//! The agent's configuration parser on arbitrary text: it must refuse with a reason or accept,
//! never panic. The file is named in a directory that holds nothing the text could name
//! relatively, so the checks that look at the disk see an empty directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::env::temp_dir().join("understudy-fuzz-config");
    let _ = std::fs::create_dir_all(&dir);
    match understudy_agent::Config::parse(&dir.join("agent.toml"), text) {
        Ok(cfg) => {
            let _ = cfg.warnings();
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
