//! Shared helpers of the real-process tests: a group of real `understudy agent` processes on a
//! temp lock file, each protecting the built-in demo service (which logs its activity into one
//! shared file), a tiny blocking HTTP client for the admin API, and the two safety checkers every
//! failover test runs: the overlap checker over the service log and the two-Hot watcher.
#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// Wall clock in Unix milliseconds (the clock the agents' `since_unix_ms` uses).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the demo service's log lines).
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A free loopback port, found by binding port 0 (the listener is closed at once).
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").to_string()
}

/// Poll `f` every 2 ms until it is true or `timeout` passes; true when it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address {addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {text:?}")))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET a JSON document; None when the node does not answer 200 with JSON.
pub fn get_json(addr: &str, path: &str) -> Option<Value> {
    match http("GET", addr, path, Duration::from_millis(500)) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// PUT with an empty body; (status, parsed body or the raw text as a JSON string).
pub fn put(addr: &str, path: &str) -> (u16, Value) {
    let (code, body) = http("PUT", addr, path, Duration::from_secs(10)).expect("PUT failed");
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// POST with an empty body; (status, parsed body or the raw text as a JSON string).
pub fn post(addr: &str, path: &str) -> (u16, Value) {
    let (code, body) = http("POST", addr, path, Duration::from_secs(20)).expect("POST failed");
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// True while `pid` exists and is not a zombie (a zombie acts no more; our PID 1 may not reap).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the parenthesised command name, which may contain spaces.
            let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            !matches!(
                after.split_whitespace().next(),
                Some("Z") | Some("X") | None
            )
        }
        Err(_) => false,
    }
}

/// The process group id of `pid`.
pub fn pgid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    // fields after the name: state ppid pgrp ...
    after.split_whitespace().nth(2)?.parse().ok()
}

/// Every live process in process group `pgid`.
pub fn pids_in_group(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if pgid_of(pid) == Some(pgid) && alive(pid) {
                    out.push(pid);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// The environment of a live process.
pub fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Wait for a child to exit within `timeout`; if it does not, kill and reap it and panic with
/// the message `why` builds.
pub fn exit_within(
    child: &mut Child,
    timeout: Duration,
    why: impl FnOnce() -> String,
) -> ExitStatus {
    match wait_exit(child, timeout) {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}", why());
        }
    }
}

/// Wait for a child to exit within `timeout`; None if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Run the binary to completion with these arguments; (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The group
// ---------------------------------------------------------------------------------------------

/// One node of a [`Group`].
pub struct Node {
    pub name: String,
    pub admin: String,
    pub config: PathBuf,
    pub out: PathBuf,
    pub child: Option<Child>,
}

/// A group of real agents in a temp dir: lock file, configs, and the demo service's shared log.
///
/// Set `activation`, `service` (raw TOML values by key) and `tail` (extra sections) before adding
/// nodes; every node gets the same settings except its name and admin address.
pub struct Group {
    pub dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    pub lock: PathBuf,
    pub log: PathBuf,
    pub activation: BTreeMap<String, String>,
    pub service: BTreeMap<String, String>,
    pub tail: String,
    pub nodes: BTreeMap<String, Node>,
    /// A command that runs a node's agent (e.g. `ip netns exec NS`), by node name.
    pub launchers: BTreeMap<String, Vec<String>>,
}

/// A TOML string literal (JSON's escaping is a subset of TOML basic strings).
pub fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// A TOML array of strings.
pub fn arr(v: &[&str]) -> String {
    serde_json::to_string(v).expect("array")
}

impl Group {
    /// A group with `mode` and `standby`, protecting `understudy demo-service --log <dir>/service.log`.
    pub fn new(mode: &str, standby: &str) -> Group {
        let dir = tempfile::Builder::new()
            .prefix("us-test-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        let lock = path.join("group.lock");
        let log = path.join("service.log");
        let mut g = Group {
            dir: Some(dir),
            path,
            lock: lock.clone(),
            log: log.clone(),
            activation: BTreeMap::new(),
            service: BTreeMap::new(),
            tail: String::new(),
            nodes: BTreeMap::new(),
            launchers: BTreeMap::new(),
        };
        g.set_activation("mode", &q(mode));
        g.set_activation("lock_file", &q(&lock.display().to_string()));
        g.set_activation("heartbeat_interval", &q("100ms"));
        g.set_service(
            "command",
            &arr(&[BIN, "demo-service", "--log", &log.display().to_string()]),
        );
        g.set_service("standby", &q(standby));
        g.set_service("restart_backoff", &q("300ms"));
        g.set_service("restart_backoff_max", &q("1s"));
        g.set_service("stop_timeout", &q("3s"));
        g
    }

    pub fn set_activation(&mut self, key: &str, toml_value: &str) {
        self.activation.insert(key.into(), toml_value.into());
    }

    pub fn set_service(&mut self, key: &str, toml_value: &str) {
        self.service.insert(key.into(), toml_value.into());
    }

    /// Use the lock file at `lock` (e.g. on a special file system).
    pub fn set_lock(&mut self, lock: &Path) {
        self.lock = lock.to_path_buf();
        self.set_activation("lock_file", &q(&lock.display().to_string()));
    }

    fn config_text(&self, name: &str, admin: &str) -> String {
        let mut t = format!(
            "[node]\nname = {}\ngroup = \"g\"\nadmin = {}\n\n[activation]\n",
            q(name),
            q(admin)
        );
        for (k, v) in &self.activation {
            t.push_str(&format!("{k} = {v}\n"));
        }
        t.push_str("\n[service]\n");
        for (k, v) in &self.service {
            t.push_str(&format!("{k} = {v}\n"));
        }
        t.push('\n');
        t.push_str(&self.tail);
        t
    }

    /// Write the node's configuration (with a free admin port) without starting it.
    pub fn add(&mut self, name: &str) -> String {
        let admin = free_addr();
        let config = self.path.join(format!("{name}.toml"));
        std::fs::write(&config, self.config_text(name, &admin)).expect("write config");
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
        admin
    }

    /// Add (if new) and start a node; returns once its admin API answers.
    pub fn start(&mut self, name: &str) -> String {
        self.start_with(name, &[], &[])
    }

    /// [`Group::start`] with `global` arguments before `agent` (e.g. `--log-format json`) and
    /// extra environment.
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

    /// Add (if new) and spawn a node's agent, without waiting for anything; see
    /// [`Group::start_with`].
    pub fn launch(&mut self, name: &str, global: &[&str], env: &[(&str, &str)]) {
        if !self.nodes.contains_key(name) {
            self.add(name);
        }
        let node = self.nodes.get_mut(name).expect("node");
        assert!(node.child.is_none(), "{name} is already running");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.out)
            .expect("agent output file");
        let mut argv = self.launchers.get(name).cloned().unwrap_or_default();
        argv.push(BIN.to_string());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(global)
            .arg("agent")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn agent");
        node.child = Some(child);
    }

    pub fn admin(&self, name: &str) -> String {
        self.nodes[name].admin.clone()
    }

    pub fn agent_pid(&self, name: &str) -> u32 {
        self.nodes[name].child.as_ref().expect("running").id()
    }

    pub fn running(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.child.is_some())
    }

    /// The agent's captured stdout and stderr.
    pub fn output(&self, name: &str) -> String {
        std::fs::read_to_string(&self.nodes[name].out).unwrap_or_default()
    }

    pub fn status(&self, name: &str) -> Option<Value> {
        get_json(&self.admin(name), "/status")
    }

    /// `/status`, panicking when the node does not answer.
    pub fn st(&self, name: &str) -> Value {
        self.status(name)
            .unwrap_or_else(|| panic!("{name} does not answer /status"))
    }

    pub fn mode(&self, name: &str) -> Option<String> {
        get_json(&self.admin(name), "/service/activationmode")
            .and_then(|v| v.get("mode").and_then(Value::as_str).map(str::to_string))
    }

    pub fn epoch(&self, name: &str) -> u64 {
        self.st(name)["epoch"].as_u64().expect("epoch")
    }

    /// The service pid /status reports.
    pub fn service_pid(&self, name: &str) -> Option<u32> {
        self.status(name)
            .and_then(|s| s["service"]["pid"].as_u64())
            .map(|p| p as u32)
    }

    /// Wait until `name` reports `want` (Hot/Warm) on /service/activationmode.
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

    /// Wait until `name`'s /status satisfies `f`.
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
        assert!(
            ok,
            "{name}: {what} not reached within {timeout:?}; last status {last:?}\n--- {name} output:\n{}",
            tail(&self.output(name), 40)
        );
        last.expect("status")
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

    /// `kill -9` the agent and reap it.
    pub fn kill9(&mut self, name: &str) {
        let mut c = self
            .nodes
            .get_mut(name)
            .and_then(|n| n.child.take())
            .expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn sigstop(&self, name: &str) {
        signal(self.agent_pid(name), Signal::SIGSTOP);
    }

    pub fn sigcont(&self, name: &str) {
        signal(self.agent_pid(name), Signal::SIGCONT);
    }

    /// SIGTERM the agent and wait for it to exit.
    pub fn sigterm(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        signal(self.agent_pid(name), Signal::SIGTERM);
        let mut c = self
            .nodes
            .get_mut(name)
            .and_then(|n| n.child.take())
            .expect("running");
        exit_within(&mut c, timeout, || {
            format!(
                "agent {name} did not exit within {timeout:?} of SIGTERM:\n{}",
                self.output(name)
            )
        })
    }

    /// GET /events of a node.
    pub fn events(&self, name: &str) -> Value {
        get_json(&self.admin(name), "/events").unwrap_or_else(|| panic!("{name}: no /events"))
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

    /// Assert that `name`'s timeline holds an entry of each of `kinds`.
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

    /// Wait until `name`'s /status says ready.
    pub fn wait_ready(&self, name: &str, timeout: Duration) -> Value {
        self.wait_status(name, "ready", timeout, |s| s["ready"] == true)
    }

    /// Assert that `name` answers `want` (Hot/Warm) on every poll (each 20 ms) for `d`.
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

    /// Add nodes `a` and `b` and return a watcher of both.
    pub fn add_watched_pair(&mut self) -> Watcher {
        self.add("a");
        self.add("b");
        self.watch()
    }

    /// Start `a` and wait until it is Hot (5 s), then start `b`.
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

    /// Wait until the service log shows `node`'s service active with `epoch`.
    pub fn wait_service_active(&self, node: &str, epoch: u64) {
        let ok = wait_until(Duration::from_secs(5), || {
            self.logged(|l| l.node == node && l.event == "active" && l.epoch == epoch)
        });
        assert!(
            ok,
            "{node}'s service never logged active with epoch {epoch}"
        );
    }

    /// Wait until the group's lock file holds `node`'s heartbeat at `epoch` (written every
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

    /// Wait until the log holds `n` active intervals, run the overlap checker, and assert that
    /// there are exactly `n` (so the checker is never satisfied by an empty log).
    pub fn expect_actives(&self, n: usize) -> Vec<Interval> {
        wait_until(Duration::from_secs(5), || {
            intervals(&read_log(&self.log)).len() >= n
        });
        let ivs = self.check_log();
        assert_eq!(
            ivs.len(),
            n,
            "expected {n} active services in the log: {ivs:#?}"
        );
        ivs
    }

    /// Parse and check the demo service log (overlap checker); panics on a violation.
    pub fn check_log(&self) -> Vec<Interval> {
        check_overlaps(&self.log)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in &names {
            if let Some(c) = self.nodes.get_mut(name).and_then(|n| n.child.as_mut()) {
                // A stopped agent must be continued to die cleanly... SIGKILL works regardless.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Services that outlived their agents are a defect the tests report; clean up anyway.
        for l in read_log(&self.log) {
            if alive(l.pid) && environ(l.pid).contains_key("UNDERSTUDY_NODE") {
                let _ = kill(Pid::from_raw(l.pid as i32), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            for name in &names {
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

// ---------------------------------------------------------------------------------------------
// Safety checker 1: overlaps in the service log
// ---------------------------------------------------------------------------------------------

/// One line of the demo service's log.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub ns: u64,
    pub pid: u32,
    pub node: String,
    pub event: String,
    pub epoch: u64,
}

pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() != 5 {
                return None;
            }
            Some(LogLine {
                ns: f[0].parse().ok()?,
                pid: f[1].parse().ok()?,
                node: f[2].to_string(),
                event: f[3].to_string(),
                epoch: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// One service process's time as the active: from its `active` line to its last `tick` or `stop`.
#[derive(Debug, Clone)]
pub struct Interval {
    pub pid: u32,
    pub node: String,
    pub epoch: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// True when it logged `stop` (ended gracefully).
    pub stopped: bool,
}

/// Every active interval in the log, sorted by start. A `start` line begins a new incarnation of
/// its pid, so a reused pid is not mistaken for the same process.
pub fn intervals(lines: &[LogLine]) -> Vec<Interval> {
    let mut open: BTreeMap<u32, Option<Interval>> = BTreeMap::new();
    let mut done = Vec::new();
    let mut sorted = lines.to_vec();
    sorted.sort_by_key(|l| l.ns);
    for l in sorted {
        match l.event.as_str() {
            "start" => {
                if let Some(Some(iv)) = open.insert(l.pid, None) {
                    done.push(iv);
                }
            }
            "active" => {
                if let Some(Some(iv)) = open.insert(
                    l.pid,
                    Some(Interval {
                        pid: l.pid,
                        node: l.node.clone(),
                        epoch: l.epoch,
                        start_ns: l.ns,
                        end_ns: l.ns,
                        stopped: false,
                    }),
                ) {
                    done.push(iv);
                }
            }
            "tick" | "stop" => {
                if let Some(Some(iv)) = open.get_mut(&l.pid) {
                    iv.end_ns = iv.end_ns.max(l.ns);
                    if l.epoch != iv.epoch {
                        panic!(
                            "service pid {} changed epoch while active: {} then {}",
                            l.pid, iv.epoch, l.epoch
                        );
                    }
                    if l.event == "stop" {
                        iv.stopped = true;
                    }
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values().flatten());
    done.sort_by_key(|i| i.start_ns);
    done
}

/// The overlap checker: sorted by start, each active interval must end before the next starts,
/// and epochs must strictly increase. Two actives at once is the unforgivable bug.
pub fn check_overlaps(log: &Path) -> Vec<Interval> {
    let ivs = intervals(&read_log(log));
    for w in ivs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            a.end_ns < b.start_ns,
            "TWO ACTIVES: service pid {} on {} (epoch {}) was still active {:.3} ms after pid {} on {} (epoch {}) became active\nintervals: {ivs:#?}",
            a.pid,
            a.node,
            a.epoch,
            (a.end_ns - b.start_ns) as f64 / 1e6,
            b.pid,
            b.node,
            b.epoch
        );
        assert!(
            b.epoch > a.epoch,
            "epoch did not increase between successive actives: pid {} on {} epoch {}, then pid {} on {} epoch {}\nintervals: {ivs:#?}",
            a.pid,
            a.node,
            a.epoch,
            b.pid,
            b.node,
            b.epoch
        );
    }
    ivs
}

// ---------------------------------------------------------------------------------------------
// Safety checker 2: the two-Hot watcher
// ---------------------------------------------------------------------------------------------

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct WatchReport {
    /// Polling sweeps over all nodes.
    pub sweeps: u64,
    /// Sweeps in which two or more nodes answered Hot (including ones explained by a handover
    /// between the two answers; see `violations`).
    pub two_hot_answers: u64,
    /// Two-Hot moments that are proven: both nodes said they had been Hot since before the
    /// earlier of the two requests was sent.
    pub violations: Vec<String>,
    /// Answers per node that said Hot.
    pub hot_answers: BTreeMap<String, u64>,
}

/// Polls every node's /status every few ms on a thread, recording moments two nodes were Hot.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    /// Completed sweeps so far, for [`Watcher::wait_sweeps`].
    sweeps: Arc<AtomicU64>,
    handle: Option<JoinHandle<WatchReport>>,
}

struct Answer {
    node: String,
    sent_ms: u64,
    since_ms: u64,
    epoch: u64,
}

impl Watcher {
    pub fn start(nodes: Vec<(String, String)>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let sweeps = Arc::new(AtomicU64::new(0));
        let sweeps2 = sweeps.clone();
        let handle = std::thread::spawn(move || {
            let mut rep = WatchReport::default();
            while !s2.load(Ordering::Relaxed) {
                let mut hot: Vec<Answer> = Vec::new();
                for (name, addr) in &nodes {
                    let sent_ms = unix_ms();
                    let Ok((200, body)) = http("GET", addr, "/status", Duration::from_millis(200))
                    else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&body) else {
                        continue;
                    };
                    if v["mode"] == "Hot" {
                        *rep.hot_answers.entry(name.clone()).or_default() += 1;
                        hot.push(Answer {
                            node: name.clone(),
                            sent_ms,
                            since_ms: v["since_unix_ms"].as_u64().unwrap_or(0),
                            epoch: v["epoch"].as_u64().unwrap_or(0),
                        });
                    }
                }
                rep.sweeps += 1;
                if hot.len() > 1 {
                    rep.two_hot_answers += 1;
                    // A Hot answer proves the node was Hot over [since, sent]. Two such intervals
                    // that intersect are two actives at once; disjoint ones are a handover that
                    // happened between the two requests of the sweep.
                    for i in 0..hot.len() {
                        for j in i + 1..hot.len() {
                            let (a, b) = (&hot[i], &hot[j]);
                            if a.since_ms.max(b.since_ms) < a.sent_ms.min(b.sent_ms) {
                                rep.violations.push(format!(
                                    "{} (epoch {}, Hot since {}) and {} (epoch {}, Hot since {}) both Hot at {}",
                                    a.node,
                                    a.epoch,
                                    a.since_ms,
                                    b.node,
                                    b.epoch,
                                    b.since_ms,
                                    a.sent_ms.min(b.sent_ms)
                                ));
                            }
                        }
                    }
                }
                // Published after the sweep's answers are judged, so that a waiter sees them.
                sweeps2.store(rep.sweeps, Ordering::Release);
                std::thread::sleep(Duration::from_millis(3));
            }
            rep
        });
        Watcher {
            stop,
            sweeps,
            handle: Some(handle),
        }
    }

    /// Waits until `n` more sweeps over every node have completed; panics after `timeout`.
    pub fn wait_sweeps(&self, n: u64, timeout: Duration) {
        let target = self.sweeps.load(Ordering::Acquire) + n;
        assert!(
            wait_until(timeout, || self.sweeps.load(Ordering::Acquire) >= target),
            "the watcher did not complete {n} sweeps within {timeout:?}"
        );
    }

    /// Stop polling and assert that no two nodes were ever Hot at once.
    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        let rep = self
            .handle
            .take()
            .expect("handle")
            .join()
            .expect("watcher thread");
        assert!(rep.sweeps > 0, "the watcher never completed a sweep");
        assert!(
            rep.violations.is_empty(),
            "TWO NODES HOT AT ONCE (watcher, {} sweeps):\n{}",
            rep.sweeps,
            rep.violations.join("\n")
        );
        rep
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny tmpfs, unmounted on drop
// ---------------------------------------------------------------------------------------------

/// A tmpfs of `size` mounted at `dir`; None (with the reason) when mounting is not possible.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Fill the file system with `<dir>/filler` until it has no space left; returns its size.
    /// Agents replace their records by rename, which frees the old record's page if the new one
    /// was written just before the fill: so it tops up again after a few of their ticks.
    pub fn fill(&self) -> u64 {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("filler"))
            .expect("create filler");
        let block = [0xAAu8; 4096];
        let mut n = 0u64;
        for round in 0..3 {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            loop {
                match f.write(&block) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
        }
        let _ = f.sync_all();
        n
    }

    pub fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
