//! The vocabulary of DESIGN.md as types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a node decides to become Hot (document 002's activation modes). Read case-insensitively,
/// so document 002's own spelling (`TryLock`, the name the admin API reports) is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationMode {
    /// Hot at once (takes the group lock without waiting; refused if another node holds it).
    Hot,
    /// Warm until an operator says `PUT /service/activationmode/hot`.
    Warm,
    /// Hot while holding the group lock; waits for it in the kernel.
    #[serde(rename = "trylock")]
    TryLock,
    /// Like TryLock, but a node that obtains the lock becomes Hot by itself only if the previous
    /// holder's heartbeat is fresher than `heartbeat_delay`.
    #[serde(rename = "tryheartbeat")]
    TryHeartbeat,
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

/// The node's state as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Active: the service is serving.
    Hot,
    /// Passive: admin API up, core service postponed or standing by.
    Warm,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Hot => "Hot",
            State::Warm => "Warm",
        })
    }
}

/// How ready a passive replica's service is.
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
}

/// The role the service is told (`UNDERSTUDY_ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serving.
    Active,
    /// Standing by.
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
