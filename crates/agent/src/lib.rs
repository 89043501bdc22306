//! The understudy agent: one node of a group.
//!
//! Layout:
//! - [`config`]: the TOML file, validated in full at start.
//! - [`coordination`]: the coordinator the configuration names (lock file or etcd).
//! - [`runtime`]: the single event loop. Inputs (lock obtained, service exited, operator request,
//!   timer) go into the pure [`understudy_engine::Engine`]; the commands it returns are executed
//!   here against the coordinator (lock, epoch, heartbeat) and the supervisor (service).
//! - [`api`]: the admin API (axum): activation mode, status, group, events, metrics, switchover.
//! - [`events`]: the event timeline and the takeovers built from it.
//! - [`metrics`]: Prometheus metrics.
//! - [`sdnotify`]: systemd's readiness and watchdog notifications.
//! - [`tls`]: TLS for the admin API (rustls), with optional client certificates.
//! - [`fuzz`]: the entry points of the cargo-fuzz targets `admin_api` and `agent_config`.
// The OpenAPI document is one json! literal, deeper than the macro's default limit.
#![recursion_limit = "256"]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod coordination;
pub mod events;
pub mod fuzz;
pub mod metrics;
pub mod openapi;
pub mod runtime;
pub mod sdnotify;
pub mod tls;

pub use config::{Config, ConfigError};
pub use runtime::{run, AgentError};
