//! The real-process tests' harness is crate `testbed`; this module hands it the binary under
//! test, so that a test says `Group::new(mode, standby)` and `run_cli(args)`.
#![allow(dead_code)] // each test file uses a different subset

pub use testbed::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// A [`testbed::Group`] of agents run by [`BIN`].
pub struct Group(testbed::Group);

impl Group {
    /// A group with `mode` and `standby` (as in a config file), each node protecting
    /// `understudy demo-service --log <dir>/service.log`.
    pub fn new(mode: &str, standby: &str) -> Group {
        let mode = mode.parse().unwrap_or_else(|e| panic!("mode {mode}: {e}"));
        let standby = standby
            .parse()
            .unwrap_or_else(|e| panic!("standby {standby}: {e}"));
        Group(testbed::Group::create(BIN, mode, standby).unwrap_or_else(|e| panic!("{e:#}")))
    }

    // Forwarded rather than reached through `DerefMut`, so that an argument may read the group
    // (`g.set_service("env", &format!("{}", g.log.display()))`): a method call's own `&mut`
    // borrow starts only after its arguments, an explicit `deref_mut` before them.

    /// See [`testbed::Group::set_activation`].
    pub fn set_activation(&mut self, key: &str, toml_value: &str) {
        self.0.set_activation(key, toml_value)
    }

    /// See [`testbed::Group::set_service`].
    pub fn set_service(&mut self, key: &str, toml_value: &str) {
        self.0.set_service(key, toml_value)
    }

    /// See [`testbed::Group::set_lock`].
    pub fn set_lock(&mut self, lock: &std::path::Path) {
        self.0.set_lock(lock)
    }

    /// See [`testbed::Group::add`].
    pub fn add(&mut self, name: &str) -> String {
        self.0.add(name)
    }

    /// See [`testbed::Group::start`].
    pub fn start(&mut self, name: &str) -> String {
        self.0.start(name)
    }

    /// See [`testbed::Group::kill9`].
    pub fn kill9(&mut self, name: &str) -> bool {
        self.0.kill9(name)
    }

    /// See [`testbed::Group::sigterm`].
    pub fn sigterm(
        &mut self,
        name: &str,
        timeout: std::time::Duration,
    ) -> std::process::ExitStatus {
        self.0.sigterm(name, timeout)
    }
}

impl std::ops::Deref for Group {
    type Target = testbed::Group;
    fn deref(&self) -> &testbed::Group {
        &self.0
    }
}

impl std::ops::DerefMut for Group {
    fn deref_mut(&mut self) -> &mut testbed::Group {
        &mut self.0
    }
}

/// Runs the binary under test to completion; (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    testbed::run_cli(BIN.as_ref(), args)
}

/// Resident memory of a process in KiB (0 when it cannot be read).
/// The value of the Prometheus sample `name` at the agent `addr`; panics when there is none.
pub fn metric(addr: &str, name: &str) -> u64 {
    let (_, body) =
        http("GET", addr, "/metrics", std::time::Duration::from_secs(1)).expect("GET /metrics");
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}
