//! A hot-standby price group on this host, built from real processes: `understudy exchange-sim`,
//! N `understudy agent`s in trylock mode whose service is `understudy price-server` with
//! `service.standby = "hot"`, and an in-process [`PriceClient`] whose every event is recorded.
//!
//! Shared by `understudy bench price-failover`, `understudy demo price` and the process-level
//! tests (`tests/price_*.rs`). The driver is synchronous: agents are driven with blocking
//! calls on this thread while the client runs on the group's own runtime, so the driver's
//! waiting never delays the client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use tokio::time::Instant;
use understudy_pricefeed::{ClientOptions, PriceClient};

use super::recorder::{self, QuoteRecorder, Recorded};
use crate::clock::{ms, unix_ms_f64, wait_until};
use crate::config::HealthSection;
use crate::group::Group;
use crate::http::{epoch_of, get_json, is_mode, notified_ms, service_pid_of};
use crate::proc::Proc;
use understudy_status::{ActivationMode, StandbyType};

/// Node names, in order.
const NAMES: [&str; 9] = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];

/// How to build a [`PriceGroup`].
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Price servers (= agents) in the group.
    pub servers: usize,
    /// Instruments on the exchange.
    pub instruments: u32,
    /// Exchange updates per second.
    pub rate: u32,
    /// The client subscribes to `SYM1` … `SYM<subscribe>`.
    pub subscribe: u32,
    /// The client's tuning (heartbeat timeout and so on).
    pub client: ClientOptions,
    /// Give each price server a status endpoint (`--http`) and each agent a `[health] http`
    /// check on it (every 100 ms, 3 failures of 200 ms), so a hung server is failed over.
    pub health_check: bool,
    /// More arguments for every price server (e.g. `--tls-cert FILE --tls-key FILE`).
    pub server_args: Vec<String>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            servers: 2,
            instruments: 200,
            rate: 20_000,
            subscribe: 50,
            client: ClientOptions::default(),
            health_check: false,
            server_args: Vec::new(),
        }
    }
}

/// One kill -9 of the active agent, as seen by the client and by the agent that took over.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The node killed.
    pub killed: usize,
    /// The node that took over.
    pub new_active: usize,
    /// Highest epoch the client had delivered before the kill.
    pub old_epoch: u64,
    /// The new active's epoch.
    pub new_epoch: u64,
    /// Kill → first price of a newer epoch delivered to the application.
    pub stale_ms: f64,
    /// Kill → every subscribed instrument delivered at the newer epoch (None: not all came back).
    pub all_back_ms: Option<f64>,
    /// Subscribed instruments delivered at the newer epoch.
    pub symbols_back: usize,
    /// The new active agent's own figure: its detection → service told it is active.
    pub agent_notified_ms: Option<f64>,
    /// Kill → service told it is active, from the agent's wall-clock detection time (±1 ms).
    pub kill_to_notified_ms: Option<f64>,
}

/// The running group. Dropping it stops everything it started (a stopped process is resumed
/// first, so that it can be told to stop).
pub struct PriceGroup {
    /// The `understudy` binary.
    pub exe: PathBuf,
    /// The exchange feed's address.
    pub exchange_addr: SocketAddr,
    exchange: Option<Proc>,
    /// The instruments on the exchange.
    pub instruments: u32,
    /// Exchange rate.
    pub rate: u32,
    /// The agents, nodes `a`, `b`, … (node `i` is the `i`th name).
    pub group: Group,
    /// Client address of each node's price server.
    pub servers: Vec<SocketAddr>,
    /// Each price server's own status endpoint (`--http`: `GET /status`).
    pub status_http: Vec<SocketAddr>,
    /// What the client delivered to the application.
    pub recorder: QuoteRecorder,
    /// The client's subscriptions.
    pub subscribed: Vec<String>,
    /// Processes this driver has SIGSTOPped and not yet resumed.
    stopped: crate::proc::Stopped,
    // Last: the runtime must outlive the recorder's task (fields drop in order).
    rt: tokio::runtime::Runtime,
}

impl PriceGroup {
    /// Starts the exchange, the agents (the first becomes Hot, the others ready standbys) and
    /// the client, and waits until the client has a price for every subscription.
    pub fn start(exe: PathBuf, opts: GroupOptions) -> anyhow::Result<Self> {
        if opts.servers < 1 || opts.servers > NAMES.len() {
            bail!("a price group has 1 to {} servers", NAMES.len());
        }
        if opts.subscribe > opts.instruments {
            bail!("cannot subscribe to more instruments than the exchange lists");
        }
        let rt = crate::runtime()?;
        // Our ports stay reserved while the agents' admin ports are chosen, so none collide.
        let reserved = crate::ports::reserve(2 * opts.servers + 1)?;
        let addrs = reserved
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let exchange_addr = addrs[0];
        let servers = addrs[1..=opts.servers].to_vec();
        let https = addrs[opts.servers + 1..].to_vec();
        let mut group = Group::create(exe.clone(), ActivationMode::TryLock, StandbyType::Hot)?;
        group.config.node.group = "price".into();
        for (i, name) in NAMES[..opts.servers].iter().enumerate() {
            group.add_node(name, |c| {
                c.service.command = recorder::price_server_command(&exe, exchange_addr, servers[i]);
                // Its own status endpoint: what the driver waits on (subscriptions registered).
                c.service
                    .command
                    .extend(["--http".to_string(), https[i].to_string()]);
                c.service.command.extend(opts.server_args.iter().cloned());
                if opts.health_check {
                    c.health = Some(HealthSection {
                        http: format!("http://{}/health", https[i]),
                        interval: Some(Duration::from_millis(100)),
                        timeout: Some(Duration::from_millis(200)),
                        failures: Some(3),
                        start_period: Some(Duration::from_secs(2)),
                    });
                    // A hung server ignores SIGTERM: the lock waits out the whole grace
                    // before the SIGKILL, so the harness's 3 s would leave a failover test
                    // little of its 5 s (it once took 5.1 s on a loaded machine).
                    c.service.stop_timeout = Some(Duration::from_secs(1));
                }
            })?;
        }
        drop(reserved);
        let exchange = rt
            .block_on(recorder::start_exchange(
                &exe,
                exchange_addr,
                opts.instruments,
                opts.rate,
                None,
            ))
            .context("starting exchange-sim")?;
        let subscribed = recorder::symbols(opts.subscribe);
        let recorder = rt.block_on(async {
            let client = PriceClient::connect(servers.clone(), opts.client.clone())?;
            client.subscribe(&subscribed);
            Ok::<_, understudy_pricefeed::Error>(QuoteRecorder::start(client))
        })?;
        let mut g = PriceGroup {
            exe,
            exchange_addr,
            exchange: Some(exchange),
            instruments: opts.instruments,
            rate: opts.rate,
            group,
            servers,
            status_http: https,
            recorder,
            subscribed,
            stopped: Default::default(),
            rt,
        };
        g.group.spawn(NAMES[0])?;
        g.group.wait_hot(NAMES[0]).with_context(|| g.log_tail(0))?;
        g.check_alive(0)?;
        for name in &NAMES[1..opts.servers] {
            g.group.spawn(name)?;
        }
        for i in 1..opts.servers {
            g.group
                .wait_ready_standby(g.name(i))
                .with_context(|| format!("{}\n{}", g.log_tail(i), g.log_tail(0)))?;
        }
        let want = g.subscribed.len();
        if !g.wait(Duration::from_secs(10), |r| {
            r.symbols_at_epoch(r.highest_epoch) == want
        }) {
            bail!(
                "the client got prices for only {}/{want} instruments (logs in {})",
                g.recorded(|r| r.symbols_at_epoch(r.highest_epoch)),
                g.group.path.display()
            );
        }
        // Every standby has the client's subscriptions once the client is connected to it.
        for i in 1..opts.servers {
            g.wait_client_connected(i, 0)?;
        }
        Ok(g)
    }

    /// Sleeps on the group's runtime (the client keeps running meanwhile).
    pub fn sleep(&self, d: Duration) {
        // The timer must be created inside the runtime, hence the async block.
        self.rt.block_on(async move { tokio::time::sleep(d).await });
    }

    /// Reads what the client has delivered so far.
    pub fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        self.recorder.with(f)
    }

    /// Waits until the recorded state satisfies `cond`.
    pub fn wait(&self, within: Duration, cond: impl Fn(&Recorded) -> bool) -> bool {
        self.rt.block_on(self.recorder.wait_for(within, cond))
    }

    /// Runs a future on the group's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The runtime's handle (to start more clients on it).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &'static str {
        NAMES.get(i).copied().unwrap_or("?")
    }

    /// `GET /status` of node `i`.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        self.group.status(self.name(i))
    }

    /// The node whose agent is Hot now, if any.
    pub fn active(&self) -> Option<usize> {
        (0..self.servers.len()).find(|&i| {
            self.group.running(self.name(i)) && self.status(i).is_some_and(|v| is_mode(&v, "Hot"))
        })
    }

    /// The pid of node `i`'s agent.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        let n = self.group.nodes.get(self.name(i))?;
        n.child.as_ref().map(|c| c.id())
    }

    /// The pid of node `i`'s service (the price server), from its agent's /status.
    pub fn service_pid(&self, i: usize) -> Option<u32> {
        service_pid_of(&self.status(i)?)
    }

    /// Sends `sig` to `pid`, remembering stopped processes so that they are resumed on drop.
    pub fn signal(&mut self, pid: u32, sig: Signal) -> anyhow::Result<()> {
        self.stopped.signal(pid, sig)
    }

    /// kill -9 the active agent and measure what follows: first price of a newer epoch, every
    /// subscription back, and the new active agent's own takeover timeline.
    pub fn kill_active(&mut self) -> anyhow::Result<Failover> {
        let killed = self.active().context("no active node to kill")?;
        let old_epoch = self.recorded(|r| r.highest_epoch);
        let want = self.subscribed.len();
        let t0_wall_ms = unix_ms_f64();
        let t0 = Instant::now();
        self.group.kill9(self.name(killed));
        if !self.wait(Duration::from_secs(5), |r| {
            r.first_after(old_epoch).is_some()
        }) {
            bail!(
                "no price with an epoch above {old_epoch} within 5 s of killing node {} (logs in {})",
                self.name(killed),
                self.group.path.display()
            );
        }
        self.wait(Duration::from_secs(5), |r| {
            r.all_back_at(old_epoch, want).is_some()
        });
        let (first, symbols_back, all_at) = self.recorded(|r| {
            (
                r.first_after(old_epoch).unwrap_or(t0),
                r.symbols_after(old_epoch).len(),
                r.all_back_at(old_epoch, want),
            )
        });
        let new_active = self.wait_new_active(old_epoch)?;
        let new_epoch = self
            .status(new_active)
            .as_ref()
            .and_then(epoch_of)
            .unwrap_or(0);
        let (agent_notified_ms, kill_to_notified_ms) =
            self.takeover(new_active, new_epoch, t0_wall_ms);
        Ok(Failover {
            killed,
            new_active,
            old_epoch,
            new_epoch,
            stale_ms: ms(first.saturating_duration_since(t0)),
            all_back_ms: all_at.map(|t| ms(t.saturating_duration_since(t0))),
            symbols_back,
            agent_notified_ms,
            kill_to_notified_ms,
        })
    }

    fn wait_new_active(&self, old_epoch: u64) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for i in 0..self.servers.len() {
                if !self.group.running(self.name(i)) {
                    continue;
                }
                if let Some(v) = self.status(i) {
                    if is_mode(&v, "Hot") && epoch_of(&v).unwrap_or(0) > old_epoch {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no agent is Hot with an epoch above {old_epoch}");
            }
            self.sleep(Duration::from_millis(2));
        }
    }

    /// The agent's own figures for its takeover at `epoch`: detection → service notified, and
    /// kill → service notified through the agent's wall-clock detection time.
    fn takeover(&self, i: usize, epoch: u64, t0_wall_ms: f64) -> (Option<f64>, Option<f64>) {
        match self
            .group
            .takeover(self.name(i), Some(epoch))
            .and_then(|t| notified_ms(&t, t0_wall_ms))
        {
            Some((notified, end_to_end)) => (Some(notified), Some(end_to_end)),
            None => (None, None),
        }
    }

    /// Restarts node `i`'s agent and waits until it is a ready standby and the client has
    /// reconnected to its price server (which then mirrors the client's subscriptions).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let before = self.recorded(|r| r.connects.get(&self.servers[i]).copied().unwrap_or(0));
        self.group.spawn(self.name(i))?;
        self.group
            .wait_ready_standby(self.name(i))
            .with_context(|| self.log_tail(i))?;
        self.wait_client_connected(i, before)
    }

    /// Waits until the client has connected to node `i`'s server more than `before` times, and
    /// the server counts the client's subscriptions (a standby mirrors them).
    fn wait_client_connected(&self, i: usize, before: u64) -> anyhow::Result<()> {
        let addr = self.servers[i];
        if !self.wait(Duration::from_secs(10), |r| {
            r.connects.get(&addr).copied().unwrap_or(0) > before
        }) {
            bail!(
                "the client never connected to {addr} (node {})",
                self.name(i)
            );
        }
        let (want, status) = (self.subscribed.len(), self.status_http[i].to_string());
        let mut have = None;
        if !wait_until(Duration::from_secs(10), || {
            have = get_json(&status, "/status").and_then(|v| v["client_subscriptions"].as_u64());
            have.is_some_and(|n| n >= want as u64)
        }) {
            bail!(
                "node {}'s price server counts {have:?} client subscriptions, not the client's {want}",
                self.name(i)
            );
        }
        Ok(())
    }

    /// Stops the exchange (kill -9: every price server loses its upstream), waits `down`, and
    /// starts a new one on the same address.
    pub fn restart_exchange(&mut self, down: Duration) -> anyhow::Result<()> {
        if let Some(mut ex) = self.exchange.take() {
            ex.kill();
        }
        self.sleep(down);
        let ex = self
            .rt
            .block_on(recorder::start_exchange(
                &self.exe,
                self.exchange_addr,
                self.instruments,
                self.rate,
                None,
            ))
            .context("restarting exchange-sim")?;
        self.exchange = Some(ex);
        Ok(())
    }

    /// Fails if node `i`'s agent has exited (e.g. its admin port was taken meanwhile: another
    /// agent may then answer on that address).
    fn check_alive(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self
            .group
            .nodes
            .get_mut(NAMES[i])
            .and_then(|n| n.child.as_mut());
        let exited = match child.map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not started".into()),
        };
        match exited {
            Some(how) => bail!(
                "agent {} exited ({how}); {}",
                self.name(i),
                self.log_tail(i)
            ),
            None => Ok(()),
        }
    }

    /// The end of node `i`'s log (agent and price server), for error messages: the directory
    /// is removed when the group is dropped.
    pub fn log_tail(&self, i: usize) -> String {
        let text = self.group.output(self.name(i));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("last lines of node {}'s log:\n{tail}", self.name(i))
    }

    /// The directory with the configs and the agents' logs.
    pub fn dir(&self) -> &std::path::Path {
        &self.group.path
    }
}

impl Drop for PriceGroup {
    fn drop(&mut self) {
        // A stopped process cannot act on SIGTERM, and the group waits for its agents to exit.
        self.stopped.resume_all();
        self.group.stop_all();
    }
}
