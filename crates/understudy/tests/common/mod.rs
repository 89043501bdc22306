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
