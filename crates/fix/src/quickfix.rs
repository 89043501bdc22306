//! The QuickFIX/C++ counterparts in `tests/quickfix/` (an initiator for the failover tests; an
//! acceptor and a gateway-shaped relay for the side-by-side benchmark): whether QuickFIX is
//! installed, and building them with `g++` against `libquickfix` (Debian: `apt-get install
//! libquickfix-dev g++`; with `libssl-dev` too, the initiator can speak TLS:
//! [`ssl_available`]).
//!
//! The sources are part of the binary; they and the binaries are written into a directory the
//! caller chooses (a target or temp directory), never into the source tree, both named by a
//! checksum of the source and the flags (`<name>-<key>`), so a changed source is built anew
//! and a binary is never taken for another source's.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The C++ sources, built into this binary: a binary built in one checkout and run from another
/// place (an installed copy, a clone that was deleted) still has them.
const EMBEDDED: [(&str, &str); 3] = [
    (
        "qf_initiator",
        include_str!("../../../tests/quickfix/qf_initiator.cpp"),
    ),
    (
        "qf_acceptor",
        include_str!("../../../tests/quickfix/qf_acceptor.cpp"),
    ),
    (
        "qf_relay",
        include_str!("../../../tests/quickfix/qf_relay.cpp"),
    ),
];

/// A directory of C++ sources to use instead of the built-in ones (`$UNDERSTUDY_QUICKFIX_SRC`).
fn override_dir() -> Option<PathBuf> {
    std::env::var_os("UNDERSTUDY_QUICKFIX_SRC")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// The source of `name`: the override directory's file, or the one built into this binary.
fn source_text(name: &str) -> Result<Vec<u8>, String> {
    if let Some(dir) = override_dir() {
        let src = dir.join(format!("{name}.cpp"));
        return std::fs::read(&src).map_err(|e| format!("cannot read {}: {e}", src.display()));
    }
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.as_bytes().to_vec())
        .ok_or_else(|| format!("no QuickFIX counterpart named {name}"))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader (another
/// process's g++) never sees it half written.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
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
    if let Some(dir) = override_dir() {
        if !dir.join("qf_initiator.cpp").exists() {
            return Some(format!(
                "UNDERSTUDY_QUICKFIX_SRC names {}, which has no qf_initiator.cpp",
                dir.display()
            ));
        }
    }
    None
}

/// Whether the counterparts can speak TLS here: OpenSSL's headers (Debian: libssl-dev) and
/// QuickFIX's SSL headers are installed.
pub fn ssl_available() -> bool {
    ["/usr/include", "/usr/local/include"].iter().any(|d| {
        let d = Path::new(d);
        d.join("openssl/ssl.h").exists() && d.join("quickfix/SSLSocketInitiator.h").exists()
    })
}

/// What a build is made from, as a file name part: the source's checksum and length, and
/// whether it links OpenSSL. Source and binary are named by it, so a binary is never used for
/// a source other than its own, whichever process or checkout built it.
fn build_key(text: &[u8], ssl: bool) -> String {
    format!(
        "{:08x}-{}{}",
        crc32fast::hash(text),
        text.len(),
        if ssl { "-ssl" } else { "" }
    )
}

/// Builds `tests/quickfix/<name>.cpp` into `out_dir` (unless a build of the same source and
/// flags is there) and returns the binary's path, `<name>-<key>` (see [`build_key`]). Blocks
/// for the few seconds g++ takes.
pub fn build(name: &str, out_dir: &Path) -> Result<PathBuf, String> {
    // Tests of one binary build the same counterpart at once: one at a time in this process,
    // and temporary names of their own across processes (both end in the same file).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let text = source_text(name)?;
    let ssl = ssl_available();
    let key = build_key(&text, ssl);
    let bin = out_dir.join(format!("{name}-{key}"));
    if bin.exists() {
        return Ok(bin);
    }
    let src = out_dir.join(format!("{name}-{key}.cpp"));
    if std::fs::read(&src).ok().as_deref() != Some(&text[..]) {
        write_whole(&src, &text)?;
    }
    // QuickFIX 1.15 headers use dynamic exception specifications, refused from C++17 on.
    let tmp = out_dir.join(format!("{name}.tmp{}", std::process::id()));
    let mut g = Command::new("g++");
    g.args(["-std=gnu++14", "-O2", "-w"]);
    if ssl {
        // libquickfix is built with SSL; its SSL headers need HAVE_SSL and OpenSSL's.
        g.arg("-DHAVE_SSL=1");
    }
    g.arg("-o")
        .arg(&tmp)
        .arg(&src)
        .args(["-lquickfix", "-lpthread"]);
    if ssl {
        g.args(["-lssl", "-lcrypto"]);
    }
    let out = g.output().map_err(|e| format!("cannot run g++: {e}"))?;
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
