//! Subcommands of the FIX gateway (warm standby, document 002): the gateway an agent protects,
//! its demo and its benchmarks.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// FIX subcommands.
#[derive(Subcommand, Debug)]
pub enum FixCmds {
    /// A FIX gateway (run it as an agent's service with service.standby = "warm").
    FixGateway {
        /// The gateway's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

impl FixCmds {
    /// Run the subcommand; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixCmds::FixGateway { config } => {
                anyhow::bail!("fix-gateway ({}) is being built", config.display())
            }
        }
    }
}

/// FIX benchmarks (`understudy bench …`).
#[derive(Subcommand, Debug)]
pub enum FixBench {
    /// Order round trip through the gateway.
    FixRoundtrip(FixBenchArgs),
}

/// Arguments of the FIX benchmarks.
#[derive(Args, Debug)]
pub struct FixBenchArgs {
    /// Number of orders or runs.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
}

impl FixBench {
    /// Run the benchmark; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixBench::FixRoundtrip(a) => {
                anyhow::bail!("fix-roundtrip ({} runs) is being built", a.runs)
            }
        }
    }
}

/// Arguments of `understudy demo fix`.
#[derive(Args, Debug)]
pub struct FixDemoArgs {}

/// `understudy demo fix`.
pub fn demo(_args: FixDemoArgs) -> anyhow::Result<u8> {
    anyhow::bail!("the FIX demo is being built")
}
