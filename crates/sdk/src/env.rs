//! What the agent tells its service through the environment, and the one rule for a missing or
//! malformed environment.

use std::net::SocketAddr;

/// The variables the agent sets, in the order the rule checks them.
pub const VARS: [&str; 5] = [ROLE, EPOCH, GROUP, NODE, ADMIN];
/// `active` or `standby`.
pub const ROLE: &str = "UNDERSTUDY_ROLE";
/// The fencing epoch the agent knew when it started the service (a standby's is the epoch of
/// the group's active at the time, so its own activation brings a higher one).
pub const EPOCH: &str = "UNDERSTUDY_EPOCH";
/// The group's name.
pub const GROUP: &str = "UNDERSTUDY_GROUP";
/// The node's name, unique in its group.
pub const NODE: &str = "UNDERSTUDY_NODE";
/// The agent's admin API address, `IP:port`.
pub const ADMIN: &str = "UNDERSTUDY_ADMIN";

pub use understudy_status::Role;

/// A usable environment: either the agent's, or none at all (stand-alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The role at start.
    pub role: Role,
    /// The epoch at start (0 stand-alone).
    pub epoch: u64,
    /// `UNDERSTUDY_GROUP`, if given.
    pub group: Option<String>,
    /// `UNDERSTUDY_NODE`, if given.
    pub node: Option<String>,
    /// The agent's admin API; `None` stand-alone, or for an active service started without it.
    pub admin: Option<SocketAddr>,
    /// No agent started this process (none of the variables was set).
    pub standalone: bool,
}

/// Why the environment is unusable. The binary should exit with [`crate::EXIT_BAD_ENV`] and
/// print this: it names the variable and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A variable has a value that cannot be used.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A variable needed by the others is missing.
    #[error("{var} is not set, but {because}")]
    Missing {
        /// The missing variable.
        var: &'static str,
        /// Which other variable needs it.
        because: String,
    },
}

impl EnvError {
    /// The variable at fault.
    pub fn var(&self) -> &'static str {
        match self {
            EnvError::Invalid { var, .. } | EnvError::Missing { var, .. } => var,
        }
    }
}

impl Env {
    /// Reads the process environment. See [`Env::from_lookup`] for the rule.
    pub fn from_env() -> Result<Env, EnvError> {
        Env::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Stand-alone: active at epoch 0, no agent.
    pub fn standalone() -> Env {
        Env {
            role: Role::Active,
            epoch: 0,
            group: None,
            node: None,
            admin: None,
            standalone: true,
        }
    }

    /// Applies the rule to variables read through `get` (an empty value counts as unset):
    ///
    /// - none of the five set: stand-alone, [`Role::Active`] at epoch 0;
    /// - otherwise `UNDERSTUDY_ROLE` must be `active` or `standby` and `UNDERSTUDY_EPOCH` an
    ///   unsigned integer; a standby also needs `UNDERSTUDY_ADMIN` (it learns its next epoch
    ///   there); `UNDERSTUDY_ADMIN`, when given, must be an `IP:port` socket address;
    ///   `UNDERSTUDY_GROUP` and `UNDERSTUDY_NODE` are names, used as given.
    ///
    /// So a variable set without `UNDERSTUDY_ROLE` (a half-copied environment) is an error, not a
    /// stand-alone start: a service that was meant to be a standby must never go active by
    /// mistake.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, EnvError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let Some(role) = get(ROLE) else {
            return match VARS.iter().find(|k| get(k).is_some()) {
                Some(other) => Err(EnvError::Missing {
                    var: ROLE,
                    because: format!(
                        "{other} is (set all of the agent's variables, or none to run stand-alone)"
                    ),
                }),
                None => Ok(Env::standalone()),
            };
        };
        let role = match role.as_str() {
            "active" => Role::Active,
            "standby" => Role::Standby,
            _ => {
                return Err(EnvError::Invalid {
                    var: ROLE,
                    value: role,
                    reason: "expected \"active\" or \"standby\"",
                })
            }
        };
        let epoch = match get(EPOCH) {
            None => {
                return Err(EnvError::Missing {
                    var: EPOCH,
                    because: "UNDERSTUDY_ROLE is (every service started by an agent has an epoch)"
                        .into(),
                })
            }
            Some(v) => v.parse::<u64>().map_err(|_| EnvError::Invalid {
                var: EPOCH,
                value: v,
                reason: "not an unsigned 64-bit integer",
            })?,
        };
        let admin = match get(ADMIN) {
            None if role == Role::Standby => {
                return Err(EnvError::Missing {
                    var: ADMIN,
                    because: "UNDERSTUDY_ROLE=standby needs it to learn its epoch when activated"
                        .into(),
                })
            }
            None => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| EnvError::Invalid {
                var: ADMIN,
                value: v,
                reason: "not an IP:port socket address",
            })?),
        };
        Ok(Env {
            role,
            epoch,
            group: get(GROUP),
            node: get(NODE),
            admin,
            standalone: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const AGENT: [(&str, &str); 5] = [
        (ROLE, "standby"),
        (EPOCH, "6"),
        (GROUP, "prices"),
        (NODE, "b"),
        (ADMIN, "127.0.0.1:7702"),
    ];

    #[test]
    fn nothing_set_is_standalone_active_at_epoch_0() {
        let e = env(&[]).unwrap();
        assert_eq!(e, Env::standalone());
        assert_eq!((e.role, e.epoch), (Role::Active, 0));
        assert!(e.standalone);
        // Empty values count as unset.
        assert_eq!(env(&[(ROLE, ""), (NODE, "")]).unwrap(), Env::standalone());
    }

    #[test]
    fn the_agents_environment_is_read_whole() {
        let e = env(&AGENT).unwrap();
        assert_eq!(e.role, Role::Standby);
        assert_eq!(e.epoch, 6);
        assert_eq!(e.group.as_deref(), Some("prices"));
        assert_eq!(e.node.as_deref(), Some("b"));
        assert_eq!(e.admin, Some("127.0.0.1:7702".parse().unwrap()));
        assert!(!e.standalone);
    }

    #[test]
    fn an_active_needs_no_admin_but_a_standby_does() {
        let e = env(&[(ROLE, "active"), (EPOCH, "1")]).unwrap();
        assert_eq!((e.role, e.epoch, e.admin), (Role::Active, 1, None));
        let err = env(&[(ROLE, "standby"), (EPOCH, "1")]).unwrap_err();
        assert_eq!(err.var(), ADMIN);
    }

    #[test]
    fn a_variable_without_the_role_is_refused() {
        for (k, v) in AGENT.iter().skip(1) {
            let err = env(&[(k, v)]).unwrap_err();
            assert_eq!(err.var(), ROLE, "{k} alone");
            assert!(err.to_string().contains(k), "{err}");
        }
    }

    #[test]
    fn malformed_values_name_the_variable_and_the_reason() {
        let bad = |k: &str, v: &str| {
            let mut vars: Vec<(&str, &str)> = AGENT.to_vec();
            vars.retain(|(n, _)| *n != k);
            vars.push((k, v));
            env(&vars).unwrap_err()
        };
        let e = bad(ROLE, "primary");
        assert_eq!(e.var(), ROLE);
        assert!(e.to_string().contains("\"primary\""), "{e}");
        for v in ["-1", "x", "1.5", "18446744073709551616"] {
            assert_eq!(bad(EPOCH, v).var(), EPOCH, "{v}");
        }
        for v in ["localhost:7701", "127.0.0.1", "7701"] {
            let e = bad(ADMIN, v);
            assert_eq!(e.var(), ADMIN, "{v}");
            assert!(e.to_string().contains("IP:port"), "{e}");
        }
        let mut no_epoch = AGENT.to_vec();
        no_epoch.retain(|(n, _)| *n != EPOCH);
        assert_eq!(env(&no_epoch).unwrap_err().var(), EPOCH);
    }
}
