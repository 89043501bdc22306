//! The words and the records every part of understudy shares: the vocabulary of DESIGN.md
//! ([`State`], [`ActivationMode`], [`StandbyType`], [`Role`], [`ServiceState`]) and the JSON the
//! agent writes — `GET /status` ([`Status`]), the group's membership records ([`MemberRecord`],
//! `GET /group` as [`Group`]) and the admin API's other answers. The agent writes them; the
//! service SDK, the CLI, `understudy top`, the control plane and the group's other agents read
//! them, all through these types. Only serde, so anything can depend on it.
//!
//! # Names
//!
//! - A node's **state** is `Hot` (active: its service serves) or `Warm` (standby): [`State`].
//!   The JSON calls it `mode`, document 002's word, kept on the wire
//!   (`GET /service/activationmode` answers `{"mode":"Hot","name":"TryLock"}`); in Rust it is
//!   [`Node::state`].
//! - How a node decides to become Hot is its **activation mode** (`activation.mode`):
//!   [`ActivationMode`]. The JSON calls it `name`, again document 002's word; in Rust it is
//!   [`Node::activation`].
//! - The service's **role** is `active` or `standby` ([`Role`], `UNDERSTUDY_ROLE`): the node's
//!   state as its service sees it. How ready a standby service is, is its **standby type**
//!   ([`StandbyType`]: hot, warm, cold). "Primary" is not our word; it appears only where a
//!   source document is quoted.
//!
//! # Reading and adding fields
//!
//! Readers ignore fields they do not know, so a newer agent's answer parses in an older reader. A
//! field that every agent has always written is required; a field added later is optional, so
//! an older agent's answer still parses in a newer reader. Adding one is one line in the struct
//! it belongs to (and the line in the agent that sets it):
//!
//! ```
//! # #[derive(serde::Deserialize)] struct Example {
//! /// How far the standby's copy trails the active's, in milliseconds.
//! #[serde(default)]
//! pub replication_lag_ms: Option<u64>,
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's state: what `mode` says in `/status`, `/service/activationmode` and the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Active: the node holds the group and its service serves.
    Hot,
    /// Standby: admin API up, the service standing by (or not started, cold standby).
    Warm,
}

impl State {
    /// The word on the wire (`"Hot"`, `"Warm"`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Hot => "Hot",
            State::Warm => "Warm",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a node decides to become Hot (document 002's activation modes). Written the way the admin
/// API reports it (`"TryLock"`); read in any case, so a config's `mode = "trylock"` and document
/// 002's `TryLock` both work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationMode {
    /// Hot at once (takes the group lock without waiting; refused if another node holds it).
    Hot,
    /// Warm until an operator says `PUT /service/activationmode/hot`.
    Warm,
    /// Hot while holding the group lock; waits for it in the kernel.
    TryLock,
    /// Like TryLock, but a node that obtains the lock becomes Hot by itself only if the previous
    /// holder's heartbeat is fresher than `heartbeat_delay`.
    TryHeartbeat,
}

impl ActivationMode {
    /// The name the admin API reports (`"TryLock"`, …).
    pub fn api_name(self) -> &'static str {
        match self {
            ActivationMode::Hot => "Hot",
            ActivationMode::Warm => "Warm",
            ActivationMode::TryLock => "TryLock",
            ActivationMode::TryHeartbeat => "TryHeartbeat",
        }
    }

    /// True for the modes that wait for the group lock by themselves.
    pub fn campaigns(self) -> bool {
        matches!(self, ActivationMode::TryLock | ActivationMode::TryHeartbeat)
    }
}

impl fmt::Display for ActivationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

impl Serialize for ActivationMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.api_name())
    }
}

impl<'de> Deserialize<'de> for ActivationMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["hot", "warm", "trylock", "tryheartbeat"];
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "hot" => Ok(ActivationMode::Hot),
            "warm" => Ok(ActivationMode::Warm),
            "trylock" => Ok(ActivationMode::TryLock),
            "tryheartbeat" => Ok(ActivationMode::TryHeartbeat),
            _ => Err(serde::de::Error::unknown_variant(&s, NAMES)),
        }
    }
}

/// How ready a standby's service is (`service.standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyType {
    /// Service running in standby role, mirroring state; told by signal when active.
    Hot,
    /// Service process up, core services not initialized; told by signal when active.
    Warm,
    /// Service not started until the node is Hot.
    Cold,
}

impl StandbyType {
    /// True when the service runs while the node is a standby.
    pub fn runs_while_standby(self) -> bool {
        !matches!(self, StandbyType::Cold)
    }

    /// The word of the config and the JSON (`"hot"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            StandbyType::Hot => "hot",
            StandbyType::Warm => "warm",
            StandbyType::Cold => "cold",
        }
    }
}

impl fmt::Display for StandbyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a service is told (`UNDERSTUDY_ROLE`): the node's state as its service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serving: the only replica of the group allowed to act.
    Active,
    /// Waiting to be told it is active (hot standby: running and mirroring, publishing nothing;
    /// warm standby: up, core services not started).
    Standby,
}

impl Role {
    /// The value of `UNDERSTUDY_ROLE`.
    pub fn as_env(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_env())
    }
}

/// Where the service process is in its life, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// No process.
    Stopped,
    /// Started, not yet known to be up.
    Starting,
    /// Up.
    Running,
    /// Told to stop, not yet gone.
    Stopping,
    /// A word this build does not know (a newer agent's): the record still counts.
    #[serde(other)]
    Unknown,
}

impl ServiceState {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Stopped => "stopped",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node says about itself, the same in `GET /status` and in its membership record (both
/// carry these fields at their top level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `node.name`, unique in the group. JSON: `node`.
    #[serde(rename = "node")]
    pub name: String,
    /// `node.group`.
    pub group: String,
    /// Hot or Warm. JSON: `mode`.
    #[serde(rename = "mode")]
    pub state: State,
    /// The configured activation mode. JSON: `name`.
    #[serde(rename = "name")]
    pub activation: ActivationMode,
    /// The fencing epoch: the one the node is active with, or the newest it had or saw.
    pub epoch: u64,
    /// When the state last changed, Unix milliseconds.
    pub since_unix_ms: u64,
    /// Why a Warm node is not Hot, in words.
    pub waiting: Option<String>,
    /// True while the node holds the group lock (or the etcd claim).
    pub holds_lock: bool,
    /// True when this standby could take over now: its service runs and handles the activate
    /// signal, and it is not backing off after a failure.
    pub ready: bool,
    /// The node's admin API address (`node.admin`).
    pub admin: String,
    /// The agent's process id, on its own host.
    pub agent_pid: u32,
}

/// `GET /status`: the node, and its service in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The node's part (at the top level of the JSON).
    #[serde(flatten)]
    pub node: Node,
    /// [`Node::since_unix_ms`] in RFC 3339, for people.
    pub since: String,
    /// Where the group lock lives: the lock file, or the etcd key of the claim.
    pub lock_file: String,
    /// The protected service.
    pub service: Service,
    /// etcd groups: how long ago this node saw the holder's last renewal (on the holder, its own
    /// last acknowledged one), in milliseconds; absent for lock files or with no holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_age_ms: Option<u64>,
}

impl Status {
    /// True when the node reports itself Hot.
    pub fn is_hot(&self) -> bool {
        self.node.state == State::Hot
    }
}

/// The `service` object of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Where the process is in its life.
    pub state: ServiceState,
    /// Its process id while it runs.
    pub pid: Option<u32>,
    /// The role it was last told, while it runs.
    pub role: Option<Role>,
    /// `service.standby`.
    pub standby: StandbyType,
    /// `service.command`.
    pub command: Vec<String>,
    /// True while the health check passes (always, without one).
    pub healthy: bool,
    /// What the service answered to its last passing `[health] http` check: its JSON, or its
    /// text as a string.
    pub detail: Option<serde_json::Value>,
}

/// A membership record: what one node advertises to the group, rewritten every heartbeat
/// interval and on every change (files beside the lock file, or keys in etcd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node's part (at the top level of the JSON).
    #[serde(flatten)]
    pub node: Node,
    /// When the record was written (files) or received (etcd), Unix milliseconds.
    pub last_seen_unix_ms: u64,
    /// The service's state; `GET /status` has the whole [`Service`].
    pub service: ServiceState,
    /// The service's process id, if it runs.
    pub pid: Option<u32>,
    /// What the service says about itself ([`Service::detail`]) on one line.
    #[serde(default)]
    pub detail: Option<String>,
    /// The standby a switchover hands activity to, while this node steps down: the other
    /// standbys stand aside for it.
    #[serde(default)]
    pub handover_to: Option<String>,
}

/// `GET /group`: every member's record as the node asked has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's name.
    pub group: String,
    /// The node that answered.
    pub asked: String,
    /// One per node, sorted by name.
    pub members: Vec<Member>,
}

/// One member in `GET /group`: its record, and how old it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The record (at the top level of the JSON).
    #[serde(flatten)]
    pub record: MemberRecord,
    /// Milliseconds since the record was last seen, on the answering node's clock.
    pub age_ms: u64,
    /// True when the record was rewritten recently enough for its agent to count as alive.
    pub fresh: bool,
    /// etcd groups, on the holder's row: how long ago the answering node saw its last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_age_ms: Option<u64>,
}

impl Member {
    /// True for a fresh record that says Hot.
    pub fn claims_hot(&self) -> bool {
        self.fresh && self.record.node.state == State::Hot
    }
}

impl Group {
    /// The active's epoch: the highest among fresh records that say Hot. Epochs are unique per
    /// activation, so an older Hot record is one its (probably dead) agent has not yet
    /// refreshed or removed.
    pub fn active_epoch(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.claims_hot())
            .map(|m| m.record.node.epoch)
            .max()
    }

    /// The fresh Hot records at the active's epoch: one when all is well, none while no node is
    /// active, several only if two nodes claim the same epoch.
    pub fn actives(&self) -> Vec<&Member> {
        let top = self.active_epoch();
        self.members
            .iter()
            .filter(|m| m.claims_hot() && Some(m.record.node.epoch) == top)
            .collect()
    }

    /// True for a fresh Hot record of an epoch older than the active's.
    pub fn superseded(&self, m: &Member) -> bool {
        m.claims_hot() && Some(m.record.node.epoch) < self.active_epoch()
    }
}

/// `GET /service/activationmode` (without `epoch`) and the answer to
/// `PUT /service/activationmode/hot` (with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationModeView {
    /// Hot or Warm. JSON: `mode`.
    #[serde(rename = "mode")]
    pub state: State,
    /// The configured activation mode. JSON: `name`.
    #[serde(rename = "name")]
    pub activation: ActivationMode,
    /// The epoch the node is Hot with, after an activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The answer to `POST /service/switchover`: who handed over to whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Switchover {
    /// The node that stepped down.
    pub from: String,
    /// The node that took over.
    pub to: String,
    /// The new active's epoch.
    pub epoch: u64,
    /// From the request to the new active's record saying Hot.
    pub took_ms: f64,
}

/// The body of every error answer of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, in words.
    pub error: String,
    /// The node that holds the group, when an activation is refused because of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, state: State, epoch: u64) -> Node {
        Node {
            name: name.into(),
            group: "g".into(),
            state,
            activation: ActivationMode::TryLock,
            epoch,
            since_unix_ms: 1,
            waiting: None,
            holds_lock: state == State::Hot,
            ready: state == State::Warm,
            admin: "127.0.0.1:7701".into(),
            agent_pid: 10,
        }
    }

    fn member(name: &str, state: State, epoch: u64, fresh: bool) -> Member {
        Member {
            record: MemberRecord {
                node: node(name, state, epoch),
                last_seen_unix_ms: 2,
                service: ServiceState::Running,
                pid: Some(11),
                detail: None,
                handover_to: None,
            },
            age_ms: 3,
            fresh,
            renewal_age_ms: None,
        }
    }

    #[test]
    fn status_keeps_the_contract_field_names() {
        let st = Status {
            node: node("a", State::Hot, 7),
            since: "2026-12-01T00:00:00.001Z".into(),
            lock_file: "/run/g.lock".into(),
            service: Service {
                state: ServiceState::Running,
                pid: Some(42),
                role: Some(Role::Active),
                standby: StandbyType::Hot,
                command: vec!["svc".into()],
                healthy: true,
                detail: Some(json!({"role": "active"})),
            },
            renewal_age_ms: None,
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["node"], "a");
        assert_eq!(v["group"], "g");
        assert_eq!(v["mode"], "Hot");
        assert_eq!(v["name"], "TryLock");
        assert_eq!(v["epoch"], 7);
        assert_eq!(v["since"], "2026-12-01T00:00:00.001Z");
        assert_eq!(v["service"]["state"], "running");
        assert_eq!(v["service"]["pid"], 42);
        assert_eq!(v["service"]["role"], "active");
        assert_eq!(v["service"]["standby"], "hot");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn readers_ignore_fields_they_do_not_know_and_words_they_do_not_know() {
        let mut v = serde_json::to_value(MemberRecord {
            node: node("b", State::Warm, 3),
            last_seen_unix_ms: 5,
            service: ServiceState::Running,
            pid: None,
            detail: None,
            handover_to: None,
        })
        .unwrap();
        v["renewal_age_ms"] = json!(12);
        v["service"] = json!("restarting");
        v.as_object_mut().unwrap().remove("handover_to");
        let rec: MemberRecord = serde_json::from_value(v).unwrap();
        assert_eq!(rec.node.name, "b");
        assert_eq!(rec.service, ServiceState::Unknown);
        assert_eq!(rec.handover_to, None);
        // A field every agent writes is required: a record without it is not one of ours.
        let mut bad = serde_json::to_value(&rec).unwrap();
        bad.as_object_mut().unwrap().remove("epoch");
        assert!(serde_json::from_value::<MemberRecord>(bad).is_err());
        let mut bad = serde_json::to_value(&rec).unwrap();
        bad["mode"] = json!("Active");
        assert!(serde_json::from_value::<MemberRecord>(bad).is_err());
    }

    #[test]
    fn the_activation_mode_answer_is_exactly_the_documented_body() {
        let v = ActivationModeView {
            state: State::Hot,
            activation: ActivationMode::TryLock,
            epoch: None,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"mode":"Hot","name":"TryLock"}"#
        );
        let activated: ActivationModeView =
            serde_json::from_str(r#"{"mode":"Hot","name":"tryheartbeat","epoch":4}"#).unwrap();
        assert_eq!(activated.activation, ActivationMode::TryHeartbeat);
        assert_eq!(activated.epoch, Some(4));
    }

    #[test]
    fn the_active_is_the_fresh_hot_record_with_the_newest_epoch() {
        let g = |members| Group {
            group: "g".into(),
            asked: "a".into(),
            members,
        };
        let one = g(vec![
            member("a", State::Hot, 3, true),
            member("b", State::Warm, 3, true),
        ]);
        assert_eq!(one.actives().len(), 1);
        assert_eq!(one.actives()[0].record.node.name, "a");
        let stale = g(vec![
            member("a", State::Hot, 3, true),
            member("b", State::Hot, 4, true),
            member("c", State::Hot, 9, false),
        ]);
        assert_eq!(stale.active_epoch(), Some(4));
        assert_eq!(stale.actives()[0].record.node.name, "b");
        assert!(stale.superseded(&stale.members[0]));
        assert!(!stale.superseded(&stale.members[2]), "gone, not superseded");
        let two = g(vec![
            member("a", State::Hot, 4, true),
            member("b", State::Hot, 4, true),
        ]);
        assert_eq!(two.actives().len(), 2);
        let none = g(vec![member("a", State::Warm, 4, true)]);
        assert!(none.actives().is_empty());
        let back: Group = serde_json::from_value(serde_json::to_value(&two).unwrap()).unwrap();
        assert_eq!(back, two);
    }
}
