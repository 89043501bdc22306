//! The shipped unit `dist/systemd/understudy@.service` under a real systemd (issue 12, item 3).
//!
//! This machine's PID 1 is not systemd, so the test runs a systemd user manager of its own in a
//! private mount namespace (where `/run/systemd/system` exists, which is how systemd tells it was
//! booted) and drives it with `systemctl --user` through `nsenter`. The unit file is the shipped
//! one with two paths replaced (the binary under test, the test's config directory) and a test
//! drop-in that shortens the watchdog and logs to files.
//!
//! What it shows: `systemctl start` returns once the agent said READY=1 (Type=notify), the unit's
//! status text names the state and epoch; an agent whose loop stops (SIGSTOP) misses its
//! watchdog, is killed and restarted by systemd, and a standby takes over meanwhile; `systemctl
//! stop` of the active stops its service before the lock passes (exit 0, unit inactive, not
//! failed); never two actives.

mod common;
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_until, Group, BIN};

const SYSTEMD: &str = "/lib/systemd/systemd";

/// A systemd user manager in its own mount namespace; stopped (with its units) on drop.
struct Manager {
    child: Child,
    runtime: PathBuf,
    config: PathBuf,
}

impl Manager {
    fn start(dir: &Path) -> Result<Manager, String> {
        if !Path::new(SYSTEMD).exists() {
            return Err(format!("{SYSTEMD} is missing (Debian: systemd)"));
        }
        for tool in ["unshare", "nsenter", "systemctl"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(format!("{tool} is missing (Debian: util-linux, systemd)"));
            }
        }
        let runtime = dir.join("run");
        let config = dir.join("config");
        std::fs::create_dir_all(&runtime).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(config.join("systemd/user")).map_err(|e| e.to_string())?;
        let script = format!(
            "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec {SYSTEMD} --user --log-target=console"
        );
        let log = std::fs::File::create(dir.join("systemd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", &config)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let m = Manager {
            child,
            runtime,
            config,
        };
        let up = wait_until(Duration::from_secs(10), || {
            m.systemctl(&["is-system-running"])
                .is_ok_and(|o| o.trim() == "running" || o.trim() == "degraded")
        });
        if !up {
            return Err(format!(
                "the systemd user manager did not come up: {}",
                std::fs::read_to_string(dir.join("systemd.log")).unwrap_or_default()
            ));
        }
        Ok(m)
    }

    /// `systemctl --user ARGS` inside the manager's namespace; Ok(stdout) on success.
    fn systemctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &self.child.id().to_string(),
                "-m",
                "systemctl",
                "--user",
            ])
            .args(args)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "systemctl --user {}: {}{}",
                args.join(" "),
                text,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn show(&self, unit: &str, prop: &str) -> String {
        self.systemctl(&["show", unit, "-p", prop, "--value"])
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.systemctl(&["stop", "understudy@a", "understudy@b"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped unit, pointed at the binary under test and the group's config directory.
fn install_unit(m: &Manager, cfg_dir: &Path, out_dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(repo.join("dist/systemd/understudy@.service"))
        .expect("dist/systemd/understudy@.service");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let unit = unit
        .replace("/usr/bin/understudy", BIN)
        .replace("/etc/understudy/", &format!("{}/", cfg_dir.display()));
    let units = m.config.join("systemd/user");
    std::fs::write(units.join("understudy@.service"), unit).expect("write unit");
    // Test-only: a short watchdog and abort timeout so a frozen agent is restarted within
    // seconds, logs into files (this manager has no journal), the agent's RUST_LOG.
    let dropin = units.join("understudy@.service.d");
    std::fs::create_dir_all(&dropin).expect("drop-in dir");
    std::fs::write(
        dropin.join("test.conf"),
        format!(
            "[Service]\nWatchdogSec=1s\nTimeoutAbortSec=1s\nEnvironment=RUST_LOG=info\nStandardOutput=append:{0}/%i.out\nStandardError=append:{0}/%i.out\n",
            out_dir.display()
        ),
    )
    .expect("write drop-in");
    m.systemctl(&["daemon-reload"]).expect("daemon-reload");
}

#[test]
fn the_shipped_unit_runs_the_agent_under_real_systemd() {
    let mut g = Group::new("trylock", "hot");
    let m = match Manager::start(&g.path.join("systemd")) {
        Ok(m) => m,
        Err(why) => {
            return skip::skip("the_shipped_unit_runs_the_agent_under_real_systemd", &why);
        }
    };
    g.add("a");
    g.add("b");
    install_unit(&m, &g.path, &g.path);
    let w = g.watch();

    // Type=notify: `systemctl start` returns once the agent said READY=1.
    m.systemctl(&["start", "understudy@a"])
        .unwrap_or_else(|e| panic!("{e}\n{}", g.output("a")));
    assert!(
        common::get_json(&g.admin("a"), "/status").is_some(),
        "started, but a's admin API does not answer"
    );
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    m.systemctl(&["start", "understudy@b"])
        .unwrap_or_else(|e| panic!("{e}\n{}", g.output("b")));
    g.wait_ready("b", Duration::from_secs(20));
    let epoch = g.epoch("a");
    // The overlap checker below must see a's activity before the freeze ends it.
    g.wait_service_active("a", epoch);
    assert!(
        wait_until(Duration::from_secs(5), || m
            .show("understudy@a", "StatusText")
            .starts_with(&format!("Hot epoch {epoch}"))),
        "the unit's status text: {:?}",
        m.show("understudy@a", "StatusText")
    );

    // A frozen event loop misses the watchdog: systemd kills the agent (its guardian kills the
    // service), restarts it; b takes over meanwhile; a comes back as a standby.
    let pid: u32 = m.show("understudy@a", "MainPID").parse().expect("MainPID");
    common::signal(pid, nix::sys::signal::Signal::SIGSTOP);
    g.wait_mode("b", "Hot", Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(20), || m
            .show("understudy@a", "NRestarts")
            .parse::<u32>()
            .is_ok_and(|n| n >= 1)
            && m.show("understudy@a", "ActiveState") == "active"),
        "systemd did not restart a: NRestarts {} ActiveState {}\n{}",
        m.show("understudy@a", "NRestarts"),
        m.show("understudy@a", "ActiveState"),
        g.output("a")
    );
    assert!(!common::alive(pid), "the frozen agent {pid} is still there");
    g.wait_ready("a", Duration::from_secs(20));
    assert_eq!(g.mode("a").as_deref(), Some("Warm"));

    // `systemctl stop` of the active: SIGTERM, service stopped first, exit 0; a takes over.
    m.systemctl(&["stop", "understudy@b"])
        .unwrap_or_else(|e| panic!("{e}\n{}", g.output("b")));
    assert_eq!(m.show("understudy@b", "ActiveState"), "inactive");
    assert_eq!(m.show("understudy@b", "Result"), "success");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    w.finish();
    g.expect_actives(3);
}
