//! The test bed of understudy: everything that starts real processes to show, measure or test
//! the product, shared by the CLI's `demo` and `bench` commands and by the tests. Not part of
//! the product: the agent and the price and FIX services never use it (the demo service takes
//! its clock from [`clock`], the clock the overlap checker reads its log on).
//!
//! Layout:
//! - [`group`]: a local group of real `understudy agent` processes ([`Group`]), configured with
//!   the typed [`config::AgentConfig`]; the price ([`price::PriceGroup`]) and FIX
//!   ([`fix::FixGroup`]) groups build on it.
//! - [`proc`]: processes: the kill-on-drop guard [`Proc`] (kills the process group), and what
//!   `/proc` says about a process. [`ports`]: free loopback ports. [`http`]: the admin API
//!   client and the `/status` and `/events` readers. [`clock`]: clocks, waiting with a deadline.
//! - [`checkers`]: the overlap checker over the demo service's log and the two-Hot watcher.
//! - [`netns`]: "machines" as network namespaces on a bridge ([`netns::Lab`]); [`tmpfs`];
//!   [`iothrottle`]: a disk that stalls for chosen processes.
//! - [`stats`]: percentiles, the benchmark table, comparisons that name a winner honestly.
//! - Drivers: [`demo`] (`understudy demo`), [`bench`] (`understudy bench …`), and the price
//!   ([`price`]) and FIX ([`fix`]) demos and benchmarks.
//!
//! Binaries and tests hand the harness the `understudy` binary to run: the CLI its own
//! `std::env::current_exe()`, tests `env!("CARGO_BIN_EXE_understudy")`.
#![allow(clippy::disallowed_methods)] // drivers block their own threads: real processes run in real time

pub mod bench;
pub mod checkers;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fix;
pub mod group;
pub mod http;
pub mod iothrottle;
pub mod netns;
pub mod ports;
pub mod price;
pub mod proc;
pub mod stats;
pub mod tmpfs;

pub use checkers::{
    check_overlaps, intervals, read_log, verify_log, Interval, LogLine, WatchReport, Watcher,
};
pub use clock::{mono_ns, pause, sleep_ms, unix_ms, wait_until};
pub use config::{arr, q, AgentConfig, Overrides};
pub use group::{tail, Group, Node};
pub use http::{get_json, http, is_mode, is_ready_standby, post, put, wait_port};
pub use iothrottle::IoThrottle;
pub use ports::{free_addr, free_addrs};
pub use proc::{
    alive, environ, exit_within, pgid_of, pids_in_group, rss_kib, run_cli, signal, wait_exit, Proc,
    Stopped,
};
pub use tmpfs::Tmpfs;

/// A multi-threaded runtime of two workers for the async drivers.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
