//! The control plane as the tests drive it: `understudy serve` as a real process ([`Plane`]), its
//! CLI, raw HTTP requests, and the processes it started, found through `/proc`.
#![allow(dead_code)] // each test file uses a subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{alive, run_cli, wait_until, BIN};

/// `understudy ctl --control CONTROL --json …`: (exit code, answer).
pub fn ctl(control: &str, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["ctl", "--control", control, "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|_| panic!("ctl {args:?} printed no JSON: {out} {err}"));
    (code, v)
}

/// One HTTP/1.1 request with `Connection: close` and `body` (typed `ctype` when given):
/// (status, content type, body); status 0 when nothing answers.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let ct = ctype
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    // A server may answer (413) before the whole body is sent and close: that is fine.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = h
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = h
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, content_type, b.to_string())
}

/// `understudy serve` on a data directory, stopped on drop with everything it started.
pub struct Plane {
    /// None for a plane started elsewhere (the test only talks to it).
    pub child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
}

impl Plane {
    pub fn start(data: &Path, addr: &str) -> Plane {
        Self::start_with(data, addr, &[])
    }

    pub fn start_with(data: &Path, addr: &str, extra: &[&str]) -> Plane {
        let child = Command::new(BIN)
            .args(["serve", "--listen", addr, "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start understudy serve");
        let p = Plane {
            child: Some(child),
            addr: addr.to_string(),
            data: data.to_path_buf(),
        };
        assert!(
            wait_until(Duration::from_secs(15), || p.get("/api/health").0 == 200),
            "understudy serve did not answer"
        );
        p
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn req(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Value) {
        let (code, _, b) = request(&self.addr, method, path, Some(ctype), body);
        (code, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.req("GET", path, "application/json", b"")
    }

    pub fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.req(
            method,
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// `understudy ctl --json …` against this plane: (exit code, answer).
    pub fn ctl(&self, args: &[&str]) -> (i32, Value) {
        ctl(&self.addr, args)
    }

    /// `ctl` that must succeed; its JSON answer.
    pub fn ctl_ok(&self, args: &[&str]) -> Value {
        let (code, v) = ctl(&self.addr, args);
        assert_eq!(code, 0, "ctl {args:?}: {v}");
        v
    }

    pub fn server(&self, name: &str) -> Value {
        let (code, v) = self.get(&format!("/api/servers/{name}"));
        assert_eq!(code, 200, "{v}");
        v
    }

    pub fn nodes(&self, name: &str) -> Vec<Value> {
        self.server(name)["failover"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn active(&self, name: &str) -> Option<String> {
        self.server(name)["failover"]["active"]
            .as_str()
            .map(String::from)
    }

    pub fn node_addrs(&self, name: &str) -> Vec<(String, String)> {
        self.nodes(name)
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or("").to_string(),
                    n["admin"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop();
        // The agents and servers it started live in their own sessions (they outlive the plane by
        // design); the test cleans them up through their recorded marker.
        for pid in procs_with_marker(&self.data) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Pids of the processes started by the plane whose data directory is `data` (their agent
/// configurations live there, and plain servers carry the marker).
pub fn procs_with_marker(data: &Path) -> Vec<u32> {
    let needle = data.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(&needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Pids of the running agents of `server`'s nodes started by the plane over `data`.
pub fn agents_of(data: &Path, server: &str) -> Vec<u32> {
    let needle = data.join("nodes").join(format!("{server}-"));
    let needle = needle.display().to_string();
    procs_with_marker(data)
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&needle)
        })
        .collect()
}

/// The pid of node `node`'s agent started by the plane over `data`.
pub fn agent_pid(data: &Path, node: &str) -> Option<u32> {
    let cfg = data.join("nodes").join(format!("{node}.toml"));
    let cfg = cfg.display().to_string();
    procs_with_marker(data).into_iter().find(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmd).contains(&cfg)
    })
}

pub fn service_pid(node: &Value) -> Option<u32> {
    node["service"]["pid"].as_u64().map(|p| p as u32)
}
