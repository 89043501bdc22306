//! The FIX gateway: client acceptor sessions, upstream initiator sessions, and the routing
//! between them, as a FIX hub does.
//!
//! * [`GatewayConfig::load`] reads and validates the whole TOML file (every key, every
//!   reference between sections) so a warm standby finds a bad file when it starts, not
//!   when it is activated during a failover.
//! * [`Gateway::open`] is activation: it opens every session store and the order map under
//!   `gateway.store_dir`, fenced by the epoch the agent granted.
//! * [`Gateway`] as an [`Application`] routes NewOrderSingle, OrderCancelRequest and
//!   OrderCancelReplaceRequest from clients to an upstream chosen by the `[[route]]` rules,
//!   and ExecutionReports and OrderCancelRejects back to the client that owns the order.
//!
//! ClOrdIDs are made unique upstream by prefixing the client's CompID (`CLIENT~id`), and the
//! owner of each upstream ClOrdID is recorded in the order map ([`OrderMap`]), itself a
//! fenced [`FileStore`] in the store directory, written once a tick and completed at
//! activation from the session stores, so a new active routes reports for orders the old one
//! sent; done orders leave it after `gateway.order_retention`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use thiserror::Error;

use crate::codec::{parse, Message};
use crate::engine::{AllowedPeers, Application, LogonInfo, Outbox, SessionSlot};
use crate::initiator::{InitiatorConfig, InitiatorDefaults};
use crate::order_map::{finished, OrderMap, Side};
use crate::orders::{put, put_str, reject_if_incomplete, tag};
use crate::schedule::{ScheduleSpec, SessionSchedule};
use crate::session::{Again, AppMessage, Role, Session, SessionConfig, SessionEvent};
use crate::store::{
    Deferred, FileStore, GroupCommit, SessionId, SessionStore, StoreError, StoreMark, SyncPolicy,
};
use crate::tags::{self, BeginString};
use understudy_tls::{Pem, TlsServer};

/// Separates the client's CompID from its ClOrdID upstream.
pub const CL_ORD_ID_SEP: char = '~';

/// ExecID(17) prefix of the ExecutionReports the gateway itself sends to refuse an order.
pub(crate) const REJECT_EXEC_ID_PREFIX: &str = "GWREJ-";

/// Longest the order map's checkpoint lags the session stores while no order or terminal
/// report moves it (other messages, the gateway's own rejects): what a successor reads
/// beyond it at activation stays small.
const CHECKPOINT_EVERY: i64 = 10;

/// A configuration error: the file, the key and the reason.
#[derive(Debug, Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The dotted key (`upstream[0].connect`), or `(file)` / `(syntax)`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    client: Vec<RawClient>,
    /// Each is an initiator's settings (see [`InitiatorConfig::from_toml`]) plus `name` and
    /// `schedule`, split apart in `validate`.
    #[serde(default)]
    upstream: Vec<toml::Table>,
    #[serde(default)]
    route: Vec<RawRoute>,
    admin: Option<RawAdmin>,
    replication: Option<crate::replica::RawReplication>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    http: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: String,
    comp_id: String,
    store_dir: PathBuf,
    begin_string: Option<String>,
    sync: Option<String>,
    sync_batch_delay: Option<String>,
    default_route: Option<String>,
    logon_timeout: Option<String>,
    max_latency: Option<String>,
    order_retention: Option<String>,
    store_rotate_bytes: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    comp_id: String,
    schedule: Option<ScheduleSpec>,
    allow_reset: Option<bool>,
    allowed_ips: Option<Vec<String>>,
}

/// The keys of an `[[upstream]]` that are not an initiator's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    schedule: Option<ScheduleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    upstream: String,
    symbol_prefix: Option<String>,
    target_sub_id: Option<String>,
    client: Option<String>,
}

/// What a client session accepts besides its CompIDs (`[[client]] allow_reset`, `allowed_ips`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAccess {
    /// Logons with ResetSeqNumFlag=Y are accepted (refused with a Logout by default).
    pub allow_reset: bool,
    /// The addresses the client may connect from (anywhere when empty).
    pub allowed_peers: AllowedPeers,
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Our CompID toward clients.
    pub comp_id: String,
    /// The directory of the session stores and the order map: shared by the group, or with
    /// `[replication]` this gateway's own copy.
    pub store_dir: PathBuf,
    /// Protocol of the client sessions.
    pub begin_string: BeginString,
    /// Store durability.
    pub sync: SyncPolicy,
    /// Upstream for orders no rule matches, if any.
    pub default_route: Option<String>,
    /// Logon timeout of every session.
    pub logon_timeout: Duration,
    /// SendingTime tolerance (`None`: not checked).
    pub max_latency: Option<Duration>,
    /// How long a done order stays in the order map.
    pub order_retention: Duration,
    /// `store_rotate_bytes`: the size of a store past which a reset, a new period or a
    /// compaction starts a new generation and the older segments are deleted (see
    /// [`crate::store::ROTATE_AFTER`]).
    pub store_rotate_bytes: u64,
    /// Client sessions, by the client's CompID.
    pub clients: Vec<String>,
    /// The schedule of each client session, in the order of `clients`.
    pub client_schedules: Vec<SessionSchedule>,
    /// Who may log on as each client and how, in the order of `clients`.
    pub client_access: Vec<ClientAccess>,
    /// Upstream sessions.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routing rules, first match wins.
    pub routes: Vec<Route>,
    /// `[admin] http`: where `GET /health` is served (see [`crate::admin`]), in every role.
    pub admin_http: Option<SocketAddr>,
    /// `[replication]` (see [`crate::replica`]); `None` when off: the group shares
    /// `store_dir`.
    pub replication: Option<crate::replica::ReplicationConfig>,
    /// TLS on the client acceptor (`tls_cert`, `tls_key`, `tls_client_ca`); plain without.
    pub tls: Option<TlsServer>,
}

/// One upstream (exchange) session, an initiator.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name used by routes.
    pub name: String,
    /// How it connects and logs on.
    pub initiator: InitiatorConfig,
    /// When the session runs (default: always).
    pub schedule: SessionSchedule,
}

/// A routing rule; every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Target upstream name.
    pub upstream: String,
    /// Symbol(55) starts with this.
    pub symbol_prefix: Option<String>,
    /// TargetSubID(57) of the client's message equals this.
    pub target_sub_id: Option<String>,
    /// The client's CompID equals this.
    pub client: Option<String>,
}

pub(crate) fn comp_id_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(CL_ORD_ID_SEP) && s.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) fn duration(
    key: &str,
    v: Option<&String>,
    default: Duration,
) -> Result<Duration, (String, String)> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            (
                key.to_owned(),
                format!("{s:?} is not a duration ({e}); use e.g. \"30s\" or \"250ms\""),
            )
        }),
    }
}

fn schedule(key: &str, v: Option<&ScheduleSpec>) -> Result<SessionSchedule, (String, String)> {
    match v {
        None => Ok(SessionSchedule::Always),
        Some(spec) => {
            SessionSchedule::try_from(spec).map_err(|e| (format!("{key}.{}", e.field), e.reason))
        }
    }
}

pub(crate) fn begin_string(
    key: &str,
    v: Option<&String>,
    default: BeginString,
) -> Result<BeginString, (String, String)> {
    match v {
        None => Ok(default),
        Some(s) => BeginString::from_bytes(s.as_bytes()).ok_or_else(|| {
            (
                key.to_owned(),
                format!("{s:?} is not supported; use \"FIX.4.2\" or \"FIX.4.4\""),
            )
        }),
    }
}

impl GatewayConfig {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<GatewayConfig, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(file).map_err(|e| err("(file)", e.to_string()))?;
        Self::parse(file, &text)
    }

    /// Validates the TOML `text` (read from `file`, for messages; `include = [...]` paths are
    /// relative to it). An error names the file its key is written in, fragment or not.
    pub fn parse(file: &Path, text: &str) -> Result<GatewayConfig, ConfigError> {
        let assembled = understudy_include::assemble(file, text).map_err(|e| ConfigError {
            file: e.file,
            key: e.key,
            reason: e.reason,
        })?;
        let err = |(key, reason): (String, String)| ConfigError {
            file: if assembled.has_includes() {
                assembled.origin(&key).to_owned()
            } else {
                file.to_owned()
            },
            key,
            reason,
        };
        let raw: RawConfig = if assembled.has_includes() {
            toml::Value::Table(assembled.table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| err(("(syntax)".into(), e.message().to_owned())))?
        } else {
            toml::from_str(text).map_err(|e| {
                // toml names the key in its message ("unknown field `x`", "missing field `y`").
                err((
                    "(syntax)".into(),
                    e.message().to_owned() + &line_of(text, e.span()),
                ))
            })?
        };
        Self::validate(file, raw).map_err(err)
    }

    fn validate(file: &Path, raw: RawConfig) -> Result<GatewayConfig, (String, String)> {
        let g = raw.gateway;
        let listen: SocketAddr = g.listen.parse().map_err(|_| {
            (
                "gateway.listen".to_owned(),
                format!(
                    "{:?} is not an address; use e.g. \"0.0.0.0:9878\"",
                    g.listen
                ),
            )
        })?;
        if !comp_id_ok(&g.comp_id) {
            return Err((
                "gateway.comp_id".into(),
                format!("{:?}: a CompID must be non-empty printable ASCII without spaces or '{CL_ORD_ID_SEP}'", g.comp_id),
            ));
        }
        if g.store_dir.as_os_str().is_empty() {
            return Err(("gateway.store_dir".into(), "must not be empty".into()));
        }
        if g.store_dir.exists() && !g.store_dir.is_dir() {
            return Err((
                "gateway.store_dir".into(),
                format!("{} exists and is not a directory", g.store_dir.display()),
            ));
        }
        let bs = begin_string(
            "gateway.begin_string",
            g.begin_string.as_ref(),
            BeginString::Fix44,
        )?;
        let batch = duration(
            "gateway.sync_batch_delay",
            g.sync_batch_delay.as_ref(),
            Duration::from_millis(2),
        )?;
        let sync = parse_sync(g.sync.as_deref(), batch).map_err(|e| ("gateway.sync".into(), e))?;
        let logon_timeout = duration(
            "gateway.logon_timeout",
            g.logon_timeout.as_ref(),
            Duration::from_secs(10),
        )?;
        let max_latency = match g.max_latency.as_deref() {
            Some("off") => None,
            _ => Some(duration(
                "gateway.max_latency",
                g.max_latency.as_ref(),
                Duration::from_secs(120),
            )?),
        };
        let order_retention = duration(
            "gateway.order_retention",
            g.order_retention.as_ref(),
            Duration::from_secs(24 * 3600),
        )?;
        let store_rotate_bytes = g.store_rotate_bytes.unwrap_or(crate::store::ROTATE_AFTER);
        if !(MIN_ROTATE_BYTES..=MAX_ROTATE_BYTES).contains(&store_rotate_bytes) {
            return Err((
                "gateway.store_rotate_bytes".into(),
                format!(
                    "{store_rotate_bytes}: must be {MIN_ROTATE_BYTES} to {MAX_ROTATE_BYTES} bytes"
                ),
            ));
        }
        if raw.client.is_empty() {
            return Err((
                "client".into(),
                "at least one [[client]] is required".into(),
            ));
        }
        let mut clients = Vec::new();
        let mut client_schedules = Vec::new();
        let mut client_access = Vec::new();
        for (i, c) in raw.client.iter().enumerate() {
            let allowed_peers = AllowedPeers::parse(c.allowed_ips.as_deref().unwrap_or_default())
                .map_err(|e| (format!("client[{i}].allowed_ips"), e))?;
            client_access.push(ClientAccess {
                allow_reset: c.allow_reset.unwrap_or(false),
                allowed_peers,
            });
            client_schedules.push(schedule(
                &format!("client[{i}].schedule"),
                c.schedule.as_ref(),
            )?);
            let key = format!("client[{i}].comp_id");
            if !comp_id_ok(&c.comp_id) {
                return Err((key, format!("{:?}: a CompID must be non-empty printable ASCII without spaces or '{CL_ORD_ID_SEP}'", c.comp_id)));
            }
            if clients.contains(&c.comp_id) {
                return Err((key, format!("{:?} is listed twice", c.comp_id)));
            }
            clients.push(c.comp_id.clone());
        }
        if raw.upstream.is_empty() {
            return Err((
                "upstream".into(),
                "at least one [[upstream]] is required".into(),
            ));
        }
        let base = crate::initiator::base_dir(file);
        let defaults = InitiatorDefaults {
            sender_comp_id: g.comp_id.clone(),
            begin_string: bs,
            logon_timeout,
            base: base.clone(),
        };
        let mut upstreams: Vec<UpstreamConfig> = Vec::new();
        for (i, mut t) in raw.upstream.into_iter().enumerate() {
            let at = format!("upstream[{i}]");
            let mut own = toml::Table::new();
            for key in ["name", "schedule"] {
                if let Some(v) = t.remove(key) {
                    own.insert(key.to_owned(), v);
                }
            }
            let u: RawUpstream = toml::Value::Table(own)
                .try_into()
                .map_err(|e: toml::de::Error| (at.clone(), e.message().to_owned()))?;
            if u.name.is_empty() || upstreams.iter().any(|x| x.name == u.name) {
                return Err((
                    format!("{at}.name"),
                    format!("{:?} is empty or used twice", u.name),
                ));
            }
            upstreams.push(UpstreamConfig {
                initiator: InitiatorConfig::from_toml(t, &at, &defaults)?,
                schedule: schedule(&format!("{at}.schedule"), u.schedule.as_ref())?,
                name: u.name,
            });
        }
        let known = |n: &str| upstreams.iter().any(|u| u.name == n);
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            if !known(&r.upstream) {
                return Err((
                    format!("route[{i}].upstream"),
                    format!("{:?} is not an [[upstream]] name", r.upstream),
                ));
            }
            if let Some(c) = &r.client {
                if !clients.contains(c) {
                    return Err((
                        format!("route[{i}].client"),
                        format!("{c:?} is not a [[client]] comp_id"),
                    ));
                }
            }
            routes.push(Route {
                upstream: r.upstream,
                symbol_prefix: r.symbol_prefix,
                target_sub_id: r.target_sub_id,
                client: r.client,
            });
        }
        if let Some(d) = &g.default_route {
            if !known(d) {
                return Err((
                    "gateway.default_route".into(),
                    format!("{d:?} is not an [[upstream]] name"),
                ));
            }
        }
        if routes.is_empty() && g.default_route.is_none() {
            return Err((
                "gateway.default_route".into(),
                "without [[route]] rules a default_route is required, or no order could be routed"
                    .into(),
            ));
        }
        let admin_http = match &raw.admin {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a.http.parse().map_err(|_| {
                    (
                        "admin.http".to_owned(),
                        format!(
                            "{:?} is not an address; use e.g. \"127.0.0.1:9879\" (IP:port, no URL)",
                            a.http
                        ),
                    )
                })?;
                if addr.port() == 0 {
                    return Err((
                        "admin.http".into(),
                        "a fixed port is required: the agent's health check must find it".into(),
                    ));
                }
                if addr == listen {
                    return Err((
                        "admin.http".into(),
                        format!("{addr} is gateway.listen; use another port"),
                    ));
                }
                Some(addr)
            }
        };
        let taken: Vec<SocketAddr> = std::iter::once(listen).chain(admin_http).collect();
        let replication =
            crate::replica::validate(raw.replication, &taken, sync == SyncPolicy::Group)?;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
        let (cert, key, ca) = (path(&g.tls_cert), path(&g.tls_key), path(&g.tls_client_ca));
        let tls = TlsServer::load_optional(
            Pem::opt("gateway.tls_cert", cert.as_deref()),
            Pem::opt("gateway.tls_key", key.as_deref()),
            Pem::opt("gateway.tls_client_ca", ca.as_deref()),
        )
        .map_err(|e| (e.key, e.reason))?;
        Ok(GatewayConfig {
            file: file.to_owned(),
            listen,
            comp_id: g.comp_id,
            store_dir: g.store_dir,
            begin_string: bs,
            sync,
            default_route: g.default_route,
            logon_timeout,
            max_latency,
            order_retention,
            store_rotate_bytes,
            clients,
            client_schedules,
            client_access,
            upstreams,
            routes,
            admin_http,
            replication,
            tls,
        })
    }

    /// The upstream for an order from `client` for `symbol` with TargetSubID `sub_id`.
    pub fn route(&self, client: &str, symbol: &str, sub_id: Option<&str>) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| {
                r.client.as_deref().is_none_or(|c| c == client)
                    && r.symbol_prefix
                        .as_deref()
                        .is_none_or(|p| symbol.starts_with(p))
                    && r.target_sub_id.as_deref().is_none_or(|t| Some(t) == sub_id)
            })
            .map(|r| r.upstream.as_str())
            .or(self.default_route.as_deref())
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Errors of gateway activation.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// A store could not be opened (fenced: a newer epoch owns it).
    #[error("opening store of {session}: {source}")]
    Store {
        /// Which session (or `orders`).
        session: String,
        /// Why.
        source: StoreError,
    },
    /// A session configuration was refused.
    #[error("session {0}: bad configuration")]
    Session(String),
}

impl GatewayError {
    /// True when a newer epoch owns the store: this replica is stale.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            GatewayError::Store {
                source: StoreError::Fenced { .. },
                ..
            }
        )
    }
}

/// The gateway application (routing state) after activation.
pub struct Gateway {
    cfg: GatewayConfig,
    /// Session index of each client CompID and upstream name (slots are built in this order:
    /// clients, then upstreams).
    client_index: HashMap<String, usize>,
    upstream_index: HashMap<String, usize>,
    orders: OrderMap,
    /// The engine's last tick, Unix seconds: when an order is marked done.
    now: i64,
    /// When the order map was last pruned, Unix seconds.
    pruned_at: i64,
    /// Each session's store directory name (by session index): its marks' key in the order
    /// map.
    store_keys: Vec<String>,
    /// Sessions whose store holds a message the order map's next checkpoint must cover (an
    /// order sent upstream, a terminal report sent to a client), by session index.
    touched: Vec<bool>,
    /// When the order map's checkpoint last covered every session, Unix seconds.
    checkpointed_at: i64,
    /// Counts for logs and tests.
    pub routed: u64,
}

/// What activation builds: the application and the sessions for the engine.
pub struct Activated {
    /// The routing application.
    pub gateway: Gateway,
    /// Sessions, clients first then upstreams.
    pub slots: Vec<SessionSlot<Deferred<FileStore>>>,
}

impl Gateway {
    /// Activation: opens every store under `store_dir` with `epoch` (refused when a newer
    /// epoch owns any of them) and builds the sessions. Blocking file-system work.
    pub fn open(cfg: GatewayConfig, epoch: u64) -> Result<Activated, GatewayError> {
        let open = |sid: &SessionId, name: &str| {
            let mut store =
                FileStore::open(&cfg.store_dir, sid, epoch, cfg.sync).map_err(|source| {
                    GatewayError::Store {
                        session: name.to_owned(),
                        source,
                    }
                })?;
            store.set_rotate_after(cfg.store_rotate_bytes);
            Ok::<_, GatewayError>(store)
        };
        // Every session's store at once, in configuration order: clients, then upstreams.
        let mut sessions: Vec<(SessionId, &str)> = cfg
            .clients
            .iter()
            .map(|c| {
                (
                    SessionId::new(cfg.begin_string, &cfg.comp_id, c),
                    c.as_str(),
                )
            })
            .collect();
        sessions.extend(cfg.upstreams.iter().map(|u| {
            let init = &u.initiator;
            (
                SessionId::new(
                    init.begin_string,
                    &init.sender_comp_id,
                    &init.target_comp_id,
                ),
                u.name.as_str(),
            )
        }));
        let started = std::time::Instant::now();
        let mut stores = open_in_parallel(&sessions, |(sid, name)| open(sid, name))?.into_iter();
        let stores_opened = started.elapsed();
        let mut slots = Vec::new();
        let mut store_keys = Vec::new();
        let mut client_index = HashMap::new();
        let open_access = ClientAccess::default();
        let access = cfg
            .client_access
            .iter()
            .chain(std::iter::repeat(&open_access));
        for ((c, sched), access) in cfg.clients.iter().zip(&cfg.client_schedules).zip(access) {
            let sid = SessionId::new(cfg.begin_string, &cfg.comp_id, c);
            let store = stores.next().ok_or(GatewayError::Session(c.clone()))?;
            store_keys.push(sid.dir_name());
            log_recovery(c, &store);
            let mut sc = SessionConfig::new(cfg.begin_string, &cfg.comp_id, c, Role::Acceptor);
            sc.logon_timeout = cfg.logon_timeout;
            sc.max_latency = cfg.max_latency;
            sc.schedule = sched.clone();
            sc.allow_peer_reset = access.allow_reset;
            let session = Session::new(sc, Deferred::new(store))
                .map_err(|_| GatewayError::Session(c.clone()))?;
            client_index.insert(c.clone(), slots.len());
            let mut slot = SessionSlot::new(c, session);
            slot.allowed_peers = access.allowed_peers.clone();
            slots.push(slot);
        }
        let mut upstream_index = HashMap::new();
        for u in &cfg.upstreams {
            let init = &u.initiator;
            let sid = SessionId::new(
                init.begin_string,
                &init.sender_comp_id,
                &init.target_comp_id,
            );
            let store = stores.next().ok_or(GatewayError::Session(u.name.clone()))?;
            store_keys.push(sid.dir_name());
            log_recovery(&u.name, &store);
            let mut sc = init.session_config();
            sc.max_latency = cfg.max_latency;
            sc.schedule = u.schedule.clone();
            let session = Session::new(sc, Deferred::new(store))
                .map_err(|_| GatewayError::Session(u.name.clone()))?;
            let slot = init.slot(&u.name, session);
            upstream_index.insert(u.name.clone(), slots.len());
            slots.push(slot);
        }
        // The order map: a fenced store of its own, one "sent message" per order.
        let sid = SessionId::new(cfg.begin_string, "ORDERS", &cfg.comp_id);
        let orders = open(&sid, "orders")?;
        let map_err = |source| GatewayError::Store {
            session: "orders".into(),
            source,
        };
        let mut orders = OrderMap::open(orders, cfg.order_retention).map_err(map_err)?;
        let sides: Vec<Side<'_>> = slots
            .iter()
            .zip(&store_keys)
            .enumerate()
            .map(|(i, (slot, key))| Side {
                key,
                name: &slot.name,
                upstream: i >= cfg.clients.len(),
                store: slot.session.store().inner(),
            })
            .collect();
        let now = unix_secs(SystemTime::now());
        let rebuilt = orders.rebuild(&sides, now).map_err(map_err)?;
        tracing::info!(
            sessions = sessions.len(),
            stores_ms = stores_opened.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            orders = orders.len(),
            read = rebuilt.scanned,
            owners_added = rebuilt.owners,
            done_added = rebuilt.done,
            epoch,
            "gateway activated: stores open, order map completed from the session stores"
        );
        let touched = vec![false; slots.len()];
        Ok(Activated {
            gateway: Gateway {
                cfg,
                client_index,
                upstream_index,
                orders,
                now,
                pruned_at: 0,
                store_keys,
                touched,
                checkpointed_at: now,
                routed: 0,
            },
            slots,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// Orders in the order map.
    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    fn business_reject(
        out: &mut Outbox,
        session: usize,
        msg: &AppMessage,
        mt: &str,
        reason: &[u8],
        text: &str,
    ) {
        let mut b = Vec::new();
        put_str(&mut b, tag::REF_SEQ_NUM, &msg.seq_num.to_string());
        put_str(&mut b, tag::REF_MSG_TYPE, mt);
        put(&mut b, tag::BUSINESS_REJECT_REASON, reason);
        put_str(&mut b, tag::TEXT, text);
        out.send(session, b"j", b);
    }

    /// An order the gateway cannot route: rejected with an ExecutionReport (150=8) or an
    /// OrderCancelReject, as the client expects for that request.
    fn refuse(&self, out: &mut Outbox, session: usize, m: &Message<'_>, mt: &[u8], text: &str) {
        let mut b = Vec::new();
        let cl = m.get(tag::CL_ORD_ID).unwrap_or(b"NONE");
        if mt == b"D" {
            put(&mut b, tag::ORDER_ID, b"NONE");
            put(&mut b, tag::CL_ORD_ID, cl);
            put(
                &mut b,
                tag::EXEC_ID,
                format!("{REJECT_EXEC_ID_PREFIX}{}", self.routed).as_bytes(),
            );
            if self.cfg.begin_string == BeginString::Fix42 {
                put(&mut b, tag::EXEC_TRANS_TYPE, b"0");
            }
            put(&mut b, tag::EXEC_TYPE, b"8");
            put(&mut b, tag::ORD_STATUS, b"8");
            for t in [tag::SYMBOL, tag::SIDE] {
                put(&mut b, t, m.get(t).unwrap_or(b"?"));
            }
            put(&mut b, tag::LEAVES_QTY, b"0");
            put(&mut b, tag::CUM_QTY, b"0");
            put(&mut b, tag::AVG_PX, b"0");
            put_str(&mut b, tag::TEXT, text);
            out.send(session, b"8", b);
        } else {
            put(&mut b, tag::ORDER_ID, b"NONE");
            put(&mut b, tag::CL_ORD_ID, cl);
            put(
                &mut b,
                tag::ORIG_CL_ORD_ID,
                m.get(tag::ORIG_CL_ORD_ID).unwrap_or(b"NONE"),
            );
            put(&mut b, tag::ORD_STATUS, b"8");
            put(
                &mut b,
                tag::CXL_REJ_RESPONSE_TO,
                if mt == b"F" { b"1" } else { b"2" },
            );
            put(&mut b, tag::CXL_REJ_REASON, b"1");
            put_str(&mut b, tag::TEXT, text);
            out.send(session, b"9", b);
        }
    }

    fn route_from_client(
        &mut self,
        out: &mut Outbox,
        session: usize,
        client: &str,
        msg: &AppMessage,
        m: &Message<'_>,
    ) {
        let mt = m.msg_type();
        let mt_str = String::from_utf8_lossy(mt).into_owned();
        if !matches!(mt, b"D" | b"F" | b"G") {
            Self::business_reject(out, session, msg, &mt_str, b"3", "unsupported message type");
            return;
        }
        if reject_if_incomplete(out, session, msg, m) {
            return;
        }
        let prefixed = |v: &[u8]| {
            let mut p = Vec::with_capacity(client.len() + 1 + v.len());
            p.extend_from_slice(client.as_bytes());
            p.push(CL_ORD_ID_SEP as u8);
            p.extend_from_slice(v);
            p
        };
        let symbol = m.get_str(tag::SYMBOL).unwrap_or_default();
        let upstream = match mt {
            // Cancels and replaces follow the order to the upstream that has it.
            b"F" | b"G" => {
                let orig = m.get(tag::ORIG_CL_ORD_ID).map(prefixed).unwrap_or_default();
                let orig = String::from_utf8_lossy(&orig).into_owned();
                match self.orders.get(&orig) {
                    Some(o) => Some(o.upstream.clone()),
                    None => self
                        .cfg
                        .route(client, symbol, m.get_str(tag::TARGET_SUB_ID))
                        .map(str::to_owned),
                }
            }
            _ => self
                .cfg
                .route(client, symbol, m.get_str(tag::TARGET_SUB_ID))
                .map(str::to_owned),
        };
        let Some(upstream) = upstream else {
            self.refuse(out, session, m, mt, "no route for this order");
            return;
        };
        let Some(&target) = self.upstream_index.get(&upstream) else {
            self.refuse(out, session, m, mt, "no route for this order");
            return;
        };
        let new_id = m.get(tag::CL_ORD_ID).map(prefixed).unwrap_or_default();
        let new_id = String::from_utf8_lossy(&new_id).into_owned();
        // In memory only: the forwarded order, in the upstream's store before it leaves, is
        // what a successor learns the owner from (see `order_map`).
        self.orders.record(&new_id, client, &upstream);
        self.touched[target] = true;
        let body = forwarded_body(m, msg.frame.len(), prefixed);
        let again = if msg.poss_dup || possibly_resent(m) {
            Again::PossResend
        } else {
            Again::No
        };
        out.forward(target, mt, body, again);
        self.routed += 1;
    }

    fn route_from_upstream(
        &mut self,
        out: &mut Outbox,
        session: usize,
        msg: &AppMessage,
        m: &Message<'_>,
    ) {
        let mt = m.msg_type();
        if !matches!(mt, b"8" | b"9") {
            tracing::warn!(msg_type = %String::from_utf8_lossy(mt), "upstream message not routed");
            return;
        }
        if reject_if_incomplete(out, session, msg, m) {
            return;
        }
        let id = m.get_str(tag::CL_ORD_ID).unwrap_or_default();
        let owner = self
            .orders
            .get(id)
            .map(|o| o.client.clone())
            .or_else(|| id.split_once(CL_ORD_ID_SEP).map(|(c, _)| c.to_owned()));
        let Some(client) = owner else {
            tracing::warn!(cl_ord_id = id, "report for an unknown order dropped");
            return;
        };
        let Some(&target) = self.client_index.get(&client) else {
            tracing::warn!(cl_ord_id = id, %client, "report for an unknown client dropped");
            return;
        };
        let strip = |v: &[u8]| -> Vec<u8> {
            let rest = v
                .strip_prefix(client.as_bytes())
                .and_then(|r| r.strip_prefix(&[CL_ORD_ID_SEP as u8]));
            match rest {
                Some(rest) if !rest.is_empty() => rest.to_vec(),
                _ => v.to_vec(),
            }
        };
        let body = forwarded_body(m, msg.frame.len(), strip);
        // A report the upstream sent again (we asked for it after a failover) reaches the
        // client under a new MsgSeqNum; PossDupFlag makes its engine tell the application.
        let again = if msg.poss_dup || possibly_resent(m) {
            Again::PossDup {
                orig_sending_time: m
                    .get(tags::ORIG_SENDING_TIME)
                    .or_else(|| m.get(tags::SENDING_TIME))
                    .and_then(crate::time::parse_utc_timestamp),
            }
        } else {
            Again::No
        };
        out.forward(target, mt, body, again);
        if mt == b"8" {
            for id in finished(m).into_iter().flatten() {
                if self.orders.done(&String::from_utf8_lossy(id), self.now) {
                    self.touched[target] = true;
                }
            }
        }
    }

    /// Writes the order map's changes with a checkpoint of the sessions they concern (of
    /// every session, at most every [`CHECKPOINT_EVERY`] seconds, when nothing else moves
    /// it), then prunes it at most once a second.
    fn on_tick_orders(&mut self, now: SystemTime, marks: &[Option<StoreMark>]) {
        self.now = unix_secs(now);
        let all = self.now.saturating_sub(self.checkpointed_at) >= CHECKPOINT_EVERY;
        if self.orders.unwritten() > 0 || self.touched.contains(&true) || all {
            let keys = &self.store_keys;
            let covered: Vec<(&str, StoreMark)> = marks
                .iter()
                .zip(keys)
                .zip(&self.touched)
                .filter(|(_, &t)| t || all)
                .filter_map(|((m, k), _)| m.map(|m| (k.as_str(), m)))
                .collect();
            match self.orders.flush(&covered) {
                Ok(wrote) => {
                    self.touched.iter_mut().for_each(|t| *t = false);
                    if all {
                        self.checkpointed_at = self.now;
                    }
                    if wrote {
                        // Nobody waits on these records: ask for the pass that makes them
                        // durable.
                        if let Some(g) = GroupCommit::started() {
                            g.request(g.written());
                        }
                    }
                }
                // The session stores refuse next (fenced, failed disk) and stop the engine;
                // a successor rebuilds what is missing from them.
                Err(e) => tracing::warn!(error = %e, "cannot write the order map"),
            }
        }
        if self.now == self.pruned_at {
            return;
        }
        self.pruned_at = self.now;
        match self.orders.prune(self.now) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, left = self.orders.len(), "order map pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the order map"),
        }
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The body of `m` to forward to the other side: every field but the header and trailer, with
/// ClOrdID and OrigClOrdID rewritten by `id` (prefixed with the client going up, stripped coming
/// back). `cap` sizes the buffer.
fn forwarded_body(m: &Message<'_>, cap: usize, id: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut body = Vec::with_capacity(cap);
    for f in m.fields() {
        if tags::is_header_tag(f.tag) || f.tag == tags::CHECK_SUM {
            continue;
        }
        match f.tag {
            tag::CL_ORD_ID | tag::ORIG_CL_ORD_ID => put(&mut body, f.tag, &id(f.value)),
            _ => put(&mut body, f.tag, f.value),
        }
    }
    body
}

/// The store durability named `name` in a configuration (`None`: the default, group commit);
/// `batch` is `sync_batch_delay`. The error says what is accepted.
pub fn parse_sync(name: Option<&str>, batch: Duration) -> Result<SyncPolicy, String> {
    match name {
        None | Some("group") => Ok(SyncPolicy::Group),
        Some("every-write") => Ok(SyncPolicy::EveryWrite),
        Some("batch") => Ok(SyncPolicy::Batch { max_delay: batch }),
        Some(other) => Err(format!(
            "{other:?}: use \"group\" (default), \"every-write\" or \"batch\""
        )),
    }
}

/// Bounds of `gateway.store_rotate_bytes`: below a page every reset would start a file; above
/// 1 TiB is a typo.
const MIN_ROTATE_BYTES: u64 = 4096;
const MAX_ROTATE_BYTES: u64 = 1 << 40;

/// PossResend(97)=Y: the sender may have sent this before under another MsgSeqNum.
pub fn possibly_resent(m: &Message<'_>) -> bool {
    m.get(tags::POSS_RESEND) == Some(b"Y")
}

/// Most threads opening session stores at once at activation.
///
/// Why: opening a store claims it, and the claim is made durable before anything is read
/// (the fence, the seal of the previous segment, the new segment and its directory: four
/// syncs, about 2 ms on the test VM). One after another, a gateway with 50 client sessions
/// spent ~100 ms of its failover on them before it accepted the first Logon (`bench
/// fix-recovery --clients 50`). The stores are independent (a directory each), and syncs of
/// independent files overlap on the disk.
const OPEN_THREADS: usize = 16;

/// `open` applied to every item on up to [`OPEN_THREADS`] threads, the results in the items'
/// order; the first error in that order. A thread that cannot be started leaves its share to
/// the caller's thread.
fn open_in_parallel<T: Sync, S: Send, E: Send>(
    items: &[T],
    open: impl Fn(&T) -> Result<S, E> + Sync,
) -> Result<Vec<S>, E> {
    if items.len() < 2 {
        return items.iter().map(&open).collect();
    }
    let per = items.len().div_ceil(OPEN_THREADS.min(items.len()));
    let open = &open;
    let shares: Vec<Vec<Result<S, E>>> = std::thread::scope(|scope| {
        let started: Vec<_> = items
            .chunks(per)
            .map(|share| {
                let handle = std::thread::Builder::new()
                    .name("store-open".into())
                    .spawn_scoped(scope, move || share.iter().map(open).collect::<Vec<_>>());
                (share, handle)
            })
            .collect();
        started
            .into_iter()
            .map(|(share, handle)| match handle {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => share.iter().map(open).collect(),
            })
            .collect()
    });
    shares.into_iter().flatten().collect()
}

fn log_recovery(name: &str, store: &FileStore) {
    let r = store.recovery();
    tracing::info!(
        session = name,
        next_sender = store.next_sender_seq(),
        next_target = store.next_target_seq(),
        period_start = ?store.period(),
        segments = ?r.segments,
        bytes_replayed = r.bytes_replayed,
        removed = ?r.removed,
        "session store opened"
    );
}

impl Application for Gateway {
    fn on_message(&mut self, out: &mut Outbox, session: usize, msg: &AppMessage) {
        let Ok(m) = parse(&msg.frame) else {
            return;
        };
        let client = self
            .client_index
            .iter()
            .find(|(_, &i)| i == session)
            .map(|(c, _)| c.clone());
        match client {
            Some(c) => self.route_from_client(out, session, &c, msg, &m),
            None => self.route_from_upstream(out, session, msg, &m),
        }
    }

    fn on_logon(&mut self, _out: &mut Outbox, _session: usize, info: &LogonInfo) {
        tracing::info!(counterparty = %info.id.target_comp_id, "gateway: logon");
    }

    fn on_event(&mut self, session: usize, event: &SessionEvent) {
        if let SessionEvent::NewPeriod { .. } = event {
            let client = self
                .client_index
                .iter()
                .find(|(_, &i)| i == session)
                .map(|(c, _)| c.clone());
            if let Some(c) = client {
                match self.orders.prune_client(&c) {
                    Ok(n) => {
                        tracing::info!(client = %c, pruned = n, "new session period: done orders pruned")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot prune the order map"),
                }
            }
        }
    }

    fn order_map_health(&self) -> Option<crate::admin::OrderMapHealth> {
        Some(self.orders.health())
    }

    fn on_tick(&mut self, now: SystemTime, marks: &[Option<StoreMark>]) {
        self.on_tick_orders(now, marks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_open_on_several_threads_in_order_and_the_first_error_in_order_wins() {
        for n in [
            0,
            1,
            2,
            OPEN_THREADS - 1,
            OPEN_THREADS,
            OPEN_THREADS + 1,
            3 * OPEN_THREADS + 5,
        ] {
            let items: Vec<usize> = (0..n).collect();
            let threads = std::sync::Mutex::new(std::collections::HashSet::new());
            let out = open_in_parallel(&items, |i| {
                if let Ok(mut t) = threads.lock() {
                    t.insert(std::thread::current().id());
                }
                Ok::<_, String>(i * 10)
            })
            .expect("no error");
            assert_eq!(
                out,
                items.iter().map(|i| i * 10).collect::<Vec<_>>(),
                "n = {n}"
            );
            let used = threads.lock().map(|t| t.len()).unwrap_or(0);
            // A share each for up to OPEN_THREADS threads; a lone item on the caller's.
            let shares = if n == 0 {
                0
            } else {
                n.div_ceil(n.div_ceil(OPEN_THREADS.min(n)))
            };
            assert_eq!(used, shares, "threads for n = {n}");
            assert!(n < 2 || used >= 2, "n = {n} on one thread");
        }
        let items: Vec<usize> = (0..40).collect();
        let e = open_in_parallel(&items, |&i| {
            if i == 7 || i == 31 {
                Err(format!("bad {i}"))
            } else {
                Ok(i)
            }
        })
        .expect_err("two items fail");
        assert_eq!(e, "bad 7");
    }

    /// Config of a gateway with `clients` clients `C0`… and one upstream, stores in `dir`.
    fn many_clients(dir: &Path, clients: usize) -> GatewayConfig {
        let mut text = format!(
            "[gateway]\nlisten = \"127.0.0.1:9878\"\ncomp_id = \"GW\"\nstore_dir = \"{}\"\ndefault_route = \"EXCH\"\n\
             [[upstream]]\nname = \"EXCH\"\nconnect = [\"127.0.0.1:9900\"]\ntarget_comp_id = \"EXCH\"\n",
            dir.display()
        );
        for i in 0..clients {
            text.push_str(&format!("[[client]]\ncomp_id = \"C{i}\"\n"));
        }
        GatewayConfig::parse(Path::new("gw.toml"), &text).expect("valid")
    }

    #[test]
    fn activation_opens_every_store_in_configuration_order_and_is_refused_by_one_newer_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = many_clients(dir.path(), 40);
        // A newer epoch (5) claimed one client's store: activation at epoch 2 is refused, naming it.
        let sid = SessionId::new(cfg.begin_string, &cfg.comp_id, "C23");
        drop(FileStore::open(&cfg.store_dir, &sid, 5, cfg.sync).expect("claim at 5"));
        let e = Gateway::open(many_clients(dir.path(), 40), 2)
            .err()
            .expect("refused at epoch 2");
        assert!(e.is_fenced(), "{e}");
        assert!(
            matches!(&e, GatewayError::Store { session, .. } if session == "C23"),
            "{e}"
        );
        // At epoch 6 it opens: the sessions in the configuration's order, clients first.
        let a = Gateway::open(cfg, 6).expect("open at 6");
        let names: Vec<&str> = a.slots.iter().map(|s| s.name.as_str()).collect();
        let mut want: Vec<String> = (0..40).map(|i| format!("C{i}")).collect();
        want.push("EXCH".into());
        assert_eq!(names, want);
        // Every one of them is ours now: a successor at epoch 6 again is no newer.
        for c in ["C0", "C23", "C39"] {
            let sid = SessionId::new(BeginString::Fix44, "GW", c);
            let e = FileStore::open(dir.path(), &sid, 4, SyncPolicy::EveryWrite)
                .expect_err("epoch 4 is older than the activation's 6");
            assert!(
                matches!(e, StoreError::Fenced { newest: 6, .. }),
                "{c}: {e}"
            );
        }
    }

    fn parse(admin: &str) -> Result<GatewayConfig, ConfigError> {
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:9878\"\ncomp_id = \"GW\"\nstore_dir = \"/tmp/understudy-no-such-store\"\ndefault_route = \"EXCH\"\n\
             [[client]]\ncomp_id = \"C1\"\n\
             [[upstream]]\nname = \"EXCH\"\nconnect = [\"127.0.0.1:9900\"]\ntarget_comp_id = \"EXCH\"\n{admin}"
        );
        GatewayConfig::parse(Path::new("gw.toml"), &text)
    }

    #[test]
    fn admin_http_is_optional_and_validated() {
        assert_eq!(parse("").expect("valid").admin_http, None);
        let a = parse("[admin]\nhttp = \"127.0.0.1:9879\"\n").expect("valid");
        assert_eq!(a.admin_http, Some("127.0.0.1:9879".parse().expect("addr")));
        for (bad, why) in [
            ("http = \"http://127.0.0.1:9879/health\"", "not an address"),
            ("http = \"127.0.0.1:0\"", "fixed port"),
            ("http = \"127.0.0.1:9878\"", "gateway.listen"),
        ] {
            let e = parse(&format!("[admin]\n{bad}\n")).expect_err(bad);
            assert_eq!(e.key, "admin.http", "{bad}");
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        }
        let e = parse("[admin]\nhttp = \"127.0.0.1:9879\"\nport = 1\n").expect_err("unknown key");
        assert!(e.reason.contains("port"), "{}", e.reason);
    }

    #[test]
    fn replication_is_off_by_default_and_every_key_is_validated() {
        use std::os::unix::fs::PermissionsExt;
        assert!(parse("").expect("valid").replication.is_none());
        let off = parse("[replication]\nmode = \"off\"\n").expect("valid");
        assert!(off.replication.is_none());
        let d = tempfile::tempdir().expect("tempdir");
        let token = d.path().join("repl.token");
        std::fs::write(&token, "s3cret\n").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let section = |extra: &str| {
            format!(
                "[replication]\nmode = \"sync\"\nlisten = \"127.0.0.1:9880\"\npeers = [\"127.0.0.2:9880\"]\ntoken_file = \"{}\"\n{extra}",
                token.display()
            )
        };
        let r = parse(&section("")).expect("valid").replication.expect("on");
        assert_eq!(r.mode, crate::replica::Mode::Sync);
        assert_eq!(r.token, b"s3cret");
        assert!(r.sync_timeout > r.timeout);
        for (extra, key, why) in [
            (
                "sync_timeout = \"1s\"\ntimeout = \"2s\"\n",
                "replication.sync_timeout",
                "longer",
            ),
            (
                "heartbeat = \"700ms\"\n",
                "replication.heartbeat",
                "a third",
            ),
            (
                "reconnect_interval = \"3s\"\n",
                "replication.reconnect_interval",
                "half of replication.sync_timeout",
            ),
            ("timeout = \"0s\"\n", "replication.timeout", "out of range"),
            ("colour = 1\n", "(syntax)", "colour"),
        ] {
            let e = parse(&section(extra)).expect_err(extra);
            assert_eq!(e.key, key, "{extra}: {}", e.reason);
            assert!(e.reason.contains(why), "{extra}: {}", e.reason);
        }
        let e = parse(&section("").replace("sync\"", "maybe\"")).expect_err("mode");
        assert_eq!(e.key, "replication.mode");
        let e = parse(&section("").replace("127.0.0.2:9880", "127.0.0.1:9880")).expect_err("self");
        assert_eq!(e.key, "replication.peers");
        let e = parse(&section("").replace("127.0.0.1:9880\"\npeers", "127.0.0.1:9878\"\npeers"))
            .expect_err("listen taken");
        assert_eq!(e.key, "replication.listen");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = parse(&section("")).expect_err("readable token");
        assert_eq!(e.key, "replication.token_file");
        assert!(e.reason.contains("chmod 600"), "{}", e.reason);
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // Replication streams group-commit batches: another sync policy is refused.
        let e = GatewayConfig::parse(
            Path::new("gw.toml"),
            &format!(
                "[gateway]\nlisten = \"127.0.0.1:9878\"\ncomp_id = \"GW\"\nstore_dir = \"/tmp/x\"\ndefault_route = \"EXCH\"\nsync = \"every-write\"\n\
                 [[client]]\ncomp_id = \"C1\"\n[[upstream]]\nname = \"EXCH\"\nconnect = [\"127.0.0.1:9900\"]\ntarget_comp_id = \"EXCH\"\n{}",
                section("")
            ),
        )
        .expect_err("every-write");
        assert_eq!(e.key, "gateway.sync");
    }

    #[test]
    fn upstreams_shared_through_include_and_errors_name_the_fragment() {
        let d = tempfile::tempdir().expect("tempdir");
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        let frag = shared.join("upstream.toml");
        let upstream = |connect: &str| {
            format!("[[upstream]]\nname = \"EXCH\"\nconnect = [\"{connect}\"]\ntarget_comp_id = \"EXCH\"\n")
        };
        std::fs::write(&frag, upstream("127.0.0.1:9900")).expect("write");
        let main = d.path().join("gw-a.toml");
        let text = "include = [\"shared/upstream.toml\"]\n\
             [gateway]\nlisten = \"127.0.0.1:9878\"\ncomp_id = \"GW\"\nstore_dir = \"/tmp/understudy-no-such-store\"\ndefault_route = \"EXCH\"\n\
             [[client]]\ncomp_id = \"C1\"\n";
        let c = GatewayConfig::parse(&main, text).expect("valid");
        assert_eq!(c.upstreams.len(), 1);
        std::fs::write(&frag, upstream("nowhere")).expect("write");
        let e = GatewayConfig::parse(&main, text).expect_err("bad upstream");
        assert_eq!(e.file, frag, "{}: {}", e.key, e.reason);
        assert!(e.key.starts_with("upstream"), "{}", e.key);
        let e =
            GatewayConfig::parse(&main, &text.replace("\"GW\"", "\"\"")).expect_err("bad comp_id");
        assert_eq!((e.file, e.key.as_str()), (main, "gateway.comp_id"));
    }
}
