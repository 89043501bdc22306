//! The FIX tests' harness is crate `testbed` (`testbed::fix`); this module hands it the binary
//! under test.
#![allow(dead_code, unused_imports)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use testbed::fix::group::{start_active_then_standby as start_group, Pair, Replicated, NODES};
pub use testbed::fix::orders::*;
pub use testbed::{wait_port, Group, Proc};

/// The binary under test.
pub const EXE: &str = env!("CARGO_BIN_EXE_understudy");

/// A loopback address on `port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A free loopback port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(testbed::free_addrs(1)?[0].port())
}

/// `fix-exchange-sim` (SenderCompID EXCH) on a free port, logging into `dir/sim.log`.
pub fn start_sim(dir: &Path) -> (Proc, SocketAddr) {
    testbed::fix::group::start_sim(EXE.as_ref(), None, Some(&dir.join("sim.log")))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A gateway config `dir/{name}.toml` for client CLIENT1 and the upstream EXCH at `sim`,
/// with the TOML document `extra` (more clients, routes, an `[admin]` section) merged in.
pub fn gateway_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    store: &Path,
    sim: SocketAddr,
    extra: &str,
) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let mut file = testbed::fix::GatewayFile::new(listen, store, sim, &["CLIENT1"]);
    file.upstream[0].heartbeat_interval = Some("5s".into());
    file.write(&p, extra).unwrap_or_else(|e| panic!("{e:#}"));
    p
}

/// Starts the exchange sim and writes the configs of a [`Pair`] in `dir`, config `i` with
/// `extra(i)` merged in (see [`gateway_config`]).
pub fn pair(dir: &Path, extra: impl Fn(usize) -> String) -> Pair {
    Pair::create(EXE.as_ref(), dir, None, &["CLIENT1"], extra).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Two agents `a` and `b` (warm standby), each running `fix-gateway` with its config.
pub fn gateway_group(cfgs: &[PathBuf; 2]) -> Group {
    gateway_group_with(cfgs, None)
}

/// [`gateway_group`]; with `repl`, each agent checks its replicated gateway's health.
pub fn gateway_group_with(cfgs: &[PathBuf; 2], repl: Option<&Replicated>) -> Group {
    let mut g =
        testbed::fix::group::gateway_group(EXE.as_ref()).unwrap_or_else(|e| panic!("{e:#}"));
    testbed::fix::group::add_gateways_with(&mut g, cfgs, repl).unwrap_or_else(|e| panic!("{e:#}"));
    g
}

/// Starts node a and waits until it is Hot, then node b and waits until it is ready; asserts
/// that the active gateway listens at `active` within 10 s.
pub fn start_active_then_standby(g: &mut Group, active: SocketAddr) {
    start_group(g, active).unwrap_or_else(|e| panic!("{e:#}"));
}
