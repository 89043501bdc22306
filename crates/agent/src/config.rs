//! The agent's TOML configuration: parsed, then validated in full at start, in every state — a bad
//! value is found when the agent starts, never at failover (document 002's engine waits until Hot).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use understudy_engine::{ActivationMode, StandbyType};

/// A configuration error: the file, the key and the reason. The agent exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The dotted key (`activation.heartbeat_delay`), or `(file)` / `(syntax)`.
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[node]`.
    pub node: NodeConfig,
    /// `[activation]`.
    pub activation: ActivationConfig,
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[health]`, if present.
    pub health: Option<HealthConfig>,
    /// `[etcd]`: the group lives in etcd (across machines) instead of `activation.lock_file`.
    pub etcd: Option<EtcdConfig>,
    /// [`generation`] of the file's text: a host that hands the agent a configuration tells by
    /// it whether the agent runs the one it must (`PUT /config/wanted/{generation}`).
    pub generation: u64,
}

/// `[etcd]`: the coordinator for groups across machines.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` of the etcd members.
    pub endpoints: Vec<String>,
    /// Key prefix (`/understudy`): the group's keys are under `<prefix>/<group>/`.
    pub prefix: String,
    /// The timing knobs, checked against the safety argument.
    pub timing: understudy_coordinator::Timing,
    /// TTL of etcd's own lease on this node's keys (the backstop).
    pub backstop_ttl: Duration,
    /// TLS files, for https endpoints.
    pub tls: Option<understudy_coordinator::EtcdTls>,
    /// `user` and the content of `password_file`.
    pub auth: Option<(String, Secret)>,
}

/// A password: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl EtcdConfig {
    /// What the coordinator needs, for node `node` of group `group`.
    pub fn settings(&self, node: &str, group: &str) -> understudy_coordinator::EtcdSettings {
        understudy_coordinator::EtcdSettings {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            group: group.to_string(),
            node: node.to_string(),
            timing: self.timing,
            backstop_ttl: self.backstop_ttl,
            tls: self.tls.clone(),
            auth: self.auth.as_ref().map(|(u, p)| (u.clone(), p.0.clone())),
        }
    }
}

/// `[node]`: who this agent is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name, unique in its group.
    pub name: String,
    /// Group name.
    pub group: String,
    /// Admin API listen address.
    pub admin: SocketAddr,
    /// The secret of `node.admin_token_file`: calls that can change who is active need it.
    pub admin_token: Option<AdminToken>,
    /// Reads (status, group, events, metrics) need the token too; `/healthz` stays open.
    pub admin_read_requires_token: bool,
    /// Most admin API connections open at once (further ones are answered 503 and closed).
    pub admin_max_connections: usize,
    /// Most admin API connections open at once from one IP address (same answer beyond).
    pub admin_max_connections_per_ip: usize,
    /// Time a client has to send a request's headers, on a new or a kept-alive connection.
    pub admin_header_timeout: Duration,
    /// `node.admin_tls_cert`/`_key` (and `node.admin_client_ca`): the admin API speaks TLS.
    pub admin_tls: Option<crate::tls::AdminTls>,
    /// Where the agent keeps its event timeline across restarts (`node.journal_file`; default
    /// beside the lock file, `<lock>.journal/<node>.jsonl`, or for etcd groups
    /// `/var/lib/understudy/journal/<group>.<node>.jsonl`).
    pub journal_file: PathBuf,
    /// `node.priority`: when several standbys could take over, the one with the highest priority
    /// does; the others stand aside for it for at most [`understudy_engine::PREFERENCE_DEFER`].
    /// 0 (the default) for every node: no preference.
    pub priority: u32,
}

/// The admin API's shared secret. Its `Debug` does not show it, so it never reaches a log.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether `presented` is the secret, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // Only the length can leak through timing, and the length is not the secret.
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// The secret, for a client that must send it (never for logs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Highest `node.priority`.
pub const MAX_PRIORITY: u32 = 1000;

/// Longest accepted admin token, in bytes.
const MAX_TOKEN_LEN: usize = 4096;

/// `[activation]`: how the node becomes Hot.
#[derive(Debug, Clone)]
pub struct ActivationConfig {
    /// The activation mode.
    pub mode: ActivationMode,
    /// The group's lock file (its directory also holds the epoch and membership records). With
    /// `[etcd]` there is none; this then names where the group lock lives (the leader key), for
    /// /status and logs.
    pub lock_file: PathBuf,
    /// TryHeartbeat: a heartbeat younger than this lets a node go Hot by itself.
    pub heartbeat_delay: Duration,
    /// How often the active writes its heartbeat and every node refreshes its membership record.
    pub heartbeat_interval: Duration,
    /// After a switchover, how long the old active waits for the new one before campaigning again.
    pub yield_timeout: Duration,
    /// `activation.failback`: an active node hands activity back, by a switchover, to a standby
    /// of higher `node.priority` that has been ready this long. None: never.
    pub failback: Option<Duration>,
}

/// `[service]`: what the agent protects.
#[derive(Clone)]
pub struct ServiceConfig {
    /// argv of the service.
    pub command: Vec<String>,
    /// Standby type.
    pub standby: StandbyType,
    /// Signal telling a warm or hot standby service it is now active.
    pub activate_signal: Signal,
    /// Optional command run when the node becomes Hot (after the signal), with the same environment.
    pub activate_hook: Option<Vec<String>>,
    /// Grace period between SIGTERM and SIGKILL when stopping the service.
    pub stop_timeout: Duration,
    /// First delay before rejoining after a service failure.
    pub restart_backoff: Duration,
    /// Longest such delay.
    pub restart_backoff_max: Duration,
    /// Extra environment for the service.
    pub env: BTreeMap<String, String>,
}

/// By hand so the admin token given to the service (`UNDERSTUDY_TOKEN`) never reaches a log.
impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(k, v)| {
                let v = if k == "UNDERSTUDY_TOKEN" {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("ServiceConfig")
            .field("command", &self.command)
            .field("standby", &self.standby)
            .field("activate_signal", &self.activate_signal)
            .field("activate_hook", &self.activate_hook)
            .field("stop_timeout", &self.stop_timeout)
            .field("restart_backoff", &self.restart_backoff)
            .field("restart_backoff_max", &self.restart_backoff_max)
            .field("env", &env)
            .finish()
    }
}

/// `[health]`: an optional health check of the service.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// What to run or fetch.
    pub check: understudy_service::HealthCheck,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Consecutive failures that count as failed.
    pub failures: u32,
    /// Grace after the service starts before failures count.
    pub start_period: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: RawNode,
    activation: RawActivation,
    service: RawService,
    health: Option<RawHealth>,
    etcd: Option<RawEtcd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    renew_interval: Option<String>,
    lease_ttl: Option<String>,
    kill_margin: Option<String>,
    clock_drift_ppm: Option<u32>,
    deadline: Option<String>,
    backstop_ttl: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    group: String,
    admin: String,
    admin_token_file: Option<PathBuf>,
    admin_read_requires_token: Option<bool>,
    admin_max_connections: Option<usize>,
    admin_max_connections_per_ip: Option<usize>,
    admin_header_timeout: Option<String>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
    admin_client_ca: Option<PathBuf>,
    journal_file: Option<PathBuf>,
    priority: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActivation {
    mode: ActivationMode,
    lock_file: Option<PathBuf>,
    heartbeat_delay: Option<String>,
    heartbeat_interval: Option<String>,
    yield_timeout: Option<String>,
    failback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    command: Vec<String>,
    standby: Option<StandbyType>,
    activate_signal: Option<String>,
    activate_hook: Option<Vec<String>>,
    stop_timeout: Option<String>,
    restart_backoff: Option<String>,
    restart_backoff_max: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    command: Option<Vec<String>>,
    http: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    failures: Option<u32>,
    start_period: Option<String>,
}

/// The longest duration any setting takes. Far beyond any sensible timeout, and short enough that
/// the agent's arithmetic on durations (`heartbeat_interval * 2`, an instant plus a timeout)
/// cannot overflow: a value of 2^64 seconds made `check-config` panic.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Defaults, in one place so the README's reference and the code agree.
pub mod defaults {
    /// `node.admin_max_connections`.
    pub const ADMIN_MAX_CONNECTIONS: usize = 64;
    /// `node.admin_max_connections_per_ip`: one address (a script gone wrong, a scanner) can
    /// hold half of the connections, never all of them.
    pub const ADMIN_MAX_CONNECTIONS_PER_IP: usize = 32;
    /// `node.admin_header_timeout`.
    pub const ADMIN_HEADER_TIMEOUT: &str = "5s";
    /// `activation.heartbeat_delay`.
    pub const HEARTBEAT_DELAY: &str = "2s";
    /// `activation.heartbeat_interval`.
    pub const HEARTBEAT_INTERVAL: &str = "200ms";
    /// `activation.yield_timeout`.
    pub const YIELD_TIMEOUT: &str = "10s";
    /// `service.activate_signal`.
    pub const ACTIVATE_SIGNAL: &str = "SIGUSR1";
    /// `service.stop_timeout`.
    pub const STOP_TIMEOUT: &str = "5s";
    /// `service.restart_backoff`.
    pub const RESTART_BACKOFF: &str = "1s";
    /// `service.restart_backoff_max`.
    pub const RESTART_BACKOFF_MAX: &str = "30s";
    /// `health.interval`.
    pub const HEALTH_INTERVAL: &str = "1s";
    /// `health.timeout`.
    pub const HEALTH_TIMEOUT: &str = "500ms";
    /// `health.failures`.
    pub const HEALTH_FAILURES: u32 = 3;
    /// `health.start_period`.
    pub const HEALTH_START_PERIOD: &str = "5s";
    /// `etcd.prefix`.
    pub const ETCD_PREFIX: &str = "/understudy";
    /// `etcd.renew_interval`.
    pub const ETCD_RENEW_INTERVAL: &str = "20ms";
    /// `etcd.lease_ttl`.
    pub const ETCD_LEASE_TTL: &str = "200ms";
    /// `etcd.kill_margin`.
    pub const ETCD_KILL_MARGIN: &str = "40ms";
    /// `etcd.clock_drift_ppm`: 1 %, twenty times what NTP lets a clock be slewed.
    pub const ETCD_CLOCK_DRIFT_PPM: u32 = 10_000;
    /// `etcd.backstop_ttl`.
    pub const ETCD_BACKSTOP_TTL: &str = "2s";
}

struct Ctx<'a> {
    file: &'a Path,
    /// With `include`: which file set each key, so an error names the fragment it is written in.
    assembled: Option<&'a understudy_include::Assembled>,
}

impl Ctx<'_> {
    fn err(&self, key: &str, reason: impl fmt::Display) -> ConfigError {
        let file = match self.assembled {
            Some(a) => a.origin(key),
            None => self.file,
        };
        ConfigError {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    fn duration(&self, key: &str, v: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
        let s = v.unwrap_or(default);
        let d = humantime::parse_duration(s).map_err(|e| {
            self.err(
                key,
                format!("{s:?} is not a duration ({e}); write e.g. \"250ms\", \"1s\" or \"2m\""),
            )
        })?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        if d > MAX_DURATION {
            return Err(self.err(
                key,
                format!(
                    "{s:?} is longer than {}, the longest duration a setting takes",
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
        Ok(d)
    }

    /// Reads the admin token file: it must exist, hold one line of printable ASCII, and be
    /// accessible by its owner only, since whoever reads it can move activity.
    fn admin_token(&self, path: &Path) -> Result<AdminToken, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        const KEY: &str = "node.admin_token_file";
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| self.err(KEY, format!("cannot read {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(self.err(KEY, format!("{shown} is not a regular file")));
        }
        let mode = meta.permissions().mode() & 0o777;
        let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
            (true, true) => Some("group and other"),
            (true, false) => Some("group"),
            (false, true) => Some("other"),
            (false, false) => None,
        };
        if let Some(who) = who {
            return Err(self.err(
                KEY,
                format!("{shown} is accessible by {who} (mode {mode:03o}); the secret must be readable by its owner only: chmod 600 {shown}"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.err(KEY, format!("cannot read {shown}: {e}")))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(self.err(
                KEY,
                format!("{shown} is empty; put a secret in it, e.g. `head -c 32 /dev/urandom | base64 > {shown}`"),
            ));
        }
        if secret.len() > MAX_TOKEN_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.err(
                KEY,
                format!("{shown} must hold one line of printable ASCII without spaces, at most {MAX_TOKEN_LEN} bytes"),
            ));
        }
        Ok(AdminToken(secret.to_owned()))
    }

    fn lock_file(&self, base: &Path, lock: &Path) -> Result<PathBuf, ConfigError> {
        if lock.as_os_str().is_empty() {
            return Err(self.err("activation.lock_file", "is empty"));
        }
        let lock_file = if lock.is_absolute() {
            lock.to_path_buf()
        } else {
            base.join(lock)
        };
        let dir = lock_file.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(self.err(
                "activation.lock_file",
                format!(
                    "directory {} does not exist; create it (it holds the lock, the epoch and the membership records, shared by the group)",
                    dir.display()
                ),
            ));
        }
        if lock_file.is_dir() {
            return Err(self.err(
                "activation.lock_file",
                format!("{} is a directory, not a file", lock_file.display()),
            ));
        }
        Ok(lock_file)
    }

    fn file(&self, key: &str, base: &Path, p: &Path) -> Result<PathBuf, ConfigError> {
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => Ok(full),
            Ok(_) => Err(self.err(key, format!("{} is not a file", full.display()))),
            Err(e) => Err(self.err(key, format!("cannot read {}: {e}", full.display()))),
        }
    }

    fn etcd(&self, base: &Path, e: &RawEtcd) -> Result<EtcdConfig, ConfigError> {
        use understudy_coordinator::{EtcdTls, Timing};
        if e.endpoints.is_empty() {
            return Err(self.err(
                "etcd.endpoints",
                "is empty; list the etcd members, e.g. [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]",
            ));
        }
        let mut https = false;
        for ep in &e.endpoints {
            let url = reqwest::Url::parse(ep).map_err(|err| {
                self.err(
                    "etcd.endpoints",
                    format!("{ep:?} is not a URL ({err}); write http://HOST:PORT"),
                )
            })?;
            let shape_ok = matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.port().is_some()
                && matches!(url.path(), "" | "/")
                && url.query().is_none()
                && url.username().is_empty();
            if !shape_ok {
                return Err(self.err(
                    "etcd.endpoints",
                    format!("{ep:?}: write http://HOST:PORT or https://HOST:PORT, nothing more"),
                ));
            }
            https |= url.scheme() == "https";
        }
        if https && e.endpoints.iter().any(|ep| ep.starts_with("http:")) {
            return Err(self.err(
                "etcd.endpoints",
                "mixes http and https endpoints; one cluster speaks one of them",
            ));
        }
        let prefix = e
            .prefix
            .clone()
            .unwrap_or(defaults::ETCD_PREFIX.to_string());
        let prefix_ok = prefix.starts_with('/')
            && prefix.len() > 1
            && !prefix.ends_with('/')
            && prefix.len() <= 200
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
            && !prefix.contains("//");
        if !prefix_ok {
            return Err(self.err(
                "etcd.prefix",
                format!("{prefix:?}: write a key path such as \"/understudy\" (starts with '/', no trailing '/', letters, digits, '-', '_', '.')"),
            ));
        }
        let renew_interval = self.duration(
            "etcd.renew_interval",
            e.renew_interval.as_deref(),
            defaults::ETCD_RENEW_INTERVAL,
        )?;
        let lease_ttl = self.duration(
            "etcd.lease_ttl",
            e.lease_ttl.as_deref(),
            defaults::ETCD_LEASE_TTL,
        )?;
        let kill_margin = self.duration(
            "etcd.kill_margin",
            e.kill_margin.as_deref(),
            defaults::ETCD_KILL_MARGIN,
        )?;
        if kill_margin < Duration::from_millis(10) {
            return Err(self.err(
                "etcd.kill_margin",
                "must be at least 10ms: less does not cover waking up and killing on a loaded machine",
            ));
        }
        let drift_ppm = e.clock_drift_ppm.unwrap_or(defaults::ETCD_CLOCK_DRIFT_PPM);
        if !(100..=100_000).contains(&drift_ppm) {
            return Err(self.err(
                "etcd.clock_drift_ppm",
                format!("{drift_ppm} is out of range: give 100 (0.01 %) to 100000 (10 %)"),
            ));
        }
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let max = Timing::max_deadline(lease_ttl, kill_margin, drift_ppm).ok_or_else(|| {
            self.err(
                "etcd.lease_ttl",
                format!(
                    "{} leaves no time to act: it must be well above kill_margin ({}) corrected for clock drift",
                    ms(lease_ttl),
                    ms(kill_margin)
                ),
            )
        })?;
        let deadline = match &e.deadline {
            None => max,
            Some(d) => {
                let d = self.duration("etcd.deadline", Some(d), "")?;
                if d > max {
                    return Err(self.err(
                        "etcd.deadline",
                        format!(
                            "{} breaks the safety argument: with lease_ttl {}, kill_margin {} and clock_drift_ppm {drift_ppm} the active must stop acting within {} of sending its last renewal, or a standby could be granted while it still acts",
                            ms(d), ms(lease_ttl), ms(kill_margin), ms(max)
                        ),
                    ));
                }
                d
            }
        };
        if renew_interval * 3 > deadline {
            return Err(self.err(
                "etcd.renew_interval",
                format!(
                    "{} is too long for the deadline {}: at most a third of it, so that one slow or lost renewal does not demote a healthy active",
                    ms(renew_interval),
                    ms(deadline)
                ),
            ));
        }
        let backstop_ttl = self.duration(
            "etcd.backstop_ttl",
            e.backstop_ttl.as_deref(),
            defaults::ETCD_BACKSTOP_TTL,
        )?;
        if backstop_ttl.subsec_nanos() != 0 || backstop_ttl < Duration::from_secs(1) {
            return Err(self.err(
                "etcd.backstop_ttl",
                "must be whole seconds, at least 1s (etcd leases count in seconds)",
            ));
        }
        if backstop_ttl < lease_ttl * 2 {
            return Err(self.err(
                "etcd.backstop_ttl",
                "must be at least twice lease_ttl: the backstop must never beat the agents' own expiry",
            ));
        }
        let ca =
            e.ca.as_ref()
                .map(|p| self.file("etcd.ca", base, p))
                .transpose()?;
        let cert_key = match (&e.cert, &e.key) {
            (Some(c), Some(k)) => Some((
                self.file("etcd.cert", base, c)?,
                self.file("etcd.key", base, k)?,
            )),
            (None, None) => None,
            (Some(_), None) => return Err(self.err("etcd.key", "missing: etcd.cert needs its key")),
            (None, Some(_)) => {
                return Err(self.err("etcd.cert", "missing: etcd.key needs its certificate"))
            }
        };
        let tls = match (https, ca.is_some() || cert_key.is_some()) {
            (false, true) => {
                return Err(self.err(
                    "etcd.endpoints",
                    "TLS files are given but the endpoints are http://; use https://",
                ))
            }
            (true, false) => return Err(self.err(
                "etcd.ca",
                "missing: https endpoints need the CA that signed the etcd servers' certificates",
            )),
            (true, true) => Some(EtcdTls { ca, cert_key }),
            (false, false) => None,
        };
        let auth = match (&e.user, &e.password_file) {
            (Some(u), Some(p)) => {
                if u.is_empty() {
                    return Err(self.err("etcd.user", "is empty"));
                }
                let p = self.file("etcd.password_file", base, p)?;
                let text = std::fs::read_to_string(&p).map_err(|err| {
                    self.err(
                        "etcd.password_file",
                        format!("cannot read {}: {err}", p.display()),
                    )
                })?;
                let pw = text.trim_end_matches(['\n', '\r']).to_string();
                if pw.is_empty() {
                    return Err(self.err("etcd.password_file", format!("{} is empty", p.display())));
                }
                Some((u.clone(), Secret(pw)))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err(
                    "etcd.password_file",
                    "missing: etcd.user needs a password_file",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err("etcd.user", "missing: etcd.password_file needs a user"))
            }
        };
        Ok(EtcdConfig {
            endpoints: e.endpoints.clone(),
            prefix,
            timing: Timing {
                renew_interval,
                lease_ttl,
                kill_margin,
                drift_ppm,
                deadline,
            },
            backstop_ttl,
            tls,
            auth,
        })
    }

    fn command(&self, key: &str, argv: &[String]) -> Result<(), ConfigError> {
        let Some(prog) = argv.first() else {
            return Err(self.err(key, "is empty; give the program and its arguments, e.g. [\"/usr/bin/my-gateway\", \"--config\", \"gw.toml\"]"));
        };
        if prog.is_empty() {
            return Err(self.err(key, "the program name is empty"));
        }
        if find_program(prog).is_none() {
            return Err(self.err(
                key,
                if prog.contains('/') {
                    format!("program {prog:?} does not exist or is not executable")
                } else {
                    format!("program {prog:?} is not found in PATH")
                },
            ));
        }
        Ok(())
    }
}

/// The path a program name resolves to (as execvp would), if any.
pub fn find_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| executable(p))
}

/// Parse a signal name (`SIGUSR1`, `USR1`, `usr1`) or number.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.trim().to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().ok()
}

/// `node.admin_tls_cert`, `node.admin_tls_key` and `node.admin_client_ca`: both or neither of
/// the first two; the CA only with them. Paths relative to the config file.
fn admin_tls(
    ctx: &Ctx<'_>,
    base: &Path,
    n: &RawNode,
) -> Result<Option<crate::tls::AdminTls>, ConfigError> {
    let (cert, key) = match (&n.admin_tls_cert, &n.admin_tls_key) {
        (None, None) => {
            return match n.admin_client_ca {
                Some(_) => Err(ctx.err(
                    "node.admin_client_ca",
                    "needs node.admin_tls_cert and node.admin_tls_key (client certificates are part of TLS)",
                )),
                None => Ok(None),
            }
        }
        (Some(_), None) => {
            return Err(ctx.err("node.admin_tls_key", "missing: node.admin_tls_cert needs its key"))
        }
        (None, Some(_)) => {
            return Err(ctx.err("node.admin_tls_cert", "missing: node.admin_tls_key needs its certificate"))
        }
        (Some(c), Some(k)) => (base.join(c), base.join(k)),
    };
    let ca = n.admin_client_ca.as_ref().map(|c| base.join(c));
    crate::tls::AdminTls::load(&cert, &key, ca.as_deref())
        .map(Some)
        .map_err(|e| ctx.err(&e.key, e.reason))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Config {
    /// Things that are allowed but probably a mistake, for `check-config` and the agent's log.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.node.admin.ip().is_loopback() && self.node.admin_token.is_none() {
            w.push(format!(
                "{}: node.admin {} is not a loopback address and no node.admin_token_file is set: anyone who can reach it can move activity",
                self.file.display(),
                self.node.admin
            ));
        }
        w
    }

    /// A file without includes keeps the line numbers of its own text in syntax errors.
    fn deserialize_text(ctx: &Ctx<'_>, text: &str) -> Result<Raw, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            let at = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            let key = if key == "." || key.is_empty() {
                "(syntax)".to_string()
            } else {
                key
            };
            ctx.err(&key, format!("{msg}{at}"))
        })
    }

    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx {
            file: path,
            assembled: None,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ctx.err("(file)", format!("cannot read the configuration file: {e}")))?;
        Self::parse(path, &text)
    }

    /// Validate configuration text; `path` names it in errors and anchors relative paths (those
    /// of `include` and of every value, wherever the value is written).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let assembled = understudy_include::assemble(path, text).map_err(|e| ConfigError {
            file: e.file,
            key: e.key,
            reason: e.reason,
        })?;
        let ctx = Ctx {
            file: path,
            assembled: assembled.has_includes().then_some(&assembled),
        };
        let raw: Raw = if ctx.assembled.is_some() {
            let merged = toml::Value::Table(assembled.table.clone());
            serde_path_to_error::deserialize(merged).map_err(|e| {
                let key = e.path().to_string();
                let msg = e.into_inner().message().to_string();
                let key = if key == "." || key.is_empty() {
                    "(syntax)".to_string()
                } else {
                    key
                };
                ctx.err(&key, msg)
            })?
        } else {
            Self::deserialize_text(&ctx, text)?
        };

        let n = &raw.node;
        if !valid_name(&n.name) {
            return Err(ctx.err(
                "node.name",
                format!(
                    "{:?} is not a valid node name: use 1-64 letters, digits, '-', '_' or '.'",
                    n.name
                ),
            ));
        }
        if !valid_name(&n.group) {
            return Err(ctx.err(
                "node.group",
                format!(
                    "{:?} is not a valid group name: use 1-64 letters, digits, '-', '_' or '.'",
                    n.group
                ),
            ));
        }
        let admin: SocketAddr = n.admin.parse().map_err(|_| {
            ctx.err(
                "node.admin",
                format!(
                    "{:?} is not an IP:port listen address (e.g. \"127.0.0.1:7701\")",
                    n.admin
                ),
            )
        })?;

        let base = path.parent().unwrap_or(Path::new("."));
        let admin_token = match &n.admin_token_file {
            Some(f) if f.as_os_str().is_empty() => {
                return Err(ctx.err("node.admin_token_file", "is empty"))
            }
            Some(f) => Some(ctx.admin_token(&base.join(f))?),
            None => None,
        };
        let admin_read_requires_token = n.admin_read_requires_token.unwrap_or(false);
        if admin_read_requires_token && admin_token.is_none() {
            return Err(ctx.err(
                "node.admin_read_requires_token",
                "is true but no node.admin_token_file is set",
            ));
        }
        let admin_max_connections = n
            .admin_max_connections
            .unwrap_or(defaults::ADMIN_MAX_CONNECTIONS);
        if !(1..=65_536).contains(&admin_max_connections) {
            return Err(ctx.err("node.admin_max_connections", "must be from 1 to 65536"));
        }
        let admin_max_connections_per_ip = n
            .admin_max_connections_per_ip
            .unwrap_or(defaults::ADMIN_MAX_CONNECTIONS_PER_IP.min(admin_max_connections));
        if !(1..=admin_max_connections).contains(&admin_max_connections_per_ip) {
            return Err(ctx.err(
                "node.admin_max_connections_per_ip",
                format!("must be from 1 to node.admin_max_connections ({admin_max_connections})"),
            ));
        }
        let admin_header_timeout = ctx.duration(
            "node.admin_header_timeout",
            n.admin_header_timeout.as_deref(),
            defaults::ADMIN_HEADER_TIMEOUT,
        )?;

        let admin_tls = admin_tls(&ctx, base, n)?;

        let a = &raw.activation;
        let (lock_file, etcd) = match (&a.lock_file, &raw.etcd) {
            (Some(_), Some(_)) => {
                return Err(ctx.err(
                    "etcd",
                    "give either activation.lock_file (one host or a shared filesystem) or an [etcd] section (across machines), not both",
                ))
            }
            (None, None) => {
                return Err(ctx.err(
                    "activation.lock_file",
                    "missing: give activation.lock_file (one host or a shared filesystem) or an [etcd] section with endpoints (across machines)",
                ))
            }
            (Some(lock), None) => (ctx.lock_file(base, lock)?, None),
            (None, Some(e)) => {
                let etcd = ctx.etcd(base, e)?;
                let shown = PathBuf::from(etcd.settings(&n.name, &n.group).describe());
                (shown, Some(etcd))
            }
        };
        let heartbeat_delay = ctx.duration(
            "activation.heartbeat_delay",
            a.heartbeat_delay.as_deref(),
            defaults::HEARTBEAT_DELAY,
        )?;
        let heartbeat_interval = ctx.duration(
            "activation.heartbeat_interval",
            a.heartbeat_interval.as_deref(),
            defaults::HEARTBEAT_INTERVAL,
        )?;
        if a.mode == ActivationMode::TryHeartbeat && heartbeat_interval * 2 > heartbeat_delay {
            return Err(ctx.err(
                "activation.heartbeat_interval",
                format!(
                    "{} is too long for heartbeat_delay {}: it must be at most half of it, or a live failover would look like an outage",
                    humantime::format_duration(heartbeat_interval),
                    humantime::format_duration(heartbeat_delay)
                ),
            ));
        }
        let yield_timeout = ctx.duration(
            "activation.yield_timeout",
            a.yield_timeout.as_deref(),
            defaults::YIELD_TIMEOUT,
        )?;
        let priority = n.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(ctx.err(
                "node.priority",
                format!("{priority} is out of range: give 0 (no preference) to {MAX_PRIORITY}; the highest ready standby takes over"),
            ));
        }
        let failback = a
            .failback
            .as_deref()
            .map(|f| ctx.duration("activation.failback", Some(f), ""))
            .transpose()?;
        let journal_file = match (&n.journal_file, &etcd) {
            (Some(p), _) if p.as_os_str().is_empty() => {
                return Err(ctx.err("node.journal_file", "is empty"))
            }
            (Some(p), _) => {
                let full = if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                };
                if full.is_dir() {
                    return Err(ctx.err(
                        "node.journal_file",
                        format!("{} is a directory, not a file", full.display()),
                    ));
                }
                full
            }
            (None, None) => {
                let mut dir = lock_file.as_os_str().to_owned();
                dir.push(".journal");
                PathBuf::from(dir).join(format!("{}.jsonl", n.name))
            }
            (None, Some(_)) => PathBuf::from("/var/lib/understudy/journal")
                .join(format!("{}.{}.jsonl", n.group, n.name)),
        };

        let s = &raw.service;
        ctx.command("service.command", &s.command)?;
        if let Some(h) = &s.activate_hook {
            ctx.command("service.activate_hook", h)?;
        }
        let sig_name = s
            .activate_signal
            .as_deref()
            .unwrap_or(defaults::ACTIVATE_SIGNAL);
        let activate_signal = parse_signal(sig_name).ok_or_else(|| {
            ctx.err(
                "service.activate_signal",
                format!("{sig_name:?} is not a signal name; use e.g. \"SIGUSR1\", \"SIGUSR2\" or \"SIGHUP\""),
            )
        })?;
        if matches!(activate_signal, Signal::SIGKILL | Signal::SIGSTOP) {
            return Err(ctx.err(
                "service.activate_signal",
                format!("{sig_name} cannot be handled by a program; use e.g. \"SIGUSR1\""),
            ));
        }
        for k in s.env.keys() {
            if k.is_empty() || k.contains('=') || k.starts_with("UNDERSTUDY_") {
                return Err(ctx.err(
                    &format!("service.env.{k}"),
                    "not a usable variable name (empty, contains '=', or reserved UNDERSTUDY_ prefix)",
                ));
            }
        }
        let restart_backoff = ctx.duration(
            "service.restart_backoff",
            s.restart_backoff.as_deref(),
            defaults::RESTART_BACKOFF,
        )?;
        let restart_backoff_max = ctx.duration(
            "service.restart_backoff_max",
            s.restart_backoff_max.as_deref(),
            defaults::RESTART_BACKOFF_MAX,
        )?;
        if restart_backoff_max < restart_backoff {
            return Err(ctx.err(
                "service.restart_backoff_max",
                "is shorter than service.restart_backoff",
            ));
        }
        let service = ServiceConfig {
            command: s.command.clone(),
            standby: s.standby.unwrap_or(StandbyType::Cold),
            activate_signal,
            activate_hook: s.activate_hook.clone(),
            stop_timeout: ctx.duration(
                "service.stop_timeout",
                s.stop_timeout.as_deref(),
                defaults::STOP_TIMEOUT,
            )?,
            restart_backoff,
            restart_backoff_max,
            env: s.env.clone(),
        };

        let health = match &raw.health {
            None => None,
            Some(h) => {
                let check = match (&h.command, &h.http) {
                    (Some(c), None) => {
                        ctx.command("health.command", c)?;
                        understudy_service::HealthCheck::Command(c.clone())
                    }
                    (None, Some(u)) => {
                        let url = reqwest::Url::parse(u).map_err(|e| {
                            ctx.err("health.http", format!("{u:?} is not a URL ({e}); e.g. \"http://127.0.0.1:8080/health\""))
                        })?;
                        if !matches!(url.scheme(), "http" | "https") {
                            return Err(
                                ctx.err("health.http", format!("{u:?}: only http and https URLs"))
                            );
                        }
                        understudy_service::HealthCheck::Http(u.clone())
                    }
                    (Some(_), Some(_)) => {
                        return Err(ctx.err("health", "give either command or http, not both"))
                    }
                    (None, None) => {
                        return Err(ctx.err("health", "give command = [...] or http = \"http://…\""))
                    }
                };
                let failures = h.failures.unwrap_or(defaults::HEALTH_FAILURES);
                if failures == 0 {
                    return Err(ctx.err("health.failures", "must be at least 1"));
                }
                Some(HealthConfig {
                    check,
                    interval: ctx.duration(
                        "health.interval",
                        h.interval.as_deref(),
                        defaults::HEALTH_INTERVAL,
                    )?,
                    timeout: ctx.duration(
                        "health.timeout",
                        h.timeout.as_deref(),
                        defaults::HEALTH_TIMEOUT,
                    )?,
                    failures,
                    start_period: ctx.duration(
                        "health.start_period",
                        h.start_period.as_deref(),
                        defaults::HEALTH_START_PERIOD,
                    )?,
                })
            }
        };

        let mut service = service;
        if admin_read_requires_token {
            if let Some(t) = &admin_token {
                // A service reads its epoch from GET /status, which now needs the token.
                service
                    .env
                    .insert("UNDERSTUDY_TOKEN".to_owned(), t.expose().to_owned());
            }
        }

        Ok(Config {
            file: path.to_path_buf(),
            node: NodeConfig {
                name: n.name.clone(),
                group: n.group.clone(),
                admin,
                admin_token,
                admin_read_requires_token,
                admin_max_connections,
                admin_max_connections_per_ip,
                admin_header_timeout,
                admin_tls,
                journal_file,
                priority,
            },
            activation: ActivationConfig {
                mode: a.mode,
                lock_file,
                heartbeat_delay,
                heartbeat_interval,
                yield_timeout,
                failback,
            },
            service,
            health,
            etcd,
            generation: generation(text),
        })
    }
}

/// A configuration's generation: a digest of its text (FNV-1a, in 63 bits so that SQLite's
/// signed integers keep it, never 0). Of the file's own text: an included fragment that changes
/// does not change it.
pub fn generation(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h & i64::MAX as u64) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, node: &str, act: &str, svc: &str) -> String {
        let _ = dir;
        format!("[node]\n{node}\n[activation]\n{act}\n[service]\n{svc}\n")
    }

    #[test]
    fn activation_modes_in_any_case_including_document_002s_spelling() {
        let d = tempfile::tempdir().unwrap();
        let lock = format!("lock_file = \"{}/g.lock\"", d.path().display());
        for (word, want) in [
            ("TryLock", ActivationMode::TryLock),
            ("TryHeartbeat", ActivationMode::TryHeartbeat),
            ("Hot", ActivationMode::Hot),
            ("WARM", ActivationMode::Warm),
            ("trylock", ActivationMode::TryLock),
        ] {
            let text = cfg(
                d.path(),
                good_node(),
                &format!("mode = \"{word}\"\n{lock}"),
                "command = [\"sleep\"]",
            );
            let c = Config::parse(&d.path().join("c.toml"), &text)
                .unwrap_or_else(|e| panic!("{word}: {e}"));
            assert_eq!(c.activation.mode, want, "{word}");
        }
    }

    /// `heartbeat_interval = "18446744073709551615s"` made `heartbeat_interval * 2` overflow and
    /// panic (the input is also a seed of the `agent_config` fuzz target); every duration is
    /// now refused above [`MAX_DURATION`].
    #[test]
    fn a_duration_too_long_for_arithmetic_is_refused_not_a_panic() {
        let text = cfg(
            Path::new("/tmp"),
            good_node(),
            "mode = \"TryHeartbeat\"\nlock_file = \"/tmp/g.lock\"\nheartbeat_delay = \"1s\"\n\
             heartbeat_interval = \"18446744073709551615s\"",
            "command = [\"sleep\"]",
        );
        let e = err_of(&text);
        assert_eq!(e.key, "activation.heartbeat_interval", "{e}");
        assert!(e.reason.contains("longest duration"), "{e}");
        for key in ["heartbeat_delay", "yield_timeout", "failback"] {
            let e = err_of(&cfg(
                Path::new("/tmp"),
                good_node(),
                &format!("mode = \"TryLock\"\nlock_file = \"/tmp/g.lock\"\n{key} = \"8days\""),
                "command = [\"sleep\"]",
            ));
            assert_eq!(e.key, format!("activation.{key}"), "{e}");
        }
    }

    fn good_node() -> &'static str {
        "name = \"a\"\ngroup = \"g\"\nadmin = \"127.0.0.1:7701\""
    }

    fn err_of(text: &str) -> ConfigError {
        match Config::parse(Path::new("/tmp/x.toml"), text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_a_minimal_config_with_defaults() {
        let d = tempfile::tempdir().unwrap();
        let act = format!(
            "mode = \"trylock\"\nlock_file = \"{}/g.lock\"",
            d.path().display()
        );
        let c = Config::parse(
            Path::new("/tmp/x.toml"),
            &cfg(d.path(), good_node(), &act, "command = [\"sleep\", \"1\"]"),
        )
        .unwrap();
        assert_eq!(c.service.standby, StandbyType::Cold);
        assert_eq!(c.service.activate_signal, Signal::SIGUSR1);
        assert_eq!(c.activation.heartbeat_delay, Duration::from_secs(2));
        assert_eq!(c.node.priority, 0);
        assert_eq!(c.activation.failback, None);
        let preferred = Config::parse(
            Path::new("/tmp/x.toml"),
            &cfg(
                d.path(),
                &format!("{}\npriority = 10", good_node()),
                &format!("{act}\nfailback = \"30s\""),
                "command = [\"sleep\", \"1\"]",
            ),
        )
        .unwrap();
        assert_eq!(preferred.node.priority, 10);
        assert_eq!(preferred.activation.failback, Some(Duration::from_secs(30)));
    }

    #[test]
    fn names_the_key_of_every_bad_value() {
        let d = tempfile::tempdir().unwrap();
        let lock = format!("lock_file = \"{}/g.lock\"", d.path().display());
        let cases: Vec<(String, &str)> = vec![
            (cfg(d.path(), good_node(), &format!("mode = \"lukewarm\"\n{lock}"), "command = [\"sleep\"]"), "activation.mode"),
            (cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}\nheartbeat_delay = \"soon\""), "command = [\"sleep\"]"), "activation.heartbeat_delay"),
            (cfg(d.path(), "name = \"a\"\ngroup = \"g\"\nadmin = \"nope\"", &format!("mode = \"trylock\"\n{lock}"), "command = [\"sleep\"]"), "node.admin"),
            (cfg(d.path(), &format!("{}\ncolour = \"blue\"", good_node()), &format!("mode = \"trylock\"\n{lock}"), "command = [\"sleep\"]"), "colour"),
            (cfg(d.path(), good_node(), "mode = \"trylock\"\nlock_file = \"/nonexistent-dir/x/g.lock\"", "command = [\"sleep\"]"), "activation.lock_file"),
            (cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}"), "command = []"), "service.command"),
            (cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}"), "command = [\"no-such-program-xyz\"]"), "service.command"),
            (cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}"), "command = [\"sleep\"]\nstandby = \"tepid\""), "service.standby"),
            (cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}"), "command = [\"sleep\"]\nactivate_signal = \"SIGFOO\""), "service.activate_signal"),
            (cfg(d.path(), good_node(), &format!("mode = \"tryheartbeat\"\n{lock}\nheartbeat_delay = \"1s\"\nheartbeat_interval = \"900ms\""), "command = [\"sleep\"]"), "activation.heartbeat_interval"),
            (format!("{}\n[health]\nhttp = \"not a url\"\n", cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}"), "command = [\"sleep\"]")), "health.http"),
            (cfg(d.path(), &format!("{}\npriority = 1001", good_node()), &format!("mode = \"trylock\"\n{lock}"), "command = [\"sleep\"]"), "node.priority"),
            (cfg(d.path(), good_node(), &format!("mode = \"trylock\"\n{lock}\nfailback = \"later\""), "command = [\"sleep\"]"), "activation.failback"),
            ("[node\nname=".to_string(), "(syntax)"),
        ];
        for (text, key) in cases {
            let e = err_of(&text);
            let shown = e.to_string();
            assert!(shown.contains(key), "expected {key} in {shown:?}");
            assert!(shown.contains("/tmp/x.toml"), "file not named in {shown:?}");
        }
    }

    fn etcd_cfg(etcd: &str) -> String {
        format!(
            "[node]\n{}\n[activation]\nmode = \"trylock\"\n[etcd]\n{etcd}\n[service]\ncommand = [\"sleep\"]\n",
            good_node()
        )
    }

    #[test]
    fn etcd_defaults_follow_the_timing_argument() {
        let c = Config::parse(
            Path::new("/tmp/x.toml"),
            &etcd_cfg("endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]"),
        )
        .unwrap();
        let e = c.etcd.expect("etcd section");
        assert_eq!(e.prefix, "/understudy");
        assert_eq!(e.timing.renew_interval, Duration::from_millis(20));
        assert_eq!(e.timing.lease_ttl, Duration::from_millis(200));
        let max = understudy_coordinator::Timing::max_deadline(
            e.timing.lease_ttl,
            e.timing.kill_margin,
            e.timing.drift_ppm,
        )
        .unwrap();
        assert_eq!(e.timing.deadline, max);
        assert!(c
            .activation
            .lock_file
            .display()
            .to_string()
            .contains("/understudy/g/leader"));
    }

    #[test]
    fn etcd_rules_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let ep = "endpoints = [\"http://127.0.0.1:2379\"]";
        let cases: Vec<(String, &str)> = vec![
            (etcd_cfg("endpoints = []"), "etcd.endpoints"),
            (etcd_cfg("endpoints = [\"127.0.0.1:2379\"]"), "etcd.endpoints"),
            (etcd_cfg("endpoints = [\"http://h:2379/x\"]"), "etcd.endpoints"),
            (etcd_cfg("endpoints = [\"http://h\"]"), "etcd.endpoints"),
            (etcd_cfg("endpoints = [\"http://a:1\", \"https://b:2\"]"), "etcd.endpoints"),
            (etcd_cfg(&format!("{ep}\nprefix = \"understudy\"")), "etcd.prefix"),
            (etcd_cfg(&format!("{ep}\nprefix = \"/u/\"")), "etcd.prefix"),
            (etcd_cfg(&format!("{ep}\ndeadline = \"180ms\"")), "etcd.deadline"),
            (etcd_cfg(&format!("{ep}\nrenew_interval = \"60ms\"")), "etcd.renew_interval"),
            (etcd_cfg(&format!("{ep}\nlease_ttl = \"40ms\"")), "etcd.lease_ttl"),
            (etcd_cfg(&format!("{ep}\nkill_margin = \"2ms\"")), "etcd.kill_margin"),
            (etcd_cfg(&format!("{ep}\nclock_drift_ppm = 5")), "etcd.clock_drift_ppm"),
            (etcd_cfg(&format!("{ep}\nbackstop_ttl = \"1500ms\"")), "etcd.backstop_ttl"),
            (etcd_cfg(&format!("{ep}\nlease_ttl = \"1s\"\nbackstop_ttl = \"1s\"")), "etcd.backstop_ttl"),
            (etcd_cfg(&format!("{ep}\nuser = \"u\"")), "etcd.password_file"),
            (etcd_cfg(&format!("{ep}\npassword_file = {:?}", pw.display().to_string())), "etcd.user"),
            (etcd_cfg(&format!("{ep}\nca = \"/nonexistent/ca.pem\"")), "etcd.ca"),
            (etcd_cfg("endpoints = [\"https://127.0.0.1:2379\"]"), "etcd.ca"),
            (etcd_cfg(&format!("{ep}\nlease = \"1s\"")), "etcd.lease"),
            (
                format!(
                    "[node]\n{}\n[activation]\nmode = \"trylock\"\nlock_file = \"{}/g.lock\"\n[etcd]\n{ep}\n[service]\ncommand = [\"sleep\"]\n",
                    good_node(),
                    d.path().display()
                ),
                "etcd",
            ),
            (
                format!(
                    "[node]\n{}\n[activation]\nmode = \"trylock\"\n[service]\ncommand = [\"sleep\"]\n",
                    good_node()
                ),
                "activation.lock_file",
            ),
        ];
        for (text, key) in cases {
            let shown = err_of(&text).to_string();
            assert!(
                shown.contains(&format!(": {key}")),
                "expected {key} in {shown:?}"
            );
        }
        let ok = etcd_cfg(&format!(
            "{ep}\nuser = \"u\"\npassword_file = {:?}\nlease_ttl = \"500ms\"\ndeadline = \"300ms\"",
            pw.display().to_string()
        ));
        let c = Config::parse(Path::new("/tmp/x.toml"), &ok).unwrap();
        let e = c.etcd.unwrap();
        assert_eq!(e.auth.as_ref().map(|(_, p)| p.0.as_str()), Some("secret"));
        assert!(
            !format!("{e:?}").contains("secret"),
            "the password leaks into Debug"
        );
        assert_eq!(e.timing.deadline, Duration::from_millis(300));
    }

    #[test]
    fn admin_token_is_trimmed_compared_whole_and_never_printed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let tf = d.path().join("t");
        std::fs::write(&tf, "s3cret\n").unwrap();
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let node = format!(
            "{}\nadmin_token_file = \"{}\"\nadmin_read_requires_token = true",
            good_node(),
            tf.display()
        );
        let act = format!(
            "mode = \"trylock\"\nlock_file = \"{}/g.lock\"",
            d.path().display()
        );
        let c = Config::parse(
            Path::new("/tmp/x.toml"),
            &cfg(d.path(), &node, &act, "command = [\"sleep\", \"1\"]"),
        )
        .unwrap();
        let t = c.node.admin_token.clone().unwrap();
        assert!(t.matches(b"s3cret"));
        for wrong in [
            &b"s3cre"[..],
            b"s3cret\n",
            b"s3cres",
            b"",
            b"s3cret-and-more",
        ] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert!(
            !format!("{c:?}").contains("s3cret\""),
            "the secret reached Debug output"
        );
        assert_eq!(
            c.service.env.get("UNDERSTUDY_TOKEN").map(String::as_str),
            Some("s3cret")
        );
        let e = err_of(&cfg(
            d.path(),
            &format!("{}\nadmin_read_requires_token = true", good_node()),
            &act,
            "command = [\"sleep\"]",
        ));
        assert_eq!(e.key, "node.admin_read_requires_token");
    }

    #[test]
    fn includes_are_merged_before_validation_and_errors_name_the_fragment() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("shared")).unwrap();
        let frag = d.path().join("shared/group.toml");
        let group = |delay: &str| {
            format!(
                "[activation]\nmode = \"trylock\"\nlock_file = \"{}/g.lock\"\nheartbeat_delay = \"{delay}\"\n",
                d.path().display()
            )
        };
        std::fs::write(&frag, group("soon")).unwrap();
        let main = d.path().join("a.toml");
        let text = format!(
            "include = [\"shared/group.toml\"]\n[node]\n{}\n[service]\ncommand = [\"sleep\"]\n",
            good_node()
        );
        let e = Config::parse(&main, &text).unwrap_err();
        assert_eq!(e.file, frag, "{e}");
        assert_eq!(e.key, "activation.heartbeat_delay");
        std::fs::write(&frag, group("1s")).unwrap();
        // A key the including file gets wrong is still its own.
        let e = Config::parse(&main, &text.replace("[\"sleep\"]", "[]")).unwrap_err();
        assert_eq!(
            (e.file.as_path(), e.key.as_str()),
            (main.as_path(), "service.command")
        );

        let c = Config::parse(&main, &text).unwrap();
        assert_eq!(c.activation.heartbeat_delay, Duration::from_secs(1));
        assert_eq!(c.activation.lock_file, d.path().join("g.lock"));
        let own = format!("{text}[activation]\nheartbeat_delay = \"3s\"\n");
        let c = Config::parse(&main, &own).unwrap();
        assert_eq!(
            c.activation.heartbeat_delay,
            Duration::from_secs(3),
            "the file overrides its fragments"
        );

        std::fs::write(&frag, format!("include = [\"../a.toml\"]\n{}", group("1s"))).unwrap();
        std::fs::write(&main, &text).unwrap();
        let e = Config::load(&main).unwrap_err();
        assert!(e.reason.contains("cycle") && e.key == "include", "{e}");
    }

    #[test]
    fn parses_signal_names() {
        assert_eq!(parse_signal("SIGUSR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse_signal("usr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("10"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
