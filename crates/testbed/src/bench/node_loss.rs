//! `understudy bench node-loss`: cut the active machine's network N times and time, end to end,
//! from the cut to the standby's service knowing it is active — with the etcd coordinator at its
//! defaults, every machine a network namespace on one bridge (etcd members each on their own) —
//! next to keepalived (VRRPv3 at its fastest advertisement interval) failing over between the same
//! two namespaces in the same run, and the ratio. keepalived has no fencing: the cut-off master
//! keeps its address and goes on acting; understudy's old active has stopped before the new one
//! starts, which the run checks in the services' own log.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::checkers::{verify_log, LogLine};
use crate::clock::mono_ns;
use crate::config::{AgentConfig, EtcdSection};
use crate::http::{get_json, is_mode, is_ready_standby};
use crate::netns::{Lab, Machine};
use crate::proc::Proc;
use crate::stats::{goal_line, Clock, Summary, Table};
use understudy_status::{ActivationMode, StandbyType};

/// `understudy bench node-loss` arguments.
#[derive(clap::Args, Debug)]
pub struct NodeLossArgs {
    /// Number of cuts for each of understudy and keepalived.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// etcd members, each on its own machine (1 or 3).
    #[arg(long, default_value_t = 3)]
    etcd_members: usize,
    /// Quiet time before each cut, in ms: the group in its steady state. 0 cuts understudy's new
    /// active as soon as the old one is back as a ready standby, right after its own takeover
    /// (keepalived always gets at least 300 ms: it does not fail over again sooner).
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Keep the temp directory (configs, logs, runs.tsv with each run) for inspection.
    #[arg(long)]
    keep: bool,
}

/// Processes started by the benchmark, killed on drop (the namespaces go with the [`Lab`]).
#[derive(Default)]
struct Procs(Vec<Proc>);

impl Procs {
    fn spawn(&mut self, m: &Machine, argv: &[String], out: &Path) -> anyhow::Result<u32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.ns])
            .args(argv)
            .stdin(Stdio::null());
        crate::proc::log_to(&mut cmd, out).with_context(|| out.display().to_string())?;
        let p =
            Proc::spawn(&mut cmd).with_context(|| format!("cannot start {:?}", argv.first()))?;
        let pid = p.id();
        self.0.push(p);
        Ok(pid)
    }

    fn kill(&mut self, pid: u32) {
        self.0.retain(|p| p.id() != pid);
    }
}

/// Polls `f` every millisecond until it gives a value or `timeout` passes.
fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    crate::clock::poll(timeout, Duration::from_millis(1), f)
}

/// Reads what was appended to a file since the last call.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = String::new();
        let n = f.read_to_string(&mut buf).unwrap_or(0);
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let mut out = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            out.push(self.partial[..i].to_string());
            self.partial.drain(..=i);
        }
        out
    }
}

/// Run the benchmark.
pub fn run(args: NodeLossArgs) -> anyhow::Result<u8> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !matches!(args.etcd_members, 1 | 3) {
        bail!("--etcd-members must be 1 or 3");
    }
    let etcd = understudy_agent::config::find_program("etcd")
        .context("etcd is not installed (Debian package etcd-server)")?;
    let keepalived = understudy_agent::config::find_program("keepalived")
        .context("keepalived is not installed (Debian package keepalived)")?;
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new().prefix("us-node-loss-").tempdir()?;
    // etcd's data on tmpfs: this measures the agents, not the fsync latency of a shared disk.
    let etcd_data = tempfile::Builder::new()
        .prefix("us-node-loss-etcd-")
        .tempdir_in("/dev/shm")?;
    let mut lab = Lab::new()?;
    let mut procs = Procs::default();
    let result = (|| -> anyhow::Result<(Vec<f64>, Vec<f64>, usize)> {
        let members: Vec<Machine> = (0..args.etcd_members)
            .map(|i| lab.machine(&format!("e{i}")))
            .collect::<anyhow::Result<_>>()?;
        let a = lab.machine("a")?;
        let b = lab.machine("b")?;
        let endpoints = start_etcd(&mut procs, &etcd, &members, etcd_data.path(), dir.path())?;
        eprintln!(
            "etcd: {} member(s) on their own machines, agents on two more",
            members.len()
        );
        let ours = understudy_runs(&mut procs, &exe, dir.path(), &endpoints, &a, &b, &args)?;
        let (samples, actives) = ours;
        let vrrp = keepalived_runs(
            &mut procs,
            &keepalived,
            &exe,
            dir.path(),
            &lab,
            &a,
            &b,
            &args,
        )?;
        Ok((samples, vrrp, actives))
    })();
    drop(procs);
    drop(lab);
    if args.keep {
        eprintln!("kept {}", dir.keep().display());
    }
    let (ours, vrrp, actives) = result?;
    println!(
        "node-loss benchmark: {} cuts of the active machine's link each (one ioctl, after {} ms \
         of settling), timed from the cut to the standby's service knowing it is active",
        args.runs, args.settle_ms
    );
    let mut table = Table::new("ms", 1, args.runs);
    table.row(
        "keepalived VRRPv3, advert_int 0.01 s (no fencing)",
        Clock::MonoHost,
        &vrrp,
        "",
    );
    let label = format!("understudy, etcd ({} members), defaults", args.etcd_members);
    table.row(&label, Clock::MonoHost, &ours, "");
    print!("{}", table.render());
    let (o, k) = (Summary::of(&ours), Summary::of(&vrrp));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}", a / b),
        _ => "-".to_string(),
    };
    println!(
        "ratio understudy / keepalived: p50 {:.1}, p99 {}, max {:.1}",
        o.p50 / k.p50,
        ratio(o.p99, k.p99),
        o.max / k.max
    );
    println!(
        "understudy: {actives} active periods in the services' log, none overlapping: each cut-off active stopped before the standby started"
    );
    println!(
        "keepalived has no fencing: the cut-off master keeps its address and whatever it runs goes on acting; nothing stops it before the backup takes over"
    );
    println!(
        "{}",
        goal_line("node-loss takeover with the defaults", &o, 250.0)
    );
    Ok(0)
}

fn start_etcd(
    procs: &mut Procs,
    etcd: &Path,
    members: &[Machine],
    data: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let cluster: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("m{i}=http://{}:2380", m.ip))
        .collect();
    let mut endpoints = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let client = format!("http://{}:2379", m.ip);
        let peer = format!("http://{}:2380", m.ip);
        let argv: Vec<String> = [
            etcd.display().to_string(),
            "--name".into(),
            format!("m{i}"),
            "--data-dir".into(),
            data.join(format!("m{i}")).display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            cluster.join(","),
        ]
        .to_vec();
        procs.spawn(m, &argv, &dir.join(format!("etcd-m{i}.log")))?;
        endpoints.push(client);
    }
    let eps = endpoints.join(",");
    let healthy = poll(Duration::from_secs(30), || {
        Command::new("etcdctl")
            .args(["--endpoints", &eps, "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    if healthy.is_none() {
        bail!("etcd never became healthy (logs in {})", dir.display());
    }
    Ok(endpoints)
}

fn agent_config(
    name: &str,
    m: &Machine,
    endpoints: &[String],
    exe: &Path,
    log: &Path,
) -> anyhow::Result<String> {
    let command = [
        exe.display().to_string(),
        "demo-service".into(),
        "--log".into(),
        log.display().to_string(),
    ];
    let mut c = AgentConfig::new(
        name,
        "bench",
        &format!("{}:7700", m.ip),
        ActivationMode::TryLock,
        command.to_vec(),
        StandbyType::Hot,
    );
    c.service.restart_backoff = Some(Duration::from_millis(300));
    c.etcd = Some(EtcdSection {
        endpoints: endpoints.to_vec(),
    });
    c.render(&Default::default(), &Default::default(), "")
}

fn understudy_runs(
    procs: &mut Procs,
    exe: &Path,
    dir: &Path,
    endpoints: &[String],
    a: &Machine,
    b: &Machine,
    args: &NodeLossArgs,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let log = dir.join("service.log");
    let nodes = [("a", a), ("b", b)];
    let admin = |m: &Machine| format!("{}:7700", m.ip);
    let mut agents = Vec::new();
    for (name, m) in nodes {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, agent_config(name, m, endpoints, exe, &log)?)?;
        let argv = vec![
            exe.display().to_string(),
            "agent".to_string(),
            "--config".to_string(),
            cfg.display().to_string(),
        ];
        agents.push(procs.spawn(m, &argv, &dir.join(format!("{name}.out")))?);
        let want = if name == "a" { "Hot" } else { "Warm" };
        poll(Duration::from_secs(10), || {
            get_json(&admin(m), "/status").filter(|s| is_mode(s, want))
        })
        .with_context(|| format!("agent {name} never became {want}"))?;
    }
    let mut samples = Vec::with_capacity(args.runs);
    let mut tail = Tail::new(log.clone());
    let switches = [Lab::link_switch(a)?, Lab::link_switch(b)?];
    let (mut act_sw, mut stb_sw) = (&switches[0], &switches[1]);
    let mut per_run = String::from("run\tcut_off\tcut_mono_ns\tactive_mono_ns\tms\n");
    let (mut act, mut stb) = (a, b);
    let (mut act_name, mut stb_name) = ("a", "b");
    eprintln!("understudy: {} cuts…", args.runs);
    for i in 0..args.runs {
        poll(Duration::from_secs(15), || {
            get_json(&admin(stb), "/status").filter(is_ready_standby)
        })
        .with_context(|| format!("run {i}: {stb_name} never became a ready standby"))?;
        let epoch = get_json(&admin(act), "/status")
            .and_then(|s| s["epoch"].as_u64())
            .with_context(|| format!("run {i}: {act_name} does not answer"))?;
        crate::clock::sleep_ms(args.settle_ms);
        tail.lines();
        let t0 = mono_ns();
        act_sw.down()?;
        let t1 = poll(Duration::from_secs(5), || {
            tail.lines()
                .iter()
                .filter_map(|l| LogLine::parse(l))
                .find_map(|l| {
                    (l.node == stb_name && l.event == "active" && l.epoch > epoch).then_some(l.ns)
                })
        })
        .with_context(|| format!("run {i}: {stb_name}'s service never became active"))?;
        let ms = t1.saturating_sub(t0) as f64 / 1e6;
        samples.push(ms);
        per_run.push_str(&format!("{i}\t{act_name}\t{t0}\t{t1}\t{ms:.3}\n"));
        act_sw.up()?;
        poll(Duration::from_secs(15), || {
            get_json(&admin(act), "/status").filter(|s| is_mode(s, "Warm"))
        })
        .with_context(|| format!("run {i}: cut-off {act_name} never came back as a standby"))?;
        std::mem::swap(&mut act, &mut stb);
        std::mem::swap(&mut act_name, &mut stb_name);
        std::mem::swap(&mut act_sw, &mut stb_sw);
    }
    // Kept with the logs (`--keep`), to line each run up with the agents' own lines.
    std::fs::write(dir.join("runs.tsv"), per_run)?;
    for pid in agents {
        procs.kill(pid);
    }
    let actives = verify_log(&log).map_err(anyhow::Error::msg)?.len();
    Ok((samples, actives))
}

#[allow(clippy::too_many_arguments)]
fn keepalived_runs(
    procs: &mut Procs,
    keepalived: &Path,
    exe: &Path,
    dir: &Path,
    lab: &Lab,
    a: &Machine,
    b: &Machine,
    args: &NodeLossArgs,
) -> anyhow::Result<Vec<f64>> {
    let stamps = dir.join("vrrp.log");
    let vip = lab.address(200);
    for (name, m, prio) in [("a", a, 150), ("b", b, 100)] {
        let conf = dir.join(format!("keepalived-{name}.conf"));
        let stamp = |word: &str| {
            format!(
                "\"{} bench stamp {} {word}-{name}\"",
                exe.display(),
                stamps.display()
            )
        };
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  vrrp_version 3\n  script_user root\n}}\nvrrp_instance bench {{\n  state BACKUP\n  interface {dev}\n  virtual_router_id 77\n  priority {prio}\n  advert_int 0.01\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n  notify_master {}\n  notify_backup {}\n}}\n",
                stamp("master"),
                stamp("backup"),
                dev = m.dev,
            ),
        )?;
        let argv: Vec<String> = vec![
            keepalived.display().to_string(),
            "--dont-fork".into(),
            "--log-console".into(),
            "--vrrp".into(),
            "-f".into(),
            conf.display().to_string(),
            "-p".into(),
            dir.join(format!("keepalived-{name}.pid"))
                .display()
                .to_string(),
            "-r".into(),
            dir.join(format!("vrrp-{name}.pid")).display().to_string(),
        ];
        procs.spawn(m, &argv, &dir.join(format!("keepalived-{name}.out")))?;
    }
    let mut tail = Tail::new(stamps.clone());
    let mut seen = Vec::new();
    let mut wait_for = |tail: &mut Tail, word: &str, after: u64, timeout: Duration| {
        poll(timeout, || {
            seen.extend(tail.lines());
            seen.iter().find_map(|l| {
                let (w, t) = l.split_once(' ')?;
                let t: u64 = t.parse().ok()?;
                (w == word && t > after).then_some(t)
            })
        })
    };
    // a (priority 150) becomes master, b backup.
    wait_for(&mut tail, "master-a", 0, Duration::from_secs(10))
        .context("keepalived on a never became master")?;
    let mut samples = Vec::with_capacity(args.runs);
    let cut_a = Lab::link_switch(a)?;
    eprintln!("keepalived: {} cuts…", args.runs);
    for i in 0..args.runs {
        // Settle: b is a backup listening to a's adverts. keepalived needs a moment after the
        // previous cut whatever --settle-ms says (with none, b never becomes master again).
        crate::clock::sleep_ms(args.settle_ms.max(300));
        let t0 = mono_ns();
        cut_a.down()?;
        let t1 = wait_for(&mut tail, "master-b", t0, Duration::from_secs(5))
            .with_context(|| format!("run {i}: keepalived on b never became master"))?;
        samples.push(t1.saturating_sub(t0) as f64 / 1e6);
        let t2 = mono_ns();
        cut_a.up()?;
        // a never stopped being master (it cannot know it was cut off); b yields to it.
        wait_for(&mut tail, "backup-b", t2, Duration::from_secs(5))
            .with_context(|| format!("run {i}: b never went back to backup"))?;
    }
    Ok(samples)
}
