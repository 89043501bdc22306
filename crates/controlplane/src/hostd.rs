//! A host's reconciler: the control plane says what should run on a host (the desired processes),
//! the host makes it so and reports what runs. The same code serves the host built into
//! `understudy serve` (called in-process) and `understudy host --control URL` on other machines
//! (which fetches its desired processes over HTTP). One mechanism: the control plane never starts
//! or stops a process itself.
//!
//! Rules: an agent that should run and does not is started again (back-off 1 s doubling to 30 s,
//! reset after a minute of running); a plain server is started once per start request (its
//! generation) and never restarted behind the operator's back — its end is reported; a process
//! that should no longer run gets SIGTERM (its whole process group), SIGKILL after a grace period;
//! an agent whose configuration changed is stopped and started again with the new one, unless it
//! runs the older generation the control plane lets it keep (the active's, until it is a
//! standby); a desired server may adopt a running process
//! (stop failover: the former active's service, once its agent has released it and exited,
//! becomes the plain server, nothing restarted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::host::{running, LocalHost};
use crate::model::ServiceDef;
use crate::store::Store;

/// Grace between SIGTERM and SIGKILL when a process should no longer run.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What should run under a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Want {
    /// A node's agent with this configuration (written to `<data>/nodes/<node>.toml`).
    Agent {
        /// `node.name`.
        node: String,
        /// The configuration text: an agent is started with it, and one that runs another is
        /// started again with it, unless it runs `keep`.
        config: String,
        /// The generation of an older configuration that the running agent may keep: the
        /// group's active, which gets the new one only once it is a standby. An agent that
        /// ended is started with `config`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<u64>,
    },
    /// A plain server.
    Server {
        /// The server's name.
        server: String,
        /// Its program.
        service: ServiceDef,
        /// The start request this is for: started once per generation.
        generation: u64,
        /// Take over this running process instead of starting one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adopt: Option<Adopt>,
    },
}

/// A process to take over as a plain server: the former active's service after stop failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adopt {
    /// The key of the agent that ran it; the service carries the agent's marker. Adopted only
    /// once that agent has released the service and exited (until then it is not stopped either).
    pub from: String,
    /// The service's pid.
    pub pid: u32,
}

/// The generation an agent is started for (see [`understudy_agent::config::generation`]), so a
/// host sees that the configuration changed and starts the agent again with it.
pub use understudy_agent::config::generation as config_generation;

/// One process as a host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcReport {
    /// The key.
    pub key: String,
    /// Its pid, when one was started.
    pub pid: Option<u32>,
    /// True while it runs.
    pub running: bool,
    /// The generation it was started for.
    pub generation: u64,
    /// Why it does not run, when it should and does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The reconciler of one host.
pub struct Reconciler {
    host: LocalHost,
    /// The host's own record of what it started (pids survive a restart of the host process).
    store: std::sync::Arc<Store>,
    backoff: BTreeMap<String, (Instant, Duration)>,
    /// Stops under way, by key: the pid, the generation it was started for, and the task that
    /// waits up to [`STOP_GRACE`] for it to end. The loop does not wait with it: a host reports
    /// every [`HOST_INTERVAL`], and one silent for a few seconds counts as dark to the control
    /// plane, which then refuses stop failover (review 31, L8). A key stays in the report while
    /// its stop runs, so nobody takes it for stopped before it is.
    stopping: BTreeMap<String, (u32, u64, tokio::task::JoinHandle<()>)>,
}

impl Reconciler {
    /// A reconciler starting processes with `host` and remembering them in `store`.
    pub fn new(host: LocalHost, store: std::sync::Arc<Store>) -> Reconciler {
        Reconciler {
            host,
            store,
            backoff: BTreeMap::new(),
            stopping: BTreeMap::new(),
        }
    }

    /// Stops `key`'s process (`pid`, started for `generation`) in a task of its own, unless a
    /// stop of it already runs.
    fn stop_in_background(&mut self, key: &str, pid: u32, marker: &str, generation: u64) {
        if self.stopping.contains_key(key) {
            return;
        }
        let marker = marker.to_string();
        let task = tokio::spawn(async move { LocalHost::stop(pid, &marker, STOP_GRACE).await });
        self.stopping
            .insert(key.to_string(), (pid, generation, task));
    }

    /// Forgets the stops that have ended with their processes gone, and their records. One
    /// whose process still runs (after SIGKILL: an uninterruptible wait) is stopped again and
    /// stays reported as running (review 32, L4).
    fn reap_stops(&mut self) {
        let done: Vec<String> = self
            .stopping
            .iter()
            .filter(|(_, (_, _, task))| task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        if done.is_empty() {
            return;
        }
        let tracked = self.store.processes().unwrap_or_default();
        for key in done {
            let Some((pid, generation, _)) = self.stopping.remove(&key) else {
                continue;
            };
            match tracked.get(&key) {
                Some((p, marker, _)) if *p == pid && LocalHost::is_ours(pid, marker) => {
                    warn!(%key, pid, "still runs after its stop; stopping it again");
                    let marker = marker.clone();
                    self.stop_in_background(&key, pid, &marker, generation);
                }
                _ => {
                    let _ = self.store.delete_process(&key);
                    self.backoff.remove(&key);
                }
            }
        }
    }

    /// A key whose stop runs, as reported: still running, until it is not.
    fn stopping_report(&self, key: &str) -> Option<ProcReport> {
        let (pid, generation, _) = self.stopping.get(key)?;
        Some(ProcReport {
            key: key.to_string(),
            pid: Some(*pid),
            running: true,
            generation: *generation,
            problem: None,
        })
    }

    /// The data directory (node configurations, lock files, logs).
    pub fn data(&self) -> &PathBuf {
        &self.host.data
    }

    /// Make the host run exactly `desired` (key → [`Want`] as JSON); report what runs.
    pub async fn step(&mut self, desired: &BTreeMap<String, Value>) -> Vec<ProcReport> {
        let wants: BTreeMap<&String, Want> = desired
            .iter()
            .filter_map(|(k, v)| match serde_json::from_value::<Want>(v.clone()) {
                Ok(w) => Some((k, w)),
                Err(e) => {
                    warn!(key = %k, "cannot read a desired process: {e}");
                    None
                }
            })
            .collect();
        self.reap_stops();
        let tracked = self.store.processes().unwrap_or_default();
        let adopted: Vec<&String> = wants
            .values()
            .filter_map(|w| match w {
                Want::Server { adopt, .. } => adopt.as_ref().map(|a| &a.from),
                Want::Agent { .. } => None,
            })
            .collect();
        // Stop what should no longer run (an adoption's source is kept for its new key).
        let mut reports = Vec::new();
        for (key, (pid, marker, generation)) in &tracked {
            if wants.contains_key(key) || adopted.contains(&key) {
                continue;
            }
            if LocalHost::is_ours(*pid, marker) {
                if !self.stopping.contains_key(key) {
                    info!(%key, pid, "stopping: no longer wanted here");
                }
                self.stop_in_background(key, *pid, marker, *generation);
                reports.extend(self.stopping_report(key));
                continue;
            }
            let _ = self.store.delete_process(key);
            self.backoff.remove(key);
        }
        let tracked = self.store.processes().unwrap_or_default();
        for (key, want) in &wants {
            if let Some(rep) = self.stopping_report(key) {
                // Wanted again, or with another configuration, while its stop runs: started
                // once the stop is over.
                reports.push(rep);
                continue;
            }
            let mut cur = tracked
                .get(*key)
                .filter(|(pid, m, _)| LocalHost::is_ours(*pid, m))
                .cloned();
            if let (Want::Agent { config, keep, .. }, Some((pid, marker, g))) = (want, &cur) {
                let wanted = config_generation(config);
                if *g == 0 {
                    // Started before generations were recorded: take it as running this one.
                    let _ =
                        self.store
                            .put_process(key, *pid, marker, wanted, crate::plane::unix_ms());
                    cur = Some((*pid, marker.clone(), wanted));
                } else if *g != wanted && *keep != Some(*g) {
                    info!(%key, pid, "configuration changed: starting the agent again with it once it stopped");
                    self.stop_in_background(key, *pid, marker, *g);
                    reports.extend(self.stopping_report(key));
                    continue;
                }
            }
            let rep = match (want, cur) {
                (_, Some((pid, _, g))) => ProcReport {
                    key: (*key).clone(),
                    pid: Some(pid),
                    running: true,
                    generation: g,
                    problem: None,
                },
                (
                    Want::Server {
                        generation,
                        adopt: Some(a),
                        ..
                    },
                    None,
                ) => self.adopt(key, a, *generation, &tracked),
                (
                    Want::Server {
                        generation,
                        adopt: None,
                        service,
                        server,
                    },
                    None,
                ) => {
                    if tracked.get(*key).is_some_and(|t| t.2 == *generation) {
                        // This start request's process ran and ended: report it, do not restart.
                        ProcReport {
                            key: (*key).clone(),
                            pid: tracked.get(*key).map(|t| t.0),
                            running: false,
                            generation: *generation,
                            problem: Some("the server's process ended".into()),
                        }
                    } else {
                        self.start(key, *generation, |h| h.start_plain(server, service))
                    }
                }
                (Want::Agent { node, config, .. }, None) => self.start_agent(key, node, config),
            };
            reports.push(rep);
        }
        reports
    }

    /// Take over a released service as the plain server `key`, once its agent is gone.
    fn adopt(
        &mut self,
        key: &str,
        a: &Adopt,
        generation: u64,
        tracked: &BTreeMap<String, (u32, String, u64)>,
    ) -> ProcReport {
        let report = |running: bool, pid: Option<u32>, problem: Option<String>| ProcReport {
            key: key.to_string(),
            pid,
            running,
            generation,
            problem,
        };
        let agent_runs = tracked
            .get(&a.from)
            .is_some_and(|(pid, m, _)| LocalHost::is_ours(*pid, m));
        if agent_runs {
            // Still releasing (or not yet asked): neither adopt nor stop anything.
            return report(false, None, None);
        }
        if !LocalHost::is_ours(a.pid, &a.from) {
            return report(
                false,
                Some(a.pid),
                Some(format!(
                    "the service released by {} (pid {}) is gone",
                    a.from, a.pid
                )),
            );
        }
        let _ = self
            .store
            .put_process(key, a.pid, &a.from, generation, crate::plane::unix_ms());
        let _ = self.store.delete_process(&a.from);
        info!(%key, from = %a.from, pid = a.pid, "released service adopted as a plain server");
        report(true, Some(a.pid), None)
    }

    /// Start node `node`'s agent on `config`, unless its back-off since the last start still runs.
    fn start_agent(&mut self, key: &str, node: &str, config: &str) -> ProcReport {
        let now = Instant::now();
        let (at, wait) = self
            .backoff
            .get(key)
            .copied()
            .unwrap_or((now, Duration::from_secs(1)));
        if now < at {
            return ProcReport {
                key: key.to_string(),
                pid: None,
                running: false,
                generation: 0,
                problem: Some(format!(
                    "the agent ended; starting it again in {:.1} s",
                    (at - now).as_secs_f64()
                )),
            };
        }
        let quiet = now.saturating_duration_since(at) > Duration::from_secs(60);
        let next = if quiet {
            Duration::from_secs(1)
        } else {
            (wait * 2).min(Duration::from_secs(30))
        };
        self.backoff.insert(key.to_string(), (now + wait, next));
        let path = self.host.data.join("nodes").join(format!("{node}.toml"));
        for d in ["nodes", "locks"] {
            let _ = std::fs::create_dir_all(self.host.data.join(d));
        }
        if let Err(e) = std::fs::write(&path, config) {
            return ProcReport {
                key: key.to_string(),
                pid: None,
                running: false,
                generation: 0,
                problem: Some(format!("{}: {e}", path.display())),
            };
        }
        self.start(key, config_generation(config), |h| {
            h.start_agent(node, &path)
        })
    }

    fn start(
        &mut self,
        key: &str,
        generation: u64,
        f: impl FnOnce(&LocalHost) -> Result<u32, crate::host::HostError>,
    ) -> ProcReport {
        match f(&self.host) {
            Ok(pid) => {
                let _ = self
                    .store
                    .put_process(key, pid, key, generation, crate::plane::unix_ms());
                info!(%key, pid, "started");
                ProcReport {
                    key: key.to_string(),
                    pid: Some(pid),
                    running: running(pid),
                    generation,
                    problem: None,
                }
            }
            Err(e) => {
                warn!(%key, "cannot start: {e}");
                ProcReport {
                    key: key.to_string(),
                    pid: None,
                    running: false,
                    generation,
                    problem: Some(e.to_string()),
                }
            }
        }
    }
}

/// `understudy host`: run the processes the control plane places on this machine.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The control plane's URL.
    pub control: String,
    /// This host's name in the control plane.
    pub name: String,
    /// The address agents here listen on and the control plane reaches them at.
    pub advertise: String,
    /// Local state: node configurations, lock files, logs, the record of started processes.
    pub data: PathBuf,
    /// The `understudy` binary.
    pub exe: PathBuf,
    /// The control plane's token, if it needs one.
    pub token: Option<String>,
}

/// How often a host asks for its desired processes and reports.
pub const HOST_INTERVAL: Duration = Duration::from_millis(250);

/// Run a host until SIGTERM/SIGINT. The processes it started keep running when it stops (it is
/// not in the data path); started again, it finds them by their recorded pid and marker.
pub async fn run_host(o: HostOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    for d in ["", "nodes", "locks", "logs"] {
        std::fs::create_dir_all(o.data.join(d))
            .with_context(|| format!("--data {}", o.data.display()))?;
    }
    let store = std::sync::Arc::new(
        Store::open(&o.data).with_context(|| format!("--data {}", o.data.display()))?,
    );
    let mut rec = Reconciler::new(
        LocalHost {
            exe: o.exe.clone(),
            data: o.data.clone(),
        },
        store,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .context("HTTP client")?;
    let base = crate::client::base_url(&o.control);
    let seg = crate::client::seg(&o.name);
    info!(control = %base, name = %o.name, advertise = %o.advertise, "host running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut warned = false;
    loop {
        let mut req = http.get(format!("{base}/api/hosts/{seg}/desired"));
        if let Some(t) = &o.token {
            req = req.bearer_auth(t);
        }
        let desired: Option<BTreeMap<String, Value>> = match req.send().await {
            Ok(r) if r.status().is_success() => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| serde_json::from_value(v.get("desired").cloned()?).ok()),
            Ok(r) => {
                if !warned {
                    warn!(status = %r.status(), "the control plane refused this host");
                    warned = true;
                }
                None
            }
            Err(e) => {
                if !warned {
                    warn!("cannot reach the control plane at {base}: {e}; processes here keep running");
                    warned = true;
                }
                None
            }
        };
        // Without an answer nothing is stopped: a control plane that is down or unreachable
        // must never take a trading server or its failover with it.
        if let Some(d) = desired {
            warned = false;
            let reports = rec.step(&d).await;
            let mut put = http
                .put(format!("{base}/api/hosts/{seg}/report"))
                .json(&serde_json::json!({ "advertise": o.advertise, "processes": reports }));
            if let Some(t) = &o.token {
                put = put.bearer_auth(t);
            }
            if let Err(e) = put.send().await {
                warn!("cannot report to the control plane: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HOST_INTERVAL) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("host stopping; the processes it started keep running");
    Ok(())
}
