//! Every input of the fuzz targets' seeds and committed corpus (`fuzz/seeds/TARGET`,
//! `fuzz/corpus/TARGET`), run on the stable toolchain through the same entry points the
//! cargo-fuzz targets call. The fuzzing itself needs nightly and runs outside CI
//! (`scripts/fuzz`); this keeps what it found, and every input that once crashed, from
//! regressing in every CI run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The fuzz directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs every file of the target's seeds and corpus through `entry`; fails naming each input
/// that panicked. A target without a single input fails too: then nothing would be tested.
fn replay(target: &str, entry: fn(&[u8])) {
    let mut inputs = Vec::new();
    for dir in ["seeds", "corpus"] {
        let dir = fuzz_dir().join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .path();
            if path.is_file() {
                inputs.push(path);
            }
        }
    }
    assert!(
        !inputs.is_empty(),
        "no inputs for {target} in fuzz/seeds/{target} or fuzz/corpus/{target}"
    );
    let mut crashed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
            crashed.push(path.display().to_string());
        }
    }
    assert!(
        crashed.is_empty(),
        "{target}: {} of {} inputs panicked (the messages are above; \
         `cargo +nightly fuzz run {target} FILE` in fuzz/ replays one):\n  {}",
        crashed.len(),
        inputs.len(),
        crashed.join("\n  ")
    );
}

#[test]
fn fix_codec() {
    replay("fix_codec", understudy_fix::fuzz::codec);
}

#[test]
fn fix_session() {
    replay("fix_session", understudy_fix::fuzz::session);
}

#[test]
fn price_protocol() {
    replay("price_protocol", understudy_pricefeed::fuzz::protocol);
}

#[test]
fn admin_api() {
    replay("admin_api", understudy_agent::fuzz::admin_api);
}

#[test]
fn agent_config() {
    replay("agent_config", understudy_agent::fuzz::config);
}
