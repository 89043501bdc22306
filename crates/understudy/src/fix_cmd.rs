//! Subcommands of the FIX gateway (warm standby, document 002): the gateway an agent protects,
//! and the FIX exchange simulator upstream of it. Their demo and benchmarks are in
//! `testbed::fix`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tokio::signal::unix::{signal, Signal, SignalKind};
use understudy_fix::admin::{self, Health, Probe};
use understudy_fix::engine::{Engine, EngineError, SessionSlot};
use understudy_fix::exchange_sim::ExchangeSim;
use understudy_fix::gateway::{Gateway, GatewayConfig};
use understudy_fix::replica::{standby::ActivateError, Receiver, Sender};
use understudy_fix::session::{Role as SessionRole, Session, SessionConfig};
use understudy_fix::store::{FileStore, GroupCommit, SessionId, SyncPolicy};
use understudy_sdk::{Notice, Role, Service};
use understudy_tls::{Pem, TlsServer};

use crate::{init_logging, loop_runtime};

/// Exit code of a gateway that found its store owned by a newer epoch.
pub const EXIT_FENCED: u8 = understudy_sdk::EXIT_FENCED;

/// FIX subcommands.
#[derive(Subcommand, Debug)]
pub enum FixCmds {
    /// A FIX gateway (run it as an agent's service with service.standby = "warm").
    FixGateway {
        /// The gateway's TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// A FIX exchange simulator (acceptor): acknowledges, fills, cancels and replaces orders.
    FixExchangeSim {
        /// Listen address for FIX initiators (gateways).
        #[arg(long, default_value = "127.0.0.1:9900")]
        listen: SocketAddr,
        /// The simulator's CompID: initiators must send it as TargetCompID.
        #[arg(long, default_value = "EXCH")]
        sender_comp_id: String,
        /// Keep the sessions in a FileStore under this directory (the gateway's fenced,
        /// checksummed store) instead of in memory; used by `bench fix-roundtrip` to compare
        /// durable engines.
        #[arg(long)]
        store_dir: Option<PathBuf>,
        /// With --store-dir: how the store syncs.
        #[arg(long, value_enum, default_value = "group", requires = "store_dir")]
        sync: SyncArg,
        #[command(flatten)]
        tls: AcceptorTls,
    },
}

/// TLS on a FIX acceptor given on the command line (the gateway's `tls_*` keys, as flags).
#[derive(clap::Args, Debug, Default)]
pub struct AcceptorTls {
    /// PEM certificate chain: accept only TLS connections.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate: require client certificates it signed.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl AcceptorTls {
    /// The server settings, loaded and checked; `None` without --tls-cert.
    pub fn load(&self) -> anyhow::Result<Option<TlsServer>> {
        TlsServer::load_optional(
            Pem::opt("--tls-cert", self.tls_cert.as_deref()),
            Pem::opt("--tls-key", self.tls_key.as_deref()),
            Pem::opt("--tls-client-ca", self.tls_client_ca.as_deref()),
        )
        .map_err(anyhow::Error::from)
    }
}

/// `fix-exchange-sim --sync`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SyncArg {
    /// Group commit: nothing sent before it is durable, one fdatasync per batch.
    Group,
    /// fdatasync of each record before the message is sent.
    EveryWrite,
    /// fdatasync at most 2 ms after a write.
    Batch,
}

impl From<SyncArg> for SyncPolicy {
    fn from(a: SyncArg) -> Self {
        match a {
            SyncArg::Group => SyncPolicy::Group,
            SyncArg::EveryWrite => SyncPolicy::EveryWrite,
            SyncArg::Batch => SyncPolicy::Batch {
                max_delay: Duration::from_millis(2),
            },
        }
    }
}

impl FixCmds {
    /// Run the subcommand; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixCmds::FixGateway { config } => run_gateway(config),
            FixCmds::FixExchangeSim {
                listen,
                sender_comp_id,
                store_dir: None,
                tls,
                ..
            } => {
                init_logging();
                let tls = tls.load()?;
                loop_runtime()?.block_on(exchange_sim(listen, sender_comp_id, tls))
            }
            FixCmds::FixExchangeSim {
                listen,
                sender_comp_id,
                store_dir: Some(dir),
                sync,
                tls,
            } => {
                init_logging();
                let tls = tls.load()?;
                loop_runtime()?.block_on(exchange_sim_durable(
                    listen,
                    sender_comp_id,
                    dir,
                    sync.into(),
                    tls,
                ))
            }
        }
    }
}

fn term_signals() -> anyhow::Result<(Signal, Signal)> {
    Ok((
        signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
    ))
}

/// Run the FIX exchange simulator (acceptor) until SIGTERM or SIGINT, over TLS with `tls`.
pub(crate) async fn exchange_sim(
    listen: SocketAddr,
    comp_id: String,
    tls: Option<TlsServer>,
) -> anyhow::Result<u8> {
    let (term, int) = term_signals()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("fix-exchange-sim {comp_id} listening on {listen}");
    let engine = Engine::new(Vec::new(), Some(listener))
        .with_factory(Box::new(ExchangeSim::factory(comp_id)));
    simulate(engine, tls, term, int).await
}

/// Runs the exchange simulator on `engine` (over TLS with `tls`) until SIGTERM or SIGINT.
async fn simulate<S: understudy_fix::store::SessionStore + Send + 'static>(
    mut engine: Engine<S>,
    tls: Option<TlsServer>,
    mut term: Signal,
    mut int: Signal,
) -> anyhow::Result<u8> {
    if let Some(t) = tls {
        engine = engine.with_tls(t);
    }
    engine
        .run_on_worker(ExchangeSim::new(), async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await?;
    Ok(0)
}

/// The FIX exchange simulator with its sessions in [`FileStore`]s under `dir` (epoch 1), so
/// it can stand next to a QuickFIX acceptor on its FileStore in `bench fix-roundtrip`.
async fn exchange_sim_durable(
    listen: SocketAddr,
    comp_id: String,
    dir: PathBuf,
    sync: SyncPolicy,
    tls: Option<TlsServer>,
) -> anyhow::Result<u8> {
    let (term, int) = term_signals()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "fix-exchange-sim {comp_id} listening on {listen}, sessions stored in {}",
        dir.display()
    );
    let factory = move |sid: &SessionId| -> Option<SessionSlot<FileStore>> {
        if sid.sender_comp_id != comp_id {
            return None;
        }
        let store = match FileStore::open(&dir, sid, 1, sync) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the session store; refusing the logon");
                return None;
            }
        };
        let mut cfg = SessionConfig::new(
            sid.begin_string,
            &sid.sender_comp_id,
            &sid.target_comp_id,
            SessionRole::Acceptor,
        );
        cfg.logon_timeout = Duration::from_secs(5);
        // A simulator takes any counterparty as it comes, resets included.
        cfg.allow_peer_reset = true;
        let session = Session::new(cfg, store).ok()?;
        Some(SessionSlot::new(&sid.target_comp_id, session))
    };
    let engine = Engine::new(Vec::new(), Some(listener)).with_factory(Box::new(factory));
    simulate(engine, tls, term, int).await
}

fn run_gateway(config: PathBuf) -> anyhow::Result<u8> {
    // Signals first, before anything else (see `understudy_sdk::init`); the configuration is
    // reported before the environment, so a bad file is named whatever the environment says.
    understudy_sdk::signals::block(understudy_sdk::signals::ACTIVATE).context("fix-gateway")?;
    // Validated in full in every role, so a warm standby with a bad file fails at start.
    let cfg = match GatewayConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("understudy: configuration error: {e}");
            return Ok(understudy_sdk::EXIT_BAD_ENV);
        }
    };
    let service = match understudy_sdk::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("understudy: fix-gateway: {e}");
            return Ok(e.exit_code());
        }
    };
    init_logging();
    let rt = loop_runtime()?;
    rt.block_on(gateway(config, cfg, service))
}

async fn gateway(config: PathBuf, cfg: GatewayConfig, mut service: Service) -> anyhow::Result<u8> {
    // The health endpoint runs in every role, answered by whichever loop runs: the waiting
    // loop below while standby, the engine once active.
    let (probe_tx, mut probes) = tokio::sync::mpsc::unbounded_channel::<Probe>();
    let has_admin = cfg.admin_http.is_some();
    if let Some(a) = cfg.admin_http {
        let l = std::net::TcpListener::bind(a)
            .with_context(|| format!("cannot listen on admin.http {a}"))?;
        admin::serve_on_own_thread(l, probe_tx)
            .with_context(|| format!("cannot start the admin.http endpoint on {a}"))?;
        println!("fix-gateway: GET /health on {a}");
    } else {
        drop(probe_tx);
    }
    // The replication listener runs in every role: a standby mirrors the active's stores
    // through it, an active refuses older actives through it (telling them they are stale).
    let receiver = match &cfg.replication {
        Some(r) => Some(Receiver::start(r.clone(), &cfg.store_dir).with_context(|| {
            format!(
                "cannot start replication (listen {}, store {})",
                r.listen,
                cfg.store_dir.display()
            )
        })?),
        None => None,
    };
    let standby_health = || {
        let mut h = Health::standby();
        h.replication = receiver.as_ref().map(Receiver::health);
        h
    };
    let started_active = service.role() == Role::Active;
    if !started_active {
        println!(
            "fix-gateway: warm standby, configuration {} valid ({} clients, {} upstreams); waiting for activation",
            config.display(),
            cfg.clients.len(),
            cfg.upstreams.len()
        );
        loop {
            tokio::select! {
                notice = service.next() => match notice {
                    Some(Notice::Activate) => {
                        service.activate_async().await.context("activated, but no epoch")?;
                        break;
                    }
                    Some(Notice::Stop) | None => return Ok(0),
                },
                Some(p) = probes.recv() => {
                    let _ = p.send(standby_health());
                }
            }
        }
    }
    let epoch = service.epoch();
    tracing::info!(epoch, "fix-gateway activating");
    if let Some(r) = &receiver {
        // No mirror write after this: the stores are about to be opened from the copy.
        match r.activate(epoch) {
            Ok(()) => {}
            Err(e @ ActivateError::Stale { .. }) => {
                eprintln!("understudy: fix-gateway: {e}; not serving");
                return Ok(EXIT_FENCED);
            }
            Err(e) => return Err(e).context("cannot activate replication"),
        }
    }
    let listen = cfg.listen;
    let store_dir = cfg.store_dir.clone();
    let replication = cfg.replication.clone();
    let tls = cfg.tls.clone();
    let opened = tokio::task::spawn_blocking(move || Gateway::open(cfg, epoch))
        .await
        .context("store opening task failed")?;
    let activated = match opened {
        Ok(a) => a,
        Err(e) if e.is_fenced() => {
            eprintln!("understudy: fix-gateway: epoch {epoch} is stale, not serving: {e}");
            return Ok(EXIT_FENCED);
        }
        Err(e) => return Err(e).context("cannot activate the gateway"),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "fix-gateway: active, epoch {epoch}, clients on {listen}{}",
        if tls.is_some() { " (TLS)" } else { "" }
    );
    if started_active {
        if let Err(e) = service.acknowledge_async().await {
            tracing::warn!("cannot acknowledge the activation: {e}");
        }
    }
    let app = activated.gateway;
    // One timeout from accept to Logon, whether or not the connection has named its session
    // yet: what an operator who set gateway.logon_timeout expects.
    let logon_timeout = app.config().logon_timeout;
    let mut engine =
        Engine::new(activated.slots, Some(listener)).with_prelogon_timeout(logon_timeout);
    if let Some(r) = replication {
        let group = GroupCommit::shared().context("cannot start the group-commit syncer")?;
        let sender = Sender::start(r, &store_dir, epoch, group)
            .context("cannot start replication to the standbys")?;
        engine = engine.with_replication(sender);
    }
    if let Some(t) = tls {
        engine = engine.with_tls(t);
    }
    if has_admin {
        engine = engine.with_health_probes(probes, epoch);
    }
    let mut shutdown = service.shutdown();
    let outcome = engine
        .run_on_worker(app, async move { shutdown.requested().await })
        .await;
    match outcome {
        Ok(()) => Ok(0),
        Err(e @ EngineError::Fenced { .. }) => {
            eprintln!("understudy: fix-gateway: {e}; stopped sending");
            Ok(EXIT_FENCED)
        }
        Err(e) => Err(e).context("gateway failed"),
    }
}
