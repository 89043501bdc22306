//! The one way a test says it cannot run here: a missing dependency (QuickFIX, a tmpfs mount,
//! etcd, network namespaces, ...) must never let a test pass while testing nothing.
//!
//! With `CI=true` a missing dependency is a failure: CI installs everything the tests need, so
//! a missing one there is a broken set-up. Elsewhere the test is skipped: it prints
//! `SKIPPED: <test>: <reason>` to stderr (libtest shows it with `--nocapture`) and appends
//! `<test>\t<reason>` to the file named by `UNDERSTUDY_SKIP_LOG` when set, which is how
//! `scripts/test` counts it as skipped rather than passed.
#![allow(dead_code)] // not every test file has a dependency that can be missing

use std::io::Write;

/// Environment variable naming the file where skips are recorded (set by `scripts/test`).
pub const SKIP_LOG: &str = "UNDERSTUDY_SKIP_LOG";

/// Records that `test` cannot run because of `reason`; the caller returns right after.
/// Panics (fails the test, at the caller's line) when `CI=true`.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason} (CI=true: every dependency of the suite must be installed)");
    }
    // One line, no tabs or newlines inside the fields, so the log stays one record per line.
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    eprintln!("SKIPPED: {}: {}", clean(test), clean(reason));
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        let line = format!("{}\t{}\n", clean(test), clean(reason));
        // O_APPEND with a single write keeps lines from parallel tests whole.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "{test}: skipped ({reason}) but cannot record it in {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}
