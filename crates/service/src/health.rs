//! Health checks.
//!
//! [`spawn_health`] runs a check every `interval`, each bounded by `timeout`, and reports changes
//! as [`HealthEvent`]s: `Healthy` on the first success and on every recovery, `Failing` for each
//! counted failure below the threshold, and `Failed` once when `failures` consecutive checks
//! failed. Failures during `start_period` (until the first success) do not count, so a slow
//! starter is not declared failed. Checking goes on after `Failed`, so a recovery is seen.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// Run this argv; exit code 0 means healthy.
    Command(Vec<String>),
    /// GET this URL; a 2xx status means healthy.
    Http(String),
}

/// How and how often to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The check.
    pub check: HealthCheck,
    /// Time between the starts of two checks; the first check runs one interval after start.
    pub interval: Duration,
    /// Longest a check may take; a check running longer fails (and a command is killed).
    pub timeout: Duration,
    /// Consecutive failures that make the service `Failed` (0 is taken as 1).
    pub failures: u32,
    /// Grace after start during which failures do not count; it ends early at the first success.
    pub start_period: Duration,
}

/// A change in a service's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// The check passed for the first time, or again after failing.
    Healthy {
        /// The service generation being checked.
        generation: u64,
    },
    /// The check failed, but fewer than `failures` times in a row.
    Failing {
        /// The service generation being checked.
        generation: u64,
        /// Consecutive counted failures so far.
        consecutive: u32,
        /// Why the last check failed.
        reason: String,
    },
    /// An HTTP check passed and the service said this about itself (the response body, at most
    /// 4 KiB). Sent after every passing HTTP check, so the agent can show the service's own
    /// status next to its own.
    Report {
        /// The service generation being checked.
        generation: u64,
        /// The response body.
        body: String,
    },
    /// The check failed `failures` times in a row. Sent once, until the service recovers.
    Failed {
        /// The service generation being checked.
        generation: u64,
        /// Why the last check failed.
        reason: String,
    },
}

/// Starts checking the service of `generation` according to `cfg`; command checks get `env` on top
/// of the agent's environment. Abort the handle when the service stops.
pub fn spawn_health(
    cfg: HealthConfig,
    generation: u64,
    env: Vec<(String, String)>,
    events: UnboundedSender<HealthEvent>,
) -> JoinHandle<()> {
    tokio::spawn(run(cfg, generation, env, events))
}

/// Counts results and decides which event, if any, each one produces.
#[derive(Debug)]
struct Tracker {
    generation: u64,
    threshold: u32,
    /// Failures before this instant do not count, unless a check has already passed.
    start_period_end: Instant,
    passed_once: bool,
    /// Whether the last emitted state is healthy (`Healthy` is only sent on a change).
    reported_healthy: bool,
    consecutive: u32,
}

impl Tracker {
    fn new(generation: u64, threshold: u32, start_period_end: Instant) -> Self {
        Tracker {
            generation,
            threshold: threshold.max(1),
            start_period_end,
            passed_once: false,
            reported_healthy: false,
            consecutive: 0,
        }
    }

    fn record(&mut self, result: Result<(), String>, now: Instant) -> Option<HealthEvent> {
        let generation = self.generation;
        match result {
            Ok(()) => {
                self.passed_once = true;
                self.consecutive = 0;
                if self.reported_healthy {
                    return None;
                }
                self.reported_healthy = true;
                Some(HealthEvent::Healthy { generation })
            }
            Err(reason) => {
                if !self.passed_once && now < self.start_period_end {
                    tracing::debug!(generation, %reason, "health check failed in start period");
                    return None;
                }
                self.reported_healthy = false;
                self.consecutive = self.consecutive.saturating_add(1);
                if self.consecutive < self.threshold {
                    Some(HealthEvent::Failing {
                        generation,
                        consecutive: self.consecutive,
                        reason,
                    })
                } else if self.consecutive == self.threshold {
                    Some(HealthEvent::Failed { generation, reason })
                } else {
                    None
                }
            }
        }
    }
}

async fn run(
    cfg: HealthConfig,
    generation: u64,
    env: Vec<(String, String)>,
    events: UnboundedSender<HealthEvent>,
) {
    let start = Instant::now();
    let mut tracker = Tracker::new(generation, cfg.failures, start + cfg.start_period);
    // One client for all checks: it keeps connections alive. Proxies are for the outside world;
    // a health check talks to a local service, so environment proxy settings are ignored.
    let client = match &cfg.check {
        HealthCheck::Http(_) => Some(
            reqwest::Client::builder()
                .timeout(cfg.timeout)
                .no_proxy()
                .build()
                .map_err(|e| format!("cannot build an HTTP client: {}", error_chain(&e))),
        ),
        HealthCheck::Command(_) => None,
    };
    // An interval of zero would make tokio panic; checking continuously makes no sense anyway.
    let period = cfg.interval.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(start + period, period);
    // After a slow check, wait a full interval rather than firing a burst of checks.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut report = None;
        let result = match (&cfg.check, &client) {
            (HealthCheck::Command(argv), _) => check_command(argv, &env, cfg.timeout).await,
            (HealthCheck::Http(url), Some(Ok(client))) => {
                check_http(client, url, cfg.timeout).await.map(|body| {
                    report = Some(body);
                })
            }
            (HealthCheck::Http(_), Some(Err(e))) => Err(e.clone()),
            (HealthCheck::Http(_), None) => Err("no HTTP client".to_owned()),
        };
        let change = tracker.record(result, Instant::now());
        let report = report.map(|body| HealthEvent::Report { generation, body });
        // The report first: what it says about readiness must be known when the check passes.
        for event in report.into_iter().chain(change) {
            tracing::debug!(?event, "health changed");
            if events.send(event).is_err() {
                // Nobody listens any more.
                return;
            }
        }
    }
}

/// Runs `argv` in its own process group; on timeout the whole group is killed.
async fn check_command(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("the health command is empty".to_owned());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so a timeout or an abort also kills helpers it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run health command {program:?}: {e}"))?;
    // Declared after `child`, so dropped before it: the group is killed while the child is
    // still unreaped, when its pid is certainly still the group's id.
    let mut group = GroupKiller(child.id());
    let result = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            // Reaped: its pid may be reused from now on, so the group must not be signalled.
            group.0 = None;
            if status.success() {
                Ok(())
            } else {
                Err(match (status.code(), status.signal()) {
                    (Some(code), _) => format!("health command exited with code {code}"),
                    (None, Some(sig)) => format!("health command killed by signal {sig}"),
                    (None, None) => format!("health command ended with {status}"),
                })
            }
        }
        Ok(Err(e)) => Err(format!("cannot wait for the health command: {e}")),
        Err(_) => Err(format!("health command timed out after {timeout:?}")),
    };
    drop(group);
    result
}

/// Kills the process group of a health command that has not been reaped, when dropped: after a
/// timeout, or when the health task is aborted in the middle of a check.
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = kill(Pid::from_raw(-(pgid as i32)), Signal::SIGKILL);
        }
    }
}

/// Longest response body kept from an HTTP check.
const MAX_REPORT: usize = 4096;

/// GETs `url`; a 2xx status passes, and its body (cut to [`MAX_REPORT`]) is returned.
async fn check_http(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<String, String> {
    // The client's own timeout covers the request; this one also bounds connection setup
    // oddities, and costs nothing.
    let got = tokio::time::timeout(timeout, async {
        let response = client.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    match got {
        Ok(Ok((status, body))) if status.is_success() => {
            let body = &body[..body.len().min(MAX_REPORT)];
            Ok(String::from_utf8_lossy(body).into_owned())
        }
        Ok(Ok((status, _))) => Err(format!("GET {url} answered {status}")),
        Ok(Err(e)) => Err(format!("GET {url} failed: {}", error_chain(&e))),
        Err(_) => Err(format!("GET {url} timed out after {timeout:?}")),
    }
}

/// An error and its sources on one line (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), String> {
        Err("no".to_owned())
    }

    #[test]
    fn threshold_recovery_and_start_period() {
        let t0 = Instant::now();
        let mut t = Tracker::new(7, 2, t0 + Duration::from_secs(10));
        // In the start period, before any success: ignored.
        assert_eq!(t.record(fail(), t0), None);
        assert_eq!(
            t.record(Ok(()), t0),
            Some(HealthEvent::Healthy { generation: 7 })
        );
        assert_eq!(t.record(Ok(()), t0), None);
        // After a success the start period no longer shields failures.
        assert!(matches!(
            t.record(fail(), t0),
            Some(HealthEvent::Failing { consecutive: 1, .. })
        ));
        assert!(matches!(
            t.record(fail(), t0),
            Some(HealthEvent::Failed { .. })
        ));
        assert_eq!(t.record(fail(), t0), None);
        assert_eq!(
            t.record(Ok(()), t0),
            Some(HealthEvent::Healthy { generation: 7 })
        );
    }

    #[test]
    fn start_period_ends_by_time() {
        let t0 = Instant::now();
        let mut t = Tracker::new(1, 1, t0 + Duration::from_secs(1));
        assert_eq!(t.record(fail(), t0), None);
        let later = t0 + Duration::from_secs(2);
        assert!(matches!(
            t.record(fail(), later),
            Some(HealthEvent::Failed { .. })
        ));
    }
}
