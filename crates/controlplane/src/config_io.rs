//! Central configuration (document 002's use case 2): the whole inventory as plain files fit for a
//! Git repository, one TOML file per server, and an import that validates everything and shows
//! the difference before it changes anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{FailoverSpec, FieldError, ServerSpec};

/// One server's configuration as exported: the file `<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The server and its service.
    pub server: ServerSpec,
    /// Its failover service, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,
}

/// What an import would do (or did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Servers that would be added.
    pub added: Vec<String>,
    /// Servers whose configuration would change, with what changes.
    pub changed: BTreeMap<String, Vec<String>>,
    /// Servers in the inventory but not in the import (removed only with `prune`).
    pub missing: Vec<String>,
    /// Servers identical in both.
    pub unchanged: Vec<String>,
    /// Why the import cannot be applied, per server (empty when it can).
    pub errors: BTreeMap<String, Vec<FieldError>>,
    /// True when it was applied.
    pub applied: bool,
}

/// The differences between two configurations of one server, in words.
pub fn diff(old: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let mut out = Vec::new();
    let (o, n) = (&old.server, &new.server);
    if o.host != n.host {
        out.push(format!("host: {} → {}", o.host, n.host));
    }
    if o.service.command != n.service.command {
        out.push(format!(
            "service.command: {:?} → {:?}",
            o.service.command, n.service.command
        ));
    }
    if o.service.env != n.service.env {
        out.push("service.env changed".to_string());
    }
    if o.service.health != n.service.health {
        out.push("service.health changed".to_string());
    }
    match (&old.failover, &new.failover) {
        (None, Some(_)) => out.push("failover added".to_string()),
        (Some(_), None) => out.push("failover removed".to_string()),
        (Some(a), Some(b)) if a != b => {
            if a.standby != b.standby {
                out.push(format!(
                    "failover.standby: {} → {}",
                    a.standby.as_str(),
                    b.standby.as_str()
                ));
            }
            if a.standby_hosts != b.standby_hosts {
                out.push(format!(
                    "failover.standby_hosts: {:?} → {:?}",
                    a.standby_hosts, b.standby_hosts
                ));
            }
            if a.mode != b.mode {
                out.push(format!(
                    "failover.mode: {} → {}",
                    a.mode.as_str(),
                    b.mode.as_str()
                ));
            }
            if a.preferred != b.preferred {
                out.push(format!(
                    "failover.preferred: {:?} → {:?}",
                    a.preferred, b.preferred
                ));
            }
        }
        _ => {}
    }
    out
}

/// A server's file text.
pub fn to_toml(c: &ServerConfig) -> Result<String, toml::ser::Error> {
    Ok(format!(
        "# understudy server configuration (understudy ctl export); edit, then `understudy ctl import`\n{}",
        toml::to_string_pretty(c)?
    ))
}

/// Parse a server's file text; the error names the key.
pub fn from_toml(text: &str) -> Result<ServerConfig, String> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner().message())
    })
}

/// Errors reading or writing a configuration directory.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold a valid server configuration.
    #[error("{path}: {reason}")]
    Invalid {
        /// Which file.
        path: std::path::PathBuf,
        /// The key and what is wrong.
        reason: String,
    },
}

/// Write one `<server>.toml` per server into `dir` (created if needed); the paths written.
pub fn write_dir(
    dir: &std::path::Path,
    items: &[ServerConfig],
) -> Result<Vec<std::path::PathBuf>, DirError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| DirError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut out = Vec::new();
    for c in items {
        let path = dir.join(format!("{}.toml", c.server.name));
        let text = to_toml(c).map_err(|e| DirError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io(&path))?;
        out.push(path);
    }
    Ok(out)
}

/// Read every `*.toml` in `dir` (sorted by name); a file's name must be its server's name.
pub fn read_dir(dir: &std::path::Path) -> Result<Vec<ServerConfig>, DirError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| DirError::Io { path, source }
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let c = from_toml(&text).map_err(|reason| DirError::Invalid {
            path: path.clone(),
            reason,
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != c.server.name {
            return Err(DirError::Invalid {
                path: path.clone(),
                reason: format!(
                    "server.name is {:?} but the file is named {stem}.toml; one server per file, named after it",
                    c.server.name
                ),
            });
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, ServiceDef, Standby};

    fn cfg() -> ServerConfig {
        ServerConfig {
            server: ServerSpec {
                name: "gw".into(),
                host: "local".into(),
                service: ServiceDef {
                    command: vec!["/opt/gw".into(), "--config".into(), "gw.toml".into()],
                    env: [("RUST_LOG".to_string(), "info".to_string())].into(),
                    health: None,
                },
            },
            failover: Some(FailoverSpec {
                standby: Standby::Warm,
                standby_hosts: vec!["local".into()],
                mode: Activation::Trylock,
                preferred: None,
            }),
        }
    }

    #[test]
    fn toml_round_trips_and_unknown_keys_are_named() {
        let c = cfg();
        let text = to_toml(&c).unwrap();
        assert_eq!(from_toml(&text).unwrap(), c);
        let bad = text.replace(
            "standby = \"warm\"",
            "standby = \"warm\"\ncolour = \"blue\"",
        );
        let e = from_toml(&bad).unwrap_err();
        assert!(e.contains("failover") && e.contains("colour"), "{e}");
    }

    #[test]
    fn diff_says_what_changed() {
        let a = cfg();
        let mut b = cfg();
        b.server.service.command[2] = "gw2.toml".into();
        if let Some(f) = &mut b.failover {
            f.standby = Standby::Hot;
        }
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("service.command"));
        assert_eq!(d[1], "failover.standby: warm → hot");
        assert!(diff(&a, &a).is_empty());
    }
}
