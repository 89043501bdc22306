//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use understudy_service::ServiceSpec;

/// A spec running `script` with `sh -c` through the test guardian binary.
pub fn sh(script: &str, env: &[(&str, &str)]) -> ServiceSpec {
    ServiceSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        guardian_exe: env!("CARGO_BIN_EXE_understudy-guard").into(),
        guardian_args: vec![],
        standby: false,
    }
}

/// Whether `pid` is a live process (zombies count as dead: they run nothing, and who reaps
/// orphans is up to the machine's init).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Waits up to `limit` until none of `pids` is alive; returns how long it took, or the survivors.
pub async fn all_gone(pids: &[u32], limit: Duration) -> Result<Duration, Vec<u32>> {
    let start = tokio::time::Instant::now();
    loop {
        let survivors: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if survivors.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(survivors);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The next item of `rx`, failing the test after `limit`.
pub async fn next<T>(rx: &mut UnboundedReceiver<T>, limit: Duration) -> T {
    match tokio::time::timeout(limit, rx.recv()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("channel closed"),
        Err(_) => panic!("nothing received within {limit:?}"),
    }
}

/// Waits until `path` has a complete line (a newline-terminated content) and returns it.
pub async fn read_when_ready(path: &Path, limit: Duration) -> String {
    let start = tokio::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            start.elapsed() < limit,
            "{} not written within {limit:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
