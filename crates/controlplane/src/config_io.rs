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
    /// Changed servers that run with failover: each standby restarts with the new configuration
    /// (not ready until it has); the active keeps its own until it is a standby.
    pub rolling: Vec<String>,
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
            if a.failback != b.failback {
                out.push(format!(
                    "failover.failback: {:?} → {:?}",
                    a.failback, b.failback
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

/// Parse a server's file `path` (text `text`) with its `include` fragments merged in; the error
/// names the file the wrong key is written in.
pub fn from_file(
    path: &std::path::Path,
    text: &str,
) -> Result<(ServerConfig, understudy_include::Assembled), DirError> {
    let a = understudy_include::assemble(path, text).map_err(|e| DirError::Invalid {
        path: e.file,
        reason: format!("{}: {}", e.key, e.reason),
    })?;
    if !a.has_includes() {
        let c = from_toml(text).map_err(|reason| DirError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        return Ok((c, a));
    }
    let c = serde_path_to_error::deserialize(toml::Value::Table(a.table.clone())).map_err(|e| {
        let key = e.path().to_string();
        DirError::Invalid {
            path: a.origin(&key).to_path_buf(),
            reason: format!("{key}: {}", e.into_inner().message()),
        }
    })?;
    Ok((c, a))
}

/// Most files a configuration directory may hold beside its servers' own files.
pub const MAX_FRAGMENTS: usize = 64;

/// The whole configuration as files: every server, and the text of the files that use `include`
/// and of the fragments they include (path relative to the directory → text), so that an export
/// writes them back as they were imported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDir {
    /// One entry per server.
    pub servers: Vec<ServerConfig>,
    /// Source files kept as written: `<server>.toml` files that include fragments, and the
    /// fragments (e.g. `shared/upstream.toml`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// Checks a kept file's relative path: inside the directory, a `.toml` file. A path from the
/// network is written under the export directory, so `..` or an absolute path is refused.
pub fn valid_file_path(p: &str) -> bool {
    let path = std::path::Path::new(p);
    p.len() <= 200
        && path.extension().is_some_and(|x| x == "toml")
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Every wrong kept file of an import: its path, and why.
pub fn check_files(files: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if files.len() > MAX_FRAGMENTS {
        errs.push(FieldError {
            field: "files".into(),
            reason: format!("at most {MAX_FRAGMENTS} files"),
        });
    }
    for p in files.keys() {
        if !valid_file_path(p) {
            errs.push(FieldError {
                field: format!("files.{p}"),
                reason: "a kept file must be a relative path to a .toml file inside the configuration directory (no '..')".into(),
            });
        }
    }
    errs
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

/// Write `cfg` into `dir` (created if needed): the kept fragments, then one `<server>.toml` per
/// server — the kept source when it still says exactly what the control plane holds (read with
/// its fragments), otherwise the whole configuration written out. The paths written.
pub fn write_dir(
    dir: &std::path::Path,
    cfg: &ConfigDir,
) -> Result<Vec<std::path::PathBuf>, DirError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| DirError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut out = Vec::new();
    let own = |name: &str| {
        cfg.servers
            .iter()
            .any(|c| format!("{}.toml", c.server.name) == name)
    };
    for (rel, text) in &cfg.files {
        if !valid_file_path(rel) {
            return Err(DirError::Invalid {
                path: dir.join(rel),
                reason: "not a relative path inside the directory".into(),
            });
        }
        // Every top-level file is read back as a server: a kept source of a server deleted
        // since must not come back. Fragments live in subdirectories.
        if own(rel) || !rel.contains('/') {
            continue;
        }
        let path = dir.join(rel);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        out.push(path);
    }
    for c in &cfg.servers {
        let name = format!("{}.toml", c.server.name);
        let path = dir.join(&name);
        let kept = cfg
            .files
            .get(&name)
            .filter(|src| from_file(&path, src).is_ok_and(|(k, _)| k == *c));
        let text = match kept {
            Some(src) => src.clone(),
            None => to_toml(c).map_err(|e| DirError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        };
        std::fs::write(&path, text).map_err(io(&path))?;
        out.push(path);
    }
    Ok(out)
}

/// Read every `*.toml` in `dir` (sorted by name) as a server, with its `include` fragments (which
/// must lie in subdirectories of `dir`, e.g. `shared/`, so that the directory is the whole
/// configuration and no fragment is taken for a server); a file's name must be its server's name. Files that use `include`, and the fragments, are kept as written.
pub fn read_dir(dir: &std::path::Path) -> Result<ConfigDir, DirError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| DirError::Io { path, source }
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let root = std::fs::canonicalize(dir).map_err(io(dir))?;
    let mut out = ConfigDir::default();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let (c, assembled) = from_file(&path, &text)?;
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
        if assembled.has_includes() {
            for f in &assembled.files {
                let full = std::fs::canonicalize(f).map_err(io(f))?;
                let rel = full
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .filter(|r| valid_file_path(r))
                    .ok_or_else(|| DirError::Invalid {
                        path: path.clone(),
                        reason: format!(
                            "include: {} is outside {} (or not a .toml file); keep fragments inside the configuration directory so that it is the whole configuration",
                            f.display(),
                            dir.display()
                        ),
                    })?;
                let t = std::fs::read_to_string(&full).map_err(io(&full))?;
                out.files.insert(rel.to_string(), t);
            }
        }
        out.servers.push(c);
    }
    let errs = check_files(&out.files);
    if let Some(e) = errs.first() {
        return Err(DirError::Invalid {
            path: dir.to_path_buf(),
            reason: format!("{}: {}", e.field, e.reason),
        });
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
                failback: None,
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
    fn fragments_are_read_with_their_server_and_written_back_as_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::create_dir(dir.join("shared")).unwrap();
        std::fs::write(
            dir.join("shared/env.toml"),
            "[server.service.env]\nUPSTREAM = \"10.0.0.5:9100\"\n",
        )
        .unwrap();
        let src = "include = [\"shared/env.toml\"]\n[server]\nname = \"gw\"\n[server.service]\ncommand = [\"/opt/gw\"]\n";
        std::fs::write(dir.join("gw.toml"), src).unwrap();
        let read = read_dir(dir).unwrap();
        assert_eq!(read.servers.len(), 1);
        assert_eq!(
            read.servers[0]
                .server
                .service
                .env
                .get("UPSTREAM")
                .map(String::as_str),
            Some("10.0.0.5:9100")
        );
        assert_eq!(
            read.files.keys().collect::<Vec<_>>(),
            ["gw.toml", "shared/env.toml"]
        );

        let out = tempfile::tempdir().unwrap();
        write_dir(out.path(), &read).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("gw.toml")).unwrap(),
            src
        );
        assert!(out.path().join("shared/env.toml").is_file());
        assert_eq!(read_dir(out.path()).unwrap(), read);

        // Changed since (through the API): written out whole, never the stale source.
        let mut changed = read.clone();
        changed.servers[0].server.service.command = vec!["/opt/gw2".into()];
        let out2 = tempfile::tempdir().unwrap();
        write_dir(out2.path(), &changed).unwrap();
        let back = read_dir(out2.path()).unwrap();
        assert_eq!(back.servers, changed.servers);
        assert!(!std::fs::read_to_string(out2.path().join("gw.toml"))
            .unwrap()
            .contains("include"));

        // A wrong key in a fragment names the fragment.
        std::fs::write(
            dir.join("shared/env.toml"),
            "[server.service]\ncolour = 1\n",
        )
        .unwrap();
        let e = read_dir(dir).unwrap_err().to_string();
        assert!(e.contains("shared/env.toml") && e.contains("colour"), "{e}");
        // Fragments outside the directory are refused, and so are paths with '..' from outside.
        let elsewhere = tempfile::tempdir().unwrap();
        let outside = elsewhere.path().join("x.toml");
        std::fs::write(&outside, "").unwrap();
        std::fs::write(dir.join("shared/env.toml"), "").unwrap();
        std::fs::write(
            dir.join("gw.toml"),
            format!(
                "include = [{:?}]\n{}",
                outside.display().to_string(),
                &src[src.find('\n').unwrap() + 1..]
            ),
        )
        .unwrap();
        let e = read_dir(dir).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(
            !valid_file_path("../x.toml")
                && !valid_file_path("/x.toml")
                && valid_file_path("a/b.toml")
        );
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
