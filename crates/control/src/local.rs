//! A group of real agents on this host, in a temp directory: what the demo and the benchmark run.
//! Agents are separate OS processes started from the `understudy` binary.
#![allow(clippy::disallowed_methods)] // blocking waits are fine in this driver, not in the agent

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One agent of the local group.
pub struct Node {
    /// Node name.
    pub name: String,
    /// Admin address.
    pub admin: String,
    /// Its config file.
    pub cfg: PathBuf,
    /// The running agent process.
    pub child: Option<Child>,
}

/// A local group protecting `understudy demo-service`.
pub struct LocalGroup {
    /// The temp directory (lock, configs, logs), removed on drop unless kept.
    pub dir: tempfile::TempDir,
    /// This binary.
    pub exe: PathBuf,
    /// The nodes.
    pub nodes: Vec<Node>,
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalGroup {
    /// The built-in demo service, reporting activations by UDP to `report` if given.
    pub fn demo_service(
        exe: &std::path::Path,
        report: Option<std::net::SocketAddr>,
    ) -> Vec<String> {
        let mut cmd = vec![exe.display().to_string(), "demo-service".to_string()];
        if let Some(r) = report {
            cmd.extend(["--report".to_string(), r.to_string()]);
        }
        cmd
    }

    /// Write the configs of `names` (trylock mode, `standby` type) in a new temp directory; each
    /// node's service is `command(name)`. `exe` is the `understudy` binary that runs the agents.
    pub fn new(
        exe: PathBuf,
        names: &[&str],
        standby: &str,
        command: impl Fn(&str) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("understudy-").tempdir()?;
        let lock = dir.path().join("group.lock");
        let mut nodes = Vec::new();
        // Hold every port until all are chosen: a port released at once could be handed to the
        // next node of the same group.
        let mut held = Vec::new();
        for name in names {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let admin = l.local_addr()?.to_string();
            held.push(l);
            let cfg = dir.path().join(format!("{name}.toml"));
            let cmd = command(name);
            std::fs::write(
                &cfg,
                format!(
                    "[node]\nname = \"{name}\"\ngroup = \"demo\"\nadmin = \"{admin}\"\n\n[activation]\nmode = \"trylock\"\nlock_file = \"{}\"\n\n[service]\ncommand = {}\nstandby = \"{standby}\"\nstop_timeout = \"1s\"\n",
                    lock.display(),
                    serde_json::to_string(&cmd)?
                ),
            )?;
            nodes.push(Node {
                name: name.to_string(),
                admin,
                cfg,
                child: None,
            });
        }
        Ok(LocalGroup { dir, exe, nodes })
    }

    /// Start agent `i` (its output goes to `<dir>/<name>.out`).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let out = std::fs::File::create(self.dir.path().join(format!("{}.out", n.name)))?;
        let child = Command::new(&self.exe)
            .arg("agent")
            .arg("--config")
            .arg(&n.cfg)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start an agent")?;
        n.child = Some(child);
        Ok(())
    }

    /// kill -9 agent `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }

    /// SIGTERM every agent and wait for it.
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = c.wait();
            }
        }
    }

    /// `GET path` on node `i`'s admin API.
    pub fn get(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        get_json(&self.nodes[i].admin, path)
    }

    /// Wait until node `i`'s /status satisfies `what`.
    pub fn wait(
        &self,
        i: usize,
        what: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(v) = self.get(i, "/status") {
                if what(&v) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Wait until node `i` is Hot, or fail naming its log.
    pub fn wait_hot(&self, i: usize) -> anyhow::Result<()> {
        if !self.wait(i, |v| is_mode(v, "Hot"), Duration::from_secs(10)) {
            bail!(
                "agent {} never became Hot (see {}/{}.out)",
                self.nodes[i].name,
                self.dir.path().display(),
                self.nodes[i].name
            );
        }
        Ok(())
    }

    /// Wait until node `i` is a ready standby, or fail naming its log.
    pub fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        if !self.wait(i, is_ready_standby, Duration::from_secs(10)) {
            bail!(
                "agent {} never became a ready standby (see {}/{}.out)",
                self.nodes[i].name,
                self.dir.path().display(),
                self.nodes[i].name
            );
        }
        Ok(())
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A minimal blocking GET on an agent's admin API (loopback).
pub fn get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    serde_json::from_str(buf.split("\r\n\r\n").nth(1)?).ok()
}

/// True when a /status body says `mode` is `m`.
pub fn is_mode(v: &serde_json::Value, m: &str) -> bool {
    v.get("mode").and_then(|x| x.as_str()) == Some(m)
}

/// True when a /status body is a Warm node ready to take over.
pub fn is_ready_standby(v: &serde_json::Value) -> bool {
    is_mode(v, "Warm") && v.get("ready").and_then(|x| x.as_bool()) == Some(true)
}

/// Receive one activation report (`… <mono_ns>`), or None after `timeout`.
pub fn receive(sock: &UdpSocket, timeout: Duration) -> anyhow::Result<Option<u64>> {
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

/// Keep the directory (for --keep) and return its path.
pub fn keep(g: LocalGroup) -> PathBuf {
    let mut g = g;
    g.stop_all();
    let dir = std::mem::replace(
        &mut g.dir,
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(_) => return PathBuf::new(),
        },
    );
    dir.keep()
}

/// Is the process alive (and not a zombie)?
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}
