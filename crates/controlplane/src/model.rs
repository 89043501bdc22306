//! What the control plane keeps: trading servers, the failover service added to them, and the
//! nodes (one agent each) that failover places on hosts. Validation lives here, so the REST API,
//! the CLI and an import all refuse the same things with the same words.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One wrong field of a request: which, and why. The API answers 422 with all of them at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field (`service.command`, `failover.standby_hosts[1]`).
    pub field: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A health check of the service, as `[health]` in an agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDef {
    /// URL answered 2xx when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Command whose exit 0 means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// The program a trading server runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    /// argv.
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Optional health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthDef>,
}

/// `POST /api/servers`: a trading server, the host it runs on and its service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Unique name: letters, digits, `-`, `_`, `.`; it names the failover group too.
    pub name: String,
    /// The host it runs on (`local` for the host built into `understudy serve`).
    #[serde(default = "local_host")]
    pub host: String,
    /// The program.
    pub service: ServiceDef,
}

fn local_host() -> String {
    LOCAL_HOST.to_string()
}

/// The host built into `understudy serve`.
pub const LOCAL_HOST: &str = "local";

/// Standby type, as document 000 offers it: the agent's own `service.standby`.
pub use understudy_status::StandbyType as Standby;

/// How the nodes of the group become active. `hot` is not offered: a failover group whose every
/// node insists on being Hot has nobody standing by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Campaign for the group lock; Hot while holding it.
    Trylock,
    /// Like trylock, but after an outage longer than the heartbeat delay a person decides.
    Tryheartbeat,
    /// Hot only when told.
    Warm,
}

impl Activation {
    /// The `activation.mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Trylock => "trylock",
            Activation::Tryheartbeat => "tryheartbeat",
            Activation::Warm => "warm",
        }
    }
}

/// `PUT /api/servers/{name}/failover`: the failover service added to a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSpec {
    /// Standby type of every standby node.
    pub standby: Standby,
    /// One standby node per entry, on that host (a host may appear more than once).
    pub standby_hosts: Vec<String>,
    /// Activation mode of every node.
    #[serde(default = "default_activation")]
    pub mode: Activation,
    /// The node that becomes active at start (a node name, e.g. `gw-2`); default the server's
    /// own node (`<server>-1`). When given, its agent has the higher `node.priority`: when
    /// several standbys could take over, it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<String>,
    /// `activation.failback` (a duration such as `"30s"`): once the preferred node has been a
    /// ready standby this long, the active hands activity back to it. None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<String>,
}

fn default_activation() -> Activation {
    Activation::Trylock
}

/// Most standbys one server may have: enough for any real group, few enough that a typo
/// (`standby_hosts` of a thousand entries) cannot start a thousand agents.
pub const MAX_STANDBYS: usize = 8;

/// True when `s` can name a server, node or host: it becomes part of file names and of the agent's
/// `node.name`/`node.group`, which accept only these characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

impl ServerSpec {
    /// Every wrong field, or nothing.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if !valid_name(&self.name) {
            errs.push(FieldError::new(
                "name",
                format!(
                    "{:?} is not a valid server name: 1-48 letters, digits, '-', '_' or '.', not starting with '.'",
                    self.name
                ),
            ));
        }
        if !valid_name(&self.host) {
            errs.push(FieldError::new(
                "host",
                format!("{:?} is not a valid host name", self.host),
            ));
        }
        self.service.validate("service", &mut errs);
        errs
    }
}

impl ServiceDef {
    fn validate(&self, at: &str, errs: &mut Vec<FieldError>) {
        match self.command.first() {
            None => errs.push(FieldError::new(
                format!("{at}.command"),
                "is empty; give the program and its arguments",
            )),
            Some(p) if p.is_empty() => errs.push(FieldError::new(
                format!("{at}.command"),
                "the program name is empty",
            )),
            Some(p) if understudy_agent::config::find_program(p).is_none() => {
                errs.push(FieldError::new(
                    format!("{at}.command"),
                    format!("program {p:?} is not found (not executable, or not in PATH)"),
                ))
            }
            Some(_) => {}
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                errs.push(FieldError::new(
                    format!("{at}.env"),
                    format!("{k:?} is not an environment variable name"),
                ));
            } else if k.starts_with("UNDERSTUDY_") {
                errs.push(FieldError::new(
                    format!("{at}.env.{k}"),
                    "UNDERSTUDY_* variables are set by the agent",
                ));
            }
        }
        if let Some(h) = &self.health {
            match (&h.http, &h.command) {
                (Some(_), Some(_)) => errs.push(FieldError::new(
                    format!("{at}.health"),
                    "give either http or command, not both",
                )),
                (None, None) => errs.push(FieldError::new(
                    format!("{at}.health"),
                    "give http (a URL) or command (argv)",
                )),
                (Some(u), None) if !u.starts_with("http://") && !u.starts_with("https://") => errs
                    .push(FieldError::new(
                        format!("{at}.health.http"),
                        format!("{u:?} is not an http:// or https:// URL"),
                    )),
                _ => {}
            }
        }
    }
}

/// One node of a failover group as placed: its agent's name, host and admin port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// `node.name` (`<server>-<n>`).
    pub name: String,
    /// The host that runs its agent.
    pub host: String,
    /// The agent's admin port on that host.
    pub admin_port: u16,
}

impl FailoverSpec {
    /// Every wrong field, or nothing. `server` is the server the failover is added to.
    pub fn validate(&self, server: &ServerSpec) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.standby_hosts.is_empty() {
            errs.push(FieldError::new(
                "standby_hosts",
                "needs at least one host for a standby (\"local\" for this machine)",
            ));
        }
        if self.standby_hosts.len() > MAX_STANDBYS {
            errs.push(FieldError::new(
                "standby_hosts",
                format!("at most {MAX_STANDBYS} standbys"),
            ));
        }
        for (i, h) in self.standby_hosts.iter().enumerate() {
            if !valid_name(h) {
                errs.push(FieldError::new(
                    format!("standby_hosts[{i}]"),
                    format!("{h:?} is not a valid host name"),
                ));
            }
        }
        if let Some(p) = &self.preferred {
            let n = self.standby_hosts.len() + 1;
            if !(1..=n).any(|i| node_name(&server.name, i) == *p) {
                errs.push(FieldError::new(
                    "preferred",
                    format!(
                        "{p:?} is not a node of this group; nodes are {}",
                        (1..=n)
                            .map(|i| node_name(&server.name, i))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        errs
    }

    /// The preferred node's name.
    pub fn preferred_node(&self, server: &str) -> String {
        self.preferred
            .clone()
            .unwrap_or_else(|| node_name(server, 1))
    }
}

/// The name of node `i` (1-based) of server `server`'s group; node 1 runs on the server's host.
pub fn node_name(server: &str, i: usize) -> String {
    format!("{server}-{i}")
}

/// Where a server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Nothing runs.
    Stopped,
    /// The service runs as a plain, unprotected server.
    Running,
    /// The service runs protected by failover.
    Protected,
}

impl ServerState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Stopped => "stopped",
            ServerState::Running => "running",
            ServerState::Protected => "protected",
        }
    }

    /// The word back; unknown words are read as stopped (a later migration's word never makes an
    /// older reader think something runs).
    pub fn parse(s: &str) -> ServerState {
        match s {
            "running" => ServerState::Running,
            "protected" => ServerState::Protected,
            _ => ServerState::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerSpec {
        ServerSpec {
            name: "gw".into(),
            host: "local".into(),
            service: ServiceDef {
                command: vec!["sleep".into(), "1".into()],
                env: BTreeMap::new(),
                health: None,
            },
        }
    }

    #[test]
    fn every_wrong_field_is_named() {
        let mut s = server();
        s.name = "../etc".into();
        s.service.command = vec![];
        s.service
            .env
            .insert("UNDERSTUDY_ROLE".into(), "active".into());
        let fields: Vec<String> = s.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["name", "service.command", "service.env.UNDERSTUDY_ROLE"]
        );
    }

    #[test]
    fn failover_checks_hosts_count_and_preferred() {
        let s = server();
        let f = FailoverSpec {
            standby: Standby::Hot,
            standby_hosts: vec!["local".into(), "bad host".into()],
            mode: Activation::Trylock,
            preferred: Some("gw-9".into()),
            failback: None,
        };
        let fields: Vec<String> = f.validate(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["standby_hosts[1]", "preferred"]);
        let ok = FailoverSpec {
            standby_hosts: vec!["local".into()],
            preferred: Some("gw-2".into()),
            ..f
        };
        assert!(ok.validate(&s).is_empty());
        assert_eq!(ok.preferred_node("gw"), "gw-2");
    }
}
