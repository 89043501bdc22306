//! The group under drill: its nodes, how to read them, and how to bring back an agent a fault
//! stopped. A group is found from admin addresses or a config directory (agents of this host,
//! restarted with the command line, directory and environment they were started with), or
//! started here (`--local N`, with the local-group harness of `understudy-control`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use testbed::alive;
use understudy_control::AgentClient;
use understudy_status::{ActivationMode, StandbyType};

use super::register::Register;
use super::DrillArgs;

/// Largest file system the drill fills to inject a full disk: anything bigger is a real disk
/// that other programs need.
pub const MAX_FILL_BYTES: u64 = 64 << 20;

/// How an agent is started again: what it was started with.
struct Spec {
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    /// None: the drill's own environment.
    env: Option<Vec<(OsString, OsString)>>,
}

/// One node of the group.
pub struct Node {
    pub name: String,
    pub admin: String,
    pub client: AgentClient,
    spec: Option<Spec>,
    /// The agent, when the drill started it (so the drill reaps it).
    child: Option<Child>,
}

/// A group with exactly one Hot node whose standbys are ready.
pub struct Settled {
    pub active: usize,
    pub epoch: u64,
    pub statuses: Vec<Option<Value>>,
}

/// What `--local` adds: the harness's directory, a small tmpfs for the lock, the register.
struct Local {
    group: Option<testbed::Group>,
    tmpfs: Option<testbed::Tmpfs>,
    register: PathBuf,
    keep: bool,
}

pub struct Group {
    pub nodes: Vec<Node>,
    pub supervised: bool,
    /// The group's lock file, when it coordinates through one on this host.
    pub lock_file: Option<PathBuf>,
    /// Why a full disk cannot be injected, if it cannot.
    pub no_disk_fill: Option<String>,
    work_dir: PathBuf,
    /// Processes the drill stopped and has not continued yet: continued on drop.
    stopped: testbed::proc::Stopped,
    local: Option<Local>,
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

impl Group {
    /// Starts a local group of `n` agents protecting the demo service, which writes the
    /// register; the lock and epoch files are on a 16 MiB tmpfs when one can be mounted.
    pub async fn local(exe: PathBuf, n: usize, standby: StandbyType) -> anyhow::Result<Group> {
        if !(2..=NAMES.len()).contains(&n) {
            bail!("--local takes 2 to {} nodes", NAMES.len());
        }
        let mut lg = testbed::Group::create(exe.clone(), ActivationMode::TryLock, standby)?;
        let dir = lg.path.clone();
        let register = dir.join("register.log");
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let (tmpfs, no_disk_fill) = match testbed::Tmpfs::mount(&state, "16m") {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        let lock = state.join("group.lock");
        lg.set_lock(&lock);
        lg.config.service.command = vec![
            exe.display().to_string(),
            "demo-service".into(),
            "--log".into(),
            register.display().to_string(),
            "--tick-ms".into(),
            "5".into(),
        ];
        // A service killed by the drill comes back quickly.
        lg.config.service.restart_backoff = Some(Duration::from_millis(100));
        lg.config.service.restart_backoff_max = Some(Duration::from_secs(1));
        let mut nodes = Vec::new();
        for name in &NAMES[..n] {
            lg.add_node(name, |_| {})?;
            let node = &lg.nodes[*name];
            nodes.push(Node {
                name: node.name.clone(),
                admin: node.admin.clone(),
                client: AgentClient::new(&node.admin, Duration::from_secs(2)),
                spec: Some(Spec {
                    program: exe.clone(),
                    args: vec![
                        "agent".into(),
                        "--config".into(),
                        node.config.clone().into(),
                    ],
                    cwd: dir.clone(),
                    env: None,
                }),
                child: None,
            });
        }
        let mut g = Group {
            nodes,
            supervised: false,
            lock_file: Some(lock),
            no_disk_fill,
            work_dir: dir,
            stopped: Default::default(),
            local: Some(Local {
                group: Some(lg),
                tmpfs,
                register,
                keep: false,
            }),
        };
        // The first node first, so that the group starts with a known active.
        g.spawn(0)?;
        g.wait_answer(0, Duration::from_secs(10), |v| mode(v) == Some("Hot"))
            .await
            .context("the first local agent never became Hot")?;
        for i in 1..n {
            g.spawn(i)?;
        }
        Ok(g)
    }

    /// The group of the agents answering at `addrs`, on this host.
    pub async fn from_agents(
        addrs: &[String],
        args: &DrillArgs,
        auth: &crate::Auth,
    ) -> anyhow::Result<Group> {
        let mut nodes = Vec::new();
        for a in addrs {
            let client = auth.client(a, Duration::from_secs(2))?;
            let st = client
                .status()
                .await
                .with_context(|| format!("{a} does not answer /status"))?;
            nodes.push(Node {
                name: st.node.name,
                admin: a.clone(),
                client,
                spec: None,
                child: None,
            });
        }
        Group::external(nodes, args).await
    }

    /// The group of the configurations in `dir`; nodes not running are started.
    pub async fn from_config_dir(
        exe: PathBuf,
        dir: &Path,
        args: &DrillArgs,
        auth: &crate::Auth,
    ) -> anyhow::Result<Group> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut nodes = Vec::new();
        for f in &files {
            let cfg = understudy_agent::Config::load(f)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("{} is not a valid agent configuration", f.display()))?;
            let admin = cfg.node.admin.to_string();
            nodes.push(Node {
                name: cfg.node.name.clone(),
                client: auth.client(&admin, Duration::from_secs(2))?,
                admin,
                spec: Some(Spec {
                    program: exe.clone(),
                    args: vec!["agent".into(), "--config".into(), f.clone().into()],
                    cwd: std::env::current_dir()?,
                    env: None,
                }),
                child: None,
            });
        }
        if nodes.is_empty() {
            bail!("no *.toml agent configuration in {}", dir.display());
        }
        let mut g = Group::external(nodes, args).await?;
        for i in 0..g.nodes.len() {
            if g.nodes[i].client.status().await.is_err() {
                println!("  starting {} (not running)", g.nodes[i].name);
                g.spawn(i)?;
            }
        }
        Ok(g)
    }

    async fn external(nodes: Vec<Node>, args: &DrillArgs) -> anyhow::Result<Group> {
        if nodes.len() < 2 {
            bail!("a drill needs a group of at least 2 nodes");
        }
        let work_dir = match &args.work_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("understudy-drill-{}", std::process::id())),
        };
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        let mut g = Group {
            nodes,
            supervised: args.supervised,
            lock_file: None,
            no_disk_fill: None,
            work_dir,
            stopped: Default::default(),
            local: None,
        };
        let statuses = g.statuses().await;
        for (n, st) in g.nodes.iter_mut().zip(&statuses) {
            let Some(st) = st else { continue };
            if n.spec.is_none() {
                n.spec = st
                    .get("agent_pid")
                    .and_then(Value::as_u64)
                    .and_then(|p| spec_of(p as u32));
            }
        }
        g.lock_file = statuses
            .iter()
            .flatten()
            .filter_map(|s| s.get("lock_file").and_then(Value::as_str))
            .find(|l| !l.is_empty() && Path::new(l).exists())
            .map(PathBuf::from);
        g.no_disk_fill = match &g.lock_file {
            None => Some("the group has no lock file on this host".into()),
            Some(l) => small_fs(l).err(),
        };
        Ok(g)
    }

    /// The register `--local` makes its services write.
    pub fn register_path(&self) -> Option<PathBuf> {
        self.local.as_ref().map(|l| l.register.clone())
    }

    /// Keep `--local`'s directory after the drill; its path.
    pub fn keep(&mut self) -> Option<PathBuf> {
        let l = self.local.as_mut()?;
        l.keep = true;
        l.group.as_ref().map(|g| g.path.clone())
    }

    /// (name, admin address) of every node, for the watcher.
    pub fn watch_list(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.admin.clone()))
            .collect()
    }

    /// True when every agent can be brought back after a fault stopped it.
    pub fn can_restart(&self) -> bool {
        self.supervised || self.nodes.iter().all(|n| n.spec.is_some())
    }

    /// Every node's `/status` (None: no answer), asked at once.
    pub async fn statuses(&self) -> Vec<Option<Value>> {
        futures_util::future::join_all(self.nodes.iter().map(|n| async move {
            tokio::time::timeout(Duration::from_millis(500), n.client.status())
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|s| serde_json::to_value(s).ok())
        }))
        .await
    }

    /// Waits until exactly one node is Hot, its service is in the register (when there is
    /// one), and every other node is a ready standby — or at least one is, after half of
    /// `within` (a standby whose service keeps failing must not stall the drill).
    pub async fn settle(
        &mut self,
        within: Duration,
        mut reg: Option<&mut Register>,
    ) -> Result<Settled, String> {
        let t = Instant::now();
        loop {
            self.reap();
            let statuses = self.statuses().await;
            let hot: Vec<usize> = (0..statuses.len())
                .filter(|&i| statuses[i].as_ref().and_then(mode) == Some("Hot"))
                .collect();
            let mut why = String::new();
            if let [active] = hot[..] {
                let epoch = epoch_of(statuses[active].as_ref());
                let registered = match reg.as_mut() {
                    Some(r) => {
                        let _ = r.poll();
                        r.period_of_epoch(epoch).is_some()
                    }
                    None => true,
                };
                let ready: Vec<bool> = (0..statuses.len())
                    .filter(|&i| i != active)
                    .map(|i| {
                        statuses[i]
                            .as_ref()
                            .and_then(|s| s.get("ready"))
                            .and_then(Value::as_bool)
                            == Some(true)
                    })
                    .collect();
                let enough = ready.iter().all(|r| *r)
                    || (ready.iter().any(|r| *r) && t.elapsed() > within / 2);
                if registered && enough {
                    return Ok(Settled {
                        active,
                        epoch,
                        statuses,
                    });
                }
                if !registered {
                    why = format!(
                        "; the register has no active service at epoch {epoch} (is --register the file the services write?)"
                    );
                }
            }
            if t.elapsed() > within {
                return Err(format!(
                    "after {within:?}: {}{why}",
                    self.describe(&statuses)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a node is Hot with an epoch above `epoch`; (node, its epoch, when seen).
    pub async fn wait_new_active(&self, epoch: u64, within: Duration) -> Option<(usize, u64, u64)> {
        let t = Instant::now();
        loop {
            let statuses = self.statuses().await;
            for (i, s) in statuses.iter().enumerate() {
                let e = epoch_of(s.as_ref());
                if s.as_ref().and_then(mode) == Some("Hot") && e > epoch {
                    return Some((i, e, testbed::clock::mono_ns()));
                }
            }
            if t.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// One line per node: how it answers.
    pub fn describe(&self, statuses: &[Option<Value>]) -> String {
        self.nodes
            .iter()
            .zip(statuses)
            .map(|(n, s)| match s {
                None => format!("{}: no answer", n.name),
                Some(v) => format!(
                    "{}: {} epoch {}{}{}",
                    n.name,
                    mode(v).unwrap_or("?"),
                    epoch_of(Some(v)),
                    if v.get("ready").and_then(Value::as_bool) == Some(true) {
                        ", ready"
                    } else {
                        ""
                    },
                    v.get("waiting")
                        .and_then(Value::as_str)
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Sends `sig` to `pid`, remembering what it stopped.
    pub fn signal(&mut self, pid: u32, sig: Signal) -> anyhow::Result<()> {
        self.stopped.signal(pid, sig)
    }

    /// Waits until process `pid` is gone (reaping it when the drill started it).
    pub async fn wait_gone(&mut self, pid: u32, within: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            self.reap();
            if !alive(pid) {
                return Ok(());
            }
            if t.elapsed() > within {
                bail!("process {pid} still runs {within:?} after the fault");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Brings node `i`'s agent back after the drill stopped it (`old_pid`): starts it again,
    /// or, under a supervisor, waits until a new agent answers.
    pub async fn restart(
        &mut self,
        i: usize,
        old_pid: u32,
        within: Duration,
    ) -> anyhow::Result<()> {
        if self.supervised {
            let name = self.nodes[i].name.clone();
            self.wait_answer(i, within, |v| {
                v.get("agent_pid").and_then(Value::as_u64) != Some(u64::from(old_pid))
            })
            .await
            .with_context(|| format!("no supervisor started {name}'s agent again"))?;
            return Ok(());
        }
        self.spawn(i)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let local = self.local.is_some();
        let n = &mut self.nodes[i];
        let Some(spec) = &n.spec else {
            bail!(
                "cannot start {}'s agent: its command line is unknown",
                n.name
            );
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work_dir.join(format!("{}.out", n.name)))?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(env) = &spec.env {
            cmd.env_clear().envs(env.iter().cloned());
        }
        // Each agent leads a process group of its own, out of the terminal's reach: a Ctrl-C
        // must stop the drill after its current fault, not the agents under it. The user's
        // agents outlive the drill; its own local ones are killed with it however it ends
        // (testbed's signal handler, or `Drop`).
        let child = if local {
            testbed::proc::spawn(&mut cmd)
        } else {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0).spawn()
        }
        .with_context(|| format!("cannot start {}'s agent", n.name))?;
        n.child = Some(child);
        Ok(())
    }

    /// Waits until node `i` answers `/status` with something `ok` accepts.
    async fn wait_answer(
        &self,
        i: usize,
        within: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        while t.elapsed() < within {
            let answer = self.nodes[i].client.status().await.ok();
            if let Some(v) = answer.and_then(|s| serde_json::to_value(s).ok()) {
                if ok(&v) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!(
            "{} did not answer as expected within {within:?} (its output: {})",
            self.nodes[i].name,
            self.work_dir
                .join(format!("{}.out", self.nodes[i].name))
                .display()
        )
    }

    /// Collects agents the drill started that have exited.
    fn reap(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if !matches!(c.try_wait(), Ok(None)) {
                    // Also forgets its process group, so that nothing signals a reused pid.
                    testbed::proc::stop_child(c);
                    n.child = None;
                }
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stopped.resume_all();
        let Some(local) = self.local.as_mut() else {
            // The user's group keeps running, agents the drill restarted included.
            return;
        };
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                let t = Instant::now();
                while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                testbed::proc::stop_child(&mut c);
            }
        }
        // Unmounted before the harness's directory it lies in is removed.
        drop(local.tmpfs.take());
        if let Some(g) = local.group.take() {
            if local.keep {
                g.keep();
            }
        }
    }
}

/// Ok when the file system holding `file` is small enough to fill ([`MAX_FILL_BYTES`]).
pub fn small_fs(file: &Path) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let st =
        nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    let size = st.blocks() as u64 * st.fragment_size() as u64;
    if size > MAX_FILL_BYTES {
        return Err(format!(
            "the lock file's file system is {} MiB: filling it would harm the host (at most {} MiB; --local mounts a small tmpfs)",
            size >> 20,
            MAX_FILL_BYTES >> 20
        ));
    }
    Ok(())
}

/// What a running agent was started with, from /proc.
fn spec_of(pid: u32) -> Option<Spec> {
    let split = |raw: Vec<u8>| -> Vec<OsString> {
        use std::os::unix::ffi::OsStringExt;
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect()
    };
    let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
    let (first, args) = argv.split_first()?;
    // The binary may have been replaced since (a rebuild): then run what argv[0] names.
    let program = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(p) if !p.to_string_lossy().ends_with(" (deleted)") => p,
        _ => PathBuf::from(first),
    };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let env = split(std::fs::read(format!("/proc/{pid}/environ")).ok()?)
        .into_iter()
        .filter_map(|kv| {
            let s = kv.to_string_lossy().into_owned();
            s.split_once('=')
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        })
        .collect();
    Some(Spec {
        program,
        args: args.to_vec(),
        cwd,
        env: Some(env),
    })
}

/// `mode` of a /status answer.
pub fn mode(v: &Value) -> Option<&str> {
    v.get("mode").and_then(Value::as_str)
}

/// `epoch` of a /status answer (0 when absent).
pub fn epoch_of(v: Option<&Value>) -> u64 {
    v.and_then(|v| v.get("epoch"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A number field of a /status answer, such as `agent_pid` or `/service/pid`.
pub fn pid_at(v: Option<&Value>, pointer: &str) -> Option<u32> {
    v.and_then(|v| v.pointer(pointer))
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
}
