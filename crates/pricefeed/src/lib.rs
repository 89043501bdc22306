//! Hot-standby price distribution (document 001, issue 3): a simulated exchange feed, a price
//! server that runs as a hot standby behind an `understudy agent`, and a client library that
//! follows the primary across failovers by itself.
//!
//! Layout:
//! - [`protocol`]: the binary, length-prefixed, versioned wire format (see `docs/price-protocol.md`),
//!   used both exchange → price server and price server ↔ client.
//! - [`exchange_sim`]: `understudy exchange-sim`, the upstream feed and load generator.
//! - [`server`]: `understudy price-server`: upstream book, subscriptions, roles and epochs,
//!   per-client conflating writers.
//! - [`client`]: the client library ([`client::PriceClient`]) and `understudy price-client`.
//! - [`fuzz`]: the entry point of the cargo-fuzz target `price_protocol`.
//! - [`Error`]: the error type of the entry points.

#![warn(missing_docs)]

pub mod client;
pub mod exchange_sim;
pub mod fuzz;
pub mod protocol;
pub mod server;

pub use client::{
    parse_servers, parse_symbols, run_price_client, ClientEvent, ClientOptions, PriceClient, Quote,
};
pub use exchange_sim::run_exchange_sim;
pub use server::{
    run_price_server, run_price_server_with, serve_status_http, PriceServer, ServerHandle,
    ServerLimits, ServerStatus, ERROR_TOO_MANY_CLIENTS, ERROR_TOO_MANY_SUBSCRIPTIONS,
};

/// Errors returned by the entry points of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket could not be bound or used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// A message could not be encoded or decoded.
    #[error("protocol error: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    /// The arguments or environment are unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The agent did not give the epoch a promotion needs.
    #[error(transparent)]
    Agent(#[from] understudy_sdk::AgentError),
}

impl Error {
    /// Wraps an I/O error with what was being attempted.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Aborts a spawned task when dropped, so helper tasks never outlive what they serve.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
