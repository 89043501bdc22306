//! A group of real `understudy agent` processes on this host, in a temp directory (lock file,
//! configs, agents' output, the demo service's shared log): what the tests, the demo and the
//! benchmarks run, and what the price and FIX groups build on.
//!
//! Methods that return a `Result` are for drivers; the others are for tests and panic with the
//! agent's output when the group does not do what they wait for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::checkers::{check_overlaps, intervals, read_log, Interval, LogLine, Watcher};
use crate::clock::{sleep_ms, wait_until};
use crate::config::{AgentConfig, Overrides};
use crate::http::{get_json, is_mode, is_ready_standby, post, put};
use crate::proc::{alive, environ, exit_within, signal, stop_child};
use understudy_status::{ActivationMode, Events, StandbyType, Takeover};

/// One node of a [`Group`].
pub struct Node {
    /// Node name.
    pub name: String,
    /// Admin address.
    pub admin: String,
    /// Its config file.
    pub config: PathBuf,
    /// The agent's stdout and stderr.
    pub out: PathBuf,
    /// The running agent process.
    pub child: Option<Child>,
}

/// A group of real agents; dropping it kills every agent (and any service that outlived its
/// agent, a defect the tests report).
pub struct Group {
    /// The temp directory, removed on drop (kept when a test panics).
    pub dir: Option<tempfile::TempDir>,
    /// Its path.
    pub path: PathBuf,
    /// The group's lock file.
    pub lock: PathBuf,
    /// The demo service's shared log.
    pub log: PathBuf,
    /// The `understudy` binary that runs the agents.
    pub exe: PathBuf,
    /// The configuration of every node added from now on (its name and admin address aside).
    pub config: AgentConfig,
    /// Raw TOML values by key over `config`'s `[activation]`.
    pub activation: Overrides,
    /// Raw TOML values by key over `config`'s `[service]`.
    pub service: Overrides,
    /// More TOML sections, merged into every node's file.
    pub tail: String,
    /// The nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// A command that runs a node's agent (e.g. `ip netns exec NS`), by node name.
    pub launchers: BTreeMap<String, Vec<String>>,
}

impl Group {
    /// A group in `mode` in a new temp directory, each node protecting
    /// `understudy demo-service --log <dir>/service.log` as a `standby` standby. `exe` is the
    /// `understudy` binary: tests hand `env!("CARGO_BIN_EXE_understudy")`, the CLI its own path.
    pub fn create(
        exe: impl Into<PathBuf>,
        mode: ActivationMode,
        standby: StandbyType,
    ) -> anyhow::Result<Group> {
        let exe = exe.into();
        let dir = tempfile::Builder::new()
            .prefix("understudy-")
            .tempdir()
            .context("cannot create a temp directory")?;
        let path = dir.path().to_path_buf();
        let lock = path.join("group.lock");
        let log = path.join("service.log");
        let mut config = AgentConfig::new("", "g", "", mode, Vec::new(), standby);
        config.activation.lock_file = Some(lock.clone());
        config.activation.heartbeat_interval = Some(Duration::from_millis(100));
        config.service.restart_backoff = Some(Duration::from_millis(300));
        config.service.restart_backoff_max = Some(Duration::from_secs(1));
        config.service.stop_timeout = Some(Duration::from_secs(3));
        let mut g = Group {
            dir: Some(dir),
            path,
            lock,
            log,
            exe,
            config,
            activation: Overrides::default(),
            service: Overrides::default(),
            tail: String::new(),
            nodes: BTreeMap::new(),
            launchers: BTreeMap::new(),
        };
        g.config.service.command = g.demo_service(None);
        Ok(g)
    }

    /// The built-in demo service logging into the group's log, also reporting each activation
    /// by UDP to `report` if given.
    pub fn demo_service(&self, report: Option<SocketAddr>) -> Vec<String> {
        let mut cmd = vec![
            self.exe.display().to_string(),
            "demo-service".to_string(),
            "--log".to_string(),
            self.log.display().to_string(),
        ];
        if let Some(r) = report {
            cmd.extend(["--report".to_string(), r.to_string()]);
        }
        cmd
    }

    /// Sets `activation.<key>` to a raw TOML value.
    pub fn set_activation(&mut self, key: &str, toml_value: &str) {
        self.activation.insert(key, toml_value);
    }

    /// Sets `service.<key>` to a raw TOML value.
    pub fn set_service(&mut self, key: &str, toml_value: &str) {
        self.service.insert(key, toml_value);
    }

    /// Uses the lock file at `lock` (e.g. on a special file system).
    pub fn set_lock(&mut self, lock: &Path) {
        self.lock = lock.to_path_buf();
        self.config.activation.lock_file = Some(lock.to_path_buf());
    }

    /// Writes node `name`'s configuration (the group's, changed by `edit`) with a free admin
    /// port, without starting it; returns the admin address.
    pub fn add_node(
        &mut self,
        name: &str,
        edit: impl FnOnce(&mut AgentConfig),
    ) -> anyhow::Result<String> {
        let admin = self.free_admin()?;
        let mut cfg = self.config.clone();
        cfg.node.name = name.to_string();
        cfg.node.admin = admin.clone();
        if cfg.etcd.is_some() && cfg.node.journal_file.is_none() {
            // Each test's timeline of its own: an earlier test's events are not this one's.
            cfg.node.journal_file = Some(self.path.join(format!("{name}.journal.jsonl")));
        }
        edit(&mut cfg);
        let config = self.path.join(format!("{name}.toml"));
        let text = cfg.render(&self.activation, &self.service, &self.tail)?;
        std::fs::write(&config, text).with_context(|| config.display().to_string())?;
        self.nodes.insert(
            name.to_string(),
            Node {
                name: name.to_string(),
                admin: admin.clone(),
                config,
                out: self.path.join(format!("{name}.out")),
                child: None,
            },
        );
        Ok(admin)
    }

    /// A free loopback address that no node of the group has: the kernel readily hands a
    /// just-released port out again, and the port is released at once (a test may start the
    /// agent its own way).
    fn free_admin(&self) -> anyhow::Result<String> {
        for _ in 0..20 {
            let a = crate::ports::free_addrs(1).context("cannot find a free admin port")?[0]
                .to_string();
            if !self.nodes.values().any(|n| n.admin == a) {
                return Ok(a);
            }
        }
        bail!("no free admin port distinct from the group's others")
    }

    /// [`Group::add_node`] with the group's configuration; panics on failure (for tests).
    pub fn add(&mut self, name: &str) -> String {
        self.add_node(name, |_| {})
            .unwrap_or_else(|e| panic!("adding node {name}: {e:#}"))
    }

    /// Starts node `name`'s agent (added first if new), its output appended to `<dir>/<name>.out`;
    /// does not wait for it.
    pub fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn_with(name, &[], &[])
    }

    /// [`Group::spawn`] with `global` arguments before the `agent` subcommand (such as
    /// `--log-format json`) and extra environment variables.
    pub fn spawn_with(
        &mut self,
        name: &str,
        global: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        if !self.nodes.contains_key(name) {
            self.add_node(name, |_| {})?;
        }
        let launcher = self.launchers.get(name).cloned().unwrap_or_default();
        let exe = self.exe.clone();
        let Some(node) = self.nodes.get_mut(name) else {
            bail!("no node {name}");
        };
        if node.child.is_some() {
            bail!("agent {name} is already running");
        }
        let config = node.config.display().to_string();
        let mut argv: Vec<&str> = global.to_vec();
        argv.extend(["agent", "--config", &config]);
        let mut cmd = match launcher.split_first() {
            Some((prog, args)) => {
                let mut c = std::process::Command::new(prog);
                c.args(args).arg(&exe).args(&argv);
                c.stdin(std::process::Stdio::null());
                c
            }
            None => crate::proc::understudy(&exe, &argv),
        };
        cmd.env("RUST_LOG", "info");
        cmd.envs(env.iter().copied());
        crate::proc::log_to(&mut cmd, &node.out)?;
        node.child = Some(
            crate::proc::spawn(&mut cmd).with_context(|| format!("cannot start agent {name}"))?,
        );
        Ok(())
    }

    /// Starts node `name` (added first if new); returns its admin address once its admin API
    /// answers. Panics when the agent exits or does not answer within 10 s (for tests).
    pub fn start(&mut self, name: &str) -> String {
        self.start_with(name, &[], &[])
    }

    /// Spawns node `name` as [`Group::spawn_with`] does; panics when it cannot (for tests).
    pub fn launch(&mut self, name: &str, global: &[&str], env: &[(&str, &str)]) {
        if let Err(e) = self.spawn_with(name, global, env) {
            panic!("{e:#}");
        }
    }

    /// [`Group::start`] with `global` arguments and extra environment, as [`Group::spawn_with`].
    pub fn start_with(&mut self, name: &str, global: &[&str], env: &[(&str, &str)]) -> String {
        self.launch(name, global, env);
        let admin = self.admin(name);
        let ok = wait_until(Duration::from_secs(10), || {
            if let Some(c) = self.nodes.get_mut(name).and_then(|n| n.child.as_mut()) {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "agent {name} exited at start with {st}:\n{}",
                        self.output(name)
                    );
                }
            }
            get_json(&admin, "/status").is_some()
        });
        assert!(ok, "agent {name}'s admin API never answered at {admin}");
        admin
    }

    /// Node `name`'s admin address.
    pub fn admin(&self, name: &str) -> String {
        self.node(name).admin.clone()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name} in the group"))
    }

    /// The agent's pid; panics when it does not run (for tests).
    pub fn agent_pid(&self, name: &str) -> u32 {
        self.node(name)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("agent {name} does not run"))
            .id()
    }

    /// True while this group runs node `name`'s agent.
    pub fn running(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.child.is_some())
    }

    /// The agent's captured stdout and stderr.
    pub fn output(&self, name: &str) -> String {
        self.nodes
            .get(name)
            .and_then(|n| std::fs::read_to_string(&n.out).ok())
            .unwrap_or_default()
    }

    /// `GET path` on node `name`'s admin API.
    pub fn get(&self, name: &str, path: &str) -> Option<Value> {
        get_json(&self.nodes.get(name)?.admin, path)
    }

    /// `GET /status`.
    pub fn status(&self, name: &str) -> Option<Value> {
        self.get(name, "/status")
    }

    /// `/status`, panicking when the node does not answer.
    pub fn st(&self, name: &str) -> Value {
        self.status(name)
            .unwrap_or_else(|| panic!("{name} does not answer /status"))
    }

    /// The node's state (`Hot`/`Warm`) from `/service/activationmode`.
    pub fn mode(&self, name: &str) -> Option<String> {
        self.get(name, "/service/activationmode")
            .and_then(|v| v.get("mode").and_then(Value::as_str).map(str::to_string))
    }

    /// The node's epoch; panics when it does not answer.
    pub fn epoch(&self, name: &str) -> u64 {
        self.st(name)["epoch"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}'s /status has no epoch"))
    }

    /// The service pid /status reports.
    pub fn service_pid(&self, name: &str) -> Option<u32> {
        self.status(name)
            .as_ref()
            .and_then(crate::http::service_pid_of)
    }

    /// [`service_pid`](Self::service_pid), asked again for up to `timeout`: one `/status`
    /// read can miss its own timeout on a loaded machine, or come before the service is up.
    pub fn wait_service_pid(&self, name: &str, timeout: Duration) -> Option<u32> {
        let mut pid = None;
        wait_until(timeout, || {
            pid = self.service_pid(name);
            pid.is_some()
        });
        pid
    }

    fn wait_for(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
        if !wait_until(Duration::from_secs(10), || {
            self.status(name).is_some_and(|v| f(&v))
        }) {
            bail!(
                "agent {name} never became {what} (see {})",
                self.node(name).out.display()
            );
        }
        Ok(())
    }

    /// Waits up to 10 s until node `name` is Hot.
    pub fn wait_hot(&self, name: &str) -> anyhow::Result<()> {
        self.wait_for(name, "Hot", |v| is_mode(v, "Hot"))
    }

    /// Waits up to 10 s until node `name` is a ready standby.
    pub fn wait_ready_standby(&self, name: &str) -> anyhow::Result<()> {
        self.wait_for(name, "a ready standby", is_ready_standby)
    }

    /// The last takeover in node `name`'s `/events`, or the one of `epoch`.
    pub fn takeover(&self, name: &str, epoch: Option<u64>) -> Option<Takeover> {
        let events: Events = serde_json::from_value(self.get(name, "/events")?).ok()?;
        events.takeover(epoch).cloned()
    }

    /// Waits until `name` reports `want` (Hot/Warm) on /service/activationmode.
    pub fn wait_mode(&self, name: &str, want: &str, timeout: Duration) {
        let mut last = None;
        let ok = wait_until(timeout, || {
            last = self.mode(name);
            last.as_deref() == Some(want)
        });
        assert!(
            ok,
            "{name} not {want} within {timeout:?} (last: {last:?}); status: {:?}\n--- {name} output:\n{}",
            self.status(name),
            tail(&self.output(name), 40)
        );
    }

    /// Waits until `name`'s /status satisfies `f`; the status.
    pub fn wait_status(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = None;
        let ok = wait_until(timeout, || {
            last = self.status(name);
            last.as_ref().is_some_and(&f)
        });
        match last {
            Some(v) if ok => v,
            last => panic!(
                "{name}: {what} not reached within {timeout:?}; last status {last:?}\n--- {name} output:\n{}",
                tail(&self.output(name), 40)
            ),
        }
    }

    /// The name of the one node answering Hot, waiting up to `timeout` for exactly one.
    pub fn active(&self, timeout: Duration) -> String {
        let mut hot = Vec::new();
        let ok = wait_until(timeout, || {
            hot = self
                .nodes
                .iter()
                .filter(|(_, n)| n.child.is_some())
                .filter(|(name, _)| self.mode(name).as_deref() == Some("Hot"))
                .map(|(name, _)| name.clone())
                .collect();
            hot.len() == 1
        });
        assert!(ok, "expected exactly one Hot node, saw {hot:?}");
        hot.remove(0)
    }

    /// `kill -9` the agent and reap it; false when it was not running.
    pub fn kill9(&mut self, name: &str) -> bool {
        match self.nodes.get_mut(name).and_then(|n| n.child.take()) {
            Some(mut c) => {
                stop_child(&mut c);
                true
            }
            None => false,
        }
    }

    /// SIGSTOP the agent.
    pub fn sigstop(&self, name: &str) {
        signal(self.agent_pid(name), Signal::SIGSTOP);
    }

    /// SIGCONT the agent.
    pub fn sigcont(&self, name: &str) {
        signal(self.agent_pid(name), Signal::SIGCONT);
    }

    /// SIGTERM the agent and wait for it to exit; panics after `timeout`.
    pub fn sigterm(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        signal(self.agent_pid(name), Signal::SIGTERM);
        let mut c = self
            .nodes
            .get_mut(name)
            .and_then(|n| n.child.take())
            .unwrap_or_else(|| panic!("agent {name} does not run"));
        exit_within(&mut c, timeout, || {
            format!(
                "agent {name} did not exit within {timeout:?} of SIGTERM:\n{}",
                self.output(name)
            )
        })
    }

    /// SIGTERM every agent and wait for it (SIGKILL after 10 s).
    pub fn stop_all(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                if let Ok(pid) = i32::try_from(c.id()) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
                }
                if crate::proc::wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                    stop_child(&mut c);
                }
            }
        }
    }

    /// Stops every agent and keeps the directory (for `--keep`); its path.
    pub fn keep(mut self) -> PathBuf {
        self.stop_all();
        match self.dir.take() {
            Some(d) => d.keep(),
            None => self.path.clone(),
        }
    }

    /// GET /events of a node.
    pub fn events(&self, name: &str) -> Value {
        self.get(name, "/events")
            .unwrap_or_else(|| panic!("{name}: no /events"))
    }

    /// The kinds of a node's timeline entries, in order.
    pub fn event_kinds(&self, name: &str) -> Vec<String> {
        self.events(name)["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["kind"].as_str().map(str::to_string))
            .collect()
    }

    /// Asserts that `name`'s timeline holds an entry of each of `kinds`.
    pub fn assert_events(&self, name: &str, kinds: &[&str]) {
        let seen = self.event_kinds(name);
        for k in kinds {
            assert!(
                seen.iter().any(|x| x == k),
                "{name}'s events lack {k}: {seen:?}"
            );
        }
    }

    /// `PUT /service/activationmode/hot` on `name`; (status, body).
    pub fn put_hot(&self, name: &str) -> (u16, Value) {
        put(&self.admin(name), "/service/activationmode/hot")
    }

    /// `PUT hot` on `name`, which must answer 200; the body.
    pub fn put_hot_ok(&self, name: &str) -> Value {
        let (code, body) = self.put_hot(name);
        assert_eq!(code, 200, "PUT hot on {name}: {body}");
        body
    }

    /// `PUT hot` on `name`, which must answer 409 naming `holder`; the body.
    pub fn put_hot_refused(&self, name: &str, holder: &str) -> Value {
        let (code, body) = self.put_hot(name);
        assert_eq!(code, 409, "PUT hot on {name}: {body}");
        assert_eq!(body["holder"], holder, "the 409 names the holder: {body}");
        body
    }

    /// `POST /service/switchover` on `name`; (status, body).
    pub fn switchover(&self, name: &str) -> (u16, Value) {
        post(&self.admin(name), "/service/switchover")
    }

    /// Why `name` is waiting, as /status says ("" when it is not).
    pub fn waiting(&self, name: &str) -> String {
        self.st(name)["waiting"].as_str().unwrap_or("").to_string()
    }

    /// Waits until `name`'s /status says ready.
    pub fn wait_ready(&self, name: &str, timeout: Duration) -> Value {
        self.wait_status(name, "ready", timeout, |s| s["ready"] == true)
    }

    /// Waits until `name`'s timeline records its service exiting at an epoch above `epoch` (the
    /// timeline outlives agent restarts, so earlier exits do not count); false after `timeout`.
    pub fn wait_service_exited_after(&self, name: &str, epoch: u64, timeout: Duration) -> bool {
        crate::clock::wait_until(timeout, || {
            self.get(name, "/events").is_some_and(|v| {
                v["events"].as_array().is_some_and(|es| {
                    es.iter().any(|e| {
                        e["kind"] == "service_exited"
                            && e["epoch"].as_u64().is_some_and(|n| n > epoch)
                    })
                })
            })
        })
    }

    /// Waits until `name`'s replicated gateway, as a standby, reports its store last active
    /// with `epoch` and no newer epoch seen; panics after 10 s.
    pub fn wait_last_active(&self, name: &str, epoch: u64) {
        let ok = crate::clock::wait_until(Duration::from_secs(10), || {
            self.status(name).is_some_and(|s| {
                let r = &s["service"]["detail"]["replication"];
                r["last_active_epoch"].as_u64() == Some(epoch)
                    && r["seen_epoch"].as_u64() == Some(epoch)
            })
        });
        assert!(
            ok,
            "{name}'s gateway never reported its store last active with epoch {epoch}: {:?}",
            self.status(name)
        );
    }

    /// Asserts that `name` answers `want` (Hot/Warm) on every poll (each 20 ms) for `d`.
    pub fn stays(&self, name: &str, want: &str, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            assert_eq!(
                self.mode(name).as_deref(),
                Some(want),
                "{name} left {want} by itself: {:?}",
                self.status(name)
            );
            sleep_ms(20);
        }
    }

    /// Adds nodes `a` and `b` and returns a watcher of both.
    pub fn add_watched_pair(&mut self) -> Watcher {
        self.add("a");
        self.add("b");
        self.watch()
    }

    /// Starts `a` and waits until it is Hot (5 s), then starts `b`.
    pub fn start_a_hot_then_b(&mut self) {
        self.start("a");
        self.wait_mode("a", "Hot", Duration::from_secs(5));
        self.start("b");
    }

    /// Whether the service log holds a line that satisfies `f`.
    pub fn logged(&self, f: impl Fn(&LogLine) -> bool) -> bool {
        read_log(&self.log).iter().any(f)
    }

    /// A watcher of every node of the group (nodes added later are not watched).
    pub fn watch(&self) -> Watcher {
        Watcher::start(
            self.nodes
                .values()
                .map(|n| (n.name.clone(), n.admin.clone()))
                .collect(),
        )
    }

    /// Waits until the service log shows `node`'s service active with `epoch`.
    pub fn wait_service_active(&self, node: &str, epoch: u64) {
        let ok = wait_until(Duration::from_secs(5), || {
            self.logged(|l| l.node == node && l.event == "active" && l.epoch == epoch)
        });
        assert!(
            ok,
            "{node}'s service never logged active with epoch {epoch}"
        );
    }

    /// Waits until the group's lock file holds `node`'s heartbeat at `epoch` (written every
    /// heartbeat interval by the active): what a standby judges freshness by at takeover.
    pub fn wait_heartbeat(&self, node: &str, epoch: u64, timeout: Duration) {
        let want = format!(" node={node} epoch={epoch} ");
        let ok = wait_until(timeout, || {
            std::fs::read_to_string(&self.lock).is_ok_and(|t| t.contains(&want))
        });
        assert!(
            ok,
            "no heartbeat of {node} at epoch {epoch} in {} within {timeout:?}",
            self.lock.display()
        );
    }

    /// Waits until the log holds `n` active intervals, runs the overlap checker, and asserts
    /// that there are exactly `n` (so the checker is never satisfied by an empty log).
    pub fn expect_actives(&self, n: usize) -> Vec<Interval> {
        wait_until(Duration::from_secs(5), || {
            intervals(&read_log(&self.log)).is_ok_and(|ivs| ivs.len() >= n)
        });
        let ivs = self.check_log();
        assert_eq!(
            ivs.len(),
            n,
            "expected {n} active services in the log: {ivs:#?}"
        );
        ivs
    }

    /// Parses and checks the demo service log (overlap checker); panics on a violation.
    pub fn check_log(&self) -> Vec<Interval> {
        check_overlaps(&self.log)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            // SIGKILL works on a stopped agent too.
            if let Some(c) = n.child.as_mut() {
                stop_child(c);
            }
        }
        // Services that outlived their agents are a defect the tests report; clean up anyway.
        for l in read_log(&self.log) {
            if alive(l.pid) && environ(l.pid).contains_key("UNDERSTUDY_NODE") {
                if let Ok(pid) = i32::try_from(l.pid) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if std::thread::panicking() {
            for name in self.nodes.keys() {
                eprintln!(
                    "--- output of agent {name}:\n{}",
                    tail(&self.output(name), 60)
                );
            }
            eprintln!(
                "--- service log:\n{}",
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 60)
            );
            if let Some(d) = self.dir.take() {
                eprintln!("--- test dir kept: {}", d.keep().display());
            }
        }
    }
}

/// The last `n` lines of `s`, with tick lines dropped (they drown everything else).
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.contains(" tick ")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Receives one activation report of the demo service (`… <mono_ns>`, see
/// [`Group::demo_service`]); None after `timeout`.
pub fn receive_report(
    sock: &std::net::UdpSocket,
    timeout: Duration,
) -> anyhow::Result<Option<u64>> {
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 256];
    match sock.recv(&mut buf) {
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            Ok(text.split_whitespace().last().and_then(|t| t.parse().ok()))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
