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

use crate::host::{agent_key, server_key, tail, HostError, LocalHost};
use crate::lifecycle::{decide, Refusal, Situation, Step};
use crate::model::{
    node_name, FailoverSpec, FieldError, NodeSpec, ServerSpec, ServerState, LOCAL_HOST,
};
use crate::store::{ServerRow, Store, StoreError};

/// Why an operation did not happen. Every variant says what was left unchanged.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// No such server.
    #[error("no server named {0:?}")]
    NotFound(String),
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
/// Grace between SIGTERM and SIGKILL when stopping an agent or a plain server.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the collector last learnt from one node's agent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeLive {
    /// The agent's `GET /status`, when it answered.
    pub status: Option<Value>,
    /// Why it did not, when it did not.
    pub error: Option<String>,
    /// Unix ms of the last answer.
    pub last_ok_unix_ms: Option<u64>,
}

/// The control plane.
pub struct Plane {
    /// The database.
    pub store: Store,
    /// The local host.
    pub host: LocalHost,
    /// What the collector last saw, by node name.
    pub live: Mutex<BTreeMap<String, NodeLive>>,
    /// Held by every step that starts or stops processes, so the collector's restart of a dead
    /// agent never races a start or a stop of the same group.
    ops: tokio::sync::Mutex<()>,
    /// Dead agents restarted, by node: when it may next be restarted and the current back-off.
    restarts: Mutex<BTreeMap<String, (tokio::time::Instant, Duration)>>,
    http: reqwest::Client,
    /// Where new failure events are pushed, if anywhere.
    pub notifier: Option<crate::notify::Notifier>,
}

impl Plane {
    /// A control plane over `data` (created if needed), starting agents with `exe`.
    pub fn open(data: &Path, exe: PathBuf) -> Result<Plane, PlaneError> {
        for sub in ["", "nodes", "locks", "logs"] {
            let d = data.join(sub);
            std::fs::create_dir_all(&d).map_err(|source| HostError::Io { path: d, source })?;
        }
        let store = Store::open(data)?;
        Ok(Plane {
            store,
            host: LocalHost {
                exe,
                data: data.to_path_buf(),
            },
            live: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            restarts: Mutex::new(BTreeMap::new()),
            notifier: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                .no_proxy()
                .build()
                .unwrap_or_default(),
        })
    }

    /// The hosts that can run processes. Today only the built-in one.
    pub fn hosts(&self) -> Vec<String> {
        vec![LOCAL_HOST.to_string()]
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
        hosts
            .iter()
            .filter(|(_, h)| !known.contains(h))
            .map(|(field, h)| FieldError {
                field: field.clone(),
                reason: format!(
                    "host {h:?} is not connected to this control plane; known hosts: {}",
                    known.join(", ")
                ),
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
    pub fn start_server(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let row = self.row(name)?;
        let next = self.check(&row, Step::StartServer)?;
        let pid = self.host.start_plain(name, &row.spec.service)?;
        let key = server_key(name);
        self.store.put_process(&key, pid, &key, unix_ms())?;
        self.store.set_state(name, next)?;
        info!(server = %name, pid, "plain server started");
        self.row(name)
    }

    /// Stop a plain server.
    pub async fn stop_server(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops.lock().await;
        let row = self.row(name)?;
        let next = self.check(&row, Step::StopServer)?;
        let key = server_key(name);
        if let Some((pid, marker)) = self.store.process(&key)? {
            LocalHost::stop(pid, &marker, STOP_GRACE).await;
        }
        self.store.delete_process(&key)?;
        self.store.set_state(name, next)?;
        info!(server = %name, "server stopped");
        self.row(name)
    }

    /// Remove a stopped server.
    pub fn delete_server(&self, name: &str) -> Result<(), PlaneError> {
        let row = self.row(name)?;
        self.check(&row, Step::DeleteServer)?;
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
        self.host.data.join("nodes").join(format!("{node}.toml"))
    }

    fn lock_path(&self, server: &str) -> PathBuf {
        self.host.data.join("locks").join(format!("{server}.lock"))
    }

    /// The agent configuration of one node, as TOML text.
    fn agent_config(&self, server: &ServerSpec, f: &FailoverSpec, node: &NodeSpec) -> String {
        let mut t = toml_table();
        let mut n = toml_table();
        n.insert("name".into(), node.name.clone().into());
        n.insert("group".into(), server.name.clone().into());
        n.insert(
            "admin".into(),
            format!("127.0.0.1:{}", node.admin_port).into(),
        );
        t.insert("node".into(), toml::Value::Table(n));
        let mut a = toml_table();
        a.insert("mode".into(), f.mode.as_str().into());
        a.insert(
            "lock_file".into(),
            self.lock_path(&server.name).display().to_string().into(),
        );
        t.insert("activation".into(), toml::Value::Table(a));
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
    pub fn put_failover(&self, name: &str, f: FailoverSpec) -> Result<ServerRow, PlaneError> {
        let row = self.row(name)?;
        self.check(&row, Step::AddFailover)?;
        let mut errs = f.validate(&row.spec);
        errs.extend(
            self.unknown_hosts(
                &f.standby_hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (format!("standby_hosts[{i}]"), h.clone()))
                    .collect::<Vec<_>>(),
            ),
        );
        if !errs.is_empty() {
            return Err(PlaneError::Invalid(errs));
        }
        // Keep the admin ports of nodes that already had one, so a replaced configuration does not
        // move a node's address under an operator's scripts.
        let old: BTreeMap<String, u16> = row
            .failover
            .as_ref()
            .map(|o| {
                o.nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.admin_port))
                    .collect()
            })
            .unwrap_or_default();
        let hosts = std::iter::once(row.spec.host.clone()).chain(f.standby_hosts.iter().cloned());
        let mut nodes = Vec::new();
        for (i, host) in hosts.enumerate() {
            let name = node_name(&row.spec.name, i + 1);
            let admin_port = match old.get(&name) {
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
            let text = self.agent_config(&row.spec, &f, node);
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
        self.store.put_failover(name, &f, &nodes)?;
        info!(server = %name, nodes = nodes.len(), "failover service added");
        self.row(name)
    }

    /// Remove a server's failover configuration; the server stays as a plain server.
    pub fn delete_failover(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let row = self.row(name)?;
        self.check(&row, Step::DeleteFailover)?;
        if let Some(f) = &row.failover {
            self.forget_nodes(&f.nodes);
        }
        self.store.delete_failover(name)?;
        info!(server = %name, "failover service deleted");
        self.row(name)
    }

    async fn admin_status(&self, port: u16) -> Option<Value> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn start_node(
        &self,
        row: &ServerRow,
        f: &FailoverSpec,
        node: &NodeSpec,
    ) -> Result<u32, PlaneError> {
        let path = self.node_config_path(&node.name);
        let text = self.agent_config(&row.spec, f, node);
        std::fs::write(&path, text).map_err(|source| HostError::Io {
            path: path.clone(),
            source,
        })?;
        let pid = self.host.start_agent(&node.name, &path)?;
        let key = agent_key(&node.name);
        self.store.put_process(&key, pid, &key, unix_ms())?;
        let deadline = tokio::time::Instant::now() + AGENT_UP_TIMEOUT;
        loop {
            if self.admin_status(node.admin_port).await.is_some() {
                return Ok(pid);
            }
            if !crate::host::running(pid) || tokio::time::Instant::now() > deadline {
                let log = tail(&self.host.log_path(&agent_key(&node.name)), 5);
                return Err(PlaneError::Start(format!(
                    "the agent of {} did not come up on 127.0.0.1:{}: {}",
                    node.name,
                    node.admin_port,
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

    async fn stop_node(&self, node: &NodeSpec) {
        let key = agent_key(&node.name);
        if let Ok(Some((pid, marker))) = self.store.process(&key) {
            LocalHost::stop(pid, &marker, STOP_GRACE).await;
        }
        let _ = self.store.delete_process(&key);
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
        let preferred = f.spec.preferred_node(name);
        let mut order: Vec<&NodeSpec> = f.nodes.iter().filter(|n| n.name == preferred).collect();
        order.extend(f.nodes.iter().filter(|n| n.name != preferred));
        let mut started: Vec<&NodeSpec> = Vec::new();
        let result = async {
            for (i, node) in order.iter().enumerate() {
                self.start_node(&row, &f.spec, node).await?;
                started.push(node);
                if i == 0 && f.spec.mode != crate::model::Activation::Warm {
                    self.wait_hot(node).await?;
                }
            }
            Ok::<(), PlaneError>(())
        }
        .await;
        if let Err(e) = result {
            warn!(server = %name, "start failover failed, stopping what started: {e}");
            for node in started.iter().rev() {
                self.stop_node(node).await;
            }
            return Err(e);
        }
        self.store.set_failover_running(name, true)?;
        self.store.set_state(name, next)?;
        info!(server = %name, %preferred, "failover started");
        self.row(name)
    }

    async fn wait_hot(&self, node: &NodeSpec) -> Result<(), PlaneError> {
        let deadline = tokio::time::Instant::now() + HOT_TIMEOUT;
        loop {
            let st = self.admin_status(node.admin_port).await;
            if st
                .as_ref()
                .and_then(|s| s.get("mode"))
                .and_then(Value::as_str)
                == Some("Hot")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let why = st
                    .as_ref()
                    .and_then(|s| s.get("waiting"))
                    .and_then(Value::as_str)
                    .unwrap_or("no answer")
                    .to_string();
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
    async fn active_node(&self, nodes: &[NodeSpec]) -> Option<(NodeSpec, Value)> {
        for n in nodes {
            if let Some(st) = self.admin_status(n.admin_port).await {
                if st.get("mode").and_then(Value::as_str) == Some("Hot") {
                    return Some((n.clone(), st));
                }
            }
        }
        None
    }

    /// Stop failover: every standby's agent and service stop; the active node keeps its service
    /// running and its agent becomes the server's process (tracked under the server's key).
    pub async fn stop_failover(&self, name: &str) -> Result<ServerRow, PlaneError> {
        let _ops = self.ops.lock().await;
        let row = self.row(name)?;
        let next = self.check(&row, Step::StopFailover)?;
        let Some(f) = row.failover.clone() else {
            return Err(PlaneError::NotFound(name.to_string()));
        };
        let active = self.active_node(&f.nodes).await.map(|(n, _)| n);
        for node in &f.nodes {
            if Some(&node.name) != active.as_ref().map(|a| &a.name) {
                self.stop_node(node).await;
            }
        }
        if let Some(a) = &active {
            let akey = agent_key(&a.name);
            if let Some((pid, marker)) = self.store.process(&akey)? {
                self.store
                    .put_process(&server_key(name), pid, &marker, unix_ms())?;
                self.store.delete_process(&akey)?;
            }
        }
        self.store.set_failover_running(name, false)?;
        self.store.set_state(name, next)?;
        info!(server = %name, active = ?active.map(|a| a.name), "failover stopped");
        self.row(name)
    }

    /// Hand activity to a ready standby: asks the active node's agent.
    pub async fn switchover(&self, name: &str, to: Option<String>) -> Result<Value, PlaneError> {
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
            }));
        };
        let mut url = format!("http://127.0.0.1:{}/service/switchover", active.admin_port);
        if let Some(t) = &to {
            url.push_str(&format!("?to={t}"));
        }
        let resp = self
            .http
            .post(url)
            .header("X-Understudy", "1")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| PlaneError::Start(format!("cannot reach {}: {e}", active.name)))?;
        let code = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !code.is_success() {
            return Err(PlaneError::Refused(Refusal {
                reason: format!(
                    "{} refused the switchover: {}",
                    active.name,
                    body.get("error").and_then(Value::as_str).unwrap_or("")
                ),
                hint: "wait until a standby is ready (see the dashboard), then try again".into(),
            }));
        }
        if let Some(t) = &to {
            // An agent that cannot honour the choice hands over to whichever standby wins; never
            // report that as the chosen one.
            let got = body.get("to").and_then(Value::as_str).unwrap_or("");
            if got != t {
                return Err(PlaneError::Start(format!(
                    "asked to switch over to {t}, but {} handed over to {got:?}: its agent does not support choosing the standby",
                    active.name
                )));
            }
        }
        Ok(body)
    }

    /// The whole inventory with what the collector last saw, for the dashboard and the API.
    pub fn view(&self) -> Result<Value, PlaneError> {
        let live = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        let mut servers = Vec::new();
        for row in self.store.servers()? {
            servers.push(self.server_view(&row, &live)?);
        }
        Ok(json!({ "servers": servers, "hosts": self.hosts() }))
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
        let proc_ = self.store.process(&skey)?;
        let process_running = proc_
            .as_ref()
            .map(|(p, m)| LocalHost::is_ours(*p, m))
            .unwrap_or(false);
        let pid = proc_.map(|(p, _)| p);
        let failover = row.failover.as_ref().map(|f| {
            let nodes: Vec<Value> = f
                .nodes
                .iter()
                .map(|n| {
                    let l = live.get(&n.name).cloned().unwrap_or_default();
                    let st = l.status.as_ref();
                    json!({
                        "name": n.name,
                        "host": n.host,
                        "admin": format!("127.0.0.1:{}", n.admin_port),
                        "preferred": n.name == f.spec.preferred_node(name),
                        "mode": st.and_then(|s| s.get("mode")).cloned(),
                        "epoch": st.and_then(|s| s.get("epoch")).cloned(),
                        "since": st.and_then(|s| s.get("since")).cloned(),
                        "ready": st.and_then(|s| s.get("ready")).cloned(),
                        "waiting": st.and_then(|s| s.get("waiting")).cloned(),
                        "service": st.and_then(|s| s.get("service")).cloned(),
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
                "running": f.running,
                "active": active,
                "nodes": if f.running { nodes } else { f.nodes.iter().map(|n| json!({
                    "name": n.name, "host": n.host, "admin": format!("127.0.0.1:{}", n.admin_port),
                    "preferred": n.name == f.spec.preferred_node(name),
                })).collect() },
            })
        });
        Ok(json!({
            "name": name,
            "host": row.spec.host,
            "state": row.state.as_str(),
            "service": row.spec.service,
            "process": { "pid": pid, "running": process_running },
            "created_unix_ms": row.created_unix_ms,
            "failure_events": self.store.failure_event_count(name)?,
            "failover": failover,
        }))
    }

    /// One pass of the collector: ask every node of every running failover for its status, and
    /// store the takeovers it reports. Also notices plain servers whose process ended.
    pub async fn collect(&self, with_events: bool) {
        let Ok(rows) = self.store.servers() else {
            return;
        };
        for row in rows {
            let name = row.spec.name.clone();
            if row.state == ServerState::Running {
                let skey = server_key(&name);
                if let Ok(Some((pid, marker))) = self.store.process(&skey) {
                    if !LocalHost::is_ours(pid, &marker) {
                        warn!(server = %name, pid, "the server's process ended by itself");
                        let _ = self.store.delete_process(&skey);
                        let _ = self.store.set_state(&name, ServerState::Stopped);
                    }
                }
            }
            let Some(f) = row.failover else { continue };
            if !f.running {
                continue;
            }
            self.restart_dead_agents(&name).await;
            for n in &f.nodes {
                let st = self.admin_status(n.admin_port).await;
                let entry = NodeLive {
                    error: st.is_none().then(|| {
                        format!("the agent does not answer on 127.0.0.1:{}", n.admin_port)
                    }),
                    last_ok_unix_ms: st.as_ref().map(|_| unix_ms()),
                    status: st,
                };
                // A node whose state or epoch moved has a takeover to report: fetch its events now
                // rather than at the next periodic pass, so the failure event shows within a
                // collector interval of the takeover.
                let mut moved = false;
                if let Ok(mut live) = self.live.lock() {
                    let prev = live.get(&n.name);
                    let prev_ok = prev.and_then(|l| l.last_ok_unix_ms);
                    let key = |l: Option<&Value>| {
                        l.map(|s| (s.get("mode").cloned(), s.get("epoch").cloned()))
                    };
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

    /// A node's agent that died (kill -9, crash, OOM) is started again, as a service manager would:
    /// it rejoins its group as a standby. The back-off doubles from 1 s to 30 s per restart and
    /// resets after a minute without one.
    async fn restart_dead_agents(&self, server: &str) {
        let Ok(_ops) = self.ops.try_lock() else {
            return;
        };
        // Re-read under the lock: a stop may have just finished.
        let Ok(Some(row)) = self.store.server(server) else {
            return;
        };
        let Some(f) = row.failover.clone().filter(|f| f.running) else {
            return;
        };
        let now = tokio::time::Instant::now();
        for n in &f.nodes {
            let key = agent_key(&n.name);
            let alive = matches!(self.store.process(&key), Ok(Some((pid, m))) if LocalHost::is_ours(pid, &m));
            if alive {
                continue;
            }
            let due = {
                let Ok(mut r) = self.restarts.lock() else {
                    return;
                };
                let (at, backoff) = r
                    .get(&n.name)
                    .copied()
                    .unwrap_or((now, Duration::from_secs(1)));
                if now < at {
                    false
                } else {
                    let quiet = now.saturating_duration_since(at) > Duration::from_secs(60);
                    let next = if quiet {
                        Duration::from_secs(1)
                    } else {
                        (backoff * 2).min(Duration::from_secs(30))
                    };
                    r.insert(n.name.clone(), (now + backoff, next));
                    true
                }
            };
            if !due {
                continue;
            }
            warn!(server, node = %n.name, "the node's agent is gone; starting it again");
            if let Err(e) = self.start_node(&row, &f.spec, n).await {
                warn!(server, node = %n.name, "restart failed: {e}");
            }
        }
    }

    async fn collect_events(&self, server: &str, n: &NodeSpec) {
        let Ok(r) = self
            .http
            .get(format!("http://127.0.0.1:{}/events", n.admin_port))
            .send()
            .await
        else {
            return;
        };
        let Ok(ev) = r.json::<Value>().await else {
            return;
        };
        let Some(tk) = ev.get("takeovers").and_then(Value::as_array) else {
            return;
        };
        for t in tk {
            // Only takeovers that reached a durable epoch are failure events of the group.
            if t.get("epoch").and_then(Value::as_u64).unwrap_or(0) == 0 {
                continue;
            }
            match self.store.add_failure_event(server, &n.name, t) {
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
                    let _ = self.store.update_failure_event(server, &n.name, t);
                }
                Err(e) => warn!("cannot store a failure event: {e}"),
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
        "service.standby" => "standby".into(),
        k => k.to_string(),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
