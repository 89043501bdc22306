//! understudy's control plane (document 000): a person adds failover to a trading server, chooses
//! hot, warm or cold standby, starts it (only from a stopped server), stops it (the active keeps
//! running), deletes it, switches over by hand, and sees every group and its failure events live.
//!
//! Layout, in the order a request goes through it:
//! - [`api`]: the REST API, the dashboard page and the live stream (axum), token check.
//! - [`lifecycle`]: document 000's rules as a pure function: may this step happen now?
//! - [`plane`]: each step carried out against the store and the host; the collector that asks
//!   every agent for its status and failure events.
//! - [`model`]: servers, failover services, nodes, and their validation.
//! - [`store`]: the embedded SQLite database with numbered migrations.
//! - [`hostd`]: a host's reconciler (desired processes → running processes), built into `serve`
//!   for this machine and run by `understudy host --control URL` on the others.
//! - [`host`]: starting, recognising and stopping processes on this machine.
//! - [`openapi`], [`export`]: the API's description; failure events as CSV.
//! - [`config_io`]: the whole configuration as TOML files for Git; import with a diff first.
//! - [`notify`]: failure events pushed to a webhook, with retries.
//! - [`client`]: `understudy ctl`'s side: one call, its answer in words.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config_io;
pub mod export;
pub mod host;
pub mod hostd;
pub mod lifecycle;
pub mod model;
pub mod notify;
pub mod openapi;
pub mod plane;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

pub use plane::{AgentAccess, Plane, PlaneError};

/// The dashboard: one page, its script and styles inline, no external assets.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// How often the collector asks every agent for its status (the dashboard's refresh bound).
pub const COLLECT_INTERVAL: Duration = Duration::from_millis(250);
/// Failure events are collected every this many status passes.
const EVENTS_EVERY: u32 = 4;

/// `understudy serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Listen address.
    pub listen: SocketAddr,
    /// State directory (database, node configs, logs).
    pub data: PathBuf,
    /// The `understudy` binary, to start agents with.
    pub exe: PathBuf,
    /// File holding the bearer token for mutating calls.
    pub token_file: Option<PathBuf>,
    /// Reads need the token too.
    pub private: bool,
    /// URL each new failure event is POSTed to.
    pub webhook: Option<String>,
    /// etcd endpoints, for groups whose nodes are on more than one host.
    pub etcd: Vec<String>,
    /// The agents' admin TLS and token: written into their configurations, used to reach them.
    pub agents: plane::AgentAccess,
}

/// Read a token file: refused when missing, empty, or readable by others.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("--token-file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "--token-file {}: readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        anyhow::bail!("--token-file {}: empty", path.display());
    }
    Ok(t)
}

/// Run the control plane until SIGTERM or SIGINT.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    if opts.private && token.is_none() {
        anyhow::bail!("--private needs --token-file");
    }
    if let Some(u) = &opts.webhook {
        if !u.starts_with("http://") && !u.starts_with("https://") {
            anyhow::bail!("--webhook {u:?}: not an http:// or https:// URL");
        }
    }
    let mut plane = Plane::open(&opts.data, opts.exe.clone())
        .with_context(|| format!("--data {}", opts.data.display()))?
        .with_agent_access(opts.agents.clone())
        .map_err(anyhow::Error::msg)?;
    plane.notifier = opts.webhook.clone().map(notify::Notifier::spawn);
    for e in &opts.etcd {
        if !e.starts_with("http://") && !e.starts_with("https://") {
            anyhow::bail!("--etcd {e:?}: write http://HOST:2379");
        }
    }
    plane.etcd = opts.etcd.clone();
    let first = plane.view().context("reading the database")?;
    let (view_tx, view_rx) = watch::channel(first);
    let ctx = Arc::new(api::Ctx {
        plane,
        token,
        private: opts.private,
        view: view_rx,
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}", opts.listen))?;
    info!(listen = %opts.listen, data = %opts.data.display(), "control plane serving");
    let collector = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut n: u32 = 0;
            loop {
                ctx.plane.collect(n.is_multiple_of(EVENTS_EVERY)).await;
                n = n.wrapping_add(1);
                match ctx.plane.view() {
                    Ok(v) => {
                        view_tx.send_if_modified(|old| {
                            let changed = *old != v;
                            if changed {
                                *old = v;
                            }
                            changed
                        });
                    }
                    Err(e) => warn!("cannot build the view: {e}"),
                }
                tokio::time::sleep(COLLECT_INTERVAL).await;
            }
        })
    };
    let app = api::router(ctx);
    // Ending the collector drops the view's sender, which ends every live stream: graceful shutdown
    // waits for open connections, and a dashboard's stream would otherwise never close.
    let stop_collector = collector.abort_handle();
    let shutdown = async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("stopping the control plane; the servers and agents it started keep running");
        stop_collector.abort();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")?;
    Ok(())
}
