//! The agent configuration the harness writes: a typed value serialised by serde and `toml`, so
//! paths and commands are escaped by the TOML writer, not by hand.
//!
//! Tests that exercise keys the typed value does not name set them as raw TOML values
//! ([`Overrides`] and extra sections, see [`AgentConfig::render`]), applied over the typed value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Serialize, Serializer};
use understudy_status::{ActivationMode, StandbyType};

/// One agent's configuration file.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[activation]`.
    pub activation: ActivationSection,
    /// `[service]`.
    pub service: ServiceSection,
    /// `[health]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSection>,
    /// `[etcd]` (instead of `activation.lock_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSection>,
}

/// `[node]`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSection {
    /// `node.name`.
    pub name: String,
    /// `node.group`.
    pub group: String,
    /// `node.admin`: the admin API's listen address.
    pub admin: String,
    /// `node.journal_file`. Unset, an etcd group's node keeps its timeline under
    /// /var/lib/understudy, shared by every test of the same group and node names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_file: Option<PathBuf>,
}

/// `[activation]`.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationSection {
    /// `activation.mode`, written as the config's word (`"trylock"`).
    #[serde(serialize_with = "config_word")]
    pub mode: ActivationMode,
    /// `activation.lock_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_file: Option<PathBuf>,
    /// `activation.heartbeat_interval`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<Duration>,
}

/// `[service]`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSection {
    /// `service.command`.
    pub command: Vec<String>,
    /// `service.standby`.
    pub standby: StandbyType,
    /// `service.stop_timeout`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Duration>,
    /// `service.restart_backoff`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub restart_backoff: Option<Duration>,
    /// `service.restart_backoff_max`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub restart_backoff_max: Option<Duration>,
}

/// `[health]`: an HTTP check.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSection {
    /// `health.http`: the URL that must answer 200.
    pub http: String,
    /// `health.interval`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// `health.timeout`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// `health.failures`: consecutive failures that fail the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// `health.start_period`.
    #[serde(serialize_with = "duration", skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
}

/// `[etcd]`.
#[derive(Debug, Clone, Serialize)]
pub struct EtcdSection {
    /// `etcd.endpoints`.
    pub endpoints: Vec<String>,
}

/// An activation mode as the config files of the docs write it (the agent reads any case).
fn config_word<S: Serializer>(m: &ActivationMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.config_name())
}

/// A duration as the agent reads it (`"250ms"`, `"1s"`).
fn duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

impl AgentConfig {
    /// A node `name` of `group` at `admin` in `mode`, running `command` as a `standby` standby.
    pub fn new(
        name: &str,
        group: &str,
        admin: &str,
        mode: ActivationMode,
        command: Vec<String>,
        standby: StandbyType,
    ) -> AgentConfig {
        AgentConfig {
            node: NodeSection {
                name: name.into(),
                group: group.into(),
                admin: admin.into(),
                journal_file: None,
            },
            activation: ActivationSection {
                mode,
                lock_file: None,
                heartbeat_interval: None,
            },
            service: ServiceSection {
                command,
                standby,
                stop_timeout: None,
                restart_backoff: None,
                restart_backoff_max: None,
            },
            health: None,
            etcd: None,
        }
    }

    /// The file's text: this value, then `activation` and `service` over its sections, then
    /// the sections of `extra` (a TOML document) merged in.
    pub fn render(
        &self,
        activation: &Overrides,
        service: &Overrides,
        extra: &str,
    ) -> anyhow::Result<String> {
        let mut doc = table_of(self).context("serialising an agent config")?;
        for (section, o) in [("activation", activation), ("service", service)] {
            let Some(toml::Value::Table(t)) = doc.get_mut(section) else {
                continue;
            };
            for key in &o.removed {
                t.remove(key);
            }
            for (key, raw) in &o.values {
                let v = raw_value(raw).with_context(|| format!("{section}.{key} = {raw}"))?;
                t.insert(key.clone(), v);
            }
        }
        merge(&mut doc, extra).context("extra sections of an agent config")?;
        Ok(toml::to_string(&doc)?)
    }
}

/// `v` as a TOML document.
pub fn table_of(v: &impl Serialize) -> anyhow::Result<toml::Table> {
    match toml::Value::try_from(v)? {
        toml::Value::Table(t) => Ok(t),
        other => anyhow::bail!("not a TOML table: {other}"),
    }
}

/// Merges the TOML document `extra` into `doc`: a table's keys into the table of the same
/// name, an array of tables (`[[client]]`) after the array of the same name, anything else set.
pub fn merge(doc: &mut toml::Table, extra: &str) -> Result<(), toml::de::Error> {
    let extra: toml::Table = extra.parse()?;
    for (key, v) in extra {
        match (doc.get_mut(&key), v) {
            (Some(toml::Value::Table(have)), toml::Value::Table(more)) => have.extend(more),
            (Some(toml::Value::Array(have)), toml::Value::Array(more)) => have.extend(more),
            (_, v) => {
                doc.insert(key, v);
            }
        }
    }
    Ok(())
}

/// Raw TOML values by key over one section of an [`AgentConfig`], and keys taken out of it.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    values: BTreeMap<String, String>,
    removed: BTreeSet<String>,
}

impl Overrides {
    /// Sets `key` to the TOML value written `raw` (`"1s"`, `["a", "b"]`, `3`).
    pub fn insert(&mut self, key: impl Into<String>, raw: impl Into<String>) {
        let key = key.into();
        self.removed.remove(&key);
        self.values.insert(key, raw.into());
    }

    /// Takes `key` out of the section, also when the typed value sets it; the raw value it had
    /// here, if any.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.removed.insert(key.to_string());
        self.values.remove(key)
    }
}

/// One TOML value written as text (`"1s"`, `["sh", "-c", "x"]`, `3`).
fn raw_value(raw: &str) -> anyhow::Result<toml::Value> {
    use serde::Deserialize;
    Ok(toml::Value::deserialize(toml::de::ValueDeserializer::new(
        raw,
    ))?)
}

/// A TOML string literal (JSON's escaping is a subset of TOML basic strings).
pub fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A TOML array of strings.
pub fn arr(v: &[&str]) -> String {
    serde_json::Value::from(v.to_vec()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_extra_sections_land_in_their_tables() {
        let mut c = AgentConfig::new(
            "a",
            "g",
            "127.0.0.1:1",
            ActivationMode::TryLock,
            vec!["x \"y\"".into()],
            StandbyType::Hot,
        );
        c.activation.lock_file = Some("/tmp/l".into());
        c.service.stop_timeout = Some(Duration::from_millis(1500));
        let mut svc = Overrides::default();
        svc.insert("standby", q("cold"));
        let mut act = Overrides::default();
        act.remove("lock_file");
        let text = c
            .render(
                &act,
                &svc,
                "[service]\nactivate_hook = [\"true\"]\n[etcd]\nendpoints = [\"http://e:2379\"]\n",
            )
            .expect("render");
        let back: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(back["activation"]["mode"].as_str(), Some("trylock"));
        assert!(back["activation"].get("lock_file").is_none());
        assert_eq!(back["service"]["standby"].as_str(), Some("cold"));
        assert_eq!(back["service"]["stop_timeout"].as_str(), Some("1s 500ms"));
        assert_eq!(back["service"]["command"][0].as_str(), Some("x \"y\""));
        assert_eq!(back["service"]["activate_hook"][0].as_str(), Some("true"));
        assert_eq!(back["etcd"]["endpoints"][0].as_str(), Some("http://e:2379"));
        assert!(c.render(&act, &Overrides::default(), "[x").is_err());
    }
}
