//! The FIX gateway on real processes: the gateway's configuration file (typed, like the
//! agent's), `fix-exchange-sim` upstream of it, and a warm-standby pair of agents whose service
//! is `fix-gateway` on one shared session store ([`FixGroup`]), which the demo, the benchmarks
//! and the tests run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::group::Group;
use crate::http::{notified_ms, wait_port};
use crate::netns::{Lab, Machine};
use crate::proc::Proc;
use understudy_status::{ActivationMode, StandbyType};

/// `gateway.sync`: when a stored message is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StoreSync {
    /// Group commit: one fdatasync per batch of records, nothing sent before its record is
    /// durable (the gateway's default).
    Group,
    /// fdatasync before each message is sent.
    EveryWrite,
    /// fdatasync at most 2 ms after a write.
    Batch,
}

impl std::fmt::Display for StoreSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreSync::Group => "group",
            StoreSync::EveryWrite => "every-write",
            StoreSync::Batch => "batch",
        })
    }
}

/// A gateway's configuration file (`understudy fix-gateway --config`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayFile {
    /// `[gateway]`.
    pub gateway: GatewaySection,
    /// `[[client]]`: the counterparties it accepts.
    pub client: Vec<ClientSection>,
    /// `[[upstream]]`.
    pub upstream: Vec<UpstreamSection>,
}

/// `[gateway]`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySection {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The gateway's CompID.
    pub comp_id: String,
    /// The session store shared by the group.
    pub store_dir: PathBuf,
    /// Durability of the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<StoreSync>,
    /// The upstream orders go to.
    pub default_route: String,
}

/// `[[client]]`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSection {
    /// The client's CompID.
    pub comp_id: String,
}

/// `[[upstream]]`.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSection {
    /// Its name in routes.
    pub name: String,
    /// Its addresses.
    pub connect: Vec<SocketAddr>,
    /// Its CompID.
    pub target_comp_id: String,
    /// `heartbeat_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    /// `reconnect_interval`.
    pub reconnect_interval: String,
}

impl GatewayFile {
    /// Gateway `GW` at `listen` on the store `store`, routing to the simulator `EXCH` at `sim`,
    /// accepting `clients`.
    pub fn new(listen: SocketAddr, store: &Path, sim: SocketAddr, clients: &[&str]) -> Self {
        GatewayFile {
            gateway: GatewaySection {
                listen,
                comp_id: "GW".into(),
                store_dir: store.to_path_buf(),
                sync: None,
                default_route: "EXCH".into(),
            },
            client: clients
                .iter()
                .map(|c| ClientSection {
                    comp_id: c.to_string(),
                })
                .collect(),
            upstream: vec![UpstreamSection {
                name: "EXCH".into(),
                connect: vec![sim],
                target_comp_id: "EXCH".into(),
                heartbeat_interval: None,
                reconnect_interval: "20ms".into(),
            }],
        }
    }

    /// Writes the file to `path`, with the TOML document `extra` (more clients, routes, an
    /// `[admin]` section) merged in.
    pub fn write(&self, path: &Path, extra: &str) -> anyhow::Result<()> {
        let mut doc = crate::config::table_of(self).context("serialising a gateway config")?;
        crate::config::merge(&mut doc, extra).context("extra sections of a gateway config")?;
        std::fs::write(path, toml::to_string(&doc)?).with_context(|| path.display().to_string())
    }
}

/// Starts `fix-exchange-sim` (CompID `EXCH`) on a free port: sessions in memory, or in a
/// FileStore under `store` with its sync policy; its output appended to `log` (or discarded).
/// Returns once it listens.
pub fn start_sim(
    exe: &Path,
    store: Option<(&Path, StoreSync)>,
    log: Option<&Path>,
) -> anyhow::Result<(Proc, SocketAddr)> {
    start_sim_at(exe, crate::ports::free_addrs(1)?[0], store, log)
}

/// [`start_sim`] listening on `addr`.
pub fn start_sim_at(
    exe: &Path,
    addr: SocketAddr,
    store: Option<(&Path, StoreSync)>,
    log: Option<&Path>,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let listen = addr.to_string();
    let mut cmd = crate::proc::understudy(
        exe,
        &[
            "fix-exchange-sim",
            "--listen",
            &listen,
            "--sender-comp-id",
            "EXCH",
        ],
    );
    if let Some((dir, sync)) = store {
        cmd.arg("--store-dir")
            .arg(dir)
            .args(["--sync", &sync.to_string()]);
    }
    match log {
        Some(l) => crate::proc::log_to(&mut cmd, l)?,
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let p = Proc::spawn(&mut cmd).context("cannot start fix-exchange-sim")?;
    if !wait_port(addr, Duration::from_secs(10)) {
        anyhow::bail!("fix-exchange-sim does not listen on {addr}");
    }
    Ok((p, addr))
}

/// The two nodes of a gateway group.
pub const NODES: [&str; 2] = ["a", "b"];

/// The exchange simulator, and the configs of two gateways listening at `ports` on one shared
/// store.
pub struct Pair {
    /// The simulator, killed on drop.
    pub _sim: Proc,
    /// The shared session store.
    pub store: PathBuf,
    /// Where each gateway listens for clients.
    pub ports: [SocketAddr; 2],
    /// The gateways' configuration files (`<dir>/gw-a.toml`, `<dir>/gw-b.toml`).
    pub cfgs: [PathBuf; 2],
}

impl Pair {
    /// Starts the simulator (logging into `<dir>/sim.log`) and writes the configs of gateways
    /// `gw-a` and `gw-b` in `dir` for `clients`, config `i` with the TOML document `extra(i)`
    /// merged in.
    pub fn create(
        exe: &Path,
        dir: &Path,
        sync: Option<StoreSync>,
        clients: &[&str],
        extra: impl Fn(usize) -> String,
    ) -> anyhow::Result<Pair> {
        let (sim_proc, sim) = start_sim(exe, None, Some(&dir.join("sim.log")))?;
        let store = dir.join("store");
        let a = crate::ports::free_addrs(2)?;
        let ports = [a[0], a[1]];
        let cfgs = [dir.join("gw-a.toml"), dir.join("gw-b.toml")];
        for i in 0..2 {
            let mut file = GatewayFile::new(ports[i], &store, sim, clients);
            file.gateway.sync = sync;
            file.upstream[0].heartbeat_interval = Some("5s".into());
            file.write(&cfgs[i], &extra(i))?;
        }
        Ok(Pair {
            _sim: sim_proc,
            store,
            ports,
            cfgs,
        })
    }
}

/// A replicated pair (`[replication]`): each gateway on its own store `<dir>/store-<node>`,
/// streaming to the other, with `[admin] http` for its agent's health check, which reads
/// whether a standby is in sync.
#[derive(Debug, Clone)]
pub struct Replicated {
    /// `replication.mode`: `sync` or `async`.
    pub mode: &'static str,
    /// Where each gateway receives the stream (`replication.listen`).
    pub repl: [SocketAddr; 2],
    /// Each gateway's `[admin] http`.
    pub health: [SocketAddr; 2],
    /// The token file both gateways read (mode 600).
    pub token_file: PathBuf,
    /// `replication.timeout`.
    pub timeout: &'static str,
    /// `replication.sync_timeout`.
    pub sync_timeout: &'static str,
}

impl Replicated {
    /// Free loopback ports, and the token file written in `dir`.
    pub fn new(dir: &Path, mode: &'static str) -> anyhow::Result<Replicated> {
        let a = crate::ports::free_addrs(4)?;
        Self::on(dir, mode, [a[0], a[1]], [a[2], a[3]])
    }

    /// With the addresses given (gateways on other machines), and the token file in `dir`.
    pub fn on(
        dir: &Path,
        mode: &'static str,
        repl: [SocketAddr; 2],
        health: [SocketAddr; 2],
    ) -> anyhow::Result<Replicated> {
        use std::os::unix::fs::OpenOptionsExt;
        let token_file = dir.join("repl.token");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&token_file)
            .with_context(|| token_file.display().to_string())?;
        std::io::Write::write_all(&mut f, b"replication-secret-of-this-test\n")?;
        Ok(Replicated {
            mode,
            repl,
            health,
            token_file,
            timeout: "1500ms",
            sync_timeout: "3s",
        })
    }

    /// The TOML merged into gateway `i`'s configuration.
    pub fn extra(&self, dir: &Path, i: usize) -> String {
        format!(
            "[gateway]\nstore_dir = \"{}\"\n[admin]\nhttp = \"{}\"\n[replication]\nmode = \"{}\"\nlisten = \"{}\"\npeers = [\"{}\"]\ntoken_file = \"{}\"\ntimeout = \"{}\"\nsync_timeout = \"{}\"\nheartbeat = \"100ms\"\n",
            dir.join(format!("store-{}", NODES[i])).display(),
            self.health[i],
            self.mode,
            self.repl[i],
            self.repl[1 - i],
            self.token_file.display(),
            self.timeout,
            self.sync_timeout,
        )
    }

    /// The agents' `[health]` check of their gateway's `GET /health`: a standby that is not
    /// in sync answers `replication.ready = false`, and its agent reports it not ready.
    pub fn health_check(&self, i: usize) -> crate::config::HealthSection {
        crate::config::HealthSection {
            http: format!("http://{}/health", self.health[i]),
            interval: Some(Duration::from_millis(100)),
            timeout: Some(Duration::from_millis(500)),
            failures: Some(5),
            start_period: Some(Duration::from_secs(5)),
        }
    }
}

/// A replicated pair across "machines": nodes a and b (agent, guardian, gateway) each in a
/// network namespace of its own on a bridge, the exchange simulator on the bridge's own address
/// in this process's namespace, where the clients run too: the third machine, which reaches the
/// other two and which their loss does not touch. Fixed ports on each machine's address:
/// gateway 9878, its `/health` 9879, replication 9880, the agent's admin API 7700. Every
/// process of a machine is killed, and the namespaces removed, when this is dropped.
pub struct OnMachines {
    /// The machines a and b.
    pub machines: [Machine; 2],
    /// Where each gateway listens for clients.
    pub ports: [SocketAddr; 2],
    /// The replication settings (addresses on the machines).
    pub repl: Replicated,
    /// The gateways' configuration files (`<dir>/gw-a.toml`, `<dir>/gw-b.toml`).
    pub cfgs: [PathBuf; 2],
    _sim: Proc,
    // Last: the namespaces outlive the simulator's handle.
    _lab: Lab,
}

impl OnMachines {
    /// Creates the bridge and the machines, starts the simulator (logging into
    /// `<dir>/sim.log`), and writes the gateways' configs in `dir` for `clients`, replicated with
    /// `mode`, each on its own store `<dir>/store-<node>`. Needs root and iproute2.
    pub fn create(
        exe: &Path,
        dir: &Path,
        mode: &'static str,
        sync: Option<StoreSync>,
        clients: &[&str],
    ) -> anyhow::Result<OnMachines> {
        let mut lab = Lab::new().context("network namespaces (needs root and iproute2's ip)")?;
        let machines = [lab.machine(NODES[0])?, lab.machine(NODES[1])?];
        let at = |ip: &str, port: u16| -> anyhow::Result<SocketAddr> {
            format!("{ip}:{port}")
                .parse()
                .with_context(|| format!("address {ip}:{port}"))
        };
        let sim_port = crate::ports::free_addrs(1)?[0].port();
        let (sim_proc, sim) = start_sim_at(
            exe,
            at(&lab.address(1), sim_port)?,
            None,
            Some(&dir.join("sim.log")),
        )?;
        let [ma, mb] = &machines;
        let ports = [at(&ma.ip, 9878)?, at(&mb.ip, 9878)?];
        let repl = Replicated::on(
            dir,
            mode,
            [at(&ma.ip, 9880)?, at(&mb.ip, 9880)?],
            [at(&ma.ip, 9879)?, at(&mb.ip, 9879)?],
        )?;
        let cfgs = NODES.map(|n| dir.join(format!("gw-{n}.toml")));
        for i in 0..2 {
            // store_dir is replaced by the node's own store in `repl.extra`.
            let mut file = GatewayFile::new(ports[i], &dir.join("store"), sim, clients);
            file.gateway.sync = sync;
            file.upstream[0].heartbeat_interval = Some("5s".into());
            file.write(&cfgs[i], &repl.extra(dir, i))?;
        }
        Ok(OnMachines {
            machines,
            ports,
            repl,
            cfgs,
            _sim: sim_proc,
            _lab: lab,
        })
    }

    /// Runs nodes a and b of `g` (added by [`add_gateways_with`]) on their machines, their
    /// admin APIs on the machines' addresses.
    pub fn place(&self, g: &mut Group) -> anyhow::Result<()> {
        for (name, m) in NODES.iter().zip(&self.machines) {
            let node = g
                .nodes
                .get_mut(*name)
                .with_context(|| format!("no node {name}"))?;
            let admin = format!("{}:7700", m.ip);
            let text = std::fs::read_to_string(&node.config)
                .with_context(|| node.config.display().to_string())?;
            std::fs::write(&node.config, text.replace(&node.admin, &admin))
                .with_context(|| node.config.display().to_string())?;
            node.admin = admin;
            g.launchers.insert(name.to_string(), Lab::launcher(m));
        }
        Ok(())
    }
}

/// Adds nodes `a` and `b` to `g`, each running `fix-gateway` with its config of `cfgs`.
///
/// Each gateway starts with SIGUSR1 ignored until it installs its own handler, so a signal from
/// its agent that arrives early cannot kill it; the gateway also finds the agent Hot by polling
/// the agent's /status (see docs/fix-gateway.md).
pub fn add_gateways(g: &mut Group, cfgs: &[PathBuf; 2]) -> anyhow::Result<()> {
    add_gateways_with(g, cfgs, None)
}

/// [`add_gateways`], with the agents checking their replicated gateway's health.
pub fn add_gateways_with(
    g: &mut Group,
    cfgs: &[PathBuf; 2],
    repl: Option<&Replicated>,
) -> anyhow::Result<()> {
    let exe = g.exe.display().to_string();
    for (i, (name, cfg)) in NODES.iter().zip(cfgs).enumerate() {
        g.add_node(name, |c| {
            c.health = repl.map(|r| r.health_check(i));
            c.service.command = vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "trap '' USR1; exec {exe} fix-gateway --config {}",
                    cfg.display()
                ),
            ];
        })?;
    }
    Ok(())
}

/// A warm-standby agent group `fix` in trylock mode, without nodes.
pub fn gateway_group(exe: &Path) -> anyhow::Result<Group> {
    let mut g = Group::create(exe, ActivationMode::TryLock, StandbyType::Warm)?;
    g.config.node.group = "fix".into();
    Ok(g)
}

/// Starts node a and waits until it is Hot and its gateway listens at `active`, then node b
/// and waits until it is a ready standby.
pub fn start_active_then_standby(g: &mut Group, active: SocketAddr) -> anyhow::Result<()> {
    g.spawn(NODES[0])?;
    g.wait_hot(NODES[0])?;
    g.spawn(NODES[1])?;
    g.wait_ready_standby(NODES[1])?;
    if !wait_port(active, Duration::from_secs(10)) {
        anyhow::bail!("the active gateway does not listen on {active}");
    }
    Ok(())
}

/// Review 14, U6, on a sync pair started by [`start_active_then_standby`] whose node a keeps
/// its store on `fs`: the pair is stopped whole, a's disk filled and a started again, so that
/// its gateway fails to activate with the epoch a takes (its epoch file cannot be written);
/// then b is started and the disk freed. a, the last active, must take the group back by
/// itself and b rejoin it as a ready standby: the error says what did not happen.
pub fn last_active_fails_to_activate_then_has_room(
    g: &mut Group,
    fs: &crate::Tmpfs,
) -> anyhow::Result<()> {
    let [a, b] = NODES;
    let a_epoch = restart_a_on_a_full_disk(g, fs)?;
    anyhow::ensure!(
        g.wait_service_exited_after(a, a_epoch, Duration::from_secs(20)),
        "a's gateway never failed to activate on a full disk\na status {:?}\na events {}",
        g.status(a),
        g.events(a)
    );
    // The failure is the one meant: the store still says it was last active with a_epoch,
    // and has seen nothing newer.
    g.wait_last_active(a, a_epoch);
    g.spawn(b)?;
    fs.free();
    g.wait_hot(a).with_context(|| {
        format!(
            "a, the last active, did not take the group back\na status {:?}\na events {}\nb status {:?}",
            g.status(a),
            g.events(a),
            g.status(b)
        )
    })?;
    anyhow::ensure!(g.epoch(a) > a_epoch + 1, "a is Hot with its old epoch");
    g.wait_ready_standby(b)
        .with_context(|| format!("b never in sync with a: {:?}", g.status(b)))
}

/// Stops the pair whole (b first), fills a's file system `fs` and starts a again; returns the
/// epoch a was active with before.
fn restart_a_on_a_full_disk(g: &mut Group, fs: &crate::Tmpfs) -> anyhow::Result<u64> {
    let [a, b] = NODES;
    let a_epoch = g.epoch(a);
    g.sigterm(b, Duration::from_secs(10));
    g.sigterm(a, Duration::from_secs(10));
    anyhow::ensure!(fs.fill() > 0, "the file system was not filled");
    g.spawn(a)?;
    Ok(a_epoch)
}

/// Review 16, W7.1, on a sync pair started by [`start_active_then_standby`] whose node a keeps
/// its store on `fs` and whose agents back off for seconds after a failed service (so that
/// nothing but this function decides when a's agent stops): the pair is stopped whole, a's disk
/// filled and a started again; its gateway fails to activate `failures` times, each with an
/// epoch of its own; then a's agent is stopped, the disk freed and both agents started again.
/// The restarted agent knows its run of epochs only from the epoch file, whose two slots show
/// the last two. After one failure they show the epoch a was last active with: a takes the
/// group back by itself. After two or more they do not, so a cannot tell that the epoch before
/// was its own: it stays a standby (its store still says last active with the old epoch, and
/// nothing newer seen), and so does b, out of sync with a's store, until an operator's
/// `understudy activate` (PUT hot), which makes a active and b its standby again.
pub fn restarted_after_failing_to_activate(
    g: &mut Group,
    fs: &crate::Tmpfs,
    failures: u64,
) -> anyhow::Result<()> {
    let [a, b] = NODES;
    anyhow::ensure!(failures >= 1, "at least one failed activation");
    let a_epoch = restart_a_on_a_full_disk(g, fs)?;
    for k in 0..failures {
        anyhow::ensure!(
            g.wait_service_exited_after(a, a_epoch + k, Duration::from_secs(30)),
            "a's gateway did not fail to activate a {}th time on a full disk\na status {:?}\na events {}",
            k + 1,
            g.status(a),
            g.events(a)
        );
    }
    // Exactly the epochs meant, one per failure: the backoff keeps a's agent from trying again
    // before it is stopped.
    let failed: Vec<u64> = g.events(a)["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["kind"] == "service_exited")
                .filter_map(|e| e["epoch"].as_u64())
                .filter(|&n| n > a_epoch)
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(
        failed == (a_epoch + 1..=a_epoch + failures).collect::<Vec<_>>(),
        "a's gateway failed with epochs {failed:?}, not the {failures} after {a_epoch}"
    );
    g.sigterm(a, Duration::from_secs(10));
    // And none after them: the file the restarted agent reads ends with a's failed epochs.
    let file = understudy_coordinator::EpochStore::for_lock(&g.lock).read_slots()?;
    anyhow::ensure!(
        file.newest
            == understudy_coordinator::EpochRead::Value {
                epoch: a_epoch + failures,
                holder: a.to_string()
            },
        "the epoch file does not end with a's failed epochs: {file:?}"
    );
    fs.free();
    g.spawn(b)?;
    g.spawn(a)?;
    if failures == 1 {
        g.wait_hot(a).with_context(|| {
            format!(
                "a, the last active, restarted after one failed activation, did not take the group back\na status {:?}\na events {}\nb status {:?}",
                g.status(a),
                g.events(a),
                g.status(b)
            )
        })?;
    } else {
        for n in [a, b] {
            g.wait_status(
                n,
                "a standby whose gateway answered",
                Duration::from_secs(20),
                |s| {
                    crate::http::is_mode(s, "Warm")
                        && s["service"]["detail"]["replication"]["last_active_epoch"].is_u64()
                },
            );
        }
        // What keeps a a standby is the rule meant: its store is the last active's.
        g.wait_last_active(a, a_epoch);
        for n in [a, b] {
            g.stays(n, "Warm", Duration::from_secs(3));
            anyhow::ensure!(
                g.st(n)["ready"] != true,
                "{n} ready after a's {failures} failed activations and a restart: {:?}",
                g.status(n)
            );
        }
        g.put_hot_ok(a);
        g.wait_hot(a)?;
    }
    anyhow::ensure!(
        g.epoch(a) > a_epoch + failures,
        "a is Hot with an old epoch"
    );
    g.wait_ready_standby(b)
        .with_context(|| format!("b never in sync with a: {:?}", g.status(b)))
}

/// A gateway group on this host with everything it needs: `fix-exchange-sim`, two agents `a`
/// and `b` whose warm-standby service is `fix-gateway`, one shared store, all in the group's
/// directory. The demo and the benchmarks run it.
pub struct FixGroup {
    /// The agents (`None` while [`FixGroup::blocking`] has them).
    pub group: Option<Group>,
    /// Client addresses of the gateways of nodes a and b.
    pub gateways: [SocketAddr; 2],
    dir: PathBuf,
    hosts: Hosts,
}

/// What a [`FixGroup`] runs on besides its agents.
enum Hosts {
    /// This host: the simulator and the gateways' configs.
    Here {
        /// The simulator (kept running) and the gateways' ports.
        pair: Pair,
    },
    /// A machine (network namespace) for each node.
    Machines(Box<OnMachines>),
}

impl FixGroup {
    /// Starts the simulator and both agents, the gateways storing with `sync` and accepting
    /// `clients`; node a is active, b a ready standby.
    pub async fn start(
        exe: PathBuf,
        sync: StoreSync,
        clients: &[&str],
    ) -> anyhow::Result<FixGroup> {
        Self::start_with(exe, sync, clients, None).await
    }

    /// [`FixGroup::start`]; with `replication` (`"sync"` or `"async"`), each gateway on its
    /// own store, replicated to the other (see [`Replicated`]).
    pub async fn start_with(
        exe: PathBuf,
        sync: StoreSync,
        clients: &[&str],
        replication: Option<&'static str>,
    ) -> anyhow::Result<FixGroup> {
        Self::launch(exe, clients, move |exe, dir, clients, g| {
            let repl = match replication {
                Some(mode) => Some(Replicated::new(dir, mode)?),
                None => None,
            };
            let pair = Pair::create(exe, dir, Some(sync), clients, |i| {
                repl.as_ref().map(|r| r.extra(dir, i)).unwrap_or_default()
            })?;
            add_gateways_with(g, &pair.cfgs, repl.as_ref())?;
            Ok(Hosts::Here { pair })
        })
        .await
    }

    /// [`FixGroup::start_with`] replicated with `mode`, each node on a machine of its own
    /// ([`OnMachines`]; needs root); returns once node b is a ready standby, in sync.
    pub async fn start_on_machines(
        exe: PathBuf,
        sync: StoreSync,
        clients: &[&str],
        mode: &'static str,
    ) -> anyhow::Result<FixGroup> {
        Self::launch(exe, clients, move |exe, dir, clients, g| {
            let on = OnMachines::create(exe, dir, mode, Some(sync), clients)?;
            add_gateways_with(g, &on.cfgs, Some(&on.repl))?;
            on.place(g)?;
            Ok(Hosts::Machines(Box::new(on)))
        })
        .await
    }

    /// The agents' group in a fresh directory, `hosts` setting up the rest (given the
    /// executable, the directory and the clients); then node a active, b a ready standby.
    async fn launch(
        exe: PathBuf,
        clients: &[&str],
        hosts: impl FnOnce(&Path, &Path, &[&str], &mut Group) -> anyhow::Result<Hosts> + Send + 'static,
    ) -> anyhow::Result<FixGroup> {
        let clients: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
            let mut g = gateway_group(&exe)?;
            let dir = g.path.clone();
            let hosts = hosts(&exe, &dir, &clients, &mut g)?;
            let gateways = match &hosts {
                Hosts::Here { pair } => pair.ports,
                Hosts::Machines(on) => on.ports,
            };
            start_active_then_standby(&mut g, gateways[0])?;
            Ok(FixGroup {
                group: Some(g),
                gateways,
                dir,
                hosts,
            })
        })
        .await?
    }

    /// Node `i`'s machine, when each node has one.
    pub fn machine(&self, i: usize) -> Option<&Machine> {
        match &self.hosts {
            Hosts::Machines(on) => on.machines.get(i),
            Hosts::Here { .. } => None,
        }
    }

    /// Runs `f` on the agents in a blocking task.
    pub async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Group) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut g = self.group.take().context("the group is in use")?;
        let (g, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut g);
            (g, out)
        })
        .await?;
        self.group = Some(g);
        Ok(out)
    }

    /// The pid of node `i`'s agent, if it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        let n = self.group.as_ref()?.nodes.get(NODES[i])?;
        n.child.as_ref().map(|c| c.id())
    }

    /// A client `comp_id` configured with both gateway addresses.
    pub fn client(
        &self,
        comp_id: &str,
        reconnect: Duration,
    ) -> anyhow::Result<understudy_fix::client::Client> {
        Ok(understudy_fix::client::start(
            understudy_fix::client::ClientConfig {
                connect: self.gateways.to_vec(),
                sender_comp_id: comp_id.into(),
                target_comp_id: "GW".into(),
                begin_string: understudy_fix::tags::BeginString::Fix44,
                heartbeat_interval: Duration::from_secs(30),
                reconnect_interval: reconnect,
                ..Default::default()
            },
        )?)
    }

    /// Node `i`'s agent's last takeover: (detection → service notified, kill → service
    /// notified through its wall-clock detection time).
    pub fn takeover(&self, i: usize, kill_unix_ms: f64) -> Option<(f64, f64)> {
        let t = self.group.as_ref()?.takeover(NODES[i], None)?;
        notified_ms(&t, kill_unix_ms)
    }

    /// The directory with the configs, the store and every log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FixGroup {
    fn drop(&mut self) {
        if let Some(mut g) = self.group.take() {
            g.stop_all();
        }
    }
}
