//! The FIX gateway (warm standby, document 002) on real processes: the gateway group
//! ([`group`]), `bench fix-roundtrip` (our engines and the gateway against QuickFIX's,
//! [`roundtrip`]), `bench fix-recovery`, `demo fix`, and the order and session checks the
//! tests share ([`orders`]).

pub mod group;
pub mod orders;
mod roundtrip;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::clock::unix_ms_f64 as unix_ms;
use crate::runtime;
use crate::stats::{Clock, Summary, Table};
pub use group::{FixGroup, GatewayFile, Pair, StoreSync};
pub use roundtrip::FixBenchArgs;

/// FIX benchmarks (`understudy bench …`).
#[derive(Subcommand, Debug)]
pub enum FixBench {
    /// Order round trips, one at a time (latency) and pipelined (throughput): our engine and
    /// QuickFIX's as acceptors store for store, and client → gateway → fix-exchange-sim →
    /// back, with several clients at once; then issue 9's group-commit goals.
    FixRoundtrip(FixBenchArgs),
    /// Recovery after kill -9 of the active agent (two agents, warm-standby gateways on a
    /// shared directory) and, with `--replicated`, after the loss of the active's whole machine
    /// (replicated gateways): time until the new active accepts the client's Logon with its
    /// sequence numbers continuing, next to the agent's own takeover in the same runs.
    FixRecovery(FixRecoveryArgs),
}

/// Arguments of `bench fix-recovery`.
#[derive(Args, Debug)]
pub struct FixRecoveryArgs {
    /// Number of kills.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Store durability of the gateways.
    #[arg(long, value_enum, default_value = "group")]
    pub sync: StoreSync,
    /// Also a pair whose gateways each keep their own store, replicated with
    /// `replication.mode = "sync"`, each node (agent, guardian, gateway) in a network namespace
    /// of its own; each run SIGKILLs every process of the active's namespace at once. Interleaved
    /// with the shared-directory pair (which goes first alternates). Needs root and iproute2.
    #[arg(long)]
    pub replicated: bool,
    /// Client sessions logged on to each pair, each a connection of its own, all reconnecting
    /// (every 2 ms) after each kill: the first sends each run's order and its Logon is the
    /// recovery row; with more, the time until the last is logged on again is a row of its own
    /// (the reconnect storm a new active meets).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_RECOVERY_CLIENTS))]
    pub clients: u16,
}

/// Most client sessions `bench fix-recovery` logs on: each is a session in both gateways'
/// configurations and a store of its own.
const MAX_RECOVERY_CLIENTS: i64 = 1000;

/// The CompID of the recovery bench's client `i` (from 0): the first is `BENCH`, as before
/// there were more.
fn recovery_client(i: usize) -> String {
    if i == 0 {
        "BENCH".to_owned()
    } else {
        format!("BENCH{}", i + 1)
    }
}

impl FixBench {
    /// Run the benchmark; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixBench::FixRoundtrip(a) => runtime()?.block_on(roundtrip::roundtrip_bench(a)),
            FixBench::FixRecovery(a) => {
                if a.runs == 0 {
                    anyhow::bail!("--runs must be at least 1");
                }
                runtime()?.block_on(recovery_bench(a))
            }
        }
    }
}

/// A market order body for the benchmark.
fn bench_order(id: &str) -> Vec<u8> {
    use understudy_fix::orders::{put_str, tag};
    let mut b = Vec::with_capacity(96);
    put_str(&mut b, tag::CL_ORD_ID, id);
    put_str(&mut b, tag::SYMBOL, "BENCH");
    put_str(&mut b, tag::SIDE, "1");
    put_str(&mut b, tag::ORDER_QTY, "1");
    put_str(&mut b, tag::ORD_TYPE, "1");
    b
}

/// Waits for the fill (an ExecutionReport with OrdStatus 2) of every order in `ids`. Any other
/// fill is an error, except one marked PossDupFlag=Y (a report sent again, as after a
/// failover) of an order `sent_before` says this client sent earlier: a path that loses a
/// fill, routes it to another client or mangles its ClOrdID fails the benchmark instead of
/// being timed.
async fn fills(
    c: &mut understudy_fix::client::Client,
    ids: impl IntoIterator<Item = String>,
    sent_before: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    use understudy_fix::client::ClientEvent;
    use understudy_fix::orders::tag;
    let mut awaited: std::collections::HashSet<String> = ids.into_iter().collect();
    let asked = awaited.len();
    let mut seen = Seen::default();
    let wait = async {
        while !awaited.is_empty() {
            let Some(e) = c.events.recv().await else {
                anyhow::bail!("client stopped; {seen}");
            };
            seen.note(&e);
            let ClientEvent::Message {
                msg_type, poss_dup, ..
            } = &e
            else {
                continue;
            };
            if msg_type != "8" || e.field(tag::ORD_STATUS) != Some("2") {
                continue;
            }
            let id = e.field(tag::CL_ORD_ID).unwrap_or_default();
            let awaited_or_resent = awaited.remove(id) || (*poss_dup && sent_before(id));
            if !awaited_or_resent {
                anyhow::bail!(
                    "a fill of ClOrdID {id:?}{}, which this client did not send or had filled already; {seen}",
                    if *poss_dup { " (PossDupFlag=Y)" } else { "" }
                );
            }
        }
        Ok(())
    };
    match tokio::time::timeout(FILLS_TIMEOUT, wait).await {
        Ok(r) => r,
        Err(_) => {
            // In the order sent: the ClOrdIDs end with a running number.
            let mut missing: Vec<&String> = awaited.iter().collect();
            missing.sort_by_key(|id| (id.len(), *id));
            missing.truncate(3);
            anyhow::bail!(
                "timed out waiting for fills: {} of {asked} not filled after {} s (first {missing:?}); {seen}",
                awaited.len(),
                FILLS_TIMEOUT.as_secs()
            )
        }
    }
}

/// How long [`fills`] waits for the last fill.
const FILLS_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client received while [`fills`] waited: when a fill never comes, whether the
/// session broke, the counterparty rejected something, or messages simply stopped.
#[derive(Default)]
struct Seen {
    messages: u64,
    last_seq: u64,
    /// Everything but execution reports, in arrival order, the first [`Seen::KEPT`].
    other: Vec<String>,
    /// Such events not kept.
    more: u64,
}

impl Seen {
    const KEPT: usize = 8;

    fn note(&mut self, e: &understudy_fix::client::ClientEvent) {
        use understudy_fix::client::ClientEvent;
        let what = match e {
            ClientEvent::Message { seq, msg_type, .. } => {
                self.messages += 1;
                self.last_seq = *seq;
                if msg_type == "8" {
                    return;
                }
                format!("message {msg_type} (seq {seq})")
            }
            ClientEvent::LoggedOn(_) => "logged on".to_owned(),
            ClientEvent::LoggedOut(why) => format!("connection ended: {why}"),
            ClientEvent::Session(s) => s.to_string(),
        };
        if self.other.len() < Self::KEPT {
            self.other.push(what);
        } else {
            self.more += 1;
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} application messages received meanwhile, the last numbered {}",
            self.messages, self.last_seq
        )?;
        if self.other.is_empty() {
            return write!(f, ", no session event");
        }
        write!(f, "; other events: {}", self.other.join(", "))?;
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// Arguments of `understudy demo fix`.
#[derive(Args, Debug)]
pub struct FixDemoArgs {
    /// Orders sent before, at and after the kill (each).
    #[arg(long, default_value_t = 3)]
    orders: usize,
}

/// `understudy demo fix`: the exchange simulator, two agents whose warm-standby service is the
/// FIX gateway, and a client configured with both gateway addresses. The active agent is
/// killed with SIGKILL; the client logs on to the new active with its sequence numbers
/// continuing and every order is answered. Everything started is stopped at the end.
pub fn demo(args: FixDemoArgs) -> anyhow::Result<u8> {
    if args.orders == 0 || args.orders > 1000 {
        anyhow::bail!("--orders must be between 1 and 1000");
    }
    runtime()?.block_on(demo_run(args))
}

/// The demo's view of the client: prints what arrives, keeps the reports.
struct DemoClient {
    c: understudy_fix::client::Client,
    tally: Tally,
}

/// What the demo's client received.
#[derive(Default)]
struct Tally {
    /// ExecID → (ClOrdID, ExecType) of the first copy of each report.
    reports: std::collections::HashMap<String, (String, String)>,
    dups: usize,
}

impl DemoClient {
    fn order(&mut self, cl: &str) {
        use understudy_fix::orders::{put_str, tag};
        let mut b = Vec::new();
        put_str(&mut b, tag::CL_ORD_ID, cl);
        put_str(&mut b, tag::SYMBOL, "DEMO");
        put_str(&mut b, tag::SIDE, "1");
        put_str(&mut b, tag::ORDER_QTY, "100");
        put_str(&mut b, tag::ORD_TYPE, "1");
        b.extend_from_slice(b"60=");
        understudy_fix::time::write_utc_timestamp(&mut b, std::time::SystemTime::now());
        b.push(understudy_fix::tags::SOH);
        self.c.handle.send(0, b"D", b);
    }

    /// Prints events until every order in `cls` is filled (or `timeout`); returns the Logon
    /// seen on the way, if any.
    async fn until_filled(
        &mut self,
        cls: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Option<understudy_fix::engine::LogonInfo>> {
        use understudy_fix::client::ClientEvent;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut logon = None;
        loop {
            let filled = |r: &std::collections::HashMap<String, (String, String)>, cl: &str| {
                r.values().filter(|(c, t)| c == cl && t == "F").count() == 2
            };
            if cls.iter().all(|cl| filled(&self.tally.reports, cl)) {
                return Ok(logon);
            }
            let e = match tokio::time::timeout_at(deadline, self.c.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => anyhow::bail!("client stopped"),
                Err(_) => anyhow::bail!("orders not answered within {timeout:?}"),
            };
            if let ClientEvent::LoggedOn(info) = &e {
                println!(
                    "    client logged on: next MsgSeqNum out {}, in {}{}",
                    info.next_sender_seq,
                    info.next_target_seq,
                    if info.reset { " (RESET)" } else { "" }
                );
                logon = Some(info.clone());
            } else {
                self.tally.note(&e);
            }
        }
    }

    /// Waits for the client's next Logon (see [`logon_continuing`]), printing and keeping
    /// what arrives before it: the reports the old active sent just before it died reach the
    /// client then, and the new active never sends them again (the client has their sequence
    /// numbers), so dropping them would count their orders as unanswered.
    async fn until_logon(
        &mut self,
        prev: Option<&understudy_fix::engine::LogonInfo>,
        timeout: Duration,
    ) -> anyhow::Result<understudy_fix::engine::LogonInfo> {
        let tally = &mut self.tally;
        logon_continuing(&mut self.c, prev, timeout, |e| tally.note(&e)).await
    }
}

impl Tally {
    /// Prints an event other than a Logon and keeps the first copy of each execution report.
    fn note(&mut self, e: &understudy_fix::client::ClientEvent) {
        use understudy_fix::client::ClientEvent;
        use understudy_fix::orders::tag;
        match e {
            ClientEvent::Message {
                seq,
                poss_dup,
                poss_resend,
                msg_type,
                ..
            } if msg_type == "8" => {
                let id = e.field(tag::EXEC_ID).unwrap_or_default().to_owned();
                let cl = e.field(tag::CL_ORD_ID).unwrap_or_default().to_owned();
                let et = e.field(tag::EXEC_TYPE).unwrap_or_default().to_owned();
                let what = match (et.as_str(), e.field(tag::ORD_STATUS)) {
                    ("0", _) => "New",
                    ("F", Some("2")) => "Filled",
                    ("F", _) => "Partially filled",
                    _ => "other",
                };
                let copy = if self.reports.contains_key(&id) {
                    self.dups += 1;
                    "   (a PossDup copy, already seen: ignored)"
                } else if *poss_dup || *poss_resend {
                    "   (PossDup)"
                } else {
                    ""
                };
                println!(
                    "    ← ExecutionReport {cl:<4} {what:<16} ExecID {id}  MsgSeqNum {seq}{copy}"
                );
                self.reports.entry(id).or_insert((cl, et));
            }
            ClientEvent::LoggedOut(why) => println!("    client disconnected: {why}"),
            ClientEvent::Session(ev) => println!("    session: {ev}"),
            _ => {}
        }
    }
}

async fn demo_run(args: FixDemoArgs) -> anyhow::Result<u8> {
    let n = args.orders;
    println!("understudy demo fix: a warm-standby FIX gateway group on this host");
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let mut fg = FixGroup::start(exe, StoreSync::EveryWrite, &["CLIENT1"]).await?;
    let pid = |fg: &FixGroup, i: usize| fg.agent_pid(i).map(|p| p.to_string()).unwrap_or_default();
    println!(
        "  agent a: Hot  (pid {}), its fix-gateway serves clients on {}",
        pid(&fg, 0),
        fg.gateways[0]
    );
    println!(
        "  agent b: Warm (pid {}), its fix-gateway has validated its config and waits; nothing listens on {}",
        pid(&fg, 1),
        fg.gateways[1]
    );
    println!(
        "  shared session store {}\n",
        fg.dir().join("store").display()
    );
    println!(
        "client CLIENT1 (FIX 4.4) configured with both addresses {} and {}:",
        fg.gateways[0], fg.gateways[1]
    );
    let c = fg.client("CLIENT1", Duration::from_millis(10))?;
    let mut dc = DemoClient {
        c,
        tally: Tally::default(),
    };
    let before: Vec<String> = (1..=n).map(|i| format!("B{i}")).collect();
    let first = dc.until_logon(None, Duration::from_secs(10)).await?;
    println!(
        "    client logged on: next MsgSeqNum out {}, in {}",
        first.next_sender_seq, first.next_target_seq
    );
    for cl in &before {
        println!("    → NewOrderSingle {cl} (market, 100)");
        dc.order(cl);
    }
    dc.until_filled(&before, Duration::from_secs(10)).await?;

    let at_kill: Vec<String> = (1..=n).map(|i| format!("K{i}")).collect();
    println!("\n{n} more orders, and kill -9 of agent a right behind them:");
    for cl in &at_kill {
        println!("    → NewOrderSingle {cl} (market, 100)");
        dc.order(cl);
    }
    let kill_unix = unix_ms();
    let t0 = std::time::Instant::now();
    fg.blocking(|g| g.kill9("a")).await?;
    println!("    kill -9 agent a (its gateway dies with it)");
    let second = dc
        .until_logon(Some(&first), Duration::from_secs(10))
        .await?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    fg.blocking(|g| g.wait_hot("b")).await??;
    println!(
        "    client logged on to agent b's gateway {:.1} ms after the kill: next MsgSeqNum out {}, in {} — continuing, no reset",
        took, second.next_sender_seq, second.next_target_seq
    );
    if let Some((notified, e2e)) = fg.takeover(1, kill_unix) {
        println!(
            "    (agent b: kill → its gateway told it is active {e2e:.1} ms; lock obtained → told {notified:.1} ms)"
        );
    }
    let after: Vec<String> = (1..=n).map(|i| format!("A{i}")).collect();
    println!("\n{n} orders after the failover:");
    for cl in &after {
        println!("    → NewOrderSingle {cl} (market, 100)");
        dc.order(cl);
    }
    let mut all = before.clone();
    all.extend(at_kill.iter().cloned());
    all.extend(after.iter().cloned());
    dc.until_filled(&all, Duration::from_secs(20)).await?;
    // Late PossDup copies, if any, for the tally.
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        dc.until_filled(&["never".to_owned()], Duration::from_millis(300)),
    )
    .await;
    let mut by_order: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (cl, et) in dc.tally.reports.values() {
        by_order.entry(cl).or_default().push(et);
    }
    let complete = all
        .iter()
        .filter(|cl| {
            let mut v = by_order.get(cl.as_str()).cloned().unwrap_or_default();
            v.sort();
            v == ["0", "F", "F"]
        })
        .count();
    println!(
        "\n{complete} of {} orders answered exactly once (New, partial fill, fill); {} PossDup copies ignored by ExecID",
        all.len(),
        dc.tally.dups
    );
    dc.c.task.abort();
    drop(fg);
    println!("stopped the agents, gateways and exchange simulator; temp directory removed");
    Ok(if complete == all.len() { 0 } else { 1 })
}

/// Waits for the client's next Logon, handing the events before it to `on_other` (the
/// recovery bench counts no reports; the demo keeps them, [`DemoClient::until_logon`]); fails
/// on a reset or sequence numbers that did not go forward since `prev`.
async fn logon_continuing(
    c: &mut understudy_fix::client::Client,
    prev: Option<&understudy_fix::engine::LogonInfo>,
    timeout: Duration,
    mut on_other: impl FnMut(understudy_fix::client::ClientEvent),
) -> anyhow::Result<understudy_fix::engine::LogonInfo> {
    use understudy_fix::client::ClientEvent;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Ok(Some(ClientEvent::LoggedOn(info))) => {
                if let Some(p) = prev {
                    if info.reset
                        || info.next_sender_seq <= p.next_sender_seq
                        || info.next_target_seq <= p.next_target_seq
                    {
                        anyhow::bail!("sequence numbers did not continue: {p:?} then {info:?}");
                    }
                }
                return Ok(info);
            }
            Ok(Some(e)) => on_other(e),
            Ok(None) => anyhow::bail!("client stopped"),
            Err(_) => anyhow::bail!("no logon within {timeout:?}"),
        }
    }
}

/// One pair under `bench fix-recovery`, and what its runs measured.
struct RecoveryRig {
    name: &'static str,
    fg: FixGroup,
    /// The two-Hot watcher over both agents, for every run (taken at the end).
    watcher: Option<crate::checkers::Watcher>,
    c: understudy_fix::client::Client,
    prev: understudy_fix::engine::LogonInfo,
    /// The other clients (`--clients`), each with its last Logon.
    others: Vec<(
        understudy_fix::client::Client,
        understudy_fix::engine::LogonInfo,
    )>,
    active: usize,
    recovery: Vec<f64>,
    /// Kill → the last of all the clients logged on again (with others only).
    all_back: Vec<f64>,
    agent_notified: Vec<f64>,
    agent_e2e: Vec<f64>,
    beyond: Vec<f64>,
    /// Processes of each machine lost (none when only the agent is killed).
    machine_procs: Vec<usize>,
    /// Where the logs of each run beyond [`RECOVERY_GOAL_MS`] were kept, or why not.
    kept: Vec<String>,
}

/// The recovery goal of issue 9: FIX recovery beyond the agent's takeover, in ms.
const RECOVERY_GOAL_MS: f64 = 100.0;

/// The group's files worth reading after a slow run: logs, agents' output, configurations.
/// Stores are left: they can be large, and the logs say what happened to them.
fn is_kept(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "log" | "out" | "toml" | "cfg"))
}

/// Copies every file under `from` that [`is_kept`] to the same place under `to`; returns how
/// many.
fn copy_kept(from: &Path, to: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (path, dest) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            n += copy_kept(&path, &dest)?;
        } else if is_kept(&path) {
            std::fs::create_dir_all(to)?;
            std::fs::copy(&path, &dest)?;
            n += 1;
        }
    }
    Ok(n)
}

impl RecoveryRig {
    /// The shared-directory pair on this host, or (`machines`) the replicated pair with a
    /// machine for each node.
    async fn start(
        name: &'static str,
        sync: StoreSync,
        machines: bool,
        clients: usize,
    ) -> anyhow::Result<RecoveryRig> {
        let exe = std::env::current_exe().context("cannot find the understudy executable")?;
        let ids: Vec<String> = (0..clients).map(recovery_client).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let fg = if machines {
            FixGroup::start_on_machines(exe, sync, &ids, "sync").await?
        } else {
            FixGroup::start(exe, sync, &ids).await?
        };
        let watcher = Some(fg.group.as_ref().context("the group")?.watch());
        let mut all = Vec::with_capacity(ids.len());
        for id in &ids {
            all.push(fg.client(id, Duration::from_millis(2))?);
        }
        let logons = futures_util::future::join_all(
            all.iter_mut()
                .map(|c| logon_continuing(c, None, Duration::from_secs(10), drop)),
        )
        .await;
        let mut others = Vec::with_capacity(all.len());
        for (i, (c, logon)) in all.into_iter().zip(logons).enumerate() {
            let logon = logon.with_context(|| {
                format!(
                    "{name}: client {} did not log on to the gateway (logs in {})",
                    ids[i],
                    fg.dir().display()
                )
            })?;
            others.push((c, logon));
        }
        let (c, prev) = others.remove(0);
        Ok(RecoveryRig {
            name,
            fg,
            watcher,
            c,
            prev,
            others,
            active: 0,
            recovery: Vec::new(),
            all_back: Vec::new(),
            agent_notified: Vec::new(),
            agent_e2e: Vec::new(),
            beyond: Vec::new(),
            machine_procs: Vec::new(),
            kept: Vec::new(),
        })
    }

    /// An order round trip; kill -9 of the active agent (its gateway dies with it), or with a
    /// machine for each node, of every process of the active's machine at once; the client's
    /// Logon to the new active; the killed node back as a ready standby (with replication:
    /// caught up); never two actives.
    async fn run_once(&mut self, run: usize) -> anyhow::Result<()> {
        let (fg, c) = (&mut self.fg, &mut self.c);
        // The session works: an order round trip on the current active.
        let id = format!("r{run}");
        c.handle.send(0, b"D", bench_order(&id));
        // A report of an earlier run's order may come again after a failover, marked so.
        let earlier = |id: &str| {
            id.strip_prefix('r')
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < run)
        };
        fills(c, [id], earlier).await.with_context(|| {
            format!(
                "{}: run {run}: no fill (logs in {})",
                self.name,
                fg.dir().display()
            )
        })?;
        let active = self.active;
        let standby = 1 - active;
        let node = group::NODES[active];
        let machine = fg.machine(active).cloned();
        // The machine's processes are listed before the clock starts (`ip` is slow to start).
        let doomed = match &machine {
            Some(m) => Some(
                machine_processes(fg, active, m)
                    .with_context(|| format!("{}: run {run}: machine {}", self.name, m.ns))?,
            ),
            None => None,
        };
        let kill_unix = unix_ms();
        let t0 = std::time::Instant::now();
        let killer = match &doomed {
            Some((pids, agent)) => {
                crate::netns::Lab::kill_sweep(pids, Some(*agent));
                self.machine_procs.push(pids.len());
                None
            }
            None => {
                let mut g = fg.group.take().context("group")?;
                Some(tokio::task::spawn_blocking(move || {
                    g.kill9(node);
                    g
                }))
            }
        };
        // Every client reconnects at once; each Logon is timed as it comes.
        let timeout = Duration::from_secs(10);
        let first = async {
            let r = logon_continuing(c, Some(&self.prev), timeout, drop).await;
            (r, t0.elapsed())
        };
        let rest =
            futures_util::future::join_all(self.others.iter_mut().map(|(c, prev)| async move {
                let r = logon_continuing(c, Some(&*prev), timeout, drop).await;
                (r.map(|l| *prev = l), t0.elapsed())
            }));
        let ((logon, first_took), rest) = futures_util::future::join(first, rest).await;
        let took = first_took.as_secs_f64() * 1e3;
        let mut last = first_took;
        for (i, (r, t)) in rest.into_iter().enumerate() {
            r.with_context(|| {
                format!(
                    "{}: run {run}: client {} after the kill (logs in {})",
                    self.name,
                    recovery_client(i + 1),
                    fg.dir().display()
                )
            })?;
            last = last.max(t);
        }
        match (killer, machine) {
            (Some(k), _) => fg.group = Some(k.await?),
            (None, Some(m)) => {
                // The agent was this process's child: reaped here; nothing else may be left.
                fg.blocking(move |g| {
                    g.kill9(node);
                    crate::netns::Lab::wait_empty(&m, Duration::from_secs(5))
                })
                .await??
            }
            (None, None) => anyhow::bail!("no machine and no kill"),
        }
        let logon = logon.with_context(|| {
            format!(
                "{}: run {run}: after the kill (logs in {})",
                self.name,
                fg.dir().display()
            )
        })?;
        fg.blocking(move |g| g.wait_hot(group::NODES[standby]))
            .await??;
        let (notified, e2e) = fg.takeover(standby, kill_unix).with_context(|| {
            format!(
                "{}: run {run}: no takeover in the new active's /events",
                self.name
            )
        })?;
        self.recovery.push(took);
        if !self.others.is_empty() {
            self.all_back.push(last.as_secs_f64() * 1e3);
        }
        self.agent_notified.push(notified);
        self.agent_e2e.push(e2e);
        self.beyond.push(took - e2e);
        if took - e2e > RECOVERY_GOAL_MS {
            // The group's directory goes with the benchmark: what happened in a run beyond
            // the goal is kept where it can be read afterwards.
            let to = std::env::temp_dir().join(format!(
                "fix-recovery-{}-{}-run{run}",
                std::process::id(),
                if fg.machine(active).is_some() {
                    "replicated"
                } else {
                    "shared"
                }
            ));
            self.kept.push(match copy_kept(fg.dir(), &to) {
                Ok(n) => format!(
                    "{}: run {run}, {:.1} ms beyond the takeover: {n} log and configuration files kept in {}",
                    self.name,
                    took - e2e,
                    to.display()
                ),
                Err(e) => format!(
                    "{}: run {run}, {:.1} ms beyond the takeover: its logs could not be kept in {}: {e}",
                    self.name,
                    took - e2e,
                    to.display()
                ),
            });
        }
        self.prev = logon;
        // The killed node comes back as the standby for the next run.
        fg.blocking(move |g| -> anyhow::Result<()> {
            g.spawn(node)?;
            g.wait_ready_standby(node)
        })
        .await??;
        self.active = standby;
        if self.watcher.as_ref().is_some_and(|w| w.violations() > 0) {
            anyhow::bail!(
                "{}: run {run}: TWO ACTIVES AT ONCE seen by the two-Hot watcher (logs in {})",
                self.name,
                fg.dir().display()
            );
        }
        Ok(())
    }

    fn rows(&self, t: &mut Table) {
        let n = self.name;
        t.row(
            &format!("{n}: kill → new active accepts the Logon (seq ok)"),
            Clock::MonoHere,
            &self.recovery,
            "",
        );
        if !self.others.is_empty() {
            t.row(
                &format!(
                    "{n}: kill → all {} clients logged on again",
                    self.others.len() + 1
                ),
                Clock::MonoHere,
                &self.all_back,
                "",
            );
        }
        t.row(
            &format!("{n}: agent: kill → service notified"),
            Clock::WallMs,
            &self.agent_e2e,
            "",
        );
        t.row(
            &format!("{n}: agent: detection → service notified"),
            Clock::AgentMono,
            &self.agent_notified,
            "",
        );
        t.row(
            &format!("{n}: FIX recovery beyond the agent's takeover"),
            Clock::MonoMinusWallMs,
            &self.beyond,
            "",
        );
    }
}

/// Every process of node `i`'s machine, and its agent's pid; fails unless the agent and its
/// gateway are among them.
fn machine_processes(
    fg: &FixGroup,
    i: usize,
    m: &crate::netns::Machine,
) -> anyhow::Result<(Vec<u32>, u32)> {
    let node = group::NODES[i];
    let g = fg.group.as_ref().context("the group")?;
    let agent = fg.agent_pid(i).context("its agent does not run")?;
    let gateway = g
        .service_pid(node)
        .context("its agent shows no gateway pid")?;
    let pids = crate::netns::Lab::pids(m);
    for (what, pid) in [("agent", agent), ("gateway", gateway)] {
        if !pids.contains(&pid) {
            anyhow::bail!("its {what} (pid {pid}) is not among its processes {pids:?}");
        }
    }
    Ok((pids, agent))
}

async fn recovery_bench(a: FixRecoveryArgs) -> anyhow::Result<u8> {
    if a.replicated {
        if let Some(why) = crate::netns::unavailable() {
            anyhow::bail!(
                "--replicated kills the active's whole machine: {why}; run it as root, or without --replicated"
            );
        }
        if a.sync != StoreSync::Group {
            anyhow::bail!("--replicated streams group-commit batches: it needs --sync group");
        }
    }
    let clients = usize::from(a.clients);
    let mut rigs =
        vec![RecoveryRig::start("shared dir, agent killed", a.sync, false, clients).await?];
    if a.replicated {
        rigs.push(
            RecoveryRig::start("replicated (sync), machine killed", a.sync, true, clients).await?,
        );
    }
    for run in 0..a.runs {
        // Interleaved, which pair goes first alternating, so drift hits both alike.
        let n = rigs.len();
        for k in 0..n {
            rigs[(run + k) % n].run_once(run).await?;
        }
    }
    let (mut sweeps, mut notes) = (Vec::new(), Vec::new());
    for r in &mut rigs {
        r.c.task.abort();
        for (c, _) in &r.others {
            c.task.abort();
        }
        let rep = r.watcher.take().context("the watcher")?.stop();
        if rep.sweeps == 0 {
            anyhow::bail!("{}: the two-Hot watcher never completed a sweep", r.name);
        }
        if !rep.violations.is_empty() {
            anyhow::bail!(
                "{}: the two-Hot watcher, {} sweeps: TWO ACTIVES AT ONCE: {:?}",
                r.name,
                rep.sweeps,
                rep.violations
            );
        }
        sweeps.push(format!("{}: {} sweeps", r.name, rep.sweeps));
        if let (Some(lo), Some(hi)) = (r.machine_procs.iter().min(), r.machine_procs.iter().max()) {
            let n = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}–{hi}")
            };
            notes.push(format!(
                "{}: each machine loss killed {n} processes (agent, guardian, gateway)",
                r.name
            ));
        }
    }
    println!(
        "fix-recovery: {} runs of each pair; shared-directory pair: kill -9 of the active agent, its gateway dying with it (trylock, warm-standby fix-gateway, store sync {}){}, {}",
        a.runs,
        a.sync,
        if a.replicated {
            "; and a replicated pair (each gateway its own store, replication.mode = sync), each node (agent, guardian, gateway) in a network namespace of its own, SIGKILL of every process of the active's namespace at once (the client and the exchange simulator outside both); interleaved"
        } else {
            ""
        },
        if clients == 1 {
            "client retrying every 2 ms".to_owned()
        } else {
            format!("{clients} clients, each retrying every 2 ms (the first sends each run's order); the gateway takes at most {} connections before their Logon at once and closes the others", understudy_fix::engine::MAX_PRELOGON_CONNECTIONS)
        }
    );
    println!(
        "never two actives (two-Hot watcher every 3 ms: {})",
        sweeps.join(", ")
    );
    for n in notes {
        println!("{n}");
    }
    let mut t = Table::new("ms", 1, a.runs);
    for r in &rigs {
        r.rows(&mut t);
    }
    print!("{}", t.render());
    for r in &rigs {
        println!(
            "{}",
            crate::stats::goal_line(
                &format!("{}: FIX recovery beyond the agent's takeover", r.name),
                &Summary::of(&r.beyond),
                RECOVERY_GOAL_MS
            )
        );
        for k in &r.kept {
            println!("{k}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_runs_logs_and_configurations_are_kept_and_its_stores_are_not() {
        let from = tempfile::tempdir().expect("tempdir");
        let to = tempfile::tempdir().expect("tempdir");
        let f = from.path();
        std::fs::create_dir_all(f.join("a/store")).expect("mkdir");
        for (name, body) in [
            ("sim.log", "sim"),
            ("a.out", "agent a"),
            ("a/gateway.toml", "[gateway]"),
            ("a/store/CLIENT.seg", "records"),
            ("a/store/epoch", "3"),
        ] {
            std::fs::write(f.join(name), body).expect("write");
        }
        let dest = to.path().join("kept");
        assert_eq!(copy_kept(f, &dest).expect("copy"), 3);
        let read = |p: &str| std::fs::read_to_string(dest.join(p)).ok();
        assert_eq!(read("sim.log").as_deref(), Some("sim"));
        assert_eq!(read("a.out").as_deref(), Some("agent a"));
        assert_eq!(read("a/gateway.toml").as_deref(), Some("[gateway]"));
        assert!(
            !dest.join("a/store").exists(),
            "a store directory was copied"
        );
    }
}
