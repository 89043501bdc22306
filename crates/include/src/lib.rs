//! `include = ["shared/upstream.toml", …]` for understudy's TOML configurations (the agent's, the
//! FIX gateway's, the control plane's exported servers): a setting shared by a group is written
//! once, in a fragment, and every file that needs it includes it.
//!
//! Rules, the same for every configuration that uses this crate:
//! - `include` is a top-level array of paths, relative to the file that names them (absolute
//!   paths are taken as they are). A fragment may include others.
//! - Fragments are merged in the order listed, a later one overriding an earlier one; the
//!   including file's own keys override them all. Tables merge key by key; any other value
//!   (arrays included) is replaced whole.
//! - The merge happens before validation, and every key remembers the file it came from, so an
//!   error names the file where the wrong value is written.
//! - Bounded: at most [`MAX_DEPTH`] levels of nesting and [`MAX_FILES`] files in all; a cycle is
//!   refused with its path.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Deepest chain of includes (a file including a file including …).
pub const MAX_DEPTH: usize = 8;
/// Most files one configuration may be made of, the including file counted.
pub const MAX_FILES: usize = 64;
/// The key that lists fragments.
pub const KEY: &str = "include";

/// A configuration that cannot be assembled: the file, the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {key}: {reason}", file.display())]
pub struct IncludeError {
    /// The file where the problem is written.
    pub file: PathBuf,
    /// `include`, or `(syntax)` / `(file)`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// A configuration with its fragments merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    /// The merged document, without any `include` key.
    pub table: toml::Table,
    /// Every file read, the including file first, each once, as given (joined to its includer's
    /// directory, not canonicalized).
    pub files: Vec<PathBuf>,
    /// The file each key was last set by, by dotted key (`service.command`).
    origins: BTreeMap<String, PathBuf>,
    /// Some file had an `include` key (even an empty one).
    uses_include: bool,
}

impl Assembled {
    /// True when the configuration has an `include` key (even an empty one): it must then be
    /// read from [`Assembled::table`], not from its text.
    pub fn has_includes(&self) -> bool {
        self.uses_include
    }

    /// The file that set `key` (a dotted key, with `[n]` indexes allowed: `client[0].comp_id`);
    /// for a key no file set (a missing key), the including file.
    pub fn origin(&self, key: &str) -> &Path {
        let mut k = key;
        loop {
            if let Some(p) = self.origins.get(k) {
                return p;
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => break,
            }
        }
        self.files
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""))
    }
}

/// Read `path` and merge its fragments.
pub fn load(path: &Path) -> Result<Assembled, IncludeError> {
    let text = read(path, path, "(file)")?;
    assemble(path, &text)
}

/// Merge the fragments of `text`, which was read from `path` (includes are relative to its
/// directory).
pub fn assemble(path: &Path, text: &str) -> Result<Assembled, IncludeError> {
    let mut a = Assembled {
        table: toml::Table::new(),
        files: Vec::new(),
        origins: BTreeMap::new(),
        uses_include: false,
    };
    let mut stack = Vec::new();
    merge_file(path, text, &mut stack, &mut a)?;
    Ok(a)
}

fn read(path: &Path, named_in: &Path, key: &str) -> Result<String, IncludeError> {
    std::fs::read_to_string(path).map_err(|e| IncludeError {
        file: named_in.to_path_buf(),
        key: key.to_string(),
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

/// The identity of a file for cycle detection: its canonical path when it has one.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn merge_file(
    path: &Path,
    text: &str,
    stack: &mut Vec<(PathBuf, PathBuf)>,
    out: &mut Assembled,
) -> Result<(), IncludeError> {
    let err = |key: &str, reason: String| IncludeError {
        file: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| {
                let n = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {n})")
            })
            .unwrap_or_default();
        err("(syntax)", format!("{}{line}", e.message()))
    })?;
    let id = identity(path);
    if let Some(at) = stack.iter().position(|(i, _)| *i == id) {
        let chain: Vec<String> = stack[at..]
            .iter()
            .map(|(_, p)| p.display().to_string())
            .chain(std::iter::once(path.display().to_string()))
            .collect();
        let (_, includer) = stack.last().cloned().unwrap_or((id, path.to_path_buf()));
        return Err(IncludeError {
            file: includer,
            key: KEY.into(),
            reason: format!("include cycle: {}", chain.join(" → ")),
        });
    }
    if stack.len() >= MAX_DEPTH {
        let includer = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
        return Err(IncludeError {
            file: includer,
            key: KEY.into(),
            reason: format!(
                "includes nest deeper than {MAX_DEPTH} levels (at {})",
                path.display()
            ),
        });
    }
    if !out.files.iter().any(|f| identity(f) == id) {
        if out.files.len() >= MAX_FILES {
            return Err(err(
                KEY,
                format!("more than {MAX_FILES} files in one configuration"),
            ));
        }
        out.files.push(path.to_path_buf());
    }
    let listed = table.remove(KEY);
    out.uses_include |= listed.is_some();
    let includes = match listed {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => {
            let mut v = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    toml::Value::String(s) if !s.is_empty() => v.push(s),
                    other => {
                        return Err(err(
                            &format!("{KEY}[{i}]"),
                            format!("{other} is not a file path; write include = [\"shared/upstream.toml\"]"),
                        ))
                    }
                }
            }
            v
        }
        Some(other) => {
            return Err(err(
                KEY,
                format!(
                    "{other} is not a list of files; write include = [\"shared/upstream.toml\"]"
                ),
            ))
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    stack.push((id, path.to_path_buf()));
    for (i, inc) in includes.iter().enumerate() {
        let p = Path::new(inc);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        let text = read(&full, path, &format!("{KEY}[{i}]"))?;
        merge_file(&full, &text, stack, out)?;
    }
    stack.pop();
    merge(&mut out.table, table, "", path, &mut out.origins);
    Ok(())
}

/// Merge `from` (the document of `file`) over `into`, recording where each key came from.
fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    file: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in from {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let (Some(toml::Value::Table(dst)), toml::Value::Table(src)) = (into.get_mut(&k), &v) {
            merge(dst, src.clone(), &key, file, origins);
            continue;
        }
        // Replaced whole: forget where the old value's sub-keys came from.
        origins.retain(|o, _| !(o.starts_with(&key) && o[key.len()..].starts_with('.')));
        record(&v, &key, file, origins);
        into.insert(k, v);
    }
}

fn record(v: &toml::Value, key: &str, file: &Path, origins: &mut BTreeMap<String, PathBuf>) {
    origins.insert(key.to_string(), file.to_path_buf());
    if let toml::Value::Table(t) = v {
        for (k, sub) in t {
            record(sub, &format!("{key}.{k}"), file, origins);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn fragments_merge_in_order_and_the_file_wins() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "shared/a.toml",
            "[up]\nhost = \"a\"\nport = 1\n[x]\nlist = [1, 2]\n",
        );
        write(
            d.path(),
            "shared/b.toml",
            "include = [\"c.toml\"]\n[up]\nport = 2\n",
        );
        write(d.path(), "shared/c.toml", "[deep]\nv = true\n");
        let main = write(
            d.path(),
            "main.toml",
            "include = [\"shared/a.toml\", \"shared/b.toml\"]\n[x]\nlist = [3]\n[up]\nname = \"n\"\n",
        );
        let a = load(&main).unwrap();
        let t = &a.table;
        assert!(t.get(KEY).is_none());
        assert_eq!(t["up"]["host"].as_str(), Some("a"));
        assert_eq!(t["up"]["port"].as_integer(), Some(2));
        assert_eq!(t["up"]["name"].as_str(), Some("n"));
        assert_eq!(t["x"]["list"].as_array().map(Vec::len), Some(1));
        assert_eq!(t["deep"]["v"].as_bool(), Some(true));
        assert!(a.origin("up.port").ends_with("shared/b.toml"));
        assert!(a.origin("up.host").ends_with("shared/a.toml"));
        assert!(a.origin("x.list[0]").ends_with("main.toml"));
        assert!(a.origin("deep.v").ends_with("shared/c.toml"));
        assert!(a.origin("missing.key").ends_with("main.toml"));
        assert_eq!(a.files.len(), 4);
        assert!(a.has_includes());
    }

    #[test]
    fn cycles_depth_and_bad_includes_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.toml", "include = [\"b.toml\"]\n");
        write(d.path(), "b.toml", "include = [\"a.toml\"]\n");
        let e = load(&d.path().join("a.toml")).unwrap_err();
        assert!(e.reason.contains("cycle"), "{e}");
        assert!(e.file.ends_with("b.toml"), "{e}");
        assert_eq!(e.key, KEY);

        for i in 0..12 {
            write(
                d.path(),
                &format!("n{i}.toml"),
                &format!("include = [\"n{}.toml\"]\n", i + 1),
            );
        }
        write(d.path(), "n12.toml", "x = 1\n");
        let e = load(&d.path().join("n0.toml")).unwrap_err();
        assert!(e.reason.contains("deeper"), "{e}");

        let m = write(d.path(), "m.toml", "include = [\"nope.toml\"]\n");
        let e = load(&m).unwrap_err();
        assert_eq!(
            (e.file.as_path(), e.key.as_str()),
            (m.as_path(), "include[0]")
        );
        assert!(e.reason.contains("nope.toml"), "{e}");

        let m = write(d.path(), "m2.toml", "include = \"a.toml\"\n");
        assert_eq!(load(&m).unwrap_err().key, KEY);
        let m = write(d.path(), "m3.toml", "include = [\"bad.toml\"]\n");
        write(d.path(), "bad.toml", "[x\n");
        let e = load(&m).unwrap_err();
        assert!(e.file.ends_with("bad.toml") && e.key == "(syntax)", "{e}");
    }

    #[test]
    fn a_file_without_includes_is_itself() {
        let a = assemble(Path::new("/x/c.toml"), "[s]\nk = 1\n").unwrap();
        assert!(!a.has_includes());
        assert_eq!(a.table["s"]["k"].as_integer(), Some(1));
        assert_eq!(a.origin("s.k"), Path::new("/x/c.toml"));
    }
}
