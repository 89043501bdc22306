//! Where /proc hides other users' processes (`hidepid=2`, as hardened hosts mount it), an agent
//! judging a peer on its host by /proc alone counted a live peer gone. A probe as `nobody`, in a
//! mount namespace of its own with /proc mounted that way, looks at a process of root's.

mod skip;

use std::process::Command;

use understudy_service::procwatch::{can_act, may_act};

const PROBE: &str = "hidden_probe";

/// A live process /proc hides counts as able to act; a dead pid still does not.
#[test]
fn a_process_proc_hides_counts_while_it_exists() {
    let test = "a_process_proc_hides_counts_while_it_exists";
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return skip::skip(
            test,
            "needs root (a mount namespace, and a probe as another user)",
        );
    }
    // Before 5.8 a proc mount's options applied to the pid namespace's one instance: the
    // machine's own /proc would hide its processes until remounted.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (5, 8) {
        return skip::skip(
            test,
            &format!(
                "kernel {} before 5.8: /proc options are not per mount",
                release.trim()
            ),
        );
    }
    let ns = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .output();
    if !ns.is_ok_and(|o| o.status.success()) {
        return skip::skip(test, "no mount namespace (unshare -m, util-linux) here");
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut target = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    // Reaped: its pid names no process (pids are handed out in increasing order, so another
    // process takes it only after the counter wraps).
    let mut dead = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = dead.id();
    let _ = dead.wait();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" --ignored --exact {PROBE} --nocapture"
        ))
        .arg(&exe)
        .env("PROBE_LIVE", target.id().to_string())
        .env("PROBE_DEAD", dead_pid.to_string())
        .output()
        .expect("unshare");
    let _ = target.kill();
    let _ = target.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("PROBE-CANNOT-HIDE") {
        return skip::skip(
            test,
            "this kernel's /proc ignores hidepid in a mount namespace (before 5.8)",
        );
    }
    if text.contains("Permission denied") && !text.contains("running 1 test") {
        return skip::skip(test, &format!("user nobody cannot run {}", exe.display()));
    }
    assert!(out.status.success(), "the probe failed: {text}");
    assert!(text.contains("1 passed"), "the probe did not run: {text}");
}

/// The probe: run by [`a_process_proc_hides_counts_while_it_exists`] inside its namespace, as
/// `nobody`; without the pids it is given, it returns.
#[test]
#[ignore = "not a test: the probe a_process_proc_hides_counts_while_it_exists runs as nobody"]
fn hidden_probe() {
    let pid = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(live), Some(dead)) = (pid("PROBE_LIVE"), pid("PROBE_DEAD")) else {
        return;
    };
    if std::fs::read_to_string(format!("/proc/{live}/status")).is_ok() {
        println!("PROBE-CANNOT-HIDE: /proc shows pid {live}");
        return;
    }
    assert!(can_act(live), "a live process /proc hides counted gone");
    assert!(may_act(live));
    assert!(!can_act(dead), "a dead pid counted alive");
    assert!(!can_act(0));
}
