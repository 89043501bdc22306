//! The QuickFIX/C++ counterparts in `tests/quickfix/` (an initiator for the failover tests, an
//! acceptor for the side-by-side benchmark): whether QuickFIX is installed, and building them
//! with `g++` against `libquickfix` (Debian: `apt-get install libquickfix-dev g++`).
//!
//! Binaries are built into a directory the caller chooses (a target or temp directory),
//! never into the source tree, and rebuilt when their source is newer.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the C++ sources are: `$UNDERSTUDY_QUICKFIX_SRC`, else `tests/quickfix/` of the
/// checkout this crate was built from.
pub fn source_dir() -> PathBuf {
    match std::env::var_os("UNDERSTUDY_QUICKFIX_SRC") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/quickfix"),
    }
}

/// Why the QuickFIX counterparts cannot be built here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    let gxx = Command::new("g++").arg("--version").output();
    if !gxx.map(|o| o.status.success()).unwrap_or(false) {
        return Some("g++ is not installed".into());
    }
    let headers = ["/usr/include", "/usr/local/include"]
        .iter()
        .any(|d| Path::new(d).join("quickfix/Application.h").exists());
    if !headers {
        return Some("QuickFIX is not installed (no quickfix/Application.h; Debian: apt-get install libquickfix-dev)".into());
    }
    if !source_dir().join("qf_initiator.cpp").exists() {
        return Some(format!(
            "the QuickFIX sources are not in {} (set UNDERSTUDY_QUICKFIX_SRC)",
            source_dir().display()
        ));
    }
    None
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds `tests/quickfix/<name>.cpp` into `out_dir/<name>` (unless a build newer than the
/// source is there) and returns the binary's path. Blocks for the few seconds g++ takes.
pub fn build(name: &str, out_dir: &Path) -> Result<PathBuf, String> {
    let src = source_dir().join(format!("{name}.cpp"));
    if !src.exists() {
        return Err(format!("{} does not exist", src.display()));
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let bin = out_dir.join(name);
    if let (Some(b), Some(s)) = (modified(&bin), modified(&src)) {
        if b >= s {
            return Ok(bin);
        }
    }
    // QuickFIX 1.15 headers use dynamic exception specifications, refused from C++17 on.
    let tmp = out_dir.join(format!("{name}.tmp{}", std::process::id()));
    let out = Command::new("g++")
        .args(["-std=gnu++14", "-O2", "-w", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(["-lquickfix", "-lpthread"])
        .output()
        .map_err(|e| format!("cannot run g++: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "g++ failed to build {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &bin).map_err(|e| format!("cannot move the build into place: {e}"))?;
    Ok(bin)
}
