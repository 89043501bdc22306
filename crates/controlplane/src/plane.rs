//! The control plane's operations: each lifecycle step checked by [`crate::lifecycle::decide`],
//! then carried out against the store and the host. The REST API and the CLI are thin layers over
//! these.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};
use understudy_status::{ApiError, Events, Status, Switchover};

use crate::config_io::{check_files, diff, ConfigDir, ImportReport, ServerConfig};
use crate::host::{agent_key, server_key, tail, HostError, LocalHost};
use crate::hostd::{config_generation, Adopt, ProcReport, Reconciler, Want};
use crate::lifecycle::{decide, Refusal, Situation, Step};
use crate::model::{
    node_name, FailoverSpec, FieldError, NodeSpec, ServerSpec, ServerState, LOCAL_HOST,
};
use crate::store::{Forget, ServerRow, Store, StoreError, UnconfirmedStop};

/// Why an operation did not happen. Every variant says what was left unchanged.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// No such server.
    #[error("no server named {0:?}")]
    NotFound(String),
    /// No host of that name ever reported.
    #[error("no host named {0:?} ever reported")]
    UnknownHost(String),
    /// The name is taken.
    #[error("a server named {0:?} already exists")]
    Exists(String),
    /// The lifecycle forbids the step now.
    #[error("{}; {}", .0.reason, .0.hint)]
    Refused(Refusal),
    /// The request has wrong fields (all of them listed).
    #[error("invalid request: {}", fields_text(.0))]
    Invalid(Vec<FieldError>),
    /// A process could not be started or did not come up.
    #[error("{0}")]
    Start(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host failed.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The operator's word that a host's machine is gone for good (`?force=true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Force {
    /// Given at all.
    pub given: bool,
    /// The host's last report (Unix ms) as the refusal the word answers showed it
    /// ([`Refusal::forcible`]); None when given without one (the CLI's `--force`).
    pub seen: Option<u64>,
}

fn fields_text(f: &[FieldError]) -> String {
    f.iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Wall clock, Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a node's agent may take to answer on its admin address after it is started.
const AGENT_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the preferred node may take to become Hot at start.
const HOT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a host may take to start or stop a process it was asked to.
const HOST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long stop failover retries the active's release while stopped standbys still look alive.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// A host that has not reported for this long is shown disconnected.
pub const HOST_STALE: Duration = Duration::from_secs(5);
/// How long a quick change (delete-server, add or delete a failover) waits for a start, stop or
/// import under way before it is refused.
const OPS_WAIT: Duration = Duration::from_secs(5);
/// How long forget-host waits for an agent placed on the host to answer.
const FORGET_PROBE: Duration = Duration::from_secs(2);
/// `node.priority` of a group's preferred node (the others have 0): among standbys that could
/// take over, it does, and with `failback` activity returns to it.
const PREFERRED_PRIORITY: i64 = 1;

/// A node's answer to `PUT /config/wanted/{generation}`.
struct Told {
    /// It is the group's active.
    hot: bool,
    /// The generation it runs.
    running: u64,
}

/// What the collector last learnt from one node's agent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeLive {
    /// The agent's `GET /status`, when it answered.
    pub status: Option<Status>,
    /// Why it did not, when it did not.
    pub error: Option<String>,
    /// Unix ms of the last answer.
    pub last_ok_unix_ms: Option<u64>,
}

/// How the control plane secures the admin API of the agents it starts, and reaches it
/// (`serve --agent-tls-cert/--agent-tls-key/--agent-ca/--agent-cert/--agent-token-file`).
#[derive(Debug, Clone, Default)]
pub struct AgentAccess {
    /// Written into every node's configuration as `node.admin_tls_cert` (with the key).
    pub tls_cert: Option<PathBuf>,
    /// `node.admin_tls_key`.
    pub tls_key: Option<PathBuf>,
    /// The CA the collector trusts the agents' certificates by: agents are then reached over
    /// `https://`.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (one PEM file), for agents with `node.admin_client_ca`.
    pub cert: Option<PathBuf>,
    /// Written as `node.admin_token_file`; its secret goes with every call as a bearer token.
    pub token_file: Option<PathBuf>,
}

/// The control plane.
pub struct Plane {
    /// The database.
    pub store: std::sync::Arc<Store>,
    /// The data directory.
    pub data: PathBuf,
    /// The host built into `serve`: its reconciler, run in-process.
    local: tokio::sync::Mutex<Reconciler>,
    /// What the collector last saw, by node name.
    pub live: Mutex<BTreeMap<String, NodeLive>>,
    /// Held by every lifecycle step that changes what should run, so two steps on the inventory
    /// never interleave.
    ops: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    /// What agents are configured with and reached by.
    agents: AgentAccess,
    /// The secret of `agents.token_file`.
    agent_token: Option<String>,
    /// Where new failure events are pushed, if anywhere.
    pub notifier: Option<crate::notify::Notifier>,
    /// etcd endpoints for groups whose nodes are on more than one host.
    pub etcd: Vec<String>,
}

impl Plane {
    /// A control plane over `data` (created if needed), starting agents with `exe`.
    pub fn open(data: &Path, exe: PathBuf) -> Result<Plane, PlaneError> {
        for sub in ["", "nodes", "locks", "logs"] {
            let d = data.join(sub);
            std::fs::create_dir_all(&d).map_err(|source| HostError::Io { path: d, source })?;
        }
        let store = std::sync::Arc::new(Store::open(data)?);
        let local = Reconciler::new(
            LocalHost {
                exe,
                data: data.to_path_buf(),
            },
            store.clone(),
        );
        Ok(Plane {
            store,
            data: data.to_path_buf(),
            local: tokio::sync::Mutex::new(local),
            live: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            notifier: None,
            etcd: Vec::new(),
            agents: AgentAccess::default(),
            agent_token: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                .no_proxy()
                .build()
                .unwrap_or_default(),
        })
    }

    /// Configures the agents it starts with `a`'s admin TLS and token, and reaches them with
    /// its CA, client certificate and token. The error names the flag.
    pub fn with_agent_access(mut self, a: AgentAccess) -> Result<Self, String> {
        if a.tls_cert.is_some() != a.tls_key.is_some() {
            return Err("--agent-tls-cert and --agent-tls-key go together".into());
        }
        // Written into configurations that live elsewhere (`<data>/nodes/`, other hosts).
        let absolute = |p: &mut Option<PathBuf>| -> Result<(), String> {
            if let Some(path) = p {
                *path =
                    std::path::absolute(&*path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(())
        };
        let mut a = a;
        for p in [&mut a.tls_cert, &mut a.tls_key, &mut a.token_file] {
            absolute(p)?;
        }
        let tls = understudy_control::ClientTls {
            ca: a.ca.clone(),
            cert: a.cert.clone(),
        };
        if tls.is_set() {
            self.http = tls
                .http_client(Duration::from_millis(800))
                .map_err(|e| format!("--agent-ca/--agent-cert: {e}"))?;
        }
        self.agent_token = match a.token_file.as_deref() {
            Some(f) => understudy_control::read_token(Some(f))
                .map_err(|e| format!("--agent-token-file: {e}"))?,
            None => None,
        };
        self.agents = a;
        Ok(self)
    }

    /// The URL of `path` on the agent at `addr`.
    fn agent_url(&self, addr: &str, path: &str) -> String {
        let scheme = if self.agents.ca.is_some() || self.agents.cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}{path}")
    }

    /// A request to an agent, with the bearer token when one is configured.
    fn agent_request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.agent_token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The hosts that can run processes: the built-in one and every host that ever reported.
    pub fn hosts(&self) -> Vec<String> {
        let mut h = vec![LOCAL_HOST.to_string()];
        let forgotten = self.store.forgotten_hosts().unwrap_or_default();
        if let Ok(all) = self.store.hosts() {
            h.extend(
                all.into_keys()
                    .filter(|n| n != LOCAL_HOST && !forgotten.contains_key(n)),
            );
        }
        h
    }

    /// Each remote host's connection, for the live view: what the dashboard offers for it (a
    /// dark host may be forgotten). Only what changes when a host goes dark or comes back, so
    /// that a host's every report does not re-render the page: its last report's time only
    /// while it is dark.
    fn host_states(&self) -> Vec<Value> {
        let now = unix_ms();
        let forgotten = self.store.forgotten_hosts().unwrap_or_default();
        let Ok(all) = self.store.hosts() else {
            return Vec::new();
        };
        all.into_iter()
            .filter(|(name, _)| name != LOCAL_HOST)
            .map(|(name, (_, seen, _))| {
                let connected = now.saturating_sub(seen) <= HOST_STALE.as_millis() as u64;
                let mut h = json!({ "name": name, "connected": connected });
                if !connected {
                    h["last_seen_unix_ms"] = json!(seen);
                }
                if let Some(at) = forgotten.get(&name) {
                    h["forgotten_unix_ms"] = json!(at);
                }
                h
            })
            .collect()
    }

    /// Hosts with their address, connection and what runs there, for the API.
    pub fn hosts_json(&self) -> Result<Value, PlaneError> {
        let now = unix_ms();
        let all = self.store.hosts()?;
        let forgotten = self.store.forgotten_hosts()?;
        let mut out = vec![
            json!({ "name": LOCAL_HOST, "advertise": "127.0.0.1", "connected": true, "builtin": true,
            "processes": all.get(LOCAL_HOST).map(|h| h.2.clone()).unwrap_or(json!([])) }),
        ];
        for (name, (adv, seen, rep)) in all {
            if name == LOCAL_HOST {
                continue;
            }
            let mut h = json!({
                "name": name, "advertise": adv, "last_seen_unix_ms": seen, "builtin": false,
                "connected": now.saturating_sub(seen) <= HOST_STALE.as_millis() as u64,
                "processes": rep,
            });
            if let Some(at) = forgotten.get(&name) {
                h["forgotten_unix_ms"] = json!(at);
            }
            out.push(h);
        }
        Ok(json!({ "hosts": out }))
    }

    /// What `host` should run (for `understudy host`).
    pub fn desired_json(&self, host: &str) -> Result<Value, PlaneError> {
        Ok(json!({ "desired": self.store.desired_for(host)? }))
    }

    /// A remote host's report.
    pub fn host_report(
        &self,
        host: &str,
        advertise: &str,
        processes: &Value,
    ) -> Result<(), PlaneError> {
        if self
            .store
            .put_host_report(host, advertise, processes, unix_ms())?
        {
            warn!(%host, "a host declared gone for good reports again: it counts as a host again, and what it reports as running there");
        }
        Ok(())
    }

    /// Declares `host` gone for good, its machine dead with every process it ran: its last
    /// report is dropped (an agent or server it listed no longer holds anything up), and nothing
    /// waits for it any more (a stop there counts as done, it is never dark). Refused for the
    /// built-in host, while the host still reports, and while an agent placed there still
    /// answers on its admin address: a silent `understudy host` alone proves nothing, for the
    /// processes it started outlive it (review 32, M3). Returns the keys it last reported.
    ///
    /// A plain server its last report lists as running is refused unless `force`: it has no
    /// admin port to ask, and a released service acts unfenced (review 33, M1).
    pub async fn forget_host(&self, host: &str, force: Force) -> Result<Vec<String>, PlaneError> {
        let _ops = self.ops.lock().await;
        if host == LOCAL_HOST {
            return Err(PlaneError::Refused(Refusal {
                reason: "the built-in host runs inside this control plane".into(),
                hint: "only a remote host (`understudy host`) can be forgotten".into(),
                forcible: None,
            }));
        }
        let now = unix_ms();
        let silent_since = now.saturating_sub(HOST_STALE.as_millis() as u64);
        // Checked again in the store's transaction, against a report landing meanwhile.
        let Some((_, seen, last)) = self.store.hosts()?.remove(host) else {
            return Err(PlaneError::UnknownHost(host.to_string()));
        };
        if seen > silent_since {
            return Err(reported(host, now, seen));
        }
        self.stale_word(&[host.to_string()], force)?;
        let placed: Vec<NodeSpec> = self
            .store
            .servers()?
            .into_iter()
            .filter_map(|r| r.failover)
            .flat_map(|f| f.nodes)
            .filter(|n| n.host == host)
            .collect();
        let probes = placed.iter().map(|n| async move {
            let admin = self.node_admin(n);
            let st = tokio::time::timeout(FORGET_PROBE, self.admin_status(&admin)).await;
            match st {
                Ok(Ok(st)) if st.node.name == n.name => Some(format!("{} at {admin}", n.name)),
                _ => None,
            }
        });
        let answering: Vec<String> = futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !answering.is_empty() {
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "host {host} is silent, but the agent of {} still answers: its machine is up, and what runs there may act",
                    answering.join(", ")
                ),
                hint: "start `understudy host` there again; forget only a host whose machine is gone for good".into(),
                forcible: None,
            }));
        }
        // After the probe: a refusal the operator's word overrides comes only once nothing
        // else would refuse (review 37, L1).
        if !force.given {
            let mut servers: Vec<String> = serde_json::from_value::<Vec<ProcReport>>(last.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.key.starts_with("server:"))
                .map(|r| match r.pid {
                    Some(pid) => format!("{} (pid {pid}, in its last report)", r.key),
                    None => format!("{} (in its last report)", r.key),
                })
                .collect();
            // Never listed in its last report, yet maybe running: a start it fetched and never
            // answered, or a stop it never confirmed (review 42, M1).
            for r in self.store.servers()? {
                let listed = servers
                    .iter()
                    .any(|s| s.starts_with(&format!("{} ", server_key(&r.spec.name))));
                if !listed && self.unconfirmed_hosts(&r).iter().any(|h| h == host) {
                    servers.push(format!(
                        "server:{} (a start or stop it never confirmed)",
                        r.spec.name
                    ));
                }
            }
            if !servers.is_empty() {
                return Err(PlaneError::Refused(Refusal {
                    reason: format!(
                        "host {host} may still run {} (running, or a released service it was to adopt): nothing can be asked whether it still runs, and a plain server acts unfenced",
                        servers.join(", ")
                    ),
                    hint: "only if the machine is certainly dead (powered off, not cut off): forget-host --force".into(),
                    forcible: Some(self.hosts_seen(&[host.to_string()])),
                }));
            }
        }
        let last = match self.store.forget_host(host, silent_since, now)? {
            Ok(last) => last,
            Err(Forget::Unknown) => return Err(PlaneError::UnknownHost(host.to_string())),
            Err(Forget::Reported(at)) => return Err(reported(host, unix_ms(), at)),
        };
        let keys: Vec<String> = serde_json::from_value::<Vec<ProcReport>>(last)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.key)
            .collect();
        warn!(%host, processes = ?keys, "host forgotten: declared gone for good by the operator");
        Ok(keys)
    }

    /// When `host` was declared gone for good, if it was (and has not reported since).
    fn forgotten(&self, host: &str) -> Option<u64> {
        self.store.forgotten_hosts().ok()?.get(host).copied()
    }

    /// Refused when `host` is forgotten: nothing can be started there.
    fn not_forgotten(&self, host: &str, what: &str) -> Result<(), PlaneError> {
        if self.forgotten(host).is_none() {
            return Ok(());
        }
        Err(PlaneError::Refused(Refusal {
            reason: format!("{what} is placed on host {host}, which was declared gone for good"),
            hint: "place it on another host (add-failover, or edit and import the configuration), or start `understudy host` there again if the machine is back".into(),
            forcible: None,
        }))
    }

    /// The address agents on `host` are reached at.
    fn host_addr(&self, host: &str) -> Option<String> {
        if host == LOCAL_HOST {
            return Some("127.0.0.1".into());
        }
        self.store.hosts().ok()?.get(host).map(|h| h.0.clone())
    }

    fn node_admin(&self, n: &NodeSpec) -> String {
        format!(
            "{}:{}",
            self.host_addr(&n.host)
                .unwrap_or_else(|| "127.0.0.1".into()),
            n.admin_port
        )
    }

    /// Let the built-in host catch up with what should run (remote hosts do by themselves).
    pub async fn sync_local(&self) {
        let desired = self.store.desired_for(LOCAL_HOST).unwrap_or_default();
        let reports = self.local.lock().await.step(&desired).await;
        let _ = self.store.put_host_report(
            LOCAL_HOST,
            "127.0.0.1",
            &serde_json::to_value(&reports).unwrap_or(json!([])),
            unix_ms(),
        );
    }

    /// The last report of `key`, from whichever host reported it.
    fn report(&self, key: &str) -> Option<(String, ProcReport)> {
        self.reports(key).into_iter().next()
    }

    /// `key`'s entry in each host's last report that lists it, by host name.
    fn reports(&self, key: &str) -> Vec<(String, ProcReport)> {
        let Ok(hosts) = self.store.hosts() else {
            return Vec::new();
        };
        hosts
            .into_iter()
            .filter_map(|(name, (_, _, rep))| {
                let list: Vec<ProcReport> = serde_json::from_value(rep).ok()?;
                list.into_iter().find(|r| r.key == key).map(|r| (name, r))
            })
            .collect()
    }

    /// The hosts of `row`'s last stop, forced on the operator's word (or of a start that its
    /// host never answered), that have neither confirmed it since nor been forgotten. Only
    /// while the server is Stopped: a start since then found none of them open, and the host
    /// of a node that runs now lists its agent on purpose (review 43, M1).
    fn unconfirmed_hosts(&self, row: &ServerRow) -> Vec<String> {
        let Some(m) = &row.unconfirmed_stop else {
            return Vec::new();
        };
        if row.state != ServerState::Stopped {
            return Vec::new();
        }
        // The keys the mark was made for: a node dropped by an edit since is still waited for
        // (review 43, M2).
        let keys: Vec<String> = match &m.keys {
            Some(k) => k.split(',').map(str::to_string).collect(),
            // Made before the keys were kept: the server's, and its nodes' agents (review 44, L1).
            None => std::iter::once(server_key(&row.spec.name))
                .chain(
                    row.failover
                        .iter()
                        .flat_map(|f| f.nodes.iter().map(|n| agent_key(&n.name))),
                )
                .collect(),
        };
        m.hosts
            .split(',')
            .filter(|h| {
                self.forgotten(h).is_none() && !self.stop_confirmed_since(h, &keys, m.unix_ms)
            })
            .map(str::to_string)
            .collect()
    }

    /// Refused while [`Self::unconfirmed_hosts`] has any: the server may still run there, and
    /// a second copy, or a group's active, would trade beside it (review 39, M2; review 40,
    /// #3 and #5).
    fn no_unconfirmed_stop(&self, row: &ServerRow) -> Result<(), PlaneError> {
        let hosts = self.unconfirmed_hosts(row);
        if hosts.is_empty() {
            return Ok(());
        }
        let name = &row.spec.name;
        let list = hosts.join(", ");
        Err(PlaneError::Refused(Refusal {
            reason: format!(
                "host {list} never confirmed that server {name} stopped (a stop forced on the operator's word, or a start it never answered): it may still run there"
            ),
            hint: format!("bring host {list} back (it stops the server and confirms), or, if its machine is gone for good, `ctl forget-host HOST --force`"),
            forcible: None,
        }))
    }

    /// Whether `host` reported after `at` (Unix ms) without any of `keys`: a stop of them
    /// confirmed.
    fn stop_confirmed_since(&self, host: &str, keys: &[String], at: u64) -> bool {
        self.host_seen(host) > at && keys.iter().all(|k| self.report_on(host, k).is_none())
    }

    /// When `host` last reported (Unix ms; 0: never).
    fn host_seen(&self, host: &str) -> u64 {
        self.store
            .hosts()
            .ok()
            .and_then(|h| h.get(host).map(|h| h.1))
            .unwrap_or(0)
    }

    /// The newest last report of those of `hosts` that are dark now (Unix ms; 0: none): what
    /// a forcible refusal quotes, and what the force must find unchanged. Only the dark ones:
    /// a connected host's report moves every quarter second and is not what the operator
    /// vouches for; one that comes back leaves the set, and one that goes dark joins it, both
    /// making the word stale.
    fn hosts_seen(&self, hosts: &[String]) -> u64 {
        hosts
            .iter()
            .filter(|h| self.dark_host(h).is_some())
            .map(|h| self.host_seen(h))
            .max()
            .unwrap_or(0)
    }

    /// Refuses a forced call whose word was given on a refusal that quoted another last report
    /// of `hosts` than the one stored now: one came back since (and may have gone dark again),
    /// so what the operator vouched for is not what holds (review 37, M2). Only the exact value
    /// passes: one from the future is no quote of this plane's.
    fn stale_word(&self, hosts: &[String], force: Force) -> Result<(), PlaneError> {
        let now_seen = self.hosts_seen(hosts);
        match force.seen {
            Some(seen) if force.given && now_seen != seen => Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "host {} reported {:.1} s ago, not as the refusal this force answers showed it: what was vouched for no longer holds, nothing was forced",
                    hosts.join(", "),
                    unix_ms().saturating_sub(now_seen) as f64 / 1000.0
                ),
                hint: "look at the host again, then try again".into(),
                forcible: None,
            })),
            _ => Ok(()),
        }
    }

    /// `key`'s entry in the last report of `host` alone: another host's stale report of the
    /// same key (a dark host that ran it before stop failover adopted it elsewhere) says
    /// nothing of this one (review 38, L-d).
    fn report_on(&self, host: &str, key: &str) -> Option<ProcReport> {
        let rep = self.store.hosts().ok()?.remove(host)?.2;
        let list: Vec<ProcReport> = serde_json::from_value(rep).ok()?;
        list.into_iter().find(|r| r.key == key)
    }

    /// The hosts a stop of `key` must be confirmed by: every host whose last report lists it,
    /// running or not (a released service waiting for its agent to exit is listed not
    /// running, on the active's host rather than the placed one: review 39, H1); else the host
    /// told to run it; else `placed`.
    fn stop_hosts(&self, key: &str, placed: &str) -> Vec<String> {
        let mut hosts: Vec<String> = self.reports(key).into_iter().map(|(h, _)| h).collect();
        let told = self.store.desired(key).ok().flatten().map(|(h, _)| h);
        // The host told to run it too: a dark host's stale listing must not hide the one that
        // received a released service (review 40, #2).
        if let Some(t) = told {
            if !hosts.contains(&t) {
                hosts.push(t);
            }
        }
        if hosts.is_empty() {
            hosts.push(placed.to_string());
        }
        hosts
    }

    /// The host still to adopt `key`'s service, released by stop failover, while it has not
    /// (its agent has not exited yet): a stop now would drop the adoption and leave that
    /// service running unwatched (review 40, #1).
    fn adoption_pending(&self, key: &str) -> Option<(String, String)> {
        let (host, want) = self.store.desired(key).ok().flatten()?;
        // Gone with its machine, on the operator's word: nothing is adopted there any more
        // (review 41, M-A: the stop was refused for good).
        if self.forgotten(&host).is_some() {
            return None;
        }
        let Want::Server {
            adopt: Some(adopt), ..
        } = serde_json::from_value::<Want>(want).ok()?
        else {
            return None;
        };
        let adopted = self.report_on(&host, key).is_some_and(|r| r.running);
        (!adopted).then_some((host, adopt.from))
    }

    /// Wait until `key`'s report on `host` says it is gone, in a report the host made after
    /// `since` (Unix ms, before the want was deleted): a report from before says nothing of
    /// the delete, and a host that does not report at all confirms nothing (review 31).
    async fn wait_gone(&self, host: &str, key: &str, since: u64) -> Result<(), String> {
        if self.forgotten(host).is_some() {
            // Gone with its machine, on the operator's word.
            return Ok(());
        }
        self.wait_report(host, key, |r| r.is_none() && self.host_seen(host) > since)
            .await
    }

    /// Wait until `ok` holds for `key`'s report (None: not reported) on `host`.
    async fn wait_report(
        &self,
        host: &str,
        key: &str,
        ok: impl Fn(Option<&ProcReport>) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + HOST_TIMEOUT;
        loop {
            if host == LOCAL_HOST {
                self.sync_local().await;
            }
            let r = self.report_on(host, key);
            if ok(r.as_ref()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(r
                    .and_then(|r| r.problem)
                    .unwrap_or_else(|| format!("host {host} did not act within {} s (is `understudy host --name {host}` running?)", HOST_TIMEOUT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn row(&self, name: &str) -> Result<ServerRow, PlaneError> {
        self.store
            .server(name)?
            .ok_or_else(|| PlaneError::NotFound(name.to_string()))
    }

    fn check(&self, row: &ServerRow, step: Step) -> Result<ServerState, PlaneError> {
        decide(
            Situation {
                state: row.state,
                has_failover: row.failover.is_some(),
            },
            step,
        )
        .map_err(|mut r| {
            r.hint = r.hint.replace("{name}", &row.spec.name);
            PlaneError::Refused(r)
        })
    }

    fn unknown_hosts(&self, hosts: &[(String, String)]) -> Vec<FieldError> {
        let known = self.hosts();
        let forgotten = self.store.forgotten_hosts().unwrap_or_default();
        hosts
            .iter()
            .filter(|(_, h)| !known.contains(h))
            .map(|(field, h)| FieldError {
                field: field.clone(),
                reason: if forgotten.contains_key(h) {
                    format!(
                        "host {h:?} was declared gone for good (forget-host): place it on another host; known hosts: {}",
                        known.join(", ")
                    )
                } else {
                    format!(
                        "host {h:?} is not connected to this control plane; known hosts: {}",
                        known.join(", ")
                    )
                },
            })
            .collect()
    }

    /// Add a server to the inventory (stopped).
    pub fn add_server(&self, spec: ServerSpec) -> Result<ServerRow, PlaneError> {
        let mut errs = spec.validate();
        errs.extend(self.unknown_hosts(&[("host".to_string(), spec.host.clone())]));
        if !errs.is_empty() {
            return Err(PlaneError::Invalid(errs));
        }
        if !self.store.add_server(&spec, unix_ms())? {
            return Err(PlaneError::Exists(spec.name));
        }
        info!(server = %spec.name, "server added");
        self.row(&spec.name)
    }

    /// Start a server as a plain, unprotected server.
    pub async fn start_server(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops.lock().await;
        let row = self.row(name)?;
        let next = self.check(&row, Step::StartServer)?;
        self.not_forgotten(&row.spec.host, &format!("server {name}"))?;
        // The agent a host still lists first: it names the agent and its pid, where the mark
        // (which may be there too) names only the host.
        self.no_lingering_agent(&row).await?;
        self.no_unconfirmed_stop(&row)?;
        // A silent host may still fetch the want and start the server without a word: refused
        // up front, rather than after the wait with the server's fate unknown.
        if let Some(why) = self.dark_host(&row.spec.host) {
            return Err(PlaneError::Refused(Refusal {
                reason: format!("server {name} cannot be started: {why}"),
                hint: format!(
                    "bring host {} back (is `understudy host --name {}` running?), then start the server again; to run it elsewhere, delete it and add it on another host",
                    row.spec.host, row.spec.host
                ),
                forcible: None,
            }));
        }
        let key = server_key(name);
        let generation = unix_ms();
        let want = Want::Server {
            server: name.to_string(),
            service: row.spec.service.clone(),
            generation,
            adopt: None,
        };
        self.store.put_desired(
            &key,
            &row.spec.host,
            &serde_json::to_value(&want).unwrap_or_default(),
        )?;
        if let Err(e) = self
            .wait_report(&row.spec.host, &key, |r| {
                r.is_some_and(|r| r.generation == generation && (r.running || r.problem.is_some()))
            })
            .await
            .and_then(|_| match self.report_on(&row.spec.host, &key) {
                Some(r) if r.running => Ok(()),
                Some(r) => Err(r.problem.unwrap_or_default()),
                None => Err("not reported".into()),
            })
        {
            // Only the host's own answer for this start says nothing runs: a host that went
            // silent may have started it and not told, and a host that comes back stops it
            // when it finds the want gone. Until it says so, the server is marked as a stop
            // unconfirmed, so that nothing starts it elsewhere, or a group beside it (review
            // 39, M3).
            let failed_here = self
                .report_on(&row.spec.host, &key)
                .is_some_and(|r| r.generation == generation && !r.running && r.problem.is_some());
            if failed_here {
                self.store.delete_desired(&key)?;
                return Err(PlaneError::Start(format!(
                    "server {name} did not start: {e}"
                )));
            }
            self.store.withdraw_and_mark(&key, name, &row.spec.host)?;
            warn!(server = %name, host = %row.spec.host, "start failed, its host never answered: the server may run there, marked unconfirmed until it reports");
            return Err(PlaneError::Start(format!(
                "server {name} did not start: {e}; host {} never answered, so it may have started it: it is told to stop it, and until it confirms, start-server, start failover, delete-server and an import's prune are refused",
                row.spec.host
            )));
        }
        self.store.set_state_and_stop_mark(name, next, None)?;
        info!(server = %name, "plain server started");
        self.row(name)
    }

    /// The operations lock, for a quick change that must not run inside a start, stop or
    /// import, or a refusal once it waited [`OPS_WAIT`]: the collector holds the lock a moment
    /// every pass, while a start's waits held it long enough for a queued change to outlast the
    /// CLI's request (review 43, L7; review 44, M1).
    async fn ops_soon(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, PlaneError> {
        tokio::time::timeout(OPS_WAIT, self.ops.lock())
            .await
            .map_err(|_| {
                PlaneError::Refused(Refusal {
                    reason: format!(
                        "a start, stop, import or forget-host is under way (waited {} s for it)",
                        OPS_WAIT.as_secs()
                    ),
                    hint: "try again once it is done".into(),
                    forcible: None,
                })
            })
    }

    /// Refused while a host still reports an agent of `row`'s failover group: its stop was never
    /// confirmed (a failed start of failover, cleaned up while that host was dark), so it may
    /// still run, even be active: a plain server, or a new start of failover whose first node
    /// clears the stop of failover, next to it would make two actives (review 29, M1; review
    /// 31).
    async fn no_lingering_agent(&self, row: &ServerRow) -> Result<(), PlaneError> {
        let Some(f) = &row.failover else {
            return Ok(());
        };
        if f.nodes.iter().any(|n| n.host == LOCAL_HOST) {
            self.sync_local().await;
        }
        let running: Vec<String> = f
            .nodes
            .iter()
            .filter_map(|n| {
                let (host, r) = self.report(&agent_key(&n.name))?;
                Some(format!(
                    "{} (host {host} last reported its agent{})",
                    n.name,
                    r.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
                ))
            })
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        Err(PlaneError::Refused(Refusal {
            reason: format!(
                "an agent of this server's failover group may still run: {}; the server or a new group next to it could make two actives",
                running.join(", ")
            ),
            hint: "bring that host back so that it stops the agent (or stop it there), then try again; if its machine is gone for good: `ctl forget-host HOST` (it says when that needs --force)".into(),
            forcible: None,
        }))
    }

    /// Stop a plain server. Only a stop its host confirmed makes the server Stopped: a
    /// released service (stop failover) acts unfenced, and start failover, allowed from
    /// Stopped, lets the group take over next to whatever still runs (review 30, H1). `force`
    /// says the host is gone for good (its machine dead): the server is Stopped on that word.
    pub async fn stop_server(&self, name: &str, force: Force) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops.lock().await;
        let row = self.row(name)?;
        let next = self.check(&row, Step::StopServer)?;
        let key = server_key(name);
        let hosts = self.stop_hosts(&key, &row.spec.host);
        self.stale_word(&hosts, force)?;
        // Not forcible, dark host or not: a stop drops the adoption, and a host that was only
        // cut off and comes back never lists the service it did not adopt, so nothing would
        // ever show it running (review 41, M-B). Forgetting the host is the explicit way.
        if let Some((host, agent)) = self.adoption_pending(&key) {
            let hint = match self.dark_host(&host) {
                None => format!("wait until {agent} exits and host {host} adopts the service (the server then shows running), then stop it again; if {agent} does not exit, stop it on that host"),
                Some(_) => format!("bring host {host} back so that it adopts the service; if its machine is gone for good: `ctl forget-host {host} --force`, then stop the server again"),
            };
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "server {name}'s service, released by stop failover, is not adopted yet by host {host}: {agent} has not exited; a stop now would leave the service running unwatched"
                ),
                hint,
                forcible: None,
            }));
        }
        if !force.given {
            let dark: Vec<String> = hosts.iter().filter_map(|h| self.dark_host(h)).collect();
            if !dark.is_empty() {
                let why = dark.join("; ");
                return Err(PlaneError::Refused(Refusal {
                    reason: format!("server {name} cannot be told to stop: {why}; it stays running"),
                    hint: "bring the host back and stop the server again; only if its machine is gone for good: stop-server --force, or `ctl forget-host HOST`".into(),
                    forcible: Some(self.hosts_seen(&hosts)),
                }));
            }
        }
        let since = unix_ms();
        self.store.delete_desired(&key)?;
        let mut unconfirmed = None;
        // All at once: one after the other, each dark host's wait added its 20 s, and three of
        // them outlasted the CLI's request.
        let waits =
            futures_util::future::join_all(hosts.iter().map(|h| self.wait_gone(h, &key, since)))
                .await;
        for (host, waited) in hosts.iter().zip(waits) {
            let Err(e) = waited else {
                continue;
            };
            // A host that reported since the stop and still lists the server is up, and its
            // word beats the operator's: nothing to force (review 37, M1).
            let reported_since = self.host_seen(host) > since;
            let listed = self.report_on(host, &key).is_some();
            // Dark again by now: what it reported says nothing any more, and the operator's
            // word may stand (review 38, L-b).
            let up = host == LOCAL_HOST || self.dark_host(host).is_none();
            // Under force, a host that reported during the wait and still lists it refuses too,
            // dark again or not: the word was given before that (review 40, #6).
            if (reported_since || host == LOCAL_HOST) && (up || force.given) && listed {
                warn!(server = %name, %host, "stop not done, its host still reports it: {e}");
                return Err(PlaneError::Refused(Refusal {
                    reason: format!(
                        "host {host} still reports server {name} {} s after it was told to stop it: it stays running",
                        HOST_TIMEOUT.as_secs()
                    ),
                    hint: format!("its host is stopping it (SIGTERM, then SIGKILL after {} s); if it still runs after that, see why on that host (a process in an uninterruptible wait survives SIGKILL until the wait ends), then stop the server again", crate::hostd::STOP_GRACE.as_secs()),
                    forcible: None,
                }));
            }
            if !force.given {
                warn!(server = %name, %host, "stop not confirmed, the server stays running: {e}");
                return Err(PlaneError::Refused(Refusal {
                    reason: format!(
                        "host {host} did not confirm that server {name} stopped ({e}): it may still run, so it stays running here (its host stops it when it is back)"
                    ),
                    hint: "bring the host back and stop the server again; only if its machine is gone for good: stop-server --force, or `ctl forget-host HOST`".into(),
                    forcible: self.dark_host(host).map(|_| self.hosts_seen(&hosts)),
                }));
            }
            warn!(server = %name, %host, "stop not confirmed, Stopped on the operator's word (--force): {e}");
            unconfirmed.get_or_insert_with(Vec::new).push(host.clone());
        }
        if unconfirmed.is_some() {
            // A host that reported during the wait makes the word stale too: it was given
            // before that (review 39, M1).
            self.stale_word(&hosts, force)?;
        }
        // Every host that did not confirm, comma-separated (host names hold no commas).
        let unconfirmed = unconfirmed.map(|h| h.join(","));
        let mark = unconfirmed.map(|hosts| UnconfirmedStop {
            hosts,
            unix_ms: unix_ms(),
            keys: Some(key.clone()),
        });
        self.store
            .set_state_and_stop_mark(name, next, mark.as_ref())?;
        info!(server = %name, "server stopped");
        self.row(name)
    }

    /// Remove a stopped server. Not while a start or stop runs: a start waits up to 20 s with
    /// the server still Stopped and unmarked, and a delete meanwhile left its outcome (a running
    /// server, or the mark of one that may run) without a row to record it in (review 42, H2).
    pub async fn delete_server(&self, name: &str) -> Result<(), PlaneError> {
        let _ops = self.ops_soon().await?;
        let row = self.row(name)?;
        self.check(&row, Step::DeleteServer)?;
        // The mark would go with the row, and a server added again under that name start
        // beside the copy that may still run (review 41, M-C).
        self.no_unconfirmed_stop(&row)?;
        if let Some(f) = &row.failover {
            self.forget_nodes(&f.nodes);
        }
        self.store.delete_server(name)?;
        info!(server = %name, "server deleted");
        Ok(())
    }

    fn forget_nodes(&self, nodes: &[NodeSpec]) {
        if let Ok(mut live) = self.live.lock() {
            for n in nodes {
                live.remove(&n.name);
            }
        }
        for n in nodes {
            let _ = std::fs::remove_file(self.node_config_path(&n.name));
        }
    }

    /// The agent configuration file of `node`.
    pub fn node_config_path(&self, node: &str) -> PathBuf {
        self.data.join("nodes").join(format!("{node}.toml"))
    }

    /// The agent configuration of one node, as TOML text. A group on one host coordinates through
    /// a lock file in that host's data directory (relative to the configuration file, which the
    /// host writes to `<data>/nodes/`); a group across hosts needs etcd.
    fn agent_config(&self, server: &ServerSpec, f: &FailoverSpec, node: &NodeSpec) -> String {
        let one_host = std::iter::once(&server.host)
            .chain(f.standby_hosts.iter())
            .all(|h| *h == server.host);
        let mut t = toml_table();
        let mut n = toml_table();
        n.insert("name".into(), node.name.clone().into());
        n.insert("group".into(), server.name.clone().into());
        n.insert("admin".into(), self.node_admin(node).into());
        let path = |p: &PathBuf| toml::Value::from(p.display().to_string());
        for (key, v) in [
            ("admin_tls_cert", &self.agents.tls_cert),
            ("admin_tls_key", &self.agents.tls_key),
            ("admin_token_file", &self.agents.token_file),
        ] {
            if let Some(p) = v {
                n.insert(key.into(), path(p));
            }
        }
        // Only a preferred node named as such: a group without one keeps no preference in its
        // takeovers (and its agents' configurations stay as they were).
        if f.preferred.as_deref() == Some(node.name.as_str()) {
            n.insert("priority".into(), PREFERRED_PRIORITY.into());
        }
        if !one_host && !self.etcd.is_empty() {
            // Without a lock file the default journal is machine-wide (/var/lib/understudy); keep
            // it in the host's own data directory, beside the node's configuration.
            n.insert(
                "journal_file".into(),
                format!("../journal/{}.jsonl", node.name).into(),
            );
        }
        t.insert("node".into(), toml::Value::Table(n));
        let mut a = toml_table();
        a.insert("mode".into(), f.mode.as_str().into());
        if let Some(d) = &f.failback {
            a.insert("failback".into(), d.clone().into());
        }
        if one_host || self.etcd.is_empty() {
            a.insert(
                "lock_file".into(),
                format!("../locks/{}.lock", server.name).into(),
            );
        }
        t.insert("activation".into(), toml::Value::Table(a));
        if !one_host && !self.etcd.is_empty() {
            let mut e = toml_table();
            e.insert(
                "endpoints".into(),
                toml::Value::Array(self.etcd.iter().map(|x| x.clone().into()).collect()),
            );
            t.insert("etcd".into(), toml::Value::Table(e));
        }
        let mut s = toml_table();
        s.insert(
            "command".into(),
            toml::Value::Array(
                server
                    .service
                    .command
                    .iter()
                    .map(|c| c.clone().into())
                    .collect(),
            ),
        );
        s.insert("standby".into(), f.standby.as_str().into());
        if !server.service.env.is_empty() {
            let mut e = toml_table();
            for (k, v) in &server.service.env {
                e.insert(k.clone(), v.clone().into());
            }
            s.insert("env".into(), toml::Value::Table(e));
        }
        t.insert("service".into(), toml::Value::Table(s));
        if let Some(h) = &server.service.health {
            let mut ht = toml_table();
            if let Some(u) = &h.http {
                ht.insert("http".into(), u.clone().into());
            }
            if let Some(c) = &h.command {
                ht.insert(
                    "command".into(),
                    toml::Value::Array(c.iter().map(|x| x.clone().into()).collect()),
                );
            }
            t.insert("health".into(), toml::Value::Table(ht));
        }
        format!(
            "# Written by `understudy serve` for node {} of server {}; changes here are overwritten.\n{}",
            node.name,
            server.name,
            toml::to_string(&toml::Value::Table(t)).unwrap_or_default()
        )
    }

    /// Add (or replace) a server's failover service, validated in full: the request's fields, and
    /// every node's agent configuration by the same rules as `understudy check-config`.
    pub async fn put_failover(&self, name: &str, f: FailoverSpec) -> Result<ServerRow, PlaneError> {
        // Not during a start of failover, whose nodes would change under it (review 43, M2).
        let _ops = self.ops_soon().await?;
        let row = self.row(name)?;
        self.check(&row, Step::AddFailover)?;
        let old = row.failover.as_ref().map(|o| o.nodes.as_slice());
        let nodes = self.plan_failover(&row.spec, &f, old)?;
        self.store.put_failover(name, &f, &nodes)?;
        info!(server = %name, nodes = nodes.len(), "failover service added");
        self.row(name)
    }

    /// Validate a failover service for `server` in full (the request's fields, the hosts, and
    /// every node's agent configuration by `check-config`'s rules) and place its nodes. Nodes that
    /// already had an admin port keep it, so a replaced configuration does not move a node's
    /// address under an operator's scripts.
    fn plan_failover(
        &self,
        server: &ServerSpec,
        f: &FailoverSpec,
        old: Option<&[NodeSpec]>,
    ) -> Result<Vec<NodeSpec>, PlaneError> {
        let mut errs = f.validate(server);
        errs.extend(
            self.unknown_hosts(
                &f.standby_hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (format!("standby_hosts[{i}]"), h.clone()))
                    .collect::<Vec<_>>(),
            ),
        );
        if f.standby_hosts.iter().any(|h| *h != server.host) && self.etcd.is_empty() {
            errs.push(FieldError {
                field: "standby_hosts".into(),
                reason: "a group across hosts needs etcd to coordinate (a lock file lives on one machine): start the control plane with --etcd http://HOST:2379,…".into(),
            });
        }
        if !errs.is_empty() {
            return Err(PlaneError::Invalid(errs));
        }
        let old: BTreeMap<&str, u16> = old
            .unwrap_or_default()
            .iter()
            .map(|n| (n.name.as_str(), n.admin_port))
            .collect();
        let hosts = std::iter::once(server.host.clone()).chain(f.standby_hosts.iter().cloned());
        let mut nodes = Vec::new();
        for (i, host) in hosts.enumerate() {
            let name = node_name(&server.name, i + 1);
            let admin_port = match old.get(name.as_str()) {
                Some(p) => *p,
                None => free_port().map_err(|e| {
                    PlaneError::Start(format!("cannot find a free admin port for {name}: {e}"))
                })?,
            };
            nodes.push(NodeSpec {
                name,
                host,
                admin_port,
            });
        }
        for node in &nodes {
            let text = self.agent_config(server, f, node);
            let path = self.node_config_path(&node.name);
            if let Err(e) = understudy_agent::Config::parse(&path, &text) {
                errs.push(FieldError {
                    field: agent_key_to_field(&e.key),
                    reason: format!("node {}: {}", node.name, e.reason),
                });
            }
        }
        if !errs.is_empty() {
            return Err(PlaneError::Invalid(errs));
        }
        Ok(nodes)
    }

    /// The whole configuration: one entry per server, and the files kept from the last import.
    pub fn export(&self) -> Result<ConfigDir, PlaneError> {
        let servers = self
            .store
            .servers()?
            .into_iter()
            .map(|r| ServerConfig {
                server: r.spec,
                failover: r.failover.map(|f| f.spec),
            })
            .collect();
        Ok(ConfigDir {
            servers,
            files: self.store.config_files()?,
        })
    }

    /// Compare `items` with the inventory and validate every one of them; apply only when asked
    /// and when nothing is wrong anywhere (all or nothing). A server whose configuration changes
    /// must not be running: a running server or failover group never has its configuration
    /// swapped under it (it would take effect silently at the next takeover).
    pub async fn import(
        &self,
        cfg: ConfigDir,
        apply: bool,
        prune: bool,
    ) -> Result<ImportReport, PlaneError> {
        let _ops = self.ops.lock().await;
        let ConfigDir {
            servers: items,
            files,
        } = cfg;
        let mut rep = ImportReport::default();
        let file_errs = check_files(&files);
        if !file_errs.is_empty() {
            rep.errors.insert("(files)".into(), file_errs);
        }
        let current: BTreeMap<String, ServerRow> = self
            .store
            .servers()?
            .into_iter()
            .map(|r| (r.spec.name.clone(), r))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut plans: BTreeMap<String, Option<Vec<NodeSpec>>> = BTreeMap::new();
        for item in &items {
            let name = item.server.name.clone();
            let mut errs = Vec::new();
            if !seen.insert(name.clone()) {
                errs.push(FieldError {
                    field: "server.name".into(),
                    reason: "appears twice in the import".into(),
                });
            }
            errs.extend(item.server.validate().into_iter().map(|mut e| {
                e.field = format!("server.{}", e.field);
                e
            }));
            errs.extend(self.unknown_hosts(&[("server.host".into(), item.server.host.clone())]));
            let old = current.get(&name);
            if errs.is_empty() {
                if let Some(f) = &item.failover {
                    let old_nodes = old
                        .and_then(|r| r.failover.as_ref())
                        .map(|f| f.nodes.as_slice());
                    match self.plan_failover(&item.server, f, old_nodes) {
                        Ok(nodes) => {
                            plans.insert(name.clone(), Some(nodes));
                        }
                        Err(PlaneError::Invalid(fe)) => errs.extend(fe.into_iter().map(|mut e| {
                            e.field = format!("failover.{}", e.field);
                            e
                        })),
                        Err(e) => return Err(e),
                    }
                } else {
                    plans.insert(name.clone(), None);
                }
            }
            match old {
                None => rep.added.push(name.clone()),
                Some(row) => {
                    let was = ServerConfig {
                        server: row.spec.clone(),
                        failover: row.failover.as_ref().map(|f| f.spec.clone()),
                    };
                    let d = diff(&was, item);
                    if d.is_empty() {
                        rep.unchanged.push(name.clone());
                    } else {
                        match running_change(row, item) {
                            Ok(true) => rep.rolling.push(name.clone()),
                            Ok(false) => {}
                            Err(reason) => errs.push(FieldError {
                                field: "server".into(),
                                reason,
                            }),
                        }
                        rep.changed.insert(name.clone(), d);
                    }
                }
            }
            if !errs.is_empty() {
                rep.errors.insert(name, errs);
            }
        }
        for (name, row) in &current {
            if !seen.contains(name) {
                rep.missing.push(name.clone());
                if prune && row.state != ServerState::Stopped {
                    rep.errors.insert(
                        name.clone(),
                        vec![FieldError {
                            field: "server".into(),
                            reason: "not in the import, but running: stop it before pruning".into(),
                        }],
                    );
                } else if prune {
                    let unconfirmed = self.unconfirmed_hosts(row);
                    if !unconfirmed.is_empty() {
                        rep.errors.insert(
                            name.clone(),
                            vec![FieldError {
                                field: "server".into(),
                                reason: format!(
                                    "not in the import, but host {} never confirmed that it stopped it (a forced stop, or a start it never answered): it may still run there (forget the host, --force, if its machine is dead)",
                                    unconfirmed.join(", ")
                                ),
                            }],
                        );
                    }
                }
            }
        }
        if !apply || !rep.errors.is_empty() {
            return Ok(rep);
        }
        // The running groups whose configuration changes: each node learns it before it changes.
        let rolling: Vec<(ServerSpec, FailoverSpec, Vec<NodeSpec>)> = items
            .iter()
            .filter(|i| rep.rolling.contains(&i.server.name))
            .filter_map(|i| {
                let nodes = plans.get(&i.server.name).cloned().flatten()?;
                Some((i.server.clone(), i.failover.clone()?, nodes))
            })
            .collect();
        let hot = match self.tell_rolling(&rolling).await {
            Ok(hot) => hot,
            Err((name, e)) => {
                rep.errors.insert(name, vec![e]);
                return Ok(rep);
            }
        };
        let now = unix_ms();
        for item in &items {
            let name = &item.server.name;
            let unchanged = rep.unchanged.contains(name);
            if unchanged {
                continue;
            }
            if current.contains_key(name) {
                self.store.update_server(&item.server)?;
            } else {
                self.store.add_server(&item.server, now)?;
            }
            match (&item.failover, plans.get(name).cloned().flatten()) {
                (Some(f), Some(nodes)) => self.store.put_failover(name, f, &nodes)?,
                _ => {
                    if let Some(old) = current.get(name).and_then(|r| r.failover.as_ref()) {
                        self.forget_nodes(&old.nodes);
                    }
                    self.store.delete_failover(name)?;
                }
            }
        }
        if prune {
            for name in &rep.missing {
                if let Some(f) = current.get(name).and_then(|r| r.failover.as_ref()) {
                    self.forget_nodes(&f.nodes);
                }
                self.store.delete_server(name)?;
            }
        }
        self.store.replace_config_files(&files)?;
        // Standbys start again with the new configuration at once; the active keeps its own.
        for (server, f, nodes) in &rolling {
            for n in nodes {
                self.want_agent(server, f, n, hot.get(&n.name).copied())?;
            }
        }
        if !rolling.is_empty() {
            self.sync_local().await;
        }
        rep.applied = true;
        info!(
            added = rep.added.len(),
            changed = rep.changed.len(),
            pruned = prune,
            "configuration imported"
        );
        Ok(rep)
    }

    /// Remove a server's failover configuration; the server stays as a plain server.
    pub async fn delete_failover(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops_soon().await?;
        let row = self.row(name)?;
        self.check(&row, Step::DeleteFailover)?;
        if let Some(f) = &row.failover {
            self.forget_nodes(&f.nodes);
        }
        self.store.delete_failover(name)?;
        info!(server = %name, "failover service deleted");
        self.row(name)
    }

    /// The agent's `GET /status`, or why there is none.
    async fn admin_status(&self, addr: &str) -> Result<Status, String> {
        let r = self
            .agent_request(reqwest::Method::GET, self.agent_url(addr, "/status"))
            .send()
            .await
            .map_err(|e| format!("the agent does not answer on {addr}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("the agent on {addr} answered {}", r.status()));
        }
        r.json()
            .await
            .map_err(|e| format!("the agent on {addr} answered something that is not /status: {e}"))
    }

    /// Hand `node`'s host its agent configuration; a running agent may keep the generation
    /// `keep` (the active's, until it is a standby).
    fn want_agent(
        &self,
        server: &ServerSpec,
        f: &FailoverSpec,
        node: &NodeSpec,
        keep: Option<u64>,
    ) -> Result<(), PlaneError> {
        let want = Want::Agent {
            node: node.name.clone(),
            config: self.agent_config(server, f, node),
            keep,
        };
        self.store.put_desired(
            &agent_key(&node.name),
            &node.host,
            &serde_json::to_value(&want).unwrap_or_default(),
        )?;
        Ok(())
    }

    async fn start_node(
        &self,
        row: &ServerRow,
        f: &FailoverSpec,
        node: &NodeSpec,
    ) -> Result<(), PlaneError> {
        self.want_agent(&row.spec, f, node, None)?;
        let key = agent_key(&node.name);
        let admin = self.node_admin(node);
        let deadline = tokio::time::Instant::now() + AGENT_UP_TIMEOUT;
        loop {
            if node.host == LOCAL_HOST {
                self.sync_local().await;
            }
            if self.admin_status(&admin).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let log = if node.host == LOCAL_HOST {
                    tail(
                        &self
                            .data
                            .join("logs")
                            .join(format!("{}.log", key.replace(':', "-"))),
                        5,
                    )
                } else {
                    self.report(&key)
                        .and_then(|(_, r)| r.problem)
                        .unwrap_or_default()
                };
                return Err(PlaneError::Start(format!(
                    "the agent of {} did not come up on {admin}: {}",
                    node.name,
                    if log.is_empty() {
                        "no output".to_string()
                    } else {
                        log
                    }
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the agents of `nodes`: no longer wanted; wait until their hosts report them gone.
    /// Returns each node whose host did not confirm it, with why.
    async fn stop_nodes(&self, nodes: &[&NodeSpec]) -> Vec<(String, String)> {
        let since = unix_ms();
        for n in nodes {
            let _ = self.store.delete_desired(&agent_key(&n.name));
        }
        // Side by side: a dark host costs `HOST_TIMEOUT` once, not once per node (three of
        // them went past `ctl`'s own timeout, review 29, M3).
        let waits = nodes.iter().map(|n| async move {
            self.wait_gone(&n.host, &agent_key(&n.name), since)
                .await
                .err()
                .map(|e| {
                    warn!(node = %n.name, "stopping: {e}");
                    (n.name.clone(), e)
                })
        });
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The nodes among `nodes` whose host has not reported for longer than [`HOST_STALE`],
    /// each with how long, in words.
    fn dark_hosts(&self, nodes: &[&NodeSpec]) -> Vec<String> {
        nodes
            .iter()
            .filter_map(|n| Some(format!("{} ({})", n.name, self.dark_host(&n.host)?)))
            .collect()
    }

    /// Why `host` cannot be told anything now: it has not reported for longer than
    /// [`HOST_STALE`], or never did (the built-in host always reports).
    fn dark_host(&self, host: &str) -> Option<String> {
        if host == LOCAL_HOST || self.forgotten(host).is_some() {
            return None;
        }
        let seen = self.store.hosts().ok()?.get(host).map(|h| h.1);
        match seen.map(|t| unix_ms().saturating_sub(t)) {
            Some(a) if a <= HOST_STALE.as_millis() as u64 => None,
            Some(a) => Some(format!(
                "host {host} has not reported for {:.1} s",
                a as f64 / 1000.0
            )),
            None => Some(format!("host {host} never reported")),
        }
    }

    /// What each of `nodes`' hosts is told to run for it now (None: nothing).
    fn desired_of(&self, nodes: &[&NodeSpec]) -> Vec<Option<Value>> {
        nodes
            .iter()
            .map(|n| {
                self.store
                    .desired(&agent_key(&n.name))
                    .ok()
                    .flatten()
                    .map(|(_, v)| v)
            })
            .collect()
    }

    /// Puts back the wants `desired_of` read for `nodes` (a node that had none is wanted anew).
    fn want_again(
        &self,
        server: &ServerSpec,
        f: &FailoverSpec,
        nodes: &[&NodeSpec],
        before: &[Option<Value>],
    ) -> Result<(), PlaneError> {
        for (n, was) in nodes.iter().zip(before) {
            match was {
                Some(v) => self.store.put_desired(&agent_key(&n.name), &n.host, v)?,
                None => self.want_agent(server, f, n, None)?,
            }
        }
        Ok(())
    }

    /// Start failover: only from a stopped server. Boots the preferred node first and waits for it
    /// to be Hot, then every standby.
    pub async fn start_failover(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops.lock().await;
        let row = self.row(name)?;
        let next = self.check(&row, Step::StartFailover)?;
        let Some(f) = row.failover.clone() else {
            return Err(PlaneError::NotFound(name.to_string()));
        };
        self.no_lingering_agent(&row).await?;
        self.no_unconfirmed_stop(&row)?;
        for n in &f.nodes {
            self.not_forgotten(&n.host, &format!("node {}", n.name))?;
        }
        // A silent host may fetch its node's want and start the agent without a word: refused
        // up front, as start-server is, rather than after the wait with that agent's fate
        // unknown.
        let dark = self.dark_hosts(&f.nodes.iter().collect::<Vec<_>>());
        if !dark.is_empty() {
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "failover of server {name} cannot be started: {}",
                    dark.join("; ")
                ),
                hint: "bring that host back (is `understudy host` running there?), then start failover again; to leave it out, place that node on another host (edit the failover)".into(),
                forcible: None,
            }));
        }
        let preferred = f.spec.preferred_node(name);
        let mut order: Vec<&NodeSpec> = f.nodes.iter().filter(|n| n.name == preferred).collect();
        order.extend(f.nodes.iter().filter(|n| n.name != preferred));
        let mut started: Vec<&NodeSpec> = Vec::new();
        let result = async {
            for (i, node) in order.iter().enumerate() {
                started.push(node);
                self.start_node(&row, &f.spec, node).await?;
                if i == 0 {
                    // The stop the last stop failover recorded (its release) keeps every node
                    // off the group; the server is stopped now, so nothing acts without it.
                    self.ask_start_failover(node).await?;
                }
                if i == 0 && f.spec.mode != crate::model::Activation::Warm {
                    self.wait_hot(node).await?;
                }
            }
            Ok::<(), PlaneError>(())
        }
        .await;
        if let Err(e) = result {
            warn!(server = %name, "start failover failed, stopping what started: {e}");
            // A node whose host did not confirm its stop may run: its host may have started
            // the agent and fallen silent before it said so, and that agent would campaign
            // beside whatever starts next. Marked like a stop its host never confirmed
            // (review 42, H3); the error returned is the start's.
            let unconfirmed = self.stop_nodes(&started).await;
            let mut hosts: Vec<String> = Vec::new();
            let mut keys: Vec<String> = Vec::new();
            for (node, _) in &unconfirmed {
                if let Some(n) = f.nodes.iter().find(|n| &n.name == node) {
                    if !hosts.contains(&n.host) {
                        hosts.push(n.host.clone());
                    }
                    keys.push(agent_key(&n.name));
                }
            }
            if !hosts.is_empty() {
                let list = hosts.join(",");
                let mark = UnconfirmedStop {
                    hosts: list.clone(),
                    unix_ms: unix_ms(),
                    keys: Some(keys.join(",")),
                };
                // The start's error first: a store error below must not hide it.
                warn!(server = %name, hosts = %list, "start failover failed ({e}) and the stop of a node was not confirmed: marked until its host reports without it");
                self.store.set_unconfirmed_stop(name, Some(&mark))?;
                return Err(PlaneError::Start(format!(
                    "{e}; host {list} did not confirm that it stopped what it was told to start, so an agent may run there: until it confirms, start-server, start failover, delete-server and an import's prune are refused"
                )));
            }
            return Err(e);
        }
        self.store.set_failover_running(name, true)?;
        // Whatever mark there was, its hosts all confirmed: the checks above passed.
        self.store.set_state_and_stop_mark(name, next, None)?;
        info!(server = %name, %preferred, "failover started");
        self.row(name)
    }

    async fn wait_hot(&self, node: &NodeSpec) -> Result<(), PlaneError> {
        let deadline = tokio::time::Instant::now() + HOT_TIMEOUT;
        loop {
            let st = self.admin_status(&self.node_admin(node)).await;
            if st.as_ref().is_ok_and(Status::is_hot) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let why = match st {
                    Ok(s) => s.node.waiting.unwrap_or_default(),
                    Err(e) => e,
                };
                return Err(PlaneError::Start(format!(
                    "the preferred node {} did not become active within {} s: {why}",
                    node.name,
                    HOT_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node that is Hot now, by asking every node of the group.
    async fn active_node(&self, nodes: &[NodeSpec]) -> Option<(NodeSpec, Status)> {
        for n in nodes {
            if let Ok(st) = self.admin_status(&self.node_admin(n)).await {
                if st.is_hot() {
                    return Some((n.clone(), st));
                }
            }
        }
        None
    }

    /// Stop failover (a true pause, like Patroni's): every standby's agent and service stop first;
    /// then the active's agent hands its service over (`POST /service/release`) and exits, and its
    /// host adopts the service as the server's plain process: same pid, nothing killed, nobody
    /// fenced — and no longer protected.
    pub async fn stop_failover(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops.lock().await;
        let row = self.row(name)?;
        let next = self.check(&row, Step::StopFailover)?;
        let Some(f) = row.failover.clone() else {
            return Err(PlaneError::NotFound(name.to_string()));
        };
        let active = self.active_node(&f.nodes).await;
        let standbys: Vec<&NodeSpec> = f
            .nodes
            .iter()
            .filter(|n| Some(&n.name) != active.as_ref().map(|(a, _)| &a.name))
            .collect();
        // A standby on a host that has not reported for a while could not be told to stop: the
        // stop is refused before any healthy standby is stopped (review 29, M3).
        let dark = self.dark_hosts(&standbys);
        if !dark.is_empty() {
            warn!(server = %name, "stop failover refused before stopping anything: {}", dark.join("; "));
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "standby {} cannot be told to stop: released now, it could take over while the released service keeps acting; nothing was stopped",
                    dark.join(", ")
                ),
                hint: "bring that host back (or its `understudy host` process), then stop failover again; if its machine is gone for good: `ctl forget-host HOST`".into(),
                forcible: None,
            }));
        }
        // The standbys' wants as they were, to put back as they were if the stop is refused (an
        // agent's `keep` included, review 29, M4).
        let before = self.desired_of(&standbys);
        let unconfirmed = self.stop_nodes(&standbys).await;
        if !unconfirmed.is_empty() {
            // A standby whose host could not be told may still run (a cut link, a frozen
            // machine): released now, the group would be free for it, and it would take over
            // while the released service keeps acting. Its etcd key is no proof either way: a
            // member cut off from etcd loses it after `backstop_ttl` and lives on. Failover
            // stays on, with every standby wanted again (review 28, H1).
            self.want_again(&row.spec, &f.spec, &standbys, &before)?;
            let names: Vec<String> = unconfirmed
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            warn!(server = %name, "stop failover refused: standbys not confirmed stopped: {}", names.join("; "));
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "the stop of standby {} was not confirmed by its host: released now, it could take over while the released service keeps acting; failover stays on and the standbys are wanted again",
                    names.join(", ")
                ),
                hint: "bring that host back (or its `understudy host` process), then stop failover again; if its machine is gone for good: `ctl forget-host HOST`".into(),
                forcible: None,
            }));
        }
        if let Some((a, st)) = &active {
            self.release_active(&row, &f.spec, a, st).await?;
        }
        self.store.set_failover_running(name, false)?;
        self.store.set_state(name, next)?;
        info!(server = %name, active = ?active.map(|(a, _)| a.name), "failover stopped");
        self.row(name)
    }

    /// The active's half of stop failover. The host is told to adopt the service before the agent
    /// releases it, and no longer to run the agent: a host must never start that agent again
    /// while the released service acts (it would campaign, win the lock and start a second
    /// active). Until the agent has exited the host neither adopts nor stops anything.
    async fn release_active(
        &self,
        row: &ServerRow,
        f: &FailoverSpec,
        a: &NodeSpec,
        st: &Status,
    ) -> Result<(), PlaneError> {
        let name = &row.spec.name;
        let skey = server_key(name);
        let want = |pid: u32| Want::Server {
            server: name.clone(),
            service: row.spec.service.clone(),
            generation: unix_ms(),
            adopt: Some(Adopt {
                from: agent_key(&a.name),
                pid,
            }),
        };
        let Some(pid) = st.service.pid else {
            return Err(PlaneError::Refused(Refusal {
                reason: format!("the active node {} reports no running service", a.name),
                hint: "wait until the active's service runs, then try again".into(),
                forcible: None,
            }));
        };
        self.store.put_desired(
            &skey,
            &a.host,
            &serde_json::to_value(want(pid)).unwrap_or_default(),
        )?;
        let before = self.desired_of(&[a]);
        self.store.delete_desired(&agent_key(&a.name))?;
        match self.ask_release(a).await {
            Ok(released) if released == pid => {}
            Ok(released) => {
                // The service restarted between the status and the release: adopt what runs.
                self.store.put_desired(
                    &skey,
                    &a.host,
                    &serde_json::to_value(want(released)).unwrap_or_default(),
                )?;
            }
            Err(e) => {
                // The agent wanted again first: between the two, the adoption's want keeps
                // it running (review 32, L10); the other way round, a host step in between
                // stopped the group's only running node.
                self.want_again(&row.spec, f, &[a], &before)?;
                self.store.delete_desired(&skey)?;
                return Err(e);
            }
        }
        if let Err(e) = self
            .wait_report(&a.host, &skey, |r| {
                r.is_some_and(|r| r.running || r.problem.is_some())
            })
            .await
        {
            warn!(server = %name, "the released service was not adopted: {e}");
        }
        Ok(())
    }

    /// A POST to node `name`'s admin API at `url`, answered within `secs` seconds.
    async fn agent_post(
        &self,
        name: &str,
        url: String,
        secs: u64,
    ) -> Result<reqwest::Response, PlaneError> {
        self.agent_request(reqwest::Method::POST, url)
            .header("X-Understudy", "1")
            .timeout(Duration::from_secs(secs))
            .send()
            .await
            .map_err(|e| PlaneError::Start(format!("cannot reach {name}: {e}")))
    }

    /// `POST /failover/start` on `node`: clears the group's stop of failover, if any.
    async fn ask_start_failover(&self, node: &NodeSpec) -> Result<(), PlaneError> {
        let url = self.agent_url(&self.node_admin(node), "/failover/start");
        let resp = self.agent_post(&node.name, url, 30).await?;
        let code = resp.status();
        if code == reqwest::StatusCode::NOT_FOUND {
            // An agent from before the stop of failover existed records none.
            return Ok(());
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if code.is_success() {
            if let Some(stop) = body.get("cleared").and_then(Value::as_str) {
                info!(node = %node.name, %stop, "cleared the group's stop of failover");
            }
            return Ok(());
        }
        let why = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Err(PlaneError::Start(format!(
            "{} could not start failover for the group ({code}): {why}",
            node.name
        )))
    }

    /// `POST /service/release` to the active's agent: the pid of the released service. Retried
    /// while the agent still sees a stopped standby's record as alive (409), for a few seconds.
    async fn ask_release(&self, a: &NodeSpec) -> Result<u32, PlaneError> {
        let url = self.agent_url(&self.node_admin(a), "/service/release");
        let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
        loop {
            let resp = self.agent_post(&a.name, url.clone(), 10).await?;
            let code = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if code.is_success() {
                return body
                    .get("pid")
                    .and_then(Value::as_u64)
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| {
                        PlaneError::Start(format!(
                            "{} released its service but named no pid",
                            a.name
                        ))
                    });
            }
            let why = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if code != reqwest::StatusCode::CONFLICT || tokio::time::Instant::now() > deadline {
                return Err(PlaneError::Refused(Refusal {
                    reason: format!("{} did not hand its service over ({code}): {why}", a.name),
                    hint: "failover keeps running with the active alone; try stop failover again"
                        .into(),
                    forcible: None,
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Hand activity to a ready standby: asks the active node's agent.
    pub async fn switchover(
        &self,
        name: &str,
        to: Option<String>,
    ) -> Result<Switchover, PlaneError> {
        let row = self.row(name)?;
        self.check(&row, Step::Switchover)?;
        let Some(f) = row.failover.clone() else {
            return Err(PlaneError::NotFound(name.to_string()));
        };
        if let Some(t) = &to {
            if !f.nodes.iter().any(|n| &n.name == t) {
                return Err(PlaneError::Invalid(vec![FieldError {
                    field: "to".into(),
                    reason: format!("{t:?} is not a node of this group"),
                }]));
            }
        }
        let Some((active, _)) = self.active_node(&f.nodes).await else {
            return Err(PlaneError::Refused(Refusal {
                reason: "no node of the group is active right now".into(),
                hint: "wait for the takeover to finish, then try again".into(),
                forcible: None,
            }));
        };
        let pending: Vec<&str> = f
            .nodes
            .iter()
            .filter(|n| n.name != active.name && self.config_pending(&row.spec, &f.spec, n))
            .map(|n| n.name.as_str())
            .collect();
        if !pending.is_empty() {
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "standby {} does not run the new configuration yet",
                    pending.join(", ")
                ),
                hint: "wait until every standby shows its configuration applied, then switch over"
                    .into(),
                forcible: None,
            }));
        }
        let mut url = self.agent_url(&self.node_admin(&active), "/service/switchover");
        if let Some(t) = &to {
            url.push_str(&format!("?to={t}"));
        }
        let resp = self.agent_post(&active.name, url, 30).await?;
        let code = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !code.is_success() {
            let why = serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {code}"));
            return Err(PlaneError::Refused(Refusal {
                reason: format!("{} refused the switchover: {why}", active.name),
                hint: "wait until a standby is ready (see the dashboard), then try again".into(),
                forcible: None,
            }));
        }
        let done: Switchover = serde_json::from_slice(&body).map_err(|e| {
            PlaneError::Start(format!(
                "{} switched over but its answer is unreadable: {e}",
                active.name
            ))
        })?;
        if let Some(t) = &to {
            // An agent that cannot honour the choice hands over to whichever standby wins; never
            // report that as the chosen one.
            let got = &done.to;
            if got != t {
                return Err(PlaneError::Start(format!(
                    "asked to switch over to {t}, but {} handed over to {got:?}: its agent does not support choosing the standby",
                    active.name
                )));
            }
        }
        Ok(done)
    }

    /// The whole inventory with what the collector last saw, for the dashboard and the API.
    pub fn view(&self) -> Result<Value, PlaneError> {
        let live = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        let mut servers = Vec::new();
        for row in self.store.servers()? {
            servers.push(self.server_view(&row, &live)?);
        }
        Ok(json!({ "servers": servers, "hosts": self.hosts(), "host_states": self.host_states() }))
    }

    /// One server as the API shows it.
    pub fn server_json(&self, name: &str) -> Result<Value, PlaneError> {
        let row = self.row(name)?;
        let live = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        self.server_view(&row, &live)
    }

    fn server_view(
        &self,
        row: &ServerRow,
        live: &BTreeMap<String, NodeLive>,
    ) -> Result<Value, PlaneError> {
        let name = &row.spec.name;
        let skey = server_key(name);
        let rep = self.report(&skey).map(|(_, r)| r);
        let process_running = rep.as_ref().is_some_and(|r| r.running);
        let pid = rep.and_then(|r| r.pid);
        let failover = row.failover.as_ref().map(|f| {
            let nodes: Vec<Value> = f
                .nodes
                .iter()
                .map(|n| {
                    let l = live.get(&n.name).cloned().unwrap_or_default();
                    let st = l.status.as_ref();
                    let pending = f.running && self.config_pending(&row.spec, &f.spec, n);
                    // A status read from the agent before its host started it again (a new
                    // configuration) says nothing about the agent that runs now.
                    let reported = self.report(&agent_key(&n.name)).and_then(|(_, r)| r.pid);
                    let stale = match (st.map(|s| s.node.agent_pid), reported) {
                        (Some(seen), Some(runs)) => seen != runs,
                        _ => false,
                    };
                    let ready = if stale {
                        Some(false)
                    } else {
                        st.map(|s| s.node.ready)
                    };
                    let waiting = match (pending, st) {
                        (true, Some(s)) if !s.is_hot() => {
                            Some("restarting with the new configuration".to_string())
                        }
                        _ => st.and_then(|s| s.node.waiting.clone()),
                    };
                    json!({
                        "name": n.name,
                        "host": n.host,
                        "admin": self.node_admin(n),
                        "preferred": n.name == f.spec.preferred_node(name),
                        "mode": st.map(|s| s.node.state),
                        "epoch": st.map(|s| s.node.epoch),
                        "since": st.map(|s| &s.since),
                        // Not ready until it runs the configuration the control plane holds.
                        "ready": if pending { Some(false) } else { ready },
                        "waiting": waiting,
                        "config": if pending { "pending" } else { "applied" },
                        "service": st.map(|s| &s.service),
                        "reachable": l.status.is_some(),
                        "error": l.error,
                    })
                })
                .collect();
            let active = nodes
                .iter()
                .find(|n| n["mode"] == "Hot")
                .map(|n| n["name"].clone());
            json!({
                "standby": f.spec.standby,
                "mode": f.spec.mode,
                "standby_hosts": f.spec.standby_hosts,
                "preferred": f.spec.preferred_node(name),
                "failback": f.spec.failback,
                "running": f.running,
                "active": active,
                "nodes": if f.running { nodes } else { f.nodes.iter().map(|n| json!({
                    "name": n.name, "host": n.host, "admin": self.node_admin(n),
                    "preferred": n.name == f.spec.preferred_node(name),
                })).collect() },
            })
        });
        let mut v = json!({
            "name": name,
            "host": row.spec.host,
            "state": row.state.as_str(),
            "service": row.spec.service,
            "process": { "pid": pid, "running": process_running },
            "created_unix_ms": row.created_unix_ms,
            "failure_events": self.store.failure_event_count(name)?,
            "failover": failover,
        });
        // Until each host confirms it (a report made after the stop, without the server) or is
        // forgotten.
        let open = self.unconfirmed_hosts(row);
        if let (false, Some(m)) = (open.is_empty(), &row.unconfirmed_stop) {
            v["unconfirmed_stop"] = json!({ "host": open.join(","), "unix_ms": m.unix_ms });
        }
        Ok(v)
    }

    /// One pass of the collector: let the built-in host catch up (it starts dead agents again),
    /// ask every node of every running failover for its status, and store the takeovers it
    /// reports. Also notices plain servers whose process ended.
    pub async fn collect(&self, with_events: bool) {
        if let Ok(_ops) = self.ops.try_lock() {
            self.sync_local().await;
        }
        let Ok(rows) = self.store.servers() else {
            return;
        };
        for row in rows {
            let name = row.spec.name.clone();
            if row.state == ServerState::Running {
                let skey = server_key(&name);
                if let Some((_, r)) = self.report(&skey) {
                    if !r.running && r.problem.is_some() {
                        warn!(server = %name, "the server's process ended by itself");
                        let _ = self.store.delete_desired(&skey);
                        let _ = self.store.set_state(&name, ServerState::Stopped);
                    }
                }
            }
            let Some(f) = row.failover else { continue };
            if !f.running {
                continue;
            }
            for n in &f.nodes {
                let admin = self.node_admin(n);
                let st = self.admin_status(&admin).await;
                let warm = st.as_ref().is_ok_and(|s| !s.is_hot());
                if warm {
                    if let Ok(_ops) = self.ops.try_lock() {
                        self.apply_config(&row.spec, &f.spec, n);
                    }
                }
                if st.is_ok() && self.config_pending(&row.spec, &f.spec, n) {
                    // Told at the import; told again for an agent that its host started since
                    // with the old configuration, before its host starts it with the new one.
                    let planned = self.planned_generation(&row.spec, &f.spec, n);
                    if let Err(e) = self.tell_wanted(n, planned).await {
                        warn!(node = %n.name, "cannot tell it that its configuration changed: {e}");
                    }
                }
                let problem = self
                    .report(&agent_key(&n.name))
                    .and_then(|(_, r)| r.problem);
                let entry = NodeLive {
                    error: st.as_ref().err().map(|e| match &problem {
                        Some(p) => format!("{e}: {p}"),
                        None => e.clone(),
                    }),
                    last_ok_unix_ms: st.as_ref().ok().map(|_| unix_ms()),
                    status: st.ok(),
                };
                // A node whose state or epoch moved has a takeover to report: fetch its events now
                // rather than at the next periodic pass, so the failure event shows within a
                // collector interval of the takeover.
                let mut moved = false;
                if let Ok(mut live) = self.live.lock() {
                    let prev = live.get(&n.name);
                    let prev_ok = prev.and_then(|l| l.last_ok_unix_ms);
                    let key = |l: Option<&Status>| l.map(|s| (s.node.state, s.node.epoch));
                    moved = key(prev.and_then(|p| p.status.as_ref())) != key(entry.status.as_ref());
                    let mut e = entry;
                    if e.last_ok_unix_ms.is_none() {
                        e.last_ok_unix_ms = prev_ok;
                    }
                    live.insert(n.name.clone(), e);
                }
                if with_events || moved {
                    self.collect_events(&name, n).await;
                }
            }
        }
    }

    /// A standby whose configuration changed (an import while failover runs) gets it now: its host
    /// starts the agent again with it. Only a node seen Warm: the active keeps its own (`keep`)
    /// until it is a standby. Either way it was told at the import that its configuration is
    /// outdated, so it does not take over with it meanwhile.
    fn apply_config(&self, server: &ServerSpec, f: &FailoverSpec, n: &NodeSpec) {
        let Ok(Some((_, spec))) = self.store.desired(&agent_key(&n.name)) else {
            return;
        };
        let Ok(Want::Agent { config, keep, .. }) = serde_json::from_value::<Want>(spec) else {
            return;
        };
        if config == self.agent_config(server, f, n) && keep.is_none() {
            return;
        }
        info!(node = %n.name, "configuration changed: the standby starts again with it");
        if let Err(e) = self.want_agent(server, f, n, None) {
            warn!(node = %n.name, "cannot hand the new configuration to its host: {e}");
        }
    }

    /// The generation of the configuration the control plane holds for node `n`.
    fn planned_generation(&self, server: &ServerSpec, f: &FailoverSpec, n: &NodeSpec) -> u64 {
        config_generation(&self.agent_config(server, f, n))
    }

    /// True when node `n`'s agent runs, but not the configuration the control plane holds for it:
    /// a standby about to be restarted with it, or the active keeping its own.
    fn config_pending(&self, server: &ServerSpec, f: &FailoverSpec, n: &NodeSpec) -> bool {
        let planned = self.planned_generation(server, f, n);
        self.report(&agent_key(&n.name))
            .is_some_and(|(_, r)| r.running && r.generation != planned)
    }

    /// `PUT /config/wanted/{generation}` to node `n`'s agent: from its answer on, the agent is not
    /// ready while it runs another configuration.
    async fn tell_wanted(&self, n: &NodeSpec, generation: u64) -> Result<Told, String> {
        let url = format!("http://{}/config/wanted/{generation}", self.node_admin(n));
        let r = self
            .http
            .put(url)
            .header("X-Understudy", "1")
            .send()
            .await
            .map_err(|e| format!("its agent does not answer: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("its agent answered {}", r.status()));
        }
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("its agent's answer is unreadable: {e}"))?;
        let running = v
            .get("running")
            .and_then(Value::as_u64)
            .ok_or("its agent's answer names no running generation")?;
        Ok(Told {
            hot: v.get("mode").and_then(Value::as_str) == Some("Hot"),
            running,
        })
    }

    /// Before a running group's configuration changes: tell every node of each server in
    /// `rolling` (with `plans`, the new configuration and nodes) the generation it must run, so
    /// that from then on no node takes over with the old one. The nodes told Hot, with the
    /// generation they run. A node whose agent runs but cannot be told refuses the change for its
    /// server (the nodes told so far are told their own generation back).
    async fn tell_rolling(
        &self,
        rolling: &[(ServerSpec, FailoverSpec, Vec<NodeSpec>)],
    ) -> Result<BTreeMap<String, u64>, (String, FieldError)> {
        let mut told: Vec<(&NodeSpec, u64)> = Vec::new();
        let mut hot = BTreeMap::new();
        for (server, f, nodes) in rolling {
            for n in nodes {
                let planned = self.planned_generation(server, f, n);
                match self.tell_wanted(n, planned).await {
                    Ok(t) => {
                        told.push((n, t.running));
                        if t.hot {
                            hot.insert(n.name.clone(), t.running);
                        }
                    }
                    // An agent that does not run is started with the new configuration.
                    Err(_)
                        if !self
                            .report(&agent_key(&n.name))
                            .is_some_and(|(_, r)| r.running) => {}
                    Err(e) => {
                        for (n, running) in told {
                            let _ = self.tell_wanted(n, running).await;
                        }
                        return Err((
                            server.name.clone(),
                            FieldError {
                                field: "server".into(),
                                reason: format!(
                                    "node {}: {e}; a running node must learn that its configuration changed before it changes (else it could take over with the old one): try again when it answers, or stop failover first",
                                    n.name
                                ),
                            },
                        ));
                    }
                }
            }
        }
        Ok(hot)
    }

    async fn collect_events(&self, server: &str, n: &NodeSpec) {
        let Ok(r) = self
            .agent_request(
                reqwest::Method::GET,
                self.agent_url(&self.node_admin(n), "/events"),
            )
            .send()
            .await
        else {
            return;
        };
        let Ok(ev) = r.json::<Events>().await else {
            return;
        };
        for t in &ev.takeovers {
            // Only takeovers that reached a durable epoch are failure events of the group.
            if t.epoch == 0 {
                continue;
            }
            // Stored as the agent's JSON, which the control plane's API serves back.
            let Ok(t) = serde_json::to_value(t) else {
                continue;
            };
            match self.store.add_failure_event(server, &n.name, &t) {
                Ok(true) => {
                    info!(server, node = %n.name, "failure event stored");
                    if let Some(nt) = &self.notifier {
                        let mut ev = t.clone();
                        if let Value::Object(o) = &mut ev {
                            o.insert("server".into(), Value::String(server.to_string()));
                            o.insert("node".into(), Value::String(n.name.clone()));
                        }
                        nt.send(ev);
                    }
                }
                Ok(false) => {
                    let _ = self.store.update_failure_event(server, &n.name, &t);
                }
                Err(e) => warn!("cannot store a failure event: {e}"),
            }
        }
    }
}

/// forget-host's refusal of a host that reported at `at` (Unix ms).
fn reported(host: &str, now: u64, at: u64) -> PlaneError {
    PlaneError::Refused(Refusal {
        reason: format!(
            "host {host} reported {:.1} s ago: it is up, and what it runs may act",
            now.saturating_sub(at) as f64 / 1000.0
        ),
        hint: "forget only a host whose machine is gone for good; to take processes off a live host, stop them through the control plane".into(),
        forcible: None,
    })
}

/// May a changed configuration replace `row`'s while it runs? A stopped server: yes. A plain
/// running server: no (it would need a restart behind the operator's back). A server running
/// with failover: yes when no node moves (same hosts, failover neither added nor removed) —
/// `Ok(true)`: the standbys restart with it at once and count as not ready until they have; the
/// active keeps its configuration until it is a standby (after a switchover), never swapped
/// under it or silently at a takeover.
fn running_change(row: &ServerRow, new: &ServerConfig) -> Result<bool, String> {
    match row.state {
        ServerState::Stopped => Ok(false),
        ServerState::Running => Err(
            "the server is running as a plain server and its configuration would change; stop it first".into(),
        ),
        ServerState::Protected => {
            let hosts = |h: &str, f: Option<&FailoverSpec>| {
                f.map(|f| (h.to_string(), f.standby_hosts.clone()))
            };
            let was = hosts(&row.spec.host, row.failover.as_ref().map(|f| &f.spec));
            let now = hosts(&new.server.host, new.failover.as_ref());
            if was.is_some() && was == now {
                Ok(true)
            } else {
                Err("failover is running and the change moves its nodes (host, standby_hosts, or failover added or removed); stop failover first".into())
            }
        }
    }
}

fn toml_table() -> toml::map::Map<String, toml::Value> {
    toml::map::Map::new()
}

/// The request field that an agent configuration key comes from.
fn agent_key_to_field(key: &str) -> String {
    match key {
        k if k.starts_with("service.command") => "service.command".into(),
        k if k.starts_with("service.env") => "service.env".into(),
        k if k.starts_with("health") => format!("service.{k}"),
        "activation.mode" => "mode".into(),
        "activation.failback" => "failback".into(),
        "service.standby" => "standby".into(),
        k => k.to_string(),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
